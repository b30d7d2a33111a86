//! Resume checkpoints: a small JSON state file per job, naming the job (never a secret) and
//! the position after the last acknowledged batch. Written atomically (temp file, fsync,
//! rename, mode 0600) and guarded by an exclusive lock so that two runs never share it.
//! Format: docs/checkpoints.md.

use crate::domain::JobId;
use crate::error::Stop;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The format written. Version 2 (storage-order positions of the Query API, `ingested_until`)
/// also reads version 1: see docs/checkpoints.md.
pub(crate) const VERSION: u32 = 2;

/// Totals over all runs of a job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub(crate) posted: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) batches: u64,
    pub(crate) runs: u64,
}

impl Counters {
    /// Counts one delivered batch (or none, for a position that moved without events).
    pub(crate) fn record(&mut self, done: crate::pipeline::Delivered) {
        self.posted += done.posted as u64;
        self.dead_lettered += done.dead_lettered as u64;
        self.batches += u64::from(done.posted + done.dead_lettered > 0);
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct State<P> {
    pub(crate) version: u32,
    pub(crate) job: JobId,
    /// Everything before this position has been acknowledged (or dead-lettered).
    pub(crate) position: Option<P>,
    pub(crate) complete: bool,
    pub(crate) counters: Counters,
    pub(crate) updated_at: String,
    /// `backfill` and `export` through the Query API: PostHog's time when the job started.
    /// Every run of the job reads the events ingested up to then, so the plan's counts stay
    /// true however long it takes; events ingested later are `sync`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ingested_until: Option<chrono::DateTime<chrono::Utc>>,
    /// `backfill` and `export` given `--start`/`--end` relative to now (`-7d`, `now`): the
    /// range they stood for by PostHog's clock when the job started, kept for its later runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) range: Option<crate::domain::Range>,
}

impl<P> State<P> {
    pub(crate) fn new(job: JobId) -> Self {
        State {
            version: VERSION,
            job,
            position: None,
            complete: false,
            counters: Counters::default(),
            updated_at: String::new(),
            ingested_until: None,
            range: None,
        }
    }
}

/// The directory for default state files: `$POSTHOG_PATTERNS_STATE_DIR`, else
/// `$XDG_STATE_HOME/posthog-patterns`, else `~/.local/state/posthog-patterns`.
pub(crate) fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("POSTHOG_PATTERNS_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("posthog-patterns");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/posthog-patterns")
}

/// `<state dir>/<kind>-<hash of the job>.json`: the same command finds its own state.
pub(crate) fn default_path(kind: &str, job: &JobId) -> PathBuf {
    let text = serde_json::to_string(job).expect("maps serialize");
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    state_dir().join(format!("{kind}-{hex}.json"))
}

/// Locks the state file of `job` (`explicit`, or the default path of `kind` and `job`),
/// discards it with `restart`, and reads what it holds (not yet checked against the job).
pub(crate) fn open_job<P: DeserializeOwned>(
    kind: &str,
    job: &JobId,
    resume: &crate::settings::Resume,
) -> anyhow::Result<(Store, Option<State<P>>)> {
    let path = path_of(kind, job, resume);
    let store = Store::open_when(&path, resume.if_locked, resume.max_wait)?;
    if resume.restart {
        store.remove()?;
    }
    let stored = store.load(job.get("command").map(String::as_str))?;
    Ok((store, stored))
}

/// The state file of `job`: `--checkpoint`, or the default path of `kind` and `job`.
pub(crate) fn path_of(kind: &str, job: &JobId, resume: &crate::settings::Resume) -> PathBuf {
    resume
        .checkpoint
        .clone()
        .unwrap_or_else(|| default_path(kind, job))
}

/// An open, locked state file.
pub(crate) struct Store {
    path: PathBuf,
    _lock: File,
}

impl Store {
    /// Locks `<path>.lock` as `--if-locked` says when another run holds it: fail at once
    /// ([`Stop::Locked`], exit 75), skip ([`Stop::Skipped`], exit 0 in silence), or wait for
    /// it at most `max_wait`.
    pub(crate) fn open_when(
        path: &Path,
        if_locked: crate::cli::IfLocked,
        max_wait: std::time::Duration,
    ) -> anyhow::Result<Store> {
        use crate::cli::IfLocked;
        let deadline = std::time::Instant::now() + max_wait;
        loop {
            match Store::open(path) {
                Err(e) if is_locked(&e) => match if_locked {
                    IfLocked::Fail => return Err(e),
                    IfLocked::Skip => return Err(Stop::Skipped.into()),
                    IfLocked::Wait if std::time::Instant::now() < deadline => {
                        // Blocking is fine: nothing else can go on before the job's state.
                        std::thread::sleep(std::time::Duration::from_millis(250));
                    }
                    IfLocked::Wait => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// Locks `<path>.lock`; if another run holds it, fails at once with [`Stop::Locked`].
    pub(crate) fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Event positions and job names are nobody else's business: 0700 (umask can only
            // take bits away). An existing directory keeps its mode.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        }
        let lock_path = lock_path(path);
        // Never unlinked: another run may be waiting on this very file.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
        match lock.try_lock() {
            // The holder's PID, for the message of a run that finds it locked (advice only:
            // the lock itself is what counts).
            Ok(()) => {
                let _ = lock
                    .set_len(0)
                    .and_then(|()| (&lock).write_all(std::process::id().to_string().as_bytes()));
            }
            Err(TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(&lock_path)
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
                return Err(Stop::Locked {
                    path: path.to_path_buf(),
                    pid,
                }
                .into());
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()));
            }
        }
        let store = Store {
            path: path.to_path_buf(),
            _lock: lock,
        };
        store.remove_stale_temp_files();
        Ok(store)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `.<state file name>.`: the temporary files of this state file only.
    fn temp_prefix(&self) -> String {
        format!(
            ".{}.",
            self.path.file_name().unwrap_or_default().to_string_lossy()
        )
    }

    /// Removes temporary files a killed run left beside this state file. Called with the lock
    /// held, and only for this state file's prefix: another job's files are not ours.
    fn remove_stale_temp_files(&self) {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let prefix = self.temp_prefix();
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Reads the state, if any, of a `command` job (`None`: whatever wrote it).
    pub(crate) fn load<P: DeserializeOwned>(
        &self,
        command: Option<&str>,
    ) -> anyhow::Result<Option<State<P>>> {
        read(&self.path, command)
    }

    /// Replaces the state atomically: a crash leaves either the old or the new file, whole.
    pub(crate) fn save<P: Serialize>(&self, state: &mut State<P>) -> anyhow::Result<()> {
        // A position of an older format was upgraded when the state was opened.
        state.version = VERSION;
        state.updated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let write = || -> std::io::Result<()> {
            // Mode 0600; named after this state file, so that only a run holding its lock
            // cleans up what a killed run left.
            let mut tmp = tempfile::Builder::new()
                .prefix(&self.temp_prefix())
                .suffix(".tmp")
                .tempfile_in(dir)?;
            serde_json::to_writer_pretty(&mut tmp, state)?;
            tmp.write_all(b"\n")?;
            tmp.as_file().sync_all()?;
            tmp.persist(&self.path).map_err(|e| e.error)?;
            File::open(dir)?.sync_all()
        };
        write().with_context(|| format!("cannot write the checkpoint {}", self.path.display()))
    }

    /// Records an acknowledged batch: the position after it and its counts, saved at once.
    pub(crate) fn commit<P: Serialize>(
        &self,
        state: &mut State<P>,
        position: P,
        done: crate::pipeline::Delivered,
    ) -> anyhow::Result<()> {
        state.position = Some(position);
        state.counters.record(done);
        self.save(state)
    }

    pub(crate) fn remove(&self) -> anyhow::Result<()> {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e)
                .with_context(|| format!("cannot remove the checkpoint {}", self.path.display())),
            _ => Ok(()),
        }
    }
}

/// Reads the state at `path`, if any, of a `command` job (`None`: whatever wrote it), with
/// or without its lock. A file that does not parse is an error, never a fresh start.
pub(crate) fn read<P: DeserializeOwned>(
    path: &Path,
    command: Option<&str>,
) -> anyhow::Result<Option<State<P>>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the checkpoint {}", path.display()));
        }
    };
    let corrupt = |e: serde_json::Error| {
        anyhow::anyhow!(
            "the checkpoint {} is corrupt ({e}); nothing was sent. Inspect or move it aside, or pass --restart to start the job from the beginning",
            path.display()
        )
    };
    // First as any state: a state file of another command is another job, not corrupt.
    let any: State<serde_json::Value> = serde_json::from_str(&text).map_err(corrupt)?;
    if !(1..=VERSION).contains(&any.version) {
        bail!(
            "the checkpoint {} has format version {}, this posthog-patterns reads versions 1 to {VERSION}; use the version that wrote it, or --restart",
            path.display(),
            any.version
        );
    }
    if let Some(command) = command
        && any.job.get("command").map(String::as_str) != Some(command)
    {
        return Err(Stop::Usage(format!(
            "the checkpoint {} belongs to a different job (a {} job, not {command}); pass --restart to discard it, or choose another --checkpoint",
            path.display(),
            any.job.get("command").map_or("unknown", String::as_str)
        ))
        .into());
    }
    let state: State<P> = serde_json::from_str(&text).map_err(corrupt)?;
    Ok(Some(state))
}

fn is_locked(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Stop>()
        .is_some_and(|s| matches!(s, Stop::Locked { .. }))
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

/// Refuses a state file written for another job, naming what differs.
pub(crate) fn check_job(path: &Path, found: &JobId, expected: &JobId) -> anyhow::Result<()> {
    if found == expected {
        return Ok(());
    }
    let keys: std::collections::BTreeSet<&String> = found.keys().chain(expected.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| found.get(*k) != expected.get(*k))
        .map(|k| {
            format!(
                "{k}: checkpoint has {}, this run has {}",
                found.get(k).map_or("nothing", String::as_str),
                expected.get(k).map_or("nothing", String::as_str)
            )
        })
        .collect();
    Err(Stop::Usage(format!(
        "the checkpoint {} belongs to a different job ({}); pass --restart to discard it, or choose another --checkpoint",
        path.display(),
        diffs.join("; ")
    ))
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn job(start: &str) -> JobId {
        [("command", "backfill"), ("start", start)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn saves_atomically_with_private_mode_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let store = Store::open(&path).unwrap();
        assert!(store.load::<u64>(None).unwrap().is_none());
        let mut state = State::new(job("a"));
        state.position = Some(42u64);
        store.save(&mut state).unwrap();
        let back: State<u64> = store.load(None).unwrap().unwrap();
        assert_eq!(back, state);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 2, "state and lock file only, no temp files");
    }

    #[test]
    fn a_second_store_on_the_same_path_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let _first = Store::open(&path).unwrap();
        let err = Store::open(&path).err().unwrap();
        assert_eq!(crate::error::exit_code_of(&err), 75);
        assert!(err.to_string().contains("another posthog-patterns run"));
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        fs::write(&path, "{\"version\":1,\"job\":{},\"posi").unwrap();
        let store = Store::open(&path).unwrap();
        let err = store.load::<u64>(None).unwrap_err().to_string();
        assert!(err.contains("is corrupt"), "{err}");
        assert!(err.contains("--restart"));
    }

    #[test]
    fn another_jobs_state_is_refused_naming_the_difference() {
        let err =
            check_job(Path::new("s.json"), &job("2024-01-01"), &job("2024-02-01")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("start: checkpoint has 2024-01-01, this run has 2024-02-01"),
            "{text}"
        );
        assert_eq!(crate::error::exit_code_of(&err), 2);
        assert!(check_job(Path::new("s"), &job("a"), &job("a")).is_ok());
    }

    #[test]
    fn default_path_depends_on_the_job() {
        assert_ne!(
            default_path("backfill", &job("a")),
            default_path("backfill", &job("b"))
        );
        assert_eq!(
            default_path("backfill", &job("a")),
            default_path("backfill", &job("a"))
        );
    }
}
