//! HTTP plumbing shared by the PostHog client and the webhook sink: the client and replies
//! (`http`), when and how long to retry (`retry`), and the request budget (`ratelimit`).

pub(crate) mod http;
pub(crate) mod ratelimit;
pub(crate) mod retry;
