//! One task per pod: sets up its sandbox (IP, directory, volumes), runs init containers then
//! containers as processes, restarts them per `restartPolicy` with back-off, runs probes,
//! publishes the pod status, and on deletion stops the processes (SIGTERM, grace period, SIGKILL)
//! and removes the pod object with grace period 0, as the kubelet does.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::context::{NodeContext, PodEntry};
use crate::env::{PodContext, container_env, expand, expand_all};
use crate::error::{Error, Result};
use crate::logs;
use crate::pod_status::{self, ConditionInputs, Phase};
use crate::probes::{self, ProbeEvent, ProbeKind, ProbeTarget};
use crate::process::{self, Mount, ProcessSpec};
use crate::volumes::{self, Volumes};

/// Kubernetes' limit on a termination message.
const MAX_TERMINATION_MESSAGE: usize = 4096;
/// Longest restart back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A container that ran this long gets its back-off reset.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Retry interval of sandbox (volume) set-up.
const SANDBOX_RETRY: Duration = Duration::from_secs(3);

/// Starts the worker of a pod; send newer versions of the pod (or `None` once it is gone from the
/// API) through the returned channel.
pub fn spawn(ctx: Arc<NodeContext>, pod: Pod) -> (watch::Sender<Option<Pod>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Some(pod.clone()));
    let task = tokio::spawn(async move {
        let mut worker = Worker::new(ctx, pod, rx);
        worker.run().await;
    });
    (tx, task)
}

/// The directory of a pod: `<pods root>/<namespace>_<name>_<uid>`.
pub fn pod_dir(pods_root: &Path, pod: &Pod) -> PathBuf {
    let m = &pod.metadata;
    pods_root.join(format!(
        "{}_{}_{}",
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or_default(),
        m.uid.as_deref().unwrap_or_default()
    ))
}

struct Exit {
    idx: usize,
    run: i32,
    code: i32,
    signal: Option<i32>,
}

struct Proc {
    pid: u32,
    run: i32,
    started: Instant,
    log: PathBuf,
    term_file: PathBuf,
    kill_at: Option<Instant>,
    env: Vec<(String, String)>,
}

struct Ctr {
    spec: Container,
    init: bool,
    status: ContainerStatus,
    proc: Option<Proc>,
    next_start: Option<Instant>,
    backoff: Duration,
    probes: Vec<JoinHandle<()>>,
    readiness: bool,
    failures: u32,
}

impl Ctr {
    fn new(spec: Container, init: bool, backoff: Duration) -> Self {
        let status = ContainerStatus {
            name: spec.name.clone(),
            image: spec.image.clone().unwrap_or_default(),
            image_id: String::new(),
            ready: false,
            restart_count: 0,
            started: Some(false),
            state: Some(waiting("ContainerCreating", None)),
            ..Default::default()
        };
        Ctr {
            spec,
            init,
            status,
            proc: None,
            next_start: None,
            backoff,
            probes: Vec::new(),
            readiness: false,
            failures: 0,
        }
    }

    fn exit_code(&self) -> Option<i32> {
        self.status
            .state
            .as_ref()?
            .terminated
            .as_ref()
            .map(|t| t.exit_code)
    }

    fn stop_probes(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
    }
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

struct Worker {
    ctx: Arc<NodeContext>,
    pod: Pod,
    ns: String,
    name: String,
    uid: String,
    updates: watch::Receiver<Option<Pod>>,
    dir: PathBuf,
    ip: Option<Ipv4Addr>,
    volumes: Option<Volumes>,
    next_sandbox_try: Instant,
    sandbox_error: Option<String>,
    containers: Vec<Ctr>,
    exit_tx: mpsc::Sender<Exit>,
    exit_rx: mpsc::Receiver<Exit>,
    probe_tx: mpsc::Sender<ProbeEvent>,
    probe_rx: mpsc::Receiver<ProbeEvent>,
    terminal: Option<(Phase, Option<String>, Option<String>)>,
    stopping: bool,
    start_time: Timestamp,
    started: Instant,
    published: Option<serde_json::Value>,
}

impl Worker {
    fn new(ctx: Arc<NodeContext>, pod: Pod, updates: watch::Receiver<Option<Pod>>) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let backoff = ctx.config.restart_backoff;
        let mut containers: Vec<Ctr> = spec
            .init_containers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| Ctr::new(c, true, backoff))
            .collect();
        containers.extend(
            spec.containers
                .iter()
                .cloned()
                .map(|c| Ctr::new(c, false, backoff)),
        );
        let (exit_tx, exit_rx) = mpsc::channel(16);
        let (probe_tx, probe_rx) = mpsc::channel(16);
        let dir = pod_dir(&ctx.config.pods_root, &pod);
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .map_or_else(Timestamp::now, |t| t.0);
        Worker {
            ns: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            ctx,
            pod,
            updates,
            dir,
            ip: None,
            volumes: None,
            next_sandbox_try: Instant::now(),
            sandbox_error: None,
            containers,
            exit_tx,
            exit_rx,
            probe_tx,
            probe_rx,
            terminal: None,
            stopping: false,
            start_time,
            started: Instant::now(),
            published: None,
        }
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn log_prefix(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    async fn run(&mut self) {
        self.register();
        self.adopt_previous_status();
        loop {
            let deleting = self.pod.metadata.deletion_timestamp.is_some();
            if deleting {
                let grace = self
                    .pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or_else(|| {
                        self.pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                    })
                    .unwrap_or(30)
                    .max(0) as u64;
                self.shut_down(Duration::from_secs(grace)).await;
                self.publish().await;
                self.delete_pod_object().await;
                break;
            }
            self.step().await;
            self.publish().await;
            tokio::select! {
                changed = self.updates.changed() => {
                    let latest = if changed.is_ok() { self.updates.borrow_and_update().clone() } else { None };
                    match latest {
                        Some(pod) => {
                            self.pod = pod;
                            self.register();
                        }
                        None => {
                            tracing::info!(pod = %self.log_prefix(), "pod is gone from the API: stopping its processes");
                            self.shut_down(Duration::from_secs(2)).await;
                            break;
                        }
                    }
                }
                Some(exit) = self.exit_rx.recv() => self.on_exit(exit).await,
                Some(ev) = self.probe_rx.recv() => self.on_probe(ev).await,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        self.clean_up();
    }

    fn register(&self) {
        self.ctx.registry.put(
            &self.ns,
            &self.name,
            PodEntry {
                uid: self.uid.clone(),
                dir: self.dir.clone(),
                pod: self.pod.clone(),
            },
        );
    }

    /// After a node restart: keep restart counts, and count containers that were running under
    /// the previous node process as lost (their processes were killed at start-up).
    fn adopt_previous_status(&mut self) {
        let Some(status) = self.pod.status.clone() else {
            return;
        };
        if let Some(phase @ ("Succeeded" | "Failed")) = status.phase.as_deref() {
            let phase: Phase = if phase == "Succeeded" {
                "Succeeded"
            } else {
                "Failed"
            };
            self.terminal = Some((phase, status.reason.clone(), status.message.clone()));
        }
        let previous: Vec<ContainerStatus> = status
            .init_container_statuses
            .into_iter()
            .flatten()
            .chain(status.container_statuses.into_iter().flatten())
            .collect();
        if previous.is_empty() {
            return;
        }
        if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
            && self.ctx.ips.lock().expect("ip pool").reserve(ip)
        {
            self.ip = Some(ip);
        }
        let policy = self.restart_policy();
        let backoff = self.ctx.config.restart_backoff;
        for c in &mut self.containers {
            let Some(prev) = previous.iter().find(|p| p.name == c.spec.name) else {
                continue;
            };
            c.status = prev.clone();
            c.status.ready = false;
            let state = prev.state.clone().unwrap_or_default();
            if self.terminal.is_some() || state.terminated.is_some() {
                continue;
            }
            let ran = state.running.is_some()
                || prev
                    .last_state
                    .as_ref()
                    .is_some_and(|l| l.terminated.is_some());
            if !ran {
                c.status.state = Some(waiting("ContainerCreating", None));
                continue;
            }
            let lost = ContainerStateTerminated {
                exit_code: 137,
                reason: Some("ContainerStatusUnknown".into()),
                message: Some("The container could not be located when the node restarted".into()),
                finished_at: Some(Time(Timestamp::now())),
                ..Default::default()
            };
            // a lost (init) container runs again unless the policy is Never
            if policy != "Never" {
                c.status.last_state = Some(ContainerState {
                    terminated: Some(lost),
                    ..Default::default()
                });
                c.status.state = Some(waiting("ContainerCreating", None));
                c.next_start = Some(Instant::now() + backoff);
            } else {
                c.status.state = Some(ContainerState {
                    terminated: Some(lost),
                    ..Default::default()
                });
            }
        }
    }

    fn pod_context(&self) -> PodContext {
        PodContext {
            pod_ip: self.ip.map(|i| i.to_string()).unwrap_or_default(),
            host_ip: self.ctx.config.node_ip.clone(),
            apiserver_host: self.ctx.config.apiserver_host.clone(),
            apiserver_port: self.ctx.config.apiserver_port,
        }
    }

    async fn step(&mut self) {
        if self.terminal.is_some() || self.stopping || self.ctx.is_shutting_down() {
            return;
        }
        if self.volumes.is_none() {
            if Instant::now() < self.next_sandbox_try {
                return;
            }
            if let Err(e) = self.set_up_sandbox().await {
                let message = e.to_string();
                if self.sandbox_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(pod = %self.log_prefix(), error = %message, "sandbox set-up failed");
                    self.ctx
                        .event(&self.pod, true, "FailedMount", message.clone())
                        .await;
                    self.sandbox_error = Some(message);
                }
                self.next_sandbox_try = Instant::now() + SANDBOX_RETRY;
                return;
            }
            self.sandbox_error = None;
        }
        self.refresh_tokens().await;
        self.enforce_kill_deadlines();

        if let Some(deadline) = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.active_deadline_seconds)
        {
            let active = Timestamp::now().as_second() - self.start_time.as_second();
            if active >= deadline {
                let message =
                    "Pod was active on the node longer than the specified deadline".to_string();
                self.ctx
                    .event(&self.pod, false, "DeadlineExceeded", message.clone())
                    .await;
                self.terminal = Some(("Failed", Some("DeadlineExceeded".into()), Some(message)));
                self.stop_all(Duration::from_secs(self.grace_seconds()))
                    .await;
                return;
            }
        }

        let now = Instant::now();
        let due = |c: &Ctr| {
            c.proc.is_none() && c.exit_code().is_none() && c.next_start.is_none_or(|t| now >= t)
        };
        let n_init = self.containers.iter().filter(|c| c.init).count();
        for idx in 0..n_init {
            let c = &self.containers[idx];
            if c.exit_code() == Some(0) {
                continue;
            }
            if due(c) {
                self.start(idx).await;
            }
            return;
        }
        for idx in n_init..self.containers.len() {
            if due(&self.containers[idx]) {
                self.start(idx).await;
            }
        }

        let (init, regular) = self.statuses();
        let phase = pod_status::phase(&self.restart_policy(), &init, &regular);
        if matches!(phase, "Succeeded" | "Failed")
            && self.containers.iter().all(|c| c.proc.is_none())
        {
            self.terminal = Some((phase, None, None));
            for c in &mut self.containers {
                c.stop_probes();
            }
        }
    }

    fn grace_seconds(&self) -> u64 {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64
    }

    async fn set_up_sandbox(&mut self) -> Result<()> {
        let host_network = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_network {
            // the node's address, as for any host-network pod (never returned to the pool)
            self.ip = self.ctx.config.node_ip.parse().ok();
        } else if self.ip.is_none() {
            self.ip = Some(self.ctx.ips.lock().expect("ip pool").allocate()?);
        }
        for sub in ["containers", "logs", "volumes"] {
            let d = self.dir.join(sub);
            std::fs::create_dir_all(&d).map_err(Error::io("create", &d))?;
        }
        let ctx = self.pod_context();
        let volumes = volumes::materialise(
            &self.ctx.objects,
            &self.pod,
            &ctx,
            &self.dir,
            &self.ctx.config.nfs_root,
            self.ctx.capacity,
        )
        .await?;
        self.volumes = Some(volumes);
        Ok(())
    }

    async fn refresh_tokens(&mut self) {
        let Some(volumes) = &mut self.volumes else {
            return;
        };
        let now = Timestamp::now();
        let sa = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        for t in volumes.tokens.iter_mut().filter(|t| t.needs_refresh(now)) {
            let fresh = self
                .ctx
                .objects
                .token(
                    &self.ns,
                    &sa,
                    t.audience.clone().into_iter().collect(),
                    t.expiration_seconds,
                    &self.name,
                    &self.uid,
                )
                .await
                .and_then(|token| {
                    volumes::write_file(&t.path, token.token.as_bytes(), t.mode).map(|()| token)
                });
            match fresh {
                Ok(token) => {
                    t.issued = now;
                    t.expires = token.expires;
                }
                Err(e) => {
                    tracing::warn!(pod = %format!("{}/{}", self.ns, self.name), error = %e, "token refresh failed")
                }
            }
        }
    }

    fn enforce_kill_deadlines(&mut self) {
        let now = Instant::now();
        for c in &mut self.containers {
            if let Some(p) = &mut c.proc
                && p.kill_at.is_some_and(|t| now >= t)
            {
                process::signal_group(p.pid, Signal::SIGKILL);
                p.kill_at = None;
            }
        }
    }

    /// Starts container `idx`; failures become container states.
    async fn start(&mut self, idx: usize) {
        let policy = self.restart_policy();
        let backoff = self.containers[idx].backoff;
        let pod = self.pod.clone();
        let image = self.containers[idx].spec.image.clone().unwrap_or_default();
        let name = self.containers[idx].spec.name.clone();

        let binary = match self.ctx.config.images.resolve_image(&image) {
            Ok(b) => b,
            Err(e) => {
                let c = &mut self.containers[idx];
                c.failures += 1;
                let reason = if c.failures > 1 {
                    "ImagePullBackOff"
                } else {
                    "ErrImagePull"
                };
                c.status.state = Some(waiting(reason, Some(e.to_string())));
                c.next_start = Some(Instant::now() + backoff);
                c.backoff = (backoff * 2).min(MAX_BACKOFF);
                if c.failures == 1 {
                    self.ctx
                        .event(
                            &pod,
                            true,
                            "Failed",
                            format!("Failed to pull image {image:?}: {e}"),
                        )
                        .await;
                }
                return;
            }
        };
        let ctx = self.pod_context();
        let spec = self.containers[idx].spec.clone();
        let env = match container_env(
            &self.ctx.objects,
            &pod,
            &spec,
            &ctx,
            self.ctx.capacity.cpu_cores,
            self.ctx.capacity.memory_bytes,
        )
        .await
        {
            Ok(env) => env,
            Err(e) => {
                let c = &mut self.containers[idx];
                c.status.state = Some(waiting("CreateContainerConfigError", Some(e.to_string())));
                c.next_start = Some(Instant::now() + backoff);
                c.failures += 1;
                if c.failures == 1 {
                    self.ctx
                        .event(&pod, true, "Failed", format!("Error: {e}"))
                        .await;
                }
                return;
            }
        };
        let mut env = env;
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if let (Some(shim), false) = (&self.ctx.config.bind_shim, host_network) {
            preload(&mut env, shim, &ctx.pod_ip);
        }
        let command = expand_all(spec.command.as_deref().unwrap_or_default(), &env);
        let args = expand_all(spec.args.as_deref().unwrap_or_default(), &env);
        let invocation = self.ctx.config.images.invocation(&binary, &command, &args);

        let container_dir = self.dir.join("containers").join(&name);
        let term_file = container_dir.join("termination-log");
        let mounts = match self.mounts(&spec, &env, &term_file) {
            Ok(m) => m,
            Err(e) => {
                let c = &mut self.containers[idx];
                c.status.state = Some(waiting("CreateContainerConfigError", Some(e.to_string())));
                c.next_start = Some(Instant::now() + backoff);
                return;
            }
        };
        let prepared = std::fs::create_dir_all(&container_dir)
            .and_then(|()| std::fs::write(&term_file, b""))
            .map_err(Error::io("prepare", &container_dir));
        let cwd = spec
            .working_dir
            .as_ref()
            .map_or(container_dir.clone(), PathBuf::from);
        if spec.working_dir.is_some() && !cwd.exists() {
            // a container runtime creates a missing working directory; mounts may cover it
            let _ = std::fs::create_dir_all(&cwd);
        }

        let c = &mut self.containers[idx];
        // the first run is 0; each later one (restart) counts up
        let run = if c.status.container_id.is_none() {
            0
        } else {
            c.status.restart_count + 1
        };
        let spawned = prepared.and_then(|()| {
            process::spawn(&ProcessSpec {
                program: invocation.program.clone(),
                arg0: invocation.arg0.clone(),
                args: invocation.args.clone(),
                env: env.clone(),
                cwd,
                mounts,
            })
        });
        let image_id = format!("process://{}", binary.display());
        let container_id = format!(
            "process://{}-{}-{}",
            &self.uid[..self.uid.len().min(8)],
            name,
            run
        );
        c.status.restart_count = run;
        c.status.image_id = image_id;
        c.status.container_id = Some(container_id.clone());
        c.next_start = None;
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(pod = %format!("{}/{}", self.ns, self.name), container = %name, error = %e, "start failed");
                let message = e.to_string();
                self.ctx
                    .event(&pod, true, "Failed", format!("Error: {message}"))
                    .await;
                let now = Time(Timestamp::now());
                let terminated = ContainerStateTerminated {
                    exit_code: 128,
                    reason: Some("StartError".into()),
                    message: Some(message),
                    started_at: Some(now.clone()),
                    finished_at: Some(now),
                    container_id: Some(container_id),
                    signal: None,
                };
                self.finish(idx, terminated, &policy).await;
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        let _ = process::write_pid_file(&container_dir, pid);
        let log = logs::log_path(&self.dir, &name, run);
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        if let (Some(out), Some(err)) = (stdout, stderr) {
            let (log, live) = (log.clone(), self.ctx.live_logs.clone());
            tokio::spawn(async move {
                if let Err(e) = logs::copy_output(log, live, out, err).await {
                    tracing::warn!(error = %e, "container log copy failed");
                }
            });
        }
        let exits = self.exit_tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let (code, signal) = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (s.code(), s.signal()) {
                        (Some(code), _) => (code, None),
                        (None, Some(sig)) => (128 + sig, Some(sig)),
                        (None, None) => (255, None),
                    }
                }
                Err(_) => (255, None),
            };
            let _ = exits
                .send(Exit {
                    idx,
                    run,
                    code,
                    signal,
                })
                .await;
        });

        let c = &mut self.containers[idx];
        c.failures = 0;
        c.status.state = Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(Timestamp::now())),
            }),
            ..Default::default()
        });
        c.proc = Some(Proc {
            pid,
            run,
            started: Instant::now(),
            log,
            term_file,
            kill_at: None,
            env: env.clone(),
        });
        c.readiness = false;
        let has_startup = c.spec.startup_probe.is_some();
        c.status.started = Some(!has_startup);
        tracing::info!(pod = %format!("{}/{}", self.ns, self.name), container = %name, pid, run,
            program = %invocation.program.display(), "container started");
        self.ctx
            .event(
                &pod,
                false,
                "Pulled",
                format!(
                    "Container image {image:?} already present on machine (process {})",
                    binary.display()
                ),
            )
            .await;
        self.ctx
            .event(&pod, false, "Created", format!("Created container: {name}"))
            .await;
        self.ctx
            .event(&pod, false, "Started", format!("Started container {name}"))
            .await;
        if has_startup {
            self.start_probe(idx, ProbeKind::Startup);
        } else {
            self.start_probe(idx, ProbeKind::Readiness);
            self.start_probe(idx, ProbeKind::Liveness);
        }
        self.update_ready(idx);
    }

    /// The bind mounts of a container: its volume mounts plus the termination message file.
    fn mounts(
        &self,
        spec: &Container,
        env: &[(String, String)],
        term_file: &Path,
    ) -> Result<Vec<Mount>> {
        let volumes = self
            .volumes
            .as_ref()
            .ok_or_else(|| Error::Unsupported("volumes not ready".into()))?;
        let mut mounts = Vec::new();
        for vm in spec.volume_mounts.iter().flatten() {
            let source = volumes.dirs.get(&vm.name).ok_or_else(|| Error::Volume {
                volume: vm.name.clone(),
                message: "not declared in the pod's volumes".into(),
            })?;
            let sub = match (&vm.sub_path, &vm.sub_path_expr) {
                (Some(p), _) if !p.is_empty() => p.clone(),
                (_, Some(e)) if !e.is_empty() => expand(e, |n| {
                    env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
                }),
                _ => String::new(),
            };
            let source = if sub.is_empty() {
                source.clone()
            } else {
                if Path::new(&sub)
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(Error::Unsupported(format!(
                        "subPath {sub:?} must be relative without '..'"
                    )));
                }
                let p = source.join(&sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(Error::io("create", &p))?;
                }
                p
            };
            mounts.push(Mount {
                source,
                target: PathBuf::from(&vm.mount_path),
                read_only: vm.read_only.unwrap_or(false),
            });
        }
        let term_path = spec
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        mounts.push(Mount {
            source: term_file.to_path_buf(),
            target: PathBuf::from(term_path),
            read_only: false,
        });
        Ok(mounts)
    }

    fn start_probe(&mut self, idx: usize, kind: ProbeKind) {
        let c = &self.containers[idx];
        let probe = match kind {
            ProbeKind::Startup => c.spec.startup_probe.clone(),
            ProbeKind::Readiness => c.spec.readiness_probe.clone(),
            ProbeKind::Liveness => c.spec.liveness_probe.clone(),
        };
        let (Some(probe), Some(p)) = (probe, &c.proc) else {
            return;
        };
        let target = ProbeTarget {
            pod_ip: self.ip.map(|i| i.to_string()).unwrap_or_default(),
            pid: p.pid,
            env: p.env.clone(),
            ports: c.spec.ports.clone().unwrap_or_default(),
        };
        let task = tokio::spawn(probes::run(
            kind,
            probe,
            c.spec.name.clone(),
            p.run,
            target,
            self.ctx.probe_client.clone(),
            self.probe_tx.clone(),
        ));
        self.containers[idx].probes.push(task);
    }

    fn update_ready(&mut self, idx: usize) {
        let c = &mut self.containers[idx];
        let running = c.proc.is_some();
        let started = c.status.started == Some(true);
        let ready = running && started && (c.spec.readiness_probe.is_none() || c.readiness);
        c.status.ready = ready;
    }

    async fn on_probe(&mut self, ev: ProbeEvent) {
        let Some(idx) = self
            .containers
            .iter()
            .position(|c| c.spec.name == ev.container)
        else {
            return;
        };
        if self.containers[idx].proc.as_ref().map(|p| p.run) != Some(ev.run) {
            return;
        }
        let pod = self.pod.clone();
        match (ev.kind, ev.success) {
            (ProbeKind::Startup, true) => {
                self.containers[idx].status.started = Some(true);
                self.start_probe(idx, ProbeKind::Readiness);
                self.start_probe(idx, ProbeKind::Liveness);
            }
            (ProbeKind::Readiness, ok) => {
                self.containers[idx].readiness = ok;
                if !ok {
                    self.ctx
                        .event(
                            &pod,
                            true,
                            "Unhealthy",
                            format!("Readiness probe failed: {}", ev.message),
                        )
                        .await;
                }
            }
            (ProbeKind::Liveness, true) => {}
            (kind @ (ProbeKind::Startup | ProbeKind::Liveness), false) => {
                let what = if kind == ProbeKind::Startup {
                    "startup"
                } else {
                    "liveness"
                };
                let name = ev.container.clone();
                self.ctx
                    .event(
                        &pod,
                        true,
                        "Unhealthy",
                        format!("{what} probe failed: {}", ev.message),
                    )
                    .await;
                self.ctx
                    .event(
                        &pod,
                        false,
                        "Killing",
                        format!("Container {name} failed {what} probe, will be restarted"),
                    )
                    .await;
                let grace = Duration::from_secs(self.grace_seconds());
                let c = &mut self.containers[idx];
                c.stop_probes();
                if let Some(p) = &mut c.proc {
                    process::signal_group(p.pid, Signal::SIGTERM);
                    p.kill_at = Some(Instant::now() + grace);
                }
            }
        }
        self.update_ready(idx);
    }

    async fn on_exit(&mut self, exit: Exit) {
        let Some(c) = self.containers.get_mut(exit.idx) else {
            return;
        };
        let Some(p) = c.proc.take_if(|p| p.run == exit.run) else {
            return;
        };
        c.stop_probes();
        let _ = std::fs::remove_file(self.dir.join("containers").join(&c.spec.name).join("pid"));
        // give the log copier a moment to drain the pipes before reading the log for a message
        for _ in 0..20 {
            if !self.ctx.live_logs.is_live(&p.log) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let c = &mut self.containers[exit.idx];
        let mut message = std::fs::read(&p.term_file).unwrap_or_default();
        message.truncate(MAX_TERMINATION_MESSAGE);
        let mut message = String::from_utf8_lossy(&message).into_owned();
        let fallback =
            c.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        if message.is_empty() && fallback && exit.code != 0 {
            message = logs::tail_for_message(&p.log, 80, 2048);
        }
        let started_at = c
            .status
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.clone());
        let terminated = ContainerStateTerminated {
            exit_code: exit.code,
            signal: exit.signal,
            reason: Some(if exit.code == 0 { "Completed" } else { "Error" }.into()),
            message: (!message.is_empty()).then_some(message),
            started_at,
            finished_at: Some(Time(Timestamp::now())),
            container_id: c.status.container_id.clone(),
        };
        if p.started.elapsed() >= BACKOFF_RESET {
            c.backoff = self.ctx.config.restart_backoff;
        }
        tracing::info!(pod = %format!("{}/{}", self.ns, self.name), container = %c.spec.name, code = exit.code, "container exited");
        let policy = self.restart_policy();
        self.finish(exit.idx, terminated, &policy).await;
    }

    /// Records a container's end and decides whether it runs again.
    async fn finish(&mut self, idx: usize, terminated: ContainerStateTerminated, policy: &str) {
        let pod = self.pod.clone();
        let pod_name = format!("{}_{}({})", self.name, self.ns, self.uid);
        let stopping = self.stopping || self.terminal.is_some() || self.ctx.is_shutting_down();
        let c = &mut self.containers[idx];
        c.status.ready = false;
        c.status.started = Some(false);
        c.readiness = false;
        let code = terminated.exit_code;
        let restart = !stopping
            && match (c.init, policy) {
                (_, "Never") => false,
                (true, _) => code != 0,
                (false, "OnFailure") => code != 0,
                (false, _) => true,
            };
        if restart {
            let backoff = c.backoff;
            c.status.last_state = Some(ContainerState {
                terminated: Some(terminated),
                ..Default::default()
            });
            let message = format!(
                "back-off {} restarting failed container={} pod={pod_name}",
                humantime::format_duration(backoff),
                c.spec.name
            );
            c.status.state = Some(waiting("CrashLoopBackOff", Some(message)));
            c.next_start = Some(Instant::now() + backoff);
            c.backoff = (backoff * 2).min(MAX_BACKOFF);
            let note = format!(
                "Back-off restarting failed container {} in pod {}",
                c.spec.name, self.name
            );
            self.ctx.event(&pod, true, "BackOff", note).await;
        } else {
            c.status.state = Some(ContainerState {
                terminated: Some(terminated),
                ..Default::default()
            });
        }
    }

    /// SIGTERM to every running container, SIGKILL to those still running after `grace`.
    async fn stop_all(&mut self, grace: Duration) {
        self.stopping = true;
        let pod = self.pod.clone();
        let mut names = Vec::new();
        for c in &mut self.containers {
            c.stop_probes();
            if let Some(p) = &c.proc {
                process::signal_group(p.pid, Signal::SIGTERM);
                names.push(c.spec.name.clone());
            }
        }
        for name in names {
            self.ctx
                .event(&pod, false, "Killing", format!("Stopping container {name}"))
                .await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        let mut killed = false;
        while self.containers.iter().any(|c| c.proc.is_some()) {
            tokio::select! {
                Some(exit) = self.exit_rx.recv() => self.on_exit(exit).await,
                _ = tokio::time::sleep_until(deadline), if !killed => {
                    for c in &self.containers {
                        if let Some(p) = &c.proc {
                            process::signal_group(p.pid, Signal::SIGKILL);
                        }
                    }
                    killed = true;
                }
            }
        }
    }

    /// Stops everything for the pod's deletion and settles its final phase.
    async fn shut_down(&mut self, grace: Duration) {
        tracing::info!(pod = %self.log_prefix(), grace = ?grace, "stopping pod");
        self.stop_all(grace).await;
        if self.terminal.is_none() {
            let all_ok = self
                .containers
                .iter()
                .filter(|c| !c.init)
                .all(|c| c.exit_code() == Some(0));
            self.terminal = Some((if all_ok { "Succeeded" } else { "Failed" }, None, None));
        }
    }

    async fn delete_pod_object(&self) {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.name, &dp).await {
            Ok(_) => tracing::info!(pod = %self.log_prefix(), "pod deleted"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %self.log_prefix(), error = %e, "final pod deletion failed")
            }
        }
    }

    fn clean_up(&mut self) {
        if let Some(ip) = self.ip.take()
            && self.ctx.config.pod_cidr.contains(ip)
        {
            self.ctx.ips.lock().expect("ip pool").release(ip);
        }
        self.ctx.registry.remove(&self.ns, &self.name, &self.uid);
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "pod directory not removed");
        }
    }

    fn statuses(&self) -> (Vec<ContainerStatus>, Vec<ContainerStatus>) {
        let init = self
            .containers
            .iter()
            .filter(|c| c.init)
            .map(|c| c.status.clone())
            .collect();
        let regular = self
            .containers
            .iter()
            .filter(|c| !c.init)
            .map(|c| c.status.clone())
            .collect();
        (init, regular)
    }

    fn build_status(&self) -> PodStatus {
        let (init, regular) = self.statuses();
        let mut status = self.pod.status.clone().unwrap_or_default();
        let (phase, reason, message) = match &self.terminal {
            Some((p, r, m)) => (*p, r.clone(), m.clone()),
            None => (
                pod_status::phase(&self.restart_policy(), &init, &regular),
                None,
                None,
            ),
        };
        let mut conditions = status.conditions.take().unwrap_or_default();
        let gates = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.clone())
            .unwrap_or_default();
        pod_status::update_conditions(
            &mut conditions,
            &ConditionInputs {
                sandbox_ready: self.volumes.is_some() && self.terminal.is_none(),
                init: &init,
                containers: &regular,
                phase,
                readiness_gates: &gates,
            },
            Timestamp::now(),
        );
        status.phase = Some(phase.into());
        status.reason = reason;
        status.message = message;
        status.conditions = Some(conditions);
        status.host_ip = Some(self.ctx.config.node_ip.clone());
        status.host_ips = Some(vec![HostIP {
            ip: self.ctx.config.node_ip.clone(),
        }]);
        if let Some(ip) = self.ip {
            status.pod_ip = Some(ip.to_string());
            status.pod_ips = Some(vec![PodIP { ip: ip.to_string() }]);
        }
        status.start_time = Some(Time(self.start_time));
        status.init_container_statuses = (!init.is_empty()).then_some(init);
        status.container_statuses = Some(regular);
        status
    }

    async fn publish(&mut self) {
        if self.ctx.is_shutting_down() {
            return;
        }
        for idx in 0..self.containers.len() {
            self.update_ready(idx);
        }
        let status = self.build_status();
        let body = serde_json::json!({ "status": status });
        // transition times move with the clock: compare without them
        let mut key = body.clone();
        strip_times(&mut key);
        if self.published.as_ref() == Some(&key) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(pod) => {
                self.published = Some(key);
                if pod.metadata.uid.as_deref() == Some(self.uid.as_str()) {
                    self.pod.status = pod.status;
                }
            }
            Err(e) => {
                let since = self.started.elapsed().as_secs();
                tracing::warn!(pod = %self.log_prefix(), error = %e, since, "status update failed");
            }
        }
    }
}

/// Preloads the bind shim (before any `LD_PRELOAD` of the pod's own) with the pod IP to bind to.
fn preload(env: &mut Vec<(String, String)>, shim: &Path, pod_ip: &str) {
    let own = env
        .iter()
        .position(|(k, _)| k == "LD_PRELOAD")
        .map(|i| env.remove(i).1);
    let value = match own {
        Some(own) if !own.is_empty() => format!("{}:{own}", shim.display()),
        _ => shim.display().to_string(),
    };
    env.retain(|(k, _)| k != "VRG_BIND_IP");
    env.push(("LD_PRELOAD".into(), value));
    env.push(("VRG_BIND_IP".into(), pod_ip.into()));
}

fn strip_times(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("lastTransitionTime");
            map.remove("lastProbeTime");
            for (_, child) in map.iter_mut() {
                strip_times(child);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_times),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_dir_names_namespace_name_and_uid() {
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("123".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            pod_dir(Path::new("/w/pods"), &pod),
            PathBuf::from("/w/pods/ns_p_123")
        );
    }

    #[test]
    fn preload_goes_first_and_carries_the_pod_ip() {
        let mut env = vec![
            ("LD_PRELOAD".to_string(), "/own.so".to_string()),
            ("A".into(), "1".into()),
        ];
        preload(&mut env, Path::new("/shim.so"), "10.244.0.9");
        assert!(env.contains(&("LD_PRELOAD".into(), "/shim.so:/own.so".into())));
        assert!(env.contains(&("VRG_BIND_IP".into(), "10.244.0.9".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "LD_PRELOAD").count(), 1);
    }

    #[test]
    fn strip_times_ignores_only_clock_fields() {
        let mut a =
            serde_json::json!({"conditions": [{"type": "Ready", "lastTransitionTime": "t1"}]});
        let b = serde_json::json!({"conditions": [{"type": "Ready"}]});
        strip_times(&mut a);
        assert_eq!(a, b);
    }
}
