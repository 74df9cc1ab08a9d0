//! Benchmark forwarder (not a test): one server loop, three kinds of upstream client over TLS,
//! to weigh HTTP/1.1 against HTTP/2 to an upstream that offers both (`bench/upstream-h2.sh`).
//!
//! ```text
//! cargo run --release --example bench_upstream_client -- PORT UPSTREAM_URL KEY CA_PEM \
//!     --client ours|h1|h2 [--connections N] [--threads N | --shards N]
//! ```
//!
//! Every request, whatever its method and path, is forwarded (headers less `Host` and the
//! connection-specific ones, body collected first, `Authorization: Bearer KEY` added) to the
//! `https://` `UPSTREAM_URL`, whose certificate must chain to `CA_PEM`; the response streams back
//! frame by frame as the client yields it. The server side is hyper's HTTP/1.1 server, as in
//! the proxy; no checks, no logging, no privilege separation. The client side is one of:
//!
//! - `--client ours`: the proxy's own fast-path client (`benching::FastPathClient`, the
//!   strict route's `direct_upstream`: its pool of HTTP/1.1 connections over tokio-rustls
//!   offering only `http/1.1`, the body decoded in the response's `poll_frame`), with the
//!   key, host and length it adds itself and the client's headers it lets through.
//! - `--client h1`: `hyper::client::conn::http1` over tokio-rustls offering only `http/1.1` by
//!   ALPN (as the proxy's fast path does), a pool of idle connections: a request takes one (or
//!   opens one), and the connection goes back when its response body has ended.
//! - `--client h2`: `hyper::client::conn::http2` over tokio-rustls offering only `h2`, `N`
//!   connections (`--connections`, default 1) opened on first use, every request multiplexed
//!   on the next one round-robin.
//!
//! TLS sessions are resumed (rustls' default in-memory cache). By default one multi-threaded
//! tokio runtime serves everything (`--threads N` worker threads, default the CPU count).
//! `--shards N` instead runs N threads, each with its own single-threaded runtime, listening
//! socket (`SO_REUSEPORT`) and upstream connections (its own pool, or its own `--connections`
//! HTTP/2 connections), the way the proxy's worker runs one shard per core.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, TE,
    TRANSFER_ENCODING, UPGRADE,
};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;
type H1Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

enum Client {
    /// The proxy's own fast-path client (one pool of HTTP/1.1 connections).
    Ours(codex_responses_api_proxy::benching::FastPathClient),
    /// Idle HTTP/1.1 connections, last in first out.
    H1(Mutex<Vec<H1Sender>>),
    /// HTTP/2 connections, each opened on first use (or again once closed).
    H2 {
        slots: Vec<tokio::sync::Mutex<Option<H2Sender>>>,
        next: AtomicUsize,
    },
}

struct Forwarder {
    client: Client,
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    address: String,
    /// The whole URL (HTTP/2 wants scheme and authority) and its path (HTTP/1.1's origin form).
    url: Uri,
    path: Uri,
    host: HeaderValue,
    authorization: HeaderValue,
}

impl Forwarder {
    async fn connect(
        &self,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, BoxError> {
        let tcp = tokio::net::TcpStream::connect(&self.address).await?;
        tcp.set_nodelay(true)?;
        let tls = self.tls.connect(self.server_name.clone(), tcp).await?;
        Ok(TokioIo::new(tls))
    }

    async fn h1_sender(&self, idle: &Mutex<Vec<H1Sender>>) -> Result<H1Sender, BoxError> {
        loop {
            let Some(mut sender) = idle.lock().expect("pool").pop() else {
                break;
            };
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let (sender, connection) =
            hyper::client::conn::http1::handshake(self.connect().await?).await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn h2_sender(
        &self,
        slots: &[tokio::sync::Mutex<Option<H2Sender>>],
        next: &AtomicUsize,
    ) -> Result<H2Sender, BoxError> {
        let slot = &slots[next.fetch_add(1, Ordering::Relaxed) % slots.len()];
        let mut slot = slot.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let io = self.connect().await?;
        if io.inner().get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err("the upstream did not agree to h2 by ALPN".into());
        }
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(connection);
        *slot = Some(sender.clone());
        Ok(sender)
    }
}

/// The upstream's response body; an HTTP/1.1 connection goes back to the pool at its end.
struct Returning {
    inner: Incoming,
    sender: Option<(H1Sender, Arc<Forwarder>)>,
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            if let Some((sender, forwarder)) = self.sender.take() {
                if let Client::H1(idle) = &forwarder.client {
                    idle.lock().expect("pool").push(sender);
                }
            }
        }
        Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
    }
}

fn bad_gateway(e: BoxError) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{e}\n")))
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

async fn forward(
    forwarder: Arc<Forwarder>,
    request: Request<Incoming>,
) -> Result<Response<Body>, BoxError> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    if let Client::Ours(client) = &forwarder.client {
        // It filters the client's headers and adds the key, the host and the length itself.
        return Ok(client
            .post(&parts.headers, body)
            .await
            .unwrap_or_else(|e| bad_gateway(e.into())));
    }
    let mut headers = parts.headers;
    for name in [
        HOST,
        CONTENT_LENGTH,
        CONNECTION,
        TRANSFER_ENCODING,
        TE,
        UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove(HeaderName::from_static("keep-alive"));
    headers.insert(AUTHORIZATION, forwarder.authorization.clone());
    let h2 = matches!(forwarder.client, Client::H2 { .. });
    if !h2 {
        headers.insert(HOST, forwarder.host.clone());
    }
    let mut upstream = Request::new(Full::new(body));
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = if h2 {
        forwarder.url.clone()
    } else {
        forwarder.path.clone()
    };
    *upstream.headers_mut() = headers;
    let result = match &forwarder.client {
        Client::H1(idle) => match forwarder.h1_sender(idle).await {
            Ok(mut sender) => match sender.send_request(upstream).await {
                Ok(response) => Ok(response.map(|inner| Returning {
                    inner,
                    sender: Some((sender, forwarder.clone())),
                })),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        },
        Client::Ours(_) => unreachable!("answered above"),
        Client::H2 { slots, next } => match forwarder.h2_sender(slots, next).await {
            Ok(mut sender) => match sender.send_request(upstream).await {
                Ok(response) => Ok(response.map(|inner| Returning {
                    inner,
                    sender: None,
                })),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        },
    };
    let response = match result {
        Ok(response) => response,
        Err(e) => return Ok(bad_gateway(e)),
    };
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(TRANSFER_ENCODING);
    parts.headers.remove(CONNECTION);
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_upstream_client PORT UPSTREAM_URL KEY CA_PEM --client ours|h1|h2 [--connections N] [--threads N | --shards N]"
    );
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        usage();
    }
    let port: u16 = args[0].parse().unwrap_or_else(|_| usage());
    let url: Uri = args[1].parse().unwrap_or_else(|_| usage());
    let (mut kind, mut connections, mut threads, mut shards) = (None, 1usize, None, None);
    let mut rest = args[4..].iter();
    while let Some(arg) = rest.next() {
        let value = rest.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--client" if ["ours", "h1", "h2"].contains(&value.as_str()) => {
                kind = Some(value.clone())
            }
            "--connections" => connections = value.parse().unwrap_or_else(|_| usage()),
            "--threads" => threads = Some(value.parse().unwrap_or_else(|_| usage())),
            "--shards" => shards = Some(value.parse::<usize>().unwrap_or_else(|_| usage()).max(1)),
            _ => usage(),
        }
    }
    let kind = kind.unwrap_or_else(|| usage());
    if url.scheme_str() != Some("https") {
        eprintln!("bench_upstream_client: UPSTREAM_URL must be https://");
        std::process::exit(2);
    }
    let authority = url.authority().expect("UPSTREAM_URL has a host").clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args[3]).expect("CA_PEM") {
        roots.add(cert.expect("CA_PEM")).expect("CA certificate");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![if kind == "h2" {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let tls_config = Arc::new(tls);
    let tls = tokio_rustls::TlsConnector::from(tls_config.clone());
    let make_forwarder = || {
        let client = if kind == "ours" {
            Client::Ours(
                codex_responses_api_proxy::benching::FastPathClient::new(
                    &url.to_string(),
                    HeaderValue::from_str(&format!("Bearer {}", args[2])).expect("KEY"),
                    tls_config.clone(),
                )
                .expect("UPSTREAM_URL"),
            )
        } else if kind == "h2" {
            Client::H2 {
                slots: (0..connections.max(1))
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                next: AtomicUsize::new(0),
            }
        } else {
            Client::H1(Mutex::new(Vec::new()))
        };
        Arc::new(Forwarder {
            client,
            tls: tls.clone(),
            server_name: ServerName::try_from(host.to_string()).expect("UPSTREAM_URL host"),
            address: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(443)
            ),
            path: url
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .parse()
                .expect("path"),
            url: url.clone(),
            host: HeaderValue::from_str(authority.as_str()).expect("host"),
            authorization: HeaderValue::from_str(&format!("Bearer {}", args[2])).expect("KEY"),
        })
    };
    let Some(shards) = shards else {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        if let Some(threads) = threads {
            runtime.worker_threads(threads);
        }
        let runtime = runtime.enable_all().build().expect("tokio runtime");
        let forwarder = make_forwarder();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{port}: {e}"));
            serve(listener, forwarder).await
        });
        return;
    };
    // One thread per shard, each with its own single-threaded runtime, listening socket
    // (SO_REUSEPORT: the kernel spreads the connections) and upstream connections.
    let threads: Vec<_> = (0..shards)
        .map(|_| {
            let forwarder = make_forwarder();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(async move {
                    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                    socket.set_reuseport(true).expect("SO_REUSEPORT");
                    socket
                        .bind(([127, 0, 0, 1], port).into())
                        .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{port}: {e}"));
                    serve(socket.listen(1024).expect("listen"), forwarder).await
                })
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

async fn serve(listener: tokio::net::TcpListener, forwarder: Arc<Forwarder>) {
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
}
