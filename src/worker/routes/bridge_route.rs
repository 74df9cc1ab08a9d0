//! Bridge mode's routes: `POST /v1/responses` (and `POST /v1/responses/compact`) served from a
//! Chat Completions upstream, and `GET /v1/responses/{id}` from the stored responses. The
//! request and stream conversions are the pure functions in `openai_wire::bridge`; this module
//! only moves bytes between them, the network, the response store
//! ([`crate::worker::conversation::response_store`]) and the compaction seal ([`crate::worker::conversation::compaction_seal`]).
//!
//! Uses: `crate::clock`, `crate::worker::conversation`, `crate::worker::server`,
//! `crate::worker::upstream` and hyper, openai_wire, reqwest, serde_json, tracing.

use crate::worker::conversation::response_store::{Owner, ResponseStore, StoredResponse};
use crate::worker::routes::translate::{self, Flow, StreamConverter};
use crate::worker::server::http::{error_response, json_response, Body, UpstreamStatus};
use crate::worker::upstream::headers;
use crate::worker::upstream::{mirror_error, UpstreamClient};
use crate::worker::State;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use openai_wire::bridge::compaction::{self, CompactionStream};
use openai_wire::bridge::request::{responses_to_chat, ChatPlan, RequestError};
use openai_wire::bridge::stored;
use openai_wire::bridge::stream::ChatStreamConverter;
use serde_json::Value;
use std::sync::Arc;
use tracing::{debug, info};

/// The bridge's two converters (a Chat Completions stream into Responses events, and a
/// summary into the one compaction item) share the shape `translate` drives.
macro_rules! chat_stream_converter {
    ($($converter:ty),+) => {$(
        impl StreamConverter for $converter {
            fn start(&mut self, out: &mut Vec<u8>) {
                <$converter>::start(self, out)
            }
            fn push_event(&mut self, data: &str, out: &mut Vec<u8>) -> Flow {
                self.push_sse_data(data, out).into()
            }
            fn upstream_ended(&mut self, out: &mut Vec<u8>) {
                self.end_of_stream(out)
            }
            fn upstream_failed(&mut self, message: &str, out: &mut Vec<u8>) {
                self.fail("server_error", message, out)
            }
            fn is_done(&self) -> bool {
                self.is_terminated()
            }
        }
    )+};
}
chat_stream_converter!(ChatStreamConverter, CompactionStream);

/// Where a response goes once it is complete, for a request that asked to store it.
struct StoreOnCompletion {
    store: Arc<ResponseStore>,
    owner: Owner,
    id: String,
    /// The request's whole input, references and previous responses expanded.
    input: Vec<Value>,
}

/// The chat stream converter, storing the final response (completed or incomplete, not
/// failed) when it ends, whether the client streams or not.
struct StoringConverter {
    inner: ChatStreamConverter,
    store: Option<StoreOnCompletion>,
}

impl StoringConverter {
    fn store_if_done(&mut self) {
        if !self.inner.is_terminated() || self.inner.status() == "failed" {
            return;
        }
        let Some(target) = self.store.take() else {
            return;
        };
        let response = self.inner.final_response();
        let output = response["output"].as_array().cloned().unwrap_or_default();
        let stored = StoredResponse {
            response,
            input: target.input,
            output,
        };
        match target.store.insert(target.owner, &target.id, stored) {
            Ok(()) => debug!(id = %target.id, "bridge: response stored"),
            Err(why) => info!(id = %target.id, "bridge: response not stored: {why:?}"),
        }
    }
}

impl StreamConverter for StoringConverter {
    fn start(&mut self, out: &mut Vec<u8>) {
        self.inner.start(out)
    }
    fn push_event(&mut self, data: &str, out: &mut Vec<u8>) -> Flow {
        let flow = self.inner.push_sse_data(data, out).into();
        self.store_if_done();
        flow
    }
    fn upstream_ended(&mut self, out: &mut Vec<u8>) {
        self.inner.end_of_stream(out);
        self.store_if_done();
    }
    fn upstream_failed(&mut self, message: &str, out: &mut Vec<u8>) {
        self.inner.fail("server_error", message, out);
    }
    fn is_done(&self) -> bool {
        self.inner.is_terminated()
    }
}

/// Which bridge route is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BridgeRoute {
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/responses/compact`: always a compaction, answered as one JSON object.
    Compact,
}

fn refused(error: &RequestError) -> Response<Body> {
    info!("bridge: request refused: {error}");
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, error.to_body())
}

/// `GET /v1/responses/{id}`: the caller's stored response, or 404 (also for another user's).
pub(crate) fn stored_response(state: &State, id: &str) -> Response<Body> {
    match state.response_store.get(state.caller(), id) {
        Some(stored) => json_response(
            StatusCode::OK,
            serde_json::to_vec(&stored.response).unwrap_or_default(),
        ),
        None => {
            info!("bridge: stored response {id} not found for this caller");
            error_response(
                StatusCode::NOT_FOUND,
                &format!("Response with id '{id}' not found."),
                "invalid_request_error",
                Some("response_not_found"),
            )
        }
    }
}

pub(crate) async fn serve(
    state: &State,
    upstream: &UpstreamClient,
    request: Request<Incoming>,
    route: BridgeRoute,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match state.read_body(body, &parts).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    serve_body(state, upstream, &parts.headers, &body, route).await
}

/// Serves a request body already read (a POST's, or a WebSocket message's) with the client's
/// `client_headers`.
pub(crate) async fn serve_body(
    state: &State,
    upstream: &UpstreamClient,
    client_headers: &hyper::HeaderMap,
    body: &[u8],
    route: BridgeRoute,
) -> Response<Body> {
    let mut json: Value = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("The request body is not valid JSON: {e}"),
                "invalid_request_error",
                Some("invalid_json"),
            )
        }
    };
    // Stored state first: previous responses and referenced items, then our own compaction
    // items, so that the conversion sees the whole conversation.
    let owner = state.caller();
    let store = &state.response_store;
    let previous_id = match stored::expand_request(
        &mut json,
        |id| store.get(owner, id).map(|r| r.conversation()),
        |id| store.item(owner, id),
    ) {
        Ok(previous_id) => previous_id,
        Err(e) => return refused(&e),
    };
    let wants_store = route == BridgeRoute::Responses && stored::wants_store(&json);
    let input_to_store = if wants_store {
        json.as_object().and_then(stored::input_items)
    } else {
        None
    };
    let seal = state.compaction_seal.clone();
    let restored = compaction::restore_compaction_items(&mut json, |blob| {
        seal.as_ref().and_then(|seal| seal.open_blob(blob))
    });
    match restored {
        Ok(0) => {}
        Ok(n) => debug!("bridge: {n} compaction item(s) restored"),
        Err(e) => return refused(&e),
    }
    let compacting = route == BridgeRoute::Compact || compaction::is_compaction_trigger(&json);
    let client_stream = route == BridgeRoute::Responses
        && json.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let kept_messages = if route == BridgeRoute::Compact {
        compaction::user_messages(&json)
    } else {
        Vec::new()
    };
    let chat_request = if compacting {
        compaction::summarisation_request(&json, client_stream)
    } else {
        json
    };
    let mut plan = match responses_to_chat(&chat_request) {
        Ok(plan) => plan,
        Err(e) => return refused(&e),
    };
    if !plan.dropped_tools.is_empty() {
        debug!(tools = ?plan.dropped_tools, "bridge: tools with no chat equivalent left out");
    }
    for note in &plan.notes {
        debug!("bridge: {note}");
    }
    if !compacting {
        plan.meta
            .echo
            .insert("store".into(), Value::Bool(input_to_store.is_some()));
        plan.meta.echo.insert(
            "previous_response_id".into(),
            previous_id.map_or(Value::Null, Value::String),
        );
    }
    let answer = match send(state, upstream, client_headers, &plan).await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let upstream_status = answer.status();
    if !upstream_status.is_success() {
        return mirror_error(answer).await;
    }
    // Kept on the answer for what cleans it of the credential (`--dump-dir`).
    let credential = answer
        .extensions()
        .get::<crate::worker::upstream::SentCredential>()
        .cloned();
    let id = new_response_id();
    let chat_converter = ChatStreamConverter::new(plan.meta, &id, unix_now());
    let mut response = if compacting {
        let Some(seal) = state.compaction_seal.clone() else {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "compaction has no key in this worker",
                "server_error",
                None,
            );
        };
        let converter = CompactionStream::new(
            chat_converter,
            &id,
            Box::new(move |summary: &str| seal.seal(summary)),
        );
        if client_stream {
            translate::streaming_response(answer, converter)
        } else {
            let converter = translate::run_to_end(answer, converter).await;
            let object = converter.final_response().cloned().unwrap_or(Value::Null);
            let object = if route == BridgeRoute::Compact && object["status"] == "completed" {
                compaction::compact_endpoint_response(kept_messages, object)
            } else {
                object
            };
            final_json(object, upstream_status)
        }
    } else {
        let converter = StoringConverter {
            inner: chat_converter,
            store: input_to_store.map(|input| StoreOnCompletion {
                store: state.response_store.clone(),
                owner,
                id,
                input,
            }),
        };
        if plan.client_stream {
            translate::streaming_response(answer, converter)
        } else {
            let converter = translate::run_to_end(answer, converter).await;
            final_json(converter.inner.final_response(), upstream_status)
        }
    };
    response
        .extensions_mut()
        .insert(UpstreamStatus(upstream_status.as_u16()));
    if let Some(credential) = credential {
        response.extensions_mut().insert(credential);
    }
    response
}

/// Sends the chat request of `plan` upstream.
async fn send(
    state: &State,
    upstream: &UpstreamClient,
    client_headers: &hyper::HeaderMap,
    plan: &ChatPlan,
) -> Result<reqwest::Response, Response<Body>> {
    let mut upstream_headers = headers::for_upstream(client_headers);
    upstream_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    upstream_headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    upstream_headers.remove(hyper::header::ACCEPT_ENCODING);
    let chat_body = serde_json::to_vec(&plan.chat_body).map_err(|e| {
        error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("could not encode the upstream request: {e}"),
            "server_error",
            None,
        )
    })?;
    upstream
        .post_or_answer(&state.upstream_url, upstream_headers, chat_body.into())
        .await
}

/// The JSON answer for a client that did not stream: the final `Response` object, or a 502
/// when the upstream's stream failed.
fn final_json(object: Value, upstream_status: StatusCode) -> Response<Body> {
    if object["status"] == "failed" {
        let error = &object["error"];
        let mut response = error_response(
            StatusCode::BAD_GATEWAY,
            error["message"].as_str().unwrap_or("the upstream failed"),
            "server_error",
            error["code"].as_str(),
        );
        response
            .extensions_mut()
            .insert(UpstreamStatus(upstream_status.as_u16()));
        return response;
    }
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&object).unwrap_or_default(),
    )
}

/// `resp_` followed by 32 hex digits, unique within this worker and across restarts.
pub(crate) fn new_response_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mixed = (u64::from(std::process::id()) << 40) ^ count.rotate_left(17);
    format!("resp_{nanos:016x}{mixed:016x}")
}

pub(crate) fn unix_now() -> u64 {
    crate::clock::unix_now()
}
