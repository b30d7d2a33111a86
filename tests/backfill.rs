//! `backfill` end to end: the real binary against the PostHog and webhook stand-ins.

mod common;

use common::*;
use posthog_patterns_standin::data::tied_events;
use posthog_patterns_standin::{Fault, PostHogConfig, WebhookConfig};
use std::time::Duration;

#[test]
fn delivers_every_event_exactly_once_across_ties_at_page_boundaries() {
    let mut ev = events(3_000, 1);
    // 1,200 events in one microsecond: more than two pages of 500.
    ev.extend(tied_events(1_200, t("2024-03-02T10:00:00.000001Z"), 2));
    let env = Env::new(ev, WebhookConfig::default());
    let run = env.run(&backfill_args(&[
        "--page-size",
        "500",
        "--batch-size",
        "300",
    ]));
    run.assert_code(0);
    let n = env.assert_exactly_once(in_range);
    assert_eq!(
        n,
        3_000 + 1_200 + 2,
        "the two in-range edge events are included"
    );
    assert!(run.stderr.contains("backfill complete"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "backfill writes nothing to stdout");

    // Every query followed PostHog's rules: UTC modifier, no OFFSET, bound values.
    let log: Vec<_> = env
        .posthog
        .log()
        .into_iter()
        .filter(|r| r.sql.as_deref() != Some("SELECT 1"))
        .collect();
    assert!(log.len() > 8, "paged: {} requests", log.len());
    for req in &log {
        let sql = req.sql.as_deref().unwrap();
        assert!(!sql.to_uppercase().contains("OFFSET"), "{sql}");
        assert_eq!(
            req.modifiers.as_ref().unwrap()["convertToProjectTimezone"],
            false
        );
        assert!(!sql.contains("2024-"), "constants travel in values: {sql}");
    }
}

#[test]
fn event_filters_go_into_the_query_and_select_exactly_those_events() {
    let env = Env::new(events(2_000, 3), WebhookConfig::default());
    env.run(&backfill_args(&[
        "--event",
        "signup,purchase",
        "--event",
        "$pageview",
        "--exclude-event",
        "purchase",
    ]))
    .assert_code(0);
    let n =
        env.assert_exactly_once(|e| in_range(e) && (e.event == "signup" || e.event == "$pageview"));
    assert!(n > 300, "{n}");
    let log = env.posthog.log();
    assert_eq!(
        log[0].sql.as_deref(),
        Some("SELECT 1"),
        "auto asks first; its answer's Date is PostHog's time, to check --end"
    );
    assert!(
        log[1].sql.as_deref().unwrap().contains("count() AS n"),
        "then the plan: {:?}",
        log[1].sql
    );
    assert!(log.len() > 2, "then the pages");
    for req in &log[1..] {
        let sql = req.sql.clone().unwrap();
        assert!(sql.contains("event IN ("), "{sql}");
        assert!(sql.contains("event NOT IN ("), "{sql}");
    }
}

#[test]
fn posted_events_keep_properties_byte_for_byte_and_have_the_documented_shape() {
    let env = Env::new(events(200, 4), WebhookConfig::default());
    env.run(&backfill_args(&[])).assert_code(0);
    let stored: std::collections::HashMap<String, _> = env
        .posthog
        .events()
        .into_iter()
        .map(|e| (e.uuid.clone(), e))
        .collect();
    let received = env.webhook.with_state(|s| s.events.clone());
    assert!(received.len() > 200);
    for text in &received {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let e = &stored[v["uuid"].as_str().unwrap()];
        let fields = [
            "uuid",
            "event",
            "distinct_id",
            "timestamp",
            "created_at",
            "properties",
            "elements_chain",
            "team_id",
        ];
        assert_eq!(v.as_object().unwrap().len(), fields.len(), "{text}");
        let at: Vec<usize> = fields
            .iter()
            .map(|f| text.find(&format!("\"{f}\":")).unwrap())
            .collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "fields in the documented order: {text}"
        );
        // The properties text PostHog stored appears verbatim in what was posted.
        assert!(
            text.contains(&format!("\"properties\":{}", e.properties)),
            "{text}"
        );
        assert_eq!(
            v["timestamp"],
            e.timestamp.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
        );
        assert_eq!(v["team_id"], 4242);
        assert!(v["properties"].is_object());
    }
}

#[test]
fn resume_after_kill_loses_nothing_and_duplicates_at_most_the_in_flight_batches() {
    for concurrency in ["1", "4"] {
        let env = Env::new(
            events(5_000, 5),
            WebhookConfig {
                stall_after: Some(6),
                ..WebhookConfig::default()
            },
        );
        let args = backfill_args(&[
            "--page-size",
            "700",
            "--batch-size",
            "250",
            "--concurrency",
            concurrency,
        ]);
        env.kill_while_in_flight(&args);
        assert_eq!(env.webhook.with_state(|s| s.events.len()), 6 * 250);

        let run = env.run(&args);
        run.assert_code(0);
        assert!(run.stderr.contains("resuming from"), "{}", run.stderr);
        // Stalled batches were received but never acknowledged: they are sent again. Nothing
        // else is, and nothing is missing.
        let counts = env.received_with_stalled();
        let duplicates: usize = counts.values().map(|n| n - 1).sum();
        let limit: usize = concurrency.parse::<usize>().unwrap() * 250;
        assert!(
            duplicates > 0 && duplicates <= limit,
            "{duplicates} duplicates, at most {limit}"
        );
        if concurrency == "1" {
            env.assert_exactly_once(in_range);
        }
        let expected = env.posthog.events().into_iter().filter(in_range).count();
        assert_eq!(counts.len(), expected, "every event arrived");
        assert!(run.stderr.contains("over 2 runs"), "{}", run.stderr);
        println!(
            "kill -9 and resume, --concurrency {concurrency}: {expected} events expected, {} distinct arrived, {duplicates} arrived twice (bound {limit})",
            counts.len()
        );
    }
}

#[test]
fn a_finished_backfill_run_again_says_it_is_complete_and_reads_nothing() {
    let env = Env::new(events(300, 6), WebhookConfig::default());
    env.run(&backfill_args(&[])).assert_code(0);
    let requests = env.posthog.log().len();
    let again = env.run(&backfill_args(&[]));
    again.assert_code(0);
    assert!(
        again.stderr.contains("already complete"),
        "{}",
        again.stderr
    );
    // Nothing is asked of PostHog: no event is read, and the range's end was checked against
    // PostHog's clock when the job ran.
    let asked: Vec<Option<String>> = env.posthog.log()[requests..]
        .iter()
        .map(|l| l.sql.clone())
        .collect();
    assert!(asked.is_empty(), "{asked:?}");
    // --restart exports the range again.
    env.run(&backfill_args(&["--restart"])).assert_code(0);
    assert!(env.received().values().all(|n| *n == 2));
}

#[test]
fn webhook_413_splits_the_batch_until_it_fits() {
    let env = Env::new(
        events(1_500, 7),
        WebhookConfig {
            max_body_bytes: Some(40_000),
            ..WebhookConfig::default()
        },
    );
    let run = env.run(&backfill_args(&[
        "--batch-size",
        "1000",
        "--max-batch-bytes",
        "10MiB",
    ]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    let statuses = env.webhook.with_state(|s| s.statuses.clone());
    assert!(statuses.contains(&413), "the first batches were too large");
}

#[test]
fn rejected_batches_go_to_the_dead_letter_file_and_the_run_exits_3() {
    let ev = events(1_000, 8);
    let poison = ev[300].uuid.clone();
    let poison_uuid = poison.clone();
    let env = Env::new(
        ev,
        WebhookConfig {
            reject_containing: vec![poison],
            ..WebhookConfig::default()
        },
    );
    let dead = env.path("dead.ndjson");
    let run = env.run(&backfill_args(&[
        "--batch-size",
        "100",
        "--dead-letter",
        dead.to_str().unwrap(),
    ]));
    run.assert_code(3);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "only the rejected event, not its batch");
    assert_eq!(lines[0]["event"]["uuid"], poison_uuid);
    assert!(
        lines
            .iter()
            .all(|l| l["status"] == 400 && l["event"]["uuid"].is_string())
    );
    assert!(
        run.stderr
            .contains(&format!("dead-lettered {}", lines.len())),
        "{}",
        run.stderr
    );
    // Together, webhook and dead letters hold every event once.
    let posted = env.received();
    let expected: Vec<_> = env.posthog.events().into_iter().filter(in_range).collect();
    assert_eq!(posted.len() + lines.len(), expected.len());
}

#[test]
fn a_rejection_without_dead_letter_stops_with_a_clear_error_and_keeps_the_checkpoint() {
    let mut ev = events(1_000, 9);
    ev.sort_by_key(|e| e.timestamp);
    let poison = ev[500].uuid.clone();
    let env = Env::new(
        ev,
        WebhookConfig {
            reject_containing: vec![poison.clone()],
            ..WebhookConfig::default()
        },
    );
    let run = env.run(&backfill_args(&["--batch-size", "100"]));
    run.assert_code(1);
    assert!(
        run.stderr
            .contains(&format!("rejected event {poison} on its own (HTTP 400")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--dead-letter"), "{}", run.stderr);
    // Fix the webhook, run again: it resumes and completes without loss.
    env.webhook
        .with_state(|s| s.config.reject_containing.clear());
    let again = env.run(&backfill_args(&["--batch-size", "100"]));
    again.assert_code(0);
    assert!(again.stderr.contains("resuming from"), "{}", again.stderr);
    // Batches after the rejected one that were acknowledged while it failed (up to
    // concurrency - 1 = 3) are sent again, and the parts of the rejected batch that bisecting
    // delivered: the checkpoint cannot skip the rejected batch.
    env.assert_delivered(in_range, 4 * 100);
}

#[test]
fn a_second_run_on_the_same_state_exits_75_at_once() {
    let env = Env::new(
        events(2_000, 10),
        WebhookConfig {
            stall_after: Some(1),
            ..WebhookConfig::default()
        },
    );
    let args = backfill_args(&["--batch-size", "100"]);
    let mut first = env.spawn(&args);
    assert!(
        env.webhook
            .wait_until(Duration::from_secs(60), |s| !s.stalled_events.is_empty())
    );
    let second = env.run(&args);
    second.assert_code(75);
    assert!(
        second.stderr.contains(&format!(
            "another posthog-patterns run (PID {}) holds the lock",
            first.id()
        )),
        "{}",
        second.stderr
    );
    first.kill().unwrap();
    first.wait().unwrap();
    env.webhook.release();
}

#[test]
fn bad_dates_are_usage_errors_with_an_example() {
    let env = Env::new(vec![], WebhookConfig::default());
    let run = env.run(&["backfill", "--start", "01/03/2024", "--end", "2024-03-08"]);
    run.assert_code(2);
    assert!(run.stderr.contains("2024-01-31"), "{}", run.stderr);
    let run = env.run(&["backfill", "--start", "2024-03-08", "--end", "2024-03-01"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("must be before --end"),
        "{}",
        run.stderr
    );
    assert!(env.posthog.log().is_empty());
}

#[test]
fn a_checkpoint_from_another_job_is_refused() {
    let env = Env::new(events(100, 11), WebhookConfig::default());
    let cp = env.path("job.json");
    let cp = cp.to_str().unwrap();
    env.run(&backfill_args(&["--checkpoint", cp]))
        .assert_code(0);
    let run = env.run(&[
        "backfill",
        "--start",
        "2024-03-02",
        "--end",
        "2024-03-08",
        "--checkpoint",
        cp,
    ]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("belongs to a different job"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("start: checkpoint has 2024-03-01"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_corrupt_checkpoint_is_an_error_and_nothing_is_sent() {
    let env = Env::new(events(100, 12), WebhookConfig::default());
    let cp = env.path("bad.json");
    std::fs::write(&cp, "{\"version\": 1, \"job\": {").unwrap();
    let run = env.run(&backfill_args(&["--checkpoint", cp.to_str().unwrap()]));
    run.assert_code(1);
    assert!(run.stderr.contains("is corrupt"), "{}", run.stderr);
    assert!(env.posthog.log().is_empty() && env.received().is_empty());
}

#[test]
fn queries_posthog_finds_too_costly_are_asked_in_smaller_parts_and_every_event_still_arrives() {
    // A shard may read 24 KiB within the limit: a window of 400 events (about 30 KiB a shard)
    // is too much, and so is a plan of the whole week's key columns (about 87 KiB a shard).
    let env = Env::with(
        costly(24 << 10),
        events(4_000, 13),
        WebhookConfig::default(),
    );
    let run = env.run(&backfill_args(&["--page-size", "400", "-v"]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    let log = env.posthog.log();
    let timeouts = |plan: bool| {
        log.iter()
            .filter(|r| r.status == 504)
            .filter(|r| r.sql.as_deref().unwrap().contains("count()") == plan)
            .count()
    };
    assert!(timeouts(false) > 0, "windows were split after 504s");
    assert!(timeouts(true) > 0, "plans covered fewer days after 504s");
    assert!(run.stderr.contains("in smaller parts"), "{}", run.stderr);
    // Every query that was answered read within the limit.
    let (answered, biggest) = log
        .iter()
        .filter(|r| r.status == 200 && r.path.ends_with("/query/"))
        .fold((0, 0), |(n, b), r| {
            (
                n + 1,
                b.max(r.reads.shards.iter().map(|s| s.bytes).max().unwrap_or(0)),
            )
        });
    assert!(
        answered > 10 && biggest <= 24 << 10,
        "{answered} queries, {biggest} bytes"
    );
}

#[test]
fn throttling_is_waited_out_with_and_without_retry_after() {
    for header in [true, false] {
        let env = Env::with(
            PostHogConfig {
                rate_limit: Some((3, Duration::from_secs(1))),
                retry_after_header: header,
                ..PostHogConfig::default()
            },
            events(1_500, 14),
            WebhookConfig::default(),
        );
        let run = env.run(&backfill_args(&["--page-size", "200", "-v"]));
        run.assert_code(0);
        env.assert_exactly_once(in_range);
        assert!(env.posthog.log().iter().any(|r| r.status == 429));
        assert!(run.stderr.contains("HTTP 429"), "{}", run.stderr);
    }
}

#[test]
fn transient_failures_are_retried_on_both_sides() {
    let env = Env::new(events(1_000, 15), WebhookConfig::default());
    env.posthog.fault_at(0, Fault::status(503));
    env.posthog.fault_at(2, Fault::html(502));
    env.webhook.fault_at(0, Fault::status(500));
    env.webhook.fault_at(2, Fault::status(408));
    env.webhook.fault_at(3, Fault::throttled(0, true));
    let run = env.run(&backfill_args(&[
        "--page-size",
        "300",
        "--batch-size",
        "200",
    ]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    assert!(run.stderr.contains("retries  5"), "{}", run.stderr);
}

#[test]
fn a_webhook_that_keeps_failing_ends_the_run_with_exit_75() {
    let env = Env::new(events(100, 16), WebhookConfig::default());
    for _ in 0..10 {
        env.webhook.fault_next(Fault::status(503));
    }
    let run = env.run(&backfill_args(&["--max-retries", "2"]));
    run.assert_code(75);
    assert!(
        run.stderr.contains("still failing after 2 retries"),
        "{}",
        run.stderr
    );
}

#[test]
fn sigterm_stops_the_run_with_exit_130_and_it_resumes() {
    let env = Env::new(
        events(1_000, 17),
        WebhookConfig {
            stall_after: Some(2),
            ..WebhookConfig::default()
        },
    );
    let args = backfill_args(&["--batch-size", "100", "--concurrency", "1"]);
    let child = env.spawn(&args);
    assert!(
        env.webhook
            .wait_until(Duration::from_secs(60), |s| !s.stalled_events.is_empty())
    );
    let out = sigterm(child);
    out.assert_code(130);
    assert!(out.stderr.contains("interrupted"), "{}", out.stderr);
    env.webhook.release();
    env.run(&args).assert_code(0);
    let seen = env.received();
    assert!(
        seen.values().all(|n| *n == 1),
        "the stalled batch was never acknowledged, so only sent once more"
    );
    env.assert_exactly_once(in_range);
}

#[test]
fn the_demo_delivers_every_event_exactly_once() {
    let run = finish(
        std::process::Command::new(BIN)
            .args(["demo", "--events", "8000", "--progress", "never"])
            .env("POSTHOG_PATTERNS_STATE_DIR", std::env::temp_dir())
            .output()
            .unwrap(),
    );
    run.assert_code(0);
    assert!(run.stderr.contains("demo check passed"), "{}", run.stderr);
}

#[test]
fn a_query_too_costly_even_for_a_single_key_stops_with_exit_75() {
    // Ten events, and a PostHog for which reading any of them whole is too much (one granule
    // holds them all), while counting their key columns (about 300 bytes a shard) is not.
    let env = Env::with(
        costly(400),
        tied_events(10, t("2024-03-02T00:00:00.000001Z"), 18),
        WebhookConfig::default(),
    );
    let run = env.run(&backfill_args(&["--max-retries", "1"]));
    run.assert_code(75);
    assert!(
        run.stderr
            .contains("PostHog found 24 queries in a row too costly (HTTP 504)")
            && run.stderr.contains("try again later"),
        "{}",
        run.stderr
    );
    assert!(env.received().is_empty());
    // Halving never loops, and stops long before it runs out of hashes to halve.
    let lost = env.posthog.log().iter().filter(|r| r.status == 504).count();
    assert_eq!(lost, 25, "the first query and 24 halves");
}

/// The `--end` a refusal names as the latest a run can use now.
fn latest_end_named(stderr: &str) -> chrono::DateTime<chrono::Utc> {
    let after = stderr
        .split("up to --end ")
        .nth(1)
        .unwrap_or_else(|| panic!("the refusal names the latest end:\n{stderr}"));
    t(after.split_whitespace().next().unwrap())
}

#[test]
fn an_end_later_than_posthogs_clock_is_refused_before_any_state_naming_the_latest_end_and_sync() {
    // PostHog's clock is two days behind this machine's: "yesterday" here is still to come
    // there, and PostHog's clock is the one that decides.
    let env = Env::with(
        PostHogConfig {
            clock_offset: chrono::Duration::days(-2),
            ..PostHogConfig::default()
        },
        vec![],
        WebhookConfig::default(),
    );
    let posthog_now = env.posthog.now();
    // Whole seconds, as a user types them.
    let start = chrono::DateTime::from_timestamp(posthog_now.timestamp() - 3 * 86_400, 0).unwrap();
    env.posthog
        .insert(posthog_patterns_standin::synthetic_events(
            500,
            start,
            posthog_now - chrono::Duration::minutes(1),
            75,
        ));
    let end = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let start_arg = start.to_rfc3339();
    let args = [
        "backfill",
        "--start",
        &start_arg,
        "--end",
        &end,
        "--progress",
        "never",
    ];
    let run = env.run(&args);
    run.assert_code(2);
    assert!(
        run.stderr.contains("later than PostHog's current time")
            && run.stderr.contains("`posthog-patterns sync`"),
        "{}",
        run.stderr
    );
    let latest = latest_end_named(&run.stderr);
    let lag = env.posthog.now() - latest;
    assert!(
        lag >= chrono::Duration::zero() && lag < chrono::Duration::minutes(1),
        "the latest end {latest} is PostHog's now, not this machine's ({})",
        chrono::Utc::now()
    );
    assert!(env.received().is_empty(), "nothing sent");
    let state_files = std::fs::read_dir(env.path("state"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(state_files, 0, "no state marked");

    // `config check` says the same before a run.
    let mut check = vec!["config", "check"];
    check.extend(&args[..5]);
    let checked = env.run(&check);
    checked.assert_code(2);
    assert!(checked.stderr.contains("up to --end"), "{}", checked.stderr);

    // The end it names works, and the run again is refused rather than called complete.
    let latest_arg = latest.to_rfc3339();
    let ok = env.run(&[
        "backfill",
        "--start",
        &start_arg,
        "--end",
        &latest_arg,
        "--progress",
        "never",
    ]);
    ok.assert_code(0);
    let n = env.assert_exactly_once(|e| e.timestamp >= start && e.timestamp < latest);
    println!("future --end refused; up to PostHog's now: {n} events delivered once");
    env.run(&args).assert_code(2);
}
