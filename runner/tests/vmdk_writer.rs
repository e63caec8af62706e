//! The runner's streamOptimized VMDK writer against qemu-img: for many random sparse layouts (random
//! and text-like data, zeros, holes, sizes not a multiple of a grain), from raw and from qcow2
//! sources, the output passes `qemu-img check`, is `qemu-img compare`-identical to the source, and has
//! the header vSphere's importers check (streamOptimized magic and the compressed-grains flag).

use std::path::Path;
use std::process::Command;

use crd::DiskFormat;
use runner::disk;
use runner::progress::Progress;
use runner::provider::LocalImage;
use runner::vmdk;

/// A small deterministic generator (xorshift), so a failing layout can be made again from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Writes a raw disk of `size` bytes at `path`: runs of random bytes, text, explicit zeros and holes.
fn random_layout(path: &Path, size: u64, rng: &mut Rng) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut at = 0;
    while at < size {
        let len = (1 + rng.below(200_000)).min(size - at);
        match rng.below(4) {
            0 => {
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                f.seek(SeekFrom::Start(at)).unwrap();
                f.write_all(&bytes).unwrap();
            }
            1 => {
                let text = b"virtrigaud moves virtual machines between hypervisors; ";
                let bytes: Vec<u8> = text.iter().copied().cycle().take(len as usize).collect();
                f.seek(SeekFrom::Start(at)).unwrap();
                f.write_all(&bytes).unwrap();
            }
            2 => {
                f.seek(SeekFrom::Start(at)).unwrap();
                f.write_all(&vec![0u8; len as usize]).unwrap();
            }
            _ => {} // a hole
        }
        at += len;
    }
}

fn qemu_img(args: &[&str]) -> (bool, String) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Converts `raw` to a qcow2 image at `qcow2`, with compressed clusters when `compressed`.
fn to_qcow2(raw: &Path, qcow2: &Path, compressed: bool) {
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    if compressed {
        args.push("-c");
    }
    args.extend([raw.to_str().unwrap(), qcow2.to_str().unwrap()]);
    let (ok, text) = qemu_img(&args);
    assert!(ok, "{text}");
}

/// Whether the runner's writer made `vmdk` (its descriptor names the lsilogic adapter; qemu-img's
/// says ide).
fn written_by_us(vmdk: &Path) -> bool {
    let head = std::fs::read(vmdk).unwrap();
    String::from_utf8_lossy(&head[512..512 * 21]).contains("ddb.adapterType = \"lsilogic\"")
}

fn check_vmdk(vmdk: &Path, raw: &Path, what: &str) {
    let header = std::fs::read(vmdk).unwrap();
    assert_eq!(&header[0..4], b"KDMV", "{what}: streamOptimized magic");
    let flags = u32::from_le_bytes(header[8..12].try_into().unwrap());
    assert_ne!(flags & (1 << 16), 0, "{what}: compressed-grains flag");
    let (ok, out) = qemu_img(&["check", "-f", "vmdk", vmdk.to_str().unwrap()]);
    assert!(ok, "{what}: qemu-img check: {out}");
    let (ok, out) = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "vmdk",
        raw.to_str().unwrap(),
        vmdk.to_str().unwrap(),
    ]);
    assert!(
        ok && out.contains("identical"),
        "{what}: qemu-img compare: {out}"
    );
    let (ok, info) = qemu_img(&["info", "--output=json", vmdk.to_str().unwrap()]);
    assert!(ok, "{what}: {info}");
    assert!(
        info.contains("\"create-type\": \"streamOptimized\""),
        "{what}: {info}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn random_sparse_layouts_from_raw_and_qcow2_are_identical_and_check_clean() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 1..=24u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
        // sizes from one sector to ~9 MiB, many not a multiple of a grain or of a grain table
        let size = 512 * (1 + rng.below(18_000));
        let raw = dir.path().join(format!("l{seed}.raw"));
        random_layout(&raw, size, &mut rng);
        let what = format!("seed {seed} ({size} bytes)");

        let out = dir.path().join(format!("l{seed}.vmdk"));
        let source = vmdk::Source::raw(&raw).unwrap();
        let progress = Progress::new(size);
        let opts = vmdk::Options {
            workers: 1 + (seed % 4) as usize,
            ..vmdk::Options::default()
        };
        let written = vmdk::write(
            &source,
            std::fs::File::create(&out).unwrap(),
            opts,
            &progress,
        )
        .unwrap();
        assert_eq!(progress.done(), size, "{what}: progress covers the disk");
        assert_eq!(
            written.bytes,
            std::fs::metadata(&out).unwrap().len(),
            "{what}"
        );
        check_vmdk(&out, &raw, &what);

        // the same content from a qcow2 image, through the runner's conversion
        let qcow2 = dir.path().join(format!("l{seed}.qcow2"));
        to_qcow2(&raw, &qcow2, false);
        let from_qcow2 = dir.path().join(format!("l{seed}-q.vmdk"));
        let image = LocalImage {
            path: qcow2,
            format: DiskFormat::Qcow2,
        };
        disk::convert(&image, DiskFormat::Vmdk, &from_qcow2, &Progress::new(size))
            .await
            .unwrap();
        check_vmdk(&from_qcow2, &raw, &format!("{what} via qcow2"));
        assert!(
            written_by_us(&from_qcow2),
            "{what}: the runner's writer read the qcow2 clusters"
        );
        for f in [raw, out, image.path, from_qcow2] {
            std::fs::remove_file(f).unwrap();
        }
    }
}

#[test]
fn all_zero_and_empty_disks_have_no_grains() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("zero.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(40 << 20).unwrap();
    let out = dir.path().join("zero.vmdk");
    let written = vmdk::write(
        &vmdk::Source::raw(&raw).unwrap(),
        std::fs::File::create(&out).unwrap(),
        vmdk::Options::default(),
        &Progress::default(),
    )
    .unwrap();
    assert_eq!(written.grains, 0);
    assert!(
        written.bytes < 128 << 10,
        "{} bytes for an empty 40 MiB disk",
        written.bytes
    );
    check_vmdk(&out, &raw, "an all-zero disk");
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_qcow2_clusters_fall_back_to_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("c.raw");
    random_layout(&raw, 3 << 20, &mut Rng(7));
    let qcow2 = dir.path().join("c.qcow2");
    to_qcow2(&raw, &qcow2, true);
    let out = dir.path().join("c.vmdk");
    let image = LocalImage {
        path: qcow2,
        format: DiskFormat::Qcow2,
    };
    disk::convert(&image, DiskFormat::Vmdk, &out, &Progress::new(3 << 20))
        .await
        .unwrap();
    check_vmdk(&out, &raw, "a compressed qcow2 (qemu-img's writer)");
    assert!(
        !written_by_us(&out),
        "compressed clusters are read by qemu-img only"
    );
}
