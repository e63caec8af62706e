//! NFS staging on a directory standing in for the mounted export.

mod storage_support;

use crd::{DiskFormat, StorageType};
use runner::Error;
use runner::credentials::Credentials;
use runner::endpoint::Guard;
use runner::progress::Progress;
use runner::storage::{NfsStage, Stage, StageOptions, object_key};
use storage_support::{flip_a_byte, random_file, sha256_of, spec};

fn nfs_stage(root: &std::path::Path) -> NfsStage {
    let mut spec = spec(StorageType::Nfs, Some("nfs.local"), None);
    spec.path = Some("/exports/migrations".into());
    NfsStage::from_spec(
        &spec,
        &StageOptions {
            nfs_root: root.to_path_buf(),
            guard: Guard::new(true),
            ..StageOptions::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn round_trip_through_temp_name_and_sidecar() {
    let mount = tempfile::tempdir().unwrap();
    let stage = nfs_stage(mount.path());
    stage.check().await.unwrap();
    assert_eq!(
        std::fs::read_dir(mount.path()).unwrap().count(),
        0,
        "probe removed"
    );

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vda.qcow2");
    let size = 6 * 1024 * 1024 + 5;
    random_file(&src, size, 21);
    let expected = sha256_of(&src);
    let key = object_key("team-a", "web-01", "vda", DiskFormat::Qcow2);
    let progress = Progress::new(size);
    let staged = stage.upload(&key, &src, &progress).await.unwrap();
    assert_eq!(staged.sha256, expected);
    assert_eq!(
        staged.url,
        format!("nfs://nfs.local/exports/migrations/{key}")
    );
    assert_eq!(progress.done(), size);

    let stored_dir = mount.path().join("team-a/web-01");
    let mut names: Vec<String> = std::fs::read_dir(&stored_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["vda.qcow2", "vda.qcow2.sha256"],
        "no temp files left"
    );
    assert_eq!(sha256_of(&mount.path().join(&key)), expected);
    assert_eq!(
        std::fs::read_to_string(mount.path().join(format!("{key}.sha256"))).unwrap(),
        format!("{expected}  vda.qcow2\n")
    );
    assert_eq!(stage.stat(&key).await.unwrap(), Some(staged.clone()));

    let dest = dir.path().join("back.qcow2");
    stage
        .download(&staged, &dest, &Progress::default())
        .await
        .unwrap();
    assert_eq!(sha256_of(&dest), expected);

    stage.delete(&key).await.unwrap();
    assert_eq!(stage.stat(&key).await.unwrap(), None);
    assert!(
        !mount.path().join("team-a").exists(),
        "empty directories removed"
    );
    stage.delete(&key).await.unwrap();
}

#[tokio::test]
async fn object_without_sidecar_is_incomplete() {
    let mount = tempfile::tempdir().unwrap();
    let stage = nfs_stage(mount.path());
    std::fs::create_dir_all(mount.path().join("ns/m")).unwrap();
    std::fs::write(mount.path().join("ns/m/vdb.raw"), b"half").unwrap();
    assert_eq!(stage.stat("ns/m/vdb.raw").await.unwrap(), None);
}

#[tokio::test]
async fn corruption_and_resume_on_download() {
    let mount = tempfile::tempdir().unwrap();
    let stage = nfs_stage(mount.path());
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vdc.vmdk");
    random_file(&src, 3 * 1024 * 1024, 22);
    let key = "ns/m/vdc.vmdk";
    let staged = stage.upload(key, &src, &Progress::default()).await.unwrap();
    let data = std::fs::read(&src).unwrap();

    let dest = dir.path().join("vdc.back");
    std::fs::write(dir.path().join("vdc.back.part"), &data[..1_000_000]).unwrap();
    stage
        .download(&staged, &dest, &Progress::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    flip_a_byte(&mount.path().join(key));
    let err = stage
        .download(&staged, &dir.path().join("vdc.bad"), &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert!(!dir.path().join("vdc.bad").exists());
}

#[tokio::test]
async fn unmounted_directory_fails_the_check() {
    let mount = tempfile::tempdir().unwrap();
    let stage = nfs_stage(&mount.path().join("not-mounted"));
    let err = stage.check().await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("nfs://nfs.local/exports/migrations"),
        "{err}"
    );
}

#[tokio::test]
async fn keys_cannot_escape_the_mount() {
    let mount = tempfile::tempdir().unwrap();
    let stage = runner::storage::open(
        &{
            let mut s = spec(StorageType::Nfs, Some("nfs.local"), None);
            s.path = Some("/x".into());
            s
        },
        &Credentials::default(),
        &StageOptions {
            nfs_root: mount.path().to_path_buf(),
            guard: Guard::new(true),
            ..StageOptions::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f");
    random_file(&src, 10, 23);
    let err = stage
        .upload("../outside", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
}
