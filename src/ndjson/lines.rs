//! Reading `send`'s input: lines of at most `--max-line-bytes` from stdin or a plain or gzip
//! file, with the byte offset and line number a checkpoint resumes from. A longer line is
//! reported, not kept, so no input can exhaust memory.

use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How far the input has been acknowledged: everything before `offset` (bytes of the
/// decompressed stream) of file number `file`, which is `line` lines. What `send`'s state keeps
/// per file is a `files::SendState`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) file: usize,
    pub(crate) offset: u64,
    pub(crate) line: u64,
}

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

/// A file handle shared with whoever fingerprints the file meanwhile (with positioned reads,
/// which leave this reader's position alone).
struct Shared(Arc<File>);

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl LineReader {
    /// Reads an open file (gzip when `gzip`) from stream `offset`, which is `line` lines in: a
    /// plain file seeks there, a gzip file is decompressed up to it. `count` is set to the raw
    /// bytes behind the reader, and kept up to date.
    pub(crate) fn open_at(
        file: Arc<File>,
        gzip: bool,
        max: usize,
        count: Arc<AtomicU64>,
        (offset, line): (u64, u64),
    ) -> io::Result<Self> {
        let seek_to = if gzip { 0 } else { offset };
        (&*file).seek(SeekFrom::Start(seek_to))?;
        count.store(seek_to, Relaxed);
        let raw = Counting {
            inner: Shared(file),
            count,
        };
        let inner: Box<dyn Read + Send> = if gzip {
            Box::new(MultiGzDecoder::new(BufReader::new(raw)))
        } else {
            Box::new(raw)
        };
        let mut reader = LineReader {
            inner: BufReader::with_capacity(1 << 16, inner),
            max,
            offset: seek_to,
            line: 0,
        };
        reader.skip(offset - seek_to, line)?;
        Ok(reader)
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

    /// Skips `bytes` more bytes; the reader is then `lines` lines in (handled by an earlier run).
    fn skip(&mut self, bytes: u64, lines: u64) -> io::Result<()> {
        let copied = io::copy(&mut self.inner.by_ref().take(bytes), &mut io::sink())?;
        if copied < bytes {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file is shorter ({} bytes) than the checkpoint says ({}); it changed since",
                    self.offset + copied,
                    self.offset + bytes
                ),
            ));
        }
        self.offset += bytes;
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
    use std::io::Write;

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

    fn file_with(bytes: &[u8], gzip: bool) -> Arc<File> {
        let mut f = tempfile::tempfile().unwrap();
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(&mut f, flate2::Compression::fast());
            enc.write_all(bytes).unwrap();
            enc.finish().unwrap();
        } else {
            f.write_all(bytes).unwrap();
        }
        Arc::new(f)
    }

    #[test]
    fn a_plain_or_gzip_file_resumes_at_an_offset() {
        for gzip in [false, true] {
            let file = file_with(b"one\ntwo\nthree\n", gzip);
            let count = Arc::new(AtomicU64::new(0));
            let mut r = LineReader::open_at(file, gzip, 100, count.clone(), (8, 2)).unwrap();
            assert_eq!(text(r.next_line().unwrap()), "three", "gzip: {gzip}");
            assert_eq!((r.offset, r.line), (14, 3));
            if !gzip {
                assert_eq!(count.load(Relaxed), 14, "raw bytes behind the reader");
            }
        }
        let short = file_with(b"short", true);
        let err = LineReader::open_at(short, true, 100, Arc::default(), (50, 1))
            .err()
            .unwrap();
        assert!(err.to_string().contains("shorter"), "{err}");
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Whatever the bytes and the limit: every line comes back whole, or as too long when
        /// it is, in order; offsets and line numbers add up; nothing panics.
        #[test]
        fn every_line_comes_back_whole_or_as_too_long(
            lines in proptest::collection::vec(proptest::collection::vec(any::<u8>().prop_map(|b| if b == b'\n' || b == b'\r' { b'x' } else { b }), 0..300), 1..40),
            trailing in any::<bool>(),
            max in 0usize..400,
        ) {
            let mut text = lines.join(&b'\n');
            if trailing {
                text.push(b'\n');
            }
            let mut expected = lines.clone();
            if !trailing && expected.last().is_some_and(|l| l.is_empty()) {
                expected.pop();
            }
            let mut r = reader(&text, max);
            for (i, want) in expected.iter().enumerate() {
                match r.next_line().unwrap() {
                    Some(Line::Text(got)) => prop_assert!(want.len() <= max && &got == want, "line {i}"),
                    Some(Line::TooLong) => prop_assert!(want.len() > max, "line {i}"),
                    None => prop_assert!(false, "line {i} missing"),
                }
                prop_assert_eq!(r.line, i as u64 + 1);
            }
            prop_assert!(r.next_line().unwrap().is_none());
            prop_assert_eq!(r.offset, text.len() as u64);
        }
    }
}
