//! Workload identity (`--github-oidc`): how one short-lived OpenAI access token is obtained
//! without any long-lived API key, exactly as the reference proxy (`codex
//! responses-api-proxy --github-oidc`) does it on the wire; what it does was observed by running
//! it against mocks of our own (`tests/workload_identity.rs` compares the two).
//!
//! 1. A GitHub Actions ID token is asked of the runner's token-request URL
//!    (`ACTIONS_ID_TOKEN_REQUEST_URL`, given as `--github-oidc-request-url`): a GET whose query is
//!    the URL's own pairs (re-encoded, any `audience` pair dropped) plus
//!    `audience=<--oidc-audience>`, with `Authorization: Bearer <request token>` and no other
//!    header of ours (reqwest adds `accept: */*`). The answer (at most 64 KiB) is
//!    `{"value": "<ID token>"}`; the token is used as given, and must be 1 to 16 KiB long. The
//!    request token came from standard input and lives in locked pages
//!    (`crate::contract::ApiKeyHeader`).
//! 2. That ID token is exchanged at OpenAI's token endpoint (`https://auth.openai.com/oauth/token`)
//!    by a JSON POST (`content-type: application/json`, no credentials) of `grant_type`
//!    (`urn:ietf:params:oauth:grant-type:token-exchange`), `subject_token_type`
//!    (`urn:ietf:params:oauth:token-type:jwt`), `subject_token`, `identity_provider_id` and
//!    `service_account_id`, in that order. The answer (at most 64 KiB) must carry all of
//!    `access_token` (characters of RFC 6750's b64token: letters, digits, `-._~+/=`),
//!    `token_type` (`Bearer`, any case), `issued_token_type`
//!    (`urn:ietf:params:oauth:token-type:access_token`), `expires_in` (1 to 3600 seconds) and
//!    `expires_at` (Unix seconds, in the future); anything else is refused, as the reference
//!    refuses it.
//!
//! The result is a [`WorkloadCredential`]: `Bearer <access token>` as a sensitive header value
//! backed by locked, never-dumped memory that is wiped when the credential is dropped, with the
//! instant it is due for renewal: a tenth of its lifetime (the shorter of `expires_in` and
//! `expires_at`) before it ends, at most a minute before. When and how often this runs (at start, single flight, on use
//! after renewal is due or after an upstream 401, backing off after failures) is
//! `upstream_auth`'s business. No message built here contains a token: errors name the
//! endpoint (without its query) and the status or safe error code.
//!
//! Uses: `crate::contract` (locked memory), `crate::clock` and bytes, hyper, reqwest, secrecy,
//! serde, serde_json, tracing.

use crate::contract::LockedBytes;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use std::fmt;
use std::time::{Duration, Instant};

/// The RFC 8693 grant the exchange uses.
pub(crate) const TOKEN_EXCHANGE_GRANT_TYPE: &str =
    "urn:ietf:params:oauth:grant-type:token-exchange";
/// The type of the GitHub ID token presented.
pub(crate) const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The type of token the exchange issues.
pub(crate) const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Bound on each of the two calls, whatever the shared client's timeouts are.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of an answer that are read (the reference's limit).
const ANSWER_LIMIT: usize = 64 * 1024;
/// Longest GitHub ID token that is passed on (the reference's limit).
const SUBJECT_TOKEN_LIMIT: usize = 16 * 1024;
/// Longest lifetime (`expires_in`) an issued token may claim (the reference's limit).
const MAX_LIFETIME_SECS: u64 = 3600;
/// A token is renewed a tenth of its lifetime before it ends, but at most this long before (the
/// reference's schedule: a 60 s token at 54 s, a one-hour token at 59 min).
const MAX_RENEWAL_LEAD: Duration = Duration::from_secs(60);

/// The settings of `--github-oidc`, checked by the worker's configuration.
pub(crate) struct WorkloadIdentitySettings {
    /// `--github-oidc-request-url` (HTTPS, or HTTP on loopback).
    pub request_url: reqwest::Url,
    /// `Bearer <request token>`, sensitive, pointing at the locked page.
    pub request_token: HeaderValue,
    pub audience: String,
    pub identity_provider_id: String,
    pub service_account_id: String,
    /// `--oidc-token-url` (HTTPS, or HTTP on loopback).
    pub token_url: reqwest::Url,
}

impl fmt::Debug for WorkloadIdentitySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentitySettings")
            .field("request_url", &endpoint_for_messages(&self.request_url))
            .field("request_token", &"[REDACTED]")
            .field("audience", &self.audience)
            .field("identity_provider_id", &self.identity_provider_id)
            .field("service_account_id", &self.service_account_id)
            .field("token_url", &endpoint_for_messages(&self.token_url))
            .finish()
    }
}

/// Checks a URL the proxy sends a secret to: HTTPS, or plain HTTP to a loopback address (a
/// test's mock); no user info, no fragment. `what` names the flag in the error.
pub(crate) fn secret_endpoint(text: &str, what: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text.trim()).map_err(|_| format!("{what} is not a valid URL"))?;
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(format!("{what} must not carry user info or a fragment"));
    }
    match url.scheme() {
        "https" if url.has_host() => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        _ => Err(format!(
            "{what} must be an https:// URL (plain http:// only to a loopback address)"
        )),
    }
}

/// Whether the URL's host is a loopback address or `localhost`.
pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// One short-lived OpenAI access token.
pub(crate) struct WorkloadCredential {
    /// `Bearer <access token>`, sensitive, backed by locked memory.
    pub bearer: HeaderValue,
    /// From then on the token is renewed before use ([`renewal_delay`]; the reference never
    /// uses a token past that point either).
    pub renew_at: Instant,
}

impl fmt::Debug for WorkloadCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCredential")
            .field("bearer", &"[REDACTED]")
            .field("renew_at", &self.renew_at)
            .finish()
    }
}

/// Fetches a fresh GitHub ID token and exchanges it. The error says which step failed and why,
/// without a token.
pub(crate) async fn obtain(
    settings: &WorkloadIdentitySettings,
    http: &reqwest::Client,
) -> Result<WorkloadCredential, String> {
    let id_token = github_id_token(settings, http).await?;
    exchange(settings, http, &id_token).await
}

/// Step 1: the GitHub Actions ID token for the audience.
async fn github_id_token(
    settings: &WorkloadIdentitySettings,
    http: &reqwest::Client,
) -> Result<SecretString, String> {
    let url = with_audience(&settings.request_url, &settings.audience);
    let where_ = endpoint_for_messages(&settings.request_url);
    tracing::debug!(
        "asking {where_} for a GitHub OIDC ID token (audience {})",
        settings.audience
    );
    let response = http
        .get(url)
        .header(AUTHORIZATION, settings.request_token.clone())
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            format!(
                "the GitHub OIDC token request to {where_} failed: {}",
                cause(&e)
            )
        })?;
    let status = response.status();
    let answer = read_answer(response)
        .await
        .map_err(|m| format!("the GitHub OIDC token endpoint {where_} answered {status} {m}"))?;
    if !status.is_success() {
        let hint = if matches!(status.as_u16(), 401 | 403) {
            " (is the request token the job's ACTIONS_ID_TOKEN_REQUEST_TOKEN, and does the job have `permissions: id-token: write`?)"
        } else {
            ""
        };
        return Err(format!(
            "the GitHub OIDC token endpoint {where_} answered {status}{hint}"
        ));
    }
    #[derive(serde::Deserialize)]
    struct GithubAnswer {
        #[serde(deserialize_with = "secret_string")]
        value: SecretString,
    }
    let parsed: GithubAnswer = serde_json::from_slice(answer.expose_secret()).map_err(|_| {
        format!("the GitHub OIDC token endpoint {where_} answered without a token (`value`)")
    })?;
    let length = parsed.value.expose_secret().len();
    if length == 0 || length > SUBJECT_TOKEN_LIMIT {
        return Err(format!(
            "the GitHub OIDC token endpoint {where_} answered with an empty token or one longer than {SUBJECT_TOKEN_LIMIT} bytes"
        ));
    }
    Ok(parsed.value)
}

/// Step 2: the exchange at OpenAI's token endpoint.
async fn exchange(
    settings: &WorkloadIdentitySettings,
    http: &reqwest::Client,
    id_token: &SecretString,
) -> Result<WorkloadCredential, String> {
    #[derive(serde::Serialize)]
    struct ExchangeRequest<'a> {
        grant_type: &'a str,
        subject_token_type: &'a str,
        subject_token: &'a str,
        identity_provider_id: &'a str,
        service_account_id: &'a str,
    }
    let body = SecretSlice::from(
        serde_json::to_vec(&ExchangeRequest {
            grant_type: TOKEN_EXCHANGE_GRANT_TYPE,
            subject_token_type: JWT_TOKEN_TYPE,
            subject_token: id_token.expose_secret(),
            identity_provider_id: &settings.identity_provider_id,
            service_account_id: &settings.service_account_id,
        })
        .expect("JSON serialization into memory"),
    );
    let where_ = endpoint_for_messages(&settings.token_url);
    tracing::debug!("exchanging the GitHub ID token at {where_}");
    let response = http
        .post(settings.token_url.clone())
        .header(CONTENT_TYPE, "application/json")
        .timeout(REQUEST_TIMEOUT)
        .body(body.expose_secret().to_vec())
        .send()
        .await
        .map_err(|e| {
            format!(
                "the workload identity token exchange at {where_} failed: {}",
                cause(&e)
            )
        })?;
    let status = response.status();
    let answer = read_answer(response).await.map_err(|m| {
        format!("the workload identity token exchange at {where_} answered {status} {m}")
    })?;
    if !status.is_success() {
        let request_token = settings.request_token.as_bytes();
        let request_token = std::str::from_utf8(&request_token["Bearer ".len()..]).unwrap_or("");
        let code = super::upstream_auth::error_code(answer.expose_secret())
            .filter(|c| {
                [id_token.expose_secret(), request_token]
                    .iter()
                    .all(|secret| !overlaps(c, secret))
            })
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        return Err(format!(
            "the workload identity token exchange at {where_} answered {status}{code}; check --identity-provider-id, --service-account-id, --oidc-audience and the provider's service account mapping"
        ));
    }
    #[derive(serde::Deserialize)]
    struct ExchangeAnswer {
        #[serde(deserialize_with = "secret_string")]
        access_token: SecretString,
        token_type: String,
        issued_token_type: String,
        expires_in: u64,
        expires_at: u64,
    }
    let parsed: ExchangeAnswer = serde_json::from_slice(answer.expose_secret()).map_err(|_| {
        format!(
            "the workload identity token exchange at {where_} answered without all of access_token, token_type, issued_token_type, expires_in and expires_at (whole seconds)"
        )
    })?;
    let lifetime = lifetime(
        &parsed.token_type,
        &parsed.issued_token_type,
        parsed.expires_in,
        parsed.expires_at,
        crate::clock::unix_now(),
    )
    .map_err(|m| format!("the workload identity token exchange at {where_} issued {m}"))?;
    let bearer = locked_bearer(parsed.access_token.expose_secret())
        .map_err(|m| format!("the workload identity token exchange at {where_} issued {m}"))?;
    tracing::debug!(
        "the workload identity token exchange at {where_} issued a token for {} s",
        lifetime.as_secs()
    );
    Ok(WorkloadCredential {
        bearer,
        renew_at: Instant::now() + renewal_delay(lifetime),
    })
}

/// The lifetime of an issued token: the shorter of `expires_in` and what is left until
/// `expires_at` (Unix seconds, compared with `now`). The error says what is wrong with the
/// answer, as the reference tells it apart.
fn lifetime(
    token_type: &str,
    issued_token_type: &str,
    expires_in: u64,
    expires_at: u64,
    now: u64,
) -> Result<Duration, String> {
    if !token_type.eq_ignore_ascii_case("bearer") || issued_token_type != ACCESS_TOKEN_TYPE {
        return Err("an unsupported token type".into());
    }
    if expires_in == 0 || expires_at <= now {
        return Err("a token that has already expired".into());
    }
    if expires_in > MAX_LIFETIME_SECS {
        return Err(format!(
            "a token with an invalid lifetime (expires_in above {MAX_LIFETIME_SECS} s)"
        ));
    }
    Ok(Duration::from_secs(expires_in.min(expires_at - now)))
}

/// How long after it is issued a token of `lifetime` is due for renewal.
fn renewal_delay(lifetime: Duration) -> Duration {
    lifetime - (lifetime / 10).min(MAX_RENEWAL_LEAD)
}

/// The GitHub request URL with `audience=<audience>` as its last query pair: the URL's own pairs
/// are kept (re-encoded as `application/x-www-form-urlencoded`) except any `audience` pair.
fn with_audience(request_url: &reqwest::Url, audience: &str) -> reqwest::Url {
    let kept: Vec<(String, String)> = request_url
        .query_pairs()
        .filter(|(name, _)| name != "audience")
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let mut url = request_url.clone();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("audience", audience);
    url
}

/// Deserializes a string straight into a [`SecretString`] (wiped when dropped).
fn secret_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(SecretString::from)
}

/// Whether `shown` would reveal part of `secret` (contains it, or is a long piece of it).
pub(crate) fn overlaps(shown: &str, secret: &str) -> bool {
    !secret.is_empty() && (shown.contains(secret) || (shown.len() >= 8 && secret.contains(shown)))
}

/// `Bearer <token>` in locked memory, as a sensitive header value.
fn locked_bearer(token: &str) -> Result<HeaderValue, String> {
    let b64token = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    if token.is_empty() || !token.bytes().all(b64token) {
        return Err("an empty or malformed access token".into());
    }
    let text = SecretString::from(format!("Bearer {token}"));
    let locked = LockedBytes::copy_of(text.expose_secret().as_bytes()).map_err(|e| {
        format!("a token that cannot be locked in memory ({e}); raise LimitMEMLOCK=")
    })?;
    let mut value = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(locked))
        .map_err(|_| "an access token that is not a valid header value".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

/// Reads an answer up to [`ANSWER_LIMIT`]; the bytes are wiped when dropped.
async fn read_answer(mut response: reqwest::Response) -> Result<SecretSlice<u8>, String> {
    // Room for the whole answer at once, so that it never moves (which would leave a copy of
    // a token behind), and wiped when dropped.
    let mut answer = zeroize::Zeroizing::new(Vec::with_capacity(ANSWER_LIMIT));
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if answer.len() + chunk.len() > ANSWER_LIMIT {
                    return Err(format!("with more than {ANSWER_LIMIT} bytes"));
                }
                answer.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(SecretSlice::from(answer.to_vec())),
            Err(e) => {
                return Err(format!("but its body could not be read: {}", cause(&e)));
            }
        }
    }
}

/// The URL as shown in messages: no user info, query or fragment.
pub(crate) fn endpoint_for_messages(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// The transport error's root cause (never the URL), saying when it was a timeout.
pub(crate) fn cause(error: &reqwest::Error) -> String {
    let cause = crate::worker::upstream::innermost_cause(error);
    if error.is_timeout() {
        format!("timed out ({cause})")
    } else {
        cause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_endpoints_are_https_or_loopback_http() {
        assert!(secret_endpoint("https://auth.openai.com/oauth/token", "x").is_ok());
        assert!(secret_endpoint("http://127.0.0.1:9/token", "x").is_ok());
        assert!(secret_endpoint("http://[::1]:9/token", "x").is_ok());
        assert!(secret_endpoint("http://localhost:9/token", "x").is_ok());
        for bad in [
            "http://example.com/token",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "ftp://127.0.0.1/",
            "not a url",
        ] {
            let error = secret_endpoint(bad, "--flag").unwrap_err();
            assert!(error.contains("--flag"), "{error}");
            assert!(!error.contains("pw"), "{error}");
        }
    }

    #[test]
    fn the_bearer_lives_in_locked_memory_and_is_sensitive() {
        let value = locked_bearer("tok-123").unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value.as_bytes(), b"Bearer tok-123");
        assert!(locked_bearer("").is_err());
        // As the reference: b64token characters only, nothing trimmed.
        assert!(locked_bearer("aZ09-._~+/=").is_ok());
        for bad in ["a b", " tok", "tok\n", "a!b", "a,b", "a;b", "a:b", "é"] {
            assert!(locked_bearer(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_audience_replaces_any_in_the_request_url_and_the_query_is_re_encoded() {
        let cases = [
            (
                "https://github.test/_apis/actions/idtoken?api-version=2.0&audience=old",
                "api://a b+c&d=é/~x",
                "/_apis/actions/idtoken?api-version=2.0&audience=api%3A%2F%2Fa+b%2Bc%26d%3D%C3%A9%2F%7Ex",
            ),
            ("https://github.test/idtoken", "aud", "/idtoken?audience=aud"),
            ("https://github.test/idtoken?", "aud", "/idtoken?audience=aud"),
            (
                "https://github.test/idtoken?x=a%20b&y=c+d",
                "aud",
                "/idtoken?x=a+b&y=c+d&audience=aud",
            ),
            (
                "https://github.test/idtoken?Audience=x&audience=y&audience=z&a=1",
                "aud",
                "/idtoken?Audience=x&a=1&audience=aud",
            ),
            (
                "https://github.test/idtoken?a&b=&c=%zz",
                "aud",
                "/idtoken?a=&b=&c=%25zz&audience=aud",
            ),
        ];
        for (url, audience, expected) in cases {
            let url = with_audience(&reqwest::Url::parse(url).unwrap(), audience);
            let shown = format!("{}?{}", url.path(), url.query().unwrap_or_default());
            assert_eq!(shown, expected);
        }
    }

    #[test]
    fn tokens_are_renewed_a_tenth_of_their_lifetime_ahead_at_most_a_minute() {
        let s = Duration::from_secs;
        assert_eq!(renewal_delay(s(1)), Duration::from_millis(900));
        assert_eq!(renewal_delay(s(10)), s(9));
        assert_eq!(renewal_delay(s(60)), s(54));
        assert_eq!(renewal_delay(s(600)), s(540));
        assert_eq!(renewal_delay(s(601)), s(541));
        assert_eq!(renewal_delay(s(3600)), s(3540));
    }

    #[test]
    fn the_lifetime_is_the_shorter_of_expires_in_and_expires_at() {
        let bearer = "Bearer";
        let issued = ACCESS_TOKEN_TYPE;
        let now = 1_000_000;
        assert_eq!(
            lifetime(bearer, issued, 3600, now + 60, now),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            lifetime("bearer", issued, 60, now + 3600, now),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            lifetime("BEARER", issued, 1, u64::MAX, now),
            Ok(Duration::from_secs(1))
        );
        for (token_type, issued_type) in
            [("DPoP", issued), (bearer, JWT_TOKEN_TYPE), ("N_A", issued)]
        {
            let error = lifetime(token_type, issued_type, 60, now + 60, now).unwrap_err();
            assert!(error.contains("unsupported token type"), "{error}");
        }
        for (expires_in, expires_at) in [(0, now + 60), (60, now), (60, now - 5), (60, 0)] {
            let error = lifetime(bearer, issued, expires_in, expires_at, now).unwrap_err();
            assert!(error.contains("expired"), "{error}");
        }
        for expires_in in [3601, 86400, u64::MAX] {
            let error = lifetime(bearer, issued, expires_in, now + 60, now).unwrap_err();
            assert!(error.contains("invalid lifetime"), "{error}");
        }
    }
}
