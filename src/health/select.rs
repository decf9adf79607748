//! Choosing an upstream among the available ones.

use super::config::{HealthConfig, NoneHealthy, Strategy};
use super::state::Health;

/// One upstream as the selector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Index in the configured order.
    pub index: usize,
    pub available: bool,
    pub weight: u32,
}

/// Picks an available upstream: `failover` takes the first in configured order, `round_robin`
/// rotates by `counter`, `weighted` spreads by weight (deterministic in `counter`). `None` when
/// nothing is available.
pub fn select(strategy: Strategy, candidates: &[Candidate], counter: u64) -> Option<usize> {
    let mut up = candidates.iter().filter(|c| c.available);
    match strategy {
        Strategy::Failover => up.next().map(|c| c.index),
        Strategy::RoundRobin => {
            let n = up.clone().count() as u64;
            if n == 0 {
                return None;
            }
            up.nth((counter % n) as usize).map(|c| c.index)
        }
        Strategy::Weighted => {
            let total: u64 = up.clone().map(|c| u64::from(c.weight)).sum();
            if total == 0 {
                return up.next().map(|c| c.index);
            }
            // Spread the counter over [0, total) so consecutive requests interleave.
            let mut point = counter.wrapping_mul(0x9E37_79B9_7F4A_7C15) % total;
            for c in up {
                let w = u64::from(c.weight);
                if point < w {
                    return Some(c.index);
                }
                point -= w;
            }
            None
        }
    }
}

/// Picks among upstreams `indexes` (configured positions) with the configured strategy, from
/// their `states` (by position): an upstream is a candidate while it is available and its cluster
/// is known. `None` when none is.
pub fn choose(config: &HealthConfig, indexes: &[usize], states: &[Health], now: u64, counter: u64) -> Option<usize> {
    let candidates: Vec<Candidate> = indexes
        .iter()
        .filter_map(|i| {
            let h = states.get(*i)?;
            Some(Candidate {
                index: *i,
                available: h.available(now) && !h.unknown(),
                weight: config.upstreams.get(*i)?.weight,
            })
        })
        .collect();
    select(config.strategy, &candidates, counter)
}

/// Why upstream `chosen` (the access log's `reason`: `first_choice`, `failover`, `round_robin`,
/// `weighted`, or `panic`/`none_healthy` when none was), and the unavailable upstreams passed
/// over, each with why (`primary:unhealthy`, `primary:ejected`, `primary:slow` when ejected for
/// slow calls, `primary:unknown_cluster`):
/// under failover those before the one chosen, otherwise all of them.
pub fn why(
    config: &HealthConfig,
    indexes: &[usize],
    states: &[Health],
    chosen: Option<usize>,
    now: u64,
) -> (&'static str, String) {
    let strategy = config.strategy;
    let reason = match (chosen, strategy) {
        (None, _) if config.when_none_healthy == NoneHealthy::Panic => "panic",
        (None, _) => "none_healthy",
        (Some(i), Strategy::Failover) if indexes.first() == Some(&i) => "first_choice",
        (Some(_), Strategy::Failover) => "failover",
        (Some(_), Strategy::RoundRobin) => "round_robin",
        (Some(_), Strategy::Weighted) => "weighted",
    };
    let before_chosen = strategy == Strategy::Failover && chosen.is_some();
    let mut skipped = String::new();
    for &i in indexes {
        if before_chosen && Some(i) == chosen {
            break;
        }
        let (Some(h), Some(u)) = (states.get(i), config.upstreams.get(i)) else { continue };
        if h.available(now) && !h.unknown() {
            continue;
        }
        if !skipped.is_empty() {
            skipped.push(',');
        }
        skipped.push_str(&u.cluster);
        skipped.push_str(match (h.available(now), h.healthy) {
            (true, _) => ":unknown_cluster",
            (false, true) if h.ejected_slow && now < h.ejected_until => ":slow",
            (false, true) => ":ejected",
            (false, false) => ":unhealthy",
        });
    }
    (reason, skipped)
}

/// What the health router does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Route it to this upstream (a configured position). Under `when_none_healthy: panic` with
    /// nothing available, the first upstream of the route (the reason says `panic`).
    Upstream(usize),
    /// Leave it to Envoy's route: nothing else is available and one of the upstreams is a cluster
    /// Envoy does not have, a configuration error that is never a reason to refuse.
    EnvoyRoute,
    /// Fail fast: no healthy upstream (`when_none_healthy: fail`).
    Refuse,
}

/// The health router's decision for one request: what to do, why, and the upstreams passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub pick: Pick,
    /// The access log's `reason` (see [`why`]; `unknown_cluster` for [`Pick::EnvoyRoute`]).
    pub reason: &'static str,
    /// The unavailable upstreams passed over, each with why (see [`why`]).
    pub skipped: String,
}

/// Decides where a request goes among upstreams `indexes`: [`choose`], then what to do when
/// nothing is available, with [`why`].
pub fn route(config: &HealthConfig, indexes: &[usize], states: &[Health], now: u64, counter: u64) -> Routing {
    let chosen = choose(config, indexes, states, now, counter);
    let (reason, skipped) = why(config, indexes, states, chosen, now);
    let pick = match chosen {
        Some(i) => Pick::Upstream(i),
        None if indexes.iter().any(|i| states.get(*i).is_some_and(Health::unknown)) => {
            return Routing { pick: Pick::EnvoyRoute, reason: "unknown_cluster", skipped };
        }
        None if config.when_none_healthy == NoneHealthy::Panic => Pick::Upstream(indexes.first().copied().unwrap_or(0)),
        None => Pick::Refuse,
    };
    Routing { pick, reason, skipped }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: usize, available: bool, weight: u32) -> Candidate {
        Candidate { index, available, weight }
    }

    #[test]
    fn failover_takes_the_first_available_in_order() {
        let cs = [c(0, false, 1), c(1, true, 1), c(2, true, 1)];
        assert_eq!(select(Strategy::Failover, &cs, 5), Some(1));
        assert_eq!(select(Strategy::Failover, &[c(0, false, 1)], 0), None);
    }

    #[test]
    fn round_robin_rotates_over_available_ones_only() {
        let cs = [c(0, true, 1), c(1, false, 1), c(2, true, 1)];
        let picks: Vec<_> = (0..4).map(|i| select(Strategy::RoundRobin, &cs, i).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2]);
    }

    #[test]
    fn weighted_follows_the_weights() {
        let cs = [c(0, true, 3), c(1, true, 1), c(2, false, 100)];
        let mut counts = [0u32; 3];
        for i in 0..4000 {
            counts[select(Strategy::Weighted, &cs, i).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!((2800..3200).contains(&counts[0]), "{counts:?}");
    }

    fn pool(json: &str) -> HealthConfig {
        HealthConfig::from_json(json.as_bytes()).unwrap()
    }

    fn ejected(until: u64) -> Health {
        Health { ejected_until: until, ..Health::default() }
    }

    fn unknown() -> Health {
        Health { last_result: Some(super::super::CheckResult::DispatchFailed), ..Health::default() }
    }

    const TWO: &str = r#"{"upstreams": [{"cluster": "primary"}, {"cluster": "secondary"}]}"#;

    #[test]
    fn failover_routes_past_an_ejected_upstream_and_names_it() {
        let r = route(&pool(TWO), &[0, 1], &[ejected(50), Health::default()], 10, 0);
        assert_eq!(r, Routing { pick: Pick::Upstream(1), reason: "failover", skipped: "primary:ejected".into() });
        let back = route(&pool(TWO), &[0, 1], &[ejected(50), Health::default()], 50, 0);
        assert_eq!(back, Routing { pick: Pick::Upstream(0), reason: "first_choice", skipped: String::new() });
    }

    #[test]
    fn nothing_available_fails_fast_or_panics_to_the_first_upstream() {
        let down = [Health { healthy: false, ..Health::default() }, ejected(50)];
        let r = route(&pool(TWO), &[0, 1], &down, 10, 0);
        assert_eq!(r.pick, Pick::Refuse);
        assert_eq!((r.reason, r.skipped.as_str()), ("none_healthy", "primary:unhealthy,secondary:ejected"));
        let panic =
            pool(r#"{"upstreams": [{"cluster": "primary"}, {"cluster": "secondary"}], "when_none_healthy": "panic"}"#);
        let r = route(&panic, &[1, 0], &down, 10, 0);
        assert_eq!((r.pick, r.reason), (Pick::Upstream(1), "panic"));
    }

    #[test]
    fn an_unknown_cluster_with_nothing_else_available_is_left_to_envoys_route() {
        let r = route(&pool(TWO), &[0, 1], &[unknown(), ejected(50)], 10, 0);
        assert_eq!((r.pick, r.reason), (Pick::EnvoyRoute, "unknown_cluster"));
        // With another available, the unknown one is passed over, named.
        let r = route(&pool(TWO), &[0, 1], &[unknown(), Health::default()], 10, 0);
        assert_eq!(
            r,
            Routing { pick: Pick::Upstream(1), reason: "failover", skipped: "primary:unknown_cluster".into() }
        );
    }

    #[test]
    fn an_upstream_ejected_for_slow_calls_is_passed_over_as_slow() {
        let slow = Health { ejected_until: 50, ejected_slow: true, ..Health::default() };
        let r = route(&pool(TWO), &[0, 1], &[slow, Health::default()], 10, 0);
        assert_eq!(r, Routing { pick: Pick::Upstream(1), reason: "failover", skipped: "primary:slow".into() });
    }
}
