//! Route and Ingress status, written back to the API server.
//!
//! For every Route in this router's shard, its entry in `status.ingress[]`
//! (matched by `routerName`) says whether this router admitted it, with
//! OpenShift's reasons. Entries of other routers are kept as they are. A
//! write happens only when our entry differs from what the API server has
//! (ignoring `lastTransitionTime`), with the Route's `resourceVersion` as a
//! precondition so a concurrent writer is never overwritten blindly. If
//! someone keeps rewriting our entry (two routers with the same name and
//! different opinions), we back off instead of fighting.
//!
//! Ingresses this router serves get `status.loadBalancer.ingress` from the
//! configured addresses.

use super::kube::{Observations, Observed, INGRESS, ROUTE};
use crate::model::admission::RouteStatus;
use crate::model::Key;
use crate::table::TableStore;
use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// What the writer needs to know about this router.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    pub router_name: String,
    pub canonical_hostname: Option<String>,
    /// Ingress `status.loadBalancer.ingress` addresses; empty: not written.
    pub ingress_addresses: Vec<String>,
}

/// Status writes by outcome, for /metrics: written, raced (409/404, retried
/// on the next event), failed.
pub static WRITES: [std::sync::atomic::AtomicU64; 3] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

fn count(i: usize) {
    WRITES[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Writes within this window that count towards a fight.
const FIGHT_WINDOW: Duration = Duration::from_secs(60);
/// Writes of one route's entry within the window before backing off.
const FIGHT_WRITES: usize = 3;
const FIGHT_BACKOFF: Duration = Duration::from_secs(60);
const FIGHT_BACKOFF_MAX: Duration = Duration::from_secs(600);
/// Concurrent status writes.
const PARALLEL: usize = 8;

#[derive(Debug, Default)]
struct Contention {
    writes: VecDeque<Instant>,
    blocked_until: Option<Instant>,
    backoff: Option<Duration>,
    /// The resourceVersion our last write was based on: until the watch
    /// brings a newer one, writing again would only conflict.
    written_on: Option<String>,
    /// When the route was first seen missing from the table while carrying
    /// our entry.
    missing_since: Option<Instant>,
}

/// How long a route must be absent from the table (out of the shard) before
/// our status entry is removed: the table may lag the watch a little.
const LEAVE_GRACE: Duration = Duration::from_secs(2);

/// Run until `shutdown`.
pub async fn run(
    client: Client,
    store: Arc<TableStore>,
    observations: Arc<Observations>,
    cfg: StatusConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut generations = store.subscribe();
    let mut contention: HashMap<Key, Contention> = HashMap::new();
    let mut ingress_written: HashMap<Key, String> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The statuses last looked at: endpoint-only tables share them, and then
    // (with no new observation and no route waiting to leave) there is
    // nothing to do; at 10k routes and 100 endpoint updates per second a
    // full pass each time was a visible share of the router's CPU.
    let mut last_statuses: Option<imbl::Vector<Arc<RouteStatus>>> = None;
    let mut dirty = true;
    loop {
        tokio::select! {
            r = generations.changed() => if r.is_err() { return },
            _ = observations.changed.notified() => dirty = true,
            _ = tick.tick() => {}
            _ = crate::app_signal::stopped(&mut shutdown) => return,
        }
        // Let a burst of events settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !store.is_ready() {
            continue;
        }
        let table = store.load_full();
        let leaving = contention.values().any(|c| c.missing_since.is_some());
        if !dirty
            && !leaving
            && last_statuses
                .as_ref()
                .is_some_and(|s| s.ptr_eq(&table.statuses))
        {
            continue;
        }
        dirty = false;
        last_statuses = Some(table.statuses.clone());
        let now = Instant::now();
        let mut patches: Vec<(Key, Patch<Value>, bool)> = Vec::new();
        {
            let routes = observations
                .routes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Routes that left this router's shard: remove our entry (after
            // a grace period, so a table lagging the watch never makes us
            // remove an entry we are about to write again).
            let in_table: std::collections::HashSet<(&str, &str)> = table
                .statuses
                .iter()
                .filter(|s| s.ingress.is_none())
                .map(|s| (s.namespace.as_str(), s.name.as_str()))
                .collect();
            for (key, seen) in routes.iter() {
                if in_table.contains(&(key.0.as_str(), key.1.as_str())) {
                    if let Some(c) = contention.get_mut(key) {
                        c.missing_since = None;
                    }
                    continue;
                }
                let Some(entries) = without_ours(seen, &cfg.router_name) else {
                    continue;
                };
                let c = contention.entry(key.clone()).or_default();
                match c.missing_since {
                    None => {
                        c.missing_since = Some(now);
                        continue;
                    }
                    Some(t) if now - t < LEAVE_GRACE => continue,
                    Some(_) => {}
                }
                if c.written_on.as_deref() == Some(seen.resource_version.as_str()) {
                    continue;
                }
                c.written_on = Some(seen.resource_version.clone());
                info!(route = %format!("{}/{}", key.0, key.1), "route left this router's shard; removing its status entry");
                patches.push((
                    key.clone(),
                    Patch::Merge(json!({
                        "metadata": {"resourceVersion": seen.resource_version},
                        "status": {"ingress": entries},
                    })),
                    true,
                ));
            }
            for s in table.statuses.iter().filter(|s| s.ingress.is_none()) {
                let key = (s.namespace.clone(), s.name.clone());
                let Some(seen) = routes.get(&key) else {
                    continue;
                };
                let Some(entries) = desired_entries(s, seen, &cfg) else {
                    continue;
                };
                let c = contention.entry(key.clone()).or_default();
                if c.written_on.as_deref() == Some(seen.resource_version.as_str()) {
                    continue;
                }
                if let Some(until) = c.blocked_until {
                    if now < until {
                        continue;
                    }
                    c.blocked_until = None;
                }
                while c.writes.front().is_some_and(|t| now - *t > FIGHT_WINDOW) {
                    c.writes.pop_front();
                }
                if c.writes.len() >= FIGHT_WRITES {
                    let b = c
                        .backoff
                        .map(|b| (b * 2).min(FIGHT_BACKOFF_MAX))
                        .unwrap_or(FIGHT_BACKOFF);
                    c.backoff = Some(b);
                    c.blocked_until = Some(now + b);
                    warn!(route = %format!("{}/{}", key.0, key.1), router = %cfg.router_name, backoff_s = b.as_secs(),
                        "another writer keeps changing this router's status entry; backing off");
                    continue;
                }
                c.writes.push_back(now);
                c.written_on = Some(seen.resource_version.clone());
                patches.push((
                    key,
                    Patch::Merge(json!({
                        "metadata": {"resourceVersion": seen.resource_version},
                        "status": {"ingress": entries},
                    })),
                    true,
                ));
            }
        }
        if !cfg.ingress_addresses.is_empty() {
            let ingresses = observations
                .ingresses
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let want: Vec<Value> = cfg
                .ingress_addresses
                .iter()
                .map(|a| {
                    if a.parse::<std::net::IpAddr>().is_ok() {
                        json!({"ip": a})
                    } else {
                        json!({"hostname": a})
                    }
                })
                .collect();
            let mut served: Vec<Key> = table
                .statuses
                .iter()
                .filter(|s| s.admitted)
                .filter_map(|s| s.ingress.clone().map(|i| (s.namespace.clone(), i)))
                .collect();
            served.sort();
            served.dedup();
            for key in served {
                let Some(seen) = ingresses.get(&key) else {
                    continue;
                };
                if seen.entries == want || ingress_written.get(&key) == Some(&seen.resource_version)
                {
                    continue;
                }
                ingress_written.insert(key.clone(), seen.resource_version.clone());
                patches.push((
                    key,
                    Patch::Merge(json!({"status": {"loadBalancer": {"ingress": want}}})),
                    false,
                ));
            }
        }
        let departed: Vec<Key> = std::mem::take(
            &mut *observations
                .departed
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for key in departed {
            contention.remove(&key);
            // Deleted, or relabelled out of a server-side selector: if the
            // object is still there with our entry, remove the entry.
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &key.0, &ROUTE.api_resource());
            if let Ok(Some(o)) = api.get_opt(&key.1).await {
                let seen = Observed {
                    resource_version: o.metadata.resource_version.clone().unwrap_or_default(),
                    entries: o
                        .data
                        .pointer("/status/ingress")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                    wildcard_policy: String::new(),
                };
                if let Some(entries) = without_ours(&seen, &cfg.router_name) {
                    info!(route = %format!("{}/{}", key.0, key.1), "route left this router's selector; removing its status entry");
                    patches.push((
                        key,
                        Patch::Merge(json!({
                            "metadata": {"resourceVersion": seen.resource_version},
                            "status": {"ingress": entries},
                        })),
                        true,
                    ));
                }
            }
        }
        if patches.is_empty() {
            continue;
        }
        let n = patches.len();
        let started = Instant::now();
        let results: Vec<bool> = futures::stream::iter(patches)
            .map(|(key, patch, route)| write(&client, key, patch, route))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let ok = results.iter().filter(|r| **r).count();
        info!(
            written = ok,
            failed = n - ok,
            ms = started.elapsed().as_millis() as u64,
            "status written"
        );
    }
}

async fn write(client: &Client, key: Key, patch: Patch<Value>, route: bool) -> bool {
    let spec = if route { ROUTE } else { INGRESS };
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &key.0, &spec.api_resource());
    match api
        .patch_status(&key.1, &PatchParams::default(), &patch)
        .await
    {
        Ok(_) => {
            count(0);
            true
        }
        // Changed or deleted meanwhile: the watch brings the new state and
        // the next round decides again.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
            debug!(object = %format!("{} {}/{}", spec.kind, key.0, key.1), code = s.code, "status write raced; will retry on the next event");
            count(1);
            false
        }
        Err(e) => {
            warn!(object = %format!("{} {}/{}", spec.kind, key.0, key.1), error = %e, "status write failed");
            count(2);
            false
        }
    }
}

/// `status.ingress[]` without this router's entry, or `None` when there is
/// none to remove.
fn without_ours(seen: &Observed, router: &str) -> Option<Vec<Value>> {
    let ours = |e: &Value| e.get("routerName").and_then(Value::as_str) == Some(router);
    if !seen.entries.iter().any(ours) {
        return None;
    }
    Some(seen.entries.iter().filter(|e| !ours(e)).cloned().collect())
}

/// The full `status.ingress[]` to write, or `None` when our entry is
/// already right.
fn desired_entries(s: &RouteStatus, seen: &Observed, cfg: &StatusConfig) -> Option<Vec<Value>> {
    let ours = seen
        .entries
        .iter()
        .position(|e| e.get("routerName").and_then(Value::as_str) == Some(&cfg.router_name));
    let old = ours.map(|i| &seen.entries[i]);
    let (status, reason, message) = if s.admitted {
        ("True", None, None)
    } else {
        ("False", s.reason.map(|r| r.to_string()), s.message.clone())
    };
    let old_cond = old
        .and_then(|e| e.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|c| {
            c.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Admitted"))
        });
    let same_cond = old_cond.is_some_and(|c| {
        c.get("status").and_then(Value::as_str) == Some(status)
            && c.get("reason").and_then(Value::as_str) == reason.as_deref()
            && c.get("message").and_then(Value::as_str) == message.as_deref()
    });
    let same = old.is_some_and(|e| {
        e.get("host").and_then(Value::as_str) == Some(s.host.as_str())
            && e.get("wildcardPolicy").and_then(Value::as_str) == Some(&seen.wildcard_policy)
            && e.get("routerCanonicalHostname").and_then(Value::as_str)
                == cfg.canonical_hostname.as_deref()
    }) && same_cond;
    if same {
        return None;
    }
    let transition = match old_cond {
        Some(c) if c.get("status").and_then(Value::as_str) == Some(status) => c
            .get("lastTransitionTime")
            .cloned()
            .unwrap_or_else(|| rfc3339_now().into()),
        _ => rfc3339_now().into(),
    };
    let mut cond = json!({"type": "Admitted", "status": status, "lastTransitionTime": transition});
    if let Some(r) = reason {
        cond["reason"] = r.into();
    }
    if let Some(m) = message {
        cond["message"] = m.into();
    }
    let mut entry = json!({
        "host": s.host,
        "routerName": cfg.router_name,
        "wildcardPolicy": seen.wildcard_policy,
        "conditions": [cond],
    });
    if let Some(h) = &cfg.canonical_hostname {
        entry["routerCanonicalHostname"] = h.clone().into();
    }
    let mut entries = seen.entries.clone();
    match ours {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    if ours.is_none() {
        info!(route = %format!("{}/{}", s.namespace, s.name), admitted = s.admitted, "route status: adding this router's entry");
    }
    Some(entries)
}

/// `2024-01-02T03:04:05Z` for now (the API's `metav1.Time`).
fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(secs: i64) -> String {
    // Whole seconds, as metav1.Time is written.
    let full = crate::telemetry::rfc3339_millis(std::time::Duration::from_secs(secs.max(0) as u64));
    format!("{}Z", &full[..19])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::admission::Reason;

    fn status(admitted: bool) -> RouteStatus {
        RouteStatus {
            namespace: "shop".into(),
            name: "web".into(),
            host: "www.example.com".into(),
            path: String::new(),
            termination: None,
            admitted,
            reason: (!admitted).then_some(Reason::HostAlreadyClaimed),
            message: (!admitted).then(|| "taken".to_owned()),
            ingress: None,
        }
    }

    fn cfg() -> StatusConfig {
        StatusConfig {
            router_name: "dmz".into(),
            canonical_hostname: Some("router.dmz.example.com".into()),
            ingress_addresses: vec![],
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_704_164_645), "2024-01-02T03:04:05Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn our_entry_is_added_kept_and_replaced_others_untouched() {
        let other = json!({"routerName": "intranet", "host": "www.example.com"});
        let mut seen = Observed {
            resource_version: "7".into(),
            entries: vec![other.clone()],
            wildcard_policy: "None".into(),
        };
        let e = desired_entries(&status(true), &seen, &cfg()).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0], other);
        assert_eq!(e[1]["routerName"], "dmz");
        assert_eq!(e[1]["conditions"][0]["status"], "True");
        assert_eq!(e[1]["routerCanonicalHostname"], "router.dmz.example.com");
        // Written and observed back: nothing to do.
        seen.entries = e.clone();
        assert_eq!(desired_entries(&status(true), &seen, &cfg()), None);
        // Rejected now: our entry changes, the other stays first.
        let e2 = desired_entries(&status(false), &seen, &cfg()).unwrap();
        assert_eq!(e2.len(), 2);
        assert_eq!(e2[0], other);
        let c = &e2[1]["conditions"][0];
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], "HostAlreadyClaimed");
        assert_eq!(c["message"], "taken");
    }
}
