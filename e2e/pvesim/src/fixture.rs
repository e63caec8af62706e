//! The VMs of the e2e world, with disks filled with known byte patterns (`qemu-io write -P`) so a
//! migrated copy can be checked byte for byte ([`expected_bytes`]):
//!
//! | VMID | name | disks |
//! | --- | --- | --- |
//! | 100 | `database-server` | `scsi0` `local:100/vm-100-disk-0.qcow2`, `scsi1` `local-lvm:vm-100-disk-0` |
//! | 900 | `base-template` (template) | `scsi0` `local:900/base-900-disk-0.qcow2` |
//! | 101 | `web-clone` (linked clone of 900) | `scsi0` `local:900/base-900-disk-0.qcow2/101/vm-101-disk-0.qcow2` |
//! | 901 | `lvm-template` (template) | `scsi0` `local-lvm:base-901-disk-0` |
//! | 102 | `app-clone` (linked clone of 901) | `scsi0` `local-lvm:vm-102-disk-0` |
//!
//! They are made the way PVE makes them: a VM's disk becomes a template's base image by
//! `create_base`, a linked clone's disk by `clone_image` (a qcow2 overlay with the relative
//! backing file `../900/base-900-disk-0.qcow2` on `local`, a thin snapshot on `local-lvm`), and
//! each clone then writes its own extents over some of the base's.

use std::collections::BTreeMap;
use std::process::Command;

use crate::datadir::{DataDir, random_uuid};
use crate::error::{Error, Result};
use crate::qemu_config::{VmState, format_size};
use crate::qemu_img;
use crate::storage::{NodeConfig, Storage, StorageKind};

/// VMID of the source VM.
pub const VMID: u32 = 100;
/// Its name.
pub const NAME: &str = "database-server";

/// One written extent: (offset, length, byte).
pub type Pattern = (u64, u64, u8);

/// What a disk of the fixture holds.
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
    /// The base image of a linked clone.
    pub base: Option<&'static str>,
    /// The extents written to this volume itself (a clone's own writes).
    pub written: Vec<Pattern>,
    /// The guest's view, in write order: the base's extents, then this volume's (the rest reads
    /// as zeros).
    pub patterns: Vec<Pattern>,
}

/// One VM of the fixture.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// VMID.
    pub vmid: u32,
    /// Name.
    pub name: &'static str,
    /// A template (`template: 1`).
    pub template: bool,
    /// Its disks.
    pub disks: Vec<DiskSpec>,
}

const MIB: u64 = 1 << 20;

/// The size of the LVM-thin disks for a system disk size: a quarter, at least 8 MiB, in whole
/// 4 MiB extents.
fn lvm_size(size: u64) -> u64 {
    (size / 4).max(8 * MIB).div_ceil(4 * MIB) * 4 * MIB
}

fn disk(key: &'static str, volid: &'static str, size: u64, written: Vec<Pattern>) -> DiskSpec {
    let (storage, format) = match volid.split_once(':') {
        Some(("local", _)) => ("local", "qcow2"),
        _ => ("local-lvm", "raw"),
    };
    DiskSpec {
        key,
        storage,
        volid,
        format,
        size,
        base: None,
        patterns: written.clone(),
        written,
    }
}

/// A linked clone's disk: the base's extents under its own.
fn clone_disk(base: &DiskSpec, volid: &'static str, written: Vec<Pattern>) -> DiskSpec {
    let mut spec = disk(base.key, volid, base.size, written.clone());
    spec.base = Some(base.volid);
    spec.patterns = base.patterns.iter().copied().chain(written).collect();
    spec
}

/// The disks of the source VM for a given system disk size (data disk: `lvm_size`).
pub fn disks(size: u64) -> Vec<DiskSpec> {
    let data = lvm_size(size);
    vec![
        disk(
            "scsi0",
            "local:100/vm-100-disk-0.qcow2",
            size,
            vec![
                (0, MIB, 0x11),
                (size / 2, 2 * MIB, 0x22),
                (size - MIB, MIB, 0x33),
            ],
        ),
        disk(
            "scsi1",
            "local-lvm:vm-100-disk-0",
            data,
            vec![(0, MIB, 0x44), (data / 2, MIB, 0x55)],
        ),
    ]
}

/// Every VM of the fixture, in creation order (templates before their clones).
pub fn vms(size: u64) -> Vec<VmSpec> {
    let lvm = lvm_size(size);
    let base = disk(
        "scsi0",
        "local:900/base-900-disk-0.qcow2",
        size,
        vec![
            (0, MIB, 0x61),
            (size / 4, 2 * MIB, 0x62),
            (size - MIB, MIB, 0x63),
        ],
    );
    let web = clone_disk(
        &base,
        "local:900/base-900-disk-0.qcow2/101/vm-101-disk-0.qcow2",
        vec![(size / 4 + MIB, 2 * MIB, 0x71), (size / 2, MIB, 0x72)],
    );
    let lvm_base = disk(
        "scsi0",
        "local-lvm:base-901-disk-0",
        lvm,
        vec![(0, MIB, 0x81), (lvm / 2, MIB, 0x82)],
    );
    let app = clone_disk(
        &lvm_base,
        "local-lvm:vm-102-disk-0",
        vec![(MIB / 2, MIB, 0x91), (lvm - MIB, MIB, 0x92)],
    );
    let vm = |vmid, name, template, disks| VmSpec {
        vmid,
        name,
        template,
        disks,
    };
    vec![
        vm(VMID, NAME, false, disks(size)),
        vm(900, "base-template", true, vec![base]),
        vm(101, "web-clone", false, vec![web]),
        vm(901, "lvm-template", true, vec![lvm_base]),
        vm(102, "app-clone", false, vec![app]),
    ]
}

/// The fixture VM `vmid`.
pub fn vm(size: u64, vmid: u32) -> Option<VmSpec> {
    vms(size).into_iter().find(|v| v.vmid == vmid)
}

/// The guest-visible bytes a disk of the fixture must have (for checks of migrated copies).
pub fn expected_bytes(spec: &DiskSpec) -> Vec<u8> {
    let mut bytes = vec![0u8; spec.size as usize];
    for (offset, length, byte) in &spec.patterns {
        bytes[*offset as usize..(*offset + *length) as usize].fill(*byte);
    }
    bytes
}

fn check_size(size: u64) -> Result<()> {
    if size < 8 * MIB || !size.is_multiple_of(MIB) {
        return Err(Error::failed(
            "the system disk size must be a multiple of 1 MiB and at least 8 MiB",
        ));
    }
    Ok(())
}

/// Creates the source VM (100) unless it exists (`force`: recreate it). Returns whether it was
/// created.
pub fn create_source_vm(data: &DataDir, size: u64, running: bool, force: bool) -> Result<bool> {
    check_size(size)?;
    let node = NodeConfig::load_or_init(data)?;
    let spec = vm(size, VMID).expect("the source VM is a fixture VM");
    if VmState::exists(data, VMID) && !force {
        return Ok(false);
    }
    remove_vm(data, &node, VMID)?;
    create_vm(data, &node, &spec, running)?;
    Ok(true)
}

/// Creates every fixture VM that does not exist (`force`: recreates all, clones removed before
/// their templates); returns (VMID, created) per VM. `running` applies to the source VM.
pub fn create_all(
    data: &DataDir,
    size: u64,
    running: bool,
    force: bool,
) -> Result<Vec<(VmSpec, bool)>> {
    check_size(size)?;
    let node = NodeConfig::load_or_init(data)?;
    let specs = vms(size);
    if force {
        for spec in specs.iter().rev() {
            remove_vm(data, &node, spec.vmid)?;
        }
    }
    keep_vm_volumes_active(data, &node)?;
    let mut result = Vec::new();
    for spec in specs {
        let created = !VmState::exists(data, spec.vmid);
        if created {
            remove_vm(data, &node, spec.vmid)?;
            create_vm(data, &node, &spec, running && spec.vmid == VMID)?;
        }
        result.push((spec, created));
    }
    Ok(result)
}

/// PVE keeps `vm-*` thin volumes active: a data directory from before activation existed gets
/// their device paths.
fn keep_vm_volumes_active(data: &DataDir, node: &NodeConfig) -> Result<()> {
    for storage in node
        .all(data)
        .iter()
        .filter(|s| s.kind == StorageKind::Lvmthin)
    {
        for lv in storage
            .lvs()?
            .iter()
            .filter(|lv| lv.name.starts_with("vm-"))
        {
            storage.activate_lv(&lv.name)?;
        }
    }
    Ok(())
}

/// Removes a VM's state and every image it owns.
fn remove_vm(data: &DataDir, node: &NodeConfig, vmid: u32) -> Result<()> {
    if VmState::exists(data, vmid) {
        VmState::remove(data, vmid)?;
    }
    for storage in node.all(data) {
        for old in storage.list_images(Some(vmid))? {
            storage.free(&storage.parse_volid(&old.volid)?)?;
        }
    }
    Ok(())
}

fn create_vm(data: &DataDir, node: &NodeConfig, spec: &VmSpec, running: bool) -> Result<()> {
    let mut config = base_config(spec)?;
    for disk in &spec.disks {
        let storage = node.storage(data, disk.storage)?;
        let volid = create_disk(&storage, spec, disk)?;
        if volid != disk.volid {
            return Err(Error::failed(format!(
                "fixture disk became {volid}, expected {}",
                disk.volid
            )));
        }
        let options = if spec.vmid == VMID { "iothread=1," } else { "" };
        let value = format!("{volid},{options}size={}", format_size(disk.size));
        config.insert(disk.key.to_string(), value);
    }
    let vm = VmState {
        config,
        snapshots: BTreeMap::new(),
        running_since: running.then(crate::datadir::now),
    };
    vm.save(data, spec.vmid)
}

/// A disk: allocated and written (then made a base image for a template), or cloned from its
/// base and written over.
fn create_disk(storage: &Storage, vm: &VmSpec, spec: &DiskSpec) -> Result<String> {
    let quiet = |line: &str| tracing::debug!("{line}");
    let volid = match spec.base {
        Some(base) => storage.clone_image(&storage.parse_volid(base)?, vm.vmid, &quiet)?,
        None => storage.alloc_image(vm.vmid, spec.format, spec.size, &quiet)?,
    };
    let volume = storage.parse_volid(&volid)?;
    write_patterns(&storage.file(&volume), spec)?;
    if vm.template {
        return storage.create_base(&volume);
    }
    Ok(volid)
}

fn write_patterns(path: &std::path::Path, spec: &DiskSpec) -> Result<()> {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", spec.format]);
    for (offset, length, byte) in &spec.written {
        cmd.args(["-c", &format!("write -P 0x{byte:02x} {offset} {length}")]);
    }
    let output = cmd.arg(path).output().map_err(Error::io("run qemu-io"))?;
    if !output.status.success() {
        return Err(Error::failed(format!(
            "qemu-io on {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    qemu_img::info(path, Some(spec.format)).map(|_| ())
}

/// The config of a fixture VM without its disks.
fn base_config(spec: &VmSpec) -> Result<BTreeMap<String, String>> {
    let (description, mac) = if spec.vmid == VMID {
        (
            "virtrigaud e2e source VM (pvesim fixture)".to_string(),
            "BC:24:11:5E:D1:00".to_string(),
        )
    } else {
        let (high, low) = (spec.vmid / 256, spec.vmid % 256);
        let description = format!("virtrigaud e2e fixture VM {} (pvesim)", spec.vmid);
        (description, format!("BC:24:11:5E:{high:02X}:{low:02X}"))
    };
    let mut entries = vec![
        ("name", spec.name.to_string()),
        ("description", description),
        ("cores", "2".into()),
        ("sockets", "1".into()),
        ("memory", "2048".into()),
        ("ostype", "l26".into()),
        ("bios", "seabios".into()),
        ("scsihw", "virtio-scsi-single".into()),
        ("net0", format!("virtio={mac},bridge=vmbr0,firewall=1")),
        ("boot", format!("order={};net0", spec.disks[0].key)),
        ("agent", "1".into()),
        ("smbios1", format!("uuid={}", random_uuid()?)),
        ("vmgenid", random_uuid()?),
        (
            "meta",
            format!("creation-qemu=10.0.2,ctime={}", crate::datadir::now()),
        ),
    ];
    if spec.template {
        entries.push(("template", "1".into()));
    }
    Ok(entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect())
}
