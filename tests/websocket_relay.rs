//! Black-box tests of strict mode's WebSocket relay (`--websocket-upstream`): a WebSocket
//! client → the real binary → the tests' own WebSocket Responses upstream
//! (`tests/common/ws_upstream.rs`: checks the handshake's `Authorization` and keeps its own
//! `previous_response_id` state per socket), or an HTTP-only mock for the fallback and the 502.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The WebSocket upstream of these tests: each response is created / one delta / completed
/// with usage (7 in, 3 out).
async fn ws_upstream() -> WsUpstream {
    WsUpstream::start(|_request, id| {
        vec![
            json!({"type": "response.created", "response": {"id": id, "status": "in_progress", "output": []}}),
            json!({"type": "response.output_text.delta", "delta": format!("answer from {id}")}),
            json!({"type": "response.completed", "response": {"id": id, "status": "completed", "model": "gpt-ws",
                "output": [], "usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}}}),
        ]
    })
    .await
}

/// Opens a socket to the proxy, sending a client `Authorization` of its own (which must not
/// go upstream) and Codex's headers (which must).
async fn connect(proxy: &Proxy) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://127.0.0.1:{}/v1/responses", proxy.port)
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", "Bearer client-own-token".parse().unwrap());
    headers.insert(
        "openai-beta",
        "responses_websockets=2026-02-06".parse().unwrap(),
    );
    headers.insert("originator", "codex_cli_rs".parse().unwrap());
    headers.insert("session-id", "sess-1".parse().unwrap());
    headers.insert("openai-organization", "org-client".parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The next text message as JSON.
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

async fn turn(socket: &mut Client, message: &str) -> Vec<Value> {
    socket
        .send(Message::text(message.to_owned()))
        .await
        .unwrap();
    let mut events = Vec::new();
    loop {
        let event = next_event(socket).await;
        let last = matches!(
            event["type"].as_str(),
            Some("response.completed" | "response.failed" | "error")
        );
        events.push(event);
        if last {
            return events;
        }
    }
}

/// The usage records once there are `count` of them (they are written a moment after each
/// response ends), or what there is after 10 s.
async fn usage_records_once(state: &std::path::Path, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let records = usage_records(state);
        if records.len() >= count || std::time::Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn usage_records(state: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(state.join("usage.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_mode_relays_messages_unchanged_with_the_key_only_in_the_handshake() {
    let upstream = ws_upstream().await;
    let state = tempfile::tempdir().unwrap();
    // The default (`auto`) relays to an upstream that speaks WebSocket.
    let proxy = Proxy::start(
        &upstream.url(),
        &[
            "--state-directory",
            state.path().to_str().unwrap(),
            "--log-level",
            "trace",
        ],
    );
    let mut socket = connect(&proxy).await.expect("the relayed handshake");

    let first = r#"{"type":"response.create","model":"gpt-ws","store":false,"input":"hi"}"#;
    let events = turn(&mut socket, first).await;
    assert_eq!(events.len(), 3, "{events:?}");
    let id = events[2]["response"]["id"].as_str().unwrap().to_owned();
    assert_eq!(events[1]["delta"], format!("answer from {id}"));
    assert!(id.starts_with("resp_ws_"), "{id}");

    // The upstream's own state: the proxy passes previous_response_id on, unexpanded.
    let second = format!(
        r#"{{"type":"response.create","model":"gpt-ws","store":false,"previous_response_id":"{id}","input":"again"}}"#
    );
    let events = turn(&mut socket, &second).await;
    assert_eq!(
        events.last().unwrap()["type"],
        "response.completed",
        "{events:?}"
    );
    // One the upstream does not know is its error, passed back as it is.
    let unknown = r#"{"type":"response.create","previous_response_id":"resp_nope","input":"x"}"#;
    let events = turn(&mut socket, unknown).await;
    assert_eq!(events[0]["error"]["code"], "previous_response_not_found");

    {
        let seen = upstream.seen.lock().unwrap();
        assert_eq!(seen.messages, [first, second.as_str(), unknown]);
        assert_eq!(seen.authorizations, [format!("Bearer {TEST_KEY}")]);
        let headers = seen.handshake_headers.join("\n");
        assert!(headers.contains("originator: codex_cli_rs"), "{headers}");
        assert!(headers.contains("session-id: sess-1"), "{headers}");
        assert!(
            headers.contains("openai-beta: responses_websockets=2026-02-06"),
            "{headers}"
        );
        assert!(!headers.contains("client-own-token"), "{headers}");
        assert!(!headers.contains("org-client"), "{headers}");
    }
    socket.close(None).await.unwrap();

    // Usage from the upstream's response.completed, one record per response (the third
    // ended with the upstream's error and carries none).
    let records = usage_records_once(state.path(), 3).await;
    assert_eq!(records.len(), 3, "{records:?}");
    let with_tokens = records
        .iter()
        .filter(|r| r.to_string().contains("\"input_tokens\":7"))
        .count();
    assert_eq!(with_tokens, 2, "{records:?}");

    let log = proxy.stderr_once_it_has("WS /v1/responses", Duration::from_secs(5));
    assert!(log.contains("WS /v1/responses"), "{log}");
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "{log}");
    assert!(!log.contains(TEST_KEY), "the key is in the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn relayed_requests_count_against_the_limit_and_a_refused_one_is_not_forwarded() {
    let upstream = ws_upstream().await;
    let proxy = Proxy::start(
        &upstream.url(),
        &[
            "--websocket-upstream",
            "relay",
            "--requests-per-minute",
            "1",
        ],
    );
    let mut socket = connect(&proxy).await.expect("the relayed handshake");
    let one = r#"{"type":"response.create","input":"one"}"#;
    let events = turn(&mut socket, one).await;
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    let events = turn(&mut socket, r#"{"type":"response.create","input":"two"}"#).await;
    assert_eq!(events[0]["type"], "error", "{events:?}");
    assert_eq!(events[0]["status"], 429, "{events:?}");
    // Other messages still pass; the refused one never reached the upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.seen.lock().unwrap().messages, [one]);
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_falls_back_to_serving_locally_and_remembers_an_http_only_upstream() {
    let mock = MockUpstream::start(|_| {
        Reply::sse(concat!(
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_http\",\"output\":[]}}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_http\",\"output\":[]}}\n\n",
        ))
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    for round in 1..=2 {
        let mut socket = connect(&proxy).await.expect("served locally");
        let events = turn(&mut socket, r#"{"type":"response.create","input":"hi"}"#).await;
        assert_eq!(events.last().unwrap()["type"], "response.completed");
        assert_eq!(mock.seen().len(), round, "served over HTTP POST");
        assert_eq!(mock.seen()[round - 1].method, "POST");
        // Only the first socket asked the upstream for a WebSocket.
        assert_eq!(
            mock.upgrades_refused
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_mode_answers_502_when_the_upstream_refuses_the_upgrade() {
    let mock = MockUpstream::start(|_| Reply::sse("")).await;
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &["--websocket-upstream", "relay"],
    );
    match connect(&proxy).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 502);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("upstream_websocket_refused"), "{body}");
            assert!(body.contains("404"), "{body}");
        }
        other => panic!("expected 502, got {other:?}"),
    }
    assert!(mock.seen().is_empty());
}

#[test]
fn relay_mode_where_it_cannot_apply_is_refused_at_start() {
    use std::io::Write;
    let mut child = std::process::Command::new(binary())
        .args([
            "--upstream-url",
            "http://127.0.0.1:9/v1/chat/completions",
            "--bridge-to-chat",
            "--websocket-upstream",
            "relay",
            "--server-info",
            "/nonexistent/server-info.json",
        ])
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{TEST_KEY}\n").as_bytes());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("--websocket-upstream relay"), "{stderr}");
    assert!(stderr.contains("bridge mode"), "{stderr}");
}

/// The relay's upstream socket goes through the egress proxy like every upstream connection:
/// a CONNECT tunnel (RFC 6455 4.1, also for `ws`) carrying the proxy's credentials, which
/// show nowhere in the log; `NO_PROXY` bypasses it.
#[tokio::test(flavor = "multi_thread")]
async fn the_relay_reaches_the_upstream_through_the_egress_proxy_unless_no_proxy_says_otherwise() {
    let upstream = ws_upstream().await;
    let egress = EgressProxy::start().await;
    let start = |no_proxy: &str| {
        Proxy::start_with(ProxyOptions {
            args: vec![
                "--upstream-url".into(),
                upstream.url(),
                "--websocket-upstream".into(),
                "relay".into(),
                "--log-level".into(),
                "trace".into(),
            ],
            env: vec![
                ("HTTP_PROXY".into(), egress.url_with_credentials()),
                ("NO_PROXY".into(), no_proxy.into()),
            ],
            ..Default::default()
        })
    };

    let proxy = start("");
    let mut socket = connect(&proxy).await.expect("the relayed handshake");
    let events = turn(&mut socket, r#"{"type":"response.create","input":"hi"}"#).await;
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    let seen = egress.seen();
    let port = upstream
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        seen,
        [(
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1"),
            // Basic puser:proxy-SECRET-pw
            Some("Basic cHVzZXI6cHJveHktU0VDUkVULXB3".to_owned())
        )]
    );
    assert_eq!(
        upstream.seen.lock().unwrap().authorizations,
        [format!("Bearer {TEST_KEY}")]
    );
    socket.close(None).await.unwrap();
    let tunnel_line = format!(
        "through a tunnel of the proxy at 127.0.0.1:{}",
        egress.addr.port()
    );
    let log = proxy.stderr_once_it_has(&tunnel_line, Duration::from_secs(5));
    assert!(log.contains(&tunnel_line), "{log}");
    assert!(!log.contains("proxy-SECRET-pw"), "{log}");
    assert!(!log.contains(TEST_KEY), "{log}");

    let bypassing = start("127.0.0.1");
    let mut socket = connect(&bypassing).await.expect("the direct handshake");
    let events = turn(&mut socket, r#"{"type":"response.create","input":"hi"}"#).await;
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    assert_eq!(egress.seen().len(), 1, "NO_PROXY was not honoured");
}

/// A proxy that refuses the tunnel is the relay's failure, said without its credentials.
#[tokio::test(flavor = "multi_thread")]
async fn an_egress_proxy_that_refuses_the_tunnel_gets_a_502_without_its_credentials() {
    let refusing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refusing_addr = refusing.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut client, _)) = refusing.accept().await {
            let mut head = [0u8; 1024];
            let _ = client.read(&mut head).await;
            let _ = client
                .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let proxy = Proxy::start_with(ProxyOptions {
        args: vec![
            "--upstream-url".into(),
            "http://127.0.0.1:9/v1/responses".into(),
            "--websocket-upstream".into(),
            "relay".into(),
        ],
        env: vec![(
            "CODEX_PROXY_UPSTREAM_PROXY".into(),
            format!("http://puser:proxy-SECRET-pw@{refusing_addr}"),
        )],
        ..Default::default()
    });
    let error = connect(&proxy).await.expect_err("a refused handshake");
    let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
        panic!("not an HTTP refusal: {error}");
    };
    assert_eq!(response.status().as_u16(), 502);
    let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string();
    assert!(body.contains("opened no tunnel"), "{body}");
    assert!(!body.contains("proxy-SECRET-pw"), "{body}");
    let log = proxy.stderr_once_it_has("websocket relay refused", Duration::from_secs(5));
    assert!(!log.contains("proxy-SECRET-pw"), "{log}");
}

/// An upstream `error` event that quotes the key (as OpenAI's 401 does for a key it no longer
/// accepts) reaches the client with the key cleaned out, like an HTTP error answer.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_error_event_quoting_the_key_reaches_the_client_without_it() {
    let upstream = WsUpstream::start(|_request, _id| {
        let masked = format!("{}****{}", &TEST_KEY[..3], &TEST_KEY[TEST_KEY.len() - 4..]);
        vec![
            json!({"type": "error", "status": 401, "error": {"type": "invalid_request_error",
            "code": "invalid_api_key",
            "message": format!("Incorrect API key provided: {TEST_KEY} ({masked})")}}),
        ]
    })
    .await;
    let proxy = Proxy::start(&upstream.url(), &["--websocket-upstream", "relay"]);
    let mut socket = connect(&proxy).await.expect("the relayed handshake");
    let events = turn(&mut socket, r#"{"type":"response.create","input":"hi"}"#).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let text = events[0].to_string();
    assert_eq!(events[0]["error"]["code"], "invalid_api_key", "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    assert!(!text.contains(TEST_KEY), "{text}");
    assert!(!text.contains(&TEST_KEY[TEST_KEY.len() - 4..]), "{text}");
}

/// An upgrade refused with a status that may be this moment's (401 here) is not taken for an
/// HTTP-only upstream: the socket is served over HTTP, and the next one tries the upstream's
/// WebSocket again.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_refused_for_a_passing_reason_is_not_remembered() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (upgrades, posts) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (upgrades2, posts2) = (upgrades.clone(), posts.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (upgrades, posts) = (upgrades2.clone(), posts2.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if head.starts_with("get ") {
                    upgrades.fetch_add(1, Ordering::SeqCst);
                    let _ = stream
                        .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                let _ = stream.read_exact(&mut body).await;
                posts.fetch_add(1, Ordering::SeqCst);
                let sse = concat!(
                    "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_h\",\"output\":[]}}\n\n",
                    "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_h\",\"output\":[]}}\n\n",
                );
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{sse}",
                    sse.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    let proxy = Proxy::start(&format!("http://127.0.0.1:{port}/v1/responses"), &[]);
    for round in 1..=2 {
        let mut socket = connect(&proxy).await.expect("served locally");
        let events = turn(&mut socket, r#"{"type":"response.create","input":"hi"}"#).await;
        assert_eq!(events.last().unwrap()["type"], "response.completed");
        assert_eq!(posts.load(Ordering::SeqCst), round, "served over HTTP POST");
        assert_eq!(
            upgrades.load(Ordering::SeqCst),
            round,
            "each socket asks the upstream for its WebSocket again"
        );
    }
}

/// A client cannot end its own response's accounting early: an upstream `error` about another
/// message (one the upstream does not know), arriving while the response runs, ends no
/// response; the response's `response.completed` still carries its usage to the record.
#[tokio::test(flavor = "multi_thread")]
async fn an_error_about_another_message_does_not_end_the_response_in_flight() {
    let upstream = ws_upstream().await;
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &upstream.url(),
        &[
            "--websocket-upstream",
            "relay",
            "--state-directory",
            state.path().to_str().unwrap(),
        ],
    );
    let mut socket = connect(&proxy).await.expect("the relayed handshake");
    let create =
        r#"{"type":"response.create","input":"hi","metadata":{"hold_after_created":true}}"#;
    socket.send(Message::text(create.to_owned())).await.unwrap();
    assert_eq!(next_event(&mut socket).await["type"], "response.created");
    // The upstream answers this one with an error, then sends the held response's events.
    let events = turn(&mut socket, r#"{"type":"client.unknown"}"#).await;
    assert_eq!(events[0]["type"], "error", "{events:?}");
    assert_eq!(events[0]["error"]["code"], "unknown_event_type");
    let rest = {
        let mut rest = Vec::new();
        loop {
            let event = next_event(&mut socket).await;
            let done = event["type"] == "response.completed";
            rest.push(event);
            if done {
                break rest;
            }
        }
    };
    assert_eq!(rest.last().unwrap()["response"]["usage"]["input_tokens"], 7);
    socket.close(None).await.unwrap();
    let records = usage_records_once(state.path(), 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(
        records[0].to_string().contains("\"input_tokens\":7"),
        "the response's tokens were not counted: {records:?}"
    );
}

/// What the relay cannot classify with certainty is not passed on: a message with two
/// `type`s (which the upstream might read as a `response.create` the proxy did not count), one
/// that is not a JSON object, and a binary message each get an `error` event.
#[tokio::test(flavor = "multi_thread")]
async fn unclear_client_messages_are_answered_with_an_error_and_not_forwarded() {
    let upstream = ws_upstream().await;
    let proxy = Proxy::start(
        &upstream.url(),
        &[
            "--websocket-upstream",
            "relay",
            "--requests-per-minute",
            "1",
        ],
    );
    let mut socket = connect(&proxy).await.expect("the relayed handshake");
    for message in [
        r#"{"type":"x","type":"response.create","input":"hi"}"#,
        r#"[{"type":"response.create"}]"#,
        r#"{"type":7}"#,
    ] {
        let events = turn(&mut socket, message).await;
        assert_eq!(
            events[0]["error"]["code"], "invalid_message",
            "{message}: {events:?}"
        );
    }
    socket
        .send(Message::binary(br#"{"type":"response.create"}"#.to_vec()))
        .await
        .unwrap();
    let event = next_event(&mut socket).await;
    assert_eq!(event["error"]["code"], "invalid_message", "{event}");
    // The one request a minute is still there: none of those was counted or forwarded.
    let events = turn(&mut socket, r#"{"type":"response.create","input":"ok"}"#).await;
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    assert_eq!(
        upstream.seen.lock().unwrap().messages,
        [r#"{"type":"response.create","input":"ok"}"#]
    );
}
