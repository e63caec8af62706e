//! The e2e world's libvirtd for the libvirt provider tests: endpoints from `e2e/.world/endpoints.env`
//! (written by `make e2e-up`), the source-domain fixture script, virsh, qemu-img, and guards that
//! remove what a test created even when it fails.

#![allow(dead_code)] // each test file uses a different part

use runner::endpoint::Guard;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crd::plan::ProviderPlan;
use crd::{
    DiskFormat, ProviderType, SnapshotHandle, StorageSpec, StorageType, TargetDiskHandle,
    TargetVmHandle,
};
use runner::credentials::Credentials;
use runner::progress::Progress;
use runner::provider::libvirt::LibvirtProvider;
use runner::provider::{
    Firmware, ImportInput, LocalImage, NewDisk, NewVm, OsFamily, Source, SourceDisk, Target,
    VmShape,
};
use runner::storage::StageOptions;

/// The repository root.
pub fn repo_root() -> PathBuf {
    manifest_dir().join("..")
}

/// The running e2e world.
pub struct World {
    env: HashMap<String, String>,
}

impl World {
    /// Reads `endpoints.env`; fails the test when the world is not up.
    pub fn load() -> World {
        let file = std::env::var("VRG_WORLD")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join("e2e/.world"))
            .join("endpoints.env");
        assert!(
            file.is_file(),
            "{} is missing: the libvirt tests need the e2e world's libvirtd; run `make e2e-up`",
            file.display()
        );
        let env = runner::world_env::source(&file, "VRG_");
        let world = World { env };
        let version = world.virsh(&["version"]);
        assert!(
            version.status.success(),
            "libvirtd at {} does not answer (run `make e2e-up`): {}",
            world.var("VRG_LIBVIRT_URI"),
            String::from_utf8_lossy(&version.stderr)
        );
        world
    }

    /// A variable of endpoints.env.
    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from endpoints.env"))
    }

    pub fn uri(&self) -> &str {
        self.var("VRG_LIBVIRT_URI")
    }

    pub fn pool_dir(&self) -> PathBuf {
        PathBuf::from(self.var("VRG_LIBVIRT_POOL_DIR"))
    }

    /// A provider plan for `endpoint`.
    pub fn plan_for(&self, endpoint: &str) -> ProviderPlan {
        ProviderPlan {
            name: "default/kvm-e2e".into(),
            type_: ProviderType::Libvirt,
            endpoint: endpoint.into(),
            insecure_skip_verify: false,
            defaults: None,
            ssh: None,
        }
    }

    /// The SASL credentials of the world's libvirtd under `scope`.
    pub fn creds(&self, scope: &str) -> Credentials {
        Credentials::default()
            .with(scope, "username", self.var("VRG_LIBVIRT_USER"))
            .with(scope, "password", self.var("VRG_LIBVIRT_PASSWORD"))
    }

    /// A provider on the world's libvirtd.
    pub fn provider(&self, scope: &str) -> LibvirtProvider {
        LibvirtProvider::new(
            &self.plan_for(self.uri()),
            &self.creds(scope),
            scope,
            Guard::new(true),
        )
        .unwrap()
    }

    /// Runs virsh against the world's libvirtd.
    pub fn virsh(&self, args: &[&str]) -> std::process::Output {
        Command::new("virsh")
            .arg("-q")
            .arg("-c")
            .arg(self.uri())
            .args(args)
            .env("LIBVIRT_AUTH_FILE", self.var("VRG_LIBVIRT_AUTH_FILE"))
            .output()
            .expect("virsh")
    }

    /// Runs virsh and returns its stdout; panics on failure.
    pub fn virsh_ok(&self, args: &[&str]) -> String {
        let out = self.virsh(args);
        assert!(
            out.status.success(),
            "virsh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Defines the two-disk source domain `name` with e2e/fixtures/libvirt/make-source-vm.sh and
    /// writes its reference images (vda.raw, vdb.raw) to `ref_dir`.
    pub fn make_source_vm(&self, name: &str, running: bool, ref_dir: &Path) -> DomainGuard<'_> {
        self.make_vm(name, running, &[], ref_dir)
    }

    /// As [`World::make_source_vm`], with vda `vda_mib` MiB holding `vda_mib - 16` MiB of random
    /// bytes: a disk whose transfer takes a while.
    pub fn make_big_source_vm(
        &self,
        name: &str,
        running: bool,
        vda_mib: u64,
        ref_dir: &Path,
    ) -> DomainGuard<'_> {
        self.make_vm(name, running, &["--vda-mib", &vda_mib.to_string()], ref_dir)
    }

    /// As [`World::make_source_vm`], with vda a linked clone: a qcow2 overlay (`<name>-vda.qcow2`)
    /// with writes of its own on a base image (`<name>-base.qcow2`).
    pub fn make_linked_clone_vm(
        &self,
        name: &str,
        running: bool,
        ref_dir: &Path,
    ) -> DomainGuard<'_> {
        self.make_vm(name, running, &["--linked-clone"], ref_dir)
    }

    fn make_vm(&self, name: &str, running: bool, args: &[&str], ref_dir: &Path) -> DomainGuard<'_> {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("e2e/fixtures/libvirt/make-source-vm.sh"))
            .arg(name)
            .arg("--ref-dir")
            .arg(ref_dir)
            .envs(&self.env);
        if !running {
            cmd.arg("--stopped");
        }
        cmd.args(args);
        let out = cmd.output().expect("make-source-vm.sh");
        assert!(
            out.status.success(),
            "make-source-vm.sh: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.guard(name)
    }

    /// Removes domain `name` and every volume of the default pool whose name starts with `name`
    /// when dropped.
    pub fn guard(&self, name: &str) -> DomainGuard<'_> {
        DomainGuard {
            world: self,
            name: name.to_string(),
        }
    }

    /// Volume names in the world's pool starting with `prefix`.
    pub fn volumes(&self, prefix: &str) -> Vec<String> {
        self.virsh(&["pool-refresh", "default"]);
        self.virsh_ok(&["vol-list", "default"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// The disk paths of libvirt domain `name`, in bus order (`virsh -q`: no header).
    pub fn domain_disks(&self, name: &str) -> Vec<String> {
        self.virsh_ok(&["domblklist", name])
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .filter(|p| p != "-")
            .collect()
    }

    /// What a failed migration must leave of its source: running on the disks it had, holding the
    /// reference content, with no snapshot of the migration's.
    pub fn assert_source_unchanged(&self, source: &str, disks: &[String], refs: &Path) {
        assert_eq!(self.virsh_ok(&["domstate", source]).trim(), "running");
        assert_eq!(self.domain_disks(source), disks, "{source}'s disks");
        for (disk, r) in disks.iter().zip(["vda.raw", "vdb.raw"]) {
            if !same_content(Path::new(disk), &refs.join(r)) {
                let out = Command::new("qemu-img")
                    .args(["compare", "-U"])
                    .arg(disk)
                    .arg(refs.join(r))
                    .output()
                    .unwrap();
                let info = Command::new("qemu-img")
                    .args(["info", "-U", disk])
                    .output()
                    .unwrap();
                panic!(
                    "{source}: {disk} changed: {}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&info.stdout)
                );
            }
        }
        let snapshots = self.virsh_ok(&["snapshot-list", source, "--name"]);
        assert!(snapshots.trim().is_empty(), "snapshots left: {snapshots}");
    }
}

/// Removes a test's domain and volumes.
pub struct DomainGuard<'a> {
    world: &'a World,
    name: String,
}

impl DomainGuard<'_> {
    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for DomainGuard<'_> {
    fn drop(&mut self) {
        let w = self.world;
        w.virsh(&["destroy", &self.name]);
        w.virsh(&["undefine", &self.name, "--snapshots-metadata", "--nvram"]);
        for vol in w.volumes(&self.name) {
            w.virsh(&["vol-delete", "--pool", "default", &vol]);
        }
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `qemu-img compare` of two images (force-shared: the source may be in use). True when the guest
/// content is identical.
pub fn same_content(a: &Path, b: &Path) -> bool {
    let out = Command::new("qemu-img")
        .args(["compare", "-U"])
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "qemu-img compare {} {}: {}",
            a.display(),
            b.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Converts any image to a raw file (force-shared) and returns its bytes.
pub fn guest_bytes(image: &Path, scratch: &Path) -> Vec<u8> {
    let raw = scratch.join(format!(
        "{}.guest.raw",
        image.file_name().unwrap().to_string_lossy()
    ));
    let out = Command::new("qemu-img")
        .args(["convert", "-U", "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&raw).unwrap();
    std::fs::remove_file(raw).unwrap();
    bytes
}

/// `qemu-img convert` between formats.
pub fn convert(from: &Path, to: &Path, format: &str) {
    let out = Command::new("qemu-img")
        .args(["convert", "-O", format])
        .arg(from)
        .arg(to)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A target VM of `disks` (name, format, virtual size), stopped, on no network, in the default pool.
pub fn new_vm(
    name: &str,
    cpus: u32,
    memory_bytes: u64,
    disks: &[(&str, DiskFormat, u64)],
) -> NewVm {
    NewVm {
        name: name.to_string(),
        cpus,
        memory_bytes,
        firmware: Firmware::Bios,
        os: OsFamily::Other,
        disks: disks
            .iter()
            .map(|(n, format, size)| NewDisk {
                name: n.to_string(),
                virtual_size: *size,
                format: *format,
            })
            .collect(),
        networks: Vec::new(),
        storage_hint: None,
        owner: OWNER.to_string(),
    }
}

/// The owner mark the tests' target VMs carry.
pub const OWNER: &str = "uid-libvirt-tests";

/// Imports disk `index` of `vm` from `image` in a session of its own; returns the volume path.
pub async fn import_one(
    p: &LibvirtProvider,
    vm: &NewVm,
    index: usize,
    image: &LocalImage,
    progress: &Progress,
) -> runner::Result<String> {
    let mut session = Target::import(p, vm, &vec![None; vm.disks.len()]).await?;
    let handle = session
        .import_disk(index, ImportInput::File(image), progress)
        .await;
    session.abort().await?;
    match handle? {
        Some(TargetDiskHandle::Libvirt { path }) => Ok(path),
        other => panic!("a libvirt import yields a volume, not {other:?}"),
    }
}

/// Defines `vm` on the volumes at `paths` (an import session that only finishes).
pub async fn create(
    p: &LibvirtProvider,
    vm: &NewVm,
    paths: &[String],
) -> runner::Result<TargetVmHandle> {
    Target::import(p, vm, &handles(paths)).await?.finish().await
}

/// Disk handles of volume paths.
pub fn handles(paths: &[String]) -> Vec<Option<TargetDiskHandle>> {
    paths
        .iter()
        .map(|p| Some(TargetDiskHandle::Libvirt { path: p.clone() }))
        .collect()
}

/// Exports one disk of `vm` (as of `snapshot`) into `dir` in a session of its own.
pub async fn export_one(
    p: &LibvirtProvider,
    vm: &VmShape,
    snapshot: Option<&SnapshotHandle>,
    disk: &SourceDisk,
    dir: &Path,
    progress: &Progress,
) -> runner::Result<LocalImage> {
    let mut session = Source::export(p, vm, snapshot).await?;
    let image = session.export_disk(disk, dir, progress).await;
    match &image {
        Ok(_) => session.finish().await?,
        Err(_) => session.abort().await,
    }
    image
}

/// One staging backend of the world.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    S3,
    Http,
    Nfs,
}

/// A staging backend ready for a pipeline: the spec, every credential, the stage options.
pub struct Run {
    pub spec: StorageSpec,
    pub creds: Credentials,
    pub options: StageOptions,
    _nfs_dir: Option<tempfile::TempDir>,
}

impl World {
    /// The world's `via` backend, with its credentials added to `creds` (the providers').
    pub fn staging(&self, via: Backend, creds: Credentials) -> Run {
        let none = StorageSpec {
            type_: StorageType::Nfs,
            bucket: None,
            endpoint: None,
            region: None,
            path: None,
            credentials_secret_ref: None,
        };
        match via {
            Backend::S3 => Run {
                spec: StorageSpec {
                    type_: StorageType::S3,
                    bucket: Some(self.var("VRG_S3_BUCKET").into()),
                    endpoint: Some(self.var("VRG_S3_ENDPOINT").into()),
                    region: Some(self.var("VRG_S3_REGION").into()),
                    ..none
                },
                creds: creds
                    .with("storage", "accessKey", self.var("VRG_S3_ACCESS_KEY"))
                    .with("storage", "secretKey", self.var("VRG_S3_SECRET_KEY")),
                options: StageOptions {
                    guard: Guard::new(true),
                    ..StageOptions::default()
                },
                _nfs_dir: None,
            },
            Backend::Http => Run {
                spec: StorageSpec {
                    type_: StorageType::Http,
                    endpoint: Some(self.var("VRG_HTTP_URL").into()),
                    ..none
                },
                creds: creds.with("storage", "token", self.var("VRG_HTTP_TOKEN")),
                options: StageOptions {
                    guard: Guard::new(true),
                    ..StageOptions::default()
                },
                _nfs_dir: None,
            },
            Backend::Nfs => {
                // the runner pod mounts the export; here a local directory stands for the mount
                let dir = tempfile::tempdir().unwrap();
                Run {
                    spec: StorageSpec {
                        endpoint: Some("nfs.local".into()),
                        path: Some("/exports".into()),
                        ..none
                    },
                    creds,
                    options: StageOptions {
                        nfs_root: dir.path().to_path_buf(),
                        guard: Guard::new(true),
                        ..StageOptions::default()
                    },
                    _nfs_dir: Some(dir),
                }
            }
        }
    }
}

/// This package's directory, as `cargo test` gives it when the test runs: the cargo target dir is
/// shared between checkouts (CI's clones reuse this machine's builds), so a test binary built in
/// another checkout must not read that checkout's files through a path fixed at compile time.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
