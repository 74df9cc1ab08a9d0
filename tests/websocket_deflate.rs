//! permessage-deflate (RFC 7692) on `GET /v1/responses`, black-box: a client that offers it
//! (as Codex and Python's `websockets` do: `permessage-deflate; client_max_window_bits`) gets
//! it in the 101 and its turns go compressed both ways, whether the proxy serves the socket
//! over an HTTP upstream or relays it to a WebSocket upstream, which the proxy offers it to in
//! turn. Compression is seen on the wire: the bytes each side's TCP stream carried after the
//! handshake, for messages of highly compressible JSON tens of kilobytes long. (A client that
//! does not offer it gets no extension: every test of `tests/websocket.rs` checks that.)
//!
//! The clients and the WebSocket upstream here are yawc's, over streams of the tests' own that
//! count their bytes; the client's handshake is written by hand so that the 101 can be read.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use yawc::{Frame, OpCode, Options, Role, WebSocket};

/// Bytes a stream has carried each way.
#[derive(Clone, Default)]
struct Counts {
    read: Arc<AtomicUsize>,
    written: Arc<AtomicUsize>,
}

impl Counts {
    fn read(&self) -> usize {
        self.read.load(Ordering::SeqCst)
    }
    fn written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }
}

/// A stream that counts its bytes.
struct Counted<S> {
    inner: S,
    counts: Counts,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.counts.read.fetch_add(read, Ordering::SeqCst);
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = result {
            self.counts.written.fetch_add(written, Ordering::SeqCst);
        }
        result
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Client = WebSocket<Counted<tokio::net::TcpStream>>;

/// What Codex 0.169.0 offers.
const CODEX_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Opens a socket to the proxy offering `offer`: the socket (compressing as the 101 agreed),
/// the 101's `Sec-WebSocket-Extensions`, and the counts of the socket's bytes after the 101.
async fn connect(proxy: &Proxy, offer: &str) -> (Client, Option<String>, Counts) {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    let handshake = format!(
        "GET /v1/responses HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n",
        proxy.port
    );
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    // The head, byte by byte: nothing follows it until the client speaks.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.expect("the 101"));
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    let extensions = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_owned())
    });
    let counts = Counts::default();
    let stream = Counted {
        inner: tcp,
        counts: counts.clone(),
    };
    let socket = WebSocket::from_stream_with_extensions(
        stream,
        Role::Client,
        extensions.as_deref(),
        Options::default()
            .with_low_latency_compression()
            .with_limits(16 << 20, 16 << 20),
    )
    .unwrap();
    (socket, extensions, counts)
}

/// Events up to the turn's last one.
async fn turn_events(socket: &mut Client) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), socket.next_frame())
            .await
            .expect("an event in time")
            .expect("a frame");
        if frame.opcode() != OpCode::Text {
            continue;
        }
        let event: Value = serde_json::from_slice(frame.payload()).unwrap();
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

/// About 60 KB of text that deflate shrinks to almost nothing.
fn long_text(word: &str) -> String {
    format!("{word} ").repeat(60_000 / (word.len() + 1))
}

fn turn(text: &str) -> Value {
    json!({"type": "response.create", "model": "gpt-test", "store": false,
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]})
}

/// A response saying `text`, as events.
fn answer_events(id: &str, text: &str) -> Vec<Value> {
    let item = json!({"type": "message", "id": format!("msg_{id}"), "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}]});
    vec![
        json!({"type": "response.created", "response": {"id": id, "object": "response", "status": "in_progress", "output": []}}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        json!({"type": "response.completed", "response": {"id": id, "object": "response", "status": "completed", "output": [item],
            "usage": {"input_tokens": 11, "output_tokens": 5, "total_tokens": 16}}}),
    ]
}

fn assert_negotiated(extensions: Option<&str>) {
    let extensions = extensions.expect("the 101 names the extension");
    assert!(extensions.starts_with("permessage-deflate"), "{extensions}");
    // No deflate state is kept between messages, either way.
    assert!(
        extensions.contains("server_no_context_takeover"),
        "{extensions}"
    );
    assert!(
        extensions.contains("client_no_context_takeover"),
        "{extensions}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_served_socket_negotiates_deflate_and_compresses_both_ways() {
    let answer = long_text("answered");
    let answer2 = answer.clone();
    let mock = MockUpstream::start(move |_| {
        let events = answer_events("resp_deflate", &answer2);
        Reply::sse(
            &events
                .iter()
                .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
                .collect::<String>(),
        )
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &["--log-level", "debug"]);
    let (mut socket, extensions, counts) = connect(&proxy, CODEX_OFFER).await;
    assert_negotiated(extensions.as_deref());

    let question = long_text("asked");
    let message = turn(&question).to_string();
    socket.send(Frame::text(message.clone())).await.unwrap();
    let events = turn_events(&mut socket).await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed", "{events:#?}");
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"], answer,
        "the answer arrives whole"
    );
    // The proxy inflated the question whole and sent it on.
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].json()["input"][0]["content"][0]["text"], question);

    let sent_plain = message.len();
    let received_plain: usize = events.iter().map(|e| e.to_string().len()).sum();
    eprintln!(
        "served socket: client sent {} bytes for a {sent_plain}-byte message, received {} for {received_plain} bytes of events",
        counts.written(),
        counts.read()
    );
    assert!(
        counts.written() * 10 < sent_plain,
        "compressed to the proxy"
    );
    assert!(
        counts.read() * 10 < received_plain,
        "compressed by the proxy"
    );
    let log = proxy.stderr_once_it_has(
        "websocket: negotiated permessage-deflate",
        Duration::from_secs(5),
    );
    assert!(
        log.contains("websocket: negotiated permessage-deflate"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_offering_nothing_or_something_else_gets_no_extension() {
    let mock = MockUpstream::start(|_| {
        let events = answer_events("resp_plain", "plain answer");
        Reply::sse(
            &events
                .iter()
                .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
                .collect::<String>(),
        )
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    // (An 8-bit server window cannot be honoured: declined, the socket served uncompressed.)
    for offer in [
        "x-webkit-deflate-frame",
        "permessage-bzip2",
        "permessage-deflate; server_max_window_bits=8",
    ] {
        let (mut socket, extensions, counts) = connect(&proxy, offer).await;
        assert_eq!(extensions, None, "{offer}");
        let message = turn(&long_text("plain")).to_string();
        socket.send(Frame::text(message.clone())).await.unwrap();
        let events = turn_events(&mut socket).await;
        assert_eq!(events.last().unwrap()["type"], "response.completed");
        assert!(counts.written() > message.len(), "sent as it is");
    }
}

/// What the WebSocket upstream saw: each handshake's `Sec-WebSocket-Extensions` and each
/// text message.
#[derive(Default)]
struct UpstreamSeen {
    offers: Vec<Option<String>>,
    messages: Vec<String>,
}

/// A WebSocket Responses upstream that speaks permessage-deflate (yawc, over hyper),
/// answering each `response.create` with a response saying `answer`, counting its bytes.
async fn deflate_upstream(answer: String) -> (String, Arc<Mutex<UpstreamSeen>>, Counts) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(UpstreamSeen::default()));
    let counts = Counts::default();
    let (seen2, counts2) = (seen.clone(), counts.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let stream = Counted {
                inner: tcp,
                counts: counts2.clone(),
            };
            let (seen, answer) = (seen2.clone(), answer.clone());
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    let (seen, answer) = (seen.clone(), answer.clone());
                    async move {
                        seen.lock().unwrap().offers.push(
                            request
                                .headers()
                                .get("sec-websocket-extensions")
                                .map(|v| v.to_str().unwrap().to_owned()),
                        );
                        let options = Options::default()
                            .with_balanced_compression()
                            .with_limits(16 << 20, 16 << 20);
                        let (response, upgrade) =
                            WebSocket::upgrade_with_options(&mut request, options).unwrap();
                        tokio::spawn(async move {
                            let Ok(mut socket) = upgrade.await else {
                                return;
                            };
                            while let Ok(frame) = socket.next_frame().await {
                                if frame.opcode() != OpCode::Text {
                                    continue;
                                }
                                let text = String::from_utf8(frame.payload().to_vec()).unwrap();
                                seen.lock().unwrap().messages.push(text);
                                for event in answer_events("resp_relayed", &answer) {
                                    if socket.send(Frame::text(event.to_string())).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        });
                        Ok::<_, std::convert::Infallible>(response)
                    }
                },
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (format!("http://{addr}/v1/responses"), seen, counts)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relayed_socket_is_compressed_on_both_hops() {
    let answer = long_text("relayed");
    let (url, upstream_seen, upstream_counts) = deflate_upstream(answer.clone()).await;
    let proxy = Proxy::start(&url, &["--websocket-upstream", "relay"]);
    let (mut socket, extensions, client_counts) = connect(&proxy, CODEX_OFFER).await;
    assert_negotiated(extensions.as_deref());
    // The handshake with the upstream, before the client's 101: the proxy offered deflate.
    let offers = upstream_seen.lock().unwrap().offers.clone();
    assert_eq!(offers.len(), 1);
    let offer = offers[0].clone().expect("the proxy offers an extension");
    assert!(offer.starts_with("permessage-deflate"), "{offer}");
    let upstream_before = (upstream_counts.read(), upstream_counts.written());

    let question = long_text("asked");
    let message = turn(&question).to_string();
    socket.send(Frame::text(message.clone())).await.unwrap();
    let events = turn_events(&mut socket).await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed", "{events:#?}");
    assert_eq!(last["response"]["output"][0]["content"][0]["text"], answer);
    assert_eq!(
        upstream_seen.lock().unwrap().messages,
        vec![message.clone()],
        "relayed unchanged"
    );

    let sent_plain = message.len();
    let received_plain: usize = events.iter().map(|e| e.to_string().len()).sum();
    let upstream_read = upstream_counts.read() - upstream_before.0;
    let upstream_written = upstream_counts.written() - upstream_before.1;
    eprintln!(
        "relayed socket: {sent_plain}-byte message, client→proxy {} bytes, proxy→upstream {upstream_read}; \
         {received_plain} bytes of events, upstream→proxy {upstream_written}, proxy→client {}",
        client_counts.written(),
        client_counts.read()
    );
    assert!(client_counts.written() * 10 < sent_plain);
    assert!(
        upstream_read * 10 < sent_plain,
        "the proxy compresses to the upstream"
    );
    assert!(upstream_written * 10 < received_plain);
    assert!(
        client_counts.read() * 10 < received_plain,
        "and to the client"
    );
}

/// The close frame the proxy ends `socket` with.
async fn close_code(socket: &mut Client) -> Option<yawc::close::CloseCode> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next_frame())
            .await
            .expect("closed in time")
            .expect("a close frame before the end");
        if frame.opcode() == OpCode::Close {
            return frame.close_code();
        }
    }
}

/// A compression bomb: a message of some 20 KB on the wire that inflates to 2 MiB, against
/// a 256 KiB limit. The limit counts the inflated message: 1009, nothing forwarded,
/// whether the proxy serves the socket or relays it.
#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_message_over_the_body_limit_closes_with_1009() {
    let mock = MockUpstream::start(|_| Reply::sse("")).await;
    let (ws_url, upstream_seen, _) = deflate_upstream("unused".to_owned()).await;
    let served = Proxy::start(
        &mock.url("/v1/responses"),
        &["--max-request-body", "262144"],
    );
    let relayed = Proxy::start(
        &ws_url,
        &[
            "--max-request-body",
            "262144",
            "--websocket-upstream",
            "relay",
        ],
    );
    let bomb = turn(&"a".repeat(2 << 20)).to_string();
    for proxy in [&served, &relayed] {
        let (mut socket, extensions, counts) = connect(proxy, CODEX_OFFER).await;
        assert_negotiated(extensions.as_deref());
        socket.send(Frame::text(bomb.clone())).await.unwrap();
        // Well under the limit on the wire: only the inflated size is over it.
        assert!(
            counts.written() < 64 * 1024,
            "a small frame on the wire ({} bytes)",
            counts.written()
        );
        assert_eq!(
            close_code(&mut socket).await,
            Some(yawc::close::CloseCode::Size)
        );
    }
    assert!(mock.seen().is_empty(), "nothing forwarded");
    assert!(
        upstream_seen.lock().unwrap().messages.is_empty(),
        "nothing relayed"
    );
}
