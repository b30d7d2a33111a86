//! The life of a job, in one place. A command describes its job ([`Job`]): its identity, what
//! its checkpoint keeps, its source, its sink and what to say at the end. The runner carries
//! it out: lock and resume, the identity check, the API it reads, "already complete?", the
//! passes through the pipeline with each acknowledged position committed, completion, the
//! ledger check, stopping on Ctrl-C, SIGTERM or `--max-run-time`, and the exit code.

use super::report::Report;
use crate::domain::{Cursor, JobId, SourceKind};
use crate::error::{EXIT_INTERRUPTED, EXIT_OK, EXIT_REJECTED, Stop};
use crate::pipeline::ledger::Stats;
use crate::pipeline::{self, Deliver, Delivered, Item, Posting};
use crate::posthog::source::Connect;
use crate::progress::Progress;
use crate::settings::Resume;
use crate::state::checkpoint::{self, State, Store};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What to do after an interruption, for jobs that keep a checkpoint.
pub(crate) const RESUME_HINT: &str =
    "the checkpoint holds every acknowledged batch, so running the same command again resumes";

/// A position as a job's checkpoint keeps it: read back from any format version this build
/// reads ([`Saved::upgraded`], applied by the runner when it opens the state).
pub(crate) trait Saved: Clone + Serialize + DeserializeOwned {
    /// The same position, read from a checkpoint of format version `version`.
    fn upgraded(self, _version: u32) -> Self {
        self
    }
}

impl Saved for Cursor {
    fn upgraded(self, version: u32) -> Self {
        self.upgrade(version, |m| tracing::warn!("{m}"))
    }
}

/// A job as its command describes it. The runner calls, in order: `prepare` once the state is
/// open; `open_sink` if there is work to do; `next_pass` until it says there is no more, with
/// `position` for every acknowledged batch and `pass_done` after each pass; `finish`; and
/// `summary`. A job that reads once returns a pass for `pass == 0` only.
pub(crate) trait Job {
    /// What the checkpoint keeps between runs.
    type Saved: Saved;
    /// Where a record stands in what the source reads (what an acknowledgement moves).
    type Place: Send + 'static;
    /// Where the job delivers.
    type Sink: Deliver;

    /// The job's identity and where its state is kept; `None`: a job that keeps no state
    /// (`send` from stdin, `export` to stdout).
    fn state(&self) -> Option<(&'static str, JobId, &Resume)>;

    /// For a job that reads PostHog: the connection and the API asked for (`--source`), which
    /// the runner resolves once (`auto`) and makes part of the job.
    fn posthog(&self) -> Option<(&Connect<'_>, SourceKind)> {
        None
    }

    /// `--max-run-time`.
    fn deadline(&self) -> Option<std::time::Duration>;

    /// Checks what the opened state holds against the job and readies the run; `Some(text)`:
    /// nothing to do, and `text` says why. A state marked complete (after `prepare`) is told
    /// by `already_complete`.
    async fn prepare(&mut self, run: &mut Run<Self::Saved>) -> anyhow::Result<Option<String>>;

    /// The summary of a run that found its job complete.
    fn already_complete(&self, _run: &Run<Self::Saved>) -> String {
        "already complete: nothing to do".into()
    }

    /// Opens the sink, once there is work to do (under the state's lock).
    fn open_sink(&mut self, run: &mut Run<Self::Saved>) -> anyhow::Result<Self::Sink>;

    /// Read number `pass` (from 0) of this run; `None` once it has read all it should.
    async fn next_pass(
        &mut self,
        run: &mut Run<Self::Saved>,
        sink: &Self::Sink,
        pass: usize,
    ) -> anyhow::Result<Option<Pass<Self::Place>>>;

    /// The checkpoint's position once everything up to `place` is delivered into `sink`.
    fn position(
        &self,
        sink: &Self::Sink,
        saved: Option<&Self::Saved>,
        place: &Self::Place,
    ) -> anyhow::Result<Self::Saved>;

    /// After a pass has read to its end.
    fn pass_done(&mut self, _run: &mut Run<Self::Saved>) -> anyhow::Result<()> {
        Ok(())
    }

    /// After the last pass: the position to keep, and whether the job is now complete (a
    /// `sync` never is).
    fn finish(&self, saved: &mut Option<Self::Saved>) -> anyhow::Result<bool>;

    /// The closing summary of a run that read all it should (the figures and the exit code
    /// are the runner's).
    fn summary(&self, run: &Run<Self::Saved>) -> String;

    /// For a job without a checkpoint: what to do after a failure or an interruption, as
    /// things stand when it happens (for `send` from stdin, the lines to feed again).
    fn recovery(&self) -> Option<Arc<dyn Fn() -> String + Send + Sync>> {
        None
    }
}

/// One run of a job: its state (opened and checked; for a job without a checkpoint, a state
/// that is never written), the API it reads, and the display.
pub(crate) struct Run<P> {
    pub(crate) state: State<P>,
    store: Option<Store>,
    /// No state existed: this is the job's first run.
    pub(crate) fresh: bool,
    /// The API a PostHog job reads (resolved from `auto`).
    pub(crate) source: SourceKind,
    pub(crate) progress: Arc<Progress>,
}

impl<P> Run<P> {
    /// Whether the job keeps a checkpoint.
    pub(crate) fn keeps_state(&self) -> bool {
        self.store.is_some()
    }

    /// The checkpoint path, for messages.
    pub(crate) fn shown_path(&self) -> String {
        self.store
            .as_ref()
            .map_or_else(String::new, |s| s.path().display().to_string())
    }
}

impl<P: Serialize> Run<P> {
    /// Writes the state now (nothing for a job without a checkpoint).
    pub(crate) fn save(&mut self) -> anyhow::Result<()> {
        match &self.store {
            Some(store) => store.save(&mut self.state),
            None => Ok(()),
        }
    }

    /// Records an acknowledged batch: the position after it and its counts, saved at once
    /// (kept in memory only, for a job without a checkpoint).
    fn commit(&mut self, position: P, done: Delivered) -> anyhow::Result<()> {
        match &self.store {
            Some(store) => store.commit(&mut self.state, position, done),
            None => {
                self.state.position = Some(position);
                self.state.counters.record(done);
                Ok(())
            }
        }
    }
}

/// One read through the pipeline: a source, how its records are batched, and what the
/// display shows as positions are committed.
pub(crate) struct Pass<P> {
    source: Source<P>,
    posting: Posting,
    shown: Option<Shown<P>>,
    /// `--event` names to warn about if no event of the pass carried them.
    names: Vec<String>,
}

/// A source: given the queue, the work that fills it.
type Source<P> =
    Box<dyn FnOnce(mpsc::Sender<Vec<Item<P>>>) -> BoxFuture<'static, anyhow::Result<()>> + Send>;
/// What the display does with each committed position.
type Shown<P> = Box<dyn Fn(&P) + Send + Sync>;

impl<P: Send + 'static> Pass<P> {
    pub(crate) fn new<Fut>(
        source: impl FnOnce(mpsc::Sender<Vec<Item<P>>>) -> Fut + Send + 'static,
        posting: Posting,
    ) -> Self
    where
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Pass {
            source: Box::new(move |tx| Box::pin(source(tx))),
            posting,
            shown: None,
            names: Vec::new(),
        }
    }

    /// Shows each committed position on the display as `show` says.
    pub(crate) fn showing(mut self, show: impl Fn(&P) + Send + Sync + 'static) -> Self {
        self.shown = Some(Box::new(show));
        self
    }

    /// Warns, after the pass, about each of these `--event` names that no event carried.
    pub(crate) fn warning_unseen(mut self, names: Vec<String>) -> Self {
        self.names = names;
        self
    }
}

/// Runs `job` to its end, or to Ctrl-C, SIGTERM or `--max-run-time`.
pub(crate) async fn run<J: Job>(job: &mut J, progress: &Arc<Progress>) -> anyhow::Result<Report> {
    let deadline = job.deadline();
    let recovery = job.recovery();
    let hint = || {
        recovery
            .as_ref()
            .map_or_else(|| RESUME_HINT.to_string(), |r| r())
    };
    let result = interruptible(lifecycle(job, progress), deadline, hint).await;
    // Without a checkpoint, a failure says how to carry on, too.
    match &recovery {
        Some(recovery) => result.map_err(|e| match crate::error::exit_code_of(&e) {
            EXIT_INTERRUPTED => e,
            _ => crate::error::with_hint(e, &recovery()),
        }),
        None => result,
    }
}

async fn lifecycle<J: Job>(job: &mut J, progress: &Arc<Progress>) -> anyhow::Result<Report> {
    let mut run = open(job, progress).await?;
    if let Some(nothing_to_do) = job.prepare(&mut run).await? {
        return Ok(Report::ok(nothing_to_do));
    }
    if run.state.complete {
        return Ok(Report::ok(job.already_complete(&run)));
    }
    run.state.counters.runs += 1;
    let sink = job.open_sink(&mut run)?;
    let ticker = progress.start();
    let mut unseen = Vec::new();
    let mut passes = 0;
    while let Some(pass) = job.next_pass(&mut run, &sink, passes).await? {
        passes += 1;
        let Pass {
            source,
            posting,
            shown,
            names,
        } = pass;
        let described = &*job;
        pipeline::run(
            source,
            posting,
            &sink,
            &progress.stats,
            |place, done: Delivered| {
                let position = described.position(&sink, run.state.position.as_ref(), place)?;
                run.commit(position, done)?;
                if let Some(show) = &shown {
                    show(place);
                }
                Ok(())
            },
        )
        .await?;
        progress.tick();
        progress.stats.check()?;
        unseen.extend(
            progress
                .stats
                .names_not_seen(&names)
                .into_iter()
                .map(str::to_owned),
        );
        job.pass_done(&mut run)?;
    }
    drop(ticker);
    for name in unseen {
        tracing::warn!(
            "no event named {name:?} in the range: is the name right? (event names are case-sensitive, e.g. $pageview)"
        );
    }
    // A run that found nothing to read (a sync with nothing new) leaves its state as it was.
    let mut completed = false;
    if passes > 0 {
        completed = job.finish(&mut run.state.position)?;
        run.state.complete |= completed;
        run.save()?;
    }
    let s = &progress.stats;
    let mut summary = job.summary(&run);
    // Exit 3: some events (or input lines) were set aside rather than delivered, by this run,
    // or, for the run that completes a job, by an earlier run of it (one that was interrupted
    // and resumed), so that whoever waits for the job's end hears of them.
    let this_run = Stats::get(&s.dead_lettered) + Stats::get(&s.skipped);
    let earlier = match completed {
        true => (run.state.counters.dead_lettered).saturating_sub(Stats::get(&s.dead_lettered)),
        false => 0,
    };
    if earlier > 0 {
        summary.push_str(&format!(
            "\n  earlier runs of this job set {} aside (exit 3)",
            crate::progress::count(earlier, "event", "events")
        ));
    }
    Ok(Report {
        exit: if this_run + earlier > 0 {
            EXIT_REJECTED
        } else {
            EXIT_OK
        },
        summary,
    })
}

/// Opens the state of `job` (locking it), chooses the API a PostHog job reads, and refuses a
/// state written for another job. The API is part of the job but not of the default path, so
/// that `--source` alone never silently starts a job afresh. A job without a checkpoint gets
/// a state that is never written.
async fn open<J: Job>(job: &J, progress: &Arc<Progress>) -> anyhow::Result<Run<J::Saved>> {
    let (store, stored, mut id) = match job.state() {
        Some((kind, id, resume)) => {
            let (store, stored) = checkpoint::open_job::<J::Saved>(kind, &id, resume)?;
            (Some(store), stored, id)
        }
        None => (None, None, JobId::new()),
    };
    let source = match job.posthog() {
        Some((connect, requested)) => {
            if stored.is_some() {
                connect.trust_the_host();
            }
            let source = connect
                .choose(requested, stored.as_ref().map(|s| &s.job))
                .await?;
            id.insert("source".into(), source.name().into());
            source
        }
        None => SourceKind::Auto,
    };
    let fresh = stored.is_none();
    let mut state = match (stored, &store) {
        (Some(state), Some(store)) => {
            checkpoint::check_job(store.path(), &state.job, &id)?;
            state
        }
        _ => State::new(id),
    };
    // A position written by an earlier format, as this build reads it.
    let version = state.version;
    state.position = state.position.take().map(|p| p.upgraded(version));
    Ok(Run {
        state,
        store,
        fresh,
        source,
        progress: progress.clone(),
    })
}

/// What a job's state holds, read through the same code as a run (its path, format version
/// and command checked), without taking its lock: for `config check`. `None`: no state yet.
pub(crate) fn peek<P: DeserializeOwned>(
    kind: &str,
    id: &JobId,
    resume: &Resume,
) -> anyhow::Result<(std::path::PathBuf, Option<State<P>>)> {
    let path = checkpoint::path_of(kind, id, resume);
    let state = checkpoint::read(&path, Some(kind))?;
    Ok((path, state))
}

/// Ends `work` on Ctrl-C or SIGTERM with [`Stop::Interrupted`] and the text `hint` gives then,
/// and after `deadline` (`--max-run-time`) with [`Stop::Temporary`]. Checkpoints are written
/// synchronously between awaits, so stopping never leaves one half-written; batches in flight
/// are abandoned, and posted again by the next run.
async fn interruptible<T>(
    work: impl Future<Output = anyhow::Result<T>>,
    deadline: Option<std::time::Duration>,
    hint: impl FnOnce() -> String,
) -> anyhow::Result<T> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let out_of_time = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Err(Stop::Interrupted(hint()).into()),
        _ = term.recv() => Err(Stop::Interrupted(hint()).into()),
        _ = out_of_time => Err(Stop::Temporary(format!(
            "stopped after --max-run-time ({}); {}",
            crate::progress::human_duration(deadline.unwrap_or_default()),
            hint()
        ))
        .into()),
    };
    // What the run dropped may have left PostHog running queries (asynchronous ones).
    crate::posthog::polled::cancel_abandoned().await;
    result
}
