//! The libvirt provider against the e2e world's real libvirtd (qemu guests, SASL over TCP, a dir
//! pool): inspection, snapshot, sparse export, commit back, import, define, validate, delete, and
//! the terminal errors. Needs `make e2e-up`.

mod libvirt_world;

use runner::endpoint::Guard;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use crd::{DiskFormat, TargetVmHandle};
use libvirt_world::{
    OWNER, World, convert, create, export_one, guest_bytes, handles, import_one, new_vm,
    same_content, unique,
};
use runner::Error;
use runner::credentials::Credentials;
use runner::disk;
use runner::progress::Progress;
use runner::provider::libvirt::LibvirtProvider;
use runner::provider::{Firmware, ImportInput, LocalImage, Source, Target, mark};
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1 << 20;

/// Writes `pattern` over the first MiB of `disk` from inside the running guest's QEMU, as the guest
/// would.
fn guest_write(world: &World, domain: &str, disk_index: usize, pattern: u8) {
    let cmd = format!(
        "qemu-io -d /machine/peripheral/virtio-disk{disk_index}/virtio-backend \"write -P {pattern} 0 1M\""
    );
    let out = world.virsh_ok(&["qemu-monitor-command", "--hmp", domain, &cmd]);
    assert!(out.trim().is_empty(), "qemu-io: {out}");
}

fn dump(world: &World, domain: &str, inactive: bool) -> String {
    let mut args = vec!["dumpxml", domain];
    if inactive {
        args.push("--inactive");
    }
    world.virsh_ok(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn running_domain_snapshot_export_and_commit_back() {
    let world = World::load();
    let name = unique("lvt-run");
    let refs = tempfile::tempdir().unwrap();
    let _guard = world.make_source_vm(&name, true, refs.path());
    let p = world.provider("source");
    Source::check(&p).await.unwrap();

    let vm = p.inspect(&name).await.unwrap();
    assert!(vm.running);
    assert_eq!(
        (vm.cpus, vm.memory_bytes, vm.firmware, vm.nics),
        (1, 64 * MIB, Firmware::Bios, 0)
    );
    let disks: Vec<(&str, DiskFormat, u64)> = vm
        .disks
        .iter()
        .map(|d| (d.name.as_str(), d.format, d.virtual_size))
        .collect();
    assert_eq!(
        disks,
        [
            ("vda", DiskFormat::Qcow2, 64 * MIB),
            ("vdb", DiskFormat::Raw, 64 * MIB)
        ],
        "the cdrom is skipped, data disks in bus order"
    );
    let pool = world.pool_dir();
    assert_eq!(
        vm.disks[0].locator,
        pool.join(format!("{name}-vda.qcow2")).display().to_string()
    );

    let live_before = dump(&world, &name, false);
    let inactive_before = dump(&world, &name, true);

    let owner = format!("uid-{name}");
    let label = mark::snapshot_label(&owner);
    let snap = p
        .snapshot(&vm, &label)
        .await
        .unwrap()
        .expect("a running domain is snapshotted");
    let blk = world.virsh_ok(&["domblklist", &name]);
    assert!(blk.contains(&format!("{name}-vda.qcow2.{label}")), "{blk}");

    // the guest keeps writing during the export: into the overlays, not the frozen base images
    guest_write(&world, &name, 0, 0x77);
    guest_write(&world, &name, 1, 0x77);

    let out = tempfile::tempdir().unwrap();
    for (disk, reference) in vm.disks.iter().zip(["vda.raw", "vdb.raw"]) {
        let progress = Progress::default();
        let image = export_one(&p, &vm, Some(&snap), disk, out.path(), &progress)
            .await
            .unwrap();
        assert_eq!(image.format, disk.format);
        assert!(
            same_content(&image.path, &refs.path().join(reference)),
            "exported {} differs from the content the fixture wrote",
            disk.name
        );
        assert_eq!(progress.done(), progress.total(), "{}", disk.name);
        assert!(progress.total() > 0);
    }
    let vdb = std::fs::metadata(out.path().join("vdb.raw")).unwrap();
    assert_eq!(vdb.len(), 64 * MIB);
    assert!(
        vdb.blocks() * 512 < 20 * MIB,
        "holes stay holes: {} bytes allocated for 13 MiB of data",
        vdb.blocks() * 512
    );

    // a retry of the same attempt finds its snapshot in place and reuses it
    let again = p.snapshot(&vm, &label).await.unwrap().unwrap();
    assert_eq!(again, snap);

    // only the migration whose name the snapshot carries removes it
    let err = p.delete_snapshot(&snap, "uid-another").await.unwrap_err();
    assert!(matches!(err, Error::NotOurs(_)), "{err:?}");
    assert_eq!(
        world.virsh_ok(&["snapshot-list", &name, "--name"]).trim(),
        label,
        "kept"
    );

    p.delete_snapshot(&snap, &owner).await.unwrap();
    assert_eq!(
        dump(&world, &name, false),
        live_before,
        "live definition restored"
    );
    assert_eq!(
        dump(&world, &name, true),
        inactive_before,
        "persistent definition restored"
    );
    assert_eq!(
        world.virsh_ok(&["snapshot-list", &name, "--name"]).trim(),
        ""
    );
    for dev in ["vda.qcow2", "vdb.raw"] {
        let overlay = pool.join(format!("{name}-{dev}.{label}"));
        assert!(!overlay.exists(), "{} left behind", overlay.display());
    }
    assert_eq!(
        world.volumes(&name).len(),
        2,
        "only the two base volumes remain"
    );
    // the guest's writes made during the export were committed into the base images
    for dev in ["vda.qcow2", "vdb.raw"] {
        let bytes = guest_bytes(&pool.join(format!("{name}-{dev}")), out.path());
        assert!(
            bytes[..MIB as usize].iter().all(|b| *b == 0x77),
            "{dev} lost the guest's write"
        );
        assert!(
            bytes[MIB as usize..2 * MIB as usize]
                .iter()
                .all(|b| *b != 0x77)
        );
    }
    assert!(world.virsh_ok(&["domstate", &name]).contains("running"));

    // deleting again is a no-op
    p.delete_snapshot(&snap, &owner).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_domain_exports_without_snapshot() {
    let world = World::load();
    let name = unique("lvt-off");
    let refs = tempfile::tempdir().unwrap();
    let _guard = world.make_source_vm(&name, false, refs.path());
    let p = world.provider("source");

    let vm = p.inspect(&name).await.unwrap();
    assert!(!vm.running);
    assert_eq!(p.snapshot(&vm, "vrg-x").await.unwrap(), None);
    assert_eq!(
        world.virsh_ok(&["snapshot-list", &name, "--name"]).trim(),
        ""
    );
    let out = tempfile::tempdir().unwrap();
    for (disk, reference) in vm.disks.iter().zip(["vda.raw", "vdb.raw"]) {
        let image = export_one(&p, &vm, None, disk, out.path(), &Progress::default())
            .await
            .unwrap();
        assert_eq!(
            image.path,
            out.path().join(format!("{}.{}", disk.name, disk.format))
        );
        assert!(same_content(&image.path, &refs.path().join(reference)));
    }
}

/// Whether a domain of that name exists.
async fn exists(p: &LibvirtProvider, name: &str) -> bool {
    !p.find_vms(name, OWNER).await.unwrap().is_empty()
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn import_define_validate_and_delete() {
    let world = World::load();
    let name = unique("lvt-new");
    let _guard = world.guard(&name);
    let refs = tempfile::tempdir().unwrap();
    // reference content from the fixture, without keeping its domain
    let src = unique("lvt-ref");
    drop(world.make_source_vm(&src, false, refs.path()));
    let vda = LocalImage {
        path: refs.path().join("vda.qcow2"),
        format: DiskFormat::Qcow2,
    };
    convert(&refs.path().join("vda.raw"), &vda.path, "qcow2");
    let vdb = LocalImage {
        path: refs.path().join("vdb.raw"),
        format: DiskFormat::Raw,
    };

    let p = world.provider("target");
    let mut spec = new_vm(
        &name,
        2,
        96 * MIB,
        &[
            ("vda", DiskFormat::Qcow2, 64 * MIB),
            ("vdb", DiskFormat::Raw, 64 * MIB),
        ],
    );
    spec.storage_hint = Some("default".into());
    let mut session = p.import(&spec, &[None, None]).await.unwrap();
    let mut imported = Vec::new();
    for (i, (disk, image)) in [("vda", &vda), ("vdb", &vdb)].into_iter().enumerate() {
        let progress = Progress::default();
        let handle = session
            .import_disk(i, ImportInput::File(image), &progress)
            .await
            .unwrap();
        let Some(crd::TargetDiskHandle::Libvirt { path }) = handle else {
            panic!("{handle:?}");
        };
        assert!(same_content(
            Path::new(&path),
            &refs.path().join(format!("{disk}.raw"))
        ));
        assert_eq!(
            progress.done(),
            std::fs::metadata(&image.path).unwrap().len()
        );
        imported.push(path);
    }
    // the raw volume stayed sparse
    let raw_vol = std::fs::metadata(&imported[1]).unwrap();
    assert!(
        raw_vol.blocks() * 512 < 20 * MIB,
        "{} bytes allocated",
        raw_vol.blocks() * 512
    );

    // the volumes carry the migration's tag; one of that name (an import cut off before the
    // status recorded it) is this migration's: a second import replaces it
    for path in &imported {
        let file = Path::new(path).file_name().unwrap().to_string_lossy();
        assert!(mark::carries_tag(&file, OWNER), "{file}");
    }
    let again = import_one(&p, &spec, 1, &vdb, &Progress::default())
        .await
        .unwrap();
    assert_eq!(again, imported[1], "the leftover is replaced");
    assert!(same_content(Path::new(&again), &vdb.path));

    assert!(!exists(&p, &name).await);
    let created = session.finish().await.unwrap();
    let TargetVmHandle::Libvirt {
        uuid,
        name: created_name,
    } = &created
    else {
        panic!("{created:?}");
    };
    assert_eq!(uuid.len(), 36, "a UUID: {uuid}");
    assert_eq!(created_name, &name);
    assert!(exists(&p, &name).await);
    let shape = p.inspect(&name).await.unwrap();
    assert_eq!(
        (shape.cpus, shape.memory_bytes, shape.running),
        (2, 96 * MIB, false)
    );
    assert_eq!(&shape.id, uuid);
    let disks = handles(&imported);

    p.validate(&spec, &created, &disks).await.unwrap();
    assert!(
        world.virsh_ok(&["domstate", &name]).contains("shut off"),
        "created stopped"
    );

    // read back through the source role (what deleteSource relies on): the guest-visible content
    // of the qcow2 disk and of the raw one equals what was imported
    let back = tempfile::tempdir().unwrap();
    let mut export = p.export(&shape, None).await.unwrap();
    for (d, original) in shape.disks.iter().zip([&vda, &vdb]) {
        let image = export
            .export_disk(d, back.path(), &Progress::default())
            .await
            .unwrap();
        assert_eq!(image.format, original.format, "{}", d.name);
        assert_eq!(
            disk::guest_sha256(&image, back.path()).await.unwrap(),
            disk::guest_sha256(original, back.path()).await.unwrap(),
            "{}",
            d.name
        );
    }
    export.finish().await.unwrap();
    assert_eq!(
        disk::guest_sha256(&vdb, back.path()).await.unwrap(),
        sha256_file(&vdb.path),
        "a raw image's guest content is its bytes"
    );

    // the same name again is a clash
    let clash = create(&p, &spec, &imported).await.unwrap_err();
    assert!(
        matches!(clash, Error::NotOurs(ref m) if m.contains("left untouched")),
        "{clash}"
    );

    // started only by start_vm, which checks the mark first; validation holds while it runs
    let err = p
        .start_vm(&created, "uid-of-another-migration")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotOurs(_)), "{err:?}");
    assert!(world.virsh_ok(&["domstate", &name]).contains("shut off"));
    p.start_vm(&created, OWNER).await.unwrap();
    assert!(world.virsh_ok(&["domstate", &name]).contains("running"));
    p.start_vm(&created, OWNER).await.unwrap();
    p.validate(&spec, &created, &disks).await.unwrap();
    // a disk of the wrong size fails validation
    let mut wrong = spec.clone();
    wrong.disks[1].virtual_size += 1;
    let err = p.validate(&wrong, &created, &disks).await.unwrap_err();
    assert!(err.to_string().contains("capacity"), "{err}");

    // only the migration whose mark the domain carries may delete it, by its recorded name
    let err = p
        .delete_vm(&created, "uid-of-another-migration")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotOurs(_)), "{err:?}");
    let TargetVmHandle::Libvirt { uuid, .. } = &created else {
        unreachable!()
    };
    let renamed = TargetVmHandle::Libvirt {
        uuid: uuid.clone(),
        name: format!("{name}-other"),
    };
    let err = p.delete_vm(&renamed, OWNER).await.unwrap_err();
    assert!(matches!(err, Error::NotOurs(_)), "another name: {err:?}");
    assert!(exists(&p, &name).await, "kept");

    p.delete_vm(&created, OWNER).await.unwrap();
    assert!(!exists(&p, &name).await);
    assert!(
        world.volumes(&name).is_empty(),
        "volumes deleted with the domain"
    );
    p.delete_vm(&created, OWNER).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn create_starts_a_running_source_copy_with_a_nic() {
    let world = World::load();
    let name = unique("lvt-nic");
    let _guard = world.guard(&name);
    let bridge = format!("vrgbr{}", std::process::id() % 100_000);
    let up = std::process::Command::new("ip")
        .args(["link", "add", &bridge, "type", "bridge"])
        .status()
        .unwrap();
    assert!(
        up.success(),
        "creating bridge {bridge} (the tests run as root)"
    );
    struct Bridge(String);
    impl Drop for Bridge {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.0])
                .status();
        }
    }
    let _bridge = Bridge(bridge.clone());
    std::process::Command::new("ip")
        .args(["link", "set", &bridge, "up"])
        .status()
        .unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let image = LocalImage {
        path: scratch.path().join("boot.qcow2"),
        format: DiskFormat::Qcow2,
    };
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image.path)
        .arg("16M")
        .status()
        .unwrap();
    assert!(out.success());
    let p = world.provider("target");
    let mut spec = new_vm(&name, 1, 64 * MIB, &[("vda", DiskFormat::Qcow2, 16 * MIB)]);
    spec.networks = vec![crd::NetworkHint {
        name: "eth0".into(),
        network: None,
        bridge: Some(bridge.clone()),
    }];
    let disk = import_one(&p, &spec, 0, &image, &Progress::default())
        .await
        .unwrap();
    let created = create(&p, &spec, std::slice::from_ref(&disk))
        .await
        .unwrap();
    p.start_vm(&created, OWNER).await.unwrap();
    assert!(world.virsh_ok(&["domstate", &name]).contains("running"));
    let iface = world.virsh_ok(&["domiflist", &name]);
    assert!(iface.contains(&bridge), "{iface}");
    p.validate(&spec, &created, &handles(&[disk]))
        .await
        .unwrap();
    p.delete_vm(&created, OWNER).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn terminal_errors_are_clear() {
    let world = World::load();
    let p = world.provider("source");

    let err = p.inspect("no-such-domain-vrg").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("no-such-domain-vrg"), "{err}");
    assert!(!err.is_retryable());

    let scratch = tempfile::tempdir().unwrap();
    let image = LocalImage {
        path: scratch.path().join("d.raw"),
        format: DiskFormat::Raw,
    };
    std::fs::write(&image.path, vec![1u8; MIB as usize]).unwrap();
    let mut spec = new_vm("vrg-err", 1, 64 * MIB, &[("vda", DiskFormat::Raw, MIB)]);
    spec.storage_hint = Some("no-such-pool".into());
    let target = world.provider("target");
    let err = import_one(&target, &spec, 0, &image, &Progress::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotFound { ref what, .. } if what == "libvirt storage pool"),
        "{err}"
    );
    assert!(err.to_string().contains("no-such-pool"), "{err}");

    let mut bad = Credentials::default()
        .with("source", "username", world.var("VRG_LIBVIRT_USER"))
        .with("source", "password", "wrong-password");
    let wrong = LibvirtProvider::new(
        &world.plan_for(world.uri()),
        &bad,
        "source",
        Guard::new(true),
    )
    .unwrap();
    let err = Source::check(&wrong).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong-password"), "{err}");
    assert!(!err.is_retryable());
    bad = Credentials::default();
    let none = LibvirtProvider::new(
        &world.plan_for(world.uri()),
        &bad,
        "source",
        Guard::new(true),
    )
    .unwrap();
    let err = none.find_vms("x", OWNER).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_pool_is_no_space() {
    let world = World::load();
    let pool = unique("vrg-small");
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8M", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "mounting a tmpfs (the tests run as root)"
    );
    struct Cleanup<'a>(&'a World, String, std::path::PathBuf);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            self.0.virsh(&["pool-destroy", &self.1]);
            self.0.virsh(&["pool-undefine", &self.1]);
            let _ = std::process::Command::new("umount").arg(&self.2).status();
        }
    }
    let _cleanup = Cleanup(&world, pool.clone(), dir.path().to_path_buf());
    world.virsh_ok(&[
        "pool-define-as",
        &pool,
        "dir",
        "--target",
        &dir.path().display().to_string(),
    ]);
    world.virsh_ok(&["pool-start", &pool]);

    let scratch = tempfile::tempdir().unwrap();
    let image = LocalImage {
        path: scratch.path().join("d.raw"),
        format: DiskFormat::Raw,
    };
    std::fs::write(&image.path, vec![7u8; 16 * MIB as usize]).unwrap();
    let p = world.provider("target");
    let mut spec = new_vm(
        "vrg-full",
        1,
        64 * MIB,
        &[("vda", DiskFormat::Raw, 16 * MIB)],
    );
    spec.storage_hint = Some(pool.clone());
    let err = import_one(&p, &spec, 0, &image, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoSpace(_)), "{err:?}");
    assert!(err.to_string().contains(&pool), "{err}");
    assert!(
        world.virsh_ok(&["vol-list", &pool]).trim().is_empty(),
        "nothing created"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_endpoint_with_key_and_known_hosts() {
    let world = World::load();
    let endpoint = format!(
        "qemu+ssh://{}@{}:{}/system",
        world.var("VRG_SSH_USER"),
        world.var("VRG_SSH_HOST"),
        world.var("VRG_SSH_PORT")
    );
    let key = std::fs::read_to_string(world.var("VRG_SSH_KEY")).unwrap();
    let known = std::fs::read_to_string(world.var("VRG_SSH_KNOWN_HOSTS")).unwrap();
    let creds = Credentials::default()
        .with("source", "ssh-privatekey", key.clone())
        .with("source", "known_hosts", known.clone());
    let p = LibvirtProvider::new(
        &world.plan_for(&endpoint),
        &creds,
        "source",
        Guard::new(true),
    )
    .unwrap();
    Source::check(&p).await.unwrap();
    assert!(!exists(&p, "no-such-domain-vrg").await);

    // another host key for the same host in known_hosts: refused, as an authentication failure
    let scratch = tempfile::tempdir().unwrap();
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(scratch.path().join("k"))
        .status()
        .unwrap();
    assert!(keygen.success());
    let other_key = std::fs::read_to_string(scratch.path().join("k.pub")).unwrap();
    let host = known.split_whitespace().next().unwrap();
    let other_key: Vec<&str> = other_key.split_whitespace().take(2).collect();
    let other = format!("{host} {}\n", other_key.join(" "));
    let creds = Credentials::default()
        .with("source", "ssh-privatekey", key)
        .with("source", "known_hosts", other);
    let p = LibvirtProvider::new(
        &world.plan_for(&endpoint),
        &creds,
        "source",
        Guard::new(true),
    )
    .unwrap();
    let err = Source::check(&p).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn uefi_target_is_defined_or_refused_terminally() {
    let world = World::load();
    let name = unique("lvt-efi");
    let _guard = world.guard(&name);
    let scratch = tempfile::tempdir().unwrap();
    let image = LocalImage {
        path: scratch.path().join("boot.raw"),
        format: DiskFormat::Raw,
    };
    std::fs::File::create(&image.path)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let p = world.provider("target");
    let mut spec = new_vm(&name, 1, 64 * MIB, &[("vda", DiskFormat::Raw, 8 * MIB)]);
    spec.firmware = Firmware::Uefi;
    let disk = import_one(&p, &spec, 0, &image, &Progress::default())
        .await
        .unwrap();
    match create(&p, &spec, std::slice::from_ref(&disk)).await {
        // the host has UEFI firmware (OVMF): the domain boots it
        Ok(_) => {
            let vm = p.inspect(&name).await.unwrap();
            assert_eq!(vm.firmware, Firmware::Uefi);
        }
        // no UEFI firmware on the host: a clear, terminal error
        Err(e) => {
            assert!(matches!(e, Error::Invalid(_)), "{e:?}");
            assert!(e.to_string().contains("firmware"), "{e}");
            assert!(!exists(&p, &name).await);
            let handle = handles(&[disk]).remove(0).unwrap();
            p.delete_disk(&handle, OWNER).await.unwrap();
            assert!(world.volumes(&name).is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_snapshot_work_is_picked_up_by_a_retry() {
    let world = World::load();
    let name = unique("lvt-retry");
    let refs = tempfile::tempdir().unwrap();
    let _guard = world.make_source_vm(&name, true, refs.path());
    let p = world.provider("source");
    let vm = p.inspect(&name).await.unwrap();
    let live_before = dump(&world, &name, false);
    let owner = format!("uid-{name}");
    let label = mark::snapshot_label(&owner);
    let pool = world.pool_dir();
    let overlay = |dev: &str| pool.join(format!("{name}-{dev}.{label}"));

    // a cleanup that stopped after committing vda: the next attempt's snapshot call finds the
    // snapshot half undone, finishes removing it and takes a fresh one
    p.snapshot(&vm, &label).await.unwrap().unwrap();
    world.virsh_ok(&["blockcommit", &name, "vda", "--active", "--pivot", "--wait"]);
    let snap = p.snapshot(&vm, &label).await.unwrap().unwrap();
    let blk = world.virsh_ok(&["domblklist", &name]);
    assert!(
        blk.contains(&overlay("vda.qcow2").display().to_string()),
        "{blk}"
    );
    assert!(
        blk.contains(&overlay("vdb.raw").display().to_string()),
        "{blk}"
    );
    assert_eq!(
        world.virsh_ok(&["snapshot-list", &name, "--name"]).trim(),
        label
    );

    // the same cut short inside delete_snapshot (cleanup mode): it finishes the job
    world.virsh_ok(&["blockcommit", &name, "vdb", "--active", "--pivot", "--wait"]);
    p.delete_snapshot(&snap, &owner).await.unwrap();
    assert_eq!(dump(&world, &name, false), live_before);
    assert!(!overlay("vda.qcow2").exists() && !overlay("vdb.raw").exists());

    // an overlay file left without snapshot metadata (a crash inside libvirt) is replaced
    let stale = overlay("vdb.raw");
    std::fs::write(&stale, b"stale").unwrap();
    let snap = p.snapshot(&vm, &label).await.unwrap().unwrap();
    assert_ne!(std::fs::metadata(&stale).unwrap().len(), 5);
    p.delete_snapshot(&snap, &owner).await.unwrap();
    assert_eq!(dump(&world, &name, false), live_before);
    assert_eq!(
        world.virsh_ok(&["snapshot-list", &name, "--name"]).trim(),
        ""
    );
    assert_eq!(world.volumes(&name).len(), 2, "{:?}", world.volumes(&name));
    for (dev, reference) in [("vda.qcow2", "vda.raw"), ("vdb.raw", "vdb.raw")] {
        assert!(same_content(
            &pool.join(format!("{name}-{dev}")),
            &refs.path().join(reference)
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn linked_clone_disks_export_flattened_and_the_chain_is_left_as_it_was() {
    let world = World::load();
    let p = world.provider("source");
    let pool = world.pool_dir();
    for running in [true, false] {
        let name = unique(if running {
            "lvt-clone-run"
        } else {
            "lvt-clone-off"
        });
        let refs = tempfile::tempdir().unwrap();
        let _guard = world.make_linked_clone_vm(&name, running, refs.path());
        let base = pool.join(format!("{name}-base.qcow2"));
        let base_sum = sha256_file(&base);
        let live_before = dump(&world, &name, false);

        let vm = p.inspect(&name).await.unwrap();
        let owner = format!("uid-{name}");
        let snap = p
            .snapshot(&vm, &mark::snapshot_label(&owner))
            .await
            .unwrap();
        assert_eq!(snap.is_some(), running);
        if running {
            // the guest writes while the frozen chain is exported
            guest_write(&world, &name, 0, 0x66);
        }
        let out = tempfile::tempdir().unwrap();
        for (disk, reference) in vm.disks.iter().zip(["vda.raw", "vdb.raw"]) {
            let image = export_one(
                &p,
                &vm,
                snap.as_ref(),
                disk,
                out.path(),
                &Progress::default(),
            )
            .await
            .unwrap();
            assert!(
                same_content(&image.path, &refs.path().join(reference)),
                "{name}: exported {} differs from the clone's guest content",
                disk.name
            );
        }
        if let Some(snap) = &snap {
            p.delete_snapshot(snap, &owner).await.unwrap();
        }
        assert_eq!(
            dump(&world, &name, false),
            live_before,
            "{name}: definition restored"
        );
        assert_eq!(
            sha256_file(&base),
            base_sum,
            "{name}: the shared base image is untouched"
        );
        let vda = pool.join(format!("{name}-vda.qcow2"));
        let info = std::process::Command::new("qemu-img")
            .args(["info", "-U", "--output=json"])
            .arg(&vda)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(
            info["backing-filename"].as_str(),
            Some(base.to_str().unwrap()),
            "{name}: the clone still sits on its base"
        );
        if running {
            let bytes = guest_bytes(&vda, out.path());
            assert!(
                bytes[..MIB as usize].iter().all(|b| *b == 0x66),
                "the guest's write went into the clone's overlay"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_are_judged_and_names_pinned_to_the_judged_address() {
    let world = World::load();
    // the world's libvirtd on loopback (where it listens; clients usually reach it at the gateway)
    let loopback = world
        .uri()
        .replace(world.var("VRG_GATEWAY_IP"), "127.0.0.1");
    // ... by name: judged, then connected at the address judged for it
    let by_name = loopback.replace("127.0.0.1", "localhost");
    let local = LibvirtProvider::new(
        &world.plan_for(&by_name),
        &world.creds("source"),
        "source",
        Guard::new(true),
    )
    .unwrap();
    Source::check(&local).await.unwrap();
    // outside a test world loopback is refused, literally and by name, before anything is sent
    for endpoint in [loopback.as_str(), by_name.as_str()] {
        let strict = LibvirtProvider::new(
            &world.plan_for(endpoint),
            &world.creds("source"),
            "source",
            Guard::default(),
        )
        .unwrap();
        let err = Source::check(&strict).await.unwrap_err();
        assert!(
            matches!(err, Error::ForbiddenEndpoint(_)),
            "{endpoint}: {err}"
        );
        assert!(!err.to_string().contains(world.var("VRG_LIBVIRT_PASSWORD")));
    }
    // SSH by name: the known_hosts lines for the name vouch for the judged address
    let endpoint = format!(
        "qemu+ssh://{}@localhost:{}/system",
        world.var("VRG_SSH_USER"),
        world.var("VRG_SSH_PORT")
    );
    let key = std::fs::read_to_string(world.var("VRG_SSH_KEY")).unwrap();
    let known = std::fs::read_to_string(world.var("VRG_SSH_KNOWN_HOSTS")).unwrap();
    let for_name: String = known
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(_, key)| format!("[localhost]:{} {key}\n", world.var("VRG_SSH_PORT")))
        .collect();
    let creds = Credentials::default()
        .with("source", "ssh-privatekey", key)
        .with("source", "known_hosts", for_name);
    let p = LibvirtProvider::new(
        &world.plan_for(&endpoint),
        &creds,
        "source",
        Guard::new(true),
    )
    .unwrap();
    Source::check(&p).await.unwrap();
}
