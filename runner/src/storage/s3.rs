//! S3 staging with aws-sdk-s3: AWS, or any S3-compatible server (MinIO, Ceph RGW, Garage, s3s...).
//!
//! Endpoint rules (the guide's MinIO example): an `endpoint` key in the Secret wins over
//! `spec.storage.endpoint`; either may be `host:port` (https assumed) or a URL with its scheme
//! (`http://minio.example.com:9000`). Custom endpoints use path-style addressing and checksums only
//! where an operation requires them; no endpoint (or an `*.amazonaws.com` one) means AWS in
//! `spec.storage.region`.
//!
//! Uploads are multipart above [`MIN_PART`]: the part size grows with the object so any size fits
//! in [`MAX_PARTS`] parts; the file is read once, in order, through the SHA-256 (on a reading
//! thread, [`ChunkReader`]); up to [`CONCURRENCY`] parts are in flight. Parts up to
//! [`MAX_BUFFERED_PART`] (objects up to ~70 GiB) are held in memory between the read and the upload,
//! in a pool of `CONCURRENCY + 2` buffers ([`BufferPool`]); bigger parts are hashed in the reading
//! pass and sent from the file, so memory stays flat at any size. Part payloads are not signed
//! (`UNSIGNED-PAYLOAD`): the SHA-256 that matters is the object's, computed once.
//!
//! An interrupted upload resumes: the upload id and each finished part's ETag are journaled in
//! `<src>.s3upload` next to the source file (servers without ListMultipartUploads, like s3s, need
//! it; on AWS the upload is also found by listing). ListParts tells which parts the server holds;
//! those are re-read and hashed locally (and their MD5 compared with the ETag) instead of being sent
//! again. A terminal failure aborts the upload instead, leaving no parts behind.
//!
//! Downloads fetch [`CONCURRENCY`] ranges of [`RANGE_SIZE`] at once, each into one pooled buffer,
//! and hand them in order to a writing thread that hashes ([`FileSink`]): a bounded reorder window
//! of `CONCURRENCY + 2` buffers. (The alternative, positional writes with a second reader hashing
//! behind the written frontier, would read every byte twice.)
//!
//! A target that downloads by itself (Proxmox VE's `download-url`) gets a presigned GET
//! ([`Stage::presign`]), valid for [`PRESIGN_TTL`]; the URL carries a signature and is never logged.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls;
use bytes::Bytes;
use crd::StorageSpec;
use futures::StreamExt;
use md5::Digest as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use url::Url;

use super::{
    CREDENTIAL_SCOPE, PresignedObject, Stage, StageOptions, StagedObject, UploadLedger,
    parse_sidecar, partial_path, prefixed, sidecar_body, sidecar_key, validate_key,
};
use crate::credentials::Credentials;
use crate::error::with_retries;
use crate::progress::Progress;
use crate::stream::{Body, BufferPool, CHUNK, ChunkReader, FileSink, HashingReader};
use crate::{Error, Result};

const MIB: u64 = 1 << 20;
/// Smallest part (and the size up to which a single PUT is used).
pub const MIN_PART: u64 = 8 * MIB;
/// Parts per object the size is planned for (S3 allows 10,000; the margin keeps a resumed upload
/// whose file grew slightly within the limit).
pub const MAX_PARTS: u64 = 9000;
/// Parts in flight at once, and ranges fetched at once.
pub const CONCURRENCY: usize = 4;
/// Largest part kept in memory between reading and sending (larger ones are sent from the file).
pub const MAX_BUFFERED_PART: u64 = 8 * MIB;
/// Largest part of a streamed upload (whose parts are held in memory): bodies up to ~280 GiB.
pub const MAX_STREAMED_PART: u64 = 32 * MIB;
/// Memory for the parts of a streamed upload, when parts are large (at least three parts).
const STREAM_BUFFER: u64 = 64 * MIB;
/// Size of one ranged GET.
pub const RANGE_SIZE: u64 = 8 * MIB;
/// How long a presigned GET URL is valid.
pub const PRESIGN_TTL: Duration = Duration::from_secs(30 * 60);
/// Default region when the spec names none (also what S3-compatible servers usually expect).
const DEFAULT_REGION: &str = "us-east-1";

/// The part size for an object of `size` bytes: `max(8 MiB, ceil(size / 9000))` rounded up to whole
/// MiB, so any object S3 accepts fits (5 TiB -> 583 MiB parts).
pub fn part_size(size: u64) -> u64 {
    (size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB).max(MIN_PART)
}

/// What an upload did, for tests and the benchmark.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadReport {
    /// Parts of the object (1 for a single PUT).
    pub parts: u32,
    /// Parts an interrupted upload had already sent, verified and kept.
    pub reused: u32,
    /// Bytes sent in this call.
    pub bytes_sent: u64,
    /// Part size used.
    pub part_size: u64,
    /// Whether an earlier multipart upload was continued.
    pub resumed: bool,
    /// Kept parts whose ETag the server did not list: completed under the local bytes' MD5.
    pub assumed: u32,
}

/// A bucket (plus optional key prefix) on AWS or an S3-compatible server.
#[derive(Clone)]
pub struct S3Stage {
    client: Client,
    bucket: String,
    prefix: String,
    /// The custom endpoint, `None` for AWS.
    endpoint: Option<Url>,
    region: String,
    /// The Secret keys the credentials came from, for messages.
    secret_keys: &'static str,
    attempts: u32,
    /// Uploads in progress, mirrored into the status (they outlive the pod).
    uploads: UploadLedger,
}

impl std::fmt::Debug for S3Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.system())
    }
}

/// Decides the endpoint: the Secret's `endpoint` wins over the spec's; `host:port` gets https;
/// AWS hosts (and no endpoint) give `None` (the SDK's regional endpoint).
pub fn endpoint_url(spec: Option<&str>, secret: Option<&str>) -> Result<Option<Url>> {
    let Some(raw) = secret.or(spec).map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let source = if secret.is_some() {
        "storage Secret key endpoint"
    } else {
        "storage.endpoint"
    };
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let url =
        Url::parse(&with_scheme).map_err(|e| Error::Invalid(format!("{source} {raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::Invalid(format!(
            "{source} {raw:?}: must be host[:port] or an http(s) URL"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::Invalid(format!(
            "{source} must not carry credentials: use the Secret keys accessKey/secretKey"
        )));
    }
    let host = url.host_str().unwrap_or_default();
    if host == "amazonaws.com" || host.ends_with(".amazonaws.com") {
        return Ok(None);
    }
    Ok(Some(url))
}

impl S3Stage {
    /// The stage the spec names, with `storage.accessKey`, `storage.secretKey` and optional
    /// `storage.sessionToken` / `storage.endpoint`. The endpoint (the spec's or the Secret's) and
    /// every address the client resolves are judged by the endpoint policy ([`StageOptions::guard`]).
    pub async fn from_spec(
        spec: &StorageSpec,
        credentials: &Credentials,
        options: &StageOptions,
    ) -> Result<Self> {
        let bucket = spec
            .bucket
            .clone()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| Error::Invalid("storage.bucket is required for s3 storage".into()))?;
        let endpoint = endpoint_url(
            spec.endpoint.as_deref(),
            credentials.optional(CREDENTIAL_SCOPE, "endpoint"),
        )?;
        if let Some(url) = &endpoint {
            options.guard.pin_url(url).await?;
        }
        let access_key = credentials.get(CREDENTIAL_SCOPE, "accessKey")?;
        let secret_key = credentials.get(CREDENTIAL_SCOPE, "secretKey")?;
        let session_token = credentials.optional(CREDENTIAL_SCOPE, "sessionToken");
        let region = spec
            .region
            .clone()
            .unwrap_or_else(|| DEFAULT_REGION.to_string());

        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_with_resolver(options.guard.resolver());
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(region.clone()))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                access_key,
                secret_key,
                session_token.map(str::to_string),
                None,
                "virtrigaud-storage-secret",
            ))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // transient failures are retried by `with_retries`, with one policy for every backend
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(15))
                    .read_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(url) = &endpoint {
            config = config
                .endpoint_url(url.as_str().trim_end_matches('/'))
                .force_path_style(true);
        }
        Ok(S3Stage {
            client: Client::from_conf(config.build()),
            bucket,
            prefix: spec.path.clone().unwrap_or_default(),
            endpoint,
            region,
            secret_keys: if session_token.is_some() {
                "accessKey/secretKey/sessionToken"
            } else {
                "accessKey/secretKey"
            },
            attempts: options.attempts.max(1),
            uploads: options.uploads.clone(),
        })
    }

    /// The key in the bucket of a logical key.
    fn full_key(&self, key: &str) -> Result<String> {
        validate_key(key)?;
        Ok(prefixed(&self.prefix, key))
    }

    fn url(&self, full_key: &str) -> String {
        format!("s3://{}/{full_key}", self.bucket)
    }

    fn system(&self) -> String {
        match &self.endpoint {
            Some(url) => format!(
                "s3 storage bucket {} at {}",
                self.bucket,
                url.as_str().trim_end_matches('/')
            ),
            None => format!("s3 storage bucket {} (AWS {})", self.bucket, self.region),
        }
    }

    /// Classifies an SDK error of `what` (e.g. `PUT ns/m/vda.qcow2`).
    fn error<E>(&self, what: &str, err: SdkError<E>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match &err {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = service.err().code().unwrap_or("");
                let message = service.err().message().unwrap_or("");
                self.service_error(what, status, code, message)
            }
            SdkError::ConstructionFailure(_) => {
                Error::Invalid(format!("{}: {what}: {}", self.system(), error_chain(&err)))
            }
            SdkError::DispatchFailure(d) if d.is_user() => {
                Error::Invalid(format!("{}: {what}: {}", self.system(), error_chain(&err)))
            }
            // timeouts, connection failures, unparseable responses: the server may recover
            _ => Error::transient(self.system(), format!("{what}: {}", error_chain(&err))),
        }
    }

    fn service_error(&self, what: &str, status: u16, code: &str, message: &str) -> Error {
        let detail = match (code.is_empty(), message.is_empty()) {
            (true, _) => format!("{what}: HTTP {status}"),
            (false, true) => format!("{what}: {code} (HTTP {status})"),
            (false, false) => format!("{what}: {code} (HTTP {status}): {message}"),
        };
        const AUTH: [&str; 7] = [
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "InvalidToken",
            "TokenRefreshRequired",
            "RequestTimeTooSkewed",
        ];
        const TRANSIENT: [&str; 7] = [
            "SlowDown",
            "Throttling",
            "ThrottlingException",
            "RequestTimeout",
            "InternalError",
            "ServiceUnavailable",
            "OperationAborted",
        ];
        if AUTH.contains(&code) || status == 401 || (status == 403 && code.is_empty()) {
            return Error::Auth {
                system: self.system(),
                detail: format!("{detail}; check the storage Secret's {}", self.secret_keys),
            };
        }
        if code == "NoSuchBucket" {
            return Error::NotFound {
                what: format!("s3 bucket {}", self.bucket),
                detail: format!("{detail} ({})", self.system()),
            };
        }
        if matches!(code, "NoSuchKey" | "NoSuchUpload" | "NotFound") || status == 404 {
            return Error::NotFound {
                what: format!("{} object", self.system()),
                detail,
            };
        }
        if code.contains("StorageFull") || code == "InsufficientStorage" || status == 507 {
            return Error::NoSpace(format!("{}: {detail}", self.system()));
        }
        if TRANSIENT.contains(&code)
            || status == 408
            || status == 429
            || (status >= 500 && status != 501 && status != 505)
        {
            return Error::transient(self.system(), detail);
        }
        Error::Invalid(format!("{}: {detail}", self.system()))
    }

    /// Uploads `src` to `key` and tells what it did (see [`UploadReport`]).
    pub async fn upload_with_report(
        &self,
        key: &str,
        src: &Path,
        progress: &Progress,
    ) -> Result<(StagedObject, UploadReport)> {
        let full = self.full_key(key)?;
        let meta = tokio::fs::metadata(src)
            .await
            .map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
        let size = meta.len();
        if progress.total() == 0 {
            progress.set_total(size);
        }
        let part = part_size(size);
        let (sha256, report) = if size <= MIN_PART {
            self.put_single(&full, src, size, progress).await?
        } else {
            let mtime_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let plan = UploadPlan {
                bucket: self.bucket.clone(),
                key: full.clone(),
                size,
                part_size: part,
                mtime_ns,
                upload_id: String::new(),
            };
            self.put_multipart(plan, src, progress).await?
        };
        self.put_sidecar(&full, &sha256).await?;
        Ok((
            StagedObject {
                key: key.to_string(),
                url: self.url(&full),
                size,
                sha256,
            },
            report,
        ))
    }

    /// Records `sha256` as the checksum of the object `full`.
    async fn put_sidecar(&self, full: &str, sha256: &str) -> Result<()> {
        let side = sidecar_key(full);
        let body = Bytes::from(sidecar_body(sha256, full));
        with_retries(&self.label("PUT", &side), self.attempts, || async {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&side)
                .content_type("text/plain")
                .body(ByteStream::from(body.clone()))
                .send()
                .await
                .map_err(|e| self.error(&format!("PUT {side}"), e))
        })
        .await
        .map(drop)
    }

    /// Starts a multipart upload of `full`: its id.
    async fn create_upload(&self, full: &str) -> Result<String> {
        let created = with_retries(
            &self.label("CreateMultipartUpload", full),
            self.attempts,
            || async {
                self.client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .send()
                    .await
                    .map_err(|e| self.error(&format!("CreateMultipartUpload {full}"), e))
            },
        )
        .await?;
        match created.upload_id() {
            Some(id) if !id.is_empty() => {
                self.uploads.insert(full, id);
                Ok(id.to_string())
            }
            _ => Err(Error::Invalid(format!(
                "{}: CreateMultipartUpload {full} returned no upload id",
                self.system()
            ))),
        }
    }

    /// Drops the parts of an upload that will not be completed.
    async fn abort_upload(&self, plan: &UploadPlan) {
        let _ = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&plan.key)
            .upload_id(&plan.upload_id)
            .send()
            .await;
        self.uploads.remove(&plan.key);
    }

    /// One try of a streamed upload: a multipart upload whose parts are cut from `body` as it is
    /// produced (each part one pooled buffer, a few in flight); a failure aborts it, and the next
    /// try produces the body again.
    async fn put_stream(
        &self,
        full: &str,
        body: &dyn Body,
        progress: &Progress,
    ) -> Result<(u64, String)> {
        let part = part_size(body.max_len());
        let mut plan = UploadPlan {
            bucket: self.bucket.clone(),
            key: full.to_string(),
            size: body.max_len(),
            part_size: part,
            mtime_ns: 0,
            upload_id: self.create_upload(full).await?,
        };
        let sent = self.send_stream_parts(&mut plan, body, progress).await;
        if sent.is_err() {
            self.abort_upload(&plan).await;
        }
        sent
    }

    async fn send_stream_parts(
        &self,
        plan: &mut UploadPlan,
        body: &dyn Body,
        progress: &Progress,
    ) -> Result<(u64, String)> {
        progress.set_done(0);
        // the parts in flight, one waiting, one being produced
        let buffers = (STREAM_BUFFER / plan.part_size).clamp(3, CONCURRENCY as u64 + 2) as usize;
        let mut reader = body.open(
            BufferPool::new(buffers, plan.part_size as usize),
            progress.clone(),
        );
        let read_error = |e| Error::io(format!("reading {}", body.describe()), e);
        let slots = Arc::new(Semaphore::new(buffers - 2));
        let mut tasks: JoinSet<Result<(i32, String)>> = JoinSet::new();
        let mut completed: Vec<(i32, String)> = Vec::new();
        let mut number = 0i32;
        loop {
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            while let Some(done) = tasks.try_join_next() {
                completed.push(joined(done)?);
            }
            let data = match reader.next().await {
                Some(chunk) => chunk.map_err(read_error)?,
                // S3 completes no upload without a part: an empty body is one empty part
                None if number == 0 => Bytes::new(),
                None => break,
            };
            number += 1;
            if number as u64 > MAX_PARTS {
                return Err(Error::Invalid(format!(
                    "{} grew past {} parts of {} bytes",
                    body.describe(),
                    MAX_PARTS,
                    plan.part_size
                )));
            }
            let (stage, part, body) = (self.clone(), plan.clone(), PartBody::Memory(data));
            tasks.spawn(async move {
                let etag = stage.upload_part(&part, number, &body).await?;
                drop(permit);
                Ok((number, etag))
            });
        }
        while let Some(done) = tasks.join_next().await {
            completed.push(joined(done)?);
        }
        let (read, sha256) = reader.finish().await.map_err(read_error)?;
        plan.size = read;
        completed.sort_by_key(|(n, _)| *n);
        self.complete(plan, completed).await?;
        Ok((read, sha256))
    }

    fn label(&self, verb: &str, key: &str) -> String {
        format!("{}: {verb} {key}", self.system())
    }

    /// One PUT for small objects.
    async fn put_single(
        &self,
        full: &str,
        src: &Path,
        size: u64,
        progress: &Progress,
    ) -> Result<(String, UploadReport)> {
        progress.set_done(0);
        let file = tokio::fs::File::open(src)
            .await
            .map_err(|e| Error::io(format!("opening {}", src.display()), e))?;
        let mut reader = HashingReader::new(file, progress.clone());
        let mut data = Vec::with_capacity(size as usize);
        reader
            .read_to_end(&mut data)
            .await
            .map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
        let (read, sha256) = reader.finish();
        check_size(src, size, read)?;
        let data = Bytes::from(data);
        with_retries(&self.label("PUT", full), self.attempts, || async {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(full)
                .body(ByteStream::from(data.clone()))
                .send()
                .await
                .map_err(|e| self.error(&format!("PUT {full}"), e))
        })
        .await?;
        Ok((
            sha256,
            UploadReport {
                parts: 1,
                reused: 0,
                bytes_sent: size,
                part_size: size,
                ..UploadReport::default()
            },
        ))
    }

    async fn put_multipart(
        &self,
        mut plan: UploadPlan,
        src: &Path,
        progress: &Progress,
    ) -> Result<(String, UploadReport)> {
        let journal_path = journal_path(src);
        let (resumed, mut held) = self.find_resumable(&mut plan, &journal_path).await?;
        if !resumed {
            plan.upload_id = self.create_upload(&plan.key).await?;
            held.clear();
        }
        let unlisted = held.values().any(|h| h.etag.is_none());
        let journal = Journal::open(&journal_path, &plan, resumed);
        let mut result = self
            .send_parts(&plan, src, progress, held, Arc::new(journal))
            .await;
        if let Err(e) = &result
            && unlisted
            && !e.is_retryable()
        {
            // parts kept by their local MD5 that the server refused at completion: start over
            tracing::warn!(
                "{}: completing {} with the parts kept from an earlier try failed ({e}); sending \
                 every part again",
                self.system(),
                plan.key
            );
            self.abort_upload(&plan).await;
            plan.upload_id = self.create_upload(&plan.key).await?;
            let journal = Journal::open(&journal_path, &plan, false);
            result = self
                .send_parts(&plan, src, progress, BTreeMap::new(), Arc::new(journal))
                .await;
        }
        match result {
            Ok((sha256, mut report)) => {
                report.resumed = resumed;
                let _ = std::fs::remove_file(&journal_path);
                Ok((sha256, report))
            }
            Err(e) if !e.is_retryable() => {
                // nothing to resume after a terminal failure: leave no parts behind
                self.abort_upload(&plan).await;
                let _ = std::fs::remove_file(&journal_path);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Finds an interrupted upload of the same file to the same key: from the local journal, else
    /// by listing the bucket's uploads. Returns whether one was found (its id is set in `plan`) and
    /// the parts the server holds with their ETags (journaled or listed), by part number.
    async fn find_resumable(
        &self,
        plan: &mut UploadPlan,
        journal_path: &Path,
    ) -> Result<(bool, BTreeMap<i32, HeldPart>)> {
        let (journaled_id, etags) = match Journal::read(journal_path) {
            Some((header, etags)) if header.same_upload(plan) => (Some(header.upload_id), etags),
            _ => (None, BTreeMap::new()),
        };
        // the journal is in this pod's scratch; the ledger came with the status from an earlier
        // pod; the listing is what the server knows (s3s-fs lists none)
        let upload_id = match journaled_id.or_else(|| self.uploads.get(&plan.key)) {
            Some(id) => Some(id),
            None => self.uploads_of(&plan.key).await?.into_iter().next(),
        };
        let Some(upload_id) = upload_id else {
            return Ok((false, BTreeMap::new()));
        };
        let listed = match self.list_parts(&plan.key, &upload_id).await {
            Ok(parts) => parts,
            Err(Error::NotFound { .. }) => {
                self.uploads.remove(&plan.key);
                return Ok((false, BTreeMap::new()));
            }
            Err(e) => return Err(e),
        };
        let mut held = BTreeMap::new();
        for (number, size, etag) in listed {
            // no ETag listed nor journaled (s3s-fs lists none): the part is kept under the MD5 of
            // the local bytes, which CompleteMultipartUpload checks against what the server holds
            let etag = etag.or_else(|| etags.get(&number).cloned());
            if number >= 1 && size == plan.part_len(number) {
                held.insert(number, HeldPart { etag });
            }
        }
        tracing::info!(
            "{}: resuming multipart upload of {} ({} of {} parts on the server)",
            self.system(),
            plan.key,
            held.len(),
            plan.parts()
        );
        plan.upload_id = upload_id;
        Ok((true, held))
    }

    /// The in-progress multipart uploads of exactly `full`, newest first; empty when the server
    /// cannot list them (s3s-fs answers NotImplemented: the journal covers that case).
    async fn uploads_of(&self, full: &str) -> Result<Vec<String>> {
        let listed = with_retries(
            &self.label("ListMultipartUploads", full),
            self.attempts,
            || async {
                self.client
                    .list_multipart_uploads()
                    .bucket(&self.bucket)
                    .prefix(full)
                    .send()
                    .await
                    .map_err(|e| self.error(&format!("ListMultipartUploads {full}"), e))
            },
        )
        .await;
        let listed = match listed {
            Ok(l) => l,
            Err(Error::Invalid(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut uploads: Vec<_> = listed
            .uploads()
            .iter()
            .filter(|u| u.key() == Some(full))
            .filter_map(|u| {
                let when = u.initiated().map(|t| (t.secs(), t.subsec_nanos()));
                Some((when, u.upload_id()?.to_string()))
            })
            .collect();
        uploads.sort_by_key(|u| std::cmp::Reverse(u.0));
        Ok(uploads.into_iter().map(|(_, id)| id).collect())
    }

    /// Every part of an upload the server holds: number, size, ETag if listed.
    async fn list_parts(
        &self,
        full: &str,
        upload_id: &str,
    ) -> Result<Vec<(i32, u64, Option<String>)>> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = with_retries(&self.label("ListParts", full), self.attempts, || {
                let marker = marker.clone();
                async move {
                    self.client
                        .list_parts()
                        .bucket(&self.bucket)
                        .key(full)
                        .upload_id(upload_id)
                        .set_part_number_marker(marker)
                        .send()
                        .await
                        .map_err(|e| self.error(&format!("ListParts {full}"), e))
                }
            })
            .await?;
            for p in page.parts() {
                if let (Some(n), Some(size)) = (p.part_number(), p.size()) {
                    let etag = p.e_tag().map(str::to_string).filter(|e| !e.is_empty());
                    parts.push((n, size.max(0) as u64, etag));
                }
            }
            match page.next_part_number_marker() {
                Some(next) if page.is_truncated() == Some(true) => marker = Some(next.to_string()),
                _ => break,
            }
        }
        Ok(parts)
    }

    /// Reads the file once, in order, through the hash; keeps the parts the server already holds
    /// (after comparing their MD5 with the ETag) and sends the others, [`CONCURRENCY`] at a time.
    async fn send_parts(
        &self,
        plan: &UploadPlan,
        src: &Path,
        progress: &Progress,
        held: BTreeMap<i32, HeldPart>,
        journal: Arc<Journal>,
    ) -> Result<(String, UploadReport)> {
        progress.set_done(0);
        let buffered = plan.part_size <= MAX_BUFFERED_PART;
        // in memory: one chunk per part; from the file: 1 MiB chunks, hashed and dropped (part
        // sizes are whole MiB, so chunks never straddle parts)
        let pool = if buffered {
            // the parts in flight, one waiting, one being read
            BufferPool::new(CONCURRENCY + 2, plan.part_size as usize)
        } else {
            BufferPool::new(4, CHUNK)
        };
        let mut reader = ChunkReader::open(src, pool, progress.clone());
        let read_error = |e| Error::io(format!("reading {}", src.display()), e);
        let short = || {
            Error::Invalid(format!(
                "{} changed size while it was uploaded (expected {} bytes)",
                src.display(),
                plan.size
            ))
        };
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks: JoinSet<Result<(i32, String, u64)>> = JoinSet::new();
        let mut completed: Vec<(i32, String)> = Vec::new();
        let mut assumed: Vec<(i32, String)> = Vec::new();
        let mut report = UploadReport {
            parts: plan.parts() as u32,
            part_size: plan.part_size,
            ..UploadReport::default()
        };
        for number in 1..=plan.parts() as i32 {
            let len = plan.part_len(number);
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            // surface a failed part before reading further
            while let Some(done) = tasks.try_join_next() {
                let (n, etag, sent) = joined(done)?;
                report.bytes_sent += sent;
                completed.push((n, etag));
            }
            let held_part = held.get(&number);
            let mut md5 = held_part.map(|_| md5::Md5::new());
            let body = if buffered {
                let data = reader.next().await.ok_or_else(short)?.map_err(read_error)?;
                if data.len() as u64 != len {
                    return Err(short());
                }
                if let Some(m) = md5.as_mut() {
                    m.update(&data);
                }
                PartBody::Memory(data)
            } else {
                let mut left = len;
                while left > 0 {
                    let data = reader.next().await.ok_or_else(short)?.map_err(read_error)?;
                    if data.len() as u64 > left {
                        return Err(short());
                    }
                    if let Some(m) = md5.as_mut() {
                        m.update(&data);
                    }
                    left -= data.len() as u64;
                }
                PartBody::File {
                    path: src.to_path_buf(),
                    offset: (number as u64 - 1) * plan.part_size,
                    len,
                }
            };
            if let (Some(part), Some(m)) = (held_part, md5) {
                let local = hex::encode(m.finalize());
                match &part.etag {
                    Some(etag) if etag_matches(etag, &local) => {
                        report.reused += 1;
                        completed.push((number, etag.clone()));
                        continue;
                    }
                    Some(_) => {}
                    None => {
                        report.reused += 1;
                        report.assumed += 1;
                        completed.push((number, format!("\"{local}\"")));
                        assumed.push((number, local));
                        continue;
                    }
                }
                tracing::warn!(
                    "{}: part {number} of {} on the server differs from the local file; sending it again",
                    self.system(),
                    plan.key
                );
            }
            let stage = self.clone();
            let plan = plan.clone();
            let journal = journal.clone();
            tasks.spawn(async move {
                let etag = stage.upload_part(&plan, number, &body).await?;
                journal.record(number, &etag);
                drop(permit);
                Ok((number, etag, body.len()))
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (n, etag, sent) = joined(done)?;
            report.bytes_sent += sent;
            completed.push((n, etag));
        }
        let (read, sha256) = reader.finish().await.map_err(read_error)?;
        check_size(src, plan.size, read)?;
        completed.sort_by_key(|(n, _)| *n);
        self.complete(plan, completed).await?;
        self.check_assumed(plan, &assumed).await?;
        Ok((sha256, report))
    }

    /// Reads back the parts kept under their local MD5 (the server listed no ETag): a server that
    /// does not check ETags at completion (s3s-fs) would otherwise keep parts of a different file.
    async fn check_assumed(&self, plan: &UploadPlan, assumed: &[(i32, String)]) -> Result<()> {
        let pool = BufferPool::new(1, plan.part_size as usize);
        for (number, local) in assumed {
            let offset = (*number as u64 - 1) * plan.part_size;
            let data = self
                .get_range(&plan.key, offset, plan.part_len(*number), &pool)
                .await?;
            let read = hex::encode(md5::Md5::digest(&data));
            if &read != local {
                return Err(Error::Invalid(format!(
                    "{}: part {number} of {} kept from an earlier try differs from the file",
                    self.system(),
                    plan.key
                )));
            }
        }
        Ok(())
    }

    async fn upload_part(&self, plan: &UploadPlan, number: i32, body: &PartBody) -> Result<String> {
        let what = format!("UploadPart {} part {number}", plan.key);
        with_retries(
            &self.label("UploadPart", &format!("{} part {number}", plan.key)),
            self.attempts,
            || async {
                let stream = body.stream().await?;
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(&plan.key)
                    .upload_id(&plan.upload_id)
                    .part_number(number)
                    .content_length(body.len() as i64)
                    .body(stream)
                    .customize()
                    // the object's SHA-256 is computed once, in the reading pass; signing would hash
                    // every part a second time
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(|e| self.error(&what, e))?;
                out.e_tag().map(str::to_string).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: {what}: no ETag in the response",
                        self.system()
                    ))
                })
            },
        )
        .await
    }

    async fn complete(&self, plan: &UploadPlan, parts: Vec<(i32, String)>) -> Result<()> {
        let full = &plan.key;
        let upload = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .into_iter()
                    .map(|(n, etag)| CompletedPart::builder().part_number(n).e_tag(etag).build())
                    .collect(),
            ))
            .build();
        let done = with_retries(
            &self.label("CompleteMultipartUpload", full),
            self.attempts,
            || async {
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(&plan.upload_id)
                    .multipart_upload(upload.clone())
                    .send()
                    .await
                    .map_err(|e| self.error(&format!("CompleteMultipartUpload {full}"), e))
            },
        )
        .await;
        if done.is_ok() {
            self.uploads.remove(full);
        }
        match done {
            Ok(_) => Ok(()),
            // a retried Complete whose first answer was lost: fine if the object is there
            Err(Error::NotFound { .. }) if self.object_size(full).await? == Some(plan.size) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn object_size(&self, full: &str) -> Result<Option<u64>> {
        let head = with_retries(&self.label("HEAD", full), self.attempts, || async {
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(full)
                .send()
                .await
                .map_err(|e| self.error(&format!("HEAD {full}"), e))
        })
        .await;
        match head {
            Ok(h) => Ok(Some(h.content_length().unwrap_or(0).max(0) as u64)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// GETs `len` bytes at `offset` of `full` into one buffer.
    async fn get_range(
        &self,
        full: &str,
        offset: u64,
        len: u64,
        pool: &BufferPool,
    ) -> Result<Bytes> {
        let what = format!("GET {full} bytes {offset}-{}", offset + len - 1);
        with_retries(&self.label("GET", full), self.attempts, || async {
            let mut out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(full)
                .range(format!("bytes={offset}-{}", offset + len - 1))
                .send()
                .await
                .map_err(|e| self.error(&what, e))?;
            // one pooled buffer per range: servers send small frames, and keeping them as
            // separate allocations costs far more memory than their size
            let mut data = pool.take().await;
            while let Some(chunk) = out.body.next().await {
                let chunk = chunk.map_err(|e| {
                    Error::transient(self.system(), format!("{what}: {}", error_chain(&e)))
                })?;
                if data.len() + chunk.len() > len as usize {
                    return Err(Error::transient(
                        self.system(),
                        format!("{what}: more than {len} bytes"),
                    ));
                }
                data.extend_from_slice(&chunk);
            }
            if data.len() as u64 != len {
                return Err(Error::transient(
                    self.system(),
                    format!("{what}: got {} bytes", data.len()),
                ));
            }
            Ok(data.freeze())
        })
        .await
    }

    /// Aborts every in-progress multipart upload of `full` the server lists.
    async fn abort_uploads(&self, full: &str) -> Result<()> {
        let mut ids = self.uploads_of(full).await?;
        ids.extend(self.uploads.get(full).filter(|id| !ids.contains(id)));
        for id in ids {
            with_retries(
                &self.label("AbortMultipartUpload", full),
                self.attempts,
                || async {
                    match self
                        .client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(full)
                        .upload_id(&id)
                        .send()
                        .await
                        .map_err(|e| self.error(&format!("AbortMultipartUpload {full}"), e))
                    {
                        Err(Error::NotFound { .. }) => Ok(()),
                        other => other.map(|_| ()),
                    }
                },
            )
            .await?;
        }
        self.uploads.remove(full);
        Ok(())
    }

    async fn delete_object(&self, full: &str) -> Result<()> {
        with_retries(&self.label("DELETE", full), self.attempts, || async {
            match self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(full)
                .send()
                .await
                .map_err(|e| self.error(&format!("DELETE {full}"), e))
            {
                Err(Error::NotFound { .. }) => Ok(()),
                other => other.map(|_| ()),
            }
        })
        .await
    }
}

#[async_trait]
impl Stage for S3Stage {
    fn describe(&self) -> String {
        self.system()
    }

    async fn check(&self) -> Result<()> {
        with_retries(&self.label("HEAD bucket", ""), self.attempts, || async {
            self.client
                .head_bucket()
                .bucket(&self.bucket)
                .send()
                .await
                .map_err(|e| match self.error("HeadBucket", e) {
                    // HEAD has no error body: a 404 here is the bucket
                    Error::NotFound { detail, .. } => Error::NotFound {
                        what: format!("s3 bucket {}", self.bucket),
                        detail: format!("{detail} ({})", self.system()),
                    },
                    other => other,
                })
        })
        .await?;
        let probe = prefixed(&self.prefix, ".virtrigaud-check");
        with_retries(&self.label("PUT", &probe), self.attempts, || async {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&probe)
                .body(ByteStream::from_static(b"virtrigaud write check\n"))
                .send()
                .await
                .map_err(|e| self.error(&format!("PUT {probe}"), e))
        })
        .await?;
        self.delete_object(&probe).await
    }

    async fn stat(&self, key: &str) -> Result<Option<StagedObject>> {
        let full = self.full_key(key)?;
        let Some(size) = self.object_size(&full).await? else {
            return Ok(None);
        };
        let side = sidecar_key(&full);
        let text = with_retries(&self.label("GET", &side), self.attempts, || async {
            let got = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&side)
                .send()
                .await;
            let out = match got.map_err(|e| self.error(&format!("GET {side}"), e)) {
                Ok(out) => out,
                Err(Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let body = out.body.collect().await.map_err(|e| {
                Error::transient(self.system(), format!("GET {side}: {}", error_chain(&e)))
            })?;
            Ok(Some(
                String::from_utf8_lossy(&body.into_bytes()).into_owned(),
            ))
        })
        .await?;
        Ok(text
            .as_deref()
            .and_then(parse_sidecar)
            .map(|sha256| StagedObject {
                key: key.to_string(),
                url: self.url(&full),
                size,
                sha256,
            }))
    }

    async fn upload(&self, key: &str, src: &Path, progress: &Progress) -> Result<StagedObject> {
        let (object, report) = self.upload_with_report(key, src, progress).await?;
        if report.resumed {
            tracing::info!(
                "{}: {key}: {} bytes sent, {} of {} parts kept from an earlier try",
                self.system(),
                report.bytes_sent,
                report.reused,
                report.parts
            );
        }
        Ok(object)
    }

    async fn upload_body(
        &self,
        key: &str,
        body: &dyn Body,
        progress: &Progress,
    ) -> Result<StagedObject> {
        let full = self.full_key(key)?;
        let label = self.label("streamed upload", &full);
        let (size, sha256) = with_retries(&label, self.attempts, || {
            self.put_stream(&full, body, progress)
        })
        .await?;
        self.put_sidecar(&full, &sha256).await?;
        Ok(StagedObject {
            key: key.to_string(),
            url: self.url(&full),
            size,
            sha256,
        })
    }

    fn streams(&self, max_len: u64) -> bool {
        part_size(max_len) <= MAX_STREAMED_PART
    }

    async fn download(
        &self,
        object: &StagedObject,
        dest: &Path,
        progress: &Progress,
    ) -> Result<()> {
        let full = self.full_key(&object.key)?;
        let partial = partial_path(dest);
        let mut sink = FileSink::resume(&partial, 1, progress.clone()).await?;
        if sink.bytes() > object.size {
            sink.truncate().await?;
        }
        let start = sink.bytes();
        let ranges = (start..object.size)
            .step_by(RANGE_SIZE as usize)
            .map(|offset| (offset, RANGE_SIZE.min(object.size - offset)));
        // in order, at most CONCURRENCY ranges fetched or waiting at once
        // the ranges fetched, one queued for the writer, one being written
        let pool = BufferPool::new(CONCURRENCY + 2, RANGE_SIZE as usize);
        let mut fetched = futures::stream::iter(ranges)
            .map(|(offset, len)| {
                let (full, pool) = (full.as_str(), &pool);
                async move { self.get_range(full, offset, len, pool).await }
            })
            .buffered(CONCURRENCY);
        let mut failed = None;
        while let Some(range) = fetched.next().await {
            match range {
                Ok(data) => {
                    if let Err(e) = sink.write(data).await {
                        failed = Some(e);
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(fetched);
        // flushed either way: an interrupted download continues from this prefix next time
        let tally = sink.finish().await;
        if let Some(e) = failed {
            return Err(e);
        }
        super::finish_download(tally?, object, &partial, dest).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        self.abort_uploads(&full).await?;
        self.delete_object(&full).await?;
        self.delete_object(&sidecar_key(&full)).await
    }

    /// A presigned GET of the object, valid for [`PRESIGN_TTL`] (a target starts its download
    /// at once; S3 checks the signature when the request starts, so a long download is fine).
    async fn presign(&self, object: &StagedObject) -> Result<Option<PresignedObject>> {
        let full = self.full_key(&object.key)?;
        let config = PresigningConfig::expires_in(PRESIGN_TTL)
            .map_err(|e| Error::Invalid(format!("{}: presigning: {e}", self.system())))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .presigned(config)
            .await
            .map_err(|e| self.error(&format!("presigning GET {full}"), e))?;
        tracing::info!(
            "{}: presigned a GET of {} for {}s",
            self.system(),
            self.url(&full),
            PRESIGN_TTL.as_secs()
        );
        Ok(Some(PresignedObject {
            url: request.uri().to_string(),
            size: object.size,
            sha256: object.sha256.clone(),
        }))
    }
}

/// A part's data: in memory, or a range of the source file.
enum PartBody {
    Memory(Bytes),
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl PartBody {
    fn len(&self) -> u64 {
        match self {
            PartBody::Memory(b) => b.len() as u64,
            PartBody::File { len, .. } => *len,
        }
    }

    async fn stream(&self) -> Result<ByteStream> {
        match self {
            PartBody::Memory(b) => Ok(ByteStream::from_body_1_x(Slices(b.clone()))),
            PartBody::File { path, offset, len } => ByteStream::read_from()
                .path(path)
                .offset(*offset)
                .length(Length::Exact(*len))
                .buffer_size(SLICE)
                .build()
                .await
                .map_err(|e| {
                    Error::io(
                        format!("reading {}", path.display()),
                        std::io::Error::other(e.to_string()),
                    )
                }),
        }
    }
}

/// Body chunk size handed to the HTTP client.
const SLICE: usize = 256 * 1024;

/// An in-memory part handed to the HTTP client in [`SLICE`]s (zero-copy views of the part). The
/// SDK's hyper 0.14 client copies each body chunk into its connection's write buffer and keeps that
/// buffer: one whole 8 MiB chunk would pin 8 MiB per pooled connection.
struct Slices(Bytes);

impl http_body::Body for Slices {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Bytes>, Self::Error>>> {
        let rest = &mut self.get_mut().0;
        if rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let slice = rest.split_to(rest.len().min(SLICE));
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.len() as u64)
    }
}

/// A part the server already holds.
#[derive(Clone, Debug)]
struct HeldPart {
    /// `None`: neither listed nor journaled (see [`S3Stage::find_resumable`]).
    etag: Option<String>,
}

/// What identifies a multipart upload of one file to one key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct UploadPlan {
    bucket: String,
    key: String,
    size: u64,
    part_size: u64,
    /// Modification time of the source: a re-exported file is a different upload.
    mtime_ns: u128,
    upload_id: String,
}

impl UploadPlan {
    fn parts(&self) -> u64 {
        self.size.div_ceil(self.part_size)
    }

    fn part_len(&self, number: i32) -> u64 {
        let offset = (number.max(1) as u64 - 1) * self.part_size;
        self.part_size.min(self.size.saturating_sub(offset))
    }

    fn same_upload(&self, other: &UploadPlan) -> bool {
        self.bucket == other.bucket
            && self.key == other.key
            && self.size == other.size
            && self.part_size == other.part_size
            && self.mtime_ns == other.mtime_ns
            && !self.upload_id.is_empty()
    }
}

/// One journal line after the header.
#[derive(Serialize, Deserialize)]
struct JournalPart {
    part: i32,
    etag: String,
}

/// The local record of a multipart upload in progress: a JSON header line (the [`UploadPlan`]),
/// then one line per finished part. Best effort: when it cannot be written, resuming relies on
/// the server's listings.
struct Journal {
    file: Mutex<Option<std::fs::File>>,
}

impl Journal {
    fn open(path: &Path, plan: &UploadPlan, resumed: bool) -> Self {
        // an upload resumed from the status (a new pod) has no journal yet: it starts one
        let opened = if resumed && path.exists() {
            std::fs::OpenOptions::new().append(true).open(path)
        } else {
            std::fs::File::create(path).and_then(|mut f| {
                let header = serde_json::to_string(plan).map_err(std::io::Error::other)?;
                writeln!(f, "{header}")?;
                Ok(f)
            })
        };
        let file = opened
            .inspect_err(|e| {
                tracing::warn!(
                    "cannot write the upload journal {}: {e}; an interruption will resend more",
                    path.display()
                )
            })
            .ok();
        Journal {
            file: Mutex::new(file),
        }
    }

    fn record(&self, part: i32, etag: &str) {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = guard.as_mut() {
            let line = serde_json::to_string(&JournalPart {
                part,
                etag: etag.to_string(),
            })
            .unwrap_or_default();
            if writeln!(f, "{line}").is_err() {
                *guard = None;
            }
        }
    }

    fn read(path: &Path) -> Option<(UploadPlan, BTreeMap<i32, String>)> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut lines = text.lines();
        let header: UploadPlan = serde_json::from_str(lines.next()?).ok()?;
        let parts = lines
            .filter_map(|l| serde_json::from_str::<JournalPart>(l).ok())
            .map(|p| (p.part, p.etag))
            .collect();
        Some((header, parts))
    }
}

/// Where the journal of an upload of `src` lives: next to it, on the scratch volume.
pub fn journal_path(src: &Path) -> PathBuf {
    let mut name = src.as_os_str().to_owned();
    name.push(".s3upload");
    PathBuf::from(name)
}

/// Whether a part's ETag matches the local MD5. ETags that are not a plain MD5 (SSE-KMS,
/// some gateways) cannot be compared; the part size matched already, so they are kept.
fn etag_matches(etag: &str, md5_hex: &str) -> bool {
    let etag = etag.trim_matches('"');
    if etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        etag.eq_ignore_ascii_case(md5_hex)
    } else {
        true
    }
}

fn check_size(src: &Path, expected: u64, read: u64) -> Result<()> {
    if expected == read {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{} changed size while it was uploaded ({expected} -> {read} bytes)",
            src.display()
        )))
    }
}

fn joined<T>(done: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    done.map_err(|e| Error::io("part upload task", std::io::Error::other(e)))?
}

/// An error and its sources on one line (the SDK's Display omits the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_with_the_object() {
        assert_eq!(part_size(0), MIN_PART);
        assert_eq!(part_size(2 << 30), MIN_PART);
        assert_eq!(part_size(16 << 30), MIN_PART);
        // 160 GiB: the old fixed 16 MiB part cap; now 19 MiB parts, 8624 of them
        let p = part_size(160 << 30);
        assert_eq!(p, 19 * MIB);
        assert!((160u64 << 30).div_ceil(p) <= MAX_PARTS);
        // 5 TiB, the S3 maximum, fits in 10,000 parts of at most 5 GiB
        let p = part_size(5 << 40);
        assert_eq!(p % MIB, 0);
        assert!((5u64 << 40).div_ceil(p) <= MAX_PARTS);
        assert!(p <= 5 << 30);
    }

    #[test]
    fn endpoint_rules() {
        let url = |spec, secret| endpoint_url(spec, secret).unwrap().map(|u| u.to_string());
        // the guide's MinIO example: the Secret's endpoint (with scheme) wins
        assert_eq!(
            url(
                Some("minio.example.com:9000"),
                Some("http://minio.example.com:9000")
            ),
            Some("http://minio.example.com:9000/".into())
        );
        assert_eq!(
            url(Some("minio.example.com:9000"), None),
            Some("https://minio.example.com:9000/".into())
        );
        assert_eq!(url(Some("s3.amazonaws.com"), None), None);
        assert_eq!(url(Some("https://s3.eu-west-1.amazonaws.com"), None), None);
        assert_eq!(url(None, None), None);
        assert!(endpoint_url(Some("ftp://x"), None).is_err());
        assert!(endpoint_url(Some("http://user:pw@x"), None).is_err());
    }

    #[test]
    fn etags() {
        let md5 = "9e107d9d372bb6826bd81d3542a419d6";
        assert!(etag_matches(&format!("\"{md5}\""), md5));
        assert!(!etag_matches("\"e4d909c290d0fb1ca068ffaddf22cbd0\"", md5));
        // multipart-style or encrypted ETags are not an MD5: size decides
        assert!(etag_matches("\"abc-3\"", md5));
    }

    #[test]
    fn journal_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vda.qcow2");
        let path = journal_path(&src);
        let plan = UploadPlan {
            bucket: "b".into(),
            key: "ns/m/vda.qcow2".into(),
            size: 100 << 20,
            part_size: MIN_PART,
            mtime_ns: 42,
            upload_id: "u-1".into(),
        };
        let journal = Journal::open(&path, &plan, false);
        journal.record(1, "\"aa\"");
        drop(journal);
        let journal = Journal::open(&path, &plan, true);
        journal.record(3, "\"cc\"");
        drop(journal);
        let (header, parts) = Journal::read(&path).unwrap();
        assert!(header.same_upload(&plan));
        assert_eq!(parts.get(&1).map(String::as_str), Some("\"aa\""));
        assert_eq!(parts.get(&3).map(String::as_str), Some("\"cc\""));
        let moved = UploadPlan {
            mtime_ns: 43,
            ..plan.clone()
        };
        assert!(!header.same_upload(&moved));
        assert_eq!(plan.parts(), 13);
        assert_eq!(plan.part_len(13), 4 << 20);
    }
}
