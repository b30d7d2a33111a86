//! The HogQL this tool sends, built in one place: the Query reader's pages and plans (counts
//! per day, event name and hash bucket) and the `count()` of `config check` share one WHERE
//! builder. Every constant travels bound in `values`, never spliced into the SQL; hash bounds
//! travel as JSON integers (unsigned 64-bit), never as floats or strings
//! (../shared/posthog-api.md, "Query API" and "What a query costs PostHog").

use super::query::key::{Key, Lower, Point, Upper, day_of, day_start};
use crate::domain::cursor::Tie;
use crate::domain::{Filters, Range};
use crate::event::format_ts_value;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

/// The columns of a page, in this order: the event (docs/event-format.md), then its sort key's
/// hashes, which place it in PostHog's storage order.
pub(crate) const COLUMNS: &str = "uuid, event, distinct_id, properties, elements_chain, timestamp, created_at, cityHash64(distinct_id), cityHash64(uuid)";

/// The UTC day of an event, without a time zone (HogQL's `toDate()` follows one).
const DAY: &str = "intDiv(toUnixTimestamp64Milli(timestamp), 86400000)";

/// PostHog's storage order inside the days of a stretch.
const ORDER: &str = "ORDER BY intDiv(toUnixTimestamp64Milli(timestamp), 86400000), event, cityHash64(distinct_id), cityHash64(uuid)";

/// The most rows a plan answer holds. Each row also carries the rows of every group
/// (`sum(count()) OVER ()`, computed before LIMIT), so an answer cut by this LIMIT, by a cap
/// PostHog applies silently or by a proxy shows it.
pub(crate) const PLAN_LIMIT: usize = 10_000;

/// A plan's hash buckets: 64 per day and event name (windows are cut inside a bucket by
/// the share of its hashes, so finer ones would only make plan answers longer).
pub(crate) const BUCKET_BITS: u32 = 6;

/// `created_at` bounds: `(after, until]` (PostHog's clock). `backfill` and `export` read what
/// was ingested up to the job's start; `sync` what was ingested since its watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ingested {
    pub(crate) after: Option<DateTime<Utc>>,
    pub(crate) until: DateTime<Utc>,
    /// `until` lies far enough in the past (`sync`'s `--lag`) for every event ingested by then
    /// to be queryable: a stretch counted empty then is, and need not be read.
    pub(crate) settled: bool,
}

/// What every query of a read carries besides its stretch.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub(crate) filters: &'a Filters,
    pub(crate) ingested: Option<Ingested>,
    pub(crate) tie: Option<&'a Tie>,
}

/// A stretch of PostHog's order: keys in `[lo, hi)` (or up to `hi` inclusive) with
/// `timestamp` in `[start, end)`. `start` is where the stretch's first day begins being read
/// (its midnight, or a later `--start`), `end` the range's end.
pub(crate) struct Stretch<'a> {
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
    pub(crate) lo: &'a Lower,
    pub(crate) hi: &'a Upper,
}

impl Stretch<'_> {
    /// The `timestamp` bounds: whole UTC days, clipped to the range (never `toDate()`).
    pub(crate) fn times(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        let lo_day = self.lo.point().day;
        let start = if day_of(self.start) == lo_day {
            self.start
        } else {
            day_start(lo_day).max(self.start)
        };
        let end = match self.hi {
            Upper::End => self.end,
            Upper::Before(p) if p.key.is_min() => day_start(p.day),
            Upper::Before(p) | Upper::Through(p) => day_start(p.day + 1),
        };
        (start, end.min(self.end))
    }

    /// The WHERE clause and its bound values.
    fn conditions(&self, scope: &Scope<'_>) -> (String, Map<String, Value>) {
        let mut values = Map::new();
        let mut conds = Vec::new();
        let (start, end) = self.times();
        let time = |values: &mut Map<String, Value>, name: &str, t: &DateTime<Utc>| {
            values.insert(name.into(), format_ts_value(t).into());
            format!("toDateTime64({{{name}}}, 6, 'UTC')")
        };
        // Upper bounds are inclusive, a microsecond before the end: ClickHouse prunes by
        // `toDate(timestamp)`, and `timestamp < midnight` would not rule out the next day.
        conds.push(format!(
            "timestamp >= {}",
            time(&mut values, "start", &start)
        ));
        conds.push(format!(
            "timestamp <= {}",
            time(&mut values, "last", &before(end))
        ));
        if let Some(Ingested { after, until, .. }) = scope.ingested {
            if let Some(after) = after {
                let after = time(&mut values, "created_after", &after);
                conds.push(format!("created_at > {after}"));
            }
            let until = time(&mut values, "created_until", &until);
            conds.push(format!("created_at <= {until}"));
        }
        for (list, prefix, op) in [
            (&scope.filters.include, "event", "IN"),
            (&scope.filters.exclude, "exclude", "NOT IN"),
        ] {
            if list.is_empty() {
                continue;
            }
            let names: Vec<String> = list
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let key = format!("{prefix}_{i}");
                    values.insert(key.clone(), name.clone().into());
                    format!("{{{key}}}")
                })
                .collect();
            conds.push(format!("event {op} ({})", names.join(", ")));
        }
        if let Some(tie) = scope
            .tie
            .filter(|t| start <= t.timestamp && t.timestamp < end)
        {
            let ts = time(&mut values, "tie_ts", &tie.timestamp);
            values.insert("tie_uuid".into(), tie.uuid.clone().into());
            conds.push(format!(
                "(timestamp > {ts} OR (timestamp = {ts} AND uuid > toUUID({{tie_uuid}})))"
            ));
        }
        // Key bounds, as ranges on single columns (tuple comparisons prune nothing). A bound
        // on a day the stretch reaches past applies to that day only.
        let lo = self.lo.point();
        if !(matches!(self.lo, Lower::At(p) if p.key.is_min())) {
            let (op, key) = match self.lo {
                Lower::At(p) => (">=", &p.key),
                Lower::After(p) => (">", &p.key),
            };
            let cond = key_condition("lo", op, key, &mut values);
            if end > day_start(lo.day + 1) {
                let next = time(&mut values, "lo_day_end", &day_start(lo.day + 1));
                conds.push(format!("(timestamp >= {next} OR {cond})"));
            } else {
                conds.push(cond);
            }
        }
        let upper = match self.hi {
            Upper::Before(p) if !p.key.is_min() => Some(("<", p)),
            Upper::Through(p) => Some(("<=", p)),
            _ => None,
        };
        if let Some((op, p)) = upper {
            let cond = key_condition("hi", op, &p.key, &mut values);
            if start < day_start(p.day) {
                let day = time(&mut values, "hi_day_before", &before(day_start(p.day)));
                conds.push(format!("(timestamp <= {day} OR {cond})"));
            } else {
                conds.push(cond);
            }
        }
        (conds.join(" AND "), values)
    }
}

/// The last microsecond before `t` (PostHog's timestamps have microseconds).
fn before(t: DateTime<Utc>) -> DateTime<Utc> {
    t - chrono::Duration::microseconds(1)
}

/// `key op (event, x, y)` as ranges on single columns, in its shortest form.
fn key_condition(side: &str, op: &str, key: &Key, values: &mut Map<String, Value>) -> String {
    let event = format!("{{{side}_event}}");
    values.insert(format!("{side}_event"), key.event.clone().into());
    let mut bind = |name: &str, v: u64| {
        // A JSON integer: exact for every u64, and a UInt64 constant to ClickHouse.
        values.insert(format!("{side}_{name}"), Value::from(v));
        format!("{{{side}_{name}}}")
    };
    let (x, y) = (key.distinct_hash, key.uuid_hash);
    let strict = if op.starts_with('>') { ">" } else { "<" };
    let wide = if strict == ">" { ">=" } else { "<=" };
    // Where the uuid hash adds nothing (at its first or last value), the distinct hash is the
    // whole condition; where that adds nothing too, the name is.
    let (none, all) = if strict == ">" {
        (0, u64::MAX)
    } else {
        (u64::MAX, 0)
    };
    let inclusive = op.len() == 2;
    let tail = match (inclusive, x, y) {
        (true, x, y) if x == none && y == none => return format!("event {wide} {event}"),
        (false, x, y) if x == all && y == all => return format!("event {strict} {event}"),
        (true, x, y) if y == none => format!("cityHash64(distinct_id) {wide} {}", bind("hash", x)),
        (false, x, y) if y == all => {
            format!("cityHash64(distinct_id) {strict} {}", bind("hash", x))
        }
        _ => {
            let x = bind("hash", x);
            let y = bind("uuid_hash", y);
            format!(
                "cityHash64(distinct_id) {strict} {x} OR (cityHash64(distinct_id) = {x} AND cityHash64(uuid) {op} {y})"
            )
        }
    };
    format!("event {wide} {event} AND (event {strict} {event} OR {tail})")
}

/// The request body for a query: UTC times, never a cached answer.
pub(crate) fn body(name: &str, (sql, values): (String, Map<String, Value>)) -> Value {
    json!({
        "query": {
            "kind": "HogQLQuery",
            "query": sql,
            "values": values,
            "modifiers": {"convertToProjectTimezone": false},
        },
        "refresh": "force_blocking",
        "name": name,
    })
}

/// One page of a stretch, in PostHog's storage order.
pub(crate) fn page(stretch: &Stretch<'_>, scope: &Scope<'_>, limit: usize) -> Value {
    let (conds, values) = stretch.conditions(scope);
    let sql = format!("SELECT {COLUMNS} FROM events WHERE {conds} {ORDER} LIMIT {limit}");
    body("posthog-patterns export", (sql, values))
}

/// The plan of a stretch: rows per UTC day, event name and (with `buckets`) range of
/// `cityHash64(distinct_id)`, in storage order. It reads the key columns only.
pub(crate) fn plan(stretch: &Stretch<'_>, scope: &Scope<'_>, buckets: bool) -> Value {
    let (conds, mut values) = stretch.conditions(scope);
    let sql = if buckets {
        values.insert(
            "bucket_width".into(),
            Value::from(1u64 << (64 - BUCKET_BITS)),
        );
        format!(
            "SELECT {DAY} AS utc_day, event, intDiv(cityHash64(distinct_id), {{bucket_width}}) AS hash_bucket, count() AS n, sum(count()) OVER () AS total FROM events WHERE {conds} GROUP BY utc_day, event, hash_bucket ORDER BY utc_day, event, hash_bucket LIMIT {PLAN_LIMIT}"
        )
    } else {
        format!(
            "SELECT {DAY} AS utc_day, event, count() AS n, sum(count()) OVER () AS total FROM events WHERE {conds} GROUP BY utc_day, event ORDER BY utc_day, event LIMIT {PLAN_LIMIT}"
        )
    };
    body("posthog-patterns plan", (sql, values))
}

/// The events of each `distinct_id` hash in a stretch of one day and event: where one busy
/// user's events lie, for a bucket that holds far more than its share.
pub(crate) fn users(stretch: &Stretch<'_>, scope: &Scope<'_>) -> Value {
    let (conds, values) = stretch.conditions(scope);
    let sql = format!(
        "SELECT cityHash64(distinct_id) AS distinct_hash, count() AS n, sum(count()) OVER () AS total FROM events WHERE {conds} GROUP BY distinct_hash ORDER BY distinct_hash LIMIT {PLAN_LIMIT}"
    );
    body("posthog-patterns plan", (sql, values))
}

/// How many events `range` holds (`config check`).
pub(crate) fn count(range: &Range, scope: &Scope<'_>) -> Value {
    let lo = Lower::At(Point::day_start(day_of(range.start)));
    let stretch = Stretch {
        start: range.start,
        end: range.end,
        lo: &lo,
        hi: &Upper::End,
    };
    let (conds, values) = stretch.conditions(scope);
    body(
        "posthog-patterns estimate",
        (format!("SELECT count() FROM events WHERE {conds}"), values),
    )
}

/// PostHog's current time (the answer's `Date` header is what is read).
pub(crate) fn now() -> (String, Map<String, Value>) {
    ("SELECT now()".to_string(), Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_ts;

    fn t(s: &str) -> DateTime<Utc> {
        parse_ts(s).unwrap()
    }

    fn p(day: &str, event: &str, x: u64, y: u64) -> Point {
        Point {
            day: day_of(t(day)),
            key: Key {
                event: event.into(),
                distinct_hash: x,
                uuid_hash: y,
            },
        }
    }

    fn sql_of(body: &Value) -> (String, Value) {
        (
            body["query"]["query"].as_str().unwrap().to_string(),
            body["query"]["values"].clone(),
        )
    }

    static NO_FILTERS: Filters = Filters {
        include: Vec::new(),
        exclude: Vec::new(),
    };

    fn scope() -> Scope<'static> {
        Scope {
            filters: &NO_FILTERS,
            ingested: None,
            tie: None,
        }
    }

    #[test]
    fn the_first_window_of_a_range_has_no_lower_key_bound_and_the_last_no_upper_one() {
        let lo = Lower::At(Point::day_start(day_of(t("2024-01-01T06:00:00Z"))));
        let stretch = Stretch {
            start: t("2024-01-01T06:00:00Z"),
            end: t("2024-01-03T00:00:00Z"),
            lo: &lo,
            hi: &Upper::End,
        };
        let (sql, values) = sql_of(&page(&stretch, &scope(), 50_000));
        assert_eq!(
            sql,
            format!(
                "SELECT {COLUMNS} FROM events WHERE timestamp >= toDateTime64({{start}}, 6, 'UTC') AND timestamp <= toDateTime64({{last}}, 6, 'UTC') {ORDER} LIMIT 50000"
            )
        );
        assert_eq!(
            values["start"], "2024-01-01 06:00:00.000000",
            "--start, mid-day"
        );
        assert_eq!(values["last"], "2024-01-02 23:59:59.999999");
        assert!(!sql.contains("OFFSET") && !sql.contains("toDate("));
    }

    #[test]
    fn a_window_inside_one_day_and_one_event_is_a_hash_range() {
        let lo = Lower::At(p("2024-01-02T00:00:00Z", "$pageview", 1 << 62, 0));
        let hi = Upper::Before(p("2024-01-02T00:00:00Z", "$pageview", u64::MAX - 5, 0));
        let stretch = Stretch {
            start: t("2024-01-01T06:00:00Z"),
            end: t("2024-01-09T00:00:00Z"),
            lo: &lo,
            hi: &hi,
        };
        let (sql, values) = sql_of(&page(&stretch, &scope(), 10));
        assert!(sql.contains("timestamp >= toDateTime64({start}, 6, 'UTC') AND timestamp <= toDateTime64({last}, 6, 'UTC') AND event >= {lo_event} AND (event > {lo_event} OR cityHash64(distinct_id) >= {lo_hash}) AND event <= {hi_event} AND (event < {hi_event} OR cityHash64(distinct_id) < {hi_hash}) ORDER BY"), "{sql}");
        assert_eq!(
            values["start"], "2024-01-02 00:00:00.000000",
            "the day's own start"
        );
        assert_eq!(
            values["last"], "2024-01-02 23:59:59.999999",
            "not a microsecond of the next day"
        );
        // Bounds of 2^63 and more travel as exact unsigned integers, never floats or strings.
        assert_eq!(values["hi_hash"].as_u64(), Some(u64::MAX - 5));
        assert!(values["hi_hash"].is_u64());
        assert_eq!(
            serde_json::to_string(&values["hi_hash"]).unwrap(),
            "18446744073709551610"
        );
        assert_eq!(values["lo_event"], "$pageview");
    }

    #[test]
    fn a_cursor_inside_a_window_over_several_days_bounds_its_own_day_only() {
        let lo = Lower::After(p("2024-01-02T00:00:00Z", "signup", 7, 9));
        let hi = Upper::Before(p("2024-01-05T00:00:00Z", "purchase", 0, 0));
        let stretch = Stretch {
            start: t("2024-01-01T00:00:00Z"),
            end: t("2024-02-01T00:00:00Z"),
            lo: &lo,
            hi: &hi,
        };
        let (sql, values) = sql_of(&page(&stretch, &scope(), 10));
        assert!(sql.contains("AND (timestamp >= toDateTime64({lo_day_end}, 6, 'UTC') OR event >= {lo_event} AND (event > {lo_event} OR cityHash64(distinct_id) > {lo_hash} OR (cityHash64(distinct_id) = {lo_hash} AND cityHash64(uuid) > {lo_uuid_hash}))) AND (timestamp <= toDateTime64({hi_day_before}, 6, 'UTC') OR event < {hi_event})"), "{sql}");
        assert_eq!(values["lo_day_end"], "2024-01-03 00:00:00.000000");
        assert_eq!(values["hi_day_before"], "2024-01-04 23:59:59.999999");
        assert_eq!(values["last"], "2024-01-05 23:59:59.999999");
        assert_eq!(values["lo_uuid_hash"].as_u64(), Some(9));
    }

    #[test]
    fn bounds_at_the_ends_of_the_hash_space_shorten() {
        let mut values = Map::new();
        let k = |x, y| Key {
            event: "e".into(),
            distinct_hash: x,
            uuid_hash: y,
        };
        assert_eq!(
            key_condition("lo", ">=", &k(0, 0), &mut values),
            "event >= {lo_event}"
        );
        assert_eq!(
            key_condition("lo", ">", &k(u64::MAX, u64::MAX), &mut values),
            "event > {lo_event}"
        );
        assert_eq!(
            key_condition("hi", "<=", &k(u64::MAX, u64::MAX), &mut values),
            "event <= {hi_event}"
        );
        assert_eq!(
            key_condition("hi", "<", &k(0, 0), &mut values),
            "event < {hi_event}"
        );
        assert_eq!(
            key_condition("hi", "<=", &k(5, u64::MAX), &mut values),
            "event <= {hi_event} AND (event < {hi_event} OR cityHash64(distinct_id) <= {hi_hash})"
        );
    }

    #[test]
    fn filters_ingestion_bounds_and_an_old_tie_are_bound_values_not_sql_text() {
        let filters = Filters {
            include: vec!["sign'up".into(), "$pageview".into()],
            exclude: vec!["x".into()],
        };
        let tie = Tie {
            timestamp: t("2024-01-01T10:00:00.123456Z"),
            uuid: "0190c6b5-0000-7000-8000-000000000001".into(),
        };
        let scope = Scope {
            filters: &filters,
            ingested: Some(Ingested {
                after: None,
                until: t("2024-06-01T00:00:00Z"),
                settled: false,
            }),
            tie: Some(&tie),
        };
        let lo = Lower::At(Point::day_start(day_of(tie.timestamp)));
        let stretch = Stretch {
            start: tie.timestamp,
            end: t("2024-01-02T00:00:00Z"),
            lo: &lo,
            hi: &Upper::End,
        };
        let (sql, values) = sql_of(&page(&stretch, &scope, 10));
        assert!(!sql.contains("sign'up"), "{sql}");
        assert!(sql.contains("event IN ({event_0}, {event_1})"));
        assert!(sql.contains("event NOT IN ({exclude_0})"));
        assert!(sql.contains("created_at <= toDateTime64({created_until}, 6, 'UTC')"));
        assert!(
            !sql.contains("created_after"),
            "no lower ingestion bound: {sql}"
        );
        assert!(sql.contains("uuid > toUUID({tie_uuid})"));
        assert_eq!(values["tie_ts"], "2024-01-01 10:00:00.123456");
        assert_eq!(values["event_0"], "sign'up");
        // The tie only concerns stretches holding its timestamp.
        let later = Stretch {
            start: t("2024-01-01T00:00:00Z"),
            end: t("2024-01-05T00:00:00Z"),
            lo: &Lower::At(Point::day_start(day_of(t("2024-01-02T00:00:00Z")))),
            hi: &Upper::End,
        };
        assert!(!sql_of(&page(&later, &scope, 10)).0.contains("tie_uuid"));
    }

    #[test]
    fn plans_and_pages_share_their_conditions() {
        let lo = Lower::After(p("2024-01-02T00:00:00Z", "signup", 7, 9));
        let stretch = Stretch {
            start: t("2024-01-01T00:00:00Z"),
            end: t("2024-02-01T00:00:00Z"),
            lo: &lo,
            hi: &Upper::End,
        };
        let where_of = |sql: &str| {
            let w = sql.split(" WHERE ").nth(1).unwrap();
            w.split(" GROUP BY")
                .next()
                .unwrap()
                .split(" ORDER BY")
                .next()
                .unwrap()
                .to_string()
        };
        let (page_sql, page_values) = sql_of(&page(&stretch, &scope(), 10));
        let (plan_sql, mut plan_values) = sql_of(&plan(&stretch, &scope(), true));
        assert_eq!(where_of(&page_sql), where_of(&plan_sql));
        assert_eq!(plan_values["bucket_width"].as_u64(), Some(1 << 58));
        plan_values.as_object_mut().unwrap().remove("bucket_width");
        assert_eq!(page_values, plan_values);
        assert!(plan_sql.contains(
            "GROUP BY utc_day, event, hash_bucket ORDER BY utc_day, event, hash_bucket LIMIT 10000"
        ));
        let (names, _) = sql_of(&plan(&stretch, &scope(), false));
        assert!(!names.contains("distinct_id) AS"), "{names}");
    }
}
