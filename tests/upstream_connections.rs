//! The strict route's own HTTP/1.1 client against a scripted upstream on loopback: keep-alive
//! reuse and when a connection must not be reused, every body framing an upstream may use,
//! interim responses, pooled connections the upstream closed while idle, malformed framing,
//! and request bodies larger than a socket buffer.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the scripted upstream does after answering a request.
#[derive(Clone, Copy)]
enum Then {
    KeepOpen,
    Close,
    CloseAfter(Duration),
}

/// One answer: the pieces written (with `pause` between them) and what happens next.
struct Answer {
    pieces: Vec<Vec<u8>>,
    pause: Duration,
    then: Then,
}

fn answer(wire: &str, then: Then) -> Answer {
    Answer {
        pieces: vec![wire.as_bytes().to_vec()],
        pause: Duration::ZERO,
        then,
    }
}

type Script = dyn Fn(usize) -> Answer + Send + Sync;

/// A raw upstream that answers the n-th request it receives (over all connections) with
/// `script(n)`, counting connections and keeping each request's body.
struct ScriptedUpstream {
    port: u16,
    connections: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl ScriptedUpstream {
    fn start(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (count, seen) = (connections.clone(), bodies.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let (script, seen) = (script.clone(), seen.clone());
                std::thread::spawn(move || serve(stream, &*script, &seen));
            }
        });
        ScriptedUpstream {
            port,
            connections,
            bodies,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/responses", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn serve(mut stream: TcpStream, script: &Script, seen: &Mutex<Vec<Vec<u8>>>) {
    let mut pending = Vec::new();
    while let Some(body) = read_request(&mut stream, &mut pending) {
        let n = {
            let mut seen = seen.lock().unwrap();
            seen.push(body);
            seen.len() - 1
        };
        let Answer {
            pieces,
            pause,
            then,
        } = script(n);
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(pause);
            }
            if stream.write_all(piece).is_err() {
                return;
            }
        }
        match then {
            Then::KeepOpen => {}
            Then::Close => return,
            Then::CloseAfter(pause) => {
                std::thread::sleep(pause);
                return;
            }
        }
    }
}

/// One request's body (framed by Content-Length); `None` at the end of the connection.
fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while pending.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
    let body = pending[head_end..head_end + length].to_vec();
    pending.drain(..head_end + length);
    Some(body)
}

/// Status, Content-Length and body of one request through the proxy; `Err` when the
/// response failed (before or after its head).
async fn try_post(
    client: &reqwest::Client,
    proxy: &Proxy,
    body: &str,
) -> Result<(u16, Option<String>, String), String> {
    let response = client
        .post(proxy.url("/v1/responses"))
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let length = response
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.map_err(|e| format!("{e:?}"))?;
    Ok((status, length, text))
}

async fn post(
    client: &reqwest::Client,
    proxy: &Proxy,
    body: &str,
) -> (u16, Option<String>, String) {
    try_post(client, proxy, body).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_framing_reaches_the_client_and_connections_are_reused_only_when_safe() {
    let upstream = ScriptedUpstream::start(|n| match n {
        0 => answer(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            Then::KeepOpen,
        ),
        1 => answer(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             5;ext=\"v\"\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
            Then::KeepOpen,
        ),
        2 => answer(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Then::KeepOpen,
        ),
        3 => answer("HTTP/1.1 204 No Content\r\n\r\n", Then::KeepOpen),
        // A chunked body whose chunk-size line and data arrive in separate writes.
        4 => Answer {
            pieces: vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
                b"f".to_vec(),
                b"\r\ndata: {\"n\":1}\n\n".to_vec(),
                b"\r\n0\r\n".to_vec(),
                b"\r\n".to_vec(),
            ],
            pause: Duration::from_millis(30),
            then: Then::KeepOpen,
        },
        // The upstream asks for the connection to be closed, though it keeps it open.
        5 => answer(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye",
            Then::KeepOpen,
        ),
        // No length and no chunking: the body ends when the connection does.
        6 => answer("HTTP/1.1 200 OK\r\n\r\nuntil the end", Then::Close),
        // Bytes after the end of the body: the connection cannot be trusted again.
        7 => answer(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiEXTRA",
            Then::KeepOpen,
        ),
        _ => answer(
            "HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\nlast",
            Then::KeepOpen,
        ),
    });
    // One worker thread, so that every request uses the same pool of upstream connections
    // (the client may open a new connection, which would go to another thread).
    let proxy = Proxy::start(&upstream.url(), &["--worker-threads", "1"]);
    let client = http_client();
    let expected: [(u16, Option<&str>, &str, usize); 9] = [
        (200, Some("5"), "hello", 1),
        (200, None, "hello world", 1),
        (200, Some("2"), "ok", 1),
        (204, None, "", 1),
        (200, None, "data: {\"n\":1}\n\n", 1),
        (200, Some("3"), "bye", 1),
        (200, None, "until the end", 2),
        (200, Some("2"), "hi", 3),
        (201, Some("4"), "last", 4),
    ];
    for (n, (status, length, body, connections)) in expected.into_iter().enumerate() {
        let (got_status, got_length, got_body) =
            try_post(&client, &proxy, &format!("{{\"n\":{n}}}"))
                .await
                .unwrap_or_else(|e| panic!("request {n}: {e}"));
        assert_eq!(got_status, status, "request {n}");
        assert_eq!(got_length.as_deref(), length, "request {n}");
        assert_eq!(got_body, body, "request {n}");
        assert_eq!(upstream.connections(), connections, "request {n}");
    }
    let bodies = upstream.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 9);
    assert_eq!(bodies[8], b"{\"n\":8}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_the_upstream_closed_is_replaced_without_an_error() {
    // Every connection serves one response, then the upstream closes it while it is idle
    // in the proxy's pool.
    let upstream = ScriptedUpstream::start(|_| {
        answer(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Then::CloseAfter(Duration::from_millis(20)),
        )
    });
    // One worker thread, so that every request uses the same pool of upstream connections
    // (the client may open a new connection, which would go to another thread).
    let proxy = Proxy::start(&upstream.url(), &["--worker-threads", "1"]);
    let client = http_client();
    for n in 0..4 {
        let (status, _, body) = post(&client, &proxy, "{}").await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {n}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(upstream.connections(), 4);
    assert_eq!(
        upstream.bodies.lock().unwrap().len(),
        4,
        "a request went twice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_upstream_framing_is_a_502_before_the_head_and_a_cut_stream_after() {
    let upstream = ScriptedUpstream::start(|n| match n {
        0 => answer(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
            Then::Close,
        ),
        1 => answer(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            Then::KeepOpen,
        ),
        2 => answer(
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            Then::Close,
        ),
        3 => answer(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
            Then::Close,
        ),
        4 => answer("HTTP/1.1 101 Switching Protocols\r\n\r\n", Then::Close),
        _ => answer(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Then::KeepOpen,
        ),
    });
    // One worker thread, so that every request uses the same pool of upstream connections
    // (the client may open a new connection, which would go to another thread).
    let proxy = Proxy::start(&upstream.url(), &["--worker-threads", "1"]);
    let client = http_client();
    // Before the head: a 502 with an OpenAI error. After it: the client's response fails
    // (hyper may not have written the head yet when the error comes), never a clean end.
    for (n, cut_after_head) in [(0, false), (1, true), (2, true), (3, true), (4, false)] {
        let outcome = try_post(&client, &proxy, "{}").await;
        if cut_after_head {
            assert!(
                outcome.is_err(),
                "request {n}: a cut stream looked whole: {outcome:?}"
            );
        } else {
            let (status, _, body) = outcome.unwrap();
            assert_eq!(status, 502, "request {n}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(json["error"]["message"].is_string(), "request {n}");
        }
    }
    // None of that poisoned the pool.
    let (status, _, body) = post(&client, &proxy, "{}").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_body_larger_than_the_socket_buffers_arrives_whole() {
    let upstream = ScriptedUpstream::start(|_| {
        answer(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Then::KeepOpen,
        )
    });
    // One worker thread, so that every request uses the same pool of upstream connections
    // (the client may open a new connection, which would go to another thread).
    let proxy = Proxy::start(&upstream.url(), &["--worker-threads", "1"]);
    let client = http_client();
    let body: String = (0..8 * 1024 * 1024 / 16)
        .map(|i| format!("{i:015}\n"))
        .collect();
    for _ in 0..2 {
        let (status, _, answer) = post(&client, &proxy, &body).await;
        assert_eq!((status, answer.as_str()), (200, "ok"));
    }
    let bodies = upstream.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 2);
    assert!(bodies.iter().all(|b| b == body.as_bytes()));
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_before_the_whole_request_is_relayed_at_once() {
    // The upstream reads the head and a little of the body, answers 413 and stops reading,
    // holding the connection open: the proxy must not wait to finish writing first.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = stream
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig");
                std::thread::sleep(Duration::from_secs(20));
            });
        }
    });
    let proxy = Proxy::start(
        &format!("http://127.0.0.1:{port}/v1/responses"),
        &["--idle-timeout", "10"],
    );
    let started = std::time::Instant::now();
    let (status, _, body) = post(&http_client(), &proxy, &"x".repeat(20 * 1024 * 1024)).await;
    assert_eq!((status, body.as_str()), (413, "big"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_body_idle_limit_counts_from_the_last_bytes_and_ends_a_stalled_stream() {
    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    let upstream = ScriptedUpstream::start(|n| match n {
        // Four events 700 ms apart: 2.1 s in all, never 1 s without bytes.
        0 => Answer {
            pieces: [HEAD, b"3\r\none\r\n", b"3\r\ntwo\r\n", b"5\r\nthree\r\n"]
                .iter()
                .map(|p| p.to_vec())
                .chain([b"4\r\nfour\r\n0\r\n\r\n".to_vec()])
                .collect(),
            pause: Duration::from_millis(700),
            then: Then::KeepOpen,
        },
        // One event, then silence on an open connection.
        _ => Answer {
            pieces: vec![[HEAD, b"5\r\nhello\r\n"].concat()],
            pause: Duration::ZERO,
            then: Then::CloseAfter(Duration::from_secs(10)),
        },
    });
    let proxy = Proxy::start(
        &upstream.url(),
        &["--worker-threads", "1", "--idle-timeout", "1"],
    );
    let client = http_client();
    let (status, _, body) = post(&client, &proxy, "{}").await;
    assert_eq!((status, body.as_str()), (200, "onetwothreefour"));
    let started = std::time::Instant::now();
    let outcome = try_post(&client, &proxy, "{}").await;
    assert!(
        outcome.is_err(),
        "a stalled stream looked whole: {outcome:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "cut after {waited:?}"
    );
}
