//! `/nodes` and `/nodes/{node}/status` (pve-manager `PVE::API2::Nodes`).

use serde_json::json;

use super::cluster::VERSION;
use super::{ApiOk, ApiResult, Call};

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
pub async fn index(mut call: Call) -> ApiResult {
    call.args().await?;
    let node = call.node().name();
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
pub async fn status(mut call: Call) -> ApiResult {
    call.auth
        .check(&format!("/nodes/{}", call.path("node")), &["Sys.Audit"])?;
    call.node_args().await?;
    let (total, avail) = meminfo();
    let (disk_total, disk_used, disk_avail) = call
        .node()
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
