//! The Proxmox VE provider: one API [`Client`] per runner (made on first use), the SSH login for
//! exports (made on first use by the source), and the lookups both roles need.

use std::sync::Arc;
use std::time::Duration;

use crd::plan::ProviderPlan;
use crd::{ProviderDefaults, ProviderType, StopSource};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::api::{Client, SHORT_TASK_TIMEOUT, TlsOptions, as_u64};
use super::config::VmConfig;
use super::ssh::{Ssh, SshLogin, missing_known_hosts};
use crate::credentials::Credentials;
use crate::endpoint::Guard;
use crate::{Error, Result};

/// A Proxmox VE cluster (reached through one node's API) as a migration source and target. Cheap
/// to clone: clones share the client and the SSH login.
#[derive(Clone)]
pub struct ProxmoxProvider {
    pub(super) inner: Arc<Inner>,
}

/// What the clones of a provider share.
pub(super) struct Inner {
    endpoint: String,
    tls: TlsOptions,
    guard: Guard,
    token_id: String,
    token_secret: String,
    pub(super) defaults: ProviderDefaults,
    login: SshLogin,
    ssh_key: Option<String>,
    known_hosts: Option<String>,
    scope: String,
    client: OnceCell<Arc<Client>>,
    ssh: OnceCell<Arc<Ssh>>,
}

impl std::fmt::Debug for ProxmoxProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxmoxProvider")
            .field("endpoint", &self.inner.endpoint)
            .field("ssh", &self.inner.login.describe())
            .finish_non_exhaustive()
    }
}

/// A VM as `/cluster/resources?type=vm` lists it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Resource {
    /// VMID.
    #[serde(deserialize_with = "number")]
    pub vmid: u32,
    /// VM name.
    #[serde(default)]
    pub name: String,
    /// Node it is on.
    pub node: String,
    /// `running`, `stopped`...
    #[serde(default)]
    pub status: String,
    /// Whether it is a template.
    #[serde(default, deserialize_with = "flag")]
    pub template: bool,
    /// `qemu` (or `lxc`: containers are not migrated).
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// A storage as `GET /nodes/{node}/storage` lists it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct NodeStorage {
    /// Storage ID.
    pub storage: String,
    /// Storage type (`dir`, `lvmthin`...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Content types, comma-separated.
    #[serde(default)]
    pub content: String,
    /// Whether it is enabled.
    #[serde(default = "yes", deserialize_with = "flag")]
    pub enabled: bool,
    /// Whether it is active (mounted, reachable).
    #[serde(default = "yes", deserialize_with = "flag")]
    pub active: bool,
}

impl NodeStorage {
    /// Whether it holds `content` (`images`, `import`...).
    pub fn has(&self, content: &str) -> bool {
        self.content.split(',').any(|c| c.trim() == content)
    }
}

/// A volume as the storage's content listing (`GET .../storage/{storage}/content`) shows it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Volume ID.
    pub volid: String,
    /// Size as the listing reports it: an image's virtual size (`images`), a file's length
    /// (`import`, as pve-storage's `get_subdir_files` lists it).
    #[serde(deserialize_with = "number")]
    pub size: u64,
    /// Format.
    #[serde(default)]
    pub format: String,
}

fn yes() -> bool {
    true
}

fn number<'de, D: serde::Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    let v = Value::deserialize(d)?;
    as_u64(&v)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| serde::de::Error::custom(format!("{v} is not a number")))
}

fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(as_u64(&Value::deserialize(d)?).unwrap_or(0) != 0)
}

impl ProxmoxProvider {
    /// A provider for `plan` with the `scope` (`source`/`target`) credentials `token_id`,
    /// `token_secret`, optional `ca.crt` and, for exports, `ssh-privatekey` and `known_hosts`.
    /// The SSH login is the plan's `ssh` (default `root@<endpoint host>:22`). Nothing is
    /// contacted until the first call.
    /// Every connection (API and SSH) goes to an address `guard` judged.
    pub fn new(
        plan: &ProviderPlan,
        creds: &Credentials,
        scope: &str,
        guard: Guard,
    ) -> Result<Self> {
        let login = ssh_login(plan)?;
        Ok(ProxmoxProvider {
            inner: Arc::new(Inner {
                endpoint: plan.endpoint.clone(),
                tls: TlsOptions {
                    insecure_skip_verify: plan.insecure_skip_verify,
                    ca_pem: creds.optional(scope, "ca.crt").map(str::to_string),
                },
                guard,
                token_id: creds.get(scope, "token_id")?.to_string(),
                token_secret: creds.get(scope, "token_secret")?.to_string(),
                defaults: plan.defaults.clone().unwrap_or_default(),
                login,
                ssh_key: creds.optional(scope, "ssh-privatekey").map(str::to_string),
                known_hosts: creds.optional(scope, "known_hosts").map(str::to_string),
                scope: scope.to_string(),
                client: OnceCell::new(),
                ssh: OnceCell::new(),
            }),
        })
    }

    /// Which provider type this is.
    pub(super) fn kind(&self) -> ProviderType {
        ProviderType::Proxmox
    }

    /// The API client (made on first use).
    pub async fn client(&self) -> Result<&Arc<Client>> {
        let i = &self.inner;
        i.client
            .get_or_try_init(|| async {
                let c =
                    Client::new(&i.endpoint, &i.token_id, &i.token_secret, &i.tls, i.guard).await?;
                Ok(Arc::new(c))
            })
            .await
    }

    /// The SSH login for exports (its private files made on first use). Without `ssh-privatekey`
    /// or `known_hosts` in the Secret this is a plan error naming the key.
    pub async fn ssh(&self) -> Result<&Arc<Ssh>> {
        let i = &self.inner;
        i.ssh
            .get_or_try_init(|| async {
                let key = i.ssh_key.as_deref().ok_or_else(|| {
                    Error::Plan(format!(
                        "credential {} missing: a Proxmox VE source reads disks over SSH ({})",
                        crd::plan::credential_file(&i.scope, "ssh-privatekey"),
                        i.login.describe()
                    ))
                })?;
                let known = i
                    .known_hosts
                    .as_deref()
                    .ok_or_else(|| missing_known_hosts(&i.login))?;
                let host = endpoint_policy::parse_host(&i.login.host, i.login.port)
                    .map_err(|why| Error::Invalid(format!("Proxmox VE ssh host: {why}")))?;
                let shown = format!("SSH {}:{}", i.login.host, i.login.port);
                let pinned = i.guard.pin(&host, &shown).await?;
                Ok(Arc::new(
                    Ssh::new(i.login.clone(), key, known)?.pinned(&pinned),
                ))
            })
            .await
    }

    /// Reaches the API with the token (`GET /version`, then `GET /nodes`, which a refused token
    /// cannot list).
    pub(super) async fn check_api(&self) -> Result<()> {
        let client = self.client().await?;
        let version: Value = client.get(&["version"], &[]).await?;
        let nodes = self.nodes().await?;
        let version = version
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or("?");
        tracing::info!(
            "connected to {} (version {version}, nodes {})",
            client.system(),
            nodes.join(", ")
        );
        Ok(())
    }

    /// The cluster's online nodes, by name.
    pub(super) async fn nodes(&self) -> Result<Vec<String>> {
        let list: Vec<Value> = self.client().await?.get(&["nodes"], &[]).await?;
        let mut nodes: Vec<String> = list
            .iter()
            .filter(|n| {
                n.get("status")
                    .and_then(Value::as_str)
                    .is_none_or(|s| s == "online")
            })
            .filter_map(|n| n.get("node").and_then(Value::as_str).map(str::to_string))
            .collect();
        nodes.sort();
        Ok(nodes)
    }

    /// Every VM (and template) of the cluster.
    pub(super) async fn resources(&self) -> Result<Vec<Resource>> {
        let all: Vec<Resource> = self
            .client()
            .await?
            .get(&["cluster", "resources"], &[("type", "vm".into())])
            .await?;
        Ok(all
            .into_iter()
            .filter(|r| r.kind.is_empty() || r.kind == "qemu")
            .collect())
    }

    /// The VMs named `name`.
    pub(super) async fn vms_named(&self, name: &str) -> Result<Vec<Resource>> {
        Ok(self
            .resources()
            .await?
            .into_iter()
            .filter(|r| r.name == name)
            .collect())
    }

    /// The VM `vmid`, if the cluster has it.
    pub(super) async fn vm_by_id(&self, vmid: u32) -> Result<Option<Resource>> {
        Ok(self.resources().await?.into_iter().find(|r| r.vmid == vmid))
    }

    /// The current config of a VM.
    pub(super) async fn config(&self, node: &str, vmid: u32) -> Result<VmConfig> {
        let data: Value = self
            .client()
            .await?
            .get(&["nodes", node, "qemu", &vmid.to_string(), "config"], &[])
            .await?;
        Ok(VmConfig::from_json(&data))
    }

    /// The current config of a VM, `None` when it does not exist.
    pub(super) async fn config_if_present(
        &self,
        node: &str,
        vmid: u32,
    ) -> Result<Option<VmConfig>> {
        match self.config(node, vmid).await {
            Ok(c) => Ok(Some(c)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `running`, `stopped`... of a VM.
    pub(super) async fn power_state(&self, node: &str, vmid: u32) -> Result<String> {
        let status: Value = self
            .client()
            .await?
            .get(
                &[
                    "nodes",
                    node,
                    "qemu",
                    &vmid.to_string(),
                    "status",
                    "current",
                ],
                &[],
            )
            .await?;
        Ok(status
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }

    /// Powers VM `vmid` on (`status/start`); a running one is left as it is.
    pub(super) async fn power_on(&self, node: &str, vmid: u32, name: &str) -> Result<()> {
        if self.power_state(node, vmid).await? == "running" {
            return Ok(());
        }
        let id = vmid.to_string();
        self.client()
            .await?
            .run_task(
                Method::POST,
                &["nodes", node, "qemu", &id, "status", "start"],
                &[],
                SHORT_TASK_TIMEOUT,
            )
            .await?;
        tracing::info!("VM {name} ({vmid} on {node}) started");
        Ok(())
    }

    /// Stops VM `vmid`: a guest shutdown (`status/shutdown`, PVE waiting up to `timeout`, never
    /// forcing), checked afterwards, or a power-off (`status/stop`). A stopped VM is left as it is.
    pub(super) async fn power_off(
        &self,
        node: &str,
        vmid: u32,
        name: &str,
        how: StopSource,
        timeout: Duration,
    ) -> Result<()> {
        if self.power_state(node, vmid).await? != "running" {
            return Ok(());
        }
        let client = self.client().await?;
        let id = vmid.to_string();
        let (action, params) = match how {
            StopSource::Never => return Ok(()),
            StopSource::PowerOff => ("stop", vec![]),
            StopSource::Shutdown => (
                "shutdown",
                vec![
                    ("timeout", timeout.as_secs().to_string()),
                    ("forceStop", "0".to_string()),
                ],
            ),
        };
        let path = ["nodes", node, "qemu", &id, "status", action];
        let ran = client
            .run_task(Method::POST, &path, &params, timeout + SHORT_TASK_TIMEOUT)
            .await;
        if how == StopSource::Shutdown && self.power_state(node, vmid).await? == "running" {
            if let Err(e) = ran {
                tracing::warn!("shutdown of VM {name} ({vmid}) failed: {e}");
            }
            return Err(Error::ShutdownTimedOut {
                vm: format!("{name} ({vmid} on {node})"),
                timeout: crd::format_duration(timeout),
            });
        }
        ran?;
        tracing::info!("VM {name} ({vmid} on {node}) stopped ({action})");
        Ok(())
    }

    /// Stops a running VM, then destroys it with its disks (`purge`, unreferenced disks too).
    pub(super) async fn destroy(&self, node: &str, vmid: u32, name: &str) -> Result<()> {
        let client = self.client().await?;
        let id = vmid.to_string();
        if self.power_state(node, vmid).await? == "running" {
            client
                .run_task(
                    Method::POST,
                    &["nodes", node, "qemu", &id, "status", "stop"],
                    &[],
                    SHORT_TASK_TIMEOUT,
                )
                .await?;
        }
        let params = [
            ("purge", "1".to_string()),
            ("destroy-unreferenced-disks", "1".to_string()),
        ];
        client
            .run_task(
                Method::DELETE,
                &["nodes", node, "qemu", &id],
                &params,
                SHORT_TASK_TIMEOUT,
            )
            .await?;
        tracing::info!("destroyed VM {name} ({vmid} on {node}) with its disks");
        Ok(())
    }

    /// The storages of a node.
    pub(super) async fn storages(&self, node: &str) -> Result<Vec<NodeStorage>> {
        self.client()
            .await?
            .get(&["nodes", node, "storage"], &[])
            .await
    }

    /// One storage of a node; an unknown one is [`Error::NotFound`] naming it.
    pub(super) async fn storage(&self, node: &str, id: &str) -> Result<NodeStorage> {
        self.storages(node)
            .await?
            .into_iter()
            .find(|s| s.storage == id)
            .ok_or_else(|| Error::NotFound {
                what: format!("Proxmox VE storage {id:?}"),
                detail: format!("node {node} has no storage of that name"),
            })
    }

    /// A volume's size and format from its storage's content listing, `None` when it does not
    /// exist. (The listing, not `GET .../content/{volume}`: an absent volume is then no error to
    /// interpret.)
    pub(super) async fn volume(&self, node: &str, volid: &str) -> Result<Option<VolumeInfo>> {
        let (storage, volname) = super::config::split_volid(volid)
            .ok_or_else(|| Error::Invalid(format!("{volid:?} is not a Proxmox VE volume ID")))?;
        let content = match volname.starts_with("import/") {
            true => "import",
            false => "images",
        };
        let list: Vec<VolumeInfo> = self
            .client()
            .await?
            .get(
                &["nodes", node, "storage", storage, "content"],
                &[("content", content.into())],
            )
            .await?;
        Ok(list.into_iter().find(|v| v.volid == volid))
    }

    /// Deletes a volume (a task on newer PVE, synchronous on older ones).
    pub(super) async fn delete_volume(&self, node: &str, volid: &str) -> Result<()> {
        let (storage, _) = super::config::split_volid(volid)
            .ok_or_else(|| Error::Invalid(format!("{volid:?} is not a Proxmox VE volume ID")))?;
        let client = self.client().await?;
        let path = ["nodes", node, "storage", storage, "content", volid];
        let answer: Value = client.delete(&path, &[]).await?;
        if let Some(upid) = answer.as_str() {
            client.wait_task(upid, SHORT_TASK_TIMEOUT, &[]).await?;
        }
        Ok(())
    }
}

/// The SSH login of a plan: its `ssh` fields, else `root` at the endpoint's host on port 22.
pub fn ssh_login(plan: &ProviderPlan) -> Result<SshLogin> {
    let ssh = plan.ssh.clone().unwrap_or_default();
    let host = match ssh.host {
        Some(h) => h,
        None => endpoint_policy::parse_api(&plan.endpoint, "https://pve.example.com:8006")
            .map_err(|why| Error::Invalid(format!("Proxmox VE endpoint: {why}")))?
            .host
            .to_string(),
    };
    Ok(SshLogin {
        host,
        port: ssh.port.unwrap_or(22),
        user: ssh.user.unwrap_or_else(|| "root".into()),
    })
}

/// The error for a handle of another provider type.
pub(super) fn foreign(kind: ProviderType, what: &str) -> Error {
    Error::Invalid(format!(
        "the recorded {what} belongs to a {kind} provider, not to this Proxmox VE provider"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(ssh: Option<crd::SshTarget>) -> ProviderPlan {
        ProviderPlan {
            name: "default/pve".into(),
            type_: ProviderType::Proxmox,
            endpoint: "https://pve.example.com:8006".into(),
            insecure_skip_verify: false,
            defaults: None,
            ssh,
        }
    }

    #[test]
    fn ssh_login_defaults_to_root_at_the_endpoint_host() {
        assert_eq!(
            ssh_login(&plan(None)).unwrap(),
            SshLogin {
                host: "pve.example.com".into(),
                port: 22,
                user: "root".into()
            }
        );
        let custom = crd::SshTarget {
            host: Some("10.0.0.5".into()),
            port: Some(2222),
            user: Some("migrator".into()),
        };
        assert_eq!(
            ssh_login(&plan(Some(custom))).unwrap().describe(),
            "migrator@10.0.0.5:2222"
        );
    }

    #[test]
    fn needs_the_token_and_shows_no_secret() {
        let creds = Credentials::default().with("source", "token_id", "root@pam!t");
        let e = ProxmoxProvider::new(&plan(None), &creds, "source", Guard::default()).unwrap_err();
        assert!(e.to_string().contains("token_secret"), "{e}");
        let creds = creds.with("source", "token_secret", "s3cr3t");
        let p = ProxmoxProvider::new(&plan(None), &creds, "source", Guard::default()).unwrap();
        assert!(!format!("{p:?}").contains("s3cr3t"));
    }

    #[tokio::test]
    async fn exports_need_the_key_and_known_hosts() {
        let creds = Credentials::default()
            .with("source", "token_id", "root@pam!t")
            .with("source", "token_secret", "s");
        let p = ProxmoxProvider::new(&plan(None), &creds, "source", Guard::default()).unwrap();
        // the endpoint host does not resolve here: use a literal address
        let mut pl = plan(None);
        pl.endpoint = "https://127.0.0.1:8006".into();
        let p2 = ProxmoxProvider::new(&pl, &creds, "source", Guard::default()).unwrap();
        let e = p2.ssh().await.unwrap_err();
        assert!(e.to_string().contains("source.ssh-privatekey"), "{e}");
        let creds = creds.with("source", "ssh-privatekey", "KEY");
        let p3 = ProxmoxProvider::new(&pl, &creds, "source", Guard::default()).unwrap();
        let e = p3.ssh().await.unwrap_err();
        assert!(e.to_string().contains("known_hosts"), "{e}");
        assert!(!e.is_retryable());
        // with both, the login host is judged: loopback is refused outside test worlds
        let creds = creds.with("source", "known_hosts", "127.0.0.1 ssh-ed25519 AAAA");
        let p4 = ProxmoxProvider::new(&pl, &creds, "source", Guard::default()).unwrap();
        let e = p4.ssh().await.unwrap_err();
        assert!(matches!(e, Error::ForbiddenEndpoint(_)), "{e}");
        assert!(e.to_string().contains("SSH 127.0.0.1:22"), "{e}");
        drop(p);
    }

    #[test]
    fn resources_read_pve_numbers_in_either_form() {
        let r: Resource = serde_json::from_value(serde_json::json!({
            "vmid": "101", "name": "web", "node": "pve1", "status": "running", "template": 0, "type": "qemu"
        }))
        .unwrap();
        assert_eq!((r.vmid, r.template), (101, false));
        let s: NodeStorage = serde_json::from_value(serde_json::json!({
            "storage": "local", "type": "dir", "content": "images,import,iso"
        }))
        .unwrap();
        assert!(s.has("import") && s.enabled && !s.has("backup"));
    }
}
