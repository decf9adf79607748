//! Callback fuzzing: every shipped module, driven by seeded random callback sequences on the
//! deterministic host, with invariants checked as it goes.
//!
//! A trap in a filter is an outage of everything behind it, so the fuzzer plays the worst of what
//! Envoy, clients and upstreams can hand a filter: callbacks in every legal order (streams
//! abandoned at any point, responses without requests ever finishing, logs without responses),
//! headers that are huge, empty, repeated, not UTF-8 or full of control characters, hostile
//! `x-forwarded-for` lists, properties that are missing or garbage, a clock that jumps both ways,
//! shared-data races, and callouts that fail, time out or come back garbled.
//!
//! After each step it checks what must always hold ([`exec`]): no trap and no panic logged; the
//! rate limiter never admits more than `requests + burst` in any window of a bucket; every
//! breaker decodes and has at most `max_probes` probes in flight; every shared-data key is one the
//! module may write and their number stays within the configured bounds; every diagnosis header
//! is a valid RFC 8941 Dictionary that shows upstream details only to trusted clients, with every
//! hostile name escaped. With the llm stage (`upstream_guard.wasm`, most cases): request bodies
//! cut anywhere, provider 429s and answers with and without usage; a model the stage does not
//! serve never reaches a provider, pauses stay within `rate_limited.max`, budget balances within
//! their cap and the usage reported.
//!
//! Everything is reproducible from a seed: a campaign's seed gives each case its own seed, a case
//! seed gives the module's configuration and the whole sequence of steps. A failure is shrunk to
//! the shortest sequence that still fails ([`shrink`]) and reported with the case seed and the
//! command that replays it.

mod configs;
mod exec;
mod gen;
mod rng;

use std::fmt;
use std::time::{Duration, Instant};

pub use exec::{execute, Failure, Kind, Outcome};
pub use gen::{generate, Case, Op};
pub use rng::Rng;

/// A module under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `diagnostics.wasm`.
    Diagnostics,
    /// `rate_limiter.wasm`.
    RateLimiter,
    /// `circuit_breaker.wasm`.
    CircuitBreaker,
    /// `health_router.wasm`.
    HealthRouter,
    /// `upstream_guard.wasm` with all four stages, and in most cases the llm stage.
    UpstreamGuard,
}

impl Target {
    /// Every shipped module.
    pub const ALL: [Target; 5] =
        [Target::Diagnostics, Target::RateLimiter, Target::CircuitBreaker, Target::HealthRouter, Target::UpstreamGuard];

    /// The module's file stem (and VM id).
    pub fn name(self) -> &'static str {
        match self {
            Target::Diagnostics => "diagnostics",
            Target::RateLimiter => "rate_limiter",
            Target::CircuitBreaker => "circuit_breaker",
            Target::HealthRouter => "health_router",
            Target::UpstreamGuard => "upstream_guard",
        }
    }

    /// The target named `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    pub(crate) fn routes(self) -> bool {
        matches!(self, Target::HealthRouter | Target::UpstreamGuard)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How long a campaign runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Until at least this many callbacks were delivered.
    Callbacks(u64),
    /// Until this much time has passed.
    Time(Duration),
}

/// What a campaign did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Callbacks delivered into the module (stream and root callbacks, context creation included).
    pub callbacks: u64,
    /// Cases run (each a fresh host and a fresh load of the module).
    pub cases: u64,
    /// Steps run.
    pub steps: u64,
    /// Requests started.
    pub requests: u64,
    /// Local replies the module sent.
    pub local_replies: u64,
    /// Diagnosis headers checked.
    pub diagnoses: u64,
    /// Rate-limit admissions checked against the window bound.
    pub admissions: u64,
    /// Circuits opened, half-opened and closed.
    pub circuits: (u64, u64, u64),
    /// Health checks answered and passive ejections.
    pub checks: u64,
    pub ejections: u64,
    /// Shared-data updates that lost every compare-and-swap race.
    pub contention: u64,
    /// Request bodies the llm stage read to their end on its paths, and those it routed.
    pub llm_bodies: u64,
    pub llm_routed: u64,
    /// Requests for a model the llm stage does not serve, checked refused locally.
    pub llm_unknown: u64,
    /// Wall time in milliseconds.
    pub millis: u64,
}

impl Report {
    fn add(&mut self, o: &Outcome) {
        self.callbacks += o.callbacks;
        self.cases += 1;
        self.steps += o.steps;
        self.requests += o.requests;
        self.local_replies += o.local_replies;
        self.diagnoses += o.diagnoses;
        self.admissions += o.admissions;
        self.circuits.0 += o.opened;
        self.circuits.1 += o.half_opened;
        self.circuits.2 += o.closed;
        self.checks += o.checks;
        self.ejections += o.ejections;
        self.contention += o.contention;
        self.llm_bodies += o.llm_bodies;
        self.llm_routed += o.llm_routed;
        self.llm_unknown += o.llm_unknown;
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = (self.millis as f64 / 1000.0).max(0.001);
        write!(
            f,
            "{} callbacks in {} cases ({} steps, {} requests, {} local replies, {} diagnoses checked, {} admissions \
             checked; circuits opened/half-opened/closed {}/{}/{}, {} health checks, {} ejections, {} lost CAS \
             races, {} llm bodies read: {} routed, {} for unknown models refused) in {:.1} s ({:.0} callbacks/s)",
            self.callbacks,
            self.cases,
            self.steps,
            self.requests,
            self.local_replies,
            self.diagnoses,
            self.admissions,
            self.circuits.0,
            self.circuits.1,
            self.circuits.2,
            self.checks,
            self.ejections,
            self.contention,
            self.llm_bodies,
            self.llm_routed,
            self.llm_unknown,
            secs,
            self.callbacks as f64 / secs
        )
    }
}

/// A failing case, shrunk.
#[derive(Debug, Clone)]
pub struct Found {
    pub target: Target,
    /// The case seed: [`replay`] runs this case again.
    pub case_seed: u64,
    /// The steps the case had.
    pub original_steps: usize,
    /// The shortest sequence found that still fails.
    pub steps: Vec<Op>,
    /// How it fails.
    pub failure: Failure,
    /// The module configuration of the case.
    pub config: String,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fuzz failure in {}: {}", self.target, self.failure)?;
        writeln!(f, "case seed: {:#018x}", self.case_seed)?;
        writeln!(
            f,
            "replay: UG_FUZZ_TARGET={} UG_FUZZ_CASE={:#018x} cargo test -p test-harness --test fuzz replay -- --nocapture",
            self.target, self.case_seed
        )?;
        writeln!(f, "config: {}", self.config)?;
        writeln!(f, "shortest failing sequence ({} of {} steps):", self.steps.len(), self.original_steps)?;
        for (i, op) in self.steps.iter().enumerate() {
            writeln!(f, "  {i:>3}: {op:?}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Found {}

/// Steps per case: long enough for circuits to open, half-open and close, short enough that a
/// module load (about 0.3 ms) stays a small share of the time.
pub const STEPS_PER_CASE: usize = 1500;

/// The seed of case `index` of a campaign.
pub fn case_seed(campaign_seed: u64, target: Target, index: u64) -> u64 {
    let mut r = Rng::new(campaign_seed ^ (index.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ crate::fuzz::name_hash(target));
    r.next_u64()
}

fn name_hash(target: Target) -> u64 {
    target.name().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Runs cases of `target` from `seed` until the budget is spent; the first failure is shrunk
/// and returned.
pub fn campaign(target: Target, seed: u64, budget: Budget) -> Result<Report, Box<Found>> {
    let started = Instant::now();
    let mut report = Report::default();
    for index in 0.. {
        let done = match budget {
            Budget::Callbacks(n) => report.callbacks >= n,
            Budget::Time(d) => started.elapsed() >= d,
        };
        if done {
            break;
        }
        let case = generate(target, case_seed(seed, target, index), STEPS_PER_CASE);
        match execute(&case, &case.ops) {
            Ok(outcome) => report.add(&outcome),
            Err(failure) => return Err(Box::new(shrink(&case, failure, Duration::from_secs(120)))),
        }
    }
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Runs one case again (from its seed), shrinking it if it fails.
pub fn replay(target: Target, case_seed: u64) -> Result<Outcome, Box<Found>> {
    let case = generate(target, case_seed, STEPS_PER_CASE);
    execute(&case, &case.ops).map_err(|failure| Box::new(shrink(&case, failure, Duration::from_secs(300))))
}

/// Shrinks a failing sequence: removes ever smaller runs of steps while the case still fails in
/// the same way (same kind of failure), until no single step can go or `limit` has passed.
pub fn shrink(case: &Case, failure: Failure, limit: Duration) -> Found {
    let started = Instant::now();
    let mut best = case.ops.clone();
    let mut best_failure = failure;
    let mut chunk = best.len().div_ceil(2).max(1);
    while started.elapsed() < limit {
        let mut removed_any = false;
        let mut start = 0;
        while start < best.len() && started.elapsed() < limit {
            let end = (start + chunk).min(best.len());
            let candidate: Vec<Op> = best[..start].iter().chain(best[end..].iter()).cloned().collect();
            match execute(case, &candidate) {
                Err(f) if f.kind == best_failure.kind => {
                    best = candidate;
                    best_failure = f;
                    removed_any = true;
                }
                _ => start = end,
            }
        }
        if chunk == 1 && !removed_any {
            break;
        }
        if !removed_any {
            chunk = chunk.div_ceil(2).max(1);
        }
    }
    Found {
        target: case.target,
        case_seed: case.seed,
        original_steps: case.ops.len(),
        steps: best,
        failure: best_failure,
        config: case.config.to_string(),
    }
}

/// The campaign seed: `UG_FUZZ_SEED` (decimal or `0x` hex) if set, else one from the clock.
pub fn seed_from_env() -> u64 {
    std::env::var("UG_FUZZ_SEED").ok().and_then(|s| parse_seed(&s)).unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Rng::new(now.as_nanos() as u64).next_u64()
    })
}

/// Parses a seed written in decimal or as `0x…` hex.
pub fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}
