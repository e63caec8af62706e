//! Volume names, allocation, linked clones and LV activation, against pve-storage's behaviour.

use super::*;

fn storages() -> (tempfile::TempDir, Storage, Storage) {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path()).unwrap();
    let node = NodeConfig::load_or_init(&data).unwrap();
    let local = node.storage(&data, "local").unwrap();
    let lvm = node.storage(&data, "local-lvm").unwrap();
    (tmp, local, lvm)
}

#[test]
fn volume_names_parse_as_pve_does() {
    let (_tmp, local, lvm) = storages();
    let v = local.parse_volname("100/vm-100-disk-0.qcow2").unwrap();
    assert_eq!(
        (v.vtype, v.vmid, v.format.as_str()),
        (VolType::Images, Some(100), "qcow2")
    );
    let v = local.parse_volname("import/disk 1.vmdk").unwrap();
    assert_eq!((v.vtype, v.format.as_str()), (VolType::Import, "vmdk"));
    assert_eq!(
        local.parse_volname("import/x.txt").unwrap_err().to_string(),
        "unable to parse directory volume name 'import/x.txt'"
    );
    assert_eq!(
        local
            .parse_volname("100/vm-100-disk-0.img")
            .unwrap_err()
            .to_string(),
        "unable to parse volume filename 'vm-100-disk-0.img'"
    );
    let v = lvm.parse_volname("vm-100-disk-1").unwrap();
    assert_eq!((v.vmid, v.format.as_str()), (Some(100), "raw"));
    assert_eq!(
        lvm.parse_volname("import/a.raw").unwrap_err().to_string(),
        "lvm name 'import/a.raw' contains illegal characters"
    );
    assert_eq!(
        lvm.parse_volname("snap_vm-100-disk-0_s1")
            .unwrap_err()
            .to_string(),
        "unable to parse lvm volume name 'snap_vm-100-disk-0_s1'"
    );
}

#[test]
fn alloc_takes_the_first_free_disk_number_and_free_removes() {
    let (_tmp, local, lvm) = storages();
    let quiet = |_: &str| {};
    assert_eq!(
        local.alloc_image(101, "raw", 1 << 20, &quiet).unwrap(),
        "local:101/vm-101-disk-0.raw"
    );
    assert_eq!(
        local.alloc_image(101, "qcow2", 1 << 20, &quiet).unwrap(),
        "local:101/vm-101-disk-1.qcow2"
    );
    assert_eq!(
        lvm.alloc_image(101, "raw", 1 << 20, &quiet).unwrap(),
        "local-lvm:vm-101-disk-0"
    );
    assert_eq!(
        lvm.alloc_image(101, "qcow2", 1 << 20, &quiet)
            .unwrap_err()
            .to_string(),
        "unsupported format 'qcow2'"
    );
    let listed: Vec<String> = local
        .list_images(Some(101))
        .unwrap()
        .into_iter()
        .map(|v| v.volid)
        .collect();
    assert_eq!(
        listed,
        [
            "local:101/vm-101-disk-0.raw",
            "local:101/vm-101-disk-1.qcow2"
        ]
    );
    let v = local.parse_volid("local:101/vm-101-disk-0.raw").unwrap();
    local.free(&v).unwrap();
    assert_eq!(
        local.alloc_image(101, "vmdk", 1 << 20, &quiet).unwrap(),
        "local:101/vm-101-disk-0.vmdk"
    );
    let info = local
        .size_info(&local.parse_volid("local:101/vm-101-disk-1.qcow2").unwrap())
        .unwrap();
    assert_eq!(info.size, 1 << 20);
}

#[test]
fn linked_clone_names_parse_as_pve_does() {
    let (_tmp, local, lvm) = storages();
    let v = local
        .parse_volname("900/base-900-disk-0.qcow2/101/vm-101-disk-0.qcow2")
        .unwrap();
    assert_eq!(
        (v.vmid, v.name.as_str(), v.is_base),
        (Some(101), "vm-101-disk-0.qcow2", false)
    );
    assert_eq!(v.base, Some((900, "base-900-disk-0.qcow2".to_string())));
    let v = local.parse_volname("900/base-900-disk-0.qcow2").unwrap();
    assert!(v.is_base && v.base.is_none());
    assert_eq!(
        local
            .parse_volname("900/base-900.txt/101/vm-101-disk-0.qcow2")
            .unwrap_err()
            .to_string(),
        "unable to parse volume filename 'base-900.txt'"
    );
    let v = lvm.parse_volname("base-901-disk-0").unwrap();
    assert!(v.is_base && v.vmid == Some(901));
    // LvmThinPlugin keeps no base in a thin clone's name: the ZFS-style form is refused
    assert_eq!(
        lvm.parse_volname("base-901-disk-0/vm-102-disk-0")
            .unwrap_err()
            .to_string(),
        "lvm name 'base-901-disk-0/vm-102-disk-0' contains illegal characters"
    );
}

#[test]
fn dir_linked_clone_is_a_qcow2_overlay_listed_with_its_base() {
    let (_tmp, local, _lvm) = storages();
    let quiet = |_: &str| {};
    let volid = local.alloc_image(900, "qcow2", 4 << 20, &quiet).unwrap();
    let base = local
        .create_base(&local.parse_volid(&volid).unwrap())
        .unwrap();
    assert_eq!(base, "local:900/base-900-disk-0.qcow2");
    let base = local.parse_volid(&base).unwrap();
    assert_eq!(
        local.clone_image(&base, 101, &quiet).unwrap(),
        "local:900/base-900-disk-0.qcow2/101/vm-101-disk-0.qcow2"
    );
    let listed = local.list_images(None).unwrap();
    let clone = listed.iter().find(|v| v.vmid == Some(101)).unwrap();
    assert_eq!(
        clone.volid,
        "local:900/base-900-disk-0.qcow2/101/vm-101-disk-0.qcow2"
    );
    assert_eq!(
        clone.parent.as_deref(),
        Some("../900/base-900-disk-0.qcow2")
    );
    assert_eq!(clone.size, 4 << 20);
    assert_eq!(
        local.free(&base).unwrap_err().to_string(),
        "base volume '900/base-900-disk-0.qcow2' is still in use by linked clones"
    );
    let clone = local.parse_volid(&clone.volid).unwrap();
    local.free(&clone).unwrap();
    local.free(&base).unwrap();
    assert!(local.list_images(None).unwrap().is_empty());
}

#[test]
fn lvm_volumes_are_active_base_and_snapshots_are_not() {
    let (tmp, _local, lvm) = storages();
    let quiet = |_: &str| {};
    let volid = lvm.alloc_image(901, "raw", 5 << 20, &quiet).unwrap();
    let vol = lvm.parse_volid(&volid).unwrap();
    assert_eq!(
        lvm.path(&vol),
        tmp.path()
            .canonicalize()
            .unwrap()
            .join("dev/pve/vm-901-disk-0")
    );
    assert!(lvm.lv_active("vm-901-disk-0"));
    assert_eq!(
        std::fs::metadata(lvm.path(&vol)).unwrap().len(),
        8 << 20,
        "4 MiB extents"
    );
    let base = lvm.parse_volid(&lvm.create_base(&vol).unwrap()).unwrap();
    assert_eq!(base.volid(), "local-lvm:base-901-disk-0");
    assert!(!lvm.lv_active("base-901-disk-0") && !lvm.lv_active("vm-901-disk-0"));
    let clone = lvm.clone_image(&base, 102, &quiet).unwrap();
    assert_eq!(clone, "local-lvm:vm-102-disk-0");
    let clone = lvm.parse_volid(&clone).unwrap();
    lvm.snapshot(&clone, "s1", &quiet).unwrap();
    let lvs = lvm.lvs().unwrap();
    let attrs: Vec<(&str, String, Option<&str>)> = lvs
        .iter()
        .map(|lv| (lv.name.as_str(), lv.attr(), lv.origin.as_deref()))
        .collect();
    assert_eq!(
        attrs,
        [
            ("base-901-disk-0", "Vri---tz-k".to_string(), None),
            (
                "snap_vm-102-disk-0_s1",
                "Vri---tz-k".to_string(),
                Some("vm-102-disk-0")
            ),
            ("vm-102-disk-0", "Vwi-a-tz--".to_string(), None),
        ]
    );
    // LVM-thin lets a used base image go: the clone is a full thin snapshot
    lvm.free(&base).unwrap();
    lvm.free(&clone).unwrap();
    assert!(lvm.lvs().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(lvm.dev_dir()).unwrap().count(), 0);
}
