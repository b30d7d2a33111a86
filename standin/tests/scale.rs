//! The stand-in keeps up with the benchmark: a million realistic events are stored in a few
//! seconds and each query is answered well under a second (release build; run by hand with
//! `cargo test --release -p posthog-patterns-standin --test scale -- --ignored --nocapture`).

use chrono::{DateTime, Utc};
use posthog_patterns_standin::{
    PostHogConfig, PostHogStandIn, TYPICAL_EVENT_BYTES, realistic_events,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

mod common;
use common::query_request;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

async fn timed(ph: &PostHogStandIn, sql: &str, values: Value) -> (Duration, usize) {
    let started = Instant::now();
    let mut resp = query_request(ph, sql, values, true).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{sql}");
    let announced = resp.content_length();
    // Read as the product reads: piece by piece, keeping none.
    let mut bytes = 0;
    while let Some(piece) = resp.chunk().await.unwrap() {
        bytes += piece.len();
    }
    assert_eq!(
        announced,
        Some(bytes as u64),
        "a streamed answer says its length"
    );
    (started.elapsed(), bytes)
}

#[tokio::test]
#[ignore = "run by hand, in a release build"]
async fn a_million_events_are_stored_and_queried_quickly() {
    let events = realistic_events(
        1_000_000,
        t("2024-03-01T00:00:00Z"),
        t("2024-03-08T00:00:00Z"),
        42,
        TYPICAL_EVENT_BYTES,
    );
    let started = Instant::now();
    let ph = PostHogStandIn::start(
        PostHogConfig {
            max_scan_rows: usize::MAX,
            ..PostHogConfig::default()
        },
        events,
    );
    let stored = started.elapsed();
    println!("1M events stored in {stored:?}");
    assert!(stored < Duration::from_secs(5));

    let day = json!({"start": "2024-03-04 00:00:00.000000", "end": "2024-03-05 00:00:00.000000",
                     "name": "$pageview", "lo": 1u64 << 62, "hi": 1u64 << 63, "w": 1u64 << 60});
    let bounds = "timestamp >= toDateTime64({start}, 6, 'UTC') AND timestamp < toDateTime64({end}, 6, 'UTC')";
    let all = "uuid, event, distinct_id, properties, elements_chain, timestamp, created_at, cityHash64(distinct_id), cityHash64(uuid)";
    for (shape, sql) in [
        (
            "a day by (timestamp, uuid), 50,000 rows",
            format!("SELECT {all} FROM events WHERE {bounds} ORDER BY timestamp, uuid LIMIT 50000"),
        ),
        (
            "a day in storage order, 50,000 rows",
            format!(
                "SELECT {all} FROM events WHERE {bounds} ORDER BY intDiv(toUnixTimestamp64Milli(timestamp), 86400000), event, cityHash64(distinct_id), cityHash64(uuid) LIMIT 50000"
            ),
        ),
        (
            "one event's hash range",
            format!(
                "SELECT {all} FROM events WHERE {bounds} AND event = {{name}} AND cityHash64(distinct_id) >= {{lo}} AND cityHash64(distinct_id) < {{hi}} ORDER BY event, cityHash64(distinct_id), cityHash64(uuid) LIMIT 50000"
            ),
        ),
        (
            "plan: count by day, event, bucket",
            format!(
                "SELECT intDiv(toUnixTimestamp64Milli(timestamp), 86400000) AS utc_day, event, intDiv(cityHash64(distinct_id), {{w}}) AS hash_bucket, count() AS n FROM events WHERE {bounds} GROUP BY utc_day, event, hash_bucket ORDER BY utc_day, event, hash_bucket LIMIT 10000"
            ),
        ),
        (
            "count of the week",
            "SELECT count() FROM events".to_string(),
        ),
    ] {
        let (took, bytes) = timed(&ph, &sql, day.clone()).await;
        let logged = ph.log().pop().unwrap();
        println!(
            "{shape:<40} {took:>10.1?} {:>6.1} MB answer, {:>8} rows read, {:>6} returned",
            bytes as f64 / 1e6,
            logged.reads.rows_read,
            logged.reads.rows_returned
        );
        assert!(took < Duration::from_millis(700), "{shape}: {took:?}");
    }
}
