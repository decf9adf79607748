//! Shared data: `proxy_get_shared_data`, `proxy_set_shared_data`, and the store behind them.
//!
//! One store per host, shared by every worker (Envoy's shared data is process-wide), keyed by
//! VM id and key. Every write gets a new compare-and-swap number; a write with CAS 0, or the
//! first write of a missing key, is unconditional; any other stale CAS is `CasMismatch`. Keys
//! are never deleted, as in Envoy. Tests can inject a race: right after a read, "another
//! worker" writes the same key, so the reader's compare-and-swap fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use wasmtime::Linker;

use super::memory::{give_with, slice, with, write_u32, HostResult, C};
use crate::state::VmState;
use crate::types::Status;

/// (vm_id, key) → (value, CAS number).
type Entries = HashMap<(Vec<u8>, Vec<u8>), (Vec<u8>, u32)>;

/// The host-wide shared-data store.
#[derive(Debug, Default)]
pub(crate) struct SharedStore {
    entries: Mutex<Entries>,
    cas: AtomicU32,
    /// This many upcoming reads are each followed by another worker's write of the same key.
    pub interference: AtomicU32,
    pub gets: AtomicU64,
    pub sets: AtomicU64,
    pub cas_mismatches: AtomicU64,
}

impl SharedStore {
    fn next_cas(&self) -> u32 {
        self.cas.fetch_add(1, Ordering::SeqCst).wrapping_add(1).max(1)
    }

    /// A value and its CAS number, as a read from a guest sees it (counted, maybe raced).
    fn read(&self, vm: &[u8], key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, Status> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let mut entries = self.entries.lock().map_err(|_| Status::InternalFailure)?;
        let k = (vm.to_vec(), key.to_vec());
        let found = entries.get(&k).cloned();
        if self.interference.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            let value = found.as_ref().map(|(v, _)| v.clone()).unwrap_or_default();
            entries.insert(k, (value, self.next_cas()));
        }
        Ok(found)
    }

    /// A write from a guest.
    fn write(&self, vm: &[u8], key: &[u8], value: &[u8], cas: u32) -> HostResult {
        self.sets.fetch_add(1, Ordering::SeqCst);
        let mut entries = self.entries.lock().map_err(|_| Status::InternalFailure)?;
        let k = (vm.to_vec(), key.to_vec());
        if let Some((_, current)) = entries.get(&k) {
            if cas != 0 && cas != *current {
                self.cas_mismatches.fetch_add(1, Ordering::SeqCst);
                return Err(Status::CasMismatch);
            }
        }
        entries.insert(k, (value.to_vec(), self.next_cas()));
        Ok(())
    }

    /// A value and its CAS number, for the test (not counted).
    pub fn get(&self, vm: &[u8], key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.entries.lock().ok()?.get(&(vm.to_vec(), key.to_vec())).cloned()
    }

    /// Sets a value from the test, with a new CAS number (not counted).
    pub fn set(&self, vm: &[u8], key: &[u8], value: &[u8]) {
        let cas = self.next_cas();
        if let Ok(mut e) = self.entries.lock() {
            e.insert((vm.to_vec(), key.to_vec()), (value.to_vec(), cas));
        }
    }

    /// Every key of `vm` with its value, sorted by key.
    pub fn entries(&self, vm: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = self
            .entries
            .lock()
            .map(|d| {
                d.iter().filter(|((v, _), _)| v == vm).map(|((_, k), (value, _))| (k.clone(), value.clone())).collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// How many keys `vm` has.
    pub fn keys(&self, vm: &[u8]) -> usize {
        self.entries.lock().map(|d| d.keys().filter(|(v, _)| v == vm).count()).unwrap_or(0)
    }
}

fn proxy_get_shared_data(c: &mut C<'_>, kp: i32, kl: i32, ret_ptr: i32, ret_len: i32, ret_cas: i32) -> HostResult {
    let mut cas = 0;
    give_with(c, ret_ptr, ret_len, |data, s, out| {
        let (value, n) = s.shared.data.read(&s.vm_id, slice(data, kp, kl)?)?.ok_or(Status::NotFound)?;
        out.extend_from_slice(&value);
        cas = n;
        Ok(())
    })?;
    write_u32(c, ret_cas, cas)
}

fn proxy_set_shared_data(c: &mut C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32) -> HostResult {
    with(c, |data, s| s.shared.data.write(&s.vm_id, slice(data, kp, kl)?, slice(data, vp, vl)?, cas as u32))
}

/// Adds this area's host functions to `linker`.
pub fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    host_fn!(l, ProxyGetSharedData, proxy_get_shared_data, (kp: i32, kl: i32, ret_ptr: i32, ret_len: i32, ret_cas: i32));
    host_fn!(l, ProxySetSharedData, proxy_set_shared_data, (kp: i32, kl: i32, vp: i32, vl: i32, cas: i32));
    Ok(())
}
