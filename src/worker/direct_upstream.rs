//! The strict route's fast path to a plain-HTTP upstream with a static key: our own pool of
//! HTTP/1.1 connections (hyper's client connection API), each driven from inside the response
//! body's `poll_frame`. Driving the connection in the same task as the body lets one poll
//! decode every chunk that has already arrived and hand the client all of it as one frame —
//! one write for a burst of SSE events instead of one write per event, which is what reqwest's
//! separately-spawned connection task produces. HTTPS upstreams and refreshable credentials go
//! through the general client (`upstream.rs`).

use super::http::{Body, BoxError, FrameGate, Gathered, UpstreamStatus, FRAME_LIMIT};
use super::upstream::UpstreamError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, HOST};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::time::Sleep;

type Conn = Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

/// One upstream connection: the request side, the connection future that drives it, and its
/// timer. The timer stays with the connection from request to request: moving a registered
/// tokio timer later is an atomic store, while a new one costs a trip to the timer wheel (and
/// often a wake-up of the runtime) on every request.
struct Pooled {
    sender: SendRequest<Full<Bytes>>,
    conn: Conn,
    idle_since: Instant,
    /// `None` while the response body holds it.
    timer: Option<Pin<Box<Sleep>>>,
}

/// Most idle connections kept, and how long one may stay idle.
const POOL_SIZE: usize = 128;
const POOL_IDLE: Duration = Duration::from_secs(60);

pub struct DirectUpstream {
    host: String,
    port: u16,
    authority: HeaderValue,
    path_and_query: String,
    authorization: HeaderValue,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<Pooled>>,
}

impl DirectUpstream {
    /// `None` unless `url` is plain `http://` with a host.
    pub fn new(
        url: &reqwest::Url,
        authorization: HeaderValue,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<Arc<Self>> {
        if url.scheme() != "http" {
            return None;
        }
        let host = url.host_str()?.trim_matches(['[', ']']).to_owned();
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
            host,
            port,
            authority: HeaderValue::from_str(&authority).ok()?,
            path_and_query,
            authorization,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// Sends the request; the response body keeps driving the connection and returns it to
    /// the pool when it ends cleanly.
    pub async fn post(
        self: &Arc<Self>,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Body>, UpstreamError> {
        headers.insert(HOST, self.authority.clone());
        headers.insert(AUTHORIZATION, self.authorization.clone());
        let request = || {
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = hyper::Method::POST;
            *request.uri_mut() = self
                .path_and_query
                .parse()
                .expect("a URL path is a valid request target");
            *request.headers_mut() = headers.clone();
            request
        };
        // A pooled connection the upstream closed meanwhile fails before the request is
        // sent; then (only then) the request goes again on a new connection.
        if let Some(pooled) = self.checkout().await {
            match self.exchange(pooled, request()).await {
                Err(Exchange::NotSent) => {}
                Err(Exchange::Failed(error)) => return Err(error),
                Ok(response) => return Ok(response),
            }
        }
        let fresh = self.connect().await?;
        match self.exchange(fresh, request()).await {
            Ok(response) => Ok(response),
            Err(Exchange::NotSent) => Err(UpstreamError::Unreachable(
                "the upstream closed the connection".into(),
            )),
            Err(Exchange::Failed(error)) => Err(error),
        }
    }

    /// An idle connection that is still usable, if any.
    async fn checkout(&self) -> Option<Pooled> {
        loop {
            let mut pooled = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.pop()?
            };
            if pooled.idle_since.elapsed() > POOL_IDLE {
                continue;
            }
            let usable = poll_fn(|cx| {
                if pooled.conn.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                match pooled.sender.poll_ready(cx) {
                    Poll::Ready(result) => Poll::Ready(result.is_ok()),
                    // Busy or closing: not for us.
                    Poll::Pending => Poll::Ready(false),
                }
            })
            .await;
            if usable {
                return Some(pooled);
            }
        }
    }

    async fn connect(&self) -> Result<Pooled, UpstreamError> {
        let connecting = TcpStream::connect((self.host.as_str(), self.port));
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(UpstreamError::Unreachable(e.to_string())),
            Err(_) => {
                return Err(UpstreamError::Timeout(format!(
                    "no connection within {:?}",
                    self.connect_timeout
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Unreachable(innermost(&e)))?;
        Ok(Pooled {
            sender,
            conn: Box::pin(conn),
            idle_since: Instant::now(),
            timer: None,
        })
    }

    /// Sends `request` on `pooled`, driving the connection until the response head arrives.
    async fn exchange(
        self: &Arc<Self>,
        mut pooled: Pooled,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Body>, Exchange> {
        let mut sending = Box::pin(pooled.sender.try_send_request(request));
        let mut timer = pooled
            .timer
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep(self.idle_timeout)));
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + self.idle_timeout);
        let mut conn_done = false;
        // The request is queued first so that the same poll of the connection writes it.
        let head = poll_fn(|cx| {
            if let Poll::Ready(head) = sending.as_mut().poll(cx) {
                return Poll::Ready(Some(head));
            }
            if !conn_done && pooled.conn.as_mut().poll(cx).is_ready() {
                conn_done = true;
            }
            if let Poll::Ready(head) = sending.as_mut().poll(cx) {
                return Poll::Ready(Some(head));
            }
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await;
        let head = match head {
            None => {
                return Err(Exchange::Failed(UpstreamError::Timeout(format!(
                    "no response within {:?}",
                    self.idle_timeout
                ))))
            }
            Some(Err(mut error)) => {
                return Err(if error.take_message().is_some() {
                    Exchange::NotSent
                } else {
                    Exchange::Failed(UpstreamError::Unreachable(innermost(error.error())))
                })
            }
            Some(Ok(head)) => head,
        };
        drop(sending);
        let (parts, incoming) = head.into_parts();
        let status = parts.status;
        let body = DrivenBody {
            incoming,
            conn: (!conn_done).then_some(pooled),
            pool: self.clone(),
            idle_timer: Some(timer),
            idle_timeout: self.idle_timeout,
            gate: FrameGate::default(),
        };
        let mut response = Response::new(body.boxed_unsync());
        *response.status_mut() = status;
        *response.headers_mut() = super::headers::for_client(&parts.headers);
        response
            .extensions_mut()
            .insert(UpstreamStatus(status.as_u16()));
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
    /// The connection was dead before the request left: safe to send again.
    NotSent,
    Failed(UpstreamError),
}

fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The upstream response body, polled together with its connection.
struct DrivenBody {
    incoming: Incoming,
    /// The connection, while this body owns it (`None` once it has closed).
    conn: Option<Pooled>,
    pool: Arc<DirectUpstream>,
    /// Fails the body when the upstream sends nothing for `idle_timeout`; goes back to the
    /// pool with the connection.
    idle_timer: Option<Pin<Box<Sleep>>>,
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
        let mut merged = Gathered::default();
        let mut conn_polled_since_data = false;
        loop {
            match Pin::new(&mut this.incoming).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        merged.push(data);
                        conn_polled_since_data = false;
                        if merged.len() >= FRAME_LIMIT {
                            break;
                        }
                    }
                    continue;
                }
                Poll::Ready(Some(Err(error))) => {
                    this.conn = None;
                    this.gate.pending_error = Some(error.into());
                    break;
                }
                Poll::Ready(None) => {
                    this.gate.ended = true;
                    if let Some(mut pooled) = this.conn.take() {
                        pooled.timer = this.idle_timer.take();
                        this.pool.checkin(pooled);
                    }
                    break;
                }
                Poll::Pending => {}
            }
            if conn_polled_since_data {
                break;
            }
            conn_polled_since_data = true;
            if let Some(pooled) = this.conn.as_mut() {
                if pooled.conn.as_mut().poll(cx).is_ready() {
                    // Closed: the body now ends or fails on its next poll.
                    this.conn = None;
                    conn_polled_since_data = false;
                }
            }
        }
        if !merged.is_empty() {
            if let Some(timer) = this.idle_timer.as_mut() {
                // Later than before: tokio only records the new time.
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + this.idle_timeout);
            }
            return this.gate.frame(merged.into_bytes());
        }
        if let Some(error) = this.gate.pending_error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        if this.gate.ended {
            return Poll::Ready(None);
        }
        let stalled = this
            .idle_timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
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
