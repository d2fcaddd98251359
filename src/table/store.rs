//! The live table: one `ArcSwap`, a generation watch, a readiness flag.

use super::RoutingTable;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Shared by the compiler (writer) and every connection (readers).
#[derive(Debug)]
pub struct TableStore {
    current: ArcSwap<RoutingTable>,
    generation: watch::Sender<u64>,
    ready: AtomicBool,
}

impl Default for TableStore {
    fn default() -> Self {
        Self::new()
    }
}

impl TableStore {
    /// An empty table (every host 503) that is not yet ready.
    pub fn new() -> Self {
        TableStore {
            current: ArcSwap::from_pointee(RoutingTable::default()),
            generation: watch::channel(0).0,
            ready: AtomicBool::new(false),
        }
    }

    /// The current table. Cheap; do not hold the guard across `.await`.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.current.load()
    }

    /// The current table as an owned `Arc` (for work that spans awaits).
    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.current.load_full()
    }

    /// Swap in a complete table; marks the store ready. Returns the previous
    /// table so the caller can drop it off the data path's threads.
    #[must_use = "drop the previous table where freeing 10k routes does not stall requests"]
    pub fn publish(&self, table: RoutingTable) -> Arc<RoutingTable> {
        let generation = table.generation;
        debug_assert!({
            table.check_invariants();
            true
        });
        let old = self.current.swap(Arc::new(table));
        self.ready.store(true, Ordering::Release);
        self.generation.send_replace(generation);
        old
    }

    /// True once the first complete table is live.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Notified with the generation of every published table.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
