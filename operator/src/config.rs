//! Command-line flags and the settings the controller derives from them.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::error::{Error, Result};

/// Flags of the `operator` binary (each also readable from the environment).
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "operator", version, about = "VirtRigaud migration operator")]
pub struct Args {
    /// Image of the runner Jobs.
    #[arg(
        long,
        env = "VRG_RUNNER_IMAGE",
        default_value = "virtrigaud/runner:dev"
    )]
    pub runner_image: String,

    /// imagePullPolicy of the runner container.
    #[arg(long, env = "VRG_RUNNER_PULL_POLICY", default_value = "IfNotPresent")]
    pub runner_pull_policy: String,

    /// Storage class of a generic ephemeral scratch volume for the runner (large disks). Without it the
    /// scratch space is an emptyDir on the node.
    #[arg(long, env = "VRG_SCRATCH_STORAGE_CLASS")]
    pub scratch_storage_class: Option<String>,

    /// Size of the scratch volume: the claim size with --scratch-storage-class, else the emptyDir's
    /// sizeLimit (no limit when unset).
    #[arg(long, env = "VRG_SCRATCH_SIZE")]
    pub scratch_size: Option<String>,

    /// activeDeadlineSeconds of a runner Job, as a duration (`24h`, `90m`).
    #[arg(long, env = "VRG_JOB_DEADLINE", default_value = "24h")]
    pub job_deadline: String,

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
}

/// Where the runner keeps temporary disk images.
#[derive(Clone, Debug, PartialEq)]
pub enum Scratch {
    /// An emptyDir on the node, optionally size-limited.
    EmptyDir {
        /// `sizeLimit` of the emptyDir.
        size_limit: Option<Quantity>,
    },
    /// A generic ephemeral volume (a PVC living as long as the pod) of a storage class.
    Ephemeral {
        /// The storage class.
        storage_class: String,
        /// The requested size.
        size: Quantity,
    },
}

/// Default size of an ephemeral scratch claim when --scratch-size is not given.
pub const DEFAULT_EPHEMERAL_SIZE: &str = "100Gi";

/// What the object builders need to know besides the migration.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Runner image.
    pub runner_image: String,
    /// Runner imagePullPolicy.
    pub image_pull_policy: String,
    /// Scratch volume.
    pub scratch: Scratch,
    /// Deadline of a runner Job.
    pub job_deadline: Duration,
    /// Deadline of a cleanup Job.
    pub cleanup_deadline: Duration,
    /// How long a missing reference is waited for.
    pub reference_grace: Duration,
    /// Runners may connect to loopback endpoints.
    pub allow_loopback_endpoints: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            runner_image: "virtrigaud/runner:dev".into(),
            image_pull_policy: "IfNotPresent".into(),
            scratch: Scratch::EmptyDir { size_limit: None },
            job_deadline: Duration::from_secs(24 * 3600),
            cleanup_deadline: Duration::from_secs(30 * 60),
            reference_grace: Duration::from_secs(120),
            allow_loopback_endpoints: false,
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

impl Settings {
    /// Validates the flags.
    pub fn from_args(args: &Args) -> Result<Self> {
        let scratch = match (&args.scratch_storage_class, &args.scratch_size) {
            (Some(class), size) if !class.is_empty() => Scratch::Ephemeral {
                storage_class: class.clone(),
                size: Quantity(
                    size.clone()
                        .unwrap_or_else(|| DEFAULT_EPHEMERAL_SIZE.into()),
                ),
            },
            (_, size) => Scratch::EmptyDir {
                size_limit: size.clone().map(Quantity),
            },
        };
        if !["Always", "IfNotPresent", "Never"].contains(&args.runner_pull_policy.as_str()) {
            return Err(Error::Config(format!(
                "--runner-pull-policy {:?}: expected Always, IfNotPresent or Never",
                args.runner_pull_policy
            )));
        }
        if args.runner_image.is_empty() {
            return Err(Error::Config("--runner-image must not be empty".into()));
        }
        Ok(Settings {
            runner_image: args.runner_image.clone(),
            image_pull_policy: args.runner_pull_policy.clone(),
            scratch,
            job_deadline: duration_flag("job-deadline", &args.job_deadline)?,
            cleanup_deadline: duration_flag("cleanup-deadline", &args.cleanup_deadline)?,
            reference_grace: crd::parse_duration(&args.reference_grace)
                .map_err(|e| Error::Config(format!("--reference-grace: {e}")))?,
            allow_loopback_endpoints: args.allow_loopback_endpoints,
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
        let s = parse(&[]).unwrap();
        assert_eq!(s, Settings::default());
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
                size_limit: Some(Quantity("20Gi".into()))
            }
        );
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
}
