//! What must pass: every example in examples/, risky-but-legal choices (with warnings), the local test
//! world's loopback storage when the flag allows it, updates that leave spec alone; plus the ops routes
//! and malformed bodies, all through the real HTTPS listener.

mod common;

use common::*;
use serde::Deserialize;
use serde_json::{Value, json};

/// Every VMMigration document of examples/*.yaml, as JSON, with its file name.
fn example_migrations() -> Vec<(String, Value)> {
    let dir = manifest_dir().join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = vec![];
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: Value =
                serde_json::to_value(serde_yaml::Value::deserialize(document).unwrap()).unwrap();
            if value["kind"] == "VMMigration" {
                out.push((
                    file.file_name().unwrap().to_string_lossy().into_owned(),
                    value,
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn every_example_parses_and_is_admitted() {
    let server = TestServer::start(world(), Options::default()).await;
    let examples = example_migrations();
    assert_eq!(
        examples.len(),
        7,
        "quick start, three scenarios, multi-disk, windows, large"
    );
    for (file, object) in &examples {
        // The types take it.
        serde_json::from_value::<crd::VMMigration>(object.clone())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        // A user with ordinary rights in the examples' namespaces may create it.
        let response = server
            .review(&review("CREATE", ALICE, Some(object), None))
            .await;
        assert_eq!(response["allowed"], true, "{file}: {}", message(&response));
    }
}

#[tokio::test]
async fn risky_choices_are_allowed_with_warnings() {
    let server = TestServer::start(world(), Options::default()).await;
    let mut object = migration();
    set(&mut object, "/spec/cleanupPolicy/deleteSource", json!(true));
    set(
        &mut object,
        "/spec/cutover",
        json!({"stopSource": "PowerOff"}),
    );
    set(
        &mut object,
        "/spec/storage",
        json!({
            "type": "http",
            "endpoint": "http://storage.test/exports",
            "credentialsSecretRef": {"name": "fileserver-token"}
        }),
    );
    let response = server
        .review(&review("CREATE", ALICE, Some(&object), None))
        .await;
    assert_eq!(response["allowed"], true, "{}", message(&response));
    let warnings: Vec<&str> = response["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("plain http")));
    assert!(warnings.iter().any(|w| w.contains("deleteSource is true")));

    // An s3 endpoint with http:// warns too; a plain migration has no warning.
    let mut object = migration();
    set(
        &mut object,
        "/spec/storage/endpoint",
        json!("http://storage.test:9000"),
    );
    let response = server
        .review(&review("CREATE", ALICE, Some(&object), None))
        .await;
    assert_eq!(response["warnings"].as_array().map(Vec::len), Some(1));
    let response = server
        .review(&review("CREATE", ALICE, Some(&migration()), None))
        .await;
    assert!(response.get("warnings").is_none(), "{response}");
}

#[tokio::test]
async fn loopback_storage_is_allowed_only_with_the_flag() {
    let mut object = migration();
    set(
        &mut object,
        "/spec/storage/endpoint",
        json!("http://127.0.0.1:9000"),
    );
    let request = review("CREATE", ADMIN, Some(&object), None);

    let strict = TestServer::start(world(), Options::default()).await;
    assert_eq!(strict.review(&request).await["allowed"], false);

    let lab = TestServer::start(
        world(),
        Options {
            allow_loopback: true,
        },
    )
    .await;
    let response = lab.review(&request).await;
    assert_eq!(response["allowed"], true, "{}", message(&response));
    // The flag does not open link-local.
    set(
        &mut object,
        "/spec/storage/endpoint",
        json!("169.254.169.254"),
    );
    let response = lab
        .review(&review("CREATE", ADMIN, Some(&object), None))
        .await;
    assert_eq!(response["allowed"], false);
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_not_denied() {
    let server = TestServer::start(world(), Options::default()).await;
    let mut object = migration();
    set(
        &mut object,
        "/spec/storage/endpoint",
        json!("only-the-runner-knows.internal:9000"),
    );
    let response = server
        .review(&review("CREATE", ALICE, Some(&object), None))
        .await;
    assert_eq!(response["allowed"], true, "{}", message(&response));
}

#[tokio::test]
async fn updates_that_leave_spec_alone_and_deletes_pass() {
    let server = TestServer::start(world(), Options::default()).await;
    let old = migration();
    let mut new = old.clone();
    set(
        &mut new,
        "/metadata/finalizers",
        json!(["virtrigaud.io/cleanup"]),
    );
    set(&mut new, "/metadata/labels", json!({"team": "a"}));
    // Even after the target VM exists (the name is then "taken"), the operator's updates go through.
    set(&mut new, "/spec/targetName", json!("already-there"));
    let mut old_taken = old.clone();
    set(&mut old_taken, "/spec/targetName", json!("already-there"));
    let response = server
        .review(&review("UPDATE", ALICE, Some(&new), Some(&old_taken)))
        .await;
    assert_eq!(response["allowed"], true, "{}", message(&response));

    let response = server
        .review(&review("DELETE", ALICE, None, Some(&old)))
        .await;
    assert_eq!(response["allowed"], true);

    // Status writes (the subresource) are not validated here.
    let mut status_update = review("UPDATE", ALICE, Some(&new), Some(&old));
    set(&mut status_update, "/request/subResource", json!("status"));
    assert_eq!(server.review(&status_update).await["allowed"], true);
}

#[tokio::test]
async fn malformed_bodies_get_an_invalid_answer_not_an_error() {
    let server = TestServer::start(world(), Options::default()).await;
    let client = server.client();
    for body in [
        "",
        "{",
        "null",
        "[]",
        r#"{"kind":"AdmissionReview"}"#,
        r#"{"request":{"uid":5}}"#,
    ] {
        let answer = client
            .post(server.url("/validate"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{body:?}");
        let answer: Value = answer.json().await.unwrap();
        assert_eq!(answer["response"]["allowed"], false, "{body:?}");
        assert!(
            message(&answer["response"]).starts_with("malformed AdmissionReview"),
            "{body:?}: {answer}"
        );
    }
}

#[tokio::test]
async fn health_and_metrics_are_served() {
    let server = TestServer::start(world(), Options::default()).await;
    let client = server.client();
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    server
        .review(&review("CREATE", ALICE, Some(&migration()), None))
        .await;
    server
        .review(&review("CREATE", MALLORY, Some(&migration()), None))
        .await;
    client
        .post(server.url("/validate"))
        .body("{")
        .send()
        .await
        .unwrap();

    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"virtrigaud_webhook_admission_requests_total{operation="CREATE",result="allowed"} 1"#,
        r#"virtrigaud_webhook_admission_requests_total{operation="CREATE",result="denied"} 1"#,
        r#"virtrigaud_webhook_admission_requests_total{operation="unknown",result="invalid"} 1"#,
        r#"virtrigaud_webhook_admission_duration_seconds_count{operation="CREATE"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

#[tokio::test]
async fn answers_take_milliseconds() {
    let server = TestServer::start(world(), Options::default()).await;
    let client = server.client();
    let request = review("CREATE", ALICE, Some(&migration()), None);
    // Warm the connection, then time a batch.
    client
        .post(server.url("/validate"))
        .json(&request)
        .send()
        .await
        .unwrap();
    let rounds = 200;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        let answer: Value = client
            .post(server.url("/validate"))
            .json(&request)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["response"]["allowed"], true);
    }
    let each = started.elapsed() / rounds;
    println!(
        "full admission (spec, endpoint, references, access reviews) over HTTPS: {each:?} per request"
    );
    assert!(each < std::time::Duration::from_millis(50), "{each:?}");
}

/// This package's directory, as `cargo test` gives it when the test runs: the cargo target dir is
/// shared between checkouts (CI's clones reuse this machine's builds), so a test binary built in
/// another checkout must not read that checkout's files through a path fixed at compile time.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
