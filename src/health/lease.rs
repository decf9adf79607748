//! The prober lease: which worker runs active health checks.

/// Who holds the lease, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub holder: u64,
    pub expires_at: u64,
}

impl Lease {
    /// Decides whether worker `me` holds the lease at `now`, given the stored lease. Returns the
    /// lease to write (a claim or a renewal) and whether `me` is the holder once it is written.
    /// A live lease of another worker is left alone; an expired one is taken over.
    pub fn claim(stored: Option<Lease>, me: u64, now: u64, ttl_ns: u64) -> (Option<Lease>, bool) {
        match stored {
            Some(l) if l.holder != me && now < l.expires_at => (None, false),
            _ => (Some(Lease { holder: me, expires_at: now.saturating_add(ttl_ns) }), true),
        }
    }

    /// 16 bytes, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.holder.to_le_bytes().to_vec();
        out.extend_from_slice(&self.expires_at.to_le_bytes());
        out
    }

    /// Parses [`Lease::encode`]'s output.
    pub fn decode(b: &[u8]) -> Option<Lease> {
        if b.len() != 16 {
            return None;
        }
        Some(Lease {
            holder: u64::from_le_bytes(b[..8].try_into().ok()?),
            expires_at: u64::from_le_bytes(b[8..].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_lease_is_claimed_and_renewed_by_its_holder() {
        let (w, mine) = Lease::claim(None, 7, 100, 50);
        assert_eq!((w, mine), (Some(Lease { holder: 7, expires_at: 150 }), true));
        let (w, mine) = Lease::claim(w, 7, 120, 50);
        assert_eq!((w, mine), (Some(Lease { holder: 7, expires_at: 170 }), true));
    }

    #[test]
    fn a_live_lease_of_another_worker_is_respected() {
        let held = Some(Lease { holder: 1, expires_at: 200 });
        assert_eq!(Lease::claim(held, 2, 199, 50), (None, false));
    }

    #[test]
    fn an_expired_lease_is_taken_over() {
        let held = Some(Lease { holder: 1, expires_at: 200 });
        assert_eq!(Lease::claim(held, 2, 200, 50), (Some(Lease { holder: 2, expires_at: 250 }), true));
    }

    #[test]
    fn lease_round_trips() {
        let l = Lease { holder: u64::MAX, expires_at: 3 };
        assert_eq!(Lease::decode(&l.encode()), Some(l));
        assert_eq!(Lease::decode(b"short"), None);
    }
}
