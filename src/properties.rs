//! Property tests: the parsers of what servers and files send, and the batcher, against
//! arbitrary input. They must never panic, and must keep their promises for every input, not
//! only the ones the example tests thought of. (`PROPTEST_CASES` raises the count.)

use crate::event::parse_ts;
use crate::net::http::{Reply, retry_after};
use crate::pipeline::batcher::{Batcher, Limits, body_len};
use crate::posthog::repair::json_text_of_string;
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderValue};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000),
        ..ProptestConfig::default()
    }
}

fn reply(headers: HeaderMap, body: Vec<u8>) -> Reply {
    Reply {
        status: 429,
        headers,
        body: body.into(),
        stream: None,
    }
}

proptest! {
    #![proptest_config(config())]

    /// However events arrive, batches hold them all, once, in order, within both limits (an
    /// event larger than the byte limit travels alone), each ending at its last event.
    #[test]
    fn batches_keep_every_event_in_order_within_their_limits(
        sizes in prop::collection::vec(0usize..300, 0..200),
        max_events in 1usize..50,
        max_bytes in 64usize..2_000,
    ) {
        let limits = Limits { max_events, max_bytes };
        let mut batcher = Batcher::new(limits);
        let mut batches = Vec::new();
        let events: Vec<String> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{{\"i\":{i},\"p\":\"{}\"}}", "x".repeat(*n)))
            .collect();
        for (i, e) in events.iter().enumerate() {
            batches.extend(batcher.push(e.clone(), i));
            batches.extend(batcher.take_full());
        }
        batches.extend(batcher.flush());
        let mut seen = Vec::new();
        for b in &batches {
            prop_assert!(!b.events.is_empty());
            prop_assert!(b.events.len() <= max_events);
            prop_assert!(b.events.len() == 1 || body_len(&b.events) <= max_bytes);
            seen.extend(b.events.iter().cloned());
            prop_assert_eq!(&events[b.end], b.events.last().unwrap());
        }
        prop_assert_eq!(seen, events);
    }

    /// Any `Retry-After` value and any body: a wait or none, never a panic.
    #[test]
    fn retry_after_never_panics(value in "\\PC{0,40}", body in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(reqwest::header::RETRY_AFTER, v);
        }
        let _ = retry_after(&headers, &body);
    }

    /// PostHog's throttle text with any number of seconds, however large: a wait.
    #[test]
    fn a_throttle_text_always_gives_a_wait(digits in "[0-9]{1,40}") {
        let body = format!(r#"{{"detail":"Request was throttled. Expected available in {digits} seconds."}}"#);
        prop_assert!(retry_after(&HeaderMap::new(), body.as_bytes()).is_some());
    }

    /// Any `Date` or `Location` header: a time or none, a target or a placeholder.
    #[test]
    fn date_and_redirect_headers_never_panic(value in "\\PC{0,60}") {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(reqwest::header::DATE, v.clone());
            headers.insert(reqwest::header::LOCATION, v);
        }
        let r = reply(headers, Vec::new());
        let _ = r.date();
        let target = r.redirect_target(&reqwest::Url::parse("https://h.example/a/b").unwrap());
        prop_assert!(!target.contains("/a/b"));
        let _ = r.excerpt();
        let _ = r.detail();
    }

    /// Any bytes as an answer body: the excerpt and detail are printable, one line, short.
    #[test]
    fn excerpts_of_any_body_are_one_short_line(body in prop::collection::vec(any::<u8>(), 0..1_000)) {
        let r = reply(HeaderMap::new(), body);
        let e = r.excerpt();
        prop_assert!(!e.contains('\n') && e.chars().count() <= 201);
    }

    /// Timestamps PostHog might send, or anything else: parsed or refused, never a panic.
    #[test]
    fn timestamp_parsing_never_panics(text in "\\PC{0,40}") {
        let _ = parse_ts(&text);
    }

    /// A JSON string literal of any text decodes to that text, as serde_json would.
    #[test]
    fn json_strings_decode_to_their_text(text in "\\PC{0,80}") {
        let literal = serde_json::to_string(&text).unwrap();
        prop_assert_eq!(json_text_of_string(&literal).unwrap(), text);
    }

    /// Any literal with `\uXXXX` escapes (lone surrogates included): decoded or refused,
    /// never a panic; a decoded one is valid UTF-8 JSON text when wrapped in quotes.
    #[test]
    fn string_literals_with_any_escapes_never_panic(units in prop::collection::vec(any::<u16>(), 0..10), plain in "[a-z ]{0,5}") {
        let mut literal = String::from("\"");
        for u in &units {
            literal.push_str(&format!("\\u{u:04x}{plain}"));
        }
        literal.push('"');
        if let Ok(text) = json_text_of_string(&literal) {
            let rewrapped = format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\"").chars().filter(|c| !c.is_control()).collect::<String>());
            prop_assert!(serde_json::from_str::<serde::de::IgnoredAny>(&rewrapped).is_ok());
        }
    }
}
