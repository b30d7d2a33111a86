//! The benchmark: the real binary (release build) exports synthetic events from the PostHog
//! stand-in to the webhook stand-in, both in this process on loopback. Prints, per scenario,
//! the median of several runs: events/s, the binary's peak memory, and requests made; and
//! checks every run delivered each event exactly once.
//!
//!     cargo bench --bench throughput            # BENCH_RUNS=5 for more runs

use posthog_patterns_standin::{
    PostHogConfig, PostHogStandIn, WebhookConfig, WebhookStandIn, synthetic_events,
};
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Sample {
    events_per_sec: f64,
    peak_rss_mib: f64,
    posthog_requests: usize,
    webhook_requests: usize,
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let scenarios: [(&str, usize, u64, &str); 4] = [
        ("200k events, webhook answers at once", 200_000, 0, "4"),
        ("200k events, webhook takes 20 ms", 200_000, 20, "4"),
        ("same, --concurrency 1", 200_000, 20, "1"),
        ("1M events, webhook answers at once", 1_000_000, 0, "4"),
    ];
    println!("posthog-patterns benchmark: median of {runs} runs, page 10000, batch 1000");
    println!(
        "{:<40} {:>12} {:>14} {:>10} {:>10}",
        "scenario", "events/s", "peak RSS MiB", "PH reqs", "WH reqs"
    );
    for (name, n, latency_ms, concurrency) in scenarios {
        let start = "2024-01-01T00:00:00Z".parse().unwrap();
        let end = "2024-01-31T00:00:00Z".parse().unwrap();
        let events = synthetic_events(n, start, end, 42);
        let expected: HashSet<String> = events
            .iter()
            .filter(|e| e.timestamp >= start && e.timestamp < end)
            .map(|e| e.uuid.clone())
            .collect();
        let mut samples: Vec<Sample> = (0..runs)
            .map(|_| run_once(&events, &expected, latency_ms, concurrency))
            .collect();
        let median = |f: &dyn Fn(&Sample) -> f64, samples: &mut Vec<Sample>| {
            samples.sort_by(|a, b| f(a).total_cmp(&f(b)));
            f(&samples[samples.len() / 2])
        };
        let eps = median(&|s| s.events_per_sec, &mut samples);
        let rss = median(&|s| s.peak_rss_mib, &mut samples);
        println!(
            "{:<40} {:>12.0} {:>14.1} {:>10} {:>10}",
            name, eps, rss, samples[0].posthog_requests, samples[0].webhook_requests
        );
    }
}

fn run_once(
    events: &[posthog_patterns_standin::StoredEvent],
    expected: &HashSet<String>,
    latency_ms: u64,
    concurrency: &str,
) -> Sample {
    let posthog = PostHogStandIn::start(PostHogConfig::default(), events.to_vec());
    let webhook = WebhookStandIn::start(WebhookConfig {
        latency: Duration::from_millis(latency_ms),
        ..WebhookConfig::default()
    });
    let state = tempfile::tempdir().unwrap();
    let cfg = posthog.config();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_posthog-patterns"))
        .args([
            "backfill",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-31",
            "--quiet",
            "--concurrency",
            concurrency,
        ])
        .args([
            "--max-requests-per-minute",
            "0",
            "--max-requests-per-hour",
            "0",
        ])
        .env("POSTHOG_HOST", posthog.url())
        .env("POSTHOG_PROJECT_ID", &cfg.project_id)
        .env("POSTHOG_API_KEY", &cfg.api_key)
        .env("PATTERNS_WEBHOOK_URL", webhook.url())
        .env("POSTHOG_PATTERNS_STATE_DIR", state.path())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let (status, peak_kib) = wait_tracking_peak(child);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(status, 0, "the backfill failed");
    let received = webhook.uuids();
    let unique: HashSet<&String> = received.iter().collect();
    assert!(
        received.len() == expected.len()
            && unique.len() == expected.len()
            && unique.iter().all(|u| expected.contains(*u)),
        "not exactly once: received {} ({} unique), expected {}",
        received.len(),
        unique.len(),
        expected.len()
    );
    Sample {
        events_per_sec: expected.len() as f64 / secs,
        peak_rss_mib: peak_kib as f64 / 1024.0,
        posthog_requests: posthog.log().len(),
        webhook_requests: webhook.with_state(|s| s.requests),
    }
}

/// Waits for the child, sampling its peak resident memory (VmHWM, KiB) every 10 ms.
/// (Not wait4's ru_maxrss: Linux carries the parent's memory into it across exec, and this
/// process holds the stand-ins' data.)
fn wait_tracking_peak(mut child: std::process::Child) -> (i32, u64) {
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            peak = peak.max(hwm.unwrap_or(0));
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code().unwrap_or(-1), peak);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
