//! A thin, typed vSphere client: exactly the vim25 SOAP calls a migration needs, over reqwest
//! (rustls) with roxmltree for reading and a small escaping writer for requests. The vSphere
//! provider is built on it.
//!
//! - [`Client::connect`] reads the service content; [`Client::login`] keeps the
//!   `vmware_soap_session` cookie for every SOAP call and every datastore/NFC transfer.
//! - Inventory: [`Client::find_vm`], [`Client::find_vm_by_path`], [`Client::datacenter`],
//!   [`Client::find_datastore`], [`Client::find_network`], pools, clusters, hosts, folders.
//! - VMs: [`Client::vm_info`], [`Client::snapshot_info`], snapshots, power, [`Client::reconfigure`]
//!   and [`Client::create_vm`] with a [`ConfigSpec`], [`Client::destroy`]; tasks are waited for.
//! - NFC: [`Client::export_snapshot`], [`Client::import_vapp`] with an [`ImportSpec`] from
//!   [`Client::create_import_spec`], the lease calls, [`Client::nfc_get`] / [`Client::nfc_post`].
//! - Datastore files: [`Client::ds_get`], [`Client::ds_head`], [`Client::ds_put`],
//!   [`Client::ds_delete`], [`Client::ds_mkdir`], [`Client::datastore_info`].
//!
//! Faults map onto [`crate::Error`]: InvalidLogin, NotAuthenticated and NoPermission are
//! [`crate::Error::Auth`]; ManagedObjectNotFound, NotFound and FileNotFound are
//! [`crate::Error::NotFound`]; TaskInProgress, host communication faults, HTTP 5xx (but 501/505) and
//! transport failures are [`crate::Error::Transient`]; an untrusted certificate and every other
//! fault are terminal [`crate::Error::Invalid`] naming the call and the object. The client never
//! retries: callers decide with [`crate::Error::is_retryable`].

mod client;
mod datastore;
mod devices;
mod import;
mod inventory;
mod nfc;
pub mod soap;
mod spec;
mod types;
mod vm;
pub mod xml;

pub use client::{Client, DEFAULT_TASK_TIMEOUT, SESSION_COOKIE, ServiceContent, TlsOptions};
pub use datastore::datastore_path;
pub use import::{ImportParams, ImportSpec};
pub use inventory::{ObjectContent, unescape_name};
pub use nfc::{STREAM_VMDK, replace_star_host};
pub use spec::{CONFIG_SPEC_ORDER, ConfigSpec, DiskFile};
pub use types::*;
