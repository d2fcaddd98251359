//! The admin dashboard in a real browser: Debian's chromium, headless,
//! loads the page, runs its script against the live admin API, and the test
//! reads the resulting DOM and saves a screenshot.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromium is needed for the dashboard test (apt-get install chromium)")
}

/// Run headless chromium on `url` with `args`; the page gets `budget` of
/// virtual time (its 2 s refresh runs, its fetches complete).
async fn chrome(url: &str, args: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ])
            .args(["--no-first-run", "--virtual-time-budget=5000"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished")
    .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_trouble_first_in_a_real_browser() {
    let a = Upstream::start("a").await;
    let files = [(
        "apps.yaml",
        [
            service("shop", "web", &[a.port()]),
            route(
                "shop",
                "web",
                "2024-01-01T00:00:00Z",
                "shop.example.com",
                "",
                "web",
                &[],
                "",
            ),
            // Same host, newer: rejected with a reason.
            service("late", "web", &[a.port()]),
            route(
                "late",
                "thief",
                "2024-02-01T00:00:00Z",
                "shop.example.com",
                "",
                "web",
                &[],
                "",
            ),
            // Admitted, but its service has no ready endpoint: degraded.
            service("shop", "empty", &[]),
            route(
                "shop",
                "empty",
                "2024-01-01T00:00:00Z",
                "empty.example.com",
                "",
                "empty",
                &[],
                "",
            ),
        ]
        .concat(),
    )];
    let r = TestRouter::start(
        &files
            .iter()
            .map(|(n, t)| (*n, t.as_str()))
            .collect::<Vec<_>>(),
    )
    .await;
    for _ in 0..12 {
        r.get("shop.example.com", "/").await;
        r.get("empty.example.com", "/").await;
    }
    let url = format!("http://{}/", r.admin);

    let out = chrome(&url, &["--dump-dom"]).await;
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = |route: &str| -> (usize, String) {
        let at = dom
            .find(&format!("data-route=\"{route}\""))
            .unwrap_or_else(|| panic!("no row for {route} in the rendered page:\n{dom}"));
        let start = dom[..at].rfind("<tr").unwrap();
        let end = at + dom[at..].find("</tr>").unwrap();
        (start, dom[start..end].to_owned())
    };
    let (thief_at, thief) = row("late/thief");
    let (empty_at, empty) = row("shop/empty");
    let (web_at, web) = row("shop/web");
    assert!(
        thief.contains("class=\"rejected\"") && thief.contains("HostAlreadyClaimed"),
        "{thief}"
    );
    assert!(
        empty.contains("class=\"degraded\"") && empty.contains("0/0"),
        "{empty}"
    );
    assert!(web.contains("class=\"ok\"") && web.contains("1/1"), "{web}");
    assert!(
        thief_at < empty_at && empty_at < web_at,
        "trouble first: rejected, degraded, healthy"
    );
    assert!(
        dom.contains("id=\"nrej\">1<"),
        "summary counts the rejected route"
    );

    // A screenshot for people (kept as a test artifact).
    let png: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    chrome(
        &url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,800",
            "--hide-scrollbars",
        ],
    )
    .await;
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{} bytes",
        bytes.len()
    );
    println!("dashboard screenshot: {}", png.display());
    r.stop().await;
}
