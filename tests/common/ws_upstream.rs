//! A WebSocket Responses upstream of the tests' own, standing in for api.openai.com's
//! `wss://…/v1/responses`: a tokio-tungstenite server on loopback that refuses a handshake
//! without `Authorization: Bearer TEST_KEY` (401), keeps what it saw, and answers each
//! `response.create` the way the real one does:
//! - a prewarm (`"generate": false`) with `response.created` + `response.completed` (an id, no
//!   output), as Codex expects;
//! - a `previous_response_id` it did not make on this socket with an `error` event
//!   (`previous_response_not_found`): the upstream's own state is per socket;
//! - anything else with the events the test's script returns for that request — all but the
//!   first held back until the client's next message when its `metadata.hold_after_created`
//!   is true.
//!
//! Any other message type gets an `error` event (`unknown_event_type`), as OpenAI's does.

use super::TEST_KEY;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// What the WebSocket upstream saw.
#[derive(Default)]
pub struct WsSeen {
    /// The `Authorization` of each accepted handshake.
    pub authorizations: Vec<String>,
    /// Every handshake's headers, as `name: value` lines.
    pub handshake_headers: Vec<String>,
    /// Every text message received, as received.
    pub messages: Vec<String>,
}

impl WsSeen {
    /// The `response.create` messages that asked for a response (not prewarms), as JSON.
    pub fn generating_requests(&self) -> Vec<Value> {
        self.messages
            .iter()
            .filter_map(|m| serde_json::from_str::<Value>(m).ok())
            .filter(|m| m["type"] == "response.create" && m["generate"] != false)
            .collect()
    }
}

/// Answers one generating `response.create` (the request as sent, the response id to use)
/// with its events, the last one `response.completed` naming that id.
pub type WsScript = dyn Fn(&Value, &str) -> Vec<Value> + Send + Sync;

pub struct WsUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<WsSeen>>,
}

impl WsUpstream {
    pub async fn start(
        script: impl Fn(&Value, &str) -> Vec<Value> + Send + Sync + 'static,
    ) -> WsUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(WsSeen::default()));
        let script: Arc<WsScript> = Arc::new(script);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            let mut sockets = 0u32;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                sockets += 1;
                let (seen, script) = (seen2.clone(), script.clone());
                tokio::spawn(serve_socket(stream, sockets, seen, script));
            }
        });
        WsUpstream { addr, seen }
    }

    /// The HTTP form of its URL, as given to `--upstream-url` (the proxy derives `ws://`).
    pub fn url(&self) -> String {
        format!("http://{}/v1/responses", self.addr)
    }
}

async fn serve_socket(
    stream: tokio::net::TcpStream,
    socket_number: u32,
    seen: Arc<Mutex<WsSeen>>,
    script: Arc<WsScript>,
) {
    let seen_handshake = seen.clone();
    // tungstenite's callback signature: its error type is large, and not ours to change.
    #[allow(clippy::result_large_err)]
    let check = move |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let mut seen = seen_handshake.lock().unwrap();
        for (name, value) in request.headers() {
            seen.handshake_headers
                .push(format!("{name}: {}", value.to_str().unwrap_or("?")));
        }
        let auth = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if auth != format!("Bearer {TEST_KEY}") {
            let mut refusal = ErrorResponse::new(Some("bad key".into()));
            *refusal.status_mut() = 401.try_into().unwrap();
            return Err(refusal);
        }
        seen.authorizations.push(auth);
        Ok(response)
    };
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    let mut made: HashSet<String> = HashSet::new();
    let mut n = 0;
    // The events of a response held back (`metadata.hold_after_created`) until the next
    // message of the client.
    let mut held: Vec<Value> = Vec::new();
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        seen.lock().unwrap().messages.push(text.to_string());
        let Ok(request) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        if request["type"] != "response.create" {
            // As OpenAI does: an error for a type it does not know; then what was held.
            let error = json!({"type": "error", "status": 400, "error": {
                "type": "invalid_request_error", "code": "unknown_event_type",
                "message": format!("Invalid type: {}", request["type"])}});
            for event in std::iter::once(error).chain(held.drain(..)) {
                if socket.send(Message::text(event.to_string())).await.is_err() {
                    return;
                }
            }
            continue;
        }
        if let Some(previous) = request["previous_response_id"].as_str() {
            if !made.contains(previous) {
                let error = json!({"type": "error", "status": 400, "error": {
                    "type": "invalid_request_error", "code": "previous_response_not_found",
                    "message": format!("Previous response with id '{previous}' not found.")}});
                let _ = socket.send(Message::text(error.to_string())).await;
                continue;
            }
        }
        n += 1;
        let id = format!("resp_ws_{socket_number}_{n}");
        made.insert(id.clone());
        let events = if request["generate"] == false {
            let response = json!({"id": id, "object": "response", "status": "completed",
                "output": [], "usage": null});
            vec![
                json!({"type": "response.created", "response": {"id": id, "status": "in_progress", "output": []}}),
                json!({"type": "response.completed", "response": response}),
            ]
        } else {
            script(&request, &id)
        };
        let events = if request["metadata"]["hold_after_created"] == true {
            let mut events = events.into_iter();
            let first: Vec<Value> = events.next().into_iter().collect();
            held.extend(events);
            first
        } else {
            events
        };
        for event in events {
            if socket.send(Message::text(event.to_string())).await.is_err() {
                return;
            }
        }
    }
}
