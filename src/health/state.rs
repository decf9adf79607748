//! One upstream's health: active-check hysteresis and passive ejection.

use super::config::{HealthCheck, Passive};

/// The outcome of one active check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// Answered with an expected status.
    Passed(u16),
    /// Answered with another status.
    BadStatus(u16),
    /// No answer: timeout, refused or reset connection (Envoy reports these alike to a callout).
    NoResponse,
    /// The check could not be sent: Envoy does not know the cluster. A configuration error, not
    /// evidence about the upstream: it never marks the upstream unhealthy.
    DispatchFailed,
}

impl CheckResult {
    /// True for [`CheckResult::Passed`].
    pub fn passed(self) -> bool {
        matches!(self, CheckResult::Passed(_))
    }

    /// Classifies a check's answer. Envoy answers a callout that timed out, was reset or could not
    /// connect with no headers at all; when the cluster has no healthy host or the connection
    /// failed, it answers with its own 503 local reply, whose body starts with "upstream connect
    /// error" or "no healthy upstream": that is no answer from the upstream either.
    pub fn from_answer(check: &HealthCheck, status: Option<u16>, body_start: &[u8]) -> CheckResult {
        let envoy_reply = status == Some(503)
            && (body_start.starts_with(b"upstream connect error") || body_start.starts_with(b"no healthy upstream"));
        match status {
            Some(s) if check.expects(s) => CheckResult::Passed(s),
            _ if envoy_reply => CheckResult::NoResponse,
            Some(s) => CheckResult::BadStatus(s),
            None => CheckResult::NoResponse,
        }
    }

    /// Words for the status endpoint and the fail-fast body.
    pub fn describe(self) -> String {
        match self {
            CheckResult::Passed(s) => format!("passed (HTTP {s})"),
            CheckResult::BadStatus(s) => format!("failed: HTTP {s}"),
            CheckResult::NoResponse => "failed: no response (timeout, refused or reset connection)".into(),
            CheckResult::DispatchFailed => {
                "not sent: Envoy has no cluster of this name (a configuration error; the upstream is judged by passive detection only)".into()
            }
        }
    }

    fn encode(self) -> [u8; 3] {
        let (tag, s) = match self {
            CheckResult::Passed(s) => (1, s),
            CheckResult::BadStatus(s) => (2, s),
            CheckResult::NoResponse => (3, 0),
            CheckResult::DispatchFailed => (4, 0),
        };
        let s = s.to_le_bytes();
        [tag, s[0], s[1]]
    }

    fn decode(b: [u8; 3]) -> Option<Option<CheckResult>> {
        let s = u16::from_le_bytes([b[1], b[2]]);
        Some(match b[0] {
            0 => None,
            1 => Some(CheckResult::Passed(s)),
            2 => Some(CheckResult::BadStatus(s)),
            3 => Some(CheckResult::NoResponse),
            4 => Some(CheckResult::DispatchFailed),
            _ => return None,
        })
    }
}

/// A change worth logging once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthTransition {
    BecameUnhealthy,
    BecameHealthy,
    Ejected,
    /// The upstream asked for a pause (429).
    RateLimited,
}

/// The length of [`Health::encode`]'s output: version 3's 57 bytes, the slow window's start (8),
/// its four counts (16) and the cause (1).
const V4: usize = 57 + 8 + 16 + 1;

/// One upstream's health as all workers share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The active-check verdict (with hysteresis). Upstreams start healthy.
    pub healthy: bool,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    /// Consecutive failed responses seen by passive detection.
    pub passive_fail: u32,
    /// Passive ejection: unavailable until then.
    pub ejected_until: u64,
    /// The upstream asked for a pause (a 429 with Retry-After or reset headers): unavailable
    /// until then, without counting as a failure.
    pub rate_limited_until: u64,
    /// When the last active check finished (0: never).
    pub last_check_at: u64,
    pub last_result: Option<CheckResult>,
    /// When `healthy` last changed (0: never).
    pub since: u64,
    /// When passive detection last saw a failed response (0: never).
    pub last_failed_at: u64,
    /// Slow-call ejection's window: start of the current fixed window, its counts (answered
    /// calls, slow ones), and the previous window's.
    pub slow_window_start: u64,
    pub slow_window: [u32; 2],
    pub slow_prev: [u32; 2],
    /// The last ejection was for slow calls (what its reason says).
    pub ejected_slow: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            healthy: true,
            consecutive_ok: 0,
            consecutive_fail: 0,
            passive_fail: 0,
            ejected_until: 0,
            rate_limited_until: 0,
            last_check_at: 0,
            last_result: None,
            since: 0,
            last_failed_at: 0,
            slow_window_start: 0,
            slow_window: [0; 2],
            slow_prev: [0; 2],
            ejected_slow: false,
        }
    }
}

impl Health {
    /// True when its last check could not be sent because Envoy has no cluster of its name: a
    /// configuration error. Such an upstream is passed over while another is available, and
    /// never the reason a request is refused.
    pub fn unknown(&self) -> bool {
        self.last_result == Some(CheckResult::DispatchFailed)
    }

    /// True when requests may go to this upstream at `now`.
    pub fn available(&self, now: u64) -> bool {
        self.healthy && now >= self.ejected_until && now >= self.rate_limited_until
    }

    /// True when the run of failed responses passive detection is counting (not yet an
    /// ejection) includes one within `window` of `now`: the upstream is still available, but a
    /// caller that can choose tries the others first. A success ends the run, and so does the
    /// ejection it leads to.
    pub fn demoted(&self, now: u64, window: u64) -> bool {
        self.passive_fail > 0 && now < self.last_failed_at.saturating_add(window)
    }

    /// The upstream answered 429 and asked to be left alone until `until`: it leaves rotation
    /// until then. Not a failure: the consecutive-failure run is neither extended nor reset, and
    /// an earlier, longer pause is kept. `None` when nothing changed.
    pub fn apply_rate_limit(&mut self, until: u64) -> Option<HealthTransition> {
        if until <= self.rate_limited_until {
            return None;
        }
        self.rate_limited_until = until;
        Some(HealthTransition::RateLimited)
    }

    /// When this upstream is expected back, if it is out only for a known time (ejection or a
    /// rate-limit pause, not a failed active check); `None` when available or when only checks
    /// can bring it back.
    pub fn back_at(&self, now: u64) -> Option<u64> {
        if self.available(now) || !self.healthy {
            return None;
        }
        Some(self.ejected_until.max(self.rate_limited_until))
    }

    /// Applies an active check result: `unhealthy_threshold` failures in a row mark it
    /// unhealthy, `healthy_threshold` passes in a row mark it healthy again; one odd result
    /// never flips it (no flapping). A check that could not be sent ([`CheckResult::DispatchFailed`])
    /// says nothing about the upstream: it is recorded and counts neither way, so a misnamed
    /// cluster never takes traffic down.
    pub fn apply_check(&mut self, check: &HealthCheck, result: CheckResult, now: u64) -> Option<HealthTransition> {
        self.last_check_at = now;
        self.last_result = Some(result);
        if result == CheckResult::DispatchFailed {
            return None;
        }
        if result.passed() {
            self.consecutive_ok = self.consecutive_ok.saturating_add(1);
            self.consecutive_fail = 0;
            if !self.healthy && self.consecutive_ok >= check.healthy_threshold {
                self.healthy = true;
                self.since = now;
                return Some(HealthTransition::BecameHealthy);
            }
        } else {
            self.consecutive_fail = self.consecutive_fail.saturating_add(1);
            self.consecutive_ok = 0;
            if self.healthy && self.consecutive_fail >= check.unhealthy_threshold {
                self.healthy = false;
                self.since = now;
                return Some(HealthTransition::BecameUnhealthy);
            }
        }
        None
    }

    /// Applies a response seen on the data path: `consecutive_failures` failures in a row eject
    /// the upstream for `ejection`, at once, without waiting for the next active check.
    pub fn apply_passive(&mut self, passive: &Passive, failed: bool, now: u64) -> Option<HealthTransition> {
        if !failed {
            self.passive_fail = 0;
            return None;
        }
        self.passive_fail = self.passive_fail.saturating_add(1);
        self.last_failed_at = now;
        if self.passive_fail >= passive.consecutive_failures && now >= self.ejected_until {
            self.passive_fail = 0;
            self.ejected_until = now.saturating_add(passive.ejection_ns);
            self.ejected_slow = false;
            return Some(HealthTransition::Ejected);
        }
        None
    }

    /// Applies an answered (not failed) response to slow-call ejection (`passive.slow`): when
    /// slow calls reach `threshold` of the sliding window with at least `min_requests` answered,
    /// the upstream is ejected for `ejection`, as after a run of failures.
    pub fn apply_slow(&mut self, passive: &Passive, slow: bool, now: u64) -> Option<HealthTransition> {
        let policy = passive.slow.as_ref()?;
        let w = policy.window_ns.max(1);
        let aligned = now - now % w;
        if aligned != self.slow_window_start {
            self.slow_prev =
                if aligned == self.slow_window_start.saturating_add(w) { self.slow_window } else { [0; 2] };
            self.slow_window = [0; 2];
            self.slow_window_start = aligned;
        }
        self.slow_window[0] = self.slow_window[0].saturating_add(1);
        self.slow_window[1] = self.slow_window[1].saturating_add(u32::from(slow));
        let left = u128::from(w) - u128::from(now.saturating_sub(self.slow_window_start)).min(u128::from(w));
        let weigh = |prev: u32| (u128::from(prev) * left / u128::from(w)) as u64;
        let calls = u64::from(self.slow_window[0]) + weigh(self.slow_prev[0]);
        let slows = u64::from(self.slow_window[1]) + weigh(self.slow_prev[1]);
        let over = calls >= u64::from(policy.min_requests) && slows as f64 >= policy.threshold * calls as f64;
        if slow && over && now >= self.ejected_until {
            self.slow_window = [0; 2];
            self.slow_prev = [0; 2];
            self.ejected_until = now.saturating_add(passive.ejection_ns);
            self.ejected_slow = true;
            return Some(HealthTransition::Ejected);
        }
        None
    }

    /// Why this upstream is not available, in words (empty when it is).
    pub fn reason(&self, now: u64) -> String {
        if !self.healthy {
            let last = self.last_result.map(CheckResult::describe).unwrap_or_else(|| "no check yet".into());
            format!("active health check {last}; {} consecutive failures", self.consecutive_fail)
        } else if now < self.ejected_until {
            let why = if self.ejected_slow {
                "for slow calls (answers later than passive.slow.after)"
            } else {
                "after consecutive failed responses"
            };
            format!(
                "ejected by passive detection {why}, for {} ms more",
                (self.ejected_until - now).div_ceil(1_000_000)
            )
        } else if now < self.rate_limited_until {
            format!(
                "rate limited by the upstream (429), back in {} ms",
                (self.rate_limited_until - now).div_ceil(1_000_000)
            )
        } else {
            String::new()
        }
    }

    /// Fixed-size little-endian encoding for shared data (version 4: version 3 plus slow-call
    /// ejection's window and cause; version 3: version 2 plus `last_failed_at`; version 2:
    /// version 1 plus `rate_limited_until`; all four decode).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(V4);
        out.push(4);
        out.push(u8::from(self.healthy));
        for v in [self.consecutive_ok, self.consecutive_fail, self.passive_fail] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.ejected_until, self.last_check_at, self.since] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.last_result.map(CheckResult::encode).unwrap_or([0; 3]));
        out.extend_from_slice(&self.rate_limited_until.to_le_bytes());
        out.extend_from_slice(&self.last_failed_at.to_le_bytes());
        out.extend_from_slice(&self.slow_window_start.to_le_bytes());
        for v in [self.slow_window[0], self.slow_window[1], self.slow_prev[0], self.slow_prev[1]] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(u8::from(self.ejected_slow));
        out
    }

    /// Parses [`Health::encode`]'s output.
    pub fn decode(b: &[u8]) -> Option<Health> {
        const V1: usize = 2 + 12 + 24 + 3;
        match (b.first(), b.len()) {
            (Some(1), V1) | (Some(2), 49) | (Some(3), 57) | (Some(4), V4) => {}
            _ => return None,
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        Some(Health {
            healthy: b[1] == 1,
            consecutive_ok: u32_at(2),
            consecutive_fail: u32_at(6),
            passive_fail: u32_at(10),
            ejected_until: u64_at(14),
            rate_limited_until: if b.len() > V1 { u64_at(V1) } else { 0 },
            last_check_at: u64_at(22),
            since: u64_at(30),
            last_failed_at: if b.len() > 49 { u64_at(49) } else { 0 },
            slow_window_start: if b.len() == V4 { u64_at(57) } else { 0 },
            slow_window: if b.len() == V4 { [u32_at(65), u32_at(69)] } else { [0; 2] },
            slow_prev: if b.len() == V4 { [u32_at(73), u32_at(77)] } else { [0; 2] },
            ejected_slow: b.len() == V4 && b[81] == 1,
            last_result: CheckResult::decode([b[38], b[39], b[40]])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_answers_are_classified_like_envoy_reports_them() {
        let check = HealthCheck::default();
        assert_eq!(CheckResult::from_answer(&check, Some(200), b"ok"), CheckResult::Passed(200));
        assert_eq!(CheckResult::from_answer(&check, Some(500), b""), CheckResult::BadStatus(500));
        assert_eq!(CheckResult::from_answer(&check, None, b""), CheckResult::NoResponse);
        assert_eq!(
            CheckResult::from_answer(&check, Some(503), b"upstream connect error or disconnect/reset before headers"),
            CheckResult::NoResponse
        );
        assert_eq!(CheckResult::from_answer(&check, Some(503), b"no healthy upstream"), CheckResult::NoResponse);
        assert_eq!(CheckResult::from_answer(&check, Some(503), b"maintenance"), CheckResult::BadStatus(503));
    }

    const S: u64 = 1_000_000_000;

    fn check(unhealthy: u32, healthy: u32) -> HealthCheck {
        HealthCheck { unhealthy_threshold: unhealthy, healthy_threshold: healthy, ..HealthCheck::default() }
    }

    #[test]
    fn upstreams_start_healthy_and_need_threshold_failures_to_go_down() {
        let c = check(2, 2);
        let mut h = Health::default();
        assert!(h.available(0));
        assert_eq!(h.apply_check(&c, CheckResult::BadStatus(503), S), None);
        assert!(h.healthy, "one failure is not enough");
        assert_eq!(h.apply_check(&c, CheckResult::NoResponse, 2 * S), Some(HealthTransition::BecameUnhealthy));
        assert!(!h.available(2 * S));
        assert_eq!(h.since, 2 * S);
    }

    #[test]
    fn hysteresis_needs_healthy_threshold_passes_in_a_row_to_come_back() {
        let c = check(1, 3);
        let mut h = Health::default();
        h.apply_check(&c, CheckResult::NoResponse, S);
        h.apply_check(&c, CheckResult::Passed(200), 2 * S);
        h.apply_check(&c, CheckResult::Passed(200), 3 * S);
        h.apply_check(&c, CheckResult::BadStatus(500), 4 * S);
        assert!(!h.healthy, "an interrupted run of passes starts over");
        h.apply_check(&c, CheckResult::Passed(200), 5 * S);
        h.apply_check(&c, CheckResult::Passed(200), 6 * S);
        assert_eq!(h.apply_check(&c, CheckResult::Passed(200), 7 * S), Some(HealthTransition::BecameHealthy));
    }

    #[test]
    fn alternating_results_never_flap() {
        let c = check(2, 2);
        let mut h = Health::default();
        for i in 0..20 {
            let r = if i % 2 == 0 { CheckResult::NoResponse } else { CheckResult::Passed(200) };
            assert_eq!(h.apply_check(&c, r, i * S), None);
        }
        assert!(h.healthy);
    }

    #[test]
    fn passive_failures_eject_at_once_and_ejection_expires() {
        let p = Passive { consecutive_failures: 3, ejection_ns: 10 * S, ..Passive::default() };
        let mut h = Health::default();
        assert_eq!(h.apply_passive(&p, true, S), None);
        assert_eq!(h.apply_passive(&p, true, S), None);
        assert_eq!(h.apply_passive(&p, true, S), Some(HealthTransition::Ejected));
        assert!(!h.available(S));
        assert!(h.reason(S).contains("passive"));
        assert!(!h.available(11 * S - 1));
        assert!(h.available(11 * S));
    }

    #[test]
    fn a_passive_success_resets_the_run() {
        let p = Passive { consecutive_failures: 2, ejection_ns: S, ..Passive::default() };
        let mut h = Health::default();
        h.apply_passive(&p, true, 0);
        h.apply_passive(&p, false, 0);
        assert_eq!(h.apply_passive(&p, true, 0), None);
    }

    #[test]
    fn reasons_name_the_last_check() {
        let mut h = Health::default();
        h.apply_check(&check(1, 1), CheckResult::BadStatus(503), S);
        assert_eq!(h.reason(S), "active health check failed: HTTP 503; 1 consecutive failures");
        h.apply_check(&check(1, 1), CheckResult::DispatchFailed, S);
        assert!(h.reason(S).contains("no cluster"), "{}", h.reason(S));
    }

    #[test]
    fn a_check_that_cannot_be_sent_never_marks_an_upstream_unhealthy() {
        let mut h = Health::default();
        for i in 1..=10 {
            assert_eq!(h.apply_check(&check(2, 1), CheckResult::DispatchFailed, i * S), None);
        }
        assert!(h.available(10 * S), "a misnamed cluster is a configuration error, not a down upstream");
        assert_eq!((h.consecutive_fail, h.last_result), (0, Some(CheckResult::DispatchFailed)));
        h.apply_check(&check(2, 1), CheckResult::BadStatus(503), 11 * S);
        h.apply_check(&check(2, 1), CheckResult::DispatchFailed, 12 * S);
        assert_eq!(
            h.apply_check(&check(2, 1), CheckResult::BadStatus(503), 13 * S),
            Some(HealthTransition::BecameUnhealthy)
        );
    }

    #[test]
    fn health_round_trips() {
        let mut h = Health::default();
        h.apply_check(&check(1, 1), CheckResult::BadStatus(502), 5);
        h.ejected_until = 99;
        h.rate_limited_until = 1234;
        h.last_failed_at = 77;
        assert_eq!(Health::decode(&h.encode()), Some(h));
        // Values written by the previous versions still read.
        let mut v2 = h.encode();
        v2.truncate(49);
        v2[0] = 2;
        assert_eq!(Health::decode(&v2), Some(Health { last_failed_at: 0, ..h }));
        assert_eq!(Health::decode(&[1, 2, 3]), None);
        let mut v1 = h.encode();
        v1.truncate(41);
        v1[0] = 1;
        assert_eq!(Health::decode(&v1), Some(Health { rate_limited_until: 0, last_failed_at: 0, ..h }));
    }

    #[test]
    fn a_rate_limit_pause_takes_the_upstream_out_without_counting_a_failure() {
        let p = Passive { consecutive_failures: 2, ejection_ns: S, ..Passive::default() };
        let mut h = Health::default();
        h.apply_passive(&p, true, 0);
        assert_eq!(h.apply_rate_limit(5 * S), Some(HealthTransition::RateLimited));
        assert_eq!(h.passive_fail, 1, "a 429 neither extends nor resets the failure run");
        assert!(!h.available(4 * S));
        assert_eq!(h.back_at(4 * S), Some(5 * S));
        assert_eq!(h.reason(4 * S), "rate limited by the upstream (429), back in 1000 ms");
        assert_eq!(h.apply_rate_limit(3 * S), None, "a shorter pause never shortens a longer one");
        assert!(h.available(5 * S));
        assert_eq!(h.back_at(5 * S), None);
    }

    #[test]
    fn a_failed_response_demotes_until_a_success_the_ejection_or_the_window() {
        let p = Passive { consecutive_failures: 3, ejection_ns: 30 * S, ..Passive::default() };
        let mut h = Health::default();
        assert!(!h.demoted(0, 10 * S));
        h.apply_passive(&p, true, S);
        assert!(h.available(S) && h.demoted(S, 10 * S), "still available, but tried last");
        assert!(!h.demoted(11 * S, 10 * S), "the window ran out");
        h.apply_passive(&p, false, 2 * S);
        assert!(!h.demoted(2 * S, 10 * S), "a success ends the run");
        for t in 3..6 {
            h.apply_passive(&p, true, t * S);
        }
        assert!(!h.available(5 * S) && !h.demoted(5 * S, 10 * S), "ejected, not demoted");
        assert!(h.available(35 * S) && !h.demoted(35 * S, 10 * S), "back from ejection at the front");
    }

    fn slow_passive() -> Passive {
        let policy = crate::breaker::SlowPolicy { after_ns: S, threshold: 0.5, min_requests: 4, window_ns: 10 * S };
        Passive { slow: Some(policy), ..Passive::default() }
    }

    #[test]
    fn slow_calls_over_their_share_eject_the_upstream_and_say_so() {
        let p = slow_passive();
        let mut h = Health::default();
        assert_eq!(h.apply_slow(&p, false, S), None);
        assert_eq!(h.apply_slow(&p, true, S), None);
        assert_eq!(h.apply_slow(&p, true, S), None, "3 answered: under min_requests");
        assert_eq!(h.apply_slow(&p, false, S), None, "a fast answer never ejects");
        assert_eq!(h.apply_slow(&p, true, 2 * S), Some(HealthTransition::Ejected), "3 of 5 slow");
        assert!(!h.available(2 * S));
        assert!(h.reason(2 * S).contains("slow calls"), "{}", h.reason(2 * S));
        assert!(h.available(2 * S + p.ejection_ns));
        // A later ejection for failures says failures.
        let mut g = h;
        for _ in 0..5 {
            g.apply_passive(&p, true, 20 * S);
        }
        assert!(g.reason(20 * S).contains("failed responses"), "{}", g.reason(20 * S));
    }

    #[test]
    fn without_slow_ejection_configured_nothing_is_counted() {
        let mut h = Health::default();
        assert_eq!(h.apply_slow(&Passive::default(), true, S), None);
        assert_eq!(h, Health::default());
    }

    #[test]
    fn the_slow_window_survives_encoding_and_version_3_still_decodes() {
        let p = slow_passive();
        let mut h = Health::default();
        h.apply_slow(&p, true, S);
        h.apply_slow(&p, false, S);
        assert_eq!(Health::decode(&h.encode()), Some(h));
        let v3 = &h.encode()[..57];
        let mut v3 = v3.to_vec();
        v3[0] = 3;
        let old = Health::decode(&v3).expect("version 3 decodes");
        assert_eq!((old.slow_window, old.ejected_slow), ([0, 0], false));
    }
}
