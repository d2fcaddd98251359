//! Choosing an endpoint for one request: services by weight (as the
//! OpenShift router splits `spec.to` / `alternateBackends`), then an endpoint
//! of that service at random. Retries skip endpoints already tried.
//!
//! The full set of algorithms (roundrobin, leastconn, source, sticky
//! cookies) builds on this in its own issue; this module owns the choice and
//! must not do I/O.

use crate::table::{BackendGroup, BackendSet, Endpoint};
use std::cell::Cell;

/// An endpoint picked for a request: which group and which endpoint in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub group: usize,
    pub endpoint: usize,
}

impl Pick {
    pub fn resolve<'a>(&self, set: &'a BackendSet) -> (&'a BackendGroup, &'a Endpoint) {
        let g = &set.groups[self.group];
        (g, &g.endpoints[self.endpoint])
    }
}

/// Pick an endpoint not in `tried`. `None` when nothing is left.
pub fn pick(set: &BackendSet, tried: &[Pick]) -> Option<Pick> {
    let open = |gi: usize, g: &BackendGroup| {
        g.weight > 0 && g.endpoints.len() > tried.iter().filter(|p| p.group == gi).count()
    };
    let total: u64 = set
        .groups
        .iter()
        .enumerate()
        .filter(|(i, g)| open(*i, g))
        .map(|(_, g)| g.weight as u64)
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = random() % total;
    let (gi, g) = set
        .groups
        .iter()
        .enumerate()
        .filter(|(i, g)| open(*i, g))
        .find(|(_, g)| {
            let w = g.weight as u64;
            if r < w {
                true
            } else {
                r -= w;
                false
            }
        })?;
    let n = g.endpoints.len();
    let start = (random() % n as u64) as usize;
    (0..n)
        .map(|k| (start + k) % n)
        .find(|e| {
            !tried.contains(&Pick {
                group: gi,
                endpoint: *e,
            })
        })
        .map(|endpoint| Pick {
            group: gi,
            endpoint,
        })
}

/// Pick by a hash of the client (passthrough's `balance source`): the same
/// client lands on the same endpoint while the endpoint set is unchanged.
/// Weights 0 get nothing.
pub fn pick_hashed(set: &BackendSet, key: u64) -> Option<Pick> {
    let total: usize = set
        .groups
        .iter()
        .filter(|g| g.weight > 0)
        .map(|g| g.endpoints.len())
        .sum();
    if total == 0 {
        return None;
    }
    // Mix the key so neighbouring addresses spread.
    let mut n = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 17) as usize % total;
    for (gi, g) in set.groups.iter().enumerate().filter(|(_, g)| g.weight > 0) {
        if n < g.endpoints.len() {
            return Some(Pick {
                group: gi,
                endpoint: n,
            });
        }
        n -= g.endpoints.len();
    }
    None
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let local = 0u8;
    (t ^ (&local as *const u8 as u64).rotate_left(32)) | 1
}

/// xorshift64*: fast, per thread, good enough to spread load.
fn random() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::UpstreamProtocol;

    fn group(weight: u32, n: usize, base: u16) -> BackendGroup {
        BackendGroup::new(
            ("ns".into(), format!("s{base}")),
            weight,
            UpstreamProtocol::Http1,
            (0..n)
                .map(|i| Endpoint::Socket(([127, 0, 0, 1], base + i as u16).into()))
                .collect(),
        )
    }

    #[test]
    fn weights_split_traffic_between_services() {
        let set = BackendSet {
            groups: vec![group(1, 2, 1000), group(3, 1, 2000), group(0, 5, 3000)].into(),
        };
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[pick(&set, &[]).unwrap().group] += 1;
        }
        assert_eq!(counts[2], 0, "weight 0 gets nothing");
        let share = counts[1] as f64 / 40_000.0;
        assert!((0.72..0.78).contains(&share), "{counts:?}");
    }

    #[test]
    fn retries_skip_tried_endpoints_then_give_up() {
        let set = BackendSet {
            groups: vec![group(1, 2, 1000), group(1, 1, 2000)].into(),
        };
        let mut tried = Vec::new();
        while let Some(p) = pick(&set, &tried) {
            assert!(!tried.contains(&p));
            tried.push(p);
        }
        assert_eq!(tried.len(), 3);
        let empty = BackendSet {
            groups: vec![group(0, 2, 1), group(5, 0, 2)].into(),
        };
        assert_eq!(pick(&empty, &[]), None);
    }
}
