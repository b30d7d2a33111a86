//! `send`'s input files across runs: what the state records for each file (how far it was
//! sent, and how to recognise the file again), and what a new run finds: a file read before
//! is continued after its sent part only if that part is still there, byte for byte as far as
//! the fingerprint tells; otherwise it was replaced and is sent from its first line as a new
//! input. A run never says "complete" over lines it did not send, and never resumes inside a
//! different file. Format and limits: docs/checkpoints.md, docs/piping.md.

use super::lines::Position;
use crate::domain::is_gzip;
use crate::state::fingerprint;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

/// The state's position for a set of files: what was sent from each, by file number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct SendState {
    /// `None` for a file not reached yet.
    #[serde(default)]
    pub(crate) files: Vec<Option<Sent>>,
}

impl SendState {
    /// Records what was sent from file `i`.
    pub(crate) fn record(&mut self, i: usize, sent: Sent) {
        if self.files.len() <= i {
            self.files.resize(i + 1, None);
        }
        self.files[i] = Some(sent);
    }
}

/// What has been sent from one file, and how to recognise that file again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sent {
    /// Bytes of the (decompressed) stream and lines acknowledged.
    pub(crate) offset: u64,
    pub(crate) lines: u64,
    /// The file had been read to its end, which `offset` is.
    pub(crate) to_end: bool,
    pub(crate) identity: Identity,
}

/// A file as it was when its position was recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub(crate) mtime_ns: i128,
    /// The raw bytes `fingerprint` covers, and where the file ended if it was read to its
    /// end: `offset` for a plain file; for a gzip file, every raw byte read from it so far,
    /// because a position in the decompressed stream has no exact raw counterpart (and an
    /// unchanged raw prefix decodes to the same stream).
    pub(crate) covered: u64,
    pub(crate) fingerprint: String,
}

/// What a run finds at a file's path, compared with the state.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Found {
    /// Not read before: sent from its first line.
    New,
    /// As it was when last read to its end: nothing to send.
    Unchanged,
    /// The part already sent is still there: sending goes on after it. `grew`: the file is
    /// longer than when it was last read (appended to).
    Continued { grew: bool },
    /// The part already sent is not there any more: sent from its first line as a new input.
    Replaced { why: String },
}

/// One input file of this run: an open handle shared by the reader (which reads it) and the
/// checkpoint (which fingerprints it), what was found there, and where its reading ended.
pub(crate) struct Input {
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    pub(crate) gzip: bool,
    pub(crate) found: Found,
    /// Where reading starts (line 0, offset 0 unless continued).
    pub(crate) from: Position,
    /// What the state held for it, if anything.
    pub(crate) before: Option<Sent>,
    /// The stream offset and line count at its end, once the reader got there.
    pub(crate) end: OnceLock<(u64, u64)>,
    /// Raw bytes of the file behind the reader: read, or skipped by seeking.
    pub(crate) raw: Arc<AtomicU64>,
}

impl Input {
    /// Opens file number `index` and compares it with what the state recorded for it.
    pub(crate) fn open(index: usize, path: &Path, before: Option<Sent>) -> anyhow::Result<Input> {
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let gzip = is_gzip(path);
        let found = match &before {
            None => Found::New,
            Some(sent) => compare(&file, gzip, sent)
                .with_context(|| format!("cannot read {}", path.display()))?,
        };
        let from = match (&found, &before) {
            (Found::Continued { .. } | Found::Unchanged, Some(sent)) => Position {
                file: index,
                offset: sent.offset,
                line: sent.lines,
            },
            _ => Position {
                file: index,
                offset: 0,
                line: 0,
            },
        };
        Ok(Input {
            path: path.to_path_buf(),
            file: Arc::new(file),
            gzip,
            found,
            from,
            before,
            end: OnceLock::new(),
            raw: Arc::new(AtomicU64::new(0)),
        })
    }

    /// What to record for this file with `offset` bytes and `lines` lines sent.
    pub(crate) fn sent(&self, offset: u64, lines: u64, to_end: bool) -> anyhow::Result<Sent> {
        let covered = if self.gzip {
            self.raw.load(Relaxed)
        } else {
            offset
        };
        let identity = identify(&self.file, covered)
            .with_context(|| format!("cannot read back {}", self.path.display()))?;
        Ok(Sent {
            offset,
            lines,
            to_end,
            identity,
        })
    }

    /// What to record once the reader reached its end; `None` if it has not.
    pub(crate) fn sent_to_end(&self) -> anyhow::Result<Option<Sent>> {
        match self.end.get() {
            Some(&(offset, lines)) => self.sent(offset, lines, true).map(Some),
            None => Ok(None),
        }
    }
}

fn identify(file: &File, covered: u64) -> std::io::Result<Identity> {
    let meta = file.metadata()?;
    Ok(Identity {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        covered,
        fingerprint: fingerprint::prefix(file, covered)?,
    })
}

/// Compares an open file with what was sent from the file at its path before.
fn compare(file: &File, gzip: bool, sent: &Sent) -> std::io::Result<Found> {
    let meta = file.metadata()?;
    let was = &sent.identity;
    let other_file = (meta.dev(), meta.ino()) != (was.dev, was.ino);
    let kept = fingerprint::begins_with(file, was.covered, &was.fingerprint)?;
    if !kept {
        let what = if gzip {
            "its compressed bytes"
        } else {
            "the part already sent"
        };
        let why = if meta.len() < was.covered {
            format!(
                "it is shorter ({} bytes) than {what} ({} bytes)",
                meta.len(),
                was.covered
            )
        } else {
            format!("{what} changed")
        };
        let why = if other_file {
            format!("{why}; it is another file (device and inode differ)")
        } else {
            why
        };
        return Ok(Found::Replaced { why });
    }
    // Read to its end then, and not a byte longer now: nothing to send. (Its size when the
    // position was recorded can be larger than where reading ended, if it grew meanwhile.)
    Ok(if sent.to_end && meta.len() == was.covered {
        Found::Unchanged
    } else {
        Found::Continued {
            grew: meta.len() > was.size,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    fn lines(range: std::ops::Range<usize>) -> String {
        range.map(|i| format!("{{\"n\":{i}}}\n")).collect()
    }

    /// What a run that read `path` to its end records.
    fn sent_whole(path: &Path) -> Sent {
        let input = Input::open(0, path, None).unwrap();
        let len = std::fs::metadata(path).unwrap().len();
        input.sent(len, 0, true).unwrap()
    }

    fn found(path: &Path, sent: &Sent) -> Found {
        Input::open(0, path, Some(sent.clone())).unwrap().found
    }

    #[test]
    fn an_untouched_file_is_unchanged_and_an_appended_one_continues_after_its_sent_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daily.ndjson");
        write(&path, &lines(0..100));
        let sent = sent_whole(&path);
        assert_eq!(found(&path, &sent), Found::Unchanged);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(lines(100..150).as_bytes())
            .unwrap();
        let input = Input::open(0, &path, Some(sent.clone())).unwrap();
        assert_eq!(input.found, Found::Continued { grew: true });
        assert_eq!(input.from.offset, sent.offset);
    }

    #[test]
    fn a_rewritten_shorter_or_renamed_over_file_is_replaced_and_starts_at_line_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daily.ndjson");
        write(&path, &lines(0..100));
        let sent = sent_whole(&path);

        // Another day's file, longer, moved into place.
        let next = dir.path().join("next.ndjson");
        write(&next, &lines(1000..1200));
        std::fs::rename(&next, &path).unwrap();
        let input = Input::open(0, &path, Some(sent.clone())).unwrap();
        let Found::Replaced { why } = &input.found else {
            panic!("{:?}", input.found)
        };
        assert!(
            why.contains("changed") && why.contains("another file"),
            "{why}"
        );
        assert_eq!((input.from.offset, input.from.line), (0, 0));

        write(&path, &lines(0..50));
        let Found::Replaced { why } = found(&path, &sent) else {
            panic!("a shorter file is replaced")
        };
        assert!(why.contains("shorter"), "{why}");
    }

    #[test]
    fn an_interrupted_file_continues_and_a_sent_gzip_file_is_recognised_by_its_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part.ndjson");
        write(&path, &lines(0..100));
        let input = Input::open(0, &path, None).unwrap();
        let half = input.sent(500, 50, false).unwrap();
        assert_eq!(found(&path, &half), Found::Continued { grew: false });
        // Read to its end at 500 bytes, but longer by the time the position was recorded.
        let raced = input.sent(500, 50, true).unwrap();
        assert_eq!(found(&path, &raced), Found::Continued { grew: false });

        let gz = dir.path().join("x.ndjson.gz");
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(lines(0..100).as_bytes()).unwrap();
        enc.finish().unwrap();
        let input = Input::open(0, &gz, None).unwrap();
        let size = std::fs::metadata(&gz).unwrap().len();
        input.raw.store(size, Relaxed); // as the reader leaves it at the end
        let sent = input.sent(1234, 100, true).unwrap();
        assert_eq!(sent.identity.covered, size);
        assert_eq!(found(&gz, &sent), Found::Unchanged);
    }
}
