//! Whole migrations with the vSphere provider at one end, on the e2e world's vcsim and libvirtd,
//! through each staging backend: the pipeline the runner binary runs, with real providers at both
//! ends. vSphere sources carry real disk content (flat, streamOptimized, linked-clone chains, and
//! one the file interface refuses so that it takes the NFC lease); libvirt targets must hold that
//! content; a vSphere target must be shaped like the source and have been sent the staged bytes
//! (the runner checks the lease manifest's SHA-1 of each upload against the bytes it sent).
//! Also the marks: a target VM of the migration that the status lost is found by its extraConfig
//! mark and made again; a foreign VM of the target name fails the migration untouched; a recorded
//! source snapshot that is not the migration's is kept. Needs `make e2e-up`.

mod libvirt_world;
mod vsphere_world;

use runner::endpoint::Guard;
use std::path::Path;

use crd::plan::{MigrationRef, ProviderPlan, RunnerMode, RunnerPlan, VmPlan};
use crd::{
    CleanupPolicy, ConditionStatus, DiskFormat, NetworkHint, Phase, ProviderDefaults, ProviderType,
    VMMigrationStatus,
};
use libvirt_world::{Backend, Run, same_content};
use runner::credentials::Credentials;
use runner::phases::Pipeline;
use runner::progress::Progress;
use runner::provider::vsphere::{Client, OWNER_KEY, PowerState};
use runner::provider::{self};
use runner::status::{Recorder, StatusWriter};
use runner::storage::{self, StagedObject};
use vsphere_world::{DATASTORE, DiskKind, source_vm, unique};

const MIB: usize = 8;

fn vsphere_plan(w: &vsphere_world::World) -> ProviderPlan {
    ProviderPlan {
        name: "default/vcenter".into(),
        type_: ProviderType::Vsphere,
        endpoint: w.url().into(),
        insecure_skip_verify: false,
        defaults: Some(ProviderDefaults {
            datastore: Some(DATASTORE.into()),
            ..ProviderDefaults::default()
        }),
        ssh: None,
    }
}

fn vsphere_creds(w: &vsphere_world::World, scope: &str, creds: Credentials) -> Credentials {
    creds
        .with(scope, "username", w.user())
        .with(scope, "password", w.password())
        .with(scope, "ca.crt", w.ca_pem())
}

fn plan(name: &str, source: ProviderPlan, target: ProviderPlan, run: &Run) -> RunnerPlan {
    RunnerPlan {
        migration: MigrationRef {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        },
        attempt: 1,
        final_attempt: false,
        mode: RunnerMode::Migrate,
        source,
        source_vm: VmPlan {
            name: name.into(),
            id: None,
        },
        target,
        target_name: format!("{name}-copy"),
        target_storage_hint: None,
        target_network_hints: Vec::new(),
        target_disk_format: None,
        target_resources: None,
        storage: run.spec.clone(),
        cleanup_policy: CleanupPolicy::default(),
        cutover: Default::default(),
        allow_loopback_endpoints: true,
    }
}

/// Runs the pipeline with the plan's providers; returns the result and the status writes.
async fn migrate(plan: &RunnerPlan, run: &Run) -> (runner::Result<String>, Recorder) {
    attempt(plan, run, &VMMigrationStatus::default()).await
}

/// One attempt of `plan` from `previous` status; the result and the status writes.
async fn attempt(
    plan: &RunnerPlan,
    run: &Run,
    previous: &VMMigrationStatus,
) -> (runner::Result<String>, Recorder) {
    let source = provider::source(&plan.source, &run.creds, Guard::new(true)).unwrap();
    let target = provider::target(&plan.target, &run.creds, Guard::new(true)).unwrap();
    let stage = storage::open(&plan.storage, &run.creds, &run.options)
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let status = StatusWriter::new(Box::new(recorder.clone()), previous);
    let result = Pipeline::new(plan.clone(), source, target, stage, status, scratch.path())
        .run()
        .await;
    (result, recorder)
}

/// A fresh libvirt domain `name` (running or not, its guest content in `refs`) to migrate into
/// vcsim through NFS: its guard, the staging and the plan.
fn libvirt_to_vsphere<'w>(
    vw: &vsphere_world::World,
    lw: &'w libvirt_world::World,
    name: &str,
    running: bool,
    refs: &Path,
) -> (libvirt_world::DomainGuard<'w>, Run, RunnerPlan) {
    let source = lw.make_source_vm(name, running, refs);
    let run = lw.staging(
        Backend::Nfs,
        vsphere_creds(vw, "target", lw.creds("source")),
    );
    let plan = plan(name, lw.plan_for(lw.uri()), vsphere_plan(vw), &run);
    (source, run, plan)
}

fn condition<'a>(s: &'a VMMigrationStatus, type_: &str) -> &'a crd::Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition: {:?}", s.conditions))
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

/// vSphere -> libvirt: the source's disks land as libvirt volumes with its guest content, and the
/// source is left as it was (no snapshot, same disks, same power state).
async fn vsphere_to_libvirt(kinds: &[DiskKind], running: bool, via: Backend) -> Recorder {
    let (vw, lw) = (vsphere_world::World::load(), libvirt_world::World::load());
    let client = vw.client().await;
    let name = unique("v2l");
    let src = source_vm(&client, &name, kinds, MIB, running).await;
    let before = client.vm_info(&src.vm.vm).await.unwrap();
    let creds = vsphere_creds(&vw, "source", lw.creds("target"));
    let run = lw.staging(via, creds);
    let target_plan = lw.plan_for(lw.uri());
    let mut plan = plan(&name, vsphere_plan(&vw), target_plan, &run);
    plan.target_storage_hint = Some("default".into());
    let _target = lw.guard(&plan.target_name);

    let (result, rec) = migrate(&plan, &run).await;
    let id = result.unwrap_or_else(|e| panic!("migration failed: {e}; {:?}", rec.last()));
    let last = rec.last();
    assert_eq!(last.phase, Some(Phase::Ready), "{last:?}");
    assert_eq!(last.target_vm_id.as_deref(), Some(id.as_str()));
    let disks = domain_disks(&lw, &plan.target_name);
    assert_eq!(disks.len(), kinds.len(), "{disks:?}");
    for ((disk, reference), kind) in disks.iter().zip(&src.refs).zip(kinds) {
        assert!(
            same_content(Path::new(disk), reference),
            "{kind:?} disk {disk} does not hold the source's guest content"
        );
    }
    // spec.cutover defaults: never two running copies, the target is left stopped
    let state = lw.virsh_ok(&["domstate", &plan.target_name]);
    assert!(state.contains("shut off"), "{state}");
    let xml = lw.virsh_ok(&["dumpxml", &plan.target_name]);
    assert!(xml.contains(">2</vcpu>"), "the source's 2 vCPUs: {xml}");

    let after = client.vm_info(&src.vm.vm).await.unwrap();
    assert!(
        after.snapshots.is_empty(),
        "snapshot left: {:?}",
        after.snapshots
    );
    assert_eq!(
        after.disks, before.disks,
        "the source's disks are unchanged"
    );
    assert_eq!(after.power_state, before.power_state);
    rec
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_vm_with_flat_sparse_and_linked_clone_disks_migrates_to_libvirt_through_http() {
    let rec = vsphere_to_libvirt(
        &[DiskKind::Flat, DiskKind::Stream, DiskKind::Chain],
        false,
        Backend::Http,
    )
    .await;
    let snap = condition(&rec.last(), "Snapshotted").reason.clone();
    assert_eq!(
        snap.as_deref(),
        Some("NotNeeded"),
        "a stopped VM needs no snapshot"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn running_vm_is_snapshotted_and_migrates_through_nfs_using_the_nfc_lease_where_needed() {
    let rec = vsphere_to_libvirt(&[DiskKind::Flat, DiskKind::NfcOnly], true, Backend::Nfs).await;
    let writes = rec.writes();
    assert!(
        writes.iter().any(|s| s
            .snapshot
            .as_ref()
            .is_some_and(|h| matches!(h, crd::SnapshotHandle::Vsphere { .. }))),
        "the snapshot handle was recorded"
    );
    assert_eq!(rec.last().snapshot, None, "and removed by policy");
    assert_eq!(
        condition(&rec.last(), "Snapshotted").reason.as_deref(),
        Some("Snapshotted")
    );
}

/// Downloads a staged object into `dir` and returns its path.
async fn fetch_staged(
    run: &Run,
    spec: &crd::StorageSpec,
    object: StagedObject,
    dir: &Path,
) -> std::path::PathBuf {
    let stage = storage::open(spec, &run.creds, &run.options).await.unwrap();
    let dest = dir.join(object.key.replace('/', "_"));
    stage
        .download(&object, &dest, &Progress::default())
        .await
        .unwrap();
    dest
}

#[tokio::test(flavor = "multi_thread")]
async fn libvirt_vm_migrates_to_vsphere_through_s3_as_in_scenario_1() {
    let (vw, lw) = (vsphere_world::World::load(), libvirt_world::World::load());
    let client = vw.client().await;
    let name = libvirt_world::unique("l2v");
    let refs = tempfile::tempdir().unwrap();
    let _source = lw.make_source_vm(&name, true, refs.path());
    let creds = vsphere_creds(&vw, "target", lw.creds("source"));
    let run = lw.staging(Backend::S3, creds);
    let mut plan = plan(&name, lw.plan_for(lw.uri()), vsphere_plan(&vw), &run);
    plan.target_storage_hint = Some(DATASTORE.into());
    plan.target_network_hints = vec![NetworkHint {
        name: "eth0".into(),
        network: Some("VM Network".into()),
        bridge: None,
    }];
    plan.cleanup_policy.delete_intermediate = false;
    let (result, rec) = migrate(&plan, &run).await;
    let id = result.unwrap_or_else(|e| panic!("migration failed: {e}; {:?}", rec.last()));
    let _target = vsphere_world::VmGuard {
        client: client.clone(),
        vm: runner::provider::vsphere::MoRef::new("VirtualMachine", &id),
    };
    let last = rec.last();
    assert_eq!(last.phase, Some(Phase::Ready), "{last:?}");

    let vm = client.find_vm(&plan.target_name).await.unwrap();
    assert_eq!(vm.value, id);
    let info = client.vm_info(&vm).await.unwrap();
    assert_eq!(
        (info.num_cpu, info.memory_mb),
        (1, 64),
        "the source's shape"
    );
    let capacities: Vec<u64> = info.disks.iter().map(|d| d.capacity_bytes).collect();
    assert_eq!(capacities, [64 << 20, 64 << 20]);
    let networks: Vec<&str> = info.nics.iter().filter_map(|n| n.network_name()).collect();
    assert_eq!(networks, ["VM Network"]);
    assert_eq!(
        info.power_state,
        PowerState::PoweredOff,
        "left stopped while the source runs (spec.cutover defaults)"
    );
    assert!(
        info.extra_config
            .contains(&(OWNER_KEY.to_string(), plan.migration.uid.clone())),
        "{:?}",
        info.extra_config
    );

    // What was sent is the staged streamOptimized VMDK, verified against the lease manifest by the
    // runner; it holds the source's guest content.
    let scratch = tempfile::tempdir().unwrap();
    let stage = storage::open(&plan.storage, &run.creds, &run.options)
        .await
        .unwrap();
    for (disk, reference) in last.disks.iter().zip(["vda.raw", "vdb.raw"]) {
        assert_eq!(disk.target_format, Some(DiskFormat::Vmdk));
        let key = storage::object_key("default", &name, &disk.name, DiskFormat::Vmdk);
        let object = stage.stat(&key).await.unwrap().expect("staged object kept");
        let path = fetch_staged(&run, &plan.storage, object, scratch.path()).await;
        assert!(same_content(&path, &refs.path().join(reference)), "{key}");
        stage.delete(&key).await.unwrap();
    }
    let imported = condition(&last, "Imported");
    assert_eq!(imported.status, ConditionStatus::True);
}

/// vcsim hashes the disk bytes an import lease receives and discards them (facts.md), so a VM it
/// imports reads back empty: with deleteSource, the read-back refuses it, and the source the
/// migration powered off is kept and started again. (Against vSphere the read-back goes through
/// the datastore file interface like any export.)
#[tokio::test(flavor = "multi_thread")]
async fn a_vsphere_target_that_reads_back_wrong_keeps_the_libvirt_source_and_starts_it_again() {
    let (vw, lw) = (vsphere_world::World::load(), libvirt_world::World::load());
    let client = vw.client().await;
    let name = libvirt_world::unique("l2v-cut");
    let refs = tempfile::tempdir().unwrap();
    let (_source, run, mut plan) = libvirt_to_vsphere(&vw, &lw, &name, true, refs.path());
    plan.cleanup_policy.delete_source = true;
    plan.cutover.stop_source = crd::StopSource::PowerOff;
    let (result, rec) = migrate(&plan, &run).await;
    let err = result.expect_err("vcsim's imported disks are empty");
    assert!(!err.is_retryable(), "{err}");
    let last = rec.last();
    assert_eq!(last.phase, Some(Phase::Failed), "{last:?}");
    let validated = condition(&last, "TargetValidated");
    assert_eq!(validated.status, ConditionStatus::False);
    assert!(
        validated
            .message
            .as_deref()
            .unwrap()
            .contains("disk-0-flat.vmdk has 0 bytes"),
        "{validated:?}"
    );
    assert!(
        lw.virsh_ok(&["domstate", &name]).contains("running"),
        "started again"
    );
    assert_eq!(
        last.source_power.map(|p| p.stopped_by_migration),
        Some(false)
    );
    assert!(
        client.find_vms(&plan.target_name).await.unwrap().is_empty(),
        "the unverified target VM is removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vsphere_source_shut_down_for_cutover_is_deleted_once_the_libvirt_target_reads_back() {
    let (vw, lw) = (vsphere_world::World::load(), libvirt_world::World::load());
    let client = vw.client().await;
    let name = unique("v2l-cut");
    let src = source_vm(
        &client,
        &name,
        &[DiskKind::Flat, DiskKind::Stream],
        MIB,
        true,
    )
    .await;
    let run = lw.staging(
        Backend::Http,
        vsphere_creds(&vw, "source", lw.creds("target")),
    );
    let mut plan = plan(&name, vsphere_plan(&vw), lw.plan_for(lw.uri()), &run);
    plan.target_storage_hint = Some("default".into());
    plan.cleanup_policy.delete_source = true;
    plan.cutover.stop_source = crd::StopSource::Shutdown;
    plan.cutover.shutdown_timeout = Some("1m".into());
    let _target = lw.guard(&plan.target_name);
    let (result, rec) = migrate(&plan, &run).await;
    result.unwrap_or_else(|e| panic!("migration failed: {e}; {:?}", rec.last()));
    let last = rec.last();
    assert_eq!(last.phase, Some(Phase::Ready), "{last:?}");
    assert_eq!(
        condition(&last, "Snapshotted").reason.as_deref(),
        Some("SourceStopped"),
        "shut down instead of snapshotted"
    );
    assert!(
        lw.virsh_ok(&["domstate", &plan.target_name])
            .contains("running")
    );
    for (disk, reference) in domain_disks(&lw, &plan.target_name).iter().zip(&src.refs) {
        assert!(same_content(Path::new(disk), reference), "{disk}");
    }
    assert!(
        matches!(
            client.vm_info(&src.vm.vm).await,
            Err(runner::Error::NotFound { .. })
        ),
        "the vSphere source is deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_unknown_datastore_and_name_clash_fail_naming_the_object() {
    let (vw, lw) = (vsphere_world::World::load(), libvirt_world::World::load());
    let client: std::sync::Arc<Client> = vw.client().await;
    let name = libvirt_world::unique("l2v-bad");
    let refs = tempfile::tempdir().unwrap();
    let _source = lw.make_source_vm(&name, false, refs.path());

    // wrong password: refused in Validating, the password in no message
    let creds = lw
        .creds("source")
        .with("target", "username", vw.user())
        .with("target", "password", "not-the-password")
        .with("target", "ca.crt", vw.ca_pem());
    let run = lw.staging(Backend::Http, creds);
    let p = plan(&name, lw.plan_for(lw.uri()), vsphere_plan(&vw), &run);
    let (result, rec) = migrate(&p, &run).await;
    let err = result.unwrap_err();
    assert_eq!(err.reason(), "AuthenticationFailed", "{err}");
    let last = rec.last();
    let validated = condition(&last, "Validated");
    assert_eq!(validated.status, ConditionStatus::False);
    let message = validated.message.clone().unwrap_or_default();
    assert!(message.contains("vSphere"), "{message}");
    assert!(!format!("{:?}", rec.writes()).contains("not-the-password"));

    // unknown datastore: refused in Validating, before any disk moves; no VM of the name is left
    let creds = vsphere_creds(&vw, "target", lw.creds("source"));
    let run = lw.staging(Backend::Http, creds);
    let mut p = plan(&name, lw.plan_for(lw.uri()), vsphere_plan(&vw), &run);
    p.target_storage_hint = Some("NoSuchDatastore".into());
    let (result, rec) = migrate(&p, &run).await;
    let err = result.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("NoSuchDatastore"), "{err}");
    assert_eq!(rec.last().phase, Some(Phase::Failed));
    assert_eq!(
        condition(&rec.last(), "Validated").status,
        ConditionStatus::False
    );
    assert!(
        rec.writes()
            .iter()
            .all(|s| s.snapshot.is_none() && s.disks.iter().all(|d| d.staged_url.is_none())),
        "nothing was snapshotted or staged"
    );
    assert!(matches!(
        client.find_vm(&p.target_name).await,
        Err(runner::Error::NotFound { .. })
    ));

    // a name taken on the target: refused in Validating, naming it
    let mut p = plan(&name, lw.plan_for(lw.uri()), vsphere_plan(&vw), &run);
    p.target_name = "DC0_H0_VM0".into();
    let (result, rec) = migrate(&p, &run).await;
    let err = result.unwrap_err();
    assert!(err.to_string().contains("DC0_H0_VM0"), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(
        condition(&rec.last(), "Validated").status,
        ConditionStatus::False
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_vm_whose_disk_needs_nfc_is_snapshotted_for_the_lease() {
    let rec = vsphere_to_libvirt(&[DiskKind::Stream, DiskKind::NfcOnly], false, Backend::S3).await;
    let last = rec.last();
    let snap = condition(&last, "Snapshotted");
    assert_eq!(snap.reason.as_deref(), Some("Snapshotted"), "{snap:?}");
    assert_eq!(last.snapshot, None, "removed once the disks were staged");
}

/// A VM's moref from its id.
fn vm_moref(id: &str) -> runner::provider::vsphere::MoRef {
    runner::provider::vsphere::MoRef::new("VirtualMachine", id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_vm_whose_status_was_lost_is_found_by_its_mark_and_made_again() {
    let (vw, lw) = (vsphere_world::World::load(), libvirt_world::World::load());
    let client = vw.client().await;
    let name = libvirt_world::unique("l2v-lost");
    let refs = tempfile::tempdir().unwrap();
    let (_source, run, plan) = libvirt_to_vsphere(&vw, &lw, &name, false, refs.path());

    // the first run made the VM; its status never reached the cluster
    let (first, _) = migrate(&plan, &run).await;
    let first = first.expect("first run");
    let _first = vsphere_world::VmGuard {
        client: client.clone(),
        vm: vm_moref(&first),
    };
    let (second, rec) = migrate(&plan, &run).await;
    let second = second.unwrap_or_else(|e| panic!("second run: {e}; {:?}", rec.last()));
    let _second = vsphere_world::VmGuard {
        client: client.clone(),
        vm: vm_moref(&second),
    };
    assert_eq!(rec.last().phase, Some(Phase::Ready));
    assert_ne!(
        second, first,
        "the unrecorded VM was destroyed and made again"
    );
    let found = client.find_vms(&plan.target_name).await.unwrap();
    assert_eq!(found, [vm_moref(&second)], "exactly one VM of the name");
    let info = client.vm_info(&vm_moref(&second)).await.unwrap();
    assert!(
        info.extra_config
            .contains(&(OWNER_KEY.to_string(), plan.migration.uid.clone())),
        "{:?}",
        info.extra_config
    );
    assert!(matches!(
        client.vm_info(&vm_moref(&first)).await,
        Err(runner::Error::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_vm_with_the_target_name_fails_the_migration_and_is_left_as_it_was() {
    let (vw, lw) = (vsphere_world::World::load(), libvirt_world::World::load());
    let client = vw.client().await;
    let name = libvirt_world::unique("l2v-foreign");
    let refs = tempfile::tempdir().unwrap();
    let (_source, run, plan) = libvirt_to_vsphere(&vw, &lw, &name, false, refs.path());

    // no mark at all, then the mark of another migration
    for mark in [None, Some("uid-someone-else")] {
        let mut spec = runner::provider::vsphere::ConfigSpec::new();
        if let Some(uid) = mark {
            spec.extra_config(OWNER_KEY, uid);
        }
        let theirs = vsphere_world::create_vm(&client, &plan.target_name, spec).await;
        let before = client.vm_info(&theirs.vm).await.unwrap();

        let (result, rec) = migrate(&plan, &run).await;
        let e = result.expect_err("the name is taken");
        assert_eq!(e.reason(), "NotOwned", "{e}");
        let text = e.to_string();
        for part in [
            plan.target_name.as_str(),
            theirs.vm.value.as_str(),
            "does not carry the mark of migration",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        assert_eq!(rec.last().phase, Some(Phase::Failed));
        assert_eq!(
            client.vm_info(&theirs.vm).await.unwrap(),
            before,
            "untouched"
        );
        assert_eq!(
            client.find_vms(&plan.target_name).await.unwrap(),
            std::slice::from_ref(&theirs.vm)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_snapshot_that_is_not_ours_is_kept_by_cleanup() {
    let (vw, lw) = (vsphere_world::World::load(), libvirt_world::World::load());
    let client = vw.client().await;
    let name = unique("v-snap");
    let src = source_vm(&client, &name, &[DiskKind::Flat], MIB, false).await;
    let nightly = client
        .create_snapshot(&src.vm.vm, "nightly", "the owner's own", false, false)
        .await
        .unwrap();
    let creds = vsphere_creds(&vw, "source", lw.creds("target"));
    let run = lw.staging(Backend::Nfs, creds);
    let plan = plan(&name, vsphere_plan(&vw), lw.plan_for(lw.uri()), &run);
    let source = provider::source(&plan.source, &run.creds, Guard::new(true)).unwrap();
    let target = provider::target(&plan.target, &run.creds, Guard::new(true)).unwrap();
    let stage = storage::open(&plan.storage, &run.creds, &run.options)
        .await
        .unwrap();

    // named as the owner named it, or claiming the migration's snapshot name
    let ours = runner::provider::mark::snapshot_label(&plan.migration.uid);
    for recorded in ["nightly".to_string(), ours] {
        let status = VMMigrationStatus {
            snapshot: Some(crd::SnapshotHandle::Vsphere {
                vm: src.vm.vm.value.clone(),
                snapshot: nightly.value.clone(),
                name: recorded,
            }),
            ..VMMigrationStatus::default()
        };
        runner::phases::cleanup(&plan, &status, &*source, &*target, &*stage)
            .await
            .expect("what is not ours is kept, not an error");
        let info = client.vm_info(&src.vm.vm).await.unwrap();
        let names: Vec<&str> = info.snapshots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["nightly"], "kept");
    }
}
