//! `--kube` against a real kube-apiserver + etcd (scripts/kube-testenv.sh
//! builds them from Go modules into ~/.cache/gatehouse-kube on first use).
//! Objects are written with kube-rs; routing is checked through real
//! sockets. Upstreams listen on the node's own address: the API server
//! refuses loopback endpoints, as a cluster would.

use crate::support::*;
use crate::tls::{client_config, connect, get_over, Ca};
use gatehouse::config::{AccessLogMode, RouterConfig};
use http::StatusCode;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kube-testenv.sh")
}

/// A running etcd + kube-apiserver, stopped on drop (and by the script's
/// watchdog if this process dies first).
struct Env {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Env {
    fn start(tag: &str) -> Env {
        static BUILT: Mutex<bool> = Mutex::new(false);
        {
            let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
            if !*built {
                let st = std::process::Command::new("bash")
                    .arg(script())
                    .arg("build")
                    .stdout(std::process::Stdio::null())
                    .status()
                    .expect("run kube-testenv.sh build");
                assert!(st.success(), "building kube-apiserver/etcd failed");
                *built = true;
            }
        }
        // One start at a time (they race for free ports), and one retry:
        // a port taken between the script's check and the bind is not a
        // failure of the code under test.
        static STARTING: Mutex<()> = Mutex::new(());
        let _one = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let mut attempt = 0;
        let (dir, out) = loop {
            attempt += 1;
            let dir = std::env::temp_dir().join(format!(
                "gatehouse-kube-{tag}-{}-{}",
                std::process::id(),
                rand_u32()
            ));
            let out = std::process::Command::new("bash")
                .arg(script())
                .arg("start")
                .arg(&dir)
                .env("GATEHOUSE_KUBE_OWNER_PID", std::process::id().to_string())
                .output()
                .expect("run kube-testenv.sh start");
            if out.status.success() || attempt == 2 {
                break (dir, out);
            }
            eprintln!(
                "kube-testenv start failed, retrying:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        assert!(
            out.status.success(),
            "kube-testenv start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kubeconfig = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Env { dir, kubeconfig }
    }

    /// One environment for the tests that do not stop the API server.
    fn shared() -> &'static Env {
        static ENV: OnceLock<Env> = OnceLock::new();
        ENV.get_or_init(|| Env::start("shared"))
    }

    async fn client(&self) -> Client {
        gatehouse::source::kube::client(Some(&self.kubeconfig))
            .await
            .unwrap()
    }

    fn router_config(&self, name: &str) -> RouterConfig {
        let mut cfg = RouterConfig {
            http: Some("127.0.0.1:0".parse().unwrap()),
            https: Some("127.0.0.1:0".parse().unwrap()),
            admin: Some("127.0.0.1:0".parse().unwrap()),
            access_log: AccessLogMode::Off,
            router_name: name.into(),
            ..RouterConfig::default()
        };
        cfg.kube.enabled = true;
        cfg.kube.kubeconfig = Some(self.kubeconfig.clone());
        cfg
    }
}

/// Kill the API server of the environment in `dir`, wait `pause`, start it
/// again (same port, same etcd).
fn restart_apiserver(dir: &Path, pause: Duration) {
    let st = std::process::Command::new("bash")
        .arg(script())
        .arg("restart-apiserver")
        .arg(dir)
        .arg(pause.as_secs().to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as u32
}

/// This machine's first global IPv4 address (what a pod IP would be).
fn node_ip() -> Ipv4Addr {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip (iproute2) is needed for the kube tests");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("a non-loopback IPv4 address on this machine")
}

/// Create or update any object by server-side apply.
async fn apply(client: &Client, v: Value) {
    let api = dyn_api(client, &v).await;
    let name = v["metadata"]["name"].as_str().unwrap().to_owned();
    api.patch(
        &name,
        &PatchParams::apply("gatehouse-tests").force(),
        &Patch::Apply(&v),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

async fn delete(client: &Client, v: Value) {
    let api = dyn_api(client, &v).await;
    let name = v["metadata"]["name"].as_str().unwrap();
    api.delete(name, &DeleteParams::default()).await.unwrap();
}

async fn get_obj(client: &Client, v: Value) -> DynamicObject {
    let api = dyn_api(client, &v).await;
    api.get(v["metadata"]["name"].as_str().unwrap())
        .await
        .unwrap()
}

async fn dyn_api(client: &Client, v: &Value) -> Api<DynamicObject> {
    let (group, version) = match v["apiVersion"].as_str().unwrap().rsplit_once('/') {
        Some((g, ver)) => (g.to_owned(), ver.to_owned()),
        None => (String::new(), v["apiVersion"].as_str().unwrap().to_owned()),
    };
    let gvk = kube::api::GroupVersionKind::gvk(&group, &version, v["kind"].as_str().unwrap());
    // A CRD just created needs a moment before discovery serves it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (ar, caps) = loop {
        match kube::discovery::pinned_kind(client, &gvk).await {
            Ok(x) => break x,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("discovery of {gvk:?}: {e}"),
        }
    };
    match (caps.scope, v["metadata"]["namespace"].as_str()) {
        (kube::discovery::Scope::Namespaced, Some(ns)) => {
            Api::namespaced_with(client.clone(), ns, &ar)
        }
        (kube::discovery::Scope::Namespaced, None) => {
            Api::namespaced_with(client.clone(), "default", &ar)
        }
        _ => Api::all_with(client.clone(), &ar),
    }
}

/// Every document of a YAML file, as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

async fn install_route_crd(client: &Client) {
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kubernetes/00-route-crd.yaml");
    for doc in yaml_docs(&crd) {
        apply(client, doc).await;
    }
    // Established and served.
    let _ = dyn_api(
        client,
        &json!({"apiVersion": "route.openshift.io/v1", "kind": "Route", "metadata": {"name": "x"}}),
    )
    .await;
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn k_service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

fn slice(ns: &str, service: &str, ips: &[Ipv4Addr], port: u16) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-1"), "namespace": ns,
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "endpoints": ips.iter().map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}})).collect::<Vec<_>>(),
           "ports": [{"name": "http", "port": port, "protocol": "TCP"}]})
}

fn k_route(ns: &str, name: &str, host: &str, service: &str, labels: Value) -> Value {
    json!({"apiVersion": "route.openshift.io/v1", "kind": "Route",
           "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"host": host, "to": {"kind": "Service", "name": service},
                    "port": {"targetPort": "http"}}})
}

/// A Service `name` in `ns` whose one ready endpoint is `ip:port`.
async fn service_at(c: &Client, ns: &str, name: &str, ip: Ipv4Addr, port: u16) {
    apply(c, k_service(ns, name)).await;
    apply(c, slice(ns, name, &[ip], port)).await;
}

/// A router on the API server, in-process.
struct KubeRouter {
    running: Option<gatehouse::app::Running>,
    http: SocketAddr,
    https: SocketAddr,
    admin: SocketAddr,
}

impl KubeRouter {
    async fn start(cfg: RouterConfig) -> KubeRouter {
        let running = gatehouse::app::start(cfg).await.expect("router starts");
        KubeRouter {
            http: running.http.unwrap(),
            https: running.https.unwrap(),
            admin: running.admin.unwrap(),
            running: Some(running),
        }
    }

    async fn get(&self, host: &str, path: &str) -> Reply {
        get(self.http, host, path, &[]).await
    }

    async fn metric(&self, name: &str) -> f64 {
        let m = get(self.admin, "admin", "/metrics", &[]).await.body;
        m.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(f64::NAN)
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// Poll until `f` is true; returns how long it took. Fails after `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Until a GET answers from upstream `name` (or with `status` when `name` is
/// empty).
async fn until_served(r: &KubeRouter, host: &str, path: &str, name: &str, status: u16) -> Duration {
    eventually(
        &format!("{host}{path} → {name} {status}"),
        Duration::from_secs(10),
        || async {
            let rep = r.get(host, path).await;
            rep.status.as_u16() == status && (name.is_empty() || rep.echoed("name") == Some(name))
        },
    )
    .await
}

/// Our entry in a route's `status.ingress[]`.
async fn route_entry(client: &Client, ns: &str, name: &str, router: &str) -> Option<Value> {
    let o = get_obj(client, k_route(ns, name, "", "", json!({}))).await;
    o.data["status"]["ingress"]
        .as_array()?
        .iter()
        .find(|e| e["routerName"] == router)
        .cloned()
}

async fn admitted(client: &Client, ns: &str, name: &str, router: &str) -> Option<(String, String)> {
    let e = route_entry(client, ns, name, router).await?;
    let c = &e["conditions"][0];
    Some((
        c["status"].as_str().unwrap_or("").to_owned(),
        c["reason"].as_str().unwrap_or("").to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_routes_services_slices_and_status_follow_the_api_server() {
    let env = Env::shared();
    let c = env.client().await;
    install_route_crd(&c).await;
    let ip = node_ip();
    let (a, b) = (
        Upstream::start_public("a").await,
        Upstream::start_public("b").await,
    );
    apply(&c, namespace("basic", json!({}))).await;
    apply(&c, namespace("basic-late", json!({}))).await;
    service_at(&c, "basic", "web", ip, a.port()).await;
    apply(
        &c,
        k_route("basic", "web", "basic.example.com", "web", json!({})),
    )
    .await;

    let r = KubeRouter::start(env.router_config("default")).await;
    let ready = get(r.admin, "admin", "/readyz", &[]).await;
    assert_eq!(ready.status, StatusCode::OK, "ready after the initial sync");
    let m = get(r.admin, "admin", "/metrics", &[]).await.body;
    assert!(m.lines().any(|l| l == "gatehouse_source_synced 1"), "{m}");
    until_served(&r, "basic.example.com", "/", "a", 200).await;

    // Status: Admitted True, written once.
    eventually("status admitted", Duration::from_secs(10), || async {
        admitted(&c, "basic", "web", "default").await == Some(("True".into(), String::new()))
    })
    .await;
    let e = route_entry(&c, "basic", "web", "default").await.unwrap();
    assert_eq!(e["host"], "basic.example.com");
    assert_eq!(e["wildcardPolicy"], "None");

    // Endpoints move: the next requests go to b.
    apply(&c, slice("basic", "web", &[ip], b.port())).await;
    let t = until_served(&r, "basic.example.com", "/", "b", 200).await;
    println!("endpoint change routed after {t:?}");

    // A newer route for the same host in another namespace loses the claim.
    // creationTimestamp has one-second resolution and ties go by uid (as in
    // OpenShift), so make sure it is really newer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    service_at(&c, "basic-late", "web", ip, a.port()).await;
    apply(
        &c,
        k_route("basic-late", "thief", "basic.example.com", "web", json!({})),
    )
    .await;
    eventually("HostAlreadyClaimed", Duration::from_secs(10), || async {
        admitted(&c, "basic-late", "thief", "default").await
            == Some(("False".into(), "HostAlreadyClaimed".into()))
    })
    .await;
    assert_eq!(
        r.get("basic.example.com", "/").await.echoed("name"),
        Some("b")
    );

    // Host changed: new host served, old host now the thief's.
    apply(
        &c,
        k_route("basic", "web", "moved.example.com", "web", json!({})),
    )
    .await;
    until_served(&r, "moved.example.com", "/", "b", 200).await;
    until_served(&r, "basic.example.com", "/", "a", 200).await;
    eventually(
        "thief admitted once the host is free",
        Duration::from_secs(10),
        || async {
            admitted(&c, "basic-late", "thief", "default").await
                == Some(("True".into(), String::new()))
        },
    )
    .await;

    // Deleted: 503.
    delete(&c, k_route("basic", "web", "", "", json!({}))).await;
    until_served(&r, "moved.example.com", "/", "", 503).await;

    // A tenant pointing a slice at a cloud metadata address gets nothing.
    let dropped_before = r.metric("gatehouse_endpoints_dropped_total").await;
    apply(&c, k_service("basic", "meta")).await;
    apply(
        &c,
        slice("basic", "meta", &["168.63.129.16".parse().unwrap()], 80),
    )
    .await;
    apply(
        &c,
        k_route("basic", "meta", "meta.example.com", "meta", json!({})),
    )
    .await;
    until_served(&r, "meta.example.com", "/", "", 503).await;
    eventually(
        "dropped endpoint counted",
        Duration::from_secs(5),
        || async { r.metric("gatehouse_endpoints_dropped_total").await > dropped_before },
    )
    .await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_ingresses_become_routes_with_secrets_classes_and_status() {
    let env = Env::shared();
    let c = env.client().await;
    install_route_crd(&c).await;
    let ip = node_ip();
    let (a, b) = (
        Upstream::start_public("a").await,
        Upstream::start_public("b").await,
    );
    apply(&c, namespace("ing", json!({}))).await;
    service_at(&c, "ing", "web", ip, a.port()).await;
    service_at(&c, "ing", "exact", ip, b.port()).await;
    apply(&c, json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "gatehouse-test"}, "spec": {"controller": "gatehouse.io/ingress-controller"}})).await;
    apply(
        &c,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "nginx-test"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
    )
    .await;
    let ca = Ca::new("ingress test CA");
    let leaf = ca.leaf(&["secure.ing.example.com"]);
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    apply(
        &c,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "secure-tls", "namespace": "ing"},
        "data": {"tls.crt": b64(&leaf.cert), "tls.key": b64(&leaf.key)}}),
    )
    .await;
    let backend = |svc: &str| json!({"service": {"name": svc, "port": {"number": 80}}});
    apply(
        &c,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": "ing"},
        "spec": {"ingressClassName": "gatehouse-test",
                 "tls": [{"hosts": ["secure.ing.example.com"], "secretName": "secure-tls"}],
                 "rules": [
                   {"host": "www.ing.example.com", "http": {"paths": [
                     {"path": "/", "pathType": "Prefix", "backend": backend("web")},
                     {"path": "/exact", "pathType": "Exact", "backend": backend("exact")}]}},
                   {"host": "secure.ing.example.com", "http": {"paths": [
                     {"path": "/", "pathType": "Prefix", "backend": backend("web")}]}}]}}),
    )
    .await;
    apply(
        &c,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "theirs", "namespace": "ing"},
        "spec": {"ingressClassName": "nginx-test",
                 "rules": [{"host": "nginx.ing.example.com", "http": {"paths": [
                     {"path": "/", "pathType": "Prefix", "backend": backend("web")}]}}]}}),
    )
    .await;

    let mut cfg = env.router_config("default");
    cfg.kube.ingress_status = vec!["203.0.113.10".into()];
    let r = KubeRouter::start(cfg).await;
    until_served(&r, "www.ing.example.com", "/", "a", 200).await;
    assert_eq!(
        r.get("www.ing.example.com", "/exact").await.echoed("name"),
        Some("b")
    );
    assert_eq!(
        r.get("www.ing.example.com", "/exact/more")
            .await
            .echoed("name"),
        Some("a"),
        "pathType Exact matches only itself"
    );
    assert_eq!(
        r.get("nginx.ing.example.com", "/").await.status,
        503,
        "another class"
    );
    // TLS host: edge with the Secret's certificate, plain HTTP redirected.
    let plain = r.get("secure.ing.example.com", "/x").await;
    assert_eq!(plain.status, StatusCode::FOUND);
    let (s, presented) = connect(
        r.https,
        client_config(ca.roots(), &[b"http/1.1"]),
        "secure.ing.example.com",
    )
    .await
    .unwrap();
    assert_eq!(presented, leaf.der);
    let rep = get_over(s, "secure.ing.example.com", "/").await;
    assert_eq!(rep.echoed("name"), Some("a"));
    assert_eq!(rep.echoed("x-forwarded-proto"), Some("https"));

    // Certificate rotated in the Secret: served without a restart.
    let leaf2 = ca.leaf(&["secure.ing.example.com"]);
    apply(
        &c,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "secure-tls", "namespace": "ing"},
        "data": {"tls.crt": b64(&leaf2.cert), "tls.key": b64(&leaf2.key)}}),
    )
    .await;
    eventually("rotated certificate", Duration::from_secs(10), || async {
        connect(
            r.https,
            client_config(ca.roots(), &[b"http/1.1"]),
            "secure.ing.example.com",
        )
        .await
        .map(|(_, der)| der == leaf2.der)
        .unwrap_or(false)
    })
    .await;

    // status.loadBalancer from config, on ours only.
    let ing = |name: &str| json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name, "namespace": "ing"}});
    eventually("ingress status", Duration::from_secs(10), || async {
        get_obj(&c, ing("shop")).await.data["status"]["loadBalancer"]["ingress"][0]["ip"]
            == "203.0.113.10"
    })
    .await;
    let theirs = get_obj(&c, ing("theirs")).await;
    assert!(
        theirs.data["status"]["loadBalancer"]["ingress"].is_null(),
        "{theirs:?}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_shards_by_namespace_and_route_labels_move_routes_live() {
    let env = Env::shared();
    let c = env.client().await;
    install_route_crd(&c).await;
    let ip = node_ip();
    let up = Upstream::start_public("app").await;
    apply(&c, namespace("shard-shop", json!({"zone": "dmz"}))).await;
    service_at(&c, "shard-shop", "web", ip, up.port()).await;
    apply(
        &c,
        k_route(
            "shard-shop",
            "web",
            "shop.shard.example.com",
            "web",
            json!({"type": "public"}),
        ),
    )
    .await;

    let mut dmz = env.router_config("dmz");
    dmz.namespace_selector = "zone=dmz".into();
    let mut intranet = env.router_config("intranet");
    intranet.namespace_selector = "zone notin (dmz)".into();
    intranet.route_selector = "expose!=none".into();
    let dmz = KubeRouter::start(dmz).await;
    let intranet = KubeRouter::start(intranet).await;
    until_served(&dmz, "shop.shard.example.com", "/", "app", 200).await;
    assert_eq!(
        intranet.get("shop.shard.example.com", "/").await.status,
        503
    );
    eventually("dmz status", Duration::from_secs(10), || async {
        admitted(&c, "shard-shop", "web", "dmz").await == Some(("True".into(), String::new()))
    })
    .await;
    assert_eq!(
        route_entry(&c, "shard-shop", "web", "intranet").await,
        None,
        "not in the intranet shard"
    );

    // The project moves to the intranet: both routers follow.
    apply(&c, namespace("shard-shop", json!({"zone": "intranet"}))).await;
    let t_in = until_served(&intranet, "shop.shard.example.com", "/", "app", 200).await;
    let t_out = until_served(&dmz, "shop.shard.example.com", "/", "", 503).await;
    println!("namespace relabel: in after {t_in:?}, out after {t_out:?}");
    assert!(t_in < Duration::from_secs(3) && t_out < Duration::from_secs(3));
    eventually("intranet status", Duration::from_secs(10), || async {
        admitted(&c, "shard-shop", "web", "intranet").await == Some(("True".into(), String::new()))
    })
    .await;
    eventually("dmz entry removed", Duration::from_secs(10), || async {
        route_entry(&c, "shard-shop", "web", "dmz").await.is_none()
    })
    .await;

    // A route label takes it out of the intranet shard (server-side selector).
    apply(
        &c,
        k_route(
            "shard-shop",
            "web",
            "shop.shard.example.com",
            "web",
            json!({"type": "public", "expose": "none"}),
        ),
    )
    .await;
    let t = until_served(&intranet, "shop.shard.example.com", "/", "", 503).await;
    println!("route relabel: out after {t:?}");
    assert!(t < Duration::from_secs(3));
    eventually(
        "intranet entry removed",
        Duration::from_secs(10),
        || async {
            route_entry(&c, "shard-shop", "web", "intranet")
                .await
                .is_none()
        },
    )
    .await;
    dmz.stop().await;
    intranet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_api_server_outage_keeps_traffic_and_catches_up() {
    // Its own API server: it is stopped mid-test.
    let env = Env::start("outage");
    let c = env.client().await;
    install_route_crd(&c).await;
    let ip = node_ip();
    let up = Upstream::start_public("app").await;
    apply(&c, namespace("outage", json!({}))).await;
    service_at(&c, "outage", "web", ip, up.port()).await;
    apply(
        &c,
        k_route("outage", "web", "outage.example.com", "web", json!({})),
    )
    .await;
    let r = KubeRouter::start(env.router_config("default")).await;
    until_served(&r, "outage.example.com", "/", "app", 200).await;

    // Requests keep flowing while the API server is down for 3 s.
    let http = r.http;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let traffic = tokio::spawn(async move {
        let (mut ok, mut bad) = (0u32, 0u32);
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            if get(http, "outage.example.com", "/", &[]).await.status == StatusCode::OK {
                ok += 1;
            } else {
                bad += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, bad)
    });
    let restart = {
        let dir = env.dir.clone();
        tokio::task::spawn_blocking(move || restart_apiserver(&dir, Duration::from_secs(3)))
    };
    eventually("source reported stale", Duration::from_secs(20), || async {
        r.metric("gatehouse_source_stale").await == 1.0
    })
    .await;
    assert_eq!(
        get(r.admin, "admin", "/readyz", &[]).await.status,
        StatusCode::OK,
        "data path is fine"
    );
    restart.await.unwrap();
    // Changes made right after the restart (the router is still backing off)
    // arrive once it reconnects.
    apply(
        &c,
        k_route("outage", "late", "late.example.com", "web", json!({})),
    )
    .await;
    // kube's default back-off (0.8 s doubling to 30 s, with jitter) decides
    // when the watchers come back.
    let t = eventually(
        "late route after the outage",
        Duration::from_secs(60),
        || async { r.get("late.example.com", "/").await.echoed("name") == Some("app") },
    )
    .await;
    println!("change after API server restart routed after {t:?}");
    eventually("source fresh again", Duration::from_secs(30), || async {
        r.metric("gatehouse_source_stale").await == 0.0
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad) = traffic.await.unwrap();
    println!("during the outage: {ok} ok, {bad} failed");
    assert!(ok > 50, "{ok}");
    assert_eq!(bad, 0);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_deployment_manifests_apply_and_their_rbac_is_enough() {
    let env = Env::shared();
    let c = env.client().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut kinds = Vec::new();
    for f in &files {
        for doc in yaml_docs(f) {
            kinds.push(doc["kind"].as_str().unwrap().to_owned());
            apply(&c, doc).await;
        }
    }
    for k in [
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
        "Deployment",
        "Service",
        "IngressClass",
    ] {
        assert!(kinds.iter().any(|x| x == k), "config/kubernetes has a {k}");
    }

    // Run a router as the ServiceAccount those manifests define: its
    // ClusterRole must be enough to sync, read a referenced Secret and
    // write status.
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(c.clone(), "gatehouse");
    let tr: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": 3600}}))
    .unwrap();
    let token = sa
        .create_token_request("gatehouse", &PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let admin_kc = std::fs::read_to_string(&env.kubeconfig).unwrap();
    let sa_kc = admin_kc.replace("token: admin-token", &format!("token: {token}"));
    assert_ne!(sa_kc, admin_kc);
    let kc_dir = tempfile::tempdir().unwrap();
    let kc = kc_dir.path().join("kubeconfig");
    std::fs::write(&kc, sa_kc).unwrap();

    let ip = node_ip();
    let up = Upstream::start_public("rbac").await;
    apply(&c, namespace("rbac", json!({}))).await;
    service_at(&c, "rbac", "web", ip, up.port()).await;
    apply(
        &c,
        k_route("rbac", "web", "rbac.example.com", "web", json!({})),
    )
    .await;
    let mut cfg = env.router_config("rbac");
    cfg.kube.kubeconfig = Some(kc);
    let r = KubeRouter::start(cfg).await;
    assert_eq!(
        get(r.admin, "admin", "/readyz", &[]).await.status,
        StatusCode::OK
    );
    until_served(&r, "rbac.example.com", "/", "rbac", 200).await;
    eventually(
        "status written as the service account",
        Duration::from_secs(10),
        || async {
            admitted(&c, "rbac", "web", "rbac").await == Some(("True".into(), String::new()))
        },
    )
    .await;
    assert_eq!(
        r.metric("gatehouse_source_stale").await,
        0.0,
        "no forbidden watch"
    );
    r.stop().await;
}
