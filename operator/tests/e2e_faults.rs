//! Faults of the control plane against the e2e world (`e2e/scripts/world-up.sh`), each undone by
//! a guard whatever the test's outcome. Every test fails when the world is not up (run
//! `make e2e-up`).

mod common;

use std::time::Duration;

use common::*;
use crd::VMMigration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};

/// Scales the webhook back to what the install says, and waits for it, when dropped.
struct WebhookBack;

impl Drop for WebhookBack {
    fn drop(&mut self) {
        let dir = manifest_dir().join("../e2e/kustomize");
        let (ok, out) = kubectl(&["apply", "-k", dir.to_str().unwrap()]);
        assert!(ok, "restoring the install: {out}");
        let (ok, out) = kubectl(&[
            "-n",
            SYSTEM_NS,
            "rollout",
            "status",
            "deploy/virtrigaud-webhook",
            "--timeout=180s",
        ]);
        assert!(ok, "the webhook did not come back: {out}");
    }
}

/// With every webhook replica gone, a VMMigration is refused at admission (failurePolicy Fail)
/// with the apiserver naming the webhook, and nothing is created: no object, no Job.
#[tokio::test]
async fn webhook_down_refuses_the_apply_and_creates_nothing() {
    let path = kubeconfig();
    installed();
    let c = client(&path).await;
    let ns = "vrg-e2e-webhook-down";
    namespace(&c, ns, 1).await;

    let _back = WebhookBack;
    let (ok, out) = kubectl(&[
        "-n",
        SYSTEM_NS,
        "scale",
        "deploy/virtrigaud-webhook",
        "--replicas=0",
    ]);
    assert!(ok, "{out}");
    let pods: Api<Pod> = Api::namespaced(c.clone(), SYSTEM_NS);
    let lp = ListParams::default().labels("app.kubernetes.io/name=virtrigaud-webhook");
    // (pods that ended long ago, e.g. evicted ones, may linger as objects: they serve nothing)
    let serving = |p: &Pod| {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        !matches!(phase, Some("Succeeded" | "Failed"))
    };
    wait_for(
        "every webhook pod to be gone",
        Duration::from_secs(120),
        || async {
            let items = pods.list(&lp).await.unwrap().items;
            (!items.iter().any(serving)).then_some(())
        },
    )
    .await;

    let api: Api<VMMigration> = Api::namespaced(c.clone(), ns);
    let err = api
        .create(&PostParams::default(), &migration(ns, "m", "1m"))
        .await
        .expect_err("admitted with no webhook running")
        .to_string();
    assert!(
        err.contains("failed calling webhook") && err.contains("vmmigrations.infra.virtrigaud.io"),
        "the refusal names the webhook: {err}"
    );
    assert!(
        api.get_opt("m").await.unwrap().is_none(),
        "a refused migration exists"
    );
    let (_, jobs) = kubectl(&["-n", ns, "get", "jobs", "-o", "name"]);
    assert!(jobs.trim().is_empty(), "Jobs after a refused apply: {jobs}");
    let names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|m| m.name_any())
        .collect();
    assert!(names.is_empty(), "migrations in {ns}: {names:?}");
    let _ = kubectl(&["delete", "namespace", ns, "--wait=false"]);
}
