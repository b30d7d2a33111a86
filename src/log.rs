//! Words in a logger. Every message of a run is a `tracing` event (`tracing::warn!` and the
//! like, wherever it happens); one subscriber, tracing-subscriber's registry with the
//! [`Lines`] layer, keeps this program's events at the level asked for (`-q`, `-v`), redacts
//! them (`secret::redact`: the one place secrets are taken out of words) and writes each as
//! one line on stderr: text (`2024-06-01T10:00:00Z warning: …`, or `warning: …` above the
//! bars) or, with `--log-format json`, one object with `ts`, `level`, `msg` and the event's
//! fields. The display's periodic progress lines and the JSON summary are events too.

use chrono::{SecondsFormat, Utc};
use indicatif::MultiProgress;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The target of a run's JSON summary: written whatever `-q` or `-v` say.
pub(crate) const SUMMARY: &str = "posthog_patterns::summary";

/// Log line format (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// A level's name as a terminal shows it: warnings yellow, errors red, unless `NO_COLOR` is
/// set (to anything; <https://no-color.org>).
pub(crate) fn coloured(level: Level) -> String {
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        return level.name().to_string();
    }
    let style = match level {
        Level::Error => console::Style::new().red().bold(),
        Level::Warn => console::Style::new().yellow(),
        Level::Info | Level::Debug => console::Style::new(),
    };
    style.force_styling(true).apply_to(level.name()).to_string()
}

/// Routes this process's events to stderr (above the bars, if there are any), at `level`
/// and in `format`. Once per process: a later call keeps the first subscriber.
pub(crate) fn init(level: Level, format: LogFormat, bars: Option<MultiProgress>) {
    // Only this program's events: the HTTP stack's own are not ours to show. A filter by
    // target and level is decided once per call site, and its most verbose level tells
    // `tracing` which levels no call site needs asking about at all: the HTTP stack's many
    // trace points then cost one comparison each (with a filter asked at every event, they
    // cost a run 5 to 10 % of its CPU).
    let shown = match level {
        Level::Error => LevelFilter::ERROR,
        Level::Warn => LevelFilter::WARN,
        Level::Info => LevelFilter::INFO,
        Level::Debug => LevelFilter::DEBUG,
    };
    // The summary (info, or error for a failed run) is written whatever `-q` says.
    let ours = Targets::new()
        .with_target("posthog_patterns", shown)
        .with_target(SUMMARY, LevelFilter::INFO);
    let subscriber = tracing_subscriber::registry()
        .with(ours)
        .with(Lines { format, bars });
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Writes each event as one line.
struct Lines {
    format: LogFormat,
    /// The bars, while they are drawn: lines go above them.
    bars: Option<MultiProgress>,
}

impl<S: Subscriber> Layer<S> for Lines {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let line = self.render(event);
        match &self.bars {
            Some(bars) if !bars.is_hidden() => {
                let _ = bars.println(line);
            }
            _ => to_stderr(&line),
        }
    }
}

impl Lines {
    /// The line for `event`, redacted.
    fn render(&self, event: &Event<'_>) -> String {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = level_of(event.metadata().level());
        let msg = crate::secret::redact(&fields.message);
        match self.format {
            LogFormat::Json => json_line(level, &msg, fields.other),
            LogFormat::Text if self.bars.is_some() => {
                format!("{}: {msg}", coloured(level))
            }
            LogFormat::Text => format!(
                "{} {}: {msg}",
                Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
                level.name()
            ),
        }
    }
}

/// Writes `line` to stderr. A reader that went away (`2>&1 | head`) is no reason to stop,
/// nor to crash: the run goes on, and its exit code says how it ended.
pub(crate) fn to_stderr(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn level_of(level: &tracing::Level) -> Level {
    match *level {
        tracing::Level::ERROR => Level::Error,
        tracing::Level::WARN => Level::Warn,
        tracing::Level::INFO => Level::Info,
        _ => Level::Debug,
    }
}

/// An event's message, and its other fields as JSON values (strings redacted).
#[derive(Default)]
struct Fields {
    message: String,
    other: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            let value = crate::secret::redact(value);
            self.other.insert(field.name().into(), value.into());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `format_args!` messages arrive here; their Debug is their text.
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            let text = crate::secret::redact(&text);
            self.other.insert(field.name().into(), text.into());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.other.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.other.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.other.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.other.insert(field.name().into(), value.into());
    }
}

/// One JSON log line: `ts`, `level`, `msg`, then `fields`.
pub(crate) fn json_line(
    level: Level,
    msg: &str,
    fields: serde_json::Map<String, serde_json::Value>,
) -> String {
    let mut line = serde_json::Map::new();
    line.insert(
        "ts".into(),
        Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true).into(),
    );
    line.insert("level".into(), level.name().into());
    line.insert("msg".into(), msg.into());
    line.extend(fields);
    serde_json::Value::Object(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The lines `Lines` renders, kept instead of printed.
    struct Capture(Lines, Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            self.1.lock().unwrap().push(self.0.render(event));
        }
    }

    fn capture(format: LogFormat, emit: impl FnOnce()) -> Vec<String> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let layer = Capture(Lines { format, bars: None }, lines.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        lines.lock().unwrap().clone()
    }

    #[test]
    fn an_events_fields_become_json_members_and_its_words_are_redacted() {
        let key = crate::secret::Secret::new("phx_layer_test_secret_0123456789");
        let lines = capture(LogFormat::Json, || {
            tracing::warn!(
                read = 3u64,
                percent = 12.5,
                position = key.expose(),
                "sent {} away",
                key.expose()
            );
        });
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["level"], "warning");
        assert_eq!(v["msg"], "sent <redacted> away");
        assert_eq!(v["read"], 3);
        assert_eq!(v["percent"], 12.5);
        assert_eq!(v["position"], "<redacted>");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        let text = capture(LogFormat::Text, || tracing::info!("resuming from {}", 7));
        assert!(text[0].ends_with(" info: resuming from 7"), "{}", text[0]);
    }
}
