//! Callback fuzzing of every shipped module on the deterministic host (see
//! `test_harness::fuzz`): at least 1,000,000 callbacks per module per run (`UG_FUZZ_CALLBACKS`
//! changes it), from a seed printed with the results (`UG_FUZZ_SEED` repeats a run). A failure
//! prints the case seed, the shortest failing sequence, and the command that replays it:
//! `UG_FUZZ_TARGET=<module> UG_FUZZ_CASE=<seed> cargo test -p test-harness --test fuzz replay`.
//! `cargo xtask fuzz --minutes N` runs longer campaigns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use test_harness::fuzz::{self, Budget, Target};

fn budget() -> u64 {
    std::env::var("UG_FUZZ_CALLBACKS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000)
}

fn run(target: Target) {
    let seed = fuzz::seed_from_env();
    let want = budget();
    match fuzz::campaign(target, seed, Budget::Callbacks(want)) {
        Ok(report) => {
            println!("fuzz {target} (seed {seed:#018x}): {report}");
            assert!(report.callbacks >= want, "{report}");
            assert!(report.requests > 0 && report.steps > 0);
        }
        Err(found) => panic!("campaign seed {seed:#018x}\n{found}"),
    }
}

#[test]
fn diagnostics() {
    run(Target::Diagnostics);
}

#[test]
fn rate_limiter() {
    run(Target::RateLimiter);
}

#[test]
fn circuit_breaker() {
    run(Target::CircuitBreaker);
}

#[test]
fn health_router() {
    run(Target::HealthRouter);
}

#[test]
fn upstream_guard_all_stages() {
    run(Target::UpstreamGuard);
}

/// Replays one case when `UG_FUZZ_TARGET` and `UG_FUZZ_CASE` are set (does nothing otherwise).
#[test]
fn replay() {
    let (Ok(target), Ok(case)) = (std::env::var("UG_FUZZ_TARGET"), std::env::var("UG_FUZZ_CASE")) else { return };
    let target = Target::from_name(&target).unwrap_or_else(|| panic!("unknown target {target:?}"));
    let case = fuzz::parse_seed(&case).unwrap_or_else(|| panic!("bad case seed {case:?}"));
    match fuzz::replay(target, case) {
        Ok(outcome) => println!("case {case:#018x} of {target} passes: {outcome:?}"),
        Err(found) => panic!("{found}"),
    }
}
