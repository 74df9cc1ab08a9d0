//! codex-responses-api-proxy: a privilege-separated proxy that lets unprivileged local users
//! reach a model provider without ever seeing its API key. ARCHITECTURE.md draws the parts.
//!
//! The tree follows the privilege boundary:
//! - `supervisor` runs as root: hardening, key intake, listeners, and then it only waits on
//!   the worker's pipe and signals. It never parses client input.
//! - `sandbox` confines the forked child (privilege drop, seccomp) before any worker code runs.
//! - `worker` runs unprivileged and serves HTTP; `usage` is its accounting.
//! - `contract` is all the two sides share (key page, listeners, pipe protocol, handover);
//!   `cli` is the plain configuration both read. `main.rs` forks and names both sides.
//! - The OpenAI wire formats and conversions are the pure crate `openai-wire`.
//!
//! `tests/architecture.rs` fails the build's tests on any use across the boundary.

#![warn(unreachable_pub)]

mod atomic_file;
mod cli;
mod clock;
mod contract;
mod logging;
mod sandbox;
mod supervisor;
mod usage;
mod worker;

// What `main.rs` wires: the configuration, the root side's preparation, the worker, and the
// usage report. Nothing else of the crate is public.
pub use cli::{proxy_credentials_on_the_command_line, Cli, Command, DEFAULT_STATE_DIRECTORY};
pub use supervisor::control::rotate_key_command;
pub use supervisor::{prepare, Supervision};
pub use usage::report::usage_command;
pub use worker::run as run_worker;

/// Internals the fuzz targets (`fuzz/`) and their regression test drive directly: key
/// intake, the usage tap, the framing scanner and the plain-HTTP upstream response parser.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::supervisor::key::{self, KeyError, KeySource, MAX_KEY_LEN};
    pub use crate::usage::tap::UsageTap;
    pub use crate::worker::server::framing_guard::FramingScanner;
    pub use crate::worker::upstream::upstream_wire;
}

/// The strict route's fast-path client alone (`worker::upstream::direct_upstream`: our own
/// pool of HTTP/1.1 connections, plain or TLS), for the upstream-transport benchmark
/// (`examples/bench_upstream_client.rs`, `bench/upstream-h2.sh`), which puts it in the same
/// bare forwarder as hyper's HTTP/1.1 and HTTP/2 clients. Not an API.
#[doc(hidden)]
pub mod benching {
    use crate::worker::upstream::direct_upstream::DirectUpstream;
    use crate::worker::upstream::headers::UpstreamRequestPolicy;
    use bytes::Bytes;
    use hyper::header::{HeaderMap, HeaderValue};
    use std::sync::Arc;
    use std::time::Duration;

    /// A response body as the fast path streams it.
    pub type Body =
        http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

    /// One pool of upstream connections (the proxy keeps one per shard).
    pub struct FastPathClient(Arc<DirectUpstream>);

    impl FastPathClient {
        /// `None` unless `url` is `http://` or `https://` with a host. `tls` is used as given
        /// (the proxy's offers only `http/1.1` by ALPN).
        pub fn new(
            url: &str,
            authorization: HeaderValue,
            tls: Arc<rustls::ClientConfig>,
        ) -> Option<Self> {
            let policy = UpstreamRequestPolicy {
                organization: None,
                project: None,
                forward_client_billing: false,
            };
            DirectUpstream::new(
                &url.parse().ok()?,
                authorization,
                policy,
                Duration::from_secs(10),
                Duration::from_secs(300),
                &crate::worker::upstream::connection::UpstreamConnection::with_tls_as_given(tls),
            )
            .map(Self)
        }

        /// POSTs `body` with the client's end-to-end `headers`, as the strict route does.
        pub async fn post(
            &self,
            headers: &HeaderMap,
            body: Bytes,
        ) -> Result<hyper::Response<Body>, String> {
            self.0
                .post(headers, body)
                .await
                .map_err(|error| error.to_string())
        }
    }
}
