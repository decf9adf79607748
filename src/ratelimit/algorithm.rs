//! Token bucket (as GCRA) and sliding window, with time passed in as nanoseconds.
//!
//! Both algorithms keep a few integers per key, so that a whole bucket fits one shared-data value
//! and one compare-and-swap. Time never goes backwards for a bucket: a `now` earlier than the last
//! one seen counts as zero elapsed (workers read the clock at slightly different moments).

/// A validated limit: `requests` per `period_ns` sustained, with a bucket of `burst` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests admitted per period, sustained (> 0).
    pub requests: u64,
    /// The period in nanoseconds (> 0).
    pub period_ns: u64,
    /// How many requests a fresh key may spend at once (> 0); `requests` unless configured.
    pub burst: u64,
}

impl Limit {
    /// Nanoseconds between two sustained requests, rounded up so the rate is never exceeded.
    pub fn interval_ns(&self) -> u64 {
        self.period_ns.div_ceil(self.requests.max(1)).max(1)
    }
}

/// Which algorithm a rule uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Smooth refill at `requests / per`, bursts up to `burst`.
    #[default]
    TokenBucket,
    /// At most `requests` in any window of length `per`, estimated from the current and the
    /// previous fixed window (weighted by overlap).
    SlidingWindow,
}

/// The verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; `remaining` more would be admitted right now; the quota is whole again in
    /// `reset_ns`.
    Allowed { remaining: u64, reset_ns: u64 },
    /// Refused; a request will be admitted again in `retry_after_ns`.
    Limited { retry_after_ns: u64 },
}

impl Decision {
    /// True when admitted.
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// Stored state of one key, as one shared-data value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// GCRA: the theoretical arrival time of the next request, and the latest `now` seen.
    Bucket { tat: u64, seen: u64 },
    /// The current fixed window's start and count, the previous window's count, latest `now`.
    Window { start: u64, prev: u64, cur: u64, seen: u64 },
}

impl State {
    /// True when this state admits what a fresh key would at `now`: a full bucket, or a window
    /// whose counts have both expired. A slot in this state may pass to another key
    /// ([`crate::slots`]): the newcomer starts fresh, and the old owner lost nothing it had.
    pub fn at_rest(&self, limit: &Limit, now: u64) -> bool {
        match *self {
            State::Bucket { tat, seen } => tat <= now.max(seen),
            State::Window { start, prev, cur, seen } => {
                (prev == 0 && cur == 0) || now.max(seen) >= start.saturating_add(limit.period_ns.saturating_mul(2))
            }
        }
    }

    /// Serialises to the shared-data encoding: a tag byte, then little-endian u64s.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, words): (u8, &[u64]) = match self {
            State::Bucket { tat, seen } => (1, &[*tat, *seen]),
            State::Window { start, prev, cur, seen } => (2, &[*start, *prev, *cur, *seen]),
        };
        let mut out = Vec::with_capacity(1 + 8 * words.len());
        out.push(tag);
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Parses the shared-data encoding; `None` for anything else (an empty or foreign value).
    pub fn decode(bytes: &[u8]) -> Option<State> {
        let (&tag, rest) = bytes.split_first()?;
        let word = |i: usize| -> Option<u64> { Some(u64::from_le_bytes(rest.get(i * 8..i * 8 + 8)?.try_into().ok()?)) };
        match (tag, rest.len()) {
            (1, 16) => Some(State::Bucket { tat: word(0)?, seen: word(1)? }),
            (2, 32) => Some(State::Window { start: word(0)?, prev: word(1)?, cur: word(2)?, seen: word(3)? }),
            _ => None,
        }
    }
}

/// A token bucket's state seen at `now`: what [`token_bucket`] and leases
/// ([`super::lease::take`]) both start from.
pub(crate) struct Gcra {
    /// Nanoseconds per token.
    pub interval: u64,
    /// How far ahead of now the arrival time may be for a request to conform.
    pub tolerance: u64,
    /// The stored theoretical arrival time.
    pub tat: u64,
    /// `now`, never before the latest time the bucket saw.
    pub now: u64,
    /// Where the next admission starts from: `max(tat, now)`.
    pub start: u64,
    /// The bucket's debt: `start - now`.
    pub ahead: u64,
}

impl Gcra {
    pub(crate) fn of(limit: &Limit, state: Option<State>, now: u64) -> Gcra {
        let interval = limit.interval_ns();
        let tolerance = interval.saturating_mul(limit.burst.max(1) - 1);
        let (tat, seen) = match state {
            Some(State::Bucket { tat, seen }) => (tat, seen),
            _ => (0, 0),
        };
        let now = now.max(seen);
        let start = tat.max(now);
        Gcra { interval, tolerance, tat, now, start, ahead: start - now }
    }
}

/// Token bucket, computed as GCRA (generic cell rate algorithm): one timestamp instead of a
/// token count and a refill time, so the update is a single comparison and the stored value is
/// tiny. A request is admitted when the bucket's theoretical arrival time is at most
/// `interval * (burst - 1)` ahead of now; each admission pushes it one interval further.
pub fn token_bucket(limit: &Limit, state: Option<State>, now: u64) -> (State, Decision) {
    let Gcra { interval, tolerance, tat, now, start, ahead } = Gcra::of(limit, state, now);
    if ahead > tolerance {
        return (State::Bucket { tat, seen: now }, Decision::Limited { retry_after_ns: ahead - tolerance });
    }
    let tat = start.saturating_add(interval);
    let used = tat - now;
    let remaining = (tolerance.saturating_add(interval).saturating_sub(used)) / interval;
    (State::Bucket { tat, seen: now }, Decision::Allowed { remaining, reset_ns: used })
}

/// Sliding window: at most `limit.requests` per `limit.period_ns`, estimated as the current
/// fixed window's count plus the previous window's count weighted by how much of it the sliding
/// window still covers (rounded up, so the estimate never under-counts).
pub fn sliding_window(limit: &Limit, state: Option<State>, now: u64) -> (State, Decision) {
    let w = limit.period_ns.max(1);
    let n = limit.requests;
    let (mut start, mut prev, mut cur, seen) = match state {
        Some(State::Window { start, prev, cur, seen }) => (start, prev, cur, seen),
        _ => (now - now % w, 0, 0, 0),
    };
    let now = now.max(seen);
    let aligned = now - now % w;
    if aligned != start {
        prev = if aligned == start.saturating_add(w) { cur } else { 0 };
        cur = 0;
        start = aligned;
    }
    let elapsed = now - start;
    let weighted = |prev: u64, elapsed: u64| -> u64 {
        let num = u128::from(prev) * u128::from(w - elapsed);
        u64::try_from(num.div_ceil(u128::from(w))).unwrap_or(u64::MAX)
    };
    let estimate = weighted(prev, elapsed).saturating_add(cur);
    let stored = |cur| State::Window { start, prev, cur, seen: now };
    if estimate < n {
        let remaining = n - estimate - 1;
        // The quota is whole again once this window, and then its weight, have passed.
        let reset_ns = (start + w - now).saturating_add(w);
        return (stored(cur + 1), Decision::Allowed { remaining, reset_ns });
    }
    // Earliest time at which the estimate drops below n: later in this window (the previous
    // window's weight decays), or in the next one (this window's count becomes the weighted one).
    let earliest_in = |prev: u64, cur: u64| -> Option<u64> {
        if cur >= n {
            return None;
        }
        if prev == 0 {
            return Some(0);
        }
        // Need ceil(prev * (w - e) / w) <= n - cur - 1, i.e. prev * (w - e) <= (n - cur - 1) * w.
        let budget = u128::from(n - cur - 1) * u128::from(w);
        let need = (u128::from(prev) * u128::from(w)).saturating_sub(budget);
        Some(u64::try_from(need.div_ceil(u128::from(prev))).unwrap_or(u64::MAX))
    };
    let retry_after_ns = match earliest_in(prev, cur) {
        Some(e) if e < w => e.saturating_sub(elapsed).max(1),
        _ => {
            let to_next = start + w - now;
            to_next.saturating_add(earliest_in(cur, 0).unwrap_or(w)).max(1)
        }
    };
    (stored(cur), Decision::Limited { retry_after_ns })
}

impl Algorithm {
    /// Runs this algorithm.
    pub fn check(self, limit: &Limit, state: Option<State>, now: u64) -> (State, Decision) {
        match self {
            Algorithm::TokenBucket => token_bucket(limit, state, now),
            Algorithm::SlidingWindow => sliding_window(limit, state, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn limit(requests: u64, period_ns: u64, burst: u64) -> Limit {
        Limit { requests, period_ns, burst }
    }

    /// Runs `count` requests at `now`, threading state; returns how many were admitted.
    fn admit(alg: Algorithm, l: &Limit, state: &mut Option<State>, now: u64, count: u64) -> u64 {
        let mut admitted = 0;
        for _ in 0..count {
            let (s, d) = alg.check(l, *state, now);
            *state = Some(s);
            admitted += u64::from(d.allowed());
        }
        admitted
    }

    #[test]
    fn fresh_bucket_spends_its_whole_capacity_at_once_then_refuses() {
        let l = limit(10, S, 10);
        let mut st = None;
        assert_eq!(admit(Algorithm::TokenBucket, &l, &mut st, 5 * S, 25), 10);
    }

    #[test]
    fn bucket_refills_one_token_per_interval() {
        let l = limit(10, S, 10);
        let mut st = None;
        admit(Algorithm::TokenBucket, &l, &mut st, 5 * S, 10);
        assert_eq!(admit(Algorithm::TokenBucket, &l, &mut st, 5 * S + 99 * MS, 1), 0);
        assert_eq!(admit(Algorithm::TokenBucket, &l, &mut st, 5 * S + 100 * MS, 2), 1);
        assert_eq!(admit(Algorithm::TokenBucket, &l, &mut st, 5 * S + 350 * MS, 5), 2);
    }

    #[test]
    fn burst_overrides_capacity_not_rate() {
        let l = limit(100, S, 20);
        let mut st = None;
        assert_eq!(admit(Algorithm::TokenBucket, &l, &mut st, S, 50), 20);
        // 100 per second sustained: 10 ms per token.
        assert_eq!(admit(Algorithm::TokenBucket, &l, &mut st, S + 100 * MS, 50), 10);
    }

    #[test]
    fn bucket_sustains_exactly_the_rate_over_a_long_run() {
        let l = limit(500, 10 * S, 500);
        let mut st = None;
        let mut admitted = 0;
        // 2 000 requests spread evenly over 10 s.
        for i in 0..2000u64 {
            admitted += admit(Algorithm::TokenBucket, &l, &mut st, S + i * 5 * MS, 1);
        }
        // 500 at once, plus 10 s * 50/s refill... minus the last interval not yet elapsed.
        assert_eq!(admitted, 500 + 499);
    }

    #[test]
    fn limited_decision_says_when_to_retry() {
        let l = limit(2, S, 2);
        let mut st = None;
        admit(Algorithm::TokenBucket, &l, &mut st, 0, 2);
        let (_, d) = token_bucket(&l, st, 200 * MS);
        assert_eq!(d, Decision::Limited { retry_after_ns: 300 * MS });
        let (_, ok) = token_bucket(&l, st, 500 * MS);
        assert!(ok.allowed());
    }

    #[test]
    fn allowed_decision_counts_remaining_and_reset() {
        let l = limit(10, 10 * S, 10);
        let (st, d) = token_bucket(&l, None, 0);
        assert_eq!(d, Decision::Allowed { remaining: 9, reset_ns: S });
        let (_, d) = token_bucket(&l, Some(st), 0);
        assert_eq!(d, Decision::Allowed { remaining: 8, reset_ns: 2 * S });
    }

    #[test]
    fn clock_going_backwards_counts_as_zero_elapsed() {
        let l = limit(1, S, 1);
        let (st, d) = token_bucket(&l, None, 10 * S);
        assert!(d.allowed());
        // An earlier reading from another worker: no refill, and no extra penalty either.
        let (st2, d) = token_bucket(&l, Some(st), 9 * S);
        assert_eq!(d, Decision::Limited { retry_after_ns: S });
        assert!(token_bucket(&l, Some(st2), 11 * S).1.allowed());

        let w = limit(1, S, 1);
        let (ws, _) = sliding_window(&w, None, 10 * S);
        let (ws2, d) = sliding_window(&w, Some(ws), 9 * S);
        assert!(!d.allowed());
        assert_eq!(ws2, ws, "an earlier clock neither rolls the window back nor counts");
    }

    #[test]
    fn sliding_window_counts_within_a_window() {
        let l = limit(5, S, 5);
        let mut st = None;
        assert_eq!(admit(Algorithm::SlidingWindow, &l, &mut st, 10 * S, 9), 5);
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let l = limit(10, S, 10);
        let mut st = None;
        assert_eq!(admit(Algorithm::SlidingWindow, &l, &mut st, 10 * S + 900 * MS, 10), 10);
        // 250 ms into the next window, 75% of the previous 10 still count: 2 more fit.
        assert_eq!(admit(Algorithm::SlidingWindow, &l, &mut st, 11 * S + 250 * MS, 5), 2);
        // Two windows later nothing is left of them.
        assert_eq!(admit(Algorithm::SlidingWindow, &l, &mut st, 13 * S, 20), 10);
    }

    #[test]
    fn sliding_window_retry_after_is_exact() {
        let l = limit(10, S, 10);
        let mut st = None;
        admit(Algorithm::SlidingWindow, &l, &mut st, 10 * S, 10);
        let (_, d) = sliding_window(&l, st, 10 * S + 500 * MS);
        let Decision::Limited { retry_after_ns } = d else { panic!("{d:?}") };
        // The window ends in 500 ms; then 10 weighted by (1 - e) must drop to 9: e = 100 ms.
        assert_eq!(retry_after_ns, 600 * MS);
        let at = 10 * S + 500 * MS + retry_after_ns;
        assert!(!sliding_window(&l, st, at - 1).1.allowed());
        assert!(sliding_window(&l, st, at).1.allowed());
    }

    #[test]
    fn state_round_trips_and_rejects_foreign_values() {
        for s in [State::Bucket { tat: 1, seen: 2 }, State::Window { start: 3, prev: 4, cur: 5, seen: 6 }] {
            assert_eq!(State::decode(&s.encode()), Some(s));
        }
        assert_eq!(State::decode(b""), None);
        assert_eq!(State::decode(&[1, 2, 3]), None);
        assert_eq!(State::decode(&[9; 17]), None);
    }

    #[test]
    fn odd_rates_never_exceed_the_limit() {
        // 3 per second does not divide a second evenly: the interval rounds up.
        let l = limit(3, S, 1);
        let mut st = None;
        let mut admitted = 0;
        for i in 0..1000u64 {
            admitted += admit(Algorithm::TokenBucket, &l, &mut st, i * MS, 1);
        }
        assert!(admitted <= 3, "{admitted}");
    }
}
