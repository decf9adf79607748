//! What a rule keys on, where the client address comes from, and how keys map to a bounded
//! table of shared-data slots.

use std::net::IpAddr;

use crate::cidr;

/// The request as the rate limiter sees it. The filter implements it over host calls, reading
/// each value only when a rule asks for it.
pub trait RequestView {
    /// `:path`, including the query.
    fn path(&self) -> Option<String>;
    /// `:method`.
    fn method(&self) -> Option<String>;
    /// A request header's value.
    fn header(&self, name: &str) -> Option<String>;
    /// The client address (see [`client_ip`]).
    fn client_ip(&self) -> Option<IpAddr>;
}

/// One component of a rule's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    ClientIp,
    Header(String),
    Path,
    Method,
    Constant(String),
}

impl KeyPart {
    /// The value for this request; a missing source gives the shared `\0missing` value, so that
    /// requests without the header share one bucket instead of escaping the limit.
    pub fn value(&self, req: &dyn RequestView) -> String {
        let v = match self {
            KeyPart::ClientIp => req.client_ip().map(|ip| ip.to_string()),
            KeyPart::Header(name) => req.header(name),
            KeyPart::Path => req.path().map(|p| p.split('?').next().unwrap_or_default().to_string()),
            KeyPart::Method => req.method(),
            KeyPart::Constant(c) => Some(c.clone()),
        };
        v.unwrap_or_else(|| "\0missing".into())
    }
}

/// The client address: the peer address, or with `trusted_hops = n > 0` the `n`-th address from
/// the right of `x-forwarded-for` (the one the outermost trusted proxy appended). Entries to the
/// left of it are client-controlled and never used, so a spoofed left-most entry changes nothing.
/// A list too short, or an unparsable entry at that position, falls back to the peer address.
pub fn client_ip(peer: Option<&str>, xff: Option<&str>, trusted_hops: u32) -> Option<IpAddr> {
    let peer_ip = peer.and_then(cidr::parse_peer);
    if trusted_hops == 0 {
        return peer_ip;
    }
    let Some(xff) = xff else { return peer_ip };
    // Walk from the right without collecting: a hostile header may be very long.
    xff.rsplit(',').nth(trusted_hops as usize - 1).and_then(|entry| cidr::parse_peer(entry.trim())).or(peer_ip)
}

/// The shared-data slot of a (rule, key) pair: a 64-bit FNV-1a hash reduced into `max_keys`
/// slots. Distinct keys that land in one slot share its bucket: they may be limited sooner,
/// never later, and no key's bucket is ever reset to make room.
pub fn slot_for(rule: &str, key: &str, max_keys: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule.bytes().chain([0xff]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so that the low bits (used by the modulo) depend on every input byte.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h % u64::from(max_keys.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_address_is_used_without_trusted_hops() {
        assert_eq!(client_ip(Some("10.0.0.1:555"), Some("1.2.3.4"), 0), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn trusted_hops_count_from_the_right() {
        let xff = Some("6.6.6.6, 1.1.1.1, 2.2.2.2");
        assert_eq!(client_ip(Some("10.0.0.1:1"), xff, 1), Some("2.2.2.2".parse().unwrap()));
        assert_eq!(client_ip(Some("10.0.0.1:1"), xff, 2), Some("1.1.1.1".parse().unwrap()));
    }

    #[test]
    fn a_spoofed_left_most_entry_does_not_change_the_client() {
        let honest = client_ip(Some("10.0.0.1:1"), Some("9.9.9.9"), 1);
        let spoofed = client_ip(Some("10.0.0.1:1"), Some("1.2.3.4, 9.9.9.9"), 1);
        assert_eq!(honest, spoofed);
    }

    #[test]
    fn short_or_garbage_lists_fall_back_to_the_peer() {
        let peer = Some("10.0.0.1".parse().unwrap());
        assert_eq!(client_ip(Some("10.0.0.1:1"), Some("9.9.9.9"), 2), peer);
        assert_eq!(client_ip(Some("10.0.0.1:1"), Some("not-an-ip"), 1), peer);
        assert_eq!(client_ip(Some("10.0.0.1:1"), None, 1), peer);
        let huge = "1.1.1.1,".repeat(100_000) + "2.2.2.2";
        assert_eq!(client_ip(Some("10.0.0.1:1"), Some(&huge), 1), Some("2.2.2.2".parse().unwrap()));
    }

    #[test]
    fn slots_stay_within_the_bound_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let s = slot_for("r", &format!("10.0.{}.{}", i / 256, i % 256), 1000);
            assert!(s < 1000);
            seen.insert(s);
        }
        assert!(seen.len() > 990, "{} of 1000 slots used", seen.len());
        assert_ne!(slot_for("a", "k", 1 << 20), slot_for("b", "k", 1 << 20), "rules have separate buckets");
    }

    struct Req;
    impl RequestView for Req {
        fn path(&self) -> Option<String> {
            Some("/a/b?x=1".into())
        }
        fn method(&self) -> Option<String> {
            Some("GET".into())
        }
        fn header(&self, name: &str) -> Option<String> {
            (name == "x-tenant").then(|| "acme".into())
        }
        fn client_ip(&self) -> Option<IpAddr> {
            None
        }
    }

    #[test]
    fn key_parts_read_the_request_and_missing_sources_share_a_value() {
        assert_eq!(KeyPart::Path.value(&Req), "/a/b");
        assert_eq!(KeyPart::Header("x-tenant".into()).value(&Req), "acme");
        assert_eq!(KeyPart::Header("x-other".into()).value(&Req), "\0missing");
        assert_eq!(KeyPart::ClientIp.value(&Req), "\0missing");
        assert_eq!(KeyPart::Constant("g".into()).value(&Req), "g");
    }
}
