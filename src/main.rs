//! Entry point: parse the command line, then hand over to the supervisor (or run the
//! `usage` report, or print the man page).

use clap::{CommandFactory, Parser};
use codex_responses_api_proxy::cli::{Cli, Command, DEFAULT_STATE_DIRECTORY};
use codex_responses_api_proxy::{supervisor, usage};
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
        return match usage::report::usage_command(&dir, since, until, *json) {
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
    supervisor::run(cli)
}
