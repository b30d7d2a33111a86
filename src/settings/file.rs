//! `--config FILE`: a TOML file that can hold any setting a flag can, so that crontab lines stay
//! short. Precedence: flag > environment variable > config file > default.
//!
//! There is one route for every value: a file value the command line left unset becomes a
//! `--flag value` argument and goes through the same clap parser, with the same checks, as if
//! it had been typed. Reference: docs/configuration.md.

use crate::cli::Cli;
use crate::error::usage;
use crate::log::LogFormat;
use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A number, or a string such as "1MiB" or "15m".
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(untagged)]
enum Amount {
    Number(u64),
    Text(String),
}

/// One text, or a list of them (a key whose flag takes a list: `events = "signed_up"` is
/// `events = ["signed_up"]`, as `--event signed_up` is).
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(untagged)]
enum Texts {
    One(String),
    Many(Vec<String>),
}

/// A date or time: text (`"2024-01-01"`, `"-7d"`), or TOML's own (`start = 2024-01-01`,
/// `end = 2024-02-01T00:00:00Z`), handed on as the text the flag takes.
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum DateValue {
    Text(String),
    Toml(toml::value::Datetime),
}

impl Serialize for DateValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DateValue::Text(text) => text.serialize(s),
            DateValue::Toml(t) => t.to_string().serialize(s),
        }
    }
}

/// One path, or a list of them (a key whose flag is repeatable).
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(untagged)]
enum Paths {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

/// The keys a file may hold, each named like the flag's value (`page_size` for
/// `--page-size`). Unknown keys are refused, so that a typo is not silently ignored.
#[derive(Deserialize, Serialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct ConfigFile {
    host: Option<String>,
    project: Option<Amount>,
    api_key_file: Option<PathBuf>,
    source: Option<String>,
    webhook_url: Option<String>,
    events: Option<Texts>,
    exclude_events: Option<Texts>,
    start: Option<DateValue>,
    end: Option<DateValue>,
    lookback: Option<Amount>,
    lag: Option<Amount>,
    page_size: Option<Amount>,
    fetch_concurrency: Option<Amount>,
    max_response_size: Option<Amount>,
    batch_size: Option<Amount>,
    max_batch_bytes: Option<Amount>,
    concurrency: Option<Amount>,
    dead_letter: Option<PathBuf>,
    headers: Option<Texts>,
    header_file: Option<PathBuf>,
    compress: Option<String>,
    checkpoint: Option<PathBuf>,
    if_locked: Option<String>,
    output: Option<PathBuf>,
    on_invalid: Option<String>,
    max_line_bytes: Option<Amount>,
    max_retries: Option<Amount>,
    max_wait: Option<Amount>,
    max_run_time: Option<Amount>,
    http_timeout: Option<Amount>,
    ca_cert: Option<Paths>,
    max_requests_per_minute: Option<Amount>,
    max_requests_per_hour: Option<Amount>,
    progress: Option<String>,
    log_format: Option<String>,
    metrics_file: Option<PathBuf>,
}

/// Parses the command line and, with `--config`, fills in what it left unset from the file.
/// Errors of the command line end the process as clap does, with exit 2; `format` is set as
/// soon as the log format is known (for the error of a bad config file, too).
pub(crate) fn parse(argv: Vec<OsString>, format: &mut LogFormat) -> anyhow::Result<Cli> {
    let matches = matches_or_exit(&argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| exit(&argv, e));
    *format = cli.command.log_format();
    let Some((path, found)) = cli.config_file() else {
        return Ok(cli);
    };
    if found {
        // A file nobody named on this command line: say which, at every start.
        let msg = format!(
            "reading the config file {} (found in the user's config directory; --no-config skips it)",
            path.display()
        );
        match *format {
            LogFormat::Json => crate::log::to_stderr(&crate::log::json_line(
                crate::log::Level::Info,
                &msg,
                Default::default(),
            )),
            LogFormat::Text => crate::log::to_stderr(&format!("info: {msg}")),
        }
    }
    let extra = file_args(&path, &matches)?;
    if extra.is_empty() {
        return Ok(cli);
    }
    // Before a `--`, so that the values are never taken for file names.
    let at = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    let merged: Vec<OsString> = argv[..at]
        .iter()
        .cloned()
        .chain(extra)
        .chain(argv[at..].iter().cloned())
        .collect();
    let matches = matches_or_exit(&merged);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| exit(&merged, e));
    *format = cli.command.log_format();
    Ok(cli)
}

/// Refuses keys the file may not hold, each with the setting it most likely meant.
fn unknown_keys(path: &Path, text: &str) -> anyhow::Result<()> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(()); // not TOML: the parse proper says where
    };
    let known = serde_json::to_value(ConfigFile::default()).context("config keys serialize")?;
    let known: Vec<&str> = known
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let unknown: Vec<String> = table
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|key| {
            let near = known
                .iter()
                .map(|k| (strsim::levenshtein(k, key), *k))
                .filter(|(d, k)| *d <= 3 || key.starts_with(*k) || k.starts_with(key.as_str()))
                .min();
            match near {
                Some((_, k)) => format!("unknown field `{key}` (did you mean `{k}`?)"),
                None => format!("unknown field `{key}`"),
            }
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(usage(format!(
        "the config file {}: {}; docs/configuration.md lists every setting",
        path.display(),
        unknown.join(", ")
    )))
}

/// The file's values for the command being run, as `--flag value` arguments, each checked by
/// the flag's own parser (so that an error names the file's key).
fn file_args(path: &Path, matches: &ArgMatches) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))
        .map_err(|e| usage(format!("{e:#}")))?;
    unknown_keys(path, &text)?;
    // toml's own message quotes the offending line, which may hold the webhook URL or a
    // pasted key (and cron mails it): say where, and what, but never quote the file.
    let file: ConfigFile = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(String::new(), |span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" at line {line}")
        });
        usage(format!(
            "the config file {} is not valid{at}: {}",
            path.display(),
            crate::secret::redact_unknown(e.message())
        ))
    })?;
    let values = serde_json::to_value(&file).context("config values serialize")?;

    // The innermost subcommand (`config check backfill` checks backfill's settings).
    let mut cmd = Cli::command();
    let mut m = matches;
    while let Some((name, sub)) = m.subcommand() {
        cmd = cmd
            .find_subcommand(name)
            .context("a parsed subcommand exists")?
            .clone();
        m = sub;
    }

    let mut out = Vec::new();
    for (key, value) in values.as_object().into_iter().flatten() {
        let Some(arg) = cmd.get_arguments().find(|a| a.get_id() == key.as_str()) else {
            continue; // a setting of another command
        };
        if matches!(
            m.value_source(key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        // The key itself in the environment (POSTHOG_API_KEY) wins over a key file named in
        // the config file: environment before file, as everywhere else.
        if key == "api_key_file"
            && std::env::var("POSTHOG_API_KEY").is_ok_and(|k| !k.trim().is_empty())
        {
            continue;
        }
        let texts: Vec<String> = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(list) => list
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect(),
            other => vec![other.to_string()],
        };
        let long = arg.get_long().context("every setting has a long flag")?;
        for text in texts {
            let flag = format!("--{long}");
            cmd.clone()
                .no_binary_name(true)
                .try_get_matches_from([flag.as_str(), text.as_str()])
                .map_err(|e| {
                    usage(crate::secret::redact_unknown(&format!(
                        "config file {}, `{key}` = {text:?}: {}",
                        path.display(),
                        clap_reason(&e)
                    )))
                })?;
            out.push(flag.into());
            out.push(text.into());
        }
    }
    Ok(out)
}

/// The reason in a clap error, without its `error:` prefix and usage lines.
/// The command line parsed, or the process ended as clap ends it (help, version, exit 2 for
/// a mistake), the mistake as one JSON object when the line asks for `--log-format json`.
fn matches_or_exit(argv: &[OsString]) -> ArgMatches {
    Cli::command()
        .try_get_matches_from(argv)
        .unwrap_or_else(|e| exit(argv, e))
}

fn exit(argv: &[OsString], e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let json = argv
        .windows(2)
        .any(|w| w[0] == "--log-format" && w[1] == "json")
        || argv.iter().any(|a| a == "--log-format=json");
    let shown = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !json || shown {
        e.exit()
    }
    let fields = [("exit_code".to_string(), 2.into())].into_iter().collect();
    crate::log::to_stderr(&crate::log::json_line(
        crate::log::Level::Error,
        &crate::secret::redact_unknown(&clap_reason(&e)),
        fields,
    ));
    std::process::exit(2)
}

fn clap_reason(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_parses_and_unknown_keys_are_refused() {
        let file: ConfigFile = toml::from_str(
            r#"
            host = "https://eu.posthog.com"
            project = 12345
            webhook_url = "https://example.com/hook"
            events = ["signup", "purchase"]
            lookback = "3d"
            lag = 600
            max_batch_bytes = "512KiB"
            "#,
        )
        .unwrap();
        let v = serde_json::to_value(&file).unwrap();
        assert_eq!(v["project"], 12345);
        assert_eq!(v["lookback"], "3d");
        assert_eq!(v["events"][1], "purchase");
        // A repeatable flag's key takes one value or a list.
        let one: ConfigFile = toml::from_str("ca_cert = \"/etc/ca.pem\"").unwrap();
        assert_eq!(
            serde_json::to_value(&one).unwrap()["ca_cert"],
            "/etc/ca.pem"
        );
        let many: ConfigFile = toml::from_str("ca_cert = [\"a.pem\", \"b.pem\"]").unwrap();
        assert_eq!(serde_json::to_value(&many).unwrap()["ca_cert"][1], "b.pem");
        let err = toml::from_str::<ConfigFile>("hots = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn messages_about_a_config_file_never_carry_a_key_or_a_url_path() {
        let text = crate::secret::redact_unknown(
            "invalid value \"phx_abcdef123456\" near 'https://api.patterns.app/api/app/webhooks/wh-123?x=1', ok",
        );
        assert!(
            !text.contains("abcdef123456") && !text.contains("wh-123"),
            "{text}"
        );
        assert!(
            text.contains("https://api.patterns.app/…") && text.contains("ok"),
            "{text}"
        );
    }
}
