use clap::Parser;
use posthog_patterns::{cli::Cli, error::exit_code_of, run};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // The whole cause chain on one line; messages never carry secrets.
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code_of(&err))
        }
    }
}
