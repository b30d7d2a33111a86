//! `export`: the events of a time range as NDJSON, one posted-event object per line, to stdout
//! or a file (`.gz`: gzip). Writing to a file is resumable: the checkpoint records how many
//! bytes of the file are complete and their fingerprint; a resumed run cuts anything after
//! them, and starts again from the beginning of the range if the file no longer holds them.

use crate::cli::ExportArgs;
use crate::commands::reading::RangeRead;
use crate::commands::report::{self, Report};
use crate::commands::runner::{self, Job, Pass, Run, Saved};
use crate::domain::{Cursor, JobId, Range, SourceKind};
use crate::error::usage;
use crate::event::format_ts;
use crate::net::tls::CaCerts;
use crate::pipeline;
use crate::pipeline::batcher::Limits;
use crate::posthog::source::Connect;
use crate::progress::{Progress, count};
use crate::settings::{self, Resume, Retries};
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

impl Saved for ExportPosition {
    fn upgraded(self, version: u32) -> Self {
        ExportPosition {
            cursor: self.cursor.upgraded(version),
            ..self
        }
    }
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

/// Describes an export to the runner and returns how it ended.
pub(crate) async fn run(cfg: &ExportConfig, progress: &Arc<Progress>) -> anyhow::Result<Report> {
    progress.set_verb("written");
    let connect = Connect::new(&cfg.read, &cfg.retries, &cfg.ca_certs, progress)?;
    let mut job = Export {
        cfg,
        output: cfg
            .output
            .as_ref()
            .map(|o| std::path::absolute(o).unwrap_or_else(|_| o.clone())),
        reading: RangeRead::new(connect, &cfg.read, &cfg.spec, cfg.range, "export"),
    };
    match runner::run(&mut job, progress).await {
        // The reader closed our stdout (`| head`): the run ends quietly.
        Err(e) if e.chain().any(|c| c.is::<OutputClosed>()) => Ok(Report::ok(String::new())),
        result => result,
    }
}

/// An export: the events of its range, read from PostHog, written as NDJSON to stdout (no
/// checkpoint) or to a file (resumable: the checkpoint holds how much of it is complete).
struct Export<'a> {
    cfg: &'a ExportConfig,
    /// `None`: stdout.
    output: Option<PathBuf>,
    reading: RangeRead<'a>,
}

impl Job for Export<'_> {
    type Saved = ExportPosition;
    type Place = Cursor;
    type Sink = NdjsonWriter;

    fn state(&self) -> Option<(&'static str, JobId, &Resume)> {
        let output = self.output.as_ref()?;
        Some(("export", self.cfg.job_id(output), &self.cfg.resume))
    }

    fn posthog(&self) -> Option<(&Connect<'_>, SourceKind)> {
        self.reading.posthog()
    }

    fn deadline(&self) -> Option<std::time::Duration> {
        self.cfg.retries.max_run_time
    }

    async fn prepare(&mut self, run: &mut Run<ExportPosition>) -> anyhow::Result<Option<String>> {
        self.reading.resolve(run).await?;
        let Some(output) = &self.output else {
            return Ok(None);
        };
        let existing = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
        if run.fresh && existing > 0 && !self.cfg.resume.restart {
            return Err(usage(format!(
                "{} exists and no checkpoint says how much of it is complete; move it aside, or pass --restart to overwrite it",
                output.display()
            )));
        }
        // Never extend a file that lost what was written to it (padding it, or keeping another
        // file's bytes): the export starts again from the beginning of the range.
        if let Some(position) = &run.state.position
            && let Some(problem) = output_changed(output, position)?
        {
            tracing::warn!(
                "{} {problem}; starting the export again from the beginning of the range",
                output.display()
            );
            run.state.position = None;
            run.state.complete = false;
            run.state.counters = Counters {
                runs: run.state.counters.runs,
                ..Counters::default()
            };
        }
        let keep = run.state.position.as_ref().map_or(0, |p| p.bytes);
        if keep > 0 && !run.state.complete {
            tracing::info!(
                "resuming {} after its first {} bytes",
                output.display(),
                keep
            );
        }
        Ok(None)
    }

    fn already_complete(&self, run: &Run<ExportPosition>) -> String {
        format!(
            "export already complete: {} events in {}; pass --restart to export again",
            HumanCount(run.state.counters.posted),
            self.output.as_deref().unwrap_or(Path::new("-")).display()
        )
    }

    fn open_sink(&mut self, run: &mut Run<ExportPosition>) -> anyhow::Result<NdjsonWriter> {
        Ok(match &self.output {
            None => NdjsonWriter::stdout(),
            Some(output) => {
                // The state exists before the file is first written: a run that fails before
                // its first checkpoint (a full disk) leaves a file the next run knows to be
                // this job's, to start again, instead of one it must refuse to overwrite.
                run.save()?;
                let keep = run.state.position.as_ref().map_or(0, |p| p.bytes);
                NdjsonWriter::file(output, keep)?
            }
        })
    }

    async fn next_pass(
        &mut self,
        run: &mut Run<ExportPosition>,
        _: &NdjsonWriter,
        pass: usize,
    ) -> anyhow::Result<Option<Pass<Cursor>>> {
        // One pass: from where the checkpoint stands to the end of the range.
        let from = run.state.position.as_ref().map(|p| p.cursor.clone());
        Ok(self.reading.pass(run, pass, from, POSTING, None))
    }

    fn position(
        &self,
        writer: &NdjsonWriter,
        _: Option<&ExportPosition>,
        place: &Cursor,
    ) -> anyhow::Result<ExportPosition> {
        Ok(ExportPosition {
            cursor: place.clone(),
            bytes: writer.len(),
            fingerprint: writer.fingerprint()?,
        })
    }

    fn finish(&self, _: &mut Option<ExportPosition>) -> anyhow::Result<bool> {
        Ok(true)
    }

    fn summary(&self, run: &Run<ExportPosition>) -> String {
        let range = format!(
            "{} → {}",
            format_ts(&self.reading.range.start),
            format_ts(&self.reading.range.end)
        );
        let figures = report::figures(&run.progress, "written");
        match &self.output {
            None => format!("export complete: {range} to stdout\n{figures}"),
            Some(output) => format!(
                "export complete: {range} into {}\n{figures}\n  in all   {} events over {}; checkpoint {}",
                output.display(),
                HumanCount(run.state.counters.posted),
                count(run.state.counters.runs, "run", "runs"),
                run.shown_path()
            ),
        }
    }
}
