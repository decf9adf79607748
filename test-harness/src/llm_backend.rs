//! A fake OpenAI-compatible provider on loopback, for the LLM stage's tests, benchmarks and
//! example.
//!
//! It answers `POST /v1/chat/completions`, `/v1/completions` and `/v1/embeddings` (any other
//! path but its health path, too) according to its current [`LlmReply`]: a JSON completion with
//! or without usage, a server-sent event stream (a delay before the first chunk, a delay between
//! chunks, the usage chunk when the request asked for it or always), a 429 with any rate-limit
//! headers, or any error status (5xx, 529). Every request is recorded (path, headers, body and
//! the model it named) with the time its first response chunk was written, so a test can compare
//! when the backend sent and when the client received. Usage it reports is summed, so a test can
//! check that the gateway charged exactly that.
//!
//! The reply can also be changed over HTTP, without going through the proxy:
//! `GET /fake/reply?status=429&retry-after=5`, `?stream=1&gap_ms=200`, `?status=200` (see
//! [`LlmReply::from_query`]): what the example's README uses.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backend::read_request;
use crate::{Error, Result};

/// Token counts the fake reports: `total_tokens` is their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

impl Tokens {
    /// The total.
    pub fn total(&self) -> u64 {
        self.prompt + self.completion
    }
}

/// When a stream carries its usage chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamUsage {
    /// Never.
    Never,
    /// Only when the request asked (`stream_options.include_usage: true`), as OpenAI does.
    WhenAsked,
    /// Always.
    Always,
}

/// How the fake answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmReply {
    /// A `chat.completion` JSON body, with `usage` when given; to a request with
    /// `"stream": true`, the same as an event stream (three chunks at once, usage when asked),
    /// as a provider answers.
    Json { usage: Option<Tokens> },
    /// `text/event-stream`: `first_delay` before the first chunk, then `chunks` content chunks
    /// `gap` apart, the usage chunk (per `usage_mode`), and `data: [DONE]`.
    Stream { chunks: u32, first_delay: Duration, gap: Duration, usage: Tokens, usage_mode: StreamUsage },
    /// An error status with an OpenAI-style error body and these extra headers (a 429's
    /// `retry-after`, `x-ratelimit-reset-requests`, …).
    Error { status: u16, headers: Vec<(String, String)> },
}

impl LlmReply {
    /// A JSON completion reporting `prompt` + `completion` tokens.
    pub fn json(prompt: u64, completion: u64) -> LlmReply {
        LlmReply::Json { usage: Some(Tokens { prompt, completion }) }
    }

    /// A stream of `chunks` chunks `gap` apart, with usage when asked.
    pub fn stream(chunks: u32, gap: Duration, prompt: u64, completion: u64) -> LlmReply {
        LlmReply::Stream {
            chunks,
            first_delay: Duration::ZERO,
            gap,
            usage: Tokens { prompt, completion },
            usage_mode: StreamUsage::WhenAsked,
        }
    }

    /// A 429 with these headers.
    pub fn rate_limited(headers: &[(&str, &str)]) -> LlmReply {
        LlmReply::Error { status: 429, headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    /// An error status (500, 503, 529…) without extra headers.
    pub fn status(status: u16) -> LlmReply {
        LlmReply::Error { status, headers: Vec::new() }
    }

    /// Parses the query of `/fake/reply`: `status=<n>` (200: JSON), `stream=1`, `chunks=<n>`,
    /// `gap_ms=<n>`, `first_ms=<n>`, `prompt=<n>`, `completion=<n>`, `usage=0`, and for errors
    /// any other `name=value` as a response header (`retry-after=5`).
    pub fn from_query(query: &str) -> LlmReply {
        let mut status = 200u16;
        let (mut stream, mut usage) = (false, true);
        let (mut chunks, mut gap, mut first, mut prompt, mut completion) = (3u32, 0u64, 0u64, 10u64, 20u64);
        let mut headers = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let n = v.parse::<u64>().unwrap_or(0);
            match k {
                "status" => status = u16::try_from(n).unwrap_or(200),
                "stream" => stream = n != 0,
                "usage" => usage = n != 0,
                "chunks" => chunks = u32::try_from(n).unwrap_or(3),
                "gap_ms" => gap = n,
                "first_ms" => first = n,
                "prompt" => prompt = n,
                "completion" => completion = n,
                _ => headers.push((k.to_string(), v.to_string())),
            }
        }
        let tokens = Tokens { prompt, completion };
        match (status, stream) {
            (200, true) => LlmReply::Stream {
                chunks,
                first_delay: Duration::from_millis(first),
                gap: Duration::from_millis(gap),
                usage: tokens,
                usage_mode: if usage { StreamUsage::WhenAsked } else { StreamUsage::Never },
            },
            (200, false) => LlmReply::Json { usage: usage.then_some(tokens) },
            (s, _) => LlmReply::Error { status: s, headers },
        }
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body's `model`, if it parsed as JSON.
    pub model: Option<String>,
    /// When the first byte of the response body was written (after any first delay).
    pub first_chunk_at: Option<Instant>,
}

impl Seen {
    /// A request header (first value).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

struct State {
    name: String,
    reply: Mutex<LlmReply>,
    seen: Mutex<Vec<Seen>>,
    healthy: AtomicBool,
    tokens_reported: AtomicU64,
    stop: AtomicBool,
}

/// A running fake provider; stops on drop.
pub struct FakeLlm {
    addr: SocketAddr,
    state: Arc<State>,
}

impl FakeLlm {
    /// Starts on `127.0.0.1:0`, answering with `reply`; `name` is sent back as `x-backend`.
    pub fn start(name: &str, reply: LlmReply) -> Result<FakeLlm> {
        Self::start_on("127.0.0.1:0", name, reply)
    }

    /// Starts on `addr` (the example's fixed ports).
    pub fn start_on(addr: &str, name: &str, reply: LlmReply) -> Result<FakeLlm> {
        let listener = TcpListener::bind(addr).map_err(Error::io(format!("bind fake LLM on {addr}")))?;
        let addr = listener.local_addr().map_err(Error::io("fake LLM address"))?;
        let state = Arc::new(State {
            name: name.to_string(),
            reply: Mutex::new(reply),
            seen: Mutex::new(Vec::new()),
            healthy: AtomicBool::new(true),
            tokens_reported: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                thread::spawn(move || serve(conn, &st));
            }
        });
        Ok(FakeLlm { addr, state })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes how later requests are answered.
    pub fn set(&self, reply: LlmReply) {
        if let Ok(mut r) = self.state.reply.lock() {
            *r = reply;
        }
    }

    /// Makes `/healthz` pass (200) or fail (503).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Every request received so far (health checks and control requests excluded).
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// How many requests it received.
    pub fn requests(&self) -> usize {
        self.state.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// The total tokens its responses reported in `usage` so far.
    pub fn tokens_reported(&self) -> u64 {
        self.state.tokens_reported.load(Ordering::SeqCst)
    }
}

/// `envoy-examples/llm-gateway/envoy.yaml` as shipped, with its fixed ports swapped for this
/// run's (Envoy's listener and admin on ephemeral ports, the providers on these fakes').
pub fn gateway_example(primary: &FakeLlm, secondary: &FakeLlm) -> String {
    let path = crate::paths::workspace_root().join("envoy-examples/llm-gateway/envoy.yaml");
    let target = crate::paths::target_dir().display().to_string();
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .replace("port_value: 10001", "port_value: 0")
        .replace("port_value: 9902", "port_value: 0")
        .replace("port_value: 18091", &format!("port_value: {}", primary.addr().port()))
        .replace("port_value: 18092", &format!("port_value: {}", secondary.addr().port()))
        .replace("filename: target/", &format!("filename: {target}/"))
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(conn: TcpStream, st: &State) {
    let _ = conn.set_nodelay(true);
    let Ok(write_half) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    let mut out = write_half;
    while let Some(req) = read_request(&mut reader) {
        if st.stop.load(Ordering::SeqCst) {
            return;
        }
        let ok = if req.path == "/healthz" {
            let status = if st.healthy.load(Ordering::SeqCst) { 200 } else { 503 };
            respond(&mut out, status, "text/plain", &[], b"health\n", &st.name).is_ok()
        } else if let Some(q) = req.path.strip_prefix("/fake/reply") {
            let reply = LlmReply::from_query(q.trim_start_matches('?'));
            let text = format!("{reply:?}\n");
            if let Ok(mut r) = st.reply.lock() {
                *r = reply;
            }
            respond(&mut out, 200, "text/plain", &[], text.as_bytes(), &st.name).is_ok()
        } else {
            answer(&mut out, st, req.path.clone(), req.headers.clone(), req.body.clone())
        };
        if !ok || !req.keep_alive {
            return;
        }
    }
}

fn record(st: &State, seen: Seen) -> usize {
    match st.seen.lock() {
        Ok(mut s) => {
            s.push(seen);
            s.len() - 1
        }
        Err(_) => 0,
    }
}

fn mark_first_chunk(st: &State, i: usize) {
    if let Ok(mut s) = st.seen.lock() {
        if let Some(seen) = s.get_mut(i) {
            seen.first_chunk_at.get_or_insert_with(Instant::now);
        }
    }
}

fn answer(out: &mut TcpStream, st: &State, path: String, headers: Vec<(String, String)>, body: Vec<u8>) -> bool {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let model = parsed.as_ref().and_then(|v| v["model"].as_str()).map(str::to_string);
    let asked_usage = parsed.as_ref().is_some_and(|v| v["stream_options"]["include_usage"] == true);
    let streamed = parsed.as_ref().is_some_and(|v| v["stream"] == true);
    let i = record(st, Seen { path, headers, body, model: model.clone(), first_chunk_at: None });
    let reply = match st.reply.lock().map(|r| r.clone()).unwrap_or(LlmReply::status(500)) {
        LlmReply::Json { usage } if streamed => LlmReply::Stream {
            chunks: 3,
            first_delay: Duration::ZERO,
            gap: Duration::ZERO,
            usage: usage.unwrap_or(Tokens { prompt: 0, completion: 0 }),
            usage_mode: if usage.is_some() { StreamUsage::WhenAsked } else { StreamUsage::Never },
        },
        other => other,
    };
    let model = model.unwrap_or_default();
    match reply {
        LlmReply::Json { usage } => {
            let mut v = json!({"id": format!("chatcmpl-{i}"), "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("hello from {}", st.name)},
                             "finish_reason": "stop"}]});
            if let Some(u) = usage {
                v["usage"] =
                    json!({"prompt_tokens": u.prompt, "completion_tokens": u.completion, "total_tokens": u.total()});
                st.tokens_reported.fetch_add(u.total(), Ordering::SeqCst);
            }
            mark_first_chunk(st, i);
            respond(out, 200, "application/json", &[], v.to_string().as_bytes(), &st.name).is_ok()
        }
        LlmReply::Error { status, headers } => {
            let body = json!({"error": {"message": format!("{} says {status}", st.name), "type": "fake_error", "code": status}});
            let extra: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            mark_first_chunk(st, i);
            respond(out, status, "application/json", &extra, body.to_string().as_bytes(), &st.name).is_ok()
        }
        LlmReply::Stream { chunks, first_delay, gap, usage, usage_mode } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nx-backend: {}\r\n\r\n",
                st.name
            );
            if out.write_all(head.as_bytes()).and_then(|_| out.flush()).is_err() {
                return false;
            }
            thread::sleep(first_delay);
            for n in 0..chunks {
                if n > 0 {
                    thread::sleep(gap);
                }
                let data = json!({"id": format!("chatcmpl-{i}"), "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": {"content": format!("word{n} ")}, "finish_reason": null}], "usage": null});
                if write_chunk(out, format!("data: {data}\n\n").as_bytes()).is_err() {
                    return false;
                }
                if n == 0 {
                    mark_first_chunk(st, i);
                }
            }
            let send_usage = match usage_mode {
                StreamUsage::Never => false,
                StreamUsage::WhenAsked => asked_usage,
                StreamUsage::Always => true,
            };
            if send_usage {
                let data = json!({"id": format!("chatcmpl-{i}"), "object": "chat.completion.chunk", "model": model, "choices": [],
                    "usage": {"prompt_tokens": usage.prompt, "completion_tokens": usage.completion, "total_tokens": usage.total()}});
                st.tokens_reported.fetch_add(usage.total(), Ordering::SeqCst);
                if write_chunk(out, format!("data: {data}\n\n").as_bytes()).is_err() {
                    return false;
                }
            }
            write_chunk(out, b"data: [DONE]\n\n").and_then(|_| write_chunk(out, b"")).is_ok()
        }
    }
}

fn write_chunk(out: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    out.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    out.write_all(data)?;
    out.write_all(b"\r\n")?;
    out.flush()
}

fn respond(
    out: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    name: &str,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} Status\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nx-backend: {name}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_query_sets_each_kind_of_reply() {
        assert_eq!(LlmReply::from_query("status=200"), LlmReply::json(10, 20));
        assert_eq!(LlmReply::from_query("usage=0"), LlmReply::Json { usage: None });
        assert_eq!(LlmReply::from_query("status=429&retry-after=5"), LlmReply::rate_limited(&[("retry-after", "5")]));
        assert_eq!(LlmReply::from_query("status=529"), LlmReply::status(529));
        assert!(matches!(
            LlmReply::from_query("stream=1&gap_ms=100&first_ms=50&chunks=5"),
            LlmReply::Stream { chunks: 5, .. }
        ));
    }
}
