//! What survives a run: the checkpoint file of each job (`checkpoint`: atomic writes, locking,
//! format) and what makes two runs the same job (`job`: identity, resume, the API it reads).

pub(crate) mod checkpoint;
pub(crate) mod job;
