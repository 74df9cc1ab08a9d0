//! Which request goes where. Only origin-form targets with an exact path and no query string
//! match a route (the Ollama pass-through alone keeps its query); everything else is refused
//! with 403 before any body is read.

use super::http::{error_response, json_response, Body};
use super::wrapper_routes::{self, WrapperRoute};
use super::{bridge_route, strict, State};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;

pub async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let uri = request.uri();
    let origin_form = uri.scheme().is_none() && uri.authority().is_none();
    let has_query = uri.query().is_some();
    let exact_path = if origin_form && !has_query {
        uri.path()
    } else {
        ""
    };

    if let Some(wrapper) = &state.wrapper {
        let route = if origin_form {
            wrapper_routes::classify(&wrapper.settings, request.method(), uri.path())
                .filter(|r| !has_query || *r == WrapperRoute::Ollama)
        } else {
            None
        };
        if !matches!(route, Some(WrapperRoute::Health | WrapperRoute::Preflight)) {
            if let Some(unauthorized) =
                wrapper_routes::client_key_rejection(wrapper, request.headers())
            {
                return unauthorized;
            }
        }
        if let Some(route) = route {
            return wrapper_routes::serve(&state, wrapper, route, request).await;
        }
    }

    match (request.method(), exact_path) {
        (&Method::GET, "/shutdown") if state.http_shutdown => shutdown(&state),
        (&Method::POST, "/v1/responses") => match &state.upstream {
            Some(upstream) if state.bridge_to_chat => {
                bridge_route::serve(&state, upstream, request).await
            }
            Some(upstream) => strict::forward(&state, upstream, request).await,
            None => not_configured(),
        },
        _ if state.upstream.is_none() => not_configured(),
        _ => forbidden(&state),
    }
}

fn forbidden(state: &State) -> Response<Body> {
    let message = if state.wrapper.is_some() {
        "This proxy serves POST /v1/responses and the wrapper routes (/v1/chat/completions, /v1/completions, /v1/models, /api/*) only."
    } else {
        "This proxy only serves POST /v1/responses."
    };
    error_response(
        StatusCode::FORBIDDEN,
        message,
        "invalid_request_error",
        Some("forbidden"),
    )
}

pub fn not_configured() -> Response<Body> {
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
    if let Err(e) = state
        .supervisor_pipe
        .send(crate::contract::WorkerMessage::ShutdownRequested)
    {
        tracing::error!("worker: cannot pass the shutdown request to the supervisor: {e}");
    }
    json_response(StatusCode::OK, r#"{"status":"shutting down"}"#)
}
