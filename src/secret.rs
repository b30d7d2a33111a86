//! Secrets (the PostHog API key, the webhook URL) wrapped so that they cannot reach a log,
//! an error message or a checkpoint by accident: `Debug` and `Display` redact them.

use sha2::{Digest, Sha256};
use std::fmt;

/// A string that must never be printed. Use [`Secret::expose`] only where it is sent.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
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
        let port = self.url.port().map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "{}://{}{}/…",
            self.url.scheme(),
            self.url.host_str().unwrap_or("?"),
            port
        )
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
