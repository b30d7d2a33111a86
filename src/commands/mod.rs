//! The commands. `backfill`, `sync`, `export` and `send` each describe their job; `runner`
//! carries every job out the same way, and `report` ends the run (summary, exit code,
//! metrics). `check` reads the same settings and states without running anything; `demo` runs
//! `backfill` against the stand-ins.

pub(crate) mod backfill;
pub(crate) mod check;
pub(crate) mod completions;
#[cfg(feature = "demo")]
pub(crate) mod demo;
pub(crate) mod export;
pub(crate) mod man;
pub(crate) mod reading;
pub(crate) mod report;
pub(crate) mod runner;
pub(crate) mod send;
pub(crate) mod sync;

use crate::cli::{Cli, Command, ConfigCommand};
use crate::error::EXIT_OK;
use crate::log::Level;

/// Runs a parsed command line; returns the exit code, or the error that ended the run.
pub(crate) fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Completions { shell } => {
            man::print_stdout(completions::script(shell).as_bytes())?;
            return Ok(EXIT_OK);
        }
        Command::Man { output } => {
            man::run(output.as_deref())?;
            return Ok(EXIT_OK);
        }
        Command::Config(ConfigCommand::Check { command, .. }) => return check::run(&command),
        _ => {}
    }
    if let Some(checked) = cli.command.dry_run() {
        return check::run(&checked);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Backfill(args) => {
                let cfg = backfill::BackfillConfig::from_args(&args)?;
                let progress = report::progress(&args.deliver.output, Level::Info);
                let result = backfill::run(&cfg, &progress).await;
                report::finish(&progress, result, args.deliver.output.metrics("backfill"))
            }
            Command::Sync(args) => {
                let cfg = sync::SyncConfig::from_args(&args)?;
                // Cron: silent on success unless -v.
                let progress = report::progress(&args.deliver.output, Level::Warn);
                let result = sync::run(&cfg, &progress).await;
                report::finish(&progress, result, args.deliver.output.metrics("sync"))
            }
            Command::Export(args) => {
                let cfg = export::ExportConfig::from_args(&args)?;
                let progress = report::progress(&args.display, Level::Info);
                let result = export::run(&cfg, &progress).await;
                report::finish(&progress, result, args.display.metrics("export"))
            }
            Command::Send(args) => {
                let cfg = send::SendConfig::from_args(&args)?;
                let progress = report::progress(&args.deliver.output, Level::Info);
                let result = send::run(&cfg, &progress).await;
                report::finish(&progress, result, args.deliver.output.metrics("send"))
            }
            Command::Demo(args) => demo(&args).await,
            Command::Completions { .. } | Command::Man { .. } | Command::Config(_) => {
                unreachable!("handled above")
            }
        }
    });
    // A reader blocked on stdin (send) must not keep an interrupted process alive.
    runtime.shutdown_background();
    result
}

#[cfg(feature = "demo")]
async fn demo(args: &crate::cli::DemoArgs) -> anyhow::Result<u8> {
    let progress = report::progress(&args.output, Level::Info);
    let result = demo::run(args, &progress).await;
    report::finish(&progress, result, args.output.metrics("demo"))
}

#[cfg(not(feature = "demo"))]
async fn demo(_: &crate::cli::DemoArgs) -> anyhow::Result<u8> {
    Err(crate::error::usage(
        "this build has no demo: it needs the cargo feature `demo` (on by default), which builds the PostHog and webhook stand-ins in; rebuild without --no-default-features",
    ))
}
