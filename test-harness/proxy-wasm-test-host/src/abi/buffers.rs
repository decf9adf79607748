//! Buffers: `proxy_get_buffer_bytes`, `proxy_get_buffer_status`, `proxy_set_buffer_bytes`.
//!
//! Which buffers exist follows Envoy: HTTP bodies in HTTP stream contexts, downstream and
//! upstream data in L4 contexts, a callout's response body or a gRPC message only while its
//! callback runs, the plugin configuration only during `proxy_on_vm_start` and
//! `proxy_on_configure`, the VM configuration always; anything else is `NotFound`. A body
//! buffer holds what the filter has held back so far (all chunks since it last let data go).
//! Writes follow Envoy's three cases: prepend (`start` 0, `size` 0), replace all (`start` 0,
//! `size` ≥ length) or append (`start` ≥ length); anything else is `BadArgument`.

use wasmtime::Linker;

use super::memory::{give_with, slice, with, write_u32, HostResult, C};
use crate::state::{Kind, VmState};
use crate::types::{BufferType, Status};

/// The buffer of type `t` in the current context.
pub(crate) fn buffer(s: &mut VmState, t: i32) -> Result<&mut Vec<u8>, Status> {
    let t = BufferType::from_raw(t as u32).ok_or(Status::BadArgument)?;
    let in_config = s.delivery.in_configure;
    let d = &mut s.delivery;
    match t {
        BufferType::HttpCallResponseBody => d.http_body.as_mut().ok_or(Status::NotFound),
        BufferType::GrpcReceiveBuffer => d.grpc_message.as_mut().ok_or(Status::NotFound),
        BufferType::CallData => d.call_data.as_mut().ok_or(Status::NotFound),
        BufferType::VmConfiguration => Ok(&mut s.vm_config),
        BufferType::PluginConfiguration if in_config => Ok(&mut s.plugin_config),
        BufferType::PluginConfiguration => Err(Status::NotFound),
        BufferType::HttpRequestBody | BufferType::HttpResponseBody => {
            let stream = s.streams.get_mut(&s.effective).filter(|d| d.kind == Kind::Http).ok_or(Status::NotFound)?;
            Ok(if t == BufferType::HttpRequestBody {
                &mut stream.request_body.pending
            } else {
                &mut stream.response_body.pending
            })
        }
        BufferType::DownstreamData | BufferType::UpstreamData => {
            let stream = s.streams.get_mut(&s.effective).filter(|d| d.kind == Kind::Tcp).ok_or(Status::NotFound)?;
            Ok(if t == BufferType::DownstreamData {
                &mut stream.downstream.pending
            } else {
                &mut stream.upstream.pending
            })
        }
    }
}

fn proxy_get_buffer_bytes(c: &mut C<'_>, t: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32) -> HostResult {
    let (start, max) = (start as u32 as usize, max as u32 as usize);
    let len = buffer(c.data_mut(), t)?.len();
    if start > len {
        return Err(Status::BadArgument);
    }
    if max.min(len - start) == 0 {
        // Envoy answers Ok and leaves the return slots alone.
        return Ok(());
    }
    give_with(c, ret_ptr, ret_len, |_, s, out| {
        let b = buffer(s, t)?;
        let end = start.saturating_add(max).min(b.len());
        out.extend_from_slice(&b[start..end]);
        Ok(())
    })
}

fn proxy_get_buffer_status(c: &mut C<'_>, t: i32, len_ptr: i32, flags_ptr: i32) -> HostResult {
    let len = buffer(c.data_mut(), t)?.len();
    write_u32(c, len_ptr, len as u32)?;
    write_u32(c, flags_ptr, 0)
}

fn proxy_set_buffer_bytes(c: &mut C<'_>, t: i32, start: i32, size: i32, ptr: i32, len: i32) -> HostResult {
    let writable = matches!(
        BufferType::from_raw(t as u32),
        Some(
            BufferType::HttpRequestBody
                | BufferType::HttpResponseBody
                | BufferType::DownstreamData
                | BufferType::UpstreamData
        )
    );
    with(c, |data, s| {
        let bytes = slice(data, ptr, len)?;
        let b = buffer(s, t)?;
        if !writable {
            return Err(Status::BadArgument);
        }
        let (start, size) = (start as u32 as usize, size as u32 as usize);
        if start == 0 && size == 0 {
            b.splice(0..0, bytes.iter().copied());
        } else if start == 0 && size >= b.len() {
            b.clear();
            b.extend_from_slice(bytes);
        } else if start >= b.len() {
            b.extend_from_slice(bytes);
        } else {
            return Err(Status::BadArgument);
        }
        Ok(())
    })
}

/// Adds this area's host functions to `linker`.
pub fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    host_fn!(l, ProxyGetBufferBytes, proxy_get_buffer_bytes, (t: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32));
    host_fn!(l, ProxyGetBufferStatus, proxy_get_buffer_status, (t: i32, len_ptr: i32, flags_ptr: i32));
    host_fn!(l, ProxySetBufferBytes, proxy_set_buffer_bytes, (t: i32, start: i32, size: i32, ptr: i32, len: i32));
    Ok(())
}
