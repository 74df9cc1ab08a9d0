//! Running the real Codex CLI in tests: finding its binary (`CODEX_BIN`, see
//! `tests/install-codex.sh`), running `codex exec` with a model provider that points at the
//! proxy, choosing the sandbox Codex can use here, and killing it (with every command it
//! started) when it hangs.
//!
//! Without `CODEX_BIN` the tests print "skipped: CODEX_BIN not set" and pass, except under CI
//! (env `CI` set) where they fail. Test crates using this module also declare `mod common;`.
#![allow(dead_code)]

mod responses_stream;
#[allow(unused_imports)]
pub use responses_stream::ResponsesStream;

use crate::common::Proxy;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub const CODEX_VERSION: &str = "0.169.0";
pub const CODEX_TIMEOUT: Duration = Duration::from_secs(120);
/// The key Codex itself sends to the proxy; the proxy must replace it with TEST_KEY.
pub const CODEX_SIDE_KEY: &str = "codex-side-dummy-key";
/// The model Codex is told to use; it decides Codex's tool set (gpt-5.5 gets `apply_patch`
/// as a freeform tool).
pub const MODEL: &str = "gpt-5.5";

/// The Codex binary from `CODEX_BIN`; `None` means "skip this test".
pub fn codex_bin() -> Option<PathBuf> {
    match std::env::var_os("CODEX_BIN") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "CODEX_BIN={} is not a file; install it with tests/install-codex.sh",
                path.display()
            );
            Some(path)
        }
        None if std::env::var_os("CI").is_some() => panic!(
            "CODEX_BIN is not set but CI is: install the Codex CLI with \
             `npm install @openai/codex@{CODEX_VERSION}` (or tests/install-codex.sh) and set \
             CODEX_BIN to its binary"
        ),
        None => {
            eprintln!("skipped: CODEX_BIN not set");
            None
        }
    }
}

/// A scratch directory outside /tmp: Codex refuses to create its helper-binary aliases when
/// CODEX_HOME is under a temporary directory (it warns and goes on without them).
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("codex-cli-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// Which sandbox `codex exec` ran with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sandbox {
    /// `-s workspace-write`: Codex's own bubblewrap sandbox (what users run).
    WorkspaceWrite,
    /// `--dangerously-bypass-approvals-and-sandbox`: user namespaces are not available here.
    Bypassed,
}

impl Sandbox {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Sandbox::WorkspaceWrite => &["-s", "workspace-write"],
            Sandbox::Bypassed => &["--dangerously-bypass-approvals-and-sandbox"],
        }
    }
}

/// `workspace-write` (what users run, and what apply_patch needs) relies on Codex's
/// bubblewrap, which needs user namespaces; we ask Codex's own `codex sandbox` whether it
/// works here, and fall back to no sandbox otherwise.
pub fn choose_sandbox(codex: &Path, home: &Path, workdir: &Path) -> Sandbox {
    let probe = std::process::Command::new(codex)
        .args(["sandbox", "-c", "sandbox_mode=\"workspace-write\"", "--"])
        .args([
            "sh",
            "-c",
            "echo probe > .sandbox-probe && cat .sandbox-probe",
        ])
        .current_dir(workdir)
        .env("CODEX_HOME", home)
        .stdin(Stdio::null())
        .output()
        .expect("run codex sandbox");
    let _ = std::fs::remove_file(workdir.join(".sandbox-probe"));
    if probe.status.success() && String::from_utf8_lossy(&probe.stdout).trim() == "probe" {
        Sandbox::WorkspaceWrite
    } else {
        eprintln!(
            "note: Codex's workspace-write sandbox does not work here ({}: {}); \
             running without a sandbox",
            probe.status,
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        Sandbox::Bypassed
    }
}

pub struct CodexRun {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub sandbox: Sandbox,
}

/// Runs `codex exec PROMPT` in `workdir` against the Responses endpoint `base_url`
/// (`http://host:port/v1`), with a fresh CODEX_HOME, stdin from /dev/null, no retries,
/// and a hard timeout after which the whole process group is killed.
pub async fn run_codex(codex: &Path, base_url: &str, workdir: &Path, prompt: &str) -> CodexRun {
    run_codex_with(codex, base_url, workdir, prompt, &[]).await
}

/// [`run_codex`] with extra `-c key=value` config overrides.
pub async fn run_codex_with(
    codex: &Path,
    base_url: &str,
    workdir: &Path,
    prompt: &str,
    config: &[&str],
) -> CodexRun {
    let home = scratch_dir();
    let sandbox = choose_sandbox(codex, home.path(), workdir);
    let provider = format!(
        "model_providers.proxy={{name='proxy',base_url='{base_url}',env_key='CODEX_TEST_PROVIDER_KEY',\
         wire_api='responses',request_max_retries=0,stream_max_retries=0}}"
    );
    let mut command = tokio::process::Command::new(codex);
    command
        .arg("exec")
        .args(["--skip-git-repo-check", "--ephemeral"])
        .args(sandbox.flags())
        .arg("-C")
        .arg(workdir)
        .args(["-c", &provider, "-c", "model_provider=proxy", "-m", MODEL]);
    for setting in config {
        command.args(["-c", setting]);
    }
    command.env("CODEX_TEST_PROVIDER_KEY", CODEX_SIDE_KEY);
    finish_codex(command, home.path(), workdir, prompt, sandbox).await
}

/// Runs `codex exec PROMPT` configured the way users point Codex at the proxy: the built-in
/// `openai` provider with `openai_base_url = "{base_url}"` in `$CODEX_HOME/config.toml`. That
/// provider sends no `Authorization` header and tries a WebSocket on `GET /v1/responses`
/// first, then HTTP POST.
pub async fn run_codex_builtin(
    codex: &Path,
    base_url: &str,
    workdir: &Path,
    prompt: &str,
) -> CodexRun {
    run_codex_builtin_with(codex, base_url, workdir, prompt, &[]).await
}

/// [`run_codex_builtin`] with extra `-c key=value` config overrides.
pub async fn run_codex_builtin_with(
    codex: &Path,
    base_url: &str,
    workdir: &Path,
    prompt: &str,
    config: &[&str],
) -> CodexRun {
    let home = scratch_dir();
    std::fs::write(
        home.path().join("config.toml"),
        format!("openai_base_url = \"{base_url}\"\nmodel = \"{MODEL}\"\n"),
    )
    .unwrap();
    let sandbox = choose_sandbox(codex, home.path(), workdir);
    let mut command = tokio::process::Command::new(codex);
    command
        .arg("exec")
        .args(["--skip-git-repo-check", "--ephemeral"])
        .args(sandbox.flags())
        .arg("-C")
        .arg(workdir);
    for setting in config {
        command.args(["-c", setting]);
    }
    finish_codex(command, home.path(), workdir, prompt, sandbox).await
}

/// Adds the prompt and a clean environment to a `codex exec` command, runs it with the hard
/// timeout and collects what it printed.
async fn finish_codex(
    mut command: tokio::process::Command,
    home: &Path,
    workdir: &Path,
    prompt: &str,
    sandbox: Sandbox,
) -> CodexRun {
    command
        .arg(prompt)
        .current_dir(workdir)
        .env("CODEX_HOME", home)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("CODEX_API_KEY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let child = command.spawn().expect("start codex");
    let group = child.id().expect("codex pid") as i32;
    match tokio::time::timeout(CODEX_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => {
            let output = output.expect("wait for codex");
            CodexRun {
                status: output.status,
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                elapsed: started.elapsed(),
                sandbox,
            }
        }
        Err(_) => {
            // Dropping the future killed codex itself; take the commands it started with it.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
            panic!("codex exec did not finish within {CODEX_TIMEOUT:?}");
        }
    }
}

impl CodexRun {
    pub fn assert_success(&self, proxy: &Proxy) {
        assert!(
            self.status.success(),
            "codex exec failed with {} after {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- proxy stderr\n{}",
            self.status,
            self.elapsed,
            self.stdout,
            self.stderr,
            proxy.stderr()
        );
    }
}

/// Lines Codex prints when its WebSocket failed and it went back to HTTP.
pub const WEBSOCKET_FALLBACK_SIGNS: [&str; 4] = [
    "Falling back",
    "Reconnecting",
    "failed to connect to Responses WebSocket",
    "ERROR",
];

impl CodexRun {
    /// Codex used its WebSocket throughout: none of its fallback or retry lines were printed.
    pub fn assert_no_websocket_fallback(&self) {
        for sign in WEBSOCKET_FALLBACK_SIGNS {
            for (stream, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
                assert!(
                    !text.contains(sign),
                    "Codex printed {sign:?} on {stream}:\n{text}"
                );
            }
        }
    }
}
