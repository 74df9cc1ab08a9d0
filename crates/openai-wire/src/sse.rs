//! Server-sent events: one incremental reader and one writer shared by every route.
//!
//! The reader is fed raw body chunks as they arrive and yields complete events without ever
//! rescanning bytes it has already looked at, so the cost per chunk does not grow with the
//! length of the stream. It follows the WHATWG event-stream rules that matter to API streams:
//! `\n`, `\r\n` and `\r` line ends, `data:` lines joined with `\n`, `event:` names, comments
//! (`:`) ignored, an optional single space after the colon, and a bound on the size of one event.
//!
//! Uses: nothing else of this crate and memchr, serde, serde_json.

use std::fmt;

/// One parsed event. `data` is the joined `data:` lines; `event` is empty when absent.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub event: &'a str,
    pub data: &'a str,
}

impl SseEvent<'_> {
    /// The OpenAI end-of-stream sentinel `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// One event (or one line) exceeded the configured limit.
    EventTooLarge { limit: usize },
    /// An event's data or name was not valid UTF-8.
    InvalidUtf8,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::EventTooLarge { limit } => {
                write!(
                    f,
                    "upstream event stream has an event larger than {limit} bytes"
                )
            }
            SseError::InvalidUtf8 => f.write_str("upstream event stream is not valid UTF-8"),
        }
    }
}

impl std::error::Error for SseError {}

/// Default bound on one event: generous for a whole `response.completed` with long output.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Incremental event-stream parser.
pub struct SseReader {
    /// Bytes received but not yet consumed as whole lines.
    pending: Vec<u8>,
    /// Start of the unconsumed part of `pending`.
    start: usize,
    /// How far past `start` we already searched for a line end.
    scanned: usize,
    /// `data` of the event being assembled.
    data: String,
    /// `event` of the event being assembled.
    event: String,
    /// Whether any `data:` line has been seen for the event being assembled.
    has_data: bool,
    /// The last event handed out; kept so that its strings can be borrowed.
    ready_event: String,
    ready_data: String,
    /// A `\r` ended the previous line; a `\n` right after it belongs to that line end.
    skip_lf: bool,
    max_event_bytes: usize,
}

impl Default for SseReader {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseReader {
    pub fn new(max_event_bytes: usize) -> Self {
        SseReader {
            pending: Vec::new(),
            start: 0,
            scanned: 0,
            data: String::new(),
            event: String::new(),
            has_data: false,
            ready_event: String::new(),
            ready_data: String::new(),
            skip_lf: false,
            max_event_bytes,
        }
    }

    /// Appends a chunk of the body. Call [`SseReader::next_event`] until it returns `None`.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 && self.start == self.pending.len() {
            self.pending.clear();
            self.start = 0;
            self.scanned = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.pending.len() {
            self.pending.drain(..self.start);
            self.start = 0;
        }
        self.pending.extend_from_slice(chunk);
    }

    /// Returns the next complete event, if the bytes pushed so far hold one.
    pub fn next_event(&mut self) -> Result<Option<SseEvent<'_>>, SseError> {
        loop {
            let Some(line_len) = self.find_line_end()? else {
                return Ok(None);
            };
            if line_len > self.max_event_bytes {
                // The same bound whether the line arrived whole or in pieces.
                return Err(SseError::EventTooLarge {
                    limit: self.max_event_bytes,
                });
            }
            let line_start = self.start;
            let term = self.pending[line_start + line_len];
            self.start = line_start + line_len + 1;
            self.scanned = 0;
            self.skip_lf = term == b'\r';
            if line_len == 0 {
                if self.dispatch() {
                    return Ok(Some(self.ready()));
                }
                continue;
            }
            self.field(line_start, line_len)?;
        }
    }

    /// Signals the end of the body. A last event that lacks its blank line is still returned
    /// (many upstreams omit it); a partial line is treated as complete.
    pub fn finish(&mut self) -> Result<Option<SseEvent<'_>>, SseError> {
        let rest = self.pending.len() - self.start;
        if rest > self.max_event_bytes {
            return Err(SseError::EventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        if rest > 0 {
            let line_start = self.start;
            self.start = self.pending.len();
            self.scanned = 0;
            self.field(line_start, rest)?;
        }
        if self.dispatch() {
            return Ok(Some(self.ready()));
        }
        Ok(None)
    }

    fn ready(&self) -> SseEvent<'_> {
        SseEvent {
            event: &self.ready_event,
            data: &self.ready_data,
        }
    }

    /// Moves the assembled event to the "ready" slot; false when there was no data.
    fn dispatch(&mut self) -> bool {
        if !self.has_data {
            self.event.clear();
            return false;
        }
        std::mem::swap(&mut self.ready_data, &mut self.data);
        std::mem::swap(&mut self.ready_event, &mut self.event);
        self.data.clear();
        self.event.clear();
        self.has_data = false;
        true
    }

    /// Finds the length of the next line (excluding its terminator) in `pending[start..]`.
    fn find_line_end(&mut self) -> Result<Option<usize>, SseError> {
        if self.skip_lf && self.start < self.pending.len() {
            if self.pending[self.start] == b'\n' {
                self.start += 1;
            }
            self.skip_lf = false;
        }
        let hay = &self.pending[self.start..];
        let from = self.scanned.min(hay.len());
        match memchr::memchr2(b'\n', b'\r', &hay[from..]) {
            Some(i) => Ok(Some(from + i)),
            None => {
                self.scanned = hay.len();
                if hay.len() > self.max_event_bytes {
                    return Err(SseError::EventTooLarge {
                        limit: self.max_event_bytes,
                    });
                }
                Ok(None)
            }
        }
    }

    fn field(&mut self, line_start: usize, line_len: usize) -> Result<(), SseError> {
        let line = &self.pending[line_start..line_start + line_len];
        if line[0] == b':' {
            return Ok(());
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = std::str::from_utf8(value).map_err(|_| SseError::InvalidUtf8)?;
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.has_data = true;
                if self.data.len() + value.len() > self.max_event_bytes {
                    return Err(SseError::EventTooLarge {
                        limit: self.max_event_bytes,
                    });
                }
                self.data.push_str(value);
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(value);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Appends one event to `out`. `data` must not contain line breaks (compact JSON never does).
pub fn write_event(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    debug_assert!(!data.contains(['\n', '\r']));
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Appends one event whose data is `value` serialized as compact JSON.
pub fn write_json_event<T: serde::Serialize + ?Sized>(
    out: &mut Vec<u8>,
    event: Option<&str>,
    value: &T,
) {
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    // Serializing plain data into a Vec cannot fail.
    serde_json::to_writer(&mut *out, value).expect("JSON serialization into memory");
    out.extend_from_slice(b"\n\n");
}

/// Appends the OpenAI end-of-stream sentinel.
pub fn write_done(out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: [DONE]\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(reader: &mut SseReader, out: &mut Vec<(String, String)>) {
        while let Some(ev) = reader.next_event().unwrap() {
            out.push((ev.event.to_string(), ev.data.to_string()));
        }
    }

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<(String, String)> {
        let mut r = SseReader::new(1 << 20);
        let mut out = Vec::new();
        for c in input.chunks(piece.max(1)) {
            r.push(c);
            collect(&mut r, &mut out);
        }
        if let Some(ev) = r.finish().unwrap() {
            out.push((ev.event.to_string(), ev.data.to_string()));
        }
        out
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let input = b"event: a\ndata: {\"x\":1}\n\n: comment\r\ndata:one\r\ndata: two\r\n\r\nevent:b\rdata: z\r\rdata: [DONE]\n\n";
        let want = vec![
            ("a".to_string(), "{\"x\":1}".to_string()),
            (String::new(), "one\ntwo".to_string()),
            ("b".to_string(), "z".to_string()),
            (String::new(), "[DONE]".to_string()),
        ];
        for piece in 1..input.len() + 1 {
            assert_eq!(parse_in_pieces(input, piece), want, "piece size {piece}");
        }
    }

    #[test]
    fn last_event_without_blank_line_is_kept() {
        assert_eq!(
            parse_in_pieces(b"data: a\n\ndata: b", 3),
            vec![
                (String::new(), "a".to_string()),
                (String::new(), "b".to_string())
            ]
        );
    }

    #[test]
    fn event_without_data_is_not_dispatched() {
        assert_eq!(parse_in_pieces(b"event: ping\n\nretry: 5\n\n", 4), vec![]);
    }

    #[test]
    fn oversized_line_is_an_error_not_unbounded_memory() {
        let mut r = SseReader::new(100);
        r.push(&[b'a'; 101]);
        assert_eq!(
            r.next_event().unwrap_err(),
            SseError::EventTooLarge { limit: 100 }
        );
        let mut r = SseReader::new(10);
        r.push(b"data: 123456\ndata: 123456\n\n");
        assert!(r.next_event().is_err());
    }

    #[test]
    fn the_limit_does_not_depend_on_how_the_bytes_were_split() {
        // Found by fuzzing: whole and split input used to be measured differently.
        let inputs: [&[u8]; 2] = [
            b"data: 123456789012345678901234567890\n\n",
            b": a comment longer than the limit of 33\n",
        ];
        for input in inputs {
            let mut whole = SseReader::new(33);
            whole.push(input);
            let whole_result = whole.next_event().map(|e| e.is_some());
            let mut split = SseReader::new(33);
            let mut split_result = Ok(false);
            for piece in input.chunks(7) {
                split.push(piece);
                split_result = split.next_event().map(|e| e.is_some());
                if split_result.is_err() {
                    break;
                }
            }
            assert_eq!(
                whole_result,
                split_result,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert!(whole_result.is_err());
        }
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut r = SseReader::new(100);
        r.push(b"data: \xff\n\n");
        assert_eq!(r.next_event().unwrap_err(), SseError::InvalidUtf8);
    }

    #[test]
    fn writer_round_trips_through_reader() {
        let mut out = Vec::new();
        write_json_event(
            &mut out,
            Some("response.created"),
            &serde_json::json!({"a": "b\nc"}),
        );
        write_event(&mut out, None, "x");
        write_done(&mut out);
        let got = parse_in_pieces(&out, 7);
        assert_eq!(
            got[0],
            ("response.created".into(), r#"{"a":"b\nc"}"#.into())
        );
        assert_eq!(got[1], (String::new(), "x".into()));
        assert_eq!(got[2].1, "[DONE]");
    }

    #[test]
    fn long_streams_do_not_keep_consumed_bytes() {
        let mut r = SseReader::new(1 << 20);
        for _ in 0..100_000 {
            r.push(b"data: {\"type\":\"x\"}\n\n");
            while r.next_event().unwrap().is_some() {}
        }
        assert!(r.pending.capacity() < 1 << 20);
    }
}
