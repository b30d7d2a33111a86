//! What becomes of events the webhook rejects on their own: appended to the dead-letter file
//! with `--dead-letter`, or the run stops naming them.

use crate::net::http::Reply;
use crate::secret::WebhookUrl;
use crate::sinks::dead_letter::DeadLetter;
use anyhow::bail;

/// Sets `events`, rejected with `reply`, aside; how many were set aside.
pub(super) fn reject(
    dead_letter: Option<&DeadLetter>,
    url: &WebhookUrl,
    events: &[String],
    reply: &Reply,
) -> anyhow::Result<usize> {
    let excerpt = reply.excerpt();
    match dead_letter {
        Some(dl) => {
            dl.write(events, reply.status, &excerpt)?;
            tracing::warn!(
                "the webhook rejected {} (HTTP {}: {excerpt}); appended to {}",
                if events.len() == 1 {
                    format!("event {}", uuid_of(&events[0]))
                } else {
                    format!("{} events", events.len())
                },
                reply.status,
                dl.path().display()
            );
            Ok(events.len())
        }
        None => bail!(
            "the webhook at {} rejected {} on its own (HTTP {}: {excerpt}). The checkpoint holds every batch acknowledged before it (with --concurrency above 1, later batches may have been acknowledged too, and are posted again on resume). Fix the cause and run again, or pass --dead-letter PATH to set rejected events aside and go on",
            url.redacted(),
            match events {
                [one] => format!("event {}", uuid_of(one)),
                _ => crate::progress::count(events.len() as u64, "event", "events"),
            },
            reply.status
        ),
    }
}

/// The `uuid` of an event's JSON text, for messages (events are ours: always present).
fn uuid_of(event: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Uuid {
        uuid: Option<String>,
    }
    serde_json::from_str::<Uuid>(event)
        .ok()
        .and_then(|u| u.uuid)
        .unwrap_or_else(|| "(without uuid)".into())
}
