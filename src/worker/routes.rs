//! Which request goes where. Only origin-form targets with an exact path and no query string
//! match a route; everything else is refused with 403 before any body is read.

use super::http::{error_response, json_response, Body};
use super::{strict, State};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;

pub async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let uri = request.uri();
    let exact_path = if uri.scheme().is_none() && uri.authority().is_none() && uri.query().is_none()
    {
        uri.path()
    } else {
        ""
    };
    match (request.method(), exact_path) {
        (&Method::GET, "/shutdown") if state.http_shutdown => shutdown(&state),
        (&Method::POST, "/v1/responses") => match &state.upstream {
            Some(upstream) => strict::forward(&state, upstream, request).await,
            None => not_configured(),
        },
        _ if state.upstream.is_none() => not_configured(),
        _ => forbidden(),
    }
}

fn forbidden() -> Response<Body> {
    error_response(
        StatusCode::FORBIDDEN,
        "This proxy only serves POST /v1/responses.",
        "invalid_request_error",
        Some("forbidden"),
    )
}

fn not_configured() -> Response<Body> {
    tracing::warn!(
        "request refused: no API key is installed; as root run `codex-responses-api-proxy-install-key < keyfile`"
    );
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "The proxy has no API key installed yet. An administrator must install one: as root, run `codex-responses-api-proxy-install-key` with the key on standard input.",
        "server_error",
        Some("api_key_not_configured"),
    )
}

fn shutdown(state: &State) -> Response<Body> {
    tracing::info!("shutdown requested over HTTP");
    crate::supervisor::tell_supervisor(&state.supervisor_pipe, crate::supervisor::MSG_SHUTDOWN);
    json_response(StatusCode::OK, r#"{"status":"shutting down"}"#)
}
