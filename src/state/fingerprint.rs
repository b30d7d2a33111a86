//! Recognising a file again: a hash of the first and the last 64 KiB of its first `len`
//! bytes. A resumed run checks that a file still begins with what an earlier run wrote
//! (`export`) or sent (`send`) before it continues after that part: a file that was replaced,
//! cut or rewritten must never be continued at an old byte offset. Positioned reads, so that
//! a reader or writer sharing the handle is not disturbed.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes hashed at each end: enough to tell two event files apart, cheap at every checkpoint.
pub(crate) const SPAN: u64 = 64 << 10;

/// `sha256:` and the hex digest of `len`, the first `min(SPAN, len)` bytes of `file` and the
/// last `min(SPAN, len)` bytes before `len`. An error if the file is shorter than `len`.
pub(crate) fn prefix(file: &File, len: u64) -> io::Result<String> {
    let mut hash = Sha256::new();
    hash.update(len.to_le_bytes());
    let span = SPAN.min(len);
    let mut buf = vec![0u8; span as usize];
    for at in [0, len - span] {
        file.read_exact_at(&mut buf, at)?;
        hash.update(&buf);
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

/// Whether `file` is at least `len` bytes long and they hash to `expected`.
pub(crate) fn begins_with(file: &File, len: u64, expected: &str) -> io::Result<bool> {
    if file.metadata()?.len() < len {
        return Ok(false);
    }
    Ok(prefix(file, len)? == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn an_appended_file_still_begins_with_its_old_part() {
        let old: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let hash = prefix(&file_with(&old), old.len() as u64).unwrap();
        let mut longer = old.clone();
        longer.extend_from_slice(b"more lines\n");
        assert!(begins_with(&file_with(&longer), old.len() as u64, &hash).unwrap());
    }

    #[test]
    fn a_changed_head_or_tail_or_a_shorter_file_does_not() {
        let old: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let len = old.len() as u64;
        let hash = prefix(&file_with(&old), len).unwrap();
        for at in [0, old.len() - 1] {
            let mut changed = old.clone();
            changed[at] ^= 1;
            assert!(
                !begins_with(&file_with(&changed), len, &hash).unwrap(),
                "byte {at}"
            );
        }
        assert!(!begins_with(&file_with(&old[..1000]), len, &hash).unwrap());
    }

    #[test]
    fn short_and_empty_prefixes_hash_whole() {
        let f = file_with(b"{\"a\":1}\n{\"b\":2}\n");
        assert_ne!(prefix(&f, 8).unwrap(), prefix(&f, 16).unwrap());
        assert!(prefix(&f, 0).unwrap().starts_with("sha256:"));
        assert!(prefix(&f, 17).is_err(), "past the end");
    }
}
