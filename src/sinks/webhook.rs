//! The webhook sink: POSTs a batch as one JSON array and reports when the webhook has
//! acknowledged it (any 2xx). Retries 408, 429, 5xx (not 501) and transport errors; splits a
//! batch answered with 413; sets rejected events aside in the dead-letter file or stops.

use crate::net::http::{self, Reply};
use crate::net::retry::{Attempt, RetryPolicy, retry};
use crate::pipeline::batcher::body;
use crate::pipeline::ledger::Stats;
use crate::pipeline::{Deliver, Delivered};
use crate::progress::Progress;
use crate::secret::WebhookUrl;
use crate::sinks::dead_letter::DeadLetter;
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
}

impl Deliver for Sink {
    fn deliver<'a>(
        &'a self,
        events: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<Delivered>> {
        Box::pin(Sink::deliver(self, events))
    }
}

enum Outcome {
    Accepted,
    TooLarge,
    Rejected(Reply),
}

pub(crate) struct Sink {
    http: reqwest::Client,
    url: WebhookUrl,
    retry: RetryPolicy,
    dead_letter: Option<Arc<DeadLetter>>,
    progress: Arc<Progress>,
}

impl Sink {
    /// A sink, with its dead-letter file opened if one is named.
    pub(crate) fn open(
        http: reqwest::Client,
        webhook: &crate::settings::Webhook,
        retry: &RetryPolicy,
        progress: &Arc<Progress>,
    ) -> anyhow::Result<Self> {
        let dead_letter = webhook
            .dead_letter
            .as_deref()
            .map(DeadLetter::open)
            .transpose()?;
        Ok(Sink::new(
            http,
            webhook.url.clone(),
            retry.clone(),
            dead_letter,
            progress.clone(),
        ))
    }

    /// The dead-letter file, for other stages that set data aside (`send`'s invalid lines).
    pub(crate) fn dead_letter(&self) -> Option<Arc<DeadLetter>> {
        self.dead_letter.clone()
    }

    pub(crate) fn new(
        http: reqwest::Client,
        url: WebhookUrl,
        retry: RetryPolicy,
        dead_letter: Option<DeadLetter>,
        progress: Arc<Progress>,
    ) -> Self {
        Sink {
            http,
            url,
            retry,
            dead_letter: dead_letter.map(Arc::new),
            progress,
        }
    }

    /// Delivers one batch: returns once every event is acknowledged or dead-lettered.
    /// A 413 splits the batch in halves (in order); a rejection without `--dead-letter` is an error.
    pub(crate) async fn deliver(&self, events: &[String]) -> anyhow::Result<Delivered> {
        let mut done = Delivered::default();
        // Parts still to post, last first; a 413 replaces a part by its two halves.
        let mut todo = Vec::new();
        todo.push(0..events.len());
        while let Some(part) = todo.pop() {
            let slice = &events[part.clone()];
            match self.post(slice).await? {
                Outcome::Accepted => done.posted += slice.len(),
                Outcome::TooLarge if slice.len() > 1 => {
                    let mid = part.start + slice.len() / 2;
                    self.progress.debug(&format!(
                        "webhook answered 413 for {} events; splitting the batch",
                        slice.len()
                    ));
                    todo.push(mid..part.end);
                    todo.push(part.start..mid);
                }
                Outcome::TooLarge => {
                    let reply = Reply {
                        status: 413,
                        headers: Default::default(),
                        body: "a single event is larger than the webhook accepts".into(),
                    };
                    done.dead_lettered += self.reject(slice, &reply)?;
                }
                Outcome::Rejected(reply) => done.dead_lettered += self.reject(slice, &reply)?,
            }
        }
        Stats::add(&self.progress.stats.posted, done.posted as u64);
        Stats::add(
            &self.progress.stats.dead_lettered,
            done.dead_lettered as u64,
        );
        Stats::add(&self.progress.stats.batches, 1);
        Ok(done)
    }

    fn reject(&self, events: &[String], reply: &Reply) -> anyhow::Result<usize> {
        let excerpt = reply.excerpt();
        match &self.dead_letter {
            Some(dl) => {
                dl.write(events, reply.status, &excerpt)?;
                self.progress.warn(&format!(
                    "the webhook rejected {} events (HTTP {}: {excerpt}); appended them to {}",
                    events.len(),
                    reply.status,
                    dl.path().display()
                ));
                Ok(events.len())
            }
            None => anyhow::bail!(
                "the webhook at {} rejected a batch of {} events (HTTP {}: {excerpt}); nothing after it was sent. Fix the cause and run again to resume, or pass --dead-letter PATH to set rejected batches aside and go on",
                self.url.redacted(),
                events.len(),
                reply.status
            ),
        }
    }

    async fn post(&self, events: &[String]) -> anyhow::Result<Outcome> {
        let body = bytes::Bytes::from(body(events));
        let host = self.url.redacted();
        let out = retry(&self.retry, &self.progress, "webhook", || async {
            Stats::add(&self.progress.stats.sink_requests, 1);
            let req = self
                .http
                .post(self.url.url().clone())
                .header("content-type", "application/json")
                .body(body.clone());
            match http::send(req).await {
                Ok(reply) => match reply.status {
                    200..=299 => Attempt::Done(Outcome::Accepted),
                    300..=399 => Attempt::Fail(PostError::Redirected {
                        host: host.clone(),
                        status: reply.status,
                        target: reply.redirect_target(self.url.url()),
                    }),
                    413 => Attempt::Done(Outcome::TooLarge),
                    408 | 429 | 500 | 502..=599 => Attempt::Retry {
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
                    _ => Attempt::Done(Outcome::Rejected(reply)),
                },
                Err(message) => Attempt::Retry {
                    error: PostError::Transport {
                        host: host.clone(),
                        message,
                    },
                    after: None,
                },
            }
        })
        .await;
        out.map_err(|e| e.into_error("posting to the webhook"))
    }
}
