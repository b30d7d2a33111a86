//! The words every layer shares, and that depend on no layer: the time range and event
//! filters of a job, the API it reads, the position it has reached (`cursor`), what makes two
//! runs the same job, and PostHog's page limit. `cli`, `settings`, `state`, `posthog`, the
//! sinks and the commands all use these; this module uses none of them.

pub(crate) mod cursor;
pub(crate) mod when;

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

pub(crate) use cursor::Cursor;

/// The most rows one Query API page may ask for (`--page-size`): PostHog's own cap on a
/// HogQL query's LIMIT (../shared/posthog-api.md).
pub(crate) const MAX_PAGE_SIZE: u64 = 50_000;

/// What makes two runs the same job: named parts (command, host, project, filters, range,
/// the webhook's fingerprint, ...). Never a secret.
pub(crate) type JobId = BTreeMap<String, String>;

/// A job identity from its parts.
pub(crate) fn job<'a>(parts: impl IntoIterator<Item = (&'a str, String)>) -> JobId {
    parts.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The half-open time range `[start, end)` to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Range {
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
}

impl Range {
    /// How far through the range `t` is, 0..=1.
    pub(crate) fn fraction(&self, t: DateTime<Utc>) -> f64 {
        let total = (self.end - self.start)
            .num_microseconds()
            .unwrap_or(i64::MAX) as f64;
        let done = (t - self.start).num_microseconds().unwrap_or(0) as f64;
        if total <= 0.0 { 1.0 } else { done / total }
    }
}

/// Event-name filters (`--event`, `--exclude-event`): applied in PostHog's WHERE clause, and
/// checked again on every row read ([`Filters::keeps`]) and every line `send` reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Filters {
    pub(crate) include: Vec<String>,
    pub(crate) exclude: Vec<String>,
}

impl Filters {
    /// Whether an event named `name` passes `--event` and `--exclude-event`.
    pub(crate) fn keeps(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|n| n == name))
            && !self.exclude.iter().any(|n| n == name)
    }
}

/// Which PostHog API events are read from (`--source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SourceKind {
    /// The Query API, falling back to the Events API when the instance has no Query API.
    Auto,
    /// The HogQL Query API (`/query/`).
    Query,
    /// The legacy Events API (`/events/`).
    Events,
}

impl SourceKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            SourceKind::Auto => "auto",
            SourceKind::Query => "query",
            SourceKind::Events => "events",
        }
    }
}

/// A file named `*.gz` is gzip, read (`send`) or written (`export`).
pub(crate) fn is_gzip(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_keep_what_is_included_and_not_excluded() {
        let f = |include: &[&str], exclude: &[&str]| Filters {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        };
        assert!(f(&[], &[]).keeps("$pageview"));
        assert!(f(&["a"], &[]).keeps("a") && !f(&["a"], &[]).keeps("b"));
        assert!(!f(&[], &["a"]).keeps("a") && f(&[], &["a"]).keeps("b"));
        assert!(!f(&["a"], &["a"]).keeps("a"));
    }
}
