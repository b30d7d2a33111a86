//! The benchmark: the real binary (release build) runs `backfill` from the PostHog stand-in
//! and `send` from an NDJSON file of the same events, into a webhook stand-in that counts
//! what arrives; all stand-ins in this process, on loopback. The events are realistic
//! (posthog-js-shaped, about 2 KB or 3 KB each). Prints, per scenario, the median of several
//! runs: events/s, MB/s of posted JSON, the binary's own CPU seconds per million events and
//! per GB, its peak memory, requests made, events per PostHog query; then a run against a
//! PostHog whose queries take time and of which 3 run at once, next to its lower bound.
//! Every run is checked: each event arrived exactly once, or the benchmark fails.
//!
//!     cargo bench --bench throughput
//!
//! Every backfill also prints what the PostHog stand-in read for it, costed as ClickHouse
//! reads PostHog's table (docs/performance.md): bytes read per byte of the events delivered
//! (as stored, plans included), and queries lost to PostHog's 10 s limit.
//!
//! Environment: BENCH_RUNS (runs per scenario, default 3), BENCH_RUNS_1M (runs of the
//! million-event scenarios, default BENCH_RUNS), BENCH_ONLY=text (only scenarios whose name
//! holds it), BENCH_QUICK=1 (a hundredth of the events: checks the benchmark itself),
//! BENCH_BIN=path (another build of posthog-patterns, e.g. an older one, to compare; a run
//! of it that fails is reported, not fatal).

use chrono::{DateTime, Duration as Days, Utc};
use posthog_patterns_standin::data::uuid_number;
use posthog_patterns_standin::{
    CostTotals, HEAVY_EVENT_BYTES, PostHogConfig, PostHogStandIn, QueryCost, Storage, StoredEvent,
    TYPICAL_EVENT_BYTES, WebhookConfig, WebhookStandIn, realistic_events,
};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary measured: this build, or `BENCH_BIN`.
fn bin() -> String {
    std::env::var("BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_posthog-patterns").into())
}

/// Whether another build is measured: its failures are figures, not bugs of this one.
fn comparing() -> bool {
    std::env::var_os("BENCH_BIN").is_some()
}
const START: &str = "2024-01-01T00:00:00Z";
/// Lean events for the events-per-query target (≤ 1 KB on average as posted).
const LEAN_EVENT_BYTES: usize = 800;
/// The latency runs: what one query takes (1.5 s is what the issue measured PostHog at), and
/// PostHog's cap on queries at once.
const QUERY_LATENCIES: [Duration; 2] = [Duration::from_millis(500), Duration::from_millis(1500)];
const POSTHOG_MAX_CONCURRENT_QUERIES: usize = 3;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Backfill,
    Send,
}

struct Scenario {
    name: String,
    kind: Kind,
    events: usize,
    event_bytes: usize,
    /// The range's length: the same events over fewer days are denser.
    days: i64,
    extra: &'static [&'static str],
    /// The PostHog stand-in: its layout, and what its queries cost in time.
    posthog: PostHogConfig,
}

/// What one run measured.
#[derive(Clone, Copy)]
struct Sample {
    secs: f64,
    cpu_secs: f64,
    peak_rss_mib: f64,
    events: usize,
    json_bytes: u64,
    wire_bytes: u64,
    posthog_requests: usize,
    posthog_queries: usize,
    webhook_requests: usize,
    /// The run's exit code and the events of the range that arrived (only a run of
    /// `BENCH_BIN` may fail).
    exit: i32,
    delivered: usize,
    /// What PostHog read for the run (all queries) and returned (events, as stored).
    bytes_read: u64,
    plan_bytes_read: u64,
    bytes_returned: u64,
    rows_read: u64,
    /// Queries PostHog answered 504 (its 10 s limit).
    lost: usize,
}

fn main() {
    let settings = Settings::from_env();
    let scenarios = scenarios(settings.scale);
    println!(
        "posthog-patterns benchmark: median of {} runs ({} for 1M events), {} CPU cores; default settings{}",
        settings.runs,
        settings.runs_1m,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if settings.scale > 1 {
            " (BENCH_QUICK: a hundredth of the events)"
        } else {
            ""
        }
    );
    print_header();
    for scenario in scenarios.iter().filter(|s| s.name.contains(&settings.only)) {
        let runs = if scenario.events >= 1_000_000 / settings.scale {
            settings.runs_1m
        } else {
            settings.runs
        };
        let samples = run_scenario(scenario, runs);
        print_row(&scenario.name, &samples);
    }
    for latency in QUERY_LATENCIES {
        latency_run(
            200_000 / settings.scale,
            settings.runs,
            &settings.only,
            latency,
        );
    }
    sync_runs(
        1_000_000 / 7 / settings.scale,
        settings.runs,
        &settings.only,
    );
}

struct Settings {
    runs: usize,
    runs_1m: usize,
    only: String,
    scale: usize,
}

impl Settings {
    fn from_env() -> Self {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        let runs = number("BENCH_RUNS").unwrap_or(3).max(1);
        Settings {
            runs,
            runs_1m: number("BENCH_RUNS_1M").unwrap_or(runs).max(1),
            only: std::env::var("BENCH_ONLY").unwrap_or_default(),
            scale: if number("BENCH_QUICK").unwrap_or(0) == 1 {
                100
            } else {
                1
            },
        }
    }
}

/// Four shards, two parts a shard, granules of 8,192 rows: the stand-in's defaults; no cap
/// on rows read (the tests' stand-in has one, so that small data can hit a limit): PostHog
/// limits queries by time, which `slow_posthog` models.
fn stand_in() -> PostHogConfig {
    PostHogConfig {
        max_scan_rows: usize::MAX,
        ..PostHogConfig::default()
    }
}

/// What the issue measured large projects at: 1.5 s a query, plus 200 ms per MiB the busiest
/// shard reads, and PostHog's 10 s limit, in real time.
fn slow_posthog() -> PostHogConfig {
    PostHogConfig {
        cost: Some(QueryCost {
            base: Duration::from_millis(1_500),
            per_mb: Duration::from_millis(200),
            per_1000_rows: Duration::ZERO,
            cap: Duration::from_secs(10),
            scale: 1.0,
        }),
        max_concurrent_queries: Some(POSTHOG_MAX_CONCURRENT_QUERIES),
        ..stand_in()
    }
}

fn scenarios(scale: usize) -> Vec<Scenario> {
    let mut out = Vec::new();
    for (kind, command) in [(Kind::Backfill, "backfill"), (Kind::Send, "send")] {
        for (bytes, size) in [(TYPICAL_EVENT_BYTES, "2 KB"), (HEAVY_EVENT_BYTES, "3 KB")] {
            for (n, count) in [(100_000, "100k"), (1_000_000, "1M")] {
                out.push(Scenario {
                    name: format!("{command} {count} × {size}"),
                    kind,
                    events: n / scale,
                    event_bytes: bytes,
                    days: 30,
                    extra: &[],
                    posthog: stand_in(),
                });
            }
        }
    }
    out.push(Scenario {
        name: "backfill 1M × 1 KB, dense (7 days)".into(),
        kind: Kind::Backfill,
        events: 1_000_000 / scale,
        event_bytes: LEAN_EVENT_BYTES,
        days: 7,
        extra: &[],
        posthog: stand_in(),
    });
    out.push(Scenario {
        name: "backfill 400k × 1 KB, 2 days".into(),
        kind: Kind::Backfill,
        events: 400_000 / scale,
        event_bytes: LEAN_EVENT_BYTES,
        days: 2,
        extra: &[],
        posthog: stand_in(),
    });
    out.push(Scenario {
        name: "backfill 200k × 1 KB, sparse (10 days)".into(),
        kind: Kind::Backfill,
        events: 200_000 / scale,
        event_bytes: LEAN_EVENT_BYTES,
        days: 10,
        extra: &[],
        posthog: stand_in(),
    });
    // The same, on a stand-in kinder than the cost table: other columns read only for the rows
    // that pass (as if PREWHERE skipped by row), the assumption the figures rest on.
    out.push(Scenario {
        name: "backfill 400k × 1 KB, 2 days, rows read by row".into(),
        kind: Kind::Backfill,
        events: 400_000 / scale,
        event_bytes: LEAN_EVENT_BYTES,
        days: 2,
        extra: &[],
        posthog: PostHogConfig {
            storage: Storage {
                block_rows: 1,
                ..Storage::default()
            },
            ..stand_in()
        },
    });
    // A day PostHog cannot read whole within its 10 s: 200,000 events of 1 KB, 50 MB a shard,
    // 11.5 s. At most 3 queries at once, as PostHog runs them.
    out.push(Scenario {
        name: "backfill 400k × 1 KB, 2 days, slow PostHog".into(),
        kind: Kind::Backfill,
        events: 400_000 / scale,
        event_bytes: LEAN_EVENT_BYTES,
        days: 2,
        extra: &["--max-run-time", "15m"],
        posthog: slow_posthog(),
    });
    out.push(Scenario {
        name: "backfill 100k × 2 KB, --compress gzip".into(),
        kind: Kind::Backfill,
        events: 100_000 / scale,
        event_bytes: TYPICAL_EVENT_BYTES,
        days: 30,
        extra: &["--compress", "gzip"],
        posthog: stand_in(),
    });
    out
}

fn start() -> DateTime<Utc> {
    START.parse().expect("a valid time")
}

/// The events of a scenario, and the uuids of those inside its range (what must arrive).
fn generate(s: &Scenario) -> (Vec<StoredEvent>, HashSet<u128>) {
    let end = start() + Days::days(s.days);
    let events = realistic_events(s.events, start(), end, 42, s.event_bytes);
    let expected = events
        .iter()
        .filter(|e| e.timestamp >= start() && e.timestamp < end)
        .filter_map(|e| uuid_number(&e.uuid))
        .collect();
    (events, expected)
}

/// Where a scenario's events come from: the PostHog stand-in, or an NDJSON file.
enum Input {
    PostHog(PostHogStandIn),
    /// The directory is held so that the file lives as long as the scenario.
    File {
        path: PathBuf,
        _dir: tempfile::TempDir,
    },
}

fn run_scenario(s: &Scenario, runs: usize) -> Vec<Sample> {
    let (events, expected) = generate(s);
    let input = match s.kind {
        Kind::Backfill => Input::PostHog(PostHogStandIn::start(s.posthog.clone(), events)),
        Kind::Send => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let path = dir.path().join("events.ndjson");
            write_ndjson(&path, events, s);
            Input::File { path, _dir: dir }
        }
    };
    (0..runs).map(|_| run_once(s, &input, &expected)).collect()
}

/// The events of the scenario's range as `backfill` would post them, one a line.
fn write_ndjson(path: &Path, events: Vec<StoredEvent>, s: &Scenario) {
    let end = start() + Days::days(s.days);
    let file = std::fs::File::create(path).expect("the NDJSON file");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    for e in events
        .iter()
        .filter(|e| e.timestamp >= start() && e.timestamp < end)
    {
        writeln!(out, "{}", e.posted_json(4242)).expect("writing the NDJSON file");
    }
    out.flush().expect("writing the NDJSON file");
}

fn run_once(s: &Scenario, input: &Input, expected: &HashSet<u128>) -> Sample {
    let webhook = WebhookStandIn::start(WebhookConfig {
        count_only: true,
        ..WebhookConfig::default()
    });
    let state = tempfile::tempdir().expect("a state directory");
    let mut cmd = Command::new(bin());
    cmd.env("PATTERNS_WEBHOOK_URL", webhook.url())
        .env("POSTHOG_PATTERNS_STATE_DIR", state.path());
    let cost_before = match input {
        Input::PostHog(posthog) => posthog.with_state(|st| st.cost),
        Input::File { .. } => CostTotals::default(),
    };
    let logged_before = match input {
        Input::PostHog(posthog) => {
            cmd.args(backfill_args(s.days));
            connect(&mut cmd, posthog);
            posthog.with_state(|st| st.log.len())
        }
        Input::File { path, .. } => {
            cmd.arg("send").arg(path);
            0
        }
    };
    cmd.arg("--quiet").args(s.extra);
    let measured = measure(&mut cmd);
    if !comparing() {
        assert_eq!(measured.status, 0, "{}: the run failed", s.name);
    }
    let (posthog_requests, posthog_queries) = match input {
        Input::PostHog(posthog) => requests_since(posthog, logged_before),
        Input::File { .. } => (0, 0),
    };
    let (cost, plan_bytes_read, lost) = match input {
        Input::PostHog(posthog) => posthog.with_state(|st| {
            let new = &st.log[logged_before..];
            let plans = new
                .iter()
                .filter(|l| l.sql.as_deref().is_some_and(|q| q.contains("count()")))
                .map(|l| l.reads.bytes_read)
                .sum();
            let lost = new.iter().filter(|l| l.status == 504).count();
            if std::env::var_os("BENCH_LOG").is_some() {
                for l in new {
                    let sql = l.sql.as_deref().unwrap_or("");
                    println!(
                        "  {} {:.60} returned {} read {} ({:.1} s at PostHog)",
                        l.status,
                        sql,
                        l.reads.rows_returned,
                        l.reads.bytes_read,
                        l.reads.query_time.as_secs_f64()
                    );
                }
            }
            (st.cost, plans, lost)
        }),
        Input::File { .. } => (CostTotals::default(), 0, 0),
    };
    let (json_bytes, wire_bytes, webhook_requests, delivered) = if comparing() {
        webhook.with_state(|w| {
            let c = &w.counted;
            let delivered = c.uuids.iter().filter(|u| expected.contains(u)).count();
            (c.json_bytes, w.wire_bytes, w.requests, delivered)
        })
    } else {
        let (json, wire, requests) = check_exactly_once(&s.name, &webhook, expected);
        (json, wire, requests, expected.len())
    };
    Sample {
        secs: measured.secs,
        cpu_secs: measured.cpu_secs,
        peak_rss_mib: measured.peak_rss_kib as f64 / 1024.0,
        events: expected.len(),
        json_bytes,
        wire_bytes,
        posthog_requests,
        posthog_queries,
        webhook_requests,
        exit: measured.status,
        delivered,
        bytes_read: cost.bytes_read - cost_before.bytes_read,
        plan_bytes_read,
        bytes_returned: cost.bytes_returned - cost_before.bytes_returned,
        rows_read: cost.rows_read - cost_before.rows_read,
        lost,
    }
}

/// `backfill` over `days` days from [`START`]. The request budget is off: the benchmark
/// measures the tool, not PostHog's published limits.
fn backfill_args(days: i64) -> Vec<String> {
    let end = start() + Days::days(days);
    [
        "backfill",
        "--start",
        START,
        "--end",
        &end.to_rfc3339(),
        "--max-requests-per-minute",
        "0",
        "--max-requests-per-hour",
        "0",
    ]
    .map(String::from)
    .to_vec()
}

fn connect(cmd: &mut Command, posthog: &PostHogStandIn) {
    let cfg = posthog.config();
    cmd.env("POSTHOG_HOST", posthog.url())
        .env("POSTHOG_PROJECT_ID", &cfg.project_id)
        .env("POSTHOG_API_KEY", &cfg.api_key);
}

/// PostHog requests since the log held `before` entries, and how many were queries.
fn requests_since(posthog: &PostHogStandIn, before: usize) -> (usize, usize) {
    posthog.with_state(|s| {
        let new = &s.log[before..];
        let queries = new.iter().filter(|l| l.path.contains("/query")).count();
        (new.len(), queries)
    })
}

/// Asserts that the webhook received exactly the expected events, each once; returns the
/// JSON and wire bytes it received and its requests.
fn check_exactly_once(
    name: &str,
    webhook: &WebhookStandIn,
    expected: &HashSet<u128>,
) -> (u64, u64, usize) {
    webhook.with_state(|s| {
        let c = &s.counted;
        assert!(
            c.events == expected.len() as u64
                && c.repeats == 0
                && c.without_uuid == 0
                && c.uuids == *expected,
            "{name}: not exactly once: received {} events ({} unique, {} repeats), expected {}",
            c.events,
            c.uuids.len(),
            c.repeats,
            expected.len()
        );
        (c.json_bytes, s.wire_bytes, s.requests)
    })
}

struct Measured {
    status: i32,
    secs: f64,
    cpu_secs: f64,
    peak_rss_kib: u64,
}

/// Runs `cmd` to its end: wall time, its own CPU time (user + system, from `wait4`'s
/// rusage: this process's stand-ins are not in it), and its peak resident memory (VmHWM,
/// sampled every 10 ms: `ru_maxrss` would carry this process's memory, which the child
/// shares until it execs, and this process holds the stand-ins' events).
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4 below"
)]
fn measure(cmd: &mut Command) -> Measured {
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let pid = child.id() as libc::pid_t;
    let status_file = format!("/proc/{pid}/status");
    let mut peak = 0;
    loop {
        peak = peak.max(vm_hwm_kib(&status_file).unwrap_or(0));
        let mut status = 0;
        // SAFETY: plain out-parameters; `pid` is our child, reaped here and nowhere else
        // (the `Child` is dropped without waiting).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(reaped >= 0, "wait4: {}", std::io::Error::last_os_error());
        if reaped == pid {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            return Measured {
                status: if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    -1
                },
                secs: started.elapsed().as_secs_f64(),
                cpu_secs: secs(usage.ru_utime) + secs(usage.ru_stime),
                peak_rss_kib: peak,
            };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn vm_hwm_kib(status_file: &str) -> Option<u64> {
    let text = std::fs::read_to_string(status_file).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

fn median(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_header() {
    println!(
        "{:<44} {:>8} {:>9} {:>7} {:>10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>7} {:>5}",
        "scenario",
        "event B",
        "events/s",
        "MB/s",
        "CPU s/1M",
        "CPU s/GB",
        "RSS MiB",
        "PH reqs",
        "WH reqs",
        "wire %",
        "ev/query",
        "read/B",
        "plan %",
        "rows/ev",
        "lost"
    );
}

fn print_row(name: &str, samples: &[Sample]) {
    let first = samples[0];
    let per_query = match first.posthog_queries {
        0 => "-".to_string(),
        q => format!("{:.0}", first.events as f64 / q as f64),
    };
    let cost = |v: f64| {
        if first.bytes_returned == 0 {
            "-".to_string()
        } else {
            format!("{v:.2}")
        }
    };
    let returned = first.bytes_returned.max(1) as f64;
    println!(
        "{:<44} {:>8.0} {:>9.0} {:>7.1} {:>10.2} {:>9.2} {:>9.1} {:>8} {:>8} {:>8.0} {:>9} {:>7} {:>7} {:>7} {:>5}",
        name,
        first.json_bytes as f64 / first.events as f64,
        median(samples, |s| s.events as f64 / s.secs),
        median(samples, |s| s.json_bytes as f64 / 1e6 / s.secs),
        median(samples, |s| s.cpu_secs / s.events as f64 * 1e6),
        median(samples, |s| s.cpu_secs / (s.json_bytes as f64 / 1e9)),
        median(samples, |s| s.peak_rss_mib),
        first.posthog_requests,
        first.webhook_requests,
        100.0 * first.wire_bytes as f64 / first.json_bytes as f64,
        per_query,
        cost(first.bytes_read as f64 / returned),
        cost(100.0 * first.plan_bytes_read as f64 / returned),
        cost(first.rows_read as f64 / first.events.max(1) as f64),
        first.lost,
    );
    if comparing() {
        println!(
            "{:<44} exit {}, {} of {} events delivered",
            "", first.exit, first.delivered, first.events
        );
    }
}

/// `--fetch-concurrency N` where the binary has it (PostHog queries at once), else 1.
fn fetch_concurrency() -> usize {
    let help = Command::new(bin())
        .args(["backfill", "--help"])
        .output()
        .expect("the binary starts");
    let has = String::from_utf8_lossy(&help.stdout).contains("--fetch-concurrency");
    if has {
        POSTHOG_MAX_CONCURRENT_QUERIES
    } else {
        1
    }
}

/// A backfill from a PostHog whose queries each take `latency`, at most 3 at once, next to
/// the least time those queries need, ⌈queries / N⌉ × latency, and to the time the same
/// backfill takes when queries cost nothing (what reading, parsing and posting the events
/// take on this machine: no overlap of queries can go below it).
fn latency_run(n: usize, runs: usize, only: &str, latency: Duration) {
    let scenario = Scenario {
        name: format!(
            "latency: backfill {}k × 2 KB, {} ms per query, {} at once",
            n / 1000,
            latency.as_millis(),
            POSTHOG_MAX_CONCURRENT_QUERIES
        ),
        kind: Kind::Backfill,
        events: n,
        event_bytes: TYPICAL_EVENT_BYTES,
        days: 30,
        extra: &[],
        posthog: stand_in(),
    };
    if !scenario.name.contains(only) {
        return;
    }
    let fetch = fetch_concurrency();
    let extra: &'static [&'static str] = if fetch > 1 {
        &["--fetch-concurrency", "3"]
    } else {
        &[]
    };
    let scenario = Scenario { extra, ..scenario };
    let (events, expected) = generate(&scenario);
    let measure = |latency: Duration, events: Vec<StoredEvent>| {
        let posthog = PostHogStandIn::start(
            PostHogConfig {
                query_latency: latency,
                max_concurrent_queries: Some(POSTHOG_MAX_CONCURRENT_QUERIES),
                ..stand_in()
            },
            events,
        );
        let input = Input::PostHog(posthog);
        let samples: Vec<Sample> = (0..runs)
            .map(|_| run_once(&scenario, &input, &expected))
            .collect();
        let Input::PostHog(posthog) = &input else {
            unreachable!("started above")
        };
        let (refused, peak) =
            posthog.with_state(|s| (s.queries_refused_for_concurrency, s.queries_running_peak));
        (samples, refused, peak)
    };
    let (samples, refused, peak) = measure(latency, events.clone());
    let (floor, _, _) = measure(Duration::ZERO, events);
    let queries = samples[0].posthog_queries;
    let bound = queries.div_ceil(fetch) as f64 * latency.as_secs_f64();
    let wall = median(&samples, |s| s.secs);
    let floor = median(&floor, |s| s.secs);
    println!();
    println!(
        "{}: --fetch-concurrency {}{}",
        scenario.name,
        fetch,
        if fetch > 1 {
            ""
        } else {
            " (the binary has no --fetch-concurrency: 1 query at a time)"
        }
    );
    println!(
        "  wall {wall:.1} s; lower bound ⌈{queries} queries / {fetch}⌉ × {:.1} s = {bound:.1} s; ratio {:.2}; queries refused for concurrency: {refused}; most at once: {peak}",
        latency.as_secs_f64(),
        wall / bound
    );
    println!(
        "  the same without query latency: {floor:.1} s; wall over the larger of the two bounds: {:.2}",
        wall / bound.max(floor)
    );
}

/// `sync` from cron every 15 minutes at the default `--lookback` (7 days) and `--lag` (5
/// minutes), for a project with `per_day` events a day: what each run makes PostHog read
/// (its plan counts the key columns and `created_at` of every day in the lookback; PostHog
/// cannot find rows by ingestion time), next to what it delivers.
fn sync_runs(per_day: usize, runs: usize, only: &str) {
    let name = format!("sync every 15 min, {per_day} events a day, --lookback 7d");
    if !name.contains(only) {
        return;
    }
    let now = Utc::now();
    let minutes = |m: i64| chrono::Duration::minutes(m);
    let history = realistic_events(
        per_day * 8,
        now - Days::days(8),
        now - minutes(20),
        61,
        LEAN_EVENT_BYTES,
    );
    let posthog = PostHogStandIn::start(stand_in(), history);
    let webhook = WebhookStandIn::start(WebhookConfig {
        count_only: true,
        ..WebhookConfig::default()
    });
    let state = tempfile::tempdir().expect("a state directory");
    let sync = |extra: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.env("PATTERNS_WEBHOOK_URL", webhook.url())
            .env("POSTHOG_PATTERNS_STATE_DIR", state.path())
            .args([
                "sync",
                "--quiet",
                "--max-requests-per-minute",
                "0",
                "--max-requests-per-hour",
                "0",
            ])
            .args(extra);
        connect(&mut cmd, &posthog);
        measure(&mut cmd)
    };
    let start = (now - Days::days(8)).to_rfc3339();
    assert_eq!(
        sync(&["--start", &start]).status,
        0,
        "{name}: the first run failed"
    );
    println!();
    println!("{name}:");
    let mut ratios = Vec::new();
    for run in 0..runs.max(1) {
        // A quarter of an hour passes; its events arrive, a twentieth of them a day late.
        posthog.advance_clock(minutes(15));
        let ph_now = posthog.now();
        let n = per_day / 96;
        let mut new = realistic_events(
            n,
            ph_now - minutes(25),
            ph_now - minutes(10),
            62 + run as u64,
            LEAN_EVENT_BYTES,
        );
        for (i, e) in new.iter_mut().enumerate() {
            if i % 20 == 0 {
                e.timestamp -= Days::days(1);
            }
            e.created_at = ph_now - minutes(10);
        }
        posthog.insert(new);
        let (before, logged) = posthog.with_state(|s| (s.cost, s.log.len()));
        let delivered_before = webhook.with_state(|w| w.counted.events);
        let measured = sync(&[]);
        assert_eq!(measured.status, 0, "{name}: a run failed");
        let (after, queries) = posthog.with_state(|s| {
            let new = &s.log[logged..];
            if std::env::var_os("BENCH_LOG").is_some() {
                for l in new {
                    println!(
                        "    {} {:.70} returned {} read {}",
                        l.status,
                        l.sql.as_deref().unwrap_or(""),
                        l.reads.rows_returned,
                        l.reads.bytes_read
                    );
                }
            }
            (
                s.cost,
                new.iter().filter(|l| l.path.contains("/query")).count(),
            )
        });
        let delivered = webhook.with_state(|w| w.counted.events) - delivered_before;
        let read = after.bytes_read - before.bytes_read;
        let returned = after.bytes_returned - before.bytes_returned;
        ratios.push(read as f64 / returned.max(1) as f64);
        println!(
            "  run {}: {delivered} events delivered ({:.1} MB as stored) in {queries} queries, {:.1} s; PostHog read {:.1} MB ({:.1} bytes per byte delivered)",
            run + 1,
            returned as f64 / 1e6,
            measured.secs,
            read as f64 / 1e6,
            read as f64 / returned.max(1) as f64
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "  median: {:.1} bytes read per byte delivered",
        ratios[ratios.len() / 2]
    );
}
