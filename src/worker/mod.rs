//! The unprivileged side: a tokio runtime serving HTTP/1.1 on the inherited listeners. It
//! starts only after the privilege drop and owns everything that touches client input.
//!
//! Uses: `crate::cli`, `crate::contract`, `crate::logging`, `crate::usage` and bytes, hyper,
//! hyper_util, openai_wire, prometheus-client (in `metrics`), reqwest, tokio, tracing.

pub(crate) mod config;
pub(crate) mod conversation;
pub(crate) mod exchange_dump;
pub(crate) mod identity;
pub(crate) mod metrics;
pub(crate) mod routes;
pub(crate) mod server;
pub(crate) mod upstream;
pub(crate) mod websocket;

use conversation::{compaction_seal, response_store};
use identity::{access_control, peer_identity};
use routes::wrapper_routes;
use server::{connection_timer, fair_share, framing_guard, http, stall_guard};
use upstream::{direct_upstream, upstream_auth};

use crate::cli::Cli;
use crate::contract::{ApiKeyHeader, Handover, KeySource, Listener, WorkerMessage, WorkerPipe};
use crate::usage::{Accounting, RetryAfter};
use access_control::{AllowList, Denial};
use fair_share::FairShare;
use framing_guard::{FramingVerdicts, FramingWatch};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use peer_identity::PeerIdentity;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};
use upstream::UpstreamClient;
use upstream_auth::{AuthMode, UpstreamAuth, UpstreamAuthSettings};
use wrapper_routes::WrapperConfig;

pub(crate) use config::WorkerConfig;

/// Shared by all requests of a shard (every field but `direct` is shared by all shards).
#[derive(Clone)]
pub(crate) struct State {
    /// `None` when no key is installed: every route answers 503.
    pub upstream: Option<UpstreamClient>,
    /// The strict route's own connection pool, for an `http://` or `https://` upstream with
    /// a static key and no egress proxy.
    pub direct: Option<Arc<direct_upstream::DirectUpstream>>,
    pub upstream_url: reqwest::Url,
    pub bridge_to_chat: bool,
    /// WebSocket mode on `GET /v1/responses` (None: upgrades get 426).
    pub websockets: Option<Arc<websocket::OpenSockets>>,
    /// Strict mode's relay to the upstream's own WebSocket (`--websocket-upstream`).
    pub websocket_relay: Option<Arc<websocket::relay::UpstreamWebSocket>>,
    pub http_shutdown: bool,
    pub max_request_body: usize,
    /// Longest silence of a client (sending its body, reading the response) or the upstream.
    pub idle_timeout: Duration,
    pub supervisor_pipe: Arc<WorkerPipe>,
    /// The wrapper routes, when enabled.
    pub wrapper: Option<Arc<WrapperConfig>>,
    /// A client with no credentials, for pass-through to servers that need none (Ollama).
    pub plain_client: reqwest::Client,
    pub allow: Option<Arc<AllowList>>,
    /// Per-user records and limits.
    pub accounting: Arc<Accounting>,
    /// Per-user caps on connections and buffered request bodies (shared by every shard).
    pub fair_share: Arc<FairShare>,
    /// Bridge mode's stored responses (shared by every shard).
    pub response_store: Arc<response_store::ResponseStore>,
    /// Bridge mode's compaction key (`None` in strict mode).
    pub compaction_seal: Option<Arc<compaction_seal::CompactionSeal>>,
    /// `--dump-dir` (`None`: exchanges are not dumped, and nothing of it runs).
    pub dumps: Option<Arc<exchange_dump::ExchangeDumps>>,
}

impl State {
    /// The local user being served (`None`: the kernel could not name them).
    pub(crate) fn caller(&self) -> fair_share::UserKey {
        CALLER.try_with(|user| *user).unwrap_or(None)
    }
}

/// Spawns `future` on this shard as the current request's caller: task-locals do not cross
/// `spawn`, and a WebSocket's turns must still count against, and own what they store for, the
/// user who opened it.
pub(crate) fn spawn_as_caller<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let caller = CALLER.try_with(|user| *user).unwrap_or(None);
    tokio::spawn(CALLER.scope(caller, future))
}

tokio::task_local! {
    /// The user whose request is being served (the key of their fair share), set around each
    /// request's service future.
    static CALLER: fair_share::UserKey;
}

impl State {
    /// The whole request body within this proxy's size limit and idle timeout, and within the
    /// caller's share of body memory and unfinished requests, or the 413/408/429/503 response
    /// to send instead. An exchange being dumped gets its request file here.
    pub(crate) async fn read_body(
        &self,
        body: hyper::body::Incoming,
        request: &hyper::http::request::Parts,
    ) -> Result<bytes::Bytes, hyper::Response<http::Body>> {
        let caller = CALLER.try_with(|user| *user).unwrap_or(None);
        let limits = http::BodyLimits {
            max_bytes: self.max_request_body,
            timeout: self.idle_timeout,
            share: Some((&self.fair_share, caller)),
        };
        let body = http::read_request_body(body, &request.headers, limits).await?;
        if self.dumps.is_some() {
            if let Some(dump) = request.extensions.get::<Arc<exchange_dump::Exchange>>() {
                dump.request_body(&body);
            }
        }
        Ok(body)
    }
}

/// Serves until SIGTERM/SIGINT, then drains; returns the process exit code.
///
/// The work is split into shards, one thread each (one per core by default, like nginx's
/// worker processes): every shard runs its own single-threaded runtime and keeps its own
/// upstream connections, so a request never crosses threads. The main thread accepts, works
/// out who is calling on its blocking pool (sock_diag and NSS look-ups block, so the accept
/// loop never waits for them), deals each connection to the next shard in turn, and watches
/// signals and the supervisor. A finished request's usage accounting and log line go to one more
/// thread, the after-response thread (`logging::start_after_response_thread`), so that a
/// shard is free for its next request as soon as a response is out.
pub fn run(cli: &Cli, mut handover: Handover) -> i32 {
    let config = match WorkerConfig::parse(cli, &mut handover) {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return 1;
        }
    };
    let Handover {
        listeners,
        metrics: metrics_socket,
        to_supervisor: supervisor_pipe,
        stop_requested,
        ..
    } = handover;
    // Before any request: the hooks record only once the metrics are on.
    if let Some(socket) = &metrics_socket {
        metrics::enable();
        let path = socket.local_addr().ok();
        let path = path.as_ref().and_then(|a| a.as_pathname());
        info!(
            "worker: metrics on {} (GET /metrics)",
            path.map_or_else(|| "a unix socket".into(), |p| p.display().to_string())
        );
    }
    let shards = config
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get().min(8)));
    let control = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(IDENTITY_LOOKUP_THREADS)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("worker: cannot start the runtime: {e}");
            return 1;
        }
    };
    // Usage accounting and request lines run there, off the shards.
    if let Err(e) = crate::logging::start_after_response_thread() {
        warn!("worker: no after-response thread ({e}); the shards do that work themselves");
    }
    let code = control.block_on(serve(
        config,
        shards,
        Listeners {
            api: listeners,
            metrics: metrics_socket,
        },
        supervisor_pipe,
        stop_requested,
    ));
    crate::logging::stop_after_response_thread();
    code
}

/// Resolves when the supervisor closes its end of the stop pipe (or writes to it).
async fn supervisor_stop(stop_requested: OwnedFd) {
    use tokio::io::AsyncReadExt;
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(stop_requested) else {
        warn!("worker: cannot watch the supervisor's stop pipe; only signals stop the worker");
        return std::future::pending().await;
    };
    let mut byte = [0u8; 1];
    let _ = pipe.read(&mut byte).await;
}

/// What the worker serves: the API's listeners, and the metrics socket when there is one.
struct Listeners {
    api: Vec<Listener>,
    metrics: Option<std::os::unix::net::UnixListener>,
}

async fn serve(
    mut config: WorkerConfig,
    shards: usize,
    listeners: Listeners,
    supervisor_pipe: WorkerPipe,
    stop_requested: OwnedFd,
) -> i32 {
    let Some(state) = shared_state(&mut config, supervisor_pipe) else {
        return 1;
    };
    // Workload identity obtains its first token before serving, as the reference proxy does:
    // a job whose federation settings are wrong fails at once instead of at its first request.
    if let Some(upstream) = &state.upstream {
        if let Err(e) = upstream.prepare().await {
            error!("worker: {e}");
            return 1;
        }
    }
    let (mut terminate, mut interrupt) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            error!("worker: cannot install signal handlers");
            return 1;
        }
    };
    // Every shard keeps its runtime until all have drained: the client that refreshes
    // ChatGPT tokens is shared, and its pooled connection lives on the shard that opened it.
    let all_drained = Arc::new(std::sync::Barrier::new(shards));
    let mut handoffs = Vec::new();
    let mut finished = Vec::new();
    for index in 0..shards {
        let mut shard_state = (*state).clone();
        shard_state.direct = direct_upstream_for(&config);
        // Connection pools are per shard: a pooled connection is driven by the runtime that
        // opened it, and sharing one would hand every chunk across threads. The first shard
        // keeps the clients built with the shared state; every other one builds its own.
        if index > 0 {
            match (
                upstream::build_http_client(
                    &config.connection,
                    config.connect_timeout,
                    config.idle_timeout,
                ),
                plain_http_client(&config),
            ) {
                (Ok(http), Ok(plain)) => {
                    shard_state.upstream = state.upstream.as_ref().map(|u| u.with_client(http));
                    shard_state.plain_client = plain;
                }
                (Err(e), _) | (_, Err(e)) => {
                    error!("worker: {e}");
                    return 1;
                }
            }
        }
        let (handoff, accepted) = tokio::sync::mpsc::unbounded_channel();
        let shard = Shard {
            state: Arc::new(shard_state),
            accepted,
            header_timeout: config.header_read_timeout,
            shutdown_grace: config.shutdown_grace,
        };
        let (done, done_signal) = tokio::sync::oneshot::channel();
        let all_drained = all_drained.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                crate::logging::batch_this_thread();
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .on_thread_park(crate::logging::run_deferred)
                    .build()
                {
                    Ok(runtime) => runtime.block_on(async {
                        tokio::spawn(crate::logging::write_batches());
                        shard.serve().await
                    }),
                    Err(e) => error!("worker: shard {index} cannot start a runtime: {e}"),
                }
                crate::logging::flush_this_thread();
                let _ = done.send(());
                all_drained.wait();
            });
        if let Err(e) = spawned {
            error!("worker: cannot start shard {index}: {e}");
            return 1;
        }
        handoffs.push(handoff);
        finished.push(done_signal);
    }
    let dispatch = Arc::new(Dispatch {
        shards: handoffs,
        next: AtomicU64::new(0),
    });
    let (stop_accepting, stop_signal) = watch::channel(false);
    let mut accept_loops = Vec::new();
    if let Some(socket) = listeners.metrics {
        accept_loops.push(tokio::spawn(metrics::serve(socket, stop_signal.clone())));
    }
    for listener in listeners.api {
        let dispatch = dispatch.clone();
        let stop = stop_signal.clone();
        let accept_loop = match listener {
            Listener::Tcp { socket, name } => match socket
                .set_nonblocking(true)
                .and_then(|_| tokio::net::TcpListener::from_std(socket))
            {
                Ok(socket) => tokio::spawn(accept_tcp(socket, dispatch, stop)),
                Err(e) => {
                    error!("worker: cannot use listener {name}: {e}");
                    return 1;
                }
            },
            Listener::Unix { socket, name } => match socket
                .set_nonblocking(true)
                .and_then(|_| tokio::net::UnixListener::from_std(socket))
            {
                Ok(socket) => tokio::spawn(accept_unix(socket, dispatch, stop)),
                Err(e) => {
                    error!("worker: cannot use listener {name}: {e}");
                    return 1;
                }
            },
        };
        accept_loops.push(accept_loop);
    }
    drop(dispatch);
    if let Err(e) = state.supervisor_pipe.send(WorkerMessage::Serving) {
        error!("worker: cannot tell the supervisor it serves: {e}");
        return 1;
    }
    tokio::select! {
        _ = terminate.recv() => info!("worker: SIGTERM received, draining"),
        _ = interrupt.recv() => info!("worker: SIGINT received, draining"),
        _ = supervisor_stop(stop_requested) => info!("worker: the supervisor asked to stop, draining"),
    }
    // The accept loops end and drop the last hand-off senders: each shard then drains.
    let _ = stop_accepting.send(true);
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    let drained = async {
        for done in finished {
            let _ = done.await;
        }
    };
    // Each shard bounds its own drain by the grace period; this is only a backstop.
    if tokio::time::timeout(config.shutdown_grace + Duration::from_secs(1), drained)
        .await
        .is_err()
    {
        warn!("worker: a shard did not finish draining; exiting anyway");
    }
    0
}

/// The upstream connection pool of one shard (None unless the strict fast path applies; it
/// does not to an `http://` upstream behind an egress proxy: reqwest then sends the proxy
/// absolute-form requests).
fn direct_upstream_for(config: &WorkerConfig) -> Option<Arc<direct_upstream::DirectUpstream>> {
    match (&config.auth.mode, &config.key) {
        (AuthMode::ApiKey, KeySource::Key(header)) => direct_upstream::DirectUpstream::new(
            &config.upstream_url,
            key_header_value(header),
            config.upstream_policy.clone(),
            config.connect_timeout,
            config.idle_timeout,
            &config.connection,
        ),
        _ => None,
    }
}

/// The key's `Authorization` value, marked sensitive (never logged by hyper, never
/// HPACK-indexed). No copy of the key is made: the value points at the locked page.
fn key_header_value(header: &ApiKeyHeader) -> hyper::header::HeaderValue {
    let mut value =
        hyper::header::HeaderValue::from_maybe_shared(bytes::Bytes::from_static(header.bytes()))
            .expect("validated key is a valid header value");
    value.set_sensitive(true);
    value
}

/// A client with no credentials, for pass-through to servers that need none (Ollama).
fn plain_http_client(config: &WorkerConfig) -> Result<reqwest::Client, String> {
    config
        .connection
        .client_builder(config.connect_timeout, config.idle_timeout)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// What every shard shares: clients, credentials, settings, usage records. `None` after
/// logging why the worker cannot start.
fn shared_state(config: &mut WorkerConfig, supervisor_pipe: WorkerPipe) -> Option<Arc<State>> {
    let http = match upstream::build_http_client(
        &config.connection,
        config.connect_timeout,
        config.idle_timeout,
    ) {
        Ok(http) => http,
        Err(e) => {
            error!("worker: {e}");
            return None;
        }
    };
    let static_key = match &config.key {
        KeySource::Key(header) => Some(key_header_value(header)),
        KeySource::NotConfigured => None,
    };
    let upstream = if config.auth.mode == AuthMode::ApiKey && static_key.is_none() {
        warn!("no API key is installed: every request will get 503 until one is; as root run `codex-responses-api-proxy-install-key`");
        None
    } else {
        let auth = &mut config.auth;
        let mut settings = UpstreamAuthSettings::new(auth.mode.clone(), http.clone());
        settings.static_key = static_key;
        settings.auth_json = auth.auth_json.clone();
        settings.state_dir = auth.state_dir.clone();
        settings.token_url = auth.token_url.clone();
        settings.client_id = auth.client_id.clone();
        settings.refresh_after = auth.refresh_after;
        settings.workload = auth.workload.take();
        match UpstreamAuth::new(settings) {
            Ok(auth) => Some(UpstreamClient::new(
                http,
                auth,
                config.upstream_policy.clone(),
            )),
            Err(e) => {
                error!("worker: {e}");
                return None;
            }
        }
    };
    let plain_client = match plain_http_client(config) {
        Ok(client) => client,
        Err(e) => {
            error!("worker: {e}");
            return None;
        }
    };
    let accounting = match Accounting::open(config.auth.state_dir.as_deref(), config.limits) {
        Ok(accounting) => Arc::new(accounting),
        Err(e) => {
            error!("worker: cannot open the usage store: {e}");
            return None;
        }
    };
    let fair_share = FairShare::new(config.fair_share);
    let limits = config.fair_share;
    info!(
        connections_per_user = limits.connections_per_user,
        unfinished_requests_per_user = limits.unfinished_requests_per_user,
        buffered_bodies = limits.buffered_bodies,
        buffered_bodies_per_user = limits.buffered_bodies_per_user,
        "worker: fair shares: {} connection(s) per user, {} unfinished request(s) per user, {} MiB of request bodies ({} MiB per user)",
        limits.connections_per_user,
        limits.unfinished_requests_per_user,
        limits.buffered_bodies >> 20,
        limits.buffered_bodies_per_user >> 20
    );
    let compaction_seal = if config.bridge_to_chat {
        match compaction_seal::CompactionSeal::open(config.auth.state_dir.as_deref()) {
            Ok((seal, kept)) => {
                info!("worker: compaction key {kept}");
                Some(Arc::new(seal))
            }
            Err(e) => {
                error!("worker: {e}");
                return None;
            }
        }
    } else {
        None
    };
    let websocket_relay = match config.websocket_relay {
        Some(mode) if config.websocket.is_some() => match websocket::relay::UpstreamWebSocket::new(
            mode,
            &config.upstream_url,
            &config.connection,
            config.connect_timeout,
            config.idle_timeout,
        ) {
            Ok(relay) => Some(Arc::new(relay)),
            Err(e) => {
                error!("worker: --websocket-upstream: {e}");
                return None;
            }
        },
        _ => None,
    };
    let store = config.response_store;
    if config.bridge_to_chat {
        info!(
            "worker: stored responses: {} MiB in all, {} MiB per user, {} responses, {} s",
            store.total_bytes >> 20,
            store.bytes_per_owner >> 20,
            store.count,
            store.max_age.as_secs()
        );
    }
    let dumps = match config.dumps.take() {
        Some(settings) => {
            let key = match &config.key {
                KeySource::Key(header) => Some(header.bytes()),
                KeySource::NotConfigured => None,
            };
            let (files, bytes) = (settings.max_files, settings.max_bytes);
            match exchange_dump::ExchangeDumps::open(settings, key) {
                Ok(dumps) => {
                    warn!("worker: every exchange is dumped to --dump-dir (at most {files} files, {} MiB); the dumps hold users' prompts", bytes >> 20);
                    Some(Arc::new(dumps))
                }
                Err(e) => {
                    error!("worker: --dump-dir: {e}");
                    return None;
                }
            }
        }
        None => None,
    };
    Some(Arc::new(State {
        dumps,
        response_store: Arc::new(response_store::ResponseStore::new(store)),
        compaction_seal,
        upstream,
        direct: None,
        upstream_url: config.upstream_url.clone(),
        bridge_to_chat: config.bridge_to_chat,
        websockets: config.websocket.map(websocket::OpenSockets::new),
        websocket_relay,
        http_shutdown: config.http_shutdown,
        max_request_body: config.max_request_body,
        idle_timeout: config.idle_timeout,
        supervisor_pipe: Arc::new(supervisor_pipe),
        wrapper: config.wrapper.take().map(Arc::new),
        plain_client,
        allow: config.allow.take().map(Arc::new),
        accounting,
        fair_share,
    }))
}

/// A connection accepted on the main thread, with who is calling, for a shard to serve.
enum Accepted {
    Tcp(std::net::TcpStream, PeerIdentity),
    Unix(std::os::unix::net::UnixStream, PeerIdentity),
}

/// Deals accepted connections to the shards in turn, so that even a handful of long-lived
/// connections spreads over every core.
struct Dispatch {
    shards: Vec<tokio::sync::mpsc::UnboundedSender<Accepted>>,
    next: AtomicU64,
}

impl Dispatch {
    fn hand_off(&self, accepted: Accepted) {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.shards.len();
        if self.shards[turn].send(accepted).is_err() {
            warn!("worker: shard {turn} is gone; connection dropped");
        }
    }
}

/// One thread's share of the service: its state and upstream connections, and the client
/// connections dealt to it.
struct Shard {
    state: Arc<State>,
    accepted: tokio::sync::mpsc::UnboundedReceiver<Accepted>,
    header_timeout: Duration,
    shutdown_grace: Duration,
}

impl Shard {
    /// Serves the connections it is dealt until the dealer stops, then drains them for at
    /// most the grace period.
    async fn serve(mut self) {
        // Every connection (and every WebSocket it became) holds a receiver until it ends:
        // sending `true` asks them to finish, and the sender is closed once all have.
        let (stop, graceful) = watch::channel(false);
        while let Some(accepted) = self.accepted.recv().await {
            let state = self.state.clone();
            let timeout = self.header_timeout;
            let registered = match accepted {
                Accepted::Tcp(stream, identity) => tokio::net::TcpStream::from_std(stream)
                    .map(|stream| spawn_connection(stream, state, &graceful, timeout, identity)),
                Accepted::Unix(stream, identity) => tokio::net::UnixStream::from_std(stream)
                    .map(|stream| spawn_connection(stream, state, &graceful, timeout, identity)),
            };
            if let Err(e) = registered {
                warn!("worker: cannot serve an accepted connection: {e}");
            }
        }
        drop(graceful);
        let in_flight = stop.receiver_count();
        stop.send_replace(true);
        tokio::select! {
            _ = stop.closed() => {
                if in_flight > 0 {
                    info!("worker: drained {in_flight} connection(s)");
                }
            }
            _ = tokio::time::sleep(self.shutdown_grace) => {
                warn!("worker: connections still open after the grace period; exiting anyway");
            }
        }
    }
}

async fn accept_tcp(
    listener: tokio::net::TcpListener,
    dispatch: Arc<Dispatch>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr();
                    match stream.into_std() {
                        Ok(stream) => identify_then_hand_off(&dispatch, move || {
                            let identity = match local {
                                Ok(local) => peer_identity::identify_tcp(local, peer),
                                Err(_) => PeerIdentity::unknown(),
                            };
                            Accepted::Tcp(stream, identity)
                        }),
                        Err(e) => warn!("worker: cannot hand off a connection: {e}"),
                    }
                }
                Err(e) => accept_failed(e).await,
            }
        }
    }
}

async fn accept_unix(
    listener: tokio::net::UnixListener,
    dispatch: Arc<Dispatch>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // SO_PEERCRED is one getsockopt that never waits; the name needs NSS.
                    let uid = peer_identity::unix_peer_uid(&stream);
                    match stream.into_std() {
                        Ok(stream) => identify_then_hand_off(&dispatch, move || {
                            Accepted::Unix(stream, peer_identity::identity_of_unix_peer(uid))
                        }),
                        Err(e) => warn!("worker: cannot hand off a connection: {e}"),
                    }
                }
                Err(e) => accept_failed(e).await,
            }
        }
    }
}

/// Most threads that look up who is calling at once (the control runtime's blocking pool);
/// further connections wait their turn there, never on the accept loop.
const IDENTITY_LOOKUP_THREADS: usize = 8;

/// Works out who is calling (a sock_diag query and an NSS name lookup, both blocking) on the
/// control runtime's blocking pool, then deals the connection to a shard; the accept loop
/// goes straight back to accepting.
fn identify_then_hand_off(
    dispatch: &Arc<Dispatch>,
    identify: impl FnOnce() -> Accepted + Send + 'static,
) {
    let dispatch = dispatch.clone();
    drop(tokio::task::spawn_blocking(move || {
        dispatch.hand_off(identify())
    }));
}

/// When the allow-list needs a caller's group memberships and has none cached, looks them up
/// (NSS, may block) on the blocking pool, so that [`admission`] finds them cached and the
/// shard's other connections are not held up.
async fn groups_looked_up_off_this_thread(state: &State, identity: &Arc<PeerIdentity>) {
    let Some(allow) = &state.allow else { return };
    if allow.needs_group_lookup(identity) {
        let (allow, identity) = (allow.clone(), identity.clone());
        let _ = tokio::task::spawn_blocking(move || allow.look_up_groups(&identity)).await;
    }
}

/// The allow-lists (every route) and the per-user limits (model routes): the refusal to
/// send, if any.
fn admission(
    state: &State,
    identity: &PeerIdentity,
    is_model_route: bool,
) -> Option<hyper::Response<http::Body>> {
    if let Some(allow) = &state.allow {
        if let Err(denial) = allow.decide(identity) {
            info!(client_user = %identity.display_name(), "refused: {}", denial.message);
            return Some(http::error_response(
                hyper::StatusCode::FORBIDDEN,
                &denial.message,
                Denial::KIND,
                Some(Denial::CODE),
            ));
        }
    }
    if !is_model_route {
        return None;
    }
    if let Err(limit) = state.accounting.admit(identity.uid) {
        info!(client_user = %identity.display_name(), "limited: {}", limit.message());
        metrics::limit_refused(limit.kind.metric_label());
        let mut response = http::error_response(
            hyper::StatusCode::TOO_MANY_REQUESTS,
            &limit.message(),
            limit.error_type(),
            Some(RetryAfter::CODE),
        );
        response.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from(limit.secs),
        );
        return Some(response);
    }
    None
}

/// Accept errors (e.g. out of file descriptors) must not spin the loop.
async fn accept_failed(error: std::io::Error) {
    warn!("accept failed: {error}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn spawn_connection<S>(
    stream: S,
    state: Arc<State>,
    graceful: &watch::Receiver<bool>,
    header_timeout: Duration,
    identity: PeerIdentity,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // One user may hold only their share of the worker's descriptors.
    let slot = match state.fair_share.open_connection(identity.uid) {
        Ok(slot) => slot,
        Err(refusal) => {
            tokio::spawn(refuse_connection(stream, refusal));
            return;
        }
    };
    let verdicts = Arc::new(FramingVerdicts::default());
    let io = stall_guard::StallGuard::new(
        TokioIo::new(FramingWatch::new(stream, verdicts.clone())),
        state.idle_timeout,
    );
    let identity = Arc::new(identity);
    let slot = Arc::new(slot);
    // A route that takes the connection over (WebSocket) keeps its slot and tells its
    // framing guard when the protocol switched.
    let context = websocket::ConnectionContext {
        identity: identity.clone(),
        slot: slot.clone(),
        verdicts: verdicts.clone(),
        shutdown: graceful.clone(),
    };
    let requests_seen = AtomicU64::new(0);
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        if request.headers().contains_key(hyper::header::UPGRADE) {
            request.extensions_mut().insert(context.clone());
        }
        let state = state.clone();
        let identity = identity.clone();
        let number = requests_seen.fetch_add(1, Ordering::Relaxed);
        let framing_fault = verdicts.fault_of(number);
        CALLER.scope(identity.uid, async move {
            let started = Instant::now();
            let in_flight = metrics::InFlight::start();
            if let Some(fault) = framing_fault {
                let record = http::RequestRecord::new(
                    request.method(),
                    request.uri(),
                    "invalid",
                    started,
                    identity.clone(),
                );
                info!(client_user = %identity.display_name(), "refused: ambiguous framing: {fault:?}");
                let response = http::error_response(
                    hyper::StatusCode::BAD_REQUEST,
                    fault.message(),
                    "invalid_request_error",
                    Some("ambiguous_framing"),
                );
                return Ok(http::LoggedBody::wrap(
                    http::close_after(response),
                    record,
                    None,
                    in_flight,
                ));
            }
            groups_looked_up_off_this_thread(&state, &identity).await;
            // One classification for routing, admission and accounting: refused requests
            // are logged, but neither count against a limit nor are recorded as usage.
            let route = routes::classify(&state, &request);
            let is_model_route = route.is_model_route();
            let record = http::RequestRecord::new(
                request.method(),
                request.uri(),
                route.metric_label(),
                started,
                identity.clone(),
            );
            let (response, accounted) = match admission(&state, &identity, is_model_route) {
                Some(refusal) => (refusal, None),
                None => {
                    let accounted = is_model_route.then(|| state.accounting.clone());
                    // The one place every HTTP exchange passes (a WebSocket's turns are
                    // dumped one by one by its session).
                    let dump = match &state.dumps {
                        Some(dumps) if route.is_dumped() => dumps.begin(
                            identity.uid,
                            request.method().as_str(),
                            request.uri().path_and_query().map_or("", |p| p.as_str()),
                            request.headers(),
                            false,
                        ),
                        _ => None,
                    };
                    let response = match dump {
                        Some(dump) => {
                            request.extensions_mut().insert(dump.clone());
                            dump.response(routes::handle(state, route, request).await)
                        }
                        None => routes::handle(state, route, request).await,
                    };
                    (response, accounted)
                }
            };
            Ok::<_, std::convert::Infallible>(http::LoggedBody::wrap(
                response, record, accounted, in_flight,
            ))
        })
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(connection_timer::ConnectionTimer::default())
        .header_read_timeout(header_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    let mut shutdown = graceful.clone();
    tokio::spawn(async move {
        let mut connection = std::pin::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = stop_requested(&mut shutdown) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = ended {
            debug!("connection ended with an error: {e}");
        }
        drop(slot);
        drop(shutdown);
    });
}

/// Resolves once the shard is asked to drain (or its sender is gone).
pub(crate) async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// A connection over its user's cap: a 429 written at once if the socket takes it, then
/// closed (the refusal was logged, rate-limited, when it was counted).
async fn refuse_connection<S>(mut stream: S, refusal: fair_share::Refusal)
where
    S: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let body = openai_wire::api_error::error_body(
        &format!(
            "Refused: {}; close some of your connections and retry.",
            refusal.reason()
        ),
        "requests",
        Some("too_many_connections"),
        None,
    );
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A look-up that blocks (a slow NSS source) holds up neither the accept loop nor the
    /// connections accepted after it.
    #[test]
    fn a_slow_identity_lookup_does_not_hold_up_the_accept_loop() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(IDENTITY_LOOKUP_THREADS)
            .build()
            .unwrap();
        let (shard, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let dispatch = Arc::new(Dispatch {
            shards: vec![shard],
            next: AtomicU64::new(0),
        });
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let mut keep = Vec::new();
        runtime.block_on(async {
            let (slow, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            keep.push(theirs);
            let started = Instant::now();
            identify_then_hand_off(&dispatch, move || {
                let _ = wait.recv_timeout(Duration::from_secs(3));
                Accepted::Unix(slow, PeerIdentity::from_uid(1))
            });
            let (fast, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            keep.push(theirs);
            identify_then_hand_off(&dispatch, move || {
                Accepted::Unix(fast, PeerIdentity::from_uid(2))
            });
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "the accept loop waited"
            );
            let first = tokio::time::timeout(Duration::from_secs(10), accepted.recv())
                .await
                .expect("the fast connection waited for the slow look-up")
                .unwrap();
            assert!(matches!(first, Accepted::Unix(_, ref id) if id.uid == Some(2)));
            release.send(()).unwrap();
            let second = accepted.recv().await.unwrap();
            assert!(matches!(second, Accepted::Unix(_, ref id) if id.uid == Some(1)));
        });
    }

    #[test]
    fn connections_are_dealt_to_the_shards_in_turn() {
        let (first, mut first_rx) = tokio::sync::mpsc::unbounded_channel();
        let (second, mut second_rx) = tokio::sync::mpsc::unbounded_channel();
        let dispatch = Dispatch {
            shards: vec![first, second],
            next: AtomicU64::new(0),
        };
        let mut keep = Vec::new();
        for _ in 0..5 {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            keep.push(theirs);
            dispatch.hand_off(Accepted::Unix(ours, PeerIdentity::unknown()));
        }
        let count = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Accepted>| {
            std::iter::from_fn(|| rx.try_recv().ok()).count()
        };
        assert_eq!((count(&mut first_rx), count(&mut second_rx)), (3, 2));
        // A shard that is gone loses only its own turn.
        drop(second_rx);
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        dispatch.hand_off(Accepted::Unix(ours, PeerIdentity::unknown()));
        let (ours, _theirs2) = std::os::unix::net::UnixStream::pair().unwrap();
        dispatch.hand_off(Accepted::Unix(ours, PeerIdentity::unknown()));
        assert_eq!(count(&mut first_rx), 1);
    }
}
