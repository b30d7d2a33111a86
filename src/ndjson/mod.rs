//! NDJSON in: the source `send` reads. `lines` reads lines (plain or gzip) and counts where
//! each ends; `files` recognises input files across runs; `reader` turns lines into records.

pub(crate) mod files;
pub(crate) mod lines;
pub(crate) mod reader;
