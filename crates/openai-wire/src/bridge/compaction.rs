//! Remote compaction on a chat upstream, the pure part.
//!
//! Codex, when its context fills, sends an ordinary Responses request whose last input item is
//! `{"type":"compaction_trigger"}` and expects exactly one output item
//! `{"type":"compaction","encrypted_content":…}`; later requests carry that item in place of
//! the history it stands for. A chat upstream has no such thing, so the bridge:
//! - turns the conversation into a transcript and asks the chat model for a summary
//!   ([`summarisation_request`], with our own [`COMPACTION_INSTRUCTIONS`]);
//! - answers with one `compaction` item whose `encrypted_content` is the summary sealed by the
//!   caller's `seal` function ([`CompactionStream`]; sealing, a keyed MAC, is the worker's);
//! - in later requests, puts the summary back in place of the item
//!   ([`restore_compaction_items`]), or refuses with a 400 an item it cannot open: never drops
//!   it silently.
//!
//! No I/O, no clocks, no keys here.
//!
//! Uses: nothing else of this crate and serde_json.

use serde_json::{json, Value};

use super::request::RequestError;
use super::stored::user_text_message;
use super::stream::{ChatStreamConverter, StreamError};

/// The system instructions of the summarisation request.
pub const COMPACTION_INSTRUCTIONS: &str = "\
You are compacting the history of a conversation between a user and a coding assistant that \
uses tools (shell commands, file edits). The history no longer fits in the assistant's context \
window. Write a summary that will replace it: the assistant will continue the work with only \
its instructions, the user's latest messages and your summary, so anything you leave out is \
lost.

Keep, concisely and precisely:
- the user's goals and requirements, in their own terms, and any constraints or preferences \
they stated;
- decisions taken and why, including approaches tried and abandoned;
- every file path, function, command, URL, identifier or value that matters, spelled exactly;
- commands run and their outcomes (succeeded, failed with which error, what the output showed);
- tool results that later work depends on (test results, build errors, data found);
- the current state of the work: what is done, what is in progress, what remains, and the \
next step the assistant was about to take;
- open questions and anything the user asked to be remembered.

Leave out pleasantries, repeated content and output that no longer matters. Do not invent \
anything. Write in the language of the conversation, as plain text or Markdown, under \
headings such as Goal, Decisions, Files, Commands and results, State, Next steps. Output only \
the summary.";

/// How the summary is introduced when it is put back in place of a `compaction` item.
pub const SUMMARY_PREAMBLE: &str = "Summary of the earlier part of this conversation (the \
turns it replaces were compacted away when the context filled up):";

/// Longest stretch of one tool output or message kept in the transcript; longer ones keep
/// their start and end.
const TRANSCRIPT_PART_LIMIT: usize = 12 * 1024;

/// Whether the request is a compaction request: its last input item is a `compaction_trigger`.
pub fn is_compaction_trigger(body: &Value) -> bool {
    body.get("input")
        .and_then(Value::as_array)
        .and_then(|items| items.last())
        .and_then(|item| item.get("type"))
        .and_then(Value::as_str)
        == Some("compaction_trigger")
}

/// Replaces every `compaction` (or `compaction_summary`) input item by a user message
/// carrying the summary that `open` recovers from its `encrypted_content`. An item `open`
/// cannot open (not made by this proxy, altered, or from another provider) is a 400 naming
/// it. Returns how many items were restored.
pub fn restore_compaction_items(
    body: &mut Value,
    open: impl Fn(&str) -> Option<String>,
) -> Result<usize, RequestError> {
    let Some(items) = body.get_mut("input").and_then(Value::as_array_mut) else {
        return Ok(0);
    };
    let mut restored = 0;
    for (i, item) in items.iter_mut().enumerate() {
        let kind = item.get("type").and_then(Value::as_str).unwrap_or_default();
        if kind != "compaction" && kind != "compaction_summary" {
            continue;
        }
        let path = format!("input[{i}].encrypted_content");
        let summary = item
            .get("encrypted_content")
            .and_then(Value::as_str)
            .and_then(&open)
            .ok_or_else(|| RequestError {
                status: 400,
                message: format!(
                    "This `{kind}` item was not made by this proxy, or was altered: its \
                     integrity check failed, so the conversation it summarises cannot be \
                     restored. Start a new conversation (or resend the full history) \
                     instead."
                ),
                param: Some(path),
                code: Some("invalid_encrypted_content"),
            })?;
        *item = user_text_message(&format!("{SUMMARY_PREAMBLE}\n\n{summary}"));
        restored += 1;
    }
    Ok(restored)
}

/// The Responses request that asks the chat model for the summary: our instructions, and the
/// conversation (every item but a trailing `compaction_trigger` and the system/developer
/// messages, which the client sends again after compaction) as one transcript.
pub fn summarisation_request(body: &Value, stream: bool) -> Value {
    let items: &[Value] = body
        .get("input")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let items = match items.split_last() {
        Some((last, rest))
            if last.get("type").and_then(Value::as_str) == Some("compaction_trigger") =>
        {
            rest
        }
        _ => items,
    };
    let transcript = match body.get("input") {
        Some(Value::String(text)) => format!("USER:\n{}", clip(text)),
        _ => transcript(items),
    };
    let prompt = format!(
        "<conversation>\n{transcript}\n</conversation>\n\nWrite the summary of the conversation \
         above now."
    );
    let mut request = json!({
        "model": body.get("model").cloned().unwrap_or(Value::Null),
        "instructions": COMPACTION_INSTRUCTIONS,
        "input": [user_text_message(&prompt)],
        "stream": stream,
        "store": false,
    });
    if let Some(reasoning) = body.get("reasoning").filter(|r| r.is_object()) {
        request["reasoning"] = reasoning.clone();
    }
    request
}

/// The conversation as plain text, one block per item.
pub fn transcript(items: &[Value]) -> String {
    let mut blocks = Vec::new();
    for item in items {
        let kind = match item.get("type").and_then(Value::as_str) {
            Some(kind) => kind,
            None if item.get("role").is_some() => "message",
            None => continue,
        };
        let field = |name: &str| item.get(name).and_then(Value::as_str).unwrap_or_default();
        match kind {
            "message" => {
                let role = field("role");
                if role == "system" || role == "developer" {
                    continue;
                }
                let text = content_text(item.get("content"));
                if !text.trim().is_empty() {
                    blocks.push(format!("{}:\n{}", role.to_uppercase(), clip(&text)));
                }
            }
            "function_call" => {
                let name = match item.get("namespace").and_then(Value::as_str) {
                    Some(ns) => format!("{ns}.{}", field("name")),
                    None => field("name").to_string(),
                };
                blocks.push(format!(
                    "ASSISTANT CALLED TOOL {name} (call {}):\n{}",
                    field("call_id"),
                    clip(field("arguments"))
                ));
            }
            "custom_tool_call" => blocks.push(format!(
                "ASSISTANT CALLED TOOL {} (call {}):\n{}",
                field("name"),
                field("call_id"),
                clip(field("input"))
            )),
            "function_call_output" | "custom_tool_call_output" => blocks.push(format!(
                "TOOL OUTPUT (call {}):\n{}",
                field("call_id"),
                clip(&content_text(item.get("output")))
            )),
            "reasoning" => {
                let text = content_text(item.get("summary"));
                if !text.trim().is_empty() {
                    blocks.push(format!("ASSISTANT REASONING:\n{}", clip(&text)));
                }
            }
            _ => {}
        }
    }
    blocks.join("\n\n")
}

/// The text of a content value: a string, or the `text` of each part (images as `[image]`).
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| match part.get("text").and_then(Value::as_str) {
                Some(text) => Some(text.to_string()),
                None if part.get("type").and_then(Value::as_str) == Some("input_image") => {
                    Some("[image]".to_string())
                }
                None => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// `text`, or its start and end when it is longer than [`TRANSCRIPT_PART_LIMIT`].
fn clip(text: &str) -> String {
    if text.len() <= TRANSCRIPT_PART_LIMIT {
        return text.to_string();
    }
    let head_end = floor_char_boundary(text, TRANSCRIPT_PART_LIMIT * 2 / 3);
    let tail_start = ceil_char_boundary(text, text.len() - TRANSCRIPT_PART_LIMIT / 3);
    format!(
        "{}\n[… {} bytes left out …]\n{}",
        &text[..head_end],
        tail_start - head_end,
        &text[tail_start..]
    )
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// The user messages of a request's input (restored summaries left out): what
/// `POST /v1/responses/compact` keeps beside the compaction item, as OpenAI's endpoint does.
pub fn user_messages(body: &Value) -> Vec<Value> {
    let items = body.get("input").and_then(Value::as_array);
    items
        .into_iter()
        .flatten()
        .filter(|item| {
            item.get("role").and_then(Value::as_str) == Some("user")
                && matches!(
                    item.get("type").and_then(Value::as_str),
                    None | Some("message")
                )
                && !content_text(item.get("content")).starts_with(SUMMARY_PREAMBLE)
        })
        .cloned()
        .collect()
}

/// The answer of `POST /v1/responses/compact` (the endpoint earlier Codex versions called):
/// the summarisation response with `object: "response.compaction"` and `output` = the kept
/// user messages, then the compaction item.
pub fn compact_endpoint_response(kept: Vec<Value>, mut response: Value) -> Value {
    let mut output = kept;
    output.extend(response["output"].as_array().cloned().unwrap_or_default());
    response["object"] = json!("response.compaction");
    response["output"] = Value::Array(output);
    response
}

/// The summary a completed summarisation response carries: its output text.
pub fn summary_text(response: &Value) -> String {
    let mut text = String::new();
    for item in response["output"].as_array().into_iter().flatten() {
        if item["type"] == "message" {
            for part in item["content"].as_array().into_iter().flatten() {
                if let Some(t) = part["text"].as_str() {
                    text.push_str(t);
                }
            }
        }
    }
    text.trim().to_string()
}

/// Turns the chat stream of a summarisation request into a Responses stream whose only output
/// item is one `compaction` item (or a `response.failed`): `response.created` and
/// `response.in_progress` pass through from the inner converter, its item events are held
/// back, and at the end the summary is sealed into the item.
pub struct CompactionStream {
    inner: ChatStreamConverter,
    seal: Box<dyn Fn(&str) -> String + Send>,
    item_id: String,
    /// The next event's `sequence_number` once the inner converter's lifecycle events are out.
    sequence_number: u64,
    started: bool,
    result: Option<Value>,
}

impl CompactionStream {
    /// `inner` converts the summarisation request's chat stream; `response_id` is the one it
    /// was made with; `seal` turns the summary into `encrypted_content`.
    pub fn new(
        inner: ChatStreamConverter,
        response_id: &str,
        seal: Box<dyn Fn(&str) -> String + Send>,
    ) -> Self {
        let suffix = response_id.strip_prefix("resp_").unwrap_or(response_id);
        CompactionStream {
            inner,
            seal,
            item_id: format!("cmp_{suffix}"),
            sequence_number: 2,
            started: false,
            result: None,
        }
    }

    /// Writes `response.created` and `response.in_progress`.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.inner.start(out);
        }
    }

    /// One upstream SSE event's data.
    pub fn push_sse_data(&mut self, data: &str, out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.start(out);
        let result = self.inner.push_sse_data(data, &mut Vec::new());
        self.finish_if_done(out);
        result
    }

    /// The upstream body ended.
    pub fn end_of_stream(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        self.inner.end_of_stream(&mut Vec::new());
        self.finish_if_done(out);
    }

    /// The upstream failed.
    pub fn fail(&mut self, code: &str, message: &str, out: &mut Vec<u8>) {
        self.start(out);
        self.inner.fail(code, message, &mut Vec::new());
        self.finish_if_done(out);
    }

    /// Whether the terminal event has been written.
    pub fn is_terminated(&self) -> bool {
        self.result.is_some()
    }

    /// The final `Response` object (`None` before the terminal event).
    pub fn final_response(&self) -> Option<&Value> {
        self.result.as_ref()
    }

    fn finish_if_done(&mut self, out: &mut Vec<u8>) {
        if self.result.is_some() || !self.inner.is_terminated() {
            return;
        }
        let mut response = self.inner.final_response();
        let failure = match self.inner.status() {
            "completed" => {
                let summary = summary_text(&response);
                if summary.is_empty() {
                    Some("the model returned an empty summary".to_string())
                } else {
                    let item = json!({
                        "type": "compaction",
                        "id": self.item_id,
                        "encrypted_content": (self.seal)(&summary),
                    });
                    self.emit(
                        "response.output_item.added",
                        json!({"output_index": 0, "item": item}),
                        out,
                    );
                    self.emit(
                        "response.output_item.done",
                        json!({"output_index": 0, "item": item}),
                        out,
                    );
                    response["output"] = json!([item]);
                    self.emit("response.completed", json!({"response": response}), out);
                    None
                }
            }
            "incomplete" => {
                Some("the summary was cut short by the upstream's output limit".to_string())
            }
            _ => None,
        };
        if self.inner.status() != "completed" || failure.is_some() {
            if let Some(message) = failure {
                response["error"] = json!({"code": "server_error", "message": message});
            }
            response["status"] = json!("failed");
            response["output"] = json!([]);
            response["incomplete_details"] = Value::Null;
            self.emit("response.failed", json!({"response": response}), out);
        }
        self.result = Some(response);
    }

    fn emit(&mut self, kind: &str, mut body: Value, out: &mut Vec<u8>) {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.sequence_number);
        self.sequence_number += 1;
        crate::sse::write_json_event(out, Some(kind), &body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::request::responses_to_chat;

    fn seal(summary: &str) -> String {
        format!("sealed:{summary}")
    }

    fn open(blob: &str) -> Option<String> {
        blob.strip_prefix("sealed:").map(str::to_string)
    }

    fn events(out: &[u8]) -> Vec<Value> {
        let mut reader = crate::sse::SseReader::default();
        reader.push(out);
        let mut events = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            events.push(serde_json::from_str(event.data).unwrap());
        }
        events
    }

    fn codex_trigger_request() -> Value {
        json!({"model": "m", "stream": true, "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "SYSTEM PROMPT"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix src/main.rs"}]},
            {"type": "function_call", "name": "exec_command", "arguments": "{\"cmd\":\"cargo test\"}", "call_id": "c1"},
            {"type": "function_call_output", "call_id": "c1", "output": "1 test failed"},
            {"type": "compaction_trigger"}
        ]})
    }

    #[test]
    fn a_trigger_becomes_a_summarisation_request_with_the_transcript() {
        let body = codex_trigger_request();
        assert!(is_compaction_trigger(&body));
        let request = summarisation_request(&body, true);
        assert_eq!(request["instructions"], COMPACTION_INSTRUCTIONS);
        let text = request["input"][0]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("USER:\nfix src/main.rs"), "{text}");
        assert!(text.contains("exec_command"), "{text}");
        assert!(text.contains("1 test failed"), "{text}");
        assert!(!text.contains("SYSTEM PROMPT"), "{text}");
        assert!(!text.contains("compaction_trigger"), "{text}");
        let plan = responses_to_chat(&request).unwrap();
        assert_eq!(plan.chat_body["messages"][0]["role"], "system");
        assert_eq!(plan.chat_body["messages"][1]["role"], "user");
    }

    #[test]
    fn the_stream_has_exactly_one_compaction_item_and_passes_conformance() {
        let plan =
            responses_to_chat(&summarisation_request(&codex_trigger_request(), true)).unwrap();
        let inner = ChatStreamConverter::new(plan.meta, "resp_abc", 1);
        let mut stream = CompactionStream::new(inner, "resp_abc", Box::new(seal));
        let mut out = Vec::new();
        stream.start(&mut out);
        for data in [
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Goal: fix "}}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"tests"},"finish_reason":"stop"}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13}}"#,
            "[DONE]",
        ] {
            stream.push_sse_data(data, &mut out).unwrap();
        }
        assert!(stream.is_terminated());
        let events = events(&out);
        openai_conformance::responses::check_responses_stream(&events).unwrap();
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.completed");
        let output = last["response"]["output"].as_array().unwrap();
        assert_eq!(output.len(), 1);
        assert_eq!(output[0]["type"], "compaction");
        assert_eq!(output[0]["encrypted_content"], "sealed:Goal: fix tests");
        assert!(!events
            .iter()
            .any(|e| e["type"] == "response.output_text.delta"));
    }

    #[test]
    fn a_failed_or_empty_summary_is_response_failed() {
        let plan =
            responses_to_chat(&summarisation_request(&codex_trigger_request(), true)).unwrap();
        let inner = ChatStreamConverter::new(plan.meta.clone(), "resp_abc", 1);
        let mut stream = CompactionStream::new(inner, "resp_abc", Box::new(seal));
        let mut out = Vec::new();
        stream.end_of_stream(&mut out);
        let cut = events(&out);
        openai_conformance::responses::check_responses_stream(&cut).unwrap();
        assert_eq!(cut.last().unwrap()["type"], "response.failed");

        let inner = ChatStreamConverter::new(plan.meta, "resp_abc", 1);
        let mut stream = CompactionStream::new(inner, "resp_abc", Box::new(seal));
        let mut out = Vec::new();
        stream.push_sse_data(r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"  "},"finish_reason":"stop"}]}"#, &mut out).unwrap();
        stream.push_sse_data("[DONE]", &mut out).unwrap();
        let events = events(&out);
        openai_conformance::responses::check_responses_stream(&events).unwrap();
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.failed");
        assert!(last["response"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("empty"));
    }

    #[test]
    fn compaction_items_are_restored_or_refused_never_dropped() {
        let mut body = json!({"model": "m", "input": [
            {"type": "message", "role": "user", "content": "hi"},
            {"type": "compaction", "id": "cmp_1", "encrypted_content": "sealed:the summary"}
        ]});
        assert_eq!(restore_compaction_items(&mut body, open).unwrap(), 1);
        let text = body["input"][1]["content"][0]["text"].as_str().unwrap();
        assert!(text.starts_with(SUMMARY_PREAMBLE));
        assert!(text.ends_with("the summary"));
        assert_eq!(body["input"][1]["role"], "user");

        for item in [
            json!({"type": "compaction", "encrypted_content": "gAAAAforeign"}),
            json!({"type": "compaction"}),
            json!({"type": "compaction_summary", "encrypted_content": 3}),
        ] {
            let mut body = json!({"model": "m", "input": [item]});
            let err = restore_compaction_items(&mut body, open).unwrap_err();
            assert_eq!(err.status, 400);
            assert_eq!(err.param.as_deref(), Some("input[0].encrypted_content"));
            assert!(err.message.contains("integrity check failed"));
        }
    }

    #[test]
    fn long_parts_keep_their_start_and_end() {
        let long = format!("START{}END", "é".repeat(20_000));
        let clipped = clip(&long);
        assert!(clipped.starts_with("START") && clipped.ends_with("END"));
        assert!(clipped.len() < TRANSCRIPT_PART_LIMIT + 100);
    }
}
