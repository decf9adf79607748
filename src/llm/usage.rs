//! Token usage read from a response as it streams past, in bounded memory.
//!
//! The stage must never hold a response back (a streamed answer's first token reaches the client
//! as soon as the provider sends it), so usage is read incrementally: every chunk is fed to a
//! small state machine that keeps a few integers and a key buffer of [`KEY_CAP`] bytes, whatever
//! the size of the response or of its chunks, and wherever chunk boundaries fall (inside a key, a
//! number, an escape, a line ending). Two framings:
//!
//! - a JSON response: the top-level `usage` object (`prompt_tokens`, `completion_tokens`,
//!   `total_tokens`; `input_tokens` / `output_tokens` are read as the first two);
//! - a server-sent event stream: each event's `data:` lines are one JSON document, read the same
//!   way; the last event that carried a `usage` object wins (OpenAI sends `"usage": null` on
//!   every chunk and the numbers on the final one).

/// Token counts a provider reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
    pub total: Option<u64>,
}

impl Usage {
    /// What the request cost: `total_tokens`, else prompt + completion; `None` when the provider
    /// gave no count at all.
    pub fn tokens(&self) -> Option<u64> {
        self.total.or(match (self.prompt, self.completion) {
            (None, None) => None,
            (p, c) => Some(p.unwrap_or(0).saturating_add(c.unwrap_or(0))),
        })
    }
}

/// The longest key compared (longer keys are none of ours).
pub const KEY_CAP: usize = 20;
/// Containers deeper than this stop the scan (no provider nests usage that deep).
const MAX_DEPTH: u32 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    None,
    Prompt,
    Completion,
    Total,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// A value is expected.
    Value,
    /// Just after `[`: a value or `]`.
    ValueOrClose,
    /// Just after `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object.
    Key,
    Colon,
    /// After a value: `,` or a closing bracket.
    After,
    Str,
    Escape,
    Unicode(u8),
    Number,
    Literal,
    /// The top-level value is complete.
    Done,
    /// Not JSON (or too deep): nothing more is read.
    Broken,
}

/// Reads the top-level `usage` object of one JSON document fed in pieces.
#[derive(Debug, Clone)]
pub struct JsonUsage {
    lex: Lex,
    depth: u32,
    /// Bit `d` set: the container at depth `d + 1` is an object.
    objects: u128,
    string_is_key: bool,
    key: [u8; KEY_CAP],
    key_len: usize,
    /// The key being read is captured (depth 1, or depth 2 inside `usage`) and still fits.
    key_live: bool,
    top_key_is_usage: bool,
    in_usage: bool,
    field: Field,
    number: Option<u64>,
    current: Usage,
    found: Option<Usage>,
}

impl Default for JsonUsage {
    fn default() -> Self {
        JsonUsage {
            lex: Lex::Value,
            depth: 0,
            objects: 0,
            string_is_key: false,
            key: [0; KEY_CAP],
            key_len: 0,
            key_live: false,
            top_key_is_usage: false,
            in_usage: false,
            field: Field::None,
            number: None,
            current: Usage::default(),
            found: None,
        }
    }
}

impl JsonUsage {
    /// A scanner at the start of a document.
    pub fn new() -> JsonUsage {
        JsonUsage::default()
    }

    /// The usage object read so far (complete objects only).
    pub fn usage(&self) -> Option<Usage> {
        self.found
    }

    /// Feeds the next bytes of the document.
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if matches!(self.lex, Lex::Done | Lex::Broken) {
                return;
            }
            self.step(b);
        }
    }

    /// Marks the end of the document (a number at the very end is complete).
    pub fn finish(&mut self) {
        if self.lex == Lex::Number {
            self.end_number();
        } else if self.lex == Lex::Literal {
            self.value_done();
        }
    }

    fn top_is_object(&self) -> bool {
        self.depth > 0 && self.objects & (1u128 << (self.depth - 1)) != 0
    }

    fn step(&mut self, b: u8) {
        match self.lex {
            Lex::Str => match b {
                b'"' => self.end_string(),
                b'\\' => {
                    self.key_live = false;
                    self.lex = Lex::Escape;
                }
                c => {
                    if self.string_is_key && self.key_live {
                        if self.key_len < KEY_CAP {
                            self.key[self.key_len] = c;
                            self.key_len += 1;
                        } else {
                            self.key_live = false;
                        }
                    }
                }
            },
            Lex::Escape => self.lex = if b == b'u' { Lex::Unicode(4) } else { Lex::Str },
            Lex::Unicode(n) => self.lex = if n <= 1 { Lex::Str } else { Lex::Unicode(n - 1) },
            Lex::Number => {
                if b.is_ascii_digit() {
                    let d = u64::from(b - b'0');
                    self.number = self.number.and_then(|n| n.checked_mul(10)).and_then(|n| n.checked_add(d));
                } else if b"+-.eE".contains(&b) {
                    self.number = None;
                } else {
                    self.end_number();
                    self.step(b);
                }
            }
            Lex::Literal => {
                if !b.is_ascii_alphabetic() {
                    self.value_done();
                    self.step(b);
                }
            }
            _ if matches!(b, b' ' | b'\t' | b'\n' | b'\r') => {}
            Lex::Value | Lex::ValueOrClose => match b {
                b']' if self.lex == Lex::ValueOrClose => self.close(false),
                b'{' => self.open(true),
                b'[' => self.open(false),
                b'"' => self.start_string(false),
                b'-' | b'0'..=b'9' => {
                    let capture = self.in_usage && self.depth == 2 && self.field != Field::None;
                    self.number = if capture && b != b'-' { Some(u64::from(b - b'0')) } else { None };
                    self.lex = Lex::Number;
                }
                b't' | b'f' | b'n' => self.lex = Lex::Literal,
                _ => self.lex = Lex::Broken,
            },
            Lex::KeyOrClose | Lex::Key => match b {
                b'}' if self.lex == Lex::KeyOrClose => self.close(true),
                b'"' => self.start_string(true),
                _ => self.lex = Lex::Broken,
            },
            Lex::Colon => self.lex = if b == b':' { Lex::Value } else { Lex::Broken },
            Lex::After => match b {
                b',' => self.lex = if self.top_is_object() { Lex::Key } else { Lex::Value },
                b'}' if self.top_is_object() => self.close(true),
                b']' if self.depth > 0 && !self.top_is_object() => self.close(false),
                _ => self.lex = Lex::Broken,
            },
            Lex::Done | Lex::Broken => {}
        }
    }

    fn start_string(&mut self, key: bool) {
        self.string_is_key = key;
        self.key_len = 0;
        self.key_live = key && (self.depth == 1 || (self.depth == 2 && self.in_usage));
        self.lex = Lex::Str;
    }

    fn end_string(&mut self) {
        if !self.string_is_key {
            self.value_done();
            return;
        }
        let key: &[u8] = if self.key_live { &self.key[..self.key_len] } else { b"" };
        if self.depth == 1 {
            self.top_key_is_usage = key == b"usage";
        } else if self.depth == 2 && self.in_usage {
            self.field = match key {
                b"prompt_tokens" | b"input_tokens" => Field::Prompt,
                b"completion_tokens" | b"output_tokens" => Field::Completion,
                b"total_tokens" => Field::Total,
                _ => Field::None,
            };
        }
        self.lex = Lex::Colon;
    }

    fn end_number(&mut self) {
        if let Some(n) = self.number.take() {
            match self.field {
                Field::Prompt => self.current.prompt = Some(n),
                Field::Completion => self.current.completion = Some(n),
                Field::Total => self.current.total = Some(n),
                Field::None => {}
            }
        }
        self.value_done();
    }

    fn open(&mut self, object: bool) {
        if self.depth >= MAX_DEPTH {
            self.lex = Lex::Broken;
            return;
        }
        if object && self.depth == 1 && self.top_key_is_usage {
            self.in_usage = true;
            self.current = Usage::default();
            self.field = Field::None;
        }
        if object {
            self.objects |= 1u128 << self.depth;
        } else {
            self.objects &= !(1u128 << self.depth);
        }
        self.depth += 1;
        self.lex = if object { Lex::KeyOrClose } else { Lex::ValueOrClose };
    }

    fn close(&mut self, object: bool) {
        if self.depth == 0 || self.top_is_object() != object {
            self.lex = Lex::Broken;
            return;
        }
        self.depth -= 1;
        if self.in_usage && self.depth == 1 {
            self.in_usage = false;
            self.found = Some(self.current);
        }
        self.value_done();
    }

    fn value_done(&mut self) {
        if self.depth == 2 && self.in_usage {
            self.field = Field::None;
        }
        self.lex = if self.depth == 0 { Lex::Done } else { Lex::After };
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Start,
    Name,
    /// In a field's value; `data` for `data:` lines.
    Value {
        data: bool,
    },
}

/// Reads usage from a server-sent event stream fed in pieces.
#[derive(Debug, Clone)]
pub struct SseUsage {
    line: Line,
    name: [u8; 4],
    name_len: usize,
    name_fits: bool,
    skip_space: bool,
    after_cr: bool,
    event_has_data: bool,
    json: JsonUsage,
    last: Option<Usage>,
    events: u64,
}

impl Default for SseUsage {
    fn default() -> Self {
        SseUsage {
            line: Line::Start,
            name: [0; 4],
            name_len: 0,
            name_fits: true,
            skip_space: false,
            after_cr: false,
            event_has_data: false,
            json: JsonUsage::new(),
            last: None,
            events: 0,
        }
    }
}

impl SseUsage {
    /// A reader at the start of a stream.
    pub fn new() -> SseUsage {
        SseUsage::default()
    }

    /// Events with data seen so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The usage of the last event that carried one.
    pub fn usage(&self) -> Option<Usage> {
        self.last
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            if b == b'\r' || b == b'\n' {
                self.end_line();
                self.after_cr = b == b'\r';
                i += 1;
                continue;
            }
            match self.line {
                Line::Start | Line::Name => {
                    if b == b':' {
                        let data = self.line == Line::Name && self.name_fits && &self.name[..self.name_len] == b"data";
                        self.line = Line::Value { data };
                        self.skip_space = true;
                    } else {
                        if self.line == Line::Start {
                            self.line = Line::Name;
                            self.name_len = 0;
                            self.name_fits = true;
                        }
                        if self.name_len < self.name.len() {
                            self.name[self.name_len] = b;
                            self.name_len += 1;
                        } else {
                            self.name_fits = false;
                        }
                    }
                    i += 1;
                }
                Line::Value { data: is_data } => {
                    if self.skip_space {
                        self.skip_space = false;
                        if b == b' ' {
                            i += 1;
                            continue;
                        }
                    }
                    let end = data[i..].iter().position(|c| *c == b'\r' || *c == b'\n').map_or(data.len(), |p| i + p);
                    if is_data {
                        self.json.feed(&data[i..end]);
                    }
                    i = end;
                }
            }
        }
    }

    /// The end of the stream: an event not closed by a blank line still counts.
    pub fn finish(&mut self) {
        if self.line != Line::Start {
            self.end_line();
        }
        self.dispatch();
    }

    fn end_line(&mut self) {
        match self.line {
            Line::Start => self.dispatch(),
            Line::Name if self.name_fits && &self.name[..self.name_len] == b"data" => {
                self.event_has_data = true;
                self.json.feed(b"\n");
            }
            Line::Value { data: true } => {
                self.event_has_data = true;
                self.json.feed(b"\n");
            }
            _ => {}
        }
        self.line = Line::Start;
    }

    fn dispatch(&mut self) {
        if self.event_has_data {
            self.json.finish();
            if let Some(u) = self.json.usage() {
                self.last = Some(u);
            }
            self.events += 1;
        }
        self.event_has_data = false;
        self.json = JsonUsage::new();
    }
}

/// Usage reading for one response, chosen by its content type.
#[derive(Debug, Clone)]
pub enum UsageMeter {
    Json(JsonUsage),
    Sse(SseUsage),
}

impl UsageMeter {
    /// The reader for a response of this `content-type`: `text/event-stream` or any JSON type;
    /// `None` for anything else (nothing to read).
    pub fn for_content_type(content_type: &[u8]) -> Option<UsageMeter> {
        let lower = content_type.to_ascii_lowercase();
        if lower.starts_with(b"text/event-stream") {
            Some(UsageMeter::Sse(SseUsage::new()))
        } else if lower.windows(4).any(|w| w == b"json") {
            Some(UsageMeter::Json(JsonUsage::new()))
        } else {
            None
        }
    }

    /// Feeds the next chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            UsageMeter::Json(j) => j.feed(chunk),
            UsageMeter::Sse(s) => s.feed(chunk),
        }
    }

    /// The end of the response: the usage it reported, if any.
    pub fn finish(&mut self) -> Option<Usage> {
        match self {
            UsageMeter::Json(j) => {
                j.finish();
                j.usage()
            }
            UsageMeter::Sse(s) => {
                s.finish();
                s.usage()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"a \"usage\": {\"total_tokens\": 999}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"prompt_tokens_details":{"cached_tokens":5}},"system_fingerprint":null}"#;

    fn json_usage(pieces: &[&[u8]]) -> Option<Usage> {
        let mut m = UsageMeter::for_content_type(b"application/json; charset=utf-8").unwrap();
        for p in pieces {
            m.feed(p);
        }
        m.finish()
    }

    #[test]
    fn json_usage_is_read_whatever_the_chunking() {
        let want = Some(Usage { prompt: Some(12), completion: Some(30), total: Some(42) });
        assert_eq!(json_usage(&[JSON.as_bytes()]), want);
        let b = JSON.as_bytes();
        for cut in 0..b.len() {
            assert_eq!(json_usage(&[&b[..cut], &b[cut..]]), want, "cut at {cut}");
        }
        let singles: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(json_usage(&singles), want);
    }

    #[test]
    fn json_without_usage_or_not_json_reads_nothing() {
        assert_eq!(json_usage(&[br#"{"usage": null, "x": [1, {"usage": {"total_tokens": 3}}]}"#]), None);
        assert_eq!(json_usage(&[b"<html>"]), None);
        assert_eq!(json_usage(&[br#"{"usage": {"prompt_tokens": 1.5, "total_tokens": -2}}"#]), Some(Usage::default()));
        assert_eq!(
            json_usage(&[br#"{"usage": {"input_tokens": 7, "output_tokens": 9}}"#]).and_then(|u| u.tokens()),
            Some(16)
        );
        assert_eq!(
            json_usage(&[br#"{"object":"list","usage":{"prompt_tokens":8,"total_tokens":8}}"#]).unwrap().tokens(),
            Some(8)
        );
    }

    fn sse(usage: bool) -> String {
        let mut s = String::from(": keep-alive\r\n\r\n");
        for (i, word) in ["Hel", "lo"].iter().enumerate() {
            s.push_str(&format!(
                "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}}}}],\"usage\":null,\"n\":{i}}}\n\n"
            ));
        }
        if usage {
            s.push_str("event: message\ndata: {\"id\":\"c\",\"choices\":[],\n");
            s.push_str("data: \"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"total_tokens\":13}}\n\n");
        }
        s.push_str("data: [DONE]\n\n");
        s
    }

    fn sse_usage(pieces: &[&[u8]]) -> (Option<Usage>, u64) {
        let mut s = SseUsage::new();
        for p in pieces {
            s.feed(p);
        }
        s.finish();
        (s.usage(), s.events())
    }

    #[test]
    fn sse_usage_comes_from_the_final_chunk_whatever_the_chunking() {
        let text = sse(true);
        let b = text.as_bytes();
        let want = Some(Usage { prompt: Some(11), completion: Some(2), total: Some(13) });
        assert_eq!(sse_usage(&[b]), (want, 4));
        for cut in 0..b.len() {
            for cut2 in [cut, (cut + 7).min(b.len()), (cut + 40).min(b.len())] {
                assert_eq!(sse_usage(&[&b[..cut], &b[cut..cut2], &b[cut2..]]).0, want, "cuts {cut} {cut2}");
            }
        }
        assert_eq!(sse_usage(&[&text.replace('\n', "\r\n").into_bytes()]).0, want);
        assert_eq!(sse_usage(&[&text.replace('\n', "\r").into_bytes()]).0, want);
    }

    #[test]
    fn sse_without_usage_reads_none() {
        assert_eq!(sse_usage(&[sse(false).as_bytes()]), (None, 3));
    }

    #[test]
    fn an_unterminated_last_event_still_counts() {
        let (u, _) = sse_usage(&[b"data: {\"usage\": {\"total_tokens\": 5}}"]);
        assert_eq!(u.and_then(|u| u.tokens()), Some(5));
    }

    #[test]
    fn memory_is_bounded_by_construction() {
        // The scanners own fixed-size state only: feeding megabytes changes nothing in their size.
        let mut s = SseUsage::new();
        let chunk = format!("data: {{\"x\": \"{}\", \"k{}\": 1}}\n\n", "a".repeat(10_000), "y".repeat(10_000));
        for _ in 0..100 {
            s.feed(chunk.as_bytes());
        }
        assert_eq!(s.events(), 100);
        assert!(std::mem::size_of::<SseUsage>() < 512);
    }

    #[test]
    fn content_types_choose_the_reader() {
        assert!(matches!(UsageMeter::for_content_type(b"text/event-stream; charset=utf-8"), Some(UsageMeter::Sse(_))));
        assert!(matches!(UsageMeter::for_content_type(b"Application/JSON"), Some(UsageMeter::Json(_))));
        assert!(UsageMeter::for_content_type(b"text/plain").is_none());
    }
}
