//! What a user sees of the command line itself: shell completions loaded into real shells,
//! the man pages, `--help`, and the messages of a wrong setting.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// The binary with a clean environment (no connection settings, no config file).
fn bare(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

fn run(args: &[&str]) -> Run {
    finish(bare(args).output().unwrap())
}

/// The completion script for `shell`, written to `dir/name`.
fn completion_script(shell: &str, dir: &Path, name: &str) -> std::path::PathBuf {
    let out = run(&["completions", shell]);
    out.assert_code(0);
    let path = dir.join(name);
    std::fs::write(&path, out.stdout).unwrap();
    path
}

fn has(shell: &str) -> bool {
    let found = Command::new(shell)
        .arg("-c")
        .arg("exit 0")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("note: {shell} is not installed; its completion test is skipped");
    }
    found
}

/// What bash offers for the last of `words`, as after pressing Tab: the script is sourced,
/// and the function it registered for `posthog-patterns` is called as bash calls it.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let driver = r#"
        source "$1" || exit 3
        spec=$(complete -p posthog-patterns) || exit 4
        fn=${spec##*-F }; fn=${fn%% *}
        shift
        COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
        COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
        "$fn" "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = finish(
        Command::new("bash")
            .args(["--norc", "--noprofile", "-c", driver, "bash"])
            .arg(script)
            .args(words)
            .output()
            .unwrap(),
    );
    out.assert_code(0);
    out.stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_the_options_of_every_command_despite_the_hyphenated_name() {
    let dir = tempfile::tempdir().unwrap();
    let script = completion_script("bash", dir.path(), "posthog-patterns.bash");
    let offered = bash_complete(&script, &["posthog-patterns", "backfill", "--so"]);
    println!("backfill --so: {offered:?}");
    assert_eq!(offered, ["--source"]);
    // Two levels down, and a command of another kind.
    let offered = bash_complete(
        &script,
        &["posthog-patterns", "config", "check", "sync", "--lo"],
    );
    println!("config check sync --lo: {offered:?}");
    assert!(offered.contains(&"--lookback".to_string()), "{offered:?}");
    let offered = bash_complete(&script, &["posthog-patterns", "send", "--on"]);
    assert_eq!(offered, ["--on-invalid"]);
    // Values of an option.
    let offered = bash_complete(&script, &["posthog-patterns", "export", "--source", "e"]);
    assert_eq!(offered, ["events"]);
}

/// What zsh offers for `line` + Tab: an interactive zsh on a pseudo-terminal (zpty) with
/// compinit and the script in its `fpath`; `compadd` prints each candidate.
fn zsh_complete(dir: &Path, line: &str) -> Vec<String> {
    std::fs::write(
        dir.join("init.zsh"),
        r#"
autoload -U compinit; compinit -u -D
compadd () {
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then
        builtin compadd "$@"
        return $?
    fi
    typeset -a hits
    builtin compadd -A hits "$@"
    local h
    for h in $hits; do print -r -- "<hit>$h</hit>"; done
}
_done() { print -r -- '<done>' }
zle -N _done
bindkey '^Xd' _done
print '<ready>'
"#,
    )
    .unwrap();
    // Each step waits for what the shell prints when it is ready for the next: typed-ahead
    // input could be discarded while zsh sets up its terminal.
    let driver = r#"
zmodload zsh/zpty
zpty z 'PS1="<prompt>" zsh -f -i'
zpty -r -m z out '*<prompt>*'
zpty -w z "fpath=($1 \$fpath); source $1/init.zsh"
zpty -r -m z out '*<ready>*'
zpty -w -n z "$2"$'\t\C-xd'
zpty -r -m z out '*<done>*'
zpty -d z
print -r -- "$out"
"#;
    // zpty waits for its pattern; `timeout` ends a run whose pattern never comes.
    let out = finish(
        Command::new("timeout")
            .args(["60", "zsh", "-f", "-c", driver, "zsh"])
            .arg(dir)
            .arg(line)
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    out.stdout
        .split("<hit>")
        .skip(1)
        .filter_map(|h| h.split_once("</hit>").map(|(hit, _)| hit.to_string()))
        .collect()
}

#[test]
fn zsh_completes_the_options_of_every_command() {
    if !has("zsh") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    completion_script("zsh", dir.path(), "_posthog-patterns");
    let offered = zsh_complete(dir.path(), "posthog-patterns backfill --so");
    println!("backfill --so: {offered:?}");
    assert!(offered.contains(&"--source".to_string()), "{offered:?}");
    let offered = zsh_complete(dir.path(), "posthog-patterns config check sync --lo");
    println!("config check sync --lo: {offered:?}");
    assert!(offered.contains(&"--lookback".to_string()), "{offered:?}");
}

/// What fish offers for `line` (`complete -C`), first column only.
fn fish_complete(script: &Path, line: &str) -> Vec<String> {
    let out = finish(
        Command::new("fish")
            .args(["--no-config", "-c"])
            .arg(format!(
                "source {} ; and complete -C '{line}'",
                script.display()
            ))
            .output()
            .unwrap(),
    );
    out.assert_code(0);
    assert!(out.stderr.is_empty(), "fish: {}", out.stderr);
    out.stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn fish_completes_the_options_of_every_command() {
    if !has("fish") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = completion_script("fish", dir.path(), "posthog-patterns.fish");
    let offered = fish_complete(&script, "posthog-patterns backfill --so");
    println!("backfill --so: {offered:?}");
    assert_eq!(offered, ["--source"]);
    let offered = fish_complete(&script, "posthog-patterns config check sync --lo");
    println!("config check sync --lo: {offered:?}");
    assert!(offered.contains(&"--lookback".to_string()), "{offered:?}");
}

/// The lines of `help` under `heading` (e.g. "Connection:"), up to the next heading.
fn section<'a>(help: &'a str, heading: &str) -> &'a str {
    let start = help
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no {heading} in:\n{help}"));
    let body = &help[start + heading.len() + 2..];
    // Under `--help`, a blank line also separates the options of a heading.
    let end = body
        .match_indices("\n\n")
        .map(|(i, _)| i)
        .find(|&i| !body[i + 2..].starts_with(' '))
        .unwrap_or(body.len());
    &body[..end]
}

#[test]
fn backfill_help_groups_options_under_headings_and_shows_the_range_in_the_usage_line() {
    let out = run(&["backfill", "--help"]);
    out.assert_code(0);
    let help = &out.stdout;
    println!("{}", help.lines().take(12).collect::<Vec<_>>().join("\n"));
    assert!(
        help.contains("Usage: posthog-patterns backfill [OPTIONS] --start <DATE> --end <DATE>"),
        "{help}"
    );
    for (heading, options) in [
        ("Range:", &["--start", "--end"][..]),
        (
            "Connection:",
            &[
                "--host",
                "--project",
                "--api-key-file",
                "--source",
                "--ca-cert",
            ],
        ),
        ("Webhook:", &["--webhook-url", "--dead-letter"]),
        (
            "Batching:",
            &[
                "--batch-size",
                "--max-batch-bytes",
                "--concurrency",
                "--page-size",
            ],
        ),
        (
            "Retries:",
            &["--max-retries", "--max-wait", "--http-timeout"],
        ),
        ("Output:", &["--quiet", "--progress", "--log-format"]),
    ] {
        let body = section(help, heading);
        for option in options {
            assert!(
                body.contains(option),
                "{option} not under {heading}:\n{body}"
            );
        }
    }
    assert!(!section(help, "Range:").contains("--host"), "{help}");
    // Not clap-required: a config file may hold them.
    let out = run(&["sync", "--help"]);
    assert!(
        out.stdout
            .contains("Usage: posthog-patterns sync [OPTIONS] [--start <DATE>]"),
        "{}",
        out.stdout
    );
    let out = run(&["export", "--help"]);
    assert!(
        out.stdout
            .contains("Usage: posthog-patterns export [OPTIONS] --start <DATE> --end <DATE>"),
        "{}",
        out.stdout
    );
}

#[test]
fn top_level_help_shows_an_example() {
    let out = run(&["--help"]);
    out.assert_code(0);
    let example = section(&out.stdout, "Example:");
    println!("{example}");
    assert!(
        example.contains("posthog-patterns backfill") && example.contains("--start 2024-01-01"),
        "{}",
        out.stdout
    );
}

#[test]
fn send_help_has_no_posthog_only_options() {
    let out = run(&["send", "--help"]);
    out.assert_code(0);
    for posthog_only in [
        "--max-requests-per-minute",
        "--max-requests-per-hour",
        "--host",
        "--project",
        "--api-key-file",
        "--source",
        "--page-size",
        "--max-response-size",
        "PostHog requests",
    ] {
        assert!(
            !out.stdout.contains(posthog_only),
            "{posthog_only} in send --help:\n{}",
            out.stdout
        );
    }
    // Not only hidden: refused.
    let out = run(&["send", "--max-requests-per-minute", "10"]);
    out.assert_code(2);
    assert!(out.stderr.contains("unexpected argument"), "{}", out.stderr);
}

#[test]
fn config_check_commands_describe_themselves() {
    // Each used to take the description of the last option group it flattens
    // ("What the run shows").
    for command in ["backfill", "sync", "export", "send"] {
        let out = run(&["config", "check", command, "--help"]);
        out.assert_code(0);
        let first = out.stdout.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("Check the settings of `{command}`")),
            "{first}"
        );
    }
}

#[test]
fn a_broken_config_file_does_not_break_completions_or_the_man_page() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "hots = \"https://eu.posthog.com\"\n").unwrap();
    let broken = broken.to_str().unwrap();
    for args in [&["completions", "bash"][..], &["man"]] {
        let out = finish(
            bare(args)
                .env("POSTHOG_PATTERNS_CONFIG", broken)
                .output()
                .unwrap(),
        );
        out.assert_code(0);
        let mut before = vec!["--config", broken];
        before.extend_from_slice(args);
        run(&before).assert_code(0);
    }
    // They take no --config of their own, and do not offer one.
    for command in ["completions", "man", "demo"] {
        let out = run(&[command, "--help"]);
        assert!(!out.stdout.contains("--config"), "{}", out.stdout);
    }
    let out = run(&["completions", "bash", "--config", broken]);
    out.assert_code(2);
    // The commands that take settings still read it, before or after the command.
    for args in [
        &["sync", "--config", broken][..],
        &["--config", broken, "sync"],
        &["config", "check", "--config", broken, "sync"],
        &["config", "check", "sync", "--config", broken],
    ] {
        let out = run(args);
        out.assert_code(2);
        assert!(
            out.stderr.contains("unknown field `hots`"),
            "{args:?}: {}",
            out.stderr
        );
        // A file named on the command line beats POSTHOG_PATTERNS_CONFIG.
        let missing = dir.path().join("missing.toml");
        let out = finish(
            bare(args)
                .env("POSTHOG_PATTERNS_CONFIG", &missing)
                .output()
                .unwrap(),
        );
        assert!(
            out.stderr.contains("unknown field `hots`"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

/// The pages named `NAME(1)` in a man page's text.
fn page_references(text: &str) -> Vec<String> {
    text.match_indices("(1)")
        .filter_map(|(end, _)| {
            let start = text[..end]
                .rfind(|c: char| !(c.is_ascii_lowercase() || c == '-'))
                .map_or(0, |i| i + 1);
            let name = &text[start..end];
            name.starts_with("posthog-patterns")
                .then(|| name.to_string())
        })
        .collect()
}

#[test]
fn man_writes_a_page_per_command_with_its_options_environment_and_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("man1");
    let out = run(&["man", "--output", man1.to_str().unwrap()]);
    out.assert_code(0);
    println!("{}", out.stderr.trim());
    let pages: &[(&str, &[&str])] = &[
        ("posthog-patterns", &["--config", "--version"]),
        (
            "posthog-patterns-backfill",
            &[
                "--source",
                "--start",
                "--end",
                "--webhook-url",
                "--batch-size",
            ],
        ),
        ("posthog-patterns-sync", &["--start", "--lookback", "--lag"]),
        ("posthog-patterns-export", &["--output", "--page-size"]),
        (
            "posthog-patterns-send",
            &["--on-invalid", "--max-line-bytes"],
        ),
        ("posthog-patterns-config-check", &["--config"]),
        ("posthog-patterns-completions", &["SHELL"]),
        ("posthog-patterns-man", &["--output"]),
        ("posthog-patterns-demo", &["--events"]),
    ];
    let mut written: Vec<String> = std::fs::read_dir(&man1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let mut expected: Vec<String> = pages.iter().map(|(name, _)| format!("{name}.1")).collect();
    expected.sort();
    assert_eq!(written, expected);
    for (name, options) in pages {
        // roff writes every '-' as '\-'.
        let text = std::fs::read_to_string(man1.join(format!("{name}.1")))
            .unwrap()
            .replace("\\-", "-");
        assert!(
            text.contains(&format!("\n.TH {} 1", name.to_uppercase())),
            "{name}: {}",
            &text[..200]
        );
        for option in *options {
            assert!(text.contains(option), "{name}: no {option}");
        }
        for section in [
            ".SH OPTIONS",
            ".SH ENVIRONMENT",
            ".SH \"EXIT STATUS\"",
            ".SH \"SEE ALSO\"",
        ] {
            assert!(text.contains(section), "{name}: no {section}");
        }
        let references = page_references(&text);
        assert!(!references.is_empty(), "{name} names no other page");
        for page in references {
            assert!(
                man1.join(format!("{page}.1")).exists(),
                "{name} names {page}(1), which does not exist"
            );
        }
    }
    let backfill = std::fs::read_to_string(man1.join("posthog-patterns-backfill.1"))
        .unwrap()
        .replace("\\-", "-");
    for expected in [
        "POSTHOG_API_KEY",
        "PATTERNS_WEBHOOK_URL",
        "POSTHOG_PATTERNS_STATE_DIR",
        "\\fB75\\fR",
        "\\fB130\\fR",
        ".SS Connection",
    ] {
        assert!(backfill.contains(expected), "backfill: no {expected}");
    }
    assert_eq!(
        page_references(&backfill),
        ["posthog-patterns", "posthog-patterns-config-check"]
    );
    let send = std::fs::read_to_string(man1.join("posthog-patterns-send.1"))
        .unwrap()
        .replace("\\-", "-");
    assert!(!send.contains("POSTHOG_API_KEY") && !send.contains("--max-requests-per-minute"));

    // Without --output: the program's page, to stdout.
    let out = run(&["man"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("\n.TH POSTHOG-PATTERNS 1"),
        "{}",
        &out.stdout[..200]
    );
}

#[test]
fn an_empty_api_key_file_is_named_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("key");
    std::fs::write(&empty, "\n").unwrap();
    let args = [
        "backfill",
        "--project",
        "12345",
        "--api-key-file",
        empty.to_str().unwrap(),
        "--start",
        "2024-01-01",
        "--end",
        "2024-02-01",
    ];
    let out = run(&args);
    out.assert_code(2);
    println!("{}", out.stderr.trim());
    // The error first, then what to do.
    assert!(
        out.stderr.starts_with(&format!(
            "error: the API key file {} (--api-key-file) is empty: it must hold a personal API key",
            empty.display()
        )),
        "{}",
        out.stderr
    );
    // An empty variable is not a missing one either.
    let out = finish(
        bare(&args[..3])
            .args(&args[5..])
            .env("POSTHOG_API_KEY", " ")
            .output()
            .unwrap(),
    );
    out.assert_code(2);
    println!("{}", out.stderr.trim());
    assert!(
        out.stderr
            .starts_with("error: POSTHOG_API_KEY is empty: set it to"),
        "{}",
        out.stderr
    );
}

#[test]
fn summaries_count_in_the_singular_and_the_plural() {
    // A handful of events: one batch, one webhook request.
    let env = Env::new(
        events(1, 91),
        posthog_patterns_standin::WebhookConfig::default(),
    );
    let run = env.run(&backfill_args(&[]));
    run.assert_code(0);
    let summary = run
        .stderr
        .lines()
        .skip_while(|l| !l.starts_with("backfill complete"))
        .collect::<Vec<_>>()
        .join("\n");
    println!("{summary}");
    assert!(
        summary.contains(" in 1 batch, 1 webhook request\n"),
        "{summary}"
    );
    assert!(summary.contains("over 1 run;"), "{summary}");
    let run = env.run(&["sync", "--start", "2024-03-01", "-v", "--progress", "never"]);
    run.assert_code(0);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("sync: "))
        .unwrap_or_default();
    println!("{line}");
    assert!(
        line.contains(", 1 webhook request, 0 retries)"),
        "{}",
        run.stderr
    );
}
