//! The pieces of HTTP handling shared by the PostHog source and the webhook sink: one client
//! builder, reading a response, and the hints a server gives about when to try again.

use crate::error::chain;
use crate::net::tls::CaCerts;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::Duration;

/// The one client of a run, for PostHog and the webhook alike. It trusts the built-in web
/// roots, the operating system's store and `ca_certs`.
pub(crate) fn client(timeout: Duration, ca_certs: &CaCerts) -> anyhow::Result<reqwest::Client> {
    match builder(timeout, ca_certs).build() {
        Ok(client) => Ok(client),
        // A missing or empty system store is no error (a container without CA certificates);
        // reqwest refuses one only when it found certificates there and could use none of
        // them (a damaged bundle, SSL_CERT_FILE pointing at something else). The other roots
        // still serve, so go on without it, and say so.
        Err(e) => {
            let client = builder(timeout, ca_certs)
                .tls_built_in_native_certs(false)
                .build()?;
            tracing::warn!(
                "the system's certificate store is unusable ({}); trusting the built-in web roots{} only",
                chain(&e),
                if ca_certs.certificates().is_empty() {
                    ""
                } else {
                    " and --ca-cert"
                }
            );
            Ok(client)
        }
    }
}

fn builder(timeout: Duration, ca_certs: &CaCerts) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(15))
        .user_agent(concat!("posthog-patterns/", env!("CARGO_PKG_VERSION")))
        // Never follow: a 301/302/303 turns a POST into a body-less GET whose 200 would look
        // like an acknowledgement, and a 307/308 re-posts to another host. A 3xx is an error.
        .redirect(reqwest::redirect::Policy::none());
    ca_certs
        .certificates()
        .iter()
        .fold(builder, |b, cert| b.add_root_certificate(cert.clone()))
}

/// A finished HTTP exchange, whatever its status.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: bytes::Bytes,
    /// A 2xx answer's body, still to be read ([`Body::Stream`]).
    pub(crate) stream: Option<reqwest::Response>,
}

impl Reply {
    /// The first bytes of the body, printable and with secrets redacted (servers echo
    /// requests), for error messages and dead-letter records.
    pub(crate) fn excerpt(&self) -> String {
        redacted_excerpt(&self.body, 200)
    }

    /// PostHog's error bodies carry a human `detail`; fall back to the raw excerpt.
    pub(crate) fn detail(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| {
                v.get("detail")
                    .and_then(|d| d.as_str())
                    .map(crate::secret::redact)
            })
            .unwrap_or_else(|| self.excerpt())
    }

    /// The `code` of a PostHog error body (`{"type","code","detail","attr"}`), if any.
    pub(crate) fn code(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("code")?.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The server's clock, from its `Date` header (one-second precision): PostHog's "now" is
    /// the only one to compare its `created_at` with (cron hosts drift).
    pub(crate) fn date(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = self.headers.get(reqwest::header::DATE)?.to_str().ok()?;
        chrono::DateTime::parse_from_rfc2822(text)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    /// Where a redirect points, as `scheme://host[:port]` only: its path may hold a secret.
    pub(crate) fn redirect_target(&self, base: &reqwest::Url) -> String {
        let target = self
            .headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| base.join(v).ok());
        match target {
            Some(url) => crate::secret::origin(&url),
            None => "an unnamed place".into(),
        }
    }

    /// How long the server asked us to wait: `Retry-After` in seconds, or else the number in
    /// PostHog's throttle text "Expected available in N seconds" (older versions send no header).
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers, &self.body)
    }
}

/// How much of an answer's body to read.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Body {
    /// All of it, up to this many bytes: a larger answer is an error, not an out-of-memory.
    Whole(u64),
    /// Nothing of a 2xx (its status line is the acknowledgement: a body that never ends must
    /// not turn a delivered batch into a retry), and of anything else only enough for a message.
    AckOrExcerpt,
    /// Nothing of a 2xx but 202: its body is left for the caller to read as it arrives, with
    /// [`next_chunk`]. Anything else is read whole, up to `max` bytes. `idle` bounds the wait
    /// for the answer's head (the client's timeout would also count the time the caller takes
    /// between reads of a body it reads slowly on purpose).
    Stream { max: u64, idle: Duration },
}

/// How long a streamed answer may take overall: its reads are bounded one by one instead.
const STREAM_TOTAL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The most of an error answer that is read, for messages and dead-letter records.
const EXCERPT_BYTES: usize = 4096;

/// Why no answer came back.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No answer within the request timeout.
    Timeout,
    /// Connecting or talking failed; the text never holds the URL (it may be a secret).
    Transport(String),
    /// The answer was larger than `Body::Whole` allows.
    TooLarge(u64),
}

/// Sends a request and reads as much of the body as `body` says.
pub(crate) async fn send(req: reqwest::RequestBuilder, body: Body) -> Result<Reply, SendError> {
    if let Body::Stream { max, idle } = body {
        let whole = async {
            let resp = req.timeout(STREAM_TOTAL).send().await.map_err(describe)?;
            // (A 202 is no answer yet, but what to poll for one: read whole.)
            if resp.status().is_success() && resp.status() != reqwest::StatusCode::ACCEPTED {
                if resp.content_length().is_some_and(|n| n > max) {
                    return Err(SendError::TooLarge(max));
                }
                return Ok(Reply {
                    status: resp.status().as_u16(),
                    headers: resp.headers().clone(),
                    body: bytes::Bytes::new(),
                    stream: Some(resp),
                });
            }
            read(resp, Body::Whole(max)).await
        };
        return tokio::time::timeout(idle, whole)
            .await
            .unwrap_or(Err(SendError::Timeout));
    }
    read(req.send().await.map_err(describe)?, body).await
}

/// The next piece of a streamed answer's body, within `idle`; `None` at its end.
pub(crate) async fn next_chunk(
    resp: &mut reqwest::Response,
    idle: Duration,
) -> Result<Option<bytes::Bytes>, SendError> {
    tokio::time::timeout(idle, resp.chunk())
        .await
        .map_err(|_| SendError::Timeout)?
        .map_err(describe)
}

/// Reads as much of an answer's body as `body` says.
async fn read(mut resp: reqwest::Response, body: Body) -> Result<Reply, SendError> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let limit = match body {
        Body::AckOrExcerpt if (200..300).contains(&status) => 0,
        Body::AckOrExcerpt => EXCERPT_BYTES as u64,
        Body::Whole(max) | Body::Stream { max, .. } => {
            if resp.content_length().is_some_and(|n| n > max) {
                return Err(SendError::TooLarge(max));
            }
            max
        }
    };
    let mut buf = bytes::BytesMut::new();
    let whole = !matches!(body, Body::AckOrExcerpt);
    while (buf.len() as u64) < limit || whole {
        let Some(chunk) = resp.chunk().await.map_err(describe)? else {
            break;
        };
        buf.extend_from_slice(&chunk);
        if whole && buf.len() as u64 > limit {
            return Err(SendError::TooLarge(limit));
        }
    }
    if let Body::AckOrExcerpt = body {
        buf.truncate(limit as usize);
    }
    Ok(Reply {
        status,
        headers,
        body: buf.freeze(),
        stream: None,
    })
}

fn describe(e: reqwest::Error) -> SendError {
    if e.is_timeout() {
        return SendError::Timeout;
    }
    let kind = if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    // Only the sources: reqwest's own Display would include the URL.
    let mut text = kind.to_string();
    if let Some(source) = std::error::Error::source(&e) {
        text.push_str(": ");
        text.push_str(&chain(source));
    }
    if text.contains("invalid peer certificate: UnknownIssuer") {
        text.push_str(CERTIFICATE_HINT);
    }
    SendError::Transport(text)
}

/// What rustls's "invalid peer certificate: UnknownIssuer" (no trusted root vouches for the
/// certificate) usually means. Other certificate errors (a wrong name, an expired
/// certificate) are not cured by --ca-cert and get no hint.
const CERTIFICATE_HINT: &str = " (if the server's certificate comes from a private CA or is self-signed, pass --ca-cert FILE with that CA's certificate in PEM; see docs/troubleshooting.md)";

/// The wait a server asks for: `Retry-After` in seconds or as an HTTP date, or else the number
/// in PostHog's throttle text "Expected available in N seconds" (older versions send no
/// header). A number too large for a wait is the longest wait, never a panic: it then stops
/// the run as longer than `--max-wait`.
pub(crate) fn retry_after(headers: &HeaderMap, body: &[u8]) -> Option<Duration> {
    if let Some(value) = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        if let Ok(secs) = value.parse::<f64>() {
            if secs.is_finite() && secs >= 0.0 {
                return Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX));
            }
            if secs == f64::INFINITY {
                return Some(Duration::MAX);
            }
        } else if let Ok(at) = chrono::DateTime::parse_from_rfc2822(value) {
            let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
            return Some(wait.to_std().unwrap_or_default());
        }
    }
    let text = String::from_utf8_lossy(body);
    let after = text.split("available in ").nth(1)?;
    let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() {
        return None;
    }
    Some(
        digits
            .parse::<u64>()
            .map_or(Duration::MAX, Duration::from_secs),
    )
}

/// [`excerpt`] with secrets redacted, before the cut: a secret cut in half would no longer be
/// recognised. For anything a server sent (servers echo requests) or a user's input holds.
pub(crate) fn redacted_excerpt(body: &[u8], max: usize) -> String {
    // Wide enough for any secret that begins within the excerpt.
    let wide = &body[..body.len().min(max.saturating_add(4096))];
    let text = crate::secret::redact(&String::from_utf8_lossy(wide));
    let cut = excerpt(text.as_bytes(), max);
    if body.len() > wide.len() && !cut.ends_with('…') {
        format!("{cut}…")
    } else {
        cut
    }
}

pub(crate) fn excerpt(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(max)]);
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.len() > max {
        format!("{}…", flat.trim())
    } else if flat.trim().is_empty() {
        "(empty body)".into()
    } else {
        flat.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_prefers_the_header() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, b""), Some(Duration::from_secs(7)));
    }

    #[test]
    fn retry_after_falls_back_to_posthog_detail_text() {
        let body = br#"{"type":"throttled_error","code":"throttled","detail":"Request was throttled. Expected available in 2202 seconds.","attr":null}"#;
        assert_eq!(
            retry_after(&HeaderMap::new(), body),
            Some(Duration::from_secs(2202))
        );
        assert_eq!(retry_after(&HeaderMap::new(), b"{}"), None);
    }

    #[test]
    fn the_date_header_is_the_servers_clock() {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::DATE,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        let reply = Reply {
            status: 200,
            headers,
            body: bytes::Bytes::new(),
            stream: None,
        };
        assert_eq!(
            reply.date().unwrap().to_rfc3339(),
            "1994-11-06T08:49:37+00:00"
        );
    }

    #[test]
    fn huge_waits_are_the_longest_wait_not_a_panic() {
        let mut h = HeaderMap::new();
        for v in ["1e20", "18446744073709551616", "1e400"] {
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            assert_eq!(retry_after(&h, b""), Some(Duration::MAX), "{v}");
        }
        h.insert(RETRY_AFTER, HeaderValue::from_static("-5"));
        assert_eq!(retry_after(&h, b""), None);
        let body = br#"{"detail":"Request was throttled. Expected available in 99999999999999999999 seconds."}"#;
        assert_eq!(retry_after(&HeaderMap::new(), body), Some(Duration::MAX));
    }

    #[test]
    fn excerpt_is_short_and_single_line() {
        let e = excerpt(b"<html>\n<body>bad gateway</body></html>", 12);
        assert_eq!(e, "<html> <body…");
        assert_eq!(excerpt(b"", 10), "(empty body)");
    }
}
