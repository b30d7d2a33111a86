//! `send`: NDJSON from stdin or files (plain or `.gz`) to the webhook, through the same batcher
//! and sink as `backfill`. Any JSON objects are accepted; `--event` filters apply to objects
//! that have an `event` field. With files, a checkpoint records how far each was acknowledged
//! and how to recognise it (`files`): a file appended to since is continued after its sent
//! part, a replaced one is sent again from its first line. From stdin, a failure says how many
//! lines were acknowledged so the rest can be fed again.

pub(crate) mod files;
pub(crate) mod lines;

use crate::cli::{OnInvalid, SendArgs};
use crate::commands::Report;
use crate::commands::runner;
use crate::domain::Filters;
use crate::domain::JobId;
use crate::error::{EXIT_OK, EXIT_REJECTED};
use crate::net::tls::CaCerts;
use crate::pipeline::Item;
use crate::pipeline::ledger::Stats;
use crate::progress::Progress;
use crate::progress::count;
use crate::settings::{self, Retries};
use crate::sinks::dead_letter::DeadLetter;
use crate::sinks::webhook::Sink;
use crate::state::checkpoint::{self, State};
use anyhow::Context;
use files::{Found, SendState};
use indicatif::HumanCount;
use lines::{Line, LineReader};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::sync::mpsc;

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

    fn job_id(&self, files: &[PathBuf]) -> JobId {
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

/// How far the input has been acknowledged: everything before `offset` (bytes of the
/// decompressed stream) of file number `file`, which is `line` lines. What the state keeps per
/// file is a `files::SendState`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SendPosition {
    pub(crate) file: usize,
    pub(crate) offset: u64,
    pub(crate) line: u64,
}

pub(crate) async fn run(cfg: &SendConfig, progress: &Arc<Progress>) -> anyhow::Result<Report> {
    let http = crate::net::http::client(cfg.retries.http_timeout, &cfg.ca_certs, progress)?;

    if cfg.files.is_empty() {
        // No state, so no lock: the dead-letter file is opened (and a torn line cut) at once.
        let sink = Sink::open(http, &cfg.webhook, &cfg.retries.policy, progress)?;
        progress.set_unbounded();
        progress.set_status("reading stdin".into());
        let acked = AtomicU64::new(0);
        let resume_hint = || {
            let acked = acked.load(Relaxed);
            format!(
                "{acked} lines of stdin were acknowledged; to send the rest, feed the same input again from its line {} on: ... | tail -n +{} | posthog-patterns send ...",
                acked + 1,
                acked + 1
            )
        };
        let work = deliver(cfg, &sink, progress, Source::Stdin, |pos, _| {
            acked.store(pos.line, Relaxed);
            Ok(())
        });
        let result = runner::interruptible(work, cfg.retries.max_run_time, resume_hint).await;
        if let Err(e) = result {
            return Err(
                if crate::error::exit_code_of(&e) == crate::error::EXIT_INTERRUPTED {
                    e
                } else {
                    crate::error::with_hint(e, &resume_hint())
                },
            );
        }
        return Ok(summary(cfg, progress, "stdin".into()));
    }

    let files: Vec<PathBuf> = cfg
        .files
        .iter()
        .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
        .collect();
    // A file that is not there is a mistake in the command line (exit 2), before anything.
    for f in &files {
        std::fs::metadata(f)
            .map_err(|e| crate::error::usage(format!("cannot read {}: {e}", f.display())))?;
    }
    let job = cfg.job_id(&files);
    let (store, stored) = checkpoint::open_job::<SendState>("send", &job, &cfg.resume)?;
    // Under the job's lock: opening the dead-letter file may cut a torn last line.
    let sink = Sink::open(http, &cfg.webhook, &cfg.retries.policy, progress)?;
    let mut state = match stored {
        Some(state) => {
            checkpoint::check_job(store.path(), &state.job, &job)?;
            state
        }
        None => State::new(job),
    };
    // A position without files: written before file identities were recorded, so whether a
    // file changed since cannot be told.
    if state.position.as_ref().is_some_and(|p| p.files.is_empty()) {
        return Err(crate::error::usage(format!(
            "the checkpoint {} was written by an earlier posthog-patterns that did not record which files it read, so it cannot tell whether they changed since; pass --restart to send them from their first line (the webhook may then see some events again)",
            store.path().display()
        )));
    }
    let recorded = state.position.clone().unwrap_or_default().files;
    let inputs: Vec<files::Input> = files
        .iter()
        .enumerate()
        .map(|(i, f)| files::Input::open(i, f, recorded.get(i).cloned().flatten()))
        .collect::<anyhow::Result<_>>()?;
    if inputs.iter().all(|i| i.found == Found::Unchanged) {
        return Ok(Report::ok(format!(
            "send already complete: nothing new in {} since the last run ({} events posted before); pass --restart to send them again",
            count(files.len() as u64, "file", "files"),
            HumanCount(state.counters.posted),
        )));
    }
    for input in &inputs {
        tell_found(input, progress);
    }
    state.complete = false;
    state.counters.runs += 1;
    let inputs = Arc::new(inputs);
    // Files before this one have been recorded as read to their end.
    let mut sealed = 0;
    let work = deliver(
        cfg,
        &sink,
        progress,
        Source::Files(inputs.clone()),
        |pos, done| {
            let mut sent = state.position.clone().unwrap_or_default();
            for k in sealed..pos.file {
                if let Some(whole) = inputs[k].sent_to_end()? {
                    sent.record(k, whole);
                }
            }
            sealed = sealed.max(pos.file);
            if let Some(input) = inputs.get(pos.file) {
                sent.record(pos.file, input.sent(pos.offset, pos.line, false)?);
            }
            store.commit(&mut state, sent, done)
        },
    );
    let result = runner::interruptible(work, cfg.retries.max_run_time, || {
        runner::RESUME_HINT.to_string()
    })
    .await;
    result?;
    let mut sent = state.position.clone().unwrap_or_default();
    for (k, input) in inputs.iter().enumerate() {
        if let Some(whole) = input.sent_to_end()? {
            sent.record(k, whole);
        }
    }
    state.position = Some(sent);
    state.complete = true;
    store.save(&mut state)?;
    let mut report = summary(cfg, progress, count(files.len() as u64, "file", "files"));
    report.summary.push_str(&changes(&inputs));
    Ok(report)
}

/// Says what was found of a file read before, as the run starts.
fn tell_found(input: &files::Input, progress: &Progress) {
    let name = input.path.display();
    let line = input.from.line;
    match &input.found {
        Found::New | Found::Unchanged => {}
        Found::Continued { grew: true } => progress.info(&format!(
            "{name} was appended to since the last run: sending the lines after line {line}"
        )),
        Found::Continued { grew: false } => {
            progress.info(&format!("resuming {name} after line {line}"))
        }
        Found::Replaced { why } => {
            let unsent = match &input.before {
                Some(before) if !before.to_end => format!(
                    "; the earlier file had been sent only up to line {}, and its other lines are gone with it",
                    before.lines
                ),
                _ => String::new(),
            };
            progress.warn(&format!(
                "{name} was replaced since the last run ({why}): sending it from line 1 as a new input{unsent}"
            ));
        }
    }
}

/// Summary lines for the files that were appended to or replaced since the last run.
fn changes(inputs: &[files::Input]) -> String {
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

fn summary(cfg: &SendConfig, progress: &Progress, what: String) -> Report {
    let s = &progress.stats;
    let rejected = Stats::get(&s.dead_lettered) + Stats::get(&s.skipped);
    let mut text = format!(
        "send complete: {what} to {}\n{}",
        cfg.webhook.url.redacted(),
        runner::figures(progress, "posted")
    );
    if Stats::get(&s.skipped) > 0 {
        text.push_str(&format!(
            "\n  skipped  {} (not JSON objects)",
            count(Stats::get(&s.skipped), "line", "lines")
        ));
    }
    Report {
        exit: if rejected > 0 { EXIT_REJECTED } else { EXIT_OK },
        summary: text,
    }
}

/// What `send` reads.
enum Source {
    Stdin,
    Files(Arc<Vec<files::Input>>),
}

async fn deliver(
    cfg: &SendConfig,
    sink: &Sink,
    progress: &Arc<Progress>,
    source: Source,
    commit: impl FnMut(&SendPosition, crate::pipeline::Delivered) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let reading = Reading {
        filters: cfg.filters.clone(),
        on_invalid: cfg.on_invalid,
        dead_letter: sink.dead_letter(),
        max_line_bytes: cfg.max_line_bytes,
        progress: progress.clone(),
    };
    runner::pipe(
        move |tx| async move {
            tokio::task::spawn_blocking(move || reading.read(source, tx))
                .await
                .map_err(|e| anyhow::anyhow!("the reader failed: {e}"))?
        },
        cfg.webhook.posting,
        sink,
        progress,
        commit,
    )
    .await
}

/// The blocking side: reads lines and hands records to the pipeline.
struct Reading {
    filters: Filters,
    on_invalid: OnInvalid,
    dead_letter: Option<Arc<DeadLetter>>,
    max_line_bytes: usize,
    progress: Arc<Progress>,
}

/// The `event` field of an object, whatever its type (only a string is an event name).
#[derive(Deserialize)]
struct Named {
    #[serde(default)]
    event: Option<serde_json::Value>,
}

impl Reading {
    fn read(self, source: Source, tx: mpsc::Sender<Vec<Item<SendPosition>>>) -> anyhow::Result<()> {
        match source {
            Source::Stdin => {
                let mut lines = LineReader::stdin(self.max_line_bytes);
                self.read_one("stdin", &mut lines, 0, &tx)
            }
            Source::Files(inputs) => self.read_files(&inputs, &tx),
        }
    }

    /// Reads each file from where this run starts it; an unchanged file is not opened.
    fn read_files(
        &self,
        inputs: &[files::Input],
        tx: &mpsc::Sender<Vec<Item<SendPosition>>>,
    ) -> anyhow::Result<()> {
        let sizes: Vec<u64> = inputs
            .iter()
            .map(|i| i.file.metadata().map_or(0, |m| m.len()))
            .collect();
        let total: u64 = sizes.iter().sum();
        // The share done: the raw bytes behind each reader, and all of an unchanged file.
        let share = || {
            let done: u64 = inputs
                .iter()
                .zip(&sizes)
                .map(|(i, size)| match i.found {
                    Found::Unchanged => *size,
                    _ => i.raw.load(Relaxed),
                })
                .sum();
            self.progress.set_done(done as f64 / total.max(1) as f64);
        };
        for (i, input) in inputs.iter().enumerate() {
            if input.found == Found::Unchanged {
                continue;
            }
            let mut lines = LineReader::open_at(
                input.file.clone(),
                input.gzip,
                self.max_line_bytes,
                input.raw.clone(),
                (input.from.offset, input.from.line),
            )
            .with_context(|| format!("cannot resume {}", input.path.display()))?;
            let name = input.path.display().to_string();
            self.progress.set_status(name.clone());
            share();
            if !self.read_one_with(&name, &mut lines, i, tx, &share)? {
                return Ok(());
            }
            // Set once: each file is read once per run.
            let _ = input.end.set((lines.offset, lines.line));
        }
        self.progress.set_done(1.0);
        Ok(())
    }

    fn read_one(
        &self,
        name: &str,
        lines: &mut LineReader,
        file: usize,
        tx: &mpsc::Sender<Vec<Item<SendPosition>>>,
    ) -> anyhow::Result<()> {
        self.read_one_with(name, lines, file, tx, &|| {})
            .map(|_| ())
    }

    /// Reads one input to its end. Returns false if the pipeline has stopped.
    fn read_one_with(
        &self,
        name: &str,
        lines: &mut LineReader,
        file: usize,
        tx: &mpsc::Sender<Vec<Item<SendPosition>>>,
        share: &dyn Fn(),
    ) -> anyhow::Result<bool> {
        let stats = &self.progress.stats;
        let mut chunk = Vec::with_capacity(1000);
        // The position after lines that produced no record (blank, filtered, skipped).
        let mut quiet_to: Option<SendPosition> = None;
        loop {
            let line = lines
                .next_line()
                .with_context(|| format!("cannot read {name}"))?;
            let pos = SendPosition {
                file,
                offset: lines.offset,
                line: lines.line,
            };
            let Some(mut line) = line else { break };
            // A byte-order mark some editors put at the start of a file is not part of the JSON.
            if let Line::Text(text) = &mut line
                && lines.line == 1
                && text.starts_with(b"\xEF\xBB\xBF")
            {
                text.drain(..3);
            }
            if let Line::Text(text) = &line
                && text.iter().all(u8::is_ascii_whitespace)
            {
                quiet_to = Some(pos);
                continue;
            }
            let checked = match &line {
                Line::TooLong => Err(format!(
                    "line is longer than --max-line-bytes ({} bytes)",
                    self.max_line_bytes
                )),
                Line::Text(text) => check(text),
            };
            // (A line that is not an event is skipped, not read: the summary counts it apart.)
            let event = match checked {
                Ok(event) => {
                    Stats::add(&stats.read, 1);
                    event
                }
                Err(problem) => {
                    let excerpt = match &line {
                        Line::Text(t) => crate::net::http::redacted_excerpt(t, 80),
                        Line::TooLong => "(too long to show)".into(),
                    };
                    if self.on_invalid == OnInvalid::Stop {
                        // Hand on what came before, then stop: the pipeline delivers it first.
                        let _ = tx.blocking_send(std::mem::take(&mut chunk));
                        anyhow::bail!(
                            "{name}, line {}: {problem}: {excerpt}. Everything before this line was sent; fix the line, or pass --on-invalid skip",
                            lines.line
                        );
                    }
                    Stats::add(&stats.skipped, 1);
                    if let Some(dl) = &self.dead_letter {
                        let text = match &line {
                            Line::Text(t) => String::from_utf8_lossy(t).into_owned(),
                            Line::TooLong => "(longer than --max-line-bytes: not kept)".into(),
                        };
                        dl.write_invalid(name, lines.line, &problem, &text)?;
                    }
                    self.progress
                        .warn(&format!("{name}, line {}: {problem}; skipped", lines.line));
                    quiet_to = Some(pos);
                    continue;
                }
            };
            let Line::Text(text) = line else {
                continue; // a line too long is a problem, handled above
            };
            // Checked as UTF-8 above; lossy only to stay total.
            let json = String::from_utf8(text)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            let json = json.trim().to_string();
            if let Some(event) = event.as_deref()
                && !self.filters.keeps(event)
            {
                Stats::add(&stats.filtered, 1);
                quiet_to = Some(pos);
                continue;
            }
            chunk.push(Item::Record { json, pos });
            quiet_to = None;
            // Hand the lines on when the chunk is big, or before waiting for more input.
            if chunk.len() >= 1000 || lines.drained() {
                share();
                if tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                    return Ok(false);
                }
            }
        }
        chunk.extend(quiet_to.map(Item::Mark));
        share();
        Ok(chunk.is_empty() || tx.blocking_send(chunk).is_ok())
    }
}

/// A line must be one JSON object. Parsed once: returns the object's event name, if it has a
/// string `event` field (another type, or a duplicate key, means no name: it is not filtered).
fn check(text: &[u8]) -> Result<Option<String>, String> {
    let trimmed = text.trim_ascii();
    if trimmed.starts_with(b"[") {
        return Err(
            "a JSON array, not an object (to send its elements, one a line: jq -c '.[]' FILE | posthog-patterns send)"
                .into(),
        );
    }
    if !trimmed.starts_with(b"{") {
        return Err("not a JSON object".into());
    }
    // serde_json lets bytes that are not UTF-8 pass inside strings it skips over.
    if let Err(e) = std::str::from_utf8(trimmed) {
        return Err(format!(
            "not UTF-8 (a byte that is not UTF-8 at column {})",
            e.valid_up_to() + 1
        ));
    }
    match serde_json::from_slice::<Named>(trimmed) {
        Ok(named) => Ok(named.event.and_then(|e| e.as_str().map(str::to_owned))),
        // `Named` refuses some valid JSON (a duplicate `event` key): tell the two apart.
        Err(_) => serde_json::from_slice::<serde::de::IgnoredAny>(trimmed)
            .map(|_| None)
            .map_err(|e| format!("not valid JSON ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_string_event_field_is_an_event_name() {
        assert_eq!(
            check(br#"{"event":"signup","x":1}"#).unwrap().as_deref(),
            Some("signup")
        );
        assert_eq!(check(br#"{"event":42}"#), Ok(None));
        assert_eq!(check(br#"{"event":"a","event":"b"}"#), Ok(None));
        assert_eq!(check(br#"{"name":"x"}"#), Ok(None));
    }

    #[test]
    fn a_line_must_be_one_json_object() {
        assert!(check(b"  {\"a\": [1, 2]}  ").is_ok());
        assert!(check(b"[1]").unwrap_err().contains("jq -c '.[]'"));
        assert!(
            check(b"{\"a\":\"\xff\"}")
                .unwrap_err()
                .contains("not UTF-8")
        );
        assert!(check(b"{\"a\":").unwrap_err().contains("not valid JSON"));
        assert!(check(b"{} {}").is_err());
        assert!(check(&[b'{', 0xff, b'}']).is_err());
    }
}
