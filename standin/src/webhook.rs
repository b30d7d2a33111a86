//! The webhook stand-in: takes JSON arrays (or one object) like Patterns' "ingest only"
//! webhook, remembers every event it was given, and misbehaves on demand: size limits (413),
//! rejections (400), faults by request number, latency, and stalling so that a test can kill
//! a client while batches are in flight.

use super::{Fault, Faults, Server, serve};
use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, Default)]
pub struct WebhookConfig {
    /// The secret path, e.g. `/api/app/webhooks/wh-...`; other paths get 404.
    pub path: String,
    /// Bodies larger than this get 413.
    pub max_body_bytes: Option<usize>,
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
}

#[derive(Default)]
pub struct State {
    pub config: WebhookConfig,
    /// Every event received in an accepted request, in arrival order, as sent.
    pub events: Vec<String>,
    /// Events received in requests that were then stalled (the client never heard back).
    pub stalled_events: Vec<String>,
    pub requests: usize,
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
        let router = Router::new().fallback(
            move |uri: Uri, headers: axum::http::HeaderMap, body: Bytes| {
                let s = s.clone();
                async move { handle(&s, uri, headers, body).await }
            },
        );
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

async fn handle(
    shared: &Shared,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    enum Next {
        Answer(Response),
        Stall,
        Accept(Duration),
    }
    let next = {
        let mut s = shared.state.lock().unwrap();
        let n = s.requests;
        s.requests += 1;
        if uri.path() == "/landing" {
            Next::Answer((StatusCode::OK, "welcome").into_response())
        } else if uri.path() != s.config.path {
            // Express's default answer, which echoes the (secret) path.
            Next::Answer(
                (StatusCode::NOT_FOUND, format!("Cannot POST {}", uri.path())).into_response(),
            )
        } else if let Some((name, value)) = s.config.require_header.clone()
            && headers.get(&name).and_then(|v| v.to_str().ok()) != Some(value.as_str())
        {
            let got = headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nothing");
            Next::Answer(
                (
                    StatusCode::UNAUTHORIZED,
                    format!("invalid {name}: got {got}"),
                )
                    .into_response(),
            )
        } else if let Some(fault) = s.faults.take(n) {
            Next::Answer(fault.response())
        } else if let Some((status, location)) = &s.config.redirect {
            Next::Answer(Fault::redirect(*status, location).response())
        } else if s.config.max_body_bytes.is_some_and(|max| body.len() > max) {
            Next::Answer((StatusCode::PAYLOAD_TOO_LARGE, "payload too large").into_response())
        } else {
            match parse(&body) {
                Err(e) => Next::Answer(
                    (StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")).into_response(),
                ),
                Ok(events) if events.is_empty() => {
                    Next::Answer((StatusCode::BAD_REQUEST, "empty array").into_response())
                }
                Ok(events) => {
                    let poisoned =
                        |e: &String| s.config.reject_containing.iter().any(|r| e.contains(r));
                    let too_many = s
                        .config
                        .reject_batches_over
                        .is_some_and(|n| events.len() > n);
                    if too_many || events.iter().any(poisoned) {
                        Next::Answer(
                            (StatusCode::BAD_REQUEST, "record rejected by schema").into_response(),
                        )
                    } else if s
                        .config
                        .stall_after
                        .is_some_and(|k| s.accepted_batches >= k)
                    {
                        s.stalled_events.extend(events);
                        Next::Stall
                    } else {
                        s.events.extend(events);
                        s.accepted_batches += 1;
                        Next::Accept(s.config.latency)
                    }
                }
            }
        }
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
