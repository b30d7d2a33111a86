//! The Query reader in PostHog's storage order, against a stand-in whose queries cost what
//! they read: plans, windows, busy users, PostHog's limits, older checkpoints, and what a
//! backfill leaves to `sync`.

mod common;

use chrono::{Duration, Utc};
use common::*;
use posthog_patterns_standin::data::tied_events;
use posthog_patterns_standin::{PostHogConfig, ReadBudget, StoredEvent, WebhookConfig};

/// The requests that read events (pages), not counts.
fn pages(env: &Env) -> Vec<posthog_patterns_standin::posthog::Logged> {
    env.posthog
        .log()
        .into_iter()
        .filter(|r| {
            r.sql
                .as_deref()
                .is_some_and(|q| q.starts_with("SELECT uuid"))
        })
        .collect()
}

#[test]
fn small_days_share_a_window_and_a_day_with_nothing_costs_no_query() {
    // 3,000 events over a week and pages of 5,000: one plan, one page, all days in it.
    let env = Env::new(events(3_000, 201), WebhookConfig::default());
    let run = env.run(&backfill_args(&["--page-size", "5000"]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    let log = env.posthog.log();
    let plans = log
        .iter()
        .filter(|r| r.sql.as_deref().unwrap_or("").contains("count() AS n"))
        .count();
    assert_eq!((plans, pages(&env).len()), (1, 1), "{log:#?}");
    // PostHog read about what it returned: the plan's key columns, the page's events.
    let (read, returned) = env
        .posthog
        .with_state(|s| (s.cost.bytes_read, s.cost.bytes_returned));
    assert!(
        read as f64 <= 1.5 * returned as f64,
        "{read} read for {returned}"
    );
}

#[test]
fn one_busy_user_is_counted_by_user_and_read_in_parts_of_their_events() {
    // One user with 6,000 events on one day (all on one shard: about 840 KB), among 3,000
    // others; a shard may read 300 KB within PostHog's limit (counting that day by bucket
    // reads about 280 KB).
    let day = t("2024-03-04T00:00:00Z");
    let mut ev = events(3_000, 202);
    let busy: Vec<StoredEvent> = tied_events(6_000, day, 203)
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e.timestamp = day + Duration::seconds(i as i64);
            e.created_at = e.timestamp + Duration::seconds(1);
            e.event = "api_call".into();
            e.distinct_id = "the-busy-one".into();
            e
        })
        .collect();
    ev.extend(busy);
    let env = Env::with(costly(300_000), ev, WebhookConfig::default());
    let run = env.run(&backfill_args(&["--page-size", "1000", "-v"]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    let log = env.posthog.log();
    let by_user = log
        .iter()
        .filter(|r| {
            r.sql
                .as_deref()
                .unwrap_or("")
                .contains("GROUP BY distinct_hash")
        })
        .count();
    assert!(by_user >= 1, "the busy user's bucket was counted by user");
    // Windows inside one user's events are bounded by cityHash64(uuid).
    let by_uuid = pages(&env)
        .iter()
        .filter(|r| r.sql.as_deref().unwrap().contains("cityHash64(uuid) <"))
        .count();
    assert!(by_uuid >= 4, "{by_uuid} windows bounded by uuid hash");
    // Planned by user, the windows fit: none is lost to PostHog's limit (plans of too many
    // days at first may be).
    let lost = pages(&env).iter().filter(|r| r.status == 504).count();
    assert_eq!(lost, 0, "pages lost to PostHog's limit");
}

#[test]
fn a_day_too_costly_to_count_by_bucket_is_counted_by_name() {
    // 4,000 events on one day (2,000 a shard): counting by bucket reads about 88 KB a shard,
    // by name about 68 KB; a shard may read 80 KB.
    let day = t("2024-03-05T00:00:00Z");
    let ev = posthog_patterns_standin::synthetic_events(4_000, day, day + Duration::days(1), 204);
    let env = Env::with(costly(80_000), ev, WebhookConfig::default());
    let run = env.run(&backfill_args(&["--page-size", "400", "-v"]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    let log = env.posthog.log();
    let by_name = log.iter().find(|r| {
        let sql = r.sql.as_deref().unwrap_or("");
        sql.contains("count() AS n") && !sql.contains("hash_bucket")
    });
    assert_eq!(by_name.map(|r| r.status), Some(200), "{log:#?}");
    assert!(
        log.iter()
            .any(|r| r.status == 504 && r.sql.as_deref().unwrap_or("").contains("hash_bucket"))
    );
}

#[test]
fn posthogs_cap_on_queries_at_once_lowers_the_windows_read_at_once() {
    // PostHog runs one query at a time; another waits 50 ms for a slot, then gets its 429.
    let env = Env::with(
        PostHogConfig {
            query_latency: std::time::Duration::from_millis(150),
            max_concurrent_queries: Some(1),
            query_slot_wait: std::time::Duration::from_millis(50),
            ..PostHogConfig::default()
        },
        events(6_000, 205),
        WebhookConfig::default(),
    );
    let run = env.run(&backfill_args(&[
        "--page-size",
        "700",
        "--fetch-concurrency",
        "3",
        "-v",
    ]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    let log = env.posthog.log();
    let refused: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == 429)
        .map(|(i, _)| i)
        .collect();
    assert!(!refused.is_empty(), "PostHog refused some queries");
    // Each refusal lowers the windows at once, down to one: then none is refused any more.
    assert!(refused.len() <= 4, "{} refused", refused.len());
    assert!(
        log.len() - refused.last().unwrap() > 5,
        "queries went on without refusals after the concurrency was lowered"
    );
    assert!(
        run.stderr.contains("Exceeded maximum concurrency limit"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_hourly_read_budget_is_waited_out_and_past_max_wait_the_run_stops_saying_when_it_refills() {
    // A budget spent by the first query: the next waits for the window's end.
    let config = |window: u64| PostHogConfig {
        read_budget: Some(ReadBudget {
            bytes: 1,
            window: std::time::Duration::from_secs(window),
        }),
        ..PostHogConfig::default()
    };
    let env = Env::with(config(2), events(1_000, 206), WebhookConfig::default());
    let run = env.run(&backfill_args(&["--page-size", "400", "-v"]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    assert!(env.posthog.with_state(|s| s.cost.budget_refusals) > 0);
    // A budget that refills in an hour, and --max-wait 10s: exit 75, saying when.
    let env = Env::with(config(3_600), events(1_000, 207), WebhookConfig::default());
    let run = env.run(&backfill_args(&["--max-wait", "10s"]));
    run.assert_code(75);
    assert!(
        run.stderr
            .contains("read budget for API queries of this project is spent")
            && run.stderr.contains("it refills at")
            && run.stderr.contains("more than --max-wait"),
        "{}",
        run.stderr
    );
}

#[test]
fn events_ingested_after_a_backfill_started_are_left_to_sync() {
    let env = Env::new(
        events(4_000, 208),
        WebhookConfig {
            stall_after: Some(3),
            ..WebhookConfig::default()
        },
    );
    let cp = env.path("job.json");
    let args = backfill_args(&[
        "--page-size",
        "500",
        "--batch-size",
        "100",
        "--concurrency",
        "1",
        "--checkpoint",
        cp.to_str().unwrap(),
    ]);
    env.kill_while_in_flight(&args);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    let started: chrono::DateTime<Utc> = state["ingested_until"].as_str().unwrap().parse().unwrap();
    // Ingested after the job started, into the last day of its range.
    let mut late = events(1, 209).remove(0);
    late.uuid = "00000000-0000-4000-8000-00000000cafe".into();
    late.timestamp = t("2024-03-07T12:00:00Z");
    late.created_at = started + Duration::seconds(5);
    env.posthog.insert(vec![late.clone()]);
    let run = env.run(&args);
    run.assert_code(0);
    assert!(!run.stderr.contains("no longer begins"), "{}", run.stderr);
    let received = env.received_with_stalled();
    assert!(!received.contains_key(&late.uuid), "left to sync");
    let expected = env
        .posthog
        .events()
        .into_iter()
        .filter(|e| in_range(e) && e.uuid != late.uuid)
        .count();
    assert_eq!(received.len(), expected, "every other event arrived");
}

/// A backfill run to its end with `--checkpoint`, its state rewritten as the version before
/// storage order would have left it at `position`, and run again: what the second run
/// delivered, and what it printed.
fn resume_from_version_1(
    env: &Env,
    position: serde_json::Value,
) -> (std::collections::HashMap<String, usize>, Run) {
    let cp = env.path("old.json");
    let args = backfill_args(&["--page-size", "700", "--checkpoint", cp.to_str().unwrap()]);
    env.run(&args).assert_code(0);
    let before = env.webhook.uuids().len();
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    state["version"] = 1.into();
    state["complete"] = false.into();
    state["position"] = position;
    state.as_object_mut().unwrap().remove("ingested_until");
    std::fs::write(&cp, serde_json::to_string(&state).unwrap()).unwrap();
    let run = env.run(&args);
    run.assert_code(0);
    let mut counts = std::collections::HashMap::new();
    for uuid in &env.webhook.uuids()[before..] {
        *counts.entry(uuid.clone()).or_insert(0) += 1;
    }
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    assert_eq!(again["version"], 2, "rewritten in the current format");
    (counts, run)
}

/// ClickHouse's uuid order: the second half first.
fn uuid_order(uuid: &str) -> (u64, u64) {
    let v = posthog_patterns_standin::data::uuid_number(uuid).unwrap();
    (v as u64, (v >> 64) as u64)
}

#[test]
fn an_older_checkpoint_in_time_order_resumes_exactly_where_it_stood() {
    // 300 events sharing one microsecond, in the middle of the range.
    let tie = t("2024-03-04T15:30:00.000001Z");
    let mut ev = events(3_000, 210);
    ev.extend(tied_events(300, tie, 211));
    let env = Env::new(ev, WebhookConfig::default());
    let mut at_tie: Vec<StoredEvent> = env
        .posthog
        .events()
        .into_iter()
        .filter(|e| e.timestamp == tie)
        .collect();
    at_tie.sort_by_key(|e| uuid_order(&e.uuid));
    let cursor = &at_tie[120];
    // Version 1's `after`: every event up to (tie, that uuid) in time order is done.
    let (counts, _) = resume_from_version_1(
        &env,
        serde_json::json!({"kind": "after", "timestamp": "2024-03-04T15:30:00.000001Z", "uuid": cursor.uuid}),
    );
    let expected: std::collections::HashSet<String> = env
        .posthog
        .events()
        .into_iter()
        .filter(in_range)
        .filter(|e| (e.timestamp, uuid_order(&e.uuid)) > (tie, uuid_order(&cursor.uuid)))
        .map(|e| e.uuid)
        .collect();
    let got: std::collections::HashSet<String> = counts.keys().cloned().collect();
    assert_eq!(got, expected, "exactly the events after the old cursor");
    assert!(counts.values().all(|n| *n == 1));
    // Version 1's `before` in the middle of a day.
    let env = Env::new(events(3_000, 212), WebhookConfig::default());
    let mid = t("2024-03-05T09:17:00Z");
    let (counts, _) = resume_from_version_1(
        &env,
        serde_json::json!({"kind": "before", "timestamp": "2024-03-05T09:17:00.000000Z"}),
    );
    let expected = env
        .posthog
        .events()
        .into_iter()
        .filter(|e| in_range(e) && e.timestamp >= mid)
        .count();
    assert_eq!(counts.len(), expected);
}

#[test]
fn an_older_checkpoint_inside_a_page_goes_back_to_the_page_with_a_warning() {
    let env = Env::new(events(3_000, 213), WebhookConfig::default());
    let (counts, run) = resume_from_version_1(
        &env,
        serde_json::json!({"kind": "within", "page": {"kind": "before", "timestamp": "2024-03-06T00:00:00.000000Z"},
                           "rows": 40, "digest": 12345, "timestamp": "2024-03-06T00:10:00.000000Z"}),
    );
    assert!(
        run.stderr
            .contains("the 40 events already handed on from it arrive again"),
        "{}",
        run.stderr
    );
    let expected = env
        .posthog
        .events()
        .into_iter()
        .filter(|e| in_range(e) && e.timestamp >= t("2024-03-06T00:00:00Z"))
        .count();
    assert_eq!(
        counts.len(),
        expected,
        "from the page's start: nothing skipped"
    );
}

#[test]
fn the_first_window_has_no_lower_bound_the_last_no_upper_one_and_hash_bounds_are_exact_integers() {
    let env = Env::new(events(6_000, 214), WebhookConfig::default());
    env.run(&backfill_args(&[
        "--page-size",
        "900",
        "--fetch-concurrency",
        "1",
    ]))
    .assert_code(0);
    env.assert_exactly_once(in_range);
    let pages = pages(&env);
    assert!(pages.len() >= 6, "{}", pages.len());
    let sql = |i: usize| pages[i].sql.clone().unwrap();
    assert!(!sql(0).contains("{lo_event}"), "{}", sql(0));
    assert!(sql(0).contains("{hi_event}"), "{}", sql(0));
    assert!(
        !sql(pages.len() - 1).contains("{hi_event}"),
        "{}",
        sql(pages.len() - 1)
    );
    // Each page begins where the window before ended, or goes on in the same window.
    for w in pages.windows(2) {
        let (a, b) = (w[0].values.as_ref().unwrap(), w[1].values.as_ref().unwrap());
        let next = a.get("hi_event") == b.get("lo_event") && a.get("hi_hash") == b.get("lo_hash");
        let same = a.get("hi_event") == b.get("hi_event") && a.get("hi_hash") == b.get("hi_hash");
        assert!(next || same, "{a:?} then {b:?}");
    }
    // Bounds of 2^63 and more travel as exact unsigned integers.
    let high: Vec<u64> = pages
        .iter()
        .filter_map(|r| r.values.as_ref()?.get("hi_hash")?.as_u64())
        .filter(|h| *h >= 1 << 63)
        .collect();
    assert!(!high.is_empty());
}

#[test]
fn a_window_whose_planned_events_round_to_nothing_is_still_read() {
    // One user's 1,200 events on one day, and windows aiming at 1,199.52 events: the last
    // window is planned at less than half an event, but it lies in a planned group, and may
    // hold one. Seeds vary where the hashes fall.
    for seed in 0..6 {
        let day = t("2024-03-03T00:00:00Z");
        let ev: Vec<StoredEvent> = tied_events(1_200, day, 300 + seed)
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.timestamp = day + Duration::seconds(i as i64);
                e.event = "one".into();
                e.distinct_id = "the-only-one".into();
                e
            })
            .collect();
        let env = Env::new(ev, WebhookConfig::default());
        env.run(&backfill_args(&["--page-size", "1224"]))
            .assert_code(0);
        env.assert_exactly_once(in_range);
    }
}
