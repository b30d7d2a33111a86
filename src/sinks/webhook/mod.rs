//! The webhook sink: POSTs a batch as one JSON array and reports when the webhook has
//! acknowledged it (any 2xx). Split by job, as Vector's http sink is: `encode` makes the body
//! (gzip with `--compress gzip`, once however often it is retried); `request` posts it with
//! the shared retry policy and classifies the answer (408, 429, 5xx but 501, and transport
//! errors are retried); `split` halves a batch answered with 413 and bisects a rejected one,
//! so that what the webhook accepts is delivered; `reject` sets aside the events it rejects
//! on their own (the dead-letter file) or stops the run. This module ties them together.

mod encode;
mod reject;
mod request;
mod split;

use crate::net::http::Reply;
use crate::net::retry::RetryPolicy;
use crate::pipeline::{Deliver, Delivered};
use crate::progress::Progress;
use crate::sinks::dead_letter::DeadLetter;
use anyhow::bail;
use reject::reject;
use request::{Outcome, Poster};
use split::Bisection;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// Events rejected on their own, with nothing accepted, after which the webhook is taken to
/// reject everything.
const REJECTS_BEFORE_GIVING_UP: usize = 8;

pub(crate) struct Sink {
    poster: Poster,
    dead_letter: Option<Arc<DeadLetter>>,
    accepted_any: AtomicBool,
    rejected_alone: AtomicUsize,
}

impl Deliver for Sink {
    fn deliver<'a>(
        &'a self,
        events: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<Delivered>> {
        Box::pin(Sink::deliver(self, events))
    }
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
            poster: Poster {
                http,
                url: webhook.url.clone(),
                headers: webhook.headers.clone(),
                compress: webhook.compress,
                retry: retry.clone(),
                progress: progress.clone(),
            },
            dead_letter: dead_letter.map(Arc::new),
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
        let mut bisection = Bisection::new(events.len());
        while let Some((part, bisecting)) = todo.pop() {
            let slice = &events[part.clone()];
            let outcome = self.poster.post(slice).await?;
            let split = match &outcome {
                Outcome::Accepted => {
                    done.posted += slice.len();
                    self.accepted_any.store(true, Relaxed);
                    continue;
                }
                _ if slice.len() == 1 => None,
                Outcome::TooLarge => Some((413, bisecting)),
                Outcome::Rejected(reply) => {
                    bisection.rejected_parts += usize::from(bisecting);
                    bisection
                        .first
                        .get_or_insert_with(|| (slice.len(), reply.status, reply.excerpt()));
                    bisection.check(&self.poster.url)?;
                    Some((reply.status, true))
                }
            };
            if let Some((status, bisecting)) = split {
                let mid = part.start + slice.len() / 2;
                tracing::debug!(
                    "webhook answered {status} for {} events; splitting the batch",
                    slice.len()
                );
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
            let dead_letter = self.dead_letter.as_deref();
            done.dead_lettered += reject(dead_letter, &self.poster.url, slice, &reply)?;
            bisection.alone += slice.len();
            self.check_rejects_everything(slice.len())?;
        }
        if let (Some((n, status, excerpt)), 0) = (bisection.first, bisection.alone) {
            tracing::warn!(
                "the webhook rejected a batch of {n} events (HTTP {status}: {excerpt}) but accepted each part of it when split: delivered{}",
                if bisection.rejected_parts > 0 {
                    format!(
                        " (it rejected {} of the parts too: if it limits what one request may hold, lower --batch-size or --batch-bytes)",
                        bisection.rejected_parts
                    )
                } else {
                    String::new()
                }
            );
        }
        Ok(done)
    }

    /// A webhook that has accepted nothing in this run and rejected every one of the first
    /// events it was sent alone rejects everything: stop instead of dead-lettering the range.
    fn check_rejects_everything(&self, rejected: usize) -> anyhow::Result<()> {
        let total = self.rejected_alone.fetch_add(rejected, Relaxed) + rejected;
        if !self.accepted_any.load(Relaxed) && total >= REJECTS_BEFORE_GIVING_UP {
            bail!(
                "the webhook at {} rejected each of the first {total} events it was sent on its own and has accepted none: it does not take these events. Check --webhook-url and the format the webhook expects (a JSON array of objects); the rejected events are in the dead-letter file",
                self.poster.url.redacted()
            );
        }
        Ok(())
    }
}
