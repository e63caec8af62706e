//! `/nodes/{node}/qemu/...` (qemu-server `PVE::API2::Qemu`): list, create (with `import-from`),
//! config, status and power actions, destroy, snapshots. Checks run in PVE's order: privileges of the
//! method's `permissions` first, then parameter verification, then the method's own checks; long
//! work runs in a task whose UPID is returned.

use std::sync::Arc;

use axum::extract::Path;
use serde_json::{Value, json};

use super::cluster::vm_status;
use super::{
    ApiOk, ApiParams, ApiResult, Authed, St, node_prop, storage_prop, validate, vmid_prop,
    with_path,
};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::qemu_config::{self, VmState, config_json};
use crate::schema::{self, Params, Prop, Schema};
use crate::tasks::TaskLog;
use crate::vm;

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

fn snapname_prop() -> Prop {
    Prop::string()
        .verify(schema::verify_configid)
        .max_length(40)
}

fn parse_vmid(value: &str) -> u32 {
    value.parse().unwrap_or_default()
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

/// `GET /nodes/{node}/qemu`: the VMs the token may audit.
pub async fn list(
    state: St,
    auth: Authed,
    Path(node): Path<String>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    let params = with_path(params, &[("node", &node)])?;
    validate(
        &params,
        vec![("node", node_prop()), ("full", Prop::boolean().optional())],
    )?;
    state.node.check_node(&node)?;
    let mut result = Vec::new();
    for vmid in VmState::list(&state.node.data) {
        if !auth.has(&format!("/vms/{vmid}"), "VM.Audit") {
            continue;
        }
        if let Ok(vm) = state.node.load_vm(vmid) {
            let mut v = vm_status(vmid, &vm, &node);
            if let Some(obj) = v.as_object_mut() {
                obj.remove("node");
            }
            result.push(v);
        }
    }
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

fn create_schema() -> Schema {
    Schema::new(vec![
        ("node", node_prop()),
        ("vmid", vmid_prop()),
        ("storage", storage_prop().optional()),
        ("start", Prop::boolean().optional()),
        ("pool", Prop::string().optional()),
        ("archive", Prop::string().optional().max_length(255)),
        ("force", Prop::boolean().optional().requires("archive")),
        ("unique", Prop::boolean().optional().requires("archive")),
        ("live-restore", Prop::boolean().optional()),
        ("bwlimit", Prop::integer().optional().range(Some(0), None)),
        ("ha-managed", Prop::boolean().optional()),
        ("import-working-storage", storage_prop().optional()),
    ])
    .with_dynamic(qemu_config::config_prop)
}

/// Checks the privileges for setting config keys (`check_vm_modify_config_perm`).
fn check_config_privs(
    auth: &crate::auth::Auth,
    vmid: u32,
    keys: impl Iterator<Item = String>,
) -> Result<()> {
    for key in keys {
        auth.check(&format!("/vms/{vmid}"), &[vm::config_privilege(&key)])?;
    }
    Ok(())
}

/// `POST /nodes/{node}/qemu`: creates a VM; disks with `<storage>:<GiB>` are allocated, with
/// `<storage>:0,import-from=<volume>` imported.
pub async fn create(
    state: St,
    auth: Authed,
    Path(node): Path<String>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    let params = with_path(params, &[("node", &node)])?;
    create_schema().validate(&params)?;
    state.node.check_node(&node)?;
    let vmid = parse_vmid(&params["vmid"]);
    let storage = params.get("storage").cloned();
    if params.contains_key("archive") {
        return Err(Error::failed(
            "restore from a backup archive is not implemented by the simulator",
        ));
    }
    if let Some(s) = &storage {
        auth.check(&format!("/storage/{s}"), &["Datastore.AllocateSpace"])?;
    }
    let start = params.get("start").is_some_and(|v| v == "1");
    if start {
        auth.check(&format!("/vms/{vmid}"), &["VM.PowerMgmt"])?;
    }
    if !auth.has(&format!("/vms/{vmid}"), "VM.Allocate") {
        return Err(Error::Permission(String::new()));
    }
    let mut settings: Params = params
        .into_iter()
        .filter(|(k, _)| !CREATE_OPTIONS.contains(&k.as_str()))
        .collect();
    let node_ref = &state.node;
    if !settings.is_empty() {
        vm::check_storage_access(node_ref, &auth, vmid, &settings, storage.as_deref())?;
        check_config_privs(&auth, vmid, settings.keys().cloned())?;
        vm::check_drive_params(node_ref, &mut settings)?;
        qemu_config::add_random_macs(&mut settings)?;
    }
    {
        let _guard = node_ref.lock();
        if VmState::exists(&node_ref.data, vmid) {
            return Err(Error::failed(format!(
                "unable to create VM {vmid} - VM {vmid} already exists on node '{}'",
                node_ref.name()
            )));
        }
        let vm = VmState {
            config: [("lock".to_string(), "create".to_string())].into(),
            ..VmState::default()
        };
        vm.save(&node_ref.data, vmid)?;
    }
    spawn(
        node_ref,
        "qmcreate",
        &vmid.to_string(),
        &auth.tokenid,
        move |node, log| vm::create_vm_worker(node, vmid, settings, storage, start, log),
    )
}

/// `GET /nodes/{node}/qemu/{vmid}`: the directory index.
pub async fn vm_index(
    state: St,
    auth: Authed,
    Path((node, vmid)): Path<(String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    let params = with_path(params, &[("node", &node), ("vmid", &vmid)])?;
    validate(&params, vec![("node", node_prop()), ("vmid", vmid_prop())])?;
    state.node.check_node(&node)?;
    let _ = auth;
    state.node.load_vm(parse_vmid(&vmid))?;
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
    Ok(ApiOk::new(
        subdirs
            .iter()
            .map(|s| json!({ "subdir": s }))
            .collect::<Vec<_>>(),
    ))
}

/// `DELETE /nodes/{node}/qemu/{vmid}`.
pub async fn destroy(
    state: St,
    auth: Authed,
    Path((node, vmid)): Path<(String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    auth.check(&format!("/vms/{vmid}"), &["VM.Allocate"])?;
    let params = with_path(params, &[("node", &node), ("vmid", &vmid)])?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("vmid", vmid_prop()),
            ("skiplock", Prop::boolean().optional()),
            ("purge", Prop::boolean().optional()),
            ("destroy-unreferenced-disks", Prop::boolean().optional()),
        ],
    )?;
    state.node.check_node(&node)?;
    let vmid = parse_vmid(&vmid);
    let flag = |k: &str| params.get(k).is_some_and(|v| v == "1");
    let (skiplock, purge, unreferenced) = (
        flag("skiplock"),
        flag("purge"),
        flag("destroy-unreferenced-disks"),
    );
    if skiplock && !auth.is_root() {
        return Err(Error::param("skiplock", "Only root may use this option."));
    }
    let vm = state.node.load_vm(vmid)?;
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
    spawn(
        &state.node,
        "qmdestroy",
        &vmid.to_string(),
        &auth.tokenid,
        move |node, log| vm::destroy_vm(node, vmid, skiplock, purge, unreferenced, log),
    )
}

/// `GET /nodes/{node}/qemu/{vmid}/config`: the config (or a snapshot's) with its digest.
pub async fn config_get(
    state: St,
    auth: Authed,
    Path((node, vmid)): Path<(String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    auth.check(&format!("/vms/{vmid}"), &["VM.Audit"])?;
    let params = with_path(params, &[("node", &node), ("vmid", &vmid)])?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("vmid", vmid_prop()),
            ("current", Prop::boolean().optional()),
            ("snapshot", snapname_prop().optional()),
        ],
    )?;
    state.node.check_node(&node)?;
    let vm = state.node.load_vm(parse_vmid(&vmid))?;
    let mut config = match params.get("snapshot") {
        Some(name) => {
            let snap = vm
                .snapshots
                .get(name)
                .ok_or_else(|| Error::failed(format!("snapshot '{name}' does not exist")))?;
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

fn update_schema(post: bool) -> Schema {
    let mut props = vec![
        ("node", node_prop()),
        ("vmid", vmid_prop()),
        ("skiplock", Prop::boolean().optional()),
        ("delete", Prop::string().optional()),
        ("revert", Prop::string().optional()),
        ("digest", Prop::string().optional().max_length(64)),
        ("force", Prop::boolean().optional().requires("delete")),
    ];
    if post {
        props.push((
            "background_delay",
            Prop::integer().optional().range(Some(1), Some(30)),
        ));
    }
    Schema::new(props).with_dynamic(qemu_config::config_prop)
}

/// Checks an update request and returns (settings, deletions, digest, skiplock).
fn prepare_update(
    node: &Node,
    auth: &crate::auth::Auth,
    vmid: u32,
    params: &Params,
) -> Result<(Params, Vec<String>, Option<String>, bool)> {
    let skiplock = params.get("skiplock").is_some_and(|v| v == "1");
    if skiplock && !auth.is_root() {
        return Err(Error::param("skiplock", "Only root may use this option."));
    }
    let digest = params.get("digest").cloned();
    let delete: Vec<String> = params
        .get("delete")
        .map(|d| {
            d.split([',', ';', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut settings: Params = params
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "node"
                    | "vmid"
                    | "skiplock"
                    | "delete"
                    | "revert"
                    | "digest"
                    | "force"
                    | "background_delay"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for key in &delete {
        if settings.contains_key(key) {
            return Err(Error::param(
                "delete",
                format!("you can't use '-{key}' and -delete {key}' at the same time"),
            ));
        }
        if qemu_config::config_prop(key).is_none() {
            return Err(Error::param(
                "delete",
                format!("invalid configuration ID '{key}'"),
            ));
        }
    }
    if settings.is_empty() && delete.is_empty() {
        return Err(Error::failed("no options specified"));
    }
    check_config_privs(auth, vmid, settings.keys().chain(delete.iter()).cloned())?;
    node.load_vm(vmid)?;
    vm::check_storage_access(node, auth, vmid, &settings, None)?;
    vm::check_drive_params(node, &mut settings)?;
    qemu_config::add_random_macs(&mut settings)?;
    Ok((settings, delete, digest, skiplock))
}

/// `POST /nodes/{node}/qemu/{vmid}/config`: asynchronous update (returns a UPID).
pub async fn config_post(
    state: St,
    auth: Authed,
    Path((node, vmid)): Path<(String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    auth.check_any(&format!("/vms/{vmid}"), VM_CONFIG_PRIVS)?;
    let params = with_path(params, &[("node", &node), ("vmid", &vmid)])?;
    update_schema(true).validate(&params)?;
    state.node.check_node(&node)?;
    let vmid = parse_vmid(&vmid);
    let (settings, delete, digest, skiplock) = prepare_update(&state.node, &auth, vmid, &params)?;
    spawn(
        &state.node,
        "qmconfig",
        &vmid.to_string(),
        &auth.tokenid,
        move |node, log| vm::update_config(node, vmid, settings, delete, digest, skiplock, log),
    )
}

/// `PUT /nodes/{node}/qemu/{vmid}/config`: synchronous update.
pub async fn config_put(
    state: St,
    auth: Authed,
    Path((node, vmid)): Path<(String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    auth.check_any(&format!("/vms/{vmid}"), VM_CONFIG_PRIVS)?;
    let params = with_path(params, &[("node", &node), ("vmid", &vmid)])?;
    update_schema(false).validate(&params)?;
    state.node.check_node(&node)?;
    let vmid = parse_vmid(&vmid);
    let (settings, delete, digest, skiplock) = prepare_update(&state.node, &auth, vmid, &params)?;
    let node = Arc::clone(&state.node);
    tokio::task::spawn_blocking(move || {
        let log = |l: &str| tracing::info!(vmid, "{l}");
        vm::update_config(&node, vmid, settings, delete, digest, skiplock, &log)
    })
    .await
    .map_err(|e| Error::failed(format!("update worker failed: {e}")))??;
    Ok(ApiOk::null())
}

/// `GET /nodes/{node}/qemu/{vmid}/status/current`.
pub async fn status_current(
    state: St,
    auth: Authed,
    Path((node, vmid)): Path<(String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    auth.check(&format!("/vms/{vmid}"), &["VM.Audit"])?;
    let params = with_path(params, &[("node", &node), ("vmid", &vmid)])?;
    validate(&params, vec![("node", node_prop()), ("vmid", vmid_prop())])?;
    state.node.check_node(&node)?;
    let vmid = parse_vmid(&vmid);
    let vm = state.node.load_vm(vmid)?;
    let mut status = vm_status(vmid, &vm, &node);
    if let Some(obj) = status.as_object_mut() {
        obj.remove("node");
        obj.insert(
            "qmpstatus".into(),
            json!(if vm.is_running() {
                "running"
            } else {
                "stopped"
            }),
        );
        obj.insert("ha".into(), json!({ "managed": 0 }));
        if vm
            .config
            .get("agent")
            .is_some_and(|a| a.starts_with('1') || a.contains("enabled=1"))
        {
            obj.insert("agent".into(), json!(1));
        }
    }
    Ok(ApiOk::new(status))
}

/// `POST /nodes/{node}/qemu/{vmid}/status/{start|stop|shutdown|reboot}`.
pub async fn status_action(
    state: St,
    auth: Authed,
    Path((node, vmid, action)): Path<(String, String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    let kind = match action.as_str() {
        "start" => "qmstart",
        "stop" => "qmstop",
        "shutdown" => "qmshutdown",
        "reboot" => "qmreboot",
        _ => {
            return Err(Error::NotImplemented {
                method: "POST".into(),
                path: format!("/nodes/{node}/qemu/{vmid}/status/{action}"),
            });
        }
    };
    auth.check(&format!("/vms/{vmid}"), &["VM.PowerMgmt"])?;
    let params = with_path(params, &[("node", &node), ("vmid", &vmid)])?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("vmid", vmid_prop()),
            ("skiplock", Prop::boolean().optional()),
            ("timeout", Prop::integer().optional().range(Some(0), None)),
            ("forceStop", Prop::boolean().optional()),
            ("keepActive", Prop::boolean().optional()),
            ("overrule-shutdown", Prop::boolean().optional()),
        ],
    )?;
    state.node.check_node(&node)?;
    let vmid = parse_vmid(&vmid);
    let skiplock = params.get("skiplock").is_some_and(|v| v == "1");
    if skiplock && !auth.is_root() {
        return Err(Error::param("skiplock", "Only root may use this option."));
    }
    let vm = state.node.load_vm(vmid)?;
    if kind == "qmreboot" && !vm.is_running() {
        return Err(Error::failed(format!("VM {vmid} not running")));
    }
    let action = action.clone();
    spawn(
        &state.node,
        kind,
        &vmid.to_string(),
        &auth.tokenid,
        move |node, _log| match action.as_str() {
            "start" => vm::start_vm(node, vmid, skiplock),
            "reboot" => {
                vm::stop_vm(node, vmid, skiplock).and_then(|()| vm::start_vm(node, vmid, skiplock))
            }
            _ => vm::stop_vm(node, vmid, skiplock),
        },
    )
}

/// `GET /nodes/{node}/qemu/{vmid}/snapshot`: the snapshots plus `current`.
pub async fn snapshot_list(
    state: St,
    auth: Authed,
    Path((node, vmid)): Path<(String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    auth.check(&format!("/vms/{vmid}"), &["VM.Audit"])?;
    let params = with_path(params, &[("node", &node), ("vmid", &vmid)])?;
    validate(&params, vec![("node", node_prop()), ("vmid", vmid_prop())])?;
    state.node.check_node(&node)?;
    let vm = state.node.load_vm(parse_vmid(&vmid))?;
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
        "running": if vm.is_running() { 1 } else { 0 },
        "description": "You are here!",
    });
    if let Some(parent) = vm.config.get("parent") {
        current["parent"] = json!(parent);
    }
    result.push(current);
    Ok(ApiOk::new(result))
}

/// `POST /nodes/{node}/qemu/{vmid}/snapshot`.
pub async fn snapshot_create(
    state: St,
    auth: Authed,
    Path((node, vmid)): Path<(String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    auth.check(&format!("/vms/{vmid}"), &["VM.Snapshot"])?;
    let params = with_path(params, &[("node", &node), ("vmid", &vmid)])?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("vmid", vmid_prop()),
            ("snapname", snapname_prop()),
            ("vmstate", Prop::boolean().optional()),
            ("description", Prop::string().optional()),
        ],
    )?;
    state.node.check_node(&node)?;
    let vmid = parse_vmid(&vmid);
    let snapname = params["snapname"].clone();
    if snapname == "current" {
        return Err(Error::failed(
            "unable to use snapshot name 'current' (reserved name)",
        ));
    }
    if snapname.eq_ignore_ascii_case("pending") {
        return Err(Error::failed(
            "unable to use snapshot name 'pending' (reserved name)",
        ));
    }
    state.node.load_vm(vmid)?;
    let description = params.get("description").cloned();
    let user = auth.tokenid.clone();
    spawn(
        &state.node,
        "qmsnapshot",
        &vmid.to_string(),
        &user,
        move |node, log| vm::snapshot_create(node, vmid, &snapname, description, log),
    )
}

/// `GET /nodes/{node}/qemu/{vmid}/snapshot/{snapname}`: the directory index.
pub async fn snapshot_index(
    state: St,
    _auth: Authed,
    Path((node, vmid, snapname)): Path<(String, String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    let params = with_path(
        params,
        &[("node", &node), ("vmid", &vmid), ("snapname", &snapname)],
    )?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("vmid", vmid_prop()),
            ("snapname", snapname_prop()),
        ],
    )?;
    state.node.check_node(&node)?;
    Ok(ApiOk::new(
        json!([{ "cmd": "rollback" }, { "cmd": "config" }]),
    ))
}

/// `GET /nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config`.
pub async fn snapshot_config(
    state: St,
    auth: Authed,
    Path((node, vmid, snapname)): Path<(String, String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    auth.check(&format!("/vms/{vmid}"), &["VM.Audit"])?;
    let params = with_path(
        params,
        &[("node", &node), ("vmid", &vmid), ("snapname", &snapname)],
    )?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("vmid", vmid_prop()),
            ("snapname", snapname_prop()),
        ],
    )?;
    state.node.check_node(&node)?;
    let vm = state.node.load_vm(parse_vmid(&vmid))?;
    let snap = vm
        .snapshots
        .get(&snapname)
        .ok_or_else(|| Error::failed(format!("snapshot '{snapname}' does not exist")))?;
    let mut config = config_json(&snap.config);
    config.insert("snaptime".into(), json!(snap.snaptime));
    config.insert("description".into(), json!(snap.description));
    if let Some(parent) = &snap.parent {
        config.insert("parent".into(), json!(parent));
    }
    Ok(ApiOk::new(Value::Object(config)))
}

/// `DELETE /nodes/{node}/qemu/{vmid}/snapshot/{snapname}`.
pub async fn snapshot_delete(
    state: St,
    auth: Authed,
    Path((node, vmid, snapname)): Path<(String, String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    auth.check(&format!("/vms/{vmid}"), &["VM.Snapshot"])?;
    let params = with_path(
        params,
        &[("node", &node), ("vmid", &vmid), ("snapname", &snapname)],
    )?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("vmid", vmid_prop()),
            ("snapname", snapname_prop()),
            ("force", Prop::boolean().optional()),
        ],
    )?;
    state.node.check_node(&node)?;
    let vmid = parse_vmid(&vmid);
    let force = params.get("force").is_some_and(|v| v == "1");
    spawn(
        &state.node,
        "qmdelsnapshot",
        &vmid.to_string(),
        &auth.tokenid,
        move |node, log| vm::snapshot_delete(node, vmid, &snapname, force, log),
    )
}
