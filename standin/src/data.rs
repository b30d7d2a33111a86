//! Events as the PostHog stand-in stores them, and a generator of synthetic ones with the
//! awkward cases real data has: timestamp ties, whole seconds, unicode, escapes, big numbers.
//! [`realistic_events`] makes heavier ones, shaped like posthog-js web events, for the
//! benchmark.

mod realistic;

pub use realistic::{HEAVY_EVENT_BYTES, TYPICAL_EVENT_BYTES, realistic_events};

use chrono::{DateTime, Duration, Utc};

#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub uuid: String,
    pub event: String,
    pub distinct_id: String,
    /// JSON text, as PostHog returns it from HogQL.
    pub properties: String,
    pub elements_chain: String,
    pub timestamp: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl StoredEvent {
    /// The event as posthog-patterns posts it (docs/event-format.md: `properties` verbatim,
    /// times in UTC with six fractional digits), e.g. for an NDJSON file `send` reads. (The
    /// product has its own: this crate must not depend on it.)
    pub fn posted_json(&self, team_id: u64) -> String {
        let text = |s: &str| serde_json::to_string(s).expect("a string serializes");
        let time = |t: &DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%S%.6fZ");
        format!(
            r#"{{"uuid":{},"event":{},"distinct_id":{},"timestamp":"{}","created_at":"{}","properties":{},"elements_chain":{},"team_id":{team_id}}}"#,
            text(&self.uuid),
            text(&self.event),
            text(&self.distinct_id),
            time(&self.timestamp),
            time(&self.created_at),
            self.properties,
            text(&self.elements_chain),
        )
    }

    /// Drops anything finer than a microsecond, as PostHog's `DateTime64(6)` columns do. (The
    /// product has its own copy: this crate must not depend on it.)
    pub fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
    }

    /// ClickHouse's UUID order: the second 64-bit half first, then the first.
    pub fn order_key(&self) -> (DateTime<Utc>, (u64, u64)) {
        (self.timestamp, uuid_key(&self.uuid))
    }
}

/// Drops anything finer than a microsecond, as PostHog's `DateTime64(6)` columns do. (The
/// product has its own copy: this crate must not depend on it.)
pub fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The key ClickHouse sorts UUIDs by. Not string order.
pub fn uuid_key(uuid: &str) -> (u64, u64) {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    let v = u128::from_str_radix(&hex, 16).unwrap_or(0);
    (v as u64, (v >> 64) as u64)
}

/// A uuid as a number (for compact sets of uuids); `None` if it is not 32 hex digits.
pub fn uuid_number(uuid: &str) -> Option<u128> {
    let mut v: u128 = 0;
    let mut digits = 0;
    for c in uuid.bytes().filter(|c| *c != b'-') {
        v = v.checked_mul(16)? | u128::from((c as char).to_digit(16)?);
        digits += 1;
    }
    (digits == 32).then_some(v)
}

pub fn format_uuid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

const NAMES: [&str; 6] = [
    "$pageview",
    "$autocapture",
    "$identify",
    "signup",
    "purchase",
    "$pageleave",
];

/// `n` events with timestamps in `[start, end)`, reproducible from `seed`. About a fifth share
/// their timestamp with another event (to the microsecond); some fall on whole seconds.
/// Also adds the edge cases of a half-open range: one event exactly at `start`, one a
/// microsecond before `end`, one exactly at `end` (outside) and one before `start` (outside).
pub fn synthetic_events(
    n: usize,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    seed: u64,
) -> Vec<StoredEvent> {
    spread(n, start, end, seed, event)
}

/// `n` events made by `make`, with the timestamps [`synthetic_events`] describes.
pub(crate) fn spread(
    n: usize,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    seed: u64,
    mut make: impl FnMut(&mut fastrand::Rng, usize, DateTime<Utc>) -> StoredEvent,
) -> Vec<StoredEvent> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let span = (end - start).num_microseconds().unwrap_or(i64::MAX).max(1);
    let mut out: Vec<StoredEvent> = Vec::with_capacity(n + 4);
    for i in 0..n {
        let ts = if i > 0 && rng.u8(0..5) == 0 {
            // A tie with a recent event.
            out[rng.usize(out.len().saturating_sub(20)..out.len())].timestamp
        } else if rng.u8(0..10) == 0 {
            let t = start + Duration::microseconds(rng.i64(0..span));
            t - Duration::microseconds(t.timestamp_subsec_micros() as i64)
        } else {
            start + Duration::microseconds(rng.i64(0..span))
        };
        out.push(make(&mut rng, i, ts));
    }
    for (i, ts) in [
        start,
        end - Duration::microseconds(1),
        end,
        start - Duration::microseconds(1),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(make(&mut rng, n + i, ts));
    }
    out
}

/// `count` events sharing one timestamp exactly (more than a page, for the tie tests).
pub fn tied_events(count: usize, ts: DateTime<Utc>, seed: u64) -> Vec<StoredEvent> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|i| event(&mut rng, 1_000_000 + i, ts))
        .collect()
}

fn event(rng: &mut fastrand::Rng, i: usize, ts: DateTime<Utc>) -> StoredEvent {
    let name = NAMES[rng.usize(0..NAMES.len())];
    let properties = match i % 5 {
        0 => format!(
            r#"{{"$current_url":"https://example.com/p/{i}","$browser":"Firefox","plan":"pro","n":{i}}}"#
        ),
        1 => format!(
            r#"{{"name":"Zoë \"Z\" Ñúñez 😀","path":"C:\\temp\\{i}","tab":"a\tb","emoji":"\ud83d\ude00"}}"#
        ),
        2 => format!(
            r#"{{"big":123456789012345678901234567890,"precise":0.1000000000000000055511151231257827,"neg":-9223372036854775809,"i":{i}}}"#
        ),
        3 => {
            format!(r#"{{"nested":{{"a":[1,2,{{"b":null,"c":[true,false]}}],"d":{{}}}},"i":{i}}}"#)
        }
        _ => "{}".to_string(),
    };
    StoredEvent {
        uuid: format_uuid(rng.u128(..)),
        event: name.to_string(),
        distinct_id: format!("user-{}", rng.u32(0..5000)),
        properties,
        elements_chain: if name == "$autocapture" {
            "button.btn:text=\"Sign up\"nth-child=\"1\"".to_string()
        } else {
            String::new()
        },
        timestamp: ts,
        created_at: ts + Duration::milliseconds(rng.i64(50..5000)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_order_is_not_string_order() {
        let a = "00000000-0000-0000-ffff-ffffffffffff";
        let b = "ffffffff-ffff-ffff-0000-000000000000";
        assert!(a < b);
        assert!(uuid_key(a) > uuid_key(b));
    }

    #[test]
    fn uuids_round_trip_through_numbers() {
        let v = 0x0190c6b5_9f0e_7c1a_8d2b_3f4e5a6b7c8d_u128;
        assert_eq!(uuid_number(&format_uuid(v)), Some(v));
        assert_eq!(uuid_number("not-a-uuid"), None);
        assert_eq!(uuid_number("0190c6b5-9f0e"), None);
    }

    #[test]
    fn synthetic_data_has_ties_and_valid_json() {
        let start = "2024-01-01T00:00:00Z".parse().unwrap();
        let end = "2024-01-08T00:00:00Z".parse().unwrap();
        let ev = synthetic_events(2000, start, end, 7);
        let mut stamps: Vec<_> = ev.iter().map(|e| e.timestamp).collect();
        stamps.sort();
        let ties = stamps.windows(2).filter(|w| w[0] == w[1]).count();
        assert!(ties > 100, "{ties}");
        for e in &ev {
            serde_json::from_str::<serde_json::Value>(&e.properties).unwrap();
        }
    }
}
