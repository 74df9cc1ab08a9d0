//! The root side: hardening, key intake, the listening sockets, the fork of one worker, and
//! then a small loop that waits on the worker's pipe and on signals. The supervisor never
//! reads client input; it only learns "serving" and "shut down, please" from the worker.

pub mod hardening;
pub mod key;
pub mod listener;
pub mod notify;
pub mod privilege_drop;
mod server_info;
pub mod syscall_filter;

use crate::cli::Cli;
use crate::worker::access_control::AllowList;
use crate::worker::client_headers::ClientHeaderForwarding;
use crate::worker::upstream_auth::{AuthError, AuthMode};
use crate::worker::wrapper_routes::WrapperConfig;
use crate::worker::{self, AuthConfig, WorkerConfig};
use crate::wrapper::settings::WrapperSettings;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Bytes the worker writes to the supervisor's pipe.
pub const MSG_SERVING: u8 = b'R';
pub const MSG_SHUTDOWN: u8 = b'S';

/// Extra time the worker gets past its own grace period before it is killed.
const KILL_MARGIN: Duration = Duration::from_secs(5);

fn fail(message: impl std::fmt::Display) -> ExitCode {
    error!("{message}");
    ExitCode::from(1)
}

/// Runs the whole service. Must be called while the process is single-threaded.
pub fn run(cli: Cli) -> ExitCode {
    if let Err(e) = hardening::forbid_dumps() {
        eprintln!("codex-responses-api-proxy: cannot disable core dumps: {e}");
        return ExitCode::from(1);
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
        return ExitCode::from(2);
    }
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
    let auth = match auth_config(&cli, credentials.as_deref()) {
        Ok(auth) => auth,
        Err(e) => return fail(e),
    };
    // The static key is read only where it is used; the other modes take auth.json.
    let key = if auth.mode == AuthMode::ApiKey {
        match key::load(credentials.as_deref()) {
            Ok(key) => key,
            Err(e) => return fail(e),
        }
    } else {
        key::KeySource::NotConfigured
    };
    let upstream_url = match reqwest::Url::parse(&cli.upstream_url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => url,
        _ => {
            // The value is not repeated: a mistyped URL may carry credentials.
            return fail("--upstream-url (CODEX_PROXY_UPSTREAM_URL) is not an http(s) URL");
        }
    };
    let mut listeners = match listener::open(cli.port) {
        Ok(listeners) => listeners,
        Err(e) => return fail(e),
    };
    if let Some(path) = &cli.unix_socket {
        match listener::bind_unix(path) {
            Ok(unix) => listeners.push(unix),
            Err(e) => return fail(e),
        }
    }
    let allow = match AllowList::from_config(&cli.allow_users, &cli.allow_groups) {
        Ok(allow) => allow,
        Err(e) => return fail(e),
    };
    if let Some(allow) = &allow {
        info!("access limited to {}", allow.describe());
    }
    let port = listener::first_tcp_port(&listeners);
    let worker_user = match privilege_drop::resolve(cli.user.as_deref()) {
        Ok(user) => user,
        Err(e) => return fail(e),
    };
    // The supervisor→worker pipe: closing it tells the worker to drain and exit. (A signal
    // would need CAP_KILL across the uid change, which the unit does not grant.)
    let (stop_requested, stop_request) = match pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pair) => pair,
        Err(e) => return fail(format!("cannot create the supervisor pipe: {e}")),
    };
    let (from_worker, to_supervisor) = match pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pair) => pair,
        Err(e) => return fail(format!("cannot create the supervisor pipe: {e}")),
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
    if let Err(e) = signals.thread_block() {
        return fail(format!("cannot block signals: {e}"));
    }
    let signal_fd = match SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => return fail(format!("cannot create a signalfd: {e}")),
    };
    let wrapper = if cli.wrapper_routes {
        match wrapper_config(&cli, credentials.as_deref()) {
            Ok(wrapper) => Some(wrapper),
            Err(e) => return fail(e),
        }
    } else {
        None
    };
    if let (Some(dir), Some(user)) = (&auth.state_dir, &worker_user) {
        if let Err(e) = hand_over_state_directory(dir, user) {
            return fail(e);
        }
    }
    let mut config = WorkerConfig::from_cli(&cli, key, upstream_url, wrapper, auth);
    config.allow = allow;
    // SAFETY: the process is single-threaded here (no runtime, no threads were started).
    match unsafe { fork() } {
        Err(e) => fail(format!("cannot fork the worker: {e}")),
        Ok(ForkResult::Child) => {
            drop(from_worker);
            drop(stop_request);
            drop(signal_fd);
            let code = start_worker(
                config,
                listeners,
                to_supervisor,
                stop_requested,
                worker_user,
                signals,
                !cli.no_syscall_filter,
            );
            std::process::exit(code);
        }
        Ok(ForkResult::Parent { child }) => {
            drop(to_supervisor);
            drop(stop_requested);
            drop(listeners);
            info!(
                worker_pid = child.as_raw(),
                worker_user = worker_user
                    .as_ref()
                    .map(|u| u.name.as_str())
                    .unwrap_or("(unchanged)"),
                "worker started"
            );
            supervise(
                child,
                from_worker,
                stop_request,
                signal_fd,
                port,
                cli.server_info.as_deref(),
                cli.shutdown_grace() + KILL_MARGIN,
            )
        }
    }
}

/// Upstream authentication settings; reads the Codex auth.json (as root) when the mode needs it.
fn auth_config(cli: &Cli, credentials: Option<&Path>) -> Result<AuthConfig, String> {
    let mut mode: AuthMode = cli
        .upstream_auth_mode
        .parse()
        .map_err(|e: AuthError| e.to_string())?;
    if let AuthMode::ApiKeyFromAuthJson { field } = &mut mode {
        field.clone_from(&cli.auth_json_api_key_field);
    }
    let auth_json = if mode == AuthMode::ApiKey {
        None
    } else {
        let document = key::read_secret(credentials, "codex-auth", cli.codex_auth_file.as_deref())?
            .ok_or_else(|| {
                format!(
                    "UPSTREAM_AUTH_MODE={} needs a Codex auth.json: install it as the systemd credential codex-auth or pass --codex-auth-file",
                    cli.upstream_auth_mode
                )
            })?;
        use secrecy::ExposeSecret;
        Some(secrecy::SecretSlice::from(
            document.expose_secret().as_bytes().to_vec(),
        ))
    };
    Ok(AuthConfig {
        mode,
        auth_json,
        state_dir: cli.state_directory.clone(),
        token_url: cli.token_url.clone(),
        client_id: cli.oauth_client_id.clone(),
        refresh_after: Duration::from_secs(cli.token_refresh_days.saturating_mul(24 * 60 * 60)),
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

/// The wrapper routes' settings and secrets, checked before anything is served.
fn wrapper_config(cli: &Cli, credentials: Option<&Path>) -> Result<WrapperConfig, String> {
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
    let client_api_key = key::read_secret(
        credentials,
        "client-api-key",
        cli.client_api_key_file.as_deref(),
    )?;
    Ok(WrapperConfig {
        settings,
        client_api_key,
        ollama_url,
        forwarding,
    })
}

/// In the forked child: drop privileges, re-lock the key, install the seccomp filter,
/// unblock signals, then serve.
fn start_worker(
    config: WorkerConfig,
    listeners: Vec<listener::Listener>,
    to_supervisor: OwnedFd,
    stop_requested: OwnedFd,
    user: Option<privilege_drop::WorkerUser>,
    signals: SigSet,
    syscall_filter: bool,
) -> i32 {
    if let Err(e) = privilege_drop::drop_privileges(user.as_ref()) {
        error!("worker: cannot drop privileges: {e}");
        return 1;
    }
    if let key::KeySource::Key(header) = &config.key {
        if let Err(e) = header.lock_in_memory() {
            error!("worker: cannot lock the key in memory: {e}; raise LimitMEMLOCK=");
            return 1;
        }
    }
    if syscall_filter {
        if let Err(e) = syscall_filter::install() {
            error!(
                "worker: cannot install the seccomp filter: {e}; --no-syscall-filter disables it"
            );
            return 1;
        }
    }
    if let Err(e) = signals.thread_unblock() {
        error!("worker: cannot unblock signals: {e}");
        return 1;
    }
    worker::run(config, listeners, to_supervisor, stop_requested)
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
                    for message in &buf[..n] {
                        match *message {
                            MSG_SERVING => announce_serving(worker, port, server_info),
                            MSG_SHUTDOWN => {
                                begin_stop("shutdown requested over HTTP", &mut stop_deadline)
                            }
                            other => warn!("unexpected byte {other} from the worker"),
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
        if let Err(e) = server_info::write_server_info(path, port, std::process::id()) {
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

/// For the worker: tells the supervisor something over the inherited pipe.
pub fn tell_supervisor(pipe: &OwnedFd, message: u8) {
    // SAFETY: writing one byte from a valid buffer to a descriptor we own.
    unsafe {
        libc::write(pipe.as_raw_fd(), [message].as_ptr().cast(), 1);
    }
}
