//! One stream's view of the host: every value read at most once, shared by all stages.
//!
//! Each host call that returns data costs a trip back into the VM, so the stages of one module do
//! not read the same thing twice: the client address, the request headers, the response status
//! and flags are read on first use and kept for the rest of the stream. Stages also leave facts
//! here for the stages after them: the upstream cluster the router chose, the local reply a stage
//! sent.

use upstream_guard::diagnose::{Cause, Observation, ResponseFlags};
use upstream_guard::peer::Peer;

use crate::abi::MapType;
use crate::host;
use crate::pairs::Pairs;

/// Property paths (segments joined by NUL, as the ABI wants them).
pub mod path {
    pub const SOURCE_ADDRESS: &[u8] = b"source\0address";
    pub const RESPONSE_CODE: &[u8] = b"response\0code";
    pub const RESPONSE_FLAGS: &[u8] = b"response\0flags";
    pub const RESPONSE_CODE_DETAILS: &[u8] = b"response\0code_details";
    pub const TRANSPORT_FAILURE: &[u8] = b"upstream\0transport_failure_reason";
    pub const CLUSTER_NAME: &[u8] = b"xds\0cluster_name";
    pub const ROUTE_NAME: &[u8] = b"xds\0route_name";
    pub const UPSTREAM_ADDRESS: &[u8] = b"upstream\0address";
    pub const ATTEMPTS: &[u8] = b"upstream\0request_attempt_count";
}

/// Decodes an integer property: Envoy encodes integers as 8 bytes little-endian; other hosts may
/// send decimal text.
pub fn decode_uint(b: &[u8]) -> Option<u64> {
    match <[u8; 8]>::try_from(b) {
        Ok(le) => Some(u64::from_le_bytes(le)),
        Err(_) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
    }
}

/// How request headers are read, decided once at configure time from what the stages read: one
/// header is cheapest read alone; two or more are cheaper as one read of the whole map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadPlan {
    /// Read the whole request header map once instead of header by header.
    pub whole_map: bool,
}

impl ReadPlan {
    /// The plan for stages that read these request headers on the common path.
    pub fn for_headers(names: &[String]) -> ReadPlan {
        ReadPlan { whole_map: names.len() > 1 }
    }
}

/// A local reply some stage sent on this stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replied {
    pub status: u16,
    pub details: &'static str,
}

/// A diagnosis a stage already made, for the diagnostics stage to report as it is: the LLM
/// stage knows that a 429 came from a provider (and when it will be tried again), or why every
/// provider of a model is out, which Envoy's flags cannot say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub cause: Cause,
    /// Seconds until the cause should clear (shown to every client).
    pub retry_after_s: Option<u64>,
    /// Per-upstream reasons (they name clusters: trusted clients only).
    pub reasons: Option<String>,
}

/// The callback the stream is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Request,
    Response,
    Log,
}

#[derive(Debug, Default)]
struct ResponseFacts {
    status: Option<Option<u16>>,
    flags: Option<ResponseFlags>,
    details: Option<String>,
    transport_failure: Option<String>,
}

/// What a stream has read and decided so far.
#[derive(Debug, Default)]
pub struct Facts {
    peer: Option<Option<Peer>>,
    request_map: Option<Vec<u8>>,
    request_single: Vec<(String, Option<Vec<u8>>)>,
    response: ResponseFacts,
    /// The upstream cluster a router stage chose.
    pub cluster: Option<String>,
    /// The local reply a stage of this module sent.
    pub replied: Option<Replied>,
    /// The response reached its end (headers, body or trailers said end of stream): nothing can
    /// fail after the headers any more. Only known in modules that export the body callbacks.
    pub response_complete: bool,
    /// The response is a gRPC trailers-only answer with a status other than OK: HTTP 200, yet
    /// possibly Envoy's own refusal (a gRPC client's "connection refused" is a 200 with UF).
    grpc_failed: Option<Option<u32>>,
    /// A stage's own diagnosis of this stream (see [`Note`]).
    pub note: Option<Note>,
    /// The stage that decides from the request body, while it reads it.
    pub(crate) body_stage: Option<usize>,
    /// Bytes at the start of the response body buffer that the stages already saw (held back by
    /// a stage in an earlier body callback).
    pub(crate) response_seen: usize,
}

impl Facts {
    /// How many bytes at the start of this response body callback's buffer an earlier callback
    /// already passed to the stages (non-zero only while some stage holds the body back):
    /// a stage that reads chunks reads from here.
    pub fn response_seen(&self) -> usize {
        self.response_seen
    }
}

/// A stage's handle on the stream during one callback.
pub struct Cx<'a> {
    /// The stream's context id.
    pub id: u32,
    /// The callback we are in.
    pub phase: Phase,
    /// The headers callback said nothing follows them (no body).
    pub end_of_stream: bool,
    now: Option<u64>,
    epoch: Option<u32>,
    facts: &'a mut Facts,
    plan: &'a ReadPlan,
}

impl<'a> Cx<'a> {
    /// A handle for one callback.
    pub fn new(id: u32, phase: Phase, facts: &'a mut Facts, plan: &'a ReadPlan) -> Cx<'a> {
        if phase == Phase::Log {
            // Final flags and details are only known now: read them again (the status stays).
            let status = facts.response.status;
            facts.response = ResponseFacts { status, ..ResponseFacts::default() };
        }
        Cx { id, phase, end_of_stream: false, now: None, epoch: None, facts, plan }
    }

    /// The time, read once per callback.
    pub fn now(&mut self) -> u64 {
        *self.now.get_or_insert_with(host::now)
    }

    /// The module's [`Epoch`](crate::shared::Epoch), read once per callback.
    pub fn epoch(&mut self) -> u32 {
        *self.epoch.get_or_insert_with(crate::shared::Epoch::read)
    }

    /// The facts other stages left.
    pub fn facts(&mut self) -> &mut Facts {
        self.facts
    }

    /// Envoy's client address (`source.address`), read once per stream.
    pub fn peer(&mut self) -> Option<Peer> {
        *self.facts.peer.get_or_insert_with(|| host::property(path::SOURCE_ADDRESS).and_then(|b| Peer::parse(&b)))
    }

    /// Reads the whole request header map now (if not read yet) and answers every later
    /// [`Cx::request_header`] from it: for the callbacks after the headers went on, when Envoy no
    /// longer lets the module read them.
    pub fn keep_request_headers(&mut self) {
        if self.facts.request_map.is_none() {
            self.facts.request_map = Some(host::header_map(MapType::RequestHeaders).unwrap_or_default());
        }
    }

    /// A request header's value as bytes (the first, if repeated), read once per stream.
    pub fn request_header(&mut self, name: &str) -> Option<&[u8]> {
        if self.plan.whole_map || self.facts.request_map.is_some() {
            let map = self
                .facts
                .request_map
                .get_or_insert_with(|| host::header_map(MapType::RequestHeaders).unwrap_or_default());
            return Pairs::new(map).get(name.as_bytes());
        }
        let i = match self.facts.request_single.iter().position(|(k, _)| k == name) {
            Some(i) => i,
            None => {
                let v = host::header(MapType::RequestHeaders, name);
                self.facts.request_single.push((name.to_string(), v));
                self.facts.request_single.len() - 1
            }
        };
        self.facts.request_single.get(i).and_then(|(_, v)| v.as_deref())
    }

    /// Sets a request header (what the upstream will see), keeping the cached view in step.
    pub fn set_request_header(&mut self, name: &str, value: &[u8]) {
        let _ = host::set_header(MapType::RequestHeaders, name, value);
        self.forget_request_header(name, Some(value));
    }

    /// Removes a request header.
    pub fn remove_request_header(&mut self, name: &str) {
        let _ = host::remove_header(MapType::RequestHeaders, name);
        self.forget_request_header(name, None);
    }

    fn forget_request_header(&mut self, name: &str, now: Option<&[u8]>) {
        self.facts.request_map = None;
        self.facts.request_single.retain(|(k, _)| k != name);
        if !self.plan.whole_map {
            self.facts.request_single.push((name.to_string(), now.map(<[u8]>::to_vec)));
        }
    }

    /// Sets a response header.
    pub fn set_response_header(&mut self, name: &str, value: &[u8]) {
        let _ = host::set_header(MapType::ResponseHeaders, name, value);
    }

    /// A response header, read now (not cached).
    pub fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        host::header(MapType::ResponseHeaders, name)
    }

    /// The response status: `:status` in the response callbacks, `response.code` at log time.
    pub fn status(&mut self) -> Option<u16> {
        if let Some(s) = self.facts.response.status {
            return s;
        }
        let raw = match self.phase {
            Phase::Log => host::property(path::RESPONSE_CODE).and_then(|b| decode_uint(&b)),
            _ => host::header(MapType::ResponseHeaders, ":status").and_then(|b| decode_uint(&b)),
        };
        let s = raw.and_then(|c| u16::try_from(c).ok());
        self.facts.response.status = Some(s);
        s
    }

    /// `response.flags` (0 when missing).
    pub fn flags(&mut self) -> ResponseFlags {
        *self.facts.response.flags.get_or_insert_with(|| {
            ResponseFlags(host::property(path::RESPONSE_FLAGS).and_then(|b| decode_uint(&b)).unwrap_or(0))
        })
    }

    /// `response.code_details` (our own replies' details without a host call).
    pub fn details(&mut self) -> &str {
        if self.facts.response.details.is_none() {
            let d = match self.facts.replied {
                Some(r) => r.details.to_string(),
                None => lossy(host::property(path::RESPONSE_CODE_DETAILS)),
            };
            self.facts.response.details = Some(d);
        }
        self.facts.response.details.as_deref().unwrap_or_default()
    }

    /// `upstream.transport_failure_reason`.
    pub fn transport_failure(&mut self) -> &str {
        if self.facts.response.transport_failure.is_none() {
            self.facts.response.transport_failure = Some(lossy(host::property(path::TRANSPORT_FAILURE)));
        }
        self.facts.response.transport_failure.as_deref().unwrap_or_default()
    }

    /// Everything a classification needs, read lazily. A response under 400 costs one read (its
    /// status) in the response callbacks: no failure flag can be set on it yet. At log time the
    /// flags are read again (a reset after the headers went out is only known then), and the
    /// words (details, transport failure) only when something failed.
    pub fn observation(&mut self) -> OwnedObservation {
        if let Some(r) = self.facts.replied {
            return OwnedObservation { status: Some(r.status), details: r.details.to_string(), ..Default::default() };
        }
        let status = self.status();
        let grpc_status = self.grpc_failed();
        let below_400 = status.is_some_and(|s| s < 400) && grpc_status.is_none();
        if below_400 && self.phase != Phase::Log {
            return OwnedObservation { status, ..OwnedObservation::default() };
        }
        if below_400 && self.facts.response_complete {
            // The whole response went out: the flags cannot say anything the status did not.
            return OwnedObservation { status, ..OwnedObservation::default() };
        }
        let flags = self.flags();
        if below_400 && !flags.any_failure() {
            return OwnedObservation { status, flags, ..OwnedObservation::default() };
        }
        let details = self.details().to_string();
        let transport_failure = if flags.any_failure() { self.transport_failure().to_string() } else { String::new() };
        OwnedObservation { status, flags, details, transport_failure, grpc_status }
    }

    /// Publishes a stage's verdict for the access log: Envoy keeps it as filter state
    /// `wasm.<key>`, printed by `%FILTER_STATE(wasm.<key>:PLAIN)%`. One host call that returns
    /// nothing; a host without the call (or a stream without stream info) simply keeps nothing.
    pub fn publish(&mut self, key: &str, fields: &upstream_guard::access_log::Fields) {
        let _ = host::set_property(key.as_bytes(), fields.as_str().as_bytes());
    }

    /// The `grpc-status` of a gRPC trailers-only response when it is not 0 (an unparsable one
    /// counts as UNKNOWN, 2). Read (one header) only for a response whose headers end the
    /// stream, once per stream.
    fn grpc_failed(&mut self) -> Option<u32> {
        if let Some(f) = self.facts.grpc_failed {
            return f;
        }
        if self.phase != Phase::Response || !self.end_of_stream {
            return None;
        }
        let failed = host::header(MapType::ResponseHeaders, "grpc-status")
            .filter(|s| s.as_slice() != b"0")
            .map(|s| std::str::from_utf8(&s).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(2));
        self.facts.grpc_failed = Some(failed);
        failed
    }

    /// A string property, lossily (for names and addresses shown to trusted clients).
    pub fn property_text(&mut self, path: &[u8]) -> Option<String> {
        host::property(path).map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// An integer property.
    pub fn property_uint(&mut self, path: &[u8]) -> Option<u64> {
        host::property(path).and_then(|b| decode_uint(&b))
    }
}

/// An [`Observation`] that owns its strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedObservation {
    pub status: Option<u16>,
    pub flags: ResponseFlags,
    pub details: String,
    pub transport_failure: String,
    pub grpc_status: Option<u32>,
}

impl OwnedObservation {
    /// The borrowed form the core takes.
    pub fn view(&self) -> Observation<'_> {
        Observation {
            status: self.status,
            flags: self.flags,
            details: &self.details,
            transport_failure: &self.transport_failure,
            grpc_status: self.grpc_status,
        }
    }
}

fn lossy(b: Option<Vec<u8>>) -> String {
    b.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_decode_from_le_bytes_or_text() {
        assert_eq!(decode_uint(&503u64.to_le_bytes()), Some(503));
        assert_eq!(decode_uint(b"42"), Some(42));
        assert_eq!(decode_uint(b""), None);
        assert_eq!(decode_uint(b"abc"), None);
        assert_eq!(decode_uint(b"\xff\xfe"), None);
    }
}
