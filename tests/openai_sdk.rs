//! The official OpenAI Python SDK as a real client of the proxy, with strict response
//! validation. The interpreter comes from `OPENAI_SDK_PYTHON` (a venv with `openai`
//! installed; `tests/run-all.sh` makes it). Without it the tests skip, except in CI.

mod common;

use common::*;

fn sdk_python() -> Option<String> {
    match std::env::var("OPENAI_SDK_PYTHON") {
        Ok(python) => Some(python),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!(
                "OPENAI_SDK_PYTHON is not set: run tests/run-all.sh, which installs the openai SDK"
            )
        }
        Err(_) => {
            eprintln!("skipped: OPENAI_SDK_PYTHON not set");
            None
        }
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

async fn run_scenario(python: &str, scenario: &str, base_url: String) {
    let script = format!("{}/tests/sdk/openai_client.py", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(scenario)
        .arg(base_url)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{scenario}:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ok: "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_chat_streaming_and_non_streaming_with_parallel_tool_calls() {
    let Some(python) = sdk_python() else { return };
    let body = fixture("responses-streams/parallel-tools.sse");
    let upstream = MockUpstream::start(move |_| Reply::sse(&body)).await;
    let proxy = Proxy::start(&upstream.url("/v1/responses"), &["--wrapper-routes"]);
    run_scenario(&python, "chat-tools", proxy.url("/v1")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_completions() {
    let Some(python) = sdk_python() else { return };
    let body = fixture("responses-streams/text.sse");
    let upstream = MockUpstream::start(move |_| Reply::sse(&body)).await;
    let proxy = Proxy::start(&upstream.url("/v1/responses"), &["--wrapper-routes"]);
    run_scenario(&python, "completions", proxy.url("/v1")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_responses_through_the_bridge() {
    let Some(python) = sdk_python() else { return };
    let body = fixture("chat-streams/text.sse");
    let upstream = MockUpstream::start(move |_| Reply::sse(&body)).await;
    let proxy = Proxy::start(&upstream.url("/v1/chat/completions"), &["--bridge-to-chat"]);
    run_scenario(&python, "responses-bridge", proxy.url("/v1")).await;
}

/// The SDK's WebSocket mode (`client.responses.connect()`, extra `openai[realtime]`): two
/// responses on one socket, the second naming the first as `previous_response_id`, which
/// the proxy expands into the whole conversation for the chat upstream.
#[tokio::test(flavor = "multi_thread")]
async fn sdk_responses_over_a_websocket_through_the_bridge() {
    let Some(python) = sdk_python() else { return };
    let body = fixture("chat-streams/text.sse");
    let upstream = MockUpstream::start(move |_| Reply::sse(&body)).await;
    let proxy = Proxy::start(&upstream.url("/v1/chat/completions"), &["--bridge-to-chat"]);
    run_scenario(&python, "responses-websocket", proxy.url("/v1")).await;
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let second: serde_json::Value = seen[1].json();
    let roles: Vec<&str> = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"], "{second}");
}
