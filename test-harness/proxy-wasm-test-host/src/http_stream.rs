//! Driving an HTTP stream through a filter: request headers, body and trailers, response
//! headers, body and trailers, `on_log`, done; and reading what the filter did after any step.
//!
//! Headers are carried exactly as given (bytes; the `&str` methods are conveniences). As in
//! Envoy, the filter can use a header map during its callback, and afterwards only while it
//! holds the stream there (it returned `Pause`) and in `on_log`. Body chunks accumulate while
//! the filter holds them back and are released when it continues.

use crate::state::Kind;
use crate::stream::{property_methods, Core};
use crate::types::{text_pairs, Action, Headers, HostError, LocalResponse};
use crate::worker::Worker;
use std::sync::atomic::Ordering;

/// One HTTP stream on a worker. Drive it with the callbacks in order; read what the filter did
/// after any step.
pub struct HttpStream<'w> {
    core: Core<'w>,
}

fn bytes_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
    pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect()
}

/// Headers a test hands in, names lowercased as Envoy's codecs deliver them (HTTP/1 names are
/// case-insensitive; HTTP/2 and 3 names are lowercase on the wire).
fn owned(pairs: &[(&[u8], &[u8])]) -> Headers {
    pairs.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec())).collect()
}

/// The first value of `name`, in any case (Envoy's lookups are case-insensitive).
fn first(map: &Option<Headers>, name: &[u8]) -> Option<Vec<u8>> {
    map.as_ref()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
}

fn text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.map(|v| String::from_utf8_lossy(&v).into_owned())
}

impl Worker {
    /// Starts an HTTP stream (creates its context).
    pub fn http_stream(&self) -> HttpStream<'_> {
        HttpStream { core: Core::new(self, Kind::Http) }
    }
}

impl<'w> HttpStream<'w> {
    property_methods!();

    /// Delivers a map and calls its callback; the filter may use the map during the callback,
    /// and after it only while it holds the stream there.
    fn headers_callback(&mut self, which: Which, headers: Headers, end_of_stream: bool) -> Result<Action, HostError> {
        let n = headers.len() as i32;
        let i = which as usize;
        self.core.data(|d| {
            *which.slot(d) = Some(headers);
            d.available[i] = true;
        });
        let args = [self.core.id as i32, n, i32::from(end_of_stream)];
        let action = match which {
            Which::RequestHeaders => self.core.callback(|e| &e.on_request_headers, &args),
            Which::ResponseHeaders => self.core.callback(|e| &e.on_response_headers, &args),
            Which::RequestTrailers => self.core.callback(|e| &e.on_request_trailers, &args[..2]),
            Which::ResponseTrailers => self.core.callback(|e| &e.on_response_trailers, &args[..2]),
        }?;
        if action == Action::Continue {
            self.core.data(|d| d.available[i] = false);
        }
        Ok(action)
    }

    /// `on_http_request_headers` with these headers.
    pub fn request_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Result<Action, HostError> {
        self.request_headers_bytes(&bytes_of(headers), end_of_stream)
    }

    /// `on_http_request_headers` with these headers, as bytes.
    pub fn request_headers_bytes(
        &mut self,
        headers: &[(&[u8], &[u8])],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        let action = self.headers_callback(Which::RequestHeaders, owned(headers), end_of_stream)?;
        self.deliver_local_reply()?;
        Ok(action)
    }

    /// `on_http_request_body` with this chunk added to what the filter holds back.
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, HostError> {
        let action = self.core.data_callback(|d| &mut d.request_body, |e| &e.on_request_body, chunk, end_of_stream)?;
        self.deliver_local_reply()?;
        Ok(action)
    }

    /// A stream already under way, for the host's own use: dropping it does not end the stream.
    pub(crate) fn existing(worker: &'w Worker, id: u32) -> HttpStream<'w> {
        HttpStream { core: Core { worker, id, error: None, finished: true } }
    }

    /// After a request callback: a local reply the filter sent in it goes through the filter's
    /// own response callbacks, as Envoy sends it (unless [`crate::Host::local_replies_skip_filter`]).
    pub(crate) fn deliver_local_reply(&mut self) -> Result<(), HostError> {
        let skip = self.core.worker.with_state(|s| s.shared.local_replies_skip_filter.load(Ordering::Relaxed));
        let reply = self.core.data(|d| {
            if d.local_response_delivered || skip {
                return None;
            }
            let reply = d.local_response.clone()?;
            d.local_response_delivered = true;
            Some(reply)
        });
        let Some(reply) = reply else { return Ok(()) };
        let mut headers: Headers = vec![(b":status".to_vec(), reply.status.to_string().into_bytes())];
        headers.extend(reply.raw_headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())));
        let has = |h: &Headers, name: &[u8]| h.iter().any(|(k, _)| k.as_slice() == name);
        if !reply.body.is_empty() {
            if !has(&headers, b"content-length") {
                headers.push((b"content-length".to_vec(), reply.body.len().to_string().into_bytes()));
            }
            if !has(&headers, b"content-type") {
                headers.push((b"content-type".to_vec(), b"text/plain".to_vec()));
            }
        }
        self.headers_callback(Which::ResponseHeaders, headers, reply.body.is_empty())?;
        if !reply.body.is_empty() {
            self.core.data_callback(|d| &mut d.response_body, |e| &e.on_response_body, &reply.body, true)?;
        }
        Ok(())
    }

    /// `on_http_request_trailers` with these trailers.
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action, HostError> {
        self.request_trailers_bytes(&bytes_of(trailers))
    }

    /// `on_http_request_trailers` with these trailers, as bytes.
    pub fn request_trailers_bytes(&mut self, trailers: &[(&[u8], &[u8])]) -> Result<Action, HostError> {
        let action = self.headers_callback(Which::RequestTrailers, owned(trailers), true)?;
        self.deliver_local_reply()?;
        Ok(action)
    }

    /// `on_http_response_headers` with these headers.
    pub fn response_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Result<Action, HostError> {
        self.response_headers_bytes(&bytes_of(headers), end_of_stream)
    }

    /// `on_http_response_headers` with these headers, as bytes.
    pub fn response_headers_bytes(
        &mut self,
        headers: &[(&[u8], &[u8])],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.headers_callback(Which::ResponseHeaders, owned(headers), end_of_stream)
    }

    /// `on_http_response_body` with this chunk added to what the filter holds back.
    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, HostError> {
        self.core.data_callback(|d| &mut d.response_body, |e| &e.on_response_body, chunk, end_of_stream)
    }

    /// `on_http_response_trailers` with these trailers.
    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action, HostError> {
        self.response_trailers_bytes(&bytes_of(trailers))
    }

    /// `on_http_response_trailers` with these trailers, as bytes.
    pub fn response_trailers_bytes(&mut self, trailers: &[(&[u8], &[u8])]) -> Result<Action, HostError> {
        self.headers_callback(Which::ResponseTrailers, owned(trailers), true)
    }

    /// The local reply the filter sent, if any.
    pub fn local_response(&self) -> Option<LocalResponse> {
        self.core.data(|d| d.local_response.clone())
    }

    /// Request headers as the upstream would see them now (lossy text).
    pub fn request_headers_now(&self) -> Vec<(String, String)> {
        text_pairs(&self.request_headers_now_bytes())
    }

    /// Request headers as the upstream would see them now, exactly.
    pub fn request_headers_now_bytes(&self) -> Headers {
        self.core.data(|d| d.request_headers.clone().unwrap_or_default())
    }

    /// One request header as the upstream would see it now (the first of that name, in any
    /// case).
    pub fn request_header(&self, name: &str) -> Option<String> {
        text(self.request_header_bytes(name.as_bytes()))
    }

    /// Same as [`HttpStream::request_header`], exactly.
    pub fn request_header_bytes(&self, name: &[u8]) -> Option<Vec<u8>> {
        self.core.data(|d| first(&d.request_headers, name))
    }

    /// Request trailers now, exactly (`None` if none were delivered).
    pub fn request_trailers_now(&self) -> Option<Headers> {
        self.core.data(|d| d.request_trailers.clone())
    }

    /// The request body as the upstream would see it now (released and held-back data).
    pub fn request_body_now(&self) -> Vec<u8> {
        self.core.data(|d| d.request_body.view())
    }

    /// Response headers as the client would see them now (lossy text).
    pub fn response_headers_now(&self) -> Vec<(String, String)> {
        text_pairs(&self.response_headers_now_bytes())
    }

    /// Response headers as the client would see them now, exactly.
    pub fn response_headers_now_bytes(&self) -> Headers {
        self.core.data(|d| d.response_headers.clone().unwrap_or_default())
    }

    /// One response header as the client would see it now (the first of that name, in any
    /// case).
    pub fn response_header(&self, name: &str) -> Option<String> {
        text(self.response_header_bytes(name.as_bytes()))
    }

    /// Same as [`HttpStream::response_header`], exactly.
    pub fn response_header_bytes(&self, name: &[u8]) -> Option<Vec<u8>> {
        self.core.data(|d| first(&d.response_headers, name))
    }

    /// Response trailers now, exactly (`None` if none were delivered).
    pub fn response_trailers_now(&self) -> Option<Headers> {
        self.core.data(|d| d.response_trailers.clone())
    }

    /// The response body as the client would see it now (released and held-back data).
    pub fn response_body_now(&self) -> Vec<u8> {
        self.core.data(|d| d.response_body.view())
    }

    /// True once the filter cleared the route cache.
    pub fn route_cache_cleared(&self) -> bool {
        self.core.data(|d| d.route_cache_cleared)
    }
}

/// The four stream maps, numbered as `MapType`.
#[derive(Clone, Copy)]
enum Which {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
}

impl Which {
    fn slot(self, d: &mut crate::state::StreamData) -> &mut Option<Headers> {
        match self {
            Which::RequestHeaders => &mut d.request_headers,
            Which::RequestTrailers => &mut d.request_trailers,
            Which::ResponseHeaders => &mut d.response_headers,
            Which::ResponseTrailers => &mut d.response_trailers,
        }
    }
}
