//! Hashes for bounded key spaces: a keyed one for anything a client can choose, and a public one
//! for the rest.
//!
//! Shared data never forgets a key, so every table that clients can grow (a bucket per client, a
//! breaker per tenant, a token balance per user) is a fixed number of slots, and a key is hashed
//! into some of them ([`crate::slots`]). With a public hash a client could compute, offline, keys
//! that land where a chosen victim's key lands. So slots come from [`Secret::hash`], SipHash-2-4
//! under a 128-bit key the client never sees, generated per Envoy process (the filters keep it in
//! shared data so every worker VM, and every VM after a reload, agrees on it). SipHash is a
//! pseudo-random function: without the key, where a value lands cannot be told from the value.
//!
//! [`hash64`] (FNV-1a with an avalanche step) stays for what no client controls: the jitter of
//! health checks per cluster.

/// The public hash: 64-bit FNV-1a over the scope and the key with a separator between them, then
/// an avalanche step for the low bits. Never for slots a client can aim at.
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

/// The per-deployment key of the slot hash. `Debug` never shows it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Secret {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// The stored length of a secret.
    pub const LEN: usize = 16;

    /// A secret from two words (the filters draw them from the host's randomness).
    pub const fn new(k0: u64, k1: u64) -> Secret {
        Secret { k0, k1 }
    }

    /// The secret as stored in shared data: 16 bytes, little-endian.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.k0.to_le_bytes());
        out[8..].copy_from_slice(&self.k1.to_le_bytes());
        out
    }

    /// Parses [`Secret::to_bytes`]; `None` for any other length, and for the all-zero value
    /// (never generated, so a sign of a foreign or damaged value).
    pub fn from_bytes(b: &[u8]) -> Option<Secret> {
        let b: &[u8; 16] = b.try_into().ok()?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let s = Secret { k0: word(0), k1: word(8) };
        (s.k0 | s.k1 != 0).then_some(s)
    }

    /// SipHash-2-4 of `scope` (a rule, a cluster, a budget) and `key`, under this secret. The
    /// scope is length-prefixed, so no (scope, key) pair reads as another.
    pub fn hash(&self, scope: &[u8], key: &[u8]) -> u64 {
        let mut s = Sip::new(self.k0, self.k1);
        s.write(&(scope.len() as u32).to_le_bytes());
        s.write(scope);
        s.write(key);
        s.finish()
    }
}

/// SipHash-2-4 over a byte stream (Aumasson and Bernstein's specification).
struct Sip {
    v: [u64; 4],
    tail: u64,
    ntail: usize,
    length: usize,
}

impl Sip {
    fn new(k0: u64, k1: u64) -> Sip {
        Sip {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            ntail: 0,
            length: 0,
        }
    }

    fn round(&mut self) {
        let v = &mut self.v;
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.round();
        self.v[0] ^= m;
    }

    fn write(&mut self, bytes: &[u8]) {
        self.length = self.length.wrapping_add(bytes.len());
        let mut rest = bytes;
        // Fill the pending word first.
        while self.ntail > 0 && !rest.is_empty() {
            self.tail |= u64::from(rest[0]) << (8 * self.ntail);
            self.ntail += 1;
            rest = &rest[1..];
            if self.ntail == 8 {
                let m = self.tail;
                self.compress(m);
                (self.tail, self.ntail) = (0, 0);
            }
        }
        let mut words = rest.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.compress(u64::from_le_bytes(b));
        }
        for (i, b) in words.remainder().iter().enumerate() {
            self.tail |= u64::from(*b) << (8 * i);
        }
        self.ntail = words.remainder().len().max(self.ntail);
    }

    fn finish(mut self) -> u64 {
        let m = self.tail | ((self.length as u64 & 0xff) << 56);
        self.compress(m);
        self.v[2] ^= 0xff;
        for _ in 0..4 {
            self.round();
        }
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SipHash-2-4 of the raw bytes (no scope prefix), for the reference vectors.
    fn sip(k0: u64, k1: u64, parts: &[&[u8]]) -> u64 {
        let mut s = Sip::new(k0, k1);
        for p in parts {
            s.write(p);
        }
        s.finish()
    }

    const K0: u64 = 0x0706_0504_0302_0100;
    const K1: u64 = 0x0f0e_0d0c_0b0a_0908;

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // The specification's test key 00 01 .. 0f and messages 00 01 .. (n-1).
        let msg: Vec<u8> = (0u8..64).collect();
        assert_eq!(sip(K0, K1, &[&msg[..0]]), 0x726f_db47_dd0e_0e31);
        assert_eq!(sip(K0, K1, &[&msg[..1]]), 0x74f8_39c5_93dc_67fd);
        assert_eq!(sip(K0, K1, &[&msg[..15]]), 0xa129_ca61_49be_45e5);
    }

    #[test]
    #[allow(deprecated)]
    fn siphash_agrees_with_std_over_every_length_and_split() {
        use std::hash::Hasher;
        let msg: Vec<u8> = (0u8..=255).map(|i| i.wrapping_mul(37)).collect();
        for n in 0..70 {
            let mut std = std::hash::SipHasher::new_with_keys(K0, K1);
            std.write(&msg[..n]);
            let want = std.finish();
            for split in 0..=n {
                assert_eq!(sip(K0, K1, &[&msg[..split], &msg[split..n]]), want, "length {n} split at {split}");
            }
        }
    }

    #[test]
    fn the_secret_decides_where_a_key_lands() {
        let a = Secret::new(1, 2);
        let b = Secret::new(3, 4);
        assert_ne!(a.hash(b"rule", b"acme"), b.hash(b"rule", b"acme"));
        assert_eq!(a.hash(b"rule", b"acme"), a.hash(b"rule", b"acme"));
        assert_ne!(a.hash(b"ab", b""), a.hash(b"a", b"b"), "the scope is length-prefixed");
        assert_ne!(a.hash(b"r", b"caf\xe9\xff"), a.hash(b"r", b"caf"), "any bytes");
    }

    #[test]
    fn secrets_round_trip_and_foreign_values_are_refused() {
        let s = Secret::new(0x0123_4567_89ab_cdef, 42);
        assert_eq!(Secret::from_bytes(&s.to_bytes()), Some(s));
        assert_eq!(Secret::from_bytes(&[0u8; 16]), None);
        assert_eq!(Secret::from_bytes(&[1u8; 15]), None);
        assert_eq!(format!("{s:?}"), "Secret(..)", "never printed");
    }

    #[test]
    fn the_public_hash_spreads() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            seen.insert(hash64(b"r", format!("10.0.{}.{}", i / 256, i % 256).as_bytes()) % 1000);
        }
        assert!(seen.len() > 990, "{} of 1000 slots used", seen.len());
    }
}
