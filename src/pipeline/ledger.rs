//! The ledger: counters every stage adds to, and the check that every event read is accounted
//! for (read = duplicate rows + filtered out + delivered + dead-lettered; input lines that are
//! no events are skipped, apart)
//! before a job may be marked complete. The display reads the same counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters every stage adds to; read by the display and by the summary.
#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub(crate) read: AtomicU64,
    pub(crate) duplicates_dropped: AtomicU64,
    pub(crate) filtered: AtomicU64,
    /// Input lines set aside because they are not JSON objects (`send --on-invalid skip`).
    pub(crate) skipped: AtomicU64,
    pub(crate) posted: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) source_requests: AtomicU64,
    pub(crate) sink_requests: AtomicU64,
    pub(crate) retries: AtomicU64,
    /// Events delivered with bytes that were not UTF-8 replaced by U+FFFD.
    pub(crate) repaired: AtomicU64,
    /// The event names read (kept only while `--event` filters are in force: a name that never
    /// occurs is probably a typo worth a warning).
    pub(crate) names: std::sync::Mutex<std::collections::BTreeSet<String>>,
    pub(crate) waited_ms: AtomicU64,
    /// Events the Query reader's plan counted in what is left of the range, and whether the
    /// plan reaches its end (the share done is then that of these events).
    pub(crate) planned: AtomicU64,
    pub(crate) planned_complete: std::sync::atomic::AtomicBool,
    /// `sync`: its watermark, as it stands (for `--metrics-file`).
    pub(crate) watermark: std::sync::Mutex<Option<chrono::DateTime<chrono::Utc>>>,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    /// Counts a delivered batch: the events the sink posted and set aside.
    pub(crate) fn delivered(&self, posted: usize, dead_lettered: usize) {
        Stats::add(&self.posted, posted as u64);
        Stats::add(&self.dead_lettered, dead_lettered as u64);
        Stats::add(&self.batches, 1);
    }

    /// Notes an event name read.
    pub(crate) fn saw_name(&self, name: &str) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if !names.contains(name) {
            names.insert(name.to_string());
        }
    }

    /// The names of `wanted` not read in this run.
    pub(crate) fn names_not_seen<'a>(&self, wanted: &'a [String]) -> Vec<&'a str> {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        wanted
            .iter()
            .filter(|w| !names.contains(*w))
            .map(String::as_str)
            .collect()
    }

    /// Fails loudly unless every event read was delivered, dead-lettered, filtered out or
    /// dropped as a duplicate row (input lines that are no events are not read: skipped).
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        let (read, dups, filtered) = (
            Stats::get(&self.read),
            Stats::get(&self.duplicates_dropped),
            Stats::get(&self.filtered),
        );
        let (posted, dead, skipped) = (
            Stats::get(&self.posted),
            Stats::get(&self.dead_lettered),
            Stats::get(&self.skipped),
        );
        if read != dups + filtered + posted + dead {
            anyhow::bail!(
                "event count mismatch: read {read} ({dups} duplicate rows dropped, {filtered} filtered out) but delivered {posted} and dead-lettered {dead} ({skipped} input lines that were no events skipped apart); the checkpoint was not marked complete. This is a bug: please report it"
            );
        }
        Ok(())
    }
}
