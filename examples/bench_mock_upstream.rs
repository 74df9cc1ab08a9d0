//! Benchmark mock upstream (not a test): a small, fast hyper server that plays the model
//! provider for `bench/run.sh`.
//!
//! ```text
//! cargo run --release --example bench_mock_upstream -- PORT KEY EVENTS [--chat] [--paced] [--hold SECS] [--threads N] [--tls CERT KEY [--alpn LIST]]
//! ```
//!
//! - Responses mode (default): `POST /v1/responses` answers a Responses SSE stream of `EVENTS`
//!   events (created, in_progress, an output item with `EVENTS - 8` text deltas, completed);
//!   9 events make about 2 KB.
//! - `--chat`: `POST /v1/chat/completions` answers a Chat Completions stream of `EVENTS` data
//!   lines (role, content deltas, finish, usage, `[DONE]`), for the `--bridge-to-chat` route.
//! - Every event is its own body frame (its own HTTP chunk); hyper writes out the frames that
//!   are ready together, so a short stream leaves in one or two writes. `--paced`: yield to the
//!   runtime between two events, so that each event leaves as its own write (TCP segment), as a
//!   provider that generates tokens one at a time streams them.
//! - `--hold SECS`: after the first event, wait SECS seconds (or until the client goes away)
//!   before the rest: this keeps streams open for the memory test.
//! - A request without `Authorization: Bearer KEY` gets 401. `GET /stats` answers
//!   `{"good":G,"bad":B,"other":O}` (requests with the right key, with a wrong or missing key,
//!   and to other paths); the same line is printed on SIGTERM/SIGINT before exiting.
//! - `--threads N`: tokio worker threads (default 2).
//! - `--tls CERT KEY`: serve HTTPS with this PEM certificate chain and key (rustls), for the
//!   HTTPS benchmark (`bench/https.sh`).
//! - `--alpn LIST`: with `--tls`, the protocols offered by ALPN, comma-separated from
//!   `h2,http/1.1` (default: none, so HTTP/1.1). A connection that settles on `h2` is served by
//!   hyper's HTTP/2 server, any other by its HTTP/1.1 server: an upstream that speaks both, as
//!   the OpenAI API does, for `bench/upstream-h2.sh`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

struct Config {
    port: u16,
    authorization: Vec<u8>,
    chat: bool,
    paced: bool,
    hold: Option<Duration>,
    threads: usize,
    events: Arc<[Bytes]>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

#[derive(Default)]
struct Stats {
    good: AtomicU64,
    bad: AtomicU64,
    other: AtomicU64,
}

impl Stats {
    fn line(&self) -> String {
        format!(
            "{{\"good\":{},\"bad\":{},\"other\":{}}}",
            self.good.load(Ordering::Relaxed),
            self.bad.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed)
        )
    }
}

fn sse(event: Option<&str>, data: &serde_json::Value) -> Bytes {
    match event {
        Some(name) => Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

/// A Responses stream of `n` events (at least 9): the shape the OpenAI API streams.
fn responses_events(n: usize) -> Vec<Bytes> {
    let deltas = n.saturating_sub(8).max(1);
    let response = |status: &str, output: serde_json::Value| {
        json!({"id": "resp_bench", "object": "response", "created_at": 1_763_740_000,
               "status": status, "model": "gpt-bench", "output": output,
               "usage": if status == "completed" {
                   json!({"input_tokens": 12, "output_tokens": deltas, "total_tokens": 12 + deltas,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}})
               } else { serde_json::Value::Null }})
    };
    let text: String = (0..deltas).map(|i| format!("word{i} ")).collect();
    let item = |status: &str, text: &str| {
        json!({"id": "msg_bench", "type": "message", "status": status, "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": []}]})
    };
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq - 1
    };
    let mut out = vec![
        sse(
            Some("response.created"),
            &json!({"type": "response.created", "sequence_number": next(),
                    "response": response("in_progress", json!([]))}),
        ),
        sse(
            Some("response.in_progress"),
            &json!({"type": "response.in_progress", "sequence_number": next(),
                    "response": response("in_progress", json!([]))}),
        ),
        sse(
            Some("response.output_item.added"),
            &json!({"type": "response.output_item.added", "sequence_number": next(),
                    "output_index": 0,
                    "item": {"id": "msg_bench", "type": "message", "status": "in_progress",
                             "role": "assistant", "content": []}}),
        ),
        sse(
            Some("response.content_part.added"),
            &json!({"type": "response.content_part.added", "sequence_number": next(),
                    "item_id": "msg_bench", "output_index": 0, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}),
        ),
    ];
    for i in 0..deltas {
        out.push(sse(
            Some("response.output_text.delta"),
            &json!({"type": "response.output_text.delta", "sequence_number": next(),
                    "item_id": "msg_bench", "output_index": 0, "content_index": 0,
                    "delta": format!("word{i} ")}),
        ));
    }
    out.push(sse(
        Some("response.output_text.done"),
        &json!({"type": "response.output_text.done", "sequence_number": next(),
                "item_id": "msg_bench", "output_index": 0, "content_index": 0, "text": text}),
    ));
    out.push(sse(
        Some("response.content_part.done"),
        &json!({"type": "response.content_part.done", "sequence_number": next(),
                "item_id": "msg_bench", "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": text, "annotations": []}}),
    ));
    out.push(sse(
        Some("response.output_item.done"),
        &json!({"type": "response.output_item.done", "sequence_number": next(),
                "output_index": 0, "item": item("completed", &text)}),
    ));
    out.push(sse(
        Some("response.completed"),
        &json!({"type": "response.completed", "sequence_number": next(),
                "response": response("completed", json!([item("completed", &text)]))}),
    ));
    out
}

/// A Chat Completions stream of `n` data lines (at least 4), the last one `[DONE]`.
fn chat_events(n: usize) -> Vec<Bytes> {
    let deltas = n.saturating_sub(4).max(1);
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_763_740_000,
               "model": "gpt-bench",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut out = vec![sse(
        None,
        &chunk(json!({"role": "assistant", "content": ""}), None),
    )];
    for i in 0..deltas {
        out.push(sse(
            None,
            &chunk(json!({"content": format!("word{i} ")}), None),
        ));
    }
    out.push(sse(None, &chunk(json!({}), Some("stop"))));
    out.push(sse(
        None,
        &json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                "created": 1_763_740_000, "model": "gpt-bench", "choices": [],
                "usage": {"prompt_tokens": 12, "completion_tokens": deltas,
                          "total_tokens": 12 + deltas}}),
    ));
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// The streamed body: one frame per event, optionally a yield to the runtime between two (so
/// hyper writes each event out on its own), and an optional hold after the first.
struct EventBody {
    events: Arc<[Bytes]>,
    next: usize,
    paced: bool,
    yielded: bool,
    hold: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.next >= this.events.len() {
            return Poll::Ready(None);
        }
        if this.next == 1 {
            if let Some(hold) = this.hold.as_mut() {
                if hold.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.hold = None;
            }
        }
        if this.paced && this.next > 0 && !this.yielded {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.yielded = false;
        let event = this.events[this.next].clone();
        this.next += 1;
        Poll::Ready(Some(Ok(Frame::data(event))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.events.len()
    }
}

type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
    *response.status_mut() = status;
    response
}

async fn handle(
    config: Arc<Config>,
    stats: Arc<Stats>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let path = if config.chat {
        "/v1/chat/completions"
    } else {
        "/v1/responses"
    };
    if request.method() == Method::GET && request.uri().path() == "/stats" {
        let mut response = Response::new(Full::new(Bytes::from(stats.line())).boxed_unsync());
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        return Ok(response);
    }
    let authorized = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == config.authorization.as_slice());
    // HTTP/2 requests carry the absolute form: compare the path and query alone.
    let routed = request.method() == Method::POST
        && request.uri().path_and_query().map(|p| p.as_str()) == Some(path);
    // Read the whole request body so that the connection stays usable.
    let _ = request.into_body().collect().await;
    if !routed {
        stats.other.fetch_add(1, Ordering::Relaxed);
        return Ok(plain(StatusCode::NOT_FOUND, "not found\n"));
    }
    if !authorized {
        stats.bad.fetch_add(1, Ordering::Relaxed);
        return Ok(plain(StatusCode::UNAUTHORIZED, "bad key\n"));
    }
    stats.good.fetch_add(1, Ordering::Relaxed);
    let body = EventBody {
        events: config.events.clone(),
        next: 0,
        paced: config.paced,
        yielded: false,
        hold: config.hold.map(|d| Box::pin(tokio::time::sleep(d))),
    };
    let mut response = Response::new(body.boxed_unsync());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    Ok(response)
}

fn parse_args() -> Result<Config, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: bench_mock_upstream PORT KEY EVENTS [--chat] [--paced] [--hold SECS] [--threads N] [--tls CERT KEY]";
    if args.len() < 3 {
        return Err(usage.into());
    }
    let number = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("not a number: {s}\n{usage}"))
    };
    let port = number(&args[0])? as u16;
    let key = &args[1];
    let events = number(&args[2])? as usize;
    let (mut chat, mut paced, mut hold, mut threads, mut tls) = (false, false, None, 2, None);
    let mut alpn = Vec::new();
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--chat" => chat = true,
            "--paced" => paced = true,
            "--hold" => hold = Some(Duration::from_secs(number(rest.next().ok_or(usage)?)?)),
            "--threads" => threads = number(rest.next().ok_or(usage)?)?.max(1) as usize,
            "--tls" => {
                let cert = rest.next().ok_or(usage)?;
                let key = rest.next().ok_or(usage)?;
                tls = Some((cert.clone(), key.clone()));
            }
            "--alpn" => {
                for protocol in rest.next().ok_or(usage)?.split(',') {
                    match protocol {
                        "h2" | "http/1.1" => alpn.push(protocol.as_bytes().to_vec()),
                        other => return Err(format!("--alpn: unknown protocol {other}\n{usage}")),
                    }
                }
            }
            other => return Err(format!("unknown argument {other}\n{usage}")),
        }
    }
    let tls = match tls {
        Some((cert, key)) => Some(tls_acceptor(&cert, &key, alpn)?),
        None if alpn.is_empty() => None,
        None => return Err(format!("--alpn needs --tls\n{usage}")),
    };
    let events = if chat {
        chat_events(events)
    } else {
        responses_events(events)
    };
    Ok(Config {
        port,
        authorization: format!("Bearer {key}").into_bytes(),
        chat,
        paced,
        hold,
        threads,
        events: events.into(),
        tls,
    })
}

/// A rustls server configuration from PEM files, offering `alpn` by ALPN.
fn tls_acceptor(
    cert: &str,
    key: &str,
    alpn: Vec<Vec<u8>>,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| e.to_string())?;
    config.alpn_protocols = alpn;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn main() {
    let config = match parse_args() {
        Ok(config) => Arc::new(config),
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(serve(config));
}

async fn serve(config: Arc<Config>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
        .await
        .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{}: {e}", config.port));
    let bytes: usize = config.events.iter().map(Bytes::len).sum();
    eprintln!(
        "bench_mock_upstream: 127.0.0.1:{}, {} events ({bytes} bytes) per response",
        config.port,
        config.events.len()
    );
    let stats = Arc::new(Stats::default());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let _ = stream.set_nodelay(true);
        let (config, stats) = (config.clone(), stats.clone());
        tokio::spawn(async move {
            let tls = config.tls.clone();
            let service = service_fn(move |request| handle(config.clone(), stats.clone(), request));
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let http2 = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        );
                        let _ = http2.serve_connection(TokioIo::new(stream), service).await;
                    } else {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            }
        });
    }
    println!("{}", stats.line());
}
