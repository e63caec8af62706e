//! `/nodes/{node}/storage/...` (pve-storage `PVE::API2::Storage::Status` and `::Content`): storage
//! status, content listing, volume info/delete, `upload` (multipart, streamed to a spool file as
//! pve-http-server does, then an `imgcopy` task verifies the checksum and the image and moves it into
//! place) and `download-url` (a `download` task fetching the URL).

use std::sync::Arc;

use axum::extract::{Path, Request};
use futures::TryStreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::{
    ApiOk, ApiParams, ApiResult, Authed, St, node_prop, storage_prop, validate, with_path,
};
use crate::checksum::{self, ALGORITHMS};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::qemu_img;
use crate::schema::{self, Params, Prop};
use crate::storage::{Storage, VolType};
use crate::vm;

/// `GET /nodes/{node}/storage`: storage status (the storages the token may see).
pub async fn index(
    state: St,
    auth: Authed,
    Path(node): Path<String>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    let params = with_path(params, &[("node", &node)])?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("storage", storage_prop().optional()),
            ("content", Prop::string().optional()),
            ("enabled", Prop::boolean().optional()),
            ("format", Prop::boolean().optional()),
            ("target", Prop::string().optional()),
        ],
    )?;
    state.node.check_node(&node)?;
    let contents: Vec<&str> = params
        .get("content")
        .map(|c| c.split(',').collect())
        .unwrap_or_default();
    let mut result = Vec::new();
    for storage in state.node.storages() {
        let path = format!("/storage/{}", storage.id);
        if !auth.has(&path, "Datastore.Audit") && !auth.has(&path, "Datastore.AllocateSpace") {
            continue;
        }
        if params.get("storage").is_some_and(|s| *s != storage.id)
            || !contents.iter().all(|c| storage.supports(c))
        {
            continue;
        }
        let mut entry = status_json(&storage);
        if params.get("format").is_some_and(|f| f == "1") {
            let (valid, default) = storage.formats();
            let valid: serde_json::Map<String, serde_json::Value> =
                valid.iter().map(|f| (f.to_string(), json!(1))).collect();
            entry["format"] = json!([valid, default]);
        }
        result.push(entry);
    }
    Ok(ApiOk::new(result))
}

fn status_json(storage: &Storage) -> serde_json::Value {
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

/// `GET /nodes/{node}/storage/{storage}/status`.
pub async fn status(
    state: St,
    auth: Authed,
    Path((node, storage)): Path<(String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    auth.check_any(
        &format!("/storage/{storage}"),
        &["Datastore.Audit", "Datastore.AllocateSpace"],
    )?;
    let params = with_path(params, &[("node", &node), ("storage", &storage)])?;
    validate(
        &params,
        vec![("node", node_prop()), ("storage", storage_prop())],
    )?;
    state.node.check_node(&node)?;
    let storage = state.node.storage(&storage)?;
    Ok(ApiOk::new(status_json(&storage)))
}

/// `GET /nodes/{node}/storage/{storage}/content`: volumes with format and size.
pub async fn content(
    state: St,
    auth: Authed,
    Path((node, storage)): Path<(String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    auth.check_any(
        &format!("/storage/{storage}"),
        &["Datastore.Audit", "Datastore.AllocateSpace"],
    )?;
    let params = with_path(params, &[("node", &node), ("storage", &storage)])?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("storage", storage_prop()),
            (
                "content",
                Prop::string().optional().verify(schema::verify_content),
            ),
            ("vmid", super::vmid_prop().optional()),
        ],
    )?;
    state.node.check_node(&node)?;
    let storage = state.node.storage(&storage)?;
    let vmid = params.get("vmid").and_then(|v| v.parse().ok());
    let list = storage.list_volumes(params.get("content").map(String::as_str), vmid)?;
    let visible: Vec<_> = list
        .into_iter()
        .filter(|v| vm::check_volume_access(&state.node, &auth, None, &v.volid, None).is_ok())
        .collect();
    Ok(ApiOk::new(
        serde_json::to_value(visible).map_err(|e| Error::failed(e.to_string()))?,
    ))
}

/// `$real_volume_id`: a volume given as full ID or relative to the storage in the path.
fn real_volume_id(storage: &str, volume: &str) -> Result<String> {
    if volume.contains(':') {
        let (sid, _) = crate::storage::parse_volume_id(volume)
            .map_err(|e| Error::param("volume", format!("{e}\n")))?;
        if sid != storage {
            return Err(Error::param(
                "volume",
                format!("storage ID mismatch ({sid} != {storage})\n"),
            ));
        }
        Ok(volume.to_string())
    } else {
        Ok(format!("{storage}:{volume}"))
    }
}

/// `GET /nodes/{node}/storage/{storage}/content/{volume}`: path, size, used, format.
pub async fn volume_info(
    state: St,
    auth: Authed,
    Path((node, storage, volume)): Path<(String, String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    let params = with_path(
        params,
        &[("node", &node), ("storage", &storage), ("volume", &volume)],
    )?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("storage", storage_prop()),
            ("volume", Prop::string()),
        ],
    )?;
    state.node.check_node(&node)?;
    let volid = real_volume_id(&storage, &volume)?;
    vm::check_volume_access(&state.node, &auth, None, &volid, None)?;
    let (store, vol) = vm::volume(&state.node, &volid)?;
    let (size, format, used, _) = store.size_info(&vol)?;
    if size == 0 {
        return Err(Error::failed(format!("volume '{volid}' has size zero")));
    }
    Ok(ApiOk::new(json!({
        "path": store.path(&vol),
        "size": size,
        "used": used,
        "format": format,
    })))
}

/// `DELETE /nodes/{node}/storage/{storage}/content/{volume}`: an `imgdel` task.
pub async fn volume_delete(
    state: St,
    auth: Authed,
    Path((node, storage, volume)): Path<(String, String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    let params = with_path(
        params,
        &[("node", &node), ("storage", &storage), ("volume", &volume)],
    )?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("storage", storage_prop().optional()),
            ("volume", Prop::string()),
            ("delay", Prop::integer().optional().range(Some(1), Some(30))),
        ],
    )?;
    state.node.check_node(&node)?;
    let volid = real_volume_id(&storage, &volume)?;
    let (store, vol) = vm::volume(&state.node, &volid)?;
    auth.check(&format!("/storage/{}", store.id), &["Datastore.Allocate"])?;
    let id = match vol.vmid {
        Some(owner) => format!("{owner}@{}", store.id),
        None => store.id.clone(),
    };
    let node_arc = Arc::clone(&state.node);
    let upid = state
        .node
        .tasks
        .spawn("imgdel", &id, &auth.tokenid, move |log| {
            let (store, vol) = vm::volume(&node_arc, &volid)?;
            store.free(&vol)?;
            log.line(&format!("Removed volume '{volid}'"));
            Ok(())
        })?;
    Ok(ApiOk::new(upid))
}

/// `normalize_content_filename`.
pub fn normalize_content_filename(filename: &str) -> String {
    let name = filename.trim_end_matches('\n');
    let name = name.rsplit(['/', '\\']).next().unwrap_or_default();
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The target directory and image format of an upload/download (the extension rules of PVE).
fn target_for(
    storage: &Storage,
    content: &str,
    filename: &str,
    not_allowed: &str,
) -> Result<(std::path::PathBuf, Option<String>)> {
    static IMPORT_RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"[a-zA-Z0-9\-.+=_]+\.(ova|qcow2|raw|vmdk)").expect("import regex")
    });
    match content {
        "iso" => {
            let lower = filename.to_ascii_lowercase();
            if !(lower.len() > 4 && (lower.ends_with(".iso") || lower.ends_with(".img"))) {
                return Err(Error::param("filename", "wrong file extension"));
            }
            Ok((storage.subdir(VolType::Iso), None))
        }
        "vztmpl" => {
            if ![".tar", ".tar.gz", ".tar.xz", ".tar.zst", ".tar.bz2"]
                .iter()
                .any(|e| filename.ends_with(e))
            {
                return Err(Error::param("filename", "wrong file extension"));
            }
            Ok((storage.root.join("template/cache"), None))
        }
        "import" => {
            let caps = IMPORT_RE
                .captures(filename)
                .ok_or_else(|| Error::param("filename", "invalid filename or wrong extension"))?;
            let format = caps[1].to_string();
            let image_format = (format != "ova").then_some(format);
            Ok((storage.subdir(VolType::Import), image_format))
        }
        other => Err(Error::param("content", not_allowed.replace("{}", other))),
    }
}

fn upload_schema() -> Vec<(&'static str, Prop)> {
    vec![
        ("node", node_prop()),
        ("storage", storage_prop()),
        (
            "content",
            Prop::string()
                .verify(schema::verify_content)
                .one_of(&["iso", "vztmpl", "import"]),
        ),
        ("filename", Prop::string().max_length(255)),
        (
            "checksum",
            Prop::string().optional().requires("checksum-algorithm"),
        ),
        (
            "checksum-algorithm",
            Prop::string()
                .optional()
                .one_of(ALGORITHMS)
                .requires("checksum"),
        ),
        (
            "tmpfilename",
            Prop::string()
                .optional()
                .pattern("/var/tmp/pveupload-[0-9a-f]+"),
        ),
    ]
}

/// Receives the multipart body into a spool file; returns the form fields (the file part's file
/// name as `filename`) and the spool file.
async fn receive_upload(node: &Node, req: Request) -> Result<(Params, std::path::PathBuf)> {
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let boundary = multer::parse_boundary(&content_type).map_err(|_| {
        Error::failed(format!(
            "upload 'Content-Type '{content_type}' not implemented"
        ))
    })?;
    let mut params = Params::new();
    if let Some(query) = req.uri().query() {
        params.extend(url::form_urlencoded::parse(query.as_bytes()).into_owned());
    }
    if params.contains_key("tmpfilename") {
        return Err(Error::failed(
            "'tmpfilename' query parameter is not allowed for file uploads",
        ));
    }
    let spool = node.data.tmp_dir().join(format!(
        "pveupload-{}",
        crate::datadir::random_uuid()?.replace('-', "")
    ));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&spool)
        .await
        .map_err(|e| {
            Error::failed(format!(
                "unable to create temporary upload file '{}' - {e}",
                spool.display()
            ))
        })?;
    let result: Result<()> = async {
        let stream = req
            .into_body()
            .into_data_stream()
            .map_err(std::io::Error::other);
        let mut multipart = multer::Multipart::new(stream, boundary);
        let upload_failed = |e: multer::Error| Error::failed(format!("upload failed - {e}"));
        let mut got_file = false;
        while let Some(mut field) = multipart.next_field().await.map_err(upload_failed)? {
            let name = field.name().unwrap_or_default().to_string();
            if let Some(file_name) = field.file_name().map(str::to_string) {
                if name != "filename" {
                    return Err(Error::failed(format!(
                        "wrong field name '{name}' for file upload, expected 'filename'"
                    )));
                }
                params.insert("filename".into(), file_name.trim().to_string());
                while let Some(chunk) = field.chunk().await.map_err(upload_failed)? {
                    file.write_all(&chunk).await.map_err(|e| {
                        Error::failed(format!("write to temporary file failed - {e}"))
                    })?;
                }
                got_file = true;
            } else {
                let value = field.text().await.map_err(upload_failed)?;
                params.insert(name, value.trim().to_string());
            }
        }
        file.flush()
            .await
            .map_err(|e| Error::failed(format!("write to temporary file failed - {e}")))?;
        if !got_file {
            return Err(Error::failed("upload failed"));
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok((params, spool)),
        Err(e) => {
            let _ = tokio::fs::remove_file(&spool).await;
            Err(e)
        }
    }
}

/// `POST /nodes/{node}/storage/{storage}/upload`.
pub async fn upload(
    state: St,
    auth: Authed,
    Path((node, storage)): Path<(String, String)>,
    req: Request,
) -> ApiResult {
    // the auth handler checks the upload privilege before the body is read
    auth.check(
        &format!("/storage/{storage}"),
        &["Datastore.AllocateTemplate"],
    )?;
    let (params, spool) = receive_upload(&state.node, req).await?;
    let size = std::fs::metadata(&spool)
        .map(|m| m.len())
        .unwrap_or_default();
    tracing::info!(size, "multipart upload complete");
    let result = start_import(
        &state.node,
        &auth,
        &node,
        &storage,
        params,
        spool.clone(),
        size,
    );
    if result.is_err() {
        let _ = std::fs::remove_file(&spool);
    }
    result
}

fn start_import(
    node_arc: &Arc<Node>,
    auth: &crate::auth::Auth,
    node: &str,
    storage_id: &str,
    params: Params,
    spool: std::path::PathBuf,
    size: u64,
) -> ApiResult {
    let params = with_path(params, &[("node", node), ("storage", storage_id)])?;
    validate(&params, upload_schema())?;
    node_arc.check_node(node)?;
    let storage = node_arc.storage(storage_id)?;
    if !storage.is_file_based() {
        return Err(Error::failed(format!(
            "can't upload to storage type '{}'",
            storage.kind.as_str()
        )));
    }
    let content = params["content"].clone();
    let filename = normalize_content_filename(&params["filename"]);
    let (dir, image_format) = target_for(
        &storage,
        &content,
        &filename,
        "upload content type '{}' not allowed",
    )?;
    if !storage.supports(&content) {
        return Err(Error::failed(format!(
            "storage '{storage_id}' does not support '{content}' content"
        )));
    }
    let dest = dir.join(&filename);
    let checksum = params
        .get("checksum")
        .cloned()
        .zip(params.get("checksum-algorithm").cloned());
    let node_name = node.to_string();
    let upid = node_arc
        .tasks
        .spawn("imgcopy", "", &auth.tokenid, move |log| {
            log.line(&format!("starting file import from: {}", spool.display()));
            let checked = (|| -> Result<()> {
                if let Some((expected, algorithm)) = &checksum {
                    match checksum::verify(algorithm, expected, &spool) {
                        Ok(()) => log.line("calculating checksum...OK, checksum verified"),
                        Err(e) => {
                            log.line("calculating checksum...");
                            return Err(e);
                        }
                    }
                }
                if let Some(format) = &image_format {
                    qemu_img::checked_info(&spool, format, true)?;
                }
                Ok(())
            })();
            if let Err(e) = checked {
                let _ = std::fs::remove_file(&spool);
                return Err(e);
            }
            log.line(&format!("target node: {node_name}"));
            log.line(&format!("target file: {}", dest.display()));
            log.line(&format!("file size is: {size}"));
            log.line(&format!(
                "command: cp -- {} {}",
                spool.display(),
                dest.display()
            ));
            std::fs::create_dir_all(&dir).map_err(Error::io(format!("mkdir {}", dir.display())))?;
            let moved = std::fs::rename(&spool, &dest)
                .or_else(|_| std::fs::copy(&spool, &dest).map(|_| ()));
            let _ = std::fs::remove_file(&spool);
            if let Err(e) = moved {
                let _ = std::fs::remove_file(&dest);
                return Err(Error::failed(format!("import failed: {e}")));
            }
            log.line("finished file import successfully");
            Ok(())
        })?;
    Ok(ApiOk::new(upid))
}

/// `POST /nodes/{node}/storage/{storage}/download-url`.
pub async fn download_url(
    state: St,
    auth: Authed,
    Path((node, storage)): Path<(String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    auth.check(
        &format!("/storage/{storage}"),
        &["Datastore.AllocateTemplate"],
    )?;
    let may_network = (auth.has("/", "Sys.Audit") && auth.has("/", "Sys.Modify"))
        || auth.has(&format!("/nodes/{node}"), "Sys.AccessNetwork");
    if !may_network {
        return Err(Error::Permission(String::new()));
    }
    let params = with_path(params, &[("node", &node), ("storage", &storage)])?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("storage", storage_prop()),
            ("url", Prop::string().pattern("https?://.*")),
            (
                "content",
                Prop::string()
                    .verify(schema::verify_content)
                    .one_of(&["iso", "vztmpl", "import"]),
            ),
            ("filename", Prop::string().max_length(255)),
            (
                "checksum",
                Prop::string().optional().requires("checksum-algorithm"),
            ),
            (
                "compression",
                Prop::string()
                    .optional()
                    .one_of(&["gz", "lzo", "zst", "bz2"]),
            ),
            (
                "checksum-algorithm",
                Prop::string()
                    .optional()
                    .one_of(ALGORITHMS)
                    .requires("checksum"),
            ),
            ("verify-certificates", Prop::boolean().optional()),
        ],
    )?;
    state.node.check_node(&node)?;
    let st = state.node.storage(&storage)?;
    if !st.is_file_based() {
        return Err(Error::failed(format!(
            "can't upload to storage type '{}', not a file based storage!",
            st.kind.as_str()
        )));
    }
    let content = params["content"].clone();
    if !st.supports(&content) {
        return Err(Error::failed(format!(
            "storage '{storage}' is not configured for content-type '{content}'"
        )));
    }
    let filename = normalize_content_filename(&params["filename"]);
    let (dir, image_format) = target_for(
        &st,
        &content,
        &filename,
        "upload content-type '{}' is not allowed",
    )?;
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("mkdir {}", dir.display())))?;
    let dest = dir.join(&filename);
    let url = params["url"].clone();
    let checksum = params
        .get("checksum")
        .cloned()
        .zip(params.get("checksum-algorithm").cloned());
    let verify = params.get("verify-certificates").is_none_or(|v| v == "1");
    let compression = params.get("compression").cloned();
    let node_arc = Arc::clone(&state.node);
    let upid = state
        .node
        .tasks
        .spawn("download", &filename, &auth.tokenid, move |log| {
            if compression.is_some() {
                if content != "iso" {
                    return Err(Error::failed(format!(
                        "decompression not supported for {content}"
                    )));
                }
                return Err(Error::failed(
                    "decompression is not implemented by the simulator",
                ));
            }
            let line = |l: &str| log.line(l);
            // the task thread runs its own small runtime (a PVE worker is a separate process, too)
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::io("start download runtime"))?;
            let client = node_arc.http_client(verify)?;
            runtime.block_on(download_file(
                &client,
                &url,
                &dest,
                checksum,
                image_format,
                verify,
                &line,
            ))
        })?;
    Ok(ApiOk::new(upid))
}

/// `download_file_from_url`: fetch into `<dest>.tmp_dwnl.<pid>`, verify checksum and image, rename.
async fn download_file(
    client: &reqwest::Client,
    url: &str,
    dest: &std::path::Path,
    checksum: Option<(String, String)>,
    image_format: Option<String>,
    verify: bool,
    log: qemu_img::Log<'_>,
) -> Result<()> {
    log(&format!("downloading {url} to {}", dest.display()));
    if dest.is_file() {
        match &checksum {
            Some((expected, algorithm)) => {
                let got = checksum::file_hash(algorithm, dest)?;
                if got.eq_ignore_ascii_case(expected) {
                    log(
                        "calculating checksum of existing file...OK, got correct file already, no need to download",
                    );
                    return Ok(());
                }
                log("calculating checksum of existing file...");
                return Err(Error::failed(format!(
                    "checksum mismatch: got '{got}' != expect '{expected}', aborting"
                )));
            }
            None => {
                return Err(Error::failed(format!(
                    "refusing to override existing file '{}'",
                    dest.display()
                )));
            }
        }
    }
    let tmp = std::path::PathBuf::from(format!(
        "{}.tmp_dwnl.{}",
        dest.display(),
        std::process::id()
    ));
    let result = async {
        let mut wget = format!("wget --progress=dot:giga -O {} {url}", tmp.display());
        if !verify {
            wget.push_str(" --no-check-certificate");
        }
        // wget's exit codes: 4 network failure, 5 TLS verification failure, 8 server error response
        let failed = |code: u8, why: String| {
            log(&why);
            Error::failed(format!(
                "download failed: command '{wget}' failed: exit code {code}"
            ))
        };
        let response = client.get(url).send().await.map_err(|e| {
            let code = if format!("{e:?}").contains("certificate") {
                5
            } else {
                4
            };
            failed(code, format!("failed to connect: {e}"))
        })?;
        if !response.status().is_success() {
            return Err(failed(8, format!("ERROR {}.", response.status())));
        }
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(Error::io(format!("create {}", tmp.display())))?;
        let mut stream = response.bytes_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| failed(4, format!("read error: {e}")))?
        {
            total += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(Error::io(format!("write {}", tmp.display())))?;
        }
        file.flush()
            .await
            .map_err(Error::io(format!("write {}", tmp.display())))?;
        log(&format!("{total} bytes downloaded"));
        if let Some((expected, algorithm)) = &checksum {
            let got = checksum::file_hash(algorithm, &tmp)?;
            if got.eq_ignore_ascii_case(expected) {
                log("calculating checksum...OK, checksum verified");
            } else {
                log("calculating checksum...");
                return Err(Error::failed(format!(
                    "checksum mismatch: got '{got}' != expect '{expected}'"
                )));
            }
        }
        if let Some(format) = &image_format {
            qemu_img::checked_info(&tmp, format, true)
                .map_err(|e| Error::failed(format!("failed to verify file: {e}")))?;
        }
        std::fs::rename(&tmp, dest)
            .map_err(|e| Error::failed(format!("unable to rename temporary file: {e}")))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    log(&format!(
        "download of '{url}' to '{}' finished",
        dest.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_normalized_like_pve() {
        assert_eq!(
            normalize_content_filename("C:\\x\\my disk (1).qcow2"),
            "my_disk__1_.qcow2"
        );
        assert_eq!(normalize_content_filename("../../etc/passwd"), "passwd");
    }
}
