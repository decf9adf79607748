//! `Retry-After` and the IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers):
//! `RateLimit-Policy: "name";q=<quota>;w=<window s>` and `RateLimit: "name";r=<remaining>;t=<s>`.

use super::algorithm::{Algorithm, Limit};

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

/// `RateLimit-Policy` item for one rule: a policy the rule always honours. A client that sends
/// at most `q` requests in any `w` seconds is never refused by this rule.
///
/// - Token bucket (refill `requests` per period, bucket `burst`): `w` is the period in whole
///   seconds, rounded up, and `q` the bucket or what refills in `w`, whichever is smaller. A
///   client may spend `q` at once, and `w` later the bucket holds `q` again.
/// - Sliding window (`requests` per period, estimated from two fixed windows): `q = requests`
///   over `w` = two periods. The estimate counts the previous window's requests, weighted by how
///   much of it is still in view, so `q` within one period can be refused when the previous
///   period was busy; `q` within two periods never is (the estimate is at most what the last two
///   periods hold).
pub fn policy_header(rule: &str, limit: &Limit, algorithm: Algorithm) -> String {
    let (quota, window_ns) = match algorithm {
        Algorithm::TokenBucket => {
            let window_ns = limit.period_ns.div_ceil(NS_PER_S).max(1).saturating_mul(NS_PER_S);
            let refilled = u128::from(limit.requests) * u128::from(window_ns) / u128::from(limit.period_ns.max(1));
            (limit.burst.min(u64::try_from(refilled).unwrap_or(u64::MAX)), window_ns)
        }
        Algorithm::SlidingWindow => (limit.requests, limit.period_ns.saturating_mul(2)),
    };
    policy_field(&sf_string(rule), quota, window_ns.div_ceil(NS_PER_S))
}

/// `RateLimit-Policy` item from an already quoted rule name, a quota and a window in seconds
/// (a global rule reports the limit its service named).
pub fn policy_field(quoted: &str, quota: u64, window_secs: u64) -> String {
    let mut out = String::with_capacity(quoted.len() + 24);
    out.push_str(quoted);
    out.push_str(";q=");
    push_u64(&mut out, quota);
    out.push_str(";w=");
    push_u64(&mut out, window_secs.max(1));
    out
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

/// Appends decimal digits without the formatting machinery (this runs on every admitted request),
/// clamped to the largest integer a structured field may carry: a value past it would make a
/// conforming parser drop the whole field. (Local limits are refused past it at configure time;
/// what a rate limit service answers is clamped here.)
fn push_u64(out: &mut String, n: u64) {
    let mut n = n.min(crate::sfv::INTEGER_MAX);
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
    fn integers_past_fifteen_digits_are_clamped_so_the_field_stays_valid() {
        let huge = u64::MAX;
        assert_eq!(policy_field(&quoted("g"), huge, huge), r#""g";q=999999999999999;w=999999999999999"#);
        assert_eq!(ratelimit_field(&quoted("g"), huge, huge), r#""g";r=999999999999999;t=18446744074"#);
        assert_eq!(ratelimit_field(&quoted("g"), 999_999_999_999_999, 0), r#""g";r=999999999999999;t=0"#);
    }

    #[test]
    fn the_advertised_policy_is_one_the_rule_always_honours() {
        let tb = |requests, period_ns, burst| {
            policy_header("r", &Limit { requests, period_ns, burst }, Algorithm::TokenBucket)
        };
        assert_eq!(tb(100, 60 * NS_PER_S, 100), r#""r";q=100;w=60"#);
        assert_eq!(tb(100, NS_PER_S, 20), r#""r";q=20;w=1"#, "the bucket bounds a burst");
        assert_eq!(tb(10, NS_PER_S, 20), r#""r";q=10;w=1"#, "the refill bounds the next one");
        assert_eq!(tb(2, NS_PER_S / 4, 2), r#""r";q=2;w=1"#, "2 per 250 ms: 2 at once, every second");
        assert_eq!(tb(3, 1_500_000_000, 3), r#""r";q=3;w=2"#);
        let sw = |requests, period_ns| {
            policy_header("r", &Limit { requests, period_ns, burst: requests }, Algorithm::SlidingWindow)
        };
        assert_eq!(sw(1, 2 * NS_PER_S), r#""r";q=1;w=4"#);
        assert_eq!(sw(1, 60 * NS_PER_S), r#""r";q=1;w=120"#);
    }

    #[test]
    fn fields_follow_the_draft_syntax() {
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

#[cfg(test)]
mod honesty {
    //! A client that keeps to the advertised policy, however it times its requests, is never
    //! refused: checked against the algorithms themselves.
    use super::super::algorithm::{Algorithm, Limit, State};
    use super::*;

    /// The advertised `(q, w in ns)` of a rule.
    fn advertised(limit: &Limit, algorithm: Algorithm) -> (u64, u64) {
        let p = policy_header("r", limit, algorithm);
        let num = |k: &str| -> u64 {
            let rest = &p[p.find(k).unwrap() + k.len()..];
            rest.split(';').next().unwrap().parse().unwrap()
        };
        (num(";q="), num(";w=") * NS_PER_S)
    }

    /// Sends bursts of `q` requests, one burst every `w` (plus `lag`), starting at `start`:
    /// never more than `q` in any `w`. Returns how many were refused.
    fn refused_when_keeping_to_it(limit: &Limit, algorithm: Algorithm, start: u64, lag: u64) -> usize {
        let (q, w) = advertised(limit, algorithm);
        let mut state: Option<State> = None;
        let mut refused = 0;
        for burst in 0..20u64 {
            let at = start + burst * (w + lag);
            for _ in 0..q {
                let (next, decision) = algorithm.check(limit, state, at);
                state = Some(next);
                refused += usize::from(!decision.allowed());
            }
        }
        refused
    }

    #[test]
    fn a_client_keeping_to_the_advertised_policy_is_never_refused() {
        let limits = [
            (1, NS_PER_S, 1),
            (2, NS_PER_S / 4, 2),
            (10, 2 * NS_PER_S, 10),
            (100, NS_PER_S, 20),
            (10, NS_PER_S, 20),
            (3, 1_500_000_000, 3),
            (1, 60 * NS_PER_S, 1),
            (1000, 3600 * NS_PER_S, 1000),
        ];
        for (requests, period_ns, burst) in limits {
            for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingWindow] {
                let burst = if algorithm == Algorithm::SlidingWindow { requests } else { burst };
                let limit = Limit { requests, period_ns, burst };
                for start in [1, period_ns / 3, period_ns - 1, 7 * NS_PER_S + 13] {
                    for lag in [0, 1, NS_PER_S / 10] {
                        let refused = refused_when_keeping_to_it(&limit, algorithm, start, lag);
                        assert_eq!(refused, 0, "{limit:?} {algorithm:?} start {start} lag {lag}: {refused} refused");
                    }
                }
            }
        }
    }
}
