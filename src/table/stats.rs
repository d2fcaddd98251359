//! Per-route request counters for /metrics, kept outside the table (keyed by
//! namespace/name) so a table swap does not reset them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Requests of one route by status class.
#[derive(Debug, Default)]
pub struct RouteCounters {
    /// Index 0 = 1xx … 4 = 5xx.
    classes: [AtomicU64; 5],
}

impl RouteCounters {
    pub fn count(&self, status: u16) {
        let i = (status / 100).clamp(1, 5) as usize - 1;
        self.classes[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (class label, count) pairs: `1xx` … `5xx`.
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        let l = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        std::array::from_fn(|i| (l[i], self.classes[i].load(Ordering::Relaxed)))
    }
}

/// (namespace, name) → counters, shared by every table.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    map: Mutex<HashMap<(String, String), Weak<RouteCounters>>>,
}

impl StatsRegistry {
    pub fn get(&self, ns: &str, name: &str) -> Arc<RouteCounters> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = (ns.to_owned(), name.to_owned());
        if let Some(c) = m.get(&key).and_then(Weak::upgrade) {
            return c;
        }
        let c = Arc::new(RouteCounters::default());
        m.insert(key, Arc::downgrade(&c));
        c
    }

    /// Forget routes no table has any more.
    pub fn prune(&self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, w| w.strong_count() > 0);
    }
}
