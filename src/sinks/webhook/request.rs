//! Posting one body to the webhook, retried by the shared policy, and what each answer means
//! (`classify`): acknowledged, too large (split it), rejected (bisect it), worth retrying, or
//! a sign that the settings are wrong (stop).

use super::encode::encode;
use crate::cli::Compress;
use crate::net::http::{self, Body, Reply, SendError};
use crate::net::retry::{Attempt, RetryPolicy, retry};
use crate::pipeline::batcher::body;
use crate::pipeline::ledger::Stats;
use crate::progress::Progress;
use crate::secret::WebhookUrl;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    #[error("the webhook at {host} answered HTTP {status}: {excerpt}")]
    Status {
        host: String,
        status: u16,
        excerpt: String,
    },
    #[error("cannot reach the webhook at {host}: {message}")]
    Transport { host: String, message: String },
    #[error("the webhook at {host} did not answer within --http-timeout")]
    Timeout { host: String },
    #[error(
        "the webhook at {host} answered HTTP {status}, a redirect to {target}/…: posthog-patterns follows no redirects (a redirected POST can arrive as an empty GET, or at another host). Set --webhook-url to the URL the webhook really takes. Nothing of this batch counts as delivered, and the checkpoint holds what was delivered before"
    )]
    Redirected {
        host: String,
        status: u16,
        target: String,
    },
    #[error(
        "the webhook at {host} answered HTTP {status} ({excerpt}): the webhook URL, or access to it, is wrong; check --webhook-url. Nothing of this batch was sent or set aside, and the checkpoint holds what was delivered before"
    )]
    Misconfigured {
        host: String,
        status: u16,
        excerpt: String,
    },
    #[error(
        "the webhook at {host} answered HTTP 415 ({excerpt}) to a gzip-compressed body: it does not take `Content-Encoding: gzip`. Drop --compress gzip (or `compress` from the config file) and run again. Nothing of this batch was sent or set aside, and the checkpoint holds what was delivered before"
    )]
    GzipRefused { host: String, excerpt: String },
}

/// What the webhook made of a body.
pub(super) enum Outcome {
    Accepted,
    TooLarge,
    Rejected(Box<Reply>),
}

/// Posts bodies to one webhook.
pub(super) struct Poster {
    pub(super) http: reqwest::Client,
    pub(super) url: WebhookUrl,
    pub(super) headers: reqwest::header::HeaderMap,
    pub(super) compress: Compress,
    pub(super) retry: RetryPolicy,
    pub(super) progress: Arc<Progress>,
}

impl Poster {
    /// Posts `events` as one body until the webhook answers for good.
    pub(super) async fn post(&self, events: &[String]) -> anyhow::Result<Outcome> {
        let body = encode(self.compress, body(events));
        let gzip = self.compress == Compress::Gzip;
        let host = self.url.redacted();
        let out = retry(&self.retry, &self.progress, "webhook", || async {
            Stats::add(&self.progress.stats.sink_requests, 1);
            let mut req = self
                .http
                .post(self.url.url().clone())
                .headers(self.headers.clone())
                .header("content-type", "application/json");
            if gzip {
                req = req.header("content-encoding", "gzip");
            }
            let req = req.body(body.clone());
            match http::send(req, Body::AckOrExcerpt).await {
                Ok(reply) => match reply.status {
                    200..=299 => Attempt::Done(Outcome::Accepted),
                    300..=399 => Attempt::Fail(PostError::Redirected {
                        host: host.clone(),
                        status: reply.status,
                        target: reply.redirect_target(self.url.url()),
                    }),
                    413 => Attempt::Done(Outcome::TooLarge),
                    // Unsupported Media Type: the encoding, not the events, is refused, so
                    // every batch would be; dead-lettering them would only hide that.
                    415 if gzip => Attempt::Fail(PostError::GzipRefused {
                        host: host.clone(),
                        excerpt: reply.excerpt(),
                    }),
                    429 => Attempt::Throttled {
                        after: reply.retry_after(),
                        error: PostError::Status {
                            host: host.clone(),
                            status: reply.status,
                            excerpt: reply.excerpt(),
                        },
                    },
                    408 | 500 | 502..=599 => Attempt::Retry {
                        after: reply.retry_after(),
                        error: PostError::Status {
                            host: host.clone(),
                            status: reply.status,
                            excerpt: reply.excerpt(),
                        },
                    },
                    // The URL or its access is wrong, whatever the batch holds: setting every
                    // batch aside as a dead letter would only hide that.
                    401 | 403 | 404 | 405 | 410 => Attempt::Fail(PostError::Misconfigured {
                        host: host.clone(),
                        status: reply.status,
                        excerpt: reply.excerpt(),
                    }),
                    _ => Attempt::Done(Outcome::Rejected(Box::new(reply))),
                },
                Err(SendError::Timeout) => Attempt::Retry {
                    error: PostError::Timeout { host: host.clone() },
                    after: None,
                },
                Err(SendError::Transport(message)) => Attempt::Retry {
                    error: PostError::Transport {
                        host: host.clone(),
                        message,
                    },
                    after: None,
                },
                // Not produced for `Body::AckOrExcerpt`; kept total rather than panicking.
                Err(SendError::TooLarge(_)) => Attempt::Fail(PostError::Transport {
                    host: host.clone(),
                    message: "the answer was too large".into(),
                }),
            }
        })
        .await;
        out.map_err(|e| e.into_error("posting to the webhook"))
    }
}
