//! What the user sees while a run goes on: indicatif bars when stderr is a terminal, a plain
//! log line every few seconds otherwise (cron), nothing but errors with `--quiet`.
//! All log output goes through here so that it never tears the bars. Nothing goes to stdout.

use crate::log::{Level, LogFormat};
use crate::pipeline::ledger::Stats;
use indicatif::{HumanCount, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A log event that carries every count of the ledger (and the time taken) as fields, for
/// JSON lines: the summary and the periodic progress lines.
macro_rules! figures {
    ($progress:expr, $level:expr, $target:expr, $($rest:tt)*) => {{
        let s = &$progress.stats;
        tracing::event!(
            target: $target,
            $level,
            read = Stats::get(&s.read),
            posted = Stats::get(&s.posted),
            batches = Stats::get(&s.batches),
            duplicates = Stats::get(&s.duplicates_dropped),
            filtered = Stats::get(&s.filtered),
            skipped = Stats::get(&s.skipped),
            dead_lettered = Stats::get(&s.dead_lettered),
            repaired = Stats::get(&s.repaired),
            posthog_requests = Stats::get(&s.source_requests),
            webhook_requests = Stats::get(&s.sink_requests),
            retries = Stats::get(&s.retries),
            seconds = $progress.elapsed().as_secs_f64(),
            $($rest)*
        )
    }};
}

/// How progress is shown (`--progress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProgressMode {
    Auto,
    Always,
    Never,
}

enum Display {
    Quiet,
    Lines {
        every: Duration,
    },
    Bars {
        multi: MultiProgress,
        work: ProgressBar,
        counts: ProgressBar,
    },
}

pub(crate) struct Options {
    pub(crate) mode: ProgressMode,
    pub(crate) quiet: bool,
    pub(crate) verbose: u8,
    pub(crate) log_format: LogFormat,
    /// The most verbose level shown when not `-v` (sync shows only warnings by default).
    pub(crate) default_level: Level,
}

pub(crate) struct Progress {
    /// The run's ledger (`pipeline::ledger`): the pipeline counts deliveries into it, sources
    /// and sinks what they read and asked; shown here, checked by the runner.
    pub(crate) stats: Arc<Stats>,
    /// Share of the work done, in 1/10000.
    done_ratio: AtomicU64,
    display: Display,
    level: Level,
    format: LogFormat,
    started: Instant,
    /// What the work position means right now, e.g. the current time window.
    status: Mutex<String>,
    /// A wait in progress (rate limit, retry back-off) and when it ends.
    waiting: Mutex<Option<(String, Instant)>>,
    last_line: Mutex<Instant>,
    finished: std::sync::atomic::AtomicBool,
    /// Input of unknown size (stdin): no share done to show.
    unbounded: std::sync::atomic::AtomicBool,
    /// Whether the bar shows an ETA yet (not before any work is done: "eta 0s" says nothing).
    eta_shown: std::sync::atomic::AtomicBool,
    /// What the sink does with events: "posted" (the webhook), "written" (`export`).
    verb: Mutex<&'static str>,
}

/// Refreshes the display until dropped.
pub(crate) struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Progress {
    pub(crate) fn new(opts: &Options, ledger: Arc<Stats>) -> Self {
        let level = if opts.quiet {
            Level::Error
        } else if opts.verbose > 0 {
            Level::Debug
        } else {
            opts.default_level
        };
        let bars = match opts.mode {
            ProgressMode::Never => false,
            ProgressMode::Always => true,
            ProgressMode::Auto => std::io::stderr().is_terminal(),
        } && !opts.quiet
            && opts.log_format == LogFormat::Text;
        let display = if bars {
            let target = if opts.mode == ProgressMode::Always {
                ProgressDrawTarget::term_like_with_hz(Box::new(console::Term::stderr()), 10)
            } else {
                ProgressDrawTarget::stderr_with_hz(10)
            };
            let multi = MultiProgress::with_draw_target(target);
            let work = multi.add(ProgressBar::new(10_000));
            work.set_style(bar_style(false));
            let counts = multi.add(ProgressBar::new_spinner());
            counts.set_style(
                ProgressStyle::with_template("{spinner} {msg}").expect("static template"),
            );
            Display::Bars {
                multi,
                work,
                counts,
            }
        } else if level >= Level::Info {
            Display::Lines {
                every: Duration::from_secs(5),
            }
        } else {
            Display::Quiet
        };
        Progress {
            stats: ledger,
            done_ratio: AtomicU64::new(0),
            display,
            level,
            format: opts.log_format,
            started: Instant::now(),
            status: Mutex::new(String::new()),
            waiting: Mutex::new(None),
            last_line: Mutex::new(Instant::now()),
            finished: std::sync::atomic::AtomicBool::new(false),
            unbounded: std::sync::atomic::AtomicBool::new(false),
            eta_shown: std::sync::atomic::AtomicBool::new(false),
            verb: Mutex::new("posted"),
        }
    }

    /// A display for tests and embedding: logs errors only.
    pub(crate) fn silent() -> Self {
        Progress::new(
            &Options {
                mode: ProgressMode::Never,
                quiet: true,
                verbose: 0,
                log_format: LogFormat::Text,
                default_level: Level::Error,
            },
            Arc::default(),
        )
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The most verbose level shown.
    pub(crate) fn level(&self) -> Level {
        self.level
    }

    /// The bars, if they are drawn (log lines are printed above them).
    pub(crate) fn bars(&self) -> Option<MultiProgress> {
        match &self.display {
            Display::Bars { multi, .. } => Some(multi.clone()),
            _ => None,
        }
    }

    /// For input of unknown size (stdin): a spinner instead of a share-done bar.
    pub(crate) fn set_unbounded(&self) {
        self.unbounded.store(true, Relaxed);
        if let Display::Bars { work, .. } = &self.display {
            work.set_style(
                ProgressStyle::with_template("{spinner} {msg}").expect("static template"),
            );
        }
    }

    /// What the sink does with events, for the counts line: "posted" unless told otherwise.
    pub(crate) fn set_verb(&self, verb: &'static str) {
        *self.verb.lock().unwrap_or_else(|e| e.into_inner()) = verb;
    }

    pub(crate) fn set_status(&self, status: String) {
        *self.status.lock().unwrap() = status;
    }

    /// Sets how much of the work is done, as a fraction 0..=1.
    pub(crate) fn set_done(&self, fraction: f64) {
        let v = (fraction.clamp(0.0, 1.0) * 10_000.0) as u64;
        self.done_ratio.store(v, Relaxed);
    }

    /// Shows that the run waits (why, and until when) on the bar and the progress lines, or
    /// no longer (`None`).
    pub(crate) fn show_wait(&self, wait: Option<(String, Instant)>) {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = wait;
    }

    /// One line describing the counters, used by the bars and the periodic log line.
    pub(crate) fn counts_line(&self) -> String {
        let s = &self.stats;
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let read = Stats::get(&s.read);
        let posted = Stats::get(&s.posted);
        let verb = *self.verb.lock().unwrap_or_else(|e| e.into_inner());
        let mut line = format!(
            "read {} ({}/s) · {verb} {} ({}/s) in {} · ",
            HumanCount(read),
            HumanCount((read as f64 / secs) as u64),
            HumanCount(posted),
            HumanCount((posted as f64 / secs) as u64),
            count(Stats::get(&s.batches), "batch", "batches"),
        );
        // PostHog's requests and the webhook's apart, as the summary has them.
        let (source, sink) = (Stats::get(&s.source_requests), Stats::get(&s.sink_requests));
        if source > 0 {
            line.push_str(&format!("PostHog requests {} · ", HumanCount(source)));
        }
        if sink > 0 {
            line.push_str(&format!("webhook requests {} · ", HumanCount(sink)));
        }
        line.push_str(&format!("retries {}", Stats::get(&s.retries)));
        let dead = Stats::get(&s.dead_lettered);
        if dead > 0 {
            line.push_str(&format!(" · dead-lettered {}", HumanCount(dead)));
        }
        if let Some((why, until)) = &*self.waiting.lock().unwrap() {
            let left = until.saturating_duration_since(Instant::now());
            // Keep the bar on one line: the log has the whole reason.
            let short: String = why.chars().take(48).collect();
            let more = if why.chars().count() > 48 { "…" } else { "" };
            line.push_str(&format!(
                " · waiting {} ({short}{more})",
                human_duration(left)
            ));
        }
        line
    }

    /// Refreshes the display; call a few times a second.
    pub(crate) fn tick(&self) {
        if self.finished.load(Relaxed) {
            return;
        }
        let done = self.done_ratio.load(Relaxed);
        match &self.display {
            Display::Quiet => {}
            Display::Bars { work, counts, .. } => {
                if done > 0 && !self.unbounded.load(Relaxed) && !self.eta_shown.swap(true, Relaxed)
                {
                    work.set_style(bar_style(true));
                }
                work.set_position(done);
                work.set_message(self.status.lock().unwrap().clone());
                counts.set_message(self.counts_line());
                counts.tick();
            }
            Display::Lines { every } => {
                let mut last = self.last_line.lock().unwrap();
                if last.elapsed() >= *every {
                    *last = Instant::now();
                    drop(last);
                    let status = self.status.lock().unwrap().clone();
                    // As JSON, the figures are fields too (the text stays for people). Input
                    // of unknown size has counts and rates, no share done.
                    let msg = match self.unbounded.load(Relaxed) {
                        true => format!("progress {status} · {}", self.counts_line()),
                        false => format!(
                            "progress {:.1}% {status} · {}",
                            done as f64 / 100.0,
                            self.counts_line()
                        ),
                    };
                    let percent = (!self.unbounded.load(Relaxed)).then_some(done as f64 / 100.0);
                    figures!(
                        self,
                        tracing::Level::INFO,
                        "posthog_patterns::progress",
                        progress = true,
                        percent,
                        position = status.as_str(),
                        "{msg}"
                    );
                }
            }
        }
    }

    /// Starts refreshing the display in the background, until the [`Ticker`] is dropped.
    pub(crate) fn start(self: &std::sync::Arc<Self>) -> Ticker {
        let me = self.clone();
        Ticker(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                every.tick().await;
                me.tick();
            }
        }))
    }

    /// Removes the bars for good (before the summary or an error is printed).
    pub(crate) fn finish(&self) {
        self.finished.store(true, Relaxed);
        if let Display::Bars {
            multi,
            work,
            counts,
        } = &self.display
        {
            work.finish_and_clear();
            counts.finish_and_clear();
            let _ = multi.clear();
        }
    }

    /// Prints the closing summary of a run that ended with `exit` (to stderr): as text at
    /// `level` (and in a terminal, where the bars leave nothing behind, whatever the level,
    /// unless quiet); as JSON always, whatever `-v` or `-q`: one object, its first line as
    /// `msg`, `"summary": true`, the exit code and every count of the ledger as fields.
    pub(crate) fn summary(&self, level: Level, text: &str, exit: u8) {
        let in_terminal = matches!(self.display, Display::Bars { .. });
        self.finish();
        match self.format {
            LogFormat::Json => {
                let first = text.lines().next().unwrap_or("done");
                self.summary_line(level, first, exit);
            }
            LogFormat::Text if text.is_empty() => {}
            LogFormat::Text if level <= self.level || in_terminal => {
                crate::log::to_stderr(&crate::secret::redact(text))
            }
            LogFormat::Text => {}
        }
    }

    /// The JSON summary of a run that failed with `exit` (the error follows on its own line).
    pub(crate) fn failed_summary(&self, exit: u8) {
        self.finish();
        if self.format == LogFormat::Json {
            self.summary_line(Level::Error, "run failed", exit);
        }
    }

    fn summary_line(&self, level: Level, msg: &str, exit: u8) {
        use crate::log::SUMMARY;
        match level {
            Level::Error => figures!(
                self,
                tracing::Level::ERROR,
                SUMMARY,
                summary = true,
                exit_code = exit,
                "{msg}"
            ),
            _ => figures!(
                self,
                tracing::Level::INFO,
                SUMMARY,
                summary = true,
                exit_code = exit,
                "{msg}"
            ),
        }
    }
}

/// The bar: share done, then the ETA once there is one.
fn bar_style(eta: bool) -> ProgressStyle {
    let template = if eta {
        "{bar:32} {percent:>3}%  eta {eta:<5} {msg}"
    } else {
        "{bar:32} {percent:>3}%  {msg}"
    };
    ProgressStyle::with_template(template)
        .expect("static template")
        .progress_chars("=> ")
}

/// `n` with thousands separators and the noun that agrees with it: "1 batch", "2,000 batches".
pub(crate) fn count(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", HumanCount(n), if n == 1 { one } else { many })
}

pub(crate) fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_an_eta_only_once_work_is_done_and_none_for_stdin() {
        let opts = Options {
            mode: ProgressMode::Always,
            quiet: false,
            verbose: 0,
            log_format: LogFormat::Text,
            default_level: Level::Info,
        };
        let p = Progress::new(&opts, Arc::default());
        p.tick();
        assert!(!p.eta_shown.load(Relaxed), "no eta at 0%");
        p.set_done(0.1);
        p.tick();
        assert!(p.eta_shown.load(Relaxed));
        let stdin = Progress::new(&opts, Arc::default());
        stdin.set_unbounded();
        stdin.set_done(0.1);
        stdin.tick();
        assert!(
            !stdin.eta_shown.load(Relaxed),
            "no eta for input of unknown size"
        );
        p.finish();
        stdin.finish();
    }

    #[test]
    fn positions_are_shown_as_rfc_3339() {
        let t = "2024-03-01T12:34:56.789Z".parse().unwrap();
        assert_eq!(crate::posthog::source::short(t), "2024-03-01T12:34:56Z");
    }

    #[test]
    fn counts_agree_with_their_nouns() {
        assert_eq!(count(0, "batch", "batches"), "0 batches");
        assert_eq!(count(1, "batch", "batches"), "1 batch");
        assert_eq!(count(2_000, "batch", "batches"), "2,000 batches");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human_duration(Duration::from_secs(2202)), "36m42s");
        assert_eq!(human_duration(Duration::from_secs(7260)), "2h01m");
    }
}
