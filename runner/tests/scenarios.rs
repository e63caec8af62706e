//! The guide's scenarios as users run them: the example YAML (names and endpoints adapted to the
//! local world) applied with kubectl through the webhook, the operator launching runner Jobs on the
//! world's node, and the result checked on the hypervisors themselves. Needs `make e2e-up`.
//!
//! Each test has its own namespace; hypervisor objects get unique names, so tests run in parallel.

mod cluster_world;
mod fleet;
mod libvirt_world;
mod proxmox_world;
mod vsphere_world;

use runner::endpoint::Guard;
use std::path::Path;
use std::time::Duration;

use cluster_world::{Cluster, adapt, virtual_machine};
use crd::{Phase, ProviderType, StorageSpec, StorageType, VMMigration};
use runner::credentials::Credentials;
use runner::provider::vsphere::PowerState;
use runner::storage::{self, StageOptions};
use serde_json::json;
use vsphere_world::{DiskKind, VmGuard, source_vm, unique};

/// How long one small migration may take through the cluster.
const TIMEOUT: Duration = Duration::from_secs(600);

fn condition<'a>(m: &'a VMMigration, type_: &str) -> &'a crd::Condition {
    let status = m.status.as_ref().expect("a status");
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition: {:?}", status.conditions))
}

fn ready(cluster: &Cluster, m: &VMMigration) {
    let status = m.status.as_ref().unwrap();
    let (ns, name) = (
        m.metadata.namespace.as_deref().unwrap(),
        m.metadata.name.as_deref().unwrap(),
    );
    assert_eq!(
        status.phase,
        Some(Phase::Ready),
        "{ns}/{name}: {status:?}\n--- runner log:\n{}",
        cluster.runner_logs(ns, name)
    );
}

/// The disk paths of a libvirt domain, in bus order.
fn domain_disks(world: &libvirt_world::World, domain: &str) -> Vec<String> {
    world
        .virsh_ok(&["domblklist", domain])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .filter(|p| p != "-")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn scenario_1_libvirt_to_vsphere_through_s3() {
    let cluster = Cluster::load().await;
    let (lw, vw) = (libvirt_world::World::load(), vsphere_world::World::load());
    let client = vw.client().await;
    let ns = "e2e-scenario-1";
    cluster.fresh_namespace(ns).await;
    cluster.apply(&cluster.objects(ns));
    let source = libvirt_world::unique("ubuntu-server");
    let target = unique("ubuntu-server-vcenter");
    let refs = tempfile::tempdir().unwrap();
    let _domain = lw.make_source_vm(&source, true, refs.path());
    cluster.apply(&virtual_machine(ns, &source, "libvirt-kvm"));
    let yaml = adapt(
        "libvirt-to-vsphere.yaml",
        ns,
        &[
            ("/spec/sourceName", json!(source)),
            ("/spec/targetName", json!(target)),
            ("/spec/targetStorageHint", json!("LocalDS_0")),
            ("/spec/storage/bucket", json!(cluster.var("VRG_S3_BUCKET"))),
        ],
    );
    cluster.apply(&yaml);
    let m = cluster.wait_done(ns, "kvm-to-vsphere", TIMEOUT).await;
    ready(&cluster, &m);

    let vm = client.find_vm(&target).await.unwrap();
    let _guard = VmGuard {
        client: client.clone(),
        vm: vm.clone(),
    };
    assert_eq!(
        m.status.as_ref().unwrap().target_vm_id.as_deref(),
        Some(vm.value.as_str())
    );
    let info = client.vm_info(&vm).await.unwrap();
    assert_eq!(
        (info.num_cpu, info.memory_mb),
        (1, 64),
        "the source's vCPU and memory"
    );
    let capacities: Vec<u64> = info.disks.iter().map(|d| d.capacity_bytes).collect();
    assert_eq!(
        capacities,
        [64 << 20, 64 << 20],
        "both disks, with their capacities"
    );
    let networks: Vec<&str> = info.nics.iter().filter_map(|n| n.network_name()).collect();
    assert_eq!(
        networks,
        ["VM Network"],
        "the NIC on the Provider's default network"
    );
    assert_eq!(
        info.power_state,
        PowerState::PoweredOff,
        "left stopped while the source runs (spec.cutover defaults: never two running copies)"
    );

    // every upload was checked against the lease manifest's SHA-1 of the bytes received
    let logs = cluster.runner_logs(ns, "kvm-to-vsphere");
    assert_eq!(
        logs.matches("the lease manifest's SHA-1 of").count(),
        2,
        "one manifest check per disk:\n{logs}"
    );
    // deleteIntermediate: nothing left in the bucket
    let spec = StorageSpec {
        type_: StorageType::S3,
        bucket: Some(cluster.var("VRG_S3_BUCKET").into()),
        endpoint: Some(cluster.var("VRG_S3_ENDPOINT").into()),
        region: Some("us-east-1".into()),
        path: None,
        credentials_secret_ref: None,
    };
    let creds = Credentials::default()
        .with("storage", "accessKey", cluster.var("VRG_S3_ACCESS_KEY"))
        .with("storage", "secretKey", cluster.var("VRG_S3_SECRET_KEY"));
    let stage = storage::open(
        &spec,
        &creds,
        &StageOptions {
            guard: Guard::new(true),
            ..StageOptions::default()
        },
    )
    .await
    .unwrap();
    for d in &m.status.as_ref().unwrap().disks {
        let key = storage::object_key(ns, "kvm-to-vsphere", &d.name, crd::DiskFormat::Vmdk);
        assert!(
            stage.stat(&key).await.unwrap().is_none(),
            "{key} left in staging"
        );
    }
    // the source is as it was
    assert_eq!(
        lw.virsh_ok(&["snapshot-list", &source, "--name"]).trim(),
        ""
    );
    assert!(lw.virsh_ok(&["domstate", &source]).contains("running"));
}

/// vSphere -> libvirt through the cluster, `storage` being the migration's storage block.
async fn vsphere_to_libvirt(
    ns: &str,
    kinds: &[DiskKind],
    running: bool,
    storage: serde_json::Value,
) {
    let cluster = Cluster::load().await;
    let (lw, vw) = (libvirt_world::World::load(), vsphere_world::World::load());
    let client = vw.client().await;
    cluster.fresh_namespace(ns).await;
    cluster.apply(&cluster.objects(ns));
    let source = unique("vmware-vm");
    let src = source_vm(&client, &source, kinds, 8, running).await;
    let target = libvirt_world::unique("from-vsphere");
    let _target = lw.guard(&target);
    cluster.apply(&virtual_machine(ns, &source, "vsphere-prod"));
    let yaml = adapt(
        "proxmox-to-libvirt.yaml",
        ns,
        &[
            ("/metadata/name", json!("vsphere-to-kvm")),
            ("/spec/sourceName", json!(source)),
            ("/spec/targetName", json!(target)),
            ("/spec/storage", storage),
        ],
    );
    cluster.apply(&yaml);
    let m = cluster.wait_done(ns, "vsphere-to-kvm", TIMEOUT).await;
    ready(&cluster, &m);
    let disks = domain_disks(&lw, &target);
    assert_eq!(disks.len(), kinds.len(), "{disks:?}");
    for ((disk, reference), kind) in disks.iter().zip(&src.refs).zip(kinds) {
        assert!(
            libvirt_world::same_content(Path::new(disk), reference),
            "{kind:?} disk {disk} does not hold the vSphere disk's content"
        );
    }
    let after = client.vm_info(&src.vm.vm).await.unwrap();
    assert!(after.snapshots.is_empty(), "snapshot left on the source");
    assert_eq!(after.power_state == PowerState::PoweredOn, running);
    let snapshotted = condition(&m, "Snapshotted")
        .reason
        .clone()
        .unwrap_or_default();
    assert_eq!(
        snapshotted,
        if running { "Snapshotted" } else { "NotNeeded" }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn vsphere_to_libvirt_through_http_from_a_stopped_vm() {
    let cluster = Cluster::load().await;
    let storage = json!({"type": "http", "endpoint": cluster.var("VRG_HTTP_URL"),
                         "credentialsSecretRef": {"name": "fileserver-token"}});
    vsphere_to_libvirt(
        "e2e-v2l-http",
        &[DiskKind::Flat, DiskKind::Chain],
        false,
        storage,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vsphere_to_libvirt_through_nfs_from_a_running_vm() {
    let cluster = Cluster::load().await;
    let storage = json!({"type": "nfs", "path": "/mnt/migrations", "endpoint": cluster.var("VRG_NFS_ENDPOINT")});
    vsphere_to_libvirt(
        "e2e-v2l-nfs",
        &[DiskKind::Flat, DiskKind::NfcOnly],
        true,
        storage,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_unknown_datastore_and_name_clash_fail_naming_the_object() {
    let cluster = Cluster::load().await;
    let vw = vsphere_world::World::load();
    let client = vw.client().await;
    let ns = "e2e-vsphere-errors";
    cluster.fresh_namespace(ns).await;
    cluster.apply(&cluster.objects(ns));
    let source = unique("vmware-src");
    let src = source_vm(&client, &source, &[DiskKind::Flat], 4, true).await;
    cluster.apply(&virtual_machine(ns, &source, "vsphere-prod"));
    // a Provider whose Secret has a wrong password
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: vsphere-bad, namespace: {ns}}}\nstringData:\n  \
         username: {}\n  password: not-the-password\n---\napiVersion: infra.virtrigaud.io/v1beta1\n\
         kind: Provider\nmetadata: {{name: vcenter-bad, namespace: {ns}}}\nspec:\n  type: vsphere\n  \
         endpoint: {}\n  insecureSkipVerify: true\n  credentialSecretRef: {{name: vsphere-bad}}\n",
        cluster.var("VRG_VCSIM_USER"),
        cluster.var("VRG_VCSIM_URL")
    ));
    let storage = json!({"type": "nfs", "path": "/mnt/migrations", "endpoint": cluster.var("VRG_NFS_ENDPOINT")});
    let taken = unique("taken");
    let other = vsphere_world::create_vm(&client, &taken, Default::default()).await;
    let cases = [
        (
            "bad-password",
            "vcenter-bad",
            unique("t"),
            "LocalDS_0",
            "AuthenticationFailed",
            "Validated",
            "vSphere",
        ),
        (
            "bad-datastore",
            "vcenter-prod",
            unique("t"),
            "NoSuchDatastore",
            "NotFound",
            "Validated",
            "NoSuchDatastore",
        ),
        (
            "name-clash",
            "vcenter-prod",
            taken.clone(),
            "LocalDS_0",
            "NotOwned",
            "Validated",
            taken.as_str(),
        ),
    ];
    for (name, provider, target, datastore, reason, failed, named) in &cases {
        let yaml = adapt(
            "libvirt-to-vsphere.yaml",
            ns,
            &[
                ("/metadata/name", json!(name)),
                ("/spec/sourceName", json!(source)),
                ("/spec/targetProviderRef", json!({"name": provider})),
                ("/spec/targetName", json!(target)),
                ("/spec/targetStorageHint", json!(datastore)),
                ("/spec/storage", storage.clone()),
            ],
        );
        cluster.apply(&yaml);
        let m = cluster.wait_done(ns, name, TIMEOUT).await;
        let status = m.status.as_ref().unwrap();
        assert_eq!(status.phase, Some(Phase::Failed), "{name}: {status:?}");
        let c = condition(&m, failed);
        assert_eq!(c.reason.as_deref(), Some(*reason), "{name}: {c:?}");
        let message = c.message.clone().unwrap_or_default();
        assert!(
            message.contains(named),
            "{name}: the condition names {named}: {message}"
        );
        assert!(!format!("{status:?}").contains("not-the-password"));
        if *name != "name-clash" {
            assert!(
                matches!(
                    client.find_vm(target).await,
                    Err(runner::Error::NotFound { .. })
                ),
                "{name}: a VM {target} was left"
            );
        }
    }
    let after = client.vm_info(&src.vm.vm).await.unwrap();
    assert!(
        after.snapshots.is_empty(),
        "a snapshot was left: {:?}",
        after.snapshots
    );
    assert_eq!(after.power_state, PowerState::PoweredOn);
    assert_eq!(
        client.find_vm(&taken).await.unwrap(),
        other.vm,
        "the VM of that name is untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scenario_2_vsphere_to_proxmox_through_nfs() {
    let cluster = Cluster::load().await;
    let ns = "e2e-scenario-2";
    cluster.fresh_namespace(ns).await;
    cluster.apply(&cluster.objects(ns));
    let source = unique("windows-server");
    let target = unique("windows-server-pve");
    let src = fleet::source(ProviderType::Vsphere, &source).await;
    cluster.apply(&virtual_machine(ns, &source, "vsphere-prod"));
    // the guide's YAML as it is, but for the names and the NFS server's address (the world's
    // nfs-ganesha exports the guide's /mnt/migrations; nfs.local resolves nowhere here)
    let yaml = adapt(
        "vsphere-to-proxmox.yaml",
        ns,
        &[
            ("/spec/sourceName", json!(source)),
            ("/spec/targetName", json!(target)),
            (
                "/spec/storage/endpoint",
                json!(cluster.var("VRG_NFS_ENDPOINT")),
            ),
        ],
    );
    assert!(yaml.contains("targetStorageHint: local-lvm") && yaml.contains("type: nfs"));
    cluster.apply(&yaml);
    let m = cluster.wait_done(ns, "vsphere-to-proxmox", TIMEOUT).await;
    ready(&cluster, &m);
    let _target =
        fleet::check_target(&cluster, &m, ProviderType::Proxmox, &target, &src.refs).await;
}

/// Scenario 3 (`proxmox-to-libvirt.yaml`, staged on the world's HTTP server) in namespace `ns`, from a
/// fresh running Proxmox VM `source` into libvirt as `target`, with `edits` on top of the adapted
/// example; waits until it is Ready and checks the target's content. Returns the migration, the
/// source (removed on drop) and the target's guard.
async fn scenario_3(
    ns: &str,
    source: &str,
    target: &str,
    edits: &[(&str, serde_json::Value)],
) -> (VMMigration, fleet::Source, Box<dyn std::any::Any + Send>) {
    let cluster = Cluster::load().await;
    cluster.fresh_namespace(ns).await;
    cluster.apply(&cluster.objects(ns));
    let src = fleet::source(ProviderType::Proxmox, source).await;
    cluster.apply(&virtual_machine(ns, source, "proxmox-cluster"));
    let mut all = vec![
        ("/spec/sourceName", json!(source)),
        ("/spec/targetName", json!(target)),
        ("/spec/storage/endpoint", json!(cluster.var("VRG_HTTP_URL"))),
        (
            "/spec/targetStorageHint",
            json!(cluster.var("VRG_LIBVIRT_POOL")),
        ),
    ];
    all.extend(edits.iter().cloned());
    cluster.apply(&adapt("proxmox-to-libvirt.yaml", ns, &all));
    let m = cluster.wait_done(ns, "proxmox-to-kvm", TIMEOUT).await;
    ready(&cluster, &m);
    let guard = fleet::check_target(&cluster, &m, ProviderType::Libvirt, target, &src.refs).await;
    (m, src, guard)
}

#[tokio::test(flavor = "multi_thread")]
async fn scenario_3_proxmox_to_libvirt_through_http() {
    let source = unique("database-server");
    let target = libvirt_world::unique("database-server-kvm");
    let (_m, _src, _target) = scenario_3("e2e-scenario-3", &source, &target, &[]).await;
    let world = proxmox_world::World::load();
    let client = world.client().await;
    let vmid = client_vmid(&world, &source).await;
    assert!(
        proxmox_world::snapshots(&client, world.node(), vmid)
            .await
            .is_empty(),
        "no snapshot left on the Proxmox source"
    );
}

/// Scenario 3 with the source deleted: the user consents to stopping it (cutover.stopSource), the
/// running Proxmox VM is shut down for the final copy, the libvirt target's disks are read back and
/// compared, and only then is the source deleted and the target started.
#[tokio::test(flavor = "multi_thread")]
async fn delete_source_shuts_the_proxmox_source_down_reads_the_target_back_and_deletes_it() {
    let ns = "e2e-cutover";
    let source = unique("cutover-src");
    let target = libvirt_world::unique("cutover-kvm");
    let edits = [
        ("/spec/cleanupPolicy/deleteSource", json!(true)),
        (
            "/spec/cutover",
            json!({"stopSource": "Shutdown", "shutdownTimeout": "2m"}),
        ),
    ];
    let (m, src, _target) = scenario_3(ns, &source, &target, &edits).await;
    let status = m.status.as_ref().unwrap();
    assert_eq!(
        status.source_power,
        Some(crd::SourcePower {
            was_running: true,
            stopped_by_migration: true
        })
    );
    assert_eq!(
        condition(&m, "Snapshotted").reason.as_deref(),
        Some("SourceStopped")
    );
    let validated = condition(&m, "TargetValidated").message.clone().unwrap();
    let disks = match src.refs.len() {
        1 => "1 disk".to_string(),
        n => format!("{n} disks"),
    };
    assert!(
        validated.contains(&format!(
            "guest content of {disks} read back and matching the source"
        )),
        "{validated}"
    );
    let lw = libvirt_world::World::load();
    assert!(lw.virsh_ok(&["domstate", &target]).contains("running"));
    let world = proxmox_world::World::load();
    assert_eq!(
        find_vmid(&world, &source).await,
        None,
        "the source is deleted"
    );
    let logs = Cluster::load().await.runner_logs(ns, "proxmox-to-kvm");
    assert!(logs.contains("read back: sha256"), "{logs}");
}

/// The VMID of the Proxmox VM named `name`.
async fn client_vmid(world: &proxmox_world::World, name: &str) -> u32 {
    find_vmid(world, name)
        .await
        .unwrap_or_else(|| panic!("no Proxmox VM {name}"))
}

/// The VMID of the Proxmox VM named `name`, if there is one.
async fn find_vmid(world: &proxmox_world::World, name: &str) -> Option<u32> {
    let client = world.client().await;
    let vms: Vec<serde_json::Value> = client
        .get(&["cluster", "resources"], &[("type", "vm".into())])
        .await
        .unwrap();
    vms.iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["vmid"].as_u64())
        .map(|id| id as u32)
}
