//! Where we decide to retry and how long to wait: exponential back-off with full jitter for
//! failures, the server's own `Retry-After` when it gives one, and a bound after which the run
//! stops (exit 75) so that the next run resumes from the checkpoint.

use crate::error::Stop;
use crate::pipeline::ledger::Stats;
use crate::progress::{Progress, human_duration};
use std::future::Future;
use std::time::Duration;

#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    /// Retries of one request after failures (5xx, timeouts, connection errors).
    pub(crate) max_retries: u32,
    /// First back-off ceiling; doubles each retry up to `cap`.
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
    /// The longest single wait a server may ask for (429 Retry-After) before we give up.
    pub(crate) max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 8,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(60),
            max_wait: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: a uniform wait between zero and the exponential ceiling, so that many
    /// clients retrying at once spread out (AWS architecture blog, "Exponential Backoff And Jitter").
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.min(20)))
            .min(self.cap);
        Duration::from_micros(fastrand::u64(0..=ceiling.as_micros() as u64))
    }
}

/// What one attempt of a request came to.
pub(crate) enum Attempt<T, E> {
    Done(T),
    /// A failure worth retrying (5xx, 408, a timeout, a garbled answer): counts toward
    /// `--max-retries`, even when the server names a wait (`after`).
    Retry {
        error: E,
        after: Option<Duration>,
    },
    /// A rate limit (429): not a failure, so it does not count toward `--max-retries`, but
    /// each wait is bounded by `--max-wait` (and the run by `--max-run-time`).
    Throttled {
        error: E,
        after: Option<Duration>,
    },
    /// A failure that retrying cannot fix.
    Fail(E),
}

/// Why [`retry`] gave up.
#[derive(Debug)]
pub(crate) enum GaveUp<E> {
    Fatal(E),
    Exhausted { retries: u32, last: E },
    WaitTooLong { wait: Duration, last: E },
}

impl<E: std::fmt::Display> GaveUp<E> {
    /// Turns the outcome into the error that ends the run: non-retryable errors as they are,
    /// exhausted retries as a temporary failure (exit 75).
    pub(crate) fn into_error(self, what: &str) -> anyhow::Error
    where
        E: Into<anyhow::Error>,
    {
        match self {
            GaveUp::Fatal(e) => e.into(),
            GaveUp::Exhausted { retries, last } => Stop::Temporary(format!(
                "{what} still failing after {retries} retries: {last}"
            ))
            .into(),
            GaveUp::WaitTooLong { wait, last } => Stop::Temporary(format!(
                "{what}: the server asks us to wait {} (more than --max-wait): {last}",
                human_duration(wait)
            ))
            .into(),
        }
    }
}

/// Runs `attempt` until it is done, fails for good, or the policy's bounds are reached:
/// `max_retries` failures, a wait longer than `max_wait`, or `MAX_THROTTLED` rate limits.
pub(crate) async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    progress: &Progress,
    what: &str,
    mut attempt: F,
) -> Result<T, GaveUp<E>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
{
    let mut failures = 0u32;
    let mut throttled = 0u32;
    loop {
        let failed_before = failures;
        let (error, wait) = match attempt().await {
            Attempt::Done(v) => return Ok(v),
            Attempt::Fail(e) => return Err(GaveUp::Fatal(e)),
            Attempt::Retry { error, after } => {
                if failures >= policy.max_retries {
                    return Err(GaveUp::Exhausted {
                        retries: failures,
                        last: error,
                    });
                }
                failures += 1;
                let wait = after.unwrap_or_else(|| policy.backoff(failures - 1));
                (error, wait)
            }
            Attempt::Throttled { error, after } => {
                throttled += 1;
                if throttled > MAX_THROTTLED {
                    return Err(GaveUp::Exhausted {
                        retries: throttled,
                        last: error,
                    });
                }
                (
                    error,
                    after.unwrap_or_else(|| policy.backoff(throttled - 1)),
                )
            }
        };
        if wait > policy.max_wait {
            return Err(GaveUp::WaitTooLong { wait, last: error });
        }
        // A little jitter on top so that parallel clients do not return together.
        let wait = wait.saturating_add(Duration::from_millis(fastrand::u64(0..250)));
        Stats::add(&progress.stats.retries, 1);
        if failures > failed_before {
            progress
                .wait_after_failure(&format!("{what}: {error}"), wait)
                .await;
        } else {
            progress.wait(&format!("{what}: {error}"), wait).await;
        }
    }
}

/// Rate-limit answers one request may get in a row before the run stops (exit 75).
const MAX_THROTTLED: u32 = 100;

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
            max_wait: Duration::from_millis(50),
        }
    }

    #[test]
    fn backoff_stays_under_the_exponential_ceiling() {
        let p = RetryPolicy::default();
        for retry in 0..12 {
            let ceiling = (p.base * 2u32.pow(retry)).min(p.cap);
            for _ in 0..50 {
                assert!(p.backoff(retry) <= ceiling);
            }
        }
    }

    #[tokio::test]
    async fn gives_up_after_max_retries_and_counts_them_even_when_the_server_names_a_wait() {
        for after in [None, Some(Duration::ZERO)] {
            let progress = Progress::silent();
            let calls = Cell::new(0);
            let out: Result<(), _> = retry(&fast(), &progress, "test", || {
                calls.set(calls.get() + 1);
                async move {
                    Attempt::Retry {
                        error: "503",
                        after,
                    }
                }
            })
            .await;
            assert!(
                matches!(out, Err(GaveUp::Exhausted { retries: 3, .. })),
                "{after:?}"
            );
            assert_eq!(calls.get(), 4);
            assert_eq!(Stats::get(&progress.stats.retries), 3);
        }
    }

    #[tokio::test]
    async fn a_server_wait_longer_than_max_wait_stops_the_run() {
        let progress = Progress::silent();
        for after in [Duration::from_secs(2202), Duration::MAX] {
            let out: Result<(), _> = retry(&fast(), &progress, "test", || async {
                Attempt::Throttled {
                    error: "throttled",
                    after: Some(after),
                }
            })
            .await;
            assert!(matches!(out, Err(GaveUp::WaitTooLong { .. })));
        }
    }

    #[tokio::test]
    async fn succeeds_after_transient_failures() {
        let progress = Progress::silent();
        let calls = Cell::new(0);
        let out = retry(&fast(), &progress, "test", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Attempt::Retry {
                        error: "503",
                        after: Some(Duration::from_millis(1)),
                    }
                } else {
                    Attempt::Done(n)
                }
            }
        })
        .await;
        assert_eq!(out.unwrap(), 3);
    }
}
