//! The Query API (HogQL) source, in PostHog's own storage order: the range is planned with
//! cheap counts per UTC day, event name and `cityHash64(distinct_id)` bucket, and read in
//! windows of about a page each, every query bounded by the day, the event names and the
//! hashes it covers, so that PostHog reads each stored event about once
//! (../shared/posthog-api.md, "What a query costs PostHog"). Days come in order; inside a day,
//! events come in key order, not time order. Correctness never rests on the counts or on the
//! physical layout: a window is read until PostHog's answer ends it, and every row is checked.

pub(crate) mod key;
mod page;
mod plan;

use crate::domain::Cursor;
use crate::domain::cursor::Tie;
use crate::error::Stop;
use crate::pipeline::Item;
use crate::pipeline::ledger::Stats;
use crate::posthog::PostHog;
use crate::posthog::hogql::{Ingested, Scope, Stretch};
use crate::posthog::source::Reader;
use anyhow::bail;
use chrono::{DateTime, Utc};
use key::{Key, Lower, Point, Upper, day_of, day_start};
use page::{PageEnd, Skip};
use plan::{Planner, Window};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Queries in a row PostHog may find too costly, each for half of what the one before asked,
/// before the run stops: a factor of 2^24 below a window, far past what a query's cost can
/// owe to its size (each one lost to PostHog's limit costs 10 s).
const MAX_SPLITS: u32 = 24;

/// The share of a page a window aims at: counts are exact, but a window cut inside a group
/// holds about, not exactly, what the hashes' share says.
const WINDOW_FILL: f64 = 0.98;

/// How long a query may take before windows get smaller: well inside PostHog's 10 s limit,
/// which a query over a window's key range approaches in proportion to its events.
const TARGET_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// What every window of a read shares: where it started, its bounds, what it has learned.
pub(crate) struct Read {
    reader: Arc<Reader>,
    /// Where the first day is read from: the range's start, or a checkpoint's.
    start: DateTime<Utc>,
    /// An older checkpoint's place among events sharing one microsecond.
    tie: Option<Tie>,
    team: serde_json::Value,
    tuning: Mutex<Tuning>,
    warned: Mutex<std::collections::HashSet<&'static str>>,
    /// The furthest place shown as being read: windows read at once start out of order, and
    /// what is shown only moves forward.
    shown: Mutex<Option<key::Point>>,
}

impl Read {
    fn client(&self) -> &PostHog {
        &self.reader.client
    }

    fn tie(&self) -> Option<&Tie> {
        self.tie.as_ref()
    }

    fn ingested(&self) -> Option<Ingested> {
        self.reader.ingested
    }

    fn team(&self) -> &serde_json::Value {
        &self.team
    }

    fn range_end(&self) -> DateTime<Utc> {
        self.reader.range.end
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            filters: &self.reader.filters,
            ingested: self.reader.ingested,
            tie: self.tie.as_ref(),
        }
    }

    fn stretch<'a>(&self, lo: &'a Lower, hi: &'a Upper) -> Stretch<'a> {
        Stretch {
            start: self.start,
            end: self.reader.range.end,
            lo,
            hi,
        }
    }

    /// Warns once per run, whichever window meets it first.
    fn warn_once(&self, msg: &'static str) {
        if self
            .warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(msg)
        {
            self.client().progress().warn(msg);
        }
    }

    /// Counts the plan's events, for the progress shown (`complete`: up to the range's end).
    fn add_planned(&self, events: f64, complete: bool) {
        let stats = &self.client().progress().stats;
        Stats::add(&stats.planned, events.round() as u64);
        if complete {
            stats
                .planned_complete
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Where the events of `day` begin to be read.
    fn day_from(&self, day: i64) -> DateTime<Utc> {
        if day == day_of(self.start) {
            self.start
        } else {
            day_start(day)
        }
    }

    /// The checkpoint position of "everything before `lo` is done".
    fn position(&self, lo: &Lower) -> Cursor {
        let p = lo.point();
        let from = self.day_from(p.day);
        let tie = self.tie.clone().filter(|t| day_of(t.timestamp) == p.day);
        match lo {
            Lower::At(p) if p.key.is_min() => match tie {
                // Still where an older checkpoint stood: keep its own form.
                Some(tie) => Cursor::After {
                    timestamp: tie.timestamp,
                    uuid: tie.uuid,
                },
                None => Cursor::Before { timestamp: from },
            },
            Lower::At(p) | Lower::After(p) => Cursor::Key {
                from,
                event: p.key.event.clone(),
                distinct_hash: p.key.distinct_hash,
                uuid_hash: p.key.uuid_hash,
                through: matches!(lo, Lower::After(_)),
                tie,
            },
        }
    }

    /// The position once everything up to `hi` is done.
    fn position_after(&self, hi: &Upper) -> Cursor {
        match hi.next() {
            Some(lo) => self.position(&lo),
            None => Cursor::Before {
                timestamp: self.reader.range.end,
            },
        }
    }

    /// Windows read at once: `--fetch-concurrency`, one fewer for each time PostHog refused a
    /// query for its cap on queries running at once.
    fn concurrency(&self) -> usize {
        let refused = self.client().concurrency_refusals();
        self.reader
            .fetch_concurrency
            .saturating_sub(refused as usize)
            .max(1)
    }
}

/// Where a read starts.
#[derive(Debug, PartialEq)]
struct Start {
    /// Where the first day is read from.
    from: DateTime<Utc>,
    /// The bound before the first event to read.
    lo: Lower,
    /// An older checkpoint's tie.
    tie: Option<Tie>,
    /// The rows of the first page handed on before.
    skip: Option<Skip>,
}

fn start_of(from: Option<Cursor>, range_start: DateTime<Utc>) -> anyhow::Result<Start> {
    let at = |from: DateTime<Utc>, tie| Start {
        from,
        lo: Lower::At(Point::day_start(day_of(from))),
        tie,
        skip: None,
    };
    Ok(match from {
        None => at(range_start, None),
        Some(Cursor::Before { timestamp }) => at(timestamp, None),
        Some(Cursor::After { timestamp, uuid }) => at(timestamp, Some(Tie { timestamp, uuid })),
        Some(Cursor::Key {
            from,
            event,
            distinct_hash,
            uuid_hash,
            through,
            tie,
        }) => {
            let p = Point {
                day: day_of(from),
                key: Key {
                    event,
                    distinct_hash,
                    uuid_hash,
                },
            };
            Start {
                from,
                lo: if through {
                    Lower::After(p)
                } else {
                    Lower::At(p)
                },
                tie,
                skip: None,
            }
        }
        Some(Cursor::Within {
            page,
            rows,
            digest,
            timestamp,
        }) => Start {
            skip: (rows > 0).then_some(Skip {
                rows,
                digest,
                last: timestamp,
            }),
            ..start_of(Some(*page), range_start)?
        },
        Some(Cursor::Seen { .. }) => {
            bail!("this checkpoint was written by the Events API source; use --source events")
        }
    })
}

/// A window in flight, in the order windows are handed on.
enum Flight {
    Reading(
        mpsc::Receiver<Vec<Item<Cursor>>>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ),
    /// Counted empty: only its end is handed on.
    Empty(Cursor),
}

impl Reader {
    /// Sends every event of the range after `from` to `tx`, in storage order, through the
    /// Query API. Up to `fetch_concurrency` windows are read at once, each by its own task
    /// into its own small queue; they are handed on strictly in order, so positions (and
    /// checkpoints) never run ahead of an unfinished window. Stops early (Ok) if the receiver
    /// is gone.
    pub(super) async fn read_query(
        self: Arc<Self>,
        from: Option<Cursor>,
        tx: mpsc::Sender<Vec<Item<Cursor>>>,
    ) -> anyhow::Result<()> {
        let Start {
            from: start,
            lo,
            tie,
            mut skip,
        } = start_of(from, self.range.start)?;
        if start >= self.range.end {
            return Ok(());
        }
        let read = Arc::new(Read {
            team: crate::event::team_id(self.client.project()),
            tuning: Mutex::new(Tuning::new(self.page_size)),
            warned: Mutex::default(),
            shown: Mutex::default(),
            reader: self,
            start,
            tie,
        });
        let mut planner = Planner::new(lo, read.reader.plan_by_name, read.reader.skip_empty);
        let mut in_flight = VecDeque::new();
        loop {
            while in_flight.len() < read.concurrency() {
                let target = read.tuning().window();
                let Some(window) = planner.next_window(&read, target).await? else {
                    break;
                };
                if window.empty && skip.is_none() && read.reader.skip_empty {
                    in_flight.push_back(Flight::Empty(read.position_after(&window.hi)));
                    continue;
                }
                let (wtx, wrx) = mpsc::channel(1);
                let (reading, skip) = (read.clone(), skip.take());
                let task =
                    tokio::spawn(async move { reading.read_window(window, skip, wtx).await });
                in_flight.push_back(Flight::Reading(wrx, task));
            }
            match in_flight.pop_front() {
                None => return Ok(()),
                Some(Flight::Empty(end)) => {
                    if tx.send(vec![Item::Mark(end)]).await.is_err() {
                        return Ok(());
                    }
                }
                Some(Flight::Reading(mut wrx, task)) => {
                    while let Some(items) = wrx.recv().await {
                        if tx.send(items).await.is_err() {
                            return Ok(());
                        }
                    }
                    task.await
                        .map_err(|e| anyhow::anyhow!("a window reader failed: {e}"))??;
                }
            }
        }
    }
}

impl Read {
    /// Shows `lo` as the place being read, if it is further than what is shown.
    fn show(&self, lo: &Lower) {
        if further(&self.shown, lo.point()) {
            self.client()
                .progress()
                .set_status(format!("reading {}", describe(lo)));
        }
    }

    fn tuning(&self) -> std::sync::MutexGuard<'_, Tuning> {
        self.tuning.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `window` page after page into `tx`, ending with a mark at its end. A page that
    /// comes back full goes on after its last row; a query PostHog finds too costly is asked
    /// again for a smaller part of what is left (the window's end is fixed: the next window
    /// may already be reading from it).
    async fn read_window(
        &self,
        window: Window,
        mut skip: Option<Skip>,
        tx: mpsc::Sender<Vec<Item<Cursor>>>,
    ) -> anyhow::Result<()> {
        let progress = self.client().progress().clone();
        let mut lo = window.lo.clone();
        let mut hi = window.hi.clone();
        // Events left in [lo, window.hi), as planned (unknown once a part was split off).
        let mut left = Some(window.planned);
        // Queries found too costly since the last page that held events (parts found empty
        // are no sign that the splitting helps), and tries of a single key.
        let (mut splits, mut too_costly) = (0u32, 0u32);
        // A page shorter than asked after which the window went on: if the next page holds
        // events, PostHog caps its pages there.
        let mut suspect: Option<usize> = None;
        loop {
            self.show(&lo);
            let (limit, largest) = {
                let t = self.tuning();
                (t.limit, t.largest)
            };
            let (rows, last) = match self.read_page(&lo, &hi, limit, skip.take(), &tx).await? {
                PageEnd::Stopped => return Ok(()),
                PageEnd::TooCostly(status, kept) => {
                    skip = kept;
                    self.tuning().too_costly();
                    splits += 1;
                    if splits > MAX_SPLITS {
                        return Err(Stop::Temporary(format!(
                            "PostHog found {MAX_SPLITS} queries in a row too costly (HTTP {status}), each for half of the one before, down to {}; it cannot read even small parts now: try again later",
                            describe(&lo)
                        ))
                        .into());
                    }
                    if let Some(first_half) = window.split(&lo, &hi) {
                        progress.debug(&format!(
                            "PostHog found a query too costly (HTTP {status}); reading {} in smaller parts",
                            describe(&lo)
                        ));
                        hi = first_half;
                        left = None;
                        continue;
                    }
                    // Nothing smaller to ask (a single key, or no planned place to cut). PostHog
                    // may be busy: a few tries.
                    too_costly += 1;
                    let policy = self.client().retry_policy();
                    if too_costly > policy.max_retries {
                        return Err(Stop::Temporary(format!(
                            "PostHog finds even the smallest query this reader can ask for too costly (HTTP {status}): {}; try again later",
                            describe(&lo)
                        ))
                        .into());
                    }
                    Stats::add(&progress.stats.retries, 1);
                    progress
                        .wait(
                            &format!("PostHog query too costly (HTTP {status})"),
                            policy.backoff(too_costly),
                        )
                        .await;
                    continue;
                }
                PageEnd::Read {
                    rows,
                    bytes,
                    took,
                    last,
                } => {
                    let max = self.client().max_response();
                    self.tuning().page_done(rows, bytes, took, limit, max);
                    (rows, last)
                }
            };
            too_costly = 0;
            if rows > 0 {
                splits = 0;
            }
            if rows > 0
                && let Some(cap) = suspect.take()
            {
                self.tuning().capped(cap);
            }
            // A full page proves nothing; nor does a shorter one as long as the longest PostHog
            // returned (older versions and proxies cap rows without saying so), unless it holds
            // every event the plan counted, exactly, in what was left of the window.
            let all_counted =
                window.counted && hi == window.hi && left.is_some_and(|l| rows as f64 >= l.round());
            let more = rows > 0 && (rows >= limit || (!all_counted && rows >= largest));
            left = left.map(|l| (l - rows as f64).max(0.0));
            if more {
                let Some(last) = last else {
                    bail!("a page with rows has a last row");
                };
                if rows < limit {
                    suspect = Some(rows);
                }
                lo = Lower::After(last);
            } else {
                match hi.next() {
                    Some(next) if hi != window.hi => {
                        lo = next;
                        hi = window.hi.clone();
                    }
                    _ => {
                        let end = self.position_after(&window.hi);
                        let _ = tx.send(vec![Item::Mark(end)]).await;
                        return Ok(());
                    }
                }
            }
            // The page's records carry its start as their position: only now, with every row
            // checked, may the checkpoint move past them.
            if tx.send(vec![Item::Mark(self.position(&lo))]).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// A place in the order, for status lines and messages.
/// Whether `p` is at least as far as what `shown` holds; if so it is held from now on.
fn further<T: Ord + Clone>(shown: &Mutex<Option<T>>, p: &T) -> bool {
    let mut shown = shown.lock().unwrap_or_else(|e| e.into_inner());
    if shown.as_ref().is_some_and(|s| s > p) {
        return false;
    }
    *shown = Some(p.clone());
    true
}

fn describe(lo: &Lower) -> String {
    let p = lo.point();
    let day = day_start(p.day).format("%Y-%m-%d");
    if p.key.is_min() {
        return day.to_string();
    }
    format!(
        "{day}, event {:?} from distinct_id hash {}",
        p.key.event, p.key.distinct_hash
    )
}

/// The smallest window a run aims at, in events, however slow PostHog is.
const MIN_TARGET: usize = 1_000;

/// What the reader has learned about PostHog and the data, shared by the windows in flight.
/// Pages ask for as many rows as allowed (a page's size costs no memory: answers are read as
/// they arrive); windows aim at a page of events, fewer when queries take long, since what a
/// window's query reads grows with its events.
struct Tuning {
    /// Rows asked for a page: `--page-size`, or a cap PostHog showed, within what
    /// `--max-response-size` allows.
    limit: usize,
    /// Events a window aims at.
    target: usize,
    /// The largest page PostHog returned.
    largest: usize,
    /// Bytes an event weighs in PostHog's answers (a moving average).
    row_bytes: f64,
}

impl Tuning {
    fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Tuning {
            limit: cap,
            target: cap,
            largest: 0,
            row_bytes: 0.0,
        }
    }

    /// A page of `rows` rows and `bytes` bytes began to come back after `took`, for a LIMIT of
    /// `asked`; answers may be at most `max_bytes` long.
    fn page_done(
        &mut self,
        rows: usize,
        bytes: u64,
        took: std::time::Duration,
        asked: usize,
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
        if self.row_bytes > 0.0 {
            let fits = (max_bytes as f64 / 2.0 / self.row_bytes) as usize;
            self.limit = self.limit.min(fits.max(1));
        }
        // What a window's query reads grows with its events: aim at TARGET_TIME. Pages with
        // fewer rows than the target say little about a full window.
        if rows * 2 >= asked.min(self.target) {
            if took > TARGET_TIME {
                let scaled = self.target as f64 * TARGET_TIME.as_secs_f64() / took.as_secs_f64();
                self.target = (scaled as usize).max(MIN_TARGET);
            } else if took < TARGET_TIME / 2 {
                self.target = self.target.saturating_mul(2);
            }
        }
        self.target = self.target.clamp(MIN_TARGET.min(self.limit), self.limit);
    }

    /// The events the next window aims at: a little under a page, since a window planned at
    /// exactly the LIMIT would come back full, and a full page proves nothing (one query
    /// more).
    fn window(&self) -> f64 {
        self.target as f64 * WINDOW_FILL
    }

    /// PostHog found a query too costly: later windows aim at half as many events.
    fn too_costly(&mut self) {
        self.target = (self.target / 2).max(MIN_TARGET.min(self.limit));
    }

    /// PostHog returned more after a page of `rows` rows shorter than asked: it caps pages
    /// there, and windows aim at no more.
    fn capped(&mut self, rows: usize) {
        self.limit = self.limit.min(rows.max(1));
        self.target = self.target.min(self.limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_place_shown_only_moves_forward() {
        let shown = Mutex::new(None);
        let moves: Vec<bool> = [3, 5, 4, 5, 9, 1]
            .iter()
            .map(|p| further(&shown, p))
            .collect();
        assert_eq!(moves, [true, true, false, true, true, false]);
        assert_eq!(*shown.lock().unwrap(), Some(9));
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn windows_aim_at_a_page_and_shrink_when_queries_take_long() {
        let ms = std::time::Duration::from_millis;
        let mut t = Tuning::new(50_000);
        assert_eq!((t.limit, t.target), (50_000, 50_000));
        assert_eq!(t.window(), 49_000.0, "a little under a page");
        t.page_done(50_000, 50_000 * 300, ms(8_000), 50_000, GIB);
        assert_eq!(t.target, 31_250, "in proportion to the time over 5 s");
        t.page_done(31_000, 31_000 * 300, ms(1_000), 50_000, GIB);
        assert_eq!(t.target, 50_000, "fast again: doubles, up to a page");
        t.too_costly();
        assert_eq!(t.target, 25_000);
        // Small pages say nothing about a window's cost.
        t.page_done(10, 3_000, ms(9_000), 50_000, GIB);
        assert_eq!(t.target, 25_000);
        // Heavy events and a small --max-response-size: pages within half of it.
        let mut t = Tuning::new(50_000);
        t.page_done(1_000, 1_000 * 3_000, ms(100), 50_000, 64 << 20);
        assert_eq!(t.limit, (32 << 20) / 3_000);
        assert!(t.target <= t.limit);
        // A page size below the floor stays where the user put it.
        assert_eq!(Tuning::new(400).target, 400);
    }

    #[test]
    fn a_page_shorter_than_asked_that_was_not_the_last_is_a_cap() {
        let ms = std::time::Duration::from_millis;
        let mut t = Tuning::new(50_000);
        t.page_done(10_000, 10_000 * 300, ms(100), 50_000, GIB);
        assert_eq!(t.limit, 50_000, "one short page proves nothing");
        t.capped(10_000);
        assert_eq!(t.limit, 10_000);
        assert!(t.target <= 10_000);
    }

    #[test]
    fn checkpoints_of_every_kind_say_where_to_start() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let start = t("2024-01-01T06:00:00Z");
        assert_eq!(
            start_of(None, start).unwrap(),
            Start {
                from: start,
                lo: Lower::At(Point::day_start(day_of(start))),
                tie: None,
                skip: None
            }
        );
        // An older checkpoint's (timestamp, uuid): its day from that time, with the tie.
        let old = Cursor::After {
            timestamp: t("2024-01-03T10:00:00Z"),
            uuid: "u".into(),
        };
        let s = start_of(Some(old), start).unwrap();
        assert_eq!(s.from, t("2024-01-03T10:00:00Z"));
        assert_eq!(s.lo, Lower::At(Point::day_start(day_of(s.from))));
        assert_eq!(s.tie.unwrap().uuid, "u");
        let within = Cursor::Within {
            page: Box::new(Cursor::Key {
                from: t("2024-01-04T00:00:00Z"),
                event: "e".into(),
                distinct_hash: u64::MAX,
                uuid_hash: 3,
                through: true,
                tie: None,
            }),
            rows: 7,
            digest: 9,
            timestamp: t("2024-01-04T05:00:00Z"),
        };
        let s = start_of(Some(within), start).unwrap();
        assert!(matches!(s.lo, Lower::After(p) if p.key.distinct_hash == u64::MAX));
        assert_eq!(s.skip.unwrap().rows, 7);
    }
}
