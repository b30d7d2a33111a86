//! Encoding a batch as the body to post: one JSON array, gzip-compressed with
//! `--compress gzip` (once, however often the body is retried).

use crate::cli::Compress;
use std::io::Write;

/// The body to post for the JSON array `json`. gzip at level 1 (`Compression::fast`): on
/// realistic batches it sends 27% of the bytes for 4.2 CPU s per GB, where level 6 sends 15%
/// for 15 CPU s per GB: the CPU, not the network, would then bound a run on a small machine
/// (docs/performance.md, "Compression").
pub(super) fn encode(compress: Compress, json: Vec<u8>) -> bytes::Bytes {
    match compress {
        Compress::None => json.into(),
        Compress::Gzip => {
            let out = Vec::with_capacity(json.len() / 4);
            let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            gz.write_all(&json).expect("writing to memory cannot fail");
            gz.finish().expect("writing to memory cannot fail").into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::batcher::body;

    #[test]
    fn a_gzip_body_decompresses_to_the_json_array() {
        let json = body(&[r#"{"uuid":"a","p":"Zoë 😀"}"#, r#"{"uuid":"b"}"#]);
        let gz = encode(Compress::Gzip, json.clone());
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back).unwrap();
        assert_eq!(back, json);
        assert_eq!(encode(Compress::None, json.clone()), json);
    }
}
