//! One page of the Query reader: asked for, read as it arrives, every row checked against the
//! rules PostHog's answer must follow (inside its stretch of the sort key, after the row
//! before it) before its record is handed on. A page cut short or garbled is asked again, and
//! the rows it handed on are skipped if the new answer begins with the same ones; records
//! carry a [`Cursor::Within`] the page until the page has passed every check.

use super::key::{Lower, Point, Upper};
use super::read::Read;
use super::rules::{DIGEST_START, PageRules, Row, RowCheck, chain, fault, tie_key};
use crate::domain::Cursor;
use crate::event::{Event, format_ts, parse_ts, properties_object};
use crate::net::http::SendError;
use crate::net::retry::{self, GaveUp, Tries, Why};
use crate::pipeline::Item;
use crate::pipeline::ledger::Stats;
use crate::posthog::error::ApiError;
use crate::posthog::hogql;
use crate::posthog::repair::Properties;
use crate::posthog::rows::{Broken, Rows, Step};
use chrono::{DateTime, Utc};
use std::borrow::Cow;
use tokio::sync::mpsc;

/// How reading one page ended.
pub(super) enum PageEnd {
    Read {
        rows: usize,
        bytes: u64,
        /// Until PostHog's answer began (its query's time, not our reading's).
        took: std::time::Duration,
        /// The last row's place in the order.
        last: Option<Point>,
    },
    /// PostHog found the query too costly (504, 512, 513, 400 `too_many_bytes`): ask a
    /// smaller question, skipping these rows if it begins with them.
    TooCostly(u16, Option<Skip>),
    /// The pipeline is gone (it stopped on an error of its own).
    Stopped,
}

/// Why reading an answer stopped part-way.
enum Cut {
    /// A passing fault (cut short, garbled, a broken connection): ask again.
    Again(ApiError),
    Fatal(anyhow::Error),
    Stopped,
    /// The rows to skip are not those handed on before: ask for the page whole.
    Mismatch,
}

/// The first rows of a page that were handed on before (by a run that stopped inside the page,
/// or by an answer cut short), and the digest their sort keys chain to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Skip {
    pub(super) rows: u64,
    pub(super) digest: u64,
    /// The timestamp of the last of those rows (for progress and messages).
    pub(super) last: DateTime<Utc>,
}

/// A page being read: its rules, its records and what earlier tries of it handed on.
struct Page<'a> {
    rules: PageRules<'a>,
    /// The position every record of the page carries until the page is wholly checked.
    start: &'a Cursor,
    chunk: Chunk,
    /// Rows of this answer so far, and the digest of their sort keys.
    count: usize,
    digest: u64,
    last_ts: Option<DateTime<Utc>>,
    /// Rows at the start of the answer that were handed on before, if they chain to the same.
    skip: Option<Skip>,
}

impl Page<'_> {
    /// Where a new try of the page may begin to hand rows on.
    fn handed_on(&self) -> Option<Skip> {
        match self.skip {
            Some(skip) => Some(skip),
            None => self.last_ts.filter(|_| self.count > 0).map(|last| Skip {
                rows: self.count as u64,
                digest: self.digest,
                last,
            }),
        }
    }
}

/// Records handed on together, with what they weigh.
struct Chunk {
    items: Vec<Item<Cursor>>,
    bytes: usize,
}

impl Chunk {
    fn new() -> Self {
        Chunk {
            items: Vec::new(),
            bytes: 0,
        }
    }

    fn full(&self) -> bool {
        self.items.len() >= CHUNK || self.bytes >= CHUNK_BYTES
    }

    /// Hands the chunk on; false if the pipeline is gone.
    async fn send(&mut self, tx: &mpsc::Sender<Vec<Item<Cursor>>>) -> bool {
        self.bytes = 0;
        let items = std::mem::take(&mut self.items);
        items.is_empty() || tx.send(items).await.is_ok()
    }
}

/// The slowest an answer may arrive, in bytes a second, once `--http-timeout` has passed
/// (what the whole-answer timeout allowed before answers were read as they arrive: 16 MiB a
/// minute). A server trickling bytes is asked again instead of holding the run for ever.
const MIN_ANSWER_RATE: f64 = 256.0 * 1024.0;

/// Records handed on at a time, at most (a page of 50,000 is handed on in 25 chunks or more).
const CHUNK: usize = 2_000;
/// Bytes of records handed on at a time, at most: what a window ahead of its turn holds.
const CHUNK_BYTES: usize = 1024 * 1024;

impl Read {
    /// Reads one page of `[lo, hi)` as it arrives, checks its rows one by one and hands its
    /// records on in chunks. A row that breaks a rule ends the run before it is posted. Rows
    /// before it may have been posted, but their records carry a [`Cursor::Within`] the page,
    /// so the checkpoint never moves past a page that was not wholly checked. An answer cut
    /// short or garbled is asked for again, and the rows it had handed on are skipped if the
    /// new answer begins with the same ones.
    pub(super) async fn read_page(
        &self,
        lo: &Lower,
        hi: &Upper,
        limit: usize,
        mut skip: Option<Skip>,
        tx: &mpsc::Sender<Vec<Item<Cursor>>>,
    ) -> anyhow::Result<PageEnd> {
        let progress = self.client().progress();
        let start = self.position(lo);
        let stretch = self.stretch(lo, hi);
        let (from, end) = stretch.times();
        let mut tries = Tries::new(self.client().retry_policy());
        loop {
            // Ask for at least the rows to skip, so that the answer can show they are the same.
            let asked = skip.map_or(limit, |s| {
                limit.max(usize::try_from(s.rows).unwrap_or(usize::MAX))
            });
            let body = hogql::page(&stretch, &self.scope(), asked);
            let started = std::time::Instant::now();
            let mut resp = match self.client().post_stream("query/", &body).await {
                Ok(resp) => resp,
                Err(GaveUp::Fatal(ApiError::TooSlow { status })) => {
                    return Ok(PageEnd::TooCostly(status, skip));
                }
                Err(e) => return Err(e.into_error("reading from PostHog's Query API")),
            };
            let took = started.elapsed();
            let mut rows = Rows::new();
            let mut page = Page {
                rules: PageRules {
                    start: from,
                    end,
                    lo,
                    hi,
                    tie: self.tie().and_then(tie_key),
                    last: None,
                },
                start: &start,
                chunk: Chunk::new(),
                count: 0,
                digest: DIGEST_START,
                last_ts: None,
                skip,
            };
            let mut read = self
                .read_answer(&mut resp, &mut rows, &mut page, asked, tx)
                .await;
            if read.is_ok() && page.skip.is_some() {
                // The answer ended before the rows to skip did.
                read = Err(Cut::Mismatch);
            }
            if !page.chunk.send(tx).await {
                return Ok(PageEnd::Stopped);
            }
            let error = match read {
                Ok(()) => {
                    return Ok(PageEnd::Read {
                        rows: page.count,
                        bytes: rows.received(),
                        took,
                        last: page.rules.last,
                    });
                }
                Err(Cut::Stopped) => return Ok(PageEnd::Stopped),
                Err(Cut::Fatal(e)) => return Err(e),
                Err(Cut::Mismatch) => {
                    tracing::warn!(
                        "PostHog's answer for the page from {} no longer begins with the events already handed on from it; handing it on whole (those events arrive twice)",
                        describe(&start)
                    );
                    skip = None;
                    continue;
                }
                Err(Cut::Again(e)) => e,
            };
            // What was handed on before the fault is not handed on again. A try that handed on
            // new rows starts the count of failures again (a slow webhook holds answers open,
            // and proxies close idle ones): each such try moves on, so this ends.
            let handed = page.handed_on();
            if handed.map_or(0, |s| s.rows) > skip.map_or(0, |s| s.rows) {
                tries.moved_on();
            }
            skip = handed;
            let what = "reading from PostHog's Query API";
            let (error, wait) = tries
                .next(Why::Expected, error, None)
                .map_err(|gave_up| gave_up.into_error(what))?;
            retry::pause(progress, Why::Expected, &format!("{what}: {error}"), wait).await;
        }
    }

    /// Reads an answer's body to its end, handing on each row as it is parsed.
    async fn read_answer(
        &self,
        resp: &mut crate::posthog::polled::Answer,
        rows: &mut Rows,
        page: &mut Page<'_>,
        limit: usize,
        tx: &mpsc::Sender<Vec<Item<Cursor>>>,
    ) -> Result<(), Cut> {
        let client = self.client();
        let host = || client.host().to_string();
        let max = client.max_response();
        let idle = client.timeout();
        // Time spent waiting for the answer's bytes (not for the pipeline to take its rows):
        // at most --http-timeout, and then as long again as MIN_ANSWER_RATE needs for what came.
        let mut waited = std::time::Duration::ZERO;
        loop {
            // Where the answer broke off: the whole rows received before are handed on first,
            // so that the next try need not ask for them again.
            let mut broken = None;
            let allowed =
                idle + std::time::Duration::from_secs_f64(rows.received() as f64 / MIN_ANSWER_RATE);
            let asked = std::time::Instant::now();
            let next = resp
                .next_chunk(idle.min(allowed.saturating_sub(waited)))
                .await;
            waited += asked.elapsed();
            match next {
                Ok(Some(bytes)) => rows.feed(&bytes),
                Ok(None) => rows.end(),
                Err(SendError::Timeout) if waited >= allowed => {
                    broken = Some(ApiError::Trickling { host: host() });
                }
                Err(SendError::Timeout) => broken = Some(ApiError::Timeout { host: host() }),
                Err(SendError::Transport(message)) => {
                    broken = Some(ApiError::Transport {
                        host: host(),
                        message,
                    });
                }
                Err(SendError::TooLarge(max)) => {
                    return Err(Cut::Fatal(ApiError::TooLarge { max }.into()));
                }
            }
            if broken.is_some() {
                rows.parse_now();
            }
            if rows.received() > max {
                return Err(Cut::Fatal(ApiError::TooLarge { max }.into()));
            }
            loop {
                let (row, repaired, oversized) = match rows.next::<Row<'_>>() {
                    Ok(Step::Row { row, repaired }) => (row, repaired, None),
                    Ok(Step::Oversized { row, bytes }) => (row, false, Some(bytes)),
                    Ok(Step::More) => match broken.take() {
                        Some(error) => return Err(Cut::Again(error)),
                        None => break,
                    },
                    Ok(Step::Done) => return Ok(()),
                    Err(Broken::Garbled(excerpt)) => {
                        return Err(Cut::Again(ApiError::BadResponse {
                            status: 200,
                            excerpt,
                        }));
                    }
                    Err(Broken::Unexpected(excerpt)) => {
                        return Err(Cut::Fatal(
                            ApiError::BadResponse {
                                status: 200,
                                excerpt,
                            }
                            .into(),
                        ));
                    }
                };
                if page.count >= limit {
                    return Err(Cut::Fatal(anyhow::anyhow!(
                        "PostHog's Query API returned more than {limit} rows for a LIMIT of {limit}; stopping rather than trusting the page"
                    )));
                }
                self.take_row(row, repaired, oversized, page)?;
                if page.chunk.full() && !page.chunk.send(tx).await {
                    return Err(Cut::Stopped);
                }
            }
        }
    }

    /// Checks one row and turns it into a record in the page's chunk, unless an earlier try
    /// of the page handed it on already. A row too large to hold (`oversized`, its size) is
    /// set aside in the dead-letter file, or stops the run.
    fn take_row(
        &self,
        row: Row<'_>,
        repaired: bool,
        oversized: Option<u64>,
        page: &mut Page<'_>,
    ) -> Result<(), Cut> {
        let progress = self.client().progress();
        if repaired && row.1.as_deref().is_some_and(|e| e.contains('\u{FFFD}')) {
            // Its place in the order cannot be checked, nor passed on as a bound.
            return Err(Cut::Fatal(fault(
                &row,
                "its event name holds bytes that are not UTF-8, so its place in PostHog's order cannot be checked (`--source events` reads such events)",
            )));
        }
        let checked = page
            .rules
            .check(&row)
            .map_err(|why| Cut::Fatal(fault(&row, &why)))?;
        let (ts, point) = match checked {
            RowCheck::Duplicate(point) => (None, point),
            RowCheck::Next { ts, point } => (Some(ts), point),
        };
        page.count += 1;
        page.digest = chain(page.digest, &point);
        if let Some(ts) = ts {
            page.last_ts = Some(ts);
        }
        // An earlier run or try handed this row on: it is not handed on again, once the rows
        // up to the last of those are known to be the same.
        if let Some(skip) = page.skip {
            match (page.count as u64).cmp(&skip.rows) {
                std::cmp::Ordering::Less => return Ok(()),
                std::cmp::Ordering::Equal if page.digest == skip.digest => {
                    page.skip = None;
                    return Ok(());
                }
                _ => return Err(Cut::Mismatch),
            }
        }
        Stats::add(&progress.stats.read, 1);
        let Some(ts) = ts else {
            // The events table is a ReplacingMergeTree: before a merge the same event can be
            // stored twice, side by side in the sort key. Send it once.
            Stats::add(&progress.stats.duplicates_dropped, 1);
            return Ok(());
        };
        if let Some(bytes) = oversized {
            return self.set_aside(&row, ts, bytes).map_err(Cut::Fatal);
        }
        let Some(json) = self.record(row, ts, repaired).map_err(Cut::Fatal)? else {
            return Ok(());
        };
        page.chunk.bytes += json.len();
        page.chunk.items.push(Item::Record {
            json,
            pos: Cursor::Within {
                page: Box::new(page.start.clone()),
                rows: page.count as u64,
                digest: page.digest,
                timestamp: ts,
            },
        });
        Ok(())
    }

    /// A checked row as the event to post, or `None` if it must not be posted.
    fn record(
        &self,
        row: Row<'_>,
        ts: DateTime<Utc>,
        repaired: bool,
    ) -> anyhow::Result<Option<String>> {
        let progress = self.client().progress();
        let Row(uuid, event, distinct_id, properties, elements_chain, _, created_at, _, _) = row;
        if repaired {
            Stats::add(&progress.stats.repaired, 1);
            tracing::warn!(
                "event {uuid} held bytes that are not UTF-8, which JSON cannot carry: they were replaced by U+FFFD and the event delivered"
            );
        }
        let Some(created_at) = self.kept(&uuid, event.as_deref(), created_at.as_deref())? else {
            return Ok(None);
        };
        let properties = properties_text(properties, &uuid)?;
        let json = Event {
            uuid: &uuid,
            event: event.as_deref().unwrap_or(""),
            distinct_id: distinct_id.as_deref().unwrap_or(""),
            timestamp: format_ts(&ts),
            created_at: created_at.map(|t| format_ts(&t)),
            properties: properties_object(&properties, &uuid)?,
            elements_chain: elements_chain.as_deref().unwrap_or(""),
            team_id: self.team(),
        }
        .to_json();
        Ok(Some(json))
    }

    /// Whether a checked row is to be handed on (with its `created_at`), or counted as
    /// filtered out.
    fn kept(
        &self,
        uuid: &str,
        event: Option<&str>,
        created_at: Option<&str>,
    ) -> anyhow::Result<Option<Option<DateTime<Utc>>>> {
        let progress = self.client().progress();
        if !self.reader.filters.include.is_empty() {
            progress.stats.saw_name(event.unwrap_or(""));
        }
        let created_at = created_at.map(parse_ts).transpose()?;
        // The server was asked to filter; a server (or proxy) that did not must not make us
        // post what was not asked for, nor re-post it on every sync run.
        let left_out = self
            .left_out(event, created_at)
            .map_err(|why| anyhow::anyhow!("PostHog's Query API returned event {uuid} {why}"))?;
        if let Some(reason) = left_out {
            self.warn_once(reason);
            Stats::add(&progress.stats.filtered, 1);
            return Ok(None);
        }
        Ok(Some(created_at))
    }

    /// An event too large to read (over 64 MiB as PostHog sends it): written to the
    /// dead-letter file (its uuid, timestamp, size and why), or the end of the run.
    fn set_aside(&self, row: &Row<'_>, ts: DateTime<Utc>, bytes: u64) -> anyhow::Result<()> {
        let progress = self.client().progress();
        let (uuid, size) = (&row.0, indicatif::HumanBytes(bytes));
        // (One the filters or the run's ingestion bounds leave out is just that.)
        if self
            .kept(uuid, row.1.as_deref(), row.6.as_deref())?
            .is_none()
        {
            return Ok(());
        }
        let Some(dead_letter) = &self.reader.dead_letter else {
            anyhow::bail!(
                "PostHog's Query API returned event {uuid} at {} of {size}, more than the {} MiB a single event may take here; nothing after it was posted. Run again with --dead-letter PATH to set it aside (its uuid, timestamp and size) and go on",
                format_ts(&ts),
                super::super::rows::MAX_VALUE_BYTES >> 20
            );
        };
        let reason = format!(
            "larger than the {} MiB a single event may take",
            super::super::rows::MAX_VALUE_BYTES >> 20
        );
        dead_letter.write_oversized(uuid, &format_ts(&ts), bytes, &reason)?;
        Stats::add(&progress.stats.dead_lettered, 1);
        tracing::warn!(
            "event {uuid} at {} is {size}, {reason}: set aside in {}",
            format_ts(&ts),
            dead_letter.path().display()
        );
        Ok(())
    }

    /// Why a row the server returned must not be posted: it fails the event-name filters or
    /// the run's `created_at` bounds.
    fn left_out(
        &self,
        event: Option<&str>,
        created_at: Option<DateTime<Utc>>,
    ) -> Result<Option<&'static str>, &'static str> {
        if !self.reader.filters.keeps(event.unwrap_or("")) {
            return Ok(Some(
                "PostHog returned events that the --event/--exclude-event filters leave out; they are filtered here",
            ));
        }
        if let Some(bounds) = self.ingested() {
            let t = created_at
                .ok_or("without created_at, which the run's ingestion bounds need; stopping")?;
            if bounds.after.is_some_and(|after| t <= after) || t > bounds.until {
                return Ok(Some(
                    "PostHog returned events ingested outside this run's created_at bounds; they are left to the run that covers them",
                ));
            }
        }
        Ok(None)
    }
}

/// A position, for messages.
fn describe(pos: &Cursor) -> String {
    match pos {
        Cursor::Key {
            from,
            event,
            distinct_hash,
            ..
        } => format!(
            "{} (event {event:?}, distinct_id hash {distinct_hash})",
            format_ts(from)
        ),
        other => format_ts(&other.timestamp()),
    }
}

/// `properties` as the JSON text PostHog stored, or as the object received (checked to be an
/// object when posted); nothing as `{}`.
fn properties_text<'a>(raw: Option<Properties<'a>>, uuid: &str) -> anyhow::Result<Cow<'a, str>> {
    match raw {
        Some(properties) => properties.text().map_err(|e| {
            anyhow::anyhow!(
                "PostHog returned properties that are not JSON text for event {uuid}: {e}"
            )
        }),
        None => Ok(Cow::Borrowed("{}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_come_as_json_text_in_a_string() {
        let of = |s: &str| -> anyhow::Result<String> {
            let properties: Properties<'_> = serde_json::from_str(s)?;
            let text = properties_text(Some(properties), "u")?;
            Ok(properties_object(&text, "u")?.get().to_string())
        };
        let text = of(r#""{\"a\": 1e400, \"b\": \"\\u00e9\"}""#).unwrap();
        assert_eq!(text, r#"{"a": 1e400, "b": "\u00e9"}"#);
        assert_eq!(properties_text(None, "u").unwrap(), "{}");
        assert!(of(r#""[1]""#).is_err());
        assert!(of(r#""not json""#).is_err());
        // An object as it is, byte for byte (numbers no f64 holds, nesting, spacing).
        let object = r#"{ "n": 1180591620717411303424, "x": 1e400, "d": [[[{"e": []}]]] }"#;
        assert_eq!(of(object).unwrap(), object);
        assert!(of("[1]").is_err() && of("12").is_err() && of("true").is_err());
    }

    /// The uuids of an answer's rows read in pieces of `piece` bytes, and which were repaired.
    fn rows_of(answer: &[u8], piece: usize) -> Result<Vec<(String, bool)>, Broken> {
        let mut rows = Rows::new();
        let mut out = Vec::new();
        for part in answer.chunks(piece).map(Some).chain([None]) {
            match part {
                Some(part) => rows.feed(part),
                None => rows.end(),
            }
            loop {
                match rows.next::<Row<'_>>()? {
                    Step::Row { row, repaired } => out.push((row.0.into_owned(), repaired)),
                    Step::Oversized { .. } => unreachable!("no row of these is too large"),
                    Step::More => break,
                    Step::Done => return Ok(out),
                }
            }
        }
        Err(Broken::Garbled("no end".into()))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// Any bytes as an answer, in any pieces: rows or an error, never a panic.
        #[test]
        fn any_answer_parses_or_is_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), piece in 1usize..50) {
            let _ = rows_of(&bytes, piece);
        }

        /// An answer whose properties hold bytes that are not UTF-8 in some rows: every row
        /// comes back, in order, and exactly those rows are named as repaired.
        #[test]
        fn rows_with_bytes_that_are_not_utf8_are_kept_and_named(
            bad in proptest::collection::vec(proptest::prelude::any::<bool>(), 1..30),
            piece in 1usize..100,
        ) {
            let mut body = br#"{"results":["#.to_vec();
            for (i, is_bad) in bad.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(format!(r#"["u{i}","e","d","{{\"p\":\""#).as_bytes());
                if *is_bad {
                    body.push(0xff);
                }
                body.extend_from_slice(br#"\"}","","2024-01-01T00:00:00Z",null,1,18446744073709551615]"#);
            }
            body.extend_from_slice(br#"],"columns":[]}"#);
            let rows = rows_of(&body, piece).unwrap();
            let expected: Vec<(String, bool)> = bad.iter().enumerate().map(|(i, b)| (format!("u{i}"), *b)).collect();
            proptest::prop_assert_eq!(rows, expected);
        }
    }
}
