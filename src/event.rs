//! The posted event: one JSON object per PostHog event, the same whichever API it was read
//! from (docs/event-format.md). `properties` is carried as the raw JSON text PostHog stored,
//! so unicode, escapes and large numbers pass through unchanged.

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

/// `2024-01-01T12:34:56.123456Z`: RFC 3339, UTC, always six fractional digits.
pub(crate) fn format_ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Drops anything finer than a microsecond (PostHog keeps microseconds).
pub(crate) fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// `2024-01-01 12:34:56.123456`: the form passed to `toDateTime64({..}, 6, 'UTC')`.
pub(crate) fn format_ts_value(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Parses the timestamps PostHog returns: RFC 3339 with `Z` or an offset, with or without a
/// fraction (the Query API omits it when the microseconds are zero).
pub(crate) fn parse_ts(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    // `2024-01-01 12:34:56.123456` (no zone): UTC by our query's construction.
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .map(|n| n.and_utc())
        .with_context(|| format!("PostHog returned a timestamp that is not RFC 3339: {text:?}"))
}

/// The project id as PostHog's events carry it (`team_id`): a number when it is one.
pub(crate) fn team_id(project: &str) -> serde_json::Value {
    project
        .parse::<u64>()
        .map(serde_json::Value::from)
        .unwrap_or_else(|_| serde_json::Value::from(project))
}

/// The fields of one event, borrowed from whatever the source parsed.
#[derive(Serialize)]
pub(crate) struct Event<'a> {
    pub(crate) uuid: &'a str,
    pub(crate) event: &'a str,
    pub(crate) distinct_id: &'a str,
    pub(crate) timestamp: String,
    pub(crate) created_at: Option<String>,
    pub(crate) properties: &'a RawValue,
    pub(crate) elements_chain: &'a str,
    pub(crate) team_id: &'a serde_json::Value,
}

impl Event<'_> {
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an Event always serializes")
    }
}

/// Checks that PostHog's `properties` text is a JSON object, and keeps it verbatim.
pub(crate) fn properties_object<'a>(text: &'a str, uuid: &str) -> anyhow::Result<&'a RawValue> {
    let raw: &RawValue = serde_json::from_str(text.trim()).with_context(|| {
        format!("PostHog returned properties that are not valid JSON for event {uuid}")
    })?;
    if !raw.get().starts_with('{') {
        bail!("PostHog returned properties that are not a JSON object for event {uuid}");
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_query_api_timestamp_forms_and_events_api_offsets() {
        let a = parse_ts("2024-01-01T12:34:56.123456Z").unwrap();
        let b = parse_ts("2024-01-01T12:34:56Z").unwrap();
        let c = parse_ts("2021-04-29T05:51:15.844000+00:00").unwrap();
        assert_eq!(format_ts(&a), "2024-01-01T12:34:56.123456Z");
        assert_eq!(format_ts(&b), "2024-01-01T12:34:56.000000Z");
        assert_eq!(format_ts(&c), "2021-04-29T05:51:15.844000Z");
        assert_eq!(format_ts_value(&a), "2024-01-01 12:34:56.123456");
        assert!(parse_ts("yesterday").is_err());
    }

    #[test]
    fn offsets_are_converted_to_utc() {
        let t = parse_ts("2024-01-01T17:34:56.5+05:00").unwrap();
        assert_eq!(format_ts(&t), "2024-01-01T12:34:56.500000Z");
    }

    #[test]
    fn properties_pass_through_byte_for_byte() {
        let text = r#"{"big": 123456789012345678901234567890, "f": 0.1000000000000000055511151231257827, "s": "\u00e9\ud83d\ude00 \"q\"", "n": {"a": [1, {"b": null}]}}"#;
        let raw = properties_object(text, "u").unwrap();
        let team = team_id("42");
        let e = Event {
            uuid: "u",
            event: "e",
            distinct_id: "d",
            timestamp: "t".into(),
            created_at: None,
            properties: raw,
            elements_chain: "",
            team_id: &team,
        };
        let json = e.to_json();
        assert!(json.contains(text), "{json}");
        assert!(json.contains(r#""team_id":42"#));
    }

    #[test]
    fn properties_must_be_an_object() {
        assert!(properties_object("[1]", "u").is_err());
        assert!(properties_object("{broken", "u").is_err());
        assert_eq!(properties_object(" {} ", "u").unwrap().get(), "{}");
    }
}
