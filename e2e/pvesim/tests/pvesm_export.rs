//! The `pvesm` binary: `export ... raw+size -` streams the 8-byte little-endian size header and the
//! guest bytes (checked against `qemu-img convert -O raw` of the source and against the fixture's
//! known patterns), `qcow2+size` streams the image file, and the refusals are PVE's.

mod common;

use std::process::{Command, Output};

use pvesim::datadir::DataDir;
use pvesim::fixture;

fn pvesm(data: &DataDir, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pvesm"))
        .args(args)
        .env("PVESIM_DATA_DIR", data.root())
        .output()
        .expect("pvesm runs")
}

fn setup() -> (tempfile::TempDir, DataDir) {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path()).unwrap();
    fixture::create_source_vm(&data, 32 << 20, false, false).unwrap();
    (tmp, data)
}

fn split_header(stream: &[u8]) -> (u64, &[u8]) {
    assert!(stream.len() >= 8, "stream shorter than the header");
    let (header, data) = stream.split_at(8);
    (u64::from_le_bytes(header.try_into().unwrap()), data)
}

#[test]
fn raw_size_export_of_qcow2_matches_qemu_img_convert() {
    let (tmp, data) = setup();
    let out = pvesm(
        &data,
        &["export", "local:100/vm-100-disk-0.qcow2", "raw+size", "-"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (size, bytes) = split_header(&out.stdout);
    assert_eq!(size, 32 << 20);
    assert_eq!(bytes.len() as u64, size);

    let path =
        String::from_utf8(pvesm(&data, &["path", "local:100/vm-100-disk-0.qcow2"]).stdout).unwrap();
    let reference = tmp.path().join("reference.raw");
    common::run(
        Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw", path.trim()])
            .arg(&reference),
    );
    assert!(
        std::fs::read(&reference).unwrap() == bytes,
        "export differs from qemu-img convert -O raw"
    );

    let spec = &fixture::disks(32 << 20)[0];
    assert!(
        fixture::expected_bytes(spec) == bytes,
        "export differs from the fixture's patterns"
    );
    assert_eq!(
        std::fs::read_dir(data.tmp_dir()).unwrap().count(),
        0,
        "scratch file removed"
    );
}

#[test]
fn raw_size_export_of_raw_disk_and_to_a_file() {
    let (tmp, data) = setup();
    let target = tmp.path().join("out.bin");
    let out = pvesm(
        &data,
        &[
            "export",
            "local-lvm:vm-100-disk-0",
            "raw+size",
            target.to_str().unwrap(),
            "--with-snapshots",
            "0",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let stream = std::fs::read(&target).unwrap();
    let (size, bytes) = split_header(&stream);
    let spec = &fixture::disks(32 << 20)[1];
    assert_eq!(size, spec.size);
    assert!(fixture::expected_bytes(spec) == bytes);
}

#[test]
fn qcow2_size_export_streams_the_image_file() {
    let (_tmp, data) = setup();
    let out = pvesm(
        &data,
        &[
            "export",
            "local:100/vm-100-disk-0.qcow2",
            "qcow2+size",
            "-",
            "--with-snapshots",
            "1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (size, bytes) = split_header(&out.stdout);
    assert_eq!(size, 32 << 20, "the header holds the virtual size");
    let path =
        String::from_utf8(pvesm(&data, &["path", "local:100/vm-100-disk-0.qcow2"]).stdout).unwrap();
    assert!(std::fs::read(path.trim()).unwrap() == bytes);
}

#[test]
fn export_refusals_are_pves() {
    let (_tmp, data) = setup();
    let node = pvesim::storage::NodeConfig::load(&data).unwrap();
    let local = node.storage(&data, "local").unwrap();
    let raw = local.alloc_image(100, "raw", 1 << 20, &|_| {}).unwrap();
    assert_eq!(raw, "local:100/vm-100-disk-1.raw");
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "export",
                "local:100/vm-100-disk-0.qcow2",
                "raw+size",
                "-",
                "--snapshot",
                "s1",
            ],
            "volume export format raw+size not available for PVE::Storage::DirPlugin\n",
        ),
        (
            &["export", "local:100/vm-100-disk-0.qcow2", "qcow2+size", "-"],
            "volume export format qcow2+size not available for PVE::Storage::DirPlugin\n",
        ),
        (
            &[
                "export",
                "local:100/vm-100-disk-1.raw",
                "qcow2+size",
                "-",
                "--with-snapshots",
                "1",
            ],
            "volume export format qcow2+size not available for PVE::Storage::DirPlugin\n",
        ),
        (
            &["export", "nosuch:100/x.raw", "raw+size", "-"],
            "storage 'nosuch' does not exist\n",
        ),
        (
            &["export", "nocolon", "raw+size", "-"],
            "cannot export volume 'nocolon'\n",
        ),
    ];
    for (args, expected) in cases {
        let out = pvesm(&data, args);
        assert_eq!(out.status.code(), Some(255), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on the stream");
        assert_eq!(String::from_utf8_lossy(&out.stderr), *expected, "{args:?}");
    }
    let out = pvesm(
        &data,
        &["export", "local:100/vm-100-disk-0.qcow2", "foo+size", "-"],
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with(
        "400 Parameter verification failed.\nformat: value 'foo+size' does not have a value in the enumeration"
    ));
}

#[test]
fn lvm_thin_exports_raw_size_but_no_snapshot() {
    let (_tmp, data) = setup();
    let node = pvesim::storage::NodeConfig::load(&data).unwrap();
    let lvm = node.storage(&data, "local-lvm").unwrap();
    let volid = lvm.alloc_image(150, "raw", 4 << 20, &|_| {}).unwrap();
    assert_eq!(volid, "local-lvm:vm-150-disk-0");
    let path = lvm.path(&lvm.parse_volid(&volid).unwrap());
    let mut content = vec![0u8; 4 << 20];
    content[..4096].fill(0x77);
    std::fs::write(&path, &content).unwrap();
    let out = pvesm(&data, &["export", &volid, "raw+size", "-"]);
    let (size, bytes) = split_header(&out.stdout);
    assert_eq!(size, 4 << 20);
    assert!(bytes == content);
    let out = pvesm(
        &data,
        &["export", &volid, "raw+size", "-", "--snapshot", "s1"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "cannot export a snapshot in PVE::Storage::LvmThinPlugin\n"
    );

    let out = pvesm(&data, &["list", "local"]);
    let listing = String::from_utf8(out.stdout).unwrap();
    let first = listing.lines().next().unwrap();
    assert!(
        first.starts_with("Volid") && first.ends_with("VMID"),
        "{listing}"
    );
    assert!(
        listing.lines().any(
            |l| l.starts_with("local:100/vm-100-disk-0.qcow2 qcow2   images")
                && l.ends_with(" 100")
        ),
        "{listing}"
    );
}
