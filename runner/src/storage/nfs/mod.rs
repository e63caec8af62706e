//! NFS staging, spoken by the runner itself: NFSv3 over TCP in userspace ([`rpc`]), so the runner
//! pod mounts nothing (Pod Security `restricted` forbids inline `nfs` volumes, and a node may have
//! no NFS client at all) and needs no privileges.
//!
//! - `endpoint` is the server: `host` (its portmapper on 111 tells the MOUNT and NFS ports, as with
//!   the Linux kernel server or nfs-ganesha) or `host:port` (MOUNT and NFS both on that port, as
//!   userspace servers serve them). The server's addresses go through the endpoint guard.
//! - `path` is the export; an object is the file at its key under it, directories are made with
//!   MKDIR as needed.
//! - Calls carry AUTH_UNIX with the process's uid and gid (65532 in the runner pod): the export
//!   must let that uid create files (or squash it to one that may) and accept non-privileged
//!   source ports (Linux: the `insecure` export option).
//! - Upload: `.<name>.tmp-<pid>` is created fresh next to the object and written with UNSTABLE
//!   WRITEs, several in flight on their own connections, all-zero chunks skipped (holes stay
//!   holes; the size is set at the end); a COMMIT makes it stable, its write verifier checked
//!   against every WRITE's (a restarted server means writing again); RENAME puts it in place, so a
//!   visible object is always complete. The sidecar follows the same way (FILE_SYNC).
//! - Download: READs, several in flight, written in order into the partial file, which an earlier
//!   try may have left behind (it is continued).
//!
//! With the feature `test-doubles`, `StageOptions::nfs_root` set makes the stage a local directory
//! standing for the export (`dir`): the in-process tests' stand-in for a server.

#[cfg(feature = "test-doubles")]
mod dir;
mod rpc;

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use crd::StorageSpec;
use futures::StreamExt;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use nfs3_client::RpcError;
use nfs3_client::nfs3_types::mount::mountstat3;
use nfs3_client::nfs3_types::nfs3::{fattr3, nfs_fh3, nfsstat3, writeverf3};

use self::rpc::{Conn, Fail, Failure, Identity, Session, Target, Written};
use super::{
    Stage, StageOptions, StagedObject, parse_sidecar, partial_path, sidecar_body, sidecar_key,
    validate_key,
};
use crate::error::with_retries;
use crate::progress::Progress;
use crate::stream::{Body, BufferPool, FileSink};
use crate::{Error, Result};

/// READs or WRITEs in flight per transfer (each on its own connection).
const DEPTH: usize = 4;
/// Chunks the file reader may be ahead of the WRITEs.
const READ_AHEAD: usize = 2;
/// Received chunks queued for the local file writer on download.
const SINK_QUEUE: usize = 4;
/// The most of a sidecar that is read.
const SIDECAR_LIMIT: u32 = 4096;

/// An NFS export, reached over NFSv3 (or a local directory standing for it).
#[derive(Clone, Debug)]
pub struct NfsStage {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Client(Arc<Client>),
    #[cfg(feature = "test-doubles")]
    Dir(dir::DirStage),
}

/// The NFSv3 client of one export.
struct Client {
    target: Target,
    /// The endpoint as written.
    server: String,
    /// `nfs://server/export`, for URLs.
    base_url: String,
    identity: Identity,
    attempts: u32,
    /// The mounted export; dropped after a failure that may have been the server's restart.
    session: Mutex<Option<Arc<Session>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("export", &self.target.export)
            .field("addrs", &self.target.addrs)
            .field("port", &self.target.port)
            .field("uid", &self.identity.uid)
            .finish_non_exhaustive()
    }
}

impl NfsStage {
    /// The export the spec names: `endpoint` = server (`host` or `host:port`), `path` = export.
    /// The server's name is resolved and judged here ([`StageOptions::guard`]); nothing is
    /// connected to until the first operation. With [`StageOptions::nfs_root`] set, the directory
    /// there stands for the export.
    pub async fn from_spec(spec: &StorageSpec, options: &StageOptions) -> Result<Self> {
        let server = spec.endpoint.as_deref().unwrap_or_default();
        let export = spec.path.as_deref().unwrap_or("/");
        let base_url = format!("nfs://{server}/{}", export.trim_matches('/'));
        #[cfg(feature = "test-doubles")]
        if !options.nfs_root.as_os_str().is_empty() {
            return Ok(NfsStage::new(&options.nfs_root, &base_url));
        }
        if server.is_empty() {
            return Err(Error::Invalid(
                "storage.endpoint (the NFS server) is required for nfs storage".into(),
            ));
        }
        if !export.starts_with('/') || export.split('/').any(|s| s == "..") || export.contains('\0')
        {
            return Err(Error::Invalid(format!(
                "storage.path {export:?} must be the absolute path of the export, e.g. /mnt/migrations"
            )));
        }
        let parsed = endpoint_policy::parse_nfs_server(server)
            .map_err(|why| Error::Invalid(format!("storage.endpoint: {why}")))?;
        let pinned = options.guard.pin(&parsed.endpoint, server).await?;
        let export = match export.trim_end_matches('/') {
            "" => "/".to_string(),
            trimmed => trimmed.to_string(),
        };
        Ok(NfsStage {
            backend: Backend::Client(Arc::new(Client {
                target: Target {
                    addrs: pinned.addrs().iter().map(|a| a.ip()).collect(),
                    port: parsed.port,
                    export,
                },
                server: server.to_string(),
                base_url: base_url.trim_end_matches('/').to_string(),
                identity: Identity::of_process(),
                attempts: options.attempts.max(1),
                session: Mutex::new(None),
            })),
        })
    }

    /// A stage on the local directory `root` standing for the export, described as `base_url`
    /// (`nfs://server/export`): the tests' stand-in for a server (feature `test-doubles`).
    #[cfg(feature = "test-doubles")]
    pub fn new(root: &Path, base_url: &str) -> Self {
        NfsStage {
            backend: Backend::Dir(dir::DirStage::new(root, base_url)),
        }
    }
}

#[async_trait]
impl Stage for NfsStage {
    fn describe(&self) -> String {
        match &self.backend {
            Backend::Client(c) => c.system(),
            #[cfg(feature = "test-doubles")]
            Backend::Dir(d) => d.describe(),
        }
    }

    async fn check(&self) -> Result<()> {
        match &self.backend {
            Backend::Client(c) => {
                let label = format!("{}: write check", c.system());
                with_retries(&label, c.attempts, || c.check_once()).await
            }
            #[cfg(feature = "test-doubles")]
            Backend::Dir(d) => d.check().await,
        }
    }

    async fn stat(&self, key: &str) -> Result<Option<StagedObject>> {
        match &self.backend {
            Backend::Client(c) => {
                validate_key(key)?;
                let label = format!("{}: stat {key}", c.system());
                with_retries(&label, c.attempts, || c.stat_once(key)).await
            }
            #[cfg(feature = "test-doubles")]
            Backend::Dir(d) => d.stat(key).await,
        }
    }

    async fn upload_body(
        &self,
        key: &str,
        body: &dyn Body,
        progress: &Progress,
    ) -> Result<StagedObject> {
        match &self.backend {
            Backend::Client(c) => c.upload_body(key, body, progress).await,
            #[cfg(feature = "test-doubles")]
            Backend::Dir(d) => d.upload_body(key, body, progress).await,
        }
    }

    async fn download(
        &self,
        object: &StagedObject,
        dest: &Path,
        progress: &Progress,
    ) -> Result<()> {
        match &self.backend {
            Backend::Client(c) => c.download(object, dest, progress).await,
            #[cfg(feature = "test-doubles")]
            Backend::Dir(d) => d.download(object, dest, progress).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match &self.backend {
            Backend::Client(c) => {
                validate_key(key)?;
                let label = format!("{}: delete {key}", c.system());
                with_retries(&label, c.attempts, || c.delete_once(key)).await
            }
            #[cfg(feature = "test-doubles")]
            Backend::Dir(d) => d.delete(key).await,
        }
    }
}

/// The outcome of one READ or WRITE task.
struct Done<T> {
    offset: u64,
    len: u64,
    conn: Option<Conn>,
    result: std::result::Result<T, Fail>,
}

impl Client {
    /// `nfs export /mnt/migrations on nfs.example.com`: names the server and the export.
    fn system(&self) -> String {
        format!("nfs export {} on {}", self.target.export, self.server)
    }

    fn url(&self, key: &str) -> String {
        format!("{}/{key}", self.base_url)
    }

    /// Classifies a failure. One that another try may get past also drops the session, so the
    /// next try mounts again (the server may have restarted, on other ports, with other handles).
    fn error(&self, failure: Failure) -> Error {
        let Failure { what, fail } = failure;
        let system = self.system();
        let (uid, gid) = (self.identity.uid, self.identity.gid);
        let detail = format!("{what}: {fail}");
        let error = match &fail {
            Fail::Connect(..) | Fail::Timeout(_) | Fail::Protocol(_) => {
                Error::transient(system, detail)
            }
            Fail::Rpc(RpcError::Auth(_)) => Error::Auth {
                system,
                detail: format!("{detail}: the server refused AUTH_UNIX uid {uid} gid {gid}"),
            },
            Fail::Rpc(
                RpcError::ProgUnavail
                | RpcError::ProgMismatch { .. }
                | RpcError::RpcMismatch { .. },
            ) => Error::Invalid(format!(
                "{system}: {detail}: the server does not serve that RPC program version there \
                 (this client speaks NFSv3 and MOUNT v3 over TCP)"
            )),
            Fail::Rpc(
                RpcError::ProcUnavail | RpcError::GarbageArgs | RpcError::FragmentedReply,
            ) => Error::Invalid(format!("{system}: {detail}")),
            // I/O (refused, reset, closed), a garbled answer, the server's own error
            Fail::Rpc(_) => Error::transient(system, detail),
            Fail::Unregistered(..) => Error::Invalid(format!(
                "{system}: {detail}: an NFSv4-only server? This client speaks NFSv3: enable v3 on \
                 the server, or write host:port for a server that serves MOUNT and NFS on one port"
            )),
            Fail::Flavors(_) => Error::Auth {
                system,
                detail: format!("{detail}: the export must allow sec=sys"),
            },
            Fail::Mount(_, Some(exports)) if !exports.contains(&self.target.export) => {
                Error::NotFound {
                    what: format!(
                        "export {} on nfs server {}",
                        self.target.export, self.server
                    ),
                    detail,
                }
            }
            Fail::Mount(stat, _) => match stat {
                mountstat3::MNT3ERR_NOENT | mountstat3::MNT3ERR_NOTDIR => Error::NotFound {
                    what: format!(
                        "export {} on nfs server {}",
                        self.target.export, self.server
                    ),
                    detail,
                },
                mountstat3::MNT3ERR_ACCES | mountstat3::MNT3ERR_PERM => Error::Auth {
                    system,
                    detail: format!(
                        "{detail}: the server does not export {} to this client (uid {uid}, gid {gid})",
                        self.target.export
                    ),
                },
                mountstat3::MNT3ERR_IO | mountstat3::MNT3ERR_SERVERFAULT => {
                    Error::transient(system, detail)
                }
                _ => Error::Invalid(format!("{system}: {detail}")),
            },
            Fail::Status(stat) => match stat {
                nfsstat3::NFS3ERR_NOSPC | nfsstat3::NFS3ERR_DQUOT => {
                    Error::NoSpace(format!("{system}: {detail}"))
                }
                nfsstat3::NFS3ERR_ROFS => Error::Auth {
                    system,
                    detail: format!(
                        "{detail}: the export is read-only to this client (uid {uid} gid {gid})"
                    ),
                },
                nfsstat3::NFS3ERR_ACCES | nfsstat3::NFS3ERR_PERM => Error::Auth {
                    system,
                    detail: format!(
                        "{detail}: permission denied to uid {uid} gid {gid} (the export must be \
                             writable by the runner's uid, or squash it to one that may write)"
                    ),
                },
                nfsstat3::NFS3ERR_NOENT => Error::NotFound {
                    what: format!("{system}: object"),
                    detail,
                },
                nfsstat3::NFS3ERR_IO
                | nfsstat3::NFS3ERR_SERVERFAULT
                | nfsstat3::NFS3ERR_JUKEBOX
                | nfsstat3::NFS3ERR_STALE
                | nfsstat3::NFS3ERR_BADHANDLE
                | nfsstat3::NFS3ERR_EXIST => Error::transient(system, detail),
                _ => Error::Invalid(format!("{system}: {detail}")),
            },
        };
        if error.is_retryable() {
            self.forget();
        }
        error
    }

    /// The mounted export, mounting it when there is none.
    async fn session(&self) -> Result<Arc<Session>> {
        let cached = self.session.lock().expect("session slot").clone();
        if let Some(session) = cached {
            return Ok(session);
        }
        let session = Arc::new(
            Session::mount(&self.target, &self.identity)
                .await
                .map_err(|f| self.error(f))?,
        );
        tracing::debug!(
            "mounted {} (NFS at {}, {} KiB writes, {} KiB reads)",
            self.system(),
            session.address(),
            session.wsize / 1024,
            session.rsize / 1024
        );
        *self.session.lock().expect("session slot") = Some(session.clone());
        Ok(session)
    }

    fn forget(&self) {
        self.session.lock().expect("session slot").take();
    }

    /// The directory handles from the root down through `dirs` (`[root, dirs[0], ...]`), each
    /// made when missing with `create`; `None` when one is missing without it.
    async fn walk(&self, s: &Session, dirs: &[&str], create: bool) -> Result<Option<Vec<nfs_fh3>>> {
        let mut handles = vec![s.root.clone()];
        for (i, name) in dirs.iter().enumerate() {
            let path = dirs[..=i].join("/");
            let parent = handles.last().expect("the root").clone();
            let fh = match s.lookup(&parent, name).await {
                Ok((fh, _)) => fh,
                Err(Fail::Status(nfsstat3::NFS3ERR_NOENT)) if create => {
                    match s.mkdir(&parent, name).await {
                        Ok(Some(fh)) => fh,
                        // made without a handle in the answer, or by someone else meanwhile
                        Ok(None) | Err(Fail::Status(nfsstat3::NFS3ERR_EXIST)) => {
                            s.lookup(&parent, name)
                                .await
                                .map_err(|f| self.error(f.at(format!("LOOKUP {path}"))))?
                                .0
                        }
                        Err(f) => return Err(self.error(f.at(format!("MKDIR {path}")))),
                    }
                }
                Err(Fail::Status(nfsstat3::NFS3ERR_NOENT)) => return Ok(None),
                Err(f) => return Err(self.error(f.at(format!("LOOKUP {path}")))),
            };
            handles.push(fh);
        }
        Ok(Some(handles))
    }

    /// The handle and attributes of the file at `key`, if it exists.
    async fn find(&self, s: &Session, key: &str) -> Result<Option<(nfs_fh3, fattr3)>> {
        let (dirs, name) = split(key);
        let Some(handles) = self.walk(s, &dirs, false).await? else {
            return Ok(None);
        };
        let dir = handles.last().expect("the root");
        let (fh, attr) = match s.lookup(dir, name).await {
            Ok(found) => found,
            Err(Fail::Status(nfsstat3::NFS3ERR_NOENT)) => return Ok(None),
            Err(f) => return Err(self.error(f.at(format!("LOOKUP {key}")))),
        };
        let attr = match attr {
            Some(a) => a,
            None => s
                .getattr(&fh)
                .await
                .map_err(|f| self.error(f.at(format!("GETATTR {key}"))))?,
        };
        Ok(Some((fh, attr)))
    }

    /// Creates `name` in `dir` anew (an earlier one, e.g. a failed try's, is removed first).
    async fn create_fresh(
        &self,
        s: &Session,
        dir: &nfs_fh3,
        name: &str,
        key: &str,
    ) -> Result<nfs_fh3> {
        s.remove(dir, name)
            .await
            .map_err(|f| self.error(f.at(format!("REMOVE {key}"))))?;
        match s.create(dir, name).await {
            Ok(Some(fh)) => Ok(fh),
            Ok(None) => Ok(s
                .lookup(dir, name)
                .await
                .map_err(|f| self.error(f.at(format!("LOOKUP {key}"))))?
                .0),
            Err(f) => Err(self.error(f.at(format!("CREATE {key}")))),
        }
    }

    /// Writes a small file at `key` atomically: a temporary name, FILE_SYNC, RENAME.
    async fn put_small(&self, s: &Session, dir: &nfs_fh3, key: &str, body: &[u8]) -> Result<()> {
        let (dirs, name) = split(key);
        let tmp = temp_name(name);
        let tmp_key = join(&dirs, &tmp);
        let fh = self.create_fresh(s, dir, &tmp, &tmp_key).await?;
        let put = async {
            s.write_sync(&fh, body)
                .await
                .map_err(|f| self.error(f.at(format!("WRITE {tmp_key}"))))?;
            s.rename(dir, &tmp, name)
                .await
                .map_err(|f| self.error(f.at(format!("RENAME {tmp_key} to {key}"))))
        };
        let result = put.await;
        if result.is_err() {
            let _ = s.remove(dir, &tmp).await;
        }
        result
    }

    async fn check_once(&self) -> Result<()> {
        let s = self.session().await?;
        let export = &self.target.export;
        let root = s
            .getattr(&s.root)
            .await
            .map_err(|f| self.error(f.at(format!("GETATTR {export}"))))?;
        if !rpc::is_dir(&root) {
            return Err(Error::NotFound {
                what: self.system(),
                detail: format!("{export} is not a directory"),
            });
        }
        // one name per check: checks of stages in one process may run side by side
        static CHECKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = format!(".virtrigaud-check-{}-{n}", std::process::id());
        let fh = self.create_fresh(&s, &s.root, &probe, &probe).await?;
        let written = s
            .write_sync(&fh, b"virtrigaud write check\n")
            .await
            .map_err(|f| self.error(f.at(format!("WRITE {probe}"))));
        let removed = s
            .remove(&s.root, &probe)
            .await
            .map_err(|f| self.error(f.at(format!("REMOVE {probe}"))));
        written.and(removed).map(drop)
    }

    async fn stat_once(&self, key: &str) -> Result<Option<StagedObject>> {
        let s = self.session().await?;
        let Some((_, attr)) = self.find(&s, key).await? else {
            return Ok(None);
        };
        let side = sidecar_key(key);
        let Some((fh, _)) = self.find(&s, &side).await? else {
            return Ok(None);
        };
        let text = s
            .read_small(&fh, SIDECAR_LIMIT)
            .await
            .map_err(|f| self.error(f.at(format!("READ {side}"))))?;
        Ok(
            parse_sidecar(&String::from_utf8_lossy(&text)).map(|sha256| StagedObject {
                key: key.to_string(),
                url: self.url(key),
                size: attr.size,
                sha256,
            }),
        )
    }

    async fn upload_body(
        &self,
        key: &str,
        body: &dyn Body,
        progress: &Progress,
    ) -> Result<StagedObject> {
        validate_key(key)?;
        let label = format!("{}: upload {key}", self.system());
        let (size, sha256) = with_retries(&label, self.attempts, || {
            self.upload_once(key, body, progress)
        })
        .await?;
        let side = sidecar_key(key);
        let body = sidecar_body(&sha256, key);
        let label = format!("{}: upload {side}", self.system());
        with_retries(&label, self.attempts, || async {
            let s = self.session().await?;
            let (dirs, _) = split(&side);
            let handles = self.walk(&s, &dirs, true).await?.expect("created");
            self.put_small(
                &s,
                handles.last().expect("the root"),
                &side,
                body.as_bytes(),
            )
            .await
        })
        .await?;
        Ok(StagedObject {
            key: key.to_string(),
            url: self.url(key),
            size,
            sha256,
        })
    }

    /// One try of an upload: the file under a temporary name, renamed into place. The SHA-256.
    async fn upload_once(
        &self,
        key: &str,
        body: &dyn Body,
        progress: &Progress,
    ) -> Result<(u64, String)> {
        let s = self.session().await?;
        let (dirs, name) = split(key);
        let handles = self.walk(&s, &dirs, true).await?.expect("created");
        let dir = handles.last().expect("the root");
        let tmp = temp_name(name);
        let tmp_key = join(&dirs, &tmp);
        let fh = self.create_fresh(&s, dir, &tmp, &tmp_key).await?;
        let placed = async {
            let written = self.write_file(&s, &fh, &tmp_key, body, progress).await?;
            s.rename(dir, &tmp, name)
                .await
                .map_err(|f| self.error(f.at(format!("RENAME {tmp_key} to {key}"))))?;
            Ok(written)
        };
        let result = placed.await;
        if result.is_err() {
            let _ = s.remove(dir, &tmp).await;
        }
        result
    }

    /// Streams what `body` produces into the open file `fh` (`key` in messages): WRITEs in flight
    /// on up to [`DEPTH`] connections, all-zero chunks left as holes, the size set, COMMIT. The
    /// size and SHA-256 of what was read.
    async fn write_file(
        &self,
        s: &Arc<Session>,
        fh: &nfs_fh3,
        key: &str,
        body: &dyn Body,
        progress: &Progress,
    ) -> Result<(u64, String)> {
        progress.set_done(0);
        let pool = BufferPool::new(DEPTH + READ_AHEAD, s.wsize as usize);
        let mut reader = body.open(pool, progress.clone());
        let read_error = |e| Error::io(format!("reading {}", body.describe()), e);
        let mut flight = WriteFlight::default();
        let mut offset = 0u64;
        let mut data_end = 0u64;
        while let Some(chunk) = reader.next().await {
            let data: Bytes = chunk.map_err(read_error)?;
            let len = data.len() as u64;
            if !is_zero(&data) {
                if flight.tasks.len() >= DEPTH {
                    self.land(&mut flight, key).await?;
                }
                let conn = match flight.conns.pop() {
                    Some(conn) => conn,
                    None => s
                        .take()
                        .await
                        .map_err(|f| self.error(f.at(write_at(key, offset))))?,
                };
                flight
                    .tasks
                    .push(spawn_write(conn, fh.clone(), offset, data));
                data_end = offset + len;
            }
            offset += len;
        }
        while !flight.tasks.is_empty() {
            self.land(&mut flight, key).await?;
        }
        let (read, sha256) = reader.finish().await.map_err(read_error)?;
        if let Some(size) = body.exact_len().filter(|&size| size != read) {
            return Err(Error::Invalid(format!(
                "{} changed size while it was uploaded ({size} -> {read} bytes)",
                body.describe()
            )));
        }
        if data_end < read {
            // a trailing hole: only the size makes it part of the file
            s.truncate(fh, read)
                .await
                .map_err(|f| self.error(f.at(format!("SETATTR {key} size {read}"))))?;
        }
        if let Some(verf) = flight.verf
            && !flight.stable
        {
            let committed = s
                .commit(fh)
                .await
                .map_err(|f| self.error(f.at(format!("COMMIT {key}"))))?;
            if committed != verf {
                return Err(self.error(
                    Fail::Protocol(
                        "the server's write verifier changed before COMMIT (it restarted and may \
                         have lost unstable writes)"
                            .into(),
                    )
                    .at(format!("COMMIT {key}")),
                ));
            }
        }
        for conn in flight.conns {
            s.give_back(conn);
        }
        Ok((read, sha256))
    }

    /// Waits for the next WRITE of `flight` to finish.
    async fn land(&self, flight: &mut WriteFlight, key: &str) -> Result<()> {
        let done = flight
            .tasks
            .next()
            .await
            .expect("a WRITE in flight")
            .map_err(|e| Error::io(format!("WRITE {key}"), std::io::Error::other(e)))?;
        flight.conns.extend(done.conn);
        let written = done
            .result
            .map_err(|f| self.error(f.at(write_at(key, done.offset))))?;
        match flight.verf {
            None => flight.verf = Some(written.verf),
            Some(verf) if verf != written.verf => {
                return Err(self.error(
                    Fail::Protocol(
                        "the server's write verifier changed (it restarted and may have lost \
                         unstable writes)"
                            .into(),
                    )
                    .at(write_at(key, done.offset)),
                ));
            }
            Some(_) => {}
        }
        flight.stable &= written.stable;
        Ok(())
    }

    async fn download(
        &self,
        object: &StagedObject,
        dest: &Path,
        progress: &Progress,
    ) -> Result<()> {
        validate_key(&object.key)?;
        let partial = partial_path(dest);
        let sink = tokio::sync::Mutex::new(
            FileSink::resume(&partial, SINK_QUEUE, progress.clone()).await?,
        );
        let label = format!("{}: download {}", self.system(), object.key);
        with_retries(&label, self.attempts, || async {
            self.read_into(object, &mut *sink.lock().await).await
        })
        .await?;
        let tally = sink.into_inner().finish().await?;
        super::finish_download(tally, object, &partial, dest).await
    }

    /// One try of a download: the file's bytes after those `sink` already holds, READs in flight
    /// on up to [`DEPTH`] connections, written in order.
    async fn read_into(&self, object: &StagedObject, sink: &mut FileSink) -> Result<()> {
        let s = self.session().await?;
        let key = &object.key;
        let Some((fh, attr)) = self.find(&s, key).await? else {
            return Err(Error::NotFound {
                what: format!("staged object {}", object.url),
                detail: self.system(),
            });
        };
        // the file as it is now; a size other than the recorded one fails the checksum
        let size = attr.size;
        if sink.bytes() > size {
            sink.truncate().await?;
        }
        let mut next = sink.bytes();
        let mut tasks = FuturesOrdered::new();
        let mut conns: Vec<Conn> = Vec::new();
        loop {
            while tasks.len() < DEPTH && next < size {
                let len = (size - next).min(u64::from(s.rsize));
                let conn = match conns.pop() {
                    Some(conn) => conn,
                    None => s
                        .take()
                        .await
                        .map_err(|f| self.error(f.at(read_at(key, next))))?,
                };
                tasks.push_back(spawn_read(conn, fh.clone(), next, len));
                next += len;
            }
            let Some(done) = tasks.next().await else {
                break;
            };
            let done =
                done.map_err(|e| Error::io(format!("READ {key}"), std::io::Error::other(e)))?;
            conns.extend(done.conn);
            let data = done
                .result
                .map_err(|f| self.error(f.at(read_at(key, done.offset))))?;
            let short = (data.len() as u64) < done.len;
            sink.write(Bytes::from(data)).await?;
            if short {
                // the file ended early (it shrank meanwhile): the checksum says the rest
                break;
            }
        }
        for conn in conns {
            s.give_back(conn);
        }
        Ok(())
    }

    async fn delete_once(&self, key: &str) -> Result<()> {
        let s = self.session().await?;
        let (dirs, name) = split(key);
        let Some(handles) = self.walk(&s, &dirs, false).await? else {
            return Ok(());
        };
        let dir = handles.last().expect("the root");
        let side = sidecar_key(key);
        for (n, k) in [(name.to_string(), key), (split(&side).1.to_string(), &side)] {
            s.remove(dir, &n)
                .await
                .map_err(|f| self.error(f.at(format!("REMOVE {k}"))))?;
        }
        // drop the now empty `<namespace>/<migration>` directories; a non-empty one stays
        for i in (0..dirs.len()).rev() {
            if s.rmdir(&handles[i], dirs[i]).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// The WRITEs of one upload in flight, the connections between them, and what they promised.
struct WriteFlight {
    tasks: FuturesUnordered<rpc::Task<Done<Written>>>,
    conns: Vec<Conn>,
    verf: Option<writeverf3>,
    stable: bool,
}

impl Default for WriteFlight {
    fn default() -> Self {
        WriteFlight {
            tasks: FuturesUnordered::new(),
            conns: Vec::new(),
            verf: None,
            stable: true,
        }
    }
}

fn spawn_write(conn: Conn, fh: nfs_fh3, offset: u64, data: Bytes) -> rpc::Task<Done<Written>> {
    rpc::Task::spawn(async move {
        let mut conn = conn;
        let len = data.len() as u64;
        let result = rpc::write_all(
            &mut conn,
            &fh,
            offset,
            &data,
            nfs3_client::nfs3_types::nfs3::stable_how::UNSTABLE,
        )
        .await;
        let conn = keep(conn, &result);
        Done {
            offset,
            len,
            conn,
            result,
        }
    })
}

fn spawn_read(conn: Conn, fh: nfs_fh3, offset: u64, len: u64) -> rpc::Task<Done<Vec<u8>>> {
    rpc::Task::spawn(async move {
        let mut conn = conn;
        let result = rpc::read_exact(&mut conn, &fh, offset, len as u32).await;
        let conn = keep(conn, &result);
        Done {
            offset,
            len,
            conn,
            result,
        }
    })
}

/// The connection, unless the call's failure broke it.
fn keep<T>(conn: Conn, result: &std::result::Result<T, Fail>) -> Option<Conn> {
    match result {
        Err(f) if f.breaks_connection() => None,
        _ => Some(conn),
    }
}

fn write_at(key: &str, offset: u64) -> String {
    format!("WRITE {key} at offset {offset}")
}

fn read_at(key: &str, offset: u64) -> String {
    format!("READ {key} at offset {offset}")
}

/// A key's directories and file name (the key is valid: no empty segment).
fn split(key: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = key.split('/').collect();
    let name = parts.pop().unwrap_or_default();
    (parts, name)
}

/// `dirs/name`.
fn join(dirs: &[&str], name: &str) -> String {
    let mut parts = dirs.to_vec();
    parts.push(name);
    parts.join("/")
}

/// The name `name` is written under until it is complete, next to it.
fn temp_name(name: &str) -> String {
    format!(".{name}.tmp-{}", std::process::id())
}

/// Whether `data` holds only zero bytes.
fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_directories_and_name() {
        assert_eq!(split("ns/m/vda.qcow2"), (vec!["ns", "m"], "vda.qcow2"));
        assert_eq!(split("vda.raw"), (vec![], "vda.raw"));
        assert_eq!(join(&["ns", "m"], ".vda.tmp-1"), "ns/m/.vda.tmp-1");
        assert_eq!(join(&[], "x"), "x");
        assert!(temp_name("vda.qcow2").starts_with(".vda.qcow2.tmp-"));
    }

    #[test]
    fn zero_chunks() {
        assert!(is_zero(&[]));
        assert!(is_zero(&vec![0u8; 1 << 20]));
        let mut data = vec![0u8; 1 << 20];
        data[(1 << 20) - 1] = 1;
        assert!(!is_zero(&data));
    }

    #[tokio::test]
    async fn spec_is_checked_before_anything_connects() {
        let spec = |endpoint: &str, path: &str| StorageSpec {
            type_: crd::StorageType::Nfs,
            bucket: None,
            endpoint: Some(endpoint.into()),
            region: None,
            path: Some(path.into()),
            credentials_secret_ref: None,
        };
        let options = StageOptions {
            guard: crate::endpoint::Guard::new(true),
            ..StageOptions::default()
        };
        for (endpoint, path) in [
            ("nfs://10.0.0.5", "/x"),
            ("10.0.0.5:/x", "/x"),
            ("10.0.0.5", "relative"),
            ("10.0.0.5", "/a/../b"),
            ("", "/x"),
        ] {
            let err = NfsStage::from_spec(&spec(endpoint, path), &options)
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{endpoint} {path}: {err}");
        }
        let strict = StageOptions::default();
        let err = NfsStage::from_spec(&spec("169.254.169.254", "/x"), &strict)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ForbiddenEndpoint(_)), "{err}");

        let stage = NfsStage::from_spec(&spec("10.0.0.5:2049", "/mnt/migrations/"), &options)
            .await
            .unwrap();
        assert_eq!(
            stage.describe(),
            "nfs export /mnt/migrations on 10.0.0.5:2049"
        );
        let Backend::Client(client) = &stage.backend else {
            panic!("a client")
        };
        assert_eq!(client.target.port, Some(2049));
        assert_eq!(
            client.url("ns/m/vda.qcow2"),
            "nfs://10.0.0.5:2049/mnt/migrations/ns/m/vda.qcow2"
        );
    }

    #[test]
    fn failures_are_classified() {
        let client = Client {
            target: Target {
                addrs: vec!["10.0.0.5".parse().unwrap()],
                port: None,
                export: "/mnt/migrations".into(),
            },
            server: "nfs.example.com".into(),
            base_url: "nfs://nfs.example.com/mnt/migrations".into(),
            identity: Identity {
                uid: 65532,
                gid: 65532,
                gids: vec![],
                machine: "runner".into(),
            },
            attempts: 1,
            session: Mutex::new(None),
        };
        let status = |s| client.error(Fail::Status(s).at("WRITE ns/m/vda.raw at offset 0"));
        let e = status(nfsstat3::NFS3ERR_NOSPC);
        assert_eq!(e.reason(), "NoSpace", "{e}");
        assert!(!e.is_retryable());
        for denied in [
            nfsstat3::NFS3ERR_ACCES,
            nfsstat3::NFS3ERR_PERM,
            nfsstat3::NFS3ERR_ROFS,
        ] {
            let e = status(denied);
            assert!(matches!(e, Error::Auth { .. }) && !e.is_retryable(), "{e}");
            let text = e.to_string();
            assert!(
                text.contains("nfs.example.com")
                    && text.contains("/mnt/migrations")
                    && text.contains("ns/m/vda.raw")
                    && text.contains("uid 65532"),
                "{text}"
            );
        }
        assert!(status(nfsstat3::NFS3ERR_JUKEBOX).is_retryable());
        assert!(status(nfsstat3::NFS3ERR_STALE).is_retryable());
        let e = status(nfsstat3::NFS3ERR_NAMETOOLONG);
        assert!(matches!(e, Error::Invalid(_)), "{e}");

        let refused = client.error(
            Fail::Connect(
                "10.0.0.5:2049".parse().unwrap(),
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            )
            .at("MNT /mnt/migrations"),
        );
        assert!(refused.is_retryable(), "{refused}");
        let reset = client.error(
            Fail::Rpc(RpcError::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            )))
            .at("READ ns/m/vda.raw at offset 0"),
        );
        assert!(reset.is_retryable(), "{reset}");

        let mount = |stat, exports: Option<&[&str]>| {
            let exports = exports.map(|e| e.iter().map(|s| s.to_string()).collect());
            client.error(Fail::Mount(stat, exports).at("MNT /mnt/migrations"))
        };
        let missing = mount(mountstat3::MNT3ERR_NOENT, None);
        assert!(matches!(missing, Error::NotFound { .. }), "{missing}");
        assert!(
            missing
                .to_string()
                .contains("export /mnt/migrations on nfs server nfs.example.com")
        );
        // ACCES for a path the server does not export at all: not found, with the list
        let unexported = mount(mountstat3::MNT3ERR_ACCES, Some(&["/srv/a", "/srv/b"]));
        assert!(matches!(unexported, Error::NotFound { .. }), "{unexported}");
        assert!(
            unexported.to_string().contains("/srv/a, /srv/b"),
            "{unexported}"
        );
        let denied = mount(mountstat3::MNT3ERR_ACCES, Some(&["/mnt/migrations"]));
        assert!(matches!(denied, Error::Auth { .. }), "{denied}");
        let denied = mount(mountstat3::MNT3ERR_ACCES, None);
        assert!(matches!(denied, Error::Auth { .. }), "{denied}");
        let v4only = client.error(
            Fail::Unregistered("MOUNT v3", "10.0.0.5:111".parse().unwrap()).at("portmapper"),
        );
        assert!(
            !v4only.is_retryable() && v4only.to_string().contains("NFSv3"),
            "{v4only}"
        );
    }
}
