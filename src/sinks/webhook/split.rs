//! Splitting and bisecting a batch: a 413 halves it; a rejection is bisected so that what
//! the webhook accepts is delivered and only the events it rejects on their own are set
//! aside, within a bound that tells a webhook rejecting single events from one that limits
//! what one request may hold.

use crate::secret::WebhookUrl;
use anyhow::bail;

/// ⌈log₂ n⌉, at least 1: how many times a batch of `n` can be halved.
pub(super) fn ceil_log2(n: usize) -> usize {
    (usize::BITS - n.saturating_sub(1).leading_zeros()).max(1) as usize
}

/// The rejections met while delivering one batch of `n` events.
pub(super) struct Bisection {
    n: usize,
    /// Parts of the bisection rejected in turn.
    pub(super) rejected_parts: usize,
    /// Events rejected on their own.
    pub(super) alone: usize,
    /// The first rejection: the part's size, the status and an excerpt of the answer.
    pub(super) first: Option<(usize, u16, String)>,
}

impl Bisection {
    pub(super) fn new(n: usize) -> Self {
        Bisection {
            n,
            rejected_parts: 0,
            alone: 0,
            first: None,
        }
    }

    /// Stops bisecting a batch of `n` once it has rejected more parts than the events it
    /// rejected on their own (`alone`) explain: each explains at most ⌈log₂ n⌉ rejected parts
    /// holding it, one more path may still be searched, and one more rejection is a passing
    /// fault. Beyond that the webhook rejects parts for what no single event holds (a limit per
    /// request, say), and bisecting every batch down to single events would hide it behind n
    /// requests a batch.
    pub(super) fn check(&self, url: &WebhookUrl) -> anyhow::Result<()> {
        let (rejected_parts, alone, n) = (self.rejected_parts, self.alone, self.n);
        if rejected_parts > (alone + 1) * ceil_log2(n) + 1 {
            bail!(
                "the webhook at {} rejected {rejected_parts} parts of a batch of {n} events but only {alone} events on their own: it is not rejecting single events (a limit per request below --batch-size or --batch-bytes?), so nothing more was posted or set aside. The checkpoint holds what was acknowledged before this batch",
                url.redacted(),
            );
        }
        Ok(())
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
}
