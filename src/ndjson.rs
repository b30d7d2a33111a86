//! NDJSON in and out: the writer `export` delivers batches to (stdout, a file, or a gzip file,
//! synced before the checkpoint moves, so a resumed export never keeps a torn line), and the
//! bounded line reader `send` reads with (a line longer than the limit is an error, not an
//! out-of-memory).

use crate::progress::{Progress, Stats};
use crate::sink::{Deliver, Delivered};
use anyhow::Context;
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use futures_util::future::BoxFuture;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

pub fn is_gzip(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// The reader closed our stdout (`| head`): the run ends quietly.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct OutputClosed;

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
pub struct NdjsonWriter {
    target: Mutex<Target>,
    /// Bytes in the file after the last complete batch: what a checkpoint records.
    len: AtomicU64,
    progress: Arc<Progress>,
}

impl NdjsonWriter {
    pub fn stdout(progress: Arc<Progress>) -> Self {
        NdjsonWriter {
            target: Mutex::new(Target::Stdout(io::stdout())),
            len: AtomicU64::new(0),
            progress,
        }
    }

    /// Opens `path` for appending after its first `keep` bytes (a checkpoint's length; 0 to
    /// start afresh): anything after them, such as a torn last line, is cut off.
    pub fn file(path: &Path, keep: u64, progress: Arc<Progress>) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
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
            progress,
        })
    }

    pub fn len(&self) -> u64 {
        self.len.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
            Stats::add(&self.progress.stats.posted, events.len() as u64);
            Stats::add(&self.progress.stats.batches, 1);
            Ok(Delivered {
                posted: events.len(),
                dead_lettered: 0,
            })
        })
    }
}

/// Counts the bytes read from the underlying (possibly compressed) stream, for progress.
pub struct Counting<R> {
    inner: R,
    pub count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
}

/// A line, without its line break.
pub enum Line {
    Text(Vec<u8>),
    /// Longer than the limit; the rest of it was skipped to the next line break.
    TooLong,
}

/// Reads lines of at most `max` bytes from a plain or gzip stream.
pub struct LineReader {
    inner: BufReader<Box<dyn Read + Send>>,
    max: usize,
    /// Bytes of the (decompressed) stream consumed so far, line breaks included.
    pub offset: u64,
    /// Lines read so far.
    pub line: u64,
}

impl LineReader {
    /// Opens a file (gzip if it ends in `.gz`), counting the raw bytes read into `count`.
    pub fn open(path: &Path, max: usize, count: Arc<AtomicU64>) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let raw = Counting { inner: file, count };
        let inner: Box<dyn Read + Send> = if is_gzip(path) {
            Box::new(MultiGzDecoder::new(BufReader::new(raw)))
        } else {
            Box::new(raw)
        };
        Ok(LineReader {
            inner: BufReader::with_capacity(1 << 16, inner),
            max,
            offset: 0,
            line: 0,
        })
    }

    pub fn stdin(max: usize) -> Self {
        LineReader {
            inner: BufReader::with_capacity(1 << 16, Box::new(io::stdin())),
            max,
            offset: 0,
            line: 0,
        }
    }

    /// Whether the next line needs a new read from the input (which may block on a pipe).
    pub fn drained(&self) -> bool {
        self.inner.buffer().is_empty()
    }

    /// Skips `bytes` bytes and `lines` lines already handled by an earlier run.
    pub fn skip(&mut self, bytes: u64, lines: u64) -> io::Result<()> {
        let copied = io::copy(&mut self.inner.by_ref().take(bytes), &mut io::sink())?;
        if copied < bytes {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file is shorter ({copied} bytes) than the checkpoint says ({bytes}); it changed since"
                ),
            ));
        }
        self.offset = bytes;
        self.line = lines;
        Ok(())
    }

    /// The next line, or `None` at the end.
    pub fn next_line(&mut self) -> io::Result<Option<Line>> {
        let mut buf = Vec::new();
        let n = self
            .inner
            .by_ref()
            .take(self.max as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        self.offset += n as u64;
        self.line += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Some(if buf.len() > self.max {
                Line::TooLong
            } else {
                Line::Text(buf)
            }));
        }
        if buf.len() <= self.max {
            return Ok(Some(Line::Text(buf))); // the last line, without a line break
        }
        // Too long: consume the rest of the line without keeping it.
        loop {
            let chunk = self.inner.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.inner.consume(i + 1);
                    self.offset += i as u64 + 1;
                    break;
                }
                None => {
                    let len = chunk.len();
                    self.inner.consume(len);
                    self.offset += len as u64;
                }
            }
        }
        Ok(Some(Line::TooLong))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(text: &[u8], max: usize) -> LineReader {
        LineReader {
            inner: BufReader::new(Box::new(io::Cursor::new(text.to_vec()))),
            max,
            offset: 0,
            line: 0,
        }
    }

    fn text(l: Option<Line>) -> String {
        match l {
            Some(Line::Text(t)) => String::from_utf8(t).unwrap(),
            Some(Line::TooLong) => "<too long>".into(),
            None => "<end>".into(),
        }
    }

    #[test]
    fn lines_offsets_and_a_missing_final_newline() {
        let mut r = reader(b"{\"a\":1}\r\n\n{\"b\":2}", 100);
        assert_eq!(text(r.next_line().unwrap()), "{\"a\":1}");
        assert_eq!((r.offset, r.line), (9, 1));
        assert_eq!(text(r.next_line().unwrap()), "");
        assert_eq!(text(r.next_line().unwrap()), "{\"b\":2}");
        assert_eq!((r.offset, r.line), (17, 3));
        assert_eq!(text(r.next_line().unwrap()), "<end>");
    }

    #[test]
    fn a_long_line_is_reported_and_skipped_without_keeping_it() {
        let mut long = vec![b'x'; 100_000];
        long.extend_from_slice(b"\n{}\n");
        let mut r = reader(&long, 1000);
        assert_eq!(text(r.next_line().unwrap()), "<too long>");
        assert_eq!(text(r.next_line().unwrap()), "{}");
        assert_eq!(r.line, 2);
        assert_eq!(r.offset, long.len() as u64);
    }

    #[test]
    fn skip_resumes_at_an_offset() {
        let mut r = reader(b"one\ntwo\nthree\n", 100);
        r.skip(8, 2).unwrap();
        assert_eq!(text(r.next_line().unwrap()), "three");
        assert_eq!(r.line, 3);
        assert!(reader(b"short", 100).skip(50, 1).is_err());
    }
}
