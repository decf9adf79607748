//! What a rule keys on, read from the request as bytes.
//!
//! Header values may hold any bytes (Envoy passes values ≥ 0x80 through), so keys are built from
//! bytes and hashed as bytes: a value that is not UTF-8 is a key like any other and never escapes
//! a limit.

use crate::peer::{ClientAddr, Prefixes};

/// The request as the rate limiter sees it. The filter implements it over host calls, reading
/// each value only when a rule asks for it (and at most once per request).
pub trait RequestView {
    /// `:path`, including the query.
    fn path(&mut self) -> Option<&[u8]>;
    /// `:method`.
    fn method(&mut self) -> Option<&[u8]>;
    /// A request header's value (lowercase name).
    fn header(&mut self, name: &str) -> Option<&[u8]>;
    /// The client address (see [`crate::peer::client_addr`]).
    fn client(&mut self) -> ClientAddr;
    /// The prefixes client addresses are keyed by (the `client_ip` section).
    fn prefixes(&self) -> Prefixes {
        Prefixes::default()
    }
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

/// The value of a missing source: requests without the header share one bucket instead of
/// escaping the limit.
pub const MISSING: &[u8] = b"\0missing";

/// Separates key parts (a byte no header value parsed by Envoy contains).
pub const SEPARATOR: u8 = 0x1f;

impl KeyPart {
    /// Appends this part's value for `req` to `out`.
    pub fn append(&self, req: &mut dyn RequestView, out: &mut Vec<u8>) {
        match self {
            KeyPart::ClientIp => {
                let prefixes = req.prefixes();
                out.extend_from_slice(&req.client().key(prefixes))
            }
            KeyPart::Header(name) => out.extend_from_slice(req.header(name).unwrap_or(MISSING)),
            KeyPart::Path => {
                let path = req.path().map(|p| p.split(|b| *b == b'?').next().unwrap_or_default());
                out.extend_from_slice(path.unwrap_or(MISSING));
            }
            KeyPart::Method => out.extend_from_slice(req.method().unwrap_or(MISSING)),
            KeyPart::Constant(c) => out.extend_from_slice(c.as_bytes()),
        }
    }

    /// This part's value as text, for a rate limit service descriptor (global rules): the client
    /// address as an address (`10.0.0.1`, `::1`), other parts as their bytes, with any byte
    /// sequence that is not UTF-8 replaced by U+FFFD (the protocol carries strings). A missing
    /// source is [`MISSING`] as text: one shared counter, never an escape from the limit.
    pub fn text(&self, req: &mut dyn RequestView) -> String {
        match self {
            KeyPart::ClientIp => {
                let (client, prefixes) = (req.client(), req.prefixes());
                client.text(prefixes).unwrap_or_else(|| String::from_utf8_lossy(&client.key(prefixes)).into_owned())
            }
            other => {
                let mut bytes = Vec::new();
                other.append(req, &mut bytes);
                match String::from_utf8(bytes) {
                    Ok(s) => s,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                }
            }
        }
    }

    /// The descriptor key this part is sent under unless the rule names one: Envoy's names for
    /// the same actions (`remote_address`, `generic_key`) and the header's own name.
    pub fn descriptor_key(&self) -> &str {
        match self {
            KeyPart::ClientIp => "remote_address",
            KeyPart::Header(name) => name,
            KeyPart::Path => "path",
            KeyPart::Method => "method",
            KeyPart::Constant(_) => "generic_key",
        }
    }

    /// The headers this part reads (for the configure-time read plan).
    pub fn header_name(&self) -> Option<&str> {
        match self {
            KeyPart::Header(name) => Some(name),
            KeyPart::Path => Some(":path"),
            KeyPart::Method => Some(":method"),
            KeyPart::ClientIp | KeyPart::Constant(_) => None,
        }
    }
}

/// The key of `req` made of `parts`: their values joined by [`SEPARATOR`], as bytes (a rate-limit
/// rule's bucket, a token budget's balance).
pub fn join_key(parts: &[KeyPart], req: &mut dyn RequestView) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        part.append(req, &mut out);
    }
    out
}

/// A request view over fixed values, for tests and the documentation.
#[derive(Debug, Clone, Default)]
pub struct FixedRequest {
    pub path: Option<Vec<u8>>,
    pub method: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub client: Option<ClientAddr>,
    /// The prefixes addresses are keyed by (the `client_ip` section's).
    pub prefixes: Prefixes,
}

impl RequestView for FixedRequest {
    fn path(&mut self) -> Option<&[u8]> {
        self.path.as_deref()
    }
    fn method(&mut self) -> Option<&[u8]> {
        self.method.as_deref()
    }
    fn header(&mut self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }
    fn client(&mut self) -> ClientAddr {
        self.client.unwrap_or(ClientAddr::Missing)
    }
    fn prefixes(&self) -> Prefixes {
        self.prefixes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> FixedRequest {
        FixedRequest {
            path: Some(b"/a/b?x=1".to_vec()),
            method: Some(b"GET".to_vec()),
            headers: vec![("x-tenant".into(), b"acme".to_vec()), ("x-bytes".into(), b"caf\xe9\xff".to_vec())],
            client: None,
            ..Default::default()
        }
    }

    fn value(part: KeyPart) -> Vec<u8> {
        let mut out = Vec::new();
        part.append(&mut req(), &mut out);
        out
    }

    #[test]
    fn key_parts_read_the_request_and_missing_sources_share_a_value() {
        assert_eq!(value(KeyPart::Path), b"/a/b");
        assert_eq!(value(KeyPart::Header("x-tenant".into())), b"acme");
        assert_eq!(value(KeyPart::Header("x-other".into())), MISSING);
        assert_eq!(value(KeyPart::ClientIp), MISSING);
        assert_eq!(value(KeyPart::Constant("g".into())), b"g");
    }

    #[test]
    fn descriptor_values_are_text_and_addresses_are_written_out() {
        let mut r = req();
        assert_eq!(KeyPart::Header("x-tenant".into()).text(&mut r), "acme");
        assert_eq!(KeyPart::Header("x-bytes".into()).text(&mut r), "caf\u{fffd}\u{fffd}");
        assert_eq!(KeyPart::Path.text(&mut r), "/a/b");
        assert_eq!(KeyPart::ClientIp.text(&mut r), "\0missing");
        r.client = Some(ClientAddr::Peer("2001:db8::1".parse().unwrap()));
        assert_eq!(KeyPart::ClientIp.text(&mut r), "2001:db8::/64", "IPv6 is counted by its /64");
        r.prefixes = Prefixes { v4: 32, v6: 128 };
        assert_eq!(KeyPart::ClientIp.text(&mut r), "2001:db8::1");
        assert_eq!(KeyPart::Constant("g".into()).descriptor_key(), "generic_key");
        assert_eq!(KeyPart::Header("x-tenant".into()).descriptor_key(), "x-tenant");
    }

    #[test]
    fn non_utf8_header_values_are_keyed_as_their_bytes() {
        assert_eq!(value(KeyPart::Header("x-bytes".into())), b"caf\xe9\xff");
    }
}
