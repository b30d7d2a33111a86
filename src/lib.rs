//! posthog-patterns: moves PostHog events into a webhook that takes JSON arrays.
//!
//! Data flows one way: `source` (PostHog) -> `batcher` -> `sink` (webhook) -> `checkpoint`,
//! wired by `pipeline`; each command (`backfill`, `sync`, `export`, `send`, `demo`) is a front
//! on that pipeline. docs/architecture.md maps the files.

pub mod backfill;
pub mod batcher;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod demo;
pub mod error;
pub mod event;
pub mod export;
pub mod http;
pub mod job;
pub mod ndjson;
pub mod pipeline;
pub mod posthog;
pub mod progress;
pub mod ratelimit;
pub mod retry;
pub mod secret;
pub mod send;
pub mod sink;
pub mod source;
pub mod standin;
pub mod sync;

use clap::CommandFactory;
use cli::{CheckedCommand, Cli, Command, ConfigCommand, OutputArgs};
use config_file::ConfigFile;
use progress::{Level, Options, Progress};
use std::future::Future;
use std::sync::Arc;

/// Runs a parsed command line (`matches` tells which values the user gave, so that a
/// `--config` file fills in only the rest); returns the exit code, or the error that ended it.
pub fn run(mut cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<u8> {
    let file = cli.config.as_deref().map(ConfigFile::load).transpose()?;
    let sub = matches.subcommand().map(|(_, m)| m);
    if let (Some(file), Some(m)) = (&file, sub) {
        match &mut cli.command {
            Command::Backfill(a) => file.backfill(m, a)?,
            Command::Sync(a) => file.sync(m, a)?,
            Command::Export(a) => file.export(m, a)?,
            Command::Send(a) => file.send(m, a)?,
            Command::Config(ConfigCommand::Check { command }) => {
                let m = m
                    .subcommand()
                    .and_then(|(_, m)| m.subcommand())
                    .map(|(_, m)| m)
                    .expect("a checked command");
                match command {
                    CheckedCommand::Backfill(a) => file.backfill(m, a)?,
                    CheckedCommand::Sync(a) => file.sync(m, a)?,
                    CheckedCommand::Export(a) => file.export(m, a)?,
                    CheckedCommand::Send(a) => file.send(m, a)?,
                }
            }
            _ => {}
        }
    }
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "posthog-patterns",
                &mut std::io::stdout(),
            );
            return Ok(error::EXIT_OK);
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(error::EXIT_OK);
        }
        Command::Config(ConfigCommand::Check { command }) => return check::run(&command),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Backfill(args) => {
                let cfg = backfill::BackfillConfig::from_args(&args)?;
                let progress = progress(&args.output, Level::Info);
                finish(&progress, resumable(backfill::run(&cfg, &progress)).await)
            }
            Command::Sync(args) => {
                let cfg = sync::SyncConfig::from_args(&args)?;
                // Cron: silent on success unless -v.
                let progress = progress(&args.output, Level::Warn);
                finish(&progress, resumable(sync::run(&cfg, &progress)).await)
            }
            Command::Export(args) => {
                let cfg = export::ExportConfig::from_args(&args)?;
                let progress = progress(&args.display, Level::Info);
                finish(&progress, resumable(export::run(&cfg, &progress)).await)
            }
            Command::Send(args) => {
                let cfg = send::SendConfig::from_args(&args)?;
                let progress = progress(&args.output, Level::Info);
                // send handles interruption itself: from stdin, the hint depends on progress.
                finish(&progress, send::run(&cfg, &progress).await)
            }
            Command::Demo(args) => {
                let progress = progress(&args.output, Level::Info);
                finish(&progress, resumable(demo::run(&args, &progress)).await)
            }
            Command::Completions { .. } | Command::Man | Command::Config(_) => {
                unreachable!("handled above")
            }
        }
    });
    // A reader blocked on stdin (send) must not keep an interrupted process alive.
    runtime.shutdown_background();
    result
}

fn progress(args: &OutputArgs, default_level: Level) -> Arc<Progress> {
    Arc::new(Progress::new(&Options {
        mode: args.progress,
        quiet: args.quiet,
        verbose: args.verbose,
        log_format: args.log_format,
        default_level,
    }))
}

fn finish(progress: &Progress, result: anyhow::Result<backfill::Report>) -> anyhow::Result<u8> {
    progress.finish();
    let report = result?;
    if !report.summary.is_empty() {
        progress.summary(Level::Info, &report.summary);
    }
    Ok(report.exit)
}

/// The work of a command that keeps a checkpoint, stopped by Ctrl-C or SIGTERM.
async fn resumable<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    error::interruptible(work, || error::RESUME_HINT.to_string()).await
}
