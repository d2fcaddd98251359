//! The Kubernetes source: the same objects as the manifests directory, read
//! from the API server with kube-rs watchers.
//!
//! One watcher per kind (Route, Service, EndpointSlice or Endpoints,
//! Ingress, IngressClass, Namespace) plus one per Secret that an Ingress
//! references (field selector on the name: no other Secret is ever read).
//! Objects arrive as `DynamicObject`s and are decoded by the very code that
//! decodes manifests, so everything after the source is one code path.
//!
//! Nothing is published until every kind has completed its first list. A
//! (re)list (`Init` … `InitDone`, e.g. after 410 Gone) is buffered and then
//! swapped in as a whole, so routes never disappear in between. While the API
//! server is unreachable the last snapshot stays published, the watchers
//! retry with kube's default back-off and the source reports itself stale.

use crate::model::parse::{object_from_value, Object};
use crate::model::{Key, Objects};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// One API resource gatehouse reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindSpec {
    pub kind: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

impl KindSpec {
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn api(&self, client: Client) -> Api<DynamicObject> {
        Api::all_with(client, &self.api_resource())
    }
}

const fn kind(
    kind: &'static str,
    group: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> KindSpec {
    KindSpec {
        kind,
        group,
        version: "v1",
        plural,
        namespaced,
    }
}

pub const ROUTE: KindSpec = kind("Route", "route.openshift.io", "routes", true);
pub const SERVICE: KindSpec = kind("Service", "", "services", true);
pub const ENDPOINT_SLICE: KindSpec =
    kind("EndpointSlice", "discovery.k8s.io", "endpointslices", true);
pub const ENDPOINTS: KindSpec = kind("Endpoints", "", "endpoints", true);
pub const INGRESS: KindSpec = kind("Ingress", "networking.k8s.io", "ingresses", true);
pub const INGRESS_CLASS: KindSpec =
    kind("IngressClass", "networking.k8s.io", "ingressclasses", false);
pub const NAMESPACE: KindSpec = kind("Namespace", "", "namespaces", false);
pub const SECRET: KindSpec = kind("Secret", "", "secrets", true);

/// What the rest of the router can see of the source's health.
#[derive(Debug, Default)]
pub struct SourceHealth {
    /// Every kind has completed its first list and a snapshot is published.
    pub synced: AtomicBool,
    /// Some watcher cannot reach the API server (or is refused): the table
    /// is the last one built from a complete view.
    pub stale: AtomicBool,
    /// Watch errors seen (each retried with back-off).
    pub errors: AtomicU64,
    /// Lists after the first one (410 Gone, reconnects).
    pub relists: AtomicU64,
    /// Unix seconds of the last event or completed list from any watcher.
    pub last_event: AtomicU64,
    /// Seconds the first complete sync took, in milliseconds.
    pub initial_sync_ms: AtomicU64,
    /// Objects the API server sent that could not be decoded.
    pub rejected_objects: AtomicU64,
}

/// The part of a Route's or Ingress's status the status writer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub resource_version: String,
    /// Route: `status.ingress[]`; Ingress: `status.loadBalancer.ingress[]`.
    pub entries: Vec<serde_json::Value>,
    /// Route `spec.wildcardPolicy` (`None` when unset).
    pub wildcard_policy: String,
}

/// Current status of the Routes and Ingresses the source has seen.
#[derive(Debug, Default)]
pub struct Observations {
    pub routes: Mutex<HashMap<Key, Observed>>,
    pub ingresses: Mutex<HashMap<Key, Observed>>,
    /// Routes the Route watch reported deleted: with a server-side route
    /// selector that also means "relabelled out of this shard", so the
    /// status writer checks whether the object still carries our entry.
    pub departed: Mutex<Vec<Key>>,
    /// Signalled when any observation changes.
    pub changed: Notify,
}

/// Options of the Kubernetes source.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// Applied server-side to the Route watch (and locally again by the
    /// shard, so both sources behave the same).
    pub route_selector: String,
}

/// A running source.
pub struct KubeSource {
    pub objects: watch::Receiver<Arc<Objects>>,
    pub health: Arc<SourceHealth>,
    pub observations: Arc<Observations>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("health", &self.health)
            .finish()
    }
}

/// Build a client: an explicit kubeconfig, else KUBECONFIG / ~/.kube/config,
/// else the in-cluster service account.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    use anyhow::Context as _;
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("kubeconfig {}", p.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig and not in a cluster")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// How long a burst of watch events may take to settle into one snapshot.
const COALESCE: Duration = Duration::from_millis(20);
/// How long the first snapshot waits for referenced Secrets.
const SECRET_WAIT: Duration = Duration::from_secs(5);

/// Start watching. Returns at once; `objects` gets its first value when
/// every kind has been listed.
pub async fn spawn(client: Client, opts: KubeOptions) -> KubeSource {
    let shared = Arc::new(Shared::default());
    let (tx, rx) = watch::channel(Arc::new(Objects::default()));
    let mut tasks = Vec::new();

    // EndpointSlice where the API serves it (every cluster since 1.21),
    // Endpoints otherwise.
    let endpoints = match probe(&client, &ENDPOINT_SLICE).await {
        Probe::Missing => {
            warn!("discovery.k8s.io/v1 EndpointSlice not served; watching v1 Endpoints instead");
            ENDPOINTS
        }
        _ => ENDPOINT_SLICE,
    };
    let route_missing = matches!(probe(&client, &ROUTE).await, Probe::Missing);
    let mut needed = Vec::new();
    for spec in [ROUTE, SERVICE, endpoints, INGRESS, INGRESS_CLASS, NAMESPACE] {
        let id = spec.kind.to_owned();
        let mut wc = watcher::Config::default().page_size(500);
        if spec == ROUTE && !opts.route_selector.trim().is_empty() {
            wc = wc.labels(&opts.route_selector);
        }
        if spec == ROUTE && route_missing {
            // A plain Kubernetes cluster without the Route CRD: serve
            // Ingresses; the watcher keeps trying, so installing the CRD
            // later brings routes in.
            warn!("route.openshift.io/v1 Route not served (CRD not installed?); serving Ingresses, watching for Routes");
            shared.lock().synced.insert(id.clone());
        } else {
            needed.push(id.clone());
        }
        tasks.push(tokio::spawn(run_watch(
            shared.clone(),
            spec.api(client.clone()),
            wc,
            spec,
            id,
            Scope::All,
        )));
    }
    tasks.push(tokio::spawn(publish_loop(
        shared.clone(),
        tx,
        needed,
        client,
    )));
    KubeSource {
        objects: rx,
        health: shared.health.clone(),
        observations: shared.observations.clone(),
        tasks,
    }
}

enum Probe {
    Served,
    Missing,
    Unknown,
}

async fn probe(client: &Client, spec: &KindSpec) -> Probe {
    match spec
        .api(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => Probe::Served,
        Err(kube::Error::Api(s)) if s.code == 404 => Probe::Missing,
        Err(e) => {
            debug!(kind = spec.kind, error = %e, "probe failed; assuming the API is served");
            Probe::Unknown
        }
    }
}

/// Which keys a watcher's list covers: a (re)list replaces exactly these.
#[derive(Debug, Clone)]
enum Scope {
    All,
    One(Key),
}

impl Scope {
    fn covers(&self, k: &Key) -> bool {
        match self {
            Scope::All => true,
            Scope::One(one) => one == k,
        }
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    notify: Notify,
    health: Arc<SourceHealth>,
    observations: Arc<Observations>,
}

#[derive(Default)]
struct State {
    objects: Objects,
    /// Objects of a list in progress, by watcher id.
    buffers: HashMap<String, Vec<(Key, Object)>>,
    /// Watchers that completed at least one list.
    synced: HashSet<String>,
    /// Watchers whose last result was an error.
    stale: HashSet<String>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way later events would not repair; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.health.last_event.store(now, Ordering::Relaxed);
    }

    fn ok(&self, st: &mut State, id: &str) {
        if st.stale.remove(id) {
            info!(watch = id, "API server reachable again; resyncing");
            self.health
                .stale
                .store(!st.stale.is_empty(), Ordering::Relaxed);
        }
    }

    fn error(&self, id: &str, e: &watcher::Error) {
        self.health.errors.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        if st.stale.insert(id.to_owned()) {
            warn!(watch = id, error = %e, "watch failed; serving the last table and retrying with back-off");
        } else {
            debug!(watch = id, error = %e, "watch still failing");
        }
        self.health.stale.store(true, Ordering::Relaxed);
    }

    fn event(&self, spec: &KindSpec, id: &str, scope: &Scope, ev: Event<DynamicObject>) {
        self.touch();
        let mut st = self.lock();
        self.ok(&mut st, id);
        let changed = match ev {
            Event::Init => {
                if st.synced.contains(id) {
                    self.health.relists.fetch_add(1, Ordering::Relaxed);
                    debug!(watch = id, "relisting");
                }
                st.buffers.insert(id.to_owned(), Vec::new());
                false
            }
            Event::InitApply(o) => {
                if let Some((key, obj)) = self.decode(spec, o) {
                    st.buffers
                        .entry(id.to_owned())
                        .or_default()
                        .push((key, obj));
                }
                false
            }
            Event::InitDone => {
                let listed = st.buffers.remove(id).unwrap_or_default();
                let keys: HashSet<&Key> = listed.iter().map(|(k, _)| k).collect();
                let mut gone = Vec::new();
                st.objects.retain(spec.kind, |k| {
                    let keep = !scope.covers(k) || keys.contains(k);
                    if !keep {
                        gone.push(k.clone());
                    }
                    keep
                });
                drop(keys);
                self.forget(spec, &gone);
                let mut changed = !gone.is_empty();
                for (_, obj) in listed {
                    changed |= st.objects.insert_if_changed(obj);
                }
                // First list of this watcher: the source may now be complete.
                changed |= st.synced.insert(id.to_owned());
                changed
            }
            Event::Apply(o) => {
                let key = key_of(spec, &o);
                match self.decode(spec, o) {
                    Some((_, obj)) => st.objects.insert_if_changed(obj),
                    // Now undecodable: it no longer routes anything.
                    None => key.is_some_and(|k| st.objects.remove(spec.kind, &k)),
                }
            }
            Event::Delete(o) => match key_of(spec, &o) {
                Some(k) => {
                    self.forget(spec, std::slice::from_ref(&k));
                    if spec.kind == "Route" {
                        self.observations
                            .departed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(k.clone());
                        self.observations.changed.notify_one();
                    }
                    st.objects.remove(spec.kind, &k)
                }
                None => false,
            },
        };
        drop(st);
        if changed {
            self.notify.notify_one();
        }
    }

    /// DynamicObject → the model object, through the manifests decoder.
    /// Route and Ingress status is recorded for the status writer.
    fn decode(&self, spec: &KindSpec, mut o: DynamicObject) -> Option<(Key, Object)> {
        o.metadata.managed_fields = None;
        let key = key_of(spec, &o)?;
        self.observe(spec, &key, &o);
        let mut v = match serde_json::to_value(&o) {
            Ok(v) => v,
            Err(e) => {
                self.reject(spec, &key, &e.to_string());
                return None;
            }
        };
        if let Some(m) = v.as_object_mut() {
            // List items carry no kind/apiVersion.
            m.insert("kind".into(), spec.kind.into());
            m.insert("apiVersion".into(), spec.api_version().into());
            m.remove("status");
        }
        match object_from_value(v) {
            Ok(obj) => Some((key, obj)),
            Err(e) => {
                self.reject(spec, &key, &e.reason);
                None
            }
        }
    }

    fn reject(&self, spec: &KindSpec, key: &Key, why: &str) {
        self.health.rejected_objects.fetch_add(1, Ordering::Relaxed);
        warn!(object = %format!("{} {}/{}", spec.kind, key.0, key.1), problem = why, "object from the API server not loaded");
    }

    fn observe(&self, spec: &KindSpec, key: &Key, o: &DynamicObject) {
        let (map, entries) = match spec.kind {
            "Route" => (&self.observations.routes, o.data.pointer("/status/ingress")),
            "Ingress" => (
                &self.observations.ingresses,
                o.data.pointer("/status/loadBalancer/ingress"),
            ),
            _ => return,
        };
        let seen = Observed {
            resource_version: o.metadata.resource_version.clone().unwrap_or_default(),
            entries: entries
                .and_then(|e| e.as_array())
                .cloned()
                .unwrap_or_default(),
            wildcard_policy: o
                .data
                .pointer("/spec/wildcardPolicy")
                .and_then(|w| w.as_str())
                .unwrap_or("None")
                .to_owned(),
        };
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(key) != Some(&seen) {
            m.insert(key.clone(), seen);
            drop(m);
            self.observations.changed.notify_one();
        }
    }

    fn forget(&self, spec: &KindSpec, keys: &[Key]) {
        let map = match spec.kind {
            "Route" => &self.observations.routes,
            "Ingress" => &self.observations.ingresses,
            _ => return,
        };
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            m.remove(k);
        }
    }
}

fn key_of(spec: &KindSpec, o: &DynamicObject) -> Option<Key> {
    let name = o.metadata.name.clone()?;
    let ns = if spec.namespaced {
        o.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    } else {
        String::new()
    };
    Some((ns, name))
}

async fn run_watch(
    shared: Arc<Shared>,
    api: Api<DynamicObject>,
    wc: watcher::Config,
    spec: KindSpec,
    id: String,
    scope: Scope,
) {
    let mut stream = watcher(api, wc).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => shared.event(&spec, &id, &scope, ev),
            Err(e) => shared.error(&id, &e),
        }
    }
}

/// Publish a snapshot after each settled burst of changes, once complete;
/// keep one watcher per referenced Secret.
async fn publish_loop(
    shared: Arc<Shared>,
    tx: watch::Sender<Arc<Objects>>,
    needed: Vec<String>,
    client: Client,
) {
    let started = Instant::now();
    let mut secrets: HashMap<Key, (String, JoinHandle<()>)> = HashMap::new();
    let mut first = true;
    loop {
        shared.notify.notified().await;
        tokio::time::sleep(COALESCE).await;
        let snapshot = {
            let st = shared.lock();
            if !needed.iter().all(|id| st.synced.contains(id)) {
                continue;
            }
            Arc::new(st.objects.clone())
        };
        let wanted = referenced_secrets(&snapshot);
        reconcile_secrets(&shared, &client, &mut secrets, &wanted);
        let snapshot = if first {
            // The first table should have the Ingress certificates: wait
            // (bounded) for the Secret watchers' first lists.
            let deadline = Instant::now() + SECRET_WAIT;
            loop {
                let done = {
                    let st = shared.lock();
                    secrets.values().all(|(id, _)| st.synced.contains(id))
                };
                if done || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let st = shared.lock();
            Arc::new(st.objects.clone())
        } else {
            snapshot
        };
        if first {
            first = false;
            let ms = started.elapsed().as_millis() as u64;
            shared.health.initial_sync_ms.store(ms, Ordering::Relaxed);
            shared.health.synced.store(true, Ordering::Relaxed);
            info!(
                routes = snapshot.routes.len(),
                services = snapshot.services.len(),
                endpoint_slices = snapshot.endpoint_slices.len(),
                endpoints = snapshot.endpoints.len(),
                ingresses = snapshot.ingresses.len(),
                namespaces = snapshot.namespaces.len(),
                secrets = snapshot.secrets.len(),
                ms,
                "initial sync from the API server complete"
            );
        }
        tx.send_replace(snapshot);
    }
}

/// `(namespace, secretName)` of every Ingress TLS entry.
fn referenced_secrets(objs: &Objects) -> HashSet<Key> {
    objs.ingresses
        .iter()
        .flat_map(|((ns, _), ing)| {
            ing.spec
                .tls
                .iter()
                .filter_map(|t| t.secret_name.clone())
                .map(move |s| (ns.clone(), s))
        })
        .collect()
}

fn reconcile_secrets(
    shared: &Arc<Shared>,
    client: &Client,
    running: &mut HashMap<Key, (String, JoinHandle<()>)>,
    wanted: &HashSet<Key>,
) {
    let gone: Vec<Key> = running
        .keys()
        .filter(|k| !wanted.contains(*k))
        .cloned()
        .collect();
    let mut removed = false;
    for k in gone {
        if let Some((id, task)) = running.remove(&k) {
            task.abort();
            let mut st = shared.lock();
            st.synced.remove(&id);
            st.stale.remove(&id);
            st.buffers.remove(&id);
            removed |= st.objects.remove("Secret", &k);
        }
    }
    for k in wanted {
        if running.contains_key(k) {
            continue;
        }
        let id = format!("Secret {}/{}", k.0, k.1);
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &k.0, &SECRET.api_resource());
        let wc = watcher::Config::default().fields(&format!("metadata.name={}", k.1));
        let task = tokio::spawn(run_watch(
            shared.clone(),
            api,
            wc,
            SECRET,
            id.clone(),
            Scope::One(k.clone()),
        ));
        running.insert(k.clone(), (id, task));
    }
    if removed {
        shared.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(kind: &KindSpec, ns: &str, name: &str, extra: serde_json::Value) -> DynamicObject {
        let mut v = json!({"metadata": {"name": name, "namespace": ns, "resourceVersion": "1"}});
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                m.insert(k.clone(), x.clone());
            }
        }
        let _ = kind;
        serde_json::from_value(v).unwrap()
    }

    fn route(name: &str, host: &str) -> DynamicObject {
        obj(
            &ROUTE,
            "shop",
            name,
            json!({"spec": {"host": host, "to": {"kind": "Service", "name": "web"}},
                   "status": {"ingress": [{"routerName": "other", "host": host}]}}),
        )
    }

    #[test]
    fn a_relist_replaces_the_kind_at_once_and_never_empties_it() {
        let s = Shared::default();
        let id = "Route";
        s.event(&ROUTE, id, &Scope::All, Event::Init);
        s.event(
            &ROUTE,
            id,
            &Scope::All,
            Event::InitApply(route("a", "a.example.com")),
        );
        s.event(
            &ROUTE,
            id,
            &Scope::All,
            Event::InitApply(route("b", "b.example.com")),
        );
        assert!(
            s.lock().objects.routes.is_empty(),
            "buffered until InitDone"
        );
        s.event(&ROUTE, id, &Scope::All, Event::InitDone);
        assert_eq!(s.lock().objects.routes.len(), 2);
        let a_before = s.lock().objects.routes.values().next().cloned().unwrap();

        // 410 Gone → relist: during it the old routes stay; after it `b`
        // (absent from the new list) is gone and `a` keeps its Arc.
        s.event(&ROUTE, id, &Scope::All, Event::Init);
        s.event(
            &ROUTE,
            id,
            &Scope::All,
            Event::InitApply(route("a", "a.example.com")),
        );
        assert_eq!(s.lock().objects.routes.len(), 2, "nothing dropped mid-list");
        s.event(
            &ROUTE,
            id,
            &Scope::All,
            Event::InitApply(route("c", "c.example.com")),
        );
        s.event(&ROUTE, id, &Scope::All, Event::InitDone);
        let st = s.lock();
        let names: Vec<_> = st.objects.routes.keys().map(|k| k.1.clone()).collect();
        assert_eq!(names, ["a", "c"]);
        assert!(Arc::ptr_eq(
            &a_before,
            st.objects.routes.values().next().unwrap()
        ));
        assert_eq!(s.health.relists.load(Ordering::Relaxed), 1);
        drop(st);
        let obs = s.observations.routes.lock().unwrap();
        assert_eq!(obs.len(), 2, "b's observation forgotten");
        assert_eq!(obs[&("shop".into(), "a".into())].entries.len(), 1);
    }

    #[test]
    fn malformed_objects_are_skipped_and_counted() {
        let s = Shared::default();
        let bad = obj(
            &ROUTE,
            "shop",
            "bad",
            json!({"spec": {"host": 42, "to": "nope"}}),
        );
        s.event(&ROUTE, "Route", &Scope::All, Event::Init);
        s.event(&ROUTE, "Route", &Scope::All, Event::InitApply(bad));
        s.event(
            &ROUTE,
            "Route",
            &Scope::All,
            Event::InitApply(route("ok", "ok.example.com")),
        );
        s.event(&ROUTE, "Route", &Scope::All, Event::InitDone);
        assert_eq!(s.lock().objects.routes.len(), 1);
        assert_eq!(s.health.rejected_objects.load(Ordering::Relaxed), 1);
        // An update that breaks a good object removes it.
        let broken = obj(&ROUTE, "shop", "ok", json!({"spec": {"host": {"a": 1}}}));
        s.event(&ROUTE, "Route", &Scope::All, Event::Apply(broken));
        assert!(s.lock().objects.routes.is_empty());
    }

    #[test]
    fn a_secret_watch_replaces_only_its_secret() {
        let s = Shared::default();
        let secret = |name: &str| {
            obj(
                &SECRET,
                "shop",
                name,
                json!({"type": "kubernetes.io/tls", "data": {}}),
            )
        };
        let one = Scope::One(("shop".into(), "a".into()));
        s.event(&SECRET, "Secret shop/a", &one, Event::Init);
        s.event(
            &SECRET,
            "Secret shop/a",
            &one,
            Event::InitApply(secret("a")),
        );
        s.event(&SECRET, "Secret shop/a", &one, Event::InitDone);
        let two = Scope::One(("shop".into(), "b".into()));
        s.event(&SECRET, "Secret shop/b", &two, Event::Init);
        s.event(
            &SECRET,
            "Secret shop/b",
            &two,
            Event::InitApply(secret("b")),
        );
        s.event(&SECRET, "Secret shop/b", &two, Event::InitDone);
        // b's watch relists and finds nothing: only b goes.
        s.event(&SECRET, "Secret shop/b", &two, Event::Init);
        s.event(&SECRET, "Secret shop/b", &two, Event::InitDone);
        let names: Vec<_> = s
            .lock()
            .objects
            .secrets
            .keys()
            .map(|k| k.1.clone())
            .collect();
        assert_eq!(names, ["a"]);
    }
}
