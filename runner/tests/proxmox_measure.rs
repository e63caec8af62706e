//! Throughput of the Proxmox provider against the world's simulator (SSH on loopback, API over
//! TLS): export of a qcow2 disk on `local` and a raw LV on `local-lvm`, stopped (`raw+size`) and
//! running (as of a snapshot), then the import (upload with the checksum check, VM creation with
//! `import-from`). Each disk is half data, half hole. Ignored by default:
//! `cargo test -p runner --release --test proxmox_measure -- --ignored --nocapture`
//! (MEASURE_MIB=1024).

mod proxmox_world;

use std::time::Instant;

use crd::DiskFormat;
use proxmox_world::{VmGuard, World, qemu_io, unique, volume_file};
use reqwest::Method;
use runner::progress::Progress;
use runner::provider::{
    Firmware, ImportInput, LocalImage, NewDisk, NewVm, OsFamily, Source, Target, VmShape,
};

const MIB: u64 = 1 << 20;

fn rate(what: &str, bytes: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{what}: {} MiB in {secs:.2}s = {:.0} MiB/s",
        bytes / MIB,
        bytes as f64 / MIB as f64 / secs
    );
}

/// Exports every disk of `vm` (as of `snapshot`), timing each.
async fn export(
    w: &World,
    vm: &VmShape,
    snapshot: Option<&crd::SnapshotHandle>,
    label: &str,
    dir: &std::path::Path,
) -> Vec<LocalImage> {
    let p = w.provider("source");
    let mut session = p.export(vm, snapshot).await.unwrap();
    let mut images = Vec::new();
    for d in &vm.disks {
        let started = Instant::now();
        let image = session
            .export_disk(d, dir, &Progress::new(d.virtual_size))
            .await
            .unwrap();
        rate(
            &format!("export {label} {} ({})", d.name, d.locator),
            d.virtual_size,
            started,
        );
        images.push(image);
    }
    session.finish().await.unwrap();
    images
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, takes a while"]
async fn export_and_import_throughput() {
    let w = World::load();
    let mib: u64 = std::env::var("MEASURE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let client = w.client().await;
    let name = unique("measure");
    let vmid = proxmox_world::free_vmid(&w);
    let gib = mib as f64 / 1024.0;
    let params = [
        ("vmid", vmid.to_string()),
        ("name", name.clone()),
        ("scsi0", format!("local:{gib},format=qcow2")),
        ("scsi1", format!("local-lvm:{gib}")),
    ];
    client
        .run_task(
            Method::POST,
            &["nodes", w.node(), "qemu"],
            &params,
            std::time::Duration::from_secs(300),
        )
        .await
        .unwrap();
    let guard = VmGuard {
        client: client.clone(),
        node: w.node().into(),
        vmid,
        name: name.clone(),
    };
    // half data (in 8 MiB stretches every 16 MiB), half hole
    let half: Vec<(u64, u64, u8)> = (0..mib / 16)
        .map(|i| (i * 16 * MIB, 8 * MIB, 0x30 + (i % 64) as u8))
        .collect();
    for drive in proxmox_world::config(&client, w.node(), vmid).await.disks() {
        let (file, format) = volume_file(&client, w.node(), &drive.volid).await;
        qemu_io(&file, &format, &half);
    }
    let p = w.provider("source");
    let dir = tempfile::tempdir().unwrap();
    let stopped = p.inspect(&name).await.unwrap();
    let images = export(&w, &stopped, None, "stopped", dir.path()).await;
    for i in images {
        std::fs::remove_file(i.path).unwrap();
    }

    proxmox_world::start(&guard).await;
    let running = p.inspect(&name).await.unwrap();
    let owner = "uid-measure";
    let label = runner::provider::mark::snapshot_label(owner);
    let snap = p.snapshot(&running, &label).await.unwrap().unwrap();
    let images = export(&w, &running, Some(&snap), "snapshot", dir.path()).await;
    p.delete_snapshot(&snap, owner).await.unwrap();
    drop(guard);

    // the import of the first disk, as qcow2 (what a pipeline stages for Proxmox)
    let qcow2 = dir.path().join("scsi0.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&images[0].path)
        .arg(&qcow2)
        .output()
        .unwrap();
    assert!(out.status.success());
    let len = std::fs::metadata(&qcow2).unwrap().len();
    let target = w.provider("target");
    let vm = NewVm {
        name: unique("measured"),
        cpus: 1,
        memory_bytes: 256 * MIB,
        firmware: Firmware::Bios,
        os: OsFamily::Linux,
        disks: vec![NewDisk {
            name: "scsi0".into(),
            virtual_size: mib * MIB,
            format: DiskFormat::Qcow2,
        }],
        networks: Vec::new(),
        storage_hint: Some("local-lvm".into()),
        owner: "uid-measure".into(),
    };
    let mut session = target.import(&vm, &[None]).await.unwrap();
    let image = LocalImage {
        path: qcow2,
        format: DiskFormat::Qcow2,
    };
    let started = Instant::now();
    session
        .import_disk(0, ImportInput::File(&image), &Progress::default())
        .await
        .unwrap();
    rate(
        &format!(
            "upload of a {} MiB qcow2 file (hash, send, PVE's check)",
            len / MIB
        ),
        len,
        started,
    );
    let started = Instant::now();
    let created = session.finish().await.unwrap();
    rate("create with import-from into local-lvm", mib * MIB, started);
    target.delete_vm(&created, &vm.owner).await.unwrap();
}
