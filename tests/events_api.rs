//! `--source events` (the legacy Events API) and `auto`: the same events as the Query API,
//! each exactly once, however many share a microsecond.

mod common;

use common::*;
use posthog_patterns_standin::data::tied_events;
use posthog_patterns_standin::{Fault, PostHogConfig, StoredEvent, WebhookConfig};
use std::collections::HashMap;
use std::time::Duration;

/// Many ties, including 1,500 events in one microsecond (more than the 1,000-row page cap).
fn tie_heavy() -> Vec<StoredEvent> {
    let mut ev = events(4_000, 31);
    ev.extend(tied_events(1_500, t("2024-03-03T08:00:00.000007Z"), 32));
    ev.extend(tied_events(40, t("2024-03-05T00:00:00Z"), 33));
    ev
}

fn fast_offsets() -> PostHogConfig {
    PostHogConfig {
        offset_delay: Duration::from_millis(50),
        ..PostHogConfig::default()
    }
}

fn uuids_received(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = env.received().into_keys().collect();
    v.sort();
    v
}

#[test]
fn events_and_query_sources_deliver_the_same_events_exactly_once() {
    let data = tie_heavy();
    let by_query = Env::with(fast_offsets(), data.clone(), WebhookConfig::default());
    by_query
        .run(&backfill_args(&[
            "--source",
            "query",
            "--page-size",
            "1000",
        ]))
        .assert_code(0);
    let n = by_query.assert_exactly_once(in_range);

    let by_events = Env::with(fast_offsets(), data, WebhookConfig::default());
    let run = by_events.run(&backfill_args(&[
        "--source",
        "events",
        "--page-size",
        "1000",
        "-v",
    ]));
    run.assert_code(0);
    assert_eq!(by_events.assert_exactly_once(in_range), n);
    assert_eq!(uuids_received(&by_query), uuids_received(&by_events));
    println!(
        "same data, two APIs: --source query delivered {n} events, --source events {} (identical sets, each exactly once; 1,500 share one microsecond)",
        by_events.received().len()
    );
    assert_eq!(n, 4_000 + 1_500 + 40 + 2);

    // It paged as the facts file says: oldest first, explicit bounds, never trusting `next`,
    // and used offset only inside the crowded microsecond.
    let log = by_events.posthog.log();
    assert!(
        log.iter().all(|r| r.path.ends_with("/events/")),
        "no Query API use"
    );
    assert!(
        run.stderr.contains("reading that microsecond with offset"),
        "{}",
        run.stderr
    );
    // Posted events look the same whichever API they came from (created_at aside).
    let shape = |env: &Env| -> HashMap<String, serde_json::Value> {
        env.webhook.with_state(|s| {
            s.events
                .iter()
                .map(|e| {
                    let mut v: serde_json::Value = serde_json::from_str(e).unwrap();
                    v.as_object_mut().unwrap().remove("created_at");
                    (v["uuid"].as_str().unwrap().to_string(), v)
                })
                .collect()
        })
    };
    assert_eq!(shape(&by_query), shape(&by_events));
}

#[test]
fn auto_falls_back_to_the_events_api_when_query_is_missing() {
    let env = Env::with(
        PostHogConfig {
            query_api: false,
            ..fast_offsets()
        },
        tie_heavy(),
        WebhookConfig::default(),
    );
    let run = env.run(&backfill_args(&["--page-size", "1000"]));
    run.assert_code(0);
    assert_eq!(
        run.stderr.matches("no Query API").count(),
        1,
        "said once: {}",
        run.stderr
    );
    env.assert_exactly_once(in_range);
}

#[test]
fn kill_and_resume_with_the_events_api_loses_nothing() {
    let env = Env::with(
        fast_offsets(),
        tie_heavy(),
        WebhookConfig {
            stall_after: Some(8),
            ..WebhookConfig::default()
        },
    );
    let args = backfill_args(&[
        "--source",
        "events",
        "--batch-size",
        "300",
        "--concurrency",
        "1",
    ]);
    env.kill_while_in_flight(&args);
    let run = env.run(&args);
    run.assert_code(0);
    assert!(run.stderr.contains("resuming from"), "{}", run.stderr);
    // The stalled batch was never acknowledged: it arrives once more, nothing else twice.
    env.assert_exactly_once(in_range);
}

#[test]
fn resuming_inside_a_crowded_microsecond_skips_exactly_what_was_delivered() {
    // Batches of 250 end inside the 1,500-event microsecond; stall there and resume.
    let mut data = tied_events(1_500, t("2024-03-03T08:00:00.000007Z"), 34);
    data.extend(events(100, 35));
    let env = Env::with(
        fast_offsets(),
        data,
        WebhookConfig {
            stall_after: Some(3),
            ..WebhookConfig::default()
        },
    );
    let args = backfill_args(&[
        "--source",
        "events",
        "--batch-size",
        "250",
        "--concurrency",
        "1",
    ]);
    env.kill_while_in_flight(&args);
    let cp = std::fs::read_dir(env.path("state"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .unwrap()
        .path();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cp).unwrap()).unwrap();
    assert_eq!(state["position"]["kind"], "seen", "{state}");
    env.run(&args).assert_code(0);
    env.assert_exactly_once(in_range);
}

#[test]
fn a_checkpoint_of_one_source_is_refused_by_the_other() {
    let env = Env::with(fast_offsets(), events(200, 36), WebhookConfig::default());
    let cp = env.path("job.json");
    let cp = cp.to_str().unwrap();
    env.run(&backfill_args(&["--source", "events", "--checkpoint", cp]))
        .assert_code(0);
    let run = env.run(&backfill_args(&["--source", "query", "--checkpoint", cp]));
    run.assert_code(2);
    assert!(
        run.stderr
            .contains("source: checkpoint has events, this run has query"),
        "{}",
        run.stderr
    );
    // auto continues with the API the job started with: here, complete already.
    let run = env.run(&backfill_args(&["--checkpoint", cp]));
    run.assert_code(0);
    assert!(run.stderr.contains("already complete"), "{}", run.stderr);
}

#[test]
fn more_than_50000_events_in_one_microsecond_is_a_clear_error_not_a_loop() {
    let mut data = tied_events(51_200, t("2024-03-02T00:00:00.000001Z"), 37);
    data.extend(events(50, 38));
    let env = Env::with(
        PostHogConfig {
            offset_delay: Duration::ZERO,
            ..PostHogConfig::default()
        },
        data,
        WebhookConfig::default(),
    );
    let run = env.run(&backfill_args(&["--source", "events"]));
    run.assert_code(1);
    assert!(
        run.stderr
            .contains("more than 50000 events share the timestamp 2024-03-02T00:00:00.000001Z"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--source query"), "{}", run.stderr);
}

#[test]
fn ranges_longer_than_366_days_are_read_in_windows() {
    let mut data = posthog_patterns_standin::synthetic_events(
        300,
        t("2022-01-01T00:00:00Z"),
        t("2024-06-01T00:00:00Z"),
        39,
    );
    data.sort_by_key(|e| e.timestamp);
    let env = Env::with(fast_offsets(), data, WebhookConfig::default());
    env.run(&[
        "backfill",
        "--start",
        "2022-01-01",
        "--end",
        "2024-06-01",
        "--source",
        "events",
        "--progress",
        "never",
    ])
    .assert_code(0);
    env.assert_exactly_once(|e| {
        e.timestamp >= t("2022-01-01T00:00:00Z") && e.timestamp < t("2024-06-01T00:00:00Z")
    });
    assert!(
        env.posthog.log().iter().all(|r| r.status == 200),
        "no 500 for a too-long window"
    );
}

#[test]
fn a_single_event_filter_is_sent_and_others_are_applied_locally() {
    let env = Env::with(fast_offsets(), events(1_000, 40), WebhookConfig::default());
    let run = env.run(&backfill_args(&[
        "--source",
        "events",
        "--exclude-event",
        "$pageview",
    ]));
    run.assert_code(0);
    env.assert_exactly_once(|e| in_range(e) && e.event != "$pageview");
    assert!(run.stderr.contains("filtered out"), "{}", run.stderr);
}

/// PostHog returning `count` events of one microsecond in an order that differs between
/// requests that differ (offset paging alone then skips some and repeats others), plus
/// ordinary events.
fn crowded(count: usize) -> Env {
    let mut data = tied_events(count, t("2024-03-02T00:00:00.000001Z"), 41);
    data.extend(events(200, 42));
    Env::with(
        PostHogConfig {
            offset_delay: Duration::ZERO,
            ..PostHogConfig::default()
        },
        data,
        WebhookConfig::default(),
    )
}

#[test]
fn ties_in_an_order_that_differs_between_requests_are_read_completely() {
    let env = crowded(1_200);
    let run = env.run(&backfill_args(&[
        "--source",
        "events",
        "--concurrency",
        "1",
    ]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
}

#[test]
fn a_crowded_microsecond_is_covered_by_answers_per_event_name() {
    // 5,000 events in one microsecond, pages of 1,000: offset paging counts them exactly but
    // shows some twice and misses others; one answer per event name (each under a page)
    // holds all of them.
    let env = crowded(5_000);
    let args = backfill_args(&["--source", "events", "--concurrency", "1", "-v"]);
    let run = env.run(&args);
    run.assert_code(0);
    let n = env.assert_exactly_once(in_range);
    assert!(
        run.stderr.contains("reading it by event name"),
        "{}",
        run.stderr
    );
    let requests = env.posthog.with_state(|s| s.log.len());
    println!("5,000 ties: {n} events exactly once in {requests} PostHog requests");
}

#[test]
fn unmerged_duplicate_rows_in_a_crowded_microsecond_are_delivered_once() {
    let tie = t("2024-03-02T00:00:00.000001Z");
    let mut data = tied_events(1_500, tie, 43);
    // Rows PostHog has not merged yet: the same events twice.
    let doubles: Vec<_> = data.iter().take(40).cloned().collect();
    data.extend(doubles);
    data.extend(events(200, 44));
    let env = Env::with(
        PostHogConfig {
            offset_delay: Duration::ZERO,
            ..PostHogConfig::default()
        },
        data,
        WebhookConfig::default(),
    );
    let args = backfill_args(&["--source", "events", "--concurrency", "1"]);
    env.run(&args).assert_code(0);
    // Answers per event name hold the doubles side by side: each event goes once.
    env.assert_exactly_once(in_range);
}

#[test]
fn a_single_504_from_the_events_api_or_the_probe_is_retried() {
    let env = Env::with(
        PostHogConfig {
            query_api: false,
            ..PostHogConfig::default()
        },
        events(300, 45),
        WebhookConfig::default(),
    );
    env.posthog.fault_at(0, Fault::status(504)); // the `auto` probe
    env.posthog.fault_at(3, Fault::status(504)); // an Events API page
    let run = env.run(&backfill_args(&[]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
}
