//! End-to-end tests of runner start problems against the e2e world (`e2e/scripts/world-up.sh`):
//! a runner pod that cannot start is on the VMMigration's Ready condition within seconds of its
//! Job's creation, not after the Job's 24 h deadline.
//!
//! Every test fails when `e2e/.world/kubeconfig` does not exist (run `make e2e-up`). The tests run
//! one at a time: one of them changes the operator's Deployment (and always puts it back).

mod common;

use std::time::Duration;

use common::*;
use crd::{Condition, VMMigration};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, ResourceQuota};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// How soon after its Job's creation a start problem must be on the migration.
const REPORTED_WITHIN: Duration = Duration::from_secs(30);
/// A runner image no registry the node reaches has (the node has none).
const UNPULLABLE: &str = "virtrigaud/runner:does-not-exist";

/// One test at a time: the unpullable-image test reconfigures the operator.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The migration's Ready condition.
fn ready(m: &VMMigration) -> Option<Condition> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .cloned()
}

/// Waits for Job `name` (the runner Job of attempt 1); returns it.
async fn job(c: &Client, ns: &str, name: &str) -> Job {
    let jobs: Api<Job> = Api::namespaced(c.clone(), ns);
    wait_for(
        &format!("Job {ns}/{name}"),
        Duration::from_secs(60),
        || async { jobs.get_opt(name).await.unwrap() },
    )
    .await
}

/// Waits until migration `name`'s Ready condition has `reason`, at most [`REPORTED_WITHIN`] after
/// the creation of `job`; returns the condition and the time from the Job's creation.
async fn reported(c: &Client, ns: &str, name: &str, job: &Job, reason: &str) -> (Condition, f64) {
    let created = job.metadata.creation_timestamp.as_ref().unwrap().0;
    // creationTimestamp is cut to the second: counting from it is counting from no later.
    let left = REPORTED_WITHIN.saturating_sub(
        Duration::try_from(Timestamp::now().duration_since(created)).unwrap_or_default(),
    );
    let api: Api<VMMigration> = Api::namespaced(c.clone(), ns);
    let condition = wait_for(
        &format!("reason {reason} on VMMigration {ns}/{name} within {REPORTED_WITHIN:?} of its Job's creation"),
        left,
        || async {
            let m = api.get(name).await.unwrap();
            ready(&m).filter(|r| r.reason.as_deref() == Some(reason))
        },
    )
    .await;
    let elapsed = Timestamp::now().duration_since(created).as_secs_f64();
    eprintln!(
        "{reason} on {ns}/{name} {elapsed:.1}s after Job {} was created",
        job.name_any()
    );
    let m = api.get(name).await.unwrap();
    let status = m.status.unwrap();
    assert_eq!(
        status.phase,
        Some(crd::Phase::Pending),
        "the migration waits in its phase"
    );
    assert_eq!(
        status.message, condition.message,
        "status.message is the condition's"
    );
    (condition, elapsed)
}

/// The Events with `reason` about migration `name`.
async fn events_with(c: &Client, ns: &str, name: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(c.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// Exactly one Warning Event `reason` about `name`, published once (no series of repeats).
async fn one_warning(c: &Client, ns: &str, name: &str, reason: &str) {
    let found = wait_for(
        &format!("a {reason} Event about {ns}/{name}"),
        Duration::from_secs(10),
        || async {
            let found = events_with(c, ns, name, reason).await;
            (!found.is_empty()).then_some(found)
        },
    )
    .await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].type_.as_deref(), Some("Warning"));
    assert!(
        found[0].series.is_none(),
        "the Event was published again: {:?}",
        found[0].series
    );
}

async fn delete_namespace(c: &Client, ns: &str) {
    let _ = Api::<Namespace>::all(c.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn a_quota_refusing_the_runner_pod_is_on_the_vmmigration_within_30s() {
    let path = kubeconfig();
    let _serial = SERIAL.lock().await;
    installed();
    let c = client(&path).await;
    let silent = Silent::start();
    let ns = "vrg-e2e-start-quota";
    namespace(&c, ns, silent.port).await;
    let quotas: Api<ResourceQuota> = Api::namespaced(c.clone(), ns);
    let quota = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"},
        "spec": {"hard": {"pods": "0"}}
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    // Until the quota controller has counted the namespace, admission answers "status unknown".
    wait_for(
        "the quota to be counted",
        Duration::from_secs(30),
        || async {
            let q = quotas.get("no-pods").await.unwrap();
            q.status
                .and_then(|s| s.hard)
                .filter(|h| h.contains_key("pods"))
        },
    )
    .await;

    let api: Api<VMMigration> = Api::namespaced(c.clone(), ns);
    api.create(&PostParams::default(), &migration(ns, "m", "1h"))
        .await
        .unwrap();
    let job = job(&c, ns, "m-a1").await;
    let (ready, _) = reported(&c, ns, "m", &job, "RunnerQuotaExceeded").await;
    let message = ready.message.unwrap_or_default();
    assert!(
        message.contains("is forbidden")
            && message.contains("quota")
            && message.contains("no-pods"),
        "the admission's own message: {message}"
    );
    one_warning(&c, ns, "m", "RunnerQuotaExceeded").await;
    assert!(
        Api::<Pod>::namespaced(c.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no pod could be created"
    );

    delete_namespace(&c, ns).await;
    silent.refuse();
}

/// Runs kubectl, failing the test when it fails.
fn kubectl_ok(args: &[&str]) -> String {
    let (ok, out) = kubectl(args);
    assert!(ok, "kubectl {args:?}: {out}");
    out
}

/// The operator Deployment's args.
fn operator_args() -> String {
    kubectl_ok(&[
        "-n",
        SYSTEM_NS,
        "get",
        "deployment/virtrigaud-operator",
        "-o",
        "jsonpath={.spec.template.spec.containers[?(@.name==\"operator\")].args}",
    ])
}

/// Puts the operator Deployment back as installed (`kubectl apply -k e2e/kustomize`), whatever
/// the test did to it and however it ended.
struct Reinstall;

impl Drop for Reinstall {
    fn drop(&mut self) {
        let dir = repo().join("e2e/kustomize");
        let steps: [&[&str]; 2] = [
            &["apply", "-k", dir.to_str().unwrap()],
            &[
                "-n",
                SYSTEM_NS,
                "rollout",
                "status",
                "deployment/virtrigaud-operator",
                "--timeout=180s",
            ],
        ];
        for args in steps {
            let (ok, out) = kubectl(args);
            if !ok {
                eprintln!("restoring the operator: kubectl {args:?}: {out}");
            }
        }
        let (_, args) = kubectl(&[
            "-n",
            SYSTEM_NS,
            "get",
            "deployment/virtrigaud-operator",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].args}",
        ]);
        if args.contains(UNPULLABLE) {
            eprintln!(
                "the operator still has --runner-image={UNPULLABLE} after the re-apply: {args}"
            );
        }
    }
}

/// Waits until every live operator pod (not ended, e.g. evicted, and not terminating) is one whose
/// args `want`, and one of them holds the Lease: from then on, migrations are reconciled by an
/// operator with those args.
async fn operator_leading(c: &Client, want: impl Fn(&[String]) -> bool) {
    let pods: Api<Pod> = Api::namespaced(c.clone(), SYSTEM_NS);
    let leases: Api<Lease> = Api::namespaced(c.clone(), SYSTEM_NS);
    let lp = ListParams::default().labels("app.kubernetes.io/name=virtrigaud-operator");
    wait_for(
        "the reconfigured operator to lead",
        Duration::from_secs(180),
        || async {
            let ended = |p: &Pod| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                matches!(phase, Some("Failed" | "Succeeded"))
            };
            let pods: Vec<Pod> = pods
                .list(&lp)
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|p| !ended(p))
                .collect();
            let current = |p: &Pod| {
                p.metadata.deletion_timestamp.is_none()
                    && p.spec.as_ref().is_some_and(|s| {
                        s.containers.iter().any(|c| {
                            c.name == "operator" && want(c.args.as_deref().unwrap_or_default())
                        })
                    })
            };
            if pods.is_empty() || !pods.iter().all(current) {
                return None;
            }
            let holder = leases
                .get_opt("virtrigaud-operator")
                .await
                .unwrap()?
                .spec?
                .holder_identity?;
            pods.iter().any(|p| p.name_any() == holder).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_runner_image_is_unpullable_the_reason_is_on_the_vmmigration_within_30s() {
    let path = kubeconfig();
    let _serial = SERIAL.lock().await;
    installed();
    let c = client(&path).await;
    let flag = format!("--runner-image={UNPULLABLE}");
    let reinstall = Reinstall;
    let patch =
        json!([{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": flag}]);
    assert!(
        !operator_args().contains(&flag),
        "the operator already runs with {flag}"
    );
    kubectl_ok(&[
        "-n",
        SYSTEM_NS,
        "patch",
        "deployment/virtrigaud-operator",
        "--type=json",
        "-p",
        &patch.to_string(),
    ]);
    operator_leading(&c, |args| args.contains(&flag)).await;

    let silent = Silent::start();
    let ns = "vrg-e2e-start-image";
    namespace(&c, ns, silent.port).await;
    let api: Api<VMMigration> = Api::namespaced(c.clone(), ns);
    api.create(&PostParams::default(), &migration(ns, "m", "1h"))
        .await
        .unwrap();
    let job = job(&c, ns, "m-a1").await;
    let image = job
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone();
    assert_eq!(
        image.as_deref(),
        Some(UNPULLABLE),
        "the flag names the runner image"
    );
    let (ready, _) = reported(&c, ns, "m", &job, "RunnerImagePullFailed").await;
    let message = ready.message.unwrap_or_default();
    assert!(
        message.contains(UNPULLABLE),
        "the kubelet's message names the image: {message}"
    );

    // Back to the installed operator at once (other tests share the world). The new process goes
    // on watching the stuck Job and, the problem being on the migration already, adds no Event.
    drop(reinstall);
    assert!(!operator_args().contains(&flag), "the flag is gone");
    operator_leading(&c, |args| !args.iter().any(|a| a.contains(UNPULLABLE))).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    one_warning(&c, ns, "m", "RunnerImagePullFailed").await;

    delete_namespace(&c, ns).await;
    silent.refuse();
}
