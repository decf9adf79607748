//! Header maps: `proxy_get_header_map_pairs`, `proxy_set_header_map_pairs`,
//! `proxy_get_header_map_value`, `proxy_replace_header_map_value`,
//! `proxy_remove_header_map_value`, `proxy_add_header_map_value`, `proxy_get_header_map_size`.
//!
//! Keys and values are bytes, kept exactly as the test gave them. As measured in Envoy 1.40:
//! keys a filter passes are lowercased and lookups compare against the lowercased key; a
//! stream's map is usable only during its own callback, and after it while the filter holds
//! the stream there (it returned `Pause`); in `on_log` every delivered map is readable and a
//! missing one is `NotFound`; callout and gRPC maps exist only while their callback runs; only
//! the stream's own maps can be changed. Reading one value of a map that is not available is
//! `BadArgument`; reading all its pairs gives an empty map. `replace` removes every entry of
//! the key and appends one; `add` appends an entry. Changing the request headers clears the
//! stream's route cache, as Envoy does for ABI 0.2.x modules, so the route is matched again.

use wasmtime::Linker;

use super::memory::{give_with, slice, with, write_u32, HostResult, C};
use crate::pairs;
use crate::state::{Kind, VmState};
use crate::types::{Headers, MapType, Status};

/// The map of type `t` in the current context; `mutable` refuses the read-only ones.
/// `BadArgument` when the map is not available now (`NotFound` for a missing map in `on_log`).
pub(crate) fn map(s: &mut VmState, t: i32, mutable: bool) -> Result<&mut Headers, Status> {
    let t = MapType::from_raw(t as u32).ok_or(Status::BadArgument)?;
    let d = &mut s.delivery;
    let read_only = match t {
        MapType::GrpcReceiveInitialMetadata => d.grpc_initial.as_mut(),
        MapType::GrpcReceiveTrailingMetadata => d.grpc_trailing.as_mut(),
        MapType::HttpCallResponseHeaders => d.http_headers.as_mut(),
        MapType::HttpCallResponseTrailers => d.http_trailers.as_mut(),
        _ => {
            let stream = s.streams.get_mut(&s.effective).filter(|d| d.kind == Kind::Http).ok_or(Status::BadArgument)?;
            let i = t as usize;
            let (log_phase, available) = (stream.log_phase, stream.available[i]);
            let m = match t {
                MapType::HttpRequestHeaders => &mut stream.request_headers,
                MapType::HttpRequestTrailers => &mut stream.request_trailers,
                MapType::HttpResponseHeaders => &mut stream.response_headers,
                _ => &mut stream.response_trailers,
            };
            return match (log_phase, m.as_mut()) {
                (true, Some(_)) if mutable => Err(Status::BadArgument),
                (true, Some(m)) => Ok(m),
                (true, None) => Err(Status::NotFound),
                (false, Some(m)) if available => Ok(m),
                (false, _) => Err(Status::BadArgument),
            };
        }
    };
    if mutable {
        return Err(Status::BadArgument);
    }
    read_only.ok_or(Status::BadArgument)
}

/// Envoy clears the route cache when an ABI 0.2.x module changes a request header.
fn changed(s: &mut VmState, t: i32) {
    if t == MapType::HttpRequestHeaders as i32 {
        if let Some(stream) = s.stream() {
            stream.route_cache_cleared = true;
        }
    }
}

/// `stored == lowercase(key)`, without allocating.
#[inline]
fn key_is(stored: &[u8], key: &[u8]) -> bool {
    stored.len() == key.len() && stored.iter().zip(key).all(|(a, b)| *a == b.to_ascii_lowercase())
}

fn proxy_get_header_map_pairs(c: &mut C<'_>, t: i32, ret_ptr: i32, ret_len: i32) -> HostResult {
    MapType::from_raw(t as u32).ok_or(Status::BadArgument)?;
    give_with(c, ret_ptr, ret_len, |_, s, out| {
        // A map that is not available reads as empty here (Envoy), unlike single values.
        if let Ok(m) = map(s, t, false) {
            if !m.is_empty() {
                pairs::encode_into(out, m.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            }
        }
        Ok(())
    })
}

fn proxy_set_header_map_pairs(c: &mut C<'_>, t: i32, ptr: i32, len: i32) -> HostResult {
    with(c, |data, s| {
        let mut new = pairs::decode(slice(data, ptr, len)?).ok_or(Status::BadArgument)?;
        for (k, _) in &mut new {
            k.make_ascii_lowercase();
        }
        *map(s, t, true)? = new;
        changed(s, t);
        Ok(())
    })
}

fn proxy_get_header_map_value(c: &mut C<'_>, t: i32, kp: i32, kl: i32, ret_ptr: i32, ret_len: i32) -> HostResult {
    give_with(c, ret_ptr, ret_len, |data, s, out| {
        let key = slice(data, kp, kl)?;
        let (_, v) = map(s, t, false)?.iter().find(|(k, _)| key_is(k, key)).ok_or(Status::NotFound)?;
        out.extend_from_slice(v);
        Ok(())
    })
}

fn proxy_replace_header_map_value(c: &mut C<'_>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> HostResult {
    with(c, |data, s| {
        let (key, value) = (slice(data, kp, kl)?, slice(data, vp, vl)?);
        let m = map(s, t, true)?;
        m.retain(|(k, _)| !key_is(k, key));
        m.push((key.to_ascii_lowercase(), value.to_vec()));
        changed(s, t);
        Ok(())
    })
}

fn proxy_remove_header_map_value(c: &mut C<'_>, t: i32, kp: i32, kl: i32) -> HostResult {
    with(c, |data, s| {
        let key = slice(data, kp, kl)?;
        map(s, t, true)?.retain(|(k, _)| !key_is(k, key));
        changed(s, t);
        Ok(())
    })
}

fn proxy_add_header_map_value(c: &mut C<'_>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> HostResult {
    with(c, |data, s| {
        let (key, value) = (slice(data, kp, kl)?, slice(data, vp, vl)?);
        map(s, t, true)?.push((key.to_ascii_lowercase(), value.to_vec()));
        changed(s, t);
        Ok(())
    })
}

/// Envoy's `byteSize()`: the keys' and values' lengths added up.
fn proxy_get_header_map_size(c: &mut C<'_>, t: i32, ret: i32) -> HostResult {
    let n: usize = map(c.data_mut(), t, false)?.iter().map(|(k, v)| k.len() + v.len()).sum();
    write_u32(c, ret, n as u32)
}

/// Adds this area's host functions to `linker`.
pub fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    host_fn!(l, ProxyGetHeaderMapPairs, proxy_get_header_map_pairs, (t: i32, ret_ptr: i32, ret_len: i32));
    host_fn!(l, ProxySetHeaderMapPairs, proxy_set_header_map_pairs, (t: i32, ptr: i32, len: i32));
    host_fn!(l, ProxyGetHeaderMapValue, proxy_get_header_map_value, (t: i32, kp: i32, kl: i32, ret_ptr: i32, ret_len: i32));
    host_fn!(l, ProxyReplaceHeaderMapValue, proxy_replace_header_map_value, (t: i32, kp: i32, kl: i32, vp: i32, vl: i32));
    host_fn!(l, ProxyRemoveHeaderMapValue, proxy_remove_header_map_value, (t: i32, kp: i32, kl: i32));
    host_fn!(l, ProxyAddHeaderMapValue, proxy_add_header_map_value, (t: i32, kp: i32, kl: i32, vp: i32, vl: i32));
    host_fn!(l, ProxyGetHeaderMapSize, proxy_get_header_map_size, (t: i32, ret: i32));
    Ok(())
}
