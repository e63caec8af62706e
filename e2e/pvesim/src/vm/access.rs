//! The checks qemu-server makes before a create or config change: volume access
//! (`check_volume_access`, `$check_storage_access`), drive syntax (`$check_drive_param`) and the
//! privilege of each config key.

use super::create::drive_keys;
use super::volume;
use crate::auth::Auth;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::qemu_config::{self, Drive, parse_drive, parse_new_disk};
use crate::schema::Params;
use crate::storage::{VolType, parse_volume_id};

/// `PVE::Storage::check_volume_access`.
pub fn check_volume_access(
    node: &Node,
    auth: &Auth,
    vmid: Option<u32>,
    volid: &str,
    vtype: Option<VolType>,
) -> Result<()> {
    if volid.starts_with('/') || parse_volume_id(volid).is_err() {
        if !auth.is_root() {
            return Err(Error::failed(
                "Only root can pass arbitrary filesystem paths.",
            ));
        }
        return Ok(());
    }
    let (storage, vol) = volume(node, volid)?;
    if let Some(t) = vtype
        && t != vol.vtype
    {
        return Err(Error::failed(format!(
            "unable to use volume {volid} - content type needs to be '{}'",
            t.as_str()
        )));
    }
    let path = format!("/storage/{}", storage.id);
    if auth.has(&path, "Datastore.Allocate") {
        return Ok(());
    }
    match (vol.vtype, vol.vmid) {
        (VolType::Iso | VolType::Import, _) => {
            auth.check_any(&path, &["Datastore.AllocateSpace", "Datastore.Audit"])
        }
        (_, Some(owner)) if Some(owner) == vmid => Ok(()),
        (VolType::Images, Some(owner)) => {
            auth.check(&path, &["Datastore.Audit"])?;
            auth.check(&format!("/vms/{owner}"), &["VM.Config.Disk"])
        }
        _ => Err(Error::failed(format!(
            "missing privileges to access {volid}"
        ))),
    }
}

/// `$check_storage_access`: privileges and content types of every volume a create/update touches.
pub fn check_storage_access(
    node: &Node,
    auth: &Auth,
    vmid: u32,
    settings: &Params,
    default_storage: Option<&str>,
) -> Result<()> {
    let access = Access { node, auth, vmid };
    for key in drive_keys(settings) {
        let Some(drive) = parse_drive(&key, &settings[&key]) else {
            continue;
        };
        access.check_drive(&drive, default_storage)?;
        if let Some(src) = drive.props.get("import-from") {
            access.check_import(&key, src)?;
        }
    }
    let unused = settings
        .iter()
        .filter(|(k, _)| qemu_config::is_unused_key(k));
    for (key, value) in unused {
        let volid = value.split(',').next().unwrap_or_default();
        if parse_volume_id(volid).is_err() {
            return Err(Error::param(key, format!("not a valid volid: {volid}")));
        }
        check_volume_access(node, auth, Some(vmid), volid, Some(VolType::Images))?;
    }
    Ok(())
}

/// The access checks of one create/update request.
struct Access<'a> {
    node: &'a Node,
    auth: &'a Auth,
    vmid: u32,
}

impl Access<'_> {
    /// A drive's volume: a new disk needs `Datastore.AllocateSpace` on a storage with images, an
    /// existing volume access to it (and content images or iso).
    fn check_drive(&self, drive: &Drive, default_storage: Option<&str>) -> Result<()> {
        let (file, cdrom) = (drive.file(), drive.is_cdrom());
        if file.is_empty() || file == "none" || file == "cloudinit" {
            return Ok(());
        }
        if cdrom && file == "cdrom" {
            return self.auth.check("/", &["Sys.Console"]);
        }
        if !cdrom && let Some((store, _)) = parse_new_disk(file) {
            let storeid = store
                .or(default_storage)
                .ok_or_else(|| Error::failed("no storage ID specified (and no default storage)"))?;
            self.auth
                .check(&format!("/storage/{storeid}"), &["Datastore.AllocateSpace"])?;
            if !self.node.storage(storeid)?.supports("images") {
                let message = format!("storage '{storeid}' does not support vm images");
                return Err(Error::param("storage", message));
            }
            return Ok(());
        }
        check_volume_access(self.node, self.auth, Some(self.vmid), file, None)?;
        if parse_volume_id(file).is_ok()
            && !matches!(
                volume(self.node, file)?.1.vtype,
                VolType::Images | VolType::Iso
            )
        {
            return Err(Error::param(
                &drive.key,
                "content type needs to be 'images' or 'iso'",
            ));
        }
        Ok(())
    }

    /// An `import-from` source: content images or import; another VM's disk needs `VM.Clone`
    /// on that VM.
    fn check_import(&self, key: &str, src: &str) -> Result<()> {
        if src.starts_with('/') || parse_volume_id(src).is_err() {
            return check_volume_access(self.node, self.auth, Some(self.vmid), src, None);
        }
        let (_, vol) = volume(self.node, src)?;
        if !matches!(vol.vtype, VolType::Images | VolType::Import) {
            return Err(Error::param(
                key,
                format!(
                    "{src} has wrong type '{}' - needs to be 'images' or 'import'",
                    vol.vtype.as_str()
                ),
            ));
        }
        if vol.format == "ova" || vol.format == "ovf" {
            return Err(Error::failed(format!(
                "cannot import from '{src}' - importing from OVA/OVF archives is not implemented by the simulator"
            )));
        }
        match vol.vmid {
            Some(owner) => self.auth.check(&format!("/vms/{owner}"), &["VM.Clone"]),
            None => check_volume_access(self.node, self.auth, Some(self.vmid), src, None),
        }
    }
}

/// `$check_drive_param`: the drive syntax rules, normalizing each drive value as PVE prints it.
pub fn check_drive_params(node: &Node, settings: &mut Params) -> Result<()> {
    for key in drive_keys(settings) {
        let drive = parse_drive(&key, &settings[&key])
            .ok_or_else(|| Error::param(&key, "unable to parse drive options"))?;
        if drive.props.contains_key("import-from") {
            if !parse_new_disk(drive.file()).is_some_and(|(_, size)| size == 0.0) {
                return Err(Error::param(
                    &key,
                    "'import-from' requires special syntax - use <storage ID>:0,import-from=<source>",
                ));
            }
            if key == "efidisk0" {
                for required in ["efitype", "pre-enrolled-keys"] {
                    if !drive.props.contains_key(required) {
                        return Err(Error::param(
                            &key,
                            format!("need to specify '{required}' when using 'import-from'"),
                        ));
                    }
                }
            }
        }
        let file = drive.file();
        if parse_volume_id(file).is_ok()
            && parse_new_disk(file).is_none()
            && !file.ends_with(":cloudinit")
        {
            let (_, vol) = volume(node, file)?;
            if vol.vtype == VolType::Iso && !drive.is_cdrom() {
                return Err(Error::param(
                    &key,
                    "explicit 'media=cdrom' is required for iso images",
                ));
            }
        }
        settings.insert(key.clone(), drive.print());
    }
    Ok(())
}

/// The privilege a config key needs (`check_vm_modify_config_perm`).
pub fn config_privilege(key: &str) -> &'static str {
    match key {
        "cores" | "sockets" | "vcpus" | "cpu" | "cpulimit" | "cpuunits" | "numa" | "affinity" => {
            "VM.Config.CPU"
        }
        "memory" | "balloon" | "shares" => "VM.Config.Memory",
        "bios" | "ostype" | "scsihw" | "vga" | "machine" | "acpi" | "kvm" | "tablet"
        | "localtime" => "VM.Config.HWType",
        k if qemu_config::is_drive_key(k) || qemu_config::is_unused_key(k) => "VM.Config.Disk",
        k if k.starts_with("net") => "VM.Config.Network",
        _ => "VM.Config.Options",
    }
}
