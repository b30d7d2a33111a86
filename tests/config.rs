//! `--config` files, their precedence, `config check`, completions and the man page.

mod common;

use common::*;
use posthog_patterns_standin::WebhookConfig;

const WEBHOOK_SECRET: &str = "wh-standin-secret-token-5f1e";

#[test]
fn precedence_is_flag_then_environment_then_config_file_then_default() {
    let env = Env::new(events(1_000, 71), WebhookConfig::default());
    let config = env.path("pp.toml");
    std::fs::write(
        &config,
        "project = 999999\nbatch_size = 100\nstart = \"2024-03-01\"\nend = \"2024-03-08\"\nprogress = \"never\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // POSTHOG_PROJECT_ID (environment) beats `project` in the file; `batch_size` comes from
    // the file (over the default 1000); the dates come from the file.
    env.run(&["backfill", "--config", config]).assert_code(0);
    let expected = env.assert_exactly_once(in_range);
    assert_eq!(
        env.webhook.with_state(|s| s.accepted_batches),
        expected.div_ceil(100)
    );

    // A flag beats the file.
    env.run(&[
        "backfill",
        "--config",
        config,
        "--restart",
        "--batch-size",
        "500",
    ])
    .assert_code(0);
    let batches = env.webhook.with_state(|s| s.accepted_batches);
    assert_eq!(batches, expected.div_ceil(100) + expected.div_ceil(500));

    // Without the environment variable, the file's project is used (and is wrong here).
    let run = finish(
        env.command(&["backfill", "--config", config, "--restart"])
            .env_remove("POSTHOG_PROJECT_ID")
            .output()
            .unwrap(),
    );
    run.assert_code(2);
    assert!(run.stderr.contains("no project 999999"), "{}", run.stderr);
}

#[test]
fn a_config_file_with_an_unknown_key_or_bad_value_is_a_usage_error() {
    let env = Env::new(vec![], WebhookConfig::default());
    let config = env.path("bad.toml");
    std::fs::write(&config, "hots = \"https://eu.posthog.com\"\n").unwrap();
    let run = env.run(&["sync", "--config", config.to_str().unwrap()]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("unknown field `hots`"),
        "{}",
        run.stderr
    );
    std::fs::write(&config, "lag = \"soon\"\n").unwrap();
    let run = env.run(&["sync", "--config", config.to_str().unwrap()]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("`lag`") && run.stderr.contains("15m"),
        "{}",
        run.stderr
    );
}

#[test]
fn config_check_shows_resolved_settings_without_secrets_and_estimates_the_run() {
    let env = Env::new(events(3_000, 72), WebhookConfig::default());
    let run = env.run(&[
        "config",
        "check",
        "backfill",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "--page-size",
        "1000",
    ]);
    run.assert_code(0);
    assert!(run.stdout.contains("settings OK"), "{}", run.stdout);
    assert!(run.stdout.contains("about 3,002"), "{}", run.stdout);
    assert!(
        run.stdout.contains("about 5 to PostHog, 4 to the webhook"),
        "{}",
        run.stdout
    );
    let key = env.posthog.config().api_key;
    assert!(
        !run.stdout.contains(&key) && !run.stdout.contains(WEBHOOK_SECRET),
        "{}",
        run.stdout
    );
    assert!(env.received().is_empty(), "nothing sent");

    let run = env.run(&["config", "check", "sync"]);
    run.assert_code(1);
    assert!(run.stderr.contains("needs --start"), "{}", run.stderr);
}

#[test]
fn completions_and_man_page_are_generated_from_the_command_line_definition() {
    let env = Env::new(vec![], WebhookConfig::default());
    let run = env.run(&["completions", "bash"]);
    run.assert_code(0);
    assert!(run.stdout.contains("backfill") && run.stdout.contains("--webhook-url"));
    let run = env.run(&["man"]);
    run.assert_code(0);
    assert!(
        run.stdout.starts_with(".ie") || run.stdout.contains(".TH"),
        "{}",
        &run.stdout[..200.min(run.stdout.len())]
    );
}

/// The commands a key applies to, each as it would run and under `config check`.
fn commands_for(key: &str) -> Vec<Vec<&'static str>> {
    let backfill = vec!["backfill", "--start", "2024-03-01", "--end", "2024-03-08"];
    let sync = vec!["sync", "--start", "2024-03-01"];
    let export = vec!["export", "--start", "2024-03-01", "--end", "2024-03-08"];
    let send = vec!["send", "in.ndjson"];
    let runs = match key {
        "page_size" => vec![backfill, sync, export],
        "batch_size" | "concurrency" | "max_batch_bytes" => vec![backfill, sync, send],
        "max_line_bytes" => vec![send],
        "lag" | "lookback" => vec![sync],
        "max_wait" | "http_timeout" => vec![backfill, sync, export, send],
        other => panic!("no commands listed for {other}"),
    };
    runs.iter()
        .flat_map(|run| {
            let mut checked = vec!["config", "check"];
            checked.extend(run);
            [run.clone(), checked]
        })
        .collect()
}

#[test]
fn config_file_values_outside_the_flags_ranges_are_usage_errors_naming_the_key() {
    let env = Env::new(events(200, 73), WebhookConfig::default());
    std::fs::write(env.path("in.ndjson"), "{\"event\":\"x\"}\n").unwrap();
    let config = env.path("pp.toml");
    let config_arg = config.to_str().unwrap();
    let cases = [
        ("page_size", "60000"),
        ("page_size", "0"),
        ("batch_size", "0"),
        ("concurrency", "0"),
        ("max_line_bytes", "18446744073709551615"),
        ("max_batch_bytes", "\"100000MiB\""),
        ("lag", "\"1000000000d\""),
        ("lookback", "\"100000000d\""),
        ("max_wait", "\"1000000000d\""),
        ("http_timeout", "\"1000000000d\""),
    ];
    let mut checked = 0;
    for (key, value) in cases {
        std::fs::write(&config, format!("{key} = {value}\n")).unwrap();
        for args in commands_for(key) {
            let mut argv = vec!["--config", config_arg, "--progress", "never"];
            if args[0] == "config" {
                argv.truncate(2);
            }
            let mut full: Vec<&str> = args.clone();
            full.extend(&argv);
            let run = finish(
                env.command(&full)
                    .current_dir(env.dir.path())
                    .output()
                    .unwrap(),
            );
            assert_eq!(
                run.code, 2,
                "{key} = {value}, {args:?}: exit code; stderr:\n{}",
                run.stderr
            );
            let names_range =
                run.stderr.contains("out of range") || run.stderr.contains("is not in");
            assert!(
                run.stderr.contains(&format!("`{key}`")) && names_range,
                "{key} = {value}, {args:?}: the error names the key and the range:\n{}",
                run.stderr
            );
            assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
            checked += 1;
        }
    }
    assert!(env.received().is_empty(), "nothing was sent");
    assert!(!env.path("state").exists(), "no state was written");
    println!("{checked} out-of-range config-file values refused with exit 2");
}

#[test]
fn huge_sizes_and_durations_on_the_command_line_are_usage_errors_naming_the_flag() {
    let env = Env::new(events(200, 74), WebhookConfig::default());
    let input = env.path("in.ndjson");
    std::fs::write(&input, "{\"event\":\"x\"}\n").unwrap();
    let input = input.to_str().unwrap();
    let cases: [(&str, Vec<&str>); 5] = [
        (
            "--max-line-bytes",
            vec!["send", input, "--max-line-bytes", "18446744073709551615"],
        ),
        (
            "--max-batch-bytes",
            vec!["send", input, "--max-batch-bytes", "18446744073709551615"],
        ),
        (
            "--lag",
            vec!["sync", "--start", "2024-03-01", "--lag", "1000000000d"],
        ),
        (
            "--lookback",
            vec!["sync", "--start", "2024-03-01", "--lookback", "100000000d"],
        ),
        (
            "--http-timeout",
            vec![
                "backfill",
                "--start",
                "2024-03-01",
                "--end",
                "2024-03-08",
                "--http-timeout",
                "18446744073709551615ms",
            ],
        ),
    ];
    for (flag, args) in cases {
        for config_check in [false, true] {
            let mut argv = if config_check {
                vec!["config", "check"]
            } else {
                vec![]
            };
            argv.extend(&args);
            let run = env.run(&argv);
            assert_eq!(run.code, 2, "{argv:?}: exit code; stderr:\n{}", run.stderr);
            assert!(
                run.stderr.contains(flag) && run.stderr.contains("out of range"),
                "{argv:?}: the error names the flag and its range:\n{}",
                run.stderr
            );
        }
    }
    // The demo's event count sizes a vector: no overflow either.
    let demo = env.run(&["demo", "--events", "18446744073709551615"]);
    demo.assert_code(2);
    assert!(
        demo.stderr.contains("--events") && demo.stderr.contains("is not in 0..=10000000"),
        "{}",
        demo.stderr
    );
    assert!(
        env.received().is_empty(),
        "send read nothing and sent nothing"
    );
    assert!(!env.path("state").exists(), "no job was marked complete");
}
