//! The root side: hardening, key intake, the listening sockets (and the metrics socket), the forks of the workers, and
//! then a small loop that waits on the workers' pipes, on signals and on the control socket.
//! The supervisor never reads client input; it only learns "serving" and "shut down, please"
//! from a worker.
//!
//! Key rotation: on SIGHUP (the key re-read from its credential file) or a `rotate-key`
//! request on the control socket (`control`), the supervisor forks a new worker with the new
//! key into the same sandbox and listening sockets. Once that worker serves, the old one is
//! told to drain (it stops accepting at once and finishes what is in flight within the grace
//! period) and every new connection goes to the new one. If the new key is refused or the new
//! worker does not start, the old one keeps serving. Several workers may run at once: one
//! current, the others draining; the supervisor exits on SIGTERM only after all are gone.
//!
//! Uses: `crate::atomic_file`, `crate::cli`, `crate::contract`, `crate::logging`, `crate::sandbox`
//! and nix, secrecy, tracing.

pub(crate) mod control;
pub(crate) mod dump_directory;
pub(crate) mod hardening;
pub mod key;
pub(crate) mod listener;
pub(crate) mod metrics_socket;
pub(crate) mod notify;

use crate::cli::Cli;
use crate::contract::{
    ApiKeyHeader, Handover, KeySource, Listener, UpstreamTlsFiles, WorkerMessage, WorkerPipe,
};
use crate::sandbox::{privilege_drop, Sandbox};
use control::ControlSocket;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};
use secrecy::ExposeSecret;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Extra time the worker gets past its own grace period before it is killed.
const KILL_MARGIN: Duration = Duration::from_secs(5);
/// How long a worker started for a key rotation may take to serve before the rotation fails.
const ROTATION_START_TIMEOUT: Duration = Duration::from_secs(60);

fn fail(message: impl std::fmt::Display) -> ExitCode {
    error!("{message}");
    ExitCode::from(1)
}

/// The worker's entry point, given by `main.rs` (the supervisor never names the worker): it
/// runs in a forked child that has already entered the sandbox, and returns the exit code.
pub(crate) type ServeFn<'a> = &'a dyn Fn(Handover) -> i32;

/// What root prepared before the first fork; [`Supervision::run`] forks and supervises.
pub struct Supervision {
    /// The key new workers get: the one in use, replaced when a rotation succeeds.
    key: KeySource,
    key_origin: KeyOrigin,
    template: WorkerTemplate,
    sandbox: Sandbox,
    signal_fd: SignalFd,
    control: Option<ControlSocket>,
    port: Option<u16>,
    server_info: Option<PathBuf>,
    stop_timeout: Duration,
    /// The metrics socket's file, removed when the service ends.
    metrics_socket: Option<PathBuf>,
    workers: Vec<Worker>,
    rotation: Option<Rotation>,
    /// Set once the service is stopping: when to kill what is left.
    stop_deadline: Option<Instant>,
    kills_sent: bool,
}

/// Where the static key came from, i.e. whether SIGHUP can read it again.
enum KeyOrigin {
    Credential(PathBuf),
    Stdin,
    /// The upstream auth mode needs no static key.
    NotUsed,
}

/// What every worker receives besides its key, kept by the supervisor for the next one.
struct WorkerTemplate {
    github_oidc_request: Option<ApiKeyHeader>,
    auth_json: Option<secrecy::SecretSlice<u8>>,
    client_api_key: Option<secrecy::SecretString>,
    upstream_tls: UpstreamTlsFiles,
    dump_directory: Option<OwnedFd>,
    /// The metrics socket (`--metrics-socket`), bound by root.
    metrics: Option<std::os::unix::net::UnixListener>,
    listeners: Vec<Listener>,
}

struct Worker {
    pid: Pid,
    key: KeySource,
    from_worker: Option<OwnedFd>,
    /// Closing it tells the worker to drain and exit.
    stop_request: Option<OwnedFd>,
    role: Role,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Forked, not yet serving.
    Starting { since: Instant },
    /// Serves new connections.
    Current,
    /// Told to stop; killed after `deadline` (None once a kill was tried).
    Draining { deadline: Option<Instant> },
}

/// A key rotation under way: the new worker, and the client waiting for the answer.
struct Rotation {
    worker: Pid,
    client: Option<UnixStream>,
}

/// Hardens the process, reads the secrets, opens the listeners and the pipes, and resolves the
/// worker user. Must be called while the process is single-threaded; an `Err` is the exit code
/// (the reason is logged).
pub fn prepare(cli: &Cli) -> Result<Supervision, ExitCode> {
    if let Err(e) = hardening::forbid_dumps() {
        eprintln!("codex-responses-api-proxy: cannot disable core dumps: {e}");
        return Err(ExitCode::from(1));
    }
    hardening::remove_loader_variables();
    hardening::raise_open_files_limit();
    let log_level = if cli.verbose && cli.log_level == "info" {
        "debug"
    } else {
        cli.log_level.as_str()
    };
    if let Err(e) = crate::logging::init(log_level) {
        eprintln!("codex-responses-api-proxy: {e}");
        return Err(ExitCode::from(2));
    }
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let credentials = credentials.as_deref();
    // The static key is read only where it is used; the auth.json modes take auth.json. An
    // unknown mode reads neither: the worker refuses it with a message that names it safely.
    // With --github-oidc, standard input holds the GitHub OIDC request token instead of a key.
    let secret = if cli.github_oidc {
        None
    } else {
        crate::cli::upstream_secret(&cli.upstream_auth_mode)
    };
    let github_oidc_request = if cli.github_oidc {
        Some(key::load_github_request_token().map_err(fail)?)
    } else {
        None
    };
    let (key, key_origin) = if secret == Some(crate::cli::UpstreamSecret::StaticKey) {
        let credential = credentials
            .map(|dir| dir.join(key::CREDENTIAL_NAME))
            .filter(|path| path.exists());
        let origin = match credential {
            Some(path) => KeyOrigin::Credential(path),
            None => KeyOrigin::Stdin,
        };
        (key::load(credentials).map_err(fail)?, origin)
    } else {
        (KeySource::NotConfigured, KeyOrigin::NotUsed)
    };
    let auth_json = if secret == Some(crate::cli::UpstreamSecret::CodexAuthJson) {
        key::read_secret(credentials, "codex-auth", cli.codex_auth_file.as_deref())
            .map_err(fail)?
            .map(|document| {
                use secrecy::ExposeSecret;
                secrecy::SecretSlice::from(document.expose_secret().as_bytes().to_vec())
            })
    } else {
        None
    };
    let client_api_key = if cli.wrapper_routes {
        key::read_secret(
            credentials,
            "client-api-key",
            cli.client_api_key_file.as_deref(),
        )
        .map_err(fail)?
    } else {
        None
    };
    let upstream_tls = key::read_upstream_tls(credentials, cli).map_err(fail)?;
    let mut listeners = listener::open(cli.port).map_err(fail)?;
    if let Some(path) = &cli.unix_socket {
        listeners.push(listener::bind_unix(path).map_err(fail)?);
    }
    let port = listener::first_tcp_port(&listeners);
    // Root's socket for the metrics, bound while nothing else runs (umask, effective group).
    let metrics = match &cli.metrics_socket {
        Some(path) => Some(metrics_socket::bind(path, &cli.metrics_group).map_err(fail)?),
        None => None,
    };
    let metrics_path = metrics.as_ref().map(|m| m.path.clone());
    let worker_user = privilege_drop::resolve(cli.user.as_deref()).map_err(fail)?;
    let control = match &cli.control_socket {
        Some(path) => Some(ControlSocket::open(path).map_err(fail)?),
        None => None,
    };
    let mut signals = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGCHLD,
        Signal::SIGHUP,
    ] {
        signals.add(signal);
    }
    signals
        .thread_block()
        .map_err(|e| fail(format!("cannot block signals: {e}")))?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| fail(format!("cannot create a signalfd: {e}")))?;
    if let (Some(dir), Some(user)) = (&cli.state_directory, &worker_user) {
        hand_over_state_directory(dir, user).map_err(fail)?;
    }
    let dump_directory = match &cli.dump_dir {
        Some(dir) => Some(dump_directory::prepare(dir, worker_user.as_ref()).map_err(fail)?),
        None => None,
    };
    Ok(Supervision {
        key,
        key_origin,
        template: WorkerTemplate {
            github_oidc_request,
            auth_json,
            client_api_key,
            upstream_tls,
            dump_directory,
            metrics: metrics.map(|m| m.listener),
            listeners,
        },
        metrics_socket: metrics_path,
        sandbox: Sandbox {
            user: worker_user,
            signals,
            syscall_filter: !cli.no_syscall_filter,
        },
        signal_fd,
        control,
        port,
        server_info: cli.server_info.clone(),
        stop_timeout: cli.shutdown_grace() + KILL_MARGIN,
        workers: Vec::new(),
        rotation: None,
        stop_deadline: None,
        kills_sent: false,
    })
}

/// The worker writes the usage store and rotated tokens in the state directory: make it the
/// worker user's, 0700 (the package's tmpfiles entry already does; then nothing changes).
fn hand_over_state_directory(dir: &Path, user: &privilege_drop::WorkerUser) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the state directory {}: {e}", dir.display()))?;
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("cannot inspect the state directory {}: {e}", dir.display()))?;
    if meta.uid() == user.uid.as_raw()
        && meta.gid() == user.gid.as_raw()
        && meta.mode() & 0o777 == 0o700
    {
        return Ok(());
    }
    nix::unistd::chown(dir, Some(user.uid), Some(user.gid))
        .map_err(|e| format!("cannot give {} to {}: {e}", dir.display(), user.name))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot restrict {}: {e}", dir.display()))
}

impl Supervision {
    /// Forks the first worker, then supervises until the service ends. `serve` is the
    /// worker's entry point, run in every forked child once it has entered the sandbox.
    pub fn run(mut self, serve: &dyn Fn(Handover) -> i32) -> ExitCode {
        let code = self.supervise(serve);
        if let Some(path) = &self.metrics_socket {
            metrics_socket::remove(path);
        }
        code
    }

    fn supervise(&mut self, serve: &dyn Fn(Handover) -> i32) -> ExitCode {
        match self.start_worker(self.key, &[], serve) {
            Ok(worker) => {
                info!(
                    worker_pid = worker.pid.as_raw(),
                    worker_user = self.sandbox.user_name().unwrap_or("(unchanged)"),
                    "worker started"
                );
                self.workers.push(worker);
            }
            Err(e) => return fail(e),
        }
        loop {
            if let Some(code) = self.enforce_deadlines() {
                return code;
            }
            let timeout = self.next_deadline().map_or(PollTimeout::NONE, |deadline| {
                let left = deadline.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left.as_millis().clamp(1, 60_000) as u32)
                    .unwrap_or(PollTimeout::MAX)
            });
            // What is polled: [signals, control socket?, each worker's pipe…].
            let pipes: Vec<(Pid, BorrowedFd<'_>)> = self
                .workers
                .iter()
                .filter_map(|w| w.from_worker.as_ref().map(|fd| (w.pid, fd.as_fd())))
                .collect();
            let control = self
                .control
                .as_ref()
                .filter(|_| self.stop_deadline.is_none())
                .map(|c| c.listener().as_fd());
            let mut fds = vec![PollFd::new(self.signal_fd.as_fd(), PollFlags::POLLIN)];
            fds.extend(control.map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
            fds.extend(
                pipes
                    .iter()
                    .map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN)),
            );
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return fail(format!("poll failed: {e}")),
            }
            let ready = |fd: &PollFd<'_>, flags: PollFlags| {
                fd.revents().is_some_and(|r| r.intersects(flags))
            };
            let signal_ready = ready(&fds[0], PollFlags::POLLIN);
            let control_ready = control.is_some() && ready(&fds[1], PollFlags::POLLIN);
            let first_pipe = 1 + usize::from(control.is_some());
            let pipes_ready: Vec<Pid> = pipes
                .iter()
                .zip(&fds[first_pipe..])
                .filter(|(_, fd)| {
                    ready(
                        fd,
                        PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR,
                    )
                })
                .map(|((pid, _), _)| *pid)
                .collect();
            drop(fds);
            drop(pipes);
            for pid in pipes_ready {
                self.read_worker_pipe(pid);
            }
            if control_ready {
                self.serve_control_socket(serve);
            }
            if signal_ready {
                while let Ok(Some(info)) = self.signal_fd.read_signal() {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGTERM) => self.begin_stop("SIGTERM"),
                        Ok(Signal::SIGINT) => self.begin_stop("SIGINT"),
                        Ok(Signal::SIGHUP) => self.reload_from_source(serve),
                        _ => {}
                    }
                }
            }
            if let Some(code) = self.reap() {
                return code;
            }
        }
    }

    /// Forks a worker that serves with `key`. `also_close` are descriptors of the parent's
    /// the child must not keep (a waiting control client).
    fn start_worker(
        &self,
        key: KeySource,
        also_close: &[RawFd],
        serve: ServeFn<'_>,
    ) -> Result<Worker, String> {
        if !single_threaded() {
            return Err("cannot fork a worker: the supervisor is not single-threaded".into());
        }
        // The supervisor→worker pipe: closing it tells the worker to drain and exit. (A signal
        // would need CAP_KILL across the uid change, which the unit does not grant.)
        let (stop_requested, stop_request) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("cannot create the supervisor pipe: {e}"))?;
        let (from_worker, to_supervisor) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("cannot create the supervisor pipe: {e}"))?;
        let listeners = self
            .template
            .listeners
            .iter()
            .map(Listener::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot hand over the listening sockets: {e}"))?;
        let dump_directory = match &self.template.dump_directory {
            Some(fd) => Some(
                fd.try_clone()
                    .map_err(|e| format!("cannot hand over the dump directory: {e}"))?,
            ),
            None => None,
        };
        let metrics = match &self.template.metrics {
            Some(listener) => Some(
                listener
                    .try_clone()
                    .map_err(|e| format!("cannot hand over the metrics socket: {e}"))?,
            ),
            None => None,
        };
        let handover = Handover {
            key,
            metrics,
            github_oidc_request: self.template.github_oidc_request,
            dump_directory,
            auth_json: self
                .template
                .auth_json
                .as_ref()
                .map(|s| secrecy::SecretSlice::from(s.expose_secret().to_vec())),
            client_api_key: self
                .template
                .client_api_key
                .as_ref()
                .map(|s| secrecy::SecretString::from(s.expose_secret().to_owned())),
            upstream_tls: UpstreamTlsFiles {
                ca_pem: self.template.upstream_tls.ca_pem.clone(),
                client_cert_pem: self.template.upstream_tls.client_cert_pem.clone(),
                client_key_pem: self
                    .template
                    .upstream_tls
                    .client_key_pem
                    .as_ref()
                    .map(|s| secrecy::SecretSlice::from(s.expose_secret().to_vec())),
            },
            listeners,
            to_supervisor: WorkerPipe::new(to_supervisor),
            stop_requested,
        };
        // Everything of the supervisor's the child must not keep: above all the write end of
        // its own stop pipe (or closing ours would never reach it), and the other workers'.
        let mut parent_only: Vec<RawFd> = vec![
            self.signal_fd.as_fd().as_raw_fd(),
            stop_request.as_raw_fd(),
            from_worker.as_raw_fd(),
        ];
        parent_only.extend(self.control.as_ref().map(ControlSocket::as_raw_fd));
        parent_only.extend(self.template.listeners.iter().map(Listener::as_raw_fd));
        for worker in &self.workers {
            parent_only.extend(worker.from_worker.as_ref().map(AsRawFd::as_raw_fd));
            parent_only.extend(worker.stop_request.as_ref().map(AsRawFd::as_raw_fd));
        }
        parent_only.extend_from_slice(also_close);
        // SAFETY: the supervisor is single-threaded (checked above).
        match unsafe { fork() } {
            Err(e) => Err(format!("cannot fork a worker: {e}")),
            Ok(ForkResult::Child) => {
                for fd in parent_only {
                    // SAFETY: these descriptors belong to the supervisor's state, which this
                    // process never uses or drops: it exits below without unwinding.
                    unsafe { libc::close(fd) };
                }
                // The keys of the other workers: this worker keeps only its own.
                for other in self.key_pages() {
                    if !same_page(&KeySource::Key(other), &handover.key) {
                        // SAFETY: as above, nothing in this process reads them again.
                        unsafe { other.discard() };
                    }
                }
                let code = match self.sandbox.enter(&handover) {
                    Ok(()) => serve(handover),
                    Err(e) => {
                        error!("{e}");
                        1
                    }
                };
                std::process::exit(code);
            }
            Ok(ForkResult::Parent { child }) => {
                // The parent's copies of the worker's descriptors close here; the key page
                // stays mapped (the Worker below remembers it).
                drop(handover);
                Ok(Worker {
                    pid: child,
                    key,
                    from_worker: Some(from_worker),
                    stop_request: Some(stop_request),
                    role: Role::Starting {
                        since: Instant::now(),
                    },
                })
            }
        }
    }

    /// Every key page the supervisor holds (its current key and each worker's).
    fn key_pages(&self) -> Vec<ApiKeyHeader> {
        let mut pages = Vec::new();
        for source in std::iter::once(&self.key).chain(self.workers.iter().map(|w| &w.key)) {
            if let KeySource::Key(header) = source {
                if !pages
                    .iter()
                    .any(|p: &ApiKeyHeader| same_page(&KeySource::Key(*p), source))
                {
                    pages.push(*header);
                }
            }
        }
        pages
    }

    /// Wipes `key`'s page unless the supervisor or a worker still uses it.
    fn discard_unless_used(&self, key: KeySource) {
        if let KeySource::Key(header) = key {
            let used = std::iter::once(&self.key)
                .chain(self.workers.iter().map(|w| &w.key))
                .any(|k| same_page(k, &key));
            if !used {
                // SAFETY: no worker of ours serves it and it is not the current key; the
                // supervisor itself never reads a key page.
                unsafe { header.discard() };
            }
        }
    }

    fn worker_mut(&mut self, pid: Pid) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.pid == pid)
    }

    fn read_worker_pipe(&mut self, pid: Pid) {
        let Some(worker) = self.worker_mut(pid) else {
            return;
        };
        let Some(pipe) = &worker.from_worker else {
            return;
        };
        let mut buf = [0u8; 64];
        let n = loop {
            match nix::unistd::read(pipe, &mut buf) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break 0,
            }
        };
        if n == 0 {
            worker.from_worker = None;
            return;
        }
        for &byte in &buf[..n] {
            match WorkerMessage::from_byte(byte) {
                Some(WorkerMessage::Serving) => self.worker_serves(pid),
                Some(WorkerMessage::ShutdownRequested) => {
                    self.begin_stop("shutdown requested over HTTP")
                }
                None => warn!("unexpected byte {byte} from worker {pid}"),
            }
        }
    }

    /// A worker says it serves: the first one is announced; a rotation's replaces the current.
    fn worker_serves(&mut self, pid: Pid) {
        if self.stop_deadline.is_some() {
            return;
        }
        let Some(worker) = self.worker_mut(pid) else {
            return;
        };
        if !matches!(worker.role, Role::Starting { .. }) {
            return;
        }
        worker.role = Role::Current;
        let new_key = worker.key;
        let rotation = self.rotation.take_if(|r| r.worker == pid);
        let stop_timeout = self.stop_timeout;
        let mut replaced = Vec::new();
        for old in self.workers.iter_mut().filter(|w| w.pid != pid) {
            if old.role == Role::Current {
                old.stop_request = None;
                old.role = Role::Draining {
                    deadline: Some(Instant::now() + stop_timeout),
                };
                replaced.push(old.pid.as_raw());
            }
        }
        let old_key = std::mem::replace(&mut self.key, new_key);
        self.discard_unless_used(old_key);
        announce_serving(pid, self.port, self.server_info.as_deref());
        if let Some(rotation) = rotation {
            info!(
                worker_pid = pid.as_raw(),
                draining = ?replaced,
                "key rotated: the new worker serves every new connection; the old one finishes its requests"
            );
            if let Some(client) = rotation.client {
                control::answer(client, Ok(()));
            }
        }
    }

    /// The service is stopping: every worker drains; what is left at the deadline is killed.
    fn begin_stop(&mut self, why: &str) {
        if self.stop_deadline.is_some() {
            return;
        }
        info!("stopping: {why}");
        let _ = notify::notify("STOPPING=1");
        for worker in &mut self.workers {
            worker.stop_request = None;
        }
        if let Some(rotation) = self.rotation.take() {
            if let Some(client) = rotation.client {
                control::answer(client, Err("the service is stopping"));
            }
        }
        self.control = None;
        // No worker is started any more: close our copies of the listening sockets, so that
        // (without socket activation) new connections are refused once the workers stop
        // accepting, as they were before rotation existed.
        self.template.listeners.clear();
        self.stop_deadline = Some(Instant::now() + self.stop_timeout);
    }

    /// SIGHUP: read the key again where that is possible, and rotate to it.
    fn reload_from_source(&mut self, serve: ServeFn<'_>) {
        if self.stop_deadline.is_some() {
            return;
        }
        let path = match &self.key_origin {
            KeyOrigin::Credential(path) => path.clone(),
            KeyOrigin::Stdin => {
                warn!("SIGHUP: the key came from standard input and cannot be read again; hand a new one over the control socket (codex-responses-api-proxy rotate-key)");
                return;
            }
            KeyOrigin::NotUsed => {
                info!("SIGHUP: this service uses no static API key; nothing to reload");
                return;
            }
        };
        let key = std::fs::File::open(&path)
            .map_err(|e| e.kind().to_string())
            .and_then(|mut file| key::read_key(&mut file, true).map_err(|e| e.to_string()));
        match key {
            Ok(key) => self.rotate(key, None, "SIGHUP", serve),
            Err(e) => error!(
                "SIGHUP: cannot read the key from {} ({e}); the current key stays in use",
                path.display()
            ),
        }
    }

    /// One connection on the control socket.
    fn serve_control_socket(&mut self, serve: ServeFn<'_>) {
        let Some(mut client) = self.control.as_ref().and_then(ControlSocket::accept) else {
            return;
        };
        match control::read_request(&mut client) {
            Ok(key) => self.rotate(key, Some(client), "control socket", serve),
            Err(reason) => {
                warn!("control socket: request refused: {reason}");
                control::answer(client, Err(&reason));
            }
        }
    }

    /// Starts a worker with `key`; it replaces the current one once it serves.
    fn rotate(
        &mut self,
        key: KeySource,
        client: Option<UnixStream>,
        why: &str,
        serve: ServeFn<'_>,
    ) {
        let refuse = |this: &Self, client: Option<UnixStream>, reason: &str| {
            warn!("key rotation ({why}) refused: {reason}");
            if let Some(client) = client {
                control::answer(client, Err(reason));
            }
            this.discard_unless_used(key);
        };
        if self.stop_deadline.is_some() {
            return refuse(self, client, "the service is stopping");
        }
        if matches!(self.key_origin, KeyOrigin::NotUsed) {
            return refuse(
                self,
                client,
                "this service uses no static API key (see --upstream-auth-mode)",
            );
        }
        if self.rotation.is_some() {
            return refuse(self, client, "a key rotation is already under way");
        }
        if !self.workers.iter().any(|w| w.role == Role::Current) {
            return refuse(self, client, "the service is still starting");
        }
        let unchanged = match (&key, &self.key) {
            (KeySource::Key(new), KeySource::Key(old)) => new.same_as(old),
            (KeySource::NotConfigured, KeySource::NotConfigured) => true,
            _ => false,
        };
        if unchanged {
            info!("key rotation ({why}): the key is unchanged; nothing to do");
            if let Some(client) = client {
                control::answer(client, Ok(()));
            }
            return self.discard_unless_used(key);
        }
        let _ = notify::notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        info!("key rotation ({why}): starting a worker with the new key");
        let client_fd: Vec<RawFd> = client.iter().map(AsRawFd::as_raw_fd).collect();
        match self.start_worker(key, &client_fd, serve) {
            Ok(worker) => {
                self.rotation = Some(Rotation {
                    worker: worker.pid,
                    client,
                });
                self.workers.push(worker);
            }
            Err(e) => {
                let _ = notify::notify("READY=1");
                refuse(self, client, &e);
            }
        }
    }

    /// The rotation's worker did not come up: the current one keeps serving.
    fn rotation_failed(&mut self, reason: &str) {
        if let Some(rotation) = self.rotation.take() {
            error!("key rotation failed: {reason}; the current key and worker stay in use");
            let _ = notify::notify("READY=1");
            if let Some(client) = rotation.client {
                control::answer(
                    client,
                    Err(&format!(
                        "{reason}; the current key stays in use (see the service's log)"
                    )),
                );
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.iter().filter_map(|w| match w.role {
            Role::Draining { deadline } => deadline,
            Role::Starting { since }
                if self.rotation.as_ref().is_some_and(|r| r.worker == w.pid) =>
            {
                Some(since + ROTATION_START_TIMEOUT)
            }
            _ => None,
        });
        workers.chain(self.stop_deadline).min()
    }

    /// Kills what overstayed; `Some` when the supervisor should exit now.
    fn enforce_deadlines(&mut self) -> Option<ExitCode> {
        let now = Instant::now();
        if let Some(deadline) = self.stop_deadline {
            if deadline <= now {
                if self.kills_sent {
                    warn!("workers still running after SIGKILL; exiting");
                    return Some(ExitCode::SUCCESS);
                }
                // Without CAP_KILL (as under the packaged unit) the kill fails; exiting then
                // still ends the workers: PR_SET_PDEATHSIG, and systemd stops the whole
                // control group.
                warn!("a worker did not stop in time; killing it");
                for worker in &self.workers {
                    if kill(worker.pid, Signal::SIGKILL).is_err() {
                        return Some(ExitCode::SUCCESS);
                    }
                }
                self.kills_sent = true;
                self.stop_deadline = Some(now + Duration::from_secs(5));
            }
            return None;
        }
        let stop_timeout = self.stop_timeout;
        let rotating = self.rotation.as_ref().map(|r| r.worker);
        let mut timed_out = false;
        for worker in &mut self.workers {
            match worker.role {
                Role::Draining {
                    deadline: Some(deadline),
                } if deadline <= now => {
                    warn!(
                        worker_pid = worker.pid.as_raw(),
                        "a replaced worker did not finish in time; killing it"
                    );
                    if let Err(e) = kill(worker.pid, Signal::SIGKILL) {
                        warn!(
                            worker_pid = worker.pid.as_raw(),
                            "cannot kill it ({e}); it ends by its own grace period"
                        );
                    }
                    worker.role = Role::Draining { deadline: None };
                }
                Role::Starting { since }
                    if Some(worker.pid) == rotating && since + ROTATION_START_TIMEOUT <= now =>
                {
                    worker.stop_request = None;
                    let _ = kill(worker.pid, Signal::SIGKILL);
                    worker.role = Role::Draining {
                        deadline: Some(now + stop_timeout),
                    };
                    timed_out = true;
                }
                _ => {}
            }
        }
        if timed_out {
            self.rotation_failed("the new worker did not start in time");
        }
        None
    }

    /// Collects every worker that exited; `Some` when the supervisor should exit now.
    fn reap(&mut self) -> Option<ExitCode> {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => status,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            };
            let (pid, description) = match status {
                WaitStatus::Exited(pid, code) => (pid, format!("exit status {code}")),
                WaitStatus::Signaled(pid, signal, _) => (pid, format!("signal {signal}")),
                _ => continue,
            };
            let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
                continue;
            };
            let worker = self.workers.remove(index);
            self.discard_unless_used(worker.key);
            if self.stop_deadline.is_some() {
                info!(worker_pid = pid.as_raw(), "worker stopped ({description})");
                continue;
            }
            match worker.role {
                Role::Draining { .. } => {
                    info!(
                        worker_pid = pid.as_raw(),
                        "replaced worker finished ({description})"
                    )
                }
                Role::Starting { .. }
                    if self.rotation.as_ref().is_some_and(|r| r.worker == pid) =>
                {
                    self.rotation_failed(&format!(
                        "the new worker exited before serving ({description})"
                    ));
                }
                Role::Starting { .. } | Role::Current => {
                    error!("worker exited unexpectedly ({description}); exiting with failure so that systemd restarts the service");
                    return Some(ExitCode::from(1));
                }
            }
        }
        if self.stop_deadline.is_some() && self.workers.is_empty() {
            info!("every worker stopped; exiting");
            return Some(ExitCode::SUCCESS);
        }
        None
    }
}

fn same_page(a: &KeySource, b: &KeySource) -> bool {
    match (a, b) {
        (KeySource::Key(a), KeySource::Key(b)) => std::ptr::eq(a.bytes(), b.bytes()),
        _ => false,
    }
}

/// Whether this process has one thread (fork is only safe then).
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").map_or(true, |tasks| tasks.count() == 1)
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants it with `RELOADING=1`.
fn monotonic_usec() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return 0;
    }
    now.tv_sec as u128 * 1_000_000 + now.tv_nsec as u128 / 1_000
}

fn announce_serving(worker: Pid, port: Option<u16>, server_info: Option<&Path>) {
    if let (Some(path), Some(port)) = (server_info, port) {
        if let Err(e) = write_server_info(path, port, std::process::id()) {
            error!("cannot write --server-info {}: {e}", path.display());
        }
    }
    if let Err(e) = notify::notify("READY=1") {
        warn!("sd_notify READY=1 failed: {e}");
    }
    info!(
        port = port.unwrap_or(0),
        worker_pid = worker.as_raw(),
        "serving"
    );
}

/// Writes `{"port":…,"pid":…}` for `--server-info`: replaced atomically, never through a link
/// or into a file a user planted (the directory may be `/tmp`), root's own file, mode 0644.
fn write_server_info(path: &Path, port: u16, pid: u32) -> std::io::Result<()> {
    let line = format!("{{\"port\":{port},\"pid\":{pid}}}\n");
    crate::atomic_file::replace(path, line.as_bytes(), 0o644)
}
