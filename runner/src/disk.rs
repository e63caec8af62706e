//! The disk engine: qemu-img for inspection and conversion, plus the scratch-space check.
//!
//! Images come from hypervisors and staging storage, so they are untrusted: every qemu-img call names
//! the format with `-f` (no probing: a raw disk whose guest wrote a qcow2 header stays raw), and
//! [`inspect`] refuses images that would make qemu-img open other files (backing files, qcow2
//! external data files, VMDK extents outside the image). Inspections run under [`InspectLimits`]
//! (address space, CPU time, wall clock), so a crafted image cannot make qemu-img eat the runner's
//! memory or CPU.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crd::DiskFormat;
use nix::sys::signal::Signal;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::progress::Progress;
use crate::provider::LocalImage;
use crate::stream::{Body, BufferPool, ChunkReader, hash_file};
use crate::{Error, Result, vmdk};

const QEMU_IMG: &str = "qemu-img";

/// Resource limits of a qemu-img run that inspects an untrusted image, set in the child between fork
/// and exec, as OpenStack does with `oslo_concurrency.prlimit` for `qemu-img info`. `qemu-img info`
/// reads headers and metadata tables only: a normal image needs a few dozen MiB and milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InspectLimits {
    /// `RLIMIT_AS`, bytes of address space (oslo's default for `qemu-img info`: 1 GiB).
    pub address_space: u64,
    /// `RLIMIT_CPU`, seconds of CPU time: SIGXCPU at the limit, SIGKILL a second later.
    pub cpu_seconds: u64,
    /// Wall-clock bound: the child is killed after it (a read that blocks uses no CPU).
    pub wall_clock: Duration,
}

impl Default for InspectLimits {
    fn default() -> Self {
        InspectLimits {
            address_space: 1 << 30,
            cpu_seconds: 30,
            wall_clock: Duration::from_secs(60),
        }
    }
}

impl InspectLimits {
    /// Makes `cmd`'s child run under these limits, with no core dump (SIGXCPU would write one into
    /// scratch) and one malloc arena: glibc reserves 64 MiB of address space for each thread's
    /// arena, up to 8 per core, so without it the address space qemu-img needs would grow with the
    /// node's core count instead of with what the image makes it allocate.
    fn apply(&self, cmd: &mut Command) {
        use nix::sys::resource::{Resource, setrlimit};
        cmd.env("MALLOC_ARENA_MAX", "1");
        let (bytes, cpu) = (self.address_space, self.cpu_seconds.max(1));
        let set = move || -> nix::Result<()> {
            setrlimit(Resource::RLIMIT_AS, bytes, bytes)?;
            setrlimit(Resource::RLIMIT_CPU, cpu, cpu + 1)?;
            setrlimit(Resource::RLIMIT_CORE, 0, 0)
        };
        // SAFETY: the closure runs in the forked child before exec; it only makes setrlimit(2) calls,
        // which are async-signal-safe, and allocates nothing (an Errno converts without allocating).
        unsafe {
            cmd.pre_exec(move || set().map_err(std::io::Error::from));
        }
    }

    fn address_space_text(&self) -> String {
        let (gib, mib) = (1u64 << 30, 1u64 << 20);
        match self.address_space {
            b if b % gib == 0 => format!("{} GiB", b / gib),
            b if b % mib == 0 => format!("{} MiB", b / mib),
            b => format!("{b} bytes"),
        }
    }

    /// The error for a failed run that ran into one of the limits, if it did.
    fn exceeded(&self, inspection: &Inspection, out: &Output) -> Option<Error> {
        if out.status.signal() == Some(Signal::SIGXCPU as i32) {
            let limit = format!("{} s CPU-time", self.cpu_seconds.max(1));
            return Some(inspection.exceeded(&limit, "killed by SIGXCPU".into()));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && is_allocation_failure(&stderr) {
            let limit = format!("{} address-space", self.address_space_text());
            return Some(inspection.exceeded(&limit, last_line(&out.stderr)));
        }
        None
    }
}

/// How qemu-img (and the dynamic loader before it) says an allocation failed: the g_try_malloc
/// users ("Could not allocate L1 table", "... metadata caches"), ENOMEM, a thread stack that could
/// not be mapped (EAGAIN from pthread_create), g_malloc's abort message.
fn is_allocation_failure(stderr: &str) -> bool {
    [
        "Could not allocate",
        "Cannot allocate memory",
        "failed to allocate",
        "qemu_thread_create: Resource temporarily unavailable",
        "failed to map segment",
        "Out of memory",
    ]
    .iter()
    .any(|needle| stderr.contains(needle))
}

/// One qemu-img inspection: the sub-command and the image, for messages.
struct Inspection<'a> {
    command: &'static str,
    image: &'a Path,
}

impl Inspection<'_> {
    fn exceeded(&self, limit: &str, detail: String) -> Error {
        Error::LimitExceeded {
            what: format!("{QEMU_IMG} {} of {}", self.command, self.image.display()),
            limit: limit.to_owned(),
            detail,
        }
    }

    /// Runs `cmd` (which inspects the image) under `limits`, collecting its output. A run killed by a
    /// limit is an [`Error::LimitExceeded`]; any other outcome is the caller's to judge.
    async fn run(&self, mut cmd: Command, limits: &InspectLimits) -> Result<Output> {
        limits.apply(&mut cmd);
        let out = tokio::time::timeout(limits.wall_clock, cmd.kill_on_drop(true).output())
            .await
            .map_err(|_| {
                let limit = format!("{} wall-clock", seconds_text(limits.wall_clock));
                self.exceeded(&limit, "killed".into())
            })?
            .map_err(spawn_error)?;
        if let Some(error) = limits.exceeded(self, &out) {
            return Err(error);
        }
        if let Some(signal) = out.status.signal() {
            return Err(self.killed(signal, &out.stderr));
        }
        Ok(out)
    }

    /// A run that died of another signal (an assertion's SIGABRT, the OOM killer's SIGKILL).
    fn killed(&self, signal: i32, stderr: &[u8]) -> Error {
        let name = Signal::try_from(signal)
            .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned());
        tool_error(format!(
            "{} of {} was killed by {name}: {}",
            self.command,
            self.image.display(),
            last_line(stderr)
        ))
    }
}

fn seconds_text(d: Duration) -> String {
    match d.subsec_millis() {
        0 => format!("{} s", d.as_secs()),
        _ => format!("{:.1} s", d.as_secs_f64()),
    }
}

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

/// Runs `qemu-img info --output=json -f <format>` on an untrusted image under the default
/// [`InspectLimits`] and checks it is a plain, self-contained image of that format.
pub async fn inspect(path: &Path, format: DiskFormat) -> Result<ImageInfo> {
    inspect_with(path, format, &InspectLimits::default()).await
}

/// [`inspect`] under `limits`.
pub async fn inspect_with(
    path: &Path,
    format: DiskFormat,
    limits: &InspectLimits,
) -> Result<ImageInfo> {
    if format == DiskFormat::Vmdk {
        refuse_vmdk_descriptor(path)?;
    }
    let mut cmd = Command::new(QEMU_IMG);
    cmd.args(["info", "--output=json", "-f", format.as_str()])
        .arg(path);
    let inspection = Inspection {
        command: "info",
        image: path,
    };
    let out = inspection.run(cmd, limits).await?;
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

/// Refuses a VMDK that is a text descriptor rather than a single-file sparse image: its extents are
/// other files, and qemu-img would open them (whatever they name on this host) to describe it. A
/// migration's VMDKs are single files (hosted sparse or streamOptimized); vSphere descriptors are
/// read by the runner itself, never handed to an inspection.
fn refuse_vmdk_descriptor(path: &Path) -> Result<()> {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if read < magic.len() {
        return Err(Error::Invalid(format!(
            "{} is not a valid vmdk image: {read} bytes, no header",
            path.display()
        )));
    }
    if &magic == b"KDMV" || &magic == b"COWD" {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "refusing image {}: not a single-file VMDK (no sparse header): a descriptor's extents point \
         at other files",
        path.display()
    )))
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

/// Environment variable choosing the streamOptimized VMDK writer: `qemu-img` falls back to qemu-img's
/// (single-threaded) one; anything else, or unset, uses [`vmdk`]'s.
pub const ENV_VMDK_WRITER: &str = "VRG_VMDK_WRITER";

/// Converts `src` into `format` at `dest`, reporting progress as a share of the source's virtual
/// size. VMDK is written streamOptimized, the form vSphere imports, by [`vmdk::write`] on every core
/// (from a raw image, or a qcow2 image whose clusters `qemu-img map` locates), else by qemu-img.
/// Other formats by `qemu-img convert`; zeroed areas stay holes (its default `-S 4k`), so raw and
/// qcow2 outputs are sparse.
pub async fn convert(
    src: &LocalImage,
    format: DiskFormat,
    dest: &Path,
    progress: &Progress,
) -> Result<LocalImage> {
    if format == DiskFormat::Vmdk
        && our_vmdk_writer()
        && let Some(source) = vmdk_source(src).await?
    {
        return write_vmdk(source, dest, progress).await;
    }
    convert_with(src, &[], format, dest, progress).await
}

/// Whether VMDK output is written by [`vmdk::write`] (not qemu-img: [`ENV_VMDK_WRITER`]).
pub fn our_vmdk_writer() -> bool {
    std::env::var(ENV_VMDK_WRITER).map_or(true, |w| w != "qemu-img")
}

/// `image` converted to a streamOptimized VMDK while it is uploaded: a [`Body`] that runs
/// [`vmdk::write`] afresh for every try, so no converted copy ever lands in scratch. `guest` counts
/// the guest bytes converted. `None` where [`convert`] would need qemu-img (see [`vmdk_source`]).
pub async fn vmdk_body(image: &LocalImage, guest: &Progress) -> Result<Option<VmdkBody>> {
    if !our_vmdk_writer() {
        return Ok(None);
    }
    Ok(vmdk_source(image).await?.map(|source| VmdkBody {
        source: Arc::new(source),
        image: image.path.clone(),
        guest: guest.clone(),
    }))
}

/// See [`vmdk_body`].
pub struct VmdkBody {
    source: Arc<vmdk::Source>,
    image: PathBuf,
    guest: Progress,
}

impl Body for VmdkBody {
    fn describe(&self) -> String {
        format!("{} as streamOptimized VMDK", self.image.display())
    }

    fn exact_len(&self) -> Option<u64> {
        None
    }

    fn max_len(&self) -> u64 {
        vmdk::max_len(self.source.size())
    }

    fn open(&self, pool: BufferPool, progress: Progress) -> ChunkReader {
        let (source, guest) = (self.source.clone(), self.guest.clone());
        guest.set_done(0);
        ChunkReader::produce(pool, progress, move |out| {
            let written = vmdk::write(&source, out, vmdk::Options::default(), &guest)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            tracing::debug!(
                "streamed a streamOptimized VMDK ({} grains, {} stored uncompressed, {} bytes)",
                written.grains,
                written.stored,
                written.bytes
            );
            Ok(())
        })
    }
}

/// The guest content of `image` for [`vmdk::write`]: a raw image as it is, a qcow2 image through
/// `qemu-img map` (under [`InspectLimits`]); `None` where only qemu-img can read it (VMDK input, or
/// qcow2 clusters that are compressed or not in the file itself).
async fn vmdk_source(image: &LocalImage) -> Result<Option<vmdk::Source>> {
    match image.format {
        DiskFormat::Raw => vmdk::Source::raw(&image.path).map(Some),
        DiskFormat::Qcow2 => {
            let info = inspect(&image.path, image.format).await?;
            let Some(extents) = map_extents(image).await? else {
                return Ok(None);
            };
            vmdk::Source::mapped(&image.path, info.virtual_size, extents).map(Some)
        }
        DiskFormat::Vmdk => Ok(None),
    }
}

/// One entry of `qemu-img map --output=json`.
#[derive(serde::Deserialize)]
struct MapEntry {
    start: u64,
    length: u64,
    #[serde(default)]
    depth: u32,
    #[serde(default)]
    zero: bool,
    #[serde(default)]
    data: bool,
    #[serde(default)]
    compressed: bool,
    offset: Option<u64>,
}

/// Where `image`'s data is in its own file, by `qemu-img map`; `None` when some data is not
/// readable straight from the file (compressed clusters, a backing file).
async fn map_extents(image: &LocalImage) -> Result<Option<Vec<vmdk::Extent>>> {
    let mut cmd = Command::new(QEMU_IMG);
    cmd.args(["map", "--output=json", "-f", image.format.as_str()])
        .arg(&image.path);
    let inspection = Inspection {
        command: "map",
        image: &image.path,
    };
    let out = inspection.run(cmd, &InspectLimits::default()).await?;
    if !out.status.success() {
        return Err(tool_error(last_line(&out.stderr)));
    }
    let entries: Vec<MapEntry> = serde_json::from_slice(&out.stdout)
        .map_err(|e| tool_error(format!("qemu-img map of {}: {e}", image.path.display())))?;
    let mut extents = Vec::with_capacity(entries.len());
    for e in entries {
        if e.zero || !e.data {
            continue;
        }
        match (e.offset, e.depth, e.compressed) {
            (Some(offset), 0, false) => extents.push(vmdk::Extent {
                start: e.start,
                len: e.length,
                file_offset: Some(offset),
            }),
            _ => return Ok(None),
        }
    }
    Ok(Some(extents))
}

/// Writes `source` as a streamOptimized VMDK at `dest` on a blocking thread.
async fn write_vmdk(source: vmdk::Source, dest: &Path, progress: &Progress) -> Result<LocalImage> {
    let (path, progress) = (dest.to_path_buf(), progress.clone());
    let written = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::create(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let written = vmdk::write(&source, &file, vmdk::Options::default(), &progress)?;
        file.sync_all()
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        Ok::<_, Error>(written)
    })
    .await
    .map_err(|e| Error::io("the VMDK writer", std::io::Error::other(e)))?
    .inspect_err(|_| {
        let _ = std::fs::remove_file(dest);
    })?;
    tracing::info!(
        "wrote streamOptimized {} ({} grains, {} stored uncompressed, {} bytes)",
        dest.display(),
        written.grains,
        written.stored,
        written.bytes
    );
    Ok(LocalImage {
        path: dest.to_path_buf(),
        format: DiskFormat::Vmdk,
    })
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
        // qcow2 written in order: out-of-order writes (-W) allocate clusters in whatever order
        // they finish, so two conversions of the same disk differ byte for byte, and a runner that
        // re-converts after losing its pod could keep none of the parts it uploaded (measured: no
        // slower on 300 MiB of data). Raw output is positional: out of order is the same file.
        DiskFormat::Qcow2 => {
            cmd.args(["-m", "16"]);
        }
        DiskFormat::Raw => {
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
/// rebase -u`, under the default [`InspectLimits`]): for a chain downloaded file by file, whose
/// images still name the host's paths.
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
    let mut cmd = Command::new(QEMU_IMG);
    cmd.args([
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-F",
        backing.format.as_str(),
        "-b",
    ])
    .arg(name)
    .arg(&image.path);
    // `-u` rewrites the header only, but opening the image parses its metadata as `info` does.
    let inspection = Inspection {
        command: "rebase -u",
        image: &image.path,
    };
    let out = inspection.run(cmd, &InspectLimits::default()).await?;
    if !out.status.success() {
        return Err(tool_error(last_line(&out.stderr)));
    }
    Ok(())
}

/// [`rebase`] from a blocking thread.
pub fn rebase_blocking(image: &LocalImage, backing: &LocalImage) -> Result<()> {
    tokio::runtime::Handle::current().block_on(rebase(image, backing))
}

/// `qemu-img info --backing-chain` of `top`, under the default [`InspectLimits`]: every image,
/// backing file and VMDK extent is a file inside `dir`.
async fn check_chain(top: &LocalImage, dir: &Path) -> Result<()> {
    let mut cmd = Command::new(QEMU_IMG);
    cmd.args([
        "info",
        "--backing-chain",
        "--output=json",
        "-f",
        top.format.as_str(),
    ])
    .arg(&top.path);
    let inspection = Inspection {
        command: "info --backing-chain",
        image: &top.path,
    };
    let out = inspection.run(cmd, &InspectLimits::default()).await?;
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

/// Fails with [`Error::NoSpace`] unless `dir` has `needed` bytes free and, when the volume is
/// size-limited (an emptyDir's sizeLimit, which its filesystem does not show), `limit` is at least
/// `needed`.
pub fn ensure_space(dir: &Path, needed: u64, limit: Option<u64>) -> Result<()> {
    let human = crate::progress::human_bytes;
    if let Some(limit) = limit.filter(|l| *l < needed) {
        return Err(Error::NoSpace(format!(
            "scratch {} is limited to {} by the operator's --scratch-size, the largest disk needs \
             {}; {SCRATCH_SETTINGS}",
            dir.display(),
            gibibytes(limit),
            gibibytes(needed)
        )));
    }
    let free = free_space(dir)?;
    if free < needed {
        return Err(Error::NoSpace(format!(
            "scratch {} has {} free, the largest disk needs {}; {SCRATCH_SETTINGS}",
            dir.display(),
            human(free),
            human(needed)
        )));
    }
    Ok(())
}

/// `bytes` spelled as the --scratch-size flag takes it (`100Gi`, `20.5Gi`).
fn gibibytes(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    if bytes.is_multiple_of(GIB) {
        format!("{}Gi", bytes / GIB)
    } else {
        format!("{:.1}Gi", bytes as f64 / GIB as f64)
    }
}

/// What a user changes when scratch is too small.
const SCRATCH_SETTINGS: &str = "raise the operator's --scratch-size (with --scratch-storage-class \
    for a volume of that size on a storage class instead of the node's disk)";

/// A scratch volume that filled up during the run ([`Error::NoSpace`] naming a path under
/// `scratch`) also says which setting gives the runner more; other errors are unchanged.
pub fn scratch_hint(error: Error, scratch: &Path) -> Error {
    match error {
        Error::NoSpace(detail)
            if detail.contains(&*scratch.to_string_lossy())
                && !detail.contains(SCRATCH_SETTINGS) =>
        {
            Error::NoSpace(format!("{detail}; {SCRATCH_SETTINGS}"))
        }
        other => other,
    }
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

    /// Converting the same disk twice gives the same bytes: what lets a runner in a new pod keep
    /// the parts of an upload its predecessor sent.
    #[tokio::test]
    async fn a_qcow2_conversion_is_the_same_bytes_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let file = std::fs::File::create(&raw).unwrap();
        file.set_len(256 << 20).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..64 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for at in [0u64, 96 << 20, 190 << 20] {
            std::os::unix::fs::FileExt::write_all_at(&file, &data, at).unwrap();
        }
        let source = LocalImage {
            path: raw,
            format: DiskFormat::Raw,
        };
        let mut sums = Vec::new();
        for i in 0..2 {
            let out = dir.path().join(format!("out-{i}.qcow2"));
            convert(&source, DiskFormat::Qcow2, &out, &Progress::default())
                .await
                .unwrap();
            sums.push(hex::encode(Sha256::digest(std::fs::read(&out).unwrap())));
        }
        assert_eq!(sums[0], sums[1]);
    }

    /// A qcow2 image whose metadata makes `qemu-img info` allocate about 64 MiB (a 32 MiB L1 table
    /// and the 32 MiB L2 cache that 512-byte clusters over 120 GiB ask for), though it holds no data.
    async fn metadata_heavy_image(dir: &Path) -> PathBuf {
        let path = dir.join("heavy.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            path.to_str().unwrap(),
            "120G",
        ])
        .await;
        path
    }

    fn address_space(bytes: u64) -> InspectLimits {
        InspectLimits {
            address_space: bytes,
            ..InspectLimits::default()
        }
    }

    #[tokio::test]
    async fn inspection_under_a_tiny_address_space_fails_naming_the_image_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("small.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", image.to_str().unwrap(), "1M"]).await;
        // 16 MiB: qemu-img cannot even map its threads' stacks.
        let err = inspect_with(&image, DiskFormat::Qcow2, &address_space(16 << 20))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::LimitExceeded { .. }), "{err:?}");
        assert!(
            text.starts_with(&format!(
                "qemu-img info of {} exceeded its 16 MiB address-space limit (",
                image.display()
            )),
            "{text}"
        );
        assert_eq!(err.reason(), "ResourceLimitExceeded");
        assert!(!err.is_retryable());
        // The same image passes under the default limits.
        let info = inspect(&image, DiskFormat::Qcow2).await.unwrap();
        assert_eq!(info.virtual_size, 1 << 20);
    }

    #[tokio::test]
    async fn an_image_whose_metadata_outgrows_the_limit_is_refused_where_a_normal_one_passes() {
        let dir = tempfile::tempdir().unwrap();
        let heavy = metadata_heavy_image(dir.path()).await;
        let normal = dir.path().join("normal.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            normal.to_str().unwrap(),
            "1G",
        ])
        .await;
        let limits = address_space(64 << 20);
        inspect_with(&normal, DiskFormat::Qcow2, &limits)
            .await
            .unwrap();
        let err = inspect_with(&heavy, DiskFormat::Qcow2, &limits)
            .await
            .unwrap_err();
        // Which allocation fails first (the L1 table, the caches, a worker thread's stack) varies.
        let text = err.to_string();
        assert!(
            text.contains("heavy.qcow2 exceeded its 64 MiB address-space limit"),
            "{text}"
        );
        // 1 GiB leaves it plenty.
        assert_eq!(
            inspect(&heavy, DiskFormat::Qcow2)
                .await
                .unwrap()
                .virtual_size,
            120 << 30
        );
    }

    #[tokio::test]
    async fn a_qemu_img_run_past_its_cpu_time_limit_is_killed_by_sigxcpu() {
        // `qemu-img bench` on the null driver spins on the CPU for as long as it is let: the
        // stand-in for an image whose inspection loops.
        let image = Path::new("null-co.img");
        let mut cmd = Command::new(QEMU_IMG);
        cmd.args(["bench", "-c", "1000000000", "-s", "512", "--image-opts"])
            .arg("driver=null-co,size=1G");
        let limits = InspectLimits {
            cpu_seconds: 1,
            ..InspectLimits::default()
        };
        let inspection = Inspection {
            command: "bench",
            image,
        };
        let started = std::time::Instant::now();
        let err = inspection.run(cmd, &limits).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "qemu-img bench of null-co.img exceeded its 1 s CPU-time limit (killed by SIGXCPU)"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[tokio::test]
    async fn a_run_past_its_wall_clock_limit_is_killed() {
        // Waiting costs no CPU time: only the wall-clock bound stops it. qemu-img reading a FIFO
        // nobody writes blocks in open(2).
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stuck.raw");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let limits = InspectLimits {
            wall_clock: Duration::from_millis(500),
            ..InspectLimits::default()
        };
        let err = inspect_with(&fifo, DiskFormat::Raw, &limits)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "qemu-img info of {} exceeded its 0.5 s wall-clock limit (killed)",
                fifo.display()
            )
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
        assert!(
            err.to_string()
                .contains("a descriptor's extents point at other files"),
            "{err}"
        );
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
        ensure_space(dir.path(), 1, None).unwrap();
        let err = ensure_space(dir.path(), u64::MAX, None).unwrap_err();
        assert!(matches!(err, Error::NoSpace(_)), "{err}");
        // A sizeLimit below the need fails though the filesystem has room.
        ensure_space(dir.path(), 10 << 30, Some(10 << 30)).unwrap_or_else(|e| {
            assert!(
                e.to_string().contains("free"),
                "only the filesystem may refuse: {e}"
            )
        });
        let err = ensure_space(dir.path(), 25 << 29, Some(10 << 30)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "not enough space: scratch {} is limited to 10Gi by the operator's --scratch-size, \
                 the largest disk needs 12.5Gi; {SCRATCH_SETTINGS}",
                dir.path().display()
            )
        );
    }

    #[test]
    fn a_full_scratch_names_the_setting_to_raise() {
        let scratch = Path::new("/scratch");
        let full = Error::io(
            "writing /scratch/m/vda.qcow2",
            std::io::Error::from_raw_os_error(28),
        );
        let e = scratch_hint(full, scratch);
        assert_eq!(e.reason(), "NoSpace");
        assert!(e.to_string().contains("--scratch-size"), "{e}");
        let elsewhere = Error::NoSpace("libvirt storage pool \"default\" has 1 GB free".into());
        let e = scratch_hint(elsewhere, scratch);
        assert!(!e.to_string().contains("--scratch-size"), "{e}");
        let other = scratch_hint(Error::Invalid("/scratch/x".into()), scratch);
        assert_eq!(other.reason(), "Invalid");
    }
}
