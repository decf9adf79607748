//! One cluster's limit and requests in flight, as every worker shares them.

use super::config::{Class, ConcurrencyConfig};

/// The verdict at request time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it; it is counted in flight until [`Limiter::end`].
    Admit,
    /// Refuse it: its class's share of `limit` is in flight.
    Refuse { limit: u32, in_flight: u32 },
}

/// One cluster's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limiter {
    /// The current limit on requests in flight.
    pub limit: u32,
    /// Requests admitted and not yet ended, over every worker.
    pub in_flight: u32,
    /// The window: when it started (0: not yet), the latencies that ended in it (sum and count),
    /// and the most requests in flight it saw.
    pub window_start: u64,
    pub window_sum_ns: u64,
    pub window_count: u32,
    pub window_peak: u32,
    /// In this window an admission filled its class's room: the limit is what held it back.
    pub window_full: bool,
    /// The no-load latency: the lowest window average seen, let drift up by 1/256 a window so
    /// that a backend that became slower for good is not held to its old speed (0: none yet).
    pub baseline_ns: u64,
    /// Since when nothing ended while requests were in flight (see `stale_after`).
    pub quiet_since: u64,
}

/// The latency sample a finished request gives, from the `response.code_details` of its answer
/// and the time from the request to the response headers: only the upstream's own answers
/// (`via_upstream`, or a host that reports no details) measure it. Envoy's local replies (a
/// refused connection, an overflow, no healthy host) are fast and would teach a no-load latency
/// the upstream never has.
pub fn latency_sample(details: &str, elapsed_ns: u64) -> Option<u64> {
    (details.is_empty() || details == "via_upstream").then_some(elapsed_ns)
}

impl Limiter {
    /// A cluster's first state.
    pub fn new(config: &ConcurrencyConfig) -> Limiter {
        Limiter {
            limit: config.initial,
            in_flight: 0,
            window_start: 0,
            window_sum_ns: 0,
            window_count: 0,
            window_peak: 0,
            window_full: false,
            baseline_ns: 0,
            quiet_since: 0,
        }
    }

    /// How many requests of `class` may be in flight: the whole limit for a class with the whole
    /// share; for the others their share rounded down, at least one, and always one less than the
    /// limit, so that the highest class keeps a slot of its own (with a limit of one, every class
    /// shares the one slot).
    pub fn room(&self, config: &ConcurrencyConfig, class: Class) -> u32 {
        let limit = self.limit.max(1);
        let share = config.share(class);
        if share >= 1.0 || limit == 1 {
            return limit;
        }
        ((f64::from(limit) * share) as u32).clamp(1, limit - 1)
    }

    /// Admits a request of `class`, or refuses it.
    pub fn admit(&mut self, config: &ConcurrencyConfig, class: Class, now: u64) -> Admission {
        // A limit stored under other bounds (the configuration changed) follows the new ones.
        self.limit = self.limit.clamp(config.min, config.max);
        if self.in_flight > 0 && now.saturating_sub(self.quiet_since) >= config.stale_ns {
            // Nothing ended for `stale_after` with requests counted: the counts belonged to a
            // worker that went away (or requests longer than the setting); start again.
            self.in_flight = 0;
        }
        if self.in_flight >= self.room(config, class) {
            return Admission::Refuse { limit: self.limit, in_flight: self.in_flight };
        }
        if self.in_flight == 0 {
            self.quiet_since = now;
        }
        self.in_flight += 1;
        self.window_peak = self.window_peak.max(self.in_flight);
        if self.in_flight >= self.room(config, class) {
            self.window_full = true;
        }
        if self.window_start == 0 {
            self.window_start = now;
        }
        Admission::Admit
    }

    /// A request admitted earlier ended; `latency_ns` is its time to the response headers when
    /// the upstream answered (`None`: no answer, or a reply of Envoy's own). Returns the limit's
    /// change `(old, new)` when this ended a window that moved it.
    pub fn end(&mut self, config: &ConcurrencyConfig, latency_ns: Option<u64>, now: u64) -> Option<(u32, u32)> {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.quiet_since = now;
        if let Some(l) = latency_ns {
            self.window_sum_ns = self.window_sum_ns.saturating_add(l);
            self.window_count = self.window_count.saturating_add(1);
        }
        self.evaluate(config, now)
    }

    /// At the end of a window: AIMD on its average latency against the target.
    fn evaluate(&mut self, config: &ConcurrencyConfig, now: u64) -> Option<(u32, u32)> {
        if self.window_start == 0 {
            self.window_start = now;
            return None;
        }
        if now < self.window_start.saturating_add(config.window_ns) {
            return None;
        }
        let old = self.limit;
        if self.window_count > 0 {
            let average = self.window_sum_ns / u64::from(self.window_count);
            self.baseline_ns = match self.baseline_ns {
                0 => average,
                b => average.min(b.saturating_add(b / 256 + 1)),
            };
            let target = config.target_ns.unwrap_or((self.baseline_ns as f64 * config.tolerance) as u64);
            if average > target {
                self.limit = ((f64::from(self.limit) * config.backoff) as u32).max(config.min);
            } else if self.window_full {
                // The limit was what held the window back: try more.
                self.limit = self.limit.saturating_add(1 + self.limit / 16).min(config.max);
            }
        }
        self.window_start = now;
        self.window_sum_ns = 0;
        self.window_count = 0;
        self.window_peak = self.in_flight;
        self.window_full = false;
        self.limit = self.limit.clamp(config.min, config.max);
        (self.limit != old).then_some((old, self.limit))
    }

    /// Serialises for the cross-worker store: a format byte, then fixed little-endian fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED);
        out.push(1);
        for v in [self.limit, self.in_flight, self.window_count, self.window_peak] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.window_start, self.window_sum_ns, self.baseline_ns, self.quiet_since] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(u8::from(self.window_full));
        out
    }

    /// Parses [`Limiter::encode`]'s output; `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<Limiter> {
        if b.len() != ENCODED || b.first() != Some(&1) {
            return None;
        }
        let u32_at = |i: usize| b.get(i..i + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes);
        let u64_at = |i: usize| b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        Some(Limiter {
            limit: u32_at(1)?,
            in_flight: u32_at(5)?,
            window_count: u32_at(9)?,
            window_peak: u32_at(13)?,
            window_start: u64_at(17)?,
            window_sum_ns: u64_at(25)?,
            baseline_ns: u64_at(33)?,
            quiet_since: u64_at(41)?,
            window_full: *b.get(49)? == 1,
        })
    }
}

const ENCODED: usize = 1 + 4 * 4 + 8 * 4 + 1;

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    fn config(json: &str) -> ConcurrencyConfig {
        ConcurrencyConfig::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn each_class_fills_only_its_share_and_critical_takes_the_last_slot() {
        let c = config(r#"{"limit": {"initial": 4, "min": 4, "max": 4}, "classes": [{"class": "low", "match": {}}]}"#);
        let mut l = Limiter::new(&c);
        assert_eq!(l.admit(&c, Class::Low, S), Admission::Admit);
        assert_eq!(l.admit(&c, Class::Low, S), Admission::Admit);
        assert_eq!(l.admit(&c, Class::Low, S), Admission::Refuse { limit: 4, in_flight: 2 }, "low: half of 4");
        assert_eq!(l.admit(&c, Class::Normal, S), Admission::Admit, "normal: 3 of 4");
        assert_eq!(l.admit(&c, Class::Normal, S), Admission::Refuse { limit: 4, in_flight: 3 });
        assert_eq!(l.admit(&c, Class::Critical, S), Admission::Admit);
        assert_eq!(l.admit(&c, Class::Critical, S), Admission::Refuse { limit: 4, in_flight: 4 });
        l.end(&c, Some(10 * MS), S);
        assert_eq!(l.admit(&c, Class::Critical, S), Admission::Admit, "an ended request frees its slot");
    }

    /// One window of `in_flight` requests admitted at `start` (windows back to back: each starts
    /// where the last one was evaluated) that all take `latency`.
    fn window(l: &mut Limiter, c: &ConcurrencyConfig, start: u64, in_flight: u32, latency: u64) -> Option<(u32, u32)> {
        for _ in 0..in_flight {
            l.admit(c, Class::Critical, start);
        }
        let mut change = None;
        for i in 0..in_flight {
            // The last end falls past the window: it evaluates the window.
            let at = if i + 1 == in_flight { start + c.window_ns } else { start + 1 };
            change = l.end(c, Some(latency), at).or(change);
        }
        change
    }

    #[test]
    fn latency_over_the_target_backs_off_and_under_it_the_used_limit_grows() {
        let c = config(r#"{"limit": {"initial": 20, "min": 2, "max": 100}, "latency": {"tolerance": 2}}"#);
        let mut l = Limiter::new(&c);
        // The first window sets the no-load latency, 10 ms; the limit was used, so it grows.
        assert_eq!(window(&mut l, &c, S, 20, 10 * MS), Some((20, 22)));
        assert_eq!(l.baseline_ns, 10 * MS);
        // Latency tripled: over twice the baseline, so the limit backs off by 0.9.
        assert_eq!(window(&mut l, &c, 2 * S, 20, 30 * MS), Some((22, 19)));
        assert_eq!(window(&mut l, &c, 3 * S, 19, 30 * MS), Some((19, 17)));
        // Back under the target with the limit used: it grows again.
        assert_eq!(window(&mut l, &c, 4 * S, 17, 12 * MS), Some((17, 19)));
        // Under the target but the limit not used: it stays.
        assert_eq!(window(&mut l, &c, 5 * S, 3, 12 * MS), None);
    }

    #[test]
    fn the_limit_stays_within_its_bounds() {
        let c = config(r#"{"limit": {"initial": 3, "min": 3, "max": 4}, "latency": {"target": "5ms"}}"#);
        let mut l = Limiter::new(&c);
        for k in 0..10 {
            let n = l.limit;
            window(&mut l, &c, (k + 1) * S, n, 50 * MS);
            assert_eq!(l.limit, 3, "never under min");
        }
        for k in 10..20 {
            let n = l.limit;
            window(&mut l, &c, (k + 1) * S, n, MS);
            assert!(l.limit <= 4, "never over max");
        }
        assert_eq!(l.limit, 4);
    }

    #[test]
    fn counts_left_by_a_worker_that_went_away_are_forgotten_after_stale_after() {
        let c = config(r#"{"limit": {"initial": 2, "min": 2, "max": 2}, "stale_after": "1m"}"#);
        let mut l = Limiter::new(&c);
        l.admit(&c, Class::Critical, S);
        l.admit(&c, Class::Critical, S);
        assert!(matches!(l.admit(&c, Class::Critical, 30 * S), Admission::Refuse { .. }));
        assert_eq!(l.admit(&c, Class::Critical, 61 * S), Admission::Admit);
        assert_eq!(l.in_flight, 1);
    }

    #[test]
    fn the_state_round_trips_and_garbage_does_not_decode() {
        let c = config("{}");
        let mut l = Limiter::new(&c);
        l.admit(&c, Class::Normal, 5 * S);
        l.end(&c, Some(7 * MS), 5 * S + 1);
        assert_eq!(Limiter::decode(&l.encode()), Some(l));
        assert_eq!(Limiter::decode(b"\x01short"), None);
        let mut wrong = l.encode();
        wrong[0] = 9;
        assert_eq!(Limiter::decode(&wrong), None);
    }

    #[test]
    fn the_limit_grows_for_a_class_that_fills_its_share() {
        // Every request `normal` (share 0.75): the window is full when normal's room is, and the
        // limit grows back after a spike.
        let c = config(
            r#"{"limit": {"initial": 20, "min": 2, "max": 100}, "latency": {"target": "50ms"},
                "classes": [{"class": "low", "match": {"path_prefix": "/batch"}}]}"#,
        );
        let mut l = Limiter::new(&c);
        let mut start = S;
        for _ in 0..3 {
            let room = l.room(&c, Class::Normal);
            for _ in 0..room {
                assert_eq!(l.admit(&c, Class::Normal, start), Admission::Admit);
            }
            assert!(matches!(l.admit(&c, Class::Normal, start), Admission::Refuse { .. }));
            for i in 0..room {
                l.end(&c, Some(10 * MS), if i + 1 == room { start + c.window_ns } else { start + 1 });
            }
            start += c.window_ns;
        }
        assert!(l.limit > 20, "grew: {}", l.limit);
    }

    #[test]
    fn the_highest_class_keeps_a_slot_and_a_changed_configuration_clamps_the_limit() {
        let c = config(r#"{"limit": {"initial": 5, "min": 5, "max": 5}, "classes": [{"class": "low", "match": {}}]}"#);
        let l = Limiter::new(&c);
        let unclassified = config(r#"{"limit": {"initial": 5, "min": 5, "max": 5}}"#);
        assert_eq!(l.room(&unclassified, Class::Normal), 5, "without rules priorities mean nothing");
        assert_eq!((l.room(&c, Class::Critical), l.room(&c, Class::High), l.room(&c, Class::Low)), (5, 4, 2));
        let narrower = config(r#"{"limit": {"initial": 2, "min": 1, "max": 3}}"#);
        let mut l = Limiter { limit: 1000, ..Limiter::new(&narrower) };
        l.admit(&narrower, Class::Critical, S);
        assert_eq!(l.limit, 3);
    }

    #[test]
    fn only_the_upstreams_own_answers_are_latency_samples() {
        assert_eq!(latency_sample("via_upstream", 7), Some(7));
        assert_eq!(latency_sample("", 7), Some(7));
        assert_eq!(latency_sample("upstream_reset_before_response_started{connection_failure}", 7), None);
        assert_eq!(latency_sample("no_healthy_upstream", 7), None);
    }
}
