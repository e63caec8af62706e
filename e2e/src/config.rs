//! Command-line configuration of the process node.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::images::ImageMap;
use crate::pod_ip::Cidr;

/// A Kubernetes node that runs containers as local processes.
#[derive(Parser, Debug, Clone)]
#[command(name = "e2e-node", version, about)]
pub struct NodeArgs {
    /// Kubeconfig to reach the API server (the admin one of the e2e world by default).
    #[arg(long, env = "KUBECONFIG", default_value = "e2e/.world/kubeconfig")]
    pub kubeconfig: PathBuf,

    /// Name of the Node object.
    #[arg(long, default_value = "e2e-node")]
    pub node_name: String,

    /// The e2e world directory: pods live in `WORLD/pods`, NFS stand-ins in `WORLD/nfs`.
    #[arg(long, default_value = "e2e/.world")]
    pub world: PathBuf,

    /// Image mapping REPOSITORY=/path/to/binary (repeatable; see `images` for the matching rules).
    #[arg(long = "image", value_name = "REPOSITORY=PATH")]
    pub images: Vec<String>,

    /// YAML file with more image mappings (`repository: /path/to/binary`).
    #[arg(long)]
    pub image_config: Option<PathBuf>,

    /// Directories where a container command's basename is looked up (repeatable).
    #[arg(long = "bin-dir")]
    pub bin_dirs: Vec<PathBuf>,

    /// Address of the kubelet API (TLS).
    #[arg(long, default_value = "127.0.0.1:10250")]
    pub listen: std::net::SocketAddr,

    /// Serving certificate of the kubelet API (PEM).
    #[arg(long)]
    pub tls_cert: PathBuf,

    /// Its private key (PEM).
    #[arg(long)]
    pub tls_key: PathBuf,

    /// CA that signs the API server's kubelet client certificate.
    #[arg(long)]
    pub client_ca: PathBuf,

    /// Pod IP range, made local with `ip route replace local <cidr> dev lo`.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub pod_cidr: String,

    /// Do not add the local route for the pod CIDR (it must already be there).
    #[arg(long)]
    pub no_pod_route: bool,

    /// The node's IP (InternalIP address and every pod's hostIP).
    #[arg(long, default_value = "127.0.0.1")]
    pub node_ip: std::net::Ipv4Addr,

    /// API server address for pods (KUBERNETES_SERVICE_HOST:PORT); the kubeconfig's server by default.
    #[arg(long)]
    pub apiserver: Option<String>,

    /// First restart back-off of a crashed container (doubles up to 5 minutes).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub restart_backoff: Duration,

    /// Lease duration of the node heartbeat.
    #[arg(long, default_value_t = 40)]
    pub lease_seconds: i32,

    /// How often the Lease is renewed and the Ready condition refreshed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// The vrg-bindshim library (libvrg_bindshim.so): preloaded into every container so that binds
    /// to `0.0.0.0` / `[::]` land on the pod IP (no port clashes between pods, nothing exposed on the
    /// machine's other addresses). Without it, pods share the host's ports.
    #[arg(long)]
    pub bind_shim: Option<PathBuf>,

    /// Taints the Node is registered with, `key[=value]:Effect` (repeatable), like the kubelet's
    /// `--register-with-taints`.
    #[arg(long = "register-with-taint", value_name = "KEY[=VALUE]:EFFECT")]
    pub taints: Vec<String>,

    /// Maximum number of pods (Node capacity).
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
}

/// The settings the pod workers use.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Node name.
    pub node_name: String,
    /// `<world>/pods`.
    pub pods_root: PathBuf,
    /// `<world>/nfs`.
    pub nfs_root: PathBuf,
    /// Node IP.
    pub node_ip: String,
    /// Pod IP range.
    pub pod_cidr: Cidr,
    /// API server host for pods.
    pub apiserver_host: String,
    /// API server port for pods.
    pub apiserver_port: u16,
    /// First restart back-off.
    pub restart_backoff: Duration,
    /// Images.
    pub images: ImageMap,
    /// LD_PRELOAD library moving wildcard binds to the pod IP.
    pub bind_shim: Option<PathBuf>,
}
