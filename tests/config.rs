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
