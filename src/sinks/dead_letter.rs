//! The dead-letter file (`--dead-letter`): events the webhook rejected, and with `send
//! --on-invalid skip` input lines that are not JSON objects, one NDJSON record each, synced
//! before the checkpoint moves past them.

use anyhow::Context;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Rejected events, one NDJSON line each: `{"status":..,"response":"..","event":{..}}`.
pub(crate) struct DeadLetter {
    path: PathBuf,
    file: Mutex<File>,
}

impl DeadLetter {
    /// Opens the file for appending. An incomplete last line (a run killed, or a disk that
    /// filled, mid-append) is cut first, so that every record in the file stays whole.
    /// Called by a command holding its job's lock (or reading stdin, which has no state).
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let file = super::open_private(path)
            .with_context(|| format!("cannot open the dead-letter file {}", path.display()))?;
        let whole = whole_len(&file)
            .with_context(|| format!("cannot read the dead-letter file {}", path.display()))?;
        if whole < file.metadata()?.len() {
            file.set_len(whole)
                .with_context(|| format!("cannot cut the torn last line of {}", path.display()))?;
        }
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
        self.append(text.as_bytes())
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
        self.append(format!("{record}\n").as_bytes())
    }

    /// Sets aside an event too large to read whole: what names it, not the event.
    pub(crate) fn write_oversized(
        &self,
        uuid: &str,
        timestamp: &str,
        size: u64,
        reason: &str,
    ) -> anyhow::Result<()> {
        let record = serde_json::json!({"uuid": uuid, "timestamp": timestamp, "size": size, "reason": reason});
        self.append(format!("{record}\n").as_bytes())
    }

    /// Writes whole records or nothing: a failed write (disk full) is cut off again.
    fn append(&self, records: &[u8]) -> anyhow::Result<()> {
        let mut file = self.file.lock().unwrap();
        let before = file.metadata().map(|m| m.len());
        let written = file.write_all(records).and_then(|_| file.sync_data());
        if let (Err(_), Ok(len)) = (&written, before) {
            let _ = file.set_len(len);
        }
        written
            .with_context(|| format!("cannot write the dead-letter file {}", self.path.display()))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// The length of the file up to and including its last line break.
fn whole_len(file: &File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut tail = Vec::new();
    let mut reader = file;
    let mut at = len;
    // Read backwards in chunks until a line break (or the start) is found.
    while at > 0 {
        let chunk = at.min(64 * 1024);
        at -= chunk;
        reader.seek(SeekFrom::Start(at))?;
        tail.resize(chunk as usize, 0);
        reader.read_exact(&mut tail)?;
        if let Some(i) = tail.iter().rposition(|b| *b == b'\n') {
            return Ok(at + i as u64 + 1);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_record_is_cut_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.ndjson");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n{\"status\":400,\"resp").unwrap();
        let dl = DeadLetter::open(&path).unwrap();
        dl.write(&["{\"uuid\":\"u\"}".to_string()], 400, "bad")
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[2]["event"]["uuid"], "u");
    }

    #[test]
    fn a_file_without_any_line_break_is_all_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.ndjson");
        std::fs::write(&path, "{\"status\":4").unwrap();
        DeadLetter::open(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
