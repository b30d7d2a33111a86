//! Where batches go: the webhook (`webhook`), an NDJSON file or stdout (`ndjson`, for
//! `export`), and the dead-letter file for what the webhook rejects (`dead_letter`).

pub(crate) mod dead_letter;
pub(crate) mod ndjson;
pub(crate) mod webhook;
