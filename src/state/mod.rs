//! What survives a run: the checkpoint file of each job (`checkpoint`: atomic writes, locking,
//! format), what makes two runs the same job (`job`: identity, resume, the API it reads), and
//! how a file is recognised again (`fingerprint`).

pub(crate) mod checkpoint;
pub(crate) mod fingerprint;
pub(crate) mod job;
