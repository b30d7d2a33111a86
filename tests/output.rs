//! What a data engineer sees and relies on: progress that means delivery, JSON logs, an
//! honest `config check`, cron comfort, webhooks that want headers.

mod common;

use common::*;
use posthog_patterns_standin::WebhookConfig;
use std::time::Duration;

#[test]
fn progress_follows_delivery_not_reading_with_a_slow_webhook() {
    let env = Env::new(
        events(1_500, 100),
        WebhookConfig {
            latency: Duration::from_millis(450),
            ..WebhookConfig::default()
        },
    );
    let run = env.run(&backfill_args(&[
        "--batch-size",
        "100",
        "--concurrency",
        "1",
    ]));
    run.assert_code(0);
    let total = env.assert_exactly_once(in_range) as f64;
    // `progress 40.0% … posted 600 (…)` every 5 s: the share shown is what was delivered.
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains(" progress "))
        .collect();
    assert!(!lines.is_empty(), "{}", run.stderr);
    for line in lines {
        let shown: f64 = line
            .split("progress ")
            .nth(1)
            .unwrap()
            .split('%')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let posted: f64 = line
            .split("posted ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .replace(',', "")
            .parse()
            .unwrap();
        let delivered = 100.0 * posted / total;
        assert!(
            (shown - delivered).abs() < 15.0,
            "shown {shown}% with {delivered:.1}% delivered: {line}"
        );
        println!("{line}");
    }
}

#[test]
fn config_check_asks_the_api_the_run_would_use_and_fails_on_what_would_fail() {
    use posthog_patterns_standin::PostHogConfig;
    let env = Env::new(events(500, 101), WebhookConfig::default());
    let check = |extra: &[&str]| {
        let mut args = vec![
            "config",
            "check",
            "backfill",
            "--start",
            "2024-03-01",
            "--end",
            "2024-03-08",
        ];
        args.extend_from_slice(extra);
        env.run(&args)
    };
    // A wrong project: not "settings OK", and named as a wrong project.
    let run = check(&["--project", "999"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("has no project 999"), "{}", run.stderr);
    // A bad key, with either API.
    for source in ["query", "events", "auto"] {
        let mut cmd = env.command(&[
            "config",
            "check",
            "backfill",
            "--start",
            "2024-03-01",
            "--end",
            "2024-03-08",
            "--source",
            source,
        ]);
        cmd.env("POSTHOG_API_KEY", "phx_wrong_key_000");
        let run = finish(cmd.output().unwrap());
        assert_eq!(run.code, 1, "--source {source}: {}", run.stderr);
        assert!(run.stderr.contains("HTTP 401"), "{}", run.stderr);
        assert!(!run.stdout.contains("settings OK"));
    }
    // A malformed webhook URL.
    let run = check(&["--webhook-url", "not a url"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    // Never a post to the webhook; at most 12 count() queries for 60 years.
    let before = env.posthog.log().len();
    let run = check(&["--start", "1970-01-01", "--end", "2030-01-01"]);
    assert!(
        run.stdout.contains("settings OK") || run.code != 0,
        "{}",
        run.stdout
    );
    let counts = env.posthog.log()[before..]
        .iter()
        .filter(|r| r.sql.as_deref().is_some_and(|q| q.contains("count()")))
        .count();
    assert!(counts <= 12, "{counts} count() queries");
    // (Only HEAD requests, which prove the webhook can be reached.)
    assert!(env.webhook.with_state(|s| s.events.is_empty()));

    // Counting too slow for PostHog: the estimate is unavailable and the check passes.
    let slow = Env::with(
        PostHogConfig {
            max_scan_rows: 10,
            ..PostHogConfig::default()
        },
        events(500, 102),
        WebhookConfig::default(),
    );
    let run = slow.run(&[
        "config",
        "check",
        "backfill",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
    ]);
    run.assert_code(0);
    assert!(
        run.stdout.contains("estimate          unavailable") && run.stdout.contains("settings OK"),
        "{}",
        run.stdout
    );
}

#[test]
fn with_json_logs_every_line_is_one_object_errors_and_summary_included() {
    let env = Env::new(events(300, 103), WebhookConfig::default());
    let lines = |stderr: &str| -> Vec<serde_json::Value> {
        stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let run = env.run(&backfill_args(&["--log-format", "json", "-v"]));
    run.assert_code(0);
    let all = lines(&run.stderr);
    let summary = all.last().unwrap();
    assert_eq!(summary["msg"].as_str().unwrap().lines().count(), 1);
    assert_eq!(summary["posted"], 302);
    assert_eq!(summary["read"], 302);
    for field in [
        "duplicates",
        "filtered",
        "dead_lettered",
        "posthog_requests",
        "webhook_requests",
        "retries",
        "seconds",
    ] {
        assert!(summary.get(field).is_some(), "{field} in {summary}");
    }
    // An error is a JSON line too, with its exit code.
    let run = env.run(&backfill_args(&[
        "--restart",
        "--log-format",
        "json",
        "--webhook-url",
        &format!("{}-nope", env.webhook.url()),
    ]));
    run.assert_code(1);
    let last = lines(&run.stderr).pop().unwrap();
    assert_eq!(last["level"], "error");
    assert_eq!(last["exit_code"], 1);
    // ... also from a config file that does not parse.
    let bad = env.path("bad.toml");
    std::fs::write(&bad, "page_size = \n").unwrap();
    let run = env.run(&backfill_args(&[
        "--log-format",
        "json",
        "--config",
        bad.to_str().unwrap(),
    ]));
    run.assert_code(2);
    assert_eq!(lines(&run.stderr).pop().unwrap()["exit_code"], 2);
}

#[test]
fn the_key_in_the_environment_wins_over_a_key_file_named_in_the_config_file() {
    let env = Env::new(events(100, 104), WebhookConfig::default());
    let wrong = env.path("wrong.key");
    std::fs::write(&wrong, "phx_wrong_key_from_the_file").unwrap();
    let config = env.path("c.toml");
    std::fs::write(
        &config,
        format!("api_key_file = {:?}\n", wrong.to_str().unwrap()),
    )
    .unwrap();
    // POSTHOG_API_KEY (the right key) is in the environment, as Env sets it.
    env.run(&backfill_args(&["--config", config.to_str().unwrap()]))
        .assert_code(0);
    // The flag still wins over the environment.
    let run = env.run(&backfill_args(&[
        "--restart",
        "--api-key-file",
        wrong.to_str().unwrap(),
    ]));
    run.assert_code(1);
}

#[test]
fn a_webhook_that_wants_a_token_header_gets_it_from_a_flag_a_file_or_the_config_file() {
    let token = "Bearer tok_s3cr3t_header_value_42";
    let env = Env::new(
        events(300, 105),
        WebhookConfig {
            require_header: Some(("authorization".into(), token.into())),
            ..WebhookConfig::default()
        },
    );
    // Without it: the webhook says 401, echoing what it got; the run stops (exit 1).
    let wrong = "Authorization: Bearer tok_wrong_value_12345";
    let run = env.run(&backfill_args(&["--header", wrong]));
    run.assert_code(1);
    assert!(run.stderr.contains("HTTP 401"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("tok_wrong_value_12345"),
        "a header value is a secret: {}",
        run.stderr
    );

    let file = env.path("headers");
    std::fs::write(
        &file,
        format!("# for the webhook\nX-Team: analytics\nAuthorization: {token}\n"),
    )
    .unwrap();
    let run = env.run(&backfill_args(&["--header-file", file.to_str().unwrap()]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    std::fs::remove_file(&file).unwrap(); // the only file that may hold the token
    assert!(!run.stderr.contains("s3cr3t") && !env.all_files_text().contains("s3cr3t"));

    // Headers are not part of the job: a rotated token resumes the same job, and the
    // config file's `headers` work the same way.
    let config = env.path("c.toml");
    std::fs::write(&config, format!("headers = [\"Authorization: {token}\"]\n")).unwrap();
    let run = env.run(&backfill_args(&["--config", config.to_str().unwrap()]));
    run.assert_code(0);
    assert!(run.stderr.contains("already complete"), "{}", run.stderr);

    // A malformed header is a usage error that does not repeat the value.
    let run = env.run(&backfill_args(&["--header", "tok_s3cr3t_no_colon"]));
    run.assert_code(2);
    assert!(
        run.stderr
            .contains("--header number 1 is not `Name: value`")
            && !run.stderr.contains("s3cr3t"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_overlapping_run_can_fail_skip_quietly_or_wait() {
    let env = Env::new(
        events(300, 106),
        WebhookConfig {
            stall_after: Some(1),
            ..WebhookConfig::default()
        },
    );
    let args = |extra: &[&'static str]| {
        let mut v = backfill_args(&["--batch-size", "100"]);
        v.extend_from_slice(extra);
        v
    };
    // The first run holds the lock while a batch hangs at the webhook.
    let mut first = env.spawn(&args(&[]));
    assert!(
        env.webhook
            .wait_until(Duration::from_secs(60), |s| !s.stalled_events.is_empty())
    );
    let run = env.run(&args(&["--if-locked", "fail"]));
    run.assert_code(75);
    assert!(run.stderr.contains("holds the lock"), "{}", run.stderr);
    let run = env.run(&args(&["--if-locked", "skip"]));
    run.assert_code(0);
    assert!(
        run.stderr.is_empty() && run.stdout.is_empty(),
        "without a word: {}",
        run.stderr
    );
    // Not a word in JSON either: no run took place, so there is no summary of one.
    let run = env.run(&args(&["--if-locked", "skip", "--log-format", "json"]));
    run.assert_code(0);
    assert!(
        run.stderr.is_empty() && run.stdout.is_empty(),
        "without a word: {}",
        run.stderr
    );
    // Waiting is bounded by --max-wait.
    let run = env.run(&args(&["--if-locked", "wait", "--max-wait", "1s"]));
    run.assert_code(75);
    // Once the first run is gone, a waiting run takes over.
    let waiting = env.spawn(&args(&["--if-locked", "wait", "--max-wait", "60s"]));
    first.kill().unwrap();
    first.wait().unwrap();
    env.webhook.release();
    let run = finish(waiting.wait_with_output().unwrap());
    run.assert_code(0);
    env.assert_delivered(in_range, 4 * 100);
}

#[test]
fn an_event_name_that_never_occurs_is_warned_about_in_backfill_not_in_sync() {
    let env = Env::new(events(300, 107), WebhookConfig::default());
    let run = env.run(&backfill_args(&["--event", "signup", "--event", "Signup"]));
    run.assert_code(0);
    assert!(
        run.stderr.contains("no event named \"Signup\""),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("no event named \"signup\""),
        "{}",
        run.stderr
    );
    let run = env.run(&[
        "export",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "--event",
        "Signup",
    ]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("no event named \"Signup\""),
        "{}",
        run.stderr
    );
    let start = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let run = env.run(&[
        "sync", "--start", &start, "--event", "Signup", "--lag", "0s",
    ]);
    run.assert_code(0);
    assert!(!run.stderr.contains("no event named"), "{}", run.stderr);
}
