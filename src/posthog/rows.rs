//! Reads a Query API answer, `{"results": [[...row...], ...], "columns": [...], ...}`, as it
//! arrives: each row is handed on as soon as its bytes are in, so memory holds a row and a read
//! buffer, never a page (a page of 50,000 realistic events is 150 MB of JSON). The structure
//! around the rows is followed byte by byte; each row, key and other value is parsed by
//! serde_json. Bytes that are not UTF-8 are replaced by U+FFFD as they come in, and the rows
//! they were in are named, so that one such event is delivered (and reported), not fatal.

use super::oversize::Oversize;
use serde::Deserialize;
use std::collections::VecDeque;

/// What [`Rows::next`] found.
pub(super) enum Step<T> {
    /// A row, and whether it held bytes that were replaced by U+FFFD.
    Row { row: T, repaired: bool },
    /// Nothing more until more bytes come ([`Rows::feed`]) or the answer ends ([`Rows::end`]).
    More,
    /// A row larger than [`MAX_VALUE_BYTES`], read as it came without being held: its
    /// elements as they were, but large ones as `null` (`oversize`); and its size.
    Oversized { row: T, bytes: u64 },
    /// The answer is complete, and had a `results` array.
    Done,
}

/// Why an answer cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Broken {
    /// Not JSON, cut short, or without `results`: a passing fault of the server or a proxy
    /// (asking again may help).
    Garbled(String),
    /// JSON whose rows are not what the query selects (a column of the wrong type).
    Unexpected(String),
}

/// Where in the answer's structure the next byte is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Start,
    /// After `{`: a key or `}`.
    FirstKey,
    /// After a comma: a key.
    Key,
    /// After a value: a comma or `}`.
    NextKey,
    /// After a key and its colon: `results` opens the rows, anything else is skipped.
    Value {
        results: bool,
    },
    /// After `[`: a row or `]`.
    FirstRow,
    /// After a comma: a row.
    Row,
    /// After a row: a comma or `]`.
    NextRow,
    End,
}

/// Rows are parsed once this much is waiting past an incomplete one (or the answer ended):
/// an incomplete row is parsed again from its start, so trying after every small read would
/// parse rows that straddle reads many times.
const PARSE_AHEAD: usize = 64 * 1024;

/// The largest single value (a row, or a value around the rows) read: events weigh kilobytes
/// (../shared/posthog-api.md), so a larger row is a fault, and refusing it bounds memory.
pub(super) const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;

pub(super) struct Rows {
    buf: Vec<u8>,
    /// `buf[..pos]` is parsed, `buf[..valid]` is UTF-8 (after repairs).
    pos: usize,
    valid: usize,
    /// Where `buf[0]` lies in the answer (as repaired).
    base: u64,
    /// Parse again only once `buf` reaches this offset in the answer (or the answer ended).
    wait_until: u64,
    at: At,
    ended: bool,
    seen_results: bool,
    /// Offsets in the answer of U+FFFD put in for bytes that were not UTF-8, not yet passed.
    repaired: VecDeque<u64>,
    /// Bytes received, before repairs.
    received: u64,
    /// The row too large to hold being followed, if any, and the last one kept.
    oversize: Option<Oversize>,
    kept: Vec<u8>,
    /// The largest value held ([`MAX_VALUE_BYTES`]; smaller in tests).
    max_value: usize,
}

impl Rows {
    pub(super) fn new() -> Self {
        Rows {
            buf: Vec::new(),
            pos: 0,
            valid: 0,
            base: 0,
            wait_until: 0,
            at: At::Start,
            ended: false,
            seen_results: false,
            repaired: VecDeque::new(),
            received: 0,
            oversize: None,
            kept: Vec::new(),
            max_value: MAX_VALUE_BYTES,
        }
    }

    /// Bytes of the answer received so far.
    pub(super) fn received(&self) -> u64 {
        self.received
    }

    /// The next bytes of the answer.
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        self.received += bytes.len() as u64;
        // Drop what is parsed once it is at least half the buffer: each byte moves at most once.
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.valid -= self.pos;
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
        self.check_utf8();
    }

    /// Parses what has come so far at the next call, without waiting for more (the answer
    /// broke off: its whole rows are still good).
    pub(super) fn parse_now(&mut self) {
        self.wait_until = 0;
    }

    /// The answer ended (its body was read to the end).
    pub(super) fn end(&mut self) {
        self.ended = true;
        self.check_utf8();
    }

    /// Checks `buf[valid..]` as UTF-8, replacing what is not by U+FFFD. A sequence cut by the
    /// end of a read waits for the next one.
    fn check_utf8(&mut self) {
        let tail = &self.buf[self.valid..];
        let err = match std::str::from_utf8(tail) {
            Ok(_) => {
                self.valid = self.buf.len();
                return;
            }
            Err(e) => e,
        };
        if err.error_len().is_none() && !self.ended {
            self.valid += err.valid_up_to();
            return;
        }
        let tail = self.buf.split_off(self.valid);
        let mut chunks = tail.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            self.buf.extend_from_slice(chunk.valid().as_bytes());
            let invalid = chunk.invalid();
            if invalid.is_empty() {
                continue;
            }
            // The last bytes may be the start of a character the next read completes.
            if chunks.peek().is_none()
                && !self.ended
                && std::str::from_utf8(invalid).is_err_and(|e| e.error_len().is_none())
            {
                self.valid = self.buf.len();
                self.buf.extend_from_slice(invalid);
                return;
            }
            self.repaired.push_back(self.base + self.buf.len() as u64);
            self.buf.extend_from_slice(
                char::REPLACEMENT_CHARACTER
                    .encode_utf8(&mut [0; 4])
                    .as_bytes(),
            );
        }
        self.valid = self.buf.len();
    }

    /// The next row, or what stands in its way. A row borrows from the buffer: it must be
    /// dropped before more is fed.
    pub(super) fn next<'a, T: Deserialize<'a>>(&'a mut self) -> Result<Step<T>, Broken> {
        if self.oversize.is_some() {
            return self.follow_oversize();
        }
        if !self.ended && self.base + (self.valid as u64) < self.wait_until {
            return Ok(Step::More);
        }
        // Replacements in what was parsed without becoming a row are no longer needed.
        let parsed = self.base + self.pos as u64;
        while self.repaired.front().is_some_and(|&at| at < parsed) {
            self.repaired.pop_front();
        }
        loop {
            // Whitespace, then the next structural byte.
            let buf = &self.buf[..self.valid];
            while buf.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
                self.pos += 1;
            }
            let Some(&byte) = buf.get(self.pos) else {
                self.wait_until = self.wait_until();
                return self.more();
            };
            let expected = match (self.at, byte) {
                (At::Start, b'{') => Some(At::FirstKey),
                (At::FirstKey | At::NextKey, b'}') => Some(At::End),
                (At::NextKey, b',') => Some(At::Key),
                (At::FirstRow | At::NextRow, b']') => Some(At::NextKey),
                (At::NextRow, b',') => Some(At::Row),
                (At::Value { results: true }, b'[') => Some(At::FirstRow),
                (At::FirstKey | At::Key, b'"')
                | (At::FirstRow | At::Row, _)
                | (At::Value { results: false }, _) => None,
                _ => {
                    return Err(self.garbled(&format!(
                        "unexpected {:?} {}",
                        char::from(byte),
                        self.expecting()
                    )));
                }
            };
            if let Some(next) = expected {
                self.pos += 1;
                self.at = next;
                continue;
            }
            // A key, a value to skip or a row: a whole JSON value, parsed by serde_json.
            let start = self.pos;
            match self.at {
                At::FirstKey | At::Key => {
                    let Some((key, len)) = value::<String>(&buf[start..], self.ended)? else {
                        self.wait_until = self.wait_until();
                        return self.more();
                    };
                    let rest = &buf[start + len..];
                    let Some(colon) = rest.iter().position(|b| !b.is_ascii_whitespace()) else {
                        self.wait_until = self.wait_until();
                        return self.more();
                    };
                    if rest[colon] != b':' {
                        return Err(self.garbled("a key without a colon"));
                    }
                    let results = key == "results";
                    if results && self.seen_results {
                        return Err(self.garbled("two `results`"));
                    }
                    self.seen_results |= results;
                    self.pos = start + len + colon + 1;
                    self.at = At::Value { results };
                }
                At::Value { .. } => {
                    let Some((serde::de::IgnoredAny, len)) = value(&buf[start..], self.ended)?
                    else {
                        self.wait_until = self.wait_until();
                        return self.more();
                    };
                    self.pos = start + len;
                    self.at = At::NextKey;
                }
                _ => {
                    let Some((row, len)) = value::<T>(&buf[start..], self.ended)? else {
                        // A row that would not fit is followed without being held, from the
                        // next call on.
                        if !self.ended && self.valid - start > self.max_value {
                            self.oversize = Some(Oversize::new());
                            return Ok(Step::More);
                        }
                        self.wait_until = self.wait_until();
                        return self.more();
                    };
                    let (from, to) = (self.base + start as u64, self.base + (start + len) as u64);
                    while self.repaired.front().is_some_and(|&at| at < from) {
                        self.repaired.pop_front();
                    }
                    let repaired = self.repaired.front().is_some_and(|&at| at < to);
                    self.pos = start + len;
                    self.at = At::NextRow;
                    return Ok(Step::Row { row, repaired });
                }
            }
        }
    }

    /// Follows a row too large to hold through what has come, dropping it from the buffer.
    fn follow_oversize<'a, T: Deserialize<'a>>(&'a mut self) -> Result<Step<T>, Broken> {
        let over = self.oversize.as_mut().expect("following a row");
        let ended = over.follow(&self.buf[self.pos..self.valid]);
        if let Some(why) = over.broken {
            return Err(Broken::Unexpected(format!(
                "{why}, of more than {} MiB, at byte {}",
                self.max_value >> 20,
                self.base + self.pos as u64
            )));
        }
        match ended {
            None => {
                self.pos = self.valid;
                if self.ended {
                    return Err(self.garbled("it ends inside a row"));
                }
                Ok(Step::More)
            }
            Some(len) => {
                self.pos += len;
                self.at = At::NextRow;
                self.wait_until = 0;
                let over = self.oversize.take().expect("following a row");
                self.kept = over.kept;
                match serde_json::from_slice::<T>(&self.kept) {
                    Ok(row) => Ok(Step::Oversized {
                        row,
                        bytes: over.bytes,
                    }),
                    Err(e) => Err(Broken::Unexpected(format!(
                        "a row of {} bytes, too large to hold, whose small elements do not fit the query: {}",
                        over.bytes,
                        crate::secret::redact(&e.to_string())
                    ))),
                }
            }
        }
    }

    /// Where the buffer must reach before parsing is tried again: twice what is waiting now,
    /// and at least `PARSE_AHEAD` more (a value is parsed from its start at each try), but no
    /// further than just past `MAX_VALUE_BYTES`, where a value is refused.
    fn wait_until(&self) -> u64 {
        let waiting = (self.valid - self.pos) as u64;
        let refused_at = self.base + (self.pos + self.max_value + 1) as u64;
        (self.base + self.valid as u64 + waiting.max(PARSE_AHEAD as u64)).min(refused_at)
    }

    /// Nothing more can be parsed from what is buffered.
    fn more<T>(&self) -> Result<Step<T>, Broken> {
        if !self.ended {
            // A value around the rows that would not fit is refused (a row is followed
            // instead, at the next call): memory stays bounded whatever a server sends.
            let row_next = matches!(self.at, At::FirstRow | At::Row);
            if self.valid - self.pos > self.max_value && !row_next {
                return Err(Broken::Unexpected(format!(
                    "a single value of more than {} MiB at byte {}",
                    self.max_value >> 20,
                    self.base + self.pos as u64
                )));
            }
            return Ok(Step::More);
        }
        match self.at {
            At::End if self.seen_results => Ok(Step::Done),
            At::End => Err(Broken::Garbled(
                "a JSON object without `results`".to_string(),
            )),
            _ => Err(self.garbled(&format!("it ends {}", self.expecting()))),
        }
    }

    fn expecting(&self) -> &'static str {
        match self.at {
            At::Start => "where the answer's `{` should be",
            At::FirstKey | At::Key | At::NextKey | At::Value { .. } => "inside the answer's object",
            At::FirstRow | At::Row | At::NextRow => "inside `results`",
            At::End => "after the answer's end",
        }
    }

    /// A message naming where the answer broke, with the bytes there (redacted: proxies echo
    /// requests).
    fn garbled(&self, what: &str) -> Broken {
        let near = &self.buf[self.pos.min(self.buf.len())..];
        Broken::Garbled(format!(
            "{what} at byte {}: {}",
            self.base + self.pos as u64,
            crate::net::http::redacted_excerpt(near, 200)
        ))
    }
}

/// One JSON value at the start of `bytes`, and its length; `None` until it is complete (and
/// followed by something, unless the answer `ended`: a number may go on in the next read).
fn value<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    ended: bool,
) -> Result<Option<(T, usize)>, Broken> {
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<T>();
    match values.next() {
        Some(Ok(v)) => {
            let len = values.byte_offset();
            Ok((len < bytes.len() || ended).then_some((v, len)))
        }
        None => Ok(None),
        Some(Err(e)) if e.is_eof() && !ended => Ok(None),
        Some(Err(e)) if e.is_data() => {
            Err(Broken::Unexpected(crate::secret::redact(&e.to_string())))
        }
        Some(Err(e)) => Err(Broken::Garbled(format!(
            "{e}: {}",
            crate::net::http::redacted_excerpt(bytes, 200)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;
    use serde_json::Value;

    /// Reads `answer` fed in pieces of the given sizes (cycled), as `Value` rows.
    fn read(answer: &[u8], pieces: &[usize]) -> Result<Vec<(Value, bool)>, Broken> {
        let mut rows = Rows::new();
        let mut out = Vec::new();
        let mut rest = answer;
        let mut sizes = pieces.iter().copied().cycle();
        loop {
            if rest.is_empty() {
                rows.end();
            } else {
                let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
                rows.feed(&rest[..n]);
                rest = &rest[n..];
            }
            loop {
                match rows.next::<Value>()? {
                    Step::Row { row, repaired } => out.push((row, repaired)),
                    Step::Oversized { .. } => unreachable!("no row of these is too large"),
                    Step::More => break,
                    Step::Done => return Ok(out),
                }
            }
            assert!(!rows.ended, "More after the end");
        }
    }

    #[test]
    fn rows_come_one_by_one_whatever_the_order_of_keys_and_the_pieces() {
        let answer = br#" {"columns": ["a", "b"], "hasMore": false, "limit": 12.5e3,
            "results": [ [1, "x"] , ["\u00e9]", {"k": [1, "]"]}], [] ],
            "timings": [{"k": "results"}], "types": [] } "#;
        for pieces in [&[1][..], &[2, 3, 5], &[7], &[1 << 20]] {
            let rows = read(answer, pieces).unwrap();
            let values: Vec<Value> = rows.iter().map(|r| r.0.clone()).collect();
            assert_eq!(
                values,
                serde_json::from_slice::<Value>(answer).unwrap()["results"]
                    .as_array()
                    .unwrap()
                    .clone(),
                "{pieces:?}"
            );
            assert!(rows.iter().all(|r| !r.1));
        }
        assert_eq!(read(br#"{"results":[]}"#, &[3]).unwrap().len(), 0);
    }

    #[test]
    fn an_answer_cut_short_or_without_results_is_garbled() {
        for answer in [
            &br#"{"results": [[1], [2"#[..],
            br#"{"results": [[1], [2]]"#,
            br#"{"results": [[1]]} x"#,
            br#"{"columns": []}"#,
            br#"{"results": [1], "results": [2]}"#,
            br#"<html>502 Bad Gateway</html>"#,
            br#"[[1]]"#,
            br#"{"results": [[1],]}"#,
            br#"{"results": [], }"#,
            b"",
        ] {
            let got = read(answer, &[4]);
            assert!(
                matches!(got, Err(Broken::Garbled(_))),
                "{}: {got:?}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[test]
    fn a_row_of_the_wrong_shape_is_unexpected_not_garbled() {
        let mut rows = Rows::new();
        rows.feed(br#"{"results": [["u", 1]]}"#);
        rows.end();
        assert!(matches!(
            rows.next::<(String, String)>(),
            Err(Broken::Unexpected(_))
        ));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced_and_their_rows_named_even_split_across_reads() {
        let mut answer = br#"{"results": [["a"], [""#.to_vec();
        answer.extend_from_slice(&[0xff, b'x', 0xe2, 0x82]); // invalid, then a cut-off euro sign
        answer.extend_from_slice(br#""], ["#);
        answer.extend_from_slice("\"\u{20ac}\"".as_bytes());
        answer.extend_from_slice(br#"]]}"#);
        for pieces in [&[1][..], &[2], &[1 << 20]] {
            let rows = read(&answer, pieces).unwrap();
            assert_eq!(rows.len(), 3);
            assert_eq!(rows[1].0, serde_json::json!(["\u{fffd}x\u{fffd}"]));
            assert_eq!(rows[2].0, serde_json::json!(["\u{20ac}"]));
            assert_eq!(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                [false, true, false]
            );
        }
    }

    #[test]
    fn a_huge_value_before_the_rows_is_not_parsed_again_for_every_read() {
        // 4 MB of `columns` in 1 KB reads: parsed a handful of times, not 4,000.
        let mut answer = br#"{"columns": ""#.to_vec();
        answer.extend(std::iter::repeat_n(b'c', 4 << 20));
        answer.extend_from_slice(br#"", "results": [[1]]}"#);
        let mut rows = Rows::new();
        let mut tries = 0;
        for piece in answer.chunks(1024) {
            rows.feed(piece);
            if rows.base + (rows.valid as u64) >= rows.wait_until {
                tries += 1;
            }
            while let Step::Row { .. } = rows.next::<Value>().unwrap() {}
        }
        rows.end();
        assert!(matches!(rows.next::<Value>(), Ok(Step::Row { .. })));
        assert!(tries < 40, "{tries} parses");
        assert!(rows.buf.capacity() < 16 << 20, "{}", rows.buf.capacity());
    }

    #[test]
    fn a_value_around_the_rows_larger_than_any_event_is_refused_before_it_fills_memory() {
        let mut rows = Rows::new();
        rows.feed(br#"{"columns": ""#);
        let piece = vec![b'a'; 1 << 20];
        let mut refused = None;
        for _ in 0..100 {
            rows.feed(&piece);
            match rows.next::<Value>() {
                Ok(Step::More) => continue,
                other => {
                    refused = Some(other.map(|_| ()));
                    break;
                }
            }
        }
        assert!(
            matches!(refused, Some(Err(Broken::Unexpected(ref m))) if m.contains("64 MiB")),
            "{refused:?}"
        );
        assert!(
            rows.buf.len() < MAX_VALUE_BYTES + (2 << 20),
            "{}",
            rows.buf.len()
        );
    }

    #[test]
    fn a_row_too_large_to_hold_is_followed_and_kept_without_its_large_elements() {
        let huge = "x\\\"]}[{,".repeat(30_000);
        let answer = format!(
            r#"{{"results": [["a", 1], ["big", "{huge}", [1, {{"k": "]"}}], 7], ["c", 3]], "types": []}}"#
        );
        // (An answer whose row arrives in one read was held anyway: it is parsed as usual.)
        for piece in [1_000, 7_777] {
            let mut rows = Rows::new();
            rows.max_value = 64 * 1024;
            let mut out = Vec::new();
            for chunk in answer.as_bytes().chunks(piece).chain([&b""[..]]) {
                if chunk.is_empty() {
                    rows.end();
                } else {
                    rows.feed(chunk);
                }
                loop {
                    match rows.next::<Value>().unwrap() {
                        Step::Row { row, .. } => out.push((row, None)),
                        Step::Oversized { row, bytes } => out.push((row, Some(bytes))),
                        Step::More | Step::Done => break,
                    }
                }
                assert!(rows.buf.capacity() < 4 << 20, "{}", rows.buf.capacity());
            }
            let big_len = answer.find(r#", ["c""#).unwrap() - answer.find(r#"["big""#).unwrap();
            let shown: Vec<String> = out
                .iter()
                .map(|(row, n)| format!("{:.80} {n:?}", row.to_string()))
                .collect();
            assert!(
                out == [
                    (serde_json::json!(["a", 1]), None),
                    (
                        serde_json::json!(["big", null, [1, {"k": "]"}], 7]),
                        Some(big_len as u64)
                    ),
                    (serde_json::json!(["c", 3]), None),
                ],
                "pieces of {piece}: {shown:?}"
            );
        }
    }

    #[test]
    fn a_row_under_the_cap_is_parsed_however_much_follows_it() {
        // 50 KiB under a cap of 64 KiB: the parse waits until 64 KiB are buffered, by which
        // time the row is whole; it is a row, not one too large to hold.
        let answer = format!(
            r#"{{"results": [["{}"], {}["b"]]}}"#,
            "x".repeat(50 << 10),
            r#"["a"], "#.repeat(20_000)
        );
        let mut rows = Rows::new();
        rows.max_value = 64 * 1024;
        let mut first = None;
        for chunk in answer.as_bytes().chunks(1000) {
            rows.feed(chunk);
            match rows.next::<Value>().unwrap() {
                Step::More => {}
                Step::Row { row, .. } => {
                    first = Some(row.to_string().len());
                    break;
                }
                other => panic!("{:?}", matches!(other, Step::Oversized { .. })),
            }
        }
        assert_eq!(first, Some((50 << 10) + 4));
    }

    #[test]
    fn a_row_too_large_to_hold_that_is_no_row_of_events_is_refused() {
        for (answer, why) in [
            (
                format!(r#"{{"results": ["{}"]}}"#, "x".repeat(200_000)),
                "not an array",
            ),
            (
                format!(r#"{{"results": [[{}0]]}}"#, "0,".repeat(600_000)),
                "small elements",
            ),
        ] {
            let mut rows = Rows::new();
            rows.max_value = 64 * 1024;
            let mut refused = None;
            for chunk in answer.as_bytes().chunks(4096) {
                rows.feed(chunk);
                match rows.next::<Value>() {
                    Ok(Step::More) => {}
                    other => {
                        refused = Some(other.map(|_| ()));
                        break;
                    }
                }
            }
            assert!(
                matches!(&refused, Some(Err(Broken::Unexpected(m))) if m.contains(why)),
                "{refused:?}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// Any bytes in any pieces: rows or an error, never a panic, never a hang.
        #[test]
        fn any_answer_reads_or_is_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            pieces in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let _ = read(&bytes, &pieces);
        }

        /// Any bytes in a row's string, read in any pieces: the row holds what a lossy decoding
        /// gives, and is named as repaired exactly when the bytes were not UTF-8.
        #[test]
        fn bytes_in_a_row_are_repaired_as_a_lossy_decoding_would(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>().prop_filter("JSON-safe", |b| *b >= 0x20 && *b != b'"' && *b != b'\\'), 0..60),
            pieces in proptest::collection::vec(1usize..9, 1..5),
        ) {
            let mut answer = br#"{"results": [["a"], [""#.to_vec();
            answer.extend_from_slice(&bytes);
            answer.extend_from_slice(br#""]]}"#);
            let rows = read(&answer, &pieces).unwrap();
            proptest::prop_assert_eq!(rows.len(), 2);
            proptest::prop_assert_eq!(&rows[1].0, &serde_json::json!([String::from_utf8_lossy(&bytes)]));
            proptest::prop_assert_eq!(rows[1].1, std::str::from_utf8(&bytes).is_err());
            proptest::prop_assert!(!rows[0].1);
        }

        /// A valid answer read in any pieces gives exactly the rows serde_json finds in it whole.
        #[test]
        fn pieces_give_the_rows_of_the_whole(
            rows in proptest::collection::vec(proptest::collection::vec("[a-z\\]\\[\"{}é,]{0,6}", 0..4), 0..20),
            pieces in proptest::collection::vec(1usize..40, 1..8),
        ) {
            let answer = serde_json::json!({"columns": ["x"], "results": rows, "types": [["x", "String"]]});
            let bytes = serde_json::to_vec_pretty(&answer).unwrap();
            let got: Vec<Value> = read(&bytes, &pieces).unwrap().into_iter().map(|r| r.0).collect();
            proptest::prop_assert_eq!(&Value::from(got), &answer["results"]);
        }
    }
}
