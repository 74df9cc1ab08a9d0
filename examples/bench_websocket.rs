//! WebSocket benchmark (not a test; `bench/websocket.sh` runs it): what the proxy adds to a
//! turn over a WebSocket, and what an open socket costs it in memory.
//!
//! ```text
//! cargo run --release --example bench_websocket -- PROXY_BINARY [TURNS] [SOCKETS]
//! ```
//!
//! It starts, on loopback, a WebSocket Responses upstream and an HTTP one (both in this
//! process; each answers a turn with the same 9 events, about 2 KB, the completed one with
//! usage), and the proxy twice: relaying to the WebSocket upstream (`--websocket-upstream
//! relay`) and serving sockets itself over the HTTP upstream (`--websocket-upstream serve`).
//! Then, one turn at a time on one connection (a `response.create` sent, its events read up to
//! `response.completed`), `TURNS` turns (default 2000) each of:
//! - `ws direct`: straight to the WebSocket upstream;
//! - `ws relayed`: through the proxy's relay;
//! - `ws served`: through the proxy serving the socket over HTTP (each turn one POST);
//! - `http direct`: the same turn as a streamed POST on a kept-alive connection, to the mock;
//! - `http proxied`: that POST through the proxy.
//!
//! It prints p50, p90, p99 and mean per turn and the time the proxy adds over the direct path.
//! Then it opens `SOCKETS` sockets (default 500) through each proxy, one turn on each (so the
//! served socket remembers a response), and prints the worker's resident memory before and
//! after, per open socket (`VmRSS` of the supervisor's child).
//!
//! All of it twice: `plain`, the clients and the WebSocket upstream without permessage-deflate
//! (neither offers nor accepts it), then `deflate`, the clients offering it and the upstream
//! accepting the proxy's offer (with context takeover on its side, as a server may), so that
//! both hops of a relayed socket and the client hop of a served one are compressed. The
//! clients and the WebSocket upstream are yawc's.

use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use yawc::{Frame, OpCode, Options, WebSocket};

const KEY: &str = "sk-bench-websocket-0123456789";
const TURN: &str = r#"{"type":"response.create","model":"gpt-bench","store":false,"input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"Say hello."}]}]}"#;

/// The 9 events of one answer, the same as `bench_mock_upstream`'s default stream.
fn events() -> Vec<String> {
    let id = "resp_bench";
    let mut events = vec![
        format!(r#"{{"type":"response.created","sequence_number":0,"response":{{"id":"{id}","object":"response","status":"in_progress","model":"gpt-bench","output":[]}}}}"#),
        format!(r#"{{"type":"response.in_progress","sequence_number":1,"response":{{"id":"{id}","object":"response","status":"in_progress","model":"gpt-bench","output":[]}}}}"#),
        r#"{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_bench","type":"message","status":"in_progress","role":"assistant","content":[]}}"#.to_owned(),
    ];
    for n in 0..3 {
        events.push(format!(r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":"msg_bench","output_index":0,"content_index":0,"delta":"Hello, this is streamed token number {n} of the benchmark answer. ","logprobs":[]}}"#, 3 + n));
    }
    events.push(r#"{"type":"response.output_text.done","sequence_number":6,"item_id":"msg_bench","output_index":0,"content_index":0,"text":"Hello.","logprobs":[]}"#.to_owned());
    events.push(r#"{"type":"response.output_item.done","sequence_number":7,"output_index":0,"item":{"id":"msg_bench","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello.","annotations":[]}]}}"#.to_owned());
    events.push(format!(r#"{{"type":"response.completed","sequence_number":8,"response":{{"id":"{id}","object":"response","status":"completed","model":"gpt-bench","output":[{{"id":"msg_bench","type":"message","status":"completed","role":"assistant","content":[{{"type":"output_text","text":"Hello.","annotations":[]}}]}}],"usage":{{"input_tokens":12,"output_tokens":40,"total_tokens":52}}}}}}"#));
    events
}

/// The options of the bench's WebSocket ends: with `deflate`, permessage-deflate offered (a
/// client) or accepted (the upstream).
fn options(deflate: bool) -> Options {
    let options = Options::default().with_limits(64 << 20, 64 << 20);
    if deflate {
        options.with_low_latency_compression()
    } else {
        options
    }
}

async fn websocket_upstream(deflate: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let events = events();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let events = events.clone();
            let service = service_fn(move |mut request: Request<hyper::body::Incoming>| {
                let events = events.clone();
                async move {
                    let (response, upgrade) =
                        WebSocket::upgrade_with_options(&mut request, options(deflate)).unwrap();
                    tokio::spawn(async move {
                        let Ok(mut socket) = upgrade.await else {
                            return;
                        };
                        while let Ok(frame) = socket.next_frame().await {
                            if frame.opcode() != OpCode::Text {
                                continue;
                            }
                            for event in &events {
                                if socket.feed(Frame::text(event.clone())).await.is_err() {
                                    return;
                                }
                            }
                            if socket.flush().await.is_err() {
                                return;
                            }
                        }
                    });
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn http_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body: Bytes = events()
        .iter()
        .map(|e| {
            let kind = serde_json::from_str::<serde_json::Value>(e).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned();
            format!("event: {kind}\ndata: {e}\n\n")
        })
        .collect::<String>()
        .into();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        let _ = request.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("content-type", "text/event-stream")
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A proxy started for the benchmark, stopped when dropped (also when the benchmark fails).
struct Started(Child);

impl Started {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The proxy binary, its key on stdin, listening on a free port once this returns.
fn start_proxy(binary: &str, upstream: SocketAddr, mode: &str) -> (Started, u16) {
    let port = free_port();
    let mut child = Command::new(binary)
        .args(["--port", &port.to_string()])
        .args(["--upstream-url", &format!("http://{upstream}/v1/responses")])
        .args(["--websocket-upstream", mode])
        .args(["--log-level", "warn"])
        // One local user opens every socket of the memory measurement.
        .args(["--max-websockets-per-user", "100000"])
        .args(["--max-connections-per-user", "100000"])
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the proxy");
    writeln!(child.stdin.take().unwrap(), "{KEY}").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the proxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Started(child), port)
}

/// The worker's resident memory in KiB: `VmRSS` of the supervisor's child.
fn worker_rss_kib(supervisor: u32) -> u64 {
    let children =
        std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children"))
            .unwrap_or_default();
    let worker = children
        .split_whitespace()
        .next()
        .expect("a worker process");
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

type Socket = WebSocket<tokio::net::TcpStream>;

async fn open(addr: &str, deflate: bool) -> Socket {
    let url = format!("ws://{addr}/v1/responses").parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let request = yawc::HttpRequest::builder().header("authorization", format!("Bearer {KEY}"));
    WebSocket::handshake_with_request(url, tcp, options(deflate), request)
        .await
        .expect("the WebSocket handshake")
}

/// One turn on `socket`: the request sent, the events read up to `response.completed`.
async fn websocket_turn(socket: &mut Socket) {
    socket.send(Frame::text(TURN)).await.unwrap();
    loop {
        let frame = socket
            .next_frame()
            .await
            .expect("the socket ended mid-turn");
        if frame.opcode() != OpCode::Text {
            continue;
        }
        let text = std::str::from_utf8(frame.payload()).unwrap();
        if text.starts_with(r#"{"type":"response.completed""#) {
            return;
        }
        assert!(
            !text.starts_with(r#"{"type":"error""#),
            "the turn failed: {text}"
        );
    }
}

async fn websocket_turns(addr: &str, turns: usize, deflate: bool) -> Vec<Duration> {
    let mut socket = open(addr, deflate).await;
    for _ in 0..turns / 10 {
        websocket_turn(&mut socket).await;
    }
    let mut times = Vec::with_capacity(turns);
    for _ in 0..turns {
        let started = Instant::now();
        websocket_turn(&mut socket).await;
        times.push(started.elapsed());
    }
    times
}

async fn http_turns(addr: SocketAddr, turns: usize) -> Vec<Duration> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let body = {
        let mut turn: serde_json::Value = serde_json::from_str(TURN).unwrap();
        let object = turn.as_object_mut().unwrap();
        object.remove("type");
        object.insert("stream".into(), true.into());
        Bytes::from(turn.to_string())
    };
    let mut times = Vec::with_capacity(turns);
    for n in 0..turns + turns / 10 {
        let request = Request::post("/v1/responses")
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {KEY}"))
            .body(Full::new(body.clone()))
            .unwrap();
        let started = Instant::now();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        if n >= turns / 10 {
            times.push(started.elapsed());
        }
    }
    times
}

struct Summary {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

fn summary(mut times: Vec<Duration>) -> Summary {
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| us(times[((times.len() as f64 * q) as usize).min(times.len() - 1)]);
    Summary {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        mean: times.iter().map(|d| us(*d)).sum::<f64>() / times.len() as f64,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let binary = args
        .get(1)
        .expect("usage: bench_websocket PROXY_BINARY [TURNS] [SOCKETS]")
        .clone();
    let turns: usize = args.get(2).map_or(2000, |n| n.parse().unwrap());
    let sockets: usize = args.get(3).map_or(500, |n| n.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let http_upstream = http_upstream().await;
        for deflate in [false, true] {
            let ws_upstream = websocket_upstream(deflate).await;
            println!(
                "\n== {} ==",
                if deflate {
                    "deflate: permessage-deflate offered by the clients, accepted by the upstream"
                } else {
                    "plain: no permessage-deflate"
                }
            );
            run(&binary, ws_upstream, http_upstream, turns, sockets, deflate).await;
        }
    });
}

async fn run(
    binary: &str,
    ws_upstream: SocketAddr,
    http_upstream: SocketAddr,
    turns: usize,
    sockets: usize,
    deflate: bool,
) {
    let (relaying, relay_port) = start_proxy(binary, ws_upstream, "relay");
    let (serving, serve_port) = start_proxy(binary, http_upstream, "serve");
    let proxy = |port: u16| format!("127.0.0.1:{port}");

    println!("per turn, {turns} turns one after another on one connection (µs):");
    println!(
        "{:<14} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "path", "p50", "p90", "p99", "mean", "added p50"
    );
    let ws_direct = summary(websocket_turns(&ws_upstream.to_string(), turns, deflate).await);
    let ws_relayed = summary(websocket_turns(&proxy(relay_port), turns, deflate).await);
    let ws_served = summary(websocket_turns(&proxy(serve_port), turns, deflate).await);
    let http_direct = summary(http_turns(http_upstream, turns).await);
    let http_proxied =
        summary(http_turns(format!("127.0.0.1:{serve_port}").parse().unwrap(), turns).await);
    for (name, s, base) in [
        ("ws direct", &ws_direct, &ws_direct),
        ("ws relayed", &ws_relayed, &ws_direct),
        ("ws served", &ws_served, &http_direct),
        ("http direct", &http_direct, &http_direct),
        ("http proxied", &http_proxied, &http_direct),
    ] {
        println!(
            "{name:<14} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>+10.0}",
            s.p50,
            s.p90,
            s.p99,
            s.mean,
            s.p50 - base.p50
        );
    }
    println!("(added p50: ws relayed over ws direct; ws served and http proxied over http direct)");

    println!("\nmemory of the worker with {sockets} open sockets, one turn done on each:");
    for (name, child, port) in [
        ("relayed", &relaying, relay_port),
        ("served", &serving, serve_port),
    ] {
        let before = worker_rss_kib(child.id());
        let mut open_sockets = Vec::with_capacity(sockets);
        for _ in 0..sockets {
            let mut socket = open(&proxy(port), deflate).await;
            websocket_turn(&mut socket).await;
            open_sockets.push(socket);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = worker_rss_kib(child.id());
        println!(
            "{name:<8} RSS {before} KiB -> {after} KiB: {:.1} KiB per open socket",
            (after.saturating_sub(before)) as f64 / sockets as f64
        );
        drop(open_sockets);
    }
    drop((relaying, serving));
}
