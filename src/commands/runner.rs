//! What the commands share: the display, stopping on Ctrl-C or SIGTERM, running a source
//! through the pipeline into a sink with the ledger check at the end, and the figures of a
//! closing summary. A command is then only its job identity, its positions and its summary.

use super::Report;
use crate::cli::OutputArgs;
use crate::domain::{Cursor, Range};
use crate::error::Stop;
use crate::pipeline::ledger::Stats;
use crate::pipeline::{self, Deliver, Delivered, Item, Posting};
use crate::posthog::source::Reader;
use crate::progress::{Level, Options, Progress, count, human_duration};
use indicatif::HumanCount;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The display for a command's `OutputArgs`.
pub(crate) fn progress(args: &OutputArgs, default_level: Level) -> Arc<Progress> {
    Arc::new(Progress::new(&Options {
        mode: args.progress,
        quiet: args.quiet,
        verbose: args.verbose,
        log_format: args.log_format,
        default_level,
    }))
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
        progress.warn(&format!("{e:#}"));
    }
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            progress.failed_summary(exit);
            return Err(e);
        }
    };
    progress.summary(Level::Info, &report.summary, report.exit);
    Ok(report.exit)
}

/// The work of a command that keeps a checkpoint, stopped by Ctrl-C, SIGTERM or
/// `--max-run-time` (`deadline`).
pub(crate) async fn resumable<T>(
    work: impl Future<Output = anyhow::Result<T>>,
    deadline: Option<std::time::Duration>,
) -> anyhow::Result<T> {
    interruptible(work, deadline, || RESUME_HINT.to_string()).await
}

/// What to do after an interruption, for commands that keep a checkpoint.
pub(crate) const RESUME_HINT: &str =
    "the checkpoint holds every acknowledged batch, so running the same command again resumes";

/// Ends `work` on Ctrl-C or SIGTERM with [`Stop::Interrupted`] and the text `hint` gives then,
/// and after `deadline` (`--max-run-time`) with [`Stop::Temporary`]. Checkpoints are written
/// synchronously between awaits, so stopping never leaves one half-written; batches in flight
/// are abandoned, and posted again by the next run.
pub(crate) async fn interruptible<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
    deadline: Option<std::time::Duration>,
    hint: impl FnOnce() -> String,
) -> anyhow::Result<T> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let out_of_time = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Err(Stop::Interrupted(hint()).into()),
        _ = term.recv() => Err(Stop::Interrupted(hint()).into()),
        _ = out_of_time => Err(Stop::Temporary(format!(
            "stopped after --max-run-time ({}); {}",
            crate::progress::human_duration(deadline.unwrap_or_default()),
            hint()
        ))
        .into()),
    };
    // What the run dropped may have left PostHog running queries (asynchronous ones).
    crate::posthog::cancel_abandoned().await;
    result
}

/// Runs `source` through the pipeline into `sink`, showing progress, and checks the ledger
/// at the end: an event read but neither delivered nor accounted for fails the run.
pub(crate) async fn pipe<P, S, Fut>(
    source: S,
    posting: Posting,
    sink: &dyn Deliver,
    progress: &Arc<Progress>,
    commit: impl FnMut(&P, Delivered) -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    P: Send + 'static,
    S: FnOnce(mpsc::Sender<Vec<Item<P>>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let ticker = progress.start();
    let result = pipeline::run(source, posting, sink, commit).await;
    drop(ticker);
    progress.tick();
    result?;
    progress.stats.check()
}

/// Warns about each `--event` name that no event of the range carried: usually a typo (names
/// are case-sensitive), which would otherwise pass as "0 events, exit 0". Only after a run that
/// read the whole range (a resumed run did not see what earlier runs read).
pub(crate) fn warn_unseen_names(progress: &Progress, filters: &crate::domain::Filters) {
    for name in progress.stats.names_not_seen(&filters.include) {
        progress.warn(&format!(
            "no event named {name:?} in the range: is the name right? (event names are case-sensitive, e.g. $pageview)"
        ));
    }
}

/// Reads PostHog after `from` with `reader` into `sink` (backfill, sync, export). The share
/// done shown is that of `span` (event time) up to the last position delivered, not read: a
/// slow webhook holds the bar back, and a resumed run starts where it stands.
pub(crate) async fn read_posthog(
    reader: Reader,
    from: Option<Cursor>,
    span: Range,
    posting: Posting,
    sink: &dyn Deliver,
    progress: &Arc<Progress>,
    mut commit: impl FnMut(&Cursor, Delivered) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let before = from
        .as_ref()
        .map_or(0.0, |pos| span.fraction(pos.timestamp()));
    progress.set_done(before);
    let shown = progress.clone();
    pipe(
        move |tx| reader.run(from, tx),
        posting,
        sink,
        progress,
        move |pos: &Cursor, done| {
            commit(pos, done)?;
            shown.set_done(share_done(&shown, span, pos, before));
            Ok(())
        },
    )
    .await
}

/// How much of the work is done at `pos`: once the Query reader's plan reaches the range's
/// end, by the events it counted (what was done before this run, then this run's share of
/// the planned events); until then, and for the Events API, by event time.
fn share_done(progress: &Progress, span: Range, pos: &Cursor, before: f64) -> f64 {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &progress.stats;
    let planned = Stats::get(&s.planned);
    if !s.planned_complete.load(Relaxed) || planned == 0 {
        return span.fraction(pos.timestamp());
    }
    let handled = Stats::get(&s.posted)
        + Stats::get(&s.dead_lettered)
        + Stats::get(&s.duplicates_dropped)
        + Stats::get(&s.filtered);
    before + (1.0 - before) * (handled as f64 / planned as f64).min(1.0)
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
