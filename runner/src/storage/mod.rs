//! Intermediate storage, behind one trait: S3, HTTP and NFS. Every implementation streams and computes
//! SHA-256 in the same pass that moves the bytes (through [`crate::stream`]).
//!
//! Layout, the same on every backend: the object at `<prefix>/<namespace>/<migration>/<disk>.<format>`
//! and, written only after the object is complete, a sidecar `<object>.sha256` holding
//! `<hex sha256>  <file name>` (the `sha256sum` format). "Object and sidecar present" means complete;
//! the sidecar is what [`Stage::stat`] reads back, so a resumed attempt can skip a finished upload.
//! S3 keeps the hash in a sidecar too rather than in object metadata: metadata is fixed when a
//! multipart upload starts, before the hash is known.
//!
//! Downloads go to `<dest>.part` first, continue from there when an earlier try left it behind (the
//! partial file is hashed before continuing), and are renamed to `dest` only when size and SHA-256
//! match the recorded ones.

pub mod http;
pub mod nfs;
pub mod s3;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use crd::{StorageSpec, StorageType};

pub use http::HttpStage;
pub use nfs::NfsStage;
pub use s3::S3Stage;

use crate::credentials::Credentials;
use crate::endpoint::Guard;
use crate::progress::Progress;
use crate::stream::{Body, FileBody, Tally};
use crate::{Error, Result};

/// Credential scope of the storage Secret's values (`storage.accessKey`, `storage.token`...).
pub const CREDENTIAL_SCOPE: &str = "storage";

/// How many times a transient failure is tried in-process before it is reported as retryable.
pub const RETRY_ATTEMPTS: u32 = 5;

/// Knobs of the backends that are not in the spec.
#[derive(Clone, Debug)]
pub struct StageOptions {
    /// A local directory standing for an `nfs` export (tests only, feature `test-doubles`).
    /// Empty, the default: the runner speaks NFSv3 to the server itself ([`nfs`]).
    #[cfg(feature = "test-doubles")]
    pub nfs_root: PathBuf,
    /// In-process tries of a transient failure ([`RETRY_ATTEMPTS`]).
    pub attempts: u32,
    /// The endpoint policy for every connection to the storage (strict by default).
    pub guard: Guard,
    /// Multipart uploads in progress, shared with the status writer so they outlive the pod.
    pub uploads: UploadLedger,
}

/// The multipart uploads a stage has started and not yet completed or aborted, by full object key:
/// seeded from the status a runner starts with, mirrored into the status it writes
/// ([`crd::VMMigrationStatus::uploads`]), so a later attempt in a new pod continues them.
#[derive(Clone, Debug, Default)]
pub struct UploadLedger {
    inner: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
}

impl UploadLedger {
    /// A ledger holding `uploads` (from the status of an earlier attempt).
    pub fn seeded(uploads: &[crd::PendingUpload]) -> Self {
        let ledger = UploadLedger::default();
        for u in uploads {
            ledger.insert(&u.key, &u.upload_id);
        }
        ledger
    }

    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, String>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The upload in progress for `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.map().get(key).cloned()
    }

    /// Records the upload `id` of `key`.
    pub fn insert(&self, key: &str, id: &str) {
        self.map().insert(key.to_string(), id.to_string());
    }

    /// Forgets `key`'s upload (completed or aborted).
    pub fn remove(&self, key: &str) {
        self.map().remove(key);
    }

    /// Every upload, for the status.
    pub fn pending(&self) -> Vec<crd::PendingUpload> {
        self.map()
            .iter()
            .map(|(key, id)| crd::PendingUpload {
                key: key.clone(),
                upload_id: id.clone(),
            })
            .collect()
    }
}

impl Default for StageOptions {
    fn default() -> Self {
        StageOptions {
            #[cfg(feature = "test-doubles")]
            nfs_root: PathBuf::new(),
            attempts: RETRY_ATTEMPTS,
            guard: Guard::default(),
            uploads: UploadLedger::default(),
        }
    }
}

/// Builds the backend the spec names, with the `storage.*` credentials. Every connection to an
/// S3, HTTP or NFS endpoint goes through [`StageOptions::guard`].
pub async fn open(
    spec: &StorageSpec,
    credentials: &Credentials,
    options: &StageOptions,
) -> Result<Box<dyn Stage>> {
    Ok(match spec.type_ {
        StorageType::S3 => Box::new(S3Stage::from_spec(spec, credentials, options).await?),
        StorageType::Http => Box::new(HttpStage::from_spec(spec, credentials, options).await?),
        StorageType::Nfs => Box::new(NfsStage::from_spec(spec, options).await?),
    })
}

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

/// A staged object as a time-limited URL that a target downloads by itself (S3 presigned GET). The
/// URL carries a signature: it is never logged, shown or stored.
#[derive(Clone, PartialEq, Eq)]
pub struct PresignedObject {
    pub url: String,
    pub size: u64,
    /// Hex SHA-256 of the object, for the target to verify.
    pub sha256: String,
}

impl std::fmt::Debug for PresignedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresignedObject")
            .field("size", &self.size)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
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
    /// accepts the token, the export can be mounted and written.
    async fn check(&self) -> Result<()>;

    /// The complete object at `key` with its recorded size and SHA-256, if present (resume).
    async fn stat(&self, key: &str) -> Result<Option<StagedObject>>;

    /// Uploads the file at `src` to `key`, hashing while reading, resuming an interrupted upload of
    /// the same file where the backend can (S3). Records the SHA-256 with the object.
    async fn upload(&self, key: &str, src: &Path, progress: &Progress) -> Result<StagedObject> {
        self.upload_body(key, &FileBody::new(src).await?, progress)
            .await
    }

    /// Uploads what `body` produces to `key` as it is produced: a conversion streamed into staging
    /// without a scratch copy. A failed try starts `body` over. Records the SHA-256 with the object.
    async fn upload_body(
        &self,
        key: &str,
        body: &dyn Body,
        progress: &Progress,
    ) -> Result<StagedObject>;

    /// Whether [`Stage::upload_body`] takes a body of unknown length up to `max_len` bytes with
    /// memory bounded (S3: its parts must fit in memory).
    fn streams(&self, _max_len: u64) -> bool {
        true
    }

    /// Downloads `object` into `dest`, hashing while writing; a hash that differs from
    /// `object.sha256` is [`crate::Error::ChecksumMismatch`] and `dest` is removed.
    async fn download(&self, object: &StagedObject, dest: &Path, progress: &Progress)
    -> Result<()>;

    /// Deletes the object (and its sidecar data). Absent objects are not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// `object` as a URL a target can download without credentials, where the backend has such
    /// URLs (S3 presigned GET). `None` otherwise.
    async fn presign(&self, _object: &StagedObject) -> Result<Option<PresignedObject>> {
        Ok(None)
    }
}

/// Key of the checksum sidecar of `key`.
pub fn sidecar_key(key: &str) -> String {
    format!("{key}.sha256")
}

/// Content of a sidecar: `sha256sum` format, so `sha256sum -c` works on a downloaded pair.
pub(crate) fn sidecar_body(sha256: &str, key: &str) -> String {
    let name = key.rsplit('/').next().unwrap_or(key);
    format!("{sha256}  {name}\n")
}

/// The hex SHA-256 in a sidecar, if it holds one.
pub(crate) fn parse_sidecar(text: &str) -> Option<String> {
    let hash = text.split_whitespace().next()?.to_ascii_lowercase();
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hash)
}

/// Refuses keys that could escape the storage root or confuse URLs: empty segments, `.`/`..`,
/// a leading `/`, backslashes and control characters.
pub(crate) fn validate_key(key: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Invalid(format!("staging key {key:?}: {why}")));
    if key.is_empty() {
        return bad("empty");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return bad("control characters and backslashes are not allowed");
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("empty, `.` and `..` segments are not allowed");
    }
    Ok(())
}

/// `prefix/key`, with the prefix's surrounding slashes trimmed; just `key` without a prefix.
pub(crate) fn prefixed(prefix: &str, key: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}/{key}")
    }
}

/// Where a download is written until it is verified.
pub(crate) fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Ends a download whose file content hashed to `tally` (already flushed and fsynced): compares
/// size and SHA-256 with `object` and renames the partial file to `dest`, or removes it and fails
/// with [`Error::ChecksumMismatch`].
pub(crate) async fn finish_download(
    tally: Tally,
    object: &StagedObject,
    partial: &Path,
    dest: &Path,
) -> Result<()> {
    let (size, sha256) = tally.finish();
    if size != object.size || sha256 != object.sha256 {
        let _ = tokio::fs::remove_file(partial).await;
        return Err(Error::ChecksumMismatch {
            object: object.url.clone(),
            expected: format!("{} ({} bytes)", object.sha256, object.size),
            actual: format!("{sha256} ({size} bytes)"),
        });
    }
    tokio::fs::rename(partial, dest).await.map_err(|e| {
        Error::io(
            format!("renaming {} to {}", partial.display(), dest.display()),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_sidecars() {
        let key = object_key("team-a", "web-01", "vda", crd::DiskFormat::Qcow2);
        assert_eq!(key, "team-a/web-01/vda.qcow2");
        assert_eq!(sidecar_key(&key), "team-a/web-01/vda.qcow2.sha256");
        assert_eq!(
            prefixed("/vm-exports/", &key),
            "vm-exports/team-a/web-01/vda.qcow2"
        );
        assert_eq!(prefixed("", &key), key);

        let sha = "ab".repeat(32);
        let body = sidecar_body(&sha, &key);
        assert_eq!(body, format!("{sha}  vda.qcow2\n"));
        assert_eq!(parse_sidecar(&body), Some(sha));
        assert_eq!(parse_sidecar("not a hash"), None);
        assert_eq!(parse_sidecar(""), None);
    }

    #[test]
    fn refuses_escaping_keys() {
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a\\b", "a\nb"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        validate_key("ns/mig/Hard disk 1.vmdk").unwrap();
    }

    #[test]
    fn partial_name() {
        assert_eq!(
            partial_path(Path::new("/scratch/vda.qcow2")),
            PathBuf::from("/scratch/vda.qcow2.part")
        );
    }
}
