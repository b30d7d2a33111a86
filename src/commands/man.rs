//! `man`: the manual pages, made by clap_mangen from the command-line definition. One page for
//! the program and one per command (`posthog-patterns-backfill(1)`, ...), each with its
//! options under their headings, and the sections clap knows nothing of: ENVIRONMENT, EXIT
//! STATUS and SEE ALSO, which name only pages that exist.

use crate::cli::Cli;
use anyhow::Context;
use clap::{Command, CommandFactory};
use clap_mangen::roff::{Roff, bold, roman};
use std::collections::BTreeSet;
use std::path::Path;

/// The program's page, and its name in every other page's.
const PROGRAM: &str = "posthog-patterns";

/// What the roff crate puts at the top of everything it writes.
const APOSTROPHE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// The variables a command reads, each named with the option (by id) whose commands read it.
/// A unit test checks that every `env` of the command line is here.
const ENVIRONMENT: &[(&str, &str, &str)] = &[
    ("POSTHOG_HOST", "host", "The PostHog app host, as --host."),
    (
        "POSTHOG_PROJECT_ID",
        "project",
        "The project id, as --project.",
    ),
    (
        "POSTHOG_API_KEY",
        "api_key_file",
        "The personal API key (phx_..., with the query:read scope), when --api-key-file is not given.",
    ),
    (
        "PATTERNS_WEBHOOK_URL",
        "webhook_url",
        "The webhook, as --webhook-url. A secret: it is never printed.",
    ),
    (
        "POSTHOG_PATTERNS_CONFIG",
        "config",
        "The --config file, when none is named on the command line.",
    ),
    (
        "POSTHOG_PATTERNS_STATE_DIR",
        "checkpoint",
        "The directory of state files when --checkpoint is not given (otherwise $XDG_STATE_HOME/posthog-patterns, or ~/.local/state/posthog-patterns).",
    ),
    (
        "NO_COLOR",
        "progress",
        "When set, to any value, progress bars and messages are not coloured.",
    ),
];

/// The exit codes (docs/exit-codes.md), in short.
const EXIT_STATUS: &[(u8, &str)] = &[
    (
        0,
        "Success. For a command that moves events: every event was delivered, or the job was already complete.",
    ),
    (
        1,
        "Failure that retrying would not cure (a bad API key, a rejected batch without --dead-letter, a corrupt checkpoint, ...); the message says what to fix. Running the same command again resumes.",
    ),
    (
        2,
        "Usage: the command line, the environment or the --config file is wrong. Nothing was read or sent.",
    ),
    (
        3,
        "Finished, but the webhook rejected some events (they are in the --dead-letter file), or send --on-invalid skip set some lines aside.",
    ),
    (
        75,
        "Temporary failure: another run holds the state lock, a service kept failing after every retry or asked for a wait longer than --max-wait, or --max-run-time was reached. Run again later: it resumes.",
    ),
    (
        130,
        "Interrupted by Ctrl-C or SIGTERM. Run the same command again to resume.",
    ),
];

/// The exit codes a command can end with, and what each means for it.
fn exit_status_of(cmd: &Command) -> Vec<(u8, &'static str)> {
    let codes: &[u8] = match cmd.get_name() {
        "completions" | "man" => {
            return vec![
                (0, "Success."),
                (1, "The output could not be written."),
                (2, "Usage: the command line is wrong."),
            ];
        }
        "check" => &[0, 1, 2, 75],
        "export" | "demo" => &[0, 1, 2, 75, 130],
        _ => &[0, 1, 2, 3, 75, 130],
    };
    EXIT_STATUS
        .iter()
        .filter(|(code, _)| codes.contains(code))
        .copied()
        .collect()
}

/// One manual page: the command it documents, and its name (`posthog-patterns-config-check`).
pub(crate) struct Page {
    pub(crate) name: String,
    cmd: Command,
}

/// Every page: the program's, then one per command, in the order of `--help`. A command that
/// only groups others (`config`) has none; each of its commands has one.
pub(crate) fn pages() -> Vec<Page> {
    fn walk(cmd: &Command, out: &mut Vec<Page>) {
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            let only_groups = sub.has_subcommands()
                && sub
                    .get_arguments()
                    .all(|a| matches!(a.get_id().as_str(), "help" | "version"));
            if only_groups {
                walk(sub, out);
            } else {
                out.push(Page {
                    name: sub
                        .get_display_name()
                        .expect("a built command has a display name")
                        .to_string(),
                    cmd: sub.clone(),
                });
            }
        }
    }
    let mut root = Cli::command();
    root.build();
    let mut out = vec![Page {
        name: PROGRAM.to_string(),
        cmd: root.clone(),
    }];
    walk(&root, &mut out);
    out
}

impl Page {
    pub(crate) fn file_name(&self) -> String {
        format!("{}.1", self.name)
    }

    /// The page in roff. `all` is every page, for the references to the others.
    pub(crate) fn render(&self, all: &[Page]) -> String {
        let man = clap_mangen::Man::new(self.cmd.clone())
            .title(self.name.to_uppercase())
            .source(format!("{PROGRAM} {}", env!("CARGO_PKG_VERSION")))
            .manual(PROGRAM);
        let mut out = Vec::new();
        let written = (|| {
            man.render_title(&mut out)?;
            // Left-aligned, and no hyphen breaking an option or a page name in two.
            let mut layout = Roff::new();
            layout.control("ad", ["l"]).control("nh", []);
            layout.to_writer(&mut out)?;
            man.render_name_section(&mut out)?;
            man.render_synopsis_section(&mut out)?;
            man.render_description_section(&mut out)?;
            let mut options = Vec::new();
            man.render_options_section(&mut options)?;
            out.extend(
                self.headings_as_subsections(&String::from_utf8_lossy(&options))
                    .bytes(),
            );
            let mut roff = Roff::new();
            self.commands(all, &mut roff);
            self.examples(&mut roff);
            self.environment(&mut roff);
            self.exit_status(&mut roff);
            self.see_also(all, &mut roff);
            roff.to_writer(&mut out)
        })();
        written.expect("writing to memory does not fail");
        let text = String::from_utf8(out).expect("roff is UTF-8 when its input is");
        // Each piece above starts with roff's definition of the apostrophe: once is enough.
        format!("{APOSTROPHE}{}", text.replace(APOSTROPHE, ""))
    }

    /// clap_mangen gives each help heading a section of its own (`.SH CONNECTION`, beside
    /// NAME and ENVIRONMENT); here they are subsections of OPTIONS.
    fn headings_as_subsections(&self, options: &str) -> String {
        let headings: BTreeSet<&str> = self
            .cmd
            .get_arguments()
            .filter_map(|a| a.get_help_heading())
            .collect();
        let mut out = String::new();
        for line in options.lines() {
            match line
                .strip_prefix(".SH ")
                .and_then(|h| headings.iter().find(|ours| ours.to_uppercase() == h))
            {
                Some(heading) => out.push_str(&format!(".SS {heading}")),
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }

    /// The commands of a command that has some, each with the page that documents it (or the
    /// page whose options it takes: `config check backfill` takes backfill's).
    fn commands(&self, all: &[Page], roff: &mut Roff) {
        let words = |page: &Page| -> String {
            page.cmd
                .get_bin_name()
                .unwrap_or(PROGRAM)
                .trim_start_matches(PROGRAM)
                .trim()
                .to_string()
        };
        let entries: Vec<(String, String, String)> = if self.name == PROGRAM {
            all.iter()
                .skip(1)
                .map(|page| {
                    (
                        words(page),
                        about(&page.cmd),
                        format!("See {}(1).", page.name),
                    )
                })
                .collect()
        } else {
            self.cmd
                .get_subcommands()
                .filter(|s| s.get_name() != "help")
                .filter_map(|sub| {
                    let page = all.iter().find(|p| p.cmd.get_name() == sub.get_name())?;
                    Some((
                        sub.get_name().to_string(),
                        about(sub),
                        format!("Takes the options of {}(1).", page.name),
                    ))
                })
                .collect()
        };
        if entries.is_empty() {
            return;
        }
        roff.control("SH", ["COMMANDS"]);
        for (name, about, see) in entries {
            roff.control("TP", []);
            roff.text([bold(name)]);
            roff.text([roman(format!("{about} {see}"))]);
        }
    }

    /// The examples of `--help`: indented lines (commands) line for line, the rest as
    /// paragraphs.
    fn examples(&self, roff: &mut Roff) {
        let Some(text) = self.cmd.get_after_help() else {
            return;
        };
        roff.control("SH", ["EXAMPLES"]);
        let mut verbatim = false;
        for line in text.to_string().lines() {
            let command = line.starts_with(' ');
            if command != verbatim {
                roff.control(if command { "nf" } else { "fi" }, []);
                verbatim = command;
            }
            if line.is_empty() {
                roff.control("PP", []);
            } else {
                roff.text([roman(line)]);
            }
        }
        if verbatim {
            roff.control("fi", []);
        }
    }

    fn environment(&self, roff: &mut Roff) {
        let ids = all_argument_ids(&self.cmd);
        roff.control("SH", ["ENVIRONMENT"]);
        let read: Vec<_> = ENVIRONMENT
            .iter()
            .filter(|(_, id, _)| ids.contains(*id))
            .collect();
        if read.is_empty() {
            roff.text([roman(
                "None: this command takes no settings, so the connection variables and POSTHOG_PATTERNS_CONFIG are ignored.",
            )]);
        }
        for (name, _, text) in read {
            roff.control("TP", []);
            roff.text([bold(*name)]);
            roff.text([roman(*text)]);
        }
        if self.name != PROGRAM && ids.contains("config") {
            roff.control("PP", []);
            roff.text([roman(
                "A flag beats its environment variable, which beats the --config file, which beats the default.",
            )]);
        }
    }

    fn exit_status(&self, roff: &mut Roff) {
        roff.control("SH", ["EXIT STATUS"]);
        for (code, text) in exit_status_of(&self.cmd) {
            roff.control("TP", []);
            roff.text([bold(code.to_string())]);
            roff.text([roman(text)]);
        }
        roff.control("PP", []);
        roff.text([roman(
            "docs/exit-codes.md says, for each code, what to do; docs/reliability.md what was delivered.",
        )]);
    }

    /// The program's page names every other; a command's names the program's and the pages
    /// that name it as one of their commands (and the other way round).
    fn see_also(&self, all: &[Page], roff: &mut Roff) {
        let related = |a: &Page, b: &Page| {
            let has = |p: &Page, name: &str| p.cmd.get_subcommands().any(|s| s.get_name() == name);
            has(a, b.cmd.get_name()) || has(b, a.cmd.get_name())
        };
        let names: Vec<String> = all
            .iter()
            .filter(|p| p.name != self.name)
            .filter(|p| self.name == PROGRAM || p.name == PROGRAM || related(self, p))
            .map(|p| format!("{}(1)", p.name))
            .collect();
        roff.control("SH", ["SEE ALSO"]);
        roff.text([roman(format!(
            "{}; the guides in docs/ of the source tree (configuration.md, backfill.md, sync.md, troubleshooting.md).",
            names.join(", ")
        ))]);
    }
}

/// The one-line description of a command.
fn about(cmd: &Command) -> String {
    cmd.get_about()
        .map(|a| a.to_string())
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_string()
        + "."
}

/// The ids of the options of `cmd` and of every command under it.
fn all_argument_ids(cmd: &Command) -> BTreeSet<String> {
    let mut ids: BTreeSet<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    for sub in cmd.get_subcommands() {
        ids.extend(all_argument_ids(sub));
    }
    ids
}

/// `man`: the program's page to stdout, or with `dir` every page into that directory.
pub(crate) fn run(dir: Option<&Path>) -> anyhow::Result<()> {
    let all = pages();
    let Some(dir) = dir else {
        return print_stdout(all[0].render(&all).as_bytes());
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    for page in &all {
        let path = dir.join(page.file_name());
        std::fs::write(&path, page.render(&all))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    eprintln!(
        "wrote {} man pages to {}: {}",
        all.len(),
        dir.display(),
        all.iter()
            .map(Page::file_name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Writes `text` to stdout; a reader that stops early (`| head`) is not an error.
pub(crate) fn print_stdout(text: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new environment variable on an option cannot be left out of the pages.
    #[test]
    fn every_environment_variable_of_the_command_line_is_documented() {
        fn check(cmd: &Command) {
            for arg in cmd.get_arguments() {
                if let Some(var) = arg.get_env() {
                    assert!(
                        ENVIRONMENT.iter().any(|(name, _, _)| var == *name),
                        "{var:?} ({}) is missing from ENVIRONMENT",
                        arg.get_id()
                    );
                }
            }
            cmd.get_subcommands().for_each(check);
        }
        check(&Cli::command());
        let ids = all_argument_ids(&Cli::command());
        for (name, id, _) in ENVIRONMENT {
            assert!(ids.contains(*id), "{name} names no option {id}");
        }
    }

    #[test]
    fn one_page_per_command_and_none_for_a_group() {
        let names: Vec<String> = pages().into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "posthog-patterns",
                "posthog-patterns-backfill",
                "posthog-patterns-sync",
                "posthog-patterns-export",
                "posthog-patterns-send",
                "posthog-patterns-config-check",
                "posthog-patterns-completions",
                "posthog-patterns-man",
                "posthog-patterns-demo",
            ]
        );
    }
}
