//! Helpers shared by the end-to-end tests against the e2e world (`e2e/scripts/world-up.sh`): where
//! the world is, kubectl and a client with its kubeconfig, the install (`kubectl apply -k
//! e2e/kustomize`), a tenant namespace with Providers, a VirtualMachine and Secrets, and polling.
//!
//! Every helper that needs the world fails the test when it is not up (run `make e2e-up`).

// Each test binary uses some of these.
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crd::VMMigration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

pub const SYSTEM_NS: &str = "virtrigaud-system";

pub fn repo() -> PathBuf {
    manifest_dir().join("..")
}

pub fn world() -> PathBuf {
    std::env::var_os("E2E_WORLD")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("e2e/.world"))
}

/// The world's kubeconfig; fails the test when the world is not up.
pub fn kubeconfig() -> PathBuf {
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
pub fn gateway() -> String {
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
pub fn kubectl_path() -> String {
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
pub fn kubectl(args: &[&str]) -> (bool, String) {
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

pub async fn client(path: &Path) -> Client {
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
pub fn installed() {
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
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
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
pub struct Silent {
    pub port: u16,
    hold: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Silent {
    pub fn start() -> Self {
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
    pub fn refuse(&self) {
        self.hold.store(false, Ordering::SeqCst);
        self.held.lock().unwrap().clear();
    }
}

/// A namespace with a source VM on Provider `src`, a target Provider `dst` (both libvirt, both at the
/// silent port) and credential Secrets.
pub async fn namespace(c: &Client, name: &str, port: u16) {
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

pub fn migration(ns: &str, name: &str, backoff: &str) -> VMMigration {
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

pub fn by_migration(name: &str) -> ListParams {
    ListParams::default().labels(&format!("virtrigaud.io/migration={name}"))
}

pub async fn running_runner_pod(c: &Client, ns: &str, name: &str, attempt: i32) -> Pod {
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

pub async fn events(c: &Client, ns: &str, name: &str) -> Vec<String> {
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

/// Waits until a new operator pod (none of `old`) is Ready.
pub async fn installed_again(c: &Client, old: &[String]) -> Pod {
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
    .await
}

/// Migration `m` in a fresh namespace `ns` whose runner can never finish (its libvirt endpoint is a
/// [`Silent`] port), with `backoff` between attempts: attempt 1's runner pod is deleted at once
/// (grace 0) and this waits until attempt 2 is scheduled. Returns the endpoint (refuse it at the end)
/// and that status.
pub async fn runner_lost_in_attempt_1(
    c: &Client,
    ns: &str,
    backoff: &str,
) -> (Silent, crd::VMMigrationStatus) {
    let silent = Silent::start();
    namespace(c, ns, silent.port).await;
    let api: Api<VMMigration> = Api::namespaced(c.clone(), ns);
    api.create(&PostParams::default(), &migration(ns, "m", backoff))
        .await
        .unwrap();
    let pod = running_runner_pod(c, ns, "m", 1).await;
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
    (silent, status)
}

/// Deletes every operator pod (`grace`: their grace period, 0 to kill), runs `meanwhile` while
/// none serves, then waits for a replacement that is Ready and has made its first pass over every
/// migration.
pub async fn restart_operator<F, Fut>(c: &Client, grace: u32, meanwhile: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
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
        pods.delete(name, &DeleteParams::default().grace_period(grace))
            .await
            .unwrap();
    }
    meanwhile().await;
    let new = installed_again(c, &old).await;
    first_pass_done(c, &new).await;
}

/// Waits until operator pod `pod` has led and run at least as many reconciliations as there are
/// VMMigrations in the cluster (its `/metrics` counter): its first pass over every migration, which
/// is when it would launch a Job it found missing, is over.
pub async fn first_pass_done(c: &Client, pod: &Pod) {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a ready pod has an IP");
    let migrations = Api::<VMMigration>::all(c.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    let url = format!("http://{ip}:8080/metrics");
    wait_for(
        "the new operator's first pass over every migration",
        Duration::from_secs(120),
        || async {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "2", &url])
                .output()
                .ok()?;
            let done: f64 = String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("virtrigaud_operator_reconciliations_total "))?
                .trim()
                .parse()
                .ok()?;
            (done as usize >= migrations).then_some(())
        },
    )
    .await;
}

/// This package's directory, as `cargo test` gives it when the test runs: the cargo target dir is
/// shared between checkouts (CI's clones reuse this machine's builds), so a test binary built in
/// another checkout must not read that checkout's files through a path fixed at compile time.
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
