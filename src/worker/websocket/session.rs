//! One WebSocket's life: each client text message `{"type":"response.create", ...}` becomes
//! one streaming `POST` through the proxy's own strict or bridge path (a turn), whose events
//! go back one JSON text message each; a `generate: false` prewarm is answered here; a
//! `previous_response_id` of this socket is expanded from its [`SocketHistory`].
//!
//! Limits and faults: a message larger than the request-body limit (inflated, when
//! permessage-deflate was negotiated) closes the socket with 1009; a binary message, bad JSON, an unknown `previous_response_id`, a refused admission
//! (allow-list, `--requests-per-minute`, tokens) or an upstream error answer get an `error`
//! event and the socket stays usable; an upstream that fails mid-turn gets a
//! `response.failed`; the server pings every [`ping_interval`] and closes (1008) a socket it
//! has heard nothing from, between turns, for `--idle-timeout`; a client that vanishes (or
//! closes) mid-turn cancels its upstream request at once (the upstream connection is
//! dropped), unless usage is recorded or limited, when the upstream stream is read on for its
//! usage first, as for a POST whose client left (see [`Outbox`]); an internal fault closes with 1011.
//!
//! Each turn is accounted (usage.jsonl, the token limit), logged as one request line
//! (`WS /v1/responses`) and dumped (`--dump-dir`), like a POST.
//!
//! Uses: `crate::clock`, `crate::logging`, `crate::usage`, `crate::worker::admission`,
//! `crate::worker::identity`, `crate::worker::metrics`, `crate::worker::routes`,
//! `crate::worker::server`, `crate::worker::spawn_as_caller`, `crate::worker::stop_requested`,
//! `crate::worker::exchange_dump` (through `State`) and bytes, futures_util, http_body_util,
//! hyper, openai_wire, serde, serde_json, tokio, tracing, yawc (the frames).

use super::history::{body_with_input, input_items, Item, SocketHistory};
use crate::usage::UsageTap;
use crate::worker::identity::peer_identity::PeerIdentity;
use crate::worker::server::fair_share::{BodyReservation, ConnectionSlot};
use crate::worker::server::http::{log_request, RequestRecord, DRAIN_BYTE_LIMIT, DRAIN_TIME_LIMIT};
use crate::worker::State;
use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::BodyExt;
use hyper::HeaderMap;
use openai_wire::sse::{SseReader, DEFAULT_MAX_EVENT_BYTES};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use yawc::close::CloseCode;
use yawc::{Frame, OpCode, WebSocketError};

/// What a socket holds besides its connection: who it serves, the headers each turn's POST
/// carries, and the slots that count it in its user's fair share.
pub(crate) struct SocketParts {
    pub identity: Arc<PeerIdentity>,
    pub upstream_headers: HeaderMap,
    /// Becomes `true` when the shard drains.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub _connection: Arc<ConnectionSlot>,
    pub _socket: super::SocketSlot,
}

/// How often the server pings: half the idle timeout, at most every 30 s, at least every 1 s.
pub(crate) fn ping_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// A client's socket, after the handshake (`super::accept`).
pub(crate) type Socket = yawc::HttpWebSocket;

/// One message a turn hands to the socket; the last carries what the history keeps.
struct TurnMessage {
    text: String,
    end: Option<TurnEnd>,
}

/// How a turn ended: the response to remember, if it finished with one.
struct TurnEnd {
    remember: Option<(String, Vec<Item>)>,
}

/// The turn in progress.
struct Turn {
    messages: mpsc::Receiver<TurnMessage>,
    task: tokio::task::JoinHandle<()>,
}

/// The socket's own state between messages.
struct Conversation {
    state: Arc<State>,
    parts: SocketParts,
    history: SocketHistory,
    /// The history's memory, held in the user's share of body memory.
    history_memory: Option<BodyReservation>,
    turn: Option<Turn>,
}

pub(crate) async fn serve(state: Arc<State>, mut socket: Socket, parts: SocketParts) {
    let limit = state.max_request_body;
    let idle_timeout = state.idle_timeout;
    let mut conversation = Conversation {
        history: SocketHistory::new(limit),
        history_memory: None,
        turn: None,
        parts,
        state,
    };
    let mut ping = tokio::time::interval(ping_interval(idle_timeout));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut shutdown = conversation.parts.shutdown.clone();
    let mut last_heard = tokio::time::Instant::now();
    // `None`: nothing more to say but what yawc owes the client (the answer to its close, or
    // the close for a frame it got wrong: 1009 for one over the limit, 1002, 1007).
    let close: Option<(CloseCode, String)> = loop {
        let idle_deadline = last_heard + idle_timeout;
        let turn_running = conversation.turn.is_some();
        tokio::select! {
            incoming = socket.next_frame() => {
                last_heard = tokio::time::Instant::now();
                let frame = match incoming {
                    Ok(frame) => frame,
                    Err(WebSocketError::ConnectionClosed) => break None,
                    Err(WebSocketError::FrameTooLarge) => {
                        tracing::info!(client_user = %conversation.parts.identity.display_name(), "websocket closed: a message larger than the limit of {limit} bytes");
                        break None;
                    }
                    Err(WebSocketError::IoError(e)) => {
                        tracing::debug!("websocket: connection failed: {e}");
                        break None;
                    }
                    Err(e) => {
                        tracing::info!(client_user = %conversation.parts.identity.display_name(), "websocket closed: {e}");
                        break None;
                    }
                };
                match frame.opcode() {
                    OpCode::Text => {
                        let replies = match std::str::from_utf8(frame.payload()) {
                            Ok(text) => conversation.on_text(text),
                            // yawc checks text frames (`with_utf8`); never reached.
                            Err(_) => break Some((CloseCode::Invalid, "invalid UTF-8".to_owned())),
                        };
                        let mut failed = false;
                        for reply in replies {
                            if socket.send(Frame::text(reply)).await.is_err() {
                                failed = true;
                                break;
                            }
                        }
                        if failed {
                            break None;
                        }
                    }
                    OpCode::Binary => {
                        let reply = error_event(400, "invalid_request_error", "binary_message", "Binary messages are not served; send JSON text messages.", None);
                        if socket.send(Frame::text(reply)).await.is_err() {
                            break None;
                        }
                    }
                    OpCode::Close => break None,
                    _ => {}
                }
            }
            message = next_turn_message(&mut conversation.turn), if turn_running => {
                match message {
                    Some(message) => {
                        if let Some(end) = message.end {
                            conversation.turn = None;
                            // The idle timeout counts from the end of the turn.
                            last_heard = tokio::time::Instant::now();
                            if let Some((id, items)) = end.remember {
                                conversation.remember(id, items);
                            }
                        }
                        if socket.send(Frame::text(message.text)).await.is_err() {
                            break None;
                        }
                    }
                    // The turn's task ended without its last message: it failed.
                    None => {
                        conversation.turn = None;
                        break Some((CloseCode::Error, "internal error".to_owned()));
                    }
                }
            }
            _ = ping.tick() => {
                if socket.send(Frame::ping(Bytes::new())).await.is_err() {
                    break None;
                }
            }
            () = crate::worker::stop_requested(&mut shutdown), if !turn_running => {
                break Some((CloseCode::Away, "the proxy is shutting down".to_owned()));
            }
            _ = tokio::time::sleep_until(idle_deadline), if !turn_running => {
                tracing::info!(client_user = %conversation.parts.identity.display_name(), "websocket closed: idle for {} s", idle_timeout.as_secs());
                break Some((CloseCode::Policy, format!("idle for {} s", idle_timeout.as_secs())));
            }
        }
    };
    // A client that left (or is being closed) mid-turn: its upstream request goes now.
    if let Some(turn) = conversation.turn.take() {
        if conversation.state.accounting.keeps_records() {
            // The turn sees the socket gone and reads on for its usage (bounded), alone.
            drop(turn.messages);
        } else {
            turn.task.abort();
        }
    }
    let goodbye = async {
        match close {
            Some((code, reason)) => {
                let _ = socket.send(Frame::close(code, reason)).await;
            }
            None => super::flush_owed(&mut socket).await,
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
}

async fn next_turn_message(turn: &mut Option<Turn>) -> Option<TurnMessage> {
    match turn {
        Some(turn) => turn.messages.recv().await,
        None => std::future::pending().await,
    }
}

impl Conversation {
    /// Serves one text message: the replies to send now (a turn's events come later).
    fn on_text(&mut self, text: &str) -> Vec<String> {
        let mut fields = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) | Err(_) => {
                return vec![error_event(
                400,
                "invalid_request_error",
                "invalid_json",
                "Each message must be a JSON object such as {\"type\":\"response.create\", ...}.",
                None,
            )]
            }
        };
        match fields.remove("type") {
            Some(Value::String(kind)) if kind == "response.create" => {}
            _ => {
                return vec![error_event(
                    400,
                    "invalid_request_error",
                    "unknown_event_type",
                    "The only message served is {\"type\":\"response.create\", ...}.",
                    Some("type"),
                )]
            }
        }
        if self.turn.is_some() {
            return vec![error_event(
                400,
                "invalid_request_error",
                "response_in_progress",
                "A response is still being generated on this socket; wait for its last event.",
                None,
            )];
        }
        let generate = !matches!(fields.remove("generate"), Some(Value::Bool(false)));
        // WebSocket-only envelope fields, not part of `POST /v1/responses`.
        fields.remove("stream_id");
        let mut items: Vec<Item> = match fields.remove("previous_response_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(id)) => match self.history.conversation(&id) {
                Some(items) => items.to_vec(),
                None => {
                    return vec![error_event(
                        400,
                        "invalid_request_error",
                        "previous_response_not_found",
                        &format!(
                            "Previous response with id '{}' not found on this WebSocket.",
                            printable(&id)
                        ),
                        Some("previous_response_id"),
                    )]
                }
            },
            Some(_) => {
                return vec![error_event(
                    400,
                    "invalid_request_error",
                    "invalid_type",
                    "previous_response_id must be a string.",
                    Some("previous_response_id"),
                )]
            }
        };
        let Some(new_items) = input_items(fields.remove("input").as_ref()) else {
            return vec![error_event(
                400,
                "invalid_request_error",
                "invalid_type",
                "input must be a string or an array of items.",
                Some("input"),
            )];
        };
        items.extend(new_items);
        fields.insert("stream".into(), Value::Bool(true));
        let body = body_with_input(&fields, &items);
        let limit = self.state.max_request_body;
        if body.len() > limit {
            return vec![error_event(
                413,
                "invalid_request_error",
                "request_too_large",
                &format!("The request with its previous responses is larger than the proxy's limit of {limit} bytes."),
                None,
            )];
        }
        if !generate {
            return self.prewarm(&fields, items);
        }
        let (sender, messages) = mpsc::channel(32);
        let task = crate::worker::spawn_as_caller(run_turn(
            self.state.clone(),
            self.parts.identity.clone(),
            self.parts.upstream_headers.clone(),
            Bytes::from(body),
            items,
            sender,
        ));
        self.turn = Some(Turn { messages, task });
        Vec::new()
    }

    /// A `generate: false` request: remembered with no output, answered with
    /// `response.created` and `response.completed` at once, nothing sent upstream.
    fn prewarm(
        &mut self,
        fields: &serde_json::Map<String, Value>,
        items: Vec<Item>,
    ) -> Vec<String> {
        let id = crate::worker::routes::bridge_route::new_response_id();
        let mut response = json!({
            "id": id,
            "object": "response",
            "created_at": crate::clock::unix_now(),
            "status": "in_progress",
            "model": fields.get("model").cloned().unwrap_or(Value::Null),
            "output": [],
            "usage": null,
        });
        let created =
            json!({"type": "response.created", "sequence_number": 0, "response": response});
        response["status"] = "completed".into();
        response["usage"] = json!({
            "input_tokens": 0,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 0,
        });
        let completed =
            json!({"type": "response.completed", "sequence_number": 1, "response": response});
        self.remember(id, items);
        vec![created.to_string(), completed.to_string()]
    }

    /// Keeps a response for `previous_response_id`, its memory held in the user's share of
    /// body memory (the oldest responses are forgotten when the share is full).
    fn remember(&mut self, id: String, items: Vec<Item>) {
        self.history.remember(id, items);
        self.history_memory = None;
        loop {
            let bytes = self.history.bytes();
            if bytes == 0 {
                return;
            }
            match self
                .state
                .fair_share
                .reserve(self.parts.identity.uid, bytes)
            {
                Ok(reservation) => {
                    self.history_memory = Some(reservation);
                    return;
                }
                Err(refusal) => {
                    tracing::debug!("websocket: history trimmed: {}", refusal.reason());
                    if !self.history.forget_oldest() {
                        return;
                    }
                }
            }
        }
    }
}

/// An id as it may appear in a message: printable, at most 100 characters.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(100).collect()
}

/// An `error` event as OpenAI sends it on a WebSocket.
fn error_event(status: u16, kind: &str, code: &str, message: &str, param: Option<&str>) -> String {
    json!({
        "type": "error",
        "status": status,
        "error": {"type": kind, "code": code, "message": message, "param": param},
    })
    .to_string()
}

/// The one log line and usage record of a turn, written when the turn ends however it ends
/// (a turn cancelled because its client left is logged `client_gone`).
pub(super) struct TurnRecord {
    pub(super) record: RequestRecord,
    pub(super) tap: UsageTap,
    /// Whether the turn's usage is recorded (not for refused turns).
    pub(super) accounted: bool,
    pub(super) outcome: &'static str,
    pub(super) state: Arc<State>,
    /// Counts the turn in flight until it is logged.
    pub(super) _in_flight: crate::worker::metrics::InFlight,
}

impl TurnRecord {
    /// The record of a turn of `identity`'s socket, started now; logged `client_gone` unless
    /// the turn says how it ended.
    pub(super) fn start(state: &Arc<State>, identity: &Arc<PeerIdentity>) -> TurnRecord {
        TurnRecord {
            record: RequestRecord {
                identity: identity.clone(),
                method: "WS".to_owned(),
                path: "/v1/responses".to_owned(),
                route: "websocket_turn",
                status: 0,
                upstream_status: None,
                upstream_failure: None,
                started: Instant::now(),
                first_byte: None,
                bytes: 0,
                failed: false,
            },
            _in_flight: crate::worker::metrics::InFlight::start(),
            tap: UsageTap::new(),
            accounted: false,
            outcome: "client_gone",
            state: state.clone(),
        }
    }
}

impl Drop for TurnRecord {
    fn drop(&mut self) {
        let usage = std::mem::take(&mut self.tap).finish();
        let r = &mut self.record;
        if self.accounted && self.state.accounting.keeps_records() {
            self.state.accounting.finish(
                r.identity.uid,
                r.identity.user.as_deref(),
                &r.path,
                r.status,
                usage.as_ref(),
            );
        }
        let duration_ms = r.started.elapsed().as_millis() as u64;
        let record = RequestRecord {
            identity: r.identity.clone(),
            method: std::mem::take(&mut r.method),
            path: std::mem::take(&mut r.path),
            ..*r
        };
        let outcome = self.outcome;
        crate::logging::defer(move || log_request(&record, usage.as_ref(), outcome, duration_ms));
    }
}

/// Most bytes of an upstream error answer read for the `error` event.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// One `response.create`: admitted like a POST, sent through the strict or bridge path, its
/// SSE events handed to the socket one by one; the last message says what to remember.
async fn run_turn(
    state: Arc<State>,
    identity: Arc<PeerIdentity>,
    headers: HeaderMap,
    body: Bytes,
    input: Vec<Item>,
    messages: mpsc::Sender<TurnMessage>,
) {
    let mut log = TurnRecord::start(&state, &identity);
    let failed = |text: String| TurnMessage {
        text,
        end: Some(TurnEnd { remember: None }),
    };
    if let Some(refusal) = crate::worker::admission(&state, &identity, true) {
        log.record.answered(&refusal);
        log.outcome = "complete";
        let event = error_answer_event(refusal).await;
        let _ = messages.send(failed(event)).await;
        return;
    }
    log.accounted = true;
    // Dumped as the POST it is served as (`--dump-dir`).
    let dump = state
        .dumps
        .as_ref()
        .and_then(|dumps| dumps.begin(identity.uid, "POST", "/v1/responses", &headers, true));
    if let Some(dump) = &dump {
        dump.request_body(&body);
    }
    let response = crate::worker::routes::responses_from_body(&state, &headers, body).await;
    let response = match dump {
        Some(dump) => dump.response(response),
        None => response,
    };
    log.record.answered(&response);
    if !response.status().is_success() {
        let event = error_answer_event(response).await;
        log.outcome = "complete";
        let _ = messages.send(failed(event)).await;
        return;
    }
    let mut upstream = response.into_body();
    let mut reader = SseReader::new(DEFAULT_MAX_EVENT_BYTES);
    let mut turn = TurnEvents::default();
    let mut outbox = Outbox {
        messages: &messages,
        drain_for_usage: state.accounting.keeps_records(),
        gone: None,
        drained: 0,
    };
    let fault = loop {
        match upstream.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                log.record.body_bytes_sent(data.len());
                log.tap.observe(&data);
                if !outbox.may_read_on(data.len()) {
                    return;
                }
                reader.push(&data);
                loop {
                    match reader.next_event() {
                        Ok(Some(event)) => {
                            if let Some(message) = turn.event(event.data, &input) {
                                if !outbox.send(message).await {
                                    return;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            return finish_failed(&mut log, &mut turn, &messages, &e.to_string())
                                .await
                        }
                    }
                }
            }
            Some(Err(e)) => break Some(format!("the upstream stream failed: {e}")),
            None => {
                if let Ok(Some(event)) = reader.finish() {
                    if let Some(message) = turn.event(event.data, &input) {
                        if !outbox.send(message).await {
                            return;
                        }
                    }
                }
                break None;
            }
        }
    };
    if outbox.gone.is_some() {
        // Read on for its usage only: logged as `client_gone`.
        return;
    }
    if turn.ended {
        log.outcome = "complete";
        return;
    }
    let reason = fault
        .unwrap_or_else(|| "the upstream stream ended before the response was complete".to_owned());
    finish_failed(&mut log, &mut turn, &messages, &reason).await;
}

/// Where a turn's messages go, and what happens once the socket is gone: the turn stops at
/// once, unless usage is recorded or limited (a state directory or `--tokens-per-day`), in
/// which case the upstream stream is read on for the usage at its end, as for a POST whose
/// client left (at most [`DRAIN_BYTE_LIMIT`] bytes and [`DRAIN_TIME_LIMIT`]; an upstream
/// silent for `--idle-timeout` ends it too), so that leaving early does not dodge
/// `--tokens-per-day`.
struct Outbox<'a> {
    messages: &'a mpsc::Sender<TurnMessage>,
    drain_for_usage: bool,
    gone: Option<Instant>,
    drained: usize,
}

impl Outbox<'_> {
    /// Hands `message` to the socket; false when the turn should stop now.
    async fn send(&mut self, message: TurnMessage) -> bool {
        if self.gone.is_some() {
            return true;
        }
        if self.messages.send(message).await.is_ok() {
            return true;
        }
        self.gone = Some(Instant::now());
        self.drain_for_usage
    }

    /// Whether `bytes` more may be read from the upstream (always, while the client is there).
    fn may_read_on(&mut self, bytes: usize) -> bool {
        let Some(gone) = self.gone else {
            return true;
        };
        self.drained += bytes;
        self.drained < DRAIN_BYTE_LIMIT && gone.elapsed() < DRAIN_TIME_LIMIT
    }
}

/// Ends a turn whose upstream failed mid-stream with a `response.failed` event.
async fn finish_failed(
    log: &mut TurnRecord,
    turn: &mut TurnEvents,
    messages: &mpsc::Sender<TurnMessage>,
    reason: &str,
) {
    tracing::warn!("websocket: {reason}");
    log.record.failed = true;
    log.outcome = "upstream_error";
    let id = turn
        .id
        .take()
        .unwrap_or_else(crate::worker::routes::bridge_route::new_response_id);
    let event = json!({
        "type": "response.failed",
        "response": {
            "id": id,
            "object": "response",
            "status": "failed",
            "error": {"code": "server_error", "message": reason},
            "output": [],
        },
    });
    let _ = messages
        .send(TurnMessage {
            text: event.to_string(),
            end: Some(TurnEnd { remember: None }),
        })
        .await;
}

/// The `error` event for a refusal or an upstream error answer (its OpenAI-style body).
pub(super) async fn error_answer_event(
    response: hyper::Response<crate::worker::server::http::Body>,
) -> String {
    let status = response.status().as_u16();
    let mut answer = response.into_body();
    let mut body = Vec::new();
    while let Some(Ok(frame)) = answer.frame().await {
        if let Some(data) = frame.data_ref() {
            let room = ERROR_BODY_LIMIT.saturating_sub(body.len());
            body.extend_from_slice(&data[..data.len().min(room)]);
            if room <= data.len() {
                break;
            }
        }
    }
    let error = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|mut v| v.get_mut("error").map(Value::take))
        .filter(Value::is_object)
        .unwrap_or_else(|| {
            json!({
                "type": "server_error",
                "code": null,
                "message": format!("The upstream answered {status}: {}", printable(&String::from_utf8_lossy(&body))),
            })
        });
    json!({"type": "error", "status": status, "error": error}).to_string()
}

/// What a turn learns from its events as they pass: its response id, its output items, and
/// whether it has ended.
#[derive(Default)]
struct TurnEvents {
    id: Option<String>,
    output: Vec<Item>,
    ended: bool,
}

/// Enough of an event to know its type without building it.
#[derive(serde::Deserialize)]
struct EventType<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

impl TurnEvents {
    /// The message for one upstream event (`None` for `[DONE]`, a comment-only event or one
    /// after the end).
    fn event(&mut self, data: &str, input: &[Item]) -> Option<TurnMessage> {
        if self.ended || data.is_empty() || data == "[DONE]" {
            return None;
        }
        let kind = serde_json::from_str::<EventType<'_>>(data)
            .ok()
            .and_then(|e| e.kind)
            .unwrap_or_default();
        let mut end = None;
        match kind.as_ref() {
            "response.created" | "response.in_progress" if self.id.is_none() => {
                self.id = response_id(data);
            }
            "response.output_item.done" => {
                if let Ok(mut event) = serde_json::from_str::<Value>(data) {
                    if let Some(item) = event.get_mut("item").map(Value::take) {
                        self.output.push(item.to_string().into());
                    }
                }
            }
            "response.completed" | "response.incomplete" => {
                self.ended = true;
                let event = serde_json::from_str::<Value>(data).unwrap_or_default();
                let id = event["response"]["id"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| self.id.clone());
                if self.output.is_empty() {
                    if let Some(output) = event["response"]["output"].as_array() {
                        self.output = output.iter().map(|i| i.to_string().into()).collect();
                    }
                }
                let remember = id.map(|id| {
                    let mut items = input.to_vec();
                    items.append(&mut self.output);
                    (id, items)
                });
                end = Some(TurnEnd { remember });
            }
            "response.failed" | "error" => {
                self.ended = true;
                end = Some(TurnEnd { remember: None });
            }
            _ => {}
        }
        Some(TurnMessage {
            text: data.to_owned(),
            end,
        })
    }
}

fn response_id(data: &str) -> Option<String> {
    let event = serde_json::from_str::<Value>(data).ok()?;
    event["response"]["id"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_remembers_its_input_and_output_items_at_completion() {
        let mut turn = TurnEvents::default();
        let input: Vec<Item> = vec![Arc::from("{\"role\":\"user\"}")];
        let created = r#"{"type":"response.created","response":{"id":"resp_1"}}"#;
        assert!(turn.event(created, &input).unwrap().end.is_none());
        let item = r#"{"type":"response.output_item.done","item":{"type":"message","id":"m"}}"#;
        assert!(turn.event(item, &input).is_some());
        assert!(turn.event("[DONE]", &input).is_none());
        let completed = r#"{"type":"response.completed","response":{"id":"resp_1","output":[]}}"#;
        let message = turn.event(completed, &input).unwrap();
        assert_eq!(message.text, completed);
        let (id, items) = message.end.unwrap().remember.unwrap();
        assert_eq!(id, "resp_1");
        assert_eq!(items.len(), 2);
        assert!(items[1].contains("\"id\":\"m\""));
        assert!(
            turn.event(created, &input).is_none(),
            "nothing after the end"
        );
    }

    #[test]
    fn a_failed_turn_is_not_remembered() {
        let mut turn = TurnEvents::default();
        let failed = r#"{"type":"response.failed","response":{"id":"r"}}"#;
        assert!(turn
            .event(failed, &[])
            .unwrap()
            .end
            .unwrap()
            .remember
            .is_none());
    }

    #[test]
    fn pings_come_well_within_the_idle_timeout() {
        assert_eq!(
            ping_interval(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
        assert_eq!(
            ping_interval(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(
            ping_interval(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }
}
