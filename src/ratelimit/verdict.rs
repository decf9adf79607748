//! Combining the decisions of every rule that applied into one answer for the request.

use super::algorithm::Decision;

/// The request's verdict over the rules that applied so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verdict {
    /// No rule applied: unlimited.
    #[default]
    Pass,
    /// Admitted; `rule` is the tightest (fewest remaining), whose RateLimit fields the response
    /// carries.
    Admitted { rule: usize, remaining: u64, reset_ns: u64 },
    /// Refused; `rule` is the one that asks the client to wait longest.
    Refused { rule: usize, retry_after_ns: u64 },
}

impl Verdict {
    /// Adds rule `rule`'s decision. A refusal beats any admission; between refusals the longest
    /// wait wins (a client that honours it is not refused again at once); between admissions the
    /// one with the fewest requests remaining wins (what the client should pace by).
    pub fn add(self, rule: usize, decision: Decision) -> Verdict {
        match (self, decision) {
            (Verdict::Refused { retry_after_ns: r, .. }, Decision::Limited { retry_after_ns })
                if retry_after_ns <= r =>
            {
                self
            }
            (_, Decision::Limited { retry_after_ns }) => Verdict::Refused { rule, retry_after_ns },
            (Verdict::Refused { .. }, Decision::Allowed { .. }) => self,
            (Verdict::Admitted { remaining: r, .. }, Decision::Allowed { remaining, .. }) if remaining >= r => self,
            (_, Decision::Allowed { remaining, reset_ns }) => Verdict::Admitted { rule, remaining, reset_ns },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK5: Decision = Decision::Allowed { remaining: 5, reset_ns: 1 };
    const OK2: Decision = Decision::Allowed { remaining: 2, reset_ns: 1 };

    #[test]
    fn the_tightest_admission_is_reported() {
        let v = Verdict::Pass.add(0, OK5).add(1, OK2).add(2, OK5);
        assert_eq!(v, Verdict::Admitted { rule: 1, remaining: 2, reset_ns: 1 });
    }

    #[test]
    fn any_refusal_refuses_and_the_longest_wait_wins() {
        let v = Verdict::Pass
            .add(0, OK5)
            .add(1, Decision::Limited { retry_after_ns: 10 })
            .add(2, Decision::Limited { retry_after_ns: 30 })
            .add(3, Decision::Limited { retry_after_ns: 20 })
            .add(4, OK2);
        assert_eq!(v, Verdict::Refused { rule: 2, retry_after_ns: 30 });
    }
}
