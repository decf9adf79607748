//! Global rules: limits counted for a whole fleet of Envoys by a rate limit service.
//!
//! A local rule is exact across the workers of one Envoy, but twenty sidecars that each allow
//! 100 requests a minute allow 2 000. Past one machine the count has to live in one store, and
//! production fleets already run one behind Envoy's rate limit service protocol
//! (envoyproxy/ratelimit on Redis, Kuadrant's Limitador). A global rule therefore asks that
//! service (`ShouldRateLimit`, see [`super::rls`]) and holds the request until it answers.
//!
//! This module decides everything about that exchange, so that the filter only moves bytes:
//!
//! - the `service` section of a rule: which cluster and domain, how long to wait, how the rule's
//!   key parts become descriptor entries, and what to do when the service fails
//!   ([`OnServiceError`]);
//! - the request for the rules that apply ([`Global::descriptor`], [`request`]);
//! - what an answer means for each rule ([`interpret`]): refused with a `Retry-After` from the
//!   service's reset time, admitted with its remaining count, or unlimited; and which of the
//!   service's extra headers may be added;
//! - the local pre-check ([`OverLimitMemo`]): once the service refused a key until its window
//!   resets, requests for that key are refused without asking again (for at most
//!   `cache_over_limit`). It only ever refuses what the service itself refused, so it saves round
//!   trips under load without admitting anything the service would not.

use serde::Deserialize;

use super::algorithm::Decision;
use super::config::Rule;
use super::headers::policy_field;
use super::key::{KeyPart, RequestView};
use super::rls::{Code, Entry, RateLimitDescriptor, RateLimitRequest, RateLimitResponse};
use crate::config::ConfigError;

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_S: u64 = 1_000_000_000;
/// How long a request waits for the service unless the rule says otherwise.
pub const DEFAULT_TIMEOUT_MS: u32 = 100;
/// How long a refusal by the service is remembered at most, unless the rule says otherwise.
pub const DEFAULT_CACHE_OVER_LIMIT_NS: u64 = 10 * NS_PER_S;
/// Headers taken from one answer, at most (each list).
pub const MAX_HEADERS: usize = 32;
/// Longest header value taken from an answer.
pub const MAX_HEADER_VALUE: usize = 8192;

/// What a global rule does when its service cannot answer (unreachable, timed out, a gRPC error,
/// an answer that is not a rate limit response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnServiceError {
    /// Count in the rule's local bucket instead (exact across this Envoy's workers), so the limit
    /// still holds per Envoy while the service is away.
    #[default]
    Local,
    /// Admit the request.
    Allow,
    /// Refuse the request with `error_status` and `upstream_guard.rate_limit_service_unavailable`.
    Deny,
}

/// The `service` section of a global rule, as written: the rate limit service (Envoy's RLS
/// protocol, `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) that counts for the
/// whole fleet.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceJson {
    /// The Envoy cluster of the service (HTTP/2, e.g. `ratelimit`).
    #[cfg_attr(feature = "schema", schemars(pattern(r"^[ -~]+$")))]
    cluster: String,
    /// The domain the service's limits are configured under.
    #[cfg_attr(feature = "schema", schemars(pattern(r"^[ -~]+$")))]
    domain: String,
    /// How long a request may wait for the answer, 1ms to 60s (default `100ms`).
    #[cfg_attr(feature = "schema", schemars(extend("default" = "100ms"), pattern(crate::schema::DURATION)))]
    #[serde(default)]
    timeout: Option<String>,
    /// The descriptor key of each part of the rule's `key`, in order (default: `client_ip` →
    /// `remote_address`, a header → its name, `path`, `method`, a constant → `generic_key`).
    #[serde(default)]
    descriptor_keys: Option<Vec<String>>,
    /// What the rule does when the service gives no verdict (unreachable, timed out, an error):
    /// `local` counts in this Envoy's own bucket (default), `allow` admits, `deny` refuses with
    /// `error_status`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "local")))]
    #[serde(default)]
    on_service_error: OnServiceError,
    /// Status of a refusal under `on_service_error: deny` (default 503).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 503), range(min = 400, max = 599)))]
    #[serde(default)]
    error_status: Option<u16>,
    /// How long an over-limit answer is remembered so the same key is refused without asking
    /// again (bounded by the answer's own reset time; `0s` never; default `10s`).
    #[cfg_attr(feature = "schema", schemars(extend("default" = "10s"), pattern(crate::schema::DURATION_OR_ZERO)))]
    #[serde(default)]
    cache_over_limit: Option<String>,
}

/// Where calls go. Global rules with the same cluster, domain and timeout share one call per
/// request, with a descriptor each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The Envoy cluster of the service (HTTP/2).
    pub cluster: String,
    /// The domain sent with every descriptor.
    pub domain: String,
    /// How long a call may take; the host cancels it after that.
    pub timeout_ms: u32,
    /// The host call's service argument: a `GrpcService` naming the cluster.
    pub grpc_service: Vec<u8>,
}

/// The global part of a validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// Index into [`super::RateLimitConfig::targets`].
    pub target: usize,
    /// The descriptor key of each key part, in the order of the rule's `key`.
    pub descriptor_keys: Vec<String>,
    /// What to do when the service fails.
    pub on_error: OnServiceError,
    /// Status of a refusal under `on_service_error: deny`.
    pub error_status: u16,
    /// How long a refusal by the service is remembered at most (0: never).
    pub cache_over_limit_ns: u64,
}

fn printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (b' '..=b'~').contains(&b))
}

impl ServiceJson {
    /// Validates the section of a rule keyed on `key`; `at` names fields (`rules[0].service.x`).
    /// Adds the section's target to `targets` unless an equal one is there.
    pub fn validate(
        self,
        key: &[KeyPart],
        at: &dyn Fn(&str) -> String,
        targets: &mut Vec<Target>,
    ) -> Result<Global, ConfigError> {
        if !printable(&self.cluster) {
            return Err(ConfigError::new(
                at("cluster"),
                format!("{:?} is empty or not printable ASCII", self.cluster),
                "name the Envoy cluster (HTTP/2) of the rate limit service, e.g. \"ratelimit\"",
            ));
        }
        if !printable(&self.domain) {
            return Err(ConfigError::new(
                at("domain"),
                format!("{:?} is empty or not printable ASCII", self.domain),
                "write the domain the service's limits are configured under, e.g. \"edge\"",
            ));
        }
        let default_timeout = u64::from(DEFAULT_TIMEOUT_MS) * NS_PER_MS;
        let timeout_ns = crate::config::duration(&at("timeout"), self.timeout.as_deref(), default_timeout, false)?;
        let timeout_ms = u32::try_from(timeout_ns / NS_PER_MS).unwrap_or(u32::MAX);
        if !(1..=60_000).contains(&timeout_ms) {
            return Err(ConfigError::new(
                at("timeout"),
                format!("{:?} is outside 1ms to 60s", self.timeout.unwrap_or_default()),
                "wait between \"1ms\" and \"60s\" (default \"100ms\"): the request is held that long at most",
            ));
        }
        let cache_over_limit_ns = crate::config::duration(
            &at("cache_over_limit"),
            self.cache_over_limit.as_deref(),
            DEFAULT_CACHE_OVER_LIMIT_NS,
            true,
        )?;
        let descriptor_keys = match self.descriptor_keys {
            None => key.iter().map(|p| p.descriptor_key().to_string()).collect(),
            Some(keys) if keys.len() != key.len() => {
                return Err(ConfigError::new(
                    at("descriptor_keys"),
                    format!("has {} names for {} key parts", keys.len(), key.len()),
                    "name one descriptor key per part of the rule's key, in the same order",
                ))
            }
            Some(keys) => {
                if let Some((i, bad)) = keys.iter().enumerate().find(|(_, k)| !printable(k)) {
                    return Err(ConfigError::new(
                        at(&format!("descriptor_keys[{i}]")),
                        format!("{bad:?} is empty or not printable ASCII"),
                        "use the key the service's configuration matches on, e.g. \"tenant\"",
                    ));
                }
                keys
            }
        };
        let error_status = crate::config::refusal_status(
            &at("error_status"),
            self.error_status.unwrap_or(503),
            "use 503 (the default) or 429",
        )?;
        let target = Target {
            grpc_service: super::rls::grpc_service(&self.cluster),
            cluster: self.cluster,
            domain: self.domain,
            timeout_ms,
        };
        let index = match targets.iter().position(|t| *t == target) {
            Some(i) => i,
            None => {
                targets.push(target);
                targets.len() - 1
            }
        };
        Ok(Global {
            target: index,
            descriptor_keys,
            on_error: self.on_service_error,
            error_status,
            cache_over_limit_ns,
        })
    }
}

impl Global {
    /// The descriptor of a request: one entry per key part, under its descriptor key.
    pub fn descriptor(&self, key: &[KeyPart], req: &mut dyn RequestView) -> RateLimitDescriptor {
        let entries = key
            .iter()
            .zip(&self.descriptor_keys)
            .map(|(part, name)| Entry { key: name.clone(), value: part.text(req) })
            .collect();
        RateLimitDescriptor { entries }
    }
}

/// The serialized `ShouldRateLimit` request: `descriptors` in `domain`, one hit.
pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> Vec<u8> {
    RateLimitRequest { domain: domain.to_string(), descriptors, hits_addend: 1 }.to_bytes()
}

/// Why a call to the service gave no verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceError {
    /// The host refused to send the call: Envoy has no such cluster, or too many calls wait.
    NotSent,
    /// The call ended with a gRPC status other than OK (Envoy reports 14 for an unreachable
    /// service and for a timeout).
    Grpc(u32),
    /// The answer is not a rate limit response, or its overall code is UNKNOWN.
    Garbage,
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceError::NotSent => {
                write!(f, "the call could not be sent: check that the cluster exists in Envoy and speaks HTTP/2")
            }
            ServiceError::Grpc(14) => write!(
                f,
                "gRPC status 14 (unavailable or timed out): check that the service runs and answers within the timeout"
            ),
            ServiceError::Grpc(s) => write!(f, "gRPC status {s}: check the service's logs"),
            ServiceError::Garbage => write!(
                f,
                "the answer is not a rate limit response: check that the cluster points at a ShouldRateLimit service"
            ),
        }
    }
}

impl std::error::Error for ServiceError {}

/// What the service said about one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalStatus {
    /// Admitted (with the service's remaining count and reset time) or refused (with the time
    /// until the service's window resets, or the rule's period when it did not say).
    pub decision: Decision,
    /// `RateLimit-Policy` item from the limit the service named; `None`: the rule's own.
    pub policy: Option<String>,
    /// False when the service applies no limit to this descriptor: no RateLimit fields for it.
    pub reported: bool,
    /// The service's `duration_until_reset` (refusals the pre-check may remember).
    pub reset_ns: Option<u64>,
}

/// Everything an answer means.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    /// One status per rule asked about, in order.
    pub statuses: Vec<GlobalStatus>,
    /// Headers for the client's response (refused or admitted), checked and lowercased.
    pub response_headers: Vec<(String, Vec<u8>)>,
    /// Headers for the upstream request when it is admitted.
    pub request_headers: Vec<(String, Vec<u8>)>,
}

/// What `message` (a `RateLimitResponse`) says about `rules`, the rules whose descriptors the
/// request carried, in order.
///
/// The overall code decides, as in Envoy's own filter: `OK` admits every rule (a status that
/// says otherwise still admits), `OVER_LIMIT` refuses the rules whose status says `OVER_LIMIT`,
/// or every rule when the statuses do not say which (a service may send none). `UNKNOWN` or a
/// message that does not parse is a [`ServiceError::Garbage`].
pub fn interpret(message: &[u8], rules: &[&Rule]) -> Result<Answer, ServiceError> {
    let response = RateLimitResponse::from_bytes(message).ok_or(ServiceError::Garbage)?;
    let overall = response.overall_code();
    if overall == Code::Unknown {
        return Err(ServiceError::Garbage);
    }
    let per_descriptor = response.statuses.len() == rules.len();
    let named = per_descriptor && response.statuses.iter().any(|s| s.code() == Code::OverLimit);
    let statuses = rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let status = response.statuses.get(i).filter(|_| per_descriptor);
            let refused = overall == Code::OverLimit && (!named || status.is_some_and(|s| s.code() == Code::OverLimit));
            status_of(rule, status, refused)
        })
        .collect();
    Ok(Answer {
        statuses,
        response_headers: headers(&response.response_headers_to_add),
        request_headers: headers(&response.request_headers_to_add),
    })
}

fn status_of(rule: &Rule, status: Option<&super::rls::DescriptorStatus>, refused: bool) -> GlobalStatus {
    let limit = status.and_then(|s| s.current_limit.as_ref());
    let reset_ns = status.and_then(|s| s.duration_until_reset.as_ref()).map(|d| d.as_nanos()).filter(|n| *n > 0);
    let window = limit.and_then(|l| l.window_secs());
    let policy = limit.map(|l| policy_field(&rule.quoted, u64::from(l.requests_per_unit), window.unwrap_or(1)));
    if refused {
        let retry_after_ns = reset_ns.unwrap_or(rule.limit.period_ns);
        return GlobalStatus { decision: Decision::Limited { retry_after_ns }, policy, reported: true, reset_ns };
    }
    match (status, limit) {
        (Some(s), Some(_)) => {
            let reset = reset_ns.or(window.map(|w| w.saturating_mul(NS_PER_S))).unwrap_or(rule.limit.period_ns);
            GlobalStatus {
                decision: Decision::Allowed { remaining: u64::from(s.limit_remaining), reset_ns: reset },
                policy,
                reported: true,
                reset_ns,
            }
        }
        // No limit named: the service does not limit this descriptor (or did not say how).
        _ => GlobalStatus {
            decision: Decision::Allowed { remaining: 0, reset_ns: 0 },
            policy,
            reported: false,
            reset_ns,
        },
    }
}

/// Headers that are safe to add: a valid lowercase name that is not a pseudo-header or a framing
/// header, a value without CR, LF or NUL; at most [`MAX_HEADERS`], values up to
/// [`MAX_HEADER_VALUE`] bytes. Anything else is dropped.
fn headers(list: &[super::rls::HeaderValue]) -> Vec<(String, Vec<u8>)> {
    list.iter()
        .filter_map(|h| {
            let name = h.key.to_ascii_lowercase();
            let value = if h.raw_value.is_empty() { h.value.as_bytes() } else { h.raw_value.as_slice() };
            let name_ok = crate::config::header_name("", &name).is_ok()
                && !matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection" | "host");
            let value_ok = value.len() <= MAX_HEADER_VALUE && !value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0));
            (name_ok && value_ok).then(|| (name, value.to_vec()))
        })
        .take(MAX_HEADERS)
        .collect()
}

/// The pre-check's memory of a refusal: the key (by fingerprint) the service refused, until when
/// it is refused without asking, and when the service's window resets. One shared-data value
/// per slot, like a local bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimitMemo {
    /// [`crate::hash::hash64`] of the rule name and key: a slot shared by two keys never
    /// refuses the other one.
    pub fingerprint: u64,
    /// Refuse without asking until then (nanoseconds, host clock).
    pub refuse_until: u64,
    /// When the service's window resets (for `Retry-After`).
    pub reset_at: u64,
}

impl OverLimitMemo {
    const TAG: u8 = 3;

    /// The memo to keep after `status`, for a call sent at `sent_at`: only a refusal that says
    /// when it ends, remembered for at most `cache_ns`. Times count from when the call was sent,
    /// before the service looked, so the memo never outlives the service's own window.
    pub fn after(status: &GlobalStatus, fingerprint: u64, sent_at: u64, cache_ns: u64) -> Option<OverLimitMemo> {
        if !matches!(status.decision, Decision::Limited { .. }) || cache_ns == 0 {
            return None;
        }
        let reset = status.reset_ns?;
        Some(OverLimitMemo {
            fingerprint,
            refuse_until: sent_at.saturating_add(reset.min(cache_ns)),
            reset_at: sent_at.saturating_add(reset),
        })
    }

    /// The shared-data encoding: a tag byte, then three little-endian u64s.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(25);
        out.push(Self::TAG);
        for w in [self.fingerprint, self.refuse_until, self.reset_at] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Parses the encoding; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<OverLimitMemo> {
        let (&tag, rest) = bytes.split_first()?;
        if tag != Self::TAG || rest.len() != 24 {
            return None;
        }
        let word = |i: usize| -> Option<u64> { Some(u64::from_le_bytes(rest.get(i * 8..i * 8 + 8)?.try_into().ok()?)) };
        Some(OverLimitMemo { fingerprint: word(0)?, refuse_until: word(1)?, reset_at: word(2)? })
    }

    /// The pre-check: a refusal when `stored` remembers that the service refused this key and
    /// the memo still holds at `now`; `None` means "ask the service".
    pub fn check(stored: Option<&[u8]>, fingerprint: u64, now: u64) -> Option<Decision> {
        let memo = OverLimitMemo::decode(stored?)?;
        (memo.fingerprint == fingerprint && now < memo.refuse_until)
            .then(|| Decision::Limited { retry_after_ns: memo.reset_at.saturating_sub(now).max(1) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::ClientAddr;
    use crate::ratelimit::rls::{DescriptorStatus, Duration, HeaderValue, RateLimit, Unit};
    use crate::ratelimit::{FixedRequest, RateLimitConfig};
    use prost::Message;

    const S: u64 = NS_PER_S;

    fn config(service: &str) -> Result<RateLimitConfig, ConfigError> {
        let json = format!(
            r#"{{"rules": [{{"name": "t", "key": [{{"header": "x-tenant"}}, "client_ip"], "global": true,
                 "limit": {{"requests": 100, "per": "1m"}}, "service": {service}}}]}}"#
        );
        RateLimitConfig::from_json(json.as_bytes())
    }

    fn rule() -> Rule {
        config(r#"{"cluster": "rls", "domain": "edge"}"#).unwrap().rules.remove(0)
    }

    fn encode(r: &RateLimitResponse) -> Vec<u8> {
        r.encode_to_vec()
    }

    fn over(remaining: u32, reset_s: i64) -> DescriptorStatus {
        DescriptorStatus {
            code: Code::OverLimit as i32,
            current_limit: Some(RateLimit { requests_per_unit: 100, unit: Unit::Minute as i32, name: String::new() }),
            limit_remaining: remaining,
            duration_until_reset: Some(Duration { seconds: reset_s, nanos: 0 }),
        }
    }

    #[test]
    fn the_service_section_has_defaults_and_names_its_fields() {
        let r = rule();
        let g = r.global.as_ref().unwrap();
        assert_eq!(g.descriptor_keys, ["x-tenant", "remote_address"]);
        assert_eq!((g.on_error, g.error_status, g.cache_over_limit_ns), (OnServiceError::Local, 503, 10 * S));
        let c = config(r#"{"cluster": "rls", "domain": "edge"}"#).unwrap();
        assert_eq!(c.targets[0].timeout_ms, 100);
        assert_eq!(c.targets[0].grpc_service, super::super::rls::grpc_service("rls"));

        let cases = [
            (r#"{"cluster": "", "domain": "edge"}"#, "rules[0].service.cluster"),
            (r#"{"cluster": "rls", "domain": ""}"#, "rules[0].service.domain"),
            (r#"{"cluster": "rls", "domain": "e", "timeout": "0.5ms"}"#, "rules[0].service.timeout"),
            (r#"{"cluster": "rls", "domain": "e", "timeout": "2m"}"#, "rules[0].service.timeout"),
            (r#"{"cluster": "rls", "domain": "e", "descriptor_keys": ["a"]}"#, "rules[0].service.descriptor_keys"),
            (
                r#"{"cluster": "rls", "domain": "e", "descriptor_keys": ["a", ""]}"#,
                "rules[0].service.descriptor_keys[1]",
            ),
            (r#"{"cluster": "rls", "domain": "e", "on_service_error": "retry"}"#, "rules[0].service.on_service_error"),
            (r#"{"cluster": "rls", "domain": "e", "error_status": 200}"#, "rules[0].service.error_status"),
            (r#"{"cluster": "rls", "domain": "e", "cache_over_limit": "soon"}"#, "rules[0].service.cache_over_limit"),
            (r#"{"cluster": "rls", "domain": "e", "clutser": "x"}"#, "rules[0].service"),
            (r#"{"domain": "e"}"#, "rules[0].service"),
        ];
        for (service, field) in cases {
            let e = config(service).unwrap_err();
            assert!(e.field.starts_with(field), "{service}: got {:?} ({e})", e.field);
            assert!(!e.fix.is_empty());
        }
    }

    #[test]
    fn global_and_service_go_together() {
        let no_service = br#"{"rules": [{"name": "a", "global": true, "limit": {"requests": 1, "per": "1s"}}]}"#;
        assert_eq!(RateLimitConfig::from_json(no_service).unwrap_err().field, "rules[0].global");
        let not_global = br#"{"rules": [{"name": "a", "limit": {"requests": 1, "per": "1s"},
                              "service": {"cluster": "rls", "domain": "e"}}]}"#;
        assert_eq!(RateLimitConfig::from_json(not_global).unwrap_err().field, "rules[0].service");
    }

    #[test]
    fn rules_sharing_a_service_share_a_target() {
        let c = RateLimitConfig::from_json(
            br#"{"apply": "all", "rules": [
              {"name": "a", "global": true, "limit": {"requests": 1, "per": "1s"}, "service": {"cluster": "rls", "domain": "e"}},
              {"name": "b", "global": true, "limit": {"requests": 1, "per": "1s"}, "service": {"cluster": "rls", "domain": "e", "on_service_error": "deny"}},
              {"name": "c", "global": true, "limit": {"requests": 1, "per": "1s"}, "service": {"cluster": "rls", "domain": "f"}},
              {"name": "d", "limit": {"requests": 1, "per": "1s"}}]}"#,
        )
        .unwrap();
        let targets: Vec<Option<usize>> = c.rules.iter().map(|r| r.global.as_ref().map(|g| g.target)).collect();
        assert_eq!(targets, [Some(0), Some(0), Some(1), None]);
        assert_eq!(c.targets.len(), 2);
        assert!(c.any_global());
    }

    #[test]
    fn descriptors_map_key_parts_to_entries_in_order() {
        let r = rule();
        let mut req = FixedRequest {
            headers: vec![("x-tenant".into(), b"acme".to_vec())],
            client: Some(ClientAddr::Peer("10.1.2.3".parse().unwrap())),
            ..Default::default()
        };
        let d = r.global.as_ref().unwrap().descriptor(&r.key, &mut req);
        let pairs: Vec<(&str, &str)> = d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
        assert_eq!(pairs, [("x-tenant", "acme"), ("remote_address", "10.1.2.3")]);
        let bytes = request("edge", vec![d.clone()]);
        let back = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!((back.domain.as_str(), back.descriptors, back.hits_addend), ("edge", vec![d], 1));
    }

    #[test]
    fn over_limit_refuses_with_the_services_reset_and_limit() {
        let r = rule();
        let msg = encode(&RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![over(0, 42)],
            response_headers_to_add: vec![
                HeaderValue { key: "X-Why".into(), value: "quota".into(), raw_value: vec![] },
                HeaderValue { key: "content-length".into(), value: "1".into(), raw_value: vec![] },
                HeaderValue { key: "x-bad".into(), value: "a\r\nb".into(), raw_value: vec![] },
                HeaderValue { key: ":status".into(), value: "200".into(), raw_value: vec![] },
                HeaderValue { key: "x-raw".into(), value: String::new(), raw_value: vec![0xff, b'a'] },
            ],
            ..Default::default()
        });
        let a = interpret(&msg, &[&r]).unwrap();
        assert_eq!(
            a.statuses,
            [GlobalStatus {
                decision: Decision::Limited { retry_after_ns: 42 * S },
                policy: Some(r#""t";q=100;w=60"#.into()),
                reported: true,
                reset_ns: Some(42 * S),
            }]
        );
        assert_eq!(a.response_headers, [("x-why".to_string(), b"quota".to_vec()), ("x-raw".into(), vec![0xff, b'a'])]);
    }

    #[test]
    fn ok_admits_with_the_remaining_count_or_unreported_when_no_limit_applies() {
        let r = rule();
        let mut s = over(7, 30);
        s.code = Code::Ok as i32;
        let msg = encode(&RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![s, DescriptorStatus { code: Code::Ok as i32, ..Default::default() }],
            request_headers_to_add: vec![HeaderValue { key: "x-plan".into(), value: "gold".into(), raw_value: vec![] }],
            ..Default::default()
        });
        let a = interpret(&msg, &[&r, &r]).unwrap();
        assert_eq!(a.statuses[0].decision, Decision::Allowed { remaining: 7, reset_ns: 30 * S });
        assert!(a.statuses[0].reported);
        assert!(a.statuses[1].decision.allowed() && !a.statuses[1].reported);
        assert_eq!(a.request_headers, [("x-plan".to_string(), b"gold".to_vec())]);
    }

    #[test]
    fn the_overall_code_decides_and_missing_statuses_refuse_every_rule() {
        let r = rule();
        // OK overall with an over-limit status (a service in shadow mode): admitted.
        let shadow = encode(&RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![over(0, 5)],
            ..Default::default()
        });
        assert!(interpret(&shadow, &[&r]).unwrap().statuses[0].decision.allowed());
        // OVER_LIMIT without statuses: every rule refused, Retry-After = the rule's period.
        let bare = encode(&RateLimitResponse { overall_code: Code::OverLimit as i32, ..Default::default() });
        let a = interpret(&bare, &[&r, &r]).unwrap();
        assert!(a.statuses.iter().all(|s| s.decision == Decision::Limited { retry_after_ns: 60 * S }));
        // OVER_LIMIT naming the second descriptor only.
        let mut ok = over(3, 5);
        ok.code = Code::Ok as i32;
        let second = encode(&RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![ok, over(0, 9)],
            ..Default::default()
        });
        let a = interpret(&second, &[&r, &r]).unwrap();
        assert!(a.statuses[0].decision.allowed());
        assert_eq!(a.statuses[1].decision, Decision::Limited { retry_after_ns: 9 * S });
    }

    #[test]
    fn garbage_and_unknown_codes_are_service_errors() {
        let r = rule();
        assert_eq!(interpret(b"\xff\xff\xff", &[&r]), Err(ServiceError::Garbage));
        assert_eq!(interpret(b"", &[&r]), Err(ServiceError::Garbage), "an empty message says UNKNOWN");
        let odd = encode(&RateLimitResponse { overall_code: 9, ..Default::default() });
        assert_eq!(interpret(&odd, &[&r]), Err(ServiceError::Garbage));
        for e in [ServiceError::NotSent, ServiceError::Grpc(14), ServiceError::Grpc(2), ServiceError::Garbage] {
            assert!(e.to_string().contains("check"), "{e}");
        }
    }

    #[test]
    fn the_memo_refuses_only_the_same_key_until_its_time() {
        let refused = GlobalStatus {
            decision: Decision::Limited { retry_after_ns: 30 * S },
            policy: None,
            reported: true,
            reset_ns: Some(30 * S),
        };
        let memo = OverLimitMemo::after(&refused, 7, 100 * S, 10 * S).unwrap();
        assert_eq!(memo, OverLimitMemo { fingerprint: 7, refuse_until: 110 * S, reset_at: 130 * S });
        let stored = memo.encode();
        assert_eq!(OverLimitMemo::decode(&stored), Some(memo));
        assert_eq!(OverLimitMemo::check(Some(&stored), 7, 105 * S), Some(Decision::Limited { retry_after_ns: 25 * S }));
        assert_eq!(OverLimitMemo::check(Some(&stored), 7, 110 * S), None, "cached for at most cache_over_limit");
        assert_eq!(OverLimitMemo::check(Some(&stored), 8, 105 * S), None, "another key in the same slot");
        assert_eq!(OverLimitMemo::check(None, 7, 105 * S), None);
        assert_eq!(OverLimitMemo::check(Some(&[1, 2, 3]), 7, 105 * S), None, "a local bucket's value");
        // Nothing to remember: admissions, refusals without a reset time, a disabled cache.
        let ok = GlobalStatus { decision: Decision::Allowed { remaining: 0, reset_ns: S }, ..refused.clone() };
        assert_eq!(OverLimitMemo::after(&ok, 7, 0, 10 * S), None);
        let vague = GlobalStatus { reset_ns: None, ..refused.clone() };
        assert_eq!(OverLimitMemo::after(&vague, 7, 0, 10 * S), None);
        assert_eq!(OverLimitMemo::after(&refused, 7, 0, 0), None);
        // A short window is remembered only as long as it lasts.
        let short = GlobalStatus { reset_ns: Some(2 * S), ..refused };
        assert_eq!(OverLimitMemo::after(&short, 7, 0, 10 * S).map(|m| m.refuse_until), Some(2 * S));
    }
}
