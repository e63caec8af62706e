//! A small world for pipeline tests: a file-backed source and target, a local-directory stage (the
//! NFS backend on a temp dir) wrapped to count calls and inject faults, scratch space and a status
//! recorder. Disk images are made with qemu-img.

#![allow(dead_code)] // each test file uses its own part of the world

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use crd::plan::{MigrationRef, ProviderPlan, RunnerMode, RunnerPlan, VmPlan};
use crd::{CleanupPolicy, ProviderType, StorageSpec, StorageType, VMMigrationStatus};
use runner::phases::Pipeline;
use runner::progress::Progress;
use runner::provider::file::{DiskFile, FileProvider, VmFile};
use runner::status::{Recorder, StatusWriter};
use runner::storage::{NfsStage, Stage, StagedObject};
use runner::stream::Body;
use runner::{Error, Result};

/// Name of the source VM every world defines.
pub const SOURCE_VM: &str = "web";
/// Name of the VM the migration creates.
pub const TARGET_VM: &str = "web-migrated";

/// What the test stage does wrong, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Upload of a key ending with this fails transiently.
    FailUpload(String),
    /// The stored object of a key ending with this gets a flipped byte just before its download
    /// (the bytes changed between upload and import).
    CorruptDownload(String),
    /// Before uploading, report 45% done and stall for 2.5 s.
    StallUpload,
}

/// The NFS stage on a local directory, counting calls and injecting faults.
#[derive(Clone)]
pub struct TestStage {
    inner: NfsStage,
    pub root: PathBuf,
    calls: Arc<Mutex<BTreeMap<String, usize>>>,
    faults: Arc<Mutex<Vec<Fault>>>,
}

impl TestStage {
    pub fn new(root: &Path) -> Self {
        std::fs::create_dir_all(root).unwrap();
        TestStage {
            inner: NfsStage::new(root, "nfs://nfs.local/exports"),
            root: root.to_path_buf(),
            calls: Arc::default(),
            faults: Arc::default(),
        }
    }

    /// Calls of `method` (`upload`, `download`, ...) for keys ending with `suffix`.
    pub fn calls(&self, method: &str, suffix: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| {
                k.split_once(' ')
                    .is_some_and(|(m, key)| m == method && key.ends_with(suffix))
            })
            .map(|(_, n)| n)
            .sum()
    }

    pub fn inject(&self, fault: Fault) {
        self.faults.lock().unwrap().push(fault);
    }

    fn count(&self, method: &str, key: &str) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(format!("{method} {key}"))
            .or_default() += 1;
    }

    fn take(&self, pred: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap();
        let i = faults.iter().position(pred)?;
        Some(faults.remove(i))
    }

    /// Counts an upload (of a file or a streamed body) and plays the faults injected for it.
    async fn before_upload(&self, key: &str, progress: &Progress) -> Result<()> {
        self.count("upload", key);
        if self
            .take(|f| matches!(f, Fault::FailUpload(s) if key.ends_with(s.as_str())))
            .is_some()
        {
            return Err(Error::transient("test stage", "503 Service Unavailable"));
        }
        if self.take(|f| *f == Fault::StallUpload).is_some() {
            progress.set_done(forty_five_percent(progress.total()));
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        Ok(())
    }

    /// Files (objects and sidecars) the stage holds.
    pub fn objects(&self) -> Vec<PathBuf> {
        files_under(&self.root)
    }
}

#[async_trait]
impl Stage for TestStage {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn check(&self) -> Result<()> {
        self.count("check", "");
        self.inner.check().await
    }
    async fn stat(&self, key: &str) -> Result<Option<StagedObject>> {
        self.count("stat", key);
        self.inner.stat(key).await
    }
    async fn upload(&self, key: &str, src: &Path, progress: &Progress) -> Result<StagedObject> {
        self.before_upload(key, progress).await?;
        self.inner.upload(key, src, progress).await
    }
    async fn upload_body(
        &self,
        key: &str,
        body: &dyn Body,
        progress: &Progress,
    ) -> Result<StagedObject> {
        self.before_upload(key, progress).await?;
        self.inner.upload_body(key, body, progress).await
    }
    async fn download(
        &self,
        object: &StagedObject,
        dest: &Path,
        progress: &Progress,
    ) -> Result<()> {
        self.count("download", &object.key);
        if self
            .take(|f| matches!(f, Fault::CorruptDownload(s) if object.key.ends_with(s.as_str())))
            .is_some()
        {
            flip_byte(&self.root.join(&object.key), 1000);
        }
        self.inner.download(object, dest, progress).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.count("delete", key);
        self.inner.delete(key).await
    }
}

/// The byte count a stalled upload reports: 45% of `total`, rounded up.
pub fn forty_five_percent(total: u64) -> u64 {
    (total * 45).div_ceil(100)
}

/// Flips the byte at `offset` of a file.
pub fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// Every regular file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Runs qemu-img, panicking on failure.
pub fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed (e2e/scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether two images hold the same guest content (`qemu-img compare`).
pub fn same_content(a: &Path, b: &Path) -> bool {
    std::process::Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

/// A raw image of `size` bytes with recognisable, mostly sparse content.
pub fn raw_image(path: &Path, size: usize, seed: u8) {
    let mut data = vec![0u8; size];
    for (i, chunk) in data.chunks_mut(64 * 1024).enumerate() {
        if i % 3 == 0 {
            let fill = seed.wrapping_add(i as u8);
            let n = 4096.min(chunk.len());
            chunk[..n].fill(fill);
        }
    }
    data[size - 16..].copy_from_slice(b"end-of-the-disk!");
    std::fs::write(path, data).unwrap();
}

/// The world a migration runs in.
pub struct World {
    pub dir: tempfile::TempDir,
    pub source: FileProvider,
    pub target: FileProvider,
    pub stage: TestStage,
    pub scratch: PathBuf,
    pub plan: RunnerPlan,
    /// The source disk images as defined (for `qemu-img compare`), by disk name.
    pub originals: Vec<(String, PathBuf)>,
}

impl World {
    /// A running source VM with a 6 MiB qcow2 `vda` and a 3 MiB raw `vdb`, and a target of `kind`.
    pub fn two_disks(kind: ProviderType) -> World {
        World::new(
            kind,
            &[
                ("vda", crd::DiskFormat::Qcow2, 6 << 20),
                ("vdb", crd::DiskFormat::Raw, 3 << 20),
            ],
        )
    }

    /// A running source VM with one 4 MiB qcow2 disk.
    pub fn one_disk(kind: ProviderType) -> World {
        World::new(kind, &[("vda", crd::DiskFormat::Qcow2, 4 << 20)])
    }

    pub fn new(kind: ProviderType, disks: &[(&str, crd::DiskFormat, usize)]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["source", "target", "images", "scratch"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let source = FileProvider::new(root.join("source"), ProviderType::Libvirt);
        let target = FileProvider::new(root.join("target"), kind);
        let stage = TestStage::new(&root.join("stage"));

        let mut files = Vec::new();
        let mut originals = Vec::new();
        for (i, (name, format, size)) in disks.iter().enumerate() {
            let raw = root.join("images").join(format!("{name}.raw"));
            raw_image(&raw, *size, 17 * (i as u8 + 1));
            let image = root.join("images").join(format!("{name}.{format}"));
            if *format != crd::DiskFormat::Raw {
                qemu_img(&[
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    format.as_str(),
                    raw.to_str().unwrap(),
                    image.to_str().unwrap(),
                ]);
            }
            files.push(DiskFile {
                name: name.to_string(),
                format: *format,
                file: format!("{name}.{format}"),
            });
            originals.push((name.to_string(), image));
        }
        let vm = VmFile {
            id: "src-0001".into(),
            cpus: 2,
            memory_bytes: 2 << 30,
            uefi: false,
            running: true,
            nics: 1,
            disks: files.clone(),
            snapshots: Vec::new(),
            networks: vec!["virbr0".into()],
            owner: None,
        };
        let images: Vec<(&str, &Path)> = files
            .iter()
            .zip(&originals)
            .map(|(f, (_, p))| (f.file.as_str(), p.as_path()))
            .collect();
        source.define_vm(SOURCE_VM, &vm, &images).unwrap();

        let plan = RunnerPlan {
            migration: MigrationRef {
                namespace: "default".into(),
                name: "move-web".into(),
                uid: "5f0c2a8e-1b7d-4c1e-9a8b-3d2e1f0a9b8c".into(),
            },
            attempt: 1,
            final_attempt: false,
            mode: RunnerMode::Migrate,
            source: provider_plan("kvm-a", ProviderType::Libvirt),
            source_vm: VmPlan {
                name: SOURCE_VM.into(),
                id: Some("src-0001".into()),
            },
            target: provider_plan("target", kind),
            target_name: TARGET_VM.into(),
            target_storage_hint: None,
            target_network_hints: Vec::new(),
            target_disk_format: None,
            target_resources: None,
            storage: StorageSpec {
                type_: StorageType::Nfs,
                bucket: None,
                endpoint: Some("nfs.local".into()),
                region: None,
                path: Some("/exports".into()),
                credentials_secret_ref: None,
            },
            cleanup_policy: CleanupPolicy::default(),
            cutover: Default::default(),
            allow_loopback_endpoints: true,
        };
        World {
            scratch: root.join("scratch"),
            dir,
            source,
            target,
            stage,
            plan,
            originals,
        }
    }

    /// Runs one attempt from `previous` status; returns the result and what was written.
    pub async fn run(&self, previous: &VMMigrationStatus) -> (Result<String>, Recorder) {
        let recorder = Recorder::default();
        let status = StatusWriter::new(Box::new(recorder.clone()), previous);
        let pipeline = Pipeline::new(
            self.plan.clone(),
            Box::new(self.source.clone()),
            Box::new(self.target.clone()),
            Box::new(self.stage.clone()),
            status,
            &self.scratch,
        )
        .tries(1);
        (pipeline.run().await, recorder)
    }

    /// The images of the target VM, in disk order.
    pub fn target_images(&self) -> Vec<(crd::DiskFormat, PathBuf)> {
        let vm = self.target.read_vm(TARGET_VM).unwrap();
        vm.disks
            .iter()
            .map(|d| (d.format, self.target.vm_dir(TARGET_VM).join(&d.file)))
            .collect()
    }
}

fn provider_plan(name: &str, kind: ProviderType) -> ProviderPlan {
    ProviderPlan {
        name: format!("default/{name}"),
        type_: kind,
        endpoint: match kind {
            ProviderType::Libvirt => "qemu:///system".into(),
            _ => "https://127.0.0.1:8443".into(),
        },
        insecure_skip_verify: false,
        defaults: None,
        ssh: None,
    }
}

/// The condition of `type_` in a status.
pub fn condition<'a>(status: &'a VMMigrationStatus, type_: &str) -> &'a crd::Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", status.conditions))
}
