//! One hash for every bounded key space: rate-limit buckets, per-header breakers, check jitter.
//!
//! Shared data never forgets a key, so every table that clients can grow (a bucket per client, a
//! breaker per tenant) is a fixed number of slots, and a key is hashed into one of them. The
//! hash must spread well over few slots and depend on every byte: 64-bit FNV-1a over the scope
//! and the key with a separator between them, then an avalanche step for the low bits.

/// The slot (`0..slots`) of `key` within `scope` (a rule name, a cluster). Distinct keys that
/// land in one slot share it: for a limit that means limited sooner, never later.
pub fn slot_for(scope: &[u8], key: &[u8], slots: u32) -> u32 {
    (hash64(scope, key) % u64::from(slots.max(1))) as u32
}

/// The full 64-bit hash behind [`slot_for`].
pub fn hash64(scope: &[u8], key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in scope.iter().chain([0xffu8].iter()).chain(key.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stay_within_the_bound_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let s = slot_for(b"r", format!("10.0.{}.{}", i / 256, i % 256).as_bytes(), 1000);
            assert!(s < 1000);
            seen.insert(s);
        }
        assert!(seen.len() > 990, "{} of 1000 slots used", seen.len());
    }

    #[test]
    fn scopes_separate_equal_keys() {
        assert_ne!(slot_for(b"a", b"k", 1 << 20), slot_for(b"b", b"k", 1 << 20));
        assert_ne!(slot_for(b"ab", b"", 1 << 20), slot_for(b"a", b"b", 1 << 20), "the separator matters");
    }

    #[test]
    fn non_utf8_keys_hash_like_any_bytes() {
        assert_ne!(slot_for(b"r", b"caf\xe9\xff", 1 << 20), slot_for(b"r", b"caf", 1 << 20));
        assert_eq!(slot_for(b"r", b"\xff", 7), slot_for(b"r", b"\xff", 7));
    }

    #[test]
    fn zero_slots_behave_as_one() {
        assert_eq!(slot_for(b"r", b"k", 0), 0);
    }
}
