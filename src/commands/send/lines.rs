//! Reading `send`'s input: lines of at most `--max-line-bytes` from stdin or a plain or gzip
//! file, with the byte offset and line number a checkpoint resumes from. A longer line is
//! reported, not kept, so no input can exhaust memory.

use crate::sinks::ndjson::is_gzip;
use anyhow::Context;
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counts the bytes read from the underlying (possibly compressed) stream, for progress.
pub(crate) struct Counting<R> {
    inner: R,
    pub(crate) count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
}

/// A line, without its line break.
pub(crate) enum Line {
    Text(Vec<u8>),
    /// Longer than the limit; the rest of it was skipped to the next line break.
    TooLong,
}

/// Reads lines of at most `max` bytes from a plain or gzip stream.
pub(crate) struct LineReader {
    inner: BufReader<Box<dyn Read + Send>>,
    max: usize,
    /// Bytes of the (decompressed) stream consumed so far, line breaks included.
    pub(crate) offset: u64,
    /// Lines read so far.
    pub(crate) line: u64,
}

impl LineReader {
    /// Opens a file (gzip if it ends in `.gz`), counting the raw bytes read into `count`.
    pub(crate) fn open(path: &Path, max: usize, count: Arc<AtomicU64>) -> anyhow::Result<Self> {
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

    pub(crate) fn stdin(max: usize) -> Self {
        LineReader {
            inner: BufReader::with_capacity(1 << 16, Box::new(io::stdin())),
            max,
            offset: 0,
            line: 0,
        }
    }

    /// Whether the next line needs a new read from the input (which may block on a pipe).
    pub(crate) fn drained(&self) -> bool {
        self.inner.buffer().is_empty()
    }

    /// Skips `bytes` bytes and `lines` lines already handled by an earlier run.
    pub(crate) fn skip(&mut self, bytes: u64, lines: u64) -> io::Result<()> {
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
    pub(crate) fn next_line(&mut self) -> io::Result<Option<Line>> {
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
