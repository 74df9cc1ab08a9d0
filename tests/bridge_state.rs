//! Black-box tests of bridge mode's state: stored responses (`previous_response_id`,
//! `item_reference`, `GET /v1/responses/{id}`, per-user isolation with real local users,
//! eviction bounds, `store: false`) and remote compaction (a `compaction_trigger` answered
//! with one sealed `compaction` item whose summary comes back in the next request; forged
//! items refused; `POST /v1/responses/compact` bridged and forwarded). The real binary runs
//! with `--bridge-to-chat` in front of a real hyper Chat Completions upstream on loopback.

mod common;

use common::*;
use openai_conformance::responses::{check_response_object, check_responses_stream};
use openai_wire::sse::SseReader;
use serde_json::{json, Value};
use std::time::Duration;

/// A chat stream answering `text`.
fn chat_answer(text: &str) -> String {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
               "model": "chat-model",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let usage = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": "chat-model", "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}});
    format!(
        "data: {}\n\ndata: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        chunk(json!({"role": "assistant", "content": text}), Value::Null),
        chunk(json!({}), json!("stop")),
        usage
    )
}

const SUMMARY: &str = "Goal: make the tests in src/lib.rs pass. Ran `cargo test`: 1 failed.";

/// A chat upstream that answers a summarisation request (our compaction instructions in the
/// system message) with [`SUMMARY`] and anything else with "answer N", N counting requests.
async fn chat_upstream() -> MockUpstream {
    let count = std::sync::atomic::AtomicUsize::new(0);
    MockUpstream::start(move |seen| {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let chat: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        let system = chat["messages"][0]["content"].as_str().unwrap_or_default();
        if system.contains("You are compacting the history") {
            Reply::sse(&chat_answer(SUMMARY))
        } else {
            Reply::sse(&chat_answer(&format!("answer {n}")))
        }
    })
    .await
}

fn bridge(mock: &MockUpstream, extra: &[&str]) -> Proxy {
    let mut args = vec!["--bridge-to-chat"];
    args.extend_from_slice(extra);
    Proxy::start(&mock.url("/v1/chat/completions"), &args)
}

async fn post(proxy: &Proxy, body: &Value) -> (u16, Value) {
    let response = http_client()
        .post(proxy.url("/v1/responses"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A streamed request: the events, checked for conformance, and the final response.
async fn post_stream(proxy: &Proxy, body: &Value) -> (Vec<Value>, Value) {
    let response = http_client()
        .post(proxy.url("/v1/responses"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let mut reader = SseReader::default();
    reader.push(text.as_bytes());
    let mut events = Vec::new();
    while let Some(event) = reader.next_event().unwrap() {
        events.push(serde_json::from_str::<Value>(event.data).unwrap());
    }
    check_responses_stream(&events).unwrap();
    let last = events.last().unwrap()["response"].clone();
    (events, last)
}

async fn get(proxy: &Proxy, id: &str) -> (u16, Value) {
    let response = http_client()
        .get(proxy.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn user(id: &str, text: &str) -> Value {
    json!({"type": "message", "id": id, "role": "user",
           "content": [{"type": "input_text", "text": text}]})
}

/// The (role, content) pairs of the chat messages the upstream's `index`th request carried.
fn chat_messages(mock: &MockUpstream, index: usize) -> Vec<(String, String)> {
    mock.seen()[index].json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(r, c)| (r.to_string(), c.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn previous_response_id_sends_the_whole_conversation_upstream() {
    let mock = chat_upstream().await;
    let proxy = bridge(&mock, &[]);
    let (status, first) = post(
        &proxy,
        &json!({"model": "m", "instructions": "Be brief.", "input": "first question"}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    check_response_object(&first).unwrap();
    assert_eq!(first["store"], true);
    let first_id = first["id"].as_str().unwrap();

    let (_, second) = post_stream(
        &proxy,
        &json!({"model": "m", "stream": true, "previous_response_id": first_id,
                "input": [user("msg_2", "second question")]}),
    )
    .await;
    assert_eq!(second["previous_response_id"], first_id);
    assert_eq!(
        chat_messages(&mock, 1),
        pairs(&[
            ("user", "first question"),
            ("assistant", "answer 1"),
            ("user", "second question"),
        ])
    );

    // A chain: the third turn sees all of it.
    let second_id = second["id"].as_str().unwrap();
    let (status, _) = post(
        &proxy,
        &json!({"model": "m", "previous_response_id": second_id, "input": "third"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        chat_messages(&mock, 2),
        pairs(&[
            ("user", "first question"),
            ("assistant", "answer 1"),
            ("user", "second question"),
            ("assistant", "answer 2"),
            ("user", "third"),
        ])
    );

    // GET returns the stored object as the client received it.
    let (status, fetched) = get(&proxy, second_id).await;
    assert_eq!(status, 200);
    assert_eq!(fetched, second);

    // An unknown id: OpenAI's 404, nothing forwarded.
    let (status, body) = post(
        &proxy,
        &json!({"model": "m", "previous_response_id": "resp_0000", "input": "x"}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"error": {"message": "Previous response with id 'resp_0000' not found.",
            "type": "invalid_request_error", "param": "previous_response_id",
            "code": "previous_response_not_found"}})
    );
    assert_eq!(get(&proxy, "resp_0000").await.0, 404);
    assert_eq!(mock.seen().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn item_references_are_replaced_by_the_stored_items() {
    let mock = chat_upstream().await;
    let proxy = bridge(&mock, &[]);
    let (status, first) = post(
        &proxy,
        &json!({"model": "m", "input": [user("msg_a", "remember 42")]}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let answer_id = first["output"][0]["id"].as_str().unwrap().to_string();

    // What the Vercel AI SDK sends for earlier turns.
    let (status, _) = post(
        &proxy,
        &json!({"model": "m", "input": [
            {"type": "item_reference", "id": "msg_a"},
            {"type": "item_reference", "id": answer_id},
            user("msg_b", "what number?"),
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        chat_messages(&mock, 1),
        pairs(&[
            ("user", "remember 42"),
            ("assistant", "answer 1"),
            ("user", "what number?"),
        ])
    );

    let (status, body) = post(
        &proxy,
        &json!({"model": "m", "input": [user("msg_c", "x"), {"type": "item_reference", "id": "msg_gone"}]}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["param"], "input[1]");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("'msg_gone'"));
    assert_eq!(mock.seen().len(), 2, "nothing forwarded");
}

#[tokio::test(flavor = "multi_thread")]
async fn store_false_responses_are_not_kept() {
    let mock = chat_upstream().await;
    let proxy = bridge(&mock, &[]);
    let (status, first) = post(
        &proxy,
        &json!({"model": "m", "store": false, "input": [user("msg_private", "secret")]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(first["store"], false);
    let id = first["id"].as_str().unwrap();
    assert_eq!(get(&proxy, id).await.0, 404);
    let (status, body) = post(
        &proxy,
        &json!({"model": "m", "previous_response_id": id, "input": "again"}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "previous_response_not_found");
    let (status, _) = post(
        &proxy,
        &json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_private"}]}),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_is_bounded_by_count_bytes_and_age() {
    let mock = chat_upstream().await;
    // Count: the oldest of three goes when only two fit.
    let proxy = bridge(&mock, &["--response-store-max-responses", "2"]);
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        let (status, response) = post(&proxy, &json!({"model": "m", "input": text})).await;
        assert_eq!(status, 200);
        ids.push(response["id"].as_str().unwrap().to_string());
    }
    assert_eq!(get(&proxy, &ids[0]).await.0, 404);
    assert_eq!(get(&proxy, &ids[1]).await.0, 200);
    assert_eq!(get(&proxy, &ids[2]).await.0, 200);
    drop(proxy);

    // Bytes per user: a response larger than the share is not kept at all, a small one is,
    // and the next small one pushes out the previous when both do not fit.
    // (The share counts the memory the parsed JSON holds: the text, and each value's node.)
    let proxy = bridge(&mock, &["--response-store-max-bytes-per-user", "12000"]);
    let (_, big) = post(&proxy, &json!({"model": "m", "input": "x".repeat(14000)})).await;
    assert_eq!(get(&proxy, big["id"].as_str().unwrap()).await.0, 404);
    let (_, small1) = post(&proxy, &json!({"model": "m", "input": "y".repeat(4000)})).await;
    let small1 = small1["id"].as_str().unwrap().to_string();
    assert_eq!(get(&proxy, &small1).await.0, 200);
    let (_, small2) = post(&proxy, &json!({"model": "m", "input": "z".repeat(4000)})).await;
    assert_eq!(get(&proxy, small2["id"].as_str().unwrap()).await.0, 200);
    assert_eq!(get(&proxy, &small1).await.0, 404);
    drop(proxy);

    // Age.
    let proxy = bridge(&mock, &["--response-store-max-age", "1"]);
    let (_, response) = post(&proxy, &json!({"model": "m", "input": "soon gone"})).await;
    let id = response["id"].as_str().unwrap();
    assert_eq!(get(&proxy, id).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(get(&proxy, id).await.0, 404);
}

/// `curl` run as `uid` with a JSON body type; returns (status code, body as JSON).
fn curl_json_as(uid: u32, args: &[&str]) -> (u16, Value) {
    let mut all = vec!["-H", "content-type: application/json"];
    all.extend_from_slice(args);
    let (status, body) = curl_as(uid, &all);
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn another_local_user_can_neither_read_nor_continue_a_response() {
    require_root("creates two local users");
    let alice = TestUser::create("a");
    let bob = TestUser::create("b");
    let mock = chat_upstream().await;
    let proxy = bridge(&mock, &[]);
    let url = proxy.url("/v1/responses");
    let (status, first) = curl_json_as(
        alice.uid,
        &[
            "-d",
            r#"{"model":"m","input":[{"type":"message","id":"msg_alice","role":"user","content":"alice's secret"}]}"#,
            &url,
        ],
    );
    assert_eq!(status, 200, "{first}");
    let id = first["id"].as_str().unwrap().to_string();
    let continuation =
        json!({"model": "m", "previous_response_id": id, "input": "more"}).to_string();
    let reference =
        json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_alice"}]}).to_string();
    let get_url = proxy.url(&format!("/v1/responses/{id}"));

    // Bob, and root (this test process), get the 404 an unknown id gets.
    for uid in [bob.uid, 0] {
        let (status, body) = curl_json_as(uid, &["-d", &continuation, &url]);
        assert_eq!(status, 404, "uid {uid}: {body}");
        assert_eq!(
            body,
            json!({"error": {"message": format!("Previous response with id '{id}' not found."),
                "type": "invalid_request_error", "param": "previous_response_id",
                "code": "previous_response_not_found"}})
        );
        let (status, body) = curl_json_as(uid, &["-d", &reference, &url]);
        assert_eq!(status, 404, "uid {uid}: {body}");
        let (status, body) = curl_json_as(uid, &[&get_url]);
        assert_eq!(status, 404, "uid {uid}: {body}");
    }
    assert_eq!(
        mock.seen().len(),
        1,
        "nothing of Bob's reached the upstream"
    );

    // Alice can.
    let (status, body) = curl_json_as(alice.uid, &[&get_url]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id.as_str());
    let (status, body) = curl_json_as(alice.uid, &["-d", &continuation, &url]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        chat_messages(&mock, 1),
        pairs(&[
            ("user", "alice's secret"),
            ("assistant", "answer 1"),
            ("user", "more"),
        ])
    );
}

/// A Codex-like compaction request: developer instructions, a user prompt, a tool round trip,
/// then the trigger.
fn codex_compaction_request() -> Value {
    json!({"model": "m", "stream": true, "store": false, "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
        user("msg_1", "make the tests in src/lib.rs pass"),
        {"type": "function_call", "id": "fc_1", "name": "exec_command", "call_id": "call_1",
         "arguments": "{\"cmd\":\"cargo test\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "test result: FAILED. 1 failed"},
        {"type": "compaction_trigger"}
    ]})
}

/// Runs a compaction through `proxy` and returns the one compaction item.
async fn compact(proxy: &Proxy) -> Value {
    let (events, response) = post_stream(proxy, &codex_compaction_request()).await;
    assert_eq!(response["status"], "completed");
    let output = response["output"].as_array().unwrap();
    assert_eq!(output.len(), 1, "exactly one output item: {output:?}");
    assert_eq!(output[0]["type"], "compaction");
    let done: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.done")
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["item"], output[0]);
    output[0].clone()
}

fn after_compaction(item: &Value) -> Value {
    json!({"model": "m", "stream": false, "store": false, "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
        user("msg_1", "make the tests in src/lib.rs pass"),
        item,
        user("msg_2", "go on"),
    ]})
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_round_trip_carries_the_summary_to_the_next_request() {
    let mock = chat_upstream().await;
    let proxy = bridge(&mock, &[]);
    let item = compact(&proxy).await;
    let blob = item["encrypted_content"].as_str().unwrap();
    assert!(!blob.contains("cargo test"), "the blob is opaque base64");

    // The summarisation request: our instructions, the conversation as a transcript.
    let messages = chat_messages(&mock, 0);
    assert_eq!(messages.len(), 2);
    assert!(messages[0].1.contains("You are compacting the history"));
    assert!(messages[1].1.contains("make the tests in src/lib.rs pass"));
    assert!(messages[1].1.contains("cargo test"));
    assert!(messages[1].1.contains("1 failed"));
    assert!(!messages[1].1.contains("You are Codex."));
    assert!(mock.seen()[0].json().get("tools").is_none());

    // The next request carries the summary where the item was.
    let (status, body) = post(&proxy, &after_compaction(&item)).await;
    assert_eq!(status, 200, "{body}");
    let messages = chat_messages(&mock, 1);
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert_eq!(messages[0], ("system".into(), "You are Codex.".into()));
    assert_eq!(messages[2].0, "user");
    assert!(messages[2].1.starts_with("Summary of the earlier part"));
    assert!(messages[2].1.ends_with(SUMMARY), "{}", messages[2].1);
    assert_eq!(messages[3], ("user".into(), "go on".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compaction_item_the_proxy_did_not_make_is_a_400() {
    let mock = chat_upstream().await;
    let proxy = bridge(&mock, &[]);
    let item = compact(&proxy).await;
    let blob = item["encrypted_content"].as_str().unwrap();
    // One changed character of the summary, an OpenAI-made blob, and a blob from another
    // proxy (another key: a second instance without a state directory).
    let mut altered = blob.to_string();
    let last = altered.pop().unwrap();
    altered.push(if last == 'A' { 'B' } else { 'A' });
    let other = bridge(&mock, &[]);
    let foreign = compact(&other).await["encrypted_content"].clone();
    let seen_before = mock.seen().len();
    for content in [json!(altered), json!("gAAAAABpQ2-openai-made"), foreign] {
        let forged = json!({"type": "compaction", "id": "cmp_x", "encrypted_content": content});
        let (status, body) = post(&proxy, &after_compaction(&forged)).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_encrypted_content");
        assert_eq!(body["error"]["param"], "input[2].encrypted_content");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not made by this proxy"));
    }
    assert_eq!(mock.seen().len(), seen_before, "nothing forwarded");
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_blobs_survive_a_restart_with_a_state_directory() {
    let mock = chat_upstream().await;
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("state");
    let start = || bridge(&mock, &["--state-directory", dir.to_str().unwrap()]);
    let item = compact(&start()).await;
    let key = std::fs::metadata(dir.join("compaction.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );
    let proxy = start();
    let (status, body) = post(&proxy, &after_compaction(&item)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_compact_is_bridged_or_forwarded() {
    let mock = chat_upstream().await;
    let proxy = bridge(&mock, &[]);
    let mut body = codex_compaction_request();
    let input = body["input"].as_array_mut().unwrap();
    input.pop();
    let response = http_client()
        .post(proxy.url("/v1/responses/compact"))
        .json(&json!({"model": "m", "instructions": "You are Codex.", "input": input}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let object: Value = response.json().await.unwrap();
    assert_eq!(object["object"], "response.compaction");
    let output = object["output"].as_array().unwrap();
    assert_eq!(output.len(), 2, "{output:?}");
    assert_eq!(output[0]["id"], "msg_1");
    assert_eq!(output[1]["type"], "compaction");
    let (status, _) = post(&proxy, &after_compaction(&output[1])).await;
    assert_eq!(status, 200);

    // Strict mode: forwarded to the upstream's /v1/responses/compact with the key.
    let upstream = MockUpstream::start(|_| {
        Reply::json(200, r#"{"object":"response.compaction","output":[]}"#)
    })
    .await;
    let strict = Proxy::start(&upstream.url("/v1/responses"), &[]);
    let response = http_client()
        .post(strict.url("/v1/responses/compact"))
        .json(&json!({"model": "m", "input": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = &upstream.seen()[0];
    assert_eq!(seen.uri, "/v1/responses/compact");
    assert_eq!(
        seen.header("authorization").unwrap(),
        format!("Bearer {TEST_KEY}")
    );
    // GET of a stored response exists in bridge mode only.
    let response = http_client()
        .get(strict.url("/v1/responses/resp_1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}
