//! Reading events out of PostHog as a stream of posted-event JSON records, each with the
//! position to resume after it. `query` uses the HogQL Query API (the default), in PostHog's
//! storage order; `events_api` the legacy Events API that some self-hosted instances only
//! have, in timestamp order.

use super::client::PostHog;
use super::hogql::Ingested;
use crate::domain::JobId;
use crate::domain::{Cursor, Filters, Range, SourceKind};
use crate::net::tls::CaCerts;
use crate::pipeline::Item;
use crate::progress::Progress;
use crate::settings::Retries;
use chrono::{DateTime, Utc};

use std::sync::Arc;

/// Decides which API to read from: `auto` asks the Query API a trivial question and falls back
/// to the Events API, saying so once, when the instance has no Query API (404 on `/query/`).
pub(crate) async fn resolve(
    kind: SourceKind,
    client: &crate::posthog::client::PostHog,
) -> anyhow::Result<SourceKind> {
    use crate::net::retry::GaveUp;
    use crate::posthog::error::ApiError;
    if kind != SourceKind::Auto {
        return Ok(kind);
    }
    let probe = serde_json::json!({
        "query": {"kind": "HogQLQuery", "query": "SELECT 1"},
        "refresh": "force_blocking",
        "name": "posthog-patterns probe",
    });
    match client.post("query/", &probe).await {
        Ok(_) => Ok(SourceKind::Query),
        // A 404 on /query/ means no Query API, or no such project: the Events API tells them
        // apart (it answers 200 for a project that exists), with no key scope beyond query:read.
        Err(GaveUp::Fatal(ApiError::NotFound { .. })) => match client.now(SourceKind::Events).await
        {
            Ok(_) => {
                tracing::info!(
                    "this PostHog has no Query API (404 on /query/); reading from the legacy Events API instead"
                );
                Ok(SourceKind::Events)
            }
            Err(GaveUp::Fatal(ApiError::NotFound { .. })) => Err(crate::error::usage(format!(
                "PostHog at {} has no project {} (404 on both /query/ and /events/): check --project (the number in your project's URL) and --host",
                client.host(),
                client.project()
            ))),
            Err(e) => Err(e.into_error("asking PostHog's Events API")),
        },
        Err(e) => Err(e.into_error("asking PostHog's Query API")),
    }
}

/// Makes PostHog clients sharing one HTTP client.
pub(crate) struct Connect<'a> {
    pub(crate) http: reqwest::Client,
    pub(crate) read: &'a crate::settings::Read,
    pub(crate) retries: &'a Retries,
    pub(crate) progress: &'a Arc<Progress>,
    /// One request budget per API for the whole process: the `auto` probe, the clock, the
    /// counts of `config check` and every page draw on the same one.
    budgets: [Arc<crate::net::ratelimit::Budget>; 2],
    /// PostHog's time, as its last answer said.
    clock: super::client::Clock,
    /// Whether PostHog has answered yet, and whether a first contact that fails for good
    /// (no such host name, a host that is not PostHog) ends the run.
    first_contact: Arc<super::client::FirstContact>,
}

impl<'a> Connect<'a> {
    pub(crate) fn new(
        read: &'a crate::settings::Read,
        retries: &'a Retries,
        ca_certs: &CaCerts,
        progress: &'a Arc<Progress>,
    ) -> anyhow::Result<Self> {
        Ok(Connect {
            http: crate::net::http::client(retries.http_timeout, ca_certs)?,
            read,
            retries,
            progress,
            budgets: [
                Arc::new(retries.budget(SourceKind::Query)),
                Arc::new(retries.budget(SourceKind::Events)),
            ],
            clock: Default::default(),
            first_contact: Default::default(),
        })
    }

    /// For a job that ran before: a host that fails as if it did not exist is taken for an
    /// outage (DNS's, say), retried and, past the retries, exit 75, as any other.
    pub(crate) fn trust_the_host(&self) {
        self.first_contact.trust();
    }

    /// A client with the request budget of the API `kind`.
    pub(crate) fn client(&self, kind: SourceKind) -> Arc<PostHog> {
        Arc::new(PostHog {
            http: self.http.clone(),
            conn: self.read.connection.clone(),
            budget: self.budgets[usize::from(kind == SourceKind::Events)].clone(),
            retry: self.retries.policy.clone(),
            max_response: self.read.max_response_size,
            timeout: self.retries.http_timeout,
            progress: self.progress.clone(),
            clock: self.clock.clone(),
            first_contact: self.first_contact.clone(),
            concurrency_refusals: Default::default(),
        })
    }

    /// A reader of `range` through the API `kind`.
    pub(crate) fn reader(
        &self,
        kind: SourceKind,
        range: Range,
        read: &crate::settings::Read,
        ingested: Option<Ingested>,
    ) -> Reader {
        Reader {
            kind,
            client: self.client(kind),
            range,
            filters: read.filters.clone(),
            page_size: read.page_size,
            fetch_concurrency: read.fetch_concurrency,
            skip_empty: ingested.is_some_and(|i| i.settled),
            plan_by_name: ingested.is_some_and(|i| i.settled),
            ingested,
            dead_letter: None,
        }
    }

    /// PostHog's clock (to the microsecond grid events use), for every decision about "now":
    /// a cron host's clock may drift. Warns when this machine's clock is off by more than a
    /// minute.
    pub(crate) async fn now(&self, kind: SourceKind) -> anyhow::Result<DateTime<Utc>> {
        let client = self.client(kind);
        let now = match client.recent_now() {
            Some(now) => now,
            None => client
                .now(kind)
                .await
                .map_err(|e| e.into_error("asking PostHog for its time"))?,
        };
        let drift = Utc::now() - now;
        if drift.abs() > chrono::Duration::minutes(1) {
            tracing::warn!(
                "this machine's clock is {} {} PostHog's; posthog-patterns uses PostHog's time, but check the clock (NTP)",
                crate::progress::human_duration(drift.abs().to_std().unwrap_or_default()),
                if drift > chrono::Duration::zero() {
                    "ahead of"
                } else {
                    "behind"
                }
            );
        }
        Ok(crate::event::to_micros(now))
    }

    /// Refuses a range that has not ended yet by PostHog's clock, and gives PostHog's time. A
    /// range is read by event time, so events stamped after "now" are still to come: calling
    /// such a range complete would skip them for good. `command` names the command in the
    /// message.
    pub(crate) async fn refuse_future_end(
        &self,
        kind: SourceKind,
        range: &Range,
        command: &str,
    ) -> anyhow::Result<DateTime<Utc>> {
        let now = self.now(kind).await?;
        future_end(range, now, command).map_err(crate::error::usage)?;
        Ok(now)
    }

    /// The API to read: `auto` resumes a job with the API it started with, and otherwise asks
    /// PostHog (falling back to the Events API where there is no Query API).
    pub(crate) async fn choose(
        &self,
        requested: SourceKind,
        stored: Option<&JobId>,
    ) -> anyhow::Result<SourceKind> {
        let started_with = stored.and_then(|job| job.get("source")).and_then(|name| {
            [SourceKind::Query, SourceKind::Events]
                .into_iter()
                .find(|k| k.name() == name)
        });
        match (requested, started_with) {
            (SourceKind::Auto, Some(kind)) => Ok(kind),
            (kind, _) => resolve(kind, &self.client(kind)).await,
        }
    }
}

/// Why `range` cannot be read completely at `now`, if it cannot: the latest `--end` that can,
/// and `sync` for an export that goes on.
fn future_end(range: &Range, now: DateTime<Utc>, command: &str) -> Result<(), String> {
    if range.end <= now {
        return Ok(());
    }
    let latest = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let start = if range.start >= now {
        format!(
            "; --start ({}) is in the future too",
            crate::event::format_ts(&range.start)
        )
    } else {
        String::new()
    };
    Err(format!(
        "--end {} is later than PostHog's current time ({latest}){start}: `{command}` reads by event time and cannot promise events that have not happened yet. It can run now up to --end {latest} at the latest; for an ongoing export, use `posthog-patterns sync`",
        crate::event::format_ts(&range.end),
    ))
}

/// Everything needed to read: which API, from where, what.
pub(crate) struct Reader {
    pub(crate) kind: SourceKind,
    pub(crate) client: Arc<crate::posthog::client::PostHog>,
    pub(crate) range: Range,
    pub(crate) filters: Filters,
    pub(crate) page_size: usize,
    /// Query API: windows read at once (`--fetch-concurrency`).
    pub(crate) fetch_concurrency: usize,
    /// Query API only: keep events whose `created_at` is in `(after, until]`: ingested by the
    /// job's start (`backfill`, `export`), or since the watermark (`sync`).
    pub(crate) ingested: Option<Ingested>,
    /// Query API only: skip what the plan counted empty (`sync`, whose ingestion bound lies
    /// `--lag` in the past, so PostHog has made those events queryable). `backfill` and
    /// `export` read it anyway: their bound is the job's start, with no such margin, and an
    /// event ingested just before it may become queryable after the count.
    pub(crate) skip_empty: bool,
    /// Query API only: plan by event name only, not by `cityHash64(distinct_id)` bucket
    /// (`sync`, whose runs read what a few minutes brought into days of many more events:
    /// counting by name reads half the bytes, without `distinct_id`).
    pub(crate) plan_by_name: bool,
    /// Where an event too large to read is set aside (`--dead-letter`); without, it stops
    /// the run.
    pub(crate) dead_letter: Option<Arc<crate::sinks::dead_letter::DeadLetter>>,
}

impl Reader {
    /// The same reader, setting aside events too large to read in `dead_letter`.
    pub(crate) fn dead_letter(
        mut self,
        dead_letter: Option<Arc<crate::sinks::dead_letter::DeadLetter>>,
    ) -> Self {
        self.dead_letter = dead_letter;
        self
    }

    /// Sends every event after `from` to `tx`, in order (see the sources' own docs).
    pub(crate) async fn run(
        self,
        from: Option<Cursor>,
        tx: tokio::sync::mpsc::Sender<Vec<Item<Cursor>>>,
    ) -> anyhow::Result<()> {
        let progress = self.client.progress().clone();
        let read = match self.kind {
            SourceKind::Events => self.read_events_api(from, tx).await,
            SourceKind::Query | SourceKind::Auto => Arc::new(self).read_query(from, tx).await,
        };
        if read.is_ok() {
            progress.set_status("all read; the last batches are being delivered".into());
        }
        read
    }
}

/// A time for status lines, to the second.
pub(crate) fn short(t: DateTime<Utc>) -> String {
    // RFC 3339, as the log lines' own times (to the second: positions to the microsecond
    // are in the summary and the checkpoint).
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_ending_after_now_is_refused_naming_the_latest_end_and_sync() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let now = t("2024-06-01T10:00:00.250Z");
        let range = |start, end| Range {
            start: t(start),
            end: t(end),
        };
        assert!(
            future_end(
                &range("2024-05-01T00:00:00Z", "2024-06-01T10:00:00Z"),
                now,
                "backfill"
            )
            .is_ok()
        );
        assert!(
            future_end(
                &range("2024-05-01T00:00:00Z", "2024-06-01T10:00:00.250Z"),
                now,
                "backfill"
            )
            .is_ok()
        );
        let err = future_end(
            &range("2024-05-01T00:00:00Z", "2024-06-02T00:00:00Z"),
            now,
            "backfill",
        )
        .unwrap_err();
        assert!(
            err.contains("--end 2024-06-01T10:00:00Z at the latest"),
            "{err}"
        );
        assert!(
            err.contains("`backfill` reads by event time") && err.contains("sync"),
            "{err}"
        );
        let err = future_end(
            &range("2024-07-01T00:00:00Z", "2024-08-01T00:00:00Z"),
            now,
            "export",
        )
        .unwrap_err();
        assert!(
            err.contains("--start (2024-07-01T00:00:00.000000Z) is in the future too"),
            "{err}"
        );
    }
}
