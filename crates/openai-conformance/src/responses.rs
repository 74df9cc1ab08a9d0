//! Conformance checks for Responses API output: an event stream ([`check_responses_stream`])
//! and a `Response` object ([`check_response_object`]).
//!
//! They assert what the official SDK's models and strict validators require and what clients
//! rely on: the fields each event type must carry (`sequence_number` everywhere, `logprobs` on
//! text deltas, `annotations` on text parts, `summary` on reasoning items, usage details), the
//! lifecycle (first event `response.created`, strictly increasing `sequence_number`, exactly
//! one terminal event and nothing after it), and consistency (every added item and part is
//! closed, deltas concatenate to the `.done` texts and to the final items, the terminal
//! `response.output` equals the closed items, usage totals add up). Every problem found is
//! reported, one per line.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

const TERMINAL_EVENTS: &[&str] = &[
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// Checks a whole stream of Responses events (the parsed `data` of each SSE event, `[DONE]`
/// excluded).
pub fn check_responses_stream(events: &[Value]) -> Result<(), String> {
    let mut checker = StreamChecker::default();
    for (i, event) in events.iter().enumerate() {
        checker.event(i, event);
    }
    checker.end(events.len());
    report(checker.problems)
}

/// Checks a `Response` object (a `stream: false` body, or the `response` of an event).
pub fn check_response_object(v: &Value) -> Result<(), String> {
    let mut problems = Vec::new();
    response_object_problems(v, "response", &mut problems);
    report(problems)
}

fn report(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

// ---------------------------------------------------------------------- response object

fn response_object_problems(v: &Value, at: &str, problems: &mut Vec<String>) {
    let mut need = |ok: bool, what: &str| {
        if !ok {
            problems.push(format!("{at}: {what}"));
        }
    };
    need(v.is_object(), "is not an object");
    need(v["object"] == "response", "object must be \"response\"");
    need(is_nonempty_str(&v["id"]), "id must be a non-empty string");
    need(v["created_at"].is_number(), "created_at must be a number");
    need(v["model"].is_string(), "model must be a string");
    need(v["tools"].is_array(), "tools must be a list");
    need(!v["tool_choice"].is_null(), "tool_choice is required");
    need(
        v["parallel_tool_calls"].is_boolean(),
        "parallel_tool_calls must be a boolean",
    );
    let status = v["status"].as_str().unwrap_or_default();
    need(
        [
            "completed",
            "incomplete",
            "failed",
            "in_progress",
            "queued",
            "cancelled",
        ]
        .contains(&status),
        "status is not a known response status",
    );
    match status {
        "completed" | "incomplete" => usage_problems(&v["usage"], at, problems),
        "failed" => {
            let error = &v["error"];
            if !(is_nonempty_str(&error["code"]) && error["message"].is_string()) {
                problems.push(format!(
                    "{at}: failed response needs error.code and error.message"
                ));
            }
        }
        _ => {}
    }
    if status == "incomplete" && !v["incomplete_details"]["reason"].is_string() {
        problems.push(format!(
            "{at}: incomplete response needs incomplete_details.reason"
        ));
    }
    let Some(output) = v["output"].as_array() else {
        problems.push(format!("{at}: output must be a list"));
        return;
    };
    let mut ids = HashSet::new();
    for (i, item) in output.iter().enumerate() {
        let item_at = format!("{at}.output[{i}]");
        item_problems(item, &item_at, problems);
        if let Some(id) = item["id"].as_str() {
            if !ids.insert(id) {
                problems.push(format!("{item_at}: duplicate item id {id:?}"));
            }
        }
    }
}

fn usage_problems(usage: &Value, at: &str, problems: &mut Vec<String>) {
    let count = |v: &Value| v.as_u64();
    let (input, output, total) = (
        count(&usage["input_tokens"]),
        count(&usage["output_tokens"]),
        count(&usage["total_tokens"]),
    );
    match (input, output, total) {
        (Some(i), Some(o), Some(t)) if i + o == t => {}
        (Some(i), Some(o), Some(t)) => problems.push(format!(
            "{at}: usage.total_tokens {t} != input_tokens {i} + output_tokens {o}"
        )),
        _ => problems.push(format!(
            "{at}: usage needs integer input_tokens, output_tokens and total_tokens"
        )),
    }
    if count(&usage["input_tokens_details"]["cached_tokens"]).is_none() {
        problems.push(format!(
            "{at}: usage.input_tokens_details.cached_tokens is required"
        ));
    }
    if count(&usage["output_tokens_details"]["reasoning_tokens"]).is_none() {
        problems.push(format!(
            "{at}: usage.output_tokens_details.reasoning_tokens is required"
        ));
    }
}

fn item_problems(item: &Value, at: &str, problems: &mut Vec<String>) {
    let mut need = |ok: bool, what: &str| {
        if !ok {
            problems.push(format!("{at}: {what}"));
        }
    };
    match item["type"].as_str().unwrap_or_default() {
        "message" => {
            need(is_nonempty_str(&item["id"]), "message needs an id");
            need(
                item["role"] == "assistant",
                "message role must be assistant",
            );
            need(item["status"].is_string(), "message needs a status");
            match item["content"].as_array() {
                Some(parts) => {
                    for part in parts {
                        need(
                            part["type"] == "output_text" || part["type"] == "refusal",
                            "content part type must be output_text or refusal",
                        );
                        if part["type"] == "output_text" {
                            need(part["text"].is_string(), "output_text needs text");
                            need(
                                part["annotations"].is_array(),
                                "output_text needs an annotations list",
                            );
                        }
                    }
                }
                None => need(false, "message content must be a list"),
            }
        }
        "reasoning" => {
            need(is_nonempty_str(&item["id"]), "reasoning item needs an id");
            match item["summary"].as_array() {
                Some(parts) => {
                    for part in parts {
                        need(
                            part["type"] == "summary_text" && part["text"].is_string(),
                            "summary parts must be summary_text with text",
                        );
                    }
                }
                None => need(false, "reasoning item needs a summary list"),
            }
        }
        "function_call" => {
            need(is_nonempty_str(&item["id"]), "function_call needs an id");
            need(
                is_nonempty_str(&item["call_id"]),
                "function_call needs a call_id",
            );
            need(is_nonempty_str(&item["name"]), "function_call needs a name");
            need(
                item["arguments"].is_string(),
                "function_call needs arguments",
            );
        }
        "custom_tool_call" => {
            need(is_nonempty_str(&item["id"]), "custom_tool_call needs an id");
            need(
                is_nonempty_str(&item["call_id"]),
                "custom_tool_call needs a call_id",
            );
            need(
                is_nonempty_str(&item["name"]),
                "custom_tool_call needs a name",
            );
            need(item["input"].is_string(), "custom_tool_call needs an input");
        }
        // What Codex's remote compaction needs: one opaque, non-empty blob.
        "compaction" => need(
            is_nonempty_str(&item["encrypted_content"]),
            "compaction item needs a non-empty encrypted_content",
        ),
        other => need(false, &format!("unexpected output item type {other:?}")),
    }
}

fn is_nonempty_str(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.is_empty())
}

// ------------------------------------------------------------------------------- stream

/// One streamed text (a content part, a summary part, arguments or a custom input).
#[derive(Default)]
struct TextTrack {
    streamed: String,
    done_text: Option<String>,
    closed: bool,
}

#[derive(Default)]
struct ItemTrack {
    added: Value,
    done: Option<Value>,
    parts: BTreeMap<u64, TextTrack>,
    summary: BTreeMap<u64, TextTrack>,
    arguments: TextTrack,
    custom_input: TextTrack,
}

#[derive(Default)]
struct StreamChecker {
    problems: Vec<String>,
    last_sequence_number: Option<u64>,
    response_id: Option<String>,
    items: Vec<ItemTrack>,
    terminal: Option<String>,
}

impl StreamChecker {
    fn problem(&mut self, at: &str, what: impl AsRef<str>) {
        self.problems.push(format!("{at}: {}", what.as_ref()));
    }

    fn event(&mut self, i: usize, event: &Value) {
        let kind = event["type"].as_str().unwrap_or_default().to_string();
        let at = format!("event #{i} ({kind})");
        if kind.is_empty() {
            self.problem(&at, "missing string `type`");
            return;
        }
        if i == 0 && kind != "response.created" {
            self.problem(&at, "the first event must be response.created");
        }
        if let Some(terminal) = &self.terminal {
            let what = format!("event after the terminal {terminal}");
            self.problem(&at, what);
        }
        self.sequence_number(event, &at);
        match kind.as_str() {
            "response.created" | "response.in_progress" | "response.queued" => {
                self.lifecycle(event, &at)
            }
            k if TERMINAL_EVENTS.contains(&k) => self.terminal(event, k, &at),
            "response.output_item.added" => self.item_added(event, &at),
            "response.output_item.done" => self.item_done(event, &at),
            "response.content_part.added" => self.part_added(event, &at, false),
            "response.content_part.done" => self.part_done(event, &at, false),
            "response.reasoning_summary_part.added" => self.part_added(event, &at, true),
            "response.reasoning_summary_part.done" => self.part_done(event, &at, true),
            "response.output_text.delta" | "response.reasoning_text.delta" => {
                self.require_logprobs(event, &kind, &at);
                self.text_delta(event, &at, false)
            }
            "response.output_text.done" | "response.reasoning_text.done" => {
                self.require_logprobs(event, &kind, &at);
                self.text_done(event, &at, false)
            }
            "response.reasoning_summary_text.delta" => self.text_delta(event, &at, true),
            "response.reasoning_summary_text.done" => self.text_done(event, &at, true),
            "response.function_call_arguments.delta" => self.call_delta(event, &at, false),
            "response.function_call_arguments.done" => self.call_done(event, &at, false),
            "response.custom_tool_call_input.delta" => self.call_delta(event, &at, true),
            "response.custom_tool_call_input.done" => self.call_done(event, &at, true),
            _ => {}
        }
    }

    fn sequence_number(&mut self, event: &Value, at: &str) {
        let Some(n) = event["sequence_number"].as_u64() else {
            self.problem(at, "missing integer sequence_number");
            return;
        };
        if let Some(last) = self.last_sequence_number {
            if n <= last {
                self.problem(
                    at,
                    format!("sequence_number {n} is not greater than {last}"),
                );
            }
        }
        self.last_sequence_number = Some(n);
    }

    fn require_logprobs(&mut self, event: &Value, kind: &str, at: &str) {
        if kind.starts_with("response.output_text") && !event["logprobs"].is_array() {
            self.problem(at, "logprobs must be a list");
        }
    }

    fn lifecycle(&mut self, event: &Value, at: &str) {
        let response = &event["response"];
        let mut problems = Vec::new();
        response_object_problems(response, &format!("{at}.response"), &mut problems);
        self.problems.extend(problems);
        let id = response["id"].as_str().unwrap_or_default().to_string();
        match &self.response_id {
            None => self.response_id = Some(id),
            Some(first) if *first != id => {
                let what = format!("response.id {id:?} differs from {first:?}");
                self.problem(at, what);
            }
            Some(_) => {}
        }
    }

    fn terminal(&mut self, event: &Value, kind: &str, at: &str) {
        self.lifecycle(event, at);
        if self.terminal.is_none() {
            self.terminal = Some(kind.to_string());
        }
        let response = &event["response"];
        let expected_status = kind.trim_start_matches("response.");
        if response["status"] != expected_status {
            self.problem(at, format!("response.status must be {expected_status:?}"));
        }
        self.all_closed(at);
        let closed: Vec<Value> = self
            .items
            .iter()
            .map(|item| item.done.clone().unwrap_or(Value::Null))
            .collect();
        match response["output"].as_array() {
            Some(output) if *output == closed => {}
            Some(_) => self.problem(
                at,
                "response.output differs from the items closed by output_item.done",
            ),
            None => self.problem(at, "response.output is missing"),
        }
    }

    fn all_closed(&mut self, at: &str) {
        let mut open = Vec::new();
        for (index, item) in self.items.iter().enumerate() {
            if item.done.is_none() {
                open.push(format!("output item {index} was never closed"));
            }
        }
        for what in open {
            self.problem(at, what);
        }
    }

    fn end(&mut self, count: usize) {
        if count == 0 {
            self.problems.push("empty stream".into());
        } else if self.terminal.is_none() {
            self.problems
                .push("the stream has no terminal event (completed, incomplete or failed)".into());
        }
    }

    /// The tracked item an event refers to (by output_index, checked against item_id).
    fn item_for(&mut self, event: &Value, at: &str) -> Option<usize> {
        let Some(index) = event["output_index"].as_u64().map(|i| i as usize) else {
            self.problem(at, "missing integer output_index");
            return None;
        };
        let Some(item) = self.items.get(index) else {
            self.problem(at, format!("output_index {index} was never added"));
            return None;
        };
        if item.done.is_some() {
            self.problem(at, format!("output_index {index} is already done"));
            return None;
        }
        if event.get("item_id").is_some() && event["item_id"] != item.added["id"] {
            self.problem(at, "item_id does not match the added item's id");
        }
        Some(index)
    }

    fn item_added(&mut self, event: &Value, at: &str) {
        let item = &event["item"];
        if event["output_index"].as_u64() != Some(self.items.len() as u64) {
            let what = format!("output_index must be the next index {}", self.items.len());
            self.problem(at, what);
        }
        let mut problems = Vec::new();
        item_problems(item, &format!("{at}.item"), &mut problems);
        self.problems.extend(problems);
        self.items.push(ItemTrack {
            added: item.clone(),
            ..ItemTrack::default()
        });
    }

    fn part_added(&mut self, event: &Value, at: &str, summary: bool) {
        let Some(index) = self.item_for(event, at) else {
            return;
        };
        let (key, part) = if summary {
            ("summary_index", &event["part"])
        } else {
            ("content_index", &event["part"])
        };
        let Some(part_index) = event[key].as_u64() else {
            self.problem(at, format!("missing integer {key}"));
            return;
        };
        if part["type"] == "output_text" && !part["annotations"].is_array() {
            self.problem(at, "output_text part needs an annotations list");
        }
        let parts = self.parts_mut(index, summary);
        if parts.insert(part_index, TextTrack::default()).is_some() {
            self.problem(at, format!("{key} {part_index} added twice"));
        }
    }

    fn parts_mut(&mut self, index: usize, summary: bool) -> &mut BTreeMap<u64, TextTrack> {
        let item = &mut self.items[index];
        if summary {
            &mut item.summary
        } else {
            &mut item.parts
        }
    }

    fn open_part(&mut self, event: &Value, at: &str, summary: bool) -> Option<(usize, u64)> {
        let index = self.item_for(event, at)?;
        let key = if summary {
            "summary_index"
        } else {
            "content_index"
        };
        let Some(part_index) = event[key].as_u64() else {
            self.problem(at, format!("missing integer {key}"));
            return None;
        };
        match self.parts_mut(index, summary).get(&part_index) {
            None => self.problem(at, format!("{key} {part_index} was never added")),
            Some(track) if track.closed => {
                self.problem(at, format!("{key} {part_index} is already done"))
            }
            Some(_) => return Some((index, part_index)),
        }
        None
    }

    fn text_delta(&mut self, event: &Value, at: &str, summary: bool) {
        let Some((index, part)) = self.open_part(event, at, summary) else {
            return;
        };
        let Some(delta) = event["delta"].as_str() else {
            self.problem(at, "delta must be a string");
            return;
        };
        let delta = delta.to_string();
        let track = self.parts_mut(index, summary).entry(part).or_default();
        if track.done_text.is_some() {
            self.problem(at, "delta after the .done event");
            return;
        }
        track.streamed.push_str(&delta);
    }

    fn text_done(&mut self, event: &Value, at: &str, summary: bool) {
        let Some((index, part)) = self.open_part(event, at, summary) else {
            return;
        };
        let text = event["text"].as_str().unwrap_or_default().to_string();
        let track = self.parts_mut(index, summary).entry(part).or_default();
        let mismatch = track.streamed != text;
        let duplicate = track.done_text.replace(text).is_some();
        if mismatch {
            self.problem(at, "text differs from the concatenated deltas");
        }
        if duplicate {
            self.problem(at, "duplicate .done event");
        }
    }

    fn part_done(&mut self, event: &Value, at: &str, summary: bool) {
        let Some((index, part_index)) = self.open_part(event, at, summary) else {
            return;
        };
        let part = &event["part"];
        if part["type"] == "output_text" && !part["annotations"].is_array() {
            self.problem(at, "output_text part needs an annotations list");
        }
        let text = part["text"].as_str().unwrap_or_default().to_string();
        let track = self
            .parts_mut(index, summary)
            .entry(part_index)
            .or_default();
        track.closed = true;
        let no_done = track.done_text.is_none();
        let mismatch = track.streamed != text;
        if no_done {
            self.problem(at, "part closed without its text .done event");
        }
        if mismatch {
            self.problem(at, "part text differs from the concatenated deltas");
        }
    }

    fn call_track(&mut self, index: usize, custom: bool) -> &mut TextTrack {
        let item = &mut self.items[index];
        if custom {
            &mut item.custom_input
        } else {
            &mut item.arguments
        }
    }

    fn call_delta(&mut self, event: &Value, at: &str, custom: bool) {
        let Some(index) = self.item_for(event, at) else {
            return;
        };
        let expected = if custom {
            "custom_tool_call"
        } else {
            "function_call"
        };
        if self.items[index].added["type"] != expected {
            self.problem(at, format!("event for an item that is not a {expected}"));
        }
        let Some(delta) = event["delta"].as_str() else {
            self.problem(at, "delta must be a string");
            return;
        };
        let delta = delta.to_string();
        let track = self.call_track(index, custom);
        if track.done_text.is_some() {
            self.problem(at, "delta after the .done event");
            return;
        }
        track.streamed.push_str(&delta);
    }

    fn call_done(&mut self, event: &Value, at: &str, custom: bool) {
        let Some(index) = self.item_for(event, at) else {
            return;
        };
        let field = if custom { "input" } else { "arguments" };
        let Some(text) = event[field].as_str() else {
            self.problem(at, format!("{field} must be a string"));
            return;
        };
        let text = text.to_string();
        let track = self.call_track(index, custom);
        let mismatch = track.streamed != text;
        let duplicate = track.done_text.replace(text).is_some();
        if mismatch {
            self.problem(at, format!("{field} differs from the concatenated deltas"));
        }
        if duplicate {
            self.problem(at, "duplicate .done event");
        }
    }

    fn item_done(&mut self, event: &Value, at: &str) {
        let Some(index) = self.item_for(event, at) else {
            return;
        };
        let item = &event["item"];
        let mut problems = Vec::new();
        item_problems(item, &format!("{at}.item"), &mut problems);
        let track = &self.items[index];
        if item["type"] != track.added["type"] || item["id"] != track.added["id"] {
            problems.push(format!("{at}: type or id differs from the added item"));
        }
        for (key, parts) in [("content", &track.parts), ("summary", &track.summary)] {
            if parts.values().any(|p| !p.closed) {
                problems.push(format!("{at}: a {key} part was never closed"));
            }
        }
        item_matches_stream(item, track, at, &mut problems);
        self.problems.extend(problems);
        self.items[index].done = Some(item.clone());
    }
}

/// The closed item's texts must be what was streamed.
fn item_matches_stream(item: &Value, track: &ItemTrack, at: &str, problems: &mut Vec<String>) {
    let texts_of = |list: &Value| -> Vec<String> {
        list.as_array()
            .map(|parts| {
                parts
                    .iter()
                    .map(|p| {
                        let body = if p["type"] == "refusal" {
                            &p["refusal"]
                        } else {
                            &p["text"]
                        };
                        body.as_str().unwrap_or_default().to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let streamed = |parts: &BTreeMap<u64, TextTrack>| -> Vec<String> {
        parts.values().map(|p| p.streamed.clone()).collect()
    };
    match item["type"].as_str().unwrap_or_default() {
        "message" if texts_of(&item["content"]) != streamed(&track.parts) => {
            problems.push(format!(
                "{at}: message content differs from the streamed text"
            ));
        }
        "reasoning" if texts_of(&item["summary"]) != streamed(&track.summary) => {
            problems.push(format!(
                "{at}: reasoning summary differs from the streamed text"
            ));
        }
        "function_call" => {
            if track.arguments.done_text.is_none() {
                problems.push(format!("{at}: function_call closed without arguments.done"));
            }
            if item["arguments"].as_str() != Some(track.arguments.streamed.as_str()) {
                problems.push(format!(
                    "{at}: arguments differ from the streamed arguments"
                ));
            }
        }
        "custom_tool_call" => {
            if track.custom_input.done_text.is_none() {
                problems.push(format!("{at}: custom_tool_call closed without input.done"));
            }
            if item["input"].as_str() != Some(track.custom_input.streamed.as_str()) {
                problems.push(format!("{at}: input differs from the streamed input"));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A valid stream with reasoning, text and a tool call, as the proxy's bridge made it
    /// (recorded once; the proxy's own tests check its live output against this checker).
    fn valid_stream() -> Vec<Value> {
        include_str!("../tests/fixtures/valid-responses-stream.jsonl")
            .lines()
            .map(|line| serde_json::from_str(line).expect("JSON"))
            .collect()
    }

    fn index_of(events: &[Value], kind: &str) -> usize {
        events
            .iter()
            .position(|e| e["type"] == kind)
            .expect("event present")
    }

    fn rejected(events: &[Value], expect: &str) {
        match check_responses_stream(events) {
            Ok(()) => panic!("checker accepted a stream with {expect}"),
            Err(problems) => assert!(problems.contains(expect), "{expect} not in:\n{problems}"),
        }
    }

    #[test]
    fn the_valid_stream_passes() {
        let events = valid_stream();
        assert_eq!(check_responses_stream(&events), Ok(()));
        let last = events.last().cloned().unwrap_or_default();
        assert_eq!(check_response_object(&last["response"]), Ok(()));
    }

    #[test]
    fn a_missing_sequence_number_is_rejected() {
        let mut events = valid_stream();
        let i = index_of(&events, "response.output_text.delta");
        events[i]
            .as_object_mut()
            .map(|e| e.remove("sequence_number"));
        rejected(&events, "missing integer sequence_number");
    }

    #[test]
    fn a_decreasing_sequence_number_is_rejected() {
        let mut events = valid_stream();
        events[3]["sequence_number"] = json!(1);
        rejected(&events, "is not greater than");
    }

    #[test]
    fn a_duplicated_terminal_event_is_rejected() {
        let mut events = valid_stream();
        let mut again = events.last().cloned().unwrap_or_default();
        again["sequence_number"] = json!(10_000);
        events.push(again);
        rejected(&events, "event after the terminal response.completed");
    }

    #[test]
    fn a_missing_terminal_event_is_rejected() {
        let mut events = valid_stream();
        events.pop();
        rejected(&events, "no terminal event");
    }

    #[test]
    fn a_delta_mismatch_is_rejected() {
        let mut events = valid_stream();
        let i = index_of(&events, "response.output_text.delta");
        events[i]["delta"] = json!("Bye ");
        rejected(&events, "text differs from the concatenated deltas");
        let mut events = valid_stream();
        let i = index_of(&events, "response.function_call_arguments.delta");
        events[i]["delta"] = json!("{\"x\":1}");
        rejected(&events, "arguments differs from the concatenated deltas");
    }

    #[test]
    fn missing_required_fields_are_rejected() {
        let mut events = valid_stream();
        let i = index_of(&events, "response.output_text.delta");
        events[i].as_object_mut().map(|e| e.remove("logprobs"));
        rejected(&events, "logprobs must be a list");
        let mut events = valid_stream();
        let i = index_of(&events, "response.content_part.added");
        events[i]["part"]
            .as_object_mut()
            .map(|p| p.remove("annotations"));
        rejected(&events, "annotations list");
        let mut events = valid_stream();
        let i = index_of(&events, "response.output_item.added");
        events[i]["item"]
            .as_object_mut()
            .map(|p| p.remove("summary"));
        rejected(&events, "summary list");
        let mut events = valid_stream();
        let last = events.len() - 1;
        events[last]["response"]["usage"]["output_tokens_details"] = json!({});
        rejected(&events, "reasoning_tokens is required");
        events[last]["response"]["usage"]["total_tokens"] = json!(99);
        rejected(&events, "usage.total_tokens 99");
    }

    #[test]
    fn unclosed_items_and_wrong_output_are_rejected() {
        let mut events = valid_stream();
        let i = index_of(&events, "response.output_item.done");
        events.remove(i);
        rejected(&events, "output item 0 was never closed");
        let mut events = valid_stream();
        let last = events.len() - 1;
        events[last]["response"]["output"] = json!([]);
        rejected(&events, "response.output differs");
        let mut events = valid_stream();
        events.remove(0);
        rejected(&events, "the first event must be response.created");
    }

    #[test]
    fn response_objects_are_checked() {
        assert!(check_response_object(&json!({"object": "response"})).is_err());
        let mut response = valid_stream().pop().unwrap_or_default()["response"].clone();
        response["status"] = json!("failed");
        assert!(check_response_object(&response)
            .unwrap_err()
            .contains("error.code"));
    }
}
