//! The wrapper routes (`--wrapper-routes`): Chat Completions, legacy Completions, Models and
//! Ollama clients served from this proxy's upstream. The conversions are the pure functions in
//! `openai_wire::wrapper` (and `openai_wire::bridge` when the upstream speaks Chat Completions); this module
//! does routing, the client access key, CORS and the upstream calls (for a legacy Completions
//! prompt array, one per prompt, sent together and read in prompt order).
//!
//! Uses: `crate::worker::server`, `crate::worker::upstream` and futures_util, hyper, openai_wire,
//! reqwest, secrecy, serde_json, subtle, tracing.

use crate::worker::routes::bridge_route;
use crate::worker::routes::strict;
use crate::worker::routes::translate::{self, Flow, StreamConverter};
use crate::worker::server::http::{error_response, json_response, Body, UpstreamStatus};
use crate::worker::upstream::client_headers::ClientHeaderForwarding;
use crate::worker::upstream::{mirror_error, UpstreamClient};
use crate::worker::State;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use openai_wire::bridge::request::responses_to_chat;
use openai_wire::bridge::stream::ChatStreamConverter;
use openai_wire::sse::SseReader;
use openai_wire::wrapper::chat_request::chat_to_responses;
use openai_wire::wrapper::chat_stream::{ChatStream, StreamOutcome};
use openai_wire::wrapper::completions::{completion_to_responses, CompletionStream};
use openai_wire::wrapper::settings::{models_list_body, ReasoningOutputMode, WrapperSettings};
use openai_wire::wrapper::{ClientMeta, ConvertContext, ResponsesPlan, WrapperError};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// The wrapper routes' configuration, prepared by the supervisor.
pub(crate) struct WrapperConfig {
    pub settings: WrapperSettings,
    /// The key clients must present, when one is configured.
    pub client_api_key: Option<SecretString>,
    pub ollama_url: Option<reqwest::Url>,
    pub forwarding: ClientHeaderForwarding,
}

impl std::fmt::Debug for WrapperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrapperConfig")
            .field("settings", &self.settings)
            .field(
                "client_api_key",
                &self.client_api_key.as_ref().map(|_| "[REDACTED]"),
            )
            .field("ollama_url", &self.ollama_url)
            .finish()
    }
}

/// A wrapper route, recognised from the method and the exact path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WrapperRoute {
    Health,
    Preflight,
    ChatCompletions(ReasoningOutputMode),
    Completions,
    Models,
    Ollama,
    /// A reasoning-mode prefix while the mode is not `all`.
    PrefixNotEnabled,
}

impl WrapperRoute {
    /// The route's name in the metrics (`route` label).
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            WrapperRoute::Health => "health",
            WrapperRoute::Preflight => "preflight",
            WrapperRoute::ChatCompletions(_) => "chat_completions",
            WrapperRoute::Completions => "completions",
            WrapperRoute::Models => "models",
            WrapperRoute::Ollama => "ollama",
            WrapperRoute::PrefixNotEnabled => "refused",
        }
    }
}

/// Recognises a wrapper route; `None` when the request is not one.
pub(crate) fn classify(
    settings: &WrapperSettings,
    method: &Method,
    path: &str,
) -> Option<WrapperRoute> {
    if method == Method::OPTIONS {
        return Some(WrapperRoute::Preflight);
    }
    if path.starts_with("/api/") {
        return Some(WrapperRoute::Ollama);
    }
    let (mode, rest) = match path.strip_prefix('/').and_then(|p| p.split_once("/v1/")) {
        Some((prefix, rest)) if !prefix.is_empty() => {
            let mode = ReasoningOutputMode::from_route_prefix(prefix)?;
            if settings.output_mode != ReasoningOutputMode::All {
                return Some(WrapperRoute::PrefixNotEnabled);
            }
            (mode, format!("/v1/{rest}"))
        }
        _ => (settings.output_mode.concrete(), path.to_string()),
    };
    match (method, rest.as_str()) {
        (&Method::GET, "/" | "/health") => Some(WrapperRoute::Health),
        (&Method::POST, "/v1/chat/completions") => Some(WrapperRoute::ChatCompletions(mode)),
        (&Method::POST, "/v1/completions") => Some(WrapperRoute::Completions),
        (&Method::GET, "/v1/models") => Some(WrapperRoute::Models),
        _ => None,
    }
}

/// Checks the client access key: the 401 to send when it is missing or wrong.
pub(crate) fn client_key_rejection(
    config: &WrapperConfig,
    headers: &HeaderMap,
) -> Option<Response<Body>> {
    let expected = config.client_api_key.as_ref()?;
    let unauthorized = |message: &str| {
        let mut response = error_response(
            StatusCode::UNAUTHORIZED,
            message,
            "authentication_error",
            Some("invalid_api_key"),
        );
        response
            .headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        Some(response)
    };
    let Some(value) = headers.get(AUTHORIZATION) else {
        return unauthorized("Missing Authorization header");
    };
    let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
        return unauthorized("Invalid Authorization header format. Expected: Bearer <token>");
    };
    let matches: bool = token
        .trim()
        .as_bytes()
        .ct_eq(expected.expose_secret().as_bytes())
        .into();
    if !matches {
        return unauthorized("Invalid API key");
    }
    None
}

fn with_cors(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    response
}

pub(crate) async fn serve(
    state: &State,
    config: &WrapperConfig,
    route: WrapperRoute,
    request: Request<Incoming>,
) -> Response<Body> {
    let response = match route {
        WrapperRoute::Health => json_response(StatusCode::OK, r#"{"status":"ok"}"#),
        WrapperRoute::Preflight => preflight(),
        WrapperRoute::PrefixNotEnabled => error_response(
            StatusCode::NOT_FOUND,
            "Reasoning-mode route prefixes are served only when REASONING_OUTPUT_MODE=all.",
            "invalid_request_error",
            Some("not_found"),
        ),
        WrapperRoute::Models => json_response(
            StatusCode::OK,
            models_list_body(&config.settings.exposed_models, bridge_route::unix_now()),
        ),
        WrapperRoute::Ollama => ollama(state, config, request).await,
        WrapperRoute::ChatCompletions(mode) => match &state.upstream {
            Some(upstream) => chat_completions(state, config, upstream, mode, request).await,
            None => crate::worker::routes::not_configured(),
        },
        WrapperRoute::Completions => match &state.upstream {
            Some(upstream) => completions(state, config, upstream, request).await,
            None => crate::worker::routes::not_configured(),
        },
    };
    with_cors(response)
}

fn preflight() -> Response<Body> {
    let mut response = Response::new(crate::worker::server::http::full(""));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static(
            "Authorization, Content-Type, X-Session-Id, OpenAI-Organization, OpenAI-Project",
        ),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("86400"));
    response
}

fn wrapper_error(error: &WrapperError) -> Response<Body> {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, error.to_body())
}

/// Reads and parses a JSON request body, with the wrapper's error messages.
async fn json_body(
    state: &State,
    request: Request<Incoming>,
) -> Result<(HeaderMap, serde_json::Value), Response<Body>> {
    let (parts, body) = request.into_parts();
    let bytes = state.read_body(body, &parts).await?;
    match serde_json::from_slice(&bytes) {
        Ok(json) => Ok((parts.headers, json)),
        Err(e) => Err(error_response(
            StatusCode::BAD_REQUEST,
            &format!("Invalid JSON body: {e}"),
            "invalid_request_error",
            Some("invalid_json"),
        )),
    }
}

/// The client's session id (`X-Session-Id` or `session_id`), or a new one.
fn session_id(headers: &HeaderMap) -> String {
    ["x-session-id", "session_id", "session-id"]
        .iter()
        .find_map(|name| headers.get(*name)?.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_owned)
        .unwrap_or_else(|| bridge_route::new_response_id().replacen("resp_", "sess_", 1))
}

fn upstream_headers(config: &WrapperConfig, client: &HeaderMap, session: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    config.forwarding.apply(client, &mut headers);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    if let Ok(value) = HeaderValue::from_str(session) {
        headers.insert("session_id", value);
    }
    headers
}

/// A wrapper request converted for a Responses upstream: the plan (or plans: one per prompt
/// of a legacy Completions request) and the headers to send.
struct Converted<P> {
    plan: P,
    headers: HeaderMap,
}

type Conversion<P> = fn(&serde_json::Value, &ConvertContext) -> Result<P, WrapperError>;

/// Reads the client's JSON body and converts it with `convert` (the session id becomes the
/// upstream's `prompt_cache_key` and `session_id` header).
async fn convert_request<P>(
    state: &State,
    config: &WrapperConfig,
    request: Request<Incoming>,
    convert: Conversion<P>,
) -> Result<Converted<P>, Response<Body>> {
    let (client_headers, body) = json_body(state, request).await?;
    let session = session_id(&client_headers);
    let context = ConvertContext {
        settings: &config.settings,
        session_id: Some(&session),
        instructions: None,
    };
    let plan = convert(&body, &context).map_err(|e| wrapper_error(&e))?;
    let headers = upstream_headers(config, &client_headers, &session);
    Ok(Converted { plan, headers })
}

async fn chat_completions(
    state: &State,
    config: &WrapperConfig,
    upstream: &UpstreamClient,
    mode: ReasoningOutputMode,
    request: Request<Incoming>,
) -> Response<Body> {
    if state.bridge_to_chat {
        // The upstream already speaks Chat Completions: pass through, converting nothing.
        return strict::forward(state, upstream, request).await;
    }
    let Converted { plan, headers } =
        match convert_request(state, config, request, chat_to_responses).await {
            Ok(converted) => converted,
            Err(response) => return response,
        };
    let id = bridge_route::new_response_id().replacen("resp_", "chatcmpl-", 1);
    let converter = ChatStream::new(&plan.client, mode, bridge_route::unix_now(), &id);
    call_responses_upstream(state, upstream, vec![plan], headers, converter).await
}

/// Legacy Completions: one upstream request per prompt (see [`post_all`]), rendered as one
/// choice per prompt by one [`CompletionStream`].
async fn completions(
    state: &State,
    config: &WrapperConfig,
    upstream: &UpstreamClient,
    request: Request<Incoming>,
) -> Response<Body> {
    let Converted {
        plan: plans,
        headers,
    } = match convert_request(state, config, request, completion_to_responses).await {
        Ok(converted) => converted,
        Err(response) => return response,
    };
    let Some(first) = plans.first() else {
        return wrapper_error(&WrapperError::invalid("prompt", "`prompt` is required"));
    };
    let id = bridge_route::new_response_id().replacen("resp_", "cmpl-", 1);
    let converter =
        CompletionStream::for_prompts(&first.client, plans.len(), bridge_route::unix_now(), &id);
    if state.bridge_to_chat {
        return call_chat_upstream(state, upstream, plans, headers, converter).await;
    }
    call_responses_upstream(state, upstream, plans, headers, converter).await
}

/// Sends one upstream request per body, all at once (so that the upstream works on the
/// prompts of one request together), and returns the answers in the bodies' order once every
/// head arrived; their bodies are then read one after the other. A transport failure answers
/// the client instead (the first in order); the other answers are dropped, which closes them.
async fn post_all(
    state: &State,
    upstream: &UpstreamClient,
    bodies: Vec<Vec<u8>>,
    headers: HeaderMap,
) -> Result<Vec<reqwest::Response>, Response<Body>> {
    let calls = bodies
        .into_iter()
        .map(|body| upstream.post_or_answer(&state.upstream_url, headers.clone(), body.into()));
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect()
}

/// The JSON bytes of each upstream body.
fn serialize_all<'a>(
    bodies: impl Iterator<Item = &'a serde_json::Value>,
) -> Result<Vec<Vec<u8>>, WrapperError> {
    bodies
        .map(|body| {
            serde_json::to_vec(body).map_err(|e| WrapperError::upstream(e.to_string(), None))
        })
        .collect()
}

/// A converter whose final state answers a client that did not ask to stream.
pub(crate) trait ClientConverter: StreamConverter {
    fn outcome(&self) -> &StreamOutcome;
    fn final_body(&self) -> serde_json::Value;
}

/// The plans' requests on a Responses upstream (one plan, or one per prompt), their answers
/// read in order through `converter`.
async fn call_responses_upstream<C: ClientConverter>(
    state: &State,
    upstream: &UpstreamClient,
    plans: Vec<ResponsesPlan>,
    headers: HeaderMap,
    converter: C,
) -> Response<Body> {
    let Some(client) = plans.first().map(|plan| plan.client.clone()) else {
        return wrapper_error(&WrapperError::upstream("no upstream request", None));
    };
    let bodies = match serialize_all(plans.iter().map(|plan| &plan.upstream_body)) {
        Ok(bodies) => bodies,
        Err(e) => return wrapper_error(&e),
    };
    let answers = match post_all(state, upstream, bodies, headers).await {
        Ok(answers) => answers,
        Err(response) => return response,
    };
    respond(answers, &client, converter).await
}

/// Completions on a Chat Completions upstream: each prompt's request goes through the
/// Responses form to chat, and each chat stream comes back through Responses events (a new
/// bridge converter per prompt) into the one client converter.
async fn call_chat_upstream<C: ClientConverter>(
    state: &State,
    upstream: &UpstreamClient,
    plans: Vec<ResponsesPlan>,
    headers: HeaderMap,
    converter: C,
) -> Response<Body> {
    let Some(client) = plans.first().map(|plan| plan.client.clone()) else {
        return wrapper_error(&WrapperError::upstream("no upstream request", None));
    };
    let mut chats = Vec::with_capacity(plans.len());
    for plan in &plans {
        match responses_to_chat(&plan.upstream_body) {
            Ok(chat) => chats.push(chat),
            Err(e) => {
                let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
                return json_response(status, e.to_body());
            }
        }
    }
    let bodies = match serialize_all(chats.iter().map(|chat| &chat.chat_body)) {
        Ok(bodies) => bodies,
        Err(e) => return wrapper_error(&e),
    };
    // The prompts differ only in their input: the first one's stream settings serve all.
    let meta = chats.swap_remove(0).meta;
    let answers = match post_all(state, upstream, bodies, headers).await {
        Ok(answers) => answers,
        Err(response) => return response,
    };
    let bridge = move || {
        ChatStreamConverter::new(
            meta.clone(),
            &bridge_route::new_response_id(),
            bridge_route::unix_now(),
        )
    };
    respond(answers, &client, Chained::per_upstream(bridge, converter)).await
}

/// Answers the client from the upstream responses (one, or one per prompt in prompt order):
/// the first upstream error is mirrored, else the converted stream or body.
async fn respond<C: ClientConverter>(
    mut answers: Vec<reqwest::Response>,
    client: &ClientMeta,
    converter: C,
) -> Response<Body> {
    if let Some(failed) = answers.iter().position(|a| !a.status().is_success()) {
        return mirror_error(answers.swap_remove(failed)).await;
    }
    let Some(upstream_status) = answers.first().map(reqwest::Response::status) else {
        return wrapper_error(&WrapperError::upstream("no upstream response", None));
    };
    // Kept on the answer for what cleans it of the credential (`--dump-dir`).
    let credential = answers[0]
        .extensions()
        .get::<crate::worker::upstream::SentCredential>()
        .cloned();
    let mut response = if client.stream {
        translate::streaming_response_of_all(answers, converter)
    } else {
        let converter = translate::run_all_to_end(answers, converter).await;
        match converter.outcome().error() {
            Some(error) => wrapper_error(&error),
            None => json_response(
                StatusCode::OK,
                serde_json::to_vec(&converter.final_body()).unwrap_or_default(),
            ),
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

/// The `response.failed` event a wrapper converter understands, for transport failures.
fn failed_event(message: &str) -> String {
    serde_json::json!({
        "type": "response.failed",
        "response": {"status": "failed", "error": {"code": "server_error", "message": message}},
    })
    .to_string()
}

macro_rules! wrapper_converter {
    ($type:ty) => {
        impl StreamConverter for $type {
            fn start(&mut self, _out: &mut Vec<u8>) {}
            fn push_event(&mut self, data: &str, out: &mut Vec<u8>) -> Flow {
                <$type>::push_event(self, data, out).into()
            }
            fn upstream_ended(&mut self, out: &mut Vec<u8>) {
                self.finish(out)
            }
            fn upstream_failed(&mut self, message: &str, out: &mut Vec<u8>) {
                let _ = <$type>::push_event(self, &failed_event(message), out);
            }
            fn is_done(&self) -> bool {
                *<$type>::outcome(self) != StreamOutcome::InProgress
            }
        }
        impl ClientConverter for $type {
            fn outcome(&self) -> &StreamOutcome {
                <$type>::outcome(self)
            }
            fn final_body(&self) -> serde_json::Value {
                self.final_completion()
            }
        }
    };
}

wrapper_converter!(ChatStream);
wrapper_converter!(CompletionStream);

/// Makes a fresh first converter of a [`Chained`] pair for the next upstream response.
type Renew<A> = Box<dyn FnMut() -> A + Send>;

/// Two converters in a row: `first`'s SSE output is parsed and fed to `second`. With several
/// upstream responses ([`Chained::per_upstream`]), each gets a fresh `first`, and `second`
/// sees their outputs one after the other.
pub(crate) struct Chained<A, B> {
    first: A,
    second: B,
    between: SseReader,
    buffer: Vec<u8>,
    renew: Option<Renew<A>>,
}

impl<A: StreamConverter, B: StreamConverter> Chained<A, B> {
    pub(crate) fn new(first: A, second: B) -> Self {
        Chained {
            first,
            second,
            between: SseReader::default(),
            buffer: Vec::new(),
            renew: None,
        }
    }

    /// A pair whose `first` is made by `make`, again for each upstream response.
    pub(crate) fn per_upstream(mut make: impl FnMut() -> A + Send + 'static, second: B) -> Self {
        let mut chained = Chained::new(make(), second);
        chained.renew = Some(Box::new(make));
        chained
    }

    fn pass_on(&mut self, out: &mut Vec<u8>) {
        self.between.push(&self.buffer);
        self.buffer.clear();
        while let Ok(Some(event)) = self.between.next_event() {
            if self.second.push_event(event.data, out) == Flow::Stop {
                break;
            }
        }
    }
}

impl<A: StreamConverter, B: StreamConverter> StreamConverter for Chained<A, B> {
    fn start(&mut self, out: &mut Vec<u8>) {
        self.first.start(&mut self.buffer);
        self.second.start(out);
        self.pass_on(out);
    }
    fn push_event(&mut self, data: &str, out: &mut Vec<u8>) -> Flow {
        let flow = self.first.push_event(data, &mut self.buffer);
        self.pass_on(out);
        flow
    }
    fn upstream_ended(&mut self, out: &mut Vec<u8>) {
        self.first.upstream_ended(&mut self.buffer);
        self.pass_on(out);
        self.second.upstream_ended(out);
        if !self.second.is_done() {
            if let Some(make) = self.renew.as_mut() {
                // The next upstream response starts from a clean first converter.
                self.first = make();
                self.between = SseReader::default();
                self.buffer.clear();
            }
        }
    }
    fn upstream_failed(&mut self, message: &str, out: &mut Vec<u8>) {
        self.first.upstream_failed(message, &mut self.buffer);
        self.pass_on(out);
        self.second.upstream_failed(message, out);
    }
    fn is_done(&self) -> bool {
        self.second.is_done()
    }
}

impl<A: StreamConverter, B: ClientConverter> ClientConverter for Chained<A, B> {
    fn outcome(&self) -> &StreamOutcome {
        self.second.outcome()
    }
    fn final_body(&self) -> serde_json::Value {
        self.second.final_body()
    }
}

/// Whether a path segment is `.`, spelled plainly or percent-encoded (`%2e`, any case).
fn is_dot(segment: &str) -> bool {
    segment == "." || segment.eq_ignore_ascii_case("%2e")
}

/// Whether a path segment is `..`, spelled plainly or with either dot percent-encoded.
fn is_dot_dot(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    matches!(lower.as_str(), ".." | ".%2e" | "%2e." | "%2e%2e")
}

/// Where an `/api/*` request goes on the Ollama host: the request's path resolved the way a
/// URL is (`.` and `..` segments, also percent-encoded, are applied; doubled slashes count as
/// one) and appended to `base` (whose path ends with `/`), with the query kept as it is. The
/// resolved path must still be `/api/...`; a backslash or an encoded slash or backslash
/// (which servers split differently) is refused rather than guessed at. The error says why.
pub(crate) fn ollama_target(
    base: &reqwest::Url,
    path: &str,
    query: Option<&str>,
) -> Result<reqwest::Url, String> {
    let lower = path.to_ascii_lowercase();
    if path.contains('\\') || lower.contains("%5c") {
        return Err("backslashes are not allowed in the path".into());
    }
    if lower.contains("%2f") {
        return Err("encoded slashes (%2F) are not allowed in the path".into());
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        if is_dot(segment) {
            continue;
        }
        if is_dot_dot(segment) {
            if segments.pop().is_none() {
                return Err("the path climbs above OLLAMA_API_URL".into());
            }
            continue;
        }
        segments.push(segment);
    }
    if segments.first() != Some(&"api") || segments.len() < 2 {
        return Err(format!(
            "the path resolves to /{}, outside /api/",
            segments.join("/")
        ));
    }
    let trailing = if path.ends_with('/') { "/" } else { "" };
    let resolved = format!("{}{}{trailing}", base.path(), segments.join("/"));
    let mut url = base.clone();
    url.set_path(&resolved);
    url.set_query(query);
    // The segments hold no dot segment and no separator, so the URL keeps them as given; a
    // last check that nothing moved them above the prefix.
    let prefix = format!("{}api/", base.path());
    if !url.path().starts_with(&prefix) {
        return Err("the path cannot be kept under OLLAMA_API_URL".into());
    }
    Ok(url)
}

/// `/api/*` passed through to Ollama as it is (no key added, the client's Authorization
/// removed), the answer streamed back (NDJSON included).
async fn ollama(
    state: &State,
    config: &WrapperConfig,
    request: Request<Incoming>,
) -> Response<Body> {
    let Some(base) = &config.ollama_url else {
        return error_response(
            StatusCode::NOT_FOUND,
            "The Ollama pass-through (/api/*) is not configured: set OLLAMA_API_URL (or --ollama-api-url).",
            "invalid_request_error",
            Some("ollama_not_configured"),
        );
    };
    let (parts, body) = request.into_parts();
    let url = match ollama_target(base, parts.uri.path(), parts.uri.query()) {
        Ok(url) => url,
        Err(why) => {
            tracing::info!(path = %parts.uri.path(), "refused: Ollama path: {why}");
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("The Ollama pass-through only reaches /api/* on OLLAMA_API_URL: {why}."),
                "invalid_request_error",
                Some("invalid_path"),
            );
        }
    };
    let body = match state.read_body(body, &parts).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let headers = crate::worker::upstream::headers::for_upstream(&parts.headers);
    match state
        .plain_client
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(answer) => strict::mirror(answer),
        Err(e) => error_response(
            StatusCode::BAD_GATEWAY,
            &format!("Ollama could not be reached: {}", translate::describe(&e)),
            "upstream_error",
            Some("upstream_unreachable"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(base: &str, path: &str) -> Result<String, String> {
        let base = reqwest::Url::parse(base).unwrap();
        ollama_target(&base, path, None).map(|u| u.to_string())
    }

    #[test]
    fn ollama_paths_are_resolved_and_kept_under_api() {
        let base = "http://127.0.0.1:11434/";
        for (path, expected) in [
            ("/api/tags", "http://127.0.0.1:11434/api/tags"),
            ("/api//tags", "http://127.0.0.1:11434/api/tags"),
            ("/api/./tags", "http://127.0.0.1:11434/api/tags"),
            ("/api/x/../tags", "http://127.0.0.1:11434/api/tags"),
            ("/api/x/%2E%2e/tags/", "http://127.0.0.1:11434/api/tags/"),
            (
                "/api/blobs/sha256:ab%2ecd",
                "http://127.0.0.1:11434/api/blobs/sha256:ab%2ecd",
            ),
        ] {
            assert_eq!(target(base, path).as_deref(), Ok(expected), "{path}");
        }
        assert_eq!(
            target("http://127.0.0.1:1/ollama/", "/api/../api/chat").as_deref(),
            Ok("http://127.0.0.1:1/ollama/api/chat")
        );
        let with_query = ollama_target(
            &reqwest::Url::parse(base).unwrap(),
            "/api/tags",
            Some("verbose=1"),
        )
        .unwrap();
        assert_eq!(
            with_query.as_str(),
            "http://127.0.0.1:11434/api/tags?verbose=1"
        );
        for path in [
            "/api/../../admin/secret",
            "/api/../admin",
            "/api/..",
            "/api/",
            "/api/%2e%2e/admin",
            "/api/%2E%2E/%2e%2E/admin",
            "/api/.%2e/admin",
            "/api/%2e./admin",
            "/api//..//..//admin",
            "/api/..\\admin",
            "/api/%5c../admin",
            "/api/..%2fadmin",
            "/api/..%2Fadmin",
        ] {
            for base in [base, "http://127.0.0.1:1/ollama/"] {
                let e = target(base, path).expect_err(path);
                assert!(!e.is_empty());
            }
        }
    }
}
