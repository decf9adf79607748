//! Choosing an upstream among the available ones.

use super::config::Strategy;

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
}
