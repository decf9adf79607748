//! HTTP callouts: `proxy_http_call`.
//!
//! As in Envoy, a callout must carry `:method`, `:path` and `:authority`, and must name a
//! known cluster when the test listed them ([`Host::clusters`](crate::Host::clusters)); either
//! failure is `BadArgument`. The callout then waits in
//! [`Worker::pending_http_calls`](crate::Worker::pending_http_calls) until the test answers or
//! fails it, or the fake clock passes its timeout (0 means none) and a tick delivers the
//! failure. The answer arrives through `proxy_on_http_call_response` on the root context, with
//! its headers, body and trailers readable only during that callback.

use std::time::Duration;

use wasmtime::Linker;

use super::memory::{slice, with, write_u32, HostResult, C};
use crate::pairs;
use crate::state::VmState;
use crate::types::{text_pairs, PendingCall, Status};

#[allow(clippy::too_many_arguments)]
fn proxy_http_call(
    c: &mut C<'_>,
    up: i32,
    ul: i32,
    hp: i32,
    hl: i32,
    bp: i32,
    bl: i32,
    tp: i32,
    tl: i32,
    timeout: i32,
    ret: i32,
) -> HostResult {
    let token = with(c, |data, s| {
        let cluster = slice(data, up, ul)?;
        let raw_headers = pairs::decode(slice(data, hp, hl)?).ok_or(Status::BadArgument)?;
        let trailers = pairs::decode(slice(data, tp, tl)?).ok_or(Status::BadArgument)?;
        let body = slice(data, bp, bl)?.to_vec();
        if !s.knows_cluster(cluster) {
            let name = String::from_utf8_lossy(cluster).into_owned();
            s.host_log(4, format_args!("proxy_http_call to {name:?}: no such cluster (Host::clusters): BadArgument"));
            return Err(Status::BadArgument);
        }
        let required: [&[u8]; 3] = [b":method", b":path", b":authority"];
        if let Some(h) = required.iter().find(|h| !raw_headers.iter().any(|(k, _)| k == *h)) {
            let missing = String::from_utf8_lossy(h).into_owned();
            s.host_log(4, format_args!("proxy_http_call without the {missing} header Envoy requires: BadArgument"));
            return Err(Status::BadArgument);
        }
        let token = s.token();
        let call = PendingCall {
            token,
            cluster: String::from_utf8_lossy(cluster).into_owned(),
            headers: text_pairs(&raw_headers),
            raw_headers,
            body,
            trailers,
            timeout: Duration::from_millis(u64::from(timeout as u32)),
            sent_at: s.shared.clock.now_nanos(),
        };
        s.http_calls.insert(token, call);
        Ok(token)
    })?;
    write_u32(c, ret, token)
}

/// Adds this area's host functions to `linker`.
pub fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    host_fn!(
        l,
        ProxyHttpCall,
        proxy_http_call,
        (up: i32, ul: i32, hp: i32, hl: i32, bp: i32, bl: i32, tp: i32, tl: i32, timeout: i32, ret: i32)
    );
    Ok(())
}
