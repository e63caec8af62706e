//! HTTP staging: any server accepting `PUT`, `GET` with `Range`, `HEAD` and `DELETE` under a base URL
//! (nginx or Apache WebDAV, a presigned-URL gateway...). Credentials: a bearer `token`, or
//! `username` and `password` (basic auth); a custom CA in `ca.crt`.
//!
//! Uploads stream the file, or a conversion's output as it is written (chunked), as the request
//! body, hashed as it is read; a server without
//! `create_full_put_path` that answers `409 Conflict` gets the missing collections created with
//! `MKCOL`. Downloads continue an earlier partial file with `Range: bytes=<n>-`.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use crd::StorageSpec;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::{
    CREDENTIAL_SCOPE, Stage, StageOptions, StagedObject, parse_sidecar, partial_path, prefixed,
    sidecar_body, sidecar_key, validate_key,
};
use crate::credentials::Credentials;
use crate::error::with_retries;
use crate::progress::Progress;
use crate::stream::{Body, BufferPool, CHUNK, FileSink, Tally};
use crate::{Error, Result};

/// Chunks read ahead of the network on upload.
const READ_AHEAD: usize = 4;
/// Received 1 MiB buffers queued for the file writer on download.
const SINK_QUEUE: usize = 4;

/// How requests authenticate.
#[derive(Clone)]
enum Auth {
    None,
    Bearer(String),
    Basic { username: String, password: String },
}

impl Auth {
    /// The Secret keys this credential came from, for messages.
    fn keys(&self) -> &'static str {
        match self {
            Auth::None => "(no credentials given: set `token` or `username`/`password`)",
            Auth::Bearer(_) => "`token`",
            Auth::Basic { .. } => "`username`/`password`",
        }
    }
}

/// An HTTP(S) base URL objects are put under.
#[derive(Clone)]
pub struct HttpStage {
    client: reqwest::Client,
    /// The spec's endpoint plus the optional `path` prefix.
    base: Url,
    auth: Auth,
    attempts: u32,
}

impl std::fmt::Debug for HttpStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStage")
            .field("base", &self.base.as_str())
            .field("auth", &self.auth.keys())
            .finish()
    }
}

impl HttpStage {
    /// The stage the spec names: `endpoint` (an http/https URL), optional `path` prefix, and the
    /// `storage.token` or `storage.username`/`storage.password` credentials, `storage.ca.crt` for a
    /// private CA. The endpoint and every address its name resolves to are judged by the endpoint
    /// policy ([`crate::endpoint::Guard`]); redirects are not followed.
    pub async fn from_spec(
        spec: &StorageSpec,
        credentials: &Credentials,
        options: &StageOptions,
    ) -> Result<Self> {
        let endpoint = spec.endpoint.as_deref().ok_or_else(|| {
            Error::Invalid("storage.endpoint is required for http storage".into())
        })?;
        let mut base = Url::parse(endpoint)
            .map_err(|e| Error::Invalid(format!("storage.endpoint {endpoint:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::Invalid(format!(
                "storage.endpoint {endpoint:?} must be an http:// or https:// URL"
            )));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(Error::Invalid(
                "storage.endpoint must not carry credentials: put them in the storage Secret"
                    .into(),
            ));
        }
        base.set_query(None);
        base.set_fragment(None);
        if let Some(prefix) = spec.path.as_deref() {
            let joined = prefixed(prefix, "");
            push_segments(&mut base, joined.trim_end_matches('/'));
        }
        options.guard.pin_url(&base).await?;
        let mut builder = options
            .guard
            .http_client(reqwest::Client::builder())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .tcp_nodelay(true)
            .user_agent(concat!("virtrigaud-runner/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = credentials.optional(CREDENTIAL_SCOPE, "ca.crt") {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
                Error::Invalid(format!(
                    "storage Secret key ca.crt is not a PEM certificate: {e}"
                ))
            })?;
            builder = builder.add_root_certificate(ca);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Invalid(format!("http client for {base}: {e}")))?;

        let auth = if let Some(token) = credentials.optional(CREDENTIAL_SCOPE, "token") {
            Auth::Bearer(token.to_string())
        } else if let Some(username) = credentials.optional(CREDENTIAL_SCOPE, "username") {
            Auth::Basic {
                username: username.to_string(),
                password: credentials.get(CREDENTIAL_SCOPE, "password")?.to_string(),
            }
        } else {
            Auth::None
        };
        Ok(HttpStage {
            client,
            base,
            auth,
            attempts: options.attempts.max(1),
        })
    }

    fn url(&self, key: &str) -> Result<Url> {
        validate_key(key)?;
        let mut url = self.base.clone();
        push_segments(&mut url, key);
        Ok(url)
    }

    fn system(&self) -> String {
        format!("http storage {}", self.base)
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, url);
        match &self.auth {
            Auth::None => rb,
            Auth::Bearer(token) => rb.bearer_auth(token),
            Auth::Basic { username, password } => rb.basic_auth(username, Some(password)),
        }
    }

    /// Sends a request; network failures are transient.
    async fn send(&self, what: &str, rb: reqwest::RequestBuilder) -> Result<Response> {
        rb.send().await.map_err(|e| self.network_error(what, e))
    }

    fn network_error(&self, what: &str, e: reqwest::Error) -> Error {
        if e.is_builder() {
            return Error::Invalid(format!("{}: {what}: {e}", self.system()));
        }
        // connect, timeout, reset, truncated body: the server or the path may recover
        Error::transient(self.system(), format!("{what}: {}", error_chain(&e)))
    }

    /// Classifies a non-success status of `what` (e.g. `PUT ns/m/vda.qcow2`).
    fn status_error(&self, what: &str, status: StatusCode) -> Error {
        let detail = format!("{what}: HTTP {status}");
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Auth {
                system: self.system(),
                detail: format!("{detail}; check the storage Secret's {}", self.auth.keys()),
            },
            StatusCode::NOT_FOUND => Error::NotFound {
                what: format!("{} object", self.system()),
                detail,
            },
            StatusCode::INSUFFICIENT_STORAGE => {
                Error::NoSpace(format!("{}: {detail}", self.system()))
            }
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
                Error::transient(self.system(), detail)
            }
            s if s.is_server_error()
                && s != StatusCode::NOT_IMPLEMENTED
                && s != StatusCode::HTTP_VERSION_NOT_SUPPORTED =>
            {
                Error::transient(self.system(), detail)
            }
            _ => Error::Invalid(format!("{}: {detail}", self.system())),
        }
    }

    /// PUTs what `body` produces, hashed as it is read: with its `Content-Length` when known, else
    /// chunked. The size and SHA-256; `Ok(None)` when the server answers `409 Conflict` (a parent
    /// collection is missing).
    async fn put_body(
        &self,
        key: &str,
        body: &dyn Body,
        progress: &Progress,
    ) -> Result<Option<(u64, String)>> {
        let url = self.url(key)?;
        let what = format!("PUT {key}");
        progress.set_done(0);
        // a producing thread hashes ahead of the network by at most READ_AHEAD chunks
        let pool = BufferPool::new(READ_AHEAD + 1, CHUNK);
        let (chunks, reader) = body.open(pool, progress.clone()).into_parts();
        let mut request = self.request(Method::PUT, url);
        if let Some(len) = body.exact_len() {
            request = request.header(CONTENT_LENGTH, len);
        }
        let sent = self
            .send(&what, request.body(reqwest::Body::wrap_stream(chunks)))
            .await;
        let reading = || format!("reading {}", body.describe());
        let read = reader
            .await
            .map_err(|e| Error::io(reading(), std::io::Error::other(e)))?
            .map_err(|e| Error::io(reading(), e))
            .map(Tally::finish);
        let response = sent?;
        let status = response.status();
        if status == StatusCode::CONFLICT {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.status_error(&what, status));
        }
        let (read_size, sha256) = read?;
        if let Some(len) = body.exact_len().filter(|&len| len != read_size) {
            return Err(Error::Invalid(format!(
                "{} changed size while it was uploaded ({len} -> {read_size} bytes)",
                body.describe()
            )));
        }
        Ok(Some((read_size, sha256)))
    }

    /// PUTs a small in-memory body.
    async fn put_small(&self, key: &str, body: Bytes) -> Result<Option<()>> {
        let what = format!("PUT {key}");
        let response = self
            .send(&what, self.request(Method::PUT, self.url(key)?).body(body))
            .await?;
        match response.status() {
            StatusCode::CONFLICT => Ok(None),
            s if s.is_success() => Ok(Some(())),
            s => Err(self.status_error(&what, s)),
        }
    }

    /// Creates the collections above `key` (WebDAV `MKCOL`); existing ones are fine.
    async fn make_collections(&self, key: &str) -> Result<()> {
        let segments: Vec<&str> = key.split('/').collect();
        for depth in 1..segments.len() {
            let dir = segments[..depth].join("/");
            let mut url = self.url(&dir)?;
            url.set_path(&format!("{}/", url.path()));
            let what = format!("MKCOL {dir}/");
            let mkcol = Method::from_bytes(b"MKCOL").expect("MKCOL is a valid method");
            let response = self.send(&what, self.request(mkcol, url)).await?;
            let status = response.status();
            // 405: already exists
            if !(status.is_success() || status == StatusCode::METHOD_NOT_ALLOWED) {
                return Err(self.status_error(&what, status));
            }
        }
        Ok(())
    }

    /// GETs the object into `writer`, continuing after the bytes it already holds.
    async fn get_into(&self, object: &StagedObject, writer: &mut FileSink) -> Result<()> {
        let url = self.url(&object.key)?;
        let what = format!("GET {}", object.key);
        if writer.bytes() > object.size {
            writer.truncate().await?;
        }
        let offset = writer.bytes();
        if offset == object.size && offset > 0 {
            return Ok(());
        }
        let mut rb = self.request(Method::GET, url);
        if offset > 0 {
            rb = rb.header(RANGE, format!("bytes={offset}-"));
        }
        let mut response = self.send(&what, rb).await?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let start = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(range_start);
                if start != Some(offset) {
                    writer.truncate().await?;
                    return Err(Error::transient(
                        self.system(),
                        format!("{what}: asked for bytes {offset}-, got range {start:?}"),
                    ));
                }
                tracing::info!("{what}: continued at byte {offset} of {}", object.size);
            }
            StatusCode::OK => {
                if offset > 0 {
                    // the server ignores Range: start over
                    writer.truncate().await?;
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                writer.truncate().await?;
                return Err(Error::transient(
                    self.system(),
                    format!("{what}: range {offset}- not satisfiable; restarting"),
                ));
            }
            s => return Err(self.status_error(&what, s)),
        }
        // hyper's chunks are small: gather them into pooled 1 MiB buffers for the file writer
        let pool = BufferPool::new(SINK_QUEUE + 2, CHUNK);
        let mut pending = pool.take().await;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.network_error(&what, e))?
        {
            if pending.len() + chunk.len() > CHUNK && !pending.is_empty() {
                let full = std::mem::replace(&mut pending, pool.take().await);
                writer.write(full.freeze()).await?;
            }
            if chunk.len() >= CHUNK {
                writer.write(chunk).await?;
            } else {
                pending.extend_from_slice(&chunk);
            }
        }
        if !pending.is_empty() {
            writer.write(pending.freeze()).await?;
        }
        Ok(())
    }

    async fn delete_one(&self, key: &str) -> Result<()> {
        let what = format!("DELETE {key}");
        let response = self
            .send(&what, self.request(Method::DELETE, self.url(key)?))
            .await?;
        match response.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND || s == StatusCode::GONE => Ok(()),
            s => Err(self.status_error(&what, s)),
        }
    }
}

#[async_trait]
impl Stage for HttpStage {
    fn describe(&self) -> String {
        self.system()
    }

    async fn check(&self) -> Result<()> {
        let key = ".virtrigaud-check";
        let put = with_retries(
            &format!("{}: PUT {key}", self.system()),
            self.attempts,
            || self.put_small(key, Bytes::from_static(b"virtrigaud write check\n")),
        )
        .await?;
        if put.is_none() {
            return Err(Error::NotFound {
                what: self.system(),
                detail: format!("PUT {key}: HTTP 409 Conflict (the base collection is missing)"),
            });
        }
        with_retries(
            &format!("{}: DELETE {key}", self.system()),
            self.attempts,
            || self.delete_one(key),
        )
        .await
    }

    async fn stat(&self, key: &str) -> Result<Option<StagedObject>> {
        let url = self.url(key)?;
        let head = with_retries(
            &format!("{}: HEAD {key}", self.system()),
            self.attempts,
            || {
                let url = url.clone();
                async move {
                    let what = format!("HEAD {key}");
                    let response = self.send(&what, self.request(Method::HEAD, url)).await?;
                    match response.status() {
                        StatusCode::NOT_FOUND => Ok(None),
                        // the header, not `content_length()`: a HEAD answer's body is empty
                        s if s.is_success() => response
                            .headers()
                            .get(CONTENT_LENGTH)
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .map(Some)
                            .ok_or_else(|| {
                                Error::Invalid(format!(
                                    "{}: {what}: no Content-Length in the answer",
                                    self.system()
                                ))
                            }),
                        s => Err(self.status_error(&what, s)),
                    }
                }
            },
        )
        .await?;
        let Some(size) = head else { return Ok(None) };
        let side = sidecar_key(key);
        let side_url = self.url(&side)?;
        let text = with_retries(
            &format!("{}: GET {side}", self.system()),
            self.attempts,
            || {
                let url = side_url.clone();
                let side = side.clone();
                async move {
                    let what = format!("GET {side}");
                    let response = self.send(&what, self.request(Method::GET, url)).await?;
                    match response.status() {
                        StatusCode::NOT_FOUND => Ok(None),
                        s if s.is_success() => response
                            .text()
                            .await
                            .map(Some)
                            .map_err(|e| self.network_error(&what, e)),
                        s => Err(self.status_error(&what, s)),
                    }
                }
            },
        )
        .await?;
        Ok(text
            .as_deref()
            .and_then(parse_sidecar)
            .map(|sha256| StagedObject {
                key: key.to_string(),
                url: url.to_string(),
                size,
                sha256,
            }))
    }

    async fn upload_body(
        &self,
        key: &str,
        body: &dyn Body,
        progress: &Progress,
    ) -> Result<StagedObject> {
        let url = self.url(key)?;
        let label = format!("{}: PUT {key}", self.system());
        let put = || with_retries(&label, self.attempts, || self.put_body(key, body, progress));
        let (size, sha256) = match put().await? {
            Some(done) => done,
            None => {
                self.make_collections(key).await?;
                put()
                    .await?
                    .ok_or_else(|| self.status_error(&format!("PUT {key}"), StatusCode::CONFLICT))?
            }
        };
        let side = sidecar_key(key);
        let body = Bytes::from(sidecar_body(&sha256, key));
        with_retries(
            &format!("{}: PUT {side}", self.system()),
            self.attempts,
            || self.put_small(&side, body.clone()),
        )
        .await?
        .ok_or_else(|| self.status_error(&format!("PUT {side}"), StatusCode::CONFLICT))?;
        Ok(StagedObject {
            key: key.to_string(),
            url: url.to_string(),
            size,
            sha256,
        })
    }

    async fn download(
        &self,
        object: &StagedObject,
        dest: &Path,
        progress: &Progress,
    ) -> Result<()> {
        let partial = partial_path(dest);
        let writer = tokio::sync::Mutex::new(
            FileSink::resume(&partial, SINK_QUEUE, progress.clone()).await?,
        );
        with_retries(
            &format!("{}: GET {}", self.system(), object.key),
            self.attempts,
            || async { self.get_into(object, &mut *writer.lock().await).await },
        )
        .await?;
        let tally = writer.into_inner().finish().await?;
        super::finish_download(tally, object, &partial, dest).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        for k in [key.to_string(), sidecar_key(key)] {
            with_retries(
                &format!("{}: DELETE {k}", self.system()),
                self.attempts,
                || self.delete_one(&k),
            )
            .await?;
        }
        Ok(())
    }
}

/// Appends the `/`-separated segments of `path` to `url`, percent-encoding each.
fn push_segments(url: &mut Url, path: &str) {
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty();
        segments.extend(path.split('/').filter(|s| !s.is_empty()));
    }
}

/// The first byte of a `Content-Range: bytes <start>-<end>/<size>` header.
fn range_start(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// An error and its sources on one line (reqwest's Display omits the cause).
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
    fn builds_encoded_urls_under_the_prefix() {
        let mut base = Url::parse("https://files.example.com/vm-exports").unwrap();
        push_segments(&mut base, "team a/");
        push_segments(&mut base, "ns/m/Hard disk 1.vmdk");
        assert_eq!(
            base.as_str(),
            "https://files.example.com/vm-exports/team%20a/ns/m/Hard%20disk%201.vmdk"
        );
        let mut root = Url::parse("http://127.0.0.1:8088/").unwrap();
        push_segments(&mut root, "a/b");
        assert_eq!(root.as_str(), "http://127.0.0.1:8088/a/b");
    }

    #[test]
    fn parses_content_range() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
    }
}
