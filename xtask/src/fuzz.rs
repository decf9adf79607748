//! `cargo xtask fuzz --minutes N`: longer callback-fuzzing campaigns than the test suite's
//! (which stops after 1,000,000 callbacks per module), every module at once.
//!
//! `--seed S` repeats a campaign, `--target NAME` fuzzes one module. A failure prints the case
//! seed, the shortest failing sequence and the command that replays it.

use std::time::Duration;

use test_harness::fuzz::{self, Budget, Found, Report, Target};

/// Why a campaign did not pass.
pub use crate::TaskError as FuzzError;

/// Runs every target (or `only`) for `minutes`, in parallel, from `seed`.
pub fn run(minutes: f64, seed: u64, only: Option<Target>) -> Result<Vec<(Target, Report)>, FuzzError> {
    let targets: Vec<Target> = match only {
        Some(t) => vec![t],
        None => Target::ALL.to_vec(),
    };
    let budget = Budget::Time(Duration::from_secs_f64(minutes * 60.0));
    println!("fuzz: seed {seed:#018x}, {minutes} min, modules {}", names(&targets));
    let results: Vec<(Target, Result<Report, Box<Found>>)> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            targets.iter().map(|&t| (t, scope.spawn(move || fuzz::campaign(t, seed, budget)))).collect();
        handles
            .into_iter()
            .map(|(t, h)| {
                let r = h.join().unwrap_or_else(|_| {
                    Err(Box::new(Found {
                        target: t,
                        case_seed: 0,
                        original_steps: 0,
                        steps: Vec::new(),
                        failure: fuzz::Failure {
                            kind: fuzz::Kind::Host,
                            step: 0,
                            message: "the fuzzing thread panicked".into(),
                        },
                        config: String::new(),
                    }))
                });
                (t, r)
            })
            .collect()
    });
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (t, r) in results {
        match r {
            Ok(report) => {
                println!("fuzz {t}: {report}");
                ok.push((t, report));
            }
            Err(found) => {
                println!("{found}");
                failed.push(t);
            }
        }
    }
    let total: u64 = ok.iter().map(|(_, r)| r.callbacks).sum();
    println!("fuzz: {total} callbacks in all; seed {seed:#018x} (UG_FUZZ_SEED or --seed repeats it)");
    if failed.is_empty() {
        Ok(ok)
    } else {
        Err(FuzzError(format!("fuzzing found failures in {} (seed {seed:#018x})", names(&failed))))
    }
}

fn names(targets: &[Target]) -> String {
    targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
}
