//! The e2e world's vcsim for the vSphere client tests: endpoints from `e2e/.world/endpoints.env`
//! (written by `make e2e-up`), a logged-in client, VMDK fixtures made with qemu-img, unique names,
//! and guards that remove what a test created even when it fails.
//!
//! Guards clean up in `Drop` through `block_in_place`: tests using them run on the multi-threaded
//! runtime (`#[tokio::test(flavor = "multi_thread")]`).

#![allow(dead_code)] // each test file uses a different part

use runner::endpoint::Guard;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use runner::provider::vsphere::{Client, ConfigSpec, Datacenter, MoRef, PowerState, TlsOptions};

/// The repository root.
pub fn repo_root() -> PathBuf {
    manifest_dir().join("..")
}

/// The datastore every vcsim inventory has.
pub const DATASTORE: &str = "LocalDS_0";

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
            "{} is missing: the vSphere client tests need the e2e world's vcsim; run `make e2e-up`",
            file.display()
        );
        let env = runner::world_env::source(&file, "VRG_");
        World { env }
    }

    /// A variable of endpoints.env.
    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from endpoints.env"))
    }

    /// vcsim's SDK URL.
    pub fn url(&self) -> &str {
        self.var("VRG_VCSIM_URL")
    }

    pub fn user(&self) -> &str {
        self.var("VRG_VCSIM_USER")
    }

    pub fn password(&self) -> &str {
        self.var("VRG_VCSIM_PASSWORD")
    }

    /// PEM of the CA that signed vcsim's certificate.
    pub fn ca_pem(&self) -> String {
        let path = self.var("VRG_VCSIM_CA");
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    /// TLS options trusting the world's CA.
    pub fn tls(&self) -> TlsOptions {
        TlsOptions {
            insecure_skip_verify: false,
            ca_pem: Some(self.ca_pem()),
        }
    }

    /// A client connected (CA-verified) but not logged in.
    pub async fn connect(&self) -> Client {
        Client::connect(self.url(), self.tls(), Guard::new(true))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "vcsim at {} does not answer (run `make e2e-up`): {e}",
                    self.url()
                )
            })
    }

    /// A logged-in client.
    pub async fn client(&self) -> Arc<Client> {
        let c = self.connect().await;
        c.login(self.user(), self.password()).await.expect("login");
        Arc::new(c)
    }
}

/// A name no other test (or run) uses: `vrg-<what>-<pid>-<n>-<time>`.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "vrg-{what}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `f` to completion from a `Drop` (multi-threaded runtime only).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// Powers off and destroys a VM when dropped.
pub struct VmGuard {
    pub client: Arc<Client>,
    pub vm: MoRef,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        block_on(async {
            if let Ok(info) = self.client.vm_info(&self.vm).await {
                if info.power_state == PowerState::PoweredOn {
                    let _ = self.client.power_off(&self.vm).await;
                }
                if let Err(e) = self.client.destroy(&self.vm).await {
                    eprintln!("cleanup: destroying {}: {e}", self.vm);
                }
            }
        });
    }
}

/// Deletes a datastore file or directory when dropped.
pub struct DsGuard {
    pub client: Arc<Client>,
    pub dc: Datacenter,
    pub ds: String,
    pub path: String,
}

impl Drop for DsGuard {
    fn drop(&mut self) {
        block_on(async {
            if let Err(e) = self.client.ds_delete(&self.dc, &self.ds, &self.path).await {
                eprintln!("cleanup: deleting [{}] {}: {e}", self.ds, self.path);
            }
        });
    }
}

/// Creates a powered-off VM `name` in the default datacenter's first cluster pool on
/// [`DATASTORE`], with `spec` applied on top of name, path, 1 vCPU and 64 MiB.
pub async fn create_vm(client: &Arc<Client>, name: &str, mut spec: ConfigSpec) -> VmGuard {
    let dc = client.datacenter(None).await.expect("datacenter");
    let compute = client.default_compute_resource(&dc).await.expect("compute");
    let pool = client.root_resource_pool(&compute).await.expect("pool");
    spec.name(name)
        .vm_path(&format!("[{DATASTORE}]"))
        .guest_id("otherGuest64");
    let vm = client
        .create_vm(&dc.vm_folder, &pool, None, &spec)
        .await
        .unwrap_or_else(|e| panic!("creating VM {name}: {e}"));
    VmGuard {
        client: client.clone(),
        vm,
    }
}

/// `len` bytes of a pseudo-random pattern (no two 512-byte sectors alike).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// VMDK files made from one raw image with qemu-img.
pub struct Vmdks {
    pub dir: tempfile::TempDir,
    pub raw: Vec<u8>,
    /// monolithicFlat: descriptor and extent.
    pub flat_descriptor: PathBuf,
    pub flat_extent: PathBuf,
    /// streamOptimized (what NFC exports and imports carry).
    pub stream: PathBuf,
}

/// Makes a raw image of `len` bytes and its monolithicFlat and streamOptimized VMDKs, named
/// `<base>.vmdk` / `<base>-flat.vmdk` and `<base>-stream.vmdk`.
pub fn make_vmdks(base: &str, len: usize) -> Vmdks {
    let dir = tempfile::tempdir().unwrap();
    let raw = pattern(len, len as u64 ^ 0x5eed);
    let raw_path = dir.path().join("disk.raw");
    std::fs::write(&raw_path, &raw).unwrap();
    let flat_descriptor = dir.path().join(format!("{base}.vmdk"));
    let stream = dir.path().join(format!("{base}-stream.vmdk"));
    qemu_img(
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
        ],
        &raw_path,
        &flat_descriptor,
    );
    qemu_img(
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ],
        &raw_path,
        &stream,
    );
    let flat_extent = dir.path().join(format!("{base}-flat.vmdk"));
    assert!(
        flat_extent.is_file(),
        "qemu-img wrote no {}",
        flat_extent.display()
    );
    Vmdks {
        dir,
        raw,
        flat_descriptor,
        flat_extent,
        stream,
    }
}

fn qemu_img(args: &[&str], src: &Path, dst: &Path) {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(src)
        .arg(dst)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How a fixture disk is laid out on the datastore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskKind {
    /// monolithicFlat: a text descriptor and a flat extent (how VMFS keeps thick and thin disks).
    Flat,
    /// A single streamOptimized file.
    Stream,
    /// A linked-clone disk: a twoGbMaxExtentSparse delta whose parent is a flat base, with its own
    /// writes on top.
    Chain,
    /// A streamOptimized file whose name vcsim's `/folder` refuses (it answers 400 to any path
    /// with `..`), so the export takes the NFC lease, as on a datastore whose file interface refuses.
    NfcOnly,
}

/// A vcsim VM with real disk content: its guards and, per disk, the raw guest bytes expected.
pub struct SourceVm {
    pub vm: VmGuard,
    pub dir: DsGuard,
    pub name: String,
    /// The expected guest content of each disk, as a raw file.
    pub refs: Vec<PathBuf>,
    _local: tempfile::TempDir,
}

/// Makes VM `name` with one disk per `kinds` entry (each `mib` MiB, a different pattern), powered
/// on when `running`.
pub async fn source_vm(
    client: &Arc<Client>,
    name: &str,
    kinds: &[DiskKind],
    mib: usize,
    running: bool,
) -> SourceVm {
    let dc = client.datacenter(None).await.expect("datacenter");
    let dir = unique("src");
    client.ds_mkdir(&dc, DATASTORE, &dir, true).await.unwrap();
    let dir_guard = DsGuard {
        client: client.clone(),
        dc: dc.clone(),
        ds: DATASTORE.into(),
        path: dir.clone(),
    };
    let local = tempfile::tempdir().unwrap();
    let mut spec = ConfigSpec::new();
    let mut refs = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let (top, parents, files, reference) = lay_out(local.path(), i, *kind, mib << 20);
        if *kind == DiskKind::NfcOnly {
            // `/folder` refuses the name for PUT too: the file goes straight into the datastore's
            // directory on this machine
            let ds = client.find_datastore(&dc, DATASTORE).await.unwrap();
            let root = client.datastore_info(&ds).await.unwrap().url;
            let dest = Path::new(root.trim_start_matches("file://"))
                .join(&dir)
                .join(&top);
            std::fs::copy(local.path().join(&top), &dest)
                .unwrap_or_else(|e| panic!("copying {top} to {}: {e}", dest.display()));
        }
        for f in files.iter().filter(|_| *kind != DiskKind::NfcOnly) {
            let bytes = std::fs::read(local.path().join(f)).unwrap();
            let len = bytes.len() as u64;
            client
                .ds_put(
                    &dc,
                    DATASTORE,
                    &format!("{dir}/{f}"),
                    reqwest::Body::from(bytes),
                    len,
                )
                .await
                .unwrap_or_else(|e| panic!("PUT {f}: {e}"));
        }
        let mut file =
            runner::provider::vsphere::DiskFile::new(format!("[{DATASTORE}] {dir}/{top}"));
        file.parents = parents
            .iter()
            .map(|p| format!("[{DATASTORE}] {dir}/{p}"))
            .collect();
        file.capacity_bytes = Some((mib << 20) as u64);
        spec.add_disk(&[], file).unwrap();
        refs.push(reference);
    }
    spec.cpus(2, None).memory_mb(256);
    let vm = create_vm(client, name, spec).await;
    if running {
        client.power_on(&vm.vm).await.unwrap();
    }
    SourceVm {
        vm,
        dir: dir_guard,
        name: name.to_string(),
        refs,
        _local: local,
    }
}

/// Writes disk `i` of `kind` into `dir`: `(top file, parents, files to upload, raw reference)`.
fn lay_out(
    dir: &Path,
    i: usize,
    kind: DiskKind,
    len: usize,
) -> (String, Vec<String>, Vec<String>, PathBuf) {
    let raw = dir.join(format!("d{i}.raw"));
    std::fs::write(&raw, pattern(len, 0x1000 + i as u64)).unwrap();
    let convert = |sub: &str, out: &str| {
        qemu_img(
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
            ],
            &raw,
            &dir.join(out),
        )
    };
    match kind {
        DiskKind::Flat => {
            let top = format!("d{i}.vmdk");
            convert("monolithicFlat", &top);
            (
                top,
                vec![],
                vec![format!("d{i}.vmdk"), format!("d{i}-flat.vmdk")],
                raw,
            )
        }
        DiskKind::Stream => {
            let top = format!("d{i}-stream.vmdk");
            convert("streamOptimized", &top);
            (top.clone(), vec![], vec![top], raw)
        }
        DiskKind::NfcOnly => {
            let top = format!("d{i}..nfc.vmdk");
            convert("streamOptimized", &top);
            (top.clone(), vec![], vec![top], raw)
        }
        DiskKind::Chain => {
            let base = format!("d{i}.vmdk");
            convert("monolithicFlat", &base);
            let child = format!("d{i}-clone.vmdk");
            run_in(
                dir,
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "vmdk",
                    "-o",
                    "subformat=twoGbMaxExtentSparse",
                    "-b",
                    &base,
                    "-F",
                    "vmdk",
                    &child,
                ],
            );
            // the clone's own writes: the first MiB and a stretch in the middle
            run_in(
                dir,
                "qemu-io",
                &[
                    "-f",
                    "vmdk",
                    "-c",
                    "write -P 0x5a 0 1M",
                    "-c",
                    &format!("write -P 0xa5 {} 512k", len / 2),
                    &child,
                ],
            );
            let reference = dir.join(format!("d{i}-clone.raw"));
            run_in(
                dir,
                "qemu-img",
                &[
                    "convert",
                    "-f",
                    "vmdk",
                    "-O",
                    "raw",
                    &child,
                    &reference.display().to_string(),
                ],
            );
            let extents: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("d{i}-clone-s")))
                .collect();
            assert!(
                !extents.is_empty(),
                "qemu-img wrote no sparse extent for {child}"
            );
            let mut files = vec![base.clone(), format!("d{i}-flat.vmdk"), child.clone()];
            files.extend(extents);
            (child, vec![base], files, reference)
        }
    }
}

fn run_in(dir: &Path, tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect(tool);
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This package's directory, as `cargo test` gives it when the test runs: the cargo target dir is
/// shared between checkouts (CI's clones reuse this machine's builds), so a test binary built in
/// another checkout must not read that checkout's files through a path fixed at compile time.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
