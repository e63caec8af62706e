//! Typed results of the vim25 calls the client makes.

use std::fmt;

/// A managed object reference: `VirtualMachine:vm-42`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MoRef {
    /// The managed object type (`VirtualMachine`, `Datastore`, `HttpNfcLease`...).
    pub kind: String,
    /// The server's id (`vm-42`).
    pub value: String,
}

impl MoRef {
    /// A reference to `kind` `value`.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        MoRef {
            kind: kind.into(),
            value: value.into(),
        }
    }
}

impl fmt::Display for MoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Power state of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    PoweredOn,
    PoweredOff,
    Suspended,
}

impl PowerState {
    /// Parses vim25's `VirtualMachinePowerState`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "poweredOn" => Some(PowerState::PoweredOn),
            "poweredOff" => Some(PowerState::PoweredOff),
            "suspended" => Some(PowerState::Suspended),
            _ => None,
        }
    }
}

/// VM firmware (`config.firmware`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Efi,
}

impl Firmware {
    /// The vim25 spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Efi => "efi",
        }
    }
}

/// The bus kind of a disk controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ControllerKind {
    Scsi,
    Sata,
    Nvme,
    Ide,
}

impl ControllerKind {
    /// The kind of a controller device's `xsi:type`, `None` for non-disk controllers.
    pub fn of_device_type(xsi_type: &str) -> Option<Self> {
        match xsi_type {
            "VirtualLsiLogicController"
            | "VirtualLsiLogicSASController"
            | "ParaVirtualSCSIController"
            | "VirtualBusLogicController"
            | "VirtualSCSIController" => Some(ControllerKind::Scsi),
            "VirtualAHCIController" | "VirtualSATAController" => Some(ControllerKind::Sata),
            "VirtualNVMEController" => Some(ControllerKind::Nvme),
            "VirtualIDEController" => Some(ControllerKind::Ide),
            _ => None,
        }
    }

    /// `scsi`, `sata`, `nvme` or `ide`.
    pub fn as_str(self) -> &'static str {
        match self {
            ControllerKind::Scsi => "scsi",
            ControllerKind::Sata => "sata",
            ControllerKind::Nvme => "nvme",
            ControllerKind::Ide => "ide",
        }
    }
}

/// A disk controller of a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Controller {
    /// Device key.
    pub key: i32,
    pub kind: ControllerKind,
    /// The device's `xsi:type` (`ParaVirtualSCSIController`...).
    pub device_type: String,
    pub bus_number: i32,
    /// Keys of the devices on this controller.
    pub devices: Vec<i32>,
    /// Unit numbers taken on this controller (disks, CD-ROMs... and the controller's own).
    pub used_units: Vec<i32>,
    /// A SCSI controller's own unit number on its bus (7).
    pub scsi_unit: Option<i32>,
}

/// One file of a disk's backing chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskBacking {
    /// `[datastore] dir/file.vmdk`.
    pub file_name: String,
    /// Datastore the file is on, when the server says.
    pub datastore: Option<MoRef>,
    /// The backing's `xsi:type` (`VirtualDiskFlatVer2BackingInfo`...).
    pub backing_type: String,
    pub thin_provisioned: Option<bool>,
    pub eagerly_scrub: Option<bool>,
    /// `persistent`, `independent_persistent`...
    pub disk_mode: Option<String>,
}

/// A virtual disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Device key.
    pub key: i32,
    pub controller_key: i32,
    pub controller_kind: ControllerKind,
    pub bus_number: i32,
    pub unit_number: i32,
    pub label: String,
    pub capacity_bytes: u64,
    /// The disk's own file (the top of the chain).
    pub backing: DiskBacking,
    /// The parents of `backing`, nearest first (`backing.parent`, `backing.parent.parent`...).
    pub parents: Vec<DiskBacking>,
}

impl Disk {
    /// Every file name of the chain, top first.
    pub fn chain(&self) -> Vec<&str> {
        std::iter::once(&self.backing)
            .chain(&self.parents)
            .map(|b| b.file_name.as_str())
            .collect()
    }
}

/// What a NIC is connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NicBacking {
    /// A standard port group: its name and network moref.
    Network {
        name: String,
        network: Option<MoRef>,
    },
    /// A distributed port group: its key and (resolved) name.
    DistributedPortgroup {
        portgroup_key: String,
        switch_uuid: String,
        name: Option<String>,
    },
    /// An opaque (NSX) network or anything else: the backing's `xsi:type`.
    Other(String),
}

/// A virtual network card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// Device key.
    pub key: i32,
    /// The device's `xsi:type` (`VirtualVmxnet3`, `VirtualE1000`...).
    pub device_type: String,
    pub mac_address: String,
    pub backing: NicBacking,
}

impl Nic {
    /// The network name, where known.
    pub fn network_name(&self) -> Option<&str> {
        match &self.backing {
            NicBacking::Network { name, .. } => Some(name),
            NicBacking::DistributedPortgroup { name, .. } => name.as_deref(),
            NicBacking::Other(_) => None,
        }
    }
}

/// One node of a VM's snapshot tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotNode {
    pub name: String,
    pub description: String,
    pub snapshot: MoRef,
    pub children: Vec<SnapshotNode>,
}

impl SnapshotNode {
    /// This node and all below it, depth first.
    pub fn walk(&self) -> Vec<&SnapshotNode> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }
}

/// What [`super::Client::vm_info`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmInfo {
    pub moref: MoRef,
    pub name: String,
    pub instance_uuid: String,
    pub power_state: PowerState,
    pub num_cpu: u32,
    pub num_cores_per_socket: u32,
    pub memory_mb: u64,
    pub firmware: Firmware,
    pub guest_id: String,
    pub annotation: String,
    /// `[datastore] dir/name.vmx`.
    pub vm_path_name: String,
    pub extra_config: Vec<(String, String)>,
    pub controllers: Vec<Controller>,
    /// Disks ordered by controller kind (SCSI, SATA, NVMe, IDE), bus number, unit number.
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    /// Root snapshots (each with its children).
    pub snapshots: Vec<SnapshotNode>,
    pub current_snapshot: Option<MoRef>,
    /// The host the VM is registered on.
    pub host: Option<MoRef>,
    /// The resource pool the VM is in.
    pub resource_pool: Option<MoRef>,
}

impl VmInfo {
    /// Every snapshot, depth first.
    pub fn all_snapshots(&self) -> Vec<&SnapshotNode> {
        self.snapshots.iter().flat_map(|s| s.walk()).collect()
    }

    /// The snapshot called `name`, if exactly one has that name.
    pub fn snapshot_named(&self, name: &str) -> Option<&SnapshotNode> {
        let mut found = self.all_snapshots().into_iter().filter(|s| s.name == name);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }
}

/// The disks of a snapshot ([`super::Client::snapshot_info`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub snapshot: MoRef,
    pub vm: MoRef,
    pub controllers: Vec<Controller>,
    /// As in [`VmInfo::disks`], as of the snapshot.
    pub disks: Vec<Disk>,
}

/// A datacenter and its folders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datacenter {
    pub moref: MoRef,
    pub name: String,
    /// Inventory path (`DC0`, `Folder/DC0`): the `dcPath` of datastore URLs.
    pub path: String,
    pub vm_folder: MoRef,
    pub host_folder: MoRef,
    pub datastore_folder: MoRef,
    pub network_folder: MoRef,
}

/// A network a NIC can connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// `Network`, `DistributedVirtualPortgroup` or `OpaqueNetwork` moref.
    pub moref: MoRef,
    pub name: String,
    /// For a distributed port group: its key and its switch's UUID.
    pub portgroup: Option<(String, String)>,
}

/// [`super::Client::datastore_info`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatastoreInfo {
    pub moref: MoRef,
    pub name: String,
    /// `VMFS`, `NFS`, `vsan`, `OTHER`...
    pub kind: String,
    pub capacity: u64,
    pub free_space: u64,
    pub accessible: bool,
    pub url: String,
}

/// One device URL of a ready NFC lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceUrl {
    /// Device id on the server (`/vm-42/VirtualLsiLogicController0:0`).
    pub key: String,
    /// The id the import spec's file items use (`/name/disk:0`).
    pub import_key: String,
    /// Where to GET (export) or POST (import); a `*` host is replaced by the host connected to.
    pub url: String,
    pub target_id: String,
    pub disk: bool,
    pub file_size: Option<u64>,
}

/// The info of a ready NFC lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The VM exported or created.
    pub entity: MoRef,
    pub device_urls: Vec<DeviceUrl>,
    /// Seconds without progress after which the server drops the lease.
    pub lease_timeout: u32,
}

/// One entry of [`super::Client::lease_manifest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// The device URL key the entry belongs to.
    pub key: String,
    /// Hex SHA-1 of the bytes transferred.
    pub sha1: String,
    pub size: u64,
}

/// One file an import spec expects to be uploaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileItem {
    /// Matches [`DeviceUrl::import_key`].
    pub device_id: String,
    /// The OVF file reference's href.
    pub path: String,
    pub size: Option<u64>,
}
