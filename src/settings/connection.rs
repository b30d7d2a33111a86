//! Where and as whom a job reads: PostHog's host and project, checked as the user gave them,
//! and the personal API key.

use crate::secret::Secret;
use reqwest::Url;

/// Where and as whom to read.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    pub(crate) host: Url,
    pub(crate) project: String,
    pub(crate) api_key: Secret,
}

impl Connection {
    /// Checks the host the user gave: the app host, not the ingestion-only `*.i.posthog.com`.
    pub(crate) fn parse_host(text: &str) -> Result<Url, String> {
        // The text is not echoed when it may hold a password (`user:pass@host`).
        let shown = if text.contains('@') {
            "(a URL with credentials)".to_string()
        } else {
            format!("{text:?}")
        };
        let mut url = Url::parse(text.trim()).map_err(|e| {
            format!("--host {shown} is not a URL ({e}); expected e.g. https://us.posthog.com")
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!(
                "--host must start with https:// (got {shown}); e.g. https://eu.posthog.com"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "--host must not hold a user name or password (the API key is the credential, and a URL ends up in logs and checkpoints): remove the `user:password@` part"
                    .into(),
            );
        }
        let host = url.host_str().unwrap_or_default().to_string();
        if host.ends_with(".i.posthog.com") {
            let app = host.replace(".i.posthog.com", ".posthog.com");
            return Err(format!(
                "--host {host} is PostHog's ingestion-only host and cannot read events; use https://{app}"
            ));
        }
        let path = url.path().trim_end_matches('/').to_string();
        // The project's page pasted whole: `https://us.posthog.com/project/4242[/...]`.
        let segments: Vec<&str> = path.split('/').collect();
        if let Some(at) = segments.iter().position(|s| *s == "project")
            && let Some(id) = segments
                .get(at + 1)
                .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
        {
            let mut base = url.clone();
            base.set_path(&segments[..at].join("/"));
            base.set_query(None);
            base.set_fragment(None);
            return Err(format!(
                "--host {shown} is a project's page, not PostHog's host: use --host {} --project {id}",
                base.as_str().trim_end_matches('/')
            ));
        }
        url.set_path(&format!("{path}/"));
        url.set_query(None);
        Ok(url)
    }

    pub(crate) fn check_project(text: &str) -> Result<String, String> {
        let t = text.trim();
        if t.is_empty()
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "--project {text:?} is not a PostHog project id; it is the number in your project's URL, e.g. 12345"
            ));
        }
        Ok(t.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingestion_host_is_refused_with_the_app_host_suggested() {
        let err = Connection::parse_host("https://eu.i.posthog.com").unwrap_err();
        assert!(err.contains("https://eu.posthog.com"), "{err}");
    }

    #[test]
    fn host_keeps_a_self_hosted_path_prefix() {
        let url = Connection::parse_host("https://example.com/posthog").unwrap();
        assert_eq!(
            url.join("api/projects/1/query/").unwrap().as_str(),
            "https://example.com/posthog/api/projects/1/query/"
        );
    }

    #[test]
    fn a_host_with_credentials_is_refused_without_echoing_them() {
        let err = Connection::parse_host("https://admin:hunter2@ph.example.com").unwrap_err();
        assert!(
            err.contains("user name or password") && !err.contains("hunter2"),
            "{err}"
        );
        let err = Connection::parse_host("ftp://admin:hunter2@x").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_projects_page_as_host_is_refused_with_the_host_and_project_to_use() {
        let err =
            Connection::parse_host("https://us.posthog.com/project/4242/insights").unwrap_err();
        assert!(
            err.contains("use --host https://us.posthog.com --project 4242"),
            "{err}"
        );
        let err = Connection::parse_host("https://ph.example.com/posthog/project/7").unwrap_err();
        assert!(
            err.contains("use --host https://ph.example.com/posthog --project 7"),
            "{err}"
        );
        // A self-hosted path prefix stays.
        assert!(Connection::parse_host("https://example.com/project-x/ph").is_ok());
    }

    #[test]
    fn project_must_be_an_id() {
        assert!(Connection::check_project("12345").is_ok());
        assert!(Connection::check_project("../x").is_err());
        assert!(Connection::check_project("").is_err());
    }
}
