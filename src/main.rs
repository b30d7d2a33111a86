use clap::{CommandFactory, FromArgMatches};
use posthog_patterns::{cli::Cli, error::exit_code_of, run};
use std::process::ExitCode;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli, &matches) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // The whole cause chain on one line; messages never carry secrets.
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code_of(&err))
        }
    }
}
