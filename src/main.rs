//! Entry point, and the one place that names both sides of the privilege boundary: parse the
//! command line; then either run the `usage` report or print the man page, or let the root
//! side prepare (`supervisor::prepare`), fork, and give each process its half — the child
//! confines itself (`Sandbox::enter`) and serves (`worker::run`), the parent supervises
//! (`Supervision::run`).

use clap::{CommandFactory, Parser};
use codex_responses_api_proxy::{
    fork_failed, prepare, run_worker, usage_command, Cli, Command, Prepared,
    DEFAULT_STATE_DIRECTORY,
};
use nix::unistd::{fork, ForkResult};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.man_page {
        let page = clap_mangen::Man::new(Cli::command());
        return match page.render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        };
    }
    if let Some(Command::Usage { since, until, json }) = &cli.command {
        let dir = cli
            .state_directory
            .clone()
            .unwrap_or_else(|| DEFAULT_STATE_DIRECTORY.into());
        return match usage_command(&dir, since, until, *json) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("codex-responses-api-proxy usage: {e}");
                ExitCode::from(1)
            }
        };
    }
    let Prepared {
        handover,
        supervision,
        sandbox,
    } = match prepare(&cli) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    // SAFETY: the process is single-threaded here (no runtime, no threads were started).
    match unsafe { fork() } {
        Err(e) => fork_failed(e),
        Ok(ForkResult::Child) => {
            drop(supervision);
            let code = match sandbox.enter(&handover) {
                Ok(()) => run_worker(&cli, handover),
                Err(e) => {
                    tracing::error!("{e}");
                    1
                }
            };
            std::process::exit(code);
        }
        Ok(ForkResult::Parent { child }) => {
            // The key page stays mapped in the supervisor; its copies of the worker's
            // descriptors (listeners, the worker's pipe ends) close here.
            drop(handover);
            supervision.run(child, sandbox.user_name())
        }
    }
}
