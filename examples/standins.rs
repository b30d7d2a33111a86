//! Starts the PostHog and webhook stand-ins and keeps them running, for trying the binary by
//! hand (progress bars, Ctrl-C, resuming) or profiling it:
//!
//!     cargo run --example standins -- 200000
//!
//! prints the environment variables to export, then serves until Ctrl-C.

use posthog_patterns_standin::{
    PostHogConfig, PostHogStandIn, WebhookConfig, WebhookStandIn, synthetic_events,
};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let latency_ms: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let start = "2024-01-01T00:00:00Z".parse().unwrap();
    let end = "2024-01-31T00:00:00Z".parse().unwrap();
    let posthog = PostHogStandIn::start(
        PostHogConfig::default(),
        synthetic_events(n, start, end, 42),
    );
    let webhook = WebhookStandIn::start(WebhookConfig {
        latency: std::time::Duration::from_millis(latency_ms),
        ..WebhookConfig::default()
    });
    let cfg = posthog.config();
    println!(
        "export POSTHOG_HOST={} POSTHOG_PROJECT_ID={} POSTHOG_API_KEY={} PATTERNS_WEBHOOK_URL={}",
        posthog.url(),
        cfg.project_id,
        cfg.api_key,
        webhook.url()
    );
    println!(
        "# {n} events in 2024-01-01 .. 2024-01-31; e.g. posthog-patterns backfill --start 2024-01-01 --end 2024-01-31"
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(5));
        eprintln!(
            "webhook has {} events",
            webhook.with_state(|s| s.events.len())
        );
    }
}
