//! Upstream authentication modes (`UPSTREAM_AUTH_MODE`), as users of the TypeScript
//! codex-openai-wrapper know them, without its bugs.
//!
//! This module owns everything about the credentials the worker adds to an upstream request:
//!
//! * `apikey_env` ([`AuthMode::ApiKey`]): the static key the supervisor read from standard input
//!   or the `openai-api-key` credential, sent as `Authorization: Bearer <key>`.
//! * `apikey_auth_json` ([`AuthMode::ApiKeyFromAuthJson`]): the key is a top-level field
//!   (default `OPENAI_API_KEY`) of the Codex `auth.json` document.
//! * `chatgpt_token` ([`AuthMode::ChatGptToken`]): `tokens.access_token` of `auth.json` plus the
//!   `chatgpt-account-id` header (from `tokens.account_id`, else from the id_token claim
//!   `https://api.openai.com/auth` → `chatgpt_account_id`). The tokens are refreshed at the OAuth
//!   token endpoint when `last_refresh` is older than 28 days (or unknown), and after an upstream
//!   401. Refresh tokens are single-use, so rotated tokens are saved atomically (mode 0600) to
//!   `<state dir>/codex-auth.json`; on the next start that file wins over the credential unless
//!   the credential is newer. (The wrapper's Node runtime never saves them: after one refresh
//!   its next restart fails.)
//!
//! * `--github-oidc` ([`AuthMode::WorkloadIdentity`]): no long-lived key at all; short-lived
//!   OpenAI access tokens obtained through workload identity federation
//!   (`crate::worker::upstream::workload_identity`), on the reference proxy's schedule: one at
//!   start (the worker does not serve without it), then, when a request finds the token due
//!   for renewal (a tenth of its lifetime ahead, at most a minute) or rejected by an upstream 401, one renewal for all the
//!   requests waiting. The 401 itself is passed on (no retry). A failed renewal fails the
//!   request (502, even while the old token is still valid) and the next attempt waits 1 s,
//!   then 2, 4, 8, 16 and at most 30 s; requests in between get a 502 at once.
//!
//! ChatGPT tokens use a [`RefreshGate`]: a single refresh at a time, however many requests need
//! one, skipped when another request already replaced the credential, and a failed refresh
//! remembered for a few seconds instead of retried by every request.
//!
//! The `auth.json` bytes come from the supervisor (read as root from the systemd credential
//! `codex-auth` or a file), never from plain environment variables. Tokens are held as
//! [`SecretString`]s and sent as sensitive header values; no error message, log line or
//! `Debug` output of this module contains a token or key.
//!
//! Uses: `crate::atomic_file`, `crate::clock`, `crate::worker::upstream::workload_identity` and base64, bytes, hyper, openai_wire, reqwest,
//! secrecy, serde, serde_json, tokio, tracing.

use hyper::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

use super::workload_identity::{
    self, cause, endpoint_for_messages, WorkloadCredential, WorkloadIdentitySettings,
};

/// The OAuth token endpoint the Codex CLI refreshes its ChatGPT tokens at.
pub(crate) const DEFAULT_TOKEN_URL: &str = "https://auth.openai.com/oauth/token";
/// The `auth.json` field holding the API key in `apikey_auth_json` mode, unless configured.
pub(crate) const DEFAULT_API_KEY_FIELD: &str = "OPENAI_API_KEY";
/// Tokens older than this are refreshed before use (the Codex CLI and the wrapper use 28 days).
pub(crate) const DEFAULT_REFRESH_AFTER: Duration = Duration::from_secs(28 * 24 * 60 * 60);
/// File name of the rotated tokens inside the state directory.
pub(crate) const SAVED_TOKENS_FILE: &str = "codex-auth.json";
/// The header carrying the ChatGPT account id in `chatgpt_token` mode.
pub(crate) const ACCOUNT_ID_HEADER: &str = "chatgpt-account-id";
/// The id_token claim holding the ChatGPT account details.
const AUTH_CLAIM: &str = "https://api.openai.com/auth";
const REFRESH_SCOPE: &str = "openid profile email";
/// Bound on one token endpoint call, whatever the shared client's timeouts are.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed refresh, callers holding the same token get the same error for this long
/// instead of hitting the token endpoint again.
const FAILED_REFRESH_COOLDOWN: Duration = Duration::from_secs(15);
/// Most bytes of a token endpoint answer that are read.
const TOKEN_RESPONSE_LIMIT: usize = 1024 * 1024;

/// How the worker authenticates to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthMode {
    /// `apikey_env`: the static key from standard input or the `openai-api-key` credential.
    ApiKey,
    /// `apikey_auth_json`: the key is the top-level `field` of the Codex `auth.json`.
    ApiKeyFromAuthJson { field: String },
    /// `chatgpt_token`: ChatGPT OAuth tokens from the Codex `auth.json`, refreshed as needed.
    ChatGptToken,
    /// `--github-oidc`: short-lived tokens from OpenAI's workload identity federation.
    WorkloadIdentity,
}

impl AuthMode {
    /// The `UPSTREAM_AUTH_MODE` spelling of the mode.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            AuthMode::ApiKey => "apikey_env",
            AuthMode::ApiKeyFromAuthJson { .. } => "apikey_auth_json",
            AuthMode::ChatGptToken => "chatgpt_token",
            AuthMode::WorkloadIdentity => "github_oidc",
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuthMode {
    type Err = AuthError;

    /// Accepts the wrapper's values, ignoring ASCII case and surrounding white space.
    fn from_str(value: &str) -> Result<Self, AuthError> {
        let trimmed = value.trim();
        match trimmed.to_ascii_lowercase().as_str() {
            "apikey_env" => Ok(AuthMode::ApiKey),
            "apikey_auth_json" => Ok(AuthMode::ApiKeyFromAuthJson {
                field: DEFAULT_API_KEY_FIELD.to_owned(),
            }),
            "chatgpt_token" => Ok(AuthMode::ChatGptToken),
            _ => {
                // Echo the value only when it looks like a mode name, never a pasted key.
                let shown = if !trimmed.is_empty()
                    && trimmed.len() <= 32
                    && trimmed
                        .bytes()
                        .all(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'-')
                {
                    format!("`{trimmed}`")
                } else {
                    "(value not shown)".to_owned()
                };
                Err(AuthError::Config(format!(
                    "unknown upstream auth mode {shown}: expected apikey_env, apikey_auth_json or chatgpt_token"
                )))
            }
        }
    }
}

/// Why the worker could not authenticate to the upstream. Messages never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// A setting or the `auth.json` document is missing or malformed (500).
    Config(String),
    /// The token endpoint could not be reached or refused the refresh (502).
    TokenEndpoint(String),
    /// No workload identity token could be obtained (502).
    WorkloadIdentity(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Config(m) => write!(f, "upstream authentication is misconfigured: {m}"),
            AuthError::TokenEndpoint(m) => write!(f, "could not refresh the ChatGPT tokens: {m}"),
            AuthError::WorkloadIdentity(m) => write!(
                f,
                "could not obtain an OpenAI access token through workload identity federation: {m}"
            ),
        }
    }
}

impl std::error::Error for AuthError {}

impl AuthError {
    /// The HTTP status and OpenAI-style body a client gets for this error.
    pub(crate) fn to_response_parts(&self) -> (u16, String) {
        match self {
            AuthError::Config(_) => (
                500,
                openai_wire::api_error::error_body(
                    &self.to_string(),
                    "server_error",
                    Some("upstream_auth_misconfigured"),
                    None,
                ),
            ),
            AuthError::TokenEndpoint(_) => (
                502,
                openai_wire::api_error::error_body(
                    &self.to_string(),
                    "upstream_error",
                    Some("upstream_token_refresh_failed"),
                    None,
                ),
            ),
            AuthError::WorkloadIdentity(_) => (
                502,
                openai_wire::api_error::error_body(
                    &self.to_string(),
                    "upstream_error",
                    Some("workload_identity_exchange_failed"),
                    None,
                ),
            ),
        }
    }
}

/// Everything [`UpstreamAuth::new`] needs. [`UpstreamAuthSettings::new`] fills in the defaults.
pub(crate) struct UpstreamAuthSettings {
    pub mode: AuthMode,
    /// `Bearer <key>` from key intake (the locked page of `crate::contract::ApiKeyHeader`);
    /// needed by `apikey_env`.
    pub static_key: Option<HeaderValue>,
    /// The Codex `auth.json` document as read by the supervisor; needed by `apikey_auth_json`
    /// and (unless the state directory holds saved tokens) by `chatgpt_token`.
    pub auth_json: Option<SecretSlice<u8>>,
    /// Where rotated ChatGPT tokens are saved (`codex-auth.json`), writable by the worker.
    pub state_dir: Option<PathBuf>,
    /// The OAuth token endpoint (default [`DEFAULT_TOKEN_URL`]).
    pub token_url: String,
    /// The OAuth client id of the Codex CLI; required by `chatgpt_token`.
    pub client_id: Option<String>,
    /// Tokens whose `last_refresh` is older than this are refreshed before use.
    pub refresh_after: Duration,
    /// The client used for the token endpoint (the upstream client may be shared).
    pub http: reqwest::Client,
    /// `--github-oidc`: where and how short-lived tokens are obtained.
    pub workload: Option<WorkloadIdentitySettings>,
}

impl UpstreamAuthSettings {
    pub(crate) fn new(mode: AuthMode, http: reqwest::Client) -> Self {
        UpstreamAuthSettings {
            mode,
            static_key: None,
            auth_json: None,
            state_dir: None,
            token_url: DEFAULT_TOKEN_URL.to_owned(),
            client_id: None,
            refresh_after: DEFAULT_REFRESH_AFTER,
            http,
            workload: None,
        }
    }
}

impl fmt::Debug for UpstreamAuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamAuthSettings")
            .field("mode", &self.mode)
            .field(
                "static_key",
                &self.static_key.as_ref().map(|_| "[REDACTED]"),
            )
            .field("auth_json", &self.auth_json.as_ref().map(|_| "[REDACTED]"))
            .field("state_dir", &self.state_dir)
            .field(
                "token_url",
                &reqwest::Url::parse(&self.token_url)
                    .map(|url| endpoint_for_messages(&url))
                    .unwrap_or_else(|_| "[not a URL]".into()),
            )
            .field("client_id", &self.client_id)
            .field("refresh_after", &self.refresh_after)
            .field("workload", &self.workload)
            .finish()
    }
}

/// The upstream credentials of the worker. Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub(crate) struct UpstreamAuth {
    inner: Arc<Inner>,
}

struct Inner {
    mode: AuthMode,
    kind: Kind,
}

enum Kind {
    /// `Bearer <key>`, sensitive.
    Static(HeaderValue),
    ChatGpt(Box<ChatGpt>),
    Workload(Box<Workload>),
}

/// The one single-flight refresh of every refreshable credential.
#[derive(Default)]
struct RefreshGate {
    /// Held while a refresh runs, so only one runs at a time; remembers the last failure.
    memo: tokio::sync::Mutex<RefreshMemo>,
}

#[derive(Default)]
struct RefreshMemo {
    /// When a refresh of the credential in the `HeaderValue` (`None`: no credential yet)
    /// failed, and how.
    failed: Option<(Instant, Option<HeaderValue>, AuthError)>,
}

impl RefreshGate {
    /// Runs `refresh` unless the credential is no longer `expected` once the gate is ours
    /// (`current` reads it: someone else refreshed while we waited). A refresh that failed
    /// moments ago for the same credential is not retried: its error is returned again.
    async fn refresh_unless_replaced<Fut>(
        &self,
        expected: Option<&HeaderValue>,
        current: impl Fn() -> Option<HeaderValue>,
        refresh: impl FnOnce() -> Fut,
    ) -> Result<(), AuthError>
    where
        Fut: std::future::Future<Output = Result<(), AuthError>>,
    {
        let mut memo = self.memo.lock().await;
        if current().as_ref() != expected {
            return Ok(());
        }
        if let Some((when, credential, failure)) = &memo.failed {
            if credential.as_ref() == expected && when.elapsed() < FAILED_REFRESH_COOLDOWN {
                return Err(failure.clone());
            }
        }
        match refresh().await {
            Ok(()) => {
                memo.failed = None;
                Ok(())
            }
            Err(e) => {
                error!("{e}");
                memo.failed = Some((Instant::now(), expected.cloned(), e.clone()));
                Err(e)
            }
        }
    }
}

struct ChatGpt {
    current: RwLock<Arc<Tokens>>,
    refresh: RefreshGate,
    token_url: reqwest::Url,
    client_id: String,
    state_dir: Option<PathBuf>,
    refresh_after: Duration,
    http: reqwest::Client,
    warned_unsaved: AtomicBool,
}

/// After a failed workload identity renewal the next one waits this long, doubling after
/// every further failure up to [`MAX_RENEWAL_BACKOFF`] (the reference proxy's schedule).
const FIRST_RENEWAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_RENEWAL_BACKOFF: Duration = Duration::from_secs(30);

/// `--github-oidc`: the current short-lived token (none before the first exchange, or after
/// the upstream rejected it).
struct Workload {
    settings: WorkloadIdentitySettings,
    current: RwLock<Option<Arc<WorkloadCredential>>>,
    /// Held while a renewal runs, so only one runs at a time.
    renewal: tokio::sync::Mutex<Renewal>,
    /// [`FIRST_RENEWAL_BACKOFF`] and [`MAX_RENEWAL_BACKOFF`] (tests lengthen them).
    backoff: (Duration, Duration),
    http: reqwest::Client,
}

/// The failures since the last successful renewal.
#[derive(Default)]
struct Renewal {
    failures: u32,
    /// No renewal is tried before then; requests get `last_error`.
    not_before: Option<Instant>,
    last_error: Option<String>,
}

impl Workload {
    fn current(&self) -> Option<Arc<WorkloadCredential>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current token unless it is due for renewal.
    fn usable(&self) -> Option<HeaderValue> {
        self.current()
            .filter(|c| Instant::now() < c.renew_at)
            .map(|c| c.bearer.clone())
    }

    /// Exchanges a new token and makes it the current one.
    async fn obtain(&self) -> Result<HeaderValue, AuthError> {
        let fresh = workload_identity::obtain(&self.settings, &self.http)
            .await
            .map_err(AuthError::WorkloadIdentity)?;
        let bearer = fresh.bearer.clone();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(fresh));
        info!("obtained a short-lived OpenAI access token through workload identity federation");
        Ok(bearer)
    }

    /// The token to send now: the current one while it is not due for renewal, else a new one
    /// (one renewal for every request waiting). No renewal is tried while backing off after a
    /// failure.
    async fn bearer_for_use(&self) -> Result<HeaderValue, AuthError> {
        if let Some(bearer) = self.usable() {
            return Ok(bearer);
        }
        let mut renewal = self.renewal.lock().await;
        if let Some(bearer) = self.usable() {
            return Ok(bearer);
        }
        if let Some(not_before) = renewal.not_before {
            let now = Instant::now();
            if now < not_before {
                let wait = (not_before - now).as_secs_f64().ceil();
                let last = renewal.last_error.as_deref().unwrap_or("unknown");
                return Err(AuthError::WorkloadIdentity(format!(
                    "renewal is temporarily unavailable after a failure; retry in {wait:.0} s (the last failure: {last})"
                )));
            }
        }
        match self.obtain().await {
            Ok(bearer) => {
                *renewal = Renewal::default();
                Ok(bearer)
            }
            Err(e) => {
                let AuthError::WorkloadIdentity(message) = &e else {
                    unreachable!("obtain fails with AuthError::WorkloadIdentity only")
                };
                let (first, most) = self.backoff;
                let backoff = first
                    .saturating_mul(1 << renewal.failures.min(16))
                    .min(most);
                renewal.failures = renewal.failures.saturating_add(1);
                renewal.not_before = Some(Instant::now() + backoff);
                renewal.last_error = Some(message.clone());
                error!(
                    "{e}; the next renewal is tried in {} s at the earliest",
                    backoff.as_secs()
                );
                Err(e)
            }
        }
    }

    /// After an upstream 401 for `rejected`: unless another request already renewed it, the
    /// token is dropped, so the next request renews it.
    fn forget_if_current(&self, rejected: &HeaderValue) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| c.bearer == rejected) {
            *current = None;
            info!("the upstream rejected the workload identity token: the next request renews it");
        }
    }
}

/// One generation of ChatGPT tokens.
struct Tokens {
    access_token: SecretString,
    refresh_token: Option<SecretString>,
    id_token: Option<SecretString>,
    account_id: SecretString,
    /// Unix seconds; `None` when unknown.
    last_refresh: Option<i64>,
    /// `Bearer <access token>`, sensitive.
    bearer: HeaderValue,
    /// The account id, sensitive (kept out of logs).
    account_header: HeaderValue,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("last_refresh", &self.last_refresh)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("UpstreamAuth");
        s.field("mode", &self.inner.mode);
        if let Kind::ChatGpt(chatgpt) = &self.inner.kind {
            s.field("token_url", &endpoint_for_messages(&chatgpt.token_url))
                .field("state_dir", &chatgpt.state_dir)
                .field("tokens", &*chatgpt.current());
        }
        s.finish_non_exhaustive()
    }
}

impl UpstreamAuth {
    /// Checks the settings and loads the credentials. In `chatgpt_token` mode, tokens saved in
    /// the state directory win over the `auth.json` credential unless the credential's
    /// `last_refresh` is newer (a fresh `codex login` installed by the administrator).
    pub(crate) fn new(settings: UpstreamAuthSettings) -> Result<Self, AuthError> {
        let kind = match &settings.mode {
            AuthMode::ApiKey => {
                let Some(mut key) = settings.static_key.clone() else {
                    return Err(AuthError::Config(
                        "UPSTREAM_AUTH_MODE=apikey_env needs an API key on standard input or in the openai-api-key credential".into(),
                    ));
                };
                key.set_sensitive(true);
                Kind::Static(key)
            }
            AuthMode::ApiKeyFromAuthJson { field } => {
                let Some(document) = &settings.auth_json else {
                    return Err(AuthError::Config(format!(
                        "UPSTREAM_AUTH_MODE=apikey_auth_json needs the Codex auth.json (the codex-auth credential) with the field {field}"
                    )));
                };
                Kind::Static(api_key_from_auth_json(document.expose_secret(), field)?)
            }
            AuthMode::ChatGptToken => Kind::ChatGpt(Box::new(ChatGpt::new(&settings)?)),
            AuthMode::WorkloadIdentity => {
                let Some(workload) = settings.workload else {
                    return Err(AuthError::Config(
                        "--github-oidc needs its request URL, audience, provider and service account settings".into(),
                    ));
                };
                Kind::Workload(Box::new(Workload {
                    settings: workload,
                    current: RwLock::new(None),
                    renewal: tokio::sync::Mutex::new(Renewal::default()),
                    backoff: (FIRST_RENEWAL_BACKOFF, MAX_RENEWAL_BACKOFF),
                    http: settings.http.clone(),
                }))
            }
        };
        Ok(UpstreamAuth {
            inner: Arc::new(Inner {
                mode: settings.mode,
                kind,
            }),
        })
    }

    /// Sets `Authorization: Bearer …` (sensitive) and, in ChatGPT mode, `chatgpt-account-id`,
    /// refreshing the tokens first when they are older than the refresh interval or of unknown
    /// age. A failed refresh at that point is logged and the current token is used: it may well
    /// still be valid, and an upstream 401 leads to [`Self::refresh_after_unauthorized`].
    pub(crate) async fn authorize(&self, headers: &mut HeaderMap) -> Result<(), AuthError> {
        match &self.inner.kind {
            Kind::Static(key) => {
                headers.insert(AUTHORIZATION, key.clone());
            }
            Kind::ChatGpt(chatgpt) => {
                let mut tokens = chatgpt.current();
                if chatgpt.is_stale(&tokens) {
                    match chatgpt.refresh_unless_replaced(&tokens.bearer).await {
                        Ok(()) => tokens = chatgpt.current(),
                        Err(e) => warn!(
                            "the ChatGPT tokens are due for a refresh, which failed; using the current access token: {e}"
                        ),
                    }
                }
                headers.insert(AUTHORIZATION, tokens.bearer.clone());
                headers.insert(
                    HeaderName::from_static(ACCOUNT_ID_HEADER),
                    tokens.account_header.clone(),
                );
            }
            Kind::Workload(workload) => {
                headers.insert(AUTHORIZATION, workload.bearer_for_use().await?);
            }
        }
        Ok(())
    }

    /// Call after the upstream answered 401 to a request sent with the `Authorization` value
    /// `rejected`. ChatGPT tokens are refreshed unless another request already did (only one
    /// refresh runs, however many requests got a 401 with the same token): `true`, a retry with
    /// fresh credentials makes sense. Static keys cannot be refreshed, and a rejected workload
    /// identity token is only forgotten (the next request renews it): `Ok(false)`.
    pub(crate) async fn refresh_after_unauthorized(
        &self,
        rejected: &HeaderValue,
    ) -> Result<bool, AuthError> {
        match &self.inner.kind {
            Kind::Static(_) => Ok(false),
            Kind::ChatGpt(chatgpt) => {
                chatgpt.refresh_unless_replaced(rejected).await?;
                Ok(true)
            }
            Kind::Workload(workload) => {
                // As the reference: the 401 goes to the client; the next request renews.
                workload.forget_if_current(rejected);
                Ok(false)
            }
        }
    }

    /// Obtains the first credential where one must be obtained before serving (workload
    /// identity, which the reference proxy also does at start); nothing to do otherwise.
    pub(crate) async fn prepare(&self) -> Result<(), AuthError> {
        match &self.inner.kind {
            Kind::Workload(workload) => workload.obtain().await.map(drop),
            Kind::Static(_) | Kind::ChatGpt(_) => Ok(()),
        }
    }
}

impl ChatGpt {
    fn new(settings: &UpstreamAuthSettings) -> Result<Self, AuthError> {
        let client_id = match settings.client_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => {
                return Err(AuthError::Config(
                    "UPSTREAM_AUTH_MODE=chatgpt_token needs the OAuth client id of the Codex CLI (used to refresh the tokens); it is not set".into(),
                ))
            }
        };
        // The refresh token goes there: HTTPS (plain HTTP only to loopback), no user info.
        let token_url = crate::worker::upstream::workload_identity::secret_endpoint(
            &settings.token_url,
            "the token endpoint URL",
        )
        .map_err(AuthError::Config)?;
        let from_credential = settings
            .auth_json
            .as_ref()
            .map(|d| parse_tokens(d.expose_secret(), "the codex-auth credential (auth.json)"))
            .transpose()?;
        let saved = match &settings.state_dir {
            Some(dir) => load_saved_tokens(dir)?,
            None => None,
        };
        let tokens = match (from_credential, saved) {
            (None, None) => {
                return Err(AuthError::Config(
                    "UPSTREAM_AUTH_MODE=chatgpt_token needs the Codex auth.json (the codex-auth credential)".into(),
                ))
            }
            (Some(credential), None) => credential,
            (None, Some((saved, path))) => {
                info!("using the ChatGPT tokens saved in {}", path.display());
                saved
            }
            (Some(credential), Some((saved, path))) => {
                // `None` (unknown) sorts before every time.
                if credential.last_refresh > saved.last_refresh {
                    info!(
                        "the codex-auth credential is newer than the tokens saved in {}; using the credential",
                        path.display()
                    );
                    credential
                } else {
                    info!(
                        "using the rotated ChatGPT tokens saved in {} (not older than the codex-auth credential)",
                        path.display()
                    );
                    saved
                }
            }
        };
        Ok(ChatGpt {
            current: RwLock::new(Arc::new(tokens)),
            refresh: RefreshGate::default(),
            token_url,
            client_id,
            state_dir: settings.state_dir.clone(),
            refresh_after: settings.refresh_after,
            http: settings.http.clone(),
            warned_unsaved: AtomicBool::new(false),
        })
    }

    fn current(&self) -> Arc<Tokens> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_stale(&self, tokens: &Tokens) -> bool {
        match tokens.last_refresh {
            None => true,
            Some(at) => {
                let age = unix_now().saturating_sub(at);
                age > 0 && age as u64 > self.refresh_after.as_secs()
            }
        }
    }

    /// Refreshes unless the current token is no longer `expected` (someone else refreshed while
    /// we waited for the lock). A refresh that failed moments ago for the same token is not
    /// retried: its error is returned again.
    async fn refresh_unless_replaced(&self, expected: &HeaderValue) -> Result<(), AuthError> {
        self.refresh
            .refresh_unless_replaced(
                Some(expected),
                || Some(self.current().bearer.clone()),
                || async {
                    let fresh = self.refresh_now(&self.current()).await?;
                    self.save(&fresh).await;
                    *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
                    info!("refreshed the ChatGPT tokens");
                    Ok(())
                },
            )
            .await
    }

    async fn refresh_now(&self, old: &Tokens) -> Result<Tokens, AuthError> {
        let Some(refresh_token) = &old.refresh_token else {
            return Err(AuthError::Config(
                "the ChatGPT tokens have no refresh_token, so they cannot be refreshed; sign in again with `codex login` and reinstall the codex-auth credential".into(),
            ));
        };
        #[derive(serde::Serialize)]
        struct RefreshRequest<'a> {
            client_id: &'a str,
            grant_type: &'a str,
            refresh_token: &'a str,
            scope: &'a str,
        }
        let body = serde_json::to_vec(&RefreshRequest {
            client_id: &self.client_id,
            grant_type: "refresh_token",
            refresh_token: refresh_token.expose_secret(),
            scope: REFRESH_SCOPE,
        })
        .expect("JSON serialization into memory");
        let where_ = endpoint_for_messages(&self.token_url);
        let mut response = self
            .http
            .post(self.token_url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            .timeout(TOKEN_REQUEST_TIMEOUT)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                AuthError::TokenEndpoint(format!(
                    "the token endpoint {where_} could not be reached: {}",
                    cause(&e)
                ))
            })?;
        let status = response.status();
        // Room for the whole answer at once, so that it never moves (which would leave a copy
        // of the tokens behind), and wiped when dropped.
        let mut answer = zeroize::Zeroizing::new(Vec::with_capacity(TOKEN_RESPONSE_LIMIT));
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if answer.len() + chunk.len() > TOKEN_RESPONSE_LIMIT {
                        return Err(AuthError::TokenEndpoint(format!(
                            "the token endpoint {where_} answered {status} with more than {TOKEN_RESPONSE_LIMIT} bytes"
                        )));
                    }
                    answer.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(AuthError::TokenEndpoint(format!(
                        "the token endpoint {where_} answered {status} but its body could not be read: {}",
                        cause(&e)
                    )))
                }
            }
        }
        let answer = SecretSlice::from(answer.to_vec());
        if !status.is_success() {
            let known = [
                Some(refresh_token),
                old.id_token.as_ref(),
                Some(&old.access_token),
            ];
            let code = error_code(answer.expose_secret())
                .filter(|c| {
                    known
                        .iter()
                        .flatten()
                        .all(|s| !workload_identity::overlaps(c, s.expose_secret()))
                })
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            let hint = if matches!(status.as_u16(), 400 | 401 | 403) {
                "; the refresh token was rejected (refresh tokens are single-use): sign in again with `codex login` and reinstall the codex-auth credential"
            } else {
                ""
            };
            return Err(AuthError::TokenEndpoint(format!(
                "the token endpoint {where_} answered {status}{code}{hint}"
            )));
        }
        self.tokens_from_answer(answer.expose_secret(), old)
            .map_err(|m| AuthError::TokenEndpoint(format!("the token endpoint {where_} {m}")))
    }

    /// The new generation from a successful token endpoint answer; what it leaves out is kept.
    fn tokens_from_answer(&self, answer: &[u8], old: &Tokens) -> Result<Tokens, String> {
        let mut object = match serde_json::from_slice::<serde_json::Value>(answer) {
            Ok(serde_json::Value::Object(object)) => object,
            Ok(_) => return Err("answered with JSON that is not an object".into()),
            Err(e) => return Err(format!("answered with {}", describe_json_error(&e))),
        };
        let access_token = take_string(&mut object, "access_token")
            .map_err(|_| "answered without an access_token".to_owned())?;
        let refresh_token = take_string(&mut object, "refresh_token")
            .ok()
            .or_else(|| old.refresh_token.clone());
        let id_token = take_string(&mut object, "id_token").ok();
        let account_id = id_token
            .as_ref()
            .and_then(|t| account_id_from_id_token(t.expose_secret()).ok())
            .unwrap_or_else(|| old.account_id.clone());
        let id_token = id_token.or_else(|| old.id_token.clone());
        Tokens::new(
            access_token,
            refresh_token,
            id_token,
            account_id,
            Some(unix_now()),
        )
        .map_err(|m| format!("answered with {m}"))
    }

    /// Saves `tokens` to the state directory, or warns (once) that they will not survive a
    /// restart. A failure is logged, not returned: the tokens work for this process anyway.
    async fn save(&self, tokens: &Tokens) {
        let Some(dir) = self.state_dir.clone() else {
            if !self.warned_unsaved.swap(true, Ordering::Relaxed) {
                warn!(
                    "no state directory is configured: the rotated ChatGPT tokens live only in memory, and since refresh tokens are single-use, the next restart will need a fresh `codex login`"
                );
            }
            return;
        };
        let document = saved_document(tokens);
        let target = dir.join(SAVED_TOKENS_FILE);
        let outcome = tokio::task::spawn_blocking(move || write_atomically(&dir, &document)).await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(
                "could not save the rotated ChatGPT tokens to {}: {e}; the old refresh token is spent, so after a restart sign in again with `codex login`",
                target.display()
            ),
            Err(e) => error!("saving the rotated ChatGPT tokens did not finish: {e}"),
        }
    }
}

impl Tokens {
    fn new(
        access_token: SecretString,
        refresh_token: Option<SecretString>,
        id_token: Option<SecretString>,
        account_id: SecretString,
        last_refresh: Option<i64>,
    ) -> Result<Tokens, String> {
        let bearer = bearer_header(access_token.expose_secret())
            .ok_or("an access_token that is not a valid HTTP header value")?;
        let mut account_header = HeaderValue::from_str(account_id.expose_secret())
            .map_err(|_| "an account id that is not a valid HTTP header value".to_owned())?;
        account_header.set_sensitive(true);
        Ok(Tokens {
            access_token,
            refresh_token,
            id_token,
            account_id,
            last_refresh,
            bearer,
            account_header,
        })
    }
}

/// `Bearer <token>` as a sensitive header value; `None` when the token has characters a header
/// cannot carry (or is empty).
fn bearer_header(token: &str) -> Option<HeaderValue> {
    if token.is_empty() {
        return None;
    }
    let mut value = String::with_capacity("Bearer ".len() + token.len());
    value.push_str("Bearer ");
    value.push_str(token);
    let mut header = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()?;
    header.set_sensitive(true);
    Some(header)
}

fn api_key_from_auth_json(document: &[u8], field: &str) -> Result<HeaderValue, AuthError> {
    let what = "the codex-auth credential (auth.json)";
    let mut object = parse_object(document, what)?;
    let key = take_string(&mut object, field).map_err(|problem| {
        AuthError::Config(format!(
            "{what} {problem} field {field} (needed by UPSTREAM_AUTH_MODE=apikey_auth_json)"
        ))
    })?;
    bearer_header(key.expose_secret()).ok_or_else(|| {
        AuthError::Config(format!(
            "the field {field} of {what} has characters an HTTP header cannot carry"
        ))
    })
}

/// Parses an `auth.json` document into ChatGPT tokens. `what` names the document in errors.
fn parse_tokens(document: &[u8], what: &str) -> Result<Tokens, AuthError> {
    let mut object = parse_object(document, what)?;
    let mut tokens = match object.remove("tokens") {
        Some(serde_json::Value::Object(tokens)) => tokens,
        None | Some(serde_json::Value::Null) => {
            return Err(AuthError::Config(format!(
                "{what} has no `tokens` object (sign in with ChatGPT: `codex login`)"
            )))
        }
        Some(_) => {
            return Err(AuthError::Config(format!(
                "{what}: `tokens` is not an object"
            )))
        }
    };
    let field_error = |name: &str, problem: String| {
        AuthError::Config(format!("{what} {problem} field tokens.{name}"))
    };
    let access_token =
        take_string(&mut tokens, "access_token").map_err(|p| field_error("access_token", p))?;
    let refresh_token = optional_string(&mut tokens, "refresh_token")
        .map_err(|p| field_error("refresh_token", p))?;
    let id_token =
        optional_string(&mut tokens, "id_token").map_err(|p| field_error("id_token", p))?;
    let account_id = match optional_string(&mut tokens, "account_id")
        .map_err(|p| field_error("account_id", p))?
    {
        Some(id) => id,
        None => match &id_token {
            Some(id_token) => account_id_from_id_token(id_token.expose_secret()).map_err(|m| {
                AuthError::Config(format!(
                    "{what} has no tokens.account_id, and {m}"
                ))
            })?,
            None => {
                return Err(AuthError::Config(format!(
                    "{what} has neither tokens.account_id nor tokens.id_token, so the ChatGPT account id is unknown"
                )))
            }
        },
    };
    let last_refresh = match object.get("last_refresh") {
        Some(serde_json::Value::String(text)) => match crate::clock::parse_rfc3339(text) {
            Some(at) => Some(at),
            None => {
                warn!("{what}: last_refresh is not an RFC 3339 time; the tokens will be refreshed before use");
                None
            }
        },
        _ => None,
    };
    Tokens::new(
        access_token,
        refresh_token,
        id_token,
        account_id,
        last_refresh,
    )
    .map_err(|m| AuthError::Config(format!("{what} has {m}")))
}

/// Reads `<dir>/codex-auth.json`: `Ok(None)` when absent or unusable (then the credential is
/// used, with a warning for an unusable file), an error when it exists but cannot be read.
fn load_saved_tokens(dir: &Path) -> Result<Option<(Tokens, PathBuf)>, AuthError> {
    let path = dir.join(SAVED_TOKENS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => SecretSlice::from(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(AuthError::Config(format!(
                "cannot read the saved ChatGPT tokens {}: {e}",
                path.display()
            )))
        }
    };
    let what = format!("the saved tokens {}", path.display());
    match parse_tokens(bytes.expose_secret(), &what) {
        Ok(tokens) => Ok(Some((tokens, path))),
        Err(e) => {
            warn!("ignoring unusable saved tokens: {e}");
            Ok(None)
        }
    }
}

fn parse_object(
    document: &[u8],
    what: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
    match serde_json::from_slice::<serde_json::Value>(document) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        Ok(_) => Err(AuthError::Config(format!("{what} is not a JSON object"))),
        Err(e) => Err(AuthError::Config(format!(
            "{what} is not valid JSON: {}",
            describe_json_error(&e)
        ))),
    }
}

/// A serde_json error without its message, which can quote the document.
fn describe_json_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "a syntax error",
        serde_json::error::Category::Data => "a value of the wrong type",
        serde_json::error::Category::Io => "a read error",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

/// Moves a non-empty string field out; the error says what is wrong, to be followed by
/// "field NAME".
fn take_string(
    object: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<SecretString, String> {
    match optional_string(object, name)? {
        Some(value) => Ok(value),
        None => Err("is missing the".into()),
    }
}

/// Like [`take_string`], but absent, `null` and `""` are `None`.
fn optional_string(
    object: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<SecretString>, String> {
    match object.remove(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(SecretString::from(s))),
        Some(_) => Err("has a non-string value in the".into()),
    }
}

/// The `chatgpt_account_id` of the `https://api.openai.com/auth` claim of an id_token. The
/// signature is not checked: the value only becomes a request header.
fn account_id_from_id_token(id_token: &str) -> Result<SecretString, String> {
    let mut parts = id_token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("tokens.id_token is not a JWT (three dot-separated parts)".into());
    };
    let payload = SecretSlice::from(
        base64url_decode(payload).ok_or("the payload of tokens.id_token is not valid base64url")?,
    );
    let claims: serde_json::Value = serde_json::from_slice(payload.expose_secret())
        .map_err(|_| "the payload of tokens.id_token is not JSON".to_owned())?;
    match claims
        .get(AUTH_CLAIM)
        .and_then(|claim| claim.get("chatgpt_account_id"))
    {
        Some(serde_json::Value::String(id)) if !id.is_empty() => Ok(SecretString::from(id.clone())),
        _ => Err(format!(
            "tokens.id_token has no {AUTH_CLAIM} → chatgpt_account_id claim"
        )),
    }
}

/// Decodes base64url (`-`, `_`; the standard `+`, `/` are accepted too), padded or not.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    use base64::Engine;
    let config = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    // JWTs are base64url; some issuers use the standard alphabet, and no text mixes both.
    let alphabet = if text.contains(['+', '/']) {
        &base64::alphabet::STANDARD
    } else {
        &base64::alphabet::URL_SAFE
    };
    GeneralPurpose::new(alphabet, config).decode(text).ok()
}

/// An error code from a token endpoint error answer (`{"error":"invalid_grant"}` or
/// `{"error":{"code":"…"}}`), only when it looks like an identifier.
pub(super) fn error_code(answer: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(answer).ok()?;
    let error = value.get("error")?;
    let code = match error {
        serde_json::Value::String(code) => code.as_str(),
        serde_json::Value::Object(_) => error
            .get("code")
            .or_else(|| error.get("type"))
            .and_then(|c| c.as_str())?,
        _ => return None,
    };
    let looks_like_code = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    looks_like_code.then(|| code.to_owned())
}

/// The tokens in `auth.json` format, ready to be written. No API key is copied into it.
fn saved_document(tokens: &Tokens) -> SecretSlice<u8> {
    #[derive(serde::Serialize)]
    struct Document<'a> {
        #[serde(rename = "OPENAI_API_KEY")]
        openai_api_key: Option<&'a str>,
        tokens: SavedTokens<'a>,
        last_refresh: Option<String>,
    }
    #[derive(serde::Serialize)]
    struct SavedTokens<'a> {
        id_token: Option<&'a str>,
        access_token: &'a str,
        refresh_token: Option<&'a str>,
        account_id: &'a str,
    }
    let document = Document {
        openai_api_key: None,
        tokens: SavedTokens {
            id_token: tokens.id_token.as_ref().map(|t| t.expose_secret()),
            access_token: tokens.access_token.expose_secret(),
            refresh_token: tokens.refresh_token.as_ref().map(|t| t.expose_secret()),
            account_id: tokens.account_id.expose_secret(),
        },
        last_refresh: tokens.last_refresh.map(crate::clock::format_rfc3339),
    };
    let mut bytes = serde_json::to_vec_pretty(&document).expect("JSON serialization into memory");
    bytes.push(b'\n');
    SecretSlice::from(bytes)
}

/// Writes `<dir>/codex-auth.json` atomically (`crate::atomic_file`: a 0600 file with an
/// unpredictable temporary name, renamed over the target, never through a link), creating the
/// directory 0700 if needed.
fn write_atomically(dir: &Path, contents: &SecretSlice<u8>) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    crate::atomic_file::replace(
        &dir.join(SAVED_TOKENS_FILE),
        contents.expose_secret(),
        0o600,
    )
}

fn unix_now() -> i64 {
    i64::try_from(crate::clock::unix_now()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{format_rfc3339, parse_rfc3339};
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    const ACCOUNT: &str = "acct-123";
    const CLIENT_ID: &str = "test-client-id";

    // --- a mock token endpoint ---------------------------------------------------------------

    #[derive(Clone)]
    enum Reply {
        /// 200 with `access-N`, `refresh-N` and an id_token for [`ACCOUNT`] (N = call number).
        Rotate,
        Fixed(u16, &'static str),
    }

    struct Mock {
        calls: AtomicUsize,
        reply: Reply,
        delay: Duration,
        requests: Mutex<Vec<serde_json::Value>>,
    }

    async fn mock_endpoint(reply: Reply, delay: Duration) -> (String, Arc<Mock>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mock = Arc::new(Mock {
            calls: AtomicUsize::new(0),
            reply,
            delay,
            requests: Mutex::new(Vec::new()),
        });
        let shared = mock.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mock = shared.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| answer(mock.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (format!("http://{address}/oauth/token"), mock)
    }

    async fn answer(
        mock: Arc<Mock>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let n = mock.calls.fetch_add(1, Ordering::SeqCst) + 1;
        assert_eq!(request.method(), hyper::Method::POST);
        assert_eq!(request.uri().path(), "/oauth/token");
        assert_eq!(request.headers()[CONTENT_TYPE], "application/json");
        let body = request.into_body().collect().await.unwrap().to_bytes();
        mock.requests
            .lock()
            .unwrap()
            .push(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
        tokio::time::sleep(mock.delay).await;
        let (status, body) = match &mock.reply {
            Reply::Rotate => (
                200,
                serde_json::json!({
                    "access_token": format!("access-{n}"),
                    "refresh_token": format!("refresh-{n}"),
                    "id_token": id_token_for(ACCOUNT),
                    "expires_in": 864000,
                })
                .to_string(),
            ),
            Reply::Fixed(status, body) => (*status, (*body).to_owned()),
        };
        Ok(Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    }

    /// A port nothing listens on.
    async fn dead_endpoint() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{address}/oauth/token")
    }

    // --- documents ---------------------------------------------------------------------------

    fn base64url_encode(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            base64url_encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            base64url_encode(claims.to_string().as_bytes())
        )
    }

    fn id_token_for(account: &str) -> String {
        jwt(serde_json::json!({
            "email": "someone@example.com",
            AUTH_CLAIM: {"chatgpt_account_id": account, "chatgpt_plan_type": "plus"},
        }))
    }

    fn auth_json(tokens: serde_json::Value, last_refresh: Option<String>) -> SecretSlice<u8> {
        let mut document = serde_json::json!({"OPENAI_API_KEY": null, "tokens": tokens});
        if let Some(at) = last_refresh {
            document["last_refresh"] = at.into();
        }
        SecretSlice::from(document.to_string().into_bytes())
    }

    fn chatgpt_tokens(access: &str, refresh: &str) -> serde_json::Value {
        serde_json::json!({
            "id_token": id_token_for(ACCOUNT),
            "access_token": access,
            "refresh_token": refresh,
            "account_id": ACCOUNT,
        })
    }

    fn now_rfc3339() -> String {
        format_rfc3339(unix_now())
    }

    const LONG_AGO: &str = "2020-01-01T00:00:00.123456Z";

    fn chatgpt_settings(
        token_url: &str,
        document: Option<SecretSlice<u8>>,
        state_dir: Option<&Path>,
    ) -> UpstreamAuthSettings {
        let mut settings =
            UpstreamAuthSettings::new(AuthMode::ChatGptToken, reqwest::Client::new());
        settings.auth_json = document;
        settings.state_dir = state_dir.map(Path::to_path_buf);
        settings.token_url = token_url.to_owned();
        settings.client_id = Some(CLIENT_ID.to_owned());
        settings
    }

    async fn headers_of(auth: &UpstreamAuth) -> HeaderMap {
        let mut headers = HeaderMap::new();
        auth.authorize(&mut headers).await.unwrap();
        headers
    }

    fn assert_no_secret(text: &str, secrets: &[&str]) {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret:?} leaked into {text:?}");
        }
    }

    fn config_error(result: Result<UpstreamAuth, AuthError>) -> String {
        match result {
            Err(e @ AuthError::Config(_)) => {
                let (status, body) = e.to_response_parts();
                assert_eq!(status, 500);
                let body: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body["error"]["code"], "upstream_auth_misconfigured");
                format!("{e} | {e:?}")
            }
            Err(other) => panic!("expected a configuration error, got {other}"),
            Ok(auth) => panic!("expected a configuration error, got {auth:?}"),
        }
    }

    // --- modes -------------------------------------------------------------------------------

    #[test]
    fn modes_parse_from_the_wrapper_values() {
        assert_eq!("apikey_env".parse::<AuthMode>().unwrap(), AuthMode::ApiKey);
        assert_eq!(
            " APIKEY_AUTH_JSON\n".parse::<AuthMode>().unwrap(),
            AuthMode::ApiKeyFromAuthJson {
                field: "OPENAI_API_KEY".into()
            }
        );
        assert_eq!(
            "chatgpt_token".parse::<AuthMode>().unwrap(),
            AuthMode::ChatGptToken
        );
        for mode in [
            AuthMode::ApiKey,
            AuthMode::ChatGptToken,
            AuthMode::ApiKeyFromAuthJson { field: "X".into() },
        ] {
            assert_eq!(
                mode.to_string().parse::<AuthMode>().unwrap().as_str(),
                mode.as_str()
            );
        }
        let e = "chatgpt".parse::<AuthMode>().unwrap_err().to_string();
        assert!(
            e.contains("`chatgpt`") && e.contains("apikey_env, apikey_auth_json or chatgpt_token"),
            "{e}"
        );
        let e = "sk-proj-0123456789abcdef".parse::<AuthMode>().unwrap_err();
        assert_no_secret(&format!("{e} {e:?}"), &["0123456789abcdef"]);
    }

    #[tokio::test]
    async fn api_key_mode_sends_the_static_key() {
        let mut settings = UpstreamAuthSettings::new(AuthMode::ApiKey, reqwest::Client::new());
        settings.static_key = Some(HeaderValue::from_static("Bearer sk-static-secret"));
        let auth = UpstreamAuth::new(settings).unwrap();
        let headers = headers_of(&auth).await;
        assert_eq!(headers[AUTHORIZATION], "Bearer sk-static-secret");
        assert!(headers[AUTHORIZATION].is_sensitive());
        assert!(headers.get(ACCOUNT_ID_HEADER).is_none());
        assert!(!auth
            .refresh_after_unauthorized(&headers[AUTHORIZATION])
            .await
            .unwrap());
        assert_no_secret(&format!("{auth:?}"), &["sk-static-secret"]);

        let missing = UpstreamAuthSettings::new(AuthMode::ApiKey, reqwest::Client::new());
        assert!(config_error(UpstreamAuth::new(missing)).contains("openai-api-key"));
    }

    #[tokio::test]
    async fn api_key_from_auth_json_reads_the_configured_field() {
        let document = br#"{"OPENAI_API_KEY":"sk-from-json","OTHER_KEY":"sk-other","tokens":null}"#;
        let mut settings =
            UpstreamAuthSettings::new("apikey_auth_json".parse().unwrap(), reqwest::Client::new());
        settings.auth_json = Some(SecretSlice::from(document.to_vec()));
        let auth = UpstreamAuth::new(settings).unwrap();
        let headers = headers_of(&auth).await;
        assert_eq!(headers[AUTHORIZATION], "Bearer sk-from-json");
        assert!(headers[AUTHORIZATION].is_sensitive());
        assert!(headers.get(ACCOUNT_ID_HEADER).is_none());
        assert!(!auth
            .refresh_after_unauthorized(&headers[AUTHORIZATION])
            .await
            .unwrap());
        assert_no_secret(&format!("{auth:?}"), &["sk-from-json", "sk-other"]);

        let mut settings = UpstreamAuthSettings::new(
            AuthMode::ApiKeyFromAuthJson {
                field: "OTHER_KEY".into(),
            },
            reqwest::Client::new(),
        );
        settings.auth_json = Some(SecretSlice::from(document.to_vec()));
        let auth = UpstreamAuth::new(settings).unwrap();
        assert_eq!(headers_of(&auth).await[AUTHORIZATION], "Bearer sk-other");
    }

    /// The refresh token is sent only over HTTPS (plain HTTP only to loopback), and the
    /// endpoint's user info never shows in `Debug`.
    #[test]
    fn the_token_endpoint_must_be_https_or_loopback() {
        for refused in [
            "http://auth.example/oauth/token",
            "https://user:pw@auth.example/oauth/token",
            "ftp://auth.example/x",
        ] {
            let document = auth_json(chatgpt_tokens("a", "r"), Some(now_rfc3339()));
            let error = config_error(UpstreamAuth::new(chatgpt_settings(
                refused,
                Some(document),
                None,
            )));
            assert!(error.contains("token endpoint URL"), "{refused}: {error}");
            assert!(!error.contains("pw"), "{error}");
        }
        let document = auth_json(chatgpt_tokens("a", "r"), Some(now_rfc3339()));
        assert!(UpstreamAuth::new(chatgpt_settings(
            "http://127.0.0.1:9/oauth/token",
            Some(document),
            None
        ))
        .is_ok());
        let settings = chatgpt_settings("https://user:pw@auth.example/t?x=1", None, None);
        assert!(!format!("{settings:?}").contains("pw"));
    }

    #[tokio::test]
    async fn chatgpt_mode_uses_the_account_id_from_the_tokens() {
        let (url, mock) = mock_endpoint(Reply::Rotate, Duration::ZERO).await;
        let mut tokens = chatgpt_tokens("access-0", "refresh-0");
        tokens["id_token"] = id_token_for("acct-from-claim").into();
        let document = auth_json(tokens, Some(now_rfc3339()));
        let auth = UpstreamAuth::new(chatgpt_settings(&url, Some(document), None)).unwrap();
        let headers = headers_of(&auth).await;
        assert_eq!(headers[AUTHORIZATION], "Bearer access-0");
        assert!(headers[AUTHORIZATION].is_sensitive());
        assert_eq!(headers[ACCOUNT_ID_HEADER], ACCOUNT);
        assert_eq!(
            mock.calls.load(Ordering::SeqCst),
            0,
            "fresh tokens are not refreshed"
        );
        assert_no_secret(&format!("{auth:?}"), &["access-0", "refresh-0", ACCOUNT]);
    }

    #[tokio::test]
    async fn chatgpt_mode_takes_the_account_id_from_the_id_token_claim() {
        let (url, _mock) = mock_endpoint(Reply::Rotate, Duration::ZERO).await;
        let tokens = serde_json::json!({
            "id_token": id_token_for("acct-from-claim"),
            "access_token": "access-0",
            "refresh_token": "refresh-0",
        });
        let auth = UpstreamAuth::new(chatgpt_settings(
            &url,
            Some(auth_json(tokens, Some(now_rfc3339()))),
            None,
        ))
        .unwrap();
        let headers = headers_of(&auth).await;
        assert_eq!(headers[ACCOUNT_ID_HEADER], "acct-from-claim");
        assert_eq!(headers[AUTHORIZATION], "Bearer access-0");
    }

    // --- refresh -----------------------------------------------------------------------------

    #[tokio::test]
    async fn stale_tokens_are_refreshed_before_use_and_saved() {
        let (url, mock) = mock_endpoint(Reply::Rotate, Duration::ZERO).await;
        let state = tempfile::tempdir().unwrap();
        let old_credential = || {
            auth_json(
                chatgpt_tokens("access-0", "refresh-0"),
                Some(LONG_AGO.to_owned()),
            )
        };
        let auth = UpstreamAuth::new(chatgpt_settings(
            &url,
            Some(old_credential()),
            Some(state.path()),
        ))
        .unwrap();
        let headers = headers_of(&auth).await;
        assert_eq!(mock.calls.load(Ordering::SeqCst), 1);
        assert_eq!(headers[AUTHORIZATION], "Bearer access-1");
        assert_eq!(headers[ACCOUNT_ID_HEADER], ACCOUNT);
        let sent = mock.requests.lock().unwrap()[0].clone();
        assert_eq!(
            sent,
            serde_json::json!({
                "client_id": CLIENT_ID,
                "grant_type": "refresh_token",
                "refresh_token": "refresh-0",
                "scope": "openid profile email",
            })
        );

        // Saved atomically, 0600, in auth.json format, with the rotated refresh token.
        use std::os::unix::fs::PermissionsExt;
        let path = state.path().join(SAVED_TOKENS_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(saved["tokens"]["refresh_token"], "refresh-1");
        assert_eq!(saved["tokens"]["access_token"], "access-1");
        assert_eq!(saved["tokens"]["account_id"], ACCOUNT);
        assert!(saved["tokens"]["id_token"].is_string());
        assert!(saved["OPENAI_API_KEY"].is_null());
        let saved_at = parse_rfc3339(saved["last_refresh"].as_str().unwrap()).unwrap();
        assert!((unix_now() - saved_at).abs() < 60);
        let leftovers: Vec<_> = std::fs::read_dir(state.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from(SAVED_TOKENS_FILE)]);

        // Fresh now: no second refresh.
        assert_eq!(headers_of(&auth).await[AUTHORIZATION], "Bearer access-1");
        assert_eq!(mock.calls.load(Ordering::SeqCst), 1);

        // A restart with the same (old) credential uses the saved tokens, not the spent ones.
        let restarted = UpstreamAuth::new(chatgpt_settings(
            &url,
            Some(old_credential()),
            Some(state.path()),
        ))
        .unwrap();
        assert_eq!(
            headers_of(&restarted).await[AUTHORIZATION],
            "Bearer access-1"
        );
        assert_eq!(mock.calls.load(Ordering::SeqCst), 1);
        // So does a restart without any credential.
        let restarted =
            UpstreamAuth::new(chatgpt_settings(&url, None, Some(state.path()))).unwrap();
        assert_eq!(
            headers_of(&restarted).await[AUTHORIZATION],
            "Bearer access-1"
        );

        // A credential newer than the saved tokens (a fresh `codex login`) wins.
        let newer = auth_json(
            chatgpt_tokens("access-new-login", "refresh-new-login"),
            Some(format_rfc3339(unix_now() + 3600)),
        );
        let relogged =
            UpstreamAuth::new(chatgpt_settings(&url, Some(newer), Some(state.path()))).unwrap();
        assert_eq!(
            headers_of(&relogged).await[AUTHORIZATION],
            "Bearer access-new-login"
        );
        assert_eq!(mock.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn unknown_last_refresh_means_refresh_first_and_works_without_a_state_dir() {
        let (url, mock) = mock_endpoint(Reply::Rotate, Duration::ZERO).await;
        for last_refresh in [None, Some("yesterday".to_owned())] {
            let document = auth_json(chatgpt_tokens("access-0", "refresh-0"), last_refresh);
            let auth = UpstreamAuth::new(chatgpt_settings(&url, Some(document), None)).unwrap();
            let before = mock.calls.load(Ordering::SeqCst);
            headers_of(&auth).await;
            assert_eq!(mock.calls.load(Ordering::SeqCst), before + 1);
        }
    }

    #[tokio::test]
    async fn refresh_interval_is_configurable() {
        let (url, mock) = mock_endpoint(Reply::Rotate, Duration::ZERO).await;
        let document = auth_json(
            chatgpt_tokens("access-0", "refresh-0"),
            Some(format_rfc3339(unix_now() - 2 * 3600)),
        );
        let mut settings = chatgpt_settings(&url, Some(document), None);
        settings.refresh_after = Duration::from_secs(3600);
        let auth = UpstreamAuth::new(settings).unwrap();
        assert_eq!(headers_of(&auth).await[AUTHORIZATION], "Bearer access-1");
        assert_eq!(mock.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_unauthorized_requests_share_one_refresh() {
        let (url, mock) = mock_endpoint(Reply::Rotate, Duration::from_millis(200)).await;
        let state = tempfile::tempdir().unwrap();
        let document = auth_json(chatgpt_tokens("access-0", "refresh-0"), Some(now_rfc3339()));
        let auth =
            UpstreamAuth::new(chatgpt_settings(&url, Some(document), Some(state.path()))).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let auth = auth.clone();
            tasks.push(tokio::spawn(async move {
                let rejected = headers_of(&auth).await[AUTHORIZATION].clone();
                assert_eq!(rejected, "Bearer access-0");
                let retry = auth.refresh_after_unauthorized(&rejected).await.unwrap();
                (retry, headers_of(&auth).await[AUTHORIZATION].clone())
            }));
        }
        for task in tasks {
            let (retry, after) = task.await.unwrap();
            assert!(retry);
            assert_eq!(after, "Bearer access-1");
        }
        assert_eq!(mock.calls.load(Ordering::SeqCst), 1);
        // A late 401 for the old token: the token was replaced already, so just retry.
        assert!(auth
            .refresh_after_unauthorized(&HeaderValue::from_static("Bearer access-0"))
            .await
            .unwrap());
        assert_eq!(mock.calls.load(Ordering::SeqCst), 1);
        // A 401 for the new token refreshes again, with the rotated refresh token.
        assert!(auth
            .refresh_after_unauthorized(&HeaderValue::from_static("Bearer access-1"))
            .await
            .unwrap());
        assert_eq!(mock.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            mock.requests.lock().unwrap()[1]["refresh_token"],
            "refresh-1"
        );
        assert_eq!(headers_of(&auth).await[AUTHORIZATION], "Bearer access-2");
    }

    #[tokio::test]
    async fn token_endpoint_failures_are_clear_and_secret_free() {
        let secrets = ["access-secret-0", "refresh-secret-0"];
        let cases = [
            (
                Some(Reply::Fixed(
                    400,
                    r#"{"error":"invalid_grant","error_description":"refresh-secret-0 was already used"}"#,
                )),
                "400",
            ),
            (
                Some(Reply::Fixed(
                    401,
                    r#"{"error":{"code":"refresh-secret-0","message":"x"}}"#,
                )),
                "401",
            ),
            (Some(Reply::Fixed(500, "upstream exploded")), "500"),
            (
                Some(Reply::Fixed(200, "<html>not json</html>")),
                "syntax error",
            ),
            (
                Some(Reply::Fixed(200, r#"{"refresh_token":"r"}"#)),
                "without an access_token",
            ),
            (None, "could not be reached"),
        ];
        for (reply, expected) in cases {
            let (url, mock) = match reply {
                Some(reply) => {
                    let (url, mock) = mock_endpoint(reply, Duration::ZERO).await;
                    (url, Some(mock))
                }
                None => (dead_endpoint().await, None),
            };
            let state = tempfile::tempdir().unwrap();
            let document = auth_json(
                chatgpt_tokens("access-secret-0", "refresh-secret-0"),
                Some(now_rfc3339()),
            );
            let auth =
                UpstreamAuth::new(chatgpt_settings(&url, Some(document), Some(state.path())))
                    .unwrap();
            let rejected = headers_of(&auth).await[AUTHORIZATION].clone();
            let error = auth
                .refresh_after_unauthorized(&rejected)
                .await
                .unwrap_err();
            assert!(matches!(error, AuthError::TokenEndpoint(_)), "{error:?}");
            let shown = format!("{error} | {error:?}");
            assert!(shown.contains(expected), "{expected:?} not in {shown}");
            assert_no_secret(&shown, &secrets);
            let (status, body) = error.to_response_parts();
            assert_eq!(status, 502);
            assert_no_secret(&body, &secrets);
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["error"]["code"], "upstream_token_refresh_failed");
            if expected == "400" {
                assert!(shown.contains("(invalid_grant)") && shown.contains("codex login"));
            }
            // Nothing was saved and the old token stays in use.
            assert!(!state.path().join(SAVED_TOKENS_FILE).exists());
            assert_eq!(headers_of(&auth).await[AUTHORIZATION], rejected);
            // Other requests with the same token get the same answer without another call.
            if let Some(mock) = mock {
                assert_eq!(
                    auth.refresh_after_unauthorized(&rejected)
                        .await
                        .unwrap_err(),
                    error
                );
                assert_eq!(mock.calls.load(Ordering::SeqCst), 1);
            }
            assert_no_secret(&format!("{auth:?}"), &secrets);
        }
    }

    #[tokio::test]
    async fn a_failed_refresh_before_use_falls_back_to_the_current_token() {
        let (url, mock) = mock_endpoint(Reply::Fixed(503, ""), Duration::ZERO).await;
        let document = auth_json(
            chatgpt_tokens("access-0", "refresh-0"),
            Some(LONG_AGO.to_owned()),
        );
        let auth = UpstreamAuth::new(chatgpt_settings(&url, Some(document), None)).unwrap();
        assert_eq!(headers_of(&auth).await[AUTHORIZATION], "Bearer access-0");
        assert_eq!(headers_of(&auth).await[AUTHORIZATION], "Bearer access-0");
        assert_eq!(
            mock.calls.load(Ordering::SeqCst),
            1,
            "failures are not hammered"
        );
    }

    // --- malformed input ---------------------------------------------------------------------

    #[tokio::test]
    async fn malformed_auth_json_gives_clear_errors() {
        let url = dead_endpoint().await;
        let secrets = ["access-secret-0", "refresh-secret-0", "sk-secret-key"];
        let chatgpt = |document: &[u8]| {
            config_error(UpstreamAuth::new(chatgpt_settings(
                &url,
                Some(SecretSlice::from(document.to_vec())),
                None,
            )))
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"access-secret-0 refresh-secret-0".to_vec(), "is not valid JSON: a syntax error at line 1"),
            (br#"{"tokens": {"access_token": "access-secret-0""#.to_vec(), "unexpected end of input"),
            (br#"["access-secret-0"]"#.to_vec(), "is not a JSON object"),
            (br#"{"OPENAI_API_KEY": "sk-secret-key"}"#.to_vec(), "no `tokens` object"),
            (br#"{"tokens": "access-secret-0"}"#.to_vec(), "`tokens` is not an object"),
            (
                br#"{"tokens": {"refresh_token": "refresh-secret-0", "account_id": "a"}}"#.to_vec(),
                "is missing the field tokens.access_token",
            ),
            (
                br#"{"tokens": {"access_token": 42, "account_id": "a"}}"#.to_vec(),
                "non-string value in the field tokens.access_token",
            ),
            (
                br#"{"tokens": {"access_token": "access-secret-0", "refresh_token": "refresh-secret-0"}}"#.to_vec(),
                "neither tokens.account_id nor tokens.id_token",
            ),
            (
                br#"{"tokens": {"access_token": "access-secret-0", "id_token": "refresh-secret-0"}}"#.to_vec(),
                "tokens.id_token is not a JWT",
            ),
            (
                format!(r#"{{"tokens": {{"access_token": "access-secret-0", "id_token": "{}"}}}}"#, jwt(serde_json::json!({"sub": "x"}))).into_bytes(),
                "no https://api.openai.com/auth → chatgpt_account_id claim",
            ),
            (
                br#"{"tokens": {"access_token": "access-secret-0", "id_token": "a.!!!.c"}}"#.to_vec(),
                "not valid base64url",
            ),
            (
                br#"{"tokens": {"access_token": "access secret\u0001", "account_id": "a"}}"#.to_vec(),
                "access_token that is not a valid HTTP header value",
            ),
        ];
        for (document, expected) in cases {
            let message = chatgpt(&document);
            assert!(message.contains(expected), "{expected:?} not in {message}");
            assert!(message.contains("codex-auth credential"), "{message}");
            assert_no_secret(&message, &secrets);
        }

        // apikey_auth_json: a missing or mistyped field is named.
        for (document, expected) in [
            (
                &br#"{"tokens": {"access_token": "access-secret-0"}}"#[..],
                "is missing the field OPENAI_API_KEY",
            ),
            (
                br#"{"OPENAI_API_KEY": null}"#,
                "is missing the field OPENAI_API_KEY",
            ),
            (
                br#"{"OPENAI_API_KEY": ["sk-secret-key"]}"#,
                "non-string value in the field OPENAI_API_KEY",
            ),
            (b"sk-secret-key", "is not valid JSON"),
        ] {
            let mut settings = UpstreamAuthSettings::new(
                "apikey_auth_json".parse().unwrap(),
                reqwest::Client::new(),
            );
            settings.auth_json = Some(SecretSlice::from(document.to_vec()));
            let message = config_error(UpstreamAuth::new(settings));
            assert!(message.contains(expected), "{expected:?} not in {message}");
            assert_no_secret(&message, &secrets);
        }
        let settings =
            UpstreamAuthSettings::new("apikey_auth_json".parse().unwrap(), reqwest::Client::new());
        assert!(config_error(UpstreamAuth::new(settings)).contains("needs the Codex auth.json"));
    }

    #[tokio::test]
    async fn chatgpt_mode_needs_a_client_id_a_url_and_tokens() {
        let document = || Some(auth_json(chatgpt_tokens("access-0", "refresh-0"), None));
        let mut settings = chatgpt_settings(DEFAULT_TOKEN_URL, document(), None);
        settings.client_id = None;
        assert!(config_error(UpstreamAuth::new(settings)).contains("OAuth client id"));
        let mut settings = chatgpt_settings("not a url", document(), None);
        settings.client_id = Some(CLIENT_ID.into());
        assert!(config_error(UpstreamAuth::new(settings)).contains("token endpoint URL"));
        let settings = chatgpt_settings(DEFAULT_TOKEN_URL, None, None);
        assert!(config_error(UpstreamAuth::new(settings)).contains("needs the Codex auth.json"));
        let defaults = UpstreamAuthSettings::new(AuthMode::ChatGptToken, reqwest::Client::new());
        assert_eq!(defaults.token_url, DEFAULT_TOKEN_URL);
        assert_eq!(defaults.refresh_after, Duration::from_secs(28 * 86_400));
    }

    #[tokio::test]
    async fn an_unusable_saved_file_falls_back_to_the_credential() {
        let state = tempfile::tempdir().unwrap();
        std::fs::write(state.path().join(SAVED_TOKENS_FILE), b"{ truncated").unwrap();
        let document = auth_json(chatgpt_tokens("access-0", "refresh-0"), Some(now_rfc3339()));
        let auth = UpstreamAuth::new(chatgpt_settings(
            DEFAULT_TOKEN_URL,
            Some(document),
            Some(state.path()),
        ))
        .unwrap();
        assert_eq!(headers_of(&auth).await[AUTHORIZATION], "Bearer access-0");
    }

    #[test]
    fn settings_debug_hides_secrets() {
        let mut settings = UpstreamAuthSettings::new(AuthMode::ApiKey, reqwest::Client::new());
        settings.static_key = Some(HeaderValue::from_static("Bearer sk-debug-secret"));
        settings.auth_json = Some(SecretSlice::from(b"{\"x\":\"json-secret\"}".to_vec()));
        assert_no_secret(
            &format!("{settings:?}"),
            &["sk-debug-secret", "json-secret"],
        );
    }

    // --- helpers -----------------------------------------------------------------------------

    #[test]
    fn base64url_decoding() {
        assert_eq!(base64url_decode("").unwrap(), b"");
        assert_eq!(base64url_decode("Zg").unwrap(), b"f");
        assert_eq!(base64url_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64url_decode("Zm8").unwrap(), b"fo");
        assert_eq!(base64url_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64url_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64url_decode("-_-_").unwrap(), [0xfb, 0xff, 0xbf]);
        assert_eq!(base64url_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert!(base64url_decode("Z").is_none());
        assert!(base64url_decode("Zm9v!").is_none());
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64url_decode(&base64url_encode(&data)).unwrap(), data);
        }
    }

    // --- workload identity -------------------------------------------------------------------

    /// GitHub's ID-token endpoint (GET) and OpenAI's exchange (POST) on one loopback port; each
    /// answer waits `delay`, so concurrent callers overlap. Returns the base URL and the
    /// number of GETs and POSTs.
    async fn workload_endpoints(
        delay: Duration,
        exchange_status: u16,
    ) -> (String, Arc<(AtomicUsize, AtomicUsize)>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let shared = counts.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counts = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let counts = counts.clone();
                        async move {
                            tokio::time::sleep(delay).await;
                            let (status, body) = if request.method() == hyper::Method::GET {
                                let n = counts.0.fetch_add(1, Ordering::SeqCst) + 1;
                                (200, serde_json::json!({"value": format!("id-{n}")}))
                            } else {
                                let n = counts.1.fetch_add(1, Ordering::SeqCst) + 1;
                                (
                                    exchange_status,
                                    serde_json::json!({
                                        "access_token": format!("wif-{n}"),
                                        "token_type": "Bearer",
                                        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                                        "expires_in": 3600,
                                        "expires_at": crate::clock::unix_now() + 3600,
                                    }),
                                )
                            };
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header(CONTENT_TYPE, "application/json")
                                    .body(Full::new(Bytes::from(body.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (format!("http://{address}"), counts)
    }

    fn workload_auth(base: &str) -> UpstreamAuth {
        let mut settings =
            UpstreamAuthSettings::new(AuthMode::WorkloadIdentity, reqwest::Client::new());
        settings.workload = Some(WorkloadIdentitySettings {
            request_url: format!("{base}/idtoken").parse().unwrap(),
            request_token: HeaderValue::from_static("Bearer request-token"),
            audience: "aud".into(),
            identity_provider_id: "wip".into(),
            service_account_id: "svc".into(),
            token_url: format!("{base}/oauth/token").parse().unwrap(),
        });
        UpstreamAuth::new(settings).unwrap()
    }

    #[tokio::test]
    async fn concurrent_first_uses_and_uses_after_a_401_share_one_workload_exchange() {
        let (base, counts) = workload_endpoints(Duration::from_millis(100), 200).await;
        let auth = workload_auth(&base);
        let concurrent_uses = || async {
            let mut tasks = Vec::new();
            for _ in 0..12 {
                let auth = auth.clone();
                tasks.push(tokio::spawn(async move {
                    headers_of(&auth).await[AUTHORIZATION].clone()
                }));
            }
            let mut seen = Vec::new();
            for task in tasks {
                seen.push(task.await.unwrap());
            }
            seen
        };
        assert!(concurrent_uses().await.iter().all(|b| b == "Bearer wif-1"));
        assert_eq!(counts.0.load(Ordering::SeqCst), 1);
        assert_eq!(counts.1.load(Ordering::SeqCst), 1);
        // A 401 is not retried: the token is forgotten, once, and nothing is exchanged yet.
        for _ in 0..3 {
            let retry = auth
                .refresh_after_unauthorized(&HeaderValue::from_static("Bearer wif-1"))
                .await
                .unwrap();
            assert!(!retry);
        }
        assert_eq!(counts.1.load(Ordering::SeqCst), 1);
        assert!(concurrent_uses().await.iter().all(|b| b == "Bearer wif-2"));
        assert_eq!(
            counts.1.load(Ordering::SeqCst),
            2,
            "one exchange for all the requests after the 401"
        );
        // A 401 for a token already replaced changes nothing.
        auth.refresh_after_unauthorized(&HeaderValue::from_static("Bearer wif-1"))
            .await
            .unwrap();
        assert_eq!(headers_of(&auth).await[AUTHORIZATION], "Bearer wif-2");
        assert_eq!(counts.1.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_workload_exchange_backs_off_instead_of_being_repeated_by_every_request() {
        let (base, counts) = workload_endpoints(Duration::ZERO, 403).await;
        let mut auth = workload_auth(&base);
        // The schedule (1 s doubling to 30 s) stretched so that no pause of this test's
        // machine can outlast it.
        let Kind::Workload(workload) = &mut Arc::get_mut(&mut auth.inner).unwrap().kind else {
            unreachable!()
        };
        workload.backoff = (Duration::from_secs(3600), Duration::from_secs(7200));
        let error = auth.prepare().await.unwrap_err();
        assert!(error.to_string().contains("403"), "{error}");
        assert_eq!(counts.1.load(Ordering::SeqCst), 1);
        // The first use tries again (the start-up attempt does not count) and fails; the next
        // ones, within the back-off, are refused without an exchange.
        for attempt in 0..3 {
            let mut headers = HeaderMap::new();
            let error = auth.authorize(&mut headers).await.unwrap_err();
            assert!(matches!(error, AuthError::WorkloadIdentity(_)), "{error:?}");
            assert!(error.to_string().contains("403"), "{error}");
            assert_eq!(error.to_response_parts().0, 502);
            if attempt > 0 {
                assert!(error.to_string().contains("retry in 3600 s"), "{error}");
            }
        }
        assert_eq!(counts.1.load(Ordering::SeqCst), 2);
    }
}
