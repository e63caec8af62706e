//! `/nodes/{node}/qemu/...` (qemu-server `PVE::API2::Qemu`): list, create (with `import-from`),
//! config, status and power actions, destroy, snapshots. Checks run in PVE's order: privileges of the
//! method's `permissions` first, then parameter verification, then the method's own checks; long
//! work runs in a task whose UPID is returned.

use std::sync::Arc;

use serde_json::{Value, json};

use super::cluster::vm_status;
use super::{ApiOk, ApiResult, Args, Call};
use crate::auth::Auth;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::qemu_config::{self, Snapshot, VmState, config_json};
use crate::schema::Params;
use crate::tasks::TaskLog;
use crate::vm::{self, Update};

/// Every privilege that allows some config change (`$vm_config_perm_list`).
const VM_CONFIG_PRIVS: &[&str] = &[
    "VM.Config.Disk",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.HWType",
    "VM.Config.Options",
    "VM.Config.Cloudinit",
];

/// The `/vms/{vmid}` privilege path of a call.
fn vm_path(call: &Call) -> String {
    format!("/vms/{}", call.path("vmid"))
}

/// Runs a worker on the node's task list with a log closure.
fn spawn(
    node: &Arc<Node>,
    kind: &str,
    id: &str,
    user: &str,
    work: impl FnOnce(&Node, &dyn Fn(&str)) -> Result<()> + Send + 'static,
) -> ApiResult {
    let worker_node = Arc::clone(node);
    let upid = node.tasks.spawn(kind, id, user, move |log: &TaskLog| {
        let line = |l: &str| log.line(l);
        work(&worker_node, &line)
    })?;
    Ok(ApiOk::new(upid))
}

/// `skiplock` is for root@pam only (never a token).
fn skiplock(args: &Args, auth: &Auth) -> Result<bool> {
    let skiplock = args.flag("skiplock");
    if skiplock && !auth.is_root() {
        return Err(Error::param("skiplock", "Only root may use this option."));
    }
    Ok(skiplock)
}

/// `GET /nodes/{node}/qemu`: the VMs the token may audit.
pub async fn list(mut call: Call) -> ApiResult {
    let args = call.node_args().await?;
    let node = call.node();
    let visible = VmState::list(&node.data)
        .into_iter()
        .filter(|vmid| call.auth.has(&format!("/vms/{vmid}"), "VM.Audit"));
    let result: Vec<Value> = visible
        .filter_map(|vmid| {
            let vm = node.load_vm(vmid).ok()?;
            let mut v = vm_status(vmid, &vm, args.str("node"));
            v.as_object_mut()?.remove("node");
            Some(v)
        })
        .collect();
    Ok(ApiOk::new(result))
}

/// Options of the create call that are not VM config keys.
const CREATE_OPTIONS: &[&str] = &[
    "node",
    "vmid",
    "storage",
    "start",
    "pool",
    "unique",
    "force",
    "archive",
    "live-restore",
    "bwlimit",
    "ha-managed",
    "import-working-storage",
];

/// Checks the privileges for setting config keys (`check_vm_modify_config_perm`).
fn check_config_privs(auth: &Auth, vmid: u32, keys: impl Iterator<Item = String>) -> Result<()> {
    for key in keys {
        auth.check(&format!("/vms/{vmid}"), &[vm::config_privilege(&key)])?;
    }
    Ok(())
}

/// The privilege checks of create, made inside the method (after verification).
fn check_create_privs(auth: &Auth, args: &Args) -> Result<()> {
    let vmid = args.vmid();
    if let Some(s) = args.get("storage") {
        auth.check(&format!("/storage/{s}"), &["Datastore.AllocateSpace"])?;
    }
    if args.flag("start") {
        auth.check(&format!("/vms/{vmid}"), &["VM.PowerMgmt"])?;
    }
    if !auth.has(&format!("/vms/{vmid}"), "VM.Allocate") {
        return Err(Error::Permission(String::new()));
    }
    Ok(())
}

/// `create_and_lock_config`: the VMID must be free on the node.
fn create_and_lock(node: &Node, vmid: u32) -> Result<()> {
    let _guard = node.lock();
    if VmState::exists(&node.data, vmid) {
        return Err(Error::failed(format!(
            "unable to create VM {vmid} - VM {vmid} already exists on node '{}'",
            node.name()
        )));
    }
    let vm = VmState {
        config: [("lock".to_string(), "create".to_string())].into(),
        ..VmState::default()
    };
    vm.save(&node.data, vmid)
}

/// `POST /nodes/{node}/qemu`: creates a VM; disks with `<storage>:<GiB>` are allocated, with
/// `<storage>:0,import-from=<volume>` imported.
pub async fn create(mut call: Call) -> ApiResult {
    let args = call.node_args().await?;
    let vmid = args.vmid();
    if args.get("archive").is_some() {
        return Err(Error::failed(
            "restore from a backup archive is not implemented by the simulator",
        ));
    }
    check_create_privs(&call.auth, &args)?;
    let storage = args.get("storage").map(str::to_string);
    let mut settings = args.rest(CREATE_OPTIONS);
    let node = call.node();
    if !settings.is_empty() {
        vm::check_storage_access(node, &call.auth, vmid, &settings, storage.as_deref())?;
        check_config_privs(&call.auth, vmid, settings.keys().cloned())?;
        vm::check_drive_params(node, &mut settings)?;
        qemu_config::add_random_macs(&mut settings)?;
    }
    create_and_lock(node, vmid)?;
    let start = args.flag("start");
    spawn(
        node,
        "qmcreate",
        &vmid.to_string(),
        &call.auth.tokenid,
        move |node, log| vm::create_vm_worker(node, vmid, settings, storage, start, log),
    )
}

/// `GET /nodes/{node}/qemu/{vmid}`: the directory index.
pub async fn vm_index(mut call: Call) -> ApiResult {
    let args = call.node_args().await?;
    call.node().load_vm(args.vmid())?;
    let subdirs = [
        "config",
        "pending",
        "status",
        "unlink",
        "vncproxy",
        "termproxy",
        "migrate",
        "resize",
        "move",
        "rrd",
        "rrddata",
        "monitor",
        "agent",
        "snapshot",
        "spiceproxy",
        "sendkey",
        "firewall",
        "mtunnel",
        "remote_migrate",
    ];
    let index: Vec<Value> = subdirs.iter().map(|s| json!({ "subdir": s })).collect();
    Ok(ApiOk::new(index))
}

/// `DELETE /nodes/{node}/qemu/{vmid}`.
pub async fn destroy(mut call: Call) -> ApiResult {
    call.auth.check(&vm_path(&call), &["VM.Allocate"])?;
    let args = call.node_args().await?;
    let vmid = args.vmid();
    let skiplock = skiplock(&args, &call.auth)?;
    let (purge, unreferenced) = (args.flag("purge"), args.flag("destroy-unreferenced-disks"));
    let vm = call.node().load_vm(vmid)?;
    if vm.config.get("protection").is_some_and(|p| p == "1") {
        return Err(Error::failed(format!(
            "can't remove VM {vmid} - protection mode enabled"
        )));
    }
    if vm.is_running() {
        return Err(Error::failed(format!(
            "VM {vmid} is running - destroy failed"
        )));
    }
    let user = &call.auth.tokenid;
    spawn(
        call.node(),
        "qmdestroy",
        &vmid.to_string(),
        user,
        move |node, log| vm::destroy_vm(node, vmid, skiplock, purge, unreferenced, log),
    )
}

/// A snapshot's config as the API shows it (with `snaptime`, `description`, `parent`).
fn snapshot_json(snap: &Snapshot) -> serde_json::Map<String, Value> {
    let mut config = config_json(&snap.config);
    config.insert("snaptime".into(), json!(snap.snaptime));
    config.insert("description".into(), json!(snap.description));
    if let Some(parent) = &snap.parent {
        config.insert("parent".into(), json!(parent));
    }
    config
}

fn snapshot<'a>(vm: &'a VmState, name: &str) -> Result<&'a Snapshot> {
    vm.snapshots
        .get(name)
        .ok_or_else(|| Error::failed(format!("snapshot '{name}' does not exist")))
}

/// `GET /nodes/{node}/qemu/{vmid}/config`: the config (or a snapshot's) with its digest.
pub async fn config_get(mut call: Call) -> ApiResult {
    call.auth.check(&vm_path(&call), &["VM.Audit"])?;
    let args = call.node_args().await?;
    let vm = call.node().load_vm(args.vmid())?;
    let mut config = match args.get("snapshot") {
        Some(name) => {
            let snap = snapshot(&vm, name)?;
            let mut c = config_json(&snap.config);
            c.insert("snaptime".into(), json!(snap.snaptime));
            if !snap.description.is_empty() {
                c.insert("description".into(), json!(snap.description));
            }
            c
        }
        None => config_json(&vm.config),
    };
    config.insert("digest".into(), json!(vm.digest()));
    Ok(ApiOk::new(Value::Object(config)))
}

/// Options of the update calls that are not VM config keys.
const UPDATE_OPTIONS: &[&str] = &[
    "node",
    "vmid",
    "skiplock",
    "delete",
    "revert",
    "digest",
    "force",
    "background_delay",
    "import-working-storage",
];

/// The `delete` list, each an existing config key that is not also set.
fn deletions(args: &Args, settings: &Params) -> Result<Vec<String>> {
    let delete: Vec<String> = args
        .get("delete")
        .map(|d| {
            crate::schema::formats::split_list(d)
                .into_iter()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    for key in &delete {
        if settings.contains_key(key) {
            return Err(Error::param(
                "delete",
                format!("you can't use '-{key}' and -delete {key}' at the same time"),
            ));
        }
        if crate::schema::api().qemu_config().get(key).is_none() {
            return Err(Error::param(
                "delete",
                format!("invalid configuration ID '{key}'"),
            ));
        }
    }
    Ok(delete)
}

/// Checks an update request (`update_vm_api` before its worker).
fn prepare_update(node: &Node, auth: &Auth, args: &Args) -> Result<Update> {
    let vmid = args.vmid();
    let skiplock = skiplock(args, auth)?;
    let mut settings = args.rest(UPDATE_OPTIONS);
    let delete = deletions(args, &settings)?;
    if settings.is_empty() && delete.is_empty() {
        return Err(Error::failed("no options specified"));
    }
    check_config_privs(auth, vmid, settings.keys().chain(delete.iter()).cloned())?;
    node.load_vm(vmid)?;
    vm::check_storage_access(node, auth, vmid, &settings, None)?;
    vm::check_drive_params(node, &mut settings)?;
    qemu_config::add_random_macs(&mut settings)?;
    Ok(Update {
        settings,
        delete,
        digest: args.get("digest").map(str::to_string),
        skiplock,
    })
}

/// `POST /nodes/{node}/qemu/{vmid}/config`: asynchronous update (returns a UPID).
pub async fn config_post(mut call: Call) -> ApiResult {
    call.auth.check_any(&vm_path(&call), VM_CONFIG_PRIVS)?;
    let args = call.node_args().await?;
    let vmid = args.vmid();
    let update = prepare_update(call.node(), &call.auth, &args)?;
    let user = &call.auth.tokenid;
    spawn(
        call.node(),
        "qmconfig",
        &vmid.to_string(),
        user,
        move |node, log| vm::update_config(node, vmid, update, log),
    )
}

/// `PUT /nodes/{node}/qemu/{vmid}/config`: synchronous update.
pub async fn config_put(mut call: Call) -> ApiResult {
    call.auth.check_any(&vm_path(&call), VM_CONFIG_PRIVS)?;
    let args = call.node_args().await?;
    let vmid = args.vmid();
    let update = prepare_update(call.node(), &call.auth, &args)?;
    let node = Arc::clone(call.node());
    tokio::task::spawn_blocking(move || {
        let log = |l: &str| tracing::info!(vmid, "{l}");
        vm::update_config(&node, vmid, update, &log)
    })
    .await
    .map_err(|e| Error::failed(format!("update worker failed: {e}")))??;
    Ok(ApiOk::null())
}

/// `GET /nodes/{node}/qemu/{vmid}/status`: the directory index.
pub async fn status_index(mut call: Call) -> ApiResult {
    call.auth.check(&vm_path(&call), &["VM.Audit"])?;
    let args = call.node_args().await?;
    call.node().load_vm(args.vmid())?;
    let index: Vec<Value> = [
        "current", "start", "stop", "reset", "shutdown", "suspend", "reboot",
    ]
    .iter()
    .map(|s| json!({ "subdir": s }))
    .collect();
    Ok(ApiOk::new(index))
}

/// `GET /nodes/{node}/qemu/{vmid}/status/current`.
pub async fn status_current(mut call: Call) -> ApiResult {
    call.auth.check(&vm_path(&call), &["VM.Audit"])?;
    let args = call.node_args().await?;
    let vmid = args.vmid();
    let vm = call.node().load_vm(vmid)?;
    let mut status = vm_status(vmid, &vm, args.str("node"));
    let obj = status.as_object_mut().expect("vm_status is an object");
    obj.remove("node");
    let qmpstatus = if vm.is_running() {
        "running"
    } else {
        "stopped"
    };
    obj.insert("qmpstatus".into(), json!(qmpstatus));
    obj.insert("ha".into(), json!({ "managed": 0 }));
    let agent = vm.config.get("agent");
    if agent.is_some_and(|a| a.starts_with('1') || a.contains("enabled=1")) {
        obj.insert("agent".into(), json!(1));
    }
    Ok(ApiOk::new(status))
}

/// `POST .../status/{start|stop|shutdown}`: the power state flips in a `qm<action>` task.
async fn power(mut call: Call, kind: &'static str, start: bool) -> ApiResult {
    call.auth.check(&vm_path(&call), &["VM.PowerMgmt"])?;
    let args = call.node_args().await?;
    let vmid = args.vmid();
    let skiplock = skiplock(&args, &call.auth)?;
    call.node().load_vm(vmid)?;
    spawn(
        call.node(),
        kind,
        &vmid.to_string(),
        &call.auth.tokenid,
        move |node, _log| {
            if start {
                vm::start_vm(node, vmid, skiplock)
            } else {
                vm::stop_vm(node, vmid, skiplock)
            }
        },
    )
}

/// `POST /nodes/{node}/qemu/{vmid}/status/start`.
pub async fn start(call: Call) -> ApiResult {
    power(call, "qmstart", true).await
}

/// `POST /nodes/{node}/qemu/{vmid}/status/stop`.
pub async fn stop(call: Call) -> ApiResult {
    power(call, "qmstop", false).await
}

/// `POST /nodes/{node}/qemu/{vmid}/status/shutdown`.
pub async fn shutdown(call: Call) -> ApiResult {
    power(call, "qmshutdown", false).await
}

/// `GET /nodes/{node}/qemu/{vmid}/snapshot`: the snapshots plus `current`.
pub async fn snapshot_list(mut call: Call) -> ApiResult {
    call.auth.check(&vm_path(&call), &["VM.Audit"])?;
    let args = call.node_args().await?;
    let vm = call.node().load_vm(args.vmid())?;
    let mut result: Vec<Value> = vm
        .snapshots
        .iter()
        .map(|(name, snap)| {
            let mut item = json!({
                "name": name,
                "snaptime": snap.snaptime,
                "vmstate": 0,
                "description": snap.description,
            });
            if let Some(parent) = &snap.parent {
                item["parent"] = json!(parent);
            }
            if let Some(state) = &snap.snapstate {
                item["snapstate"] = json!(state);
            }
            item
        })
        .collect();
    let mut current = json!({
        "name": "current",
        "digest": vm.digest(),
        "running": u8::from(vm.is_running()),
        "description": "You are here!",
    });
    if let Some(parent) = vm.config.get("parent") {
        current["parent"] = json!(parent);
    }
    result.push(current);
    Ok(ApiOk::new(result))
}

/// `POST /nodes/{node}/qemu/{vmid}/snapshot`.
pub async fn snapshot_create(mut call: Call) -> ApiResult {
    call.auth.check(&vm_path(&call), &["VM.Snapshot"])?;
    let args = call.node_args().await?;
    let vmid = args.vmid();
    let snapname = args.str("snapname").to_string();
    let reserved = match snapname.as_str() {
        "current" => Some("current"),
        name if name.eq_ignore_ascii_case("pending") => Some("pending"),
        _ => None,
    };
    if let Some(name) = reserved {
        return Err(Error::failed(format!(
            "unable to use snapshot name '{name}' (reserved name)"
        )));
    }
    call.node().load_vm(vmid)?;
    let description = args.get("description").map(str::to_string);
    spawn(
        call.node(),
        "qmsnapshot",
        &vmid.to_string(),
        &call.auth.tokenid,
        move |node, log| vm::snapshot_create(node, vmid, &snapname, description, log),
    )
}

/// `GET /nodes/{node}/qemu/{vmid}/snapshot/{snapname}`: the directory index.
pub async fn snapshot_index(mut call: Call) -> ApiResult {
    call.node_args().await?;
    Ok(ApiOk::new(
        json!([{ "cmd": "rollback" }, { "cmd": "config" }]),
    ))
}

/// `GET /nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config`.
pub async fn snapshot_config(mut call: Call) -> ApiResult {
    call.auth.check(&vm_path(&call), &["VM.Audit"])?;
    let args = call.node_args().await?;
    let vm = call.node().load_vm(args.vmid())?;
    let snap = snapshot(&vm, args.str("snapname"))?;
    Ok(ApiOk::new(Value::Object(snapshot_json(snap))))
}

/// `PUT /nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config`: sets the description.
pub async fn snapshot_config_update(mut call: Call) -> ApiResult {
    call.auth.check(&vm_path(&call), &["VM.Snapshot"])?;
    let args = call.node_args().await?;
    let snapname = args.str("snapname");
    call.node().update_vm(args.vmid(), |vm| {
        vm.check_lock()?;
        let snap = vm
            .snapshots
            .get_mut(snapname)
            .ok_or_else(|| Error::failed(format!("snapshot '{snapname}' does not exist")))?;
        if let Some(description) = args.get("description") {
            snap.description = description.to_string();
        }
        Ok(())
    })?;
    Ok(ApiOk::null())
}

/// `DELETE /nodes/{node}/qemu/{vmid}/snapshot/{snapname}`.
pub async fn snapshot_delete(mut call: Call) -> ApiResult {
    call.auth.check(&vm_path(&call), &["VM.Snapshot"])?;
    let args = call.node_args().await?;
    let vmid = args.vmid();
    let (snapname, force) = (args.str("snapname").to_string(), args.flag("force"));
    let user = &call.auth.tokenid;
    spawn(
        call.node(),
        "qmdelsnapshot",
        &vmid.to_string(),
        user,
        move |node, log| vm::snapshot_delete(node, vmid, &snapname, force, log),
    )
}
