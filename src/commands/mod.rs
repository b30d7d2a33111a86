//! The commands. `backfill`, `sync` and `export` read PostHog through the one shared runner
//! in `runner`; `send` reads NDJSON through the same pipeline; `check` asks the commands for
//! their plans; `demo` runs `backfill` against the stand-ins.

pub(crate) mod backfill;
pub(crate) mod check;
pub(crate) mod completions;
#[cfg(feature = "demo")]
pub(crate) mod demo;
pub(crate) mod export;
pub(crate) mod man;
pub(crate) mod runner;
pub(crate) mod send;
pub(crate) mod sync;

/// How a run ended, for the exit code and the closing lines.
pub(crate) struct Report {
    pub(crate) exit: u8,
    pub(crate) summary: String,
}

impl Report {
    /// A run that ended well with this summary (exit 0).
    pub(crate) fn ok(summary: String) -> Self {
        Report {
            exit: crate::error::EXIT_OK,
            summary,
        }
    }
}

use crate::cli::{Cli, Command, ConfigCommand};
use crate::error::EXIT_OK;
use crate::progress::Level;

/// Runs a parsed command line; returns the exit code, or the error that ended the run.
pub(crate) fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Completions { shell } => {
            print_stdout(completions::script(shell).as_bytes())?;
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
                let mut cfg = backfill::BackfillConfig::from_args(&args)?;
                let progress = runner::progress(&args.deliver.output, Level::Info);
                let deadline = cfg.retries.max_run_time;
                runner::finish(
                    &progress,
                    runner::resumable(backfill::run(&mut cfg, &progress), deadline).await,
                    args.deliver.output.metrics("backfill"),
                )
            }
            Command::Sync(args) => {
                let cfg = sync::SyncConfig::from_args(&args)?;
                // Cron: silent on success unless -v.
                let progress = runner::progress(&args.deliver.output, Level::Warn);
                runner::finish(
                    &progress,
                    runner::resumable(sync::run(&cfg, &progress), cfg.retries.max_run_time).await,
                    args.deliver.output.metrics("sync"),
                )
            }
            Command::Export(args) => {
                let mut cfg = export::ExportConfig::from_args(&args)?;
                let progress = runner::progress(&args.display, Level::Info);
                let deadline = cfg.retries.max_run_time;
                runner::finish(
                    &progress,
                    runner::resumable(export::run(&mut cfg, &progress), deadline).await,
                    args.display.metrics("export"),
                )
            }
            Command::Send(args) => {
                let cfg = send::SendConfig::from_args(&args)?;
                let progress = runner::progress(&args.deliver.output, Level::Info);
                // send handles interruption itself: from stdin, the hint depends on progress.
                runner::finish(
                    &progress,
                    send::run(&cfg, &progress).await,
                    args.deliver.output.metrics("send"),
                )
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

/// Writes `text` to stdout; a reader that stops early (`| head`) is not an error.
fn print_stdout(text: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

#[cfg(feature = "demo")]
async fn demo(args: &crate::cli::DemoArgs) -> anyhow::Result<u8> {
    let progress = runner::progress(&args.output, Level::Info);
    runner::finish(
        &progress,
        runner::resumable(demo::run(args, &progress), None).await,
        args.output.metrics("demo"),
    )
}

#[cfg(not(feature = "demo"))]
async fn demo(_: &crate::cli::DemoArgs) -> anyhow::Result<u8> {
    Err(crate::error::usage(
        "this build has no demo: it needs the cargo feature `demo` (on by default), which builds the PostHog and webhook stand-ins in; rebuild without --no-default-features",
    ))
}
