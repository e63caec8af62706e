//! The e2e world's Proxmox VE simulator for the Proxmox provider tests: endpoints from
//! `e2e/.world/pvesim.env` (written by `e2e/scripts/pvesim-up.sh`), the runner's own API client,
//! the fixture VMs' expected bytes (`pvesim::fixture`), VMs of the tests' own (copies of the source
//! VM, linked clones of the templates made as the fixture makes them, running or not), and guards
//! that remove them even when a test fails. The fixture VMs themselves are only read (and
//! snapshotted/unsnapshotted by nothing here).
//!
//! Guards clean up in `Drop` through `block_in_place`: tests using them run on the multi-threaded
//! runtime (`#[tokio::test(flavor = "multi_thread")]`).

#![allow(dead_code)] // each test file uses a different part

use runner::endpoint::Guard;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crd::plan::ProviderPlan;
use crd::{ProviderDefaults, ProviderType, SshTarget};
use pvesim::datadir::DataDir;
use pvesim::fixture::{DiskSpec, Pattern, VmSpec};
use pvesim::qemu_config::VmState;
use pvesim::storage::NodeConfig;
use reqwest::Method;
use runner::credentials::Credentials;
use runner::provider::proxmox::config::{VmConfig, parse_size};
use runner::provider::proxmox::{Client, ProxmoxProvider, TlsOptions};
use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    manifest_dir().join("..")
}

const MIB: u64 = 1 << 20;

/// The running simulator.
pub struct World {
    env: HashMap<String, String>,
    /// The fixture's system disk size (`pvesim fixture --disk-size`).
    pub disk_size: u64,
}

impl World {
    /// Reads `pvesim.env`; fails the test when the simulator is not set up.
    pub fn load() -> World {
        let file = std::env::var("VRG_WORLD")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join("e2e/.world"))
            .join("pvesim.env");
        assert!(
            file.is_file(),
            "{} is missing: the Proxmox tests need the e2e world's Proxmox simulator; run \
             `e2e/scripts/endpoints-up.sh && e2e/scripts/pvesim-up.sh`",
            file.display()
        );
        let env: HashMap<String, String> = runner::world_env::source(&file, "VRG_");
        let mut world = World { env, disk_size: 0 };
        let source = VmState::load(&world.data(), world.node(), 100)
            .unwrap_or_else(|e| panic!("the fixture VM 100 is missing ({e}): run pvesim-up.sh"));
        let scsi0 = source.config.get("scsi0").expect("VM 100 has scsi0");
        world.disk_size = scsi0
            .split(',')
            .find_map(|o| o.strip_prefix("size="))
            .and_then(parse_size)
            .expect("scsi0 has a size");
        world
    }

    /// A variable of pvesim.env.
    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from pvesim.env"))
    }

    pub fn url(&self) -> &str {
        self.var("VRG_PVE_URL")
    }

    pub fn node(&self) -> &str {
        self.var("VRG_PVE_NODE")
    }

    /// The simulator's data directory.
    pub fn data(&self) -> DataDir {
        DataDir::open(Path::new(self.var("VRG_PVE_DATA_DIR"))).expect("pvesim data dir")
    }

    pub fn ca_pem(&self) -> String {
        read(self.var("VRG_PVE_CA"))
    }

    /// A provider plan: defaults node, storage `local`, bridge `vmbr0`; the world's SSH login.
    pub fn plan(&self) -> ProviderPlan {
        ProviderPlan {
            name: "default/pve".into(),
            type_: ProviderType::Proxmox,
            endpoint: self.url().into(),
            insecure_skip_verify: false,
            defaults: Some(ProviderDefaults {
                cluster: Some(self.node().into()),
                datastore: Some("local".into()),
                network: Some("vmbr0".into()),
                ..ProviderDefaults::default()
            }),
            ssh: Some(SshTarget {
                host: Some(self.var("VRG_PVE_SSH_HOST").into()),
                port: Some(self.var("VRG_PVE_SSH_PORT").parse().expect("port")),
                user: Some(self.var("VRG_PVE_SSH_USER").into()),
            }),
        }
    }

    /// The full token, the CA, the SSH key and known_hosts under `scope`, added to `creds`.
    pub fn creds(&self, scope: &str, creds: Credentials) -> Credentials {
        creds
            .with(scope, "token_id", self.var("VRG_PVE_TOKEN_ID"))
            .with(scope, "token_secret", self.var("VRG_PVE_TOKEN_SECRET"))
            .with(scope, "ca.crt", self.ca_pem())
            .with(scope, "ssh-privatekey", read(self.var("VRG_PVE_SSH_KEY")))
            .with(
                scope,
                "known_hosts",
                read(self.var("VRG_PVE_SSH_KNOWN_HOSTS")),
            )
    }

    /// A provider with [`World::creds`].
    pub fn provider(&self, scope: &str) -> ProxmoxProvider {
        ProxmoxProvider::new(
            &self.plan(),
            &self.creds(scope, Credentials::default()),
            scope,
            Guard::new(true),
        )
        .unwrap()
    }

    /// The runner's API client with the full token.
    pub async fn client(&self) -> Arc<Client> {
        let tls = TlsOptions {
            insecure_skip_verify: false,
            ca_pem: Some(self.ca_pem()),
        };
        let c = Client::new(
            self.url(),
            self.var("VRG_PVE_TOKEN_ID"),
            self.var("VRG_PVE_TOKEN_SECRET"),
            &tls,
            Guard::new(true),
        )
        .await
        .unwrap();
        let _: Value = c.get(&["version"], &[]).await.unwrap_or_else(|e| {
            panic!(
                "the simulator at {} does not answer (run pvesim-up.sh): {e}",
                self.url()
            )
        });
        Arc::new(c)
    }

    /// A fixture VM as the simulator made it.
    pub fn fixture(&self, vmid: u32) -> VmSpec {
        pvesim::fixture::vm(self.disk_size, vmid).unwrap_or_else(|| panic!("no fixture VM {vmid}"))
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// A name no other test (or run) uses.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "vrg-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A VMID in a range of the tests' own (7000..9000), free in the simulator.
pub fn free_vmid(world: &World) -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    let data = world.data();
    loop {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let vmid = 7000 + (std::process::id() * 37 + n * 7) % 2000;
        if !VmState::exists(&data, vmid) {
            return vmid;
        }
    }
}

/// Runs `f` to completion from a `Drop` (multi-threaded runtime only).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// Stops and destroys a VM (with its disks and snapshots) when dropped.
pub struct VmGuard {
    pub client: Arc<Client>,
    pub node: String,
    pub vmid: u32,
    pub name: String,
}

impl VmGuard {
    /// Destroys the VM now; absent is fine, and so is a VMID that PVE handed out again to a VM of
    /// another name (another test's), which is left alone.
    pub async fn destroy(&self) {
        let id = self.vmid.to_string();
        let node = self.node.as_str();
        let cfg: Result<Value, _> = self
            .client
            .get(&["nodes", node, "qemu", &id, "config"], &[])
            .await;
        match cfg {
            Ok(c) if c["name"].as_str() == Some(self.name.as_str()) => {}
            _ => return,
        }
        let _ = self
            .client
            .run_task(
                Method::POST,
                &["nodes", node, "qemu", &id, "status", "stop"],
                &[],
                TASK,
            )
            .await;
        let params = [
            ("purge", "1".to_string()),
            ("destroy-unreferenced-disks", "1".to_string()),
        ];
        if let Err(e) = self
            .client
            .run_task(Method::DELETE, &["nodes", node, "qemu", &id], &params, TASK)
            .await
        {
            eprintln!("cleanup: destroying VM {} ({}): {e}", self.name, self.vmid);
        }
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        block_on(self.destroy());
    }
}

const TASK: std::time::Duration = std::time::Duration::from_secs(300);

/// Deletes the import files whose names start with `prefix` (a test's VM name) when dropped.
pub struct ImportFilesGuard {
    pub client: Arc<Client>,
    pub node: String,
    pub prefix: String,
}

impl Drop for ImportFilesGuard {
    fn drop(&mut self) {
        block_on(async {
            for volid in import_files(&self.client, &self.node, "local", &self.prefix).await {
                let path = [
                    "nodes",
                    self.node.as_str(),
                    "storage",
                    "local",
                    "content",
                    volid.as_str(),
                ];
                let deleted: Result<Value, _> = self.client.delete(&path, &[]).await;
                if let Err(e) = deleted {
                    eprintln!("cleanup: deleting {volid}: {e}");
                }
            }
        });
    }
}

/// Which storage a test VM's disk is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Dir,
    LvmThin,
}

/// A VM of a test: its guard and the guest content each disk must have.
pub struct TestVm {
    pub guard: VmGuard,
    pub disks: Vec<DiskSpec>,
}

impl TestVm {
    pub fn name(&self) -> &str {
        &self.guard.name
    }
    pub fn vmid(&self) -> u32 {
        self.guard.vmid
    }
}

/// A copy of the source VM (`database-server`: scsi0 qcow2 on `local`, scsi1 on `local-lvm`)
/// named `name`, made with `import-from` of the fixture's disks, running when asked.
pub async fn copy_of_source(world: &World, name: &str, running: bool) -> TestVm {
    let client = world.client().await;
    let vmid = free_vmid(world);
    let spec = world.fixture(100);
    let params = vec![
        ("vmid", vmid.to_string()),
        ("name", name.to_string()),
        ("cores", "2".into()),
        ("memory", "512".into()),
        ("ostype", "l26".into()),
        ("scsihw", "virtio-scsi-single".into()),
        (
            "scsi0",
            format!("local:0,import-from={}", spec.disks[0].volid),
        ),
        (
            "scsi1",
            format!("local-lvm:0,import-from={}", spec.disks[1].volid),
        ),
        ("net0", "virtio,bridge=vmbr0".into()),
    ];
    let node = world.node().to_string();
    client
        .run_task(Method::POST, &["nodes", &node, "qemu"], &params, TASK)
        .await
        .unwrap_or_else(|e| panic!("creating {name} ({vmid}): {e}"));
    let guard = VmGuard {
        client,
        node,
        vmid,
        name: name.to_string(),
    };
    if running {
        start(&guard).await;
    }
    TestVm {
        guard,
        disks: spec.disks.clone(),
    }
}

/// Starts a VM.
pub async fn start(vm: &VmGuard) {
    let id = vm.vmid.to_string();
    vm.client
        .run_task(
            Method::POST,
            &["nodes", &vm.node, "qemu", &id, "status", "start"],
            &[],
            TASK,
        )
        .await
        .unwrap();
}

/// A linked clone of a template (900 on `local`, 901 on `local-lvm`) named `name`, made as
/// pve-storage's `clone_image` makes one (what the API's clone does on a template), with writes
/// of its own on top of the base's; running when asked.
pub async fn linked_clone(world: &World, name: &str, store: Store, running: bool) -> TestVm {
    let (template, storage_id) = match store {
        Store::Dir => (900, "local"),
        Store::LvmThin => (901, "local-lvm"),
    };
    let base = world.fixture(template).disks[0].clone();
    let data = world.data();
    let node_config = NodeConfig::load(&data).unwrap();
    let storage = node_config.storage(&data, storage_id).unwrap();
    let vmid = free_vmid(world);
    let quiet = |_: &str| {};
    let volid = storage
        .clone_image(&storage.parse_volid(base.volid).unwrap(), vmid, &quiet)
        .unwrap_or_else(|e| panic!("cloning {}: {e}", base.volid));
    let size = base.size;
    let own: Vec<Pattern> = vec![(MIB, MIB, 0xa1), (size - 2 * MIB, MIB, 0xa2)];
    let file = storage.file(&storage.parse_volid(&volid).unwrap());
    let format = if store == Store::Dir { "qcow2" } else { "raw" };
    qemu_io(&file, format, &own);
    let mut config = BTreeMap::new();
    for (k, v) in [
        ("name", name.to_string()),
        ("cores", "1".into()),
        ("sockets", "2".into()),
        ("memory", "1024".into()),
        ("ostype", "win10".into()),
        ("bios", "seabios".into()),
        ("scsihw", "virtio-scsi-single".into()),
        (
            "scsi0",
            format!("{volid},size={}", pvesim::qemu_config::format_size(size)),
        ),
        (
            "net0",
            format!(
                "virtio=BC:24:11:7E:{:02X}:{:02X},bridge=vmbr0",
                vmid / 256,
                vmid % 256
            ),
        ),
        ("boot", "order=scsi0".into()),
    ] {
        config.insert(k.to_string(), v);
    }
    let state = VmState {
        config,
        snapshots: BTreeMap::new(),
        running_since: running.then(pvesim::datadir::now),
    };
    state.save(&data, vmid).unwrap();
    let mut expected = base.clone();
    expected.patterns.extend(own.iter().copied());
    expected.key = "scsi0";
    let client = world.client().await;
    TestVm {
        guard: VmGuard {
            client,
            node: world.node().into(),
            vmid,
            name: name.to_string(),
        },
        disks: vec![expected],
    }
}

/// `qemu-io -c "write -P <byte> <offset> <length>"` of each pattern into an image.
pub fn qemu_io(file: &Path, format: &str, patterns: &[Pattern]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", format]);
    for (offset, length, byte) in patterns {
        cmd.args(["-c", &format!("write -P 0x{byte:02x} {offset} {length}")]);
    }
    let out = cmd.arg(file).output().expect("qemu-io");
    assert!(
        out.status.success(),
        "qemu-io {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A VM's config now.
pub async fn config(client: &Client, node: &str, vmid: u32) -> VmConfig {
    let data: Value = client
        .get(&["nodes", node, "qemu", &vmid.to_string(), "config"], &[])
        .await
        .unwrap();
    VmConfig::from_json(&data)
}

/// A VM's config entries without the `digest` (which every write changes).
pub async fn config_entries(client: &Client, node: &str, vmid: u32) -> BTreeMap<String, String> {
    let data: Value = client
        .get(&["nodes", node, "qemu", &vmid.to_string(), "config"], &[])
        .await
        .unwrap();
    data.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "digest")
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect()
}

/// The names of a VM's snapshots (without `current`).
pub async fn snapshots(client: &Client, node: &str, vmid: u32) -> Vec<String> {
    let list: Vec<Value> = client
        .get(&["nodes", node, "qemu", &vmid.to_string(), "snapshot"], &[])
        .await
        .unwrap();
    list.iter()
        .filter_map(|s| s.get("name")?.as_str())
        .filter(|n| *n != "current")
        .map(str::to_string)
        .collect()
}

/// The file behind a volume (a dir storage's image, an LV's device path) and its format.
pub async fn volume_file(client: &Client, node: &str, volid: &str) -> (PathBuf, String) {
    let storage = volid.split(':').next().unwrap();
    let info: Value = client
        .get(&["nodes", node, "storage", storage, "content", volid], &[])
        .await
        .unwrap_or_else(|e| panic!("volume {volid}: {e}"));
    (
        PathBuf::from(info["path"].as_str().unwrap()),
        info["format"].as_str().unwrap().to_string(),
    )
}

/// The import files of `storage` whose names start with `prefix`.
pub async fn import_files(client: &Client, node: &str, storage: &str, prefix: &str) -> Vec<String> {
    let list: Vec<Value> = client
        .get(
            &["nodes", node, "storage", storage, "content"],
            &[("content", "import".into())],
        )
        .await
        .unwrap();
    list.iter()
        .filter_map(|v| v.get("volid")?.as_str())
        .filter(|v| {
            v.split_once(":import/")
                .is_some_and(|(_, f)| f.starts_with(prefix))
        })
        .map(str::to_string)
        .collect()
}

/// Writes a disk's expected guest bytes to `dir/<key>.raw` and returns the path.
pub fn reference(spec: &DiskSpec, dir: &Path) -> PathBuf {
    let path = dir.join(format!("{}-{:x}.raw", spec.key, spec.size));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(spec.size).unwrap();
    drop(f);
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for (offset, length, byte) in &spec.patterns {
        use std::io::{Seek as _, SeekFrom, Write as _};
        f.seek(SeekFrom::Start(*offset)).unwrap();
        f.write_all(&vec![*byte; *length as usize]).unwrap();
    }
    path
}

/// Whether an image (of `format`) holds exactly a raw reference's guest content
/// (`qemu-img compare`, force-shared: the simulator may hold it).
pub fn holds(image: &Path, format: &str, reference: &Path) -> bool {
    let out = Command::new("qemu-img")
        .args(["compare", "-U", "-f", format, "-F", "raw"])
        .arg(image)
        .arg(reference)
        .output()
        .expect("qemu-img");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "qemu-img compare {} {}: {}",
            image.display(),
            reference.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// This package's directory, as `cargo test` gives it when the test runs: the cargo target dir is
/// shared between checkouts (CI's clones reuse this machine's builds), so a test binary built in
/// another checkout must not read that checkout's files through a path fixed at compile time.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
