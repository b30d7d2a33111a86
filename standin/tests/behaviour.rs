//! The stand-ins behave like the real services of ../shared/posthog-api.md. If they did not,
//! the other tests would prove nothing, so their rules are tested here directly.

use chrono::{DateTime, Utc};
use posthog_patterns_standin::data::tied_events;
use posthog_patterns_standin::{
    PostHogConfig, PostHogStandIn, WebhookConfig, WebhookStandIn, synthetic_events,
};
use serde_json::{Value, json};

mod common;
use common::query_request;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

async fn query(ph: &PostHogStandIn, sql: &str, values: Value, utc: bool) -> (u16, Value) {
    let resp = query_request(ph, sql, values, utc).send().await.unwrap();
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

// What a query costs and PostHog's answers for its limits (posthog-api.md, "What a query
// costs PostHog").

use posthog_patterns_standin::{Fault, QueryCost, ReadBudget, Storage, city_hash64};
use std::time::Duration;

/// A query's status, headers and body.
async fn post(
    ph: &PostHogStandIn,
    sql: &str,
    values: Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = query_request(ph, sql, values, true).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

/// 60,000 events over three days (20,000 a day), in granules of 128 rows so that a small
/// data set shows what pruning does.
fn three_days(config: PostHogConfig) -> PostHogStandIn {
    PostHogStandIn::start(
        PostHogConfig {
            storage: Storage {
                granule_rows: 128,
                block_rows: 128,
                ..Storage::default()
            },
            max_scan_rows: usize::MAX,
            ..config
        },
        synthetic_events(
            60_000,
            t("2024-03-01T00:00:00Z"),
            t("2024-03-04T00:00:00Z"),
            61,
        ),
    )
}

const DAY_2: &str =
    "timestamp >= toDateTime64({start}, 6, 'UTC') AND timestamp < toDateTime64({end}, 6, 'UTC')";

fn day_2() -> Value {
    json!({"start": "2024-03-02 00:00:00.000000", "end": "2024-03-03 00:00:00.000000"})
}

fn with(mut values: Value, extra: Value) -> Value {
    let map = values.as_object_mut().unwrap();
    map.extend(extra.as_object().unwrap().clone());
    values
}

/// What the last query read and returned.
fn last_logged(ph: &PostHogStandIn) -> posthog_patterns_standin::QueryReads {
    ph.log().pop().unwrap().reads
}

#[tokio::test]
async fn the_same_request_returns_the_same_rows_in_the_same_order_ties_included() {
    let ph = three_days(PostHogConfig::default());
    // Thousands of rows share each event name: the order among them is the server's own.
    let sql = format!("SELECT uuid, event FROM events WHERE {DAY_2} ORDER BY event LIMIT 3000");
    let (status, first) = query(&ph, &sql, day_2(), true).await;
    assert_eq!(status, 200);
    let (_, second) = query(&ph, &sql, day_2(), true).await;
    assert_eq!(first["results"], second["results"]);
    let names: Vec<&str> = first["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_str().unwrap())
        .collect();
    assert!(names.windows(2).all(|w| w[0] <= w[1]), "ordered by event");
}

#[tokio::test]
async fn hash_bounds_at_and_above_2_63_work_and_a_float_bound_is_a_400() {
    let ph = three_days(PostHogConfig::default());
    let sql = format!(
        "SELECT uuid, distinct_id, cityHash64(distinct_id) FROM events WHERE {DAY_2} AND cityHash64(distinct_id) >= {{lo}} AND cityHash64(distinct_id) <= {{hi}} ORDER BY cityHash64(distinct_id), cityHash64(uuid) LIMIT 50000"
    );
    let (lo, hi) = (1u64 << 63, u64::MAX);
    let (status, body) = query(&ph, &sql, with(day_2(), json!({"lo": lo, "hi": hi})), true).await;
    assert_eq!(status, 200, "{body}");
    let rows = body["results"].as_array().unwrap();
    let (start, end) = (t("2024-03-02T00:00:00Z"), t("2024-03-03T00:00:00Z"));
    let expected = ph
        .events()
        .iter()
        .filter(|e| e.timestamp >= start && e.timestamp < end)
        .filter(|e| city_hash64(e.distinct_id.as_bytes()) >= lo)
        .count();
    assert_eq!(rows.len(), expected);
    for r in rows {
        // A JSON integer, exact: no float would hold these.
        let h = r[2].as_u64().expect("an unsigned integer");
        assert_eq!(h, city_hash64(r[1].as_str().unwrap().as_bytes()));
        assert!(h >= lo);
    }
    let (status, body) = query(
        &ph,
        &sql,
        with(day_2(), json!({"lo": 1.8e19, "hi": hi})),
        true,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["detail"].as_str().unwrap().contains("UInt64"),
        "{body}"
    );
    let (status, _) = query(
        &ph,
        &sql,
        with(day_2(), json!({"lo": "9223372036854775808", "hi": hi})),
        true,
    )
    .await;
    assert_eq!(status, 400, "a string is no number either");
}

#[tokio::test]
async fn a_narrow_key_range_reads_little_and_a_time_ordered_hour_reads_the_whole_day() {
    let ph = three_days(PostHogConfig::default());
    let day = format!("SELECT uuid FROM events WHERE {DAY_2} LIMIT 1");
    query(&ph, &day, day_2(), true).await;
    let whole_day = last_logged(&ph).rows_read;

    let narrow = format!(
        "SELECT uuid, event, distinct_id, properties, elements_chain, timestamp, created_at, cityHash64(distinct_id), cityHash64(uuid) FROM events WHERE {DAY_2} AND event = {{name}} AND cityHash64(distinct_id) < {{hi}} ORDER BY event, cityHash64(distinct_id), cityHash64(uuid) LIMIT 50000"
    );
    let (status, body) = query(
        &ph,
        &narrow,
        with(day_2(), json!({"name": "signup", "hi": 1u64 << 62})),
        true,
    )
    .await;
    assert_eq!(status, 200);
    let narrow = last_logged(&ph);
    assert!(!body["results"].as_array().unwrap().is_empty());
    assert!(
        narrow.rows_read * 8 < whole_day,
        "{} rows read of the day's {whole_day}",
        narrow.rows_read
    );

    let hour = "SELECT uuid, timestamp FROM events WHERE timestamp >= toDateTime64({start}, 6, 'UTC') AND timestamp < toDateTime64({end}, 6, 'UTC') ORDER BY timestamp, uuid LIMIT 50000";
    let (status, _) = query(
        &ph,
        hour,
        json!({"start": "2024-03-02 12:00:00.000000", "end": "2024-03-02 13:00:00.000000"}),
        true,
    )
    .await;
    assert_eq!(status, 200);
    let in_day = ph
        .events()
        .iter()
        .filter(|e| {
            e.timestamp >= t("2024-03-02T00:00:00Z") && e.timestamp < t("2024-03-03T00:00:00Z")
        })
        .count() as u64;
    let hour = last_logged(&ph);
    assert!(hour.rows_read >= in_day, "{} < {in_day}", hour.rows_read);
    assert!(hour.rows_returned * 20 < in_day);
}

#[tokio::test]
async fn limit_does_not_shorten_a_read() {
    let ph = three_days(PostHogConfig::default());
    let sql = |limit: u32| {
        format!(
            "SELECT uuid, properties FROM events WHERE {DAY_2} ORDER BY timestamp, uuid LIMIT {limit}"
        )
    };
    query(&ph, &sql(10), day_2(), true).await;
    let small = last_logged(&ph);
    query(&ph, &sql(50_000), day_2(), true).await;
    let large = last_logged(&ph);
    assert_eq!(small.rows_returned, 10);
    assert!(large.rows_returned > 10_000);
    assert_eq!(
        (small.rows_read, small.bytes_read),
        (large.rows_read, large.bytes_read)
    );
    assert!(small.bytes_returned * 1000 < large.bytes_returned);
}

#[tokio::test]
async fn a_late_insert_makes_one_new_part_per_shard() {
    let ph = three_days(PostHogConfig::default());
    assert_eq!(
        ph.parts().iter().map(Vec::len).collect::<Vec<_>>(),
        [2, 2, 2, 2]
    );
    ph.insert(synthetic_events(
        400,
        t("2024-03-01T00:00:00Z"),
        t("2024-03-02T00:00:00Z"),
        62,
    ));
    let parts = ph.parts();
    assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 3]);
    let newest: usize = parts.iter().map(|p| p[2]).sum();
    assert_eq!(newest, 404, "the new parts hold the new rows only");
    // A query over the day now reads the new parts too.
    let (_, body) = query(
        &ph,
        &format!("SELECT count() FROM events WHERE {DAY_2}"),
        json!({"start": "2024-03-01 00:00:00", "end": "2024-03-02 00:00:00"}),
        true,
    )
    .await;
    let day_1 = ph
        .events()
        .iter()
        .filter(|e| {
            e.timestamp >= t("2024-03-01T00:00:00Z") && e.timestamp < t("2024-03-02T00:00:00Z")
        })
        .count();
    assert_eq!(body["results"][0][0], day_1);
}

#[tokio::test]
async fn a_spent_read_budget_answers_429_after_the_overdrawing_query_ran() {
    let ph = three_days(PostHogConfig {
        read_budget: Some(ReadBudget {
            bytes: 1_000,
            window: Duration::from_secs(3_600),
        }),
        ..PostHogConfig::default()
    });
    let sql = format!("SELECT uuid FROM events WHERE {DAY_2} LIMIT 5");
    let (status, _, body) = post(&ph, &sql, day_2()).await;
    assert_eq!(status, 200, "the query that overdraws runs: {body}");
    assert!(last_logged(&ph).bytes_read > 1_000);
    let (status, headers, body) = post(&ph, &sql, day_2()).await;
    assert_eq!(status, 429);
    assert_eq!(body["code"], "api_queries_budget_exceeded");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3_590..=3_600).contains(&wait), "{wait}");
    let cost = ph.with_state(|s| s.cost);
    assert_eq!((cost.queries, cost.budget_refusals), (1, 1));
    assert_eq!(last_logged(&ph).bytes_read, 0, "a refusal reads nothing");
}

#[tokio::test]
async fn a_query_past_the_time_cap_answers_posthogs_504_after_the_cap() {
    let ph = three_days(PostHogConfig {
        cost: Some(QueryCost {
            per_1000_rows: Duration::from_secs(1),
            scale: 0.002,
            ..QueryCost::default()
        }),
        ..PostHogConfig::default()
    });
    let started = std::time::Instant::now();
    let (status, _, body) = post(
        &ph,
        &format!("SELECT uuid FROM events WHERE {DAY_2} LIMIT 5"),
        day_2(),
    )
    .await;
    assert_eq!(status, 504);
    assert!(
        started.elapsed() >= Duration::from_millis(20),
        "10 s x 0.002"
    );
    assert_eq!(
        body,
        json!({"type": "server_error", "code": "error", "detail": "This query hit the 10-second time limit for queries run through the API. Submit it as an async query to give it more time. You can also narrow the date range or the filters so it scans less data.", "attr": null})
    );
    let logged = last_logged(&ph);
    assert!(
        logged.query_time > Duration::from_secs(10),
        "{:?}",
        logged.query_time
    );
    assert_eq!(ph.with_state(|s| s.cost.timeouts), 1);

    // A narrow one finishes: its time is what it read.
    let (status, _, _) = post(&ph, "SELECT uuid FROM events WHERE timestamp >= toDateTime64({start}, 6, 'UTC') AND timestamp <= toDateTime64({end}, 6, 'UTC') AND event = {name} AND cityHash64(distinct_id) < {hi} LIMIT 5", json!({"start": "2024-03-02 00:00:00", "end": "2024-03-02 23:59:59.999999", "name": "signup", "hi": 1u64 << 60})).await;
    assert_eq!(status, 200);
    let logged = last_logged(&ph);
    let shard = logged.shards.iter().max_by_key(|s| s.rows).unwrap();
    let expected = QueryCost::default().base
        + Duration::from_secs(1).mul_f64(shard.rows as f64 / 1000.0)
        + QueryCost::default()
            .per_mb
            .mul_f64(shard.bytes as f64 / (1u64 << 20) as f64);
    let off = logged.query_time.abs_diff(expected);
    assert!(
        off < Duration::from_micros(10),
        "{:?} vs {expected:?}",
        logged.query_time
    );
}

#[tokio::test]
async fn the_concurrency_429_has_posthogs_text_and_no_retry_after() {
    let ph = PostHogStandIn::start(
        PostHogConfig {
            query_latency: Duration::from_millis(600),
            max_concurrent_queries: Some(1),
            query_slot_wait: Duration::from_millis(50),
            ..PostHogConfig::default()
        },
        Vec::new(),
    );
    let (a, b) = tokio::join!(
        post(&ph, "SELECT 1", json!({})),
        post(&ph, "SELECT 1", json!({}))
    );
    let refused = if a.0 == 429 { a } else { b };
    assert_eq!(refused.0, 429);
    assert!(!refused.1.contains_key("retry-after"));
    assert_eq!(refused.2["type"], "throttled_error");
    assert_eq!(refused.2["code"], "throttled");
    let detail = refused.2["detail"].as_str().unwrap();
    let task = detail
        .strip_prefix("Exceeded maximum concurrency limit: 1 for key: api:query:per-team:4242 and task: api_query_")
        .unwrap_or_else(|| panic!("{detail}"));
    assert!(task.parse::<u64>().is_ok(), "{detail}");

    let fault: Value = serde_json::from_str(&Fault::concurrency_limit("4242").body).unwrap();
    assert_eq!(
        fault["detail"],
        "Exceeded maximum concurrency limit: 3 for key: api:query:per-team:4242 and task: api_query_0"
    );
    assert!(Fault::concurrency_limit("4242").retry_after.is_none());
}

#[tokio::test]
async fn counts_by_day_event_and_hash_bucket_are_exact_and_sum_to_the_range() {
    let ph = three_days(PostHogConfig::default());
    let width = u64::MAX / 8 + 1;
    let sql = format!(
        "SELECT intDiv(toUnixTimestamp64Milli(timestamp), 86400000) AS utc_day, event, intDiv(cityHash64(distinct_id), {{bucket_width}}) AS hash_bucket, count() AS n FROM events WHERE {DAY_2} GROUP BY utc_day, event, hash_bucket ORDER BY utc_day, event, hash_bucket LIMIT 10000"
    );
    let values = json!({"start": "2024-03-01 00:00:00.000000", "end": "2024-03-03 00:00:00.000000", "bucket_width": width});
    let (status, body) = query(&ph, &sql, values, true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["columns"],
        json!(["utc_day", "event", "hash_bucket", "n"])
    );
    let mut expected = std::collections::BTreeMap::new();
    for e in ph.events() {
        if e.timestamp >= t("2024-03-01T00:00:00Z") && e.timestamp < t("2024-03-03T00:00:00Z") {
            let day = e.timestamp.timestamp().div_euclid(86_400);
            let bucket = city_hash64(e.distinct_id.as_bytes()) / width;
            *expected
                .entry((day, e.event.clone(), bucket))
                .or_insert(0u64) += 1;
        }
    }
    let got: std::collections::BTreeMap<(i64, String, u64), u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (
                    r[0].as_i64().unwrap(),
                    r[1].as_str().unwrap().to_string(),
                    r[2].as_u64().unwrap(),
                ),
                r[3].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 2 * 6 * 8);
    let sum: u64 = got.values().sum();
    let (_, count) = query(
        &ph,
        &format!("SELECT count() FROM events WHERE {DAY_2}"),
        json!({"start": "2024-03-01 00:00:00.000000", "end": "2024-03-03 00:00:00.000000"}),
        true,
    )
    .await;
    assert_eq!(count["results"][0][0], sum);
    assert_eq!(
        last_logged(&ph).bytes_returned,
        0,
        "counts deliver no stored row"
    );
}

#[tokio::test]
async fn posthogs_answers_for_its_limits_come_word_for_word() {
    let ph = PostHogStandIn::start(PostHogConfig::default(), Vec::new());
    let cases = [
        (
            Fault::query_timeout(),
            504,
            "error",
            "This query hit the 10-second time limit for queries run through the API. Submit it as an async query to give it more time. You can also narrow the date range or the filters so it scans less data.",
        ),
        (
            Fault::estimated_too_long(34.5),
            512,
            "error",
            "Estimated query execution time (34.5 seconds) is too long. Try reducing its scope by changing the time range.",
        ),
        (
            Fault::memory_limit(),
            513,
            "clickhouse_memory_limit_exceeded",
            "Query exceeds memory limits. Try reducing its scope by changing the time range.",
        ),
        (
            Fault::too_many_bytes(),
            400,
            "too_many_bytes",
            "Query exceeds the maximum number of bytes to read.",
        ),
        (
            Fault::read_budget(1_234),
            429,
            "api_queries_budget_exceeded",
            "Exceeded the hourly API query read budget for this project. Expected available in 1234 seconds.",
        ),
    ];
    for (fault, status, code, detail) in cases {
        ph.fault_next(fault);
        let (got, headers, body) = post(&ph, "SELECT 1", json!({})).await;
        assert_eq!(
            (got, body["code"].as_str(), body["detail"].as_str()),
            (status, Some(code), Some(detail))
        );
        assert!(body["attr"].is_null() && body["type"].is_string());
        assert_eq!(headers.get("retry-after").is_some(), status == 429);
    }
}

#[tokio::test]
async fn page_faults_bring_rows_that_fail_the_where_next_to_the_page() {
    let window =
        json!({"start": "2024-03-02 00:00:00.000000", "end": "2024-03-03 00:00:00.000000"});
    let sql = format!(
        "SELECT uuid, timestamp, event FROM events WHERE {DAY_2} AND event IN ({{e}}) ORDER BY timestamp, uuid LIMIT 50"
    );
    let values = with(window, json!({"e": "signup"}));
    let times = |body: &Value| -> Vec<DateTime<Utc>> {
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| t(r[1].as_str().unwrap()))
            .collect()
    };
    let healthy = three_days(PostHogConfig::default());
    let (_, good) = query(&healthy, &sql, values.clone(), true).await;
    let good_times = times(&good);

    let ph = three_days(PostHogConfig {
        page_fault: Some(posthog_patterns_standin::PageFault::RowPastEnd),
        ..PostHogConfig::default()
    });
    let (_, body) = query(&ph, &sql, values.clone(), true).await;
    let got = times(&body);
    assert_eq!(got[..49], good_times[..49]);
    // The first row after the page that fails the WHERE: another event, or past the window.
    let last = &body["results"][49];
    assert!(got[49] >= good_times[48]);
    assert!(
        last[2] != "signup" || got[49] >= t("2024-03-03T00:00:00Z"),
        "{last}"
    );

    ph.set_config(|c| c.page_fault = Some(posthog_patterns_standin::PageFault::RowBeforeStart));
    let (_, body) = query(&ph, &sql, values.clone(), true).await;
    let got = times(&body);
    assert_eq!(got[1..], good_times[1..]);
    let first = &body["results"][0];
    assert!(got[0] <= good_times[0]);
    assert!(
        first[2] != "signup" || got[0] < t("2024-03-02T00:00:00Z"),
        "{first}"
    );

    ph.set_config(|c| c.page_fault = Some(posthog_patterns_standin::PageFault::IgnoreFilters));
    let (_, body) = query(&ph, &sql, values, true).await;
    let events: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[2].as_str().unwrap())
        .collect();
    assert!(
        events.iter().any(|e| *e != "signup"),
        "the event filter was ignored"
    );
}
