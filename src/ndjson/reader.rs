//! NDJSON as a source, like the PostHog readers: lines of stdin or of files (plain or `.gz`)
//! checked one by one (each must be one JSON object), filtered by event name, and handed to
//! the pipeline as records with the position after each line. Invalid lines stop the read
//! or are skipped and dead-lettered (`--on-invalid`).

use super::files::{Found, Input};
use super::lines::{Line, LineReader, Position};
use crate::cli::OnInvalid;
use crate::domain::Filters;
use crate::pipeline::Item;
use crate::pipeline::ledger::Stats;
use crate::progress::Progress;
use crate::sinks::dead_letter::DeadLetter;
use anyhow::Context;
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::mpsc;

/// What `send` reads.
pub(crate) enum Source {
    Stdin,
    Files(Arc<Vec<Input>>),
}

/// The blocking side: reads lines and hands records to the pipeline.
pub(crate) struct Reading {
    pub(crate) filters: Filters,
    pub(crate) on_invalid: OnInvalid,
    pub(crate) dead_letter: Option<Arc<DeadLetter>>,
    pub(crate) max_line_bytes: usize,
    pub(crate) progress: Arc<Progress>,
}

/// The `event` field of an object, whatever its type (only a string is an event name).
#[derive(Deserialize)]
struct Named {
    #[serde(default)]
    event: Option<serde_json::Value>,
}

impl Reading {
    pub(crate) fn read(
        self,
        source: Source,
        tx: mpsc::Sender<Vec<Item<Position>>>,
    ) -> anyhow::Result<()> {
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
        inputs: &[Input],
        tx: &mpsc::Sender<Vec<Item<Position>>>,
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
        tx: &mpsc::Sender<Vec<Item<Position>>>,
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
        tx: &mpsc::Sender<Vec<Item<Position>>>,
        share: &dyn Fn(),
    ) -> anyhow::Result<bool> {
        let stats = &self.progress.stats;
        let mut chunk = Vec::with_capacity(1000);
        // The position after lines that produced no record (blank, filtered, skipped).
        let mut quiet_to: Option<Position> = None;
        loop {
            let line = lines
                .next_line()
                .with_context(|| format!("cannot read {name}"))?;
            let pos = Position {
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
                    tracing::warn!("{name}, line {}: {problem}; skipped", lines.line);
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
