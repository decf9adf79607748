//! Token budgets: N tokens per period per key, reserved at admission and settled after the
//! response (a debt model).
//!
//! A request's cost is only known once the provider reports usage, at the end of the response.
//! Each key has a balance that refills at `tokens / period` up to `tokens`; a request is
//! admitted while the balance is not negative, and its usage is subtracted when the response
//! ends, which may take the balance below zero. The key is then refused until the refill brings
//! it back to zero: spending more than the budget delays the next request by exactly the
//! overdraft.
//!
//! Charging only at the end would let N concurrent requests of one key all pass a balance that
//! has room for one. So admission also **reserves** an estimate of the request's cost (the
//! client's `max_tokens`, else a configured default, at most the budget's size): the balance
//! drops by it at once, and a concurrent request meets what is left. At the end the reservation is given back and the usage charged
//! ([`Balance::settle`]); a request that failed gives back all of it. A reservation that is
//! never settled (a worker gone mid-request) is ordinary debt that the refill repays.
//!
//! A balance is one shared-data value of 17 bytes, updated with compare-and-swap, so the
//! reservation and the charge are exact across workers.

/// A budget's size and refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRate {
    /// Tokens per period, and the most a balance holds (> 0).
    pub tokens: u64,
    /// The period in nanoseconds (> 0).
    pub period_ns: u64,
}

impl TokenRate {
    /// What a request estimated to use `estimate` tokens reserves: the estimate, at most the
    /// budget's size (a request is never refused for asking more than the budget holds).
    pub fn reservation(&self, estimate: u64) -> u64 {
        estimate.min(self.tokens)
    }

    fn cap(&self) -> i64 {
        i64::try_from(self.tokens).unwrap_or(i64::MAX).max(1)
    }

    /// Nanoseconds the refill takes to add `tokens` (rounded up).
    fn ns_for(&self, tokens: u64) -> u64 {
        let ns = u128::from(tokens) * u128::from(self.period_ns);
        u64::try_from(ns.div_ceil(u128::from(self.tokens.max(1)))).unwrap_or(u64::MAX)
    }
}

/// What the admission check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted; `remaining` tokens are left (before this request's charge).
    Admit { remaining: u64 },
    /// Refused until the balance is back to zero, in `retry_after_ns`.
    Refuse { retry_after_ns: u64 },
}

impl Admission {
    /// The admission of a budget whose balance could not be read or reserved (its key table full,
    /// or the store contended): the budget fails open for this request, as if untouched (`tokens`
    /// remaining, the budget's whole rate), and nothing is reserved.
    pub fn unmetered(tokens: u64) -> Admission {
        Admission::Admit { remaining: tokens }
    }

    /// Combines this budget's admission with those of the budgets before it: `Ok` with the least
    /// remaining over every admitting budget (what the client is told), or `Err` with the wait of
    /// the first refusing one (the request is refused; the reservations before it go back).
    pub fn combine(self, so_far: Option<u64>) -> Result<Option<u64>, u64> {
        match self {
            Admission::Admit { remaining } => Ok(Some(so_far.map_or(remaining, |r| r.min(remaining)))),
            Admission::Refuse { retry_after_ns } => Err(retry_after_ns),
        }
    }
}

/// One key's balance as stored: `tokens` (may be negative) as of time `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    pub tokens: i64,
    /// The time up to which refill has been added (ns). Refill between `at` and now is added
    /// on read; the fraction of a token not yet whole stays in the gap.
    pub at: u64,
}

impl Balance {
    /// The balance at `now` of a stored one (`None`: a fresh key, full).
    pub fn at_time(stored: Option<Balance>, rate: &TokenRate, now: u64) -> Balance {
        let cap = rate.cap();
        let Some(b) = stored else { return Balance { tokens: cap, at: now } };
        if b.tokens >= cap {
            return Balance { tokens: cap, at: now.max(b.at) };
        }
        let elapsed = now.saturating_sub(b.at);
        let gained = u128::from(elapsed) * u128::from(rate.tokens) / u128::from(rate.period_ns.max(1));
        let gained = i64::try_from(gained).unwrap_or(i64::MAX);
        if gained == 0 {
            return b;
        }
        let tokens = b.tokens.saturating_add(gained);
        if tokens >= cap {
            return Balance { tokens: cap, at: now };
        }
        // Advance by the time those whole tokens took, keeping the remainder for later.
        let used = u128::try_from(gained).unwrap_or(0) * u128::from(rate.period_ns) / u128::from(rate.tokens.max(1));
        Balance { tokens, at: b.at.saturating_add(u64::try_from(used).unwrap_or(u64::MAX)) }
    }

    /// True when the stored balance is full again at `now`: a fresh key's balance, so its slot
    /// may pass to another key ([`crate::slots`]).
    pub fn at_rest(stored: Balance, rate: &TokenRate, now: u64) -> bool {
        Balance::at_time(Some(stored), rate, now).tokens >= rate.cap()
    }

    /// Admits while the balance is not negative; otherwise says when it will be zero again.
    pub fn admission(&self, rate: &TokenRate, now: u64) -> Admission {
        if self.tokens >= 0 {
            return Admission::Admit { remaining: u64::try_from(self.tokens).unwrap_or(0) };
        }
        let owed = self.tokens.unsigned_abs();
        let accrued = now.saturating_sub(self.at);
        Admission::Refuse { retry_after_ns: rate.ns_for(owed).saturating_sub(accrued).max(1) }
    }

    /// Admission of a request that reserves `reserve` tokens: admitted while the balance is not
    /// negative, as always; then the balance with the reservation taken (`None` when refused,
    /// or when nothing is reserved).
    pub fn reserve(self, rate: &TokenRate, now: u64, reserve: u64) -> (Admission, Option<Balance>) {
        let admission = self.admission(rate, now);
        let taken = matches!(admission, Admission::Admit { .. }) && reserve > 0;
        (admission, taken.then(|| self.charge(reserve)))
    }

    /// The balance once a request that reserved `reserved` tokens reports `used`: the
    /// reservation given back, the usage charged, never above the budget (what refilled while
    /// the reservation was out counts up to the cap, as it always does).
    pub fn settle(self, rate: &TokenRate, reserved: u64, used: u64) -> Balance {
        let back = i64::try_from(reserved).unwrap_or(i64::MAX);
        let cost = i64::try_from(used).unwrap_or(i64::MAX);
        let tokens = self.tokens.saturating_add(back).saturating_sub(cost).min(rate.cap());
        Balance { tokens, at: self.at }
    }

    /// The balance after a request that used `tokens`.
    pub fn charge(self, tokens: u64) -> Balance {
        Balance { tokens: self.tokens.saturating_sub(i64::try_from(tokens).unwrap_or(i64::MAX)), at: self.at }
    }

    /// 17 bytes: a version byte, then the tokens and the time, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        out.push(1);
        out.extend_from_slice(&self.tokens.to_le_bytes());
        out.extend_from_slice(&self.at.to_le_bytes());
        out
    }

    /// Parses [`Balance::encode`]'s output.
    pub fn decode(b: &[u8]) -> Option<Balance> {
        if b.len() != 17 || b[0] != 1 {
            return None;
        }
        Some(Balance {
            tokens: i64::from_le_bytes(b[1..9].try_into().ok()?),
            at: u64::from_le_bytes(b[9..17].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const RATE: TokenRate = TokenRate { tokens: 100, period_ns: 100 * S };

    #[test]
    fn a_fresh_key_is_full_and_debt_refuses_until_repaid() {
        let b = Balance::at_time(None, &RATE, 0);
        assert_eq!(b.admission(&RATE, 0), Admission::Admit { remaining: 100 });
        let b = b.charge(70).charge(50);
        assert_eq!(b.tokens, -20);
        assert_eq!(b.admission(&RATE, 0), Admission::Refuse { retry_after_ns: 20 * S });
        let later = Balance::at_time(Some(b), &RATE, 19 * S + S / 2);
        assert_eq!(later.tokens, -1);
        assert_eq!(later.admission(&RATE, 19 * S + S / 2), Admission::Refuse { retry_after_ns: S / 2 });
        let repaid = Balance::at_time(Some(b), &RATE, 20 * S);
        assert_eq!(repaid.admission(&RATE, 20 * S), Admission::Admit { remaining: 0 }, "zero is not negative");
    }

    #[test]
    fn refill_stops_at_the_budget_and_keeps_fractions() {
        let b = Balance { tokens: 0, at: 0 };
        assert_eq!(Balance::at_time(Some(b), &RATE, 1000 * S).tokens, 100);
        // Many reads a third of a token apart lose nothing.
        let mut cur = b;
        let mut now = 0;
        for _ in 0..30 {
            now += S / 3 + 1;
            cur = Balance::at_time(Some(cur), &RATE, now);
        }
        assert_eq!(cur.tokens, 10);
    }

    #[test]
    fn time_never_runs_backwards() {
        let b = Balance { tokens: 5, at: 10 * S };
        assert_eq!(Balance::at_time(Some(b), &RATE, 5 * S), b);
    }

    #[test]
    fn a_reservation_holds_room_for_concurrent_requests_and_settles_to_the_usage() {
        let full = Balance::at_time(None, &RATE, 0);
        let r = RATE.reservation(40);
        let (a, b1) = full.reserve(&RATE, 0, r);
        assert_eq!(a, Admission::Admit { remaining: 100 });
        let (a, b2) = b1.unwrap().reserve(&RATE, 0, r);
        assert_eq!(a, Admission::Admit { remaining: 60 });
        let (a, b3) = b2.unwrap().reserve(&RATE, 0, r);
        assert_eq!(a, Admission::Admit { remaining: 20 }, "a positive balance admits");
        let b3 = b3.unwrap();
        assert_eq!(b3.tokens, -20);
        let (a, none) = b3.reserve(&RATE, 0, r);
        assert!(matches!(a, Admission::Refuse { .. }) && none.is_none(), "the fourth concurrent request waits");
        // All three report 30: 100 - 90 left, whatever order they settle in.
        let settled = b3.settle(&RATE, r, 30).settle(&RATE, r, 30).settle(&RATE, r, 30);
        assert_eq!(settled.tokens, 10);
        // A request that failed gives everything back.
        assert_eq!(full.charge(40).settle(&RATE, 40, 0), full);
        // What refilled while the reservation was out counts up to the cap only.
        let refilled = Balance::at_time(Some(full.charge(40)), &RATE, 30 * S);
        assert_eq!(refilled.settle(&RATE, 40, 0).tokens, 100);
    }

    #[test]
    fn a_reservation_never_exceeds_the_budget_and_admits_as_before() {
        assert_eq!(RATE.reservation(5000), 100);
        let empty = Balance { tokens: 0, at: 0 };
        let (a, taken) = empty.reserve(&RATE, 0, 100);
        assert_eq!(a, Admission::Admit { remaining: 0 }, "zero is not negative");
        assert_eq!(taken.map(|b| b.tokens), Some(-100), "the next concurrent request waits");
        assert_eq!(empty.reserve(&RATE, 0, 0), (Admission::Admit { remaining: 0 }, None), "nothing to write");
        let owing = Balance { tokens: -9, at: 0 };
        assert_eq!(owing.reserve(&RATE, 0, 10), (Admission::Refuse { retry_after_ns: 9 * S }, None));
    }

    #[test]
    fn charges_add_up_exactly() {
        let mut b = Balance::at_time(None, &RATE, 0);
        for _ in 0..7 {
            b = b.charge(13);
        }
        assert_eq!(b.tokens, 100 - 91);
        assert_eq!(Balance::decode(&b.encode()), Some(b));
        assert_eq!(Balance::decode(b"x"), None);
    }

    #[test]
    fn budgets_combine_to_the_least_remaining_and_any_refusal_refuses() {
        let least = Admission::Admit { remaining: 50 }.combine(None).unwrap();
        let least = Admission::Admit { remaining: 20 }.combine(least).unwrap();
        let least = Admission::unmetered(1000).combine(least).unwrap();
        assert_eq!(least, Some(20));
        assert_eq!(Admission::Refuse { retry_after_ns: 9 }.combine(least), Err(9));
    }
}
