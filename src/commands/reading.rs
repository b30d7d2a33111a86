//! What the jobs that read PostHog share: a range resolved once per job (`RangeRead`, for
//! `backfill` and `export`), and a pass through a `Reader` with its share done shown.

use super::runner::{Pass, Run};
use crate::domain::{Cursor, Range, SourceKind};
use crate::pipeline::Posting;
use crate::pipeline::ledger::Stats;
use crate::posthog::hogql::Ingested;
use crate::posthog::source::{Connect, Reader};
use crate::progress::Progress;
use crate::settings::{self, RangeSpec};
use crate::sinks::dead_letter::DeadLetter;
use std::sync::Arc;

/// What a `backfill` or an `export` reads: one range of PostHog, resolved when a run starts,
/// read in one pass from where the checkpoint stands.
pub(crate) struct RangeRead<'a> {
    pub(crate) connect: Connect<'a>,
    read: &'a settings::Read,
    spec: &'a RangeSpec,
    /// The command, for messages.
    kind: &'static str,
    /// By this machine's clock until [`RangeRead::resolve`], then by PostHog's.
    pub(crate) range: Range,
    ingested: Option<Ingested>,
}

impl<'a> RangeRead<'a> {
    pub(crate) fn new(
        connect: Connect<'a>,
        read: &'a settings::Read,
        spec: &'a RangeSpec,
        range: Range,
        kind: &'static str,
    ) -> Self {
        RangeRead {
            connect,
            read,
            spec,
            kind,
            range,
            ingested: None,
        }
    }

    /// The connection and the API asked for, for [`super::runner::Job::posthog`].
    pub(crate) fn posthog(&self) -> Option<(&Connect<'_>, SourceKind)> {
        Some((&self.connect, self.read.source))
    }

    /// Resolves the range and the `created_at` bound for this run ([`posthog_range`]).
    pub(crate) async fn resolve<P>(&mut self, run: &mut Run<P>) -> anyhow::Result<()> {
        (self.range, self.ingested) =
            posthog_range(&self.connect, run, self.spec, self.kind).await?;
        Ok(())
    }

    /// The pass of pass number `pass` (only the first): from `from` to the range's end.
    pub(crate) fn pass<P>(
        &self,
        run: &Run<P>,
        pass: usize,
        from: Option<Cursor>,
        posting: Posting,
        dead_letter: Option<Arc<DeadLetter>>,
    ) -> Option<Pass<Cursor>> {
        if pass > 0 {
            return None;
        }
        let reader = self
            .connect
            .reader(run.source, self.range, self.read, self.ingested)
            .dead_letter(dead_letter);
        let names = &self.read.filters.include;
        Some(posthog_pass(
            reader,
            from,
            self.range,
            posting,
            names,
            &run.progress,
        ))
    }
}

/// Reads PostHog after `from` with `reader`. The share done shown is that of `span`
/// (event time) up to the last position delivered, not read: a slow webhook holds the bar
/// back, and a resumed run starts where it stands. A pass over the whole range (`from`
/// is `None`) warns about the `--event` names of `names` it never met.
pub(crate) fn posthog_pass(
    reader: Reader,
    from: Option<Cursor>,
    span: Range,
    posting: Posting,
    names: &[String],
    progress: &Arc<Progress>,
) -> Pass<Cursor> {
    let before = from
        .as_ref()
        .map_or(0.0, |pos| span.fraction(pos.timestamp()));
    progress.set_done(before);
    let names = if from.is_none() {
        names.to_vec()
    } else {
        Vec::new()
    };
    let shown = progress.clone();
    Pass::new(move |tx| reader.run(from, tx), posting)
        .showing(move |pos: &Cursor| shown.set_done(share_done(&shown, span, pos, before)))
        .warning_unseen(names)
}

/// The range and `created_at` bound of a `backfill` or `export` through PostHog, decided once
/// per job: `--start`/`--end` relative to now (`-7d`, `now`) by PostHog's clock on the job's
/// first run, kept in its state (told once, when resolved); and the end refused while it is
/// still in the future by PostHog's clock, before anything is marked.
async fn posthog_range<P>(
    connect: &Connect<'_>,
    run: &mut Run<P>,
    spec: &RangeSpec,
    kind: &str,
) -> anyhow::Result<(Range, Option<Ingested>)> {
    for (flag, when) in [("--start", &spec.start), ("--end", &spec.end)] {
        if let Some(text) = when.naive() {
            tracing::info!(
                "{flag} {text} has no offset: read as UTC, {}",
                crate::event::format_ts(&when.resolve(chrono::Utc::now()))
            );
        }
    }
    let range = match (spec.is_relative(), run.state.range) {
        (false, _) => spec.resolve(chrono::Utc::now())?,
        (true, Some(range)) => range,
        (true, None) => {
            let range = spec.resolve(connect.now(run.source).await?)?;
            tracing::info!(
                "--start {} --end {}: {} → {} by PostHog's clock{}",
                spec.start.identity(),
                spec.end.identity(),
                crate::event::format_ts(&range.start),
                crate::event::format_ts(&range.end),
                if run.keeps_state() {
                    "; later runs of this job keep it"
                } else {
                    ""
                }
            );
            // Only a job with a checkpoint keeps it.
            if run.keeps_state() {
                run.state.range = Some(range);
            }
            range
        }
    };
    // A job already complete reads nothing: its end was checked when it ran (and a range
    // resolved to the microsecond may still lie past PostHog's clock, which has whole seconds).
    if run.state.complete {
        return Ok((range, None));
    }
    let now = connect.refuse_future_end(run.source, &range, kind).await?;
    // The `created_at` bound: PostHog's time when the job started, kept in its state.
    let ingested = (run.source != SourceKind::Events).then(|| Ingested {
        after: None,
        until: *run.state.ingested_until.get_or_insert(now),
        settled: false,
    });
    Ok((range, ingested))
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
