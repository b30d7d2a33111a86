//! `backfill`: every event of `[start, end)` from PostHog into the webhook, resumable from a
//! checkpoint after any interruption, with a summary that accounts for every event read.

use crate::cli::BackfillArgs;
use crate::commands::{Report, runner};
use crate::error::{EXIT_OK, EXIT_REJECTED};
use crate::event::format_ts;
use crate::pipeline;
use crate::pipeline::ledger::Stats;
use crate::posthog::Connection;
use crate::posthog::source::Connect;
use crate::posthog::source::{Cursor, Filters, Range, Reader, SourceKind};
use crate::progress::Progress;
use crate::secret::WebhookUrl;
use crate::settings::{self, Retries};
use crate::sinks::webhook::Sink;
use crate::state::checkpoint::JobId;
use crate::state::job;
use indicatif::HumanCount;
use std::path::PathBuf;
use std::sync::Arc;

pub(crate) struct BackfillConfig {
    pub(crate) connection: Connection,
    pub(crate) source: SourceKind,
    pub(crate) webhook: WebhookUrl,
    pub(crate) range: Range,
    pub(crate) filters: Filters,
    pub(crate) page_size: usize,
    pub(crate) posting: pipeline::Posting,
    pub(crate) checkpoint: Option<PathBuf>,
    pub(crate) restart: bool,
    pub(crate) dead_letter: Option<PathBuf>,
    pub(crate) retries: Retries,
}

impl BackfillConfig {
    pub(crate) fn from_args(args: &BackfillArgs) -> anyhow::Result<Self> {
        let range = settings::range(args.range.start, args.range.end)?;
        let webhook = settings::webhook(&args.webhook)?;
        Ok(BackfillConfig {
            connection: settings::connection(&args.read.connection)?,
            source: args.read.connection.source,
            webhook: webhook.url,
            range,
            filters: settings::filters(&args.read.filters),
            page_size: args.read.page_size as usize,
            posting: webhook.posting,
            checkpoint: args.state.checkpoint.clone(),
            restart: args.state.restart,
            dead_letter: webhook.dead_letter,
            retries: settings::retries(&args.retry),
        })
    }

    /// What makes two runs the same job, apart from the API read (which `auto` only knows
    /// once it has asked PostHog). No secret: the webhook appears as a fingerprint.
    pub(crate) fn job_id(&self) -> JobId {
        let mut job = job::identity("backfill", &self.connection, &self.filters);
        job.insert("start".into(), format_ts(&self.range.start));
        job.insert("end".into(), format_ts(&self.range.end));
        job.insert("webhook".into(), self.webhook.fingerprint());
        job
    }
}

pub(crate) async fn run(cfg: &BackfillConfig, progress: &Arc<Progress>) -> anyhow::Result<Report> {
    let connect = Connect::new(&cfg.connection, &cfg.retries, progress)?;
    let job::Resumed {
        store,
        mut state,
        source,
        ..
    } = job::resume::<Cursor>(
        &connect,
        cfg.source,
        "backfill",
        cfg.job_id(),
        cfg.checkpoint.as_deref(),
        cfg.restart,
    )
    .await?;
    let path = store.path().to_path_buf();
    if state.complete {
        return Ok(Report {
            exit: EXIT_OK,
            summary: format!(
                "backfill already complete: {} events posted ({} dead-lettered) over {} run(s); nothing to do. Pass --restart to export the range again. Checkpoint: {}",
                HumanCount(state.counters.posted),
                HumanCount(state.counters.dead_lettered),
                state.counters.runs,
                path.display()
            ),
        });
    }
    match &state.position {
        Some(pos) => progress.info(&format!(
            "resuming from {} ({} events posted before); checkpoint {}",
            format_ts(&pos.timestamp()),
            HumanCount(state.counters.posted),
            path.display()
        )),
        None => progress.info(&format!(
            "exporting {} → {} of project {} ({} API) to {}; checkpoint {}",
            format_ts(&cfg.range.start),
            format_ts(&cfg.range.end),
            cfg.connection.project,
            source.name(),
            cfg.webhook.redacted(),
            path.display()
        )),
    }
    state.counters.runs += 1;

    let sink = Sink::open(
        connect.http.clone(),
        cfg.webhook.clone(),
        cfg.retries.policy.clone(),
        cfg.dead_letter.as_deref(),
        progress.clone(),
    )?;
    let reader = Reader {
        kind: source,
        client: connect.client(source),
        range: cfg.range,
        filters: cfg.filters.clone(),
        page_size: cfg.page_size,
        ingested: None,
    };

    let from = state.position.clone();
    runner::read_posthog(reader, from, cfg.posting, &sink, progress, |pos, done| {
        state.position = Some(pos.clone());
        state.counters.record(done);
        store.save(&mut state)
    })
    .await?;
    state.complete = true;
    state.position = Some(Cursor::Before {
        timestamp: cfg.range.end,
    });
    store.save(&mut state)?;

    let mut summary = format!(
        "backfill complete: {} → {}, project {}\n{}\n  in all   {} events posted over {} run(s); checkpoint {}",
        format_ts(&cfg.range.start),
        format_ts(&cfg.range.end),
        cfg.connection.project,
        runner::figures(progress, "posted"),
        HumanCount(state.counters.posted),
        state.counters.runs,
        path.display(),
    );
    let dead = Stats::get(&progress.stats.dead_lettered);
    let exit = if dead > 0 {
        let file = cfg
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
