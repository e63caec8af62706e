//! The marks that tie what a migration makes to the migration's UID (its owner), and the checks
//! made before anything the status names is reused or deleted: the status is a record, not proof.
//!
//! | what | libvirt | vSphere | Proxmox VE | file double |
//! | --- | --- | --- | --- | --- |
//! | target VM | `<metadata><vrg:migration uid=.../>` | extraConfig `virtrigaud.migration.uid` | tag `virtrigaud` and description line `virtrigaud-migration: <uid>` | `owner` in `vm.json` |
//! | target disk | volume name `<vm>-<disk>-<tag>.<format>` | none on its own (the VM's files) | import file `<vm>-<disk>-<tag>.<format>` | file `<disk>-<tag>.<format>` |
//! | source snapshot | name [`snapshot_label`] | name [`snapshot_label`] | name [`snapshot_label`] | name [`snapshot_label`] |
//!
//! `<tag>` is [`owner_tag`]: the letters and digits of the UID.

use crd::SnapshotHandle;

use crate::{Error, Result};

/// Longest tag: a Kubernetes UID has 32 hex digits; the snapshot label (`vrg-` + tag) stays within
/// every hypervisor's 40 characters.
const MAX_TAG: usize = 36;

/// The name part that marks a disk or snapshot as `owner`'s: the ASCII letters and digits of the
/// UID, at most 36. Empty when the UID has none (the pipeline refuses such a plan).
pub fn owner_tag(owner: &str) -> String {
    owner
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(MAX_TAG)
        .collect()
}

/// The snapshot name of a migration: `vrg-<tag>`, the same for all its attempts, within every
/// hypervisor's naming rules (letters, digits and `-`, at most 40 characters).
pub fn snapshot_label(owner: &str) -> String {
    format!("vrg-{}", owner_tag(owner))
}

/// `<stem>-<tag>`: a disk name marked as `owner`'s (the caller appends the extension).
pub fn tagged(stem: &str, owner: &str) -> String {
    format!("{stem}-{}", owner_tag(owner))
}

/// Whether the file or volume name `name` (`<stem>-<tag>.<extension>`) carries `owner`'s tag as
/// its last name part.
pub fn carries_tag(name: &str, owner: &str) -> bool {
    let tag = owner_tag(owner);
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    !tag.is_empty()
        && stem
            .strip_suffix(tag.as_str())
            .is_some_and(|rest| rest.ends_with('-'))
}

/// The last component of a path or volume name (`/pool/a-b.qcow2`, `import/a-b.qcow2`).
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Refuses ([`Error::NotOurs`]) a snapshot handle whose name is not `owner`'s
/// [`snapshot_label`]: such a snapshot was not taken by this migration and is left alone.
pub fn ensure_snapshot_ours(snapshot: &SnapshotHandle, owner: &str) -> Result<()> {
    let label = snapshot_label(owner);
    if owner_tag(owner).is_empty() || snapshot.name() != label {
        return Err(Error::NotOurs(format!(
            "snapshot {snapshot} is not named {label}, the snapshot name of migration {owner}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "5f0c2a8e-1b7d-4c1e-9a8b-3d2e1f0a9b8c";

    #[test]
    fn tags_and_labels_hold_the_uid() {
        assert_eq!(owner_tag(UID), "5f0c2a8e1b7d4c1e9a8b3d2e1f0a9b8c");
        assert_eq!(snapshot_label(UID), "vrg-5f0c2a8e1b7d4c1e9a8b3d2e1f0a9b8c");
        assert!(snapshot_label(&"x".repeat(99)).len() <= 40);
        assert_eq!(owner_tag("--"), "");
        assert_eq!(tagged("web-vda", "uid-1"), "web-vda-uid1");
    }

    #[test]
    fn names_carry_the_tag_as_their_last_part() {
        let name = format!("{}.qcow2", tagged("web-vda", UID));
        assert!(carries_tag(&name, UID));
        assert!(carries_tag(&tagged("web-vda", UID), UID), "no extension");
        assert!(!carries_tag("web-vda.qcow2", UID));
        assert!(!carries_tag(
            &format!("{}.qcow2", tagged("web-vda", "uid-2")),
            UID
        ));
        let glued = format!("web{}.qcow2", owner_tag(UID));
        assert!(!carries_tag(&glued, UID), "a name part, not a suffix");
        assert!(!carries_tag("web-.qcow2", "--"), "no tag, no mark");
        assert_eq!(file_name("local:import/a-b.raw"), "a-b.raw");
        assert_eq!(file_name("/pool/x.qcow2"), "x.qcow2");
    }

    #[test]
    fn only_the_migrations_snapshot_name_is_ours() {
        let ours = SnapshotHandle::Proxmox {
            node: "pve1".into(),
            vmid: 100,
            name: snapshot_label(UID),
        };
        ensure_snapshot_ours(&ours, UID).unwrap();
        let e = ensure_snapshot_ours(&ours, "another-uid").unwrap_err();
        assert_eq!(e.reason(), "NotOwned");
        let theirs = SnapshotHandle::Libvirt {
            domain_uuid: "u".into(),
            name: "nightly".into(),
        };
        let e = ensure_snapshot_ours(&theirs, UID).unwrap_err();
        assert!(e.to_string().contains("nightly of domain u"), "{e}");
    }
}
