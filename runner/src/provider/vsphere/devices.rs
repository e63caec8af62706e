//! Reading `config.hardware.device` (of a VM or of a snapshot) into controllers, disks and NICs.

use super::types::{Controller, ControllerKind, Disk, DiskBacking, Nic, NicBacking};
use super::xml::Elem;

/// NIC device types (subtypes of `VirtualEthernetCard`).
const NIC_TYPES: [&str; 8] = [
    "VirtualE1000",
    "VirtualE1000e",
    "VirtualPCNet32",
    "VirtualVmxnet",
    "VirtualVmxnet2",
    "VirtualVmxnet3",
    "VirtualVmxnet3Vrdma",
    "VirtualSriovEthernetCard",
];

/// The devices of a `VirtualHardware` element, sorted out.
#[derive(Debug, Default)]
pub struct Devices {
    pub controllers: Vec<Controller>,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
}

/// Reads every `device` child of `hardware`. Disks come out ordered by controller kind, bus number
/// and unit number; disks whose controller is not listed sort last.
pub fn parse(hardware: &Elem) -> Devices {
    let devices: Vec<&Elem> = hardware.all("device").collect();
    let mut controllers: Vec<Controller> = devices.iter().filter_map(|d| controller(d)).collect();
    for c in &mut controllers {
        c.used_units = devices
            .iter()
            .filter(|d| d.parse_at::<i32>("controllerKey") == Some(c.key))
            .filter_map(|d| d.parse_at("unitNumber"))
            .collect();
        c.used_units.extend(c.scsi_unit);
    }
    let mut disks: Vec<Disk> = devices
        .iter()
        .filter(|d| d.xsi_type.as_deref() == Some("VirtualDisk"))
        .map(|d| disk(d, &controllers))
        .collect();
    disks.sort_by_key(|d| (d.controller_kind, d.bus_number, d.unit_number, d.key));
    let nics = devices
        .iter()
        .filter(|d| {
            d.xsi_type
                .as_deref()
                .is_some_and(|t| NIC_TYPES.contains(&t))
        })
        .map(|d| nic(d))
        .collect();
    Devices {
        controllers,
        disks,
        nics,
    }
}

fn key_of(d: &Elem) -> i32 {
    d.parse_at("key").unwrap_or(0)
}

fn controller(d: &Elem) -> Option<Controller> {
    let device_type = d.xsi_type.clone()?;
    let kind = ControllerKind::of_device_type(&device_type)?;
    Some(Controller {
        key: key_of(d),
        kind,
        device_type,
        bus_number: d.parse_at("busNumber").unwrap_or(0),
        devices: d
            .all("device")
            .filter_map(|k| k.text.trim().parse().ok())
            .collect(),
        used_units: Vec::new(),
        scsi_unit: d.parse_at("scsiCtlrUnitNumber"),
    })
}

fn disk(d: &Elem, controllers: &[Controller]) -> Disk {
    let controller_key = d.parse_at("controllerKey").unwrap_or(0);
    let controller = controllers.iter().find(|c| c.key == controller_key);
    let capacity_bytes = d
        .parse_at::<u64>("capacityInBytes")
        .filter(|b| *b > 0)
        .or_else(|| d.parse_at::<u64>("capacityInKB").map(|kb| kb * 1024))
        .unwrap_or(0);
    let (backing, parents) = match d.child("backing") {
        Some(b) => backing_chain(b),
        None => (empty_backing(), Vec::new()),
    };
    Disk {
        key: key_of(d),
        controller_key,
        // unknown controllers sort after every known kind
        controller_kind: controller.map_or(ControllerKind::Ide, |c| c.kind),
        bus_number: controller.map_or(i32::MAX, |c| c.bus_number),
        unit_number: d.parse_at("unitNumber").unwrap_or(-1),
        label: d.string_at("deviceInfo/label"),
        capacity_bytes,
        backing,
        parents,
    }
}

fn empty_backing() -> DiskBacking {
    DiskBacking {
        file_name: String::new(),
        datastore: None,
        backing_type: String::new(),
        thin_provisioned: None,
        eagerly_scrub: None,
        disk_mode: None,
    }
}

/// A backing and its `parent` chain, nearest parent first.
fn backing_chain(b: &Elem) -> (DiskBacking, Vec<DiskBacking>) {
    let mut parents = Vec::new();
    let mut next = b.child("parent");
    while let Some(p) = next {
        parents.push(one_backing(p));
        next = p.child("parent");
    }
    (one_backing(b), parents)
}

fn one_backing(b: &Elem) -> DiskBacking {
    DiskBacking {
        file_name: b.string_at("fileName"),
        datastore: b.moref_at("datastore"),
        backing_type: b.xsi_type.clone().unwrap_or_default(),
        thin_provisioned: b.parse_at("thinProvisioned"),
        eagerly_scrub: b.parse_at("eagerlyScrub"),
        disk_mode: b.text_at("diskMode").map(str::to_string),
    }
}

fn nic(d: &Elem) -> Nic {
    let backing = match d.child("backing") {
        Some(b) => nic_backing(b),
        None => NicBacking::Other(String::new()),
    };
    Nic {
        key: key_of(d),
        device_type: d.xsi_type.clone().unwrap_or_default(),
        mac_address: d.string_at("macAddress"),
        backing,
    }
}

fn nic_backing(b: &Elem) -> NicBacking {
    match b.xsi_type.as_deref().unwrap_or_default() {
        "VirtualEthernetCardNetworkBackingInfo" => NicBacking::Network {
            name: super::inventory::unescape_name(&b.string_at("deviceName")),
            network: b.moref_at("network"),
        },
        "VirtualEthernetCardDistributedVirtualPortBackingInfo" => {
            NicBacking::DistributedPortgroup {
                portgroup_key: b.string_at("port/portgroupKey"),
                switch_uuid: b.string_at("port/switchUuid"),
                name: None,
            }
        }
        other => NicBacking::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::vsphere::types::MoRef;
    use crate::provider::vsphere::xml;

    const HARDWARE: &str = r#"<hardware xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<numCPU>2</numCPU>
<device xsi:type="VirtualIDEController"><key>200</key><busNumber>0</busNumber><device>3001</device></device>
<device xsi:type="ParaVirtualSCSIController"><key>1000</key><busNumber>1</busNumber><device>2001</device></device>
<device xsi:type="VirtualLsiLogicSASController"><key>1001</key><busNumber>0</busNumber><device>2000</device></device>
<device xsi:type="VirtualDisk"><key>2001</key><deviceInfo><label>Hard disk 2</label></deviceInfo>
 <backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] vm/vm_1-000001.vmdk</fileName>
  <datastore type="Datastore">datastore-1</datastore><diskMode>persistent</diskMode><thinProvisioned>true</thinProvisioned>
  <parent xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] vm/vm_1.vmdk</fileName>
   <parent xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] base/base.vmdk</fileName></parent></parent>
 </backing><controllerKey>1000</controllerKey><unitNumber>0</unitNumber><capacityInKB>2048</capacityInKB></device>
<device xsi:type="VirtualDisk"><key>2000</key><deviceInfo><label>Hard disk 1</label></deviceInfo>
 <backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] vm/vm.vmdk</fileName><eagerlyScrub>true</eagerlyScrub>
 <thinProvisioned>false</thinProvisioned></backing>
 <controllerKey>1001</controllerKey><unitNumber>1</unitNumber><capacityInKB>1024</capacityInKB><capacityInBytes>1048576</capacityInBytes></device>
<device xsi:type="VirtualDisk"><key>3001</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] vm/ide.vmdk</fileName></backing>
 <controllerKey>200</controllerKey><unitNumber>0</unitNumber><capacityInBytes>512</capacityInBytes></device>
<device xsi:type="VirtualVmxnet3"><key>4000</key><backing xsi:type="VirtualEthernetCardNetworkBackingInfo">
 <deviceName>VM Network</deviceName><network type="Network">network-7</network></backing><macAddress>00:50:56:00:00:01</macAddress></device>
<device xsi:type="VirtualE1000"><key>4001</key><backing xsi:type="VirtualEthernetCardDistributedVirtualPortBackingInfo">
 <port><switchUuid>50 2a</switchUuid><portgroupKey>dvportgroup-12</portgroupKey></port></backing><macAddress>00:0c:29:00:00:02</macAddress></device>
</hardware>"#;

    #[test]
    fn disks_in_bus_order_with_chains() {
        let d = parse(&xml::parse(HARDWARE).unwrap());
        assert_eq!(d.controllers.len(), 3);
        let keys: Vec<i32> = d.disks.iter().map(|d| d.key).collect();
        assert_eq!(keys, [2000, 2001, 3001]);
        let first = &d.disks[0];
        assert_eq!(
            (first.controller_kind, first.bus_number, first.unit_number),
            (ControllerKind::Scsi, 0, 1)
        );
        assert_eq!(first.capacity_bytes, 1_048_576);
        assert_eq!(first.backing.eagerly_scrub, Some(true));
        assert_eq!(first.backing.thin_provisioned, Some(false));
        let second = &d.disks[1];
        assert_eq!(second.capacity_bytes, 2048 * 1024);
        assert_eq!(
            second.chain(),
            [
                "[ds1] vm/vm_1-000001.vmdk",
                "[ds1] vm/vm_1.vmdk",
                "[ds1] base/base.vmdk"
            ]
        );
        assert_eq!(
            second.backing.datastore,
            Some(MoRef::new("Datastore", "datastore-1"))
        );
        assert_eq!(second.backing.disk_mode.as_deref(), Some("persistent"));
        assert_eq!(second.label, "Hard disk 2");
        assert_eq!(d.disks[2].controller_kind, ControllerKind::Ide);
    }

    #[test]
    fn nics_with_their_backings() {
        let d = parse(&xml::parse(HARDWARE).unwrap());
        assert_eq!(d.nics.len(), 2);
        assert_eq!(d.nics[0].device_type, "VirtualVmxnet3");
        assert_eq!(d.nics[0].network_name(), Some("VM Network"));
        assert_eq!(
            d.nics[1].backing,
            NicBacking::DistributedPortgroup {
                portgroup_key: "dvportgroup-12".into(),
                switch_uuid: "50 2a".into(),
                name: None
            }
        );
        assert_eq!(d.nics[1].mac_address, "00:0c:29:00:00:02");
    }
}
