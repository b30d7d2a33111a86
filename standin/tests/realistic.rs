//! The realistic events the benchmark posts look like posthog-js's (../shared/posthog-api.md):
//! 40-60 properties, 1.5-2.5 KB as posted on average for the typical size, valid JSON.

use chrono::{DateTime, Utc};
use posthog_patterns_standin::{HEAVY_EVENT_BYTES, TYPICAL_EVENT_BYTES, realistic_events};
use serde_json::Value;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// (average posted size, smallest, largest, fewest properties, most properties).
fn measure(avg_bytes: usize, n: usize) -> (usize, usize, usize, usize, usize) {
    let events = realistic_events(
        n,
        t("2024-01-01T00:00:00Z"),
        t("2024-01-31T00:00:00Z"),
        9,
        avg_bytes,
    );
    let (mut total, mut small, mut large) = (0, usize::MAX, 0);
    let (mut fewest, mut most) = (usize::MAX, 0);
    for e in &events {
        let posted = e.posted_json(4242);
        let value: Value = serde_json::from_str(&posted).expect("the posted event is JSON");
        let count = value["properties"].as_object().expect("an object").len();
        total += posted.len();
        small = small.min(posted.len());
        large = large.max(posted.len());
        fewest = fewest.min(count);
        most = most.max(count);
    }
    (total / events.len(), small, large, fewest, most)
}

#[test]
fn typical_events_weigh_about_2_kb_with_40_to_60_properties() {
    let (avg, small, large, fewest, most) = measure(TYPICAL_EVENT_BYTES, 3_000);
    println!("typical: average {avg} B ({small}..{large}), {fewest}..{most} properties");
    assert!((1_850..=2_250).contains(&avg), "{avg}");
    assert!(small >= 1_200 && large <= 3_200, "{small}..{large}");
    assert!(fewest >= 40 && most <= 60, "{fewest}..{most}");
}

#[test]
fn heavy_events_weigh_about_3_kb_with_at_most_60_properties() {
    let (avg, small, large, fewest, most) = measure(HEAVY_EVENT_BYTES, 3_000);
    println!("heavy: average {avg} B ({small}..{large}), {fewest}..{most} properties");
    assert!((2_800..=3_350).contains(&avg), "{avg}");
    assert!(fewest >= 40 && most <= 60, "{fewest}..{most}");
}

#[test]
fn lean_events_stay_under_1_kb() {
    let (avg, _, large, fewest, _) = measure(800, 3_000);
    println!("lean: average {avg} B (largest {large}), at least {fewest} properties");
    assert!(avg <= 1_000 && large <= 2_000, "{avg}, {large}");
}

#[test]
fn realistic_events_carry_what_real_ones_do() {
    let events = realistic_events(
        2_000,
        t("2024-01-01T00:00:00Z"),
        t("2024-01-02T00:00:00Z"),
        4,
        TYPICAL_EVENT_BYTES,
    );
    let all: String = events.iter().map(|e| e.properties.as_str()).collect();
    for needle in [
        "\"$active_feature_flags\":[",
        "\"$set\":{",
        "\"$set_once\":{",
        "null",
        "true",
        "São Paulo",
        "\\\"",
    ] {
        assert!(all.contains(needle), "no {needle}");
    }
    assert!(all.contains("🚀") && all.contains("料金"), "unicode");
    let chains: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "$autocapture")
        .map(|e| e.elements_chain.as_str())
        .collect();
    assert!(
        chains.len() > 200 && chains.iter().all(|c| c.len() > 300),
        "long chains"
    );
}
