//! The rules every row of a Query API page must pass before anything moves past it: its
//! timestamp inside the stretch asked for, its sort key `(day, event, cityHash64(distinct_id),
//! cityHash64(uuid))` inside the window and after the row before (an equal key is the same
//! event, not merged yet), and not among an older checkpoint's tie; and the digest that chains
//! the keys of rows handed on, which a resumed run checks the page against.

use super::key::{Key, Lower, Point, Upper, day_of};
use crate::domain::cursor::Tie;
use crate::event::{format_ts, parse_ts};
use crate::posthog::repair::Properties;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::borrow::Cow;

/// ClickHouse's UUID order: the second 64-bit half first, then the first (not string order;
/// ../shared/posthog-api.md). Used only to check rows, never to sort them.
fn uuid_order(uuid: &str) -> Option<(u64, u64)> {
    let (mut v, mut digits) = (0u128, 0);
    for c in uuid.chars().filter(|c| *c != '-') {
        v = (v << 4) | u128::from(c.to_digit(16)?);
        digits += 1;
    }
    (digits == 32).then_some((v as u64, (v >> 64) as u64))
}

/// One row, in the order of `hogql::COLUMNS`, borrowed from the answer where it can be.
#[derive(Deserialize)]
pub(super) struct Row<'a>(
    #[serde(borrow)] pub(super) Cow<'a, str>,
    pub(super) Option<String>,
    pub(super) Option<String>,
    /// JSON text in a string, as PostHog sends it (or an object, as some servers do).
    #[serde(borrow)]
    pub(super) Option<Properties<'a>>,
    pub(super) Option<String>,
    #[serde(borrow)] pub(super) Cow<'a, str>,
    pub(super) Option<String>,
    /// `cityHash64(distinct_id)` and `cityHash64(uuid)`: unsigned 64-bit, as PostHog computed.
    pub(super) u64,
    pub(super) u64,
);

pub(super) enum RowCheck {
    /// Equal to the row before on the whole sort key: the same event, not merged yet.
    Duplicate(Point),
    Next {
        ts: DateTime<Utc>,
        point: Point,
    },
}

/// The error for a row that breaks the rules: exit 1, naming the row.
pub(super) fn fault(row: &Row<'_>, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "PostHog's Query API returned event {} at {} although {why}; stopping before it. Rows of this page before it may have been posted, but the checkpoint stays before the page. This is a fault of the server or of a proxy in front of it: running again re-reads from the checkpoint",
        row.0,
        row.5
    )
}

/// The digest of no rows.
pub(super) const DIGEST_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Chains a row's sort key to the digest of the rows before it (FNV-1a: fixed, so a digest
/// written by one build is understood by the next).
pub(super) fn chain(digest: u64, p: &Point) -> u64 {
    let k = &p.key;
    let bytes = p
        .day
        .to_le_bytes()
        .into_iter()
        .chain((k.event.len() as u64).to_le_bytes())
        .chain(k.event.bytes())
        .chain(k.distinct_hash.to_le_bytes())
        .chain(k.uuid_hash.to_le_bytes());
    bytes.fold(digest, |d, b| {
        (d ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The rules a page's rows must follow, row after row: `timestamp` in `[start, end)`, the sort
/// key inside `[lo, hi)`, after the row before, and not among an older checkpoint's tie.
pub(super) struct PageRules<'a> {
    pub(super) start: DateTime<Utc>,
    pub(super) end: DateTime<Utc>,
    pub(super) lo: &'a Lower,
    pub(super) hi: &'a Upper,
    pub(super) tie: Option<(DateTime<Utc>, (u64, u64))>,
    pub(super) last: Option<Point>,
}

impl PageRules<'_> {
    pub(super) fn check(&mut self, row: &Row<'_>) -> Result<RowCheck, String> {
        let ts = parse_ts(&row.5).map_err(|e| format!("{e:#}"))?;
        let uuid = uuid_order(&row.0).ok_or("its uuid is not a UUID")?;
        let point = Point {
            day: day_of(ts),
            key: Key {
                event: row.1.clone().unwrap_or_default(),
                distinct_hash: row.7,
                uuid_hash: row.8,
            },
        };
        if self.last.as_ref() == Some(&point) {
            return Ok(RowCheck::Duplicate(point));
        }
        if ts < self.start || ts >= self.end {
            return Err(format!(
                "it lies outside the requested window {} → {}",
                format_ts(&self.start),
                format_ts(&self.end)
            ));
        }
        if !self.lo.admits(&point) || !self.hi.admits(&point) {
            return Err(
                "it lies outside the requested window (its place in PostHog's sort key: day, event, cityHash64(distinct_id), cityHash64(uuid))".to_string(),
            );
        }
        if self.last.as_ref().is_some_and(|l| &point < l) {
            return Err(
                "it is not after the row before it in PostHog's sort key (a repeated or reordered page)".to_string(),
            );
        }
        if self.tie.is_some_and(|(t, u)| ts == t && uuid <= u) {
            return Err("an older checkpoint records it as delivered".to_string());
        }
        self.last = Some(point.clone());
        Ok(RowCheck::Next { ts, point })
    }
}

/// An older checkpoint's tie, in the order rows are checked in.
pub(super) fn tie_key(tie: &Tie) -> Option<(DateTime<Utc>, (u64, u64))> {
    uuid_order(&tie.uuid).map(|u| (tie.timestamp, u))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(uuid: &str, event: &str, ts: &str, x: u64, y: u64) -> String {
        format!(r#"["{uuid}","{event}","d","{{}}","","{ts}",null,{x},{y}]"#)
    }

    fn check_all(rules: &mut PageRules<'_>, rows: &[String]) -> Vec<Result<bool, String>> {
        rows.iter()
            .map(|r| {
                let row: Row<'_> = serde_json::from_str(r).unwrap();
                rules
                    .check(&row)
                    .map(|c| matches!(c, RowCheck::Duplicate(_)))
            })
            .collect()
    }

    #[test]
    fn rows_must_follow_the_sort_key_inside_their_stretch_and_equal_keys_are_one_event() {
        let t = |s: &str| parse_ts(s).unwrap();
        let day = day_of(t("2024-01-02T00:00:00Z"));
        let lo = Lower::After(Point {
            day,
            key: Key {
                event: "b".into(),
                distinct_hash: 10,
                uuid_hash: 10,
            },
        });
        let hi = Upper::Before(Point {
            day,
            key: Key {
                event: "c".into(),
                distinct_hash: 0,
                uuid_hash: 0,
            },
        });
        let new = || PageRules {
            start: t("2024-01-02T00:00:00Z"),
            end: t("2024-01-03T00:00:00Z"),
            lo: &lo,
            hi: &hi,
            tie: None,
            last: None,
        };
        let u1 = "00000000-0000-0000-0000-000000000001";
        let u2 = "00000000-0000-0000-0000-000000000002";
        let ok = [
            row(u1, "b", "2024-01-02T23:00:00Z", 10, 11),
            row(u1, "b", "2024-01-02T23:00:00Z", 10, 11),
            // Time order does not matter inside a day.
            row(u2, "b", "2024-01-02T01:00:00Z", u64::MAX, 0),
        ];
        assert_eq!(check_all(&mut new(), &ok), [Ok(false), Ok(true), Ok(false)]);
        let faults = [
            // At the cursor itself, past the upper bound, on another day, out of order.
            row(u1, "b", "2024-01-02T01:00:00Z", 10, 10),
            row(u1, "c", "2024-01-02T01:00:00Z", 0, 0),
            row(u1, "b", "2024-01-03T00:00:00Z", 11, 0),
        ];
        for f in &faults {
            assert!(
                check_all(&mut new(), std::slice::from_ref(f))[0].is_err(),
                "{f}"
            );
        }
        let reordered = [
            row(u1, "b", "2024-01-02T01:00:00Z", 12, 0),
            row(u2, "b", "2024-01-02T01:00:00Z", 11, 0),
        ];
        assert!(check_all(&mut new(), &reordered)[1].is_err());
    }

    #[test]
    fn the_digest_follows_the_whole_key() {
        let p = |event: &str, x| Point {
            day: 1,
            key: Key {
                event: event.into(),
                distinct_hash: x,
                uuid_hash: 0,
            },
        };
        let a = chain(chain(DIGEST_START, &p("a", 1)), &p("a", 2));
        let b = chain(chain(DIGEST_START, &p("a", 2)), &p("a", 1));
        assert_ne!(a, b);
        assert_ne!(
            chain(DIGEST_START, &p("ab", 1)),
            chain(DIGEST_START, &p("a", 1))
        );
    }
}
