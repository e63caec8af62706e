//! The simulated node: data directory, storage definitions, tasks, and the lock that serializes
//! config changes (PVE's `lock_config`). Shared by the API handlers and the task workers.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::qemu_config::VmState;
use crate::storage::{NodeConfig, Storage};
use crate::tasks::Tasks;

/// Everything a request or task needs.
pub struct Node {
    /// The data directory.
    pub data: DataDir,
    /// Node name and storages.
    pub config: NodeConfig,
    /// Worker tasks.
    pub tasks: Arc<Tasks>,
    /// Serializes read-modify-write of VM state files.
    lock: Mutex<()>,
    /// Further CAs (PEM) download-url trusts.
    extra_ca: Option<Vec<u8>>,
}

impl Node {
    /// Opens (initializing if needed) the node in `data`. `extra_ca` is a PEM bundle of further CAs
    /// download-url trusts (the e2e world's CA, as if installed on the PVE host).
    pub fn open(data: DataDir, extra_ca: Option<&[u8]>) -> Result<Arc<Node>> {
        let config = NodeConfig::load_or_init(&data)?;
        let tasks = Tasks::new(data.tasks_dir(), &config.node);
        if let Some(pem) = extra_ca {
            reqwest::Certificate::from_pem_bundle(pem)?;
        }
        Ok(Arc::new(Node {
            data,
            config,
            tasks,
            lock: Mutex::new(()),
            extra_ca: extra_ca.map(<[u8]>::to_vec),
        }))
    }

    /// An HTTP client for download-url (`verify`: check certificates against the system roots and
    /// the extra CAs).
    pub fn http_client(&self, verify: bool) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder().user_agent("pvesim download-url");
        if !verify {
            builder = builder.danger_accept_invalid_certs(true);
        } else if let Some(pem) = &self.extra_ca {
            for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(builder.build()?)
    }

    /// The node name.
    pub fn name(&self) -> &str {
        &self.config.node
    }

    /// A storage by ID.
    pub fn storage(&self, id: &str) -> Result<Storage> {
        self.config.storage(&self.data, id)
    }

    /// All storages.
    pub fn storages(&self) -> Vec<Storage> {
        self.config.all(&self.data)
    }

    /// Fails unless `node` is this node. PVE would proxy the call to another cluster member; a
    /// name it cannot resolve gives this error.
    pub fn check_node(&self, node: &str) -> Result<()> {
        if node == self.name() || node == "localhost" {
            Ok(())
        } else {
            Err(Error::failed(format!(
                "hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
            )))
        }
    }

    /// Takes the config lock.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads, changes and saves one VM under the config lock.
    pub fn update_vm<R>(
        &self,
        vmid: u32,
        change: impl FnOnce(&mut VmState) -> Result<R>,
    ) -> Result<R> {
        let _guard = self.lock();
        let mut vm = VmState::load(&self.data, self.name(), vmid)?;
        let result = change(&mut vm)?;
        vm.save(&self.data, vmid)?;
        Ok(result)
    }

    /// Loads one VM.
    pub fn load_vm(&self, vmid: u32) -> Result<VmState> {
        VmState::load(&self.data, self.name(), vmid)
    }
}
