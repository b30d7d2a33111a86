//! `sync`: the incremental export for cron. Each run takes what PostHog ingested since the
//! previous one: events whose `created_at` is in `(watermark, now - lag]`, read through
//! `timestamp` windows starting `--lookback` before the watermark (so no query scans the
//! whole table), then moves the watermark. Late events (old timestamps, new ingestion) are
//! thus delivered once, by the next run. An interrupted run is finished, with the same
//! bounds, by the next run before it moves on. With the Events API (no `created_at`) the
//! watermark is event time minus `--lag`. Guarantees and limits: docs/sync.md.

use crate::cli::SyncArgs;
use crate::commands::reading;
use crate::commands::report::Report;
use crate::commands::runner::{self, Job, Pass, Run, Saved};
use crate::domain::when::When;
use crate::domain::{Cursor, JobId, Range, SourceKind};
use crate::error::usage;
use crate::event::format_ts;
use crate::net::tls::CaCerts;
use crate::pipeline::ledger::Stats;
use crate::posthog::hogql::Ingested;
use crate::posthog::source::Connect;
use crate::progress::{Progress, count};
use crate::settings::{self, Resume, Retries};
use crate::sinks::webhook::Sink;
use crate::state::job;
use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use indicatif::HumanCount;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How far past "now" in event time a run looks: clients with fast clocks send events
/// stamped in the future.
const FUTURE_SLACK: Duration = Duration::days(1);

pub(crate) struct SyncConfig {
    pub(crate) read: settings::Read,
    pub(crate) webhook: settings::Webhook,
    pub(crate) start: Option<crate::domain::when::When>,
    pub(crate) lookback: Duration,
    pub(crate) lag: Duration,
    pub(crate) resume: settings::Resume,
    pub(crate) retries: Retries,
    pub(crate) ca_certs: CaCerts,
}

impl SyncConfig {
    pub(crate) fn from_args(args: &SyncArgs) -> anyhow::Result<Self> {
        // The parser keeps durations within ten years; this only guards the conversion.
        let duration = |flag: &str, d: std::time::Duration| {
            Duration::from_std(d).map_err(|_| usage(format!("{flag} is out of range")))
        };
        settings::require(settings::Needs {
            connection: Some(&args.read.connection),
            webhook: Some(&args.deliver.webhook),
            range: None,
        })?;
        Ok(SyncConfig {
            read: settings::read(&args.read, args.deliver.retry.allow_insecure_http)?,
            webhook: settings::webhook(
                &args.deliver.webhook,
                args.deliver.retry.allow_insecure_http,
            )?,
            start: args.start.clone(),
            lookback: duration("--lookback", args.lookback)?,
            lag: duration("--lag", args.lag)?,
            resume: settings::resume(&args.deliver.state, &args.deliver.retry),
            retries: settings::retries(&args.deliver.retry),
            ca_certs: settings::ca_certs(&args.deliver.tls)?,
        })
    }

    pub(crate) fn job_id(&self) -> JobId {
        let mut job = job::identity("sync", &self.read.connection, &self.read.filters);
        job.insert("webhook".into(), self.webhook.url.fingerprint());
        job
    }
}

/// The sync state (the checkpoint's `position`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SyncState {
    /// Where the first run started, in event time.
    pub(crate) start: DateTime<Utc>,
    /// Everything ingested up to here (Query API: `created_at`; Events API: event time) has
    /// been delivered. None before the first run completes.
    pub(crate) watermark: Option<DateTime<Utc>>,
    /// A run in progress, to be finished with exactly these bounds.
    pub(crate) pending: Option<Pending>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Pending {
    /// The watermark this run moves to.
    pub(crate) until: DateTime<Utc>,
    /// The event-time range read.
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
    /// Query API: `created_at` lower bound (exclusive).
    pub(crate) ingested_after: Option<DateTime<Utc>>,
    pub(crate) cursor: Option<Cursor>,
}

/// Describes a sync to the runner and returns how it ended.
pub(crate) async fn run(cfg: &SyncConfig, progress: &Arc<Progress>) -> anyhow::Result<Report> {
    let connect = Connect::new(&cfg.read, &cfg.retries, &cfg.ca_certs, progress)?;
    let mut job = Sync {
        cfg,
        connect,
        watermark_before: None,
        resumed: false,
    };
    runner::run(&mut job, progress).await
}

/// A sync: first finish a run that was interrupted (with its bounds), then take what PostHog
/// ingested since the watermark; each pass moves the watermark once read to its end.
struct Sync<'a> {
    cfg: &'a SyncConfig,
    connect: Connect<'a>,
    watermark_before: Option<DateTime<Utc>>,
    /// The first pass finished an interrupted run (a second one then takes what is new).
    resumed: bool,
}

impl Job for Sync<'_> {
    type Saved = SyncState;
    type Place = Cursor;
    type Sink = Sink;

    fn state(&self) -> Option<(&'static str, JobId, &Resume)> {
        Some(("sync", self.cfg.job_id(), &self.cfg.resume))
    }

    fn posthog(&self) -> Option<(&Connect<'_>, SourceKind)> {
        Some((&self.connect, self.cfg.read.source))
    }

    fn deadline(&self) -> Option<std::time::Duration> {
        self.cfg.retries.max_run_time
    }

    async fn prepare(&mut self, run: &mut Run<SyncState>) -> anyhow::Result<Option<String>> {
        let progress = &run.progress;
        if run.fresh {
            let Some(start) = &self.cfg.start else {
                return Err(usage(format!(
                    "the first sync run needs --start DATE (where to begin, e.g. --start 2024-01-01); no state file at {}",
                    run.shown_path()
                )));
            };
            // `-7d`, `today`: by PostHog's clock, once; the state keeps the time.
            let start = if start.is_relative() {
                start.resolve(self.connect.now(run.source).await?)
            } else {
                start.resolve(chrono::Utc::now())
            };
            run.state.position = Some(SyncState {
                start,
                watermark: None,
                pending: None,
            });
        }
        let Some(sync) = &run.state.position else {
            anyhow::bail!(
                "the sync state {} holds no position; pass --restart (with --start) to begin again",
                run.shown_path()
            );
        };
        // (A relative --start, such as -7d, moves with the clock: it changes nothing either.)
        if let Some(When::At(start) | When::Naive(start, _)) = self.cfg.start
            && start != sync.start
            && sync.watermark.is_some()
        {
            tracing::warn!(
                "--start {} is ignored: this sync started at {} and continues from where its last run stopped (use --restart to start over from --start)",
                format_ts(&start),
                format_ts(&sync.start)
            );
        }
        self.watermark_before = sync.watermark;
        show_watermark(progress, sync.watermark);
        // A sync is never complete: each run takes what arrived since the last.
        run.state.complete = false;
        Ok(None)
    }

    fn open_sink(&mut self, run: &mut Run<SyncState>) -> anyhow::Result<Sink> {
        let (webhook, retry) = (&self.cfg.webhook, &self.cfg.retries.policy);
        Sink::open(self.connect.http.clone(), webhook, retry, &run.progress)
    }

    async fn next_pass(
        &mut self,
        run: &mut Run<SyncState>,
        sink: &Sink,
        pass: usize,
    ) -> anyhow::Result<Option<Pass<Cursor>>> {
        // First finish an interrupted run, then take what arrived since; after a new run,
        // nothing more.
        if pass == 2 || pass == 1 && !self.resumed {
            return Ok(None);
        }
        let Some(sync) = run.state.position.as_mut() else {
            return Ok(None);
        };
        let pending = match sync.pending.clone() {
            Some(p) => {
                tracing::info!(
                    "finishing the interrupted run up to {}",
                    format_ts(&p.until)
                );
                self.resumed = pass == 0;
                p
            }
            None => {
                // PostHog's clock alone decides what "ingested up to now" means: `created_at`
                // is PostHog's time, and a cron host's clock may drift.
                let now = self.connect.now(run.source).await?;
                let Some(p) = next_run(self.cfg, run.source, sync, now) else {
                    return Ok(None);
                };
                sync.pending = Some(p.clone());
                run.save()?;
                p
            }
        };
        let reader = self
            .connect
            .reader(
                run.source,
                pending.range(),
                &self.cfg.read,
                pending.ingested(run.source),
            )
            .dead_letter(sink.dead_letter());
        // The bar covers the event time read up to `until`, not the allowance for events
        // stamped in the future.
        let span = Range {
            start: pending.start,
            end: pending.until.max(pending.start),
        };
        Ok(Some(reading::posthog_pass(
            reader,
            pending.cursor,
            span,
            self.cfg.webhook.posting,
            &[],
            &run.progress,
        )))
    }

    fn position(
        &self,
        _: &Sink,
        saved: Option<&SyncState>,
        place: &Cursor,
    ) -> anyhow::Result<SyncState> {
        let mut sync = saved.cloned().context("a sync run has a state")?;
        if let Some(p) = sync.pending.as_mut() {
            p.cursor = Some(place.clone());
        }
        Ok(sync)
    }

    fn pass_done(&mut self, run: &mut Run<SyncState>) -> anyhow::Result<()> {
        if let Some(sync) = run.state.position.as_mut()
            && let Some(pending) = sync.pending.take()
        {
            sync.watermark = Some(pending.until);
            show_watermark(&run.progress, sync.watermark);
        }
        run.save()
    }

    fn finish(&self, _: &mut Option<SyncState>) -> anyhow::Result<bool> {
        Ok(false)
    }

    fn summary(&self, run: &Run<SyncState>) -> String {
        let progress = &run.progress;
        let s = &progress.stats;
        let dead = Stats::get(&s.dead_lettered);
        let watermark = run.state.position.as_ref().and_then(|s| s.watermark);
        format!(
            "sync: {} posted{} in {} (watermark {} → {}; {}, {}, {})",
            count(Stats::get(&s.posted), "event", "events"),
            if dead > 0 {
                format!(", {} dead-lettered", HumanCount(dead))
            } else {
                String::new()
            },
            crate::progress::human_duration(progress.elapsed()),
            self.watermark_before
                .map_or("none".into(), |w| format_ts(&w)),
            watermark.map_or("none".into(), |w| format_ts(&w)),
            count(
                Stats::get(&s.source_requests),
                "PostHog request",
                "PostHog requests"
            ),
            count(
                Stats::get(&s.sink_requests),
                "webhook request",
                "webhook requests"
            ),
            count(Stats::get(&s.retries), "retry", "retries"),
        )
    }
}

/// The watermark as it stands, for `--metrics-file`.
fn show_watermark(progress: &Progress, watermark: Option<DateTime<Utc>>) {
    *progress
        .stats
        .watermark
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = watermark;
}

impl Saved for SyncState {
    fn upgraded(mut self, version: u32) -> Self {
        if let Some(pending) = self.pending.as_mut() {
            pending.cursor = pending.cursor.take().map(|c| c.upgraded(version));
        }
        self
    }
}

impl Pending {
    /// The event-time range the run reads.
    pub(crate) fn range(&self) -> Range {
        Range {
            start: self.start,
            end: self.end,
        }
    }

    /// The `created_at` bounds the Query API reads with (the Events API has none).
    pub(crate) fn ingested(&self, source: SourceKind) -> Option<Ingested> {
        match source {
            SourceKind::Events => None,
            _ => Some(Ingested {
                after: self.ingested_after,
                until: self.until,
                settled: true,
            }),
        }
    }
}

/// The bounds of the next run at `now`, fixed before it starts so that a resumed run reads
/// the same; `None` when nothing new can have been ingested since the watermark. Date
/// arithmetic is checked: a lag reaching before the first representable date means nothing
/// can have been ingested yet, and a lookback reaching that far means "from the start".
pub(crate) fn next_run(
    cfg: &SyncConfig,
    source: SourceKind,
    sync: &SyncState,
    now: DateTime<Utc>,
) -> Option<Pending> {
    let until = now.checked_sub_signed(cfg.lag)?;
    if sync.watermark.is_some_and(|w| until <= w) {
        return None;
    }
    let ahead = now.checked_add_signed(FUTURE_SLACK)?;
    Some(match (source, sync.watermark) {
        // Events API: event time is all there is.
        (SourceKind::Events, w) => Pending {
            until,
            start: w.unwrap_or(sync.start),
            end: until,
            ingested_after: None,
            cursor: None,
        },
        // Query API, first run: everything ingested so far, from the start.
        (_, None) => Pending {
            until,
            start: sync.start,
            end: ahead,
            ingested_after: None,
            cursor: None,
        },
        // Query API: ingested since the watermark, with event times back to the lookback.
        (_, Some(w)) => Pending {
            until,
            start: w
                .checked_sub_signed(cfg.lookback)
                .map_or(sync.start, |s| s.max(sync.start)),
            end: ahead,
            ingested_after: Some(w),
            cursor: None,
        },
    })
}
