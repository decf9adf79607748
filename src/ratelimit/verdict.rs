//! Combining the decisions of every rule that applied into one answer for the request.

use super::algorithm::Decision;
use super::config::Mode;

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

/// What the rate limiter does with a request once every rule has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Let it through. `shadow_unavailable`: in shadow mode, the rule whose service could not be
    /// asked and whose `on_service_error: deny` would have refused it (logged, not enforced).
    Admit { shadow_unavailable: Option<usize> },
    /// Refuse it with the rule's 429 and `Retry-After`.
    Limit { rule: usize, retry_after_ns: u64 },
    /// Shadow mode: the rule would have refused it; count and log, let it through.
    ShadowLimit { rule: usize },
    /// Refuse it because the rule's service could not be asked (`on_service_error: deny`).
    Unavailable { rule: usize },
}

impl Verdict {
    /// The outcome under `mode`, where `denied` is the first rule refused by
    /// `on_service_error: deny` (its service gave no verdict). A limit outranks an outage: a
    /// client over a limit learns how long to wait.
    pub fn outcome(self, mode: Mode, denied: Option<usize>) -> Outcome {
        match (self, mode) {
            (Verdict::Refused { rule, .. }, Mode::Shadow) => Outcome::ShadowLimit { rule },
            (Verdict::Refused { rule, retry_after_ns }, Mode::Enforce) => Outcome::Limit { rule, retry_after_ns },
            (_, Mode::Shadow) => Outcome::Admit { shadow_unavailable: denied },
            (_, Mode::Enforce) => match denied {
                Some(rule) => Outcome::Unavailable { rule },
                None => Outcome::Admit { shadow_unavailable: None },
            },
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

    #[test]
    fn shadow_mode_admits_what_enforce_mode_refuses() {
        let refused = Verdict::Refused { rule: 1, retry_after_ns: 7 };
        assert_eq!(refused.outcome(Mode::Enforce, None), Outcome::Limit { rule: 1, retry_after_ns: 7 });
        assert_eq!(refused.outcome(Mode::Shadow, None), Outcome::ShadowLimit { rule: 1 });
        let admitted = Verdict::Pass.add(0, OK5);
        assert_eq!(admitted.outcome(Mode::Enforce, Some(2)), Outcome::Unavailable { rule: 2 });
        assert_eq!(admitted.outcome(Mode::Shadow, Some(2)), Outcome::Admit { shadow_unavailable: Some(2) });
        assert_eq!(admitted.outcome(Mode::Enforce, None), Outcome::Admit { shadow_unavailable: None });
    }

    #[test]
    fn a_limit_outranks_an_unavailable_service() {
        let refused = Verdict::Refused { rule: 1, retry_after_ns: 7 };
        assert_eq!(refused.outcome(Mode::Enforce, Some(0)), Outcome::Limit { rule: 1, retry_after_ns: 7 });
    }
}
