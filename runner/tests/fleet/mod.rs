//! The world's three hypervisors as sources and targets of migrations run through the cluster: a
//! source VM of each type with a linked-clone disk among its disks and the guest content each disk
//! must arrive with, and the check of a target VM of each type against that content.

#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};

use crd::{ProviderType, VMMigration};
use serde_json::{Value, json};

use crate::cluster_world::{Cluster, adapt, virtual_machine};
use crate::{libvirt_world, proxmox_world, vsphere_world};

/// The Provider (of [`Cluster::objects`]) a VM of `kind` is on as a source, and the one it goes to
/// as a target.
pub fn providers(kind: ProviderType) -> (&'static str, &'static str) {
    match kind {
        ProviderType::Libvirt => ("libvirt-kvm", "kvm-host1"),
        ProviderType::Vsphere => ("vsphere-prod", "vcenter-prod"),
        ProviderType::Proxmox => ("proxmox-cluster", "proxmox-cluster"),
    }
}

/// Where a target of `kind` puts disks (`targetStorageHint`).
pub fn storage_hint(cluster: &Cluster, kind: ProviderType) -> String {
    match kind {
        ProviderType::Libvirt => cluster.var("VRG_LIBVIRT_POOL").to_string(),
        ProviderType::Vsphere => "LocalDS_0".into(),
        ProviderType::Proxmox => "local-lvm".into(),
    }
}

/// A running source VM and the guest content its disks must arrive with. Dropping it removes it.
pub struct Source {
    pub name: String,
    pub refs: Vec<PathBuf>,
    _keep: Box<dyn std::any::Any + Send>,
    _dir: tempfile::TempDir,
}

/// A running source VM of `kind` whose first disk is a linked clone (a qcow2 overlay on a base
/// image; a vSphere delta on a flat base; a Proxmox clone of a template), named `name`.
pub async fn source(kind: ProviderType, name: &str) -> Source {
    let dir = tempfile::tempdir().unwrap();
    let (refs, keep): (Vec<PathBuf>, Box<dyn std::any::Any + Send>) = match kind {
        ProviderType::Libvirt => {
            let world = Box::leak(Box::new(libvirt_world::World::load()));
            let guard = world.make_linked_clone_vm(name, true, dir.path());
            let refs = vec![dir.path().join("vda.raw"), dir.path().join("vdb.raw")];
            (refs, Box::new(guard))
        }
        ProviderType::Vsphere => {
            let client = vsphere_world::World::load().client().await;
            let kinds = [
                vsphere_world::DiskKind::Chain,
                vsphere_world::DiskKind::Flat,
            ];
            let vm = vsphere_world::source_vm(&client, name, &kinds, 8, true).await;
            (vm.refs.clone(), Box::new(vm))
        }
        ProviderType::Proxmox => {
            let world = proxmox_world::World::load();
            let vm =
                proxmox_world::linked_clone(&world, name, proxmox_world::Store::Dir, true).await;
            let refs = vm
                .disks
                .iter()
                .map(|d| proxmox_world::reference(d, dir.path()))
                .collect();
            (refs, Box::new(vm))
        }
    };
    Source {
        name: name.to_string(),
        refs,
        _keep: keep,
        _dir: dir,
    }
}

/// Checks that the target VM `name` of `kind` exists with `refs.len()` disks holding `refs`'
/// content (vSphere: that each upload was checked against the lease manifest, as the simulator
/// keeps no uploaded bytes); returns a guard that removes it.
pub async fn check_target(
    cluster: &Cluster,
    m: &VMMigration,
    kind: ProviderType,
    name: &str,
    refs: &[PathBuf],
) -> Box<dyn std::any::Any + Send> {
    let id = m
        .status
        .as_ref()
        .and_then(|s| s.target_vm_id.clone())
        .expect("a Ready migration names its target VM");
    match kind {
        ProviderType::Libvirt => {
            let world = Box::leak(Box::new(libvirt_world::World::load()));
            let guard = world.guard(name);
            let disks: Vec<String> = world
                .virsh_ok(&["domblklist", name])
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
                .filter(|p| p != "-")
                .collect();
            assert_eq!(disks.len(), refs.len(), "{name}: {disks:?}");
            for (disk, r) in disks.iter().zip(refs) {
                assert!(
                    libvirt_world::same_content(Path::new(disk), r),
                    "{name}: {disk} does not hold {}",
                    r.display()
                );
            }
            Box::new(guard)
        }
        ProviderType::Vsphere => {
            let client = vsphere_world::World::load().client().await;
            let vm = client.find_vm(name).await.unwrap();
            assert_eq!(vm.value, id);
            let info = client.vm_info(&vm).await.unwrap();
            assert_eq!(info.disks.len(), refs.len(), "{name}");
            for (d, r) in info.disks.iter().zip(refs) {
                let len = std::fs::metadata(r).unwrap().len();
                assert_eq!(d.capacity_bytes, len, "{name}: {} capacity", d.label);
            }
            let (ns, mig) = (
                m.metadata.namespace.as_deref().unwrap(),
                m.metadata.name.as_deref().unwrap(),
            );
            let logs = cluster.runner_logs(ns, mig);
            assert_eq!(
                logs.matches("the lease manifest's SHA-1 of").count(),
                refs.len(),
                "every upload checked against the lease manifest:\n{logs}"
            );
            Box::new(vsphere_world::VmGuard { client, vm })
        }
        ProviderType::Proxmox => {
            let world = proxmox_world::World::load();
            let client = world.client().await;
            let vmid: u32 = id.parse().unwrap();
            let config = proxmox_world::config(&client, world.node(), vmid).await;
            assert_eq!(config.name(), Some(name));
            let disks = config.disks();
            assert_eq!(disks.len(), refs.len(), "{name}: {config:?}");
            for (d, r) in disks.iter().zip(refs) {
                let (file, format) =
                    proxmox_world::volume_file(&client, world.node(), &d.volid).await;
                assert!(
                    proxmox_world::holds(&file, &format, r),
                    "{name}: {} ({}) does not hold {}",
                    d.key,
                    d.volid,
                    r.display()
                );
            }
            Box::new(proxmox_world::VmGuard {
                client,
                node: world.node().into(),
                vmid,
                name: name.to_string(),
            })
        }
    }
}

/// The storage block of a migration through `backend` (`s3`, `http` or `nfs`) of the world.
pub fn storage(cluster: &Cluster, backend: &str) -> Value {
    match backend {
        "s3" => json!({"type": "s3", "bucket": cluster.var("VRG_S3_BUCKET"), "region": "us-east-1",
                       "credentialsSecretRef": {"name": "s3-creds"}}),
        "http" => json!({"type": "http", "endpoint": cluster.var("VRG_HTTP_URL"),
                         "credentialsSecretRef": {"name": "fileserver-token"}}),
        _ => {
            json!({"type": "nfs", "path": "/mnt/migrations", "endpoint": cluster.var("VRG_NFS_ENDPOINT")})
        }
    }
}

/// Applies libvirt -> libvirt migration `ns/name` of VM `source` to `target` through the world's S3
/// (the guide's Scenario 1 with the libvirt target), `attempts` at most, 5 s apart.
pub fn apply_libvirt_migration(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    source: &str,
    target: &str,
    attempts: u32,
) {
    let s3 = storage(cluster, "s3");
    apply_libvirt_migration_through(cluster, ns, name, source, target, attempts, s3);
}

/// As [`apply_libvirt_migration`], staging through `storage` (a `spec.storage` block).
pub fn apply_libvirt_migration_through(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    source: &str,
    target: &str,
    attempts: u32,
    storage: Value,
) {
    let (source_provider, target_provider) = providers(ProviderType::Libvirt);
    cluster.apply(&virtual_machine(ns, source, source_provider));
    let yaml = adapt(
        "libvirt-to-vsphere.yaml",
        ns,
        &[
            ("/metadata/name", json!(name)),
            ("/spec/sourceName", json!(source)),
            ("/spec/targetProviderRef", json!({"name": target_provider})),
            ("/spec/targetName", json!(target)),
            (
                "/spec/targetStorageHint",
                json!(cluster.var("VRG_LIBVIRT_POOL")),
            ),
            ("/spec/storage", storage),
            (
                "/spec/retryPolicy",
                json!({"maxAttempts": attempts, "backoffDuration": "5s"}),
            ),
        ],
    );
    cluster.apply(&yaml);
}

/// Parts of upload `id` the world's S3 server (s3s-fs) holds.
pub fn parts_held(data_dir: &Path, id: &str) -> usize {
    std::fs::read_dir(data_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.contains(id) && name.contains(".part-")
                })
                .count()
        })
        .unwrap_or(0)
}

/// `bytes sent` and parts kept of the resumed upload the runner logged.
pub fn resumed_upload(logs: &str) -> Option<(u64, u32)> {
    let line = logs
        .lines()
        .find(|l| l.contains("parts kept from an earlier try"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "bytes")?;
    let sent = words.get(at.checked_sub(1)?)?.parse().ok()?;
    let kept = words.get(at + 2)?.parse().ok()?;
    Some((sent, kept))
}

/// Waits until the S3 upload of disk `disk` of migration `ns/name` (its id as `status.uploads`
/// records it) has `parts` parts on the world's S3 server, failing if the migration is done first;
/// returns the upload id.
pub async fn upload_with_parts(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    disk: &str,
    parts: usize,
) -> String {
    let api: kube::Api<VMMigration> = kube::Api::namespaced(cluster.client.clone(), ns);
    let data_dir = Path::new(cluster.var("VRG_S3_DATA_DIR"));
    let suffix = format!("/{disk}.qcow2");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "{disk}'s upload never held {parts} parts"
        );
        let status = api.get(name).await.unwrap().status.unwrap_or_default();
        assert_ne!(
            status.phase,
            Some(crd::Phase::Ready),
            "{ns}/{name} was done before {disk}'s upload held {parts} parts"
        );
        let upload = status.uploads.iter().find(|u| u.key.ends_with(&suffix));
        if let Some(u) = upload
            && parts_held(data_dir, &u.upload_id) >= parts
        {
            return u.upload_id.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
