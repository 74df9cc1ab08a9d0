//! End-to-end tests with the real Codex CLI through bridge mode: `codex exec` speaks the
//! Responses API to the real proxy binary started with `--bridge-to-chat`, which talks to a mock
//! Chat Completions upstream on loopback. The mock answers `chat.completion.chunk` streams and
//! chooses its answer from what the converted request contains.
//!
//! The Codex binary comes from `CODEX_BIN` (see `tests/install-codex.sh` and
//! `tests/codex_support/mod.rs`); without it the tests are skipped, except under CI.

mod codex_support;
mod common;

use codex_support::*;
use common::*;
use serde_json::{json, Value};

/// Builds a Chat Completions stream shaped like OpenAI's: every chunk is a
/// `chat.completion.chunk` with the same id, the first delta carries the role, tool calls arrive
/// as fragments keyed by `index`, usage comes in a last chunk with empty `choices`, and the body
/// ends with `data: [DONE]`.
struct ChatStream {
    id: String,
    chunks: Vec<Value>,
    next_tool_index: u64,
}

impl ChatStream {
    fn new(id: &str) -> ChatStream {
        let mut stream = ChatStream {
            id: id.to_string(),
            chunks: Vec::new(),
            next_tool_index: 0,
        };
        stream.delta(json!({"role": "assistant", "content": ""}), None);
        stream
    }

    fn delta(&mut self, delta: Value, finish_reason: Option<&str>) {
        self.chunks.push(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": 1_763_740_000,
            "model": MODEL,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        }));
    }

    /// Reasoning text as `delta.reasoning_content` (DeepSeek/Qwen style).
    fn reasoning(mut self, deltas: &[&str]) -> ChatStream {
        for piece in deltas {
            self.delta(json!({"reasoning_content": piece}), None);
        }
        self
    }

    fn content(mut self, deltas: &[&str]) -> ChatStream {
        for piece in deltas {
            self.delta(json!({"content": piece}), None);
        }
        self
    }

    /// One tool call: the first fragment carries the id and the name with empty arguments,
    /// then `arguments` follows in the given pieces.
    fn tool_call(mut self, call_id: &str, name: &str, arguments: &[&str]) -> ChatStream {
        let index = self.next_tool_index;
        self.next_tool_index += 1;
        self.delta(
            json!({"tool_calls": [{
                "index": index, "id": call_id, "type": "function",
                "function": {"name": name, "arguments": ""},
            }]}),
            None,
        );
        for piece in arguments {
            self.delta(
                json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                None,
            );
        }
        self
    }

    /// The last choice chunk, the usage chunk, and `[DONE]`, rendered as the SSE body.
    fn finish(mut self, finish_reason: &str, prompt_tokens: u64, completion_tokens: u64) -> String {
        self.delta(json!({}), Some(finish_reason));
        self.chunks.push(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": 1_763_740_000,
            "model": MODEL,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }));
        let mut body: String = self
            .chunks
            .iter()
            .map(|chunk| format!("data: {chunk}\n\n"))
            .collect();
        body.push_str("data: [DONE]\n\n");
        body
    }
}

/// Splits `text` into `parts` pieces of about equal length (on char boundaries).
fn split_in(text: &str, parts: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    for left in (1..=parts).rev() {
        let mut cut = rest.len() / left;
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        let (piece, tail) = rest.split_at(cut);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

fn start_bridge(mock: &MockUpstream) -> Proxy {
    Proxy::start(&mock.url("/v1/chat/completions"), &["--bridge-to-chat"])
}

fn messages(body: &Value) -> &Vec<Value> {
    body["messages"].as_array().expect("messages is an array")
}

fn messages_with_role<'a>(body: &'a Value, role: &str) -> Vec<&'a Value> {
    messages(body)
        .iter()
        .filter(|message| message["role"] == role)
        .collect()
}

/// A message's text, whether its content is a string or a list of parts.
fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

fn has_tool_message(body: &Value) -> bool {
    !messages_with_role(body, "tool").is_empty()
}

/// The chat function tools offered, by name.
fn function_tools(body: &Value) -> Vec<&Value> {
    body["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter(|tool| tool["type"] == "function")
                .map(|tool| &tool["function"])
                .collect()
        })
        .unwrap_or_default()
}

/// The chat function that stands for Codex's freeform `apply_patch` tool: one required string
/// argument `input`, with the patch grammar in its description.
fn apply_patch_function(body: &Value) -> Option<&Value> {
    function_tools(body).into_iter().find(|function| {
        let parameters = &function["parameters"];
        let description = function["description"].as_str().unwrap_or_default();
        function["name"]
            .as_str()
            .is_some_and(|name| name.contains("apply_patch"))
            && parameters["properties"]
                .as_object()
                .is_some_and(|properties| properties.len() == 1)
            && parameters["properties"]["input"]["type"] == "string"
            && parameters["required"] == json!(["input"])
            && description.contains("*** Begin Patch")
    })
}

/// What every chat request the bridge sent for Codex must look like at the upstream.
fn assert_chat_request_from_codex(request: &Seen) {
    assert_eq!(request.method, "POST");
    assert_eq!(request.uri, "/v1/chat/completions");
    assert_eq!(
        request.header("authorization").as_deref(),
        Some(format!("Bearer {TEST_KEY}").as_str()),
        "the upstream must see the proxy's key, not the one Codex sent"
    );
    for (name, value) in request.headers.iter() {
        let value = value.to_str().unwrap_or_default();
        assert!(
            !value.contains(CODEX_SIDE_KEY),
            "Codex's key leaked to the upstream in {name}"
        );
    }
    let body = request.json();
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert!(
        !request
            .body
            .windows(CODEX_SIDE_KEY.len())
            .any(|w| w == CODEX_SIDE_KEY.as_bytes()),
        "Codex's key leaked into the chat body"
    );
    // Chat upstreams reject an assistant message with tool_calls that is not followed by one
    // tool message per call.
    let messages = messages(&body);
    for (i, message) in messages.iter().enumerate() {
        if let Some(calls) = message["tool_calls"].as_array() {
            for (k, call) in calls.iter().enumerate() {
                let reply = &messages[i + 1 + k];
                assert_eq!(reply["role"], "tool", "{body:#}");
                assert_eq!(reply["tool_call_id"], call["id"], "{body:#}");
            }
        }
    }
}

/// The one assistant message with tool calls in a follow-up request, its single call, and the
/// tool message that answers it (which must come right after).
fn answered_call(body: &Value) -> (Value, Value) {
    let messages = messages(body);
    let with_calls: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, message)| message["tool_calls"].is_array())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(with_calls.len(), 1, "{body:#}");
    let at = with_calls[0];
    assert_eq!(messages[at]["role"], "assistant");
    let calls = messages[at]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{body:#}");
    let tool = &messages[at + 1];
    assert_eq!(tool["role"], "tool", "{body:#}");
    assert_eq!(tool["tool_call_id"], calls[0]["id"]);
    assert_eq!(
        messages_with_role(body, "tool").len(),
        1,
        "one call, one tool message: {body:#}"
    );
    (calls[0].clone(), tool.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_text_turn_through_the_bridge() {
    let Some(codex) = codex_bin() else { return };
    let mock = MockUpstream::start(|_| {
        Reply::sse(
            &ChatStream::new("chatcmpl-text-1")
                .content(&["Hello ", "from the ", "chat upstream."])
                .finish("stop", 150, 8),
        )
    })
    .await;
    let proxy = start_bridge(&mock);
    let workdir = scratch_dir();

    let prompt = "Say hello through the bridge, please.";
    let run = run_codex(&codex, &proxy.url("/v1"), workdir.path(), prompt).await;
    run.assert_success(&proxy);
    assert_eq!(
        run.stdout, "Hello from the chat upstream.\n",
        "stderr:\n{}",
        run.stderr
    );

    let seen = mock.seen();
    assert_eq!(seen.len(), 1, "one turn, one request, no retries");
    assert_chat_request_from_codex(&seen[0]);
    let body = seen[0].json();
    let messages = messages(&body);
    assert_eq!(messages[0]["role"], "system", "{body:#}");
    assert!(
        text_of(&messages[0]).contains("You are Codex"),
        "Codex's developer prompt becomes the system message: {:#}",
        messages[0]
    );
    let users = messages_with_role(&body, "user");
    assert_eq!(
        users.last().map(|m| text_of(m)).as_deref(),
        Some(prompt),
        "{body:#}"
    );
    assert!(!has_tool_message(&body));

    let names: Vec<&str> = function_tools(&body)
        .iter()
        .filter_map(|function| function["name"].as_str())
        .collect();
    assert!(names.contains(&"exec_command"), "tools: {names:?}");
    let exec = function_tools(&body)
        .into_iter()
        .find(|function| function["name"] == "exec_command")
        .unwrap();
    assert_eq!(exec["parameters"]["type"], "object");
    assert!(
        exec["parameters"]["properties"]["cmd"].is_object(),
        "{exec:#}"
    );
    let apply_patch = apply_patch_function(&body)
        .unwrap_or_else(|| panic!("no converted apply_patch function among {names:?}"));
    assert_eq!(
        apply_patch["name"], "apply_patch",
        "a valid name is kept as it is"
    );
    let description = apply_patch["description"].as_str().unwrap();
    assert!(
        description.contains("lark") && description.contains("add_hunk"),
        "the grammar travels in the description: {description}"
    );
    for name in &names {
        assert!(
            !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "invalid chat function name {name:?}"
        );
    }
    assert!(!proxy
        .stderr_once_it_has("POST /v1/responses", std::time::Duration::from_secs(5))
        .contains(TEST_KEY));
    eprintln!("codex exec (bridge text turn) took {:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_reasoning_turn_through_the_bridge() {
    let Some(codex) = codex_bin() else { return };
    let mock = MockUpstream::start(|_| {
        Reply::sse(
            &ChatStream::new("chatcmpl-think-1")
                .reasoning(&["Weighing the ", "marker-reasoning-7 ", "options."])
                .content(&["The answer ", "is 42."])
                .finish("stop", 160, 30),
        )
    })
    .await;
    let proxy = start_bridge(&mock);
    let workdir = scratch_dir();

    let run = run_codex(
        &codex,
        &proxy.url("/v1"),
        workdir.path(),
        "Think, then answer.",
    )
    .await;
    run.assert_success(&proxy);
    assert_eq!(run.stdout, "The answer is 42.\n", "stderr:\n{}", run.stderr);
    // `codex exec` keeps stdout for the final message. Codex 0.169.0 shows the reasoning
    // summary on stderr as a plain line of its own (no "thinking" header, even though its
    // banner says "reasoning summaries: none"), before the "codex" block with the answer.
    let reasoning = run
        .stderr
        .find("\nWeighing the marker-reasoning-7 options.\n")
        .unwrap_or_else(|| panic!("the reasoning summary is shown on stderr:\n{}", run.stderr));
    let answer = run
        .stderr
        .find("\ncodex\nThe answer is 42.\n")
        .unwrap_or_else(|| panic!("the answer is shown on stderr:\n{}", run.stderr));
    assert!(reasoning < answer, "reasoning first:\n{}", run.stderr);
    assert!(!run.stdout.contains("marker-reasoning-7"));

    let seen = mock.seen();
    assert_eq!(seen.len(), 1, "one turn, one request, no retries");
    assert_chat_request_from_codex(&seen[0]);
    eprintln!("codex exec (bridge reasoning turn) took {:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_exec_command_round_trip_through_the_bridge() {
    let Some(codex) = codex_bin() else { return };
    // The shell has to evaluate the command: the marker "bridge-tool-42" is not in the call.
    let command = "echo ran > bridge-proof.txt && echo bridge-tool-$((6*7))";
    let arguments = json!({"cmd": command}).to_string();
    let mock = MockUpstream::start(move |seen| {
        let body = seen.json();
        let stream = if has_tool_message(&body) {
            ChatStream::new("chatcmpl-tool-2")
                .content(&["The command ", "ran."])
                .finish("stop", 400, 5)
        } else {
            ChatStream::new("chatcmpl-tool-1")
                .tool_call(
                    "call_bridge_exec_1",
                    "exec_command",
                    &split_in(&arguments, 3),
                )
                .finish("tool_calls", 300, 20)
        };
        Reply::sse(&stream)
    })
    .await;
    let proxy = start_bridge(&mock);
    let workdir = scratch_dir();

    let run = run_codex(
        &codex,
        &proxy.url("/v1"),
        workdir.path(),
        "Run the proof command.",
    )
    .await;
    run.assert_success(&proxy);
    assert_eq!(run.stdout, "The command ran.\n", "stderr:\n{}", run.stderr);

    let seen = mock.seen();
    assert_eq!(
        seen.len(),
        2,
        "the call, then its output; stderr:\n{}",
        run.stderr
    );
    for request in &seen {
        assert_chat_request_from_codex(request);
    }
    assert!(!has_tool_message(&seen[0].json()));

    let second = seen[1].json();
    let (call, tool) = answered_call(&second);
    assert_eq!(call["id"], "call_bridge_exec_1");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "exec_command");
    let sent: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
        .expect("the arguments Codex echoes are JSON");
    assert_eq!(sent["cmd"], command);
    let output = text_of(&tool);
    assert!(
        output.contains("Process exited with code 0") && output.contains("bridge-tool-42"),
        "tool message: {output}"
    );
    assert_eq!(
        std::fs::read_to_string(workdir.path().join("bridge-proof.txt")).unwrap(),
        "ran\n",
        "the command ran in the workspace"
    );
    eprintln!(
        "codex exec (bridge exec_command round trip, {:?}) took {:?}",
        run.sandbox, run.elapsed
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_apply_patch_round_trip_through_the_bridge() {
    apply_patch_through_the_bridge(Transport::Http).await;
}

/// The same `apply_patch` round trip with Codex configured the usual way (`openai_base_url`):
/// over its WebSocket, which the bridge serves from the chat upstream, with no fallback line.
#[tokio::test(flavor = "multi_thread")]
async fn codex_apply_patch_over_websocket_through_the_bridge() {
    apply_patch_through_the_bridge(Transport::WebSocket).await;
}

/// How Codex reaches the proxy: a custom provider over HTTP POST, or the built-in provider
/// (`openai_base_url`), which opens a WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Http,
    WebSocket,
}

async fn apply_patch_through_the_bridge(transport: Transport) {
    let Some(codex) = codex_bin() else { return };
    let patch = "*** Begin Patch\n*** Add File: hello.txt\n+hello from bridge\n*** End Patch\n";
    let mock = MockUpstream::start(move |seen| {
        let body = seen.json();
        let stream = if has_tool_message(&body) {
            ChatStream::new("chatcmpl-patch-2")
                .content(&["Patched ", "hello.txt."])
                .finish("stop", 500, 6)
        } else {
            // Call the tool by the name the bridge gave it in this very request.
            let name = apply_patch_function(&body)
                .and_then(|function| function["name"].as_str())
                .expect("the request offers the converted apply_patch")
                .to_string();
            let arguments = json!({"input": patch}).to_string();
            ChatStream::new("chatcmpl-patch-1")
                .tool_call("call_bridge_patch_1", &name, &split_in(&arguments, 3))
                .finish("tool_calls", 350, 40)
        };
        Reply::sse(&stream)
    })
    .await;
    let proxy = start_bridge(&mock);
    let workdir = scratch_dir();

    let run = match transport {
        Transport::Http => {
            run_codex(
                &codex,
                &proxy.url("/v1"),
                workdir.path(),
                "Create hello.txt.",
            )
            .await
        }
        Transport::WebSocket => {
            run_codex_builtin(
                &codex,
                &proxy.url("/v1"),
                workdir.path(),
                "Create hello.txt.",
            )
            .await
        }
    };
    run.assert_success(&proxy);
    if transport == Transport::WebSocket {
        run.assert_no_websocket_fallback();
        let log =
            proxy.stderr_once_it_has("WS /v1/responses 200", std::time::Duration::from_secs(5));
        assert!(log.contains("GET /v1/responses 101"), "{log}");
        assert!(!log.contains("POST /v1/responses"), "fell back: {log}");
    }
    assert_eq!(
        run.stdout, "Patched hello.txt.\n",
        "stderr:\n{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(workdir.path().join("hello.txt")).unwrap(),
        "hello from bridge\n",
        "Codex applied the patch in the workspace; stderr:\n{}",
        run.stderr
    );

    let seen = mock.seen();
    assert_eq!(
        seen.len(),
        2,
        "the call, then its output; stderr:\n{}",
        run.stderr
    );
    for request in &seen {
        assert_chat_request_from_codex(request);
    }
    let first = seen[0].json();
    assert!(!has_tool_message(&first));
    let name = apply_patch_function(&first).unwrap()["name"].clone();

    let second = seen[1].json();
    let (call, tool) = answered_call(&second);
    assert_eq!(call["id"], "call_bridge_patch_1");
    assert_eq!(call["function"]["name"], name);
    let sent: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
        .expect("the custom call's input travels back as JSON arguments");
    assert_eq!(sent, json!({"input": patch}));
    let output = text_of(&tool);
    assert!(
        output.contains("Success") && output.contains("hello.txt"),
        "tool message: {output}"
    );
    eprintln!(
        "codex exec (bridge apply_patch round trip over {transport:?}, {:?}) took {:?}",
        run.sandbox, run.elapsed
    );
}

/// Remote compaction through the bridge: Codex's built-in provider (pointed at the proxy with
/// `openai_base_url`, over its WebSocket, which the bridge serves) sends a `compaction_trigger` once
/// its context passes `model_auto_compact_token_limit`; the bridge asks the chat upstream for
/// a summary, answers with one sealed `compaction` item, and the next request carries the
/// summary to the chat upstream. Before, the trigger got a 400 and Codex exited 1.
#[tokio::test(flavor = "multi_thread")]
async fn codex_remote_compaction_through_the_bridge() {
    let Some(codex) = codex_bin() else { return };
    let command = "echo compaction-proof-$((6*7))";
    let arguments = json!({"cmd": command}).to_string();
    let mock = MockUpstream::start(move |seen| {
        let body = seen.json();
        let system = messages(&body).first().map(text_of).unwrap_or_default();
        let stream = if system.contains("You are compacting the history") {
            ChatStream::new("chatcmpl-compact")
                .content(&[
                    "Summary-marker-77: the user asked ",
                    "to run the proof command.",
                ])
                .finish("stop", 500, 20)
        } else if has_tool_message(&body)
            || messages(&body)
                .iter()
                .any(|m| text_of(m).contains("Summary-marker-77"))
        {
            ChatStream::new("chatcmpl-done")
                .content(&["All ", "done."])
                .finish("stop", 600, 5)
        } else {
            // Far past the limit below, so that Codex compacts before its next request.
            ChatStream::new("chatcmpl-call")
                .tool_call("call_compact_1", "exec_command", &split_in(&arguments, 2))
                .finish("tool_calls", 90_000, 20)
        };
        Reply::sse(&stream)
    })
    .await;
    let proxy = start_bridge(&mock);
    let workdir = scratch_dir();
    let base_url = format!("openai_base_url=\"{}\"", proxy.url("/v1"));
    let run = run_codex_with(
        &codex,
        &proxy.url("/v1"),
        workdir.path(),
        "Run the proof command.",
        &[
            "model_provider=\"openai\"",
            &base_url,
            "model_auto_compact_token_limit=2000",
        ],
    )
    .await;
    run.assert_success(&proxy);
    run.assert_no_websocket_fallback();
    assert_eq!(run.stdout, "All done.\n", "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("context compacted"),
        "stderr:\n{}",
        run.stderr
    );

    let seen = mock.seen();
    let bodies: Vec<Value> = seen.iter().map(Seen::json).collect();
    let summarising: Vec<&Value> = bodies
        .iter()
        .filter(|b| {
            messages(b)
                .first()
                .is_some_and(|m| text_of(m).contains("You are compacting the history"))
        })
        .collect();
    assert_eq!(
        summarising.len(),
        1,
        "one summarisation request: {bodies:#?}"
    );
    let transcript = text_of(&messages(summarising[0])[1]);
    assert!(
        transcript.contains("Run the proof command.") && transcript.contains("compaction-proof-42"),
        "the transcript has the prompt and the tool's output: {transcript}"
    );
    let last = bodies.last().unwrap();
    let summary = messages(last)
        .iter()
        .find(|m| text_of(m).contains("Summary-marker-77"))
        .unwrap_or_else(|| panic!("the summary reached the upstream: {last:#}"));
    assert_eq!(summary["role"], "user");
    assert!(text_of(summary).starts_with("Summary of the earlier part"));
    assert!(!proxy.stderr().contains(" 400 "), "{}", proxy.stderr());
    eprintln!(
        "codex exec (bridge remote compaction) took {:?}",
        run.elapsed
    );
}

/// Codex configured the usual way (`openai_base_url`, the built-in provider) opens a
/// WebSocket; in bridge mode the proxy serves it from the chat upstream. A text turn and an
/// `exec_command` round trip complete with no retry or fallback line, and the second chat
/// request carries the whole conversation (the socket's `previous_response_id` expanded).
#[tokio::test(flavor = "multi_thread")]
async fn codex_over_websocket_through_the_bridge() {
    let Some(codex) = codex_bin() else { return };
    let command = "echo ran > bridge-ws-proof.txt && echo bridge-ws-$((6*7))";
    let arguments = json!({"cmd": command}).to_string();
    let mock = MockUpstream::start(move |seen| {
        let body = seen.json();
        let asks_for_tool = text_of(messages_with_role(&body, "user").last().unwrap())
            .contains("Run the proof command.");
        let stream = if !asks_for_tool {
            ChatStream::new("chatcmpl-ws-text")
                .content(&["Hello ", "over the bridge."])
                .finish("stop", 100, 5)
        } else if has_tool_message(&body) {
            ChatStream::new("chatcmpl-ws-tool-2")
                .content(&["The command ", "ran."])
                .finish("stop", 400, 5)
        } else {
            ChatStream::new("chatcmpl-ws-tool-1")
                .tool_call("call_bridge_ws_1", "exec_command", &split_in(&arguments, 3))
                .finish("tool_calls", 300, 20)
        };
        Reply::sse(&stream)
    })
    .await;
    let proxy = start_bridge(&mock);

    let workdir = scratch_dir();
    let run = run_codex_builtin(&codex, &proxy.url("/v1"), workdir.path(), "Say hello.").await;
    run.assert_success(&proxy);
    run.assert_no_websocket_fallback();
    assert_eq!(
        run.stdout, "Hello over the bridge.\n",
        "stderr:\n{}",
        run.stderr
    );
    eprintln!(
        "codex exec (bridge text turn over WebSocket) took {:?}",
        run.elapsed
    );

    let workdir = scratch_dir();
    let run = run_codex_builtin(
        &codex,
        &proxy.url("/v1"),
        workdir.path(),
        "Run the proof command.",
    )
    .await;
    run.assert_success(&proxy);
    run.assert_no_websocket_fallback();
    assert_eq!(run.stdout, "The command ran.\n", "stderr:\n{}", run.stderr);
    eprintln!(
        "codex exec (bridge exec_command round trip over WebSocket) took {:?}",
        run.elapsed
    );

    let seen = mock.seen();
    assert_eq!(seen.len(), 3, "one text turn, then the call and its output");
    for request in &seen {
        assert_chat_request_from_codex(request);
    }
    let second = seen[2].json();
    let (call, tool) = answered_call(&second);
    assert_eq!(call["id"], "call_bridge_ws_1");
    assert!(text_of(&tool).contains("bridge-ws-42"), "{second:#}");
    assert_eq!(
        text_of(messages_with_role(&second, "user").last().unwrap()),
        "Run the proof command."
    );
    assert_eq!(
        std::fs::read_to_string(workdir.path().join("bridge-ws-proof.txt")).unwrap(),
        "ran\n"
    );
    let log = proxy.stderr_once_it_has("WS /v1/responses 200", std::time::Duration::from_secs(5));
    assert!(
        !log.contains("POST /v1/responses"),
        "Codex fell back to HTTP: {log}"
    );
}
