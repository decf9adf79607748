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
use upstream_guard::hash::Secret;
use upstream_guard::slots::{seal, Holder, Place};

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

/// Defines [`KEYS_CREATED`] ahead of the first key (at configure time), as hosts that fix their
/// metrics when a configuration is created need.
pub fn define_metrics() {
    CREATED.with(|c| {
        if c.get().is_none() {
            c.set(Some(Counter::define(KEYS_CREATED)));
        }
    });
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

/// The shared-data key of the slot-hash secret ([`secret`]).
pub const SECRET_KEY: &[u8] = b"ug.secret";

thread_local! {
    /// This VM's copy of the secret, read once.
    static SECRET: Cell<Option<Secret>> = const { Cell::new(None) };
}

/// The per-process secret of the slot hash ([`upstream_guard::hash`]), the same in every worker
/// VM and in every VM after a configuration update: the first VM to need it draws 128 random bits
/// and creates [`SECRET_KEY`] (the first write of a missing key wins; a VM that loses re-reads
/// the winner's), every other VM reads it. It lives as long as Envoy's shared data, the process:
/// a restart or a hot restart draws a new one, together with new, empty tables.
///
/// If the host refuses shared data, the VM keeps a secret of its own (its tables are then its
/// own too) and says so once.
pub fn secret() -> Secret {
    SECRET.with(|c| {
        if let Some(s) = c.get() {
            return s;
        }
        let s = load_secret();
        c.set(Some(s));
        s
    })
}

fn load_secret() -> Secret {
    for _ in 0..8 {
        let (stored, cas) = match host::shared_get(SECRET_KEY) {
            Ok(Some((v, cas))) => (Secret::from_bytes(&v), cas),
            Ok(None) => (None, 0),
            Err(status) => {
                host::log(
                    host::Level::Warn,
                    &format!("upstream_guard: shared data unavailable ({status:?}): this VM keys its slots alone"),
                );
                return random_secret();
            }
        };
        if let Some(s) = stored {
            return s;
        }
        // Missing (or a damaged value, replaced under its CAS number).
        let fresh = random_secret();
        match host::shared_set(SECRET_KEY, &fresh.to_bytes(), if cas == 0 { CREATE_CAS } else { cas }) {
            Ok(()) => {
                if cas == 0 {
                    count_created();
                }
                return fresh;
            }
            Err(Status::CasMismatch) => continue,
            Err(status) => {
                host::log(
                    host::Level::Warn,
                    &format!("upstream_guard: cannot store the slot secret ({status:?}): this VM keys its slots alone"),
                );
                return fresh;
            }
        }
    }
    random_secret()
}

/// 128 bits from the host's randomness (WASI `random_get`, through the standard library's
/// randomly keyed hasher: no import of our own).
fn random_secret() -> Secret {
    use std::hash::{BuildHasher, Hasher};
    let word = |n: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.finish()
    };
    let (k0, k1) = (word(0x5eed), word(0xfeed));
    if k0 == 0 && k1 == 0 {
        Secret::new(1, 1)
    } else {
        Secret::new(k0, k1)
    }
}

/// The outcome of [`update_owned`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned<T> {
    /// The key's own state was read (and written when `f` asked).
    Done(T),
    /// Every slot the key may use belongs to another key still in use: nothing was read or
    /// written, and the stage applies its fallback.
    Full,
}

/// The slot a key will write: its shared-data key, the key's own state there (`None`: start
/// fresh) and the CAS number read.
type Target = (Vec<u8>, Option<Vec<u8>>, u32);

/// Scans the key's slots, home first: its own slot if it has one, else the first it may claim
/// (free, or another key's at rest), with the CAS number read.
fn scan(
    place: &Place,
    slot_key: &dyn Fn(u32) -> Vec<u8>,
    at_rest: &dyn Fn(&[u8]) -> bool,
) -> Result<Option<Target>, Status> {
    let mut claim: Option<(Vec<u8>, u32)> = None;
    for slot in place.candidates() {
        let key = slot_key(slot);
        let (value, cas) = host::shared_get(&key)?.unwrap_or_default();
        match Holder::of(Some(&value), place.fingerprint) {
            Holder::Mine(state) => return Ok(Some((key, Some(state.to_vec()), cas))),
            // Keys are never deleted, and a key claims the first slot it may: a free slot means
            // this key lives in none of the later ones.
            Holder::Free => return Ok(Some(claim.map_or((key, None, cas), |(k, c)| (k, None, c)))),
            Holder::Other(state) => {
                if claim.is_none() && at_rest(state) {
                    claim = Some((key, cas));
                }
            }
        }
    }
    Ok(claim.map(|(k, c)| (k, None, c)))
}

/// [`update`] for a keyed table ([`upstream_guard::slots`]): `f` gets this key's own state (or
/// `None`: start fresh) and never another key's. A key already at home costs one read and one
/// write, as a plain [`update`] does.
pub fn update_owned<T>(
    place: &Place,
    slot_key: impl Fn(u32) -> Vec<u8>,
    attempts: u32,
    at_rest: impl Fn(&[u8]) -> bool,
    mut f: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Result<Owned<T>, UpdateError> {
    for _ in 0..attempts.max(1) {
        let Some((key, state, cas)) = scan(place, &slot_key, &at_rest).map_err(UpdateError::Host)? else {
            return Ok(Owned::Full);
        };
        let (new, out) = f(state.as_deref());
        let Some(new) = new else { return Ok(Owned::Done(out)) };
        let creating = cas == 0;
        match host::shared_set(&key, &seal(place.fingerprint, &new), if creating { CREATE_CAS } else { cas }) {
            Ok(()) => {
                if creating {
                    count_created();
                }
                return Ok(Owned::Done(out));
            }
            Err(Status::CasMismatch) => continue,
            Err(other) => return Err(UpdateError::Host(other)),
        }
    }
    Err(UpdateError::Contention)
}

/// This key's own state in a keyed table, if it has one (a read only: nothing is claimed).
pub fn read_owned(place: &Place, slot_key: impl Fn(u32) -> Vec<u8>) -> Result<Option<Vec<u8>>, Status> {
    for slot in place.candidates() {
        let Some((value, _)) = host::shared_get(&slot_key(slot))? else { return Ok(None) };
        match Holder::of(Some(&value), place.fingerprint) {
            Holder::Mine(state) => return Ok(Some(state.to_vec())),
            Holder::Free => return Ok(None),
            Holder::Other(_) => {}
        }
    }
    Ok(None)
}
