//! The Query API (HogQL) source: keyset paging on `(timestamp, uuid)` over time windows whose
//! width adapts: halved when PostHog answers 504/512 (its 10 s limit), doubled while pages come
//! back short. Uuid order is ClickHouse's, so the server does every comparison.

use super::hogql;
use super::source::{Cursor, Reader, short};
use crate::event::{Event, format_ts, parse_ts, properties_object};
use crate::net::retry::GaveUp;
use crate::pipeline::Item;
use crate::pipeline::ledger::Stats;
use crate::posthog::ApiError;
use anyhow::{Context, bail};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
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
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let v = u128::from_str_radix(&hex, 16).ok()?;
    Some((v as u64, (v >> 64) as u64))
}

enum RowCheck {
    Duplicate,
    Next { ts: DateTime<Utc>, key: OrderKey },
}

/// A Query API answer's rows. Bytes that are not UTF-8 are replaced by U+FFFD, and the rows
/// they were in are named, so that one such event is delivered (and reported), not fatal.
fn parse_page(bytes: &[u8]) -> Result<Page, serde_json::Error> {
    if std::str::from_utf8(bytes).is_ok() {
        let rows = serde_json::from_slice::<QueryResponse>(bytes)?.results;
        return Ok(Page {
            rows,
            repaired: Vec::new(),
            bytes: bytes.len(),
        });
    }
    let (text, at) = super::repair::lossy_with_offsets(bytes);
    let raw: RawResponse<'_> = serde_json::from_str(&text)?;
    let mut page = Page {
        rows: Vec::with_capacity(raw.results.len()),
        repaired: Vec::new(),
        bytes: bytes.len(),
    };
    for (i, row) in raw.results.into_iter().enumerate() {
        let start = row.get().as_ptr() as usize - text.as_ptr() as usize;
        let span = start..start + row.get().len();
        if at.iter().any(|a| span.contains(a)) {
            page.repaired.push(i);
        }
        page.rows.push(serde_json::from_str(row.get())?);
    }
    Ok(page)
}

/// The error for a row that breaks the rules: exit 1, naming the row.
fn fault(row: &Row, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "PostHog's Query API returned event {} at {} although {why}; stopping before it. Nothing of this page was posted; the checkpoint stays before it. This is a fault of the server or of a proxy in front of it: running again re-reads from the checkpoint",
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

/// One row, in the order of `hogql::COLUMNS`.
#[derive(Deserialize)]
struct Row(
    String,
    Option<String>,
    Option<String>,
    /// JSON text in a string, as PostHog sends it; an object is accepted too.
    Option<Box<RawValue>>,
    Option<String>,
    String,
    Option<String>,
);

#[derive(Deserialize)]
struct QueryResponse {
    results: Vec<Row>,
}

/// An answer whose rows are parsed one by one (to tell which held bytes that were repaired).
#[derive(Deserialize)]
struct RawResponse<'a> {
    #[serde(borrow)]
    results: Vec<&'a RawValue>,
}

/// One page of rows, and which of them held bytes that were not UTF-8 (now U+FFFD).
struct Page {
    rows: Vec<Row>,
    repaired: Vec<usize>,
    /// The size of the answer, to size later pages.
    bytes: usize,
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
        let mut next = match from {
            None => Cursor::Before {
                timestamp: self.range.start,
            },
            Some(Cursor::Seen { .. }) => {
                bail!("this checkpoint was written by the Events API source; use --source events")
            }
            Some(pos) => pos,
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
                let end = start
                    .checked_add_signed(width)
                    .map_or(self.range.end, |e| e.min(self.range.end));
                let (wtx, wrx) = mpsc::channel(1);
                let reader = self.clone();
                let (tuning, warned) = (tuning.clone(), warned.clone());
                let from = next.clone();
                let task = tokio::spawn(async move {
                    reader.read_window(from, end, wtx, &tuning, &warned).await
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
            let asked = std::time::Instant::now();
            let page = match self.query_page(&pos, piece_end, limit).await {
                Ok(page) => page,
                Err(GaveUp::Fatal(ApiError::TooSlow { status })) => {
                    let tried = piece_end - start;
                    if tried > MIN_WIDTH {
                        let narrower = (tried / 2).max(MIN_WIDTH);
                        piece_end = start + narrower;
                        piece_width = Some(narrower);
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
                Err(other) => return Err(other.into_error("reading from PostHog's Query API")),
            };
            slow_retries = 0;
            let took = asked.elapsed();
            slowest = slowest.max(took);
            for i in &page.repaired {
                Stats::add(&progress.stats.repaired, 1);
                progress.warn(&format!(
                    "event {} held bytes that are not UTF-8, which JSON cannot carry: they were replaced by U+FFFD and the event delivered",
                    page.rows[*i].0
                ));
            }
            let rows = page.rows;
            // PostHog (or a proxy) may return fewer rows than asked: a page proves its piece
            // exhausted only when it is shorter than the largest page seen in this run.
            let more = {
                let mut t = tuning.lock().unwrap_or_else(|e| e.into_inner());
                t.page_done(rows.len(), page.bytes, took, limit);
                // A full page, or one as long as the longest PostHog returned (a silent cap).
                !rows.is_empty() && (rows.len() >= limit || rows.len() >= t.largest)
            };
            Stats::add(&progress.stats.read, rows.len() as u64);
            pages += 1;
            rows_read += rows.len();

            // A page that breaks a rule is not trusted as a whole: a row that passes on its own
            // may still have jumped over rows the server left out (a reordered page puts its
            // last row first). The error ends the run; the checkpoint stays before the page.
            let mut items = self.check_and_emit(rows, &pos, piece_end, &team, warned, limit)?;
            let last = items.last().map(|i| match i {
                Item::Record { pos, .. } | Item::Mark(pos) => pos.clone(),
            });
            if more {
                // More may follow in this piece: continue after the last row.
                pos = last.context("a page with rows has a last position")?;
            } else {
                pos = Cursor::Before {
                    timestamp: piece_end,
                };
                items.push(Item::Mark(pos.clone()));
                piece_end = piece_width
                    .and_then(|w| piece_end.checked_add_signed(w))
                    .map_or(end, |e| e.min(end));
            }
            // In chunks, so that what waits in queues is bounded by records, not pages: a
            // window ahead of its turn holds one page at most.
            while !items.is_empty() {
                let rest = items.split_off(items.len().min(CHUNK));
                if tx.send(std::mem::replace(&mut items, rest)).await.is_err() {
                    return Ok(());
                }
            }
        }
        tuning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .window_done(end - window_start, pages, rows_read, slowest);
        Ok(())
    }

    /// Checks a page row by row against the rules PostHog's answer must follow and turns the
    /// rows into records; the first row that breaks one is the error.
    fn check_and_emit(
        &self,
        rows: Vec<Row>,
        cursor: &Cursor,
        end: DateTime<Utc>,
        team: &serde_json::Value,
        warned: &Warned,
        limit: usize,
    ) -> anyhow::Result<Vec<Item<Cursor>>> {
        let progress = self.client.progress();
        let mut items = Vec::with_capacity(rows.len() + 1);
        // Every row must sort after this key; `None` after a `Before` cursor (ties allowed).
        let mut after: Option<OrderKey> = match cursor {
            Cursor::After { timestamp, uuid } => uuid_order(uuid).map(|u| (*timestamp, u)),
            _ => None,
        };
        let from = cursor.timestamp();
        let mut last_uuid: Option<String> = None;
        // The position after trailing rows that were left out, handed on once at the end.
        let mut skipped_to: Option<Cursor> = None;
        if rows.len() > limit {
            bail!(
                "PostHog's Query API returned {} rows for a LIMIT of {limit}; stopping rather than trusting the page",
                rows.len()
            );
        }
        for row in rows {
            let checked = self.check_row(&row, from, end, after, last_uuid.as_deref());
            let (ts, key) = match checked {
                Ok(RowCheck::Duplicate) => {
                    // The events table is a ReplacingMergeTree: before a merge the same row can
                    // appear twice, side by side in this order. Send it once.
                    Stats::add(&progress.stats.duplicates_dropped, 1);
                    continue;
                }
                Ok(RowCheck::Next { ts, key }) => (ts, key),
                Err(why) => return Err(fault(&row, &why)),
            };
            after = Some(key);
            let Row(uuid, event, distinct_id, properties, elements_chain, _, created_at) = row;
            if !self.filters.include.is_empty() {
                progress.stats.saw_name(event.as_deref().unwrap_or(""));
            }
            last_uuid = Some(uuid.clone());
            let pos = Cursor::After {
                timestamp: ts,
                uuid: uuid.clone(),
            };
            let created_at = created_at.as_deref().map(parse_ts).transpose()?;
            // The server was asked to filter; a server (or proxy) that did not must not make
            // us post what was not asked for, nor re-post it on every sync run.
            let left_out = self.left_out(event.as_deref(), created_at).map_err(|why| {
                anyhow::anyhow!("PostHog's Query API returned event {uuid} {why}")
            })?;
            if let Some(reason) = left_out {
                warned.once(reason, progress);
                Stats::add(&progress.stats.filtered, 1);
                skipped_to = Some(pos);
                continue;
            }
            let properties = properties_of(properties, &uuid)?;
            let json = Event {
                uuid: &uuid,
                event: event.as_deref().unwrap_or(""),
                distinct_id: distinct_id.as_deref().unwrap_or(""),
                timestamp: format_ts(&ts),
                created_at: created_at.map(|t| format_ts(&t)),
                properties: &properties,
                elements_chain: elements_chain.as_deref().unwrap_or(""),
                team_id: team,
            }
            .to_json();
            items.push(Item::Record { json, pos });
            skipped_to = None;
        }
        items.extend(skipped_to.map(Item::Mark));
        Ok(items)
    }

    /// One row against the rules: inside the window `[from, end)`, after the cursor, and in
    /// PostHog's order (ClickHouse's, for uuids). The same row twice in a row is an unmerged
    /// duplicate, not a fault.
    fn check_row(
        &self,
        row: &Row,
        from: DateTime<Utc>,
        end: DateTime<Utc>,
        after: Option<OrderKey>,
        last_uuid: Option<&str>,
    ) -> Result<RowCheck, String> {
        let ts = parse_ts(&row.5).map_err(|e| format!("{e:#}"))?;
        let uuid = uuid_order(&row.0).ok_or("its uuid is not a UUID")?;
        let key = (ts, uuid);
        if last_uuid == Some(row.0.as_str()) && after.is_some_and(|a| a == key) {
            return Ok(RowCheck::Duplicate);
        }
        if ts < from || ts >= end {
            return Err(format!(
                "it lies outside the requested window {} → {}",
                format_ts(&from),
                format_ts(&end)
            ));
        }
        if after.is_some_and(|a| key <= a) {
            return Err(
                "it is not after the row before it (a repeated or reordered page)".to_string(),
            );
        }
        Ok(RowCheck::Next { ts, key })
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

    async fn query_page(
        &self,
        pos: &Cursor,
        end: DateTime<Utc>,
        limit: usize,
    ) -> Result<Page, GaveUp<ApiError>> {
        let body = hogql::page(pos, end, &self.filters, self.ingested, limit);
        let bytes = self.client.post_page("query/", &body).await?;
        parse_page(&bytes).map_err(|e| {
            GaveUp::Fatal(ApiError::BadResponse {
                status: 200,
                excerpt: format!("{e}: {}", crate::net::http::excerpt(&bytes, 200)),
            })
        })
    }
}

/// `properties` as the JSON object PostHog stored: usually its text in a JSON string (decoded
/// once, kept verbatim); an object as it is; nothing as `{}`.
fn properties_of(raw: Option<Box<RawValue>>, uuid: &str) -> anyhow::Result<Box<RawValue>> {
    match raw {
        Some(raw) if raw.get().starts_with('"') => {
            let text = super::repair::json_text_of_string(raw.get()).map_err(|e| {
                anyhow::anyhow!(
                    "PostHog returned properties that are not a JSON string for event {uuid}: {e}"
                )
            })?;
            properties_object(Some(&text), uuid)
        }
        Some(raw) if raw.get() != "null" => properties_object(Some(raw.get()), uuid),
        _ => properties_object(None, uuid),
    }
}

/// Records handed on at a time (a page of 50,000 is handed on in 25 chunks).
const CHUNK: usize = 2_000;

/// How long a query may take before pages and windows shrink: well inside PostHog's 10 s.
const TARGET_RTT: std::time::Duration = std::time::Duration::from_secs(3);
/// The answer size pages aim at, whatever the events weigh: what memory holds per window (a
/// page is held about twice while it is parsed and turned into records). 32 MiB gave 40,000
/// events a query for 1 KB events but 430 MiB of peak memory with two windows in flight.
const PAGE_BYTES: f64 = 16.0 * 1024.0 * 1024.0;
/// Rows asked for first, before anything is known of the events' size or PostHog's speed.
const START_LIMIT: usize = 10_000;
const MIN_LIMIT: usize = 500;

/// What the reader has learned about PostHog and the data, shared by the windows in flight:
/// it asks for as many rows a page as PostHog allows while queries come back fast and answers
/// stay within `PAGE_BYTES`, and widens windows only while they are cheap for PostHog.
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
            limit: cap.clamp(1, START_LIMIT),
            cap: cap.max(1),
            largest: 0,
            row_bytes: 0.0,
        }
    }

    /// A page of `rows` rows and `bytes` bytes came back in `took` for a LIMIT of `limit`.
    fn page_done(&mut self, rows: usize, bytes: usize, took: std::time::Duration, limit: usize) {
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
            next = next.min((PAGE_BYTES / self.row_bytes) as usize);
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
    /// wider after a window that was cheap in rows and in time, narrower after a costly one.
    fn window_done(
        &mut self,
        width: Duration,
        pages: u32,
        rows: usize,
        slowest: std::time::Duration,
    ) {
        let next = if pages <= 1 && rows < self.limit / 4 && slowest < TARGET_RTT / 4 {
            width * 4
        } else if pages <= 1 && rows < self.limit / 2 && slowest < TARGET_RTT / 2 {
            width * 2
        } else if pages > 4 || slowest > TARGET_RTT {
            width / 2
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
    fn properties_come_as_json_text_or_as_an_object() {
        let raw = |s: &str| Some(RawValue::from_string(s.into()).unwrap());
        let text = properties_of(raw(r#""{\"a\": 1e400, \"b\": \"\\u00e9\"}""#), "u").unwrap();
        assert_eq!(text.get(), r#"{"a": 1e400, "b": "\u00e9"}"#);
        assert_eq!(
            properties_of(raw(r#"{"a":1}"#), "u").unwrap().get(),
            r#"{"a":1}"#
        );
        assert_eq!(properties_of(raw("null"), "u").unwrap().get(), "{}");
        assert!(properties_of(raw("[1]"), "u").is_err());
        assert!(properties_of(raw(r#""not json""#), "u").is_err());
    }

    #[test]
    fn window_width_grows_when_cheap_shrinks_when_costly_and_stays_below_a_timeout() {
        let ms = std::time::Duration::from_millis;
        let mut t = Tuning::new(50_000);
        let w = Duration::hours(1);
        t.window_done(w, 1, 0, ms(100));
        assert_eq!(t.width, Duration::hours(4), "few rows, fast: x4");
        t.window_done(w, 1, 0, ms(2_000));
        assert_eq!(
            t.width, w,
            "few rows but slow for PostHog (it scanned many): no growth"
        );
        t.window_done(w, 1, 4_000, ms(1_000));
        assert_eq!(t.width, Duration::hours(2));
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
        assert_eq!(t.limit, 10_000);
        // Full, fast pages of 300-byte events: double up to the cap.
        for _ in 0..4 {
            let limit = t.limit;
            t.page_done(limit, limit * 300, ms(200), limit);
        }
        assert_eq!(t.limit, 50_000);
        // A slow page: in proportion to the time it took.
        t.page_done(50_000, 50_000 * 300, ms(6_000), 50_000);
        assert_eq!(t.limit, 25_000);
        // 3 KB events: a page stays within PAGE_BYTES.
        let mut t = Tuning::new(50_000);
        for _ in 0..10 {
            let limit = t.limit;
            t.page_done(limit, limit * 3_000, ms(200), limit);
        }
        assert!(t.limit as f64 * 3_000.0 <= PAGE_BYTES, "{}", t.limit);
        assert!(t.limit as f64 * 3_000.0 > PAGE_BYTES / 2.0, "{}", t.limit);
        // A page size below the start stays where the user put it.
        assert_eq!(Tuning::new(400).limit, 400);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// Any bytes as an answer: rows or an error, never a panic.
        #[test]
        fn any_answer_parses_or_is_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = parse_page(&bytes);
        }

        /// An answer whose properties hold bytes that are not UTF-8 in some rows: every row
        /// comes back, in order, and exactly those rows are named as repaired.
        #[test]
        fn rows_with_bytes_that_are_not_utf8_are_kept_and_named(
            bad in proptest::collection::vec(proptest::prelude::any::<bool>(), 1..30),
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
            let page = parse_page(&body).unwrap();
            proptest::prop_assert_eq!(page.rows.len(), bad.len());
            for (i, row) in page.rows.iter().enumerate() {
                proptest::prop_assert_eq!(&row.0, &format!("u{i}"));
            }
            let expected: Vec<usize> = bad.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| i).collect();
            proptest::prop_assert_eq!(page.repaired, expected);
        }
    }
}
