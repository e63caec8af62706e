//! The e2e world's Kubernetes control plane for tests that run migrations the way users do: the
//! operator and webhook installed with `kubectl apply -k e2e/kustomize`, objects applied with
//! kubectl (so the webhook admits them), runner Jobs run by the world's node, status read back.
//!
//! [`Cluster::objects`] writes the Providers and Secrets of the guide's examples for the world's
//! endpoints (libvirt, vcsim, the Proxmox simulator, S3, WebDAV) into a namespace; [`adapt`] turns a
//! guide example into one for that namespace, changing only names and endpoints.

#![allow(dead_code)] // each test file uses a different part

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crd::{Phase, VMMigration};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::DeleteParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::Value;

const SYSTEM_NS: &str = "virtrigaud-system";

fn repo() -> PathBuf {
    manifest_dir().join("..")
}

pub fn world_dir() -> PathBuf {
    std::env::var_os("VRG_WORLD")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("e2e/.world"))
}

/// The running world's control plane and endpoints.
pub struct Cluster {
    pub client: Client,
    pub env: HashMap<String, String>,
    kubeconfig: PathBuf,
    kubectl: String,
}

impl Cluster {
    /// Reads `e2e/.world/env`; fails the test when the world is not up.
    pub async fn load() -> Cluster {
        let file = world_dir().join("env");
        assert!(
            file.is_file(),
            "{} is missing: these tests run migrations on the e2e world; run `make e2e-up`",
            file.display()
        );
        let env: HashMap<String, String> = runner::world_env::source(&file, "");
        let kubeconfig = PathBuf::from(&env["KUBECONFIG"]);
        let kubectl = env
            .get("KUBECTL")
            .cloned()
            .unwrap_or_else(|| "kubectl".into());
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig).expect("kubeconfig reads"),
            &KubeConfigOptions::default(),
        )
        .await
        .expect("kubeconfig is valid");
        let cluster = Cluster {
            client: Client::try_from(config).expect("client"),
            env,
            kubeconfig,
            kubectl,
        };
        cluster.installed();
        cluster
    }

    /// A variable of the world's env file.
    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the world's env"))
    }

    /// Runs kubectl; returns (success, stdout + stderr).
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(text) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `kubectl apply -f -`: through the webhook, as a user would.
    pub fn apply(&self, yaml: &str) {
        let (ok, out) = self.kubectl(&["apply", "-f", "-"], Some(yaml));
        assert!(ok, "kubectl apply failed:\n{out}\n--- applied:\n{yaml}");
    }

    /// Installs operator and webhook (`e2e/kustomize`), once per test binary.
    fn installed(&self) {
        static DONE: OnceLock<Result<(), String>> = OnceLock::new();
        let result = DONE.get_or_init(|| {
            let dir = repo().join("e2e/kustomize");
            let (ok, out) = self.kubectl(&["apply", "-k", dir.to_str().unwrap()], None);
            if !ok {
                return Err(format!("kubectl apply -k e2e/kustomize failed:\n{out}"));
            }
            for deploy in ["virtrigaud-operator", "virtrigaud-webhook"] {
                let target = format!("deployment/{deploy}");
                let args = [
                    "-n",
                    SYSTEM_NS,
                    "rollout",
                    "status",
                    &target,
                    "--timeout=180s",
                ];
                let (ok, out) = self.kubectl(&args, None);
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

    /// Deletes namespace `name` if it exists (with what is in it) and creates it afresh.
    pub async fn fresh_namespace(&self, name: &str) {
        let nss: Api<Namespace> = Api::all(self.client.clone());
        let _ = nss.delete(name, &DeleteParams::default()).await;
        let deadline = Instant::now() + Duration::from_secs(180);
        while nss.get_opt(name).await.unwrap().is_some() {
            assert!(
                Instant::now() < deadline,
                "namespace {name} does not go away"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Runner pods must pass Pod Security `restricted`, as in a tenant namespace of a hardened cluster.
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{pod-security.kubernetes.io/enforce: restricted}}}}\n"
        ));
    }

    /// Waits until VMMigration `ns/name` is Ready or Failed (terminally: no retry pending) and the
    /// operator's Ready condition says so (the runner writes the phase, the operator the condition).
    pub async fn wait_done(&self, ns: &str, name: &str, timeout: Duration) -> VMMigration {
        let api: Api<VMMigration> = Api::namespaced(self.client.clone(), ns);
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let m = api.get(name).await.unwrap();
            let status = m.status.clone().unwrap_or_default();
            let line = format!(
                "{:?} {}% attempt {:?}: {}",
                status.phase,
                status.progress.unwrap_or(0),
                status.attempt,
                status.message.clone().unwrap_or_default()
            );
            if line != last {
                println!("  {ns}/{name}: {line}");
                last = line;
            }
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
            let reason = ready.and_then(|c| c.reason.as_deref());
            let settled = match status.phase {
                Some(Phase::Ready) => ready.is_some_and(|c| c.status == crd::ConditionStatus::True),
                Some(Phase::Failed) => !matches!(reason, None | Some("Pending" | "RetryScheduled")),
                _ => false,
            };
            if settled {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{ns}/{name} not done after {timeout:?}: {status:?}\n--- runner log:\n{}",
                self.runner_logs(ns, name)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until migration `ns/name` reports `phase` (failing if it ends first).
    pub async fn wait_phase(&self, ns: &str, name: &str, phase: Phase) {
        let api: Api<VMMigration> = Api::namespaced(self.client.clone(), ns);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            assert!(
                Instant::now() < deadline,
                "{ns}/{name} never reached {phase:?}"
            );
            let status = api.get(name).await.unwrap().status.unwrap_or_default();
            assert!(
                !matches!(status.phase, Some(Phase::Ready | Phase::Failed)),
                "{ns}/{name} ended before {phase:?}: {status:?}"
            );
            if status.phase == Some(phase) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The names of the runner Jobs of migration `ns/name`.
    pub async fn jobs(&self, ns: &str, name: &str) -> Vec<String> {
        let api: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(self.client.clone(), ns);
        let selector = format!("virtrigaud.io/migration={name}");
        api.list(&kube::api::ListParams::default().labels(&selector))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|j| j.metadata.name)
            .collect()
    }

    /// The logs of every runner pod of migration `ns/name` (`kubectl logs`).
    pub fn runner_logs(&self, ns: &str, name: &str) -> String {
        let selector = format!("virtrigaud.io/migration={name}");
        let args = ["-n", ns, "logs", "-l", &selector, "--tail=-1", "--prefix"];
        self.kubectl(&args, None).1
    }

    /// The Providers (`libvirt-kvm`, `kvm-host1`, `vcenter-prod`, `vsphere-prod`,
    /// `proxmox-cluster`) and credential Secrets of the guide's examples, for the world's
    /// endpoints, in namespace `ns`.
    pub fn objects(&self, ns: &str) -> String {
        let v = |k: &str| self.var(k).to_string();
        let file = |k: &str| std::fs::read_to_string(self.var(k)).unwrap();
        let mut docs = vec![
            secret(
                ns,
                "libvirt-credentials",
                &[
                    ("username", v("VRG_LIBVIRT_USER")),
                    ("password", v("VRG_LIBVIRT_PASSWORD")),
                ],
            ),
            secret(
                ns,
                "vsphere-credentials",
                &[
                    ("username", v("VRG_VCSIM_USER")),
                    ("password", v("VRG_VCSIM_PASSWORD")),
                    ("ca.crt", file("VRG_VCSIM_CA")),
                ],
            ),
            secret(
                ns,
                "proxmox-credentials",
                &[
                    ("token_id", v("VRG_PVE_TOKEN_ID")),
                    ("token_secret", v("VRG_PVE_TOKEN_SECRET")),
                    ("ssh-privatekey", file("VRG_PVE_SSH_KEY")),
                    ("known_hosts", file("VRG_PVE_SSH_KNOWN_HOSTS")),
                    ("ca.crt", file("VRG_PVE_CA")),
                ],
            ),
            secret(
                ns,
                "s3-creds",
                &[
                    ("accessKey", v("VRG_S3_ACCESS_KEY")),
                    ("secretKey", v("VRG_S3_SECRET_KEY")),
                    ("endpoint", v("VRG_S3_ENDPOINT")),
                ],
            ),
            secret(ns, "fileserver-token", &[("token", v("VRG_HTTP_TOKEN"))]),
        ];
        let libvirt = serde_json::json!({"type": "libvirt", "endpoint": v("VRG_LIBVIRT_URI"),
            "credentialSecretRef": {"name": "libvirt-credentials"}, "defaults": {"datastore": v("VRG_LIBVIRT_POOL")}});
        let vsphere = serde_json::json!({"type": "vsphere", "endpoint": v("VRG_VCSIM_URL"),
            "credentialSecretRef": {"name": "vsphere-credentials"},
            "defaults": {"datastore": "LocalDS_0", "network": "VM Network"}});
        let proxmox = serde_json::json!({"type": "proxmox", "endpoint": v("VRG_PVE_URL"),
            "credentialSecretRef": {"name": "proxmox-credentials"},
            "defaults": {"datastore": "local-lvm", "cluster": v("VRG_PVE_NODE"), "network": "vmbr0"},
            "ssh": {"host": v("VRG_PVE_SSH_HOST"), "port": v("VRG_PVE_SSH_PORT").parse::<u16>().unwrap(), "user": v("VRG_PVE_SSH_USER")}});
        for (name, spec) in [
            ("libvirt-kvm", &libvirt),
            ("kvm-host1", &libvirt),
            ("vcenter-prod", &vsphere),
            ("vsphere-prod", &vsphere),
            ("proxmox-cluster", &proxmox),
        ] {
            docs.push(object("Provider", ns, name, spec.clone()));
        }
        docs.join("---\n")
    }
}

/// A VirtualMachine `name` on Provider `provider`, both in `ns`.
pub fn virtual_machine(ns: &str, name: &str, provider: &str) -> String {
    object(
        "VirtualMachine",
        ns,
        name,
        serde_json::json!({"providerRef": {"name": provider}}),
    )
}

fn object(kind: &str, ns: &str, name: &str, spec: Value) -> String {
    serde_yaml::to_string(&serde_json::json!({
        "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": kind,
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))
    .unwrap()
}

fn secret(ns: &str, name: &str, data: &[(&str, String)]) -> String {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
        .collect();
    serde_yaml::to_string(&serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns}, "stringData": data
    }))
    .unwrap()
}

/// The guide example `examples/<file>` for namespace `ns`: every namespace in it becomes `ns`, and
/// each `(path, value)` of `edits` (JSON pointers such as `/spec/sourceName`) is set; nothing else
/// changes.
pub fn adapt(file: &str, ns: &str, edits: &[(&str, Value)]) -> String {
    let text = std::fs::read_to_string(repo().join("examples").join(file)).unwrap();
    let mut doc: Value = serde_yaml::from_str(&text).unwrap();
    doc["metadata"]["namespace"] = Value::String(ns.into());
    let spec = &mut doc["spec"];
    for key in ["sourceNamespace"] {
        if spec.get(key).is_some() {
            spec[key] = Value::String(ns.into());
        }
    }
    for r in [
        "/spec/targetProviderRef",
        "/spec/storage/credentialsSecretRef",
    ] {
        if let Some(obj) = doc.pointer_mut(r).and_then(Value::as_object_mut)
            && obj.contains_key("namespace")
        {
            obj.insert("namespace".into(), Value::String(ns.into()));
        }
    }
    for (path, value) in edits {
        let (parent, key) = path.rsplit_once('/').unwrap();
        let target = doc
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("{file} has no {parent}"));
        target.insert(key.to_string(), value.clone());
    }
    serde_yaml::to_string(&doc).unwrap()
}

/// Sum of the staged bytes of a finished migration's disks.
pub fn bytes_moved(m: &VMMigration) -> u64 {
    m.status
        .as_ref()
        .map(|s| s.disks.iter().filter_map(|d| d.bytes_total).sum::<i64>() as u64)
        .unwrap_or(0)
}

/// This package's directory, as `cargo test` gives it when the test runs: the cargo target dir is
/// shared between checkouts (CI's clones reuse this machine's builds), so a test binary built in
/// another checkout must not read that checkout's files through a path fixed at compile time.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
