//! The process node against the real control plane of the e2e world.
//!
//! Needs `e2e/.world/kubeconfig` (e2e/scripts/control-plane-up.sh) and root; each test fails
//! otherwise. Every test starts its own node (own name, kubelet port and pod CIDR, admin
//! credentials) from the freshly built `e2e-node` binary and pins its pods to it, so the tests run in
//! parallel and next to the world's regular node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde::de::DeserializeOwned;
use serde_json::json;

/// The taint of test nodes; test pods tolerate it.
const TEST_TAINT: &str = "e2e.virtrigaud.io/test-node";

fn world() -> PathBuf {
    manifest_dir().join(".world")
}

/// The kubectl of the control plane's scripts.
fn kubectl() -> PathBuf {
    if let Ok(env) = std::fs::read_to_string(world().join("control-plane.env"))
        && let Some(path) = env.lines().find_map(|l| l.strip_prefix("export KUBECTL="))
    {
        return PathBuf::from(path.trim());
    }
    let cache = std::env::var("VRG_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/virtrigaud")
        });
    cache.join("k8s-v1.36.3/bin/kubectl")
}

/// The bind shim library, built on first use next to this test's binary.
fn bind_shim() -> PathBuf {
    static SHIM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SHIM.get_or_init(|| {
        // <target>/debug/deps/node-<hash> -> <target>/debug
        let exe = std::env::current_exe().unwrap();
        let target_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "vrg-bindshim"])
            .env("CARGO_TARGET_DIR", target_dir.parent().unwrap())
            .status()
            .expect("cargo build -p vrg-bindshim");
        assert!(status.success(), "building vrg-bindshim failed");
        let so = target_dir.join("libvrg_bindshim.so");
        assert!(so.is_file(), "{} missing", so.display());
        so
    })
    .clone()
}

/// The world's kubeconfig; fails the test when the world is not there to test against.
fn world_ready(test: &str) -> PathBuf {
    let kubeconfig = world().join("kubeconfig");
    assert!(
        kubeconfig.exists(),
        "{test}: {} is absent (run make e2e-up)",
        kubeconfig.display()
    );
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "{test}: the process node needs root (mount namespaces, pod routes)"
    );
    kubeconfig
}

async fn client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn obj<T: DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("object")
}

async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A node process of its own plus a namespace, both removed on drop.
struct TestNode {
    name: String,
    namespace: String,
    client: Client,
    kubeconfig: PathBuf,
    child: Child,
    args: NodeProcessArgs,
    world: tempfile::TempDir,
}

/// How a test node process is started (again, for restarts).
struct NodeProcessArgs {
    kubeconfig: PathBuf,
    name: String,
    cidr: String,
    port: u16,
    world: PathBuf,
}

impl NodeProcessArgs {
    fn spawn(&self) -> Child {
        let pki = world().join("pki");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.world.join("node.log"))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_e2e-node"))
            .args(["--kubeconfig".as_ref(), self.kubeconfig.as_os_str()])
            .args([
                "--node-name",
                &self.name,
                "--pod-cidr",
                &self.cidr,
                "--restart-backoff",
                "1s",
            ])
            // only the tests' pods (which tolerate it) may land on a test node
            .args([
                "--register-with-taint",
                &format!("{TEST_TAINT}={}:NoSchedule", self.name),
            ])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--world".as_ref(), self.world.as_os_str()])
            .args([
                "--tls-cert".as_ref(),
                pki.join("node-e2e-node-serving.crt").as_os_str(),
            ])
            .args([
                "--tls-key".as_ref(),
                pki.join("node-e2e-node-serving.key").as_os_str(),
            ])
            .args(["--client-ca".as_ref(), pki.join("ca.crt").as_os_str()])
            .args([
                "--image",
                "busybox-like=/bin/sh",
                "--image",
                "python-like=/usr/bin/python3",
            ])
            .args(["--bind-shim".as_ref(), bind_shim().as_os_str()])
            .env("RUST_LOG", "info,e2e=debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start e2e-node")
    }
}

impl TestNode {
    async fn start(kubeconfig: PathBuf, tag: &str, cidr: &str) -> TestNode {
        let client = client(&kubeconfig).await;
        let suffix = format!("{}-{}", tag, std::process::id());
        let name = format!("e2e-test-{suffix}");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let world = tempfile::tempdir().unwrap();
        let args = NodeProcessArgs {
            kubeconfig: kubeconfig.clone(),
            name: name.clone(),
            cidr: cidr.to_string(),
            port,
            world: world.path().to_path_buf(),
        };
        let child = args.spawn();
        let namespace = format!("node-test-{suffix}");
        let node = TestNode {
            name,
            namespace,
            client,
            kubeconfig,
            child,
            args,
            world,
        };
        let nodes: Api<Node> = Api::all(node.client.clone());
        let node_name = node.name.clone();
        eventually("the test node to be Ready", Duration::from_secs(60), || {
            let nodes = nodes.clone();
            let name = node_name.clone();
            async move {
                let n = nodes.get_opt(&name).await.ok()??;
                let ready = n
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                ready.then_some(())
            }
        })
        .await;
        let ns: Api<Namespace> = Api::all(node.client.clone());
        ns.create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": node.namespace}})),
        )
        .await
        .expect("create namespace");
        let sas: Api<ServiceAccount> = Api::namespaced(node.client.clone(), &node.namespace);
        eventually(
            "the default ServiceAccount",
            Duration::from_secs(60),
            || {
                let sas = sas.clone();
                async move { sas.get_opt("default").await.ok()? }
            },
        )
        .await;
        node
    }

    fn node_log(&self) -> String {
        std::fs::read_to_string(self.world.path().join("node.log")).unwrap_or_default()
    }

    /// A pod spec pinned to this node.
    fn pod_spec(&self, restart: &str, containers: serde_json::Value) -> serde_json::Value {
        json!({
            "restartPolicy": restart,
            "nodeSelector": {"kubernetes.io/hostname": self.name},
            "tolerations": [{"key": TEST_TAINT, "operator": "Equal", "value": self.name, "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 3,
            "containers": containers,
        })
    }

    async fn wait_pod(&self, name: &str, what: &str, pred: impl Fn(&Pod) -> bool) -> Pod {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(p)) = pods.get_opt(name).await
                && pred(&p)
            {
                return p;
            }
            if Instant::now() > deadline {
                let p = pods.get_opt(name).await.ok().flatten();
                panic!(
                    "timed out waiting for pod {name}: {what}\npod status: {:#?}\nnode log:\n{}",
                    p.and_then(|p| p.status),
                    self.node_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(kubectl())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["-n", &self.namespace])
            .args(args)
            .output()
            .expect("run kubectl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl TestNode {
    /// SIGTERM to the node process, SIGKILL after 15 s.
    fn stop_process(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the node process and starts a new one with the same name and world.
    fn restart_process(&mut self) {
        self.stop_process();
        self.child = self.args.spawn();
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop_process();
        for args in [
            vec![
                "delete",
                "namespace",
                &self.namespace,
                "--wait=false",
                "--ignore-not-found",
            ],
            vec!["delete", "node", &self.name, "--ignore-not-found"],
        ] {
            let _ = Command::new(kubectl())
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args)
                .output();
        }
    }
}

fn terminated(
    p: &Pod,
    container: &str,
) -> Option<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)?
        .state
        .as_ref()?
        .terminated
        .clone()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn node_runs_a_job_to_completion_and_serves_its_logs() {
    let kubeconfig = world_ready("node_runs_a_job_to_completion_and_serves_its_logs");
    let node = TestNode::start(kubeconfig, "job", "10.251.0.0/16").await;
    let jobs: Api<Job> = Api::namespaced(node.client.clone(), &node.namespace);
    let spec = node.pod_spec(
        "Never",
        json!([{
            "name": "main",
            "image": "busybox-like:1.0",
            // stdout and stderr are separate pipes: their relative order is not guaranteed
            "args": ["-c", "echo to-stderr >&2; sleep 0.3; echo hello from $(POD_NAME) at $POD_IP; echo last-line"],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        }]),
    );
    let job: Job = obj(json!({
        "metadata": {"name": "hello"},
        "spec": {"backoffLimit": 0, "template": {"spec": spec}},
    }));
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");

    let done = eventually("the Job to complete", Duration::from_secs(90), || {
        let jobs = jobs.clone();
        async move {
            let j = jobs.get("hello").await.ok()?;
            let complete = j
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True");
            complete.then_some(j)
        }
    })
    .await;
    assert_eq!(
        done.status.unwrap().succeeded,
        Some(1),
        "node log:\n{}",
        node.node_log()
    );

    let pods: Api<Pod> = Api::namespaced(node.client.clone(), &node.namespace);
    let pod = pods
        .list(&kube::api::ListParams::default().labels("job-name=hello"))
        .await
        .unwrap()
        .items
        .pop()
        .expect("the job's pod");
    let pod_name = pod.metadata.name.clone().unwrap();
    let status = pod.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let pod_ip = status.pod_ip.clone().expect("pod IP");
    assert!(
        pod_ip.starts_with("10.251."),
        "pod IP {pod_ip} from the node's CIDR"
    );
    let t = terminated(&pod, "main").expect("terminated state");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));

    // through the real API server and the node's TLS kubelet API
    let (ok, logs) = node.kubectl(&["logs", &pod_name]);
    assert!(
        ok,
        "kubectl logs failed: {logs}\nnode log:\n{}",
        node.node_log()
    );
    assert!(
        logs.contains(&format!("hello from {pod_name} at {pod_ip}")),
        "{logs}"
    );
    assert!(logs.contains("to-stderr"), "{logs}");
    let (ok, tail) = node.kubectl(&["logs", &pod_name, "--tail=1"]);
    assert!(ok && tail.trim() == "last-line", "{tail}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_containers_report_exit_code_and_termination_message() {
    let kubeconfig = world_ready("failing_containers_report_exit_code_and_termination_message");
    let node = TestNode::start(kubeconfig, "fail", "10.252.0.0/16").await;
    let pods: Api<Pod> = Api::namespaced(node.client.clone(), &node.namespace);
    let spec = node.pod_spec(
        "Never",
        json!([
            {"name": "explicit", "image": "busybox-like", "command": ["sh", "-c", "printf 'disk full' > /dev/termination-log; exit 3"]},
            {"name": "custom-path", "image": "busybox-like", "terminationMessagePath": "/tmp/e2e-why",
             "command": ["sh", "-c", "echo custom > /tmp/e2e-why; exit 5"]},
            {"name": "fallback", "image": "busybox-like", "terminationMessagePolicy": "FallbackToLogsOnError",
             "command": ["sh", "-c", "echo first; echo last words; exit 4"]},
        ]),
    );
    pods.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "fails"}, "spec": spec})),
    )
    .await
    .expect("create pod");
    let pod = node
        .wait_pod("fails", "phase Failed", |p| phase(p) == "Failed")
        .await;
    let explicit = terminated(&pod, "explicit").unwrap();
    assert_eq!(explicit.exit_code, 3);
    assert_eq!(explicit.reason.as_deref(), Some("Error"));
    assert_eq!(explicit.message.as_deref(), Some("disk full"));
    let custom = terminated(&pod, "custom-path").unwrap();
    assert_eq!(
        (custom.exit_code, custom.message.as_deref()),
        (5, Some("custom\n"))
    );
    let fallback = terminated(&pod, "fallback").unwrap();
    assert_eq!(
        (fallback.exit_code, fallback.message.as_deref()),
        (4, Some("first\nlast words\n"))
    );
    // the bind mount of the message file was private to the container
    assert!(
        !Path::new("/tmp/e2e-why").exists()
            || std::fs::read_to_string("/tmp/e2e-why").unwrap() != "custom\n"
    );

    // an unknown image waits with a pull-like error, as on a real node
    let spec = node.pod_spec(
        "Never",
        json!([{"name": "c", "image": "example.com/nowhere:1"}]),
    );
    pods.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "no-image"}, "spec": spec})),
    )
    .await
    .unwrap();
    let pod = node
        .wait_pod("no-image", "a waiting reason", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c[0].state.as_ref()?.waiting.as_ref()?.reason.clone())
                .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
        })
        .await;
    let message = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap()
        .message
        .unwrap();
    assert!(
        message.contains("--image example.com/nowhere="),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_volume_and_projected_service_account_token_are_where_programs_expect_them() {
    let kubeconfig = world_ready("secret_volume_and_projected_service_account_token");
    let node = TestNode::start(kubeconfig, "vol", "10.253.0.0/16").await;
    let secrets: Api<Secret> = Api::namespaced(node.client.clone(), &node.namespace);
    let secret: Secret = obj(json!({
        "metadata": {"name": "creds"},
        "stringData": {"password": "s3cr3t", "user": "admin"},
    }));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        "cat /etc/creds/password; echo; ls /etc/creds | tr '\\n' ' '; echo; cat {sa}/namespace; echo; \
         echo scratch > /scratch/x && cat /scratch/x; \
         curl -s --cacert {sa}/ca.crt -H \"Authorization: Bearer $(cat {sa}/token)\" \
           https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/$NS/pods/$HOSTNAME \
           -o /dev/null -w 'api:%{{http_code}}\\n'"
    );
    let mut spec = node.pod_spec(
        "Never",
        json!([{
            "name": "reader",
            "image": "busybox-like",
            "command": ["sh", "-c", script],
            "env": [{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
            "volumeMounts": [
                {"name": "creds", "mountPath": "/etc/creds", "readOnly": true},
                {"name": "scratch", "mountPath": "/scratch"},
            ],
        }]),
    );
    spec["volumes"] = json!([
        {"name": "creds", "secret": {"secretName": "creds"}},
        {"name": "scratch", "emptyDir": {}},
    ]);
    // the default ServiceAccount may read nothing: give it `get pods` to see the token really works
    let (ok, out) = node.kubectl(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get",
        "--resource=pods",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = node.kubectl(&[
        "create",
        "rolebinding",
        "pod-reader",
        "--role=pod-reader",
        &format!("--serviceaccount={}:default", node.namespace),
    ]);
    assert!(ok, "{out}");
    let pods: Api<Pod> = Api::namespaced(node.client.clone(), &node.namespace);
    pods.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "reader"}, "spec": spec})),
    )
    .await
    .unwrap();
    let pod = node
        .wait_pod("reader", "a terminal phase", |p| {
            matches!(phase(p), "Succeeded" | "Failed")
        })
        .await;
    let (_, logs) = node.kubectl(&["logs", "reader"]);
    assert_eq!(
        phase(&pod),
        "Succeeded",
        "logs: {logs}\nnode log:\n{}",
        node.node_log()
    );
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines[0], "s3cr3t", "{logs}");
    assert_eq!(lines[1].trim(), "password user", "{logs}");
    assert_eq!(lines[2], node.namespace, "{logs}");
    assert_eq!(lines[3], "scratch", "{logs}");
    assert_eq!(
        lines[4], "api:200",
        "the projected token authenticates: {logs}"
    );
    // nothing of the pod's mounts is visible on the host
    assert!(!Path::new("/etc/creds/password").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_running_pod_kills_its_process_and_removes_the_pod() {
    let kubeconfig = world_ready("deleting_a_running_pod_kills_its_process");
    let node = TestNode::start(kubeconfig, "del", "10.254.0.0/16").await;
    let pods: Api<Pod> = Api::namespaced(node.client.clone(), &node.namespace);
    let spec = node.pod_spec(
        "Always",
        json!([{"name": "sleeper", "image": "busybox-like", "command": ["sh", "-c", "echo started; exec sleep 1000"]}]),
    );
    pods.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "sleeper"}, "spec": spec})),
    )
    .await
    .unwrap();
    let pod = node
        .wait_pod("sleeper", "Running and Ready", |p| {
            phase(p) == "Running"
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .await;
    let uid = pod.metadata.uid.clone().unwrap();
    let pid_file = node
        .world
        .path()
        .join("pods")
        .join(format!("{}_sleeper_{uid}", node.namespace))
        .join("containers/sleeper/pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "sleep");

    let started = Instant::now();
    pods.delete("sleeper", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the pod object to be gone", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move { pods.get_opt("sleeper").await.ok()?.is_none().then_some(()) }
    })
    .await;
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} still alive"
    );
    // sleep dies on SIGTERM: no need to wait for the 3 s grace period's SIGKILL
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        !pid_file.parent().unwrap().exists(),
        "pod directory removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ready_deployment_pod_becomes_a_service_endpoint() {
    let kubeconfig = world_ready("a_ready_deployment_pod_becomes_a_service_endpoint");
    let node = TestNode::start(kubeconfig, "svc", "10.250.0.0/16").await;
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    let mut spec = node.pod_spec(
        "Always",
        json!([{
            "name": "web",
            "image": "python-like:3",
            // binds 0.0.0.0:8080: the bind shim moves it to the pod IP, so other pods may use 8080 too
            "args": ["-m", "http.server", "8080", "--bind", "0.0.0.0"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        }]),
    );
    spec["terminationGracePeriodSeconds"] = json!(1);
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(node.client.clone(), &node.namespace);
    deployments
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "web"},
                "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels}, "spec": spec}},
            })),
        )
        .await
        .unwrap();
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(node.client.clone(), &node.namespace);
    services
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "web"},
                        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]}})),
        )
        .await
        .unwrap();
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(node.client.clone(), &node.namespace);
    let address = eventually(
        "a ready endpoint for Service web",
        Duration::from_secs(90),
        || {
            let slices = slices.clone();
            async move {
                let list = slices
                    .list(
                        &kube::api::ListParams::default().labels("kubernetes.io/service-name=web"),
                    )
                    .await
                    .ok()?;
                list.items
                    .iter()
                    .flat_map(|s| s.endpoints.iter().flatten())
                    .find_map(|e| {
                        let ready = e.conditions.as_ref()?.ready?;
                        ready.then(|| e.addresses[0].clone())
                    })
            }
        },
    )
    .await;
    assert!(address.starts_with("10.250."), "{address}");
    // the endpoint answers on the pod IP only ...
    let body = reqwest::get(format!("http://{address}:8080/"))
        .await
        .unwrap();
    assert!(body.status().is_success());
    let ss = Command::new("ss")
        .args(["-Hltnp", "sport = :8080"])
        .output()
        .unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout);
    let python: Vec<&str> = ss.lines().filter(|l| l.contains("python3")).collect();
    assert!(
        !python.is_empty()
            && python
                .iter()
                .all(|l| l.contains(&format!("{address}:8080"))),
        "{ss}"
    );
    // ... and the API server reaches it through the Service's endpoints (as it calls webhooks)
    let (ok, listing) = node.kubectl(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/{}/services/web:80/proxy/",
            node.namespace
        ),
    ]);
    assert!(ok && listing.contains("Directory listing"), "{listing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_follow_the_policy_and_logs_follow_and_keep_the_previous_run() {
    let kubeconfig = world_ready("restarts_follow_the_policy_and_logs_follow");
    let node = TestNode::start(kubeconfig, "restart", "10.249.0.0/16").await;
    let pods: Api<Pod> = Api::namespaced(node.client.clone(), &node.namespace);

    let spec = node.pod_spec(
        "Always",
        json!([{"name": "crash", "image": "busybox-like", "command": ["sh", "-c", "echo run at $(date +%s%N); exit 7"]}]),
    );
    pods.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "crash"}, "spec": spec})),
    )
    .await
    .unwrap();
    let pod = node
        .wait_pod("crash", "two restarts", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|c| c[0].restart_count >= 2)
        })
        .await;
    assert_eq!(
        phase(&pod),
        "Running",
        "restartPolicy Always keeps the pod Running"
    );
    let c = &pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    let last = c
        .last_state
        .as_ref()
        .and_then(|l| l.terminated.as_ref())
        .expect("last state");
    assert_eq!(last.exit_code, 7);
    let (ok, previous) = node.kubectl(&["logs", "crash", "--previous"]);
    assert!(ok && previous.starts_with("run at "), "{previous}");

    let spec = node.pod_spec(
        "Never",
        json!([{"name": "ticker", "image": "busybox-like",
                "command": ["sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 1; done"]}]),
    );
    pods.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "ticker"}, "spec": spec})),
    )
    .await
    .unwrap();
    node.wait_pod("ticker", "Running", |p| phase(p) == "Running")
        .await;
    let started = Instant::now();
    // returns when the container ends, with every line
    let (ok, followed) = node.kubectl(&["logs", "-f", "ticker"]);
    assert!(ok, "{followed}");
    assert_eq!(followed, "tick 1\ntick 2\ntick 3\n");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "follow streamed while the container ran"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_restarts_lost_containers_or_fails_their_pods() {
    let kubeconfig = world_ready("a_restarted_node_restarts_lost_containers");
    let mut node = TestNode::start(kubeconfig, "reboot", "10.248.0.0/16").await;
    let pods: Api<Pod> = Api::namespaced(node.client.clone(), &node.namespace);
    for (name, policy) in [("always", "Always"), ("never", "Never")] {
        let spec = node.pod_spec(
            policy,
            json!([{"name": "c", "image": "busybox-like", "command": ["sh", "-c", "echo up; exec sleep 1000"]}]),
        );
        pods.create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": name}, "spec": spec})),
        )
        .await
        .unwrap();
    }
    for name in ["always", "never"] {
        node.wait_pod(name, "Running", |p| phase(p) == "Running")
            .await;
    }
    let (pods_dir, ns) = (node.world.path().join("pods"), node.namespace.clone());
    let pid_of = move |name: &str, uid: &str| -> i32 {
        let f = pods_dir.join(format!("{ns}_{name}_{uid}/containers/c/pid"));
        std::fs::read_to_string(f)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let uid = |p: &Pod| p.metadata.uid.clone().unwrap();
    let always_uid = uid(&pods.get("always").await.unwrap());
    let never_uid = uid(&pods.get("never").await.unwrap());
    let (always_pid, never_pid) = (pid_of("always", &always_uid), pid_of("never", &never_uid));

    node.restart_process();
    // the stopping node ended its containers
    assert!(!Path::new(&format!("/proc/{always_pid}")).exists());
    assert!(!Path::new(&format!("/proc/{never_pid}")).exists());

    let always = node
        .wait_pod("always", "running again after one restart", |p| {
            phase(p) == "Running"
                && p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|c| {
                        c[0].restart_count == 1
                            && c[0].state.as_ref().is_some_and(|s| s.running.is_some())
                    })
        })
        .await;
    let last = always.status.unwrap().container_statuses.unwrap()[0]
        .last_state
        .clone()
        .unwrap();
    assert_eq!(
        last.terminated.unwrap().reason.as_deref(),
        Some("ContainerStatusUnknown")
    );
    assert_ne!(pid_of("always", &always_uid), always_pid);

    let never = node
        .wait_pod("never", "Failed", |p| phase(p) == "Failed")
        .await;
    let t = terminated(&never, "c").expect("terminated");
    assert_eq!(
        (t.exit_code, t.reason.as_deref()),
        (137, Some("ContainerStatusUnknown"))
    );
}

/// This package's directory, as `cargo test` gives it when the test runs: the cargo target dir is
/// shared between checkouts (CI's clones reuse this machine's builds), so a test binary built in
/// another checkout must not read that checkout's files through a path fixed at compile time.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
