//! The legacy Events API source (`GET /api/projects/{id}/events/`), read so that no event is
//! lost (../shared/posthog-api.md, "Legacy Events API"): oldest first, explicit `after` and
//! `before` on every request, windows under 366 days, `next` ignored. Its bounds are strict and
//! it orders by timestamp only, so each request starts one microsecond before the last
//! timestamp delivered and drops the uuids already delivered there; a microsecond holding more
//! events than a page is read with `offset` (up to PostHog's 50,000) and checked for
//! completeness. A page is known to be the last one only when it is shorter than a page the
//! server has already returned: the requested `limit` proves nothing (PostHog caps it silently).

use super::source::{Cursor, Reader, TieSet, short};
use crate::error::Stop;
use crate::event::{Event, format_ts, parse_ts, team_id};
use crate::pipeline::Item;
use crate::pipeline::ledger::Stats;
use anyhow::{Context, bail};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashSet;
use tokio::sync::mpsc;

/// Events API limits: a window of at most 366 days (we stay a day under), offsets up to 50,000.
const MAX_WINDOW: Duration = Duration::days(365);
pub(crate) const MAX_OFFSET: usize = 50_000;
/// How often a microsecond's worth of ties is re-read, at most, while passes still find events
/// not seen before (the Events API's order among ties changes from request to request).
const TIE_PASSES: u32 = 20;
/// Passes in a row that find nothing new before the rest is taken for duplicate rows.
const FRUITLESS_PASSES: u32 = 3;

#[derive(Deserialize)]
struct ApiEvent {
    id: String,
    event: String,
    distinct_id: serde_json::Value,
    properties: Option<Box<RawValue>>,
    timestamp: String,
    #[serde(default)]
    elements_chain: Option<String>,
}

#[derive(Deserialize)]
struct Page {
    results: Vec<ApiEvent>,
}

/// Where the next request starts.
#[derive(Clone, Copy)]
enum Lower {
    /// At this timestamp, inclusive (`after` = it minus 1 µs); delivered uuids are dropped.
    From(DateTime<Utc>),
    /// After this timestamp (`after` = it): everything at it is done.
    Past(DateTime<Utc>),
}

/// The read state: the last timestamp delivered and what was delivered there.
struct Tie {
    at: Option<DateTime<Utc>>,
    set: TieSet,
    seen: HashSet<String>,
}

impl Tie {
    fn start(&mut self, ts: DateTime<Utc>) {
        self.at = Some(ts);
        self.set = TieSet::default();
        self.seen.clear();
    }

    fn contains(&self, ts: DateTime<Utc>, uuid: &str) -> bool {
        self.at == Some(ts) && self.seen.contains(uuid)
    }
}

impl Reader {
    /// Sends every event of the range after `from` to `tx`, in order, through the Events API.
    pub(super) async fn read_events_api(
        &self,
        from: Option<Cursor>,
        tx: mpsc::Sender<Vec<Item<Cursor>>>,
    ) -> anyhow::Result<()> {
        let progress = self.client.progress().clone();
        let mut tie = Tie {
            at: None,
            set: TieSet::default(),
            seen: HashSet::new(),
        };
        let mut lower = match from {
            None => Lower::From(self.range.start),
            Some(Cursor::Before { timestamp }) => Lower::From(timestamp),
            Some(Cursor::Seen { timestamp, uuids }) => {
                tie.at = Some(timestamp);
                tie.seen = uuids.uuids().into_iter().collect();
                tie.set = uuids;
                Lower::From(timestamp)
            }
            Some(Cursor::After { .. } | Cursor::Key { .. } | Cursor::Within { .. }) => {
                bail!("this checkpoint was written by the Query API source; use --source query")
            }
        };
        // The largest page the server has returned: a shorter page is provably the last.
        let mut largest = 0usize;
        loop {
            let window_start = match lower {
                Lower::From(t) | Lower::Past(t) => t,
            };
            if window_start >= self.range.end {
                break;
            }
            let window_end = (window_start + MAX_WINDOW).min(self.range.end);
            progress.set_status(format!(
                "window {} → {}",
                short(window_start),
                short(window_end)
            ));
            let rows = self.events_page(lower, window_end, 0).await?;
            largest = largest.max(rows.len());
            let last_page = rows.len() < largest || rows.is_empty();
            let (items, new) = self.emit(rows, &mut tie, window_end)?;
            if !items.is_empty() && tx.send(items).await.is_err() {
                return Ok(());
            }
            if last_page {
                lower = Lower::From(window_end);
                // Everything before the window's end is done, ties included.
                tie = Tie {
                    at: None,
                    set: TieSet::default(),
                    seen: HashSet::new(),
                };
                if tx
                    .send(vec![Item::Mark(Cursor::Before {
                        timestamp: window_end,
                    })])
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            } else if new == 0 {
                // A whole page of events already delivered, all at one microsecond: more events
                // share it than a page holds. Read the rest of that microsecond by offset.
                let ts = tie
                    .at
                    .context("a page of delivered events has a timestamp")?;
                if !self
                    .drain_microsecond(ts, &mut tie, &mut largest, &tx)
                    .await?
                {
                    return Ok(());
                }
                lower = Lower::Past(ts);
            } else {
                lower = Lower::From(tie.at.context("new events set the timestamp")?);
            }
        }
        Ok(())
    }

    /// Reads every event of one microsecond with `offset`, until a pass has seen as many
    /// distinct events as the microsecond holds. Returns false if the receiver is gone.
    async fn drain_microsecond(
        &self,
        ts: DateTime<Utc>,
        tie: &mut Tie,
        largest: &mut usize,
        tx: &mpsc::Sender<Vec<Item<Cursor>>>,
    ) -> anyhow::Result<bool> {
        let progress = self.client.progress();
        progress.debug(&format!(
            "more events share {} than a page holds; reading that microsecond with offset",
            format_ts(&ts)
        ));
        let mut fruitless = 0;
        for pass in 1..=TIE_PASSES {
            let seen_before = tie.seen.len();
            let mut offset = 0usize;
            loop {
                if offset > MAX_OFFSET {
                    bail!(
                        "more than {MAX_OFFSET} events share the timestamp {} and PostHog's Events API cannot page past offset {MAX_OFFSET}; nothing after it was read. Use --source query (the Query API pages through ties of any size)",
                        format_ts(&ts)
                    );
                }
                progress.set_status(format!(
                    "{} events seen at {} (pass {pass})",
                    tie.seen.len(),
                    format_ts(&ts)
                ));
                let rows = self
                    .events_page(Lower::From(ts), ts + Duration::microseconds(1), offset)
                    .await?;
                *largest = (*largest).max(rows.len());
                let n = rows.len();
                let (items, _) = self.emit(rows, tie, ts + Duration::microseconds(1))?;
                if !items.is_empty() && tx.send(items).await.is_err() {
                    return Ok(false);
                }
                offset += n;
                if n == 0 || n < *largest {
                    break;
                }
            }
            // `offset` rows are in this microsecond (offset paging ended on a short page); the
            // server's order among them changes between requests, so read until each is seen.
            if tie.seen.len() >= offset {
                return Ok(true);
            }
            fruitless = if tie.seen.len() > seen_before {
                0
            } else {
                fruitless + 1
            };
            if fruitless >= FRUITLESS_PASSES {
                break;
            }
            progress.debug(&format!(
                "saw {} of {offset} events at {}; reading that microsecond again",
                tie.seen.len(),
                format_ts(&ts)
            ));
        }
        Err(Stop::Temporary(format!(
            "PostHog's Events API holds more rows at {} than distinct events could be read there ({} seen): the rest are most likely duplicate rows PostHog has not merged yet, which its merges remove. Nothing after that timestamp was read; run again later, or use --source query, which reads duplicate rows side by side",
            format_ts(&ts),
            tie.seen.len()
        ))
        .into())
    }

    /// Turns a page into records, dropping events already delivered. Returns the items and
    /// how many events were new.
    fn emit(
        &self,
        rows: Vec<ApiEvent>,
        tie: &mut Tie,
        end: DateTime<Utc>,
    ) -> anyhow::Result<(Vec<Item<Cursor>>, usize)> {
        let progress = self.client.progress();
        let team = team_id(self.client.project());
        let mut items = Vec::with_capacity(rows.len());
        let mut new = 0;
        // The position after trailing filtered events, handed on once at the end.
        let mut filtered_to: Option<Cursor> = None;
        for row in rows {
            let ts = parse_ts(&row.timestamp)?;
            if ts >= end || ts < self.range.start || tie.at.is_some_and(|t| ts < t) {
                bail!(
                    "PostHog's Events API returned event {} at {}, outside the requested window or out of order; stopping rather than guessing",
                    row.id,
                    row.timestamp
                );
            }
            if tie.contains(ts, &row.id) {
                continue;
            }
            if !self.filters.include.is_empty() {
                progress.stats.saw_name(&row.event);
            }
            new += 1;
            Stats::add(&progress.stats.read, 1);
            if tie.at != Some(ts) {
                tie.start(ts);
            }
            tie.seen.insert(row.id.clone());
            let pos = Cursor::Seen {
                timestamp: ts,
                uuids: tie.set.push(row.id.clone()),
            };
            if !self.filters.include.is_empty() && !self.filters.include.contains(&row.event)
                || self.filters.exclude.contains(&row.event)
            {
                // Filtered here (the Events API filters one name at most): done, not sent.
                Stats::add(&progress.stats.filtered, 1);
                filtered_to = Some(pos);
                continue;
            }
            let distinct_id = match &row.distinct_id {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let empty = RawValue::from_string("{}".into()).expect("valid JSON");
            let properties = row.properties.as_deref().unwrap_or(&empty);
            if !properties.get().starts_with('{') {
                bail!(
                    "PostHog returned properties that are not a JSON object for event {}",
                    row.id
                );
            }
            let json = Event {
                uuid: &row.id,
                event: &row.event,
                distinct_id: &distinct_id,
                timestamp: format_ts(&ts),
                created_at: None,
                properties,
                elements_chain: row.elements_chain.as_deref().unwrap_or(""),
                team_id: &team,
            }
            .to_json();
            items.push(Item::Record { json, pos });
            filtered_to = None;
        }
        items.extend(filtered_to.map(Item::Mark));
        Ok((items, new))
    }

    async fn events_page(
        &self,
        lower: Lower,
        before: DateTime<Utc>,
        offset: usize,
    ) -> anyhow::Result<Vec<ApiEvent>> {
        let after = match lower {
            Lower::From(t) => t - Duration::microseconds(1),
            Lower::Past(t) => t,
        };
        let mut params = vec![
            ("after", format_ts(&after)),
            ("before", format_ts(&before)),
            ("limit", self.page_size.to_string()),
            ("orderBy", "[\"timestamp\"]".to_string()),
        ];
        if let [only] = self.filters.include.as_slice() {
            params.push(("event", only.clone()));
        }
        if offset > 0 {
            params.push(("offset", offset.to_string()));
        }
        let body = self
            .client
            .get("events/", &params)
            .await
            .map_err(|e| e.into_error("reading from PostHog's Events API"))?;
        serde_json::from_slice::<Page>(&body)
            .map(|p| p.results)
            .with_context(|| {
                format!(
                    "PostHog's Events API answered with unexpected JSON: {}",
                    crate::net::http::redacted_excerpt(&body, 200)
                )
            })
    }
}
