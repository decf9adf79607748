//! `Retry-After` and the IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers):
//! `RateLimit-Policy: "name";q=<quota>;w=<window s>` and `RateLimit: "name";r=<remaining>;t=<s>`.

use super::algorithm::Limit;

const NS_PER_S: u64 = 1_000_000_000;

/// Whole seconds, rounded up, never zero for a positive delay (a client told "0" retries at once).
pub fn retry_after_secs(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_S).max(1)
}

fn sf_string(s: &str) -> String {
    let mut d = crate::sfv::Dictionary::new();
    d.string("x", s);
    d.finish().trim_start_matches("x=").to_string()
}

/// `RateLimit-Policy` item for one rule.
pub fn policy_header(rule: &str, limit: &Limit) -> String {
    format!("{};q={};w={}", sf_string(rule), limit.burst, limit.period_ns.div_ceil(NS_PER_S).max(1))
}

/// `RateLimit-Policy` item from an already quoted rule name, a quota and a window in seconds
/// (a global rule reports the limit its service named).
pub fn policy_field(quoted: &str, quota: u64, window_secs: u64) -> String {
    format!("{quoted};q={quota};w={}", window_secs.max(1))
}

/// `RateLimit` item: `remaining` requests, quota whole again in `reset_ns`.
pub fn ratelimit_header(rule: &str, remaining: u64, reset_ns: u64) -> String {
    ratelimit_field(&quoted(rule), remaining, reset_ns)
}

/// The rule name as a structured-field string (computed once per rule).
pub fn quoted(rule: &str) -> String {
    sf_string(rule)
}

/// `RateLimit` item from an already quoted rule name (the per-request path).
pub fn ratelimit_field(quoted: &str, remaining: u64, reset_ns: u64) -> String {
    let mut out = String::with_capacity(quoted.len() + 24);
    out.push_str(quoted);
    out.push_str(";r=");
    push_u64(&mut out, remaining);
    out.push_str(";t=");
    push_u64(&mut out, reset_ns.div_ceil(NS_PER_S));
    out
}

/// Appends decimal digits without the formatting machinery (this runs on every admitted request).
fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in &digits[i..] {
        out.push(char::from(*d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_draft_syntax() {
        let l = Limit { requests: 100, period_ns: 60 * NS_PER_S, burst: 100 };
        assert_eq!(policy_header("per-client", &l), r#""per-client";q=100;w=60"#);
        assert_eq!(ratelimit_header("per-client", 0, 1_500_000_000), r#""per-client";r=0;t=2"#);
        assert_eq!(ratelimit_field(&quoted("a"), 12_345_678_901, 0), r#""a";r=12345678901;t=0"#);
        assert_eq!(policy_field(&quoted("g"), 100, 60), r#""g";q=100;w=60"#);
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1_000_000_000), 1);
        assert_eq!(retry_after_secs(1_000_000_001), 2);
        assert_eq!(retry_after_secs(0), 1);
    }
}
