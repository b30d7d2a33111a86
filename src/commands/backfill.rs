//! `backfill`: every event of `[start, end)` from PostHog into the webhook, resumable from a
//! checkpoint after any interruption, with a summary that accounts for every event read.

use crate::cli::BackfillArgs;
use crate::commands::reading::RangeRead;
use crate::commands::report::{self, Report};
use crate::commands::runner::{self, Job, Pass, Run};
use crate::domain::{Cursor, JobId, Range, SourceKind};
use crate::error::usage;
use crate::event::format_ts;
use crate::net::tls::CaCerts;
use crate::pipeline::ledger::Stats;
use crate::posthog::source::Connect;
use crate::progress::{Progress, count};
use crate::settings::{self, Resume, Retries};
use crate::sinks::webhook::Sink;
use crate::state::job;
use indicatif::HumanCount;
use std::sync::Arc;

pub(crate) struct BackfillConfig {
    pub(crate) read: settings::Read,
    /// The range by this machine's clock until a run resolves it by PostHog's (`spec`).
    pub(crate) range: Range,
    pub(crate) spec: settings::RangeSpec,
    pub(crate) webhook: settings::Webhook,
    pub(crate) resume: settings::Resume,
    pub(crate) retries: Retries,
    pub(crate) ca_certs: CaCerts,
}

impl BackfillConfig {
    pub(crate) fn from_args(args: &BackfillArgs) -> anyhow::Result<Self> {
        settings::require(settings::Needs {
            connection: Some(&args.read.connection),
            webhook: Some(&args.deliver.webhook),
            range: Some(&args.range),
        })?;
        let (spec, range) = settings::range(args.range.start.clone(), args.range.end.clone())?;
        Ok(BackfillConfig {
            range,
            spec,

            read: settings::read(&args.read, args.deliver.retry.allow_insecure_http)?,
            webhook: settings::webhook(
                &args.deliver.webhook,
                args.deliver.retry.allow_insecure_http,
            )?,
            resume: settings::resume(&args.deliver.state, &args.deliver.retry),
            retries: settings::retries(&args.deliver.retry),
            ca_certs: settings::ca_certs(&args.deliver.tls)?,
        })
    }

    /// What makes two runs the same job, apart from the API read (which `auto` only knows
    /// once it has asked PostHog). No secret: the webhook appears as a fingerprint.
    pub(crate) fn job_id(&self) -> JobId {
        let mut job = job::identity("backfill", &self.read.connection, &self.read.filters);
        // As given: `--end now` is the same job on every rerun (its state keeps the time).
        job.insert("start".into(), self.spec.start.identity());
        job.insert("end".into(), self.spec.end.identity());
        job.insert("webhook".into(), self.webhook.url.fingerprint());
        job
    }
}

/// Describes a backfill to the runner and returns how it ended.
pub(crate) async fn run(cfg: &BackfillConfig, progress: &Arc<Progress>) -> anyhow::Result<Report> {
    let connect = Connect::new(&cfg.read, &cfg.retries, &cfg.ca_certs, progress)?;
    let reading = RangeRead::new(connect, &cfg.read, &cfg.spec, cfg.range, "backfill");
    runner::run(&mut Backfill { cfg, reading }, progress).await
}

/// A backfill: the events of its range, read from PostHog after the checkpoint's position,
/// posted to the webhook; complete once the range is read to its end.
struct Backfill<'a> {
    cfg: &'a BackfillConfig,
    reading: RangeRead<'a>,
}

impl Job for Backfill<'_> {
    type Saved = Cursor;
    type Place = Cursor;
    type Sink = Sink;

    fn state(&self) -> Option<(&'static str, JobId, &Resume)> {
        Some(("backfill", self.cfg.job_id(), &self.cfg.resume))
    }

    fn posthog(&self) -> Option<(&Connect<'_>, SourceKind)> {
        self.reading.posthog()
    }

    fn deadline(&self) -> Option<std::time::Duration> {
        self.cfg.retries.max_run_time
    }

    async fn prepare(&mut self, run: &mut Run<Cursor>) -> anyhow::Result<Option<String>> {
        self.reading.resolve(run).await?;
        let path = run.shown_path();
        let range = self.reading.range;
        match &run.state.position {
            Some(pos) if pos.timestamp() < range.start || pos.timestamp() > range.end => {
                return Err(usage(format!(
                    "the checkpoint {path} holds a position ({}) outside the job's range {} → {}: it was edited, or belongs to another job; pass --restart to start the range again",
                    format_ts(&pos.timestamp()),
                    format_ts(&range.start),
                    format_ts(&range.end)
                )));
            }
            _ if run.state.complete => {}
            Some(pos) => tracing::info!(
                "resuming from {} ({} posted before); checkpoint {path}",
                format_ts(&pos.timestamp()),
                count(run.state.counters.posted, "event", "events")
            ),
            None => tracing::info!(
                "exporting {} → {} of project {} ({} API) to {}; checkpoint {path}",
                format_ts(&range.start),
                format_ts(&range.end),
                self.cfg.read.connection.project,
                run.source.name(),
                self.cfg.webhook.url.redacted()
            ),
        }
        Ok(None)
    }

    fn already_complete(&self, run: &Run<Cursor>) -> String {
        let c = &run.state.counters;
        format!(
            "backfill already complete: {} posted ({} dead-lettered) over {}; nothing to do. Pass --restart to export the range again. Checkpoint: {}",
            count(c.posted, "event", "events"),
            HumanCount(c.dead_lettered),
            count(c.runs, "run", "runs"),
            run.shown_path()
        )
    }

    fn open_sink(&mut self, run: &mut Run<Cursor>) -> anyhow::Result<Sink> {
        let (webhook, retry) = (&self.cfg.webhook, &self.cfg.retries.policy);
        Sink::open(
            self.reading.connect.http.clone(),
            webhook,
            retry,
            &run.progress,
        )
    }

    async fn next_pass(
        &mut self,
        run: &mut Run<Cursor>,
        sink: &Sink,
        pass: usize,
    ) -> anyhow::Result<Option<Pass<Cursor>>> {
        // One pass: from where the checkpoint stands to the end of the range.
        let from = run.state.position.clone();
        let posting = self.cfg.webhook.posting;
        Ok(self
            .reading
            .pass(run, pass, from, posting, sink.dead_letter()))
    }

    fn position(&self, _: &Sink, _: Option<&Cursor>, place: &Cursor) -> anyhow::Result<Cursor> {
        Ok(place.clone())
    }

    fn finish(&self, saved: &mut Option<Cursor>) -> anyhow::Result<bool> {
        *saved = Some(Cursor::Before {
            timestamp: self.reading.range.end,
        });
        Ok(true)
    }

    fn summary(&self, run: &Run<Cursor>) -> String {
        let (cfg, progress) = (self.cfg, &run.progress);
        let mut summary = format!(
            "backfill complete: {} → {}{}, project {}\n{}\n  in all   {} posted over {}; checkpoint {}",
            format_ts(&self.reading.range.start),
            format_ts(&self.reading.range.end),
            if cfg.spec.start.naive().is_some() || cfg.spec.end.naive().is_some() {
                " (a time given without an offset was read as UTC)"
            } else {
                ""
            },
            cfg.read.connection.project,
            report::figures(progress, "posted"),
            count(run.state.counters.posted, "event", "events"),
            count(run.state.counters.runs, "run", "runs"),
            run.shown_path(),
        );
        if Stats::get(&progress.stats.dead_lettered) > 0 {
            let file = cfg
                .webhook
                .dead_letter
                .as_ref()
                .map(|p| p.display().to_string());
            summary.push_str(&format!(
                "\n  rejected events are in {} (exit 3)",
                file.unwrap_or_default()
            ));
        }
        summary
    }
}
