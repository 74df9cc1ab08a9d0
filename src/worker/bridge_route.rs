//! Bridge mode's route: `POST /v1/responses` served from a Chat Completions upstream. The
//! request and stream conversions are the pure functions in `openai_wire::bridge`; this module only
//! moves bytes between them and the network.

use super::http::{error_response, json_response, Body, UpstreamStatus};
use super::translate::{self, Flow, StreamConverter};
use super::upstream::{mirror_error, UpstreamClient};
use super::{headers, State};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use openai_wire::bridge::request::responses_to_chat;
use openai_wire::bridge::stream::ChatStreamConverter;
use tracing::debug;

impl StreamConverter for ChatStreamConverter {
    fn start(&mut self, out: &mut Vec<u8>) {
        ChatStreamConverter::start(self, out)
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

pub async fn serve(
    state: &State,
    upstream: &UpstreamClient,
    request: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match state.read_body(body, &parts.headers).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    serve_body(state, upstream, &parts.headers, &body).await
}

/// Serves a request body already read (a POST's, or a WebSocket message's) with the
/// client's `headers`.
pub async fn serve_body(
    state: &State,
    upstream: &UpstreamClient,
    client_headers: &hyper::HeaderMap,
    body: &[u8],
) -> Response<Body> {
    let json: serde_json::Value = match serde_json::from_slice(body) {
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
    let plan = match responses_to_chat(&json) {
        Ok(plan) => plan,
        Err(e) => {
            debug!("bridge: request refused: {e}");
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            return json_response(status, e.to_body());
        }
    };
    if !plan.dropped_tools.is_empty() {
        debug!(tools = ?plan.dropped_tools, "bridge: tools with no chat equivalent left out");
    }
    for note in &plan.notes {
        debug!("bridge: {note}");
    }
    let mut upstream_headers = headers::for_upstream(client_headers);
    upstream_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    upstream_headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    upstream_headers.remove(hyper::header::ACCEPT_ENCODING);
    let chat_body = match serde_json::to_vec(&plan.chat_body) {
        Ok(bytes) => bytes,
        Err(e) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("could not encode the upstream request: {e}"),
                "server_error",
                None,
            )
        }
    };
    let answer = match upstream
        .post_or_answer(&state.upstream_url, upstream_headers, chat_body.into())
        .await
    {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let upstream_status = answer.status();
    if !upstream_status.is_success() {
        return mirror_error(answer).await;
    }
    let converter = ChatStreamConverter::new(plan.meta, &new_response_id(), unix_now());
    let mut response = if plan.client_stream {
        translate::streaming_response(answer, converter)
    } else {
        let converter = translate::run_to_end(answer, converter).await;
        let object = converter.final_response();
        if converter.status() == "failed" {
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
    };
    response
        .extensions_mut()
        .insert(UpstreamStatus(upstream_status.as_u16()));
    response
}

/// `resp_` followed by 32 hex digits, unique within this worker and across restarts.
pub fn new_response_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mixed = (u64::from(std::process::id()) << 40) ^ count.rotate_left(17);
    format!("resp_{nanos:016x}{mixed:016x}")
}

pub fn unix_now() -> u64 {
    crate::clock::unix_now()
}
