//! A local directory standing for the export: plain file I/O, for tests and for a runner whose
//! export is already mounted by someone else ([`crate::storage::StageOptions::nfs_root`]). Files are
//! written under a temporary name, fsynced and renamed, so a visible file is always complete; the
//! sidecar follows the same way.

use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::super::{
    Stage, StagedObject, parse_sidecar, partial_path, sidecar_body, sidecar_key, validate_key,
};
use crate::progress::Progress;
use crate::stream::{Body, BufferPool, CHUNK, HashingWriter, open_resumable};
use crate::{Error, Result};

/// An NFS export's stand-in: a local directory.
#[derive(Clone, Debug)]
pub(super) struct DirStage {
    /// The mount point.
    root: PathBuf,
    /// `nfs://server/export` for URLs and messages.
    base_url: String,
}

impl DirStage {
    /// A stage on the directory `root`, described as `base_url`.
    pub(super) fn new(root: &Path, base_url: &str) -> Self {
        DirStage {
            root: root.to_path_buf(),
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn url(&self, key: &str) -> String {
        format!("{}/{key}", self.base_url)
    }

    fn system(&self) -> String {
        format!(
            "nfs storage {} (mounted at {})",
            self.base_url,
            self.root.display()
        )
    }

    /// Maps a file error: a missing mount point reads as "not mounted", ENOSPC as no space.
    fn io_error(&self, what: String, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::PermissionDenied {
            return Error::Auth {
                system: self.system(),
                detail: format!("{what}: {e}"),
            };
        }
        Error::io(what, e)
    }
}

#[async_trait]
impl Stage for DirStage {
    fn describe(&self) -> String {
        self.system()
    }

    async fn check(&self) -> Result<()> {
        let root = self.root.clone();
        let system = self.system();
        let probe = root.join(format!(".virtrigaud-check-{}", std::process::id()));
        blocking(move || {
            let meta = std::fs::metadata(&root).map_err(|e| Error::NotFound {
                what: system.clone(),
                detail: format!("mount point {}: {e}", root.display()),
            })?;
            if !meta.is_dir() {
                return Err(Error::NotFound {
                    what: system,
                    detail: format!("{} is not a directory", root.display()),
                });
            }
            let written = std::fs::write(&probe, b"virtrigaud write check\n");
            let _ = std::fs::remove_file(&probe);
            written.map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                    Error::Auth {
                        system,
                        detail: format!("{} is not writable: {e}", root.display()),
                    }
                }
                _ => Error::io(format!("writing {}", probe.display()), e),
            })
        })
        .await
    }

    async fn stat(&self, key: &str) -> Result<Option<StagedObject>> {
        let path = self.path(key)?;
        let sidecar = self.path(&sidecar_key(key))?;
        let meta = match tokio::fs::metadata(&path).await {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error(format!("reading {}", path.display()), e)),
        };
        let text = match tokio::fs::read_to_string(&sidecar).await {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error(format!("reading {}", sidecar.display()), e)),
        };
        Ok(parse_sidecar(&text).map(|sha256| StagedObject {
            key: key.to_string(),
            url: self.url(key),
            size: meta.len(),
            sha256,
        }))
    }

    async fn upload_body(
        &self,
        key: &str,
        body: &dyn Body,
        progress: &Progress,
    ) -> Result<StagedObject> {
        let dest = self.path(key)?;
        let sidecar = self.path(&sidecar_key(key))?;
        progress.set_done(0);
        let mut reader = body.open(BufferPool::new(4, CHUNK), progress.clone());
        let this = self.clone();
        let written = dest.clone();
        let reader = blocking(move || {
            if let Some(dir) = written.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| this.io_error(format!("creating {}", dir.display()), e))?;
            }
            write_atomically(&written, |out| {
                while let Some(chunk) = reader.blocking_next() {
                    out.write_all(&chunk?)?;
                }
                Ok(())
            })
            .map_err(|e| this.io_error(format!("writing {}", written.display()), e))?;
            Ok(reader)
        })
        .await?;
        let (size, sha256) = reader
            .finish()
            .await
            .map_err(|e| Error::io(format!("reading {}", body.describe()), e))?;
        if let Some(len) = body.exact_len().filter(|&len| len != size) {
            return Err(Error::Invalid(format!(
                "{} changed size while it was uploaded ({len} -> {size} bytes)",
                body.describe()
            )));
        }
        let (this, key_owned) = (self.clone(), key.to_string());
        blocking(move || {
            write_atomically(&sidecar, |out| {
                out.write_all(sidecar_body(&sha256, &key_owned).as_bytes())
            })
            .map_err(|e| this.io_error(format!("writing {}", sidecar.display()), e))?;
            Ok(sha256)
        })
        .await
        .map(|sha256| StagedObject {
            key: key.to_string(),
            url: self.url(key),
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
        let src = self.path(&object.key)?;
        let partial = partial_path(dest);
        let this = self.clone();
        let expected = object.size;
        let progress = progress.clone();
        let writing = partial.clone();
        let tally = blocking(move || {
            let mut input = std::fs::File::open(&src).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::NotFound {
                    what: format!("staged object {}", src.display()),
                    detail: this.system(),
                },
                _ => this.io_error(format!("opening {}", src.display()), e),
            })?;
            let io_error = |e| Error::io(format!("writing {}", writing.display()), e);
            let (mut file, mut tally) = open_resumable(&writing, progress).map_err(io_error)?;
            if tally.bytes() > expected {
                // longer than the object: not a prefix of it, start over
                file.set_len(0)
                    .and_then(|()| file.rewind())
                    .map_err(io_error)?;
                tally.restart();
            }
            input
                .seek(io::SeekFrom::Start(tally.bytes()))
                .map_err(|e| this.io_error(format!("reading {}", src.display()), e))?;
            let mut writer = HashingWriter::with_tally(file, tally);
            copy(&mut input, &mut writer)
                .map_err(|e| this.io_error(format!("copying {}", src.display()), e))?;
            let (file, tally) = writer.into_parts();
            file.sync_all().map_err(io_error)?;
            Ok(tally)
        })
        .await?;
        super::super::finish_download(tally, object, &partial, dest).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        for path in [self.path(key)?, self.path(&sidecar_key(key))?] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_error(format!("removing {}", path.display()), e)),
            }
        }
        // drop the now empty `<namespace>/<migration>` directories; a non-empty one stays
        let mut dir = self.path(key)?.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == self.root || std::fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }
}

/// Copies with a large buffer (the default 8 KiB means many small NFS writes).
fn copy(reader: &mut impl Read, writer: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Writes `dest` through `fill` under a temporary name in the same directory, fsyncs it, renames
/// it into place and fsyncs the directory, so `dest` is either absent or complete.
fn write_atomically(
    dest: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut out = std::fs::File::create(&tmp)?;
        fill(&mut out)?;
        out.sync_all()?;
        drop(out);
        std::fs::rename(&tmp, dest)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io("file task", io::Error::other(e)))?
}
