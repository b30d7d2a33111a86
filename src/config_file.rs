//! `--config FILE`: a TOML file that can hold any setting a flag can, so that crontab lines stay
//! short. Precedence: flag > environment variable > config file > default. The file is applied
//! to the parsed command line wherever a value came from a default or nowhere.
//! Reference: docs/configuration.md.

use crate::cli::{
    self, BackfillArgs, ConnectionArgs, ExportArgs, FilterArgs, OnInvalid, OutputArgs, RangeArgs,
    ReadArgs, RetryArgs, SendArgs, StateArgs, SyncArgs, WebhookArgs,
};
use crate::error::usage;
use crate::progress::{LogFormat, ProgressMode};
use crate::source::SourceKind;
use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A number, or a string such as "1MiB" or "15m".
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub enum Amount {
    Number(u64),
    Text(String),
}

impl Amount {
    fn text(&self) -> String {
        match self {
            Amount::Number(n) => n.to_string(),
            Amount::Text(t) => t.clone(),
        }
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ConfigFile {
    pub host: Option<String>,
    pub project: Option<Amount>,
    pub api_key_file: Option<PathBuf>,
    pub source: Option<String>,
    pub webhook_url: Option<String>,
    pub events: Option<Vec<String>>,
    pub exclude_events: Option<Vec<String>>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub lookback: Option<Amount>,
    pub lag: Option<Amount>,
    pub page_size: Option<u64>,
    pub batch_size: Option<u64>,
    pub max_batch_bytes: Option<Amount>,
    pub concurrency: Option<u64>,
    pub dead_letter: Option<PathBuf>,
    pub checkpoint: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub on_invalid: Option<String>,
    pub max_line_bytes: Option<Amount>,
    pub max_retries: Option<u32>,
    pub max_wait: Option<Amount>,
    pub http_timeout: Option<Amount>,
    pub max_requests_per_minute: Option<u32>,
    pub max_requests_per_hour: Option<u32>,
    pub progress: Option<String>,
    pub log_format: Option<String>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))
            .map_err(|e| usage(format!("{e:#}")))?;
        toml::from_str(&text).map_err(|e| {
            usage(format!(
                "the config file {} is not valid: {e}",
                path.display()
            ))
        })
    }
}

/// Whether a setting was left to its default (so the config file may set it).
fn unset(m: &ArgMatches, id: &str) -> bool {
    !matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Applies one setting: `parse` turns the file's value into the flag's type.
fn apply<T, V>(
    m: &ArgMatches,
    id: &str,
    field: &mut T,
    value: &Option<V>,
    parse: impl Fn(&V) -> Result<T, String>,
) -> anyhow::Result<()> {
    if let Some(v) = value
        && unset(m, id)
    {
        *field = parse(v).map_err(|e| usage(format!("config file, `{id}`: {e}")))?;
    }
    Ok(())
}

fn same<T: Clone>(v: &T) -> Result<T, String> {
    Ok(v.clone())
}

fn some<T: Clone>(v: &T) -> Result<Option<T>, String> {
    Ok(Some(v.clone()))
}

fn enum_value<E: clap::ValueEnum>(text: &String) -> Result<E, String> {
    E::from_str(text, true).map_err(|_| {
        let names: Vec<String> = E::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        format!("{text:?} is not one of {}", names.join(", "))
    })
}

fn time<S: AsRef<str>>(text: &S) -> Result<Option<DateTime<Utc>>, String> {
    cli::parse_time(text.as_ref()).map(Some)
}

fn duration(a: &Amount) -> Result<Duration, String> {
    cli::parse_duration(&a.text())
}

fn bytes(a: &Amount) -> Result<u64, String> {
    cli::parse_bytes(&a.text())
}

impl ConfigFile {
    fn connection(&self, m: &ArgMatches, a: &mut ConnectionArgs) -> anyhow::Result<()> {
        apply(m, "host", &mut a.host, &self.host, same)?;
        apply(m, "project", &mut a.project, &self.project, |p| {
            Ok(Some(p.text()))
        })?;
        apply(
            m,
            "api_key_file",
            &mut a.api_key_file,
            &self.api_key_file,
            some,
        )?;
        apply(
            m,
            "source",
            &mut a.source,
            &self.source,
            enum_value::<SourceKind>,
        )
    }

    fn filters(&self, m: &ArgMatches, a: &mut FilterArgs) -> anyhow::Result<()> {
        apply(m, "events", &mut a.events, &self.events, same)?;
        apply(
            m,
            "exclude_events",
            &mut a.exclude_events,
            &self.exclude_events,
            same,
        )
    }

    fn webhook(&self, m: &ArgMatches, a: &mut WebhookArgs) -> anyhow::Result<()> {
        apply(
            m,
            "webhook_url",
            &mut a.webhook_url,
            &self.webhook_url,
            some,
        )?;
        apply(m, "batch_size", &mut a.batch_size, &self.batch_size, same)?;
        apply(
            m,
            "max_batch_bytes",
            &mut a.max_batch_bytes,
            &self.max_batch_bytes,
            bytes,
        )?;
        apply(
            m,
            "concurrency",
            &mut a.concurrency,
            &self.concurrency,
            same,
        )?;
        apply(
            m,
            "dead_letter",
            &mut a.dead_letter,
            &self.dead_letter,
            some,
        )
    }

    fn retry(&self, m: &ArgMatches, a: &mut RetryArgs) -> anyhow::Result<()> {
        apply(
            m,
            "max_retries",
            &mut a.max_retries,
            &self.max_retries,
            same,
        )?;
        apply(m, "max_wait", &mut a.max_wait, &self.max_wait, duration)?;
        apply(
            m,
            "http_timeout",
            &mut a.http_timeout,
            &self.http_timeout,
            duration,
        )?;
        apply(
            m,
            "max_requests_per_minute",
            &mut a.max_requests_per_minute,
            &self.max_requests_per_minute,
            some,
        )?;
        apply(
            m,
            "max_requests_per_hour",
            &mut a.max_requests_per_hour,
            &self.max_requests_per_hour,
            some,
        )
    }

    fn output(&self, m: &ArgMatches, a: &mut OutputArgs) -> anyhow::Result<()> {
        apply(
            m,
            "progress",
            &mut a.progress,
            &self.progress,
            enum_value::<ProgressMode>,
        )?;
        apply(
            m,
            "log_format",
            &mut a.log_format,
            &self.log_format,
            enum_value::<LogFormat>,
        )
    }

    fn read(&self, m: &ArgMatches, a: &mut ReadArgs) -> anyhow::Result<()> {
        self.connection(m, &mut a.connection)?;
        self.filters(m, &mut a.filters)?;
        apply(m, "page_size", &mut a.page_size, &self.page_size, same)
    }

    fn range(&self, m: &ArgMatches, a: &mut RangeArgs) -> anyhow::Result<()> {
        apply(m, "start", &mut a.start, &self.start, time)?;
        apply(m, "end", &mut a.end, &self.end, time)
    }

    fn state(&self, m: &ArgMatches, a: &mut StateArgs) -> anyhow::Result<()> {
        apply(m, "checkpoint", &mut a.checkpoint, &self.checkpoint, some)
    }

    pub fn backfill(&self, m: &ArgMatches, a: &mut BackfillArgs) -> anyhow::Result<()> {
        self.read(m, &mut a.read)?;
        self.range(m, &mut a.range)?;
        self.webhook(m, &mut a.webhook)?;
        self.state(m, &mut a.state)?;
        self.retry(m, &mut a.retry)?;
        self.output(m, &mut a.output)
    }

    pub fn sync(&self, m: &ArgMatches, a: &mut SyncArgs) -> anyhow::Result<()> {
        self.read(m, &mut a.read)?;
        self.webhook(m, &mut a.webhook)?;
        self.state(m, &mut a.state)?;
        self.retry(m, &mut a.retry)?;
        self.output(m, &mut a.output)?;
        apply(m, "start", &mut a.start, &self.start, time)?;
        apply(m, "lookback", &mut a.lookback, &self.lookback, duration)?;
        apply(m, "lag", &mut a.lag, &self.lag, duration)
    }

    pub fn export(&self, m: &ArgMatches, a: &mut ExportArgs) -> anyhow::Result<()> {
        self.read(m, &mut a.read)?;
        self.range(m, &mut a.range)?;
        self.state(m, &mut a.state)?;
        self.retry(m, &mut a.retry)?;
        self.output(m, &mut a.display)?;
        apply(m, "output", &mut a.output, &self.output, some)
    }

    pub fn send(&self, m: &ArgMatches, a: &mut SendArgs) -> anyhow::Result<()> {
        self.filters(m, &mut a.filters)?;
        self.webhook(m, &mut a.webhook)?;
        self.state(m, &mut a.state)?;
        self.retry(m, &mut a.retry)?;
        self.output(m, &mut a.output)?;
        apply(
            m,
            "on_invalid",
            &mut a.on_invalid,
            &self.on_invalid,
            enum_value::<OnInvalid>,
        )?;
        apply(
            m,
            "max_line_bytes",
            &mut a.max_line_bytes,
            &self.max_line_bytes,
            bytes,
        )
    }
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
        assert_eq!(file.project.unwrap().text(), "12345");
        assert_eq!(
            duration(&file.lookback.unwrap()).unwrap().as_secs(),
            3 * 86_400
        );
        assert_eq!(duration(&file.lag.unwrap()).unwrap().as_secs(), 600);
        assert_eq!(bytes(&file.max_batch_bytes.unwrap()).unwrap(), 512 * 1024);
        let err = toml::from_str::<ConfigFile>("hots = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
