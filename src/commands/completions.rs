//! `completions SHELL`: the completion script clap_complete generates from the command-line
//! definition, repaired where clap_complete 4.6 leaves a command's options uncompleted, so
//! that every command's options complete in bash, zsh and fish.

use crate::cli::Cli;
use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// The program's name, as the shell sees it.
const BIN: &str = "posthog-patterns";

/// The completion script for `shell`.
pub(crate) fn script(shell: Shell) -> String {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    let text = String::from_utf8(out).expect("clap_complete writes UTF-8");
    match shell {
        Shell::Bash => bash_arms_named_as_the_loop_names_them(&text),
        Shell::Fish => text + &fish_deeper_commands(&cmd),
        _ => text,
    }
}

/// clap_complete's bash script walks the words typed and names the state it reached by
/// escaping the binary name's `-` as `__` (`posthog__patterns__subcmd__backfill`), but labels
/// each command's `case` arm by escaping the whole path at once, the binary name's `-`
/// included, as `__subcmd__` (`posthog__subcmd__patterns__subcmd__backfill`). No arm matched,
/// so no option of any command completed (clap-rs/clap#6421). Relabel the arms as the loop
/// names them; a clap_complete that gets it right leaves nothing to relabel.
fn bash_arms_named_as_the_loop_names_them(script: &str) -> String {
    let as_arm = format!("{}__subcmd__", BIN.replace('-', "__subcmd__"));
    let as_loop = format!("{}__subcmd__", BIN.replace('-', "__"));
    script.replace(&as_arm, &as_loop)
}

/// clap_complete's fish script leaves out commands nested three deep (`config check sync`):
/// it assumes none take options. Adds each one's lines, generated for it as if it were a
/// first-level command, under a condition that names its whole path.
fn fish_deeper_commands(root: &Command) -> String {
    let fn_prefix = format!("__fish_{}_using_subcommand", BIN.replace('-', "_"));
    let mut out = String::new();
    let mut stack: Vec<(Vec<String>, &Command)> = vec![(vec![], root)];
    while let Some((path, cmd)) = stack.pop() {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut path = path.clone();
            path.push(sub.get_name().to_string());
            if path.len() >= 3 {
                let mut alone = Command::new(BIN).subcommand(sub.clone());
                let mut lines = Vec::new();
                clap_complete::generate(Shell::Fish, &mut alone, BIN, &mut lines);
                let first_level = format!("-n \"{fn_prefix} {}", sub.get_name());
                let whole_path = format!(
                    "-n \"{fn_prefix} {}; and __fish_seen_subcommand_from {}",
                    path[0],
                    path[1..].join("; and __fish_seen_subcommand_from ")
                );
                // One `complete` command may span lines (a value's help with a newline).
                let text = String::from_utf8_lossy(&lines);
                for entry in text.split("\ncomplete ").skip(1) {
                    let ours = entry.contains(&format!("{first_level}\""))
                        || entry.contains(&format!("{first_level};"));
                    if ours {
                        out.push_str("complete ");
                        out.push_str(
                            entry
                                .trim_end()
                                .replacen(&first_level, &whole_path, 1)
                                .as_str(),
                        );
                        out.push('\n');
                    }
                }
            }
            stack.push((path, sub));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every state the bash script's loop can reach has a `case` arm: otherwise that
    /// command's options would not complete.
    #[test]
    fn every_bash_state_has_an_arm() {
        let script = script(Shell::Bash);
        let states: Vec<&str> = script
            .lines()
            .filter_map(|l| l.trim().strip_prefix("cmd=\""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|s| !s.is_empty())
            .collect();
        assert!(states.len() > 10, "{states:?}");
        for state in states {
            assert!(
                script.lines().any(|l| l.trim() == format!("{state})")),
                "no arm for {state}"
            );
        }
    }

    #[test]
    fn fish_completes_the_options_of_config_check_commands() {
        let script = script(Shell::Fish);
        assert!(
            script.lines().any(|l| l.contains(
                "__fish_posthog_patterns_using_subcommand config; and __fish_seen_subcommand_from check; and __fish_seen_subcommand_from sync\""
            ) && l.contains("-l lookback")),
            "{script}"
        );
    }
}
