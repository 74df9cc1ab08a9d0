//! The command line and its environment-variable twins (so an EnvironmentFile configures the
//! service). Parsing happens in the supervisor before anything else; nothing here is secret:
//! the key never comes from a flag or an environment variable.
//!
//! Uses: nothing else of the crate and clap.

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// Where the worker's user is looked up when `--user` is not given.
pub(crate) const PACKAGE_USER: &str = "codex-responses-api-proxy";

/// Where the package keeps its state (systemd's `StateDirectory=` sets `$STATE_DIRECTORY`).
pub const DEFAULT_STATE_DIRECTORY: &str = "/var/lib/codex-responses-api-proxy";
/// Where the packaged unit puts the supervisor's control socket (`--control-socket`).
pub(crate) const DEFAULT_CONTROL_SOCKET: &str = "/run/codex-responses-api-proxy/control.sock";

pub(crate) const DEFAULT_UPSTREAM_URL: &str = "https://api.openai.com/v1/responses";

/// OpenAI's workload identity federation token exchange endpoint.
pub(crate) const DEFAULT_OIDC_TOKEN_URL: &str = "https://auth.openai.com/oauth/token";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "codex-responses-api-proxy",
    version,
    about = "Lets local users call a model provider through 127.0.0.1 without seeing its API key.",
    long_about = "Lets local users call a model provider through 127.0.0.1 without seeing its API key.\n\n\
The key is read from the systemd credential $CREDENTIALS_DIRECTORY/openai-api-key when it exists, \
else from the first line of standard input, e.g.\n\n  \
printenv OPENAI_API_KEY | env -u OPENAI_API_KEY codex-responses-api-proxy --port 8719\n\n\
A root supervisor holds the key and the listening socket; it forks one worker that drops to an \
unprivileged user with no capabilities and serves HTTP. By default only POST /v1/responses is \
forwarded (with Authorization: Bearer <key>); every other request is refused with 403."
)]
pub struct Cli {
    /// Port to listen on at 127.0.0.1 (ignored under socket activation; default: an ephemeral port).
    #[arg(long, env = "CODEX_PROXY_PORT")]
    pub port: Option<u16>,

    /// Write `{"port":<port>,"pid":<supervisor pid>}` to this file once the proxy is serving.
    #[arg(long, value_name = "FILE")]
    pub server_info: Option<PathBuf>,

    /// Create a root-only control socket here (mode 0600, in a directory owned by root and
    /// writable by no one else) over which root hands the supervisor a new API key without
    /// dropping streams (`codex-responses-api-proxy rotate-key`).
    #[arg(long, env = "CODEX_PROXY_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Serve `GET /shutdown`, which stops the whole service with exit status 0.
    #[arg(long, env = "CODEX_PROXY_HTTP_SHUTDOWN")]
    pub http_shutdown: bool,

    /// Upstream endpoint requests are forwarded to (a query string, as Azure needs, is kept).
    #[arg(long, env = "CODEX_PROXY_UPSTREAM_URL", default_value = DEFAULT_UPSTREAM_URL, value_name = "URL")]
    pub upstream_url: String,

    /// Serve POST /v1/responses from a Chat Completions upstream (--upstream-url is then the
    /// upstream's .../chat/completions URL).
    #[arg(long, env = "CODEX_PROXY_BRIDGE_TO_CHAT")]
    pub bridge_to_chat: bool,

    /// Bridge mode: most bytes of stored responses (for `previous_response_id`,
    /// `item_reference` and `GET /v1/responses/{id}`), all users together; the oldest go first.
    #[arg(
        long,
        env = "CODEX_PROXY_RESPONSE_STORE_MAX_BYTES",
        default_value_t = 64 << 20,
        value_name = "BYTES"
    )]
    pub response_store_max_bytes: usize,

    /// Bridge mode: most bytes of stored responses of one local user; their oldest go first.
    #[arg(
        long,
        env = "CODEX_PROXY_RESPONSE_STORE_MAX_BYTES_PER_USER",
        default_value_t = 16 << 20,
        value_name = "BYTES"
    )]
    pub response_store_max_bytes_per_user: usize,

    /// Bridge mode: most stored responses (0: store nothing).
    #[arg(
        long,
        env = "CODEX_PROXY_RESPONSE_STORE_MAX_RESPONSES",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub response_store_max_responses: usize,

    /// Bridge mode: seconds a stored response is kept.
    #[arg(
        long,
        env = "CODEX_PROXY_RESPONSE_STORE_MAX_AGE",
        default_value_t = 3600,
        value_name = "SECS"
    )]
    pub response_store_max_age: u64,

    /// Refuse WebSocket upgrades of GET /v1/responses with 426 (clients such as Codex then
    /// use HTTP POST at once). By default the proxy serves the WebSocket mode itself over the
    /// HTTP upstream.
    #[arg(long, env = "CODEX_PROXY_NO_WEBSOCKET")]
    pub no_websocket: bool,

    /// Strict mode: how a WebSocket on GET /v1/responses reaches the upstream. `auto` (the
    /// default) relays it to a WebSocket of the upstream (same host and path, ws/wss scheme)
    /// and serves it locally over HTTP when the upstream refuses the upgrade (remembered for an
    /// hour); `relay` always relays (502 when the upstream refuses); `serve` always serves it
    /// locally over the HTTP upstream. Bridge mode always serves locally.
    #[arg(
        long,
        env = "CODEX_PROXY_WEBSOCKET_UPSTREAM",
        default_value = "auto",
        value_parser = ["auto", "relay", "serve"],
        value_name = "MODE"
    )]
    pub websocket_upstream: String,

    /// User the worker runs as when started as root (default: the `codex-responses-api-proxy`
    /// system user if it exists, else `nobody`).
    #[arg(long, env = "CODEX_PROXY_USER", value_name = "NAME")]
    pub user: Option<String>,

    /// Seconds allowed for connecting to the upstream.
    #[arg(
        long,
        env = "CODEX_PROXY_CONNECT_TIMEOUT",
        default_value_t = 10,
        value_name = "SECS"
    )]
    pub connect_timeout: u64,

    /// Seconds a client has to send its request headers.
    #[arg(
        long,
        env = "CODEX_PROXY_HEADER_READ_TIMEOUT",
        default_value_t = 30,
        value_name = "SECS"
    )]
    pub header_read_timeout: u64,

    /// Seconds the upstream may stay silent (before its headers or within a stream) before the
    /// request is given up.
    #[arg(
        long,
        env = "CODEX_PROXY_IDLE_TIMEOUT",
        default_value_t = 300,
        value_name = "SECS"
    )]
    pub idle_timeout: u64,

    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, env = "CODEX_PROXY_MAX_REQUEST_BODY", default_value_t = 32 * 1024 * 1024, value_name = "BYTES")]
    pub max_request_body: usize,

    /// Seconds in-flight requests may take to finish after SIGTERM or /shutdown, and a
    /// replaced worker's requests after a key rotation.
    #[arg(
        long,
        env = "CODEX_PROXY_SHUTDOWN_GRACE",
        default_value_t = 10,
        value_name = "SECS"
    )]
    pub shutdown_grace: u64,

    /// Threads serving requests, each with its own event loop and upstream connections;
    /// connections are dealt to them in turn (default: one per CPU, at most 8).
    #[arg(long, env = "CODEX_PROXY_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,

    /// Log level: error, warn, info, debug or trace. The key is never logged at any level.
    #[arg(
        long,
        env = "CODEX_PROXY_LOG",
        default_value = "info",
        value_name = "LEVEL"
    )]
    pub log_level: String,

    /// Also serve the wrapper routes: Chat Completions, Completions, Models and Ollama clients
    /// on this upstream (`/v1/chat/completions`, `/v1/completions`, `/v1/models`, `/api/*`).
    #[arg(
        long,
        env = "CODEX_PROXY_WRAPPER_ROUTES",
        help_heading = "Wrapper routes"
    )]
    pub wrapper_routes: bool,

    /// File holding the key clients must send as `Authorization: Bearer <key>` on the wrapper
    /// routes (the systemd credential `client-api-key` wins). Without one, no client key is asked.
    #[arg(long, value_name = "FILE", help_heading = "Wrapper routes")]
    pub client_api_key_file: Option<PathBuf>,

    /// Default reasoning effort: minimal, low, medium or high.
    #[arg(long, env = "REASONING_EFFORT", help_heading = "Wrapper routes")]
    pub reasoning_effort: Option<String>,

    /// Reasoning summary asked of the upstream: auto, concise, detailed or none.
    #[arg(long, env = "REASONING_SUMMARY", help_heading = "Wrapper routes")]
    pub reasoning_summary: Option<String>,

    /// How reasoning reaches chat clients: openai, r1, o3, tagged, hidden or all.
    #[arg(long, env = "REASONING_OUTPUT_MODE", help_heading = "Wrapper routes")]
    pub reasoning_output_mode: Option<String>,

    /// Model ids listed on /v1/models: a JSON array or a comma/space separated list.
    #[arg(long, env = "EXPOSE_MODELS", help_heading = "Wrapper routes")]
    pub expose_models: Option<String>,

    /// Send every wrapper request to this model, whatever the client asks (an effort suffix
    /// in it, `-high` or `_high`, sets the effort); responses then report this model, or the
    /// name the upstream gives it.
    #[arg(long, env = "DEBUG_MODEL", help_heading = "Wrapper routes")]
    pub debug_model: Option<String>,

    /// Log at debug level (same as --log-level debug).
    #[arg(long, env = "VERBOSE", help_heading = "Wrapper routes")]
    pub verbose: bool,

    /// Ollama server for the /api/* pass-through, e.g. http://127.0.0.1:11434.
    #[arg(
        long,
        env = "OLLAMA_API_URL",
        value_name = "URL",
        help_heading = "Wrapper routes"
    )]
    pub ollama_api_url: Option<String>,

    /// Which client headers reach the upstream on wrapper routes:
    /// off, safe, list, override or override-codex.
    #[arg(
        long,
        env = "FORWARD_CLIENT_HEADERS_MODE",
        default_value = "off",
        help_heading = "Wrapper routes"
    )]
    pub forward_client_headers_mode: String,

    /// Header names forwarded in `list` mode (comma separated).
    #[arg(
        long,
        env = "FORWARD_CLIENT_HEADERS_LIST",
        help_heading = "Wrapper routes"
    )]
    pub forward_client_headers_list: Option<String>,

    /// JSON object of headers set on upstream requests in `override` mode.
    #[arg(
        long,
        env = "FORWARD_CLIENT_HEADERS_OVERRIDE",
        help_heading = "Wrapper routes"
    )]
    pub forward_client_headers_override: Option<String>,

    /// How the upstream is authenticated: apikey_env (the key from the credential or stdin),
    /// apikey_auth_json (a key field of a Codex auth.json) or chatgpt_token (ChatGPT tokens
    /// from a Codex auth.json, refreshed and saved under --state-directory).
    #[arg(
        long,
        env = "UPSTREAM_AUTH_MODE",
        default_value = "apikey_env",
        help_heading = "Upstream authentication"
    )]
    pub upstream_auth_mode: String,

    /// A Codex auth.json for apikey_auth_json and chatgpt_token (the systemd credential
    /// `codex-auth` wins).
    #[arg(long, value_name = "FILE", help_heading = "Upstream authentication")]
    pub codex_auth_file: Option<PathBuf>,

    /// The auth.json field holding the key in apikey_auth_json mode.
    #[arg(
        long,
        env = "AUTH_JSON_API_KEY_FIELD",
        default_value = "OPENAI_API_KEY",
        help_heading = "Upstream authentication"
    )]
    pub auth_json_api_key_field: String,

    /// Directory where rotated ChatGPT tokens are saved (systemd's StateDirectory= sets it).
    #[arg(
        long,
        env = "STATE_DIRECTORY",
        value_name = "DIR",
        help_heading = "Upstream authentication"
    )]
    pub state_directory: Option<PathBuf>,

    /// OAuth token endpoint for refreshing ChatGPT tokens.
    #[arg(
        long,
        env = "CODEX_PROXY_TOKEN_URL",
        default_value = "https://auth.openai.com/oauth/token",
        help_heading = "Upstream authentication"
    )]
    pub token_url: String,

    /// OAuth client id used when refreshing ChatGPT tokens (required by chatgpt_token).
    #[arg(
        long,
        env = "CODEX_PROXY_OAUTH_CLIENT_ID",
        help_heading = "Upstream authentication"
    )]
    pub oauth_client_id: Option<String>,

    /// Refresh ChatGPT tokens whose last refresh is older than this many days.
    #[arg(
        long,
        env = "CODEX_PROXY_TOKEN_REFRESH_DAYS",
        default_value_t = 28,
        help_heading = "Upstream authentication"
    )]
    pub token_refresh_days: u64,

    /// Authenticate to the OpenAI API using GitHub Actions workload identity. In this mode
    /// standard input supplies the GitHub OIDC request token (ACTIONS_ID_TOKEN_REQUEST_TOKEN),
    /// not an API key; it is exchanged for short-lived OpenAI access tokens.
    #[arg(
        long,
        env = "CODEX_PROXY_GITHUB_OIDC",
        requires_all = ["oidc_audience", "identity_provider_id", "service_account_id", "github_oidc_request_url"],
        help_heading = "Workload identity"
    )]
    pub github_oidc: bool,

    /// Audience configured on the OpenAI workload identity provider.
    #[arg(
        long,
        env = "CODEX_PROXY_OIDC_AUDIENCE",
        value_name = "AUDIENCE",
        requires = "github_oidc",
        help_heading = "Workload identity"
    )]
    pub oidc_audience: Option<String>,

    /// OpenAI workload identity provider ID.
    #[arg(
        long,
        env = "CODEX_PROXY_IDENTITY_PROVIDER_ID",
        value_name = "ID",
        requires = "github_oidc",
        help_heading = "Workload identity"
    )]
    pub identity_provider_id: Option<String>,

    /// OpenAI service account ID selected by the provider mapping.
    #[arg(
        long,
        env = "CODEX_PROXY_SERVICE_ACCOUNT_ID",
        value_name = "ID",
        requires = "github_oidc",
        help_heading = "Workload identity"
    )]
    pub service_account_id: Option<String>,

    /// HTTPS token-request URL from GitHub's runner-provided ACTIONS_ID_TOKEN_REQUEST_URL. Use
    /// the value directly from the trusted runner environment, never from a workflow input or
    /// repository content: the proxy sends the GitHub request token to this URL.
    #[arg(
        long,
        env = "CODEX_PROXY_GITHUB_OIDC_REQUEST_URL",
        value_name = "URL",
        requires = "github_oidc",
        help_heading = "Workload identity"
    )]
    pub github_oidc_request_url: Option<String>,

    /// OpenAI's workload identity token exchange endpoint (HTTPS; plain HTTP only on loopback,
    /// for tests).
    #[arg(
        long,
        env = "CODEX_PROXY_OIDC_TOKEN_URL",
        value_name = "URL",
        default_value = DEFAULT_OIDC_TOKEN_URL,
        help_heading = "Workload identity"
    )]
    pub oidc_token_url: String,

    /// Also trust the CA certificates in this PEM file for the upstream (added to the system
    /// store; read as root).
    #[arg(
        long,
        env = "CODEX_PROXY_UPSTREAM_CA_FILE",
        value_name = "FILE",
        help_heading = "Upstream connection"
    )]
    pub upstream_ca_file: Option<PathBuf>,

    /// Reach the upstream (and the token endpoint, and Ollama) through this HTTP proxy,
    /// e.g. http://user:pass@proxy:3128 (default: HTTPS_PROXY / HTTP_PROXY; NO_PROXY is
    /// honoured either way). Its credentials are never logged.
    #[arg(
        long,
        env = "CODEX_PROXY_UPSTREAM_PROXY",
        hide_env_values = true,
        value_name = "URL",
        value_parser = upstream_proxy_url,
        help_heading = "Upstream connection"
    )]
    pub upstream_proxy: Option<UpstreamProxyUrl>,

    /// Client certificate chain (PEM) for upstreams that require one (mTLS; the systemd
    /// credential `upstream-client-cert` wins).
    #[arg(
        long,
        env = "CODEX_PROXY_UPSTREAM_CLIENT_CERT",
        value_name = "FILE",
        help_heading = "Upstream connection"
    )]
    pub upstream_client_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM), read as root and never logged (the systemd
    /// credential `upstream-client-key` wins).
    #[arg(
        long,
        env = "CODEX_PROXY_UPSTREAM_CLIENT_KEY",
        value_name = "FILE",
        help_heading = "Upstream connection"
    )]
    pub upstream_client_key: Option<PathBuf>,

    /// Do not install the worker's seccomp filter (for diagnosing a system call it refuses;
    /// the refusal shows as EPERM in `strace -f`).
    #[arg(long, env = "CODEX_PROXY_NO_SYSCALL_FILTER")]
    pub no_syscall_filter: bool,

    /// Also listen on this unix socket (mode 0666; callers are identified by SO_PEERCRED).
    #[arg(
        long,
        env = "CODEX_PROXY_UNIX_SOCKET",
        value_name = "PATH",
        help_heading = "Who is calling"
    )]
    pub unix_socket: Option<PathBuf>,

    /// Only these local users may use the proxy (names or uids, comma separated).
    #[arg(
        long,
        env = "CODEX_PROXY_ALLOW_USERS",
        value_delimiter = ',',
        help_heading = "Who is calling"
    )]
    pub allow_users: Vec<String>,

    /// Only members of these groups may use the proxy (names or gids, comma separated).
    #[arg(
        long,
        env = "CODEX_PROXY_ALLOW_GROUPS",
        value_delimiter = ',',
        help_heading = "Who is calling"
    )]
    pub allow_groups: Vec<String>,

    /// Most model requests one local user may start per minute (429 beyond).
    #[arg(
        long,
        env = "CODEX_PROXY_REQUESTS_PER_MINUTE",
        help_heading = "Who is calling"
    )]
    pub requests_per_minute: Option<u32>,

    /// Most tokens (input + output) one local user may use per UTC day (429 beyond).
    #[arg(
        long,
        env = "CODEX_PROXY_TOKENS_PER_DAY",
        help_heading = "Who is calling"
    )]
    pub tokens_per_day: Option<u64>,

    /// Most connections one local user may hold open (more are answered 429 and closed).
    /// Default: an eighth of the worker's open-files limit less 64, between 8 and 4096.
    #[arg(
        long,
        env = "CODEX_PROXY_MAX_CONNECTIONS_PER_USER",
        value_name = "N",
        help_heading = "Who is calling"
    )]
    pub max_connections_per_user: Option<usize>,

    /// Most connections of one local user whose request body is still arriving (429 beyond).
    /// Default: a quarter of --max-connections-per-user.
    #[arg(
        long,
        env = "CODEX_PROXY_MAX_UNFINISHED_REQUESTS_PER_USER",
        value_name = "N",
        help_heading = "Who is calling"
    )]
    pub max_unfinished_requests_per_user: Option<usize>,

    /// Most bytes of request bodies buffered for all users together (503 beyond). Default
    /// 256 MiB.
    #[arg(
        long,
        env = "CODEX_PROXY_MAX_BUFFERED_BODIES",
        value_name = "BYTES",
        help_heading = "Who is calling"
    )]
    pub max_buffered_bodies: Option<usize>,

    /// Most bytes of request bodies buffered for one local user (503 beyond; a body larger
    /// than this gets 413). Default 64 MiB.
    #[arg(
        long,
        env = "CODEX_PROXY_MAX_BUFFERED_BODIES_PER_USER",
        value_name = "BYTES",
        help_heading = "Who is calling"
    )]
    pub max_buffered_bodies_per_user: Option<usize>,

    /// Most WebSockets (GET /v1/responses upgraded) one local user may hold open at once
    /// (more are answered 429); each also counts as one of their connections.
    #[arg(
        long,
        env = "CODEX_PROXY_MAX_WEBSOCKETS_PER_USER",
        default_value_t = 16,
        value_name = "N",
        help_heading = "Who is calling"
    )]
    pub max_websockets_per_user: usize,

    /// Send `OpenAI-Organization: VALUE` upstream with every request (a client's own value
    /// is dropped).
    #[arg(
        long,
        env = "CODEX_PROXY_OPENAI_ORGANIZATION",
        value_name = "VALUE",
        value_parser = header_value_text,
        help_heading = "Billing"
    )]
    pub openai_organization: Option<String>,

    /// Send `OpenAI-Project: VALUE` upstream with every request (a client's own value is
    /// dropped).
    #[arg(
        long,
        env = "CODEX_PROXY_OPENAI_PROJECT",
        value_name = "VALUE",
        value_parser = header_value_text,
        help_heading = "Billing"
    )]
    pub openai_project: Option<String>,

    /// Let a client's own `OpenAI-Organization` and `OpenAI-Project` headers through (by
    /// default they are dropped, so a local user cannot choose what the key bills; a value
    /// pinned with --openai-organization or --openai-project still wins).
    #[arg(
        long,
        env = "CODEX_PROXY_FORWARD_BILLING_HEADERS",
        help_heading = "Billing"
    )]
    pub forward_billing_headers: bool,

    /// Write every exchange (request, then response once it ends) as JSON files in this
    /// directory, as the reference proxy's --dump-dir does: for debugging only, since they hold
    /// users' prompts. Root creates it (its parent must be root's and writable by no one else)
    /// and gives it to the worker user, mode 0700; credentials are redacted.
    #[arg(
        long,
        env = "CODEX_PROXY_DUMP_DIR",
        value_name = "DIR",
        help_heading = "Exchange dumps"
    )]
    pub dump_dir: Option<PathBuf>,

    /// Most dump files kept in --dump-dir (two per exchange); the oldest are removed.
    #[arg(
        long,
        env = "CODEX_PROXY_DUMP_MAX_FILES",
        default_value_t = 1000,
        value_name = "N",
        help_heading = "Exchange dumps"
    )]
    pub dump_max_files: usize,

    /// Most bytes of dump files kept in --dump-dir; the oldest are removed. A body larger
    /// than a quarter of this (at most 8 MiB) is cut short in its dump.
    #[arg(
        long,
        env = "CODEX_PROXY_DUMP_MAX_BYTES",
        default_value_t = 256 << 20,
        value_name = "BYTES",
        help_heading = "Exchange dumps"
    )]
    pub dump_max_bytes: u64,

    /// Dump only the exchanges of these local users (names or uids; repeatable or comma
    /// separated). Default: every user.
    #[arg(
        long = "dump-user",
        env = "CODEX_PROXY_DUMP_USERS",
        value_delimiter = ',',
        value_name = "USER",
        help_heading = "Exchange dumps"
    )]
    pub dump_users: Vec<String>,

    /// Serve Prometheus metrics (`GET /metrics`) on this unix socket, for root and
    /// --metrics-group only (mode 0660). Its directory must be root's and writable by no one
    /// else, e.g. /run/codex-responses-api-proxy/metrics.sock. Off by default.
    #[arg(
        long,
        env = "CODEX_PROXY_METRICS_SOCKET",
        value_name = "PATH",
        help_heading = "Metrics"
    )]
    pub metrics_socket: Option<PathBuf>,

    /// The group (name or gid) whose members may read the metrics socket besides root.
    #[arg(
        long,
        env = "CODEX_PROXY_METRICS_GROUP",
        value_name = "GROUP",
        default_value = "root",
        help_heading = "Metrics"
    )]
    pub metrics_group: String,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// Print the man page (roff) to standard output and exit.
    #[arg(long, hide = true)]
    pub man_page: bool,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Print per-user request and token totals recorded in the state directory.
    Usage {
        /// Start of the range: RFC 3339, YYYY-MM-DD, `now`, or relative like -24h, -7d.
        #[arg(long, default_value = "-24h", allow_hyphen_values = true)]
        since: String,
        /// End of the range (same forms).
        #[arg(long, default_value = "now", allow_hyphen_values = true)]
        until: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hand a running service a new API key, read from standard input (its first line),
    /// over the supervisor's control socket: a new worker serves every new connection with it
    /// while the old one finishes its streams. Root only. Exit status 0 when the new key is in
    /// use, 1 when the service refused it, 3 when the control socket cannot be reached.
    RotateKey {
        /// The service's --control-socket.
        #[arg(
            long,
            env = "CODEX_PROXY_CONTROL_SOCKET",
            default_value = DEFAULT_CONTROL_SOCKET,
            value_name = "PATH"
        )]
        control_socket: PathBuf,
    },
}

/// An egress proxy URL. It may carry credentials, so `Debug` shows none of it.
#[derive(Clone)]
pub struct UpstreamProxyUrl(String);

impl UpstreamProxyUrl {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for UpstreamProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamProxyUrl(..)")
    }
}

/// Whether the command line itself (`args`, without the program name) gives
/// `--upstream-proxy` a URL with credentials: every local user can read a command line in
/// `/proc/PID/cmdline`, so they belong in `CODEX_PROXY_UPSTREAM_PROXY` (the environment file).
pub fn proxy_credentials_on_the_command_line(args: &[std::ffi::OsString]) -> bool {
    let mut values = Vec::new();
    let mut args = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--upstream-proxy" {
            values.extend(args.next());
        } else if let Some(value) = arg.strip_prefix("--upstream-proxy=") {
            values.push(value.to_owned().into());
        }
    }
    values.iter().any(|url| {
        let after_scheme = url.split_once("://").map_or(&**url, |(_, rest)| rest);
        after_scheme
            .split(['/', '?', '#'])
            .next()
            .is_some_and(|authority| authority.contains('@'))
    })
}

/// Accepts any non-empty value; the worker checks it and never repeats it in an error.
fn upstream_proxy_url(text: &str) -> Result<UpstreamProxyUrl, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(UpstreamProxyUrl(trimmed.to_owned()))
}

/// A header value the flags may pin: visible ASCII and spaces, not empty.
fn header_value_text(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err("must be non-empty printable ASCII".into());
    }
    Ok(trimmed.to_owned())
}

impl Cli {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout)
    }
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace)
    }
}

/// The secret root reads for an `--upstream-auth-mode` (the worker parses the mode itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamSecret {
    /// `apikey_env`: the key from the `openai-api-key` credential or standard input.
    StaticKey,
    /// `apikey_auth_json`, `chatgpt_token`: a Codex `auth.json`.
    CodexAuthJson,
}

/// Which secret a mode needs; `None` for an unknown mode (the worker then refuses it).
pub(crate) fn upstream_secret(mode: &str) -> Option<UpstreamSecret> {
    match mode.trim().to_ascii_lowercase().as_str() {
        "apikey_env" => Some(UpstreamSecret::StaticKey),
        "apikey_auth_json" | "chatgpt_token" => Some(UpstreamSecret::CodexAuthJson),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<std::ffi::OsString> {
        list.iter().map(Into::into).collect()
    }

    #[test]
    fn proxy_credentials_on_the_command_line_are_found_in_either_form() {
        for with in [
            &["--upstream-proxy", "http://user:pw@proxy:3128"][..],
            &["--port", "1", "--upstream-proxy=http://user@proxy"],
            &["--upstream-proxy", "user:pw@proxy:3128"],
        ] {
            assert!(
                proxy_credentials_on_the_command_line(&args(with)),
                "{with:?}"
            );
        }
        for without in [
            &["--upstream-proxy", "http://proxy:3128"][..],
            &["--upstream-proxy=http://proxy:3128/a@b"],
            &["--upstream-url", "http://user:pw@upstream"],
            &["--", "--upstream-proxy", "http://u:p@proxy"],
            &[],
        ] {
            assert!(
                !proxy_credentials_on_the_command_line(&args(without)),
                "{without:?}"
            );
        }
    }
}
