//! The adaptive concurrency stage in real Envoy (two workers), against a backend whose latency
//! grows with the requests it holds: the limit on requests in flight holds across workers, lower
//! classes are shed first so the critical class keeps being served, and the limit backs off when
//! the backend's latency climbs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_harness::backend::{Backend, Behavior};
use test_harness::bootstrap::{cluster, module_filter, route, Bootstrap, Shape};
use test_harness::envoy::Envoy;
use test_harness::{http, parse_diagnosis};

fn start(shape: Shape, concurrency: Value, backend: &Backend) -> Envoy {
    let config = json!({"diagnostics": {}, "concurrency": concurrency});
    let mut r = route("/", "backend");
    r["route"]["timeout"] = json!("10s");
    let cfg = Bootstrap::new()
        .filter(module_filter(shape, "upstream_guard", &config))
        .route(r)
        .cluster(cluster("backend", backend.addr()))
        .build();
    Envoy::start_with(&cfg, 2).unwrap()
}

/// What one client saw: (status, latency, when it was sent) per request.
type Seen = Vec<(u16, Duration, Instant)>;

/// `clients` threads sending `path` back to back until `stop`.
fn clients(
    addr: std::net::SocketAddr,
    path: &'static str,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Seen>> {
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    match http::get(addr, path, &[]) {
                        Ok(r) => {
                            if r.status == 503 {
                                let d = r.header("x-upstream-diagnosis").and_then(parse_diagnosis);
                                assert_eq!(
                                    d.as_ref().map(|d| d["cause"].as_str()),
                                    Some("concurrency_limited"),
                                    "{r:?}"
                                );
                                assert_eq!(r.header("retry-after"), Some("1"));
                                // A shed client backs off a little, as one honouring Retry-After would (sooner).
                                thread::sleep(Duration::from_millis(20));
                            }
                            seen.push((r.status, started.elapsed(), started));
                        }
                        Err(e) => panic!("{path}: {e}"),
                    }
                }
                seen
            })
        })
        .collect()
}

fn join(handles: Vec<thread::JoinHandle<Seen>>) -> Seen {
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

/// A fixed limit of 4 (the adaptation pinned by min = max) under eight low-priority clients and
/// one critical client: the backend never holds more than 4 at once across both workers, low
/// requests are shed once they fill their half, and the critical client is never refused.
fn under_overload_the_limit_holds_across_workers_and_the_critical_class_is_always_served(shape: Shape) {
    let backend =
        Backend::start(Behavior::Loaded { base: Duration::from_millis(30), per_request: Duration::from_millis(30) })
            .unwrap();
    let cfg = json!({"limit": {"initial": 4, "min": 4, "max": 4},
                     "classes": [{"class": "critical", "match": {"path_prefix": "/checkout"}},
                                 {"class": "low", "match": {"path_prefix": "/batch"}}]});
    let envoy = start(shape, cfg, &backend);
    let addr = envoy.main().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let low = clients(addr, "/batch", 8, &stop);
    let critical = clients(addr, "/checkout", 1, &stop);
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let (low, critical) = (join(low), join(critical));

    let shed = low.iter().filter(|(s, _, _)| *s == 503).count();
    let low_ok = low.iter().filter(|(s, _, _)| *s == 200).count();
    assert!(critical.len() >= 10, "the critical client kept going: {}", critical.len());
    assert!(critical.iter().all(|(s, _, _)| *s == 200), "critical is never shed: {critical:?}");
    assert!(
        shed > 0 && low_ok > 0,
        "low requests are served up to their share and shed past it ({low_ok} ok, {shed} shed)"
    );
    assert!(
        backend.peak_in_flight() <= 4,
        "at most the limit in flight, over both workers: {}",
        backend.peak_in_flight()
    );
    assert_eq!(envoy.stat("upstream_guard.concurrency.backend.refused").unwrap(), Some(shed as u64));
    assert_eq!(envoy.stat("upstream_guard.concurrency.backend.limit").unwrap(), Some(4));
}

/// The backend answers in 20 ms alone and 20 ms slower for every other request it holds. After
/// a second of light load (the no-load latency), sixteen clients push it: the limit backs off
/// from 16 towards what keeps the latency within twice the no-load one, and the requests it
/// admits are answered far sooner than sixteen at once would be (20 + 15 × 20 ms).
fn the_limit_backs_off_when_latency_climbs_and_admitted_requests_stay_fast(shape: Shape) {
    let backend =
        Backend::start(Behavior::Loaded { base: Duration::from_millis(20), per_request: Duration::from_millis(20) })
            .unwrap();
    let cfg = json!({"limit": {"initial": 16, "min": 2, "max": 64}, "latency": {"tolerance": 2}, "window": "250ms"});
    let envoy = start(shape, cfg, &backend);
    let addr = envoy.main().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let warm = clients(addr, "/", 1, &stop);
    thread::sleep(Duration::from_millis(1200));
    let load = clients(addr, "/", 16, &stop);
    let settled = Instant::now() + Duration::from_secs(2);
    thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::SeqCst);
    join(warm);
    let seen = join(load);
    let limit = envoy.stat("upstream_guard.concurrency.backend.limit").unwrap().unwrap();
    assert!(limit <= 6, "the limit backed off from 16: {limit}");
    // The requests admitted in the last two seconds, once the limit settled.
    let mut tail: Vec<Duration> =
        seen.iter().filter(|(s, _, at)| *s == 200 && *at >= settled).map(|(_, d, _)| *d).collect();
    assert!(tail.len() >= 20, "requests are still served: {}", tail.len());
    tail.sort();
    let p90 = tail[tail.len() * 9 / 10];
    assert!(p90 < Duration::from_millis(260), "admitted requests stay fast: p90 {p90:?} (16 at once: 320 ms)");
    assert!(seen.iter().any(|(s, _, _)| *s == 503), "the rest is shed at once");
}

test_harness::both_shapes!(
    under_overload_the_limit_holds_across_workers_and_the_critical_class_is_always_served,
    the_limit_backs_off_when_latency_climbs_and_admitted_requests_stay_fast,
);
