//! `cargo xtask demo`: Envoy with the diagnostics filter in front of demo backends on loopback,
//! and a short scripted tour printed as curl-style lines.

use serde_json::json;
use test_harness::backend::{self, Backend, Behavior};
use test_harness::bootstrap::{cluster, route, wasm_filter, Bootstrap};
use test_harness::envoy::Envoy;
use test_harness::{http, paths};

use crate::{Result, TaskError};

fn err(e: impl std::fmt::Display) -> TaskError {
    TaskError(e.to_string())
}

/// Runs the tour; with `serve`, keeps Envoy up until interrupted.
pub fn run(serve: bool) -> Result {
    let healthy = Backend::ok().map_err(err)?;
    let failing = Backend::start(Behavior::Status(503)).map_err(err)?;
    let hanging = Backend::start(Behavior::Hang).map_err(err)?;
    let down = backend::closed_port().map_err(err)?;
    let diag = wasm_filter(
        "diagnostics",
        &paths::wasm_path("diagnostics").map_err(err)?,
        &json!({"trusted_cidrs": ["127.0.0.1/32"], "json_body": true}),
    );
    let mut slow_route = route("/slow", "hanging");
    slow_route["route"]["timeout"] = json!("0.5s");
    let config = Bootstrap::new()
        .filter(diag)
        .route(route("/ok", "healthy"))
        .route(route("/flaky", "failing"))
        .route(slow_route)
        .route(route("/down", "down"))
        .cluster(cluster("healthy", healthy.addr()))
        .cluster(cluster("failing", failing.addr()))
        .cluster(cluster("hanging", hanging.addr()))
        .cluster(cluster("down", down))
        .build();
    let envoy = Envoy::start(&config).map_err(err)?;
    let addr = envoy.main().map_err(err)?;
    println!("upstream-guard demo: Envoy listening on http://{addr} (admin http://{})\n", envoy.admin());
    type Step = (&'static str, &'static [(&'static str, &'static str)], &'static str);
    let tour: &[Step] = &[
        ("/ok", &[], "a healthy backend: no diagnosis on success"),
        ("/down", &[], "the backend is not running"),
        ("/slow", &[], "the backend accepts but never answers (route timeout 0.5s)"),
        ("/flaky", &[], "the backend itself answers 503"),
        ("/nowhere", &[], "no route matches"),
        ("/down", &[("accept", "application/json")], "the same failure, asking for JSON"),
    ];
    for (path, headers, what) in tour {
        let r = http::get(addr, path, headers).map_err(err)?;
        let accept = headers.iter().map(|(k, v)| format!(" -H '{k}: {v}'")).collect::<String>();
        println!("# {what}\n$ curl -i{accept} http://{addr}{path}\nHTTP/1.1 {}", r.status);
        match r.header("x-upstream-diagnosis") {
            Some(d) => println!("x-upstream-diagnosis: {d}"),
            None => println!("(no x-upstream-diagnosis header)"),
        }
        if r.header("content-type") == Some("application/json") {
            println!("{}", r.text());
        }
        println!();
    }
    if serve {
        println!("serving; press Ctrl-C to stop");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    Ok(())
}
