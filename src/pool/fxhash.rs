//! The Fx hash (rustc's): a multiply-rotate hash for small trusted keys
//! like endpoint addresses, much cheaper than SipHash. Keys here come from
//! the routing table, not from clients, so flooding is not a concern.

use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        for b in chunks.remainder() {
            self.add(*b as u64);
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub type Build = BuildHasherDefault<FxHasher>;

/// A `HashMap` with the Fx hash: for maps keyed by the cluster's objects
/// (hosts, services, endpoints), never by what clients choose.
pub type FxHashMap<K, V> = std::collections::HashMap<K, V, Build>;

/// A `HashSet` with the Fx hash, on the same terms as [`FxHashMap`].
pub type FxHashSet<T> = std::collections::HashSet<T, Build>;
