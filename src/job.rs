//! What the commands that read PostHog share: connecting, choosing the API, checking that
//! every event read is accounted for, and the figures of the closing summary.

use crate::checkpoint::JobId;
use crate::config::Retries;
use crate::posthog::{Connection, PostHog};
use crate::progress::{Progress, Stats, human_duration, thousands};
use crate::source::{self, SourceKind};
use std::sync::Arc;

/// Makes PostHog clients sharing one HTTP client.
pub struct Connect<'a> {
    pub http: reqwest::Client,
    pub connection: &'a Connection,
    pub retries: &'a Retries,
    pub progress: &'a Arc<Progress>,
}

impl Connect<'_> {
    /// A client with the request budget of the API `kind`.
    pub fn client(&self, kind: SourceKind) -> Arc<PostHog> {
        Arc::new(PostHog::new(
            self.http.clone(),
            self.connection.clone(),
            self.retries.budget(kind),
            self.retries.policy.clone(),
            self.progress.clone(),
        ))
    }

    /// The API to read: `auto` resumes a job with the API it started with, and otherwise asks
    /// PostHog (falling back to the Events API where there is no Query API).
    pub async fn choose(
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
            (kind, _) => source::resolve(kind, &self.client(kind)).await,
        }
    }
}

/// Fails loudly unless every event read was posted, dead-lettered, filtered out or dropped as
/// a duplicate row.
pub fn check_counts(progress: &Progress) -> anyhow::Result<()> {
    let s = &progress.stats;
    let (read, dups, filtered) = (
        Stats::get(&s.read),
        Stats::get(&s.duplicates_dropped),
        Stats::get(&s.filtered),
    );
    let (posted, dead, skipped) = (
        Stats::get(&s.posted),
        Stats::get(&s.dead_lettered),
        Stats::get(&s.skipped),
    );
    if read != dups + filtered + skipped + posted + dead {
        anyhow::bail!(
            "event count mismatch: read {read} ({dups} duplicate rows dropped, {filtered} filtered out, {skipped} invalid skipped) but delivered {posted} and dead-lettered {dead}; the checkpoint was not marked complete. This is a bug: please report it"
        );
    }
    Ok(())
}

/// `read … / posted … / retries … / took …` lines for a summary. `posted` names what the
/// sink did (posted to the webhook, written to a file).
pub fn figures(progress: &Progress, posted: &str) -> String {
    let s = &progress.stats;
    let (read, dups, filtered) = (
        Stats::get(&s.read),
        Stats::get(&s.duplicates_dropped),
        Stats::get(&s.filtered),
    );
    let delivered = Stats::get(&s.posted);
    let secs = progress.elapsed().as_secs_f64().max(0.001);
    let notes: Vec<String> = [(dups, "duplicate rows dropped"), (filtered, "filtered out")]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{} {what}", thousands(n)))
        .collect();
    let mut out = format!(
        "  read     {} events{}{}\n  {posted:<8} {} events in {} batches{}\n  retries  {}, waited {}\n  took     {} ({} events/s)",
        thousands(read),
        match Stats::get(&s.source_requests) {
            0 => String::new(),
            n => format!(" in {} PostHog requests", thousands(n)),
        },
        if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        },
        thousands(delivered),
        thousands(Stats::get(&s.batches)),
        match Stats::get(&s.sink_requests) {
            0 => String::new(),
            n => format!(", {} webhook requests", thousands(n)),
        },
        Stats::get(&s.retries),
        human_duration(std::time::Duration::from_millis(Stats::get(&s.waited_ms))),
        human_duration(progress.elapsed()),
        thousands((delivered as f64 / secs) as u64),
    );
    let dead = Stats::get(&s.dead_lettered);
    if dead > 0 {
        out.push_str(&format!(
            "\n  dead-lettered {} events the webhook rejected",
            thousands(dead)
        ));
    }
    out
}
