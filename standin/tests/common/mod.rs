//! What the stand-in's own tests share: a Query API request, as posthog-patterns sends one.
#![allow(dead_code)]

use posthog_patterns_standin::PostHogStandIn;
use serde_json::{Value, json};

/// A request for `sql` with `values`; times in UTC (`convertToProjectTimezone: false`) when
/// `utc`, else in the project's time zone.
pub fn query_request(
    ph: &PostHogStandIn,
    sql: &str,
    values: Value,
    utc: bool,
) -> reqwest::RequestBuilder {
    let cfg = ph.config();
    let mut body = json!({"query": {"kind": "HogQLQuery", "query": sql, "values": values},
                          "refresh": "force_blocking"});
    if utc {
        body["query"]["modifiers"] = json!({"convertToProjectTimezone": false});
    }
    reqwest::Client::new()
        .post(format!(
            "{}/api/projects/{}/query/",
            ph.url(),
            cfg.project_id
        ))
        .bearer_auth(cfg.api_key)
        .json(&body)
}
