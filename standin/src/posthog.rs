//! The PostHog stand-in: the Query API's HogQL endpoint for the queries this tool writes,
//! with PostHog's rules (../shared/posthog-api.md): bearer auth with scopes, LIMIT capped at
//! 50,000 (100 without LIMIT), OFFSET refused, ClickHouse uuid order, project time zone
//! unless `convertToProjectTimezone: false`, 504 for queries that scan too much, throttling,
//! and on demand the time a query takes and the cap on queries running at once.
//! It parses only the SQL shapes it knows and answers 400 to anything else, as HogQL would.

use super::data::{self, StoredEvent, uuid_key};
use super::{Fault, Faults, Server, serve};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct PostHogConfig {
    pub project_id: String,
    pub api_key: String,
    /// A key that authenticates but lacks the `query:read` scope (answers 403).
    pub key_without_scope: String,
    /// The project's time zone, as a fixed offset in hours.
    pub tz_offset_hours: i32,
    /// A query whose window holds more rows than this "times out" (504), like the 10 s cap.
    pub max_scan_rows: usize,
    /// Requests allowed per `rate_window` before 429 (None: no throttling).
    pub rate_limit: Option<(usize, Duration)>,
    /// Whether throttle answers carry `Retry-After` (older PostHog versions do not).
    pub retry_after_header: bool,
    /// Query API: how long each query runs before it is answered (a real one takes a second
    /// or more).
    pub query_latency: Duration,
    /// Query API: at most this many queries run at once (PostHog: 3 per organisation); one
    /// more waits up to `query_slot_wait` for a slot, then gets 429. Read at start.
    pub max_concurrent_queries: Option<usize>,
    /// How long a query waits for a slot before its 429 (PostHog: 30 s).
    pub query_slot_wait: Duration,
    /// Whether `/query/` exists (old self-hosted instances have only the Events API).
    pub query_api: bool,
    /// The Events API's server-side sleep for every request with an `offset` (1 s in PostHog).
    pub offset_delay: Duration,
    /// Events API: order events that share a timestamp differently on every request (it
    /// orders by timestamp only, so nothing promises a stable order among them).
    pub unstable_ties: bool,
    /// How far the stand-in's clock is ahead of this machine's (negative: behind). It shows
    /// in every `Date` header and in HogQL's `now()`, as PostHog's clock would.
    pub clock_offset: chrono::Duration,
    /// Query API: return at most this many rows whatever the LIMIT (older self-hosted
    /// versions cap HogQL results at 10,000; a proxy can cut a response).
    pub row_cap: Option<usize>,
    /// Query API: answer pages that break PostHog's rules (see [`PageFault`]).
    pub page_fault: Option<PageFault>,
    /// Error answers end with the request's path and `Authorization` header, as some proxies
    /// and debug pages echo them.
    pub echo_requests: bool,
    /// Query API answers have each text replaced by these raw bytes after serializing: what
    /// JSON cannot hold (bytes that are not UTF-8) or what serde refuses (an escaped lone
    /// surrogate in the `properties` string).
    pub body_substitutions: Vec<(String, Vec<u8>)>,
}

/// Ways an answer with rows can end part-way, as a broken connection or a proxy ends it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Spoil {
    /// The connection breaks after this share of the body (0.0-1.0) was sent.
    Cut(f64),
    /// After this share of the body, a proxy's HTML error page follows instead of the rest.
    Garble(f64),
}

/// Ways a faulty server or proxy can break a Query API page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageFault {
    /// The last row is an event from past the window's end.
    RowPastEnd,
    /// The first row is an event from before the window's start.
    RowBeforeStart,
    /// The rows come in reverse order.
    Reversed,
    /// Every other page repeats the page before the previous one: A, B, A, B, ...
    Cycle,
    /// The event-name and `created_at` conditions are ignored.
    IgnoreFilters,
}

impl Default for PostHogConfig {
    fn default() -> Self {
        PostHogConfig {
            project_id: "4242".into(),
            api_key: "phx_standin_secret_key_0123456789".into(),
            key_without_scope: "phx_standin_key_without_scope".into(),
            tz_offset_hours: 5,
            max_scan_rows: 200_000,
            rate_limit: None,
            retry_after_header: true,
            query_latency: Duration::ZERO,
            max_concurrent_queries: None,
            query_slot_wait: Duration::from_secs(30),
            query_api: true,
            offset_delay: Duration::from_secs(1),
            unstable_ties: false,
            clock_offset: chrono::Duration::zero(),
            row_cap: None,
            page_fault: None,
            echo_requests: false,
            body_substitutions: Vec::new(),
        }
    }
}

/// One request as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// For queries: the SQL and the `values`.
    pub sql: Option<String>,
    pub values: Option<Value>,
    pub modifiers: Option<Value>,
}

pub struct State {
    pub config: PostHogConfig,
    events: Vec<StoredEvent>,
    pub(crate) faults: Faults,
    pub log: Vec<Logged>,
    recent: VecDeque<Instant>,
    /// Pages answered so far, for `PageFault::Cycle`.
    pages: Vec<Vec<Value>>,
    /// How the next answers with rows end part-way (see [`PostHogStandIn::spoil_next_answers`]).
    spoils: VecDeque<Spoil>,
    /// The query slots of `max_concurrent_queries`.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Queries running now, the most that ever ran at once, and those refused (429) because
    /// no slot came free in time.
    pub queries_running: usize,
    pub queries_running_peak: usize,
    pub queries_refused_for_concurrency: usize,
}

pub struct PostHogStandIn {
    pub server: Server,
    state: Arc<Mutex<State>>,
}

impl PostHogStandIn {
    pub fn start(config: PostHogConfig, events: Vec<StoredEvent>) -> Self {
        Self::start_with(config, events, serve)
    }

    /// The same stand-in over HTTPS, with a self-signed certificate (see
    /// [`Server::certificate`]) that clients refuse unless told to trust it.
    #[cfg(feature = "tls")]
    pub fn start_https(config: PostHogConfig, events: Vec<StoredEvent>) -> Self {
        Self::start_with(config, events, crate::serve_https)
    }

    fn start_with(
        config: PostHogConfig,
        events: Vec<StoredEvent>,
        serve: fn(Router) -> Server,
    ) -> Self {
        let slots = config
            .max_concurrent_queries
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
        let state = Arc::new(Mutex::new(State {
            config,
            slots,
            queries_running: 0,
            queries_running_peak: 0,
            queries_refused_for_concurrency: 0,
            events: Vec::new(),
            faults: Faults::default(),
            spoils: VecDeque::new(),
            log: Vec::new(),
            recent: VecDeque::new(),
            pages: Vec::new(),
        }));
        let me = PostHogStandIn {
            server: serve(router(state.clone())),
            state,
        };
        me.insert(events);
        me
    }

    pub fn url(&self) -> String {
        self.server.base_url()
    }

    pub fn config(&self) -> PostHogConfig {
        self.state.lock().unwrap().config.clone()
    }

    /// Adds events (e.g. late arrivals) keeping PostHog's order. Times are kept to the
    /// microsecond, as in PostHog's `DateTime64(6)` columns.
    pub fn insert(&self, events: Vec<StoredEvent>) {
        let mut s = self.state.lock().unwrap();
        s.events.extend(events.into_iter().map(|mut e| {
            e.timestamp = data::to_micros(e.timestamp);
            e.created_at = data::to_micros(e.created_at);
            e
        }));
        // Cached: the key parses a uuid, and the benchmark sorts a million events.
        s.events.sort_by_cached_key(StoredEvent::order_key);
    }

    pub fn events(&self) -> Vec<StoredEvent> {
        self.state.lock().unwrap().events.clone()
    }

    /// Answers request number `n` (0-based, counting every request) with `fault`.
    pub fn fault_at(&self, n: usize, fault: Fault) {
        self.state.lock().unwrap().faults.at.insert(n, fault);
    }

    /// Answers the next request with `fault`.
    pub fn fault_next(&self, fault: Fault) {
        self.state.lock().unwrap().faults.next.push_back(fault);
    }

    /// Spoils the next Query API answers that hold more than one row, one per `Spoil`.
    pub fn spoil_next_answers(&self, spoils: impl IntoIterator<Item = Spoil>) {
        self.state.lock().unwrap().spoils.extend(spoils);
    }

    /// Forgets every injected fault not yet used.
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults = Faults::default();
    }

    /// The stand-in's clock (see `PostHogConfig::clock_offset`).
    pub fn now(&self) -> DateTime<Utc> {
        self.state.lock().unwrap().now()
    }

    /// Moves the stand-in's clock forward, as time passing between two cron runs would.
    pub fn advance_clock(&self, by: chrono::Duration) {
        self.state.lock().unwrap().config.clock_offset += by;
    }

    pub fn set_config(&self, f: impl FnOnce(&mut PostHogConfig)) {
        f(&mut self.state.lock().unwrap().config);
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// Reads the state (counters, the request log) without copying it.
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.lock().unwrap())
    }
}

fn router(state: Arc<Mutex<State>>) -> Router {
    Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move { handle(&state, method, uri, headers, body).await }
        },
    )
}

async fn handle(
    state: &Mutex<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let (fault, parsed) = {
        let mut s = state.lock().unwrap();
        let n = s.log.len();
        s.log.push(Logged {
            method: method.to_string(),
            path: path.clone(),
            status: 0,
            sql: None,
            values: None,
            modifiers: None,
        });
        (
            s.faults.take(n),
            serde_json::from_slice::<Value>(&body).ok(),
        )
    };
    if let Some(q) = parsed.as_ref().and_then(|b| b.get("query")) {
        let mut s = state.lock().unwrap();
        let last = s.log.last_mut().expect("just pushed");
        last.sql = q.get("query").and_then(Value::as_str).map(str::to_owned);
        last.values = q.get("values").cloned();
        last.modifiers = q.get("modifiers").cloned();
    }
    let response = match fault {
        Some(fault) => {
            tokio::time::sleep(fault.delay).await;
            fault.response()
        }
        None => {
            let (response, delay) = answer(
                state,
                &method,
                &path,
                uri.query().unwrap_or(""),
                &headers,
                parsed,
            );
            if method == Method::POST && runs_a_query(&path, response.status()) {
                run_in_slot(state, response, delay).await
            } else {
                tokio::time::sleep(delay).await;
                response
            }
        }
    };
    let echo = state.lock().unwrap().config.echo_requests;
    let mut response = if echo {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        super::echoed(
            response,
            &format!(" (request: {method} {uri}, Authorization: {auth})"),
        )
        .await
    } else {
        response
    };
    let mut s = state.lock().unwrap();
    s.log.last_mut().expect("logged").status = response.status().as_u16();
    let now = s.now();
    let date = now.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    response.headers_mut().insert(
        axum::http::header::DATE,
        date.parse().expect("a valid header value"),
    );
    response
}

/// Whether a request reached ClickHouse: a query that passed authentication, the project
/// check and the rate limit.
fn runs_a_query(path: &str, status: StatusCode) -> bool {
    path.trim_end_matches('/').ends_with("/query")
        && ![401, 403, 404, 429].contains(&status.as_u16())
}

/// Runs a query for `query_latency` (plus `delay`), in one of the `max_concurrent_queries`
/// slots when there is a cap: waiting for one up to `query_slot_wait`, else answering 429 as
/// PostHog does. (Inferred: PostHog raises DRF's `Throttled` without a wait, so the answer
/// has no `Retry-After`.)
async fn run_in_slot(state: &Mutex<State>, response: Response, delay: Duration) -> Response {
    let (slots, wait, latency) = {
        let s = state.lock().unwrap();
        (
            s.slots.clone(),
            s.config.query_slot_wait,
            s.config.query_latency,
        )
    };
    let _permit = match &slots {
        None => None,
        Some(slots) => match tokio::time::timeout(wait, slots.acquire()).await {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                state.lock().unwrap().queries_refused_for_concurrency += 1;
                let body = json!({"type": "throttled_error", "code": "throttled", "detail": "Request was throttled. Too many queries are running at once for this organization.", "attr": null});
                return (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
            }
        },
    };
    let _running = Running::start(state);
    tokio::time::sleep(latency + delay).await;
    response
}

/// Counts a query as running until dropped (also when its client hangs up mid-query).
struct Running<'a>(&'a Mutex<State>);

impl<'a> Running<'a> {
    fn start(state: &'a Mutex<State>) -> Self {
        let mut s = state.lock().unwrap();
        s.queries_running += 1;
        s.queries_running_peak = s.queries_running_peak.max(s.queries_running);
        Running(state)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap().queries_running -= 1;
    }
}

impl State {
    /// The stand-in's clock: this machine's, shifted by `clock_offset`.
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.config.clock_offset
    }
}

pub(crate) fn error(status: u16, kind: &str, detail: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("valid status");
    (
        status,
        axum::Json(json!({"type": kind, "code": kind, "detail": detail, "attr": null})),
    )
        .into_response()
}

/// The answer, and how long the server sleeps before giving it.
fn answer(
    state: &Mutex<State>,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Option<Value>,
) -> (Response, Duration) {
    let mut s = state.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let now = |r: Response| (r, Duration::ZERO);
    if auth == s.config.key_without_scope {
        return now(error(
            403,
            "permission_denied",
            "API key missing required scope 'query:read'",
        ));
    }
    if auth != s.config.api_key {
        return now(error(
            401,
            "authentication_error",
            "Personal API key found in request Authorization header is invalid.",
        ));
    }
    if let Some((limit, window)) = s.config.rate_limit {
        let at = Instant::now();
        while s
            .recent
            .front()
            .is_some_and(|t| at.duration_since(*t) >= window)
        {
            s.recent.pop_front();
        }
        if s.recent.len() >= limit {
            let wait = window
                .saturating_sub(at.duration_since(s.recent[0]))
                .as_secs()
                .max(1);
            return now(Fault::throttled(wait, s.config.retry_after_header).response());
        }
        s.recent.push_back(at);
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["api", "projects" | "environments", id, "query"])
            if *id == s.config.project_id && s.config.query_api =>
        {
            now(match body {
                Some(body) => run_query(&mut s, &body),
                None => error(400, "validation_error", "JSON parse error"),
            })
        }
        ("GET", ["api", "projects" | "environments", id, "events"])
            if *id == s.config.project_id =>
        {
            super::events_api::list(&s.config, &s.events, path, query, s.log.len() as u64)
        }
        _ => now(error(404, "invalid_request", "Not found.")),
    }
}

/// A HogQL query of the shape this tool writes: SELECT cols FROM events WHERE conds
/// ORDER BY timestamp, uuid [LIMIT n].
fn run_query(s: &mut State, body: &Value) -> Response {
    match evaluate(s, body) {
        Ok(v) => {
            let mut bytes = serde_json::to_vec(&v).expect("JSON values serialize");
            for (text, raw) in &s.config.body_substitutions {
                bytes = substitute(&bytes, text.as_bytes(), raw);
            }
            let rows = v["results"].as_array().map_or(0, Vec::len);
            let spoil = if rows > 1 { s.spoils.pop_front() } else { None };
            let headers = [("content-type", "application/json")];
            match spoil {
                None => (headers, bytes).into_response(),
                Some(Spoil::Cut(share)) => {
                    bytes.truncate((bytes.len() as f64 * share) as usize);
                    // The head and the first part go out before the connection breaks, as
                    // when a connection fails part-way through an answer.
                    use futures_util::StreamExt;
                    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes)]);
                    let broken = futures_util::stream::once(async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err(std::io::Error::other("connection broken by the stand-in"))
                    });
                    let body = axum::body::Body::from_stream(first.chain(broken));
                    (headers, body).into_response()
                }
                Some(Spoil::Garble(share)) => {
                    bytes.truncate((bytes.len() as f64 * share) as usize);
                    bytes.extend_from_slice(b"<html><body><h1>502 Bad Gateway</h1></body></html>");
                    (headers, bytes).into_response()
                }
            }
        }
        Err((status, detail)) => error(
            status,
            if status == 400 {
                "validation_error"
            } else {
                "server_error"
            },
            &detail,
        ),
    }
}

/// `bytes` with every `from` replaced by `to`.
fn substitute(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if !from.is_empty() && bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

type Fail = (u16, String);

fn bad(detail: impl Into<String>) -> Fail {
    (400, detail.into())
}

struct Query {
    columns: Vec<String>,
    lo: Option<DateTime<Utc>>,
    hi: Option<DateTime<Utc>>,
    after: Option<(DateTime<Utc>, (u64, u64))>,
    include: Option<Vec<String>>,
    exclude: Vec<String>,
    created_after: Option<DateTime<Utc>>,
    created_until: Option<DateTime<Utc>>,
    limit: Option<usize>,
}

fn evaluate(s: &mut State, body: &Value) -> Result<Value, Fail> {
    let q = &body["query"];
    if q["kind"] != "HogQLQuery" {
        return Err(bad("stand-in: only HogQLQuery is supported"));
    }
    let sql = q["query"]
        .as_str()
        .ok_or_else(|| bad("query.query must be a string"))?;
    let values = q["values"].as_object().cloned().unwrap_or_default();
    let utc = q["modifiers"]["convertToProjectTimezone"] == json!(false);
    let tz = FixedOffset::east_opt(s.config.tz_offset_hours * 3600).expect("valid offset");
    let zone = if utc { None } else { Some(tz) };
    let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if sql == "SELECT now()" {
        let now = format_time(data::to_micros(s.now()), zone);
        return Ok(
            json!({"results": [[now]], "columns": ["now()"], "types": ["DateTime64(6, 'UTC')"], "is_cached": false}),
        );
    }
    if sql == "SELECT 1" {
        return Ok(
            json!({"results": [[1]], "columns": ["1"], "types": ["UInt8"], "is_cached": false}),
        );
    }
    let query = parse(&sql, &values, zone)?;

    // Rows the window makes ClickHouse read; too many and the 10 s limit is hit.
    let lo = query.after.map(|a| a.0).or(query.lo);
    let first = lo.map_or(0, |lo| s.events.partition_point(|e| e.timestamp < lo));
    let last = query.hi.map_or(s.events.len(), |hi| {
        s.events.partition_point(|e| e.timestamp < hi)
    });
    let scanned = last.saturating_sub(first);
    if scanned > s.config.max_scan_rows {
        return Err((
            504,
            format!("Query exceeded the maximum execution time (scanned {scanned} rows)"),
        ));
    }
    let fault = s.config.page_fault;
    let filtered = fault != Some(PageFault::IgnoreFilters);
    let keep = |e: &StoredEvent| {
        let by_filters = query
            .include
            .as_ref()
            .is_some_and(|names| !names.contains(&e.event))
            || query.exclude.contains(&e.event)
            || query.created_after.is_some_and(|t| e.created_at <= t)
            || query.created_until.is_some_and(|t| e.created_at > t);
        !(query.lo.is_some_and(|lo| e.timestamp < lo)
            || query.after.is_some_and(|a| e.order_key() <= (a.0, a.1))
            || filtered && by_filters)
    };
    if query.columns == ["count()"] {
        let n = s.events[first..last.max(first)]
            .iter()
            .filter(|e| keep(e))
            .count();
        return Ok(
            json!({"results": [[n]], "columns": ["count()"], "types": ["UInt64"], "is_cached": false}),
        );
    }
    let cap = query
        .limit
        .unwrap_or(100)
        .min(50_000)
        .min(s.config.row_cap.unwrap_or(usize::MAX));
    let row = |e: &StoredEvent| -> Value {
        Value::Array(query.columns.iter().map(|c| column(e, c, zone)).collect())
    };
    let mut rows = Vec::new();
    let mut has_more = false;
    for e in &s.events[first..last.max(first)] {
        if !keep(e) {
            continue;
        }
        if rows.len() == cap {
            has_more = true;
            break;
        }
        rows.push(row(e));
    }
    match fault {
        Some(PageFault::RowPastEnd) => {
            if let Some(e) = s.events.get(last) {
                rows.pop();
                rows.push(row(e));
            }
        }
        Some(PageFault::RowBeforeStart) => {
            if let Some(e) = first.checked_sub(1).and_then(|i| s.events.get(i)) {
                rows.pop();
                rows.insert(0, row(e));
            }
        }
        Some(PageFault::Reversed) => rows.reverse(),
        Some(PageFault::Cycle) => {
            if s.pages.len() >= 2 {
                rows = s.pages[s.pages.len() - 2].clone();
            }
            s.pages.push(rows.clone());
        }
        Some(PageFault::IgnoreFilters) | None => {}
    }
    let mut out = json!({
        "results": rows,
        "columns": query.columns,
        "types": query.columns.iter().map(|_| "String").collect::<Vec<_>>(),
        "is_cached": false,
    });
    if query.limit.is_none() {
        out["hasMore"] = json!(has_more);
    }
    Ok(out)
}

fn column(e: &StoredEvent, name: &str, tz: Option<FixedOffset>) -> Value {
    match name {
        "uuid" => json!(e.uuid),
        "event" => json!(e.event),
        "distinct_id" => json!(e.distinct_id),
        "properties" => json!(e.properties),
        "elements_chain" => json!(e.elements_chain),
        "timestamp" => json!(format_time(e.timestamp, tz)),
        "created_at" => json!(format_time(e.created_at, tz)),
        _ => Value::Null,
    }
}

/// RFC 3339; `Z` in UTC, the project's offset otherwise; no fraction when it is zero.
fn format_time(t: DateTime<Utc>, tz: Option<FixedOffset>) -> String {
    let fmt = if t.timestamp_subsec_micros() == 0 {
        "%Y-%m-%dT%H:%M:%S"
    } else {
        "%Y-%m-%dT%H:%M:%S%.6f"
    };
    match tz {
        None => format!("{}Z", t.format(fmt)),
        Some(tz) => format!(
            "{}{}",
            t.with_timezone(&tz).format(fmt),
            t.with_timezone(&tz).format("%:z")
        ),
    }
}

const KNOWN_COLUMNS: [&str; 7] = [
    "uuid",
    "event",
    "distinct_id",
    "properties",
    "elements_chain",
    "timestamp",
    "created_at",
];

fn parse(
    sql: &str,
    values: &serde_json::Map<String, Value>,
    tz: Option<FixedOffset>,
) -> Result<Query, Fail> {
    if sql.to_ascii_uppercase().contains(" OFFSET ") {
        return Err(bad(
            "OFFSET is not supported for queries made with a personal API key. Use keyset pagination (a WHERE on the sort key) instead.",
        ));
    }
    let rest = sql
        .strip_prefix("SELECT ")
        .ok_or_else(|| bad("stand-in: expected SELECT"))?;
    let (cols, rest) = rest
        .split_once(" FROM events")
        .ok_or_else(|| bad("stand-in: expected FROM events"))?;
    let columns: Vec<String> = cols.split(',').map(|c| c.trim().to_string()).collect();
    let count = columns == ["count()"];
    if let Some(c) = columns
        .iter()
        .find(|c| !count && !KNOWN_COLUMNS.contains(&c.as_str()))
    {
        return Err(bad(format!("Unable to resolve field: {c}")));
    }
    let (rest, limit) = match rest.rsplit_once(" LIMIT ") {
        Some((r, n)) => (
            r,
            Some(
                n.trim()
                    .parse::<usize>()
                    .map_err(|_| bad("LIMIT must be a number"))?,
            ),
        ),
        None => (rest, None),
    };
    let where_clause = match rest.strip_suffix(" ORDER BY timestamp, uuid") {
        Some(w) => w,
        None if count => rest,
        None => return Err(bad("stand-in: expected ORDER BY timestamp, uuid")),
    };
    let mut q = Query {
        columns,
        lo: None,
        hi: None,
        after: None,
        include: None,
        exclude: Vec::new(),
        created_after: None,
        created_until: None,
        limit,
    };
    let Some(conds) = where_clause.trim().strip_prefix("WHERE ") else {
        return if where_clause.trim().is_empty() {
            Ok(q)
        } else {
            Err(bad("stand-in: expected WHERE"))
        };
    };
    let value = |name: &str| -> Result<String, Fail> {
        values
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                bad(format!(
                    "Placeholder {{{name}}} is not available in this context"
                ))
            })
    };
    let time = |name: &str| -> Result<DateTime<Utc>, Fail> {
        let text = value(name)?;
        let naive = NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f")
            .map_err(|_| bad(format!("cannot parse {text:?} as DateTime64")))?;
        // Without the modifier, constants are read in the project's time zone.
        Ok(match tz {
            None => naive.and_utc(),
            Some(tz) => naive
                .and_local_timezone(tz)
                .single()
                .expect("fixed offset")
                .with_timezone(&Utc),
        })
    };
    for cond in split_and(conds) {
        if let Some(name) = dt_arg(cond, "timestamp >= ") {
            q.lo = Some(time(name)?);
        } else if let Some(name) = dt_arg(cond, "timestamp < ") {
            q.hi = Some(time(name)?);
        } else if let Some(name) = dt_arg(cond, "created_at > ") {
            q.created_after = Some(time(name)?);
        } else if let Some(name) = dt_arg(cond, "created_at <= ") {
            q.created_until = Some(time(name)?);
        } else if let Some((ts, uuid)) = keyset(cond) {
            q.after = Some((time(ts)?, uuid_key(&value(uuid)?)));
        } else if let Some(list) = cond
            .strip_prefix("event NOT IN (")
            .and_then(|r| r.strip_suffix(')'))
        {
            q.exclude = names(list, &value)?;
        } else if let Some(list) = cond
            .strip_prefix("event IN (")
            .and_then(|r| r.strip_suffix(')'))
        {
            q.include = Some(names(list, &value)?);
        } else {
            return Err(bad(format!("stand-in: unsupported condition {cond:?}")));
        }
    }
    Ok(q)
}

/// `<prefix>toDateTime64({name}, 6, 'UTC')` -> name.
fn dt_arg<'a>(cond: &'a str, prefix: &str) -> Option<&'a str> {
    cond.strip_prefix(prefix)?
        .strip_prefix("toDateTime64({")?
        .strip_suffix("}, 6, 'UTC')")
}

/// The keyset condition -> (timestamp placeholder, uuid placeholder).
fn keyset(cond: &str) -> Option<(&str, &str)> {
    let ts = cond
        .strip_prefix("(timestamp > toDateTime64({")?
        .split('}')
        .next()?;
    let uuid = cond
        .rsplit_once("uuid > toUUID({")?
        .1
        .strip_suffix("})))")?;
    let expected = format!(
        "(timestamp > toDateTime64({{{ts}}}, 6, 'UTC') OR (timestamp = toDateTime64({{{ts}}}, 6, 'UTC') AND uuid > toUUID({{{uuid}}})))"
    );
    (cond == expected).then_some((ts, uuid))
}

fn names(list: &str, value: &dyn Fn(&str) -> Result<String, Fail>) -> Result<Vec<String>, Fail> {
    list.split(", ")
        .map(|p| {
            let name = p
                .strip_prefix('{')
                .and_then(|p| p.strip_suffix('}'))
                .ok_or_else(|| bad("stand-in: event lists must be placeholders"))?;
            value(name)
        })
        .collect()
}

/// Splits on ` AND ` outside parentheses.
fn split_and(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b' ' if depth == 0 && text[i..].starts_with(" AND ") => {
                out.push(text[start..i].trim());
                i += 5;
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(text[start..].trim());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_top_level_conditions_only() {
        let parts = split_and("a >= 1 AND (b > 2 OR (b = 2 AND c > 3)) AND d IN (1, 2)");
        assert_eq!(
            parts,
            vec!["a >= 1", "(b > 2 OR (b = 2 AND c > 3))", "d IN (1, 2)"]
        );
    }

    #[test]
    fn times_without_fraction_drop_it() {
        let t: DateTime<Utc> = "2024-01-01T12:34:56Z".parse().unwrap();
        assert_eq!(format_time(t, None), "2024-01-01T12:34:56Z");
        let tz = FixedOffset::east_opt(5 * 3600);
        assert_eq!(format_time(t, tz), "2024-01-01T17:34:56+05:00");
    }
}
