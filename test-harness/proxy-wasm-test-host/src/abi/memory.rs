//! Guest memory: reading what a filter passes, and handing data back the way Envoy does
//! (allocate in the guest with `proxy_on_memory_allocate` or `malloc`, copy, store pointer and
//! size in the filter's return slots). Every host function goes through these, so they are
//! where pointer checks and allocation accounting live.

use wasmtime::{Caller, Memory};

use crate::state::VmState;
use crate::types::Status;

/// The caller every proxy-wasm host function gets.
pub(crate) type C<'a> = Caller<'a, VmState>;

/// What a host function body returns; `Err` is the status the filter sees.
pub(crate) type HostResult = Result<(), Status>;

/// The ABI number of a host function's outcome.
#[inline]
pub(crate) fn code(r: HostResult) -> i32 {
    match r {
        Ok(()) => Status::Ok.code(),
        Err(s) => s.code(),
    }
}

fn memory(c: &C<'_>) -> Result<Memory, Status> {
    c.data().memory.ok_or(Status::InvalidMemoryAccess)
}

/// `len` bytes at `ptr` in `data`.
#[inline]
pub(crate) fn slice(data: &[u8], ptr: i32, len: i32) -> Result<&[u8], Status> {
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    if l == 0 {
        return Ok(&[]);
    }
    p.checked_add(l).and_then(|end| data.get(p..end)).ok_or(Status::InvalidMemoryAccess)
}

/// Runs `f` on the guest's memory and the VM state at once (no copy of the guest's bytes).
#[inline]
pub(crate) fn with<R>(c: &mut C<'_>, f: impl FnOnce(&[u8], &mut VmState) -> Result<R, Status>) -> Result<R, Status> {
    let m = memory(c)?;
    let (data, state) = m.data_and_store_mut(&mut *c);
    f(data, state)
}

/// Writes `bytes` at `ptr`.
pub(crate) fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> HostResult {
    let m = memory(c)?;
    m.write(&mut *c, ptr as u32 as usize, bytes).map_err(|_| Status::InvalidMemoryAccess)
}

/// Writes a little-endian `u32` at `ptr`.
pub(crate) fn write_u32(c: &mut C<'_>, ptr: i32, v: u32) -> HostResult {
    write(c, ptr, &v.to_le_bytes())
}

/// Hands `bytes` to the guest: allocates, copies, and stores pointer and size at `ret_ptr` and
/// `ret_len`. Empty data allocates nothing and stores 0 and 0, as Envoy does (the Rust SDK then
/// reads "no value" for buffers and properties, and an empty string for header values).
pub(crate) fn give(c: &mut C<'_>, bytes: &[u8], ret_ptr: i32, ret_len: i32) -> HostResult {
    let ptr = if bytes.is_empty() {
        0
    } else {
        let alloc = c.data().alloc.clone().ok_or(Status::InternalFailure)?;
        c.data_mut().calls.allocation(bytes.len());
        let p = alloc.call(&mut *c, bytes.len() as i32).map_err(|_| Status::InternalFailure)?;
        if p == 0 {
            return Err(Status::InternalFailure);
        }
        write(c, p, bytes)?;
        p as u32
    };
    write_u32(c, ret_ptr, ptr)?;
    write_u32(c, ret_len, bytes.len() as u32)
}

/// Fills a reused buffer with `fill` (which sees the guest's memory and the VM state), then
/// [`give`]s it. An `Err` from `fill` is returned as is, and nothing is handed over.
pub(crate) fn give_with(
    c: &mut C<'_>,
    ret_ptr: i32,
    ret_len: i32,
    fill: impl FnOnce(&[u8], &mut VmState, &mut Vec<u8>) -> HostResult,
) -> HostResult {
    let m = memory(c)?;
    let mut out = std::mem::take(&mut c.data_mut().scratch);
    out.clear();
    let filled = {
        let (data, state) = m.data_and_store_mut(&mut *c);
        fill(data, state, &mut out)
    };
    let r = filled.and_then(|()| give(c, &out, ret_ptr, ret_len));
    c.data_mut().scratch = out;
    r
}
