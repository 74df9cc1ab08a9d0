//! Entry point: parse the command line, then hand over to the supervisor.

use clap::{CommandFactory, Parser};
use codex_responses_api_proxy::{cli::Cli, supervisor};
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
    supervisor::run(cli)
}
