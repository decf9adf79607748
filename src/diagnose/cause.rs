//! Classification: one cause per response, chosen from the flags first (Envoy's own verdict),
//! then from `response.code_details` and the transport failure reason, then from the status.

use super::flags::{Flag, ResponseFlags};
use crate::details;

/// What Envoy reported about one response. Every field may be missing on some hosts or paths, so
/// absence is a value (`None`, empty string, no flags), never an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observation<'a> {
    /// `response.code` (or `:status`).
    pub status: Option<u16>,
    /// `response.flags`.
    pub flags: ResponseFlags,
    /// `response.code_details`, e.g. `via_upstream` or `upstream_reset_before_response_started{…}`.
    pub details: &'a str,
    /// `upstream.transport_failure_reason`, e.g. `delayed connect error: Connection refused`.
    pub transport_failure: &'a str,
    /// The `grpc-status` of a gRPC trailers-only response (headers that end the stream) when it
    /// is not 0: the failure a backend reports under HTTP 200.
    pub grpc_status: Option<u32>,
}

impl Observation<'_> {
    /// The status the response stands for: a trailers-only gRPC failure's status mapped as Envoy
    /// maps gRPC to HTTP ([`grpc_to_http`]: UNAVAILABLE is 503), else the HTTP status.
    pub fn effective_status(&self) -> Option<u16> {
        match self.grpc_status {
            Some(g) if g != 0 => Some(grpc_to_http(g)),
            _ => self.status,
        }
    }
}

/// The HTTP status Envoy maps a gRPC status to (`Grpc::Utility::grpcToHttpStatus`), so that a
/// backend's gRPC failure counts against the same `statuses` lists as an HTTP one.
pub fn grpc_to_http(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// The diagnosis vocabulary: the `cause` token of `x-upstream-diagnosis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    ConnectionRefused,
    ConnectTimeout,
    TlsHandshakeFailed,
    NoHealthyUpstream,
    UpstreamTimeout,
    UpstreamConnectionTerminated,
    UpstreamReset,
    UpstreamOverflow,
    RetryLimitExceeded,
    NoRoute,
    ClusterNotFound,
    DnsResolutionFailed,
    RateLimited,
    RateLimitServiceUnavailable,
    LocalHealthCheckFailed,
    DownstreamDisconnected,
    UpstreamErrorResponse,
    CircuitOpen,
    /// The adaptive concurrency stage shed the request: its class's share of the cluster's limit
    /// on requests in flight was taken.
    ConcurrencyLimited,
    /// The upstream answers, but too late: its circuit opened on the share of slow calls.
    UpstreamSlow,
    ProtocolError,
    Unauthorized,
    FaultInjected,
    Overloaded,
    /// An LLM provider answered 429: it is paused for the time it asked.
    UpstreamRateLimited,
    /// Every provider configured for the requested model is out (each with its reason).
    ModelUnavailable,
    /// The request names a model the gateway does not route.
    UnknownModel,
    /// The request body is not an OpenAI-compatible JSON request the gateway can route.
    InvalidRequest,
    Unknown,
    None,
}

impl Cause {
    /// Every cause, in the order the README's table lists them.
    pub const ALL: [Cause; 30] = [
        Cause::ConnectionRefused,
        Cause::ConnectTimeout,
        Cause::TlsHandshakeFailed,
        Cause::NoHealthyUpstream,
        Cause::UpstreamTimeout,
        Cause::UpstreamConnectionTerminated,
        Cause::UpstreamReset,
        Cause::UpstreamOverflow,
        Cause::RetryLimitExceeded,
        Cause::NoRoute,
        Cause::ClusterNotFound,
        Cause::DnsResolutionFailed,
        Cause::RateLimited,
        Cause::RateLimitServiceUnavailable,
        Cause::LocalHealthCheckFailed,
        Cause::DownstreamDisconnected,
        Cause::UpstreamErrorResponse,
        Cause::CircuitOpen,
        Cause::ConcurrencyLimited,
        Cause::UpstreamSlow,
        Cause::ProtocolError,
        Cause::Unauthorized,
        Cause::FaultInjected,
        Cause::Overloaded,
        Cause::UpstreamRateLimited,
        Cause::ModelUnavailable,
        Cause::UnknownModel,
        Cause::InvalidRequest,
        Cause::Unknown,
        Cause::None,
    ];

    /// The structured-field token.
    pub const fn token(self) -> &'static str {
        match self {
            Cause::ConnectionRefused => "connection_refused",
            Cause::ConnectTimeout => "connect_timeout",
            Cause::TlsHandshakeFailed => "tls_handshake_failed",
            Cause::NoHealthyUpstream => "no_healthy_upstream",
            Cause::UpstreamTimeout => "upstream_timeout",
            Cause::UpstreamConnectionTerminated => "upstream_connection_terminated",
            Cause::UpstreamReset => "upstream_reset",
            Cause::UpstreamOverflow => "upstream_overflow",
            Cause::RetryLimitExceeded => "retry_limit_exceeded",
            Cause::NoRoute => "no_route",
            Cause::ClusterNotFound => "cluster_not_found",
            Cause::DnsResolutionFailed => "dns_resolution_failed",
            Cause::RateLimited => "rate_limited",
            Cause::RateLimitServiceUnavailable => "rate_limit_service_unavailable",
            Cause::LocalHealthCheckFailed => "local_health_check_failed",
            Cause::DownstreamDisconnected => "downstream_disconnected",
            Cause::UpstreamErrorResponse => "upstream_error_response",
            Cause::CircuitOpen => "circuit_open",
            Cause::ConcurrencyLimited => "concurrency_limited",
            Cause::UpstreamSlow => "upstream_slow",
            Cause::ProtocolError => "protocol_error",
            Cause::Unauthorized => "unauthorized",
            Cause::FaultInjected => "fault_injected",
            Cause::Overloaded => "overloaded",
            Cause::UpstreamRateLimited => "upstream_rate_limited",
            Cause::ModelUnavailable => "model_unavailable",
            Cause::UnknownModel => "unknown_model",
            Cause::InvalidRequest => "invalid_request",
            Cause::Unknown => "unknown",
            Cause::None => "none",
        }
    }

    /// One actionable sentence for the on-call engineer.
    pub const fn hint(self) -> &'static str {
        match self {
            Cause::ConnectionRefused => {
                "nothing accepted the connection: is the backend running and listening on this port?"
            }
            Cause::ConnectTimeout => {
                "the connection attempt timed out: check the network path and firewalls to the backend, and the cluster's connect_timeout"
            }
            Cause::TlsHandshakeFailed => {
                "the TLS handshake with the upstream failed: check its certificate (expiry, issuer, names) against the cluster's validation context and SNI"
            }
            Cause::NoHealthyUpstream => {
                "no endpoint of the cluster is healthy (or it has none): check the health-check results and service discovery for this cluster"
            }
            Cause::UpstreamTimeout => {
                "the upstream took the request but did not answer in time: check the backend's latency and the route's timeout"
            }
            Cause::UpstreamConnectionTerminated => {
                "the upstream closed the connection before answering: check the backend's logs for crashes or restarts, and keep-alive timeouts"
            }
            Cause::UpstreamReset => {
                "the upstream stream was reset: check the backend's logs and that both sides speak the same HTTP version"
            }
            Cause::UpstreamOverflow => {
                "the cluster's circuit-breaker limits (connections, pending or active requests) are full: add backend capacity or raise the limits"
            }
            Cause::RetryLimitExceeded => {
                "every retry failed, so the upstream is failing consistently: fix the upstream; the flags show the last failure"
            }
            Cause::NoRoute => "no route matched this request: check the host and path against the route configuration",
            Cause::ClusterNotFound => {
                "the route names a cluster Envoy does not have: check the cluster name (or cluster_header value) and that it was delivered"
            }
            Cause::DnsResolutionFailed => {
                "the upstream hostname could not be resolved: check DNS and service discovery for the cluster"
            }
            Cause::RateLimited => "the request went over a rate limit: slow down and retry after the Retry-After delay",
            Cause::RateLimitServiceUnavailable => {
                "a global rate limit could not be checked because its rate limit service failed or did not answer in time, and the rule refuses what it cannot check: check the service, its Envoy cluster and its store, or set on_service_error to local"
            }
            Cause::LocalHealthCheckFailed => {
                "this proxy failed its own health check and is draining: check why the local service is unhealthy"
            }
            Cause::DownstreamDisconnected => {
                "the client went away before the response was complete: check client timeouts and cancellations"
            }
            Cause::UpstreamErrorResponse => {
                "the upstream itself answered with a server error: check the backend's logs for this request"
            }
            Cause::CircuitOpen => {
                "the upstream kept failing, so its circuit is open and requests are refused without trying it: fix the upstream; probing resumes after Retry-After"
            }
            Cause::ConcurrencyLimited => {
                "the upstream's limit on requests in flight (adapted to its latency) is taken, and lower-priority requests are shed first: retry after Retry-After; if it persists, add backend capacity"
            }
            Cause::UpstreamSlow => {
                "the upstream still answers but too late (slower than the breaker's failure.slow.after for failure.slow.threshold of recent calls), so its circuit is open: check the backend's saturation (CPU, connection pools, queues) before it falls over; probing resumes after Retry-After"
            }
            Cause::ProtocolError => {
                "a peer broke the HTTP protocol (malformed message or wrong HTTP version): check codec settings on both sides"
            }
            Cause::Unauthorized => {
                "external authorization denied the request: check the credentials and the authorization service"
            }
            Cause::FaultInjected => "a fault-injection rule answered this request: check the route's fault filter settings",
            Cause::Overloaded => {
                "the proxy is shedding load (overload manager or drop_overload): add capacity or review the overload actions"
            }
            Cause::UpstreamRateLimited => {
                "the provider answered 429 (its own rate limit or quota): it is out of rotation until retry_after, and requests for the model go to its next provider; raise the provider quota or add providers"
            }
            Cause::ModelUnavailable => {
                "every provider configured for this model is out (rate limited, ejected or failing checks; reasons lists each): retry after Retry-After, or add a provider for the model"
            }
            Cause::UnknownModel => {
                "the request names a model the gateway does not route: use one of the models listed in the response body, or add it to the llm configuration"
            }
            Cause::InvalidRequest => {
                "the request body is not a JSON object with a string model field, or is larger than the gateway buffers: fix the client's request"
            }
            Cause::Unknown => "no known cause matched: the flags and details fields carry Envoy's own words",
            Cause::None => "the upstream answered; nothing failed",
        }
    }

    /// Parses a token back (used by the harness and tests).
    pub fn from_token(token: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|c| c.token() == token)
    }
}

impl Cause {
    /// True for causes that mean the upstream itself failed (not the client, not routing, not a
    /// policy of ours): what the circuit breaker and passive health detection count.
    pub fn is_upstream_failure(self) -> bool {
        matches!(
            self,
            Cause::ConnectionRefused
                | Cause::ConnectTimeout
                | Cause::TlsHandshakeFailed
                | Cause::NoHealthyUpstream
                | Cause::UpstreamTimeout
                | Cause::UpstreamConnectionTerminated
                | Cause::UpstreamReset
                | Cause::UpstreamOverflow
                | Cause::RetryLimitExceeded
        )
    }
}

/// The one failure classifier behind the circuit breaker, passive health detection and the
/// diagnosis: did the upstream fail this response? A status in `statuses` (the policy's list), or
/// a cause that is an upstream failure ([`Cause::is_upstream_failure`], and an upstream protocol
/// error). A local reply of upstream-guard's own (`upstream_guard.*` details) never counts: the
/// request did not reach the upstream.
pub fn upstream_failed(obs: &Observation<'_>, statuses: &[u16]) -> bool {
    if obs.details.starts_with(details::PREFIX) {
        return false;
    }
    let cause = classify(obs);
    cause.is_upstream_failure()
        || (cause == Cause::ProtocolError && obs.flags.has(Flag::UpstreamProtocolError))
        || obs.effective_status().is_some_and(|s| statuses.contains(&s))
}

/// How one call to the upstream went, by the one classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The upstream failed it ([`upstream_failed`]).
    Failed,
    /// The upstream answered, but later than the slow-call threshold.
    Slow,
    /// Neither.
    Fine,
}

/// Judges one response: [`upstream_failed`] with `statuses` first (a failure that was also late
/// is a failure); else slow when `elapsed_ns`, the time from the request to the response
/// headers, reached `slow_after_ns`. The time to the response headers, not to the end of the
/// response: it is how long the upstream took to answer, where the end of a streamed answer (a
/// download, server-sent events, an LLM's tokens) is as late as the client's reading makes it.
/// A local reply of upstream-guard's own is never slow: the request did not reach the upstream.
pub fn judge(
    obs: &Observation<'_>,
    statuses: &[u16],
    elapsed_ns: Option<u64>,
    slow_after_ns: Option<u64>,
) -> Judgement {
    if upstream_failed(obs, statuses) {
        return Judgement::Failed;
    }
    let ours = obs.details.starts_with(details::PREFIX);
    match (elapsed_ns, slow_after_ns) {
        (Some(e), Some(after)) if !ours && e >= after => Judgement::Slow,
        _ => Judgement::Fine,
    }
}

/// True when the response is worth explaining under `on: errors`: a failure flag, a status of
/// 500 or more, or a local reply of one of upstream-guard's own filters.
pub fn is_error(obs: &Observation<'_>) -> bool {
    obs.flags.any_failure()
        || obs.effective_status().is_some_and(|s| s >= 500)
        || (obs.details.starts_with(details::PREFIX) && obs.details != details::HEALTH_STATUS)
}

/// Picks the one cause that best explains `obs`.
pub fn classify(obs: &Observation<'_>) -> Cause {
    if let Some(own) = own_local_reply(obs.details) {
        return own;
    }
    if let Some(cause) = from_flags(obs) {
        return cause;
    }
    if let Some(cause) = from_details(obs) {
        return cause;
    }
    match obs.effective_status() {
        Some(s) if s >= 500 && (obs.details.is_empty() || obs.details == "via_upstream") => {
            Cause::UpstreamErrorResponse
        }
        Some(s) if s >= 500 => Cause::Unknown,
        _ if obs.flags.any_failure() => Cause::Unknown,
        _ => Cause::None,
    }
}

fn own_local_reply(details: &str) -> Option<Cause> {
    match details {
        details::CIRCUIT_OPEN => Some(Cause::CircuitOpen),
        details::UPSTREAM_SLOW => Some(Cause::UpstreamSlow),
        details::CONCURRENCY_LIMITED => Some(Cause::ConcurrencyLimited),
        details::RATE_LIMITED => Some(Cause::RateLimited),
        details::RATE_LIMIT_SERVICE_UNAVAILABLE => Some(Cause::RateLimitServiceUnavailable),
        details::NO_HEALTHY_UPSTREAM => Some(Cause::NoHealthyUpstream),
        details::HEALTH_STATUS => Some(Cause::None),
        details::MODEL_UNAVAILABLE => Some(Cause::ModelUnavailable),
        details::UNKNOWN_MODEL => Some(Cause::UnknownModel),
        details::INVALID_REQUEST => Some(Cause::InvalidRequest),
        details::TOKEN_BUDGET => Some(Cause::RateLimited),
        d if d.starts_with(details::PREFIX) => Some(Cause::Unknown),
        _ => None,
    }
}

/// Flags in priority order: the most specific verdict wins (a route that does not exist explains
/// more than the 503 it produced; retries exhausted explains more than the last attempt's flag).
fn from_flags(obs: &Observation<'_>) -> Option<Cause> {
    let f = obs.flags;
    let table: [(&[Flag], Cause); 13] = [
        (&[Flag::NoRouteFound], Cause::NoRoute),
        (&[Flag::NoClusterFound], Cause::ClusterNotFound),
        (&[Flag::DnsResolutionFailed], Cause::DnsResolutionFailed),
        (&[Flag::FailedLocalHealthCheck], Cause::LocalHealthCheckFailed),
        (&[Flag::UnauthorizedExternalService], Cause::Unauthorized),
        (&[Flag::RateLimited, Flag::RateLimitServiceError], Cause::RateLimited),
        (&[Flag::FaultInjected], Cause::FaultInjected),
        (&[Flag::OverloadManager, Flag::DropOverload, Flag::UnconditionalDropOverload], Cause::Overloaded),
        (&[Flag::UpstreamOverflow], Cause::UpstreamOverflow),
        (&[Flag::UpstreamRetryLimitExceeded], Cause::RetryLimitExceeded),
        (&[Flag::NoHealthyUpstream], Cause::NoHealthyUpstream),
        (&[Flag::UpstreamConnectionFailure], Cause::ConnectionRefused),
        (
            &[
                Flag::UpstreamRequestTimeout,
                Flag::UpstreamMaxStreamDurationReached,
                Flag::DurationTimeout,
                Flag::StreamIdleTimeout,
            ],
            Cause::UpstreamTimeout,
        ),
    ];
    for (flags, cause) in table {
        if flags.iter().any(|fl| f.has(*fl)) {
            return Some(if cause == Cause::ConnectionRefused { connect_failure(obs) } else { cause });
        }
    }
    // Once the response has started, whatever the codec called it (Envoy reports a body cut short
    // by the upstream as UPE), the operator's question is "why did the upstream reset?".
    if obs.details.starts_with("upstream_reset_after_response_started") {
        return Some(Cause::UpstreamReset);
    }
    let rest: [(&[Flag], Cause); 4] = [
        (&[Flag::UpstreamConnectionTermination], Cause::UpstreamConnectionTerminated),
        (&[Flag::UpstreamRemoteReset, Flag::LocalReset], Cause::UpstreamReset),
        (
            &[Flag::UpstreamProtocolError, Flag::DownstreamProtocolError, Flag::InvalidEnvoyRequestHeaders],
            Cause::ProtocolError,
        ),
        (&[Flag::DownstreamConnectionTermination, Flag::DownstreamRemoteReset], Cause::DownstreamDisconnected),
    ];
    rest.into_iter().find(|(flags, _)| flags.iter().any(|fl| f.has(*fl))).map(|(_, c)| c)
}

/// A connection failure (UF) is refused, timed out, or a TLS failure; Envoy says which only in
/// words, in the details and the transport failure reason.
fn connect_failure(obs: &Observation<'_>) -> Cause {
    let words =
        |needle: &str| contains_ignore_case(obs.details, needle) || contains_ignore_case(obs.transport_failure, needle);
    if words("tls") || words("ssl") || words("certificate") || words("handshake") {
        Cause::TlsHandshakeFailed
    } else if words("timeout") || words("timed out") || words("timed_out") {
        Cause::ConnectTimeout
    } else {
        Cause::ConnectionRefused
    }
}

/// When no flag is set, `response.code_details` may still say what happened.
fn from_details(obs: &Observation<'_>) -> Option<Cause> {
    let d = obs.details;
    Some(match d {
        "no_healthy_upstream" => Cause::NoHealthyUpstream,
        "route_not_found" => Cause::NoRoute,
        "cluster_not_found" => Cause::ClusterNotFound,
        "response_timeout" | "upstream_per_try_timeout" | "upstream_response_timeout" => Cause::UpstreamTimeout,
        "upstream_max_stream_duration_reached" => Cause::UpstreamTimeout,
        _ if d.starts_with("upstream_reset_before_response_started")
            || d.starts_with("upstream_reset_after_response_started") =>
        {
            if contains_ignore_case(d, "connection_failure")
                || contains_ignore_case(d, "connect") && contains_ignore_case(d, "error")
            {
                connect_failure(obs)
            } else if contains_ignore_case(d, "connection_termination") {
                Cause::UpstreamConnectionTerminated
            } else if contains_ignore_case(d, "overflow") {
                Cause::UpstreamOverflow
            } else {
                Cause::UpstreamReset
            }
        }
        _ => return None,
    })
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(status: u16, flags: u64, details: &'static str, tfr: &'static str) -> Observation<'static> {
        Observation {
            status: Some(status),
            flags: ResponseFlags(flags),
            details,
            transport_failure: tfr,
            grpc_status: None,
        }
    }

    #[test]
    fn every_core_flag_alone_classifies_to_a_cause_that_is_not_none() {
        for f in Flag::ALL {
            let c = classify(&obs(503, f.bit(), "", ""));
            if f.is_informational() {
                // A cached or delayed 503 is still the upstream's own error.
                assert_eq!(c, Cause::UpstreamErrorResponse, "{f:?}");
            } else {
                assert_ne!(c, Cause::None, "{f:?}");
                assert_ne!(c, Cause::Unknown, "{f:?} deserves a named cause");
            }
        }
    }

    #[test]
    fn flag_table_maps_to_expected_causes() {
        let cases: &[(Flag, Cause)] = &[
            (Flag::FailedLocalHealthCheck, Cause::LocalHealthCheckFailed),
            (Flag::NoHealthyUpstream, Cause::NoHealthyUpstream),
            (Flag::UpstreamRequestTimeout, Cause::UpstreamTimeout),
            (Flag::LocalReset, Cause::UpstreamReset),
            (Flag::UpstreamRemoteReset, Cause::UpstreamReset),
            (Flag::UpstreamConnectionFailure, Cause::ConnectionRefused),
            (Flag::UpstreamConnectionTermination, Cause::UpstreamConnectionTerminated),
            (Flag::UpstreamOverflow, Cause::UpstreamOverflow),
            (Flag::NoRouteFound, Cause::NoRoute),
            (Flag::FaultInjected, Cause::FaultInjected),
            (Flag::RateLimited, Cause::RateLimited),
            (Flag::UnauthorizedExternalService, Cause::Unauthorized),
            (Flag::RateLimitServiceError, Cause::RateLimited),
            (Flag::DownstreamConnectionTermination, Cause::DownstreamDisconnected),
            (Flag::UpstreamRetryLimitExceeded, Cause::RetryLimitExceeded),
            (Flag::StreamIdleTimeout, Cause::UpstreamTimeout),
            (Flag::InvalidEnvoyRequestHeaders, Cause::ProtocolError),
            (Flag::DownstreamProtocolError, Cause::ProtocolError),
            (Flag::UpstreamMaxStreamDurationReached, Cause::UpstreamTimeout),
            (Flag::DurationTimeout, Cause::UpstreamTimeout),
            (Flag::UpstreamProtocolError, Cause::ProtocolError),
            (Flag::NoClusterFound, Cause::ClusterNotFound),
            (Flag::OverloadManager, Cause::Overloaded),
            (Flag::DnsResolutionFailed, Cause::DnsResolutionFailed),
            (Flag::DropOverload, Cause::Overloaded),
            (Flag::DownstreamRemoteReset, Cause::DownstreamDisconnected),
            (Flag::UnconditionalDropOverload, Cause::Overloaded),
        ];
        for (flag, cause) in cases {
            assert_eq!(classify(&obs(503, flag.bit(), "", "")), *cause, "{flag:?}");
        }
    }

    #[test]
    fn connection_failure_is_split_by_envoys_words() {
        let refused = obs(
            503,
            0x20,
            "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
            "delayed connect error: Connection refused",
        );
        assert_eq!(classify(&refused), Cause::ConnectionRefused);
        let timeout = obs(503, 0x20, "upstream_reset_before_response_started{connection_timeout}", "");
        assert_eq!(classify(&timeout), Cause::ConnectTimeout);
        let tls = obs(
            503,
            0x20,
            "upstream_reset_before_response_started{remote_connection_failure|TLS_error:_268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED}",
            "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end",
        );
        assert_eq!(classify(&tls), Cause::TlsHandshakeFailed);
        let reset = obs(503, 0x10, "upstream_reset_before_response_started{remote_reset}", "");
        assert_eq!(classify(&reset), Cause::UpstreamReset);
    }

    #[test]
    fn a_reset_after_the_response_started_is_an_upstream_reset_whatever_the_codec_says() {
        // Observed on Envoy 1.40: headers sent, body cut by an RST.
        let cut =
            obs(200, Flag::UpstreamProtocolError.bit(), "upstream_reset_after_response_started{protocol_error}", "");
        assert_eq!(classify(&cut), Cause::UpstreamReset);
        assert!(is_error(&cut));
    }

    #[test]
    fn retries_exhausted_wins_over_the_last_attempts_flag() {
        assert_eq!(classify(&obs(503, 0x20 | 0x8000, "", "")), Cause::RetryLimitExceeded);
    }

    #[test]
    fn details_explain_replies_without_flags() {
        assert_eq!(classify(&obs(503, 0, "no_healthy_upstream", "")), Cause::NoHealthyUpstream);
        assert_eq!(classify(&obs(404, 0, "route_not_found", "")), Cause::NoRoute);
        assert_eq!(classify(&obs(504, 0, "response_timeout", "")), Cause::UpstreamTimeout);
        assert_eq!(
            classify(&obs(503, 0, "upstream_reset_before_response_started{connection_termination}", "")),
            Cause::UpstreamConnectionTerminated
        );
    }

    #[test]
    fn own_local_replies_are_named_even_without_flags() {
        assert_eq!(classify(&obs(503, 0, details::CIRCUIT_OPEN, "")), Cause::CircuitOpen);
        assert_eq!(classify(&obs(429, 0, details::RATE_LIMITED, "")), Cause::RateLimited);
        let unavailable = obs(503, 0, details::RATE_LIMIT_SERVICE_UNAVAILABLE, "");
        assert_eq!(classify(&unavailable), Cause::RateLimitServiceUnavailable);
        assert!(is_error(&unavailable));
        assert!(!upstream_failed(&unavailable, &[503]), "the upstream was never asked");
        assert_eq!(classify(&obs(503, 0, details::NO_HEALTHY_UPSTREAM, "")), Cause::NoHealthyUpstream);
        assert!(is_error(&obs(429, 0, details::RATE_LIMITED, "")));
        assert_eq!(classify(&obs(503, 0, details::MODEL_UNAVAILABLE, "")), Cause::ModelUnavailable);
        assert_eq!(classify(&obs(404, 0, details::UNKNOWN_MODEL, "")), Cause::UnknownModel);
        assert_eq!(classify(&obs(400, 0, details::INVALID_REQUEST, "")), Cause::InvalidRequest);
        assert_eq!(classify(&obs(429, 0, details::TOKEN_BUDGET, "")), Cause::RateLimited);
    }

    #[test]
    fn a_5xx_from_the_upstream_is_an_upstream_error_response() {
        assert_eq!(classify(&obs(503, 0, "via_upstream", "")), Cause::UpstreamErrorResponse);
        assert_eq!(classify(&obs(500, 0, "", "")), Cause::UpstreamErrorResponse);
    }

    #[test]
    fn success_is_none_and_not_an_error() {
        let ok = obs(200, 0, "via_upstream", "");
        assert_eq!(classify(&ok), Cause::None);
        assert!(!is_error(&ok));
        assert!(!is_error(&obs(404, 0, "via_upstream", "")));
        assert!(is_error(&obs(502, 0, "via_upstream", "")));
    }

    #[test]
    fn unexplained_local_replies_are_unknown() {
        assert_eq!(classify(&obs(503, 0, "some_new_detail", "")), Cause::Unknown);
        assert_eq!(classify(&obs(200, 1 << 40, "", "")), Cause::Unknown);
    }

    #[test]
    fn missing_everything_is_none_not_a_panic() {
        assert_eq!(classify(&Observation::default()), Cause::None);
    }

    #[test]
    fn tokens_round_trip_and_are_valid_sf_tokens() {
        for c in Cause::ALL {
            assert_eq!(Cause::from_token(c.token()), Some(c));
            assert!(crate::sfv::is_token(c.token()));
            assert!(!c.hint().is_empty() && c.hint().is_ascii());
        }
    }

    #[test]
    fn a_trailers_only_grpc_failure_is_the_failure_its_status_maps_to() {
        let grpc = |code| Observation {
            status: Some(200),
            details: "via_upstream",
            grpc_status: Some(code),
            ..Default::default()
        };
        assert_eq!(classify(&grpc(14)), Cause::UpstreamErrorResponse, "UNAVAILABLE under HTTP 200");
        assert!(upstream_failed(&grpc(14), &[500, 502, 503, 504]));
        assert!(upstream_failed(&grpc(13), &[500]), "INTERNAL is 500");
        assert!(!upstream_failed(&grpc(5), &[500, 502, 503, 504]), "NOT_FOUND is the caller's");
        assert!(is_error(&grpc(4)), "DEADLINE_EXCEEDED is 504");
        assert_eq!(classify(&grpc(0)), Cause::None);
        assert_eq!(grpc_to_http(8), 429);
        assert_eq!(grpc_to_http(99), 500);
    }

    #[test]
    fn a_late_answer_is_slow_a_late_failure_is_a_failure_and_our_replies_are_neither() {
        let ok = Observation { status: Some(200), details: "via_upstream", ..Observation::default() };
        let failed = Observation { status: Some(503), details: "via_upstream", ..Observation::default() };
        let ours = Observation { status: Some(503), details: details::CIRCUIT_OPEN, ..Observation::default() };
        let s = [500, 502, 503, 504];
        assert_eq!(judge(&ok, &s, Some(2_000), Some(1_000)), Judgement::Slow);
        assert_eq!(judge(&ok, &s, Some(999), Some(1_000)), Judgement::Fine);
        assert_eq!(judge(&ok, &s, None, Some(1_000)), Judgement::Fine, "no time measured: not slow");
        assert_eq!(judge(&ok, &s, Some(2_000), None), Judgement::Fine, "no threshold: never slow");
        assert_eq!(judge(&failed, &s, Some(2_000), Some(1_000)), Judgement::Failed);
        assert_eq!(judge(&ours, &s, Some(2_000), Some(1_000)), Judgement::Fine);
        let slow_reply = Observation { status: Some(503), details: details::UPSTREAM_SLOW, ..Observation::default() };
        assert_eq!(classify(&slow_reply), Cause::UpstreamSlow);
    }
}
