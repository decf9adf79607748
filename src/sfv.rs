//! A writer for RFC 8941 structured-field Dictionaries, the format of `x-upstream-diagnosis`.
//!
//! Only what the filters emit is supported: tokens, strings and integers. Values that cannot be
//! represented (non-ASCII in a string, an invalid token) are made representable rather than
//! dropped, because a header that fails to parse helps nobody at 3 a.m.

use std::fmt::Write;

/// The largest integer a structured field carries (RFC 8941 §3.3.1: at most 15 digits).
pub const INTEGER_MAX: u64 = 999_999_999_999_999;

/// Builds a Dictionary member by member.
#[derive(Debug, Default, Clone)]
pub struct Dictionary {
    out: String,
}

impl Dictionary {
    /// An empty dictionary.
    pub fn new() -> Self {
        Self::default()
    }

    fn key(&mut self, key: &str) {
        debug_assert!(is_key(key), "dictionary keys are constants and must be valid: {key}");
        if !self.out.is_empty() {
            self.out.push_str(", ");
        }
        self.out.push_str(key);
        self.out.push('=');
    }

    /// Adds `key=token`. A value that is not a valid token is written as a string instead.
    pub fn token(&mut self, key: &str, token: &str) -> &mut Self {
        if is_token(token) {
            self.key(key);
            self.out.push_str(token);
            self
        } else {
            self.string(key, token)
        }
    }

    /// Adds `key="string"`, escaping `"` and `\`. Characters outside printable ASCII, and `%`
    /// itself, are percent-encoded as their UTF-8 bytes (`é` is `%C3%A9`, `%` is `%25`): a
    /// string field carries ASCII only, and a name must survive the trip (any percent-decoder
    /// gives it back).
    pub fn string(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.out.push('"');
        for c in value.chars() {
            match c {
                '"' | '\\' => {
                    self.out.push('\\');
                    self.out.push(c);
                }
                '%' => self.out.push_str("%25"),
                ' '..='~' => self.out.push(c),
                _ => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(self.out, "%{b:02X}");
                    }
                }
            }
        }
        self.out.push('"');
        self
    }

    /// Adds `key=integer`, clamped to the RFC's 15-digit range.
    pub fn integer(&mut self, key: &str, value: i64) -> &mut Self {
        const MAX: i64 = INTEGER_MAX as i64;
        self.key(key);
        let _ = write!(self.out, "{}", value.clamp(-MAX, MAX));
        self
    }

    /// True when no member was added.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// The serialized dictionary.
    pub fn finish(self) -> String {
        self.out
    }
}

/// RFC 8941 §3.3.4: a token starts with ALPHA or `*`, then tchar, `:` or `/`.
pub fn is_token(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'*' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b":/!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 8941 §3.1.2: a key is lowercase, starts with a letter or `*`, then `a-z0-9_-.*`.
pub fn is_key(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_lowercase() || b == b'*' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_joined_with_comma_space() {
        let mut d = Dictionary::new();
        d.token("cause", "connection_refused").string("flags", "UF").integer("attempts", 1);
        assert_eq!(d.finish(), r#"cause=connection_refused, flags="UF", attempts=1"#);
    }

    #[test]
    fn strings_escape_quotes_and_backslashes_and_percent_encode_the_rest() {
        let mut d = Dictionary::new();
        d.string("hint", "say \"hi\" \\ café\n 100%");
        assert_eq!(d.finish(), r#"hint="say \"hi\" \\ caf%C3%A9%0A 100%25""#);
    }

    #[test]
    fn invalid_tokens_fall_back_to_strings() {
        let mut d = Dictionary::new();
        d.token("cause", "9lives");
        assert_eq!(d.finish(), r#"cause="9lives""#);
    }

    #[test]
    fn integers_are_clamped_to_fifteen_digits() {
        let mut d = Dictionary::new();
        d.integer("n", i64::MAX);
        assert_eq!(d.finish(), "n=999999999999999");
    }

    #[test]
    fn token_and_key_grammar() {
        assert!(is_token("upstream_reset"));
        assert!(is_token("a:b/c"));
        assert!(!is_token("_x"));
        assert!(!is_token(""));
        assert!(is_key("attempts"));
        assert!(!is_key("Attempts"));
    }
}
