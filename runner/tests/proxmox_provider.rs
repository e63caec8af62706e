//! The Proxmox VE provider against the e2e world's simulator: inspection of the fixture VMs,
//! exports of stopped VMs (linked clones come out flattened) and of running ones as of their
//! snapshot on both storages (data written after the snapshot must not show), what PVE refuses,
//! the credential errors, and the target's import session (VMID races, marks, unknown storage).
//! Needs the world (`e2e/scripts/pvesim-up.sh`); fails without it.

mod proxmox_world;

use runner::endpoint::Guard;
use std::path::Path;

use crd::{DiskFormat, SnapshotHandle, StopSource, TargetDiskHandle, TargetVmHandle};
use proxmox_world::{
    Store, TestVm, World, copy_of_source, holds, linked_clone, qemu_io, reference, unique,
    volume_file,
};
use reqwest::Method;
use runner::credentials::Credentials;
use runner::progress::Progress;
use runner::provider::proxmox::ProxmoxProvider;
use runner::provider::{
    Firmware, ImportInput, LocalImage, NewDisk, NewVm, OsFamily, Source, Target, VmShape, mark,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// Exports every disk of `vm` (as of `snapshot`) into `dir`, in one session.
async fn export_all(
    p: &ProxmoxProvider,
    vm: &VmShape,
    snapshot: Option<&SnapshotHandle>,
    dir: &Path,
) -> Vec<LocalImage> {
    let mut session = p.export(vm, snapshot).await.unwrap();
    let mut images = Vec::new();
    for d in &vm.disks {
        let progress = Progress::new(d.virtual_size);
        let image = session
            .export_disk(d, dir, &progress)
            .await
            .unwrap_or_else(|e| panic!("exporting {} of {}: {e}", d.name, vm.name));
        assert_eq!(
            progress.done(),
            d.virtual_size,
            "{}: progress counts the disk",
            d.name
        );
        images.push(image);
    }
    session.finish().await.unwrap();
    images
}

/// Each exported image is a self-contained raw image with the expected guest bytes.
fn assert_content(images: &[LocalImage], specs: &[pvesim::fixture::DiskSpec], dir: &Path) {
    assert_eq!(images.len(), specs.len());
    for (image, spec) in images.iter().zip(specs) {
        assert_eq!(image.format, DiskFormat::Raw, "{}", image.path.display());
        let len = std::fs::metadata(&image.path).unwrap().len();
        assert_eq!(len, spec.size, "{}", image.path.display());
        let expected = reference(spec, dir);
        assert!(
            holds(&image.path, "raw", &expected),
            "{} does not hold the guest content of {}",
            image.path.display(),
            spec.key
        );
        std::fs::remove_file(expected).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inspects_the_fixture_vms() {
    let w = World::load();
    let p = w.provider("source");
    Source::check(&p).await.unwrap();

    let vm = p.inspect("database-server").await.unwrap();
    assert_eq!(
        (vm.id.as_str(), vm.cpus, vm.memory_bytes),
        ("100", 2, 2048 * MIB)
    );
    assert_eq!(
        (vm.firmware, vm.os, vm.running, vm.nics),
        (Firmware::Bios, OsFamily::Linux, false, 1)
    );
    let disks: Vec<(&str, DiskFormat, u64, &str)> = vm
        .disks
        .iter()
        .map(|d| {
            (
                d.name.as_str(),
                d.format,
                d.virtual_size,
                d.locator.as_str(),
            )
        })
        .collect();
    let spec = w.fixture(100);
    assert_eq!(
        disks,
        [
            (
                "scsi0",
                DiskFormat::Qcow2,
                spec.disks[0].size,
                "local:100/vm-100-disk-0.qcow2"
            ),
            (
                "scsi1",
                DiskFormat::Raw,
                spec.disks[1].size,
                "local-lvm:vm-100-disk-0"
            ),
        ]
    );

    let web = p.inspect("web-clone").await.unwrap();
    assert_eq!(web.id, "101");
    assert_eq!(
        web.disks[0].locator,
        "local:900/base-900-disk-0.qcow2/101/vm-101-disk-0.qcow2"
    );
    let app = p.inspect("app-clone").await.unwrap();
    assert_eq!(
        (app.disks[0].locator.as_str(), app.disks[0].format),
        ("local-lvm:vm-102-disk-0", DiskFormat::Raw)
    );

    let e = p.inspect("base-template").await.unwrap_err();
    assert!(e.to_string().contains("is a template"), "{e}");
    assert!(!e.is_retryable());
    let e = p.inspect(&unique("absent")).await.unwrap_err();
    assert_eq!(e.reason(), "NotFound", "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_fixture_vms_export_their_current_content_linked_clones_flattened() {
    let w = World::load();
    let p = w.provider("source");
    let dir = tempfile::tempdir().unwrap();
    for (name, vmid) in [
        ("database-server", 100),
        ("web-clone", 101),
        ("app-clone", 102),
    ] {
        let vm = p.inspect(name).await.unwrap();
        assert_eq!(
            p.snapshot(&vm, "vrg-never").await.unwrap(),
            None,
            "{name} is stopped: no snapshot"
        );
        let images = export_all(&p, &vm, None, dir.path()).await;
        assert_content(&images, &w.fixture(vmid).disks, dir.path());
        for image in images {
            std::fs::remove_file(image.path).unwrap();
        }
    }
}

/// Snapshots a running test VM, writes over its live disks, exports as of the snapshot (the
/// writes must not show), deletes the snapshot.
async fn snapshot_export_and_release(w: &World, vm: &TestVm, overwrite: &[(&str, &str)]) {
    let p = w.provider("source");
    let shape = p.inspect(vm.name()).await.unwrap();
    assert!(shape.running);
    let owner = format!("uid-{}", vm.vmid());
    let label = mark::snapshot_label(&owner);
    let snap = p
        .snapshot(&shape, &label)
        .await
        .unwrap()
        .expect("a running VM is snapshotted");
    assert_eq!(
        snap,
        SnapshotHandle::Proxmox {
            node: w.node().into(),
            vmid: vm.vmid(),
            name: label.clone()
        }
    );
    // a second attempt reuses it
    assert_eq!(
        p.snapshot(&shape, &label).await.unwrap(),
        Some(snap.clone())
    );
    let client = &vm.guard.client;
    assert_eq!(
        proxmox_world::snapshots(client, w.node(), vm.vmid()).await,
        vec![label.clone()]
    );

    for (volid, format) in overwrite {
        let (file, _) = volume_file(client, w.node(), volid).await;
        qemu_io(&file, format, &[(0, 2 * MIB, 0xee)]);
    }
    let dir = tempfile::tempdir().unwrap();
    let images = export_all(&p, &shape, Some(&snap), dir.path()).await;
    assert_content(&images, &vm.disks, dir.path());

    // only the migration whose name the snapshot carries removes it
    let e = p.delete_snapshot(&snap, "uid-another").await.unwrap_err();
    assert_eq!(e.reason(), "NotOwned", "{e}");
    assert_eq!(
        proxmox_world::snapshots(client, w.node(), vm.vmid()).await,
        vec![label.clone()],
        "kept"
    );
    p.delete_snapshot(&snap, &owner).await.unwrap();
    assert!(
        proxmox_world::snapshots(client, w.node(), vm.vmid())
            .await
            .is_empty()
    );
    p.delete_snapshot(&snap, &owner)
        .await
        .expect("an absent snapshot is fine");
}

#[tokio::test(flavor = "multi_thread")]
async fn running_vm_exports_as_of_its_snapshot_on_dir_and_lvm_thin() {
    let w = World::load();
    let vm = copy_of_source(&w, &unique("snap"), true).await;
    let id = vm.vmid();
    let (qcow2, lv) = (
        format!("local:{id}/vm-{id}-disk-0.qcow2"),
        format!("local-lvm:vm-{id}-disk-0"),
    );
    snapshot_export_and_release(&w, &vm, &[(&qcow2, "qcow2"), (&lv, "raw")]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn running_linked_clones_export_flattened_as_of_their_snapshot() {
    let w = World::load();
    let dir_clone = linked_clone(&w, &unique("dirclone"), Store::Dir, true).await;
    let id = dir_clone.vmid();
    let volid = format!("local:900/base-900-disk-0.qcow2/{id}/vm-{id}-disk-0.qcow2");
    let shape = w
        .provider("source")
        .inspect(dir_clone.name())
        .await
        .unwrap();
    assert_eq!(
        (shape.cpus, shape.os, shape.disks[0].locator.as_str()),
        (2, OsFamily::Windows, volid.as_str())
    );
    snapshot_export_and_release(&w, &dir_clone, &[(&volid, "qcow2")]).await;

    let lvm_clone = linked_clone(&w, &unique("lvmclone"), Store::LvmThin, true).await;
    let lv = format!("local-lvm:vm-{}-disk-0", lvm_clone.vmid());
    snapshot_export_and_release(&w, &lvm_clone, &[(&lv, "raw")]).await;
    // the snapshot LV was deactivated after the read
    let out = w
        .provider("source")
        .ssh()
        .await
        .unwrap()
        .run(&["lvs", "--noheadings", "-o", "lv_name,lv_attr", "pve"])
        .await
        .unwrap();
    assert!(
        !out.contains(&format!("snap_vm-{}-disk-0", lvm_clone.vmid())),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn what_pve_refuses_is_refused_with_its_reason() {
    let w = World::load();
    let p = w.provider("source");
    let ssh = p.ssh().await.unwrap();
    for (argv, says) in [
        (
            vec![
                "pvesm",
                "export",
                "local:100/vm-100-disk-0.qcow2",
                "qcow2+size",
                "-",
            ],
            "qcow2+size not available for PVE::Storage::DirPlugin",
        ),
        (
            vec![
                "pvesm",
                "export",
                "local:100/vm-100-disk-0.qcow2",
                "raw+size",
                "-",
                "--snapshot",
                "x",
            ],
            "raw+size not available for PVE::Storage::DirPlugin",
        ),
        (
            vec![
                "pvesm",
                "export",
                "local-lvm:vm-100-disk-0",
                "raw+size",
                "-",
                "--snapshot",
                "x",
            ],
            "cannot export a snapshot in PVE::Storage::LvmThinPlugin",
        ),
        (
            vec![
                "pvesm",
                "export",
                "local-lvm:vm-100-disk-0",
                "raw+size",
                "-",
                "--with-snapshots",
                "1",
            ],
            "cannot export volumes together with their snapshots",
        ),
    ] {
        let e = ssh.run(&argv).await.unwrap_err();
        assert_eq!(e.reason(), "ToolFailed", "{argv:?}: {e}");
        assert!(e.to_string().contains(says), "{argv:?}: {e}");
        assert!(!e.is_retryable());
    }

    // a running VM with a raw file on dir storage: no snapshot is tried
    let client = w.client().await;
    let name = unique("rawdir");
    let vmid = proxmox_world::free_vmid(&w);
    let params = [
        ("vmid", vmid.to_string()),
        ("name", name.clone()),
        ("scsi0", "local:0.0625,format=raw".to_string()),
    ];
    client
        .run_task(
            Method::POST,
            &["nodes", w.node(), "qemu"],
            &params,
            std::time::Duration::from_secs(120),
        )
        .await
        .unwrap();
    let guard = proxmox_world::VmGuard {
        client: client.clone(),
        node: w.node().into(),
        vmid,
        name: name.clone(),
    };
    proxmox_world::start(&guard).await;
    let shape = p.inspect(&name).await.unwrap();
    let e = p.snapshot(&shape, "vrg-raw").await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("raw file on directory storage local") && text.contains("stop the VM"),
        "{text}"
    );
    assert!(
        proxmox_world::snapshots(&client, w.node(), vmid)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_privileges_and_host_keys_are_authentication_errors() {
    let w = World::load();
    let wrong =
        w.creds("source", Credentials::default())
            .with("source", "token_secret", "not-the-secret");
    let p = ProxmoxProvider::new(&w.plan(), &wrong, "source", Guard::new(true)).unwrap();
    let e = Source::check(&p).await.unwrap_err();
    assert_eq!(e.reason(), "AuthenticationFailed", "{e}");
    assert!(
        e.to_string().contains("token_secret") && !e.to_string().contains("not-the-secret"),
        "{e}"
    );

    let readonly = w
        .creds("source", Credentials::default())
        .with("source", "token_id", w.var("VRG_PVE_READONLY_TOKEN_ID"))
        .with(
            "source",
            "token_secret",
            w.var("VRG_PVE_READONLY_TOKEN_SECRET"),
        );
    let p = ProxmoxProvider::new(&w.plan(), &readonly, "source", Guard::new(true)).unwrap();
    let vm = copy_of_source(&w, &unique("ro"), true).await;
    let shape = p.inspect(vm.name()).await.expect("PVEAuditor may read");
    let e = p.snapshot(&shape, "vrg-ro").await.unwrap_err();
    assert_eq!(e.reason(), "AuthenticationFailed", "{e}");
    assert!(
        e.to_string()
            .contains(&format!("lacks VM.Snapshot on /vms/{}", vm.vmid())),
        "{e}"
    );

    let other_key = "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOaZ2bGk0C7wWv4tJ3fX5c8oN4f0f6uFf3Zq2Y1m3x9P";
    let creds = w
        .creds("source", Credentials::default())
        .with("source", "known_hosts", other_key);
    let p = ProxmoxProvider::new(&w.plan(), &creds, "source", Guard::new(true)).unwrap();
    let e = Source::check(&p).await.unwrap_err();
    assert_eq!(e.reason(), "AuthenticationFailed", "{e}");
    assert!(e.to_string().contains("host key"), "{e}");

    let mut creds = Credentials::default();
    for key in ["token_id", "token_secret", "ca.crt", "ssh-privatekey"] {
        creds = creds.with(
            "source",
            key,
            w.creds("source", Credentials::default())
                .get("source", key)
                .unwrap(),
        );
    }
    let p = ProxmoxProvider::new(&w.plan(), &creds, "source", Guard::new(true)).unwrap();
    let e = Source::check(&p).await.unwrap_err();
    assert_eq!(e.reason(), "InvalidPlan", "{e}");
    assert!(
        e.to_string().contains("known_hosts") && e.to_string().contains("always verified"),
        "{e}"
    );
}

fn new_vm(name: &str, storage: Option<&str>) -> NewVm {
    NewVm {
        name: name.into(),
        cpus: 1,
        memory_bytes: 128 * MIB,
        firmware: Firmware::Bios,
        os: OsFamily::Other,
        disks: vec![NewDisk {
            name: "scsi0".into(),
            virtual_size: 8 * MIB,
            format: DiskFormat::Qcow2,
        }],
        networks: Vec::new(),
        storage_hint: storage.map(str::to_string),
        owner: format!("uid-{name}"),
    }
}

/// The volume ID of the import file of `vm`'s one disk: named with the migration's tag.
fn import_file(vm: &NewVm) -> String {
    let stem = format!("{}-scsi0", vm.name);
    format!("local:import/{}.qcow2", mark::tagged(&stem, &vm.owner))
}

/// Whether a VM of that name exists.
async fn exists(p: &ProxmoxProvider, name: &str) -> bool {
    !p.find_vms(name, "").await.unwrap().is_empty()
}

/// A qcow2 image of `mib` MiB with a pattern in its first MiB.
fn qcow2_image(dir: &Path, mib: u64) -> LocalImage {
    let path = dir.join("disk.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg(format!("{mib}M"))
        .output()
        .unwrap();
    assert!(out.status.success());
    qemu_io(&path, "qcow2", &[(0, MIB, 0x5a)]);
    LocalImage {
        path,
        format: DiskFormat::Qcow2,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn import_session_survives_a_taken_vmid_and_deletes_only_its_own() {
    let w = World::load();
    let p = w.provider("target");
    let client = w.client().await;
    let name = unique("imp");
    let _files = proxmox_world::ImportFilesGuard {
        client: client.clone(),
        node: w.node().into(),
        prefix: name.clone(),
    };
    let vm = new_vm(&name, Some("local-lvm"));
    let scratch = tempfile::tempdir().unwrap();
    let image = qcow2_image(scratch.path(), 8);

    let mut session = p.import(&vm, &[None]).await.unwrap();
    let Some(TargetVmHandle::Proxmox { vmid: reserved, .. }) = session.vm() else {
        panic!("a reserved handle")
    };
    let progress = Progress::new(0);
    let handle = session
        .import_disk(0, ImportInput::File(&image), &progress)
        .await
        .unwrap()
        .unwrap();
    let TargetDiskHandle::Proxmox { volid, size, .. } = &handle else {
        panic!("{handle:?}")
    };
    let len = std::fs::metadata(&image.path).unwrap().len();
    assert_eq!(
        (volid.as_str(), *size),
        (import_file(&vm).as_str(), len),
        "the handle records the file's length"
    );
    assert_eq!(progress.done(), len, "upload progress");

    // someone else creates a VM with the reserved VMID first (a concurrent test may already
    // have: then that one is the squatter)
    let squatter_name = unique("squat");
    let params = [
        ("vmid", reserved.to_string()),
        ("name", squatter_name.clone()),
    ];
    let squatted = client
        .run_task(
            Method::POST,
            &["nodes", w.node(), "qemu"],
            &params,
            std::time::Duration::from_secs(60),
        )
        .await;
    let squatter = match squatted {
        Ok(()) => Some(proxmox_world::VmGuard {
            client: client.clone(),
            node: w.node().into(),
            vmid: reserved,
            name: squatter_name.clone(),
        }),
        Err(e) if e.to_string().contains("already exists") => None,
        Err(e) => panic!("squatting on {reserved}: {e}"),
    };

    let created = session.finish().await.unwrap();
    let TargetVmHandle::Proxmox { vmid, .. } = created.clone() else {
        panic!()
    };
    assert_ne!(vmid, reserved, "another VMID was taken");
    let guard = proxmox_world::VmGuard {
        client: client.clone(),
        node: w.node().into(),
        vmid,
        name: name.clone(),
    };
    p.validate(&vm, &created, &[Some(handle.clone())])
        .await
        .unwrap();
    assert!(
        proxmox_world::import_files(&client, w.node(), "local", &name)
            .await
            .is_empty(),
        "import files removed"
    );
    let (file, format) = volume_file(
        &client,
        w.node(),
        &proxmox_world::config(&client, w.node(), vmid)
            .await
            .drive("scsi0")
            .unwrap()
            .volid,
    )
    .await;
    assert!(holds(&file, &format, &{
        let r = scratch.path().join("ref.raw");
        let out = std::process::Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&image.path)
            .arg(&r)
            .output()
            .unwrap();
        assert!(out.status.success());
        r
    }));

    // the squatter lacks the mark: never deleted
    if let Some(squatter) = &squatter {
        let theirs = TargetVmHandle::Proxmox {
            node: w.node().into(),
            vmid: reserved,
            name: squatter.name.clone(),
        };
        let e = p.delete_vm(&theirs, &vm.owner).await.unwrap_err();
        assert_eq!(e.reason(), "NotOwned", "{e}");
        assert!(exists(&p, &squatter.name).await);
    }
    let e = p.delete_vm(&created, "uid-someone-else").await.unwrap_err();
    assert_eq!(e.reason(), "NotOwned", "{e}");
    p.delete_vm(&created, &vm.owner).await.unwrap();
    assert!(!exists(&p, &name).await);
    p.delete_vm(&created, &vm.owner)
        .await
        .expect("absent is fine");
    p.delete_disk(&handle, &vm.owner)
        .await
        .expect("an absent import file is fine");
    let e = p
        .delete_disk(
            &TargetDiskHandle::Proxmox {
                node: w.node().into(),
                volid: "local:100/vm-100-disk-0.qcow2".into(),
                size: 0,
            },
            &vm.owner,
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.reason(),
        "NotOwned",
        "a VM's disk is never deleted as an import file: {e}"
    );
    drop(guard);
    drop(squatter);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_storage_extension_and_parameter_are_terminal_errors_naming_them() {
    let w = World::load();
    let p = w.provider("target");
    let Err(e) = p
        .import(&new_vm(&unique("nostore"), Some("nosuch")), &[None])
        .await
    else {
        panic!("an unknown storage is refused")
    };
    assert_eq!(e.reason(), "NotFound", "{e}");
    assert!(e.to_string().contains("nosuch"), "{e}");
    // Validating finds it first
    let e = p
        .preflight(&new_vm(&unique("nostore"), Some("nosuch")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nosuch"), "{e}");
    p.preflight(&new_vm(&unique("fine"), Some("local-lvm")))
        .await
        .unwrap();
    let mut plan = w.plan();
    plan.defaults.as_mut().unwrap().network = None;
    let no_bridge = ProxmoxProvider::new(
        &plan,
        &w.creds("target", Credentials::default()),
        "target",
        Guard::new(true),
    )
    .unwrap();
    let mut vm = new_vm(&unique("nobridge"), None);
    vm.networks = vec![crd::NetworkHint {
        name: "eth0".into(),
        network: Some("VM Network".into()),
        bridge: None,
    }];
    let e = no_bridge.preflight(&vm).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("targetNetworkHints[0] (eth0) names no bridge"),
        "{e}"
    );

    let client = w.client().await;
    let scratch = tempfile::tempdir().unwrap();
    let image = qcow2_image(scratch.path(), 8);
    let e = runner::provider::proxmox::transfer::upload(
        &client,
        w.node(),
        "local",
        "x.txt",
        &image.path,
        "00",
        &Progress::default(),
    )
    .await
    .unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(
        e.to_string()
            .contains(r#"parameter "filename": invalid filename or wrong extension"#),
        "{e}"
    );

    let e = client
        .post::<Value>(
            &["nodes", w.node(), "qemu"],
            &[("vmid", "7999".into()), ("bogus", "1".into())],
        )
        .await
        .unwrap_err();
    assert!(!e.is_retryable());
    assert!(
        e.to_string().contains(r#"unknown parameter "bogus""#),
        "{e}"
    );

    let e = client
        .post::<Value>(
            &["nodes", w.node(), "qemu"],
            &[("vmid", "100".into()), ("name", "x".into())],
        )
        .await
        .unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("VM 100 already exists"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_vms_of_one_name_are_refused_naming_both() {
    let w = World::load();
    let client = w.client().await;
    let name = unique("twin");
    let mut guards = Vec::new();
    for _ in 0..2 {
        let vmid = proxmox_world::free_vmid(&w);
        let params = [("vmid", vmid.to_string()), ("name", name.clone())];
        client
            .run_task(
                Method::POST,
                &["nodes", w.node(), "qemu"],
                &params,
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap();
        guards.push(proxmox_world::VmGuard {
            client: client.clone(),
            node: w.node().into(),
            vmid,
            name: name.clone(),
        });
    }
    let e = w.provider("source").inspect(&name).await.unwrap_err();
    let text = e.to_string();
    assert!(!e.is_retryable());
    for g in &guards {
        assert!(
            text.contains(&format!("{} on {}", g.vmid, w.node())),
            "{text}"
        );
    }
    assert!(
        text.contains("2 VMs named") && text.contains("rename"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn import_files_of_an_earlier_attempt_are_reused_and_a_failed_creation_leaves_no_vm() {
    let w = World::load();
    let p = w.provider("target");
    let client = w.client().await;
    let scratch = tempfile::tempdir().unwrap();
    let image = qcow2_image(scratch.path(), 8);
    let name = unique("reuse");
    let _files = proxmox_world::ImportFilesGuard {
        client: client.clone(),
        node: w.node().into(),
        prefix: name.clone(),
    };
    let mut vm = new_vm(&name, None);
    vm.firmware = Firmware::Uefi;

    // attempt 1 imports the disk and ends early: the file stays for the next attempt
    let mut first = p.import(&vm, &[None]).await.unwrap();
    let handle = first
        .import_disk(0, ImportInput::File(&image), &Progress::default())
        .await
        .unwrap();
    first.abort().await.unwrap();
    assert!(!exists(&p, &name).await, "abort makes no VM");
    let files = proxmox_world::import_files(&client, w.node(), "local", &name).await;
    assert_eq!(files, [import_file(&vm)]);

    // attempt 2 uses it as it is
    let second = p.import(&vm, std::slice::from_ref(&handle)).await.unwrap();
    let created = second.finish().await.unwrap();
    let TargetVmHandle::Proxmox { vmid, .. } = created.clone() else {
        panic!()
    };
    let _guard = proxmox_world::VmGuard {
        client: client.clone(),
        node: w.node().into(),
        vmid,
        name: name.clone(),
    };
    p.validate(&vm, &created, std::slice::from_ref(&handle))
        .await
        .unwrap();
    let shape = Source::inspect(&p, &name).await.unwrap();
    assert!(!shape.running, "created stopped");

    // started only with the migration's mark; stopped and started in the source role (cutover)
    let err = p.start_vm(&created, "uid-of-another").await.unwrap_err();
    assert!(matches!(err, runner::Error::NotOurs(_)), "{err:?}");
    p.start_vm(&created, &vm.owner).await.unwrap();
    assert!(Source::inspect(&p, &name).await.unwrap().running);
    let timeout = std::time::Duration::from_secs(30);
    for how in [StopSource::Shutdown, StopSource::PowerOff] {
        p.stop(&shape, how, timeout).await.unwrap();
        assert!(
            !Source::inspect(&p, &name).await.unwrap().running,
            "{how:?}"
        );
        p.stop(&shape, how, timeout).await.unwrap();
        p.start(&shape).await.unwrap();
        assert!(Source::inspect(&p, &name).await.unwrap().running, "{how:?}");
    }
    let mut renamed = shape.clone();
    renamed.name = format!("{name}-other");
    let err = p
        .stop(&renamed, StopSource::PowerOff, timeout)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not the inspected"), "{err}");
    assert!(
        Source::inspect(&p, &name).await.unwrap().running,
        "left running"
    );

    let config = proxmox_world::config(&client, w.node(), vmid).await;
    assert_eq!(config.get("bios"), Some("ovmf"));
    assert!(
        config
            .get("efidisk0")
            .is_some_and(|e| e.starts_with("local:")),
        "{config:?}"
    );
    assert_eq!(config.bridges(), [Some("vmbr0".to_string())]);
    assert!(
        proxmox_world::import_files(&client, w.node(), "local", &name)
            .await
            .is_empty()
    );

    // a later attempt whose file is gone is told so
    let Err(e) = p.import(&vm, std::slice::from_ref(&handle)).await else {
        panic!("a vanished import file is refused")
    };
    assert!(e.to_string().contains("is gone"), "{e}");
    p.delete_vm(&created, &vm.owner).await.unwrap();

    // a creation that fails (its import file removed behind its back) leaves no VM
    let mut third = p.import(&vm, &[None]).await.unwrap();
    let handle = third
        .import_disk(0, ImportInput::File(&image), &Progress::default())
        .await
        .unwrap()
        .unwrap();
    p.delete_disk(&handle, &vm.owner).await.unwrap();
    let e = third.finish().await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("qmcreate"), "{e}");
    assert!(!exists(&p, &name).await, "no half-made VM is left");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_without_a_storage_is_told_where_to_set_one() {
    let w = World::load();
    let mut plan = w.plan();
    plan.defaults.as_mut().unwrap().datastore = None;
    let p = ProxmoxProvider::new(
        &plan,
        &w.creds("target", Credentials::default()),
        "target",
        Guard::new(true),
    )
    .unwrap();
    let Err(e) = p.import(&new_vm(&unique("nowhere"), None), &[None]).await else {
        panic!("no storage is refused")
    };
    assert!(
        e.to_string().contains("targetStorageHint") && e.to_string().contains("defaults.datastore"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_source_removes_only_the_inspected_vm() {
    let w = World::load();
    let p = w.provider("source");
    let vm = copy_of_source(&w, &unique("del"), false).await;
    let shape = p.inspect(vm.name()).await.unwrap();
    let mut other = shape.clone();
    other.id = "99999".into();
    let e = p.delete(&other).await.unwrap_err();
    assert!(e.to_string().contains("not deleted"), "{e}");
    assert!(p.inspect(vm.name()).await.is_ok(), "still there");
    p.delete(&shape).await.unwrap();
    assert_eq!(p.inspect(vm.name()).await.unwrap_err().reason(), "NotFound");
    let client = w.client().await;
    let volumes: Vec<Value> = client
        .get(&["nodes", w.node(), "storage", "local-lvm", "content"], &[])
        .await
        .unwrap();
    assert!(
        !volumes.iter().any(|v| v["volid"]
            .as_str()
            .unwrap()
            .contains(&format!("vm-{}-", vm.vmid()))),
        "its disks are gone too"
    );
    p.delete(&shape).await.expect("an absent VM is fine");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_started_after_inspection_is_not_read_without_a_snapshot() {
    let w = World::load();
    let p = w.provider("source");
    let vm = copy_of_source(&w, &unique("late"), false).await;
    let shape = p.inspect(vm.name()).await.unwrap();
    proxmox_world::start(&vm.guard).await;
    let Err(e) = p.export(&shape, None).await else {
        panic!("a running VM is not read as it runs")
    };
    assert!(
        e.is_retryable(),
        "a new attempt inspects it again and snapshots it: {e}"
    );
    assert!(e.to_string().contains("started after"), "{e}");
}
