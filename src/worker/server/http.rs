//! The worker's HTTP vocabulary: the response body type every route returns, OpenAI-style
//! error responses, a body that coalesces what the upstream already delivered into one write,
//! and the one log line per request (written when the response body is finished or dropped).
//!
//! Uses: `crate::logging`, `crate::usage`, `crate::worker::identity` and bytes, futures_util,
//! http_body_util, hyper, itoa, openai_wire, tokio, tracing.

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::{header, Response, StatusCode};
use openai_wire::api_error::error_body;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::usage::{Accounting, TokenUsage, UpstreamUsage, UsageTap};
use crate::worker::identity::peer_identity::PeerIdentity;
use crate::worker::server::fair_share::{
    FairShare, FairShareLimits, Refusal, ReservedBody, UnfinishedSlot, UserKey,
};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the worker sends.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Marks a response with the status the upstream answered, for the request log line.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UpstreamStatus(pub u16);

/// Marks a response that the upstream never gave with why (`connect`, `tls`, `timeout`, …),
/// for the metrics.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UpstreamFailure(pub &'static str);

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn json_response(status: StatusCode, json: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(json));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// An OpenAI-style error response.
pub(crate) fn error_response(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
) -> Response<Body> {
    json_response(status, error_body(message, kind, code, None))
}

/// Most bytes merged into one frame; past this, a frame is sent even if more is ready.
pub(crate) const FRAME_LIMIT: usize = 64 * 1024;

/// The chunks one poll of a gathering body received: a single chunk is handed on as it is;
/// several are copied once into a buffer sized for a few more.
#[derive(Default)]
pub(crate) enum Gathered {
    #[default]
    Nothing,
    One(Bytes),
    Merged(BytesMut),
}

impl Gathered {
    pub(crate) fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::take(self) {
            Gathered::Nothing => Gathered::One(chunk),
            Gathered::One(first) => {
                let mut merged = BytesMut::with_capacity(4 * (first.len() + chunk.len()));
                merged.extend_from_slice(&first);
                merged.extend_from_slice(&chunk);
                Gathered::Merged(merged)
            }
            Gathered::Merged(mut merged) => {
                merged.extend_from_slice(&chunk);
                Gathered::Merged(merged)
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Gathered::Nothing => 0,
            Gathered::One(bytes) => bytes.len(),
            Gathered::Merged(merged) => merged.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            Gathered::Nothing => Bytes::new(),
            Gathered::One(bytes) => bytes,
            Gathered::Merged(merged) => merged.freeze(),
        }
    }
}

/// How a gathering body ends, and whether hyper has written its first frame: the state both
/// bodies that merge chunks into frames ([`CoalescingBody`], the direct upstream's body) keep.
///
/// hyper queues the frames of a body that is always ready (up to 16 of them) before it writes
/// anything, which would hold back the response head and first event of a fast stream. So
/// right after handing over its first frame a body answers `Pending` once (asking to be polled
/// again at once) and hyper writes what it has; later frames may be gathered as hyper likes,
/// which keeps a burst to few writes (a body that waits for its upstream is written at once
/// anyway).
#[derive(Default)]
pub(crate) struct FrameGate {
    /// An error met after data was gathered, reported on the next poll.
    pub pending_error: Option<BoxError>,
    pub ended: bool,
    first_frame: FirstFrame,
}

#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum FirstFrame {
    #[default]
    NotYet,
    AwaitingWrite,
    Written,
}

type FrameResult = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

impl FrameGate {
    /// Called at the top of `poll_frame`: the stored error, the end, or `Pending` once right
    /// after the first frame; `None` when the body should gather more.
    pub(crate) fn before_poll(&mut self, cx: &mut Context<'_>) -> Option<FrameResult> {
        if let Some(error) = self.pending_error.take() {
            return Some(Poll::Ready(Some(Err(error))));
        }
        if self.ended {
            return Some(Poll::Ready(None));
        }
        if self.first_frame == FirstFrame::AwaitingWrite {
            self.first_frame = FirstFrame::Written;
            cx.waker().wake_by_ref();
            return Some(Poll::Pending);
        }
        None
    }

    /// Hands `data` over as the next frame.
    pub(crate) fn frame(&mut self, data: Bytes) -> FrameResult {
        if self.first_frame == FirstFrame::NotYet {
            self.first_frame = if self.ended {
                FirstFrame::Written
            } else {
                FirstFrame::AwaitingWrite
            };
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.ended && self.pending_error.is_none()
    }
}

/// A body over a stream of chunks that hands hyper everything already received as one frame,
/// so that a burst of small SSE events becomes one write instead of one segment each.
pub(crate) struct CoalescingBody<S> {
    stream: S,
    gate: FrameGate,
}

impl<S> CoalescingBody<S> {
    pub(crate) fn new(stream: S) -> Self {
        CoalescingBody {
            stream,
            gate: FrameGate::default(),
        }
    }
}

impl<S, E> HttpBody for CoalescingBody<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
{
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
        let first = match Pin::new(&mut this.stream).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                this.gate.ended = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(chunk))) => chunk,
        };
        let mut gathered = Gathered::default();
        gathered.push(first);
        while gathered.len() < FRAME_LIMIT {
            match Pin::new(&mut this.stream).poll_next(cx) {
                Poll::Ready(Some(Ok(more))) => gathered.push(more),
                Poll::Ready(Some(Err(e))) => {
                    this.gate.pending_error = Some(e.into());
                    break;
                }
                Poll::Ready(None) => {
                    this.gate.ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        this.gate.frame(gathered.into_bytes())
    }

    fn is_end_stream(&self) -> bool {
        self.gate.is_end_stream()
    }
}

/// What the request log line says about one request.
pub(crate) struct RequestRecord {
    pub identity: Arc<PeerIdentity>,
    pub method: String,
    pub path: String,
    /// What `routes::classify` made of it (a fixed word: the metrics' route label).
    pub route: &'static str,
    pub status: u16,
    pub upstream_status: Option<u16>,
    /// Why the upstream gave no answer, when it gave none.
    pub upstream_failure: Option<&'static str>,
    pub started: Instant,
    /// When the response body's first byte went out, after `started` (measured only while
    /// the metrics are on).
    pub first_byte: Option<std::time::Duration>,
    pub bytes: u64,
    pub failed: bool,
}

impl RequestRecord {
    pub(crate) fn new(
        method: &hyper::Method,
        uri: &hyper::Uri,
        route: &'static str,
        started: Instant,
        identity: Arc<PeerIdentity>,
    ) -> Self {
        // Paths come from clients: keep the line short and printable.
        let raw = uri.path_and_query().map_or("", |p| p.as_str());
        let path = if raw.len() <= 200 && raw.bytes().all(|b| b.is_ascii_graphic()) {
            raw.to_owned()
        } else {
            let mut path: String = raw.chars().take(200).collect();
            path.retain(|c| !c.is_control());
            path
        };
        RequestRecord {
            identity,
            method: match method.as_str() {
                short if short.len() <= 16 => short.to_owned(),
                long => long.chars().take(16).collect(),
            },
            path,
            route,
            status: 0,
            upstream_status: None,
            upstream_failure: None,
            started,
            first_byte: None,
            bytes: 0,
            failed: false,
        }
    }

    /// Notes the response's status and what it says about the upstream.
    pub(crate) fn answered<B>(&mut self, response: &Response<B>) {
        self.status = response.status().as_u16();
        let extensions = response.extensions();
        self.upstream_status = extensions.get::<UpstreamStatus>().map(|s| s.0);
        self.upstream_failure = extensions.get::<UpstreamFailure>().map(|f| f.0);
    }

    /// Notes the first byte of the response body going out (once, and only while the
    /// metrics are on: it reads the clock).
    pub(crate) fn body_bytes_sent(&mut self, len: usize) {
        self.bytes += len as u64;
        if self.first_byte.is_none() && len > 0 && crate::worker::metrics::enabled() {
            self.first_byte = Some(self.started.elapsed());
        }
    }
}

/// A response body that counts what it sends, reads the token usage out of it as it passes,
/// and logs (and accounts for) the request when it is done.
///
/// A model route's usage is recorded (one `O_APPEND` write to the store, and the user's
/// limits) by the shard itself before the body's last bytes are handed to hyper, so a
/// response whose end the client saw is on disk even if the worker is killed right after;
/// only the log line waits for the after-response thread. When the client leaves
/// mid-stream, the upstream stream is read on to its end for its usage, without the client
/// connection ([`drain_for_usage`]).
pub(crate) struct LoggedBody {
    inner: Body,
    record: RequestRecord,
    finished: bool,
    tap: UsageTap,
    /// Where the request's tokens are recorded (model routes only).
    accounting: Option<Arc<Accounting>>,
    /// `Some` once the usage is recorded: what the log line reports.
    recorded: Option<Option<TokenUsage>>,
    /// Whether the tap can read this body (a body it cannot read is not drained).
    readable: bool,
    /// Counts the request in flight until the response is done with.
    _in_flight: crate::worker::metrics::InFlight,
    /// For a converted stream, the usage its route read from the upstream's own events,
    /// recorded instead of what the tap would see.
    upstream_usage: Option<UpstreamUsage>,
}

/// The usage to record: the upstream's as its route read it when there is one, else what
/// the tap read in the body.
fn usage_of(tap: UsageTap, upstream_usage: Option<&UpstreamUsage>) -> Option<TokenUsage> {
    match upstream_usage {
        Some(report) => report.take(),
        None => tap.finish(),
    }
}

impl LoggedBody {
    pub(crate) fn wrap(
        mut response: Response<Body>,
        mut record: RequestRecord,
        accounting: Option<Arc<Accounting>>,
        in_flight: crate::worker::metrics::InFlight,
    ) -> Response<LoggedBody> {
        record.answered(&response);
        // The upstream is always asked for identity (`headers::UpstreamRequestPolicy`); a
        // body that comes compressed anyway cannot be read as it passes.
        let readable = response
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_none_or(|e| e.as_bytes().eq_ignore_ascii_case(b"identity"));
        let upstream_usage = response.extensions_mut().remove::<UpstreamUsage>();
        let tap = if accounting.is_some() && readable && upstream_usage.is_none() {
            UsageTap::new()
        } else {
            UsageTap::disabled()
        };
        response.map(|inner| LoggedBody {
            inner,
            record,
            finished: false,
            tap,
            accounting,
            recorded: None,
            readable,
            upstream_usage,
            _in_flight: in_flight,
        })
    }

    /// Records the request's usage now (model routes, once): called before the body's last
    /// bytes or its end go to hyper.
    fn record_usage_now(&mut self) {
        if self.recorded.is_some() {
            return;
        }
        let Some(accounting) = &self.accounting else {
            return;
        };
        if !accounting.keeps_records() {
            return;
        }
        let usage = usage_of(std::mem::take(&mut self.tap), self.upstream_usage.as_ref());
        let r = &self.record;
        accounting.finish(
            r.identity.uid,
            r.identity.user.as_deref(),
            &r.path,
            r.status,
            usage.as_ref(),
        );
        self.recorded = Some(usage);
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.record.body_bytes_sent(data.len());
                    this.tap.observe(data);
                }
                // hyper writes this frame together with the body's end.
                if this.accounting.is_some() && this.inner.is_end_stream() {
                    this.record_usage_now();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.record.failed = true;
                this.finished = true;
                this.record_usage_now();
            }
            Poll::Ready(None) => {
                this.finished = true;
                this.record_usage_now();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A finished response's usage tap holding more than this is parsed at once rather than kept
/// until its deferred work runs (handed on up to 64 requests or 50 ms later, then run on the
/// after-response thread's next round).
const MAX_DEFERRED_TAP_BYTES: usize = 64 * 1024;

/// Most bytes read from the upstream for its usage after the client left.
pub(crate) const DRAIN_BYTE_LIMIT: usize = 16 * 1024 * 1024;
/// Longest time spent reading the upstream for its usage after the client left (the
/// upstream's silence is bounded by `--idle-timeout` anyway).
pub(crate) const DRAIN_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let r = &self.record;
        let outcome = if r.failed {
            "upstream_error"
        } else if self.finished || self.inner.is_end_stream() {
            "complete"
        } else {
            "client_gone"
        };
        let duration_ms = r.started.elapsed().as_millis() as u64;
        let r = &mut self.record;
        let record = RequestRecord {
            identity: r.identity.clone(),
            method: std::mem::take(&mut r.method),
            path: std::mem::take(&mut r.path),
            ..*r
        };
        let mut tap = std::mem::take(&mut self.tap);
        let accounting = self.accounting.take();
        // The client left a model route's successful stream before its usage came, and usage
        // is recorded or limited: the rest is read for it on this thread's runtime, without
        // the client connection.
        if let (Some(accounting), "client_gone", None, true) =
            (&accounting, outcome, &self.recorded, self.readable)
        {
            if (200..300).contains(&record.status) && accounting.keeps_records() {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let inner = std::mem::replace(&mut self.inner, full(Bytes::new()));
                    let upstream_usage = self.upstream_usage.take();
                    runtime.spawn(drain_for_usage(
                        inner,
                        tap,
                        upstream_usage,
                        accounting.clone(),
                        record,
                    ));
                    return;
                }
            }
        }
        if let Some(usage) = self.recorded.take() {
            crate::logging::defer(move || {
                log_request(&record, usage.as_ref(), outcome, duration_ms)
            });
            return;
        }
        if tap.held_bytes() > MAX_DEFERRED_TAP_BYTES {
            tap.parse_all();
        }
        // The body is dropped before its last bytes are written out: reading the usage,
        // accounting for it and formatting the line wait until this thread's event loop is
        // done with the response (on a thread that stays busy, at most 50 ms or 64 requests
        // later), and then run on the worker's after-response thread (see `logging::defer`).
        let upstream_usage = self.upstream_usage.take();
        crate::logging::defer(move || {
            let usage = usage_of(tap, upstream_usage.as_ref());
            if let Some(accounting) = &accounting {
                accounting.finish(
                    record.identity.uid,
                    record.identity.user.as_deref(),
                    &record.path,
                    record.status,
                    usage.as_ref(),
                );
            }
            log_request(&record, usage.as_ref(), outcome, duration_ms)
        });
    }
}

/// Reads the rest of an upstream body whose client left, for the usage it reports at its
/// end (at most [`DRAIN_BYTE_LIMIT`] bytes and [`DRAIN_TIME_LIMIT`]; the body's own idle
/// limit ends a silent upstream), then closes it, records the usage and logs the request as
/// `client_gone`.
async fn drain_for_usage(
    mut inner: Body,
    mut tap: UsageTap,
    upstream_usage: Option<UpstreamUsage>,
    accounting: Arc<Accounting>,
    record: RequestRecord,
) {
    let reading = async {
        let mut drained = 0usize;
        while let Some(Ok(frame)) = inner.frame().await {
            if let Some(data) = frame.data_ref() {
                tap.observe(data);
                drained += data.len();
                if drained >= DRAIN_BYTE_LIMIT {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME_LIMIT, reading).await;
    drop(inner);
    let usage = usage_of(tap, upstream_usage.as_ref());
    accounting.finish(
        record.identity.uid,
        record.identity.user.as_deref(),
        &record.path,
        record.status,
        usage.as_ref(),
    );
    let duration_ms = record.started.elapsed().as_millis() as u64;
    crate::logging::defer(move || log_request(&record, usage.as_ref(), "client_gone", duration_ms));
}

/// The one log line of a finished request (and its metrics): on stderr written straight into
/// the batch, else (journald) through tracing with the same fields.
pub(crate) fn log_request(
    r: &RequestRecord,
    tokens: Option<&TokenUsage>,
    outcome: &str,
    duration_ms: u64,
) {
    crate::worker::metrics::request_finished(r, tokens, duration_ms);
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let written = crate::logging::write_plain_line(tracing::Level::INFO, |line| {
        request_line(line, r, tokens, outcome, duration_ms)
    });
    if !written {
        log_request_traced(r, tokens, outcome, duration_ms);
    }
}

/// The request line's message and fields, in the order tracing records them in
/// [`log_request_traced`] (a test holds the two to the same text).
fn request_line(
    line: &mut crate::logging::PlainFields<'_>,
    r: &RequestRecord,
    tokens: Option<&TokenUsage>,
    outcome: &str,
    duration_ms: u64,
) {
    let mut status = itoa::Buffer::new();
    let status = status.format(r.status);
    line.text(&r.method);
    line.text(" ");
    line.text(&r.path);
    line.text(" ");
    line.text(status);
    line.display("method", &r.method);
    line.display("path", &r.path);
    line.display("status", status);
    line.number("upstream_status", u64::from(r.upstream_status.unwrap_or(0)));
    line.number("duration_ms", duration_ms);
    line.number("bytes", r.bytes);
    line.string("outcome", outcome);
    if let Some(uid) = r.identity.uid {
        line.number("client_uid", u64::from(uid));
    }
    match (&r.identity.user, r.identity.uid) {
        (Some(name), _) => line.display("client_user", name),
        (None, Some(uid)) => line.number("client_user", u64::from(uid)),
        (None, None) => line.display("client_user", "unknown"),
    }
    line.string(
        "model",
        tokens.and_then(|u| u.model.as_deref()).unwrap_or(""),
    );
    line.number("input_tokens", tokens.map_or(0, |u| u.input_tokens));
    line.number("output_tokens", tokens.map_or(0, |u| u.output_tokens));
    line.number("cached_tokens", tokens.map_or(0, |u| u.cached_tokens));
    line.number("reasoning_tokens", tokens.map_or(0, |u| u.reasoning_tokens));
}

fn log_request_traced(
    r: &RequestRecord,
    tokens: Option<&TokenUsage>,
    outcome: &str,
    duration_ms: u64,
) {
    tracing::info!(
        method = %r.method,
        path = %r.path,
        status = r.status,
        upstream_status = r.upstream_status.unwrap_or(0),
        duration_ms,
        bytes = r.bytes,
        outcome,
        client_uid = r.identity.uid,
        client_user = %r.identity.display_name(),
        model = tokens.and_then(|u| u.model.as_deref()).unwrap_or(""),
        input_tokens = tokens.map_or(0, |u| u.input_tokens),
        output_tokens = tokens.map_or(0, |u| u.output_tokens),
        cached_tokens = tokens.map_or(0, |u| u.cached_tokens),
        reasoning_tokens = tokens.map_or(0, |u| u.reasoning_tokens),
        "{} {} {}",
        r.method,
        r.path,
        r.status
    );
}

/// Asks hyper to close the connection once `response` is written.
pub(crate) fn close_after(mut response: Response<Body>) -> Response<Body> {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// What a request body may take: its size, the silence allowed while it arrives, and the
/// caller's fair share (memory for buffered bodies, unfinished requests), when counted.
pub(crate) struct BodyLimits<'a> {
    pub max_bytes: usize,
    pub timeout: std::time::Duration,
    pub share: Option<(&'a Arc<FairShare>, UserKey)>,
}

/// Reads a whole request body of at most `limits.max_bytes` bytes; a larger one is a 413
/// (refused from `Content-Length` before reading when the client declares it), and a client
/// that stops sending it for the whole timeout gets a 408. The body's memory is reserved in
/// the caller's fair share (the declared length up front, else as bytes arrive) and stays
/// reserved as long as the returned bytes live; a body that does not fit gets a 503 (a 413
/// when it could never fit the caller's share) and a caller with too many unfinished requests
/// a 429, at once, and the connection is closed.
pub(crate) async fn read_request_body(
    body: hyper::body::Incoming,
    headers: &header::HeaderMap,
    limits: BodyLimits<'_>,
) -> Result<Bytes, Response<Body>> {
    let limit = limits.max_bytes;
    let too_large = |limit: usize| {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("Request body is larger than the proxy's limit of {limit} bytes."),
            "invalid_request_error",
            Some("request_too_large"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    match collect_body(body, limits, declared).await {
        Ok(bytes) => Ok(bytes),
        Err(BodyFault::TooLarge) => Err(too_large(limit)),
        Err(BodyFault::Refused(refusal, share)) => Err(refused(refusal, share, declared)),
        Err(BodyFault::TimedOut) => Err(close_after(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "The request body did not arrive in time.",
            "invalid_request_error",
            Some("request_timeout"),
        ))),
        Err(BodyFault::Failed(e)) => Err(error_response(
            StatusCode::BAD_REQUEST,
            &format!("Could not read the request body: {e}"),
            "invalid_request_error",
            Some("bad_request_body"),
        )),
    }
}

/// The answer to a body the caller's fair share refused; the connection is closed, so the
/// rest of the body is never read.
fn refused(refusal: Refusal, share: FairShareLimits, declared: Option<u64>) -> Response<Body> {
    let (status, message, kind, code) = match refusal {
        Refusal::UserBodies if declared.is_some_and(|n| n > share.buffered_bodies_per_user as u64) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body is larger than one user's share of the proxy's body memory ({} bytes).",
                share.buffered_bodies_per_user
            ),
            "invalid_request_error",
            "request_too_large",
        ),
        Refusal::UserBodies => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "Your request bodies being received fill your share of the proxy's memory ({} bytes); retry when they are done.",
                share.buffered_bodies_per_user
            ),
            "server_error",
            "body_memory_share_full",
        ),
        Refusal::AllBodies => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "The proxy's memory for request bodies ({} bytes) is full; retry shortly.",
                share.buffered_bodies
            ),
            "server_error",
            "body_memory_full",
        ),
        Refusal::UnfinishedRequests | Refusal::Connections => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "You have too many requests whose body is still arriving (at most {}); finish them first.",
                share.unfinished_requests_per_user
            ),
            "requests",
            "too_many_unfinished_requests",
        ),
    };
    let mut response = close_after(error_response(status, &message, kind, Some(code)));
    if status != StatusCode::PAYLOAD_TOO_LARGE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(1));
    }
    response
}

enum BodyFault {
    TooLarge,
    TimedOut,
    Refused(Refusal, FairShareLimits),
    Failed(hyper::Error),
}

/// The whole request body, at most `limits.max_bytes` bytes, failing if it is not all there
/// the timeout after it was first waited for. A body that arrived in one piece (the usual
/// case: it came with the head) is handed on as it is, and the timer (and the unfinished
/// request's slot) only exist once there is a wait. With a declared length, the buffer is
/// allocated once at that size.
async fn collect_body(
    mut body: hyper::body::Incoming,
    limits: BodyLimits<'_>,
    declared: Option<u64>,
) -> Result<Bytes, BodyFault> {
    let BodyLimits {
        max_bytes: limit,
        timeout,
        share,
    } = limits;
    let refused = |refusal| BodyFault::Refused(refusal, share.map_or(NO_SHARE, |s| s.0.limits()));
    // The declared length is held from the start (hyper never delivers more).
    let mut reservation = match share {
        Some((share, user)) => Some(
            share
                .reserve(user, declared.unwrap_or(0) as usize)
                .map_err(refused)?,
        ),
        None => None,
    };
    let mut unfinished: Option<UnfinishedSlot> = None;
    let mut first: Option<Bytes> = None;
    let mut gathered: Option<BytesMut> = None;
    let mut total = 0usize;
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let bytes = std::future::poll_fn(|cx| loop {
        match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Trailers carry nothing the upstream is sent.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                total = total.saturating_add(data.len());
                if total > limit {
                    return Poll::Ready(Err(BodyFault::TooLarge));
                }
                match (&mut first, &mut gathered) {
                    (None, None) => first = Some(data),
                    (Some(_), None) => {
                        let capacity = declared.map_or(total, |n| (n as usize).max(total));
                        let mut all = BytesMut::with_capacity(capacity);
                        all.extend_from_slice(&first.take().unwrap_or_default());
                        all.extend_from_slice(&data);
                        gathered = Some(all);
                    }
                    (_, Some(all)) => all.extend_from_slice(&data),
                }
                // Without a declared length, what the buffer holds is reserved as it grows.
                let held = gathered.as_ref().map_or(total, BytesMut::capacity);
                if let Some(reservation) = &mut reservation {
                    if let Err(refusal) = reservation.grow_to(held) {
                        return Poll::Ready(Err(refused(refusal)));
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(BodyFault::Failed(e))),
            Poll::Ready(None) => {
                return Poll::Ready(Ok(match gathered.take() {
                    Some(all) => all.freeze(),
                    None => first.take().unwrap_or_default(),
                }))
            }
            Poll::Pending => {
                if unfinished.is_none() {
                    if let Some((share, user)) = share {
                        match share.start_unfinished(user) {
                            Ok(slot) => unfinished = Some(slot),
                            Err(refusal) => return Poll::Ready(Err(refused(refusal))),
                        }
                    }
                }
                let deadline =
                    deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                return match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(BodyFault::TimedOut)),
                    Poll::Pending => Poll::Pending,
                };
            }
        }
    })
    .await?;
    Ok(match reservation {
        // The memory stays counted until the last user of the bytes lets go.
        Some(reservation) if reservation.bytes() > 0 && !bytes.is_empty() => {
            Bytes::from_owner(ReservedBody {
                bytes,
                _reservation: reservation,
            })
        }
        _ => bytes,
    })
}

/// The limits reported when a body is refused without a fair share (never happens).
const NO_SHARE: FairShareLimits = FairShareLimits {
    connections_per_user: 0,
    unfinished_requests_per_user: 0,
    buffered_bodies: 0,
    buffered_bodies_per_user: 0,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_request_line_is_the_line_tracing_writes() {
        let identities = [
            PeerIdentity {
                uid: Some(1000),
                user: Some("alice".into()),
            },
            PeerIdentity {
                uid: Some(1001),
                user: None,
            },
            PeerIdentity::default(),
        ];
        let usage = TokenUsage {
            model: Some("gpt \"odd\"\n".into()),
            input_tokens: 12,
            output_tokens: 34,
            cached_tokens: 5,
            reasoning_tokens: 6,
        };
        for (identity, tokens) in identities
            .into_iter()
            .zip([Some(&usage), None, Some(&usage)])
        {
            let record = RequestRecord {
                identity: Arc::new(identity),
                method: "POST".into(),
                path: "/v1/responses?x=1".into(),
                route: "responses",
                status: 200,
                upstream_status: Some(429),
                upstream_failure: None,
                started: Instant::now(),
                first_byte: None,
                bytes: 2345,
                failed: false,
            };
            let traced = crate::logging::capture::traced(|| {
                log_request_traced(&record, tokens, "complete", 17)
            });
            let direct = crate::logging::capture::plain_line(tracing::Level::INFO, |line| {
                request_line(line, &record, tokens, "complete", 17)
            });
            assert_eq!(direct, traced);
            assert!(
                direct.starts_with(" INFO POST /v1/responses?x=1 200 method=POST"),
                "{direct}"
            );
        }
    }

    fn poll_once(gate: &mut FrameGate) -> Option<FrameResult> {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        gate.before_poll(&mut cx)
    }

    #[test]
    fn one_chunk_passes_as_it_is_and_several_are_joined_in_order() {
        let mut gathered = Gathered::default();
        assert!(gathered.is_empty());
        let first = Bytes::from_static(b"event: a\n\n");
        gathered.push(first.clone());
        assert_eq!(gathered.len(), first.len());
        let single = std::mem::take(&mut gathered).into_bytes();
        assert_eq!(single.as_ptr(), first.as_ptr(), "not copied");

        for part in ["a", "", "bc", "def"] {
            gathered.push(Bytes::from(part));
        }
        assert_eq!(gathered.len(), 6);
        assert_eq!(&gathered.into_bytes()[..], b"abcdef");
    }

    #[test]
    fn the_logged_path_is_short_and_printable() {
        let record = |target: &str| {
            let uri: hyper::Uri = target.parse().unwrap();
            let identity = Arc::new(PeerIdentity::unknown());
            RequestRecord::new(&hyper::Method::GET, &uri, "x", Instant::now(), identity).path
        };
        assert_eq!(record("/v1/responses?a=b"), "/v1/responses?a=b");
        let long = format!("/{}", "x".repeat(300));
        assert_eq!(record(&long).len(), 200);
        assert_eq!(record("/a%20b"), "/a%20b");
    }

    #[test]
    fn the_gate_lets_hyper_write_once_after_the_first_frame_only() {
        let mut gate = FrameGate::default();
        assert!(poll_once(&mut gate).is_none());
        assert!(gate.frame(Bytes::from_static(b"a")).is_ready());
        assert!(matches!(poll_once(&mut gate), Some(Poll::Pending)));
        assert!(poll_once(&mut gate).is_none());
        assert!(gate.frame(Bytes::from_static(b"b")).is_ready());
        assert!(poll_once(&mut gate).is_none(), "only the first frame waits");
        gate.ended = true;
        assert!(matches!(poll_once(&mut gate), Some(Poll::Ready(None))));
    }

    #[test]
    fn a_whole_body_in_one_frame_ends_without_waiting_and_errors_come_first() {
        let mut gate = FrameGate {
            ended: true,
            ..FrameGate::default()
        };
        assert!(gate.frame(Bytes::from_static(b"all")).is_ready());
        assert!(gate.is_end_stream());
        assert!(matches!(poll_once(&mut gate), Some(Poll::Ready(None))));
        gate.pending_error = Some("cut".into());
        assert!(!gate.is_end_stream());
        assert!(matches!(
            poll_once(&mut gate),
            Some(Poll::Ready(Some(Err(_))))
        ));
    }
}
