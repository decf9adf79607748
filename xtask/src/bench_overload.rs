//! The overload scenario: a backend whose latency grows with its concurrency (10 ms alone, 25 ms
//! more for every other request it holds, so its throughput falls as it takes more at once),
//! pushed past capacity by more clients than it can serve: a few critical clients (`/checkout`)
//! and many low-priority ones (`/batch`), each sending back to back after a second of light
//! load. It compares goodput (2xx per second, every class) and the critical class's latency with
//! no stage, with the concurrency stage in each shape, and with Envoy's own
//! `adaptive_concurrency` filter (the gradient controller), on the same backend and route.
//!
//! Figures only: nothing here fails on a number.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_harness::backend::{Backend, Behavior};
use test_harness::bootstrap::{cluster, module_filter, route, Bootstrap, Shape};
use test_harness::envoy::Envoy;
use test_harness::http;

use crate::bench::{BenchError, Plan};

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

/// The concurrency stage's configuration in the scenario.
fn stage_config() -> Value {
    json!({"concurrency": {
        "limit": {"initial": 10, "min": 1, "max": 200}, "latency": {"tolerance": 2}, "window": "500ms",
        "classes": [{"class": "critical", "match": {"path_prefix": "/checkout"}},
                    {"class": "low", "match": {"path_prefix": "/batch"}}]}})
}

/// Envoy's adaptive concurrency filter, gradient controller, tuned as its documentation's
/// example: the 90th percentile, a 100 ms update interval, minRTT re-measured every 5 s at a
/// concurrency of 3.
fn native_adaptive_concurrency() -> Value {
    json!({"name": "envoy.filters.http.adaptive_concurrency", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency",
        "gradient_controller_config": {
            "sample_aggregate_percentile": {"value": 90},
            "concurrency_limit_params": {"concurrency_update_interval": "0.1s", "max_concurrency_limit": 200},
            "min_rtt_calc_params": {"interval": "5s", "request_count": 20, "jitter": {"value": 10},
                                    "min_concurrency": 3, "buffer": {"value": 25}}}}})
}

/// What the clients of one class saw: (status, latency).
struct Seen(Vec<(u16, Duration)>);

impl Seen {
    fn ok(&self) -> usize {
        self.0.iter().filter(|(s, _)| (200..300).contains(s)).count()
    }
    fn quantile_ms(&self, q: f64) -> f64 {
        let mut ok: Vec<f64> =
            self.0.iter().filter(|(s, _)| (200..300).contains(s)).map(|(_, d)| d.as_secs_f64() * 1e3).collect();
        ok.sort_by(f64::total_cmp);
        if ok.is_empty() {
            return f64::NAN;
        }
        ok[((ok.len() - 1) as f64 * q).round() as usize]
    }
}

fn load(addr: SocketAddr, path: &'static str, clients: u32, stop: &Arc<AtomicBool>) -> Vec<thread::JoinHandle<Seen>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let status = http::get(addr, path, &[]).map_or(0, |r| r.status);
                    seen.push((status, started.elapsed()));
                    if status != 200 {
                        // A refused client waits a little before its next try.
                        thread::sleep(Duration::from_millis(50));
                    }
                }
                Seen(seen)
            })
        })
        .collect()
}

fn join(handles: Vec<thread::JoinHandle<Seen>>) -> Seen {
    Seen(handles.into_iter().flat_map(|h| h.join().map(|s| s.0).unwrap_or_default()).collect())
}

/// One configuration's run: a second of light load, then the overload for `seconds`.
fn run_one(filters: Vec<Value>, seconds: u32, low_clients: u32) -> Result<(Seen, Seen, f64), BenchError> {
    let backend =
        Backend::start(Behavior::Loaded { base: Duration::from_millis(10), per_request: Duration::from_millis(25) })
            .map_err(err)?;
    let mut r = route("/", "backend");
    r["route"]["timeout"] = json!("2s");
    let mut b = Bootstrap::new();
    for f in filters {
        b = b.filter(f);
    }
    let cfg = b.route(r).cluster(cluster("backend", backend.addr())).build();
    let envoy = Envoy::start_quiet(&cfg, 2).map_err(err)?;
    let addr = envoy.main().map_err(err)?;
    let warm_stop = Arc::new(AtomicBool::new(false));
    let warm = load(addr, "/checkout", 1, &warm_stop);
    thread::sleep(Duration::from_secs(1));
    warm_stop.store(true, Ordering::SeqCst);
    join(warm);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let critical = load(addr, "/checkout", 4, &stop);
    let low = load(addr, "/batch", low_clients, &stop);
    thread::sleep(Duration::from_secs(u64::from(seconds)));
    stop.store(true, Ordering::SeqCst);
    let (critical, low) = (join(critical), join(low));
    Ok((critical, low, started.elapsed().as_secs_f64()))
}

/// The scenario's table and figures.
pub fn overload(plan: &Plan) -> Result<Value, BenchError> {
    let seconds = (plan.seconds * 2).max(2);
    let low_clients = plan.connections.max(8);
    println!(
        "Overload: a backend answering in 10 ms alone and 25 ms more per request it holds; {} s of 4 critical \
         and {low_clients} low-priority clients back to back, after 1 s of light load (2 workers)",
        seconds
    );
    println!("| configuration | goodput 2xx/s | critical 2xx/s | critical p50 ms | critical p99 ms | low 2xx/s | low refused |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let configurations: Vec<(&str, Vec<Value>)> = vec![
        ("no limit", vec![]),
        ("concurrency stage, upstream_guard.wasm", vec![module_filter(Shape::Wasm, "upstream_guard", &stage_config())]),
        (
            "concurrency stage, libupstream_guard.so",
            vec![module_filter(Shape::Native, "upstream_guard", &stage_config())],
        ),
        ("Envoy adaptive_concurrency (gradient)", vec![native_adaptive_concurrency()]),
    ];
    let mut out = Vec::new();
    for (name, filters) in configurations {
        let (critical, low, elapsed) = run_one(filters, seconds, low_clients)?;
        let per_s = |n: usize| n as f64 / elapsed.max(0.001);
        let refused = low.0.iter().filter(|(s, _)| *s == 503).count();
        let row = json!({
            "configuration": name,
            "goodput_rps": per_s(critical.ok() + low.ok()),
            "critical_rps": per_s(critical.ok()),
            "critical_p50_ms": critical.quantile_ms(0.5),
            "critical_p99_ms": critical.quantile_ms(0.99),
            "low_rps": per_s(low.ok()),
            "low_refused": refused,
        });
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {refused} |",
            per_s(critical.ok() + low.ok()),
            per_s(critical.ok()),
            critical.quantile_ms(0.5),
            critical.quantile_ms(0.99),
            per_s(low.ok()),
        );
        out.push(row);
    }
    println!();
    Ok(Value::Array(out))
}
