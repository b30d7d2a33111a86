//! What makes two runs the same job (its identity: never a secret, the webhook only as a
//! fingerprint), and opening a reading job's state: lock, load, choose the API, check.

use crate::domain::JobId;
use crate::domain::SourceKind;
use crate::posthog::source::Connect;
use crate::settings::Connection;
use crate::settings::Resume;
use crate::state::checkpoint::{self, State, Store};

/// The identity every reading job starts from: where it reads and which events.
pub(crate) fn identity(
    command: &str,
    connection: &Connection,
    filters: &crate::domain::Filters,
) -> JobId {
    crate::domain::job([
        ("command", command.to_string()),
        ("host", connection.host.as_str().to_string()),
        ("project", connection.project.clone()),
        ("events", filters.include.join(",")),
        ("exclude_events", filters.exclude.join(",")),
    ])
}

/// A reading job's state, opened and checked, and the API it reads from.
pub(crate) struct Resumed<P> {
    pub(crate) store: Store,
    pub(crate) state: State<P>,
    pub(crate) source: SourceKind,
    /// No state existed: this is the job's first run.
    pub(crate) fresh: bool,
}

/// Opens the state of `job` (locking it), chooses the API to read from, and refuses a state
/// written for another job. The API is part of the job but not of the default path, so that
/// `--source` alone never silently starts a job afresh.
pub(crate) async fn resume<P: serde::de::DeserializeOwned>(
    connect: &Connect<'_>,
    requested: SourceKind,
    kind: &str,
    mut job: JobId,
    resume: &Resume,
) -> anyhow::Result<Resumed<P>> {
    let (store, stored) = checkpoint::open_job::<P>(kind, &job, resume)?;
    if stored.is_some() {
        connect.trust_the_host();
    }
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

/// The `created_at` bound of a `backfill` or `export` through the Query API: PostHog's time
/// when the job started, kept in its state (`now` on its first run, or on the first run of a
/// job whose state predates the bound).
pub(crate) fn ingested_until<P>(
    state: &mut State<P>,
    source: SourceKind,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<crate::posthog::hogql::Ingested> {
    if source == SourceKind::Events {
        return None;
    }
    let until = *state.ingested_until.get_or_insert(now);
    Some(crate::posthog::hogql::Ingested {
        after: None,
        until,
        settled: false,
    })
}

/// The range of a `backfill` or `export` job: for `--start`/`--end` relative to now (`-7d`,
/// `now`), what they stood for by PostHog's clock on the job's first run, kept in its state
/// (told once, when resolved); for times, those.
pub(crate) async fn resolve_range<P>(
    connect: &Connect<'_>,
    source: SourceKind,
    spec: &crate::settings::RangeSpec,
    state: &mut State<P>,
    progress: &crate::progress::Progress,
) -> anyhow::Result<crate::domain::Range> {
    for (flag, when) in [("--start", &spec.start), ("--end", &spec.end)] {
        if let Some(text) = when.naive() {
            progress.info(&format!(
                "{flag} {text} has no offset: read as UTC, {}",
                crate::event::format_ts(&when.resolve(chrono::Utc::now()))
            ));
        }
    }
    if !spec.is_relative() {
        return spec.resolve(chrono::Utc::now());
    }
    if let Some(range) = state.range {
        return Ok(range);
    }
    let range = spec.resolve(connect.now(source).await?)?;
    progress.info(&format!(
        "--start {} --end {}: {} → {} by PostHog's clock; later runs of this job keep it",
        spec.start.identity(),
        spec.end.identity(),
        crate::event::format_ts(&range.start),
        crate::event::format_ts(&range.end)
    ));
    state.range = Some(range);
    Ok(range)
}
