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
mod read;
mod rules;

use crate::domain::Cursor;
use crate::domain::cursor::Tie;
use crate::error::Stop;
use crate::net::retry::{self, Tries, Why};
use crate::pipeline::Item;
use crate::posthog::source::Reader;
use anyhow::bail;
use chrono::{DateTime, Utc};
use key::{Key, Lower, Point, day_of};
use page::{PageEnd, Skip};
use plan::{Planner, Window};
use read::{Read, Tuning, describe};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Queries in a row PostHog may find too costly, each for half of what the one before asked,
/// before the run stops: a factor of 2^24 below a window, far past what a query's cost can
/// owe to its size (each one lost to PostHog's limit costs 10 s).
const MAX_SPLITS: u32 = 24;

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
        let mut splits = 0u32;
        let mut tries = Tries::new(self.client().retry_policy());
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
                        tracing::debug!(
                            "PostHog found a query too costly (HTTP {status}); reading {} in smaller parts",
                            describe(&lo)
                        );
                        hi = first_half;
                        left = None;
                        continue;
                    }
                    // Nothing smaller to ask (a single key, or no planned place to cut). PostHog
                    // may be busy: a few tries.
                    let what = format!("PostHog query too costly (HTTP {status})");
                    let (_, wait) = tries.next(Why::Expected, &what, None).map_err(|_| {
                        Stop::Temporary(format!(
                            "PostHog finds even the smallest query this reader can ask for too costly (HTTP {status}): {}; try again later",
                            describe(&lo)
                        ))
                    })?;
                    let message = format!("reading from PostHog's Query API: {what}");
                    retry::pause(&progress, Why::Expected, &message, wait).await;
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
            tries.moved_on();
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

#[cfg(test)]
mod tests {
    use super::*;

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
