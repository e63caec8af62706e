//! Whole migrations with the Proxmox VE provider at one end, on the e2e world's simulator, vcsim
//! and libvirtd, through each staging backend: the pipeline the runner binary runs, with real
//! providers at both ends. Proxmox -> libvirt through HTTP (the guide's scenario 3), vSphere ->
//! Proxmox through NFS into LVM-thin (scenario 2), libvirt -> Proxmox through S3 (PVE fetches the
//! presigned object itself), Proxmox -> Proxmox, and running linked clones on each storage as
//! sources. Every target disk must hold the source's guest content (read from the simulator's
//! backing files), and the source must be as before (same config, no snapshot left).
//! Also the marks: a target VM of the migration that the status lost is found by its tag and
//! description line and made again; a foreign VM of the target name, or a recorded import file that
//! is not the migration's, fails the migration and is left as it was.
//! Needs the world (`e2e/scripts/world-up.sh`); fails without it.

mod libvirt_world;
mod proxmox_world;
mod vsphere_world;

use runner::endpoint::Guard;
use std::path::{Path, PathBuf};

use crd::plan::{MigrationRef, ProviderPlan, RunnerMode, RunnerPlan, VmPlan};
use crd::{CleanupPolicy, NetworkHint, Phase, ProviderDefaults, ProviderType, VMMigrationStatus};
use libvirt_world::{Backend, Run, same_content};
use proxmox_world::{Store, VmGuard, World, holds, linked_clone, reference, unique, volume_file};
use runner::credentials::Credentials;
use runner::phases::Pipeline;
use runner::provider::proxmox::config::VmConfig;
use runner::provider::{self, mark};
use runner::status::{Recorder, StatusWriter};
use runner::storage;
use serde_json::Value;

fn plan(
    migration: &str,
    source_vm: &str,
    source: ProviderPlan,
    target: ProviderPlan,
    run: &Run,
) -> RunnerPlan {
    RunnerPlan {
        migration: MigrationRef {
            namespace: "default".into(),
            name: migration.into(),
            uid: format!("uid-{migration}"),
        },
        attempt: 1,
        final_attempt: false,
        mode: RunnerMode::Migrate,
        source,
        source_vm: VmPlan {
            name: source_vm.into(),
            id: None,
        },
        target,
        target_name: format!("{migration}-copy"),
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

/// One attempt of `plan` from `previous` status (cleaned up after when it fails); the result and
/// the status writes.
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
    let started = std::time::Instant::now();
    let result = Pipeline::new(plan.clone(), source, target, stage, status, scratch.path())
        .run()
        .await;
    if result.is_err() {
        // what the operator runs for an abandoned migration: staged objects, snapshot, target
        clean_up(plan, run, &recorder.last()).await;
    }
    eprintln!(
        "{} -> {} through {:?}: {:.1}s",
        plan.source.type_,
        plan.target.type_,
        plan.storage.type_,
        started.elapsed().as_secs_f64()
    );
    (result, recorder)
}

/// The runner's cleanup mode for a failed migration, so a failing test leaves nothing behind.
async fn clean_up(plan: &RunnerPlan, run: &Run, status: &VMMigrationStatus) {
    let source = provider::source(&plan.source, &run.creds, Guard::new(true)).unwrap();
    let target = provider::target(&plan.target, &run.creds, Guard::new(true)).unwrap();
    let stage = storage::open(&plan.storage, &run.creds, &run.options)
        .await
        .unwrap();
    if let Err(e) = runner::phases::cleanup(plan, status, &*source, &*target, &*stage).await {
        eprintln!("cleanup after the failed migration: {e}");
    }
}

/// The migration succeeded: Ready, with the target id recorded; no snapshot left recorded.
fn assert_ready(result: &runner::Result<String>, rec: &Recorder) -> String {
    let id = match result {
        Ok(id) => id.clone(),
        Err(e) => panic!("migration failed: {e}; {:?}", rec.last()),
    };
    let last = rec.last();
    assert_eq!(last.phase, Some(Phase::Ready), "{last:?}");
    assert_eq!(last.target_vm_id.as_deref(), Some(id.as_str()));
    assert_eq!(last.snapshot, None, "no snapshot left recorded");
    id
}

/// The source VM's config and snapshots now, to compare before and after.
async fn source_state(
    w: &World,
    vmid: u32,
) -> (std::collections::BTreeMap<String, String>, Vec<String>) {
    let client = w.client().await;
    (
        proxmox_world::config_entries(&client, w.node(), vmid).await,
        proxmox_world::snapshots(&client, w.node(), vmid).await,
    )
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

/// A Proxmox source VM to libvirt: every disk lands with the source's guest content; the source
/// is as it was.
async fn proxmox_to_libvirt(
    source_vm: &str,
    vmid: u32,
    specs: &[pvesim::fixture::DiskSpec],
    via: Backend,
) -> Recorder {
    let (pw, lw) = (World::load(), libvirt_world::World::load());
    let before = source_state(&pw, vmid).await;
    let run = lw.staging(via, pw.creds("source", lw.creds("target")));
    let migration = unique("p2l");
    let mut plan = plan(
        &migration,
        source_vm,
        pw.plan(),
        lw.plan_for(lw.uri()),
        &run,
    );
    plan.target_storage_hint = Some("default".into());
    let _target = lw.guard(&plan.target_name);

    let (result, rec) = migrate(&plan, &run).await;
    assert_ready(&result, &rec);
    let refs = tempfile::tempdir().unwrap();
    let disks = domain_disks(&lw, &plan.target_name);
    assert_eq!(disks.len(), specs.len(), "{disks:?}");
    for (disk, spec) in disks.iter().zip(specs) {
        let r = reference(spec, refs.path());
        assert!(
            same_content(Path::new(disk), &r),
            "{disk} does not hold {}",
            spec.key
        );
    }
    assert_eq!(
        source_state(&pw, vmid).await,
        before,
        "the source is unchanged"
    );
    rec
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_source_vm_migrates_to_libvirt_through_http_as_in_scenario_3() {
    let pw = World::load();
    let rec = proxmox_to_libvirt(
        "database-server",
        100,
        &pw.fixture(100).disks,
        Backend::Http,
    )
    .await;
    let snapshotted = rec
        .last()
        .conditions
        .iter()
        .find(|c| c.type_ == "Snapshotted")
        .cloned()
        .unwrap();
    assert_eq!(snapshotted.reason.as_deref(), Some("NotNeeded"));
}

#[tokio::test(flavor = "multi_thread")]
async fn running_lvm_thin_linked_clone_migrates_to_libvirt_through_nfs() {
    let pw = World::load();
    let clone = linked_clone(&pw, &unique("lvmsrc"), Store::LvmThin, true).await;
    let rec = proxmox_to_libvirt(clone.name(), clone.vmid(), &clone.disks, Backend::Nfs).await;
    let writes = rec.writes();
    assert!(
        writes
            .iter()
            .any(|s| matches!(s.snapshot, Some(crd::SnapshotHandle::Proxmox { .. }))),
        "the snapshot was recorded"
    );
}

/// The Proxmox target VM of a migration: marked, shaped, disks holding `refs` (raw files),
/// stopped.
async fn check_proxmox_target(
    w: &World,
    plan: &RunnerPlan,
    id: &str,
    storage: &str,
    refs: &[PathBuf],
) -> VmConfig {
    let client = w.client().await;
    let vmid: u32 = id.parse().unwrap();
    let config = proxmox_world::config(&client, w.node(), vmid).await;
    assert_eq!(config.name(), Some(plan.target_name.as_str()));
    assert!(config.has_mark(&plan.migration.uid), "{config:?}");
    let disks = config.disks();
    assert_eq!(disks.len(), refs.len(), "{config:?}");
    for (d, r) in disks.iter().zip(refs) {
        assert!(
            d.volid.starts_with(&format!("{storage}:")),
            "{} is on {storage}",
            d.volid
        );
        let (file, format) = volume_file(&client, w.node(), &d.volid).await;
        assert!(
            holds(&file, &format, r),
            "{} ({}) does not hold {}",
            d.key,
            d.volid,
            r.display()
        );
    }
    let state: Value = client
        .get(&["nodes", w.node(), "qemu", id, "status", "current"], &[])
        .await
        .unwrap();
    // spec.cutover defaults: never two running copies, the target is left stopped
    assert_eq!(state["status"].as_str(), Some("stopped"), "{state}");
    let prefix = format!("{}-", plan.target_name);
    assert!(
        proxmox_world::import_files(&client, w.node(), "local", &prefix)
            .await
            .is_empty(),
        "the import files are removed"
    );
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn vsphere_vm_migrates_to_proxmox_lvm_thin_through_nfs_as_in_scenario_2() {
    let (vw, lw, pw) = (
        vsphere_world::World::load(),
        libvirt_world::World::load(),
        World::load(),
    );
    let client = vw.client().await;
    let name = vsphere_world::unique("v2p");
    let kinds = [
        vsphere_world::DiskKind::Flat,
        vsphere_world::DiskKind::Chain,
    ];
    let src = vsphere_world::source_vm(&client, &name, &kinds, 8, true).await;
    let creds = Credentials::default()
        .with("source", "username", vw.user())
        .with("source", "password", vw.password())
        .with("source", "ca.crt", vw.ca_pem());
    let run = lw.staging(Backend::Nfs, pw.creds("target", creds));
    let source = ProviderPlan {
        name: "default/vcenter".into(),
        type_: ProviderType::Vsphere,
        endpoint: vw.url().into(),
        insecure_skip_verify: false,
        defaults: Some(ProviderDefaults {
            datastore: Some(vsphere_world::DATASTORE.into()),
            ..ProviderDefaults::default()
        }),
        ssh: None,
    };
    let mut plan = plan(&name, &name, source, pw.plan(), &run);
    plan.target_storage_hint = Some("local-lvm".into());
    plan.target_network_hints = vec![NetworkHint {
        name: "eth0".into(),
        network: None,
        bridge: Some("vmbr1".into()),
    }];

    let (result, rec) = migrate(&plan, &run).await;
    let id = assert_ready(&result, &rec);
    let _target = VmGuard {
        client: pw.client().await,
        node: pw.node().into(),
        vmid: id.parse().unwrap(),
        name: plan.target_name.clone(),
    };
    let config = check_proxmox_target(&pw, &plan, &id, "local-lvm", &src.refs).await;
    assert_eq!(
        (config.cpus(), config.memory_mib()),
        (2, 256),
        "the source's shape"
    );
    assert_eq!(config.bridges(), [Some("vmbr1".to_string())]);
    let info = client.vm_info(&src.vm.vm).await.unwrap();
    assert!(
        info.snapshots.is_empty(),
        "no snapshot left on the vSphere source"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn libvirt_vm_migrates_to_proxmox_through_s3_which_pve_downloads_itself() {
    let (lw, pw) = (libvirt_world::World::load(), World::load());
    let name = libvirt_world::unique("l2p");
    let refs = tempfile::tempdir().unwrap();
    let _source = lw.make_source_vm(&name, true, refs.path());
    let run = lw.staging(Backend::S3, pw.creds("target", lw.creds("source")));
    let plan = plan(&name, &name, lw.plan_for(lw.uri()), pw.plan(), &run);

    let (result, rec) = migrate(&plan, &run).await;
    let id = assert_ready(&result, &rec);
    let _target = VmGuard {
        client: pw.client().await,
        node: pw.node().into(),
        vmid: id.parse().unwrap(),
        name: plan.target_name.clone(),
    };
    let refs = [refs.path().join("vda.raw"), refs.path().join("vdb.raw")];
    let config = check_proxmox_target(&pw, &plan, &id, "local", &refs).await;
    assert_eq!(
        config.bridges(),
        [Some("vmbr0".to_string())],
        "the Provider's default bridge"
    );
    let shown = format!("{:?}", rec.writes());
    assert!(
        !shown.contains("Downloading"),
        "the runner downloaded nothing itself"
    );
    assert!(
        !shown.contains("X-Amz-Signature"),
        "no presigned URL in the status"
    );
    let tasks: Vec<Value> = pw
        .client()
        .await
        .get(
            &["nodes", pw.node(), "tasks"],
            &[("typefilter", "download".into()), ("limit", "1000".into())],
        )
        .await
        .unwrap();
    for disk in ["vda", "vdb"] {
        let stem = format!("{}-{disk}", plan.target_name);
        let file = format!("{}.qcow2", mark::tagged(&stem, &plan.migration.uid));
        assert!(
            tasks.iter().any(|t| t["type"] == "download"
                && t["id"] == file.as_str()
                && t["status"] == "OK"),
            "PVE downloaded {file}: {tasks:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn running_dir_linked_clone_migrates_proxmox_to_proxmox_through_http() {
    let (lw, pw) = (libvirt_world::World::load(), World::load());
    let clone = linked_clone(&pw, &unique("dirsrc"), Store::Dir, true).await;
    let before = source_state(&pw, clone.vmid()).await;
    let run = lw.staging(
        Backend::Http,
        pw.creds("target", pw.creds("source", Credentials::default())),
    );
    let migration = unique("p2p");
    let mut plan = plan(&migration, clone.name(), pw.plan(), pw.plan(), &run);
    plan.target_storage_hint = Some("local-lvm".into());

    let (result, rec) = migrate(&plan, &run).await;
    let id = assert_ready(&result, &rec);
    let _target = VmGuard {
        client: pw.client().await,
        node: pw.node().into(),
        vmid: id.parse().unwrap(),
        name: plan.target_name.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let refs = [reference(&clone.disks[0], dir.path())];
    let config = check_proxmox_target(&pw, &plan, &id, "local-lvm", &refs).await;
    assert_eq!(
        (config.cpus(), config.get("ostype")),
        (2, Some("win10")),
        "the source's shape"
    );
    assert_eq!(
        source_state(&pw, clone.vmid()).await,
        before,
        "the source is unchanged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_presigns_a_bounded_get_that_needs_no_credentials() {
    let lw = libvirt_world::World::load();
    let run = lw.staging(Backend::S3, Credentials::default());
    let stage = storage::open(&run.spec, &run.creds, &run.options)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("obj.raw");
    std::fs::write(&src, b"presigned object body\n").unwrap();
    let key = format!("default/{}/presign.raw", unique("presign"));
    let object = stage
        .upload(&key, &src, &runner::progress::Progress::default())
        .await
        .unwrap();
    let presigned = stage.presign(&object).await.unwrap().expect("S3 presigns");
    assert_eq!(
        (presigned.size, presigned.sha256.as_str()),
        (object.size, object.sha256.as_str())
    );
    assert!(
        !format!("{presigned:?}").contains("X-Amz"),
        "Debug hides the URL"
    );
    let url = url::Url::parse(&presigned.url).unwrap();
    let expires: u64 = url
        .query_pairs()
        .find(|(k, _)| k == "X-Amz-Expires")
        .map(|(_, v)| v.parse().unwrap())
        .expect("an expiry");
    assert_eq!(expires, runner::storage::s3::PRESIGN_TTL.as_secs());
    let body = reqwest::get(url.clone()).await.unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(
        body.bytes().await.unwrap().as_ref(),
        b"presigned object body\n"
    );
    let mut tampered = url.clone();
    tampered.set_path(&format!("{}x", url.path()));
    assert_eq!(
        reqwest::get(tampered).await.unwrap().status(),
        403,
        "the signature covers the key"
    );
    stage.delete(&key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_pve_refuses_fails_terminally_naming_it_and_leaves_no_import_files() {
    let (lw, pw) = (libvirt_world::World::load(), World::load());
    let name = libvirt_world::unique("l2p-bad");
    let refs = tempfile::tempdir().unwrap();
    let _source = lw.make_source_vm(&name, false, refs.path());
    let run = lw.staging(Backend::Http, pw.creds("target", lw.creds("source")));
    let mut plan = plan(&name, &name, lw.plan_for(lw.uri()), pw.plan(), &run);
    // PVE wants a DNS name; the import file name may have the underscore
    plan.target_name = format!("{}_copy", name.replace('-', "_"));

    let (result, rec) = migrate(&plan, &run).await;
    let e = result.expect_err("PVE refuses the name");
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains(r#"parameter "name""#), "{e}");
    let last = rec.last();
    assert_eq!(last.phase, Some(Phase::Failed));
    assert!(
        rec.writes()
            .iter()
            .flat_map(|s| &s.disks)
            .any(|d| matches!(d.target_disk, Some(crd::TargetDiskHandle::Proxmox { .. }))),
        "the import files were recorded"
    );
    assert!(
        last.disks.iter().all(|d| d.target_disk.is_none()),
        "and forgotten once deleted"
    );
    let client = pw.client().await;
    assert!(
        proxmox_world::import_files(&client, pw.node(), "local", &plan.target_name)
            .await
            .is_empty(),
        "the terminal failure removed the import files"
    );
    let target = provider::target(&plan.target, &run.creds, Guard::new(true)).unwrap();
    assert!(
        target
            .find_vms(&plan.target_name, &plan.migration.uid)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A libvirt source domain (stopped) to migrate into the simulator through NFS: its guard, the
/// staging run and the plan.
fn libvirt_to_proxmox<'a>(
    lw: &'a libvirt_world::World,
    pw: &World,
    what: &str,
) -> (libvirt_world::DomainGuard<'a>, Run, RunnerPlan) {
    let name = libvirt_world::unique(what);
    let refs = tempfile::tempdir().unwrap();
    let guard = lw.make_source_vm(&name, false, refs.path());
    let run = lw.staging(Backend::Nfs, pw.creds("target", lw.creds("source")));
    let plan = plan(&name, &name, lw.plan_for(lw.uri()), pw.plan(), &run);
    (guard, run, plan)
}

/// The VMIDs of the simulator's VMs named `name`.
async fn vmids_named(pw: &World, name: &str) -> Vec<u32> {
    let target = pw.provider("target");
    runner::provider::Target::find_vms(&target, name, "")
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.handle.id().parse().unwrap())
        .collect()
}

/// A guard that destroys VM `id` named `name` of the simulator.
async fn guard_of(pw: &World, id: &str, name: &str) -> VmGuard {
    VmGuard {
        client: pw.client().await,
        node: pw.node().into(),
        vmid: id.parse().unwrap(),
        name: name.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_vm_whose_status_was_lost_is_found_by_its_mark_and_made_again() {
    let (lw, pw) = (libvirt_world::World::load(), World::load());
    let (_source, run, plan) = libvirt_to_proxmox(&lw, &pw, "l2p-lost");

    // the first run made the VM; its status never reached the cluster
    let (first, _) = migrate(&plan, &run).await;
    let first = first.expect("first run");
    let _first = guard_of(&pw, &first, &plan.target_name).await;
    // tell the first VM apart (PVE hands a freed VMID out again): a line under the mark
    let client = pw.client().await;
    let marked = format!(
        "{}made by the first run\n",
        runner::provider::proxmox::config::mark_description(&plan.migration.uid)
    );
    let _: Value = client
        .call(
            reqwest::Method::PUT,
            &["nodes", pw.node(), "qemu", &first, "config"],
            &[("description", marked)],
        )
        .await
        .unwrap();

    let (second, rec) = migrate(&plan, &run).await;
    let second = assert_ready(&second, &rec);
    let _second = guard_of(&pw, &second, &plan.target_name).await;
    assert_eq!(
        vmids_named(&pw, &plan.target_name).await,
        [second.parse::<u32>().unwrap()],
        "exactly one VM of the name"
    );
    let config = proxmox_world::config(&client, pw.node(), second.parse().unwrap()).await;
    assert!(config.has_mark(&plan.migration.uid), "{config:?}");
    assert!(
        !config
            .get("description")
            .unwrap_or_default()
            .contains("first run"),
        "the first run's VM was destroyed and this one made again: {config:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_vm_with_the_target_name_fails_the_migration_and_is_left_as_it_was() {
    let (lw, pw) = (libvirt_world::World::load(), World::load());
    let (_source, run, plan) = libvirt_to_proxmox(&lw, &pw, "l2p-foreign");
    let client = pw.client().await;

    // no mark at all, then the mark of another migration
    let description = runner::provider::proxmox::config::mark_description("uid-someone-else");
    for mark in [None, Some(description)] {
        let vmid = proxmox_world::free_vmid(&pw);
        let mut params = vec![
            ("vmid", vmid.to_string()),
            ("name", plan.target_name.clone()),
        ];
        if let Some(d) = mark {
            params.push(("tags", "virtrigaud".into()));
            params.push(("description", d));
        }
        client
            .run_task(
                reqwest::Method::POST,
                &["nodes", pw.node(), "qemu"],
                &params,
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap();
        let _theirs = guard_of(&pw, &vmid.to_string(), &plan.target_name).await;
        let before = proxmox_world::config_entries(&client, pw.node(), vmid).await;

        let (result, rec) = migrate(&plan, &run).await;
        let e = result.expect_err("the name is taken");
        assert_eq!(e.reason(), "NotOwned", "{e}");
        let text = e.to_string();
        for part in [
            plan.target_name.as_str(),
            &format!("(id {vmid})"),
            "does not carry the mark of migration",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        assert_eq!(rec.last().phase, Some(Phase::Failed));
        let after = proxmox_world::config_entries(&client, pw.node(), vmid).await;
        assert_eq!(after, before, "untouched");
        assert_eq!(vmids_named(&pw, &plan.target_name).await, [vmid]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_import_file_that_is_not_ours_is_refused_for_reuse_and_kept() {
    let (lw, pw) = (libvirt_world::World::load(), World::load());
    let (_source, run, plan) = libvirt_to_proxmox(&lw, &pw, "l2p-file");
    let client = pw.client().await;
    // someone else's import file, uploaded as PVE takes them
    let prefix = format!("{}-theirs", plan.migration.name);
    let _files = proxmox_world::ImportFilesGuard {
        client: client.clone(),
        node: pw.node().into(),
        prefix: prefix.clone(),
    };
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("theirs.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&file)
        .arg("64M")
        .output()
        .unwrap();
    assert!(out.status.success());
    let bytes = std::fs::read(&file).unwrap();
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let filename = format!("{prefix}-vda.qcow2");
    runner::provider::proxmox::transfer::upload(
        &client,
        pw.node(),
        "local",
        &filename,
        &file,
        &sha256,
        &runner::progress::Progress::default(),
    )
    .await
    .unwrap();
    let volid = format!("local:import/{filename}");
    let status = VMMigrationStatus {
        disks: vec![crd::DiskStatus {
            name: "vda".into(),
            target_format: Some(crd::DiskFormat::Qcow2),
            target_disk: Some(crd::TargetDiskHandle::Proxmox {
                node: pw.node().into(),
                volid: volid.clone(),
                size: bytes.len() as u64,
            }),
            ..crd::DiskStatus::default()
        }],
        ..VMMigrationStatus::default()
    };

    let (result, rec) = attempt(&plan, &run, &status).await;
    let e = result.expect_err("the recorded import file is not reused");
    assert_eq!(e.reason(), "NotOwned", "{e}");
    assert!(e.to_string().contains(&volid), "{e}");
    let files = proxmox_world::import_files(&client, pw.node(), "local", &prefix).await;
    assert_eq!(files, std::slice::from_ref(&volid), "kept");
    assert!(vmids_named(&pw, &plan.target_name).await.is_empty());
    assert!(rec.last().disks.iter().all(|d| d.target_disk.is_none()));
    clean_up(&plan, &run, &status).await;
    let files = proxmox_world::import_files(&client, pw.node(), "local", &prefix).await;
    assert_eq!(files, [volid], "kept by cleanup too");
}
