//! What can go wrong when asking PostHog, as errors a user can act on.

use chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error(
        "PostHog rejected the API key (HTTP 401: {detail}). Use a personal API key (phx_...) with the query:read scope, in POSTHOG_API_KEY or --api-key-file; project tokens (phc_...) cannot read events"
    )]
    Unauthorized { detail: String },
    #[error(
        "PostHog refused access (HTTP 403: {detail}). The personal API key needs the query:read scope and access to project {project}"
    )]
    Forbidden { detail: String, project: String },
    #[error(
        "PostHog answered 404 Not Found for {path}: check --project and --host (the app host, such as https://us.posthog.com, https://eu.posthog.com or your own domain)"
    )]
    NotFound { path: String },
    #[error(
        "PostHog answered HTTP {status}, a redirect to {target}/…: posthog-patterns follows no redirects. Set --host to the address PostHog really answers on (the app host, such as https://us.posthog.com or https://eu.posthog.com)"
    )]
    Redirected { status: u16, target: String },
    #[error("PostHog found the query too costly (HTTP {status})")]
    TooSlow { status: u16 },
    #[error("PostHog is throttling requests (HTTP 429: {detail})")]
    Throttled { detail: String },
    #[error(
        "PostHog's read budget for API queries of this project is spent (HTTP 429: {detail}); it refills at {} UTC",
        refills.format("%Y-%m-%d %H:%M:%S")
    )]
    ReadBudget {
        detail: String,
        refills: DateTime<Utc>,
    },
    #[error("PostHog is unavailable (HTTP {status}: {excerpt})")]
    Unavailable { status: u16, excerpt: String },
    #[error("PostHog rejected the request (HTTP {status}: {detail})")]
    Rejected { status: u16, detail: String },
    #[error(
        "PostHog answered HTTP {status} with something that is not the JSON expected: {excerpt}"
    )]
    BadResponse { status: u16, excerpt: String },
    #[error("cannot reach PostHog at {host}: {message}")]
    Transport { host: String, message: String },
    #[error(
        "PostHog at {host} did not answer within --http-timeout (it is reachable, but slow or stuck)"
    )]
    Timeout { host: String },
    #[error(
        "PostHog at {host} sends its answer too slowly (under 256 KiB/s once --http-timeout has passed): a stuck proxy or a very slow link"
    )]
    Trickling { host: String },
    #[error(
        "PostHog's answer is larger than --max-response-size ({}): ask for fewer rows a page with a smaller --page-size, or raise --max-response-size",
        indicatif::HumanBytes(*max)
    )]
    TooLarge { max: u64 },
    #[error(
        "there is no host named {name} (the name does not exist): check --host, PostHog's app host, such as https://us.posthog.com, https://eu.posthog.com or your own domain"
    )]
    NoSuchHost { name: String },
    #[error(
        "{host} answered HTTP {status} with {excerpt}, which is not PostHog's API: check --host, PostHog's app host, such as https://us.posthog.com, https://eu.posthog.com or your own domain (with a self-hosted instance's path prefix, if it has one)"
    )]
    NotPostHog {
        host: String,
        status: u16,
        excerpt: String,
    },
    #[error(
        "PostHog answered asynchronously (HTTP 202) without a query to poll for the answer: {excerpt}"
    )]
    Async { excerpt: String },
}
