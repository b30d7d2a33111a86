//! `send`: NDJSON from stdin or files (plain or `.gz`) to the webhook, through the same batcher
//! and sink as `backfill`. Any JSON objects are accepted; `--event` filters apply to objects
//! that have an `event` field. With files, a checkpoint records how far each was acknowledged
//! and how to recognise it (`files`): a file appended to since is continued after its sent
//! part, a replaced one is sent again from its first line. From stdin, a failure says how many
//! lines were acknowledged so the rest can be fed again.

use crate::cli::{OnInvalid, SendArgs};
use crate::commands::report::{self, Report};
use crate::commands::runner::{self, Job, Pass, Run, Saved};
use crate::domain::{Filters, JobId};
use crate::ndjson::files::{Found, Input, SendState};
use crate::ndjson::lines::Position;
use crate::ndjson::reader::{Reading, Source};
use crate::net::tls::CaCerts;
use crate::pipeline::ledger::Stats;
use crate::progress::{Progress, count};
use crate::settings::{self, Resume, Retries};
use crate::sinks::webhook::Sink;
use indicatif::HumanCount;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// A partial batch waits this long for more lines before it is posted (input may be a slow
/// stream, e.g. `tail -f`).
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) struct SendConfig {
    /// Empty: stdin.
    pub(crate) files: Vec<PathBuf>,
    pub(crate) webhook: settings::Webhook,
    pub(crate) filters: Filters,
    pub(crate) on_invalid: OnInvalid,
    pub(crate) max_line_bytes: usize,
    pub(crate) resume: settings::Resume,
    pub(crate) retries: Retries,
    pub(crate) ca_certs: CaCerts,
}

impl SendConfig {
    pub(crate) fn from_args(args: &SendArgs) -> anyhow::Result<Self> {
        let mut webhook = settings::webhook(
            &args.deliver.webhook,
            args.deliver.retry.allow_insecure_http,
        )?;
        webhook.posting.linger = Some(LINGER);
        let files: Vec<PathBuf> = args
            .files
            .iter()
            .filter(|f| f.as_os_str() != "-")
            .cloned()
            .collect();
        if files.len() != args.files.len() && !files.is_empty() {
            return Err(crate::error::usage(
                "send reads either stdin (-) or files, not both",
            ));
        }
        Ok(SendConfig {
            files,
            webhook,
            filters: settings::filters(&args.filters),
            on_invalid: args.on_invalid,
            max_line_bytes: args.max_line_bytes as usize,
            resume: settings::resume(&args.deliver.state, &args.deliver.retry),
            retries: settings::retries(&args.deliver.retry),
            ca_certs: settings::ca_certs(&args.deliver.tls)?,
        })
    }

    /// The input files as the job knows them (absolute: the same job from any directory).
    pub(crate) fn inputs(&self) -> Vec<PathBuf> {
        self.files
            .iter()
            .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
            .collect()
    }

    pub(crate) fn job_id(&self, files: &[PathBuf]) -> JobId {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        crate::domain::job([
            ("command", "send".to_string()),
            ("files", names.join("\n")),
            ("events", self.filters.include.join(",")),
            ("exclude_events", self.filters.exclude.join(",")),
            ("webhook", self.webhook.url.fingerprint()),
        ])
    }
}

/// Describes a send to the runner and returns how it ended.
pub(crate) async fn run(cfg: &SendConfig, progress: &Arc<Progress>) -> anyhow::Result<Report> {
    let files = cfg.inputs();
    // A file that is not there is a mistake in the command line (exit 2), before anything.
    for f in &files {
        std::fs::metadata(f)
            .map_err(|e| crate::error::usage(format!("cannot read {}: {e}", f.display())))?;
    }
    let mut job = Sending {
        cfg,
        http: crate::net::http::client(cfg.retries.http_timeout, &cfg.ca_certs)?,
        files,
        inputs: Arc::new(Vec::new()),
        sealed: AtomicUsize::new(0),
        acked: Arc::new(AtomicU64::new(0)),
    };
    runner::run(&mut job, progress).await
}

/// A send: the lines of stdin (no checkpoint: a failure says which lines to feed again), or
/// of files (the checkpoint records how far each was sent and how to recognise it), posted
/// to the webhook.
struct Sending<'a> {
    cfg: &'a SendConfig,
    http: reqwest::Client,
    /// Empty: stdin.
    files: Vec<PathBuf>,
    /// The files as this run found them.
    inputs: Arc<Vec<Input>>,
    /// Files before this one have been recorded as read to their end.
    sealed: AtomicUsize,
    /// Lines of stdin acknowledged.
    acked: Arc<AtomicU64>,
}

impl Job for Sending<'_> {
    type Saved = SendState;
    type Place = Position;
    type Sink = Sink;

    fn state(&self) -> Option<(&'static str, JobId, &Resume)> {
        (!self.files.is_empty()).then(|| ("send", self.cfg.job_id(&self.files), &self.cfg.resume))
    }

    fn deadline(&self) -> Option<std::time::Duration> {
        self.cfg.retries.max_run_time
    }

    async fn prepare(&mut self, run: &mut Run<SendState>) -> anyhow::Result<Option<String>> {
        let progress = &run.progress;
        if self.files.is_empty() {
            progress.set_unbounded();
            progress.set_status("reading stdin".into());
            return Ok(None);
        }
        // A position without files: written before file identities were recorded, so whether
        // a file changed since cannot be told.
        if run
            .state
            .position
            .as_ref()
            .is_some_and(|p| p.files.is_empty())
        {
            return Err(crate::error::usage(format!(
                "the checkpoint {} was written by an earlier posthog-patterns that did not record which files it read, so it cannot tell whether they changed since; pass --restart to send them from their first line (the webhook may then see some events again)",
                run.shown_path()
            )));
        }
        let recorded = run.state.position.clone().unwrap_or_default().files;
        let inputs: Vec<Input> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| Input::open(i, f, recorded.get(i).cloned().flatten()))
            .collect::<anyhow::Result<_>>()?;
        if inputs.iter().all(|i| i.found == Found::Unchanged) {
            return Ok(Some(format!(
                "send already complete: nothing new in {} since the last run ({} events posted before); pass --restart to send them again",
                count(self.files.len() as u64, "file", "files"),
                HumanCount(run.state.counters.posted),
            )));
        }
        for input in &inputs {
            tell_found(input);
        }
        self.inputs = Arc::new(inputs);
        // Something changed since the run that completed: this run sends it.
        run.state.complete = false;
        Ok(None)
    }

    fn open_sink(&mut self, run: &mut Run<SendState>) -> anyhow::Result<Sink> {
        // Under the job's lock: opening the dead-letter file may cut a torn last line.
        let (webhook, retry) = (&self.cfg.webhook, &self.cfg.retries.policy);
        Sink::open(self.http.clone(), webhook, retry, &run.progress)
    }

    async fn next_pass(
        &mut self,
        run: &mut Run<SendState>,
        sink: &Sink,
        pass: usize,
    ) -> anyhow::Result<Option<Pass<Position>>> {
        if pass > 0 {
            return Ok(None);
        }
        let reading = Reading {
            filters: self.cfg.filters.clone(),
            on_invalid: self.cfg.on_invalid,
            dead_letter: sink.dead_letter(),
            max_line_bytes: self.cfg.max_line_bytes,
            progress: run.progress.clone(),
        };
        let source = if self.files.is_empty() {
            Source::Stdin
        } else {
            Source::Files(self.inputs.clone())
        };
        Ok(Some(Pass::new(
            move |tx| async move {
                tokio::task::spawn_blocking(move || reading.read(source, tx))
                    .await
                    .map_err(|e| anyhow::anyhow!("the reader failed: {e}"))?
            },
            self.cfg.webhook.posting,
        )))
    }

    fn position(
        &self,
        _: &Sink,
        saved: Option<&SendState>,
        place: &Position,
    ) -> anyhow::Result<SendState> {
        if self.files.is_empty() {
            self.acked.store(place.line, Relaxed);
            return Ok(SendState::default());
        }
        let mut sent = saved.cloned().unwrap_or_default();
        let sealed = self.sealed.fetch_max(place.file, Relaxed);
        for k in sealed..place.file {
            if let Some(whole) = self.inputs[k].sent_to_end()? {
                sent.record(k, whole);
            }
        }
        if let Some(input) = self.inputs.get(place.file) {
            sent.record(place.file, input.sent(place.offset, place.line, false)?);
        }
        Ok(sent)
    }

    fn finish(&self, saved: &mut Option<SendState>) -> anyhow::Result<bool> {
        let mut sent = saved.take().unwrap_or_default();
        for (k, input) in self.inputs.iter().enumerate() {
            if let Some(whole) = input.sent_to_end()? {
                sent.record(k, whole);
            }
        }
        *saved = Some(sent);
        Ok(true)
    }

    fn summary(&self, run: &Run<SendState>) -> String {
        if self.files.is_empty() {
            return summary(self.cfg, &run.progress, "stdin".into());
        }
        let what = count(self.files.len() as u64, "file", "files");
        summary(self.cfg, &run.progress, what) + &changes(&self.inputs)
    }

    fn recovery(&self) -> Option<Arc<dyn Fn() -> String + Send + Sync>> {
        if !self.files.is_empty() {
            return None;
        }
        let acked = self.acked.clone();
        Some(Arc::new(move || {
            let next = acked.load(Relaxed) + 1;
            format!(
                "{} lines of stdin were acknowledged; to send the rest, feed the same input again from its line {next} on: ... | tail -n +{next} | posthog-patterns send ...",
                next - 1
            )
        }))
    }
}

/// Files keep no position of an older format.
impl Saved for SendState {}

/// Says what was found of a file read before, as the run starts.
fn tell_found(input: &Input) {
    let name = input.path.display();
    let line = input.from.line;
    match &input.found {
        Found::New | Found::Unchanged => {}
        Found::Continued { grew: true } => tracing::info!(
            "{name} was appended to since the last run: sending the lines after line {line}"
        ),
        Found::Continued { grew: false } => {
            tracing::info!("resuming {name} after line {line}")
        }
        Found::Replaced { why } => {
            let unsent = match &input.before {
                Some(before) if !before.to_end => format!(
                    "; the earlier file had been sent only up to line {}, and its other lines are gone with it",
                    before.lines
                ),
                _ => String::new(),
            };
            tracing::warn!(
                "{name} was replaced since the last run ({why}): sending it from line 1 as a new input{unsent}"
            );
        }
    }
}

/// Summary lines for the files that were appended to or replaced since the last run.
fn changes(inputs: &[Input]) -> String {
    let mut out = String::new();
    for input in inputs {
        let name = input.path.display();
        match &input.found {
            Found::Continued { grew: true } => out.push_str(&format!(
                "\n  appended {name}: sent the lines after line {}",
                input.from.line
            )),
            Found::Replaced { why } => out.push_str(&format!(
                "\n  replaced {name} ({why}): sent from line 1 as a new input"
            )),
            _ => {}
        }
    }
    out
}

fn summary(cfg: &SendConfig, progress: &Progress, what: String) -> String {
    let s = &progress.stats;
    let mut text = format!(
        "send complete: {what} to {}\n{}",
        cfg.webhook.url.redacted(),
        report::figures(progress, "posted")
    );
    if Stats::get(&s.skipped) > 0 {
        text.push_str(&format!(
            "\n  skipped  {} (not JSON objects)",
            count(Stats::get(&s.skipped), "line", "lines")
        ));
    }
    text
}
