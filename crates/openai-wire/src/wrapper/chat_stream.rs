//! Upstream Responses API events → Chat Completions output, streaming or not.
//!
//! Two layers. [`UpstreamInterpreter`] reads one Responses event at a time (typed structs that
//! borrow from the event text) and reduces it to [`Signal`]s: text, reasoning, tool-call
//! starts and argument fragments with their chat `index`, the finish, a failure. It is shared
//! with the legacy Completions route. [`ChatStream`] renders those signals as
//! `chat.completion.chunk` SSE and accumulates what it sent, so that
//! [`ChatStream::final_completion`] builds the non-streaming `chat.completion` body from the
//! same state machine.
//!
//! Stream contract (what a client sees):
//! - the first chunk is `delta: {role: "assistant", content: ""}`;
//! - text → `delta.content`; refusals → `delta.refusal`;
//! - each function call gets the next chat `index` (0, 1, 2… in order of appearance); its first
//!   fragment carries `id`, `type`, `function.name` and `arguments: ""`, later fragments only
//!   `index` and argument pieces. Arguments that arrive only in `.done` events are sent then;
//! - reasoning per [`ReasoningOutputMode`] (`All` renders as `OpenAi`); o3 entries carry
//!   `index: 0` so that delta accumulators merge them;
//! - one finish chunk, always: `tool_calls` if a function was called, `length` for
//!   `max_output_tokens`, `content_filter`, else `stop`;
//! - with `stream_options.include_usage`, a chunk with `choices: []` and `usage` (zeros when
//!   the upstream reported none; `total_tokens` is always prompt + completion);
//! - then `data: [DONE]`.
//!
//! Failures (`response.failed`, an `error` event, an unparsable event of a type we handle, or
//! the upstream ending without a terminal event) end the stream with one
//! `data: {"error":{"message","type":"server_error","param":null,"code"}}` chunk followed by
//! `data: [DONE]` (the SDKs raise on the error chunk; line-oriented clients still see a clean
//! end). [`ChatStream::outcome`] tells a non-streaming caller to answer 502 instead.
//!
//! Uses: `sse`, `usage` and serde, serde_json.

use std::borrow::Cow;

use crate::chat::{FunctionDelta, Text, ToolCallDelta};
use crate::usage::WireUsage;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::settings::ReasoningOutputMode;
use super::{ClientMeta, WrapperError};

// ---------------------------------------------------------------------------------------------
// Upstream events (only the fields the translation reads; the rest is skipped unparsed).

#[derive(Deserialize)]
struct UpstreamEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
    #[serde(default)]
    output_index: Option<u64>,
    #[serde(default)]
    summary_index: Option<u64>,
    #[serde(default)]
    content_index: Option<u64>,
    #[serde(borrow, default)]
    item_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    item: Option<UpstreamItem<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response: Option<UpstreamResponse<'a>>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// Only `type` survives when an event does not fit [`UpstreamEvent`].
#[derive(Deserialize)]
struct EventKind<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct UpstreamItem<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct UpstreamResponse<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    incomplete_details: Option<IncompleteDetails<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    error: Option<UpstreamError<'a>>,
}

#[derive(Deserialize)]
struct IncompleteDetails<'a> {
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct UpstreamError<'a> {
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

// ---------------------------------------------------------------------------------------------
// The shared interpreter.

/// Token counts in Chat Completions terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    fn from_upstream(u: &WireUsage) -> Self {
        let counts = u.counts();
        Usage {
            prompt_tokens: counts.input,
            completion_tokens: counts.output,
            cached_tokens: counts.cached,
            reasoning_tokens: counts.reasoning,
        }
    }

    /// `{prompt_tokens, completion_tokens, total_tokens, prompt_tokens_details,
    /// completion_tokens_details}`; `total_tokens` is always the sum.
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        })
    }
}

/// Why the answer ended, in Chat Completions terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ContentFilter,
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// Where a translation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOutcome {
    /// No terminal event yet.
    InProgress,
    /// `response.completed` or `response.incomplete`: the answer is usable.
    Completed,
    /// The upstream failed; a non-streaming client gets a 502 with [`StreamOutcome::error`].
    Failed {
        message: String,
        code: Option<String>,
    },
}

impl StreamOutcome {
    /// The 502 error for a failed translation.
    pub fn error(&self) -> Option<WrapperError> {
        match self {
            StreamOutcome::Failed { message, code } => {
                Some(WrapperError::upstream(message.clone(), code.clone()))
            }
            _ => None,
        }
    }
}

/// What one upstream event means for the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Signal<'e> {
    /// The model the upstream says it used (`response.model` of a lifecycle event), sent
    /// before the `Started` or `Finished` signal of the same event.
    Model(&'e str),
    /// The upstream accepted the request (`response.created`/`in_progress`).
    Started,
    Text(&'e str),
    Refusal(&'e str),
    /// Reasoning text; `new_part` when it starts another summary part after earlier ones.
    Reasoning {
        text: &'e str,
        new_part: bool,
    },
    ToolCallStart {
        index: usize,
        id: &'e str,
        name: &'e str,
    },
    ToolCallArguments {
        index: usize,
        fragment: &'e str,
    },
    Finished {
        reason: FinishReason,
        usage: Option<Usage>,
    },
    Failed {
        message: &'e str,
        code: Option<&'e str>,
    },
}

/// One function call the upstream started: its chat `index` is its position in `calls`.
struct CallSlot {
    item_id: String,
    output_index: Option<u64>,
    /// Bytes of `arguments` already sent, so `.done` events only fill in what is missing.
    arguments_sent: usize,
}

/// Reduces Responses events to [`Signal`]s. Ignores unknown events and anything after the
/// terminal event.
pub(crate) struct UpstreamInterpreter {
    calls: Vec<CallSlot>,
    /// `(output_index, part)` of the reasoning part that last produced text.
    reasoning_part: Option<(u64, u64)>,
    outcome: StreamOutcome,
}

/// Reasoning summary parts and raw reasoning content parts are numbered separately.
const RAW_REASONING_PART: u64 = 1 << 40;

impl UpstreamInterpreter {
    pub(crate) fn new() -> Self {
        UpstreamInterpreter {
            calls: Vec::new(),
            reasoning_part: None,
            outcome: StreamOutcome::InProgress,
        }
    }

    pub(crate) fn outcome(&self) -> &StreamOutcome {
        &self.outcome
    }

    fn is_done(&self) -> bool {
        self.outcome != StreamOutcome::InProgress
    }

    /// Interprets one event's `data`. An unparsable event of a type we act on fails the
    /// translation (and returns the error); other unparsable or unknown events are ignored.
    pub(crate) fn interpret(
        &mut self,
        data: &str,
        emit: &mut impl FnMut(Signal<'_>),
    ) -> Result<(), WrapperError> {
        if self.is_done() || data == "[DONE]" {
            return Ok(());
        }
        // Most events we do not act on (`*.done` texts, `content_part.*`, the lifecycle
        // events with a whole `response`) are large; skip them without parsing when the
        // type leads the object, as it does on every upstream we know.
        match leading_type(data) {
            Some("response.created" | "response.in_progress") => {
                if let Some(model) = lifecycle_model(data) {
                    emit(Signal::Model(&model));
                }
                emit(Signal::Started);
                return Ok(());
            }
            Some(kind) if !is_handled(kind) => return Ok(()),
            _ => {}
        }
        match serde_json::from_str::<UpstreamEvent>(data) {
            Ok(event) => {
                if let Some(problem) = unusable_call(&event) {
                    self.fail(problem, Some("bad_upstream_event"), emit);
                    return Err(WrapperError::upstream(
                        problem,
                        Some("bad_upstream_event".into()),
                    ));
                }
                self.dispatch(&event, emit);
                Ok(())
            }
            Err(err) => self.malformed(data, &err, emit),
        }
    }

    fn malformed(
        &mut self,
        data: &str,
        err: &serde_json::Error,
        emit: &mut impl FnMut(Signal<'_>),
    ) -> Result<(), WrapperError> {
        let kind = serde_json::from_str::<EventKind>(data).ok().map(|k| k.kind);
        if kind.as_deref().is_some_and(|k| !is_handled(k)) {
            return Ok(());
        }
        let message = format!(
            "upstream sent an unreadable {} event: {err}",
            kind.as_deref().unwrap_or("(untyped)")
        );
        self.fail(&message, Some("bad_upstream_event"), emit);
        Err(WrapperError::upstream(
            message,
            Some("bad_upstream_event".into()),
        ))
    }

    /// The upstream body ended. Without a terminal event that is a failure.
    pub(crate) fn finish(&mut self, emit: &mut impl FnMut(Signal<'_>)) {
        if !self.is_done() {
            self.fail(
                "upstream stream ended before the response completed",
                Some("stream_incomplete"),
                emit,
            );
        }
    }

    fn fail(&mut self, message: &str, code: Option<&str>, emit: &mut impl FnMut(Signal<'_>)) {
        self.outcome = StreamOutcome::Failed {
            message: message.to_string(),
            code: code.map(str::to_string),
        };
        emit(Signal::Failed { message, code });
    }

    fn dispatch(&mut self, event: &UpstreamEvent<'_>, emit: &mut impl FnMut(Signal<'_>)) {
        match event.kind.as_ref() {
            "response.output_text.delta" => {
                if let Some(delta) = non_empty(&event.delta) {
                    emit(Signal::Text(delta));
                }
            }
            "response.refusal.delta" => {
                if let Some(delta) = non_empty(&event.delta) {
                    emit(Signal::Refusal(delta));
                }
            }
            "response.reasoning_summary_text.delta" => {
                let part = event.summary_index.unwrap_or(0);
                self.reasoning(event, part, emit);
            }
            "response.reasoning_text.delta" => {
                let part = RAW_REASONING_PART + event.content_index.unwrap_or(0);
                self.reasoning(event, part, emit);
            }
            "response.function_call_arguments.delta" => {
                if let (Some(index), Some(fragment)) =
                    (self.find_call(event), non_empty(&event.delta))
                {
                    self.send_arguments(index, fragment, emit);
                }
            }
            "response.function_call_arguments.done" => {
                if let (Some(index), Some(all)) =
                    (self.find_call(event), event.arguments.as_deref())
                {
                    self.complete_arguments(index, all, emit);
                }
            }
            "response.output_item.added" => self.item_added(event, emit),
            "response.output_item.done" => self.item_done(event, emit),
            "response.created" | "response.in_progress" => {
                if let Some(model) = event.response.as_ref().and_then(|r| non_empty(&r.model)) {
                    emit(Signal::Model(model));
                }
                emit(Signal::Started);
            }
            "response.completed" | "response.incomplete" => self.finished(event, emit),
            "response.failed" => {
                let error = event.response.as_ref().and_then(|r| r.error.as_ref());
                let message = error
                    .and_then(|e| e.message.as_deref())
                    .unwrap_or("the upstream response failed");
                let code = error.and_then(|e| e.code.as_deref());
                self.fail(message, code, emit);
            }
            "error" => {
                let message = event.message.as_deref().unwrap_or("upstream error");
                self.fail(message, event.code.as_deref(), emit);
            }
            _ => {}
        }
    }

    fn reasoning(
        &mut self,
        event: &UpstreamEvent<'_>,
        part: u64,
        emit: &mut impl FnMut(Signal<'_>),
    ) {
        let Some(text) = non_empty(&event.delta) else {
            return;
        };
        let key = (event.output_index.unwrap_or(0), part);
        let new_part = self.reasoning_part.is_some_and(|last| last != key);
        self.reasoning_part = Some(key);
        emit(Signal::Reasoning { text, new_part });
    }

    fn finished(&mut self, event: &UpstreamEvent<'_>, emit: &mut impl FnMut(Signal<'_>)) {
        let response = event.response.as_ref();
        let incomplete_reason = response
            .and_then(|r| r.incomplete_details.as_ref())
            .and_then(|d| d.reason.as_deref());
        let reason = match (event.kind.as_ref(), incomplete_reason) {
            ("response.incomplete", Some("content_filter")) => FinishReason::ContentFilter,
            ("response.incomplete", _) => FinishReason::Length,
            _ if !self.calls.is_empty() => FinishReason::ToolCalls,
            _ => FinishReason::Stop,
        };
        let usage = response
            .and_then(|r| r.usage.as_ref())
            .map(Usage::from_upstream);
        if let Some(model) = response.and_then(|r| non_empty(&r.model)) {
            emit(Signal::Model(model));
        }
        self.outcome = StreamOutcome::Completed;
        emit(Signal::Finished { reason, usage });
    }

    fn item_added(&mut self, event: &UpstreamEvent<'_>, emit: &mut impl FnMut(Signal<'_>)) {
        let Some(item) = event.item.as_ref().filter(|i| i.kind == "function_call") else {
            return;
        };
        let index = self.start_call(event, item, emit);
        if let Some(arguments) = non_empty(&item.arguments) {
            self.complete_arguments(index, arguments, emit);
        }
    }

    fn item_done(&mut self, event: &UpstreamEvent<'_>, emit: &mut impl FnMut(Signal<'_>)) {
        let Some(item) = event.item.as_ref().filter(|i| i.kind == "function_call") else {
            return;
        };
        let index = match self.find_call_for_item(event, item) {
            Some(index) => index,
            None => self.start_call(event, item, emit),
        };
        if let Some(arguments) = item.arguments.as_deref() {
            self.complete_arguments(index, arguments, emit);
        }
    }

    fn start_call(
        &mut self,
        event: &UpstreamEvent<'_>,
        item: &UpstreamItem<'_>,
        emit: &mut impl FnMut(Signal<'_>),
    ) -> usize {
        let index = self.calls.len();
        let item_id = item.id.as_deref().unwrap_or_default();
        self.calls.push(CallSlot {
            item_id: item_id.to_string(),
            output_index: event.output_index,
            arguments_sent: 0,
        });
        let id = item.call_id.as_deref().unwrap_or(item_id);
        let name = item.name.as_deref().unwrap_or_default();
        emit(Signal::ToolCallStart { index, id, name });
        index
    }

    /// The call an arguments event belongs to: by `item_id`, else by `output_index`.
    fn find_call(&self, event: &UpstreamEvent<'_>) -> Option<usize> {
        self.lookup(event.item_id.as_deref(), event.output_index)
    }

    fn find_call_for_item(
        &self,
        event: &UpstreamEvent<'_>,
        item: &UpstreamItem<'_>,
    ) -> Option<usize> {
        self.lookup(item.id.as_deref(), event.output_index)
    }

    fn lookup(&self, item_id: Option<&str>, output_index: Option<u64>) -> Option<usize> {
        if let Some(id) = item_id.filter(|id| !id.is_empty()) {
            if let Some(i) = self.calls.iter().position(|c| c.item_id == id) {
                return Some(i);
            }
        }
        let output_index = output_index?;
        self.calls
            .iter()
            .position(|c| c.output_index == Some(output_index))
    }

    fn send_arguments(&mut self, index: usize, fragment: &str, emit: &mut impl FnMut(Signal<'_>)) {
        if let Some(slot) = self.calls.get_mut(index) {
            slot.arguments_sent += fragment.len();
            emit(Signal::ToolCallArguments { index, fragment });
        }
    }

    /// Sends whatever part of the complete `arguments` was not streamed yet.
    fn complete_arguments(&mut self, index: usize, all: &str, emit: &mut impl FnMut(Signal<'_>)) {
        let sent = self.calls.get(index).map_or(0, |c| c.arguments_sent);
        if let Some(rest) = all.get(sent..).filter(|rest| !rest.is_empty()) {
            self.send_arguments(index, rest, emit);
        }
    }
}

/// The event type when `data` starts with `{"type":"…"` (and it has no escapes).
fn leading_type(data: &str) -> Option<&str> {
    let rest = data.strip_prefix(r#"{"type":""#)?;
    let end = memchr::memchr2(b'"', b'\\', rest.as_bytes())?;
    (rest.as_bytes()[end] == b'"').then(|| &rest[..end])
}

/// `response.model` of a lifecycle event (`response.created`/`in_progress`), when it has one.
fn lifecycle_model(data: &str) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Lifecycle<'a> {
        #[serde(borrow, default)]
        response: Option<ModelOnly<'a>>,
    }
    #[derive(Deserialize)]
    struct ModelOnly<'a> {
        #[serde(borrow, default)]
        model: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<Lifecycle<'_>>(data)
        .ok()?
        .response?
        .model
        .filter(|m| !m.is_empty())
}

fn non_empty<'a>(s: &'a Option<Cow<'_, str>>) -> Option<&'a str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// Event types whose content matters; an unreadable one of these fails the translation.
fn is_handled(kind: &str) -> bool {
    matches!(
        kind,
        "response.output_text.delta"
            | "response.refusal.delta"
            | "response.reasoning_summary_text.delta"
            | "response.reasoning_text.delta"
            | "response.function_call_arguments.delta"
            | "response.function_call_arguments.done"
            | "response.output_item.added"
            | "response.output_item.done"
            | "response.completed"
            | "response.incomplete"
            | "response.failed"
            | "error"
    )
}

// ---------------------------------------------------------------------------------------------
// Chunk framing shared by chat and completions streams.

/// Writes `data: {"id":…,"object":…,"created":…,"model":…,"choices":…}` events with the
/// constant head serialized once.
pub(crate) struct ChunkFrame {
    /// `data: {"id":…,"object":…,"created":…,"model":…,"choices":`
    head: Vec<u8>,
}

impl ChunkFrame {
    pub(crate) fn new(object: &str, id: &str, created: u64, model: &str) -> Self {
        #[derive(Serialize)]
        struct Head<'a> {
            id: &'a str,
            object: &'a str,
            created: u64,
            model: &'a str,
        }
        let mut head = b"data: ".to_vec();
        let fields = serde_json::to_vec(&Head {
            id,
            object,
            created,
            model,
        })
        .unwrap_or_else(|_| b"{}".to_vec());
        // Reopen the object: drop the closing brace and append the `choices` key.
        head.extend_from_slice(&fields[..fields.len() - 1]);
        head.extend_from_slice(b",\"choices\":");
        ChunkFrame { head }
    }

    /// One chunk with a single choice.
    pub(crate) fn write_choice(&self, out: &mut Vec<u8>, choice: &impl Serialize) {
        out.extend_from_slice(&self.head);
        out.push(b'[');
        write_json(out, choice);
        out.extend_from_slice(b"]}\n\n");
    }

    /// The usage chunk: `choices: []` and `usage`.
    pub(crate) fn write_usage(&self, out: &mut Vec<u8>, usage: Usage) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"[],\"usage\":");
        write_json(out, &usage.to_json());
        out.extend_from_slice(b"}\n\n");
    }
}

fn write_json(out: &mut Vec<u8>, value: &impl Serialize) {
    // Serializing plain data into memory cannot fail; on the impossible error write `null`
    // rather than panic.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// The error chunk that ends a failed stream, then `[DONE]`.
pub(crate) fn write_failure(out: &mut Vec<u8>, message: &str, code: Option<&str>) {
    let error = WrapperError::upstream(message, code.map(str::to_string));
    crate::sse::write_event(out, None, &error.to_body());
    crate::sse::write_done(out);
}

// ---------------------------------------------------------------------------------------------
// Chat rendering.

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    delta: ChatDelta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct ChatDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<O3Reasoning<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

/// `{content: [{index: 0, type: "text", text}]}`: the o3-style reasoning delta. `index` lets
/// delta accumulators (the OpenAI SDK's included) merge the pieces into one text entry.
#[derive(Serialize)]
struct O3Reasoning<'a> {
    content: [O3Text<'a>; 1],
}

#[derive(Serialize)]
struct O3Text<'a> {
    index: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

/// A tool call as accumulated for the non-streaming body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AccumulatedCall {
    id: String,
    name: String,
    arguments: String,
}

/// Renders signals as chat chunks and remembers what it sent.
struct ChatRenderer {
    frame: ChunkFrame,
    mode: ReasoningOutputMode,
    include_usage: bool,
    id: String,
    created: u64,
    model: String,
    /// The role chunk was sent.
    started: bool,
    /// Tagged mode: `<think>` was sent and not yet closed.
    think_open: bool,
    content: String,
    reasoning: String,
    refusal: String,
    calls: Vec<AccumulatedCall>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl ChatRenderer {
    fn render(&mut self, signal: Signal<'_>, out: &mut Vec<u8>) {
        match signal {
            Signal::Model(model) => {
                // The model is part of every chunk: it can change only before the first one.
                if !self.started {
                    self.frame =
                        ChunkFrame::new("chat.completion.chunk", &self.id, self.created, model);
                    self.model = model.to_string();
                }
            }
            Signal::Started => self.ensure_started(out),
            Signal::Text(text) => {
                self.close_think(out);
                self.send_content(text, out);
            }
            Signal::Refusal(text) => {
                self.close_think(out);
                self.refusal.push_str(text);
                self.send(
                    ChatDelta {
                        refusal: Some(text),
                        ..ChatDelta::default()
                    },
                    out,
                );
            }
            Signal::Reasoning { text, new_part } => self.send_reasoning(text, new_part, out),
            Signal::ToolCallStart { index, id, name } => {
                self.close_think(out);
                self.calls.push(AccumulatedCall {
                    id: id.to_string(),
                    name: name.to_string(),
                    arguments: String::new(),
                });
                self.send_tool_call(index, Some((id, name)), "", out);
            }
            Signal::ToolCallArguments { index, fragment } => {
                if let Some(call) = self.calls.get_mut(index) {
                    call.arguments.push_str(fragment);
                }
                self.send_tool_call(index, None, fragment, out);
            }
            Signal::Finished { reason, usage } => self.send_finish(reason, usage, out),
            Signal::Failed { message, code } => write_failure(out, message, code),
        }
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            let delta = ChatDelta {
                role: Some("assistant"),
                content: Some(""),
                ..ChatDelta::default()
            };
            self.write(delta, None, out);
        }
    }

    fn send(&mut self, delta: ChatDelta<'_>, out: &mut Vec<u8>) {
        self.ensure_started(out);
        self.write(delta, None, out);
    }

    fn write(&self, delta: ChatDelta<'_>, finish_reason: Option<FinishReason>, out: &mut Vec<u8>) {
        let choice = ChatChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish_reason.map(FinishReason::as_str),
        };
        self.frame.write_choice(out, &choice);
    }

    fn send_content(&mut self, text: &str, out: &mut Vec<u8>) {
        self.content.push_str(text);
        self.send(
            ChatDelta {
                content: Some(text),
                ..ChatDelta::default()
            },
            out,
        );
    }

    fn send_reasoning(&mut self, text: &str, new_part: bool, out: &mut Vec<u8>) {
        use ReasoningOutputMode as Mode;
        match self.mode {
            Mode::Hidden => {}
            Mode::Tagged => {
                let mut piece = String::with_capacity(text.len() + 8);
                if !self.think_open {
                    self.think_open = true;
                    piece.push_str("<think>");
                } else if new_part {
                    piece.push('\n');
                }
                piece.push_str(text);
                self.send_content(&piece, out);
            }
            Mode::O3 => {
                self.reasoning.push_str(text);
                let reasoning = O3Reasoning {
                    content: [O3Text {
                        index: 0,
                        kind: "text",
                        text,
                    }],
                };
                self.send(
                    ChatDelta {
                        reasoning: Some(reasoning),
                        ..ChatDelta::default()
                    },
                    out,
                );
            }
            Mode::OpenAi | Mode::All | Mode::R1 => {
                let separated;
                let text = if new_part && self.mode != Mode::R1 {
                    separated = format!("\n{text}");
                    separated.as_str()
                } else {
                    text
                };
                self.reasoning.push_str(text);
                self.send(
                    ChatDelta {
                        reasoning_content: Some(text),
                        ..ChatDelta::default()
                    },
                    out,
                );
            }
        }
    }

    fn close_think(&mut self, out: &mut Vec<u8>) {
        if self.think_open {
            self.think_open = false;
            self.send_content("</think>", out);
        }
    }

    fn send_tool_call(
        &mut self,
        index: usize,
        first: Option<(&str, &str)>,
        arguments: &str,
        out: &mut Vec<u8>,
    ) {
        let call = ToolCallDelta {
            index: Some(index as u64),
            id: first.map(|(id, _)| Text::borrowed(id)),
            kind: first.map(|_| Text::borrowed("function")),
            function: Some(FunctionDelta {
                name: first.map(|(_, name)| Text::borrowed(name)),
                arguments: Some(Text::borrowed(arguments)),
            }),
        };
        self.send(
            ChatDelta {
                tool_calls: Some([call]),
                ..ChatDelta::default()
            },
            out,
        );
    }

    fn send_finish(&mut self, reason: FinishReason, usage: Option<Usage>, out: &mut Vec<u8>) {
        self.close_think(out);
        self.ensure_started(out);
        self.finish = Some(reason);
        self.usage = usage;
        self.write(ChatDelta::default(), Some(reason), out);
        if self.include_usage {
            self.frame.write_usage(out, usage.unwrap_or_default());
        }
        crate::sse::write_done(out);
    }

    fn final_completion(&self) -> Value {
        let has_calls = !self.calls.is_empty();
        let mut message = json!({
            "role": "assistant",
            "content": if self.content.is_empty() && has_calls { Value::Null } else { self.content.clone().into() },
            "refusal": if self.refusal.is_empty() { Value::Null } else { self.refusal.clone().into() },
        });
        if has_calls {
            let calls: Vec<Value> = self
                .calls
                .iter()
                .map(|c| {
                    json!({"id": c.id, "type": "function",
                           "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            message["tool_calls"] = Value::Array(calls);
        }
        if !self.reasoning.is_empty() {
            match self.mode {
                ReasoningOutputMode::O3 => {
                    message["reasoning"] =
                        json!({"content": [{"type": "text", "text": self.reasoning}]});
                }
                _ => message["reasoning_content"] = self.reasoning.clone().into(),
            }
        }
        let finish = self.finish.unwrap_or(if has_calls {
            FinishReason::ToolCalls
        } else {
            FinishReason::Stop
        });
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }],
            "usage": self.usage.unwrap_or_default().to_json(),
        })
    }
}

/// Translates one upstream Responses stream for one Chat Completions client.
pub struct ChatStream {
    interpreter: UpstreamInterpreter,
    renderer: ChatRenderer,
}

impl ChatStream {
    /// `id` is the `chatcmpl-…` id every chunk carries; `created` is Unix seconds.
    /// `ReasoningOutputMode::All` renders as `OpenAi`.
    pub fn new(meta: &ClientMeta, mode: ReasoningOutputMode, created: u64, id: &str) -> Self {
        ChatStream {
            interpreter: UpstreamInterpreter::new(),
            renderer: ChatRenderer {
                frame: ChunkFrame::new("chat.completion.chunk", id, created, &meta.model),
                mode: mode.concrete(),
                include_usage: meta.include_usage,
                id: id.to_string(),
                created,
                model: meta.model.clone(),
                started: false,
                think_open: false,
                content: String::new(),
                reasoning: String::new(),
                refusal: String::new(),
                calls: Vec::new(),
                finish: None,
                usage: None,
            },
        }
    }

    /// Feeds one upstream event's `data` (JSON); appends the resulting SSE bytes to `out`.
    /// An `Err` means the event was unreadable; the error chunk is already in `out` and the
    /// outcome is `Failed`.
    pub fn push_event(&mut self, data: &str, out: &mut Vec<u8>) -> Result<(), WrapperError> {
        let renderer = &mut self.renderer;
        self.interpreter
            .interpret(data, &mut |signal| renderer.render(signal, out))
    }

    /// The upstream body ended. Writes the error chunk if no terminal event came.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let renderer = &mut self.renderer;
        self.interpreter
            .finish(&mut |signal| renderer.render(signal, out));
    }

    pub fn outcome(&self) -> &StreamOutcome {
        self.interpreter.outcome()
    }

    /// The complete `chat.completion` body (for non-streaming clients) built from what the
    /// stream produced. Meaningful when [`ChatStream::outcome`] is `Completed`.
    pub fn final_completion(&self) -> Value {
        self.renderer.final_completion()
    }
}

/// A function call item a chat client could not use: without a name, or without any id.
fn unusable_call(event: &UpstreamEvent<'_>) -> Option<&'static str> {
    let item = event.item.as_ref().filter(|i| i.kind == "function_call")?;
    if item.name.as_deref().unwrap_or_default().is_empty() {
        return Some("upstream sent a function call without a name");
    }
    let has_id = [&item.call_id, &item.id]
        .iter()
        .any(|id| !id.as_deref().unwrap_or_default().is_empty());
    (!has_id).then_some("upstream sent a function call without an id")
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Fixture streams and helpers shared by the chat and completions tests.

    use crate::sse::SseReader;

    pub(crate) const TEXT: &str =
        include_str!("../../../../tests/fixtures/responses-streams/text.sse");
    pub(crate) const REASONING: &str =
        include_str!("../../../../tests/fixtures/responses-streams/reasoning.sse");
    pub(crate) const PARALLEL_TOOLS: &str =
        include_str!("../../../../tests/fixtures/responses-streams/parallel-tools.sse");
    pub(crate) const INCOMPLETE: &str =
        include_str!("../../../../tests/fixtures/responses-streams/incomplete-max-tokens.sse");
    pub(crate) const FAILED: &str =
        include_str!("../../../../tests/fixtures/responses-streams/failed.sse");
    pub(crate) const NO_USAGE: &str =
        include_str!("../../../../tests/fixtures/responses-streams/no-usage.sse");

    pub(crate) const ALL: [(&str, &str); 6] = [
        ("text", TEXT),
        ("reasoning", REASONING),
        ("parallel-tools", PARALLEL_TOOLS),
        ("incomplete-max-tokens", INCOMPLETE),
        ("failed", FAILED),
        ("no-usage", NO_USAGE),
    ];

    /// Parses SSE bytes fed in `piece`-byte slices; returns each event's data.
    pub(crate) fn sse_data(bytes: &[u8], piece: usize) -> Vec<String> {
        let mut reader = SseReader::default();
        let mut out = Vec::new();
        for slice in bytes.chunks(piece.max(1)) {
            reader.push(slice);
            while let Ok(Some(event)) = reader.next_event() {
                out.push(event.data.to_string());
            }
        }
        if let Ok(Some(event)) = reader.finish() {
            out.push(event.data.to_string());
        }
        out
    }

    /// Saves a converted output for validate_sse.py when `WRAPPER_OUT_DIR` is set.
    pub(crate) fn save_output(name: &str, bytes: &[u8]) {
        if let Ok(dir) = std::env::var("WRAPPER_OUT_DIR") {
            let _ = std::fs::write(format!("{dir}/{name}"), bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::sse::SseReader;
    use openai_conformance::chat::{check_chat_completion, check_chat_stream};
    use serde_json::json;

    fn meta(include_usage: bool) -> ClientMeta {
        ClientMeta {
            stream: true,
            include_usage,
            model: "gpt-5".into(),
        }
    }

    /// Feeds a fixture through SseReader in `piece`-byte slices into a new ChatStream.
    fn translate(
        fixture: &str,
        mode: ReasoningOutputMode,
        include_usage: bool,
        piece: usize,
    ) -> (ChatStream, Vec<u8>) {
        let mut stream =
            ChatStream::new(&meta(include_usage), mode, 1_700_000_000, "chatcmpl-test");
        let mut out = Vec::new();
        let mut reader = SseReader::default();
        for slice in fixture.as_bytes().chunks(piece.max(1)) {
            reader.push(slice);
            while let Ok(Some(event)) = reader.next_event() {
                let _ = stream.push_event(event.data, &mut out);
            }
        }
        if let Ok(Some(event)) = reader.finish() {
            let _ = stream.push_event(event.data, &mut out);
        }
        stream.finish(&mut out);
        (stream, out)
    }

    fn chunks(out: &[u8]) -> Vec<Value> {
        sse_data(out, usize::MAX)
            .iter()
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    fn deltas(out: &[u8]) -> Vec<Value> {
        chunks(out)
            .into_iter()
            .filter_map(|c| c["choices"].get(0).map(|c| c["delta"].clone()))
            .collect()
    }

    fn concat(out: &[u8], field: &str) -> String {
        deltas(out)
            .iter()
            .filter_map(|d| d[field].as_str().map(str::to_string))
            .collect()
    }

    fn mode_name(mode: ReasoningOutputMode) -> String {
        format!("{mode:?}").to_lowercase()
    }

    #[test]
    fn every_fixture_every_mode_every_split_conforms() {
        for (name, fixture) in ALL {
            for mode in ReasoningOutputMode::every() {
                for include_usage in [false, true] {
                    let (stream, whole) = translate(fixture, mode, include_usage, usize::MAX);
                    for piece in [1, 3, 17, 256] {
                        let (_, split) = translate(fixture, mode, include_usage, piece);
                        assert_eq!(split, whole, "{name} {mode:?} piece {piece}");
                    }
                    let events = sse_data(&whole, usize::MAX);
                    check_chat_stream(&events).unwrap_or_else(|e| panic!("{name} {mode:?}: {e}"));
                    let usage = if include_usage { "-usage" } else { "" };
                    let file = format!("chat-{name}-{}{usage}", mode_name(mode));
                    save_output(&format!("{file}.sse"), &whole);
                    if *stream.outcome() == StreamOutcome::Completed {
                        let body = stream.final_completion();
                        check_chat_completion(&body)
                            .unwrap_or_else(|e| panic!("{name} {mode:?} body: {e}"));
                        save_output(&format!("{file}.json"), body.to_string().as_bytes());
                    }
                }
            }
        }
    }

    #[test]
    fn text_stream_exact_chunks() {
        let (_, out) = translate(TEXT, ReasoningOutputMode::OpenAi, true, usize::MAX);
        // The model is the one the upstream reported in `response.created`, not the name sent.
        let head = r#"data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,"model":"gpt-5-2025-08-07","choices":"#;
        let expected = [
            r#"[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
            r#"[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}"#,
            r#"[{"index":0,"delta":{"content":"! How can"},"logprobs":null,"finish_reason":null}]}"#,
            r#"[{"index":0,"delta":{"content":" I help \"you\" today?\n"},"logprobs":null,"finish_reason":null}]}"#,
            r#"[{"index":0,"delta":{"content":"Ünïcødé ✓"},"logprobs":null,"finish_reason":null}]}"#,
            r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}"#,
            r#"[],"usage":{"completion_tokens":9,"completion_tokens_details":{"reasoning_tokens":0},"prompt_tokens":12,"prompt_tokens_details":{"cached_tokens":4},"total_tokens":21}}"#,
        ];
        let mut want = String::new();
        for tail in expected {
            want.push_str(head);
            want.push_str(tail);
            want.push_str("\n\n");
        }
        want.push_str("data: [DONE]\n\n");
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn the_model_is_the_upstream_one_else_the_one_sent() {
        let first_model = |fixture: &str| -> (String, String) {
            let (stream, out) = translate(fixture, ReasoningOutputMode::OpenAi, false, 3);
            let first: Value = serde_json::from_str(&sse_data(&out, usize::MAX)[0]).unwrap();
            let body = stream.final_completion();
            (
                first["model"].as_str().unwrap().to_string(),
                body["model"].as_str().unwrap().to_string(),
            )
        };
        let reported = (
            "gpt-5-2025-08-07".to_string(),
            "gpt-5-2025-08-07".to_string(),
        );
        assert_eq!(first_model(TEXT), reported);
        // Without `response.created`, `response.completed` names it for the body only if no
        // chunk went out yet: streams keep one model throughout.
        let no_created: String = TEXT
            .split("\n\n")
            .filter(|e| !e.contains("response.created") && !e.contains("response.in_progress"))
            .map(|e| format!("{e}\n\n"))
            .collect();
        assert_eq!(
            first_model(&no_created),
            ("gpt-5".to_string(), "gpt-5".to_string())
        );
        // No model anywhere: the model sent upstream.
        let anonymous = TEXT.replace(r#""model":"gpt-5-2025-08-07","#, "");
        assert!(!anonymous.contains("gpt-5-2025"));
        assert_eq!(
            first_model(&anonymous),
            ("gpt-5".to_string(), "gpt-5".to_string())
        );
    }

    #[test]
    fn parallel_tool_calls_get_their_own_indices() {
        let (stream, out) = translate(PARALLEL_TOOLS, ReasoningOutputMode::Hidden, false, 5);
        let calls: Vec<Value> = deltas(&out)
            .into_iter()
            .filter_map(|d| d.get("tool_calls").map(|c| c[0].clone()))
            .collect();
        assert_eq!(
            calls,
            vec![
                json!({"index":0,"id":"call_paris","type":"function","function":{"name":"get_weather","arguments":""}}),
                json!({"index":0,"function":{"arguments":"{\"ci"}}),
                json!({"index":0,"function":{"arguments":"ty\":\"Pa"}}),
                json!({"index":0,"function":{"arguments":"ris\"}"}}),
                json!({"index":1,"id":"call_rome","type":"function","function":{"name":"get_weather","arguments":""}}),
                json!({"index":1,"function":{"arguments":"{\"city\":"}}),
                json!({"index":1,"function":{"arguments":"\"Rome\"}"}}),
            ]
        );
        let last = chunks(&out).pop().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        let body = stream.final_completion();
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            body["choices"][0]["message"]["tool_calls"],
            json!([
                {"id":"call_paris","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                {"id":"call_rome","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Rome\"}"}},
            ])
        );
        assert_eq!(
            body["usage"]["completion_tokens_details"]["reasoning_tokens"],
            10
        );
    }

    #[test]
    fn arguments_only_in_done_events_are_still_sent() {
        let mut stream = ChatStream::new(&meta(false), ReasoningOutputMode::OpenAi, 1, "c");
        let mut out = Vec::new();
        let events = [
            r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","id":"fc1","call_id":"call1","name":"f","arguments":""}}"#,
            r#"{"type":"response.function_call_arguments.delta","item_id":"fc1","output_index":0,"delta":"{\"a\""}"#,
            r#"{"type":"response.function_call_arguments.done","item_id":"fc1","output_index":0,"arguments":"{\"a\":1}"}"#,
            r#"{"type":"response.output_item.done","output_index":0,"item":{"type":"function_call","id":"fc1","call_id":"call1","name":"f","arguments":"{\"a\":1}"}}"#,
            r#"{"type":"response.output_item.done","output_index":1,"item":{"type":"function_call","id":"fc2","call_id":"call2","name":"g","arguments":"{}"}}"#,
            r#"{"type":"response.completed","response":{"status":"completed"}}"#,
        ];
        for e in events {
            stream.push_event(e, &mut out).unwrap();
        }
        check_chat_stream(&sse_data(&out, usize::MAX)).unwrap();
        let body = stream.final_completion();
        let calls = &body["choices"][0]["message"]["tool_calls"];
        assert_eq!(calls[0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(calls[1]["id"], "call2");
        assert_eq!(calls[1]["function"]["arguments"], "{}");
    }

    #[test]
    fn reasoning_modes_render_as_specified() {
        let (stream, out) = translate(REASONING, ReasoningOutputMode::OpenAi, false, usize::MAX);
        let expected = "**Planning the answer**\n\nThe user wants 2+2.\n**Computing**\n\n2+2 is 4.";
        assert_eq!(concat(&out, "reasoning_content"), expected);
        assert_eq!(concat(&out, "content"), "The answer is 4.");
        let message = &stream.final_completion()["choices"][0]["message"];
        assert_eq!(message["reasoning_content"], expected);
        assert_eq!(message["content"], "The answer is 4.");

        let (_, out) = translate(REASONING, ReasoningOutputMode::R1, false, usize::MAX);
        assert_eq!(
            concat(&out, "reasoning_content"),
            expected.replacen(".\n**", ".**", 1)
        );

        let (stream, out) = translate(REASONING, ReasoningOutputMode::O3, false, usize::MAX);
        let o3: Vec<Value> = deltas(&out)
            .into_iter()
            .filter_map(|d| d.get("reasoning").cloned())
            .collect();
        assert_eq!(
            o3[0],
            json!({"content": [{"index": 0, "type": "text", "text": "**Planning"}]})
        );
        assert_eq!(o3.len(), 4);
        let message = &stream.final_completion()["choices"][0]["message"];
        assert!(message["reasoning"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("**Planning"));

        let (stream, out) = translate(REASONING, ReasoningOutputMode::Tagged, false, usize::MAX);
        let tagged = format!("<think>{expected}</think>The answer is 4.");
        assert_eq!(concat(&out, "content"), tagged);
        assert!(concat(&out, "reasoning_content").is_empty());
        assert_eq!(
            stream.final_completion()["choices"][0]["message"]["content"],
            tagged
        );

        let (stream, out) = translate(REASONING, ReasoningOutputMode::Hidden, false, usize::MAX);
        assert!(!String::from_utf8(out).unwrap().contains("Planning"));
        assert!(stream.final_completion()["choices"][0]["message"]
            .get("reasoning_content")
            .is_none());
    }

    #[test]
    fn tagged_think_closes_before_tool_calls_and_at_the_end() {
        let (_, out) = translate(
            PARALLEL_TOOLS,
            ReasoningOutputMode::Tagged,
            false,
            usize::MAX,
        );
        let d = deltas(&out);
        let close = d.iter().position(|d| d["content"] == "</think>").unwrap();
        let first_call = d
            .iter()
            .position(|d| d.get("tool_calls").is_some())
            .unwrap();
        assert!(close < first_call);
        let mut stream = ChatStream::new(&meta(false), ReasoningOutputMode::Tagged, 1, "c");
        let mut out = Vec::new();
        for e in [
            r#"{"type":"response.reasoning_summary_text.delta","output_index":0,"summary_index":0,"delta":"hm"}"#,
            r#"{"type":"response.completed","response":{"status":"completed"}}"#,
        ] {
            stream.push_event(e, &mut out).unwrap();
        }
        assert_eq!(concat(&out, "content"), "<think>hm</think>");
    }

    #[test]
    fn finish_chunk_and_usage_without_upstream_usage() {
        let (stream, out) = translate(NO_USAGE, ReasoningOutputMode::OpenAi, true, usize::MAX);
        let all = chunks(&out);
        assert_eq!(all[all.len() - 2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(all[all.len() - 1]["choices"], json!([]));
        assert_eq!(all[all.len() - 1]["usage"]["total_tokens"], 0);
        assert!(out.ends_with(b"data: [DONE]\n\n"));
        assert_eq!(stream.final_completion()["usage"]["prompt_tokens"], 0);
        let (_, out) = translate(NO_USAGE, ReasoningOutputMode::OpenAi, false, usize::MAX);
        assert!(chunks(&out).iter().all(|c| c.get("usage").is_none()));
    }

    #[test]
    fn incomplete_is_length() {
        let (stream, out) = translate(INCOMPLETE, ReasoningOutputMode::OpenAi, false, usize::MAX);
        assert_eq!(
            chunks(&out).pop().unwrap()["choices"][0]["finish_reason"],
            "length"
        );
        assert_eq!(*stream.outcome(), StreamOutcome::Completed);
        assert_eq!(
            stream.final_completion()["choices"][0]["finish_reason"],
            "length"
        );
        let mut stream = ChatStream::new(&meta(false), ReasoningOutputMode::OpenAi, 1, "c");
        let mut out = Vec::new();
        let filtered = r#"{"type":"response.incomplete","response":{"incomplete_details":{"reason":"content_filter"}}}"#;
        stream.push_event(filtered, &mut out).unwrap();
        assert_eq!(
            stream.final_completion()["choices"][0]["finish_reason"],
            "content_filter"
        );
    }

    #[test]
    fn failed_stream_ends_with_an_error_chunk() {
        let (stream, out) = translate(FAILED, ReasoningOutputMode::OpenAi, true, usize::MAX);
        let events = sse_data(&out, usize::MAX);
        assert_eq!(events.last().unwrap(), "[DONE]");
        let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(
            error,
            json!({"error": {"message": "The model failed to generate a response.",
                "type": "server_error", "param": null, "code": "server_error"}})
        );
        let failure = stream.outcome().error().unwrap();
        assert_eq!(failure.status, 502);
        assert!(failure.to_body().contains("failed to generate"));
    }

    #[test]
    fn error_event_truncation_and_bad_json_fail() {
        let mut stream = ChatStream::new(&meta(false), ReasoningOutputMode::OpenAi, 1, "c");
        let mut out = Vec::new();
        stream
            .push_event(r#"{"type":"error","code":"rate_limit_exceeded","message":"slow down","sequence_number":3}"#, &mut out)
            .unwrap();
        assert_eq!(
            *stream.outcome(),
            StreamOutcome::Failed {
                message: "slow down".into(),
                code: Some("rate_limit_exceeded".into())
            }
        );
        let before = out.len();
        stream
            .push_event(r#"{"type":"response.completed","response":{}}"#, &mut out)
            .unwrap();
        stream.finish(&mut out);
        assert_eq!(out.len(), before, "nothing after the terminal event");

        let mut stream = ChatStream::new(&meta(false), ReasoningOutputMode::OpenAi, 1, "c");
        let mut out = Vec::new();
        stream
            .push_event(
                r#"{"type":"response.output_text.delta","delta":"hi"}"#,
                &mut out,
            )
            .unwrap();
        stream.finish(&mut out);
        assert!(
            matches!(stream.outcome(), StreamOutcome::Failed { code: Some(c), .. } if c == "stream_incomplete")
        );
        check_chat_stream(&sse_data(&out, usize::MAX)).unwrap();

        let mut stream = ChatStream::new(&meta(false), ReasoningOutputMode::OpenAi, 1, "c");
        let mut out = Vec::new();
        let err = stream
            .push_event(
                r#"{"type":"response.output_text.delta","delta":5}"#,
                &mut out,
            )
            .unwrap_err();
        assert_eq!(err.status, 502);
        assert!(stream.outcome().error().is_some());
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn leading_type_is_read_without_parsing() {
        assert_eq!(
            leading_type(r#"{"type":"response.created","x":1}"#),
            Some("response.created")
        );
        assert_eq!(leading_type(r#"{"type":"a\"b"}"#), None);
        assert_eq!(leading_type(r#"{ "type":"a"}"#), None);
        assert_eq!(leading_type(r#"{"type":"unterminated"#), None);
    }

    #[test]
    fn unknown_and_odd_events_are_ignored() {
        let mut stream = ChatStream::new(&meta(false), ReasoningOutputMode::OpenAi, 1, "c");
        let mut out = Vec::new();
        for e in [
            r#"{"type":"response.created","response":{"id":"r"}}"#,
            r#"{"type":"response.future_thing","delta":{"nested":[1,2]},"output_index":"x"}"#,
            r#"not json at all"#,
            r#"[DONE]"#,
            r#"{"type":"response.function_call_arguments.delta","item_id":"nope","delta":"x"}"#,
            r#"{"type":"response.output_text.delta","delta":"ok"}"#,
            r#"{"type":"response.completed","response":{"usage":null}}"#,
        ] {
            let _ = stream.push_event(e, &mut out);
        }
        // A non-JSON line has no type: it fails the stream (it could have been anything).
        assert!(stream.outcome().error().is_some());
        let mut stream = ChatStream::new(&meta(false), ReasoningOutputMode::OpenAi, 1, "c");
        let mut out = Vec::new();
        for e in [
            r#"{"type":"response.future_thing","delta":{"nested":[1,2]},"output_index":"x"}"#,
            r#"{"type":"response.output_text.delta","delta":"ok"}"#,
            r#"{"type":"response.completed","response":{"usage":null}}"#,
        ] {
            stream.push_event(e, &mut out).unwrap();
        }
        assert_eq!(concat(&out, "content"), "ok");
        check_chat_stream(&sse_data(&out, usize::MAX)).unwrap();
    }
}
