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
use tokio::sync::mpsc;

/// PostHog caps an explicit LIMIT at this many rows (../shared/posthog-api.md).
pub(crate) const MAX_PAGE_SIZE: u64 = 50_000;
const MIN_WIDTH: Duration = Duration::seconds(1);
const MAX_WIDTH: Duration = Duration::days(31);
const INITIAL_WIDTH: Duration = Duration::days(1);

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

impl Reader {
    /// Sends every event of the range after `from` to `tx`, in order, through the Query API.
    /// Stops early (Ok) if the receiver is gone: the pipeline decides what that means.
    pub(super) async fn read_query(
        &self,
        from: Option<Cursor>,
        tx: mpsc::Sender<Vec<Item<Cursor>>>,
    ) -> anyhow::Result<()> {
        let progress = self.client.progress().clone();
        let team = crate::event::team_id(self.client.project());
        let mut pos = match from {
            None => Cursor::Before {
                timestamp: self.range.start,
            },
            Some(Cursor::Seen { .. }) => {
                bail!("this checkpoint was written by the Events API source; use --source events")
            }
            Some(pos) => pos,
        };
        let mut width = INITIAL_WIDTH;
        let mut window_end: Option<DateTime<Utc>> = None;
        let (mut window_pages, mut window_rows) = (0u32, 0usize);
        let mut slow_retries = 0u32;
        let mut last_key: Option<(DateTime<Utc>, String)> = None;

        while pos.timestamp() < self.range.end {
            let start = pos.timestamp();
            let end = *window_end.get_or_insert_with(|| (start + width).min(self.range.end));
            progress.set_status(format!("window {} → {}", short(start), short(end)));
            progress.set_done(self.range.fraction(start));

            let rows = match self.query_page(&pos, end).await {
                Ok(rows) => rows,
                Err(GaveUp::Fatal(ApiError::TooSlow { status })) => {
                    if end - start > MIN_WIDTH {
                        width = ((end - start) / 2).max(MIN_WIDTH);
                        window_end = Some(start + width);
                        progress.debug(&format!(
                            "PostHog answered {status} (query too slow): narrowing the window to {}",
                            human(width)
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
            let full = rows.len() >= self.page_size;
            Stats::add(&progress.stats.read, rows.len() as u64);
            window_pages += 1;
            window_rows += rows.len();

            let mut items = Vec::with_capacity(rows.len() + 1);
            for row in rows {
                let Row(
                    uuid,
                    event,
                    distinct_id,
                    properties,
                    elements_chain,
                    timestamp,
                    created_at,
                ) = row;
                let ts = parse_ts(&timestamp)?;
                // The events table is a ReplacingMergeTree: before a merge the same row can
                // appear twice, side by side in this order. Send it once.
                if last_key
                    .as_ref()
                    .is_some_and(|(t, u)| *t == ts && *u == uuid)
                {
                    Stats::add(&progress.stats.duplicates_dropped, 1);
                    continue;
                }
                let properties = properties_of(properties, &uuid)?;
                let json = Event {
                    uuid: &uuid,
                    event: event.as_deref().unwrap_or(""),
                    distinct_id: distinct_id.as_deref().unwrap_or(""),
                    timestamp: format_ts(&ts),
                    created_at: created_at
                        .as_deref()
                        .map(parse_ts)
                        .transpose()?
                        .map(|t| format_ts(&t)),
                    properties: &properties,
                    elements_chain: elements_chain.as_deref().unwrap_or(""),
                    team_id: &team,
                }
                .to_json();
                let next = Cursor::After {
                    timestamp: ts,
                    uuid: uuid.clone(),
                };
                items.push(Item::Record { json, pos: next });
                last_key = Some((ts, uuid));
            }

            if full {
                // More may follow in this window: continue after the last row.
                let (ts, uuid) = last_key.clone().context("a full page has a last row")?;
                if (Cursor::After {
                    timestamp: ts,
                    uuid: uuid.clone(),
                }) == pos
                {
                    bail!(
                        "PostHog returned the same page twice at {}; stopping rather than looping",
                        format_ts(&ts)
                    );
                }
                pos = Cursor::After {
                    timestamp: ts,
                    uuid,
                };
            } else {
                // A short page ends the window. Adapt the next window's width to what we saw.
                pos = Cursor::Before { timestamp: end };
                items.push(Item::Mark(pos.clone()));
                width = next_width(width, window_pages, window_rows, self.page_size);
                window_end = None;
                window_pages = 0;
                window_rows = 0;
            }
            if tx.send(items).await.is_err() {
                return Ok(());
            }
        }
        progress.set_done(1.0);
        Ok(())
    }

    async fn query_page(
        &self,
        pos: &Cursor,
        end: DateTime<Utc>,
    ) -> Result<Vec<Row>, GaveUp<ApiError>> {
        let body = hogql::page(pos, end, &self.filters, self.ingested, self.page_size);
        let bytes = self.client.post("query/", &body).await?;
        serde_json::from_slice::<QueryResponse>(&bytes)
            .map(|r| r.results)
            .map_err(|e| {
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
            let text: String = serde_json::from_str(raw.get())?;
            properties_object(Some(&text), uuid)
        }
        Some(raw) if raw.get() != "null" => properties_object(Some(raw.get()), uuid),
        _ => properties_object(None, uuid),
    }
}

/// The next window's width: wider after a window that fit easily in one page, narrower after
/// one that took many pages (each page re-scans the window, so wide busy windows get slow).
fn next_width(width: Duration, pages: u32, rows: usize, page_size: usize) -> Duration {
    let next = if pages <= 1 && rows < page_size / 4 {
        width * 4
    } else if pages <= 1 && rows < page_size / 2 {
        width * 2
    } else if pages > 4 {
        width / 2
    } else {
        width
    };
    next.clamp(MIN_WIDTH, MAX_WIDTH)
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
    fn window_width_grows_when_sparse_and_shrinks_when_dense() {
        let w = Duration::hours(1);
        assert_eq!(next_width(w, 1, 0, 10_000), Duration::hours(4));
        assert_eq!(next_width(w, 1, 4_000, 10_000), Duration::hours(2));
        assert_eq!(next_width(w, 3, 25_000, 10_000), w);
        assert_eq!(next_width(w, 9, 85_000, 10_000), Duration::minutes(30));
        assert_eq!(next_width(Duration::days(30), 1, 0, 10_000), MAX_WIDTH);
        assert_eq!(next_width(MIN_WIDTH, 20, 200_000, 10_000), MIN_WIDTH);
    }
}
