//! Whole migrations libvirt -> libvirt on the e2e world's libvirtd, through each staging backend of
//! the world (S3 on s3s-fs, HTTP on nginx WebDAV, NFS as a local directory): the pipeline the runner
//! binary runs, with the real libvirt provider at both ends. A running two-disk domain (qcow2 + raw,
//! known content) is copied; the target volumes must hold the source's guest content, and the
//! source must be exactly as before (no snapshot left, disks pivoted back onto their base images).
//! Needs `make e2e-up`.

mod libvirt_world;

use runner::endpoint::Guard;
use std::path::Path;

use crd::plan::{MigrationRef, RunnerMode, RunnerPlan, VmPlan};
use crd::{CleanupPolicy, DiskFormat, Phase, TargetResources, VMMigrationStatus};
use libvirt_world::{Backend, World, same_content, unique};
use runner::phases::Pipeline;
use runner::provider;
use runner::status::{Recorder, StatusWriter};
use runner::storage;

/// Migrates a fresh running source domain through `via` and checks everything. `format` is the
/// targetDiskFormat (None: libvirt's native qcow2).
async fn migrate(via: Backend, format: Option<DiskFormat>) {
    let world = World::load();
    let name = unique("lvm-src");
    let target_name = format!("{name}-copy");
    let refs = tempfile::tempdir().unwrap();
    let _source_guard = world.make_source_vm(&name, true, refs.path());
    let _target_guard = world.guard(&target_name);
    let creds = world
        .creds("source")
        .with("target", "username", world.var("VRG_LIBVIRT_USER"))
        .with("target", "password", world.var("VRG_LIBVIRT_PASSWORD"));
    let run = world.staging(via, creds);

    let live_before = world.virsh_ok(&["dumpxml", &name]);
    let inactive_before = world.virsh_ok(&["dumpxml", "--inactive", &name]);

    let plan = RunnerPlan {
        migration: MigrationRef {
            namespace: "default".into(),
            name: name.clone(),
            uid: format!("uid-{name}"),
        },
        attempt: 1,
        mode: RunnerMode::Migrate,
        source: world.plan_for(world.uri()),
        source_vm: VmPlan {
            name: name.clone(),
            id: None,
        },
        target: world.plan_for(world.uri()),
        target_name: target_name.clone(),
        target_storage_hint: Some("default".into()),
        target_network_hints: Vec::new(),
        target_disk_format: format,
        target_resources: Some(TargetResources {
            cpu: Some(2),
            memory: None,
        }),
        storage: run.spec.clone(),
        cleanup_policy: CleanupPolicy::default(),
        allow_loopback_endpoints: true,
    };
    let source = provider::source(&plan.source, &run.creds, Guard::new(true)).unwrap();
    let target = provider::target(&plan.target, &run.creds, Guard::new(true)).unwrap();
    let stage = storage::open(&plan.storage, &run.creds, &run.options)
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let status = StatusWriter::new(Box::new(recorder.clone()), &VMMigrationStatus::default());
    let id = Pipeline::new(plan, source, target, stage, status, scratch.path())
        .run()
        .await
        .unwrap_or_else(|e| panic!("migration failed: {e}; last status {:?}", recorder.last()));

    let last = recorder.last();
    assert_eq!(last.phase, Some(Phase::Ready), "{last:?}");
    assert_eq!(last.target_vm_id.as_deref(), Some(id.as_str()));

    // the target: defined from the source's shape (vCPU override), started like the source
    let target_xml = world.virsh_ok(&["dumpxml", &target_name]);
    assert!(
        target_xml.contains(&format!("<uuid>{id}</uuid>")),
        "{target_xml}"
    );
    assert!(target_xml.contains(">2</vcpu>"), "{target_xml}");
    assert!(
        world
            .virsh_ok(&["domstate", &target_name])
            .contains("running")
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
