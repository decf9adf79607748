//! `envoy-examples/upstream_guard/envoy.yaml` (one module, four stages) and
//! `envoy-examples/chain/envoy.yaml` (four filters) in real Envoy (two workers), as the demo runs
//! them: the same tour gives the same answers, every policy does its part and the diagnosis
//! explains each failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;
use test_harness::backend::{Backend, Behavior};
use test_harness::envoy::Envoy;
use test_harness::{http, parse_diagnosis};
use xtask::demo::Example;

fn cause(r: &http::Response) -> String {
    parse_diagnosis(r.header("x-upstream-diagnosis").expect("a diagnosis")).unwrap()["cause"].clone()
}

#[test]
fn the_module_limits_breaks_fails_over_and_explains() {
    tour(Example::Module);
}

#[test]
fn the_dynamic_module_limits_breaks_fails_over_and_explains() {
    tour(Example::Native);
}

#[test]
fn the_chain_limits_breaks_fails_over_and_explains() {
    tour(Example::Chain);
}

fn tour(example: Example) {
    let primary = Backend::named(Behavior::Status(200), "primary").unwrap();
    let secondary = Backend::named(Behavior::Status(200), "secondary").unwrap();
    let flaky = Backend::named(Behavior::Status(503), "flaky").unwrap();
    let yaml = xtask::demo::example_config(example, primary.addr(), secondary.addr(), flaky.addr()).unwrap();
    let envoy = Envoy::start_yaml(&yaml, 2).unwrap();
    let addr = envoy.main().unwrap();

    let r = http::get(addr, "/api", &[]).unwrap();
    assert_eq!((r.status, r.header("x-backend")), (200, Some("primary")));

    let statuses: Vec<u16> = (0..4).map(|_| http::get(addr, "/limited", &[]).unwrap().status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(cause(&http::get(addr, "/limited", &[]).unwrap()), "rate_limited");

    for _ in 0..3 {
        let r = http::get(addr, "/flaky", &[]).unwrap();
        assert_eq!((r.status, cause(&r).as_str()), (503, "upstream_error_response"));
    }
    let r = http::get(addr, "/flaky", &[]).unwrap();
    assert_eq!(r.header("x-upstream-guard-circuit"), Some("open"));
    assert_eq!(cause(&r), "circuit_open");
    assert_eq!(flaky.requests(), 3);

    primary.kill();
    let t = Instant::now();
    while http::get(addr, "/api", &[]).unwrap().header("x-backend") != Some("secondary") {
        assert!(t.elapsed() < Duration::from_secs(10), "no failover");
        std::thread::sleep(Duration::from_millis(20));
    }

    secondary.kill();
    let t = Instant::now();
    loop {
        let r = http::get(addr, "/api", &[("accept", "application/json")]).unwrap();
        if r.status == 503 && cause(&r) == "no_healthy_upstream" {
            assert_eq!(r.header("content-type"), Some("application/json"));
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let reasons: Vec<&str> =
                body["upstreams"].as_array().unwrap().iter().map(|u| u["reason"].as_str().unwrap()).collect();
            assert_eq!(reasons.len(), 2, "{body}");
            assert!(reasons.iter().all(|r| !r.is_empty()), "{body}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never failed fast: {} {:?}",
            r.status,
            r.header("x-upstream-diagnosis")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
