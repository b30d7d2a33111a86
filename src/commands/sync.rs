//! `sync`: the incremental export for cron. Each run takes what PostHog ingested since the
//! previous one: events whose `created_at` is in `(watermark, now - lag]`, read through
//! `timestamp` windows starting `--lookback` before the watermark (so no query scans the
//! whole table), then moves the watermark. Late events (old timestamps, new ingestion) are
//! thus delivered once, by the next run. An interrupted run is finished, with the same
//! bounds, by the next run before it moves on. With the Events API (no `created_at`) the
//! watermark is event time minus `--lag`. Guarantees and limits: docs/sync.md.

use crate::commands::Report;
use crate::commands::runner;

use crate::cli::SyncArgs;
use crate::domain::JobId;
use crate::domain::{Cursor, Range, SourceKind};
use crate::error::{EXIT_OK, EXIT_REJECTED, usage};
use crate::event::format_ts;
use crate::net::tls::CaCerts;
use crate::pipeline::ledger::Stats;
use crate::posthog::hogql::Ingested;
use crate::posthog::source::Connect;
use crate::progress::{Progress, count};
use crate::settings::{self, Retries};
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
    pub(crate) start: Option<crate::cli::When>,
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

pub(crate) async fn run(cfg: &SyncConfig, progress: &Arc<Progress>) -> anyhow::Result<Report> {
    let connect = Connect::new(&cfg.read, &cfg.retries, &cfg.ca_certs, progress)?;
    let job::Resumed {
        store,
        mut state,
        source,
        fresh,
    } = job::resume::<SyncState>(&connect, cfg.read.source, "sync", cfg.job_id(), &cfg.resume)
        .await?;
    if fresh {
        let Some(start) = &cfg.start else {
            return Err(usage(format!(
                "the first sync run needs --start DATE (where to begin, e.g. --start 2024-01-01); no state file at {}",
                store.path().display()
            )));
        };
        // `-7d`, `today`: by PostHog's clock, once; the state keeps the time.
        let start = if start.is_relative() {
            start.resolve(connect.now(source).await?)
        } else {
            start.resolve(chrono::Utc::now())
        };
        state.position = Some(SyncState {
            start,
            watermark: None,
            pending: None,
        });
    }
    if let Some(pending) = state.position.as_mut().and_then(|s| s.pending.as_mut()) {
        pending.cursor = pending
            .cursor
            .take()
            .map(|c| c.upgrade(state.version, |m| progress.warn(m)));
    }
    let mut sync = state.position.clone().with_context(|| {
        format!(
            "the sync state {} holds no position; pass --restart (with --start) to begin again",
            store.path().display()
        )
    })?;
    // (A relative --start, such as -7d, moves with the clock: it changes nothing either.)
    if let Some(crate::cli::When::At(start) | crate::cli::When::Naive(start, _)) = cfg.start
        && start != sync.start
        && sync.watermark.is_some()
    {
        progress.warn(&format!(
            "--start {} is ignored: this sync started at {} and continues from where its last run stopped (use --restart to start over from --start)",
            format_ts(&start),
            format_ts(&sync.start)
        ));
    }
    let sink = Sink::open(
        connect.http.clone(),
        &cfg.webhook,
        &cfg.retries.policy,
        progress,
    )?;
    let watermark_before = sync.watermark;
    *progress
        .stats
        .watermark
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = watermark_before;
    state.counters.runs += 1;

    // First finish an interrupted run, then take what arrived since.
    for _ in 0..2 {
        let resumed = sync.pending.is_some();
        let pending = match sync.pending.clone() {
            Some(p) => {
                progress.info(&format!(
                    "finishing the interrupted run up to {}",
                    format_ts(&p.until)
                ));
                p
            }
            None => {
                // PostHog's clock alone decides what "ingested up to now" means: `created_at`
                // is PostHog's time, and a cron host's clock may drift.
                let now = connect.now(source).await?;
                let Some(p) = next_run(cfg, source, &sync, now) else {
                    break;
                };
                sync.pending = Some(p.clone());
                state.position = Some(sync.clone());
                store.save(&mut state)?;
                p
            }
        };
        let reader = connect
            .reader(source, pending.range(), &cfg.read, pending.ingested(source))
            .dead_letter(sink.dead_letter());
        let from = pending.cursor.clone();
        // The bar covers the event time read up to `until`, not the allowance for events
        // stamped in the future.
        let span = Range {
            start: pending.start,
            end: pending.until.max(pending.start),
        };
        runner::read_posthog(
            reader,
            from,
            span,
            cfg.webhook.posting,
            &sink,
            progress,
            |pos, done| {
                if let Some(p) = sync.pending.as_mut() {
                    p.cursor = Some(pos.clone());
                }
                store.commit(&mut state, sync.clone(), done)
            },
        )
        .await?;
        sync.watermark = Some(pending.until);
        *progress
            .stats
            .watermark
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = sync.watermark;
        sync.pending = None;
        state.position = Some(sync.clone());
        store.save(&mut state)?;
        if !resumed {
            break;
        }
    }

    let s = &progress.stats;
    let posted = Stats::get(&s.posted);
    let dead = Stats::get(&s.dead_lettered);
    let summary = format!(
        "sync: {} posted{} in {} (watermark {} → {}; {}, {}, {})",
        count(posted, "event", "events"),
        if dead > 0 {
            format!(", {} dead-lettered", HumanCount(dead))
        } else {
            String::new()
        },
        crate::progress::human_duration(progress.elapsed()),
        watermark_before.map_or("none".into(), |w| format_ts(&w)),
        sync.watermark.map_or("none".into(), |w| format_ts(&w)),
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
    );
    Ok(Report {
        exit: if dead > 0 { EXIT_REJECTED } else { EXIT_OK },
        summary,
    })
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
