//! The vSphere provider: one logged-in [`Client`] per runner, shared by the sessions, plus what the
//! source ([`super::source`]) and target ([`super::target`]) halves both need.

use std::sync::Arc;

use crd::plan::ProviderPlan;
use crd::{ProviderDefaults, ProviderType};
use tokio::sync::OnceCell;

use super::{Client, Datacenter, MoRef, TlsOptions, VmInfo};
use crate::credentials::Credentials;
use crate::endpoint::Guard;
use crate::provider::{Firmware, OsFamily};
use crate::{Error, Result};

/// The extraConfig key that marks a VM as created by a migration (its value: the migration's UID).
pub const OWNER_KEY: &str = "virtrigaud.migration.uid";

/// A vSphere endpoint (vCenter or ESXi) as a migration source and target. Cheap to clone: clones
/// share the session.
#[derive(Clone)]
pub struct VsphereProvider {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    endpoint: String,
    tls: TlsOptions,
    guard: Guard,
    user: String,
    password: String,
    pub(super) defaults: ProviderDefaults,
    client: OnceCell<Arc<Client>>,
}

impl std::fmt::Debug for VsphereProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsphereProvider")
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

impl VsphereProvider {
    /// A provider for `plan` with the `scope` (`source`/`target`) credentials `username`,
    /// `password` and an optional `ca.crt`; every connection goes to an address `guard` judged.
    /// Nothing is contacted until the first call.
    pub fn new(
        plan: &ProviderPlan,
        creds: &Credentials,
        scope: &str,
        guard: Guard,
    ) -> Result<Self> {
        Ok(VsphereProvider {
            inner: Arc::new(Inner {
                endpoint: plan.endpoint.clone(),
                tls: TlsOptions {
                    insecure_skip_verify: plan.insecure_skip_verify,
                    ca_pem: creds.optional(scope, "ca.crt").map(str::to_string),
                },
                guard,
                user: creds.get(scope, "username")?.to_string(),
                password: creds.get(scope, "password")?.to_string(),
                defaults: plan.defaults.clone().unwrap_or_default(),
                client: OnceCell::new(),
            }),
        })
    }

    /// The logged-in client (connected and logged in on first use).
    pub(super) async fn client(&self) -> Result<&Arc<Client>> {
        self.inner
            .client
            .get_or_try_init(|| async {
                let client = Client::connect(
                    &self.inner.endpoint,
                    self.inner.tls.clone(),
                    self.inner.guard,
                )
                .await?;
                client.login(&self.inner.user, &self.inner.password).await?;
                let about = client.service_content();
                tracing::info!(
                    "connected to {} ({}, API {})",
                    client.system(),
                    about.full_name,
                    about.api_version
                );
                Ok(Arc::new(client))
            })
            .await
    }

    /// Connects and logs in (both roles' `check`).
    pub(super) async fn check(&self) -> Result<()> {
        self.client().await.map(|_| ())
    }

    /// Logs out, when logged in.
    pub(super) async fn close(&self) {
        if let Some(client) = self.inner.client.get()
            && let Err(e) = client.logout().await
        {
            tracing::warn!("logging out of {}: {e}", client.system());
        }
    }

    /// The datacenter `obj` is in: its nearest Datacenter ancestor.
    pub(super) async fn datacenter_of(&self, obj: &MoRef) -> Result<Datacenter> {
        let client = self.client().await?;
        let mut at = obj.clone();
        for _ in 0..64 {
            let parent = client
                .properties(&at, &["parent"])
                .await?
                .moref("parent")
                .ok_or_else(|| {
                    Error::Invalid(format!("{}: {obj} is in no datacenter", client.system()))
                })?;
            if parent.kind == "Datacenter" {
                return client.datacenter_info(&parent).await;
            }
            at = parent;
        }
        Err(Error::Invalid(format!(
            "{}: the inventory above {obj} is too deep",
            client.system()
        )))
    }

    /// The VM `moref` when it exists (`None` when the server no longer knows it).
    pub(super) async fn vm_if_present(&self, moref: &MoRef) -> Result<Option<VmInfo>> {
        match self.client().await?.vm_info(moref).await {
            Ok(vm) => Ok(Some(vm)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Powers a VM off when it runs, then destroys it with its disks.
    pub(super) async fn destroy(&self, vm: &VmInfo) -> Result<()> {
        let client = self.client().await?;
        if vm.power_state == super::PowerState::PoweredOn {
            client.power_off(&vm.moref).await?;
        }
        client.destroy(&vm.moref).await?;
        tracing::info!("destroyed VM {} ({})", vm.name, vm.moref.value);
        Ok(())
    }

    /// Which provider type this is.
    pub(super) fn kind(&self) -> ProviderType {
        ProviderType::Vsphere
    }
}

/// A VM's moref from its value (`vm-42`).
pub(super) fn vm_ref(value: &str) -> MoRef {
    MoRef::new("VirtualMachine", value)
}

/// The runner's firmware for vSphere's.
pub(super) fn firmware(f: super::Firmware) -> Firmware {
    match f {
        super::Firmware::Efi => Firmware::Uefi,
        super::Firmware::Bios => Firmware::Bios,
    }
}

/// vSphere's firmware for the runner's.
pub(super) fn vsphere_firmware(f: Firmware) -> super::Firmware {
    match f {
        Firmware::Uefi => super::Firmware::Efi,
        Firmware::Bios => super::Firmware::Bios,
    }
}

/// The guest OS family of a vSphere guest id (`ubuntu64Guest`, `windows2019srv_64Guest`...).
pub(super) fn os_family(guest_id: &str) -> OsFamily {
    let id = guest_id.to_ascii_lowercase();
    if id.starts_with("win") {
        OsFamily::Windows
    } else if [
        "linux", "ubuntu", "debian", "centos", "rhel", "sles", "oracle", "fedora", "photon",
        "coreos", "asianux", "opensuse", "rocky", "alma", "amazon",
    ]
    .iter()
    .any(|k| id.contains(k))
    {
        OsFamily::Linux
    } else {
        OsFamily::Other
    }
}

/// The guest id a created VM gets for an OS family.
pub(super) fn guest_id(os: OsFamily) -> &'static str {
    match os {
        OsFamily::Linux => "otherLinux64Guest",
        OsFamily::Windows => "windows9Server64Guest",
        OsFamily::Other => "otherGuest64",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ids_map_to_families_and_back() {
        assert_eq!(os_family("ubuntu64Guest"), OsFamily::Linux);
        assert_eq!(os_family("windows2019srv_64Guest"), OsFamily::Windows);
        assert_eq!(os_family("otherGuest"), OsFamily::Other);
        for os in [OsFamily::Linux, OsFamily::Windows, OsFamily::Other] {
            assert_eq!(os_family(guest_id(os)), os);
        }
    }
}
