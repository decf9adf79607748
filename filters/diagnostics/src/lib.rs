//! # diagnostics filter
//!
//! Adds `x-upstream-diagnosis` (an RFC 8941 Dictionary) to failed responses, saying which
//! upstream failed and why, with a hint an on-call engineer can act on; optionally replaces the
//! body of Envoy's local replies with the same diagnosis as JSON.
//!
//! Place it **first** in `http_filters`: it then sees the local replies of every filter after it
//! (rate limiter, circuit breaker, health router) as well as Envoy's own.
//!
//! The adapter only moves data: request headers → trust decision; response properties →
//! [`Observation`] → [`classify`] → [`Report`] → header/body. Policy lives in
//! [`upstream_guard::diagnose`].

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use upstream_guard::cidr;
use upstream_guard::diagnose::{
    classify, is_error, Cause, DiagnosticsConfig, Expose, Observation, Report, ResponseFlags, When,
};
use upstream_guard_glue::{self as glue, props, Counter};

proxy_wasm::main! {{
    glue::init();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { shared: None }) });
}}

/// What every stream of one plugin configuration shares: the validated config and the metric ids.
struct Shared {
    config: DiagnosticsConfig,
    /// One counter per cause, indexed like [`Cause::ALL`].
    per_cause: Vec<Counter>,
}

impl Shared {
    fn counter(&self, cause: Cause) -> Option<Counter> {
        Cause::ALL.iter().position(|c| *c == cause).and_then(|i| self.per_cause.get(i).copied())
    }
}

/// The root context: validates the configuration once and hands it to every stream.
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(config) =
            glue::load_config("diagnostics", self.get_plugin_configuration(), DiagnosticsConfig::from_json)
        else {
            return false;
        };
        let per_cause =
            Cause::ALL.iter().map(|c| Counter::define(&format!("upstream_guard.diagnosis.{}", c.token()))).collect();
        self.shared = Some(Rc::new(Shared { config, per_cause }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Envoy never creates streams for a root whose on_configure failed; if a host does, the
        // stream passes through untouched.
        let shared = self.shared.clone();
        Some(Box::new(Stream { shared, trusted: false, wants_json: false, replacement: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream.
struct Stream {
    shared: Option<Rc<Shared>>,
    /// May this client see upstream addresses and names?
    trusted: bool,
    /// Did the client send `Accept: application/json`?
    wants_json: bool,
    /// JSON body to put in place of a local reply's body.
    replacement: Option<Vec<u8>>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else { return Action::Continue };
        let config = &shared.config;
        self.trusted = match config.expose {
            Expose::Never => false,
            Expose::Always => true,
            Expose::Trusted => {
                let by_address = !config.trusted.is_empty()
                    && props::string(&["source", "address"])
                        .and_then(|a| cidr::parse_peer(&a))
                        .is_some_and(|ip| cidr::any_contains(&config.trusted, ip));
                by_address || self.debug_token_matches(config)
            }
        };
        if let Some(debug) = &config.debug {
            // The token is for this proxy only: never forward it upstream.
            self.set_http_request_header(&debug.header, None);
        }
        if config.json_body {
            self.wants_json = self
                .get_http_request_header("accept")
                .is_some_and(|accept| accept.to_ascii_lowercase().contains("application/json"));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else { return Action::Continue };
        let config = &shared.config;
        let mut seen = Seen::read();
        if seen.status.is_none() {
            seen.status = self.get_http_response_header(":status").and_then(|s| s.parse().ok());
        }
        let observation = seen.observation();
        let details = seen.details.as_str();
        if config.when == When::Errors && !is_error(&observation) {
            return Action::Continue;
        }
        let cause = classify(&observation);
        let mut report = Report::new(cause, observation);
        let (cluster, upstream, route);
        if self.trusted {
            cluster = props::string(&["xds", "cluster_name"]);
            upstream = props::string(&["upstream", "address"]);
            route = props::string(&["xds", "route_name"]);
            report.cluster = cluster.as_deref();
            report.upstream = upstream.as_deref();
            report.route = route.as_deref();
            report.attempts = props::uint(&["upstream", "request_attempt_count"]);
        }
        self.set_http_response_header(&config.header, Some(&report.header_value(self.trusted)));
        if cause != Cause::None {
            glue::log(LogLevel::Debug, &format!("diagnostics: {}", report.header_value(true)));
        }
        // A local reply that already speaks JSON (the health router's list of reasons) is kept.
        let local_reply = !details.is_empty()
            && details != "via_upstream"
            && !self.get_http_response_header("content-type").is_some_and(|t| t.starts_with("application/json"));
        if config.json_body && self.wants_json && local_reply && !end_of_stream {
            let body = report.json(self.trusted).into_bytes();
            self.set_http_response_header("content-type", Some("application/json"));
            self.set_http_response_header("content-length", Some(&body.len().to_string()));
            self.replacement = Some(body);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.replacement.is_none() {
            return Action::Continue;
        }
        if !end_of_stream {
            // Hold the local reply's body until it is complete, then swap it whole.
            return Action::Pause;
        }
        if let Some(body) = self.replacement.take() {
            self.set_http_response_body(0, body_size, &body);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // Count with the final flags: a reset after the headers went out is only known now.
        let Some(shared) = self.shared.clone() else { return };
        let seen = Seen::read();
        let observation = seen.observation();
        if is_error(&observation) {
            let cause = classify(&observation);
            if let Some(counter) = shared.counter(cause) {
                counter.inc();
            }
            glue::log(
                LogLevel::Debug,
                &format!("diagnostics: stream ended: {}", Report::new(cause, observation).header_value(true)),
            );
        }
    }
}

/// The properties a diagnosis is made from, read once per callback.
struct Seen {
    status: Option<u16>,
    flags: ResponseFlags,
    details: String,
    transport_failure: String,
}

impl Seen {
    /// Reads status and flags; the words (details, transport failure) only when they can matter:
    /// a successful response costs two property reads, not four.
    fn read() -> Seen {
        let status = props::uint(&["response", "code"]).and_then(|c| u16::try_from(c).ok());
        let flags = ResponseFlags(props::uint(&["response", "flags"]).unwrap_or(0));
        let mut seen = Seen { status, flags, details: String::new(), transport_failure: String::new() };
        let quiet = !flags.any_failure() && status.is_some_and(|s| s < 400);
        if !quiet {
            seen.details = props::string(&["response", "code_details"]).unwrap_or_default();
            if flags.any_failure() {
                seen.transport_failure = props::string(&["upstream", "transport_failure_reason"]).unwrap_or_default();
            }
        }
        seen
    }

    fn observation(&self) -> Observation<'_> {
        Observation {
            status: self.status,
            flags: self.flags,
            details: &self.details,
            transport_failure: &self.transport_failure,
        }
    }
}

impl Stream {
    fn debug_token_matches(&self, config: &DiagnosticsConfig) -> bool {
        let Some(debug) = &config.debug else { return false };
        self.get_http_request_header(&debug.header)
            .is_some_and(|sent| constant_time_eq(sent.as_bytes(), debug.token.as_bytes()))
    }
}

/// Compares without an early exit, so response timing does not reveal how much of a guessed
/// token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
