//! The strict route's fast path to the upstream with a static key, for `http://` and
//! `https://` alike: our own pool of HTTP/1.1 connections (plain TCP, or TLS over it with the
//! one rustls configuration of `connection.rs`, offering only `http/1.1` by ALPN and resuming
//! TLS sessions from its shared cache), each driven from inside the response body's
//! `poll_frame`. The request head and body leave in one vectored write (one TLS record and one
//! system call when they fit); the response is read into one buffer per connection and decoded
//! there (`upstream_wire.rs`), and everything that has already arrived is handed to the client
//! as one frame: one write for a burst of SSE events, where reqwest's separately spawned
//! connection task gives one write per event. Behind an egress proxy an `https://` upstream is
//! reached the same way through the proxy's CONNECT tunnel (`UpstreamConnection::open_stream`);
//! an `http://` one behind a proxy (absolute-form requests) and refreshable credentials go
//! through the general client (`mod.rs`).
//!
//! Uses: `crate::worker::server`, `crate::worker::upstream` and bytes, http_body_util, hyper,
//! reqwest, rustls, tokio, tokio-rustls, zeroize.

use crate::worker::server::http::{
    Body, BoxError, FrameGate, Gathered, UpstreamStatus, FRAME_LIMIT,
};
use crate::worker::upstream::connection::{tls_failure, UpstreamConnection};
use crate::worker::upstream::upstream_wire::{
    encode_request_head, parse_response_head, BodyDecoder, Decoded, HeadParse, ResponseHead,
};
use crate::worker::upstream::UpstreamError;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as HttpBody, Frame};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::Response;
use rustls::pki_types::ServerName;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

/// The byte stream to the upstream: plain TCP, or TLS over it (boxed: a rustls connection is
/// large, and pooled connections move in and out of a `Vec`).
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}

/// One upstream connection with its read buffer and its timer. The timer stays with the
/// connection from request to request: moving a registered tokio timer later is an atomic
/// store, while a new one costs a trip to the timer wheel (and often a wake-up of the runtime)
/// on every request.
struct Pooled {
    stream: Transport,
    /// Bytes read and not yet consumed; empty whenever the connection is idle.
    read_buf: BytesMut,
    timer: Pin<Box<Sleep>>,
    idle_since: Instant,
}

/// Most idle connections kept, and how long one may stay idle.
const POOL_SIZE: usize = 128;
const POOL_IDLE: Duration = Duration::from_secs(60);
/// The read buffer grows by this much whenever less than a quarter of it is free.
const READ_CHUNK: usize = 16 * 1024;

/// What an `https://` upstream's connections are made with.
struct TlsTarget {
    connector: TlsConnector,
    name: ServerName<'static>,
}

pub(crate) struct DirectUpstream {
    /// The upstream URL (its scheme picks the egress proxy, if any).
    url: reqwest::Url,
    /// How a new connection reaches the upstream: directly or through a CONNECT tunnel.
    connection: UpstreamConnection,
    host: String,
    port: u16,
    /// `None` for `http://`.
    tls: Option<TlsTarget>,
    authority: HeaderValue,
    path_and_query: String,
    authorization: HeaderValue,
    /// Billing headers and the encoding asked for.
    policy: crate::worker::upstream::headers::UpstreamRequestPolicy,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<Pooled>>,
}

impl DirectUpstream {
    /// `None` unless `url` is `http://` or `https://` with a host, and for an `http://` URL
    /// that goes through an egress proxy. `https://` connections use the one TLS configuration
    /// offering only HTTP/1.1 (`UpstreamConnection::http1_tls`).
    pub(crate) fn new(
        url: &reqwest::Url,
        authorization: HeaderValue,
        policy: crate::worker::upstream::headers::UpstreamRequestPolicy,
        connect_timeout: Duration,
        idle_timeout: Duration,
        connection: &UpstreamConnection,
    ) -> Option<Arc<Self>> {
        if url.scheme() == "http" && connection.proxied(url) {
            return None;
        }
        let tls = connection.http1_tls();
        let host = url.host_str()?.trim_matches(['[', ']']).to_owned();
        let tls = match url.scheme() {
            "http" => None,
            "https" => Some(TlsTarget {
                connector: TlsConnector::from(tls),
                name: ServerName::try_from(host.clone()).ok()?,
            }),
            _ => return None,
        };
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str()?),
            None => url.host_str()?.to_owned(),
        };
        let path_and_query = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        Some(Arc::new(DirectUpstream {
            url: url.clone(),
            connection: connection.clone(),
            host,
            port,
            tls,
            authority: HeaderValue::from_str(&authority).ok()?,
            path_and_query,
            authorization,
            policy,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// Sends the request with the client's end-to-end headers; the response body keeps
    /// driving the connection and returns it to the pool when it ends cleanly.
    pub(crate) async fn post(
        self: &Arc<Self>,
        client_headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<Body>, UpstreamError> {
        // It holds the key: sized so that it never moves (which would leave a copy behind)
        // and wiped when dropped, however the request ends. (rustls encrypts what it is given
        // in place, in its own record buffer: no plaintext copy of the key stays there.)
        // At least as long as the fields written (the client's, before filtering, and the
        // proxy's own), without filtering them twice.
        let fields: usize = client_headers
            .iter()
            .chain(self.policy.fixed_fields())
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let capacity = 128
            + self.path_and_query.len()
            + self.authority.len()
            + self.authorization.len()
            + fields;
        let mut head = Zeroizing::new(Vec::with_capacity(capacity));
        encode_request_head(
            &mut head,
            &self.path_and_query,
            &self.authority,
            &self.authorization,
            crate::worker::upstream::headers::upstream_fields(client_headers, &self.policy),
            body.len(),
        );
        debug_assert!(
            head.len() <= capacity,
            "the request head outgrew its buffer"
        );
        // A pooled connection the upstream closed (and `checkout` did not notice yet) fails
        // the write only if it has already been reset; then, and only then, the request goes
        // again on a new connection. One whose end arrives after the write fails the request
        // with a 502: a POST is never sent twice.
        if let Some(pooled) = self.checkout() {
            match self.exchange(pooled, &head, &body).await {
                Err(Exchange::NotSent(_)) => {}
                Err(Exchange::Failed(error)) => return Err(error),
                Ok(response) => return Ok(response),
            }
        }
        let fresh = self.connect().await?;
        match self.exchange(fresh, &head, &body).await {
            Ok(response) => Ok(response),
            Err(Exchange::NotSent(detail)) => Err(UpstreamError::Unreachable(detail)),
            Err(Exchange::Failed(error)) => Err(error),
        }
    }

    /// An idle connection that is still open and silent, if any.
    fn checkout(&self) -> Option<Pooled> {
        loop {
            let mut pooled = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.pop()?
            };
            if pooled.idle_since.elapsed() > POOL_IDLE {
                continue;
            }
            // Without a request outstanding, anything readable (an end, a reset, a TLS
            // close_notify, stray bytes) means the connection cannot carry the next one; TLS
            // messages that carry no data (a session ticket) are taken in passing. tokio
            // answers `Pending` without a system call while the socket is known not readable,
            // and the waker given here is replaced by the real one when the request is sent.
            let mut probe = [0u8; 1];
            let mut probe = ReadBuf::new(&mut probe);
            let mut cx = Context::from_waker(Waker::noop());
            if Pin::new(&mut pooled.stream)
                .poll_read(&mut cx, &mut probe)
                .is_pending()
            {
                return Some(pooled);
            }
        }
    }

    /// A new connection: TCP, and the TLS handshake for `https://`, within the connect
    /// timeout.
    async fn connect(&self) -> Result<Pooled, UpstreamError> {
        let connecting = async {
            let tcp = self
                .connection
                .open_stream(&self.url, &self.host, self.port)
                .await
                .map_err(UpstreamError::Unreachable)?;
            let _ = tcp.set_nodelay(true);
            Ok::<_, UpstreamError>(match &self.tls {
                None => Transport::Plain(tcp),
                Some(tls) => Transport::Tls(Box::new(
                    tls.connector
                        .connect(tls.name.clone(), tcp)
                        .await
                        .map_err(|e| match tls_failure(&e) {
                            Some(why) => UpstreamError::Tls(why),
                            None => UpstreamError::Unreachable(e.to_string()),
                        })?,
                )),
            })
        };
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(UpstreamError::Timeout(format!(
                    "no connection within {:?}",
                    self.connect_timeout
                )))
            }
        };
        Ok(Pooled {
            stream,
            read_buf: BytesMut::new(),
            timer: Box::pin(tokio::time::sleep(self.idle_timeout)),
            idle_since: Instant::now(),
        })
    }

    /// Writes the request on `pooled` while reading the response head, all within the idle
    /// timeout; the body stays with the connection. An upstream may answer before it has
    /// read the whole request (a 413, say) and stop reading: its answer is taken as it is,
    /// the rest of the request is not sent, and the connection is not used again.
    async fn exchange(
        self: &Arc<Self>,
        mut pooled: Pooled,
        head: &[u8],
        body: &[u8],
    ) -> Result<Response<Body>, Exchange> {
        pooled
            .timer
            .as_mut()
            .reset(tokio::time::Instant::now() + self.idle_timeout);
        let outcome = {
            let Pooled {
                stream,
                read_buf,
                timer,
                ..
            } = &mut pooled;
            let (mut head_left, mut body_left) = (head, body);
            // `None` while writing; then whether the whole request left.
            let mut sent: Option<Result<(), io::Error>> = None;
            poll_fn(|cx| {
                if sent.is_none() {
                    if let Poll::Ready(result) =
                        poll_write_request(stream, cx, &mut head_left, &mut body_left)
                    {
                        sent = Some(result);
                    }
                }
                match poll_read_head(stream, read_buf, cx) {
                    Poll::Ready(Ok(head)) => {
                        let whole = matches!(sent, Some(Ok(())));
                        return Poll::Ready(Some(Ok((head, whole))));
                    }
                    Poll::Ready(Err(error)) => {
                        // With the request cut short, the upstream cannot have acted on it.
                        return Poll::Ready(Some(Err(match sent.take() {
                            Some(Err(write_error)) => Exchange::NotSent(io_failure(&write_error)),
                            _ => Exchange::Failed(error),
                        })));
                    }
                    Poll::Pending => {}
                }
                timer.as_mut().poll(cx).map(|()| None)
            })
            .await
        };
        let (mut head, whole_request_sent) = match outcome {
            None => {
                return Err(Exchange::Failed(UpstreamError::Timeout(format!(
                    "no response within {:?}",
                    self.idle_timeout
                ))))
            }
            Some(outcome) => outcome?,
        };
        head.reusable &= whole_request_sent;
        // The body's idle limit counts from the head.
        pooled
            .timer
            .as_mut()
            .reset(tokio::time::Instant::now() + self.idle_timeout);
        let status = head.status;
        let decoder = BodyDecoder::new(head.framing);
        let body = if decoder.is_done() {
            // No body (204, 304, a zero length): the connection is free now. hyper would
            // never poll a 204's body, so the body must not be what returns it.
            if head.reusable && pooled.read_buf.is_empty() {
                self.checkin(pooled);
            }
            Empty::new().map_err(|never| match never {}).boxed_unsync()
        } else {
            DrivenBody {
                decoder,
                reusable: head.reusable,
                conn: Some(pooled),
                pool: self.clone(),
                idle_timeout: self.idle_timeout,
                gate: FrameGate::default(),
            }
            .boxed_unsync()
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = head.headers;
        response
            .extensions_mut()
            .insert(UpstreamStatus(status.as_u16()));
        response
            .extensions_mut()
            .insert(crate::worker::upstream::SentCredential(
                self.authorization.clone(),
            ));
        Ok(response)
    }

    fn checkin(&self, mut pooled: Pooled) {
        pooled.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_SIZE {
            idle.push(pooled);
        }
    }
}

enum Exchange {
    /// Writing the request failed, so the upstream cannot have acted on it: safe to send
    /// again on a new connection.
    NotSent(String),
    Failed(UpstreamError),
}

/// An I/O error in words: why the TLS layer refused, when it did (never a URL or a header).
fn io_failure(error: &io::Error) -> String {
    tls_failure(error).unwrap_or_else(|| error.to_string())
}

/// Writes what is left of the request head and body, in as few system calls (and TLS
/// records) as the connection allows, then flushes what TLS still holds.
fn poll_write_request(
    stream: &mut Transport,
    cx: &mut Context<'_>,
    head: &mut &[u8],
    body: &mut &[u8],
) -> Poll<io::Result<()>> {
    while !head.is_empty() || !body.is_empty() {
        let slices = [IoSlice::new(head), IoSlice::new(body)];
        let written = ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        let from_head = written.min(head.len());
        *head = &head[from_head..];
        *body = &body[written - from_head..];
    }
    Pin::new(stream).poll_flush(cx)
}

/// Reads until the final response head is complete, skipping interim (1xx) responses; the
/// bytes after it stay in `read_buf`.
fn poll_read_head(
    stream: &mut Transport,
    read_buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<Result<ResponseHead, UpstreamError>> {
    loop {
        // A pooled connection's buffer is empty when the request goes out: read first.
        if !read_buf.is_empty() {
            match parse_response_head(read_buf) {
                Err(error) => return Poll::Ready(Err(UpstreamError::Protocol(error.to_string()))),
                Ok(HeadParse::Interim(len)) => {
                    read_buf.advance(len);
                    continue;
                }
                Ok(HeadParse::Complete(head, len)) => {
                    read_buf.advance(len);
                    return Poll::Ready(Ok(head));
                }
                Ok(HeadParse::Partial) => {}
            }
        }
        match ready!(poll_fill(stream, read_buf, cx)) {
            Ok(0) => return Poll::Ready(Err(closed_before_answering())),
            Ok(_) => {}
            // A TLS connection's end without its close_notify.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Poll::Ready(Err(closed_before_answering()))
            }
            Err(e) => return Poll::Ready(Err(UpstreamError::Protocol(io_failure(&e)))),
        }
    }
}

fn closed_before_answering() -> UpstreamError {
    UpstreamError::Protocol("the upstream closed the connection before answering".into())
}

/// Reads what the connection has into the free end of `buf`; `Ok(0)` is the end of the
/// stream. tokio's `AsyncRead` (unlike its `try_read`) marks the socket not readable after a
/// short read, which spares the `EAGAIN` read that would otherwise follow every response.
fn poll_fill(
    stream: &mut Transport,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    pin!(stream.read_buf(buf)).poll(cx)
}

/// The upstream response body, read from its connection as the client's side polls it.
struct DrivenBody {
    decoder: BodyDecoder,
    /// Whether the connection may go back to the pool once the body is complete.
    reusable: bool,
    /// The connection, until the body ends or fails.
    conn: Option<Pooled>,
    pool: Arc<DirectUpstream>,
    /// The body fails when the upstream sends nothing for this long.
    idle_timeout: Duration,
    gate: FrameGate,
}

impl HttpBody for DrivenBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(early) = this.gate.before_poll(cx) {
            return early;
        }
        let Some(conn) = this.conn.as_mut() else {
            // Only reached after an end or error the gate has already reported.
            return Poll::Ready(None);
        };
        let mut merged = Gathered::default();
        // `Some` once the body has ended (Ok) or failed (Err).
        let finished: Option<Result<(), BoxError>> = loop {
            match this.decoder.decode(&mut conn.read_buf) {
                Ok(Decoded::Data(data)) => {
                    merged.push(data);
                    if merged.len() >= FRAME_LIMIT {
                        break None;
                    }
                }
                Ok(Decoded::End) => break Some(Ok(())),
                Err(error) => break Some(Err(error.into())),
                Ok(Decoded::NeedMore) => {
                    match poll_fill(&mut conn.stream, &mut conn.read_buf, cx) {
                        Poll::Ready(Ok(0)) => {
                            this.reusable = false;
                            break Some(this.decoder.at_eof().map_err(Into::into));
                        }
                        // A TLS connection's end without its close_notify: an end like a
                        // plain one (the body's own framing says whether it is complete).
                        Poll::Ready(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                            this.reusable = false;
                            break Some(this.decoder.at_eof().map_err(Into::into));
                        }
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(error)) => break Some(Err(error.into())),
                        Poll::Pending => break None,
                    }
                }
            }
        };
        match finished {
            None => {}
            Some(Ok(())) => {
                this.gate.ended = true;
                if let Some(pooled) = this.conn.take() {
                    // Bytes past the end of the body would be read as the next response.
                    if this.reusable && pooled.read_buf.is_empty() {
                        this.pool.checkin(pooled);
                    }
                }
            }
            Some(Err(error)) => {
                this.conn = None;
                if merged.is_empty() {
                    this.gate.ended = true;
                    return Poll::Ready(Some(Err(error)));
                }
                this.gate.pending_error = Some(error);
            }
        }
        if !merged.is_empty() {
            if let Some(conn) = this.conn.as_mut() {
                // Later than before: tokio only records the new time.
                conn.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + this.idle_timeout);
            }
            return this.gate.frame(merged.into_bytes());
        }
        if this.gate.ended {
            return Poll::Ready(None);
        }
        let stalled = this
            .conn
            .as_mut()
            .is_some_and(|conn| conn.timer.as_mut().poll(cx).is_ready());
        if stalled {
            this.conn = None;
            this.gate.ended = true;
            return Poll::Ready(Some(Err(format!(
                "the upstream stream stalled for {:?}",
                this.idle_timeout
            )
            .into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.gate.is_end_stream()
    }
}
