//! How a run ends: its [`Report`] (exit code and summary), the display it is shown on, the
//! figures of a closing summary, and `--metrics-file`.

use crate::cli::OutputArgs;
use crate::log::Level;
use crate::pipeline::ledger::Stats;
use crate::progress::{Options, Progress, count, human_duration};
use indicatif::HumanCount;
use std::sync::Arc;

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

/// The display for a command's `OutputArgs`.
pub(crate) fn progress(args: &OutputArgs, default_level: Level) -> Arc<Progress> {
    // The run's ledger, which the display shows.
    let ledger = Arc::default();
    let progress = Arc::new(Progress::new(
        &Options {
            mode: args.progress,
            quiet: args.quiet,
            verbose: args.verbose,
            log_format: args.log_format,
            default_level,
        },
        ledger,
    ));
    // The run's words go to the logger, shown above the bars if there are any.
    crate::log::init(progress.level(), args.log_format, progress.bars());
    progress
}

/// Clears the display, prints the summary (with `--log-format json`, one summary object for
/// every run, failed ones too), and gives the exit code.
/// With `--metrics-file`, the run's metrics are written last (a failure to write them is a
/// warning: the run's own outcome stands).
pub(crate) fn finish(
    progress: &Progress,
    result: anyhow::Result<Report>,
    metrics: Option<crate::metrics::Target>,
) -> anyhow::Result<u8> {
    progress.finish();
    let exit = match &result {
        Ok(report) => report.exit,
        Err(e) => crate::error::exit_code_of(e),
    };
    // (`--if-locked skip` ends as an error with exit 0: no run took place.)
    let ran = result.is_ok() || exit != crate::error::EXIT_OK;
    if let Some(target) = metrics.filter(|_| ran)
        && let Err(e) = crate::metrics::write(&target, progress, exit)
    {
        tracing::warn!("{e:#}");
    }
    let report = match result {
        Ok(report) => report,
        // `--if-locked skip`: no run took place, and cron wants no word about it.
        Err(e) if !ran => return Err(e),
        Err(e) => {
            progress.failed_summary(exit);
            return Err(e);
        }
    };
    progress.summary(Level::Info, &report.summary, report.exit);
    Ok(report.exit)
}

/// `read … / posted … / retries … / took …` lines for a summary. `posted` names what the
/// sink did (posted to the webhook, written to a file).
pub(crate) fn figures(progress: &Progress, posted: &str) -> String {
    let s = &progress.stats;
    let (read, dups, filtered) = (
        Stats::get(&s.read),
        Stats::get(&s.duplicates_dropped),
        Stats::get(&s.filtered),
    );
    let delivered = Stats::get(&s.posted);
    let secs = progress.elapsed().as_secs_f64().max(0.001);
    let notes: Vec<String> = [
        (dups, "duplicate row dropped", "duplicate rows dropped"),
        (filtered, "filtered out", "filtered out"),
    ]
    .into_iter()
    .filter(|(n, _, _)| *n > 0)
    .map(|(n, one, many)| count(n, one, many))
    .collect();
    let mut out = format!(
        "  read     {}{}{}\n  {posted:<8} {} in {}{}\n  retries  {}, waited {}\n  took     {} ({} events/s)",
        count(read, "event", "events"),
        match Stats::get(&s.source_requests) {
            0 => String::new(),
            n => format!(" in {}", count(n, "PostHog request", "PostHog requests")),
        },
        if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        },
        count(delivered, "event", "events"),
        count(Stats::get(&s.batches), "batch", "batches"),
        match Stats::get(&s.sink_requests) {
            0 => String::new(),
            n => format!(", {}", count(n, "webhook request", "webhook requests")),
        },
        Stats::get(&s.retries),
        human_duration(std::time::Duration::from_millis(Stats::get(&s.waited_ms))),
        human_duration(progress.elapsed()),
        HumanCount((delivered as f64 / secs) as u64),
    );
    let repaired = Stats::get(&s.repaired);
    if repaired > 0 {
        out.push_str(&format!(
            "\n  repaired {} (bytes that were not UTF-8 replaced by U+FFFD; the log names them)",
            count(repaired, "event", "events")
        ));
    }
    let dead = Stats::get(&s.dead_lettered);
    if dead > 0 {
        out.push_str(&format!(
            "\n  dead-lettered {} the webhook rejected",
            count(dead, "event", "events")
        ));
    }
    out
}
