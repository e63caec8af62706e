//! The local e2e world's process node: a Kubernetes node agent that runs each container of the
//! pods bound to it as a local process (there is no container runtime on the test machine).
//!
//! It registers a Node, keeps its Lease and Ready condition fresh, watches the pods scheduled to
//! it, and for each pod: gives it an IP of its own, materialises its volumes, starts its
//! containers in private mount namespaces (so volume mount paths work unchanged), runs probes,
//! reports phase and container states with exit codes and termination messages, and tears the
//! pod down when it is deleted. Container logs are served on the kubelet port over TLS, so
//! `kubectl logs` works through the real API server.
//!
//! How Kubernetes concepts map onto processes:
//! - image: a local executable ([`images`]); `command`/`args`/`env`/`envFrom`/`$(VAR)` as in
//!   Kubernetes ([`mod@env`]);
//! - volumes: directories under `WORLD/pods/NS_POD_UID/volumes` (Secret, ConfigMap,
//!   downward API, projected with TokenRequest tokens refreshed at 80% of their life, emptyDir),
//!   `nfs` as `WORLD/nfs/SERVER/PATH`, `hostPath` as itself ([`volumes`]), bind-mounted at the
//!   mount paths in the container's own mount namespace, as is its termination message file
//!   ([`process`]);
//! - network: the host's namespace; each pod an address of the pod CIDR (a local route on `lo`,
//!   [`pod_ip`]); the `vrg-bindshim` preload moves binds to `0.0.0.0` and `[::]` onto the pod IP, so pods
//!   can use the same port; `KUBERNETES_SERVICE_HOST/PORT` name the real API server.
//!
//! Not done (a real kubelet does): resource limits and cgroups, `securityContext` (processes run
//! as root), `kubectl exec`/`attach`/`port-forward`, sidecar (restartable init) containers as
//! sidecars, lifecycle hooks, updating Secret/ConfigMap volumes after the start, Service
//! environment variables other than `KUBERNETES_*` (there is no kube-proxy), image pull secrets.
//! Statically linked programs are not affected by the bind preload. Mount points missing on the
//! host are created there as empty directories or files (as a runtime does in an image root).

pub mod agent;
pub mod config;
pub mod context;
pub mod env;
pub mod error;
pub mod images;
pub mod kubelet_api;
pub mod logs;
pub mod node;
pub mod objects;
pub mod pod_ip;
pub mod pod_manager;
pub mod pod_status;
pub mod pod_worker;
pub mod probes;
pub mod process;
pub mod volumes;

pub use error::{Error, Result};
