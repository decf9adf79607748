//! Shared data (one store for all of Envoy's worker VMs) updated with compare-and-swap.
//!
//! Envoy's semantics shape this loop: a read returns the value with its CAS number; a write with
//! a stale CAS fails and we retry; a write with CAS 0 is unconditional, so we never send 0; and
//! the first write of a missing key ignores the CAS altogether. For a missing key we therefore
//! write with [`CREATE_CAS`], a number no existing key is expected to hold: if another worker
//! created the key in the meantime, our write is refused and we retry on its value instead of
//! overwriting it. Keys are never deleted, so every caller must bound its key space.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// The CAS sent when creating a key. Envoy's CAS numbers count up from 1 across all writes; a key
/// holding exactly this number when we race to create it is the only way to lose an update.
pub const CREATE_CAS: u32 = u32::MAX;

/// Why an update did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    /// Every attempt lost a race with another worker.
    Contention,
    /// The host refused the call.
    Host(Status),
}

/// Reads `key`, lets `f` compute a new value from the current one (`None` when missing), and
/// writes it back if nobody else wrote in between; retries up to `attempts` times in all.
/// `f` returns `(Some(new value), result)` to write, or `(None, result)` to leave the value as it is.
pub fn update<T>(
    key: &str,
    attempts: u32,
    mut f: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Result<T, UpdateError> {
    for _ in 0..attempts.max(1) {
        let (value, cas) = hostcalls::get_shared_data(key).map_err(UpdateError::Host)?;
        let (new, out) = f(value.as_deref().filter(|v| !v.is_empty()));
        let Some(new) = new else { return Ok(out) };
        let cas = cas.filter(|c| *c != 0).unwrap_or(CREATE_CAS);
        match hostcalls::set_shared_data(key, Some(&new), Some(cas)) {
            Ok(()) => return Ok(out),
            Err(Status::CasMismatch) => continue,
            Err(other) => return Err(UpdateError::Host(other)),
        }
    }
    Err(UpdateError::Contention)
}
