//! The legacy Events API source (`GET /api/projects/{id}/events/`), read so that no event is
//! lost (../shared/posthog-api.md, "Legacy Events API"): oldest first, explicit `after` and
//! `before` on every request, windows under 366 days, `next` ignored. Its bounds are strict and
//! it orders by timestamp only, so each request starts one microsecond before the last
//! timestamp delivered and drops the uuids already delivered there. A microsecond holding more
//! events than a page is counted with `offset` (up to PostHog's 50,000) and read until answers
//! that each hold everything their filters match (shorter than a page) cover it: its ties come
//! in an order that differs between requests, so offset pages overlap and miss rows. A page is
//! known to hold everything only when it is shorter than a page the server has already
//! returned: the requested `limit` proves nothing (PostHog caps it silently).

use super::source::{Reader, short};
use crate::domain::Cursor;
use crate::domain::cursor::TieSet;
use crate::event::{Event, format_ts, parse_ts, team_id};
use crate::pipeline::Item;
use crate::pipeline::ledger::Stats;
use anyhow::{Context, bail};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use tokio::sync::mpsc;

/// Events API limits: a window of at most 366 days (we stay a day under), offsets up to 50,000.
const MAX_WINDOW: Duration = Duration::days(365);
pub(crate) const MAX_OFFSET: usize = 50_000;
/// The most distinct_ids of one event name a crowded microsecond is asked for one by one (a
/// request each, within PostHog's 240 a minute and 1,200 an hour).
const MAX_ID_REQUESTS: usize = 200;

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

/// The read state: the last timestamp delivered and what was delivered there, with the event
/// names and the distinct_ids of each seen there (the filters a crowded microsecond is split by).
#[derive(Default)]
struct Tie {
    at: Option<DateTime<Utc>>,
    set: TieSet,
    seen: HashSet<String>,
    names: BTreeMap<String, BTreeSet<String>>,
}

/// The error for a crowded microsecond the Events API cannot be made to show whole (exit 1).
fn crowded(rows: usize, ts: DateTime<Utc>, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{rows} rows share the timestamp {}, and PostHog's Events API, which orders ties differently from request to request, cannot be made to show them all: {why}. Nothing after that timestamp was read. Use --source query, which reads ties in PostHog's storage order",
        format_ts(&ts)
    )
}

/// A crowded microsecond being read: its time, what was delivered there, the largest page
/// PostHog has returned, and where records go.
struct Crowd<'a> {
    ts: DateTime<Utc>,
    tie: &'a mut Tie,
    largest: &'a mut usize,
    tx: &'a mpsc::Sender<Vec<Item<Cursor>>>,
}

/// What offset paging through one microsecond found.
struct Counted {
    /// Rows it holds (the last, short page says so exactly).
    rows: usize,
    /// Rows of the first answer, and distinct events among all answers.
    first: usize,
    distinct: usize,
}

/// How a request that may hold everything its filters match ended.
enum Whole {
    /// It did: this many rows.
    All(usize),
    /// It came back full.
    More,
    /// The receiver is gone.
    Stopped,
}

/// The filters of the Events API a request within one microsecond can use.
#[derive(Clone, Copy, Default)]
struct Only<'a> {
    event: Option<&'a str>,
    distinct_id: Option<&'a str>,
}

impl Tie {
    fn start(&mut self, ts: DateTime<Utc>) {
        *self = Tie {
            at: Some(ts),
            ..Tie::default()
        };
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
        let mut tie = Tie::default();
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
            let rows = self
                .events_page(lower, window_end, Only::default(), 0)
                .await?;
            largest = largest.max(rows.len());
            let last_page = rows.len() < largest || rows.is_empty();
            let (items, new) = self.emit(rows, &mut tie, window_end)?;
            if !items.is_empty() && tx.send(items).await.is_err() {
                return Ok(());
            }
            if last_page {
                lower = Lower::From(window_end);
                // Everything before the window's end is done, ties included.
                tie = Tie::default();
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
                    .drain_microsecond(&mut Crowd {
                        ts,
                        tie: &mut tie,
                        largest: &mut largest,
                        tx: &tx,
                    })
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

    /// Reads every event of one microsecond that holds more than a page. Offset paging counts
    /// its rows exactly (its last, short page says how many), but shows some twice and misses
    /// others: PostHog orders ties differently for requests that differ. It is complete when it
    /// showed as many distinct events as rows, or when answers shorter than a page (each holds
    /// everything its filters match) cover as many rows: one per event name, and for a name
    /// with more than a page there, one per distinct_id. Otherwise it cannot be read through
    /// the Events API: exit 1, naming it. Returns false if the receiver is gone.
    async fn drain_microsecond(&self, crowd: &mut Crowd<'_>) -> anyhow::Result<bool> {
        let ts = crowd.ts;
        tracing::debug!(
            "more events share {} than a page holds; reading that microsecond with offset",
            format_ts(&ts)
        );
        // The user's single event name is a filter of every request already.
        let only_name = match self.filters.include.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        };
        let base = Only {
            event: only_name.as_deref(),
            distinct_id: None,
        };
        let Some(counted) = self.count_by_offset(crowd, base).await? else {
            return Ok(false);
        };
        let rows = counted.rows;
        // Its first answer held every row (the next one was empty), or as many distinct
        // events as rows came: nothing of it is left to see.
        if counted.first == rows || counted.distinct == rows {
            return Ok(true);
        }
        tracing::debug!(
            "offset paging showed {} distinct events of the {rows} rows at {}; reading it by event name",
            crowd.tie.seen.len(),
            format_ts(&ts)
        );
        // Names (and, within a name, distinct_ids) come to light as rows are read.
        let mut covered = 0usize;
        let mut done = BTreeSet::new();
        loop {
            let name = match &only_name {
                Some(name) if done.is_empty() => Some(name.clone()),
                Some(_) => None,
                None => crowd.tie.names.keys().find(|n| !done.contains(*n)).cloned(),
            };
            let Some(name) = name else { break };
            done.insert(name.clone());
            let by_name = Only {
                event: Some(&name),
                distinct_id: None,
            };
            // (An empty name cannot be asked for: `event=` filters nothing.)
            if only_name.is_none() && !name.is_empty() {
                match self.whole_answer(crowd, by_name).await? {
                    Whole::All(n) => {
                        covered += n;
                        continue;
                    }
                    Whole::Stopped => return Ok(false),
                    Whole::More => {}
                }
            }
            if name.is_empty() {
                continue;
            }
            let Some(of_name) = self.count_by_offset(crowd, by_name).await? else {
                return Ok(false);
            };
            let of_name_rows = of_name.rows;
            if of_name.first == of_name_rows || of_name.distinct == of_name_rows {
                covered += of_name_rows;
                continue;
            }
            let of_name = of_name_rows;
            let mut of_ids = 0usize;
            let mut ids_done = BTreeSet::new();
            while let Some(id) = crowd
                .tie
                .names
                .get(&name)
                .and_then(|ids| ids.iter().find(|d| !ids_done.contains(*d)))
                .cloned()
            {
                // (Known before any request is made, as often as not.)
                let known = crowd.tie.names.get(&name).map_or(0, BTreeSet::len);
                if known > MAX_ID_REQUESTS {
                    return Err(crowded(
                        rows,
                        ts,
                        &format!(
                            "{of_name} are named {name:?}, from more than {MAX_ID_REQUESTS} distinct_ids, each of which would take a request"
                        ),
                    ));
                }
                ids_done.insert(id.clone());
                let by_id = Only {
                    event: Some(&name),
                    distinct_id: Some(&id),
                };
                match self.whole_answer(crowd, by_id).await? {
                    Whole::All(n) => of_ids += n,
                    Whole::Stopped => return Ok(false),
                    Whole::More => {
                        return Err(crowded(
                            rows,
                            ts,
                            &format!(
                                "more than a page of them are named {name:?} and come from one distinct_id"
                            ),
                        ));
                    }
                }
            }
            if of_ids < of_name {
                break;
            }
            covered += of_name;
        }
        if covered >= rows {
            return Ok(true);
        }
        Err(crowded(
            rows,
            ts,
            &format!(
                "answers holding everything their filters match (by event name, then distinct_id) covered {covered}, and {} distinct events were seen",
                crowd.tie.seen.len()
            ),
        ))
    }

    /// Pages through one microsecond (with `only`'s filters) by offset, handing on the events
    /// not delivered yet; what it counted (`None` if the receiver is gone).
    async fn count_by_offset(
        &self,
        crowd: &mut Crowd<'_>,
        only: Only<'_>,
    ) -> anyhow::Result<Option<Counted>> {
        let mut offset = 0usize;
        let mut first = None;
        let mut distinct = HashSet::new();
        loop {
            if offset > MAX_OFFSET {
                bail!(
                    "more than {MAX_OFFSET} events share the timestamp {} and PostHog's Events API cannot page past offset {MAX_OFFSET}; nothing after it was read. Use --source query (the Query API pages through ties of any size)",
                    format_ts(&crowd.ts)
                );
            }
            self.client.progress().set_status(format!(
                "{} events seen at {}",
                crowd.tie.seen.len(),
                format_ts(&crowd.ts)
            ));
            let Some(ids) = self.crowd_page(crowd, only, offset).await? else {
                return Ok(None);
            };
            let n = ids.len();
            first.get_or_insert(n);
            distinct.extend(ids);
            offset += n;
            if n == 0 || n < *crowd.largest {
                return Ok(Some(Counted {
                    rows: offset,
                    first: first.unwrap_or(0),
                    distinct: distinct.len(),
                }));
            }
        }
    }

    /// One request for one microsecond with `only`'s filters, handing on the events not
    /// delivered yet: whether its answer holds everything they match (shorter than a page).
    async fn whole_answer(&self, crowd: &mut Crowd<'_>, only: Only<'_>) -> anyhow::Result<Whole> {
        let Some(ids) = self.crowd_page(crowd, only, 0).await? else {
            return Ok(Whole::Stopped);
        };
        let n = ids.len();
        Ok(if n < *crowd.largest || n == 0 {
            Whole::All(n)
        } else {
            Whole::More
        })
    }

    /// One page of a crowded microsecond, its new events handed on: the uuids of its rows
    /// (`None` if the receiver is gone).
    async fn crowd_page(
        &self,
        crowd: &mut Crowd<'_>,
        only: Only<'_>,
        offset: usize,
    ) -> anyhow::Result<Option<Vec<String>>> {
        let ts = crowd.ts;
        let rows = self
            .events_page(
                Lower::From(ts),
                ts + Duration::microseconds(1),
                only,
                offset,
            )
            .await?;
        *crowd.largest = (*crowd.largest).max(rows.len());
        let ids = rows.iter().map(|r| r.id.clone()).collect();
        let (items, _) = self.emit(rows, crowd.tie, ts + Duration::microseconds(1))?;
        if !items.is_empty() && crowd.tx.send(items).await.is_err() {
            return Ok(None);
        }
        Ok(Some(ids))
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
            let distinct_id = match &row.distinct_id {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if tie.at != Some(ts) {
                tie.start(ts);
            }
            // The names and distinct_ids seen there, delivered before or not: what a crowded
            // microsecond is split by.
            tie.names
                .entry(row.event.clone())
                .or_default()
                .insert(distinct_id.clone());
            if tie.contains(ts, &row.id) {
                continue;
            }
            if !self.filters.include.is_empty() {
                progress.stats.saw_name(&row.event);
            }
            new += 1;
            Stats::add(&progress.stats.read, 1);
            tie.seen.insert(row.id.clone());
            let pos = Cursor::Seen {
                timestamp: ts,
                uuids: tie.set.push(row.id.clone()),
            };
            if !self.filters.keeps(&row.event) {
                // Filtered here (the Events API filters one name at most): done, not sent.
                Stats::add(&progress.stats.filtered, 1);
                filtered_to = Some(pos);
                continue;
            }
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
        only: Only<'_>,
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
        if let [name] = self.filters.include.as_slice() {
            params.push(("event", name.clone()));
        } else if let Some(name) = only.event {
            params.push(("event", name.to_string()));
        }
        if let Some(id) = only.distinct_id {
            params.push(("distinct_id", id.to_string()));
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
