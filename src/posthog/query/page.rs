//! The Query API (HogQL) source: keyset paging on `(timestamp, uuid)` over time windows whose
//! width adapts: halved when PostHog answers 504/512 (its 10 s limit), doubled while pages come
//! back short. Uuid order is ClickHouse's, so the server does every comparison.

use super::hogql;
use super::repair::Escaped;
use super::rows::{Broken, Rows, Step};
use super::source::{Cursor, Reader, short};
use crate::event::{Event, format_ts, parse_ts, properties_object};
use crate::net::http::SendError;
use crate::net::retry::GaveUp;
use crate::pipeline::Item;
use crate::pipeline::ledger::Stats;
use crate::posthog::ApiError;
use anyhow::{Context, bail};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// PostHog caps an explicit LIMIT at this many rows (../shared/posthog-api.md).
pub(crate) const MAX_PAGE_SIZE: u64 = 50_000;
const MIN_WIDTH: Duration = Duration::seconds(1);
const MAX_WIDTH: Duration = Duration::days(31);
const INITIAL_WIDTH: Duration = Duration::days(1);

/// A position in PostHog's order: timestamp, then the uuid as ClickHouse sorts it.
type OrderKey = (DateTime<Utc>, (u64, u64));

/// ClickHouse's UUID order: the second 64-bit half first, then the first (not string order;
/// ../shared/posthog-api.md). Used only to check pages, never to sort them.
fn uuid_order(uuid: &str) -> Option<(u64, u64)> {
    let (mut v, mut digits) = (0u128, 0);
    for c in uuid.chars().filter(|c| *c != '-') {
        v = (v << 4) | u128::from(c.to_digit(16)?);
        digits += 1;
    }
    (digits == 32).then_some((v as u64, (v >> 64) as u64))
}

enum RowCheck {
    Duplicate,
    Next { ts: DateTime<Utc>, key: OrderKey },
}

/// The error for a row that breaks the rules: exit 1, naming the row.
fn fault(row: &Row<'_>, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "PostHog's Query API returned event {} at {} although {why}; stopping before it. Rows of this page before it may have been posted, but the checkpoint stays before the page. This is a fault of the server or of a proxy in front of it: running again re-reads from the checkpoint",
        row.0,
        row.5
    )
}

/// Warnings given once per run, whichever window meets them first.
#[derive(Default)]
struct Warned(Mutex<std::collections::HashSet<&'static str>>);

impl Warned {
    fn once(&self, msg: &'static str, progress: &crate::progress::Progress) {
        if self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(msg) {
            progress.warn(msg);
        }
    }
}

/// One row, in the order of `hogql::COLUMNS`, borrowed from the answer where it can be.
#[derive(Deserialize)]
struct Row<'a>(
    #[serde(borrow)] Cow<'a, str>,
    Option<String>,
    Option<String>,
    /// JSON text in a string, as PostHog sends it.
    #[serde(borrow)]
    Option<Escaped<'a>>,
    Option<String>,
    #[serde(borrow)] Cow<'a, str>,
    Option<String>,
);

/// How reading one page ended.
enum PageEnd {
    Read {
        rows: usize,
        bytes: u64,
        /// Until PostHog's answer began (its query's time, not our reading's).
        took: std::time::Duration,
        /// The position after the page's last row.
        last: Option<Cursor>,
        /// The LIMIT asked for.
        asked: usize,
    },
    /// PostHog answered 504/512: ask a smaller question (skipping these rows, if any).
    TooSlow(u16, Option<Skip>),
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
/// or by an answer cut short), and the digest their order keys chain to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Skip {
    rows: u64,
    digest: u64,
    /// The timestamp of the last of those rows.
    last: DateTime<Utc>,
}

/// The digest of no rows.
const DIGEST_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Chains a row's order key to the digest of the rows before it (FNV-1a: fixed, so a digest
/// written by one build is understood by the next).
fn chain(digest: u64, key: &OrderKey) -> u64 {
    let (ts, (lo, hi)) = key;
    let bytes = ts
        .timestamp_micros()
        .to_le_bytes()
        .into_iter()
        .chain(lo.to_le_bytes())
        .chain(hi.to_le_bytes());
    bytes.fold(digest, |d, b| {
        (d ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The rules a page's rows must follow, row after row: inside the window `[from, end)`, after
/// the cursor, and in PostHog's order (ClickHouse's, for uuids).
struct PageRules {
    from: DateTime<Utc>,
    end: DateTime<Utc>,
    /// Every row must sort after this key; `None` after a `Before` cursor (ties allowed).
    after: Option<OrderKey>,
    last_uuid: String,
}

impl PageRules {
    fn new(cursor: &Cursor, end: DateTime<Utc>) -> Self {
        PageRules {
            from: cursor.timestamp(),
            end,
            after: match cursor {
                Cursor::After { timestamp, uuid } => uuid_order(uuid).map(|u| (*timestamp, u)),
                _ => None,
            },
            last_uuid: String::new(),
        }
    }

    /// One row against the rules. The same row twice in a row is an unmerged duplicate, not
    /// a fault.
    fn check(&mut self, row: &Row<'_>) -> Result<RowCheck, String> {
        let ts = parse_ts(&row.5).map_err(|e| format!("{e:#}"))?;
        let uuid = uuid_order(&row.0).ok_or("its uuid is not a UUID")?;
        let key = (ts, uuid);
        if self.last_uuid == row.0 && self.after == Some(key) {
            return Ok(RowCheck::Duplicate);
        }
        if ts < self.from || ts >= self.end {
            return Err(format!(
                "it lies outside the requested window {} → {}",
                format_ts(&self.from),
                format_ts(&self.end)
            ));
        }
        if self.after.is_some_and(|a| key <= a) {
            return Err(
                "it is not after the row before it (a repeated or reordered page)".to_string(),
            );
        }
        self.after = Some(key);
        self.last_uuid.clear();
        self.last_uuid.push_str(&row.0);
        Ok(RowCheck::Next { ts, key })
    }
}

/// A page being read: its rules, its records and what earlier tries of it handed on.
struct Page<'a> {
    rules: PageRules,
    /// The position every record of the page carries until the page is wholly checked.
    start: &'a Cursor,
    chunk: Chunk,
    /// Rows of this answer so far, and the digest of their order keys.
    count: usize,
    digest: u64,
    /// Rows at the start of the answer that were handed on before, if they chain to the same.
    skip: Option<Skip>,
}

impl Page<'_> {
    /// Where a new try of the page may begin to hand rows on.
    fn handed_on(&self) -> Option<Skip> {
        match self.skip {
            Some(skip) => Some(skip),
            None => self
                .rules
                .after
                .filter(|_| self.count > 0)
                .map(|(last, _)| Skip {
                    rows: self.count as u64,
                    digest: self.digest,
                    last,
                }),
        }
    }

    /// The position after the last row read.
    fn last(&self) -> Option<Cursor> {
        self.rules.after.map(|(timestamp, _)| Cursor::After {
            timestamp,
            uuid: self.rules.last_uuid.clone(),
        })
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

impl Reader {
    /// Sends every event of the range after `from` to `tx`, in order, through the Query API.
    /// Up to `fetch_concurrency` windows are read at once, each by its own task into its own
    /// small queue; they are handed on strictly in order, so positions (and checkpoints)
    /// never run ahead of an unfinished window. Stops early (Ok) if the receiver is gone.
    pub(super) async fn read_query(
        self: Arc<Self>,
        from: Option<Cursor>,
        tx: mpsc::Sender<Vec<Item<Cursor>>>,
    ) -> anyhow::Result<()> {
        let (mut next, mut skip) = match from {
            None => (
                Cursor::Before {
                    timestamp: self.range.start,
                },
                None,
            ),
            Some(Cursor::Seen { .. }) => {
                bail!("this checkpoint was written by the Events API source; use --source events")
            }
            Some(Cursor::Within {
                page,
                rows,
                digest,
                timestamp,
            }) => (
                *page,
                (rows > 0).then_some(Skip {
                    rows,
                    digest,
                    last: timestamp,
                }),
            ),
            Some(pos) => (pos, None),
        };
        let tuning = Arc::new(Mutex::new(Tuning::new(self.page_size)));
        let warned = Arc::new(Warned::default());
        let mut in_flight = std::collections::VecDeque::new();
        loop {
            // Launch windows up to the concurrency allowed; each ends where the next begins.
            while in_flight.len() < self.fetch_concurrency.max(1)
                && next.timestamp() < self.range.end
            {
                let start = next.timestamp();
                let width = tuning.lock().unwrap_or_else(|e| e.into_inner()).width;
                let mut end = start
                    .checked_add_signed(width)
                    .map_or(self.range.end, |e| e.min(self.range.end));
                // A window resumed inside a page reaches past the rows to skip, so that the
                // answer can show they are the same ones.
                if let Some(skip) = skip
                    && end <= skip.last
                {
                    end = (skip.last + Duration::microseconds(1)).min(self.range.end);
                }
                let (wtx, wrx) = mpsc::channel(1);
                let reader = self.clone();
                let (tuning, warned) = (tuning.clone(), warned.clone());
                let from = next.clone();
                let skip = skip.take();
                let task = tokio::spawn(async move {
                    reader
                        .read_window(from, skip, end, wtx, &tuning, &warned)
                        .await
                });
                in_flight.push_back((wrx, task));
                next = Cursor::Before { timestamp: end };
            }
            let Some((mut wrx, task)) = in_flight.pop_front() else {
                return Ok(());
            };
            while let Some(items) = wrx.recv().await {
                if tx.send(items).await.is_err() {
                    return Ok(());
                }
            }
            task.await
                .map_err(|e| anyhow::anyhow!("a window reader failed: {e}"))??;
        }
    }

    /// Reads the window `[from, end)` page after page into `tx`, ending with a mark at `end`.
    /// On a 504/512 it reads the rest in narrower pieces (the window's end is fixed: the next
    /// window may already be reading from it); what it learns tunes later pages and windows.
    async fn read_window(
        &self,
        from: Cursor,
        mut skip: Option<Skip>,
        end: DateTime<Utc>,
        tx: mpsc::Sender<Vec<Item<Cursor>>>,
        tuning: &Mutex<Tuning>,
        warned: &Warned,
    ) -> anyhow::Result<()> {
        let progress = self.client.progress().clone();
        let team = crate::event::team_id(self.client.project());
        let window_start = from.timestamp();
        let mut pos = from;
        let mut piece_end = end;
        // After a timeout, the rest of the window is read in pieces of this width.
        let mut piece_width: Option<Duration> = None;
        let (mut pages, mut rows_read) = (0u32, 0usize);
        let mut slowest = std::time::Duration::ZERO;
        let mut slow_retries = 0u32;
        while pos.timestamp() < end {
            let start = pos.timestamp();
            progress.set_status(format!("reading {} → {}", short(start), short(piece_end)));
            let limit = tuning.lock().unwrap_or_else(|e| e.into_inner()).limit;
            let (rows, bytes, took, last, limit) = match self
                .read_page(&pos, piece_end, limit, skip.take(), &tx, &team, warned)
                .await?
            {
                PageEnd::Read {
                    rows,
                    bytes,
                    took,
                    last,
                    asked,
                } => (rows, bytes, took, last, asked),
                PageEnd::Stopped => return Ok(()),
                PageEnd::TooSlow(status, kept) => {
                    // A narrower piece still holds the rows to skip if it reaches past them;
                    // otherwise they are handed on again (bounded duplicates, with no loss).
                    skip = kept;
                    let tried = piece_end - start;
                    if tried > MIN_WIDTH {
                        let narrower = (tried / 2).max(MIN_WIDTH);
                        piece_end = start + narrower;
                        piece_width = Some(narrower);
                        if skip.is_some_and(|s| piece_end <= s.last) {
                            progress.warn(
                                "PostHog timed out on a page part of which was handed on before; the narrower page that follows hands those events on again",
                            );
                            skip = None;
                        }
                        tuning
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .timed_out(tried, limit);
                        progress.debug(&format!(
                            "PostHog answered {status} (query too slow): reading {} at a time",
                            human(narrower)
                        ));
                    } else {
                        slow_retries += 1;
                        let policy = self.client.retry_policy();
                        if slow_retries > policy.max_retries {
                            return Err(crate::error::Stop::Temporary(format!(
                                "PostHog times out (HTTP {status}) even on a {} window at {}; try again later or with a smaller --page-size",
                                human(MIN_WIDTH),
                                format_ts(&start)
                            ))
                            .into());
                        }
                        Stats::add(&progress.stats.retries, 1);
                        progress
                            .wait(
                                &format!("PostHog query too slow (HTTP {status})"),
                                policy.backoff(slow_retries),
                            )
                            .await;
                    }
                    continue;
                }
            };
            slow_retries = 0;
            slowest = slowest.max(took);
            // PostHog (or a proxy) may return fewer rows than asked: a page proves its piece
            // exhausted only when it is shorter than the largest page seen in this run.
            let more = {
                let mut t = tuning.lock().unwrap_or_else(|e| e.into_inner());
                t.page_done(rows, bytes, took, limit, self.client.max_response());
                // A full page, or one as long as the longest PostHog returned (a silent cap).
                rows > 0 && (rows >= limit || rows >= t.largest)
            };
            pages += 1;
            rows_read += rows;
            if more {
                // More may follow in this piece: continue after the last row.
                pos = last.context("a page with rows has a last position")?;
            } else {
                pos = Cursor::Before {
                    timestamp: piece_end,
                };
                piece_end = piece_width
                    .and_then(|w| piece_end.checked_add_signed(w))
                    .map_or(end, |e| e.min(end));
            }
            // The page's records carry its start as their position: only now, with every row
            // checked, may the checkpoint move past them.
            if tx.send(vec![Item::Mark(pos.clone())]).await.is_err() {
                return Ok(());
            }
        }
        tuning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .window_done(end - window_start, pages, rows_read, slowest);
        Ok(())
    }

    /// Reads one page of `[pos, end)` as it arrives, checks its rows one by one against the
    /// rules PostHog's answer must follow and hands its records on in chunks. A row that breaks
    /// a rule ends the run before it is posted. Rows before it may have been posted, but their
    /// records carry a [`Cursor::Within`] the page, so the checkpoint never moves past a page
    /// that was not wholly checked. An answer cut short or garbled is asked for again, and the
    /// rows it had handed on are skipped if the new answer begins with the same ones.
    #[allow(clippy::too_many_arguments)]
    async fn read_page(
        &self,
        pos: &Cursor,
        end: DateTime<Utc>,
        limit: usize,
        mut skip: Option<Skip>,
        tx: &mpsc::Sender<Vec<Item<Cursor>>>,
        team: &serde_json::Value,
        warned: &Warned,
    ) -> anyhow::Result<PageEnd> {
        let progress = self.client.progress();
        let mut failures = 0u32;
        loop {
            // Ask for at least the rows to skip, so that the answer can show they are the same.
            let asked = skip.map_or(limit, |s| {
                limit.max(
                    usize::try_from(s.rows)
                        .unwrap_or(usize::MAX)
                        .min(MAX_PAGE_SIZE as usize),
                )
            });
            let body = hogql::page(pos, end, &self.filters, self.ingested, asked);
            let started = std::time::Instant::now();
            let mut resp = match self.client.post_stream("query/", &body).await {
                Ok(resp) => resp,
                Err(GaveUp::Fatal(ApiError::TooSlow { status })) => {
                    return Ok(PageEnd::TooSlow(status, skip));
                }
                Err(e) => return Err(e.into_error("reading from PostHog's Query API")),
            };
            let took = started.elapsed();
            let mut rows = Rows::new();
            let mut page = Page {
                rules: PageRules::new(pos, end),
                start: pos,
                chunk: Chunk::new(),
                count: 0,
                digest: DIGEST_START,
                skip,
            };
            let mut read = self
                .read_answer(&mut resp, &mut rows, &mut page, asked, tx, team, warned)
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
                        last: page.last(),
                        asked,
                    });
                }
                Err(Cut::Stopped) => return Ok(PageEnd::Stopped),
                Err(Cut::Fatal(e)) => return Err(e),
                Err(Cut::Mismatch) => {
                    progress.warn(&format!(
                        "PostHog's answer for {} no longer begins with the events already handed on from it; handing it on whole (those events arrive twice)",
                        format_ts(&pos.timestamp())
                    ));
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
                failures = 0;
            }
            skip = handed;
            let policy = self.client.retry_policy();
            if failures >= policy.max_retries {
                return Err(GaveUp::Exhausted {
                    retries: failures,
                    last: error,
                }
                .into_error("reading from PostHog's Query API"));
            }
            failures += 1;
            Stats::add(&progress.stats.retries, 1);
            progress
                .wait(&error.to_string(), policy.backoff(failures))
                .await;
        }
    }

    /// Reads an answer's body to its end, handing on each row as it is parsed.
    #[allow(clippy::too_many_arguments)]
    async fn read_answer(
        &self,
        resp: &mut reqwest::Response,
        rows: &mut Rows,
        page: &mut Page<'_>,
        limit: usize,
        tx: &mpsc::Sender<Vec<Item<Cursor>>>,
        team: &serde_json::Value,
        warned: &Warned,
    ) -> Result<(), Cut> {
        let host = || self.client.host().to_string();
        let max = self.client.max_response();
        let idle = self.client.timeout();
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
            let next =
                crate::net::http::next_chunk(resp, idle.min(allowed.saturating_sub(waited))).await;
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
                let (row, repaired) = match rows.next::<Row<'_>>() {
                    Ok(Step::Row { row, repaired }) => (row, repaired),
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
                self.take_row(row, repaired, page, team, warned)?;
                if page.chunk.full() && !page.chunk.send(tx).await {
                    return Err(Cut::Stopped);
                }
            }
        }
    }

    /// Checks one row and turns it into a record in the page's chunk, unless an earlier try
    /// of the page handed it on already.
    fn take_row(
        &self,
        row: Row<'_>,
        repaired: bool,
        page: &mut Page<'_>,
        team: &serde_json::Value,
        warned: &Warned,
    ) -> Result<(), Cut> {
        let progress = self.client.progress();
        let checked = page
            .rules
            .check(&row)
            .map_err(|why| Cut::Fatal(fault(&row, &why)))?;
        let (ts, key) = match checked {
            // A duplicate has the key of the row before it.
            RowCheck::Duplicate => (None, page.rules.after.unwrap_or_default()),
            RowCheck::Next { ts, key } => (Some(ts), key),
        };
        page.count += 1;
        page.digest = chain(page.digest, &key);
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
            // The events table is a ReplacingMergeTree: before a merge the same row can appear
            // twice, side by side in this order. Send it once.
            Stats::add(&progress.stats.duplicates_dropped, 1);
            return Ok(());
        };
        let Some(json) = self
            .record(row, ts, repaired, team, warned)
            .map_err(Cut::Fatal)?
        else {
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
        team: &serde_json::Value,
        warned: &Warned,
    ) -> anyhow::Result<Option<String>> {
        let progress = self.client.progress();
        let Row(uuid, event, distinct_id, properties, elements_chain, _, created_at) = row;
        if repaired {
            Stats::add(&progress.stats.repaired, 1);
            progress.warn(&format!(
                "event {uuid} held bytes that are not UTF-8, which JSON cannot carry: they were replaced by U+FFFD and the event delivered"
            ));
        }
        if !self.filters.include.is_empty() {
            progress.stats.saw_name(event.as_deref().unwrap_or(""));
        }
        let created_at = created_at.as_deref().map(parse_ts).transpose()?;
        // The server was asked to filter; a server (or proxy) that did not must not make us
        // post what was not asked for, nor re-post it on every sync run.
        let left_out = self
            .left_out(event.as_deref(), created_at)
            .map_err(|why| anyhow::anyhow!("PostHog's Query API returned event {uuid} {why}"))?;
        if let Some(reason) = left_out {
            warned.once(reason, progress);
            Stats::add(&progress.stats.filtered, 1);
            return Ok(None);
        }
        let properties = properties_text(properties, &uuid)?;
        let json = Event {
            uuid: &uuid,
            event: event.as_deref().unwrap_or(""),
            distinct_id: distinct_id.as_deref().unwrap_or(""),
            timestamp: format_ts(&ts),
            created_at: created_at.map(|t| format_ts(&t)),
            properties: properties_object(&properties, &uuid)?,
            elements_chain: elements_chain.as_deref().unwrap_or(""),
            team_id: team,
        }
        .to_json();
        Ok(Some(json))
    }

    /// Why a row the server returned must not be posted: it fails the event-name filters or
    /// the sync run's `created_at` bounds.
    fn left_out(
        &self,
        event: Option<&str>,
        created_at: Option<DateTime<Utc>>,
    ) -> Result<Option<&'static str>, &'static str> {
        let name = event.unwrap_or("");
        let f = &self.filters;
        if !f.include.is_empty() && !f.include.iter().any(|n| n == name)
            || f.exclude.iter().any(|n| n == name)
        {
            return Ok(Some(
                "PostHog returned events that the --event/--exclude-event filters leave out; they are filtered here",
            ));
        }
        if let Some((after, until)) = self.ingested {
            let t = created_at.ok_or("without created_at, which sync needs; stopping")?;
            if t <= after || t > until {
                return Ok(Some(
                    "PostHog returned events ingested outside this run's created_at bounds; they are left to the run that covers them",
                ));
            }
        }
        Ok(None)
    }
}

/// `properties` as the JSON text PostHog stored (checked to be an object when posted);
/// nothing as `{}`.
fn properties_text<'a>(raw: Option<Escaped<'a>>, uuid: &str) -> anyhow::Result<Cow<'a, str>> {
    match raw {
        Some(escaped) => escaped.text().map_err(|e| {
            anyhow::anyhow!(
                "PostHog returned properties that are not JSON text for event {uuid}: {e}"
            )
        }),
        None => Ok(Cow::Borrowed("{}")),
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

/// How long a query may take before pages and windows shrink: well inside PostHog's 10 s.
const TARGET_RTT: std::time::Duration = std::time::Duration::from_secs(3);
const MIN_LIMIT: usize = 500;
/// Rows a window aims at, in full pages: a window's last page is usually short, so windows of
/// a few pages waste little of PostHog's query budget.
const WINDOW_PAGES: usize = 2;

/// What the reader has learned about PostHog and the data, shared by the windows in flight:
/// it asks for as many rows a page as PostHog allows while queries come back fast (answers are
/// read as they arrive, so a page's size costs no memory; it only has to stay well within
/// `--max-response-size`), and widens windows only while they are cheap for PostHog.
struct Tuning {
    /// The next window's width.
    width: Duration,
    /// Widths stay below one that timed out (PostHog scans every row of a window, whatever
    /// the filters keep, so a width that was too slow stays too slow).
    ceiling: Duration,
    /// Rows asked for a page, at most `cap` (`--page-size`).
    limit: usize,
    cap: usize,
    /// The largest page PostHog returned: a shorter page ends a window, an equal one does not
    /// (PostHog or a proxy may cap rows below the LIMIT without saying so).
    largest: usize,
    /// Bytes an event weighs in PostHog's answers (a moving average).
    row_bytes: f64,
}

impl Tuning {
    fn new(cap: usize) -> Self {
        Tuning {
            width: INITIAL_WIDTH,
            ceiling: MAX_WIDTH,
            // As many as allowed from the start: answers are read as they arrive, so a big page
            // costs no memory, and a slow one makes the next ones smaller.
            limit: cap.max(1),
            cap: cap.max(1),
            largest: 0,
            row_bytes: 0.0,
        }
    }

    /// A page of `rows` rows and `bytes` bytes began to come back after `took`, for a LIMIT of
    /// `limit`; answers may be at most `max_bytes` long.
    fn page_done(
        &mut self,
        rows: usize,
        bytes: u64,
        took: std::time::Duration,
        limit: usize,
        max_bytes: u64,
    ) {
        self.largest = self.largest.max(rows);
        if rows > 0 {
            let per_row = bytes as f64 / rows as f64;
            self.row_bytes = if self.row_bytes == 0.0 {
                per_row
            } else {
                0.7 * self.row_bytes + 0.3 * per_row
            };
        }
        let mut next = if took > TARGET_RTT {
            (limit as f64 * TARGET_RTT.as_secs_f64() / took.as_secs_f64()) as usize
        } else if rows >= limit && took < TARGET_RTT / 2 {
            limit.saturating_mul(2)
        } else {
            limit
        };
        if self.row_bytes > 0.0 {
            next = next.min((max_bytes as f64 / 2.0 / self.row_bytes) as usize);
        }
        self.limit = next.clamp(MIN_LIMIT.min(self.cap), self.cap);
    }

    /// A window of `width` timed out with pages of `limit` rows.
    fn timed_out(&mut self, width: Duration, limit: usize) {
        self.ceiling = self.ceiling.min((width / 2).max(MIN_WIDTH));
        self.width = self.width.min(self.ceiling);
        self.limit = (limit / 2).clamp(MIN_LIMIT.min(self.cap), self.cap);
    }

    /// A window of `width` took `pages` pages for `rows` rows, the slowest in `slowest`:
    /// wider after a window that was cheap in time, towards `WINDOW_PAGES` full pages; narrower
    /// after a costly one. Time limits growth as well as rows: PostHog scans every row of the
    /// window, not only those the filters keep, and a query's time is what shows that.
    fn window_done(
        &mut self,
        width: Duration,
        pages: u32,
        rows: usize,
        slowest: std::time::Duration,
    ) {
        // A query's time grows at most in proportion to the rows it scans (PostHog also has a
        // fixed cost per query), so growing by TARGET_RTT / slowest keeps queries near it.
        let by_time = (TARGET_RTT.as_secs_f64() / slowest.as_secs_f64().max(1e-3)).clamp(1.0, 8.0);
        let by_rows = (WINDOW_PAGES * self.limit) as f64 / rows.max(1) as f64;
        let next = if pages > 2 * WINDOW_PAGES as u32 || slowest > TARGET_RTT {
            width / 2
        } else if by_rows > 1.0 {
            let factor = by_time.min(by_rows);
            Duration::microseconds(
                (width.num_microseconds().unwrap_or(i64::MAX) as f64 * factor) as i64,
            )
        } else {
            width
        };
        self.width = next.clamp(MIN_WIDTH, self.ceiling.min(MAX_WIDTH));
    }
}

fn human(d: Duration) -> String {
    crate::progress::human_duration(d.to_std().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn properties_come_as_json_text_in_a_string() {
        let of = |s: &str| -> anyhow::Result<String> {
            let escaped: Escaped<'_> = serde_json::from_str(s)?;
            let text = properties_text(Some(escaped), "u")?;
            Ok(properties_object(&text, "u")?.get().to_string())
        };
        let text = of(r#""{\"a\": 1e400, \"b\": \"\\u00e9\"}""#).unwrap();
        assert_eq!(text, r#"{"a": 1e400, "b": "\u00e9"}"#);
        assert_eq!(properties_text(None, "u").unwrap(), "{}");
        assert!(of(r#""[1]""#).is_err());
        assert!(of(r#""not json""#).is_err());
        assert!(
            of(r#"{"a":1}"#).is_err(),
            "an object, not JSON text in a string"
        );
    }

    #[test]
    fn window_width_grows_when_cheap_shrinks_when_costly_and_stays_below_a_timeout() {
        let ms = std::time::Duration::from_millis;
        let mut t = Tuning::new(50_000);
        let w = Duration::hours(1);
        t.window_done(w, 1, 0, ms(100));
        assert_eq!(t.width, Duration::hours(8), "few rows, fast: x8");
        t.window_done(w, 1, 40_000, ms(100));
        assert_eq!(
            t.width,
            Duration::minutes(150),
            "towards two full pages a window"
        );
        t.window_done(w, 1, 0, ms(2_000));
        assert_eq!(
            t.width,
            Duration::minutes(90),
            "few rows but slow for PostHog (it scanned many): little growth"
        );
        t.window_done(w, 1, 0, ms(3_000));
        assert_eq!(t.width, w, "as slow as the target: no growth");
        t.window_done(w, 1, 4_000, ms(1_000));
        assert_eq!(t.width, Duration::hours(3));
        t.window_done(w, 9, 85_000, ms(500));
        assert_eq!(t.width, Duration::minutes(30));
        // After a timeout at 8 h, no window reaches 8 h again, however sparse.
        t.timed_out(Duration::hours(8), 10_000);
        for _ in 0..10 {
            let now = t.width;
            t.window_done(now, 1, 0, ms(10));
        }
        assert_eq!(t.width, Duration::hours(4));
        t.window_done(MIN_WIDTH, 20, 200_000, ms(100));
        assert_eq!(t.width, MIN_WIDTH);
    }

    #[test]
    fn pages_grow_to_the_cap_while_fast_and_shrink_for_slow_queries_and_heavy_events() {
        let ms = std::time::Duration::from_millis;
        let mut t = Tuning::new(50_000);
        assert_eq!(t.limit, 50_000, "PostHog's largest pages from the start");
        // A slow page: in proportion to the time it took.
        t.page_done(50_000, 50_000 * 300, ms(6_000), 50_000, GIB);
        assert_eq!(t.limit, 25_000);
        // Full, fast pages of 300-byte events: double up to the cap again.
        for _ in 0..4 {
            let limit = t.limit;
            t.page_done(limit, limit as u64 * 300, ms(200), limit, GIB);
        }
        assert_eq!(t.limit, 50_000);
        // 3 KB events and --max-response-size 64 MiB: answers stay within half of it.
        let max = 64 << 20;
        let mut t = Tuning::new(50_000);
        for _ in 0..10 {
            let limit = t.limit;
            t.page_done(limit, limit as u64 * 3_000, ms(200), limit, max);
        }
        assert!(t.limit as u64 * 3_000 <= max / 2, "{}", t.limit);
        assert!(t.limit as u64 * 3_000 > max / 4, "{}", t.limit);
        // With the default 1 GiB, 3 KB events get PostHog's largest pages.
        let mut t = Tuning::new(50_000);
        for _ in 0..10 {
            let limit = t.limit;
            t.page_done(limit, limit as u64 * 3_000, ms(200), limit, GIB);
        }
        assert_eq!(t.limit, 50_000);
        // A page size below the start stays where the user put it.
        assert_eq!(Tuning::new(400).limit, 400);
    }

    const GIB: u64 = 1 << 30;

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
                body.extend_from_slice(br#"\"}","","2024-01-01T00:00:00Z",null]"#);
            }
            body.extend_from_slice(br#"],"columns":[]}"#);
            let rows = rows_of(&body, piece).unwrap();
            let expected: Vec<(String, bool)> = bad.iter().enumerate().map(|(i, b)| (format!("u{i}"), *b)).collect();
            proptest::prop_assert_eq!(rows, expected);
        }
    }
}
