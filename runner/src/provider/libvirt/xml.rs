//! The libvirt XML documents the provider reads (domain, volume, pool, snapshot, capabilities) and
//! writes (domain, volume, snapshot). Parsing is tolerant: unknown elements are ignored, and only what
//! a migration needs is extracted.

use std::fmt::Write as _;

use crd::{DiskFormat, NetworkHint};
use roxmltree::{Document, Node};

use crate::provider::Firmware;

/// A parse failure: what was expected and where.
pub type ParseResult<T> = std::result::Result<T, String>;

/// What a migration needs from a domain's XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainInfo {
    pub uuid: String,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub firmware: Firmware,
    /// Every `<disk>` element (any device), in document order, which libvirt keeps sorted by bus
    /// and target name.
    pub disks: Vec<DiskInfo>,
    pub nics: usize,
    /// A `org.qemu.guest_agent.0` channel is configured (snapshots can be quiesced).
    pub guest_agent: bool,
    /// The migration UID in the domain's `<metadata>` ([`OWNER_NS`]), when a migration created it.
    pub owner: Option<String>,
}

/// Namespace of the `<metadata>` element that marks a domain as created by a migration.
pub const OWNER_NS: &str = "https://virtrigaud.io/xmlns/migration/v1";

impl DomainInfo {
    /// The disk with target `dev`.
    pub fn disk(&self, dev: &str) -> Option<&DiskInfo> {
        self.disks.iter().find(|d| d.target == dev)
    }

    /// The data disks to migrate (`device='disk'`), explicit boot order first, then bus order.
    pub fn data_disks(&self) -> Vec<&DiskInfo> {
        let mut disks: Vec<&DiskInfo> = self.disks.iter().filter(|d| d.device == "disk").collect();
        disks.sort_by_key(|d| d.boot_order.unwrap_or(u32::MAX));
        disks
    }
}

/// One `<disk>` of a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// `<target dev>`: `vda`, `sdb`...
    pub target: String,
    /// `disk`, `cdrom`, `floppy` or `lun`.
    pub device: String,
    /// `<driver type>`: `qcow2`, `raw`...
    pub format: Option<String>,
    pub source: DiskSource,
    /// The image under `source` (first `<backingStore>` level), when the live XML shows a chain.
    pub backing: Option<String>,
    /// Its `<format type>`.
    pub backing_format: Option<String>,
    pub boot_order: Option<u32>,
}

/// Where a disk's data lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskSource {
    /// `type='file'` or `type='block'`: a host path.
    Path(String),
    /// `type='volume'`: a pool volume.
    Volume { pool: String, volume: String },
    /// Anything else (`network`, `nvme`, ...), by type.
    Other(String),
    /// No medium (empty cdrom).
    Empty,
}

/// Parses a domain's XML (`virDomainGetXMLDesc`).
pub fn parse_domain(xml: &str) -> ParseResult<DomainInfo> {
    let doc = Document::parse(xml).map_err(|e| format!("domain XML: {e}"))?;
    let root = doc.root_element();
    if !root.has_tag_name("domain") {
        return Err(format!(
            "domain XML: root element is <{}>",
            root.tag_name().name()
        ));
    }
    let uuid = child_text(root, "uuid").unwrap_or_default().to_string();
    let vcpu = child(root, "vcpu").ok_or("domain XML: no <vcpu>")?;
    let vcpus = vcpu
        .attribute("current")
        .or(vcpu.text())
        .and_then(|v| v.trim().parse().ok())
        .ok_or("domain XML: bad <vcpu>")?;
    // the configured size, not what a balloon currently leaves the guest (`<currentMemory>`)
    let memory = child(root, "memory").ok_or("domain XML: no <memory>")?;
    let memory_bytes = scaled(memory).ok_or("domain XML: bad <memory>")?;
    let firmware = match child(root, "os") {
        Some(os) if os.attribute("firmware") == Some("efi") => Firmware::Uefi,
        Some(os) => match child(os, "loader") {
            Some(loader)
                if loader.attribute("type") == Some("pflash")
                    || loader
                        .text()
                        .is_some_and(|p| p.contains("OVMF") || p.contains("edk2")) =>
            {
                Firmware::Uefi
            }
            _ => Firmware::Bios,
        },
        None => Firmware::Bios,
    };
    let devices = child(root, "devices");
    let disks = devices
        .map(|d| children(d, "disk").map(parse_disk).collect())
        .transpose()?
        .unwrap_or_default();
    let nics = devices
        .map(|d| children(d, "interface").count())
        .unwrap_or(0);
    let guest_agent = devices.is_some_and(|d| {
        children(d, "channel").any(|c| {
            child(c, "target").and_then(|t| t.attribute("name")) == Some("org.qemu.guest_agent.0")
        })
    });
    let owner = child(root, "metadata")
        .and_then(|m| {
            m.children().find(|c| {
                c.tag_name().namespace() == Some(OWNER_NS)
                    && c.has_tag_name((OWNER_NS, "migration"))
            })
        })
        .and_then(|m| m.attribute("uid"))
        .map(str::to_string);
    Ok(DomainInfo {
        uuid,
        vcpus,
        memory_bytes,
        firmware,
        disks,
        nics,
        guest_agent,
        owner,
    })
}

fn parse_disk(disk: Node) -> ParseResult<DiskInfo> {
    let target = child(disk, "target")
        .and_then(|t| t.attribute("dev"))
        .ok_or("domain XML: <disk> without <target dev>")?
        .to_string();
    let kind = disk.attribute("type").unwrap_or("file");
    let source = match child(disk, "source") {
        None => DiskSource::Empty,
        Some(s) => match kind {
            "file" => s
                .attribute("file")
                .map_or(DiskSource::Empty, |p| DiskSource::Path(p.into())),
            "block" => s
                .attribute("dev")
                .map_or(DiskSource::Empty, |p| DiskSource::Path(p.into())),
            "volume" => match (s.attribute("pool"), s.attribute("volume")) {
                (Some(pool), Some(volume)) => DiskSource::Volume {
                    pool: pool.into(),
                    volume: volume.into(),
                },
                _ => DiskSource::Other("volume".into()),
            },
            other => DiskSource::Other(other.into()),
        },
    };
    let backing_store = child(disk, "backingStore");
    let backing = backing_store.and_then(|b| {
        let s = child(b, "source")?;
        s.attribute("file")
            .or(s.attribute("dev"))
            .map(str::to_string)
    });
    let backing_format = backing_store
        .and_then(|b| child(b, "format"))
        .and_then(|f| f.attribute("type"))
        .map(str::to_string);
    Ok(DiskInfo {
        target,
        device: disk.attribute("device").unwrap_or("disk").to_string(),
        format: child(disk, "driver")
            .and_then(|d| d.attribute("type"))
            .map(str::to_string),
        source,
        backing,
        backing_format,
        boot_order: child(disk, "boot")
            .and_then(|b| b.attribute("order"))
            .and_then(|o| o.parse().ok()),
    })
}

/// What a migration needs from a storage volume's XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub path: String,
    /// `<target><format type>`; `None` for volumes without one (block devices).
    pub format: Option<String>,
    pub capacity: u64,
    /// Backing image, if the volume is an overlay.
    pub backing: Option<String>,
    /// Its `<format type>`.
    pub backing_format: Option<String>,
}

/// Parses a storage volume's XML (`virStorageVolGetXMLDesc`).
pub fn parse_volume(xml: &str) -> ParseResult<VolumeInfo> {
    let doc = Document::parse(xml).map_err(|e| format!("volume XML: {e}"))?;
    let root = doc.root_element();
    let target = child(root, "target").ok_or("volume XML: no <target>")?;
    Ok(VolumeInfo {
        path: child_text(target, "path")
            .ok_or("volume XML: no <target><path>")?
            .to_string(),
        format: child(target, "format")
            .and_then(|f| f.attribute("type"))
            .map(str::to_string),
        capacity: child(root, "capacity")
            .and_then(scaled)
            .ok_or("volume XML: bad <capacity>")?,
        backing: child(root, "backingStore")
            .and_then(|b| child_text(b, "path"))
            .map(str::to_string),
        backing_format: child(root, "backingStore")
            .and_then(|b| child(b, "format"))
            .and_then(|f| f.attribute("type"))
            .map(str::to_string),
    })
}

/// What a migration needs from a storage pool's XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    /// `dir`, `fs`, `netfs`, `logical`...
    pub kind: String,
    /// `<target><path>`.
    pub target_path: Option<String>,
}

impl PoolInfo {
    /// Whether volumes are plain files in a directory (qcow2 images and sparse uploads work).
    pub fn is_file_based(&self) -> bool {
        matches!(self.kind.as_str(), "dir" | "fs" | "netfs")
    }
}

/// Parses a storage pool's XML (`virStoragePoolGetXMLDesc`).
pub fn parse_pool(xml: &str) -> ParseResult<PoolInfo> {
    let doc = Document::parse(xml).map_err(|e| format!("pool XML: {e}"))?;
    let root = doc.root_element();
    Ok(PoolInfo {
        kind: root.attribute("type").unwrap_or_default().to_string(),
        target_path: child(root, "target")
            .and_then(|t| child_text(t, "path"))
            .map(str::to_string),
    })
}

/// The external overlays a disk-only snapshot created: `(disk target, overlay path)`.
pub fn parse_snapshot_overlays(xml: &str) -> ParseResult<Vec<(String, String)>> {
    let doc = Document::parse(xml).map_err(|e| format!("snapshot XML: {e}"))?;
    let root = doc.root_element();
    let Some(disks) = child(root, "disks") else {
        return Ok(Vec::new());
    };
    Ok(children(disks, "disk")
        .filter(|d| d.attribute("snapshot") == Some("external"))
        .filter_map(|d| {
            let name = d.attribute("name")?;
            let src = child(d, "source")?;
            let path = src.attribute("file").or(src.attribute("dev"))?;
            Some((name.to_string(), path.to_string()))
        })
        .collect())
}

/// Whether the host capabilities offer KVM for x86_64 guests.
pub fn offers_kvm(capabilities: &str) -> bool {
    let Ok(doc) = Document::parse(capabilities) else {
        return false;
    };
    doc.root_element()
        .children()
        .filter(|g| g.has_tag_name("guest"))
        .filter(|g| child_text(*g, "os_type") == Some("hvm"))
        .filter_map(|g| child(g, "arch"))
        .filter(|a| a.attribute("name") == Some("x86_64"))
        .any(|a| children(a, "domain").any(|d| d.attribute("type") == Some("kvm")))
}

/// An external, disk-only snapshot: overlays for `overlays`, `snapshot='no'` for `excluded` disks.
pub fn snapshot_xml(name: &str, overlays: &[(String, String)], excluded: &[String]) -> String {
    let mut xml = format!(
        "<domainsnapshot>\n  <name>{}</name>\n  <description>virtrigaud migration: the disks' base \
         images stay unchanged while they are exported</description>\n  <disks>\n",
        escape(name)
    );
    for (disk, overlay) in overlays {
        let _ = writeln!(
            xml,
            "    <disk name='{}' snapshot='external' type='file'><driver type='qcow2'/><source file='{}'/></disk>",
            escape(disk),
            escape(overlay)
        );
    }
    for disk in excluded {
        let _ = writeln!(xml, "    <disk name='{}' snapshot='no'/>", escape(disk));
    }
    xml.push_str("  </disks>\n</domainsnapshot>\n");
    xml
}

/// A new storage volume with no allocation.
pub fn volume_xml(name: &str, capacity: u64, format: &str) -> String {
    format!(
        "<volume>\n  <name>{}</name>\n  <capacity unit='bytes'>{capacity}</capacity>\n  \
         <allocation unit='bytes'>0</allocation>\n  <target><format type='{}'/></target>\n</volume>\n",
        escape(name),
        escape(format)
    )
}

/// A disk of a domain to define.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDisk {
    pub path: String,
    pub format: DiskFormat,
}

/// A domain to define.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDomain<'a> {
    pub name: &'a str,
    /// Set when redefining an existing domain.
    pub uuid: Option<&'a str>,
    /// `kvm` or `qemu` (TCG).
    pub domain_type: &'a str,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub firmware: Firmware,
    pub disks: &'a [NewDisk],
    pub networks: &'a [NetworkHint],
    /// Bridge for hints that name neither a bridge nor a network (the Provider's defaults.network).
    pub default_bridge: Option<&'a str>,
    /// Hide `arch-capabilities` from a KVM guest's host-model CPU: nested KVM hosts may refuse its
    /// MSR ("failed to set MSR 0x10a").
    pub without_arch_capabilities: bool,
    /// UID of the migration creating the domain, written into its `<metadata>`.
    pub owner: &'a str,
}

/// `domain` (a domain's XML) with `arch-capabilities` disabled in its host-model `<cpu>`, for a
/// nested KVM host that refuses its MSR; `None` when there is no such `<cpu>` or it is disabled
/// already.
pub fn without_arch_capabilities(domain: &str) -> Option<String> {
    const FEATURE: &str = "<feature policy='disable' name='arch-capabilities'/>";
    if domain.contains("name='arch-capabilities'") {
        return None;
    }
    let start = domain.find("<cpu ")?;
    let end = start + domain[start..].find('>')?;
    if !domain[start..end].contains("host-model") {
        return None;
    }
    Some(if domain[..end].ends_with('/') {
        format!(
            "{}>{FEATURE}</cpu>{}",
            &domain[..end - 1],
            &domain[end + 1..]
        )
    } else {
        format!("{}{FEATURE}{}", &domain[..=end], &domain[end + 1..])
    })
}

/// The virtio target name of the `index`th disk: `vda` ... `vdz`, `vdaa` ...
pub fn virtio_target(index: usize) -> String {
    let mut letters = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    format!("vd{}", String::from_utf8(letters).unwrap_or_default())
}

/// A domain definition from the source's shape: q35, virtio disks in order (the first boots),
/// one virtio NIC per network hint, a serial console and a VNC display on the host's loopback.
pub fn domain_xml(d: &NewDomain) -> String {
    let memory_kib = d.memory_bytes.div_ceil(1024);
    let firmware = match d.firmware {
        Firmware::Uefi => " firmware='efi'",
        Firmware::Bios => "",
    };
    let uuid = d
        .uuid
        .map(|u| format!("  <uuid>{}</uuid>\n", escape(u)))
        .unwrap_or_default();
    let mut xml = format!(
        "<domain type='{}'>\n  <name>{}</name>\n{uuid}  <metadata><vrg:migration xmlns:vrg='{OWNER_NS}' \
         uid='{}'/></metadata>\n  <memory unit='KiB'>{memory_kib}</memory>\n  \
         <vcpu>{}</vcpu>\n  <os{firmware}>\n    <type arch='x86_64' machine='q35'>hvm</type>\n  </os>\n  \
         <features><acpi/><apic/></features>\n",
        escape(d.domain_type),
        escape(d.name),
        escape(d.owner),
        d.vcpus.max(1)
    );
    if d.domain_type == "kvm" {
        if d.without_arch_capabilities {
            xml.push_str(
                "  <cpu mode='host-model'><feature policy='disable' name='arch-capabilities'/></cpu>\n",
            );
        } else {
            xml.push_str("  <cpu mode='host-model'/>\n");
        }
    }
    xml.push_str("  <clock offset='utc'/>\n  <devices>\n");
    for (i, disk) in d.disks.iter().enumerate() {
        let boot = if i == 0 { "<boot order='1'/>" } else { "" };
        let _ = writeln!(
            xml,
            "    <disk type='file' device='disk'><driver name='qemu' type='{}'/><source file='{}'/>\
             <target dev='{}' bus='virtio'/>{boot}</disk>",
            disk.format.as_str(),
            escape(&disk.path),
            virtio_target(i)
        );
    }
    for (i, hint) in d.networks.iter().enumerate() {
        let source = match (hint.bridge.as_deref(), &hint.network, d.default_bridge) {
            (Some(bridge), _, _) | (None, None, Some(bridge)) => {
                format!("type='bridge'><source bridge='{}'/>", escape(bridge))
            }
            (None, Some(network), _) => {
                format!("type='network'><source network='{}'/>", escape(network))
            }
            (None, None, None) => "type='network'><source network='default'/>".to_string(),
        };
        let _ = writeln!(
            xml,
            "    <interface {source}<model type='virtio'/><alias name='ua-net{i}-{}'/></interface>",
            escape(&alias(&hint.name))
        );
    }
    xml.push_str(
        "    <serial type='pty'/>\n    <console type='pty'/>\n    \
         <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\n    \
         <video><model type='virtio'/></video>\n  </devices>\n</domain>\n",
    );
    xml
}

/// A user alias (`ua-` prefix) may hold only `[A-Za-z0-9_-]`.
fn alias(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Escapes text for an XML attribute or element.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(name))
}

fn children<'a, 'i: 'a>(node: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(move |c| c.has_tag_name(name))
}

fn child_text<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(node, name).and_then(|c| c.text()).map(str::trim)
}

/// A libvirt scaled integer (`<memory unit='KiB'>`, `<capacity unit='bytes'>`) in bytes.
fn scaled(node: Node) -> Option<u64> {
    let value: u64 = node.text()?.trim().parse().ok()?;
    let factor: u64 = match node.attribute("unit").unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    value.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_capabilities_disabled_in_a_host_model_cpu() {
        let closed = "<domain><cpu mode='host-model' check='partial'/><clock/></domain>";
        let fixed = without_arch_capabilities(closed).unwrap();
        assert_eq!(
            fixed,
            "<domain><cpu mode='host-model' check='partial'><feature policy='disable' \
             name='arch-capabilities'/></cpu><clock/></domain>"
        );
        assert_eq!(without_arch_capabilities(&fixed), None, "once");
        let open = "<domain><cpu mode='host-model'>\n<model fallback='allow'/></cpu></domain>";
        let fixed = without_arch_capabilities(open).unwrap();
        assert!(fixed.starts_with(
            "<domain><cpu mode='host-model'><feature policy='disable' name='arch-capabilities'/>\n"
        ));
        roxmltree::Document::parse(&fixed).unwrap();
        assert_eq!(
            without_arch_capabilities("<domain><cpu mode='custom'/></domain>"),
            None
        );
        assert_eq!(without_arch_capabilities("<domain/>"), None);
    }

    const LIVE: &str = r#"<domain type='qemu' id='3'>
  <name>src</name>
  <uuid>ef8f2db4-cb8e-48c8-9e75-33b7b41aea34</uuid>
  <memory unit='KiB'>131072</memory>
  <currentMemory unit='KiB'>65536</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <os firmware='efi'><type arch='x86_64' machine='pc-q35-10.0'>hvm</type></os>
  <devices>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/pool/a.qcow2.snap' index='3'/>
      <backingStore type='file' index='2'><format type='qcow2'/><source file='/pool/a.qcow2'/><backingStore/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/>
      <source pool='default' volume='b.raw'/>
      <backingStore/>
      <target dev='vdb' bus='virtio'/>
      <boot order='1'/>
    </disk>
    <interface type='bridge'><source bridge='br0'/></interface>
    <interface type='network'><source network='default'/></interface>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>"#;

    #[test]
    fn parses_a_live_domain() {
        let d = parse_domain(LIVE).unwrap();
        assert_eq!(d.uuid, "ef8f2db4-cb8e-48c8-9e75-33b7b41aea34");
        assert_eq!(d.vcpus, 2);
        assert_eq!(d.memory_bytes, 128 << 20);
        assert_eq!(d.firmware, Firmware::Uefi);
        assert_eq!(d.nics, 2);
        assert!(d.guest_agent);
        assert_eq!(d.disks.len(), 3);
        let vda = d.disk("vda").unwrap();
        assert_eq!(vda.source, DiskSource::Path("/pool/a.qcow2.snap".into()));
        assert_eq!(vda.backing.as_deref(), Some("/pool/a.qcow2"));
        assert_eq!(vda.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(vda.format.as_deref(), Some("qcow2"));
        let vdb = d.disk("vdb").unwrap();
        assert_eq!(
            vdb.source,
            DiskSource::Volume {
                pool: "default".into(),
                volume: "b.raw".into()
            }
        );
        assert_eq!(vdb.backing, None);
        assert_eq!(d.disk("sda").unwrap().source, DiskSource::Empty);
        // cdrom skipped, explicit boot order first
        let order: Vec<&str> = d.data_disks().iter().map(|d| d.target.as_str()).collect();
        assert_eq!(order, ["vdb", "vda"]);
    }

    #[test]
    fn bios_and_memory_units() {
        let xml = "<domain><vcpu>3</vcpu><memory unit='GiB'>2</memory>\
                   <os><type>hvm</type><loader type='rom'>/usr/share/seabios/bios.bin</loader></os></domain>";
        let d = parse_domain(xml).unwrap();
        assert_eq!(
            (d.vcpus, d.memory_bytes, d.firmware),
            (3, 2 << 30, Firmware::Bios)
        );
        assert!(d.disks.is_empty());
        let pflash = "<domain><vcpu>1</vcpu><memory>1024</memory><os><loader type='pflash'>/x/OVMF_CODE.fd</loader></os></domain>";
        let d = parse_domain(pflash).unwrap();
        assert_eq!((d.memory_bytes, d.firmware), (1 << 20, Firmware::Uefi));
        assert!(parse_domain("<pool/>").is_err());
        assert!(parse_domain("<domain><memory>1</memory></domain>").is_err());
    }

    #[test]
    fn parses_volume_pool_snapshot_and_capabilities() {
        let vol = parse_volume(
            "<volume type='file'><name>a</name><capacity unit='bytes'>67108864</capacity>\
             <target><path>/pool/a.qcow2</path><format type='qcow2'/></target>\
             <backingStore><path>/pool/base.raw</path><format type='raw'/></backingStore></volume>",
        )
        .unwrap();
        assert_eq!(vol.path, "/pool/a.qcow2");
        assert_eq!(vol.format.as_deref(), Some("qcow2"));
        assert_eq!(vol.capacity, 64 << 20);
        assert_eq!(vol.backing.as_deref(), Some("/pool/base.raw"));

        let pool = parse_pool(
            "<pool type='dir'><name>default</name><target><path>/p</path></target></pool>",
        )
        .unwrap();
        assert!(pool.is_file_based());
        assert_eq!(pool.target_path.as_deref(), Some("/p"));
        assert!(
            !parse_pool("<pool type='logical'/>")
                .unwrap()
                .is_file_based()
        );

        let snap = "<domainsnapshot><name>s</name><disks>\
            <disk name='vda' snapshot='external' type='file'><driver type='qcow2'/><source file='/p/a.s'/></disk>\
            <disk name='sda' snapshot='no'/></disks><domain/></domainsnapshot>";
        assert_eq!(
            parse_snapshot_overlays(snap).unwrap(),
            [("vda".to_string(), "/p/a.s".to_string())]
        );

        let caps = "<capabilities><guest><os_type>hvm</os_type><arch name='x86_64'>\
            <domain type='qemu'/><domain type='kvm'/></arch></guest></capabilities>";
        assert!(offers_kvm(caps));
        assert!(!offers_kvm(&caps.replace("'kvm'", "'xen'")));
    }

    #[test]
    fn writes_snapshot_and_volume_xml() {
        let xml = snapshot_xml(
            "vrg-1",
            &[("vda".into(), "/p/a'b.vrg-1".into())],
            &["sda".into()],
        );
        assert_eq!(
            parse_snapshot_overlays(&xml).unwrap(),
            [("vda".to_string(), "/p/a'b.vrg-1".to_string())]
        );
        assert!(xml.contains("<disk name='sda' snapshot='no'/>"));
        let vol = volume_xml("x<y", 42, "raw");
        let doc = Document::parse(&vol).unwrap();
        assert_eq!(child_text(doc.root_element(), "name"), Some("x<y"));
        assert_eq!(
            child(doc.root_element(), "capacity").and_then(scaled),
            Some(42)
        );
    }

    #[test]
    fn virtio_targets() {
        assert_eq!(virtio_target(0), "vda");
        assert_eq!(virtio_target(25), "vdz");
        assert_eq!(virtio_target(26), "vdaa");
        assert_eq!(virtio_target(27), "vdab");
    }

    #[test]
    fn writes_a_domain_that_reads_back() {
        let disks = [
            NewDisk {
                path: "/p/new-vda.qcow2".into(),
                format: DiskFormat::Qcow2,
            },
            NewDisk {
                path: "/p/new-vdb.raw".into(),
                format: DiskFormat::Raw,
            },
        ];
        let nets = [
            NetworkHint {
                name: "eth0".into(),
                network: None,
                bridge: Some("virbr0".into()),
            },
            NetworkHint {
                name: "eth 1".into(),
                network: Some("lan".into()),
                bridge: None,
            },
            NetworkHint {
                name: "eth2".into(),
                network: None,
                bridge: None,
            },
        ];
        let xml = domain_xml(&NewDomain {
            name: "new",
            uuid: Some("c71a2b07-bc75-44d0-921e-e1e27a7fa05b"),
            domain_type: "qemu",
            vcpus: 2,
            memory_bytes: (1 << 30) + 1,
            firmware: Firmware::Uefi,
            disks: &disks,
            networks: &nets,
            default_bridge: Some("br-default"),
            without_arch_capabilities: false,
            owner: "uid-<1>",
        });
        let d = parse_domain(&xml).unwrap();
        assert_eq!(d.uuid, "c71a2b07-bc75-44d0-921e-e1e27a7fa05b");
        assert_eq!(
            d.owner.as_deref(),
            Some("uid-<1>"),
            "the owner mark reads back"
        );
        assert_eq!(d.vcpus, 2);
        assert_eq!(d.memory_bytes, (1 << 30) + 1024, "rounded up to KiB");
        assert_eq!(d.firmware, Firmware::Uefi);
        assert_eq!(d.nics, 3);
        let targets: Vec<(&str, &DiskSource, Option<&str>)> = d
            .disks
            .iter()
            .map(|d| (d.target.as_str(), &d.source, d.format.as_deref()))
            .collect();
        assert_eq!(
            targets,
            [
                (
                    "vda",
                    &DiskSource::Path("/p/new-vda.qcow2".into()),
                    Some("qcow2")
                ),
                (
                    "vdb",
                    &DiskSource::Path("/p/new-vdb.raw".into()),
                    Some("raw")
                )
            ]
        );
        assert!(xml.contains("<source bridge='virbr0'/>"));
        assert!(xml.contains("<source network='lan'/>"));
        assert!(xml.contains("<source bridge='br-default'/>"));
        assert!(xml.contains("<alias name='ua-net1-eth-1'/>"));
        assert!(
            !xml.contains("host-model"),
            "TCG guests keep the default CPU"
        );
    }
}
