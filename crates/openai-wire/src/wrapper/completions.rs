//! Legacy Completions (`/v1/completions`): request → Responses request, and upstream
//! Responses events → `text_completion` chunks or one body.
//!
//! The event interpretation is the chat route's [`UpstreamInterpreter`]; only the rendering
//! differs. Decisions:
//! - `prompt` is a string or an array of exactly one string; several prompts, token arrays,
//!   `suffix`, `echo: true`, `best_of` > 1, `logprobs`, `n` > 1 and non-empty `stop` are 400s
//!   (the Responses API has no equivalent, and silently ignoring them changes the answer).
//! - `max_tokens` is passed only when given: the legacy default of 16 would starve a reasoning
//!   model.
//! - Reasoning is requested as on the chat route (the model needs it) but never shown;
//!   refusals are rendered as text; tool calls cannot happen (no tools are sent).
//! - Streams end like chat streams: a finish chunk (`text: ""`), the usage chunk when
//!   `stream_options.include_usage`, `[DONE]`; failures as an error chunk then `[DONE]`.
//!
//! Uses: `sse` and serde, serde_json.

use serde::Serialize;
use serde_json::{json, Value};

use super::chat_request::{base_request, present};
use super::chat_stream::{
    write_failure, ChunkFrame, FinishReason, Signal, StreamOutcome, UpstreamInterpreter, Usage,
};
use super::{ClientMeta, ConvertContext, ResponsesPlan, WrapperError};

/// Converts a legacy Completions request body into the upstream Responses request.
pub fn completion_to_responses(
    body: &Value,
    ctx: &ConvertContext,
) -> Result<ResponsesPlan, WrapperError> {
    let body = body
        .as_object()
        .ok_or_else(|| WrapperError::invalid("body", "the request body must be a JSON object"))?;
    let prompt = single_prompt(present(body, "prompt"))?;
    reject_unsupported(body)?;
    let input = vec![json!({
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": prompt}],
    })];
    let (upstream, client) = base_request(body, ctx, input)?;
    Ok(ResponsesPlan {
        upstream_body: Value::Object(upstream),
        client,
    })
}

fn single_prompt(prompt: Option<&Value>) -> Result<&str, WrapperError> {
    match prompt {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(s)] => Ok(s),
            [_] | [] => Err(WrapperError::invalid(
                "prompt",
                "`prompt` must be a string or an array of one string (token arrays are not supported)",
            )),
            _ => Err(WrapperError::invalid(
                "prompt",
                "only one prompt per request is supported",
            )),
        },
        None => Err(WrapperError::invalid("prompt", "`prompt` is required")),
        Some(_) => Err(WrapperError::invalid(
            "prompt",
            "`prompt` must be a string or an array of one string",
        )),
    }
}

fn reject_unsupported(body: &serde_json::Map<String, Value>) -> Result<(), WrapperError> {
    let unsupported = |key: &str| {
        Err(WrapperError::invalid(
            key,
            format!("`{key}` is not supported: the Responses API has no equivalent"),
        ))
    };
    if present(body, "suffix").is_some_and(|s| s.as_str() != Some("")) {
        return unsupported("suffix");
    }
    if present(body, "echo").and_then(Value::as_bool) == Some(true) {
        return unsupported("echo");
    }
    if present(body, "best_of").is_some_and(|b| b.as_u64() != Some(1)) {
        return unsupported("best_of");
    }
    if present(body, "logprobs").is_some_and(|l| l != &json!(0)) {
        return unsupported("logprobs");
    }
    Ok(())
}

#[derive(Serialize)]
struct TextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// Completions only know these three reasons; a tool call (impossible here) reads as stop.
fn completion_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::Stop | FinishReason::ToolCalls => "stop",
    }
}

struct TextRenderer {
    frame: ChunkFrame,
    include_usage: bool,
    id: String,
    created: u64,
    model: String,
    text: String,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl TextRenderer {
    fn render(&mut self, signal: Signal<'_>, out: &mut Vec<u8>) {
        match signal {
            Signal::Text(text) | Signal::Refusal(text) => {
                self.text.push_str(text);
                self.write(text, None, out);
            }
            Signal::Finished { reason, usage } => {
                self.finish = Some(reason);
                self.usage = usage;
                self.write("", Some(completion_reason(reason)), out);
                if self.include_usage {
                    self.frame.write_usage(out, usage.unwrap_or_default());
                }
                crate::sse::write_done(out);
            }
            Signal::Failed { message, code } => write_failure(out, message, code),
            Signal::Started
            | Signal::Reasoning { .. }
            | Signal::ToolCallStart { .. }
            | Signal::ToolCallArguments { .. } => {}
        }
    }

    fn write(&self, text: &str, finish_reason: Option<&'static str>, out: &mut Vec<u8>) {
        let choice = TextChoice {
            index: 0,
            text,
            logprobs: None,
            finish_reason,
        };
        self.frame.write_choice(out, &choice);
    }

    fn final_completion(&self) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "text": self.text,
                "logprobs": null,
                "finish_reason": completion_reason(self.finish.unwrap_or(FinishReason::Stop)),
            }],
            "usage": self.usage.unwrap_or_default().to_json(),
        })
    }
}

/// Translates one upstream Responses stream for one legacy Completions client.
pub struct CompletionStream {
    interpreter: UpstreamInterpreter,
    renderer: TextRenderer,
}

impl CompletionStream {
    /// `id` is the `cmpl-…` id every chunk carries; `created` is Unix seconds.
    pub fn new(meta: &ClientMeta, created: u64, id: &str) -> Self {
        CompletionStream {
            interpreter: UpstreamInterpreter::new(),
            renderer: TextRenderer {
                frame: ChunkFrame::new("text_completion", id, created, &meta.model),
                include_usage: meta.include_usage,
                id: id.to_string(),
                created,
                model: meta.model.clone(),
                text: String::new(),
                finish: None,
                usage: None,
            },
        }
    }

    /// Feeds one upstream event's `data`; appends SSE bytes to `out`. See
    /// [`super::chat_stream::ChatStream::push_event`].
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

    /// The complete `text_completion` body for non-streaming clients.
    pub fn final_completion(&self) -> Value {
        self.renderer.final_completion()
    }
}

#[cfg(test)]
mod tests {
    use super::super::chat_stream::test_support::*;
    use super::super::settings::WrapperSettings;
    use super::*;
    use openai_conformance::chat::{check_completion, check_completions_stream};

    fn convert(body: Value) -> Result<ResponsesPlan, WrapperError> {
        let settings = WrapperSettings::default();
        let ctx = ConvertContext {
            settings: &settings,
            session_id: Some("s"),
            instructions: None,
        };
        completion_to_responses(&body, &ctx)
    }

    fn translate(fixture: &str, include_usage: bool, piece: usize) -> (CompletionStream, Vec<u8>) {
        let meta = ClientMeta {
            stream: true,
            include_usage,
            model: "gpt-5".into(),
        };
        let mut stream = CompletionStream::new(&meta, 1_700_000_000, "cmpl-test");
        let mut out = Vec::new();
        for data in sse_data(fixture.as_bytes(), piece) {
            let _ = stream.push_event(&data, &mut out);
        }
        stream.finish(&mut out);
        (stream, out)
    }

    #[test]
    fn prompt_becomes_one_user_message() {
        for prompt in [json!("Say hi"), json!(["Say hi"])] {
            let plan = convert(
                json!({"model": "gpt-5-high", "prompt": prompt, "max_tokens": 30,
                "stream": true, "stream_options": {"include_usage": true}}),
            )
            .unwrap();
            let up = &plan.upstream_body;
            assert_eq!(
                up["input"],
                json!([{"type":"message","role":"user","content":[{"type":"input_text","text":"Say hi"}]}])
            );
            assert_eq!(up["max_output_tokens"], 30);
            assert_eq!(up["reasoning"]["effort"], "high");
            assert_eq!(up["stream"], true);
            assert_eq!(up["store"], false);
            assert!(plan.client.stream && plan.client.include_usage);
        }
        let up = convert(json!({"prompt": "x"})).unwrap().upstream_body;
        assert!(
            up.get("max_output_tokens").is_none(),
            "no legacy default of 16"
        );
    }

    #[test]
    fn unsupported_completion_fields_are_400() {
        let cases = [
            (json!({}), "prompt"),
            (json!({"prompt": ["a", "b"]}), "prompt"),
            (json!({"prompt": [[1, 2, 3]]}), "prompt"),
            (json!({"prompt": []}), "prompt"),
            (json!({"prompt": 5}), "prompt"),
            (json!({"prompt": "x", "suffix": "y"}), "suffix"),
            (json!({"prompt": "x", "echo": true}), "echo"),
            (json!({"prompt": "x", "best_of": 3}), "best_of"),
            (json!({"prompt": "x", "logprobs": 2}), "logprobs"),
            (json!({"prompt": "x", "n": 2}), "n"),
            (json!({"prompt": "x", "stop": "\n"}), "stop"),
            (json!({"prompt": "x", "model": ["m"]}), "model"),
            (json!("x"), "body"),
        ];
        for (body, param) in cases {
            let err = convert(body.clone()).unwrap_err();
            assert_eq!(
                (err.status, err.param.as_deref()),
                (400, Some(param)),
                "{body}"
            );
        }
        assert!(convert(
            json!({"prompt": "x", "echo": false, "best_of": 1, "logprobs": null,
            "suffix": null, "stop": null, "n": 1})
        )
        .is_ok());
    }

    #[test]
    fn every_fixture_conforms_in_any_split() {
        for (name, fixture) in ALL {
            for include_usage in [false, true] {
                let (stream, whole) = translate(fixture, include_usage, usize::MAX);
                for piece in [1, 7, 100] {
                    assert_eq!(translate(fixture, include_usage, piece).1, whole, "{name}");
                }
                check_completions_stream(&sse_data(&whole, usize::MAX))
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let usage = if include_usage { "-usage" } else { "" };
                save_output(&format!("completions-{name}{usage}.sse"), &whole);
                if *stream.outcome() == StreamOutcome::Completed {
                    let body = stream.final_completion();
                    check_completion(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
                    save_output(
                        &format!("completions-{name}{usage}.json"),
                        body.to_string().as_bytes(),
                    );
                }
            }
        }
    }

    #[test]
    fn text_stream_exact_chunks_and_body() {
        let (stream, out) = translate(REASONING, true, usize::MAX);
        let head = r#"data: {"id":"cmpl-test","object":"text_completion","created":1700000000,"model":"gpt-5","choices":"#;
        let tails = [
            r#"[{"index":0,"text":"The answer","logprobs":null,"finish_reason":null}]}"#,
            r#"[{"index":0,"text":" is 4.","logprobs":null,"finish_reason":null}]}"#,
            r#"[{"index":0,"text":"","logprobs":null,"finish_reason":"stop"}]}"#,
            r#"[],"usage":{"completion_tokens":48,"completion_tokens_details":{"reasoning_tokens":32},"prompt_tokens":20,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":68}}"#,
        ];
        let mut want: String = tails.iter().map(|t| format!("{head}{t}\n\n")).collect();
        want.push_str("data: [DONE]\n\n");
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let body = stream.final_completion();
        assert_eq!(body["choices"][0]["text"], "The answer is 4.");
        assert_eq!(body["usage"]["total_tokens"], 68);
    }

    #[test]
    fn tool_calls_and_failures() {
        let (stream, out) = translate(PARALLEL_TOOLS, false, usize::MAX);
        assert!(!String::from_utf8(out).unwrap().contains("tool_calls"));
        assert_eq!(
            stream.final_completion()["choices"][0]["finish_reason"],
            "stop"
        );
        let (stream, out) = translate(INCOMPLETE, false, usize::MAX);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains(r#""finish_reason":"length""#));
        assert_eq!(
            stream.final_completion()["choices"][0]["finish_reason"],
            "length"
        );
        let (stream, out) = translate(FAILED, false, usize::MAX);
        let events = sse_data(&out, usize::MAX);
        assert!(events[events.len() - 2].starts_with(r#"{"error":"#));
        assert_eq!(stream.outcome().error().unwrap().status, 502);
    }
}
