//! The one upstream client: adds the key, applies the connect and idle timeouts, never follows
//! redirects, and turns transport failures into clear 502/504 answers.
//!
//! Uses: `crate::worker::server` and bytes, futures_util, hyper, reqwest, serde_json, tracing.

pub(crate) mod client_headers;
pub(crate) mod connection;
pub(crate) mod direct_upstream;
pub(crate) mod headers;
pub(crate) mod redact;
pub(crate) mod upstream_auth;
pub mod upstream_wire;
pub(crate) mod workload_identity;

use crate::worker::server::http::{error_response, json_response, Body};
use crate::worker::upstream::headers::UpstreamRequestPolicy;
use crate::worker::upstream::upstream_auth::{AuthError, UpstreamAuth};
use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use hyper::{Response, StatusCode};
use std::time::Duration;

#[derive(Clone)]
pub(crate) struct UpstreamClient {
    client: reqwest::Client,
    auth: UpstreamAuth,
    /// Billing headers and the encoding asked for, applied to every request.
    policy: std::sync::Arc<UpstreamRequestPolicy>,
}

/// The `Authorization` value a request went upstream with, kept in the response's extensions
/// so that what reaches the client can be cleaned of it (`crate::worker::upstream::redact`).
#[derive(Clone)]
pub(crate) struct SentCredential(pub HeaderValue);

/// A request that got no HTTP response from the upstream.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// No connection (refused, no route, DNS).
    Unreachable(String),
    /// The TLS handshake failed (an untrusted or wrong certificate, a refused client one).
    Tls(String),
    /// Connected, but no usable answer came (closed before answering, a malformed head).
    Protocol(String),
    Timeout(String),
    /// The credentials could not be prepared (token refresh failed, misconfiguration).
    Auth(AuthError),
}

impl UpstreamError {
    fn from_reqwest(error: reqwest::Error) -> Self {
        let detail = innermost_cause(&error);
        if error.is_timeout() {
            UpstreamError::Timeout(detail)
        } else if connection::tls_failure(&error).is_some() {
            UpstreamError::Tls(detail)
        } else if error.is_connect() {
            UpstreamError::Unreachable(detail)
        } else {
            UpstreamError::Protocol(detail)
        }
    }

    /// The failure's kind in the metrics (`upstream_errors_total{kind}`).
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable(_) => "connect",
            UpstreamError::Tls(_) => "tls",
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Auth(_) => "auth",
        }
    }

    pub(crate) fn to_response(&self) -> Response<Body> {
        let mut response = self.answer();
        response
            .extensions_mut()
            .insert(crate::worker::server::http::UpstreamFailure(
                self.metric_label(),
            ));
        response
    }

    fn answer(&self) -> Response<Body> {
        match self {
            UpstreamError::Unreachable(detail)
            | UpstreamError::Tls(detail)
            | UpstreamError::Protocol(detail) => error_response(
                StatusCode::BAD_GATEWAY,
                &format!("The proxy could not get a response from the upstream: {detail}"),
                "upstream_error",
                Some("upstream_unreachable"),
            ),
            UpstreamError::Timeout(detail) => error_response(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("The upstream did not answer in time: {detail}"),
                "upstream_error",
                Some("upstream_timeout"),
            ),
            UpstreamError::Auth(error) => {
                let (status, body) = error.to_response_parts();
                json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    body,
                )
            }
        }
    }
}

/// What a transport error says at its root ("Connection refused", "dns error", why a TLS
/// certificate was refused, …): no URL (which could carry credentials an admin put there) and
/// no headers, so no key.
pub(crate) fn innermost_cause(error: &reqwest::Error) -> String {
    if let Some(why) = connection::tls_failure(error) {
        return why;
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if std::ptr::addr_eq(cause, error) {
        // No source: reqwest's own message, with the URL removed.
        let mut without_url = String::new();
        let _ = std::fmt::write(&mut without_url, format_args!("{}", UrlFree(error)));
        return without_url;
    }
    cause.to_string()
}

/// Formats a reqwest error without its URL.
struct UrlFree<'a>(&'a reqwest::Error);

impl std::fmt::Display for UrlFree<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.0.is_timeout() {
            "timed out"
        } else if self.0.is_connect() {
            "could not connect"
        } else if self.0.is_body() || self.0.is_decode() {
            "the response body failed"
        } else {
            "the request failed"
        };
        f.write_str(kind)
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Unreachable(d) | UpstreamError::Tls(d) | UpstreamError::Protocol(d) => {
                write!(f, "upstream unreachable: {d}")
            }
            UpstreamError::Timeout(d) => write!(f, "upstream timeout: {d}"),
            UpstreamError::Auth(e) => write!(f, "upstream authentication: {e}"),
        }
    }
}

/// The HTTP client every upstream request (and token refresh) goes through. `idle_timeout`
/// bounds every wait for the upstream: for its headers and between any two reads of its body.
pub(crate) fn build_http_client(
    connection: &connection::UpstreamConnection,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Result<reqwest::Client, String> {
    connection
        .client_builder(connect_timeout, idle_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

impl UpstreamClient {
    pub(crate) fn new(
        client: reqwest::Client,
        auth: UpstreamAuth,
        policy: UpstreamRequestPolicy,
    ) -> Self {
        UpstreamClient {
            client,
            auth,
            policy: std::sync::Arc::new(policy),
        }
    }

    /// Obtains the credentials that must be there before serving (workload identity).
    pub(crate) async fn prepare(&self) -> Result<(), AuthError> {
        self.auth.prepare().await
    }

    /// The same credentials over another connection pool (each worker shard has its own, so
    /// that a connection is driven by the thread that uses it).
    pub(crate) fn with_client(&self, client: reqwest::Client) -> Self {
        UpstreamClient {
            client,
            auth: self.auth.clone(),
            policy: self.policy.clone(),
        }
    }

    async fn send(
        &self,
        url: &reqwest::Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, UpstreamError> {
        let credential = headers.get(AUTHORIZATION).cloned();
        let mut response = self
            .client
            .post(url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(UpstreamError::from_reqwest)?;
        if let Some(credential) = credential {
            response.extensions_mut().insert(SentCredential(credential));
        }
        Ok(response)
    }

    /// The headers of an upstream WebSocket handshake: the client's end-to-end ones (the same
    /// header policy as a POST: no client `Authorization`, billing headers as configured)
    /// plus the credentials. The caller adds the WebSocket fields; `Sec-WebSocket-*` of the
    /// client are left out (no extension is negotiated on the client's behalf).
    pub(crate) async fn websocket_handshake_headers(
        &self,
        client_headers: &HeaderMap,
    ) -> Result<HeaderMap, UpstreamError> {
        let mut headers = headers::for_upstream(client_headers);
        let websocket_fields: Vec<_> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("sec-websocket-"))
            .cloned()
            .collect();
        for name in websocket_fields {
            headers.remove(name);
        }
        self.policy.apply(&mut headers);
        self.auth
            .authorize(&mut headers)
            .await
            .map_err(UpstreamError::Auth)?;
        Ok(headers)
    }

    /// [`UpstreamClient::post`] for a route handler: a failure is logged and becomes the
    /// error response to send.
    pub(crate) async fn post_or_answer(
        &self,
        url: &reqwest::Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, Response<Body>> {
        self.post(url, headers, body).await.map_err(|error| {
            tracing::warn!("{error}");
            error.to_response()
        })
    }

    /// POSTs `body` with the client's end-to-end `headers` plus the credentials. After a 401
    /// with refreshable credentials (ChatGPT tokens) it refreshes and retries once; a workload
    /// identity token is only forgotten and the 401 passed on, as the reference proxy does.
    pub(crate) async fn post(
        &self,
        url: &reqwest::Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut headers = headers;
        self.policy.apply(&mut headers);
        let mut first = headers.clone();
        self.auth
            .authorize(&mut first)
            .await
            .map_err(UpstreamError::Auth)?;
        let sent: Option<HeaderValue> = first.get(AUTHORIZATION).cloned();
        let response = self.send(url, first, body.clone()).await?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(sent) = sent else {
            return Ok(response);
        };
        match self.auth.refresh_after_unauthorized(&sent).await {
            Ok(true) => {
                drop(response);
                let mut retry = headers;
                self.auth
                    .authorize(&mut retry)
                    .await
                    .map_err(UpstreamError::Auth)?;
                self.send(url, retry, body).await
            }
            Ok(false) => Ok(response),
            Err(e) => Err(UpstreamError::Auth(e)),
        }
    }
}

/// Most bytes of an upstream error body that are read and passed on.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// An upstream HTTP error (status ≥ 400) for a route that translates: same status, and an
/// OpenAI-style error body (the upstream's own when it already is one).
pub(crate) async fn mirror_error(upstream: reqwest::Response) -> Response<Body> {
    let status = upstream.status();
    let credential = upstream.extensions().get::<SentCredential>().cloned();
    let mut body = Vec::new();
    let mut cut = false;
    let mut stream = upstream.bytes_stream();
    while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
        body.extend_from_slice(&chunk);
        if body.len() > ERROR_BODY_LIMIT {
            body.truncate(ERROR_BODY_LIMIT);
            cut = true;
            break;
        }
    }
    if let Some(SentCredential(credential)) = &credential {
        let secret = crate::worker::upstream::redact::secret_of(credential);
        if cut {
            body.truncate(crate::worker::upstream::redact::keep_before_cut_secret(
                &body, secret,
            ));
        }
        if let Some(clean) = crate::worker::upstream::redact::redact(
            &body,
            crate::worker::upstream::redact::secret_of(credential),
        ) {
            body = clean;
        }
    }
    let is_openai_error = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .is_some_and(|v| v.get("error").is_some_and(|e| e.is_object()));
    let mut response = if is_openai_error {
        crate::worker::server::http::json_response(status, body)
    } else {
        let text = String::from_utf8_lossy(&body);
        let text = text.trim();
        let message = if text.is_empty() {
            format!("The upstream answered {status}.")
        } else {
            format!("The upstream answered {status}: {text}")
        };
        let kind = if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        error_response(status, &message, kind, Some("upstream_error"))
    };
    response
        .extensions_mut()
        .insert(crate::worker::server::http::UpstreamStatus(status.as_u16()));
    response
}
