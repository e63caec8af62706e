//! End-to-end tests of the operator against the real control plane of the e2e world
//! (`e2e/scripts/world-up.sh`): the operator and webhook installed with `kubectl apply -k
//! kustomize/default`, runner Jobs run by the real node (kubelet + containerd) from the images `make images` built.
//!
//! Every test fails when `e2e/.world/kubeconfig` does not exist (run `make e2e-up`).
//!
//! The runner never reaches a real hypervisor here: both Providers point at a TCP port of this test
//! that accepts connections and never answers (so a runner stays "running" as long as the test wants),
//! or refuses them once the test says so (so a cleanup run ends quickly).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crd::VMMigration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const SYSTEM_NS: &str = "virtrigaud-system";

fn repo() -> PathBuf {
    manifest_dir().join("..")
}

fn world() -> PathBuf {
    std::env::var_os("E2E_WORLD")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("e2e/.world"))
}

/// The world's kubeconfig; fails the test when the world is not up.
fn kubeconfig() -> PathBuf {
    let path = world().join("kubeconfig");
    assert!(
        path.exists(),
        "{} does not exist: start the e2e world (make e2e-up) to run this test",
        path.display()
    );
    path
}

/// The address pods reach the host at: the node network's gateway (`VRG_GATEWAY_IP` in the world's
/// endpoints.env); fails the test when the world is not up.
fn gateway() -> String {
    let env = world().join("endpoints.env");
    std::fs::read_to_string(&env)
        .ok()
        .and_then(|env| {
            env.lines()
                .find_map(|l| l.strip_prefix("export VRG_GATEWAY_IP=").map(str::to_owned))
        })
        .unwrap_or_else(|| {
            panic!(
                "no VRG_GATEWAY_IP in {}: start the e2e world (make e2e-up)",
                env.display()
            )
        })
}

/// kubectl: $KUBECTL, else the one the world's control-plane.env names, else `kubectl`.
fn kubectl_path() -> String {
    if let Ok(k) = std::env::var("KUBECTL") {
        return k;
    }
    std::fs::read_to_string(world().join("control-plane.env"))
        .ok()
        .and_then(|env| {
            env.lines()
                .find_map(|l| l.strip_prefix("export KUBECTL=").map(str::to_owned))
        })
        .unwrap_or_else(|| "kubectl".into())
}

/// Runs kubectl with the world's kubeconfig; returns (success, stdout + stderr).
fn kubectl(args: &[&str]) -> (bool, String) {
    let out = Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(world().join("kubeconfig"))
        .args(args)
        .output()
        .expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn client(path: &Path) -> Client {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(path).expect("kubeconfig reads"),
        &KubeConfigOptions::default(),
    )
    .await
    .expect("kubeconfig is valid");
    Client::try_from(config).expect("client")
}

/// `kubectl apply -k e2e/kustomize` (kustomize/default with the images `make images` built) and wait
/// for both Deployments, once per test binary.
fn installed() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        let dir = repo().join("e2e/kustomize");
        let (ok, out) = kubectl(&["apply", "-k", dir.to_str().unwrap()]);
        if !ok {
            return Err(format!("kubectl apply -k e2e/kustomize failed:\n{out}"));
        }
        for deploy in ["virtrigaud-operator", "virtrigaud-webhook"] {
            let (ok, out) = kubectl(&[
                "-n",
                SYSTEM_NS,
                "rollout",
                "status",
                &format!("deployment/{deploy}"),
                "--timeout=180s",
            ]);
            if !ok {
                return Err(format!("{deploy} did not become ready:\n{out}"));
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Polls `f` every 250 ms until it yields a value or `timeout` passes.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A TCP port on the gateway address that holds every connection open without answering, until
/// [`Silent::refuse`].
struct Silent {
    port: u16,
    hold: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Silent {
    fn start() -> Self {
        let listener = TcpListener::bind((gateway(), 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(AtomicBool::new(true));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (h, list) = (hold.clone(), held.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if h.load(Ordering::SeqCst) {
                    list.lock().unwrap().push(stream);
                } else {
                    let mut s = stream;
                    let _ = s.read(&mut [0u8; 1]);
                    drop(s);
                }
            }
        });
        Silent { port, hold, held }
    }

    /// From now on, close every connection at once.
    fn refuse(&self) {
        self.hold.store(false, Ordering::SeqCst);
        self.held.lock().unwrap().clear();
    }
}

/// A namespace with a source VM on Provider `src`, a target Provider `dst` (both libvirt, both at the
/// silent port) and credential Secrets.
async fn namespace(c: &Client, name: &str, port: u16) {
    let nss: Api<Namespace> = Api::all(c.clone());
    let _ = nss.delete(name, &DeleteParams::default()).await;
    wait_for(
        "the old namespace to go",
        Duration::from_secs(120),
        || async { nss.get_opt(name).await.unwrap().is_none().then_some(()) },
    )
    .await;
    let create = |v: serde_json::Value| async move {
        let obj: kube::api::DynamicObject = serde_json::from_value(v.clone()).unwrap();
        let gvk = kube::api::GroupVersionKind::try_from(obj.types.as_ref().unwrap()).unwrap();
        let (ar, _) = kube::discovery::pinned_kind(c, &gvk).await.unwrap();
        let api: Api<kube::api::DynamicObject> = match obj.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(c.clone(), ns, &ar),
            None => Api::all_with(c.clone(), &ar),
        };
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("creating {v}: {e}"));
    };
    // Runner pods must pass Pod Security `restricted`, as in a tenant namespace of a hardened cluster.
    create(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name,
        "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}),
    )
    .await;
    let endpoint = format!("qemu+tcp://{}:{port}/system", gateway());
    for v in [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "libvirt-creds", "namespace": name},
               "stringData": {"username": "vrg", "password": "not-a-real-password"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": name},
               "stringData": {"accessKey": "AKID", "secretKey": "SECRET"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "unrelated", "namespace": name},
               "stringData": {"token": "must-stay-private"}}),
        json!({"apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "Provider",
               "metadata": {"name": "src", "namespace": name},
               "spec": {"type": "libvirt", "endpoint": endpoint, "credentialSecretRef": {"name": "libvirt-creds"}}}),
        json!({"apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "Provider",
               "metadata": {"name": "dst", "namespace": name},
               "spec": {"type": "libvirt", "endpoint": endpoint, "credentialSecretRef": {"name": "libvirt-creds"}}}),
        json!({"apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VirtualMachine",
               "metadata": {"name": "vm1", "namespace": name}, "spec": {"providerRef": {"name": "src"}}}),
    ] {
        create(v).await;
    }
}

fn migration(ns: &str, name: &str, backoff: &str) -> VMMigration {
    serde_json::from_value(json!({
        "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VMMigration",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "sourceName": "vm1", "targetProviderRef": {"name": "dst"}, "targetName": "vm1-migrated",
            "storage": {"type": "s3", "bucket": "vm-migrations", "region": "us-east-1",
                        "credentialsSecretRef": {"name": "s3-creds"}},
            "retryPolicy": {"maxAttempts": 3, "backoffDuration": backoff, "maxBackoffDuration": "1h"}
        }
    }))
    .unwrap()
}

fn by_migration(name: &str) -> ListParams {
    ListParams::default().labels(&format!("virtrigaud.io/migration={name}"))
}

async fn running_runner_pod(c: &Client, ns: &str, name: &str, attempt: i32) -> Pod {
    let pods: Api<Pod> = Api::namespaced(c.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "virtrigaud.io/migration={name},virtrigaud.io/attempt={attempt},virtrigaud.io/component=runner"
    ));
    wait_for("the runner pod to run", Duration::from_secs(90), || async {
        pods.list(&lp)
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await
}

async fn events(c: &Client, ns: &str, name: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(c.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

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
    let pods: Api<Pod> = Api::namespaced(c.clone(), SYSTEM_NS);
    let lp = ListParams::default().labels("app.kubernetes.io/name=virtrigaud-operator");
    let old: Vec<String> = pods
        .list(&lp)
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    for name in &old {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
    }
    installed_again(&c, &old).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
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

/// Waits until a new operator pod (none of `old`) is Ready.
async fn installed_again(c: &Client, old: &[String]) {
    let pods: Api<Pod> = Api::namespaced(c.clone(), SYSTEM_NS);
    let lp = ListParams::default().labels("app.kubernetes.io/name=virtrigaud-operator");
    wait_for(
        "a new operator pod to be ready",
        Duration::from_secs(120),
        || async {
            pods.list(&lp).await.unwrap().items.into_iter().find(|p| {
                !old.contains(&p.name_any())
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
            })
        },
    )
    .await;
}

#[tokio::test]
async fn killing_the_runner_pod_yields_attempt_2_after_the_backoff() {
    let path = kubeconfig();
    installed();
    let c = client(&path).await;
    let silent = Silent::start();
    let ns = "vrg-e2e-retry";
    namespace(&c, ns, silent.port).await;
    let api: Api<VMMigration> = Api::namespaced(c.clone(), ns);
    api.create(&PostParams::default(), &migration(ns, "m", "5s"))
        .await
        .unwrap();

    let pod = running_runner_pod(&c, ns, "m", 1).await;
    Api::<Pod>::namespaced(c.clone(), ns)
        .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
        .await
        .unwrap();

    let status = wait_for(
        "attempt 2 to be scheduled",
        Duration::from_secs(90),
        || async {
            let s = api.get("m").await.unwrap().status?;
            (s.attempt == Some(2)).then_some(s)
        },
    )
    .await;
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

/// This package's directory, as `cargo test` gives it when the test runs: the cargo target dir is
/// shared between checkouts (CI's clones reuse this machine's builds), so a test binary built in
/// another checkout must not read that checkout's files through a path fixed at compile time.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
