//! Entry point, and the one place that names both sides of the privilege boundary: parse the
//! command line (refusing proxy credentials on it, where every user can read them); then either run the `usage` report, hand a running service a new key
//! (`rotate-key`) or print the man page, or let the root side prepare (`supervisor::prepare`)
//! and supervise (`Supervision::run`), giving it the worker's entry point: every forked child
//! confines itself (`Sandbox::enter`, in the supervisor's fork) and then serves (`worker::run`).

use clap::{CommandFactory, Parser};
use codex_responses_api_proxy::{
    prepare, proxy_credentials_on_the_command_line, rotate_key_command, run_worker, usage_command,
    Cli, Command, DEFAULT_STATE_DIRECTORY,
};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if proxy_credentials_on_the_command_line(&args) {
        eprintln!("codex-responses-api-proxy: --upstream-proxy on the command line carries credentials, which every local user can read in /proc; give the URL in CODEX_PROXY_UPSTREAM_PROXY (e.g. in /etc/default/codex-responses-api-proxy) instead");
        return ExitCode::from(2);
    }
    drop(args);
    let cli = Cli::parse();
    if cli.man_page {
        let page = clap_mangen::Man::new(Cli::command());
        return match page.render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        };
    }
    match &cli.command {
        Some(Command::Usage { since, until, json }) => {
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
        Some(Command::RotateKey { control_socket }) => {
            return rotate_key_command(control_socket);
        }
        None => {}
    }
    let supervision = match prepare(&cli) {
        Ok(supervision) => supervision,
        Err(code) => return code,
    };
    // Called in each forked worker, after it entered the sandbox.
    supervision.run(&|handover| run_worker(&cli, handover))
}
