//! The status writer against a mock Kubernetes API (tower-test): the exact server-side apply
//! request it sends.

use std::time::Duration;

use crd::{Phase, VMMigrationStatus};
use http::{Request, Response};
use http_body_util::BodyExt;
use kube::Api;
use kube::client::Body;
use runner::status::{KubeStatus, StatusWriter};

#[tokio::test]
async fn phase_change_is_one_server_side_apply_of_the_runner_fields() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let api = Api::namespaced(client, "default");
    let previous = VMMigrationStatus {
        attempt: Some(2),
        last_error: Some("storage unavailable".into()),
        ..VMMigrationStatus::default()
    };
    let mut writer = StatusWriter::new(Box::new(KubeStatus::new(api, "move-web")), &previous);

    let server = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.expect("one request");
        assert_eq!(request.method(), http::Method::PATCH);
        assert_eq!(
            request.uri().path(),
            "/apis/infra.virtrigaud.io/v1beta1/namespaces/default/vmmigrations/move-web/status"
        );
        let query = request.uri().query().unwrap_or_default().to_string();
        assert!(query.contains("fieldManager=virtrigaud-runner"), "{query}");
        assert!(query.contains("force=true"), "{query}");
        assert_eq!(
            request.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let mut body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let condition = &mut body["status"]["conditions"][0];
        let time = condition
            .as_object_mut()
            .unwrap()
            .remove("lastTransitionTime")
            .expect("conditions carry lastTransitionTime");
        assert!(time.as_str().unwrap().ends_with('Z'), "{time}");
        assert_eq!(
            body,
            serde_json::json!({
                "apiVersion": "infra.virtrigaud.io/v1beta1",
                "kind": "VMMigration",
                "status": {
                    "phase": "Validating",
                    "message": "Checking source, target and storage",
                    "conditions": [{
                        "type": "Validated",
                        "status": "Unknown",
                        "reason": "InProgress",
                        "message": "Checking source, target and storage",
                    }],
                },
            }),
            "only runner-owned fields: no attempt, lastError, startTime or Ready"
        );
        let reply = serde_json::json!({
            "apiVersion": "infra.virtrigaud.io/v1beta1",
            "kind": "VMMigration",
            "metadata": {"name": "move-web", "namespace": "default"},
            "spec": {
                "sourceName": "web",
                "targetProviderRef": {"name": "target"},
                "targetName": "web-migrated",
                "storage": {"type": "nfs", "endpoint": "nfs.local", "path": "/exports"}
            },
            "status": {"phase": "Validating"}
        });
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    });

    tokio::time::timeout(
        Duration::from_secs(10),
        writer.begin(Phase::Validating, "Checking source, target and storage"),
    )
    .await
    .expect("no hang")
    .expect("patch accepted");
    server.await.expect("the mock API saw the expected request");
}
