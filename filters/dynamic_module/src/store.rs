//! The cross-worker store in process memory, with the contract shared data has in a `.wasm`.
//!
//! Every worker thread of one Envoy process sees the same store. The contract is the one the
//! stages were written for: a value carries a version (never 0), a write names the version it
//! read and fails with [`Status::CasMismatch`] when another write came first; a write of a
//! missing key, or with version 0, always lands; keys are never deleted (each stage bounds its
//! own key space). Sharded by key hash, so workers that touch different keys rarely meet on a
//! lock; a lock is held only for one map operation, never across a call into Envoy.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

use upstream_guard_glue::Status;

const SHARDS: usize = 64;

/// FNV-1a: keys are the module's own (hashed client keys, fixed names), not chosen by clients
/// as such, and the shard only spreads lock contention.
#[derive(Default, Clone, Copy)]
struct Fnv;

struct FnvHasher(u64);

impl Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl BuildHasher for Fnv {
    type Hasher = FnvHasher;
    fn build_hasher(&self) -> FnvHasher {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

type Shard = Mutex<HashMap<Box<[u8]>, (Vec<u8>, u32), Fnv>>;

/// The store.
pub struct Store {
    shards: Vec<Shard>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::with_hasher(Fnv))).collect() }
    }

    fn shard(&self, key: &[u8]) -> &Shard {
        let i = (Fnv.hash_one(key) as usize) % SHARDS;
        &self.shards[i]
    }

    /// A value and its version; `None` for a missing key.
    pub fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, Status> {
        // A poisoned lock means a panic under it, which the map operations below cannot cause;
        // the map is still consistent (each operation is one insert or one lookup).
        let shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        Ok(shard.get(key).map(|(v, cas)| (v.clone(), *cas)))
    }

    /// Writes `value` if the key's version is still `cas` (or `cas` is 0, or the key is missing).
    pub fn set(&self, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        match shard.get_mut(key) {
            Some((v, version)) => {
                if cas != 0 && cas != *version {
                    return Err(Status::CasMismatch);
                }
                v.clear();
                v.extend_from_slice(value);
                *version = version.wrapping_add(1).max(1);
            }
            None => {
                shard.insert(key.into(), (value.to_vec(), 1));
            }
        }
        Ok(())
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    /// True when no key was ever written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_version_loses_and_a_missing_key_always_lands() {
        let s = Store::new();
        assert_eq!(s.get(b"k"), Ok(None));
        s.set(b"k", b"a", 77).unwrap();
        let (v, cas) = s.get(b"k").unwrap().unwrap();
        assert_eq!((v.as_slice(), cas), (&b"a"[..], 1));
        s.set(b"k", b"b", cas).unwrap();
        assert_eq!(s.set(b"k", b"c", cas), Err(Status::CasMismatch));
        assert_eq!(s.get(b"k").unwrap().unwrap(), (b"b".to_vec(), 2));
        s.set(b"k", b"d", 0).unwrap();
        assert_eq!(s.get(b"k").unwrap().unwrap().0, b"d".to_vec());
    }

    #[test]
    fn concurrent_compare_and_swap_loses_no_increment() {
        let s = std::sync::Arc::new(Store::new());
        s.set(b"n", &0u64.to_le_bytes(), 0).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        loop {
                            let (v, cas) = s.get(b"n").unwrap().unwrap();
                            let n = u64::from_le_bytes(v.try_into().unwrap());
                            if s.set(b"n", &(n + 1).to_le_bytes(), cas).is_ok() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (v, _) = s.get(b"n").unwrap().unwrap();
        assert_eq!(u64::from_le_bytes(v.try_into().unwrap()), 4000);
    }
}
