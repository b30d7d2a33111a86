//! posthog-patterns: moves PostHog events into a webhook that takes JSON arrays.
//!
//! Data flows one way: `posthog` (the source) -> `pipeline` (batcher, ledger) -> `sinks`
//! (webhook, NDJSON, dead letters) -> `state` (checkpoints). `commands` holds one module per
//! subcommand and the runner they share; `settings` turns flags, environment and `--config`
//! values into checked settings; `net` is HTTP, retries and the request budget.
//! docs/architecture.md maps the files.

mod cli;
mod commands;
mod domain;
mod error;
mod event;
mod log;
mod metrics;
mod ndjson;
mod net;
mod pipeline;
mod posthog;
mod progress;
mod secret;
mod settings;
mod sinks;
mod state;

#[cfg(test)]
mod properties;

use std::process::ExitCode;

/// The whole program: parse the command line (and `--config` file), run the command, and turn
/// the outcome into an exit code (docs/exit-codes.md).
pub fn main() -> ExitCode {
    let mut format = log::LogFormat::Text;
    let result =
        settings::file::parse(std::env::args_os().collect(), &mut format).and_then(commands::run);
    let json = format == log::LogFormat::Json;
    match result {
        Ok(code) => ExitCode::from(code),
        // `--if-locked skip`: another run is at work, and cron wants no mail about it.
        Err(err) if error::exit_code_of(&err) == error::EXIT_OK => ExitCode::SUCCESS,
        Err(err) => {
            // The whole cause chain on one line; messages never carry secrets.
            let msg = secret::redact(&format!("{err:#}"));
            let code = error::exit_code_of(&err);
            if json {
                let fields = [("exit_code".to_string(), code.into())]
                    .into_iter()
                    .collect();
                log::to_stderr(&log::json_line(log::Level::Error, &msg, fields));
            } else {
                log::to_stderr(&format!("error: {msg}"));
            }
            ExitCode::from(code)
        }
    }
}
