//! What a user sees when something is wrong, and that secrets never show.

mod common;

use common::*;
use posthog_patterns_standin::{Fault, WebhookConfig};

#[test]
fn secrets_never_appear_in_output_or_files_even_when_things_fail() {
    let env = Env::new(events(500, 21), WebhookConfig::default());
    env.posthog.fault_at(1, Fault::throttled(0, false));
    env.webhook.fault_at(0, Fault::html(502));
    let dead = env.path("dead.ndjson");
    let run = env.run(&backfill_args(&[
        "-vv",
        "--batch-size",
        "50",
        "--dead-letter",
        dead.to_str().unwrap(),
    ]));
    run.assert_code(0);
    env.assert_no_secrets(&run);

    // A webhook that does not exist and one that does not answer.
    let run = env.run(&backfill_args(&[
        "-v",
        "--restart",
        "--webhook-url",
        &format!("{}-nope", env.webhook.url()),
    ]));
    run.assert_code(1);
    assert!(run.stderr.contains("HTTP 404"), "{}", run.stderr);
    env.assert_no_secrets(&run);
    let run = env.run(&backfill_args(&[
        "-v",
        "--restart",
        "--max-retries",
        "1",
        "--webhook-url",
        "http://127.0.0.1:9/api/app/webhooks/wh-standin-secret-token-5f1e",
    ]));
    run.assert_code(75);
    assert!(
        run.stderr
            .contains("cannot reach the webhook at http://127.0.0.1:9/…"),
        "{}",
        run.stderr
    );
    env.assert_no_secrets(&run);
}

#[test]
fn an_invalid_api_key_says_so() {
    let env = Env::new(events(10, 22), WebhookConfig::default());
    let run = finish(
        env.command(&backfill_args(&[]))
            .env("POSTHOG_API_KEY", "phx_wrong")
            .output()
            .unwrap(),
    );
    run.assert_code(1);
    assert!(
        run.stderr
            .contains("PostHog rejected the API key (HTTP 401"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("phx_wrong"));
}

#[test]
fn a_key_without_the_scope_names_the_scope() {
    let env = Env::new(events(10, 23), WebhookConfig::default());
    let key = env.posthog.config().key_without_scope;
    let run = finish(
        env.command(&backfill_args(&[]))
            .env("POSTHOG_API_KEY", &key)
            .output()
            .unwrap(),
    );
    run.assert_code(1);
    assert!(run.stderr.contains("HTTP 403"), "{}", run.stderr);
    assert!(run.stderr.contains("query:read"), "{}", run.stderr);
}

#[test]
fn a_wrong_project_says_to_check_project_and_host() {
    let env = Env::new(events(10, 24), WebhookConfig::default());
    let run = env.run(&backfill_args(&["--project", "999"]));
    // Not "this PostHog has no Query API": the Events API says the project does not exist.
    run.assert_code(2);
    assert!(
        run.stderr
            .contains("has no project 999 (404 on both /query/ and /events/)")
            && run.stderr.contains("--project")
            && !run.stderr.contains("no Query API"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_html_answer_shows_the_status_and_the_first_bytes() {
    let env = Env::new(events(10, 25), WebhookConfig::default());
    let mut fault = Fault::html(400);
    fault.body = "<html><body>Blocked by proxy</body></html>".into();
    env.posthog.fault_at(0, fault);
    let run = env.run(&backfill_args(&[]));
    run.assert_code(1);
    assert!(
        run.stderr.contains("HTTP 400") && run.stderr.contains("Blocked by proxy"),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_settings_and_bad_urls_are_usage_errors() {
    let env = Env::new(vec![], WebhookConfig::default());
    let run = finish(
        env.command(&backfill_args(&[]))
            .env_remove("POSTHOG_API_KEY")
            .output()
            .unwrap(),
    );
    run.assert_code(2);
    assert!(run.stderr.contains("POSTHOG_API_KEY"), "{}", run.stderr);

    let run = env.run(&backfill_args(&[
        "--webhook-url",
        "not a url wh-secret-123",
    ]));
    run.assert_code(2);
    assert!(
        run.stderr.contains("webhook URL does not parse"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("wh-secret-123"));

    let run = env.run(&backfill_args(&["--host", "https://us.i.posthog.com"]));
    run.assert_code(2);
    assert!(
        run.stderr.contains("https://us.posthog.com"),
        "{}",
        run.stderr
    );

    let key_file = env.path("key");
    std::fs::write(&key_file, "phc_projecttoken\n").unwrap();
    let run = env.run(&backfill_args(&[
        "--api-key-file",
        key_file.to_str().unwrap(),
    ]));
    run.assert_code(2);
    assert!(run.stderr.contains("project token"), "{}", run.stderr);
    assert!(env.posthog.log().is_empty());
}

#[test]
fn the_api_key_can_come_from_a_file() {
    let env = Env::new(events(50, 26), WebhookConfig::default());
    let key_file = env.path("key");
    std::fs::write(&key_file, format!("{}\n", env.posthog.config().api_key)).unwrap();
    let run = finish(
        env.command(&backfill_args(&[
            "--api-key-file",
            key_file.to_str().unwrap(),
        ]))
        .env_remove("POSTHOG_API_KEY")
        .output()
        .unwrap(),
    );
    run.assert_code(0);
    env.assert_exactly_once(in_range);
}

#[test]
fn help_shows_an_example_for_backfill() {
    let env = Env::new(vec![], WebhookConfig::default());
    let run = env.run(&["backfill", "--help"]);
    run.assert_code(0);
    assert!(
        run.stdout.contains("Example:") && run.stdout.contains("--webhook-url"),
        "{}",
        run.stdout
    );
}

#[test]
fn secrets_stay_out_of_sync_export_and_send_output_and_state() {
    let env = Env::new(events(300, 27), WebhookConfig::default());
    env.posthog.fault_at(1, Fault::throttled(0, false));
    let runs = [
        env.run(&[
            "sync",
            "--start",
            "2024-03-01",
            "--lag",
            "0s",
            "-vv",
            "--log-format",
            "json",
        ]),
        env.run(&[
            "export",
            "--start",
            "2024-03-01",
            "--end",
            "2024-03-08",
            "-vv",
            "--output",
            env.path("out.ndjson").to_str().unwrap(),
        ]),
        env.run(&["send", "-vv", env.path("out.ndjson").to_str().unwrap()]),
        env.run(&["config", "check", "sync", "-vv"]),
    ];
    for run in &runs {
        run.assert_code(0);
        env.assert_no_secrets(run);
    }
    // And when they fail against a webhook that is not there.
    let gone = "http://127.0.0.1:9/api/app/webhooks/wh-standin-secret-token-5f1e";
    let run = env.run(&[
        "send",
        "-vv",
        "--max-retries",
        "0",
        "--webhook-url",
        gone,
        env.path("out.ndjson").to_str().unwrap(),
    ]);
    run.assert_code(75);
    env.assert_no_secrets(&run);
}

#[test]
fn a_wrong_webhook_url_stops_the_run_instead_of_dead_lettering_everything() {
    let env = Env::new(events(300, 28), WebhookConfig::default());
    let dead = env.path("dead.ndjson");
    let run = env.run(&backfill_args(&[
        "--dead-letter",
        dead.to_str().unwrap(),
        "--webhook-url",
        &format!("{}-typo", env.webhook.url()),
    ]));
    run.assert_code(1);
    assert!(
        run.stderr.contains("HTTP 404") && run.stderr.contains("check --webhook-url"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&dead).unwrap_or_default(),
        "",
        "nothing set aside"
    );
}
