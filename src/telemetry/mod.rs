//! Logs: the tracing subscriber for operational logs (stderr) and the access
//! log (JSON lines on stdout, for Fluentd).

pub mod access_log;

use tracing_subscriber::EnvFilter;

/// Install the global subscriber: `RUST_LOG` (default `info`), text or JSON.
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // Ignore "already set": tests and embedders may have installed one.
    let _ = if json {
        b.json().flatten_event(true).try_init()
    } else {
        b.try_init()
    };
}
