//! `/version` and `/cluster/*` (pve-manager `PVE::API2::Cluster`, `PVE::API2`).

use serde_json::{Value, json};

use super::{ApiOk, ApiResult, Call};
use crate::auth::Auth;
use crate::error::Error;
use crate::node::Node;
use crate::qemu_config::VmState;

/// The PVE release the simulator answers as.
pub const VERSION: &str = "9.1.1";
/// Release branch.
pub const RELEASE: &str = "9.1";

/// `GET /version`.
pub async fn version(mut call: Call) -> ApiResult {
    call.args().await?;
    Ok(ApiOk::new(
        json!({ "version": VERSION, "release": RELEASE, "repoid": "pvesim00" }),
    ))
}

/// `GET /cluster/nextid`: the first free VMID from 100, or the given one if it is free.
pub async fn nextid(mut call: Call) -> ApiResult {
    let args = call.args().await?;
    let data = &call.node().data;
    if let Some(vmid) = args.num::<u32>("vmid") {
        if VmState::exists(data, vmid) {
            return Err(Error::param("vmid", format!("VM {vmid} already exists")));
        }
        return Ok(ApiOk::new(vmid.to_string()));
    }
    let (lower, upper) = (100u32, 1_000_000u32);
    (lower..upper)
        .find(|id| !VmState::exists(data, *id))
        .map(|id| ApiOk::new(id.to_string()))
        .ok_or_else(|| {
            Error::failed(format!(
                "unable to get any free VMID in range [{lower}, {upper}]"
            ))
        })
}

/// One VM as a resource / list entry (`vmstatus`).
pub fn vm_status(vmid: u32, vm: &VmState, node: &str) -> Value {
    let running = vm.is_running();
    let uptime = vm
        .running_since
        .map(|s| (crate::datadir::now() - s).max(0))
        .unwrap_or(0);
    let mut v = json!({
        "vmid": vmid,
        "name": vm.name(vmid),
        "status": if running { "running" } else { "stopped" },
        "cpus": vm.cpus(),
        "maxmem": vm.memory_mib() * 1024 * 1024,
        "mem": 0,
        "maxdisk": vm.boot_disk_size(),
        "disk": 0,
        "cpu": 0,
        "uptime": uptime,
        "netin": 0,
        "netout": 0,
        "diskread": 0,
        "diskwrite": 0,
        "node": node,
    });
    if running {
        v["pid"] = json!(std::process::id());
        v["mem"] = json!(vm.memory_mib() * 1024 * 1024 / 4);
    }
    if let Some(lock) = vm.config.get("lock") {
        v["lock"] = json!(lock);
    }
    if let Some(tags) = vm.config.get("tags") {
        v["tags"] = json!(tags);
    }
    if vm.is_template() {
        v["template"] = json!(1);
    }
    v
}

/// `GET /cluster/resources`: VMs, storages and the node (filtered by `type`), each only if the token
/// may see it.
pub async fn resources(mut call: Call) -> ApiResult {
    let args = call.args().await?;
    let (node, auth) = (call.node(), &call.auth);
    let wanted = |kind: &str| args.get("type").is_none_or(|t| t == kind);
    let mut result = Vec::new();
    if wanted("vm") {
        result.extend(vm_resources(node, auth));
    }
    if wanted("node") {
        result.push(json!({
            "id": format!("node/{}", node.name()),
            "type": "node",
            "node": node.name(),
            "status": "online",
            "level": "",
            "cgroup-mode": 2,
        }));
    }
    if wanted("storage") {
        result.extend(storage_resources(node, auth));
    }
    Ok(ApiOk::new(result))
}

fn vm_resources(node: &Node, auth: &Auth) -> Vec<Value> {
    let visible = VmState::list(&node.data)
        .into_iter()
        .filter(|vmid| auth.has(&format!("/vms/{vmid}"), "VM.Audit"));
    visible
        .filter_map(|vmid| {
            let vm = node.load_vm(vmid).ok()?;
            let mut v = vm_status(vmid, &vm, node.name());
            v["id"] = json!(format!("qemu/{vmid}"));
            v["type"] = json!("qemu");
            v["maxcpu"] = v["cpus"].clone();
            v["template"] = json!(u8::from(vm.is_template()));
            v["hastate"] = Value::Null;
            Some(v)
        })
        .collect()
}

fn storage_resources(node: &Node, auth: &Auth) -> Vec<Value> {
    let visible = node
        .storages()
        .into_iter()
        .filter(|s| auth.has(&format!("/storage/{}", s.id), "Datastore.Audit"));
    visible
        .map(|storage| {
            let (total, used, _) = storage.usage();
            json!({
                "id": format!("storage/{}/{}", node.name(), storage.id),
                "type": "storage",
                "storage": storage.id,
                "node": node.name(),
                "status": "available",
                "plugintype": storage.kind.as_str(),
                "content": storage.content_string(),
                "shared": 0,
                "disk": used,
                "maxdisk": total,
            })
        })
        .collect()
}
