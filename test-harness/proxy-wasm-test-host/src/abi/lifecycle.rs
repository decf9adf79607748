//! Contexts and streams: `proxy_set_effective_context`, `proxy_continue_stream`,
//! `proxy_close_stream` (and ABI 0.2.0's `proxy_continue_request` / `proxy_continue_response`),
//! `proxy_send_local_response`, `proxy_clear_route_cache`, `proxy_done`.
//!
//! The effective context decides which stream every other host function works on; only
//! existing contexts can be made effective (`BadArgument` otherwise). Continuing a direction
//! releases the data the filter held back in it. A local reply is recorded on the stream with
//! its status, headers (bytes), body, details and gRPC status.

use wasmtime::Linker;

use super::memory::{slice, with, HostResult, C};
use crate::pairs;
use crate::state::{VmState, ROOT_CONTEXT};
use crate::types::{text_pairs, LocalResponse, Status, StreamType};

fn proxy_set_effective_context(c: &mut C<'_>, id: i32) -> HostResult {
    let s = c.data_mut();
    let id = id as u32;
    if id != ROOT_CONTEXT && !s.streams.contains_key(&id) {
        return Err(Status::BadArgument);
    }
    s.effective = id;
    Ok(())
}

fn continue_stream(s: &mut VmState, t: StreamType) -> HostResult {
    let stream = s.stream().ok_or(Status::NotFound)?;
    stream.continued[t as usize] += 1;
    match t {
        StreamType::HttpRequest => stream.request_body.release(),
        StreamType::HttpResponse => stream.response_body.release(),
        StreamType::Downstream => stream.downstream.release(),
        StreamType::Upstream => stream.upstream.release(),
    }
    Ok(())
}

fn proxy_continue_stream(c: &mut C<'_>, t: i32) -> HostResult {
    continue_stream(c.data_mut(), StreamType::from_raw(t as u32).ok_or(Status::BadArgument)?)
}

fn proxy_close_stream(c: &mut C<'_>, t: i32) -> HostResult {
    let t = StreamType::from_raw(t as u32).ok_or(Status::BadArgument)?;
    c.data_mut().stream().ok_or(Status::NotFound)?.closed[t as usize] += 1;
    Ok(())
}

fn proxy_continue_request(c: &mut C<'_>) -> HostResult {
    continue_stream(c.data_mut(), StreamType::HttpRequest)
}

fn proxy_continue_response(c: &mut C<'_>) -> HostResult {
    continue_stream(c.data_mut(), StreamType::HttpResponse)
}

#[allow(clippy::too_many_arguments)]
fn proxy_send_local_response(
    c: &mut C<'_>,
    status: i32,
    dp: i32,
    dl: i32,
    bp: i32,
    bl: i32,
    hp: i32,
    hl: i32,
    grpc: i32,
) -> HostResult {
    with(c, |data, s| {
        let details = (dl != 0).then(|| slice(data, dp, dl)).transpose()?;
        let details = details.map(|d| String::from_utf8_lossy(d).into_owned());
        let body = slice(data, bp, bl)?.to_vec();
        let raw_headers = pairs::decode(slice(data, hp, hl)?).ok_or(Status::BadArgument)?;
        let grpc_status = Some(grpc as u32).filter(|g| *g <= 16);
        let stream = s.stream().ok_or(Status::NotFound)?;
        // Sent once the response started (from a response callback): Envoy sends it as it is,
        // without running this filter's response callbacks again.
        stream.local_response_delivered = stream.response_headers.is_some();
        stream.local_response = Some(LocalResponse {
            status: status as u32,
            headers: text_pairs(&raw_headers),
            raw_headers,
            body,
            details,
            grpc_status,
        });
        Ok(())
    })
}

/// Marks the current stream's route for re-matching (also reachable as the foreign function
/// `clear_route_cache`).
pub(crate) fn clear_route_cache(s: &mut VmState) -> HostResult {
    s.stream().ok_or(Status::NotFound)?.route_cache_cleared = true;
    Ok(())
}

fn proxy_clear_route_cache(c: &mut C<'_>) -> HostResult {
    clear_route_cache(c.data_mut())
}

fn proxy_done(c: &mut C<'_>) -> HostResult {
    c.data_mut().done += 1;
    Ok(())
}

/// Adds this area's host functions to `linker`.
pub fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    host_fn!(l, ProxySetEffectiveContext, proxy_set_effective_context, (id: i32));
    host_fn!(l, ProxyContinueStream, proxy_continue_stream, (t: i32));
    host_fn!(l, ProxyCloseStream, proxy_close_stream, (t: i32));
    host_fn!(l, ProxyContinueRequest, proxy_continue_request, ());
    host_fn!(l, ProxyContinueResponse, proxy_continue_response, ());
    host_fn!(
        l,
        ProxySendLocalResponse,
        proxy_send_local_response,
        (status: i32, dp: i32, dl: i32, bp: i32, bl: i32, hp: i32, hl: i32, grpc: i32)
    );
    host_fn!(l, ProxyClearRouteCache, proxy_clear_route_cache, ());
    host_fn!(l, ProxyDone, proxy_done, ());
    Ok(())
}
