//! The webhook sink: POSTs a batch as one JSON array and reports when the webhook has
//! acknowledged it (any 2xx). Retries 408, 429, 5xx (not 501) and transport errors; splits a
//! batch answered with 413; bisects a rejected one, so that what the webhook accepts is
//! delivered and the events it rejects on their own are set aside in the dead-letter file
//! (or stop the run).
//! With `--compress gzip` each body (each half of a split, too) is compressed once, however
//! often it is retried.

use crate::cli::Compress;
use crate::net::http::{self, Body, Reply, SendError};
use crate::net::retry::{Attempt, RetryPolicy, retry};
use crate::pipeline::batcher::body;
use crate::pipeline::ledger::Stats;
use crate::pipeline::{Deliver, Delivered};
use crate::progress::Progress;
use crate::secret::WebhookUrl;
use crate::sinks::dead_letter::DeadLetter;
use anyhow::bail;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

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
    Rejected(Box<Reply>),
}

/// Events rejected on their own, with nothing accepted, after which the webhook is taken to
/// reject everything.
const REJECTS_BEFORE_GIVING_UP: usize = 8;

/// ⌈log₂ n⌉, at least 1: how many times a batch of `n` can be halved.
fn ceil_log2(n: usize) -> usize {
    (usize::BITS - n.saturating_sub(1).leading_zeros()).max(1) as usize
}

/// The body to post for the JSON array `json`. gzip at level 1 (`Compression::fast`): on
/// realistic batches it sends 27% of the bytes for 4.2 CPU s per GB, where level 6 sends 15%
/// for 15 CPU s per GB: the CPU, not the network, would then bound a run on a small machine
/// (docs/performance.md, "Compression").
fn encode(compress: Compress, json: Vec<u8>) -> bytes::Bytes {
    match compress {
        Compress::None => json.into(),
        Compress::Gzip => {
            let out = Vec::with_capacity(json.len() / 4);
            let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            gz.write_all(&json).expect("writing to memory cannot fail");
            gz.finish().expect("writing to memory cannot fail").into()
        }
    }
}

/// The `uuid` of an event's JSON text, for messages (events are ours: always present).
fn uuid_of(event: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Uuid {
        uuid: Option<String>,
    }
    serde_json::from_str::<Uuid>(event)
        .ok()
        .and_then(|u| u.uuid)
        .unwrap_or_else(|| "(without uuid)".into())
}

pub(crate) struct Sink {
    http: reqwest::Client,
    url: WebhookUrl,
    headers: reqwest::header::HeaderMap,
    compress: Compress,
    retry: RetryPolicy,
    dead_letter: Option<Arc<DeadLetter>>,
    progress: Arc<Progress>,
    accepted_any: AtomicBool,
    rejected_alone: AtomicUsize,
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
        Ok(Sink {
            http,
            url: webhook.url.clone(),
            headers: webhook.headers.clone(),
            compress: webhook.compress,
            retry: retry.clone(),
            dead_letter: dead_letter.map(Arc::new),
            progress: progress.clone(),
            accepted_any: AtomicBool::new(false),
            rejected_alone: AtomicUsize::new(0),
        })
    }

    /// The dead-letter file, for other stages that set data aside (`send`'s invalid lines).
    pub(crate) fn dead_letter(&self) -> Option<Arc<DeadLetter>> {
        self.dead_letter.clone()
    }

    /// Delivers one batch: returns once every event is acknowledged or dead-lettered.
    /// A 413 splits the batch in halves (in order). A rejection (other 4xx) is bisected: parts
    /// the webhook accepts are delivered (a one-off rejection costs two more requests), and an
    /// event it rejects on its own is set aside with `--dead-letter`, or stops the run.
    pub(crate) async fn deliver(&self, events: &[String]) -> anyhow::Result<Delivered> {
        let mut done = Delivered::default();
        // Parts still to post, last first, each marked when it comes from bisecting a
        // rejection.
        let mut todo = vec![(0..events.len(), false)];
        // Parts of a bisection rejected in turn, and events rejected on their own.
        let (mut rejected_parts, mut alone) = (0usize, 0usize);
        let mut first_rejection = None;
        while let Some((part, bisecting)) = todo.pop() {
            let slice = &events[part.clone()];
            let outcome = self.post(slice).await?;
            let split = match &outcome {
                Outcome::Accepted => {
                    done.posted += slice.len();
                    self.accepted_any.store(true, Relaxed);
                    continue;
                }
                _ if slice.len() == 1 => None,
                Outcome::TooLarge => Some((413, bisecting)),
                Outcome::Rejected(reply) => {
                    rejected_parts += usize::from(bisecting);
                    first_rejection
                        .get_or_insert_with(|| (slice.len(), reply.status, reply.excerpt()));
                    self.check_bisecting(rejected_parts, alone, events.len())?;
                    Some((reply.status, true))
                }
            };
            if let Some((status, bisecting)) = split {
                let mid = part.start + slice.len() / 2;
                self.progress.debug(&format!(
                    "webhook answered {status} for {} events; splitting the batch",
                    slice.len()
                ));
                todo.push((mid..part.end, bisecting));
                todo.push((part.start..mid, bisecting));
                continue;
            }
            let reply = match outcome {
                Outcome::Rejected(reply) => *reply,
                _ => Reply {
                    status: 413,
                    headers: Default::default(),
                    body: "a single event is larger than the webhook accepts".into(),
                    stream: None,
                },
            };
            done.dead_lettered += self.reject(slice, &reply)?;
            alone += slice.len();
            self.check_rejects_everything(slice.len())?;
        }
        if let (Some((n, status, excerpt)), 0) = (first_rejection, alone) {
            self.progress.warn(&format!(
                "the webhook rejected a batch of {n} events (HTTP {status}: {excerpt}) but accepted each part of it when split: delivered{}",
                if rejected_parts > 0 {
                    format!(" (it rejected {rejected_parts} of the parts too: if it limits what one request may hold, lower --batch-size or --batch-bytes)")
                } else {
                    String::new()
                }
            ));
        }
        Stats::add(&self.progress.stats.posted, done.posted as u64);
        Stats::add(
            &self.progress.stats.dead_lettered,
            done.dead_lettered as u64,
        );
        Stats::add(&self.progress.stats.batches, 1);
        Ok(done)
    }

    /// Stops bisecting a batch of `n` once it has rejected more parts than the events it
    /// rejected on their own (`alone`) explain: each explains at most ⌈log₂ n⌉ rejected parts
    /// holding it, one more path may still be searched, and one more rejection is a passing
    /// fault. Beyond that the webhook rejects parts for what no single event holds (a limit per
    /// request, say), and bisecting every batch down to single events would hide it behind n
    /// requests a batch.
    fn check_bisecting(&self, rejected_parts: usize, alone: usize, n: usize) -> anyhow::Result<()> {
        if rejected_parts > (alone + 1) * ceil_log2(n) + 1 {
            bail!(
                "the webhook at {} rejected {rejected_parts} parts of a batch of {n} events but only {alone} events on their own: it is not rejecting single events (a limit per request below --batch-size or --batch-bytes?), so nothing more was posted or set aside. The checkpoint holds what was acknowledged before this batch",
                self.url.redacted(),
            );
        }
        Ok(())
    }

    /// A webhook that has accepted nothing in this run and rejected every one of the first
    /// events it was sent alone rejects everything: stop instead of dead-lettering the range.
    fn check_rejects_everything(&self, rejected: usize) -> anyhow::Result<()> {
        let total = self.rejected_alone.fetch_add(rejected, Relaxed) + rejected;
        if !self.accepted_any.load(Relaxed) && total >= REJECTS_BEFORE_GIVING_UP {
            bail!(
                "the webhook at {} rejected each of the first {total} events it was sent on its own and has accepted none: it does not take these events. Check --webhook-url and the format the webhook expects (a JSON array of objects); the rejected events are in the dead-letter file",
                self.url.redacted()
            );
        }
        Ok(())
    }

    fn reject(&self, events: &[String], reply: &Reply) -> anyhow::Result<usize> {
        let excerpt = reply.excerpt();
        match &self.dead_letter {
            Some(dl) => {
                dl.write(events, reply.status, &excerpt)?;
                self.progress.warn(&format!(
                    "the webhook rejected {} (HTTP {}: {excerpt}); appended to {}",
                    if events.len() == 1 {
                        format!("event {}", uuid_of(&events[0]))
                    } else {
                        format!("{} events", events.len())
                    },
                    reply.status,
                    dl.path().display()
                ));
                Ok(events.len())
            }
            None => bail!(
                "the webhook at {} rejected {} on its own (HTTP {}: {excerpt}). The checkpoint holds every batch acknowledged before it (with --concurrency above 1, later batches may have been acknowledged too, and are posted again on resume). Fix the cause and run again, or pass --dead-letter PATH to set rejected events aside and go on",
                self.url.redacted(),
                match events {
                    [one] => format!("event {}", uuid_of(one)),
                    _ => crate::progress::count(events.len() as u64, "event", "events"),
                },
                reply.status
            ),
        }
    }

    async fn post(&self, events: &[String]) -> anyhow::Result<Outcome> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_log2_counts_the_halvings() {
        let got: Vec<usize> = [1, 2, 3, 4, 5, 1000, 1024, 1025]
            .into_iter()
            .map(ceil_log2)
            .collect();
        assert_eq!(got, [1, 1, 2, 2, 3, 10, 10, 11]);
    }

    #[test]
    fn a_gzip_body_decompresses_to_the_json_array() {
        let json = body(&[r#"{"uuid":"a","p":"Zoë 😀"}"#, r#"{"uuid":"b"}"#]);
        let gz = encode(Compress::Gzip, json.clone());
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back).unwrap();
        assert_eq!(back, json);
        assert_eq!(encode(Compress::None, json.clone()), json);
    }
}
