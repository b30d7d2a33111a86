//! The ways a run can end other than "failed" (exit 1), each with its documented exit code.
//! See docs/exit-codes.md; the numbers are part of the interface.

use std::path::PathBuf;

pub(crate) const EXIT_OK: u8 = 0;
pub(crate) const EXIT_FAILURE: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_REJECTED: u8 = 3;
pub(crate) const EXIT_TEMPFAIL: u8 = 75;
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// Errors whose exit code is not the generic 1. Anything else that ends a run exits 1.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Stop {
    /// The command line or configuration is wrong; nothing was read or sent.
    #[error("{0}")]
    Usage(String),
    /// Another run holds the state lock (exit 75: try again later).
    #[error(
        "another posthog-patterns run{} holds the lock on {}; it is still running, so this one stops (exit 75). Try again when it has finished.",
        pid.map_or(String::new(), |p| format!(" (PID {p})")),
        path.display()
    )]
    Locked { path: PathBuf, pid: Option<u32> },
    /// A service kept failing (retries exhausted, rate-limit wait too long). Exit 75:
    /// running the same command later resumes from the checkpoint.
    #[error("{0}")]
    Temporary(String),
    /// Another run holds the lock and `--if-locked skip` was given: exit 0, without a word.
    #[error("another run holds the lock; skipped")]
    Skipped,
    /// Ctrl-C or SIGTERM; the text says how to carry on.
    #[error("interrupted; {0}")]
    Interrupted(String),
}

impl Stop {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Stop::Usage(_) => EXIT_USAGE,
            Stop::Locked { .. } | Stop::Temporary(_) => EXIT_TEMPFAIL,
            Stop::Interrupted(_) => EXIT_INTERRUPTED,
            Stop::Skipped => EXIT_OK,
        }
    }
}

/// The exit code for an error that ended a run: a [`Stop`] anywhere in its chain decides,
/// otherwise 1.
pub(crate) fn exit_code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Stop>())
        .map_or(EXIT_FAILURE, Stop::exit_code)
}

/// An error and its causes on one line.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `err` followed by `hint` ("error; what to do"), keeping the exit code `err` had.
pub(crate) fn with_hint(err: anyhow::Error, hint: &str) -> anyhow::Error {
    let msg = format!("{err:#}; {hint}");
    match exit_code_of(&err) {
        EXIT_USAGE => Stop::Usage(msg).into(),
        EXIT_TEMPFAIL => Stop::Temporary(msg).into(),
        EXIT_INTERRUPTED => err,
        _ => anyhow::anyhow!(msg),
    }
}

pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    Stop::Usage(msg.into()).into()
}
