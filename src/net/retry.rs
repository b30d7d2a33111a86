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

/// The count of one request's tries, and the one rule for how long to wait before the next
/// and when to give up: `max_retries` failures (a success that moved on starts the count
/// again: [`Tries::moved_on`]), `MAX_THROTTLED` rate limits, or a wait longer than
/// `max_wait`. [`retry`] drives it for a request made in one call; loops that try again on
/// their own (an answer cut short while it streamed, a query PostHog finds too costly) use it
/// directly, so that every request waits, counts and gives up the same way.
pub(crate) struct Tries<'a> {
    policy: &'a RetryPolicy,
    failures: u32,
    throttled: u32,
}

/// Why a request waits before its next try.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// It failed (a warning, whatever the wait: a failure is news).
    Failed,
    /// It failed the way a long read often does (an answer cut short by a proxy that closed an
    /// idle connection, a query PostHog was too busy to run): counted as a failure, but shown
    /// as a wait, not as a fault.
    Expected,
    /// A rate limit (shown as a wait, not as a fault).
    Throttled,
}

impl<'a> Tries<'a> {
    pub(crate) fn new(policy: &'a RetryPolicy) -> Self {
        Tries {
            policy,
            failures: 0,
            throttled: 0,
        }
    }

    /// The wait before trying again after `error`, or why not to: past the bounds. `after` is
    /// the wait the server named, if it did.
    pub(crate) fn next<E>(
        &mut self,
        why: Why,
        error: E,
        after: Option<Duration>,
    ) -> Result<(E, Duration), GaveUp<E>> {
        let (tries, limit) = match why {
            Why::Failed | Why::Expected => (&mut self.failures, self.policy.max_retries),
            Why::Throttled => (&mut self.throttled, MAX_THROTTLED),
        };
        if *tries >= limit {
            return Err(GaveUp::Exhausted {
                retries: *tries,
                last: error,
            });
        }
        *tries += 1;
        let wait = match after {
            // Full jitter below the back-off's ceiling.
            None => self.policy.backoff(*tries - 1),
            // A server may ask for at most `--max-wait`.
            Some(after) if after > self.policy.max_wait => {
                return Err(GaveUp::WaitTooLong {
                    wait: after,
                    last: error,
                });
            }
            // The server's own wait, with a little jitter on top, so that parallel clients do
            // not return together.
            Some(after) => after.saturating_add(Duration::from_millis(fastrand::u64(0..250))),
        };
        Ok((error, wait))
    }

    /// The request moved on since its last failure (an answer cut short handed on new rows):
    /// its failures count from zero again.
    pub(crate) fn moved_on(&mut self) {
        self.failures = 0;
    }
}

/// Waits `wait` before the next try (`message`: what is tried and what went wrong), counted
/// as a retry. A failure is news, whatever the wait: a warning; an expected failure's and a
/// rate limit's wait are told as [`wait`] tells them.
pub(crate) async fn pause(progress: &Progress, why: Why, message: &str, wait: Duration) {
    Stats::add(&progress.stats.retries, 1);
    match why {
        Why::Failed => {
            tracing::warn!("{message}; retrying in {}", human_duration(wait));
            sleep(progress, message, wait).await;
        }
        Why::Expected | Why::Throttled => self::wait(progress, message, wait).await,
    }
}

/// Sleeps `wait` before a request may go (a rate limit, a back-off, the pace of polling),
/// saying why in the log when the wait is long (at `-v`, whatever its length).
pub(crate) async fn wait(progress: &Progress, why: &str, wait: Duration) {
    if wait >= Duration::from_secs(5) {
        tracing::info!("{why}: waiting {}", human_duration(wait));
    } else if !wait.is_zero() {
        tracing::debug!("{why}: waiting {}", human_duration(wait));
    }
    sleep(progress, why, wait).await;
}

/// Sleeps, shown on the display while it lasts, and counted in the ledger's time waited.
async fn sleep(progress: &Progress, why: &str, wait: Duration) {
    let until = std::time::Instant::now() + wait;
    progress.show_wait(Some((why.to_string(), until)));
    tokio::time::sleep(wait).await;
    progress.show_wait(None);
    Stats::add(&progress.stats.waited_ms, wait.as_millis() as u64);
}

/// Runs `attempt` until it is done, fails for good, or the bounds of [`Tries`] are reached.
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
    let mut tries = Tries::new(policy);
    loop {
        let (why, error, after) = match attempt().await {
            Attempt::Done(v) => return Ok(v),
            Attempt::Fail(e) => return Err(GaveUp::Fatal(e)),
            Attempt::Retry { error, after } => (Why::Failed, error, after),
            Attempt::Throttled { error, after } => (Why::Throttled, error, after),
        };
        let (error, wait) = tries.next(why, error, after)?;
        pause(progress, why, &format!("{what}: {error}"), wait).await;
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

    #[test]
    fn every_loop_waits_the_same_first_back_off_and_starts_again_once_it_moved_on() {
        let policy = RetryPolicy {
            max_retries: 2,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_wait: Duration::from_secs(3600),
        };
        for _ in 0..50 {
            let mut tries = Tries::new(&policy);
            let (_, first) = tries.next(Why::Failed, "cut", None).unwrap();
            assert!(first <= Duration::from_secs(1), "{first:?}");
            let (_, second) = tries.next(Why::Failed, "cut", None).unwrap();
            assert!(second <= Duration::from_secs(2), "{second:?}");
            assert!(matches!(
                tries.next(Why::Failed, "cut", None),
                Err(GaveUp::Exhausted { retries: 2, .. })
            ));
            // A try that moved on: the failures count from zero, the first wait again.
            tries.moved_on();
            let (_, again) = tries.next(Why::Failed, "cut", None).unwrap();
            assert!(again <= Duration::from_secs(1), "{again:?}");
            // Rate limits are counted apart, and a wait the server names is kept (plus at
            // most 250 ms of jitter).
            let (_, named) = tries
                .next(Why::Throttled, "429", Some(Duration::from_secs(7)))
                .unwrap();
            assert!(named >= Duration::from_secs(7) && named < Duration::from_millis(7_250));
        }
    }
}
