//! Benchmark baseline (not a test): the barest forwarder our stack can make, to show the floor
//! cost of hyper (server) + reqwest (client) + tokio for `bench/run.sh`.
//!
//! ```text
//! cargo run --release --example bench_bare_forwarder -- PORT UPSTREAM_URL KEY [--threads N]
//! ```
//!
//! Every request, whatever its method and path, is sent as-is (method, headers less `Host`,
//! body) to `UPSTREAM_URL` with `Authorization: Bearer KEY` added, and the response streamed
//! back chunk by chunk as reqwest yields it: no checks, no coalescing, no logging, no
//! privilege separation. `--threads N`: tokio worker threads (default: the CPU count).

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, HOST};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

struct Forwarder {
    client: reqwest::Client,
    url: reqwest::Url,
    authorization: HeaderValue,
}

async fn forward(
    forwarder: Arc<Forwarder>,
    request: Request<Incoming>,
) -> Result<Response<Body>, BoxError> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut headers = parts.headers;
    headers.remove(HOST);
    headers.remove(CONTENT_LENGTH);
    headers.insert(AUTHORIZATION, forwarder.authorization.clone());
    let upstream = match forwarder
        .client
        .request(parts.method, forwarder.url.clone())
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(upstream) => upstream,
        Err(e) => {
            let mut response = Response::new(
                Full::new(Bytes::from(e.to_string()))
                    .map_err(|n| match n {})
                    .boxed_unsync(),
            );
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            return Ok(response);
        }
    };
    let mut response = Response::builder().status(upstream.status());
    for (name, value) in upstream.headers() {
        if name != hyper::header::TRANSFER_ENCODING && name != hyper::header::CONNECTION {
            response = response.header(name, value);
        }
    }
    let stream = upstream
        .bytes_stream()
        .map(|chunk| chunk.map(Frame::data).map_err(BoxError::from));
    Ok(response.body(StreamBody::new(stream).boxed_unsync())?)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 3 && !(args.len() == 5 && args[3] == "--threads") {
        eprintln!("usage: bench_bare_forwarder PORT UPSTREAM_URL KEY [--threads N]");
        std::process::exit(2);
    }
    let port: u16 = args[0].parse().expect("PORT");
    let forwarder = Arc::new(Forwarder {
        client: reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .expect("HTTP client"),
        url: args[1].parse().expect("UPSTREAM_URL"),
        authorization: HeaderValue::from_str(&format!("Bearer {}", args[2])).expect("KEY"),
    });
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.get(4) {
        runtime.worker_threads(threads.parse().expect("--threads N"));
    }
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{port}: {e}"));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let forwarder = forwarder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| forward(forwarder.clone(), request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
