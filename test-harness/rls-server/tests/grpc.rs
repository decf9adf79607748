//! The server through a real gRPC client and a real Redis: statuses Envoy can build headers from,
//! descriptor matching, hits, shared and exact counting, the test knobs, Redis failures, start-up
//! errors and the binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use test_harness::redis::Redis;
use tonic::transport::Channel;
use ug_rls_server::{Error, LimitSpec, RlsServer, Stats};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn descriptor(pairs: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: pairs.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        ..Default::default()
    }
}

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest { domain: domain.into(), descriptors, hits_addend: 0 }
}

/// A client that gives up after `timeout` per call.
async fn client(addr: SocketAddr, timeout: Duration) -> RateLimitServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().timeout(timeout).connect().await.unwrap();
    RateLimitServiceClient::new(channel)
}

async fn ask(c: &mut RateLimitServiceClient<Channel>, r: RateLimitRequest) -> Result<RateLimitResponse, tonic::Status> {
    c.should_rate_limit(r).await.map(tonic::Response::into_inner)
}

fn code(r: &RateLimitResponse) -> Code {
    Code::try_from(r.overall_code).unwrap()
}

#[test]
fn counts_each_value_apart_and_reports_limit_remaining_and_reset() {
    let redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[LimitSpec::new("edge", 3, 60).any("tenant")]).unwrap();
    runtime().block_on(async {
        let mut c = client(rls.addr(), Duration::from_secs(5)).await;
        let a = || request("edge", vec![descriptor(&[("tenant", "a")])]);
        for remaining in [2, 1, 0] {
            let r = ask(&mut c, a()).await.unwrap();
            assert_eq!(code(&r), Code::Ok);
            let s = &r.statuses[0];
            assert_eq!(s.code, Code::Ok as i32);
            assert_eq!(s.limit_remaining, remaining);
            assert_eq!(
                s.current_limit,
                Some(RateLimit { name: String::new(), requests_per_unit: 3, unit: Unit::Minute as i32 })
            );
            let reset = s.duration_until_reset.unwrap();
            assert!((0..=60).contains(&reset.seconds), "reset {reset:?}");
        }
        let r = ask(&mut c, a()).await.unwrap();
        assert_eq!(code(&r), Code::OverLimit);
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
        assert_eq!(r.statuses[0].limit_remaining, 0);

        let b = ask(&mut c, request("edge", vec![descriptor(&[("tenant", "b")])])).await.unwrap();
        assert_eq!(code(&b), Code::Ok, "tenant b has its own counter");
        assert_eq!(b.statuses[0].limit_remaining, 2);
    });
    assert_eq!(rls.stats(), Stats { calls: 5, ok: 4, over_limit: 1, errors: 0 });
}

#[test]
fn one_status_per_descriptor_in_request_order() {
    let redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[LimitSpec::new("edge", 1, 3600).any("tenant")]).unwrap();
    runtime().block_on(async {
        let mut c = client(rls.addr(), Duration::from_secs(5)).await;
        let three = || {
            request(
                "edge",
                vec![descriptor(&[("tenant", "a")]), descriptor(&[("path", "/x")]), descriptor(&[("tenant", "c")])],
            )
        };
        let first = ask(&mut c, three()).await.unwrap();
        assert_eq!(code(&first), Code::Ok);
        assert_eq!(first.statuses.len(), 3);
        assert_eq!(first.statuses[1], DescriptorStatus { code: Code::Ok as i32, ..Default::default() }, "no limit");
        assert_eq!(first.statuses[0].current_limit.as_ref().unwrap().unit, Unit::Hour as i32);

        let second = ask(&mut c, three()).await.unwrap();
        assert_eq!(code(&second), Code::OverLimit, "any descriptor over limit makes the request over limit");
        let codes: Vec<i32> = second.statuses.iter().map(|s| s.code).collect();
        assert_eq!(codes, [Code::OverLimit as i32, Code::Ok as i32, Code::OverLimit as i32]);
    });
}

#[test]
fn fixed_values_exact_key_sets_and_domains_select_the_limit() {
    let redis = Redis::start().unwrap();
    let limits =
        [LimitSpec::new("edge", 1, 60).value("plan", "free"), LimitSpec::new("edge", 2, 60).any("plan").any("path")];
    let rls = RlsServer::start(&redis.url(), &limits).unwrap();
    runtime().block_on(async {
        let mut c = client(rls.addr(), Duration::from_secs(5)).await;
        let admitted = |domain: &'static str, pairs: &'static [(&'static str, &'static str)]| {
            let mut c = c.clone();
            async move {
                let mut n = 0;
                for _ in 0..5 {
                    if code(&ask(&mut c, request(domain, vec![descriptor(pairs)])).await.unwrap()) == Code::Ok {
                        n += 1;
                    }
                }
                n
            }
        };
        assert_eq!(admitted("edge", &[("plan", "free")]).await, 1);
        assert_eq!(admitted("edge", &[("plan", "paid")]).await, 5, "another value of a fixed key: no limit");
        assert_eq!(admitted("edge", &[("plan", "free"), ("path", "/a")]).await, 2, "two keys: the other limit");
        assert_eq!(admitted("edge", &[("path", "/b"), ("plan", "free")]).await, 2, "entry order does not matter");
        assert_eq!(admitted("other", &[("plan", "free")]).await, 5, "another domain: no limit");
        let r = ask(&mut c, request("edge", vec![])).await.unwrap();
        assert_eq!((code(&r), r.statuses.len()), (Code::Ok, 0), "no descriptors: OK");
    });
}

#[test]
fn hits_addend_counts_zero_as_one_and_a_refused_call_counts_nothing() {
    let redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[LimitSpec::new("edge", 6, 60).any("k")]).unwrap();
    runtime().block_on(async {
        let mut c = client(rls.addr(), Duration::from_secs(5)).await;
        let with = |request_hits: u32, descriptor_hits: Option<u64>| {
            let mut d = descriptor(&[("k", "v")]);
            d.hits_addend = descriptor_hits.map(|value| UInt64Value { value });
            RateLimitRequest { domain: "edge".into(), descriptors: vec![d], hits_addend: request_hits }
        };
        let remaining = |r: RateLimitResponse| (code(&r), r.statuses[0].limit_remaining);
        assert_eq!(remaining(ask(&mut c, with(0, None)).await.unwrap()), (Code::Ok, 5), "0 counts as 1");
        assert_eq!(remaining(ask(&mut c, with(3, None)).await.unwrap()), (Code::Ok, 2));
        assert_eq!(remaining(ask(&mut c, with(0, Some(3))).await.unwrap()), (Code::OverLimit, 2), "3 > 2 left");
        assert_eq!(remaining(ask(&mut c, with(9, Some(2))).await.unwrap()), (Code::Ok, 0), "the descriptor's wins");
    });
}

#[test]
fn windows_between_units_are_reported_in_the_smaller_unit_with_a_note() {
    let redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[LimitSpec::new("edge", 5, 10).any("k")]).unwrap();
    runtime().block_on(async {
        let mut c = client(rls.addr(), Duration::from_secs(5)).await;
        let r = ask(&mut c, request("edge", vec![descriptor(&[("k", "v")])])).await.unwrap();
        assert_eq!(
            r.statuses[0].current_limit,
            Some(RateLimit { name: "window 10s".into(), requests_per_unit: 5, unit: Unit::Second as i32 })
        );
        assert!(r.statuses[0].duration_until_reset.unwrap().seconds <= 10);
    });
}

#[test]
fn two_servers_on_one_redis_count_exactly_one_budget_under_concurrent_calls() {
    let redis = Redis::start().unwrap();
    let limits = [LimitSpec::new("edge", 50, 3600).any("tenant")];
    let (one, two) =
        (RlsServer::start(&redis.url(), &limits).unwrap(), RlsServer::start(&redis.url(), &limits).unwrap());
    let ok = runtime().block_on(async {
        let clients =
            [client(one.addr(), Duration::from_secs(10)).await, client(two.addr(), Duration::from_secs(10)).await];
        let calls = (0..200).map(|i| {
            let mut c = clients[i % 2].clone();
            tokio::spawn(
                async move { ask(&mut c, request("edge", vec![descriptor(&[("tenant", "a")])])).await.unwrap() },
            )
        });
        let mut ok = 0;
        for call in calls.collect::<Vec<_>>() {
            if code(&call.await.unwrap()) == Code::Ok {
                ok += 1;
            }
        }
        ok
    });
    assert_eq!(ok, 50, "exactly the limit, across two servers and 200 concurrent calls");
    assert_eq!(one.stats().ok + two.stats().ok, 50);
    assert_eq!(one.stats().calls + two.stats().calls, 200);
}

#[test]
fn fail_with_answers_every_call_with_that_status_and_counts_nothing() {
    let redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[LimitSpec::new("edge", 1, 60).any("k")]).unwrap();
    runtime().block_on(async {
        let mut c = client(rls.addr(), Duration::from_secs(5)).await;
        let r = || request("edge", vec![descriptor(&[("k", "v")])]);
        rls.fail_with(Some(ug_rls_server::Code::ResourceExhausted));
        for _ in 0..3 {
            assert_eq!(ask(&mut c, r()).await.unwrap_err().code(), tonic::Code::ResourceExhausted);
        }
        rls.fail_with(None);
        assert_eq!(code(&ask(&mut c, r()).await.unwrap()), Code::Ok, "the failed calls counted nothing");
        assert_eq!(code(&ask(&mut c, r()).await.unwrap()), Code::OverLimit);
    });
    assert_eq!(rls.stats(), Stats { calls: 5, ok: 1, over_limit: 1, errors: 3 });
}

#[test]
fn a_delay_outlasts_a_client_timeout() {
    let redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[LimitSpec::new("edge", 10, 60).any("k")]).unwrap();
    runtime().block_on(async {
        let mut c = client(rls.addr(), Duration::from_millis(200)).await;
        let r = || request("edge", vec![descriptor(&[("k", "v")])]);
        rls.set_delay(Duration::from_secs(30));
        let late = ask(&mut c, r()).await.unwrap_err();
        assert!(matches!(late.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded), "{late:?}");
        rls.set_delay(Duration::ZERO);
        let mut patient = client(rls.addr(), Duration::from_secs(10)).await;
        assert_eq!(
            ask(&mut patient, r()).await.unwrap().statuses[0].limit_remaining,
            9,
            "the late call counted nothing"
        );
    });
    // Dropping the server with a call still sleeping must not hang (the test would time out).
}

#[test]
fn redis_down_answers_unavailable_and_service_resumes_when_it_returns() {
    let mut redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[LimitSpec::new("edge", 2, 60).any("k")]).unwrap();
    let rt = runtime();
    let mut c = rt.block_on(client(rls.addr(), Duration::from_secs(10)));
    let r = || request("edge", vec![descriptor(&[("k", "v")])]);
    assert_eq!(rt.block_on(ask(&mut c, r())).unwrap().statuses[0].limit_remaining, 1);
    redis.stop();
    for _ in 0..3 {
        let e = rt.block_on(ask(&mut c, r())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    }
    redis.restart().unwrap();
    // The connection comes back by itself; the new Redis is empty, so the budget is whole again.
    let mut answer = None;
    for _ in 0..100 {
        if let Ok(a) = rt.block_on(ask(&mut c, r())) {
            answer = Some(a);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = answer.expect("the server answers again within 5 s of Redis returning");
    assert_eq!((code(&answer), answer.statuses[0].limit_remaining), (Code::Ok, 1));
    assert!(rls.stats().errors >= 3);
}

#[test]
fn a_hung_redis_answers_unavailable_after_the_storage_timeout() {
    let redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[LimitSpec::new("edge", 5, 60).any("k")]).unwrap();
    rls.set_storage_timeout(Duration::from_millis(300));
    let rt = runtime();
    let mut c = rt.block_on(client(rls.addr(), Duration::from_secs(10)));
    let r = || request("edge", vec![descriptor(&[("k", "v")])]);
    assert_eq!(code(&rt.block_on(ask(&mut c, r())).unwrap()), Code::Ok);
    redis.freeze().unwrap();
    let e = rt.block_on(ask(&mut c, r())).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("did not answer within 300 ms"), "{e:?}");
    redis.thaw().unwrap();
    rls.set_storage_timeout(Duration::from_secs(5));
    // The timed-out check may still be applied once Redis resumes, as with any remote store.
    let after = rt.block_on(ask(&mut c, r())).unwrap();
    assert_eq!(code(&after), Code::Ok);
    assert!((2..=3).contains(&after.statuses[0].limit_remaining), "{after:?}");
}

#[test]
fn a_stopped_server_closes_its_port() {
    let redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[]).unwrap();
    let addr = rls.addr();
    assert!(std::net::TcpStream::connect(addr).is_ok());
    rls.stop();
    let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(refused.is_err(), "connection to a stopped server must be refused");
}

#[test]
fn start_up_errors_say_what_to_fix() {
    let nothing = test_harness::backend::closed_port().unwrap();
    let e = RlsServer::start(&format!("redis://{nothing}/"), &[]).unwrap_err();
    assert!(matches!(e, Error::Redis { .. }), "{e:?}");
    assert!(e.to_string().contains("start redis-server there"), "{e}");

    let redis = Redis::start().unwrap();
    let e = RlsServer::start(
        &redis.url(),
        &[LimitSpec::new("edge", 1, 60).any("k"), LimitSpec::new("edge", 1, 0).any("k")],
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "limits config: field `[1].seconds`: is 0; the window must be at least 1 second");
}

#[test]
fn the_binary_prints_its_address_and_serves_the_config_file() {
    let redis = Redis::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.json");
    std::fs::write(&config, r#"[{"domain": "edge", "descriptor": {"tenant": null}, "max": 1, "seconds": 60}]"#)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ug-rls-server"))
        .args(["--redis", &redis.url(), "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: SocketAddr = line.trim().parse().unwrap_or_else(|_| panic!("not an address: {line:?}"));
    let codes = runtime().block_on(async {
        let mut c = client(addr, Duration::from_secs(5)).await;
        let r = || request("edge", vec![descriptor(&[("tenant", "a")])]);
        [code(&ask(&mut c, r()).await.unwrap()), code(&ask(&mut c, r()).await.unwrap())]
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(codes, [Code::Ok, Code::OverLimit]);

    std::fs::write(&config, r#"[{"domain": "edge", "descriptor": {"tenant": null}, "max": 1}]"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ug-rls-server"))
        .args(["--redis", &redis.url(), "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing field `seconds`"), "{err}");
}
