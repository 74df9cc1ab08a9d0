//! Black-box tests of bridge mode: a Responses client → the real binary with
//! `--bridge-to-chat` → a real hyper Chat Completions upstream replaying recorded streams.

mod common;

use common::*;
use openai_conformance::responses::{check_response_object, check_responses_stream};
use openai_wire::sse::SseReader;
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn codex_body(name: &str) -> Value {
    let v: Value = serde_json::from_str(&fixture(&format!("codex-0.169.0/{name}"))).unwrap();
    v["body"].clone()
}

fn events_of(body: &str) -> Vec<Value> {
    let mut reader = SseReader::default();
    reader.push(body.as_bytes());
    let mut events = Vec::new();
    while let Some(event) = reader.next_event().unwrap() {
        let value: Value = serde_json::from_str(event.data).unwrap();
        assert_eq!(
            event.event,
            value["type"].as_str().unwrap(),
            "event: line matches type"
        );
        events.push(value);
    }
    events
}

async fn bridge_with(chat_stream: &'static str) -> (MockUpstream, Proxy) {
    let body = fixture(&format!("chat-streams/{chat_stream}"));
    let mock = MockUpstream::start(move |_| Reply::sse(&body)).await;
    let proxy = Proxy::start(&mock.url("/v1/chat/completions"), &["--bridge-to-chat"]);
    (mock, proxy)
}

async fn post(proxy: &Proxy, body: &Value) -> reqwest::Response {
    http_client()
        .post(proxy.url("/v1/responses"))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_request_becomes_a_chat_request_with_the_key() {
    let (mock, proxy) = bridge_with("text.sse").await;
    let response = post(&proxy, &codex_body("codex-request-tool-turn2.json")).await;
    assert_eq!(response.status(), 200);
    let seen = &mock.seen()[0];
    assert_eq!(seen.uri, "/v1/chat/completions");
    assert_eq!(
        seen.header("authorization").unwrap(),
        format!("Bearer {TEST_KEY}")
    );
    let chat = seen.json();
    assert_eq!(chat["stream"], true);
    assert_eq!(chat["stream_options"]["include_usage"], true);
    let messages = chat["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    // Every assistant message with tool_calls is followed by one tool message per call.
    for (i, message) in messages.iter().enumerate() {
        if let Some(calls) = message["tool_calls"].as_array() {
            for (k, call) in calls.iter().enumerate() {
                let reply = &messages[i + 1 + k];
                assert_eq!(reply["role"], "tool");
                assert_eq!(reply["tool_call_id"], call["id"]);
            }
        }
    }
    assert!(chat.get("store").is_none() && chat.get("include").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_recorded_chat_stream_becomes_a_conforming_responses_stream() {
    for name in [
        "text.sse",
        "reasoning-content.sse",
        "reasoning-field-tool.sse",
        "think-inline-split.sse",
        "tool-calls-parallel.sse",
        "custom-tool-call.sse",
        "finish-length.sse",
        "content-filter.sse",
        "usage-details.sse",
        "error-mid-stream.sse",
        "cut-without-done.sse",
    ] {
        let (_mock, proxy) = bridge_with(name).await;
        let response = post(&proxy, &codex_body("codex-request-tool-turn1.json")).await;
        assert_eq!(response.status(), 200, "{name}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let events = events_of(&response.text().await.unwrap());
        check_responses_stream(&events).unwrap_or_else(|e| panic!("{name}: {e}"));
        let terminal = events.last().unwrap()["type"].as_str().unwrap().to_string();
        let expected = match name {
            "finish-length.sse" | "content-filter.sse" => "response.incomplete",
            "error-mid-stream.sse" | "cut-without-done.sse" => "response.failed",
            _ => "response.completed",
        };
        assert_eq!(terminal, expected, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_tool_calls_come_back_as_separate_function_calls() {
    let (_mock, proxy) = bridge_with("tool-calls-parallel.sse").await;
    let response = post(&proxy, &codex_body("codex-request-tool-turn1.json")).await;
    let events = events_of(&response.text().await.unwrap());
    let done: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["type"] == "response.output_item.done" && e["item"]["type"] == "function_call"
        })
        .map(|e| &e["item"])
        .collect();
    assert!(done.len() >= 2, "{done:?}");
    let ids: std::collections::HashSet<&str> = done
        .iter()
        .map(|i| i["call_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), done.len(), "call ids are distinct");
    for item in done {
        let args = item["arguments"].as_str().unwrap();
        serde_json::from_str::<Value>(args).unwrap_or_else(|e| panic!("{args}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_false_returns_one_response_object_from_the_same_conversion() {
    let (mock, proxy) = bridge_with("reasoning-content.sse").await;
    let mut body = codex_body("codex-request.json");
    body["stream"] = json!(false);
    let response = post(&proxy, &body).await;
    assert_eq!(response.status(), 200);
    let object: Value = response.json().await.unwrap();
    check_response_object(&object).unwrap();
    assert_eq!(object["object"], "response");
    assert_eq!(object["status"], "completed");
    assert!(object["output"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["type"] == "reasoning"));
    assert!(object["output"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["type"] == "message"));
    assert_eq!(
        mock.seen()[0].json()["stream"],
        true,
        "upstream is always streamed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_http_errors_are_mirrored_with_an_openai_error() {
    let mock = MockUpstream::start(|_| {
        Reply::json(429, r#"{"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded"}}"#)
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/chat/completions"), &["--bridge-to-chat"]);
    let response = post(&proxy, &codex_body("codex-request.json")).await;
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    let plain = MockUpstream::start(|_| Reply::Full {
        status: 500,
        headers: vec![],
        body: bytes::Bytes::from_static(b"internal oops"),
    })
    .await;
    let proxy = Proxy::start(&plain.url("/v1/chat/completions"), &["--bridge-to-chat"]);
    let response = post(&proxy, &codex_body("codex-request.json")).await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("internal oops"));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_400_naming_the_field_and_never_sent_upstream() {
    let (mock, proxy) = bridge_with("text.sse").await;
    let cases = [
        (
            json!({"model": "m", "input": "hi", "conversation": "conv_1"}),
            "conversation",
        ),
        (json!({"model": "m", "input": 5}), "input"),
        (
            json!({"model": "m", "input": [{"type": "message", "role": "user", "content": 7}]}),
            "input[0]",
        ),
    ];
    for (body, field) in cases {
        let response = post(&proxy, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        let param = error["error"]["param"].as_str().unwrap_or_default();
        assert!(param.starts_with(field), "{param} for {body}");
    }
    let not_json = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    assert!(mock.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn other_routes_stay_forbidden_in_bridge_mode() {
    let (mock, proxy) = bridge_with("text.sse").await;
    for (method, path) in [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("POST", "/v1/responses?x"),
    ] {
        let answer = raw_request(
            proxy.port,
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}").as_bytes(),
        );
        assert_eq!(status_of(&answer), 403, "{method} {path}");
    }
    assert!(mock.seen().is_empty());
}
