//! Token usage read from a response body as it passes.
//!
//! [`UsageTap`] is pure: it is fed the body's chunks exactly as they go to the client and
//! never holds them back. It recognises, by the first non-blank byte, an event stream
//! (anything else) or a JSON body (`{`):
//!
//! - Responses event streams: the `response.completed` / `response.incomplete` /
//!   `response.failed` event carries `response.model` and `response.usage`
//!   (`input_tokens`, `output_tokens`, `input_tokens_details.cached_tokens`,
//!   `output_tokens_details.reasoning_tokens`).
//! - Chat Completions event streams: chunks with a non-null `usage` (`prompt_tokens`,
//!   `completion_tokens`, `prompt_tokens_details.cached_tokens`,
//!   `completion_tokens_details.reasoning_tokens`) and `model`; the last one wins.
//! - JSON bodies (a Response object or a `chat.completion`): a copy is kept up to
//!   [`MAX_JSON_BODY`] bytes and parsed once at the end; a larger body gives no usage.
//!
//! An event stream is only split at its blank lines (`UsageEvents`); just the events that
//! mention `"usage"` with a value other than `null` are kept, and parsed (as SSE, then as JSON
//! keeping only the fields needed here) by [`UsageTap::finish`], which the proxy calls after
//! the response's last bytes are out (earlier only when more than 64 KiB of them pile up, or
//! when the proxy would rather not keep what the tap holds). When a chunk's lines all end
//! with `\n`, only the events around a mention of the word are delimited at all, so the cost
//! on a long stream is a search for the word and one for the last blank line of each chunk.
//! The first 8 KiB of a stream are only copied as they pass and scanned when it ends, so a
//! short response is not searched before its last bytes are out.
//!
//! The events it keeps are parsed by the one SSE reader (`openai_wire::sse`); only the
//! pre-filter that finds them is hand-written here, because scanning every event of every
//! stream cost the hot path measurably (BENCHMARKS.md, fifth and sixth rounds).
//!
//! Uses: nothing else of the crate and memchr, openai_wire, serde, serde_json.

use openai_wire::sse::{SseReader, DEFAULT_MAX_EVENT_BYTES};
use openai_wire::usage::WireUsage;
use serde::{Deserialize, Serialize};

/// The largest non-streamed JSON body that is kept for parsing.
pub(crate) const MAX_JSON_BODY: usize = 4 * 1024 * 1024;

/// Tokens used by one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Part of `input_tokens` served from the prompt cache.
    pub cached_tokens: u64,
    /// Part of `output_tokens` spent on reasoning.
    pub reasoning_tokens: u64,
}

impl TokenUsage {
    /// Input plus output: what the daily limit counts.
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

impl TokenUsage {
    /// The usage of several responses answering one request (the legacy Completions route
    /// sends one upstream request per prompt): counts added, the first model named.
    pub(crate) fn sum(all: impl IntoIterator<Item = TokenUsage>) -> Option<TokenUsage> {
        all.into_iter().reduce(|mut total, usage| {
            total.input_tokens = total.input_tokens.saturating_add(usage.input_tokens);
            total.output_tokens = total.output_tokens.saturating_add(usage.output_tokens);
            total.cached_tokens = total.cached_tokens.saturating_add(usage.cached_tokens);
            total.reasoning_tokens = total
                .reasoning_tokens
                .saturating_add(usage.reasoning_tokens);
            total.model = total.model.or(usage.model);
            total
        })
    }
}

/// The usage a route read from the upstream's own stream, for the response body to record in
/// place of what its tap saw: a route that converts the stream (wrapper, bridge) answers in
/// another format, whose usage the client may have chosen not to receive (a Chat
/// Completions stream without `stream_options.include_usage`), so what passes to the client
/// is no measure of what the key spent. Set by the route once the upstream is read; taken
/// once by the body when it records.
#[derive(Clone, Default)]
pub(crate) struct UpstreamUsage(std::sync::Arc<std::sync::Mutex<Option<TokenUsage>>>);

impl UpstreamUsage {
    pub(crate) fn set(&self, usage: Option<TokenUsage>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = usage;
        }
    }

    pub(crate) fn take(&self) -> Option<TokenUsage> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// Token counts from a usage object of either API (read by `openai_wire::usage`).
fn token_usage(usage: WireUsage, model: Option<String>) -> TokenUsage {
    let counts = usage.counts();
    TokenUsage {
        model,
        input_tokens: counts.input,
        output_tokens: counts.output,
        cached_tokens: counts.cached,
        reasoning_tokens: counts.reasoning,
    }
}

/// A Response object, a chat completion (chunk), or a Responses stream event; unknown fields
/// (the whole generated output among them) are skipped without being kept.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type")]
    kind: Option<String>,
    model: Option<String>,
    usage: Option<WireUsage>,
    response: Option<InnerResponse>,
}

#[derive(Deserialize)]
struct InnerResponse {
    model: Option<String>,
    usage: Option<WireUsage>,
}

const TERMINAL_EVENTS: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

enum Mode {
    /// Nothing but blanks seen yet.
    Undecided,
    Sse(Box<UsageEvents>),
    Json(Vec<u8>),
    /// Unreadable or too large: no usage from this body.
    Off,
}

/// Watches one response body. Feed it every chunk with [`UsageTap::observe`], then call
/// [`UsageTap::finish`].
pub struct UsageTap {
    mode: Mode,
    findings: Findings,
    /// How much of an event stream is only copied before it is scanned as it passes
    /// ([`UNSCANNED_LIMIT`], or 0 for [`UsageTap::scanning_as_it_passes`]).
    copy_limit: usize,
}

impl Default for UsageTap {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageTap {
    pub fn new() -> Self {
        UsageTap {
            mode: Mode::Undecided,
            findings: Findings::default(),
            copy_limit: UNSCANNED_LIMIT,
        }
    }

    /// A tap that scans every chunk of an event stream as it passes instead of copying the
    /// start first: the same usage for every body however it is split, for checks of the
    /// scan's handling of chunk boundaries (which the copy hides in short streams).
    pub fn scanning_as_it_passes() -> Self {
        UsageTap {
            copy_limit: 0,
            ..Self::new()
        }
    }

    /// A tap that sees nothing (e.g. for a body with a `Content-Encoding`, which it cannot read).
    pub fn disabled() -> Self {
        UsageTap {
            mode: Mode::Off,
            ..Self::new()
        }
    }

    /// Feeds the next chunk of the body.
    pub fn observe(&mut self, chunk: &[u8]) {
        if let Mode::Undecided = self.mode {
            let Some(first) = chunk.iter().find(|b| !b.is_ascii_whitespace()) else {
                return;
            };
            self.mode = if *first == b'{' {
                Mode::Json(Vec::new())
            } else {
                Mode::Sse(Box::default())
            };
        }
        match &mut self.mode {
            Mode::Undecided | Mode::Off => {}
            Mode::Json(copy) => {
                if copy.len() + chunk.len() > MAX_JSON_BODY {
                    self.mode = Mode::Off;
                } else {
                    copy.extend_from_slice(chunk);
                }
            }
            Mode::Sse(events) => {
                if events
                    .take(chunk, self.copy_limit, &mut self.findings)
                    .is_err()
                {
                    self.mode = Mode::Off;
                }
            }
        }
    }

    /// For drivers that already parse the event stream: one event's name and data.
    pub fn observe_event(&mut self, event: &str, data: &str) {
        self.findings.settle();
        take_event(&mut self.findings.found, event, data);
    }

    /// The usage the body reported, if any. The events that may carry it are parsed here,
    /// not as they pass: a caller that finishes the tap after the response's last bytes are
    /// out keeps the parsing off the response's way.
    pub fn finish(mut self) -> Option<TokenUsage> {
        self.parse_all();
        self.findings.found
    }

    /// Bytes the tap holds: the start of a stream not scanned yet, its buffer for an event
    /// that spans chunks (as large as the largest such event so far), the events kept for
    /// [`UsageTap::finish`], or a JSON body's copy.
    pub fn held_bytes(&self) -> usize {
        let mode = match &self.mode {
            Mode::Sse(events) => events.partial.capacity() + events.unscanned.capacity(),
            Mode::Json(copy) => copy.capacity(),
            Mode::Undecided | Mode::Off => 0,
        };
        mode + self.findings.pending_bytes
    }

    /// Parses what the tap holds now, so that it holds nothing; [`UsageTap::finish`] then
    /// only hands over the result. (For a caller that would rather not keep a large body.)
    pub fn parse_all(&mut self) {
        match std::mem::replace(&mut self.mode, Mode::Off) {
            Mode::Sse(mut events) => events.finish(&mut self.findings),
            Mode::Json(copy) => {
                if let Ok(probe) = serde_json::from_slice::<Probe>(&copy) {
                    if let Some(usage) = probe.usage {
                        self.findings.found = Some(token_usage(usage, probe.model));
                    }
                }
            }
            Mode::Undecided | Mode::Off => {}
        }
        self.findings.settle();
    }
}

/// The usage found so far, and the events that may carry more, kept whole in the order they
/// passed until [`Findings::settle`] parses them (the last usage found wins either way).
#[derive(Default)]
struct Findings {
    found: Option<TokenUsage>,
    pending: Vec<Box<[u8]>>,
    pending_bytes: usize,
}

/// Pending events beyond this many bytes are parsed at once (a stream that reports usage in
/// every chunk would otherwise keep them all).
const MAX_PENDING_BYTES: usize = 64 * 1024;

impl Findings {
    /// One whole event (its lines as they arrived) that may carry usage.
    fn keep(&mut self, raw: &[u8]) {
        self.pending.push(raw.into());
        self.pending_bytes += raw.len();
        if self.pending_bytes > MAX_PENDING_BYTES {
            self.settle();
        }
    }

    /// Parses the pending events, in order.
    fn settle(&mut self) {
        for raw in self.pending.drain(..) {
            parse_raw_event(&raw, &mut self.found);
        }
        self.pending_bytes = 0;
    }
}

/// Bytes of an event stream that are only copied as they pass, and scanned once the body
/// ends: a short response (most of them) is then not searched at all before its last bytes
/// are out. Past this many, the stream is scanned as it passes.
const UNSCANNED_LIMIT: usize = 8 * 1024;

/// An event stream split at its blank lines without being parsed: the events that may carry
/// usage are kept whole in [`Findings`] (parsed later by [`parse_raw_event`]), the rest only
/// scanned.
#[derive(Default)]
struct UsageEvents {
    /// The stream so far while it is within the tap's copy limit, not yet scanned.
    unscanned: Vec<u8>,
    /// The stream outgrew the copy limit: chunks are scanned as they pass.
    scanning: bool,
    /// The event in progress: its bytes that arrived in earlier chunks.
    partial: Vec<u8>,
    /// The current line has bytes (the event has not ended if it ends now).
    line_has_bytes: bool,
    /// The last line ended with `\r`: a `\n` right after it belongs to that line end.
    after_cr: bool,
}

/// An event too large to be a usage event we would keep: the stream is given up.
struct EventTooLarge;

static BLANK_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n\n"));

/// Where the last `\n\n` in `bytes` starts. Searched a line at a time from the end (memmem's
/// reverse search has no vector path and costs several times more over an event's length).
fn last_blank_line(bytes: &[u8]) -> Option<usize> {
    let mut end = bytes.len();
    while let Some(at) = memchr::memrchr(b'\n', &bytes[..end]) {
        if at > 0 && bytes[at - 1] == b'\n' {
            return Some(at - 1);
        }
        end = at;
    }
    None
}

impl UsageEvents {
    /// The next chunk: copied while the stream is within `copy_limit`, else scanned (after
    /// what was copied).
    fn take(
        &mut self,
        chunk: &[u8],
        copy_limit: usize,
        findings: &mut Findings,
    ) -> Result<(), EventTooLarge> {
        if !self.scanning {
            if self.unscanned.len() + chunk.len() <= copy_limit {
                self.unscanned.extend_from_slice(chunk);
                return Ok(());
            }
            self.scan_unscanned(findings)?;
        }
        self.feed(chunk, findings)
    }

    /// Scans what was only copied so far; chunks are scanned as they pass from now on.
    fn scan_unscanned(&mut self, findings: &mut Findings) -> Result<(), EventTooLarge> {
        self.scanning = true;
        let unscanned = std::mem::take(&mut self.unscanned);
        self.feed(&unscanned, findings)
    }

    fn feed(&mut self, chunk: &[u8], findings: &mut Findings) -> Result<(), EventTooLarge> {
        if self.after_cr || memchr::memchr(b'\r', chunk).is_some() {
            self.feed_lines(chunk, findings)
        } else {
            self.feed_lf_only(chunk, findings)
        }
    }

    /// A chunk whose lines all end with `\n` (what every provider sends): events end at
    /// `\n\n`, and only the events around a mention of `"usage"`, the event that continues
    /// from earlier chunks, and the unfinished last one are looked at, each found with a
    /// handful of searches instead of one per line.
    fn feed_lf_only(&mut self, chunk: &[u8], findings: &mut Findings) -> Result<(), EventTooLarge> {
        if chunk.is_empty() {
            return Ok(());
        }
        // The end of the first blank line, given that a `\n` first in the chunk is one when
        // the current line is empty.
        let first_blank = |from_line_start: bool, bytes: &[u8]| {
            if from_line_start && bytes.first() == Some(&b'\n') {
                Some(0)
            } else {
                BLANK_LINE.find(bytes).map(|at| at + 1)
            }
        };
        let mut rest = chunk;
        if !self.partial.is_empty() {
            // The event in progress ends at the first blank line of this chunk, if any.
            match first_blank(!self.line_has_bytes, rest) {
                Some(end) => {
                    self.event_ended(&rest[..end], findings);
                    rest = &rest[end + 1..];
                }
                None => return self.keep_unfinished(chunk, chunk),
            }
        } else if self.line_has_bytes {
            // Not reached (a line with bytes is kept in `partial`); the general way is exact.
            return self.feed_lines(chunk, findings);
        }
        // `rest` starts where an event may start: each `\n` there is a blank line that ends
        // an empty event.
        let past_blank_lines = |from: usize| {
            from + rest[from..]
                .iter()
                .position(|&b| b != b'\n')
                .unwrap_or(rest.len() - from)
        };
        let mut event_start = past_blank_lines(0);
        let mut search_from = event_start;
        while let Some(at) = USAGE_KEY.find(&rest[search_from..]) {
            let hit = search_from + at;
            search_from = hit + USAGE_KEY.needle().len();
            if null_follows_on_its_line(&rest[search_from..]) {
                // `"usage":null` (every event but the last in a Responses stream).
                continue;
            }
            let start = last_blank_line(&rest[event_start..hit])
                .map_or(event_start, |at| event_start + at + 2);
            let Some(end) = BLANK_LINE.find(&rest[hit..]).map(|at| hit + at + 1) else {
                // Mentioned in the unfinished last event: looked at when it ends.
                break;
            };
            findings.keep(&rest[start..end]);
            event_start = past_blank_lines(end + 1);
            search_from = event_start;
        }
        let tail_start =
            last_blank_line(&rest[event_start..]).map_or(event_start, |at| event_start + at + 2);
        self.keep_unfinished(chunk, &rest[tail_start..])
    }

    /// Keeps `tail`, the start of an event that continues in the next chunk, and notes how
    /// `chunk` (which has no `\r`) ended.
    fn keep_unfinished(&mut self, chunk: &[u8], tail: &[u8]) -> Result<(), EventTooLarge> {
        if self.partial.len() + tail.len() > DEFAULT_MAX_EVENT_BYTES {
            return Err(EventTooLarge);
        }
        self.partial.extend_from_slice(tail);
        self.line_has_bytes = chunk.last() != Some(&b'\n');
        self.after_cr = false;
        Ok(())
    }

    /// The general case: lines may end with `\r\n`, `\n` or `\r`, and a `\r\n` may be split
    /// between chunks.
    fn feed_lines(&mut self, chunk: &[u8], findings: &mut Findings) -> Result<(), EventTooLarge> {
        let mut event_start = 0;
        let mut line_start = 0;
        while let Some(at) = memchr::memchr2(b'\n', b'\r', &chunk[line_start..]) {
            let end = line_start + at;
            let has_bytes = self.line_has_bytes || end > line_start;
            if chunk[end] == b'\n' && self.after_cr && !has_bytes {
                // The `\n` of a `\r\n` (it stays in the event's bytes, where the reader that
                // parses the event skips it the same way).
                self.after_cr = false;
                line_start = end + 1;
                continue;
            }
            self.after_cr = chunk[end] == b'\r';
            self.line_has_bytes = false;
            line_start = end + 1;
            if !has_bytes {
                // A blank line: the event ends here.
                self.event_ended(&chunk[event_start..end], findings);
                event_start = line_start;
            }
        }
        if line_start < chunk.len() {
            self.line_has_bytes = true;
            self.after_cr = false;
        }
        let rest = &chunk[event_start..];
        if self.partial.len() + rest.len() > DEFAULT_MAX_EVENT_BYTES {
            return Err(EventTooLarge);
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// The end of the body: a last event without its blank line still counts.
    fn finish(&mut self, findings: &mut Findings) {
        if self.scan_unscanned(findings).is_err() {
            return;
        }
        let last = std::mem::take(&mut self.partial);
        self.event_ended(&last, findings);
    }

    /// `tail` is the event's part in the current chunk; earlier parts are in `partial`.
    fn event_ended(&mut self, tail: &[u8], findings: &mut Findings) {
        if self.partial.is_empty() {
            take_raw_event(tail, findings);
        } else {
            self.partial.extend_from_slice(tail);
            take_raw_event(&self.partial, findings);
            self.partial.clear();
        }
    }
}

static USAGE_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));

/// One whole event as it arrived (its lines, without the blank line that ended it).
fn take_raw_event(raw: &[u8], findings: &mut Findings) {
    if may_carry_usage(raw) {
        findings.keep(raw);
    }
}

/// Whether `after`, what follows a `"usage"`, is `: null` on the same line: the one kind of
/// mention that is never parsed, whichever way the stream is split.
fn null_follows_on_its_line(after: &[u8]) -> bool {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let after = &after[after.iter().take_while(|b| blank(b)).count()..];
    let Some(value) = after.strip_prefix(b":") else {
        return false;
    };
    value[value.iter().take_while(|b| blank(b)).count()..].starts_with(b"null")
}

/// An event known to mention usage: its name and data read in place when it has the usual
/// shape, else parsed by [`SseReader`]; then each event's data as JSON.
fn parse_raw_event(raw: &[u8], found: &mut Option<TokenUsage>) {
    if let Some((event, data)) = name_and_one_data_line(raw) {
        return take_event(found, event, data);
    }
    let mut reader = SseReader::new(DEFAULT_MAX_EVENT_BYTES);
    reader.push(raw);
    // The event has no blank line inside, so its fields are dispatched by `finish`; an event
    // the reader refuses (a line that is not UTF-8) gives nothing.
    loop {
        match reader.next_event() {
            Ok(Some(event)) => take_event(found, event.event, event.data),
            Ok(None) => break,
            Err(_) => return,
        }
    }
    if let Ok(Some(event)) = reader.finish() {
        take_event(found, event.event, event.data);
    }
}

/// The shape providers send, `event: NAME` (optional) then one `data: DATA` line, `\n` line
/// ends, read in place; what [`SseReader`] makes of the same bytes. Anything else (`\r`,
/// comments, other fields, several data lines, no space after a colon, text that is not
/// UTF-8) is `None`, left to the reader.
fn name_and_one_data_line(raw: &[u8]) -> Option<(&str, &str)> {
    if raw.len() > DEFAULT_MAX_EVENT_BYTES || memchr::memchr(b'\r', raw).is_some() {
        return None;
    }
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let (event, data_line) = match raw.strip_prefix(b"event: ") {
        Some(rest) => {
            let end = memchr::memchr(b'\n', rest)?;
            (&rest[..end], &rest[end + 1..])
        }
        None => (&b""[..], raw),
    };
    let data = data_line.strip_prefix(b"data: ")?;
    if memchr::memchr(b'\n', data).is_some() {
        return None;
    }
    Some((
        std::str::from_utf8(event).ok()?,
        std::str::from_utf8(data).ok()?,
    ))
}

/// Whether `"usage"` occurs in `raw` other than as `"usage": null` on one line. (A line
/// end between them is passed, not skipped: the next line could be an SSE comment, so only
/// parsing can tell.)
fn may_carry_usage(raw: &[u8]) -> bool {
    USAGE_KEY
        .find_iter(raw)
        .any(|at| !null_follows_on_its_line(&raw[at + USAGE_KEY.needle().len()..]))
}

fn take_event(found: &mut Option<TokenUsage>, event: &str, data: &str) {
    if USAGE_KEY.find(data.as_bytes()).is_none() {
        return;
    }
    // Named Responses events other than the terminal ones never carry final usage.
    if event.starts_with("response.") && !TERMINAL_EVENTS.contains(&event) {
        return;
    }
    let Ok(probe) = serde_json::from_str::<Probe>(data) else {
        return;
    };
    match probe.kind.as_deref() {
        Some(kind) if kind.starts_with("response.") => {
            if !TERMINAL_EVENTS.contains(&kind) {
                return;
            }
            if let Some(response) = probe.response {
                if let Some(usage) = response.usage {
                    *found = Some(token_usage(usage, response.model));
                }
            }
        }
        _ => {
            // A chat completion chunk (or any object with a top-level usage).
            if let Some(usage) = probe.usage {
                *found = Some(token_usage(usage, probe.model));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The usage found in `body` fed in pieces, with the start of the stream copied first
    /// (as the proxy runs it) and with every piece scanned as it passes (which the copy hides
    /// for short streams): both must agree.
    fn run(body: &[u8], piece: usize) -> Option<TokenUsage> {
        let found = [UsageTap::new, UsageTap::scanning_as_it_passes].map(|new_tap| {
            let mut tap = new_tap();
            for chunk in body.chunks(piece.max(1)) {
                tap.observe(chunk);
            }
            tap.finish()
        });
        let [copied, scanned] = found;
        assert_eq!(
            copied, scanned,
            "copied first or scanned at once, pieces of {piece}"
        );
        copied
    }

    fn every_split(body: &[u8]) -> Option<TokenUsage> {
        let want = run(body, body.len());
        for piece in [1, 2, 3, 7, 64, 1000] {
            assert_eq!(run(body, piece), want, "piece {piece}");
        }
        want
    }

    const RESPONSES_STREAM: &str = concat!(
        "event: response.created\n",
        "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-5\",\"usage\":null}}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"delta\":\"usage\"}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"delta\":\"the \\\"usage\\\" word\"}\n\n",
        "event: response.completed\n",
        "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-5-2025\",\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"hi\"}]}],",
        "\"usage\":{\"input_tokens\":120,\"input_tokens_details\":{\"cached_tokens\":100},\"output_tokens\":30,\"output_tokens_details\":{\"reasoning_tokens\":12},\"total_tokens\":150}}}\n\n",
    );

    #[test]
    fn responses_stream() {
        let usage = every_split(RESPONSES_STREAM.as_bytes()).unwrap();
        assert_eq!(
            usage,
            TokenUsage {
                model: Some("gpt-5-2025".into()),
                input_tokens: 120,
                output_tokens: 30,
                cached_tokens: 100,
                reasoning_tokens: 12,
            }
        );
        assert_eq!(usage.total(), 150);
    }

    #[test]
    fn responses_stream_without_event_names_and_crlf() {
        let body = RESPONSES_STREAM
            .lines()
            .filter(|l| !l.starts_with("event:"))
            .collect::<Vec<_>>()
            .join("\r\n");
        let usage = every_split(body.as_bytes()).unwrap();
        assert_eq!(usage.input_tokens, 120);
    }

    #[test]
    fn incomplete_response_counts() {
        let body = "data: {\"type\":\"response.incomplete\",\"response\":{\"model\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":7}}}";
        let usage = every_split(body.as_bytes()).unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (5, 7));
        assert_eq!(usage.cached_tokens, 0);
    }

    #[test]
    fn stream_cut_before_completion_has_no_usage() {
        let cut = RESPONSES_STREAM.find("event: response.completed").unwrap();
        assert_eq!(every_split(&RESPONSES_STREAM.as_bytes()[..cut]), None);
    }

    const CHAT_STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"llama3\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"llama3\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"llama3\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":22,\"total_tokens\":33,",
        "\"prompt_tokens_details\":{\"cached_tokens\":4},\"completion_tokens_details\":{\"reasoning_tokens\":6}}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn chat_stream() {
        let usage = every_split(CHAT_STREAM.as_bytes()).unwrap();
        assert_eq!(
            usage,
            TokenUsage {
                model: Some("llama3".into()),
                input_tokens: 11,
                output_tokens: 22,
                cached_tokens: 4,
                reasoning_tokens: 6,
            }
        );
    }

    #[test]
    fn chat_stream_with_cumulative_usage_keeps_the_last() {
        let body = concat!(
            "data: {\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
            "data: {\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":9,\"prompt_tokens_details\":null}}\n\n",
        );
        let usage = every_split(body.as_bytes()).unwrap();
        assert_eq!(usage.output_tokens, 9);
    }

    #[test]
    fn non_streamed_response_object() {
        let body = br#"  {"id":"resp_2","object":"response","model":"gpt-5","status":"completed","output":[],"usage":{"input_tokens":8,"input_tokens_details":{"cached_tokens":0},"output_tokens":2,"output_tokens_details":{"reasoning_tokens":1},"total_tokens":10}}"#;
        let usage = every_split(body).unwrap();
        assert_eq!(usage.model.as_deref(), Some("gpt-5"));
        assert_eq!(
            (
                usage.input_tokens,
                usage.output_tokens,
                usage.reasoning_tokens
            ),
            (8, 2, 1)
        );
    }

    #[test]
    fn non_streamed_chat_completion() {
        let body = br#"{"id":"x","object":"chat.completion","model":"qwen","choices":[{"message":{"role":"assistant","content":"{\"usage\": 1}"}}],"usage":{"prompt_tokens":40,"completion_tokens":2,"total_tokens":42}}"#;
        let usage = every_split(body).unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (40, 2));
        assert_eq!(usage.model.as_deref(), Some("qwen"));
    }

    #[test]
    fn deepseek_cache_hits_count_as_cached_like_the_bridge_reports_them() {
        let body = br#"{"id":"x","object":"chat.completion","model":"deepseek-chat","choices":[],"usage":{"prompt_tokens":40,"prompt_cache_hit_tokens":32,"prompt_cache_miss_tokens":8,"completion_tokens":2,"total_tokens":42}}"#;
        let usage = every_split(body).unwrap();
        assert_eq!((usage.input_tokens, usage.cached_tokens), (40, 32));
    }

    #[test]
    fn error_bodies_and_garbage_give_nothing() {
        assert_eq!(
            every_split(br#"{"error":{"message":"bad","type":"invalid_request_error"}}"#),
            None
        );
        assert_eq!(every_split(b""), None);
        assert_eq!(every_split(b"   \n"), None);
        assert_eq!(every_split(b"\x1f\x8b\x08\x00 gzip"), None);
        assert_eq!(every_split(b"{not json"), None);
        assert_eq!(every_split(b"data: {\"usage\": \"a string\"}\n\n"), None);
        let mut tap = UsageTap::disabled();
        tap.observe(RESPONSES_STREAM.as_bytes());
        assert_eq!(tap.finish(), None);
    }

    #[test]
    fn large_json_bodies_are_given_up() {
        let mut tap = UsageTap::new();
        tap.observe(b"{\"pad\":\"");
        let filler = vec![b'a'; 1024 * 1024];
        for _ in 0..5 {
            tap.observe(&filler);
        }
        tap.observe(b"\",\"usage\":{\"input_tokens\":1}}");
        assert_eq!(tap.finish(), None);
    }

    #[test]
    fn the_in_place_reading_agrees_with_the_reader_where_it_answers() {
        let shapes: [&[u8]; 14] = [
            b"event: response.completed\ndata: {\"a\":1}\n",
            b"event: response.completed\ndata: {\"a\":1}",
            b"data: {\"a\":1}\n",
            b"data:  {\"a\":1}\n",
            b"event: a:b\ndata: x\n",
            b"event: \ndata: \n",
            b"event:x\ndata: y\n",
            b"data:y\n",
            b"event: x\r\ndata: y\r\n",
            b": comment\ndata: y\n",
            b"event: x\ndata: y\ndata: z\n",
            b"event: x\nevent: y\ndata: z\n",
            b"event: x\n",
            b"data: \xff\n",
        ];
        let mut answered = 0;
        for raw in shapes {
            let mut reader = SseReader::new(DEFAULT_MAX_EVENT_BYTES);
            reader.push(raw);
            let by_reader = match reader.next_event() {
                Ok(Some(e)) => Some((e.event.to_string(), e.data.to_string())),
                Ok(None) => reader
                    .finish()
                    .ok()
                    .flatten()
                    .map(|e| (e.event.to_string(), e.data.to_string())),
                Err(_) => None,
            };
            if let Some((event, data)) = name_and_one_data_line(raw) {
                answered += 1;
                let raw = String::from_utf8_lossy(raw);
                assert_eq!(by_reader, Some((event.into(), data.into())), "{raw:?}");
            }
        }
        assert_eq!(answered, 6, "the usual shapes are read in place");
    }

    #[test]
    fn kept_events_are_parsed_once_they_pile_up_and_the_last_usage_wins() {
        let mut tap = UsageTap::new();
        for i in 0..2000 {
            let event = format!(
                "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{i},\"completion_tokens\":1}}}}\n\n"
            );
            tap.observe(event.as_bytes());
            assert!(tap.held_bytes() <= 65 * 1024, "{}", tap.held_bytes());
        }
        assert_eq!(tap.finish().unwrap().input_tokens, 1999);
    }

    #[test]
    fn held_bytes_counts_the_buffer_a_large_event_left() {
        let mut tap = UsageTap::new();
        tap.observe(b"data: {\"pad\":\"");
        tap.observe(&vec![b'a'; 1 << 20]);
        tap.observe(b"\"}\n\n");
        assert!(tap.held_bytes() >= 1 << 20, "{}", tap.held_bytes());
    }

    #[test]
    fn parse_all_leaves_nothing_held_and_the_same_usage() {
        let body = b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"m\",\"usage\":{\"input_tokens\":3,\"output_tokens\":4}}}\n\n";
        let mut early = UsageTap::new();
        early.observe(body);
        assert!(early.held_bytes() > 0);
        early.parse_all();
        assert_eq!(early.held_bytes(), 0);
        let mut late = UsageTap::new();
        late.observe(body);
        let usage = late.finish();
        assert_eq!(early.finish(), usage);
        assert_eq!(usage.unwrap().output_tokens, 4);
    }

    #[test]
    fn pre_parsed_events_can_be_fed_directly() {
        let mut tap = UsageTap::new();
        tap.observe_event("", "{\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}");
        let usage = tap.finish().unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (1, 2));
    }

    /// The tap as it was before [`UsageEvents`]: every event parsed by [`SseReader`].
    fn parsing_every_event(body: &[u8]) -> Option<TokenUsage> {
        let mut reader = SseReader::new(DEFAULT_MAX_EVENT_BYTES);
        let mut found = None;
        reader.push(body);
        while let Ok(Some(event)) = reader.next_event() {
            take_event(&mut found, event.event, event.data);
        }
        if let Ok(Some(event)) = reader.finish() {
            take_event(&mut found, event.event, event.data);
        }
        found
    }

    /// A small deterministic generator (xorshift), so that failures can be replayed.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// An event stream of the shapes upstreams send, with every line ending, comments,
    /// multi-line data, null usage, usage in text, and events with usage that must count.
    fn random_stream(dice: &mut Dice) -> Vec<u8> {
        const LINES: [&str; 15] = [
            "event: response.output_text.delta",
            "event: response.completed",
            "event: response.in_progress",
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"the \\\"usage\\\" word\"}",
            "data: {\"type\":\"response.completed\",\"response\":{\"model\":\"m\",\"usage\":{\"input_tokens\":3,\"output_tokens\":4}}}",
            "data: {\"type\":\"response.in_progress\",\"response\":{\"usage\":{\"input_tokens\":99}}}",
            "data: {\"model\":\"c\",\"choices\":[],\"usage\": null}",
            "data: {\"model\":\"c\",\"choices\":[],\"usage\" : {\"prompt_tokens\":5,\"completion_tokens\":6}}",
            "data: {\"model\":\"c\",\"usage\":{\"prompt_tokens\":7,",
            "data: \"completion_tokens\":8}}",
            ": a comment with \"usage\"",
            "data: [DONE]",
            // A mention whose `:null` (or value) is on a later line, behind a comment.
            "data: {\"model\":\"n\",\"usage\"",
            ": null",
            "data: :{\"prompt_tokens\":2,\"completion_tokens\":3}}",
        ];
        const ENDS: [&str; 3] = ["\n", "\r\n", "\r"];
        // One stream in three ends every line with `\n` alone, as providers do.
        let kinds = if dice.below(3) == 0 { 1 } else { ENDS.len() };
        let mut body = Vec::new();
        for _ in 0..dice.below(12) {
            for _ in 0..1 + dice.below(3) {
                body.extend_from_slice(LINES[dice.below(LINES.len())].as_bytes());
                body.extend_from_slice(ENDS[dice.below(kinds)].as_bytes());
            }
            for _ in 0..dice.below(3) {
                body.extend_from_slice(ENDS[dice.below(kinds)].as_bytes());
            }
        }
        body
    }

    #[test]
    fn splitting_at_blank_lines_finds_what_parsing_every_event_finds() {
        let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
        let mut with_usage = 0;
        for case in 0..6000 {
            let body = random_stream(&mut dice);
            let want = parsing_every_event(&body);
            with_usage += usize::from(want.is_some());
            let piece = 1 + dice.below(body.len().max(1));
            assert_eq!(
                run(&body, piece),
                want,
                "case {case}, pieces of {piece}: {:?}",
                String::from_utf8_lossy(&body)
            );
            assert_eq!(run(&body, 1), want, "case {case}, byte by byte");
        }
        assert!(
            with_usage > 1000,
            "the generator makes usage events: {with_usage}"
        );
    }

    #[test]
    fn a_short_stream_is_copied_as_it_passes_and_scanned_at_the_end() {
        let mut tap = UsageTap::new();
        for piece in RESPONSES_STREAM.as_bytes().chunks(100) {
            tap.observe(piece);
        }
        let Mode::Sse(events) = &tap.mode else {
            panic!("an event stream")
        };
        assert!(!events.scanning);
        assert_eq!(events.unscanned, RESPONSES_STREAM.as_bytes());
        assert!(tap.findings.pending.is_empty(), "nothing scanned yet");
        assert!(tap.held_bytes() >= RESPONSES_STREAM.len());
        let usage = tap.finish().unwrap();
        assert_eq!(usage.model.as_deref(), Some("gpt-5-2025"));
    }

    #[test]
    fn a_stream_past_the_copy_limit_is_scanned_as_it_passes() {
        let filler = "data: {\"type\":\"response.output_text.delta\",\"delta\":\"x\"}\n\n";
        let mut tap = UsageTap::new();
        let mut fed = 0;
        while fed <= UNSCANNED_LIMIT {
            tap.observe(filler.as_bytes());
            fed += filler.len();
        }
        tap.observe(RESPONSES_STREAM.as_bytes());
        let Mode::Sse(events) = &tap.mode else {
            panic!("an event stream")
        };
        assert!(events.scanning);
        assert_eq!(events.unscanned.capacity(), 0, "the copy is let go");
        // The completed event, and the delta whose text says "usage".
        assert_eq!(
            tap.findings.pending.len(),
            2,
            "the events that mention usage are kept"
        );
        assert!(tap.held_bytes() < 4096, "{}", tap.held_bytes());
        let usage = tap.finish();
        assert_eq!(usage, every_split(RESPONSES_STREAM.as_bytes()));
        assert!(usage.is_some());
    }

    #[test]
    fn long_streams_find_what_parsing_every_event_finds_wherever_the_copy_ends() {
        let mut dice = Dice(0x2545_f491_4f6c_dd1d);
        for case in 0..300 {
            let mut body = Vec::new();
            let length = UNSCANNED_LIMIT / 2 + dice.below(2 * UNSCANNED_LIMIT);
            while body.len() < length {
                body.extend(random_stream(&mut dice));
            }
            let want = parsing_every_event(&body);
            for piece in [1 + dice.below(64), 1 + dice.below(4096), body.len()] {
                assert_eq!(
                    run(&body, piece),
                    want,
                    "case {case}, pieces of {piece}: {:?}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }

    #[test]
    fn null_usage_is_not_parsed_and_other_mentions_are() {
        assert!(!may_carry_usage(b"data: {\"usage\":null}"));
        assert!(!may_carry_usage(
            b"data: {\"usage\" :  null, \"x\":{\"usage\":null}}"
        ));
        assert!(may_carry_usage(
            b"data: {\"usage\":null,\"response\":{\"usage\":{}}}"
        ));
        assert!(may_carry_usage(b"data: {\"type\":\"usage\"}"));
        assert!(may_carry_usage(b"data: {\"usage\""));
        assert!(!may_carry_usage(b"data: {\"delta\":\"\\\"usage\\\"\"}"));
        for after in [&b":null}"[..], b" :\t null", b": nullx"] {
            assert!(null_follows_on_its_line(after));
            let event = [&b"data: {\"usage\""[..], after].concat();
            assert!(!may_carry_usage(&event));
        }
        // A line end before the null: the next line may be a comment, so it is parsed.
        for after in [&b":{\"input_tokens\":1}"[..], b"\n:null", b"", b":", b"nul"] {
            assert!(!null_follows_on_its_line(after), "{after:?}");
            let event = [&b"data: {\"usage\""[..], after].concat();
            assert!(may_carry_usage(&event));
        }
    }

    #[test]
    fn an_event_larger_than_the_limit_gives_up_the_stream() {
        let mut tap = UsageTap::new();
        tap.observe(b"data: ");
        let filler = vec![b'a'; 1024 * 1024];
        for _ in 0..=DEFAULT_MAX_EVENT_BYTES / filler.len() {
            tap.observe(&filler);
        }
        tap.observe(b"\n\ndata: {\"usage\":{\"prompt_tokens\":1}}\n\n");
        assert_eq!(tap.finish(), None);
    }

    #[test]
    fn non_terminal_responses_events_are_not_parsed() {
        let mut tap = UsageTap::new();
        tap.observe_event(
            "response.in_progress",
            "{\"type\":\"response.in_progress\",\"response\":{\"usage\":{\"input_tokens\":1}}}",
        );
        tap.observe_event(
            "",
            "{\"type\":\"response.in_progress\",\"response\":{\"usage\":{\"input_tokens\":1}}}",
        );
        assert_eq!(tap.finish(), None);
    }
}
