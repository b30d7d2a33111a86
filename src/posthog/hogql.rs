//! The HogQL this tool sends, built in one place: the keyset page query of the Query reader and
//! the `count()` of `config check` share one WHERE builder. Every constant travels bound in
//! `values`, never spliced into the SQL (../shared/posthog-api.md, "Query API").

use super::source::{Cursor, Filters};
use crate::event::format_ts_value;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

/// The columns we select, in this order (docs/event-format.md).
pub(crate) const COLUMNS: &str =
    "uuid, event, distinct_id, properties, elements_chain, timestamp, created_at";

/// Events with `timestamp` in `[from, end)`, after the cursor (if it names a row), with the
/// filters and, for `sync`, `created_at` in `(after, until]`.
pub(crate) struct Selection<'a> {
    pub(crate) from: &'a Cursor,
    pub(crate) end: DateTime<Utc>,
    pub(crate) filters: &'a Filters,
    pub(crate) ingested: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl Selection<'_> {
    /// The WHERE clause and its bound values.
    fn conditions(&self) -> (String, Map<String, Value>) {
        let mut values = Map::new();
        let mut bind = |name: &str, t: &DateTime<Utc>| {
            values.insert(name.into(), format_ts_value(t).into());
        };
        bind("start", &self.from.timestamp());
        bind("end", &self.end);
        let mut conds = vec![
            "timestamp >= toDateTime64({start}, 6, 'UTC')".to_string(),
            "timestamp < toDateTime64({end}, 6, 'UTC')".to_string(),
        ];
        if let Cursor::After { timestamp, .. } = self.from {
            bind("ts", timestamp);
            conds.push(
                "(timestamp > toDateTime64({ts}, 6, 'UTC') OR (timestamp = toDateTime64({ts}, 6, 'UTC') AND uuid > toUUID({uuid})))"
                    .to_string(),
            );
        }
        if let Some((after, until)) = &self.ingested {
            bind("created_after", after);
            bind("created_until", until);
            conds.push("created_at > toDateTime64({created_after}, 6, 'UTC')".to_string());
            conds.push("created_at <= toDateTime64({created_until}, 6, 'UTC')".to_string());
        }
        if let Cursor::After { uuid, .. } = self.from {
            values.insert("uuid".into(), uuid.clone().into());
        }
        for (list, prefix, op) in [
            (&self.filters.include, "event", "IN"),
            (&self.filters.exclude, "exclude", "NOT IN"),
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
        (conds.join(" AND "), values)
    }

    /// The keyset query for one page, in PostHog's order.
    pub(crate) fn page_sql(&self, limit: u64) -> (String, Map<String, Value>) {
        let (conds, values) = self.conditions();
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE {conds} ORDER BY timestamp, uuid LIMIT {limit}"
        );
        (sql, values)
    }

    /// How many events the selection holds.
    pub(crate) fn count_sql(&self) -> (String, Map<String, Value>) {
        let (conds, values) = self.conditions();
        (format!("SELECT count() FROM events WHERE {conds}"), values)
    }
}

/// PostHog's current time (the answer's `Date` header is what is read).
pub(crate) fn now() -> (String, Map<String, Value>) {
    ("SELECT now()".to_string(), Map::new())
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

/// The request for one page of the Query reader.
pub(crate) fn page(
    from: &Cursor,
    end: DateTime<Utc>,
    filters: &Filters,
    ingested: Option<(DateTime<Utc>, DateTime<Utc>)>,
    limit: usize,
) -> Value {
    let sel = Selection {
        from,
        end,
        filters,
        ingested,
    };
    body("posthog-patterns export", sel.page_sql(limit as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_ts;
    use chrono::TimeZone;

    fn t(s: &str) -> DateTime<Utc> {
        parse_ts(s).unwrap()
    }

    fn build_query(
        pos: &Cursor,
        end: DateTime<Utc>,
        filters: &Filters,
        ingested: Option<(DateTime<Utc>, DateTime<Utc>)>,
        limit: u64,
    ) -> (String, Map<String, Value>) {
        Selection {
            from: pos,
            end,
            filters,
            ingested,
        }
        .page_sql(limit)
    }

    #[test]
    fn first_page_of_a_window_has_no_cursor_predicate() {
        let pos = Cursor::Before {
            timestamp: t("2024-01-01T00:00:00Z"),
        };
        let (sql, values) = build_query(
            &pos,
            t("2024-01-02T00:00:00Z"),
            &Filters::default(),
            None,
            100,
        );
        assert!(!sql.contains("{ts}"));
        assert!(!sql.to_uppercase().contains("OFFSET"));
        assert!(sql.ends_with("ORDER BY timestamp, uuid LIMIT 100"));
        assert_eq!(values["start"], "2024-01-01 00:00:00.000000");
        assert_eq!(values["end"], "2024-01-02 00:00:00.000000");
    }

    #[test]
    fn cursor_and_filters_are_bound_values_not_sql_text() {
        let pos = Cursor::After {
            timestamp: Utc.timestamp_micros(1_704_067_200_123_456).unwrap(),
            uuid: "0190c6b5-0000-7000-8000-000000000001".into(),
        };
        let filters = Filters {
            include: vec!["sign'up".into(), "$pageview".into()],
            exclude: vec!["x".into()],
        };
        let (sql, values) = build_query(&pos, t("2024-01-02T00:00:00Z"), &filters, None, 10);
        assert!(!sql.contains("sign'up"), "{sql}");
        assert!(sql.contains("event IN ({event_0}, {event_1})"));
        assert!(sql.contains("event NOT IN ({exclude_0})"));
        assert!(sql.contains("uuid > toUUID({uuid})"));
        assert_eq!(values["ts"], "2024-01-01 00:00:00.123456");
        assert_eq!(values["event_0"], "sign'up");
    }

    #[test]
    fn the_count_has_the_same_conditions_as_the_pages() {
        let pos = Cursor::Before {
            timestamp: t("2024-01-01T00:00:00Z"),
        };
        let filters = Filters {
            include: vec!["signup".into()],
            exclude: vec![],
        };
        let ingested = Some((t("2024-01-01T00:00:00Z"), t("2024-01-02T00:00:00Z")));
        let sel = Selection {
            from: &pos,
            end: t("2024-01-02T00:00:00Z"),
            filters: &filters,
            ingested,
        };
        let (page, page_values) = sel.page_sql(10);
        let (count, count_values) = sel.count_sql();
        let where_of = |sql: &str| {
            sql.split(" WHERE ")
                .nth(1)
                .unwrap()
                .split(" ORDER BY")
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(where_of(&page), where_of(&count));
        assert_eq!(page_values, count_values);
        assert!(count.starts_with("SELECT count() FROM events WHERE "));
    }
}
