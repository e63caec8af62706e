//! Throughput of the whole pipeline on one machine (file provider, local-directory stage, real
//! qemu-img). Ignored by default: `cargo test -p runner --release --test pipeline_measure -- --ignored --nocapture`.

mod pipeline_support;

use std::time::Instant;

use crd::{DiskFormat, ProviderType, VMMigrationStatus};
use pipeline_support::*;

#[tokio::test]
#[ignore = "measurement, takes a while"]
async fn raw_disk_to_qcow2() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let size_mib: usize = std::env::var("MEASURE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = size_mib << 20;
    let w = World::new(ProviderType::Libvirt, &[("vda", DiskFormat::Raw, size)]);
    // Fill half of the disk with incompressible data so the bytes really move.
    let image = w.source.vm_dir(SOURCE_VM).join("vda.raw");
    let mut data = std::fs::read(&image).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data[..size / 2].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&image, &data).unwrap();
    drop(data);

    let started = Instant::now();
    let (result, rec) = w.run(&VMMigrationStatus::default()).await;
    let elapsed = started.elapsed();
    result.expect("migration succeeds");
    let (_, target) = &w.target_images()[0];
    assert!(same_content(&image, target));
    println!(
        "{size_mib} MiB raw (half data) -> qcow2: {:.1} s, {:.0} MiB/s of virtual size, {} status writes",
        elapsed.as_secs_f64(),
        size_mib as f64 / elapsed.as_secs_f64(),
        rec.writes().len()
    );
}
