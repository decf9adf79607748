//! proxy-wasm's header-map encoding, used for every map that crosses the ABI (headers,
//! trailers, gRPC metadata, local-reply headers): a little-endian `u32` count, then a `u32`
//! key length and a `u32` value length per pair, then each key and each value followed by a
//! NUL byte. Keys and values are bytes, carried exactly.

/// Encodes pairs.
pub fn encode<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
    out
}

/// Appends the encoding of `pairs` to `out` (no allocation beyond `out`'s growth).
pub fn encode_into<'a>(out: &mut Vec<u8>, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) {
    let n = pairs.clone().count();
    out.reserve(4 + n * 8 + pairs.clone().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
}

/// Decodes pairs; `None` if the bytes are malformed. Empty input is an empty map.
pub fn decode(b: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if b.is_empty() {
        return Some(Vec::new());
    }
    let word = |i: usize| -> Option<usize> { Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize) };
    let n = word(0)?;
    let mut at = n.checked_mul(8)?.checked_add(4)?;
    let mut out = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        let (kl, vl) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let k = b.get(at..at.checked_add(kl)?)?.to_vec();
        at += kl + 1;
        let v = b.get(at..at.checked_add(vl)?)?.to_vec();
        at += vl + 1;
        out.push((k, v));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn round_trip_keeps_every_byte() {
        let pairs = vec![(b":path".to_vec(), b"/\xff\x00x".to_vec()), (b"X-Mixed".to_vec(), Vec::new())];
        assert_eq!(super::decode(&super::encode(&pairs)).unwrap(), pairs);
    }

    #[test]
    fn malformed_is_none() {
        assert_eq!(super::decode(&[1, 0, 0, 0, 9, 0, 0, 0]), None);
        assert_eq!(super::decode(&[255, 255, 255, 255]), None);
        assert_eq!(super::decode(&[]), Some(Vec::new()));
    }
}
