//! Where batches go: the webhook (`webhook`), an NDJSON file or stdout (`ndjson`, for
//! `export`), and the dead-letter file for what the webhook rejects (`dead_letter`).

pub(crate) mod dead_letter;
pub(crate) mod ndjson;
pub(crate) mod webhook;

/// Opens `path` to read and append, creating it private (0600, whatever the umask: it holds
/// event data); an existing file keeps its mode.
pub(crate) fn open_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
}
