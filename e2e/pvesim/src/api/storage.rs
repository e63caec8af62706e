//! Storages (pve-storage `PVE::API2::Storage::Config`, `::Status` and `::Content`): the storage
//! configuration (`/storage`), status, content listing, volume info and delete. Uploads are in
//! [`super::upload`].

use std::sync::Arc;

use serde_json::{Value, json};

use super::{ApiOk, ApiResult, Call};
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::vm;

/// The `Datastore.Audit` or `Datastore.AllocateSpace` check of the storage in the path.
fn check_audit(call: &Call) -> Result<()> {
    call.auth.check_any(
        &format!("/storage/{}", call.path("storage")),
        &["Datastore.Audit", "Datastore.AllocateSpace"],
    )
}

/// Whether the token sees a storage in listings.
fn visible(call: &Call, storage: &Storage) -> bool {
    let path = format!("/storage/{}", storage.id);
    call.auth.has(&path, "Datastore.Audit") || call.auth.has(&path, "Datastore.AllocateSpace")
}

/// One storage as `storage_info` reports it.
fn status_json(storage: &Storage) -> Value {
    let (total, used, avail) = storage.usage();
    json!({
        "storage": storage.id,
        "type": storage.kind.as_str(),
        "content": storage.content_string(),
        "active": 1,
        "enabled": 1,
        "shared": 0,
        "total": total,
        "used": used,
        "avail": avail,
        "used_fraction": if total > 0 { used as f64 / total as f64 } else { 0.0 },
    })
}

/// The `format` (deprecated tuple) and `formats` of a storage listed with `format=1`.
fn add_formats(entry: &mut Value, storage: &Storage) {
    let (valid, default) = storage.formats();
    let map: serde_json::Map<String, Value> =
        valid.iter().map(|f| (f.to_string(), json!(1))).collect();
    entry["format"] = json!([map, default]);
    entry["formats"] = json!({ "supported": valid, "default": default });
}

/// `GET /nodes/{node}/storage`: storage status (the storages the token may see).
pub async fn index(mut call: Call) -> ApiResult {
    let args = call.node_args().await?;
    let storages = call.node().storages();
    if let Some(id) = args.get("storage")
        && !storages.iter().any(|s| s.id == id)
    {
        return Err(Error::param("storage", "No such storage."));
    }
    // storage_info: with `content`, a storage that has any of the types
    let contents = args.get("content").map(crate::schema::formats::split_list);
    let mut result = Vec::new();
    for storage in storages {
        let wanted = args.get("storage").is_none_or(|s| s == storage.id)
            && contents
                .as_ref()
                .is_none_or(|c| c.iter().any(|c| storage.supports(c)));
        if !wanted || !visible(&call, &storage) {
            continue;
        }
        let mut entry = status_json(&storage);
        if args.flag("format") {
            add_formats(&mut entry, &storage);
        }
        result.push(entry);
    }
    Ok(ApiOk::new(result))
}

/// `GET /nodes/{node}/storage/{storage}`: the directory index.
pub async fn diridx(mut call: Call) -> ApiResult {
    check_audit(&call)?;
    call.node_args().await?;
    let subdirs = [
        "content",
        "download-url",
        "file-restore",
        "import-metadata",
        "identity",
        "oci-registry-pull",
        "prunebackups",
        "rrd",
        "rrddata",
        "status",
        "upload",
    ];
    let index: Vec<Value> = subdirs.iter().map(|s| json!({ "subdir": s })).collect();
    Ok(ApiOk::new(index))
}

/// `GET /nodes/{node}/storage/{storage}/status` (an unknown storage is a parameter error here).
pub async fn status(mut call: Call) -> ApiResult {
    check_audit(&call)?;
    let args = call.node_args().await?;
    let storage = call
        .node()
        .storage(args.str("storage"))
        .map_err(|_| Error::param("storage", "No such storage."))?;
    Ok(ApiOk::new(status_json(&storage)))
}

/// `GET /nodes/{node}/storage/{storage}/content`: volumes with format and size.
pub async fn content(mut call: Call) -> ApiResult {
    check_audit(&call)?;
    let args = call.node_args().await?;
    let storage = call.node().storage(args.str("storage"))?;
    let list = storage.list_volumes(args.get("content"), args.num("vmid"))?;
    let visible: Vec<_> = list
        .into_iter()
        .filter(|v| vm::check_volume_access(call.node(), &call.auth, None, &v.volid, None).is_ok())
        .collect();
    Ok(ApiOk::new(
        serde_json::to_value(visible).map_err(|e| Error::failed(e.to_string()))?,
    ))
}

/// `$real_volume_id`: a volume given as full ID or relative to the storage in the path.
fn real_volume_id(storage: Option<&str>, volume: &str) -> Result<String> {
    if !volume.contains(':') {
        let storage = storage
            .ok_or_else(|| Error::param("volume", "no storage specified - incomplete volume ID"))?;
        return Ok(format!("{storage}:{volume}"));
    }
    let (sid, _) = crate::storage::parse_volume_id(volume)
        .map_err(|e| Error::param("volume", format!("{e}\n")))?;
    if let Some(storage) = storage
        && sid != storage
    {
        return Err(Error::param(
            "volume",
            format!("storage ID mismatch ({sid} != {storage})\n"),
        ));
    }
    Ok(volume.to_string())
}

/// `GET /nodes/{node}/storage/{storage}/content/{volume}`: path, size, used, format.
pub async fn volume_info(mut call: Call) -> ApiResult {
    let args = call.node_args().await?;
    let volid = real_volume_id(args.get("storage"), args.str("volume"))?;
    vm::check_volume_access(call.node(), &call.auth, None, &volid, None)?;
    let (store, vol) = vm::volume(call.node(), &volid)?;
    let info = store.size_info(&vol)?;
    if info.size == 0 {
        return Err(Error::failed(format!("volume '{volid}' has size zero")));
    }
    Ok(ApiOk::new(json!({
        "path": store.path(&vol),
        "size": info.size,
        "used": info.used,
        "format": info.format,
    })))
}

/// `DELETE /nodes/{node}/storage/{storage}/content/{volume}`: an `imgdel` task.
pub async fn volume_delete(mut call: Call) -> ApiResult {
    let args = call.node_args().await?;
    let volid = real_volume_id(args.get("storage"), args.str("volume"))?;
    let (store, vol) = vm::volume(call.node(), &volid)?;
    call.auth
        .check(&format!("/storage/{}", store.id), &["Datastore.Allocate"])?;
    let id = match vol.vmid {
        Some(owner) => format!("{owner}@{}", store.id),
        None => store.id.clone(),
    };
    let node = Arc::clone(call.node());
    let upid = call
        .node()
        .tasks
        .spawn("imgdel", &id, &call.auth.tokenid, move |log| {
            let (store, vol) = vm::volume(&node, &volid)?;
            store.free(&vol)?;
            log.line(&format!("Removed volume '{volid}'"));
            Ok(())
        })?;
    Ok(ApiOk::new(upid))
}

/// `GET /storage`: the storage configuration (the storages the token may see).
pub async fn config_index(mut call: Call) -> ApiResult {
    let args = call.args().await?;
    let node = call.node();
    let result: Vec<Value> = node
        .storages()
        .into_iter()
        .filter(|s| visible(&call, s))
        .filter(|s| args.get("type").is_none_or(|t| t == s.kind.as_str()))
        .map(|s| node.config.storage_json(&node.data, &s))
        .collect();
    Ok(ApiOk::new(result))
}

/// `GET /storage/{storage}`: one storage's configuration (needs `Datastore.Allocate`).
pub async fn config_read(mut call: Call) -> ApiResult {
    let path = format!("/storage/{}", call.path("storage"));
    call.auth.check(&path, &["Datastore.Allocate"])?;
    let args = call.args().await?;
    let storage = call.node().storage(args.str("storage"))?;
    let node = call.node();
    Ok(ApiOk::new(node.config.storage_json(&node.data, &storage)))
}
