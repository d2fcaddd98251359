//! Admission through the running router: who gets a host, what /api/routes
//! says, and how file changes move claims.

use crate::support::*;
use http::StatusCode;
use serde_json::Value;

fn status<'a>(routes: &'a Value, ns: &str, name: &str) -> &'a Value {
    routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["namespace"] == ns && r["name"] == name)
        .unwrap_or_else(|| panic!("no status for {ns}/{name}: {routes}"))
}

#[tokio::test]
async fn oldest_wins_and_the_next_oldest_takes_over_on_delete() {
    let a = Upstream::start("team-a").await;
    let b = Upstream::start("team-b").await;
    let fa = format!(
        "{}{}",
        service("a", "web", &[a.port()]),
        route(
            "a",
            "shop",
            "2024-01-01T00:00:00Z",
            "shop.example.com",
            "",
            "web",
            &[],
            ""
        )
    );
    let fb = format!(
        "{}{}",
        service("b", "web", &[b.port()]),
        route(
            "b",
            "shop",
            "2024-02-01T00:00:00Z",
            "shop.example.com",
            "",
            "web",
            &[],
            ""
        )
    );
    let r = TestRouter::start(&[("a.yaml", &fa), ("b.yaml", &fb)]).await;
    assert_eq!(
        r.get("shop.example.com", "/").await.echoed("name"),
        Some("team-a")
    );
    let routes = r.routes().await;
    assert_eq!(status(&routes, "a", "shop")["admitted"], true);
    let loser = status(&routes, "b", "shop");
    assert_eq!(loser["admitted"], false);
    assert_eq!(loser["reason"], "HostAlreadyClaimed");
    assert!(
        loser["message"].as_str().unwrap().contains("a/shop"),
        "{loser}"
    );
    assert!(routes["generation"].as_u64().unwrap() >= 1);

    r.remove("a.yaml").await;
    assert_eq!(
        r.get("shop.example.com", "/").await.echoed("name"),
        Some("team-b")
    );
    assert_eq!(status(&r.routes().await, "b", "shop")["admitted"], true);
    r.stop().await;
}

#[tokio::test]
async fn owner_namespace_adds_paths_other_namespaces_cannot() {
    let root = Upstream::start("root").await;
    let api = Upstream::start("api").await;
    let text = [
        service("a", "root", &[root.port()]),
        service("a", "api", &[api.port()]),
        service("b", "api", &[api.port()]),
        route(
            "a",
            "root",
            "2024-01-01T00:00:00Z",
            "h.example.com",
            "",
            "root",
            &[],
            "",
        ),
        route(
            "a",
            "api",
            "2024-01-02T00:00:00Z",
            "h.example.com",
            "/api",
            "api",
            &[],
            "",
        ),
        route(
            "b",
            "other",
            "2024-01-03T00:00:00Z",
            "h.example.com",
            "/other",
            "api",
            &[],
            "",
        ),
    ]
    .concat();
    let r = TestRouter::start(&[("all.yaml", &text)]).await;
    assert_eq!(
        r.get("h.example.com", "/api/v1").await.echoed("name"),
        Some("api")
    );
    assert_eq!(
        r.get("h.example.com", "/other").await.echoed("name"),
        Some("root")
    );
    let routes = r.routes().await;
    assert_eq!(
        status(&routes, "b", "other")["reason"],
        "HostAlreadyClaimed"
    );
    assert_eq!(status(&routes, "a", "api")["admitted"], true);
    r.stop().await;
}

#[tokio::test]
async fn wildcard_routes_match_exactly_one_label_when_allowed() {
    let w = Upstream::start("wild").await;
    let text = format!(
        "{}{}",
        service("a", "w", &[w.port()]),
        route(
            "a",
            "w",
            "2024-01-01T00:00:00Z",
            "www.apps.example.com",
            "",
            "w",
            &[],
            "  wildcardPolicy: Subdomain\n"
        )
    );
    let off = TestRouter::start(&[("w.yaml", &text)]).await;
    assert_eq!(
        status(&off.routes().await, "a", "w")["reason"],
        "RouteNotAdmitted"
    );
    assert_eq!(
        off.get("x.apps.example.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    off.stop().await;

    let on = TestRouter::start_with(&[("w.yaml", &text)], |c| c.allow_wildcard_routes = true).await;
    assert_eq!(
        on.get("anything.apps.example.com", "/")
            .await
            .echoed("name"),
        Some("wild")
    );
    assert_eq!(
        on.get("a.b.apps.example.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        on.get("apps.example.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    on.stop().await;
}

#[tokio::test]
async fn bad_input_is_reported_and_everything_else_keeps_routing() {
    let up = Upstream::start("good").await;
    let good = format!(
        "{}{}",
        service("default", "web", &[up.port()]),
        simple_route("default", "good", "good.example.com", "", "web")
    );
    let r = TestRouter::start(&[
        ("good.yaml", &good),
        ("garbage.yaml", "{{{ this is : not yaml\n\t- ]"),
        (
            "unknown.yaml",
            "apiVersion: v9\nkind: Gizmo\nmetadata: {name: g}\n",
        ),
        (
            "missing-fields.yaml",
            "apiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {}\n",
        ),
        (
            "nosvc.yaml",
            &simple_route(
                "default",
                "orphan",
                "orphan.example.com",
                "",
                "does-not-exist",
            ),
        ),
        ("binary.json", "\u{0}\u{1}\u{2}"),
    ])
    .await;
    assert_eq!(r.get("good.example.com", "/").await.status, StatusCode::OK);
    let orphan = r.get("orphan.example.com", "/").await;
    assert_eq!(orphan.status, StatusCode::SERVICE_UNAVAILABLE);
    let routes = r.routes().await;
    let s = status(&routes, "default", "orphan");
    assert_eq!(s["admitted"], false);
    assert_eq!(s["reason"], "ServiceNotFound");

    // Breaking a good file keeps nothing half-applied: its objects go, the
    // rest stay.
    r.write(
        "garbage.yaml",
        &simple_route("default", "second", "second.example.com", "", "web"),
    )
    .await;
    assert_eq!(
        r.get("second.example.com", "/").await.status,
        StatusCode::OK
    );
    assert_eq!(r.get("good.example.com", "/").await.status, StatusCode::OK);
    r.stop().await;
}

#[tokio::test]
async fn file_edits_adds_and_deletes_change_routing_within_a_second() {
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let svcs = format!(
        "{}{}",
        service("default", "one", &[one.port()]),
        service("default", "two", &[two.port()])
    );
    let r = TestRouter::start(&[
        ("svc.yaml", &svcs),
        (
            "route.yaml",
            &simple_route("default", "r", "r.example.com", "", "one"),
        ),
    ])
    .await;
    assert_eq!(
        r.get("r.example.com", "/").await.echoed("name"),
        Some("one")
    );

    // Edit: point the route at another service.
    r.write(
        "route.yaml",
        &simple_route("default", "r", "r.example.com", "", "two"),
    )
    .await;
    assert_eq!(
        r.get("r.example.com", "/").await.echoed("name"),
        Some("two")
    );

    // Add a file.
    r.write(
        "new.yaml",
        &simple_route("default", "n", "n.example.com", "", "one"),
    )
    .await;
    assert_eq!(
        r.get("n.example.com", "/").await.echoed("name"),
        Some("one")
    );

    // Endpoint-only edit: the service moves to another port.
    r.write(
        "svc.yaml",
        &format!(
            "{}{}",
            service("default", "one", &[two.port()]),
            service("default", "two", &[two.port()])
        ),
    )
    .await;
    assert_eq!(
        r.get("n.example.com", "/").await.echoed("name"),
        Some("two")
    );

    // Delete.
    r.remove("new.yaml").await;
    assert_eq!(
        r.get("n.example.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    r.stop().await;
}

/// `--manifests` shards: the same selectors as `--kube`, on Namespace objects
/// and route labels in the directory. A relabelled namespace moves its routes
/// in or out within the manifests source's 1 s.
#[tokio::test]
async fn manifests_shards_follow_namespace_and_route_labels() {
    let up = Upstream::start("app").await;
    let ns = |zone: &str| {
        format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{zone: {zone}}}}}\n")
    };
    let routes = [
        service("shop", "web", &[up.port()]),
        simple_route("shop", "web", "shop.example.com", "", "web"),
        simple_route("shop", "hidden", "hidden.example.com", "", "web").replace(
            "  namespace: shop\n",
            "  namespace: shop\n  labels: {expose: none}\n",
        ),
        service("other", "web", &[up.port()]),
        simple_route("other", "web", "other.example.com", "", "web"),
    ]
    .concat();
    let r = TestRouter::start_with(&[("ns.yaml", &ns("dmz")), ("apps.yaml", &routes)], |c| {
        c.namespace_selector = "zone in (dmz)".into();
        c.route_selector = "expose!=none".into();
    })
    .await;
    assert_eq!(r.get("shop.example.com", "/").await.status, StatusCode::OK);
    assert_eq!(
        r.get("hidden.example.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "route label excluded"
    );
    assert_eq!(
        r.get("other.example.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "namespace without the label (no Namespace object)"
    );
    let listed = r.routes().await;
    let names: Vec<&str> = listed["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web"], "routes outside the shard do not exist here");

    r.write("ns.yaml", &ns("intranet")).await;
    assert_eq!(
        r.get("shop.example.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    r.write("ns.yaml", &ns("dmz")).await;
    assert_eq!(r.get("shop.example.com", "/").await.status, StatusCode::OK);
    r.stop().await;
}

#[tokio::test]
async fn an_invalid_selector_refuses_to_start_the_process() {
    let dir = manifests_dir("x.example.com", 1);
    let out = std::process::Command::new(bin())
        .args(["run", "--manifests"])
        .arg(dir.path())
        .args(["--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--namespace-selector", "zone in (dmz"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("namespace selector") && err.contains("unclosed"),
        "{err}"
    );
}
