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
