//! HTTP staging against a real nginx WebDAV server with a bearer token on loopback.

mod storage_support;

use crd::{DiskFormat, StorageType};
use runner::Error;
use runner::credentials::Credentials;
use runner::endpoint::Guard;
use runner::progress::Progress;
use runner::storage::{HttpStage, Stage, StageOptions, object_key};
use storage_support::{Nginx, flip_a_byte, random_file, sha256_of, spec};

fn options() -> StageOptions {
    StageOptions {
        attempts: 2,
        guard: Guard::new(true),
        ..StageOptions::default()
    }
}

async fn stage(url: &str, creds: &Credentials) -> HttpStage {
    HttpStage::from_spec(&spec(StorageType::Http, Some(url), None), creds, &options())
        .await
        .unwrap()
}

#[tokio::test]
async fn round_trip_with_bearer_token() {
    let nginx = Nginx::start();
    let stage = stage(&nginx.http_url(), &nginx.token_credentials()).await;
    stage.check().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vda.qcow2");
    let size = 20 * 1024 * 1024 + 3;
    random_file(&src, size, 11);
    let expected = sha256_of(&src);
    let key = object_key("team-a", "web-01", "vda", DiskFormat::Qcow2);

    let progress = Progress::new(size);
    let staged = stage.upload(&key, &src, &progress).await.unwrap();
    assert_eq!(staged.sha256, expected);
    assert_eq!(staged.size, size);
    assert_eq!(staged.url, format!("{}/{key}", nginx.http_url()));
    assert_eq!(progress.done(), size);
    assert_eq!(sha256_of(&nginx.file(&key)), expected);
    assert_eq!(
        std::fs::read_to_string(nginx.file(&format!("{key}.sha256"))).unwrap(),
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
    assert!(!nginx.file(&key).exists());
    assert_eq!(stage.stat(&key).await.unwrap(), None);
    stage.delete(&key).await.unwrap();
}

#[tokio::test]
async fn https_with_the_secrets_ca_and_basic_auth() {
    let nginx = Nginx::start();
    let creds = Credentials::default()
        .with("storage", "username", &nginx.username)
        .with("storage", "password", &nginx.password)
        .with("storage", "ca.crt", &nginx.pki.ca_pem);
    let stage = stage(&nginx.https_url(), &creds).await;
    stage.check().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vdb.vmdk");
    random_file(&src, 3 * 1024 * 1024, 12);
    let staged = stage
        .upload("ns/m/vdb.vmdk", &src, &Progress::default())
        .await
        .unwrap();
    assert!(staged.url.starts_with("https://127.0.0.1:"));
    let dest = dir.path().join("vdb.back");
    stage
        .download(&staged, &dest, &Progress::default())
        .await
        .unwrap();
    assert_eq!(sha256_of(&dest), sha256_of(&src));

    // without the CA the server's certificate is not trusted
    let untrusted = stage_without_ca(&nginx).await;
    assert!(untrusted.check().await.is_err());
}

async fn stage_without_ca(nginx: &Nginx) -> HttpStage {
    stage(&nginx.https_url(), &nginx.token_credentials()).await
}

#[tokio::test]
async fn wrong_token_is_terminal_and_names_storage_and_key() {
    let nginx = Nginx::start();
    let creds = Credentials::default().with("storage", "token", "wrong-token");
    let stage = stage(&nginx.http_url(), &creds).await;
    let err = stage.check().await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains(&format!("http storage {}", nginx.http_url())),
        "{text}"
    );
    assert!(text.contains("`token`"), "{text}");
    assert!(!text.contains("wrong-token"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("x.raw");
    random_file(&src, 2 * 1024 * 1024, 13);
    let err = stage
        .upload("ns/m/x.raw", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(err.to_string().contains("PUT ns/m/x.raw"), "{err}");

    let basic = Credentials::default()
        .with("storage", "username", "vrg")
        .with("storage", "password", "nope");
    let err = stage_with(&nginx, &basic).await.check().await.unwrap_err();
    assert!(err.to_string().contains("`username`/`password`"), "{err}");
}

async fn stage_with(nginx: &Nginx, creds: &Credentials) -> HttpStage {
    stage(&nginx.http_url(), creds).await
}

#[tokio::test]
async fn download_continues_with_range() {
    let nginx = Nginx::start();
    let stage = stage(&nginx.http_url(), &nginx.token_credentials()).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vdc.qcow2");
    random_file(&src, 9 * 1024 * 1024, 14);
    let staged = stage
        .upload("ns/m/vdc.qcow2", &src, &Progress::default())
        .await
        .unwrap();
    let data = std::fs::read(&src).unwrap();

    let dest = dir.path().join("vdc.back");
    std::fs::write(dir.path().join("vdc.back.part"), &data[..4_000_000]).unwrap();
    let progress = Progress::default();
    stage.download(&staged, &dest, &progress).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(progress.done(), data.len() as u64);

    // a damaged prefix is hashed with the rest: only Range was fetched, and the mismatch shows
    let dest2 = dir.path().join("vdc.again");
    let mut bad = data[..4_000_000].to_vec();
    bad[7] ^= 0x80;
    std::fs::write(dir.path().join("vdc.again.part"), bad).unwrap();
    let err = stage
        .download(&staged, &dest2, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert!(!dest2.exists());
    assert!(!dir.path().join("vdc.again.part").exists());
}

#[tokio::test]
async fn corruption_on_the_server_is_caught() {
    let nginx = Nginx::start();
    let stage = stage(&nginx.http_url(), &nginx.token_credentials()).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vdd.qcow2");
    random_file(&src, 1024 * 1024, 15);
    let key = "ns/m/vdd.qcow2";
    let staged = stage.upload(key, &src, &Progress::default()).await.unwrap();
    flip_a_byte(&nginx.file(key));
    let err = stage
        .download(&staged, &dir.path().join("vdd.back"), &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn missing_collections_are_created_with_mkcol() {
    let nginx = Nginx::start();
    let url = format!("http://127.0.0.1:{}/strict", nginx.http_port);
    let stage = stage(&url, &nginx.token_credentials()).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vde.raw");
    random_file(&src, 2 * 1024 * 1024, 16);
    let staged = stage
        .upload("team-b/app-02/vde.raw", &src, &Progress::default())
        .await
        .unwrap();
    let stored = nginx.dir.path().join("www/strict/team-b/app-02/vde.raw");
    assert_eq!(sha256_of(&stored), staged.sha256);
    assert_eq!(staged.sha256, sha256_of(&src));
}

#[tokio::test]
async fn server_down_is_retryable() {
    let nginx = Nginx::start();
    let stage = stage(&nginx.http_url(), &nginx.token_credentials()).await;
    drop(nginx);
    let err = stage.check().await.unwrap_err();
    assert!(matches!(err, Error::Transient { .. }), "{err}");
}

#[tokio::test]
async fn metadata_address_is_refused() {
    let err = HttpStage::from_spec(
        &spec(
            StorageType::Http,
            Some("http://169.254.169.254/latest"),
            None,
        ),
        &Credentials::default(),
        &options(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::ForbiddenEndpoint(_)), "{err}");
}

#[tokio::test]
async fn a_conversion_streams_into_a_chunked_put() {
    let nginx = Nginx::start();
    let stage = stage(&nginx.http_url(), &nginx.token_credentials()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = "team-a/web-01/vda.vmdk";
    let staged = storage_support::streamed_vmdk_round_trip(&stage, key, dir.path()).await;
    assert_eq!(storage_support::sha256_of(&nginx.file(key)), staged.sha256);
    assert_eq!(stage.stat(key).await.unwrap(), Some(staged));
}
