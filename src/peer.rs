//! Who is the client, and how much of that can the client itself write?
//!
//! Envoy's idea of the client is the `source.address` property. With the connection manager's
//! default (`use_remote_address: false`) Envoy takes it from the **last `x-forwarded-for` entry**,
//! a header the client writes, and reports it with port 0; with `use_remote_address: true` it is
//! the real peer, with its port. A real peer always has a port, so port 0 is the tell.
//!
//! Two consequences, kept here so every policy applies them alike:
//! - **Trust** (who sees upstream addresses, who may read the health status) is never granted to
//!   a header-derived address unless the operator says the header is trustworthy
//!   ([`Trust::forwarded`], the `trust_x_forwarded_for` field).
//! - **Keys** (the rate limiter's `client_ip`) follow Envoy, as its own `local_ratelimit` does,
//!   but report when the address came from the header ([`ClientAddr::Forwarded`]) and can refuse
//!   to key on it ([`client_addr`]'s `require_peer`).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::cidr::{self, Cidr};

/// The client address as Envoy reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The address.
    pub ip: IpAddr,
    /// The port; 0 when Envoy derived the address from `x-forwarded-for` (or the host gave none).
    pub port: u16,
}

impl Peer {
    /// Parses `1.2.3.4:5678`, `[::1]:80` or a bare address (port 0). Any other bytes (not UTF-8,
    /// not an address) are `None`.
    pub fn parse(raw: &[u8]) -> Option<Peer> {
        if let Some(p) = parse_v4_with_port(raw) {
            return Some(p);
        }
        let s = std::str::from_utf8(raw).ok()?.trim();
        if let Ok(a) = SocketAddr::from_str(s) {
            return Some(Peer { ip: a.ip(), port: a.port() });
        }
        IpAddr::from_str(s).ok().map(|ip| Peer { ip, port: 0 })
    }

    /// True when the address did not come from the connection: Envoy took it from a header the
    /// client can write.
    pub fn forwarded(&self) -> bool {
        self.port == 0
    }
}

/// `a.b.c.d:port`, the form Envoy reports for nearly every IPv4 client, parsed in one pass (this
/// runs on every request that keys on the client); anything else falls back to the general parser.
fn parse_v4_with_port(raw: &[u8]) -> Option<Peer> {
    let mut octets = [0u8; 4];
    let (mut part, mut value, mut digits) = (0usize, 0u32, 0u32);
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'0'..=b'9' => {
                // No leading zeros (std refuses them too: "010" is not 10 or 8).
                if digits == 1 && value == 0 {
                    return None;
                }
                value = value * 10 + u32::from(b - b'0');
                digits += 1;
                if digits > 3 || value > 255 {
                    return None;
                }
            }
            b'.' if part < 3 && digits > 0 => {
                octets[part] = value as u8;
                (part, value, digits) = (part + 1, 0, 0);
            }
            b':' if part == 3 && digits > 0 => {
                octets[3] = value as u8;
                let port = raw.get(i + 1..)?;
                if port.is_empty()
                    || port.len() > 5
                    || !port.iter().all(u8::is_ascii_digit)
                    || (port.len() > 1 && port[0] == b'0')
                {
                    return None;
                }
                let port = port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
                let port = u16::try_from(port).ok()?;
                return Some(Peer { ip: IpAddr::from(octets), port });
            }
            _ => return None,
        }
        i += 1;
    }
    None
}

/// Which clients are trusted with upstream details.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// Trusted address blocks.
    pub cidrs: Vec<Cidr>,
    /// Also trust addresses Envoy took from `x-forwarded-for`: only safe behind a proxy that
    /// overwrites the header.
    pub forwarded: bool,
}

impl Trust {
    /// True when `peer` is inside a trusted block and came from the connection (or header-derived
    /// addresses are explicitly trusted).
    pub fn trusts(&self, peer: Option<Peer>) -> bool {
        match peer {
            Some(p) if !self.cidrs.is_empty() => {
                (self.forwarded || !p.forwarded()) && cidr::any_contains(&self.cidrs, p.ip)
            }
            _ => false,
        }
    }

    /// True when no address can ever be trusted (no blocks configured): callers skip reading the
    /// address at all.
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }
}

/// The client address a rate limit keys on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddr {
    /// The real peer (from the connection).
    Peer(IpAddr),
    /// An address Envoy took from `x-forwarded-for`: as Envoy sees the client, but the client
    /// could have written it. Count it and warn: the listener should set `use_remote_address`.
    Forwarded(IpAddr),
    /// The `trusted_hops`-th entry from the right of the forwarded-for header.
    Hop(IpAddr),
    /// Header-derived and refused (`require_peer`): such requests share one bucket.
    Shared,
    /// No address at all (a host without `source.address`).
    Missing,
}

/// How much of a client address identifies the client: the prefix lengths a key keeps.
///
/// An IPv6 host usually holds a whole /64 (SLAAC, privacy addresses), so keying each address apart
/// would give one host 2^64 buckets; operators key IPv6 by prefix for that reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefixes {
    /// Bits of an IPv4 address kept (0–32).
    pub v4: u8,
    /// Bits of an IPv6 address kept (0–128).
    pub v6: u8,
}

impl Default for Prefixes {
    fn default() -> Self {
        Prefixes { v4: 32, v6: 64 }
    }
}

impl Prefixes {
    /// `ip` with the bits past its prefix cleared, and the prefix length.
    pub fn mask(&self, ip: IpAddr) -> (IpAddr, u8) {
        match ip {
            IpAddr::V4(a) => {
                let len = self.v4.min(32);
                let bits = u32::from(a) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                (IpAddr::V4(bits.into()), len)
            }
            IpAddr::V6(a) => {
                // An IPv4-mapped address (::ffff:a.b.c.d) is an IPv4 client.
                if let Some(v4) = a.to_ipv4_mapped() {
                    return self.mask(IpAddr::V4(v4));
                }
                let len = self.v6.min(128);
                let bits = u128::from(a) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                (IpAddr::V6(bits.into()), len)
            }
        }
    }
}

impl ClientAddr {
    /// The address, if there is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            ClientAddr::Peer(ip) | ClientAddr::Forwarded(ip) | ClientAddr::Hop(ip) => Some(*ip),
            ClientAddr::Shared | ClientAddr::Missing => None,
        }
    }

    /// The key value: the address's octets within `prefixes` and the prefix length, or a fixed
    /// value shared by every request of its kind (whose lengths, 9 and 10 bytes, no address key
    /// has).
    pub fn key(&self, prefixes: Prefixes) -> Vec<u8> {
        match self.ip().map(|ip| prefixes.mask(ip)) {
            Some((IpAddr::V4(a), len)) => [&a.octets()[..], &[len]].concat(),
            Some((IpAddr::V6(a), len)) => [&a.octets()[..], &[len]].concat(),
            None if *self == ClientAddr::Shared => b"\0forwarded".to_vec(),
            None => b"\0missing".to_vec(),
        }
    }

    /// The key as text, for a rate limit service descriptor: the address itself when the prefix
    /// is the whole address (`10.0.0.1`, as Envoy's `remote_address` action sends it), else the
    /// prefix in CIDR notation (`2001:db8:1:2::/64`), so the service counts what we count.
    pub fn text(&self, prefixes: Prefixes) -> Option<String> {
        let (ip, len) = prefixes.mask(self.ip()?);
        let full = if ip.is_ipv4() { 32 } else { 128 };
        Some(if len == full { ip.to_string() } else { format!("{ip}/{len}") })
    }

    /// True when the address was derived from a header the client can write.
    pub fn from_client_header(&self) -> bool {
        matches!(self, ClientAddr::Forwarded(_) | ClientAddr::Shared)
    }
}

/// The address a limit keys on.
///
/// - `trusted_hops = 0`: Envoy's `source.address`, as `local_ratelimit` uses it.
/// - `trusted_hops = n > 0`: the `n`-th entry from the right of `xff` (the one the outermost
///   trusted proxy appended); entries to its left are the client's own and never used. A list
///   too short, or an entry that is not an address (any bytes), falls back to the peer.
/// - `require_peer`: a header-derived `source.address` is never used: [`ClientAddr::Shared`].
pub fn client_addr(peer: Option<Peer>, xff: Option<&[u8]>, trusted_hops: u32, require_peer: bool) -> ClientAddr {
    if require_peer && peer.is_some_and(|p| p.forwarded()) {
        return ClientAddr::Shared;
    }
    if trusted_hops > 0 {
        let hop = xff.and_then(|x| {
            // Walk from the right without collecting: a hostile header may be very long.
            x.rsplit(|b| *b == b',').nth(trusted_hops as usize - 1).and_then(|entry| {
                let entry = std::str::from_utf8(entry).ok()?.trim();
                IpAddr::from_str(entry).ok().or_else(|| SocketAddr::from_str(entry).ok().map(|a| a.ip()))
            })
        });
        if let Some(ip) = hop {
            return ClientAddr::Hop(ip);
        }
    }
    match peer {
        Some(p) if p.forwarded() => ClientAddr::Forwarded(p.ip),
        Some(p) => ClientAddr::Peer(p.ip),
        None => ClientAddr::Missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> Option<Peer> {
        Peer::parse(s.as_bytes())
    }

    fn trust(cidrs: &[&str], forwarded: bool) -> Trust {
        Trust { cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(), forwarded }
    }

    #[test]
    fn peers_parse_in_envoy_formats_and_port_zero_means_forwarded() {
        assert_eq!(peer("10.0.0.1:5555"), Some(Peer { ip: "10.0.0.1".parse().unwrap(), port: 5555 }));
        assert_eq!(peer("[::1]:80").map(|p| p.port), Some(80));
        assert!(peer("10.9.9.9:0").unwrap().forwarded());
        assert!(peer("10.9.9.9").unwrap().forwarded(), "no port: not a connection");
        assert!(!peer("10.9.9.9:1").unwrap().forwarded());
        assert_eq!(Peer::parse(b"10.0.0.1\xff:1"), None);
        assert_eq!(peer("nonsense"), None);
    }

    #[test]
    fn the_fast_ipv4_path_agrees_with_the_general_parser() {
        for s in [
            "1.2.3.4:80",
            "255.255.255.255:65535",
            "0.0.0.0:0",
            "10.9.9.9:0",
            "01.2.3.4:80",
            "1.2.3.4:080",
            "1.2.3.4:65536",
            "1.2.3:80",
            "1.2.3.4.5:80",
            "1.2.3.4:",
            "256.1.1.1:1",
            "1..2.3:4",
            "1.2.3.4:8a",
        ] {
            let general = SocketAddr::from_str(s).ok().map(|a| Peer { ip: a.ip(), port: a.port() });
            assert_eq!(parse_v4_with_port(s.as_bytes()).or(general), general, "{s}");
            if general.is_none() {
                assert_eq!(parse_v4_with_port(s.as_bytes()), None, "{s}");
            }
        }
    }

    #[test]
    fn a_header_derived_address_is_not_trusted_by_default() {
        let t = trust(&["10.0.0.0/8"], false);
        assert!(t.trusts(peer("10.1.2.3:4000")));
        assert!(!t.trusts(peer("10.1.2.3:0")), "x-forwarded-for: 10.1.2.3 written by the client");
        assert!(!t.trusts(peer("11.1.2.3:4000")));
        assert!(!t.trusts(None));
    }

    #[test]
    fn the_operator_can_trust_forwarded_addresses_explicitly() {
        assert!(trust(&["10.0.0.0/8"], true).trusts(peer("10.1.2.3:0")));
        assert!(!trust(&[], true).trusts(peer("10.1.2.3:0")), "no blocks: nobody");
    }

    #[test]
    fn keys_follow_envoy_and_say_where_the_address_came_from() {
        assert_eq!(
            client_addr(peer("10.0.0.1:555"), Some(b"1.2.3.4"), 0, false),
            ClientAddr::Peer("10.0.0.1".parse().unwrap())
        );
        let fwd = client_addr(peer("6.6.6.6:0"), None, 0, false);
        assert_eq!(fwd, ClientAddr::Forwarded("6.6.6.6".parse().unwrap()));
        assert!(fwd.from_client_header());
    }

    #[test]
    fn require_peer_puts_every_header_derived_request_in_one_bucket() {
        let a = client_addr(peer("6.6.6.6:0"), None, 0, true);
        let b = client_addr(peer("7.7.7.7:0"), None, 0, true);
        assert_eq!(a, ClientAddr::Shared);
        assert_eq!(
            a.key(Prefixes::default()),
            b.key(Prefixes::default()),
            "a random x-forwarded-for per request gets no fresh bucket"
        );
        assert_eq!(client_addr(peer("7.7.7.7:80"), None, 0, true), ClientAddr::Peer("7.7.7.7".parse().unwrap()));
    }

    #[test]
    fn trusted_hops_count_from_the_right_and_ignore_the_client_part() {
        let xff: &[u8] = b"6.6.6.6, 1.1.1.1, 2.2.2.2";
        assert_eq!(client_addr(peer("10.0.0.1:1"), Some(xff), 1, false), ClientAddr::Hop("2.2.2.2".parse().unwrap()));
        assert_eq!(client_addr(peer("10.0.0.1:1"), Some(xff), 2, false), ClientAddr::Hop("1.1.1.1".parse().unwrap()));
        let honest = client_addr(peer("10.0.0.1:1"), Some(b"9.9.9.9"), 1, false);
        let spoofed = client_addr(peer("10.0.0.1:1"), Some(b"1.2.3.4, 9.9.9.9"), 1, false);
        assert_eq!(honest, spoofed);
    }

    #[test]
    fn short_garbage_or_non_utf8_lists_fall_back_to_the_peer() {
        let p = ClientAddr::Peer("10.0.0.1".parse().unwrap());
        assert_eq!(client_addr(peer("10.0.0.1:1"), Some(b"9.9.9.9"), 2, false), p);
        assert_eq!(client_addr(peer("10.0.0.1:1"), Some(b"not-an-ip"), 1, false), p);
        assert_eq!(client_addr(peer("10.0.0.1:1"), Some(b"1.2.3.4\xff"), 1, false), p);
        assert_eq!(client_addr(peer("10.0.0.1:1"), None, 1, false), p);
        let huge = [b"1.1.1.1,".repeat(100_000), b"2.2.2.2".to_vec()].concat();
        assert_eq!(client_addr(peer("10.0.0.1:1"), Some(&huge), 1, false), ClientAddr::Hop("2.2.2.2".parse().unwrap()));
        assert_eq!(client_addr(None, None, 0, false), ClientAddr::Missing);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_slash_64_and_ipv4_by_the_address() {
        let p = Prefixes::default();
        let key = |s: &str| ClientAddr::Peer(s.parse().unwrap()).key(p);
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:1:2:3"), "one /64, one key");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"), "another /64");
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"), "IPv4-mapped is IPv4");
        let text = |s: &str, p: Prefixes| ClientAddr::Hop(s.parse().unwrap()).text(p);
        assert_eq!(text("2001:db8:1:2:3:4:5:6", p).as_deref(), Some("2001:db8:1:2::/64"));
        assert_eq!(text("10.1.2.3", p).as_deref(), Some("10.1.2.3"), "whole address: as Envoy sends it");
        let wide = Prefixes { v4: 24, v6: 128 };
        assert_eq!(text("10.1.2.3", wide).as_deref(), Some("10.1.2.0/24"));
        assert_eq!(text("2001:db8::7", wide).as_deref(), Some("2001:db8::7"));
        assert_eq!(Prefixes { v4: 0, v6: 0 }.mask("10.1.2.3".parse().unwrap()), ("0.0.0.0".parse().unwrap(), 0));
        assert_ne!(ClientAddr::Peer("10.1.2.0".parse().unwrap()).key(wide), ClientAddr::Shared.key(wide));
        assert_eq!(ClientAddr::Missing.text(p), None);
    }
}
