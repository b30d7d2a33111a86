//! `export`: the events of a time range as NDJSON, one posted-event object per line, to stdout
//! or a file (`.gz`: gzip). Writing to a file is resumable: the checkpoint records how many
//! bytes of the file are complete and their fingerprint; a resumed run cuts anything after
//! them, and starts again from the beginning of the range if the file no longer holds them.

use crate::cli::ExportArgs;
use crate::commands::Report;
use crate::commands::runner;
use crate::domain::JobId;
use crate::domain::{Cursor, Range, SourceKind};
use crate::error::{EXIT_OK, usage};
use crate::event::format_ts;
use crate::net::tls::CaCerts;
use crate::pipeline;
use crate::pipeline::batcher::Limits;
use crate::posthog::hogql::Ingested;
use crate::posthog::source::Connect;
use crate::progress::Progress;
use crate::settings::{self, Retries};
use crate::sinks::ndjson::{NdjsonWriter, OutputClosed};
use crate::state::checkpoint::Counters;
use crate::state::{fingerprint, job};
use anyhow::Context;
use indicatif::HumanCount;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Lines written (and synced) at a time: the checkpoint granularity of a file export. One
/// batch at a time: a file is appended to in order.
const POSTING: pipeline::Posting = pipeline::Posting {
    limits: Limits {
        max_events: 5_000,
        max_bytes: 8 << 20,
    },
    concurrency: 1,
    linger: None,
};

pub(crate) struct ExportConfig {
    pub(crate) read: settings::Read,
    /// The range by this machine's clock until a run resolves it by PostHog's (`spec`).
    pub(crate) range: Range,
    pub(crate) spec: settings::RangeSpec,
    pub(crate) output: Option<PathBuf>,
    pub(crate) resume: settings::Resume,
    pub(crate) retries: Retries,
    pub(crate) ca_certs: CaCerts,
}

impl ExportConfig {
    pub(crate) fn from_args(args: &ExportArgs) -> anyhow::Result<Self> {
        // `-` is stdout, as for `send -` and most tools: exactly like no --output.
        settings::require(settings::Needs {
            connection: Some(&args.read.connection),
            webhook: None,
            range: Some(&args.range),
        })?;
        let output = args.output.clone().filter(|p| p.as_os_str() != "-");
        if output.is_none() && args.state.checkpoint.is_some() {
            return Err(usage(
                "--checkpoint needs --output FILE: an export to stdout cannot be resumed",
            ));
        }
        let (spec, range) = settings::range(args.range.start.clone(), args.range.end.clone())?;
        Ok(ExportConfig {
            range,
            spec,
            read: settings::read(&args.read, args.retry.allow_insecure_http)?,

            output,
            resume: settings::resume(&args.state, &args.retry),
            retries: settings::retries(&args.retry),
            ca_certs: settings::ca_certs(&args.tls)?,
        })
    }

    fn job_id(&self, output: &std::path::Path) -> JobId {
        let mut job = job::identity("export", &self.read.connection, &self.read.filters);
        // As given: `--end now` is the same job on every rerun (its state keeps the time).
        job.insert("start".into(), self.spec.start.identity());
        job.insert("end".into(), self.spec.end.identity());
        job.insert("output".into(), output.display().to_string());
        job
    }
}

/// Where a file export stands: the read position, the bytes of the file that are complete,
/// and their fingerprint (`state::fingerprint`), which a resumed run checks the file against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ExportPosition {
    pub(crate) cursor: Cursor,
    pub(crate) bytes: u64,
    /// Absent in checkpoints of earlier versions: then only the length is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fingerprint: Option<String>,
}

/// Why the output file no longer holds what the checkpoint says was written to it, if so.
fn output_changed(output: &Path, position: &ExportPosition) -> anyhow::Result<Option<String>> {
    let file = match File::open(output) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Some("is missing".into()));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", output.display())),
    };
    let len = file.metadata()?.len();
    if len < position.bytes {
        return Ok(Some(format!(
            "is shorter ({len} bytes) than the {} bytes this export had written",
            position.bytes
        )));
    }
    let Some(expected) = &position.fingerprint else {
        return Ok(None);
    };
    let same = fingerprint::begins_with(&file, position.bytes, expected)
        .with_context(|| format!("cannot read {}", output.display()))?;
    Ok((!same).then(|| {
        format!(
            "no longer begins with the {} bytes this export had written (it was changed or replaced)",
            position.bytes
        )
    }))
}

pub(crate) async fn run(
    cfg: &mut ExportConfig,
    progress: &Arc<Progress>,
) -> anyhow::Result<Report> {
    progress.set_verb("written");
    let connect = Connect::new(&cfg.read, &cfg.retries, &cfg.ca_certs, progress)?;
    let Some(output) = cfg.output.clone() else {
        let source = connect.choose(cfg.read.source, None).await?;
        if cfg.spec.is_relative() {
            cfg.range = cfg.spec.resolve(connect.now(source).await?)?;
        }
        let now = connect
            .refuse_future_end(source, &cfg.range, "export")
            .await?;
        let writer = NdjsonWriter::stdout(progress.clone());
        let ingested = (source != SourceKind::Events).then_some(Ingested {
            after: None,
            until: now,
            settled: false,
        });
        return match read_into(
            cfg,
            &connect,
            (source, ingested),
            None,
            &writer,
            progress,
            |_, _| Ok(()),
        )
        .await
        {
            Err(e) if e.chain().any(|c| c.is::<OutputClosed>()) => Ok(Report {
                exit: EXIT_OK,
                summary: String::new(),
            }),
            Err(e) => Err(e),
            Ok(()) => Ok(Report {
                exit: EXIT_OK,
                summary: format!(
                    "export complete: {} → {} to stdout\n{}",
                    format_ts(&cfg.range.start),
                    format_ts(&cfg.range.end),
                    runner::figures(progress, "written")
                ),
            }),
        };
    };

    let output = std::path::absolute(&output).unwrap_or_else(|_| output.clone());
    let job::Resumed {
        store,
        mut state,
        source,
        fresh,
    } = job::resume::<ExportPosition>(
        &connect,
        cfg.read.source,
        "export",
        cfg.job_id(&output),
        &cfg.resume,
    )
    .await?;
    cfg.range = job::resolve_range(&connect, source, &cfg.spec, &mut state, progress).await?;
    let now = connect
        .refuse_future_end(source, &cfg.range, "export")
        .await?;
    if let Some(position) = state.position.as_mut() {
        position.cursor = position
            .cursor
            .clone()
            .upgrade(state.version, |m| progress.warn(m));
    }
    let path = store.path().to_path_buf();
    let existing = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    if fresh && existing > 0 && !cfg.resume.restart {
        return Err(usage(format!(
            "{} exists and no checkpoint says how much of it is complete; move it aside, or pass --restart to overwrite it",
            output.display()
        )));
    }
    // Never extend a file that lost what was written to it (padding it, or keeping another
    // file's bytes): the export starts again from the beginning of the range.
    if let Some(position) = &state.position
        && let Some(problem) = output_changed(&output, position)?
    {
        progress.warn(&format!(
            "{} {problem}; starting the export again from the beginning of the range",
            output.display()
        ));
        state.position = None;
        state.complete = false;
        state.counters = Counters {
            runs: state.counters.runs,
            ..Counters::default()
        };
    }
    if state.complete {
        return Ok(Report::ok(format!(
            "export already complete: {} events in {}; pass --restart to export again",
            HumanCount(state.counters.posted),
            output.display()
        )));
    }
    let keep = state.position.as_ref().map_or(0, |p| p.bytes);
    if keep > 0 {
        progress.info(&format!(
            "resuming {} after its first {} bytes",
            output.display(),
            keep
        ));
    }
    state.counters.runs += 1;
    // The state exists before the file is first written: a run that fails before its first
    // checkpoint (a full disk) leaves a file the next run knows to be this job's, to start
    // again, instead of one it must refuse to overwrite.
    store.save(&mut state)?;
    let writer = NdjsonWriter::file(&output, keep, progress.clone())?;
    let from = state.position.as_ref().map(|p| p.cursor.clone());
    let ingested = job::ingested_until(&mut state, source, now);
    read_into(
        cfg,
        &connect,
        (source, ingested),
        from,
        &writer,
        progress,
        |cursor, done| {
            let position = ExportPosition {
                cursor: cursor.clone(),
                bytes: writer.len(),
                fingerprint: writer.fingerprint()?,
            };
            store.commit(&mut state, position, done)
        },
    )
    .await?;
    state.complete = true;
    store.save(&mut state)?;
    Ok(Report {
        exit: EXIT_OK,
        summary: format!(
            "export complete: {} → {} into {}\n{}\n  in all   {} events over {}; checkpoint {}",
            format_ts(&cfg.range.start),
            format_ts(&cfg.range.end),
            output.display(),
            runner::figures(progress, "written"),
            HumanCount(state.counters.posted),
            crate::progress::count(state.counters.runs, "run", "runs"),
            path.display()
        ),
    })
}

async fn read_into(
    cfg: &ExportConfig,
    connect: &Connect<'_>,
    (source, ingested): (SourceKind, Option<Ingested>),
    from: Option<Cursor>,
    writer: &NdjsonWriter,
    progress: &Arc<Progress>,
    commit: impl FnMut(&Cursor, crate::pipeline::Delivered) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let reader = connect.reader(source, cfg.range, &cfg.read, ingested);
    let whole_range = from.is_none();
    runner::read_posthog(reader, from, cfg.range, POSTING, writer, progress, commit).await?;
    if whole_range {
        runner::warn_unseen_names(progress, &cfg.read.filters);
    }
    Ok(())
}
