//! Shared fixtures: a test PKI (rcgen), the real router behind the real TLS listener on 127.0.0.1:0, a
//! reqwest client that trusts the test CA, and AdmissionReview builders.

#![allow(dead_code)] // Each test file uses a different part.

pub mod cases;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use webhook::admission::Admission;
use webhook::cluster::MemoryCluster;
use webhook::endpoints::{AddressPolicy, StaticResolver};
use webhook::server::Limits;
use webhook::tls::{self, CERT_FILE, KEY_FILE, ReloadingCert};
use webhook::{AppState, Metrics};

/// The name the test server's certificate is issued for; the client maps it to the listener.
pub const HOST: &str = "webhook.test";

/// A test certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// Issues a certificate for [`HOST`] and writes tls.crt/tls.key into `dir`, each written aside and
    /// renamed into place (as a Secret volume update does).
    pub fn write_serving_pair(&self, dir: &Path) {
        let params = CertificateParams::new(vec![HOST.to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        for (file, text) in [(KEY_FILE, key.serialize_pem()), (CERT_FILE, cert.pem())] {
            let tmp = dir.join(format!("{file}.new"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.join(file)).unwrap();
        }
    }
}

/// The webhook, running.
pub struct TestServer {
    pub addr: SocketAddr,
    pub ca: TestCa,
    pub cert_dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Options of a test server.
#[derive(Default)]
pub struct Options {
    pub allow_loopback: bool,
}

impl TestServer {
    pub async fn start(cluster: MemoryCluster, options: Options) -> Self {
        Self::start_with(state(cluster, options)).await
    }

    pub async fn start_with(state: AppState) -> Self {
        Self::start_limited(state, Limits::default()).await
    }

    /// [`TestServer::start_with`] holding clients to `limits`.
    pub async fn start_limited(state: AppState, limits: Limits) -> Self {
        let cert_dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("webhook test CA");
        ca.write_serving_pair(cert_dir.path());
        let tls =
            tls::server_config(Arc::new(ReloadingCert::new(cert_dir.path()).unwrap())).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = webhook::router(state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(webhook::server::serve_tls(
            listener,
            tls,
            app,
            limits,
            async move {
                let _ = stopped.await;
            },
        ));
        TestServer {
            addr,
            ca,
            cert_dir,
            stop: Some(stop),
        }
    }

    /// A client that trusts `ca_pem` only and reaches [`HOST`] at this server.
    pub fn client_trusting(&self, ca_pem: &str) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .resolve(HOST, self.addr)
            .https_only(true)
    }

    pub fn client(&self) -> reqwest::Client {
        self.client_trusting(&self.ca.pem).build().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{HOST}:{}{path}", self.addr.port())
    }

    /// Posts an AdmissionReview and returns its `response`.
    pub async fn review(&self, review: &Value) -> Value {
        let answer = self
            .client()
            .post(self.url("/validate"))
            .json(review)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["kind"], "AdmissionReview");
        assert_eq!(body["response"]["uid"], review["request"]["uid"]);
        body["response"].clone()
    }
}

/// The validator's state over `cluster` and [`resolver`].
pub fn state(cluster: MemoryCluster, options: Options) -> AppState {
    AppState {
        admission: Arc::new(Admission {
            cluster: Arc::new(cluster),
            resolver: Arc::new(resolver()),
            addresses: AddressPolicy {
                allow_loopback: options.allow_loopback,
            },
        }),
        metrics: Arc::new(Metrics::default()),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// What the test names resolve to; other names do not resolve (the examples' hosts among them).
pub fn resolver() -> StaticResolver {
    StaticResolver::default()
        .with("metadata-alias.test", &[ip("169.254.169.254")])
        .with("sneaky.test", &[ip("10.0.0.7"), ip("fe80::1")])
        .with("loopback-alias.test", &[ip("127.0.0.1")])
        .with("storage.test", &[ip("10.0.0.10")])
}

/// examples/prerequisites.yaml.
pub fn prerequisites() -> String {
    std::fs::read_to_string(manifest_dir().join("../examples/prerequisites.yaml")).unwrap()
}

/// Users of the test world.
pub const ADMIN: &str = "admin";
pub const ALICE: &str = "alice";
pub const MALLORY: &str = "mallory";

/// The examples' prerequisites plus a few objects of our own, and RBAC:
/// - `admin` (group system:masters) may do anything;
/// - `alice` may get Secrets and VirtualMachines in `default`, `kvm-vms`, `vmware-vms`, `proxmox-vms`,
///   and delete VirtualMachines in `default`;
/// - `mallory` may get VirtualMachines in `default` but no Secret.
pub fn world() -> MemoryCluster {
    let mut cluster = MemoryCluster::new();
    let loaded = cluster.load_yaml(&prerequisites()).unwrap();
    assert!(loaded >= 10, "providers and VMs of prerequisites.yaml");
    cluster.load_yaml(EXTRA_OBJECTS).unwrap();
    cluster.grant("system:masters", "*", "*", None, None);
    for ns in ["default", "kvm-vms", "vmware-vms", "proxmox-vms"] {
        cluster.grant(ALICE, "get", "secrets", Some(ns), None);
        cluster.grant(ALICE, "get", "virtualmachines", Some(ns), None);
    }
    cluster.grant(ALICE, "delete", "virtualmachines", Some("default"), None);
    cluster.grant(MALLORY, "get", "virtualmachines", Some("default"), None);
    cluster
}

/// A valid migration in `default`: my-libvirt-vm (libvirt-kvm) to vsphere-prod through S3.
pub fn migration() -> Value {
    json!({
        "apiVersion": "infra.virtrigaud.io/v1beta1",
        "kind": "VMMigration",
        "metadata": {"name": "move-it", "namespace": "default"},
        "spec": {
            "sourceName": "my-libvirt-vm",
            "targetProviderRef": {"name": "vsphere-prod", "namespace": "default"},
            "targetName": "moved-vm",
            "storage": {
                "type": "s3",
                "bucket": "vm-migrations",
                "endpoint": "storage.test:9000",
                "region": "us-east-1",
                "credentialsSecretRef": {"name": "s3-credentials"}
            },
            "cleanupPolicy": {"deleteIntermediate": true, "deleteSnapshot": true, "deleteSource": false},
            "retryPolicy": {"maxAttempts": 3, "backoffDuration": "5m", "maxBackoffDuration": "30m"}
        }
    })
}

/// An AdmissionReview (admission.k8s.io/v1) for a VMMigration.
pub fn review(operation: &str, user: &str, object: Option<&Value>, old: Option<&Value>) -> Value {
    let source = object.or(old).cloned().unwrap_or(Value::Null);
    let namespace = source["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let groups = if user == ADMIN {
        json!(["system:masters", "system:authenticated"])
    } else {
        json!(["system:authenticated"])
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{}", std::process::id()),
            "kind": {"group": "infra.virtrigaud.io", "version": "v1beta1", "kind": "VMMigration"},
            "resource": {"group": "infra.virtrigaud.io", "version": "v1beta1", "resource": "vmmigrations"},
            "name": source["metadata"]["name"].as_str().unwrap_or_default(),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": user, "uid": format!("{user}-uid"), "groups": groups},
            "object": object,
            "oldObject": old,
            "dryRun": false
        }
    })
}

/// Sets the value at a JSON pointer, creating objects along the way.
pub fn set(value: &mut Value, pointer: &str, new: Value) {
    let mut node = value;
    for key in pointer.trim_start_matches('/').split('/') {
        if node.is_null() {
            *node = json!({});
        }
        node = match node {
            Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
            other => &mut other[key],
        };
    }
    *node = new;
}

/// Removes the value at a JSON pointer.
pub fn remove(value: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    if let Some(Value::Object(map)) = value.pointer_mut(parent) {
        map.remove(key);
    }
}

/// The denial message of a response (empty when allowed).
pub fn message(response: &Value) -> String {
    response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Objects the rejection cases need besides examples/prerequisites.yaml: a VM that already holds a
/// target name, a VM whose Provider is gone, and a Provider in a locked namespace (its Secret is there).
pub const EXTRA_OBJECTS: &str = r#"
apiVersion: infra.virtrigaud.io/v1beta1
kind: VirtualMachine
metadata: {name: already-there, namespace: other-team}
spec: {providerRef: {name: vsphere-prod, namespace: default}}
---
apiVersion: infra.virtrigaud.io/v1beta1
kind: VirtualMachine
metadata: {name: orphan, namespace: default}
spec: {providerRef: {name: decommissioned}}
---
apiVersion: infra.virtrigaud.io/v1beta1
kind: Provider
metadata: {name: vsphere-locked, namespace: vault}
spec:
  type: vsphere
  endpoint: https://vcenter-locked.example.com
  credentialSecretRef: {name: locked-credentials}
"#;

/// This package's directory, as `cargo test` gives it when the test runs: the cargo target dir is
/// shared between checkouts (CI's clones reuse this machine's builds), so a test binary built in
/// another checkout must not read that checkout's files through a path fixed at compile time.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
