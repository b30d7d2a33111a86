//! Secrets (the PostHog API key, the webhook URL) wrapped so that they cannot reach a log,
//! an error message or a checkpoint by accident: `Debug` and `Display` redact them.

use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::RwLock;

/// Every secret of this process (the key, the webhook URL and its parts), so that text a
/// server sends back, which may echo them, is redacted before it is printed or stored.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// The shortest secret part worth redacting: shorter ones (`/`, `/hook`) would garble text.
const MIN_SECRET_LEN: usize = 8;

fn register(text: &str) {
    if text.len() < MIN_SECRET_LEN {
        return;
    }
    let mut all = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|s| s == text) {
        all.push(text.to_string());
        // Longest first, so that a secret is never half-replaced by a part of it.
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every known secret replaced by `<redacted>`: for anything a server sent back
/// (error bodies, redirect targets) and for every log line and error message.
pub(crate) fn redact(text: &str) -> String {
    let all = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in all.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "<redacted>");
        }
    }
    out
}

/// `scheme://host[:port]` of `url`: all of a URL that is safe to print (its path, query and
/// user part may hold a secret).
pub(crate) fn origin(url: &url::Url) -> String {
    match url.origin() {
        origin @ url::Origin::Tuple(..) => origin.ascii_serialization(),
        url::Origin::Opaque(_) => format!("{}://{}", url.scheme(), url.host_str().unwrap_or("?")),
    }
}

/// `text` with every known secret redacted ([`redact`]), and with anything that looks like a
/// credential cut out too: PostHog keys (`phx_…`, `phs_…`, `phc_…`) and URLs (all but their
/// [`origin`]). For messages about input whose secrets are not known yet (a config file that
/// fails to parse).
pub(crate) fn redact_unknown(text: &str) -> String {
    redact(text)
        .split_inclusive(|c: char| c.is_whitespace() || "\"'`,".contains(c))
        .map(|word| {
            let core = word.trim_end_matches(|c: char| c.is_whitespace() || "\"'`,".contains(c));
            let tail = &word[core.len()..];
            let lead = core.trim_start_matches(|c: char| "\"'`(".contains(c));
            let head = &core[..core.len() - lead.len()];
            if ["phx_", "phs_", "phc_"].iter().any(|p| lead.starts_with(p)) {
                format!("{head}<redacted>{tail}")
            } else if let Ok(url) = url::Url::parse(lead)
                && url.has_host()
            {
                format!("{head}{}/…{tail}", origin(&url))
            } else {
                word.to_string()
            }
        })
        .collect()
}

/// A string that must never be printed. Use [`Secret::expose`] only where it is sent.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        register(&value);
        Secret(value)
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// A short, stable fingerprint that identifies the secret without revealing it.
    pub(crate) fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{}", &hex[..16])
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The webhook URL: its path is the secret (Patterns puts the token there), so only the
/// scheme and host are ever shown.
#[derive(Clone)]
pub(crate) struct WebhookUrl {
    url: reqwest::Url,
    secret: Secret,
}

impl WebhookUrl {
    /// Parses and checks a webhook URL. The error never repeats the URL itself.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(text.trim()).map_err(|e| {
            format!("the webhook URL does not parse ({e}); expected something like https://api.patterns.app/api/app/webhooks/wh...")
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!(
                "the webhook URL must start with https:// or http://, not {}://",
                url.scheme()
            ));
        }
        if url.host_str().is_none() {
            return Err("the webhook URL has no host; expected https://HOST/PATH".into());
        }
        // A server may echo the path (Express: "Cannot POST /api/app/webhooks/<token>") or the
        // query, encoded or not: each is a secret too.
        register(url.path());
        if let Ok(decoded) = percent_decode(url.path()) {
            register(&decoded);
        }
        if let Some(query) = url.query() {
            register(query);
        }
        register(text.trim());
        Ok(WebhookUrl {
            secret: Secret::new(url.as_str()),
            url,
        })
    }

    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// `https://host[:port]/…`: safe to print.
    pub(crate) fn redacted(&self) -> String {
        format!("{}/…", origin(&self.url))
    }

    pub(crate) fn fingerprint(&self) -> String {
        self.secret.fingerprint()
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({})", self.redacted())
    }
}

/// `%XX` decoding, for a path a server may echo decoded.
fn percent_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats_its_value() {
        let s = Secret::new("phx_supersecret");
        assert!(!format!("{s} {s:?}").contains("supersecret"));
        assert!(s.fingerprint().starts_with("sha256:"));
        assert!(!s.fingerprint().contains("supersecret"));
    }

    #[test]
    fn webhook_url_shows_only_scheme_and_host() {
        let w = WebhookUrl::parse("https://api.patterns.app/api/app/webhooks/wh-token123").unwrap();
        assert_eq!(w.redacted(), "https://api.patterns.app/…");
        assert!(!format!("{w:?}").contains("token123"));
    }

    #[test]
    fn echoed_secrets_are_redacted_wherever_they_appear() {
        let _key = Secret::new("phx_redaction_test_key_123");
        let _url =
            WebhookUrl::parse("https://h.example/api/app/webhooks/wh%2Dtoken-77?sig=abcdef12345")
                .unwrap();
        let echoed = "Cannot POST /api/app/webhooks/wh-token-77 (Authorization: Bearer phx_redaction_test_key_123, sig=abcdef12345)";
        let clean = redact(echoed);
        assert!(!clean.contains("wh-token-77"), "{clean}");
        assert!(!clean.contains("phx_redaction_test_key_123"), "{clean}");
        assert!(!clean.contains("abcdef12345"), "{clean}");
        assert!(clean.contains("Cannot POST"), "{clean}");
    }

    #[test]
    fn an_excerpt_cut_inside_a_secret_shows_none_of_it() {
        let key = "phx_excerpt_straddle_key_0123456789";
        let _key = Secret::new(key);
        for at in [150, 190, 199, 200] {
            let body = format!("{}{key} and more", "x".repeat(at));
            let shown = crate::net::http::redacted_excerpt(body.as_bytes(), 200);
            assert!(!shown.contains("phx_excerpt"), "{at}: {shown}");
            assert!(shown.starts_with("xxxx"), "{shown}");
        }
    }

    #[test]
    fn bad_webhook_url_error_does_not_echo_it() {
        let err = WebhookUrl::parse("not a url wh-token123").unwrap_err();
        assert!(err.contains("does not parse"), "{err}");
        assert!(!err.contains("token123"));
        assert!(
            WebhookUrl::parse("ftp://x/y")
                .unwrap_err()
                .contains("https://")
        );
    }
}
