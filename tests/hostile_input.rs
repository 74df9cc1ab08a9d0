//! Hostile clients and faulty upstreams against the real binary: malformed HTTP framing,
//! slow clients, upstreams that reset, stall or send garbage, and descriptor leaks.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Sends `request` and returns what came back before the server closed (or 5 s passed),
/// and whether the server closed the connection.
fn exchange(port: u16, request: &[u8]) -> (String, bool) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_framing_is_refused_closed_and_never_forwarded() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let big_header = format!(
        "POST /v1/responses HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("duplicate content-length", b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde".to_vec()),
        ("invalid content-length", b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 4x\r\n\r\nabcd".to_vec()),
        ("negative content-length", b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec()),
        ("bad chunk size", b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("unknown transfer-coding", b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec()),
        ("obs-fold", b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("space before colon", b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n".to_vec()),
        ("TE in HTTP/1.0", b"POST /v1/responses HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("huge header line", big_header.into_bytes()),
        ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not http\r\n\r\n".to_vec()),
    ];
    for (name, request) in cases {
        let (answer, closed) = exchange(proxy.port, &request);
        assert!(closed, "{name}: connection left open");
        if !answer.is_empty() {
            let status = status_of(&answer);
            assert!(status == 400 || status == 431, "{name}: {answer}");
        }
    }
    assert!(
        mock.seen().is_empty(),
        "a malformed request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_transfer_encoding_is_refused_and_never_forwarded() {
    // hyper alone would take Transfer-Encoding and forward the request (RFC 9112 §6.3 allows
    // that); we answer 400 and close, in either header order, so nothing can be smuggled.
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let requests: [&[u8]; 2] = [
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
    ];
    for request in requests {
        let (answer, closed) = exchange(proxy.port, request);
        assert!(closed, "connection left open: {answer}");
        assert_eq!(status_of(&answer), 400, "{answer}");
        assert!(answer.contains("ambiguous_framing"), "{answer}");
        assert!(
            answer.contains("both Content-Length and Transfer-Encoding"),
            "{answer}"
        );
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    }
    assert!(
        mock.seen().is_empty(),
        "an ambiguous request reached the upstream"
    );
    let log = proxy.stderr_once_it_has("ambiguous framing", Duration::from_secs(5));
    assert!(log.contains("ambiguous framing"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_first_request_switches_the_framing_check_off() {
    // Each opener once made the guard stop following the connection, so that a later
    // request with both framings reached the upstream.
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let zeros = "0".repeat(300);
    let extension = "x".repeat(1000);
    let head = "POST /v1/responses HTTP/1.1\r\nHost: x\r\n";
    let openers = [
        (
            "Upgrade",
            format!("{head}Upgrade: foo\r\nContent-Length: 2\r\n\r\n{{}}"),
        ),
        (
            "Content-Length with 300 leading zeros",
            format!("{head}Content-Length: {zeros}2\r\n\r\n{{}}"),
        ),
        (
            "long chunk extension",
            format!("{head}Transfer-Encoding: chunked\r\n\r\n2;e={extension}\r\n{{}}\r\n0\r\n\r\n"),
        ),
        (
            "chunk size with leading zeros",
            format!("{head}Transfer-Encoding: chunked\r\n\r\n{zeros}2\r\n{{}}\r\n{zeros}\r\n\r\n"),
        ),
    ];
    let smuggled =
        format!("{head}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    for (name, opener) in &openers {
        let (answer, closed) = exchange(proxy.port, format!("{opener}{smuggled}").as_bytes());
        assert!(closed, "{name}: connection left open: {answer}");
        assert_eq!(
            status_of(&answer),
            200,
            "{name}: the opener itself: {answer}"
        );
        let second = answer
            .match_indices("HTTP/1.1 ")
            .nth(1)
            .map(|(at, _)| &answer[at..]);
        let second = second.unwrap_or_else(|| panic!("{name}: one answer only: {answer}"));
        assert_eq!(status_of(second), 400, "{name}: {answer}");
        assert!(second.contains("ambiguous_framing"), "{name}: {answer}");
    }
    let seen = mock.seen();
    assert_eq!(seen.len(), openers.len(), "{seen:?}");
    assert!(seen.iter().all(|s| s.body.as_ref() == b"{}"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bare_line_feed_in_a_head_is_refused() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let (answer, closed) = exchange(
        proxy.port,
        b"POST /v1/responses HTTP/1.1\r\nHost: x\nContent-Length: 0\r\n\r\n",
    );
    assert!(closed);
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(answer.contains("bare LF"), "{answer}");
    assert!(mock.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_with_both_framings_still_pass() {
    // The framing check follows bodies: a body that looks like a bad head is only a body.
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let body = "{\"x\":\"\nContent-Length: 1\nTransfer-Encoding: chunked\n\n\"}";
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let requests = format!(
        "POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}\
         POST /v1/responses HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n\
         POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
        body.len()
    );
    stream.write_all(requests.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert_eq!(answer.matches("HTTP/1.1 200 ").count(), 3, "{answer}");
    assert_eq!(mock.seen().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_client_is_cut_at_the_header_timeout_without_slowing_others() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &["--header-read-timeout", "1"]);
    let mut slow: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
            s.write_all(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    let ok = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "others were slowed down"
    );
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"a");
    }
    let mut buf = [0u8; 256];
    for s in &mut slow {
        let cut = match s.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                String::from_utf8_lossy(&buf[..n]).contains("408") || {
                    matches!(s.read(&mut buf), Ok(0) | Err(_))
                }
            }
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        assert!(cut, "slow client not cut");
    }
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// An upstream that accepts TCP and then does `behave` with the socket.
fn raw_upstream(behave: fn(std::net::TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || behave(stream));
        }
    });
    port
}

fn read_request_head(stream: &mut std::net::TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

fn reset(stream: std::net::TcpStream) {
    // SO_LINGER 0 makes close() send RST.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
    drop(stream);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_faults_give_defined_errors_promptly() {
    let reset_before_headers = raw_upstream(|mut s| {
        read_request_head(&mut s);
        reset(s);
    });
    let garbage = raw_upstream(|mut s| {
        read_request_head(&mut s);
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n\x00\x01\x02");
    });
    let reset_mid_stream = raw_upstream(|mut s| {
        read_request_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nf\r\ndata: {\"a\":1}\n\n\r\n");
        std::thread::sleep(Duration::from_millis(100));
        reset(s);
    });
    for (name, port, want) in [
        ("reset before headers", reset_before_headers, 502),
        ("garbage", garbage, 502),
    ] {
        let proxy = Proxy::start(&format!("http://127.0.0.1:{port}/v1/responses"), &[]);
        let started = Instant::now();
        let r = http_client()
            .post(proxy.url("/v1/responses"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{name}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{name}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{name} took {:?}",
            started.elapsed()
        );
    }
    // Strict mode mid-stream: the client's stream ends in an error, not a clean end.
    let proxy = Proxy::start(
        &format!("http://127.0.0.1:{reset_mid_stream}/v1/responses"),
        &[],
    );
    let mut r = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut outcome = Ok(());
    loop {
        match r.chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    assert!(
        outcome.is_err(),
        "a cut upstream stream looked complete to the client"
    );
    // Bridge mode mid-stream: a response.failed event ends the stream.
    let bridge = Proxy::start(
        &format!("http://127.0.0.1:{reset_mid_stream}/v1/chat/completions"),
        &["--bridge-to-chat"],
    );
    let text = http_client()
        .post(bridge.url("/v1/responses"))
        .json(&serde_json::json!({"model": "m", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("event: response.failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ten_megabyte_line_fails_the_bridge_stream_cleanly() {
    let huge = format!("data: {{\"x\":\"{}\"", "a".repeat(10 * 1024 * 1024));
    let mock = MockUpstream::start(move |_| Reply::sse(&huge)).await;
    let proxy = Proxy::start(&mock.url("/v1/chat/completions"), &["--bridge-to-chat"]);
    let started = Instant::now();
    let text = http_client()
        .post(proxy.url("/v1/responses"))
        .json(&serde_json::json!({"model": "m", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("event: response.failed"),
        "{}",
        &text[..text.len().min(500)]
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_descriptor_leaks_over_ten_thousand_requests() {
    let mock = MockUpstream::start(|seen| {
        if seen.body.as_ref() == b"fail" {
            Reply::json(500, "{}")
        } else {
            Reply::sse("data: {}\n\n")
        }
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let worker = proxy.worker_pid();
    let client = http_client();
    let run = |requests: usize| {
        let client = client.clone();
        let url = proxy.url("/v1/responses");
        let forbidden = proxy.url("/v1/other");
        async move {
            let mut tasks = Vec::new();
            for lane in 0..8 {
                let (client, url, forbidden) = (client.clone(), url.clone(), forbidden.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..requests / 8 {
                        let r = match (i + lane) % 4 {
                            0 => client.get(&forbidden).send().await.unwrap(),
                            1 => client.post(&url).body("fail").send().await.unwrap(),
                            _ => client.post(&url).body("{}").send().await.unwrap(),
                        };
                        r.bytes().await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    // Warm the connection pools up at the same concurrency, then measure.
    run(400).await;
    let before = open_fds(worker);
    run(10_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = open_fds(worker);
    assert!(
        after <= before + 2,
        "descriptors before {before}, after {after}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_sending_its_body_gets_408_and_nothing_is_forwarded() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &["--idle-timeout", "1"]);
    let started = Instant::now();
    let (answer, closed) = exchange(
        proxy.port,
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"partial",
    );
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(closed);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(mock.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_cut_and_the_upstream_closed() {
    let (mock, tx) = MockUpstream::streaming().await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &["--idle-timeout", "1"]);
    // A client that sends its request and then never reads.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    stalled
        .write_all(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    // The upstream keeps producing until every buffer on the way is full.
    let event = bytes::Bytes::from(format!("data: {}\n\n", "x".repeat(64 * 1024)));
    let started = Instant::now();
    loop {
        if mock.stream_closed.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the stalled client still holds the upstream stream"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), tx.send(event.clone())).await;
    }
    drop(stalled);
}
