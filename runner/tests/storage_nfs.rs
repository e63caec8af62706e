//! NFS staging against the e2e world's real NFSv3 server (nfs-ganesha on 127.0.0.1, started by
//! `e2e/scripts/nfsd-up.sh`, described by `$E2E_WORLD/nfsd.env`): the runner's own userspace client
//! mounts the export, writes, renames, reads and removes through the server, and the tests look at
//! the directory behind the export (`VRG_NFS_DIR`) to see what really landed. The tests fail when
//! the server is not up.

mod storage_support;

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crd::{DiskFormat, StorageType};
use runner::Error;
use runner::credentials::Credentials;
use runner::endpoint::Guard;
use runner::progress::Progress;
use runner::storage::{NfsStage, Stage, StageOptions, object_key};
use storage_support::{flip_a_byte, free_port, random_file, sha256_of, spec};

const MIB: u64 = 1 << 20;

/// The world's NFS server, from `nfsd.env`.
struct Server {
    env: HashMap<String, String>,
}

impl Server {
    /// Reads `nfsd.env` and checks the server answers; panics (fails the test) otherwise.
    fn load() -> Server {
        let world = std::env::var_os("E2E_WORLD")
            .or_else(|| std::env::var_os("VRG_WORLD"))
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(
                    std::env::var_os("CARGO_MANIFEST_DIR")
                        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
                )
                .join("../e2e/.world")
            });
        let file = world.join("nfsd.env");
        assert!(
            file.is_file(),
            "{} is missing: these tests need the e2e world's NFS server; run `bash e2e/scripts/nfsd-up.sh`",
            file.display()
        );
        let env = runner::world_env::source(&file, "VRG_NFS_");
        let server = Server { env };
        let addr = format!(
            "{}:{}",
            server.var("VRG_NFS_HOST"),
            server.var("VRG_NFS_PORT")
        );
        assert!(
            std::net::TcpStream::connect(&addr).is_ok(),
            "the NFS server of {} does not answer on {addr}: run `bash e2e/scripts/nfsd-up.sh`",
            file.display()
        );
        server
    }

    fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from nfsd.env"))
    }

    /// The directory behind the export.
    fn dir(&self) -> PathBuf {
        PathBuf::from(self.var("VRG_NFS_DIR"))
    }

    /// A stage on `endpoint` and `export`, `attempts` tries per operation.
    async fn stage_at(&self, endpoint: &str, export: &str, attempts: u32) -> NfsStage {
        let mut spec = spec(StorageType::Nfs, Some(endpoint), None);
        spec.path = Some(export.into());
        NfsStage::from_spec(
            &spec,
            &StageOptions {
                guard: Guard::new(true),
                attempts,
                ..StageOptions::default()
            },
        )
        .await
        .unwrap()
    }

    /// The world's export, as a migration names it (a bare host: the portmapper gives the ports).
    async fn stage(&self) -> NfsStage {
        self.stage_at(self.var("VRG_NFS_ENDPOINT"), self.var("VRG_NFS_EXPORT"), 3)
            .await
    }
}

/// A namespace of its own for each test (and run), so tests share the export side by side.
fn namespace(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("t-{test}-{}-{nanos}", std::process::id())
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A disk-like file of `size` bytes: random data in a few places, holes (never written) between,
/// and a hole at the end.
fn sparse_file(path: &Path, size: u64, seed: u64) {
    let dir = path.parent().unwrap();
    let piece = dir.join(format!("piece-{seed}"));
    let mut out = std::fs::File::create(path).unwrap();
    for (i, (at, len)) in [(0, MIB + 3), (3 * MIB + 100, MIB / 2), (5 * MIB - 7, 4096)]
        .into_iter()
        .enumerate()
    {
        random_file(&piece, len, seed + i as u64);
        out.seek(SeekFrom::Start(at)).unwrap();
        out.write_all(&std::fs::read(&piece).unwrap()).unwrap();
    }
    std::fs::remove_file(&piece).unwrap();
    out.set_len(size).unwrap();
}

#[tokio::test]
async fn sparse_disk_round_trip_through_the_server() {
    let server = Server::load();
    let stage = server.stage().await;
    stage.check().await.unwrap();
    assert!(
        !names(&server.dir())
            .iter()
            .any(|n| n.starts_with(".virtrigaud-check")),
        "the write probe is removed"
    );

    let ns = namespace("round-trip");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vda.qcow2");
    let size = 8 * MIB + 5;
    sparse_file(&src, size, 21);
    let expected = sha256_of(&src);
    let key = object_key(&ns, "web-01", "vda", DiskFormat::Qcow2);
    let progress = Progress::new(size);
    let staged = stage.upload(&key, &src, &progress).await.unwrap();
    assert_eq!(staged.sha256, expected);
    assert_eq!(staged.size, size);
    assert_eq!(
        staged.url,
        format!(
            "nfs://{}{}/{key}",
            server.var("VRG_NFS_ENDPOINT"),
            server.var("VRG_NFS_EXPORT")
        )
    );
    assert_eq!(progress.done(), size);

    // what the server wrote into the directory behind the export
    let stored = server.dir().join(&key);
    assert_eq!(
        names(stored.parent().unwrap()),
        ["vda.qcow2", "vda.qcow2.sha256"],
        "no temporary file left"
    );
    assert!(
        std::fs::read(&stored).unwrap() == std::fs::read(&src).unwrap(),
        "the staged file has the source's bytes"
    );
    assert_eq!(
        std::fs::read_to_string(server.dir().join(format!("{key}.sha256"))).unwrap(),
        format!("{expected}  vda.qcow2\n")
    );
    let allocated = std::fs::metadata(&stored).unwrap().blocks() * 512;
    // chunks of zeros are not written (here 3 of the 9 MiB-sized chunks)
    assert!(
        allocated <= size - 3 * MIB,
        "holes stay holes: {allocated} bytes allocated for {size}"
    );
    assert_eq!(stage.stat(&key).await.unwrap(), Some(staged.clone()));

    let dest = dir.path().join("back.qcow2");
    let progress = Progress::new(size);
    stage.download(&staged, &dest, &progress).await.unwrap();
    assert_eq!(sha256_of(&dest), expected);
    assert_eq!(progress.done(), size);
    assert!(!dest.with_extension("qcow2.part").exists());

    stage.delete(&key).await.unwrap();
    assert_eq!(stage.stat(&key).await.unwrap(), None);
    assert!(
        !server.dir().join(&ns).exists(),
        "empty directories removed"
    );
    stage.delete(&key).await.unwrap();
}

#[tokio::test]
async fn overwrite_resume_and_corruption() {
    let server = Server::load();
    let stage = server.stage().await;
    let ns = namespace("overwrite");
    let dir = tempfile::tempdir().unwrap();
    let key = format!("{ns}/m/vdc.vmdk");

    // a second upload of a key replaces the first, object and sidecar
    let first = dir.path().join("first");
    random_file(&first, 3 * MIB, 22);
    stage
        .upload(&key, &first, &Progress::default())
        .await
        .unwrap();
    let src = dir.path().join("vdc.vmdk");
    random_file(&src, 2 * MIB + 333, 23);
    let staged = stage
        .upload(&key, &src, &Progress::default())
        .await
        .unwrap();
    assert_eq!(stage.stat(&key).await.unwrap(), Some(staged.clone()));
    assert_eq!(staged.sha256, sha256_of(&src));
    let stored = server.dir().join(&key);
    assert_eq!(
        names(stored.parent().unwrap()),
        ["vdc.vmdk", "vdc.vmdk.sha256"]
    );
    let data = std::fs::read(&src).unwrap();
    assert!(std::fs::read(&stored).unwrap() == data);

    // a partial download is continued
    let dest = dir.path().join("vdc.back");
    std::fs::write(dir.path().join("vdc.back.part"), &data[..1_000_000]).unwrap();
    let progress = Progress::new(staged.size);
    stage.download(&staged, &dest, &progress).await.unwrap();
    assert!(std::fs::read(&dest).unwrap() == data);
    assert_eq!(progress.done(), staged.size);

    // a partial file longer than the object is no prefix of it: started over
    let dest2 = dir.path().join("vdc.long");
    std::fs::write(
        dir.path().join("vdc.long.part"),
        vec![7u8; 3 * MIB as usize],
    )
    .unwrap();
    stage
        .download(&staged, &dest2, &Progress::default())
        .await
        .unwrap();
    assert!(std::fs::read(&dest2).unwrap() == data);

    // bytes changed on the server do not pass
    flip_a_byte(&stored);
    let bad = dir.path().join("vdc.bad");
    let err = stage
        .download(&staged, &bad, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert!(!bad.exists() && !dir.path().join("vdc.bad.part").exists());

    stage.delete(&key).await.unwrap();
    assert!(!server.dir().join(&ns).exists());
}

#[tokio::test]
async fn an_object_without_its_sidecar_is_incomplete() {
    let server = Server::load();
    let stage = server.stage().await;
    let ns = namespace("sidecar");
    let key = format!("{ns}/m/vdb.raw");
    let path = server.dir().join(&key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"half").unwrap();
    assert_eq!(stage.stat(&key).await.unwrap(), None);
    std::fs::write(server.dir().join(format!("{key}.sha256")), b"not a hash\n").unwrap();
    assert_eq!(stage.stat(&key).await.unwrap(), None);
    let sha = "ab".repeat(32);
    std::fs::write(
        server.dir().join(format!("{key}.sha256")),
        format!("{sha}  vdb.raw\n"),
    )
    .unwrap();
    let found = stage.stat(&key).await.unwrap().expect("object and sidecar");
    assert_eq!((found.size, found.sha256), (4, sha));
    stage.delete(&key).await.unwrap();
    assert!(!server.dir().join(&ns).exists());
}

#[tokio::test]
async fn a_missing_export_is_named() {
    let server = Server::load();
    let stage = server
        .stage_at(server.var("VRG_NFS_ENDPOINT"), "/no-such-export", 1)
        .await;
    let err = stage.check().await.unwrap_err();
    let text = err.to_string();
    assert!(!err.is_retryable(), "{text}");
    assert!(matches!(err, Error::NotFound { .. }), "{text}");
    // named, and the exports the server has (ganesha answers MNT3ERR_ACCES for any path it
    // does not export: its export list tells apart a missing export from a refused client)
    assert!(
        text.contains("export /no-such-export on nfs server")
            && text.contains(server.var("VRG_NFS_HOST"))
            && text.contains(server.var("VRG_NFS_EXPORT")),
        "{text}"
    );
}

#[tokio::test]
async fn a_read_only_export_is_refused_for_good() {
    let server = Server::load();
    let stage = server
        .stage_at(
            server.var("VRG_NFS_ENDPOINT"),
            server.var("VRG_NFS_RO_EXPORT"),
            3,
        )
        .await;
    let started = Instant::now();
    let err = stage.check().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Auth { .. }), "{text}");
    assert!(!err.is_retryable(), "{text}");
    assert!(started.elapsed().as_secs() < 2, "not retried: {text}");
    assert!(
        text.contains(server.var("VRG_NFS_RO_EXPORT")) && text.contains("uid "),
        "{text}"
    );
}

#[tokio::test]
async fn a_wrong_port_is_retryable() {
    let server = Server::load();
    let port = free_port();
    let endpoint = format!("{}:{port}", server.var("VRG_NFS_HOST"));
    let stage = server
        .stage_at(&endpoint, server.var("VRG_NFS_EXPORT"), 1)
        .await;
    let err = stage.check().await.unwrap_err();
    let text = err.to_string();
    assert!(err.is_retryable(), "{text}");
    assert_eq!(err.reason(), "Unavailable", "{text}");
    assert!(
        text.contains(&endpoint) && text.contains("refused"),
        "{text}"
    );
}

#[tokio::test]
async fn host_and_port_skip_the_portmapper() {
    // ganesha serves MOUNT on its own port, so `host:<MOUNT port>` mounts and then finds no NFS
    // there: the named port is used for both, and the answer says what is missing
    let server = Server::load();
    let endpoint = format!(
        "{}:{}",
        server.var("VRG_NFS_HOST"),
        server.var("VRG_NFS_MOUNT_PORT")
    );
    let stage = server
        .stage_at(&endpoint, server.var("VRG_NFS_EXPORT"), 1)
        .await;
    let err = stage.check().await.unwrap_err();
    let text = err.to_string();
    assert!(!err.is_retryable(), "{text}");
    assert!(text.contains("NFSv3") && text.contains(&endpoint), "{text}");
}

#[tokio::test]
async fn keys_cannot_escape_the_export() {
    let server = Server::load();
    let mut spec = spec(StorageType::Nfs, Some(server.var("VRG_NFS_ENDPOINT")), None);
    spec.path = Some(server.var("VRG_NFS_EXPORT").into());
    let stage = runner::storage::open(
        &spec,
        &Credentials::default(),
        &StageOptions {
            guard: Guard::new(true),
            ..StageOptions::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f");
    random_file(&src, 10, 23);
    for bad in ["../outside", "/etc/passwd", "a//b"] {
        let err = stage
            .upload(bad, &src, &Progress::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{bad}: {err}");
    }
}

/// Upload and download speed of 1 GiB of incompressible data through the server on loopback:
/// `cargo test -p runner --test storage_nfs -- --ignored --nocapture` (add `--release` for an
/// optimized client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: writes 1 GiB three times"]
async fn throughput_of_one_gib() {
    let server = Server::load();
    let stage = server.stage().await;
    let ns = namespace("throughput");
    let dir =
        tempfile::tempdir_in(std::env::var_os("VRG_SCRATCH").unwrap_or_else(|| "/tmp".into()))
            .unwrap();
    let src = dir.path().join("big.raw");
    random_file(&src, 1 << 30, 99);
    let key = format!("{ns}/m/big.raw");
    let mib = (1u64 << 30) as f64 / MIB as f64;

    let started = Instant::now();
    let staged = stage
        .upload(&key, &src, &Progress::default())
        .await
        .unwrap();
    let up = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let dest = dir.path().join("back.raw");
    stage
        .download(&staged, &dest, &Progress::default())
        .await
        .unwrap();
    let down = started.elapsed().as_secs_f64();
    assert_eq!(sha256_of(&dest), staged.sha256);
    println!(
        "1 GiB through nfs://{}{}: upload {up:.1} s ({:.0} MiB/s), download {down:.1} s ({:.0} MiB/s)",
        server.var("VRG_NFS_ENDPOINT"),
        server.var("VRG_NFS_EXPORT"),
        mib / up,
        mib / down
    );
    stage.delete(&key).await.unwrap();
}

#[tokio::test]
async fn a_conversion_streams_through_the_server() {
    let server = Server::load();
    let stage = server.stage().await;
    let ns = namespace("streamed");
    let dir = tempfile::tempdir().unwrap();
    let key = object_key(&ns, "web-01", "vda", DiskFormat::Vmdk);
    let staged = storage_support::streamed_vmdk_round_trip(&stage, &key, dir.path()).await;
    assert_eq!(sha256_of(&server.dir().join(&key)), staged.sha256);
    assert_eq!(stage.stat(&key).await.unwrap(), Some(staged));
    stage.delete(&key).await.unwrap();
}
