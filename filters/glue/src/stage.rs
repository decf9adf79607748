//! Stages: each policy written once, composed into one module or shipped alone.
//!
//! A [`Stage`] is one policy's reaction to the stream's callbacks. A [`Pipeline`] is a tuple of
//! stages run in order on the request (diagnostics, rate limiter, health router, circuit breaker)
//! and in reverse order on the response, the way Envoy runs a chain of filters, but inside one
//! `HttpContext`: one VM per worker, one set of callbacks per stream, and every host read shared
//! through [`Cx`]. A single-policy `.wasm` is the same stage in a one-element pipeline.
//!
//! When a stage refuses a request, the stages before it [`Stage::decorate`] the reply (the
//! diagnostics stage adds its header, and its JSON body) before it is sent, the way an earlier
//! filter in a chain sees a later filter's local reply.
//!
//! A stage that decides from the request body (the LLM stage routes by the body's model) answers
//! [`Flow::Body`] at the headers. The stages before it have decided; it and the stages after it
//! decide once the body is in: every chunk goes to its [`Stage::request_body`] (Envoy buffers
//! them), and when the last one has, the stages after it run their [`Stage::request`]. Envoy
//! does not let a wasm filter hold the request headers while it reads the body (proxy-wasm hosts
//! turn a headers `StopIteration` into "stop everything"), so the headers go on at once: a
//! native buffer filter placed after this module must hold them from the router until the body
//! is complete. From then on request headers can no longer be read or changed from the module:
//! the dispatcher keeps a copy for [`Cx::request_header`], and a stage that routes after the body
//! does it with filter state and a route-cache clear, not with a header.

use crate::stream::Cx;

/// A local reply a stage wants to send instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u16,
    /// `response.code_details` (an `upstream_guard.*` constant).
    pub details: &'static str,
    /// Response headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Response body.
    pub body: Vec<u8>,
    /// The gRPC status a gRPC client gets (Envoy uses it only for gRPC requests).
    pub grpc_status: Option<u32>,
}

impl LocalReply {
    /// A plain-text reply.
    pub fn text(status: u16, details: &'static str, body: String) -> LocalReply {
        LocalReply {
            status,
            details,
            headers: vec![("content-type".to_string(), b"text/plain".to_vec())],
            body: body.into_bytes(),
            grpc_status: None,
        }
    }

    /// Adds (or replaces) a header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> LocalReply {
        self.set_header(name, value);
        self
    }

    /// Sets (replaces) a header in place.
    pub fn set_header(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.to_string(), value.into()));
    }

    /// A header's value.
    pub fn header_value(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }
}

/// What a stage decided about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Pass it on to the next stage.
    Continue,
    /// Refuse it with this reply.
    Reply(LocalReply),
    /// Hold it until an answer arrives (see [`Stage::resume`]).
    Wait,
    /// Decide from the request body (see the module documentation): the chunks go to
    /// [`Stage::request_body`], and the stages after this one wait for its decision.
    Body,
}

/// An answer a waiting stage receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A unary gRPC call finished: `status` 0 with the response `message`, or another gRPC status
    /// with its message text.
    Grpc { token: u32, status: u32, message: &'a [u8] },
}

/// Whether a body callback lets data through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyAction {
    Continue,
    /// Hold the data (buffered by Envoy) until the end of the body.
    Hold,
}

/// One policy.
pub trait Stage: 'static {
    /// What the stage remembers about one stream.
    type Stream: Default + 'static;

    /// Request headers arrived (for a stage after one that answered [`Flow::Body`]: the body is
    /// complete, and request headers are only readable from the copy [`Cx`] keeps).
    fn request(&self, _st: &mut Self::Stream, _cx: &mut Cx<'_>) -> Flow {
        Flow::Continue
    }
    /// A chunk of the request body, for the stage that answered [`Flow::Body`]: `size` bytes are
    /// held so far (every chunk since the headers), `end` on the last. Before the end,
    /// [`Flow::Continue`] reads on; at the end it lets the request go on (the stages after this
    /// one decide next). [`Flow::Reply`] refuses; [`Flow::Wait`] at the end waits for an answer
    /// ([`Stage::resume`]).
    fn request_body(&self, _st: &mut Self::Stream, _cx: &mut Cx<'_>, _size: usize, _end: bool) -> Flow {
        Flow::Continue
    }
    /// An answer to what the stage waits for arrived ([`Flow::Wait`]).
    fn resume(&self, _st: &mut Self::Stream, _cx: &mut Cx<'_>, _event: &Event<'_>) -> Flow {
        Flow::Continue
    }
    /// A later stage refuses the request with `reply`: add what this stage adds to replies.
    fn decorate(&self, _st: &mut Self::Stream, _cx: &mut Cx<'_>, _reply: &mut LocalReply) {}
    /// Any stage (this one, an earlier one, a later one) refuses the request with `reply`:
    /// reshape its body for the API this request speaks. Runs on every stage before any
    /// [`Stage::decorate`], so that decorations see the final body.
    fn shape(&self, _st: &mut Self::Stream, _cx: &mut Cx<'_>, _reply: &mut LocalReply) {}
    /// Response headers arrived (from the upstream, or a local reply of Envoy or another filter).
    fn response(&self, _st: &mut Self::Stream, _cx: &mut Cx<'_>) {}
    /// A response body chunk arrived (only for modules that export the callback).
    fn response_body(&self, _st: &mut Self::Stream, _cx: &mut Cx<'_>, _size: usize, _end: bool) -> BodyAction {
        BodyAction::Continue
    }
    /// The stream is over (access-log time): final flags are known.
    fn log(&self, _st: &mut Self::Stream, _cx: &mut Cx<'_>) {}
    /// The root's timer fired (in every worker).
    fn tick(&self, _now: u64) {}
    /// How often the stage wants [`Stage::tick`] (milliseconds).
    fn tick_ms(&self) -> Option<u32> {
        None
    }
    /// An HTTP callout the stage sent was answered (root context).
    fn http_call_response(&self, _token: u32, _headers: usize, _body: usize) {}
    /// The stream waiting for gRPC call `token`, if this stage sent it.
    fn grpc_owner(&self, _token: u32) -> Option<u32> {
        None
    }
    /// Request headers the stage reads on the common path (for the read plan).
    fn request_headers_read(&self, _out: &mut Vec<String>) {}
}

/// A stage that is configured off.
impl<S: Stage> Stage for Option<S> {
    type Stream = S::Stream;

    fn request(&self, st: &mut S::Stream, cx: &mut Cx<'_>) -> Flow {
        self.as_ref().map_or(Flow::Continue, |s| s.request(st, cx))
    }
    fn request_body(&self, st: &mut S::Stream, cx: &mut Cx<'_>, size: usize, end: bool) -> Flow {
        self.as_ref().map_or(Flow::Continue, |s| s.request_body(st, cx, size, end))
    }
    fn resume(&self, st: &mut S::Stream, cx: &mut Cx<'_>, event: &Event<'_>) -> Flow {
        self.as_ref().map_or(Flow::Continue, |s| s.resume(st, cx, event))
    }
    fn decorate(&self, st: &mut S::Stream, cx: &mut Cx<'_>, reply: &mut LocalReply) {
        if let Some(s) = self {
            s.decorate(st, cx, reply)
        }
    }
    fn shape(&self, st: &mut S::Stream, cx: &mut Cx<'_>, reply: &mut LocalReply) {
        if let Some(s) = self {
            s.shape(st, cx, reply)
        }
    }
    fn response(&self, st: &mut S::Stream, cx: &mut Cx<'_>) {
        if let Some(s) = self {
            s.response(st, cx)
        }
    }
    fn response_body(&self, st: &mut S::Stream, cx: &mut Cx<'_>, size: usize, end: bool) -> BodyAction {
        self.as_ref().map_or(BodyAction::Continue, |s| s.response_body(st, cx, size, end))
    }
    fn log(&self, st: &mut S::Stream, cx: &mut Cx<'_>) {
        if let Some(s) = self {
            s.log(st, cx)
        }
    }
    fn tick(&self, now: u64) {
        if let Some(s) = self {
            s.tick(now)
        }
    }
    fn tick_ms(&self) -> Option<u32> {
        self.as_ref().and_then(Stage::tick_ms)
    }
    fn http_call_response(&self, token: u32, headers: usize, body: usize) {
        if let Some(s) = self {
            s.http_call_response(token, headers, body)
        }
    }
    fn grpc_owner(&self, token: u32) -> Option<u32> {
        self.as_ref().and_then(|s| s.grpc_owner(token))
    }
    fn request_headers_read(&self, out: &mut Vec<String>) {
        if let Some(s) = self {
            s.request_headers_read(out)
        }
    }
}

/// Where the request stands after running stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every stage let it through.
    Continue,
    /// Stage `n` waits for an answer.
    Wait(usize),
    /// Stage `n` refuses it.
    Reply(usize, LocalReply),
    /// Stage `n` decides from the body: let the headers go on and send it the body.
    Body(usize),
}

/// Stages in order.
pub trait Pipeline: 'static {
    /// Every stage's per-stream state.
    type Streams: Default + 'static;

    /// Runs the request through stages `from..`.
    fn request_from(&self, st: &mut Self::Streams, cx: &mut Cx<'_>, from: usize) -> Step;
    /// A request body chunk for stage `stage` (which answered [`Flow::Body`]); at the end of the
    /// body, once it lets the request go on, the stages after it.
    fn request_body_at(&self, st: &mut Self::Streams, cx: &mut Cx<'_>, stage: usize, size: usize, end: bool) -> Step;
    /// Resumes stage `stage` with `event`, then runs the stages after it.
    fn resume_at(&self, st: &mut Self::Streams, cx: &mut Cx<'_>, stage: usize, event: &Event<'_>) -> Step;
    /// Lets every stage shape stage `stage`'s reply, then the stages before it decorate it.
    fn decorate_before(&self, st: &mut Self::Streams, cx: &mut Cx<'_>, stage: usize, reply: &mut LocalReply);
    /// Response headers, stages in reverse order.
    fn response(&self, st: &mut Self::Streams, cx: &mut Cx<'_>);
    /// A response body chunk, stages in reverse order; held if any stage holds it.
    fn response_body(&self, st: &mut Self::Streams, cx: &mut Cx<'_>, size: usize, end: bool) -> BodyAction;
    /// End of stream, stages in reverse order.
    fn log(&self, st: &mut Self::Streams, cx: &mut Cx<'_>);
    /// Timer.
    fn tick(&self, now: u64);
    /// The shortest tick any stage wants.
    fn tick_ms(&self) -> Option<u32>;
    /// An HTTP callout answer (every stage checks whether the token is its own).
    fn http_call_response(&self, token: u32, headers: usize, body: usize);
    /// Which stage sent gRPC call `token`, and for which stream.
    fn grpc_owner(&self, token: u32) -> Option<(usize, u32)>;
    /// Request headers the stages read on the common path.
    fn request_headers_read(&self, out: &mut Vec<String>);
}

macro_rules! pipeline_for_tuple {
    ([$($s:ident $i:tt),+] [$($r:tt),+]) => {
        impl<$($s: Stage),+> Pipeline for ($($s,)+) {
            type Streams = ($($s::Stream,)+);

            fn request_from(&self, st: &mut Self::Streams, cx: &mut Cx<'_>, from: usize) -> Step {
                $(
                    if $i >= from {
                        match self.$i.request(&mut st.$i, cx) {
                            Flow::Continue => {}
                            Flow::Wait => return Step::Wait($i),
                            Flow::Reply(r) => return Step::Reply($i, r),
                            Flow::Body => return Step::Body($i),
                        }
                    }
                )+
                Step::Continue
            }

            fn request_body_at(&self, st: &mut Self::Streams, cx: &mut Cx<'_>, stage: usize, size: usize, end: bool) -> Step {
                let flow = match stage {
                    $($i => self.$i.request_body(&mut st.$i, cx, size, end),)+
                    _ => Flow::Continue,
                };
                match flow {
                    Flow::Continue if end => self.request_from(st, cx, stage + 1),
                    Flow::Continue | Flow::Body => Step::Body(stage),
                    Flow::Wait => Step::Wait(stage),
                    Flow::Reply(r) => Step::Reply(stage, r),
                }
            }

            fn resume_at(&self, st: &mut Self::Streams, cx: &mut Cx<'_>, stage: usize, event: &Event<'_>) -> Step {
                let flow = match stage {
                    $($i => self.$i.resume(&mut st.$i, cx, event),)+
                    _ => Flow::Continue,
                };
                match flow {
                    Flow::Continue => self.request_from(st, cx, stage + 1),
                    Flow::Wait => Step::Wait(stage),
                    Flow::Reply(r) => Step::Reply(stage, r),
                    Flow::Body => Step::Body(stage),
                }
            }

            fn decorate_before(&self, st: &mut Self::Streams, cx: &mut Cx<'_>, stage: usize, reply: &mut LocalReply) {
                $(self.$i.shape(&mut st.$i, cx, reply);)+
                $(
                    if $i < stage {
                        self.$i.decorate(&mut st.$i, cx, reply);
                    }
                )+
            }

            fn response(&self, st: &mut Self::Streams, cx: &mut Cx<'_>) {
                $(self.$r.response(&mut st.$r, cx);)+
            }

            fn response_body(&self, st: &mut Self::Streams, cx: &mut Cx<'_>, size: usize, end: bool) -> BodyAction {
                let mut action = BodyAction::Continue;
                $(
                    if self.$r.response_body(&mut st.$r, cx, size, end) == BodyAction::Hold {
                        action = BodyAction::Hold;
                    }
                )+
                action
            }

            fn log(&self, st: &mut Self::Streams, cx: &mut Cx<'_>) {
                $(self.$r.log(&mut st.$r, cx);)+
            }

            fn tick(&self, now: u64) {
                $(self.$i.tick(now);)+
            }

            fn tick_ms(&self) -> Option<u32> {
                [$(self.$i.tick_ms()),+].into_iter().flatten().min()
            }

            fn http_call_response(&self, token: u32, headers: usize, body: usize) {
                $(self.$i.http_call_response(token, headers, body);)+
            }

            fn grpc_owner(&self, token: u32) -> Option<(usize, u32)> {
                $(
                    if let Some(stream) = self.$i.grpc_owner(token) {
                        return Some(($i, stream));
                    }
                )+
                None
            }

            fn request_headers_read(&self, out: &mut Vec<String>) {
                $(self.$i.request_headers_read(out);)+
            }
        }
    };
}

pipeline_for_tuple!([A 0] [0]);
pipeline_for_tuple!([A 0, B 1] [1, 0]);
pipeline_for_tuple!([A 0, B 1, C 2] [2, 1, 0]);
pipeline_for_tuple!([A 0, B 1, C 2, D 3] [3, 2, 1, 0]);
pipeline_for_tuple!([A 0, B 1, C 2, D 3, E 4] [4, 3, 2, 1, 0]);
pipeline_for_tuple!([A 0, B 1, C 2, D 3, E 4, F 5] [5, 4, 3, 2, 1, 0]);
pipeline_for_tuple!([A 0, B 1, C 2, D 3, E 4, F 5, G 6] [6, 5, 4, 3, 2, 1, 0]);
