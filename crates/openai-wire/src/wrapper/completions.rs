//! Legacy Completions (`/v1/completions`): request → Responses request, and upstream
//! Responses events → `text_completion` chunks or one body.
//!
//! The event interpretation is the chat route's [`UpstreamInterpreter`]; only the rendering
//! differs. Decisions:
//! - `prompt` is a string or an array of 1 to [`MAX_PROMPTS`] strings. As on the OpenAI API,
//!   each prompt gets its own choice, `index` 0..n in prompt order: one upstream request per
//!   prompt ([`completion_to_responses`] gives one plan each), and one [`CompletionStream`]
//!   renders them all in prompt order — every chunk of prompt 0 (ending with its finish
//!   chunk), then prompt 1's, … — with one usage chunk (the sum) and one `[DONE]` at the end.
//!   A failed prompt ends the whole stream with the error chunk. An empty array, more than
//!   [`MAX_PROMPTS`] prompts and token arrays (integers: the Responses API takes text) are
//!   400s, as are `suffix`, `echo: true`, `best_of` > 1, `logprobs`, `n` > 1 and non-empty
//!   `stop` (the Responses API has no equivalent, and silently ignoring them changes the
//!   answer).
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

/// The most prompts one request may carry: each becomes an upstream request, so one client
/// request cannot fan out without limit.
pub const MAX_PROMPTS: usize = 16;

/// Converts a legacy Completions request body into the upstream Responses requests: one
/// plan per prompt, in prompt order (choice `index` = position in the list).
pub fn completion_to_responses(
    body: &Value,
    ctx: &ConvertContext,
) -> Result<Vec<ResponsesPlan>, WrapperError> {
    let body = body
        .as_object()
        .ok_or_else(|| WrapperError::invalid("body", "the request body must be a JSON object"))?;
    let prompts = prompts(present(body, "prompt"))?;
    reject_unsupported(body)?;
    prompts
        .into_iter()
        .map(|prompt| {
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
        })
        .collect()
}

/// The prompts of a request: a string, or an array of 1 to [`MAX_PROMPTS`] strings.
fn prompts(prompt: Option<&Value>) -> Result<Vec<&str>, WrapperError> {
    const TOKENS: &str = "token prompts (arrays of integers) are not supported: the Responses API takes text; send the prompt as a string";
    match prompt {
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(WrapperError::invalid(
                    "prompt",
                    "`prompt` must not be an empty array",
                ));
            }
            if items.len() > MAX_PROMPTS {
                return Err(WrapperError::invalid(
                    "prompt",
                    format!(
                        "`prompt` holds {} prompts; at most {MAX_PROMPTS} are allowed per request",
                        items.len()
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.as_str()),
                    Value::Number(_) | Value::Array(_) => {
                        Err(WrapperError::invalid(format!("prompt[{i}]"), TOKENS))
                    }
                    _ => Err(WrapperError::invalid(
                        format!("prompt[{i}]"),
                        "each prompt must be a string",
                    )),
                })
                .collect()
        }
        None => Err(WrapperError::invalid("prompt", "`prompt` is required")),
        Some(_) => Err(WrapperError::invalid(
            "prompt",
            "`prompt` must be a string or an array of strings",
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

/// Renders one prompt's signals as `text_completion` chunks with that prompt's `index`.
/// The usage chunk and `[DONE]` belong to the whole request ([`CompletionStream`]).
struct TextRenderer {
    frame: ChunkFrame,
    index: u32,
    id: String,
    created: u64,
    model: String,
    /// A chunk was written: the model can no longer change.
    wrote_chunk: bool,
    text: String,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl TextRenderer {
    fn new(meta: &ClientMeta, index: u32, created: u64, id: &str) -> Self {
        TextRenderer {
            frame: ChunkFrame::new("text_completion", id, created, &meta.model),
            index,
            id: id.to_string(),
            created,
            model: meta.model.clone(),
            wrote_chunk: false,
            text: String::new(),
            finish: None,
            usage: None,
        }
    }

    fn render(&mut self, signal: Signal<'_>, out: &mut Vec<u8>) {
        match signal {
            Signal::Model(model) => {
                if !self.wrote_chunk {
                    self.frame = ChunkFrame::new("text_completion", &self.id, self.created, model);
                    self.model = model.to_string();
                }
            }
            Signal::Text(text) | Signal::Refusal(text) => {
                self.text.push_str(text);
                self.write(text, None, out);
            }
            Signal::Finished { reason, usage } => {
                self.finish = Some(reason);
                self.usage = usage;
                self.write("", Some(completion_reason(reason)), out);
            }
            Signal::Failed { message, code } => write_failure(out, message, code),
            Signal::Started
            | Signal::Reasoning { .. }
            | Signal::ToolCallStart { .. }
            | Signal::ToolCallArguments { .. } => {}
        }
    }

    fn write(&mut self, text: &str, finish_reason: Option<&'static str>, out: &mut Vec<u8>) {
        let choice = TextChoice {
            index: self.index,
            text,
            logprobs: None,
            finish_reason,
        };
        self.frame.write_choice(out, &choice);
        self.wrote_chunk = true;
    }

    fn choice(&self) -> Value {
        json!({
            "index": self.index,
            "text": self.text,
            "logprobs": null,
            "finish_reason": completion_reason(self.finish.unwrap_or(FinishReason::Stop)),
        })
    }
}

/// One prompt's upstream stream and its rendering.
struct PromptPart {
    interpreter: UpstreamInterpreter,
    renderer: TextRenderer,
}

/// Translates the upstream Responses streams of one legacy Completions request (one per
/// prompt, fed one after the other in prompt order) for its client.
pub struct CompletionStream {
    parts: Vec<PromptPart>,
    /// The part whose upstream events arrive now.
    current: usize,
    include_usage: bool,
    outcome: StreamOutcome,
}

impl CompletionStream {
    /// One prompt. `id` is the `cmpl-…` id every chunk carries; `created` is Unix seconds.
    pub fn new(meta: &ClientMeta, created: u64, id: &str) -> Self {
        Self::for_prompts(meta, 1, created, id)
    }

    /// `prompts` prompts (at least one), whose upstream streams are fed in prompt order:
    /// [`Self::push_event`] for the current prompt's events, [`Self::finish`] when its
    /// upstream body ended, which moves on to the next prompt.
    pub fn for_prompts(meta: &ClientMeta, prompts: usize, created: u64, id: &str) -> Self {
        let parts = (0..prompts.max(1))
            .map(|index| PromptPart {
                interpreter: UpstreamInterpreter::new(),
                renderer: TextRenderer::new(meta, index as u32, created, id),
            })
            .collect();
        CompletionStream {
            parts,
            current: 0,
            include_usage: meta.include_usage,
            outcome: StreamOutcome::InProgress,
        }
    }

    /// Feeds one upstream event's `data` of the current prompt; appends SSE bytes to `out`.
    /// See [`super::chat_stream::ChatStream::push_event`].
    pub fn push_event(&mut self, data: &str, out: &mut Vec<u8>) -> Result<(), WrapperError> {
        if self.outcome != StreamOutcome::InProgress {
            return Ok(());
        }
        let part = &mut self.parts[self.current];
        let renderer = &mut part.renderer;
        let result = part
            .interpreter
            .interpret(data, &mut |signal| renderer.render(signal, out));
        self.after_part_signal(out);
        result
    }

    /// The current prompt's upstream body ended: writes the error chunk if no terminal event
    /// came, else moves on to the next prompt.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.outcome != StreamOutcome::InProgress {
            return;
        }
        let part = &mut self.parts[self.current];
        let renderer = &mut part.renderer;
        part.interpreter
            .finish(&mut |signal| renderer.render(signal, out));
        self.after_part_signal(out);
        if self.outcome == StreamOutcome::InProgress
            && *self.parts[self.current].interpreter.outcome() == StreamOutcome::Completed
        {
            self.current += 1;
        }
    }

    /// Ends the request after a failed prompt, or after the last prompt completed (the
    /// usage chunk, the sum over the prompts, and `[DONE]`).
    fn after_part_signal(&mut self, out: &mut Vec<u8>) {
        match self.parts[self.current].interpreter.outcome() {
            StreamOutcome::InProgress => {}
            failed @ StreamOutcome::Failed { .. } => self.outcome = failed.clone(),
            StreamOutcome::Completed => {
                if self.current + 1 == self.parts.len() {
                    if self.include_usage {
                        let last = &self.parts[self.current].renderer;
                        last.frame.write_usage(out, self.usage());
                    }
                    crate::sse::write_done(out);
                    self.outcome = StreamOutcome::Completed;
                }
            }
        }
    }

    /// The token counts of every prompt, summed.
    fn usage(&self) -> Usage {
        self.parts
            .iter()
            .filter_map(|p| p.renderer.usage)
            .fold(Usage::default(), |sum, u| Usage {
                prompt_tokens: sum.prompt_tokens + u.prompt_tokens,
                completion_tokens: sum.completion_tokens + u.completion_tokens,
                cached_tokens: sum.cached_tokens + u.cached_tokens,
                reasoning_tokens: sum.reasoning_tokens + u.reasoning_tokens,
            })
    }

    /// `Completed` once every prompt completed; `Failed` as soon as one failed.
    pub fn outcome(&self) -> &StreamOutcome {
        &self.outcome
    }

    /// The complete `text_completion` body for non-streaming clients: one choice per prompt.
    pub fn final_completion(&self) -> Value {
        let first = &self.parts[0].renderer;
        json!({
            "id": first.id,
            "object": "text_completion",
            "created": first.created,
            "model": first.model,
            "choices": self.parts.iter().map(|p| p.renderer.choice()).collect::<Vec<_>>(),
            "usage": self.usage().to_json(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::chat_stream::test_support::*;
    use super::super::settings::WrapperSettings;
    use super::*;
    use openai_conformance::chat::{check_completion, check_completions_stream};

    fn convert(body: Value) -> Result<ResponsesPlan, WrapperError> {
        convert_all(body).map(|mut plans| {
            assert_eq!(plans.len(), 1);
            plans.remove(0)
        })
    }

    fn convert_all(body: Value) -> Result<Vec<ResponsesPlan>, WrapperError> {
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
            (json!({"prompt": [[1, 2, 3]]}), "prompt[0]"),
            (json!({"prompt": [1, 2, 3]}), "prompt[0]"),
            (json!({"prompt": ["a", [1, 2]]}), "prompt[1]"),
            (json!({"prompt": ["a", null]}), "prompt[1]"),
            (json!({"prompt": []}), "prompt"),
            (json!({"prompt": vec!["a"; MAX_PROMPTS + 1]}), "prompt"),
            (json!({"prompt": ["a", "b"], "n": 2}), "n"),
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
            let err = convert_all(body.clone()).unwrap_err();
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
        // The model is the one the upstream reported (`response.model`), as on the OpenAI API.
        let head = r#"data: {"id":"cmpl-test","object":"text_completion","created":1700000000,"model":"gpt-5-2025-08-07","choices":"#;
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
        assert_eq!(body["model"], "gpt-5-2025-08-07");
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

    #[test]
    fn several_prompts_become_one_plan_each_in_order() {
        let plans = convert_all(
            json!({"model": "gpt-5_high", "prompt": ["one", "two", "three"],
            "stream": true}),
        )
        .unwrap();
        assert_eq!(plans.len(), 3);
        for (plan, prompt) in plans.iter().zip(["one", "two", "three"]) {
            assert_eq!(plan.upstream_body["input"][0]["content"][0]["text"], prompt);
            assert_eq!(plan.upstream_body["model"], "gpt-5");
            assert_eq!(plan.upstream_body["reasoning"]["effort"], "high");
            assert_eq!(plan.client.model, "gpt-5");
            assert!(plan.client.stream);
        }
        assert_eq!(
            convert_all(json!({"prompt": vec!["a"; MAX_PROMPTS]}))
                .unwrap()
                .len(),
            MAX_PROMPTS
        );
    }

    /// Feeds `fixtures` one after the other as the upstream streams of one request.
    fn translate_prompts(fixtures: &[&str], include_usage: bool) -> (CompletionStream, Vec<u8>) {
        let meta = ClientMeta {
            stream: true,
            include_usage,
            model: "gpt-5".into(),
        };
        let mut stream =
            CompletionStream::for_prompts(&meta, fixtures.len(), 1_700_000_000, "cmpl-test");
        let mut out = Vec::new();
        for fixture in fixtures {
            for data in sse_data(fixture.as_bytes(), usize::MAX) {
                let _ = stream.push_event(&data, &mut out);
            }
            stream.finish(&mut out);
        }
        (stream, out)
    }

    #[test]
    fn several_prompts_stream_in_order_with_summed_usage() {
        let (stream, out) = translate_prompts(&[TEXT, REASONING, TEXT], true);
        let events = sse_data(&out, usize::MAX);
        check_completions_stream(&events).unwrap();
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let indices: Vec<u64> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["index"].as_u64())
            .collect();
        assert!(indices.windows(2).all(|w| w[0] <= w[1]), "{indices:?}");
        assert_eq!(indices.first(), Some(&0));
        assert_eq!(indices.last(), Some(&2));
        let finishes = chunks
            .iter()
            .filter(|c| c["choices"][0]["finish_reason"].is_string())
            .count();
        assert_eq!(finishes, 3);
        assert_eq!(events.iter().filter(|e| *e == "[DONE]").count(), 1);
        assert_eq!(events.last().unwrap(), "[DONE]");
        let usage_chunks: Vec<&Value> = chunks.iter().filter(|c| c["usage"].is_object()).collect();
        assert_eq!(usage_chunks.len(), 1);
        let (_, one_text) = translate(TEXT, true, usize::MAX);
        let (_, one_reasoning) = translate(REASONING, true, usize::MAX);
        let usage_of = |out: &[u8]| -> u64 {
            let events = sse_data(out, usize::MAX);
            let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
            usage["usage"]["total_tokens"].as_u64().unwrap()
        };
        let sum = 2 * usage_of(&one_text) + usage_of(&one_reasoning);
        assert_eq!(usage_chunks[0]["usage"]["total_tokens"], sum);
        assert_eq!(*stream.outcome(), StreamOutcome::Completed);
        let body = stream.final_completion();
        check_completion(&body).unwrap();
        let choices = body["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3);
        for (i, choice) in choices.iter().enumerate() {
            assert_eq!(choice["index"], i);
        }
        assert_eq!(choices[1]["text"], "The answer is 4.");
        assert_eq!(body["usage"]["total_tokens"], sum);
        let (_, without_usage) = translate_prompts(&[TEXT, TEXT], false);
        let events = sse_data(&without_usage, usize::MAX);
        check_completions_stream(&events).unwrap();
        assert!(!events.iter().any(|e| e.contains("\"usage\"")));
    }

    #[test]
    fn a_failed_prompt_ends_the_whole_request() {
        let (stream, out) = translate_prompts(&[TEXT, FAILED, TEXT], true);
        let events = sse_data(&out, usize::MAX);
        assert_eq!(events.last().unwrap(), "[DONE]");
        assert!(events[events.len() - 2].starts_with(r#"{"error":"#));
        assert_eq!(events.iter().filter(|e| *e == "[DONE]").count(), 1);
        assert!(!events.iter().any(|e| e.contains(r#""index":2"#)));
        assert_eq!(stream.outcome().error().unwrap().status, 502);
        // An upstream that ends without a terminal event fails the request too.
        let cut = &TEXT[..TEXT.find("response.completed").unwrap()];
        let (stream, _) = translate_prompts(&[cut, TEXT], false);
        assert_eq!(stream.outcome().error().unwrap().status, 502);
    }
}
