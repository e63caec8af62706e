//! The OVF descriptor a vSphere import starts from: the VM's vCPUs, memory, guest type, one
//! streamOptimized disk per migrated disk on LSI Logic SAS controllers, and one NIC per network.
//! `CreateImportSpec` turns it into the import spec (firmware and the ownership mark are added to
//! that spec afterwards, where the vim25 schema puts them).

use std::fmt::Write as _;

use super::xml::escape;
use crate::provider::{NewVm, OsFamily};

const MIB: u64 = 1 << 20;
/// Disks per SCSI controller (unit 7 is the controller's own).
const DISKS_PER_CONTROLLER: usize = 15;
/// Disks a VM may have: 4 SCSI controllers of 15 disks.
pub const MAX_DISKS: usize = 4 * DISKS_PER_CONTROLLER;

/// The file reference of disk `i` in the descriptor (and in the import spec's file items).
pub fn disk_href(i: usize) -> String {
    format!("disk-{i}.vmdk")
}

/// Memory in MiB as vSphere takes it: rounded up to a multiple of 4 MiB.
pub fn memory_mb(bytes: u64) -> u64 {
    bytes.div_ceil(MIB).div_ceil(4).max(1) * 4
}

/// The OVF envelope for `vm`, with NICs on `networks` (names, in order).
pub fn descriptor(vm: &NewVm, guest_id: &str, networks: &[String]) -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" \
         xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\" \
         xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData\" \
         xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData\" \
         xmlns:vmw=\"http://www.vmware.com/schema/ovf\">\n  <References>\n",
    );
    for i in 0..vm.disks.len() {
        let _ = writeln!(
            x,
            "    <File ovf:id=\"file{i}\" ovf:href=\"{}\"/>",
            disk_href(i)
        );
    }
    x.push_str("  </References>\n  <DiskSection>\n    <Info>Virtual disks</Info>\n");
    for (i, d) in vm.disks.iter().enumerate() {
        let _ = writeln!(
            x,
            "    <Disk ovf:diskId=\"vmdisk{i}\" ovf:fileRef=\"file{i}\" ovf:capacity=\"{}\" \
             ovf:capacityAllocationUnits=\"byte\" \
             ovf:format=\"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized\"/>",
            d.virtual_size
        );
    }
    x.push_str("  </DiskSection>\n");
    network_section(&mut x, networks);
    let name = escape(&vm.name);
    let _ = write!(
        x,
        "  <VirtualSystem ovf:id=\"{name}\">\n    <Info>A virtual machine</Info>\n    <Name>{name}</Name>\n    \
         <OperatingSystemSection ovf:id=\"1\" vmw:osType=\"{}\"><Info>Guest OS</Info></OperatingSystemSection>\n    \
         <VirtualHardwareSection>\n      <Info>Virtual hardware</Info>\n      <System>\
         <vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID>\
         <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>\
         <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType></System>\n",
        escape(guest_id)
    );
    hardware(&mut x, vm, networks);
    x.push_str("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n");
    x
}

fn network_section(x: &mut String, networks: &[String]) {
    if networks.is_empty() {
        return;
    }
    x.push_str("  <NetworkSection>\n    <Info>Networks</Info>\n");
    let mut seen: Vec<&str> = Vec::new();
    for n in networks {
        if !seen.contains(&n.as_str()) {
            seen.push(n);
            let n = escape(n);
            let _ = writeln!(
                x,
                "    <Network ovf:name=\"{n}\"><Description>{n}</Description></Network>"
            );
        }
    }
    x.push_str("  </NetworkSection>\n");
}

/// The `Item`s: CPU, memory, controllers, disks, NICs (rasd elements in alphabetical order, as
/// the CIM schema orders them).
fn hardware(x: &mut String, vm: &NewVm, networks: &[String]) {
    let mut id = 1;
    let mut item = |x: &mut String, body: String| {
        let _ = writeln!(
            x,
            "      <Item>{body}<rasd:InstanceID>{id}</rasd:InstanceID></Item>"
        );
        id += 1;
        id - 1
    };
    item(
        x,
        format!(
            "<rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:ElementName>{0} virtual CPU(s)</rasd:ElementName>\
             <rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>{0}</rasd:VirtualQuantity>",
            vm.cpus.max(1)
        ),
    );
    let mb = memory_mb(vm.memory_bytes);
    item(
        x,
        format!(
            "<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>{mb}MB of memory</rasd:ElementName>\
             <rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>{mb}</rasd:VirtualQuantity>"
        ),
    );
    let controllers = vm.disks.len().div_ceil(DISKS_PER_CONTROLLER).max(1);
    let ids: Vec<usize> = (0..controllers)
        .map(|c| {
            item(
                x,
                format!(
                    "<rasd:Address>{c}</rasd:Address><rasd:ElementName>SCSI controller {c}</rasd:ElementName>\
                     <rasd:ResourceSubType>lsilogicsas</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType>"
                ),
            )
        })
        .collect();
    for i in 0..vm.disks.len() {
        let (c, slot) = (i / DISKS_PER_CONTROLLER, i % DISKS_PER_CONTROLLER);
        let unit = if slot >= 7 { slot + 1 } else { slot };
        item(
            x,
            format!(
                "<rasd:AddressOnParent>{unit}</rasd:AddressOnParent><rasd:ElementName>Hard disk {}</rasd:ElementName>\
                 <rasd:HostResource>ovf:/disk/vmdisk{i}</rasd:HostResource>",
                i + 1
            ) + &format!(
                "<rasd:Parent>{}</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType>",
                ids[c]
            ),
        );
    }
    let nic = match vm.os {
        OsFamily::Windows => "E1000e",
        OsFamily::Linux | OsFamily::Other => "VmxNet3",
    };
    for (i, n) in networks.iter().enumerate() {
        item(
            x,
            format!(
                "<rasd:AddressOnParent>{}</rasd:AddressOnParent><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>\
                 <rasd:Connection>{}</rasd:Connection><rasd:ElementName>Network adapter {}</rasd:ElementName>\
                 <rasd:ResourceSubType>{nic}</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType>",
                i + 7,
                escape(n),
                i + 1
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{Firmware, NewDisk};

    fn vm(disks: usize) -> NewVm {
        NewVm {
            name: "web & db".into(),
            cpus: 2,
            memory_bytes: 1000 * MIB + 1,
            firmware: Firmware::Bios,
            os: OsFamily::Linux,
            disks: (0..disks)
                .map(|i| NewDisk {
                    name: format!("d{i}"),
                    virtual_size: (i as u64 + 1) << 30,
                    format: crd::DiskFormat::Vmdk,
                })
                .collect(),
            networks: Vec::new(),
            storage_hint: None,
            owner: "uid".into(),
        }
    }

    #[test]
    fn describes_cpus_memory_disks_and_networks() {
        let ovf = descriptor(
            &vm(2),
            "otherLinux64Guest",
            &["VM Network".into(), "DC0_DVPG0".into()],
        );
        let doc = roxmltree::Document::parse(&ovf).expect("well-formed XML");
        let text = |tag: &str| -> Vec<String> {
            doc.descendants()
                .filter(|n| n.tag_name().name() == tag)
                .filter_map(|n| n.text().map(str::to_string))
                .collect()
        };
        assert_eq!(
            text("VirtualQuantity"),
            ["2", "1004"],
            "memory rounded up to 4 MiB"
        );
        assert_eq!(
            text("ResourceType"),
            ["3", "4", "6", "17", "17", "10", "10"]
        );
        assert_eq!(text("Connection"), ["VM Network", "DC0_DVPG0"]);
        assert_eq!(text("Name"), ["web & db"]);
        let capacities: Vec<&str> = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "Disk")
            .filter_map(|n| n.attribute(("http://schemas.dmtf.org/ovf/envelope/1", "capacity")))
            .collect();
        assert_eq!(capacities, ["1073741824", "2147483648"]);
        assert!(ovf.contains("ovf:href=\"disk-1.vmdk\""));
    }

    #[test]
    fn many_disks_take_more_controllers_and_skip_unit_7() {
        let ovf = descriptor(&vm(17), "otherGuest64", &[]);
        assert_eq!(
            ovf.matches("<rasd:ResourceType>6</rasd:ResourceType>")
                .count(),
            2
        );
        assert!(
            !ovf.contains("<rasd:AddressOnParent>7</rasd:AddressOnParent><rasd:ElementName>Hard")
        );
        assert!(ovf.contains(
            "<rasd:AddressOnParent>8</rasd:AddressOnParent><rasd:ElementName>Hard disk 8<"
        ));
        assert!(!ovf.contains("NetworkSection"));
    }
}
