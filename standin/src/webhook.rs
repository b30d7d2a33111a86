//! The webhook stand-in: takes JSON arrays (or one object) like Patterns' "ingest only"
//! webhook, remembers every event it was given, and misbehaves on demand: size limits (413),
//! rejections (400), faults by request number, latency, and stalling so that a test can kill
//! a client while batches are in flight. Bodies sent with `Content-Encoding: gzip` are
//! decompressed first, unless it is told to refuse them (415). For the benchmark it can count
//! instead of keeping: events, bytes and uuids only.

use super::data::uuid_number;
use super::{Fault, Faults, Server, serve};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, Default)]
pub struct WebhookConfig {
    /// The secret path, e.g. `/api/app/webhooks/wh-...`; other paths get 404.
    pub path: String,
    /// Bodies larger than this once decompressed get 413 (Express's body-parser applies its
    /// `limit` to the inflated body too).
    pub max_body_bytes: Option<usize>,
    /// Answer 415 to bodies with a `Content-Encoding` (a webhook that takes only plain JSON).
    pub refuse_gzip: bool,
    /// Batches holding an event whose text contains one of these get 400 (nothing of them is
    /// kept).
    pub reject_containing: Vec<String>,
    /// Batches of more than this many events get 400, whatever they hold (a webhook whose
    /// rejections no single event explains).
    pub reject_batches_over: Option<usize>,
    /// Delay before each answer.
    pub latency: Duration,
    /// Acknowledge accepted batches with a 200 whose body then trickles forever.
    pub trickle_acks: bool,
    /// Error answers end with the request's path and query, as many servers echo them.
    pub echo_requests: bool,
    /// A header every request must carry (most JSON webhooks want a token): 401 without it,
    /// echoing the value it got, as careless servers do.
    pub require_header: Option<(String, String)>,
    /// Answer every POST to the secret path with this redirect status and `Location`; the
    /// path `/landing` answers 200 to anything (a landing page), keeping nothing.
    pub redirect: Option<(u16, String)>,
    /// After this many accepted batches, further requests are kept (recorded) but never
    /// answered until [`WebhookStandIn::release`].
    pub stall_after: Option<usize>,
    /// Count what arrives (see [`Counted`]) instead of keeping the events: a million 3 KB
    /// events would take 3 GB. `reject_*` and `stall_after` do not apply then.
    pub count_only: bool,
}

/// What a counting webhook received: enough to check exactly-once delivery and to measure
/// throughput, without the events' text.
#[derive(Clone, Debug, Default)]
pub struct Counted {
    pub events: u64,
    /// JSON received, after inflating gzip bodies.
    pub json_bytes: u64,
    /// Every uuid received, as a number.
    pub uuids: HashSet<u128>,
    /// Events whose uuid had arrived before.
    pub repeats: u64,
    /// Events without a uuid that reads as one.
    pub without_uuid: u64,
}

#[derive(Default)]
pub struct State {
    pub config: WebhookConfig,
    /// Every event received in an accepted request, in arrival order, as sent.
    pub events: Vec<String>,
    /// Events received in requests that were then stalled (the client never heard back).
    pub stalled_events: Vec<String>,
    pub requests: usize,
    /// Requests whose body came gzip-compressed.
    pub gzip_requests: usize,
    /// Request body bytes as sent (compressed or not), over all requests.
    pub wire_bytes: u64,
    /// With `count_only`: what the accepted requests held.
    pub counted: Counted,
    pub accepted_batches: usize,
    pub statuses: Vec<u16>,
    pub(crate) faults: Faults,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    released: tokio::sync::Notify,
}

pub struct WebhookStandIn {
    pub server: Server,
    shared: Arc<Shared>,
}

pub const SECRET_PATH: &str = "/api/app/webhooks/wh-standin-secret-token-5f1e";

impl WebhookStandIn {
    pub fn start(config: WebhookConfig) -> Self {
        Self::start_with(config, serve)
    }

    /// The same stand-in over HTTPS, with a self-signed certificate (see
    /// [`Server::certificate`]) that clients refuse unless told to trust it.
    #[cfg(feature = "tls")]
    pub fn start_https(config: WebhookConfig) -> Self {
        Self::start_with(config, crate::serve_https)
    }

    fn start_with(mut config: WebhookConfig, serve: fn(Router) -> Server) -> Self {
        if config.path.is_empty() {
            config.path = SECRET_PATH.into();
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                config,
                ..State::default()
            }),
            changed: Condvar::new(),
            released: tokio::sync::Notify::new(),
        });
        let s = shared.clone();
        let router = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move { handle(&s, uri, headers, body).await }
        });
        WebhookStandIn {
            server: serve(router),
            shared,
        }
    }

    /// The full URL, secret path included.
    pub fn url(&self) -> String {
        let path = self.shared.state.lock().unwrap().config.path.clone();
        format!("{}{path}", self.server.base_url())
    }

    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.shared.state.lock().unwrap())
    }

    pub fn fault_at(&self, n: usize, fault: Fault) {
        self.with_state(|s| s.faults.at.insert(n, fault));
    }

    pub fn fault_next(&self, fault: Fault) {
        self.with_state(|s| s.faults.next.push_back(fault));
    }

    /// The uuid of every event received, in arrival order.
    pub fn uuids(&self) -> Vec<String> {
        self.with_state(|s| s.events.iter().map(|e| uuid_of(e)).collect())
    }

    /// Blocks until `cond` holds or `timeout` passes; returns whether it holds.
    pub fn wait_until(&self, timeout: Duration, cond: impl Fn(&State) -> bool) -> bool {
        let guard = self.shared.state.lock().unwrap();
        let (guard, _) = self
            .shared
            .changed
            .wait_timeout_while(guard, timeout, |s| !cond(s))
            .unwrap();
        cond(&guard)
    }

    /// Stops stalling: stalled requests are answered 503 (their client is usually gone).
    pub fn release(&self) {
        self.with_state(|s| s.config.stall_after = None);
        self.shared.released.notify_waiters();
    }
}

pub fn uuid_of(event_json: &str) -> String {
    // Only the uuid is read: other fields may hold what a `Value` refuses (lone surrogates).
    #[derive(serde::Deserialize)]
    struct Uuid {
        uuid: Option<String>,
    }
    serde_json::from_str::<Uuid>(event_json)
        .ok()
        .and_then(|u| u.uuid)
        .unwrap_or_default()
}

/// What to do with a request, decided under the lock.
enum Next {
    Answer(Response),
    Stall,
    Accept(Duration),
}

async fn handle(shared: &Shared, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let next = {
        let mut s = shared.state.lock().unwrap();
        let n = s.requests;
        s.requests += 1;
        s.wire_bytes += body.len() as u64;
        decide(&mut s, n, &uri, &headers, &body)
    };
    shared.changed.notify_all();
    let response = match next {
        Next::Answer(r) => r,
        Next::Stall => {
            shared.released.notified().await;
            (StatusCode::SERVICE_UNAVAILABLE, "released").into_response()
        }
        Next::Accept(latency) => {
            tokio::time::sleep(latency).await;
            if shared.state.lock().unwrap().config.trickle_acks {
                Fault::status(200).trickling().response()
            } else {
                StatusCode::OK.into_response()
            }
        }
    };
    let echo = shared.state.lock().unwrap().config.echo_requests;
    let response = if echo {
        super::echoed(response, &format!(" (request: POST {uri})")).await
    } else {
        response
    };
    let status = response.status().as_u16();
    shared.state.lock().unwrap().statuses.push(status);
    shared.changed.notify_all();
    response
}

/// Request number `n`: the checks a server makes before it reads the body, in its order.
fn decide(s: &mut State, n: usize, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Next {
    if uri.path() == "/landing" {
        return Next::Answer((StatusCode::OK, "welcome").into_response());
    }
    if uri.path() != s.config.path {
        // Express's default answer, which echoes the (secret) path.
        return Next::Answer(
            (StatusCode::NOT_FOUND, format!("Cannot POST {}", uri.path())).into_response(),
        );
    }
    if let Some((name, value)) = &s.config.require_header
        && headers.get(name).and_then(|v| v.to_str().ok()) != Some(value.as_str())
    {
        let got = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nothing");
        let text = format!("invalid {name}: got {got}");
        return Next::Answer((StatusCode::UNAUTHORIZED, text).into_response());
    }
    if let Some(fault) = s.faults.take(n) {
        return Next::Answer(fault.response());
    }
    if let Some((status, location)) = &s.config.redirect {
        return Next::Answer(Fault::redirect(*status, location).response());
    }
    match decode(s, headers, body) {
        Ok(json) => take(s, &json),
        Err(refused) => Next::Answer(refused.into_response()),
    }
}

/// The JSON a body holds: as sent, or inflated when `Content-Encoding` says gzip.
fn decode<'a>(
    s: &mut State,
    headers: &HeaderMap,
    body: &'a [u8],
) -> Result<Cow<'a, [u8]>, (StatusCode, String)> {
    let Some(encoding) = headers.get("content-encoding") else {
        return Ok(Cow::Borrowed(body));
    };
    let refuse = |why: &str| Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, why.to_string()));
    if s.config.refuse_gzip {
        return refuse("Unsupported Media Type: this webhook takes plain JSON only");
    }
    if !encoding.as_bytes().eq_ignore_ascii_case(b"gzip") {
        return refuse("Unsupported Media Type: unknown Content-Encoding");
    }
    s.gzip_requests += 1;
    let mut json = Vec::with_capacity(body.len() * 8);
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut json)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid gzip body: {e}")))?;
    Ok(Cow::Owned(json))
}

/// A body's JSON: kept, refused, or held without an answer (stalling).
fn take(s: &mut State, json: &[u8]) -> Next {
    if s.config.max_body_bytes.is_some_and(|max| json.len() > max) {
        return Next::Answer((StatusCode::PAYLOAD_TOO_LARGE, "payload too large").into_response());
    }
    if s.config.count_only {
        return count(s, json);
    }
    let events = match parse(json) {
        Err(e) => {
            let text = format!("invalid JSON: {e}");
            return Next::Answer((StatusCode::BAD_REQUEST, text).into_response());
        }
        Ok(events) if events.is_empty() => {
            return Next::Answer((StatusCode::BAD_REQUEST, "empty array").into_response());
        }
        Ok(events) => events,
    };
    let poisoned = |e: &String| s.config.reject_containing.iter().any(|r| e.contains(r));
    let too_many = s
        .config
        .reject_batches_over
        .is_some_and(|n| events.len() > n);
    if too_many || events.iter().any(poisoned) {
        return Next::Answer(
            (StatusCode::BAD_REQUEST, "record rejected by schema").into_response(),
        );
    }
    if s.config
        .stall_after
        .is_some_and(|k| s.accepted_batches >= k)
    {
        s.stalled_events.extend(events);
        return Next::Stall;
    }
    s.events.extend(events);
    s.accepted_batches += 1;
    Next::Accept(s.config.latency)
}

/// Counts a body's events, bytes and uuids; keeps nothing else.
fn count(s: &mut State, json: &[u8]) -> Next {
    #[derive(serde::Deserialize)]
    struct Uuid<'a> {
        #[serde(borrow)]
        uuid: Option<Cow<'a, str>>,
    }
    // By the first byte, as `parse` does: an untagged enum would buffer every event.
    let one = json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let parsed = match one {
        true => serde_json::from_slice::<Uuid>(json).map(|e| vec![e]),
        false => serde_json::from_slice::<Vec<Uuid>>(json),
    };
    let events = match parsed {
        Ok(events) if events.is_empty() => {
            return Next::Answer((StatusCode::BAD_REQUEST, "empty array").into_response());
        }
        Ok(events) => events,
        Err(e) => {
            let text = format!("invalid JSON: {e}");
            return Next::Answer((StatusCode::BAD_REQUEST, text).into_response());
        }
    };
    let c = &mut s.counted;
    c.events += events.len() as u64;
    c.json_bytes += json.len() as u64;
    for uuid in events
        .iter()
        .map(|e| e.uuid.as_deref().and_then(uuid_number))
    {
        match uuid {
            Some(v) if !c.uuids.insert(v) => c.repeats += 1,
            Some(_) => {}
            None => c.without_uuid += 1,
        }
    }
    s.accepted_batches += 1;
    Next::Accept(s.config.latency)
}

/// A JSON array of objects, or one object; each element as its exact text.
fn parse(body: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    if text.trim_start().starts_with('{') {
        let one: &RawValue = serde_json::from_str(text).map_err(|e| e.to_string())?;
        return Ok(vec![one.get().to_string()]);
    }
    let many: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(many.into_iter().map(|v| v.get().to_string()).collect())
}
