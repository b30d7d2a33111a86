//! Shared helpers for the integration tests: the real binary, run against the library's
//! in-process stand-ins, in a temporary directory.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use posthog_patterns_standin::{
    PostHogConfig, PostHogStandIn, QueryCost, Storage, StoredEvent, WebhookConfig, WebhookStandIn,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_posthog-patterns");

pub fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub posthog: PostHogStandIn,
    pub webhook: WebhookStandIn,
}

/// Which stand-ins speak HTTPS.
#[derive(Clone, Copy, Debug)]
pub struct Https {
    pub posthog: bool,
    pub webhook: bool,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Env {
    pub fn new(events: Vec<StoredEvent>, webhook: WebhookConfig) -> Env {
        Env::with(PostHogConfig::default(), events, webhook)
    }

    pub fn with(config: PostHogConfig, events: Vec<StoredEvent>, webhook: WebhookConfig) -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            posthog: PostHogStandIn::start(config, events),
            webhook: WebhookStandIn::start(webhook),
        }
    }

    /// Stand-ins that speak HTTPS where `https` says, each with a self-signed certificate of
    /// its own (see [`Env::ca_file`]).
    pub fn https(https: Https, events: Vec<StoredEvent>, webhook: WebhookConfig) -> Env {
        let config = PostHogConfig::default();
        Env {
            dir: tempfile::tempdir().unwrap(),
            posthog: if https.posthog {
                PostHogStandIn::start_https(config, events)
            } else {
                PostHogStandIn::start(config, events)
            },
            webhook: if https.webhook {
                WebhookStandIn::start_https(webhook)
            } else {
                WebhookStandIn::start(webhook)
            },
        }
    }

    /// Writes the certificates of the HTTPS stand-ins (one, or both: a bundle) to `name`,
    /// as a user would save a private CA's certificate.
    pub fn ca_file(&self, name: &str) -> PathBuf {
        let pem: String = [&self.posthog.server, &self.webhook.server]
            .into_iter()
            .filter_map(|s| s.certificate.clone())
            .collect();
        assert!(!pem.is_empty(), "no stand-in speaks HTTPS");
        let path = self.path(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The binary with connection settings in the environment (as a user would set them)
    /// and state kept in the temporary directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        self.environment(cmd)
    }

    /// The binary started by `sh -c SCRIPT` (which then execs it), for what only a shell sets
    /// up: resource limits (`ulimit`), ignored signals (`trap '' SIG`).
    pub fn command_in_shell(&self, script: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{script}; exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(args);
        self.environment(cmd)
    }

    fn environment(&self, mut cmd: Command) -> Command {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("POSTHOG_PATTERNS_STATE_DIR", self.path("state"))
            .env("POSTHOG_HOST", self.posthog.url())
            .env("POSTHOG_PROJECT_ID", self.posthog.config().project_id)
            .env("POSTHOG_API_KEY", self.posthog.config().api_key)
            .env("PATTERNS_WEBHOOK_URL", self.webhook.url())
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        finish(self.command(args).output().unwrap())
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs the binary until the webhook holds a batch it will not answer (see
    /// `WebhookConfig::stall_after`), kills it with SIGKILL (no chance to clean up), then lets
    /// the webhook answer again.
    pub fn kill_while_in_flight(&self, args: &[&str]) {
        let mut child = self.spawn(args);
        assert!(
            self.webhook
                .wait_until(std::time::Duration::from_secs(60), |s| !s
                    .stalled_events
                    .is_empty()),
            "a batch reaches the webhook and hangs"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        self.webhook.release();
    }

    /// Counts of each uuid the webhook received.
    pub fn received(&self) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for uuid in self.webhook.uuids() {
            *seen.entry(uuid).or_insert(0) += 1;
        }
        seen
    }

    /// Counts of each uuid the webhook received, counting those of batches it stalled on
    /// (received, never acknowledged) too.
    pub fn received_with_stalled(&self) -> HashMap<String, usize> {
        let all = self.webhook.with_state(|s| {
            let mut v = s.events.clone();
            v.extend(s.stalled_events.clone());
            v
        });
        let mut counts = HashMap::new();
        for e in &all {
            *counts
                .entry(posthog_patterns_standin::webhook::uuid_of(e))
                .or_insert(0) += 1;
        }
        counts
    }

    /// Asserts that exactly the events selected by `keep` arrived, each exactly once;
    /// returns how many that is.
    #[track_caller]
    pub fn assert_exactly_once(&self, keep: impl Fn(&StoredEvent) -> bool) -> usize {
        self.assert_delivered(keep, 0)
    }

    /// Asserts that every event selected by `keep` arrived, nothing else did, and at most
    /// `max_duplicates` deliveries were repeats; returns how many events that is.
    #[track_caller]
    pub fn assert_delivered(
        &self,
        keep: impl Fn(&StoredEvent) -> bool,
        max_duplicates: usize,
    ) -> usize {
        let expected: HashMap<String, ()> = self
            .posthog
            .events()
            .into_iter()
            .filter(|e| keep(e))
            .map(|e| (e.uuid, ()))
            .collect();
        let seen = self.received();
        let missing = expected.keys().filter(|u| !seen.contains_key(*u)).count();
        let stray = seen.keys().filter(|u| !expected.contains_key(*u)).count();
        let repeats: usize = seen.values().map(|n| n - 1).sum();
        assert_eq!(
            (missing, stray),
            (0, 0),
            "missing, unexpected (expected {} events)",
            expected.len()
        );
        assert!(
            repeats <= max_duplicates,
            "{repeats} repeated deliveries, at most {max_duplicates} allowed"
        );
        expected.len()
    }

    /// Asserts that neither the API key nor the webhook URL's secret path appears in what the
    /// run printed or in any file it left (checkpoints, dead letters, exports).
    #[track_caller]
    pub fn assert_no_secrets(&self, run: &Run) {
        let key = self.posthog.config().api_key;
        let path = posthog_patterns_standin::webhook::SECRET_PATH;
        let token = path.rsplit('/').next().unwrap();
        for text in [&run.stdout, &run.stderr, &self.all_files_text()] {
            assert!(!text.contains(&key), "API key leaked: {text}");
            assert!(!text.contains(token), "webhook path leaked: {text}");
        }
    }

    /// Every file under the temporary directory, as text (checkpoints, dead letters, ...).
    pub fn all_files_text(&self) -> String {
        fn walk(dir: &std::path::Path, out: &mut String) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
                }
            }
        }
        let mut out = String::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

pub fn finish(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Sends SIGTERM (what `kill` and service managers send) and waits for the process to end.
pub fn sigterm(child: Child) -> Run {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    finish(child.wait_with_output().unwrap())
}

impl Run {
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code; stderr:\n{}", self.stderr);
        self
    }
}

pub const RANGE_START: &str = "2024-03-01T00:00:00Z";
pub const RANGE_END: &str = "2024-03-08T00:00:00Z";

pub fn in_range(e: &StoredEvent) -> bool {
    e.timestamp >= t(RANGE_START) && e.timestamp < t(RANGE_END)
}

/// Synthetic events over the standard range plus edge cases.
pub fn events(n: usize, seed: u64) -> Vec<StoredEvent> {
    posthog_patterns_standin::synthetic_events(n, t(RANGE_START), t(RANGE_END), seed)
}

/// `backfill` over the standard range, with extra arguments.
pub fn backfill_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "backfill",
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "--progress",
        "never",
    ];
    v.extend_from_slice(extra);
    v
}

/// A PostHog whose queries take the time of what they read, as PostHog's do, and hit its 10 s
/// limit (answering its 504) once one shard reads more than `max_bytes`; small granules and
/// two shards, so that the few thousand events of a test behave like a big table. Times are
/// scaled down a thousandfold: the 10 s limit answers after 10 ms.
pub fn costly(max_bytes: u64) -> PostHogConfig {
    PostHogConfig {
        storage: Storage {
            shards: 2,
            parts_per_shard: 1,
            granule_rows: 16,
            block_rows: 16,
        },
        cost: Some(QueryCost {
            base: std::time::Duration::ZERO,
            per_mb: std::time::Duration::from_secs_f64(
                10.0 * (1u64 << 20) as f64 / max_bytes as f64,
            ),
            per_1000_rows: std::time::Duration::ZERO,
            cap: std::time::Duration::from_secs(10),
            scale: 0.001,
        }),
        ..PostHogConfig::default()
    }
}

/// An event's place in PostHog's storage order: UTC day, event name, then the stand-in's
/// `cityHash64` of `distinct_id` and of the uuid's 16 bytes.
pub type StorageKey = (i64, String, u64, u64);

pub fn storage_key(e: &StoredEvent) -> StorageKey {
    use posthog_patterns_standin::{city_hash64, data::uuid_number};
    let uuid = uuid_number(&e.uuid).expect("a uuid");
    (
        e.timestamp.timestamp().div_euclid(86_400),
        e.event.clone(),
        city_hash64(e.distinct_id.as_bytes()),
        city_hash64(&uuid.to_be_bytes()),
    )
}
