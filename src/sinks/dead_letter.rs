//! The dead-letter file (`--dead-letter`): events the webhook rejected, and with `send
//! --on-invalid skip` input lines that are not JSON objects, one NDJSON record each, synced
//! before the checkpoint moves past them.

use anyhow::Context;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Rejected events, one NDJSON line each: `{"status":..,"response":"..","event":{..}}`.
pub(crate) struct DeadLetter {
    path: PathBuf,
    file: Mutex<File>,
}

impl DeadLetter {
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the dead-letter file {}", path.display()))?;
        Ok(DeadLetter {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Appends and syncs the events, so that they are safe before the checkpoint moves on.
    pub(crate) fn write(
        &self,
        events: &[String],
        status: u16,
        response: &str,
    ) -> anyhow::Result<()> {
        let response = serde_json::to_string(response).expect("strings serialize");
        let mut text = String::new();
        for e in events {
            text.push_str(&format!(
                "{{\"status\":{status},\"response\":{response},\"event\":{e}}}\n"
            ));
        }
        let mut file = self.file.lock().unwrap();
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_data())
            .with_context(|| format!("cannot write the dead-letter file {}", self.path.display()))
    }

    /// Sets aside an input line that is not a JSON object (`send --on-invalid skip`).
    pub(crate) fn write_invalid(
        &self,
        input: &str,
        line: u64,
        error: &str,
        text: &str,
    ) -> anyhow::Result<()> {
        let record =
            serde_json::json!({"input": input, "line": line, "error": error, "text": text});
        let mut file = self.file.lock().unwrap();
        writeln!(file, "{record}")
            .and_then(|_| file.sync_data())
            .with_context(|| format!("cannot write the dead-letter file {}", self.path.display()))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}
