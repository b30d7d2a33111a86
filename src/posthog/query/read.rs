//! What every window of a Query API read shares: the reader, where the read started, the
//! place shown, and what it has learned about PostHog and the data (`Tuning`).

use super::key::{self, Lower, Upper, day_of, day_start};
use crate::domain::Cursor;
use crate::domain::cursor::Tie;
use crate::pipeline::ledger::Stats;
use crate::posthog::client::PostHog;
use crate::posthog::hogql::{Ingested, Scope, Stretch};
use crate::posthog::source::Reader;
use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};

/// The share of a page a window aims at: counts are exact, but a window cut inside a group
/// holds about, not exactly, what the hashes' share says.
const WINDOW_FILL: f64 = 0.98;

/// How long a query may take before windows get smaller: well inside PostHog's 10 s limit,
/// which a query over a window's key range approaches in proportion to its events.
const TARGET_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// What every window of a read shares: where it started, its bounds, what it has learned.
pub(crate) struct Read {
    pub(super) reader: Arc<Reader>,
    /// Where the first day is read from: the range's start, or a checkpoint's.
    pub(super) start: DateTime<Utc>,
    /// An older checkpoint's place among events sharing one microsecond.
    pub(super) tie: Option<Tie>,
    pub(super) team: serde_json::Value,
    pub(super) tuning: Mutex<Tuning>,
    pub(super) warned: Mutex<std::collections::HashSet<&'static str>>,
    /// The furthest place shown as being read: windows read at once start out of order, and
    /// what is shown only moves forward.
    pub(super) shown: Mutex<Option<key::Point>>,
}

impl Read {
    pub(super) fn client(&self) -> &PostHog {
        &self.reader.client
    }

    pub(super) fn tie(&self) -> Option<&Tie> {
        self.tie.as_ref()
    }

    pub(super) fn ingested(&self) -> Option<Ingested> {
        self.reader.ingested
    }

    pub(super) fn team(&self) -> &serde_json::Value {
        &self.team
    }

    pub(super) fn range_end(&self) -> DateTime<Utc> {
        self.reader.range.end
    }

    pub(super) fn scope(&self) -> Scope<'_> {
        Scope {
            filters: &self.reader.filters,
            ingested: self.reader.ingested,
            tie: self.tie.as_ref(),
        }
    }

    pub(super) fn stretch<'a>(&self, lo: &'a Lower, hi: &'a Upper) -> Stretch<'a> {
        Stretch {
            start: self.start,
            end: self.reader.range.end,
            lo,
            hi,
        }
    }

    /// Warns once per run, whichever window meets it first.
    pub(super) fn warn_once(&self, msg: &'static str) {
        if self
            .warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(msg)
        {
            tracing::warn!("{}", msg);
        }
    }

    /// Counts the plan's events, for the progress shown (`complete`: up to the range's end).
    pub(super) fn add_planned(&self, events: f64, complete: bool) {
        let stats = &self.client().progress().stats;
        Stats::add(&stats.planned, events.round() as u64);
        if complete {
            stats
                .planned_complete
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Where the events of `day` begin to be read.
    pub(super) fn day_from(&self, day: i64) -> DateTime<Utc> {
        if day == day_of(self.start) {
            self.start
        } else {
            day_start(day)
        }
    }

    /// The checkpoint position of "everything before `lo` is done".
    pub(super) fn position(&self, lo: &Lower) -> Cursor {
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
    pub(super) fn position_after(&self, hi: &Upper) -> Cursor {
        match hi.next() {
            Some(lo) => self.position(&lo),
            None => Cursor::Before {
                timestamp: self.reader.range.end,
            },
        }
    }

    /// Windows read at once: `--fetch-concurrency`, one fewer for each time PostHog refused a
    /// query for its cap on queries running at once.
    pub(super) fn concurrency(&self) -> usize {
        let refused = self.client().concurrency_refusals();
        self.reader
            .fetch_concurrency
            .saturating_sub(refused as usize)
            .max(1)
    }
}

impl Read {
    /// Shows `lo` as the place being read, if it is further than what is shown.
    pub(super) fn show(&self, lo: &Lower) {
        if further(&self.shown, lo.point()) {
            self.client()
                .progress()
                .set_status(format!("reading {}", describe(lo)));
        }
    }

    pub(super) fn tuning(&self) -> std::sync::MutexGuard<'_, Tuning> {
        self.tuning.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `p` is at least as far as what `shown` holds; if so it is held from now on.
fn further<T: Ord + Clone>(shown: &Mutex<Option<T>>, p: &T) -> bool {
    let mut shown = shown.lock().unwrap_or_else(|e| e.into_inner());
    if shown.as_ref().is_some_and(|s| s > p) {
        return false;
    }
    *shown = Some(p.clone());
    true
}

/// A place in the order, for status lines and messages.
pub(super) fn describe(lo: &Lower) -> String {
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
pub(super) struct Tuning {
    /// Rows asked for a page: `--page-size`, or a cap PostHog showed, within what
    /// `--max-response-size` allows.
    pub(super) limit: usize,
    /// Events a window aims at.
    pub(super) target: usize,
    /// The largest page PostHog returned.
    pub(super) largest: usize,
    /// Bytes an event weighs in PostHog's answers (a moving average).
    pub(super) row_bytes: f64,
}

impl Tuning {
    pub(super) fn new(cap: usize) -> Self {
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
    pub(super) fn page_done(
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
    pub(super) fn window(&self) -> f64 {
        self.target as f64 * WINDOW_FILL
    }

    /// PostHog found a query too costly: later windows aim at half as many events.
    pub(super) fn too_costly(&mut self) {
        self.target = (self.target / 2).max(MIN_TARGET.min(self.limit));
    }

    /// PostHog returned more after a page of `rows` rows shorter than asked: it caps pages
    /// there, and windows aim at no more.
    pub(super) fn capped(&mut self, rows: usize) {
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
}
