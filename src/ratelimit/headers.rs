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

/// `RateLimit` item: `remaining` requests, quota whole again in `reset_ns`.
pub fn ratelimit_header(rule: &str, remaining: u64, reset_ns: u64) -> String {
    format!("{};r={};t={}", sf_string(rule), remaining, reset_ns.div_ceil(NS_PER_S))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_draft_syntax() {
        let l = Limit { requests: 100, period_ns: 60 * NS_PER_S, burst: 100 };
        assert_eq!(policy_header("per-client", &l), r#""per-client";q=100;w=60"#);
        assert_eq!(ratelimit_header("per-client", 0, 1_500_000_000), r#""per-client";r=0;t=2"#);
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1_000_000_000), 1);
        assert_eq!(retry_after_secs(1_000_000_001), 2);
        assert_eq!(retry_after_secs(0), 1);
    }
}
