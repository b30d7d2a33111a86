//! The PostHog API client: authentication, the request budget, retries, and turning PostHog's
//! answers into errors a user can act on (../shared/posthog-api.md). The paging logic lives in
//! `source`; this module only knows how to make one request well.

use super::error::ApiError;
use super::hogql;
use super::polled::{self, Answer, NoAnswer};
use crate::domain::SourceKind;
use crate::net::http::{self, Body, Reply, SendError};
use crate::net::ratelimit::Budget;
use crate::net::retry::{Attempt, GaveUp, RetryPolicy, retry};
use crate::pipeline::ledger::Stats;
use crate::progress::Progress;
use crate::settings::Connection;
use chrono::{DateTime, Utc};
use reqwest::Url;
use std::sync::Arc;

/// What PostHog's "query too costly" answers (504, 512, 513, 400 `too_many_bytes`) mean to
/// the caller.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slow {
    /// A passing fault: retried like a 503 (a probe, a count, an Events API page).
    Retry,
    /// An answer: the caller asks a smaller question (the Query reader's windows and plans).
    Fail,
}

/// The first contact with PostHog: until PostHog has answered (JSON), a host name that does
/// not exist or a host that answers but is not PostHog is a mistake in `--host`, not an
/// outage, and ends the run at once, unless the job ran before (its host answered then: the
/// failure may be DNS's). Connection refused is warned about at once, and retried.
#[derive(Debug, Default)]
pub(crate) struct FirstContact {
    trusted: std::sync::atomic::AtomicBool,
    answered: std::sync::atomic::AtomicBool,
    warned: std::sync::atomic::AtomicBool,
}

impl FirstContact {
    pub(super) fn trust(&self) {
        self.trusted
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn answered(&self) {
        self.answered
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a permanent-looking failure now ends the run.
    fn strict(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        !self.trusted.load(Relaxed) && !self.answered.load(Relaxed)
    }

    /// Whether to warn now about connection refused (once, before PostHog answered).
    fn warn_refused(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        !self.answered.load(Relaxed) && !self.warned.swap(true, Relaxed)
    }
}

/// Whether a transport error says the host name does not exist (the resolver's answer, not
/// a failure to reach it: "Temporary failure in name resolution" is an outage).
fn no_such_name(message: &str) -> bool {
    [
        "Name or service not known",
        "No address associated with hostname",
        "nodename nor servname provided, or not known",
        "No such host is known",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// PostHog's time, as the `Date` of its last answer said, and when that answer came.
pub(crate) type Clock = Arc<std::sync::Mutex<Option<(DateTime<Utc>, std::time::Instant)>>>;

pub(crate) struct PostHog {
    pub(super) http: reqwest::Client,
    pub(super) conn: Connection,
    pub(super) budget: Arc<Budget>,
    pub(super) retry: RetryPolicy,
    /// The largest answer read (`--max-response-size`).
    pub(super) max_response: u64,
    /// `--http-timeout`, for answers read as they arrive.
    pub(super) timeout: std::time::Duration,
    pub(super) progress: Arc<Progress>,
    pub(super) clock: Clock,
    pub(super) first_contact: Arc<FirstContact>,
    /// Queries PostHog refused for its cap on queries running at once.
    pub(super) concurrency_refusals: std::sync::atomic::AtomicU64,
}

impl PostHog {
    /// How many queries PostHog refused for its cap on queries running at once.
    pub(crate) fn concurrency_refusals(&self) -> u64 {
        self.concurrency_refusals
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The host, for messages: `https://host[:port]` (it holds no secret).
    pub(crate) fn host(&self) -> &str {
        self.conn.host.as_str().trim_end_matches('/')
    }

    pub(crate) fn project(&self) -> &str {
        &self.conn.project
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    pub(crate) fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    pub(crate) fn max_response(&self) -> u64 {
        self.max_response
    }

    pub(crate) fn timeout(&self) -> std::time::Duration {
        self.timeout
    }

    /// Polls the query PostHog answered with `accepted` (a 202) until it completes; its
    /// result as a blocking answer's body.
    async fn polled(&self, accepted: Reply) -> Result<Reply, NoAnswer> {
        let id = polled::query_id(&accepted)?;
        let endpoint = format!("query/{id}/");
        let url = self.url(&endpoint);
        let cancel = self
            .http
            .delete(url.clone())
            .bearer_auth(self.conn.api_key.expose());
        polled::poll(cancel, &self.retry, self.timeout, &self.progress, || {
            self.call(&endpoint, Slow::Retry, self.whole(), || {
                self.http.get(url.clone())
            })
        })
        .await
    }

    fn url(&self, endpoint: &str) -> Url {
        let path = format!("api/projects/{}/{endpoint}", self.conn.project);
        self.conn.host.join(&path).expect("a relative path joins")
    }

    /// POSTs a JSON body to `/api/projects/{id}/{endpoint}` and returns the 2xx body. A 504
    /// or 512 ("too slow") is retried like a 503.
    pub(crate) async fn post(
        &self,
        endpoint: &str,
        body: &serde_json::Value,
    ) -> Result<bytes::Bytes, GaveUp<ApiError>> {
        self.post_with(endpoint, body, Slow::Retry, Body::Whole(self.max_response))
            .await
            .map(|reply| reply.body)
    }

    /// Like [`PostHog::post`], but a 504 or 512 comes back at once as [`ApiError::TooSlow`]:
    /// the caller asks a smaller question instead of the same again.
    pub(crate) async fn post_page(
        &self,
        endpoint: &str,
        body: &serde_json::Value,
    ) -> Result<bytes::Bytes, GaveUp<ApiError>> {
        self.post_with(endpoint, body, Slow::Fail, self.whole())
            .await
            .map(|reply| reply.body)
    }

    /// Like [`PostHog::post_page`], but the 2xx answer's body is left to be read as it arrives
    /// ([`Answer::next_chunk`]): the Query reader hands rows on as they are parsed.
    pub(crate) async fn post_stream(
        &self,
        endpoint: &str,
        body: &serde_json::Value,
    ) -> Result<Answer, GaveUp<ApiError>> {
        let read = Body::Stream {
            max: self.max_response,
            idle: self.timeout,
        };
        let reply = self.post_with(endpoint, body, Slow::Fail, read).await?;
        Ok(match reply.stream {
            Some(stream) => Answer::Streamed(stream),
            // The result of a query answered asynchronously.
            None => Answer::Whole(reply.body),
        })
    }

    /// POSTs and, if PostHog answers asynchronously (202), polls for the answer.
    async fn post_with(
        &self,
        endpoint: &str,
        body: &serde_json::Value,
        slow: Slow,
        read: Body,
    ) -> Result<Reply, GaveUp<ApiError>> {
        let url = self.url(endpoint);
        let body = serde_json::to_vec(body).expect("JSON values serialize");
        let reply = self
            .call(endpoint, slow, read, || {
                self.http.post(url.clone()).body(body.clone())
            })
            .await?;
        if reply.status != 202 {
            return Ok(reply);
        }
        match self.polled(reply).await {
            Ok(reply) => Ok(reply),
            Err(polled::NoAnswer::Failed(gave_up)) => Err(gave_up),
            // As PostHog's 504 for a query too costly.
            Err(polled::NoAnswer::TooSlow(why)) => {
                tracing::warn!("{}", why);
                Err(match slow {
                    Slow::Fail => GaveUp::Fatal(ApiError::TooSlow { status: 504 }),
                    Slow::Retry => GaveUp::Exhausted {
                        retries: 0,
                        last: ApiError::Unavailable {
                            status: 504,
                            excerpt: why,
                        },
                    },
                })
            }
        }
    }

    /// GETs `/api/projects/{id}/{endpoint}` with query parameters.
    pub(crate) async fn get(
        &self,
        endpoint: &str,
        params: &[(&str, String)],
    ) -> Result<bytes::Bytes, GaveUp<ApiError>> {
        let mut url = self.url(endpoint);
        url.query_pairs_mut().extend_pairs(params);
        self.call(endpoint, Slow::Retry, self.whole(), || {
            self.http.get(url.clone())
        })
        .await
        .map(|reply| reply.body)
    }

    /// PostHog's clock as an answer of the last second said (such as the `auto` probe's):
    /// its `Date` is as good as a request of its own, whose answer has one-second precision
    /// too.
    pub(crate) fn recent_now(&self) -> Option<DateTime<Utc>> {
        let recent = *self.clock.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .filter(|(_, at)| at.elapsed() < std::time::Duration::from_secs(1))
            .map(|(date, at)| date + at.elapsed())
    }

    /// PostHog's clock: the `Date` of an answer to a request that costs PostHog next to
    /// nothing (`SELECT now()`, or an empty Events API window). Falls back to the local clock,
    /// with a warning, for a server that sends no `Date`.
    pub(crate) async fn now(&self, kind: SourceKind) -> Result<DateTime<Utc>, GaveUp<ApiError>> {
        let reply = match kind {
            SourceKind::Events => {
                let mut url = self.url("events/");
                url.query_pairs_mut().extend_pairs([
                    ("after", "1970-01-01T00:00:00.000000Z"),
                    ("before", "1970-01-01T00:00:01.000000Z"),
                    ("limit", "1"),
                ]);
                self.call("events/", Slow::Retry, self.whole(), || {
                    self.http.get(url.clone())
                })
                .await?
            }
            SourceKind::Query | SourceKind::Auto => {
                let url = self.url("query/");
                let body = hogql::body("posthog-patterns clock", hogql::now());
                let body = serde_json::to_vec(&body).expect("JSON values serialize");
                self.call("query/", Slow::Retry, self.whole(), || {
                    self.http.post(url.clone()).body(body.clone())
                })
                .await?
            }
        };
        Ok(reply.date().unwrap_or_else(|| {
            tracing::warn!("PostHog sent no Date header: using the local clock as PostHog's");
            Utc::now()
        }))
    }

    fn whole(&self) -> Body {
        Body::Whole(self.max_response)
    }

    async fn call(
        &self,
        endpoint: &str,
        slow: Slow,
        read: Body,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Reply, GaveUp<ApiError>> {
        let what = format!("PostHog {endpoint}");
        retry(&self.retry, &self.progress, &what, || async {
            self.budget.acquire(&self.progress).await;
            Stats::add(&self.progress.stats.source_requests, 1);
            let req = build()
                .bearer_auth(self.conn.api_key.expose())
                .header("content-type", "application/json");
            let host = || self.conn.host.as_str().trim_end_matches('/').to_string();
            match http::send(req, read).await {
                Ok(reply) => {
                    if let Some(date) = reply.date() {
                        *self.clock.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some((date, std::time::Instant::now()));
                    }
                    if reply.stream.is_some() || looks_like_json(&reply.body) {
                        self.first_contact.answered();
                    } else if (200..300).contains(&reply.status) && self.first_contact.strict() {
                        return Attempt::Fail(ApiError::NotPostHog {
                            host: host(),
                            status: reply.status,
                            excerpt: if reply.body.trim_ascii().is_empty() {
                                "an empty body".to_string()
                            } else {
                                format!("\"{}\"", reply.excerpt())
                            },
                        });
                    }
                    self.classify(endpoint, slow, reply)
                }
                Err(SendError::Timeout) => Attempt::Retry {
                    error: ApiError::Timeout { host: host() },
                    after: None,
                },
                Err(SendError::Transport(message))
                    if no_such_name(&message) && self.first_contact.strict() =>
                {
                    Attempt::Fail(ApiError::NoSuchHost {
                        name: self.conn.host.host_str().unwrap_or_default().to_string(),
                    })
                }
                Err(SendError::Transport(message)) => {
                    if message.contains("Connection refused") && self.first_contact.warn_refused() {
                        tracing::warn!("nothing listens at {} (connection refused): is --host right? Retrying, as for an outage",
                            host());
                    }
                    Attempt::Retry {
                        error: ApiError::Transport {
                            host: host(),
                            message,
                        },
                        after: None,
                    }
                }
                Err(SendError::TooLarge(max)) => Attempt::Fail(ApiError::TooLarge { max }),
            }
        })
        .await
    }

    fn classify(&self, endpoint: &str, slow: Slow, reply: Reply) -> Attempt<Reply, ApiError> {
        let status = reply.status;
        match status {
            // A query PostHog runs asynchronously: the caller polls it.
            202 if endpoint == "query/" => Attempt::Done(reply),
            // Nothing else of PostHog's answers asynchronously.
            202 => Attempt::Retry {
                error: ApiError::Async {
                    excerpt: reply.excerpt(),
                },
                after: None,
            },
            // A 200 that is not JSON (cut short, a proxy's page) is a passing fault. (A body
            // read as it arrives is checked by its reader.)
            200..=299 if reply.stream.is_none() && !looks_like_json(&reply.body) => {
                Attempt::Retry {
                    error: ApiError::BadResponse {
                        status,
                        excerpt: reply.excerpt(),
                    },
                    after: None,
                }
            }
            200..=299 => Attempt::Done(reply),
            300..=399 => Attempt::Fail(ApiError::Redirected {
                status,
                target: reply.redirect_target(&self.conn.host),
            }),
            401 => Attempt::Fail(ApiError::Unauthorized {
                detail: reply.detail(),
            }),
            403 => Attempt::Fail(ApiError::Forbidden {
                detail: reply.detail(),
                project: self.conn.project.clone(),
            }),
            404 => Attempt::Fail(ApiError::NotFound {
                path: format!("/api/projects/{}/{endpoint}", self.conn.project),
            }),
            429 if reply.code() == "api_queries_budget_exceeded" => {
                let after = reply.retry_after();
                let wait =
                    chrono::Duration::from_std(after.unwrap_or_default()).unwrap_or_default();
                Attempt::Throttled {
                    after,
                    error: ApiError::ReadBudget {
                        detail: reply.detail(),
                        refills: reply.date().unwrap_or_else(Utc::now) + wait,
                    },
                }
            }
            429 => {
                let detail = reply.detail();
                // PostHog's cap on queries running at once answers without Retry-After, once
                // the query waited for a slot: fewer windows at once for the rest of the run.
                if reply.retry_after().is_none() && detail.contains("maximum concurrency limit") {
                    self.concurrency_refusals
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Attempt::Throttled {
                    after: reply.retry_after(),
                    error: ApiError::Throttled { detail },
                }
            }
            504 | 512 | 513 if slow == Slow::Fail => Attempt::Fail(ApiError::TooSlow { status }),
            400 if slow == Slow::Fail && reply.code() == "too_many_bytes" => {
                Attempt::Fail(ApiError::TooSlow { status })
            }
            500..=599 => Attempt::Retry {
                error: ApiError::Unavailable {
                    status,
                    excerpt: reply.excerpt(),
                },
                after: reply.retry_after(),
            },
            _ if !looks_like_json(&reply.body) => Attempt::Fail(ApiError::BadResponse {
                status,
                excerpt: reply.excerpt(),
            }),
            _ => Attempt::Fail(ApiError::Rejected {
                status,
                detail: reply.detail(),
            }),
        }
    }
}

/// Whether a body looks like a whole JSON document.
fn looks_like_json(body: &[u8]) -> bool {
    // Structure only, not a parse: a page is parsed once, by its reader (a full parse here
    // doubled backfill's CPU). An answer cut short, an HTML page or an empty body fail this;
    // one that passes and still does not parse is refused by the reader.
    let body = body.trim_ascii();
    matches!(
        (body.first(), body.last()),
        (Some(b'{'), Some(b'}')) | (Some(b'['), Some(b']'))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_does_not_exist_is_told_from_a_resolver_that_fails() {
        assert!(no_such_name(
            "could not connect: client error (Connect): dns error: failed to lookup address information: Name or service not known"
        ));
        assert!(!no_such_name(
            "could not connect: dns error: failed to lookup address information: Temporary failure in name resolution"
        ));
        assert!(!no_such_name(
            "could not connect: tcp connect error: Connection refused (os error 111)"
        ));
    }
}
