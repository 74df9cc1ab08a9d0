//! Which request goes where. Only origin-form targets with an exact path and no query string
//! match a route (the Ollama pass-through alone keeps its query); everything else is refused
//! with 403 before any body is read.
//!
//! Uses: `crate::contract`, `crate::worker::server` and hyper, tracing.

pub(crate) mod bridge_route;
pub(crate) mod strict;
pub(crate) mod translate;
pub(crate) mod wrapper_routes;

use crate::worker::server::http::{error_response, json_response, Body};
use crate::worker::websocket;
use crate::worker::State;
use bridge_route::BridgeRoute;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use wrapper_routes::WrapperRoute;

/// Where a request goes: decided once, by [`classify`], and used for routing ([`handle`]),
/// admission (only model routes count against `--requests-per-minute`) and accounting (only
/// model routes are recorded in `usage.jsonl`).
pub(crate) enum Route {
    /// `POST /v1/responses`, forwarded (strict) or bridged to a chat upstream.
    Responses,
    /// `POST /v1/responses/compact`, forwarded (strict) or answered by the bridge's compaction.
    Compact,
    /// `GET /v1/responses/{id}` in bridge mode: the caller's stored response.
    StoredResponse(String),
    /// `GET /v1/responses` asking for a WebSocket (`crate::worker::websocket`).
    WebSocket,
    /// `GET /shutdown` with `--http-shutdown`.
    Shutdown,
    /// A wrapper route (`--wrapper-routes`).
    Wrapper(WrapperRoute),
    /// Refused before anything is read or forwarded: the answer to send.
    Refused(Response<Body>),
}

impl Route {
    /// The route's name in the metrics (`route` label): a fixed word per route, never
    /// anything the client wrote.
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            Route::Responses => "responses",
            Route::Compact => "compact",
            Route::StoredResponse(_) => "stored_response",
            Route::WebSocket => "websocket",
            Route::Shutdown => "shutdown",
            Route::Wrapper(route) => route.metric_label(),
            Route::Refused(_) => "refused",
        }
    }

    /// A request to a model: its tokens are counted, limited and recorded.
    pub(crate) fn is_model_route(&self) -> bool {
        matches!(
            self,
            Route::Responses
                | Route::Compact
                | Route::Wrapper(WrapperRoute::ChatCompletions(_) | WrapperRoute::Completions)
        )
    }
}

impl Route {
    /// Whether an exchange on this route is dumped (`--dump-dir`): not a refusal, and not a
    /// WebSocket's handshake (its turns are dumped one by one).
    pub(crate) fn is_dumped(&self) -> bool {
        !matches!(self, Route::Refused(_) | Route::WebSocket)
    }
}

/// The one classification of a request: method, exact origin-form path (no query but for
/// the Ollama pass-through), `Expect`, the wrapper's client key and whether a key is
/// installed.
pub(crate) fn classify<B>(state: &State, request: &Request<B>) -> Route {
    if let Some(refusal) = unmet_expectation(request.headers()) {
        return Route::Refused(refusal);
    }
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
                return Route::Refused(unauthorized);
            }
        }
        match route {
            Some(WrapperRoute::ChatCompletions(_) | WrapperRoute::Completions)
                if state.upstream.is_none() =>
            {
                return Route::Refused(not_configured())
            }
            Some(route) => return Route::Wrapper(route),
            None => {}
        }
    }

    match (request.method(), exact_path) {
        (&Method::GET, "/shutdown") if state.http_shutdown => Route::Shutdown,
        _ if state.upstream.is_none() => Route::Refused(not_configured()),
        (&Method::POST, "/v1/responses") => Route::Responses,
        (&Method::POST, "/v1/responses/compact") => Route::Compact,
        (&Method::GET, "/v1/responses") if websocket::asks_for_websocket(request.headers()) => {
            match state.websockets {
                Some(_) => Route::WebSocket,
                None => Route::Refused(websocket::refused_while_off()),
            }
        }
        (&Method::GET, path) if state.bridge_to_chat => match stored_response_id(path) {
            Some(id) => Route::StoredResponse(id.to_string()),
            None => Route::Refused(forbidden(state)),
        },
        _ => Route::Refused(forbidden(state)),
    }
}

/// The `{id}` of `/v1/responses/{id}`: letters, digits, `_` and `-` only.
fn stored_response_id(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/responses/").filter(|id| {
        !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// A 417 for any expectation but `100-continue` (RFC 9110 §10.1.1), which hyper answers
/// itself when the body is first read.
fn unmet_expectation(headers: &hyper::HeaderMap) -> Option<Response<Body>> {
    let unmet = headers.get_all(hyper::header::EXPECT).iter().any(|value| {
        !value
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"100-continue")
    });
    unmet.then(|| {
        crate::worker::server::http::close_after(error_response(
            StatusCode::EXPECTATION_FAILED,
            "The only expectation this proxy meets is Expect: 100-continue.",
            "invalid_request_error",
            Some("expectation_failed"),
        ))
    })
}

/// Serves a request classified by [`classify`].
pub(crate) async fn handle(
    state: Arc<State>,
    route: Route,
    request: Request<Incoming>,
) -> Response<Body> {
    match route {
        Route::Refused(response) => response,
        Route::Shutdown => shutdown(&state),
        Route::Wrapper(route) => match &state.wrapper {
            Some(wrapper) => wrapper_routes::serve(&state, wrapper, route, request).await,
            None => forbidden(&state),
        },
        Route::Responses => match &state.upstream {
            Some(upstream) if state.bridge_to_chat => {
                bridge_route::serve(&state, upstream, request, BridgeRoute::Responses).await
            }
            Some(upstream) => strict::forward(&state, upstream, request).await,
            None => not_configured(),
        },
        Route::Compact => match &state.upstream {
            Some(upstream) if state.bridge_to_chat => {
                bridge_route::serve(&state, upstream, request, BridgeRoute::Compact).await
            }
            Some(upstream) => strict::forward_compact(&state, upstream, request).await,
            None => not_configured(),
        },
        Route::StoredResponse(id) => bridge_route::stored_response(&state, &id),
        Route::WebSocket => websocket::accept(state, request).await,
    }
}

/// A Responses request body already read (a WebSocket turn's), served as `POST
/// /v1/responses` is: forwarded (strict) or bridged, with the client's `headers`.
pub(crate) async fn responses_from_body(
    state: &State,
    headers: &hyper::HeaderMap,
    body: bytes::Bytes,
) -> Response<Body> {
    match &state.upstream {
        Some(upstream) if state.bridge_to_chat => {
            bridge_route::serve_body(state, upstream, headers, &body, BridgeRoute::Responses).await
        }
        Some(upstream) => strict::forward_body(state, upstream, headers, body).await,
        None => not_configured(),
    }
}

fn forbidden(state: &State) -> Response<Body> {
    let message = if state.wrapper.is_some() {
        "This proxy serves POST /v1/responses and the wrapper routes (/v1/chat/completions, /v1/completions, /v1/models, /api/*) only."
    } else {
        "This proxy only serves POST /v1/responses (and /v1/responses/compact)."
    };
    error_response(
        StatusCode::FORBIDDEN,
        message,
        "invalid_request_error",
        Some("forbidden"),
    )
}

pub(crate) fn not_configured() -> Response<Body> {
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
