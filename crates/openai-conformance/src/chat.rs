//! Conformance checks for what the wrapper routes send: Chat Completions streams and bodies,
//! and legacy Completions streams and bodies. They assert the invariants clients rely on
//! (the ones the OpenAI SDK's models and stream accumulators enforce): required fields and
//! types, one id across chunks, consistent tool-call indices whose arguments concatenate to
//! JSON, exactly one `finish_reason` per choice, the usage chunk's shape, `[DONE]` last.
//!
//! Streams are given as the `data` of each event, `[DONE]` included. An error payload
//! (`{"error":{…}}`) is accepted as the last event before `[DONE]`; the finish rules do not
//! apply to such a stream.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

type Object = Map<String, Value>;

/// Checks a `chat.completion.chunk` stream.
pub fn check_chat_stream(events: &[String]) -> Result<(), String> {
    StreamChecker::new(Api::Chat).run(events)
}

/// Checks a `text_completion` stream.
pub fn check_completions_stream(events: &[String]) -> Result<(), String> {
    StreamChecker::new(Api::Completions).run(events)
}

/// Checks a non-streaming `chat.completion` body.
pub fn check_chat_completion(body: &Value) -> Result<(), String> {
    check_body(body, Api::Chat)
}

/// Checks a non-streaming `text_completion` body.
pub fn check_completion(body: &Value) -> Result<(), String> {
    check_body(body, Api::Completions)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
}

impl Api {
    fn chunk_object(self) -> &'static str {
        match self {
            Api::Chat => "chat.completion.chunk",
            Api::Completions => "text_completion",
        }
    }

    fn body_object(self) -> &'static str {
        match self {
            Api::Chat => "chat.completion",
            Api::Completions => "text_completion",
        }
    }

    fn finish_reasons(self) -> &'static [&'static str] {
        match self {
            Api::Chat => &[
                "stop",
                "length",
                "tool_calls",
                "content_filter",
                "function_call",
            ],
            Api::Completions => &["stop", "length", "content_filter"],
        }
    }
}

/// A tool call as accumulated from its fragments.
struct ToolState {
    id: String,
    arguments: String,
}

struct StreamChecker {
    api: Api,
    errors: Vec<String>,
    identity: Option<(Value, Value, Value)>,
    finished: BTreeMap<u64, String>,
    choices_seen: BTreeMap<u64, bool>,
    tools: BTreeMap<(u64, u64), ToolState>,
    usage_seen: bool,
    error_payload: bool,
    done: bool,
}

impl StreamChecker {
    fn new(api: Api) -> Self {
        StreamChecker {
            api,
            errors: Vec::new(),
            identity: None,
            finished: BTreeMap::new(),
            choices_seen: BTreeMap::new(),
            tools: BTreeMap::new(),
            usage_seen: false,
            error_payload: false,
            done: false,
        }
    }

    fn run(mut self, events: &[String]) -> Result<(), String> {
        if events.is_empty() {
            return Err("empty stream".into());
        }
        for (n, data) in events.iter().enumerate() {
            self.event(n + 1, data);
        }
        self.at_end();
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors.join("; "))
        }
    }

    fn err(&mut self, message: String) {
        self.errors.push(message);
    }

    fn event(&mut self, n: usize, data: &str) {
        if self.done {
            self.err(format!("event #{n}: data after [DONE]"));
            return;
        }
        if data.trim() == "[DONE]" {
            self.done = true;
            return;
        }
        if self.error_payload {
            self.err(format!("event #{n}: data after an error payload"));
        }
        let chunk = match serde_json::from_str::<Value>(data) {
            Ok(Value::Object(chunk)) => chunk,
            Ok(_) => return self.err(format!("event #{n}: not a JSON object")),
            Err(e) => return self.err(format!("event #{n}: invalid JSON ({e})")),
        };
        if chunk.contains_key("error") && !chunk.contains_key("choices") {
            self.error_payload = true;
            if !chunk["error"]["message"].is_string() {
                self.err(format!("event #{n}: error payload without error.message"));
            }
            return;
        }
        self.chunk(n, &chunk);
    }

    fn chunk(&mut self, n: usize, chunk: &Object) {
        let at = format!("chunk #{n}");
        self.identity(&at, chunk);
        let choices = match chunk.get("choices") {
            Some(Value::Array(c)) => c.as_slice(),
            _ => return self.err(format!("{at}: `choices` must be an array")),
        };
        match chunk.get("usage") {
            None | Some(Value::Null) => {
                if self.usage_seen && !choices.is_empty() {
                    self.err(format!("{at}: choices after the usage chunk"));
                }
            }
            Some(usage) => {
                if let Err(e) = check_usage(usage) {
                    self.err(format!("{at}: {e}"));
                }
                if !choices.is_empty() {
                    self.err(format!("{at}: the usage chunk must have `choices: []`"));
                }
                if self.usage_seen {
                    self.err(format!("{at}: usage sent twice"));
                }
                self.usage_seen = true;
            }
        }
        for choice in choices {
            self.choice(&at, choice);
        }
    }

    fn identity(&mut self, at: &str, chunk: &Object) {
        if chunk.get("object").and_then(Value::as_str) != Some(self.api.chunk_object()) {
            self.err(format!(
                "{at}: `object` must be {:?}",
                self.api.chunk_object()
            ));
        }
        let id = chunk.get("id").cloned().unwrap_or(Value::Null);
        let created = chunk.get("created").cloned().unwrap_or(Value::Null);
        let model = chunk.get("model").cloned().unwrap_or(Value::Null);
        if !id.is_string() {
            self.err(format!("{at}: `id` must be a string"));
        }
        if !created.is_u64() {
            self.err(format!("{at}: `created` must be an integer"));
        }
        if !model.is_string() {
            self.err(format!("{at}: `model` must be a string"));
        }
        let current = (id, created, model);
        match &self.identity {
            None => self.identity = Some(current),
            Some(first) if first.0 != current.0 => self.err(format!(
                "{at}: id changed from {} to {}",
                first.0, current.0
            )),
            Some(_) => {}
        }
    }

    fn choice(&mut self, at: &str, choice: &Value) {
        let Some(index) = choice.get("index").and_then(Value::as_u64) else {
            return self.err(format!("{at}: choice without an integer `index`"));
        };
        let at = format!("{at} choice {index}");
        if let Some(reason) = self.finished.get(&index) {
            let reason = reason.clone();
            self.err(format!("{at}: continues after finish_reason {reason:?}"));
        }
        let role_seen = self.choices_seen.entry(index).or_insert(false);
        if self.api == Api::Chat {
            if choice.pointer("/delta/role").is_some_and(|r| !r.is_null()) {
                *role_seen = true;
            }
            self.chat_delta(&at, index, choice.get("delta"));
        } else if !choice.get("text").is_some_and(Value::is_string) {
            self.err(format!("{at}: `text` must be a string"));
        }
        match choice.get("finish_reason") {
            Some(Value::Null) => {}
            Some(Value::String(reason)) => self.finish(&at, index, reason),
            _ => self.err(format!("{at}: `finish_reason` must be null or a string")),
        }
    }

    fn finish(&mut self, at: &str, index: u64, reason: &str) {
        if !self.api.finish_reasons().contains(&reason) {
            self.err(format!("{at}: unknown finish_reason {reason:?}"));
        }
        let has_tools = self.tools.keys().any(|(c, _)| *c == index);
        if reason == "tool_calls" && !has_tools {
            self.err(format!("{at}: finish_reason tool_calls without tool calls"));
        }
        if has_tools && !matches!(reason, "tool_calls" | "length" | "content_filter") {
            self.err(format!(
                "{at}: tool calls were streamed but finish_reason is {reason:?}"
            ));
        }
        self.finished.insert(index, reason.to_string());
    }

    fn chat_delta(&mut self, at: &str, choice: u64, delta: Option<&Value>) {
        let Some(delta) = delta.and_then(Value::as_object) else {
            return self.err(format!("{at}: `delta` must be an object"));
        };
        if let Some(role) = delta.get("role").filter(|r| !r.is_null()) {
            if role != "assistant" {
                self.err(format!("{at}: delta.role must be \"assistant\""));
            }
        }
        for key in ["content", "refusal", "reasoning_content"] {
            if delta
                .get(key)
                .is_some_and(|v| !v.is_null() && !v.is_string())
            {
                self.err(format!("{at}: delta.{key} must be a string or null"));
            }
        }
        match delta.get("tool_calls") {
            None | Some(Value::Null) => {}
            Some(Value::Array(calls)) => {
                for call in calls {
                    self.tool_call_fragment(at, choice, call);
                }
            }
            Some(_) => self.err(format!("{at}: delta.tool_calls must be an array")),
        }
    }

    fn tool_call_fragment(&mut self, at: &str, choice: u64, call: &Value) {
        let Some(index) = call.get("index").and_then(Value::as_u64) else {
            return self.err(format!(
                "{at}: tool call fragment without an integer `index`"
            ));
        };
        let id = call.get("id").and_then(Value::as_str);
        let name = call.pointer("/function/name").and_then(Value::as_str);
        let arguments = match call.pointer("/function/arguments") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return self.err(format!(
                    "{at}: tool call {index}: arguments must be a string"
                ))
            }
        };
        match self.tools.get_mut(&(choice, index)) {
            None => {
                let (Some(id), Some(_)) =
                    (id.filter(|i| !i.is_empty()), name.filter(|n| !n.is_empty()))
                else {
                    return self.err(format!(
                        "{at}: first fragment of tool call {index} needs `id` and `function.name`"
                    ));
                };
                if call.get("type").and_then(Value::as_str) != Some("function") {
                    self.err(format!(
                        "{at}: first fragment of tool call {index} needs type \"function\""
                    ));
                }
                self.tools.insert(
                    (choice, index),
                    ToolState {
                        id: id.to_string(),
                        arguments: arguments.to_string(),
                    },
                );
            }
            Some(state) => {
                let changed_id = id.is_some_and(|id| id != state.id);
                state.arguments.push_str(arguments);
                if changed_id {
                    self.err(format!(
                        "{at}: tool call index {index} changed id (parallel calls need distinct indices)"
                    ));
                }
                if name.is_some_and(|n| !n.is_empty()) {
                    self.err(format!("{at}: tool call {index} repeats function.name"));
                }
            }
        }
    }

    fn at_end(&mut self) {
        if !self.done {
            self.err("stream did not end with data: [DONE]".into());
        }
        if self.error_payload {
            return;
        }
        if self.choices_seen.is_empty() {
            self.err("stream has no choices (no finish chunk)".into());
        }
        let seen: Vec<(u64, bool)> = self.choices_seen.iter().map(|(i, r)| (*i, *r)).collect();
        for (index, role_seen) in seen {
            if !self.finished.contains_key(&index) {
                self.err(format!("choice {index} never received a finish_reason"));
            }
            if self.api == Api::Chat && !role_seen {
                self.err(format!(
                    "choice {index}: no delta carried role \"assistant\""
                ));
            }
        }
        let bad_arguments: Vec<String> = self
            .tools
            .iter()
            .filter(|(_, t)| serde_json::from_str::<Value>(&t.arguments).is_err())
            .map(|((c, i), t)| {
                format!(
                    "choice {c} tool call {i}: arguments {:?} are not JSON",
                    t.arguments
                )
            })
            .collect();
        self.errors.extend(bad_arguments);
    }
}

/// `usage`: integer counts with `total_tokens = prompt_tokens + completion_tokens`, and
/// integer `cached_tokens`/`reasoning_tokens` when the details are present.
fn check_usage(usage: &Value) -> Result<(), String> {
    let count = |key: &str| {
        usage
            .get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("usage.{key} must be a non-negative integer"))
    };
    let (prompt, completion, total) = (
        count("prompt_tokens")?,
        count("completion_tokens")?,
        count("total_tokens")?,
    );
    if prompt + completion != total {
        return Err(format!(
            "usage.total_tokens {total} != prompt {prompt} + completion {completion}"
        ));
    }
    for pointer in [
        "/prompt_tokens_details/cached_tokens",
        "/completion_tokens_details/reasoning_tokens",
    ] {
        if usage.pointer(pointer).is_some_and(|v| !v.is_u64()) {
            return Err(format!(
                "usage{} must be an integer",
                pointer.replace('/', ".")
            ));
        }
    }
    Ok(())
}

fn check_body(body: &Value, api: Api) -> Result<(), String> {
    let mut errors = Vec::new();
    let Some(obj) = body.as_object() else {
        return Err("body is not a JSON object".into());
    };
    if obj.contains_key("error") {
        return Err("body is an error object".into());
    }
    if obj.get("object").and_then(Value::as_str) != Some(api.body_object()) {
        errors.push(format!("`object` must be {:?}", api.body_object()));
    }
    for (key, ok) in [
        ("id", obj.get("id").is_some_and(Value::is_string)),
        ("created", obj.get("created").is_some_and(Value::is_u64)),
        ("model", obj.get("model").is_some_and(Value::is_string)),
    ] {
        if !ok {
            errors.push(format!("`{key}` missing or mistyped"));
        }
    }
    match obj.get("usage") {
        None | Some(Value::Null) => {}
        Some(usage) => {
            if let Err(e) = check_usage(usage) {
                errors.push(e);
            }
        }
    }
    match obj.get("choices").and_then(Value::as_array) {
        Some(choices) if !choices.is_empty() => {
            for (n, choice) in choices.iter().enumerate() {
                if let Err(e) = check_body_choice(choice, api) {
                    errors.push(format!("choices[{n}]: {e}"));
                }
            }
        }
        _ => errors.push("`choices` must be a non-empty array".into()),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn check_body_choice(choice: &Value, api: Api) -> Result<(), String> {
    if !choice.get("index").is_some_and(Value::is_u64) {
        return Err("`index` must be an integer".into());
    }
    let reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .ok_or("`finish_reason` must be a string")?;
    if !api.finish_reasons().contains(&reason) {
        return Err(format!("unknown finish_reason {reason:?}"));
    }
    if api == Api::Completions {
        return match choice.get("text") {
            Some(Value::String(_)) => Ok(()),
            _ => Err("`text` must be a string".into()),
        };
    }
    let message = choice
        .get("message")
        .and_then(Value::as_object)
        .ok_or("`message` must be an object")?;
    if message.get("role").and_then(Value::as_str) != Some("assistant") {
        return Err("message.role must be \"assistant\"".into());
    }
    if message
        .get("content")
        .is_some_and(|c| !c.is_null() && !c.is_string())
    {
        return Err("message.content must be a string or null".into());
    }
    let calls = match message.get("tool_calls") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(calls)) => calls.as_slice(),
        Some(_) => return Err("message.tool_calls must be an array".into()),
    };
    for (n, call) in calls.iter().enumerate() {
        let id_ok = call
            .get("id")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        let name_ok = call.pointer("/function/name").is_some_and(Value::is_string);
        let args = call.pointer("/function/arguments").and_then(Value::as_str);
        if !id_ok || !name_ok || call.get("type").and_then(Value::as_str) != Some("function") {
            return Err(format!(
                "tool_calls[{n}] needs id, type \"function\" and function.name"
            ));
        }
        if args.is_none_or(|a| serde_json::from_str::<Value>(a).is_err()) {
            return Err(format!("tool_calls[{n}] arguments are not a JSON string"));
        }
    }
    if reason == "tool_calls" && calls.is_empty() {
        return Err("finish_reason tool_calls without tool_calls".into());
    }
    if !calls.is_empty() && reason == "stop" {
        return Err("tool_calls present but finish_reason is \"stop\"".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chunk(choices: Value) -> String {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
               "model": "gpt-5", "choices": choices})
        .to_string()
    }

    fn delta(delta: Value, finish: Value) -> String {
        chunk(json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]))
    }

    fn call(index: u64, id: Option<&str>, name: Option<&str>, args: &str) -> Value {
        let mut c = json!({"index": index, "function": {"arguments": args}});
        if let Some(id) = id {
            c["id"] = id.into();
            c["type"] = "function".into();
        }
        if let Some(name) = name {
            c["function"]["name"] = name.into();
        }
        c
    }

    fn good_tool_stream() -> Vec<String> {
        vec![
            delta(json!({"role": "assistant", "content": ""}), Value::Null),
            delta(
                json!({"tool_calls": [call(0, Some("a"), Some("f"), "")]}),
                Value::Null,
            ),
            delta(
                json!({"tool_calls": [call(0, None, None, "{\"x\":")]}),
                Value::Null,
            ),
            delta(
                json!({"tool_calls": [call(1, Some("b"), Some("f"), "")]}),
                Value::Null,
            ),
            delta(
                json!({"tool_calls": [call(0, None, None, "1}")]}),
                Value::Null,
            ),
            delta(
                json!({"tool_calls": [call(1, None, None, "{}")]}),
                Value::Null,
            ),
            delta(json!({}), json!("tool_calls")),
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                   "model": "gpt-5", "choices": [],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
            .to_string(),
            "[DONE]".into(),
        ]
    }

    #[test]
    fn accepts_a_good_parallel_tool_stream() {
        assert_eq!(check_chat_stream(&good_tool_stream()), Ok(()));
    }

    #[test]
    fn rejects_missing_finish_chunk() {
        let mut events = good_tool_stream();
        events.remove(6);
        let err = check_chat_stream(&events).unwrap_err();
        assert!(err.contains("never received a finish_reason"), "{err}");
    }

    #[test]
    fn rejects_all_zero_indices_with_two_ids() {
        let events = vec![
            delta(json!({"role": "assistant", "content": ""}), Value::Null),
            delta(
                json!({"tool_calls": [call(0, Some("a"), Some("f"), "{}")]}),
                Value::Null,
            ),
            delta(
                json!({"tool_calls": [call(0, Some("b"), Some("g"), "{}")]}),
                Value::Null,
            ),
            delta(json!({}), json!("tool_calls")),
            "[DONE]".into(),
        ];
        let err = check_chat_stream(&events).unwrap_err();
        assert!(err.contains("changed id"), "{err}");
    }

    #[test]
    fn rejects_missing_done_and_data_after_done() {
        let mut events = good_tool_stream();
        events.pop();
        assert!(check_chat_stream(&events).unwrap_err().contains("[DONE]"));
        let mut events = good_tool_stream();
        events.push(delta(json!({}), Value::Null));
        assert!(check_chat_stream(&events)
            .unwrap_err()
            .contains("after [DONE]"));
    }

    #[test]
    fn rejects_bad_arguments_ids_usage_and_double_finish() {
        let mut events = good_tool_stream();
        events[5] = delta(
            json!({"tool_calls": [call(1, None, None, "{")]}),
            Value::Null,
        );
        assert!(check_chat_stream(&events).unwrap_err().contains("not JSON"));
        let mut events = good_tool_stream();
        events[1] = events[1].replace("chatcmpl-1", "chatcmpl-2");
        assert!(check_chat_stream(&events)
            .unwrap_err()
            .contains("id changed"));
        let mut events = good_tool_stream();
        events[7] = events[7].replace("\"total_tokens\":3", "\"total_tokens\":4");
        assert!(check_chat_stream(&events)
            .unwrap_err()
            .contains("total_tokens"));
        let mut events = good_tool_stream();
        events.insert(7, delta(json!({}), json!("stop")));
        assert!(check_chat_stream(&events)
            .unwrap_err()
            .contains("continues after"));
    }

    #[test]
    fn stop_after_tool_calls_and_missing_role_are_errors() {
        let mut events = good_tool_stream();
        events[6] = delta(json!({}), json!("stop"));
        assert!(check_chat_stream(&events).is_err());
        let mut events = good_tool_stream();
        events[0] = delta(json!({"content": ""}), Value::Null);
        assert!(check_chat_stream(&events).unwrap_err().contains("role"));
    }

    #[test]
    fn error_payload_then_done_is_accepted() {
        let events = vec![
            delta(json!({"role": "assistant", "content": "x"}), Value::Null),
            json!({"error": {"message": "boom", "type": "server_error"}}).to_string(),
            "[DONE]".into(),
        ];
        assert_eq!(check_chat_stream(&events), Ok(()));
    }

    #[test]
    fn completions_stream_and_bodies() {
        let text = |t: &str, f: Value| {
            json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                   "choices": [{"index": 0, "text": t, "logprobs": null, "finish_reason": f}]})
            .to_string()
        };
        let good = vec![
            text("a", Value::Null),
            text("", json!("stop")),
            "[DONE]".into(),
        ];
        assert_eq!(check_completions_stream(&good), Ok(()));
        let bad = vec![
            text("a", Value::Null),
            text("", json!("tool_calls")),
            "[DONE]".into(),
        ];
        assert!(check_completions_stream(&bad).is_err());
        let body = json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": "a", "logprobs": null, "finish_reason": "length"}]});
        assert_eq!(check_completion(&body), Ok(()));
        let chat = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
            "content": null, "tool_calls": [{"id": "a", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]}}]});
        assert!(check_chat_completion(&chat)
            .unwrap_err()
            .contains("finish_reason"));
        let mut fixed = chat.clone();
        fixed["choices"][0]["finish_reason"] = "tool_calls".into();
        assert_eq!(check_chat_completion(&fixed), Ok(()));
    }
}
