//! `cargo xtask soak --minutes N [--native]`: `upstream_guard.wasm` (or, with `--native`,
//! `libupstream_guard.so`) with its header stages (no `llm`) in real Envoy (`--concurrency 2`)
//! under steady load for N minutes, watching for leaks and faults.
//!
//! A slow leak or a rare trap does not show in a test that sends a few hundred requests: this
//! runs long enough for memory to settle, with 100,000 distinct client addresses (trusted
//! `x-forwarded-for` behind one load balancer) hashed into a bounded rate-limit table, and a
//! primary backend that fails and recovers on a cycle (so the health router fails over and back,
//! and the circuit breaker opens and closes). Every few seconds it samples Envoy's RSS, the Wasm
//! VMs' linear memory (`upstream_guard.vm.memory_bytes`), the shared-data keys the module created
//! (`upstream_guard.shared_data.keys_created`) and the error counts, and writes them to
//! `target/soak/<shape>/soak.csv` and `soak.png`. The dynamic module has no VM: its memory is
//! Envoy's RSS alone, and its store counts keys the same way.
//!
//! Pass: the last minute's average RSS within 5 % of the second minute's, keys within the
//! configured bound, no trap or panic in Envoy's log, no unexpected 5xx (a 5xx is expected only
//! when the filter says why: the failing backend's own answer, an open circuit, or no healthy
//! upstream).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_harness::backend::{Backend, Behavior};
use test_harness::bootstrap::{cluster, module_filter, Bootstrap, Shape};
use test_harness::envoy::Envoy;
use test_harness::{http, paths};

/// Why a soak did not pass (or could not run).
pub use crate::TaskError as SoakError;

/// The run's shape.
#[derive(Debug, Clone)]
pub struct Plan {
    /// How long the load runs.
    pub duration: Duration,
    /// Requests per second, over all connections.
    pub rate: u32,
    /// Load-generating connections (one thread each).
    pub connections: u32,
    /// Distinct client addresses.
    pub clients: u32,
    /// The rate limiter's `max_keys`.
    pub max_keys: u32,
    /// How often to sample.
    pub every: Duration,
    /// The primary backend's cycle: healthy this long, then failing this long.
    pub cycle: (Duration, Duration),
    /// Which shape of the module runs.
    pub shape: Shape,
}

impl Plan {
    /// `minutes` of load at 1,000 requests/s from 100,000 clients into 50,000 slots.
    pub fn minutes(minutes: f64) -> Plan {
        Plan {
            duration: Duration::from_secs_f64(minutes * 60.0),
            rate: 1_000,
            connections: 4,
            clients: 100_000,
            max_keys: 50_000,
            every: Duration::from_secs(5),
            cycle: (Duration::from_secs(20), Duration::from_secs(10)),
            shape: Shape::Wasm,
        }
    }
}

/// Keys the module may create besides the rate-limit slots: one health state per upstream, the
/// health lease and sequence, one breaker per cluster (two clusters, with some room).
const OTHER_KEYS: u64 = 16;

/// One sample.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    /// Envoy's resident set, KiB.
    pub rss_kib: u64,
    /// The Wasm VMs' linear memory, bytes.
    pub vm_bytes: u64,
    /// Shared-data keys the module created.
    pub keys: u64,
    /// Responses so far, by kind.
    pub counts: Counts,
}

/// Responses by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// 2xx.
    pub ok: u64,
    /// 429 from the rate limiter.
    pub limited: u64,
    /// 5xx the filter explained (failing backend, open circuit, no healthy upstream).
    pub expected_5xx: u64,
    /// Any other status, a 5xx without a known cause, or a failed connection.
    pub unexpected: u64,
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    limited: AtomicU64,
    expected_5xx: AtomicU64,
    unexpected: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            limited: self.limited.load(Ordering::Relaxed),
            expected_5xx: self.expected_5xx.load(Ordering::Relaxed),
            unexpected: self.unexpected.load(Ordering::Relaxed),
        }
    }
}

/// What a run measured, and whether it passed.
#[derive(Debug)]
pub struct Outcome {
    /// Every sample.
    pub samples: Vec<Sample>,
    /// Average RSS (KiB) over the second minute, and over the last minute (for a run shorter
    /// than three minutes: the first and second halves of the second minute).
    pub rss_second_minute: f64,
    /// See `rss_second_minute`.
    pub rss_last_minute: f64,
    /// The bound on keys.
    pub key_bound: u64,
    /// Lines of Envoy's log that show a trap, a panic or a failure of the module.
    pub fault_lines: Vec<String>,
    /// Unexpected responses, described (the first few).
    pub unexpected_examples: Vec<String>,
    /// Where the CSV and the plot went.
    pub csv: PathBuf,
    /// See `csv`.
    pub png: PathBuf,
}

impl Outcome {
    /// The reasons this run failed (empty when it passed).
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let last = self.samples.last().cloned().unwrap_or_default();
        if self.rss_second_minute > 0.0 {
            let drift = (self.rss_last_minute - self.rss_second_minute) / self.rss_second_minute;
            if drift.abs() > 0.05 {
                out.push(format!(
                    "memory not flat: last minute's average RSS {:.1} MiB vs the second minute's {:.1} MiB ({:+.1} %)",
                    self.rss_last_minute / 1024.0,
                    self.rss_second_minute / 1024.0,
                    drift * 100.0
                ));
            }
        }
        if last.keys > self.key_bound {
            out.push(format!("{} shared-data keys, over the bound of {}", last.keys, self.key_bound));
        }
        if !self.fault_lines.is_empty() {
            out.push(format!("Envoy logged faults of the module:\n  {}", self.fault_lines.join("\n  ")));
        }
        if last.counts.unexpected > 0 {
            out.push(format!(
                "{} unexpected responses, e.g.:\n  {}",
                last.counts.unexpected,
                self.unexpected_examples.join("\n  ")
            ));
        }
        if last.counts.ok == 0 || last.counts.limited == 0 || last.counts.expected_5xx == 0 {
            out.push(format!("the load did not exercise every path: {:?}", last.counts));
        }
        out
    }
}

fn module_config(plan: &Plan) -> Value {
    let hc = json!({"path": "/healthz", "interval": "500ms", "timeout": "250ms",
                    "unhealthy_threshold": 2, "healthy_threshold": 2});
    json!({
        "diagnostics": {"json_body": true},
        "rate_limiter": {
            "rules": [{"name": "per-client", "key": ["client_ip"], "limit": {"requests": 20, "per": "10s"}}],
            // Behind one load balancer that appends the client's address: Envoy appends its peer
            // (the balancer) after it, so the client is the second entry from the right.
            "client_ip": {"trusted_hops": 2},
            "max_keys": plan.max_keys,
        },
        "health_router": {
            "upstreams": [{"cluster": "primary", "health_check": hc}, {"cluster": "secondary", "health_check": hc}],
            "strategy": "failover",
            "passive": {"consecutive_failures": 3, "ejection": "5s"},
        },
        "circuit_breaker": {"failure": {"consecutive": 5}, "open": {"base": "2s", "max": "10s"}},
    })
}

fn bootstrap(plan: &Plan, primary: SocketAddr, secondary: SocketAddr) -> Result<Value, SoakError> {
    match plan.shape {
        Shape::Wasm => paths::wasm_path("upstream_guard").map(drop),
        Shape::Native => paths::native_module_path().map(drop),
    }
    .map_err(|e| SoakError(e.to_string()))?;
    let mut cfg = Bootstrap::new()
        .filter(module_filter(plan.shape, "upstream_guard", &module_config(plan)))
        .route(json!({"match": {"prefix": "/"}, "route": {"cluster_header": "x-upstream-cluster"}}))
        .cluster(cluster("primary", primary))
        .cluster(cluster("secondary", secondary))
        .build();
    let hcm = &mut cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["use_remote_address"] = json!(true);
    hcm["xff_num_trusted_hops"] = json!(1);
    Ok(cfg)
}

/// The address of client `i` (of up to 2^24), as the load balancer would write it.
fn client(i: u32) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// Clients that send far more than their limit (one request in ten), to keep the limiter busy.
const HOT_CLIENTS: u32 = 20;

fn classify(r: &http::Response) -> Result<fn(&Counters) -> &AtomicU64, String> {
    let cause = r
        .header("x-upstream-diagnosis")
        .and_then(test_harness::parse_diagnosis)
        .and_then(|d| d.get("cause").cloned())
        .unwrap_or_default();
    match (r.status, cause.as_str()) {
        (200..=299, _) => Ok(|c| &c.ok),
        (429, "rate_limited") => Ok(|c| &c.limited),
        (500..=599, "upstream_error_response" | "circuit_open" | "no_healthy_upstream") => Ok(|c| &c.expected_5xx),
        (status, cause) => {
            Err(format!("{status} cause={cause:?} body={:?}", r.text().chars().take(200).collect::<String>()))
        }
    }
}

/// One load-generating connection: paced requests until `stop`.
fn load(
    addr: SocketAddr,
    plan: &Plan,
    lane: u32,
    stop: &AtomicBool,
    counters: &Counters,
    examples: &std::sync::Mutex<Vec<String>>,
) {
    let per_conn = f64::from(plan.rate) / f64::from(plan.connections.max(1));
    let gap = Duration::from_secs_f64(1.0 / per_conn.max(0.001));
    let started = Instant::now();
    let mut conn: Option<http::Connection> = None;
    let mut n: u64 = 0;
    let note = |what: String| {
        counters.unexpected.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = examples.lock() {
            if e.len() < 10 {
                e.push(what);
            }
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let due = started + gap.mul_f64(n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Requests take turns over the clients, lane by lane; one in ten comes from a hot client.
        let seq = n * u64::from(plan.connections) + u64::from(lane);
        n += 1;
        let who = if seq % 10 == 9 {
            format!("172.16.0.{}", seq % u64::from(HOT_CLIENTS))
        } else {
            // The requests before this one that were not hot: every client in turn.
            let cold = seq - (seq + 1) / 10;
            client(u32::try_from(cold % u64::from(plan.clients.max(1))).unwrap_or(0))
        };
        let c = match conn.take() {
            Some(c) => c,
            None => match http::Connection::open(addr, Duration::from_secs(10)) {
                Ok(c) => c,
                Err(e) => {
                    note(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        let mut c = c;
        match c.get("/api/item", &[("x-forwarded-for", &who)]) {
            Ok(r) => {
                match classify(&r) {
                    Ok(slot) => {
                        slot(counters).fetch_add(1, Ordering::Relaxed);
                    }
                    Err(what) => note(what),
                }
                if !r.truncated && !r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                    conn = Some(c);
                }
            }
            Err(e) => note(format!("request: {e}")),
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Log lines that mean the module trapped, panicked or failed (Envoy logs a trap as
/// `Function: proxy_on_... failed: ...`, a Rust panic's message says `panicked`). The filters' own
/// warnings (an upstream going unhealthy) are not faults.
fn faults(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("panicked")
                || l.contains("trap")
                || l.contains("function: proxy_")
                || l.contains("module_panics")
                || ((l.contains("[error]") || l.contains("[critical]"))
                    && (l.contains("wasm") || l.contains("dynamic_modules")))
        })
        .take(20)
        .map(|l| l.chars().take(300).collect())
        .collect()
}

fn average_rss(samples: &[Sample], from: f64, to: f64) -> f64 {
    let picked: Vec<f64> = samples.iter().filter(|s| s.t >= from && s.t < to).map(|s| s.rss_kib as f64).collect();
    if picked.is_empty() {
        0.0
    } else {
        picked.iter().sum::<f64>() / picked.len() as f64
    }
}

/// Runs the soak described by `plan`, writing its CSV and plot under `out`.
pub fn run(plan: &Plan, out: &Path) -> Result<Outcome, SoakError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| SoakError(format!("{what}: {e}"))
    };
    let primary = Backend::ok().map_err(|e| SoakError(format!("backend: {e}")))?;
    let secondary = Backend::ok().map_err(|e| SoakError(format!("backend: {e}")))?;
    let cfg = bootstrap(plan, primary.addr(), secondary.addr())?;
    let mut envoy = Envoy::start_quiet(&cfg, 2).map_err(|e| SoakError(format!("starting Envoy: {e}")))?;
    let addr = envoy.main().map_err(|e| SoakError(e.to_string()))?;
    let pid = envoy.pid();
    println!(
        "soak: {:.1} min, {} requests/s over {} connections, {} clients, max_keys {}, primary healthy {:?} / failing {:?}",
        plan.duration.as_secs_f64() / 60.0,
        plan.rate,
        plan.connections,
        plan.clients,
        plan.max_keys,
        plan.cycle.0,
        plan.cycle.1
    );

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let examples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..plan.connections)
        .map(|lane| {
            let (stop, counters, examples, plan) = (stop.clone(), counters.clone(), examples.clone(), plan.clone());
            std::thread::spawn(move || load(addr, &plan, lane, &stop, &counters, &examples))
        })
        .collect();

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut failing = false;
    let mut next_sample = Duration::ZERO;
    let cycle = plan.cycle.0 + plan.cycle.1;
    let mut died = false;
    while started.elapsed() < plan.duration {
        let t = started.elapsed();
        let in_cycle = Duration::from_nanos(u64::try_from(t.as_nanos() % cycle.as_nanos().max(1)).unwrap_or(0));
        let should_fail = in_cycle >= plan.cycle.0;
        if should_fail != failing {
            failing = should_fail;
            primary.set(if failing { Behavior::Status(503) } else { Behavior::Status(200) });
            primary.set_healthy(!failing);
        }
        if t >= next_sample {
            next_sample += plan.every;
            let stat = |name: &str| envoy.stat(name).ok().flatten().unwrap_or(0);
            let s = Sample {
                t: t.as_secs_f64(),
                rss_kib: rss_kib(pid),
                vm_bytes: stat("upstream_guard.vm.memory_bytes"),
                keys: stat("upstream_guard.shared_data.keys_created"),
                counts: counters.snapshot(),
            };
            println!(
                "soak t={:>5.0}s rss={:>6.1} MiB vm={:>5.1} MiB keys={:>6} ok={} limited={} expected_5xx={} unexpected={}",
                s.t,
                s.rss_kib as f64 / 1024.0,
                s.vm_bytes as f64 / 1_048_576.0,
                s.keys,
                s.counts.ok,
                s.counts.limited,
                s.counts.expected_5xx,
                s.counts.unexpected
            );
            samples.push(s);
        }
        if !envoy.running() {
            died = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    if died {
        return Err(SoakError(format!("Envoy exited during the soak:\n{}", envoy.log())));
    }
    let stat = |name: &str| envoy.stat(name).ok().flatten().unwrap_or(0);
    samples.push(Sample {
        t: started.elapsed().as_secs_f64(),
        rss_kib: rss_kib(pid),
        vm_bytes: stat("upstream_guard.vm.memory_bytes"),
        keys: stat("upstream_guard.shared_data.keys_created"),
        counts: counters.snapshot(),
    });

    let end = plan.duration.as_secs_f64();
    std::fs::create_dir_all(out).map_err(io("target/soak"))?;
    let csv = out.join("soak.csv");
    let png = out.join("soak.png");
    write_csv(&csv, &samples).map_err(io("writing the CSV"))?;
    plot(&png, &samples, u64::from(plan.max_keys) + OTHER_KEYS)
        .map_err(|e| SoakError(format!("drawing {}: {e}", png.display())))?;
    let unexpected_examples = examples.lock().map(|e| e.clone()).unwrap_or_default();
    // The second minute against the last one; a run of under three minutes has no last minute
    // apart from its second, and compares the halves of the second minute instead.
    let (early, late) =
        if end >= 180.0 { ((60.0, 120.0), (end - 60.0, end + 1.0)) } else { ((60.0, 90.0), (90.0, end + 1.0)) };
    Ok(Outcome {
        rss_second_minute: average_rss(&samples, early.0, early.1),
        rss_last_minute: average_rss(&samples, late.0, late.1),
        key_bound: u64::from(plan.max_keys) + OTHER_KEYS,
        fault_lines: faults(&envoy.log()),
        unexpected_examples,
        samples,
        csv,
        png,
    })
}

fn write_csv(path: &Path, samples: &[Sample]) -> std::io::Result<()> {
    let mut text =
        String::from("seconds,rss_kib,vm_memory_bytes,shared_data_keys,ok,rate_limited,expected_5xx,unexpected\n");
    for s in samples {
        text.push_str(&format!(
            "{:.1},{},{},{},{},{},{},{}\n",
            s.t,
            s.rss_kib,
            s.vm_bytes,
            s.keys,
            s.counts.ok,
            s.counts.limited,
            s.counts.expected_5xx,
            s.counts.unexpected
        ));
    }
    std::fs::write(path, text)
}

/// Three panels, time on the x axis, each from zero: Envoy's RSS (blue) and the VMs' memory
/// (green, same MiB scale); shared-data keys (orange) against the bound (dark grey); unexpected
/// responses (red, a flat zero line when the run passed) against expected 5xx (purple), both
/// per sample interval. No text (no font needed): the README explains the axes.
fn plot(path: &Path, samples: &[Sample], key_bound: u64) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let t_max = samples.last().map(|s| s.t).unwrap_or(1.0).max(1.0);
    let mib = |b: f64| b / 1_048_576.0;
    let rss: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, s.rss_kib as f64 / 1024.0)).collect();
    let vm: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, mib(s.vm_bytes as f64))).collect();
    let keys: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, s.keys as f64)).collect();
    let per_interval = |f: fn(&Counts) -> u64| -> Vec<(f64, f64)> {
        samples.windows(2).map(|w| (w[1].t, f(&w[1].counts).saturating_sub(f(&w[0].counts)) as f64)).collect()
    };
    let expected = per_interval(|c| c.expected_5xx);
    let unexpected = per_interval(|c| c.unexpected);
    let top = |v: &[(f64, f64)]| v.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let grey = RGBColor(200, 200, 200);
    let draw = |area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
                y_max: f64,
                series: &[(&[(f64, f64)], RGBColor)]|
     -> Result<(), Box<dyn std::error::Error>> {
        let area = area.margin(8, 8, 8, 8);
        let mut chart = ChartBuilder::on(&area).build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
        // A light grid: a line every minute, and quarters of the y range.
        for m in 0..=(t_max / 60.0) as u32 {
            let x = f64::from(m) * 60.0;
            chart.draw_series(LineSeries::new([(x, 0.0), (x, y_max)], grey))?;
        }
        for q in 0..=4 {
            let y = y_max * f64::from(q) / 4.0;
            chart.draw_series(LineSeries::new([(0.0, y), (t_max, y)], grey))?;
        }
        for (points, color) in series {
            chart.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?;
        }
        Ok(())
    };
    let blue = RGBColor(31, 119, 180);
    let green = RGBColor(44, 160, 44);
    let orange = RGBColor(255, 127, 14);
    let red = RGBColor(214, 39, 40);
    let purple = RGBColor(148, 103, 189);
    draw(&panels[0], top(&rss).max(top(&vm)), &[(&rss, blue), (&vm, green)])?;
    let bound = [(0.0, key_bound as f64), (t_max, key_bound as f64)];
    draw(&panels[1], top(&keys).max(key_bound as f64 * 1.1), &[(&bound, RGBColor(90, 90, 90)), (&keys, orange)])?;
    draw(&panels[2], top(&expected).max(top(&unexpected)), &[(&expected, purple), (&unexpected, red)])?;
    root.present()?;
    Ok(())
}
