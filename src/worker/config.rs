//! The worker's settings, parsed by the worker itself after it dropped its privileges: from
//! the plain configuration (`crate::cli::Cli`) and the [`Handover`] root filled at fork. No
//! worker code runs as root; a setting that does not parse stops the worker (exit status 1,
//! one log line) before it serves, and the supervisor then exits non-zero.
//!
//! Uses: `crate::cli`, `crate::contract`, and the worker's own parsers (allow-lists, header
//! forwarding, auth mode, wrapper settings).

use crate::cli::Cli;
use crate::contract::{Handover, KeySource};
use crate::usage::Limits;
use crate::worker::identity::access_control::AllowList;
use crate::worker::routes::wrapper_routes::WrapperConfig;
use crate::worker::server::fair_share::FairShareLimits;
use crate::worker::upstream::client_headers::ClientHeaderForwarding;
use crate::worker::upstream::upstream_auth::{AuthError, AuthMode};
use openai_wire::wrapper::settings::WrapperSettings;
use std::time::Duration;
use tracing::info;

/// Everything the worker needs, parsed from the configuration and the handover.
pub(crate) struct WorkerConfig {
    pub key: KeySource,
    pub upstream_url: reqwest::Url,
    pub bridge_to_chat: bool,
    /// WebSocket mode on `GET /v1/responses`: `None` when refused (`--no-websocket`).
    pub websocket: Option<crate::worker::websocket::WebSocketSettings>,
    /// Strict mode's relay to the upstream's WebSocket (`None`: sockets are served locally).
    pub websocket_relay: Option<crate::worker::websocket::relay::RelayMode>,
    pub http_shutdown: bool,
    pub connect_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_request_body: usize,
    pub shutdown_grace: Duration,
    pub worker_threads: Option<usize>,
    pub wrapper: Option<WrapperConfig>,
    pub auth: AuthConfig,
    /// Who may call (None: every local user).
    pub allow: Option<AllowList>,
    pub limits: Limits,
    /// Per-user caps on connections and buffered request bodies.
    pub fair_share: FairShareLimits,
    /// Trust, client certificate and egress proxy of every upstream connection.
    pub connection: crate::worker::upstream::connection::UpstreamConnection,
    /// Billing headers and the encoding asked of the upstream.
    pub upstream_policy: crate::worker::upstream::headers::UpstreamRequestPolicy,
    /// Bounds of bridge mode's stored responses.
    pub(crate) response_store: crate::worker::conversation::response_store::StoreLimits,
    /// `--dump-dir` and its caps (`None`: no dumps).
    pub(crate) dumps: Option<crate::worker::exchange_dump::DumpSettings>,
}

/// How the worker authenticates upstream.
pub(crate) struct AuthConfig {
    pub mode: AuthMode,
    /// The Codex auth.json (apikey_auth_json, chatgpt_token), read by root.
    pub auth_json: Option<secrecy::SecretSlice<u8>>,
    pub state_dir: Option<std::path::PathBuf>,
    pub token_url: String,
    pub client_id: Option<String>,
    pub refresh_after: Duration,
    /// `--github-oidc`: how short-lived tokens are obtained.
    pub workload: Option<crate::worker::upstream::workload_identity::WorkloadIdentitySettings>,
}

impl WorkerConfig {
    /// Parses the settings; takes the secrets out of `handover`.
    pub(crate) fn parse(cli: &Cli, handover: &mut Handover) -> Result<WorkerConfig, String> {
        let upstream_url = match reqwest::Url::parse(&cli.upstream_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            // The value is not repeated: a mistyped URL may carry credentials.
            _ => {
                return Err(
                    "--upstream-url (CODEX_PROXY_UPSTREAM_URL) is not an http(s) URL".into(),
                )
            }
        };
        let mut auth = auth_config(cli, handover.auth_json.take())?;
        if cli.github_oidc {
            auth.mode = AuthMode::WorkloadIdentity;
            auth.workload = Some(workload_config(
                cli,
                &upstream_url,
                handover.github_oidc_request.take(),
            )?);
        }
        let wrapper = if cli.wrapper_routes {
            Some(wrapper_config(cli, handover.client_api_key.take())?)
        } else {
            None
        };
        let allow = AllowList::from_config(&cli.allow_users, &cli.allow_groups)?;
        if let Some(allow) = &allow {
            info!("access limited to {}", allow.describe());
        }
        let connection = crate::worker::upstream::connection::UpstreamConnection::new(
            &mut handover.upstream_tls,
            cli.upstream_proxy.as_ref().map(|url| url.as_str()),
        )?;
        if let Some(proxy) = connection.proxy_for(&upstream_url) {
            info!("the upstream is reached through the proxy at {proxy}");
        }
        let websocket_relay = websocket_relay(cli, &auth)?;
        let dumps = dump_settings(cli, handover.dump_directory.take())?;
        let key = std::mem::replace(&mut handover.key, KeySource::NotConfigured);
        Ok(WorkerConfig {
            key,
            upstream_url,
            bridge_to_chat: cli.bridge_to_chat,
            websocket: (!cli.no_websocket).then(|| crate::worker::websocket::WebSocketSettings {
                per_user: cli.max_websockets_per_user.max(1),
            }),
            websocket_relay,
            http_shutdown: cli.http_shutdown,
            connect_timeout: cli.connect_timeout(),
            header_read_timeout: cli.header_read_timeout(),
            idle_timeout: cli.idle_timeout(),
            max_request_body: cli.max_request_body,
            shutdown_grace: cli.shutdown_grace(),
            worker_threads: cli.worker_threads.filter(|n| *n > 0),
            wrapper,
            allow,
            limits: Limits {
                requests_per_minute: cli.requests_per_minute,
                tokens_per_day: cli.tokens_per_day,
            },
            // The supervisor has raised the open-files limit the worker inherits.
            fair_share: FairShareLimits::with_defaults(
                crate::worker::server::fair_share::open_files_limit(),
                cli.max_connections_per_user,
                cli.max_unfinished_requests_per_user,
                cli.max_buffered_bodies,
                cli.max_buffered_bodies_per_user,
            ),
            upstream_policy: crate::worker::upstream::headers::UpstreamRequestPolicy {
                organization: cli
                    .openai_organization
                    .as_deref()
                    .and_then(|v| hyper::header::HeaderValue::from_str(v).ok()),
                project: cli
                    .openai_project
                    .as_deref()
                    .and_then(|v| hyper::header::HeaderValue::from_str(v).ok()),
                forward_client_billing: cli.forward_billing_headers,
            },
            response_store: crate::worker::conversation::response_store::StoreLimits {
                total_bytes: cli.response_store_max_bytes,
                bytes_per_owner: cli.response_store_max_bytes_per_user,
                count: cli.response_store_max_responses,
                max_age: Duration::from_secs(cli.response_store_max_age),
            },
            auth,
            connection,
            dumps,
        })
    }
}

/// `--websocket-upstream`: whether strict mode relays WebSockets to the upstream's own. Only
/// strict mode with a key (static or from auth.json) relays; `relay` where it cannot is an
/// error, `auto` then serves locally.
fn websocket_relay(
    cli: &Cli,
    auth: &AuthConfig,
) -> Result<Option<crate::worker::websocket::relay::RelayMode>, String> {
    use crate::worker::websocket::relay::RelayMode;
    let mode = match cli.websocket_upstream.as_str() {
        "relay" => RelayMode::Always,
        "auto" => RelayMode::Auto,
        _ => return Ok(None),
    };
    let obstacle = if cli.no_websocket {
        Some("WebSocket mode is off (--no-websocket)")
    } else if cli.bridge_to_chat {
        Some("bridge mode serves WebSockets itself")
    } else if auth.mode == AuthMode::ChatGptToken {
        Some("the relay needs an API key (UPSTREAM_AUTH_MODE apikey_env or apikey_auth_json)")
    } else {
        None
    };
    match (obstacle, mode) {
        (None, _) => {
            info!("WebSockets are relayed to the upstream's own (--websocket-upstream {})", cli.websocket_upstream);
            Ok(Some(mode))
        }
        (Some(why), RelayMode::Always) => Err(format!(
            "--websocket-upstream relay (CODEX_PROXY_WEBSOCKET_UPSTREAM) cannot apply: {why}; use auto or serve"
        )),
        (Some(_), RelayMode::Auto) => Ok(None),
    }
}

/// `--dump-dir` (the directory root opened), its caps and `--dump-user` (names or uids).
fn dump_settings(
    cli: &Cli,
    directory: Option<std::os::fd::OwnedFd>,
) -> Result<Option<crate::worker::exchange_dump::DumpSettings>, String> {
    let Some(directory) = directory else {
        if !cli.dump_users.is_empty() {
            return Err("--dump-user (CODEX_PROXY_DUMP_USERS) needs --dump-dir".into());
        }
        return Ok(None);
    };
    if cli.dump_max_files < 2 {
        return Err("--dump-max-files must be at least 2 (one exchange is two files)".into());
    }
    let mut users = std::collections::HashSet::new();
    for item in cli
        .dump_users
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let uid = match item.parse::<u32>() {
            Ok(uid) => uid,
            Err(_) => match nix::unistd::User::from_name(item) {
                Ok(Some(user)) => user.uid.as_raw(),
                Ok(None) => {
                    return Err(format!(
                        "--dump-user: there is no user named {item:?} on this system"
                    ))
                }
                Err(e) => return Err(format!("--dump-user: cannot look up user {item:?}: {e}")),
            },
        };
        users.insert(uid);
    }
    Ok(Some(crate::worker::exchange_dump::DumpSettings {
        directory,
        max_files: cli.dump_max_files,
        max_bytes: cli.dump_max_bytes,
        users: (!users.is_empty()).then_some(users),
    }))
}

/// Upstream authentication settings.
fn auth_config(
    cli: &Cli,
    auth_json: Option<secrecy::SecretSlice<u8>>,
) -> Result<AuthConfig, String> {
    if cli.github_oidc {
        if crate::cli::upstream_secret(&cli.upstream_auth_mode)
            != Some(crate::cli::UpstreamSecret::StaticKey)
        {
            return Err(
                "--github-oidc replaces the upstream auth mode: leave UPSTREAM_AUTH_MODE (--upstream-auth-mode) unset".into(),
            );
        }
        return Ok(AuthConfig {
            mode: AuthMode::WorkloadIdentity,
            auth_json: None,
            state_dir: cli.state_directory.clone(),
            token_url: cli.token_url.clone(),
            client_id: None,
            refresh_after: Duration::ZERO,
            workload: None,
        });
    }
    let mut mode: AuthMode = cli
        .upstream_auth_mode
        .parse()
        .map_err(|e: AuthError| e.to_string())?;
    if let AuthMode::ApiKeyFromAuthJson { field } = &mut mode {
        field.clone_from(&cli.auth_json_api_key_field);
    }
    if mode != AuthMode::ApiKey && auth_json.is_none() {
        return Err(format!(
            "UPSTREAM_AUTH_MODE={} needs a Codex auth.json: install it as the systemd credential codex-auth or pass --codex-auth-file",
            mode.as_str()
        ));
    }
    Ok(AuthConfig {
        mode,
        auth_json,
        state_dir: cli.state_directory.clone(),
        token_url: cli.token_url.clone(),
        client_id: cli.oauth_client_id.clone(),
        refresh_after: Duration::from_secs(cli.token_refresh_days.saturating_mul(24 * 60 * 60)),
        workload: None,
    })
}

/// `--github-oidc`: the settings of workload identity federation. Like the reference proxy,
/// the short-lived token only goes to OpenAI's Responses endpoint (or a loopback upstream, for
/// tests); the two token endpoints must be HTTPS (or loopback HTTP).
fn workload_config(
    cli: &Cli,
    upstream_url: &reqwest::Url,
    request_token: Option<crate::contract::ApiKeyHeader>,
) -> Result<crate::worker::upstream::workload_identity::WorkloadIdentitySettings, String> {
    use crate::worker::upstream::workload_identity::{is_loopback, secret_endpoint};
    let openai =
        upstream_url.scheme() == "https" && upstream_url.host_str() == Some("api.openai.com");
    if !openai && !is_loopback(upstream_url) {
        return Err(
            "--github-oidc sends OpenAI access tokens only to https://api.openai.com (or a loopback upstream): remove --upstream-url".into(),
        );
    }
    let Some(request_token) = request_token else {
        return Err("--github-oidc needs the GitHub OIDC request token on standard input".into());
    };
    let required = |value: &Option<String>, flag: &str| -> Result<String, String> {
        match value.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v.to_owned()),
            _ => Err(format!("--github-oidc needs {flag}")),
        }
    };
    let request_url = secret_endpoint(
        &required(&cli.github_oidc_request_url, "--github-oidc-request-url")?,
        "--github-oidc-request-url",
    )?;
    let token_url = secret_endpoint(&cli.oidc_token_url, "--oidc-token-url")?;
    let mut request_token_value = hyper::header::HeaderValue::from_maybe_shared(
        bytes::Bytes::from_static(request_token.bytes()),
    )
    .map_err(|_| "the GitHub OIDC request token is not a valid header value".to_owned())?;
    request_token_value.set_sensitive(true);
    info!(
        "upstream authentication: GitHub OIDC workload identity (provider {}, service account {})",
        required(&cli.identity_provider_id, "--identity-provider-id")?,
        required(&cli.service_account_id, "--service-account-id")?
    );
    Ok(
        crate::worker::upstream::workload_identity::WorkloadIdentitySettings {
            request_url,
            request_token: request_token_value,
            audience: required(&cli.oidc_audience, "--oidc-audience")?,
            identity_provider_id: required(&cli.identity_provider_id, "--identity-provider-id")?,
            service_account_id: required(&cli.service_account_id, "--service-account-id")?,
            token_url,
        },
    )
}

/// The wrapper routes' settings.
fn wrapper_config(
    cli: &Cli,
    client_api_key: Option<secrecy::SecretString>,
) -> Result<WrapperConfig, String> {
    let lookup = |name: &str| -> Option<String> {
        match name {
            "REASONING_EFFORT" => cli.reasoning_effort.clone(),
            "REASONING_SUMMARY" => cli.reasoning_summary.clone(),
            "REASONING_OUTPUT_MODE" => cli.reasoning_output_mode.clone(),
            "DEBUG_MODEL" => cli.debug_model.clone(),
            "EXPOSE_MODELS" => cli.expose_models.clone(),
            _ => None,
        }
    };
    let settings = WrapperSettings::from_lookup(lookup).map_err(|e| e.0)?;
    let forwarding = ClientHeaderForwarding::parse(
        &cli.forward_client_headers_mode,
        cli.forward_client_headers_list.as_deref(),
        cli.forward_client_headers_override.as_deref(),
    )?;
    let ollama_url = match cli
        .ollama_api_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        None => None,
        Some(url) => {
            let mut url = reqwest::Url::parse(url.trim())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| format!("OLLAMA_API_URL {url:?} is not an http(s) URL"))?;
            if !url.path().ends_with('/') {
                let path = format!("{}/", url.path());
                url.set_path(&path);
            }
            Some(url)
        }
    };
    Ok(WrapperConfig {
        settings,
        client_api_key,
        ollama_url,
        forwarding,
    })
}
