//! The stand-ins behave like the real services of ../shared/posthog-api.md. If they did not,
//! the other tests would prove nothing, so their rules are tested here directly.

use chrono::{DateTime, Utc};
use posthog_patterns_standin::data::tied_events;
use posthog_patterns_standin::{
    PostHogConfig, PostHogStandIn, WebhookConfig, WebhookStandIn, synthetic_events,
};
use serde_json::{Value, json};

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

async fn query(ph: &PostHogStandIn, sql: &str, values: Value, utc: bool) -> (u16, Value) {
    let cfg = ph.config();
    let mut body = json!({"query": {"kind": "HogQLQuery", "query": sql, "values": values}, "refresh": "force_blocking"});
    if utc {
        body["query"]["modifiers"] = json!({"convertToProjectTimezone": false});
    }
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/api/projects/{}/query/",
            ph.url(),
            cfg.project_id
        ))
        .bearer_auth(cfg.api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

const WINDOW: &str = "SELECT uuid, timestamp FROM events WHERE timestamp >= toDateTime64({start}, 6, 'UTC') AND timestamp < toDateTime64({end}, 6, 'UTC') ORDER BY timestamp, uuid";

fn window() -> Value {
    json!({"start": "2024-03-01 00:00:00.000000", "end": "2024-03-08 00:00:00.000000"})
}

#[tokio::test]
async fn limit_is_capped_at_50000_and_defaults_to_100_with_has_more() {
    let ph = PostHogStandIn::start(
        PostHogConfig::default(),
        tied_events(50_100, t("2024-03-02T00:00:00Z"), 1),
    );
    let (status, body) = query(&ph, &format!("{WINDOW} LIMIT 60000"), window(), true).await;
    assert_eq!(status, 200);
    assert_eq!(body["results"].as_array().unwrap().len(), 50_000);
    assert!(body.get("hasMore").is_none(), "hasMore only without LIMIT");
    let (_, body) = query(&ph, WINDOW, window(), true).await;
    assert_eq!(body["results"].as_array().unwrap().len(), 100);
    assert_eq!(body["hasMore"], true);
}

#[tokio::test]
async fn offset_is_refused() {
    let ph = PostHogStandIn::start(
        PostHogConfig::default(),
        synthetic_events(10, t("2024-03-01T00:00:00Z"), t("2024-03-08T00:00:00Z"), 1),
    );
    let (status, body) = query(&ph, &format!("{WINDOW} LIMIT 10 OFFSET 10"), window(), true).await;
    assert_eq!(status, 400);
    assert!(body["detail"].as_str().unwrap().contains("OFFSET"));
}

#[tokio::test]
async fn ties_come_back_in_clickhouse_uuid_order_not_string_order() {
    let ph = PostHogStandIn::start(
        PostHogConfig::default(),
        tied_events(300, t("2024-03-02T00:00:00Z"), 2),
    );
    let (_, body) = query(&ph, &format!("{WINDOW} LIMIT 1000"), window(), true).await;
    let uuids: Vec<String> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    let mut sorted = uuids.clone();
    sorted.sort();
    assert_ne!(uuids, sorted, "string order differs from the server's");
}

#[tokio::test]
async fn without_the_utc_modifier_times_are_in_the_project_time_zone() {
    let start = t("2024-03-01T00:00:00Z");
    let ev = synthetic_events(50, start, t("2024-03-08T00:00:00Z"), 3);
    let ph = PostHogStandIn::start(PostHogConfig::default(), ev);
    let (_, utc) = query(&ph, &format!("{WINDOW} LIMIT 1000"), window(), true).await;
    let (_, local) = query(&ph, &format!("{WINDOW} LIMIT 1000"), window(), false).await;
    let first_utc = utc["results"][0][1].as_str().unwrap().to_string();
    let first_local = local["results"][0][1].as_str().unwrap().to_string();
    assert!(first_utc.ends_with('Z'), "{first_utc}");
    assert!(first_local.ends_with("+05:00"), "{first_local}");
    // The bounds are shifted too: a different set of rows falls in the window.
    assert_ne!(
        utc["results"].as_array().unwrap().len(),
        local["results"].as_array().unwrap().len()
    );
}

#[tokio::test]
async fn whole_second_timestamps_have_no_fraction() {
    let ph = PostHogStandIn::start(
        PostHogConfig::default(),
        tied_events(1, t("2024-03-02T00:00:00Z"), 4),
    );
    let (_, body) = query(&ph, &format!("{WINDOW} LIMIT 10"), window(), true).await;
    assert_eq!(body["results"][0][1], "2024-03-02T00:00:00Z");
}

#[tokio::test]
async fn a_window_holding_too_many_rows_times_out_with_504() {
    let ph = PostHogStandIn::start(
        PostHogConfig {
            max_scan_rows: 100,
            ..PostHogConfig::default()
        },
        tied_events(101, t("2024-03-02T00:00:00Z"), 5),
    );
    let (status, _) = query(&ph, &format!("{WINDOW} LIMIT 10"), window(), true).await;
    assert_eq!(status, 504);
}

#[tokio::test]
async fn throttling_answers_429_with_or_without_retry_after() {
    for header in [true, false] {
        let ph = PostHogStandIn::start(
            PostHogConfig {
                rate_limit: Some((1, std::time::Duration::from_secs(60))),
                retry_after_header: header,
                ..PostHogConfig::default()
            },
            vec![],
        );
        assert_eq!(query(&ph, WINDOW, window(), true).await.0, 200);
        let cfg = ph.config();
        let resp = reqwest::Client::new()
            .post(format!(
                "{}/api/projects/{}/query/",
                ph.url(),
                cfg.project_id
            ))
            .bearer_auth(cfg.api_key)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 429);
        assert_eq!(resp.headers().contains_key("retry-after"), header);
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("Expected available in")
        );
    }
}

#[tokio::test]
async fn unknown_sql_is_a_400_like_a_hogql_error() {
    let ph = PostHogStandIn::start(PostHogConfig::default(), vec![]);
    let (status, _) = query(
        &ph,
        "SELECT uuid FROM events WHERE 1 = 1 ORDER BY timestamp, uuid",
        json!({}),
        true,
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = query(
        &ph,
        &format!("{WINDOW} LIMIT 1"),
        json!({"start": "2024-03-01 00:00:00"}),
        true,
    )
    .await;
    assert_eq!(status, 400, "missing placeholder value");
    assert!(body["detail"].as_str().unwrap().contains("{end}"));
}

#[tokio::test]
async fn the_webhook_takes_arrays_or_one_object_and_refuses_empty_arrays() {
    let wh = WebhookStandIn::start(WebhookConfig::default());
    let post = |body: &'static str| {
        let url = wh.url();
        async move {
            reqwest::Client::new()
                .post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post(r#"[{"uuid":"a"},{"uuid":"b"}]"#).await, 200);
    assert_eq!(post(r#"{"uuid":"c"}"#).await, 200);
    assert_eq!(post("[]").await, 400);
    assert_eq!(post("not json").await, 400);
    assert_eq!(wh.uuids(), ["a", "b", "c"]);
}

async fn events_api(ph: &PostHogStandIn, query: &str) -> (u16, Value) {
    let cfg = ph.config();
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/api/projects/{}/events/?{query}",
            ph.url(),
            cfg.project_id
        ))
        .bearer_auth(cfg.api_key)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

fn ids(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn events_api_bounds_are_strict_and_limit_is_capped_at_1000() {
    let at = t("2024-03-02T00:00:00Z");
    let ph = PostHogStandIn::start(PostHogConfig::default(), tied_events(1_200, at, 41));
    let q = "after=2024-03-01T23:59:59.999999Z&before=2024-03-02T00:00:00.000001Z&limit=5000&orderBy=%5B%22timestamp%22%5D";
    let (status, body) = events_api(&ph, q).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&body).len(), 1_000, "silently capped");
    assert!(
        body["results"][0]["timestamp"]
            .as_str()
            .unwrap()
            .ends_with("+00:00")
    );
    assert!(body["results"][0]["properties"].is_object());
    // Strict: `after` equal to the timestamp excludes it; so does `before`.
    let (_, body) = events_api(
        &ph,
        "after=2024-03-02T00:00:00Z&before=2024-03-03T00:00:00Z&orderBy=%5B%22timestamp%22%5D",
    )
    .await;
    assert!(ids(&body).is_empty());
    let (_, body) = events_api(
        &ph,
        "after=2024-03-01T00:00:00Z&before=2024-03-02T00:00:00Z&orderBy=%5B%22timestamp%22%5D",
    )
    .await;
    assert!(ids(&body).is_empty());
    // Default limit 100; `next` moves `after` to the last timestamp, skipping the other ties.
    let (_, body) = events_api(
        &ph,
        "after=2024-03-01T00:00:00Z&before=2024-03-03T00:00:00Z&orderBy=%5B%22timestamp%22%5D",
    )
    .await;
    assert_eq!(ids(&body).len(), 100);
    let next = body["next"].as_str().unwrap();
    let (_, after_next) = events_api(&ph, next.split_once('?').unwrap().1).await;
    assert!(
        ids(&after_next).is_empty(),
        "the 1,100 other ties are lost to whoever follows next"
    );
}

#[tokio::test]
async fn events_api_newest_first_can_say_next_null_while_older_events_remain() {
    let mut ev = synthetic_events(
        200,
        t("2024-03-01T00:00:00Z"),
        t("2024-03-02T00:00:00Z"),
        42,
    );
    // 60 events in the last minute before `before`: more than half a page of 100.
    ev.extend(synthetic_events(
        60,
        t("2024-03-07T23:59:10Z"),
        t("2024-03-07T23:59:50Z"),
        43,
    ));
    let ph = PostHogStandIn::start(PostHogConfig::default(), ev);
    let (_, body) = events_api(
        &ph,
        "after=2024-02-01T00:00:00Z&before=2024-03-08T00:00:00Z",
    )
    .await;
    let n = ids(&body).len();
    assert!((60..100).contains(&n), "only the probe's events: {n}");
    assert!(
        body["next"].is_null(),
        "premature end: 200 older events remain"
    );
}

#[tokio::test]
async fn events_api_offset_rules_window_limit_and_default_range() {
    let ph = PostHogStandIn::start(
        PostHogConfig {
            offset_delay: std::time::Duration::from_millis(300),
            ..PostHogConfig::default()
        },
        synthetic_events(10, t("2024-03-01T00:00:00Z"), t("2024-03-08T00:00:00Z"), 44),
    );
    let started = std::time::Instant::now();
    let (status, _) = events_api(
        &ph,
        "after=2024-03-01T00:00:00Z&offset=5&orderBy=%5B%22timestamp%22%5D",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "offset requests sleep"
    );
    let (status, _) = events_api(&ph, "after=2024-03-01T00:00:00Z&offset=50001").await;
    assert_eq!(status, 400);
    let (status, _) = events_api(
        &ph,
        "after=2023-01-01T00:00:00Z&before=2024-03-08T00:00:00Z",
    )
    .await;
    assert_eq!(status, 500, "more than 366 days");
    let (_, body) = events_api(&ph, "").await;
    assert!(ids(&body).is_empty(), "no `after`: only the last 24 hours");
}

#[tokio::test]
async fn the_webhook_inflates_gzip_bodies_or_refuses_them_with_415() {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(br#"[{"uuid":"a"},{"uuid":"b"}]"#).unwrap();
    let body = gz.finish().unwrap();
    let post = |url: String, body: Vec<u8>| async move {
        reqwest::Client::new()
            .post(url)
            .header("content-encoding", "gzip")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let wh = WebhookStandIn::start(WebhookConfig::default());
    assert_eq!(post(wh.url(), body.clone()).await, 200);
    assert_eq!(wh.uuids(), ["a", "b"]);
    assert_eq!(wh.with_state(|s| s.gzip_requests), 1);
    assert_eq!(post(wh.url(), b"not gzip".to_vec()).await, 400);

    let plain_only = WebhookStandIn::start(WebhookConfig {
        refuse_gzip: true,
        ..WebhookConfig::default()
    });
    assert_eq!(post(plain_only.url(), body).await, 415);
    assert!(plain_only.uuids().is_empty());
}

#[tokio::test]
async fn a_counting_webhook_counts_events_bytes_and_uuids_but_keeps_no_event() {
    let wh = WebhookStandIn::start(WebhookConfig {
        count_only: true,
        ..WebhookConfig::default()
    });
    let a = "0190c6b5-9f0e-7c1a-8d2b-3f4e5a6b7c8d";
    let b = "0190c6b5-9f0e-7c1a-8d2b-3f4e5a6b7c8e";
    let bodies = [
        format!(r#"[{{"uuid":"{a}","properties":{{"x":[1,{{"y":null}}]}}}},{{"uuid":"{b}"}}]"#),
        format!(r#"{{"uuid":"{a}"}}"#),
        r#"[{"event":"no uuid"}]"#.to_string(),
    ];
    let client = reqwest::Client::new();
    for body in &bodies {
        let status = client
            .post(wh.url())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(status.status().as_u16(), 200);
    }
    let status = client.post(wh.url()).body("[]").send().await.unwrap();
    assert_eq!(status.status().as_u16(), 400);
    let counted = wh.with_state(|s| s.counted.clone());
    assert_eq!(counted.events, 4);
    assert_eq!(counted.uuids.len(), 2);
    assert_eq!((counted.repeats, counted.without_uuid), (1, 1));
    let json: usize = bodies.iter().map(String::len).sum();
    assert_eq!(counted.json_bytes, json as u64);
    assert!(wh.uuids().is_empty(), "no event text was kept");
}

/// Five `SELECT 1` queries at once; their statuses, sorted.
async fn five_at_once(ph: &PostHogStandIn) -> Vec<u16> {
    let queries = (0..5).map(|_| query(ph, "SELECT 1", json!({}), true));
    let mut statuses: Vec<u16> = futures_util::future::join_all(queries)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    statuses.sort();
    statuses
}

#[tokio::test]
async fn at_most_three_queries_run_at_once_and_a_fourth_waits_then_gets_429() {
    let capped = |latency_ms, wait_ms| PostHogConfig {
        query_latency: std::time::Duration::from_millis(latency_ms),
        max_concurrent_queries: Some(3),
        query_slot_wait: std::time::Duration::from_millis(wait_ms),
        ..PostHogConfig::default()
    };
    // Slots come free in time: everything runs, three at a time.
    let ph = PostHogStandIn::start(capped(300, 5_000), Vec::new());
    let started = std::time::Instant::now();
    assert_eq!(five_at_once(&ph).await, [200; 5]);
    assert!(started.elapsed() >= std::time::Duration::from_millis(600));
    assert_eq!(ph.with_state(|s| s.queries_running_peak), 3);

    // They do not: two are refused, as PostHog refuses after its 30 s.
    let ph = PostHogStandIn::start(capped(2_000, 100), Vec::new());
    assert_eq!(five_at_once(&ph).await, [200, 200, 200, 429, 429]);
    assert_eq!(ph.with_state(|s| s.queries_refused_for_concurrency), 2);
}
