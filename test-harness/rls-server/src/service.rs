//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, counting in Redis.
//!
//! The mapping follows Kuadrant's limitador-server: a descriptor's entries become a string map;
//! the request's domain selects the limits; a `hits_addend` of 0 counts as 1; a Redis failure
//! answers `UNAVAILABLE`. Each descriptor is checked and counted on its own and gets its own
//! status, in request order, as Envoy expects from its reference service; the request is over
//! limit when any descriptor is. For one descriptor, every matching limit is checked and counted
//! in one Lua script, all or nothing, so counts are exact however many Envoys and servers share
//! the Redis. Test knobs (delay, forced errors) act before anything is counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use redis::aio::ConnectionManager;
use tonic::{Request, Response, Status};

use crate::config::LimitSpec;

/// Checks every counter against `hits` and, only when none would go over its maximum, adds
/// `hits` to all of them, starting a counter's window (its expiry) with its first hit.
/// KEYS: counters. ARGV: hits, then (max, window seconds) per key.
/// Returns: 1 if limited else 0, then (value, milliseconds to expiry) per key.
const CHECK_AND_COUNT: &str = r"
local hits = tonumber(ARGV[1])
local values = {}
local limited = 0
for i, key in ipairs(KEYS) do
  values[i] = tonumber(redis.call('GET', key) or '0')
  if values[i] + hits > tonumber(ARGV[2 * i]) then limited = 1 end
end
local out = {limited}
for i, key in ipairs(KEYS) do
  if limited == 0 then
    values[i] = redis.call('INCRBY', key, hits)
    if redis.call('PTTL', key) < 0 then redis.call('EXPIRE', key, ARGV[2 * i + 1]) end
  end
  table.insert(out, values[i])
  table.insert(out, redis.call('PTTL', key))
end
return out
";

/// What the server has answered so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// `ShouldRateLimit` calls received (including those answered with an error).
    pub calls: u64,
    /// Calls answered `OK`.
    pub ok: u64,
    /// Calls answered `OVER_LIMIT`.
    pub over_limit: u64,
    /// Calls answered with a gRPC error (forced, storage failure or storage timeout).
    pub errors: u64,
}

/// Knobs a test turns while the server runs, and the counts it reads.
#[derive(Debug)]
pub(crate) struct Shared {
    delay_ms: AtomicU64,
    /// A `tonic::Code` as i32, or -1 for "answer normally".
    fail_code: AtomicI32,
    storage_timeout_ms: AtomicU64,
    calls: AtomicU64,
    ok: AtomicU64,
    over_limit: AtomicU64,
    errors: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            delay_ms: AtomicU64::new(0),
            fail_code: AtomicI32::new(-1),
            storage_timeout_ms: AtomicU64::new(1000),
            calls: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            over_limit: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
}

impl Shared {
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    pub(crate) fn fail_with(&self, code: Option<tonic::Code>) {
        self.fail_code.store(code.map_or(-1, |c| c as i32), Ordering::SeqCst);
    }

    pub(crate) fn set_storage_timeout(&self, timeout: Duration) {
        self.storage_timeout_ms.store(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            calls: self.calls.load(Ordering::SeqCst),
            ok: self.ok.load(Ordering::SeqCst),
            over_limit: self.over_limit.load(Ordering::SeqCst),
            errors: self.errors.load(Ordering::SeqCst),
        }
    }

    fn error(&self, status: Status) -> Status {
        self.errors.fetch_add(1, Ordering::SeqCst);
        status
    }
}

/// The gRPC service: the limits, a Redis connection, and [`Shared`] for knobs.
pub(crate) struct Rls {
    limits: Vec<LimitSpec>,
    redis: ConnectionManager,
    script: redis::Script,
    shared: Arc<Shared>,
}

impl Rls {
    pub(crate) fn new(limits: Vec<LimitSpec>, redis: ConnectionManager, shared: Arc<Shared>) -> Self {
        Rls { limits, redis, script: redis::Script::new(CHECK_AND_COUNT), shared }
    }

    /// Checks and counts one descriptor: its status, or the gRPC error to answer.
    async fn check(
        &self,
        domain: &str,
        descriptor: &RateLimitDescriptor,
        hits: u64,
    ) -> Result<DescriptorStatus, Status> {
        let entries: BTreeMap<&str, &str> =
            descriptor.entries.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
        let matched: Vec<(&LimitSpec, String)> = self
            .limits
            .iter()
            .filter_map(|l| l.counts(domain, &entries).map(|values| (l, l.counter_key(&values))))
            .collect();
        if matched.is_empty() {
            return Ok(DescriptorStatus { code: Code::Ok as i32, ..Default::default() });
        }
        let mut call = self.script.prepare_invoke();
        call.arg(hits);
        for (limit, key) in &matched {
            call.key(key).arg(limit.max).arg(limit.seconds);
        }
        let timeout = Duration::from_millis(self.shared.storage_timeout_ms.load(Ordering::SeqCst));
        let mut redis = self.redis.clone();
        let answer: Vec<i64> = match tokio::time::timeout(timeout, call.invoke_async(&mut redis)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(Status::unavailable(format!("ug-rls-server: Redis failed: {e}"))),
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "ug-rls-server: Redis did not answer within {} ms",
                    timeout.as_millis()
                )))
            }
        };
        let limited = answer.first() == Some(&1);
        let counters = matched.iter().zip(answer.get(1..).unwrap_or_default().chunks(2)).map(|((limit, _), pair)| {
            let value = pair.first().copied().unwrap_or(0);
            let pttl = pair.get(1).copied().unwrap_or(-1);
            let remaining = limit.max.saturating_sub(u64::try_from(value).unwrap_or(0));
            // A counter that does not exist (over a maximum of 0) resets a whole window from now.
            let reset = u64::try_from(pttl).map_or(Duration::from_secs(limit.seconds), Duration::from_millis);
            (*limit, remaining, reset)
        });
        Ok(status_of(limited, counters))
    }
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let shared = &self.shared;
        shared.calls.fetch_add(1, Ordering::SeqCst);
        let delay = shared.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let code = shared.fail_code.load(Ordering::SeqCst);
        if code >= 0 {
            return Err(
                shared.error(Status::new(tonic::Code::from_i32(code), "ug-rls-server: failing every call (fail_with)"))
            );
        }
        let request = request.into_inner();
        let mut statuses = Vec::with_capacity(request.descriptors.len());
        for descriptor in &request.descriptors {
            let hits = hits_of(descriptor, request.hits_addend);
            statuses.push(self.check(&request.domain, descriptor, hits).await.map_err(|e| shared.error(e))?);
        }
        let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
        let (overall, counter) = if over { (Code::OverLimit, &shared.over_limit) } else { (Code::Ok, &shared.ok) };
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(RateLimitResponse { overall_code: overall as i32, statuses, ..Default::default() }))
    }
}

/// The hits a descriptor adds: its own `hits_addend` if set, else the request's; 0 counts as 1.
fn hits_of(descriptor: &RateLimitDescriptor, request_hits: u32) -> u64 {
    descriptor.hits_addend.as_ref().map_or(u64::from(request_hits), |h| h.value).max(1)
}

/// The status of one descriptor from its counters (limit, hits remaining, time to reset): the
/// most restrictive one (fewest remaining) speaks for it.
fn status_of<'a>(limited: bool, counters: impl Iterator<Item = (&'a LimitSpec, u64, Duration)>) -> DescriptorStatus {
    let code = if limited { Code::OverLimit } else { Code::Ok };
    let Some((limit, remaining, reset)) = counters.min_by_key(|(_, remaining, _)| *remaining) else {
        return DescriptorStatus { code: code as i32, ..Default::default() };
    };
    let (unit, note) = unit_of(limit.seconds);
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            name: note.unwrap_or_default(),
            requests_per_unit: clamp_u32(limit.max),
            unit: unit as i32,
        }),
        limit_remaining: clamp_u32(remaining),
        duration_until_reset: Some(PbDuration {
            seconds: i64::try_from(reset.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(reset.subsec_nanos()).unwrap_or(0),
        }),
        quota: None,
    }
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The RLS unit of a window: exact for 1 s, 60 s, 3600 s and 86400 s; otherwise the closest
/// smaller unit, with a note (sent as the limit's `name`, which Envoy shows in
/// `X-RateLimit-Limit`) giving the real window.
pub fn unit_of(seconds: u64) -> (Unit, Option<String>) {
    let (unit, unit_seconds) = match seconds {
        0..=59 => (Unit::Second, 1),
        60..=3599 => (Unit::Minute, 60),
        3600..=86_399 => (Unit::Hour, 3600),
        _ => (Unit::Day, 86_400),
    };
    let note = (seconds != unit_seconds).then(|| format!("window {seconds}s"));
    (unit, note)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use envoy_types::pb::google::protobuf::UInt64Value;

    use super::*;

    #[test]
    fn exact_units_have_no_note_and_others_round_down_with_one() {
        assert_eq!(unit_of(1), (Unit::Second, None));
        assert_eq!(unit_of(60), (Unit::Minute, None));
        assert_eq!(unit_of(3600), (Unit::Hour, None));
        assert_eq!(unit_of(86_400), (Unit::Day, None));
        assert_eq!(unit_of(10), (Unit::Second, Some("window 10s".into())));
        assert_eq!(unit_of(90), (Unit::Minute, Some("window 90s".into())));
        assert_eq!(unit_of(7200), (Unit::Hour, Some("window 7200s".into())));
        assert_eq!(unit_of(604_800), (Unit::Day, Some("window 604800s".into())));
    }

    #[test]
    fn hits_come_from_the_descriptor_then_the_request_and_zero_is_one() {
        let mut d = RateLimitDescriptor::default();
        assert_eq!(hits_of(&d, 0), 1);
        assert_eq!(hits_of(&d, 4), 4);
        d.hits_addend = Some(UInt64Value { value: 7 });
        assert_eq!(hits_of(&d, 4), 7);
        d.hits_addend = Some(UInt64Value { value: 0 });
        assert_eq!(hits_of(&d, 4), 1);
    }

    #[test]
    fn the_tightest_counter_speaks_for_the_descriptor() {
        let wide = LimitSpec::new("d", 100, 60).any("k");
        let narrow = LimitSpec::new("d", 10, 10).any("k");
        let s = status_of(
            true,
            [(&wide, 40, Duration::from_secs(30)), (&narrow, 0, Duration::from_millis(2500))].into_iter(),
        );
        assert_eq!(s.code, Code::OverLimit as i32);
        assert_eq!(
            s.current_limit,
            Some(RateLimit { name: "window 10s".into(), requests_per_unit: 10, unit: Unit::Second as i32 })
        );
        assert_eq!(s.limit_remaining, 0);
        assert_eq!(s.duration_until_reset, Some(PbDuration { seconds: 2, nanos: 500_000_000 }));
        assert_eq!(
            status_of(false, std::iter::empty()),
            DescriptorStatus { code: Code::Ok as i32, ..Default::default() }
        );
    }
}
