//! posthog-patterns: moves PostHog events into a webhook that takes JSON arrays.
//!
//! Data flows one way: `source` (PostHog) -> `batcher` -> `sink` (webhook) -> `checkpoint`,
//! wired by `pipeline`; each command (`backfill`, `demo`) is a front on that pipeline.

pub mod backfill;
pub mod batcher;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod event;
pub mod http;
pub mod job;
pub mod pipeline;
pub mod posthog;
pub mod progress;
pub mod ratelimit;
pub mod retry;
pub mod secret;
pub mod sink;
pub mod source;
pub mod standin;

use cli::{Cli, Command, OutputArgs};
use error::Stop;
use progress::{Level, Options, Progress};
use std::future::Future;
use std::sync::Arc;

/// Runs a parsed command line; returns the exit code, or the error that ended the run.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Backfill(args) => {
                let cfg = backfill::BackfillConfig::from_args(&args)?;
                let progress = progress(&args.output, Level::Info);
                finish(
                    &progress,
                    interruptible(backfill::run(&cfg, &progress)).await,
                )
            }
            Command::Demo(args) => {
                let progress = progress(&args.output, Level::Info);
                finish(&progress, interruptible(demo::run(&args, &progress)).await)
            }
        }
    })
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
    progress.summary(Level::Info, &report.summary);
    Ok(report.exit)
}

/// Ends the run on Ctrl-C or SIGTERM. Checkpoints are written synchronously between awaits,
/// so stopping here never leaves one half-written.
async fn interruptible<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Err(Stop::Interrupted.into()),
        _ = term.recv() => Err(Stop::Interrupted.into()),
    }
}
