//! VMware vSphere (vCenter or ESXi) as a migration source ([`source`]) and target ([`target`]),
//! [`VsphereProvider`], on a thin, typed client of its own: exactly the vim25 SOAP calls a
//! migration needs, over reqwest (rustls) with roxmltree for reading and a small escaping writer for
//! requests (the generated `vim_rs` bindings were measured at +6m48s and 8.4 GB of rustc memory per
//! cold build, too much for CI).
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
mod descriptor;
mod devices;
mod import;
mod inventory;
mod lease;
mod nfc;
mod ovf;
mod provider;
pub mod soap;
mod source;
mod spec;
mod target;
mod types;
mod vm;
pub mod xml;

pub use client::{Client, DEFAULT_TASK_TIMEOUT, SESSION_COOKIE, ServiceContent, TlsOptions};
pub use datastore::{datastore_path, split_datastore_path};
pub use import::{ImportParams, ImportSpec};
pub use inventory::{ObjectContent, unescape_name};
pub use nfc::{STREAM_VMDK, replace_star_host};
pub use provider::{OWNER_KEY, VsphereProvider};
pub use spec::{CONFIG_SPEC_ORDER, ConfigSpec, DiskFile};
pub use types::*;
