//! Hostile images against the runner's checks, with the real qemu-img: what an image names outside
//! itself (a backing file, an external data file, a VMDK extent) is refused by the inspection every
//! exported or staged image goes through, before anything converts or reads it, and the named host
//! file is never opened (strace of qemu-img info; a VMDK descriptor is refused before qemu-img runs); a 0-byte object is no
//! qcow2 or VMDK; a header claiming an absurd size is reported as such and refused by the scratch
//! check; and a disk declared raw is read strictly as raw even when it starts with a qcow2 header.

use std::path::{Path, PathBuf};
use std::process::Command;

use crd::DiskFormat;
use runner::Error;
use runner::disk;
use runner::progress::Progress;
use runner::provider::LocalImage;

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A host file an image could point at (a stand-in for a secret on the node).
fn host_secret(dir: &Path) -> PathBuf {
    let secret = dir.join("host-secret");
    std::fs::write(&secret, vec![0x42u8; 1 << 20]).unwrap();
    secret
}

/// The files `qemu-img info` opens for `image` (as the runner's inspection runs it), by strace.
fn opened_by_info(image: &Path, format: DiskFormat) -> Vec<String> {
    let out = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=open,openat,openat2",
            "-o",
            "/dev/stdout",
        ])
        .args(["qemu-img", "info", "--output=json", "-f", format.as_str()])
        .arg(image)
        .output()
        .expect("strace (e2e/scripts/install-deps.sh installs it)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        .collect()
}

/// Asserts the inspection of `image` never opens `secret`.
fn secret_untouched(image: &Path, format: DiskFormat, secret: &Path) {
    let opened = opened_by_info(image, format);
    assert!(
        opened
            .iter()
            .any(|f| Path::new(f).file_name() == image.file_name()),
        "strace saw the image itself opened: {opened:?}"
    );
    assert!(
        !opened.iter().any(|f| Path::new(f) == secret),
        "the inspection opened {}: {opened:?}",
        secret.display()
    );
}

/// A 1 MiB qcow2 image `name` in `dir` whose backing file is the host file `secret` (raw).
fn backed_by(dir: &Path, secret: &Path, name: &str) -> PathBuf {
    let image = dir.join(name);
    let (secret, path) = (secret.to_str().unwrap(), image.to_str().unwrap());
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-F", "raw", "-b", secret, path, "1M",
    ]);
    image
}

fn refused(err: Error, mentions: &str) {
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains(mentions), "{err}");
    assert!(!err.is_retryable(), "{err}");
}

#[tokio::test]
async fn a_qcow2_backed_by_a_host_file_is_refused_before_it_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let secret = host_secret(dir.path());
    let top = backed_by(dir.path(), &secret, "top.qcow2");
    refused(
        disk::inspect(&top, DiskFormat::Qcow2).await.unwrap_err(),
        "backing file",
    );
    secret_untouched(&top, DiskFormat::Qcow2, &secret);
    // the VMDK writer's path inspects too: nothing of the host file reaches a converted image
    let image = LocalImage {
        path: top,
        format: DiskFormat::Qcow2,
    };
    let out = dir.path().join("out.vmdk");
    let err = disk::convert(&image, DiskFormat::Vmdk, &out, &Progress::default())
        .await
        .unwrap_err();
    refused(err, "backing file");
    assert!(!out.exists());
}

#[tokio::test]
async fn a_qcow2_with_an_external_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = host_secret(dir.path());
    let image = dir.path().join("data-file.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={},data_file_raw=on", secret.display()),
        image.to_str().unwrap(),
        "1M",
    ]);
    refused(
        disk::inspect(&image, DiskFormat::Qcow2).await.unwrap_err(),
        "external data file",
    );
    secret_untouched(&image, DiskFormat::Qcow2, &secret);
}

#[tokio::test]
async fn a_vmdk_whose_extent_is_outside_the_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = host_secret(dir.path());
    let descriptor = dir.path().join("escape.vmdk");
    std::fs::write(
        &descriptor,
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\n\nRW 2048 FLAT \"{}\" 0\n\n\
             ddb.adapterType = \"lsilogic\"\n",
            secret.display()
        ),
    )
    .unwrap();
    // refused from its first bytes: qemu-img, which opens a descriptor's extents, never runs on it
    refused(
        disk::inspect(&descriptor, DiskFormat::Vmdk)
            .await
            .unwrap_err(),
        "a descriptor's extents point at other files",
    );
}

#[tokio::test]
async fn a_zero_byte_object_is_no_qcow2_or_vmdk() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    for format in [DiskFormat::Qcow2, DiskFormat::Vmdk] {
        refused(
            disk::inspect(&empty, format).await.unwrap_err(),
            "is not a valid",
        );
    }
    // as raw it is a disk of no bytes, which no source disk is (the pipeline compares sizes)
    assert_eq!(
        disk::inspect(&empty, DiskFormat::Raw)
            .await
            .unwrap()
            .virtual_size,
        0
    );
}

#[tokio::test]
async fn a_header_claiming_a_huge_disk_is_refused_by_the_scratch_check() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", bomb.to_str().unwrap(), "1P"]);
    let file = std::fs::metadata(&bomb).unwrap().len();
    assert!(
        file < 64 << 20,
        "a {file}-byte file (its L1 table) claims a petabyte"
    );
    let info = disk::inspect(&bomb, DiskFormat::Qcow2).await.unwrap();
    assert_eq!(info.virtual_size, 1 << 50, "the claim is reported as it is");
    let err = disk::ensure_space(dir.path(), info.virtual_size, None).unwrap_err();
    assert!(matches!(err, Error::NoSpace(_)), "{err:?}");
}

#[tokio::test]
async fn a_raw_disk_starting_with_a_qcow2_header_stays_raw() {
    let dir = tempfile::tempdir().unwrap();
    let secret = host_secret(dir.path());
    // a raw disk whose first bytes are a qcow2 header naming a host file as its backing file
    let disguised = backed_by(dir.path(), &secret, "disguised.qcow2");
    let raw = dir.path().join("disk.raw");
    let mut bytes = std::fs::read(&disguised).unwrap();
    bytes.resize(4 << 20, 0x17);
    std::fs::write(&raw, &bytes).unwrap();

    let info = disk::inspect(&raw, DiskFormat::Raw).await.unwrap();
    assert_eq!(
        info.virtual_size,
        4 << 20,
        "the file's own size, not the header's 1 MiB"
    );
    let image = LocalImage {
        path: raw.clone(),
        format: DiskFormat::Raw,
    };
    for format in [DiskFormat::Qcow2, DiskFormat::Vmdk] {
        let out = dir.path().join(format!("out.{format}"));
        disk::convert(&image, format, &out, &Progress::default())
            .await
            .unwrap();
        let compared = qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            format.as_str(),
            raw.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(compared.contains("identical"), "{format}: {compared}");
    }
}
