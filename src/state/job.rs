//! What makes two runs of a reading job the same job: its identity (never a secret, the
//! webhook only as a fingerprint). Opening a job's state is the runner's.

use crate::domain::JobId;
use crate::settings::Connection;

/// The identity every reading job starts from: where it reads and which events.
pub(crate) fn identity(
    command: &str,
    connection: &Connection,
    filters: &crate::domain::Filters,
) -> JobId {
    crate::domain::job([
        ("command", command.to_string()),
        ("host", connection.host.as_str().to_string()),
        ("project", connection.project.clone()),
        ("events", filters.include.join(",")),
        ("exclude_events", filters.exclude.join(",")),
    ])
}
