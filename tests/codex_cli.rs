//! End-to-end tests with the real Codex CLI: `codex exec` talks to the real proxy binary, which
//! forwards to a mock Responses upstream on loopback.
//!
//! The Codex binary comes from `CODEX_BIN` (see `tests/install-codex.sh`); the runner lives in
//! `tests/codex_support/mod.rs`. Without `CODEX_BIN` the tests print "skipped: CODEX_BIN not
//! set" and pass, except under CI (env `CI` set) where they fail.

mod codex_support;
mod common;

use codex_support::*;
use common::*;
use serde_json::{json, Value};

/// What every request Codex sent must look like at the upstream.
fn assert_forwarded_from_codex(request: &Seen) {
    assert_eq!(request.method, "POST");
    assert_eq!(request.uri, "/v1/responses");
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
    assert_eq!(
        request.header("accept").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(request.header("originator").as_deref(), Some("codex_exec"));
    assert!(request
        .header("user-agent")
        .is_some_and(|agent| agent.contains(CODEX_VERSION)));
    let body = request.json();
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stream"], true);
}

fn items_of_type<'a>(body: &'a Value, kind: &str) -> Vec<&'a Value> {
    body["input"]
        .as_array()
        .expect("input is an array")
        .iter()
        .filter(|item| item["type"] == kind)
        .collect()
}

/// The text of the last user message in a request body.
fn last_user_text(body: &Value) -> String {
    items_of_type(body, "message")
        .into_iter()
        .rfind(|item| item["role"] == "user")
        .and_then(|item| item["content"].as_array())
        .map(|parts| {
            parts
                .iter()
                .filter_map(|part| part["text"].as_str())
                .collect::<String>()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_text_turn_through_the_proxy() {
    let Some(codex) = codex_bin() else { return };
    let mock = MockUpstream::start(|_| {
        Reply::sse(
            &ResponsesStream::new("resp_text_1")
                .message("msg_text_1", &["Hello ", "from the ", "mock upstream."])
                .completed(120, 7),
        )
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let workdir = scratch_dir();

    let run = run_codex(
        &codex,
        &proxy.url("/v1"),
        workdir.path(),
        "Say hello, please.",
    )
    .await;
    run.assert_success(&proxy);
    assert_eq!(
        run.stdout.trim_end(),
        "Hello from the mock upstream.",
        "stderr:\n{}",
        run.stderr
    );

    let seen = mock.seen();
    assert_eq!(seen.len(), 1, "one turn, one request, no retries");
    assert_forwarded_from_codex(&seen[0]);
    assert_eq!(last_user_text(&seen[0].json()), "Say hello, please.");
    assert!(!proxy
        .stderr_once_it_has("POST /v1/responses", std::time::Duration::from_secs(5))
        .contains(TEST_KEY));
    eprintln!("codex exec (text turn) took {:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_tool_call_round_trip_through_the_proxy() {
    let Some(codex) = codex_bin() else { return };
    // The shell has to evaluate the command: the marker "codex-tool-42" is not in the call.
    let command = "echo ran > tool-proof.txt && echo codex-tool-$((6*7))";
    let mock = MockUpstream::start(move |seen| {
        let body = seen.json();
        let answered = !items_of_type(&body, "function_call_output").is_empty();
        let stream = if answered {
            ResponsesStream::new("resp_tool_2").message("msg_tool_2", &["The command ", "ran."])
        } else {
            ResponsesStream::new("resp_tool_1").function_call(
                "fc_tool_1",
                "call_tool_1",
                "exec_command",
                &json!({"cmd": command}),
            )
        };
        Reply::sse(&stream.completed(300, 20))
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let workdir = scratch_dir();

    let run = run_codex(
        &codex,
        &proxy.url("/v1"),
        workdir.path(),
        "Run the proof command.",
    )
    .await;
    run.assert_success(&proxy);
    assert_eq!(
        run.stdout.trim_end(),
        "The command ran.",
        "stderr:\n{}",
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
        assert_forwarded_from_codex(request);
    }
    let first = seen[0].json();
    assert!(items_of_type(&first, "function_call_output").is_empty());
    let offered: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    assert!(offered.contains(&"exec_command"), "tools: {offered:?}");

    let second = seen[1].json();
    let calls = items_of_type(&second, "function_call");
    assert_eq!(calls.len(), 1, "{second:#}");
    assert_eq!(calls[0]["call_id"], "call_tool_1");
    assert_eq!(calls[0]["name"], "exec_command");
    let outputs = items_of_type(&second, "function_call_output");
    assert_eq!(outputs.len(), 1, "{second:#}");
    assert_eq!(outputs[0]["call_id"], "call_tool_1");
    let output = outputs[0]["output"].as_str().expect("output is a string");
    assert!(
        output.contains("Process exited with code 0") && output.contains("codex-tool-42"),
        "function_call_output: {output}"
    );
    assert_eq!(
        std::fs::read_to_string(workdir.path().join("tool-proof.txt")).unwrap(),
        "ran\n",
        "the command ran in the workspace"
    );
    eprintln!("codex exec (tool round trip) took {:?}", run.elapsed);
}

/// How users point Codex at the proxy (`openai_base_url` in config.toml, the built-in
/// provider): Codex opens a WebSocket on `GET /v1/responses`, which the proxy serves itself
/// over its HTTP upstream. The text turn completes with no retry or fallback line, and the
/// upstream gets one ordinary POST with the key (Codex sends no Authorization header).
#[tokio::test(flavor = "multi_thread")]
async fn codex_over_websocket_text_turn_through_the_proxy() {
    let Some(codex) = codex_bin() else { return };
    let mock = MockUpstream::start(|_| {
        Reply::sse(
            &ResponsesStream::new("resp_ws_text_1")
                .message("msg_ws_text_1", &["Hello ", "over the ", "socket."])
                .completed(120, 7),
        )
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let workdir = scratch_dir();

    let run = run_codex_builtin(
        &codex,
        &proxy.url("/v1"),
        workdir.path(),
        "Say hello, please.",
    )
    .await;
    run.assert_success(&proxy);
    run.assert_no_websocket_fallback();
    assert_eq!(
        run.stdout.trim_end(),
        "Hello over the socket.",
        "stderr:\n{}",
        run.stderr
    );

    let seen = mock.seen();
    assert_eq!(
        seen.len(),
        1,
        "the prewarm stays in the proxy; one turn, one POST: {seen:?}"
    );
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].header("authorization").as_deref(),
        Some(format!("Bearer {TEST_KEY}").as_str())
    );
    let body = seen[0].json();
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stream"], true);
    assert!(body.get("previous_response_id").is_none() && body.get("type").is_none());
    assert_eq!(last_user_text(&body), "Say hello, please.");
    assert_eq!(
        items_of_type(&body, "message")[0]["role"],
        "developer",
        "the prewarm's instructions come first: {body:#}"
    );
    let log = proxy.stderr_once_it_has("WS /v1/responses 200", std::time::Duration::from_secs(5));
    assert!(log.contains("GET /v1/responses 101"), "{log}");
    assert!(
        !log.contains("POST /v1/responses"),
        "Codex fell back to HTTP: {log}"
    );
    eprintln!(
        "codex exec (text turn over WebSocket) took {:?}",
        run.elapsed
    );
}

/// An `exec_command` round trip over Codex's WebSocket: the second turn names the first
/// response as `previous_response_id` and sends only the call's output; the upstream gets the
/// whole conversation (developer and user messages, the call, its output).
#[tokio::test(flavor = "multi_thread")]
async fn codex_over_websocket_tool_call_round_trip_through_the_proxy() {
    let Some(codex) = codex_bin() else { return };
    let command = "echo ran > ws-proof.txt && echo codex-ws-$((6*7))";
    let mock = MockUpstream::start(move |seen| {
        let body = seen.json();
        let answered = !items_of_type(&body, "function_call_output").is_empty();
        let stream = if answered {
            ResponsesStream::new("resp_ws_tool_2")
                .message("msg_ws_tool_2", &["The command ", "ran."])
        } else {
            ResponsesStream::new("resp_ws_tool_1").function_call(
                "fc_ws_tool_1",
                "call_ws_tool_1",
                "exec_command",
                &json!({"cmd": command}),
            )
        };
        Reply::sse(&stream.completed(300, 20))
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
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
    assert_eq!(
        run.stdout.trim_end(),
        "The command ran.",
        "stderr:\n{}",
        run.stderr
    );

    let seen = mock.seen();
    assert_eq!(seen.len(), 2, "the call, then its output: {seen:?}");
    let first = seen[0].json();
    let second = seen[1].json();
    assert!(second.get("previous_response_id").is_none());
    // The second POST carries the first one's input, then the call, then its output.
    let first_input = first["input"].as_array().unwrap();
    let second_input = second["input"].as_array().unwrap();
    assert_eq!(
        &second_input[..first_input.len()],
        &first_input[..],
        "{second:#}"
    );
    let calls = items_of_type(&second, "function_call");
    assert_eq!(calls.len(), 1, "{second:#}");
    assert_eq!(calls[0]["call_id"], "call_ws_tool_1");
    let outputs = items_of_type(&second, "function_call_output");
    assert_eq!(outputs.len(), 1, "{second:#}");
    let output = outputs[0]["output"].as_str().expect("output is a string");
    assert!(
        output.contains("codex-ws-42"),
        "function_call_output: {output}"
    );
    assert_eq!(
        std::fs::read_to_string(workdir.path().join("ws-proof.txt")).unwrap(),
        "ran\n"
    );
    let log = proxy.stderr_once_it_has("WS /v1/responses 200", std::time::Duration::from_secs(5));
    assert!(
        !log.contains("POST /v1/responses"),
        "Codex fell back to HTTP: {log}"
    );
    eprintln!(
        "codex exec (tool round trip over WebSocket) took {:?}",
        run.elapsed
    );
}
