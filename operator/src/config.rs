//! Command-line flags and the settings the controller derives from them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::error::{Error, Result};

/// Flags of the `operator` binary (each also readable from the environment).
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "operator", version, about = "VirtRigaud migration operator")]
pub struct Args {
    /// Log format and filter (`--log-format`, `--log-level`).
    #[command(flatten)]
    pub log: crd::logging::LogSettings,
    /// Image of the runner Jobs. Default: the image of the `runner-image` init container of this
    /// operator's own pod, so that `kustomize edit set image` (or `kubectl set image`) retargets the
    /// runner together with the operator.
    #[arg(long, env = "VRG_RUNNER_IMAGE")]
    pub runner_image: Option<String>,

    /// imagePullPolicy of the runner container.
    #[arg(long, env = "VRG_RUNNER_PULL_POLICY", default_value = "IfNotPresent")]
    pub runner_pull_policy: String,

    /// imagePullSecrets of the runner pods (repeat, or comma-separated): Secrets of type
    /// kubernetes.io/dockerconfigjson, which must exist in each migration's namespace (a pod reads
    /// pull secrets from its own namespace only).
    #[arg(
        long = "runner-image-pull-secret",
        env = "VRG_RUNNER_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    pub runner_image_pull_secrets: Vec<String>,

    /// nodeSelector of the runner pods, `key=value` (repeat, or comma-separated), e.g. the nodes
    /// that reach the hypervisors' and the staging's networks.
    #[arg(
        long = "runner-node-selector",
        env = "VRG_RUNNER_NODE_SELECTOR",
        value_delimiter = ','
    )]
    pub runner_node_selector: Vec<String>,

    /// Tolerations of the runner pods (repeat, or comma-separated): `key=value:Effect` (Equal),
    /// `key:Effect` (Exists) or `key=value` / `key` (any effect), e.g. `dedicated=migration:NoSchedule`.
    #[arg(
        long = "runner-toleration",
        env = "VRG_RUNNER_TOLERATIONS",
        value_delimiter = ','
    )]
    pub runner_tolerations: Vec<String>,

    /// CPU request of the runner container.
    #[arg(long, env = "VRG_RUNNER_CPU_REQUEST", default_value = "250m")]
    pub runner_cpu_request: String,

    /// CPU limit of the runner container: qemu-img convert and the SHA-256 of the transfer each
    /// keep about one core busy.
    #[arg(long, env = "VRG_RUNNER_CPU_LIMIT", default_value = "2")]
    pub runner_cpu_limit: String,

    /// Memory request of the runner container.
    #[arg(long, env = "VRG_RUNNER_MEMORY_REQUEST", default_value = "256Mi")]
    pub runner_memory_request: String,

    /// Memory limit of the runner container. The runner streams (its buffers do not grow with the
    /// disk); the limit leaves room for a `qemu-img info` at its 1 GiB address-space limit next to a
    /// conversion and the transfer buffers.
    #[arg(long, env = "VRG_RUNNER_MEMORY_LIMIT", default_value = "2Gi")]
    pub runner_memory_limit: String,

    /// Storage class of a generic ephemeral scratch volume for the runner (large disks). Without it the
    /// scratch space is an emptyDir on the node.
    #[arg(long, env = "VRG_SCRATCH_STORAGE_CLASS")]
    pub scratch_storage_class: Option<String>,

    /// Size of the scratch volume: the claim size with --scratch-storage-class, else the emptyDir's
    /// sizeLimit. It must hold the largest disk up to three times (exported, converted, read back
    /// as raw for a target that verifies content).
    #[arg(long, env = "VRG_SCRATCH_SIZE", default_value = DEFAULT_SCRATCH_SIZE)]
    pub scratch_size: String,

    /// activeDeadlineSeconds of a runner Job, as a duration (`24h`, `90m`).
    #[arg(long, env = "VRG_JOB_DEADLINE", default_value = "24h")]
    pub job_deadline: String,

    /// How long a runner may take to start, as a duration (`10m`, `90s`): from the creation of the
    /// attempt's Job until a runner container runs. Until then the operator reads the Job's pods
    /// (and, while there are none, the Job's `FailedCreate` Events) every few seconds and reports a
    /// start problem on the migration's Ready condition (reason `RunnerImagePullFailed`,
    /// `RunnerUnschedulable`, `RunnerPodForbidden`, `RunnerQuotaExceeded` or `RunnerStartFailed`,
    /// with Kubernetes' message) and in one Warning Event; the migration keeps waiting, as the
    /// problem may clear (an image pushed late, a quota raised). At the timeout the attempt fails as
    /// a retryable failure with that reason (`RunnerStartTimeout` when Kubernetes named none), its
    /// Job is deleted, and the retry policy starts the next attempt with a new Job.
    #[arg(long, env = "VRG_RUNNER_START_TIMEOUT", default_value = "10m")]
    pub runner_start_timeout: String,

    /// activeDeadlineSeconds of a cleanup Job.
    #[arg(long, env = "VRG_CLEANUP_DEADLINE", default_value = "30m")]
    pub cleanup_deadline: String,

    /// How long after creation a migration waits for a missing source VM, Provider or Secret before
    /// it fails.
    #[arg(long, env = "VRG_REFERENCE_GRACE", default_value = "2m")]
    pub reference_grace: String,

    /// Port of the HTTP server with /metrics and /healthz.
    #[arg(long, env = "VRG_METRICS_PORT", default_value_t = 8080)]
    pub metrics_port: u16,

    /// Address the HTTP server binds (the pod IP is reached through 0.0.0.0).
    #[arg(long, env = "VRG_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Run only while holding the Lease, so several replicas can run safely.
    #[arg(long, env = "VRG_LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,

    /// Name of the leader-election Lease.
    #[arg(long, env = "VRG_LEASE_NAME", default_value = "virtrigaud-operator")]
    pub lease_name: String,

    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "virtrigaud-system")]
    pub lease_namespace: String,

    /// Identity of this replica in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Let runners connect to loopback endpoints (and libvirt's local socket): local test worlds
    /// only, where every hypervisor and store listens on 127.0.0.1. Production installs refuse them.
    #[arg(long, env = "VRG_ALLOW_LOOPBACK_ENDPOINTS", default_value_t = false)]
    pub allow_loopback_endpoints: bool,

    /// Log format of the runner Jobs (what `kubectl logs` of a migration shows): `text` or `json`.
    #[arg(long, env = "VRG_RUNNER_LOG_FORMAT", default_value_t = crd::logging::LogFormat::Text)]
    pub runner_log_format: crd::logging::LogFormat,

    /// Log filter of the runner Jobs, in RUST_LOG syntax (`info`, `debug`, `info,runner=debug`).
    #[arg(long, env = "VRG_RUNNER_LOG_LEVEL", default_value = "info")]
    pub runner_log_level: String,
}

/// `--runner-node-selector` entries, `key=value` each.
fn node_selector(entries: &[String]) -> Result<BTreeMap<String, String>> {
    entries
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Error::Config(format!(
                "--runner-node-selector {e:?}: expected key=value"
            ))),
        })
        .collect()
}

/// One `--runner-toleration`: `key[=value][:Effect]`.
fn toleration(text: &str) -> Result<Toleration> {
    let bad = |why: &str| Error::Config(format!("--runner-toleration {text:?}: {why}"));
    let (selector, effect) = match text.rsplit_once(':') {
        Some((s, e)) => (s, Some(e)),
        None => (text, None),
    };
    if let Some(e) = effect
        && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&e)
    {
        return Err(bad(
            "the effect must be NoSchedule, PreferNoSchedule or NoExecute",
        ));
    }
    let (key, value) = match selector.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (selector, None),
    };
    if key.is_empty() {
        return Err(bad("the key is empty"));
    }
    Ok(Toleration {
        key: Some(key.to_owned()),
        operator: Some(if value.is_some() { "Equal" } else { "Exists" }.to_owned()),
        value: value.map(str::to_owned),
        effect: effect.map(str::to_owned),
        ..Toleration::default()
    })
}

/// `--runner-log-level`, checked here so that a typo fails the operator's start, not every runner.
fn runner_log_level(level: &str) -> Result<String> {
    let settings = crd::logging::LogSettings {
        level: Some(level.to_owned()),
        ..Default::default()
    };
    crd::logging::filter(&settings, "info")
        .map(|_| level.to_owned())
        .map_err(|e| Error::Config(format!("--runner-log-level: {e}")))
}

/// Where the runner keeps temporary disk images.
#[derive(Clone, Debug, PartialEq)]
pub enum Scratch {
    /// An emptyDir on the node, size-limited (the kubelet evicts a pod whose emptyDir outgrows its
    /// `sizeLimit`; the runner is told the limit so it refuses a disk that would not fit up front).
    EmptyDir {
        /// `sizeLimit` of the emptyDir.
        size_limit: Quantity,
        /// The same in bytes.
        bytes: u64,
    },
    /// A generic ephemeral volume (a PVC living as long as the pod) of a storage class.
    Ephemeral {
        /// The storage class.
        storage_class: String,
        /// The requested size.
        size: Quantity,
    },
}

/// Default size of the scratch volume (emptyDir sizeLimit or ephemeral claim).
pub const DEFAULT_SCRATCH_SIZE: &str = "100Gi";

/// Requests and limits of the runner container.
#[derive(Clone, Debug, PartialEq)]
pub struct RunnerResources {
    pub cpu_request: Quantity,
    pub cpu_limit: Quantity,
    pub memory_request: Quantity,
    pub memory_limit: Quantity,
}

impl Default for RunnerResources {
    fn default() -> Self {
        RunnerResources {
            cpu_request: Quantity("250m".into()),
            cpu_limit: Quantity("2".into()),
            memory_request: Quantity("256Mi".into()),
            memory_limit: Quantity("2Gi".into()),
        }
    }
}

/// What the object builders need to know besides the migration.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Runner image (empty until resolved: see [`Args::runner_image`]).
    pub runner_image: String,
    /// Runner imagePullPolicy.
    pub image_pull_policy: String,
    /// Runner container requests and limits.
    pub runner_resources: RunnerResources,
    /// Scratch volume.
    pub scratch: Scratch,
    /// Deadline of a runner Job.
    pub job_deadline: Duration,
    /// Deadline of a cleanup Job.
    pub cleanup_deadline: Duration,
    /// How long a runner may take to start before its attempt fails.
    pub runner_start_timeout: Duration,
    /// How long a missing reference is waited for.
    pub reference_grace: Duration,
    /// Runner pods' imagePullSecrets.
    pub image_pull_secrets: Vec<String>,
    /// Runner pods' nodeSelector.
    pub node_selector: BTreeMap<String, String>,
    /// Runner pods' tolerations.
    pub tolerations: Vec<Toleration>,
    /// Runners may connect to loopback endpoints.
    pub allow_loopback_endpoints: bool,
    /// The runner's log format and filter (`VRG_LOG_FORMAT`, `VRG_LOG_LEVEL` in its Job).
    pub runner_log: (crd::logging::LogFormat, String),
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            runner_image: "virtrigaud/runner:dev".into(),
            image_pull_policy: "IfNotPresent".into(),
            runner_resources: RunnerResources::default(),
            scratch: Scratch::EmptyDir {
                size_limit: Quantity(DEFAULT_SCRATCH_SIZE.into()),
                bytes: 100 << 30,
            },
            job_deadline: Duration::from_secs(24 * 3600),
            cleanup_deadline: Duration::from_secs(30 * 60),
            runner_start_timeout: Duration::from_secs(10 * 60),
            reference_grace: Duration::from_secs(120),
            allow_loopback_endpoints: false,
            image_pull_secrets: Vec::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            runner_log: (crd::logging::LogFormat::Text, "info".into()),
        }
    }
}

fn duration_flag(flag: &str, value: &str) -> Result<Duration> {
    let d = crd::parse_duration(value).map_err(|e| Error::Config(format!("--{flag}: {e}")))?;
    if d < Duration::from_secs(1) {
        return Err(Error::Config(format!("--{flag}: must be at least 1s")));
    }
    Ok(d)
}

/// Bytes of a memory or storage quantity flag (Kubernetes' grammar, 1Mi to 24Ti).
fn bytes_flag(flag: &str, value: &str) -> Result<u64> {
    crd::quantity::memory_bytes(value).map_err(|e| Error::Config(format!("--{flag}: {e}")))
}

/// Millicores of a CPU quantity flag (`250m`, `2`, `1.5`), at least 1m.
fn cpu_flag(flag: &str, value: &str) -> Result<u64> {
    let millis = match value.strip_suffix('m') {
        Some(m) => m.parse::<u64>().ok(),
        None => value
            .parse::<f64>()
            .ok()
            .filter(|cores| cores.is_finite() && *cores >= 0.0)
            .map(|cores| (cores * 1000.0).ceil() as u64),
    };
    match millis {
        Some(m) if m >= 1 => Ok(m),
        _ => Err(Error::Config(format!(
            "--{flag} {value:?}: expected CPU cores such as 250m, 2 or 1.5"
        ))),
    }
}

/// A request that is not above its limit (Kubernetes refuses the Job otherwise).
fn request_within(what: &str, request: u64, limit: u64) -> Result<()> {
    if request > limit {
        return Err(Error::Config(format!(
            "--runner-{what}-request is above --runner-{what}-limit"
        )));
    }
    Ok(())
}

impl RunnerResources {
    fn from_args(args: &Args) -> Result<Self> {
        request_within(
            "cpu",
            cpu_flag("runner-cpu-request", &args.runner_cpu_request)?,
            cpu_flag("runner-cpu-limit", &args.runner_cpu_limit)?,
        )?;
        request_within(
            "memory",
            bytes_flag("runner-memory-request", &args.runner_memory_request)?,
            bytes_flag("runner-memory-limit", &args.runner_memory_limit)?,
        )?;
        Ok(RunnerResources {
            cpu_request: Quantity(args.runner_cpu_request.clone()),
            cpu_limit: Quantity(args.runner_cpu_limit.clone()),
            memory_request: Quantity(args.runner_memory_request.clone()),
            memory_limit: Quantity(args.runner_memory_limit.clone()),
        })
    }
}

impl Scratch {
    fn from_args(args: &Args) -> Result<Self> {
        let bytes = bytes_flag("scratch-size", &args.scratch_size)?;
        let size = Quantity(args.scratch_size.clone());
        Ok(match &args.scratch_storage_class {
            Some(class) if !class.is_empty() => Scratch::Ephemeral {
                storage_class: class.clone(),
                size,
            },
            _ => Scratch::EmptyDir {
                size_limit: size,
                bytes,
            },
        })
    }
}

impl Settings {
    /// Validates the flags.
    pub fn from_args(args: &Args) -> Result<Self> {
        if !["Always", "IfNotPresent", "Never"].contains(&args.runner_pull_policy.as_str()) {
            return Err(Error::Config(format!(
                "--runner-pull-policy {:?}: expected Always, IfNotPresent or Never",
                args.runner_pull_policy
            )));
        }
        if args.runner_image.as_deref() == Some("") {
            return Err(Error::Config("--runner-image must not be empty".into()));
        }
        Ok(Settings {
            runner_image: args.runner_image.clone().unwrap_or_default(),
            image_pull_policy: args.runner_pull_policy.clone(),
            runner_resources: RunnerResources::from_args(args)?,
            scratch: Scratch::from_args(args)?,
            job_deadline: duration_flag("job-deadline", &args.job_deadline)?,
            cleanup_deadline: duration_flag("cleanup-deadline", &args.cleanup_deadline)?,
            runner_start_timeout: duration_flag(
                "runner-start-timeout",
                &args.runner_start_timeout,
            )?,
            reference_grace: crd::parse_duration(&args.reference_grace)
                .map_err(|e| Error::Config(format!("--reference-grace: {e}")))?,
            allow_loopback_endpoints: args.allow_loopback_endpoints,
            image_pull_secrets: args.runner_image_pull_secrets.clone(),
            node_selector: node_selector(&args.runner_node_selector)?,
            tolerations: args
                .runner_tolerations
                .iter()
                .map(|t| toleration(t))
                .collect::<Result<_>>()?,
            runner_log: (
                args.runner_log_format,
                runner_log_level(&args.runner_log_level)?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Settings> {
        let args = Args::try_parse_from(std::iter::once("operator").chain(args.iter().copied()))
            .expect("flags parse");
        Settings::from_args(&args)
    }

    #[test]
    fn defaults() {
        let s = parse(&["--runner-image=virtrigaud/runner:dev"]).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(
            parse(&[]).unwrap().runner_image,
            "",
            "resolved from the pod at start"
        );
        let args = Args::try_parse_from(["operator"]).unwrap();
        assert_eq!(args.metrics_port, 8080);
        assert!(!args.leader_election);
    }

    #[test]
    fn scratch_volume_choice() {
        let s = parse(&["--scratch-storage-class", "fast", "--scratch-size", "500Gi"]).unwrap();
        assert_eq!(
            s.scratch,
            Scratch::Ephemeral {
                storage_class: "fast".into(),
                size: Quantity("500Gi".into())
            }
        );
        let s = parse(&["--scratch-storage-class", "fast"]).unwrap();
        assert!(matches!(s.scratch, Scratch::Ephemeral { size, .. } if size.0 == "100Gi"));
        let s = parse(&["--scratch-size", "20Gi"]).unwrap();
        assert_eq!(
            s.scratch,
            Scratch::EmptyDir {
                size_limit: Quantity("20Gi".into()),
                bytes: 20 << 30,
            }
        );
        let err = parse(&["--scratch-size", "lots"]).unwrap_err().to_string();
        assert!(
            err.contains("--scratch-size") && err.contains("lots"),
            "{err}"
        );
    }

    #[test]
    fn runner_resources_from_flags() {
        let s = parse(&[
            "--runner-cpu-request=1",
            "--runner-cpu-limit=1.5",
            "--runner-memory-request=1Gi",
            "--runner-memory-limit=4Gi",
        ])
        .unwrap();
        assert_eq!(
            s.runner_resources,
            RunnerResources {
                cpu_request: Quantity("1".into()),
                cpu_limit: Quantity("1.5".into()),
                memory_request: Quantity("1Gi".into()),
                memory_limit: Quantity("4Gi".into()),
            }
        );
        for (flags, names) in [
            (
                &["--runner-cpu-request=3"][..],
                "--runner-cpu-request is above",
            ),
            (
                &["--runner-memory-limit=128Mi"],
                "--runner-memory-request is above",
            ),
            (&["--runner-cpu-limit=two"], "--runner-cpu-limit \"two\""),
            (&["--runner-cpu-limit=0m"], "--runner-cpu-limit \"0m\""),
            (&["--runner-memory-limit=2Gb"], "--runner-memory-limit"),
        ] {
            let err = parse(flags).unwrap_err().to_string();
            assert!(err.contains(names), "{flags:?}: {err}");
        }
    }

    #[test]
    fn runner_pod_placement_and_pull_secrets() {
        let s = parse(&[
            "--runner-image-pull-secret=regcred,other",
            "--runner-node-selector=zone=dc1",
            "--runner-node-selector=virtrigaud.io/migrations=true",
            "--runner-toleration=dedicated=migration:NoSchedule",
            "--runner-toleration=spot:NoExecute,gpu",
        ])
        .unwrap();
        assert_eq!(s.image_pull_secrets, ["regcred", "other"]);
        assert_eq!(
            s.node_selector,
            BTreeMap::from([
                ("zone".to_string(), "dc1".to_string()),
                ("virtrigaud.io/migrations".to_string(), "true".to_string())
            ])
        );
        let t = |k: &str, op: &str, v: Option<&str>, e: Option<&str>| Toleration {
            key: Some(k.into()),
            operator: Some(op.into()),
            value: v.map(Into::into),
            effect: e.map(Into::into),
            ..Toleration::default()
        };
        assert_eq!(
            s.tolerations,
            [
                t("dedicated", "Equal", Some("migration"), Some("NoSchedule")),
                t("spot", "Exists", None, Some("NoExecute")),
                t("gpu", "Exists", None, None),
            ]
        );
        for (flag, named) in [
            ("--runner-node-selector=zone", "--runner-node-selector"),
            ("--runner-toleration=a:Sometimes", "--runner-toleration"),
            ("--runner-toleration==x", "--runner-toleration"),
        ] {
            let err = parse(&[flag]).unwrap_err().to_string();
            assert!(err.contains(named), "{flag}: {err}");
        }
    }

    #[test]
    fn runner_log_settings_reach_the_jobs_and_a_bad_filter_is_refused() {
        let s = parse(&[
            "--runner-log-format=json",
            "--runner-log-level=debug,kube=warn",
        ])
        .unwrap();
        assert_eq!(
            s.runner_log,
            (crd::logging::LogFormat::Json, "debug,kube=warn".to_string())
        );
        let err = parse(&["--runner-log-level=info,kube=loud"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--runner-log-level"), "{err}");
    }

    #[test]
    fn bad_flags_are_refused_with_the_flag_name() {
        let err = parse(&["--job-deadline", "1d"]).unwrap_err().to_string();
        assert!(err.contains("--job-deadline"), "{err}");
        let err = parse(&["--runner-pull-policy", "Sometimes"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--runner-pull-policy"), "{err}");
        assert_eq!(
            parse(&["--job-deadline", "90m"]).unwrap().job_deadline,
            Duration::from_secs(5400)
        );
    }

    #[test]
    fn runner_start_timeout_flag() {
        assert_eq!(
            parse(&["--runner-start-timeout=90s"])
                .unwrap()
                .runner_start_timeout,
            Duration::from_secs(90)
        );
        for bad in ["ten minutes", "0s", "5"] {
            let err = parse(&["--runner-start-timeout", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--runner-start-timeout"), "{bad}: {err}");
        }
    }
}
