//! The node agent's start-up and shutdown: client, pod network route, Node registration, and the
//! long-running tasks (heartbeat, kubelet API, pod watch).

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::net::TcpListener;

use crate::config::{NodeArgs, NodeConfig};
use crate::context::NodeContext;
use crate::error::{Error, Result};
use crate::images::ImageMap;
use crate::kubelet_api::{self, ApiState};
use crate::node::{self, NodeInfo};
use crate::pod_ip::Cidr;
use crate::{pod_manager, process};

/// How long containers get to stop when the node itself stops.
const NODE_STOP_GRACE: Duration = Duration::from_secs(5);

async fn client(args: &NodeArgs) -> Result<(Client, String, u16)> {
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .map_err(|e| Error::Kubeconfig(format!("{}: {e}", args.kubeconfig.display())))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(format!("{}: {e}", args.kubeconfig.display())))?;
    let (host, port) = match &args.apiserver {
        Some(addr) => {
            let (h, p) = addr.rsplit_once(':').ok_or_else(|| {
                Error::Config(format!("--apiserver {addr:?}: expected HOST:PORT"))
            })?;
            let p = p
                .parse()
                .map_err(|_| Error::Config(format!("--apiserver {addr:?}: bad port")))?;
            (h.to_string(), p)
        }
        None => (
            config.cluster_url.host().unwrap_or("127.0.0.1").to_string(),
            config.cluster_url.port_u16().unwrap_or(443),
        ),
    };
    let client = Client::try_from(config)?;
    Ok((client, host, port))
}

fn ip(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| Error::Spawn {
            program: "ip".into(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Config(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Makes every address of `cidr` local (AnyIP), so pods can listen on their own IP. Returns
/// whether the route was added (rather than already there).
pub fn ensure_pod_route(cidr: &Cidr) -> Result<bool> {
    let c = cidr.to_string();
    let present = !ip(&["route", "show", "table", "local", "type", "local", &c])?
        .trim()
        .is_empty();
    if !present {
        ip(&["route", "replace", "local", &c, "dev", "lo"])?;
    }
    Ok(!present)
}

/// Removes the route [`ensure_pod_route`] added.
pub fn remove_pod_route(cidr: &Cidr) -> Result<()> {
    ip(&["route", "del", "local", &cidr.to_string(), "dev", "lo"]).map(drop)
}

fn image_map(args: &NodeArgs) -> Result<ImageMap> {
    let mut images = ImageMap::new(Vec::new(), args.bin_dirs.clone());
    if let Some(file) = &args.image_config {
        images.extend(ImageMap::read_file(file)?);
    }
    let flags = args
        .images
        .iter()
        .map(|f| ImageMap::parse_entry(f))
        .collect::<Result<Vec<_>>>()?;
    images.extend(flags);
    Ok(images)
}

/// Runs the node until SIGTERM or SIGINT, then stops its container processes.
pub async fn run(args: NodeArgs) -> Result<()> {
    let cidr: Cidr = args.pod_cidr.parse()?;
    if let Some(shim) = &args.bind_shim
        && !shim.is_file()
    {
        return Err(Error::Config(format!(
            "--bind-shim {}: no such file",
            shim.display()
        )));
    }
    let images = image_map(&args)?;
    let tls = kubelet_api::tls_config(&args.tls_cert, &args.tls_key, &args.client_ca)?;
    let (client, apiserver_host, apiserver_port) = client(&args).await?;
    let added_route = !args.no_pod_route && ensure_pod_route(&cidr)?;
    let pods_root = args.world.join("pods");
    std::fs::create_dir_all(&pods_root).map_err(Error::io("create", &pods_root))?;
    let killed = process::kill_leftovers(&pods_root);
    if killed > 0 {
        tracing::warn!(
            killed,
            "killed container processes left by an earlier node run"
        );
    }

    let capacity = node::machine_capacity();
    let config = NodeConfig {
        node_name: args.node_name.clone(),
        pods_root: pods_root.clone(),
        nfs_root: args.world.join("nfs"),
        node_ip: args.node_ip.to_string(),
        pod_cidr: cidr,
        apiserver_host,
        apiserver_port,
        restart_backoff: args.restart_backoff,
        images,
        bind_shim: args.bind_shim.clone(),
    };
    let ctx = NodeContext::new(client.clone(), config, capacity);

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(Error::io("listen", args.listen.to_string()))?;
    let router = kubelet_api::router(ApiState {
        registry: ctx.registry.clone(),
        live: ctx.live_logs.clone(),
    });
    let api_task = tokio::spawn(kubelet_api::serve(listener, tls, router));
    tracing::info!(listen = %args.listen, "kubelet API serving");

    let info = NodeInfo {
        name: args.node_name.clone(),
        ip: args.node_ip.to_string(),
        port: args.listen.port(),
        capacity,
        max_pods: args.max_pods,
        pod_cidr: cidr.to_string(),
        taints: args
            .taints
            .iter()
            .map(|t| node::parse_taint(t))
            .collect::<Result<_>>()?,
    };
    let node = loop {
        match node::register(&client, &info).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!(error = %e, "node registration failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    tracing::info!(node = %info.name, pod_cidr = %cidr, "node ready");
    let heartbeat = tokio::spawn(node::heartbeat(
        client,
        info,
        node,
        args.lease_seconds,
        args.heartbeat,
    ));
    let pods = tokio::spawn(pod_manager::run(ctx.clone()));

    shutdown_signal().await;
    tracing::info!("stopping: no new containers; stopping running ones");
    ctx.shut_down();
    pods.abort();
    heartbeat.abort();
    api_task.abort();
    process::stop_recorded(&pods_root, NODE_STOP_GRACE).await;
    if added_route && let Err(e) = remove_pod_route(&cidr) {
        tracing::warn!(error = %e, "pod route not removed");
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // without signal handlers, run until killed
        return futures::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
