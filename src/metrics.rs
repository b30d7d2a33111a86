//! `--metrics-file PATH`: Prometheus text-format metrics written at the end of each run, for
//! node_exporter's textfile collector (docs/sync.md, "Monitoring"). Written whole or not at
//! all (a temporary file, then a rename); a failed run keeps the last success time the file
//! held.

use crate::pipeline::ledger::Stats;
use crate::progress::Progress;
use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a command's metrics go.
pub(crate) struct Target {
    pub(crate) path: PathBuf,
    pub(crate) command: &'static str,
}

const LAST_SUCCESS: &str = "posthog_patterns_last_success_timestamp_seconds";

/// Writes the metrics of a run that ended with `exit` (0 and 3 are successes: the range was
/// done, rejected events set aside).
pub(crate) fn write(target: &Target, progress: &Progress, exit: u8) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let success = exit == 0 || exit == crate::error::EXIT_REJECTED;
    let last_success = if success {
        Some(now.timestamp_millis() as f64 / 1000.0)
    } else {
        previous_success(&target.path, target.command)
    };
    let label = format!("{{command=\"{}\"}}", target.command);
    let s = &progress.stats;
    let mut text = String::new();
    let mut metric = |name: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{label} {v}\n"
            ));
        }
    };
    metric(
        LAST_SUCCESS,
        "Unix time at which the last successful run ended (exit 0 or 3).",
        last_success,
    );
    metric(
        "posthog_patterns_last_run_timestamp_seconds",
        "Unix time at which the last run ended, successful or not.",
        Some(now.timestamp_millis() as f64 / 1000.0),
    );
    metric(
        "posthog_patterns_last_run_exit_code",
        "Exit code of the last run (0 ok, 1 failed, 2 usage, 3 rejected events, 75 temporary, 130 interrupted).",
        Some(f64::from(exit)),
    );
    metric(
        "posthog_patterns_last_run_events_delivered",
        "Events the last run delivered (posted, or written by export).",
        Some(Stats::get(&s.posted) as f64),
    );
    metric(
        "posthog_patterns_last_run_events_dead_lettered",
        "Events the last run set aside in the dead-letter file.",
        Some(Stats::get(&s.dead_lettered) as f64),
    );
    metric(
        "posthog_patterns_last_run_duration_seconds",
        "How long the last run took.",
        Some(progress.elapsed().as_secs_f64()),
    );
    let watermark = *s.watermark.lock().unwrap_or_else(|e| e.into_inner());
    metric(
        "posthog_patterns_watermark_lag_seconds",
        "sync: how far behind now the watermark (events ingested up to it are delivered) is.",
        watermark.map(|w| (now - w).num_milliseconds() as f64 / 1000.0),
    );
    replace(&target.path, text.as_bytes())
}

/// The last success time the file held for `command`, if any.
fn previous_success(path: &Path, command: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let prefix = format!("{LAST_SUCCESS}{{command=\"{command}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Replaces `path` with `bytes` at once: a collector never reads half a file.
fn replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write the metrics file {}", path.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write the metrics file {}", path.display()))?;
    // Readable by the collector, which runs as another user.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path)
        .with_context(|| format!("cannot write the metrics file {}", path.display()))?;
    Ok(())
}
