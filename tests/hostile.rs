//! Hostile and broken answers: no panic, bounded memory and time, true messages. Each test
//! gives the binary an answer a broken or malicious server could send.

mod common;

use common::*;
use posthog_patterns_standin::{Fault, WebhookConfig};
use std::time::{Duration, Instant};

#[test]
fn a_retry_after_too_large_for_any_clock_stops_with_75_not_a_panic() {
    for value in ["1e20", "18446744073709551616"] {
        // The webhook side.
        let env = Env::new(events(50, 80), WebhookConfig::default());
        env.webhook
            .fault_next(Fault::status(429).header("retry-after", value));
        let run = env.run(&backfill_args(&[]));
        run.assert_code(75);
        assert!(
            run.stderr.contains("more than --max-wait"),
            "{}",
            run.stderr
        );
        // The PostHog side.
        let env = Env::new(events(50, 81), WebhookConfig::default());
        env.posthog
            .fault_next(Fault::status(429).header("retry-after", value));
        let run = env.run(&backfill_args(&[]));
        run.assert_code(75);
        assert!(
            run.stderr.contains("more than --max-wait"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_throttle_detail_naming_more_seconds_than_a_number_holds_is_a_long_wait() {
    let env = Env::new(events(50, 82), WebhookConfig::default());
    env.posthog.fault_next(Fault::status(429).body(
        r#"{"type":"throttled_error","code":"throttled","detail":"Request was throttled. Expected available in 99999999999999999999 seconds.","attr":null}"#,
    ));
    let run = env.run(&backfill_args(&[]));
    run.assert_code(75);
    assert!(
        run.stderr.contains("more than --max-wait"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_503_with_retry_after_zero_counts_toward_max_retries() {
    let env = Env::new(events(50, 83), WebhookConfig::default());
    for _ in 0..10 {
        env.webhook
            .fault_next(Fault::status(503).header("retry-after", "0"));
    }
    let run = env.run(&backfill_args(&["--max-retries", "2"]));
    run.assert_code(75);
    assert!(run.stderr.contains("after 2 retries"), "{}", run.stderr);
    assert_eq!(env.webhook.with_state(|s| s.requests), 3);
}

#[test]
fn a_2xx_whose_body_never_ends_is_an_acknowledgement_not_a_timeout() {
    let env = Env::new(
        events(600, 84),
        WebhookConfig {
            trickle_acks: true,
            ..WebhookConfig::default()
        },
    );
    let started = Instant::now();
    let run = env.run(&backfill_args(&[
        "--batch-size",
        "100",
        "--http-timeout",
        "2s",
    ]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_garbled_200_from_posthog_is_retried_and_a_persistent_one_is_exit_75() {
    let env = Env::new(events(300, 85), WebhookConfig::default());
    env.posthog
        .fault_at(1, Fault::status(200).body(r#"{"results": [["0190"#));
    env.posthog.fault_at(2, Fault::html(200));
    env.run(&backfill_args(&[])).assert_code(0);
    env.assert_exactly_once(in_range);

    // (After PostHog's first answer: on a job's first contact an empty 200 is a host that is
    // not PostHog, exit 1; tests/first_hour.rs.)
    let env = Env::new(events(300, 86), WebhookConfig::default());
    for n in 1..=5 {
        env.posthog.fault_at(n, Fault::status(200).body(""));
    }
    let run = env.run(&backfill_args(&["--max-retries", "2"]));
    run.assert_code(75);
    assert!(
        run.stderr.contains("not the JSON expected"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_asynchronous_202_answer_without_a_query_to_poll_stops_with_exit_1_and_says_so() {
    // (Answers 202 with a query to poll are polled: tests/carry_on.rs.)
    let env = Env::new(events(50, 87), WebhookConfig::default());
    for n in 1..=5 {
        env.posthog.fault_at(
            n,
            Fault::status(202).body(r#"{"query_status": {"complete": false}}"#),
        );
    }
    let run = env.run(&backfill_args(&["--max-retries", "2"]));
    run.assert_code(1);
    assert!(
        run.stderr
            .contains("answered asynchronously (HTTP 202) without a query to poll"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_answer_larger_than_max_response_size_stops_the_run_and_suggests_a_smaller_page() {
    let env = Env::new(events(3_000, 88), WebhookConfig::default());
    let run = env.run(&backfill_args(&[
        "--max-response-size",
        "64KiB",
        "--page-size",
        "5000",
    ]));
    run.assert_code(1);
    assert!(
        run.stderr.contains("--max-response-size") && run.stderr.contains("--page-size"),
        "{}",
        run.stderr
    );
}

#[test]
fn max_run_time_stops_a_stuck_run_with_75_and_releases_the_lock() {
    let env = Env::new(
        events(500, 89),
        WebhookConfig {
            stall_after: Some(1),
            ..WebhookConfig::default()
        },
    );
    let args = backfill_args(&["--batch-size", "100", "--max-run-time", "2s"]);
    let started = Instant::now();
    let run = env.run(&args);
    run.assert_code(75);
    assert!(run.stderr.contains("--max-run-time"), "{}", run.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    env.webhook.release();
    // The lock is free and the checkpoint holds what was acknowledged: the next run finishes.
    env.run(&backfill_args(&["--batch-size", "100"]))
        .assert_code(0);
    env.assert_delivered(in_range, 4 * 100);
}

#[test]
fn a_webhook_that_does_not_answer_is_a_timeout_not_unreachable() {
    let env = Env::new(
        events(50, 90),
        WebhookConfig {
            stall_after: Some(0),
            ..WebhookConfig::default()
        },
    );
    let run = env.run(&backfill_args(&[
        "--http-timeout",
        "1s",
        "--max-retries",
        "0",
    ]));
    run.assert_code(75);
    assert!(
        run.stderr.contains("did not answer within --http-timeout")
            && !run.stderr.contains("cannot reach"),
        "{}",
        run.stderr
    );
    env.webhook.release();
}

#[test]
fn secrets_never_appear_even_when_servers_echo_them_back() {
    use posthog_patterns_standin::PostHogConfig;
    let ev = events(400, 91);
    let poison = ev[50].uuid.clone();
    let env = Env::with(
        PostHogConfig {
            echo_requests: true,
            ..PostHogConfig::default()
        },
        ev,
        WebhookConfig {
            echo_requests: true,
            reject_containing: vec![poison],
            ..WebhookConfig::default()
        },
    );
    let dead = env.path("dead.ndjson");
    let dead = dead.to_str().unwrap();
    let out = env.path("out.ndjson");
    let out = out.to_str().unwrap();
    let wrong_webhook = format!("{}-nope", env.webhook.url());
    // The webhook echoes the secret path in its 400 and 404 answers.
    let run = env.run(&backfill_args(&["-vv", "--dead-letter", dead]));
    run.assert_code(3);
    env.assert_no_secrets(&run);
    let run = env.run(&backfill_args(&[
        "--restart",
        "-v",
        "--log-format",
        "json",
        "--webhook-url",
        &wrong_webhook,
    ]));
    run.assert_code(1);
    assert!(
        run.stderr.contains("Cannot POST <redacted>"),
        "{}",
        run.stderr
    );
    env.assert_no_secrets(&run);
    // PostHog (or a proxy) echoes the Authorization header in a 401 and a 503.
    env.posthog.fault_next(Fault::status(503));
    env.posthog.fault_next(Fault::status(401));
    let run = env.run(&[
        "export",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "-vv",
        "--output",
        out,
    ]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("Authorization: Bearer <redacted>"),
        "{}",
        run.stderr
    );
    env.assert_no_secrets(&run);
    for args in [
        vec![
            "export",
            "--start",
            "2024-03-01",
            "--end",
            "2024-03-08",
            "--output",
            out,
            "--log-format",
            "json",
            "-v",
        ],
        vec![
            "send",
            out,
            "-vv",
            "--dead-letter",
            dead,
            "--on-invalid",
            "skip",
        ],
        vec![
            "sync",
            "--start",
            "2024-03-01",
            "-v",
            "--log-format",
            "json",
            "--dead-letter",
            dead,
        ],
        vec![
            "config",
            "check",
            "backfill",
            "--start",
            "2024-03-01",
            "--end",
            "2024-03-08",
            "-vv",
        ],
        vec!["backfill", "--help"],
    ] {
        let run = env.run(&args);
        env.assert_no_secrets(&run);
    }
}

#[test]
fn a_host_with_credentials_and_plain_http_to_another_machine_are_refused() {
    let env = Env::new(events(10, 92), WebhookConfig::default());
    let with_password = env
        .posthog
        .url()
        .replace("http://", "http://admin:hunter2secret@");
    let run = env.run(&backfill_args(&["--host", &with_password]));
    run.assert_code(2);
    assert!(
        run.stderr.contains("user name or password"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2secret"), "{}", run.stderr);
    assert!(env.all_files_text().is_empty() || !env.all_files_text().contains("hunter2secret"));
    // Never contacted: refused before any request.
    let run = env.run(&backfill_args(&[
        "--host",
        "http://posthog.internal.example",
    ]));
    run.assert_code(2);
    assert!(
        run.stderr.contains("--allow-insecure-http"),
        "{}",
        run.stderr
    );
    let run = env.run(&backfill_args(&[
        "--webhook-url",
        "http://hooks.example.org/api/app/webhooks/wh-abc123456",
    ]));
    run.assert_code(2);
    assert!(
        run.stderr.contains("--allow-insecure-http"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("wh-abc123456"), "{}", run.stderr);
    assert!(env.posthog.log().is_empty(), "PostHog was never asked");
}

#[test]
fn help_never_shows_the_value_of_an_environment_variable_that_may_hold_a_secret() {
    let env = Env::new(Vec::new(), WebhookConfig::default());
    let mut cmd = env.command(&["backfill", "--help"]);
    cmd.env("POSTHOG_HOST", "https://admin:hunter2secret@ph.example.com");
    let run = finish(cmd.output().unwrap());
    run.assert_code(0);
    assert!(!run.stdout.contains("hunter2secret"), "{}", run.stdout);
    assert!(!run.stdout.contains(&env.webhook.url()), "{}", run.stdout);
}

/// The mode bits of a file.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn files_the_tool_creates_are_private_whatever_the_umask_and_existing_files_keep_their_mode() {
    let ev = events(300, 93);
    let poison = ev[10].uuid.clone();
    let env = Env::new(
        ev,
        WebhookConfig {
            reject_containing: vec![poison],
            ..WebhookConfig::default()
        },
    );
    let dead = env.path("dead.ndjson");
    let out = env.path("out.ndjson");
    let kept = env.path("kept.ndjson");
    std::fs::write(&kept, "").unwrap();
    std::fs::set_permissions(&kept, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // Run the binary under umask 000, as a careless service definition would.
    let umask0 = |args: &[&str]| {
        let mut cmd = env.command(&[]);
        cmd.env("BIN", BIN);
        let mut sh = std::process::Command::new("sh");
        sh.arg("-c")
            .arg("umask 000; exec \"$BIN\" \"$@\"")
            .arg("sh")
            .args(args);
        sh.env_clear()
            .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
        finish(sh.output().unwrap())
    };
    umask0(&backfill_args(&["--dead-letter", dead.to_str().unwrap()])).assert_code(3);
    umask0(&[
        "export",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "--output",
        out.to_str().unwrap(),
    ])
    .assert_code(0);
    umask0(&backfill_args(&[
        "--restart",
        "--dead-letter",
        kept.to_str().unwrap(),
    ]))
    .assert_code(3);
    let state = env.path("state");
    assert_eq!(mode(&state), 0o700, "state directory");
    for entry in std::fs::read_dir(&state).unwrap().flatten() {
        assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
    }
    assert_eq!(mode(&dead), 0o600, "dead-letter file");
    assert_eq!(mode(&out), 0o600, "export output");
    assert_eq!(mode(&kept), 0o644, "an existing file keeps its mode");
}

#[test]
fn temporary_files_a_killed_run_left_are_removed_by_the_next_run_of_that_job_only() {
    let env = Env::new(events(100, 94), WebhookConfig::default());
    let state = env.path("state");
    std::fs::create_dir_all(&state).unwrap();
    let checkpoint = state.join("job.json");
    let mine = state.join(".job.json.abc123.tmp");
    let other = state.join(".other.json.abc123.tmp");
    std::fs::write(&mine, "{").unwrap();
    std::fs::write(&other, "{").unwrap();
    env.run(&backfill_args(&[
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ]))
    .assert_code(0);
    assert!(!mine.exists(), "this job's leftover is gone");
    assert!(other.exists(), "another job's file is left alone");
    assert!(
        state.join("job.json.lock").exists(),
        "the lock file is never unlinked"
    );
}

#[test]
fn a_checkpoint_of_another_command_is_another_job_and_a_position_outside_the_range_is_refused() {
    let env = Env::new(events(200, 95), WebhookConfig::default());
    let state = env.path("state.json");
    let state_arg = state.to_str().unwrap();
    let now = chrono::Utc::now() - chrono::Duration::days(1);
    env.run(&[
        "sync",
        "--start",
        &now.to_rfc3339(),
        "--checkpoint",
        state_arg,
    ])
    .assert_code(0);
    let run = env.run(&backfill_args(&["--checkpoint", state_arg]));
    run.assert_code(2);
    assert!(
        run.stderr
            .contains("belongs to a different job (a sync job, not backfill)")
            && !run.stderr.contains("corrupt"),
        "{}",
        run.stderr
    );

    // A position moved by hand past the end of the range.
    let own = env.path("backfill.json");
    env.run(&backfill_args(&["--checkpoint", own.to_str().unwrap()]))
        .assert_code(0);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&own).unwrap()).unwrap();
    v["complete"] = false.into();
    v["position"]["timestamp"] = "2025-01-01T00:00:00.000000Z".into();
    std::fs::write(&own, v.to_string()).unwrap();
    let run = env.run(&backfill_args(&["--checkpoint", own.to_str().unwrap()]));
    run.assert_code(2);
    assert!(
        run.stderr.contains("outside the job's range"),
        "{}",
        run.stderr
    );
}

#[test]
fn events_with_bytes_json_cannot_carry_or_lone_surrogates_are_delivered_not_blocking() {
    use posthog_patterns_standin::PostHogConfig;
    let mut ev = events(300, 96);
    let bad_bytes = ev[20].uuid.clone();
    let surrogate = ev[40].uuid.clone();
    ev[20].properties = r#"{"name":"caf<<FF>>","n":1}"#.into();
    ev[40].properties = r#"{"name":"<<LONE>> half an emoji"}"#.into();
    let env = Env::with(
        PostHogConfig {
            body_substitutions: vec![
                ("<<FF>>".into(), vec![0xff]),
                // In the answer's `properties` string: an escaped lone surrogate.
                ("<<LONE>>".into(), br"\ud800".to_vec()),
            ],
            ..PostHogConfig::default()
        },
        ev,
        WebhookConfig::default(),
    );
    let run = env.run(&backfill_args(&[]));
    run.assert_code(0);
    env.assert_exactly_once(in_range);
    assert!(
        run.stderr
            .contains(&format!("event {bad_bytes} held bytes that are not UTF-8"))
            && run.stderr.contains("repaired 1 event"),
        "{}",
        run.stderr
    );
    let received = env.webhook.with_state(|s| s.events.clone());
    let find = |uuid: &str| received.iter().find(|e| e.contains(uuid)).unwrap().clone();
    assert!(find(&bad_bytes).contains(r#""properties":{"name":"caf�","n":1}"#));
    assert!(
        find(&surrogate).contains(r#""properties":{"name":"\ud800 half an emoji"}"#),
        "the escape passes through as PostHog sent it: {}",
        find(&surrogate)
    );

    // Whatever export writes, send accepts.
    let out = env.path("out.ndjson");
    env.run(&[
        "export",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "--output",
        out.to_str().unwrap(),
    ])
    .assert_code(0);
    let before = received.len();
    env.run(&["send", out.to_str().unwrap()]).assert_code(0);
    assert_eq!(env.webhook.with_state(|s| s.events.len()), 2 * before);
}

#[test]
fn send_takes_hostile_lines_as_invalid_lines_not_panics_and_skips_past_them() {
    let env = Env::new(Vec::new(), WebhookConfig::default());
    let input = env.path("in.ndjson");
    let mut text = b"\xEF\xBB\xBF{\"uuid\":\"u1\",\"event\":\"a\"}\n".to_vec();
    text.extend_from_slice(b"{\"uuid\":\"u2\",\"p\":\"bad \xff byte\"}\n");
    text.extend_from_slice(b"[{\"uuid\":\"u3\"}]\n");
    text.extend_from_slice(
        format!("{{\"uuid\":\"u4\",\"p\":\"{}\"}}\n", "x".repeat(5_000)).as_bytes(),
    );
    text.extend_from_slice(b"{\"uuid\":\"u5\",\"event\":\"b\"}\n");
    std::fs::write(&input, &text).unwrap();
    let input = input.to_str().unwrap();

    // Stopping at the first bad line: the line before it (BOM skipped) is posted, no panic.
    let run = env.run(&["send", input, "--max-line-bytes", "4KiB"]);
    run.assert_code(1);
    assert!(run.stderr.contains("line 2: not UTF-8"), "{}", run.stderr);
    assert_eq!(env.webhook.uuids(), ["u1"]);

    // Skipping: every bad line is set aside with its line number and the reason.
    let dead = env.path("dead.ndjson");
    let run = env.run(&[
        "send",
        input,
        "--max-line-bytes",
        "4KiB",
        "--on-invalid",
        "skip",
        "--restart",
        "--dead-letter",
        dead.to_str().unwrap(),
    ]);
    run.assert_code(3);
    assert_eq!(env.webhook.uuids(), ["u1", "u1", "u5"]);
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines: Vec<u64> = records
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3, 4]);
    assert!(
        records[1]["error"]
            .as_str()
            .unwrap()
            .contains("jq -c '.[]'")
    );
    assert!(
        records[2]["error"]
            .as_str()
            .unwrap()
            .contains("--max-line-bytes")
    );
}
