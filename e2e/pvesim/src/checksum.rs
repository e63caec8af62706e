//! File checksums for upload and download-url (`PVE::Tools::get_file_hash`): md5, sha1, sha224,
//! sha256, sha384 and sha512, compared case-insensitively as PVE does.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// The algorithms the API accepts (`checksum-algorithm`).
pub const ALGORITHMS: &[&str] = &["md5", "sha1", "sha224", "sha256", "sha384", "sha512"];

/// An incremental hash of one of [`ALGORITHMS`].
pub enum Hasher {
    /// MD5.
    Md5(md5::Md5),
    /// SHA-1.
    Sha1(sha1::Sha1),
    /// SHA-224.
    Sha224(sha2::Sha224),
    /// SHA-256.
    Sha256(sha2::Sha256),
    /// SHA-384.
    Sha384(sha2::Sha384),
    /// SHA-512.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A hasher for `algorithm` (one of [`ALGORITHMS`]).
    pub fn new(algorithm: &str) -> Result<Self> {
        use md5::Digest as _;
        use sha2::Digest as _;
        Ok(match algorithm {
            "md5" => Hasher::Md5(md5::Md5::new()),
            "sha1" => Hasher::Sha1(sha1::Sha1::new()),
            "sha224" => Hasher::Sha224(sha2::Sha224::new()),
            "sha256" => Hasher::Sha256(sha2::Sha256::new()),
            "sha384" => Hasher::Sha384(sha2::Sha384::new()),
            "sha512" => Hasher::Sha512(sha2::Sha512::new()),
            other => {
                return Err(Error::failed(format!(
                    "unknown checksum algorithm '{other}'"
                )));
            }
        })
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => md5::Digest::update(h, data),
            Hasher::Sha1(h) => sha1::Digest::update(h, data),
            Hasher::Sha224(h) => sha2::Digest::update(h, data),
            Hasher::Sha256(h) => sha2::Digest::update(h, data),
            Hasher::Sha384(h) => sha2::Digest::update(h, data),
            Hasher::Sha512(h) => sha2::Digest::update(h, data),
        }
    }

    /// The lowercase hex digest.
    pub fn finish(self) -> String {
        match self {
            Hasher::Md5(h) => hex::encode(md5::Digest::finalize(h)),
            Hasher::Sha1(h) => hex::encode(sha1::Digest::finalize(h)),
            Hasher::Sha224(h) => hex::encode(sha2::Digest::finalize(h)),
            Hasher::Sha256(h) => hex::encode(sha2::Digest::finalize(h)),
            Hasher::Sha384(h) => hex::encode(sha2::Digest::finalize(h)),
            Hasher::Sha512(h) => hex::encode(sha2::Digest::finalize(h)),
        }
    }
}

/// `get_file_hash($algorithm, $path)`.
pub fn file_hash(algorithm: &str, path: &Path) -> Result<String> {
    let mut hasher = Hasher::new(algorithm)?;
    let mut file =
        std::fs::File::open(path).map_err(Error::io(format!("open {}", path.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(Error::io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

/// Checks a file against an expected checksum, with PVE's mismatch message.
pub fn verify(algorithm: &str, expected: &str, path: &Path) -> Result<()> {
    let got = file_hash(algorithm, path)?;
    if got.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "checksum mismatch: got '{got}' != expect '{expected}'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), b"abc").unwrap();
        assert_eq!(
            file_hash("md5", tmp.path()).unwrap(),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            file_hash("sha1", tmp.path()).unwrap(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            file_hash("sha256", tmp.path()).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(
            verify(
                "sha256",
                "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
                tmp.path()
            )
            .is_ok()
        );
        assert_eq!(
            verify("md5", "00", tmp.path()).unwrap_err().to_string(),
            "checksum mismatch: got '900150983cd24fb0d6963f7d28e17f72' != expect '00'"
        );
    }
}
