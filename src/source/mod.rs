//! Reading events out of PostHog, in `(timestamp, uuid)` order, as a stream of posted-event
//! JSON records, each with the position to resume after it. `query` uses the HogQL Query API.

pub mod query;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The half-open time range `[start, end)` to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Range {
    /// How far through the range `t` is, 0..=1.
    pub fn fraction(&self, t: DateTime<Utc>) -> f64 {
        let total = (self.end - self.start)
            .num_microseconds()
            .unwrap_or(i64::MAX) as f64;
        let done = (t - self.start).num_microseconds().unwrap_or(0) as f64;
        if total <= 0.0 { 1.0 } else { done / total }
    }
}

/// Event-name filters (`--event`, `--exclude-event`), applied in PostHog's WHERE clause.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// How far an export has got. Everything before the position has been handed on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cursor {
    /// Every event with `timestamp < timestamp` is done.
    Before { timestamp: DateTime<Utc> },
    /// Every event up to and including `(timestamp, uuid)` in PostHog's order is done.
    After {
        timestamp: DateTime<Utc>,
        uuid: String,
    },
}

impl Cursor {
    pub fn timestamp(&self) -> DateTime<Utc> {
        match self {
            Cursor::Before { timestamp } | Cursor::After { timestamp, .. } => *timestamp,
        }
    }
}

/// What a source hands to the pipeline.
#[derive(Debug)]
pub enum Item<P> {
    /// One event, serialized, and the position just after it.
    Record { json: String, pos: P },
    /// No event is left before this position (e.g. an empty window ended).
    Mark(P),
}
