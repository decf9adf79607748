//! gRPC: `proxy_grpc_call`, `proxy_grpc_stream`, `proxy_grpc_send`, `proxy_grpc_cancel`,
//! `proxy_grpc_close`, `proxy_get_status`.
//!
//! The service argument is what Envoy accepts: a serialized `GrpcService` proto (the cluster
//! is `envoy_grpc.cluster_name`, or `google_grpc.target_uri`) or, when the bytes are not such a
//! proto, a plain cluster name. When the test listed the clusters, an unknown one fails as in
//! Envoy 1.40: `ParseFailure` for a plain name, `InternalFailure` for a proto. Calls (odd
//! tokens) and streams (even tokens, as in Envoy) wait in
//! [`Worker::pending_grpc_calls`](crate::Worker::pending_grpc_calls) for the test to answer.
//! Sending on a token that is not a stream's is `BadArgument`, on an unknown stream
//! `NotFound`. Cancelling drops the exchange without a callback; closing half-closes a stream
//! and drops a unary call. `proxy_get_status` reports the status and message of the gRPC close
//! being delivered.

use std::time::Duration;

use wasmtime::Linker;

use super::memory::{give_with, slice, with, write_u32, HostResult, C};
use crate::pairs;
use crate::state::VmState;
use crate::types::{GrpcKind, PendingGrpcCall, Status};

/// Reads a protobuf varint at `*at`.
fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The length-delimited fields of a protobuf message, by field number; `None` if the bytes
/// are not a well-formed message.
fn fields(b: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let tag = varint(b, &mut at)?;
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 0 {
            return None;
        }
        match wire {
            0 => {
                varint(b, &mut at)?;
            }
            1 => at = at.checked_add(8).filter(|e| *e <= b.len())?,
            5 => at = at.checked_add(4).filter(|e| *e <= b.len())?,
            2 => {
                let len = usize::try_from(varint(b, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|e| *e <= b.len())?;
                out.push((field, &b[at..end]));
                at = end;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Where the cluster of a service argument came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The bytes are the cluster name.
    Plain,
    /// `GrpcService.envoy_grpc.cluster_name`.
    EnvoyGrpc,
    /// `GrpcService.google_grpc.target_uri` (not a cluster: never checked).
    GoogleGrpc,
}

/// The cluster a service argument names: `envoy_grpc.cluster_name` (field 1.1) or
/// `google_grpc.target_uri` (field 2.1) of a `GrpcService`, else the bytes as a plain name.
pub(crate) fn service_cluster(service: &[u8]) -> (String, Source) {
    let from_proto = fields(service).and_then(|top| {
        top.iter().find_map(|(n, body)| {
            let source = match n {
                1 => Source::EnvoyGrpc,
                2 => Source::GoogleGrpc,
                _ => return None,
            };
            let name = fields(body)?.into_iter().find(|(n, _)| *n == 1)?.1;
            Some((String::from_utf8_lossy(name).into_owned(), source))
        })
    });
    from_proto.unwrap_or_else(|| (String::from_utf8_lossy(service).into_owned(), Source::Plain))
}

#[allow(clippy::too_many_arguments)]
fn open(
    c: &mut C<'_>,
    kind: GrpcKind,
    (sp, sl): (i32, i32),
    (np, nl): (i32, i32),
    (mp, ml): (i32, i32),
    (ip, il): (i32, i32),
    message: Option<(i32, i32)>,
    timeout_ms: u32,
    ret: i32,
) -> HostResult {
    let token = with(c, |data, s| {
        let service = slice(data, sp, sl)?.to_vec();
        let (cluster, source) = service_cluster(&service);
        if source != Source::GoogleGrpc && !s.knows_cluster(cluster.as_bytes()) {
            // Envoy 1.40: a plain name that is no cluster fails to parse as a proto; a proto
            // naming an unknown cluster fails to get a client.
            let status = if source == Source::Plain { Status::ParseFailure } else { Status::InternalFailure };
            s.host_log(4, format_args!("proxy_grpc_call to {cluster:?}: no such cluster (Host::clusters): {status:?}"));
            return Err(status);
        }
        let initial_metadata = pairs::decode(slice(data, ip, il)?).ok_or(Status::BadArgument)?;
        let messages = match message {
            Some((p, l)) => vec![slice(data, p, l)?.to_vec()],
            None => Vec::new(),
        };
        let token = s.grpc_token(kind == GrpcKind::Stream);
        let call = PendingGrpcCall {
            token,
            kind,
            service,
            cluster,
            service_name: String::from_utf8_lossy(slice(data, np, nl)?).into_owned(),
            method: String::from_utf8_lossy(slice(data, mp, ml)?).into_owned(),
            initial_metadata,
            messages,
            local_closed: false,
            timeout: (kind == GrpcKind::Unary && timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms))),
            sent_at: s.shared.clock.now_nanos(),
        };
        s.grpc_calls.insert(token, call);
        Ok(token)
    })?;
    write_u32(c, ret, token)
}

#[allow(clippy::too_many_arguments)]
fn proxy_grpc_call(
    c: &mut C<'_>,
    sp: i32,
    sl: i32,
    np: i32,
    nl: i32,
    mp: i32,
    ml: i32,
    ip: i32,
    il: i32,
    bp: i32,
    bl: i32,
    timeout: i32,
    ret: i32,
) -> HostResult {
    open(c, GrpcKind::Unary, (sp, sl), (np, nl), (mp, ml), (ip, il), Some((bp, bl)), timeout as u32, ret)
}

#[allow(clippy::too_many_arguments)]
fn proxy_grpc_stream(
    c: &mut C<'_>,
    sp: i32,
    sl: i32,
    np: i32,
    nl: i32,
    mp: i32,
    ml: i32,
    ip: i32,
    il: i32,
    ret: i32,
) -> HostResult {
    open(c, GrpcKind::Stream, (sp, sl), (np, nl), (mp, ml), (ip, il), None, 0, ret)
}

fn proxy_grpc_send(c: &mut C<'_>, token: i32, ptr: i32, len: i32, end_stream: i32) -> HostResult {
    with(c, |data, s| {
        let message = slice(data, ptr, len)?;
        // Stream tokens are even: anything else is not a stream at all.
        if token % 2 != 0 {
            return Err(Status::BadArgument);
        }
        let call = s.grpc_calls.get_mut(&(token as u32)).ok_or(Status::NotFound)?;
        call.messages.push(message.to_vec());
        call.local_closed |= end_stream != 0;
        Ok(())
    })
}

fn proxy_grpc_cancel(c: &mut C<'_>, token: i32) -> HostResult {
    c.data_mut().grpc_calls.remove(&(token as u32)).map(drop).ok_or(Status::NotFound)
}

fn proxy_grpc_close(c: &mut C<'_>, token: i32) -> HostResult {
    let calls = &mut c.data_mut().grpc_calls;
    let call = calls.get_mut(&(token as u32)).ok_or(Status::NotFound)?;
    if call.kind == GrpcKind::Stream {
        call.local_closed = true;
    } else {
        calls.remove(&(token as u32));
    }
    Ok(())
}

fn proxy_get_status(c: &mut C<'_>, ret_code: i32, ret_ptr: i32, ret_len: i32) -> HostResult {
    let code = c.data().grpc_status.0;
    write_u32(c, ret_code, code)?;
    give_with(c, ret_ptr, ret_len, |_, s, out| {
        out.extend_from_slice(&s.grpc_status.1);
        Ok(())
    })
}

/// Adds this area's host functions to `linker`.
pub fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    host_fn!(
        l,
        ProxyGrpcCall,
        proxy_grpc_call,
        (sp: i32, sl: i32, np: i32, nl: i32, mp: i32, ml: i32, ip: i32, il: i32, bp: i32, bl: i32, timeout: i32, ret: i32)
    );
    host_fn!(
        l,
        ProxyGrpcStream,
        proxy_grpc_stream,
        (sp: i32, sl: i32, np: i32, nl: i32, mp: i32, ml: i32, ip: i32, il: i32, ret: i32)
    );
    host_fn!(l, ProxyGrpcSend, proxy_grpc_send, (token: i32, ptr: i32, len: i32, end_stream: i32));
    host_fn!(l, ProxyGrpcCancel, proxy_grpc_cancel, (token: i32));
    host_fn!(l, ProxyGrpcClose, proxy_grpc_close, (token: i32));
    host_fn!(l, ProxyGetStatus, proxy_get_status, (ret_code: i32, ret_ptr: i32, ret_len: i32));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{service_cluster, Source};

    #[test]
    fn plain_names_and_grpc_service_protos() {
        assert_eq!(service_cluster(b"ext_authz"), ("ext_authz".to_string(), Source::Plain));
        // GrpcService { envoy_grpc { cluster_name: "authz" } }
        let proto = [0x0a, 0x07, 0x0a, 0x05, b'a', b'u', b't', b'h', b'z'];
        assert_eq!(service_cluster(&proto), ("authz".to_string(), Source::EnvoyGrpc));
        // GrpcService { google_grpc { target_uri: "h:1" }, timeout { seconds: 1 } }
        let google = [0x12, 0x05, 0x0a, 0x03, b'h', b':', b'1', 0x1a, 0x02, 0x08, 0x01];
        assert_eq!(service_cluster(&google), ("h:1".to_string(), Source::GoogleGrpc));
    }
}
