//! The data directory: the simulated node's whole state, as files, so that `pvesm` (a separate process
//! that sshd starts) sees what the API server did.
//!
//! ```text
//! <data>/node.json                   node name and storage definitions (PVE's storage.cfg)
//! <data>/tokens.json                 API tokens (PVE's user.cfg + token.cfg)
//! <data>/qemu-server/<vmid>.json     VM config, snapshots and power state (PVE's <vmid>.conf)
//! <data>/storage/<storage>/...       the storages' real files (dir: images/<vmid>/, import/, template/iso/)
//! <data>/tasks/<X>/<UPID>            task logs, as /var/log/pve/tasks
//! <data>/tmp/                        upload spool (PVE's /var/tmp/pveupload-*) and export scratch files
//! ```

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Paths inside one data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// A data directory at `root` (made absolute; created with its subdirectories).
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(Error::io(format!("create {}", root.display())))?;
        let root = std::fs::canonicalize(root)
            .map_err(Error::io(format!("resolve {}", root.display())))?;
        let dir = DataDir { root };
        for sub in [dir.vm_dir(), dir.tasks_dir(), dir.tmp_dir()] {
            std::fs::create_dir_all(&sub)
                .map_err(Error::io(format!("create {}", sub.display())))?;
        }
        Ok(dir)
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Node name and storage definitions.
    pub fn node_file(&self) -> PathBuf {
        self.root.join("node.json")
    }

    /// API tokens.
    pub fn tokens_file(&self) -> PathBuf {
        self.root.join("tokens.json")
    }

    /// VM state files.
    pub fn vm_dir(&self) -> PathBuf {
        self.root.join("qemu-server")
    }

    /// The state file of one VM.
    pub fn vm_file(&self, vmid: u32) -> PathBuf {
        self.vm_dir().join(format!("{vmid}.json"))
    }

    /// Task logs.
    pub fn tasks_dir(&self) -> PathBuf {
        self.root.join("tasks")
    }

    /// Scratch space (uploads in progress, conversions for export).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Resolves a path from a state file: relative paths are relative to the data directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.root.join(path)
        }
    }
}

/// Reads a JSON state file; `None` if it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::StateFile {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()))(e)),
    }
}

/// Writes a JSON state file atomically (temporary file + rename), so a concurrent reader (`pvesm`)
/// never sees half a file.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::StateFile {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(Error::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(Error::io(format!(
        "rename {} to {}",
        tmp.display(),
        path.display()
    )))
}

/// A random UUID (version 4) from the kernel.
pub fn random_uuid() -> Result<String> {
    let path = "/proc/sys/kernel/random/uuid";
    let text = std::fs::read_to_string(path).map_err(Error::io(format!("read {path}")))?;
    Ok(text.trim().to_string())
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
