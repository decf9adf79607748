//! The usage chunk taken back out of a stream the client did not ask it for.
//!
//! To charge a streamed answer, the gateway asks the provider for its usage
//! (`stream_options.include_usage`, added to a streamed request that does not say). The provider
//! then ends the stream with one more event whose `choices` is empty and whose `usage` holds the
//! counts. A client that never asked for it does not expect that event: the loop everyone
//! writes, `chunk.choices[0].delta.content`, fails on it. Accounting must not change what the
//! client receives, so [`UsageTrim`] removes exactly that event and passes every other byte as it
//! comes.
//!
//! Events are delimited by a blank line (`\n`, `\r\n` or `\r` line endings, as the event-stream
//! format allows). Only the current event is held, and only until its blank line: a provider
//! that sends whole events per chunk (all do) sees every chunk pass unchanged and at once. An
//! event longer than [`HOLD_CAP`] is no usage chunk: it is let through as it comes, so memory is
//! bounded whatever the stream.

/// The longest event held back to look at; longer ones pass as they come.
pub const HOLD_CAP: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    /// Into the held event.
    Held,
    /// Straight to the output.
    Out,
    /// Nowhere: part of a removed event.
    Drop,
}

/// Removes the usage-only event from a server-sent event stream fed in pieces.
#[derive(Debug, Clone, Default)]
pub struct UsageTrim {
    held: Vec<u8>,
    /// The current event outgrew [`HOLD_CAP`] and passes as it comes.
    passing: bool,
    /// Bytes in the current line so far, its ending excluded.
    line_len: usize,
    /// The last byte was `\r`: a `\n` right after it belongs to the same line ending, and goes
    /// where the `\r` went.
    after_cr: Option<Dest>,
    removed: u64,
}

impl UsageTrim {
    /// A trimmer at the start of a stream.
    pub fn new() -> UsageTrim {
        UsageTrim::default()
    }

    /// Usage events removed so far.
    pub fn removed(&self) -> u64 {
        self.removed
    }

    /// Feeds the next bytes of the stream; what the client gets in their place is appended to
    /// `out` (equal to `chunk` unless an event is held or removed).
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            if let Some(dest) = self.after_cr.take() {
                if b == b'\n' {
                    self.put(dest, b, out);
                    continue;
                }
            }
            let here = if self.passing { Dest::Out } else { Dest::Held };
            if b == b'\r' || b == b'\n' {
                self.put(here, b, out);
                let dest = if self.line_len == 0 { self.end_event(out) } else { here };
                self.line_len = 0;
                if b == b'\r' {
                    self.after_cr = Some(dest);
                }
                continue;
            }
            self.line_len += 1;
            self.put(here, b, out);
            if !self.passing && self.held.len() > HOLD_CAP {
                out.append(&mut self.held);
                self.passing = true;
            }
        }
    }

    /// The end of the stream: whatever is held goes out (an unterminated event is not
    /// dispatched by any event-stream parser, so it is left as the provider sent it).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.passing = false;
        self.after_cr = None;
    }

    fn put(&mut self, dest: Dest, b: u8, out: &mut Vec<u8>) {
        match dest {
            Dest::Held => self.held.push(b),
            Dest::Out => out.push(b),
            Dest::Drop => {}
        }
    }

    /// A blank line ended the event: out it goes, unless it is the usage chunk. Returns where a
    /// `\n` completing this blank line's `\r\n` goes.
    fn end_event(&mut self, out: &mut Vec<u8>) -> Dest {
        if self.passing {
            self.passing = false;
            return Dest::Out;
        }
        if usage_only(&self.held) {
            self.held.clear();
            self.removed += 1;
            return Dest::Drop;
        }
        out.append(&mut self.held);
        Dest::Out
    }
}

/// True when the event's data is a JSON object with an empty `choices` and a `usage` object:
/// the chunk a provider adds for `include_usage`, and nothing else.
fn usage_only(event: &[u8]) -> bool {
    const USAGE: &[u8] = b"\"usage\"";
    if !event.windows(USAGE.len()).any(|w| w == USAGE) {
        return false;
    }
    let mut data = Vec::with_capacity(event.len());
    for line in event.split(|b| *b == b'\n' || *b == b'\r') {
        if let Some(value) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
        } else if line == b"data" {
            data.push(b'\n');
        }
    }
    let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice::<serde_json::Value>(&data) else {
        return false;
    };
    let no_choices = doc.get("choices").and_then(serde_json::Value::as_array).is_some_and(Vec::is_empty);
    no_choices && doc.get("usage").is_some_and(serde_json::Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn trimmed(pieces: &[&[u8]]) -> (Vec<u8>, u64) {
        let mut t = UsageTrim::new();
        let mut out = Vec::new();
        for p in pieces {
            t.feed(p, &mut out);
        }
        t.finish(&mut out);
        (out, t.removed())
    }

    fn stream(eol: &str) -> (String, String) {
        let fix = |s: &str| s.replace('\n', eol);
        let full = format!(": ping\n\n{CHUNK}{CHUNK}{USAGE}{DONE}");
        let want = format!(": ping\n\n{CHUNK}{CHUNK}{DONE}");
        (fix(&full), fix(&want))
    }

    #[test]
    fn only_the_usage_event_is_removed_whatever_the_chunking_and_line_endings() {
        for eol in ["\n", "\r\n", "\r"] {
            let (full, want) = stream(eol);
            let b = full.as_bytes();
            assert_eq!(trimmed(&[b]), (want.clone().into_bytes(), 1), "{eol:?}");
            for cut in 0..b.len() {
                for cut2 in [cut, (cut + 1).min(b.len()), (cut + 30).min(b.len())] {
                    let (out, n) = trimmed(&[&b[..cut], &b[cut..cut2], &b[cut2..]]);
                    assert_eq!((String::from_utf8(out).unwrap(), n), (want.clone(), 1), "{eol:?} cuts {cut} {cut2}");
                }
            }
        }
    }

    #[test]
    fn whole_events_pass_unchanged_and_at_once() {
        let mut t = UsageTrim::new();
        let mut out = Vec::new();
        t.feed(CHUNK.as_bytes(), &mut out);
        assert_eq!(out, CHUNK.as_bytes(), "nothing held: the token reaches the client now");
        out.clear();
        t.feed(b"data: {\"choi", &mut out);
        assert!(out.is_empty(), "half an event waits for its end");
        t.feed(b"ces\":[]}\n\n", &mut out);
        assert_eq!(out, b"data: {\"choices\":[]}\n\n", "an empty choices without usage is the provider's, kept");
    }

    #[test]
    fn events_that_only_look_like_usage_are_kept() {
        for kept in [
            "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"total_tokens\":3}}\n\n",
            "data: {\"choices\":[],\"usage\":null}\n\n",
            "data: not json \"usage\"\n\n",
            "event: usage\ndata: [1, \"usage\"]\n\n",
        ] {
            assert_eq!(trimmed(&[kept.as_bytes()]), (kept.as_bytes().to_vec(), 0), "{kept}");
        }
        let multi = "event: x\ndata: {\"choices\": [],\ndata: \"usage\": {\"total_tokens\": 1}}\n\n";
        assert_eq!(trimmed(&[multi.as_bytes()]), (Vec::new(), 1), "data lines join into one document");
    }

    #[test]
    fn a_long_event_passes_as_it_comes_and_memory_stays_bounded() {
        let big = format!("data: {{\"choices\":[],\"usage\":{{}},\"pad\":\"{}\"}}\n\n", "a".repeat(HOLD_CAP * 2));
        let mut t = UsageTrim::new();
        let mut out = Vec::new();
        for piece in big.as_bytes().chunks(1000) {
            t.feed(piece, &mut out);
            assert!(t.held.len() <= HOLD_CAP + 1);
        }
        t.finish(&mut out);
        assert_eq!(out, big.as_bytes(), "too long to hold: never removed");
        let (out, n) = trimmed(&[format!("{big}{USAGE}{DONE}").as_bytes()]);
        assert_eq!((out, n), (format!("{big}{DONE}").into_bytes(), 1), "the next event is looked at again");
    }

    #[test]
    fn an_unterminated_tail_goes_out_at_the_end() {
        assert_eq!(trimmed(&[b"data: {\"choices\":[],\"usage\":{}}"]).0, b"data: {\"choices\":[],\"usage\":{}}");
        assert_eq!(trimmed(&[b"\xff\xfe\n\n\x00"]).0, b"\xff\xfe\n\n\x00", "any bytes");
    }
}
