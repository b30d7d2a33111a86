//! Reading PostHog. `client` makes one request well (authentication, the request budget,
//! retries, asynchronous answers via `polled`, errors a user can act on: `error`); `source`
//! chooses the API and hands out readers; `query` reads the HogQL Query API in PostHog's
//! storage order (its SQL in `hogql`, its answers parsed by `rows`, repaired by `repair`);
//! `events_api` reads the legacy Events API.

pub(crate) mod client;
pub(crate) mod error;
pub(crate) mod events_api;
pub(crate) mod hogql;
mod oversize;
pub(crate) mod polled;
pub(crate) mod query;
pub(crate) mod repair;
mod rows;
pub(crate) mod source;
