//! Wires the stages together: source -> batcher -> sink -> checkpoint. The source runs as its
//! own task ahead of the sink, through a bounded queue, and up to `concurrency` batches are
//! posted at once, so neither PostHog's nor the webhook's latency stalls the other while
//! memory stays bounded. The checkpoint only moves, in order, to the end of a batch that was
//! acknowledged together with every batch before it.

pub(crate) mod batcher;
pub(crate) mod ledger;

use crate::pipeline::batcher::{Batch, Batcher, Limits};
use crate::pipeline::ledger::Stats;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use std::future::Future;
use tokio::sync::mpsc;

/// What became of a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub(crate) posted: usize,
    pub(crate) dead_lettered: usize,
}

/// Where batches go: the webhook, or a file for `export`. `deliver` returns once the batch is
/// safe (acknowledged, written and synced, or dead-lettered).
pub(crate) trait Deliver: Sync {
    fn deliver<'a>(
        &'a self,
        events: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<Delivered>>;
}

/// What a source hands to the pipeline.
#[derive(Debug)]
pub(crate) enum Item<P> {
    /// One event, serialized, and the position just after it.
    Record { json: String, pos: P },
    /// No event is left before this position (e.g. an empty window ended).
    Mark(P),
}

/// Chunks (of up to a few thousand records) the source may run ahead of the sink.
pub(crate) const QUEUE_DEPTH: usize = 4;

type InFlight<'a, P> = BoxFuture<'a, (P, anyhow::Result<Delivered>)>;

/// How to cut and send batches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Posting {
    pub(crate) limits: Limits,
    /// Batches in flight at once.
    pub(crate) concurrency: usize,
    /// Post a partial batch once no event has come for this long (for slow streams such as
    /// stdin); `None` keeps it until it is full or the source ends.
    pub(crate) linger: Option<std::time::Duration>,
}

/// Runs `source` (which sends to the queue) and delivers what it sends, with at most
/// `concurrency` batches in flight, counting what each delivery did in `ledger` (sinks report
/// it, and count nothing themselves). `commit` is called in source order with the position after
/// each acknowledged batch, or after a stretch with no events. A source error still lets what
/// it already sent be delivered and committed first.
pub(crate) async fn run<P, S, Fut>(
    source: S,
    posting: Posting,
    sink: &dyn Deliver,
    ledger: &Stats,
    mut commit: impl FnMut(&P, Delivered) -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    P: Send + 'static,
    S: FnOnce(mpsc::Sender<Vec<Item<P>>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
    let reader = tokio::spawn(source(tx));
    let concurrency = posting.concurrency.max(1);
    let linger = posting.linger.unwrap_or(std::time::Duration::MAX);
    let mut batcher = Batcher::new(posting.limits);
    let mut in_flight: FuturesOrdered<InFlight<'_, P>> = FuturesOrdered::new();
    let post = |batch: Batch<P>| -> InFlight<'_, P> {
        Box::pin(async move {
            let done = sink.deliver(&batch.events).await;
            if let Ok(done) = &done {
                ledger.delivered(done.posted, done.dead_lettered);
            }
            (batch.end, done)
        })
    };
    let delivered: anyhow::Result<()> = async {
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                Some((end, done)) = in_flight.next(), if !in_flight.is_empty() => commit(&end, done?)?,
                _ = tokio::time::sleep(linger), if open && !batcher.is_empty() && in_flight.len() < concurrency => {
                    in_flight.extend(batcher.flush().map(post));
                }
                chunk = rx.recv(), if open && in_flight.len() < concurrency => {
                    let Some(chunk) = chunk else {
                        open = false;
                        in_flight.extend(batcher.flush().map(post));
                        continue;
                    };
                    for item in chunk {
                        let next: [Option<InFlight<'_, P>>; 2] = match item {
                            Item::Record { json, pos } => {
                                let closed = batcher.push(json, pos).map(post);
                                [closed, batcher.take_full().map(post)]
                            }
                            // A position with no open batch to carry it is committed in turn.
                            Item::Mark(pos) => [
                                batcher
                                    .advance(pos)
                                    .map(|pos| -> InFlight<'_, P> { Box::pin(async { (pos, Ok(Delivered::default())) }) }),
                                None,
                            ],
                        };
                        for next in next.into_iter().flatten() {
                            while in_flight.len() >= concurrency {
                                let (end, done) = in_flight.next().await.expect("not empty");
                                commit(&end, done?)?;
                            }
                            in_flight.push_back(next);
                        }
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = delivered {
        // The reader may be mid-request or waiting out a rate limit: stop it now.
        reader.abort();
        return Err(e);
    }
    reader
        .await
        .map_err(|e| anyhow::anyhow!("the reader task failed: {e}"))?
}
