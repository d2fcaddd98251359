//! Logs: the tracing subscriber for operational logs (stderr) and the access
//! log (JSON lines on stdout, for Fluentd).

pub mod access_log;
pub mod metrics;

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

/// `2024-01-02T03:04:05.678Z` for a time since the Unix epoch (UTC, as
/// Elasticsearch and the Kubernetes API write it).
pub fn rfc3339_millis(since_epoch: std::time::Duration) -> String {
    let mut s = String::with_capacity(24);
    push_rfc3339_millis(&mut s, since_epoch);
    s
}

/// [`rfc3339_millis`] appended to `out` without formatting machinery.
pub fn push_rfc3339_millis(out: &mut String, since_epoch: std::time::Duration) {
    let secs = since_epoch.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = (yoe + era * 400 + i64::from(m <= 2)).clamp(0, 9999);
    let digits = |out: &mut String, v: i64, width: u32| {
        for k in (0..width).rev() {
            let p = 10i64.pow(k);
            out.push(char::from(b'0' + (v / p % 10) as u8));
        }
    };
    digits(out, y, 4);
    out.push('-');
    digits(out, m, 2);
    out.push('-');
    digits(out, d, 2);
    out.push('T');
    digits(out, rem / 3600, 2);
    out.push(':');
    digits(out, rem % 3600 / 60, 2);
    out.push(':');
    digits(out, rem % 60, 2);
    out.push('.');
    digits(out, i64::from(since_epoch.subsec_millis()), 3);
    out.push('Z');
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        use std::time::Duration;
        assert_eq!(
            super::rfc3339_millis(Duration::ZERO),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            super::rfc3339_millis(Duration::from_millis(1_704_164_645_678)),
            "2024-01-02T03:04:05.678Z"
        );
        assert_eq!(
            super::rfc3339_millis(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
