//! The OpenShift router's duration syntax for annotations:
//! `[1-9][0-9]*(us|ms|s|m|h|d)?`, no unit meaning milliseconds, clipped to
//! 2147483647 ms (HAProxy's limit). Anything else (`1d12h`, `01s`, `1.5s`)
//! is invalid and the router ignores it with a warning.

use std::time::Duration;

const MAX_MS: u64 = 2_147_483_647;

/// Parse an OpenShift duration; `None` when the text is not valid.
pub fn parse(text: &str) -> Option<Duration> {
    let t = text.trim();
    let digits_end = t
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() || num.starts_with('0') {
        return None;
    }
    // Saturate instead of overflowing: the result is clipped anyway.
    let n: u64 = num.parse().unwrap_or(u64::MAX);
    let us = match unit {
        "us" => n,
        "" | "ms" => n.saturating_mul(1_000),
        "s" => n.saturating_mul(1_000_000),
        "m" => n.saturating_mul(60_000_000),
        "h" => n.saturating_mul(3_600_000_000),
        "d" => n.saturating_mul(86_400_000_000),
        _ => return None,
    };
    Some(Duration::from_micros(us.min(MAX_MS * 1_000)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid() {
        assert_eq!(parse("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse("500"), Some(Duration::from_millis(500)));
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("3m"), Some(Duration::from_secs(180)));
        assert_eq!(parse("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("7us"), Some(Duration::from_micros(7)));
        assert_eq!(parse("1d"), Some(Duration::from_secs(86_400)));
        // Clipped to HAProxy's maximum.
        assert_eq!(parse("9999d"), Some(Duration::from_millis(MAX_MS)));
        assert_eq!(
            parse("99999999999999999999999d"),
            Some(Duration::from_millis(MAX_MS))
        );
    }

    #[test]
    fn invalid() {
        for bad in [
            "", "1d12h", "01s", "0", "1.5s", "s", "-1s", "10 s", "10S", "1w",
        ] {
            assert_eq!(parse(bad), None, "{bad:?} must be rejected");
        }
    }
}
