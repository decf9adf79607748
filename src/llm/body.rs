//! Reading and rewriting an OpenAI-compatible request body: the top-level `model` (and `stream`),
//! found by one bounded pass over the buffered bytes, and `model` replaced in place.
//!
//! Why a scanner and not a parse into a tree: the stage must rewrite `model` for a provider that
//! names it differently while leaving every other byte as the client sent it (numbers, key order,
//! unicode escapes), so it needs the byte span of the value, which a tree does not keep. The scan
//! is iterative (nesting depth cannot overflow a stack), touches each byte once, and refuses a
//! body that names `model` twice: the gateway and the provider must not read different models.

use std::ops::Range;

/// What the stage needs from a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBody {
    /// The `model` value, unescaped.
    pub model: String,
    /// Where the `model` value (with its quotes) is in the body.
    pub model_span: Range<usize>,
    /// `"stream": true`.
    pub stream: bool,
    /// The body has a top-level `stream_options` member.
    pub stream_options: bool,
    /// The most tokens the answer may use, as the client capped it: `max_completion_tokens`,
    /// else `max_tokens` (a non-negative integer; anything else is not a cap).
    pub max_tokens: Option<u64>,
    /// Where the top-level object's closing `}` is.
    pub close: usize,
}

/// Why a body cannot be routed. Each message says what the client should send instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON, or not a JSON object; `at` is the byte offset where reading stopped.
    NotAnObject { at: usize },
    /// No top-level `model`.
    NoModel,
    /// `model` is not a string, or is empty or longer than [`MAX_MODEL_LEN`].
    BadModel,
    /// `model` appears twice at the top level.
    DuplicateModel,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::NotAnObject { at } => write!(
                f,
                "the request body is not a JSON object (stopped at byte {at}): send an OpenAI-compatible JSON request"
            ),
            BodyError::NoModel => f.write_str("the request body has no \"model\": name the model to use"),
            BodyError::BadModel => write!(
                f,
                "\"model\" must be a non-empty string of at most {MAX_MODEL_LEN} bytes: name the model to use"
            ),
            BodyError::DuplicateModel => f.write_str("\"model\" is given twice: send it once"),
        }
    }
}

impl std::error::Error for BodyError {}

/// The longest model name accepted.
pub const MAX_MODEL_LEN: usize = 256;

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn fail<T>(&self) -> Result<T, BodyError> {
        Err(BodyError::NotAnObject { at: self.i })
    }

    fn expect(&mut self, c: u8) -> Result<(), BodyError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.fail()
        }
    }

    /// A string at the cursor: its unescaped text, kept only up to `keep` bytes (`None` beyond,
    /// or when it holds an invalid escape or invalid UTF-8).
    fn string(&mut self, keep: usize) -> Result<Option<String>, BodyError> {
        self.expect(b'"')?;
        let mut out: Option<Vec<u8>> = Some(Vec::new());
        loop {
            let Some(c) = self.peek() else { return self.fail() };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else { return self.fail() };
                    self.i += 1;
                    let ch: Option<char> = match e {
                        b'"' => Some('"'),
                        b'\\' => Some('\\'),
                        b'/' => Some('/'),
                        b'b' => Some('\u{8}'),
                        b'f' => Some('\u{c}'),
                        b'n' => Some('\n'),
                        b'r' => Some('\r'),
                        b't' => Some('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            if (0xD800..0xDC00).contains(&hi) && self.b.get(self.i..self.i + 2) == Some(b"\\u") {
                                self.i += 2;
                                let lo = self.hex4()?;
                                let code = 0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF);
                                char::from_u32(code).filter(|_| (0xDC00..0xE000).contains(&lo))
                            } else {
                                char::from_u32(hi)
                            }
                        }
                        _ => return self.fail(),
                    };
                    match (ch, out.as_mut()) {
                        (Some(ch), Some(o)) => o.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                        (None, _) => out = None,
                        _ => {}
                    }
                }
                c if c < 0x20 => return self.fail(),
                c => {
                    if let Some(o) = out.as_mut() {
                        o.push(c);
                    }
                }
            }
            if out.as_ref().is_some_and(|o| o.len() > keep) {
                out = None;
            }
        }
        Ok(out.and_then(|o| String::from_utf8(o).ok()))
    }

    fn hex4(&mut self) -> Result<u32, BodyError> {
        let Some(digits) = self.b.get(self.i..self.i + 4) else { return self.fail() };
        let text = std::str::from_utf8(digits).ok().filter(|t| t.bytes().all(|c| c.is_ascii_hexdigit()));
        let Some(v) = text.and_then(|t| u32::from_str_radix(t, 16).ok()) else { return self.fail() };
        self.i += 4;
        Ok(v)
    }

    /// Skips one value of any kind. Nesting is tracked in a vector of flags (one per open
    /// container: true for an object), never on the call stack.
    fn skip_value(&mut self) -> Result<(), BodyError> {
        let mut open: Vec<bool> = Vec::new();
        loop {
            self.ws();
            match self.peek() {
                Some(b'{') | Some(b'[') => {
                    let object = self.peek() == Some(b'{');
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(if object { b'}' } else { b']' }) {
                        self.i += 1;
                    } else {
                        open.push(object);
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string(0)?;
                }
                Some(b't') | Some(b'f') | Some(b'n') => {
                    let rest = self.b.get(self.i..).unwrap_or_default();
                    match [&b"true"[..], b"false", b"null"].into_iter().find(|w| rest.starts_with(w)) {
                        Some(w) => self.i += w.len(),
                        None => return self.fail(),
                    }
                }
                Some(c) if c == b'-' || c.is_ascii_digit() => {
                    self.i += 1;
                    while self.peek().is_some_and(|c| c.is_ascii_digit() || b".eE+-".contains(&c)) {
                        self.i += 1;
                    }
                }
                _ => return self.fail(),
            }
            // A value ended: close containers, or move to the next element or member.
            loop {
                let Some(&object) = open.last() else { return Ok(()) };
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        if object {
                            self.key()?;
                        }
                        break;
                    }
                    Some(b'}') if object => {
                        self.i += 1;
                        open.pop();
                    }
                    Some(b']') if !object => {
                        self.i += 1;
                        open.pop();
                    }
                    _ => return self.fail(),
                }
            }
        }
    }

    /// A member's key and its colon.
    fn key(&mut self) -> Result<(), BodyError> {
        self.ws();
        self.string(0)?;
        self.ws();
        self.expect(b':')
    }
}

/// Reads the top-level `model` (and `stream`) of a JSON request body.
pub fn scan(body: &[u8]) -> Result<RequestBody, BodyError> {
    let mut c = Cursor { b: body, i: 0 };
    c.ws();
    c.expect(b'{')?;
    let mut model: Option<(String, Range<usize>)> = None;
    let mut stream = false;
    let mut stream_options = false;
    let (mut max_tokens, mut max_completion_tokens) = (None, None);
    let mut bad_model = false;
    c.ws();
    if c.peek() == Some(b'}') {
        return Err(BodyError::NoModel);
    }
    let close = loop {
        c.ws();
        let key = c.string(32)?;
        c.ws();
        c.expect(b':')?;
        c.ws();
        match key.as_deref() {
            Some("model") => {
                if model.is_some() || bad_model {
                    return Err(BodyError::DuplicateModel);
                }
                if c.peek() == Some(b'"') {
                    let start = c.i;
                    match c.string(MAX_MODEL_LEN)? {
                        Some(m) if !m.is_empty() => model = Some((m, start..c.i)),
                        _ => bad_model = true,
                    }
                } else {
                    c.skip_value()?;
                    bad_model = true;
                }
            }
            Some("stream") => {
                stream = c.b.get(c.i..c.i + 4) == Some(b"true");
                c.skip_value()?;
            }
            Some("stream_options") => {
                stream_options = true;
                c.skip_value()?;
            }
            Some(k @ ("max_tokens" | "max_completion_tokens")) => {
                let start = c.i;
                c.skip_value()?;
                let text = c.b.get(start..c.i).unwrap_or_default();
                let n = std::str::from_utf8(text).ok().filter(|t| t.bytes().all(|b| b.is_ascii_digit()));
                let n = n.and_then(|t| t.parse::<u64>().ok());
                if k == "max_tokens" {
                    max_tokens = n;
                } else {
                    max_completion_tokens = n;
                }
            }
            _ => c.skip_value()?,
        }
        c.ws();
        match c.peek() {
            Some(b',') => c.i += 1,
            Some(b'}') => break c.i,
            _ => return c.fail(),
        }
    };
    c.i = close + 1;
    c.ws();
    if c.i != body.len() {
        return c.fail();
    }
    if bad_model {
        return Err(BodyError::BadModel);
    }
    let (model, model_span) = model.ok_or(BodyError::NoModel)?;
    let max_tokens = max_completion_tokens.or(max_tokens);
    Ok(RequestBody { model, model_span, stream, stream_options, max_tokens, close })
}

/// `value` as a JSON string literal.
pub fn json_string(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

/// True when [`rewrite`] would change the body.
pub fn needs_rewrite(scanned: &RequestBody, new_model: Option<&str>, include_usage: bool) -> bool {
    new_model.is_some_and(|m| m != scanned.model) || (include_usage && scanned.stream && !scanned.stream_options)
}

/// The body with `model` replaced by `new_model` and, with `include_usage`, a streamed request
/// without `stream_options` asking for the usage chunk (OpenAI sends usage in a stream only when
/// asked; without it the token budget could not charge the request). Every other byte is kept.
pub fn rewrite(body: &[u8], scanned: &RequestBody, new_model: Option<&str>, include_usage: bool) -> Vec<u8> {
    let inject = include_usage && scanned.stream && !scanned.stream_options;
    let mut out = Vec::with_capacity(body.len() + 48);
    let span = &scanned.model_span;
    match new_model {
        Some(m) => {
            out.extend_from_slice(body.get(..span.start).unwrap_or_default());
            out.extend_from_slice(json_string(m).as_bytes());
            out.extend_from_slice(body.get(span.end..scanned.close).unwrap_or_default());
        }
        None => out.extend_from_slice(body.get(..scanned.close).unwrap_or_default()),
    }
    if inject {
        out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
    }
    out.extend_from_slice(body.get(scanned.close..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_top_level_model_and_stream() {
        let b = br#" {"messages": [{"role": "user", "content": "{\"model\": \"x\"}"}], "model" : "gpt-4o", "stream": true} "#;
        let r = scan(b).unwrap();
        assert_eq!(r.model, "gpt-4o");
        assert_eq!(&b[r.model_span.clone()], br#""gpt-4o""#);
        assert!(r.stream && !r.stream_options);
        assert_eq!(b[r.close], b'}');
    }

    #[test]
    fn the_clients_token_cap_is_read() {
        let cap = |b: &[u8]| scan(b).unwrap().max_tokens;
        assert_eq!(cap(br#"{"model": "m", "max_tokens": 40}"#), Some(40));
        assert_eq!(cap(br#"{"max_tokens": 40, "model": "m", "max_completion_tokens": 90}"#), Some(90));
        assert_eq!(cap(br#"{"model": "m", "max_tokens": null}"#), None);
        assert_eq!(cap(br#"{"model": "m", "max_tokens": -5}"#), None);
        assert_eq!(cap(br#"{"model": "m", "max_tokens": 1.5}"#), None);
        assert_eq!(cap(br#"{"model": "m", "max_tokens": 99999999999999999999999}"#), None);
        assert_eq!(cap(br#"{"model": "m", "x": {"max_tokens": 7}}"#), None, "top level only");
    }

    #[test]
    fn nested_models_do_not_count() {
        let b = br#"{"tools": [{"model": "a", "x": {"model": [1, 2, {"model": null}]}}], "n": -1.5e3, "model": "m"}"#;
        assert_eq!(scan(b).unwrap().model, "m");
        assert_eq!(scan(br#"{"tools": {"model": "a"}}"#), Err(BodyError::NoModel));
    }

    #[test]
    fn escapes_are_unescaped() {
        assert_eq!(scan(br#"{"mod\u0065l": "a\/b\u00e9\ud83d\ude00"}"#).unwrap().model, "a/b\u{e9}\u{1F600}");
    }

    #[test]
    fn bad_bodies_are_refused() {
        for (body, err) in [
            (&b""[..], BodyError::NotAnObject { at: 0 }),
            (b"[1]", BodyError::NotAnObject { at: 0 }),
            (b"{}", BodyError::NoModel),
            (br#"{"model": 5}"#, BodyError::BadModel),
            (br#"{"model": ""}"#, BodyError::BadModel),
            (br#"{"model": "a", "model": "b"}"#, BodyError::DuplicateModel),
            (br#"{"model": 1, "model": "b"}"#, BodyError::DuplicateModel),
        ] {
            assert_eq!(scan(body), Err(err), "{}", String::from_utf8_lossy(body));
        }
        for body in [
            &br#"{"model": "a""#[..],
            br#"{"model": "a"} x"#,
            br#"{"model": "a",}"#,
            br#"{"model" "a"}"#,
            br#"{"x": [1, 2}, "model": "a"}"#,
            br#"{"x": tru, "model": "a"}"#,
            br#"{"x": "a\qb", "model": "a"}"#,
            b"{\"x\": \"\x01\", \"model\": \"a\"}",
        ] {
            assert!(matches!(scan(body), Err(BodyError::NotAnObject { .. })), "{}", String::from_utf8_lossy(body));
        }
        let long = format!(r#"{{"model": "{}"}}"#, "m".repeat(MAX_MODEL_LEN + 1));
        assert_eq!(scan(long.as_bytes()), Err(BodyError::BadModel));
    }

    #[test]
    fn deep_nesting_costs_no_stack() {
        let deep = format!(r#"{{"x": {}1{}, "model": "m"}}"#, "[".repeat(200_000), "]".repeat(200_000));
        assert_eq!(scan(deep.as_bytes()).unwrap().model, "m");
    }

    #[test]
    fn rewrite_replaces_only_the_model_value() {
        let b = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi \u00e9"}],"temperature":0.70}"#;
        let r = scan(b).unwrap();
        let out = rewrite(b, &r, Some("gpt-4o \"eu\""), false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"model":"gpt-4o \"eu\"","messages":[{"role":"user","content":"hi \u00e9"}],"temperature":0.70}"#
        );
        assert_eq!(rewrite(b, &r, None, true), b.to_vec(), "not streamed: nothing to add");
        assert!(!needs_rewrite(&r, None, true) && !needs_rewrite(&r, Some("gpt-4o"), true));
        assert!(needs_rewrite(&r, Some("gpt-4o \"eu\""), false));
    }

    #[test]
    fn a_stream_without_options_asks_for_usage() {
        let b = br#"{"model": "m", "stream": true}"#;
        let r = scan(b).unwrap();
        let out = rewrite(b, &r, Some("n"), true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, serde_json::json!({"model": "n", "stream": true, "stream_options": {"include_usage": true}}));
        assert!(needs_rewrite(&r, None, true) && !needs_rewrite(&r, None, false));
        let with = br#"{"model": "m", "stream": true, "stream_options": {"include_usage": false}}"#;
        assert_eq!(rewrite(with, &scan(with).unwrap(), None, true), with.to_vec(), "the client's choice is kept");
    }
}
