//! Points and ranges of PostHog's sort key, `(toDate(timestamp), event,
//! cityHash64(distinct_id), cityHash64(uuid))` (../shared/posthog-api.md, "What a query costs
//! PostHog"): what windows, cursors and checkpoints of the Query reader are made of. Days are
//! UTC days counted from 1970-01-01; hashes are PostHog's, never computed here.

use chrono::{DateTime, Utc};

const DAY_MICROS: i64 = 86_400_000_000;

/// The UTC day of a time.
pub(crate) fn day_of(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros().div_euclid(DAY_MICROS)
}

/// The first microsecond of a UTC day.
pub(crate) fn day_start(day: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(day.saturating_mul(DAY_MICROS))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A key inside one day: the event name (compared byte by byte, as ClickHouse compares
/// strings), then the two hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    pub(crate) event: String,
    pub(crate) distinct_hash: u64,
    pub(crate) uuid_hash: u64,
}

impl Key {
    /// Whether nothing sorts before it (the start of a day).
    pub(crate) fn is_min(&self) -> bool {
        self.event.is_empty() && self.distinct_hash == 0 && self.uuid_hash == 0
    }
}

/// A point of the whole order: a day, then a key inside it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Point {
    pub(crate) day: i64,
    pub(crate) key: Key,
}

impl Point {
    /// The start of `day`: before every key of it.
    pub(crate) fn day_start(day: i64) -> Point {
        Point {
            day,
            key: Key::default(),
        }
    }
}

/// Where a range of the order begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lower {
    /// At this point (included).
    At(Point),
    /// Just after this point (excluded): a cursor after the last row read.
    After(Point),
}

impl Lower {
    pub(crate) fn point(&self) -> &Point {
        match self {
            Lower::At(p) | Lower::After(p) => p,
        }
    }

    pub(crate) fn admits(&self, p: &Point) -> bool {
        match self {
            Lower::At(at) => p >= at,
            Lower::After(after) => p > after,
        }
    }
}

/// Where a range of the order ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Upper {
    /// Before this point (excluded).
    Before(Point),
    /// Up to and including this point.
    Through(Point),
    /// The end of the range read.
    End,
}

impl Upper {
    pub(crate) fn admits(&self, p: &Point) -> bool {
        match self {
            Upper::Before(b) => p < b,
            Upper::Through(t) => p <= t,
            Upper::End => true,
        }
    }

    pub(crate) fn point(&self) -> Option<&Point> {
        match self {
            Upper::Before(p) | Upper::Through(p) => Some(p),
            Upper::End => None,
        }
    }

    /// Where the rest of the order begins once everything up to here is done.
    pub(crate) fn next(&self) -> Option<Lower> {
        match self {
            Upper::Before(p) => Some(Lower::At(p.clone())),
            Upper::Through(p) => Some(Lower::After(p.clone())),
            Upper::End => None,
        }
    }
}

/// A point strictly inside `[lo, hi]`-or-`[lo, hi)` (one day and one event), taking about
/// `share` of the hash space between them: `cityHash64(distinct_id)` first, then, inside a
/// single `distinct_id` hash (one busy user), `cityHash64(uuid)`. What lies before the point
/// is one half, the point and what follows the other. `None` when the range holds fewer than
/// two keys, or spans days or events (hash halves cannot split those).
pub(crate) fn between(lo: &Lower, hi: &Upper, share: f64) -> Option<Point> {
    let from = lo.point();
    let to = hi.point()?;
    if from.day != to.day || from.key.event != to.key.event {
        return None;
    }
    // The hash pair as one 128-bit number; `first` and `last` are the keys admitted.
    let v = |k: &Key| (u128::from(k.distinct_hash) << 64) | u128::from(k.uuid_hash);
    let first = match lo {
        Lower::At(p) => v(&p.key),
        Lower::After(p) => v(&p.key).checked_add(1)?,
    };
    let last = match hi {
        Upper::Before(p) => v(&p.key).checked_sub(1)?,
        _ => v(&to.key),
    };
    if last <= first {
        return None;
    }
    let span = last - first;
    let step = (span as f64 * share.clamp(0.0, 1.0)) as u128;
    let cut = first + step.clamp(1, span);
    // A cut on the distinct hash alone makes a simpler query, when one lies inside.
    let round = cut & !u128::from(u64::MAX);
    let cut = if round > first { round } else { cut };
    Some(Point {
        day: from.day,
        key: Key {
            event: from.key.event.clone(),
            distinct_hash: (cut >> 64) as u64,
            uuid_hash: cut as u64,
        },
    })
}

/// The end of an event's key space within a day: every key of `event` is at or before it.
pub(crate) fn event_end(day: i64, event: &str) -> Point {
    Point {
        day,
        key: Key {
            event: event.to_string(),
            distinct_hash: u64::MAX,
            uuid_hash: u64::MAX,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(day: i64, event: &str, x: u64, y: u64) -> Point {
        Point {
            day,
            key: Key {
                event: event.into(),
                distinct_hash: x,
                uuid_hash: y,
            },
        }
    }

    #[test]
    fn days_are_utc_and_floor_before_1970() {
        let t: DateTime<Utc> = "2024-01-02T23:59:59.999999Z".parse().unwrap();
        assert_eq!(
            day_start(day_of(t)),
            "2024-01-02T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let before: DateTime<Utc> = "1969-12-31T23:00:00Z".parse().unwrap();
        assert_eq!(day_of(before), -1);
    }

    #[test]
    fn points_order_by_day_then_event_bytes_then_hashes() {
        assert!(p(1, "z", 0, 0) < p(2, "a", 0, 0));
        assert!(
            p(1, "$pageview", u64::MAX, 0) < p(1, "a", 0, 0),
            "byte order: '$' < 'a'"
        );
        assert!(p(1, "a", 1, u64::MAX) < p(1, "a", 2, 0));
        assert!(Point::day_start(1) < p(1, "", 0, 1));
    }

    #[test]
    fn a_range_splits_on_the_distinct_hash_then_on_the_uuid_hash() {
        let whole = Upper::Through(event_end(1, "e"));
        let mid = between(&Lower::At(p(1, "e", 0, 0)), &whole, 0.5).unwrap();
        assert_eq!(mid, p(1, "e", 1 << 63, 0));
        // Hashes at and above 2^63 are split like any other.
        let lo = Lower::After(p(1, "e", (1 << 63) + 10, 5));
        let mid = between(&lo, &whole, 0.5).unwrap();
        assert!(mid.key.distinct_hash > (1 << 63) + 10 && mid.key.distinct_hash < u64::MAX);
        assert_eq!(mid.key.uuid_hash, 0);
        // One busy user: a single distinct hash splits on the uuid hash.
        let mid = between(
            &Lower::At(p(1, "e", 42, 0)),
            &Upper::Before(p(1, "e", 43, 0)),
            0.5,
        );
        assert_eq!(mid, Some(p(1, "e", 42, 1 << 63)));
        // A single key cannot be split; nor can a range over two events.
        let one = between(
            &Lower::At(p(1, "e", 42, 7)),
            &Upper::Before(p(1, "e", 42, 8)),
            0.5,
        );
        assert_eq!(one, None);
        let two = between(
            &Lower::At(p(1, "a", 0, 0)),
            &Upper::Before(p(1, "b", 0, 0)),
            0.5,
        );
        assert_eq!(two, None);
        // Whatever the share, the point lies strictly inside.
        for share in [0.0, 1e-30, 0.999_999, 1.0] {
            let lo = Lower::After(p(1, "e", 42, 7));
            let mid = between(&lo, &Upper::Through(p(1, "e", 42, 9)), share).unwrap();
            assert!(
                mid > p(1, "e", 42, 8) && mid <= p(1, "e", 42, 9),
                "{share}: {mid:?}"
            );
            let mid = between(&lo, &Upper::Before(p(1, "e", 42, 10)), share).unwrap();
            assert_eq!(mid, p(1, "e", 42, 9), "{share}");
        }
        // The very top of the hash space.
        let top = between(&Lower::At(p(1, "e", u64::MAX, u64::MAX - 1)), &whole, 0.5);
        assert_eq!(top, Some(p(1, "e", u64::MAX, u64::MAX)));
    }
}
