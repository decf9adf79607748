//! The wire messages of Envoy's rate limit service protocol
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), written by hand.
//!
//! Global rules ask a service that already counts for a whole fleet (envoyproxy/ratelimit on
//! Redis, Kuadrant's Limitador) instead of inventing a store: that service speaks this protocol,
//! so the filter only needs the few messages below, not Envoy's whole API tree. Field numbers and
//! types are the protocol's; only the fields the filter reads or writes are declared, and prost
//! skips any other field a newer service sends. Decoding never panics, whatever the bytes: a
//! message that does not parse is an error value, which the caller treats as a failed service.
//!
//! Also here: the `GrpcService` proto naming the Envoy cluster of the service, which the host
//! call takes as its service argument (any cluster name works, where a bare name could be
//! mistaken for a proto).

use prost::Message;

/// The gRPC service name of the protocol.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// The one method the filter calls.
pub const METHOD: &str = "ShouldRateLimit";

/// `RateLimitRequest`: the descriptors of one request, in one domain.
#[derive(Clone, PartialEq, Message)]
pub struct RateLimitRequest {
    /// The domain: which set of limits in the service applies.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// One descriptor per rule asked about; the answer's statuses come back in this order.
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// How many hits this request counts for (0 means 1 to the service).
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

/// `RateLimitDescriptor`: ordered (key, value) entries that select a limit and its counter.
#[derive(Clone, PartialEq, Message)]
pub struct RateLimitDescriptor {
    /// The entries, in order.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
}

/// `RateLimitDescriptor.Entry`.
#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    /// The descriptor key, e.g. `tenant`.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Its value for this request.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Code {
    /// Not set: the service said nothing usable.
    Unknown = 0,
    /// Within the limit.
    Ok = 1,
    /// Over the limit.
    OverLimit = 2,
}

/// `RateLimitResponse.RateLimit.Unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Unit {
    /// Not set.
    Unknown = 0,
    /// Per second.
    Second = 1,
    /// Per minute.
    Minute = 2,
    /// Per hour.
    Hour = 3,
    /// Per day.
    Day = 4,
    /// Per month (counted here as 30 days).
    Month = 5,
    /// Per year (counted here as 365 days).
    Year = 6,
}

impl Unit {
    /// The unit's length in seconds; `None` when not set.
    pub fn seconds(self) -> Option<u64> {
        match self {
            Unit::Unknown => None,
            Unit::Second => Some(1),
            Unit::Minute => Some(60),
            Unit::Hour => Some(3600),
            Unit::Day => Some(86_400),
            Unit::Month => Some(30 * 86_400),
            Unit::Year => Some(365 * 86_400),
        }
    }
}

/// `RateLimitResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct RateLimitResponse {
    /// Over the limit when any descriptor is. Read it with the generated `overall_code()`, which
    /// turns a value the protocol does not define into `Unknown`.
    #[prost(enumeration = "Code", tag = "1")]
    pub overall_code: i32,
    /// One status per descriptor of the request, in order (some services send none).
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
    /// Headers for the client's response.
    #[prost(message, repeated, tag = "3")]
    pub response_headers_to_add: Vec<HeaderValue>,
    /// Headers for the request sent upstream (when admitted).
    #[prost(message, repeated, tag = "4")]
    pub request_headers_to_add: Vec<HeaderValue>,
    /// A body for the refusal (not used by the filter).
    #[prost(bytes = "vec", tag = "5")]
    pub raw_body: Vec<u8>,
}

/// `config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderValue {
    /// Header name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Header value as text.
    #[prost(string, tag = "2")]
    pub value: String,
    /// Header value as bytes (used instead of `value` when set).
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Clone, PartialEq, Message)]
pub struct DescriptorStatus {
    /// This descriptor's verdict (`code()` reads it; undefined values are `Unknown`).
    #[prost(enumeration = "Code", tag = "1")]
    pub code: i32,
    /// The limit that applied (absent: no limit applies to this descriptor).
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    /// Hits left in the current window.
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    /// Time until the window resets.
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

/// `RateLimitResponse.RateLimit`.
#[derive(Clone, PartialEq, Message)]
pub struct RateLimit {
    /// Requests allowed per unit.
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// The unit.
    #[prost(enumeration = "Unit", tag = "2")]
    pub unit: i32,
    /// An optional name of the limit.
    #[prost(string, tag = "3")]
    pub name: String,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct Duration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds on top.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Duration {
    /// Nanoseconds; a negative duration is zero, an enormous one saturates.
    pub fn as_nanos(&self) -> u64 {
        let secs = u64::try_from(self.seconds).unwrap_or(0);
        let nanos = u64::try_from(self.nanos).unwrap_or(0);
        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
    }

    /// From nanoseconds.
    pub fn from_nanos(ns: u64) -> Duration {
        Duration {
            seconds: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
            nanos: i32::try_from(ns % 1_000_000_000).unwrap_or(0),
        }
    }
}

/// `config.core.v3.GrpcService`, only its `envoy_grpc` form.
#[derive(Clone, PartialEq, Message)]
pub struct GrpcService {
    /// The Envoy cluster that carries the calls.
    #[prost(message, optional, tag = "1")]
    pub envoy_grpc: Option<EnvoyGrpc>,
}

/// `config.core.v3.GrpcService.EnvoyGrpc`.
#[derive(Clone, PartialEq, Message)]
pub struct EnvoyGrpc {
    /// The cluster name (an HTTP/2 cluster).
    #[prost(string, tag = "1")]
    pub cluster_name: String,
}

/// The service argument of a gRPC host call for `cluster`: a serialized `GrpcService`.
pub fn grpc_service(cluster: &str) -> Vec<u8> {
    GrpcService { envoy_grpc: Some(EnvoyGrpc { cluster_name: cluster.to_string() }) }.encode_to_vec()
}

impl RateLimitRequest {
    /// The serialized request.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Parses a request (what a service, or a test standing in for one, reads).
    pub fn from_bytes(bytes: &[u8]) -> Option<RateLimitRequest> {
        RateLimitRequest::decode(bytes).ok()
    }
}

impl RateLimitResponse {
    /// Parses an answer; `None` for bytes that are not a response message.
    pub fn from_bytes(bytes: &[u8]) -> Option<RateLimitResponse> {
        RateLimitResponse::decode(bytes).ok()
    }

    /// The serialized answer (what a service, or a test standing in for one, sends).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

impl RateLimit {
    /// The window of this limit in seconds; `None` when the unit is not set or unknown.
    pub fn window_secs(&self) -> Option<u64> {
        self.unit().seconds()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> RateLimitResponse {
        RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![
                DescriptorStatus {
                    code: Code::OverLimit as i32,
                    current_limit: Some(RateLimit {
                        requests_per_unit: 100,
                        unit: Unit::Minute as i32,
                        name: "tenant".into(),
                    }),
                    limit_remaining: 0,
                    duration_until_reset: Some(Duration { seconds: 12, nanos: 500_000_000 }),
                },
                DescriptorStatus { code: Code::Ok as i32, ..Default::default() },
            ],
            response_headers_to_add: vec![HeaderValue { key: "x-a".into(), value: "b".into(), raw_value: vec![] }],
            request_headers_to_add: vec![HeaderValue {
                key: "x-c".into(),
                value: String::new(),
                raw_value: vec![0xff],
            }],
            raw_body: b"over".to_vec(),
        }
    }

    #[test]
    fn responses_round_trip() {
        let r = response();
        let back = RateLimitResponse::from_bytes(&r.encode_to_vec()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.overall_code(), Code::OverLimit);
        assert_eq!(back.statuses[0].current_limit.as_ref().unwrap().window_secs(), Some(60));
        assert_eq!(back.statuses[0].duration_until_reset.as_ref().unwrap().as_nanos(), 12_500_000_000);
    }

    #[test]
    fn requests_round_trip_and_use_the_protocols_field_numbers() {
        let req = RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![RateLimitDescriptor { entries: vec![Entry { key: "k".into(), value: "v".into() }] }],
            hits_addend: 0,
        };
        let bytes = req.to_bytes();
        // domain (1, length-delimited) "edge", then descriptors (2) holding entries (1) of key (1) and value (2).
        assert_eq!(bytes, b"\x0a\x04edge\x12\x08\x0a\x06\x0a\x01k\x12\x01v");
        assert_eq!(RateLimitRequest::decode(bytes.as_slice()).unwrap(), req);
        let with_hits = RateLimitRequest { hits_addend: 3, ..req };
        assert!(with_hits.to_bytes().ends_with(b"\x18\x03"), "hits_addend is field 3, varint");
    }

    #[test]
    fn the_cluster_is_named_in_a_grpc_service_proto() {
        assert_eq!(grpc_service("rls"), b"\x0a\x05\x0a\x03rls");
        let back = GrpcService::decode(grpc_service("a.b-c").as_slice()).unwrap();
        assert_eq!(back.envoy_grpc.unwrap().cluster_name, "a.b-c");
    }

    #[test]
    fn unknown_codes_and_units_read_as_unknown() {
        let r = RateLimitResponse { overall_code: 7, ..Default::default() };
        assert_eq!(RateLimitResponse::from_bytes(&r.encode_to_vec()).unwrap().overall_code(), Code::Unknown);
        assert_eq!(RateLimit { unit: 42, ..Default::default() }.window_secs(), None);
        assert_eq!(RateLimit { unit: Unit::Year as i32, ..Default::default() }.window_secs(), Some(31_536_000));
    }

    #[test]
    fn durations_saturate_and_never_go_negative() {
        assert_eq!(Duration { seconds: -5, nanos: -1 }.as_nanos(), 0);
        assert_eq!(Duration { seconds: i64::MAX, nanos: 999_999_999 }.as_nanos(), u64::MAX);
        assert_eq!(Duration::from_nanos(1_500_000_000), Duration { seconds: 1, nanos: 500_000_000 });
    }

    #[test]
    fn decoding_garbage_never_panics() {
        // Truncations, bit flips and pseudo-random bytes: each is a value or None, never a panic.
        let good = response().encode_to_vec();
        for cut in 0..good.len() {
            let _ = RateLimitResponse::from_bytes(&good[..cut]);
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                let _ = RateLimitResponse::from_bytes(&b);
            }
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = RateLimitResponse::from_bytes(&bytes);
        }
        // Deep nesting and lengths past the end are errors, not crashes.
        assert!(RateLimitResponse::from_bytes(&[0x12; 4096]).is_none());
        assert!(RateLimitResponse::from_bytes(b"\x12\xff\xff\xff\xff\x0f").is_none());
        assert!(RateLimitResponse::from_bytes(b"not a protobuf message at all").is_none());
        assert_eq!(RateLimitResponse::from_bytes(b"").map(|r| r.overall_code()), Some(Code::Unknown));
    }
}
