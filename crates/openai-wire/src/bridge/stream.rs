//! Chat Completions chunks → Responses API events, and the final `Response` object.
//!
//! [`ChatStreamConverter`] is a state machine fed one upstream chunk at a time; it appends
//! complete SSE events (`event: <type>` + `data: <json>`) to the caller's buffer. The work per
//! chunk does not depend on how long the stream already is: chunks are parsed into borrowed
//! typed structs, events are serialized from typed structs, and only the texts needed for the
//! `.done` events are accumulated. The same converter serves `stream: false`: feed the whole
//! upstream stream, discard the events, and return [`ChatStreamConverter::final_response`].
//!
//! Decisions where the wire formats leave room:
//! - Reasoning (`delta.reasoning_content`, `delta.reasoning`, or `<think>…</think>` at the start
//!   of the content) becomes a `reasoning` item streamed as a reasoning *summary*
//!   (`reasoning_summary_part.added`, `reasoning_summary_text.delta` with `summary_index`), the
//!   form Codex renders. A reasoning item is closed before text or a tool call starts.
//! - Tool calls are keyed by the chunk's `index`; a fragment whose `id` differs from the call at
//!   that index starts a new call (some upstreams put every call at index 0). Calls stay open
//!   until the choice finishes, so interleaved parallel calls are each assembled correctly.
//! - Freeform (custom) tool calls are buffered and emitted at the end of the call with the
//!   `input` decoded from the JSON arguments (the raw arguments if they are not that JSON).
//! - A function call whose arguments stayed empty gets `{}` so that clients can parse them.
//! - Items are closed when `finish_reason` arrives; the terminal event waits for `[DONE]` or the
//!   end of the body, because usage often follows in a chunk with empty `choices`. The end of
//!   the body after a `finish_reason` counts as complete; without one it is a failure.
//! - `usage.total_tokens` is always `input_tokens + output_tokens`; missing counts are 0.
//! - Failure codes: what Codex acts on (`rate_limit_exceeded`, `context_length_exceeded`,
//!   `insufficient_quota`) when the upstream says so, else `server_error`.
//!
//! Uses: `sse`, `usage` and itoa, memchr, serde, serde_json.

use std::cell::Cell;
use std::fmt;

use crate::chat::{text_of, Text, ToolCallDelta};
use crate::usage::WireUsage;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::bridge::request::{StreamMeta, ToolKind, ToolTarget, CUSTOM_TOOL_ARGUMENT};
use crate::sse::write_json_event;

// ------------------------------------------------------------------- upstream chunk types

#[derive(Deserialize)]
struct ChatChunk<'a> {
    #[serde(borrow, default)]
    choices: FirstChoice<'a>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    error: Option<ChunkError<'a>>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow, default)]
    delta: Option<ChunkDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct ChunkDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Text<'a>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Text<'a>>,
    #[serde(borrow, default)]
    reasoning: Option<Text<'a>>,
    #[serde(borrow, default)]
    refusal: Option<Text<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

/// The choice with index 0, if the chunk has one (bridge requests ask for one choice); other
/// choices are skipped without allocating.
#[derive(Default)]
struct FirstChoice<'a>(Option<ChunkChoice<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstChoice<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FirstChoiceVisitor(std::marker::PhantomData))
    }
}

struct FirstChoiceVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de> Visitor<'de> for FirstChoiceVisitor<'de> {
    type Value = FirstChoice<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of choices")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(FirstChoice(None))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(FirstChoice(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut first = None;
        while let Some(choice) = seq.next_element::<ChunkChoice<'de>>()? {
            if choice.index == 0 && first.is_none() {
                first = Some(choice);
            }
        }
        Ok(FirstChoice(first))
    }
}

/// An `error` member inside a chunk: an object (`{message, type, code}`) or a bare string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ChunkError<'a> {
    Object {
        #[serde(borrow, default)]
        message: Option<Text<'a>>,
        #[serde(borrow, default, rename = "type")]
        kind: Option<Text<'a>>,
        #[serde(default)]
        code: Option<Value>,
    },
    Message(#[serde(borrow)] Text<'a>),
}

// ---------------------------------------------------------------------- outgoing events

const NO_LOGPROBS: &[u8] = &[];
const NO_ANNOTATIONS: &[u8] = &[];

/// Any `*.delta` event. Written by [`write_delta_event`] on the hot path; this struct is the
/// reference it is tested against.
#[cfg(test)]
#[derive(Serialize)]
struct DeltaEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary_index: Option<u32>,
    delta: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<&'static [u8]>,
}

/// Which delta event to write.
#[derive(Clone, Copy, Debug)]
enum DeltaKind {
    OutputText,
    ReasoningSummary,
    FunctionArguments,
    CustomInput,
}

impl DeltaKind {
    fn event_name(self) -> &'static str {
        match self {
            DeltaKind::OutputText => "response.output_text.delta",
            DeltaKind::ReasoningSummary => "response.reasoning_summary_text.delta",
            DeltaKind::FunctionArguments => "response.function_call_arguments.delta",
            DeltaKind::CustomInput => "response.custom_tool_call_input.delta",
        }
    }
}

/// Appends one `*.delta` event, byte for byte what [`write_json_event`] writes for the same
/// fields, without going through the generic serializer: this runs once per upstream chunk
/// and the fixed parts of the event are just copied. Strings are escaped by serde_json.
fn write_delta_event(
    out: &mut Vec<u8>,
    kind: DeltaKind,
    sequence_number: u64,
    item_id: &str,
    output_index: usize,
    delta: &str,
) {
    let name = kind.event_name().as_bytes();
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name);
    out.extend_from_slice(b"\ndata: {\"type\":\"");
    out.extend_from_slice(name);
    out.extend_from_slice(b"\",\"sequence_number\":");
    push_decimal(out, sequence_number);
    out.extend_from_slice(b",\"item_id\":");
    push_json_str(out, item_id);
    out.extend_from_slice(b",\"output_index\":");
    push_decimal(out, output_index as u64);
    match kind {
        DeltaKind::OutputText => out.extend_from_slice(b",\"content_index\":0"),
        DeltaKind::ReasoningSummary => out.extend_from_slice(b",\"summary_index\":0"),
        DeltaKind::FunctionArguments | DeltaKind::CustomInput => {}
    }
    out.extend_from_slice(b",\"delta\":");
    push_json_str(out, delta);
    if let DeltaKind::OutputText = kind {
        out.extend_from_slice(b",\"logprobs\":[]");
    }
    out.extend_from_slice(b"}\n\n");
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// One event: `type` and `sequence_number` followed by the event's own fields.
#[derive(Serialize)]
struct Event<B> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    #[serde(flatten)]
    body: B,
}

#[derive(Serialize)]
struct LifecycleBody<'a> {
    response: ResponseView<'a>,
}

#[derive(Serialize)]
struct ItemBody<'a> {
    output_index: usize,
    item: ItemView<'a>,
}

#[derive(Serialize)]
struct ContentPartBody<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: u32,
    part: TextPart<'a>,
}

#[derive(Serialize)]
struct TextDoneBody<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: u32,
    text: &'a str,
    logprobs: &'static [u8],
}

#[derive(Serialize)]
struct SummaryPartBody<'a> {
    item_id: &'a str,
    output_index: usize,
    summary_index: u32,
    part: SummaryPart<'a>,
}

#[derive(Serialize)]
struct SummaryDoneBody<'a> {
    item_id: &'a str,
    output_index: usize,
    summary_index: u32,
    text: &'a str,
}

#[derive(Serialize)]
struct ArgumentsDoneBody<'a> {
    item_id: &'a str,
    output_index: usize,
    arguments: &'a str,
}

#[derive(Serialize)]
struct CustomInputDoneBody<'a> {
    item_id: &'a str,
    output_index: usize,
    input: &'a str,
}

#[derive(Serialize)]
struct TextPart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    annotations: &'static [u8],
    logprobs: &'static [u8],
}

impl<'a> TextPart<'a> {
    fn output_text(text: &'a str) -> Self {
        TextPart {
            kind: "output_text",
            text,
            annotations: NO_ANNOTATIONS,
            logprobs: NO_LOGPROBS,
        }
    }
}

#[derive(Serialize)]
struct SummaryPart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

impl<'a> SummaryPart<'a> {
    fn summary_text(text: &'a str) -> Self {
        SummaryPart {
            kind: "summary_text",
            text,
        }
    }
}

/// An output item as the Responses API shows it.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ItemView<'a> {
    Message {
        id: &'a str,
        status: &'static str,
        role: &'static str,
        content: Vec<TextPart<'a>>,
    },
    Reasoning {
        id: &'a str,
        status: &'static str,
        summary: Vec<SummaryPart<'a>>,
    },
    FunctionCall {
        id: &'a str,
        status: &'static str,
        call_id: &'a str,
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        namespace: Option<&'a str>,
        arguments: &'a str,
    },
    CustomToolCall {
        id: &'a str,
        status: &'static str,
        call_id: &'a str,
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        namespace: Option<&'a str>,
        input: &'a str,
    },
}

/// The `Response` object carried by lifecycle events and returned for `stream: false`.
#[derive(Serialize)]
struct ResponseView<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    error: Option<ErrorView<'a>>,
    incomplete_details: Option<IncompleteView>,
    model: &'a str,
    output: Vec<ItemView<'a>>,
    usage: Option<UsageView>,
    #[serde(flatten)]
    echo: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct ErrorView<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct IncompleteView {
    reason: &'static str,
}

#[derive(Serialize, Clone, Copy, Default, Debug, PartialEq, Eq)]
struct UsageView {
    input_tokens: u64,
    input_tokens_details: InputDetailsView,
    output_tokens: u64,
    output_tokens_details: OutputDetailsView,
    total_tokens: u64,
}

#[derive(Serialize, Clone, Copy, Default, Debug, PartialEq, Eq)]
struct InputDetailsView {
    cached_tokens: u64,
    cache_write_tokens: u64,
}

#[derive(Serialize, Clone, Copy, Default, Debug, PartialEq, Eq)]
struct OutputDetailsView {
    reasoning_tokens: u64,
}

impl From<WireUsage> for UsageView {
    fn from(u: WireUsage) -> Self {
        let counts = u.counts();
        UsageView {
            input_tokens: counts.input,
            input_tokens_details: InputDetailsView {
                cached_tokens: counts.cached,
                cache_write_tokens: 0,
            },
            output_tokens: counts.output,
            output_tokens_details: OutputDetailsView {
                reasoning_tokens: counts.reasoning,
            },
            total_tokens: counts.input.saturating_add(counts.output),
        }
    }
}

// -------------------------------------------------------------------------- converter state

/// Why the stream failed; `response.failed` has already been written when this is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub code: String,
    pub message: String,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for StreamError {}

/// The upstream's `finish_reason` for the first choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FinishReason {
    Complete,
    Length,
    ContentFilter,
}

impl FinishReason {
    fn parse(reason: &str) -> Self {
        match reason {
            "length" => FinishReason::Length,
            "content_filter" => FinishReason::ContentFilter,
            _ => FinishReason::Complete,
        }
    }

    fn incomplete_reason(self) -> Option<&'static str> {
        match self {
            FinishReason::Complete => None,
            FinishReason::Length => Some("max_output_tokens"),
            FinishReason::ContentFilter => Some("content_filter"),
        }
    }
}

/// The terminal state of the response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Completed,
    Incomplete(&'static str),
    Failed { code: String, message: String },
}

#[derive(Debug)]
enum ItemBodyState {
    Reasoning { text: String },
    Message { text: String },
    Call(CallState),
}

#[derive(Debug)]
struct CallState {
    /// The chunk's `index` for this call.
    upstream_index: u64,
    call_id: String,
    target: ToolTarget,
    arguments: String,
    /// The decoded `input` of a custom tool call, set when the call closes.
    custom_input: String,
}

#[derive(Debug)]
struct OutputItem {
    id: String,
    /// `None` while open; the final status once `output_item.done` was sent.
    closed: Option<&'static str>,
    body: ItemBodyState,
}

impl OutputItem {
    fn view(&self) -> ItemView<'_> {
        let status = self.closed.unwrap_or("in_progress");
        let id = self.id.as_str();
        match &self.body {
            ItemBodyState::Message { text } => ItemView::Message {
                id,
                status,
                role: "assistant",
                content: if self.closed.is_some() {
                    vec![TextPart::output_text(text)]
                } else {
                    Vec::new()
                },
            },
            ItemBodyState::Reasoning { text } => ItemView::Reasoning {
                id,
                status,
                summary: if self.closed.is_some() {
                    vec![SummaryPart::summary_text(text)]
                } else {
                    Vec::new()
                },
            },
            ItemBodyState::Call(call) => {
                let open = self.closed.is_none();
                match call.target.kind {
                    ToolKind::Function => ItemView::FunctionCall {
                        id,
                        status,
                        call_id: &call.call_id,
                        name: &call.target.name,
                        namespace: call.target.namespace.as_deref(),
                        arguments: if open { "" } else { &call.arguments },
                    },
                    ToolKind::Custom => ItemView::CustomToolCall {
                        id,
                        status,
                        call_id: &call.call_id,
                        name: &call.target.name,
                        namespace: call.target.namespace.as_deref(),
                        input: if open { "" } else { &call.custom_input },
                    },
                }
            }
        }
    }
}

/// Where inline `<think>` parsing stands in the content of the first choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ThinkState {
    /// At the start of the content: a `<think>` here opens reasoning.
    Detecting,
    /// Inside a think block: content is reasoning until `</think>`.
    Thinking,
    /// Plain text; `trim_start` drops the whitespace that follows `</think>`.
    Text { trim_start: bool },
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// Converts one upstream chat stream into Responses events. See the module docs.
pub struct ChatStreamConverter {
    meta: StreamMeta,
    response_id: String,
    /// Unique part of item ids, taken from the response id.
    id_suffix: String,
    created_at: u64,
    /// The next event's `sequence_number` (a `Cell` so that events can borrow the items).
    sequence_number: Cell<u64>,
    items: Vec<OutputItem>,
    /// The open reasoning or message item, if any.
    open_text_item: Option<usize>,
    /// Open tool calls (indexes into `items`), in the order they started.
    open_calls: Vec<usize>,
    think: ThinkState,
    /// Content held back because it may be the start of a think tag.
    held: String,
    finish_reason: Option<FinishReason>,
    usage: Option<WireUsage>,
    started: bool,
    outcome: Option<Outcome>,
}

impl ChatStreamConverter {
    /// `response_id` should look like `resp_<unique>`; item ids reuse its unique part.
    /// `created_at` is in Unix seconds.
    pub fn new(meta: StreamMeta, response_id: &str, created_at: u64) -> Self {
        let id_suffix = response_id
            .strip_prefix("resp_")
            .unwrap_or(response_id)
            .to_string();
        let think = if meta.assume_think_open {
            ThinkState::Thinking
        } else {
            ThinkState::Detecting
        };
        ChatStreamConverter {
            meta,
            response_id: response_id.to_string(),
            id_suffix,
            created_at,
            sequence_number: Cell::new(0),
            items: Vec::new(),
            open_text_item: None,
            open_calls: Vec::new(),
            think,
            held: String::new(),
            finish_reason: None,
            usage: None,
            started: false,
            outcome: None,
        }
    }

    /// Writes `response.created` and `response.in_progress`. Called automatically by the
    /// other methods if the caller did not.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        self.emit_lifecycle("response.created", out);
        self.emit_lifecycle("response.in_progress", out);
    }

    /// Whether the terminal event has been written.
    pub fn is_terminated(&self) -> bool {
        self.outcome.is_some()
    }

    /// Handles the `data` of one upstream SSE event: `[DONE]` finishes the response, anything
    /// else is a chunk (see [`ChatStreamConverter::push_chunk`]).
    pub fn push_sse_data(&mut self, data: &str, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if data == "[DONE]" {
            self.finish(out);
            Ok(())
        } else {
            self.push_chunk(data, out)
        }
    }

    /// Handles one chat chunk (its JSON text). An `error` member or invalid JSON fails the
    /// response: `response.failed` is written and the error returned, so the caller stops
    /// reading. Chunks after the terminal event are ignored.
    pub fn push_chunk(&mut self, data: &str, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.outcome.is_some() {
            return Ok(());
        }
        self.start(out);
        let chunk: ChatChunk<'_> = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(err) => {
                let message = format!("upstream sent an invalid chunk: {err}");
                return Err(self.fail_with("server_error", &message, out));
            }
        };
        if let Some(error) = &chunk.error {
            let (code, message) = describe_chunk_error(error);
            return Err(self.fail_with(code, &message, out));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        if let Some(choice) = &chunk.choices.0 {
            if let Err(message) = self.push_choice(choice, out) {
                return Err(self.fail_with("server_error", message, out));
            }
        }
        Ok(())
    }

    /// The upstream said `[DONE]`: close everything and write the terminal event
    /// (`response.completed`, or `response.incomplete` after `length`/`content_filter`).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.outcome.is_some() {
            return;
        }
        self.start(out);
        let reason = self.finish_reason.unwrap_or(FinishReason::Complete);
        self.close_all(reason, out);
        let outcome = match reason.incomplete_reason() {
            None => Outcome::Completed,
            Some(why) => Outcome::Incomplete(why),
        };
        self.terminate(outcome, out);
    }

    /// The upstream body ended. After a `finish_reason` this completes the response like
    /// `[DONE]`; before one, the stream was cut and the response fails.
    pub fn end_of_stream(&mut self, out: &mut Vec<u8>) {
        if self.finish_reason.is_some() {
            self.finish(out);
        } else {
            self.fail(
                "server_error",
                "the upstream stream ended before the response was complete",
                out,
            );
        }
    }

    /// Fails the response (upstream error, timeout, cut connection): open items are closed as
    /// incomplete and `response.failed` is written. No-op after the terminal event.
    pub fn fail(&mut self, code: &str, message: &str, out: &mut Vec<u8>) {
        self.fail_with(code, message, out);
    }

    /// The complete `Response` object as it stands (final once terminated): the body for a
    /// client that asked for `stream: false`.
    pub fn final_response(&self) -> Value {
        serde_json::to_value(self.response_view()).unwrap_or(Value::Null)
    }

    /// `completed`, `incomplete`, `failed`, or `in_progress` before the terminal event.
    pub fn status(&self) -> &'static str {
        match &self.outcome {
            None => "in_progress",
            Some(Outcome::Completed) => "completed",
            Some(Outcome::Incomplete(_)) => "incomplete",
            Some(Outcome::Failed { .. }) => "failed",
        }
    }

    fn fail_with(&mut self, code: &str, message: &str, out: &mut Vec<u8>) -> StreamError {
        let error = StreamError {
            code: code.to_string(),
            message: message.to_string(),
        };
        if self.outcome.is_none() {
            self.start(out);
            self.close_all(FinishReason::Length, out);
            self.terminate(
                Outcome::Failed {
                    code: error.code.clone(),
                    message: error.message.clone(),
                },
                out,
            );
        }
        error
    }

    fn terminate(&mut self, outcome: Outcome, out: &mut Vec<u8>) {
        let kind = match outcome {
            Outcome::Completed => "response.completed",
            Outcome::Incomplete(_) => "response.incomplete",
            Outcome::Failed { .. } => "response.failed",
        };
        self.outcome = Some(outcome);
        self.emit_lifecycle(kind, out);
    }

    // ------------------------------------------------------------------ chunk handling

    /// `Err` carries the message of a chunk that cannot be converted.
    fn push_choice(
        &mut self,
        choice: &ChunkChoice<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), &'static str> {
        if self.finish_reason.is_some() {
            return Ok(());
        }
        if let Some(delta) = &choice.delta {
            self.push_reasoning(text_of(&delta.reasoning_content), out);
            self.push_reasoning(text_of(&delta.reasoning), out);
            self.push_content(text_of(&delta.content), out);
            self.push_content(text_of(&delta.refusal), out);
            if let Some(calls) = &delta.tool_calls {
                for call in calls {
                    self.push_tool_call(call, out)?;
                }
            }
        }
        let reason = text_of(&choice.finish_reason);
        if !reason.is_empty() {
            let reason = FinishReason::parse(reason);
            self.finish_reason = Some(reason);
            self.close_all(reason, out);
        }
        Ok(())
    }

    /// Routes content through inline `<think>` detection.
    fn push_content(&mut self, mut content: &str, out: &mut Vec<u8>) {
        while !content.is_empty() {
            content = match self.think {
                ThinkState::Text { trim_start } => {
                    let text = if trim_start {
                        content.trim_start()
                    } else {
                        content
                    };
                    if !text.is_empty() {
                        self.think = ThinkState::Text { trim_start: false };
                        self.push_text(text, out);
                    }
                    ""
                }
                ThinkState::Detecting => self.detect_think_open(content, out),
                ThinkState::Thinking => self.scan_think_close(content, out),
            };
        }
    }

    /// At the start of the content: returns what is left to route after deciding whether a
    /// think block opens here.
    fn detect_think_open<'c>(&mut self, content: &'c str, out: &mut Vec<u8>) -> &'c str {
        if self.held.is_empty() && !content.trim_start().starts_with('<') {
            if !content.trim_start().is_empty() {
                self.think = ThinkState::Text { trim_start: false };
                return content;
            }
            self.held.push_str(content);
            return "";
        }
        self.held.push_str(content);
        let trimmed = self.held.trim_start();
        if trimmed.len() < THINK_OPEN.len() && THINK_OPEN.starts_with(trimmed) {
            return "";
        }
        let held = std::mem::take(&mut self.held);
        let trimmed = held.trim_start();
        if let Some(rest) = trimmed.strip_prefix(THINK_OPEN) {
            self.think = ThinkState::Thinking;
            let rest = rest.trim_start();
            self.scan_think_close_owned(rest, out);
        } else {
            self.think = ThinkState::Text { trim_start: false };
            self.push_text(&held, out);
        }
        ""
    }

    fn scan_think_close_owned(&mut self, text: &str, out: &mut Vec<u8>) {
        let mut rest = text;
        while !rest.is_empty() && self.think == ThinkState::Thinking {
            rest = self.scan_think_close(rest, out);
        }
        if !rest.is_empty() {
            self.push_content(rest, out);
        }
    }

    /// Inside a think block: emits reasoning up to `</think>` (holding back a possible partial
    /// tag) and returns the content after the tag.
    fn scan_think_close<'c>(&mut self, content: &'c str, out: &mut Vec<u8>) -> &'c str {
        if !self.held.is_empty() {
            let mut joined = std::mem::take(&mut self.held);
            joined.push_str(content);
            let after = self.split_think_close(&joined, out).map(str::to_string);
            if let Some(after) = after {
                self.push_content(&after, out);
            }
            return "";
        }
        self.split_think_close(content, out).unwrap_or("")
    }

    /// Emits the reasoning in `text` before `</think>`; returns the text after the tag, or
    /// `None` (holding back a possible partial tag) when the tag is not there.
    fn split_think_close<'c>(&mut self, text: &'c str, out: &mut Vec<u8>) -> Option<&'c str> {
        if let Some(pos) = memchr::memmem::find(text.as_bytes(), THINK_CLOSE.as_bytes()) {
            self.push_reasoning(&text[..pos], out);
            self.think = ThinkState::Text { trim_start: true };
            return Some(&text[pos + THINK_CLOSE.len()..]);
        }
        let keep = partial_tag_suffix(text, THINK_CLOSE);
        let (reasoning, held) = text.split_at(text.len() - keep);
        self.push_reasoning(reasoning, out);
        self.held.push_str(held);
        None
    }

    /// Emits content held back for tag detection, as what it turned out to be.
    fn flush_held(&mut self, out: &mut Vec<u8>) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        match self.think {
            ThinkState::Thinking => self.push_reasoning(&held, out),
            _ => {
                self.think = ThinkState::Text { trim_start: false };
                self.push_text(&held, out);
            }
        }
    }

    fn push_reasoning(&mut self, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        let index = match self.open_text_item {
            Some(i) if matches!(self.items[i].body, ItemBodyState::Reasoning { .. }) => i,
            _ => {
                self.close_text_item("completed", out);
                self.open_reasoning(out)
            }
        };
        self.emit_delta(DeltaKind::ReasoningSummary, index, text, out);
        if let ItemBodyState::Reasoning { text: all } = &mut self.items[index].body {
            all.push_str(text);
        }
    }

    fn push_text(&mut self, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        let index = match self.open_text_item {
            Some(i) if matches!(self.items[i].body, ItemBodyState::Message { .. }) => i,
            _ => {
                self.close_text_item("completed", out);
                self.open_message(out)
            }
        };
        self.emit_delta(DeltaKind::OutputText, index, text, out);
        if let ItemBodyState::Message { text: all } = &mut self.items[index].body {
            all.push_str(text);
        }
    }

    /// `Err` when a new call starts without a function name: no valid `function_call` item
    /// can be made of it, so the response fails rather than carrying a nameless call.
    fn push_tool_call(
        &mut self,
        delta: &ToolCallDelta<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), &'static str> {
        const NAMELESS: &str = "the upstream started a tool call without a function name";
        self.flush_held(out);
        self.close_text_item("completed", out);
        let upstream_index = delta.index.unwrap_or(0);
        let id = text_of(&delta.id);
        let (name, arguments) = match &delta.function {
            Some(f) => (text_of(&f.name), text_of(&f.arguments)),
            None => ("", ""),
        };
        let existing = self.open_calls.iter().rev().copied().find(|&i| {
            matches!(&self.items[i].body, ItemBodyState::Call(c) if c.upstream_index == upstream_index)
        });
        let index = match existing {
            Some(i) if id.is_empty() || self.call_id_of(i) == Some(id) => i,
            Some(_) | None if name.is_empty() => return Err(NAMELESS),
            Some(replaced) => {
                // A new id at the same index: the previous call there is complete.
                self.open_calls.retain(|&open| open != replaced);
                self.close_call(replaced, "completed", out);
                self.open_call(upstream_index, id, name, out)
            }
            None => self.open_call(upstream_index, id, name, out),
        };
        if arguments.is_empty() {
            return Ok(());
        }
        let ItemBodyState::Call(call) = &mut self.items[index].body else {
            return Ok(());
        };
        call.arguments.push_str(arguments);
        if call.target.kind == ToolKind::Function {
            self.emit_delta(DeltaKind::FunctionArguments, index, arguments, out);
        }
        Ok(())
    }

    fn call_id_of(&self, index: usize) -> Option<&str> {
        match &self.items[index].body {
            ItemBodyState::Call(call) => Some(&call.call_id),
            _ => None,
        }
    }

    // ------------------------------------------------------------------ opening items

    fn next_item_id(&self, prefix: &str) -> String {
        format!("{prefix}_{}_{}", self.id_suffix, self.items.len())
    }

    fn add_item(&mut self, prefix: &str, body: ItemBodyState, out: &mut Vec<u8>) -> usize {
        let index = self.items.len();
        let id = self.next_item_id(prefix);
        self.items.push(OutputItem {
            id,
            closed: None,
            body,
        });
        self.emit(
            "response.output_item.added",
            ItemBody {
                output_index: index,
                item: self.items[index].view(),
            },
            out,
        );
        index
    }

    fn open_reasoning(&mut self, out: &mut Vec<u8>) -> usize {
        let body = ItemBodyState::Reasoning {
            text: String::new(),
        };
        let index = self.add_item("rs", body, out);
        self.open_text_item = Some(index);
        self.emit(
            "response.reasoning_summary_part.added",
            SummaryPartBody {
                item_id: &self.items[index].id,
                output_index: index,
                summary_index: 0,
                part: SummaryPart::summary_text(""),
            },
            out,
        );
        index
    }

    fn open_message(&mut self, out: &mut Vec<u8>) -> usize {
        let body = ItemBodyState::Message {
            text: String::new(),
        };
        let index = self.add_item("msg", body, out);
        self.open_text_item = Some(index);
        self.emit(
            "response.content_part.added",
            ContentPartBody {
                item_id: &self.items[index].id,
                output_index: index,
                content_index: 0,
                part: TextPart::output_text(""),
            },
            out,
        );
        index
    }

    fn open_call(&mut self, upstream_index: u64, id: &str, name: &str, out: &mut Vec<u8>) -> usize {
        let target = self.meta.tools.resolve(name);
        let prefix = match target.kind {
            ToolKind::Function => "fc",
            ToolKind::Custom => "ctc",
        };
        let call_id = if id.is_empty() {
            format!("call_{}_{}", self.id_suffix, self.items.len())
        } else {
            id.to_string()
        };
        let body = ItemBodyState::Call(CallState {
            upstream_index,
            call_id,
            target,
            arguments: String::new(),
            custom_input: String::new(),
        });
        let index = self.add_item(prefix, body, out);
        self.open_calls.push(index);
        index
    }

    // ------------------------------------------------------------------ closing items

    /// Closes every open item; `reason` decides whether they are complete.
    fn close_all(&mut self, reason: FinishReason, out: &mut Vec<u8>) {
        self.flush_held(out);
        let status = match reason {
            FinishReason::Complete => "completed",
            _ => "incomplete",
        };
        self.close_text_item(status, out);
        for index in std::mem::take(&mut self.open_calls) {
            self.close_call(index, status, out);
        }
    }

    fn close_text_item(&mut self, status: &'static str, out: &mut Vec<u8>) {
        let Some(index) = self.open_text_item.take() else {
            return;
        };
        let item = &self.items[index];
        match &item.body {
            ItemBodyState::Reasoning { text } => {
                let body = SummaryDoneBody {
                    item_id: &item.id,
                    output_index: index,
                    summary_index: 0,
                    text,
                };
                self.emit("response.reasoning_summary_text.done", body, out);
                self.emit_summary_part_done(index, out);
            }
            ItemBodyState::Message { text } => {
                self.emit(
                    "response.output_text.done",
                    TextDoneBody {
                        item_id: &item.id,
                        output_index: index,
                        content_index: 0,
                        text,
                        logprobs: NO_LOGPROBS,
                    },
                    out,
                );
                self.emit_content_part_done(index, out);
            }
            ItemBodyState::Call(_) => {}
        }
        self.emit_item_done(index, status, out);
    }

    fn emit_summary_part_done(&self, index: usize, out: &mut Vec<u8>) {
        let item = &self.items[index];
        if let ItemBodyState::Reasoning { text } = &item.body {
            let body = SummaryPartBody {
                item_id: &item.id,
                output_index: index,
                summary_index: 0,
                part: SummaryPart::summary_text(text),
            };
            self.emit("response.reasoning_summary_part.done", body, out);
        }
    }

    fn emit_content_part_done(&self, index: usize, out: &mut Vec<u8>) {
        let item = &self.items[index];
        if let ItemBodyState::Message { text } = &item.body {
            let body = ContentPartBody {
                item_id: &item.id,
                output_index: index,
                content_index: 0,
                part: TextPart::output_text(text),
            };
            self.emit("response.content_part.done", body, out);
        }
    }

    fn close_call(&mut self, index: usize, status: &'static str, out: &mut Vec<u8>) {
        let ItemBodyState::Call(call) = &mut self.items[index].body else {
            return;
        };
        let mut pad_empty_arguments = false;
        match call.target.kind {
            ToolKind::Function if call.arguments.trim().is_empty() => {
                call.arguments.clear();
                call.arguments.push_str("{}");
                pad_empty_arguments = true;
            }
            ToolKind::Function => {}
            ToolKind::Custom => call.custom_input = decode_custom_input(&call.arguments),
        }
        let item = &self.items[index];
        let ItemBodyState::Call(call) = &item.body else {
            return;
        };
        let (item_id, output_index) = (item.id.as_str(), index);
        match call.target.kind {
            ToolKind::Function => {
                if pad_empty_arguments {
                    self.emit_delta(DeltaKind::FunctionArguments, index, &call.arguments, out);
                }
                let body = ArgumentsDoneBody {
                    item_id,
                    output_index,
                    arguments: &call.arguments,
                };
                self.emit("response.function_call_arguments.done", body, out);
            }
            ToolKind::Custom => {
                if !call.custom_input.is_empty() {
                    self.emit_delta(DeltaKind::CustomInput, index, &call.custom_input, out);
                }
                let body = CustomInputDoneBody {
                    item_id,
                    output_index,
                    input: &call.custom_input,
                };
                self.emit("response.custom_tool_call_input.done", body, out);
            }
        }
        self.emit_item_done(index, status, out);
    }

    fn emit_item_done(&mut self, index: usize, status: &'static str, out: &mut Vec<u8>) {
        self.items[index].closed = Some(status);
        let body = ItemBody {
            output_index: index,
            item: self.items[index].view(),
        };
        self.emit("response.output_item.done", body, out);
    }

    // ------------------------------------------------------------------ writing events

    /// Writes one event with the next sequence number.
    fn emit<B: Serialize>(&self, kind: &'static str, body: B, out: &mut Vec<u8>) {
        let sequence_number = self.sequence_number.get();
        self.sequence_number.set(sequence_number + 1);
        let event = Event {
            kind,
            sequence_number,
            body,
        };
        write_json_event(out, Some(kind), &event);
    }

    fn emit_delta(&self, kind: DeltaKind, index: usize, delta: &str, out: &mut Vec<u8>) {
        let sequence_number = self.sequence_number.get();
        self.sequence_number.set(sequence_number + 1);
        write_delta_event(
            out,
            kind,
            sequence_number,
            &self.items[index].id,
            index,
            delta,
        );
    }

    fn emit_lifecycle(&self, kind: &'static str, out: &mut Vec<u8>) {
        let body = LifecycleBody {
            response: self.response_view(),
        };
        self.emit(kind, body, out);
    }

    fn response_view(&self) -> ResponseView<'_> {
        let (error, incomplete_details) = match &self.outcome {
            Some(Outcome::Failed { code, message }) => (Some(ErrorView { code, message }), None),
            Some(Outcome::Incomplete(reason)) => (None, Some(IncompleteView { reason })),
            _ => (None, None),
        };
        let usage = self
            .outcome
            .as_ref()
            .map(|_| self.usage.map(UsageView::from).unwrap_or_default());
        let output = match self.outcome {
            None => Vec::new(),
            Some(_) => self.items.iter().map(OutputItem::view).collect(),
        };
        ResponseView {
            id: &self.response_id,
            object: "response",
            created_at: self.created_at,
            status: self.status(),
            error,
            incomplete_details,
            model: &self.meta.model,
            output,
            usage,
            echo: &self.meta.echo,
        }
    }
}

/// The longest suffix of `text` that is a proper prefix of `tag`, in bytes.
fn partial_tag_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&k| text.is_char_boundary(text.len() - k) && text.ends_with(&tag[..k]))
        .unwrap_or(0)
}

/// The freeform input of a custom tool call: `{"input": "..."}` decoded, or (if the model
/// did not produce that JSON) the only string member, or the raw arguments.
fn decode_custom_input(arguments: &str) -> String {
    #[derive(Deserialize)]
    struct CustomArguments {
        input: String,
    }
    if let Ok(args) = serde_json::from_str::<CustomArguments>(arguments) {
        return args.input;
    }
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(arguments) {
        if let Some(Value::String(input)) = map.get(CUSTOM_TOOL_ARGUMENT) {
            return input.clone();
        }
        let mut strings = map.values().filter_map(Value::as_str);
        if let (Some(only), None) = (strings.next(), strings.next()) {
            return only.to_string();
        }
    }
    arguments.to_string()
}

/// The failure code and message for an `error` member of a chunk.
fn describe_chunk_error(error: &ChunkError<'_>) -> (&'static str, String) {
    match error {
        ChunkError::Object {
            message,
            kind,
            code,
        } => {
            let code_text = match code {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            let message = text_of(message);
            let message = if message.is_empty() {
                "the upstream reported an error"
            } else {
                message
            };
            let code = failure_code(&code_text, text_of(kind), message);
            (code, message.to_string())
        }
        ChunkError::Message(message) => (failure_code("", "", &message.0), message.0.to_string()),
    }
}

/// Maps an upstream error to a `response.failed` code: the codes Codex acts on when the
/// upstream's code, type or message says so, else `server_error`. Also useful for upstream
/// HTTP errors that arrive after the stream started (pass the status as `code`).
pub fn failure_code(code: &str, kind: &str, message: &str) -> &'static str {
    let all = format!("{code} {kind} {message}").to_ascii_lowercase();
    let says = |needles: &[&str]| needles.iter().any(|n| all.contains(n));
    if says(&[
        "context_length",
        "context length",
        "maximum context",
        "context window",
    ]) {
        "context_length_exceeded"
    } else if says(&["insufficient_quota", "quota"]) {
        "insufficient_quota"
    } else if code == "429" || says(&["rate_limit", "rate limit", "too many requests"]) {
        "rate_limit_exceeded"
    } else {
        "server_error"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::request::responses_to_chat;
    use crate::sse::SseReader;
    use openai_conformance::responses::{check_response_object, check_responses_stream};
    use serde_json::json;

    /// (file name, contents, assume_think_open, expected terminal event)
    const FIXTURES: &[(&str, &str, bool, &str)] = &[
        (
            "text",
            include_str!("../../../../tests/fixtures/chat-streams/text.sse"),
            false,
            "response.completed",
        ),
        (
            "reasoning-content",
            include_str!("../../../../tests/fixtures/chat-streams/reasoning-content.sse"),
            false,
            "response.completed",
        ),
        (
            "reasoning-field-tool",
            include_str!("../../../../tests/fixtures/chat-streams/reasoning-field-tool.sse"),
            false,
            "response.completed",
        ),
        (
            "think-inline-split",
            include_str!("../../../../tests/fixtures/chat-streams/think-inline-split.sse"),
            false,
            "response.completed",
        ),
        (
            "think-missing-open",
            include_str!("../../../../tests/fixtures/chat-streams/think-missing-open.sse"),
            true,
            "response.completed",
        ),
        (
            "text-starting-with-lt",
            include_str!("../../../../tests/fixtures/chat-streams/text-starting-with-lt.sse"),
            false,
            "response.completed",
        ),
        (
            "tool-calls-parallel",
            include_str!("../../../../tests/fixtures/chat-streams/tool-calls-parallel.sse"),
            false,
            "response.completed",
        ),
        (
            "tool-calls-same-index",
            include_str!("../../../../tests/fixtures/chat-streams/tool-calls-same-index.sse"),
            false,
            "response.completed",
        ),
        (
            "tool-call-whole-chunk",
            include_str!("../../../../tests/fixtures/chat-streams/tool-call-whole-chunk.sse"),
            false,
            "response.completed",
        ),
        (
            "custom-tool-call",
            include_str!("../../../../tests/fixtures/chat-streams/custom-tool-call.sse"),
            false,
            "response.completed",
        ),
        (
            "finish-length",
            include_str!("../../../../tests/fixtures/chat-streams/finish-length.sse"),
            false,
            "response.incomplete",
        ),
        (
            "content-filter",
            include_str!("../../../../tests/fixtures/chat-streams/content-filter.sse"),
            false,
            "response.incomplete",
        ),
        (
            "error-mid-stream",
            include_str!("../../../../tests/fixtures/chat-streams/error-mid-stream.sse"),
            false,
            "response.failed",
        ),
        (
            "cut-without-done",
            include_str!("../../../../tests/fixtures/chat-streams/cut-without-done.sse"),
            false,
            "response.failed",
        ),
        (
            "finish-then-eof",
            include_str!("../../../../tests/fixtures/chat-streams/finish-then-eof.sse"),
            false,
            "response.completed",
        ),
        (
            "usage-details",
            include_str!("../../../../tests/fixtures/chat-streams/usage-details.sse"),
            false,
            "response.completed",
        ),
    ];

    fn test_meta(assume_think_open: bool) -> StreamMeta {
        let request = json!({
            "model": "test-model",
            "input": "hi",
            "stream": true,
            "tools": [
                {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
                {"type": "function", "name": "get_goal", "parameters": {"type": "object"}},
                {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.",
                 "tools": [{"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}}]},
                {"type": "custom", "name": "apply_patch", "description": "Edit files."},
                {"type": "web_search"}
            ]
        });
        let mut meta = responses_to_chat(&request).expect("valid request").meta;
        meta.assume_think_open = assume_think_open;
        meta
    }

    struct Converted {
        sse: Vec<u8>,
        events: Vec<(String, Value)>,
        response: Value,
        errors: Vec<StreamError>,
    }

    /// Feeds an upstream body through `SseReader` in `piece`-byte pieces, like the server does.
    fn convert(body: &[u8], piece: usize, meta: StreamMeta) -> Converted {
        let mut converter = ChatStreamConverter::new(meta, "resp_test1", 1_795_268_307);
        let mut reader = SseReader::default();
        let mut sse = Vec::new();
        let mut errors = Vec::new();
        converter.start(&mut sse);
        for bytes in body.chunks(piece.max(1)) {
            reader.push(bytes);
            while let Some(event) = reader.next_event().expect("valid SSE") {
                if let Err(err) = converter.push_sse_data(event.data, &mut sse) {
                    errors.push(err);
                }
            }
        }
        if let Some(event) = reader.finish().expect("valid SSE") {
            if let Err(err) = converter.push_sse_data(event.data, &mut sse) {
                errors.push(err);
            }
        }
        converter.end_of_stream(&mut sse);
        Converted {
            events: parse_events(&sse),
            sse,
            response: converter.final_response(),
            errors,
        }
    }

    fn parse_events(sse: &[u8]) -> Vec<(String, Value)> {
        let mut reader = SseReader::default();
        reader.push(sse);
        let mut events = Vec::new();
        while let Some(event) = reader.next_event().expect("valid SSE") {
            let data = serde_json::from_str(event.data).expect("event data is JSON");
            events.push((event.event.to_string(), data));
        }
        events
    }

    fn fixture(name: &str) -> (&'static str, bool) {
        let (_, body, think, _) = FIXTURES
            .iter()
            .find(|f| f.0 == name)
            .expect("fixture exists");
        (body, *think)
    }

    fn convert_fixture(name: &str) -> Converted {
        let (body, think) = fixture(name);
        convert(body.as_bytes(), usize::MAX, test_meta(think))
    }

    fn types(events: &[(String, Value)]) -> Vec<&str> {
        events
            .iter()
            .map(|(_, v)| v["type"].as_str().unwrap_or_default())
            .collect()
    }

    fn events_of<'a>(events: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
        events
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v["type"] == kind)
            .collect()
    }

    #[test]
    fn every_fixture_converts_to_a_conforming_stream_at_any_split() {
        for (name, body, think, terminal) in FIXTURES {
            let whole = convert(body.as_bytes(), usize::MAX, test_meta(*think));
            let values: Vec<Value> = whole.events.iter().map(|(_, v)| v.clone()).collect();
            if let Err(problems) = check_responses_stream(&values) {
                panic!("{name}: stream does not conform:\n{problems}");
            }
            for (event_name, value) in &whole.events {
                assert_eq!(value["type"], event_name.as_str(), "{name}: event line");
            }
            let last = values.last().expect("events");
            assert_eq!(last["type"], *terminal, "{name}: terminal event");
            assert_eq!(last["response"], whole.response, "{name}: final response");
            if let Err(problems) = check_response_object(&whole.response) {
                panic!("{name}: final response does not conform:\n{problems}");
            }
            for piece in [1, 2, 3, 7, 64] {
                let split = convert(body.as_bytes(), piece, test_meta(*think));
                assert_eq!(split.sse, whole.sse, "{name}: piece size {piece}");
            }
            if let Ok(dir) = std::env::var("BRIDGE_SSE_OUT") {
                let dir = std::path::Path::new(&dir);
                std::fs::write(dir.join(format!("{name}.sse")), &whole.sse).expect("write");
                let json = serde_json::to_vec_pretty(&whole.response).expect("json");
                std::fs::write(dir.join(format!("{name}.json")), json).expect("write");
            }
        }
    }

    #[test]
    fn a_real_codex_request_round_trips_with_its_tools_echoed() {
        const CODEX: &str = include_str!(
            "../../../../tests/fixtures/codex-0.169.0/codex-request-custom-tool-turn2.json"
        );
        let recorded: Value = serde_json::from_str(CODEX).expect("fixture is JSON");
        let plan = responses_to_chat(&recorded["body"]).expect("converts");
        let (body, _) = fixture("custom-tool-call");
        let out = convert(body.as_bytes(), 16, plan.meta);
        let values: Vec<Value> = out.events.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(check_responses_stream(&values), Ok(()));
        assert_eq!(out.response["tools"], recorded["body"]["tools"]);
        assert_eq!(out.response["reasoning"], json!({"effort": "medium"}));
        assert_eq!(out.response["model"], "gpt-5.5");
        assert_eq!(out.response["output"][1]["type"], "custom_tool_call");
        if let Ok(dir) = std::env::var("BRIDGE_SSE_OUT") {
            let dir = std::path::Path::new(&dir);
            std::fs::write(dir.join("codex-echo.sse"), &out.sse).expect("write");
            let json = serde_json::to_vec(&out.response).expect("json");
            std::fs::write(dir.join("codex-echo.json"), json).expect("write");
        }
    }

    #[test]
    fn text_stream_has_exactly_the_expected_events() {
        let out = convert_fixture("text");
        assert_eq!(
            types(&out.events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let sequence: Vec<u64> = out
            .events
            .iter()
            .map(|(_, v)| v["sequence_number"].as_u64().unwrap_or(u64::MAX))
            .collect();
        assert_eq!(sequence, (0..12).collect::<Vec<u64>>());
        let text = "Hello, wörld! 👋 Quotes \"and\"\nnewlines\\.";
        assert_eq!(
            out.events[2].1,
            json!({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
                   "item": {"type": "message", "id": "msg_test1_0", "status": "in_progress",
                            "role": "assistant", "content": []}})
        );
        assert_eq!(
            out.events[4].1,
            json!({"type": "response.output_text.delta", "sequence_number": 4,
                   "item_id": "msg_test1_0", "output_index": 0, "content_index": 0,
                   "delta": "Hel", "logprobs": []})
        );
        let done_item = json!({"type": "message", "id": "msg_test1_0", "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]});
        assert_eq!(out.events[10].1["item"], done_item);
        let response = &out.events[11].1["response"];
        assert_eq!(response["status"], "completed");
        assert_eq!(response["output"], json!([done_item]));
        assert_eq!(response["model"], "test-model");
        assert_eq!(response["tool_choice"], "auto");
        assert_eq!(
            response["usage"],
            json!({"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                   "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 19})
        );
    }

    #[test]
    fn inline_think_tags_split_across_chunks_become_a_reasoning_item() {
        let out = convert_fixture("think-inline-split");
        let output = &out.response["output"];
        assert_eq!(output[0]["type"], "reasoning");
        assert_eq!(
            output[0]["summary"],
            json!([{"type": "summary_text", "text": "Let me think: 2 < 3 is true."}])
        );
        assert_eq!(
            output[1]["content"][0]["text"],
            "Yes: 2 < 3, and <b>bold</b>."
        );
        assert_eq!(
            types(&out.events)[2..5],
            [
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
            ]
        );
        let first_message = out
            .events
            .iter()
            .position(|(_, v)| v["item"]["type"] == "message")
            .unwrap_or(0);
        let reasoning_done = out
            .events
            .iter()
            .position(|(_, v)| v["type"] == "response.output_item.done")
            .unwrap_or(usize::MAX);
        assert!(
            reasoning_done < first_message,
            "reasoning closes before text starts"
        );
    }

    #[test]
    fn missing_opening_think_tag_is_handled_when_assumed_open() {
        let out = convert_fixture("think-missing-open");
        let output = &out.response["output"];
        assert_eq!(
            output[0]["summary"][0]["text"],
            "Reasoning without an opening tag."
        );
        assert_eq!(output[1]["content"][0]["text"], "The answer.");
        let plain = convert(
            fixture("think-missing-open").0.as_bytes(),
            5,
            test_meta(false),
        );
        assert_eq!(plain.response["output"][0]["type"], "message");
    }

    #[test]
    fn a_less_than_sign_that_is_not_a_tag_stays_text() {
        let out = convert_fixture("text-starting-with-lt");
        assert_eq!(
            out.response["output"][0]["content"][0]["text"],
            "<div>hi</div>"
        );
        assert_eq!(out.response["output"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn reasoning_fields_become_summaries() {
        let out = convert_fixture("reasoning-content");
        assert_eq!(
            out.response["output"][0]["summary"][0]["text"],
            "The user wants a greeting."
        );
        assert_eq!(out.response["output"][1]["content"][0]["text"], "Hello!");
        assert_eq!(
            out.response["usage"]["input_tokens_details"]["cached_tokens"],
            16
        );
        assert_eq!(
            out.response["usage"]["output_tokens_details"]["reasoning_tokens"],
            5
        );
        let out = convert_fixture("reasoning-field-tool");
        assert_eq!(
            out.response["output"][0]["summary"][0]["text"],
            "I should list the files."
        );
        assert_eq!(out.response["output"][1]["type"], "function_call");
        assert_eq!(
            out.response["output"][1]["arguments"],
            "{\"cmd\": \"ls -la\"}"
        );
        let deltas = events_of(&out.events, "response.reasoning_summary_text.delta");
        assert!(deltas.iter().all(|d| d["summary_index"] == 0));
    }

    #[test]
    fn parallel_interleaved_calls_are_each_assembled() {
        let out = convert_fixture("tool-calls-parallel");
        let output = out.response["output"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(output.len(), 3);
        assert_eq!(
            output[0],
            json!({"type": "function_call", "id": "fc_test1_0", "status": "completed",
                   "call_id": "call_A", "name": "exec_command", "arguments": "{\"cmd\":\"pwd\"}"})
        );
        assert_eq!(output[1]["name"], "spawn_agent");
        assert_eq!(output[1]["namespace"], "multi_agent_v1");
        assert_eq!(output[1]["arguments"], "{\"message\":\"check tests\"}");
        assert_eq!(output[2]["call_id"], "call_C");
        assert_eq!(output[2]["arguments"], "{}");
        let added = events_of(&out.events, "response.output_item.added");
        assert!(added.iter().all(|e| e["item"]["arguments"] == ""));
        assert_eq!(
            out.response["usage"]["input_tokens_details"]["cached_tokens"],
            384
        );
    }

    #[test]
    fn a_call_delivered_whole_is_not_doubled() {
        let out = convert_fixture("tool-call-whole-chunk");
        let deltas = events_of(&out.events, "response.function_call_arguments.delta");
        assert_eq!(deltas.len(), 1);
        assert_eq!(deltas[0]["delta"], "{\"cmd\":\"echo hi\"}");
        assert_eq!(
            out.response["output"][0]["arguments"],
            "{\"cmd\":\"echo hi\"}"
        );
    }

    #[test]
    fn calls_sharing_an_index_are_told_apart_by_id() {
        let out = convert_fixture("tool-calls-same-index");
        let output = &out.response["output"];
        assert_eq!(output[0]["call_id"], "call_first");
        assert_eq!(output[0]["arguments"], "{\"cmd\":\"ls\"}");
        assert_eq!(output[1]["call_id"], "call_second");
        assert_eq!(output[1]["arguments"], "{\"cmd\":\"pwd\"}");
        assert_eq!(out.response["usage"]["total_tokens"], 0);
    }

    #[test]
    fn custom_tool_calls_come_back_with_decoded_input() {
        let out = convert_fixture("custom-tool-call");
        let output = &out.response["output"];
        assert_eq!(output[0]["content"][0]["text"], "I'll add the file.");
        let patch = "*** Begin Patch\n*** Add File: hello.txt\n+hi \"there\"\n*** End Patch\n";
        assert_eq!(
            output[1],
            json!({"type": "custom_tool_call", "id": "ctc_test1_1", "status": "completed",
                   "call_id": "call_patch", "name": "apply_patch", "input": patch})
        );
        assert!(events_of(&out.events, "response.function_call_arguments.delta").is_empty());
        let done = events_of(&out.events, "response.custom_tool_call_input.done");
        assert_eq!(done[0]["input"], patch);
    }

    #[test]
    fn finish_reasons_map_to_incomplete_details() {
        let out = convert_fixture("finish-length");
        assert_eq!(out.response["status"], "incomplete");
        assert_eq!(
            out.response["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        assert_eq!(out.response["output"][0]["status"], "incomplete");
        assert_eq!(out.response["usage"]["output_tokens"], 16);
        let out = convert_fixture("content-filter");
        assert_eq!(
            out.response["incomplete_details"]["reason"],
            "content_filter"
        );
    }

    #[test]
    fn upstream_errors_and_cuts_fail_the_response() {
        let out = convert_fixture("error-mid-stream");
        assert_eq!(out.response["status"], "failed");
        assert_eq!(out.response["error"]["code"], "rate_limit_exceeded");
        assert_eq!(
            out.response["error"]["message"],
            "Rate limit reached for requests"
        );
        assert_eq!(out.response["output"][0]["content"][0]["text"], "Partial ");
        assert_eq!(out.errors.len(), 1);
        let out = convert_fixture("cut-without-done");
        assert_eq!(out.response["error"]["code"], "server_error");
        assert_eq!(out.response["output"][0]["status"], "incomplete");
        let out = convert_fixture("finish-then-eof");
        assert_eq!(out.response["status"], "completed");
    }

    #[test]
    fn invalid_chunk_json_fails_once_and_later_input_is_ignored() {
        let mut converter = ChatStreamConverter::new(test_meta(false), "resp_x", 1);
        let mut out = Vec::new();
        let err = converter.push_chunk("{not json", &mut out).unwrap_err();
        assert_eq!(err.code, "server_error");
        assert!(converter.is_terminated());
        let ok = r#"{"choices":[{"index":0,"delta":{"content":"late"}}]}"#;
        assert!(converter.push_chunk(ok, &mut out).is_ok());
        converter.finish(&mut out);
        converter.fail("server_error", "again", &mut out);
        converter.end_of_stream(&mut out);
        let events = parse_events(&out);
        let terminals = events
            .iter()
            .filter(|(_, v)| v["type"] == "response.failed")
            .count();
        assert_eq!(terminals, 1);
        assert_eq!(types(&events).len(), 3);
    }

    #[test]
    fn odd_but_harmless_chunk_shapes_are_tolerated() {
        let mut converter = ChatStreamConverter::new(test_meta(false), "resp_y", 1);
        let mut out = Vec::new();
        for chunk in [
            r#"{"choices":null,"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning":{"effort":"x"},"content":null}}]}"#,
            r#"{"choices":[{"index":1,"delta":{"content":"other choice"}}]}"#,
            r#"{"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":null}}"#,
        ] {
            converter.push_chunk(chunk, &mut out).expect("tolerated");
        }
        converter.finish(&mut out);
        let response = converter.final_response();
        assert_eq!(response["output"][0]["content"][0]["text"], "hi");
        assert_eq!(response["usage"]["total_tokens"], 1);
        let values: Vec<Value> = parse_events(&out).into_iter().map(|(_, v)| v).collect();
        assert_eq!(check_responses_stream(&values), Ok(()));
    }

    #[test]
    fn error_codes_that_codex_acts_on_are_recognized() {
        assert_eq!(
            failure_code("rate_limit_exceeded", "", ""),
            "rate_limit_exceeded"
        );
        assert_eq!(failure_code("429", "", "slow down"), "rate_limit_exceeded");
        assert_eq!(
            failure_code(
                "",
                "invalid_request_error",
                "This model's maximum context length is 8192"
            ),
            "context_length_exceeded"
        );
        assert_eq!(
            failure_code("insufficient_quota", "", ""),
            "insufficient_quota"
        );
        assert_eq!(failure_code("500", "server_error", "boom"), "server_error");
        let mut converter = ChatStreamConverter::new(test_meta(false), "resp_z", 1);
        let mut out = Vec::new();
        let err = converter
            .push_chunk(r#"{"error":"context length exceeded"}"#, &mut out)
            .unwrap_err();
        assert_eq!(err.code, "context_length_exceeded");
    }

    #[test]
    fn the_fast_delta_writer_matches_the_generic_one() {
        for kind in [
            DeltaKind::OutputText,
            DeltaKind::ReasoningSummary,
            DeltaKind::FunctionArguments,
            DeltaKind::CustomInput,
        ] {
            for (sequence_number, delta) in
                [(0, "plain"), (7, "q\"uo\\te\n\u{1}é👋"), (u64::MAX, "")]
            {
                let mut fast = Vec::new();
                write_delta_event(&mut fast, kind, sequence_number, "msg_\"x", 12, delta);
                let reference = DeltaEvent {
                    kind: kind.event_name(),
                    sequence_number,
                    item_id: "msg_\"x",
                    output_index: 12,
                    content_index: matches!(kind, DeltaKind::OutputText).then_some(0),
                    summary_index: matches!(kind, DeltaKind::ReasoningSummary).then_some(0),
                    delta,
                    logprobs: matches!(kind, DeltaKind::OutputText).then_some(NO_LOGPROBS),
                };
                let mut generic = Vec::new();
                write_json_event(&mut generic, Some(kind.event_name()), &reference);
                assert_eq!(
                    String::from_utf8_lossy(&fast),
                    String::from_utf8_lossy(&generic)
                );
            }
        }
    }

    #[test]
    fn partial_tag_suffixes_are_found() {
        assert_eq!(partial_tag_suffix("abc</th", THINK_CLOSE), 4);
        assert_eq!(partial_tag_suffix("abc<", THINK_CLOSE), 1);
        assert_eq!(partial_tag_suffix("abc", THINK_CLOSE), 0);
        assert_eq!(partial_tag_suffix("é", THINK_CLOSE), 0);
        assert_eq!(partial_tag_suffix("</think", THINK_CLOSE), 7);
    }

    #[test]
    fn custom_input_decoding_falls_back_gracefully() {
        assert_eq!(decode_custom_input(r#"{"input":"a\nb"}"#), "a\nb");
        assert_eq!(decode_custom_input(r#"{"patch":"x"}"#), "x");
        assert_eq!(decode_custom_input("*** Begin Patch"), "*** Begin Patch");
    }
}
