//! `sync`: incremental runs for cron, by ingestion time, with late events.

mod common;

use chrono::{Duration, Utc};
use common::*;
use posthog_patterns_standin::data::tied_events;
use posthog_patterns_standin::{PostHogConfig, StoredEvent, WebhookConfig, synthetic_events};
use std::collections::HashSet;

/// Events with these timestamps, not yet inserted.
fn events_at(count: usize, ts: chrono::DateTime<Utc>, seed: u64) -> Vec<StoredEvent> {
    tied_events(count, ts, seed)
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e.timestamp += Duration::microseconds(i as i64);
            e
        })
        .collect()
}

/// PostHog ingests these events now, by its own clock (late arrivals when their timestamps
/// are old); then time passes before the next cron run. (PostHog's clock is read from its
/// `Date` header, to the second: runs in the same second see the same "now".)
fn ingest(env: &Env, mut events: Vec<StoredEvent>) -> Vec<StoredEvent> {
    let now = env.posthog.now();
    for e in &mut events {
        e.created_at = now;
    }
    env.posthog.insert(events.clone());
    env.posthog.advance_clock(Duration::seconds(2));
    events
}

fn sync_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "sync",
        "--lag",
        "0s",
        "--progress",
        "never",
        "--concurrency",
        "1",
    ];
    v.extend_from_slice(extra);
    v
}

/// The sync state file.
fn state_file(env: &Env) -> std::path::PathBuf {
    std::fs::read_dir(env.path("state"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap()
}

/// The sync state file's contents.
fn state(env: &Env) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(state_file(env)).unwrap()).unwrap()
}

struct Setup {
    env: Env,
    start: String,
}

fn setup(webhook: WebhookConfig) -> Setup {
    let now = Utc::now();
    let initial = synthetic_events(2_000, now - Duration::days(3), now - Duration::hours(1), 51);
    let start = (now - Duration::days(30)).to_rfc3339();
    Setup {
        env: Env::with(PostHogConfig::default(), initial, webhook),
        start,
    }
}

#[test]
fn three_syncs_with_late_events_between_them_deliver_every_event_exactly_once() {
    let Setup { env, start } = setup(WebhookConfig::default());
    let first = env.run(&sync_args(&["--start", &start, "--page-size", "700"]));
    first.assert_code(0);
    assert!(
        first.stderr.is_empty(),
        "silent on success: {}",
        first.stderr
    );
    let after_first = env.received().len();
    assert!(after_first > 2_000, "{after_first}");

    // Late arrivals (event time two days ago), fresh events, and one later than --lookback.
    let now = Utc::now();
    ingest(&env, events_at(300, now - Duration::days(2), 52));
    ingest(&env, events_at(50, now - Duration::seconds(5), 53));
    let too_late = ingest(&env, events_at(1, now - Duration::days(10), 54));
    let too_late_uuid = too_late[0].uuid.clone();
    let second = env.run(&sync_args(&["-v"]));
    second.assert_code(0);
    assert!(
        second.stderr.contains("sync: 350 events posted"),
        "{}",
        second.stderr
    );

    ingest(&env, events_at(120, Utc::now() - Duration::hours(30), 55));
    env.run(&sync_args(&[])).assert_code(0);

    // Everything since --start, once, except the event later than the 7-day lookback: the
    // documented limit (docs/sync.md).
    let start = t(&start);
    env.assert_exactly_once(|e| e.timestamp >= start && e.uuid != too_late_uuid);
    assert!(!env.received().contains_key(&too_late_uuid));
    assert_eq!(env.received().len(), after_first + 350 + 120);
    println!(
        "three syncs: {after_first} + 350 + 120 events, {} distinct delivered, each once; the event later than --lookback was not",
        env.received().len()
    );
}

#[test]
fn the_first_sync_needs_start() {
    let Setup { env, .. } = setup(WebhookConfig::default());
    let run = env.run(&sync_args(&[]));
    run.assert_code(2);
    assert!(
        run.stderr.contains("the first sync run needs --start"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_second_sync_started_while_one_runs_exits_75() {
    let Setup { env, start } = setup(WebhookConfig {
        stall_after: Some(0),
        ..WebhookConfig::default()
    });
    let mut first = env.spawn(&sync_args(&["--start", &start]));
    assert!(
        env.webhook
            .wait_until(std::time::Duration::from_secs(60), |s| !s
                .stalled_events
                .is_empty())
    );
    let second = env.run(&sync_args(&[]));
    second.assert_code(75);
    assert!(
        second.stderr.contains("another posthog-patterns run (PID "),
        "{}",
        second.stderr
    );
    first.kill().unwrap();
    first.wait().unwrap();
    env.webhook.release();
}

#[test]
fn an_interrupted_sync_is_finished_by_the_next_run_before_it_moves_on() {
    let Setup { env, start } = setup(WebhookConfig::default());
    env.run(&sync_args(&["--start", &start])).assert_code(0);
    let now = Utc::now();
    ingest(&env, events_at(900, now - Duration::days(1), 56));
    env.webhook
        .with_state(|s| s.config.stall_after = Some(s.accepted_batches + 2));
    env.kill_while_in_flight(&sync_args(&["--batch-size", "100"]));
    // More arrives before the next run; that run finishes the first, then takes the new.
    ingest(&env, events_at(40, Utc::now() - Duration::hours(2), 57));
    let third = env.run(&sync_args(&["-v", "--batch-size", "100"]));
    third.assert_code(0);
    assert!(
        third.stderr.contains("finishing the interrupted run"),
        "{}",
        third.stderr
    );
    let start = t(&start);
    env.assert_exactly_once(|e| e.timestamp >= start);
}

#[test]
fn sync_from_the_events_api_follows_event_time_with_lag() {
    let Setup { env, start } = setup(WebhookConfig::default());
    env.run(&sync_args(&["--start", &start, "--source", "events"]))
        .assert_code(0);
    // Just after the watermark in event time, so inside the next run's window.
    let watermark = t(state(&env)["position"]["watermark"].as_str().unwrap());
    ingest(
        &env,
        events_at(30, watermark + Duration::microseconds(1), 58),
    );
    // A late event (old timestamp) is not seen by event time: the documented limit.
    let late = ingest(&env, events_at(1, Utc::now() - Duration::days(1), 59));
    let late_uuid = late[0].uuid.clone();
    env.run(&sync_args(&[])).assert_code(0);
    let seen: HashSet<String> = env.received().into_keys().collect();
    assert!(!seen.contains(&late_uuid));
    let start = t(&start);
    env.assert_exactly_once(|e| e.timestamp >= start && e.uuid != late_uuid);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let Setup { env, start } = setup(WebhookConfig::default());
    let run = env.run(&sync_args(&[
        "--start",
        &start,
        "-v",
        "--log-format",
        "json",
    ]));
    run.assert_code(0);
    assert!(!run.stderr.is_empty());
    for line in run.stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["msg"].is_string(), "{line}");
    }
}

#[test]
fn the_run_bound_comes_from_posthogs_clock_not_a_drifting_local_one() {
    // This machine's clock is 10 minutes ahead of PostHog's: more than --lag. With the local
    // clock as "now", the first run's watermark would pass events PostHog ingests after it.
    let Setup { env, start } = setup(WebhookConfig::default());
    env.posthog
        .set_config(|c| c.clock_offset = Duration::minutes(-10));
    let run = |extra: &[&str]| {
        let mut args = vec!["sync", "--lag", "1m", "--progress", "never"];
        args.extend_from_slice(extra);
        env.run(&args)
    };
    let first = run(&["--start", &start]);
    first.assert_code(0);
    assert!(
        first.stderr.contains("clock is 10m00s ahead of PostHog's"),
        "the drift is reported: {}",
        first.stderr
    );
    let watermark: chrono::DateTime<Utc> = state(&env)["position"]["watermark"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let posthog_now = Utc::now() - Duration::minutes(10);
    assert!(
        watermark <= posthog_now - Duration::seconds(59),
        "watermark {watermark} is PostHog's now minus the lag, not the local clock's"
    );

    // PostHog ingests an event after the first run (in its own time), then time moves on.
    let mut late = events_at(1, Utc::now() - Duration::hours(3), 61);
    late[0].created_at = posthog_now + Duration::seconds(30);
    env.posthog.insert(late.clone());
    env.posthog
        .set_config(|c| c.clock_offset = Duration::minutes(-8));
    run(&[]).assert_code(0);
    let received = env.received();
    assert_eq!(
        received.get(&late[0].uuid),
        Some(&1),
        "the event ingested after the first run arrives with the second"
    );
    env.assert_exactly_once(|e| e.created_at <= posthog_now + Duration::seconds(30));
    println!(
        "clock-skew sync: {} events delivered exactly once",
        received.len()
    );
}

#[test]
fn a_run_with_nothing_newly_ingested_costs_its_plan_and_no_page() {
    let Setup { env, start } = setup(WebhookConfig::default());
    env.run(&sync_args(&["--start", &start])).assert_code(0);
    env.posthog.advance_clock(Duration::minutes(15));
    let before = env.posthog.log().len();
    env.run(&sync_args(&[])).assert_code(0);
    let queries: Vec<String> = env.posthog.log()[before..]
        .iter()
        .filter_map(|r| r.sql.clone())
        .collect();
    assert!(
        queries.iter().any(|q| q.contains("count() AS n")),
        "{queries:?}"
    );
    assert!(
        !queries.iter().any(|q| q.starts_with("SELECT uuid")),
        "days counted empty are not read: {queries:?}"
    );
}

#[test]
fn a_sync_state_of_the_previous_format_is_continued_not_refused() {
    let Setup { env, start } = setup(WebhookConfig::default());
    env.run(&sync_args(&["--start", &start])).assert_code(0);
    // What an older posthog-patterns left: a run in progress, stopped inside a page.
    let now = Utc::now();
    ingest(&env, events_at(400, now - Duration::days(1), 60));
    let until = env.posthog.now();
    let file = state_file(&env);
    let mut old = state(&env);
    let watermark = old["position"]["watermark"].clone();
    let lookback = (now - Duration::days(7)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    old["version"] = 1.into();
    old["position"]["pending"] = serde_json::json!({
        "until": until.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "start": lookback,
        "end": (now + Duration::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "ingested_after": watermark,
        "cursor": {"kind": "within", "page": {"kind": "before", "timestamp": lookback},
                   "rows": 25, "digest": 99, "timestamp": lookback},
    });
    std::fs::write(&file, serde_json::to_string(&old).unwrap()).unwrap();
    let run = env.run(&sync_args(&["-v"]));
    run.assert_code(0);
    assert!(
        run.stderr.contains("finishing the interrupted run") && run.stderr.contains("arrive again"),
        "{}",
        run.stderr
    );
    let start = t(&start);
    env.assert_exactly_once(|e| e.timestamp >= start);
    assert_eq!(state(&env)["version"], 2);
}
