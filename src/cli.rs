//! The command line (clap derive). Option names are part of the interface: see README.md and
//! docs/. Values are parsed and checked here, at the edge, with errors that show an example.

use crate::domain::MAX_PAGE_SIZE;
use crate::domain::SourceKind;
use crate::domain::when::{When, parse_when};
use crate::log::LogFormat;
use crate::progress::ProgressMode;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "posthog-patterns",
    version,
    subcommand_value_name = "COMMAND",
    about = "Move PostHog events into a Patterns webhook (or any webhook that takes JSON arrays).",
    after_help = "Example:\n  export POSTHOG_API_KEY=phx_... PATTERNS_WEBHOOK_URL=https://...\n  posthog-patterns backfill --project 12345 --start 2024-01-01 --end 2024-02-01\n\nEach command has its own --help and man page (posthog-patterns man --output DIR). Docs: README.md and docs/ in the source tree. Exit codes: 0 ok, 1 failure, 2 usage, 3 finished with rejected events, 75 temporary failure (lock held, retries exhausted), 130 interrupted."
)]
pub(crate) struct Cli {
    /// TOML file with settings for backfill, sync, export, send and config check (flags and
    /// environment variables win); also accepted after the command.
    #[arg(long, value_name = "FILE", env = "POSTHOG_PATTERNS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Export every event of a time range into the webhook, resumably.
    #[command(
        override_usage = "posthog-patterns backfill [OPTIONS] --start <DATE> --end <DATE>",
        after_help = "Example:\n  export POSTHOG_API_KEY=phx_...\n  posthog-patterns backfill --host https://us.posthog.com --project 12345 \\\n    --webhook-url https://api.patterns.app/api/app/webhooks/wh... \\\n    --start 2024-01-01 --end 2024-02-01\n\nRun the same command again after an interruption: it resumes from the checkpoint."
    )]
    Backfill(Box<BackfillArgs>),
    /// Export what PostHog ingested since the last run (for cron), then stop.
    #[command(
        override_usage = "posthog-patterns sync [OPTIONS] [--start <DATE>]",
        after_help = "Example (crontab):\n  */15 * * * * posthog-patterns sync --config /etc/posthog-patterns.toml\n\nThe first run needs --start; later runs continue from the state file. Silent on success unless -v."
    )]
    Sync(Box<SyncArgs>),
    /// Export events of a time range as NDJSON, to stdout or a file (.gz: gzip).
    #[command(
        override_usage = "posthog-patterns export [OPTIONS] --start <DATE> --end <DATE>",
        after_help = "Examples:\n  posthog-patterns export --start 2024-01-01 --end 2024-02-01 > events.ndjson\n  posthog-patterns export --start 2024-01-01 --end 2024-02-01 --output jan.ndjson.gz\n  posthog-patterns export ... | jq -c 'select(.event == \"signup\")' | posthog-patterns send"
    )]
    Export(Box<ExportArgs>),
    /// Post NDJSON (stdin or files, .gz too) to the webhook in batches.
    #[command(
        after_help = "Examples:\n  posthog-patterns send events.ndjson more.ndjson.gz\n  jq -c '.[]' dump.json | posthog-patterns send --webhook-url https://..."
    )]
    Send(Box<SendArgs>),
    /// Check a configuration: show the resolved settings (secrets redacted) and what a run
    /// would read (PostHog is asked to count the events), without exporting or sending any.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  posthog-patterns completions bash > /etc/bash_completion.d/posthog-patterns"
    )]
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one per command into a directory.
    #[command(
        after_help = "Examples:\n  posthog-patterns man | man -l -\n  posthog-patterns man --output /usr/local/share/man/man1"
    )]
    Man {
        /// Write every page into this directory (created if missing): posthog-patterns.1 and
        /// posthog-patterns-COMMAND.1 for each command.
        #[arg(short, long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// Run a real backfill against built-in stand-ins for PostHog and a webhook, on loopback,
    /// and check that every event arrived exactly once.
    #[command(
        after_help = "Example:\n  posthog-patterns demo\n  posthog-patterns demo --events 100000 --progress never"
    )]
    Demo(DemoArgs),
}

impl Command {
    /// The log format the command asked for (`--log-format`), for the error that ends it.
    pub(crate) fn log_format(&self) -> LogFormat {
        let output = match self {
            Command::Backfill(a) => &a.deliver.output,
            Command::Sync(a) => &a.deliver.output,
            Command::Send(a) => &a.deliver.output,
            Command::Export(a) => &a.display,
            Command::Demo(a) => &a.output,
            Command::Config(ConfigCommand::Check { command, .. }) => return command.log_format(),
            Command::Completions { .. } | Command::Man { .. } => return LogFormat::Text,
        };
        output.log_format
    }
}

impl CheckedCommand {
    /// The log format the checked command asked for (`--log-format`).
    pub(crate) fn log_format(&self) -> LogFormat {
        match self {
            CheckedCommand::Backfill(a) => a.deliver.output.log_format,
            CheckedCommand::Sync(a) => a.deliver.output.log_format,
            CheckedCommand::Send(a) => a.deliver.output.log_format,
            CheckedCommand::Export(a) => a.display.log_format,
        }
    }
}

impl Command {
    /// The `config check` a `--dry-run` of this command is.
    pub(crate) fn dry_run(&self) -> Option<CheckedCommand> {
        match self {
            Command::Backfill(a) if a.file.dry_run => Some(CheckedCommand::Backfill(a.clone())),
            Command::Sync(a) if a.file.dry_run => Some(CheckedCommand::Sync(a.clone())),
            Command::Export(a) if a.file.dry_run => Some(CheckedCommand::Export(a.clone())),
            Command::Send(a) if a.file.dry_run => Some(CheckedCommand::Send(a.clone())),
            _ => None,
        }
    }
}

impl Cli {
    /// The `--config` file to read: the one given after the command, else the one before it
    /// or in POSTHOG_PATTERNS_CONFIG. None for `completions`, `man` and `demo`, which take no
    /// settings: a broken file must not keep a user from their completions or man page.
    /// Without one named, the file at `$XDG_CONFIG_HOME/posthog-patterns/config.toml` (or
    /// `~/.config/...`) if there is one, unless `--no-config`; `true` with a file found so.
    pub(crate) fn config_file(&self) -> Option<(PathBuf, bool)> {
        let after = match &self.command {
            Command::Backfill(args) => &args.file,
            Command::Sync(args) => &args.file,
            Command::Export(args) => &args.file,
            Command::Send(args) => &args.file,
            Command::Config(ConfigCommand::Check { file, command }) => match command {
                CheckedCommand::Backfill(args) if args.file.config.is_some() => &args.file,
                CheckedCommand::Sync(args) if args.file.config.is_some() => &args.file,
                CheckedCommand::Export(args) if args.file.config.is_some() => &args.file,
                CheckedCommand::Send(args) if args.file.config.is_some() => &args.file,
                _ => file,
            },
            Command::Completions { .. } | Command::Man { .. } | Command::Demo(_) => return None,
        };
        if after.no_config {
            return None;
        }
        if let Some(named) = after.config.as_ref().or(self.config.as_ref()) {
            return Some((named.clone(), false));
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        let found = base.join("posthog-patterns").join("config.toml");
        found.is_file().then_some((found, true))
    }
}

/// `--config` after the command. Only the top-level flag reads POSTHOG_PATTERNS_CONFIG, so
/// that a file named here is known to come from the command line and beats the variable.
#[derive(Args, Debug, Clone)]
pub(crate) struct ConfigFileArgs {
    /// TOML file with settings for this command (flags and environment variables win); also
    /// POSTHOG_PATTERNS_CONFIG.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Read no config file, not even $XDG_CONFIG_HOME/posthog-patterns/config.toml (read,
    /// and named on stderr, when no --config is given).
    #[arg(long, conflicts_with = "config")]
    pub(crate) no_config: bool,
    /// Check the settings as `config check` does (PostHog answers, the webhook can be
    /// reached, what a run would read) and stop: no lock taken, nothing sent, no state or
    /// metrics written.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// Where to read from.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Connection")]
pub(crate) struct ConnectionArgs {
    /// PostHog app host (not the ingestion host *.i.posthog.com).
    #[arg(
        long,
        value_name = "URL",
        env = "POSTHOG_HOST",
        hide_env_values = true,
        default_value = "https://us.posthog.com"
    )]
    pub(crate) host: String,
    /// PostHog project id (the number in the project's URL).
    #[arg(long, value_name = "ID", env = "POSTHOG_PROJECT_ID")]
    pub(crate) project: Option<String>,
    /// File holding the personal API key (query:read scope). Without it the key is read from
    /// the environment variable POSTHOG_API_KEY.
    #[arg(long, value_name = "PATH")]
    pub(crate) api_key_file: Option<PathBuf>,
    /// PostHog API to read: query (HogQL), events (legacy Events API), or auto (query, and
    /// events when the instance has no Query API).
    #[arg(long, value_name = "API", value_enum, default_value_t = SourceKind::Auto)]
    pub(crate) source: SourceKind,
}

/// Where to post and how.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Webhook")]
pub(crate) struct WebhookArgs {
    /// Webhook to POST batches to; the URL is treated as a secret and never printed.
    #[arg(
        long,
        value_name = "URL",
        env = "PATTERNS_WEBHOOK_URL",
        hide_env_values = true
    )]
    pub(crate) webhook_url: Option<String>,
    /// Events per POST.
    #[arg(long, value_name = "N", help_heading = "Batching", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) batch_size: u64,
    /// Largest request body as JSON (before --compress), e.g. 1MiB, 512KiB or 200000 (64 bytes
    /// to 256MiB); a single larger event is sent alone.
    #[arg(long, value_name = "BYTES", help_heading = "Batching", default_value = "1MiB", value_parser = parse_batch_bytes)]
    pub(crate) max_batch_bytes: u64,
    /// Batches posted at once. Batches may then arrive out of order, and after a crash up to
    /// this many batches can arrive twice; 1 keeps strict order.
    #[arg(long, value_name = "N", help_heading = "Batching", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub(crate) concurrency: u64,
    /// Append events the webhook rejects (4xx) to this NDJSON file and go on (exit 3 at the end).
    #[arg(long, value_name = "PATH")]
    pub(crate) dead_letter: Option<PathBuf>,
    /// A header sent with every POST, e.g. 'Authorization: Bearer TOKEN' (repeatable). Its value
    /// is treated as a secret; prefer --header-file or `headers` in a config file, since a
    /// flag is visible to other local users in the process list.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub(crate) headers: Vec<String>,
    /// A file of headers sent with every POST, one `Name: value` a line (blank lines and lines
    /// starting with # are skipped).
    #[arg(long, value_name = "FILE")]
    pub(crate) header_file: Option<PathBuf>,
    /// Compress each POST body: gzip (sent with `Content-Encoding: gzip`, for webhooks that
    /// accept it) or none. --max-batch-bytes still counts the uncompressed JSON.
    #[arg(long, value_name = "WHAT", value_enum, default_value_t = Compress::None)]
    pub(crate) compress: Compress,
}

/// How a POST body is encoded (`--compress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Compress {
    /// Plain JSON.
    None,
    /// gzip, with `Content-Encoding: gzip`.
    Gzip,
}

/// Retries, timeouts and, for the commands that read PostHog, the request budget (`B`:
/// [`BudgetArgs`], or [`NoBudget`] for `send`, whose help then shows no PostHog-only option).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Retries")]
pub(crate) struct RetryArgs<B: Args = BudgetArgs> {
    /// Retries of one request after 5xx answers, timeouts or connection errors.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub(crate) max_retries: u32,
    /// Longest single wait a server may ask for (429 Retry-After) before the run stops (exit 75).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub(crate) max_wait: std::time::Duration,
    /// Stop cleanly after this long (checkpoint saved, exit 75), e.g. 50m for a cron job run
    /// every hour, so that a stuck run never holds the lock forever.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) max_run_time: Option<std::time::Duration>,
    /// Allow sending the API key or posting to the webhook over plain http:// to a host that
    /// is not this machine (by default only https://, or http:// to localhost).
    #[arg(long, help_heading = "Connection")]
    pub(crate) allow_insecure_http: bool,
    /// Timeout of one HTTP request.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub(crate) http_timeout: std::time::Duration,
    #[command(flatten)]
    pub(crate) budget: B,
}

/// How many requests PostHog may be sent.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Retries")]
pub(crate) struct BudgetArgs {
    /// PostHog requests allowed per minute (0: no limit). Default: the published limit of the
    /// API in use (240 for both APIs). Lower it when other tools share the key.
    #[arg(long, value_name = "N")]
    pub(crate) max_requests_per_minute: Option<u32>,
    /// PostHog requests allowed per hour (0: no limit). Default: 2400 for the Query API, 1200
    /// for the Events API.
    #[arg(long, value_name = "N")]
    pub(crate) max_requests_per_hour: Option<u32>,
}

/// No request budget: `send` asks PostHog nothing.
#[derive(Args, Debug, Clone)]
pub(crate) struct NoBudget {}

/// The budget flags of a command, if it has them (`None`: the API's published limit).
pub(crate) trait RequestLimits {
    fn per_minute(&self) -> Option<u32>;
    fn per_hour(&self) -> Option<u32>;
}

impl RequestLimits for BudgetArgs {
    fn per_minute(&self) -> Option<u32> {
        self.max_requests_per_minute
    }
    fn per_hour(&self) -> Option<u32> {
        self.max_requests_per_hour
    }
}

impl RequestLimits for NoBudget {
    fn per_minute(&self) -> Option<u32> {
        None
    }
    fn per_hour(&self) -> Option<u32> {
        None
    }
}

/// Which servers to trust, for every command that makes HTTP requests.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Connection")]
pub(crate) struct TlsArgs {
    /// PEM file of CA certificates to trust, for PostHog and the webhook alike, besides the
    /// built-in web roots and the system's store (a private CA, a self-signed server).
    /// Repeatable.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_cert: Vec<PathBuf>,
}

/// Everything about delivering to the webhook that backfill, sync and send share.
#[derive(Args, Debug, Clone)]
pub(crate) struct DeliverArgs<B: Args = BudgetArgs> {
    #[command(flatten)]
    pub(crate) webhook: WebhookArgs,
    #[command(flatten)]
    pub(crate) state: StateArgs,
    #[command(flatten)]
    pub(crate) retry: RetryArgs<B>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

/// What the run shows.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Output")]
pub(crate) struct OutputArgs {
    /// Print only errors.
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// Progress bars: auto (when stderr is a terminal), always, or never (plain log lines).
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = ProgressMode::Auto)]
    pub(crate) progress: ProgressMode,
    /// More detail in the log (each retry, each window change).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Log line format.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Write Prometheus text-format metrics to this file at the end of each run (last
    /// success time, events delivered, duration, exit code, sync's watermark lag), for
    /// node_exporter's textfile collector; replaced whole, never half-written.
    #[arg(long, value_name = "PATH")]
    pub(crate) metrics_file: Option<PathBuf>,
}

impl OutputArgs {
    /// Where `command`'s metrics go, if anywhere.
    pub(crate) fn metrics(&self, command: &'static str) -> Option<crate::metrics::Target> {
        self.metrics_file
            .clone()
            .map(|path| crate::metrics::Target { path, command })
    }
}

#[derive(Args, Debug, Clone)]
pub(crate) struct BackfillArgs {
    #[command(flatten)]
    pub(crate) file: ConfigFileArgs,
    #[command(flatten)]
    pub(crate) range: RangeArgs,
    #[command(flatten)]
    pub(crate) read: ReadArgs,
    #[command(flatten)]
    pub(crate) deliver: DeliverArgs,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Validate the settings of a command and show them resolved, e.g.
    /// `posthog-patterns config check --config /etc/posthog-patterns.toml sync`.
    #[command(subcommand_value_name = "COMMAND")]
    Check {
        #[command(flatten)]
        file: ConfigFileArgs,
        #[command(subcommand)]
        command: CheckedCommand,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum CheckedCommand {
    /// Check the settings of `backfill` and count the events of its range.
    #[command(
        override_usage = "posthog-patterns config check backfill [OPTIONS] --start <DATE> --end <DATE>"
    )]
    Backfill(Box<BackfillArgs>),
    /// Check the settings of `sync` and count the events its next run would read.
    #[command(override_usage = "posthog-patterns config check sync [OPTIONS] [--start <DATE>]")]
    Sync(Box<SyncArgs>),
    /// Check the settings of `export`.
    #[command(
        override_usage = "posthog-patterns config check export [OPTIONS] --start <DATE> --end <DATE>"
    )]
    Export(Box<ExportArgs>),
    /// Check the settings of `send`.
    Send(Box<SendArgs>),
}

#[derive(Args, Debug, Clone)]
pub(crate) struct SyncArgs {
    #[command(flatten)]
    pub(crate) file: ConfigFileArgs,
    /// Where the first run starts (event time): a date or time as for backfill's --start
    /// (`-7d` included, by PostHog's clock when the sync starts). Later runs ignore it.
    #[arg(long, value_name = "DATE", help_heading = "Range", value_parser = parse_when)]
    pub(crate) start: Option<When>,
    /// How far back in event time to look for events ingested late (Query API).
    #[arg(long, value_name = "DURATION", help_heading = "Range", default_value = "7d", value_parser = parse_duration)]
    pub(crate) lookback: std::time::Duration,
    /// Room left for PostHog's own ingestion delay: a run exports what was ingested up to
    /// this long ago.
    #[arg(long, value_name = "DURATION", help_heading = "Range", default_value = "5m", value_parser = parse_duration)]
    pub(crate) lag: std::time::Duration,
    #[command(flatten)]
    pub(crate) read: ReadArgs,
    #[command(flatten)]
    pub(crate) deliver: DeliverArgs,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    pub(crate) file: ConfigFileArgs,
    #[command(flatten)]
    pub(crate) range: RangeArgs,
    #[command(flatten)]
    pub(crate) read: ReadArgs,
    /// Write to this file instead of stdout (a .gz name writes gzip). Resumable. `-` is
    /// stdout, as without --output (not resumable).
    #[arg(short, long, value_name = "FILE", help_heading = "Output")]
    pub(crate) output: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) state: StateArgs,
    #[command(flatten)]
    pub(crate) retry: RetryArgs,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    #[command(flatten)]
    pub(crate) display: OutputArgs,
}

/// What to do with a line that is not a JSON object (`--on-invalid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnInvalid {
    /// Stop with an error naming the file and line, after posting everything before it.
    Stop,
    /// Set it aside in the dead-letter file (or just count it) and go on; exit 3 at the end.
    Skip,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct SendArgs {
    /// NDJSON files to send (.gz files too); none, or -, reads stdin.
    #[arg(value_name = "FILE")]
    pub(crate) files: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) file: ConfigFileArgs,
    #[command(flatten)]
    pub(crate) filters: FilterArgs,
    /// What to do with a line that is not a JSON object.
    #[arg(long, value_name = "WHAT", help_heading = "Input", value_enum, default_value_t = OnInvalid::Stop)]
    pub(crate) on_invalid: OnInvalid,
    /// Longest line accepted (64 bytes to 1024MiB); a longer one is an error, not an
    /// out-of-memory.
    #[arg(long, value_name = "BYTES", help_heading = "Input", default_value = "16MiB", value_parser = parse_line_bytes)]
    pub(crate) max_line_bytes: u64,
    #[command(flatten)]
    pub(crate) deliver: DeliverArgs<NoBudget>,
}

/// What to read from PostHog.
#[derive(Args, Debug, Clone)]
pub(crate) struct ReadArgs {
    #[command(flatten)]
    pub(crate) filters: FilterArgs,
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
    /// Most rows per PostHog query page (at most 50000, the Query API's cap). Pages are
    /// smaller while queries are slow, and stay within half of --max-response-size; the Events
    /// API caps pages at 1000. Answers are read as they arrive: a big page costs no memory.
    #[arg(long, value_name = "N", help_heading = "Batching", default_value_t = MAX_PAGE_SIZE, value_parser = clap::value_parser!(u64).range(1..=MAX_PAGE_SIZE))]
    pub(crate) page_size: u64,
    /// Query API time windows read at once (1 to 3: PostHog runs at most 3 queries at once per
    /// organisation, and dashboards share them).
    #[arg(long, value_name = "N", help_heading = "Batching", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3))]
    pub(crate) fetch_concurrency: u64,
    /// Largest PostHog answer read, e.g. 1GiB or 512MiB; a larger one stops the run (use a
    /// smaller --page-size) instead of reading forever.
    #[arg(long, value_name = "BYTES", help_heading = "Batching", default_value = "1GiB", value_parser = parse_bytes)]
    pub(crate) max_response_size: u64,
}

/// The time range `[start, end)`. Required, but not by clap: a `--config` file may give it.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Range")]
pub(crate) struct RangeArgs {
    /// First instant to export (inclusive): YYYY-MM-DD (UTC midnight), RFC 3339, a time
    /// without offset (UTC, e.g. "2024-01-31 12:00"), or now, today, yesterday, -7d (-30m,
    /// -12h, -2w): by PostHog's clock when the job starts, kept for its later runs.
    /// Required, here or as `start` in the --config file.
    #[arg(long, value_name = "DATE", value_parser = parse_when, allow_hyphen_values = true)]
    pub(crate) start: Option<When>,
    /// End of the range (exclusive): a date or time as for --start; not later than
    /// PostHog's current time (use `sync` for an ongoing export). Required, here or as `end`
    /// in the --config file.
    #[arg(long, value_name = "DATE", value_parser = parse_when, allow_hyphen_values = true)]
    pub(crate) end: Option<When>,
}

/// The job's state file, under a heading of its own (after the range, which comes first).
#[derive(Args, Debug, Clone)]
pub(crate) struct StateArgs {
    /// State file to resume from (default: derived from the job, under
    /// $POSTHOG_PATTERNS_STATE_DIR, $XDG_STATE_HOME/posthog-patterns or
    /// ~/.local/state/posthog-patterns).
    #[arg(long, value_name = "PATH", help_heading = "State")]
    pub(crate) checkpoint: Option<PathBuf>,
    /// Discard the state and start the job from the beginning.
    #[arg(long, help_heading = "State")]
    pub(crate) restart: bool,
    /// When another run of the same job holds its lock: fail (exit 75, with a message), skip
    /// (exit 0 without a word, for overlapping cron runs) or wait (at most --max-wait).
    #[arg(long, value_name = "WHAT", help_heading = "State", value_enum, default_value_t = IfLocked::Fail)]
    pub(crate) if_locked: IfLocked,
}

/// What to do when another run holds a job's lock (`--if-locked`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum IfLocked {
    Fail,
    Skip,
    Wait,
}

/// Event-name filters.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Events")]
pub(crate) struct FilterArgs {
    /// Only these event names (repeatable, or a comma-separated list).
    #[arg(long = "event", value_name = "NAME", value_delimiter = ',')]
    pub(crate) events: Vec<String>,
    /// Leave out these event names (repeatable, or a comma-separated list).
    #[arg(long = "exclude-event", value_name = "NAME", value_delimiter = ',')]
    pub(crate) exclude_events: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct DemoArgs {
    /// Synthetic events in the PostHog stand-in, besides the 6,000 that share one microsecond
    /// and a few unmerged duplicate rows (at most 10000000: it holds them in memory).
    #[arg(long, value_name = "N", default_value_t = 40_000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub(crate) events: u64,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

/// `1MiB`, `512KiB`, `1MB`, `200000`.
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a size like 1MiB, 512KiB or 200000, got {text:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?}; use B, KB, KiB, MB, MiB, GB or GiB"
            ));
        }
    };
    match n.checked_mul(mult) {
        Some(v) if v >= 64 => Ok(v),
        _ => Err(format!("{text:?} is out of range: at least 64 bytes")),
    }
}

/// The largest `--max-batch-bytes`: far above what webhooks take, and small enough that
/// `--concurrency` such bodies fit in memory.
pub(crate) const MAX_BATCH_BYTES: u64 = 256 << 20;
/// The largest `--max-line-bytes`: a line is held in memory whole, and the reader adds one to
/// the limit, so the limit must stay far from `u64::MAX` (which once wrapped to 0).
pub(crate) const MAX_LINE_BYTES: u64 = 1 << 30;

/// A size of at most `max` bytes.
fn parse_bytes_up_to(text: &str, max: u64) -> Result<u64, String> {
    let n = parse_bytes(text)?;
    if n > max {
        return Err(format!(
            "{text:?} is out of range: at most {}MiB",
            max >> 20
        ));
    }
    Ok(n)
}

/// `--max-batch-bytes`: 64 bytes to 256MiB.
pub(crate) fn parse_batch_bytes(text: &str) -> Result<u64, String> {
    parse_bytes_up_to(text, MAX_BATCH_BYTES)
}

/// `--max-line-bytes`: 64 bytes to 1024MiB.
pub(crate) fn parse_line_bytes(text: &str) -> Result<u64, String> {
    parse_bytes_up_to(text, MAX_LINE_BYTES)
}

/// The longest duration any option takes. Every duration is added to or taken from a
/// date (`--lag`, `--lookback`) or an instant (timeouts, waits); ten years keeps all of that
/// arithmetic far from overflowing.
pub(crate) const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);

/// `90s`, `15m`, `2h`, `7d`, `500ms`, or plain seconds.
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 90s, 15m, 2h or 7d, got {text:?}"))?;
    let too_long = || format!("{text:?} is out of range: at most 3650d (ten years)");
    let seconds = |per_unit: u64| {
        n.checked_mul(per_unit)
            .map(std::time::Duration::from_secs)
            .ok_or_else(too_long)
    };
    let d = match unit {
        "ms" => std::time::Duration::from_millis(n),
        "" | "s" => seconds(1)?,
        "m" => seconds(60)?,
        "h" => seconds(3600)?,
        "d" => seconds(86_400)?,
        _ => {
            return Err(format!(
                "unknown duration unit {unit:?}; use ms, s, m, h or d (e.g. 15m)"
            ));
        }
    };
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_bytes("200000").unwrap(), 200_000);
        assert!(parse_bytes("12").is_err());
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert!(parse_bytes("1TiB").is_err());
        assert_eq!(parse_duration("15m").unwrap().as_secs(), 900);
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert!(parse_duration("soon").is_err());
        assert!(
            parse_duration("18446744073709551615d").is_err(),
            "no overflow"
        );
        assert!(
            parse_bytes("18446744073709551615MiB").is_err(),
            "no overflow"
        );
        assert_eq!(parse_duration("3650d").unwrap(), MAX_DURATION);
        assert!(
            parse_duration("3651d")
                .unwrap_err()
                .contains("at most 3650d")
        );
        assert!(parse_duration("1000000000d").is_err());
        assert!(parse_duration("315360000001ms").is_err());
        assert_eq!(parse_line_bytes("1024MiB").unwrap(), MAX_LINE_BYTES);
        assert!(
            parse_line_bytes("18446744073709551615")
                .unwrap_err()
                .contains("at most 1024MiB")
        );
        assert_eq!(parse_batch_bytes("256MiB").unwrap(), MAX_BATCH_BYTES);
        assert!(parse_batch_bytes("257MiB").is_err());
        assert!(parse_batch_bytes("32").is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
