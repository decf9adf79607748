//! Owned slots: a bounded table in which two keys never share state.
//!
//! Every per-key state (a rate-limit bucket, a per-tenant breaker, a token balance) lives in a
//! table of a fixed number of slots, because shared data never forgets a key. A key may live in
//! any of [`PROBES`] slots, found by the keyed hash ([`crate::hash::Secret`]), and a slot records
//! which key owns it: the key's 64-bit fingerprint from the same keyed hash, stored before the
//! state ([`seal`]). So:
//!
//! - a key only ever reads or changes the state of a slot it owns ([`Holder::Mine`]);
//! - a slot held by another key is taken over only once that key's state is back at rest (a full
//!   bucket, a closed breaker with nothing counted, a full balance): the newcomer then starts from
//!   a fresh state, exactly what the old owner would have seen;
//! - when every slot a key may use is held by other keys still in use, the key has no state
//!   ([`Place`] says so) and the stage applies its documented fallback, counted in a metric.
//!
//! Without the secret, nobody can pick values that land on a victim's slots; and even values
//! that do (a table too small, or an insider) cannot touch the victim's state.

use crate::hash::Secret;

/// The slots one key may use: its home slot and the next ones, wrapping within its share.
pub const PROBES: u32 = 4;

/// Where a key may live within a share of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The key's fingerprint, stored in the slot it owns.
    pub fingerprint: u64,
    /// The share of the table: slots `base .. base + len`.
    base: u32,
    len: u32,
    /// The home slot, relative to `base`.
    home: u32,
}

impl Place {
    /// The place of `key` within `scope` (a rule, a cluster, a budget) in the share
    /// `base .. base + len` of a table.
    pub fn of(secret: &Secret, scope: &[u8], key: &[u8], base: u32, len: u32) -> Place {
        let h = secret.hash(scope, key);
        let len = len.max(1);
        // Never 0: 0 marks nothing in a stored slot, but keep the space whole anyway.
        let fingerprint = h | 1;
        Place { fingerprint, base, len, home: ((h >> 1) % u64::from(len)) as u32 }
    }

    /// The key's home slot (a global rule's memo of a refusal lives there alone: it records its
    /// key's fingerprint, so a memo of another key is never taken for this one's).
    pub fn home(&self) -> u32 {
        self.base + self.home
    }

    /// The slots the key may use, home first (fewer than [`PROBES`] in a smaller share).
    pub fn candidates(&self) -> impl Iterator<Item = u32> + '_ {
        (0..PROBES.min(self.len)).map(move |i| self.base + (self.home + i) % self.len)
    }
}

/// The stored value of a slot owned by `fingerprint`: the fingerprint, then the state.
pub fn seal(fingerprint: u64, state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + state.len());
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out.extend_from_slice(state);
    out
}

/// Who holds a slot, seen by one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder<'a> {
    /// Nobody (missing, empty, or a value this version cannot read): free to take.
    Free,
    /// This key: its state.
    Mine(&'a [u8]),
    /// Another key, with its state (free to take once that state is at rest).
    Other(&'a [u8]),
}

impl<'a> Holder<'a> {
    /// Reads a stored slot value for the key with `fingerprint`.
    pub fn of(stored: Option<&'a [u8]>, fingerprint: u64) -> Holder<'a> {
        let Some(v) = stored.filter(|v| v.len() > 8) else { return Holder::Free };
        let (fp, state) = v.split_at(8);
        let mut w = [0u8; 8];
        w.copy_from_slice(fp);
        match u64::from_le_bytes(w) {
            0 => Holder::Free,
            f if f == fingerprint => Holder::Mine(state),
            _ => Holder::Other(state),
        }
    }

    /// The state this key may start from in this slot: its own, or none (a fresh state) when the
    /// slot is free or its owner's state is at rest; `Err(())` when another key still uses it.
    pub fn claim(self, at_rest: impl FnOnce(&[u8]) -> bool) -> Result<Option<&'a [u8]>, Held> {
        match self {
            Holder::Mine(s) => Ok(Some(s)),
            Holder::Free => Ok(None),
            Holder::Other(s) if at_rest(s) => Ok(None),
            Holder::Other(_) => Err(Held),
        }
    }
}

/// A slot another key still uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held;

#[cfg(test)]
mod tests {
    use super::*;

    const S: Secret = Secret::new(7, 11);

    #[test]
    fn candidates_stay_in_the_share_and_wrap() {
        for k in 0..500u32 {
            let p = Place::of(&S, b"r", &k.to_le_bytes(), 100, 10);
            let c: Vec<u32> = p.candidates().collect();
            assert_eq!(c.len(), 4);
            assert!(c.iter().all(|s| (100..110).contains(s)), "{c:?}");
            let mut d = c.clone();
            d.dedup();
            assert_eq!(d.len(), 4, "distinct");
        }
        let tiny = Place::of(&S, b"r", b"k", 5, 2);
        assert_eq!(tiny.candidates().count(), 2);
        assert_eq!(Place::of(&S, b"r", b"k", 0, 0).candidates().collect::<Vec<_>>(), [0], "0 behaves as 1");
    }

    #[test]
    fn a_slot_knows_its_owner() {
        let a = Place::of(&S, b"r", b"acme", 0, 1);
        let b = Place::of(&S, b"r", b"evil", 0, 1);
        assert_eq!(a.candidates().collect::<Vec<_>>(), b.candidates().collect::<Vec<_>>(), "one slot: they collide");
        assert_ne!(a.fingerprint, b.fingerprint);
        let stored = seal(a.fingerprint, b"state");
        assert_eq!(Holder::of(Some(&stored), a.fingerprint), Holder::Mine(b"state"));
        assert_eq!(Holder::of(Some(&stored), b.fingerprint), Holder::Other(b"state"));
        assert_eq!(Holder::of(None, a.fingerprint), Holder::Free);
        assert_eq!(Holder::of(Some(b"short"), a.fingerprint), Holder::Free, "a foreign value is free");
    }

    #[test]
    fn another_key_never_gets_the_owners_state() {
        let (a, b) = (1u64 << 3 | 1, 1u64 << 5 | 1);
        let stored = seal(a, b"busy");
        let live = |_: &[u8]| false;
        let rest = |_: &[u8]| true;
        assert_eq!(Holder::of(Some(&stored), b).claim(live), Err(Held));
        assert_eq!(Holder::of(Some(&stored), b).claim(rest), Ok(None), "at rest: a fresh state, never the owner's");
        assert_eq!(Holder::of(Some(&stored), a).claim(live), Ok(Some(&b"busy"[..])));
    }

    #[test]
    fn without_the_secret_where_a_key_lands_is_unknown() {
        // The same values under two secrets: homes agree about as often as chance says.
        let other = Secret::new(8, 11);
        let same = (0..10_000u32)
            .filter(|k| {
                let k = k.to_le_bytes();
                Place::of(&S, b"r", &k, 0, 100).home == Place::of(&other, b"r", &k, 0, 100).home
            })
            .count();
        assert!(same < 200, "{same} of 10000 agree (chance: 100)");
    }
}
