//! Events laid out as PostHog's `sharded_events` holds them: shards by a hash of `distinct_id`,
//! a part per insert, each sorted by `(day, event, cityHash64(distinct_id), cityHash64(uuid))`
//! and read in granules; and the time order the Events API reads (../shared/posthog-api.md).

use crate::data::{self, StoredEvent};
use std::collections::HashMap;

/// How the stand-in lays its events out. Read at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storage {
    /// Servers the table is spread over (by a hash of `distinct_id`); they read in parallel.
    pub shards: usize,
    /// Parts per shard made from the events given at start (later inserts add one each).
    pub parts_per_shard: usize,
    /// Rows per granule, the smallest unit ClickHouse's primary index can skip (8,192).
    pub granule_rows: usize,
    /// Rows per block of the other columns a query uses: after PREWHERE (the WHERE's columns,
    /// read for every row of a granule read), ClickHouse reads them
    /// only in blocks holding a row that passed. At most a granule; see [`BLOCK_ROWS`].
    pub block_rows: usize,
}

/// The default `block_rows`: one granule, i.e. ClickHouse reads the rest of a granule's
/// columns when any of its rows passed PREWHERE. Calibrated with `tests/cost.rs` against the
/// cost table of posthog-api.md (its `calibrate_block_rows` prints this), the bytes read off
/// the table's by row (1-hour window, whole day, `event = X`, `... AND cityHash64(distinct_id)
/// < 2^62`, tuple cursor, count by event):
///
/// | block_rows | 1 h | day | event | hash < 2^62 | tuple | count |
/// | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
/// | 64 | -10.3 % | -4.4 % | -7.0 % | -15.3 % | +0.8 % | -2.2 % |
/// | 256 | -4.5 % | -4.3 % | -6.9 % | -15.0 % | +0.9 % | -2.2 % |
/// | 1,024 | -4.4 % | -4.2 % | -6.7 % | -14.4 % | +1.0 % | -2.2 % |
/// | 2,048 | -4.2 % | -4.0 % | -5.2 % | -11.8 % | +1.3 % | -2.2 % |
/// | 4,096 | -3.9 % | -3.7 % | -5.2 % | -6.7 % | +1.9 % | -2.2 % |
/// | 8,192 | -3.1 % | -2.9 % | -2.1 % | +3.5 % | +4.3 % | -2.2 % |
///
/// The hash-range row decides: its 25,570 passing rows sit together in the part's order, so
/// what is read beyond them is the blocks at its two ends (the 1-hour window only needs blocks
/// of 60 rows or more, so that nearly every one holds a row of the hour). 8,192 fits every
/// row best (all within 4.3 %), and is what ClickHouse's range reader does.
pub const BLOCK_ROWS: usize = 8_192;

impl Default for Storage {
    fn default() -> Self {
        Storage {
            shards: 4,
            parts_per_shard: 2,
            granule_rows: 8_192,
            block_rows: BLOCK_ROWS,
        }
    }
}

/// A well-mixed 64-bit hash standing in for ClickHouse's `cityHash64` (FNV-1a, then the
/// splitmix64 finalizer so that every bit depends on every byte). It is NOT CityHash: the
/// product never computes it, it only compares and passes back values the server returned,
/// so only their spread over the whole `u64` range matters (about half are >= 2^63).
/// The stand-in's `cityHash64(uuid)` is this of the uuid's 16 bytes, big-endian (of its text
/// when it is not a uuid).
pub fn city_hash64(bytes: &[u8]) -> u64 {
    splitmix64(fnv1a(bytes, 0xcbf2_9ce4_8422_2325))
}

/// The shard hash, standing in for PostHog's `sipHash64(distinct_id)`: deliberately unrelated
/// to [`city_hash64`] (another seed, another finalizer), so a range of `cityHash64` values
/// spreads over every shard, as it does in PostHog.
fn shard_hash(bytes: &[u8]) -> u64 {
    murmur_fmix64(fnv1a(bytes, 0x6c62_272e_07bb_0142))
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = seed;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A uuid's 128 bits (`data::uuid_number`, quicker: a million are read at insert).
fn uuid_bits(uuid: &str) -> Option<u128> {
    let mut v: u128 = 0;
    let mut digits = 0;
    for b in uuid.bytes() {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            b'-' => continue,
            _ => return None,
        };
        if digits == 32 {
            return None;
        }
        v = (v << 4) | u128::from(d);
        digits += 1;
    }
    (digits == 32).then_some(v)
}

fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn murmur_fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// A microsecond count per UTC day.
pub(crate) const DAY_MICROS: i64 = 86_400_000_000;

/// The UTC day (days since 1970-01-01) of a time in microseconds.
pub(crate) fn day_of(micros: i64) -> i32 {
    micros.div_euclid(DAY_MICROS) as i32
}

/// The columns of the events table, for what a query reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Column {
    TeamId,
    Uuid,
    Event,
    DistinctId,
    Properties,
    ElementsChain,
    Timestamp,
    CreatedAt,
}

/// A set of columns, one bit each.
pub(crate) type Columns = u8;

impl Column {
    /// The columns a query may name (HogQL hides `team_id`).
    pub(crate) fn named(name: &str) -> Option<Column> {
        Some(match name {
            "uuid" => Column::Uuid,
            "event" => Column::Event,
            "distinct_id" => Column::DistinctId,
            "properties" => Column::Properties,
            "elements_chain" => Column::ElementsChain,
            "timestamp" => Column::Timestamp,
            "created_at" => Column::CreatedAt,
            _ => return None,
        })
    }

    pub(crate) fn bit(self) -> Columns {
        1 << self as u8
    }
}

/// Every column: what a row weighs as stored.
pub(crate) const ALL_COLUMNS: Columns = 0xff;

/// Bytes each column of one row takes uncompressed (in bit order), as ClickHouse counts
/// `read_bytes`: 16 for a UUID, 8 for `team_id` and each DateTime64, a String its length plus
/// one.
pub(crate) fn widths(e: &StoredEvent) -> [u64; 8] {
    let text = |s: &str| s.len() as u64 + 1;
    [
        8,
        16,
        text(&e.event),
        text(&e.distinct_id),
        text(&e.properties),
        text(&e.elements_chain),
        8,
        8,
    ]
}

/// Bytes the columns `cols` of one row take.
pub(crate) fn width(e: &StoredEvent, cols: Columns) -> u64 {
    block_width(&widths(e), cols)
}

/// What one event weighs as PostHog stores it (every column, `team_id` included).
pub fn stored_size(e: &StoredEvent) -> u64 {
    width(e, ALL_COLUMNS)
}

/// What queries compare, worked out once per row at insert.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowKey {
    /// `timestamp` and `created_at` in microseconds since the epoch.
    pub ts: i64,
    pub created: i64,
    /// ClickHouse's UUID order (`data::uuid_key`).
    pub uuid: (u64, u64),
    /// `cityHash64(distinct_id)` and `cityHash64(uuid)`.
    pub hd: u64,
    pub hu: u64,
    pub day: i32,
    /// The event name's number in `Table::names`.
    pub event: u32,
}

/// One part: row numbers in the part's sort order, and what its blocks weigh.
pub(crate) struct Part {
    pub rows: Vec<u32>,
    /// Per block (`block_rows` consecutive rows inside a granule, granule after granule):
    /// the bytes of each column over its rows, so a read costs a sum per block, not per row.
    pub blocks: Vec<[u64; 8]>,
}

impl Part {
    fn new(rows: Vec<u32>, table_rows: &[StoredEvent], layout: &Storage) -> Self {
        let mut blocks = Vec::new();
        for granule in rows.chunks(layout.granule_rows) {
            for block in granule.chunks(layout.block_rows) {
                let mut sums = [0u64; 8];
                for id in block {
                    let w = widths(&table_rows[*id as usize]);
                    for c in 0..8 {
                        sums[c] += w[c];
                    }
                }
                blocks.push(sums);
            }
        }
        Part { rows, blocks }
    }
}

/// Bytes of the columns `cols` over a block (or a row), from its per-column widths.
pub(crate) fn block_width(sums: &[u64; 8], cols: Columns) -> u64 {
    (0..8)
        .filter(|c| cols & (1 << c) != 0)
        .map(|c| sums[c])
        .sum()
}

/// Every stored event, where each lives, and the order the Events API reads them in.
pub(crate) struct Table {
    pub layout: Storage,
    /// In insertion order; a row's number never changes.
    pub rows: Vec<StoredEvent>,
    pub keys: Vec<RowKey>,
    /// Parts by shard, oldest first.
    pub shards: Vec<Vec<Part>>,
    /// Row numbers by `(timestamp, ClickHouse uuid order)`, insertion order among equals.
    pub by_time: Vec<u32>,
    /// Event names by number, and each number's place in byte order.
    names: Vec<String>,
    name_ids: HashMap<String, u32>,
    pub ranks: Vec<u32>,
}

impl Table {
    pub(crate) fn new(layout: Storage) -> Self {
        let layout = Storage {
            shards: layout.shards.max(1),
            parts_per_shard: layout.parts_per_shard.max(1),
            granule_rows: layout.granule_rows.max(1),
            block_rows: layout.block_rows.max(1),
        };
        Table {
            layout,
            rows: Vec::new(),
            keys: Vec::new(),
            shards: (0..layout.shards).map(|_| Vec::new()).collect(),
            by_time: Vec::new(),
            names: Vec::new(),
            name_ids: HashMap::new(),
            ranks: Vec::new(),
        }
    }

    /// The number of an event name, given one if new.
    fn name_id(&mut self, name: &str) -> u32 {
        // A few names in practice: a scan beats hashing each row's name.
        if self.names.len() <= 32 {
            if let Some(i) = self.names.iter().position(|n| n == name) {
                return i as u32;
            }
        } else if let Some(id) = self.name_ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.name_ids.insert(name.to_string(), id);
        id
    }

    /// Stores `events`, times cut to the microsecond as `DateTime64(6)` does. The first load
    /// makes `parts_per_shard` parts per shard, each a run of ingestion time (`created_at`);
    /// any later one makes one new part per shard, as a ClickHouse INSERT does.
    pub(crate) fn insert(&mut self, events: Vec<StoredEvent>, first_load: bool) {
        let first = self.rows.len();
        self.rows.reserve(events.len());
        self.keys.reserve(events.len());
        for mut e in events {
            // DateTime64(6): only when there is something finer than a microsecond.
            if e.timestamp.timestamp_subsec_nanos() % 1000 != 0 {
                e.timestamp = data::to_micros(e.timestamp);
            }
            if e.created_at.timestamp_subsec_nanos() % 1000 != 0 {
                e.created_at = data::to_micros(e.created_at);
            }
            let event = self.name_id(&e.event);
            let ts = e.timestamp.timestamp_micros();
            let (uuid, hu) = match uuid_bits(&e.uuid) {
                Some(v) => ((v as u64, (v >> 64) as u64), city_hash64(&v.to_be_bytes())),
                None => (data::uuid_key(&e.uuid), city_hash64(e.uuid.as_bytes())),
            };
            self.keys.push(RowKey {
                ts,
                created: e.created_at.timestamp_micros(),
                uuid,
                hd: city_hash64(e.distinct_id.as_bytes()),
                hu,
                day: day_of(ts),
                event,
            });
            self.rows.push(e);
        }
        let added = first as u32..self.rows.len() as u32;
        if added.is_empty() {
            return;
        }
        self.merge_by_time(added.clone());

        // Event names sort by their bytes; numbers are given in arrival order, so rank them.
        let mut order: Vec<u32> = (0..self.names.len() as u32).collect();
        order.sort_by(|a, b| self.names[*a as usize].cmp(&self.names[*b as usize]));
        self.ranks = vec![0u32; order.len()];
        for (r, id) in order.iter().enumerate() {
            self.ranks[*id as usize] = r as u32;
        }

        let shards = self.layout.shards;
        let parts = if first_load {
            self.layout.parts_per_shard
        } else {
            1
        };
        // Parts hold what was inserted together. ClickHouse merges neighbouring parts, so each
        // covers a stretch of ingestion time: the first load is cut into `parts` runs of
        // `created_at` per shard (a day's events then sit mostly in one part per shard).
        let mut per_shard: Vec<Vec<u32>> = vec![Vec::new(); shards];
        for id in added {
            let e = &self.rows[id as usize];
            per_shard[(shard_hash(e.distinct_id.as_bytes()) % shards as u64) as usize].push(id);
        }
        for (shard, mut ids) in per_shard.into_iter().enumerate() {
            ids.sort_by_key(|id| (self.keys[*id as usize].created, *id));
            let per_part = ids.len().div_ceil(parts).max(1);
            for run in ids.chunks(per_part) {
                // Sorted by (day, event, hd, hu, row number): ties in insertion order. Packed
                // into two numbers, so that sorting a million rows stays quick.
                let mut keyed: Vec<(u128, u128)> = run
                    .iter()
                    .map(|&id| {
                        let k = &self.keys[id as usize];
                        let day = u128::from((k.day as u32) ^ (1 << 31));
                        let high = (day << 96)
                            | (u128::from(self.ranks[k.event as usize]) << 64)
                            | u128::from(k.hd);
                        (high, (u128::from(k.hu) << 64) | u128::from(id))
                    })
                    .collect();
                keyed.sort_unstable();
                let rows = keyed.iter().map(|(_, low)| *low as u32).collect();
                let part = Part::new(rows, &self.rows, &self.layout);
                self.shards[shard].push(part);
            }
        }
    }

    /// Adds rows `added` (all after every existing one) to `by_time`, keeping it sorted.
    fn merge_by_time(&mut self, added: std::ops::Range<u32>) {
        let keys = &self.keys;
        // (timestamp, uuid, row number), packed: sign-flipped time first.
        let key = |id: u32| {
            let k = &keys[id as usize];
            let ts = (k.ts as u64) ^ (1 << 63);
            (
                (u128::from(ts) << 64) | u128::from(k.uuid.0),
                (u128::from(k.uuid.1) << 64) | u128::from(id),
            )
        };
        let mut new: Vec<(u128, u128)> = added.map(key).collect();
        new.sort_unstable();
        let old = std::mem::take(&mut self.by_time);
        let mut merged = Vec::with_capacity(old.len() + new.len());
        let mut j = 0;
        for id in old {
            let k = key(id);
            // Older rows first among equals.
            while j < new.len() && (new[j].0, new[j].1 >> 64) < (k.0, k.1 >> 64) {
                merged.push(new[j].1 as u32);
                j += 1;
            }
            merged.push(id);
        }
        merged.extend(new[j..].iter().map(|(_, low)| *low as u32));
        self.by_time = merged;
    }

    /// The events in time order, for the Events API.
    pub(crate) fn by_time(&self) -> ByTime<'_> {
        ByTime {
            rows: &self.rows,
            order: &self.by_time,
        }
    }
}

/// The events sorted by `(timestamp, ClickHouse uuid order)`, without copying them.
#[derive(Clone, Copy)]
pub(crate) struct ByTime<'a> {
    rows: &'a [StoredEvent],
    order: &'a [u32],
}

impl<'a> ByTime<'a> {
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn get(&self, i: usize) -> &'a StoredEvent {
        &self.rows[self.order[i] as usize]
    }

    /// The first position where `pred` is false (it must be true, then false, in this order).
    pub(crate) fn partition_point(&self, pred: impl Fn(&StoredEvent) -> bool) -> usize {
        self.order
            .partition_point(|id| pred(&self.rows[*id as usize]))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &'a StoredEvent> + 'a {
        let rows = self.rows;
        self.order.iter().map(move |id| &rows[*id as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn city_hash64_spreads_over_the_whole_u64_range() {
        let high = (0..10_000)
            .filter(|i| city_hash64(format!("user-{i}").as_bytes()) >= 1 << 63)
            .count();
        assert!((4_700..5_300).contains(&high), "{high}");
        let quarter = (0..10_000)
            .filter(|i| city_hash64(format!("user-{i}").as_bytes()) < 1 << 62)
            .count();
        assert!((2_300..2_700).contains(&quarter), "{quarter}");
    }

    #[test]
    fn uuid_bits_reads_what_uuid_number_reads() {
        for text in [
            "0190c6b5-9f0e-7c1a-8d2b-3f4e5a6b7c8d",
            "0190C6B5-9F0E-7C1A-8D2B-3F4E5A6B7C8D",
            "0190c6b59f0e7c1a8d2b3f4e5a6b7c8d",
            "0190c6b5-9f0e",
            "not-a-uuid",
            "0190c6b5-9f0e-7c1a-8d2b-3f4e5a6b7c8d0",
        ] {
            assert_eq!(uuid_bits(text), data::uuid_number(text), "{text}");
        }
    }

    #[test]
    fn shards_do_not_follow_city_hash64() {
        // Users with the lowest quarter of cityHash64 land on every shard.
        let mut seen = [0usize; 4];
        for i in 0..4_000 {
            let id = format!("user-{i}");
            if city_hash64(id.as_bytes()) < 1 << 62 {
                seen[(shard_hash(id.as_bytes()) % 4) as usize] += 1;
            }
        }
        assert!(seen.iter().all(|n| *n > 150), "{seen:?}");
    }

    #[test]
    fn the_first_load_makes_parts_per_shard_and_each_insert_one_more_part_per_shard() {
        let ev = crate::synthetic_events(
            2_000,
            t("2024-03-01T00:00:00Z"),
            t("2024-03-04T00:00:00Z"),
            1,
        );
        let mut table = Table::new(Storage::default());
        table.insert(ev, true);
        assert!(table.shards.iter().all(|s| s.len() == 2));
        let late =
            crate::synthetic_events(200, t("2024-03-01T00:00:00Z"), t("2024-03-02T00:00:00Z"), 2);
        table.insert(late, false);
        assert!(table.shards.iter().all(|s| s.len() == 3));
        for part in table.shards.iter().flatten() {
            let keys: Vec<_> = part
                .rows
                .iter()
                .map(|id| {
                    let k = table.keys[*id as usize];
                    (k.day, table.rows[*id as usize].event.clone(), k.hd, k.hu)
                })
                .collect();
            assert!(keys.windows(2).all(|w| w[0] <= w[1]), "sorted by the key");
        }
        let times: Vec<_> = table.by_time().iter().map(StoredEvent::order_key).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "time order kept");
        assert_eq!(times.len(), 2_004 + 204);
    }
}
