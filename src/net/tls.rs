//! Which certificates a server may present. Every client trusts the built-in web roots, the
//! operating system's store where there is one, and the PEM files of `--ca-cert` (a private
//! CA, a self-signed server). A file is checked whole when it is loaded, so that a bad one is
//! a usage error before the first request rather than a connection error after retries.

use crate::error::chain;
use crate::error::usage;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A CA file larger than this is not one (all of Mozilla's roots take about 220 KB); the cap
/// keeps a wrong path such as a log file or `/dev/zero` from filling memory.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// What a usable file looks like, for error messages.
const PEM_SHAPE: &str = "a PEM file holds one or more blocks from `-----BEGIN CERTIFICATE-----` to `-----END CERTIFICATE-----` (convert a DER file with `openssl x509 -inform der -in FILE -out FILE.pem`)";

/// The certificates of `--ca-cert`, trusted as roots besides the built-in and system ones.
#[derive(Clone, Default)]
pub(crate) struct CaCerts {
    certs: Vec<reqwest::Certificate>,
    files: Vec<PathBuf>,
}

impl CaCerts {
    /// Reads every file; a missing, unreadable or non-PEM file, or a block in it that is not
    /// a certificate, is a usage error naming the file.
    pub(crate) fn load(files: &[PathBuf]) -> anyhow::Result<Self> {
        let mut certs = Vec::new();
        for path in files {
            certs.extend(read_file(path)?);
        }
        Ok(CaCerts {
            certs,
            files: files.to_vec(),
        })
    }

    pub(crate) fn certificates(&self) -> &[reqwest::Certificate] {
        &self.certs
    }

    /// For `config check`: what is trusted, in one line.
    pub(crate) fn describe(&self) -> String {
        let base = "built-in web roots, the system's store";
        if self.files.is_empty() {
            return base.into();
        }
        let names: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        format!(
            "{base}, {} from {}",
            crate::progress::count(self.certs.len() as u64, "certificate", "certificates"),
            names.join(", ")
        )
    }
}

/// The certificates in one PEM file, each checked as rustls will check it.
fn read_file(path: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let bad = |why: String| {
        usage(format!(
            "the CA certificate file {} (--ca-cert) {why}",
            path.display()
        ))
    };
    let bytes = read_capped(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&bytes)
        .map_err(|e| bad(format!("is not valid PEM ({}); {PEM_SHAPE}", chain(&e))))?;
    if certs.is_empty() {
        return Err(bad(format!("holds no PEM certificate; {PEM_SHAPE}")));
    }
    for (n, cert) in certs.iter().enumerate() {
        check(cert).map_err(|e| {
            bad(format!(
                "holds a block that is not a usable X.509 certificate (certificate {} of {}: {e})",
                n + 1,
                certs.len()
            ))
        })?;
    }
    Ok(certs)
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(
            "it is larger than 4 MiB, too large for a CA certificate file",
        ));
    }
    Ok(bytes)
}

/// reqwest reads a PEM block's bytes without parsing them; rustls parses them only when a
/// client is built. Building a throw-away client that trusts nothing else finds a bad block
/// now, and names it.
fn check(cert: &reqwest::Certificate) -> Result<(), String> {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert.clone())
        .build()
        .map(drop)
        .map_err(|e| chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text).unwrap();
        f
    }

    fn error(text: &[u8]) -> String {
        let f = file(text);
        let e = CaCerts::load(&[f.path().to_path_buf()]).err().unwrap();
        assert_eq!(crate::error::exit_code_of(&e), 2, "{e:#}");
        let text = format!("{e:#}");
        assert!(text.contains(&f.path().display().to_string()), "{text}");
        text
    }

    #[test]
    fn no_files_trusts_only_the_built_in_and_system_roots() {
        let none = CaCerts::load(&[]).unwrap();
        assert!(none.certificates().is_empty());
        assert_eq!(none.describe(), "built-in web roots, the system's store");
    }

    #[test]
    fn a_file_without_a_certificate_is_a_usage_error_that_shows_the_shape() {
        assert!(error(b"not a certificate\n").contains("-----BEGIN CERTIFICATE-----"));
        let key_only = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(error(key_only).contains("holds no PEM certificate"));
    }

    #[test]
    fn a_certificate_block_that_is_not_x509_is_a_usage_error() {
        let junk = b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        assert!(error(junk).contains("certificate 1 of 1"));
    }

    #[test]
    fn a_missing_file_is_a_usage_error_naming_it() {
        let e = CaCerts::load(&["/nonexistent/ca.pem".into()])
            .err()
            .unwrap();
        assert_eq!(crate::error::exit_code_of(&e), 2);
        assert!(format!("{e:#}").contains("/nonexistent/ca.pem"));
    }
}
