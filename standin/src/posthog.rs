//! The PostHog stand-in: the Query API and the legacy Events API with PostHog's rules
//! (../shared/posthog-api.md): auth and scopes, LIMIT caps, OFFSET refused, time zones, throttling,
//! concurrency, and what a query costs (rows and bytes read, its time, the 10 s cap, the read
//! budget), each refusal in PostHog's words.

use super::answer::{Answer as AnswerWriter, format_time};
use super::data::StoredEvent;
use super::engine::{self, Outcome, Rows, ShardRead, Stray};
use super::events_api::TieOrder;
use super::hogql::{self, Statement};
use super::storage::{Storage, Table};
use super::{Fault, Faults, Server, serve};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, FixedOffset, Utc};
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
    /// A query that would read more rows than this (on PostHog's sort key, all shards
    /// together) answers PostHog's 504 at once, as its limits refuse it.
    pub max_scan_rows: usize,
    /// Requests allowed per `rate_window` before 429 (None: no throttling).
    pub rate_limit: Option<(usize, Duration)>,
    /// Whether throttle answers carry `Retry-After` (older PostHog versions do not).
    pub retry_after_header: bool,
    /// Query API: a fixed time each query runs before it is answered, on top of what its
    /// reads cost (`cost`).
    pub query_latency: Duration,
    /// Query API: at most this many queries run at once (PostHog: 3 per project); one
    /// more waits up to `query_slot_wait` for a slot, then gets 429. Read at start.
    pub max_concurrent_queries: Option<usize>,
    /// How long a query waits for a slot before its 429 (PostHog: 30 s).
    pub query_slot_wait: Duration,
    /// Whether `/query/` exists (old self-hosted instances have only the Events API).
    pub query_api: bool,
    /// The Events API's server-side sleep for every request with an `offset` (1 s in PostHog).
    pub offset_delay: Duration,
    /// Events API: the order of events that share a timestamp (it orders by timestamp only).
    pub tie_order: TieOrder,
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
    /// Query API: `properties` written as the JSON object it holds, not as JSON text in a
    /// string (as a proxy, a fork or another server version may send it).
    pub properties_as_object: bool,
    /// How events are laid out (shards, parts, granules). Read at start.
    pub storage: Storage,
    /// How long a query takes for what it reads, and the 10 s limit (None: no cost latency).
    pub cost: Option<QueryCost>,
    /// The project's read budget for API queries (None: unlimited).
    pub read_budget: Option<ReadBudget>,
    /// Query API: answer queries asynchronously, HTTP 202 with a `query_status` to poll, as
    /// PostHog does for `refresh: "async"` and may do under load (None: blocking answers).
    pub async_answers: Option<AsyncAnswers>,
}

/// How queries answered asynchronously complete: `GET .../query/{id}/` answers "not complete"
/// `polls` times, then gives the result in `query_status.results`; the first `stuck` pages
/// (queries for events) never complete (until cancelled with `DELETE .../query/{id}/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncAnswers {
    pub polls: usize,
    pub stuck: usize,
}

/// How long PostHog takes for what a query reads. Shards read in parallel, so the busiest one
/// decides: `base + per_mb * MiB + per_1000_rows * thousands of rows` of the shard for which
/// that is the most.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueryCost {
    /// Any query's own time (parsing, planning, the HTTP round trip inside PostHog).
    pub base: Duration,
    /// Per MiB (uncompressed, as `bytes_read` counts) the busiest shard reads.
    pub per_mb: Duration,
    /// Per 1,000 rows the busiest shard reads.
    pub per_1000_rows: Duration,
    /// Past this, the query is stopped and answers PostHog's 504 (10 s for API queries).
    pub cap: Duration,
    /// Real seconds slept per PostHog second: 1.0 in benchmarks, e.g. 0.001 in tests.
    pub scale: f64,
}

impl Default for QueryCost {
    /// Assumed figures (PostHog publishes none): 0.3 s for any query, ~250 MB/s and
    /// ~2 M rows/s per shard, so a 500k-event day (261 MB) on one shard takes about 1.6 s,
    /// the order of the 1.5 s PostHog queries the benchmark measures.
    fn default() -> Self {
        QueryCost {
            base: Duration::from_millis(300),
            per_mb: Duration::from_millis(4),
            per_1000_rows: Duration::from_micros(500),
            cap: Duration::from_secs(10),
            scale: 1.0,
        }
    }
}

impl QueryCost {
    /// PostHog's time for a query that read `shards`.
    pub fn time(&self, shards: &[ShardRead]) -> Duration {
        let busiest = shards
            .iter()
            .map(|s| {
                self.per_mb.mul_f64(s.bytes as f64 / (1u64 << 20) as f64)
                    + self.per_1000_rows.mul_f64(s.rows as f64 / 1000.0)
            })
            .max()
            .unwrap_or_default();
        self.base + busiest
    }
}

/// A project's read budget: once queries have read `bytes` in a `window` (fixed windows, the
/// first starting at the first query), the next queries of that window get 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadBudget {
    pub bytes: u64,
    pub window: Duration,
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
    /// The last row is replaced by the first row after it (in the query's ORDER BY) that
    /// does not satisfy the WHERE: e.g. one from past the window's end.
    RowPastEnd,
    /// The first row is replaced by the last row before it (in the query's ORDER BY) that
    /// does not satisfy the WHERE: e.g. one from before the window's start.
    RowBeforeStart,
    /// The rows come in reverse order.
    Reversed,
    /// Every other page repeats the page before the previous one: A, B, A, B, ...
    Cycle,
    /// The `event [NOT] IN` and `created_at` conditions are ignored.
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
            tie_order: TieOrder::PerRequest,
            clock_offset: chrono::Duration::zero(),
            row_cap: None,
            page_fault: None,
            echo_requests: false,
            body_substitutions: Vec::new(),
            properties_as_object: false,
            storage: Storage::default(),
            cost: None,
            read_budget: None,
            async_answers: None,
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
    /// For queries: what ClickHouse read, all shards together (a query stopped at the 10 s
    /// cap: the share it read by then, and nothing returned; one refused: nothing).
    pub reads: QueryReads,
}

impl Logged {
    fn new(method: String, path: String) -> Self {
        Logged {
            method,
            path,
            status: 0,
            sql: None,
            values: None,
            modifiers: None,
            reads: QueryReads::default(),
        }
    }
}

/// What one query reads and returns (see [`PostHogStandIn::dry_run`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryReads {
    pub rows_read: u64,
    pub bytes_read: u64,
    pub rows_returned: u64,
    pub bytes_returned: u64,
    pub shards: Vec<ShardRead>,
    /// PostHog's time for it under `PostHogConfig::cost` (zero without).
    pub query_time: Duration,
}

/// What all queries so far cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CostTotals {
    /// Queries that ran (refused ones not counted).
    pub queries: u64,
    pub rows_read: u64,
    pub bytes_read: u64,
    pub rows_returned: u64,
    pub bytes_returned: u64,
    /// 504s: past `max_scan_rows` or the time cap.
    pub timeouts: u64,
    /// 429s for the spent read budget.
    pub budget_refusals: u64,
}

/// The read budget's current window.
struct BudgetWindow {
    start: Instant,
    spent: u64,
}

pub struct State {
    pub config: PostHogConfig,
    table: Table,
    pub(crate) faults: Faults,
    pub log: Vec<Logged>,
    recent: VecDeque<Instant>,
    /// Pages answered so far (their rows' numbers), for `PageFault::Cycle`.
    pages: Vec<Vec<u32>>,
    /// How the next answers with rows end part-way (see [`PostHogStandIn::spoil_next_answers`]).
    spoils: VecDeque<Spoil>,
    /// The query slots of `max_concurrent_queries`.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Queries running now, the most that ever ran at once, and those refused (429) because
    /// no slot came free in time.
    pub queries_running: usize,
    pub queries_running_peak: usize,
    pub queries_refused_for_concurrency: usize,
    /// What queries read and returned so far.
    pub cost: CostTotals,
    budget: Option<BudgetWindow>,
    /// Queries answered asynchronously, by id, and the ids of those cancelled.
    async_queries: std::collections::HashMap<String, AsyncQuery>,
    pub cancelled_queries: Vec<String>,
    /// Polls answered "not complete" so far.
    pub polls_not_complete: usize,
    pages_answered_async: usize,
}

/// A query answered asynchronously: polls left before it completes (None: never), and its
/// answer.
struct AsyncQuery {
    polls_left: Option<usize>,
    answer: Bytes,
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
        let mut table = Table::new(config.storage);
        table.insert(events, true);
        let state = Arc::new(Mutex::new(State {
            config,
            slots,
            queries_running: 0,
            queries_running_peak: 0,
            queries_refused_for_concurrency: 0,
            table,
            faults: Faults::default(),
            spoils: VecDeque::new(),
            log: Vec::new(),
            recent: VecDeque::new(),
            pages: Vec::new(),
            cost: CostTotals::default(),
            budget: None,
            async_queries: Default::default(),
            cancelled_queries: Vec::new(),
            polls_not_complete: 0,
            pages_answered_async: 0,
        }));
        PostHogStandIn {
            server: serve(router(state.clone())),
            state,
        }
    }

    pub fn url(&self) -> String {
        self.server.base_url()
    }

    pub fn config(&self) -> PostHogConfig {
        self.state.lock().unwrap().config.clone()
    }

    /// Adds events (e.g. late arrivals) as one ClickHouse INSERT: one new part per shard.
    /// Times are kept to the microsecond, as in PostHog's `DateTime64(6)` columns.
    pub fn insert(&self, events: Vec<StoredEvent>) {
        self.state.lock().unwrap().table.insert(events, false);
    }

    /// Every stored event, by `(timestamp, ClickHouse uuid order)`.
    pub fn events(&self) -> Vec<StoredEvent> {
        self.state
            .lock()
            .unwrap()
            .table
            .by_time()
            .iter()
            .cloned()
            .collect()
    }

    /// Parts per shard, oldest first, as row counts (each `insert` adds one per shard).
    pub fn parts(&self) -> Vec<Vec<usize>> {
        let s = self.state.lock().unwrap();
        s.table
            .shards
            .iter()
            .map(|parts| parts.iter().map(|p| p.rows.len()).collect())
            .collect()
    }

    /// Answers request number `n` (0-based, counting every request) with `fault`.
    pub fn fault_at(&self, n: usize, fault: Fault) {
        self.state.lock().unwrap().faults.at.insert(n, fault);
    }

    /// Answers the next request with `fault`.
    pub fn fault_next(&self, fault: Fault) {
        self.state.lock().unwrap().faults.next.push_back(fault);
    }

    /// Spoils the next Query API pages that hold more than one event, one per `Spoil`.
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

    /// What a HogQL query would read and return, worked out as for `/query/` (times in UTC,
    /// as with `convertToProjectTimezone: false`) but without answering it, counting it or
    /// sleeping: like ClickHouse's `EXPLAIN ESTIMATE`, but exact. Err: the 400's detail.
    pub fn dry_run(&self, sql: &str, values: &Value) -> Result<QueryReads, String> {
        let s = self.state.lock().unwrap();
        let values = values.as_object().cloned().unwrap_or_default();
        let select = match hogql::parse(sql, &values, None)? {
            Statement::Select(select) => select,
            Statement::Now | Statement::One => return Ok(QueryReads::default()),
        };
        let opts = engine::Options {
            cap: select
                .limit
                .unwrap_or(100)
                .min(50_000)
                .min(s.config.row_cap.unwrap_or(usize::MAX)),
            ignore_filters: false,
            stray: None,
        };
        let out = engine::run(&s.table, &select, &opts);
        Ok(QueryReads {
            rows_read: out.rows_read(),
            bytes_read: out.bytes_read(),
            rows_returned: out.rows_returned,
            bytes_returned: out.bytes_returned,
            query_time: s
                .config
                .cost
                .map_or(Duration::ZERO, |c| c.time(&out.shards)),
            shards: out.shards,
        })
    }

    /// Reads the state (counters, the request log, `cost`) without copying it.
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
    state: &Arc<Mutex<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let (n, fault) = {
        let mut s = state.lock().unwrap();
        let n = s.log.len();
        let mut logged = Logged::new(method.to_string(), path.clone());
        if let Some(q) = parsed.as_ref().and_then(|b| b.get("query")) {
            logged.sql = q.get("query").and_then(Value::as_str).map(str::to_owned);
            logged.values = q.get("values").cloned();
            logged.modifiers = q.get("modifiers").cloned();
        }
        s.log.push(logged);
        (n, s.faults.take(n))
    };
    let response = match fault {
        Some(fault) => {
            tokio::time::sleep(fault.delay).await;
            fault.response()
        }
        None => match route(state, &method, &path, uri.query().unwrap_or(""), &headers) {
            Route::Now(response, delay) => {
                tokio::time::sleep(delay).await;
                response
            }
            Route::Query => run_in_slot(state, n, parsed).await,
        },
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
    s.log[n].status = response.status().as_u16();
    let now = s.now();
    let date = now.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    response.headers_mut().insert(
        axum::http::header::DATE,
        date.parse().expect("a valid header value"),
    );
    response
}

/// Runs query request `n` in one of the `max_concurrent_queries` slots when there is a cap
/// (waiting for one up to `query_slot_wait`, else PostHog's 429 without `Retry-After`), for
/// `query_latency` plus the time its reads cost. A query refused here reads nothing.
async fn run_in_slot(state: &Arc<Mutex<State>>, n: usize, body: Option<Value>) -> Response {
    let (slots, wait) = {
        let s = state.lock().unwrap();
        (s.slots.clone(), s.config.query_slot_wait)
    };
    let _permit = match &slots {
        None => None,
        Some(slots) => match tokio::time::timeout(wait, slots.acquire()).await {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                let mut s = state.lock().unwrap();
                s.queries_refused_for_concurrency += 1;
                let limit = s.config.max_concurrent_queries.unwrap_or(0);
                let project = s.config.project_id.clone();
                return Fault::concurrency_limit_of(limit, &project, n).response();
            }
        },
    };
    let _running = Running::start(state);
    let (response, delay) = {
        let mut s = state.lock().unwrap();
        let latency = s.config.query_latency;
        let (response, delay) = match body {
            Some(body) => run_query(&mut s, n, &body, state),
            None => (
                error(400, "validation_error", "JSON parse error"),
                Duration::ZERO,
            ),
        };
        (response, latency + delay)
    };
    tokio::time::sleep(delay).await;
    let asynchronous = state.lock().unwrap().config.async_answers;
    match asynchronous {
        Some(mode) if response.status() == StatusCode::OK => {
            asynchronous_answer(state, n, mode, response).await
        }
        _ => response,
    }
}

/// PostHog's 202 for a query answered asynchronously; its answer is kept for the polls.
async fn asynchronous_answer(
    state: &Arc<Mutex<State>>,
    n: usize,
    mode: AsyncAnswers,
    response: Response,
) -> Response {
    let Ok(answer) = axum::body::to_bytes(response.into_body(), usize::MAX).await else {
        return error(500, "server_error", "the answer broke off");
    };
    let mut s = state.lock().unwrap();
    let id = format!("{:032x}", 0x5eed_0000_u128 + n as u128);
    let page = s.log[n]
        .sql
        .as_deref()
        .is_some_and(|q| q.contains("properties"));
    s.pages_answered_async += usize::from(page);
    let stuck = page && s.pages_answered_async <= mode.stuck;
    let polls_left = (!stuck).then_some(mode.polls);
    s.async_queries
        .insert(id.clone(), AsyncQuery { polls_left, answer });
    (StatusCode::ACCEPTED, query_status(&id, false, None)).into_response()
}

/// A `{"query_status": ...}` answer, with the query's answer as its `results` once complete.
fn query_status(id: &str, complete: bool, answer: Option<&[u8]>) -> Vec<u8> {
    let head = json!({
        "query_status": {
            "id": id,
            "query_async": true,
            "complete": complete,
            "error": false,
            "error_message": null,
            "results": null,
        }
    })
    .to_string();
    match answer {
        None => head.into_bytes(),
        Some(answer) => {
            let (before, after) = head.split_once("null}}").expect("results come last");
            [before.as_bytes(), answer, after.as_bytes(), b"}}"].concat()
        }
    }
}

/// `GET` (a poll) or `DELETE` (a cancel) of a query answered asynchronously.
fn poll_or_cancel(s: &mut State, method: &str, id: &str) -> Response {
    if method == "DELETE" {
        return match s.async_queries.remove(id) {
            Some(_) => {
                s.cancelled_queries.push(id.to_string());
                StatusCode::NO_CONTENT.into_response()
            }
            None => error(404, "invalid_request", "Not found."),
        };
    }
    let Some(query) = s.async_queries.get_mut(id) else {
        return error(404, "invalid_request", "Not found.");
    };
    let headers = [("content-type", "application/json")];
    match &mut query.polls_left {
        Some(0) => {
            let body = query_status(id, true, Some(&query.answer));
            s.async_queries.remove(id);
            (headers, body).into_response()
        }
        Some(left) => {
            *left -= 1;
            s.polls_not_complete += 1;
            (headers, query_status(id, false, None)).into_response()
        }
        None => {
            s.polls_not_complete += 1;
            (headers, query_status(id, false, None)).into_response()
        }
    }
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

    /// PostHog's 429 when the read budget of the current window is spent (starting a new
    /// window when the last one is over).
    fn budget_refusal(&mut self) -> Option<Response> {
        let budget = self.config.read_budget?;
        let at = Instant::now();
        let w = self.budget.get_or_insert(BudgetWindow {
            start: at,
            spent: 0,
        });
        if !budget.window.is_zero() && at.duration_since(w.start) >= budget.window {
            let windows = (at.duration_since(w.start).as_nanos() / budget.window.as_nanos()) as u32;
            w.start += budget.window * windows;
            w.spent = 0;
        }
        if w.spent < budget.bytes {
            return None;
        }
        let left = (w.start + budget.window).saturating_duration_since(at);
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        self.cost.budget_refusals += 1;
        Some(Fault::read_budget(secs.max(1)).response())
    }

    /// Counts what a query that ran read and returned.
    fn charge(&mut self, n: usize, out: &Outcome, share: f64, time: Duration) {
        let shards: Vec<ShardRead> = out
            .shards
            .iter()
            .map(|r| ShardRead {
                rows: (r.rows as f64 * share) as u64,
                bytes: (r.bytes as f64 * share) as u64,
            })
            .collect();
        let rows_read = shards.iter().map(|r| r.rows).sum();
        let bytes_read = shards.iter().map(|r| r.bytes).sum();
        let (rows_returned, bytes_returned) = if share < 1.0 {
            (0, 0)
        } else {
            (out.rows_returned, out.bytes_returned)
        };
        self.log[n].reads = QueryReads {
            rows_read,
            bytes_read,
            rows_returned,
            bytes_returned,
            shards,
            query_time: time,
        };
        self.cost.rows_read += rows_read;
        self.cost.bytes_read += bytes_read;
        self.cost.rows_returned += rows_returned;
        self.cost.bytes_returned += bytes_returned;
        if let Some(w) = &mut self.budget {
            w.spent += bytes_read;
        }
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

enum Route {
    /// An answer, and how long the server sleeps before giving it.
    Now(Response, Duration),
    /// A query that passed authentication, the project check, the rate limit and the read
    /// budget: it runs (in a slot).
    Query,
}

fn route(
    state: &Mutex<State>,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
) -> Route {
    let mut s = state.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let now = |r: Response| Route::Now(r, Duration::ZERO);
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
            match s.budget_refusal() {
                Some(refused) => now(refused),
                None => Route::Query,
            }
        }
        ("GET" | "DELETE", ["api", "projects" | "environments", id, "query", query_id])
            if *id == s.config.project_id && s.config.query_api =>
        {
            let query_id = query_id.to_string();
            now(poll_or_cancel(&mut s, method.as_str(), &query_id))
        }
        ("GET", ["api", "projects" | "environments", id, "events"])
            if *id == s.config.project_id =>
        {
            match super::events_api::list(&s.config, s.table.by_time(), path, query) {
                Ok((response, delay)) => Route::Now(response, delay),
                Err((status, detail)) => now(error(status, "validation_error", &detail)),
            }
        }
        _ => now(error(404, "invalid_request", "Not found.")),
    }
}

/// Runs query request `n`; the answer and how long PostHog takes to give it. (`shared` is
/// `s` unlocked: a large answer is written while it is sent.)
fn run_query(
    s: &mut State,
    n: usize,
    body: &Value,
    shared: &Arc<Mutex<State>>,
) -> (Response, Duration) {
    s.cost.queries += 1;
    let (reply, time) = match evaluate(s, n, body) {
        Ok(answered) => answered,
        Err(Refusal::Status(status, detail)) => {
            let kind = if status == 400 {
                "validation_error"
            } else {
                "server_error"
            };
            return (error(status, kind, &detail), Duration::ZERO);
        }
        Err(Refusal::Answer(response, delay)) => return (*response, delay),
    };
    // Pages of events are what the spoils are for (a plan's counts are read whole).
    let pages_of_events = match &reply {
        Reply::Bytes(_) => false,
        Reply::Rows(answer) => answer.holds_events() && answer.rows() > 1,
    };
    let spoil = if pages_of_events {
        s.spoils.pop_front()
    } else {
        None
    };
    let headers = [("content-type", "application/json")];
    let mut bytes = match reply {
        Reply::Bytes(bytes) => bytes,
        Reply::Rows(answer) => {
            let len = answer.len(&s.table);
            if spoil.is_none() && s.config.body_substitutions.is_empty() && len > PIECE as u64 {
                return (streamed(answer, len, shared), time);
            }
            answer.whole(&s.table)
        }
    };
    for (text, raw) in &s.config.body_substitutions {
        bytes = substitute(&bytes, text.as_bytes(), raw);
    }
    let response = match spoil {
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
    };
    (response, time)
}

/// Large answers are written a piece of this size at a time, as they are sent.
const PIECE: usize = 1 << 20;

/// `answer` (`len` bytes) sent as it is written, with its `Content-Length` as a whole answer
/// has: memory stays at a piece, and a 110 MB page does not wait for all of it.
fn streamed(answer: AnswerWriter, len: u64, shared: &Arc<Mutex<State>>) -> Response {
    let shared = shared.clone();
    let pieces = futures_util::stream::unfold(answer, move |mut answer| {
        let shared = shared.clone();
        async move {
            // Rows are never moved or removed: the numbers stay good between pieces.
            let piece = answer.next_piece(&shared.lock().unwrap().table, PIECE)?;
            Some((Ok::<_, std::io::Error>(Bytes::from(piece)), answer))
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("content-length", len)
        .body(axum::body::Body::from_stream(pieces))
        .expect("a valid response")
}

/// A query's answer: ready bytes, or rows to write.
enum Reply {
    Bytes(Vec<u8>),
    Rows(AnswerWriter),
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

enum Refusal {
    /// A status and the `detail` of PostHog's usual error body.
    Status(u16, String),
    /// A whole answer (PostHog's own body for its limits), given after this long.
    Answer(Box<Response>, Duration),
}

fn bad(detail: impl Into<String>) -> Refusal {
    Refusal::Status(400, detail.into())
}

/// The answer to query request `n`, and how long it takes (PostHog's time, scaled; the
/// unscaled time is logged).
fn evaluate(s: &mut State, n: usize, body: &Value) -> Result<(Reply, Duration), Refusal> {
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
    let select = match hogql::parse(sql, &values, zone).map_err(bad)? {
        Statement::Now => {
            let now = format_time(super::data::to_micros(s.now()), zone);
            let v = json!({"results": [[now]], "columns": ["now()"], "types": ["DateTime64(6, 'UTC')"], "is_cached": false});
            return Ok((Reply::Bytes(v.to_string().into_bytes()), Duration::ZERO));
        }
        Statement::One => {
            let v =
                json!({"results": [[1]], "columns": ["1"], "types": ["UInt8"], "is_cached": false});
            return Ok((Reply::Bytes(v.to_string().into_bytes()), Duration::ZERO));
        }
        Statement::Select(select) => select,
    };

    let fault = s.config.page_fault;
    let cap = select
        .limit
        .unwrap_or(100)
        .min(50_000)
        .min(s.config.row_cap.unwrap_or(usize::MAX));
    let opts = engine::Options {
        cap,
        ignore_filters: fault == Some(PageFault::IgnoreFilters),
        stray: match fault {
            Some(PageFault::RowPastEnd) => Some(Stray::PastEnd),
            Some(PageFault::RowBeforeStart) => Some(Stray::BeforeStart),
            _ => None,
        },
    };
    let out = engine::run(&s.table, &select, &opts);

    // ClickHouse knows what it will read from the index before reading: past the limit the
    // query is refused at once and reads nothing.
    if out.rows_read() > s.config.max_scan_rows as u64 {
        s.cost.timeouts += 1;
        return Err(Refusal::Answer(
            Box::new(Fault::query_timeout().response()),
            Duration::ZERO,
        ));
    }
    let (time, slept) = match s.config.cost {
        None => (Duration::ZERO, Duration::ZERO),
        Some(cost) => {
            let time = cost.time(&out.shards);
            (time, time.min(cost.cap).mul_f64(cost.scale.max(0.0)))
        }
    };
    if let Some(cost) = s.config.cost
        && time > cost.cap
    {
        // Stopped at the cap, having read what it could by then.
        let share = cost.cap.as_secs_f64() / time.as_secs_f64();
        s.charge(n, &out, share, time);
        s.cost.timeouts += 1;
        return Err(Refusal::Answer(
            Box::new(Fault::query_timeout().response()),
            slept,
        ));
    }
    s.charge(n, &out, 1.0, time);

    let mut rows = out.rows;
    if let Rows::Stored(ids) = &mut rows {
        match fault {
            Some(PageFault::Reversed) => ids.reverse(),
            Some(PageFault::Cycle) => {
                if s.pages.len() >= 2 {
                    *ids = s.pages[s.pages.len() - 2].clone();
                }
                s.pages.push(ids.clone());
            }
            _ => {}
        }
    }
    let has_more = select.limit.is_none().then_some(out.more);
    let mut answer = AnswerWriter::new(&select, rows, zone, has_more);
    answer.properties_as_object = s.config.properties_as_object;
    Ok((Reply::Rows(answer), slept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_without_fraction_drop_it() {
        let t: DateTime<Utc> = "2024-01-01T12:34:56Z".parse().unwrap();
        assert_eq!(format_time(t, None), "2024-01-01T12:34:56Z");
        let tz = FixedOffset::east_opt(5 * 3600);
        assert_eq!(format_time(t, tz), "2024-01-01T17:34:56+05:00");
    }

    #[test]
    fn the_busiest_shard_sets_the_time() {
        let cost = QueryCost {
            base: Duration::from_millis(100),
            per_mb: Duration::from_millis(10),
            per_1000_rows: Duration::from_millis(1),
            ..QueryCost::default()
        };
        let shards = [
            ShardRead {
                rows: 2_000,
                bytes: 1 << 20,
            },
            ShardRead {
                rows: 10_000,
                bytes: 4 << 20,
            },
        ];
        assert_eq!(cost.time(&shards), Duration::from_millis(100 + 40 + 10));
    }
}
