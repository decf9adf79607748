//! `cargo xtask demo`: runs `envoy-examples/upstream_guard/envoy.yaml` (all four policies in one
//! module; `--chain` runs `envoy-examples/chain/envoy.yaml`, the same policies as four filters;
//! `--native` runs `envoy-examples/native/envoy.yaml`, the dynamic module) on
//! ephemeral loopback ports, with demo backends in place of its primary, secondary and flaky
//! clusters, and prints a short scripted tour as curl lines with what came back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use test_harness::backend::{Backend, Behavior};
use test_harness::envoy::Envoy;
use test_harness::{http, paths};

/// A demo failure, explained.
pub use crate::TaskError;

type Result<T = ()> = std::result::Result<T, TaskError>;

fn err(e: impl std::fmt::Display) -> TaskError {
    TaskError(e.to_string())
}

/// The two examples the demo can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Example {
    /// `envoy-examples/upstream_guard/`: `upstream_guard.wasm`, four stages in one module.
    Module,
    /// `envoy-examples/chain/`: four single-policy filters.
    Chain,
    /// `envoy-examples/native/`: `libupstream_guard.so`, the same stages as a dynamic module.
    Native,
}

impl Example {
    fn dir(self) -> &'static str {
        match self {
            Example::Module => "upstream_guard",
            Example::Chain => "chain",
            Example::Native => "native",
        }
    }
}

/// An example with its fixed ports swapped for this run's.
pub fn example_config(
    example: Example,
    primary: SocketAddr,
    secondary: SocketAddr,
    flaky: SocketAddr,
) -> Result<String> {
    let path = paths::workspace_root().join("envoy-examples").join(example.dir()).join("envoy.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| TaskError(format!("{}: {e}", path.display())))?;
    let target = paths::target_dir().display().to_string();
    Ok(text
        .replace("port_value: 10000", "port_value: 0")
        .replace("port_value: 9901", "port_value: 0")
        .replace("port_value: 18081", &format!("port_value: {}", primary.port()))
        .replace("port_value: 18082", &format!("port_value: {}", secondary.port()))
        .replace("port_value: 18083", &format!("port_value: {}", flaky.port()))
        .replace("filename: target/", &format!("filename: {target}/")))
}

fn show(addr: SocketAddr, what: &str, path: &str, headers: &[(&str, &str)]) -> Result<http::Response> {
    let r = http::get(addr, path, headers).map_err(err)?;
    let extra: String = headers.iter().map(|(k, v)| format!(" -H '{k}: {v}'")).collect();
    println!("# {what}\n$ curl -i{extra} http://{addr}{path}\nHTTP/1.1 {}", r.status);
    for h in ["x-backend", "retry-after", "ratelimit", "x-upstream-guard-circuit", "x-upstream-diagnosis"] {
        if let Some(v) = r.header(h) {
            println!("{h}: {v}");
        }
    }
    if r.header("content-type") == Some("application/json") {
        println!("{}", r.text());
    }
    println!();
    Ok(r)
}

/// Runs the tour; with `serve`, keeps everything up until interrupted.
pub fn run(example: Example, serve: bool) -> Result {
    let primary = Backend::named(Behavior::Status(200), "primary").map_err(err)?;
    let secondary = Backend::named(Behavior::Status(200), "secondary").map_err(err)?;
    let flaky = Backend::named(Behavior::Status(503), "flaky").map_err(err)?;
    let yaml = example_config(example, primary.addr(), secondary.addr(), flaky.addr())?;
    let envoy = Envoy::start_yaml(&yaml, 2).map_err(err)?;
    let addr = envoy.main().map_err(err)?;
    println!(
        "upstream-guard demo: envoy-examples/{}/envoy.yaml on http://{addr} (admin http://{})\n\
         {}: diagnostics -> rate_limiter -> health_router -> circuit_breaker -> router\n",
        example.dir(),
        envoy.admin(),
        match example {
            Example::Module => "upstream_guard.wasm, stages",
            Example::Native => "libupstream_guard.so (dynamic module), stages",
            Example::Chain => "filters",
        }
    );

    show(addr, "a normal request: the health router sends it to the primary", "/api", &[])?;
    for i in 1..=4 {
        let r = http::get(addr, "/limited", &[]).map_err(err)?;
        if i < 4 {
            println!("# /limited request {i} of 3 allowed per 10 s: HTTP {}", r.status);
        }
    }
    show(addr, "the 4th request within 10 s is rate limited", "/limited", &[])?;
    for _ in 0..3 {
        http::get(addr, "/flaky", &[]).map_err(err)?;
    }
    println!("# three requests to /flaky got the backend's own 503s; the breaker counted them");
    show(addr, "now the circuit is open: refused at once, without touching the backend", "/flaky", &[])?;

    primary.kill();
    println!("# the primary backend process dies");
    let killed = Instant::now();
    let mut failures = 0;
    loop {
        let r = http::get(addr, "/api", &[]).map_err(err)?;
        if r.header("x-backend") == Some("secondary") {
            break;
        }
        failures += 1;
        if killed.elapsed() > Duration::from_secs(10) {
            return Err(TaskError("traffic did not fail over within 10 s".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("# traffic moved to the secondary after {:?} ({failures} failed requests on the way)", killed.elapsed());
    show(addr, "requests now go to the secondary", "/api", &[])?;
    secondary.kill();
    println!("# the secondary dies too; once its checks fail, nothing is healthy");
    std::thread::sleep(Duration::from_millis(1500));
    show(addr, "fail fast, with every upstream's reason", "/api", &[("accept", "application/json")])?;

    if serve {
        primary.revive().map_err(err)?;
        secondary.revive().map_err(err)?;
        println!("serving on http://{addr} (backends revived); press Ctrl-C to stop");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    Ok(())
}
