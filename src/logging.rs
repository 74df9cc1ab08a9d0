//! Logging: journald (structured fields, queryable with `journalctl FIELD=value`) when the
//! service runs under systemd, else stderr. Third-party crates are capped at `info` so that no
//! level of verbosity can make them print request or header internals.

use std::str::FromStr;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. Creates no threads (safe before fork).
pub fn init(level: &str) -> Result<(), String> {
    let level = LevelFilter::from_str(level).map_err(|_| {
        format!("invalid log level {level:?}: use error, warn, info, debug or trace")
    })?;
    let third_party = level.min(LevelFilter::INFO);
    let filter = Targets::new()
        .with_default(third_party)
        .with_target("codex_responses_api_proxy", level);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(journald.with_syslog_identifier("codex-responses-api-proxy".into()))
                .with(filter)
                .init();
            return Ok(());
        }
    }
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(false),
        )
        .with(filter)
        .init();
    Ok(())
}
