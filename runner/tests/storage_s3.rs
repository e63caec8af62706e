//! S3 staging against a real SigV4 server (s3s-fs) on loopback.

mod storage_support;

use runner::endpoint::Guard;
use std::time::Duration;

use crd::DiskFormat;
use runner::Error;
use runner::progress::Progress;
use runner::storage::s3::{MIN_PART, S3Stage, journal_path};
use runner::storage::{Stage, StageOptions, UploadLedger, object_key};
use storage_support::{S3Server, flip_a_byte, random_file, sha256_of};

fn options() -> StageOptions {
    StageOptions {
        attempts: 2,
        guard: Guard::new(true),
        ..StageOptions::default()
    }
}

/// Parts the journal of an upload of `src` records as sent (the client got their ETag).
fn journaled_parts(src: &std::path::Path) -> usize {
    std::fs::read_to_string(journal_path(src))
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

async fn stage(server: &S3Server) -> S3Stage {
    S3Stage::from_spec(&server.spec(), &server.credentials(), &options())
        .await
        .unwrap()
}

#[tokio::test]
async fn multipart_round_trip_with_checksum_sidecar() {
    let server = S3Server::start();
    let stage = stage(&server).await;
    stage.check().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vda.qcow2");
    let size = 5 * MIN_PART + 12345; // 6 parts, the last one short
    random_file(&src, size, 1);
    let expected = sha256_of(&src);
    let key = object_key("team-a", "web-01", "vda", DiskFormat::Qcow2);

    let progress = Progress::new(size);
    let (staged, report) = stage
        .upload_with_report(&key, &src, &progress)
        .await
        .unwrap();
    assert_eq!(staged.sha256, expected);
    assert_eq!(staged.size, size);
    assert_eq!(staged.url, format!("s3://{}/{key}", server.bucket));
    assert_eq!(
        (report.parts, report.reused, report.bytes_sent),
        (6, 0, size)
    );
    assert_eq!(progress.done(), size);
    assert!(
        !journal_path(&src).exists(),
        "journal removed after completion"
    );
    // what the server stored is the file, and the sidecar is in sha256sum format
    assert_eq!(sha256_of(&server.object_path(&key)), expected);
    let sidecar = std::fs::read_to_string(server.object_path(&format!("{key}.sha256"))).unwrap();
    assert_eq!(sidecar, format!("{expected}  vda.qcow2\n"));

    assert_eq!(stage.stat(&key).await.unwrap(), Some(staged.clone()));

    let dest = dir.path().join("fetched.qcow2");
    let progress = Progress::new(size);
    stage.download(&staged, &dest, &progress).await.unwrap();
    assert_eq!(sha256_of(&dest), expected);
    assert_eq!(progress.done(), size);
    assert!(!dir.path().join("fetched.qcow2.part").exists());

    stage.delete(&key).await.unwrap();
    assert_eq!(stage.stat(&key).await.unwrap(), None);
    assert!(!server.object_path(&key).exists());
    stage.delete(&key).await.unwrap(); // absent: not an error
}

#[tokio::test]
async fn small_object_uses_one_put() {
    let server = S3Server::start();
    let stage = stage(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("small.raw");
    random_file(&src, 4096, 2);
    let (staged, report) = stage
        .upload_with_report("ns/m/small.raw", &src, &Progress::default())
        .await
        .unwrap();
    assert_eq!(report.parts, 1);
    assert_eq!(staged.sha256, sha256_of(&src));
    let dest = dir.path().join("back.raw");
    stage
        .download(&staged, &dest, &Progress::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&src).unwrap());
}

#[tokio::test]
async fn interrupted_multipart_upload_resumes_with_list_parts() {
    let server = S3Server::start();
    let stage = stage(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vdb.vmdk");
    let size = 40 * MIN_PART; // 40 parts of 8 MiB
    random_file(&src, size, 3);
    let key = object_key("team-a", "db-01", "vdb", DiskFormat::Vmdk);

    // kill the upload once a few parts are confirmed by the server
    let running = {
        let (stage, key, src) = (stage.clone(), key.clone(), src.clone());
        tokio::spawn(async move { stage.upload(&key, &src, &Progress::default()).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while journaled_parts(&src) < 3 {
        assert!(
            !running.is_finished(),
            "the upload ended before it could be interrupted"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no part reached the server"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    let held = server.stored_parts();
    assert!((3..40).contains(&held), "{held} parts on the server");
    assert!(
        journal_path(&src).exists(),
        "the upload journal survives the kill"
    );

    let (staged, report) = stage
        .upload_with_report(&key, &src, &Progress::default())
        .await
        .unwrap();
    assert!(report.resumed);
    assert!(report.reused >= 3, "{report:?}");
    assert_eq!(
        report.reused as usize + (report.bytes_sent / MIN_PART) as usize,
        40
    );
    assert!(report.bytes_sent < size, "{report:?}");
    assert_eq!(staged.sha256, sha256_of(&src));
    assert_eq!(sha256_of(&server.object_path(&key)), staged.sha256);
    assert_eq!(server.stored_parts(), 0);
}

#[tokio::test]
async fn a_held_part_that_differs_from_the_file_is_sent_again() {
    let server = S3Server::start();
    let stage = stage(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vdc.qcow2");
    let size = 24 * MIN_PART;
    random_file(&src, size, 4);
    let key = "ns/m/vdc.qcow2";
    let running = {
        let (stage, src) = (stage.clone(), src.clone());
        tokio::spawn(async move { stage.upload(key, &src, &Progress::default()).await })
    };
    while journaled_parts(&src) < 2 {
        assert!(
            !running.is_finished(),
            "the upload ended before it could be interrupted"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    running.abort();
    let _ = running.await;
    // change the local file inside every part the server holds, keeping size and mtime: only
    // the MD5/ETag comparison can notice
    let mtime = std::fs::metadata(&src).unwrap().modified().unwrap();
    let mut data = std::fs::read(&src).unwrap();
    for entry in std::fs::read_dir(server.data_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some((_, n)) = name.split_once(".part-") {
            let n: u64 = n.parse().unwrap();
            data[((n - 1) * MIN_PART + 100) as usize] ^= 0xff;
        }
    }
    std::fs::write(&src, &data).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    let (staged, report) = stage
        .upload_with_report(key, &src, &Progress::default())
        .await
        .unwrap();
    assert!(report.resumed);
    assert_eq!(report.reused, 0, "{report:?}");
    assert_eq!(staged.sha256, sha256_of(&src));
    assert_eq!(sha256_of(&server.object_path(key)), staged.sha256);
}

#[tokio::test]
async fn server_killed_mid_upload_is_retryable_and_resumes() {
    let mut server = S3Server::start();
    let stage = stage(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vdd.qcow2");
    random_file(&src, 32 * MIN_PART, 5);
    let key = "ns/m/vdd.qcow2";
    let running = {
        let (stage, src) = (stage.clone(), src.clone());
        tokio::spawn(async move { stage.upload(key, &src, &Progress::default()).await })
    };
    // parts the client saw acknowledged (a part file on the server may still be growing)
    while journaled_parts(&src) < 2 {
        assert!(
            !running.is_finished(),
            "the upload ended before the server was killed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill();
    let err = running.await.unwrap().unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(err, Error::Transient { .. }), "{err}");

    server.restart();
    // what the resume starts from, shown if the assertion below fails
    let journal = std::fs::read_to_string(journal_path(&src)).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(server.data_dir())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            format!("{:?} {}", e.file_name(), e.metadata().unwrap().len())
        })
        .collect();
    files.sort();
    let (staged, report) = stage
        .upload_with_report(key, &src, &Progress::default())
        .await
        .unwrap();
    assert!(
        report.resumed && report.reused >= 2,
        "{report:?}\njournal:\n{journal}\nfiles: {files:#?}"
    );
    assert_eq!(staged.sha256, sha256_of(&src));
}

#[tokio::test]
async fn download_resumes_a_partial_file_and_verifies() {
    let server = S3Server::start();
    let stage = stage(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vde.qcow2");
    let size = 3 * MIN_PART + 7;
    random_file(&src, size, 6);
    let staged = stage
        .upload("ns/m/vde.qcow2", &src, &Progress::default())
        .await
        .unwrap();
    let data = std::fs::read(&src).unwrap();

    // a correct prefix left by an interrupted download: continued, verified
    let dest = dir.path().join("vde.fetched");
    std::fs::write(dir.path().join("vde.fetched.part"), &data[..10_000_000]).unwrap();
    stage
        .download(&staged, &dest, &Progress::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // a wrong prefix: the resumed bytes are hashed too, so the mismatch is caught
    let dest2 = dir.path().join("vde.again");
    let mut bad = data[..5_000_000].to_vec();
    bad[100] ^= 1;
    std::fs::write(dir.path().join("vde.again.part"), bad).unwrap();
    let err = stage
        .download(&staged, &dest2, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert!(!dest2.exists() && !dir.path().join("vde.again.part").exists());
}

#[tokio::test]
async fn corruption_in_storage_is_a_terminal_checksum_error() {
    let server = S3Server::start();
    let stage = stage(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vdf.qcow2");
    random_file(&src, 2 * MIN_PART + 1, 7);
    let key = "ns/m/vdf.qcow2";
    let staged = stage.upload(key, &src, &Progress::default()).await.unwrap();
    flip_a_byte(&server.object_path(key));

    let dest = dir.path().join("vdf.fetched");
    let err = stage
        .download(&staged, &dest, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains(&staged.sha256), "{err}");
    assert!(!dest.exists());
}

#[tokio::test]
async fn wrong_credentials_are_terminal_and_named() {
    let server = S3Server::start();
    let creds = server
        .credentials()
        .with("storage", "secretKey", "not-the-secret");
    let stage = S3Stage::from_spec(&server.spec(), &creds, &options())
        .await
        .unwrap();
    let err = stage.check().await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("bucket vm-migrations"), "{text}");
    assert!(text.contains(&server.endpoint()), "{text}");
    assert!(text.contains("secretKey"), "{text}");
    assert!(!text.contains("not-the-secret"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("x.qcow2");
    random_file(&src, 1000, 8);
    let err = stage
        .upload("ns/m/x.qcow2", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(err.to_string().contains("ns/m/x.qcow2"), "{err}");
}

#[tokio::test]
async fn missing_bucket_is_not_found() {
    let server = S3Server::start();
    let mut spec = server.spec();
    spec.bucket = Some("no-such-bucket".into());
    let stage = S3Stage::from_spec(&spec, &server.credentials(), &options())
        .await
        .unwrap();
    let err = stage.check().await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
}

#[tokio::test]
async fn unreachable_server_is_retryable() {
    let server = S3Server::start();
    let stage = stage(&server).await;
    drop(server);
    let err = stage.check().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn metadata_endpoints_are_refused() {
    let server = S3Server::start();
    let creds = server
        .credentials()
        .with("storage", "endpoint", "http://169.254.169.254:80");
    let err = S3Stage::from_spec(&server.spec(), &creds, &options())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ForbiddenEndpoint(_)), "{err}");
}

#[tokio::test]
async fn loopback_is_refused_unless_allowed_and_names_go_through_the_checked_resolver() {
    let server = S3Server::start();
    let strict = StageOptions {
        attempts: 1,
        ..StageOptions::default()
    };
    let err = S3Stage::from_spec(&server.spec(), &server.credentials(), &strict)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ForbiddenEndpoint(_)), "{err}");
    assert!(err.to_string().contains("loopback"), "{err}");
    // the Secret's endpoint key is judged too, by name
    let port = server.endpoint().rsplit(':').next().unwrap().to_string();
    let by_name =
        server
            .credentials()
            .with("storage", "endpoint", format!("http://localhost:{port}"));
    let err = S3Stage::from_spec(&server.spec(), &by_name, &strict)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ForbiddenEndpoint(_)), "{err}");
    // allowed, the name resolves through the checked resolver and the stage works
    let stage = S3Stage::from_spec(&server.spec(), &by_name, &options())
        .await
        .unwrap();
    stage.check().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    random_file(&src, 4096, 3);
    let staged = stage
        .upload("ns/m/named.raw", &src, &Progress::default())
        .await
        .unwrap();
    assert_eq!(staged.sha256, sha256_of(&src));
}

#[tokio::test]
async fn opened_from_the_spec_through_the_factory() {
    let server = S3Server::start();
    let mut spec = server.spec();
    spec.path = Some("/staging/".into());
    let stage = runner::storage::open(&spec, &server.credentials(), &options())
        .await
        .unwrap();
    assert!(stage.describe().contains("vm-migrations"));
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    random_file(&src, 100, 9);
    let staged = stage
        .upload("ns/m/d.raw", &src, &Progress::default())
        .await
        .unwrap();
    assert_eq!(staged.url, "s3://vm-migrations/staging/ns/m/d.raw");
    assert!(server.object_path("staging/ns/m/d.raw").exists());
}

#[tokio::test]
async fn a_conversion_streams_into_a_multipart_upload() {
    let server = S3Server::start();
    let stage = stage(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let key = object_key("team-a", "web-01", "vda", DiskFormat::Vmdk);
    let staged = storage_support::streamed_vmdk_round_trip(&stage, &key, dir.path()).await;
    assert_eq!(sha256_of(&server.object_path(&key)), staged.sha256);
    assert_eq!(stage.stat(&key).await.unwrap(), Some(staged));
    assert_eq!(
        server.stored_parts(),
        0,
        "the multipart upload was completed"
    );
}

/// A stage whose multipart uploads are recorded in `ledger` (as the runner's status does).
async fn stage_recording(server: &S3Server, ledger: &UploadLedger) -> S3Stage {
    let options = StageOptions {
        uploads: ledger.clone(),
        ..options()
    };
    S3Stage::from_spec(&server.spec(), &server.credentials(), &options)
        .await
        .unwrap()
}

/// A first runner pod uploads `parts` parts of `seed`-random bytes to `key` and is lost once the
/// server holds `lost_after` of them: its scratch (the export and the upload journal) goes with it.
/// What the status recorded.
async fn pod_lost_mid_upload(
    server: &S3Server,
    key: &str,
    parts: u64,
    seed: u64,
    lost_after: usize,
) -> Vec<crd::PendingUpload> {
    let ledger = UploadLedger::default();
    let stage = stage_recording(server, &ledger).await;
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("vda.raw");
    random_file(&src, parts * MIN_PART, seed);
    let running = {
        let (key, src) = (key.to_string(), src.clone());
        tokio::spawn(async move { stage.upload(&key, &src, &Progress::default()).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.stored_parts() < lost_after {
        assert!(
            !running.is_finished(),
            "the upload ended before the pod was lost"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no part reached the server"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    running.abort();
    let _ = running.await;
    let recorded = ledger.pending();
    assert_eq!(
        recorded.len(),
        1,
        "the upload in progress is recorded: {recorded:?}"
    );
    assert_eq!(recorded[0].key, key);
    recorded
}

/// A runner pod lost mid-upload. The next pod re-exports the disk (same content, new file) and,
/// with the upload id the status recorded, keeps the parts the server holds instead of sending
/// them again.
#[tokio::test]
async fn a_new_pod_continues_the_upload_the_status_recorded() {
    let server = S3Server::start();
    let key = object_key("team-a", "db-01", "vda", DiskFormat::Raw);
    let recorded = pod_lost_mid_upload(&server, &key, 24, 8, 6).await;

    let pod_2 = tempfile::tempdir().unwrap();
    let again = pod_2.path().join("vda.raw");
    random_file(&again, 24 * MIN_PART, 8); // the re-export: same bytes, a new file
    let ledger = UploadLedger::seeded(&recorded);
    let (staged, report) = stage_recording(&server, &ledger)
        .await
        .upload_with_report(&key, &again, &Progress::default())
        .await
        .unwrap();
    assert!(report.resumed, "{report:?}");
    assert!(report.reused >= 6, "{report:?}");
    assert_eq!(
        report.bytes_sent,
        (24 - u64::from(report.reused)) * MIN_PART
    );
    assert_eq!(staged.sha256, sha256_of(&again));
    assert_eq!(sha256_of(&server.object_path(&key)), staged.sha256);
    assert!(
        ledger.pending().is_empty(),
        "the completed upload left the ledger"
    );
    assert_eq!(server.stored_parts(), 0);
}

/// Cleanup in a new pod aborts the upload the status recorded: no parts stay on the server, even
/// where the server cannot list uploads (s3s-fs).
#[tokio::test]
async fn cleanup_aborts_the_upload_the_status_recorded() {
    let server = S3Server::start();
    let key = object_key("team-a", "db-01", "vda", DiskFormat::Raw);
    let recorded = pod_lost_mid_upload(&server, &key, 16, 9, 2).await;
    let ledger = UploadLedger::seeded(&recorded);
    stage_recording(&server, &ledger)
        .await
        .delete(&key)
        .await
        .unwrap();
    assert_eq!(server.stored_parts(), 0, "the recorded upload was aborted");
    assert!(ledger.pending().is_empty());
}

/// The new pod's re-export differs from what the lost pod sent (a source that changed): the parts
/// kept by their local MD5 are read back after completion, found different, and the upload starts
/// over, so the object is the new file and never a mix.
#[tokio::test]
async fn a_re_export_that_differs_is_sent_whole_again() {
    let server = S3Server::start();
    let key = object_key("team-a", "db-01", "vda", DiskFormat::Raw);
    let recorded = pod_lost_mid_upload(&server, &key, 16, 10, 3).await;

    let pod_2 = tempfile::tempdir().unwrap();
    let changed = pod_2.path().join("vda.raw");
    random_file(&changed, 16 * MIN_PART, 11);
    let (staged, report) = stage_recording(&server, &UploadLedger::seeded(&recorded))
        .await
        .upload_with_report(&key, &changed, &Progress::default())
        .await
        .unwrap();
    assert_eq!(staged.sha256, sha256_of(&changed));
    assert_eq!(
        sha256_of(&server.object_path(&key)),
        staged.sha256,
        "the object is the new file ({report:?})"
    );
    assert_eq!(server.stored_parts(), 0);
}
