//! The TLS listener: TLS 1.2 and 1.3 both served, certificates rotated by rewriting the files.

mod common;

use common::*;

async fn healthz(client: &reqwest::Client, server: &TestServer) -> Result<String, reqwest::Error> {
    client
        .get(server.url("/healthz"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await
}

#[tokio::test]
async fn serves_tls_1_2_and_1_3() {
    let server = TestServer::start(world(), Options::default()).await;
    let tls12 = server
        .client_trusting(&server.ca.pem)
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    assert_eq!(healthz(&tls12, &server).await.unwrap(), "ok");
    let tls13 = server
        .client_trusting(&server.ca.pem)
        .min_tls_version(reqwest::tls::Version::TLS_1_3)
        .build()
        .unwrap();
    assert_eq!(healthz(&tls13, &server).await.unwrap(), "ok");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let server = TestServer::start(world(), Options::default()).await;
    let stranger = TestCa::new("some other CA");
    let client = server.client_trusting(&stranger.pem).build().unwrap();
    let error = healthz(&client, &server).await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
}

#[tokio::test]
async fn rotated_certificate_files_are_served_without_a_restart() {
    let server = TestServer::start(world(), Options::default()).await;
    let old_ca_client = || server.client_trusting(&server.ca.pem).build().unwrap();
    assert_eq!(healthz(&old_ca_client(), &server).await.unwrap(), "ok");

    // Rotate: a certificate from a new CA replaces the files.
    let new_ca = TestCa::new("rotated CA");
    new_ca.write_serving_pair(server.cert_dir.path());

    let new_ca_client = server.client_trusting(&new_ca.pem).build().unwrap();
    assert_eq!(healthz(&new_ca_client, &server).await.unwrap(), "ok");
    // A fresh connection trusting only the old CA now fails: the old certificate is no longer served.
    assert!(healthz(&old_ca_client(), &server).await.is_err());

    // And once more, to see that reloading is not a one-off.
    let third = TestCa::new("third CA");
    third.write_serving_pair(server.cert_dir.path());
    let third_client = server.client_trusting(&third.pem).build().unwrap();
    assert_eq!(healthz(&third_client, &server).await.unwrap(), "ok");
}

#[tokio::test]
async fn a_half_written_rotation_keeps_serving_the_previous_certificate() {
    let server = TestServer::start(world(), Options::default()).await;
    // Only the certificate is replaced (its key is not there yet): the pair does not match.
    let new_ca = TestCa::new("rotated CA");
    let scratch = tempfile::tempdir().unwrap();
    new_ca.write_serving_pair(scratch.path());
    std::fs::copy(
        scratch.path().join(webhook::tls::CERT_FILE),
        server.cert_dir.path().join(webhook::tls::CERT_FILE),
    )
    .unwrap();
    let old_ca_client = server.client_trusting(&server.ca.pem).build().unwrap();
    assert_eq!(healthz(&old_ca_client, &server).await.unwrap(), "ok");
    // The key arrives: the new pair is served.
    std::fs::copy(
        scratch.path().join(webhook::tls::KEY_FILE),
        server.cert_dir.path().join(webhook::tls::KEY_FILE),
    )
    .unwrap();
    let new_ca_client = server.client_trusting(&new_ca.pem).build().unwrap();
    assert_eq!(healthz(&new_ca_client, &server).await.unwrap(), "ok");
}
