//! The breaker state machine.

use super::policy::{Policy, MAX_PROBES};

/// The circuit's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Requests flow; failures are counted.
    Closed,
    /// Requests are refused until the open time has passed.
    Open,
    /// A few probe requests test the upstream; the rest are refused.
    HalfOpen,
}

impl Phase {
    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> u64 {
        match self {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::HalfOpen => 2,
        }
    }

    /// Lowercase name, as in the `x-upstream-guard-circuit` header and logs.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half-open",
        }
    }
}

/// A change of phase, reported once by whichever worker caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
}

impl Transition {
    /// What the response that moved the circuit did, for its access-log line: `tripped` (closed
    /// to open), `reopened` (a probe failed), `half_opened`, `closed`.
    pub fn decision(self) -> &'static str {
        match (self.from, self.to) {
            (Phase::HalfOpen, Phase::Open) => "reopened",
            (_, Phase::Open) => "tripped",
            (_, Phase::Closed) => "closed",
            (_, Phase::HalfOpen) => "half_opened",
        }
    }
}

/// The verdict at request time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: send it.
    Allow,
    /// Half-open: send it as probe `id`; report its outcome with that id.
    Probe(u32),
    /// Refuse it; the circuit may let requests through again in `retry_after_ns`.
    Reject { retry_after_ns: u64 },
}

impl Admission {
    /// The verdict, and the phase to report, when the breaker's shared state could not be
    /// updated (compare-and-swap lost every retry, or the store failed) on a circuit that is not
    /// closed: a probe slot could not be taken, so the request is refused as by a full half-open
    /// circuit, with a retry a second away. Closed circuits never get here: admitting through a
    /// closed circuit writes nothing.
    pub const CONTENDED: (Admission, Phase) = (Admission::Reject { retry_after_ns: 1_000_000_000 }, Phase::HalfOpen);
}

/// How a response turned out, already classified ([`crate::diagnose::judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Answered, but later than `failure.slow.after`.
    Slow,
}

/// Why a circuit last opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TripCause {
    /// Failures: a run of them, their ratio, or a failed probe.
    #[default]
    Failures,
    /// Slow calls: their share of the window, or a slow probe.
    Slow,
}

/// One breaker's whole state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    pub phase: Phase,
    /// Consecutive failures while closed.
    pub consecutive: u32,
    /// Ratio window: start of the current fixed window, its totals (calls, failures, slow
    /// calls), and the previous window's.
    pub window_start: u64,
    pub window: [u32; 3],
    pub prev_window: [u32; 3],
    /// Why the circuit last opened (what a refusal explains).
    pub cause: TripCause,
    /// When the circuit may move from open to half-open.
    pub open_until: u64,
    /// Trips since the last clean close: the open time grows with it.
    pub trips: u32,
    /// Successful probes in this half-open period.
    pub probe_successes: u32,
    /// Next probe id to hand out.
    pub next_probe: u32,
    /// Probes in flight: (id, admitted at).
    pub probes: Vec<(u32, u64)>,
    /// The latest `now` seen: earlier readings count as this one.
    pub seen: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            phase: Phase::Closed,
            consecutive: 0,
            window_start: 0,
            window: [0; 3],
            prev_window: [0; 3],
            cause: TripCause::Failures,
            open_until: 0,
            trips: 0,
            probe_successes: 0,
            next_probe: 1,
            probes: Vec::new(),
            seen: 0,
        }
    }
}

impl Breaker {
    fn clock(&mut self, now: u64) -> u64 {
        self.seen = self.seen.max(now);
        self.seen
    }

    fn open(&mut self, policy: &Policy, now: u64, cause: TripCause) -> Transition {
        let from = self.phase;
        self.cause = cause;
        let open_ns = policy.open_time_ns(self.trips);
        self.phase = Phase::Open;
        self.open_until = now.saturating_add(open_ns);
        self.trips = self.trips.saturating_add(1);
        self.consecutive = 0;
        self.window = [0; 3];
        self.prev_window = [0; 3];
        self.probes.clear();
        self.probe_successes = 0;
        Transition { from, to: Phase::Open }
    }

    /// Decides whether a request may go to the upstream. May move open → half-open.
    pub fn admit(&mut self, policy: &Policy, now: u64) -> (Admission, Option<Transition>) {
        let now = self.clock(now);
        let mut transition = None;
        if self.phase == Phase::Open {
            if now < self.open_until {
                return (Admission::Reject { retry_after_ns: self.open_until - now }, None);
            }
            self.phase = Phase::HalfOpen;
            self.probes.clear();
            self.probe_successes = 0;
            transition = Some(Transition { from: Phase::Open, to: Phase::HalfOpen });
        }
        if self.phase == Phase::Closed {
            return (Admission::Allow, None);
        }
        // Half-open: forget probes whose streams never reported back (the client went away).
        let timeout = policy.probe_timeout_ns;
        self.probes.retain(|(_, at)| now.saturating_sub(*at) < timeout);
        let limit = (policy.max_probes as usize).min(MAX_PROBES);
        if self.probes.len() >= limit {
            let oldest = self.probes.iter().map(|(_, at)| *at).min().unwrap_or(now);
            let retry_after_ns = (oldest.saturating_add(timeout)).saturating_sub(now).max(1);
            return (Admission::Reject { retry_after_ns }, transition);
        }
        let id = self.next_probe;
        self.next_probe = self.next_probe.wrapping_add(1).max(1);
        self.probes.push((id, now));
        (Admission::Probe(id), transition)
    }

    /// Records a classified outcome. `probe` is the id [`Breaker::admit`] gave, if any.
    pub fn record(&mut self, policy: &Policy, now: u64, outcome: Outcome, probe: Option<u32>) -> Option<Transition> {
        let now = self.clock(now);
        match self.phase {
            // Responses to requests admitted before the trip say nothing new.
            Phase::Open => None,
            Phase::HalfOpen => {
                let id = probe?;
                let i = self.probes.iter().position(|(p, _)| *p == id)?;
                self.probes.swap_remove(i);
                match outcome {
                    Outcome::Failure => Some(self.open(policy, now, TripCause::Failures)),
                    Outcome::Slow => Some(self.open(policy, now, TripCause::Slow)),
                    Outcome::Success => {
                        self.probe_successes += 1;
                        if self.probe_successes >= policy.successes_to_close {
                            *self = Breaker { next_probe: self.next_probe, seen: self.seen, ..Breaker::default() };
                            Some(Transition { from: Phase::HalfOpen, to: Phase::Closed })
                        } else {
                            None
                        }
                    }
                }
            }
            Phase::Closed => {
                let failed = outcome == Outcome::Failure;
                let slow = outcome == Outcome::Slow;
                // A slow answer is an answer: it ends a run of failures.
                self.consecutive = if failed { self.consecutive.saturating_add(1) } else { 0 };
                let (mut tripped_ratio, mut tripped_slow) = (false, false);
                if let Some(w) = policy.failure.window_ns() {
                    self.roll_window(w, now);
                    self.window[0] = self.window[0].saturating_add(1);
                    self.window[1] = self.window[1].saturating_add(u32::from(failed));
                    self.window[2] = self.window[2].saturating_add(u32::from(slow));
                    let [total, failures, slows] = self.window_estimate(w, now);
                    tripped_ratio = policy.failure.ratio.as_ref().is_some_and(|r| {
                        failed && total >= u64::from(r.min_requests) && failures as f64 >= r.threshold * total as f64
                    });
                    tripped_slow = policy.failure.slow.as_ref().is_some_and(|s| {
                        slow && total >= u64::from(s.min_requests) && slows as f64 >= s.threshold * total as f64
                    });
                }
                let tripped_run = policy.failure.consecutive.is_some_and(|n| self.consecutive >= n);
                if tripped_run || tripped_ratio {
                    Some(self.open(policy, now, TripCause::Failures))
                } else if tripped_slow {
                    Some(self.open(policy, now, TripCause::Slow))
                } else {
                    None
                }
            }
        }
    }

    fn roll_window(&mut self, w: u64, now: u64) {
        let w = w.max(1);
        let aligned = now - now % w;
        if aligned != self.window_start {
            self.prev_window = if aligned == self.window_start.saturating_add(w) { self.window } else { [0; 3] };
            self.window = [0; 3];
            self.window_start = aligned;
        }
    }

    /// [calls, failures, slow calls] over the sliding window: this window plus the previous one
    /// weighted by how much of it still overlaps.
    fn window_estimate(&self, w: u64, now: u64) -> [u64; 3] {
        let w = u128::from(w.max(1));
        let left = w - u128::from(now.saturating_sub(self.window_start)).min(w);
        let weigh = |prev: u32| (u128::from(prev) * left / w) as u64;
        [0, 1, 2].map(|i| u64::from(self.window[i]) + weigh(self.prev_window[i]))
    }

    /// Forgets probe `id` without an outcome (its client went away before the response): the
    /// slot is free for another probe at once instead of at expiry.
    pub fn abandon(&mut self, id: u32) -> bool {
        let before = self.probes.len();
        self.probes.retain(|(p, _)| *p != id);
        self.probes.len() != before
    }

    /// True when this breaker is what a fresh one would be at `now`: closed, no failure counted,
    /// no probe out, and the ratio window empty or expired. Its slot may then pass to another key
    /// ([`crate::slots`]).
    pub fn at_rest(&self, policy: &Policy, now: u64) -> bool {
        let window_clear = match policy.failure.window_ns() {
            None => true,
            Some(w) => {
                (self.window == [0; 3] && self.prev_window == [0; 3])
                    || now.max(self.seen) >= self.window_start.saturating_add(w.saturating_mul(2))
            }
        };
        self.phase == Phase::Closed && self.consecutive == 0 && self.probes.is_empty() && window_clear
    }

    /// True when `other` is the same state apart from the latest clock reading: no write needed.
    pub fn same_as(&self, other: &Breaker) -> bool {
        Breaker { seen: other.seen, ..self.clone() } == *other
    }

    /// Serialises for shared data: fixed little-endian fields, then the probes. Format 2 adds
    /// the slow-call counts and the trip cause to format 1, which [`Breaker::decode`] still
    /// reads (a state another version of the module wrote into the same Envoy's shared data).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(72 + 12 * self.probes.len());
        out.push(2); // format version
        out.push(self.phase.gauge() as u8);
        out.push(match self.cause {
            TripCause::Failures => 0,
            TripCause::Slow => 1,
        });
        for v in [self.consecutive, self.window[0], self.window[1], self.window[2]] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in self.prev_window {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.window_start, self.open_until, self.seen] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.trips, self.probe_successes, self.next_probe] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(self.probes.len().min(MAX_PROBES) as u8);
        for (id, at) in self.probes.iter().take(MAX_PROBES) {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&at.to_le_bytes());
        }
        out
    }

    /// Parses [`Breaker::encode`]'s output; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Breaker> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != 1 && version != 2 {
            return None;
        }
        let phase = match r.u8()? {
            0 => Phase::Closed,
            1 => Phase::Open,
            2 => Phase::HalfOpen,
            _ => return None,
        };
        let cause = match (version, if version == 2 { r.u8()? } else { 0 }) {
            (_, 0) => TripCause::Failures,
            (_, 1) => TripCause::Slow,
            _ => return None,
        };
        let consecutive = r.u32()?;
        let (window, prev_window) = if version == 2 {
            ([r.u32()?, r.u32()?, r.u32()?], [r.u32()?, r.u32()?, r.u32()?])
        } else {
            let (a, b, c, d) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
            ([a, b, 0], [c, d, 0])
        };
        let (window_start, open_until, seen) = (r.u64()?, r.u64()?, r.u64()?);
        let (trips, probe_successes, next_probe) = (r.u32()?, r.u32()?, r.u32()?);
        let n = usize::from(r.u8()?);
        if n > MAX_PROBES {
            return None;
        }
        let mut probes = Vec::with_capacity(n);
        for _ in 0..n {
            probes.push((r.u32()?, r.u64()?));
        }
        r.0.is_empty().then_some(Breaker {
            phase,
            consecutive,
            window_start,
            window,
            prev_window,
            cause,
            open_until,
            trips,
            probe_successes,
            next_probe,
            probes,
            seen,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_at_checked(N)?;
        self.0 = rest;
        head.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take()?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::BreakerConfig;
    use super::*;

    const S: u64 = 1_000_000_000;

    fn policy(json: &str) -> Policy {
        BreakerConfig::from_json(json.as_bytes()).unwrap().default_policy().clone()
    }

    fn fail(b: &mut Breaker, p: &Policy, now: u64, n: u32) -> Vec<Transition> {
        (0..n).filter_map(|_| b.record(p, now, Outcome::Failure, None)).collect()
    }

    #[test]
    fn closed_trips_after_exactly_n_consecutive_failures() {
        let p = policy(r#"{"failure": {"consecutive": 3}}"#);
        let mut b = Breaker::default();
        assert!(fail(&mut b, &p, S, 2).is_empty());
        assert_eq!(b.phase, Phase::Closed);
        assert_eq!(fail(&mut b, &p, S, 1), [Transition { from: Phase::Closed, to: Phase::Open }]);
        assert_eq!(b.phase, Phase::Open);
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let p = policy(r#"{"failure": {"consecutive": 3}}"#);
        let mut b = Breaker::default();
        fail(&mut b, &p, S, 2);
        b.record(&p, S, Outcome::Success, None);
        assert!(fail(&mut b, &p, S, 2).is_empty());
        assert_eq!(b.phase, Phase::Closed);
    }

    #[test]
    fn ratio_trips_only_after_min_requests() {
        let p = policy(r#"{"failure": {"ratio": {"threshold": 0.5, "min_requests": 10, "window": "10s"}}}"#);
        let mut b = Breaker::default();
        for i in 0..8 {
            let o = if i % 2 == 0 { Outcome::Failure } else { Outcome::Success };
            assert_eq!(b.record(&p, S, o, None), None);
        }
        b.record(&p, S, Outcome::Success, None);
        assert_eq!(b.record(&p, S, Outcome::Failure, None).map(|t| t.to), Some(Phase::Open), "5 of 10 failed");
    }

    #[test]
    fn ratio_below_threshold_does_not_trip() {
        let p = policy(r#"{"failure": {"ratio": {"threshold": 0.5, "min_requests": 4, "window": "10s"}}}"#);
        let mut b = Breaker::default();
        for i in 0..100 {
            let o = if i % 3 == 2 { Outcome::Failure } else { Outcome::Success };
            assert_eq!(b.record(&p, S + i, o, None), None);
        }
    }

    #[test]
    fn open_rejects_until_the_open_time_then_admits_probes() {
        let p = policy(r#"{"failure": {"consecutive": 1}, "open": {"base": "5s"}, "half_open": {"max_probes": 2}}"#);
        let mut b = Breaker::default();
        fail(&mut b, &p, 10 * S, 1);
        assert_eq!(b.admit(&p, 12 * S).0, Admission::Reject { retry_after_ns: 3 * S });
        let (a, t) = b.admit(&p, 15 * S);
        assert_eq!(a, Admission::Probe(1));
        assert_eq!(t, Some(Transition { from: Phase::Open, to: Phase::HalfOpen }));
        assert_eq!(b.admit(&p, 15 * S).0, Admission::Probe(2));
        assert!(matches!(b.admit(&p, 15 * S).0, Admission::Reject { .. }), "at most max_probes in flight");
    }

    #[test]
    fn half_open_closes_after_enough_successful_probes() {
        let p = policy(
            r#"{"failure": {"consecutive": 1}, "open": {"base": "1s"}, "half_open": {"max_probes": 1, "successes_to_close": 2}}"#,
        );
        let mut b = Breaker::default();
        fail(&mut b, &p, 0, 1);
        let Admission::Probe(id) = b.admit(&p, S).0 else { panic!() };
        assert_eq!(b.record(&p, S, Outcome::Success, Some(id)), None);
        let Admission::Probe(id) = b.admit(&p, S).0 else { panic!() };
        assert_eq!(
            b.record(&p, S, Outcome::Success, Some(id)),
            Some(Transition { from: Phase::HalfOpen, to: Phase::Closed })
        );
        assert_eq!(b.admit(&p, S).0, Admission::Allow);
        assert_eq!(b.trips, 0, "a clean close resets the backoff");
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_each_time_up_to_max() {
        let p = policy(r#"{"failure": {"consecutive": 1}, "open": {"base": "1s", "max": "5s", "multiplier": 2}}"#);
        let mut b = Breaker::default();
        fail(&mut b, &p, 0, 1);
        let mut now = 0;
        let mut open_times = Vec::new();
        for _ in 0..5 {
            let wait = b.open_until - now;
            open_times.push(wait / S);
            now = b.open_until;
            let Admission::Probe(id) = b.admit(&p, now).0 else { panic!() };
            assert_eq!(b.record(&p, now, Outcome::Failure, Some(id)).map(|t| t.to), Some(Phase::Open));
        }
        assert_eq!(open_times, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn probes_that_never_report_expire_and_free_their_slot() {
        let p = policy(
            r#"{"failure": {"consecutive": 1}, "open": {"base": "1s"}, "half_open": {"max_probes": 1, "probe_timeout": "10s"}}"#,
        );
        let mut b = Breaker::default();
        fail(&mut b, &p, 0, 1);
        assert!(matches!(b.admit(&p, S).0, Admission::Probe(_)));
        assert_eq!(b.admit(&p, 5 * S).0, Admission::Reject { retry_after_ns: 6 * S });
        assert!(matches!(b.admit(&p, 11 * S).0, Admission::Probe(_)), "the lost probe expired");
    }

    #[test]
    fn outcomes_of_requests_admitted_before_the_trip_are_ignored() {
        let p = policy(r#"{"failure": {"consecutive": 1}, "open": {"base": "10s"}}"#);
        let mut b = Breaker::default();
        fail(&mut b, &p, 0, 1);
        let before = b.clone();
        assert_eq!(b.record(&p, S, Outcome::Failure, None), None);
        assert_eq!(b.record(&p, S, Outcome::Success, None), None);
        assert_eq!(b, Breaker { seen: S, ..before });
        // In half-open, a non-probe outcome (or an expired probe's) changes nothing either.
        let Admission::Probe(_) = b.admit(&p, 10 * S).0 else { panic!() };
        assert_eq!(b.record(&p, 10 * S, Outcome::Failure, None), None);
        assert_eq!(b.record(&p, 10 * S, Outcome::Failure, Some(999)), None);
        assert_eq!(b.phase, Phase::HalfOpen);
    }

    #[test]
    fn an_abandoned_probe_frees_its_slot_at_once() {
        let p = policy(r#"{"failure": {"consecutive": 1}, "open": {"base": "1s"}, "half_open": {"max_probes": 1}}"#);
        let mut b = Breaker::default();
        fail(&mut b, &p, 0, 1);
        let Admission::Probe(id) = b.admit(&p, S).0 else { panic!() };
        assert!(matches!(b.admit(&p, S).0, Admission::Reject { .. }));
        assert!(b.abandon(id));
        assert!(matches!(b.admit(&p, S).0, Admission::Probe(_)));
    }

    #[test]
    fn clock_skew_between_workers_never_moves_time_backwards() {
        let p = policy(r#"{"failure": {"consecutive": 1}, "open": {"base": "5s"}}"#);
        let mut b = Breaker::default();
        fail(&mut b, &p, 10 * S, 1);
        // A worker whose clock reads earlier sees the same remaining time, not more.
        assert_eq!(b.admit(&p, 9 * S).0, Admission::Reject { retry_after_ns: 5 * S });
        assert_eq!(b.admit(&p, 12 * S).0, Admission::Reject { retry_after_ns: 3 * S });
        assert_eq!(b.admit(&p, 11 * S).0, Admission::Reject { retry_after_ns: 3 * S });
    }

    #[test]
    fn state_round_trips_through_the_shared_data_encoding() {
        let p = policy(r#"{"failure": {"consecutive": 1}, "open": {"base": "1s"}, "half_open": {"max_probes": 3}}"#);
        let mut b = Breaker::default();
        fail(&mut b, &p, 0, 1);
        b.admit(&p, 2 * S);
        b.admit(&p, 2 * S);
        assert_eq!(Breaker::decode(&b.encode()), Some(b.clone()));
        assert_eq!(Breaker::decode(&[]), None);
        let mut bad = b.encode();
        bad.push(0);
        assert_eq!(Breaker::decode(&bad), None);
    }

    #[test]
    fn a_transition_names_what_the_response_did() {
        let t = |from, to| Transition { from, to }.decision();
        assert_eq!(t(Phase::Closed, Phase::Open), "tripped");
        assert_eq!(t(Phase::HalfOpen, Phase::Open), "reopened");
        assert_eq!(t(Phase::HalfOpen, Phase::Closed), "closed");
        assert_eq!(t(Phase::Open, Phase::HalfOpen), "half_opened");
    }

    const SLOW: &str = r#"{"failure": {"consecutive": 100, "slow": {"after": "1s", "threshold": 0.5, "min_requests": 4, "window": "10s"}}}"#;

    #[test]
    fn the_share_of_slow_calls_trips_the_circuit_after_min_requests_and_says_why() {
        let p = policy(SLOW);
        let mut b = Breaker::default();
        assert_eq!(b.record(&p, S, Outcome::Slow, None), None);
        assert_eq!(b.record(&p, S, Outcome::Success, None), None);
        assert_eq!(b.record(&p, S, Outcome::Slow, None), None, "3 calls: under min_requests");
        let t = b.record(&p, S, Outcome::Slow, None);
        assert_eq!(t, Some(Transition { from: Phase::Closed, to: Phase::Open }), "3 of 4 slow");
        assert_eq!(b.cause, TripCause::Slow);
        // A slow probe re-opens it; failures open it for failures.
        let (_, _) = b.admit(&p, 100 * S);
        let probe = b.probes[0].0;
        assert_eq!(b.record(&p, 100 * S, Outcome::Slow, Some(probe)).map(|t| t.to), Some(Phase::Open));
        assert_eq!(b.cause, TripCause::Slow);
    }

    #[test]
    fn fast_answers_keep_the_slow_share_under_the_threshold() {
        let p = policy(SLOW);
        let mut b = Breaker::default();
        for i in 0..40 {
            let o = if i % 3 == 2 { Outcome::Slow } else { Outcome::Success };
            assert_eq!(b.record(&p, S + i * 1_000_000, o, None), None, "a third slow is under half");
        }
        assert_eq!(b.phase, Phase::Closed);
    }

    #[test]
    fn slow_calls_end_a_run_of_failures_and_failures_trip_for_failures() {
        let p = policy(r#"{"failure": {"consecutive": 2, "slow": {"after": "1s", "min_requests": 100}}}"#);
        let mut b = Breaker::default();
        b.record(&p, S, Outcome::Failure, None);
        b.record(&p, S, Outcome::Slow, None);
        assert_eq!(b.record(&p, S, Outcome::Failure, None), None, "the slow answer ended the run");
        assert_eq!(b.record(&p, S, Outcome::Failure, None).map(|t| t.to), Some(Phase::Open));
        assert_eq!(b.cause, TripCause::Failures);
    }

    #[test]
    fn a_state_in_the_previous_format_still_decodes() {
        let mut v1 = vec![1u8, 0];
        for v in [2u32, 7, 3, 5, 1] {
            v1.extend_from_slice(&v.to_le_bytes());
        }
        for v in [10u64, 0, 11] {
            v1.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0u32, 0, 1] {
            v1.extend_from_slice(&v.to_le_bytes());
        }
        v1.push(0);
        let b = Breaker::decode(&v1).expect("format 1 decodes");
        assert_eq!((b.consecutive, b.window, b.prev_window, b.cause), (2, [7, 3, 0], [5, 1, 0], TripCause::Failures));
        let slow_open = Breaker { cause: TripCause::Slow, window: [4, 1, 3], ..b };
        assert_eq!(Breaker::decode(&slow_open.encode()), Some(slow_open));
    }
}
