//! `pvesm export`: a volume as a stream, after pve-storage's `volume_export` of the dir and LVM
//! plugins.
//!
//! Every `*+size` format starts with the common header, the volume's size as a 64-bit little-endian
//! integer (`pack("Q<", $size)`, `write_common_header`), followed by the data:
//!
//! * `raw+size`: the guest-visible bytes. A raw file is copied as is (PVE: `dd bs=4k`); any other
//!   format is converted, flattening a backing chain (a linked clone reads as its base under its
//!   own writes). PVE runs `qemu-img convert -O raw <file> /dev/stdout` with a qemu-img patched
//!   for that; stock qemu-img refuses a pipe as target ("Could not resize file"), so the simulator
//!   converts into a sparse scratch file in the data directory and streams that. The bytes on the wire
//!   are the same.
//! * `qcow2+size` / `vmdk+size`: the image file itself, internal snapshots and a linked clone's
//!   backing-file reference (`../<basevmid>/<basename>`) included. The header holds the virtual
//!   size, not the file length; the data runs to the end of the stream.
//!
//! The dir plugin only exports the current state: `--snapshot` (and `--base`) give `volume export
//! format <fmt> not available for PVE::Storage::DirPlugin`, `raw+size` needs `--with-snapshots 0` and
//! `qcow2+size` needs `--with-snapshots 1` (`die $err_msg if !$with_snapshots || $file_format ne
//! $data_format`). LVM-thin exports `raw+size` of the current state only, its size from
//! `blockdev --getsize64` of the LV's device path, so an inactive LV (a template's base image)
//! fails until it is activated.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::qemu_img;
use crate::storage::{NodeConfig, Storage, StorageKind, Volume, parse_volume_id};

/// `$KNOWN_EXPORT_FORMATS`.
pub const KNOWN_EXPORT_FORMATS: &[&str] = &[
    "raw+size",
    "tar+size",
    "qcow2+size",
    "vmdk+size",
    "zfs",
    "btrfs",
];

/// What to export.
#[derive(Clone, Debug, Default)]
pub struct ExportRequest {
    /// Volume ID.
    pub volid: String,
    /// Stream format.
    pub format: String,
    /// Snapshot to export.
    pub snapshot: Option<String>,
    /// Base snapshot of an incremental stream.
    pub base: Option<String>,
    /// Include snapshots in the stream.
    pub with_snapshots: bool,
}

/// `volume_export`: writes the stream of `request` to `out`. `log` gets what PVE writes to stderr.
pub fn export(
    data: &DataDir,
    request: &ExportRequest,
    out: &mut dyn Write,
    log: qemu_img::Log,
) -> Result<()> {
    if !KNOWN_EXPORT_FORMATS.contains(&request.format.as_str()) {
        return Err(Error::failed(format!(
            "Cannot export '{}' using unknown export format '{}'",
            request.volid, request.format
        )));
    }
    let (store, volname) = parse_volume_id(&request.volid)
        .map_err(|_| Error::failed(format!("cannot export volume '{}'", request.volid)))?;
    let node = NodeConfig::load(data)?;
    let storage = node.storage(data, store)?;
    let volume = storage.parse_volname(volname)?;
    match storage.kind {
        StorageKind::Lvmthin => export_lvm(&storage, &volume, request, out, log),
        StorageKind::Dir => export_dir(data, &storage, &volume, request, out, log),
    }
}

/// `LVMPlugin::volume_export`: `raw+size` of the current state only; the size comes from
/// `blockdev --getsize64` of the device, so the LV must be active.
fn export_lvm(
    storage: &Storage,
    volume: &Volume,
    request: &ExportRequest,
    out: &mut dyn Write,
    log: qemu_img::Log,
) -> Result<()> {
    let class = storage.plugin_class();
    let format = request.format.as_str();
    if format != "raw+size" {
        return Err(Error::failed(format!(
            "volume export format {format} not available for {class}"
        )));
    }
    if request.with_snapshots {
        return Err(Error::failed(format!(
            "cannot export volumes together with their snapshots in {class}"
        )));
    }
    if request.snapshot.is_some() {
        return Err(Error::failed(format!(
            "cannot export a snapshot in {class}"
        )));
    }
    if request.base.is_some() {
        return Err(Error::failed(format!(
            "cannot export an incremental stream in {class}"
        )));
    }
    let dev = storage.path(volume);
    let size = blockdev_size(&dev, log)?;
    write_header(out, size)?;
    copy_file(&dev, out)
}

/// `Plugin::volume_export` for a file: the current state only (no `--snapshot`, no `--base`);
/// `raw+size` without `--with-snapshots` (converted unless the file is raw), `qcow2+size` /
/// `vmdk+size` of a file of that format with `--with-snapshots 1` (the file itself).
fn export_dir(
    data: &DataDir,
    storage: &Storage,
    volume: &Volume,
    request: &ExportRequest,
    out: &mut dyn Write,
    log: qemu_img::Log,
) -> Result<()> {
    let format = request.format.as_str();
    let not_available = || {
        Error::failed(format!(
            "volume export format {format} not available for {}",
            storage.plugin_class()
        ))
    };
    if request.snapshot.is_some() || request.base.is_some() {
        return Err(not_available());
    }
    let path = storage.file(volume);
    let file_format = volume.format.as_str();
    let size = virtual_size(&path, file_format)?;
    match format {
        "raw+size" if request.with_snapshots || file_format == "subvol" => Err(not_available()),
        "raw+size" if matches!(file_format, "raw" | "ova" | "ovf") => {
            write_header(out, size)?;
            copy_file(&path, out)
        }
        "raw+size" => {
            let scratch = Scratch::new(data)?;
            qemu_img::convert_to_raw(&path, file_format, &scratch.0, log)?;
            write_header(out, size)?;
            copy_file(&scratch.0, out)
        }
        "qcow2+size" | "vmdk+size"
            if request.with_snapshots && format == format!("{file_format}+size") =>
        {
            write_header(out, size)?;
            copy_file(&path, out)
        }
        _ => Err(not_available()),
    }
}

/// `blockdev --getsize64 <device>`: the LV must be active (its device path must exist).
fn blockdev_size(dev: &Path, log: qemu_img::Log) -> Result<u64> {
    match std::fs::metadata(dev) {
        Ok(meta) => Ok(meta.len()),
        Err(e) => {
            log(&format!(
                "blockdev: cannot open {}: {}",
                dev.display(),
                strerror(&e)
            ));
            Err(Error::failed(format!(
                "command '/sbin/blockdev --getsize64 {}' failed: exit code 1",
                dev.display()
            )))
        }
    }
}

/// The C library's text of an OS error (`No such file or directory`).
pub fn strerror(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// `file_size_info`: the virtual size (`qemu-img info`), or the file length for archives.
fn virtual_size(path: &Path, format: &str) -> Result<u64> {
    if matches!(format, "ova" | "ovf") {
        return std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(Error::io(format!("stat {}", path.display())));
    }
    Ok(qemu_img::info(path, Some(format))?.virtual_size)
}

/// `write_common_header`.
pub fn write_header(out: &mut dyn Write, size: u64) -> Result<()> {
    out.write_all(&size.to_le_bytes())
        .map_err(Error::io("write export header"))
}

fn copy_file(path: &Path, out: &mut dyn Write) -> Result<()> {
    out.flush().map_err(Error::io("flush export stream"))?;
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
        out.write_all(&buf[..n])
            .map_err(Error::io("write export stream"))?;
    }
    out.flush().map_err(Error::io("flush export stream"))
}

/// A scratch file in the data directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(data: &DataDir) -> Result<Self> {
        let name = format!(
            "export-{}-{}.raw",
            std::process::id(),
            crate::datadir::random_uuid()?
        );
        Ok(Scratch(data.tmp_dir().join(name)))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
