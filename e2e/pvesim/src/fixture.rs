//! The source VM of the e2e world: `database-server` (VMID 100) with a qcow2 system disk (`scsi0`,
//! `local`, a dir storage) and a raw data disk (`scsi1`, `local-lvm`, LVM-thin, as on a default PVE
//! install), filled with known byte patterns (`qemu-io write -P`), so a migrated copy can be checked
//! byte for byte. Both storages can snapshot these volumes (qcow2 internal snapshot, thin snapshot),
//! so the VM can be snapshotted as a whole; a raw disk on `local` could not be.

use std::collections::BTreeMap;
use std::process::Command;

use crate::datadir::{DataDir, random_uuid};
use crate::error::{Error, Result};
use crate::qemu_config::{VmState, format_size};
use crate::qemu_img;
use crate::storage::NodeConfig;

/// VMID of the source VM.
pub const VMID: u32 = 100;
/// Its name.
pub const NAME: &str = "database-server";

/// One written extent: (offset, length, byte).
pub type Pattern = (u64, u64, u8);

/// What the fixture writes to each disk.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    /// Config key.
    pub key: &'static str,
    /// Storage.
    pub storage: &'static str,
    /// Volume ID the fixture creates.
    pub volid: &'static str,
    /// Image format.
    pub format: &'static str,
    /// Virtual size in bytes.
    pub size: u64,
    /// Written extents (the rest reads as zeros).
    pub patterns: Vec<Pattern>,
}

const MIB: u64 = 1 << 20;

/// The disks of the source VM for a given system disk size (data disk: a quarter of it).
pub fn disks(size: u64) -> Vec<DiskSpec> {
    let data_size = (size / 4).max(8 * MIB);
    vec![
        DiskSpec {
            key: "scsi0",
            storage: "local",
            volid: "local:100/vm-100-disk-0.qcow2",
            format: "qcow2",
            size,
            patterns: vec![
                (0, MIB, 0x11),
                (size / 2, 2 * MIB, 0x22),
                (size - MIB, MIB, 0x33),
            ],
        },
        DiskSpec {
            key: "scsi1",
            storage: "local-lvm",
            volid: "local-lvm:vm-100-disk-0",
            format: "raw",
            size: data_size,
            patterns: vec![(0, MIB, 0x44), (data_size / 2, MIB, 0x55)],
        },
    ]
}

/// Creates the source VM unless it exists (`force`: recreate it). Returns whether it was created.
pub fn create_source_vm(data: &DataDir, size: u64, running: bool, force: bool) -> Result<bool> {
    if size < 8 * MIB || !size.is_multiple_of(MIB) {
        return Err(Error::failed(
            "the system disk size must be a multiple of 1 MiB and at least 8 MiB",
        ));
    }
    let node = NodeConfig::load_or_init(data)?;
    if VmState::exists(data, VMID) {
        if !force {
            return Ok(false);
        }
        VmState::remove(data, VMID)?;
    }
    for storage in node.all(data) {
        for old in storage.list_images(Some(VMID))? {
            storage.free(&storage.parse_volid(&old.volid)?)?;
        }
    }
    let quiet = |line: &str| tracing::debug!("{line}");
    let mut config = BTreeMap::new();
    for spec in disks(size) {
        let storage = node.storage(data, spec.storage)?;
        let volid = storage.alloc_image(VMID, spec.format, spec.size, &quiet)?;
        if volid != spec.volid {
            return Err(Error::failed(format!(
                "fixture disk became {volid}, expected {}",
                spec.volid
            )));
        }
        let volume = storage.parse_volid(&volid)?;
        let path = storage.file(&volume);
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", spec.format]);
        for (offset, length, byte) in &spec.patterns {
            cmd.args(["-c", &format!("write -P 0x{byte:02x} {offset} {length}")]);
        }
        let output = cmd.arg(&path).output().map_err(Error::io("run qemu-io"))?;
        if !output.status.success() {
            return Err(Error::failed(format!(
                "qemu-io on {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        qemu_img::info(&path, Some(spec.format))?;
        config.insert(
            spec.key.to_string(),
            format!("{volid},iothread=1,size={}", format_size(spec.size)),
        );
    }
    let entries = [
        ("name", NAME.to_string()),
        (
            "description",
            "virtrigaud e2e source VM (pvesim fixture)".to_string(),
        ),
        ("cores", "2".into()),
        ("sockets", "1".into()),
        ("memory", "2048".into()),
        ("ostype", "l26".into()),
        ("bios", "seabios".into()),
        ("scsihw", "virtio-scsi-single".into()),
        (
            "net0",
            "virtio=BC:24:11:5E:D1:00,bridge=vmbr0,firewall=1".into(),
        ),
        ("boot", "order=scsi0;net0".into()),
        ("agent", "1".into()),
        ("smbios1", format!("uuid={}", random_uuid()?)),
        ("vmgenid", random_uuid()?),
        (
            "meta",
            format!("creation-qemu=10.0.2,ctime={}", crate::datadir::now()),
        ),
    ];
    config.extend(entries.into_iter().map(|(k, v)| (k.to_string(), v)));
    let vm = VmState {
        config,
        snapshots: BTreeMap::new(),
        running_since: running.then(crate::datadir::now),
    };
    vm.save(data, VMID)?;
    Ok(true)
}

/// The guest-visible bytes a disk of the fixture must have (for checks of migrated copies).
pub fn expected_bytes(spec: &DiskSpec) -> Vec<u8> {
    let mut bytes = vec![0u8; spec.size as usize];
    for (offset, length, byte) in &spec.patterns {
        bytes[*offset as usize..(*offset + *length) as usize].fill(*byte);
    }
    bytes
}
