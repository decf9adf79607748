//! The global rate limit test equipment (`ug-rls-server` over the harness's Redis) behind Envoy's
//! own `envoy.filters.http.ratelimit` filter: two Envoys share one budget exactly under
//! concurrent load, tenants have their own budgets, the draft-03 headers carry the service's
//! statuses, and when the service stops, errors, is slow or loses Redis, Envoy applies its
//! failure mode (open: pass, closed: 500). Every request is bounded by a client timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use test_harness::backend::Backend;
use test_harness::bootstrap::{
    cluster, header_rate_limit, http2_cluster, native_ratelimit_filter, rate_limited_route, Bootstrap,
};
use test_harness::envoy::Envoy;
use test_harness::http;
use test_harness::redis::Redis;
use ug_rls_server::{Code, LimitSpec, RlsServer};

/// Every request gives up after this long: a hang fails the test instead of stalling it.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

/// An Envoy (`--concurrency 2`) whose route sends `x-tenant` as descriptor `tenant` to the RLS.
fn envoy(rls: SocketAddr, backend: &Backend, timeout: Duration, failure_mode_deny: bool) -> Envoy {
    let cfg = Bootstrap::new()
        .filter(native_ratelimit_filter("edge", "rls", timeout, failure_mode_deny))
        .route(rate_limited_route("/", "backend", serde_json::json!([header_rate_limit("x-tenant", "tenant")])))
        .cluster(cluster("backend", backend.addr()))
        .cluster(http2_cluster("rls", rls))
        .build();
    Envoy::start_with(&cfg, 2).unwrap()
}

fn get(addr: SocketAddr, tenant: &str) -> http::Response {
    http::request(addr, "GET", "/", &[("x-tenant", tenant)], REQUEST_LIMIT)
        .unwrap_or_else(|e| panic!("request to {addr} failed or hung: {e}"))
}

fn statuses(addr: SocketAddr, tenant: &str, n: usize) -> Vec<u16> {
    (0..n).map(|_| get(addr, tenant).status).collect()
}

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).unwrap().unwrap_or(0)
}

#[test]
fn two_envoys_share_one_budget_exactly_and_each_tenant_has_its_own() {
    const LIMIT: u64 = 1000;
    const CLIENTS: u64 = 16;
    let redis = Redis::start().unwrap();
    let limits =
        [LimitSpec::new("edge", LIMIT, 3600).any("tenant"), LimitSpec::new("edge", 20, 3600).value("tenant", "b")];
    let rls = RlsServer::start(&redis.url(), &limits).unwrap();
    let backend = Backend::ok().unwrap();
    // Fail closed with a generous timeout: a late or failed check shows up as a 500, never as an
    // extra admission.
    let envoys = [
        envoy(rls.addr(), &backend, Duration::from_secs(5), true),
        envoy(rls.addr(), &backend, Duration::from_secs(5), true),
    ];
    let addrs = [envoys[0].main().unwrap(), envoys[1].main().unwrap()];

    let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let per_envoy: Arc<[AtomicU64; 2]> = Arc::new(Default::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (counts, per_envoy) = (counts.clone(), per_envoy.clone());
            std::thread::spawn(move || {
                for i in 0..4 * LIMIT / CLIENTS {
                    let which = ((client + i) % 2) as usize;
                    let slot = match get(addrs[which], "a").status {
                        200 => {
                            per_envoy[which].fetch_add(1, Ordering::SeqCst);
                            0
                        }
                        429 => 1,
                        _ => 2,
                    };
                    counts[slot].fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let [admitted, limited, other] = [0, 1, 2].map(|i| counts[i].load(Ordering::SeqCst));
    let split = [0, 1].map(|i| per_envoy[i].load(Ordering::SeqCst));
    println!(
        "tenant a: admitted {admitted} (envoy 1: {}, envoy 2: {}), limited {limited}, other {other} of {} \
         (limit {LIMIT}, 2 Envoys x 2 workers, {CLIENTS} clients)",
        split[0],
        split[1],
        4 * LIMIT
    );
    assert_eq!(other, 0, "no failed checks");
    assert_eq!(admitted + limited, 4 * LIMIT);
    assert!((LIMIT * 99 / 100..=LIMIT * 101 / 100).contains(&admitted), "admitted {admitted}, expected {LIMIT} ± 1%");
    assert!(split[0] > 0 && split[1] > 0, "both Envoys admitted some: {split:?}");
    assert_eq!(backend.requests(), admitted, "the backend saw exactly the admitted requests");
    let over: u64 = envoys.iter().map(|e| stat(e, "cluster.backend.ratelimit.over_limit")).sum();
    assert_eq!(over, limited, "Envoy counted each 429 as over_limit");

    // Tenant b: its own counter under the per-tenant limit, and a fixed limit of 20 that is tighter.
    let mut b = Vec::new();
    for i in 0..30 {
        b.push(get(addrs[i % 2], "b"));
    }
    let b_admitted = b.iter().filter(|r| r.status == 200).count();
    println!("tenant b: admitted {b_admitted} of 30 (limit 20)");
    assert_eq!(b_admitted, 20);
    assert!(b[..20].iter().all(|r| r.status == 200) && b[20..].iter().all(|r| r.status == 429));
    let first = &b[0];
    assert_eq!(first.header("x-ratelimit-limit"), Some("20, 20;w=3600"), "the tighter limit speaks");
    assert_eq!(first.header("x-ratelimit-remaining"), Some("19"));
    let refused = &b[29];
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    let reset: u64 = refused.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&reset), "x-ratelimit-reset {reset}");
    assert_eq!(get(addrs[0], "a").header("x-ratelimit-limit"), Some("1000, 1000;w=3600"));
}

#[test]
fn when_the_rls_stops_fail_open_passes_and_fail_closed_refuses() {
    let redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[LimitSpec::new("edge", 5, 3600).any("tenant")]).unwrap();
    let backend = Backend::ok().unwrap();
    let open = envoy(rls.addr(), &backend, Duration::from_secs(2), false);
    let closed = envoy(rls.addr(), &backend, Duration::from_secs(2), true);
    let (open_addr, closed_addr) = (open.main().unwrap(), closed.main().unwrap());
    assert_eq!(statuses(open_addr, "a", 6), [200, 200, 200, 200, 200, 429], "limits apply while the RLS runs");

    rls.stop();
    assert_eq!(statuses(open_addr, "a", 5), [200; 5], "fail open: requests pass without the RLS");
    assert_eq!(statuses(closed_addr, "a", 5), [500; 5], "fail closed: requests are refused without the RLS");
    assert_eq!(stat(&open, "cluster.backend.ratelimit.failure_mode_allowed"), 5);
    assert_eq!(stat(&closed, "cluster.backend.ratelimit.error"), 5);
    assert_eq!(backend.requests(), 10);
}

#[test]
fn when_redis_dies_the_rls_errors_envoy_applies_its_failure_mode_and_limits_return_with_redis() {
    let mut redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[LimitSpec::new("edge", 3, 3600).any("tenant")]).unwrap();
    let backend = Backend::ok().unwrap();
    let open = envoy(rls.addr(), &backend, Duration::from_secs(3), false);
    let closed = envoy(rls.addr(), &backend, Duration::from_secs(3), true);
    let (open_addr, closed_addr) = (open.main().unwrap(), closed.main().unwrap());
    assert_eq!(statuses(open_addr, "a", 4), [200, 200, 200, 429]);

    redis.stop();
    assert_eq!(statuses(open_addr, "a", 3), [200; 3], "fail open while Redis is down");
    assert_eq!(statuses(closed_addr, "a", 3), [500; 3], "fail closed while Redis is down");
    assert!(rls.stats().errors >= 6, "the RLS answered errors: {:?}", rls.stats());
    assert_eq!(stat(&open, "cluster.backend.ratelimit.failure_mode_allowed"), 3);

    // A fresh, empty Redis on the same port: the RLS reconnects and counting starts over.
    redis.restart().unwrap();
    let mut waited = 0;
    while get(closed_addr, "a").status != 200 {
        waited += 1;
        assert!(waited < 100, "limits did not resume within ~10 s of Redis returning");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = statuses(open_addr, "a", 4);
    assert_eq!(after, [200, 200, 429, 429], "one hit was spent by the first check after the restart");
}

#[test]
fn a_slow_or_failing_rls_gets_the_failure_mode_and_nothing_hangs() {
    let redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[LimitSpec::new("edge", 2, 3600).any("tenant")]).unwrap();
    let backend = Backend::ok().unwrap();
    // Long enough that a busy machine answers in time when the RLS is prompt.
    let open = envoy(rls.addr(), &backend, Duration::from_secs(1), false);
    let closed = envoy(rls.addr(), &backend, Duration::from_secs(1), true);
    let (open_addr, closed_addr) = (open.main().unwrap(), closed.main().unwrap());

    // Far longer than Envoy's 1 s timeout, and than the client's limit: only Envoy's timeout
    // lets these requests finish.
    rls.set_delay(Duration::from_secs(60));
    assert_eq!(statuses(open_addr, "a", 3), [200; 3], "fail open when the RLS is late");
    assert_eq!(statuses(closed_addr, "a", 3), [500; 3], "fail closed when the RLS is late");
    rls.set_delay(Duration::ZERO);

    rls.fail_with(Some(Code::Unavailable));
    assert_eq!(statuses(open_addr, "a", 3), [200; 3], "fail open on a gRPC error");
    assert_eq!(statuses(closed_addr, "a", 3), [500; 3], "fail closed on a gRPC error");
    assert_eq!(stat(&open, "cluster.backend.ratelimit.failure_mode_allowed"), 6);
    assert_eq!(stat(&closed, "cluster.backend.ratelimit.error"), 6);

    rls.fail_with(None);
    assert_eq!(statuses(closed_addr, "a", 3), [200, 200, 429], "nothing was counted while it failed");
}
