//! Token budgets: N tokens per period per key, charged after the response (a debt model).
//!
//! A request's cost is only known once the provider reports usage, at the end of the response,
//! so the budget cannot be taken up front. Instead each key has a balance that refills at
//! `tokens / period` up to `tokens`; a request is admitted while the balance is not negative,
//! and its usage is subtracted when the response ends, which may take the balance below zero.
//! The key is then refused until the refill brings it back to zero: spending more than the
//! budget delays the next request by exactly the overdraft. Concurrent requests of one key may
//! all be admitted while the balance is still positive; each is charged in full.
//!
//! A balance is one shared-data value of 17 bytes, updated with compare-and-swap, so the charge
//! is exact across workers; the admission check only reads it.

/// A budget's size and refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRate {
    /// Tokens per period, and the most a balance holds (> 0).
    pub tokens: u64,
    /// The period in nanoseconds (> 0).
    pub period_ns: u64,
}

impl TokenRate {
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
    fn charges_add_up_exactly() {
        let mut b = Balance::at_time(None, &RATE, 0);
        for _ in 0..7 {
            b = b.charge(13);
        }
        assert_eq!(b.tokens, 100 - 91);
        assert_eq!(Balance::decode(&b.encode()), Some(b));
        assert_eq!(Balance::decode(b"x"), None);
    }
}
