//! posthog-patterns: moves PostHog events into a webhook that takes JSON arrays.
//!
//! Data flows one way: `posthog` (the source) -> `pipeline` (batcher, ledger) -> `sinks`
//! (webhook, NDJSON, dead letters) -> `state` (checkpoints). `commands` holds one module per
//! subcommand and the runner they share; `settings` turns flags, environment and `--config`
//! values into checked settings; `net` is HTTP, retries and the request budget.
//! docs/architecture.md maps the files.

mod cli;
mod commands;
mod error;
mod event;
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
    let result = settings::file::parse(std::env::args_os().collect()).and_then(commands::run);
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // The whole cause chain on one line; messages never carry secrets.
            eprintln!("error: {}", secret::redact(&format!("{err:#}")));
            ExitCode::from(error::exit_code_of(&err))
        }
    }
}
