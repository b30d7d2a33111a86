//! The stand-in's legacy Events API (`GET /api/projects/{id}/events/`) with PostHog's real
//! behaviour (../shared/posthog-api.md): strict `after`/`before`, the last 24 hours when
//! `after` is missing, `limit` 100 by default and silently capped at 1,000, a 1 s sleep for any
//! `offset` and 400 past 50,000, at most 366 days between the bounds, newest first unless
//! `orderBy=["timestamp"]`, `event` and `distinct_id` filters, ties in an order that is the same
//! for the same request but differs between requests that differ ([`TieOrder`]), and in
//! newest-first order the short probe windows whose `next` can be null while older events
//! remain. `next` copies the parameters and moves the bound to the
//! last row's timestamp, so ties at the boundary are skipped by whoever follows it.

use super::data::StoredEvent;
use super::storage::ByTime;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

/// The Events API's order among events that share a timestamp (../shared/posthog-api.md):
/// ClickHouse's, the same for the same request but another for a request that differs (another
/// `offset`, `limit` or filter), so offset pages over ties overlap and miss rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TieOrder {
    /// An order drawn from the request's parameters: repeating a request repeats it.
    PerRequest,
    /// The worst such order: whatever `limit` and `offset`, the rows a page takes from a run
    /// of ties are that run's first ones (in uuid order), so offset paging never gets past
    /// them.
    SameFirst,
}

pub const LIMIT_CAP: usize = 1_000;
pub const MAX_OFFSET: usize = 50_000;

#[derive(Serialize)]
struct Out<'a> {
    id: &'a str,
    distinct_id: &'a str,
    properties: Box<RawValue>,
    event: &'a str,
    timestamp: String,
    person: Option<()>,
    elements: [(); 0],
    elements_chain: &'a str,
}

#[derive(Serialize)]
struct Page<'a> {
    next: Option<String>,
    results: Vec<Out<'a>>,
}

/// `2021-04-29T05:51:15.844000+00:00`, as the Events API writes timestamps.
fn format(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

fn parse(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Answers one request; the duration is the server-side sleep before the answer.
pub(super) fn list(
    config: &super::PostHogConfig,
    events: ByTime<'_>,
    path: &str,
    query: &str,
) -> Result<(Response, std::time::Duration), (u16, String)> {
    let (body, offset_used) = page(events, path, query, config.tie_order)?;
    let delay = if offset_used {
        config.offset_delay
    } else {
        std::time::Duration::ZERO
    };
    Ok((
        ([("content-type", "application/json")], body).into_response(),
        delay,
    ))
}

/// FNV-1a: a seed that is the same in every process.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The worst tie order: the rows a page (`rows`, taken from `window`) takes from each run
/// of ties become that run's first ones.
fn same_first<'a>(window: &[&'a StoredEvent], rows: &mut [&'a StoredEvent]) {
    let mut at = 0;
    while at < rows.len() {
        let ts = rows[at].timestamp;
        let run_start = window.partition_point(|e| e.timestamp < ts);
        let taken = rows[at..].iter().take_while(|e| e.timestamp == ts).count();
        rows[at..at + taken].copy_from_slice(&window[run_start..run_start + taken]);
        at += taken;
    }
}

/// An error status and PostHog's `detail` for it.
type Fail = (u16, String);

fn page(
    events: ByTime<'_>,
    path: &str,
    query: &str,
    tie_order: TieOrder,
) -> Result<(String, bool), Fail> {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let time = |k: &str| -> Result<Option<DateTime<Utc>>, Fail> {
        get(k)
            .map(|v| parse(v).ok_or_else(|| (400, format!("{k}: invalid datetime {v:?}"))))
            .transpose()
    };
    let before = time("before")?;
    // Without `after`, PostHog Cloud returns only the last 24 hours.
    let after =
        time("after")?.unwrap_or_else(|| before.unwrap_or_else(Utc::now) - Duration::hours(24));
    if let Some(before) = before
        && before - after > Duration::days(366)
    {
        return Err((500, "A server error occurred.".into()));
    }
    let limit = get("limit")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100)
        .min(LIMIT_CAP);
    let offset = get("offset")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err((
            400,
            "offset must be at most 50000; use after/before to page".into(),
        ));
    }
    let oldest_first = get("orderBy") == Some("[\"timestamp\"]");
    let event = get("event");
    let distinct_id = get("distinct_id");

    // Strict bounds: after < timestamp < before.
    let lo = events.partition_point(|e| e.timestamp <= after);
    let hi = before.map_or(events.len(), |b| {
        events.partition_point(|e| e.timestamp < b)
    });
    let keep = |e: &&StoredEvent| {
        event.is_none_or(|name| e.event == name) && distinct_id.is_none_or(|d| e.distinct_id == d)
    };
    let mut in_window: Vec<&StoredEvent> = (lo..hi.max(lo))
        .map(|i| events.get(i))
        .filter(keep)
        .collect();
    // The same request, the same order: drawn from its parameters, whatever their order.
    let mut sorted = params.clone();
    sorted.sort();
    let mut rng = fastrand::Rng::with_seed(fnv(format!("{sorted:?}").as_bytes()));
    for run in in_window.chunk_by_mut(|a, b| a.timestamp == b.timestamp) {
        match tie_order {
            TieOrder::PerRequest => rng.shuffle(run),
            TieOrder::SameFirst => run.sort_by(|a, b| a.uuid.cmp(&b.uuid)),
        }
    }

    let (rows, next_bound): (Vec<&StoredEvent>, bool) = if oldest_first {
        let mut rows: Vec<_> = in_window.iter().skip(offset).take(limit).copied().collect();
        if tie_order == TieOrder::SameFirst {
            same_first(&in_window, &mut rows);
        }
        let full = rows.len() == limit;
        (rows, full)
    } else {
        // Newest first: probe short windows ending at `before`; a probe holding at least half a
        // page is answered on its own, `next` included (PostHog's behaviour, and its trap).
        let end = before.unwrap_or_else(Utc::now);
        let mut chosen: Vec<&StoredEvent> = in_window.clone();
        for probe in [
            Duration::seconds(60),
            Duration::hours(1),
            Duration::hours(24),
        ] {
            let in_probe: Vec<&StoredEvent> = in_window
                .iter()
                .filter(|e| e.timestamp > end - probe)
                .copied()
                .collect();
            if in_probe.len() >= limit / 2 {
                chosen = in_probe;
                break;
            }
        }
        let rows: Vec<_> = chosen
            .iter()
            .rev()
            .skip(offset)
            .take(limit)
            .copied()
            .collect();
        let full = rows.len() == limit && chosen.len() > offset + limit;
        (rows, full)
    };

    let next = match rows.last() {
        Some(last) if next_bound => {
            let moved = if oldest_first { "after" } else { "before" };
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &params {
                if k != moved {
                    ser.append_pair(k, v);
                }
            }
            ser.append_pair(moved, &format(last.timestamp));
            Some(format!("{path}?{}", ser.finish()))
        }
        _ => None,
    };
    let results = rows
        .iter()
        .map(|e| Out {
            id: &e.uuid,
            distinct_id: &e.distinct_id,
            properties: RawValue::from_string(e.properties.clone())
                .expect("stored properties are JSON"),
            event: &e.event,
            timestamp: format(e.timestamp),
            person: None,
            elements: [],
            elements_chain: &e.elements_chain,
        })
        .collect();
    let body = serde_json::to_string(&Page { next, results }).expect("serializes");
    Ok((body, offset > 0))
}
