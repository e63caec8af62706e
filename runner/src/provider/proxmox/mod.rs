//! Proxmox VE as a migration source ([`source`]) and target ([`target`]), [`ProxmoxProvider`], on
//! a thin client of its own ([`api`]: `api2/json` with an API token, UPID tasks) and the system
//! OpenSSH client ([`ssh`]) for what PVE has no API for: reading disks.
//!
//! # Source
//!
//! The VM is found by name in `/cluster/resources` (templates are not sources; two VMs of one name
//! are refused), described from its config: disks in bus order (scsi, virtio, sata, ide; the boot
//! disk first; CD-ROMs skipped; `efidisk0`/`tpmstate0` are not data disks, `bios: ovmf` means UEFI),
//! sockets x cores vCPUs, memory, `ostype`, NICs. A running VM gets a snapshot (`vmstate` 0), reused
//! when an earlier attempt left one of that name. Each disk is read over SSH as PVE's
//! `volume_export` (`Plugin.pm`, `LvmThinPlugin.pm`) allows, into a sparse raw image:
//!
//! | storage | VM stopped (current state) | VM running (snapshot) |
//! | --- | --- | --- |
//! | dir, nfs, cifs: qcow2 | `pvesm export <volid> raw+size -` (a linked clone comes out flattened) | `pvesm export <volid> qcow2+size - --with-snapshots 1`, for a linked clone also its base into `../<basevmid>/<basename>` beside it, then `qemu-img convert -l snapshot.name=<snap>` ([`crate::disk::flatten_snapshot`]) |
//! | dir, nfs, cifs: raw, vmdk | `pvesm export <volid> raw+size -` | refused: PVE has no snapshot of such files (stop the VM) |
//! | lvmthin (thin clones are complete volumes) | `pvesm export <volid> raw+size -` | `lvchange -ay -K <vg>/snap_<volname>_<snap>`, `lvs` for its device and size, `cat` of the device, `lvchange -an` (also on failure) |
//! | lvm | `pvesm export <volid> raw+size -` | refused: no snapshots |
//! | others (zfs, rbd...) | refused, naming the type | refused |
//!
//! `qcow2+size` without `--with-snapshots` and `--snapshot` on dir and LVM-thin are what PVE
//! refuses, hence the two-step reads of snapshots. The choice is logged per disk.
//!
//! # Target
//!
//! Node: `defaults.cluster`, else the first online node. Storage: targetStorageHint, else
//! `defaults.datastore`. Each disk is first put as `<vm>-<disk>-<tag>.<format>` (`<tag>`: the
//! letters and digits of the migration's UID, [`crate::provider::mark`]) into a file storage
//! with `import` content (the target storage when it has it, else the node's first), by upload
//! (multipart, streamed) or, where staging can presign (S3), by PVE's own `download-url`; both with
//! the SHA-256 for PVE to verify. The VMID is reserved at import start (`/cluster/nextid`; another
//! is taken when a concurrent creator wins it). `finish` creates the VM (`import-from` each file,
//! virtio-scsi-single, `efidisk0` for UEFI, `net<i>=virtio,bridge=...`) tagged `virtrigaud` with a
//! `virtrigaud-migration: <uid>` line in its description, starts it when asked and removes the
//! import files; a failed creation removes the half-made VM. Only VMs with that mark are deleted
//! (by VMID, after their config was read), and only import files with that tag reused or deleted.
//! Snapshots of a source are named after the migration and deleted only under that name.
//!
//! # Errors
//!
//! [`errors`] classifies PVE's answers (see its table); SSH failures are classified by
//! [`ssh::ssh_error`]. Credentials (`token_id`, `token_secret`, `ssh-privatekey`) never appear in
//! errors or logs; a presigned URL is removed from what PVE's task logs say.

pub mod api;
pub mod config;
pub mod errors;
mod export;
mod provider;
mod receive;
mod source;
pub mod ssh;
mod target;
pub mod transfer;

pub use api::{Client, TlsOptions, Upid};
pub use export::{ExportPlan, StorageKind};
pub use provider::{ProxmoxProvider, ssh_login};
pub use target::import_name;
