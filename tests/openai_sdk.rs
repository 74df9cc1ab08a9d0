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

async fn run_scenario(python: &str, scenario: &str, base_url: String) -> String {
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
    stdout.into_owned()
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

/// A Responses stream fixture as its events, each response with its own id (`n`).
fn fixture_events(name: &str, n: usize) -> Vec<serde_json::Value> {
    fixture(name)
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| {
            serde_json::from_str(&data.replace("resp_text01", &format!("resp_text{n:02}"))).unwrap()
        })
        .collect()
}

/// The SDK's WebSocket mode through strict mode over an HTTP-only upstream: the proxy serves
/// the socket itself and sends the second response as one POST with the whole conversation.
/// The SDK is given a message size limit, with which it offers permessage-deflate (without
/// one it turns compression off), and takes the proxy's terms.
#[tokio::test(flavor = "multi_thread")]
async fn sdk_responses_over_a_websocket_in_strict_mode_over_an_http_upstream() {
    let Some(python) = sdk_python() else { return };
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let upstream = MockUpstream::start(move |_| {
        let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Reply::sse(
            &fixture("responses-streams/text.sse")
                .replace("resp_text01", &format!("resp_text{n:02}")),
        )
    })
    .await;
    let proxy = Proxy::start(&upstream.url("/v1/responses"), &["--log-level", "debug"]);
    run_scenario(&python, "responses-websocket-deflate", proxy.url("/v1")).await;
    let log = proxy.stderr_once_it_has(
        "websocket: negotiated permessage-deflate",
        std::time::Duration::from_secs(5),
    );
    assert!(
        log.contains("websocket: negotiated permessage-deflate"),
        "{log}"
    );
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let second: serde_json::Value = seen[1].json();
    assert!(second.get("previous_response_id").is_none(), "{second}");
    let roles: Vec<&str> = second["input"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"], "{second}");
}

/// The SDK's WebSocket mode through strict mode relaying to a WebSocket upstream: the
/// upstream keeps the conversation itself (`previous_response_id` passes unexpanded) and
/// answers the unknown id with its own error.
#[tokio::test(flavor = "multi_thread")]
async fn sdk_responses_over_a_websocket_relayed_to_a_websocket_upstream() {
    let Some(python) = sdk_python() else { return };
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let upstream = WsUpstream::start(move |_request, id| {
        let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let events = fixture_events("responses-streams/text.sse", n);
        let fixture_id = format!("resp_text{n:02}");
        events
            .into_iter()
            .map(|e| serde_json::from_str(&e.to_string().replace(&fixture_id, id)).unwrap())
            .collect()
    })
    .await;
    let proxy = Proxy::start(&upstream.url(), &["--websocket-upstream", "relay"]);
    run_scenario(&python, "responses-websocket", proxy.url("/v1")).await;
    let seen = upstream.seen.lock().unwrap();
    assert_eq!(seen.authorizations, [format!("Bearer {TEST_KEY}")]);
    let requests = seen.generating_requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(requests[1]["previous_response_id"].is_string());
    assert_eq!(requests[1]["input"], "Again", "passed on unexpanded");
}

/// The SDK's `previous_response_id` over HTTP in bridge mode (its default `store: true`): the
/// second request reaches the chat upstream as the whole conversation, the first response
/// reads back by id — and another local user gets the 404 of an unknown id for it.
#[tokio::test(flavor = "multi_thread")]
async fn sdk_previous_response_id_through_the_bridge_belongs_to_its_user() {
    let Some(python) = sdk_python() else { return };
    require_root("asks as another local user");
    let body = fixture("chat-streams/text.sse");
    let upstream = MockUpstream::start(move |_| Reply::sse(&body)).await;
    let proxy = Proxy::start(&upstream.url("/v1/chat/completions"), &["--bridge-to-chat"]);
    let stdout = run_scenario(&python, "responses-previous", proxy.url("/v1")).await;
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("first-id: "))
        .expect("the scenario prints the first id")
        .to_owned();
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let second: serde_json::Value = seen[1].json();
    let messages = second["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"], "{second}");
    assert!(
        messages[0].to_string().contains("My name is Ada."),
        "{second}"
    );

    let other = TestUser::create("sdk");
    let (status, answer) = curl_as(
        other.uid,
        &[
            "-H",
            "content-type: application/json",
            "-d",
            &serde_json::json!({"model": "gpt-4.1", "previous_response_id": id, "input": "x"})
                .to_string(),
            &proxy.url("/v1/responses"),
        ],
    );
    assert_eq!(status, 404, "{answer}");
    assert!(answer.contains("previous_response_not_found"), "{answer}");
    let (status, answer) = curl_as(other.uid, &[&proxy.url(&format!("/v1/responses/{id}"))]);
    assert_eq!(status, 404, "{answer}");
    assert_eq!(
        upstream.seen().len(),
        2,
        "nothing of the other user's went upstream"
    );
}
