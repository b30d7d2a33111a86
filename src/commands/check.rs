//! `config check COMMAND [flags]`: validates the settings a command would run with (flags,
//! environment and `--config` file merged), prints them with secrets redacted, and for
//! `backfill` and `sync` says what a run would read: the range, an estimate of the events
//! (PostHog `count()` queries, one per month at most), the requests, and the time the request
//! budget needs for them; for `backfill` and `export`, it refuses an `--end` in the future by
//! PostHog's clock, as a run would. Sends nothing to the webhook and writes no state.

use crate::cli::CheckedCommand;
use crate::commands::backfill::BackfillConfig;
use crate::commands::runner;
use crate::commands::sync::SyncState;
use crate::domain::{Cursor, Filters, Range, SourceKind};
use crate::error::EXIT_OK;
use crate::event::format_ts;
use crate::ndjson::files::SendState;
use crate::net::retry::GaveUp;
use crate::posthog::error::ApiError;
use crate::posthog::hogql;
use crate::posthog::source::Connect;
use crate::progress::{Progress, count, human_duration};
use crate::settings::Connection;
use anyhow::Context;
use chrono::Duration;
use indicatif::HumanCount;
use std::sync::Arc;

/// A line of the report on stdout. A reader that stops early (`| head -1`) is no error: the
/// check goes on, its exit code still says whether the settings are good.
/// With `--log-format json` the lines are gathered instead, and printed as one object.
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        let mut json = JSON.lock().unwrap_or_else(|e| e.into_inner());
        match json.as_mut() {
            Some(lines) => lines.push(line),
            None => {
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout(), "{line}");
            }
        }
    }};
}

/// The report's lines, while they are gathered for one JSON object.
static JSON: std::sync::Mutex<Option<Vec<String>>> = std::sync::Mutex::new(None);

/// The report as one JSON object: `label: value` for each line (`label   value`), lines
/// without a label, such as a checkpoint's details, under the label before them.
fn json_report(lines: Vec<String>) -> String {
    let mut check = serde_json::Map::new();
    let mut last = String::from("check");
    for line in lines.into_iter().filter(|l| l != "settings OK") {
        let (label, value) = match line.split_once("  ") {
            Some((l, v)) if !l.trim().is_empty() => {
                (l.trim().replace(' ', "_"), v.trim().to_string())
            }
            _ => (last.clone(), line.trim().to_string()),
        };
        let entry = check
            .entry(label.clone())
            .or_insert(serde_json::Value::Null);
        *entry = match entry.take() {
            serde_json::Value::Null => value.into(),
            serde_json::Value::String(before) => format!("{before}; {value}").into(),
            other => other,
        };
        last = label;
    }
    let fields = [("check".to_string(), serde_json::Value::Object(check))]
        .into_iter()
        .collect();
    crate::log::json_line(crate::log::Level::Info, "settings OK", fields)
}

pub(crate) fn run(command: &CheckedCommand) -> anyhow::Result<u8> {
    let json = command.log_format() == crate::log::LogFormat::Json;
    *JSON.lock().unwrap_or_else(|e| e.into_inner()) = json.then(Vec::new);
    let code = check(command)?;
    if let Some(lines) = JSON.lock().unwrap_or_else(|e| e.into_inner()).take() {
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), "{}", json_report(lines));
    }
    Ok(code)
}

fn check(command: &CheckedCommand) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let silent = Arc::new(Progress::silent());
    runtime.block_on(async {
        match command {
            CheckedCommand::Backfill(args) => check_backfill(args, &silent).await?,
            CheckedCommand::Sync(args) => check_sync(args, &silent).await?,
            CheckedCommand::Export(args) => check_export(args, &silent).await?,
            CheckedCommand::Send(args) => check_send(args).await?,
        }
        say!("settings OK");
        Ok(EXIT_OK)
    })
}

/// `config check backfill`: the settings, the checkpoint, the webhook reached, the range by PostHog's clock and what reading it would take.
async fn check_backfill(
    args: &crate::cli::BackfillArgs,
    silent: &Arc<Progress>,
) -> anyhow::Result<()> {
    let mut cfg = BackfillConfig::from_args(args)?;
    print_connection(&cfg.read.connection, cfg.read.source);
    say!("webhook           {}", cfg.webhook.url.redacted());
    say!(
        "range             {} → {}",
        format_ts(&cfg.range.start),
        format_ts(&cfg.range.end)
    );
    print_filters(&cfg.read.filters);
    say!("page size         {}", cfg.read.page_size);
    say!("trusted roots     {}", cfg.ca_certs.describe());
    print_batches(&cfg.webhook);
    let (path, state) = runner::peek::<Cursor>("backfill", &cfg.job_id(), &cfg.resume)?;
    say!("checkpoint        {}", path.display());
    if let Some(state) = state {
        say!(
            "                  complete: {}, position: {}",
            state.complete,
            serde_json::to_value(&state.position)?
        );
    }
    let connect = Connect::new(&cfg.read, &cfg.retries, &cfg.ca_certs, silent)?;
    reach_webhook(&connect.http, &cfg.webhook).await?;
    let kind = ask_api(&connect, cfg.read.source).await?;
    if cfg.spec.is_relative() {
        cfg.range = cfg.spec.resolve(connect.now(kind).await?)?;
        say!(
            "                  by PostHog's clock now: {} → {}",
            format_ts(&cfg.range.start),
            format_ts(&cfg.range.end)
        );
    }
    connect
        .refuse_future_end(kind, &cfg.range, "backfill")
        .await?;
    estimate(
        &connect,
        kind,
        cfg.range,
        &cfg.read.filters,
        None,
        cfg.read.page_size,
        cfg.webhook.posting.limits.max_events,
    )
    .await?;
    Ok(())
}

/// `config check sync`: the settings, the state, the webhook reached, and what the next run would read.
async fn check_sync(args: &crate::cli::SyncArgs, silent: &Arc<Progress>) -> anyhow::Result<()> {
    let cfg = crate::commands::sync::SyncConfig::from_args(args)?;
    print_connection(&cfg.read.connection, cfg.read.source);
    say!("webhook           {}", cfg.webhook.url.redacted());
    print_filters(&cfg.read.filters);
    say!("trusted roots     {}", cfg.ca_certs.describe());
    say!(
        "lookback, lag     {}, {}",
        human(cfg.lookback),
        human(cfg.lag)
    );
    let (path, state) = runner::peek::<SyncState>("sync", &cfg.job_id(), &cfg.resume)?;
    say!("state             {}", path.display());
    let connect = Connect::new(&cfg.read, &cfg.retries, &cfg.ca_certs, silent)?;
    reach_webhook(&connect.http, &cfg.webhook).await?;
    // The run's own plan, by PostHog's clock as a run plans.
    let kind = ask_api(&connect, cfg.read.source).await?;
    let now = connect.now(kind).await?;
    let sync = match state {
        Some(state) => {
            let sync = state.position.context("a sync state has a position")?;
            say!(
                "                  started {}, watermark {}{}",
                format_ts(&sync.start),
                sync.watermark.map_or("none yet".into(), |w| format_ts(&w)),
                if sync.pending.is_some() {
                    ", a run to finish"
                } else {
                    ""
                }
            );
            sync
        }
        None => {
            let start = cfg
                .start
                .as_ref()
                .context("the first sync run needs --start DATE")?
                .resolve(now);
            say!(
                "                  none yet: the first run starts at {}",
                format_ts(&start)
            );
            SyncState {
                start,
                watermark: None,
                pending: None,
            }
        }
    };
    // A run to finish first, else the next one.
    let Some(next) = sync
        .pending
        .clone()
        .or_else(|| crate::commands::sync::next_run(&cfg, kind, &sync, now))
    else {
        say!("next run          nothing new can have been ingested yet");
        return Ok(());
    };
    say!(
        "next run          ingested up to {}",
        format_ts(&next.until)
    );
    estimate(
        &connect,
        kind,
        next.range(),
        &cfg.read.filters,
        next.ingested(kind),
        cfg.read.page_size,
        cfg.webhook.posting.limits.max_events,
    )
    .await?;
    Ok(())
}

/// `config check export`: the settings, the output, and the range by PostHog's clock.
async fn check_export(args: &crate::cli::ExportArgs, silent: &Arc<Progress>) -> anyhow::Result<()> {
    let mut cfg = crate::commands::export::ExportConfig::from_args(args)?;
    print_connection(&cfg.read.connection, cfg.read.source);
    say!(
        "range             {} → {}",
        format_ts(&cfg.range.start),
        format_ts(&cfg.range.end)
    );
    print_filters(&cfg.read.filters);
    say!("trusted roots     {}", cfg.ca_certs.describe());
    say!(
        "output            {}",
        cfg.output
            .as_ref()
            .map_or("stdout".into(), |p| p.display().to_string())
    );
    let connect = Connect::new(&cfg.read, &cfg.retries, &cfg.ca_certs, silent)?;
    let kind = ask_api(&connect, cfg.read.source).await?;
    if cfg.spec.is_relative() {
        cfg.range = cfg.spec.resolve(connect.now(kind).await?)?;
    }
    connect
        .refuse_future_end(kind, &cfg.range, "export")
        .await?;
    Ok(())
}

/// `config check send`: the settings and the webhook reached.
async fn check_send(args: &crate::cli::SendArgs) -> anyhow::Result<()> {
    let cfg = crate::commands::send::SendConfig::from_args(args)?;
    say!("webhook           {}", cfg.webhook.url.redacted());
    say!(
        "input             {}",
        if cfg.files.is_empty() {
            "stdin".into()
        } else {
            count(cfg.files.len() as u64, "file", "files")
        }
    );
    print_filters(&cfg.filters);
    print_batches(&cfg.webhook);
    say!("invalid lines     {:?}", cfg.on_invalid);
    say!("trusted roots     {}", cfg.ca_certs.describe());
    // From files, the checkpoint as a run would read it (from stdin there is none).
    if !cfg.files.is_empty() {
        let job = cfg.job_id(&cfg.inputs());
        let (path, state) = runner::peek::<SendState>("send", &job, &cfg.resume)?;
        say!("checkpoint        {}", path.display());
        if let Some(state) = state {
            let recorded = state
                .position
                .map_or(0, |p| p.files.iter().flatten().count());
            say!(
                "                  complete: {}, {} recorded, {} posted",
                state.complete,
                count(recorded as u64, "file", "files"),
                HumanCount(state.counters.posted)
            );
        }
    }
    let http = crate::net::http::client(cfg.retries.http_timeout, &cfg.ca_certs)?;
    reach_webhook(&http, &cfg.webhook).await?;
    Ok(())
}

fn print_connection(c: &Connection, source: SourceKind) {
    say!("posthog host      {}", c.host);
    say!("project           {}", c.project);
    say!(
        "api key           {} ({})",
        c.api_key,
        c.api_key.fingerprint()
    );
    say!("source            {}", source.name());
}

fn print_batches(webhook: &crate::settings::Webhook) {
    let limits = webhook.posting.limits;
    say!(
        "batches           {}, {} bytes of JSON, {} at once",
        count(limits.max_events as u64, "event", "events"),
        limits.max_bytes,
        webhook.posting.concurrency
    );
    let compress = match webhook.compress {
        crate::cli::Compress::None => "none",
        crate::cli::Compress::Gzip => "gzip (Content-Encoding: gzip)",
    };
    say!("compression       {compress}");
}

fn print_filters(f: &Filters) {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    say!(
        "events            {}; excluded: {}",
        list(&f.include),
        list(&f.exclude)
    );
}

fn human(d: Duration) -> String {
    human_duration(d.to_std().unwrap_or_default())
}

/// Proves the webhook can be reached without posting an event: one `HEAD` (never `GET`:
/// catch-hook webhooks fire on it), no redirect followed. A name that resolves, a connection,
/// a TLS handshake and an HTTP answer of any status are enough.
async fn reach_webhook(
    http: &reqwest::Client,
    webhook: &crate::settings::Webhook,
) -> anyhow::Result<()> {
    let req = http
        .head(webhook.url.url().clone())
        .headers(webhook.headers.clone());
    match crate::net::http::send(req, crate::net::http::Body::AckOrExcerpt).await {
        Ok(reply) => {
            say!(
                "webhook reached   HEAD answered HTTP {} (nothing was posted)",
                reply.status
            );
            Ok(())
        }
        Err(e) => anyhow::bail!(
            "the webhook at {} cannot be reached ({}): check --webhook-url; a run would retry and then stop with exit 75",
            webhook.url.redacted(),
            match e {
                crate::net::http::SendError::Timeout => "no answer within --http-timeout".into(),
                crate::net::http::SendError::Transport(m) => m,
                crate::net::http::SendError::TooLarge(_) => "an answer too large".into(),
            }
        ),
    }
}

/// The API a run would read from, asked as the run asks.
async fn ask_api(connect: &Connect<'_>, requested: SourceKind) -> anyhow::Result<SourceKind> {
    let kind = connect.choose(requested, None).await?;
    say!("PostHog API       {} (answered)", kind.name());
    Ok(kind)
}

/// The most count() queries an estimate makes.
const ESTIMATE_QUERIES: i32 = 12;

/// Counts the events a run would read (Query API) and turns that into requests and time.
#[allow(clippy::too_many_arguments)]
async fn estimate(
    connect: &Connect<'_>,
    kind: SourceKind,
    range: Range,
    filters: &Filters,
    ingested: Option<hogql::Ingested>,
    page_size: usize,
    batch_size: usize,
) -> anyhow::Result<()> {
    let (per_minute, per_hour) = connect.retries.limits(kind);
    let client = connect.client(kind);
    if kind == SourceKind::Events {
        // One real request, so that a wrong key or project fails the check here too.
        client
            .now(kind)
            .await
            .map_err(|e| e.into_error("asking PostHog's Events API"))?;
        say!("estimate          not available from the Events API (it cannot count)");
        return Ok(());
    }
    // At most ESTIMATE_QUERIES count() queries, whatever the range: windows of at least
    // 31 days, wider for longer ranges.
    let width = ((range.end - range.start) / ESTIMATE_QUERIES).max(Duration::days(31));
    let mut total = 0u64;
    let mut windows = 0u64;
    let mut start = range.start;
    while start < range.end {
        let end = start
            .checked_add_signed(width)
            .map_or(range.end, |e| e.min(range.end));
        let scope = hogql::Scope {
            filters,
            ingested,
            tie: None,
        };
        let body = hogql::count(&Range { start, end }, &scope);
        let reply = match client.post_page("query/", &body).await {
            Ok(reply) => reply,
            // Too slow to count is no fault of the settings: the check still passes.
            Err(GaveUp::Fatal(ApiError::TooSlow { status })) => {
                say!(
                    "estimate          unavailable (PostHog could not count the events in time: HTTP {status})"
                );
                return Ok(());
            }
            Err(e) => return Err(e.into_error("counting events")),
        };
        let v: serde_json::Value = serde_json::from_slice(&reply)?;
        total += v["results"][0][0]
            .as_u64()
            .context("PostHog's count() answer has no number")?;
        windows += 1;
        start = end;
    }
    let reads = total.div_ceil(page_size as u64) + windows;
    let posts = total.div_ceil(batch_size as u64);
    let minutes = if per_minute == 0 {
        0
    } else {
        reads / per_minute as u64
    };
    let hours = if per_hour == 0 {
        0
    } else {
        reads / per_hour as u64
    };
    let budget = std::time::Duration::from_secs((minutes * 60).max(hours * 3600));
    say!(
        "events            about {} (count() over {})",
        HumanCount(total),
        count(windows, "window", "windows")
    );
    say!(
        "requests          about {} to PostHog, {} to the webhook",
        HumanCount(reads),
        HumanCount(posts)
    );
    say!(
        "request budget    {per_minute}/minute, {per_hour}/hour: at least {} for the PostHog requests",
        if budget.is_zero() {
            "no wait".into()
        } else {
            human_duration(budget)
        }
    );
    Ok(())
}
