//! A typed `VirtualMachineConfigSpec` builder for what a migration sets: name and shape, disks on
//! existing files (also with a parent chain), NICs, extraConfig, annotation, firmware. Elements are
//! written in the order of vim25's XSD sequence: vCenter rejects any other order.

use super::types::{Controller, ControllerKind, Firmware, Network};
use super::xml::Xml;
use crate::{Error, Result};

/// Element order of `VirtualMachineConfigSpec` (vim25 XSD sequence; govmomi's types.go field
/// order). [`super::ImportSpec::with_config`] inserts elements by this order too.
pub const CONFIG_SPEC_ORDER: &[&str] = &[
    "changeVersion",
    "name",
    "version",
    "createDate",
    "uuid",
    "instanceUuid",
    "npivNodeWorldWideName",
    "npivPortWorldWideName",
    "npivWorldWideNameType",
    "npivDesiredNodeWwns",
    "npivDesiredPortWwns",
    "npivTemporaryDisabled",
    "npivOnNonRdmDisks",
    "npivWorldWideNameOp",
    "locationId",
    "guestId",
    "alternateGuestName",
    "annotation",
    "files",
    "tools",
    "flags",
    "consolePreferences",
    "powerOpInfo",
    "rebootPowerOff",
    "numCPUs",
    "vcpuConfig",
    "numCoresPerSocket",
    "memoryMB",
    "memoryHotAddEnabled",
    "cpuHotAddEnabled",
    "cpuHotRemoveEnabled",
    "virtualICH",
    "virtualSMCPresent",
    "deviceChange",
    "cpuAllocation",
    "memoryAllocation",
    "latencySensitivity",
    "cpuAffinity",
    "memoryAffinity",
    "networkShaper",
    "cpuFeatureMask",
    "extraConfig",
    "swapPlacement",
    "bootOptions",
    "vAppConfig",
    "ftInfo",
    "repConfig",
    "vAppConfigRemoved",
    "vAssertsEnabled",
    "changeTrackingEnabled",
    "firmware",
    "maxMksConnections",
    "guestAutoLockEnabled",
    "managedBy",
    "memoryReservationLockedToMax",
    "nestedHVEnabled",
    "vPMCEnabled",
    "scheduledHardwareUpgradeInfo",
    "vmProfile",
    "messageBusTunnelEnabled",
    "crypto",
    "migrateEncryption",
    "sgxInfo",
    "ftEncryptionMode",
    "guestMonitoringModeInfo",
    "sevEnabled",
    "virtualNuma",
    "motherboardLayout",
    "pmemFailoverEnabled",
    "vmxStatsCollectionEnabled",
    "vmOpNotificationToAppEnabled",
    "vmOpNotificationTimeout",
    "deviceSwap",
    "simultaneousThreads",
    "pmem",
    "deviceGroups",
    "fixedPassthruHotPlugEnabled",
    "metroFtEnabled",
    "metroFtHostGroup",
    "tdxEnabled",
    "sevSnpEnabled",
    "tagSpecs",
    "vmPlacementPolicies",
    "extensionCompatibilityConstraint",
    "skipExtensionCompatibilityChecks",
];

/// SCSI buses a VM can have, and units per SCSI bus (unit 7 is the controller's).
const SCSI_BUSES: i32 = 4;
const SCSI_UNITS: i32 = 16;
/// Controller type added when a VM has no SCSI controller with a free unit.
const NEW_SCSI_CONTROLLER: &str = "VirtualLsiLogicSASController";

/// An existing disk file to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskFile {
    /// `[datastore] dir/disk.vmdk` (the descriptor).
    pub file_name: String,
    /// Parents of `file_name`, nearest first, for a delta disk on a base (linked-clone style).
    pub parents: Vec<String>,
    /// Capacity to declare. Real vSphere reads it from the descriptor; vcsim reports what is given
    /// (or, with parents, the first parent descriptor's).
    pub capacity_bytes: Option<u64>,
    pub thin_provisioned: Option<bool>,
    /// `persistent` unless set.
    pub disk_mode: Option<String>,
}

impl DiskFile {
    /// A disk on `file_name` with nothing else set.
    pub fn new(file_name: impl Into<String>) -> Self {
        DiskFile {
            file_name: file_name.into(),
            parents: Vec::new(),
            capacity_bytes: None,
            thin_provisioned: None,
            disk_mode: None,
        }
    }
}

#[derive(Clone, Debug)]
enum DeviceChange {
    ScsiController {
        key: i32,
        bus: i32,
    },
    Disk {
        key: i32,
        controller: i32,
        unit: i32,
        file: DiskFile,
    },
    Nic {
        key: i32,
        device_type: String,
        network: Network,
    },
}

/// A `VirtualMachineConfigSpec` for `CreateVM_Task` / `ReconfigVM_Task`.
#[derive(Clone, Debug, Default)]
pub struct ConfigSpec {
    name: Option<String>,
    guest_id: Option<String>,
    annotation: Option<String>,
    vm_path: Option<String>,
    num_cpus: Option<u32>,
    cores_per_socket: Option<u32>,
    memory_mb: Option<u64>,
    devices: Vec<DeviceChange>,
    extra_config: Vec<(String, String)>,
    firmware: Option<Firmware>,
    /// Last temporary (negative) device key handed out.
    last_key: i32,
}

impl ConfigSpec {
    /// An empty spec (a reconfigure that changes nothing).
    pub fn new() -> Self {
        ConfigSpec::default()
    }

    /// The VM's name.
    pub fn name(&mut self, name: &str) -> &mut Self {
        self.name = Some(name.to_string());
        self
    }

    /// `guestId` (`otherGuest64`, `ubuntu64Guest`...).
    pub fn guest_id(&mut self, id: &str) -> &mut Self {
        self.guest_id = Some(id.to_string());
        self
    }

    /// The VM's notes.
    pub fn annotation(&mut self, text: &str) -> &mut Self {
        self.annotation = Some(text.to_string());
        self
    }

    /// `files.vmPathName`: where the VM's files go (`[datastore]` or `[datastore] dir/x.vmx`).
    pub fn vm_path(&mut self, path: &str) -> &mut Self {
        self.vm_path = Some(path.to_string());
        self
    }

    /// Virtual CPUs, and cores per socket when given.
    pub fn cpus(&mut self, cpus: u32, cores_per_socket: Option<u32>) -> &mut Self {
        self.num_cpus = Some(cpus);
        self.cores_per_socket = cores_per_socket;
        self
    }

    /// Memory in MiB.
    pub fn memory_mb(&mut self, mb: u64) -> &mut Self {
        self.memory_mb = Some(mb);
        self
    }

    /// BIOS or EFI.
    pub fn firmware(&mut self, firmware: Firmware) -> &mut Self {
        self.firmware = Some(firmware);
        self
    }

    /// Sets an extraConfig key (the last value set for a key wins).
    pub fn extra_config(&mut self, key: &str, value: &str) -> &mut Self {
        self.extra_config.retain(|(k, _)| k != key);
        self.extra_config.push((key.to_string(), value.to_string()));
        self
    }

    fn next_key(&mut self) -> i32 {
        self.last_key -= 1;
        self.last_key
    }

    /// Attaches an existing disk file to the first SCSI controller with a free unit: one of the
    /// VM's `existing` controllers ([`super::VmInfo::controllers`]; none for a VM being created),
    /// one added earlier in this spec, or a new one. Returns the disk's temporary device key.
    pub fn add_disk(&mut self, existing: &[Controller], file: DiskFile) -> Result<i32> {
        let (controller, unit) = match self.free_unit(existing) {
            Some(slot) => slot,
            None => {
                let bus = self.free_bus(existing).ok_or_else(|| {
                    Error::Invalid(format!(
                        "cannot attach {}: all {SCSI_BUSES} SCSI buses are full",
                        file.file_name
                    ))
                })?;
                let key = self.next_key();
                self.devices.push(DeviceChange::ScsiController { key, bus });
                (key, 0)
            }
        };
        let key = self.next_key();
        self.devices.push(DeviceChange::Disk {
            key,
            controller,
            unit,
            file,
        });
        Ok(key)
    }

    /// Adds a NIC of `device_type` (`VirtualVmxnet3`, `VirtualE1000e`...) on `network`.
    pub fn add_nic(&mut self, device_type: &str, network: &Network) -> Result<i32> {
        if network.moref.kind == "OpaqueNetwork" {
            return Err(Error::Invalid(format!(
                "network {:?} is an opaque (NSX) network: not supported",
                network.name
            )));
        }
        let key = self.next_key();
        self.devices.push(DeviceChange::Nic {
            key,
            device_type: device_type.to_string(),
            network: network.clone(),
        });
        Ok(key)
    }

    /// `(controller key, unit)` of the first free SCSI slot.
    fn free_unit(&self, existing: &[Controller]) -> Option<(i32, i32)> {
        let vm_scsi = existing
            .iter()
            .filter(|c| c.kind == ControllerKind::Scsi)
            .map(|c| (c.key, c.used_units.clone()));
        let added = self.devices.iter().filter_map(|d| match d {
            DeviceChange::ScsiController { key, .. } => Some((*key, vec![7])),
            _ => None,
        });
        for (key, mut used) in vm_scsi.chain(added).collect::<Vec<_>>() {
            used.extend(self.devices.iter().filter_map(|d| match d {
                DeviceChange::Disk {
                    controller, unit, ..
                } if *controller == key => Some(*unit),
                _ => None,
            }));
            if let Some(u) = (0..SCSI_UNITS).find(|u| *u != 7 && !used.contains(u)) {
                return Some((key, u));
            }
        }
        None
    }

    fn free_bus(&self, existing: &[Controller]) -> Option<i32> {
        let mut used: Vec<i32> = existing
            .iter()
            .filter(|c| c.kind == ControllerKind::Scsi)
            .map(|c| c.bus_number)
            .collect();
        used.extend(self.devices.iter().filter_map(|d| match d {
            DeviceChange::ScsiController { bus, .. } => Some(*bus),
            _ => None,
        }));
        (0..SCSI_BUSES).find(|b| !used.contains(b))
    }

    /// Writes the spec as element `elem` (`spec`, `config`), children in XSD order.
    pub fn write(&self, elem: &str, x: &mut Xml) {
        x.open(elem)
            .opt("name", self.name.as_deref())
            .opt("guestId", self.guest_id.as_deref())
            .opt("annotation", self.annotation.as_deref());
        if let Some(p) = &self.vm_path {
            x.open("files").text("vmPathName", p).close("files");
        }
        x.opt("numCPUs", self.num_cpus)
            .opt("numCoresPerSocket", self.cores_per_socket)
            .opt("memoryMB", self.memory_mb);
        for d in &self.devices {
            write_device_change(d, x);
        }
        for (k, v) in &self.extra_config {
            write_option_value(x, k, v);
        }
        x.opt("firmware", self.firmware.map(Firmware::as_str));
        x.close(elem);
    }
}

/// `<extraConfig><key>k</key><value xsi:type="xsd:string">v</value></extraConfig>`.
pub fn write_option_value(x: &mut Xml, key: &str, value: &str) {
    x.open("extraConfig")
        .text("key", key)
        .typed_text("value", "xsd:string", value)
        .close("extraConfig");
}

fn write_device_change(d: &DeviceChange, x: &mut Xml) {
    x.open("deviceChange").text("operation", "add");
    match d {
        DeviceChange::ScsiController { key, bus } => {
            x.open_typed("device", NEW_SCSI_CONTROLLER)
                .text("key", key)
                .text("busNumber", bus)
                .text("sharedBus", "noSharing")
                .close("device");
        }
        DeviceChange::Disk {
            key,
            controller,
            unit,
            file,
        } => {
            x.open_typed("device", "VirtualDisk").text("key", key);
            write_disk_backing(x, "backing", &file.file_name, file, &file.parents);
            x.text("controllerKey", controller).text("unitNumber", unit);
            if let Some(b) = file.capacity_bytes {
                x.text("capacityInKB", b / 1024).text("capacityInBytes", b);
            }
            x.close("device");
        }
        DeviceChange::Nic {
            key,
            device_type,
            network,
        } => write_nic(x, *key, device_type, network),
    }
    x.close("deviceChange");
}

/// A `VirtualDiskFlatVer2BackingInfo` on `file_name` whose `parent` chain is `parents`.
fn write_disk_backing(
    x: &mut Xml,
    elem: &str,
    file_name: &str,
    file: &DiskFile,
    parents: &[String],
) {
    x.open_typed(elem, "VirtualDiskFlatVer2BackingInfo")
        .text("fileName", file_name)
        .text(
            "diskMode",
            file.disk_mode.as_deref().unwrap_or("persistent"),
        )
        .opt("thinProvisioned", file.thin_provisioned);
    if let Some((parent, rest)) = parents.split_first() {
        write_disk_backing(x, "parent", parent, file, rest);
    }
    x.close(elem);
}

fn write_nic(x: &mut Xml, key: i32, device_type: &str, network: &Network) {
    x.open_typed("device", device_type).text("key", key);
    match &network.portgroup {
        Some((portgroup_key, switch_uuid)) => {
            x.open_typed(
                "backing",
                "VirtualEthernetCardDistributedVirtualPortBackingInfo",
            )
            .open("port")
            .text("switchUuid", switch_uuid)
            .text("portgroupKey", portgroup_key)
            .close("port")
            .close("backing");
        }
        None => {
            x.open_typed("backing", "VirtualEthernetCardNetworkBackingInfo")
                .text("deviceName", &network.name)
                .moref("network", &network.moref)
                .close("backing");
        }
    }
    x.open("connectable")
        .text("startConnected", true)
        .text("allowGuestControl", true)
        .text("connected", false)
        .close("connectable")
        .text("addressType", "generated")
        .close("device");
}

/// Position of `name` in [`CONFIG_SPEC_ORDER`]; unknown names sort last.
pub fn config_spec_rank(name: &str) -> usize {
    CONFIG_SPEC_ORDER
        .iter()
        .position(|n| *n == name)
        .unwrap_or(CONFIG_SPEC_ORDER.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::vsphere::types::MoRef;
    use crate::provider::vsphere::xml::{self, Elem};

    fn network(name: &str) -> Network {
        Network {
            moref: MoRef::new("Network", "network-7"),
            name: name.to_string(),
            portgroup: None,
        }
    }

    fn children(spec: &ConfigSpec) -> Elem {
        let mut x = Xml::new();
        x.raw("<r xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">");
        spec.write("spec", &mut x);
        x.raw("</r>");
        xml::parse(&x.finish()).unwrap().children.remove(0)
    }

    fn names(e: &Elem) -> Vec<&str> {
        e.children.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn elements_follow_the_xsd_sequence() {
        let mut s = ConfigSpec::new();
        // set in an order unlike the XSD's
        s.firmware(Firmware::Efi)
            .extra_config("a", "1")
            .memory_mb(1024)
            .annotation("n")
            .cpus(2, Some(1))
            .vm_path("[ds]")
            .guest_id("otherGuest64")
            .name("vm");
        s.add_disk(&[], DiskFile::new("[ds] vm/d.vmdk")).unwrap();
        let e = children(&s);
        assert_eq!(
            names(&e),
            [
                "name",
                "guestId",
                "annotation",
                "files",
                "numCPUs",
                "numCoresPerSocket",
                "memoryMB",
                "deviceChange",
                "deviceChange",
                "extraConfig",
                "firmware"
            ]
        );
        let ranks: Vec<usize> = names(&e).iter().map(|n| config_spec_rank(n)).collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{ranks:?}");
    }

    #[test]
    fn a_disk_without_scsi_controller_gets_one() {
        let mut s = ConfigSpec::new();
        let k1 = s.add_disk(&[], DiskFile::new("[ds] a.vmdk")).unwrap();
        let k2 = s.add_disk(&[], DiskFile::new("[ds] b.vmdk")).unwrap();
        let e = children(&s);
        let changes: Vec<&Elem> = e.all("deviceChange").collect();
        assert_eq!(changes.len(), 3);
        let ctrl = changes[0].child("device").unwrap();
        assert_eq!(ctrl.xsi_type.as_deref(), Some(NEW_SCSI_CONTROLLER));
        assert_eq!(ctrl.text_at("busNumber"), Some("0"));
        let ctrl_key = ctrl.string_at("key");
        let units: Vec<(String, String, String)> = changes[1..]
            .iter()
            .map(|c| {
                let d = c.child("device").unwrap();
                (
                    d.string_at("key"),
                    d.string_at("controllerKey"),
                    d.string_at("unitNumber"),
                )
            })
            .collect();
        assert_eq!(
            units,
            [
                (k1.to_string(), ctrl_key.clone(), "0".to_string()),
                (k2.to_string(), ctrl_key, "1".to_string())
            ]
        );
        assert_eq!(
            names(changes[1].child("device").unwrap()),
            ["key", "backing", "controllerKey", "unitNumber"]
        );
    }

    #[test]
    fn a_disk_goes_to_the_vms_controller_skipping_used_units_and_7() {
        let vm_controllers = vec![Controller {
            key: 1000,
            kind: ControllerKind::Scsi,
            device_type: "ParaVirtualSCSIController".into(),
            bus_number: 0,
            devices: vec![],
            used_units: (0..7).chain(Some(7)).collect(),
            scsi_unit: Some(7),
        }];
        let mut s = ConfigSpec::new();
        s.add_disk(&vm_controllers, DiskFile::new("[ds] a.vmdk"))
            .unwrap();
        let e = children(&s);
        let d = e.child("deviceChange").unwrap().child("device").unwrap();
        assert_eq!(d.text_at("controllerKey"), Some("1000"));
        assert_eq!(d.text_at("unitNumber"), Some("8"));
    }

    #[test]
    fn parent_chain_and_capacity() {
        let mut s = ConfigSpec::new();
        let mut f = DiskFile::new("[ds] vm/delta.vmdk");
        f.parents = vec!["[ds] vm/mid.vmdk".into(), "[ds] base/base.vmdk".into()];
        f.capacity_bytes = Some(4 << 20);
        f.thin_provisioned = Some(true);
        s.add_disk(&[], f).unwrap();
        let e = children(&s);
        let d = e
            .all("deviceChange")
            .nth(1)
            .unwrap()
            .child("device")
            .unwrap();
        let b = d.child("backing").unwrap();
        assert_eq!(
            names(b),
            ["fileName", "diskMode", "thinProvisioned", "parent"]
        );
        assert_eq!(b.text_at("parent/fileName"), Some("[ds] vm/mid.vmdk"));
        assert_eq!(
            b.text_at("parent/parent/fileName"),
            Some("[ds] base/base.vmdk")
        );
        assert!(b.at("parent/parent/parent").is_none());
        assert_eq!(d.text_at("capacityInKB"), Some("4096"));
        assert_eq!(d.text_at("capacityInBytes"), Some("4194304"));
    }

    #[test]
    fn nics_on_standard_and_distributed_port_groups() {
        let mut s = ConfigSpec::new();
        s.add_nic("VirtualVmxnet3", &network("VM Network")).unwrap();
        let mut dv = network("DC0_DVPG0");
        dv.moref = MoRef::new("DistributedVirtualPortgroup", "dvportgroup-12");
        dv.portgroup = Some(("dvportgroup-12".into(), "50 2a".into()));
        s.add_nic("VirtualE1000e", &dv).unwrap();
        let e = children(&s);
        let nics: Vec<&Elem> = e
            .all("deviceChange")
            .map(|c| c.child("device").unwrap())
            .collect();
        assert_eq!(nics[0].text_at("backing/deviceName"), Some("VM Network"));
        assert_eq!(
            names(nics[0]),
            ["key", "backing", "connectable", "addressType"]
        );
        assert_eq!(
            nics[1].text_at("backing/port/portgroupKey"),
            Some("dvportgroup-12")
        );
        let mut opaque = network("nsx");
        opaque.moref.kind = "OpaqueNetwork".into();
        assert!(s.add_nic("VirtualVmxnet3", &opaque).is_err());
    }

    #[test]
    fn extra_config_keys_are_set_once() {
        let mut s = ConfigSpec::new();
        s.extra_config("k", "1").extra_config("k", "2");
        let e = children(&s);
        let kv: Vec<(String, String)> = e
            .all("extraConfig")
            .map(|o| (o.string_at("key"), o.string_at("value")))
            .collect();
        assert_eq!(kv, [("k".to_string(), "2".to_string())]);
        assert_eq!(
            e.child("extraConfig")
                .unwrap()
                .child("value")
                .unwrap()
                .xsi_type
                .as_deref(),
            Some("xsd:string")
        );
    }
}
