//! `--compress gzip`: every body is gzip with `Content-Encoding: gzip`, batches are still cut
//! by their JSON size, 413 splits and bisection still deliver every event exactly once, and a
//! webhook that refuses gzip stops the run with the fix in the message.

mod common;

use common::*;
use posthog_patterns_standin::WebhookConfig;

fn statuses(env: &Env) -> Vec<u16> {
    env.webhook.with_state(|s| s.statuses.clone())
}

#[test]
fn with_gzip_every_event_arrives_once_in_compressed_bodies_cut_by_their_json_size() {
    // The stand-in limits the inflated body: --max-batch-bytes must keep counting JSON.
    let env = Env::new(
        events(3_000, 91),
        WebhookConfig {
            max_body_bytes: Some(20_000),
            ..WebhookConfig::default()
        },
    );
    let run = env.run(&backfill_args(&[
        "--compress",
        "gzip",
        "--max-batch-bytes",
        "20000",
    ]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    let (requests, gzip) = env.webhook.with_state(|s| (s.requests, s.gzip_requests));
    assert_eq!(gzip, requests, "every body was compressed");
    assert!(
        statuses(&env).iter().all(|s| *s == 200),
        "no body was over the limit once inflated: {:?}",
        statuses(&env)
    );
    println!("{requests} gzip bodies, none over 20000 bytes of JSON");
}

#[test]
fn with_gzip_a_413_splits_the_batch_and_each_half_is_compressed() {
    let env = Env::new(
        events(1_500, 92),
        WebhookConfig {
            max_body_bytes: Some(40_000),
            ..WebhookConfig::default()
        },
    );
    let run = env.run(&backfill_args(&[
        "--compress",
        "gzip",
        "--max-batch-bytes",
        "10MiB",
    ]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    assert!(
        statuses(&env).contains(&413),
        "the first batches were too large"
    );
    let (requests, gzip) = env.webhook.with_state(|s| (s.requests, s.gzip_requests));
    assert_eq!(gzip, requests, "the halves were compressed too");
}

#[test]
fn with_gzip_bisection_still_sets_aside_only_the_rejected_event() {
    let ev = events(2_000, 93);
    let poison = ev[700].uuid.clone();
    let env = Env::new(
        ev,
        WebhookConfig {
            reject_containing: vec![poison.clone()],
            ..WebhookConfig::default()
        },
    );
    let dead = env.path("dead.ndjson");
    let run = env.run(&backfill_args(&[
        "--compress",
        "gzip",
        "--dead-letter",
        dead.to_str().unwrap(),
    ]));
    let poison_in_range = env
        .posthog
        .events()
        .iter()
        .any(|e| e.uuid == poison && in_range(e));
    run.assert_code(if poison_in_range { 3 } else { 0 });
    let text = std::fs::read_to_string(&dead).unwrap_or_default();
    assert_eq!(text.lines().count(), usize::from(poison_in_range), "{text}");
    env.assert_exactly_once(|e| in_range(e) && e.uuid != poison);
    let (requests, gzip) = env.webhook.with_state(|s| (s.requests, s.gzip_requests));
    assert_eq!(gzip, requests);
}

#[test]
fn a_webhook_answering_415_to_gzip_stops_the_run_suggesting_to_drop_compress() {
    let env = Env::new(
        events(500, 94),
        WebhookConfig {
            refuse_gzip: true,
            ..WebhookConfig::default()
        },
    );
    let dead = env.path("dead.ndjson");
    let run = env.run(&backfill_args(&[
        "--compress",
        "gzip",
        "--dead-letter",
        dead.to_str().unwrap(),
    ]));
    run.assert_code(1);
    assert!(
        run.stderr.contains("HTTP 415")
            && run.stderr.contains("Content-Encoding: gzip")
            && run.stderr.contains("Drop --compress gzip"),
        "names the status, the encoding and the fix: {}",
        run.stderr
    );
    assert!(env.received().is_empty());
    assert_eq!(
        std::fs::read_to_string(&dead).unwrap_or_default(),
        "",
        "no event was set aside for the encoding"
    );
    env.assert_no_secrets(&run);
    println!("{}", run.stderr.trim());

    // Without --compress the same webhook takes everything.
    env.run(&backfill_args(&[])).assert_code(0);
    env.assert_exactly_once(in_range);
}

#[test]
fn compress_in_a_config_file_applies_to_send() {
    let env = Env::new(Vec::new(), WebhookConfig::default());
    let lines: String = (0..250)
        .map(|i| format!("{{\"uuid\":\"u{i}\",\"event\":\"e\",\"p\":\"Zoë 😀 {i}\"}}\n"))
        .collect();
    std::fs::write(env.path("in.ndjson"), lines).unwrap();
    std::fs::write(
        env.path("pp.toml"),
        "compress = \"gzip\"\nbatch_size = 100\n",
    )
    .unwrap();
    let run = env.run(&[
        "send",
        env.path("in.ndjson").to_str().unwrap(),
        "--config",
        env.path("pp.toml").to_str().unwrap(),
        "--progress",
        "never",
    ]);
    run.assert_code(0);
    let received = env.received();
    assert_eq!(received.len(), 250);
    assert!(received.values().all(|n| *n == 1));
    assert_eq!(env.webhook.with_state(|s| s.gzip_requests), 3);
    let check = env.run(&[
        "config",
        "check",
        "--config",
        env.path("pp.toml").to_str().unwrap(),
        "send",
        env.path("in.ndjson").to_str().unwrap(),
    ]);
    check.assert_code(0);
    assert!(
        check.stdout.contains("compression       gzip"),
        "{}",
        check.stdout
    );

    std::fs::write(env.path("pp.toml"), "compress = \"brotli\"\n").unwrap();
    let run = env.run(&[
        "send",
        env.path("in.ndjson").to_str().unwrap(),
        "--config",
        env.path("pp.toml").to_str().unwrap(),
    ]);
    run.assert_code(2);
    assert!(run.stderr.contains("`compress`"), "{}", run.stderr);
}
