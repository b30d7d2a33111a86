//! NDJSON out: the writer `export` delivers batches to (stdout, a file, or a gzip file, synced
//! before the checkpoint moves, so a resumed export never keeps a torn line). NDJSON in is
//! the source in `crate::ndjson`.

use crate::domain::is_gzip;
use crate::pipeline::{Deliver, Delivered};
use crate::state::fingerprint;
use anyhow::Context;
use flate2::Compression;
use flate2::write::GzEncoder;
use futures_util::future::BoxFuture;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The reader closed our stdout (`| head`): the run ends quietly.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub(crate) struct OutputClosed;

enum Target {
    Stdout(io::Stdout),
    /// A file, appended to; each batch is one gzip member when `gzip`.
    File {
        file: File,
        path: PathBuf,
        gzip: bool,
    },
}

/// Writes each batch as lines, then flushes (and for files, syncs).
pub(crate) struct NdjsonWriter {
    target: Mutex<Target>,
    /// Bytes in the file after the last complete batch: what a checkpoint records.
    len: AtomicU64,
}

impl NdjsonWriter {
    pub(crate) fn stdout() -> Self {
        NdjsonWriter {
            target: Mutex::new(Target::Stdout(io::stdout())),
            len: AtomicU64::new(0),
        }
    }

    /// Opens `path` for appending after its first `keep` bytes (a checkpoint's length; 0 to
    /// start afresh): anything after them, such as a torn last line, is cut off.
    pub(crate) fn file(path: &Path, keep: u64) -> anyhow::Result<Self> {
        // Readable too: each checkpoint records a fingerprint of what the file holds.
        let file = super::open_private(path)
            .with_context(|| format!("cannot open {} for writing", path.display()))?;
        file.set_len(keep).with_context(|| {
            format!(
                "cannot truncate {} to its last complete batch",
                path.display()
            )
        })?;
        Ok(NdjsonWriter {
            target: Mutex::new(Target::File {
                file,
                path: path.to_path_buf(),
                gzip: is_gzip(path),
            }),
            len: AtomicU64::new(keep),
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len.load(Relaxed)
    }

    /// The fingerprint of the file's complete part (see `state::fingerprint`), for a checkpoint
    /// to check the file against when the export resumes; `None` for stdout.
    pub(crate) fn fingerprint(&self) -> anyhow::Result<Option<String>> {
        match &*self.target.lock().unwrap() {
            Target::Stdout(_) => Ok(None),
            Target::File { file, path, .. } => fingerprint::prefix(file, self.len())
                .map(Some)
                .with_context(|| format!("cannot read back {}", path.display())),
        }
    }

    fn write(&self, events: &[String]) -> anyhow::Result<()> {
        let mut text = Vec::with_capacity(events.iter().map(|e| e.len() + 1).sum());
        for e in events {
            text.extend_from_slice(e.as_bytes());
            text.push(b'\n');
        }
        match &mut *self.target.lock().unwrap() {
            Target::Stdout(out) => {
                let mut out = out.lock();
                match out.write_all(&text).and_then(|_| out.flush()) {
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(OutputClosed.into()),
                    other => other.context("cannot write to stdout"),
                }
            }
            Target::File { file, path, gzip } => {
                if *gzip {
                    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
                    enc.write_all(&text)?;
                    text = enc.finish()?;
                }
                file.write_all(&text)
                    .and_then(|_| file.sync_data())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                self.len.fetch_add(text.len() as u64, Relaxed);
                Ok(())
            }
        }
    }
}

impl Deliver for NdjsonWriter {
    fn deliver<'a>(&'a self, events: &'a [String]) -> BoxFuture<'a, anyhow::Result<Delivered>> {
        Box::pin(async move {
            self.write(events)?;
            Ok(Delivered {
                posted: events.len(),
                dead_lettered: 0,
            })
        })
    }
}
