//! Strict mode's WebSocket relay (`--websocket-upstream auto|relay`): a client's socket on
//! `GET /v1/responses` joined to a WebSocket of the upstream itself (api.openai.com serves
//! one), so that the upstream's own state over one socket (`previous_response_id` with
//! `store: false`, its compaction) is used as the upstream intends; nothing is expanded here.
//!
//! The upstream handshake is made before the client's 101: the same host and path as
//! `--upstream-url` with the `ws`/`wss` scheme, over the one TLS configuration
//! (`upstream::connection`, `http/1.1` only) and through the egress proxy's CONNECT tunnel
//! when the upstream URL goes through one, carrying the client's end-to-end headers under
//! the same policy as a POST and the key in `Authorization` — the only place the key goes:
//! never in a frame, a log line or an error. The handshake offers permessage-deflate
//! ([`upstream_options`]): the relayed hop is where compression saves the most. An upstream that answers the upgrade with
//! anything but 101 is HTTP-only: with `auto` that is remembered (for [`HTTP_ONLY_MEMORY`])
//! and the socket is served locally (`session`); with `relay` the client gets 502.
//!
//! Then messages pass both ways, one at a time, each sent before the next is read (so a slow
//! reader on either side holds the other back: backpressure), text and binary, pings and
//! pongs, close frames with their codes. Each client `response.create` is admitted like a POST
//! (a refusal is an `error` event, and nothing is forwarded) and is one log line and usage
//! record, finished by the upstream's terminal event of that response (`response.completed`,
//! `response.incomplete`, `response.failed`, `error`), whose usage it reads. Either side
//! gone closes the other at once; silence both ways for `--idle-timeout` closes both (1008);
//! a client message larger than the request-body limit closes both (1009). With `--dump-dir`
//! each relayed response is dumped: the `response.create` message and the upstream's events.
//!
//! Uses: `crate::worker::{admission, State, stop_requested}`, `crate::worker::upstream`
//! (handshake headers, TLS), the turn record of `session` (the log line, usage and metrics of
//! each response), `crate::worker::exchange_dump` (through `State`); yawc (the handshake
//! over the stream opened here, the frames, permessage-deflate), tokio-rustls.

use super::session::{error_answer_event, SocketParts, TurnRecord};
use crate::worker::exchange_dump::RelayedTurn;
use crate::worker::upstream::connection::UpstreamConnection;
use crate::worker::upstream::redact;
use crate::worker::State;
use futures_util::SinkExt;
use hyper::header::HeaderValue;
use hyper::HeaderMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use yawc::close::CloseCode;
use yawc::{Frame, OpCode, WebSocketError};

/// How long `auto` remembers that the upstream refused the upgrade.
pub(crate) const HTTP_ONLY_MEMORY: Duration = Duration::from_secs(3600);

/// Largest upstream message relayed (an upstream event, e.g. a `response.completed` that
/// repeats the whole output).
const MAX_UPSTREAM_MESSAGE: usize = 64 << 20;

/// What `--websocket-upstream` asks for, when a relay may be tried at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RelayMode {
    /// Try the upstream's WebSocket; serve locally when it refuses the upgrade.
    Auto,
    /// Always relay; 502 when the upstream refuses.
    Always,
}

/// The upstream WebSocket of strict mode, shared by every shard.
pub(crate) struct UpstreamWebSocket {
    mode: RelayMode,
    url: reqwest::Url,
    /// `--upstream-url`: its scheme picks the egress proxy (`HTTPS_PROXY` for `wss`).
    http_url: reqwest::Url,
    /// Trust, client certificate and egress proxy, as for every upstream connection.
    connection: UpstreamConnection,
    host: String,
    port: u16,
    /// `Some` for `wss`: the one TLS configuration and the name to verify.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    /// Unix time until which the upstream is taken for HTTP-only (0: not known to be).
    http_only_until: AtomicU64,
    /// The deflate states the upstream sockets borrow to compress a message.
    deflate_pool: yawc::DeflatePool,
}

/// Why the upstream WebSocket could not be opened.
pub(crate) enum OpenFailure {
    /// The upstream answered the upgrade with this status: it does not serve WebSocket here.
    Refused(u16),
    /// No answer (connection, TLS, timeout, a broken handshake): said in words without URL
    /// or key.
    Failed(String),
}

impl std::fmt::Display for OpenFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenFailure::Refused(status) => {
                write!(
                    f,
                    "the upstream answered the WebSocket upgrade with {status}"
                )
            }
            OpenFailure::Failed(why) => write!(f, "the upstream WebSocket failed: {why}"),
        }
    }
}

pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An open upstream WebSocket.
pub(crate) type UpstreamSocket = yawc::WebSocket<Box<dyn Io>>;

/// The options of the upstream socket: its events may be as large as
/// [`MAX_UPSTREAM_MESSAGE`] (inflated), and permessage-deflate is offered. What the proxy
/// sends (the client's `response.create`s) is compressed without context takeover
/// (`client_no_context_takeover`) with a deflate state borrowed from `pool` for the message,
/// so none is kept between messages; the upstream's events, the bulk of the traffic, may be
/// compressed with its context kept across messages, which a relayed socket pays for with
/// one inflate state (BENCHMARKS.md, "WebSocket compression").
fn upstream_options(pool: &yawc::DeflatePool) -> yawc::Options {
    yawc::Options::default()
        .with_limits(MAX_UPSTREAM_MESSAGE, MAX_UPSTREAM_MESSAGE)
        .with_read_buffer_capacity(super::READ_BUFFER_BYTES)
        .with_utf8()
        .with_low_latency_compression()
        .client_no_context_takeover()
        .with_deflate_pool(pool.clone())
}

impl UpstreamWebSocket {
    /// The relay to `upstream_url`'s WebSocket (`http`→`ws`, `https`→`wss`); an error when
    /// the URL has no host.
    pub(crate) fn new(
        mode: RelayMode,
        upstream_url: &reqwest::Url,
        connection: &UpstreamConnection,
        connect_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Result<UpstreamWebSocket, String> {
        let mut url = upstream_url.clone();
        let secure = url.scheme() == "https";
        url.set_scheme(if secure { "wss" } else { "ws" })
            .map_err(|()| "the upstream URL cannot take a ws/wss scheme".to_string())?;
        let host = url
            .host_str()
            .ok_or_else(|| "the upstream URL has no host".to_string())?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url
            .port_or_known_default()
            .unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| "the upstream host is not a valid TLS server name".to_string())?;
            Some((connection.http1_tls(), name))
        } else {
            None
        };
        Ok(UpstreamWebSocket {
            mode,
            url,
            http_url: upstream_url.clone(),
            connection: connection.clone(),
            host,
            port,
            tls,
            connect_timeout,
            handshake_timeout,
            http_only_until: AtomicU64::new(0),
            deflate_pool: yawc::DeflatePool::new(super::DEFLATE_POOL_CAPACITY),
        })
    }

    pub(crate) fn mode(&self) -> RelayMode {
        self.mode
    }

    /// Whether a relay is worth trying now (not with `auto` while the upstream is known to
    /// be HTTP-only).
    pub(crate) fn worth_trying(&self) -> bool {
        self.mode == RelayMode::Always
            || self.http_only_until.load(Ordering::Relaxed) <= crate::clock::unix_now()
    }

    /// Remembers that the upstream has no WebSocket (for [`HTTP_ONLY_MEMORY`]).
    pub(crate) fn remember_http_only(&self) {
        self.http_only_until.store(
            crate::clock::unix_now() + HTTP_ONLY_MEMORY.as_secs(),
            Ordering::Relaxed,
        );
    }

    /// Opens the upstream WebSocket with `headers` (the credentials among them).
    pub(crate) async fn open(&self, headers: HeaderMap) -> Result<UpstreamSocket, OpenFailure> {
        let url = self.url.clone();
        let mut request = yawc::HttpRequest::builder();
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        drop(headers);
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            self.connection
                .open_stream(&self.http_url, &self.host, self.port),
        )
        .await
        .map_err(|_| OpenFailure::Failed("timed out connecting".into()))?
        .map_err(OpenFailure::Failed)?;
        let _ = tcp.set_nodelay(true);
        let handshake = async {
            let stream: Box<dyn Io> = match &self.tls {
                Some((tls, name)) => {
                    let connector = tokio_rustls::TlsConnector::from(tls.clone());
                    let stream = connector.connect(name.clone(), tcp).await.map_err(|e| {
                        OpenFailure::Failed(
                            crate::worker::upstream::connection::tls_failure(&e)
                                .unwrap_or_else(|| format!("TLS failed: {e}")),
                        )
                    })?;
                    Box::new(stream)
                }
                None => Box::new(tcp),
            };
            match yawc::WebSocket::handshake_with_request(
                url,
                stream,
                upstream_options(&self.deflate_pool),
                request,
            )
            .await
            {
                Ok(socket) => {
                    tracing::debug!("websocket relay: the upstream's socket is open");
                    Ok(socket)
                }
                Err(WebSocketError::InvalidStatusCode(status)) => Err(OpenFailure::Refused(status)),
                Err(WebSocketError::Redirected { status_code, .. }) => {
                    Err(OpenFailure::Refused(status_code))
                }
                // The error names neither the request nor its headers.
                Err(e) => Err(OpenFailure::Failed(format!("handshake failed: {e}"))),
            }
        };
        tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .map_err(|_| OpenFailure::Failed("the handshake timed out".into()))?
    }
}

/// Whether an answer to the upgrade says the upstream serves no WebSocket at that URL (so
/// that `auto` may remember it for every user): an answer other than 101 that a server
/// without WebSocket support gives — a success (the upgrade ignored), 404, 405, 426 or 501.
/// Not an answer that may be this moment's or this client's (400, 401, 403, 429, 5xx).
pub(crate) fn means_http_only(status: u16) -> bool {
    matches!(status, 200..=299 | 404 | 405 | 426 | 501)
}

/// What a client message is, as far as the relay cares.
#[derive(serde::Deserialize)]
struct EventType<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

/// The event's `type`. Read off the opening bytes when it comes first, as OpenAI's events and
/// SDK messages have it (an upstream message may be megabytes: no parse of the whole for
/// that); parsed otherwise.
fn event_type(text: &str) -> String {
    if let Some(rest) = text.strip_prefix("{\"type\":\"") {
        if let Some(end) = rest.find(['"', '\\']) {
            if rest.as_bytes()[end] == b'"' {
                return rest[..end].to_owned();
            }
        }
    }
    serde_json::from_str::<EventType<'_>>(text)
        .ok()
        .and_then(|e| e.kind)
        .map(|k| k.into_owned())
        .unwrap_or_default()
}

/// Relays the client's socket to `upstream` until either side closes.
///
/// `credential` is what the upstream handshake carried: cleaned out of the upstream's error
/// events before they reach the client (an upstream quoting a key it no longer accepts, say
/// after a rotation) and out of each turn's dump.
pub(crate) async fn serve(
    state: Arc<State>,
    mut client: super::session::Socket,
    mut upstream: UpstreamSocket,
    credential: Option<HeaderValue>,
    parts: SocketParts,
) {
    let limit = state.max_request_body;
    let idle_timeout = state.idle_timeout;
    let identity = parts.identity.clone();
    let mut shutdown = parts.shutdown.clone();
    let mut last_heard = tokio::time::Instant::now();
    // The responses asked for and not finished yet, oldest first.
    let mut pending: VecDeque<PendingResponse> = VecDeque::new();
    // What to send each side when the relay ends (`None`: only what yawc owes that side —
    // the answer to its close, or the close for a frame it got wrong, 1009 for one over the
    // limit).
    let (to_client, to_upstream): (Option<Frame>, Option<Frame>) = loop {
        let idle_deadline = last_heard + idle_timeout;
        tokio::select! {
            incoming = client.next_frame() => {
                last_heard = tokio::time::Instant::now();
                let frame = match incoming {
                    Ok(frame) => frame,
                    Err(WebSocketError::FrameTooLarge) => {
                        tracing::info!(client_user = %identity.display_name(), "websocket relay closed: a message larger than the limit of {limit} bytes");
                        break (None, Some(client_left()));
                    }
                    Err(WebSocketError::ConnectionClosed | WebSocketError::IoError(_)) => {
                        break (None, Some(client_left()));
                    }
                    Err(e) => {
                        tracing::info!(client_user = %identity.display_name(), "websocket relay closed: {e}");
                        break (None, Some(client_left()));
                    }
                };
                match frame.opcode() {
                    OpCode::Text => {
                        let Ok(text) = std::str::from_utf8(frame.payload()) else {
                            // yawc checks text frames (`with_utf8`); never reached.
                            break (Some(close(CloseCode::Invalid, "invalid UTF-8")), Some(client_left()));
                        };
                        let kind = match client_message_type(text) {
                            Ok(kind) => kind,
                            Err(why) => {
                                // Not forwarded: what the upstream would read it as is unclear,
                                // and so whether it must be admitted and counted.
                                tracing::info!(client_user = %identity.display_name(), "websocket relay: a client message refused: {why}");
                                if client.send(Frame::text(invalid_message_event(why))).await.is_err() {
                                    break (None, Some(client_left()));
                                }
                                continue;
                            }
                        };
                        if kind == "response.create" {
                            let mut record = TurnRecord::start(&state, &parts.identity);
                            if let Some(refusal) = crate::worker::admission(&state, &identity, true) {
                                record.record.status = refusal.status().as_u16();
                                record.outcome = "complete";
                                drop(record);
                                let event = error_answer_event(refusal).await;
                                if client.send(Frame::text(event)).await.is_err() {
                                    break (None, Some(client_left()));
                                }
                                continue;
                            }
                            record.accounted = true;
                            let dump = state.dumps.as_ref().and_then(|dumps| {
                                let dump = dumps.begin(identity.uid, "GET", "/v1/responses", &parts.upstream_headers, true)?;
                                dump.request_body(&bytes::Bytes::copy_from_slice(text.as_bytes()));
                                Some(dump.relayed_turn(credential.clone()))
                            });
                            pending.push_back(PendingResponse { record, dump, id: None });
                            tracing::debug!(client_user = %identity.display_name(), "websocket relay: response.create passed on ({} bytes)", text.len());
                        }
                        if upstream.send(Frame::text(frame.into_payload())).await.is_err() {
                            break (Some(upstream_failed()), None);
                        }
                    }
                    OpCode::Close => break (None, Some(passed_on_close(&frame))),
                    OpCode::Binary => {
                        // The protocol is JSON text; a binary message is not relayed (the
                        // upstream might read a `response.create` in it, uncounted).
                        let why = "binary messages are not relayed; send JSON text";
                        if client.send(Frame::text(invalid_message_event(why))).await.is_err() {
                            break (None, Some(client_left()));
                        }
                    }
                    OpCode::Ping | OpCode::Pong => {
                        if upstream.send(same_kind(&frame)).await.is_err() {
                            break (Some(upstream_failed()), None);
                        }
                    }
                    OpCode::Continuation => {}
                }
            }
            incoming = upstream.next_frame() => {
                last_heard = tokio::time::Instant::now();
                let frame = match incoming {
                    Ok(frame) => frame,
                    Err(WebSocketError::ConnectionClosed) => break (Some(upstream_failed()), None),
                    Err(e) => {
                        tracing::warn!("websocket relay: the upstream socket failed: {e}");
                        break (Some(upstream_failed()), None);
                    }
                };
                match frame.opcode() {
                    OpCode::Text => {
                        let Ok(text) = std::str::from_utf8(frame.payload()) else {
                            break (Some(upstream_failed()), Some(close(CloseCode::Invalid, "invalid UTF-8")));
                        };
                        let kind = event_type(text);
                        let mut redacted: Option<Vec<u8>> = None;
                        if let (Some(credential), "error" | "response.failed") = (&credential, kind.as_str()) {
                            redacted = redact::redact(text.as_bytes(), redact::secret_of(credential));
                        }
                        if let Some(at) = owner_of_event(&mut pending, &kind, text) {
                            let turn = &mut pending[at];
                            if let Some(dump) = &mut turn.dump {
                                dump.event(text);
                            }
                            let record = &mut turn.record;
                            if record.record.first_byte.is_none() {
                                record.record.first_byte = Some(record.record.started.elapsed());
                            }
                            record.record.bytes += text.len() as u64;
                            if let Some(status) = terminal_status(&kind, text) {
                                record.tap.observe_event(&kind, text);
                                record.record.status = status;
                                record.record.upstream_status = Some(status);
                                record.record.failed = kind == "response.failed";
                                record.outcome = "complete";
                                if let Some(PendingResponse { dump: Some(dump), .. }) = pending.remove(at) {
                                    dump.finish(status);
                                }
                            }
                        }
                        let payload = match redacted.take() {
                            Some(clean) => bytes::Bytes::from(clean),
                            None => frame.into_payload(),
                        };
                        if client.send(Frame::text(payload)).await.is_err() {
                            break (None, Some(client_left()));
                        }
                    }
                    OpCode::Close => break (Some(passed_on_close(&frame)), None),
                    OpCode::Binary | OpCode::Ping | OpCode::Pong => {
                        if client.send(same_kind(&frame)).await.is_err() {
                            break (None, Some(client_left()));
                        }
                    }
                    OpCode::Continuation => {}
                }
            }
            () = crate::worker::stop_requested(&mut shutdown), if pending.is_empty() => {
                let frame = close(CloseCode::Away, "the proxy is shutting down");
                break (Some(frame.clone()), Some(frame));
            }
            _ = tokio::time::sleep_until(idle_deadline) => {
                tracing::info!(client_user = %identity.display_name(), "websocket relay closed: idle for {} s", idle_timeout.as_secs());
                let frame = close(CloseCode::Policy, &format!("idle for {} s", idle_timeout.as_secs()));
                break (Some(frame.clone()), Some(frame));
            }
        }
    };
    // Unfinished responses are logged `client_gone` (or as the upstream's failure).
    drop(pending);
    let goodbye = async {
        match to_upstream {
            Some(frame) => {
                let _ = upstream.send(frame).await;
            }
            None => super::flush_owed(&mut upstream).await,
        }
        match to_client {
            Some(frame) => {
                let _ = client.send(frame).await;
            }
            None => super::flush_owed(&mut client).await,
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
}

fn close(code: CloseCode, reason: &str) -> Frame {
    Frame::close(code, reason)
}

/// A binary, ping or pong frame to pass on: a new frame of the same kind and payload.
fn same_kind(frame: &Frame) -> Frame {
    let payload = frame.payload().clone();
    match frame.opcode() {
        OpCode::Ping => Frame::ping(payload),
        OpCode::Pong => Frame::pong(payload),
        _ => Frame::binary(payload),
    }
}

/// The close one side sent, to pass on to the other (its code and reason; 1000 without).
fn passed_on_close(frame: &Frame) -> Frame {
    let reason = frame.close_reason().ok().flatten().unwrap_or_default();
    match frame.close_code() {
        Some(code) if code.is_allowed() => Frame::close(code, reason),
        _ => Frame::close(CloseCode::Normal, ""),
    }
}

fn client_left() -> Frame {
    close(CloseCode::Away, "the client left")
}

fn upstream_failed() -> Frame {
    close(CloseCode::Error, "the upstream connection failed")
}

/// A `response.create` passed to the upstream and not finished yet.
struct PendingResponse {
    record: TurnRecord,
    dump: Option<RelayedTurn>,
    /// The upstream's id for it, once its `response.created` came.
    id: Option<String>,
}

/// Which pending response an upstream event belongs to (its index), noting the id a
/// `response.created` gives the oldest response still without one. An event naming a
/// response (`response.created`, `.completed`, …) belongs to the one with that id; an `error`
/// only to the oldest response if that was never created (the `response.create` failed) —
/// an error about anything else (a message the upstream did not understand, sent while a
/// response runs) ends no response, so that a client cannot end its own response's
/// accounting early and have its tokens go uncounted; any other event to the oldest.
fn owner_of_event(
    pending: &mut VecDeque<PendingResponse>,
    kind: &str,
    text: &str,
) -> Option<usize> {
    match kind {
        "error" => pending.front().filter(|p| p.id.is_none()).map(|_| 0),
        "response.created"
        | "response.in_progress"
        | "response.completed"
        | "response.incomplete"
        | "response.failed"
        | "response.done" => {
            let Some(id) = response_id(text) else {
                return (!pending.is_empty()).then_some(0);
            };
            if let Some(at) = pending.iter().position(|p| p.id.as_deref() == Some(&id)) {
                return Some(at);
            }
            let at = pending.iter().position(|p| p.id.is_none())?;
            pending[at].id = Some(id);
            Some(at)
        }
        _ => (!pending.is_empty()).then_some(0),
    }
}

/// The `response.id` of an event that carries the response.
fn response_id(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Event {
        response: Option<Response>,
    }
    #[derive(serde::Deserialize)]
    struct Response {
        id: Option<String>,
    }
    serde_json::from_str::<Event>(text).ok()?.response?.id
}

/// A client message's one top-level `type`: an error when the message is not a JSON object
/// with exactly one `type` that is a string. (Two `type` keys would be read one way here and
/// perhaps the other way by the upstream: a `response.create` could pass uncounted.)
fn client_message_type(text: &str) -> Result<String, &'static str> {
    struct Kinds(Vec<Option<String>>);
    impl<'de> serde::Deserialize<'de> for Kinds {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Kinds;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Kinds, A::Error> {
                    let mut kinds = Vec::new();
                    while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                        if key == "type" {
                            kinds.push(
                                map.next_value::<serde_json::Value>()?
                                    .as_str()
                                    .map(str::to_owned),
                            );
                        } else {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                    Ok(Kinds(kinds))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    let Ok(Kinds(mut kinds)) = serde_json::from_str::<Kinds>(text) else {
        return Err("a message must be a JSON object");
    };
    match (kinds.pop(), kinds.is_empty()) {
        (Some(Some(kind)), true) => Ok(kind),
        (Some(_), false) => Err("a message must have one `type`, not several"),
        _ => Err("a message must have a `type` that is a string"),
    }
}

/// The `error` event answering a client message the relay does not pass on.
fn invalid_message_event(why: &str) -> String {
    serde_json::json!({
        "type": "error",
        "status": 400,
        "error": {
            "type": "invalid_request_error",
            "code": "invalid_message",
            "message": format!("The proxy did not relay this message: {why}."),
        },
    })
    .to_string()
}

/// The status a response's terminal event stands for, `None` for any other event.
fn terminal_status(kind: &str, text: &str) -> Option<u16> {
    match kind {
        "response.completed" | "response.incomplete" | "response.failed" | "response.done" => {
            Some(200)
        }
        "error" => Some(
            serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v["status"].as_u64())
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(500),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_events_end_a_response() {
        assert_eq!(terminal_status("response.completed", "{}"), Some(200));
        assert_eq!(
            terminal_status("error", r#"{"type":"error","status":429}"#),
            Some(429)
        );
        assert_eq!(terminal_status("response.output_text.delta", "{}"), None);
        assert_eq!(
            event_type(r#"{"type":"response.create"}"#),
            "response.create"
        );
        assert_eq!(event_type("not json"), "");
        assert_eq!(
            event_type(r#"{"type":"response.output_text.delta","delta":"x"}"#),
            "response.output_text.delta"
        );
        // Not first, or escaped: parsed.
        assert_eq!(event_type(r#"{"delta":"x","type":"error"}"#), "error");
        assert_eq!(event_type(r#"{"type":"a\u0062"}"#), "ab");
        assert_eq!(
            client_message_type(r#"{"input":"x","type":"response.create"}"#),
            Ok("response.create".to_owned())
        );
        // A key spelled with an escape is the same key.
        assert!(client_message_type(r#"{"typ\u0065":"response.create","type":"x"}"#).is_err());
        assert!(client_message_type(r#"{"input":"x"}"#).is_err());
        assert!(client_message_type("[]").is_err());
        assert!(means_http_only(405) && means_http_only(200) && means_http_only(426));
        assert!(!means_http_only(401) && !means_http_only(429) && !means_http_only(503));
    }
}
