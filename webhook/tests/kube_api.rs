//! The Kubernetes side through a real `kube::Client` over a tower-test mock API server: which requests
//! the webhook makes (paths, field selectors, SubjectAccessReview bodies, the server-side apply of the
//! caBundle) and how it reads the answers. The e2e cluster later runs the same code against a real
//! kube-apiserver.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use http::{Request, Response, StatusCode};
use k8s_openapi::ByteString;
use kube::client::Body;
use serde_json::{Value, json};
use webhook::admission::Admission;
use webhook::cluster::KubeCluster;
use webhook::endpoints::AddressPolicy;
use webhook::{AppState, Metrics};

/// One request the mock API server saw.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    path_and_query: String,
    content_type: String,
    body: Value,
}

/// A kube Client whose requests are answered by `answer`; every request is recorded.
fn mock_client(
    mut answer: impl FnMut(&Call) -> (StatusCode, Value) + Send + 'static,
) -> (kube::Client, Arc<Mutex<Vec<Call>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls = Arc::new(Mutex::new(vec![]));
    let recorded = calls.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                path_and_query: parts.uri.path_and_query().unwrap().to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (status, reply) = answer(&call);
            recorded.lock().unwrap().push(call);
            respond.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    (kube::Client::new(service, "default"), calls)
}

fn not_found(what: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{what} not found")}),
    )
}

fn provider(name: &str, kind: &str, secret: &str) -> Value {
    json!({
        "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "Provider",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": kind, "endpoint": "https://x.example.com", "credentialSecretRef": {"name": secret}}
    })
}

const API: &str = "/apis/infra.virtrigaud.io/v1beta1";
const SAR: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// A small cluster: the base migration's objects; mallory may not get Secret s3-credentials.
fn cluster_api(call: &Call) -> (StatusCode, Value) {
    let path = call.path_and_query.as_str();
    if path == format!("{API}/namespaces/default/providers/vsphere-prod") {
        (
            StatusCode::OK,
            provider("vsphere-prod", "vsphere", "vsphere-credentials"),
        )
    } else if path == format!("{API}/namespaces/default/providers/libvirt-kvm") {
        (
            StatusCode::OK,
            provider("libvirt-kvm", "libvirt", "libvirt-credentials"),
        )
    } else if path == format!("{API}/namespaces/default/virtualmachines/my-libvirt-vm") {
        (
            StatusCode::OK,
            json!({
                "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VirtualMachine",
                "metadata": {"name": "my-libvirt-vm", "namespace": "default"},
                "spec": {"providerRef": {"name": "libvirt-kvm"}}
            }),
        )
    } else if path.starts_with(&format!("{API}/virtualmachines?")) {
        let items = if path.contains("already-there") {
            json!([{
                "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VirtualMachine",
                "metadata": {"name": "already-there", "namespace": "team-b"},
                "spec": {"providerRef": {"name": "vsphere-prod", "namespace": "default"}}
            }])
        } else {
            json!([])
        };
        (
            StatusCode::OK,
            json!({"apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VirtualMachineList", "metadata": {}, "items": items}),
        )
    } else if call.path == SAR && call.method == "POST" {
        let spec = &call.body["spec"];
        let denied =
            spec["user"] == MALLORY && spec["resourceAttributes"]["name"] == "s3-credentials";
        let mut answer = call.body.clone();
        answer["status"] = json!({"allowed": !denied});
        (StatusCode::CREATED, answer)
    } else {
        not_found(path)
    }
}

async fn server_over(client: kube::Client) -> TestServer {
    TestServer::start_with(AppState {
        admission: Arc::new(Admission {
            cluster: Arc::new(KubeCluster::new(client)),
            resolver: Arc::new(resolver()),
            addresses: AddressPolicy::default(),
        }),
        metrics: Arc::new(Metrics::default()),
    })
    .await
}

#[tokio::test]
async fn reads_referenced_objects_and_asks_access_reviews_with_the_requesting_user() {
    let (client, calls) = mock_client(cluster_api);
    let server = server_over(client).await;
    let mut request = review("CREATE", ALICE, Some(&migration()), None);
    set(
        &mut request,
        "/request/userInfo/extra",
        json!({"scopes.example.com/team": ["a"]}),
    );
    let response = server.review(&request).await;
    assert_eq!(response["allowed"], true, "{}", message(&response));

    let calls = calls.lock().unwrap().clone();
    let mut gets: Vec<&str> = calls
        .iter()
        .filter(|c| c.method == "GET")
        .map(|c| c.path_and_query.as_str())
        .collect();
    gets.sort();
    assert_eq!(
        gets,
        [
            "/apis/infra.virtrigaud.io/v1beta1/namespaces/default/providers/libvirt-kvm",
            "/apis/infra.virtrigaud.io/v1beta1/namespaces/default/providers/vsphere-prod",
            "/apis/infra.virtrigaud.io/v1beta1/namespaces/default/virtualmachines/my-libvirt-vm",
            "/apis/infra.virtrigaud.io/v1beta1/virtualmachines?&fieldSelector=metadata.name%3Dmoved-vm",
        ]
    );
    let mut reviews: Vec<String> = calls
        .iter()
        .filter(|c| c.path == SAR)
        .map(|c| {
            let spec = &c.body["spec"];
            assert_eq!(spec["user"], ALICE);
            assert_eq!(spec["uid"], "alice-uid");
            assert_eq!(spec["groups"], json!(["system:authenticated"]));
            assert_eq!(spec["extra"], json!({"scopes.example.com/team": ["a"]}));
            let a = &spec["resourceAttributes"];
            format!(
                "{} {} {}/{}",
                a["verb"].as_str().unwrap(),
                a["resource"].as_str().unwrap(),
                a["namespace"].as_str().unwrap(),
                a["name"].as_str().unwrap()
            )
        })
        .collect();
    reviews.sort();
    assert_eq!(
        reviews,
        [
            "get secrets default/libvirt-credentials",
            "get secrets default/s3-credentials",
            "get secrets default/vsphere-credentials",
            "get virtualmachines default/my-libvirt-vm",
        ]
    );
    assert!(
        calls.iter().all(|c| c.method == "GET" || c.path == SAR),
        "reads and access reviews only: {calls:?}"
    );
}

#[tokio::test]
async fn api_answers_become_denials() {
    let (client, _) = mock_client(cluster_api);
    let server = server_over(client).await;

    let response = server
        .review(&review("CREATE", MALLORY, Some(&migration()), None))
        .await;
    assert_eq!(response["allowed"], false);
    assert!(message(&response).contains("spec.storage.credentialsSecretRef: user \"mallory\" may not get Secret default/s3-credentials"), "{}", message(&response));

    let mut object = migration();
    set(
        &mut object,
        "/spec/targetProviderRef/name",
        json!("nowhere"),
    );
    let response = server
        .review(&review("CREATE", ALICE, Some(&object), None))
        .await;
    assert!(
        message(&response)
            .contains("spec.targetProviderRef: Provider default/nowhere does not exist"),
        "{}",
        message(&response)
    );

    let mut object = migration();
    set(&mut object, "/spec/targetName", json!("already-there"));
    let response = server
        .review(&review("CREATE", ALICE, Some(&object), None))
        .await;
    assert!(
        message(&response).contains(
            "spec.targetName: \"already-there\" is taken: VirtualMachine team-b/already-there"
        ),
        "{}",
        message(&response)
    );
}

#[tokio::test]
async fn an_api_error_is_a_denial_naming_the_field() {
    let (client, _) = mock_client(|call| {
        if call.path_and_query.contains("/providers/") {
            (
                StatusCode::FORBIDDEN,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "providers is forbidden"}),
            )
        } else {
            cluster_api(call)
        }
    });
    let server = server_over(client).await;
    let response = server
        .review(&review("CREATE", ALICE, Some(&migration()), None))
        .await;
    assert_eq!(response["allowed"], false);
    assert!(
        message(&response)
            .contains("spec.targetProviderRef: could not read Provider default/vsphere-prod"),
        "{}",
        message(&response)
    );
}

const OLD_CA: &str = "-----BEGIN CERTIFICATE-----\nb2xkIGNh\n-----END CERTIFICATE-----\n";

fn webhook_config_api(call: &Call) -> (StatusCode, Value) {
    let path =
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/virtrigaud-webhook";
    let existing = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "virtrigaud-webhook"},
        "webhooks": [{
            "name": "vmmigrations.infra.virtrigaud.io",
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "clientConfig": {
                "service": {"name": "virtrigaud-webhook", "namespace": "virtrigaud-system", "path": "/validate", "port": 443},
                "caBundle": serde_json::to_value(ByteString(OLD_CA.as_bytes().to_vec())).unwrap()
            }
        }]
    });
    match call.method.as_str() {
        "GET" if call.path_and_query == path => (StatusCode::OK, existing),
        "PATCH" if call.path_and_query.starts_with(path) => (StatusCode::OK, existing),
        _ => not_found(&call.path_and_query),
    }
}

#[tokio::test]
async fn self_signed_mode_applies_the_ca_bundle_server_side() {
    let (client, calls) = mock_client(webhook_config_api);
    let authority = webhook::selfsigned::Authority::generate("test").unwrap();
    webhook::selfsigned::patch_ca_bundle(client, "virtrigaud-webhook", authority.ca_pem())
        .await
        .unwrap();

    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].method, "GET");
    let patch = &calls[1];
    assert_eq!(patch.method, "PATCH");
    assert_eq!(patch.content_type, "application/apply-patch+yaml");
    assert!(
        patch
            .path_and_query
            .contains("fieldManager=virtrigaud-webhook"),
        "{}",
        patch.path_and_query
    );
    assert!(
        patch.path_and_query.contains("force=true"),
        "{}",
        patch.path_and_query
    );
    let webhooks = patch.body["webhooks"].as_array().unwrap();
    assert_eq!(webhooks.len(), 1);
    assert_eq!(webhooks[0]["name"], "vmmigrations.infra.virtrigaud.io");
    let client_config = &webhooks[0]["clientConfig"];
    assert_eq!(
        client_config["service"]["name"], "virtrigaud-webhook",
        "the service is kept"
    );
    assert_eq!(client_config["service"]["port"], 443);
    let bundle: ByteString = serde_json::from_value(client_config["caBundle"].clone()).unwrap();
    let bundle = String::from_utf8(bundle.0).unwrap();
    assert!(
        bundle.starts_with(authority.ca_pem().trim()),
        "the new CA first"
    );
    assert!(
        bundle.contains(OLD_CA.trim()),
        "the previous CA is kept for the rolling update"
    );
    // Only the caBundle's owner fields are applied: nothing else of the webhook.
    assert!(webhooks[0].get("sideEffects").is_none() && webhooks[0].get("rules").is_none());
}

#[tokio::test]
async fn self_signed_mode_refuses_a_configuration_without_webhooks() {
    let (client, _) = mock_client(|_| {
        (
            StatusCode::OK,
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "empty"}}),
        )
    });
    let authority = webhook::selfsigned::Authority::generate("test").unwrap();
    let error = webhook::selfsigned::patch_ca_bundle(client, "empty", authority.ca_pem())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("has no webhooks"), "{error}");
}

const CA_SECRET: &str = "/api/v1/namespaces/virtrigaud-system/secrets/virtrigaud-webhook-ca";

/// Answers `replies` in order, whatever the request (the test checks the requests afterwards).
fn scripted(replies: Vec<(StatusCode, Value)>) -> impl FnMut(&Call) -> (StatusCode, Value) {
    let mut replies = replies.into_iter();
    move |call| {
        replies
            .next()
            .unwrap_or_else(|| panic!("unexpected call {} {}", call.method, call.path))
    }
}

/// The CA Secret as installed (no data) or holding `authority`.
fn ca_secret(resource_version: &str, authority: Option<&webhook::selfsigned::Authority>) -> Value {
    let mut secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "virtrigaud-webhook-ca", "namespace": "virtrigaud-system",
                     "resourceVersion": resource_version},
    });
    if let Some(a) = authority {
        secret["data"] = json!({
            "ca.crt": serde_json::to_value(ByteString(a.ca_pem().as_bytes().to_vec())).unwrap(),
            "ca.key": serde_json::to_value(ByteString(a.key_pem().into_bytes())).unwrap(),
        });
    }
    secret
}

fn conflict(reason: &str) -> (StatusCode, Value) {
    (
        StatusCode::CONFLICT,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": 409,
               "message": "the object has been modified"}),
    )
}

/// The CA PEM a Secret write stored.
fn stored_ca(call: &Call) -> String {
    let cert: ByteString = serde_json::from_value(call.body["data"]["ca.crt"].clone()).unwrap();
    String::from_utf8(cert.0).unwrap()
}

async fn shared(client: kube::Client) -> webhook::selfsigned::Authority {
    let api = kube::Api::namespaced(client, "virtrigaud-system");
    webhook::selfsigned::shared_authority(&api, "virtrigaud-webhook-ca", "virtrigaud-webhook CA")
        .await
        .unwrap()
}

#[tokio::test]
async fn the_first_replica_stores_its_ca_into_the_installed_secret_conditionally() {
    let (client, calls) = mock_client(scripted(vec![
        (StatusCode::OK, ca_secret("41", None)),
        (StatusCode::OK, ca_secret("42", None)),
    ]));
    let authority = shared(client).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls
            .iter()
            .map(|c| (c.method.as_str(), c.path.as_str()))
            .collect::<Vec<_>>(),
        [("GET", CA_SECRET), ("PUT", CA_SECRET)]
    );
    // The update carries the resourceVersion read: a concurrent store makes it a conflict.
    assert_eq!(calls[1].body["metadata"]["resourceVersion"], "41");
    assert_eq!(stored_ca(&calls[1]), authority.ca_pem());
    let key: ByteString = serde_json::from_value(calls[1].body["data"]["ca.key"].clone()).unwrap();
    assert!(String::from_utf8(key.0).unwrap().contains("PRIVATE KEY"));
}

#[tokio::test]
async fn a_replica_that_loses_the_race_uses_the_winners_ca() {
    let winner = webhook::selfsigned::Authority::generate("virtrigaud-webhook CA").unwrap();
    let (client, calls) = mock_client(scripted(vec![
        (StatusCode::OK, ca_secret("41", None)),
        conflict("Conflict"),
        (StatusCode::OK, ca_secret("42", Some(&winner))),
    ]));
    let authority = shared(client).await;
    assert_eq!(authority.ca_pem(), winner.ca_pem());
    let methods: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.method.clone())
        .collect();
    assert_eq!(methods, ["GET", "PUT", "GET"]);
}

#[tokio::test]
async fn a_stored_ca_is_used_without_writing() {
    let stored = webhook::selfsigned::Authority::generate("virtrigaud-webhook CA").unwrap();
    let (client, calls) = mock_client(scripted(vec![(
        StatusCode::OK,
        ca_secret("7", Some(&stored)),
    )]));
    let authority = shared(client).await;
    assert_eq!(authority.ca_pem(), stored.ca_pem());
    assert_eq!(authority.key_pem(), stored.key_pem());
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_missing_ca_secret_is_created_and_a_create_race_is_lost_gracefully() {
    let (client, calls) = mock_client(scripted(vec![
        not_found("secrets \"virtrigaud-webhook-ca\""),
        (StatusCode::CREATED, ca_secret("1", None)),
    ]));
    let authority = shared(client).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls[1].method, "POST");
    assert_eq!(
        calls[1].path,
        "/api/v1/namespaces/virtrigaud-system/secrets"
    );
    assert_eq!(calls[1].body["metadata"]["name"], "virtrigaud-webhook-ca");
    assert_eq!(stored_ca(&calls[1]), authority.ca_pem());

    let winner = webhook::selfsigned::Authority::generate("virtrigaud-webhook CA").unwrap();
    let (client, _) = mock_client(scripted(vec![
        not_found("secrets \"virtrigaud-webhook-ca\""),
        conflict("AlreadyExists"),
        (StatusCode::OK, ca_secret("2", Some(&winner))),
    ]));
    assert_eq!(shared(client).await.ca_pem(), winner.ca_pem());
}
