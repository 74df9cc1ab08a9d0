//! Black-box tests of WebSocket mode: a WebSocket client (tokio-tungstenite) → the real binary
//! on `GET /v1/responses` → the tests' own HTTP upstreams (a Responses mock in strict mode, a
//! Chat Completions mock in bridge mode).

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(proxy: &Proxy) -> Client {
    let url = format!("ws://127.0.0.1:{}/v1/responses", proxy.port);
    let (socket, response) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the WebSocket handshake");
    assert_eq!(response.status(), 101);
    // tungstenite offers no extension, and none is answered.
    assert_eq!(
        response.headers().get("sec-websocket-extensions"),
        None,
        "{response:?}"
    );
    socket
}

async fn send(socket: &mut Client, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .unwrap();
}

/// The next text message as JSON (pings are skipped).
async fn next_event(socket: &mut Client) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("an event in time")
            .expect("the socket is open")
            .expect("a message");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Events up to and including the turn's last one (completed, failed, incomplete, error).
async fn turn_events(socket: &mut Client) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = next_event(socket).await;
        let last = matches!(
            event["type"].as_str(),
            Some("response.completed" | "response.failed" | "response.incomplete" | "error")
        );
        events.push(event);
        if last {
            return events;
        }
    }
}

fn user(text: &str) -> Value {
    json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
}

/// A Responses stream whose one output item is an assistant message saying `text`.
fn responses_stream(id: &str, text: &str) -> String {
    let item = json!({"type": "message", "id": format!("msg_{id}"), "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}]});
    let events = [
        json!({"type": "response.created", "response": {"id": id, "object": "response", "status": "in_progress", "output": []}}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": item}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        json!({"type": "response.completed", "response": {"id": id, "object": "response", "status": "completed", "output": [item],
            "usage": {"input_tokens": 11, "output_tokens": 5, "total_tokens": 16}}}),
    ];
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

/// A Responses mock answering turn n with `resp_up_n` saying `answer n`.
async fn responses_mock() -> MockUpstream {
    let turn = std::sync::atomic::AtomicUsize::new(0);
    MockUpstream::start(move |_| {
        let n = turn.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Reply::sse(&responses_stream(
            &format!("resp_up_{n}"),
            &format!("answer {n}"),
        ))
    })
    .await
}

fn create(extra: Value) -> Value {
    let mut message =
        json!({"type": "response.create", "model": "gpt-test", "stream": true, "store": false});
    for (k, v) in extra.as_object().unwrap() {
        message[k] = v.clone();
    }
    message
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prewarm_and_two_turns_send_the_upstream_the_whole_conversation() {
    let mock = responses_mock().await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &["--state-directory", state_dir],
    );
    let mut socket = connect(&proxy).await;
    let developer = json!({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]});

    // The prewarm is answered by the proxy: an id, no output, nothing upstream.
    send(
        &mut socket,
        create(json!({"generate": false, "input": [developer]})),
    )
    .await;
    let created = next_event(&mut socket).await;
    assert_eq!(created["type"], "response.created", "{created}");
    let completed = next_event(&mut socket).await;
    assert_eq!(completed["type"], "response.completed", "{completed}");
    assert_eq!(completed["response"]["output"], json!([]));
    let prewarm_id = completed["response"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["response"]["id"], prewarm_id.as_str());
    assert!(mock.seen().is_empty(), "a prewarm goes nowhere");

    send(
        &mut socket,
        create(json!({"previous_response_id": prewarm_id, "input": [user("hi")]})),
    )
    .await;
    let events = turn_events(&mut socket).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "response.created",
            "response.output_item.added",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert_eq!(events[3]["response"]["id"], "resp_up_1");

    let output = json!({"type": "function_call_output", "call_id": "c1", "output": "ok"});
    send(
        &mut socket,
        create(json!({"previous_response_id": "resp_up_1", "input": [output]})),
    )
    .await;
    let events = turn_events(&mut socket).await;
    assert_eq!(events.last().unwrap()["response"]["id"], "resp_up_2");

    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    let first = seen[0].json();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(first["input"], json!([developer, user("hi")]));
    for field in ["type", "generate", "previous_response_id"] {
        assert!(first.get(field).is_none(), "{field} was sent: {first}");
    }
    assert_eq!(first["model"], "gpt-test");
    assert_eq!(first["stream"], true);
    let answer = events_item("resp_up_1", "answer 1");
    let second = seen[1].json();
    assert_eq!(
        second["input"],
        json!([developer, user("hi"), answer, output])
    );
    assert!(second.get("previous_response_id").is_none());
    assert_eq!(
        seen[1].header("authorization").as_deref(),
        Some(format!("Bearer {TEST_KEY}").as_str())
    );
    assert!(seen[1].header("sec-websocket-key").is_none());

    // One request line and one usage record per turn (none for the prewarm).
    drop(socket);
    let log = proxy.stderr_once_it_has("WS /v1/responses 200", Duration::from_secs(10));
    let usage_path = state.path().join("usage.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let records = loop {
        let records = std::fs::read_to_string(&usage_path).unwrap_or_default();
        if records.lines().count() >= 2 || std::time::Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(records.lines().count(), 2, "{records}");
    assert!(records.contains("\"input_tokens\":11"), "{records}");
    let _ = log;
    // The request lines are written by the after-response thread, the usage records before the
    // last bytes go out: the second line may come after the second record.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = proxy.stderr();
        if log.matches("WS /v1/responses 200").count() >= 2 || std::time::Instant::now() > deadline
        {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(log.matches("WS /v1/responses 200").count(), 2, "{log}");
    assert!(log.contains("input_tokens=11"), "{log}");
    assert!(!log.contains(TEST_KEY));
}

fn events_item(id: &str, text: &str) -> Value {
    json!({"type": "message", "id": format!("msg_{id}"), "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_previous_response_gets_an_error_and_the_socket_stays_usable() {
    let mock = responses_mock().await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let mut socket = connect(&proxy).await;
    send(
        &mut socket,
        create(json!({"previous_response_id": "resp_nowhere", "input": [user("hi")]})),
    )
    .await;
    let error = next_event(&mut socket).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(error["error"]["code"], "previous_response_not_found");
    assert_eq!(error["error"]["param"], "previous_response_id");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("resp_nowhere"));
    assert!(mock.seen().is_empty());

    // A binary message and a message of another type get errors too.
    socket.send(Message::binary(b"{}".to_vec())).await.unwrap();
    let error = next_event(&mut socket).await;
    assert_eq!(error["error"]["code"], "binary_message", "{error}");
    send(&mut socket, json!({"type": "session.update"})).await;
    let error = next_event(&mut socket).await;
    assert_eq!(error["error"]["code"], "unknown_event_type", "{error}");

    send(&mut socket, create(json!({"input": "hello"}))).await;
    let events = turn_events(&mut socket).await;
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    assert_eq!(mock.seen()[0].json()["input"][0]["role"], "user");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_websocket_an_upgrade_gets_426_and_other_gets_stay_403() {
    let mock = responses_mock().await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &["--no-websocket"]);
    let url = format!("ws://127.0.0.1:{}/v1/responses", proxy.port);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 426);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("websocket_disabled"), "{body}");
        }
        other => panic!("expected 426, got {other:?}"),
    }
    // Without the flag, a query string or another path is refused as before.
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    for path in [
        "/v1/responses?x=1",
        "/v1/responsesx",
        "/v1/chat/completions",
    ] {
        let url = format!("ws://127.0.0.1:{}{path}", proxy.port);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{path}")
            }
            other => panic!("{path}: expected 403, got {other:?}"),
        }
    }
    let plain = raw_request(
        proxy.port,
        b"GET /v1/responses HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&plain), 403, "{plain}");
    assert!(mock.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn each_turn_counts_against_the_request_limit_and_sockets_are_capped_per_user() {
    let mock = responses_mock().await;
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &[
            "--requests-per-minute",
            "1",
            "--max-websockets-per-user",
            "1",
        ],
    );
    let mut socket = connect(&proxy).await;
    // A prewarm is not a request upstream: it does not count.
    send(&mut socket, create(json!({"generate": false, "input": []}))).await;
    assert_eq!(turn_events(&mut socket).await.len(), 2);
    send(&mut socket, create(json!({"input": "one"}))).await;
    assert_eq!(
        turn_events(&mut socket).await.last().unwrap()["type"],
        "response.completed"
    );
    send(&mut socket, create(json!({"input": "two"}))).await;
    let limited = next_event(&mut socket).await;
    assert_eq!(limited["type"], "error", "{limited}");
    assert_eq!(limited["status"], 429, "{limited}");
    assert_eq!(mock.seen().len(), 1);

    // A second socket of the same user is over the cap; the first still works.
    let url = format!("ws://127.0.0.1:{}/v1/responses", proxy.port);
    match tokio_tungstenite::connect_async(url.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!("expected 429, got {other:?}"),
    }
    send(&mut socket, create(json!({"previous_response_id": "x"}))).await;
    assert_eq!(
        next_event(&mut socket).await["error"]["code"],
        "previous_response_not_found"
    );
    // Once it is closed, a new one may open.
    socket.close(None).await.unwrap();
    drop(socket);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio_tungstenite::connect_async(url.clone()).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the slot was not given back: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bridge_mode_serves_the_socket_from_a_chat_upstream() {
    let body = std::fs::read_to_string(format!(
        "{}/tests/fixtures/chat-streams/text.sse",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mock = MockUpstream::start(move |_| Reply::sse(&body)).await;
    let proxy = Proxy::start(&mock.url("/v1/chat/completions"), &["--bridge-to-chat"]);
    let mut socket = connect(&proxy).await;
    send(
        &mut socket,
        create(json!({"generate": false, "instructions": "be brief", "input": []})),
    )
    .await;
    let prewarm = turn_events(&mut socket).await;
    let prewarm_id = prewarm[1]["response"]["id"].as_str().unwrap().to_owned();
    send(
        &mut socket,
        create(json!({"previous_response_id": prewarm_id, "instructions": "be brief", "input": [user("hi")]})),
    )
    .await;
    let events = turn_events(&mut socket).await;
    let completed = events.last().unwrap();
    assert_eq!(completed["type"], "response.completed", "{events:?}");
    let first_id = completed["response"]["id"].as_str().unwrap().to_owned();
    assert!(events
        .iter()
        .any(|e| e["type"] == "response.output_text.delta"));
    send(
        &mut socket,
        create(json!({"previous_response_id": first_id, "instructions": "be brief", "input": [user("again")]})),
    )
    .await;
    let events = turn_events(&mut socket).await;
    assert_eq!(events.last().unwrap()["type"], "response.completed");

    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    let second = seen[1].json();
    let messages = second["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"], "{second}");
    assert!(messages[2]["content"].to_string().contains("Hello, wörld!"));
    assert_eq!(second["stream"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_cut_mid_turn_fails_the_response_and_the_socket_goes_on() {
    let cut = std::sync::atomic::AtomicBool::new(true);
    let mock = MockUpstream::start(move |_| {
        if cut.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let whole = responses_stream("resp_cut", "never finished");
            let half = whole
                .split("event: response.completed")
                .next()
                .unwrap()
                .to_owned();
            Reply::sse(&half)
        } else {
            Reply::sse(&responses_stream("resp_ok", "fine"))
        }
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let mut socket = connect(&proxy).await;
    send(&mut socket, create(json!({"input": "one"}))).await;
    let events = turn_events(&mut socket).await;
    let failed = events.last().unwrap();
    assert_eq!(failed["type"], "response.failed", "{events:?}");
    assert_eq!(failed["response"]["id"], "resp_cut");
    // The failed response is not remembered; the socket serves the next turn.
    send(
        &mut socket,
        create(json!({"previous_response_id": "resp_cut", "input": "two"})),
    )
    .await;
    assert_eq!(
        next_event(&mut socket).await["error"]["code"],
        "previous_response_not_found"
    );
    send(&mut socket, create(json!({"input": "two"}))).await;
    assert_eq!(
        turn_events(&mut socket).await.last().unwrap()["response"]["id"],
        "resp_ok"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_error_answer_becomes_an_error_event() {
    let mock = MockUpstream::start(|_| {
        Reply::json(
            400,
            r#"{"error":{"message":"bad model","type":"invalid_request_error","code":"model_not_found","param":"model"}}"#,
        )
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let mut socket = connect(&proxy).await;
    send(&mut socket, create(json!({"input": "one"}))).await;
    let error = next_event(&mut socket).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["status"], 400);
    assert_eq!(error["error"]["code"], "model_not_found", "{error}");
    send(&mut socket, create(json!({"input": "two"}))).await;
    assert_eq!(next_event(&mut socket).await["status"], 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_vanishes_mid_turn_cancels_the_upstream_at_once() {
    let (mock, chunks) = MockUpstream::streaming().await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let mut socket = connect(&proxy).await;
    send(&mut socket, create(json!({"input": "one"}))).await;
    let created = json!({"type": "response.created", "response": {"id": "resp_long"}});
    chunks
        .send(format!("data: {created}\n\n").into())
        .await
        .unwrap();
    assert_eq!(next_event(&mut socket).await["type"], "response.created");
    drop(socket);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while mock.stream_closed.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream stream was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(chunks);
    let log = proxy.stderr_once_it_has("WS /v1/responses", Duration::from_secs(10));
    assert!(log.contains("outcome=\"client_gone\""), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_the_body_limit_closes_with_1009_and_idle_sockets_with_1008() {
    let mock = responses_mock().await;
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &["--max-request-body", "1000", "--idle-timeout", "2"],
    );
    let mut socket = connect(&proxy).await;
    send(&mut socket, create(json!({"input": "x".repeat(2000)}))).await;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.unwrap().code, CloseCode::Size);
    assert!(mock.seen().is_empty());

    // A client that answers nothing (not even the server's pings) is closed after the idle
    // timeout with 1008.
    let started = std::time::Instant::now();
    let frames = silent_client(proxy.port, Duration::from_secs(10));
    let close = frames
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2..4] == [0x03, 0xf0]);
    assert!(close.is_some(), "no 1008 close frame in {frames:02x?}");
    assert!(
        frames.starts_with(&[0x89, 0x00]),
        "pinged first: {frames:02x?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

/// Completes a handshake by hand, then reads what the server sends (never answering) until
/// it closes the connection or `limit` passes; returns the frames' bytes.
fn silent_client(port: u16, limit: Duration) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    stream
        .write_all(
            b"GET /v1/responses HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    all[head_end..].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_upgrade_leaves_the_framing_check_on() {
    // Only a real switch of protocols stops the framing guard: after a handshake the proxy
    // refused, the connection's next request is still judged.
    let mock = responses_mock().await;
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &["--max-websockets-per-user", "1"],
    );
    let smuggled = "POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let handshake = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n";
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let refused = [
        (
            "no key",
            format!("GET /v1/responses HTTP/1.1\r\nHost: x\r\n{handshake}\r\n"),
            400,
        ),
        (
            "a query string",
            format!("GET /v1/responses?a=b HTTP/1.1\r\nHost: x\r\n{handshake}{key}\r\n"),
            403,
        ),
        (
            "version 8",
            format!("GET /v1/responses HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n{key}\r\n"),
            426,
        ),
    ];
    for (name, opener, status) in &refused {
        let answer = exchange_in_two(proxy.port, opener.as_bytes(), smuggled.as_bytes());
        assert_eq!(status_of(&answer), *status, "{name}: {answer}");
        let second = answer
            .match_indices("HTTP/1.1 ")
            .nth(1)
            .map(|(at, _)| &answer[at..])
            .unwrap_or_else(|| panic!("{name}: one answer only: {answer}"));
        assert_eq!(status_of(second), 400, "{name}: {answer}");
        assert!(second.contains("ambiguous_framing"), "{name}: {answer}");
    }
    assert!(mock.seen().is_empty());
}

/// Writes `opener` on a new connection, waits for its whole answer, then writes `then` and
/// reads until the proxy closes the connection (or 5 s pass): everything answered.
fn exchange_in_two(port: u16, opener: &[u8], then: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(opener).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The first answer is complete once its head and Content-Length bytes are in.
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed after the opener");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                break;
            }
        }
    }
    let _ = stream.write_all(then);
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_vanishes_mid_turn_is_charged_when_usage_is_recorded() {
    // With a usage store, the upstream stream is read on for its usage (so that leaving
    // early does not dodge --tokens-per-day), then closed, as for a POST.
    let (mock, chunks) = MockUpstream::streaming().await;
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &["--state-directory", state.path().to_str().unwrap()],
    );
    let mut socket = connect(&proxy).await;
    send(&mut socket, create(json!({"input": "one"}))).await;
    let whole = responses_stream("resp_drained", "the rest");
    let (first, rest) = whole.split_at(whole.find("event: response.output_item.added").unwrap());
    chunks.send(first.to_owned().into()).await.unwrap();
    assert_eq!(next_event(&mut socket).await["type"], "response.created");
    drop(socket);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        mock.stream_closed.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the upstream was dropped before its usage came"
    );
    chunks.send(rest.to_owned().into()).await.unwrap();
    drop(chunks);
    let log = proxy.stderr_once_it_has("WS /v1/responses", Duration::from_secs(10));
    assert!(log.contains("outcome=\"client_gone\""), "{log}");
    assert!(log.contains("input_tokens=11"), "{log}");
    let records = std::fs::read_to_string(state.path().join("usage.jsonl")).unwrap();
    assert!(records.contains("\"input_tokens\":11"), "{records}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_websocket_holds_one_of_its_users_connections() {
    let mock = responses_mock().await;
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &["--max-connections-per-user", "2"],
    );
    let first = connect(&proxy).await;
    let mut second = connect(&proxy).await;
    // Both sockets hold a connection after their upgrade: a third connection is refused.
    let refused = raw_request(
        proxy.port,
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    assert_eq!(status_of(&refused), 429, "{refused}");
    assert!(refused.contains("too_many_connections"), "{refused}");
    send(&mut second, create(json!({"input": "still served"}))).await;
    assert_eq!(
        turn_events(&mut second).await.last().unwrap()["type"],
        "response.completed"
    );
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = raw_request(
            proxy.port,
            b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        if status_of(&answer) == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the socket's connection was not given back: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draining_worker_finishes_the_turn_then_closes_its_sockets_with_1001() {
    let (mock, chunks) = MockUpstream::streaming().await;
    let mut proxy = Proxy::start(&mock.url("/v1/responses"), &["--shutdown-grace", "5"]);
    let mut socket = connect(&proxy).await;
    send(&mut socket, create(json!({"input": "one"}))).await;
    let whole = responses_stream("resp_drain", "done");
    let (first, rest) = whole.split_at(whole.find("event: response.output_item.added").unwrap());
    chunks.send(first.to_owned().into()).await.unwrap();
    assert_eq!(next_event(&mut socket).await["type"], "response.created");
    proxy.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The turn in progress is finished before the socket closes.
    chunks.send(rest.to_owned().into()).await.unwrap();
    drop(chunks);
    let events = turn_events(&mut socket).await;
    assert_eq!(events.last().unwrap()["response"]["id"], "resp_drain");
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.unwrap().code, CloseCode::Away);
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_past_the_body_limit_is_refused_and_the_socket_goes_on() {
    let mock = responses_mock().await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &["--max-request-body", "4000"]);
    let mut socket = connect(&proxy).await;
    let mut previous: Option<String> = None;
    let mut refused_at = None;
    for turn in 1..=4 {
        let mut message = create(json!({"input": [user(&"x".repeat(1200))]}));
        if let Some(id) = &previous {
            message["previous_response_id"] = json!(id);
        }
        send(&mut socket, message).await;
        let last = turn_events(&mut socket).await.pop().unwrap();
        if last["type"] == "error" {
            assert_eq!(last["error"]["code"], "request_too_large", "{last}");
            refused_at = Some(turn);
            break;
        }
        previous = last["response"]["id"].as_str().map(str::to_owned);
    }
    assert_eq!(
        refused_at,
        Some(3),
        "two turns fit in 4,000 bytes, the third does not"
    );
    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.body.len() <= 4000));
    // The socket still serves a request that fits.
    send(&mut socket, create(json!({"input": "short"}))).await;
    assert_eq!(
        turn_events(&mut socket).await.last().unwrap()["type"],
        "response.completed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_allow_list_applies_to_the_handshake() {
    let mock = responses_mock().await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &["--allow-users", "4242"]);
    let url = format!("ws://127.0.0.1:{}/v1/responses", proxy.port);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("user_not_allowed"), "{body}");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(mock.seen().is_empty());
}

/// A turn over the socket runs as the user who opened it: in bridge mode a response made with
/// `store` on is that user's, readable over HTTP with `GET /v1/responses/{id}` by them (the
/// tests run as root), as it would be had it been made over HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_response_made_over_the_socket_belongs_to_the_user_who_opened_it() {
    let body = std::fs::read_to_string(format!(
        "{}/tests/fixtures/chat-streams/text.sse",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mock = MockUpstream::start(move |_| Reply::sse(&body)).await;
    let proxy = Proxy::start(&mock.url("/v1/chat/completions"), &["--bridge-to-chat"]);
    let mut socket = connect(&proxy).await;
    send(
        &mut socket,
        create(json!({"store": true, "input": [user("keep this")]})),
    )
    .await;
    let events = turn_events(&mut socket).await;
    let completed = events.last().unwrap();
    assert_eq!(completed["type"], "response.completed", "{events:?}");
    let id = completed["response"]["id"].as_str().unwrap().to_owned();
    let stored = http_client()
        .get(proxy.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200, "{}", stored.text().await.unwrap());
    let stored: Value = stored.json().await.unwrap();
    assert_eq!(stored["id"], id);
}
