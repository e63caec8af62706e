//! Whole migrations libvirt -> libvirt on the e2e world's libvirtd, through each staging backend of
//! the world (S3 on s3s-fs, HTTP on nginx WebDAV, NFS as a local directory): the pipeline the runner
//! binary runs, with the real libvirt provider at both ends. A running two-disk domain (qcow2 + raw,
//! known content) is copied; the target volumes must hold the source's guest content, and the
//! source must be exactly as before (no snapshot left, disks pivoted back onto their base images).
//! Also the marks: a target domain of the migration that the status lost is found by its mark and
//! made again; a foreign domain of the target name, or a recorded volume that is not the
//! migration's, fails the migration and is left as it was. Needs `make e2e-up`.

mod libvirt_world;

use runner::endpoint::Guard;
use std::path::Path;

use crd::plan::{MigrationRef, RunnerMode, RunnerPlan, VmPlan};
use crd::{CleanupPolicy, DiskFormat, Phase, TargetResources, VMMigrationStatus};
use libvirt_world::{Backend, Run, World, same_content, unique};
use runner::phases::Pipeline;
use runner::provider::{self, mark};
use runner::status::{Recorder, StatusWriter};
use runner::storage;

/// The libvirt -> libvirt plan of source domain `name` into `<name>-copy` through `run`.
fn plan(world: &World, name: &str, run: &Run) -> RunnerPlan {
    RunnerPlan {
        migration: MigrationRef {
            namespace: "default".into(),
            name: name.to_string(),
            uid: format!("uid-{name}"),
        },
        attempt: 1,
        final_attempt: false,
        mode: RunnerMode::Migrate,
        source: world.plan_for(world.uri()),
        source_vm: VmPlan {
            name: name.to_string(),
            id: None,
        },
        target: world.plan_for(world.uri()),
        target_name: format!("{name}-copy"),
        target_storage_hint: Some("default".into()),
        target_network_hints: Vec::new(),
        target_disk_format: None,
        target_resources: Some(TargetResources {
            cpu: Some(2),
            memory: None,
        }),
        storage: run.spec.clone(),
        cleanup_policy: CleanupPolicy::default(),
        cutover: Default::default(),
        allow_loopback_endpoints: true,
    }
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

/// Credentials for the world's libvirtd as source and target.
fn both_ends(world: &World) -> runner::credentials::Credentials {
    world
        .creds("source")
        .with("target", "username", world.var("VRG_LIBVIRT_USER"))
        .with("target", "password", world.var("VRG_LIBVIRT_PASSWORD"))
}

/// Migrates a fresh running source domain through `via` and checks everything. `format` is the
/// targetDiskFormat (None: libvirt's native qcow2).
async fn migrate(via: Backend, format: Option<DiskFormat>) {
    let world = World::load();
    let name = unique("lvm-src");
    let target_name = format!("{name}-copy");
    let refs = tempfile::tempdir().unwrap();
    let _source_guard = world.make_source_vm(&name, true, refs.path());
    let _target_guard = world.guard(&target_name);
    let run = world.staging(via, both_ends(&world));

    let live_before = world.virsh_ok(&["dumpxml", &name]);
    let inactive_before = world.virsh_ok(&["dumpxml", "--inactive", &name]);

    let mut plan = plan(&world, &name, &run);
    plan.target_disk_format = format;
    let (result, recorder) = attempt(&plan, &run, &VMMigrationStatus::default()).await;
    let id = result
        .unwrap_or_else(|e| panic!("migration failed: {e}; last status {:?}", recorder.last()));

    let last = recorder.last();
    assert_eq!(last.phase, Some(Phase::Ready), "{last:?}");
    assert_eq!(last.target_vm_id.as_deref(), Some(id.as_str()));

    // the target: defined from the source's shape (vCPU override), left stopped while the
    // source runs (spec.cutover defaults)
    let target_xml = world.virsh_ok(&["dumpxml", &target_name]);
    assert!(
        target_xml.contains(&format!("<uuid>{id}</uuid>")),
        "{target_xml}"
    );
    assert!(target_xml.contains(">2</vcpu>"), "{target_xml}");
    assert!(
        world
            .virsh_ok(&["domstate", &target_name])
            .contains("shut off")
    );
    let want = format.unwrap_or(DiskFormat::Qcow2);
    let disks: Vec<String> = world
        .virsh_ok(&["domblklist", &target_name])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .filter(|p| p != "-")
        .collect();
    assert_eq!(disks.len(), 2, "{disks:?}");
    for (disk, reference) in disks.iter().zip(["vda.raw", "vdb.raw"]) {
        assert!(disk.ends_with(&format!(".{want}")), "{disk}");
        assert!(
            same_content(Path::new(disk), &refs.path().join(reference)),
            "{disk} does not hold the source's {reference} content"
        );
    }

    // the source: unchanged, no snapshot, disks back on their base images, no overlay left
    assert_eq!(world.virsh_ok(&["dumpxml", &name]), live_before);
    assert_eq!(
        world.virsh_ok(&["dumpxml", "--inactive", &name]),
        inactive_before
    );
    assert_eq!(
        world.virsh_ok(&["snapshot-list", &name, "--name"]).trim(),
        ""
    );
    assert!(world.virsh_ok(&["domstate", &name]).contains("running"));
    let mut source_volumes = world.volumes(&name);
    source_volumes.retain(|v| !v.starts_with(&target_name));
    assert_eq!(
        source_volumes,
        [format!("{name}-vda.qcow2"), format!("{name}-vdb.raw")]
    );
    for (disk, reference) in ["vda.qcow2", "vdb.raw"].iter().zip(["vda.raw", "vdb.raw"]) {
        assert!(same_content(
            &world.pool_dir().join(format!("{name}-{disk}")),
            &refs.path().join(reference)
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn running_domain_migrates_through_s3() {
    migrate(Backend::S3, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn running_domain_migrates_through_http() {
    migrate(Backend::Http, Some(DiskFormat::Raw)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn running_domain_migrates_through_nfs() {
    migrate(Backend::Nfs, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_source_powers_the_source_off_reads_the_target_back_and_then_deletes_it() {
    let world = World::load();
    let name = unique("lvm-cut");
    let target_name = format!("{name}-copy");
    let refs = tempfile::tempdir().unwrap();
    let _source_guard = world.make_source_vm(&name, true, refs.path());
    let _target_guard = world.guard(&target_name);
    let run = world.staging(Backend::Nfs, both_ends(&world));
    let mut plan = plan(&world, &name, &run);
    plan.cleanup_policy.delete_source = true;
    plan.cutover.stop_source = crd::StopSource::PowerOff;

    let (result, rec) = attempt(&plan, &run, &VMMigrationStatus::default()).await;
    result.unwrap_or_else(|e| panic!("migration failed: {e}; {:?}", rec.last()));
    let last = rec.last();
    assert_eq!(last.phase, Some(Phase::Ready), "{last:?}");
    let snapshotted = last
        .conditions
        .iter()
        .find(|c| c.type_ == "Snapshotted")
        .unwrap();
    assert_eq!(
        snapshotted.reason.as_deref(),
        Some("SourceStopped"),
        "no snapshot of a stopped source"
    );
    let validated = last
        .conditions
        .iter()
        .find(|c| c.type_ == "TargetValidated")
        .and_then(|c| c.message.clone())
        .unwrap();
    assert!(
        validated.contains("guest content of 2 disks read back and matching the source"),
        "{validated}"
    );
    for d in &last.disks {
        assert_eq!(d.guest_sha256.as_ref().map(String::len), Some(64), "{d:?}");
    }

    // the target runs the source's content; the source domain and its volumes are gone
    assert!(
        world
            .virsh_ok(&["domstate", &target_name])
            .contains("running")
    );
    let disks: Vec<String> = world
        .virsh_ok(&["domblklist", &target_name])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .filter(|p| p != "-" && p != "Source")
        .collect();
    for (disk, reference) in disks.iter().zip(["vda.raw", "vdb.raw"]) {
        assert!(
            same_content(Path::new(disk), &refs.path().join(reference)),
            "{disk}"
        );
    }
    assert_eq!(domains_named(&world, &name), 0, "the source is deleted");
    let mut left = world.volumes(&name);
    left.retain(|v| !v.starts_with(&target_name));
    assert!(
        left.is_empty(),
        "the source's volumes went with it: {left:?}"
    );
    assert!(
        last.message
            .unwrap()
            .contains(&format!("source VM {name} deleted"))
    );
}

/// How many domains (running or not) are called `name`.
fn domains_named(world: &World, name: &str) -> usize {
    world
        .virsh_ok(&["list", "--all", "--name"])
        .lines()
        .filter(|l| l.trim() == name)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_domain_whose_status_was_lost_is_found_by_its_mark_and_made_again() {
    let world = World::load();
    let name = unique("lvm-lost");
    let refs = tempfile::tempdir().unwrap();
    let _source = world.make_source_vm(&name, false, refs.path());
    let run = world.staging(Backend::Nfs, both_ends(&world));
    let plan = plan(&world, &name, &run);
    let _target = world.guard(&plan.target_name);

    // the first run made the domain; its status never reached the cluster
    let (first, _) = attempt(&plan, &run, &VMMigrationStatus::default()).await;
    let first = first.expect("first run");
    let (second, rec) = attempt(&plan, &run, &VMMigrationStatus::default()).await;
    let second = second.unwrap_or_else(|e| panic!("second run: {e}; {:?}", rec.last()));
    assert_eq!(rec.last().phase, Some(Phase::Ready));
    assert_ne!(
        second, first,
        "the unrecorded domain was deleted and made again"
    );
    assert_eq!(domains_named(&world, &plan.target_name), 1);
    let uuid = world.virsh_ok(&["domuuid", &plan.target_name]);
    assert_eq!(uuid.trim(), second);
    let volumes = world.volumes(&plan.target_name);
    assert_eq!(
        volumes.len(),
        2,
        "no volume of the first run is left: {volumes:?}"
    );
    for v in &volumes {
        assert!(mark::carries_tag(v, &plan.migration.uid), "{v}");
    }
    for (disk, reference) in world
        .virsh_ok(&["domblklist", &plan.target_name])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with('/'))
        .zip(["vda.raw", "vdb.raw"])
    {
        assert!(same_content(Path::new(disk), &refs.path().join(reference)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_domain_with_the_target_name_fails_the_migration_and_is_left_as_it_was() {
    let world = World::load();
    let name = unique("lvm-foreign");
    let refs = tempfile::tempdir().unwrap();
    let _source = world.make_source_vm(&name, false, refs.path());
    let run = world.staging(Backend::Nfs, both_ends(&world));
    let plan = plan(&world, &name, &run);
    let _target = world.guard(&plan.target_name);
    let source_before = world.virsh_ok(&["dumpxml", &name]);
    let xml_dir = tempfile::tempdir().unwrap();

    // no mark at all, then the mark of another migration
    let marks = [
        String::new(),
        format!(
            "<metadata><vrg:migration xmlns:vrg='{}' uid='uid-someone-else'/></metadata>",
            "https://virtrigaud.io/xmlns/migration/v1"
        ),
    ];
    for metadata in marks {
        let xml = format!(
            "<domain type='qemu'><name>{}</name>{metadata}<memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os></domain>",
            plan.target_name
        );
        let file = xml_dir.path().join("foreign.xml");
        std::fs::write(&file, xml).unwrap();
        world.virsh_ok(&["define", file.to_str().unwrap()]);
        let before = world.virsh_ok(&["dumpxml", &plan.target_name]);
        let uuid = world.virsh_ok(&["domuuid", &plan.target_name]);

        let (result, rec) = attempt(&plan, &run, &VMMigrationStatus::default()).await;
        let e = result.expect_err("the name is taken");
        assert_eq!(e.reason(), "NotOwned", "{e}");
        let text = e.to_string();
        for part in [
            plan.target_name.as_str(),
            uuid.trim(),
            "does not carry the mark of migration",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        assert_eq!(rec.last().phase, Some(Phase::Failed));
        assert_eq!(world.virsh_ok(&["dumpxml", &plan.target_name]), before);
        assert_eq!(world.virsh_ok(&["dumpxml", &name]), source_before);
        world.virsh_ok(&["undefine", &plan.target_name]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_volume_that_is_not_ours_is_refused_for_reuse_and_kept() {
    let world = World::load();
    let name = unique("lvm-vol");
    let refs = tempfile::tempdir().unwrap();
    let _source = world.make_source_vm(&name, false, refs.path());
    let run = world.staging(Backend::Nfs, both_ends(&world));
    let plan = plan(&world, &name, &run);
    let _target = world.guard(&plan.target_name);
    // the status claims the source's own disk was imported as the target's vda
    let source_vda = world.pool_dir().join(format!("{name}-vda.qcow2"));
    let bytes_before = std::fs::read(&source_vda).unwrap();
    let status = VMMigrationStatus {
        disks: vec![crd::DiskStatus {
            name: "vda".into(),
            target_format: Some(DiskFormat::Qcow2),
            target_disk: Some(crd::TargetDiskHandle::Libvirt {
                path: source_vda.display().to_string(),
            }),
            ..crd::DiskStatus::default()
        }],
        ..VMMigrationStatus::default()
    };

    let (result, rec) = attempt(&plan, &run, &status).await;
    let e = result.expect_err("the recorded volume is not reused");
    assert_eq!(e.reason(), "NotOwned", "{e}");
    assert!(
        e.to_string().contains(&source_vda.display().to_string()),
        "{e}"
    );
    assert_eq!(std::fs::read(&source_vda).unwrap(), bytes_before, "kept");
    assert_eq!(domains_named(&world, &plan.target_name), 0);
    assert!(rec.last().disks.iter().all(|d| d.target_disk.is_none()));

    // cleanup (with the status as it was and as it ended) keeps it too
    let source = provider::source(&plan.source, &run.creds, Guard::new(true)).unwrap();
    let target = provider::target(&plan.target, &run.creds, Guard::new(true)).unwrap();
    let stage = storage::open(&plan.storage, &run.creds, &run.options)
        .await
        .unwrap();
    for s in [status, rec.last()] {
        runner::phases::cleanup(&plan, &s, &*source, &*target, &*stage)
            .await
            .expect("what is not ours is kept, not an error");
    }
    assert_eq!(std::fs::read(&source_vda).unwrap(), bytes_before);
    assert!(world.virsh_ok(&["domstate", &name]).contains("shut off"));
}
