//! The plan: how many events each UTC day, event name and range of `cityHash64(distinct_id)`
//! holds, counted by PostHog over the key columns only (about 20 times fewer bytes than the
//! rows), a span of days at a time; and windows cut from it, each about a page of events, in
//! storage order. Windows cover the order without a gap, whatever the counts say: the counts
//! only place the cuts, and a window is read until PostHog's answer ends it.

use super::key::{Key, Lower, Point, Upper, between, day_of, day_start, event_end};
use super::read::Read;
use crate::error::Stop;
use crate::net::retry::GaveUp;
use crate::posthog::error::ApiError;
use crate::posthog::hogql::{self, BUCKET_BITS};
use crate::posthog::rows::{Broken, Rows, Step};
use anyhow::bail;
use serde::Deserialize;
use std::collections::VecDeque;

/// A window this close to full ends before the next group rather than inside it.
const NEARLY_FULL: f64 = 0.1;

/// Days a plan query covers at first; later ones grow or shrink with the time it took.
const FIRST_DAYS: i64 = 16;
/// Days a plan query covers at most (a year of counts is still a cheap read of key columns).
const MOST_DAYS: i64 = 366;
/// How long a plan query may take before the next covers fewer days.
const PLAN_TIME: std::time::Duration = std::time::Duration::from_secs(3);

/// A stretch of the order the plan counted events in: one day and event, and a range of
/// `cityHash64(distinct_id)` (all of it, for a plan by names).
#[derive(Clone, Debug)]
pub(super) struct Group {
    pub(super) lo: Lower,
    pub(super) hi: Upper,
    /// Events counted, or an estimate once a window cut the group by hash (`counted` false).
    pub(super) rows: f64,
    pub(super) counted: bool,
    /// Whether its event name came back byte for byte (only such names bound a window).
    pub(super) named: bool,
}

/// A stretch of the order read by one task: `[lo, hi)`, about a page of events.
#[derive(Debug)]
pub(super) struct Window {
    pub(super) lo: Lower,
    pub(super) hi: Upper,
    /// Events the plan counted in it; an estimate unless `counted` (no group in it was cut
    /// by the share of its hashes).
    pub(super) planned: f64,
    pub(super) counted: bool,
    /// No planned group lies in it: the counts found nothing there.
    pub(super) empty: bool,
    /// Where planned groups begin inside the window, with the events planned before them:
    /// the places to cut it when PostHog finds it too costly.
    pub(super) marks: Vec<(Point, f64)>,
}

impl Window {
    /// Where to end the first half of `[lo, hi)` (a part of this window), or `None` when it
    /// holds a single key: at the planned group start nearest its middle; else halfway
    /// through the hashes of `lo`'s event; else after `lo`'s event.
    pub(super) fn split(&self, lo: &Lower, hi: &Upper) -> Option<Upper> {
        let planned_before = |p: &Point| {
            self.marks
                .iter()
                .take_while(|(m, _)| m <= p)
                .last()
                .map_or(0.0, |(_, before)| *before)
        };
        let middle =
            (planned_before(lo.point()) + hi.point().map_or(self.planned, planned_before)) / 2.0;
        let best = self
            .marks
            .iter()
            .filter(|(m, _)| lo.admits(m) && lo.point() != m && hi.admits(m))
            .min_by(|a, b| (a.1 - middle).abs().total_cmp(&(b.1 - middle).abs()));
        if let Some((m, _)) = best {
            return Some(Upper::Before(m.clone()));
        }
        let from = lo.point();
        let end = event_end(from.day, &from.key.event);
        if !hi.admits(&end) {
            // The part ends inside `lo`'s event: halve its hashes.
            return between(lo, hi, 0.5).map(Upper::Before);
        }
        if from.key.is_min() || !lo.admits(&end) {
            // Nothing planned lies inside: no place known to cut.
            return None;
        }
        // First the rest of `lo`'s event, in halves while it holds more than one key.
        let event_rest = Upper::Through(end);
        if let Some(mid) = between(lo, &event_rest, 0.5) {
            return Some(Upper::Before(mid));
        }
        (event_rest != *hi).then_some(event_rest)
    }
}

/// One row of a plan answer: day, event, hash bucket, events, events of every group.
#[derive(Deserialize)]
struct Counted(i64, String, u64, u64, u64);

/// One row of a plan by names: day, event, events, events of every group.
#[derive(Deserialize)]
struct Named(i64, String, u64, u64);

/// Cuts windows from the plan, planning further ahead as they are taken.
pub(super) struct Planner {
    /// Where the next window begins; `None` once the range is covered.
    next: Option<Lower>,
    /// Where planning goes on; `None` once the plan reaches the range's end.
    plan_from: Option<Lower>,
    groups: VecDeque<Group>,
    days: i64,
    /// Days a plan query covers at most: half of a span PostHog found too costly.
    most_days: i64,
    /// The next plan counts by names only (a plan with buckets was too costly for one day).
    names_only: bool,
    /// Every plan counts by names only (`sync`: see `Reader::plan_by_name`).
    by_name: bool,
    /// What the counts found empty before a window's first group is a window of its own, to
    /// be skipped (`sync`: see `Reader::skip_empty`), rather than read with the group.
    skip_empty: bool,
}

impl Planner {
    pub(super) fn new(lo: Lower, by_name: bool, skip_empty: bool) -> Self {
        Planner {
            next: Some(lo.clone()),
            plan_from: Some(lo),
            groups: VecDeque::new(),
            days: FIRST_DAYS,
            most_days: MOST_DAYS,
            names_only: by_name,
            by_name,
            skip_empty,
        }
    }

    /// The next window, of about `target` events, or `None` once the range is covered.
    pub(super) async fn next_window(
        &mut self,
        read: &Read,
        target: f64,
    ) -> anyhow::Result<Option<Window>> {
        let Some(lo) = self.next.clone() else {
            return Ok(None);
        };
        if self.skip_empty {
            while self.groups.is_empty() && self.plan_from.is_some() {
                self.plan_more(read, target).await?;
            }
            // (Only a name that came back byte for byte bounds the stretch skipped.)
            let first = self
                .groups
                .front()
                .filter(|g| g.named)
                .map(|g| g.lo.point().clone());
            if let Some(first) = first.filter(|p| lo.admits(p) && lo.point() != p) {
                let hi = Upper::Before(first);
                self.next = hi.next();
                return Ok(Some(Window {
                    lo,
                    hi,
                    planned: 0.0,
                    counted: true,
                    empty: true,
                    marks: Vec::new(),
                }));
            }
        }
        let (mut planned, mut counted, mut empty) = (0.0, true, true);
        let mut marks = Vec::new();
        let hi = loop {
            let Some(group) = self.groups.front_mut() else {
                if self.plan_from.is_none() {
                    break Upper::End;
                }
                self.plan_more(read, target).await?;
                continue;
            };
            let room = target - planned;
            if group.named && lo.admits(group.lo.point()) && lo.point() != group.lo.point() {
                marks.push((group.lo.point().clone(), planned));
            }
            if group.rows <= room || !group.named {
                // Whole (a name that is not byte for byte cannot bound a window).
                planned += group.rows;
                counted &= group.counted;
                empty = false;
                self.groups.pop_front();
                continue;
            }
            // Cut the group where the window is full, by the share of its hash space (hashes
            // spread events evenly), unless the window is nearly full already: it then ends
            // before the group, and holds exactly the events it was counted to hold (a page
            // that holds them all is then known to be the last, with no query more).
            let cut = between(&group.lo, &group.hi, room / group.rows)
                .filter(|c| lo.admits(c) && lo.point() != c)
                .filter(|_| planned == 0.0 || room >= target * NEARLY_FULL);
            match cut {
                Some(c) if room >= 1.0 => {
                    planned += room;
                    (counted, empty) = (false, false);
                    group.rows -= room;
                    group.counted = false;
                    group.lo = Lower::At(c.clone());
                    break Upper::Before(c);
                }
                _ if planned > 0.0 => {
                    marks.pop_if(|(m, _)| m == group.lo.point());
                    break Upper::Before(group.lo.point().clone());
                }
                _ => {
                    // A group of one key, or a room too small to cut: take it whole.
                    planned += group.rows;
                    counted &= group.counted;
                    empty = false;
                    self.groups.pop_front();
                }
            }
        };
        self.next = hi.next();
        Ok(Some(Window {
            lo,
            hi,
            planned,
            counted,
            empty,
            marks,
        }))
    }

    /// Counts the next span of days (fewer when PostHog finds it too costly), adding its
    /// groups. An answer whose rows do not add up to the total they carry was cut: its last day and event are
    /// counted again by the next plan query.
    async fn plan_more(&mut self, read: &Read, target: f64) -> anyhow::Result<()> {
        let Some(from) = self.plan_from.clone() else {
            return Ok(());
        };
        let last_day = day_of(read.range_end() - chrono::Duration::microseconds(1));
        loop {
            let until = from.point().day.saturating_add(self.days);
            let hi = if until > last_day {
                Upper::End
            } else {
                Upper::Before(Point::day_start(until))
            };
            let buckets = !self.names_only;
            let body = hogql::plan(&read.stretch(&from, &hi), &read.scope(), buckets);
            let started = std::time::Instant::now();
            let answer = match read.client().post_page("query/", &body).await {
                Ok(answer) => answer,
                Err(GaveUp::Fatal(ApiError::TooSlow { status })) => {
                    let span = until - from.point().day;
                    if self.days > 1 && span > 1 {
                        self.most_days = (span / 2).max(1);
                        self.days = self.most_days;
                    } else if buckets {
                        self.names_only = true;
                    } else {
                        return Err(Stop::Temporary(format!(
                            "PostHog cannot count the events of {} within its limits (HTTP {status}), even by event name alone; try again later",
                            day_start(from.point().day).format("%Y-%m-%d")
                        ))
                        .into());
                    }
                    tracing::debug!(
                        "PostHog found a plan too costly (HTTP {status}); counting {} at a time{}",
                        crate::progress::count(self.days as u64, "day", "days"),
                        if self.names_only {
                            ", by event name"
                        } else {
                            ""
                        }
                    );
                    continue;
                }
                Err(e) => return Err(e.into_error("planning the reads with PostHog's Query API")),
            };
            let took = started.elapsed();
            let (groups, whole) = parse(&answer, buckets, &from, &hi, last_day)?;
            let groups_len = groups.len();
            tracing::debug!(
                "planned {} from {}: {} groups in {}",
                crate::progress::count(self.days as u64, "day", "days"),
                day_start(from.point().day).format("%Y-%m-%d"),
                groups.len(),
                crate::progress::human_duration(took)
            );
            let (groups, rest) = if !whole {
                match cut_answer(groups) {
                    Some((groups, next)) => (groups, Some(next)),
                    // Not even one day and event whole: fewer rows, by name only.
                    None if buckets => {
                        self.names_only = true;
                        continue;
                    }
                    None => bail!(
                        "PostHog cuts its answers to plan queries within one day and event name, even counting by name alone ({} rows came back); this is a fault of the server or of a proxy in front of it",
                        groups_len
                    ),
                }
            } else {
                (groups, hi.next())
            };
            read.add_planned(groups.iter().map(|g| g.rows).sum(), rest.is_none());
            let groups = if buckets {
                refine(read, groups, target).await?
            } else {
                groups
            };
            self.groups.extend(groups);
            self.plan_from = rest;
            self.names_only = self.by_name;
            // Cost grows with the days counted: aim at PLAN_TIME.
            let speed = PLAN_TIME.as_secs_f64() / took.as_secs_f64().max(0.05);
            self.days =
                ((self.days as f64 * speed.clamp(0.5, 8.0)) as i64).clamp(1, self.most_days);
            return Ok(());
        }
    }
}

/// Groups of a plan that hold far more than their share of their day and event (a bucket
/// holding more than a window and 8 times its share: one busy user, most likely) are counted
/// again by `cityHash64(distinct_id)`, so that windows can be cut at users, and inside one
/// busy user's events by `cityHash64(uuid)`. A count that does not come back whole leaves the
/// group as it was (windows are then cut by the share of its hashes, and split when PostHog
/// finds one too costly).
async fn refine(read: &Read, groups: Vec<Group>, target: f64) -> anyhow::Result<Vec<Group>> {
    let mut totals: std::collections::HashMap<(i64, &str), f64> = Default::default();
    for g in &groups {
        let p = g.lo.point();
        *totals.entry((p.day, p.key.event.as_str())).or_default() += g.rows;
    }
    let share = 8.0 / f64::from(1u32 << BUCKET_BITS);
    let skewed: Vec<bool> = groups
        .iter()
        .map(|g| {
            let p = g.lo.point();
            g.named && g.rows > target && g.rows > share * totals[&(p.day, p.key.event.as_str())]
        })
        .collect();
    let mut out = Vec::with_capacity(groups.len());
    for (g, skewed) in groups.into_iter().zip(skewed) {
        if !skewed {
            out.push(g);
            continue;
        }
        let body = hogql::users(&read.stretch(&g.lo, &g.hi), &read.scope());
        let answer = match read.client().post_page("query/", &body).await {
            Ok(answer) => answer,
            Err(GaveUp::Fatal(ApiError::TooSlow { .. })) => {
                out.push(g);
                continue;
            }
            Err(e) => return Err(e.into_error("planning the reads with PostHog's Query API")),
        };
        match users_of(&answer, &g) {
            Some(users) => out.extend(users),
            None => out.push(g),
        }
    }
    Ok(out)
}

/// One row of a count by user: `cityHash64(distinct_id)`, events, events of every user.
#[derive(Deserialize)]
struct User(u64, u64, u64);

/// The groups of a count by user of `group`, one per `distinct_id` hash, if the answer is whole
/// and in order inside the group; `None` otherwise.
fn users_of(answer: &[u8], group: &Group) -> Option<Vec<Group>> {
    let mut rows = Rows::new();
    rows.feed(answer);
    rows.end();
    let mut out: Vec<Group> = Vec::new();
    let (mut sum, mut total, mut previous) = (0u64, None, None);
    let at = group.lo.point();
    loop {
        let row = match rows.next::<User>() {
            Ok(Step::Row { row, .. }) => row,
            Ok(Step::Done) => break,
            _ => return None,
        };
        let User(hash, n, all) = row;
        sum = sum.saturating_add(n);
        let start = Point {
            day: at.day,
            key: Key {
                event: at.key.event.clone(),
                distinct_hash: hash,
                uuid_hash: 0,
            },
        };
        let hi = match hash.checked_add(1) {
            Some(next) => Upper::Before(Point {
                day: at.day,
                key: Key {
                    event: at.key.event.clone(),
                    distinct_hash: next,
                    uuid_hash: 0,
                },
            }),
            None => Upper::Through(event_end(at.day, &at.key.event)),
        };
        let last = Point {
            day: at.day,
            key: Key {
                event: at.key.event.clone(),
                distinct_hash: hash,
                uuid_hash: u64::MAX,
            },
        };
        if n == 0
            || *total.get_or_insert(all) != all
            || previous.is_some_and(|p| p >= hash)
            || !group.hi.admits(&start)
            || !group.lo.admits(&last)
        {
            return None;
        }
        previous = Some(hash);
        out.push(Group {
            lo: if group.lo.admits(&start) {
                Lower::At(start)
            } else {
                group.lo.clone()
            },
            hi,
            rows: n as f64,
            counted: true,
            named: group.named,
        });
    }
    (total.is_none_or(|t| t == sum) && !out.is_empty()).then_some(out)
}

/// The groups of a plan answer, checked: in storage order, inside the stretch asked for,
/// each with events; and whether the answer holds every group (its rows add up to the total
/// each of them carries). Nothing a server sends moves a bound unchecked.
fn parse(
    answer: &[u8],
    buckets: bool,
    from: &Lower,
    hi: &Upper,
    last_day: i64,
) -> anyhow::Result<(Vec<Group>, bool)> {
    let garbled = |why: String| {
        anyhow::anyhow!(
            "PostHog's answer to a plan query is not what was asked for ({why}); this is a fault of the server or of a proxy in front of it"
        )
    };
    let mut rows = Rows::new();
    rows.feed(answer);
    rows.end();
    let mut out: Vec<Group> = Vec::new();
    let mut previous: Option<(i64, String, u64)> = None;
    let (mut sum, mut total) = (0u64, None);
    let width = 1u128 << (64 - BUCKET_BITS);
    loop {
        let (day, event, bucket, n, all, repaired) = if buckets {
            match rows.next::<Counted>() {
                Ok(Step::Row { row, repaired }) => {
                    (row.0, row.1, Some(row.2), row.3, row.4, repaired)
                }
                Ok(Step::Done) => break,
                Ok(Step::More | Step::Oversized { .. }) | Err(Broken::Garbled(_)) => {
                    return Err(garbled("cut short or not JSON".into()));
                }
                Err(Broken::Unexpected(e)) => return Err(garbled(e)),
            }
        } else {
            match rows.next::<Named>() {
                Ok(Step::Row { row, repaired }) => (row.0, row.1, None, row.2, row.3, repaired),
                Ok(Step::Done) => break,
                Ok(Step::More | Step::Oversized { .. }) | Err(Broken::Garbled(_)) => {
                    return Err(garbled("cut short or not JSON".into()));
                }
                Err(Broken::Unexpected(e)) => return Err(garbled(e)),
            }
        };
        if bucket.is_some_and(|b| u128::from(b) >= 1 << BUCKET_BITS) || n == 0 {
            return Err(garbled(format!("a bucket {bucket:?} with {n} events")));
        }
        sum = sum.saturating_add(n);
        if *total.get_or_insert(all) != all || sum > all {
            return Err(garbled(format!(
                "rows that add up to more than their total {all}"
            )));
        }
        let lo_hash = bucket.map_or(0, |b| (u128::from(b) * width) as u64);
        let start = Point {
            day,
            key: Key {
                event: event.clone(),
                distinct_hash: lo_hash,
                uuid_hash: 0,
            },
        };
        let end = match bucket {
            Some(b) if u128::from(b) + 1 < 1 << BUCKET_BITS => Upper::Before(Point {
                day,
                key: Key {
                    event: event.clone(),
                    distinct_hash: ((u128::from(b) + 1) * width) as u64,
                    uuid_hash: 0,
                },
            }),
            _ => Upper::Through(event_end(day, &event)),
        };
        // The group must lie inside what was asked (the first may begin before `from`: its
        // events were counted from `from` on) and after the one before.
        let order = (day, event.clone(), bucket.unwrap_or(0));
        let in_order = previous.as_ref().is_none_or(|p| *p < order);
        previous = Some(order);
        let last = match &end {
            Upper::Before(p) => Point {
                day,
                key: Key {
                    event: event.clone(),
                    distinct_hash: p.key.distinct_hash - 1,
                    uuid_hash: u64::MAX,
                },
            },
            _ => event_end(day, &event),
        };
        if day > last_day || !hi.admits(&start) || !from.admits(&last) || !in_order {
            return Err(garbled(format!(
                "a count for day {} and event {event:?} out of place",
                day_start(day).format("%Y-%m-%d")
            )));
        }
        let lo = if from.admits(&start) {
            Lower::At(start)
        } else {
            from.clone()
        };
        out.push(Group {
            lo,
            hi: end,
            rows: n as f64,
            counted: true,
            named: !(repaired && event.contains('\u{FFFD}')),
        });
    }
    let whole = total.is_none_or(|t| sum == t);
    Ok((out, whole))
}

/// A plan answer that was cut (by its LIMIT of [`hogql::PLAN_LIMIT`] rows, a cap or a proxy): keeps
/// the groups before its last day and event (which may be incomplete) and says where the next
/// plan query begins; `None` when that leaves nothing. That event's name bounds the next
/// query, so it must have come back byte for byte.
fn cut_answer(mut groups: Vec<Group>) -> Option<(Vec<Group>, Lower)> {
    let pair = |g: &Group| (g.lo.point().day, g.lo.point().key.event.clone());
    let (day, event) = groups.iter().rev().find(|g| g.named).map(pair)?;
    let first = groups
        .iter()
        .position(|g| pair(g) == (day, event.clone()))
        .filter(|i| *i > 0)?;
    groups.truncate(first);
    // Not `from`'s own day and event: that is the first group's, and groups before it stay.
    let next = Lower::At(Point {
        day,
        key: Key {
            event,
            distinct_hash: 0,
            uuid_hash: 0,
        },
    });
    Some((groups, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(day: i64, event: &str, x: u64) -> Point {
        Point {
            day,
            key: Key {
                event: event.into(),
                distinct_hash: x,
                uuid_hash: 0,
            },
        }
    }

    /// What the test answers say every group holds.
    const TOTAL: u64 = 13;

    fn answer(rows: &[(i64, &str, u64, u64)]) -> Vec<u8> {
        let rows: Vec<String> = rows
            .iter()
            .map(|(d, e, b, n)| format!("[{d},{e:?},{b},{n},{TOTAL}]"))
            .collect();
        format!(
            r#"{{"results":[{}],"columns":["utc_day","event","hash_bucket","n","total"]}}"#,
            rows.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn plan_answers_become_groups_covering_their_buckets() {
        let from = Lower::At(Point::day_start(10));
        let (groups, whole) = parse(
            &answer(&[(10, "a", 0, 5), (10, "a", 63, 7), (11, "b", 32, 1)]),
            true,
            &from,
            &Upper::End,
            20,
        )
        .unwrap();
        assert!(whole, "5 + 7 + 1 = 13");
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0].lo, Lower::At(p(10, "a", 0)));
        assert_eq!(groups[0].hi, Upper::Before(p(10, "a", 1 << 58)));
        assert_eq!(groups[1].lo, Lower::At(p(10, "a", 63 << 58)));
        assert_eq!(
            groups[1].hi,
            Upper::Through(event_end(10, "a")),
            "the last bucket reaches 2^64 - 1"
        );
        assert_eq!(groups[2].lo, Lower::At(p(11, "b", 1 << 63)));
    }

    #[test]
    fn plan_answers_out_of_order_or_outside_what_was_asked_are_refused() {
        let from = Lower::After(p(10, "m", 5));
        for bad in [
            answer(&[(10, "b", 0, 5), (10, "a", 0, 5)]),
            answer(&[(10, "a", 0, 5)]),
            answer(&[(21, "a", 0, 5)]),
            answer(&[(10, "n", 0, 0)]),
            answer(&[(10, "n", 64, 1)]),
            answer(&[(10, "n", 3, 1), (10, "n", 3, 1)]),
        ] {
            assert!(
                parse(&bad, true, &from, &Upper::End, 20).is_err(),
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
        // The cursor's own bucket: counted from the cursor on.
        let (groups, whole) = parse(
            &answer(&[(10, "m", 0, 5), (10, "z", 0, 1)]),
            true,
            &from,
            &Upper::End,
            20,
        )
        .unwrap();
        assert_eq!(groups[0].lo, from);
        assert!(!whole, "6 of 13: the answer was cut");
        assert!(
            parse(&answer(&[(10, "m", 0, 14)]), true, &from, &Upper::End, 20).is_err(),
            "more than the total"
        );
        let before = Upper::Before(Point::day_start(11));
        assert!(parse(&answer(&[(11, "a", 0, 1)]), true, &from, &before, 20).is_err());
    }

    #[test]
    fn an_answer_cut_at_the_limit_is_planned_again_from_its_last_day_and_event() {
        let g = |day, event: &str, x| Group {
            lo: Lower::At(p(day, event, x)),
            hi: Upper::Through(event_end(day, event)),
            rows: 1.0,
            counted: true,
            named: true,
        };
        let (kept, next) = cut_answer(vec![g(1, "a", 0), g(1, "b", 0), g(1, "b", 9)]).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(next, Lower::At(p(1, "b", 0)));
        let no_progress = cut_answer(vec![g(1, "b", 0), g(1, "b", 9)]);
        assert!(no_progress.is_none());
        // A last name that did not come back byte for byte: back to the one before.
        let mut bad = g(1, "c\u{FFFD}", 0);
        bad.named = false;
        let (kept, next) = cut_answer(vec![g(1, "a", 0), g(1, "b", 0), bad]).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(next, Lower::At(p(1, "b", 0)));
    }

    #[test]
    fn a_bucket_counted_by_user_becomes_a_group_per_user_inside_it() {
        let group = Group {
            lo: Lower::After(p(3, "e", 100)),
            hi: Upper::Before(p(3, "e", 1 << 58)),
            rows: 12.0,
            counted: true,
            named: true,
        };
        let answer = |rows: &str| format!(r#"{{"results":[{rows}]}}"#).into_bytes();
        let users = users_of(&answer("[100,2,12],[7000,10,12]"), &group).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(
            users[0].lo, group.lo,
            "the cursor's own user: from the cursor on"
        );
        assert_eq!(users[1].lo, Lower::At(p(3, "e", 7000)));
        assert_eq!(users[1].hi, Upper::Before(p(3, "e", 7001)));
        assert_eq!(users[1].rows, 10.0);
        // Cut, out of order, outside the bucket or before the cursor: not used.
        for bad in [
            "[7000,10,13]",
            "[7000,2,12],[100,10,12]",
            "[99,12,12]",
            "[288230376151711744,12,12]",
        ] {
            assert!(users_of(&answer(bad), &group).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_window_splits_at_group_starts_then_by_hash_then_after_its_event() {
        let w = Window {
            lo: Lower::At(p(1, "a", 0)),
            hi: Upper::Before(p(1, "c", 0)),
            planned: 30.0,
            counted: true,
            empty: false,
            marks: vec![(p(1, "a", 1 << 63), 10.0), (p(1, "b", 0), 20.0)],
        };
        let before = |p| Some(Upper::Before(p));
        assert_eq!(w.split(&w.lo, &w.hi), before(p(1, "a", 1 << 63)));
        let rest = Lower::At(p(1, "a", 1 << 63));
        assert_eq!(w.split(&rest, &w.hi), before(p(1, "b", 0)));
        // Inside b: by hash, the upper bound of the window's part kept.
        let b = Lower::At(p(1, "b", 0));
        assert_eq!(w.split(&b, &w.hi), before(p(1, "b", 1 << 63)));
        // The last key of an event, with more after it: that key alone.
        let last = Lower::At(event_end(1, "b"));
        assert_eq!(
            w.split(&last, &w.hi),
            Some(Upper::Through(event_end(1, "b")))
        );
        assert_eq!(w.split(&last, &Upper::Through(event_end(1, "b"))), None);
        // After the end of an event, with nothing planned up to the window's end: no cut.
        assert_eq!(w.split(&Lower::After(event_end(1, "b")), &w.hi), None);
        assert_eq!(
            w.split(
                &Lower::At(Point::day_start(1)),
                &Upper::Before(p(1, "a", 0))
            ),
            None
        );
    }
}
