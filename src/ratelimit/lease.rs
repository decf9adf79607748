//! Leases: a worker's local share of a shared bucket, so a hot key does not cost a shared read and
//! write on every request.
//!
//! A worker that finds a token bucket with room takes several tokens in the one compare-and-swap
//! it makes anyway, and spends them locally on the requests that follow. A refused key stays
//! refused locally until its refill time. Neither changes what the limit admits:
//!
//! - **Never more than the limit.** A lease of `n` tokens taken at `t` is admitted at `t` (all
//!   `n` must conform then) and booked in the bucket as if its tokens arrived at `t + hold`, where
//!   `hold` is how long the lease may be spent: `tat' = max(tat, t + hold) + n * interval`. Spent
//!   at any time in `[t, t + hold)`, its tokens conform to the same limit a single exact bucket
//!   enforces (the bucket's debt always covers the tokens still held, so no refill is lost to the
//!   burst cap). [`take`] picks `hold` as the bucket's own debt before the lease (booking then
//!   costs nothing). A bucket with a burst of [`MIN_HOLD_BURST`] tokens or more holds at least
//!   1/[`MIN_HOLD_SHARE`] of its burst time, so a hot key far below a large limit leases too: a
//!   lease from such a full bucket holds back that share of the burst (under 0.4 %) for as long,
//!   the only price of leasing. A smaller bucket leases only out of its debt: a flood on it gets
//!   exactly its burst.
//! - **What a lease can strand.** Tokens not spent before the lease ends are lost to everyone
//!   until the bucket refills. A lease is at most an eighth of what the bucket holds and at most
//!   [`MAX_LEASE`], and grows only while this worker spends whole leases in time (it starts at one
//!   token, doubles while used up, and falls back to what was used), so a key that is not hot on a
//!   worker leases nothing there. A nearly empty bucket leases one token at a time.
//! - **Refusals.** When no token is left until `t + retry_after`, no other worker can create one
//!   sooner: refusing locally until then is what the shared bucket would say.
//!
//! Sliding windows take one token per request (the refusal memo applies to them too).
//!
//! The table of leases is per worker and bounded ([`MAX_LOCAL`]): when full, ended entries go
//! first, then everything (a lost lease only strands its tokens).

use std::collections::HashMap;

use super::algorithm::{Algorithm, Decision, Gcra, Limit, State};

/// The most tokens one lease takes.
pub const MAX_LEASE: u64 = 64;
/// A lease may hold at most this share of what the bucket holds (1/8).
pub const LEVEL_SHARE: u64 = 8;
/// A lease from a bucket of at least [`MIN_HOLD_BURST`] tokens is held for at least 1/256 of the
/// bucket's burst time.
pub const MIN_HOLD_SHARE: u64 = 256;
/// The smallest burst whose leases may hold back a share of it (64 tokens, one whole lease):
/// smaller buckets lease only out of their own debt, so a flood gets exactly the burst.
pub const MIN_HOLD_BURST: u64 = MIN_HOLD_SHARE * MAX_LEASE;
/// Entries a worker's table keeps.
pub const MAX_LOCAL: usize = 4096;

/// What a take from the shared bucket granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The verdict for the request that asked.
    pub decision: Decision,
    /// Tokens granted beyond the one the request spent.
    pub extra: u64,
    /// Until when (exclusive, ns) the extra tokens may be spent.
    pub until: u64,
    /// The bucket's theoretical arrival time after the take (for the RateLimit fields of
    /// requests that spend the lease).
    pub tat: u64,
}

/// Takes up to `want` tokens (at least one) from a token bucket at `now`; for a sliding window,
/// one. The state is what to store when the request was admitted.
pub fn take(algorithm: Algorithm, limit: &Limit, state: Option<State>, now: u64, want: u64) -> (State, Grant) {
    if algorithm != Algorithm::TokenBucket {
        let (next, decision) = algorithm.check(limit, state, now);
        return (next, Grant { decision, extra: 0, until: now, tat: 0 });
    }
    let Gcra { interval, tolerance, now, start, ahead: debt, .. } = Gcra::of(limit, state, now);
    let burst_time = interval.saturating_mul(limit.burst.max(1));
    let least = if limit.burst >= MIN_HOLD_BURST { burst_time / MIN_HOLD_SHARE } else { 0 };
    let hold = debt.max(least);
    let until = now.saturating_add(hold);
    // Tokens that conform right now, and the lease: an eighth of them, at most `want`.
    let room = if debt > tolerance { 0 } else { (tolerance - debt) / interval + 1 };
    let n = if hold == 0 { 1 } else { want.min(MAX_LEASE).min(room / LEVEL_SHARE).max(1) };
    if n <= 1 {
        // One token (or none): the plain bucket. `until` still says how long a lease would have
        // lasted, so the next request knows whether this key is hot here.
        let (next, decision) = super::algorithm::token_bucket(limit, state, now);
        let tat = match next {
            State::Bucket { tat, .. } => tat,
            State::Window { .. } => 0,
        };
        return (next, Grant { decision, extra: 0, until, tat });
    }
    let booked = start.max(until).saturating_add(interval.saturating_mul(n));
    let used = booked - now;
    let remaining = tolerance.saturating_add(interval).saturating_sub(used) / interval + (n - 1);
    let decision = Decision::Allowed { remaining, reset_ns: used };
    (State::Bucket { tat: booked, seen: now }, Grant { decision, extra: n - 1, until, tat: booked })
}

/// One key's local state on this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// A lease: `left` of `size` tokens still to spend until `until`; `tat` as booked.
    Lease { left: u64, size: u64, until: u64, tat: u64 },
    /// The bucket has no token for this key before `until`.
    Refused { until: u64 },
}

/// A worker's leases and refusals, keyed by (rule, key fingerprint).
#[derive(Debug, Default)]
pub struct Leases {
    entries: HashMap<(u32, u64), Entry>,
}

impl Leases {
    /// An empty table.
    pub fn new() -> Leases {
        Leases::default()
    }

    /// Entries held (at most [`MAX_LOCAL`]).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The verdict this worker can give alone: a leased token, or a refusal still in force.
    /// `None`: ask the shared bucket, for [`Leases::want`] tokens.
    pub fn local(&mut self, rule: u32, fingerprint: u64, limit: &Limit, now: u64) -> Option<Decision> {
        match self.entries.get_mut(&(rule, fingerprint))? {
            Entry::Lease { left, until, tat, .. } if *left > 0 && now < *until => {
                *left -= 1;
                let interval = limit.interval_ns();
                let tolerance = interval.saturating_mul(limit.burst.max(1) - 1);
                // The bucket as if the tokens still held were never taken.
                let used = tat.saturating_sub(interval.saturating_mul(*left)).saturating_sub(now).max(interval);
                let remaining = tolerance.saturating_add(interval).saturating_sub(used) / interval;
                Some(Decision::Allowed { remaining: remaining.min(limit.burst.max(1) - 1), reset_ns: used })
            }
            Entry::Refused { until } if now < *until => Some(Decision::Limited { retry_after_ns: *until - now }),
            _ => None,
        }
    }

    /// How many tokens to ask the shared bucket for: twice the last lease when it was used up
    /// before it ended, what was used of it when it ended with tokens left, one otherwise.
    pub fn want(&self, rule: u32, fingerprint: u64, now: u64) -> u64 {
        match self.entries.get(&(rule, fingerprint)) {
            Some(Entry::Lease { left: 0, size, until, .. }) if now < *until => size.saturating_mul(2).min(MAX_LEASE),
            Some(Entry::Lease { left, size, .. }) => size.saturating_sub(*left).max(1),
            _ => 1,
        }
    }

    /// Records what the shared bucket said to a request of this key.
    pub fn record(&mut self, rule: u32, fingerprint: u64, grant: &Grant, now: u64) {
        let entry = match grant.decision {
            Decision::Allowed { .. } => {
                Entry::Lease { left: grant.extra, size: grant.extra + 1, until: grant.until, tat: grant.tat }
            }
            Decision::Limited { retry_after_ns } => Entry::Refused { until: now.saturating_add(retry_after_ns) },
        };
        if self.entries.len() >= MAX_LOCAL && !self.entries.contains_key(&(rule, fingerprint)) {
            self.entries.retain(|_, e| match e {
                Entry::Lease { left, until, .. } => *left > 0 && now < *until,
                Entry::Refused { until } => now < *until,
            });
            if self.entries.len() >= MAX_LOCAL {
                self.entries.clear();
            }
        }
        self.entries.insert((rule, fingerprint), entry);
    }

    /// Settles a request that asked the shared bucket: records its grant, or, when the shared
    /// state could not be used (`None`: a full table, lost races), forgets the key, since nothing
    /// local may outlive that.
    pub fn settle(&mut self, rule: u32, fingerprint: u64, grant: Option<&Grant>, now: u64) {
        match grant {
            Some(g) => self.record(rule, fingerprint, g, now),
            None => {
                self.entries.remove(&(rule, fingerprint));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    fn limit(requests: u64, period_ns: u64, burst: u64) -> Limit {
        Limit { requests, period_ns, burst }
    }

    /// Workers sharing one bucket, each with its own table; returns the admission times and how
    /// many times the shared bucket was asked.
    fn run(l: &Limit, arrivals: &[(usize, u64)], workers: usize) -> (Vec<u64>, u64) {
        let mut shared: Option<State> = None;
        let mut tables: Vec<Leases> = (0..workers).map(|_| Leases::new()).collect();
        let mut admitted = Vec::new();
        let mut asked = 0;
        for &(w, now) in arrivals {
            let t = &mut tables[w];
            let d = match t.local(0, 7, l, now) {
                Some(d) => d,
                None => {
                    asked += 1;
                    let (next, grant) = take(Algorithm::TokenBucket, l, shared, now, t.want(0, 7, now));
                    if grant.decision.allowed() {
                        shared = Some(next);
                    }
                    t.record(0, 7, &grant, now);
                    grant.decision
                }
            };
            if d.allowed() {
                admitted.push(now);
            }
        }
        (admitted, asked)
    }

    /// The admissions conform to the limit one exact bucket enforces: run in time order through
    /// one GCRA (equivalently: for every pair, the later is at least
    /// `(j - i) * interval - tolerance` after the earlier), each must conform.
    fn conforms(l: &Limit, admitted: &[u64]) -> Result<(), String> {
        let mut a = admitted.to_vec();
        a.sort_unstable();
        let interval = l.interval_ns();
        let tolerance = interval * (l.burst - 1);
        let mut tat = 0u64;
        for (i, &t) in a.iter().enumerate() {
            if tat > t + tolerance {
                return Err(format!(
                    "admission {i} at {t} ns: an exact bucket would refuse it for {} ns",
                    tat - t - tolerance
                ));
            }
            tat = tat.max(t) + interval;
        }
        Ok(())
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn leased_admissions_never_exceed_what_one_exact_bucket_admits() {
        for seed in 1..40u64 {
            let mut r = rng(seed);
            let requests = 20 + r() % 200;
            let l = limit(requests, S, requests / (1 + r() % 3) + 1);
            let workers = 1 + (r() % 4) as usize;
            let mut now = 0;
            let mut arrivals = Vec::new();
            for _ in 0..3_000 {
                // Floods, lulls and everything in between.
                now += match r() % 10 {
                    0 => r() % (200 * MS),
                    1..=3 => r() % (5 * MS),
                    _ => r() % (100_000),
                };
                arrivals.push(((r() % workers as u64) as usize, now));
            }
            let (admitted, _) = run(&l, &arrivals, workers);
            conforms(&l, &admitted).unwrap_or_else(|e| panic!("seed {seed}, {workers} workers, {l:?}: {e}"));
        }
    }

    #[test]
    fn tokens_held_to_the_end_of_a_lease_still_count_against_a_flood_from_another_worker() {
        // Burst 100,000, one token every 10 us: a lease from a full bucket is held 3.9 ms.
        let l = limit(100_000, S, 100_000);
        let mut arrivals: Vec<(usize, u64)> = (0..64u64).map(|i| (0, i * 10)).collect();
        // Worker 1 floods once the bucket looks full again; worker 0 spends what it holds late.
        arrivals.extend((0..110_000u64).map(|i| (1, 2 * MS + i * 10)));
        arrivals.extend((0..63u64).map(|i| (0, 3 * MS + 1 + i * 10)));
        arrivals.sort_by_key(|&(_, t)| t);
        let (admitted, _) = run(&l, &arrivals, 2);
        conforms(&l, &admitted).unwrap();
    }

    #[test]
    fn a_hot_key_asks_the_shared_bucket_for_a_fraction_of_its_requests() {
        let l = limit(1_000_000, S, 1_000_000);
        // 10,000 requests per second on each of two workers, far below the limit.
        let arrivals: Vec<(usize, u64)> = (0..20_000u64).map(|i| ((i % 2) as usize, i * 50_000)).collect();
        let (admitted, asked) = run(&l, &arrivals, 2);
        assert_eq!(admitted.len(), 20_000, "below the limit everything is admitted");
        assert!(asked * 4 < 20_000, "asked the shared bucket {asked} times for 20,000 requests");
    }

    #[test]
    fn a_key_below_its_limit_on_several_workers_is_never_refused_for_stranded_tokens() {
        // 100 per second, burst 100; the key sends 90 per second spread over four workers.
        let l = limit(100, S, 100);
        let arrivals: Vec<(usize, u64)> = (0..900u64).map(|i| ((i % 4) as usize, i * (S / 90))).collect();
        let (admitted, _) = run(&l, &arrivals, 4);
        assert_eq!(admitted.len(), 900);
    }

    #[test]
    fn a_flood_on_a_fresh_small_bucket_gets_exactly_its_burst() {
        let l = limit(500, 24 * 3600 * S, 500);
        let arrivals: Vec<(usize, u64)> = (0..2_000u64).map(|i| ((i % 2) as usize, i * MS)).collect();
        let (admitted, asked) = run(&l, &arrivals, 2);
        assert_eq!(admitted.len(), 500);
        assert!(asked < 1_600, "asked {asked} times");
    }

    #[test]
    fn a_flood_on_a_fresh_large_bucket_loses_at_most_the_held_share() {
        let l = limit(100_000, 24 * 3600 * S, 100_000);
        let arrivals: Vec<(usize, u64)> = (0..120_000u64).map(|i| ((i % 2) as usize, i * 1_000)).collect();
        let (admitted, asked) = run(&l, &arrivals, 2);
        let least = 100_000 - 100_000 / MIN_HOLD_SHARE - 2 * MAX_LEASE;
        assert!((least as usize..=100_000).contains(&admitted.len()), "admitted {}", admitted.len());
        assert!(asked < 10_000, "asked {asked} times");
    }

    #[test]
    fn a_refused_key_is_refused_locally_until_its_refill_time() {
        let l = limit(1, 10 * S, 1);
        let mut t = Leases::new();
        let (state, g) = take(Algorithm::TokenBucket, &l, None, 0, t.want(0, 1, 0));
        assert!(g.decision.allowed());
        t.record(0, 1, &g, 0);
        let (_, refused) = take(Algorithm::TokenBucket, &l, Some(state), S, t.want(0, 1, S));
        assert_eq!(refused.decision, Decision::Limited { retry_after_ns: 9 * S });
        t.record(0, 1, &refused, S);
        assert_eq!(t.local(0, 1, &l, 5 * S), Some(Decision::Limited { retry_after_ns: 5 * S }));
        assert_eq!(t.local(0, 1, &l, 10 * S), None, "at the refill time the shared bucket is asked again");
        assert_eq!(t.local(1, 1, &l, 5 * S), None, "another rule's memo is its own");
    }

    #[test]
    fn a_nearly_empty_bucket_leases_one_token_at_a_time() {
        let l = limit(100, S, 100);
        // 95 tokens gone: 5 conform, an eighth of that is under one.
        let state = State::Bucket { tat: 95 * (S / 100), seen: 0 };
        let (_, g) = take(Algorithm::TokenBucket, &l, Some(state), 0, 64);
        assert!(g.decision.allowed());
        assert_eq!(g.extra, 0);
    }

    #[test]
    fn sliding_windows_take_one_token_per_request() {
        let l = limit(100, S, 100);
        let (_, g) = take(Algorithm::SlidingWindow, &l, None, 0, 64);
        assert!(g.decision.allowed());
        assert_eq!(g.extra, 0);
    }

    #[test]
    fn the_table_stays_bounded_whatever_the_number_of_keys() {
        let l = limit(10, S, 10);
        let mut t = Leases::new();
        for k in 0..(MAX_LOCAL as u64 * 3) {
            let (_, g) = take(Algorithm::TokenBucket, &l, None, k, 1);
            t.record(0, k, &g, k);
            assert!(t.len() <= MAX_LOCAL);
        }
    }

    #[test]
    fn spending_a_lease_reports_what_the_client_may_still_send() {
        let l = limit(1_000, S, 1_000);
        let mut t = Leases::new();
        // 100 tokens spent already: 900 left, a lease of 8 takes them to 892.
        let state = State::Bucket { tat: 100 * MS, seen: 0 };
        let (_, g) = take(Algorithm::TokenBucket, &l, Some(state), 0, 8);
        assert_eq!(g.extra, 7);
        t.record(0, 1, &g, 0);
        let Some(Decision::Allowed { remaining, .. }) = t.local(0, 1, &l, 1) else { panic!("no lease") };
        assert_eq!(remaining, 898, "1,000 less the 100 spent before and the two spent from the lease");
    }
}
