//! Cases: a configuration and a sequence of steps, generated from a seed.
//!
//! Steps name streams by slot, not by identity, so that removing any step while shrinking leaves
//! every other step meaningful: a step for an empty slot, or one a stream's state does not allow
//! (a second response), is skipped by the executor.

use std::fmt;

use serde_json::Value;

use super::configs::{self, DEBUG_HEADER, DEBUG_TOKEN};
use super::{Rng, Target};

/// Bytes, shown escaped and abbreviated.
#[derive(Clone, PartialEq, Eq)]
pub struct B(pub Vec<u8>);

impl fmt::Debug for B {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 80;
        let shown: String = self.0.iter().take(SHOWN).flat_map(|b| b.escape_ascii()).map(char::from).collect();
        if self.0.len() > SHOWN {
            write!(f, "b\"{shown}…\" ({} bytes)", self.0.len())
        } else {
            write!(f, "b\"{shown}\"")
        }
    }
}

impl From<&[u8]> for B {
    fn from(b: &[u8]) -> B {
        B(b.to_vec())
    }
}

/// A property value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prop {
    Missing,
    /// An integer, encoded as Envoy does (8 bytes little-endian).
    Int(u64),
    /// Any bytes (a string property, or garbage where an integer belongs).
    Bytes(B),
}

/// A request as a client and Envoy hand it to the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Req {
    pub headers: Vec<(B, B)>,
    /// `source.address`.
    pub source: Prop,
    /// `xds.cluster_name` and `xds.route_name`.
    pub cluster: Prop,
    pub route: Prop,
    /// The request has no body.
    pub end: bool,
}

/// A response as the upstream (or Envoy) hands it to the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resp {
    /// `:status`.
    pub status: B,
    pub headers: Vec<(B, B)>,
    /// `response.code`, `response.flags`, `response.code_details`.
    pub code: Prop,
    pub flags: Prop,
    pub details: Prop,
    /// `upstream.transport_failure_reason`, `upstream.address`, `upstream.request_attempt_count`.
    pub transport: Prop,
    pub upstream: Prop,
    pub attempts: Prop,
    /// No body follows.
    pub end: bool,
}

/// How a callout is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Headers (`:status` first) and a body.
    Reply { headers: Vec<(B, B)>, body: B },
    /// Reset / refused: no headers at all.
    Fail,
}

/// One step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new stream in `slot` (the stream there before is finished first): context, request
    /// headers.
    Start { slot: u8, worker: u8, req: Box<Req> },
    /// Response headers (after a local reply: that reply, as Envoy runs it through the filter).
    Respond { slot: u8, resp: Box<Resp> },
    /// Request body chunks, one callback each (the last one ends the body when `end`).
    ReqBody { slot: u8, chunks: Vec<B>, end: bool },
    /// A response body chunk.
    Body { slot: u8, data: B, end: bool },
    /// Response trailers.
    Trailers { slot: u8 },
    /// `on_log` (at any point: a client that went away is logged without a response).
    Log { slot: u8 },
    /// Done and delete (at any point: an abandoned stream).
    Finish { slot: u8 },
    /// The clock moves on.
    Advance { ms: u64 },
    /// The clock jumps back.
    Rewind { ms: u64 },
    /// The clock is set to an absolute time (nanoseconds), near zero or far ahead.
    SetClock { nanos: u64 },
    /// A tick on one worker (timed-out callouts are delivered first), or on all (`worker` 255).
    Tick { worker: u8 },
    /// The next `n` shared-data reads each race with another worker's write.
    Race { n: u8 },
    /// A pending HTTP callout of `worker` (chosen by `pick`) is answered.
    Callout { worker: u8, pick: u8, answer: Answer },
    /// A pending gRPC call of `worker` gets a message (`status` 0) or fails.
    Grpc { worker: u8, pick: u8, status: u8, message: B },
}

/// A generated case.
#[derive(Clone, Debug)]
pub struct Case {
    pub target: Target,
    pub seed: u64,
    /// Workers (VMs).
    pub workers: usize,
    /// The host's log level (trace in some cases, so that debug formatting runs too).
    pub log_level: u32,
    pub config: Value,
    pub ops: Vec<Op>,
}

pub(crate) const SLOTS: u8 = 6;

const CLUSTERS: &[&[u8]] = &[
    b"backend",
    b"payments",
    b"primary",
    b"evil\", upstream=\"10.9.9.9:1\", x=\"",
    b"back\\slash\\\"",
    b"line\r\nx-injected: yes",
    b"caf\xc3\xa9\xff\xfe",
    b"ok.1",
    b"",
    b"\x00\x01\x7f",
    b"a,b;c=d",
];

const SOURCES: &[&[u8]] = &[
    b"10.1.2.3:5555",
    b"10.0.0.1:0",
    b"10.9.9.9",
    b"192.168.1.1:80",
    b"[::1]:443",
    b"::1",
    b"[fe80::1%eth0]:80",
    b"1.2.3.4",
    b"",
    b"garbage",
    b"\xff\xfe:1",
    b"10.1.2.3:99999",
    b"10.1.2.3:5555\n",
    b"256.1.1.1:1",
    b"01.2.3.4:80",
];

const XFF: &[&[u8]] = &[
    b"10.1.2.3",
    b"6.6.6.6, 10.1.2.3",
    b"6.6.6.6,10.1.2.3,10.0.0.1",
    b"",
    b",,,",
    b" , ",
    b"unknown",
    b"1.2.3.4:80",
    b"[::1]:80, ::1",
    b"10.1.2.3\xff",
    b"\xff\xfe\xfd",
    b"::ffff:10.1.2.3",
    b"1.2.3.4 , 5.6.7.8 ",
    b"\r\n10.1.2.3",
];

const DETAILS: &[&[u8]] = &[
    b"via_upstream",
    b"upstream_reset_before_response_started{connection_failure}",
    b"upstream_reset_before_response_started{remote_connection_failure|delayed connect error: 111}",
    b"response_timeout",
    b"no_healthy_upstream",
    b"route_not_found",
    b"cluster_not_found",
    b"upstream_guard.rate_limited",
    b"upstream_guard.circuit_open",
    b"quote\" back\\slash",
    b"new\nline\r\n",
    b"caf\xc3\xa9\xff",
    b"",
    b"a=1, b=\"2\"",
];

const PATHS: &[&[u8]] = &[
    b"/",
    b"/api",
    b"/api/x?y=1",
    b"/b/x",
    b"/b/y?q",
    b"/.well-known/upstream-health",
    b"/.well-known/upstream-health?x",
    b"",
    b"/api\xff\xfe",
    b"*",
    b"/b/\x00",
    b"/v1/chat/completions",
    b"/v1/chat/completions",
    b"/v1/embeddings",
    b"/v1/completions?x=1",
];

const TENANTS: &[&[u8]] = &[b"acme", b"globex", b"", b"\xff", b"acme ", b"a\x00b", b"x-upstream-debug"];

/// The cluster and route names requests carry (for the key-space checks).
pub fn cluster_pool() -> &'static [&'static [u8]] {
    CLUSTERS
}

/// A forwarded-for list of 10,000 entries (built once).
fn long_forwarded_for() -> &'static [u8] {
    static LONG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    LONG.get_or_init(|| {
        (0..10_000).flat_map(|i| format!("10.0.{}.{}, ", i / 256 % 256, i % 256).into_bytes()).collect()
    })
}

/// 300 distinct headers (built once).
fn many_headers() -> &'static [(B, B)] {
    static MANY: std::sync::OnceLock<Vec<(B, B)>> = std::sync::OnceLock::new();
    MANY.get_or_init(|| (0..300).map(|i| (B(format!("x-many-{i}").into_bytes()), B(b"1".to_vec()))).collect())
}

fn bytes_of(rng: &mut Rng, pool: &[&[u8]]) -> B {
    B(rng.pick(pool).copied().unwrap_or_default().to_vec())
}

/// A value that is random bytes, control characters, or huge.
fn hostile_value(rng: &mut Rng) -> B {
    match rng.below(6) {
        0 => B(Vec::new()),
        1 => B(rng.some_bytes(16)),
        2 => B(b"\r\n\t\x00\x7f\"\\,;=".to_vec()),
        3 if rng.chance(50) => B(vec![b'a'; 64 * 1024]),
        _ => B(format!("v{}", rng.below(1000)).into_bytes()),
    }
}

fn token_name(rng: &mut Rng) -> B {
    let names: &[&[u8]] = &[b"x-a", b"x-b", b"cookie", b"x-envoy-original-path", b"content-type", b"x-tenant"];
    bytes_of(rng, names)
}

fn source(rng: &mut Rng) -> Prop {
    match rng.below(10) {
        0 => Prop::Missing,
        1..=3 => Prop::Bytes(bytes_of(rng, SOURCES)),
        // Many distinct clients: keys and collisions.
        _ => {
            let first = *rng.pick(&[10u64, 10, 10, 11, 192]).unwrap_or(&10);
            let port = if rng.chance(150) { 0 } else { rng.range(1, 65535) };
            Prop::Bytes(B(format!("{first}.{}.{}.{}:{port}", rng.below(4), rng.below(4), rng.below(16)).into_bytes()))
        }
    }
}

fn request(rng: &mut Rng) -> Req {
    let mut headers: Vec<(B, B)> = Vec::new();
    if !rng.chance(30) {
        headers.push((B(b":path".to_vec()), bytes_of(rng, PATHS)));
    }
    let method: &[&[u8]] = &[b"GET", b"GET", b"POST", b"PUT", b"", b"get", b"\xff"];
    if !rng.chance(30) {
        headers.push((B(b":method".to_vec()), bytes_of(rng, method)));
    }
    headers.push((B(b":authority".to_vec()), B(b"example.com".to_vec())));
    for _ in 0..rng.below(3) {
        headers.push((B(b"x-forwarded-for".to_vec()), bytes_of(rng, XFF)));
    }
    if rng.chance(30) {
        headers.push((B(b"x-forwarded-for".to_vec()), B(long_forwarded_for().to_vec())));
    }
    if rng.chance(500) {
        headers.push((B(b"x-tenant".to_vec()), bytes_of(rng, TENANTS)));
    }
    match rng.below(8) {
        0 => headers.push((B(DEBUG_HEADER.as_bytes().to_vec()), B(DEBUG_TOKEN.as_bytes().to_vec()))),
        1 => {
            let wrong: &[&[u8]] = &[b"s3cre", b"s3cret\x00", b"S3CRET", b"s3cret ", b"", b"s3crets3cret", b"\xff"];
            headers.push((B(DEBUG_HEADER.as_bytes().to_vec()), bytes_of(rng, wrong)));
        }
        2 => {
            // Repeated: the first value decides.
            headers.push((B(DEBUG_HEADER.as_bytes().to_vec()), B(b"nope".to_vec())));
            headers.push((B(DEBUG_HEADER.as_bytes().to_vec()), B(DEBUG_TOKEN.as_bytes().to_vec())));
        }
        _ => {}
    }
    if rng.chance(500) {
        let accept: &[&[u8]] = &[b"application/json", b"text/html, APPLICATION/JSON;q=0.5", b"*/*", b"\xffjson"];
        headers.push((B(b"accept".to_vec()), bytes_of(rng, accept)));
    }
    if rng.chance(200) {
        headers.push((B(b"x-upstream-cluster".to_vec()), bytes_of(rng, CLUSTERS)));
    }
    for _ in 0..rng.below(4) {
        let name = token_name(rng);
        headers.push((name, hostile_value(rng)));
    }
    if rng.chance(10) {
        headers.extend(many_headers().iter().cloned());
    }
    if rng.chance(30) {
        headers.push((B(b"x-a".to_vec()), B(vec![b'z'; 64 * 1024])));
    }
    let cluster = match rng.below(5) {
        0 => Prop::Missing,
        _ => Prop::Bytes(bytes_of(rng, CLUSTERS)),
    };
    let route = match rng.below(3) {
        0 => Prop::Missing,
        _ => Prop::Bytes(bytes_of(rng, CLUSTERS)),
    };
    // Requests on the llm stage's paths mostly have a body.
    let llm = first(&headers, b":path").is_some_and(|p| p.starts_with(b"/v1/"));
    let end = if llm { rng.chance(100) } else { rng.chance(800) };
    Req { headers, source: source(rng), cluster, route, end }
}

fn first<'a>(headers: &'a [(B, B)], name: &[u8]) -> Option<&'a [u8]> {
    headers.iter().find(|(k, _)| k.0 == name).map(|(_, v)| v.0.as_slice())
}

fn int_or_garbage(rng: &mut Rng, values: &[u64]) -> Prop {
    match rng.below(12) {
        0 => Prop::Missing,
        1 => Prop::Bytes(B(rng.some_bytes(10))),
        2 => Prop::Int(rng.next_u64()),
        3 => Prop::Bytes(B(rng.pick(values).copied().unwrap_or(0).to_string().into_bytes())),
        _ => Prop::Int(rng.pick(values).copied().unwrap_or(0)),
    }
}

fn response(rng: &mut Rng) -> Resp {
    let statuses = [200u64, 200, 200, 204, 404, 429, 500, 502, 503, 503, 504];
    let code = int_or_garbage(rng, &statuses);
    let status_text: Vec<u8> = match (&code, rng.below(10)) {
        (_, 0) => {
            rng.pick(&[&b""[..], b"abc", b"99999", b"0", b"\xff", b" 503", b"-1"]).copied().unwrap_or_default().to_vec()
        }
        (Prop::Int(c), _) if *c < 1000 => c.to_string().into_bytes(),
        _ => rng.pick(&statuses).copied().unwrap_or(200).to_string().into_bytes(),
    };
    // Single flags (each Envoy bit), a few together, everything, or garbage.
    let flags = match rng.below(10) {
        0..=3 => Prop::Int(0),
        4..=6 => Prop::Int(1 << rng.below(32)),
        7 => Prop::Int((1 << rng.below(32)) | (1 << rng.below(32))),
        8 => Prop::Int(rng.next_u64()),
        _ => int_or_garbage(rng, &[0, 0x20, 0x8000]),
    };
    let details = match rng.below(6) {
        0 => Prop::Missing,
        1 => Prop::Bytes(hostile_value(rng)),
        _ => Prop::Bytes(bytes_of(rng, DETAILS)),
    };
    let transport = match rng.below(4) {
        0 => Prop::Bytes(B(b"delayed connect error: Connection refused".to_vec())),
        1 => Prop::Bytes(hostile_value(rng)),
        _ => Prop::Missing,
    };
    let upstream = match rng.below(4) {
        0 => Prop::Missing,
        1 => Prop::Bytes(bytes_of(rng, CLUSTERS)),
        _ => Prop::Bytes(B(b"10.9.9.9:8080".to_vec())),
    };
    let mut headers = Vec::new();
    if rng.chance(300) {
        let types: &[&[u8]] = &[b"text/plain", b"application/json", b"application/grpc", b"\xff"];
        headers.push((B(b"content-type".to_vec()), bytes_of(rng, types)));
    }
    for _ in 0..rng.below(3) {
        let name = token_name(rng);
        headers.push((name, hostile_value(rng)));
    }
    if rng.chance(300) {
        headers.extend(rate_limit_headers(rng));
    }
    if rng.chance(200) {
        headers.push((B(b"content-type".to_vec()), B(b"text/event-stream".to_vec())));
    }
    Resp {
        status: B(status_text),
        headers,
        code,
        flags,
        details,
        transport,
        upstream,
        attempts: int_or_garbage(rng, &[1, 2, 3, u64::MAX]),
        end: rng.chance(300),
    }
}

/// What a provider's 429 says about when to come back: well formed, garbled, or both.
fn rate_limit_headers(rng: &mut Rng) -> Vec<(B, B)> {
    const NAMES: &[&[u8]] = &[
        b"retry-after",
        b"retry-after-ms",
        b"x-ratelimit-reset-requests",
        b"x-ratelimit-reset-tokens",
        b"x-ratelimit-remaining-requests",
        b"x-ratelimit-remaining-tokens",
    ];
    const VALUES: &[&[u8]] = &[
        b"0",
        b"1",
        b"7",
        b"1250",
        b"99999999999999999999",
        b"-5",
        b"1.5",
        b"Sun, 06 Nov 1994 08:49:47 GMT",
        b"Fri, 31 Dec 9999 23:59:59 GMT",
        b"Sun, 06 Nov 1994 25:61:99 GMT",
        b"1m30s",
        b"6m0s",
        b"250ms",
        b"1h2m3.5s",
        b"9999999h",
        b"ms",
        b"1x",
        b"",
        b" 3 ",
        b"\xff\xfe",
    ];
    (0..rng.range(1, 4))
        .map(|_| {
            let value = if rng.chance(100) { B(rng.some_bytes(24)) } else { bytes_of(rng, VALUES) };
            (bytes_of(rng, NAMES), value)
        })
        .collect()
}

/// A chat request body: valid JSON for a known or unknown model, or not.
fn request_body(rng: &mut Rng) -> Vec<u8> {
    let model = *rng.pick(&["m", "m", "e", "gpt-x", "m-on-b", "", "M"]).unwrap_or(&"m");
    let stream = rng.chance(400);
    let valid = format!(
        "{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}]{}}}",
        if stream { ", \"stream\": true" } else { "" }
    )
    .into_bytes();
    match rng.below(14) {
        0 => Vec::new(),
        1 => {
            let cut = rng.below(valid.len() as u64) as usize;
            valid[..cut].to_vec()
        }
        2 => rng.some_bytes(200),
        3 => b"{\"model\": \"m\xff\xfe\", \"messages\": []}".to_vec(),
        4 => b"{\"model\": 3}".to_vec(),
        5 => b"{\"model\": \"m\", \"model\": \"gpt-x\"}".to_vec(),
        6 => b"[\"model\", \"m\"]".to_vec(),
        7 if rng.chance(100) => {
            let mut v = b"{\"messages\": \"".to_vec();
            v.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
            v.extend_from_slice(b"\", \"model\": \"m\"}");
            v
        }
        8 => b"{\"model\": \"\\u006d\", \"stream_options\": {\"include_usage\": false}, \"stream\": true}".to_vec(),
        _ => valid,
    }
}

/// A body cut into chunks at random bytes.
fn chunks(rng: &mut Rng, body: &[u8]) -> Vec<B> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() && out.len() < 6 {
        let take = if rng.chance(300) { 1 } else { rng.range(1, rest.len() as u64) as usize };
        let (now, later) = rest.split_at(take.min(rest.len()));
        out.push(B(now.to_vec()));
        rest = later;
    }
    if !rest.is_empty() {
        out.push(B(rest.to_vec()));
    }
    if out.is_empty() || rng.chance(100) {
        out.push(B(Vec::new()));
    }
    out
}

/// A provider's answer body: JSON or an event stream, with usage or not, truncated anywhere.
fn answer_body(rng: &mut Rng) -> Vec<u8> {
    let (p, c) = (rng.below(40), rng.below(40));
    let usage = match rng.below(6) {
        0 => "null".to_string(),
        1 => format!("{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}"),
        2 => "{\"total_tokens\":99999999999999999999999}".to_string(),
        3 => "{\"total_tokens\":-3}".to_string(),
        _ => format!("{{\"prompt_tokens\":{p},\"completion_tokens\":{c},\"total_tokens\":{}}}", p + c),
    };
    let mut body = if rng.chance(500) {
        let mut s = String::new();
        for _ in 0..rng.below(4) {
            s.push_str("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n");
        }
        if rng.chance(700) {
            s.push_str(&format!("data: {{\"choices\":[],\"usage\":{usage}}}\r\n\r\n"));
        }
        if rng.chance(700) {
            s.push_str("data: [DONE]\n\n");
        }
        s.into_bytes()
    } else if rng.chance(800) {
        format!("{{\"id\":\"x\",\"choices\":[{{\"message\":{{\"content\":\"hi\"}}}}],\"usage\":{usage}}}").into_bytes()
    } else {
        rng.some_bytes(300)
    };
    if rng.chance(200) {
        let cut = rng.below(body.len() as u64 + 1) as usize;
        body.truncate(cut);
    }
    body
}

fn answer(rng: &mut Rng) -> Answer {
    if rng.chance(200) {
        return Answer::Fail;
    }
    let statuses: &[&[u8]] =
        &[b"200", b"200", b"200", b"204", b"503", b"500", b"", b"abc", b"\xff", b"99999999999", b" 200"];
    let mut headers = Vec::new();
    if !rng.chance(50) {
        headers.push((B(b":status".to_vec()), bytes_of(rng, statuses)));
    }
    for _ in 0..rng.below(3) {
        let name = token_name(rng);
        headers.push((name, hostile_value(rng)));
    }
    let bodies: &[&[u8]] =
        &[b"", b"ok", b"upstream connect error or disconnect/reset before headers", b"no healthy upstream"];
    let body = if rng.chance(100) { B(rng.some_bytes(2048)) } else { bytes_of(rng, bodies) };
    Answer::Reply { headers, body }
}

fn op(rng: &mut Rng, target: Target, workers: u8) -> Op {
    let slot = rng.below(u64::from(SLOTS)) as u8;
    let worker = rng.below(u64::from(workers)) as u8;
    let callouts = if target.routes() { 60 } else { 0 };
    let bodies = if target == Target::UpstreamGuard { 300 } else { 0 };
    let weights = [260, 200, 80, 30, 110, 110, 60, 8, 2, 50, 15, callouts, 5, bodies];
    match rng.weighted(&weights) {
        0 => Op::Start { slot, worker, req: Box::new(request(rng)) },
        1 => Op::Respond { slot, resp: Box::new(response(rng)) },
        2 if target == Target::UpstreamGuard && rng.chance(500) => {
            // A provider's answer, in pieces over several steps or whole.
            let body = answer_body(rng);
            let cut = rng.below(body.len() as u64 + 1) as usize;
            let data = if rng.chance(500) { body[..cut].to_vec() } else { body };
            Op::Body { slot, data: B(data), end: rng.chance(600) }
        }
        2 => Op::Body { slot, data: B(rng.some_bytes(64)), end: rng.chance(600) },
        3 => Op::Trailers { slot },
        4 => Op::Log { slot },
        5 => Op::Finish { slot },
        6 => Op::Advance {
            ms: match rng.below(20) {
                0 => rng.range(2_000, 600_000),
                1..=4 => rng.range(200, 2_000),
                _ => rng.below(200),
            },
        },
        7 => Op::Rewind { ms: if rng.chance(100) { rng.range(60_000, 3_600_000) } else { rng.range(1, 5_000) } },
        8 => Op::SetClock {
            nanos: if rng.chance(500) { rng.below(5_000_000_000) } else { (i64::MAX as u64) - rng.below(1 << 40) },
        },
        9 => Op::Tick { worker: if rng.chance(300) { 255 } else { worker } },
        10 => Op::Race { n: rng.range(1, 6) as u8 },
        11 => Op::Callout { worker, pick: rng.below(8) as u8, answer: answer(rng) },
        12 => {
            Op::Grpc { worker, pick: rng.below(8) as u8, status: rng.below(17) as u8, message: B(rng.some_bytes(64)) }
        }
        _ => {
            let body = request_body(rng);
            Op::ReqBody { slot, chunks: chunks(rng, &body), end: !rng.chance(100) }
        }
    }
}

/// The case of `target` for `seed`: configuration, workers, log level and `steps` steps.
pub fn generate(target: Target, seed: u64, steps: usize) -> Case {
    let mut rng = Rng::new(seed);
    let config = configs::for_target(target, &mut rng);
    let workers = rng.range(1, 3) as u8;
    let log_level = if rng.chance(250) { 0 } else { 3 };
    let mut ops = Vec::with_capacity(steps);
    while ops.len() < steps {
        let next = op(&mut rng, target, workers);
        // A request on the llm stage's paths mostly gets its body next, as clients send it.
        let body_next = match &next {
            Op::Start { slot, req, .. } if target == Target::UpstreamGuard && !req.end && rng.chance(700) => {
                first(&req.headers, b":path").is_some_and(|p| p.starts_with(b"/v1/")).then_some(*slot)
            }
            _ => None,
        };
        ops.push(next);
        if let Some(slot) = body_next.filter(|_| ops.len() < steps) {
            let body = request_body(&mut rng);
            ops.push(Op::ReqBody { slot, chunks: chunks(&mut rng, &body), end: !rng.chance(100) });
        }
    }
    Case { target, seed, workers: usize::from(workers), log_level, config, ops }
}
