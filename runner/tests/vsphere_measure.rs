//! Throughput of the vSphere provider against the e2e world's vcsim on loopback: export over the
//! datastore file interface (a flat extent), export over an NFC lease (a streamOptimized disk), and
//! import through an ImportVApp lease (POST of a streamOptimized VMDK, SHA-1 checked against the
//! lease manifest). Random (incompressible) data. Ignored by default:
//! `cargo test -p runner --release --test vsphere_measure -- --ignored --nocapture` (MEASURE_MIB=512).

mod vsphere_world;

use runner::endpoint::Guard;
use std::time::Instant;

use crd::plan::ProviderPlan;
use crd::{DiskFormat, ProviderDefaults, ProviderType};
use runner::credentials::Credentials;
use runner::progress::{Progress, human_bytes};
use runner::provider::vsphere::VsphereProvider;
use runner::provider::{
    Firmware, ImportInput, LocalImage, NewDisk, NewVm, OsFamily, Source, Target,
};
use vsphere_world::{DATASTORE, DiskKind, World, source_vm, unique};

fn rate(bytes: u64, secs: f64) -> String {
    format!("{}/s", human_bytes((bytes as f64 / secs) as u64))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, takes a while"]
async fn vsphere_transfer_throughput() {
    let world = World::load();
    let mib: usize = std::env::var("MEASURE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let client = world.client().await;
    let plan = ProviderPlan {
        name: "default/vcsim".into(),
        type_: ProviderType::Vsphere,
        endpoint: world.url().into(),
        insecure_skip_verify: false,
        defaults: Some(ProviderDefaults {
            datastore: Some(DATASTORE.into()),
            ..ProviderDefaults::default()
        }),
        ssh: None,
    };
    let creds = |scope: &str| {
        Credentials::default()
            .with(scope, "username", world.user())
            .with(scope, "password", world.password())
            .with(scope, "ca.crt", world.ca_pem())
    };
    let source = VsphereProvider::new(&plan, &creds("source"), "source", Guard::new(true)).unwrap();
    let target = VsphereProvider::new(&plan, &creds("target"), "target", Guard::new(true)).unwrap();
    let started = Instant::now();
    let vm = source_vm(
        &client,
        &unique("measure"),
        &[DiskKind::Flat, DiskKind::NfcOnly],
        mib,
        false,
    )
    .await;
    println!(
        "fixture: {mib} MiB flat + {mib} MiB streamOptimized laid out in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let shape = source.inspect(&vm.name).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    // as the pipeline does: the disk the file interface refuses needs a snapshot for its NFC lease
    let owner = "uid-measure";
    let label = runner::provider::mark::snapshot_label(owner);
    let snapshot = source.snapshot(&shape, &label).await.unwrap();
    assert!(
        snapshot.is_some(),
        "a stopped VM with an NFC-only disk gets a snapshot"
    );
    let mut export = source.export(&shape, snapshot.as_ref()).await.unwrap();
    let mut images = Vec::new();
    for (disk, way) in shape
        .disks
        .iter()
        .zip(["/folder (flat extent)", "NFC lease (streamOptimized)"])
    {
        let progress = Progress::default();
        let t = Instant::now();
        let image = export
            .export_disk(disk, out.path(), &progress)
            .await
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "export over {way}: {} in {secs:.2}s = {}",
            human_bytes(progress.done()),
            rate(progress.done(), secs)
        );
        images.push(image);
    }
    export.finish().await.unwrap();
    source
        .delete_snapshot(snapshot.as_ref().unwrap(), owner)
        .await
        .unwrap();

    // import: the streamOptimized image, as a staged VMDK would be posted
    let stream: &LocalImage = images
        .iter()
        .find(|i| i.format == DiskFormat::Vmdk)
        .unwrap();
    let new = NewVm {
        name: unique("measure-import"),
        cpus: 1,
        memory_bytes: 64 << 20,
        firmware: Firmware::Bios,
        os: OsFamily::Other,
        disks: vec![NewDisk {
            name: "disk-0".into(),
            virtual_size: (mib << 20) as u64,
            format: DiskFormat::Vmdk,
        }],
        networks: Vec::new(),
        storage_hint: None,
        owner: "measure".into(),
    };
    let mut import = target.import(&new, &[None]).await.unwrap();
    let progress = Progress::default();
    let t = Instant::now();
    import
        .import_disk(0, ImportInput::File(stream), &progress)
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "import through an ImportVApp lease (POST + manifest check): {} in {secs:.2}s = {}",
        human_bytes(progress.done()),
        rate(progress.done(), secs)
    );
    let handle = import.finish().await.unwrap();
    target.delete_vm(&handle, "measure").await.unwrap();
    Source::close(&source).await;
    Target::close(&target).await;
}
