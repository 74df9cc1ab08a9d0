//! WebSocket mode of `GET /v1/responses` (what Codex and the SDKs' `responses.connect()` try
//! first), served by the proxy itself over the HTTP upstream: the handshake and the per-user
//! cap on open sockets live here, the socket's life in [`session`], and what a socket
//! remembers of its responses (`previous_response_id`) in [`history`].
//!
//! The handshake is an ordinary request to hyper: this module checks it, has yawc answer 101
//! (the accept key, RFC 6455 §4.2.2, and permessage-deflate, RFC 7692, when the client offers
//! it: see [`client_options`]), and hands the connection hyper gives back after the 101 to a
//! task of its own.
//! That connection keeps the client's connection slot (it still holds a descriptor) and
//! tells the framing guard that its bytes are now frames. With `--no-websocket`, an upgrade
//! is answered 426, on which Codex falls back to HTTP at once.
//!
//! Uses: the worker's HTTP vocabulary (`http`), its routes' upstream paths (through
//! `routes::responses_from_body`), admission and accounting, the framing guard, the fair
//! share and the metrics (open sockets); yawc for the handshake, the frames and
//! permessage-deflate.

pub(crate) mod history;
pub(crate) mod relay;
mod session;

/// The read buffer of each WebSocket stream (tungstenite's default was 128 KiB, allocated for
/// every socket at once): measured with `bash bench/websocket.sh`, 138 KiB of worker memory
/// per open served socket and 268 KiB per relayed one (two streams) with that default.
/// Messages larger than this are still read whole, in several reads.
pub(crate) const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Idle deflate states kept for reuse (each way), shared by every socket of the worker:
/// enough for the messages compressed at one moment, not one per socket.
pub(crate) const DEFLATE_POOL_CAPACITY: usize = 16;

/// Messages shorter than this go uncompressed (deflate without context barely shrinks them).
const COMPRESSION_THRESHOLD: usize = 128;

/// The options of a client's socket, `limit` its largest message (inflated, for a compressed
/// one): permessage-deflate when the client offers it, with no context takeover either way
/// (the server may impose that on the client, RFC 7692 §7.1.1.1), so that a socket holds no
/// deflate state between messages — it borrows one from `pool` for each message instead of
/// keeping ~300 KiB of its own for its whole life (BENCHMARKS.md, "WebSocket compression").
pub(crate) fn client_options(limit: usize, pool: &yawc::DeflatePool) -> yawc::Options {
    yawc::Options::default()
        // Both limits are exclusive: a message of exactly `limit` bytes passes.
        .with_limits(limit.saturating_add(1), limit.saturating_add(1))
        .with_read_buffer_capacity(READ_BUFFER_BYTES)
        .with_utf8()
        .with_low_latency_compression()
        .server_no_context_takeover()
        .client_no_context_takeover()
        .with_deflate_pool(pool.clone())
        .with_compression_threshold(COMPRESSION_THRESHOLD)
}

/// Removes a permessage-deflate offer of `server_max_window_bits=8`, which yawc answers with
/// the parameter and no value (invalid: the client would fail the connection); zlib's raw
/// deflate has no 256-byte window anyway. Without the header the socket is served
/// uncompressed, as RFC 7692 lets a server decline any offer.
fn decline_offers_yawc_would_answer_wrongly(headers: &mut HeaderMap) {
    let asks_for_8_bits = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|parameter| parameter.split_once('='))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("server_max_window_bits")
                && value.trim().trim_matches('"') == "8"
        });
    if asks_for_8_bits {
        headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
}

/// Sends what the socket owes its peer (a pong, the answer to a close or the close after a
/// fault, which yawc queues itself) and flushes.
pub(crate) async fn flush_owed<S>(socket: &mut yawc::WebSocket<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::SinkExt;
    if std::future::poll_fn(|cx| socket.poll_ready_unpin(cx))
        .await
        .is_ok()
    {
        let _ = socket.flush().await;
    }
}

use crate::worker::identity::peer_identity::PeerIdentity;
use crate::worker::server::fair_share::{ConnectionSlot, UserKey};
use crate::worker::server::framing_guard::FramingVerdicts;
use crate::worker::server::http::{error_response, Body};
use crate::worker::State;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The settings of WebSocket mode, when it is on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WebSocketSettings {
    /// Most WebSockets one user may hold open.
    pub per_user: usize,
}

/// What the connection's service puts in each request for a route that may take the
/// connection over: who is calling, the connection's slot in the fair share, and its framing
/// guard.
#[derive(Clone)]
pub(crate) struct ConnectionContext {
    pub identity: Arc<PeerIdentity>,
    pub slot: Arc<ConnectionSlot>,
    pub verdicts: Arc<FramingVerdicts>,
    /// Becomes `true` when the shard drains; held (and so counted) until the socket ends.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The open WebSockets of every user (shared by every shard).
pub(crate) struct OpenSockets {
    settings: WebSocketSettings,
    per_user: Mutex<HashMap<UserKey, usize>>,
    /// The deflate states the sockets borrow for a message.
    deflate_pool: yawc::DeflatePool,
}

impl OpenSockets {
    pub(crate) fn new(settings: WebSocketSettings) -> Arc<Self> {
        Arc::new(OpenSockets {
            settings,
            per_user: Mutex::default(),
            deflate_pool: yawc::DeflatePool::new(DEFLATE_POOL_CAPACITY),
        })
    }

    /// One more socket of `user`, counted until the slot is dropped; `None` past the cap.
    fn open(self: &Arc<Self>, user: UserKey) -> Option<SocketSlot> {
        let mut counts = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(user).or_default();
        if *count >= self.settings.per_user {
            return None;
        }
        *count += 1;
        crate::worker::metrics::websocket_opened();
        Some(SocketSlot {
            sockets: self.clone(),
            user,
        })
    }
}

/// One open WebSocket of a user.
pub(crate) struct SocketSlot {
    sockets: Arc<OpenSockets>,
    user: UserKey,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        crate::worker::metrics::websocket_closed();
        let mut counts = self
            .sockets
            .per_user
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// Whether a request asks to switch to WebSocket (`Upgrade: websocket`).
pub(crate) fn asks_for_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The answer to an upgrade when WebSocket mode is off: 426, which makes Codex use HTTP POST
/// after one attempt.
pub(crate) fn refused_while_off() -> Response<Body> {
    error_response(
        StatusCode::UPGRADE_REQUIRED,
        "WebSocket mode is turned off on this proxy (--no-websocket); use POST /v1/responses.",
        "invalid_request_error",
        Some("websocket_disabled"),
    )
}

/// Checks the handshake, answers 101 and serves the socket on a task of its own once hyper
/// hands the connection over; or the refusal (400, 426, 429, 500).
pub(crate) async fn accept(state: Arc<State>, mut request: Request<Incoming>) -> Response<Body> {
    let Some(sockets) = state.websockets.clone() else {
        return refused_while_off();
    };
    let headers = request.headers();
    if request.version() != hyper::Version::HTTP_11
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return bad_handshake("A WebSocket handshake needs HTTP/1.1 and `Connection: Upgrade`.");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut response = error_response(
            StatusCode::UPGRADE_REQUIRED,
            "Only WebSocket version 13 is served.",
            "invalid_request_error",
            Some("websocket_version"),
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    if headers
        .get(header::SEC_WEBSOCKET_KEY)
        .is_none_or(|k| k.len() != 24)
    {
        return bad_handshake(
            "A WebSocket handshake needs a `Sec-WebSocket-Key` of 16 bytes in base64.",
        );
    };
    let Some(context) = request.extensions().get::<ConnectionContext>().cloned() else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "This connection cannot be switched to WebSocket.",
            "server_error",
            None,
        );
    };
    let Some(socket_slot) = sockets.open(context.identity.uid) else {
        tracing::info!(client_user = %context.identity.display_name(), "refused: too many open WebSockets");
        crate::worker::metrics::limit_refused("websockets_per_user");
        let mut response = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "You have as many WebSockets open as one user may ({}); close one first.",
                sockets.settings.per_user
            ),
            "requests",
            Some("too_many_websockets"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1));
        return response;
    };
    // Strict mode with an upstream that may speak WebSocket itself: relay to it.
    let mut relayed = None;
    if let (Some(relay), Some(upstream)) = (
        state.websocket_relay.clone().filter(|r| r.worth_trying()),
        state.upstream.as_ref(),
    ) {
        match open_upstream_socket(&relay, upstream, request.headers()).await {
            Ok(socket) => relayed = Some(socket),
            Err(failure) => {
                if relay.mode() == relay::RelayMode::Always {
                    tracing::warn!(client_user = %context.identity.display_name(), "websocket relay refused: {failure}");
                    return error_response(
                        StatusCode::BAD_GATEWAY,
                        &format!("The proxy relays WebSockets to the upstream (--websocket-upstream relay), and {failure}."),
                        "upstream_error",
                        Some("upstream_websocket_refused"),
                    );
                }
                match failure {
                    // An answer that says the upstream has no WebSocket here: remembered.
                    relay::OpenFailure::Refused(status) if relay::means_http_only(status) => {
                        relay.remember_http_only();
                        tracing::info!(
                            "websocket: {failure}; serving WebSockets locally over HTTP for {} s",
                            relay::HTTP_ONLY_MEMORY.as_secs()
                        );
                    }
                    // Anything else (401, 429, 5xx, a failed connection) may be this moment's
                    // or this client's: this socket only is served locally.
                    _ => tracing::warn!(
                        "websocket: {failure}; serving this socket locally over HTTP"
                    ),
                }
            }
        }
    }
    let upstream_headers = headers_for_turns(request.headers());
    let options = client_options(state.max_request_body, &sockets.deflate_pool);
    decline_offers_yawc_would_answer_wrongly(request.headers_mut());
    // yawc answers the handshake (checked above) and the client's permessage-deflate offer.
    let (answer, upgrade) = match yawc::WebSocket::upgrade_with_options(&mut request, options) {
        Ok(upgrade) => upgrade,
        Err(e) => return bad_handshake(&format!("The WebSocket handshake failed: {e}.")),
    };
    drop(request);
    let (mut answer, _) = answer.into_parts();
    if let Some(extensions) = answer.headers.get(header::SEC_WEBSOCKET_EXTENSIONS) {
        tracing::debug!(client_user = %context.identity.display_name(), "websocket: negotiated {}", String::from_utf8_lossy(extensions.as_bytes()));
    }
    crate::worker::spawn_as_caller(async move {
        let socket = match upgrade.await {
            Ok(socket) => socket,
            Err(e) => {
                tracing::debug!("websocket: the upgrade did not happen: {e}");
                return;
            }
        };
        // hyper wrote the 101 and handed the connection over: from here on its bytes are
        // WebSocket frames, which the framing guard must not read as requests.
        context.verdicts.protocol_switched();
        let parts = session::SocketParts {
            identity: context.identity,
            upstream_headers,
            shutdown: context.shutdown,
            _connection: context.slot,
            _socket: socket_slot,
        };
        if let Some((upstream, credential)) = relayed {
            return relay::serve(state, socket, upstream, credential, parts).await;
        }
        session::serve(state, socket, parts).await;
    });
    answer
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    Response::from_parts(
        answer,
        crate::worker::server::http::full(bytes::Bytes::new()),
    )
}

/// The upstream WebSocket for this client's handshake, its credentials added; and the
/// `Authorization` it carried (to be cleaned out of error events and dumps).
async fn open_upstream_socket(
    relay: &relay::UpstreamWebSocket,
    upstream: &crate::worker::upstream::UpstreamClient,
    client_headers: &HeaderMap,
) -> Result<(relay::UpstreamSocket, Option<HeaderValue>), relay::OpenFailure> {
    let headers = upstream
        .websocket_handshake_headers(client_headers)
        .await
        .map_err(|e| relay::OpenFailure::Failed(e.to_string()))?;
    let credential = headers.get(header::AUTHORIZATION).cloned();
    Ok((relay.open(headers).await?, credential))
}

fn bad_handshake(message: &str) -> Response<Body> {
    error_response(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        Some("bad_websocket_handshake"),
    )
}

/// The handshake's headers that each turn's POST carries (the client's own, as a POST
/// would): the WebSocket ones and the WebSocket beta flag are left out.
fn headers_for_turns(handshake: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in handshake {
        let name_text = name.as_str();
        if name_text.starts_with("sec-websocket-") {
            continue;
        }
        if name_text == "openai-beta"
            && value
                .to_str()
                .is_ok_and(|v| v.contains("responses_websockets"))
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    headers
}
