//! Black-box tests of the strict proxy: the real binary between a real client and a real
//! hyper upstream on loopback.

mod common;

use bytes::Bytes;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn forwards_with_the_key_and_only_end_to_end_headers() {
    let mock =
        MockUpstream::start(|_| Reply::sse("data: {\"type\":\"response.completed\"}\n\n")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let response = http_client()
        .post(proxy.url("/v1/responses"))
        .header("authorization", "Bearer client-supplied")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must-not-pass")
        .header("proxy-authorization", "Basic abc")
        .header("te", "trailers")
        .header("keep-alive", "timeout=5")
        .header("session-id", "s-1")
        .header("x-custom", "kept")
        .header("content-type", "application/json")
        .body(r#"{"model":"m","input":"hi","stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(
        response.text().await.unwrap(),
        "data: {\"type\":\"response.completed\"}\n\n"
    );
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.uri, "/v1/responses");
    assert_eq!(
        request.header("authorization").unwrap(),
        format!("Bearer {TEST_KEY}")
    );
    assert_eq!(request.header("host").unwrap(), mock.addr.to_string());
    for dropped in [
        "x-hop",
        "proxy-authorization",
        "te",
        "keep-alive",
        "proxy-connection",
    ] {
        assert!(request.header(dropped).is_none(), "{dropped} was forwarded");
    }
    assert_ne!(
        request.header("connection").as_deref(),
        Some("keep-alive, x-hop")
    );
    assert_eq!(request.header("session-id").unwrap(), "s-1");
    assert_eq!(request.header("x-custom").unwrap(), "kept");
    assert_eq!(
        &request.body[..],
        br#"{"model":"m","input":"hi","stream":true}"#
    );
    assert!(!proxy
        .stderr_once_it_has("POST /v1/responses", Duration::from_secs(5))
        .contains(TEST_KEY));
}

#[tokio::test(flavor = "multi_thread")]
async fn everything_but_exact_post_v1_responses_is_403_and_never_forwarded() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let host = format!("127.0.0.1:{}", proxy.port);
    let targets = [
        ("GET", "/v1/responses"),
        ("PUT", "/v1/responses"),
        ("DELETE", "/v1/responses"),
        ("PATCH", "/v1/responses"),
        ("OPTIONS", "/v1/responses"),
        ("HEAD", "/v1/responses"),
        ("POST", "/v1/responses?x=1"),
        ("POST", "/v1/responses?"),
        ("POST", "/v1/responses/"),
        ("POST", "/V1/responses"),
        ("POST", "/v1/Responses"),
        ("POST", "//v1/responses"),
        ("POST", "/v1//responses"),
        ("POST", "/v1/./responses"),
        ("POST", "/v1/x/../responses"),
        ("POST", "/v1/responses%20"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/"),
        ("POST", "http://127.0.0.1/v1/responses"),
        ("POST", "https://api.openai.com/v1/responses"),
        ("GET", "/shutdown"),
    ];
    for (method, target) in targets {
        let answer = raw_request(
            proxy.port,
            format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}").as_bytes(),
        );
        assert_eq!(status_of(&answer), 403, "{method} {target}: {answer}");
        if method != "HEAD" {
            assert!(
                answer.contains("\"type\":\"invalid_request_error\""),
                "{answer}"
            );
        }
    }
    assert!(
        mock.seen().is_empty(),
        "a refused request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_statuses_headers_and_bodies_are_mirrored() {
    let mock = MockUpstream::start(|seen| {
        let status: u16 = seen.json()["want"].as_u64().unwrap() as u16;
        Reply::Full {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-request-id".into(), format!("req_{status}")),
                ("x-ratelimit-remaining-requests".into(), "41".into()),
                ("retry-after".into(), "7".into()),
            ],
            body: Bytes::from(format!("{{\"error\":{{\"message\":\"status {status}\"}}}}")),
        }
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    for status in [200u16, 400, 401, 429, 500, 503] {
        let response = http_client()
            .post(proxy.url("/v1/responses"))
            .body(format!("{{\"want\":{status}}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(
            response.headers()["x-request-id"],
            format!("req_{status}").as_str()
        );
        assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "41");
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            response.text().await.unwrap(),
            format!("{{\"error\":{{\"message\":\"status {status}\"}}}}")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_reaches_the_client_while_the_upstream_holds_the_next() {
    let (mock, tx) = MockUpstream::streaming().await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    tx.send(Bytes::from_static(
        b"event: response.created\ndata: {\"n\":1}\n\n",
    ))
    .await
    .unwrap();
    let mut response = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("first event arrived while the upstream holds the second")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"event: response.created\ndata: {\"n\":1}\n\n");
    tx.send(Bytes::from_static(b"data: {\"n\":2}\n\n"))
        .await
        .unwrap();
    drop(tx);
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: {\"n\":2}\n\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_a_502_with_an_openai_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let proxy = Proxy::start(&format!("http://127.0.0.1:{port}/v1/responses"), &[]);
    let response = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("refused"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_upstream_is_given_up_after_the_idle_timeout() {
    let mock = MockUpstream::start(|_| Reply::Stall).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &["--idle-timeout", "1"]);
    let started = std::time::Instant::now();
    let response = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(10));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_are_413_declared_or_chunked() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &["--max-request-body", "1000"]);
    let declared = http_client()
        .post(proxy.url("/v1/responses"))
        .body(vec![b'a'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 413);
    let body: serde_json::Value = declared.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_too_large");
    let chunked = raw_request(
        proxy.port,
        format!(
            "POST /v1/responses HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3e8\r\n{}\r\n10\r\n{}\r\n0\r\n\r\n",
            "a".repeat(1000),
            "b".repeat(16)
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&chunked), 413);
    let exact = http_client()
        .post(proxy.url("/v1/responses"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(exact.status(), 200);
    assert_eq!(mock.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_url_keeps_its_own_query_string() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(
        &mock.url("/openai/responses?api-version=2025-04-01-preview"),
        &[],
    );
    let response = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        mock.seen()[0].uri,
        "/openai/responses?api-version=2025-04-01-preview"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_info_names_the_port_and_the_supervisor() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let text = std::fs::read_to_string(proxy.dir.path().join("server-info.json")).unwrap();
    assert_eq!(
        text,
        format!("{{\"port\":{},\"pid\":{}}}\n", proxy.port, proxy.pid)
    );
    assert_eq!(proxy.pid, proxy.child.id());
    let leftovers: Vec<_> = std::fs::read_dir(proxy.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn http_shutdown_stops_the_service_with_status_0_only_when_enabled() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let mut without = Proxy::start(&mock.url("/v1/responses"), &[]);
    let refused = http_client()
        .get(without.url("/shutdown"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        without.child.try_wait().unwrap().is_none(),
        "stopped without --http-shutdown"
    );

    let mut with = Proxy::start(&mock.url("/v1/responses"), &["--http-shutdown"]);
    let worker = with.worker_pid();
    let answer = http_client()
        .get(with.url("/shutdown"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let status = with.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", with.stderr());
    assert!(
        !std::path::Path::new(&format!("/proc/{worker}/status")).exists()
            || proc_status(worker)
                .get("State")
                .is_some_and(|s| s.starts_with('Z'))
    );
    assert!(without.child.try_wait().unwrap().is_none());
    without.signal(libc::SIGTERM);
    assert_eq!(without.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_stream_finish_then_exits_0() {
    let (mock, tx) = MockUpstream::streaming().await;
    let mut proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    tx.send(Bytes::from_static(b"data: 1\n\n")).await.unwrap();
    let mut response = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        &response.chunk().await.unwrap().unwrap()[..],
        b"data: 1\n\n"
    );
    proxy.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No new connections once draining…
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", proxy.port)).is_err(),
        "the listener still accepts while draining"
    );
    // …but the stream in flight completes.
    tx.send(Bytes::from_static(b"data: 2\n\n")).await.unwrap();
    drop(tx);
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: 2\n\n");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// A client that leaves mid-stream no longer holds anything, but the upstream stream is read
/// on for the usage at its end (so leaving early does not dodge `--tokens-per-day`); an
/// upstream that then stays silent is closed after `--idle-timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_is_drained_for_its_usage_then_the_upstream_closed() {
    let (mock, tx) = MockUpstream::streaming().await;
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &[
            "--idle-timeout",
            "2",
            "--state-directory",
            state.path().to_str().unwrap(),
        ],
    );
    tx.send(Bytes::from_static(b"data: 1\n\n")).await.unwrap();
    let mut response = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    response.chunk().await.unwrap().unwrap();
    drop(response);
    // The upstream stream stays open while it is drained…
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.send(Bytes::from_static(b": keep-alive\n\n"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        mock.stream_closed.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the upstream stream was closed before its usage came"
    );
    // …until its usage arrives and it ends: then it is recorded.
    tx.send(Bytes::from_static(b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"m\",\"usage\":{\"input_tokens\":70,\"output_tokens\":7}}}\n\n"))
        .await
        .unwrap();
    drop(tx);
    let usage = state.path().join("usage.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&usage).unwrap_or_default();
        if text.contains("\"input_tokens\":70") {
            assert!(text.contains("\"output_tokens\":7"), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the usage of a stream whose client left was not recorded: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = proxy.stderr_once_it_has("outcome=client_gone", Duration::from_secs(5));
    assert!(log.contains("input_tokens=70"), "{log}");

    // An upstream that goes silent after the client left is closed after the idle timeout.
    let (mock, tx) = MockUpstream::streaming().await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &["--idle-timeout", "1"]);
    tx.send(Bytes::from_static(b"data: 1\n\n")).await.unwrap();
    let mut response = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    response.chunk().await.unwrap().unwrap();
    drop(response);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while mock.stream_closed.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "upstream stream still open 5 s after the client left with a 1 s idle timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tx);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_never_reaches_the_logs_even_at_trace() {
    let mock =
        MockUpstream::start(|_| Reply::json(401, "{\"error\":{\"message\":\"bad key\"}}")).await;
    let mut proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &["--log-level", "trace", "--http-shutdown"],
    );
    for _ in 0..3 {
        http_client()
            .post(proxy.url("/v1/responses"))
            .body("{}")
            .send()
            .await
            .unwrap();
    }
    http_client()
        .get(proxy.url("/shutdown"))
        .send()
        .await
        .unwrap();
    proxy.wait_exit(Duration::from_secs(10));
    let log = proxy.stderr();
    assert!(log.contains("POST /v1/responses 401"), "{log}");
    assert!(
        !log.contains(TEST_KEY) && !log.contains("SECRET"),
        "key in log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_log_line_per_request_with_status_upstream_status_and_bytes() {
    let mock = MockUpstream::start(|_| Reply::json(429, "{\"error\":{}}")).await;
    let mut proxy = Proxy::start(&mock.url("/v1/responses"), &["--http-shutdown"]);
    http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    http_client()
        .get(proxy.url("/nope"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    http_client()
        .get(proxy.url("/shutdown"))
        .send()
        .await
        .unwrap();
    proxy.wait_exit(Duration::from_secs(10));
    let log = proxy.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("duration_ms=")).collect();
    assert_eq!(lines.len(), 3, "{log}");
    // Each shard writes its own lines, so the order across requests is not fixed.
    let line_of = |path: &str| {
        let needle = format!("path={path} ");
        *lines.iter().find(|l| l.contains(&needle)).unwrap_or(&"")
    };
    let forwarded = line_of("/v1/responses");
    assert!(
        forwarded.contains("status=429")
            && forwarded.contains("upstream_status=429")
            && forwarded.contains("bytes=12"),
        "{log}"
    );
    let refused = line_of("/nope");
    assert!(
        refused.contains("status=403") && refused.contains("upstream_status=0"),
        "{log}"
    );
}

#[test]
fn key_intake_errors_exit_nonzero_with_a_helpful_line_and_no_key() {
    let cases: [(&[u8], &str); 5] = [
        (b"", "no API key was given"),
        (b"\n", "empty"),
        (b"sk-SECRET with space\n", "characters other than"),
        (b"sk-\xffSECRET\n", "not valid UTF-8"),
        (&[b'a'; 2000], "longer than 1017"),
    ];
    for (input, expected) in cases {
        let mut child = std::process::Command::new(binary())
            .args(["--port", "0"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(input);
        }
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "accepted {input:?}");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
        assert!(!stderr.contains("SECRET"), "key echoed: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_makes_the_supervisor_exit_nonzero() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let mut proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let worker = proxy.worker_pid();
    unsafe {
        libc::kill(worker as i32, libc::SIGKILL);
    }
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    assert!(
        proxy.stderr().contains("worker exited unexpectedly"),
        "{}",
        proxy.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_arrives_in_pieces_is_forwarded_whole() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let port = proxy.port;
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let pieces: [&[u8]; 4] = [
            b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7\r\n{\"model\r\n",
            b"6\r\n\":\"m\",\r\n",
            b"a\r\n\"input\":\"\"\r\n",
            b"1\r\n}\r\n0\r\nx-trailer: t\r\n\r\n",
        ];
        for piece in pieces {
            stream.write_all(piece).unwrap();
            // Each piece reaches the worker as its own read.
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0].body[..], br#"{"model":"m","input":""}"#);
    assert_eq!(seen[0].header("content-length").as_deref(), Some("24"));
}
