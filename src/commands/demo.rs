//! `demo`: a real backfill, through the same code as `backfill`, against the in-process
//! stand-ins on loopback (a PostHog holding synthetic events with ties and duplicate rows, a
//! webhook with some faults), then a check that every event arrived exactly once.

use crate::cli::{Cli, Command, DemoArgs};
use crate::commands::backfill::{self, BackfillConfig};
use crate::commands::report::Report;
use crate::error::EXIT_OK;
use crate::event::format_ts;
use crate::progress::Progress;
use anyhow::{Context, bail};
use chrono::{DateTime, Duration, Utc};
use clap::Parser;
use indicatif::HumanCount;
use posthog_patterns_standin::{
    Fault, PostHogConfig, PostHogStandIn, Storage, WebhookConfig, WebhookStandIn, data,
};
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) async fn run(args: &DemoArgs, progress: &Arc<Progress>) -> anyhow::Result<Report> {
    let start: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().expect("valid");
    let end: DateTime<Utc> = "2024-01-15T00:00:00Z".parse().expect("valid");
    let mut events = data::synthetic_events(args.events as usize, start, end, 2024);
    // More events in one microsecond than a page holds, and rows not yet merged away.
    events.extend(data::tied_events(
        6_000,
        start + Duration::days(3) + Duration::microseconds(1),
        9,
    ));
    let duplicates: Vec<_> = events.iter().step_by(9_973).cloned().collect();
    events.extend(duplicates.iter().cloned());

    // Granules of 1,024 rows (PostHog's hold 8,192): the demo's 46,000 events then cost
    // their queries what a table a few times larger would.
    let posthog = PostHogStandIn::start(
        PostHogConfig {
            storage: Storage {
                granule_rows: 1_024,
                block_rows: 1_024,
                ..Storage::default()
            },
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

    tracing::info!(
        "demo: PostHog stand-in at {} holding {} rows ({} duplicate rows, a microsecond with 6,000 events); webhook stand-in at {}",
        posthog.url(),
        HumanCount(events.len() as u64),
        duplicates.len(),
        webhook.server.addr
    );
    let state = tempfile::tempdir().context("cannot create a temporary directory")?;
    // The same settings route as a user's command line: nothing here is demo-only.
    let ph = posthog.config();
    let key_file = state.path().join("api-key");
    std::fs::write(&key_file, &ph.api_key).context("cannot write the demo's key file")?;
    let checkpoint = state.path().join("demo.json");
    let argv: Vec<std::ffi::OsString> = [
        "posthog-patterns",
        "backfill",
        "--host",
        &posthog.url(),
        "--project",
        &ph.project_id,
        "--webhook-url",
        &webhook.url(),
        "--start",
        &format_ts(&start),
        "--end",
        &format_ts(&end),
        "--page-size",
        "5000",
        "--batch-size",
        "1000",
        "--concurrency",
        "4",
        "--http-timeout",
        "30s",
    ]
    .into_iter()
    .map(Into::into)
    .chain([
        "--api-key-file".into(),
        key_file.into(),
        "--checkpoint".into(),
        checkpoint.into(),
    ])
    .collect();
    let Command::Backfill(args) = Cli::try_parse_from(argv)?.command else {
        bail!("the demo's command line is a backfill");
    };
    let cfg = BackfillConfig::from_args(&args)?;
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
    let (read, returned) = posthog.with_state(|s| (s.cost.bytes_read, s.cost.bytes_returned));
    Ok(Report {
        exit: EXIT_OK,
        summary: format!(
            "{}\ndemo check passed: all {} events of the range arrived exactly once at the webhook ({} received, 0 missing, 0 duplicated, 0 outside the range)\nPostHog read {} to deliver {} of events as stored: {:.2} bytes read per byte delivered, plans included",
            report.summary,
            HumanCount(expected.len() as u64),
            HumanCount(received as u64),
            indicatif::HumanBytes(read),
            indicatif::HumanBytes(returned),
            read as f64 / returned.max(1) as f64
        ),
    })
}
