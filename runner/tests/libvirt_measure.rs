//! Throughput of the libvirt provider's volume streams on the e2e world's libvirtd (SASL over TCP on
//! loopback): export (sparse download) and import (upload) of a raw and a qcow2 disk, half random data,
//! half hole. Ignored by default:
//! `cargo test -p runner --release --test libvirt_measure -- --ignored --nocapture` (MEASURE_MIB=1024,
//! MEASURE_URI to use another endpoint than the world's).

mod libvirt_world;

use runner::endpoint::Guard;
use std::io::Write as _;
use std::time::Instant;

use crd::DiskFormat;
use crd::TargetDiskHandle;
use libvirt_world::{World, convert, same_content, unique};
use runner::progress::{Progress, human_bytes};
use runner::provider::{
    Firmware, ImportInput, LocalImage, NewDisk, NewVm, OsFamily, Source, SourceDisk, Target,
    VmShape,
};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, takes a while"]
async fn volume_stream_throughput() {
    let world = World::load();
    let size_mib: u64 = std::env::var("MEASURE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = size_mib << 20;
    let name = unique("lvmeasure");
    let _guard = world.guard(&name);
    let scratch = tempfile::tempdir().unwrap();

    // half incompressible data, half hole
    let raw = scratch.path().join("src.raw");
    {
        let mut f = std::fs::File::create(&raw).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..size_mib / 2 {
            for c in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
        f.set_len(size).unwrap();
    }
    let qcow2 = scratch.path().join("src.qcow2");
    convert(&raw, &qcow2, "qcow2");

    // MEASURE_URI=qemu:///system compares the local UNIX socket (no SASL layer) with the world's TCP
    let p = match std::env::var("MEASURE_URI") {
        Ok(uri) => runner::provider::libvirt::LibvirtProvider::new(
            &world.plan_for(&uri),
            &runner::credentials::Credentials::default(),
            "target",
            Guard::new(true),
        )
        .unwrap(),
        Err(_) => world.provider("target"),
    };
    for (disk, image) in [
        (
            "vda",
            LocalImage {
                path: qcow2.clone(),
                format: DiskFormat::Qcow2,
            },
        ),
        (
            "vdb",
            LocalImage {
                path: raw.clone(),
                format: DiskFormat::Raw,
            },
        ),
    ] {
        let started = Instant::now();
        let vm = NewVm {
            name: name.clone(),
            cpus: 1,
            memory_bytes: 1 << 30,
            firmware: Firmware::Bios,
            os: OsFamily::Other,
            disks: vec![NewDisk {
                name: disk.into(),
                virtual_size: size,
                format: image.format,
            }],
            networks: Vec::new(),
            storage_hint: None,
            owner: "measure".into(),
        };
        let mut session = Target::import(&p, &vm, &[None]).await.unwrap();
        let handle = session
            .import_disk(0, ImportInput::File(&image), &Progress::default())
            .await
            .unwrap();
        session.abort().await.unwrap();
        let Some(TargetDiskHandle::Libvirt { path: volume }) = handle else {
            panic!("a libvirt import yields a volume: {handle:?}");
        };
        let import = started.elapsed();
        assert!(same_content(std::path::Path::new(&volume), &raw));

        // export the volume just imported, as a source disk
        let shape = VmShape {
            id: String::new(),
            name: name.clone(),
            cpus: 1,
            memory_bytes: 1 << 30,
            firmware: Firmware::Bios,
            os: OsFamily::Other,
            running: false,
            disks: Vec::new(),
            nics: 0,
        };
        let source = SourceDisk {
            name: disk.into(),
            format: image.format,
            virtual_size: size,
            locator: volume.clone(),
        };
        let out = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let mut export = Source::export(&p, &shape, None).await.unwrap();
        let exported = export
            .export_disk(&source, out.path(), &Progress::default())
            .await
            .unwrap();
        export.finish().await.unwrap();
        let export = started.elapsed();
        assert!(same_content(&exported.path, &raw));
        let file = std::fs::metadata(&image.path).unwrap().len();
        println!(
            "{disk} {} ({} file, {} data): import {:.2}s ({}/s of file), export {:.2}s ({}/s of file)",
            image.format,
            human_bytes(file),
            human_bytes(size / 2),
            import.as_secs_f64(),
            human_bytes((file as f64 / import.as_secs_f64()) as u64),
            export.as_secs_f64(),
            human_bytes((file as f64 / export.as_secs_f64()) as u64),
        );
    }
}
