//! `demo`: a real backfill, through the same code as `backfill`, against the in-process
//! stand-ins on loopback (a PostHog holding synthetic events with ties and duplicate rows, a
//! webhook with some faults), then a check that every event arrived exactly once.

use crate::cli::DemoArgs;
use crate::commands::Report;
use crate::commands::backfill::{self, BackfillConfig};
use crate::error::EXIT_OK;
use crate::net::retry::RetryPolicy;
use crate::pipeline::Posting;
use crate::pipeline::batcher::Limits;
use crate::posthog::Connection;
use crate::posthog::source::{Filters, Range, SourceKind};
use crate::progress::Progress;
use crate::secret::{Secret, WebhookUrl};
use crate::settings::Retries;
use anyhow::{Context, bail};
use chrono::{DateTime, Duration, Utc};
use indicatif::HumanCount;
use posthog_patterns_standin::{
    Fault, PostHogConfig, PostHogStandIn, WebhookConfig, WebhookStandIn, data,
};
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) async fn run(args: &DemoArgs, progress: &Arc<Progress>) -> anyhow::Result<Report> {
    let start: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().expect("valid");
    let end: DateTime<Utc> = "2024-01-15T00:00:00Z".parse().expect("valid");
    let mut events = data::synthetic_events(args.events, start, end, 2024);
    // More events in one microsecond than a page holds, and rows not yet merged away.
    events.extend(data::tied_events(
        6_000,
        start + Duration::days(3) + Duration::microseconds(1),
        9,
    ));
    let duplicates: Vec<_> = events.iter().step_by(9_973).cloned().collect();
    events.extend(duplicates.iter().cloned());

    let posthog = PostHogStandIn::start(
        PostHogConfig {
            max_scan_rows: 25_000,
            ..PostHogConfig::default()
        },
        events.clone(),
    );
    posthog.fault_at(2, Fault::throttled(1, false));
    posthog.fault_at(4, Fault::status(503));
    let webhook = WebhookStandIn::start(WebhookConfig {
        latency: std::time::Duration::from_millis(2),
        ..WebhookConfig::default()
    });
    webhook.fault_at(3, Fault::status(502));
    webhook.fault_at(8, Fault::throttled(1, true));

    progress.info(&format!(
        "demo: PostHog stand-in at {} holding {} rows ({} duplicate rows, a microsecond with 6,000 events); webhook stand-in at {}",
        posthog.url(),
        HumanCount(events.len() as u64),
        duplicates.len(),
        webhook.server.addr
    ));
    let state = tempfile::tempdir().context("cannot create a temporary directory")?;
    let ph = posthog.config();
    let cfg = BackfillConfig {
        connection: Connection {
            host: Connection::parse_host(&posthog.url()).map_err(anyhow::Error::msg)?,
            project: ph.project_id.clone(),
            api_key: Secret::new(ph.api_key.clone()),
        },
        source: SourceKind::Auto,
        webhook: WebhookUrl::parse(&webhook.url()).map_err(anyhow::Error::msg)?,
        range: Range { start, end },
        filters: Filters::default(),
        page_size: 5_000,
        posting: Posting {
            limits: Limits {
                max_events: 1_000,
                max_bytes: 1 << 20,
            },
            concurrency: 4,
            linger: None,
        },
        checkpoint: Some(state.path().join("demo.json")),
        restart: false,
        dead_letter: None,
        retries: Retries {
            policy: RetryPolicy::default(),
            http_timeout: std::time::Duration::from_secs(30),
            per_minute: None,
            per_hour: None,
        },
    };
    let report = backfill::run(&cfg, progress).await?;

    // Every event of [start, end) exactly once, nothing else.
    let expected: HashMap<&str, ()> = events
        .iter()
        .filter(|e| e.timestamp >= start && e.timestamp < end)
        .map(|e| (e.uuid.as_str(), ()))
        .collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for uuid in webhook.uuids() {
        *seen.entry(uuid).or_default() += 1;
    }
    let missing = expected.keys().filter(|u| !seen.contains_key(**u)).count();
    let twice = seen.values().filter(|n| **n > 1).count();
    let stray = seen
        .keys()
        .filter(|u| !expected.contains_key(u.as_str()))
        .count();
    let received: usize = seen.values().sum();
    if missing + twice + stray > 0 || report.exit != EXIT_OK {
        bail!(
            "demo check FAILED: {missing} events missing, {twice} delivered more than once, {stray} from outside the range (webhook received {received}, expected {})",
            expected.len()
        );
    }
    Ok(Report {
        exit: EXIT_OK,
        summary: format!(
            "{}\ndemo check passed: all {} events of the range arrived exactly once at the webhook ({} received, 0 missing, 0 duplicated, 0 outside the range)",
            report.summary,
            HumanCount(expected.len() as u64),
            HumanCount(received as u64)
        ),
    })
}
