//! What the commands that read PostHog share: connecting, choosing the API, checking that
//! every event read is accounted for, and the figures of the closing summary.

use crate::checkpoint::{self, JobId, State, Store};
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

impl<'a> Connect<'a> {
    pub fn new(
        connection: &'a Connection,
        retries: &'a Retries,
        progress: &'a Arc<Progress>,
    ) -> anyhow::Result<Self> {
        Ok(Connect {
            http: crate::http::client(retries.http_timeout)?,
            connection,
            retries,
            progress,
        })
    }

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

/// The identity every reading job starts from: where it reads and which events.
pub fn identity(command: &str, connection: &Connection, filters: &crate::source::Filters) -> JobId {
    checkpoint::job([
        ("command", command.to_string()),
        ("host", connection.host.as_str().to_string()),
        ("project", connection.project.clone()),
        ("events", filters.include.join(",")),
        ("exclude_events", filters.exclude.join(",")),
    ])
}

/// A reading job's state, opened and checked, and the API it reads from.
pub struct Resumed<P> {
    pub store: Store,
    pub state: State<P>,
    pub source: SourceKind,
    /// No state existed: this is the job's first run.
    pub fresh: bool,
}

/// Opens the state of `job` (locking it), chooses the API to read from, and refuses a state
/// written for another job. The API is part of the job but not of the default path, so that
/// `--source` alone never silently starts a job afresh.
pub async fn resume<P: serde::de::DeserializeOwned>(
    connect: &Connect<'_>,
    requested: SourceKind,
    kind: &str,
    mut job: JobId,
    explicit: Option<&std::path::Path>,
    restart: bool,
) -> anyhow::Result<Resumed<P>> {
    let (store, stored) = checkpoint::open_job::<P>(kind, &job, explicit, restart)?;
    let source = connect
        .choose(requested, stored.as_ref().map(|s| &s.job))
        .await?;
    job.insert("source".into(), source.name().into());
    let fresh = stored.is_none();
    let state = match stored {
        Some(state) => {
            checkpoint::check_job(store.path(), &state.job, &job)?;
            state
        }
        None => State::new(job),
    };
    Ok(Resumed {
        store,
        state,
        source,
        fresh,
    })
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
