//! Turns command-line arguments into checked settings shared by every command: the PostHog
//! connection, the webhook and batching, retries and the request budget.

pub(crate) mod file;

mod connection;
pub(crate) use connection::Connection;

use crate::cli::{
    Compress, ConnectionArgs, FilterArgs, ReadArgs, RequestLimits, RetryArgs, StateArgs, TlsArgs,
    WebhookArgs,
};
use crate::domain::SourceKind;
use crate::domain::when::When;
use crate::domain::{Filters, Range};
use crate::error::usage;
use crate::event::format_ts;
use crate::net::ratelimit::Budget;
use crate::net::retry::RetryPolicy;
use crate::net::tls::CaCerts;
use crate::pipeline::Posting;
use crate::pipeline::batcher::Limits;
use crate::secret::{Secret, WebhookUrl};
use anyhow::Context;
use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::time::Duration;

/// What to read from PostHog and how: the checked `ReadArgs`.
pub(crate) struct Read {
    pub(crate) connection: Connection,
    /// The API asked for (`auto` is resolved by asking PostHog).
    pub(crate) source: SourceKind,
    pub(crate) filters: Filters,
    pub(crate) page_size: usize,
    /// Query API windows read at once (`--fetch-concurrency`).
    pub(crate) fetch_concurrency: usize,
    /// The largest PostHog answer read (`--max-response-size`).
    pub(crate) max_response_size: u64,
}

pub(crate) fn read(args: &ReadArgs, allow_insecure_http: bool) -> anyhow::Result<Read> {
    let connection = connection(&args.connection)?;
    require_tls(
        &connection.host,
        "--host",
        "the API key",
        allow_insecure_http,
    )?;
    Ok(Read {
        connection,
        source: args.connection.source,
        filters: filters(&args.filters),
        page_size: args.page_size as usize,
        fetch_concurrency: args.fetch_concurrency as usize,
        max_response_size: args.max_response_size,
    })
}

/// The headers of `--header` and `--header-file`, checked. Errors name the flag or file and
/// the line, never the value (it is usually a token).
fn headers(args: &WebhookArgs) -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut lines: Vec<(String, String)> = args
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| (format!("--header number {}", i + 1), h.clone()))
        .collect();
    if let Some(path) = &args.header_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            usage(format!(
                "cannot read the header file {}: {e}",
                path.display()
            ))
        })?;
        lines.extend(
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .map(|(i, l)| (format!("{}, line {}", path.display(), i + 1), l.to_string())),
        );
    }
    let mut map = reqwest::header::HeaderMap::new();
    for (origin, line) in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| {
            usage(format!(
                "{origin} is not `Name: value` (e.g. 'Authorization: Bearer TOKEN')"
            ))
        })?;
        let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| usage(format!("{origin}: {:?} is not a header name", name.trim())))?;
        if [
            "content-type",
            "content-encoding",
            "content-length",
            "host",
            "transfer-encoding",
        ]
        .contains(&name.as_str())
        {
            // A Content-Encoding the body does not have would make the webhook misread it.
            let hint = if name == "content-encoding" {
                " (use --compress gzip)"
            } else {
                ""
            };
            return Err(usage(format!(
                "{origin}: {name} is set by posthog-patterns itself and cannot be replaced{hint}"
            )));
        }
        let value = value.trim();
        crate::secret::Secret::new(value); // redacted wherever a server echoes it
        let mut value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
            usage(format!(
                "{origin}: the value of {name} holds characters a header cannot"
            ))
        })?;
        value.set_sensitive(true);
        map.append(name, value);
    }
    Ok(map)
}

/// Refuses plain `http://` to a host other than this machine (judged by the literal host:
/// `localhost`, 127.0.0.0/8, `::1`): the key or the webhook URL would cross the network in
/// clear. `--allow-insecure-http` allows it.
fn require_tls(url: &reqwest::Url, flag: &str, what: &str, allowed: bool) -> anyhow::Result<()> {
    if url.scheme() != "http" || allowed || is_loopback(url) {
        return Ok(());
    }
    Err(usage(format!(
        "{flag} uses plain http:// to {}, which would send {what} unencrypted: use https://, or pass --allow-insecure-http if that network is trusted",
        url.host_str().unwrap_or("?")
    )))
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || literal
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where a job's state lives and whether to discard it (`StateArgs`).
pub(crate) struct Resume {
    /// An explicit state file; `None`: the job's default path.
    pub(crate) checkpoint: Option<PathBuf>,
    pub(crate) restart: bool,
    /// What to do when another run holds the job's lock.
    pub(crate) if_locked: crate::cli::IfLocked,
    /// The longest `--if-locked wait` (`--max-wait`).
    pub(crate) max_wait: Duration,
}

pub(crate) fn resume<B: clap::Args>(args: &StateArgs, retry: &RetryArgs<B>) -> Resume {
    Resume {
        checkpoint: args.checkpoint.clone(),
        restart: args.restart,
        if_locked: args.if_locked,
        max_wait: retry.max_wait,
    }
}

fn connection(args: &ConnectionArgs) -> anyhow::Result<Connection> {
    let host = Connection::parse_host(&args.host).map_err(usage)?;
    let project = args.project.as_deref().ok_or_else(|| {
        usage("no PostHog project: pass --project ID or set POSTHOG_PROJECT_ID (the number in your project's URL)")
    })?;
    let project = Connection::check_project(project).map_err(usage)?;
    const WANTED: &str = "a personal API key (phx_..., with the query:read scope)";
    let key = match &args.api_key_file {
        Some(path) => {
            let key = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API key file {}", path.display()))
                .map_err(|e| usage(format!("{e:#}")))?;
            if key.trim().is_empty() {
                return Err(usage(format!(
                    "the API key file {} (--api-key-file) is empty: it must hold {WANTED}",
                    path.display()
                )));
            }
            key
        }
        None => match std::env::var("POSTHOG_API_KEY") {
            Ok(key) if key.trim().is_empty() => {
                return Err(usage(format!(
                    "POSTHOG_API_KEY is empty: set it to {WANTED}, or pass --api-key-file PATH"
                )));
            }
            Ok(key) => key,
            Err(_) => {
                return Err(usage(format!(
                    "no PostHog API key: set POSTHOG_API_KEY or pass --api-key-file PATH, with {WANTED}"
                )));
            }
        },
    };
    let key = key.trim();
    if key.starts_with("phc_") {
        return Err(usage(
            "the PostHog key is a project token (phc_...), which cannot read events; create a personal API key (phx_...) with the query:read scope",
        ));
    }
    Ok(Connection {
        host,
        project,
        api_key: Secret::new(key),
    })
}

/// The checked webhook settings.
pub(crate) struct Webhook {
    pub(crate) url: WebhookUrl,
    /// Sent with every POST (`--header`, `--header-file`); values are secrets. Not part of a
    /// job's identity: rotating a token must not restart a job.
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) posting: Posting,
    pub(crate) dead_letter: Option<PathBuf>,
    /// How each POST body is encoded (`--compress`); batches are cut by their JSON size.
    pub(crate) compress: Compress,
}

pub(crate) fn webhook(args: &WebhookArgs, allow_insecure_http: bool) -> anyhow::Result<Webhook> {
    let text = args
        .webhook_url
        .as_deref()
        .ok_or_else(|| usage("no webhook: pass --webhook-url URL or set PATTERNS_WEBHOOK_URL"))?;
    let url = WebhookUrl::parse(text).map_err(usage)?;
    require_tls(
        url.url(),
        "--webhook-url",
        "the webhook URL (a secret)",
        allow_insecure_http,
    )?;
    Ok(Webhook {
        url,
        headers: headers(args)?,
        posting: Posting {
            limits: Limits {
                max_events: args.batch_size as usize,
                max_bytes: args.max_batch_bytes as usize,
            },
            concurrency: args.concurrency as usize,
            linger: None,
        },
        dead_letter: args.dead_letter.clone(),
        compress: args.compress,
    })
}

/// Retry policy, per-request timeout and the request budget.
pub(crate) struct Retries {
    pub(crate) policy: RetryPolicy,
    pub(crate) http_timeout: Duration,
    /// Requests per minute and per hour set by the user; `None`: the API's published limit.
    pub(crate) per_minute: Option<u32>,
    pub(crate) per_hour: Option<u32>,
    /// `--max-run-time`: when the whole run stops (exit 75).
    pub(crate) max_run_time: Option<Duration>,
}

impl Retries {
    /// Requests per minute and per hour for the API `source`: the user's numbers, else its
    /// published limits (0: no limit).
    pub(crate) fn limits(&self, source: SourceKind) -> (u32, u32) {
        let (minute, hour) = match source {
            SourceKind::Events => EVENTS_API_LIMITS,
            SourceKind::Query | SourceKind::Auto => QUERY_API_LIMITS,
        };
        (
            self.per_minute.unwrap_or(minute),
            self.per_hour.unwrap_or(hour),
        )
    }

    /// The request budget for the API in use.
    pub(crate) fn budget(&self, source: SourceKind) -> Budget {
        let (minute, hour) = self.limits(source);
        Budget::new(minute, hour)
    }
}

/// Published limits for personal API keys (../shared/posthog-api.md, "Rate limits"):
/// requests per minute and per hour.
const QUERY_API_LIMITS: (u32, u32) = (240, 2400);
const EVENTS_API_LIMITS: (u32, u32) = (240, 1200);

pub(crate) fn retries<B: clap::Args + RequestLimits>(args: &RetryArgs<B>) -> Retries {
    Retries {
        policy: RetryPolicy {
            max_retries: args.max_retries,
            max_wait: args.max_wait,
            ..RetryPolicy::default()
        },
        http_timeout: args.http_timeout,
        per_minute: args.budget.per_minute(),
        per_hour: args.budget.per_hour(),
        max_run_time: args.max_run_time,
    }
}

/// The certificates of `--ca-cert`, read and checked now: a bad file is a usage error.
pub(crate) fn ca_certs(args: &TlsArgs) -> anyhow::Result<CaCerts> {
    CaCerts::load(&args.ca_cert)
}

/// What a command needs and the settings may leave out; each a check and how to give it.
pub(crate) struct Needs<'a> {
    pub(crate) connection: Option<&'a ConnectionArgs>,
    pub(crate) webhook: Option<&'a WebhookArgs>,
    pub(crate) range: Option<&'a crate::cli::RangeArgs>,
}

/// Every required setting that is missing, in one message (each later check names one
/// problem at a time): a new user learns all of them at once.
pub(crate) fn require(needs: Needs<'_>) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if let Some(c) = needs.connection {
        if c.project.is_none() {
            missing.push("a PostHog project: --project ID or POSTHOG_PROJECT_ID");
        }
        if c.api_key_file.is_none() && std::env::var_os("POSTHOG_API_KEY").is_none() {
            missing.push("a personal API key: POSTHOG_API_KEY or --api-key-file PATH");
        }
    }
    if let Some(w) = needs.webhook
        && w.webhook_url.is_none()
    {
        missing.push("a webhook: --webhook-url URL or PATTERNS_WEBHOOK_URL");
    }
    if let Some(range) = needs.range {
        if range.start.is_none() {
            missing.push("the range's start: --start DATE");
        }
        if range.end.is_none() {
            missing.push("the range's end: --end DATE");
        }
    }
    if missing.len() < 2 {
        return Ok(()); // one is named by its own check, with more detail
    }
    Err(usage(format!(
        "{} settings are missing: {}. Each can also be set in the --config file (docs/configuration.md)",
        missing.len(),
        missing.join("; ")
    )))
}

/// `--start` and `--end` as given: times, or words relative to "now".
#[derive(Clone, Debug)]
pub(crate) struct RangeSpec {
    pub(crate) start: When,
    pub(crate) end: When,
}

impl RangeSpec {
    pub(crate) fn is_relative(&self) -> bool {
        self.start.is_relative() || self.end.is_relative()
    }

    /// The range it stands for at `now` (PostHog's time, for a job's first run), start before
    /// end.
    pub(crate) fn resolve(&self, now: DateTime<Utc>) -> anyhow::Result<Range> {
        let (start, end) = (self.start.resolve(now), self.end.resolve(now));
        if start >= end {
            return Err(usage(format!(
                "--start ({}) must be before --end ({}); --end is exclusive, e.g. --start 2024-01-01 --end 2024-02-01 for January",
                format_ts(&start),
                format_ts(&end)
            )));
        }
        Ok(Range { start, end })
    }
}

/// `[start, end)` from the flags (or the config file), both required: as given, and as they
/// stand now by this machine's clock (checked, start before end; a job resolves words such
/// as `now` again by PostHog's clock).
pub(crate) fn range(start: Option<When>, end: Option<When>) -> anyhow::Result<(RangeSpec, Range)> {
    let (Some(start), Some(end)) = (start, end) else {
        return Err(usage(
            "--start and --end are required (or `start` and `end` in the --config file), e.g. --start 2024-01-01 --end 2024-02-01",
        ));
    };
    let spec = RangeSpec { start, end };
    let range = spec.resolve(crate::event::to_micros(Utc::now()))?;
    Ok((spec, range))
}

/// Sorted, de-duplicated, non-empty names: the order of `--event` flags does not change a job.
pub(crate) fn filters(args: &FilterArgs) -> Filters {
    let names = |list: &[String]| {
        let mut v: Vec<String> = list
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    Filters {
        include: names(&args.events),
        exclude: names(&args.exclude_events),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_except_to_this_machine_or_when_allowed() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        for local in [
            "http://localhost:8000/",
            "http://127.0.0.1/",
            "http://127.9.9.9/",
            "http://[::1]:80/",
        ] {
            assert!(
                require_tls(&url(local), "--host", "the key", false).is_ok(),
                "{local}"
            );
        }
        let err = require_tls(&url("http://ph.example.com/"), "--host", "the key", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--allow-insecure-http") && err.contains("ph.example.com"),
            "{err}"
        );
        assert!(require_tls(&url("http://ph.example.com/"), "--host", "the key", true).is_ok());
        assert!(require_tls(&url("https://ph.example.com/"), "--host", "the key", false).is_ok());
        // Not fooled by a name that merely starts like a loopback address.
        assert!(require_tls(&url("http://127.0.0.1.example.com/"), "--host", "k", false).is_err());
    }
}
