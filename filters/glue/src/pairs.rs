//! The proxy-wasm header-map encoding, both ways, on bytes.
//!
//! Layout: a u32 count, then a (key length, value length) u32 pair per entry, then every key and
//! value each followed by a NUL; all little-endian. The parser never trusts the lengths: a
//! malformed map ends the iteration, it never panics or reads out of bounds.

/// Serializes pairs.
pub fn encode<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let n = pairs.clone().count();
    let size = 4 + pairs.clone().map(|(k, v)| 10 + k.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
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
    out
}

/// Iterates over a serialized map without copying.
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    bytes: &'a [u8],
    index: usize,
    count: usize,
    data: usize,
}

impl<'a> Pairs<'a> {
    /// Starts reading `bytes` (an empty or malformed map yields nothing).
    pub fn new(bytes: &'a [u8]) -> Pairs<'a> {
        let count = word(bytes, 0).unwrap_or(0);
        // Every entry needs at least 10 bytes: a bogus count cannot make us loop for long.
        let count = if count.saturating_mul(10) > bytes.len() { 0 } else { count };
        Pairs { bytes, index: 0, count, data: 4 + count * 8 }
    }

    /// The first value of `name` (exact, lowercase names as Envoy stores them).
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.clone().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

fn word(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let k = word(self.bytes, 4 + self.index * 8)?;
        let v = word(self.bytes, 8 + self.index * 8)?;
        let key = self.bytes.get(self.data..self.data.checked_add(k)?)?;
        let vstart = self.data.checked_add(k)?.checked_add(1)?;
        let value = self.bytes.get(vstart..vstart.checked_add(v)?)?;
        self.data = vstart.checked_add(v)?.checked_add(1)?;
        self.index += 1;
        Some((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_use_the_abi_encoding() {
        let bytes = encode([(&b"a"[..], &b"bc"[..])].into_iter());
        assert_eq!(bytes, [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'b', b'c', 0]);
    }

    #[test]
    fn round_trip_keeps_any_bytes() {
        let list: Vec<(&[u8], &[u8])> = vec![(b":path", b"/x"), (b"x-t", b"caf\xe9\xff"), (b"empty", b"")];
        let bytes = encode(list.iter().copied());
        let back: Vec<(&[u8], &[u8])> = Pairs::new(&bytes).collect();
        assert_eq!(back, list);
        assert_eq!(Pairs::new(&bytes).get(b"x-t"), Some(&b"caf\xe9\xff"[..]));
        assert_eq!(Pairs::new(&bytes).get(b"nope"), None);
    }

    #[test]
    fn malformed_maps_end_quietly() {
        assert_eq!(Pairs::new(b"").count(), 0);
        assert_eq!(Pairs::new(&[255, 255, 255, 255]).count(), 0);
        let mut bytes = encode([(&b"abc"[..], &b"def"[..])].into_iter());
        bytes.truncate(bytes.len() - 3);
        assert_eq!(Pairs::new(&bytes).count(), 0);
        let mut huge = encode([(&b"a"[..], &b"b"[..])].into_iter());
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Pairs::new(&huge).count(), 0);
    }
}
