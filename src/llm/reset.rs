//! How long a provider that answered 429 asked to be left alone.
//!
//! Providers say it in different headers and formats: `retry-after-ms` (milliseconds),
//! `retry-after` (seconds, or an HTTP date), and OpenAI-style reset headers
//! `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens` holding durations such as `1s`,
//! `6m0s`, `1m30s`, `250ms` or `2.5s` (Go's duration format), with `x-ratelimit-remaining-*`
//! saying which of the two ran out. [`provider_pause`] reads them in that order of precision and
//! caps the answer; a 429 that says nothing gets the configured default.

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// The rate-limit headers of a 429, as the stage read them (any may be missing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetHeaders<'a> {
    pub retry_after_ms: Option<&'a [u8]>,
    pub retry_after: Option<&'a [u8]>,
    pub reset_requests: Option<&'a [u8]>,
    pub reset_tokens: Option<&'a [u8]>,
    pub remaining_requests: Option<&'a [u8]>,
    pub remaining_tokens: Option<&'a [u8]>,
}

/// The response headers [`ResetHeaders`] is read from, in its field order.
pub const RESET_HEADER_NAMES: [&str; 6] = [
    "retry-after-ms",
    "retry-after",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
];

impl<'a> ResetHeaders<'a> {
    /// From values in [`RESET_HEADER_NAMES`] order.
    pub fn from_values(v: [Option<&'a [u8]>; 6]) -> ResetHeaders<'a> {
        ResetHeaders {
            retry_after_ms: v[0],
            retry_after: v[1],
            reset_requests: v[2],
            reset_tokens: v[3],
            remaining_requests: v[4],
            remaining_tokens: v[5],
        }
    }
}

/// Where a pause came from (for logs and the diagnosis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseSource {
    RetryAfterMs,
    RetryAfter,
    ResetHeaders,
    /// No header said: the configured default.
    Default,
}

/// The pause a 429 asks for, in nanoseconds, and whether it was capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    pub ns: u64,
    pub source: PauseSource,
    pub capped: bool,
}

/// Reads the pause from `h` at wall-clock time `now` (ns since the Unix epoch, for HTTP dates):
/// `retry-after-ms`, else `retry-after`, else the reset headers (of the quota that ran out, or the
/// longer of the two when neither says), else `default_ns`; at most `max_ns`.
pub fn provider_pause(h: &ResetHeaders<'_>, now: u64, default_ns: u64, max_ns: u64) -> Pause {
    fn text(v: Option<&[u8]>) -> Option<&str> {
        v.and_then(|b| std::str::from_utf8(b).ok()).map(str::trim)
    }
    let found = if let Some(ms) = text(h.retry_after_ms).and_then(|t| decimal_ns(t, MS)) {
        Some((ms, PauseSource::RetryAfterMs))
    } else if let Some(ns) = text(h.retry_after).and_then(|t| retry_after(t, now)) {
        Some((ns, PauseSource::RetryAfter))
    } else {
        let exhausted = |v: Option<&[u8]>| text(v).is_some_and(|t| t.parse::<f64>().is_ok_and(|n| n <= 0.0));
        let requests = text(h.reset_requests).and_then(duration_ns);
        let tokens = text(h.reset_tokens).and_then(duration_ns);
        let pick = match (exhausted(h.remaining_requests), exhausted(h.remaining_tokens)) {
            (true, false) => requests.or(tokens),
            (false, true) => tokens.or(requests),
            _ => requests.max(tokens),
        };
        pick.map(|ns| (ns, PauseSource::ResetHeaders))
    };
    let (ns, source) = found.unwrap_or((default_ns, PauseSource::Default));
    Pause { ns: ns.min(max_ns), source, capped: ns > max_ns }
}

/// `Retry-After`: delay-seconds (a decimal fraction is accepted), or an HTTP date (IMF-fixdate)
/// relative to `now`.
pub fn retry_after(text: &str, now: u64) -> Option<u64> {
    if let Some(ns) = decimal_ns(text, S) {
        return Some(ns);
    }
    let at = http_date_secs(text)?;
    Some(at.saturating_mul(S).saturating_sub(now))
}

/// A non-negative decimal number of `unit`s in nanoseconds (`"1.5"` seconds → 1.5e9).
fn decimal_ns(text: &str, unit: u64) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let mut ns = if whole.is_empty() { 0 } else { whole.parse::<u64>().ok()?.checked_mul(unit)? };
    let mut place = unit;
    for d in frac.bytes() {
        place /= 10;
        ns = ns.checked_add(u64::from(d - b'0') * place)?;
    }
    Some(ns)
}

/// A duration as Go prints it (`1h2m3.5s`, `6m0s`, `250ms`, `1.5µs`), or a bare number of seconds.
pub fn duration_ns(text: &str) -> Option<u64> {
    if let Some(ns) = decimal_ns(text, S) {
        return Some(ns);
    }
    let mut rest = text;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(n);
        let u = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(u);
        let scale = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => MS,
            "s" => S,
            "m" => 60 * S,
            "h" => 3600 * S,
            _ => return None,
        };
        total = total.checked_add(decimal_ns(number, scale)?)?;
        rest = next;
    }
    Some(total)
}

/// Seconds since the Unix epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date_secs(text: &str) -> Option<u64> {
    let mut parts = text.split_ascii_whitespace();
    let _weekday = parts.next()?.strip_suffix(',')?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 || year < 1970 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), counted from 1970-01-01.
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days).ok()?.checked_mul(86_400)?.checked_add(h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_as_providers_send_them() {
        for (text, ns) in [
            ("1m30s", 90 * S),
            ("6m0s", 360 * S),
            ("250ms", 250 * MS),
            ("20s", 20 * S),
            ("2.5s", 2_500 * MS),
            ("1h2m3.5s", 3723 * S + 500 * MS),
            ("17ms", 17 * MS),
            ("3", 3 * S),
            ("0.5", 500 * MS),
            ("1.5µs", 1_500),
        ] {
            assert_eq!(duration_ns(text), Some(ns), "{text}");
        }
        for bad in ["", "s", "1x", "-1s", "1m30", "ms5", "1.2.3s"] {
            assert_eq!(duration_ns(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_dates_are_read() {
        assert_eq!(http_date_secs("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(http_date_secs("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(http_date_secs("Tue, 29 Feb 2028 12:00:00 GMT"), Some(1_835_438_400));
        assert_eq!(http_date_secs("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(http_date_secs("Sun, 06 Nov 1994 08:49:37 UTC"), None);
    }

    fn h<'a>(pairs: &[(&str, &'a str)]) -> ResetHeaders<'a> {
        let mut v: [Option<&[u8]>; 6] = [None; 6];
        for (k, val) in pairs {
            let i = RESET_HEADER_NAMES.iter().position(|n| n == k).unwrap();
            v[i] = Some(val.as_bytes());
        }
        ResetHeaders::from_values(v)
    }

    const NOW: u64 = 784_111_777 * S;

    #[test]
    fn each_header_style_is_honoured_in_order_of_precision() {
        let p = |pairs: &[(&str, &str)]| provider_pause(&h(pairs), NOW, 7 * S, 300 * S);
        assert_eq!(p(&[("retry-after-ms", "1500"), ("retry-after", "9")]).ns, 1500 * MS);
        assert_eq!(p(&[("retry-after", "9")]).source, PauseSource::RetryAfter);
        assert_eq!(p(&[("retry-after", "9")]).ns, 9 * S);
        assert_eq!(p(&[("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT")]).ns, 30 * S);
        assert_eq!(p(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]).ns, 0, "a date in the past: now");
        assert_eq!(p(&[("x-ratelimit-reset-requests", "1m30s")]).ns, 90 * S);
        assert_eq!(p(&[("x-ratelimit-reset-tokens", "250ms")]).ns, 250 * MS);
        assert_eq!(p(&[("x-ratelimit-reset-requests", "20s"), ("x-ratelimit-reset-tokens", "6m0s")]).ns, 300 * S);
        let tokens_left = [
            ("x-ratelimit-reset-requests", "20s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-remaining-tokens", "1200"),
        ];
        assert_eq!(p(&tokens_left).ns, 20 * S, "the requests quota ran out: its reset");
        let none = p(&[("retry-after", "soon")]);
        assert_eq!((none.ns, none.source), (7 * S, PauseSource::Default));
    }

    #[test]
    fn the_cap_holds() {
        let p = provider_pause(&h(&[("retry-after", "86400")]), NOW, S, 300 * S);
        assert_eq!((p.ns, p.capped), (300 * S, true));
    }
}
