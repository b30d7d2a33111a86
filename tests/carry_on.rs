//! Servers and webhooks that behave in ways real ones do, and on which a run must carry on
//! (or stop with an error that says how to get past), with every event accounted for.

mod common;

use common::*;
use posthog_patterns_standin::{PostHogConfig, WebhookConfig};

/// Properties no f64 holds, deeply nested and oddly spaced: what must arrive byte for byte.
fn awkward_properties(i: usize) -> String {
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    format!(
        r#"{{ "big": 1180591620717411303424, "tiny": 1e-400, "huge": 1e400, "i": {i}, "deep": {deep},"s" : "\u00e9\"" }}"#
    )
}

#[test]
fn properties_sent_as_an_object_rather_than_json_text_are_delivered_byte_for_byte() {
    let mut ev = events(300, 180);
    for (i, e) in ev.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
        e.properties = awkward_properties(i);
    }
    let env = Env::with(
        PostHogConfig {
            properties_as_object: true,
            ..PostHogConfig::default()
        },
        ev,
        WebhookConfig::default(),
    );
    env.run(&backfill_args(&[])).assert_code(0);
    env.assert_exactly_once(in_range);
    let stored: std::collections::HashMap<String, String> = env
        .posthog
        .events()
        .into_iter()
        .map(|e| (e.uuid, e.properties))
        .collect();
    let received = env.webhook.with_state(|s| s.events.clone());
    let mut awkward = 0;
    for text in &received {
        let uuid = posthog_patterns_standin::webhook::uuid_of(text);
        let properties = &stored[&uuid];
        awkward += usize::from(properties.contains("1e400"));
        assert!(
            text.contains(&format!("\"properties\":{properties},")),
            "properties not as sent: {text}"
        );
    }
    assert!(awkward > 50, "{awkward} events with awkward properties");
}

#[test]
fn a_batch_rejected_once_and_then_accepted_in_parts_is_delivered_and_the_run_goes_on() {
    use posthog_patterns_standin::Fault;
    for dead_letter in [false, true] {
        let env = Env::new(events(1_000, 181), WebhookConfig::default());
        // The second batch is answered 400 once; its halves are accepted.
        env.webhook
            .fault_at(1, Fault::status(400).body(r#"{"error":"try again later"}"#));
        let dead = env.path("dead.ndjson");
        let mut args = vec!["--batch-size", "250", "--concurrency", "1"];
        if dead_letter {
            args.extend(["--dead-letter", dead.to_str().unwrap()]);
        }
        let run = env.run(&backfill_args(&args));
        run.assert_code(0);
        assert!(
            run.stderr.contains(
                "rejected a batch of 250 events (HTTP 400: {\"error\":\"try again later\"}) but accepted each part of it when split: delivered"
            ),
            "{}",
            run.stderr
        );
        env.assert_exactly_once(in_range);
        assert!(!dead.exists() || std::fs::read_to_string(&dead).unwrap().is_empty());
        println!(
            "dead letter {dead_letter}: {}",
            run.stderr.lines().last().unwrap_or("")
        );
    }
}

/// A PostHog that answers every query asynchronously (HTTP 202 with a `query_status`).
fn asynchronous(polls: usize, stuck: usize) -> PostHogConfig {
    PostHogConfig {
        async_answers: Some(posthog_patterns_standin::AsyncAnswers { polls, stuck }),
        ..PostHogConfig::default()
    }
}

#[test]
fn queries_posthog_answers_asynchronously_are_polled_and_their_rows_delivered() {
    let env = Env::with(
        asynchronous(1, 0),
        events(2_000, 182),
        WebhookConfig::default(),
    );
    let run = env.run(&backfill_args(&["--page-size", "1000"]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    let (accepted, polls) = env.posthog.with_state(|s| {
        let accepted = s.log.iter().filter(|l| l.status == 202).count();
        let polls = s
            .log
            .iter()
            .filter(|l| l.method == "GET" && l.path.contains("/query/"))
            .count();
        (accepted, polls)
    });
    // Each query answered 202 (the clock's too, whose Date is all it needs) ...
    assert!(accepted >= 3, "{accepted} answers 202");
    // ... and each of the others polled twice: once not complete, once with the rows.
    assert!(
        polls >= 2 * (accepted - 1),
        "{polls} polls of {accepted} queries"
    );
    println!("{accepted} queries answered 202, {polls} polls: every event delivered once");
}

#[test]
fn an_asynchronous_query_that_does_not_complete_in_time_is_cancelled_and_asked_smaller() {
    let env = Env::with(
        asynchronous(0, 1),
        events(2_000, 183),
        WebhookConfig::default(),
    );
    let run = env.run(&backfill_args(&[
        "--page-size",
        "1000",
        "--http-timeout",
        "3s",
    ]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    assert!(
        run.stderr
            .contains("had not completed within --http-timeout (3.0s); cancelled"),
        "{}",
        run.stderr
    );
    let cancelled = env.posthog.with_state(|s| s.cancelled_queries.clone());
    assert_eq!(cancelled.len(), 1, "the stuck query was cancelled (DELETE)");
}

#[test]
fn an_interrupted_run_cancels_the_asynchronous_query_it_was_polling() {
    let env = Env::with(
        asynchronous(0, 1),
        events(2_000, 184),
        WebhookConfig::default(),
    );
    let child = env.spawn(&backfill_args(&[
        "--page-size",
        "1000",
        "--http-timeout",
        "5m",
    ]));
    let polled = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        env.posthog.with_state(|s| s.polls_not_complete > 0)
    });
    assert!(polled, "the stuck query is polled");
    let run = sigterm(child);
    run.assert_code(130);
    // (Another window's query, answered 202 and not yet polled, may be cancelled with it.)
    let cancelled = env.posthog.with_state(|s| s.cancelled_queries.clone());
    assert!(
        (1..=2).contains(&cancelled.len()),
        "cancelled on the way out: {cancelled:?} {}",
        run.stderr
    );
}

/// 1,500 events in one microsecond (more than the Events API's 1,000-row page), plus ordinary
/// events, in the tie order `order`; `edit` shapes the crowded ones.
fn crowded_microsecond(
    order: posthog_patterns_standin::TieOrder,
    edit: impl Fn(usize, &mut posthog_patterns_standin::StoredEvent),
) -> Env {
    let mut data =
        posthog_patterns_standin::data::tied_events(1_500, t("2024-03-03T08:00:00.000007Z"), 185);
    for (i, e) in data.iter_mut().enumerate() {
        edit(i, e);
    }
    data.extend(events(300, 186));
    Env::with(
        PostHogConfig {
            tie_order: order,
            offset_delay: std::time::Duration::ZERO,
            ..PostHogConfig::default()
        },
        data,
        WebhookConfig::default(),
    )
}

#[test]
fn a_crowded_microsecond_is_read_completely_whatever_the_events_apis_tie_order() {
    use posthog_patterns_standin::TieOrder;
    let args = backfill_args(&["--source", "events", "--concurrency", "1"]);
    // ClickHouse's order: the same for the same request, another for another offset.
    let env = crowded_microsecond(TieOrder::PerRequest, |_, _| {});
    env.run(&args).assert_code(0);
    env.assert_exactly_once(in_range);
    // The worst: every page shows the microsecond's same first rows. One answer per event
    // name (six names, 250 events each) holds all of them.
    let env = crowded_microsecond(TieOrder::SameFirst, |_, _| {});
    env.run(&args).assert_code(0);
    env.assert_exactly_once(in_range);
    // One name only, from three users: one answer per distinct_id.
    let env = crowded_microsecond(TieOrder::SameFirst, |i, e| {
        e.event = "signup".into();
        e.distinct_id = format!("user-{}", i % 3);
    });
    env.run(&args).assert_code(0);
    env.assert_exactly_once(in_range);
}

#[test]
fn a_crowded_microsecond_no_filter_can_show_whole_is_an_error_naming_it_and_the_query_api() {
    use posthog_patterns_standin::TieOrder;
    // One name from 1,500 users, and every page shows the same first 1,000 rows: the 500
    // others never appear, so nothing can ask for them by distinct_id.
    let env = crowded_microsecond(TieOrder::SameFirst, |i, e| {
        e.event = "signup".into();
        e.distinct_id = format!("user-{i}");
    });
    let run = env.run(&backfill_args(&[
        "--source",
        "events",
        "--concurrency",
        "1",
    ]));
    run.assert_code(1);
    assert!(
        run.stderr
            .contains("1500 rows share the timestamp 2024-03-03T08:00:00.000007Z")
            && run.stderr.contains("--source query"),
        "{}",
        run.stderr
    );
    println!("{}", run.stderr.lines().last().unwrap_or(""));
    // Nothing was lost: the Query API finishes the range, each event once.
    let env_seen = env.received();
    assert!(env_seen.values().all(|n| *n == 1));
    env.run(&backfill_args(&["--source", "query", "--restart"]))
        .assert_code(0);
    env.assert_delivered(in_range, env_seen.len());
}

#[test]
fn an_event_over_the_per_event_cap_is_set_aside_with_dead_letter_or_named_without() {
    let mut ev = events(400, 187);
    ev.sort_by_key(|e| e.timestamp);
    let huge = &mut ev[200];
    // 65 MiB of properties: more than the 64 MiB a single event may take.
    huge.properties = format!(r#"{{"blob":"{}"}}"#, "x".repeat(65 << 20));
    let (uuid, ts) = (huge.uuid.clone(), huge.timestamp);
    let env = Env::new(ev, WebhookConfig::default());
    let ts_text = ts.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();

    let run = env.run(&backfill_args(&[]));
    run.assert_code(1);
    assert!(
        run.stderr.contains(&format!("event {uuid} at {ts_text}"))
            && run.stderr.contains("--dead-letter PATH"),
        "{}",
        run.stderr
    );
    println!(
        "without --dead-letter: {}",
        run.stderr.lines().last().unwrap_or("")
    );

    let dead = env.path("dead.ndjson");
    let run = env.run(&backfill_args(&["--dead-letter", dead.to_str().unwrap()]));
    run.assert_code(3);
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["uuid"], uuid.as_str());
    assert_eq!(records[0]["timestamp"], ts_text.as_str());
    assert!(records[0]["size"].as_u64().unwrap() > 65 << 20);
    assert!(records[0]["reason"].as_str().unwrap().contains("64 MiB"));
    // Everything else arrived (the first run's posts again, at most: it had no checkpoint
    // past the page that held the huge event).
    env.assert_delivered(|e| in_range(e) && e.uuid != uuid, 400);
    println!(
        "with --dead-letter: {}",
        run.stderr.lines().rev().nth(3).unwrap_or("")
    );
}
