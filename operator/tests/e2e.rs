//! End-to-end tests of the operator against the real control plane of the e2e world
//! (`e2e/scripts/world-up.sh`): the operator and webhook installed with `kubectl apply -k
//! kustomize/default`, runner Jobs run by the real node (kubelet + containerd) from the images `make images` built.
//!
//! Every test fails when `e2e/.world/kubeconfig` does not exist (run `make e2e-up`).
//!
//! The runner never reaches a real hypervisor here: both Providers point at a TCP port of this test
//! that accepts connections and never answers (so a runner stays "running" as long as the test wants),
//! or refuses them once the test says so (so a cleanup run ends quickly).

mod common;

use std::time::Duration;

use common::*;
use crd::VMMigration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};

/// The node is a real kubelet and containerd: the installed pods run from the images with their
/// securityContext and limits enforced, `kubectl exec`, `logs` and `describe` go through the kubelet,
/// and Pod Security `restricted` refuses a privileged pod in a tenant namespace.
#[tokio::test]
async fn the_node_runs_the_images_confined_and_serves_exec_logs_and_describe() {
    kubeconfig();
    installed();
    let webhook = ["-n", SYSTEM_NS, "exec", "deploy/virtrigaud-webhook", "--"];
    let exec = |cmd: &[&str]| kubectl(&[&webhook[..], cmd].concat());
    let (ok, uid) = exec(&["id", "-u"]);
    assert!(
        ok && uid.trim() == "65532",
        "uid in the webhook container: {uid}"
    );
    let (ok, out) = exec(&["touch", "/probe"]);
    assert!(
        !ok && out.contains("Read-only file system"),
        "writing to / in the webhook container: {out}"
    );
    let (ok, limit) = exec(&["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]);
    assert!(
        ok && limit.trim() == (256u64 << 20).to_string(),
        "the webhook's memory limit (256Mi) in its cgroup: {limit}"
    );
    let (ok, image) = exec(&["cat", "/proc/1/cmdline"]);
    assert!(
        ok && image.starts_with("/usr/local/bin/webhook"),
        "the image's entrypoint runs as pid 1: {image}"
    );

    let (ok, logs) = kubectl(&[
        "-n",
        SYSTEM_NS,
        "logs",
        "deploy/virtrigaud-operator",
        "-c",
        "operator",
    ]);
    assert!(
        ok && logs.contains("runner image virtrigaud/runner:"),
        "operator logs: {logs}"
    );
    let (ok, describe) = kubectl(&[
        "-n",
        SYSTEM_NS,
        "describe",
        "pods",
        "-l",
        "app.kubernetes.io/name=virtrigaud-webhook",
    ]);
    assert!(
        ok && describe.contains("containerd://") && describe.contains("Started"),
        "describe: {describe}"
    );

    let ns = "vrg-e2e-restricted";
    let _ = kubectl(&[
        "delete",
        "namespace",
        ns,
        "--wait=true",
        "--ignore-not-found",
    ]);
    let (ok, out) = kubectl(&["create", "namespace", ns]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(&[
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(&[
        "-n",
        ns,
        "run",
        "privileged",
        "--image=virtrigaud/runner:any",
        "--restart=Never",
        "--overrides",
        r#"{"spec":{"containers":[{"name":"privileged","image":"virtrigaud/runner:any","securityContext":{"privileged":true}}]}}"#,
    ]);
    assert!(
        !ok && out.contains("violates PodSecurity \"restricted"),
        "a privileged pod in a restricted namespace: {out}"
    );
    let _ = kubectl(&["delete", "namespace", ns, "--wait=false"]);
}

#[tokio::test]
async fn kustomize_default_installs_a_ready_operator_and_an_answering_webhook() {
    let path = kubeconfig();
    installed();
    let c = client(&path).await;
    for name in ["virtrigaud-operator", "virtrigaud-webhook"] {
        let d = Api::<Deployment>::namespaced(c.clone(), SYSTEM_NS)
            .get(name)
            .await
            .unwrap();
        let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
        assert!(available >= 1, "{name} has no available replica");
    }
    let (ok, bundle) = kubectl(&[
        "get",
        "validatingwebhookconfiguration",
        "virtrigaud-webhook",
        "-o",
        "jsonpath={.webhooks[0].clientConfig.caBundle}",
    ]);
    assert!(ok && bundle.len() > 100, "caBundle not set: {bundle}");

    // The webhook answers: a migration naming a VM that does not exist is denied by it (the CRD's
    // own rules cannot know that), a valid one is admitted (dry run, nothing is stored).
    let silent = Silent::start();
    let ns = "vrg-e2e-webhook";
    namespace(&c, ns, silent.port).await;
    let api: Api<VMMigration> = Api::namespaced(c.clone(), ns);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut bad = migration(ns, "bad", "5m");
    bad.spec.source_name = "no-such-vm".into();
    let err = api.create(&dry, &bad).await.unwrap_err().to_string();
    assert!(err.contains("does not exist"), "unexpected denial: {err}");
    api.create(&dry, &migration(ns, "good", "5m"))
        .await
        .expect("a valid migration is admitted");
    let _ = Api::<Namespace>::all(c)
        .delete(ns, &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn one_job_per_attempt_survives_an_operator_restart_and_the_runner_is_confined() {
    let path = kubeconfig();
    installed();
    let c = client(&path).await;
    let silent = Silent::start();
    let ns = "vrg-e2e-one-job";
    namespace(&c, ns, silent.port).await;
    let api: Api<VMMigration> = Api::namespaced(c.clone(), ns);
    api.create(&PostParams::default(), &migration(ns, "m", "1h"))
        .await
        .unwrap();

    let jobs: Api<Job> = Api::namespaced(c.clone(), ns);
    let job = wait_for("Job m-a1", Duration::from_secs(60), || async {
        jobs.get_opt("m-a1").await.unwrap()
    })
    .await;
    let m = api.get("m").await.unwrap();
    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("VMMigration", m.uid().unwrap().as_str(), Some(true))
    );
    let status = m.status.clone().unwrap();
    assert_eq!(status.attempt, Some(1));
    assert!(status.start_time.is_some());
    running_runner_pod(&c, ns, "m", 1).await;

    // The runner's ServiceAccount may read its migration and patch its status, nothing more.
    let sa = format!("system:serviceaccount:{ns}:m-runner");
    for (args, expected) in [
        (vec!["get", "vmmigrations.infra.virtrigaud.io/m"], "yes"),
        (
            vec![
                "patch",
                "vmmigrations.infra.virtrigaud.io/m",
                "--subresource=status",
            ],
            "yes",
        ),
        (
            vec![
                "patch",
                "vmmigrations.infra.virtrigaud.io/other",
                "--subresource=status",
            ],
            "no",
        ),
        (vec!["patch", "vmmigrations.infra.virtrigaud.io/m"], "no"),
        (vec!["get", "secrets/unrelated"], "no"),
        (vec!["get", "secrets/s3-creds"], "no"),
        (vec!["list", "secrets"], "no"),
    ] {
        let mut full = vec!["auth", "can-i", "-n", ns, "--as", &sa];
        full.extend(args.iter().copied());
        let (_, out) = kubectl(&full);
        assert_eq!(
            out.lines().next().unwrap_or("").trim(),
            expected,
            "can-i {args:?}: {out}"
        );
    }

    // Restart the operator mid-migration: the new process finds the Job and creates no other.
    restart_operator(&c, 30, || async {}).await;
    let names: Vec<String> = jobs
        .list(&by_migration("m"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    assert_eq!(names, ["m-a1"], "exactly one Job");
    assert_eq!(api.get("m").await.unwrap().status.unwrap().attempt, Some(1));

    let _ = Api::<Namespace>::all(c)
        .delete(ns, &DeleteParams::default())
        .await;
    silent.refuse();
}

#[tokio::test]
async fn killing_the_runner_pod_yields_attempt_2_after_the_backoff() {
    let path = kubeconfig();
    installed();
    let c = client(&path).await;
    let ns = "vrg-e2e-retry";
    let (silent, status) = runner_lost_in_attempt_1(&c, ns, "5s").await;
    assert!(status.last_error.is_some(), "lastError recorded");
    let jobs: Api<Job> = Api::namespaced(c.clone(), ns);
    let job = wait_for("Job m-a2", Duration::from_secs(60), || async {
        jobs.get_opt("m-a2").await.unwrap()
    })
    .await;
    if let (Some(next), Some(created)) = (&status.next_retry_time, &job.metadata.creation_timestamp)
    {
        assert!(
            created.0.as_second() >= next.0.as_second() - 1,
            "attempt 2 started at {} before its retry time {}",
            created.0,
            next.0
        );
    }
    assert!(
        events(&c, ns, "m")
            .await
            .iter()
            .any(|r| r == "RetryScheduled")
    );

    let _ = Api::<Namespace>::all(c)
        .delete(ns, &DeleteParams::default())
        .await;
    silent.refuse();
}

#[tokio::test]
async fn deleting_a_running_migration_stops_it_runs_cleanup_and_removes_its_objects() {
    let path = kubeconfig();
    installed();
    let c = client(&path).await;
    let silent = Silent::start();
    let ns = "vrg-e2e-delete";
    namespace(&c, ns, silent.port).await;
    let api: Api<VMMigration> = Api::namespaced(c.clone(), ns);
    api.create(&PostParams::default(), &migration(ns, "m", "1h"))
        .await
        .unwrap();
    running_runner_pod(&c, ns, "m", 1).await;

    api.delete("m", &DeleteParams::default()).await.unwrap();
    let jobs: Api<Job> = Api::namespaced(c.clone(), ns);
    wait_for("the cleanup Job", Duration::from_secs(90), || async {
        jobs.get_opt("m-cleanup").await.unwrap().map(|_| ())
    })
    .await;
    // The cleanup runner may now fail fast: nothing to clean on a hypervisor that never answered.
    silent.refuse();
    wait_for(
        "the VMMigration to be gone",
        Duration::from_secs(180),
        || async { api.get_opt("m").await.unwrap().is_none().then_some(()) },
    )
    .await;

    assert!(
        jobs.list(&by_migration("m"))
            .await
            .unwrap()
            .items
            .is_empty(),
        "Jobs left"
    );
    let secrets: Api<Secret> = Api::namespaced(c.clone(), ns);
    for s in ["m-runner-a1", "m-cleanup"] {
        assert!(
            secrets.get_opt(s).await.unwrap().is_none(),
            "Secret {s} left"
        );
    }
    assert!(
        Api::<ServiceAccount>::namespaced(c.clone(), ns)
            .get_opt("m-runner")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<Role>::namespaced(c.clone(), ns)
            .get_opt("m-runner")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<RoleBinding>::namespaced(c.clone(), ns)
            .get_opt("m-runner")
            .await
            .unwrap()
            .is_none()
    );
    let reasons = events(&c, ns, "m").await;
    for r in ["StoppingRunner", "CleanupStarted"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} Event in {reasons:?}"
        );
    }
    let _ = Api::<Namespace>::all(c)
        .delete(ns, &DeleteParams::default())
        .await;
}
