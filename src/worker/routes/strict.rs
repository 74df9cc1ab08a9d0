//! The strict proxy route: `POST /v1/responses` forwarded byte for byte to the upstream with
//! the key, the response streamed back as it arrives.
//!
//! Uses: `crate::worker::server`, `crate::worker::upstream` and http_body_util, hyper, reqwest,
//! tracing.

use crate::worker::server::http::{Body, CoalescingBody, UpstreamStatus};
use crate::worker::upstream::headers;
use crate::worker::upstream::{SentCredential, UpstreamClient};
use crate::worker::State;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

pub(crate) async fn forward(
    state: &State,
    upstream: &UpstreamClient,
    request: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match state.read_body(body, &parts).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    forward_body(state, upstream, &parts.headers, body).await
}

/// Forwards a request body already read (a POST's, or a WebSocket message's) with the
/// client's `headers`.
pub(crate) async fn forward_body(
    state: &State,
    upstream: &UpstreamClient,
    client_headers: &hyper::HeaderMap,
    body: bytes::Bytes,
) -> Response<Body> {
    if let Some(direct) = &state.direct {
        return match direct.post(client_headers, body).await {
            Ok(response) => crate::worker::upstream::redact::upstream_answer(response).await,
            Err(error) => {
                tracing::warn!("{error}");
                error.to_response()
            }
        };
    }
    let upstream_headers = headers::for_upstream(client_headers);
    let upstream = match upstream
        .post_or_answer(&state.upstream_url, upstream_headers, body)
        .await
    {
        Ok(upstream) => upstream,
        Err(response) => return response,
    };
    crate::worker::upstream::redact::upstream_answer(mirror(upstream)).await
}

/// `POST /v1/responses/compact`, forwarded to the upstream's `…/responses/compact` (the
/// configured URL's path with `/compact` appended, its query kept).
pub(crate) async fn forward_compact(
    state: &State,
    upstream: &UpstreamClient,
    request: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match state.read_body(body, &parts).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut url = state.upstream_url.clone();
    let path = format!("{}/compact", url.path().trim_end_matches('/'));
    url.set_path(&path);
    let upstream = match upstream
        .post_or_answer(&url, headers::for_upstream(&parts.headers), body)
        .await
    {
        Ok(upstream) => upstream,
        Err(response) => return response,
    };
    crate::worker::upstream::redact::upstream_answer(mirror(upstream)).await
}

/// Status, end-to-end headers and the streamed body of an upstream response.
pub(crate) fn mirror(upstream: reqwest::Response) -> Response<Body> {
    let status = upstream.status();
    let headers = headers::for_client(upstream.headers());
    let credential = upstream.extensions().get::<SentCredential>().cloned();
    let body = CoalescingBody::new(upstream.bytes_stream()).boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
        .extensions_mut()
        .insert(UpstreamStatus(status.as_u16()));
    if let Some(credential) = credential {
        response.extensions_mut().insert(credential);
    }
    response
}
