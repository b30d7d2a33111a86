//! In-process stand-ins for PostHog and for a webhook, on loopback, behaving as
//! ../shared/posthog-api.md describes (paging rules, caps, time zones, throttling, what a
//! query costs on PostHog's sort key) with faults injected on demand. Shared by
//! posthog-patterns' tests, benchmark, example and `demo`; never used to reach a real host.
//! It does not depend on the product.

mod answer;
pub mod data;
mod engine;
mod events_api;
mod hogql;
pub mod posthog;
mod storage;
#[cfg(feature = "tls")]
mod tls;
pub mod webhook;

pub use data::{
    HEAVY_EVENT_BYTES, StoredEvent, TYPICAL_EVENT_BYTES, realistic_events, synthetic_events,
};
pub use engine::ShardRead;
pub use events_api::TieOrder;
pub use posthog::{
    AsyncAnswers, CostTotals, PageFault, PostHogConfig, PostHogStandIn, QueryCost, QueryReads,
    ReadBudget, Spoil,
};
pub use storage::{BLOCK_ROWS, Storage, city_hash64, stored_size};
pub use webhook::{WebhookConfig, WebhookStandIn};

use axum::Router;
use std::net::SocketAddr;
use std::time::Duration;

/// A canned answer that replaces the real one for one request.
#[derive(Clone, Debug)]
pub struct Fault {
    pub status: u16,
    /// `Retry-After` header value in seconds, if any.
    pub retry_after: Option<u64>,
    pub body: String,
    /// Delay before answering.
    pub delay: Duration,
    /// More headers, as sent (e.g. `Location`, or a `Retry-After` no number can hold).
    pub headers: Vec<(String, String)>,
    /// Send the status line and headers, then the body one byte a second, never ending.
    pub trickle: bool,
}

impl Fault {
    pub fn status(status: u16) -> Self {
        Fault {
            status,
            retry_after: None,
            body: format!("{{\"detail\":\"injected fault {status}\"}}"),
            delay: Duration::ZERO,
            headers: Vec::new(),
            trickle: false,
        }
    }

    /// PostHog's throttle answer; `retry_after: None` is the older form without the header,
    /// where only the `detail` text says how long to wait.
    pub fn throttled(secs: u64, retry_after_header: bool) -> Self {
        Fault {
            status: 429,
            retry_after: retry_after_header.then_some(secs),
            body: format!(
                "{{\"type\":\"throttled_error\",\"code\":\"throttled\",\"detail\":\"Request was throttled. Expected available in {secs} seconds.\",\"attr\":null}}"
            ),
            delay: Duration::ZERO,
            headers: Vec::new(),
            trickle: false,
        }
    }

    /// One of PostHog's JSON error answers, `{"type","code","detail","attr"}`.
    fn posthog(status: u16, kind: &str, code: &str, detail: &str) -> Self {
        let body = serde_json::json!({"type": kind, "code": code, "detail": detail, "attr": null});
        Fault::status(status).body(&body.to_string())
    }

    /// PostHog's 504 for a query past the 10 s limit of API queries (posthog-api.md).
    pub fn query_timeout() -> Self {
        Fault::posthog(
            504,
            "server_error",
            "error",
            "This query hit the 10-second time limit for queries run through the API. Submit it as an async query to give it more time. You can also narrow the date range or the filters so it scans less data.",
        )
    }

    /// PostHog's 512 when it estimates a query would run too long.
    pub fn estimated_too_long(secs: f64) -> Self {
        Fault::posthog(
            512,
            "server_error",
            "error",
            &format!(
                "Estimated query execution time ({secs} seconds) is too long. Try reducing its scope by changing the time range."
            ),
        )
    }

    /// PostHog's 513 when ClickHouse runs out of memory (the detail is inferred; the status
    /// and code are PostHog's).
    pub fn memory_limit() -> Self {
        Fault::posthog(
            513,
            "server_error",
            "clickhouse_memory_limit_exceeded",
            "Query exceeds memory limits. Try reducing its scope by changing the time range.",
        )
    }

    /// PostHog's 400 for a query that would read too many bytes (the detail is inferred).
    pub fn too_many_bytes() -> Self {
        Fault::posthog(
            400,
            "validation_error",
            "too_many_bytes",
            "Query exceeds the maximum number of bytes to read.",
        )
    }

    /// PostHog's 429 when a project already runs 3 queries and none ended within 30 s: no
    /// `Retry-After`.
    pub fn concurrency_limit(project: &str) -> Self {
        Fault::concurrency_limit_of(3, project, 0)
    }

    /// The same with another limit and task number.
    pub(crate) fn concurrency_limit_of(limit: usize, project: &str, task: usize) -> Self {
        Fault::posthog(
            429,
            "throttled_error",
            "throttled",
            &format!(
                "Exceeded maximum concurrency limit: {limit} for key: api:query:per-team:{project} and task: api_query_{task}"
            ),
        )
    }

    /// PostHog's 429 once the project's read budget for API queries is spent. Only the code
    /// and `Retry-After` are known from reports; the detail's wording is inferred.
    pub fn read_budget(secs: u64) -> Self {
        let mut fault = Fault::posthog(
            429,
            "throttled_error",
            "api_queries_budget_exceeded",
            &format!(
                "Exceeded the hourly API query read budget for this project. Expected available in {secs} seconds."
            ),
        );
        fault.retry_after = Some(secs);
        fault
    }

    /// A redirect to `location`, as hosts answer plain `http://` or a missing trailing slash.
    pub fn redirect(status: u16, location: &str) -> Self {
        Fault::status(status)
            .header("location", location)
            .body("<html><body>Moved</body></html>")
    }

    /// The same answer with one more header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The same answer with this body.
    pub fn body(mut self, body: &str) -> Self {
        self.body = body.into();
        self
    }

    /// The same answer, its body sent a byte a second forever (a 2xx whose body never ends).
    pub fn trickling(mut self) -> Self {
        self.trickle = true;
        self
    }

    pub fn html(status: u16) -> Self {
        Fault {
            status,
            retry_after: None,
            body: "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
                .into(),
            delay: Duration::ZERO,
            headers: Vec::new(),
            trickle: false,
        }
    }

    pub(crate) fn response(&self) -> axum::response::Response {
        let mut builder = axum::response::Response::builder().status(self.status);
        if let Some(secs) = self.retry_after {
            builder = builder.header("retry-after", secs.to_string());
        }
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let kind = if self.body.starts_with('<') {
            "text/html"
        } else {
            "application/json"
        };
        let body = if self.trickle {
            let bytes = futures_util::stream::unfold(0u64, |n| async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some((
                    Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b" ")),
                    n + 1,
                ))
            });
            axum::body::Body::from_stream(bytes)
        } else {
            axum::body::Body::from(self.body.clone())
        };
        builder
            .header("content-type", kind)
            .body(body)
            .expect("a valid response")
    }
}

/// Appends `echo` (what the client sent: its path, its headers) to an error answer's body, as
/// servers do ("Cannot POST /api/app/webhooks/<token>"): text a client must not print as is.
pub(crate) async fn echoed(
    response: axum::response::Response,
    echo: &str,
) -> axum::response::Response {
    if response.status().as_u16() < 400 {
        return response;
    }
    let (parts, body) = response.into_parts();
    let mut bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    bytes.extend_from_slice(echo.as_bytes());
    let mut out = axum::response::Response::from_parts(parts, axum::body::Body::from(bytes));
    out.headers_mut().remove("content-length");
    out
}

/// Faults keyed by request number (0-based), plus a queue for "the next requests".
#[derive(Default, Debug)]
pub(crate) struct Faults {
    pub at: std::collections::BTreeMap<usize, Fault>,
    pub next: std::collections::VecDeque<Fault>,
}

impl Faults {
    pub fn take(&mut self, request: usize) -> Option<Fault> {
        self.at.remove(&request).or_else(|| self.next.pop_front())
    }
}

/// A running server; it stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    /// For HTTPS: the server's self-signed certificate in PEM (what a client must trust).
    pub certificate: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    /// `http://127.0.0.1:PORT`, or `https://` when the server speaks TLS.
    pub fn base_url(&self) -> String {
        let scheme = if self.certificate.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// How a server speaks to its clients.
enum Scheme {
    Http,
    #[cfg(feature = "tls")]
    Https(tokio_rustls::TlsAcceptor),
}

/// Serves `router` over plain HTTP; see [`spawn`].
pub(crate) fn serve(router: Router) -> Server {
    spawn(router, Scheme::Http, None)
}

/// Serves `router` over HTTPS with a self-signed certificate made for this server.
#[cfg(feature = "tls")]
pub(crate) fn serve_https(router: Router) -> Server {
    let identity = tls::self_signed();
    spawn(
        router,
        Scheme::Https(identity.acceptor),
        Some(identity.certificate),
    )
}

/// Serves `router` on 127.0.0.1 (a free port) from a thread of its own, so that it works
/// from plain tests and from inside another runtime alike.
fn spawn(router: Router, scheme: Scheme, certificate: Option<String>) -> Server {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the stand-in");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a loopback port");
            addr_tx
                .send(listener.local_addr().expect("bound"))
                .expect("caller waits");
            let served = async move {
                match scheme {
                    Scheme::Http => axum::serve(listener, router).await,
                    #[cfg(feature = "tls")]
                    Scheme::Https(acceptor) => {
                        let tcp = listener;
                        axum::serve(tls::Listener { tcp, acceptor }, router).await
                    }
                }
            };
            // Not a graceful shutdown: stalled requests would hold it open forever.
            tokio::select! {
                _ = served => {}
                _ = stop_rx => {}
            }
        });
        // Requests stalled on purpose must not keep the thread alive.
        rt.shutdown_background();
    });
    Server {
        addr: addr_rx.recv().expect("the stand-in starts"),
        certificate,
        shutdown: Some(stop_tx),
    }
}
