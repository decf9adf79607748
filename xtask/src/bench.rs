//! `cargo xtask bench`: what each filter costs, measured in one run on this machine.
//!
//! - **Per-request cost in Envoy** ([`crate::bench_cost`]): throughput, latency, instructions per
//!   request (callgrind) and resident memory for passthrough, the floor (an empty SDK filter),
//!   every module and stage, the chain of four filters, and Envoy's native equivalents.
//! - **Circuit breaker latency**: a request to a hanging upstream vs a request refused while open.
//! - **Failover**: steady load, the primary killed mid-run; failed requests and time to failover,
//!   native (aggregate cluster + health checks + outlier detection) vs the health router.
//! - **Global rate limit**: the latency a global rule's call to a rate limit service adds (one
//!   connection, p50/p99) against a local rule, and throughput against Envoy's native
//!   `envoy.filters.http.ratelimit` asking the same service (`ug-rls-server` on a local Redis).
//! - **Harness micro-benchmarks**: ns, host calls and guest allocations per request round per
//!   filter; the first load of each filter (compiling it) and a cached load (VM start +
//!   configure of an already-compiled module). `bench --harness` runs only these.
//! - **LLM stage** (`upstream_guard.wasm` with an `llm` section, Envoy's buffer filter after it):
//!   time to the first byte of a streamed answer and request latency by body size, against the
//!   same route without the stage and with Envoy's buffer filter alone (which the stage needs);
//!   and the token accounting error over a streamed run (tokens charged minus tokens the provider
//!   reported). `bench --llm` runs only these.
//!
//! - **Overload** ([`crate::bench_overload`]): goodput and the critical class's latency against a
//!   backend whose latency grows with its concurrency, with no limit, the concurrency stage in
//!   each shape, and Envoy's `adaptive_concurrency`. `bench --overload` runs only this.
//!
//! Figures only: nothing here fails on a number.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_harness::backend::{Backend, Behavior};
use test_harness::bootstrap::{
    buffer_filter, cluster, header_rate_limit, http2_cluster, llm_route, native_ratelimit_filter, rate_limited_route,
    route, wasm_filter, Bootstrap,
};
use test_harness::envoy::Envoy;
use test_harness::host::Host;
use test_harness::llm_backend::{FakeLlm, LlmReply};
use test_harness::redis::Redis;
use test_harness::{http, paths};

/// A bench failure.
pub use crate::TaskError as BenchError;

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

/// How long and how often.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub rounds: u32,
    pub seconds: u32,
    pub connections: u32,
    pub failover_rps: u32,
    pub failover_seconds: u32,
    pub harness_rounds: u32,
    /// Requests per measured LLM configuration.
    pub llm_requests: u32,
    /// Requests counted by callgrind per configuration (0: skip the instruction counts).
    pub callgrind_requests: u32,
}

impl Plan {
    /// The full benchmark (a few minutes).
    pub fn full() -> Plan {
        Plan {
            rounds: 3,
            seconds: 5,
            connections: 32,
            failover_rps: 500,
            failover_seconds: 20,
            harness_rounds: 5000,
            llm_requests: 300,
            callgrind_requests: 2000,
        }
    }
    /// A smoke run that keeps the command working (seconds).
    pub fn smoke() -> Plan {
        Plan {
            rounds: 1,
            seconds: 1,
            connections: 4,
            failover_rps: 100,
            failover_seconds: 4,
            harness_rounds: 200,
            llm_requests: 20,
            callgrind_requests: 0,
        }
    }
}

fn wasm(name: &str) -> Result<std::path::PathBuf, BenchError> {
    paths::wasm_path(name).map_err(err)
}

use crate::bench_cost::{cb_config, diag_config, hr_config, rl_config};

/// One wrk run over `connections` connections for `seconds`, with extra request headers.
fn wrk_with(
    addr: SocketAddr,
    seconds: u32,
    connections: u32,
    headers: &[&str],
) -> Result<(f64, f64, f64, u64), BenchError> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!("http://{addr}/"))
        .output()
        .map_err(|e| BenchError(format!("wrk: {e} (cargo xtask setup installs it)")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let r = parse_wrk(&text)?;
    Ok((r.rps, r.p50_ms, r.p99_ms, r.non2xx))
}

/// What one wrk run printed: requests/s, p50 and p99 latency in ms, non-2xx/3xx responses.
pub(crate) struct WrkRun {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non2xx: u64,
}

/// Reads wrk's `--latency` output (the latency figures in ms whatever unit wrk chose).
pub(crate) fn parse_wrk(text: &str) -> Result<WrkRun, BenchError> {
    let num = |prefix: &str| -> Option<f64> {
        let v = text.lines().find_map(|l| l.trim().strip_prefix(prefix))?.split_whitespace().next()?;
        let (n, scale) = if let Some(n) = v.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = v.strip_suffix("us") {
            (n, 0.001)
        } else if let Some(n) = v.strip_suffix('s') {
            (n, 1000.0)
        } else {
            (v, 1.0)
        };
        n.parse::<f64>().ok().map(|x| x * scale)
    };
    let rps = num("Requests/sec:").ok_or_else(|| BenchError(format!("wrk printed no rate:\n{text}")))?;
    let non2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok(WrkRun { rps, p50_ms: num("50%").unwrap_or(f64::NAN), p99_ms: num("99%").unwrap_or(f64::NAN), non2xx })
}

/// Runs everything and returns the JSON results; prints the tables as it goes.
pub fn run(plan: Plan) -> Result<Value, BenchError> {
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                .split(':')
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()))
            .unwrap_or_default()
    );
    println!("upstream-guard benchmarks on {machine}\n");
    let throughput = crate::bench_cost::run(&plan)?;
    let breaker = breaker_latency()?;
    let failover = failover(&plan)?;
    let global = global_rate_limit(&plan)?;
    let harness = harness_micro(&plan)?;
    let llm = llm(&plan)?;
    let overload = crate::bench_overload::overload(&plan)?;
    let sizes: Vec<Value> = crate_filters()
        .iter()
        .map(|f| json!({"filter": f, "bytes": std::fs::metadata(paths::wasm_path(f).unwrap_or_default()).map(|m| m.len()).unwrap_or(0)}))
        .collect();
    Ok(json!({"machine": machine, "plan": format!("{plan:?}"), "throughput": throughput, "breaker_latency": breaker,
              "failover": failover, "global_rate_limit": global, "harness": harness, "llm": llm, "overload": overload, "wasm_sizes": sizes}))
}

fn crate_filters() -> Vec<&'static str> {
    upstream_guard::stages::singles().map(|s| s.section).collect()
}

fn breaker_latency() -> Result<Value, BenchError> {
    let hanging = Backend::start(Behavior::Hang).map_err(err)?;
    let mut r = route("/", "backend");
    r["route"]["timeout"] = json!("1s");
    let cfg = Bootstrap::new()
        .filter(wasm_filter(
            "circuit_breaker",
            &wasm("circuit_breaker")?,
            &json!({"failure": {"consecutive": 3}, "open": {"base": "60s"}}),
        ))
        .route(r)
        .cluster(cluster("backend", hanging.addr()))
        .build();
    let envoy = Envoy::start_quiet(&cfg, 1).map_err(err)?;
    let addr = envoy.main().map_err(err)?;
    let mut hanging_ms = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        http::get(addr, "/", &[]).map_err(err)?;
        hanging_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut open_ms = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let r = http::get(addr, "/", &[]).map_err(err)?;
        if r.header("x-upstream-guard-circuit") == Some("open") {
            open_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    open_ms.sort_by(f64::total_cmp);
    let hang = hanging_ms.iter().sum::<f64>() / hanging_ms.len() as f64;
    let p50 = open_ms.get(open_ms.len() / 2).copied().unwrap_or(f64::NAN);
    let p99 = open_ms.get(open_ms.len() * 99 / 100).copied().unwrap_or(f64::NAN);
    println!("Circuit breaker: a request to a hanging upstream (route timeout 1 s) vs one refused while open");
    println!("| request | latency ms |");
    println!("|---|---:|");
    println!("| to the hanging upstream (before the trip) | {hang:.1} |");
    println!("| refused while open, p50 | {p50:.3} |");
    println!("| refused while open, p99 | {p99:.3} |");
    println!("speed-up: {:.0}x\n", hang / p50);
    Ok(json!({"hanging_ms": hang, "open_p50_ms": p50, "open_p99_ms": p99, "open_samples": open_ms.len()}))
}

/// Steady load at `rps` for `secs`, the primary killed at a quarter of the run.
fn failover_run(envoy: &Envoy, primary: &Backend, plan: &Plan) -> Result<(u64, u64, f64), BenchError> {
    let addr = envoy.main().map_err(err)?;
    let total = u64::from(plan.failover_rps) * u64::from(plan.failover_seconds);
    let failures = Arc::new(AtomicU64::new(0));
    let last_failure_ns = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(plan.failover_rps));
    let kill_at = Duration::from_secs(u64::from(plan.failover_seconds) / 4);
    let threads = 16u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (failures, last, _done) = (failures.clone(), last_failure_ns.clone(), done.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while i < total {
                    let due = interval * i as u32;
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let ok = http::request(addr, "GET", "/", &[], Duration::from_secs(5))
                        .map(|r| r.status == 200)
                        .unwrap_or(false);
                    if !ok {
                        failures.fetch_add(1, Ordering::SeqCst);
                        last.fetch_max(start.elapsed().as_nanos() as u64, Ordering::SeqCst);
                    }
                    i += threads;
                }
            })
        })
        .collect();
    std::thread::sleep(kill_at);
    primary.kill();
    for h in handles {
        let _ = h.join();
    }
    done.store(true, Ordering::SeqCst);
    let last = last_failure_ns.load(Ordering::SeqCst);
    let to_failover = if last == 0 { 0.0 } else { (last as f64 / 1e9 - kill_at.as_secs_f64()).max(0.0) };
    Ok((total, failures.load(Ordering::SeqCst), to_failover))
}

fn failover(plan: &Plan) -> Result<Value, BenchError> {
    // no_traffic_interval = interval: otherwise Envoy checks a cluster it thinks idle only every 60 s.
    let hc = json!({"timeout": "0.25s", "interval": "1s", "no_traffic_interval": "1s", "unhealthy_threshold": 2,
                    "healthy_threshold": 2, "http_health_check": {"path": "/healthz"}});
    // (a) Envoy native: an aggregate cluster over two health-checked clusters with outlier detection.
    let (p1, s1) = (Backend::ok().map_err(err)?, Backend::ok().map_err(err)?);
    let mut primary = cluster("primary", p1.addr());
    let mut secondary = cluster("secondary", s1.addr());
    for c in [&mut primary, &mut secondary] {
        c["health_checks"] = json!([hc]);
        // Configured to fail over as fast as Envoy can: gateway failures (refused connections)
        // enforced, no panic routing to a cluster whose hosts are all down.
        c["outlier_detection"] = json!({"consecutive_5xx": 3, "consecutive_gateway_failure": 3,
            "enforcing_consecutive_gateway_failure": 100, "base_ejection_time": "10s", "interval": "1s"});
        c["common_lb_config"] = json!({"healthy_panic_threshold": {"value": 0}});
    }
    let aggregate = json!({"name": "both", "connect_timeout": "1s", "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {"name": "envoy.clusters.aggregate", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig", "clusters": ["primary", "secondary"]}}});
    let native_cfg =
        Bootstrap::new().route(route("/", "both")).cluster(primary).cluster(secondary).cluster(aggregate).build();
    let native = Envoy::start_quiet(&native_cfg, 1).map_err(err)?;
    let (n_total, n_fail, n_time) = failover_run(&native, &p1, plan)?;
    drop(native);
    // (b) the health router, same intervals and thresholds, passive ejection after 3 failures.
    let (p2, s2) = (Backend::ok().map_err(err)?, Backend::ok().map_err(err)?);
    let check = json!({"path": "/healthz", "interval": "1s", "timeout": "250ms", "unhealthy_threshold": 2, "healthy_threshold": 2});
    let cfg = json!({"upstreams": [{"cluster": "primary", "health_check": check}, {"cluster": "secondary", "health_check": check}],
                     "passive": {"consecutive_failures": 3, "ejection": "10s"}});
    let ours_cfg = Bootstrap::new()
        .filter(wasm_filter("health_router", &wasm("health_router")?, &cfg))
        .route(json!({"match": {"prefix": "/"}, "route": {"cluster_header": "x-upstream-cluster"}}))
        .cluster(cluster("primary", p2.addr()))
        .cluster(cluster("secondary", s2.addr()))
        .build();
    let ours = Envoy::start_quiet(&ours_cfg, 1).map_err(err)?;
    let (o_total, o_fail, o_time) = failover_run(&ours, &p2, plan)?;
    let _ = (s1, s2);
    println!(
        "Failover: {} req/s for {} s, primary killed at {} s (checks every 1 s, thresholds 2, ejection after 3 failures)",
        plan.failover_rps,
        plan.failover_seconds,
        plan.failover_seconds / 4
    );
    println!("| setup | requests | failed | last failure after kill (s) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| Envoy native (aggregate cluster, health checks, outlier detection) | {n_total} | {n_fail} | {n_time:.2} |"
    );
    println!("| health_router | {o_total} | {o_fail} | {o_time:.2} |\n");
    Ok(json!({"native": {"requests": n_total, "failed": n_fail, "time_to_failover_s": n_time},
              "health_router": {"requests": o_total, "failed": o_fail, "time_to_failover_s": o_time}}))
}

/// A global rule against a local rule and against Envoy's native rate limit filter, all keyed on
/// `x-tenant` with a limit never reached, the global ones asking one `ug-rls-server` on Redis.
/// Latency: one connection (no queueing), so the p50/p99 difference is what the check adds.
/// Throughput: `plan.connections` connections, interleaved rounds as in the main table.
/// Then a flood over the limit: what the local pre-check (a refusal by the service remembered
/// for `cache_over_limit`) saves in service calls and throughput, against no pre-check and native.
pub fn global_rate_limit(plan: &Plan) -> Result<Value, BenchError> {
    use ug_rls_server::{LimitSpec, RlsServer};
    let redis = Redis::start().map_err(err)?;
    let limits = [
        LimitSpec::new("edge", 1_000_000_000, 3600).any("tenant"),
        LimitSpec::new("edge", 100, 3600).value("tenant", "flood"),
    ];
    let rls = RlsServer::start(&redis.url(), &limits).map_err(err)?;
    let backend = Backend::ok().map_err(err)?;
    let limit = json!({"requests": 1_000_000_000u64, "per": "1h"});
    let local = json!({"rules": [{"name": "tenant", "key": [{"header": "x-tenant"}], "limit": limit}]});
    let global_with = |cache: &str| {
        json!({"rules": [{"name": "tenant", "key": [{"header": "x-tenant"}], "limit": limit, "global": true,
            "service": {"cluster": "rls", "domain": "edge", "timeout": "1s", "descriptor_keys": ["tenant"],
                        "cache_over_limit": cache}}]})
    };
    let global = global_with("10s");
    let with = |filter: Value, route: Value| {
        Bootstrap::new()
            .filter(filter)
            .route(route)
            .cluster(cluster("backend", backend.addr()))
            .cluster(http2_cluster("rls", rls.addr()))
            .build()
    };
    let rows = [
        (
            "local rule (rate_limiter)",
            with(wasm_filter("rate_limiter", &wasm("rate_limiter")?, &local), route("/", "backend")),
        ),
        (
            "global rule (rate_limiter)",
            with(wasm_filter("rate_limiter", &wasm("rate_limiter")?, &global), route("/", "backend")),
        ),
        (
            "native envoy.filters.http.ratelimit",
            with(
                native_ratelimit_filter("edge", "rls", Duration::from_secs(1), false),
                rate_limited_route("/", "backend", json!([header_rate_limit("x-tenant", "tenant")])),
            ),
        ),
    ];
    let header = ["x-tenant: bench"];
    let mut envoys = Vec::new();
    for (_, cfg) in &rows {
        let e = Envoy::start_quiet(cfg, 1).map_err(err)?;
        let addr = e.main().map_err(err)?;
        for _ in 0..20 {
            let _ = http::get(addr, "/", &[("x-tenant", "bench")]);
        }
        envoys.push((e, addr));
    }
    let mut latency: Vec<Vec<(f64, f64, f64, u64)>> = vec![Vec::new(); rows.len()];
    let mut load: Vec<Vec<(f64, f64, f64, u64)>> = vec![Vec::new(); rows.len()];
    for round in 0..plan.rounds {
        for (i, (_, addr)) in envoys.iter().enumerate() {
            latency[i].push(wrk_with(*addr, plan.seconds, 1, &header)?);
            let s = wrk_with(*addr, plan.seconds, plan.connections, &header)?;
            eprintln!("  round {} {:<42} {:>9.0} req/s", round + 1, rows[i].0, s.0);
            load[i].push(s);
        }
    }
    let calls = rls.stats();
    let mean = |v: &[(f64, f64, f64, u64)], f: fn(&(f64, f64, f64, u64)) -> f64| {
        v.iter().map(f).sum::<f64>() / v.len().max(1) as f64
    };
    let native_rps = mean(&load[2], |s| s.0);
    println!(
        "Global rate limit: one rule keyed on x-tenant, never reached; ug-rls-server on Redis, loopback; \
         Envoy --concurrency 1; latency with wrk -c1, throughput with wrk -c{} -d{}s, {} interleaved rounds",
        plan.connections, plan.seconds, plan.rounds
    );
    println!("| configuration | p50 ms (1 connection) | p99 ms (1 connection) | req/s | p50 ms | p99 ms | vs native |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut out = Vec::new();
    for (i, (name, _)) in rows.iter().enumerate() {
        let (l50, l99) = (mean(&latency[i], |s| s.1), mean(&latency[i], |s| s.2));
        let (rps, p50, p99) = (mean(&load[i], |s| s.0), mean(&load[i], |s| s.1), mean(&load[i], |s| s.2));
        let non2xx: u64 = latency[i].iter().chain(&load[i]).map(|s| s.3).sum();
        println!("| {name} | {l50:.3} | {l99:.3} | {rps:.0} | {p50:.2} | {p99:.2} | {:.3} |", rps / native_rps);
        out.push(json!({"configuration": name, "latency_p50_ms": l50, "latency_p99_ms": l99, "rps": rps,
                        "p50_ms": p50, "p99_ms": p99, "ratio_to_native": rps / native_rps, "non_2xx": non2xx}));
    }
    let added = |f: fn(&(f64, f64, f64, u64)) -> f64| mean(&latency[1], f) - mean(&latency[0], f);
    let (added50, added99) = (added(|s| s.1), added(|s| s.2));
    println!(
        "A global check adds {added50:.3} ms at p50 and {added99:.3} ms at p99 to a local rule; the service answered \
         {} calls ({} errors).\n",
        calls.calls, calls.errors
    );

    // Over the limit: every request is refused; how many reach the service?
    let no_precheck =
        with(wasm_filter("rate_limiter", &wasm("rate_limiter")?, &global_with("0s")), route("/", "backend"));
    let e = Envoy::start_quiet(&no_precheck, 1).map_err(err)?;
    let addr = e.main().map_err(err)?;
    let native = envoys.remove(2);
    let flood_rows = [
        ("global rule, pre-check (cache_over_limit 10s)", envoys.remove(1)),
        ("global rule, no pre-check (cache_over_limit 0s)", (e, addr)),
        ("native envoy.filters.http.ratelimit", native),
    ];
    for _ in 0..101 {
        let _ = http::get(flood_rows[2].1 .1, "/", &[("x-tenant", "flood")]);
    }
    let flood = ["x-tenant: flood"];
    let mut flood_samples: Vec<Vec<(f64, u64, u64)>> = vec![Vec::new(); flood_rows.len()];
    for _ in 0..plan.rounds {
        for (i, (_, (_, addr))) in flood_rows.iter().enumerate() {
            let before = rls.stats().calls;
            let (rps, _, _, non2xx) = wrk_with(*addr, plan.seconds, plan.connections, &flood)?;
            flood_samples[i].push((rps, non2xx, rls.stats().calls - before));
        }
    }
    println!("Over the limit (every request refused), wrk -c{} -d{}s", plan.connections, plan.seconds);
    println!("| configuration | req/s | service calls per refused request |");
    println!("|---|---:|---:|");
    let mut flood_out = Vec::new();
    for (i, (name, _)) in flood_rows.iter().enumerate() {
        let v = &flood_samples[i];
        let rps = v.iter().map(|s| s.0).sum::<f64>() / v.len().max(1) as f64;
        let (refused, calls): (u64, u64) = v.iter().fold((0, 0), |(r, c), s| (r + s.1, c + s.2));
        let per = calls as f64 / refused.max(1) as f64;
        println!("| {name} | {rps:.0} | {per:.4} |");
        flood_out.push(json!({"configuration": name, "rps": rps, "refused": refused, "service_calls": calls}));
    }
    println!();
    Ok(json!({"rows": out, "added_p50_ms": added50, "added_p99_ms": added99, "service_calls": calls.calls,
              "service_errors": calls.errors, "over_limit": flood_out}))
}

/// The harness micro-benchmarks alone (what `bench --harness` runs).
pub fn harness_micro(plan: &Plan) -> Result<Value, BenchError> {
    println!("Harness (wasmtime): one request round = create stream, request headers, response headers, log, done");
    println!("| filter | ns per round | host calls per round | guest allocations per round | first load ms (compile) | cached load µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    let configs = [
        ("diagnostics", diag_config()),
        ("rate_limiter", rl_config()),
        ("circuit_breaker", cb_config()),
        ("health_router", hr_config()),
    ];
    let mut out = Vec::new();
    for (name, cfg) in configs {
        let path = wasm(name)?;
        // The first load in this process compiles (the on-disk cache is bypassed); later loads
        // reuse the compiled module: instantiate, start and configure one VM.
        let t = Instant::now();
        Host::new().no_disk_cache().load(&path, cfg.clone()).map_err(err)?;
        let first_ms = t.elapsed().as_secs_f64() * 1e3;
        let loads = 20;
        let t = Instant::now();
        for _ in 0..loads {
            Host::new().load(&path, cfg.clone()).map_err(err)?;
        }
        let cached_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(loads);
        let host = Host::new();
        let p = host.load(&path, cfg.clone()).map_err(err)?;
        let round = || -> Result<(), BenchError> {
            let mut s = p
                .worker(0)
                .http_stream()
                .property("source.address", "10.0.0.1:1")
                .property("xds.cluster_name", "backend");
            s.request_headers(&[(":path", "/"), (":method", "GET"), (":authority", "x")], true).map_err(err)?;
            s.set_property_u64("response.code", 200);
            s.response_headers(&[(":status", "200")], true).map_err(err)?;
            s.log().map_err(err)?;
            s.finish().map_err(err)
        };
        for _ in 0..100 {
            round()?;
        }
        p.worker(0).reset_host_calls();
        let t = Instant::now();
        for _ in 0..plan.harness_rounds {
            round()?;
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(plan.harness_rounds);
        let calls = p.worker(0).host_calls();
        let per_round = |n: u64| n as f64 / f64::from(plan.harness_rounds);
        let (host_calls, allocations) = (per_round(calls.total()), per_round(calls.allocations));
        println!("| {name} | {ns:.0} | {host_calls:.1} | {allocations:.1} | {first_ms:.0} | {cached_us:.0} |");
        out.push(json!({"filter": name, "ns_per_round": ns, "host_calls_per_round": host_calls,
                        "guest_allocations_per_round": allocations, "first_load_ms": first_ms,
                        "cached_load_us": cached_us, "by_name": calls.by_name}));
    }
    println!();
    Ok(Value::Array(out))
}

/// Milliseconds at quantile `q` of sorted samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// A chat request for model `m` padded to about `size` bytes.
fn llm_body(size: usize, stream: bool) -> Vec<u8> {
    let pad = "x".repeat(size.saturating_sub(100));
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": pad}]}).to_string().into_bytes()
}

/// The LLM stage against the same route without it (figures only).
pub fn llm(plan: &Plan) -> Result<Value, BenchError> {
    let fake = FakeLlm::start("provider", LlmReply::json(12, 30)).map_err(err)?;
    let without = Bootstrap::new().route(route("/", "provider")).cluster(cluster("provider", fake.addr())).build();
    let suite = json!({"llm": {"providers": [{"cluster": "provider"}], "models": [{"name": "m", "providers": ["provider"]}],
        "budgets": [{"name": "bench", "key": [{"constant": "all"}], "tokens": 1_000_000_000_000u64, "per": "1h"}]}});
    let with = Bootstrap::new()
        .filter(wasm_filter("upstream_guard", &wasm("upstream_guard")?, &suite))
        .filter(buffer_filter(1 << 20))
        .route(llm_route("/v1/", "provider"))
        .cluster(cluster("provider", fake.addr()))
        .build();
    let buffered = Bootstrap::new()
        .filter(buffer_filter(1 << 20))
        .route(route("/", "provider"))
        .cluster(cluster("provider", fake.addr()))
        .build();
    let envoys = [
        Envoy::start_quiet(&without, 1).map_err(err)?,
        Envoy::start_quiet(&buffered, 1).map_err(err)?,
        Envoy::start_quiet(&with, 1).map_err(err)?,
    ];
    let addrs = [envoys[0].main().map_err(err)?, envoys[1].main().map_err(err)?, envoys[2].main().map_err(err)?];
    let path = "/v1/chat/completions";
    let n = plan.llm_requests.max(2) as usize;
    let once = |addr: SocketAddr, body: &[u8]| -> Result<(f64, f64), BenchError> {
        let t = http::post_timed(addr, path, &[], body, Duration::from_secs(10)).map_err(err)?;
        if t.response.status != 200 {
            return Err(BenchError(format!("LLM bench: HTTP {}: {}", t.response.status, t.response.text())));
        }
        let first = t.first_body_byte_at.map_or(f64::NAN, |f| (f - t.sent_at).as_secs_f64() * 1e3);
        Ok((first, t.sent_at.elapsed().as_secs_f64() * 1e3))
    };
    for addr in addrs {
        for _ in 0..10 {
            once(addr, &llm_body(200, true))?;
        }
    }

    println!(
        "LLM stage: Envoy 1.40, --concurrency 1, {n} sequential requests per row and configuration, interleaved; \
         p50 (p99) ms"
    );
    println!("| request | without the stage | Envoy's buffer filter only | with the stage (+ buffer filter) | added by the stage | of which the module's body read and scan |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let cases: [(&str, usize, bool); 4] = [
        ("streamed answer, time to first byte (200 B body)", 200, true),
        ("JSON answer, whole response (1 KiB body)", 1 << 10, false),
        ("JSON answer, whole response (64 KiB body)", 64 << 10, false),
        ("JSON answer, whole response (512 KiB body)", 512 << 10, false),
    ];
    for (name, size, stream) in cases {
        let body = llm_body(size, stream);
        let mut samples = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..n {
            for (i, addr) in addrs.iter().enumerate() {
                let (first, total) = once(*addr, &body)?;
                samples[i].push(if stream { first } else { total });
            }
        }
        let [a, f, b] = samples.map(sorted);
        let q = |v: &[f64]| (quantile(v, 0.5), quantile(v, 0.99));
        let ((a50, a99), (f50, f99), (b50, b99)) = (q(&a), q(&f), q(&b));
        println!(
            "| {name} | {a50:.2} ({a99:.2}) | {f50:.2} ({f99:.2}) | {b50:.2} ({b99:.2}) | {:.2} | {:.2} |",
            b50 - a50,
            b50 - f50
        );
        rows.push(json!({"request": name, "body_bytes": size, "streamed": stream,
                         "without_p50_ms": a50, "without_p99_ms": a99, "buffer_only_p50_ms": f50, "buffer_only_p99_ms": f99,
                         "with_p50_ms": b50, "with_p99_ms": b99, "added_p50_ms": b50 - a50, "module_p50_ms": b50 - f50}));
    }
    println!();

    // Token accounting over a streamed run, 8 clients at once.
    let reported_before = fake.tokens_reported();
    let charged_before = envoys[2].stat("upstream_guard.llm.budget.bench.charged_tokens").map_err(err)?.unwrap_or(0);
    let addr = addrs[2];
    let per_thread = (n / 8).max(1);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || -> Result<(), BenchError> {
                for _ in 0..per_thread {
                    let r = http::post(addr, path, &[], &llm_body(200, true)).map_err(err)?;
                    if r.status != 200 || !r.text().contains("total_tokens") {
                        return Err(BenchError(format!("streamed run: HTTP {}", r.status)));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| BenchError("a client thread panicked".into()))??;
    }
    let reported = fake.tokens_reported() - reported_before;
    let charged =
        envoys[2].stat("upstream_guard.llm.budget.bench.charged_tokens").map_err(err)?.unwrap_or(0) - charged_before;
    let requests = per_thread * 8;
    println!("Token accounting, streamed run: {requests} requests from 8 concurrent clients");
    println!("| tokens reported by the provider | tokens charged to the budget | error |");
    println!("|---:|---:|---:|");
    println!("| {reported} | {charged} | {} |\n", charged as i64 - reported as i64);
    Ok(json!({"latency": rows,
              "accounting": {"requests": requests, "reported": reported, "charged": charged,
                             "error": charged as i64 - reported as i64}}))
}

/// Writes `results` to `target/bench/results.json`.
pub fn save(results: &Value) -> Result<std::path::PathBuf, BenchError> {
    let dir = paths::target_dir().join("bench");
    std::fs::create_dir_all(&dir).map_err(err)?;
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(results).map_err(err)?).map_err(err)?;
    let _ = Path::new(&path);
    Ok(path)
}

#[cfg(test)]
mod wrk_tests {
    use super::parse_wrk;

    #[test]
    fn wrk_figures_are_read_in_milliseconds_whatever_unit_wrk_chose() {
        let text = "Running 5s test @ http://127.0.0.1:1/\n  Latency Distribution\n     50%  812.00us\n     \
                    99%    2.40ms\n  Non-2xx or 3xx responses: 7\nRequests/sec:  23411.52\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!((r.rps, r.p50_ms, r.p99_ms, r.non2xx), (23411.52, 0.812, 2.4, 7));
        assert!(parse_wrk("no figures").is_err());
    }
}
