//! The contract between the two sides of the privilege boundary: everything the root side
//! hands the worker across the fork, and the only way the worker speaks back.
//!
//! Owns: the locked key page ([`key_page`]), the listening sockets ([`listener::Listener`])
//! and the metrics socket, the worker→supervisor messages ([`pipe`]) and the [`Handover`]
//! that bundles them with the secrets root read for the worker. Plain data and file
//! descriptors only: no tokio, no hyper, no parsing of client input. May use: std, libc, nix,
//! secrecy. Both `supervisor` (which fills it) and `worker` (which consumes it) use this
//! module; they never use each other.
//!
//! In the style of OpenSSH's `monitor.h`: this file is the whole interface between the sides.

pub(crate) mod key_page;
pub(crate) mod listener;
pub(crate) mod pipe;

use std::os::fd::OwnedFd;

pub(crate) use key_page::LockedBytes;
pub use key_page::{ApiKeyHeader, KeySource};
pub(crate) use listener::Listener;
pub(crate) use pipe::{WorkerMessage, WorkerPipe};

/// What the worker receives from root at fork. Besides this, the worker reads only the plain
/// configuration (`crate::cli::Cli`), which it parses itself after dropping privileges.
pub struct Handover {
    /// The upstream key (`Bearer <key>` in a locked page), or "none installed yet".
    pub(crate) key: KeySource,
    /// `--github-oidc`: the GitHub OIDC request token from standard input, as `Bearer <token>`
    /// in a locked page like the key.
    pub(crate) github_oidc_request: Option<ApiKeyHeader>,
    /// The Codex `auth.json`, read as root when the auth mode needs it.
    pub(crate) auth_json: Option<secrecy::SecretSlice<u8>>,
    /// The wrapper routes' client access key, read as root when configured.
    pub(crate) client_api_key: Option<secrecy::SecretString>,
    /// The upstream TLS files, read as root (the worker user may not be able to read them).
    pub(crate) upstream_tls: UpstreamTlsFiles,
    /// `--dump-dir`, opened by root after it checked it and gave it to the worker user
    /// (`None`: exchanges are not dumped).
    pub(crate) dump_directory: Option<OwnedFd>,
    /// The listening sockets, already bound (or inherited from systemd).
    pub(crate) listeners: Vec<Listener>,
    /// The metrics socket (`--metrics-socket`): root's, mode 0660, so only root and the
    /// metrics group can connect; the worker serves `GET /metrics` on it and nothing else.
    pub(crate) metrics: Option<std::os::unix::net::UnixListener>,
    /// The worker's end of the worker→supervisor pipe.
    pub(crate) to_supervisor: WorkerPipe,
    /// Readable (end of file) once the supervisor wants the worker to drain and exit.
    pub(crate) stop_requested: OwnedFd,
}

/// The files of `--upstream-ca-file`, `--upstream-client-cert` and `--upstream-client-key` (or
/// the credentials `upstream-client-cert` / `upstream-client-key`), as root read them. The
/// worker parses them; the client key stays a secret (`Debug` shows no byte of it).
#[derive(Default)]
pub(crate) struct UpstreamTlsFiles {
    /// Extra CA certificates (PEM) trusted for the upstream, in addition to the system store.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// The client certificate chain (PEM) for upstreams that ask for one.
    pub(crate) client_cert_pem: Option<Vec<u8>>,
    /// Its private key (PEM).
    pub(crate) client_key_pem: Option<secrecy::SecretSlice<u8>>,
}
