//! Shared data (one store for all of Envoy's worker VMs): the compare-and-swap loop, and
//! version-checked local copies that make the common case cheap.
//!
//! Envoy's semantics shape both: a read returns the value with its CAS number; a write with a
//! stale CAS fails and we retry; a write with CAS 0 is unconditional, so we never send 0 for an
//! update; and the first write of a missing key ignores the CAS altogether. For a missing key we
//! therefore write with [`CREATE_CAS`], a number no existing key is expected to hold: if another
//! worker created the key in the meantime, our write is refused and we retry on its value instead
//! of overwriting it. Keys are never deleted, so every caller bounds its key space.

use std::cell::{Cell, RefCell};

use crate::abi::Status;
use crate::host;
use crate::metrics::Counter;

/// The CAS sent when creating a key.
pub const CREATE_CAS: u32 = u32::MAX;

/// The counter of keys [`update`] created: as keys are never deleted, the number of keys the
/// module holds in shared data (plus the few fixed ones, such as [`Epoch::KEY`]). A soak watches
/// it stay within the configured bounds.
pub const KEYS_CREATED: &str = "upstream_guard.shared_data.keys_created";

thread_local! {
    /// [`KEYS_CREATED`], defined on the first key this VM creates.
    static CREATED: Cell<Option<Counter>> = const { Cell::new(None) };
}

/// Counts one key created (the write that created it won, so each key counts once over all
/// workers: a second creator's write is refused and it retries on the first one's value).
fn count_created() {
    CREATED.with(|c| {
        let counter = c.get().unwrap_or_else(|| Counter::define(KEYS_CREATED));
        c.set(Some(counter));
        counter.inc();
    });
}

/// Why an update did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    /// Every attempt lost a race with another worker.
    Contention,
    /// The host refused the call.
    Host(Status),
}

/// Reads `key`, lets `f` compute a new value from the current one (`None` when missing or empty),
/// and writes it back if nobody else wrote in between; retries up to `attempts` times in all.
/// `f` returns `(Some(new value), result)` to write, or `(None, result)` to leave it as it is.
pub fn update<T>(
    key: &[u8],
    attempts: u32,
    mut f: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Result<T, UpdateError> {
    for _ in 0..attempts.max(1) {
        let current = host::shared_get(key).map_err(UpdateError::Host)?;
        let (value, cas) = match &current {
            Some((v, cas)) => (Some(v.as_slice()).filter(|v| !v.is_empty()), *cas),
            None => (None, 0),
        };
        let (new, out) = f(value);
        let Some(new) = new else { return Ok(out) };
        let creating = cas == 0;
        let cas = if creating { CREATE_CAS } else { cas };
        match host::shared_set(key, &new, cas) {
            Ok(()) => {
                if creating {
                    count_created();
                }
                return Ok(out);
            }
            Err(Status::CasMismatch) => continue,
            Err(other) => return Err(UpdateError::Host(other)),
        }
    }
    Err(UpdateError::Contention)
}

/// The module's change counter: the CAS number of an empty shared-data value under
/// [`Epoch::KEY`].
///
/// Reading an empty value costs no allocation in the guest (the host returns no data, only the
/// CAS number): about a quarter of reading a real value in Envoy. Every stage of a module that
/// keeps a local copy of shared state ([`Snapshot`]) bumps this one counter after it changes
/// the state, and a stream reads it at most once per callback ([`crate::Cx::epoch`]), so a
/// module with several such stages still pays one read.
#[derive(Debug, Clone, Copy)]
pub struct Epoch;

impl Epoch {
    /// The shared-data key.
    pub const KEY: &'static [u8] = b"ug.v";

    /// The current number (0 while the key does not exist or the host cannot tell).
    pub fn read() -> u32 {
        match host::shared_get(Self::KEY) {
            Ok(Some((_, cas))) => cas,
            _ => 0,
        }
    }

    /// Announces a change.
    pub fn bump() {
        let _ = host::shared_set(Self::KEY, &[], 0);
    }

    /// Creates the key if it is missing (a missing key would make every reader re-read its state
    /// on every use).
    pub fn ensure() {
        if Self::read() == 0 {
            Self::bump();
        }
    }
}

/// A worker-local copy of some shared state, re-read only when the [`Epoch`] moved.
///
/// Ordering makes this safe without locks: writers change the state first and bump the epoch
/// after, so a reader that sees an epoch number holds state at least as new as that number. The
/// worst case is one needless re-read.
#[derive(Debug)]
pub struct Snapshot<T> {
    seen: Cell<Option<u32>>,
    value: RefCell<T>,
}

impl<T: Default> Default for Snapshot<T> {
    fn default() -> Self {
        Snapshot::new()
    }
}

impl<T: Default> Snapshot<T> {
    /// An empty copy (read on first use). Makes sure the epoch key exists.
    pub fn new() -> Snapshot<T> {
        Epoch::ensure();
        Snapshot { seen: Cell::new(None), value: RefCell::new(T::default()) }
    }

    /// Brings the copy up to date with `epoch` (`reload` re-reads the state when it moved, or
    /// when no epoch exists), then runs `f` on it (which may fill in parts of the copy it reads
    /// lazily, such as one breaker of many).
    pub fn with<R>(&self, epoch: u32, reload: impl FnOnce(&mut T), f: impl FnOnce(&mut T) -> R) -> R {
        match self.value.try_borrow_mut() {
            Ok(mut v) => {
                if self.seen.get() != Some(epoch) || epoch == 0 {
                    reload(&mut v);
                    self.seen.set(Some(epoch));
                }
                f(&mut v)
            }
            // Only reachable if `f` of an outer call re-entered: answer from a fresh read.
            Err(_) => {
                let mut fresh = T::default();
                reload(&mut fresh);
                f(&mut fresh)
            }
        }
    }

    /// Records that this worker changed the state: bumps the epoch so every worker (this one
    /// included) re-reads on next use.
    pub fn changed(&self) {
        Epoch::bump();
        self.seen.set(None);
    }
}
