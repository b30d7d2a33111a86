//! What a data engineer meets in the first hour: checks that check, fast failures on
//! permanent misconfiguration, records of every run, and the small things that trip a new
//! user.

mod common;

use common::*;
use posthog_patterns_standin::WebhookConfig;

/// `config check backfill` over the standard range, with extra arguments.
fn check_backfill<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "config",
        "check",
        "backfill",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn export_to_dash_writes_stdout_like_no_output() {
    let env = Env::new(events(300, 190), WebhookConfig::default());
    let args = [
        "export",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "--progress",
        "never",
    ];
    let plain = finish(
        env.command(&args)
            .current_dir(env.dir.path())
            .output()
            .unwrap(),
    );
    plain.assert_code(0);
    let mut with_dash = args.to_vec();
    with_dash.extend(["--output", "-"]);
    let dash = finish(
        env.command(&with_dash)
            .current_dir(env.dir.path())
            .output()
            .unwrap(),
    );
    dash.assert_code(0);
    assert!(!env.dir.path().join("-").exists(), "no file named -");
    assert_eq!(dash.stdout.lines().count(), plain.stdout.lines().count());
    assert!(dash.stdout.lines().count() > 300, "{}", dash.stderr);
    // Like stdout without --output, it cannot be resumed.
    with_dash.extend(["--checkpoint", "x.json"]);
    let run = env.run(&with_dash);
    run.assert_code(2);
    assert!(run.stderr.contains("cannot be resumed"), "{}", run.stderr);
}

/// A server on loopback that answers every request `200 OK` with an empty body: a host that
/// is not PostHog (a load balancer's default page, say).
fn not_posthog() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 65536];
            let _ = stream.read(&mut buf);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_host_that_is_not_posthog_fails_at_once_for_a_new_job_and_in_config_check() {
    let env = Env::new(events(50, 191), WebhookConfig::default());
    let host = not_posthog();
    let started = std::time::Instant::now();
    let run = finish(
        env.command(&backfill_args(&["--allow-insecure-http"]))
            .env("POSTHOG_HOST", &host)
            .output()
            .unwrap(),
    );
    run.assert_code(1);
    assert!(
        run.stderr.contains(
            "answered HTTP 200 with an empty body, which is not PostHog's API: check --host"
        ),
        "{}",
        run.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "at once"
    );
    let check = finish(
        env.command(&check_backfill(&["--allow-insecure-http"]))
            .env("POSTHOG_HOST", &host)
            .output()
            .unwrap(),
    );
    assert_eq!(check.code, 1, "{}", check.stderr);
    assert!(
        check.stderr.contains("not PostHog's API"),
        "{}",
        check.stderr
    );
}

#[test]
fn a_projects_page_pasted_as_host_is_refused_naming_the_host_and_project() {
    let env = Env::new(events(10, 192), WebhookConfig::default());
    let run = finish(
        env.command(&backfill_args(&[]))
            .env("POSTHOG_HOST", "https://us.posthog.com/project/4242")
            .output()
            .unwrap(),
    );
    run.assert_code(2);
    assert!(
        run.stderr
            .contains("use --host https://us.posthog.com --project 4242"),
        "{}",
        run.stderr
    );
}

#[test]
fn connection_refused_on_first_contact_is_warned_about_at_once() {
    let env = Env::new(events(10, 193), WebhookConfig::default());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = env
        .command(&backfill_args(&[
            "--allow-insecure-http",
            "--max-retries",
            "3",
        ]))
        .env("POSTHOG_HOST", format!("http://127.0.0.1:{port}"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The warning comes before the retries are over, on the first refusal.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    let started = std::time::Instant::now();
    while !first.contains("connection refused") {
        first.clear();
        if std::io::BufRead::read_line(&mut stderr, &mut first).unwrap() == 0 {
            break;
        }
    }
    assert!(
        first.contains("nothing listens at") && first.contains("is --host right?"),
        "{first}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "at once"
    );
    let status = child.wait().unwrap();
    // Still retried as an outage: a job's host may come back.
    assert_eq!(status.code(), Some(75));
}

#[test]
fn a_job_that_ran_before_takes_a_host_that_fails_for_an_outage() {
    use posthog_patterns_standin::Fault;
    let env = Env::new(events(50, 194), WebhookConfig::default());
    let sync = [
        "sync",
        "--start",
        "2024-03-01",
        "--progress",
        "never",
        "--max-retries",
        "1",
    ];
    env.run(&sync).assert_code(0);
    // Its host answered before: empty answers now may be an outage (a proxy's), so they are
    // retried, and past the retries the run ends with exit 75.
    for _ in 0..4 {
        env.posthog.fault_next(Fault::status(200).body(""));
    }
    let run = env.run(&sync);
    run.assert_code(75);
}

/// The JSON objects a run printed that are its summary.
fn summaries(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON"))
        .filter(|v| v["summary"] == true)
        .collect()
}

#[test]
fn every_run_leaves_one_json_summary_whatever_v_or_q_and_on_failure_too() {
    let env = Env::new(events(200, 195), WebhookConfig::default());
    for extra in [&[][..], &["-q"][..], &["-v"][..]] {
        let mut args = vec!["sync", "--start", "2024-03-01", "--log-format", "json"];
        args.extend_from_slice(extra);
        let run = env.run(&args);
        run.assert_code(0);
        let s = summaries(&run.stderr);
        assert_eq!(s.len(), 1, "{extra:?}: {}", run.stderr);
        assert_eq!(s[0]["exit_code"], 0);
        assert!(s[0]["read"].is_u64() && s[0]["posted"].is_u64(), "{}", s[0]);
    }
    // A failed run: its summary, then its error.
    let failing = Env::new(
        events(50, 196),
        WebhookConfig {
            require_header: Some(("x-token".into(), "secret".into())),
            ..WebhookConfig::default()
        },
    );
    let run = failing.run(&backfill_args(&["--log-format", "json", "-q"]));
    assert_ne!(run.code, 0);
    let s = summaries(&run.stderr);
    assert_eq!(s.len(), 1, "{}", run.stderr);
    assert_eq!(s[0]["exit_code"], run.code);
    assert_eq!(s[0]["posted"], 0);
}

#[test]
fn sync_in_a_terminal_leaves_its_summary_and_a_changed_start_is_warned_about() {
    let env = Env::new(events(200, 197), WebhookConfig::default());
    // (`--progress always` draws the bars a terminal would show.)
    let run = env.run(&["sync", "--start", "2024-03-01", "--progress", "always"]);
    run.assert_code(0);
    assert!(run.stderr.contains("posted"), "{}", run.stderr);
    let quiet = env.run(&["sync", "--start", "2024-03-01", "--progress", "never"]);
    assert!(
        !quiet.stderr.contains("posted"),
        "cron stays silent: {}",
        quiet.stderr
    );
    let moved = env.run(&["sync", "--start", "2024-03-02", "--progress", "never"]);
    moved.assert_code(0);
    assert!(
        moved.stderr.contains(
            "--start 2024-03-02T00:00:00.000000Z is ignored: this sync started at 2024-03-01"
        ),
        "{}",
        moved.stderr
    );
}

#[test]
fn config_check_proves_the_webhook_is_reachable_without_posting() {
    let env = Env::new(events(50, 198), WebhookConfig::default());
    let check = check_backfill(&[]);
    let run = env.run(&check);
    run.assert_code(0);
    assert!(
        run.stdout.contains("webhook reached   HEAD answered HTTP")
            && run.stdout.contains("nothing was posted"),
        "{}",
        run.stdout
    );
    assert!(env.webhook.uuids().is_empty(), "nothing posted");
    // Nothing listens there: the check fails now, not the run after 44 s of retries.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook/secret-token");
    for command in [
        &check[..],
        &["config", "check", "sync", "--start", "2024-03-01"][..],
    ] {
        let run = finish(
            env.command(command)
                .env("PATTERNS_WEBHOOK_URL", &url)
                .output()
                .unwrap(),
        );
        run.assert_code(1);
        assert!(
            run.stderr.contains("cannot be reached") && run.stderr.contains("Connection refused"),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("secret-token") && !run.stdout.contains("secret-token"));
        assert!(!run.stdout.contains("settings OK"));
    }
}

#[test]
fn dates_without_an_offset_are_utc_and_a_refused_date_lists_the_accepted_forms() {
    let env = Env::new(events(300, 199), WebhookConfig::default());
    // The same job whether written as a date, as a naive time or as RFC 3339.
    let a = env.run(&[
        "backfill",
        "--start",
        "2024-03-01T00:00:00",
        "--end",
        "2024-03-08 00:00",
        "--progress",
        "never",
    ]);
    a.assert_code(0);
    assert!(
        a.stderr.contains(
            "--end 2024-03-08 00:00 has no offset: read as UTC, 2024-03-08T00:00:00.000000Z"
        ) && a
            .stderr
            .contains("(a time given without an offset was read as UTC)"),
        "{}",
        a.stderr
    );
    let b = env.run(&backfill_args(&[]));
    b.assert_code(0);
    assert!(b.stderr.contains("already complete"), "{}", b.stderr);
    let bad = env.run(&["backfill", "--start", "01/03/2024", "--end", "2024-03-08"]);
    bad.assert_code(2);
    assert!(
        bad.stderr.contains("accepted: a date (2024-01-31")
            && bad.stderr.contains("2024-01-31T14:00:00+02:00")
            && bad.stderr.contains("taken as UTC"),
        "{}",
        bad.stderr
    );
}

#[test]
fn config_files_take_toml_dates_a_single_name_for_a_list_and_suggest_a_misspelt_key() {
    let env = Env::new(events(300, 200), WebhookConfig::default());
    let config = env.path("c.toml");
    std::fs::write(
        &config,
        "start = 2024-03-01\nend = 2024-03-08T00:00:00Z\nevents = \"signup\"\n",
    )
    .unwrap();
    let run = env.run(&[
        "backfill",
        "--config",
        config.to_str().unwrap(),
        "--progress",
        "never",
    ]);
    run.assert_code(0);
    env.assert_exactly_once(|e| in_range(e) && e.event == "signup");

    std::fs::write(&config, "project_id = 4242\nstrat = 2024-03-01\n").unwrap();
    let run = env.run(&["backfill", "--config", config.to_str().unwrap()]);
    run.assert_code(2);
    assert!(
        run.stderr
            .contains("unknown field `project_id` (did you mean `project`?)")
            && run
                .stderr
                .contains("unknown field `strat` (did you mean `start`?)"),
        "{}",
        run.stderr
    );
}

#[test]
fn config_check_into_a_reader_that_stops_early_ends_quietly() {
    let env = Env::new(events(50, 201), WebhookConfig::default());
    let mut child = env
        .command(&check_backfill(&[]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // `| head -0`: nobody reads
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A metric's value in a Prometheus text file.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_metrics_file_records_each_run_and_a_failed_one_keeps_the_last_success() {
    use posthog_patterns_standin::Fault;
    let env = Env::new(events(300, 202), WebhookConfig::default());
    let path = env.path("metrics/posthog_patterns.prom");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let sync = [
        "sync",
        "--start",
        "2024-03-01",
        "--progress",
        "never",
        "--max-retries",
        "0",
        "--metrics-file",
        path.to_str().unwrap(),
    ];
    env.run(&sync).assert_code(0);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("# TYPE posthog_patterns_last_success_timestamp_seconds gauge"),
        "{text}"
    );
    assert!(text.contains("{command=\"sync\"}"), "{text}");
    let success = metric(&text, "posthog_patterns_last_success_timestamp_seconds").unwrap();
    assert_eq!(
        metric(&text, "posthog_patterns_last_run_exit_code"),
        Some(0.0)
    );
    let delivered = metric(&text, "posthog_patterns_last_run_events_delivered").unwrap();
    assert_eq!(delivered as usize, env.received().len());
    assert!(
        metric(&text, "posthog_patterns_watermark_lag_seconds").is_some(),
        "{text}"
    );

    // A failed run: its exit code, the earlier success time kept.
    std::thread::sleep(std::time::Duration::from_millis(20));
    for _ in 0..4 {
        env.posthog.fault_next(Fault::status(503));
    }
    let failed = env.run(&sync);
    assert_eq!(failed.code, 75, "{}", failed.stderr);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        metric(&text, "posthog_patterns_last_run_exit_code"),
        Some(75.0)
    );
    assert_eq!(
        metric(&text, "posthog_patterns_last_success_timestamp_seconds"),
        Some(success)
    );
    assert!(metric(&text, "posthog_patterns_last_run_timestamp_seconds").unwrap() > success);
    // Nothing half-written was left beside it.
    let files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(files.len(), 1);
}

#[test]
fn sending_a_file_that_is_not_there_is_a_usage_error() {
    let env = Env::new(vec![], WebhookConfig::default());
    let run = env.run(&["send", "nosuch.ndjson"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("cannot read") && run.stderr.contains("nosuch.ndjson"),
        "{}",
        run.stderr
    );
}

#[test]
fn warnings_are_coloured_in_a_terminal_unless_no_color() {
    use posthog_patterns_standin::Fault;
    let env = Env::new(events(50, 203), WebhookConfig::default());
    // (`--progress always` draws what a terminal shows.) A failure and its retry: a warning.
    let args = [
        "backfill",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "--progress",
        "always",
        "--restart",
    ];
    env.webhook.fault_next(Fault::status(503));
    let run = env.run(&args);
    run.assert_code(0);
    assert!(
        run.stderr.contains("\u{1b}[33mwarning\u{1b}[0m: webhook"),
        "{:?}",
        run.stderr
    );
    env.webhook.fault_next(Fault::status(503));
    let plain = finish(env.command(&args).env("NO_COLOR", "1").output().unwrap());
    plain.assert_code(0);
    assert!(
        plain.stderr.contains("warning: webhook") && !plain.stderr.contains("\u{1b}[33m"),
        "{:?}",
        plain.stderr
    );
}

#[test]
fn dry_run_is_config_check_for_the_same_settings_and_writes_nothing() {
    let env = Env::new(events(100, 204), WebhookConfig::default());
    let metrics = env.path("m.prom");
    let run = env.run(&backfill_args(&[
        "--dry-run",
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]));
    run.assert_code(0);
    assert!(
        run.stdout.contains("settings OK") && run.stdout.contains("webhook reached"),
        "{}",
        run.stdout
    );
    assert!(env.webhook.uuids().is_empty(), "nothing sent");
    assert!(!env.path("state").exists(), "no state, no lock");
    assert!(!metrics.exists(), "no metrics");
    // It fails where config check fails.
    let run = env.run(&["sync", "--dry-run"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("--start"), "{}", run.stderr);
}

#[test]
fn a_config_file_in_the_users_config_directory_is_read_and_named_unless_no_config() {
    let env = Env::new(events(100, 205), WebhookConfig::default());
    let dir = env.path("xdg/posthog-patterns");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "start = 2024-03-01\nend = 2024-03-08\n",
    )
    .unwrap();
    let run = finish(
        env.command(&["backfill", "--progress", "never"])
            .env("XDG_CONFIG_HOME", env.path("xdg"))
            .output()
            .unwrap(),
    );
    run.assert_code(0);
    assert!(
        run.stderr.contains(&format!(
            "reading the config file {}",
            dir.join("config.toml").display()
        )) && run.stderr.contains("--no-config skips it"),
        "{}",
        run.stderr
    );
    env.assert_exactly_once(in_range);
    let run = finish(
        env.command(&["backfill", "--progress", "never", "--no-config"])
            .env("XDG_CONFIG_HOME", env.path("xdg"))
            .output()
            .unwrap(),
    );
    run.assert_code(2);
    assert!(
        !run.stderr.contains("reading the config file"),
        "{}",
        run.stderr
    );
}

#[test]
fn every_missing_setting_is_named_in_one_message() {
    let env = Env::new(vec![], WebhookConfig::default());
    let run = finish(
        std::process::Command::new(BIN)
            .args(["backfill"])
            .env_clear()
            .env("HOME", env.dir.path())
            .output()
            .unwrap(),
    );
    run.assert_code(2);
    for named in [
        "--project ID",
        "POSTHOG_API_KEY",
        "--webhook-url URL",
        "--start DATE",
        "--end DATE",
    ] {
        assert!(run.stderr.contains(named), "{named}: {}", run.stderr);
    }
    assert!(
        run.stderr.contains("5 settings are missing"),
        "{}",
        run.stderr
    );
}

#[test]
fn with_json_logs_argument_errors_config_check_and_progress_are_json() {
    let env = Env::new(
        events(300, 206),
        WebhookConfig {
            latency: std::time::Duration::from_millis(900),
            ..WebhookConfig::default()
        },
    );
    // A mistake on the command line: one JSON object, exit 2.
    let run = env.run(&["backfill", "--log-format", "json", "--no-such-flag"]);
    run.assert_code(2);
    let lines: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert_eq!(lines[0]["exit_code"], 2);
    assert!(lines[0]["msg"].as_str().unwrap().contains("--no-such-flag"));

    // config check: one object on stdout.
    let run = env.run(&check_backfill(&["--log-format", "json"]));
    run.assert_code(0);
    let out: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(out.len(), 1, "{}", run.stdout);
    let v: serde_json::Value = serde_json::from_str(out[0]).unwrap();
    assert_eq!(v["msg"], "settings OK");
    assert!(
        v["check"]["webhook_reached"]
            .as_str()
            .unwrap()
            .contains("HEAD answered"),
        "{v}"
    );
    assert!(v["check"]["range"].is_string(), "{v}");

    // Progress lines carry their figures as fields.
    let run = env.run(&backfill_args(&[
        "--log-format",
        "json",
        "--batch-size",
        "40",
        "--concurrency",
        "1",
    ]));
    run.assert_code(0);
    let progress: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["progress"] == true)
        .collect();
    assert!(!progress.is_empty(), "{}", run.stderr);
    assert!(
        progress[0]["posted"].is_u64() && progress[0]["percent"].is_f64(),
        "{}",
        progress[0]
    );
}

#[test]
fn progress_lines_say_written_for_export_and_give_no_share_for_stdin() {
    use posthog_patterns_standin::PostHogConfig;
    use std::io::Write;
    // send from stdin to a slow webhook: counts and rates, no percentage; the two services'
    // requests apart.
    let env = Env::new(
        events(300, 207),
        WebhookConfig {
            latency: std::time::Duration::from_millis(900),
            ..WebhookConfig::default()
        },
    );
    let lines: String = env
        .posthog
        .events()
        .iter()
        .map(|e| e.posted_json(4242) + "\n")
        .collect();
    let mut child = env
        .command(&[
            "send",
            "--batch-size",
            "40",
            "--concurrency",
            "1",
            "--progress",
            "never",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let run = finish(child.wait_with_output().unwrap());
    run.assert_code(0);
    let progress: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("info: progress"))
        .collect();
    assert!(!progress.is_empty(), "{}", run.stderr);
    assert!(
        progress
            .iter()
            .all(|l| !l.contains('%') && l.contains("webhook requests")),
        "{progress:?}"
    );

    // export, from a slow PostHog: "written", not "posted".
    let env = Env::with(
        PostHogConfig {
            query_latency: std::time::Duration::from_millis(2_500),
            ..PostHogConfig::default()
        },
        events(300, 208),
        WebhookConfig::default(),
    );
    let run = env.run(&[
        "export",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "--progress",
        "never",
    ]);
    run.assert_code(0);
    let progress: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("info: progress"))
        .collect();
    assert!(!progress.is_empty(), "{}", run.stderr);
    assert!(
        progress.iter().all(|l| l.contains(" written ")
            && !l.contains("posted")
            && l.contains("PostHog requests")),
        "{progress:?}"
    );
}

#[test]
fn relative_dates_resolve_by_posthogs_clock_once_and_the_job_keeps_them() {
    use posthog_patterns_standin::PostHogConfig;
    // PostHog's clock reads a day after the standard range.
    let offset = t("2024-03-09T00:00:00Z") - chrono::Utc::now();
    let env = Env::with(
        PostHogConfig {
            clock_offset: offset,
            ..PostHogConfig::default()
        },
        events(400, 209),
        WebhookConfig::default(),
    );
    let args = [
        "backfill",
        "--start",
        "2024-03-01",
        "--end",
        "-1d",
        "--progress",
        "never",
    ];
    let run = env.run(&args);
    run.assert_code(0);
    assert!(
        run.stderr.contains("--start 2024-03-01T00:00:00.000000Z --end -1d: 2024-03-01T00:00:00.000000Z → 2024-03-08T00:00:")
            && run.stderr.contains("by PostHog's clock; later runs of this job keep it"),
        "{}",
        run.stderr
    );
    let state = std::fs::read_dir(env.path("state"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
    assert_eq!(state["job"]["end"], "-1d", "{state}");
    let end = t(state["range"]["end"].as_str().unwrap());
    env.assert_exactly_once(|e| e.timestamp >= t(RANGE_START) && e.timestamp < end);
    // Later, the same words: the same job, complete.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = env.run(&args);
    again.assert_code(0);
    assert!(
        again.stderr.contains("already complete"),
        "{}",
        again.stderr
    );
    // Words it does not know are refused with the forms it does.
    let bad = env.run(&["backfill", "--start", "last week", "--end", "now"]);
    bad.assert_code(2);
    assert!(
        bad.stderr.contains("now, today, yesterday, -7d"),
        "{}",
        bad.stderr
    );
}

#[test]
fn a_reader_of_stderr_that_goes_away_ends_no_run_in_a_crash() {
    let env = Env::new(events(10, 301), WebhookConfig::default());
    // Lines of which some are no JSON objects: each skipped one is a warning on stderr.
    let mut text = String::new();
    for i in 0..300 {
        if i % 50 == 7 {
            text.push_str("not json\n");
        } else {
            text.push_str(&format!("{{\"uuid\":\"u{i}\",\"event\":\"e\"}}\n"));
        }
    }
    let input = env.path("mixed.ndjson");
    std::fs::write(&input, text).unwrap();
    let mut child = env
        .command(&[
            "send",
            input.to_str().unwrap(),
            "--on-invalid",
            "skip",
            "-v",
            "--progress",
            "never",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader of stderr is gone at once, as with `2>&1 | head -0`.
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    // Lines were skipped: exit 3, the run's own outcome, not a crash (101).
    assert_eq!(status.code(), Some(3));
    assert_eq!(env.webhook.uuids().len(), 294);
}

#[test]
fn config_check_send_reads_the_checkpoint_as_a_run_does() {
    let env = Env::new(events(10, 302), WebhookConfig::default());
    let input = env.path("in.ndjson");
    std::fs::write(&input, "{\"uuid\":\"a\"}\n").unwrap();
    let checkpoint = env.path("send.json");
    let check = |checkpoint: &std::path::Path| {
        env.run(&[
            "config",
            "check",
            "send",
            input.to_str().unwrap(),
            "--checkpoint",
            checkpoint.to_str().unwrap(),
        ])
    };
    // None yet: named, and fine.
    let run = check(&checkpoint);
    run.assert_code(0);
    assert!(run.stdout.contains("checkpoint"), "{}", run.stdout);
    // After a run: what it holds.
    env.run(&[
        "send",
        input.to_str().unwrap(),
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ])
    .assert_code(0);
    let run = check(&checkpoint);
    run.assert_code(0);
    assert!(
        run.stdout
            .contains("complete: true, 1 file recorded, 1 posted"),
        "{}",
        run.stdout
    );
    // A corrupt one, or another command's, is refused as a run refuses it.
    std::fs::write(&checkpoint, "{not json").unwrap();
    let run = check(&checkpoint);
    run.assert_code(1);
    assert!(run.stderr.contains("is corrupt"), "{}", run.stderr);
    let backfill = env.path("backfill.json");
    env.run(&backfill_args(&[
        "--checkpoint",
        backfill.to_str().unwrap(),
    ]))
    .assert_code(0);
    let run = check(&backfill);
    run.assert_code(2);
    assert!(run.stderr.contains("different job"), "{}", run.stderr);
}

#[test]
fn a_job_up_to_now_run_again_at_once_is_complete_not_in_the_future() {
    let env = Env::new(events(100, 303), WebhookConfig::default());
    let args = [
        "backfill",
        "--start",
        "-1d",
        "--end",
        "now",
        "--progress",
        "never",
    ];
    env.run(&args).assert_code(0);
    // At once, within the same second of PostHog's clock (whole seconds, while the job's end
    // has microseconds): the job is complete; its end is not checked against the clock again.
    for _ in 0..3 {
        let again = env.run(&args);
        again.assert_code(0);
        assert!(
            again.stderr.contains("already complete"),
            "{}",
            again.stderr
        );
    }
}

#[test]
fn the_run_that_finishes_a_job_exits_3_for_events_an_earlier_run_set_aside() {
    let env = Env::new(
        events(10, 304),
        WebhookConfig {
            reject_containing: vec!["poison".into()],
            stall_after: Some(10),
            ..WebhookConfig::default()
        },
    );
    let mut text = String::new();
    for i in 0..1_000 {
        let name = if i == 4 { "poison" } else { "e" };
        text.push_str(&format!("{{\"uuid\":\"u{i}\",\"event\":\"{name}\"}}\n"));
    }
    let input = env.path("in.ndjson");
    std::fs::write(&input, text).unwrap();
    let dead = env.path("dead.ndjson");
    let args = [
        "send",
        input.to_str().unwrap(),
        "--dead-letter",
        dead.to_str().unwrap(),
        "--batch-size",
        "50",
        "--concurrency",
        "1",
        "--progress",
        "never",
    ];
    // The first run sets the poisoned event aside, then is killed while a batch hangs.
    env.kill_while_in_flight(&args);
    assert_eq!(std::fs::read_to_string(&dead).unwrap().lines().count(), 1);
    // The run that finishes the job set nothing aside itself, but the job did: exit 3.
    let run = env.run(&args);
    run.assert_code(3);
    assert!(
        run.stderr
            .contains("earlier runs of this job set 1 event aside (exit 3)"),
        "{}",
        run.stderr
    );
    // Run again, the job is complete: nothing to do, exit 0.
    env.run(&args).assert_code(0);
}
