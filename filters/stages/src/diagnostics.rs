//! The diagnostics stage: says on the response which upstream failed and why.
//!
//! Request: decide whether this client may see upstream details (trusted address, or the debug
//! token), strip the debug header, note whether it wants JSON. Response: classify what Envoy
//! reports (status, then flags and details only when something failed), add the header, and for
//! local replies swap the body for the diagnosis as JSON when asked. The replies of the other
//! stages of the same module are diagnosed as they are sent ([`Stage::decorate`]), with no
//! property read at all. At the end of the stream the final flags are classified again and
//! counted, so a reset after the headers left is still counted. When a later stage already knows
//! the cause (the LLM stage: a provider's 429, every provider of a model out), it leaves a
//! [`Note`](upstream_guard_glue::Note) and the diagnosis reports it as it is.

use upstream_guard::access_log::{key, Fields};
use upstream_guard::diagnose::{classify, is_error, Cause, DiagnosticsConfig, Expose, Observation, Report, When};
use upstream_guard_glue::stream::{path, OwnedObservation};
use upstream_guard_glue::{host, BodyAction, BufferType, Counter, Cx, Flow, Level, LocalReply, Stage};

/// The stage, configured.
pub struct Diagnostics {
    config: DiagnosticsConfig,
    /// One counter per cause, indexed like [`Cause::ALL`].
    per_cause: Vec<Counter>,
}

impl Diagnostics {
    /// Defines the metrics.
    pub fn new(config: DiagnosticsConfig) -> Diagnostics {
        let per_cause =
            Cause::ALL.iter().map(|c| Counter::define(&format!("upstream_guard.diagnosis.{}", c.token()))).collect();
        Diagnostics { config, per_cause }
    }

    fn trusted(&self, st: &mut DiagnosticsStream, cx: &mut Cx<'_>) -> bool {
        if let Some(t) = st.trusted {
            return t;
        }
        let config = &self.config;
        let t = match config.expose {
            Expose::Never => false,
            Expose::Always => true,
            Expose::Trusted => st.token_sent || (!config.trust.is_empty() && config.trust.trusts(cx.peer())),
        };
        st.trusted = Some(t);
        t
    }

    /// The verdict for the access log: cause and flags.
    fn publish(st: &mut DiagnosticsStream, cx: &mut Cx<'_>, report: &Report<'_>) {
        cx.publish(
            key::DIAGNOSTICS,
            &Fields::new().add("cause", report.cause.token()).add("flags", &report.flags_text()),
        );
        st.published = Some(report.cause);
    }

    fn count(&self, cause: Cause) {
        if let Some(c) = Cause::ALL.iter().position(|c| *c == cause).and_then(|i| self.per_cause.get(i)) {
            c.inc();
        }
    }

    /// The upstream details a trusted client sees.
    fn report<'a>(
        &'a self,
        cx: &mut Cx<'_>,
        obs: &'a OwnedObservation,
        trusted: bool,
        names: &'a mut Names,
    ) -> Report<'a> {
        let note = cx.facts().note.clone();
        let cause = note.as_ref().map_or_else(|| classify(&obs.view()), |n| n.cause);
        let mut report = Report::new(cause, obs.view());
        report.docs = self.config.docs_url.as_deref();
        if let Some(n) = note {
            report.retry_after = n.retry_after_s;
            names.reasons = n.reasons;
            report.reasons = names.reasons.as_deref();
        }
        if trusted {
            names.cluster = cx.facts().cluster.clone().or_else(|| cx.property_text(path::CLUSTER_NAME));
            names.upstream = cx.property_text(path::UPSTREAM_ADDRESS);
            names.route = cx.property_text(path::ROUTE_NAME);
            report.cluster = names.cluster.as_deref();
            report.upstream = names.upstream.as_deref();
            report.route = names.route.as_deref();
            report.attempts = cx.property_uint(path::ATTEMPTS);
        }
        report
    }
}

#[derive(Default)]
struct Names {
    cluster: Option<String>,
    upstream: Option<String>,
    route: Option<String>,
    reasons: Option<String>,
}

/// Per stream.
#[derive(Debug, Default)]
pub struct DiagnosticsStream {
    /// The request carried the debug token.
    token_sent: bool,
    /// May this client see upstream details? Decided on first need: a response that needs no
    /// diagnosis never reads the client address.
    trusted: Option<bool>,
    wants_json: bool,
    /// A reply of this module's own stages was already diagnosed.
    decorated: bool,
    /// JSON body to put in place of a local reply's body.
    replacement: Option<Vec<u8>>,
    /// The cause published for the access log.
    published: Option<Cause>,
}

/// Compares without an early exit, so response timing does not reveal how much of a guessed
/// token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// True when an `Accept` value asks for JSON (ASCII case-insensitive). A value that is not UTF-8
/// simply is not JSON.
fn accepts_json(accept: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"application/json";
    std::str::from_utf8(accept).is_ok() && accept.windows(NEEDLE.len()).any(|w| w.eq_ignore_ascii_case(NEEDLE))
}

impl Stage for Diagnostics {
    type Stream = DiagnosticsStream;

    fn request(&self, st: &mut DiagnosticsStream, cx: &mut Cx<'_>) -> Flow {
        let config = &self.config;
        if let Some(debug) = &config.debug {
            let ok = cx.request_header(&debug.header).map(|sent| constant_time_eq(sent, debug.token.as_bytes()));
            if ok.is_some() {
                // The token is for this proxy only: never forward it upstream.
                cx.remove_request_header(&debug.header);
            }
            st.token_sent = ok.unwrap_or(false);
        }
        if config.json_body {
            // A gRPC client gets its diagnosis in the header only: a local reply's body becomes
            // its grpc-message, and the upstream's body is never ours to touch.
            let grpc = cx.request_header("content-type").is_some_and(|t| t.starts_with(b"application/grpc"));
            st.wants_json = !grpc && cx.request_header("accept").is_some_and(accepts_json);
        }
        Flow::Continue
    }

    fn decorate(&self, st: &mut DiagnosticsStream, cx: &mut Cx<'_>, reply: &mut LocalReply) {
        // Envoy sends a local reply to a gRPC request as HTTP 200 with the reply's gRPC status:
        // the diagnosis says what went out, as it does for Envoy's own gRPC refusals. (Read only
        // here, on a refusal: the common request pays nothing for it.)
        let grpc = reply
            .grpc_status
            .filter(|_| cx.request_header("content-type").is_some_and(|t| t.starts_with(b"application/grpc")));
        let obs = OwnedObservation {
            status: Some(if grpc.is_some() { 200 } else { reply.status }),
            details: reply.details.to_string(),
            grpc_status: grpc,
            ..OwnedObservation::default()
        };
        if self.config.when == When::Errors && !is_error(&obs.view()) && cx.facts().note.is_none() {
            return;
        }
        let trusted = self.trusted(st, cx);
        let mut names = Names::default();
        let report = self.report(cx, &obs, trusted, &mut names);
        reply.set_header(&self.config.header, report.header_value(trusted));
        Self::publish(st, cx, &report);
        let json_reply = reply.header_value("content-type").is_some_and(|t| t.starts_with(b"application/json"));
        if self.config.json_body && st.wants_json && !json_reply {
            reply.body = report.json(trusted).into_bytes();
            reply.set_header("content-type", "application/json");
        }
        st.decorated = true;
    }

    fn response(&self, st: &mut DiagnosticsStream, cx: &mut Cx<'_>) {
        if st.decorated {
            return;
        }
        let obs = cx.observation();
        if self.config.when == When::Errors && !is_error(&obs.view()) && cx.facts().note.is_none() {
            return;
        }
        let trusted = self.trusted(st, cx);
        let mut names = Names::default();
        let report = self.report(cx, &obs, trusted, &mut names);
        cx.set_response_header(&self.config.header, report.header_value(trusted).as_bytes());
        Self::publish(st, cx, &report);
        if report.cause != Cause::None {
            host::log_with(Level::Debug, || format!("diagnostics: {}", report.header_value(true)));
        }
        // Only local replies (Envoy's or another filter's) get a new body, never the upstream's; a
        // reply that already speaks JSON (the health router's reasons) or gRPC is kept.
        if !(self.config.json_body && st.wants_json) || cx.end_of_stream {
            return;
        }
        let local_reply = !obs.details.is_empty() && obs.details != "via_upstream";
        let content_type = cx.response_header("content-type").unwrap_or_default();
        let kept = content_type.starts_with(b"application/json") || content_type.starts_with(b"application/grpc");
        if local_reply && !kept {
            let body = report.json(trusted).into_bytes();
            cx.set_response_header("content-type", b"application/json");
            cx.set_response_header("content-length", body.len().to_string().as_bytes());
            st.replacement = Some(body);
        }
    }

    fn response_body(&self, st: &mut DiagnosticsStream, _cx: &mut Cx<'_>, size: usize, end: bool) -> BodyAction {
        if st.replacement.is_none() {
            return BodyAction::Continue;
        }
        if !end {
            // Hold the local reply's body until it is complete, then swap it whole.
            return BodyAction::Hold;
        }
        if let Some(body) = st.replacement.take() {
            let _ = host::set_buffer(BufferType::HttpResponseBody, 0, size, &body);
        }
        BodyAction::Continue
    }

    fn log(&self, st: &mut DiagnosticsStream, cx: &mut Cx<'_>) {
        // Count with the final flags: a reset after the headers went out is only known now.
        let obs = cx.observation();
        let view: Observation<'_> = obs.view();
        let noted = cx.facts().note.as_ref().map(|n| n.cause);
        if is_error(&view) || noted.is_some() {
            let cause = noted.unwrap_or_else(|| classify(&view));
            self.count(cause);
            if st.published != Some(cause) {
                // A failure the response headers did not show (a reset in the body). Envoy 1.40
                // runs the HTTP connection manager's access loggers after this callback, so the
                // log line still shows it; where a host logs earlier, the header-time value stays.
                Self::publish(st, cx, &Report::new(cause, view));
            }
            host::log_with(Level::Debug, || {
                format!("diagnostics: stream ended: {}", Report::new(cause, view).header_value(true))
            });
        }
    }

    fn request_headers_read(&self, out: &mut Vec<String>) {
        if let Some(debug) = &self.config.debug {
            out.push(debug.header.clone());
        }
        if self.config.json_body {
            out.push("accept".into());
            out.push("content-type".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matching_is_case_insensitive_and_byte_safe() {
        assert!(accepts_json(b"text/html, Application/JSON;q=0.9"));
        assert!(!accepts_json(b"application/json\xff"), "not UTF-8: not JSON");
        assert!(!accepts_json(b"\xff\xfe"));
        assert!(!accepts_json(b""));
    }

    #[test]
    fn token_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cres"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
    }
}
