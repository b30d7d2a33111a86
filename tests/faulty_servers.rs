//! Servers that misbehave the way real ones do: webhooks behind redirects, PostHogs (or
//! proxies) that cap, reorder, repeat or ignore filters. Whatever they do, a run that exits 0
//! has delivered every event of its range, and a run that cannot stops loudly.

mod common;

use chrono::{Duration, Utc};
use common::*;
use posthog_patterns_standin::webhook::SECRET_PATH;
use posthog_patterns_standin::{
    Fault, PageFault, PostHogConfig, Spoil, StoredEvent, WebhookConfig,
};

#[test]
fn a_webhook_that_redirects_stops_the_run_and_nothing_counts_as_delivered() {
    for status in [301u16, 302, 303, 307, 308] {
        let env = Env::new(
            events(500, 70),
            WebhookConfig {
                redirect: Some((status, "/landing".into())),
                ..WebhookConfig::default()
            },
        );
        let run = env.run(&backfill_args(&[]));
        run.assert_code(1);
        let host = format!("http://{}", env.webhook.server.addr);
        assert!(
            run.stderr
                .contains(&format!("HTTP {status}, a redirect to {host}/…"))
                && run.stderr.contains("--webhook-url"),
            "names the status, the target's scheme and host, and the fix: {}",
            run.stderr
        );
        assert!(!run.stderr.contains(SECRET_PATH), "{}", run.stderr);
        assert!(env.received().is_empty(), "HTTP {status}: nothing arrived");
        assert!(!run.stderr.contains("complete"), "{}", run.stderr);

        // Fixed, the same command delivers everything: nothing was marked as sent.
        env.webhook.with_state(|s| s.config.redirect = None);
        env.run(&backfill_args(&[])).assert_code(0);
        env.assert_exactly_once(in_range);
        println!(
            "HTTP {status} redirect: exit 1, then {} events after the fix",
            env.received().len()
        );
    }
}

#[test]
fn a_posthog_that_redirects_stops_the_run_naming_only_the_target_host() {
    let env = Env::new(events(100, 71), WebhookConfig::default());
    env.posthog.fault_next(Fault::redirect(
        301,
        "https://eu.posthog.com/api/projects/4242/query/?token=hunter2",
    ));
    let run = env.run(&backfill_args(&["--source", "query"]));
    run.assert_code(1);
    assert!(
        run.stderr
            .contains("HTTP 301, a redirect to https://eu.posthog.com/…")
            && run.stderr.contains("--host"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    assert!(env.received().is_empty());
}

/// A backfill against a PostHog whose pages break `fault`: it stops with exit 1 naming the
/// fault, posts nothing outside the range, and a rerun against a healthy server completes
/// the range without loss.
fn stops_on(fault: PageFault, expect: &str) {
    let env = Env::with(
        PostHogConfig {
            page_fault: Some(fault),
            ..PostHogConfig::default()
        },
        events(3_000, 72),
        WebhookConfig::default(),
    );
    let args = backfill_args(&["--page-size", "400", "--batch-size", "100"]);
    let run = env.run(&args);
    run.assert_code(1);
    assert!(
        run.stderr.contains("PostHog's Query API returned event") && run.stderr.contains(expect),
        "{fault:?}: {}",
        run.stderr
    );
    let before_fix = env.received().len();
    let start = t(RANGE_START);
    let end = t(RANGE_END);
    let stray = env
        .posthog
        .events()
        .into_iter()
        .filter(|e| {
            (e.timestamp < start || e.timestamp >= end) && env.received().contains_key(&e.uuid)
        })
        .count();
    assert_eq!(stray, 0, "{fault:?}: no event outside the range was posted");

    env.posthog.set_config(|c| c.page_fault = None);
    env.run(&args).assert_code(0);
    // Resumed from the checkpoint: at most the batches in flight when it stopped come twice.
    let n = env.assert_delivered(in_range, 4 * 100);
    println!("{fault:?}: exit 1 after {before_fix} events; the rerun completed all {n}");
}

#[test]
fn a_row_past_the_window_end_stops_the_run() {
    stops_on(PageFault::RowPastEnd, "outside the requested window");
}

#[test]
fn a_row_before_the_window_start_stops_the_run() {
    stops_on(PageFault::RowBeforeStart, "outside the requested window");
}

#[test]
fn rows_out_of_order_stop_the_run() {
    stops_on(PageFault::Reversed, "not after the row before it");
}

#[test]
fn pages_that_cycle_stop_the_run_instead_of_looping() {
    // Depending on where the repeated page falls, its rows are before the cursor or before
    // the window: either way the run stops instead of looping.
    stops_on(PageFault::Cycle, "although it");
}

#[test]
fn a_server_capping_rows_below_the_page_size_loses_nothing() {
    // 950: just below the events a window aims at (980 for pages of 1,000), where a window
    // planned to hold 980 comes back with 950 and must not be taken as done.
    for cap in [100usize, 950, 999] {
        let env = Env::with(
            PostHogConfig {
                row_cap: Some(cap),
                ..PostHogConfig::default()
            },
            events(5_000, 73),
            WebhookConfig::default(),
        );
        env.run(&backfill_args(&["--page-size", "1000"]))
            .assert_code(0);
        let n = env.assert_exactly_once(in_range);
        let queries = env
            .posthog
            .log()
            .iter()
            .filter(|r| {
                r.sql
                    .as_deref()
                    .is_some_and(|q| q.starts_with("SELECT uuid"))
            })
            .count();
        // The least possible is n / cap pages; each window may cost one verifying query more.
        assert!(
            queries <= n / cap + 20,
            "cap {cap}: {queries} queries for {n} events"
        );
        println!("row cap {cap}, page 1000: {n} events exactly once in {queries} queries");
    }
}

#[test]
fn a_server_ignoring_the_event_filter_gets_only_the_asked_events_posted() {
    let env = Env::with(
        PostHogConfig {
            page_fault: Some(PageFault::IgnoreFilters),
            ..PostHogConfig::default()
        },
        events(2_000, 74),
        WebhookConfig::default(),
    );
    let run = env.run(&backfill_args(&["--event", "signup"]));
    run.assert_code(0);
    let n = env.assert_exactly_once(|e| in_range(e) && e.event == "signup");
    assert_eq!(
        run.stderr
            .matches("--event/--exclude-event filters leave out")
            .count(),
        1,
        "warned once: {}",
        run.stderr
    );
    println!("filter ignored by the server: {n} signups posted, nothing else");
}

#[test]
fn a_server_ignoring_the_ingestion_bounds_does_not_make_each_sync_repost_everything() {
    let now = Utc::now();
    let env = Env::with(
        PostHogConfig {
            page_fault: Some(PageFault::IgnoreFilters),
            ..PostHogConfig::default()
        },
        posthog_patterns_standin::synthetic_events(
            1_000,
            now - Duration::days(2),
            now - Duration::hours(1),
            75,
        ),
        WebhookConfig::default(),
    );
    let start = (now - Duration::days(3)).to_rfc3339();
    let sync = |extra: &[&str]| {
        let mut args = vec!["sync", "--lag", "0s", "--progress", "never"];
        args.extend_from_slice(extra);
        env.run(&args)
    };
    sync(&["--start", &start]).assert_code(0);
    let first = env.received().len();
    env.posthog.advance_clock(Duration::seconds(5));
    let second = sync(&["-v"]);
    second.assert_code(0);
    assert_eq!(
        env.received().len(),
        first,
        "the second run posts nothing again"
    );
    assert!(
        second.stderr.contains("sync: 0 events posted")
            && second.stderr.contains("created_at bounds"),
        "{}",
        second.stderr
    );
    println!("created_at filter ignored: first run {first} events, second run 0");
}

/// The dead-letter file's records.
fn dead_letters(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every dead-letter record is whole JSON"))
        .collect()
}

#[test]
fn a_rejected_event_costs_only_itself_in_a_bounded_number_of_requests() {
    let ev = events(2_000, 76);
    let poison: Vec<String> = [10usize, 500, 501]
        .iter()
        .map(|i| ev[*i].uuid.clone())
        .collect();
    let env = Env::new(
        ev,
        WebhookConfig {
            reject_containing: poison.clone(),
            ..WebhookConfig::default()
        },
    );
    let dead = env.path("dead.ndjson");
    let run = env.run(&backfill_args(&[
        "--batch-size",
        "1000",
        "--dead-letter",
        dead.to_str().unwrap(),
    ]));
    run.assert_code(3);
    let lines = dead_letters(&dead);
    let mut rejected: Vec<String> = lines
        .iter()
        .map(|l| l["event"]["uuid"].as_str().unwrap().to_string())
        .collect();
    rejected.sort();
    let mut expected = poison.clone();
    expected.retain(|u| {
        env.posthog
            .events()
            .iter()
            .any(|e| &e.uuid == u && in_range(e))
    });
    expected.sort();
    assert_eq!(
        rejected, expected,
        "exactly the rejected events were set aside"
    );
    env.assert_exactly_once(|e| in_range(e) && !poison.contains(&e.uuid));
    // 3 batches (2,002 events); bisecting k = 3 rejected events in a batch of N = 1,000
    // costs at most 2·k·⌈log₂ N⌉ requests on top of the batches.
    let requests = env.webhook.with_state(|s| s.requests);
    let bound = 3 + 2 * 3 * 10;
    assert!(
        requests <= bound,
        "{requests} webhook requests, at most {bound}"
    );
    println!(
        "3 rejected events: {requests} webhook requests (bound {bound}), 3 dead-lettered, the rest posted once"
    );
}

#[test]
fn a_webhook_that_rejects_everything_stops_quickly() {
    let env = Env::new(
        events(3_000, 77),
        WebhookConfig {
            reject_containing: vec!["uuid".into()],
            ..WebhookConfig::default()
        },
    );
    let dead = env.path("dead.ndjson");
    let run = env.run(&backfill_args(&[
        "--batch-size",
        "1000",
        "--concurrency",
        "1",
        "--dead-letter",
        dead.to_str().unwrap(),
    ]));
    run.assert_code(1);
    assert!(run.stderr.contains("has accepted none"), "{}", run.stderr);
    let requests = env.webhook.with_state(|s| s.requests);
    assert!(requests < 100, "{requests} requests");
    assert!(dead_letters(&dead).len() <= 8);
    println!("a webhook rejecting everything: exit 1 after {requests} requests");
}

#[test]
fn a_webhook_whose_rejections_no_single_event_explains_stops_with_exit_1() {
    let env = Env::new(
        events(300, 78),
        WebhookConfig {
            reject_batches_over: Some(1),
            ..WebhookConfig::default()
        },
    );
    let dead = env.path("dead.ndjson");
    let run = env.run(&backfill_args(&[
        "--batch-size",
        "16",
        "--concurrency",
        "1",
        "--dead-letter",
        dead.to_str().unwrap(),
    ]));
    run.assert_code(1);
    assert!(
        run.stderr.contains("only 0 events on their own"),
        "{}",
        run.stderr
    );
    assert!(
        dead_letters(&dead).is_empty(),
        "no event accepted alone was set aside"
    );
}

#[test]
fn a_torn_dead_letter_record_left_by_a_killed_run_is_cut_before_appending() {
    let ev = events(500, 79);
    let poison = ev[100].uuid.clone();
    let env = Env::new(
        ev,
        WebhookConfig {
            reject_containing: vec![poison.clone()],
            ..WebhookConfig::default()
        },
    );
    let dead = env.path("dead.ndjson");
    // What a disk that filled mid-append leaves behind.
    std::fs::write(&dead, "{\"status\":400,\"response\":\"x\",\"event\":{\"uuid\":\"earlier\"}}\n{\"status\":400,\"resp").unwrap();
    env.run(&backfill_args(&["--dead-letter", dead.to_str().unwrap()]))
        .assert_code(3);
    let lines = dead_letters(&dead);
    let uuids: Vec<&str> = lines
        .iter()
        .map(|l| l["event"]["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(uuids, ["earlier", poison.as_str()]);
}

#[test]
fn windows_read_in_parallel_are_delivered_in_order_exactly_once_within_posthogs_query_cap() {
    let env = Env::with(
        PostHogConfig {
            query_latency: std::time::Duration::from_millis(150),
            max_concurrent_queries: Some(3),
            ..PostHogConfig::default()
        },
        events(20_000, 97),
        WebhookConfig::default(),
    );
    // PostHog runs at most 3 queries at once; one more waits for a slot or gets a 429, which
    // the tool waits out rather than failing.
    let run = env.run(&backfill_args(&[
        "--fetch-concurrency",
        "3",
        "--page-size",
        "2000",
        "--concurrency",
        "1",
    ]));
    run.assert_code(0);
    let n = env.assert_exactly_once(in_range);
    let (peak, refused) = env
        .posthog
        .with_state(|s| (s.queries_running_peak, s.queries_refused_for_concurrency));
    assert!(
        peak >= 2,
        "windows were read in parallel: at most {peak} at once"
    );
    assert!(peak <= 3, "{peak}");
    // With --concurrency 1 the webhook saw the events in PostHog's storage order: days in
    // order, and inside a day by event name and hashes (not by time).
    let order: Vec<(StorageKey, chrono::DateTime<Utc>)> = {
        let by_uuid: std::collections::HashMap<String, StoredEvent> = env
            .posthog
            .events()
            .into_iter()
            .map(|e| (e.uuid.clone(), e))
            .collect();
        env.webhook
            .uuids()
            .into_iter()
            .map(|u| (storage_key(&by_uuid[&u]), by_uuid[&u].timestamp))
            .collect()
    };
    assert!(
        order.windows(2).all(|w| w[0].0 < w[1].0),
        "delivered in storage order"
    );
    let back_in_time = order.windows(2).filter(|w| w[1].1 < w[0].1).count();
    assert!(
        back_in_time > 1_000,
        "not in time order inside a day: {back_in_time}"
    );
    println!(
        "{n} events exactly once and in order; at most {peak} queries at once, {refused} refused for concurrency"
    );
}

#[test]
fn an_answer_cut_short_or_garbled_part_way_is_asked_again_and_nothing_is_sent_twice() {
    let env = Env::new(events(6_000, 81), WebhookConfig::default());
    // Pages of 2,000 rows, read as they arrive: by the time each answer breaks, hundreds of
    // its rows have been handed on (and, with batches of 100, posted).
    env.posthog.spoil_next_answers([
        Spoil::Cut(0.5),
        Spoil::Garble(0.3),
        Spoil::Cut(0.9),
        Spoil::Cut(0.2),
    ]);
    let args = backfill_args(&["--page-size", "2000", "--batch-size", "100", "-v"]);
    let run = env.run(&args);
    run.assert_code(0);
    assert!(
        run.stderr.contains("PostHog") && run.stderr.contains("retries"),
        "{}",
        run.stderr
    );
    let n = env.assert_exactly_once(in_range);
    let queries = env
        .posthog
        .log()
        .iter()
        .filter(|l| l.path.ends_with("/query/"))
        .count();
    println!("4 answers broken part-way: all {n} events exactly once in {queries} queries");
}

#[test]
fn a_run_killed_inside_a_page_resumes_inside_it_unless_posthogs_answer_changed() {
    for late in [false, true] {
        let env = Env::new(
            events(5_000, 82),
            WebhookConfig {
                stall_after: Some(12),
                ..WebhookConfig::default()
            },
        );
        let cp = env.path("job.json");
        let cp = cp.to_str().unwrap();
        let args = backfill_args(&[
            "--page-size",
            "5000",
            "--batch-size",
            "100",
            "--concurrency",
            "1",
            "--checkpoint",
            cp,
        ]);
        env.kill_while_in_flight(&args);
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(cp).unwrap()).unwrap();
        let position = &state["position"];
        assert_eq!(position["kind"], "within", "{state}");
        assert!(position["rows"].as_u64().unwrap() >= 100, "{state}");
        if late {
            // An event ingested since, which sorts first in the page the run stopped in.
            let page = &position["page"];
            let at: chrono::DateTime<Utc> = match page["kind"].as_str().unwrap() {
                "before" => page["timestamp"].as_str().unwrap().parse().unwrap(),
                _ => {
                    page["timestamp"]
                        .as_str()
                        .unwrap()
                        .parse::<chrono::DateTime<Utc>>()
                        .unwrap()
                        + Duration::microseconds(1)
                }
            };
            let mut e = env.posthog.events()[0].clone();
            e.uuid = "00000000-0000-4000-8000-00000000beef".into();
            e.timestamp = at;
            env.posthog.insert(vec![e]);
        }
        let run = env.run(&args);
        run.assert_code(0);
        let counts = env.received_with_stalled();
        let duplicates: usize = counts.values().map(|n| n - 1).sum();
        let expected = env.posthog.events().into_iter().filter(in_range).count();
        assert_eq!(counts.len(), expected, "every event arrived");
        if late {
            assert!(
                run.stderr
                    .contains("no longer begins with the events already handed on"),
                "{}",
                run.stderr
            );
            assert!(duplicates > 100 && duplicates <= 5_000, "{duplicates}");
        } else {
            // Only the stalled batch, never acknowledged, comes twice.
            assert!(duplicates <= 100, "{duplicates} duplicates");
        }
        println!("late event: {late}: {duplicates} duplicates after resuming inside a page");
    }
}

#[test]
fn answers_that_keep_breaking_but_get_further_each_time_do_not_use_up_the_retries() {
    let env = Env::new(events(3_000, 83), WebhookConfig::default());
    // One page broken five times, each time further on, with --max-retries 2: every try hands
    // on new rows, so none of them is a failure that counts toward the limit.
    env.posthog.spoil_next_answers([
        Spoil::Cut(0.2),
        Spoil::Cut(0.4),
        Spoil::Garble(0.6),
        Spoil::Cut(0.8),
        Spoil::Cut(0.95),
    ]);
    let args = backfill_args(&[
        "--page-size",
        "5000",
        "--max-retries",
        "2",
        "--fetch-concurrency",
        "1",
    ]);
    env.run(&args).assert_code(0);
    env.assert_exactly_once(in_range);
    // Answers that break before getting any further are failures: exit 75 after the third,
    // and the rerun completes.
    let env2 = Env::new(events(3_000, 84), WebhookConfig::default());
    env2.posthog.spoil_next_answers([
        Spoil::Cut(0.3),
        Spoil::Cut(0.1),
        Spoil::Cut(0.1),
        Spoil::Cut(0.1),
    ]);
    let run = env2.run(&args);
    run.assert_code(75);
    assert!(
        run.stderr.contains("still failing after 2 retries"),
        "{}",
        run.stderr
    );
    env2.run(&args).assert_code(0);
    env2.assert_delivered(in_range, 0);
}

#[test]
fn a_posthog_answer_that_trickles_forever_is_given_up_and_asked_again() {
    let env = Env::new(events(2_000, 85), WebhookConfig::default());
    // The first page's answers (request 0 asks for PostHog's time, 1 plans): a 200 whose body
    // comes a byte a second, never ending. Each byte comes well within --http-timeout, so
    // only a bound on the whole answer ends it.
    for n in 2..4 {
        env.posthog.fault_at(n, Fault::status(200).trickling());
    }
    let started = std::time::Instant::now();
    let run = env.run(&backfill_args(&[
        "--source",
        "query",
        "--http-timeout",
        "3s",
        "-v",
    ]));
    run.assert_code(0);
    assert!(
        run.stderr.contains("sends its answer too slowly"),
        "{}",
        run.stderr
    );
    env.assert_exactly_once(in_range);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}
