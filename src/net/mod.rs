//! HTTP plumbing shared by the PostHog client and the webhook sink: the client and replies
//! (`http`), when and how long to retry (`retry`), the request budget (`ratelimit`), and the
//! certificates trusted (`tls`).

pub(crate) mod http;
pub(crate) mod ratelimit;
pub(crate) mod retry;
pub(crate) mod tls;
