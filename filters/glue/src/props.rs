//! Typed reads of Envoy properties. A missing property (or a host that cannot serialize it) is
//! `None`: filters must work on hosts that expose fewer properties than Envoy.

use proxy_wasm::hostcalls;

/// Raw bytes of the property at `path` (`["response", "code"]`).
pub fn bytes(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// A string property (Envoy passes strings as raw bytes).
pub fn string(path: &[&str]) -> Option<String> {
    bytes(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// An integer property: Envoy encodes integers as 8 bytes little-endian; other hosts may send
/// decimal text.
pub fn uint(path: &[&str]) -> Option<u64> {
    decode_uint(&bytes(path)?)
}

/// Decodes an integer property value.
pub fn decode_uint(b: &[u8]) -> Option<u64> {
    match <[u8; 8]>::try_from(b) {
        Ok(le) => Some(u64::from_le_bytes(le)),
        Err(_) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_decode_from_le_bytes_or_text() {
        assert_eq!(decode_uint(&503u64.to_le_bytes()), Some(503));
        assert_eq!(decode_uint(b"42"), Some(42));
        assert_eq!(decode_uint(b""), None);
        assert_eq!(decode_uint(b"abc"), None);
    }
}
