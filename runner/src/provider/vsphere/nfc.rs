//! NFC leases: export (ExportSnapshot, ExportVm), import (ImportVApp), the lease's life cycle and
//! the HTTP transfers to and from its device URLs.

use std::time::{Duration, Instant};

use reqwest::Response;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};

use super::Client;
use super::client::unexpected;
use super::import::ImportSpec;
use super::soap::{self, Fault};
use super::types::{DeviceUrl, LeaseInfo, ManifestEntry, MoRef};
use super::xml::{Elem, Xml};
use crate::{Error, Result};

/// How often a lease's state is polled while it initializes.
const LEASE_POLL: Duration = Duration::from_millis(250);
/// Content type of a streamOptimized VMDK uploaded to an import lease.
pub const STREAM_VMDK: &str = "application/x-vnd.vmware-streamVmdk";

impl Client {
    /// Starts exporting snapshot `snap`'s disks: an NFC lease to wait on.
    pub async fn export_snapshot(&self, snap: &MoRef) -> Result<MoRef> {
        self.lease_call("ExportSnapshot", snap, Xml::new()).await
    }

    /// Starts exporting `vm` (powered off) as is. vcsim has no `ExportVm` (MethodNotFound).
    pub async fn export_vm(&self, vm: &MoRef) -> Result<MoRef> {
        match self.lease_call("ExportVm", vm, Xml::new()).await {
            Err(Error::Invalid(m)) if m.contains("MethodNotFound") => Err(Error::Invalid(format!(
                "{m}: this server cannot export a VM directly; snapshot it and use ExportSnapshot"
            ))),
            other => other,
        }
    }

    /// Starts importing `spec` into resource pool `pool` (VM folder `folder`, host `host` when
    /// given): an NFC lease whose device URLs take the disks.
    pub async fn import_vapp(
        &self,
        pool: &MoRef,
        spec: &ImportSpec,
        folder: Option<&MoRef>,
        host: Option<&MoRef>,
    ) -> Result<MoRef> {
        let mut x = Xml::new();
        spec.write("spec", &mut x);
        if let Some(f) = folder {
            x.moref("folder", f);
        }
        if let Some(h) = host {
            x.moref("host", h);
        }
        self.lease_call("ImportVApp", pool, x).await
    }

    async fn lease_call(&self, method: &str, this: &MoRef, args: Xml) -> Result<MoRef> {
        self.call(method, this, args)
            .await?
            .moref_at("returnval")
            .ok_or_else(|| unexpected(&self.system, &format!("{method} on {this}"), "no lease"))
    }

    /// Waits until `lease` is ready and returns its info; a lease that failed is the error of its
    /// fault. Device URLs with a `*` host get the host connected to.
    pub async fn lease_wait_ready(&self, lease: &MoRef, deadline: Instant) -> Result<LeaseInfo> {
        loop {
            let state = self.properties(lease, &["state"]).await?;
            match state.text("state") {
                Some("ready") => return self.lease_info(lease).await,
                Some("error") => return Err(self.lease_error(lease).await),
                Some("done") => {
                    return Err(Error::Invalid(format!(
                        "{}: lease {} is already done (completed or aborted)",
                        self.system, lease.value
                    )));
                }
                _ => {}
            }
            if Instant::now() + LEASE_POLL > deadline {
                return Err(Error::transient(
                    &self.system,
                    format!("lease {} was not ready in time", lease.value),
                ));
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    async fn lease_error(&self, lease: &MoRef) -> Error {
        let context = format!("lease {}", lease.value);
        match self.properties(lease, &["error"]).await {
            Ok(p) => match p.get("error") {
                Some(e) => Fault::from_localized(e).into_error(&self.system, &context),
                None => unexpected(&self.system, &context, "in state error without a fault"),
            },
            Err(e) => e,
        }
    }

    async fn lease_info(&self, lease: &MoRef) -> Result<LeaseInfo> {
        let p = self.properties(lease, &["info"]).await?;
        let context = format!("reading lease {}", lease.value);
        let info = p
            .get("info")
            .ok_or_else(|| unexpected(&self.system, &context, "ready without info"))?;
        let entity = info
            .moref_at("entity")
            .ok_or_else(|| unexpected(&self.system, &context, "no entity"))?;
        Ok(LeaseInfo {
            entity,
            device_urls: info.all("deviceUrl").map(|d| self.device_url(d)).collect(),
            lease_timeout: info.parse_at("leaseTimeout").unwrap_or(0),
        })
    }

    fn device_url(&self, d: &Elem) -> DeviceUrl {
        DeviceUrl {
            key: d.string_at("key"),
            import_key: d.string_at("importKey"),
            url: replace_star_host(d.text_at("url").unwrap_or_default(), &self.authority),
            target_id: d.string_at("targetId"),
            disk: d.parse_at("disk").unwrap_or(false),
            file_size: d.parse_at::<u64>("fileSize").filter(|s| *s > 0),
        }
    }

    /// Reports transfer progress (0-100); keeps the lease from timing out.
    pub async fn lease_progress(&self, lease: &MoRef, percent: u8) -> Result<()> {
        let mut x = Xml::new();
        x.text("percent", percent.min(100));
        self.call("HttpNfcLeaseProgress", lease, x).await?;
        Ok(())
    }

    /// Ends a lease whose transfers all succeeded.
    pub async fn lease_complete(&self, lease: &MoRef) -> Result<()> {
        self.call("HttpNfcLeaseComplete", lease, Xml::new()).await?;
        Ok(())
    }

    /// Ends a lease that failed, with `message` as the reason.
    pub async fn lease_abort(&self, lease: &MoRef, message: &str) -> Result<()> {
        let mut x = Xml::new();
        x.open("fault")
            .open_typed("fault", "SystemError")
            .text("reason", message)
            .close("fault")
            .text("localizedMessage", message)
            .close("fault");
        self.call("HttpNfcLeaseAbort", lease, x).await?;
        Ok(())
    }

    /// The SHA-1 and size of what went through each device URL of `lease`.
    pub async fn lease_manifest(&self, lease: &MoRef) -> Result<Vec<ManifestEntry>> {
        let reply = self
            .call("HttpNfcLeaseGetManifest", lease, Xml::new())
            .await?;
        Ok(reply
            .all("returnval")
            .map(|e| ManifestEntry {
                key: e.string_at("key"),
                sha1: e.string_at("sha1").to_ascii_lowercase(),
                size: e.parse_at("size").unwrap_or(0),
            })
            .collect())
    }

    /// Starts downloading a device URL of an export lease; the body streams.
    pub async fn nfc_get(&self, url: &str) -> Result<Response> {
        let rb = self.nfc_request(reqwest::Method::GET, url).await?;
        self.transfer(format!("GET {}", strip_query(url)), rb).await
    }

    /// Uploads a streamOptimized VMDK of `len` bytes to a device URL of an import lease.
    pub async fn nfc_post(&self, url: &str, body: reqwest::Body, len: u64) -> Result<()> {
        let rb = self
            .nfc_request(reqwest::Method::POST, url)
            .await?
            .header(CONTENT_TYPE, STREAM_VMDK)
            .header(CONTENT_LENGTH, len)
            .body(body);
        self.transfer(format!("POST {}", strip_query(url)), rb)
            .await?;
        Ok(())
    }

    /// A request to a device URL. The session cookie goes only to the host connected to (a
    /// vCenter's device URLs name ESXi hosts: the lease's URL is the credential there); another
    /// host is judged by the endpoint policy, as endpoints are.
    async fn nfc_request(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder> {
        let parsed = url::Url::parse(url).map_err(|e| {
            Error::Invalid(format!(
                "{}: device URL {}: {e}",
                self.system,
                strip_query(url)
            ))
        })?;
        let rb = self.http.request(method, parsed.clone());
        if same_origin(&parsed, &self.sdk) {
            return Ok(self.with_session(rb));
        }
        self.guard.pin_url(&parsed).await?;
        Ok(rb)
    }

    /// Sends a datastore or NFC request (`what` names it in errors); a non-success status is
    /// classified.
    pub(super) async fn transfer(
        &self,
        what: String,
        rb: reqwest::RequestBuilder,
    ) -> Result<Response> {
        let response = rb
            .send()
            .await
            .map_err(|e| soap::transport_error(&self.system, &what, &e))?;
        if !response.status().is_success() {
            return Err(soap::status_error(&self.system, &what, response.status()));
        }
        Ok(response)
    }
}

/// Same scheme, host and port.
fn same_origin(a: &url::Url, b: &url::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// A URL without its query, for messages.
fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// `https://*/nfc/...` (or `https://*:443/...`) -> `https://<authority>/nfc/...`.
pub fn replace_star_host(url: &str, authority: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some(after) = rest.strip_prefix('*') else {
        return url.to_string();
    };
    // drop the star's own port, if any: the host connected to comes with its port
    let after = match after.strip_prefix(':') {
        Some(p) => p.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => after,
    };
    format!("{scheme}://{authority}{after}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_hosts_are_replaced() {
        assert_eq!(
            replace_star_host("https://*/nfc/52a/disk-0.vmdk", "10.0.0.5:8989"),
            "https://10.0.0.5:8989/nfc/52a/disk-0.vmdk"
        );
        assert_eq!(
            replace_star_host("https://*:443/nfc/x", "esx1"),
            "https://esx1/nfc/x"
        );
        assert_eq!(
            replace_star_host("https://esx1.lab:443/nfc/x", "vc"),
            "https://esx1.lab:443/nfc/x"
        );
    }

    #[test]
    fn the_session_goes_to_the_same_origin_only() {
        let sdk = url::Url::parse("https://vc.lab/sdk").unwrap();
        let same = url::Url::parse("https://vc.lab:443/nfc/x/disk-0.vmdk").unwrap();
        let esx = url::Url::parse("https://esx1.lab/nfc/x/disk-0.vmdk").unwrap();
        let port = url::Url::parse("https://vc.lab:8443/nfc/x").unwrap();
        assert!(same_origin(&same, &sdk));
        assert!(!same_origin(&esx, &sdk));
        assert!(!same_origin(&port, &sdk));
    }

    #[test]
    fn queries_are_not_shown() {
        assert_eq!(
            strip_query("https://h/folder/a.vmdk?dcPath=DC0&dsName=ds"),
            "https://h/folder/a.vmdk"
        );
    }
}
