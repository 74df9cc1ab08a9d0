//! The root side: hardening, key intake, the listening sockets (and the metrics socket), the fork of one worker, and
//! then a small loop that waits on the worker's pipe and on signals. The supervisor never
//! reads client input; it only learns "serving" and "shut down, please" from the worker.
//!
//! Uses: `crate::atomic_file`, `crate::cli`, `crate::contract`, `crate::logging`, `crate::sandbox`
//! and nix, secrecy, tracing.

pub(crate) mod hardening;
pub mod key;
pub(crate) mod listener;
pub(crate) mod metrics_socket;
pub(crate) mod notify;

use crate::cli::Cli;
use crate::contract::{Handover, KeySource, WorkerMessage, WorkerPipe};
use crate::sandbox::{privilege_drop, Sandbox};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Extra time the worker gets past its own grace period before it is killed.
const KILL_MARGIN: Duration = Duration::from_secs(5);

fn fail(message: impl std::fmt::Display) -> ExitCode {
    error!("{message}");
    ExitCode::from(1)
}

/// What root prepared before fork: the worker's half, the supervisor's half, and how the child
/// confines itself. `main.rs` forks and gives each process its half.
pub struct Prepared {
    pub handover: Handover,
    pub supervision: Supervision,
    pub sandbox: Sandbox,
}

/// The supervisor's half: its ends of the pipes, its signals, and what it announces.
pub struct Supervision {
    from_worker: OwnedFd,
    stop_request: OwnedFd,
    signal_fd: SignalFd,
    port: Option<u16>,
    server_info: Option<PathBuf>,
    stop_timeout: Duration,
    /// The metrics socket's file, removed when the service ends.
    metrics_socket: Option<PathBuf>,
}

/// Hardens the process, reads the secrets, opens the listeners and the pipes, and resolves the
/// worker user. Must be called while the process is single-threaded; an `Err` is the exit code
/// (the reason is logged).
pub fn prepare(cli: &Cli) -> Result<Prepared, ExitCode> {
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
    let secret = crate::cli::upstream_secret(&cli.upstream_auth_mode);
    let key = if secret == Some(crate::cli::UpstreamSecret::StaticKey) {
        key::load(credentials).map_err(fail)?
    } else {
        KeySource::NotConfigured
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
    // The supervisor→worker pipe: closing it tells the worker to drain and exit. (A signal
    // would need CAP_KILL across the uid change, which the unit does not grant.)
    let (stop_requested, stop_request) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| fail(format!("cannot create the supervisor pipe: {e}")))?;
    let (from_worker, to_supervisor) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| fail(format!("cannot create the supervisor pipe: {e}")))?;
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
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| fail(format!("cannot create a signalfd: {e}")))?;
    if let (Some(dir), Some(user)) = (&cli.state_directory, &worker_user) {
        hand_over_state_directory(dir, user).map_err(fail)?;
    }
    Ok(Prepared {
        handover: Handover {
            key,
            auth_json,
            client_api_key,
            upstream_tls,
            listeners,
            metrics: metrics.map(|m| m.listener),
            to_supervisor: WorkerPipe::new(to_supervisor),
            stop_requested,
        },
        supervision: Supervision {
            from_worker,
            stop_request,
            signal_fd,
            port,
            server_info: cli.server_info.clone(),
            stop_timeout: cli.shutdown_grace() + KILL_MARGIN,
            metrics_socket: metrics_path,
        },
        sandbox: Sandbox {
            user: worker_user,
            signals,
            syscall_filter: !cli.no_syscall_filter,
        },
    })
}

/// For `main.rs` when fork itself failed.
pub fn fork_failed(error: impl std::fmt::Display) -> ExitCode {
    fail(format!("cannot fork the worker: {error}"))
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
    /// In the parent after fork: logs the start, then supervises until the service ends.
    pub fn run(self, worker: Pid, worker_user: Option<&str>) -> ExitCode {
        info!(
            worker_pid = worker.as_raw(),
            worker_user = worker_user.unwrap_or("(unchanged)"),
            "worker started"
        );
        let code = supervise(
            worker,
            self.from_worker,
            self.stop_request,
            self.signal_fd,
            self.port,
            self.server_info.as_deref(),
            self.stop_timeout,
        );
        if let Some(path) = &self.metrics_socket {
            metrics_socket::remove(path);
        }
        code
    }
}

/// Waits for the worker's messages and for signals until the service should end.
fn supervise(
    worker: Pid,
    from_worker: OwnedFd,
    stop_request: OwnedFd,
    signal_fd: SignalFd,
    port: Option<u16>,
    server_info: Option<&Path>,
    stop_timeout: Duration,
) -> ExitCode {
    let mut pipe_open = true;
    let mut stop_deadline: Option<Instant> = None;
    let mut stop_request = Some(stop_request);
    let mut begin_stop = |why: &str, deadline: &mut Option<Instant>| {
        if deadline.is_none() {
            info!("stopping: {why}");
            let _ = notify::notify("STOPPING=1");
            // Closing our end is the worker's signal to drain.
            stop_request.take();
            *deadline = Some(Instant::now() + stop_timeout);
        }
    };
    loop {
        let timeout = match stop_deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // Without CAP_KILL (as under the packaged unit) the kill fails; exiting
                    // then still ends the worker: PR_SET_PDEATHSIG, and systemd stops the
                    // whole control group.
                    warn!("worker did not stop in time; killing it");
                    if kill(worker, Signal::SIGKILL).is_err() {
                        return ExitCode::SUCCESS;
                    }
                    stop_deadline = Some(Instant::now() + Duration::from_secs(5));
                    continue;
                }
                PollTimeout::try_from(left.as_millis().min(60_000) as u32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = vec![PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN)];
        if pipe_open {
            fds.push(PollFd::new(from_worker.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return fail(format!("poll failed: {e}")),
        }
        let pipe_ready = pipe_open
            && fds[1]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP));
        let signal_ready = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        drop(fds);
        if pipe_ready {
            let mut buf = [0u8; 64];
            match nix::unistd::read(&from_worker, &mut buf) {
                Ok(0) => pipe_open = false,
                Ok(n) => {
                    for byte in &buf[..n] {
                        match WorkerMessage::from_byte(*byte) {
                            Some(WorkerMessage::Serving) => {
                                announce_serving(worker, port, server_info)
                            }
                            Some(WorkerMessage::ShutdownRequested) => {
                                begin_stop("shutdown requested over HTTP", &mut stop_deadline)
                            }
                            None => warn!("unexpected byte {byte} from the worker"),
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => pipe_open = false,
            }
        }
        if signal_ready {
            while let Ok(Some(info)) = signal_fd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGTERM) => begin_stop("SIGTERM", &mut stop_deadline),
                    Ok(Signal::SIGINT) => begin_stop("SIGINT", &mut stop_deadline),
                    Ok(Signal::SIGHUP) => info!("SIGHUP ignored; restart the service to reload"),
                    _ => {}
                }
                if let Some(code) = reap(worker, stop_deadline.is_some()) {
                    return code;
                }
            }
        }
    }
}

/// Checks whether the worker has exited; returns the supervisor's exit code if so.
fn reap(worker: Pid, stopping: bool) -> Option<ExitCode> {
    let status = match waitpid(worker, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => return None,
        Ok(status) => status,
        Err(nix::errno::Errno::ECHILD) => return Some(ExitCode::from(1)),
        Err(_) => return None,
    };
    let description = match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("signal {signal}"),
        _ => return None,
    };
    if stopping {
        info!("worker stopped ({description}); exiting");
        Some(ExitCode::SUCCESS)
    } else {
        error!("worker exited unexpectedly ({description}); exiting with failure so that systemd restarts the service");
        Some(ExitCode::from(1))
    }
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
