//! Faults of the control plane against the e2e world (`e2e/scripts/world-up.sh`), each undone by
//! a guard or by the system itself whatever the test's outcome, one at a time (each breaks what the
//! others need). Every test fails when the world is not up (run `make e2e-up`).

mod common;

use std::time::Duration;

use common::*;
use crd::VMMigration;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};

/// One fault at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _one = SERIAL.lock().await;
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

/// The operator killed while a retry waits out its backoff: the new operator keeps the retry time
/// the status holds (attempt 2 does not start early, none is skipped) and launches exactly one Job
/// for it.
#[tokio::test]
async fn operator_killed_during_a_retry_backoff_keeps_the_backoff_and_launches_one_job() {
    let _one = SERIAL.lock().await;
    let path = kubeconfig();
    installed();
    let c = client(&path).await;
    let ns = "vrg-e2e-backoff-restart";
    // attempt 1's runner is lost: attempt 2 is scheduled 40 s out
    let (silent, scheduled) = runner_lost_in_attempt_1(&c, ns, "40s").await;
    let api: Api<VMMigration> = Api::namespaced(c.clone(), ns);
    let next = scheduled.next_retry_time.clone().unwrap();

    // kill every operator replica in the backoff
    let jobs: Api<Job> = Api::namespaced(c.clone(), ns);
    restart_operator(&c, 0, || async {
        assert!(
            jobs.get_opt("m-a2").await.unwrap().is_none(),
            "attempt 2 started before its retry time {}",
            next.0
        );
    })
    .await;

    let job = wait_for("Job m-a2", Duration::from_secs(120), || async {
        jobs.get_opt("m-a2").await.unwrap()
    })
    .await;
    let created = job.metadata.creation_timestamp.clone().unwrap();
    assert!(
        created.0.as_second() >= next.0.as_second() - 1,
        "attempt 2 started at {} before its retry time {}",
        created.0,
        next.0
    );
    let names: Vec<String> = jobs
        .list(&by_migration("m"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    assert_eq!(names, ["m-a1", "m-a2"], "one Job per attempt");
    let status = api.get("m").await.unwrap().status.unwrap();
    assert_eq!(status.attempt, Some(2));

    let _ = Api::<Namespace>::all(c)
        .delete(ns, &DeleteParams::default())
        .await;
    silent.refuse();
}
