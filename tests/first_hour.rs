//! What a data engineer meets in the first hour: checks that check, fast failures on
//! permanent misconfiguration, records of every run, and the small things that trip a new
//! user.

mod common;

use common::*;
use posthog_patterns_standin::WebhookConfig;

#[test]
fn export_to_dash_writes_stdout_like_no_output() {
    let env = Env::new(events(300, 190), WebhookConfig::default());
    let args = ["export", "--start", "2024-03-01", "--end", "2024-03-08", "--progress", "never"];
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
