//! `export` and `send`: NDJSON out and in, composing with pipes and files.

mod common;

use common::*;
use posthog_patterns_standin::{Fault, WebhookConfig};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// `export` of the standard range to a pipe.
fn spawn_export(env: &Env) -> std::process::Child {
    env.command(&[
        "export",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "--progress",
        "never",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

#[test]
fn export_piped_into_send_delivers_the_same_events_as_backfill() {
    let data = events(3_000, 61);
    let by_backfill = Env::new(data.clone(), WebhookConfig::default());
    by_backfill.run(&backfill_args(&[])).assert_code(0);

    let env = Env::new(data, WebhookConfig::default());
    let mut export = spawn_export(&env);
    let send = env
        .command(&["send", "--progress", "never"])
        .stdin(export.stdout.take().unwrap())
        .output()
        .unwrap();
    let export = export.wait_with_output().unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    finish(send).assert_code(0);
    env.assert_exactly_once(in_range);
    // Same events, same bytes.
    let a = sorted(by_backfill.webhook.with_state(|s| s.events.clone()));
    let b = sorted(env.webhook.with_state(|s| s.events.clone()));
    assert_eq!(a.len(), b.len());
    assert!(a == b, "the posted objects are identical");
}

#[test]
fn a_closed_stdout_ends_export_quietly() {
    let env = Env::new(events(20_000, 62), WebhookConfig::default());
    let mut export = spawn_export(&env);
    let mut out = export.stdout.take().unwrap();
    let mut first = [0u8; 100];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    drop(out); // like `| head -c 100`
    let done = finish(export.wait_with_output().unwrap());
    done.assert_code(0);
    assert!(!done.stderr.contains("error"), "{}", done.stderr);
}

#[test]
fn export_to_a_gzip_file_resumes_without_losing_or_tearing_lines() {
    let env = Env::new(events(6_000, 63), WebhookConfig::default());
    let file = env.path("out.ndjson.gz");
    let file_arg = file.to_str().unwrap();
    let args = [
        "export",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "--progress",
        "never",
        "--output",
        file_arg,
    ];
    // PostHog fails for good after a few pages: the run stops with part of the file written.
    for n in 3..40 {
        env.posthog.fault_at(n, Fault::status(503));
    }
    let mut first: Vec<&str> = args.to_vec();
    // One window at a time, so that requests 3 and on are the pages after the first.
    first.extend([
        "--page-size",
        "500",
        "--max-retries",
        "0",
        "--fetch-concurrency",
        "1",
    ]);
    finish(env.command(&first).output().unwrap()).assert_code(75);
    let partial = std::fs::metadata(&file).unwrap().len();
    assert!(partial > 0);
    // A torn last line, as if the process died mid-write.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(b"\x1f\x8b\x08garbage")
        .unwrap();

    let mut again: Vec<&str> = args.to_vec();
    again.extend(["--page-size", "500"]);
    env.posthog.clear_faults();
    let run = finish(env.command(&again).output().unwrap());
    run.assert_code(0);
    assert!(run.stderr.contains("resuming"), "{}", run.stderr);

    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(&file).unwrap()),
        &mut text,
    )
    .unwrap();
    let mut uuids: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("every line is whole")["uuid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let n = uuids.len();
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), n, "no line twice");
    let expected = env.posthog.events().into_iter().filter(in_range).count();
    assert_eq!(n, expected);
}

#[test]
fn export_refuses_to_overwrite_a_file_it_did_not_write() {
    let env = Env::new(events(10, 64), WebhookConfig::default());
    let file = env.path("existing.ndjson");
    std::fs::write(&file, "precious\n").unwrap();
    let run = env.run(&[
        "export",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "--output",
        file.to_str().unwrap(),
    ]);
    run.assert_code(2);
    assert!(run.stderr.contains("--restart"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious\n");
}

fn ndjson(n: usize, bad_at: Option<usize>) -> String {
    let mut s = String::new();
    for i in 1..=n {
        if Some(i) == bad_at {
            s.push_str("{\"uuid\": \"broken\", \n");
        } else {
            s.push_str(&format!(
                "{{\"uuid\":\"u{i}\",\"event\":\"{}\",\"n\":{i}}}\n",
                if i % 3 == 0 { "skip_me" } else { "keep" }
            ));
        }
        if i % 100 == 0 {
            s.push('\n'); // blank lines are ignored
        }
    }
    s
}

#[test]
fn a_bad_line_stops_send_with_its_line_number_after_posting_everything_before_it() {
    let env = Env::new(vec![], WebhookConfig::default());
    let file = env.path("in.ndjson");
    std::fs::write(&file, ndjson(1_000, Some(501))).unwrap();
    let run = env.run(&[
        "send",
        "--progress",
        "never",
        "--batch-size",
        "64",
        file.to_str().unwrap(),
    ]);
    run.assert_code(1);
    // 500 good lines and 5 blank ones come before it.
    assert!(
        run.stderr.contains("in.ndjson, line 506: not valid JSON"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("{\"uuid\": \"broken\""),
        "{}",
        run.stderr
    );
    let got = env.received();
    assert_eq!(
        got.len(),
        500,
        "everything before the bad line, nothing after"
    );
    assert!((1..=500).all(|i| got.get(&format!("u{i}")) == Some(&1)));
}

#[test]
fn on_invalid_skip_sets_bad_lines_aside_and_exits_3() {
    let env = Env::new(vec![], WebhookConfig::default());
    let file = env.path("in.ndjson");
    std::fs::write(&file, ndjson(300, Some(150))).unwrap();
    let dead = env.path("dead.ndjson");
    let run = env.run(&[
        "send",
        "--progress",
        "never",
        "--on-invalid",
        "skip",
        "--dead-letter",
        dead.to_str().unwrap(),
        "--exclude-event",
        "skip_me",
        file.to_str().unwrap(),
    ]);
    run.assert_code(3);
    let dead_lines = std::fs::read_to_string(&dead).unwrap();
    assert!(
        dead_lines.contains("\"line\":151") && dead_lines.contains("broken"),
        "{dead_lines}"
    );
    // The filter applies to objects with an `event` field.
    assert_eq!(
        env.received().len(),
        (1..=300).filter(|i| *i != 150 && i % 3 != 0).count()
    );
    assert!(
        run.stderr.contains("skipped  1 line (not JSON objects)"),
        "{}",
        run.stderr
    );
}

#[test]
fn send_resumes_a_file_after_being_killed() {
    let env = Env::new(
        vec![],
        WebhookConfig {
            stall_after: Some(4),
            ..WebhookConfig::default()
        },
    );
    let file = env.path("big.ndjson.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&file).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(ndjson(5_000, None).as_bytes()).unwrap();
    gz.finish().unwrap();
    let args = [
        "send",
        "--progress",
        "never",
        "--batch-size",
        "200",
        "--concurrency",
        "1",
        file.to_str().unwrap(),
    ];
    env.kill_while_in_flight(&args);
    let run = env.run(&args);
    run.assert_code(0);
    assert!(run.stderr.contains("resuming"), "{}", run.stderr);
    let got = env.received();
    assert_eq!(got.len(), 5_000);
    assert!(
        got.values().all(|n| *n == 1),
        "acknowledged lines are not sent again"
    );
    let again = env.run(&args);
    again.assert_code(0);
    assert!(
        again.stderr.contains("already complete"),
        "{}",
        again.stderr
    );
}

#[test]
fn a_failure_reading_stdin_says_how_many_lines_were_acknowledged() {
    let env = Env::new(vec![], WebhookConfig::default());
    for n in 3..100 {
        env.webhook.fault_at(n, Fault::status(400));
    }
    let mut child = env
        .command(&[
            "send",
            "--progress",
            "never",
            "--batch-size",
            "100",
            "--concurrency",
            "1",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ndjson(1_000, None).as_bytes())
        .unwrap();
    let run = finish(child.wait_with_output().unwrap());
    run.assert_code(1);
    // Three batches of 100 lines (plus 3 blank lines) were acknowledged.
    assert!(
        run.stderr.contains("302 lines of stdin were acknowledged"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("tail -n +303"), "{}", run.stderr);
    assert_eq!(env.received().len(), 300);
}

#[test]
fn a_line_longer_than_the_limit_is_an_error_not_an_out_of_memory() {
    let env = Env::new(vec![], WebhookConfig::default());
    let file = env.path("long.ndjson");
    let mut text = ndjson(10, None);
    text.push_str(&format!("{{\"big\":\"{}\"}}\n", "x".repeat(2_000_000)));
    std::fs::write(&file, text).unwrap();
    let run = env.run(&[
        "send",
        "--progress",
        "never",
        "--max-line-bytes",
        "1MiB",
        file.to_str().unwrap(),
    ]);
    run.assert_code(1);
    assert!(
        run.stderr
            .contains("line 11: line is longer than --max-line-bytes"),
        "{}",
        run.stderr
    );
    assert_eq!(env.received().len(), 10);
}

#[test]
fn sigterm_stops_send_even_while_it_waits_for_stdin() {
    let env = Env::new(vec![], WebhookConfig::default());
    let mut child = env
        .command(&["send", "--progress", "never", "--batch-size", "100"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(ndjson(10, None).as_bytes()).unwrap();
    stdin.flush().unwrap();
    // A partial batch (10 of 100) is posted once no more input comes for a moment: the
    // process is running, and waits for more input.
    assert!(
        env.webhook
            .wait_until(Duration::from_secs(60), |s| s.events.len() == 10)
    );
    let run = sigterm(child);
    run.assert_code(130);
    // The webhook has the batch, but its answer may not have reached the process before the
    // signal: either count is honest, and the hint names the line to resume from.
    assert!(
        run.stderr.contains(
            "10 lines of stdin were acknowledged; to send the rest, feed the same input again from its line 11 on: ... | tail -n +11 |"
        ) || run
            .stderr
            .contains("0 lines of stdin were acknowledged; to send the rest, feed the same input again from its line 1 on"),
        "{}",
        run.stderr
    );
    drop(stdin);
}

#[test]
fn export_refuses_an_end_later_than_posthogs_clock_to_a_file_and_to_stdout() {
    let env = Env::new(events(100, 65), WebhookConfig::default());
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let file = env.path("future.ndjson");
    let base = [
        "export",
        "--start",
        "2024-03-01",
        "--end",
        tomorrow.as_str(),
        "--progress",
        "never",
    ];
    let mut to_file = base.to_vec();
    to_file.extend(["--output", file.to_str().unwrap()]);
    for args in [to_file, base.to_vec()] {
        let run = env.run(&args);
        run.assert_code(2);
        assert!(
            run.stderr.contains("`export` reads by event time")
                && run.stderr.contains("up to --end")
                && run.stderr.contains("sync"),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "nothing exported");
    }
    assert!(!file.exists(), "no output file");
    let state = std::fs::read_dir(env.path("state"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(state, 0, "no state marked");
}

/// `export` of the standard range into `file`, with extra arguments.
fn export_to<'a>(file: &'a std::path::Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "export",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "--progress",
        "never",
        "--output",
        file.to_str().unwrap(),
    ];
    v.extend_from_slice(extra);
    v
}

/// The uuids of an exported NDJSON file; every line must be a whole event (no NUL padding,
/// no foreign bytes).
fn exported_uuids(file: &std::path::Path) -> Vec<String> {
    let text = std::fs::read(file).unwrap();
    assert!(!text.contains(&0), "no NUL bytes in {}", file.display());
    String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("a whole event per line ({e}): {l:.80}"))["uuid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Asserts that `file` holds every event of the standard range exactly once; returns how many.
#[track_caller]
fn assert_exported_exactly_once(env: &Env, file: &std::path::Path) -> usize {
    let uuids = exported_uuids(file);
    let unique: std::collections::HashSet<&String> = uuids.iter().collect();
    assert_eq!(unique.len(), uuids.len(), "no event twice");
    let expected: std::collections::HashSet<String> = env
        .posthog
        .events()
        .into_iter()
        .filter(in_range)
        .map(|e| e.uuid)
        .collect();
    assert_eq!(unique.len(), expected.len(), "every event of the range");
    assert!(uuids.iter().all(|u| expected.contains(u)), "nothing else");
    uuids.len()
}

/// An export to `file` that PostHog stops after its first page: part of the file is written
/// and checkpointed.
fn export_partly(env: &Env, file: &std::path::Path) -> u64 {
    for n in 3..40 {
        env.posthog.fault_at(n, Fault::status(503));
    }
    // One window at a time, so that "after its first page" means request 3.
    let args = export_to(
        file,
        &[
            "--page-size",
            "2000",
            "--max-retries",
            "0",
            "--fetch-concurrency",
            "1",
        ],
    );
    finish(env.command(&args).output().unwrap()).assert_code(75);
    env.posthog.clear_faults();
    let written = std::fs::metadata(file).unwrap().len();
    assert!(written > 0, "part of the file was written");
    written
}

#[test]
fn export_starts_again_when_its_output_was_deleted_shortened_or_changed_instead_of_padding_it() {
    type Damage = fn(&std::path::Path, u64);
    let damages: [(&str, Damage); 3] = [
        ("deleted", |f, _| std::fs::remove_file(f).unwrap()),
        ("shortened", |f, len| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .unwrap()
                .set_len(len / 3)
                .unwrap()
        }),
        ("changed", |f, len| {
            std::fs::write(f, vec![b'x'; len as usize]).unwrap()
        }),
    ];
    for (what, damage) in damages {
        let env = Env::new(events(8_000, 66), WebhookConfig::default());
        let file = env.path("out.ndjson");
        let written = export_partly(&env, &file);
        damage(&file, written);

        let run = env.run(&export_to(&file, &[]));
        run.assert_code(0);
        assert!(
            run.stderr
                .contains("starting the export again from the beginning of the range"),
            "{what}: {}",
            run.stderr
        );
        let n = assert_exported_exactly_once(&env, &file);
        println!(
            "output {what} after {written} bytes: export started again, {n} events once each; log: {}",
            run.stderr
                .lines()
                .find(|l| l.contains("starting"))
                .unwrap_or_default()
        );
    }
}

#[test]
fn a_complete_export_whose_file_was_deleted_exports_again_instead_of_claiming_completeness() {
    let env = Env::new(events(3_000, 67), WebhookConfig::default());
    let file = env.path("done.ndjson");
    env.run(&export_to(&file, &[])).assert_code(0);
    std::fs::remove_file(&file).unwrap();
    let run = env.run(&export_to(&file, &[]));
    run.assert_code(0);
    assert!(!run.stderr.contains("already complete"), "{}", run.stderr);
    assert!(run.stderr.contains("is missing"), "{}", run.stderr);
    let n = assert_exported_exactly_once(&env, &file);
    println!("complete export, file deleted: exported again, {n} events");
}

#[test]
fn an_export_whose_first_write_failed_is_resumed_by_running_it_again() {
    let env = Env::new(events(8_000, 68), WebhookConfig::default());
    let file = env.path("full-disk.ndjson");
    // Files may grow to 2 KiB (ulimit -f counts 512-byte blocks): enough for the state file,
    // not for the first batch. With SIGXFSZ ignored the write fails as on a full disk.
    let first = finish(
        env.command_in_shell("trap '' XFSZ; ulimit -f 4", &export_to(&file, &[]))
            .output()
            .unwrap(),
    );
    first.assert_code(1);
    assert!(first.stderr.contains("cannot write"), "{}", first.stderr);
    assert!(
        std::fs::metadata(&file).unwrap().len() > 0,
        "a partial first batch"
    );

    let run = env.run(&export_to(&file, &[]));
    run.assert_code(0);
    let n = assert_exported_exactly_once(&env, &file);
    println!(
        "first write failed ({}); run again: {n} events once each",
        first.stderr.lines().last().unwrap_or_default()
    );
}

/// NDJSON lines `{"uuid":"<prefix><i>",...}` for `i` in `range`.
fn lines_of(prefix: &str, range: std::ops::Range<usize>) -> String {
    range
        .map(|i| format!("{{\"uuid\":\"{prefix}{i}\",\"event\":\"e\",\"n\":{i}}}\n"))
        .collect()
}

fn append(file: &std::path::Path, text: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .unwrap()
        .write_all(text)
        .unwrap();
}

/// Asserts that the webhook received exactly the uuids `<prefix><i>` of these ranges, each once.
#[track_caller]
fn assert_received_once(env: &Env, expected: &[(&str, std::ops::Range<usize>)]) -> usize {
    let want: std::collections::HashSet<String> = expected
        .iter()
        .flat_map(|(p, r)| r.clone().map(move |i| format!("{p}{i}")))
        .collect();
    let got = env.received();
    let missing = want.iter().filter(|u| !got.contains_key(*u)).count();
    let stray = got.keys().filter(|u| !want.contains(*u)).count();
    let repeats: usize = got.values().map(|n| n - 1).sum();
    assert_eq!(
        (missing, stray, repeats),
        (0, 0, 0),
        "missing, unexpected, repeated"
    );
    want.len()
}

fn send_args(file: &std::path::Path) -> Vec<&str> {
    vec!["send", "--progress", "never", file.to_str().unwrap()]
}

#[test]
fn send_sends_what_was_appended_to_a_file_since_the_last_run() {
    // A cron line `send /data/daily.ndjson`: the file grows every day.
    let env = Env::new(vec![], WebhookConfig::default());
    let file = env.path("daily.ndjson");
    std::fs::write(&file, lines_of("day1-", 0..300)).unwrap();
    env.run(&send_args(&file)).assert_code(0);

    append(&file, lines_of("day2-", 0..200).as_bytes());
    let run = env.run(&send_args(&file));
    run.assert_code(0);
    assert!(
        run.stderr.contains("appended") && run.stderr.contains("after line 300"),
        "{}",
        run.stderr
    );
    let n = assert_received_once(&env, &[("day1-", 0..300), ("day2-", 0..200)]);

    let again = env.run(&send_args(&file));
    again.assert_code(0);
    assert!(again.stderr.contains("nothing new"), "{}", again.stderr);
    assert_received_once(&env, &[("day1-", 0..300), ("day2-", 0..200)]);
    println!(
        "appended file: {n} lines once each; {}",
        run.stderr
            .lines()
            .find(|l| l.contains("appended"))
            .unwrap_or_default()
            .trim()
    );
}

#[test]
fn send_sends_a_replaced_file_from_its_first_line_and_says_so() {
    let env = Env::new(vec![], WebhookConfig::default());
    let file = env.path("daily.ndjson");
    std::fs::write(&file, lines_of("a", 0..300)).unwrap();
    env.run(&send_args(&file)).assert_code(0);

    // Replaced by a longer file (moved into place, as most tools write files).
    let next = env.path("next.ndjson");
    std::fs::write(&next, lines_of("b", 0..500)).unwrap();
    std::fs::rename(&next, &file).unwrap();
    let run = env.run(&send_args(&file));
    run.assert_code(0);
    assert!(
        run.stderr.contains("replaced") && run.stderr.contains("sent from line 1"),
        "{}",
        run.stderr
    );
    assert_received_once(&env, &[("a", 0..300), ("b", 0..500)]);

    // Rewritten in place with fewer lines.
    std::fs::write(&file, lines_of("c", 0..40)).unwrap();
    let short = env.run(&send_args(&file));
    short.assert_code(0);
    assert!(short.stderr.contains("shorter"), "{}", short.stderr);
    let n = assert_received_once(&env, &[("a", 0..300), ("b", 0..500), ("c", 0..40)]);
    println!(
        "replaced file: {n} lines once each; {}",
        run.stderr
            .lines()
            .find(|l| l.contains("replaced "))
            .unwrap_or_default()
            .trim()
    );
}

#[test]
fn an_interrupted_send_whose_file_was_replaced_starts_the_new_file_at_line_one_not_mid_line() {
    let env = Env::new(
        vec![],
        WebhookConfig {
            stall_after: Some(4),
            ..WebhookConfig::default()
        },
    );
    let file = env.path("big.ndjson");
    std::fs::write(&file, lines_of("old", 0..5_000)).unwrap();
    let mut args = send_args(&file);
    args.extend(["--batch-size", "200", "--concurrency", "1"]);
    env.kill_while_in_flight(&args);
    let before: std::collections::HashSet<String> = env.received().into_keys().collect();
    assert!(
        !before.is_empty() && before.len() < 5_000,
        "killed part way"
    );

    // A longer file with other lines (and other line lengths) takes its place.
    std::fs::write(&file, lines_of("new-longer-name-", 0..8_000)).unwrap();
    let run = env.run(&args);
    run.assert_code(0);
    assert!(run.stderr.contains("was replaced"), "{}", run.stderr);
    assert!(
        run.stderr.contains("had been sent only up to line"),
        "says the old file's other lines were not sent: {}",
        run.stderr
    );
    let got = env.received();
    let new: Vec<&String> = got.keys().filter(|u| u.starts_with("new-")).collect();
    assert_eq!(new.len(), 8_000, "the new file from line 1");
    assert!(
        got.iter()
            .filter(|(u, _)| u.starts_with("new-"))
            .all(|(_, n)| *n == 1),
        "each new line once"
    );
    assert!(
        got.keys()
            .all(|u| u.starts_with("new-") || u.starts_with("old")),
        "no line cut in the middle"
    );
}

fn gzip_member(text: &str) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap()
}

#[test]
fn a_gzip_file_appended_to_sends_only_the_new_lines_and_a_recompressed_one_is_sent_again() {
    let env = Env::new(vec![], WebhookConfig::default());
    let file = env.path("events.ndjson.gz");
    std::fs::write(&file, gzip_member(&lines_of("g1-", 0..300))).unwrap();
    env.run(&send_args(&file)).assert_code(0);

    // `gzip -c more >> events.ndjson.gz`: a second member.
    append(&file, &gzip_member(&lines_of("g2-", 0..100)));
    let run = env.run(&send_args(&file));
    run.assert_code(0);
    assert!(run.stderr.contains("appended"), "{}", run.stderr);
    assert_received_once(&env, &[("g1-", 0..300), ("g2-", 0..100)]);
    let again = env.run(&send_args(&file));
    again.assert_code(0);
    assert!(again.stderr.contains("nothing new"), "{}", again.stderr);

    // Any change to the compressed bytes before the part read is a replacement.
    std::fs::write(&file, gzip_member(&lines_of("g3-", 0..50))).unwrap();
    let run = env.run(&send_args(&file));
    run.assert_code(0);
    assert!(run.stderr.contains("replaced"), "{}", run.stderr);
    assert_received_once(&env, &[("g1-", 0..300), ("g2-", 0..100), ("g3-", 0..50)]);
}

#[test]
fn a_send_state_without_file_identities_is_refused_rather_than_trusted() {
    let env = Env::new(vec![], WebhookConfig::default());
    let file = env.path("old.ndjson");
    std::fs::write(&file, lines_of("o", 0..20)).unwrap();
    let state = env.path("send-state.json");
    let mut args = send_args(&file);
    args.extend(["--checkpoint", state.to_str().unwrap()]);
    env.run(&args).assert_code(0);
    // The position as earlier versions wrote it: an offset, and nothing to check it against.
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    json["position"] = serde_json::json!({"file": 0, "offset": 100, "line": 5});
    std::fs::write(&state, serde_json::to_vec(&json).unwrap()).unwrap();
    append(&file, lines_of("p", 0..5).as_bytes());

    let run = env.run(&args);
    run.assert_code(2);
    assert!(
        run.stderr.contains("did not record which files it read")
            && run.stderr.contains("--restart"),
        "{}",
        run.stderr
    );
    args.push("--restart");
    env.run(&args).assert_code(0);
    assert_eq!(env.received().len(), 25);
}
