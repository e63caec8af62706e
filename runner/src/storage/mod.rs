//! Intermediate storage, behind one trait: S3, HTTP and NFS. Every implementation streams and computes
//! SHA-256 in the same pass that moves the bytes.

use std::path::Path;

use async_trait::async_trait;

use crate::Result;
use crate::progress::Progress;

/// An object in staging storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedObject {
    /// Key under the storage root: `<namespace>/<migration>/<disk>.<format>`.
    pub key: String,
    /// Where it is, for status and humans: `s3://bucket/key`, `https://host/base/key`, `nfs://server/path/key`.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

/// The object key of one disk of a migration.
pub fn object_key(namespace: &str, migration: &str, disk: &str, format: crd::DiskFormat) -> String {
    format!("{namespace}/{migration}/{disk}.{format}")
}

/// A staging backend.
#[async_trait]
pub trait Stage: Send + Sync {
    /// Human description without credentials, e.g. `s3 bucket vm-migrations at http://127.0.0.1:9000`.
    fn describe(&self) -> String;

    /// Reaches the storage with the credentials (Validating): bucket exists and is writable, base URL
    /// accepts the token, the directory is mounted and writable.
    async fn check(&self) -> Result<()>;

    /// The complete object at `key` with its recorded size and SHA-256, if present (resume).
    async fn stat(&self, key: &str) -> Result<Option<StagedObject>>;

    /// Uploads the file at `src` to `key`, hashing while reading, resuming an interrupted upload of
    /// the same file where the backend can. Records the SHA-256 with the object.
    async fn upload(&self, key: &str, src: &Path, progress: &Progress) -> Result<StagedObject>;

    /// Downloads `object` into `dest`, hashing while writing; a hash that differs from
    /// `object.sha256` is [`crate::Error::ChecksumMismatch`] and `dest` is removed.
    async fn download(&self, object: &StagedObject, dest: &Path, progress: &Progress)
    -> Result<()>;

    /// Deletes the object (and its sidecar data). Absent objects are not an error.
    async fn delete(&self, key: &str) -> Result<()>;
}
