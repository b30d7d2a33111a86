//! Queries PostHog answers asynchronously: a 202 with a `query_status` instead of the rows
//! (it may, under load, although this tool asks for blocking answers). The query is polled,
//! `GET /api/projects/{id}/query/{query_id}/`, backing off from 1 to 10 s, until it completes;
//! its rows are then read from `query_status.results` as from a blocking answer. A query that
//! has not completed within `--http-timeout`, or whose run stops (Ctrl-C, SIGTERM,
//! `--max-run-time`, an error), is cancelled (`DELETE`) so that it stops reading.

use super::error::ApiError;
use crate::net::http::{Reply, SendError};
use crate::net::retry::{GaveUp, RetryPolicy};
use crate::progress::Progress;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An answer to a query: read as it arrives (a blocking answer), or already whole (the result
/// of a query answered asynchronously).
pub(crate) enum Answer {
    Streamed(reqwest::Response),
    Whole(bytes::Bytes),
}

impl Answer {
    /// The next piece of the answer, within `idle`; `None` at its end.
    pub(crate) async fn next_chunk(
        &mut self,
        idle: Duration,
    ) -> Result<Option<bytes::Bytes>, SendError> {
        match self {
            Answer::Streamed(resp) => crate::net::http::next_chunk(resp, idle).await,
            Answer::Whole(rest) if rest.is_empty() => Ok(None),
            // In pieces, as a blocking answer comes: the reader keeps only a piece and a row.
            Answer::Whole(rest) => Ok(Some(rest.split_to(rest.len().min(PIECE)))),
        }
    }
}

const PIECE: usize = 1 << 20;

/// The first and the longest wait between polls (full jitter below each, as for retries).
const FIRST_POLL: Duration = Duration::from_secs(1);
const LONGEST_POLL: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Polled<'a> {
    #[serde(borrow)]
    query_status: Status<'a>,
}

#[derive(Deserialize)]
struct Status<'a> {
    id: Option<String>,
    complete: Option<bool>,
    error: Option<bool>,
    error_message: Option<String>,
    #[serde(borrow)]
    results: Option<&'a RawValue>,
}

/// How polling ended, when it gave no rows.
pub(super) enum NoAnswer {
    /// Not complete within `--http-timeout`, or failed for what it would read: cancelled, and
    /// to be treated as PostHog's 504.
    TooSlow(String),
    Failed(GaveUp<ApiError>),
}

/// Asynchronous queries of this process not yet complete (their cancel requests, by a number
/// of their own), and the cancels sent for those dropped before they completed.
struct Registry {
    running: std::collections::BTreeMap<u64, reqwest::RequestBuilder>,
    next: u64,
    sent: Vec<tokio::task::JoinHandle<()>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    running: std::collections::BTreeMap::new(),
    next: 0,
    sent: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cancels the asynchronous queries a stopped run leaves running (the reader may still be
/// winding down in its own task), and waits up to 3 s for PostHog to take the cancels.
pub(crate) async fn cancel_abandoned() {
    let (running, sent) = {
        let mut r = registry();
        let running: Vec<_> = std::mem::take(&mut r.running).into_values().collect();
        (running, std::mem::take(&mut r.sent))
    };
    if running.is_empty() && sent.is_empty() {
        return;
    }
    let cancels = running.into_iter().map(send_cancel);
    let all = futures_util::future::join(
        futures_util::future::join_all(cancels),
        futures_util::future::join_all(sent),
    );
    let _ = tokio::time::timeout(Duration::from_secs(3), all).await;
}

/// A query PostHog runs asynchronously, registered until it completes or is cancelled; one
/// dropped before either is cancelled then.
struct Running(u64);

impl Running {
    fn start(cancel: reqwest::RequestBuilder) -> Self {
        let mut r = registry();
        r.next += 1;
        let key = r.next;
        r.running.insert(key, cancel);
        Running(key)
    }

    fn done(&mut self) {
        registry().running.remove(&self.0);
    }

    /// Cancels it now, and waits (up to 3 s) for PostHog to say so.
    async fn cancel(&mut self) {
        let cancel = registry().running.remove(&self.0);
        if let Some(req) = cancel {
            send_cancel(req).await;
        }
    }
}

/// Sends a `DELETE` of a query, giving PostHog up to 3 s to take it.
async fn send_cancel(req: reqwest::RequestBuilder) {
    let _ = tokio::time::timeout(Duration::from_secs(3), req.send()).await;
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut r = registry();
        let (Some(req), Ok(runtime)) = (
            r.running.remove(&self.0),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        let task = runtime.spawn(send_cancel(req));
        r.sent.push(task);
    }
}

/// The id of the query PostHog answered with `accepted` (a 202), to poll it by.
pub(super) fn query_id(accepted: &Reply) -> Result<String, NoAnswer> {
    serde_json::from_slice::<Polled<'_>>(&accepted.body)
        .ok()
        .and_then(|p| p.query_status.id)
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .ok_or_else(|| {
            NoAnswer::Failed(GaveUp::Fatal(ApiError::Async {
                excerpt: accepted.excerpt(),
            }))
        })
}

/// Polls a query until it completes (`fetch` asks for its status; `cancel` is the request
/// that cancels it, sent if it runs past `timeout` or the run drops it); its result as a
/// blocking answer's body.
pub(super) async fn poll<Fut>(
    cancel: reqwest::RequestBuilder,
    retry: &RetryPolicy,
    timeout: Duration,
    progress: &Progress,
    mut fetch: impl FnMut() -> Fut,
) -> Result<Reply, NoAnswer>
where
    Fut: std::future::Future<Output = Result<Reply, GaveUp<ApiError>>>,
{
    let started = Instant::now();
    let mut running = Running::start(cancel);
    let pace = RetryPolicy {
        base: FIRST_POLL,
        cap: LONGEST_POLL,
        ..retry.clone()
    };

    let mut poll = 0u32;
    loop {
        let wait = pace.backoff(poll);
        poll += 1;
        if started.elapsed() + wait > timeout {
            running.cancel().await;
            return Err(NoAnswer::TooSlow(format!(
                "PostHog ran the query asynchronously and it had not completed within --http-timeout ({}); cancelled",
                crate::progress::human_duration(timeout)
            )));
        }
        crate::net::retry::wait(
            progress,
            "PostHog is running the query asynchronously",
            wait,
        )
        .await;
        let reply = fetch().await.map_err(NoAnswer::Failed)?;
        let status = serde_json::from_slice::<Polled<'_>>(&reply.body)
            .map_err(|_| {
                NoAnswer::Failed(GaveUp::Fatal(ApiError::BadResponse {
                    status: reply.status,
                    excerpt: reply.excerpt(),
                }))
            })?
            .query_status;
        if status.complete != Some(true) {
            continue;
        }
        running.done();
        if status.error == Some(true) {
            let message = status.error_message.unwrap_or_default();
            return Err(too_costly(&message).map_or_else(
                || {
                    NoAnswer::Failed(GaveUp::Fatal(ApiError::Rejected {
                        status: 200,
                        detail: crate::secret::redact(&message),
                    }))
                },
                NoAnswer::TooSlow,
            ));
        }
        let results = status.results.map(RawValue::get).unwrap_or("null");
        let body = match results.as_bytes().first() {
            // The query's own answer, `{"columns":..,"results":[..],..}`, as it is.
            Some(b'{') => reply.body.slice_ref(results.as_bytes()),
            // Only its rows.
            Some(b'[') => format!("{{\"results\":{results}}}").into_bytes().into(),
            _ => {
                return Err(NoAnswer::Failed(GaveUp::Fatal(ApiError::BadResponse {
                    status: reply.status,
                    excerpt: reply.excerpt(),
                })));
            }
        };
        return Ok(Reply {
            status: 200,
            headers: reply.headers,
            body,
            stream: None,
        });
    }
}

/// Whether an asynchronous query's error says it read or took too much (PostHog's words for
/// its limits), as its 504 would: the caller then asks a smaller question.
fn too_costly(message: &str) -> Option<String> {
    let m = message.to_ascii_lowercase();
    [
        "time limit",
        "timeout",
        "timed out",
        "max execution time",
        "memory",
        "too many",
        "too long",
    ]
    .iter()
    .any(|w| m.contains(w))
    .then(|| {
        format!(
            "PostHog's asynchronous query failed: {}",
            crate::secret::redact(message)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_posthogs_limits_are_told_from_others() {
        assert!(too_costly("Query exceeded the time limit of 600 seconds").is_some());
        assert!(too_costly("Memory limit (for query) exceeded").is_some());
        assert!(too_costly("Syntax error: unexpected token").is_none());
    }

    #[tokio::test]
    async fn a_whole_answer_comes_in_pieces_to_its_end() {
        let body = bytes::Bytes::from(vec![b'x'; PIECE + 10]);
        let mut answer = Answer::Whole(body);
        let mut sizes = Vec::new();
        while let Some(piece) = answer.next_chunk(Duration::from_secs(1)).await.unwrap() {
            sizes.push(piece.len());
        }
        assert_eq!(sizes, [PIECE, 10]);
    }
}
