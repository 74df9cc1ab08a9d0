//! A Responses API event stream shaped like the one api.openai.com sends, for the mocks that
//! answer the real Codex CLI: every event has `type` and a running `sequence_number`, the
//! output items are announced, streamed and closed in order, and `response.completed`
//! repeats them with usage. Rendered as an SSE body (the HTTP mocks) or as the list of events
//! (the WebSocket mock sends one per text message).

use super::MODEL;
use serde_json::{json, Value};

pub struct ResponsesStream {
    response_id: String,
    events: Vec<Value>,
    output: Vec<Value>,
}

impl ResponsesStream {
    /// Starts with `response.created` and `response.in_progress`.
    pub fn new(response_id: &str) -> ResponsesStream {
        let mut stream = ResponsesStream {
            response_id: response_id.to_string(),
            events: Vec::new(),
            output: Vec::new(),
        };
        let response = stream.response("in_progress", None);
        stream.push(json!({"type": "response.created", "response": response}));
        let response = stream.response("in_progress", None);
        stream.push(json!({"type": "response.in_progress", "response": response}));
        stream
    }

    fn response(&self, status: &str, usage: Option<Value>) -> Value {
        json!({
            "id": self.response_id,
            "object": "response",
            "created_at": 1_763_740_000,
            "status": status,
            "error": null,
            "incomplete_details": null,
            "model": MODEL,
            "output": if status == "in_progress" { json!([]) } else { json!(self.output) },
            "parallel_tool_calls": true,
            "store": false,
            "tool_choice": "auto",
            "usage": usage,
        })
    }

    fn push(&mut self, mut event: Value) {
        event["sequence_number"] = json!(self.events.len());
        self.events.push(event);
    }

    /// An assistant message whose text arrives as the given deltas.
    pub fn message(mut self, item_id: &str, deltas: &[&str]) -> ResponsesStream {
        let index = self.output.len();
        let text: String = deltas.concat();
        let part_empty =
            json!({"type": "output_text", "annotations": [], "logprobs": [], "text": ""});
        let part_full =
            json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text});
        self.push(json!({
            "type": "response.output_item.added", "output_index": index,
            "item": {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []},
        }));
        self.push(json!({
            "type": "response.content_part.added", "item_id": item_id, "output_index": index,
            "content_index": 0, "part": part_empty,
        }));
        for delta in deltas {
            self.push(json!({
                "type": "response.output_text.delta", "item_id": item_id, "output_index": index,
                "content_index": 0, "delta": delta, "logprobs": [],
            }));
        }
        self.push(json!({
            "type": "response.output_text.done", "item_id": item_id, "output_index": index,
            "content_index": 0, "text": text, "logprobs": [],
        }));
        self.push(json!({
            "type": "response.content_part.done", "item_id": item_id, "output_index": index,
            "content_index": 0, "part": part_full,
        }));
        let item = json!({
            "id": item_id, "type": "message", "status": "completed", "role": "assistant",
            "content": [part_full],
        });
        self.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": item}),
        );
        self.output.push(item);
        self
    }

    /// A call of a function tool; `arguments` is sent as a JSON string in two deltas.
    pub fn function_call(
        mut self,
        item_id: &str,
        call_id: &str,
        name: &str,
        arguments: &Value,
    ) -> ResponsesStream {
        let index = self.output.len();
        let arguments = arguments.to_string();
        self.push(json!({
            "type": "response.output_item.added", "output_index": index,
            "item": {"id": item_id, "type": "function_call", "status": "in_progress",
                     "call_id": call_id, "name": name, "arguments": ""},
        }));
        let middle = arguments.len() / 2;
        let middle = (middle..arguments.len())
            .find(|&i| arguments.is_char_boundary(i))
            .unwrap_or(arguments.len());
        for delta in [&arguments[..middle], &arguments[middle..]] {
            self.push(json!({
                "type": "response.function_call_arguments.delta", "item_id": item_id,
                "output_index": index, "delta": delta,
            }));
        }
        self.push(json!({
            "type": "response.function_call_arguments.done", "item_id": item_id,
            "output_index": index, "arguments": arguments,
        }));
        let item = json!({
            "id": item_id, "type": "function_call", "status": "completed",
            "call_id": call_id, "name": name, "arguments": arguments,
        });
        self.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": item}),
        );
        self.output.push(item);
        self
    }

    /// A call of a freeform (custom) tool such as gpt-5.5's `apply_patch`: its `input` is
    /// plain text, streamed in two deltas.
    pub fn custom_tool_call(
        mut self,
        item_id: &str,
        call_id: &str,
        name: &str,
        input: &str,
    ) -> ResponsesStream {
        let index = self.output.len();
        self.push(json!({
            "type": "response.output_item.added", "output_index": index,
            "item": {"id": item_id, "type": "custom_tool_call", "status": "in_progress",
                     "call_id": call_id, "name": name, "input": ""},
        }));
        let middle = (input.len() / 2..input.len())
            .find(|&i| input.is_char_boundary(i))
            .unwrap_or(input.len());
        for delta in [&input[..middle], &input[middle..]] {
            self.push(json!({
                "type": "response.custom_tool_call_input.delta", "item_id": item_id,
                "output_index": index, "delta": delta,
            }));
        }
        self.push(json!({
            "type": "response.custom_tool_call_input.done", "item_id": item_id,
            "output_index": index, "input": input,
        }));
        let item = json!({
            "id": item_id, "type": "custom_tool_call", "status": "completed",
            "call_id": call_id, "name": name, "input": input,
        });
        self.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": item}),
        );
        self.output.push(item);
        self
    }

    /// The one output item of a remote compaction (what OpenAI answers a request ending in
    /// `compaction_trigger`): an opaque `encrypted_content`.
    pub fn compaction(mut self, item_id: &str, encrypted_content: &str) -> ResponsesStream {
        let index = self.output.len();
        let item =
            json!({"id": item_id, "type": "compaction", "encrypted_content": encrypted_content});
        self.push(
            json!({"type": "response.output_item.added", "output_index": index, "item": item}),
        );
        self.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": item}),
        );
        self.output.push(item);
        self
    }

    /// Ends with `response.completed` carrying usage: the events, one JSON object each.
    pub fn completed_events(mut self, input_tokens: u64, output_tokens: u64) -> Vec<Value> {
        let usage = json!({
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        });
        let response = self.response("completed", Some(usage));
        self.push(json!({"type": "response.completed", "response": response}));
        self.events
    }

    /// Ends with `response.completed` carrying usage, and renders the SSE body.
    pub fn completed(self, input_tokens: u64, output_tokens: u64) -> String {
        self.completed_events(input_tokens, output_tokens)
            .iter()
            .map(|event| {
                format!(
                    "event: {}\ndata: {event}\n\n",
                    event["type"].as_str().unwrap()
                )
            })
            .collect()
    }
}
