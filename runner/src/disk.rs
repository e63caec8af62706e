//! The disk engine: qemu-img for inspection and conversion, plus the scratch-space check.
//!
//! Images come from hypervisors and staging storage, so they are untrusted: every qemu-img call names
//! the format with `-f` (no probing: a raw disk whose guest wrote a qcow2 header stays raw), and
//! [`inspect`] refuses images that would make qemu-img open other files (backing files, qcow2
//! external data files, VMDK extents outside the image).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crd::DiskFormat;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::progress::Progress;
use crate::provider::LocalImage;
use crate::stream::hash_file;
use crate::{Error, Result};

const QEMU_IMG: &str = "qemu-img";
/// `qemu-img info` reads headers only; anything slower is a hostile image.
const INFO_TIMEOUT: Duration = Duration::from_secs(60);

/// What `qemu-img info` says about a checked image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: DiskFormat,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Bytes allocated on the host, when known.
    pub actual_size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct InfoJson {
    format: String,
    virtual_size: u64,
    actual_size: Option<u64>,
    backing_filename: Option<String>,
    full_backing_filename: Option<String>,
    format_specific: Option<FormatSpecific>,
}

#[derive(Deserialize)]
struct FormatSpecific {
    #[serde(default)]
    data: serde_json::Value,
}

/// Runs `qemu-img info --output=json -f <format>` on an untrusted image and checks it is a plain,
/// self-contained image of that format.
pub async fn inspect(path: &Path, format: DiskFormat) -> Result<ImageInfo> {
    let out = tokio::time::timeout(
        INFO_TIMEOUT,
        Command::new(QEMU_IMG)
            .args(["info", "--output=json", "-f", format.as_str()])
            .arg(path)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| tool_error(format!("info {} timed out", path.display())))?
    .map_err(spawn_error)?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "{} is not a valid {format} image: {}",
            path.display(),
            last_line(&out.stderr)
        )));
    }
    let info: InfoJson = serde_json::from_slice(&out.stdout)
        .map_err(|e| tool_error(format!("unreadable info output: {e}")))?;
    check_self_contained(path, format, &info)?;
    Ok(ImageInfo {
        format,
        virtual_size: info.virtual_size,
        actual_size: info.actual_size,
    })
}

fn check_self_contained(path: &Path, format: DiskFormat, info: &InfoJson) -> Result<()> {
    let refuse = |why: String| Error::Invalid(format!("refusing image {}: {why}", path.display()));
    if info.format != format.as_str() {
        return Err(refuse(format!(
            "format is {}, expected {format}",
            info.format
        )));
    }
    if let Some(b) = info
        .backing_filename
        .as_ref()
        .or(info.full_backing_filename.as_ref())
    {
        return Err(refuse(format!("it has a backing file ({b})")));
    }
    let data = info.format_specific.as_ref().map(|f| &f.data);
    if let Some(file) = data.and_then(|d| d.get("data-file")) {
        return Err(refuse(format!("it has an external data file ({file})")));
    }
    if let Some(extents) = data
        .and_then(|d| d.get("extents"))
        .and_then(|e| e.as_array())
    {
        let own = path.to_string_lossy();
        for extent in extents {
            let file = extent
                .get("filename")
                .and_then(|f| f.as_str())
                .unwrap_or("");
            if file != own {
                return Err(refuse(format!("its VMDK extent points at {file}")));
            }
        }
    }
    Ok(())
}

/// The path a converted image gets: `<dir>/<stem>.<format>`.
pub fn converted_path(dir: &Path, stem: &str, format: DiskFormat) -> PathBuf {
    dir.join(format!("{stem}.{format}"))
}

/// Converts `src` into `format` at `dest` with `qemu-img convert`, reporting progress as a share of
/// the source's virtual size. Zeroed areas stay holes (qemu-img's default `-S 4k`), so raw and qcow2
/// outputs are sparse; VMDK is written streamOptimized, the form vSphere imports.
pub async fn convert(
    src: &LocalImage,
    format: DiskFormat,
    dest: &Path,
    progress: &Progress,
) -> Result<LocalImage> {
    convert_with(src, &[], format, dest, progress).await
}

/// [`convert`] with extra source options (`-l snapshot.name=...`).
async fn convert_with(
    src: &LocalImage,
    source_options: &[&str],
    format: DiskFormat,
    dest: &Path,
    progress: &Progress,
) -> Result<LocalImage> {
    let mut cmd = Command::new(QEMU_IMG);
    cmd.args([
        "convert",
        "-p",
        "-f",
        src.format.as_str(),
        "-O",
        format.as_str(),
    ]);
    cmd.args(source_options);
    match format {
        DiskFormat::Vmdk => {
            cmd.args(["-o", "subformat=streamOptimized"]);
        }
        // Parallel, out-of-order writes: measured faster for raw and qcow2 outputs.
        DiskFormat::Qcow2 | DiskFormat::Raw => {
            cmd.args(["-m", "16", "-W"]);
        }
    }
    cmd.arg(&src.path).arg(dest);
    run_with_progress(cmd, progress).await.inspect_err(|_| {
        let _ = std::fs::remove_file(dest);
    })?;
    Ok(LocalImage {
        path: dest.to_path_buf(),
        format,
    })
}

/// Converts `top`, an image whose backing chain (VMDK parents, qcow2 backing files) the caller
/// laid out in the private directory `dir`, into one self-contained image of `format` at `dest`.
/// Every file of the chain must lie in `dir` and be of a supported format: anything else is
/// refused before the conversion reads it.
pub async fn flatten(
    top: &LocalImage,
    dir: &Path,
    format: DiskFormat,
    dest: &Path,
    progress: &Progress,
) -> Result<LocalImage> {
    check_chain(top, dir).await?;
    convert(top, format, dest, progress).await
}

/// [`flatten`] of the internal snapshot `snapshot` of the qcow2 image `top` (`qemu-img convert -l
/// snapshot.name=<snapshot>`): the guest's content as of that snapshot, read through the backing
/// chain laid out in `dir`.
pub async fn flatten_snapshot(
    top: &LocalImage,
    snapshot: &str,
    dir: &Path,
    format: DiskFormat,
    dest: &Path,
    progress: &Progress,
) -> Result<LocalImage> {
    if top.format != DiskFormat::Qcow2 || snapshot.is_empty() || snapshot.contains([',', '=']) {
        return Err(Error::Invalid(format!(
            "cannot read snapshot {snapshot:?} of {} ({}): internal snapshots are qcow2 only, \
             named without `,` and `=`",
            top.path.display(),
            top.format
        )));
    }
    check_chain(top, dir).await?;
    let option = format!("snapshot.name={snapshot}");
    convert_with(top, &["-l", &option], format, dest, progress).await
}

/// [`flatten`] from a blocking thread (a provider whose library blocks).
pub fn flatten_blocking(
    top: &LocalImage,
    dir: &Path,
    format: DiskFormat,
    dest: &Path,
) -> Result<LocalImage> {
    tokio::runtime::Handle::current().block_on(flatten(
        top,
        dir,
        format,
        dest,
        &Progress::default(),
    ))
}

/// Points `image` at `backing` as its backing file, changing nothing but the header (`qemu-img
/// rebase -u`): for a chain downloaded file by file, whose images still name the host's paths.
pub async fn rebase(image: &LocalImage, backing: &LocalImage) -> Result<()> {
    if image.format != DiskFormat::Qcow2 {
        return Err(Error::Invalid(format!(
            "{} is {}: only qcow2 images are rebased",
            image.path.display(),
            image.format
        )));
    }
    let name = backing
        .path
        .file_name()
        .ok_or_else(|| tool_error(format!("{} has no file name", backing.path.display())))?;
    let out = Command::new(QEMU_IMG)
        .args([
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-F",
            backing.format.as_str(),
            "-b",
        ])
        .arg(name)
        .arg(&image.path)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(spawn_error)?;
    if !out.status.success() {
        return Err(tool_error(last_line(&out.stderr)));
    }
    Ok(())
}

/// [`rebase`] from a blocking thread.
pub fn rebase_blocking(image: &LocalImage, backing: &LocalImage) -> Result<()> {
    tokio::runtime::Handle::current().block_on(rebase(image, backing))
}

/// `qemu-img info --backing-chain` of `top`: every image, backing file and VMDK extent is a file
/// inside `dir`.
async fn check_chain(top: &LocalImage, dir: &Path) -> Result<()> {
    let out = tokio::time::timeout(
        INFO_TIMEOUT,
        Command::new(QEMU_IMG)
            .args([
                "info",
                "--backing-chain",
                "--output=json",
                "-f",
                top.format.as_str(),
            ])
            .arg(&top.path)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| tool_error(format!("info {} timed out", top.path.display())))?
    .map_err(spawn_error)?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "{} is not a valid {} chain: {}",
            top.path.display(),
            top.format,
            last_line(&out.stderr)
        )));
    }
    let chain: Vec<ChainJson> = serde_json::from_slice(&out.stdout)
        .map_err(|e| tool_error(format!("unreadable info output: {e}")))?;
    let root = dir
        .canonicalize()
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let inside = |file: &str| {
        Path::new(file)
            .canonicalize()
            .is_ok_and(|p| p.starts_with(&root) && p.is_file())
    };
    for image in &chain {
        let refuse = |why: String| {
            Error::Invalid(format!(
                "refusing the chain of {}: {why}",
                top.path.display()
            ))
        };
        if !matches!(image.format.as_str(), "qcow2" | "vmdk" | "raw") {
            return Err(refuse(format!("{} is {}", image.filename, image.format)));
        }
        let data = image.format_specific.as_ref().map(|f| &f.data);
        if data.and_then(|d| d.get("data-file")).is_some() {
            return Err(refuse(format!(
                "{} has an external data file",
                image.filename
            )));
        }
        let extents = data
            .and_then(|d| d.get("extents"))
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("filename").and_then(|f| f.as_str()));
        let files = std::iter::once(image.filename.as_str())
            .chain(image.full_backing_filename.as_deref())
            .chain(extents);
        for file in files {
            if !inside(file) {
                return Err(refuse(format!("{file} is outside {}", dir.display())));
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ChainJson {
    filename: String,
    format: String,
    full_backing_filename: Option<String>,
    format_specific: Option<FormatSpecific>,
}

/// Runs a qemu-img command with `-p`, turning its `(NN.NN/100%)` lines into `progress`.
async fn run_with_progress(mut cmd: Command, progress: &Progress) -> Result<()> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let total = progress.total();
    let read_progress = async {
        let mut buf = [0u8; 4096];
        let mut line = Vec::new();
        loop {
            let n = stdout.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                if b == b'\r' || b == b'\n' {
                    if let Some(pct) = parse_percent(&line) {
                        progress.set_done((total as f64 * pct / 100.0) as u64);
                    }
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
    };
    let read_errors = async {
        let mut err = Vec::new();
        let _ = stderr.read_to_end(&mut err).await;
        err
    };
    let ((), err) = tokio::join!(read_progress, read_errors);
    let status = child.wait().await.map_err(spawn_error)?;
    if !status.success() {
        let text = String::from_utf8_lossy(&err);
        if text.contains("No space left on device") {
            return Err(Error::NoSpace(last_line(&err)));
        }
        return Err(tool_error(last_line(&err)));
    }
    progress.set_done(total);
    Ok(())
}

/// Parses qemu-img's progress line `    (45.00/100%)`.
fn parse_percent(line: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(line).ok()?.trim();
    let inner = text.strip_prefix('(')?.strip_suffix("/100%)")?;
    inner.trim().parse().ok()
}

/// SHA-256 of an image's guest-visible content (its bytes as raw). Raw images are hashed directly;
/// others are converted to a temporary raw file in `scratch` first.
pub async fn guest_sha256(image: &LocalImage, scratch: &Path) -> Result<String> {
    if image.format == DiskFormat::Raw {
        return Ok(hash_file(&image.path, Progress::default()).await?.1);
    }
    let stem = image
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let tmp = scratch.join(format!("{stem}.guest.raw"));
    convert(image, DiskFormat::Raw, &tmp, &Progress::default()).await?;
    let hash = hash_file(&tmp, Progress::default()).await;
    let _ = tokio::fs::remove_file(&tmp).await;
    Ok(hash?.1)
}

/// Bytes available to the runner in the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| {
        Error::io(
            format!("checking free space of {}", dir.display()),
            std::io::Error::from(e),
        )
    })?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Fails with [`Error::NoSpace`] unless `dir` has `needed` bytes free.
pub fn ensure_space(dir: &Path, needed: u64) -> Result<()> {
    let free = free_space(dir)?;
    if free < needed {
        return Err(Error::NoSpace(format!(
            "scratch {} has {} free, the largest disk needs {}",
            dir.display(),
            crate::progress::human_bytes(free),
            crate::progress::human_bytes(needed)
        )));
    }
    Ok(())
}

fn spawn_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        return tool_error("qemu-img is not installed in the runner image".to_string());
    }
    Error::io("running qemu-img", e)
}

fn tool_error(detail: String) -> Error {
    Error::Tool {
        tool: QEMU_IMG.into(),
        detail,
    }
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    async fn qemu_img(args: &[&str]) {
        let st = Command::new(QEMU_IMG).args(args).status().await.unwrap();
        assert!(st.success(), "qemu-img {args:?}");
    }

    #[test]
    fn parses_progress_lines() {
        assert_eq!(parse_percent(b"    (45.00/100%)"), Some(45.0));
        assert_eq!(parse_percent(b"(100.00/100%)"), Some(100.0));
        assert_eq!(parse_percent(b"Image resized."), None);
    }

    #[tokio::test]
    async fn refuses_backing_files_and_wrong_formats() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let top = dir.path().join("top.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "1M"]).await;
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            top.to_str().unwrap(),
        ])
        .await;
        let err = inspect(&top, DiskFormat::Qcow2).await.unwrap_err();
        assert!(err.to_string().contains("backing file"), "{err}");

        // A qcow2 file is not a vmdk: the named format is used, never probed.
        let err = inspect(&base, DiskFormat::Vmdk).await.unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");

        let info = inspect(&base, DiskFormat::Qcow2).await.unwrap();
        assert_eq!(info.virtual_size, 1 << 20);
        // Read as raw, the qcow2 file is just bytes: fine, and nothing else is opened.
        assert_eq!(
            inspect(&base, DiskFormat::Raw).await.unwrap().format,
            DiskFormat::Raw
        );
    }

    #[tokio::test]
    async fn refuses_vmdk_descriptors_pointing_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let flat = dir.path().join("disk.vmdk");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            flat.to_str().unwrap(),
            "1M",
        ])
        .await;
        let err = inspect(&flat, DiskFormat::Vmdk).await.unwrap_err();
        assert!(err.to_string().contains("extent points at"), "{err}");
    }

    #[tokio::test]
    async fn converts_with_progress_and_keeps_content() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("a.raw");
        let mut data = vec![0u8; 4 << 20];
        data[..4096].fill(0xab);
        data[3 << 20..(3 << 20) + 10].copy_from_slice(b"0123456789");
        std::fs::write(&raw, &data).unwrap();
        let src = LocalImage {
            path: raw.clone(),
            format: DiskFormat::Raw,
        };
        for format in [DiskFormat::Qcow2, DiskFormat::Vmdk] {
            let progress = Progress::new(4 << 20);
            let out = convert(
                &src,
                format,
                &converted_path(dir.path(), "a", format),
                &progress,
            )
            .await
            .unwrap();
            assert_eq!(progress.done(), 4 << 20);
            assert_eq!(
                inspect(&out.path, format).await.unwrap().virtual_size,
                4 << 20
            );
            assert_eq!(
                guest_sha256(&out, dir.path()).await.unwrap(),
                hex::encode(Sha256::digest(&data))
            );
        }
        // Zeroes stay holes in the qcow2 output.
        let qcow2 = dir.path().join("a.qcow2");
        assert!(std::fs::metadata(&qcow2).unwrap().len() < 1 << 20);
    }

    #[tokio::test]
    async fn conversion_errors_are_classified() {
        let dir = tempfile::tempdir().unwrap();
        let src = LocalImage {
            path: dir.path().join("missing.qcow2"),
            format: DiskFormat::Qcow2,
        };
        let err = convert(
            &src,
            DiskFormat::Raw,
            &dir.path().join("out.raw"),
            &Progress::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Tool { .. }), "{err}");
        assert!(!err.is_retryable());
        assert!(!dir.path().join("out.raw").exists());
    }

    #[test]
    fn space_check_fails_fast() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).unwrap() > 0);
        ensure_space(dir.path(), 1).unwrap();
        let err = ensure_space(dir.path(), u64::MAX).unwrap_err();
        assert!(matches!(err, Error::NoSpace(_)), "{err}");
    }
}
