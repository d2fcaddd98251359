//! Active health checks: a TCP connect to every endpoint of routes with
//! more than one endpoint, at the route's check interval (OpenShift's
//! `router.openshift.io/haproxy.health.check.interval`, default 5 s).
//! Results mark endpoints down/up in their live state, which survives
//! table swaps.

use crate::table::{Endpoint, EndpointLive, HostRoutes, Shard, TableStore};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the checker looks for due checks (a check runs at most this
/// late; intervals are seconds).
const TICK: Duration = Duration::from_millis(250);
/// How often, at most, the list of endpoints to check is rebuilt.
const REBUILD: Duration = Duration::from_secs(1);

type Target = (Endpoint, Duration, Arc<EndpointLive>);
type HostShard = Arc<Shard<Arc<HostRoutes>>>;

/// What the last collect found in each shard of the table's host maps,
/// with the shard: a later table that still shares a shard holds the same
/// routes there, so only the shards a change copied are walked again (at
/// 10k routes, walking them all on every change was the checker's cost,
/// on a proxy thread).
#[derive(Default)]
struct Collected {
    parts: Vec<(HostShard, Vec<Target>)>,
}

/// Endpoint → shortest interval asked by any route using it, for routes with
/// more than one endpoint (as OpenShift: no checks for a lone endpoint,
/// there is nothing to fail over to).
fn collect(store: &TableStore, cache: &mut Collected) -> Vec<Target> {
    let table = store.load();
    let mut parts = Vec::new();
    for (i, shard) in table.host_shards().enumerate() {
        let part = match cache.parts.get_mut(i) {
            Some((old, part)) if Arc::ptr_eq(old, shard) => std::mem::take(part),
            _ => shard_targets(shard),
        };
        parts.push((shard.clone(), part));
    }
    let mut due: HashMap<Endpoint, (Duration, Arc<EndpointLive>)> = HashMap::new();
    for (ep, interval, live) in parts.iter().flat_map(|(_, p)| p) {
        let e = due
            .entry(ep.clone())
            .or_insert_with(|| (*interval, live.clone()));
        e.0 = e.0.min(*interval);
    }
    cache.parts = parts;
    due.into_iter().map(|(ep, (i, l))| (ep, i, l)).collect()
}

/// Every endpoint of every route with more than one, in one shard, with
/// its route's interval.
fn shard_targets(shard: &Shard<Arc<HostRoutes>>) -> Vec<Target> {
    let mut out = Vec::new();
    for (_, host) in shard.iter() {
        for route in host.routes.iter() {
            let set = &route.backends;
            if set.members.len() < 2 {
                continue;
            }
            for m in set.members.iter() {
                let g = &set.groups[m.group as usize];
                let ep = &g.endpoints[m.index as usize];
                out.push((ep.clone(), route.settings.check_interval, m.live.clone()));
            }
        }
    }
    out
}

/// Run until `shutdown`.
pub async fn run(
    store: Arc<TableStore>,
    connect_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    // What to check, rebuilt when the table changes but at most once per
    // REBUILD: with 10k routes × 5 endpoints, rebuilding on every tick or
    // every endpoint update was the router's largest CPU cost
    // (benches/kube_sync under endpoint churn).
    let mut targets: Vec<Target> = Vec::new();
    let mut cache = Collected::default();
    let mut built_gen = None;
    let mut built_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = crate::app_signal::stopped(&mut shutdown) => return,
        }
        let gen = store.load().generation;
        if built_gen != Some(gen) && (built_gen.is_none() || built_at.elapsed() >= REBUILD) {
            targets = collect(&store, &mut cache);
            built_gen = Some(gen);
            built_at = tokio::time::Instant::now();
        }
        for (ep, interval, live) in &targets {
            if !live.check_due(*interval) {
                continue;
            }
            let (ep, interval, live) = (ep.clone(), *interval, live.clone());
            let timeout = connect_timeout.min(interval);
            tokio::spawn(async move {
                let ok = check(&ep, timeout).await;
                match live.record_check(ok) {
                    Some(false) => {
                        warn!(endpoint = %ep, "health check failed; endpoint marked down")
                    }
                    Some(true) => info!(endpoint = %ep, "health check passed; endpoint back up"),
                    None => {}
                }
            });
        }
    }
}

async fn check(ep: &Endpoint, timeout: Duration) -> bool {
    let connect = async {
        match ep {
            Endpoint::Socket(a) => tokio::net::TcpStream::connect(a).await.is_ok(),
            Endpoint::Dns {
                host,
                port,
                public_only,
            } => match tokio::net::lookup_host((&**host, *port)).await {
                Ok(addrs) => {
                    for a in addrs {
                        if *public_only && crate::compile::is_node_local(a.ip()) {
                            continue;
                        }
                        if tokio::net::TcpStream::connect(a).await.is_ok() {
                            return true;
                        }
                    }
                    false
                }
                Err(_) => false,
            },
        }
    };
    tokio::time::timeout(timeout, connect)
        .await
        .unwrap_or(false)
}
