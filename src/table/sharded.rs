//! A map by host name whose parts are shared between tables.
//!
//! A table built from the previous one by changing a few hosts (a route
//! edited, an endpoint moved) starts as a copy of it. With one hash map
//! that copy cloned every entry and the old table's drop released every
//! one: two passes over 10k scattered entries per change, most of the CPU
//! a swap cost (perf, benches/load `swap`). Here the map is 64 shards,
//! each behind its own `Arc`: a copy shares all of them, and a change
//! copies only the shards it touches (~160 entries each at 10k hosts).
//!
//! A lookup hashes the name once (the Fx hash): the shard comes from a
//! mix of that hash, so it does not correlate with the bits the shard's
//! own table takes (low bits: bucket; top 7: tag).

use crate::pool::fxhash::FxHasher;
use hashbrown::hash_table::{Entry, HashTable};
use std::hash::Hasher;
use std::sync::Arc;

const SHARDS: usize = 64;

/// One shard: (name, value) pairs.
pub(crate) type Shard<V> = HashTable<(Arc<str>, V)>;

/// Host name → `V`, cheap to copy and to change in a few places.
#[derive(Clone)]
pub(crate) struct ShardedMap<V> {
    /// Empty (no allocation) until the first insert, then `SHARDS` long.
    shards: Box<[Arc<Shard<V>>]>,
}

impl<V> Default for ShardedMap<V> {
    fn default() -> Self {
        ShardedMap {
            shards: Box::new([]),
        }
    }
}

#[inline]
fn hash(key: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(key.as_bytes());
    h.finish()
}

#[inline]
fn shard_of(hash: u64) -> usize {
    (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 6)) as usize
}

/// `key` → `value` in one shard (`h` its hash); the value it replaced.
fn put<V>(t: &mut Shard<V>, h: u64, key: Arc<str>, value: V) -> Option<V> {
    match t.entry(h, |(k, _)| *k == key, |(k, _)| hash(k)) {
        Entry::Occupied(mut o) => Some(std::mem::replace(&mut o.get_mut().1, value)),
        Entry::Vacant(v) => {
            v.insert((key, value));
            None
        }
    }
}

impl<V: Clone> ShardedMap<V> {
    #[inline]
    pub fn get(&self, key: &str) -> Option<&V> {
        let h = hash(key);
        let (_, v) = self
            .shards
            .get(shard_of(h))?
            .find(h, |(k, _)| **k == *key)?;
        Some(v)
    }

    /// The shard for hash `h`, copied first if another table shares it.
    fn shard_mut(&mut self, h: u64) -> &mut Shard<V> {
        if self.shards.is_empty() {
            self.shards = (0..SHARDS).map(|_| Arc::new(HashTable::new())).collect();
        }
        Arc::make_mut(&mut self.shards[shard_of(h)])
    }

    pub fn insert(&mut self, key: Arc<str>, value: V) -> Option<V> {
        let h = hash(&key);
        put(self.shard_mut(h), h, key, value)
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let h = hash(key);
        // Not here: leave a shared shard shared.
        self.shards
            .get(shard_of(h))?
            .find(h, |(k, _)| **k == *key)?;
        let found = self.shard_mut(h).find_entry(h, |(k, _)| **k == *key);
        found.ok().map(|o| o.remove().0 .1)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &V)> {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, v)| (k, v)))
    }

    #[cfg(test)]
    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// The shards (none for an empty map): a reader that derives something
    /// per shard can keep it while the shard is the same allocation.
    pub fn shards(&self) -> &[Arc<Shard<V>>] {
        &self.shards
    }
}

impl<V: Clone> Extend<(Arc<str>, V)> for ShardedMap<V> {
    fn extend<T: IntoIterator<Item = (Arc<str>, V)>>(&mut self, iter: T) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<V: Clone> FromIterator<(Arc<str>, V)> for ShardedMap<V> {
    /// Each shard sized once for its entries (a full compile builds 10k).
    fn from_iter<T: IntoIterator<Item = (Arc<str>, V)>>(iter: T) -> Self {
        let mut parts: Vec<Vec<(u64, Arc<str>, V)>> = (0..SHARDS).map(|_| Vec::new()).collect();
        for (k, v) in iter {
            let h = hash(&k);
            parts[shard_of(h)].push((h, k, v));
        }
        if parts.iter().all(Vec::is_empty) {
            return ShardedMap::default();
        }
        let shards = parts
            .into_iter()
            .map(|part| {
                let mut t = HashTable::with_capacity(part.len());
                for (h, k, v) in part {
                    put(&mut t, h, k, v);
                }
                Arc::new(t)
            })
            .collect();
        ShardedMap { shards }
    }
}

/// Tests only: a missing name panics.
#[cfg(test)]
impl<V: Clone> std::ops::Index<&str> for ShardedMap<V> {
    type Output = V;
    fn index(&self, key: &str) -> &V {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no entry for {key:?}"),
        }
    }
}

impl<V: std::fmt::Debug + Clone> std::fmt::Debug for ShardedMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_copies_only_the_shard_it_touches() {
        let a: ShardedMap<Arc<u32>> = (0..10_000u32)
            .map(|i| (Arc::from(format!("h{i}.example.com")), Arc::new(i)))
            .collect();
        assert_eq!(a.len(), 10_000);
        // Spread: no shard is empty or holds more than twice its share.
        for s in a.shards.iter() {
            assert!((1..=2 * 10_000 / SHARDS).contains(&s.len()), "{}", s.len());
        }
        let mut b = a.clone();
        assert_eq!(b.remove("h7.example.com").as_deref(), Some(&7));
        assert_eq!(b.remove("nowhere.example.com"), None);
        b.insert("new.example.com".into(), Arc::new(1));
        assert_eq!(a.get("h7.example.com").map(|v| **v), Some(7));
        assert_eq!(b.get("h7.example.com"), None);
        assert_eq!(b.get("new.example.com").map(|v| **v), Some(1));
        assert_eq!(a.get("new.example.com"), None);
        assert_eq!(b.len(), 10_000);
        let unshared = (0..SHARDS)
            .filter(|&i| !Arc::ptr_eq(&a.shards[i], &b.shards[i]))
            .count();
        assert!(unshared <= 2, "{unshared} shards copied");
        // The entries themselves are shared, not copied.
        assert!(Arc::ptr_eq(&a["h8.example.com"], &b["h8.example.com"]));
        let mut keys: Vec<&str> = b.keys().map(|k| &**k).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 10_000);
    }

    #[test]
    fn an_empty_map_allocates_nothing_and_finds_nothing() {
        let m: ShardedMap<u8> = ShardedMap::default();
        assert!(m.is_empty());
        assert_eq!(m.len(), 0);
        assert_eq!(m.get("a"), None);
        assert_eq!(m.iter().count(), 0);
    }
}
