//! Choosing an endpoint for one request: the route's algorithm over the
//! members of its backend set (every endpoint of every service, weighted as
//! the OpenShift router weighs them), skipping ejected endpoints and those
//! already tried, and sticky cookies.
//!
//! Owns the choice; must not do I/O. Live counters come from the table's
//! `EndpointLive`.

pub mod checks;

use crate::table::{Algorithm, BackendGroup, BackendSet, Endpoint, Member};
use std::cell::Cell;
use std::net::IpAddr;

/// A chosen member of a backend set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick(pub usize);

impl Pick {
    pub fn resolve<'a>(&self, set: &'a BackendSet) -> (&'a BackendGroup, &'a Endpoint) {
        let m = &set.members[self.0];
        let g = &set.groups[m.group as usize];
        (g, &g.endpoints[m.index as usize])
    }

    pub fn member<'a>(&self, set: &'a BackendSet) -> &'a Member {
        &set.members[self.0]
    }
}

/// Pick a member by the set's algorithm, never one in `tried`. Ejected
/// members are skipped while any other is left (when all are ejected, all
/// are tried: better a chance than a certain 503). `None` when nothing is
/// left or every weight is 0.
pub fn pick(set: &BackendSet, client: IpAddr, tried: &[Pick]) -> Option<Pick> {
    pick_capped(set, client, tried, None)
}

/// `pick`, leaving out endpoints with `cap` or more requests in flight
/// (`pod-concurrent-connections`).
pub fn pick_capped(
    set: &BackendSet,
    client: IpAddr,
    tried: &[Pick],
    cap: Option<u32>,
) -> Option<Pick> {
    pick_where(set, client, tried, true, cap).or_else(|| pick_where(set, client, tried, false, cap))
}

fn pick_where(
    set: &BackendSet,
    client: IpAddr,
    tried: &[Pick],
    healthy_only: bool,
    cap: Option<u32>,
) -> Option<Pick> {
    let eligible = |i: usize, m: &Member| {
        m.weight > 0
            && !tried.contains(&Pick(i))
            && (!healthy_only || m.live.is_available())
            && cap.is_none_or(|c| m.live.active() < c)
    };
    match set.algorithm {
        Algorithm::RoundRobin => round_robin(set, &eligible),
        Algorithm::LeastConn => least_conn(set, &eligible),
        Algorithm::Source => source(set, client_key(client), &eligible),
        Algorithm::Random => two_choices(set, &eligible),
    }
}

/// Smooth weighted round-robin (nginx's): every pick adds each weight to
/// its member's current value, takes the largest, and subtracts the total.
fn round_robin(set: &BackendSet, eligible: &dyn Fn(usize, &Member) -> bool) -> Option<Pick> {
    let mut cur = set.rr.lock().unwrap_or_else(|p| p.into_inner());
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, m) in set.members.iter().enumerate() {
        if !eligible(i, m) {
            continue;
        }
        cur[i] += m.weight as i64;
        total += m.weight as i64;
        if best.is_none_or(|b| cur[i] > cur[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    cur[b] -= total;
    Some(Pick(b))
}

/// Fewest requests in flight relative to weight; ties start at a random
/// member so equal endpoints share the load.
fn least_conn(set: &BackendSet, eligible: &dyn Fn(usize, &Member) -> bool) -> Option<Pick> {
    let n = set.members.len();
    if n == 0 {
        return None;
    }
    let start = (random() % n as u64) as usize;
    let mut best: Option<(usize, u64, u64)> = None; // (index, active, weight)
    for k in 0..n {
        let i = (start + k) % n;
        let m = &set.members[i];
        if !eligible(i, m) {
            continue;
        }
        let (a, w) = (m.live.active() as u64, m.weight as u64);
        // a/w < ba/bw  ⇔  a*bw < ba*w
        if best.is_none_or(|(_, ba, bw)| a * bw < ba * w) {
            best = Some((i, a, w));
        }
    }
    best.map(|(i, _, _)| Pick(i))
}

/// Weighted rendezvous hashing on the client address: each client has a
/// fixed preference order over members, so adding or removing one endpoint
/// only moves the clients that preferred it.
fn source(set: &BackendSet, key: u64, eligible: &dyn Fn(usize, &Member) -> bool) -> Option<Pick> {
    let mut best: Option<(usize, f64)> = None;
    for (i, m) in set.members.iter().enumerate() {
        if !eligible(i, m) {
            continue;
        }
        let h = mix(key ^ m.id);
        // u in (0, 1); score = w / -ln(u) (higher wins).
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = m.weight as f64 / -u.ln();
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| Pick(i))
}

/// Power of two choices: two weighted random members, the one with fewer
/// requests in flight (relative to weight) wins.
fn two_choices(set: &BackendSet, eligible: &dyn Fn(usize, &Member) -> bool) -> Option<Pick> {
    let total: u64 = set
        .members
        .iter()
        .enumerate()
        .filter(|(i, m)| eligible(*i, m))
        .map(|(_, m)| m.weight as u64)
        .sum();
    if total == 0 {
        return None;
    }
    let draw = || {
        let mut r = random() % total;
        set.members
            .iter()
            .enumerate()
            .filter(|(i, m)| eligible(*i, m))
            .find(|(_, m)| {
                let w = m.weight as u64;
                if r < w {
                    true
                } else {
                    r -= w;
                    false
                }
            })
            .map(|(i, _)| i)
    };
    let a = draw()?;
    let b = draw().unwrap_or(a);
    let (ma, mb) = (&set.members[a], &set.members[b]);
    let la = ma.live.active() as u64 * mb.weight as u64;
    let lb = mb.live.active() as u64 * ma.weight as u64;
    Some(Pick(if lb < la { b } else { a }))
}

/// The member a sticky cookie names, if it is still there and not ejected.
/// Weight-0 members keep their existing sessions.
pub fn sticky(set: &BackendSet, cookie: &str) -> Option<Pick> {
    set.members
        .iter()
        .position(|m| &*m.cookie == cookie)
        .filter(|i| set.members[*i].live.is_available())
        .map(Pick)
}

fn client_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(a) => u32::from(a) as u64,
        IpAddr::V6(a) => {
            let v = u128::from(a);
            (v >> 64) as u64 ^ v as u64
        }
    }
}

/// splitmix64's finaliser: a good 64-bit mix.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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

/// Reseed this thread's generator (statistical tests use fixed seeds).
pub fn seed_thread_rng(s: u64) {
    RNG.with(|c| c.set(s | 1));
}

/// A fast per-thread random number (not for secrets).
pub fn random_u64() -> u64 {
    random()
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
mod tests;
