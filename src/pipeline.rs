//! Wires the stages together: source -> batcher -> sink -> checkpoint. The source runs as its
//! own task ahead of the sink, through a bounded queue, so reading overlaps posting while
//! memory stays bounded. The checkpoint only ever moves to the end of an acknowledged batch.

use crate::batcher::{Batcher, Limits};
use crate::sink::{Delivered, Sink};
use crate::source::Item;
use std::future::Future;
use tokio::sync::mpsc;

/// Pages (or chunks) the source may run ahead of the sink.
pub const QUEUE_DEPTH: usize = 4;

/// Runs `source` (which sends to the queue) and delivers what it sends. `commit` is called in
/// order with the position after each acknowledged batch, or after a stretch with no events.
/// A source error still lets what it already sent be delivered and committed first.
pub async fn run<P, S, Fut>(
    source: S,
    limits: Limits,
    sink: &Sink,
    mut commit: impl FnMut(&P, Delivered) -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    P: Send + 'static,
    S: FnOnce(mpsc::Sender<Vec<Item<P>>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
    let reader = tokio::spawn(source(tx));
    let mut batcher = Batcher::new(limits);
    let delivered: anyhow::Result<()> = async {
        while let Some(chunk) = rx.recv().await {
            for item in chunk {
                let ready = match item {
                    Item::Record { json, pos } => batcher.push(json, pos),
                    Item::Mark(pos) => {
                        if let Some(pos) = batcher.advance(pos) {
                            commit(&pos, Delivered::default())?;
                        }
                        None
                    }
                };
                if let Some(batch) = ready {
                    let done = sink.deliver(&batch.events).await?;
                    commit(&batch.end, done)?;
                }
            }
        }
        if let Some(batch) = batcher.flush() {
            let done = sink.deliver(&batch.events).await?;
            commit(&batch.end, done)?;
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
