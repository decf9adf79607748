//! What each module costs per request in real Envoy, against passthrough and against the floor (an
//! empty SDK filter: what any wasm filter costs before it does anything).
//!
//! Three figures per configuration, measured in one run:
//! - **throughput** with `wrk` (keep-alive, one Envoy worker), rounds interleaved over every row so
//!   that drift hits all rows alike; Envoy pinned to its own core and the backend (a second Envoy
//!   answering with `direct_response`, far lighter than the proxy) and `wrk` to the other, on a
//!   machine with two or more cores;
//! - **instructions per request**, counted by callgrind over a fixed number of requests after
//!   warm-up: repeatable to a fraction of a percent whatever else the machine is doing, which
//!   makes small differences visible that throughput on a shared 2-core machine hides;
//! - **resident memory** two seconds after start, at one worker, and at four for the shapes a mesh
//!   operator compares.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use test_harness::bootstrap::{cluster, dynamic_module_filter, route, wasm_filter, Bootstrap};
use test_harness::envoy::{Envoy, Launch};
use test_harness::{http, paths};

use crate::bench::{BenchError, Plan};

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

fn wasm(name: &str) -> Result<PathBuf, BenchError> {
    paths::wasm_path(name).map_err(err)
}

/// The configurations of the benchmark rows (shared with the harness rows and the README).
pub fn rl_config() -> Value {
    json!({"rules": [{"name": "all", "key": ["client_ip"], "limit": {"requests": 1_000_000_000u64, "per": "1s"}}]})
}
/// Health router: one upstream, active checks every second.
pub fn hr_config() -> Value {
    json!({"upstreams": [{"cluster": "backend", "health_check": {"path": "/healthz", "interval": "1s"}}]})
}
/// Circuit breaker: the default consecutive-failure policy.
pub fn cb_config() -> Value {
    json!({"failure": {"consecutive": 5}})
}
/// Diagnostics: loopback trusted.
pub fn diag_config() -> Value {
    json!({"trusted_cidrs": ["127.0.0.1/32"]})
}

fn section(policy: &str) -> Value {
    match policy {
        "diagnostics" => diag_config(),
        "rate_limiter" => rl_config(),
        "health_router" => hr_config(),
        "circuit_breaker" => cb_config(),
        _ => json!({}),
    }
}

/// One row: a name, the HTTP filters in front of the router, and what the route needs.
struct Row {
    name: String,
    filters: Vec<Value>,
    header_route: bool,
    cluster_extra: Option<Value>,
}

fn filter(name: &str, module: &str, config: &Value) -> Result<Value, BenchError> {
    let mut f = wasm_filter(name, &wasm(module)?, config);
    // Distinct VM ids: chained filters get a VM each, as separate WasmPlugins would.
    f["typed_config"]["config"]["vm_config"]["vm_id"] = json!(name);
    Ok(f)
}

/// The stages that decide at the request headers: every single-policy stage of the core's list
/// (the llm stage needs a body and a provider, and has rows of its own in the full bench).
fn header_stages() -> Vec<&'static str> {
    upstream_guard::stages::singles().map(|s| s.section).collect()
}

/// Row names other tables refer to.
const CHAINED: &str = "the single-policy filters chained";
const ALL_WASM: &str = "upstream_guard.wasm, all header stages";
const ALL_NATIVE: &str = "libupstream_guard.so (dynamic module), all header stages";

fn rows() -> Result<Vec<Row>, BenchError> {
    let policies = header_stages();
    let row = |name: &str, filters: Vec<Value>, header_route: bool| Row {
        name: name.to_string(),
        filters,
        header_route,
        cluster_extra: None,
    };
    let mut out = vec![
        row("passthrough", vec![], false),
        row("floor: empty SDK filter", vec![filter("floor", "floor", &json!({}))?], false),
        row(
            "four empty SDK filters chained",
            (0..4).map(|i| filter(&format!("floor{i}"), "floor", &json!({}))).collect::<Result<_, _>>()?,
            false,
        ),
    ];
    for &p in &policies {
        out.push(row(p, vec![filter(p, p, &section(p))?], p == "health_router"));
    }
    let all: serde_json::Map<String, Value> = policies.iter().map(|p| (p.to_string(), section(p))).collect();
    out.push(row(ALL_WASM, vec![filter("ug", "upstream_guard", &Value::Object(all.clone()))?], true));
    for &p in &policies {
        let one = json!({ p: section(p) });
        out.push(row(
            &format!("upstream_guard.wasm, {p} only"),
            vec![filter("ug", "upstream_guard", &one)?],
            p == "health_router",
        ));
    }
    // The native shape: the same stages and configurations in the dynamic module.
    out.push(row(ALL_NATIVE, vec![dynamic_module_filter("ug", &Value::Object(all))], true));
    for &p in &policies {
        out.push(row(
            &format!("libupstream_guard.so, {p} only"),
            vec![dynamic_module_filter("ug", &json!({ p: section(p) }))],
            p == "health_router",
        ));
    }
    out.push(row(CHAINED, policies.iter().map(|p| filter(p, p, &section(p))).collect::<Result<_, _>>()?, true));
    let native_rl = json!({
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "native_rl",
            "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"},
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enabled"},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enforced"},
        },
    });
    out.push(row("native local_ratelimit", vec![native_rl], false));
    let mut native_health = row("native health checks + outlier detection", vec![], false);
    native_health.cluster_extra = Some(json!({
        "health_checks": [{"timeout": "0.25s", "interval": "1s", "no_traffic_interval": "1s", "unhealthy_threshold": 2,
                           "healthy_threshold": 2, "http_health_check": {"path": "/healthz"}}],
        "outlier_detection": {"consecutive_5xx": 3, "consecutive_gateway_failure": 3,
                              "enforcing_consecutive_gateway_failure": 100, "base_ejection_time": "10s"},
    }));
    out.push(native_health);
    Ok(out)
}

fn config(r: &Row, backend: SocketAddr) -> Value {
    let mut b = Bootstrap::new();
    for f in &r.filters {
        b = b.filter(f.clone());
    }
    let route = if r.header_route {
        json!({"match": {"prefix": "/"}, "route": {"cluster_header": "x-upstream-cluster"}})
    } else {
        route("/", "backend")
    };
    let mut c = cluster("backend", backend);
    if let Some(extra) = &r.cluster_extra {
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
    }
    b.route(route).cluster(c).build()
}

/// The backend: an Envoy answering 200 "ok" itself, far lighter per request than the proxy.
fn backend_config() -> Value {
    let mut b = Bootstrap::new()
        .route(json!({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}));
    b.clusters.clear();
    b.build()
}

/// CPU sets: the proxy alone on the last core, everything else on the others (no pinning on a
/// single core).
fn cpus() -> Option<(String, String)> {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let taskset = Command::new("taskset").arg("--version").output().is_ok();
    (n >= 2 && taskset).then(|| ((n - 1).to_string(), format!("0-{}", n - 2)))
}

fn pinned(cpus: &Option<String>) -> Vec<String> {
    cpus.as_ref().map(|c| vec!["taskset".into(), "-c".into(), c.clone()]).unwrap_or_default()
}

/// One wrk run: (requests/s, p50 ms, p99 ms).
fn wrk(addr: SocketAddr, plan: &Plan, cpus: &Option<String>) -> Result<(f64, f64, f64), BenchError> {
    let mut cmd = match cpus {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.args(["-c", c, "wrk"]);
            t
        }
        None => Command::new("wrk"),
    };
    let out = cmd
        .args(["-t1", &format!("-c{}", plan.connections), &format!("-d{}s", plan.seconds), "--latency"])
        .arg(format!("http://{addr}/"))
        .output()
        .map_err(|e| BenchError(format!("wrk: {e} (cargo xtask setup installs it)")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let r = crate::bench::parse_wrk(&text)?;
    if r.non2xx > 0 {
        return Err(BenchError(format!("wrk saw failed requests at {addr}:\n{text}")));
    }
    Ok((r.rps, r.p50_ms, r.p99_ms))
}

/// Instructions Envoy executes per request, counted by callgrind over `n` requests after warm-up.
fn instructions_per_request(cfg: &Value, n: u32) -> Result<f64, BenchError> {
    let dir = tempfile::tempdir().map_err(err)?;
    let out = dir.path().join("cg.out");
    let launch = Launch {
        concurrency: 1,
        verbose: false,
        wrapper: vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            "--instr-atstart=no".into(),
            "--smc-check=all-non-file".into(),
            format!("--callgrind-out-file={}", out.display()),
        ],
        ready_timeout: Some(Duration::from_secs(300)),
        log_levels: None,
    };
    let envoy = Envoy::start_launch(cfg, &launch).map_err(err)?;
    let addr = envoy.main().map_err(err)?;
    let hey = |requests: u32| -> Result<(), BenchError> {
        let o = Command::new("hey")
            .args(["-n", &requests.to_string(), "-c", "4", "-t", "30"])
            .arg(format!("http://{addr}/"))
            .output()
            .map_err(|e| BenchError(format!("hey: {e} (cargo xtask setup installs it)")))?;
        let text = String::from_utf8_lossy(&o.stdout);
        if !text.contains(&format!("[200]\t{requests} responses")) {
            return Err(BenchError(format!("not every request under callgrind got a 200:\n{text}")));
        }
        Ok(())
    };
    hey(300)?;
    let control =
        |args: &[&str]| Command::new("callgrind_control").args(args).arg(envoy.pid().to_string()).output().map_err(err);
    control(&["-i", "on"])?;
    hey(n)?;
    // Dump while instrumentation is on: switching it off first zeroes the counters.
    control(&["-d"])?;
    control(&["-i", "off"])?;
    let total = dumped_total(dir.path())?;
    drop(envoy);
    // `UG_CALLGRIND_KEEP=<dir>`: keep the dumps, for `callgrind_annotate` (where the
    // instructions go): one folder per row, `row-1`, `row-2`, ... in the order the rows ran.
    if let Some(keep) = std::env::var_os("UG_CALLGRIND_KEEP") {
        let keep = PathBuf::from(keep);
        let ran = std::fs::read_dir(&keep).map_or(0, |d| d.flatten().filter(|e| e.path().is_dir()).count());
        let keep = keep.join(format!("row-{}", ran + 1));
        let _ = std::fs::create_dir_all(&keep);
        for e in std::fs::read_dir(dir.path()).map_err(err)?.flatten() {
            let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
        }
    }
    Ok(total as f64 / f64::from(n))
}

/// The instruction total of the newest callgrind dump in `dir`.
fn dumped_total(dir: &Path) -> Result<u64, BenchError> {
    for _ in 0..100 {
        let newest = std::fs::read_dir(dir)
            .map_err(err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.parse::<u32>().is_ok()))
            .max_by_key(|p| p.extension().and_then(|e| e.to_str()).and_then(|e| e.parse::<u32>().ok()));
        if let Some(total) = newest.and_then(|p| std::fs::read_to_string(p).ok()).and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))?
                .trim()
                .parse()
                .ok()
        }) {
            return Ok(total);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(BenchError("callgrind wrote no dump".into()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map(|b| format!("{:.1}", b as f64 / 1048576.0)).unwrap_or_else(|| "—".into())
}

/// Runs the rows; prints the tables; returns the figures.
pub fn run(plan: &Plan) -> Result<Value, BenchError> {
    let (proxy_cpus, other_cpus) = match cpus() {
        Some((p, o)) => (Some(p), Some(o)),
        None => (None, None),
    };
    let backend_launch = Launch { concurrency: 1, wrapper: pinned(&other_cpus), ..Launch::default() };
    let backend = Envoy::start_launch(&backend_config(), &backend_launch).map_err(err)?;
    let backend_addr = backend.main().map_err(err)?;
    let rows = rows()?;
    let front = Launch { concurrency: 1, wrapper: pinned(&proxy_cpus), ..Launch::default() };
    let mut envoys = Vec::new();
    for r in &rows {
        let e = Envoy::start_launch(&config(r, backend_addr), &front).map_err(err)?;
        std::thread::sleep(Duration::from_secs(2));
        let rss = e.rss_bytes();
        let addr = e.main().map_err(err)?;
        for _ in 0..50 {
            let _ = http::get(addr, "/", &[]);
        }
        envoys.push((e, addr, rss));
    }
    let mut samples: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); rows.len()];
    for round in 0..plan.rounds {
        for (i, (_, addr, _)) in envoys.iter().enumerate() {
            let s = wrk(*addr, plan, &other_cpus)?;
            eprintln!("  round {} {:<42} {:>9.0} req/s", round + 1, rows[i].name, s.0);
            samples[i].push(s);
        }
    }
    let instructions: Vec<Option<f64>> = if plan.callgrind_requests > 0 {
        let mut v = Vec::new();
        for r in &rows {
            let n = instructions_per_request(&config(r, backend_addr), plan.callgrind_requests)?;
            eprintln!("  callgrind {:<42} {:>9.0} instructions/request", r.name, n);
            v.push(Some(n));
        }
        v
    } else {
        vec![None; rows.len()]
    };
    let rps: Vec<f64> = samples.iter().map(|s| median(s.iter().map(|x| x.0).collect())).collect();
    let (base, floor) = (rps[0], rps[1]);
    let (base_i, floor_i) = (instructions[0], instructions[1]);
    println!(
        "Envoy 1.40, --concurrency 1{}, wrk -t1 -c{} -d{}s, {} interleaved rounds (median); instructions: callgrind over {} requests",
        if proxy_cpus.is_some() { " pinned to its own core" } else { "" },
        plan.connections,
        plan.seconds,
        plan.rounds,
        plan.callgrind_requests
    );
    println!("| configuration | req/s | p50 ms | p99 ms | vs passthrough | vs floor | instructions/request | vs passthrough | vs floor | RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut out = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let p50 = median(samples[i].iter().map(|x| x.1).collect());
        let p99 = median(samples[i].iter().map(|x| x.2).collect());
        let ins = instructions[i];
        // Cost ratios as throughput ratios: passthrough's instructions over this row's.
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
            _ => "—".into(),
        };
        println!(
            "| {} | {:.0} | {p50:.2} | {p99:.2} | {:.3} | {:.3} | {} | {} | {} | {} |",
            r.name,
            rps[i],
            rps[i] / base,
            rps[i] / floor,
            ins.map(|n| format!("{n:.0}")).unwrap_or_else(|| "—".into()),
            ratio(base_i, ins),
            ratio(floor_i, ins),
            mib(envoys[i].2)
        );
        out.push(json!({"configuration": r.name, "rps": rps[i], "p50_ms": p50, "p99_ms": p99,
                        "ratio_to_passthrough": rps[i] / base, "ratio_to_floor": rps[i] / floor,
                        "instructions_per_request": ins, "rss_bytes": envoys[i].2}));
    }
    println!();
    drop(envoys);
    let memory = memory_at(backend_addr, 4)?;
    let sizes = module_sizes();
    Ok(json!({"rows": out, "rss_concurrency_4": memory, "sizes": sizes}))
}

/// Only the instructions per request of every row (`bench --instructions`): callgrind counts
/// what Envoy executes, so the figures hold whatever else the machine is doing.
///
/// `only`: rows whose name contains one of these `|`-separated words (passthrough and the floor,
/// the baselines, always run).
pub fn instructions(plan: &Plan, only: Option<&str>) -> Result<Value, BenchError> {
    let backend =
        Envoy::start_launch(&backend_config(), &Launch { concurrency: 1, ..Launch::default() }).map_err(err)?;
    let backend_addr = backend.main().map_err(err)?;
    let mut rows = rows()?;
    if let Some(only) = only {
        let words: Vec<&str> = only.split('|').collect();
        let mut i = 0;
        rows.retain(|r| {
            i += 1;
            i <= 2 || words.iter().any(|w| r.name.contains(w))
        });
    }
    let mut counts = Vec::new();
    for r in &rows {
        let n = instructions_per_request(&config(r, backend_addr), plan.callgrind_requests)?;
        eprintln!("  callgrind {:<42} {:>9.0} instructions/request", r.name, n);
        counts.push(n);
    }
    let (base, floor) = (counts.first().copied().unwrap_or(f64::NAN), counts.get(1).copied().unwrap_or(f64::NAN));
    println!(
        "Instructions per request (callgrind over {} requests, Envoy 1.40, --concurrency 1)",
        plan.callgrind_requests
    );
    println!("| configuration | instructions/request | vs passthrough | vs floor |");
    println!("|---|---:|---:|---:|");
    let mut out = Vec::new();
    for (r, n) in rows.iter().zip(&counts) {
        println!("| {} | {n:.0} | {:.3} | {:.3} |", r.name, base / n, floor / n);
        out.push(json!({"configuration": r.name, "instructions_per_request": n}));
    }
    Ok(Value::Array(out))
}

/// Only resident memory (at one and four workers) and the module sizes (`bench --memory`).
pub fn memory() -> Result<Value, BenchError> {
    let backend = test_harness::backend::Backend::ok().map_err(err)?;
    let one = memory_at(backend.addr(), 1)?;
    let memory = memory_at(backend.addr(), 4)?;
    let sizes = module_sizes();
    let code = code_by_part()?;
    Ok(json!({"rss_concurrency_1": one, "rss_concurrency_4": memory, "sizes": sizes, "code": code}))
}

/// Envoy's `memory_allocator_manager`: tcmalloc hands free pages back to the system in the
/// background (here up to 64 MiB a second).
fn releasing(mut cfg: Value) -> Value {
    cfg["memory_allocator_manager"] = json!({"bytes_to_release": 67_108_864u64, "memory_release_interval": "1s"});
    cfg
}

/// Envoy's resident memory at `--concurrency workers` (VMs are per worker), three seconds after
/// start, as Envoy starts by default and with `memory_allocator_manager`; with what tcmalloc
/// holds (`/memory`: in use by Envoy, and free but kept), and the VMs' own linear memory. V8's
/// compiler frees what it used once the module is compiled, but tcmalloc keeps those pages
/// unless told to release them.
fn memory_at(backend: SocketAddr, workers: u32) -> Result<Value, BenchError> {
    let all = rows()?;
    let wanted = ["passthrough", "floor: empty SDK filter", CHAINED, ALL_WASM, ALL_NATIVE];
    println!("Envoy resident memory three seconds after start, --concurrency {workers}");
    println!(
        "| configuration | RSS MiB | vs floor MiB | heap in use MiB | heap free, kept MiB | guest linear memory MiB (all VMs) | RSS with memory_allocator_manager MiB | vs floor MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut out = Vec::new();
    let mut floor: Option<(Option<u64>, Option<u64>)> = None;
    for r in all.iter().filter(|r| wanted.contains(&r.name.as_str())) {
        let launch = Launch { concurrency: workers, ..Launch::default() };
        let measure = |cfg: &Value| -> Result<(Option<u64>, Value, Option<u64>), BenchError> {
            let e = Envoy::start_launch(cfg, &launch).map_err(err)?;
            std::thread::sleep(Duration::from_secs(3));
            let heap = http::get(e.admin(), "/memory", &[])
                .ok()
                .and_then(|r| serde_json::from_str::<Value>(&r.text()).ok())
                .unwrap_or(Value::Null);
            // Each VM adds its linear memory to this gauge on its tick.
            let linear = e.stat("upstream_guard.vm.memory_bytes").ok().flatten();
            Ok((e.rss_bytes(), heap, linear))
        };
        let (rss, heap, linear) = measure(&config(r, backend))?;
        let (released, _, _) = measure(&releasing(config(r, backend)))?;
        let field = |k: &str| heap[k].as_str().and_then(|v| v.parse::<u64>().ok());
        let kept = match (field("pageheap_free"), field("total_thread_cache")) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        if r.name.starts_with("floor") {
            floor = Some((rss, released));
        }
        let over = |a: Option<u64>, f: Option<u64>| match (a, f) {
            (Some(a), Some(f)) if !r.name.starts_with("passthrough") => {
                format!("{:+.1}", (a as f64 - f as f64) / 1048576.0)
            }
            _ => "—".into(),
        };
        let (f_rss, f_released) = floor.unwrap_or((None, None));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            mib(rss),
            over(rss, f_rss),
            mib(field("allocated")),
            mib(kept),
            mib(linear),
            mib(released),
            over(released, f_released)
        );
        out.push(json!({"configuration": r.name, "rss_bytes": rss, "heap": heap, "linear_memory_bytes": linear,
                        "rss_with_memory_allocator_manager_bytes": released}));
    }
    println!();
    Ok(Value::Array(out))
}

/// Where `upstream_guard.wasm`'s code goes (`bench --memory`): the module built again with its
/// function names kept (`target/sizes/`), each function's body size from the code section, and
/// the functions grouped by what their names say they are.
fn code_by_part() -> Result<Value, BenchError> {
    let dir = paths::workspace_root().join("target").join("sizes");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip1", "-p", "upstream_guard_module"])
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env("CARGO_TARGET_DIR", &dir)
        .status()
        .map_err(err)?;
    if !status.success() {
        return Err(BenchError("building upstream_guard.wasm with names failed".into()));
    }
    let bytes = std::fs::read(dir.join("wasm32-wasip1").join("release").join("upstream_guard.wasm")).map_err(err)?;
    let functions = wasm_functions(&bytes).ok_or_else(|| BenchError("unreadable upstream_guard.wasm".into()))?;
    // First match wins: serde's visitors and the validators are the configuration.
    let parts: [(&str, &[&str]); 5] = [
        ("configuration (serde visitors, validators)", &["Deserializ", "validate", "serde"]),
        ("the LLM stage", &["llm"]),
        ("regex (path_regex)", &["regex"]),
        ("formatting", &["fmt"]),
        ("everything else", &[""]),
    ];
    let mut sizes = vec![0usize; parts.len()];
    for (name, size) in &functions {
        if let Some(i) = parts.iter().position(|(_, keys)| keys.iter().any(|k| name.contains(k))) {
            sizes[i] += size;
        }
    }
    let total: usize = sizes.iter().sum();
    println!("upstream_guard.wasm code by part ({} functions, {total} bytes of code)", functions.len());
    println!("| part | bytes | share |");
    println!("|---|---:|---:|");
    for ((part, _), size) in parts.iter().zip(&sizes) {
        println!("| {part} | {size} | {:.0} % |", *size as f64 * 100.0 / total.max(1) as f64);
    }
    println!();
    Ok(json!(parts.iter().zip(&sizes).map(|((p, _), s)| json!({"part": p, "bytes": s})).collect::<Vec<_>>()))
}

/// Every function body of a Wasm module: (name from the `name` section, or empty; body bytes).
fn wasm_functions(wasm: &[u8]) -> Option<Vec<(String, usize)>> {
    fn leb(b: &[u8], i: &mut usize) -> Option<usize> {
        let (mut v, mut shift) = (0usize, 0);
        loop {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte < 0x80 || shift > 63 {
                return Some(v);
            }
        }
    }
    let (mut i, mut imported, mut bodies, mut names) = (8, 0, Vec::new(), std::collections::HashMap::new());
    while i < wasm.len() {
        let id = *wasm.get(i)?;
        i += 1;
        let len = leb(wasm, &mut i)?;
        let (mut j, end) = (i, i.checked_add(len)?);
        match id {
            // Imports: count the functions, whose indexes come before the bodies'.
            2 => {
                for _ in 0..leb(wasm, &mut j)? {
                    for _ in 0..2 {
                        j += leb(wasm, &mut j)?;
                    }
                    let kind = *wasm.get(j)?;
                    j += 1;
                    match kind {
                        0 => {
                            leb(wasm, &mut j)?;
                            imported += 1;
                        }
                        1 => {
                            j += 1;
                            let limits = *wasm.get(j)?;
                            j += 1;
                            leb(wasm, &mut j)?;
                            if limits & 1 == 1 {
                                leb(wasm, &mut j)?;
                            }
                        }
                        2 => {
                            let limits = *wasm.get(j)?;
                            j += 1;
                            leb(wasm, &mut j)?;
                            if limits & 1 == 1 {
                                leb(wasm, &mut j)?;
                            }
                        }
                        _ => j += 2,
                    }
                }
            }
            10 => {
                for _ in 0..leb(wasm, &mut j)? {
                    let size = leb(wasm, &mut j)?;
                    bodies.push(size);
                    j += size;
                }
            }
            0 => {
                let n = leb(wasm, &mut j)?;
                if wasm.get(j..j + n)? == b"name" {
                    j += n;
                    while j < end {
                        let sub = *wasm.get(j)?;
                        j += 1;
                        let sub_len = leb(wasm, &mut j)?;
                        let sub_end = j + sub_len;
                        if sub == 1 {
                            for _ in 0..leb(wasm, &mut j)? {
                                let index = leb(wasm, &mut j)?;
                                let len = leb(wasm, &mut j)?;
                                names.insert(index, String::from_utf8_lossy(wasm.get(j..j + len)?).into_owned());
                                j += len;
                            }
                        }
                        j = sub_end;
                    }
                }
            }
            _ => {}
        }
        i = end;
    }
    Some(
        bodies
            .into_iter()
            .enumerate()
            .map(|(k, size)| (names.remove(&(imported + k)).unwrap_or_default(), size))
            .collect(),
    )
}

/// Sizes of the shipped modules, and the combined module against the largest single one.
fn module_sizes() -> Value {
    let size = |m: &str| paths::wasm_path(m).ok().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
    let singles = header_stages();
    let largest = singles.iter().map(|m| size(m)).max().unwrap_or(0);
    let combined = size("upstream_guard");
    println!("Module sizes (release, wasm32-wasip1)");
    println!("| module | bytes |");
    println!("|---|---:|");
    for m in ["floor", "upstream_guard"].iter().chain(singles.iter()) {
        println!("| {m}.wasm | {} |", size(m));
    }
    println!(
        "upstream_guard.wasm is {:.2}x the largest single-policy module\n",
        combined as f64 / largest.max(1) as f64
    );
    json!({"upstream_guard": combined, "largest_single": largest})
}
