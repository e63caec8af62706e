//! `/nodes` and `/nodes/{node}/status` (pve-manager `PVE::API2::Nodes`).

use axum::extract::Path;
use serde_json::json;

use super::cluster::VERSION;
use super::{ApiOk, ApiParams, ApiResult, Authed, St, node_prop, validate, with_path};

fn host_uptime() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|u| u as u64)
        .unwrap_or(0)
}

fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `GET /nodes`.
pub async fn index(state: St, _auth: Authed, ApiParams(params): ApiParams) -> ApiResult {
    validate(&params, vec![])?;
    let node = state.node.name();
    let (total, avail) = meminfo();
    Ok(ApiOk::new(json!([{
        "node": node,
        "id": format!("node/{node}"),
        "type": "node",
        "status": "online",
        "level": "",
        "uptime": host_uptime(),
        "maxcpu": cpu_count(),
        "cpu": 0.01,
        "maxmem": total,
        "mem": total.saturating_sub(avail),
        "ssl_fingerprint": "",
    }])))
}

/// `GET /nodes/{node}/status` (needs `Sys.Audit` on `/nodes/{node}`).
pub async fn status(
    state: St,
    auth: Authed,
    Path(node): Path<String>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    auth.check(&format!("/nodes/{node}"), &["Sys.Audit"])?;
    let params = with_path(params, &[("node", &node)])?;
    validate(&params, vec![("node", node_prop())])?;
    state.node.check_node(&node)?;
    let (total, avail) = meminfo();
    let (disk_total, disk_used, disk_avail) = state
        .node
        .storages()
        .first()
        .map(|s| s.usage())
        .unwrap_or_default();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Ok(ApiOk::new(json!({
        "uptime": host_uptime(),
        "cpu": 0.01,
        "wait": 0,
        "loadavg": std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>(),
        "cpuinfo": { "cpus": cpu_count(), "sockets": 1, "cores": cpu_count(), "model": "pvesim" },
        "memory": { "total": total, "used": total.saturating_sub(avail), "free": avail, "available": avail },
        "swap": { "total": 0, "used": 0, "free": 0 },
        "rootfs": { "total": disk_total, "used": disk_used, "avail": disk_avail, "free": disk_avail },
        "kversion": format!("Linux {}", release.trim()),
        "pveversion": format!("pve-manager/{VERSION}/pvesim"),
        "boot-info": { "mode": "efi", "secureboot": 0 },
    })))
}
