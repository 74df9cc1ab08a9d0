//! The properties the fuzz targets assert, shared by the cargo-fuzz targets (`fuzz/`) and by
//! the regression test `tests/fuzz_regressions.rs` (which includes this file with `#[path]`),
//! so that a saved crash is replayed through exactly the checks that found it.
//!
//! Every `check_*` function takes the raw fuzzer input, decodes it (the layout is documented on
//! each function and in `fuzz/README.md`) and panics when a property does not hold. Inputs that
//! do not decode (invalid JSON for a JSON target) are skipped, not failures.

use std::io::{self, Read};
use std::sync::OnceLock;

use codex_responses_api_proxy::fuzzing::upstream_wire::{
    self as upstream_wire, parse_response_head, BodyDecoder, Decoded, Framing, HeadParse,
};
use codex_responses_api_proxy::fuzzing::FramingScanner;
use codex_responses_api_proxy::fuzzing::UsageTap;
use codex_responses_api_proxy::fuzzing::{key, KeyError, KeySource, MAX_KEY_LEN};
use openai_conformance::chat::{
    check_chat_completion, check_chat_stream, check_completion, check_completions_stream,
};
use openai_conformance::responses::{check_response_object, check_responses_stream};
use openai_wire::bridge::request::{responses_to_chat, StreamMeta};
use openai_wire::bridge::stream::ChatStreamConverter;
use openai_wire::sse::{SseError, SseReader, DEFAULT_MAX_EVENT_BYTES};
use openai_wire::wrapper::chat_request::chat_to_responses;
use openai_wire::wrapper::chat_stream::{ChatStream, StreamOutcome};
use openai_wire::wrapper::completions::{completion_to_responses, CompletionStream, MAX_PROMPTS};
use openai_wire::wrapper::settings::{ReasoningOutputMode, WrapperSettings};
use openai_wire::wrapper::{ClientMeta, ConvertContext};
use serde_json::{json, Value};

/// Problems reported and not yet fixed in `src/`, by the text the conformance checks give for
/// them. The fuzz targets set [`TOLERATE_KNOWN`] so that a long run goes on to find new
/// problems; the regression test leaves it unset. Empty: every finding so far is fixed (the
/// inputs stay in `tests/fixtures/fuzz-regressions/` as regression tests).
pub const KNOWN_FINDINGS: [&str; 0] = [];

/// Whether problems listed in [`KNOWN_FINDINGS`] are tolerated (set by the fuzz targets).
pub static TOLERATE_KNOWN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Problems a checker reported (one per line or `; `-separated) that are not tolerated.
/// Tool-call arguments that are not JSON are never counted: the wrapper relays the upstream's
/// argument text verbatim, so arbitrary upstream input makes them arbitrary.
fn untolerated(problems: &str, separator: &str) -> Vec<String> {
    let tolerate = TOLERATE_KNOWN.load(std::sync::atomic::Ordering::Relaxed);
    let known = |p: &str| KNOWN_FINDINGS.iter().any(|k| p.contains(k));
    // A tool call whose first fragment the checker rejected is not counted as a call, so a
    // known finding also brings "finish_reason tool_calls without tool calls".
    let cascade = tolerate && problems.split(separator).any(known);
    problems
        .split(separator)
        .filter(|p| !p.contains("are not JSON"))
        .filter(|p| !(tolerate && known(p)))
        .filter(|p| !(cascade && p.contains("tool_calls without tool calls")))
        .map(str::to_string)
        .collect()
}

/// The fuzz targets, by name (also the prefix of a regression file's name).
pub const TARGETS: [&str; 10] = [
    "key_intake",
    "sse_reader",
    "bridge_request",
    "bridge_stream",
    "wrapper_request",
    "wrapper_stream",
    "framing_scanner",
    "usage_tap",
    "upstream_response",
    "upstream_httparse",
];

/// Runs the check of the target `name` on `data`. Panics on an unknown name.
pub fn check(name: &str, data: &[u8]) {
    match name {
        "key_intake" => check_key_intake(data),
        "sse_reader" => check_sse_reader(data, None),
        "bridge_request" => check_bridge_request(data),
        "bridge_stream" => check_bridge_stream(data),
        "wrapper_request" => check_wrapper_request(data),
        "wrapper_stream" => check_wrapper_stream(data),
        "framing_scanner" => check_framing_scanner(data),
        "usage_tap" => check_usage_tap(data),
        "upstream_response" => check_upstream_response(data),
        "upstream_httparse" => check_upstream_httparse(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// Splits `data` at NUL bytes: the stream targets' list of event `data` texts.
pub fn split_events(data: &[u8]) -> impl Iterator<Item = String> + '_ {
    data.split(|b| *b == 0)
        .map(|part| String::from_utf8_lossy(part).into_owned())
}

// ------------------------------------------------------------------------------- key intake

/// A reader that hands out its input in chosen piece sizes. A size of 0 makes one read fail
/// with `Interrupted` (which key intake must retry); 255 makes one read fail with a hard error.
struct PieceReader<'a> {
    input: &'a [u8],
    sizes: &'a [u8],
    next_size: usize,
    hard_error: bool,
    /// The last read was interrupted; the next one makes progress (no endless retries).
    interrupted: bool,
}

impl Read for PieceReader<'_> {
    fn read(&mut self, into: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() || into.is_empty() {
            return Ok(0);
        }
        let size = if self.sizes.is_empty() {
            usize::MAX
        } else {
            let s = self.sizes[self.next_size % self.sizes.len()];
            self.next_size += 1;
            let was_interrupted = std::mem::take(&mut self.interrupted);
            match s {
                0 if !was_interrupted => {
                    self.interrupted = true;
                    return Err(io::ErrorKind::Interrupted.into());
                }
                0 => 1,
                255 => {
                    self.hard_error = true;
                    return Err(io::Error::other("injected"));
                }
                s => usize::from(s),
            }
        };
        let n = size.min(into.len()).min(self.input.len());
        into[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

/// Every text a `KeyError` (other than a credential path) can display: windows of the input
/// that occur in these are not leaks.
fn key_error_texts() -> String {
    let mut all = String::new();
    for e in [
        KeyError::NoInput,
        KeyError::Empty,
        KeyError::InvalidUtf8,
        KeyError::InvalidCharacters,
        KeyError::TooLong,
        KeyError::Read(io::ErrorKind::Other),
        KeyError::Read(io::ErrorKind::Interrupted),
        KeyError::Lock(io::ErrorKind::Other),
    ] {
        all.push_str(&e.to_string());
        all.push('\n');
    }
    all
}

/// Input: byte 0 = flags (bit 0: `allow_unset`; bits 1-4: how many piece-size bytes follow),
/// then the piece sizes (see [`PieceReader`]), then the bytes the reader hands out.
///
/// Asserts: no panic; an accepted key matches `^[A-Za-z0-9_-]{1,1017}$` and equals the first
/// line (up to the first `\n`) with trailing CR/LF trimmed; `unset` is accepted only when
/// allowed; every input that is not such a key is rejected; an injected read error surfaces
/// as `KeyError::Read`; the error message never contains 8 consecutive bytes of the input.
pub fn check_key_intake(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let allow_unset = flags & 1 == 1;
    let n_sizes = usize::from((flags >> 1) & 0x0f).min(rest.len());
    let (sizes, input) = rest.split_at(n_sizes);
    let mut reader = PieceReader {
        input,
        sizes,
        next_size: 0,
        hard_error: false,
        interrupted: false,
    };
    let result = key::read_key(&mut reader, allow_unset);

    let line = match memchr_newline(input) {
        Some(i) => &input[..i],
        None => input,
    };
    let mut expected_key = line;
    while let [head @ .., b'\r' | b'\n'] = expected_key {
        expected_key = head;
    }
    let valid_key = !expected_key.is_empty()
        && expected_key.len() <= MAX_KEY_LEN
        && expected_key
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-');
    let unset = allow_unset && expected_key == b"unset";

    match result {
        Ok(KeySource::Key(header)) => {
            assert!(!reader.hard_error, "key accepted after a read error");
            let got = header
                .bytes()
                .strip_prefix(b"Bearer ")
                .expect("header starts with `Bearer `");
            assert!(
                valid_key && !unset,
                "accepted a {}-byte key from a first line of {} bytes that is not a valid key \
                 (line ends {:?})",
                got.len(),
                line.len(),
                String::from_utf8_lossy(&line[line.len().saturating_sub(12)..])
            );
            assert_eq!(
                got, expected_key,
                "accepted key differs from the first line"
            );
            release_key_page(header.bytes());
        }
        Ok(KeySource::NotConfigured) => {
            assert!(!reader.hard_error, "`unset` accepted after a read error");
            assert!(unset, "NotConfigured without an allowed `unset` line");
        }
        Err(e) => {
            if reader.hard_error {
                assert_eq!(e, KeyError::Read(io::ErrorKind::Other));
            } else {
                assert!(
                    matches!(e, KeyError::Lock(_)) || !(valid_key || unset),
                    "rejected a valid key line ({e:?}): {:?}",
                    String::from_utf8_lossy(line)
                );
                assert_eq!(
                    input.is_empty(),
                    e == KeyError::NoInput,
                    "NoInput exactly when there is no input"
                );
            }
            let message = e.to_string();
            let known = key_error_texts();
            for window in input.windows(8) {
                if let Ok(text) = std::str::from_utf8(window) {
                    assert!(
                        !message.contains(text) || known.contains(text),
                        "error message {message:?} contains input bytes {text:?}"
                    );
                }
            }
        }
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == b'\n')
}

/// Key intake keeps every key in its own locked page for the life of the process. A fuzzer
/// accepts millions of keys, so it gives the page back once the key has been checked.
fn release_key_page(header: &[u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let start = header.as_ptr() as usize & !(page - 1);
    // SAFETY: the page was mapped by key intake for this key alone; the `ApiKeyHeader` and the
    // header value that point at it are no longer used after this call.
    unsafe {
        libc::munmap(start as *mut libc::c_void, page);
    }
}

// -------------------------------------------------------------------------------- SSE reader

/// What one run of the reader produced: events, then possibly the error that stopped it.
/// Which error it was (`EventTooLarge` or `InvalidUtf8`, when a line is both) may depend on
/// where the chunks end; that an error came, and where, may not.
#[derive(Debug, PartialEq, Eq)]
enum SseItem {
    Event { event: String, data: String },
    Error,
}

fn drain(reader: &mut SseReader, items: &mut Vec<SseItem>) -> bool {
    loop {
        match reader.next_event() {
            Ok(Some(e)) => items.push(SseItem::Event {
                event: e.event.to_string(),
                data: e.data.to_string(),
            }),
            Ok(None) => return true,
            Err(e) => {
                let _: SseError = e;
                items.push(SseItem::Error);
                return false;
            }
        }
    }
}

fn finish(reader: &mut SseReader, items: &mut Vec<SseItem>) {
    match reader.finish() {
        Ok(Some(e)) => items.push(SseItem::Event {
            event: e.event.to_string(),
            data: e.data.to_string(),
        }),
        Ok(None) => {}
        Err(_) => items.push(SseItem::Error),
    }
}

/// Reads heap use for the memory bound of [`check_sse_reader`] (the fuzz target counts its
/// allocations; the regression test has no probe).
pub trait HeapProbe {
    /// Starts a measurement; returns the bytes live now.
    fn reset_peak(&self) -> usize;
    /// The most bytes live at once since `reset_peak`.
    fn peak(&self) -> usize;
}

/// Input: byte 0 = limit (`0x80` set: `1 + 2 * (b & 0x7f)` bytes, else the default 16 MiB);
/// byte 1 = low 4 bits: how many piece-size bytes follow, high 4 bits: repetitions / 8 for the
/// memory run (0: none; the run stops at 160 KiB); then the piece sizes (each `size + 1` bytes, cycled); then the body.
///
/// Asserts: no panic; the body pushed whole and pushed in pieces gives the same events and the
/// same error; no event's data exceeds the limit; and, with a probe, the body repeated many
/// times through one reader keeps the heap within a bound set by the limit and the piece
/// size, not by the length of the stream.
pub fn check_sse_reader(data: &[u8], probe: Option<&dyn HeapProbe>) {
    let [limit_byte, layout, rest @ ..] = data else {
        return;
    };
    let limit = if limit_byte & 0x80 != 0 {
        1 + 2 * usize::from(limit_byte & 0x7f)
    } else {
        DEFAULT_MAX_EVENT_BYTES
    };
    let n_sizes = usize::from(layout & 0x0f).min(rest.len());
    let repetitions = usize::from(layout >> 4) * 8;
    let (sizes, body) = rest.split_at(n_sizes);
    let piece = |i: usize| -> usize {
        if sizes.is_empty() {
            7
        } else {
            usize::from(sizes[i % sizes.len()]) + 1
        }
    };

    let mut whole = Vec::new();
    let mut reader = SseReader::new(limit);
    reader.push(body);
    if drain(&mut reader, &mut whole) {
        finish(&mut reader, &mut whole);
    }

    let mut split = Vec::new();
    let mut reader = SseReader::new(limit);
    let mut at = 0;
    let mut i = 0;
    let mut ok = true;
    while at < body.len() && ok {
        let end = (at + piece(i)).min(body.len());
        reader.push(&body[at..end]);
        ok = drain(&mut reader, &mut split);
        at = end;
        i += 1;
    }
    if ok {
        finish(&mut reader, &mut split);
    }

    assert_eq!(whole, split, "whole and split pushes disagree");
    for item in &whole {
        if let SseItem::Event { data, .. } = item {
            assert!(
                data.len() <= limit,
                "event data of {} > limit {limit}",
                data.len()
            );
        }
    }

    let Some(probe) = probe else {
        return;
    };
    if body.is_empty() || repetitions == 0 {
        return;
    }
    let max_piece = (0..sizes.len().max(1)).map(piece).max().unwrap_or(7);
    let base = probe.reset_peak();
    let mut reader = SseReader::new(limit);
    // Long enough to pass the reader's 64 KiB compaction point, short enough to stay fast.
    let total = (body.len() * repetitions).min(160 * 1024);
    let (mut at, mut i) = (0, 0);
    let mut buffer = vec![0u8; max_piece];
    while at < total {
        let len = piece(i).min(total - at);
        for (k, b) in buffer[..len].iter_mut().enumerate() {
            *b = body[(at + k) % body.len()];
        }
        reader.push(&buffer[..len]);
        if !drain_quietly(&mut reader) {
            break;
        }
        at += len;
        i += 1;
    }
    let used = probe.peak().saturating_sub(base);
    let bound =
        2 * (64 * 1024 + limit.min(total) + max_piece) + 8 * (limit.min(total) + max_piece) + 8192;
    assert!(
        used <= bound,
        "reader held {used} heap bytes for a {total}-byte stream (limit {limit}, pieces <= {max_piece}, bound {bound})"
    );
    drop(reader);
}

fn drain_quietly(reader: &mut SseReader) -> bool {
    loop {
        match reader.next_event() {
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

// ---------------------------------------------------------------------- parsing our output

/// Parses converter output as an event stream; every `data` must be JSON except `[DONE]`.
/// Returns `(event name, data)` pairs.
fn output_events(out: &[u8]) -> Vec<(String, String)> {
    let mut reader = SseReader::default();
    reader.push(out);
    let mut events = Vec::new();
    loop {
        match reader.next_event() {
            Ok(Some(e)) => events.push((e.event.to_string(), e.data.to_string())),
            Ok(None) => break,
            Err(e) => panic!("converter output is not a valid event stream: {e}"),
        }
    }
    assert!(
        matches!(reader.finish(), Ok(None)),
        "converter output ends in the middle of an event"
    );
    events
}

// ------------------------------------------------------------------ bridge: request side

/// Input: a JSON Responses request body. Asserts: no panic; an `Ok` plan serializes, its chat
/// body is an object with `messages`; a converter built from its meta writes a conforming
/// stream both when the upstream finishes at once and when it is cut; an `Err` is a 4xx/5xx
/// with a JSON error body.
pub fn check_bridge_request(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match responses_to_chat(&body) {
        Ok(plan) => {
            let text = serde_json::to_string(&plan.chat_body).expect("chat body serializes");
            let back: Value = serde_json::from_str(&text).expect("chat body is JSON");
            assert!(back["messages"].is_array(), "chat body without messages");
            for end in [Some("[DONE]"), None] {
                let mut converter = ChatStreamConverter::new(plan.meta.clone(), "resp_x", 0);
                let mut out = Vec::new();
                if let Some(data) = end {
                    converter
                        .push_sse_data(data, &mut out)
                        .expect("[DONE] is accepted");
                }
                converter.end_of_stream(&mut out);
                check_responses_output(&out, "request meta");
                check_final_response(&converter);
            }
        }
        Err(e) => {
            assert!((400..600).contains(&e.status), "error status {}", e.status);
            let body: Value = serde_json::from_str(&e.to_body()).expect("error body is JSON");
            assert!(body["error"]["message"].is_string(), "error body: {body}");
        }
    }
}

// ------------------------------------------------------------------- bridge: stream side

/// The request whose tools the stream fixtures call (`exec_command`, a namespaced tool, a
/// freeform tool), plus echoed fields.
fn fixture_meta() -> &'static StreamMeta {
    static META: OnceLock<StreamMeta> = OnceLock::new();
    META.get_or_init(|| {
        let request = json!({
            "model": "gpt-4.1",
            "instructions": "Be brief.",
            "input": "hi",
            "stream": true,
            "temperature": 0.5,
            "parallel_tool_calls": true,
            "tool_choice": "auto",
            "reasoning": {"effort": "low", "summary": "auto"},
            "tools": [
                {"type": "function", "name": "exec_command", "description": "run",
                 "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
                {"type": "function", "name": "get_goal",
                 "parameters": {"type": "object", "properties": {}}},
                {"type": "custom", "name": "apply_patch", "description": "patch"},
                {"type": "namespace", "name": "multi_agent_v1", "description": "agents",
                 "tools": [{"type": "function", "name": "spawn_agent",
                            "parameters": {"type": "object", "properties": {}}}]}
            ]
        });
        responses_to_chat(&request)
            .expect("the fixture request converts")
            .meta
    })
}

/// Checks a converter's output: a valid event stream, `event:` names matching `type`, a
/// conforming Responses stream with exactly one terminal event, which is the last.
fn check_responses_output(out: &[u8], what: &str) {
    let events = output_events(out);
    let mut values = Vec::with_capacity(events.len());
    for (name, data) in &events {
        let value: Value = serde_json::from_str(data)
            .unwrap_or_else(|e| panic!("{what}: event data is not JSON ({e}): {data}"));
        assert_eq!(
            value["type"].as_str(),
            Some(name.as_str()),
            "{what}: `event:` line differs from `type`"
        );
        values.push(value);
    }
    let terminal = values
        .iter()
        .filter(|v| {
            matches!(
                v["type"].as_str(),
                Some("response.completed" | "response.incomplete" | "response.failed")
            )
        })
        .count();
    assert_eq!(terminal, 1, "{what}: {terminal} terminal events");
    if let Err(problems) = check_responses_stream(&values) {
        if untolerated(&problems, "\n").is_empty() {
            return;
        }
        panic!(
            "{what}: output fails the Responses stream check:\n{problems}\n--- output:\n{}",
            String::from_utf8_lossy(out)
        );
    }
}

fn check_final_response(converter: &ChatStreamConverter) {
    assert!(
        converter.is_terminated(),
        "not terminated after end_of_stream"
    );
    if let Err(problems) = check_response_object(&converter.final_response()) {
        if untolerated(&problems, "\n").is_empty() {
            return;
        }
        panic!(
            "final_response fails the Response check:\n{problems}\n--- response:\n{}",
            converter.final_response()
        );
    }
}

/// Input: byte 0 = flags (bit 0: `assume_think_open`; bit 1: the meta of a request with the
/// fixtures' tools, else that of a minimal request); then the upstream events' `data` texts separated
/// by NUL bytes. Each goes through `push_sse_data` until one fails (as the worker does), then
/// `end_of_stream`.
///
/// Asserts: no panic; the output is a conforming Responses stream with exactly one terminal
/// event; `final_response` is a valid `Response`.
pub fn check_bridge_stream(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut meta = if flags & 2 != 0 {
        fixture_meta().clone()
    } else {
        responses_to_chat(&json!({"model": "m", "input": "hi"}))
            .expect("a minimal request converts")
            .meta
    };
    meta.assume_think_open = flags & 1 != 0;
    let mut converter = ChatStreamConverter::new(meta, "resp_x", 0);
    let mut out = Vec::new();
    for chunk in split_events(rest) {
        if converter.push_sse_data(&chunk, &mut out).is_err() {
            assert!(converter.is_terminated(), "an error left the response open");
            break;
        }
    }
    converter.end_of_stream(&mut out);
    check_responses_output(&out, "bridge stream");
    check_final_response(&converter);
}

// ----------------------------------------------------------------- wrapper: request side

/// Input: a JSON Chat Completions or legacy Completions body; both conversions run on it.
/// Asserts: no panic; `Ok` plans serialize to an object with `stream: true` and keep the
/// client's `stream` flag; errors are 4xx/5xx with a JSON body.
pub fn check_wrapper_request(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let settings = WrapperSettings::default();
    let ctx = ConvertContext {
        settings: &settings,
        session_id: Some("s"),
        instructions: None,
    };
    // A legacy Completions body gives one plan per prompt.
    let completions = completion_to_responses(&body, &ctx);
    if let Ok(plans) = &completions {
        assert!(
            (1..=MAX_PROMPTS).contains(&plans.len()),
            "completion_to_responses: {} plans",
            plans.len()
        );
    }
    for (what, result) in [
        (
            "chat_to_responses",
            chat_to_responses(&body, &ctx).map(|plan| vec![plan]),
        ),
        ("completion_to_responses", completions),
    ] {
        match result {
            Ok(plans) => {
                for plan in plans {
                    let text = serde_json::to_string(&plan.upstream_body).unwrap_or_else(|e| {
                        panic!("{what}: upstream body does not serialize: {e}")
                    });
                    let back: Value = serde_json::from_str(&text).expect("upstream body is JSON");
                    assert!(back.is_object(), "{what}: upstream body is not an object");
                    assert!(!plan.client.model.is_empty(), "{what}: empty client model");
                    // Bridge-to-chat mode converts the upstream body once more; it must not
                    // panic.
                    let _ = responses_to_chat(&plan.upstream_body);
                }
            }
            Err(e) => {
                assert!(
                    (400..600).contains(&e.status),
                    "{what}: status {}",
                    e.status
                );
                let body: Value = serde_json::from_str(&e.to_body()).expect("error body is JSON");
                assert!(
                    body["error"]["message"].is_string(),
                    "{what}: error body {body}"
                );
            }
        }
    }
}

// ------------------------------------------------------------------ wrapper: stream side

/// Input: byte 0 = flags (bits 0-2: reasoning output mode, index into openai, r1, o3, tagged,
/// hidden, all; bit 3: `include_usage`; bit 4: legacy Completions instead of Chat; bit 5 with
/// bit 4: two prompts, the events fed as each prompt's upstream stream in turn); then the
/// upstream Responses events' `data` texts separated by NUL bytes. Each is pushed until one
/// fails, then `finish`.
///
/// Asserts: no panic; the output's data lines (with `[DONE]`) pass the chat or completions
/// stream check; a completed stream's final body passes the body check.
pub fn check_wrapper_stream(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let modes = ReasoningOutputMode::every();
    let mode = modes[usize::from(flags & 7) % modes.len()];
    let meta = ClientMeta {
        stream: true,
        include_usage: flags & 8 != 0,
        model: "gpt-5".into(),
    };
    let completions = flags & 16 != 0;
    let mut out = Vec::new();
    let (outcome, body) = if completions {
        let prompts = if flags & 32 != 0 { 2 } else { 1 };
        let mut stream = CompletionStream::for_prompts(&meta, prompts, 0, "cmpl-x");
        for _ in 0..prompts {
            for event in split_events(rest) {
                if stream.push_event(&event, &mut out).is_err() {
                    break;
                }
            }
            stream.finish(&mut out);
        }
        (stream.outcome().clone(), stream.final_completion())
    } else {
        let mut stream = ChatStream::new(&meta, mode, 0, "chatcmpl-x");
        for event in split_events(rest) {
            if stream.push_event(&event, &mut out).is_err() {
                break;
            }
        }
        stream.finish(&mut out);
        (stream.outcome().clone(), stream.final_completion())
    };
    assert_ne!(
        outcome,
        StreamOutcome::InProgress,
        "in progress after finish"
    );
    let lines: Vec<String> = output_events(&out).into_iter().map(|(_, d)| d).collect();
    let checked = if completions {
        check_completions_stream(&lines)
    } else {
        check_chat_stream(&lines)
    };
    if let Err(problems) = checked {
        if untolerated(&problems, "; ").is_empty() {
            return;
        }
        panic!(
            "wrapper stream ({}, {mode:?}) fails the stream check: {problems}\n--- output:\n{}",
            if completions { "completions" } else { "chat" },
            String::from_utf8_lossy(&out)
        );
    }
    if outcome == StreamOutcome::Completed {
        let checked = if completions {
            check_completion(&body)
        } else {
            check_chat_completion(&body)
        };
        if let Err(problems) = checked {
            if untolerated(&problems, "; ").is_empty() {
                return;
            }
            panic!("final body fails the body check: {problems}\n--- body:\n{body}");
        }
    }
}

// -------------------------------------------------------------------------- framing scanner

/// Layout: byte 0 low nibble = number of piece sizes, then the sizes (each `+1`, used in
/// turn), then the raw connection bytes. The verdict on the bytes fed whole equals the verdict
/// on them fed in those pieces, and nothing panics.
pub fn check_framing_scanner(data: &[u8]) {
    let Some((&header, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(header & 0x0f).min(rest.len());
    let (sizes, body) = rest.split_at(count);
    let mut whole = FramingScanner::default();
    whole.feed(body);
    let mut pieces = FramingScanner::default();
    let mut at = 0;
    for turn in 0.. {
        if at >= body.len() {
            break;
        }
        let size = match sizes.len() {
            0 => body.len(),
            n => usize::from(sizes[turn % n]) + 1,
        };
        let end = (at + size).min(body.len());
        pieces.feed(&body[at..end]);
        at = end;
    }
    assert_eq!(
        whole.refused(),
        pieces.refused(),
        "the verdict depends on how the bytes were split"
    );
}

/// `usage_tap`: raw response-body bytes. The tap, which only splits an event stream at its
/// blank lines and parses the events that mention usage, finds the same usage as parsing every
/// event with [`SseReader`] (where that reader accepts the whole stream), whether the body is
/// fed whole, in thirds or in 7-byte pieces; JSON bodies (first non-blank byte `{`) are another
/// mode and only have to give the same answer in any pieces.
pub fn check_usage_tap(data: &[u8]) {
    // As the proxy runs it (a short stream copied, then scanned whole at the end), and
    // scanned piece by piece as it passes, which is what longer streams get.
    let run = |new_tap: fn() -> UsageTap, piece: usize| {
        let mut tap = new_tap();
        for chunk in data.chunks(piece.max(1)) {
            tap.observe(chunk);
        }
        tap.finish()
    };
    let whole = run(UsageTap::new, data.len());
    for piece in [data.len(), 1 + data.len() / 3, 7] {
        assert_eq!(run(UsageTap::new, piece), whole, "fed in pieces of {piece}");
        assert_eq!(
            run(UsageTap::scanning_as_it_passes, piece),
            whole,
            "scanned as it passes, in pieces of {piece}"
        );
    }
    if data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return;
    }
    let mut reader = SseReader::new(DEFAULT_MAX_EVENT_BYTES);
    let mut every_event = UsageTap::new();
    reader.push(data);
    loop {
        match reader.next_event() {
            Ok(Some(event)) => every_event.observe_event(event.event, event.data),
            Ok(None) => break,
            Err(_) => return,
        }
    }
    match reader.finish() {
        Ok(Some(event)) => every_event.observe_event(event.event, event.data),
        Ok(None) => {}
        Err(_) => return,
    }
    assert_eq!(whole, every_event.finish(), "against parsing every event");
}

// ------------------------------------------------------------------------ upstream response

/// What reading one response from `data` gave: the final head's status and framing (or the
/// head error), the body, how the body ended, and the bytes left after it.
#[derive(Debug, PartialEq, Eq)]
struct ResponseRead {
    head: Result<(u16, Framing, bool), String>,
    body: Vec<u8>,
    ending: Result<&'static str, String>,
    rest: Vec<u8>,
}

/// Reads one response the way the direct upstream client does, with the bytes arriving in
/// pieces of `piece`: the head is parsed from everything read so far (interim heads skipped),
/// the body decoded from what follows, the end of `data` being the end of the connection.
fn read_response(data: &[u8], piece: usize) -> ResponseRead {
    let mut pieces = data.chunks(piece.max(1));
    let mut buf = bytes::BytesMut::new();
    let head = loop {
        match parse_response_head(&buf) {
            Ok(HeadParse::Interim(len)) => {
                let _ = buf.split_to(len);
            }
            Ok(HeadParse::Complete(head, len)) => {
                let _ = buf.split_to(len);
                break Ok(head);
            }
            Ok(HeadParse::Partial) => match pieces.next() {
                Some(more) => buf.extend_from_slice(more),
                None => break Err("ended before the head".to_string()),
            },
            Err(error) => break Err(error.to_string()),
        }
    };
    let head = match head {
        Ok(head) => head,
        Err(error) => {
            return ResponseRead {
                head: Err(error),
                body: Vec::new(),
                ending: Ok("no body"),
                rest: Vec::new(),
            }
        }
    };
    let mut decoder = BodyDecoder::new(head.framing);
    let mut body = Vec::new();
    let ending = loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(data)) => {
                assert!(!data.is_empty(), "an empty data piece");
                body.extend_from_slice(&data);
            }
            Ok(Decoded::End) => break Ok("end"),
            Ok(Decoded::NeedMore) => match pieces.next() {
                Some(more) => buf.extend_from_slice(more),
                None => break decoder.at_eof().map(|()| "eof").map_err(|e| e.to_string()),
            },
            Err(error) => break Err(error.to_string()),
        }
    };
    let mut rest = buf.to_vec();
    if ending == Ok("end") {
        for more in pieces {
            rest.extend_from_slice(more);
        }
    } else {
        rest.clear();
    }
    if let (Framing::Length(n), Ok(_)) = (head.framing, &ending) {
        assert_eq!(
            body.len() as u64,
            n,
            "a length-framed body of another length"
        );
    }
    if head.framing == Framing::UntilClose && ending.is_ok() {
        assert!(!head.reusable, "a close-delimited response marked reusable");
    }
    ResponseRead {
        head: Ok((head.status.as_u16(), head.framing, head.reusable)),
        body,
        ending,
        rest,
    }
}

/// `upstream_response`: the raw bytes an upstream sends on a connection. Reading the response
/// never panics or loops, and gives the same head, body, ending and left-over bytes whether
/// the bytes arrive all at once, in thirds, in 7-byte pieces or one at a time; a body framed by
/// a length has that length, and a body ended by the close is never marked reusable.
pub fn check_upstream_response(data: &[u8]) {
    let whole = read_response(data, data.len());
    for piece in [1 + data.len() / 3, 7, 1] {
        assert_eq!(
            read_response(data, piece),
            whole,
            "fed in pieces of {piece}"
        );
    }
}

// -------------------------------------------------------------- upstream response vs httparse

/// The head a plain reading of httparse's parse gives, to hold `parse_response_head` against:
/// framing by RFC 9112 §6.3, connection-specific fields by RFC 9110 §7.6.1.
#[derive(Debug)]
enum RefHead {
    Partial,
    Interim(usize),
    Complete {
        status: u16,
        consumed: usize,
        /// The fields the client is given: (lower-case name, value), sorted by name.
        headers: Vec<(String, Vec<u8>)>,
        framing: Framing,
        reusable: bool,
    },
    /// Why (read only through `Debug`, in a failure's message).
    Refused(#[allow(dead_code)] &'static str),
}

/// Most response headers the proxy accepts (`upstream_wire::MAX_HEADERS`).
const REF_MAX_HEADERS: usize = 128;
/// The chunk-line and trailer bounds of `upstream_wire` (private there).
const REF_CHUNK_LINE_LIMIT: usize = 4 * 1024;
const REF_TRAILER_LIMIT: usize = 16 * 1024;

/// Connection-specific fields (RFC 9110 §7.6.1) and the legacy proxy ones.
const REF_HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn ref_trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != b' ' && *b != b'\t');
    let end = bytes.iter().rposition(|b| *b != b' ' && *b != b'\t');
    match (start, end) {
        (Some(s), Some(e)) => &bytes[s..=e],
        _ => &[],
    }
}

fn reference_head(buf: &[u8]) -> RefHead {
    let window = &buf[..buf.len().min(upstream_wire::HEAD_LIMIT)];
    // httparse refuses a head with more fields than slots as soon as it meets one too many,
    // complete or not.
    let mut slots = vec![httparse::EMPTY_HEADER; REF_MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let consumed = match response.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if window.len() == upstream_wire::HEAD_LIMIT => {
            return RefHead::Refused("head too large")
        }
        Ok(httparse::Status::Partial) => return RefHead::Partial,
        Err(httparse::Error::TooManyHeaders) => return RefHead::Refused("too many headers"),
        Err(_) => return RefHead::Refused("httparse refuses it"),
    };
    let status = response.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        return RefHead::Refused("status out of range");
    }
    if status == 101 {
        return RefHead::Refused("upgrade");
    }
    if status < 200 {
        return RefHead::Interim(consumed);
    }
    let lower = |name: &str| name.to_ascii_lowercase();
    let mut lengths = Vec::new();
    let mut codings: Option<Vec<u8>> = None;
    let mut close = response.version != Some(1);
    let mut listed = Vec::new();
    for header in response.headers.iter() {
        match lower(header.name).as_str() {
            "content-length" => {
                for part in header.value.split(|b| *b == b',') {
                    let part = ref_trim(part);
                    if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                        return RefHead::Refused("bad content-length");
                    }
                    lengths.push(std::str::from_utf8(part).unwrap().parse::<u64>().unwrap());
                }
            }
            "transfer-encoding" => codings = Some(header.value.to_vec()),
            "connection" => {
                for token in header.value.split(|b| *b == b',') {
                    let token = String::from_utf8_lossy(ref_trim(token)).to_ascii_lowercase();
                    close |= token == "close";
                    listed.push(token);
                }
            }
            _ => {}
        }
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return RefHead::Refused("conflicting content-lengths");
    }
    let length = lengths.first().copied();
    let chunked = codings.as_ref().is_some_and(|value| {
        value
            .split(|b| *b == b',')
            .map(ref_trim)
            .rfind(|c| !c.is_empty())
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
    });
    let framing = if status == 204 || status == 304 {
        Framing::Empty
    } else if codings.is_some() {
        close |= length.is_some() || !chunked;
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let mut headers: Vec<(String, Vec<u8>)> = response
        .headers
        .iter()
        .map(|h| (lower(h.name), h.value.to_vec()))
        .filter(|(name, _)| {
            !REF_HOP_BY_HOP.contains(&name.as_str())
                && name != "content-length"
                && !listed.contains(name)
        })
        .collect();
    if let (Some(n), None, false) = (length, &codings, status == 204 || status == 304) {
        headers.push(("content-length".into(), n.to_string().into_bytes()));
    }
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    RefHead::Complete {
        status,
        consumed,
        headers,
        framing,
        reusable: !close && framing != Framing::UntilClose,
    }
}

/// How a chunked body reads by httparse's chunk-size and header parsers.
#[derive(Debug)]
enum RefBody {
    /// The body and the bytes it took; `stricter` names what `upstream_wire` refuses on
    /// purpose although httparse accepts it.
    Complete {
        body: Vec<u8>,
        used: usize,
        stricter: Option<&'static str>,
    },
    Incomplete,
    Refused,
}

fn reference_chunked(wire: &[u8]) -> RefBody {
    let (mut pos, mut body, mut stricter) = (0usize, Vec::new(), None);
    loop {
        let (used, size) = match httparse::parse_chunk_size(&wire[pos..]) {
            Err(_) => return RefBody::Refused,
            Ok(httparse::Status::Partial) => return RefBody::Incomplete,
            Ok(httparse::Status::Complete(found)) => found,
        };
        let line = &wire[pos..pos + used - 2];
        if !line.first().is_some_and(u8::is_ascii_hexdigit) {
            stricter = Some("a chunk-size line without digits");
        } else if line.contains(&b'\n') {
            stricter = Some("a bare LF in a chunk extension");
        } else if line.len() >= REF_CHUNK_LINE_LIMIT {
            stricter = Some("a chunk-size line of 4 KiB or more");
        }
        pos += used;
        if size == 0 {
            break;
        }
        let Ok(size) = usize::try_from(size) else {
            return RefBody::Incomplete;
        };
        if wire.len() - pos < size {
            return RefBody::Incomplete;
        }
        body.extend_from_slice(&wire[pos..pos + size]);
        pos += size;
        match wire.get(pos..pos + 2) {
            Some(b"\r\n") => pos += 2,
            Some(_) => return RefBody::Refused,
            None if wire[pos..].first().is_some_and(|b| *b != b'\r') => return RefBody::Refused,
            None => return RefBody::Incomplete,
        }
    }
    let trailer = &wire[pos..];
    // Past this many fields, the lenient reading below applies.
    let mut slots = vec![httparse::EMPTY_HEADER; 1024];
    let used = match httparse::parse_headers(trailer, &mut slots) {
        Ok(httparse::Status::Complete((used, _))) => used,
        Ok(httparse::Status::Partial) => return RefBody::Incomplete,
        // Trailer fields are dropped, never passed on: the proxy reads the section's lines
        // whatever they hold, strictly CRLF-ended, and so does the reference then.
        Err(_) => match crlf_lines_end(trailer) {
            Some(Some(used)) => used,
            Some(None) => return RefBody::Incomplete,
            None => return RefBody::Refused,
        },
    };
    if !no_bare_lf(&trailer[..used]) {
        stricter = stricter.or(Some("a trailer line ended by a bare LF"));
    }
    if used >= REF_TRAILER_LIMIT {
        stricter = stricter.or(Some("a trailer section of 16 KiB or more"));
    }
    RefBody::Complete {
        body,
        used: pos + used,
        stricter,
    }
}

/// Where a section of CRLF-ended lines ends (after its empty line): `Some(None)` when `bytes`
/// ends first, `None` when a CR without its LF or an LF without its CR comes first.
fn crlf_lines_end(bytes: &[u8]) -> Option<Option<usize>> {
    let (mut i, mut line_empty) = (0, true);
    while i < bytes.len() {
        match bytes[i] {
            b'\r' => match bytes.get(i + 1) {
                None => return Some(None),
                Some(b'\n') if line_empty => return Some(Some(i + 2)),
                Some(b'\n') => {
                    line_empty = true;
                    i += 2;
                }
                Some(_) => return None,
            },
            b'\n' => return None,
            _ => {
                line_empty = false;
                i += 1;
            }
        }
    }
    Some(None)
}

/// Whether every LF in `bytes` follows a CR.
fn no_bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .all(|(i, b)| *b != b'\n' || (i > 0 && bytes[i - 1] == b'\r'))
}

/// `upstream_httparse`: the raw bytes an upstream sends on a connection, read by the direct
/// upstream's parser (`upstream_wire`) and by httparse (the head, chunk-size lines and
/// trailer section) with RFC 9112's framing rules. Where httparse accepts a head, ours reads
/// the same status, consumed length, client headers, framing and reuse; where httparse (or
/// the framing rules) refuse one, ours refuses it too. A chunked body ours reads whole,
/// httparse reads whole with the same bytes and the same end; ours may refuse one httparse
/// accepts only for a stricter rule it documents (no digits, a bare LF, a 4 KiB line, a
/// 16 KiB trailer section).
pub fn check_upstream_httparse(data: &[u8]) {
    // Interim heads, skipped by both.
    let mut at = 0;
    let (consumed, framing) = loop {
        let ours = parse_response_head(&data[at..]);
        match (reference_head(&data[at..]), ours) {
            (RefHead::Interim(n), Ok(HeadParse::Interim(m))) if n == m => at += n,
            (RefHead::Partial, Ok(HeadParse::Partial)) => return,
            (RefHead::Refused(_), Err(_)) => return,
            (
                RefHead::Complete {
                    status,
                    consumed,
                    headers,
                    framing,
                    reusable,
                },
                Ok(HeadParse::Complete(head, used)),
            ) => {
                let mut ours: Vec<(String, Vec<u8>)> = head
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect();
                ours.sort_by(|a, b| a.0.cmp(&b.0));
                assert_eq!(
                    (head.status.as_u16(), used, head.framing, head.reusable),
                    (status, consumed, framing, reusable),
                    "status, head length, framing or reuse differ from httparse's reading"
                );
                assert_eq!(ours, headers, "the client's headers differ");
                break (consumed, framing);
            }
            (reference, ours) => {
                panic!("heads differ at {at}: httparse {reference:?}, ours {ours:?}")
            }
        }
    };
    if framing != Framing::Chunked {
        return;
    }
    let wire = &data[at + consumed..];
    let ours = read_response(data, data.len());
    match (reference_chunked(wire), &ours.ending) {
        (RefBody::Complete { body, used, .. }, Ok("end")) => {
            assert_eq!(ours.body, body, "the chunked body differs");
            assert_eq!(ours.rest, &wire[used..], "the chunked body ends elsewhere");
        }
        (RefBody::Complete { stricter, .. }, Err(error)) => {
            assert!(
                stricter.is_some(),
                "ours refuses a chunked body httparse reads ({error})"
            );
        }
        (RefBody::Incomplete | RefBody::Refused, Err(_)) => {}
        (reference, ending) => {
            panic!("chunked bodies differ: httparse {reference:?}, ours {ending:?}")
        }
    }
}
