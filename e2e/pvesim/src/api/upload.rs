//! `POST /nodes/{node}/storage/{storage}/upload` (multipart, streamed to a spool file as
//! pve-http-server does, then an `imgcopy` task verifies the checksum and the image and moves it
//! into place) and `POST .../download-url` (a `download` task fetching the URL), after
//! pve-storage's `PVE::API2::Storage::Status`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::Request;
use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;

use super::{ApiOk, ApiResult, Args, Call};
use crate::checksum;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::qemu_img;
use crate::schema::Params;
use crate::storage::{Storage, VolType};

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

/// Where an upload or download goes: directory and, for disk images, their format.
struct Target {
    dir: PathBuf,
    image_format: Option<String>,
}

/// The extension rules of `upload`/`download_url`: `.iso`/`.img` for iso, the tarballs for
/// vztmpl, and for import `$SAFE_CHAR_CLASS_RE+$UPLOAD_IMPORT_EXT_RE_1$` (`.ova`, `.qcow2`,
/// `.raw`, `.vmdk`; no `.ovf`).
fn target_for(storage: &Storage, content: &str, filename: &str, refused: &str) -> Result<Target> {
    static IMPORT_RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"[a-zA-Z0-9\-.+=_]+\.(ova|qcow2|raw|vmdk)$").expect("import regex")
    });
    let wrong_extension = || Error::param("filename", "wrong file extension");
    let (dir, image_format) = match content {
        "iso" => {
            let lower = filename.to_ascii_lowercase();
            let iso = lower.len() > 4 && (lower.ends_with(".iso") || lower.ends_with(".img"));
            if !iso {
                return Err(wrong_extension());
            }
            (storage.subdir(VolType::Iso), None)
        }
        "vztmpl" => {
            let tarballs = [".tar", ".tar.gz", ".tar.xz", ".tar.zst", ".tar.bz2"];
            if !tarballs.iter().any(|e| filename.ends_with(e)) {
                return Err(wrong_extension());
            }
            (storage.root.join("template/cache"), None)
        }
        "import" => {
            let caps = IMPORT_RE
                .captures(filename)
                .ok_or_else(|| Error::param("filename", "invalid filename or wrong extension"))?;
            let format = caps[1].to_string();
            (
                storage.subdir(VolType::Import),
                (format != "ova").then_some(format),
            )
        }
        other => return Err(Error::param("content", refused.replace("{}", other))),
    };
    Ok(Target { dir, image_format })
}

/// The expected checksum and its algorithm, when given.
fn checksum_of(args: &Args) -> Option<(String, String)> {
    let expected = args.get("checksum")?.to_string();
    Some((expected, args.get("checksum-algorithm")?.to_string()))
}

/// The spool file of an upload, removed on drop unless kept.
struct Spool(Option<PathBuf>);

impl Spool {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("spool file present")
    }

    fn keep(mut self) -> PathBuf {
        self.0.take().expect("spool file present")
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The multipart body into a spool file; the form fields (the file part's name as `filename`).
async fn receive_upload(node: &Node, req: Request) -> Result<(Params, Spool)> {
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
    let name = format!(
        "pveupload-{}",
        crate::datadir::random_uuid()?.replace('-', "")
    );
    let spool = Spool(Some(node.data.tmp_dir().join(name)));
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(spool.path())
        .await
        .map_err(|e| {
            Error::failed(format!(
                "unable to create temporary upload file '{}' - {e}",
                spool.path().display()
            ))
        })?;
    let stream = req
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    read_fields(multer::Multipart::new(stream, boundary), file, &mut params).await?;
    Ok((params, spool))
}

/// The fields of the form; the file part is written to `file`.
async fn read_fields(
    mut multipart: multer::Multipart<'static>,
    mut file: tokio::fs::File,
    params: &mut Params,
) -> Result<()> {
    let upload_failed = |e: multer::Error| Error::failed(format!("upload failed - {e}"));
    let write_failed =
        |e: std::io::Error| Error::failed(format!("write to temporary file failed - {e}"));
    let mut got_file = false;
    while let Some(mut field) = multipart.next_field().await.map_err(upload_failed)? {
        let name = field.name().unwrap_or_default().to_string();
        let Some(file_name) = field.file_name().map(str::to_string) else {
            let value = field.text().await.map_err(upload_failed)?;
            params.insert(name, value.trim().to_string());
            continue;
        };
        if name != "filename" {
            return Err(Error::failed(format!(
                "wrong field name '{name}' for file upload, expected 'filename'"
            )));
        }
        params.insert("filename".into(), file_name.trim().to_string());
        while let Some(chunk) = field.chunk().await.map_err(upload_failed)? {
            file.write_all(&chunk).await.map_err(write_failed)?;
        }
        got_file = true;
    }
    file.flush().await.map_err(write_failed)?;
    if !got_file {
        return Err(Error::failed("upload failed"));
    }
    Ok(())
}

/// The storage checks of `upload`; the import as the worker will run it.
fn prepare_import(call: &Call, args: &Args, spool: Spool, size: u64) -> Result<Import> {
    let storage = args.str("storage");
    let st = call.node().storage(storage)?;
    if !st.is_file_based() {
        return Err(Error::failed(format!(
            "can't upload to storage type '{}'",
            st.kind.as_str()
        )));
    }
    let content = args.str("content");
    let filename = normalize_content_filename(args.str("filename"));
    let target = target_for(
        &st,
        content,
        &filename,
        "upload content type '{}' not allowed",
    )?;
    if !st.supports(content) {
        return Err(Error::failed(format!(
            "storage '{storage}' does not support '{content}' content"
        )));
    }
    Ok(Import {
        spool: spool.keep(),
        dest: target.dir.join(&filename),
        dir: target.dir,
        image_format: target.image_format,
        checksum: checksum_of(args),
        node: args.str("node").to_string(),
        size,
    })
}

/// `POST /nodes/{node}/storage/{storage}/upload`.
pub async fn upload(mut call: Call) -> ApiResult {
    // the auth handler checks the upload privilege before the body is read
    let privilege_path = format!("/storage/{}", call.path("storage"));
    call.auth
        .check(&privilege_path, &["Datastore.AllocateTemplate"])?;
    let request = call
        .take_request()
        .ok_or_else(|| Error::failed("upload failed"))?;
    let (fields, spool) = receive_upload(call.node(), request).await?;
    let size = std::fs::metadata(spool.path())
        .map(|m| m.len())
        .unwrap_or_default();
    tracing::info!(size, "multipart upload complete");
    let args = call.node_args_from(fields)?;
    let import = prepare_import(&call, &args, spool, size)?;
    let upid = call
        .node()
        .tasks
        .spawn("imgcopy", "", &call.auth.tokenid, move |log| {
            let line = |l: &str| log.line(l);
            import.run(&line)
        })?;
    Ok(ApiOk::new(upid))
}

/// The `imgcopy` worker of an upload.
struct Import {
    spool: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
    image_format: Option<String>,
    checksum: Option<(String, String)>,
    node: String,
    size: u64,
}

impl Import {
    fn run(self, log: qemu_img::Log) -> Result<()> {
        let spool = Spool(Some(self.spool.clone()));
        log(&format!(
            "starting file import from: {}",
            self.spool.display()
        ));
        self.verify(log)?;
        log(&format!("target node: {}", self.node));
        log(&format!("target file: {}", self.dest.display()));
        log(&format!("file size is: {}", self.size));
        log(&format!(
            "command: cp -- {} {}",
            self.spool.display(),
            self.dest.display()
        ));
        std::fs::create_dir_all(&self.dir)
            .map_err(Error::io(format!("mkdir {}", self.dir.display())))?;
        let moved = std::fs::rename(spool.path(), &self.dest)
            .or_else(|_| std::fs::copy(spool.path(), &self.dest).map(|_| ()));
        if let Err(e) = moved {
            let _ = std::fs::remove_file(&self.dest);
            return Err(Error::failed(format!("import failed: {e}")));
        }
        log("finished file import successfully");
        Ok(())
    }

    /// Checksum, then the untrusted-image check of a disk image.
    fn verify(&self, log: qemu_img::Log) -> Result<()> {
        if let Some((expected, algorithm)) = &self.checksum {
            if let Err(e) = checksum::verify(algorithm, expected, &self.spool) {
                log("calculating checksum...");
                return Err(e);
            }
            log("calculating checksum...OK, checksum verified");
        }
        if let Some(format) = &self.image_format {
            qemu_img::checked_info(&self.spool, format, true)?;
        }
        Ok(())
    }
}

/// `download_url`'s privileges: `Datastore.AllocateTemplate`, and network access (`Sys.Audit` and
/// `Sys.Modify` on `/`, or `Sys.AccessNetwork` on the node), the latter raised bare.
fn check_download_privs(call: &Call) -> Result<()> {
    let auth = &call.auth;
    auth.check(
        &format!("/storage/{}", call.path("storage")),
        &["Datastore.AllocateTemplate"],
    )?;
    let node = format!("/nodes/{}", call.path("node"));
    let may_network = (auth.has("/", "Sys.Audit") && auth.has("/", "Sys.Modify"))
        || auth.has(&node, "Sys.AccessNetwork");
    if may_network {
        Ok(())
    } else {
        Err(Error::Permission(String::new()))
    }
}

/// The storage checks of `download_url`; the download as the worker will run it.
fn prepare_download(call: &Call, args: &Args) -> Result<(String, Download)> {
    let storage = args.str("storage");
    let st = call.node().storage(storage)?;
    if !st.is_file_based() {
        return Err(Error::failed(format!(
            "can't upload to storage type '{}', not a file based storage!",
            st.kind.as_str()
        )));
    }
    let content = args.str("content");
    if !st.supports(content) {
        return Err(Error::failed(format!(
            "storage '{storage}' is not configured for content-type '{content}'"
        )));
    }
    let filename = normalize_content_filename(args.str("filename"));
    let target = target_for(
        &st,
        content,
        &filename,
        "upload content-type '{}' is not allowed",
    )?;
    std::fs::create_dir_all(&target.dir)
        .map_err(Error::io(format!("mkdir {}", target.dir.display())))?;
    let download = Download {
        url: args.str("url").to_string(),
        dest: target.dir.join(&filename),
        checksum: checksum_of(args),
        image_format: target.image_format,
        verify: args.get("verify-certificates").is_none_or(|v| v == "1"),
        decompress: args.get("compression").map(|_| content.to_string()),
    };
    Ok((filename, download))
}

/// `POST /nodes/{node}/storage/{storage}/download-url`.
pub async fn download_url(mut call: Call) -> ApiResult {
    check_download_privs(&call)?;
    let args = call.node_args().await?;
    let (filename, download) = prepare_download(&call, &args)?;
    let node = Arc::clone(call.node());
    let user = &call.auth.tokenid;
    let upid = call
        .node()
        .tasks
        .spawn("download", &filename, user, move |log| {
            let line = |l: &str| log.line(l);
            // the task thread runs its own small runtime (a PVE worker is a separate process, too)
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::io("start download runtime"))?;
            let client = node.http_client(download.verify)?;
            runtime.block_on(download.run(&client, &line))
        })?;
    Ok(ApiOk::new(upid))
}

/// `download_file_from_url`: fetch into `<dest>.tmp_dwnl.<pid>`, verify checksum and image, rename.
struct Download {
    url: String,
    dest: PathBuf,
    checksum: Option<(String, String)>,
    image_format: Option<String>,
    verify: bool,
    /// With `compression`: the content type (decompression is for iso only).
    decompress: Option<String>,
}

impl Download {
    async fn run(&self, client: &reqwest::Client, log: qemu_img::Log<'_>) -> Result<()> {
        match self.decompress.as_deref() {
            Some("iso") => {
                return Err(Error::failed(
                    "decompression is not implemented by the simulator",
                ));
            }
            Some(content) => {
                return Err(Error::failed(format!(
                    "decompression not supported for {content}"
                )));
            }
            None => {}
        }
        log(&format!(
            "downloading {} to {}",
            self.url,
            self.dest.display()
        ));
        if self.dest.is_file() {
            return self.existing(log);
        }
        let tmp = PathBuf::from(format!(
            "{}.tmp_dwnl.{}",
            self.dest.display(),
            std::process::id()
        ));
        let result = self.fetch(client, &tmp, log).await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        log(&format!(
            "download of '{}' to '{}' finished",
            self.url,
            self.dest.display()
        ));
        Ok(())
    }

    /// A file of that name exists: fine with the right checksum, refused otherwise.
    fn existing(&self, log: qemu_img::Log) -> Result<()> {
        let Some((expected, algorithm)) = &self.checksum else {
            return Err(Error::failed(format!(
                "refusing to override existing file '{}'",
                self.dest.display()
            )));
        };
        let got = checksum::file_hash(algorithm, &self.dest)?;
        if got.eq_ignore_ascii_case(expected) {
            log(
                "calculating checksum of existing file...OK, got correct file already, no need to download",
            );
            return Ok(());
        }
        log("calculating checksum of existing file...");
        Err(Error::failed(format!(
            "checksum mismatch: got '{got}' != expect '{expected}', aborting"
        )))
    }

    async fn fetch(
        &self,
        client: &reqwest::Client,
        tmp: &Path,
        log: qemu_img::Log<'_>,
    ) -> Result<()> {
        let mut wget = format!("wget --progress=dot:giga -O {} {}", tmp.display(), self.url);
        if !self.verify {
            wget.push_str(" --no-check-certificate");
        }
        // wget's exit codes: 4 network failure, 5 TLS verification failure, 8 server error response
        let failed = |code: u8, why: String| {
            log(&why);
            Error::failed(format!(
                "download failed: command '{wget}' failed: exit code {code}"
            ))
        };
        let response = client.get(&self.url).send().await.map_err(|e| {
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
        let mut file = tokio::fs::File::create(tmp)
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
        self.verify_file(tmp, log)?;
        std::fs::rename(tmp, &self.dest)
            .map_err(|e| Error::failed(format!("unable to rename temporary file: {e}")))
    }

    fn verify_file(&self, tmp: &Path, log: qemu_img::Log) -> Result<()> {
        if let Some((expected, algorithm)) = &self.checksum {
            let got = checksum::file_hash(algorithm, tmp)?;
            if !got.eq_ignore_ascii_case(expected) {
                log("calculating checksum...");
                return Err(Error::failed(format!(
                    "checksum mismatch: got '{got}' != expect '{expected}'"
                )));
            }
            log("calculating checksum...OK, checksum verified");
        }
        if let Some(format) = &self.image_format {
            qemu_img::checked_info(tmp, format, true)
                .map_err(|e| Error::failed(format!("failed to verify file: {e}")))?;
        }
        Ok(())
    }
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
