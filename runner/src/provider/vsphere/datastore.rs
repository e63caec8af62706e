//! Datastore files: HTTP access under `/folder` (GET with Range, HEAD, PUT) and the FileManager /
//! VirtualDiskManager calls for directories and deletion.

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, RANGE};
use reqwest::{Response, StatusCode};
use url::Url;

use super::Client;
use super::client::unexpected;
use super::types::{Datacenter, DatastoreInfo, MoRef};
use super::xml::Xml;
use crate::{Error, Result};

/// `[datastore] path`: how vSphere names a datastore file.
pub fn datastore_path(ds: &str, path: &str) -> String {
    format!("[{ds}] {}", path.trim_start_matches('/'))
}

/// `(datastore, path)` of a `[datastore] path` name.
pub fn split_datastore_path(name: &str) -> Result<(&str, &str)> {
    name.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .map(|(ds, path)| (ds, path.trim_start()))
        .filter(|(ds, path)| !ds.is_empty() && !path.is_empty())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{name:?} is not a datastore path ([datastore] path)"
            ))
        })
}

impl Client {
    /// `https://host/folder/<path>?dcPath=<dc>&dsName=<ds>`, every part percent-encoded.
    pub fn datastore_url(&self, dc: &Datacenter, ds: &str, path: &str) -> Url {
        let mut url = self.sdk.clone();
        url.set_path("/folder");
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(path.split('/').filter(|s| !s.is_empty()));
        }
        url.query_pairs_mut()
            .append_pair("dcPath", &dc.path)
            .append_pair("dsName", ds);
        url
    }

    fn ds_what(method: &str, dc: &Datacenter, ds: &str, path: &str) -> String {
        format!(
            "{method} {} in datacenter {}",
            datastore_path(ds, path),
            dc.name
        )
    }

    /// Sends a `/folder` request; a 404 names the datastore file.
    async fn ds_transfer(
        &self,
        what: String,
        file: String,
        rb: reqwest::RequestBuilder,
    ) -> Result<Response> {
        self.transfer(what, rb).await.map_err(|e| match e {
            Error::NotFound { detail, .. } => Error::NotFound {
                what: format!("datastore file {file}"),
                detail: format!("{detail} ({})", self.system),
            },
            other => other,
        })
    }

    /// Starts downloading a datastore file from byte `offset` (a `Range` request when not 0);
    /// the body streams.
    pub async fn ds_get(
        &self,
        dc: &Datacenter,
        ds: &str,
        path: &str,
        offset: u64,
    ) -> Result<Response> {
        let mut rb = self.with_session(self.http.get(self.datastore_url(dc, ds, path)));
        if offset > 0 {
            rb = rb.header(RANGE, format!("bytes={offset}-"));
        }
        let what = Self::ds_what("GET", dc, ds, path);
        let file = datastore_path(ds, path);
        let response = self.ds_transfer(what.clone(), file, rb).await?;
        if offset > 0 && response.status() != StatusCode::PARTIAL_CONTENT {
            return Err(Error::Invalid(format!(
                "{}: {what}: asked for bytes from {offset}, got HTTP {} (Range not honoured)",
                self.system,
                response.status()
            )));
        }
        Ok(response)
    }

    /// The size of a datastore file; [`Error::NotFound`] when there is none.
    pub async fn ds_head(&self, dc: &Datacenter, ds: &str, path: &str) -> Result<u64> {
        let rb = self.with_session(self.http.head(self.datastore_url(dc, ds, path)));
        let what = Self::ds_what("HEAD", dc, ds, path);
        let file = datastore_path(ds, path);
        let response = self.ds_transfer(what.clone(), file, rb).await?;
        response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| unexpected(&self.system, &what, "no Content-Length"))
    }

    /// Uploads `len` bytes of `body` to a datastore file (created or replaced).
    pub async fn ds_put(
        &self,
        dc: &Datacenter,
        ds: &str,
        path: &str,
        body: reqwest::Body,
        len: u64,
    ) -> Result<()> {
        let rb = self
            .with_session(self.http.put(self.datastore_url(dc, ds, path)))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, len)
            .body(body);
        self.transfer(Self::ds_what("PUT", dc, ds, path), rb)
            .await?;
        Ok(())
    }

    /// Deletes a datastore file or directory (FileManager.DeleteDatastoreFile_Task; vcsim's
    /// `/folder` does not implement DELETE).
    pub async fn ds_delete(&self, dc: &Datacenter, ds: &str, path: &str) -> Result<()> {
        let mut x = Xml::new();
        x.text("name", datastore_path(ds, path))
            .moref("datacenter", &dc.moref);
        let fm = &self.content.file_manager;
        self.run_task("DeleteDatastoreFile_Task", fm, x).await?;
        Ok(())
    }

    /// Deletes a virtual disk: its descriptor and extents (VirtualDiskManager).
    pub async fn delete_virtual_disk(&self, dc: &Datacenter, ds: &str, path: &str) -> Result<()> {
        let vdm = self.content.virtual_disk_manager.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: the server has no VirtualDiskManager",
                self.system
            ))
        })?;
        let mut x = Xml::new();
        x.text("name", datastore_path(ds, path))
            .moref("datacenter", &dc.moref);
        self.run_task("DeleteVirtualDisk_Task", vdm, x).await?;
        Ok(())
    }

    /// Creates a datastore directory (and its parents when asked).
    pub async fn ds_mkdir(
        &self,
        dc: &Datacenter,
        ds: &str,
        path: &str,
        parents: bool,
    ) -> Result<()> {
        let mut x = Xml::new();
        x.text("name", datastore_path(ds, path))
            .moref("datacenter", &dc.moref)
            .text("createParentDirectories", parents);
        self.call("MakeDirectory", &self.content.file_manager, x)
            .await?;
        Ok(())
    }

    /// Name, type, capacity and free space of datastore `ds`.
    pub async fn datastore_info(&self, ds: &MoRef) -> Result<DatastoreInfo> {
        let p = self.properties(ds, &["summary"]).await?;
        let s = p
            .get("summary")
            .ok_or_else(|| unexpected(&self.system, &format!("reading {ds}"), "no summary"))?;
        Ok(DatastoreInfo {
            moref: ds.clone(),
            name: super::inventory::unescape_name(s.text_at("name").unwrap_or_default()),
            kind: s.string_at("type"),
            capacity: s.parse_at("capacity").unwrap_or(0),
            free_space: s.parse_at("freeSpace").unwrap_or(0),
            accessible: s.parse_at("accessible").unwrap_or(false),
            url: s.string_at("url"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_datastore_paths() {
        assert_eq!(
            split_datastore_path("[LocalDS_0] web/web.vmdk").unwrap(),
            ("LocalDS_0", "web/web.vmdk")
        );
        assert!(split_datastore_path("web.vmdk").is_err());
        assert!(split_datastore_path("[] x").is_err());
        assert!(split_datastore_path("[ds]").is_err());
    }

    #[test]
    fn datastore_paths() {
        assert_eq!(
            datastore_path("LocalDS_0", "/vm/a.vmdk"),
            "[LocalDS_0] vm/a.vmdk"
        );
        assert_eq!(datastore_path("ds", ""), "[ds] ");
    }
}
