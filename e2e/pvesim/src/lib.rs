//! A Proxmox VE simulator for the e2e world, modelled on the published PVE API and on the code of
//! pve-manager, qemu-server, pve-storage, pve-common, pve-access-control and pve-http-server.
//!
//! * [`api`]: `api2/json` over HTTPS with `PVEAPIToken` authentication ([`auth`]), parameters
//!   verified against PVE's published API schema ([`schema`]), PVE's error answers ([`error`]).
//! * [`storage`]: `local` (dir: images, import, iso) and `local-lvm` (LVM-thin, images) with real files;
//!   [`qemu_img`] does the image work as PVE does (create, convert for `import-from`, snapshots).
//! * [`qemu_config`] and [`vm`]: VM configs, disks, snapshots, power state; [`tasks`]: UPID tasks.
//! * [`export`] and [`pvesm_cli`]: the `pvesm` command an sshd session runs (`pvesm export ... raw+size -`);
//!   [`lvm_cli`]: `lvs` and `lvchange` for the LVM-thin LVs PVE has no API for (snapshots).
//! * [`fixture`]: the source VM `database-server`, templates and linked clones on both storages.
//!
//! All state lives in a data directory ([`datadir`]), so the server and `pvesm` agree.

pub mod api;
pub mod args;
pub mod auth;
pub mod checksum;
pub mod datadir;
pub mod error;
pub mod export;
pub mod fixture;
pub mod lvm_cli;
pub mod node;
pub mod pvesm_cli;
pub mod qemu_config;
pub mod qemu_img;
pub mod schema;
pub mod server;
pub mod storage;
pub mod tasks;
pub mod vm;

pub use error::{Error, Result};
