//! `backfill`: every event of `[start, end)` from PostHog into the webhook, resumable from a
//! checkpoint after any interruption, with a summary that accounts for every event read.

use crate::cli::BackfillArgs;
use crate::commands::{Report, runner};
use crate::domain::JobId;
use crate::domain::{Cursor, Range};
use crate::error::{EXIT_OK, EXIT_REJECTED};
use crate::event::format_ts;
use crate::net::tls::CaCerts;
use crate::pipeline::ledger::Stats;
use crate::posthog::source::Connect;
use crate::progress::{Progress, count};
use crate::settings::{self, Retries};
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

pub(crate) async fn run(
    cfg: &mut BackfillConfig,
    progress: &Arc<Progress>,
) -> anyhow::Result<Report> {
    let connect = Connect::new(&cfg.read, &cfg.retries, &cfg.ca_certs, progress)?;
    let job::Resumed {
        store,
        mut state,
        source,
        ..
    } = job::resume::<Cursor>(
        &connect,
        cfg.read.source,
        "backfill",
        cfg.job_id(),
        &cfg.resume,
    )
    .await?;
    cfg.range = job::resolve_range(&connect, source, &cfg.spec, &mut state, progress).await?;
    // Before anything is marked: a range still open by PostHog's clock cannot be complete.
    let now = connect
        .refuse_future_end(source, &cfg.range, "backfill")
        .await?;
    state.position = state
        .position
        .take()
        .map(|p| p.upgrade(state.version, |m| progress.warn(m)));
    let ingested = job::ingested_until(&mut state, source, now);
    let path = store.path().to_path_buf();
    if state.complete {
        return Ok(Report::ok(format!(
            "backfill already complete: {} posted ({} dead-lettered) over {}; nothing to do. Pass --restart to export the range again. Checkpoint: {}",
            count(state.counters.posted, "event", "events"),
            HumanCount(state.counters.dead_lettered),
            count(state.counters.runs, "run", "runs"),
            path.display()
        )));
    }
    if let Some(pos) = &state.position
        && (pos.timestamp() < cfg.range.start || pos.timestamp() > cfg.range.end)
    {
        return Err(crate::error::usage(format!(
            "the checkpoint {} holds a position ({}) outside the job's range {} → {}: it was edited, or belongs to another job; pass --restart to start the range again",
            path.display(),
            format_ts(&pos.timestamp()),
            format_ts(&cfg.range.start),
            format_ts(&cfg.range.end)
        )));
    }
    match &state.position {
        Some(pos) => progress.info(&format!(
            "resuming from {} ({} posted before); checkpoint {}",
            format_ts(&pos.timestamp()),
            count(state.counters.posted, "event", "events"),
            path.display()
        )),
        None => progress.info(&format!(
            "exporting {} → {} of project {} ({} API) to {}; checkpoint {}",
            format_ts(&cfg.range.start),
            format_ts(&cfg.range.end),
            cfg.read.connection.project,
            source.name(),
            cfg.webhook.url.redacted(),
            path.display()
        )),
    }
    state.counters.runs += 1;

    let sink = Sink::open(
        connect.http.clone(),
        &cfg.webhook,
        &cfg.retries.policy,
        progress,
    )?;
    let reader = connect
        .reader(source, cfg.range, &cfg.read, ingested)
        .dead_letter(sink.dead_letter());

    let whole_range = state.position.is_none();
    runner::read_posthog(
        reader,
        state.position.clone(),
        cfg.range,
        cfg.webhook.posting,
        &sink,
        progress,
        |pos, done| store.commit(&mut state, pos.clone(), done),
    )
    .await?;
    if whole_range {
        runner::warn_unseen_names(progress, &cfg.read.filters);
    }
    state.complete = true;
    state.position = Some(Cursor::Before {
        timestamp: cfg.range.end,
    });
    store.save(&mut state)?;

    let mut summary = format!(
        "backfill complete: {} → {}{}, project {}\n{}\n  in all   {} posted over {}; checkpoint {}",
        format_ts(&cfg.range.start),
        format_ts(&cfg.range.end),
        if cfg.spec.start.naive().is_some() || cfg.spec.end.naive().is_some() {
            " (a time given without an offset was read as UTC)"
        } else {
            ""
        },
        cfg.read.connection.project,
        runner::figures(progress, "posted"),
        count(state.counters.posted, "event", "events"),
        count(state.counters.runs, "run", "runs"),
        path.display(),
    );
    let dead = Stats::get(&progress.stats.dead_lettered);
    let exit = if dead > 0 {
        let file = cfg
            .webhook
            .dead_letter
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        summary.push_str(&format!("\n  rejected events are in {file} (exit 3)"));
        EXIT_REJECTED
    } else {
        EXIT_OK
    };
    Ok(Report { exit, summary })
}
