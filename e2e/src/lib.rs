//! The local e2e world's process node: a Kubernetes node agent that runs each container of the
//! pods bound to it as a local process (there is no container runtime on the test machine).
//!
//! It registers a Node, keeps its Lease and Ready condition fresh, watches the pods scheduled to
//! it, and for each pod: gives it an IP of its own, materialises its volumes, starts its
//! containers in private mount namespaces (so volume mount paths work unchanged), runs probes,
//! reports phase and container states with exit codes and termination messages, and tears the
//! pod down when it is deleted. Container logs are served on the kubelet port over TLS, so
//! `kubectl logs` works through the real API server.

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
