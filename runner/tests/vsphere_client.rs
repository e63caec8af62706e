//! The vSphere client against the e2e world's vcsim (govmomi's simulator): sessions, TLS,
//! inventory, vm_info, datastore transfers of real VMDKs, snapshots, NFC export and import.
//! Every object a test creates has a unique name and is removed by a guard.
//!
//! Run with `VRG_WORLD=<world dir>` when the world is not `e2e/.world` of this checkout; without
//! a world the tests fail.

mod vsphere_world;

use runner::endpoint::Guard;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner::Error;
use runner::provider::vsphere::{
    Client, ConfigSpec, ControllerKind, Datacenter, DiskFile, Firmware, ImportParams, MoRef,
    NicBacking, PowerState, TlsOptions,
};
use sha1::{Digest as _, Sha1};
use vsphere_world::{DATASTORE, DsGuard, VmGuard, World, create_vm, make_vmdks, unique};

const MIB: usize = 1 << 20;

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

async fn body_of(response: reqwest::Response) -> Vec<u8> {
    response.bytes().await.expect("reading the body").to_vec()
}

/// Makes a datastore directory for a test's files; deleted (with its files) on drop.
async fn test_dir(client: &Arc<Client>, what: &str) -> (Datacenter, DsGuard) {
    let dc = client.datacenter(None).await.unwrap();
    let dir = unique(what);
    client.ds_mkdir(&dc, DATASTORE, &dir, true).await.unwrap();
    let guard = DsGuard {
        client: client.clone(),
        dc: dc.clone(),
        ds: DATASTORE.into(),
        path: dir,
    };
    (dc, guard)
}

async fn put_file(client: &Client, dc: &Datacenter, path: &str, bytes: Vec<u8>) {
    let len = bytes.len() as u64;
    client
        .ds_put(dc, DATASTORE, path, reqwest::Body::from(bytes), len)
        .await
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn login_logout_and_calls_after_logout_fail_with_auth() {
    let world = World::load();
    let client = world.client().await;
    let vm = client.find_vm("DC0_H0_VM0").await.unwrap();
    assert_eq!(vm.kind, "VirtualMachine");

    client.logout().await.unwrap();
    let e = client.find_vm("DC0_H0_VM0").await.unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains("NotAuthenticated"), "{e}");
    assert!(!e.is_retryable());
    // idempotent
    client.logout().await.unwrap();

    // and a new login on the same client works again
    client.login(world.user(), world.password()).await.unwrap();
    assert_eq!(client.find_vm("DC0_H0_VM0").await.unwrap(), vm);
    client.logout().await.unwrap();
}

#[tokio::test]
async fn wrong_password_is_refused_without_echoing_it() {
    let world = World::load();
    let client = world.connect().await;
    let wrong = format!("{}-{}", world.password(), unique("wrong"));
    let e = client.login(world.user(), &wrong).await.unwrap_err();
    let Error::Auth { system, detail } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(system, &format!("vSphere {}", world.url()));
    assert!(detail.contains("InvalidLogin"), "{detail}");
    assert!(!e.to_string().contains(&wrong), "{e}");
    assert!(!e.to_string().contains(world.password()), "{e}");
    assert!(!format!("{e:?}").contains(world.password()));
    assert!(!e.is_retryable());
    // nothing was logged in
    let e = client.find_vm("DC0_H0_VM0").await.unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "{e:?}");
}

#[tokio::test]
async fn tls_is_verified_against_the_ca_or_skipped_when_asked() {
    let world = World::load();
    let e = Client::connect(world.url(), TlsOptions::default(), Guard::new(true))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert!(e.to_string().contains("TLS certificate not trusted"), "{e}");
    assert!(!e.is_retryable());

    let verified = Client::connect(world.url(), world.tls(), Guard::new(true))
        .await
        .unwrap();
    assert_eq!(verified.service_content().api_type, "VirtualCenter");
    let insecure = TlsOptions {
        insecure_skip_verify: true,
        ca_pem: None,
    };
    let skipped = Client::connect(world.url(), insecure, Guard::new(true))
        .await
        .unwrap();
    skipped.login(world.user(), world.password()).await.unwrap();
    skipped.logout().await.unwrap();

    // the /sdk path is implied
    let base = world.url().trim_end_matches("/sdk");
    let implied = Client::connect(base, world.tls(), Guard::new(true))
        .await
        .unwrap();
    assert_eq!(implied.sdk_url().as_str(), world.url());

    let bad_ca = TlsOptions {
        insecure_skip_verify: false,
        ca_pem: Some("not a certificate".into()),
    };
    assert!(matches!(
        Client::connect(world.url(), bad_ca, Guard::new(true))
            .await
            .unwrap_err(),
        Error::Invalid(_)
    ));
}

#[tokio::test]
async fn finds_vms_by_name_and_inventory_path() {
    let world = World::load();
    let client = world.client().await;
    let by_name = client.find_vm("DC0_H0_VM0").await.unwrap();
    let by_path = client.find_vm_by_path("DC0/vm/DC0_H0_VM0").await.unwrap();
    assert_eq!(by_name, by_path);
    assert_eq!(client.name_of(&by_name).await.unwrap(), "DC0_H0_VM0");

    let missing = unique("missing");
    let e = client.find_vm(&missing).await.unwrap_err();
    let Error::NotFound { what, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(what, &format!("VM {missing:?}"));

    let path = format!("DC0/vm/{missing}");
    let e = client.find_vm_by_path(&path).await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what, .. } if what.contains(&path)),
        "{e:?}"
    );

    // a path that names something else than a VM
    let e = client.find_vm_by_path("DC0/vm").await.unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("Folder:")),
        "{e:?}"
    );

    // an object that does not exist
    let e = client
        .vm_info(&MoRef::new("VirtualMachine", "vm-999999"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what, .. } if what.ends_with("object VirtualMachine:vm-999999")),
        "{e:?}"
    );
    client.logout().await.unwrap();
}

#[tokio::test]
async fn listings_follow_continuation_tokens() {
    let world = World::load();
    let paged = world.connect().await.with_page_size(1);
    paged.login(world.user(), world.password()).await.unwrap();
    let client = world.client().await;
    let root = client.service_content().root_folder.clone();
    let names = |objects: Vec<runner::provider::vsphere::ObjectContent>| {
        let mut n: Vec<(MoRef, String)> = objects
            .into_iter()
            .map(|o| (o.obj.clone(), o.text("name").unwrap().to_string()))
            .collect();
        n.sort();
        n
    };
    let one_page = names(
        client
            .list(&root, "VirtualMachine", &["name"])
            .await
            .unwrap(),
    );
    let many_pages = names(
        paged
            .list(&root, "VirtualMachine", &["name"])
            .await
            .unwrap(),
    );
    assert!(one_page.len() >= 4, "{one_page:?}");
    assert!(one_page.iter().any(|(_, n)| n == "DC0_H0_VM0"));
    // other tests may create VMs meanwhile: compare the default inventory's VMs only
    let defaults = |v: &[(MoRef, String)]| -> Vec<(MoRef, String)> {
        v.iter()
            .filter(|(_, n)| n.starts_with("DC0_"))
            .cloned()
            .collect()
    };
    assert_eq!(defaults(&many_pages), defaults(&one_page));
    assert_eq!(
        paged.find_vm("DC0_C0_RP0_VM1").await.unwrap(),
        client.find_vm("DC0_C0_RP0_VM1").await.unwrap()
    );
    paged.logout().await.unwrap();
    client.logout().await.unwrap();
}

#[tokio::test]
async fn inventory_lookups_and_defaults() {
    let world = World::load();
    let client = world.client().await;
    let dc = client.datacenter(None).await.unwrap();
    assert_eq!((dc.name.as_str(), dc.path.as_str()), ("DC0", "DC0"));
    assert_eq!(client.datacenter(Some("DC0")).await.unwrap(), dc);
    assert_eq!(client.find_vm_folder(&dc, "").await.unwrap(), dc.vm_folder);
    assert_eq!(
        client.find_vm_folder(&dc, "DC0/vm").await.unwrap(),
        dc.vm_folder
    );
    let missing = unique("folder");
    let e = client.find_vm_folder(&dc, &missing).await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what, .. } if what == &format!("folder at inventory path \"DC0/vm/{missing}\"")),
        "{e:?}"
    );

    let ds = client.find_datastore(&dc, DATASTORE).await.unwrap();
    let info = client.datastore_info(&ds).await.unwrap();
    assert_eq!(info.name, DATASTORE);
    assert_eq!(info.kind, "OTHER");
    assert!(info.accessible);
    assert!(
        info.capacity > 0 && info.free_space <= info.capacity,
        "{info:?}"
    );
    assert!(
        info.url.starts_with(world.var("VRG_VCSIM_DIR")),
        "{} is not under vcsim's TMPDIR",
        info.url
    );

    let net = client.find_network(&dc, "VM Network").await.unwrap();
    assert_eq!(
        (net.moref.kind.as_str(), net.portgroup.as_ref()),
        ("Network", None)
    );
    let pg = client.find_network(&dc, "DC0_DVPG0").await.unwrap();
    assert_eq!(pg.moref.kind, "DistributedVirtualPortgroup");
    let (key, switch) = pg.portgroup.clone().unwrap();
    assert_eq!(key, pg.moref.value);
    assert!(!switch.is_empty());

    let cluster = client.find_cluster(&dc, "DC0_C0").await.unwrap();
    let pool = client.root_resource_pool(&cluster).await.unwrap();
    assert_eq!(pool.kind, "ResourcePool");
    assert_eq!(client.name_of(&pool).await.unwrap(), "Resources");
    let hosts = client.hosts(&cluster).await.unwrap();
    assert_eq!(hosts.len(), 3);
    let host = client.find_host(&dc, "DC0_H0").await.unwrap();
    let host_pool = client.root_resource_pool(&host).await.unwrap();
    assert_ne!(host_pool, pool);
    assert_eq!(
        client
            .find_resource_pool(&cluster, "Resources")
            .await
            .unwrap(),
        pool
    );
    // every cluster and host has a root pool called Resources: ambiguous without a scope
    let e = client
        .find_resource_pool(&dc.host_folder, "Resources")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("are named \"Resources\"")),
        "{e:?}"
    );
    let e = client.find_datastore(&dc, "NoSuchDS").await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what, .. } if what == "datastore \"NoSuchDS\""),
        "{e:?}"
    );
    client.logout().await.unwrap();
}

#[tokio::test]
async fn vm_info_of_a_default_vm() {
    let world = World::load();
    let client = world.client().await;
    let vm = client.find_vm("DC0_H0_VM0").await.unwrap();
    let info = client.vm_info(&vm).await.unwrap();
    assert_eq!(info.name, "DC0_H0_VM0");
    assert_eq!(info.moref, vm);
    assert_eq!(info.instance_uuid.len(), 36);
    assert_eq!(
        (info.num_cpu, info.num_cores_per_socket, info.memory_mb),
        (1, 1, 32)
    );
    assert_eq!(info.firmware, Firmware::Bios);
    assert_eq!(info.guest_id, "otherGuest");
    assert_eq!(info.vm_path_name, "[LocalDS_0] DC0_H0_VM0/DC0_H0_VM0.vmx");
    assert!(
        info.extra_config
            .contains(&("govcsim".into(), "TRUE".into()))
    );

    assert_eq!(info.disks.len(), 1);
    let d = &info.disks[0];
    assert_eq!(
        (d.controller_kind, d.bus_number, d.unit_number),
        (ControllerKind::Scsi, 0, 0)
    );
    assert_eq!(d.capacity_bytes, 10 << 30);
    assert_eq!(d.backing.file_name, "[LocalDS_0] DC0_H0_VM0/disk1.vmdk");
    assert_eq!(d.backing.backing_type, "VirtualDiskFlatVer2BackingInfo");
    assert_eq!(d.backing.thin_provisioned, Some(true));
    assert_eq!(d.backing.disk_mode.as_deref(), Some("persistent"));
    assert!(d.parents.is_empty());
    let ds = client
        .find_datastore(&client.datacenter(None).await.unwrap(), DATASTORE)
        .await
        .unwrap();
    assert_eq!(d.backing.datastore.as_ref(), Some(&ds));
    let controller = info
        .controllers
        .iter()
        .find(|c| c.key == d.controller_key)
        .unwrap();
    assert_eq!(controller.device_type, "ParaVirtualSCSIController");

    assert_eq!(info.nics.len(), 1);
    let nic = &info.nics[0];
    assert_eq!(nic.device_type, "VirtualE1000");
    assert_eq!(nic.mac_address.len(), 17);
    assert!(matches!(
        &nic.backing,
        NicBacking::DistributedPortgroup { .. }
    ));
    assert_eq!(nic.network_name(), Some("DC0_DVPG0"));
    client.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn uploaded_vmdks_attach_and_read_back() {
    let world = World::load();
    let client = world.client().await;
    let (dc, dir) = test_dir(&client, "upload").await;
    let vmdks = make_vmdks("base", 2 * MIB);
    let base = format!("{}/base.vmdk", dir.path);
    let flat = format!("{}/base-flat.vmdk", dir.path);
    let stream = format!("{}/base-stream.vmdk", dir.path);
    let stream_bytes = std::fs::read(&vmdks.stream).unwrap();
    put_file(
        &client,
        &dc,
        &base,
        std::fs::read(&vmdks.flat_descriptor).unwrap(),
    )
    .await;
    put_file(&client, &dc, &flat, vmdks.raw.clone()).await;
    put_file(&client, &dc, &stream, stream_bytes.clone()).await;
    assert_eq!(
        client.ds_head(&dc, DATASTORE, &flat).await.unwrap(),
        2 * MIB as u64
    );

    // a new VM with the flat disk: it gets a SCSI controller for it
    let mut spec = ConfigSpec::new();
    let mut file = DiskFile::new(format!("[{DATASTORE}] {base}"));
    file.capacity_bytes = Some(2 * MIB as u64);
    spec.add_disk(&[], file).unwrap();
    let vm = create_vm(&client, &unique("upload-vm"), spec).await;
    let info = client.vm_info(&vm.vm).await.unwrap();
    assert_eq!(info.power_state, PowerState::PoweredOff);
    assert_eq!(info.disks.len(), 1);
    assert_eq!(
        info.disks[0].backing.file_name,
        format!("[{DATASTORE}] {base}")
    );
    assert_eq!(info.disks[0].capacity_bytes, 2 * MIB as u64);
    assert_eq!(info.disks[0].controller_kind, ControllerKind::Scsi);

    // the streamOptimized one added by reconfigure lands on the same controller, next unit
    let mut spec = ConfigSpec::new();
    let mut file = DiskFile::new(format!("[{DATASTORE}] {stream}"));
    file.capacity_bytes = Some(2 * MIB as u64);
    spec.add_disk(&info.controllers, file).unwrap();
    spec.extra_config("vrg.test", "uploaded")
        .annotation("attached by the test");
    client.reconfigure(&vm.vm, &spec).await.unwrap();
    let info = client.vm_info(&vm.vm).await.unwrap();
    assert_eq!(info.disks.len(), 2);
    let (first, second) = (&info.disks[0], &info.disks[1]);
    assert_eq!(second.backing.file_name, format!("[{DATASTORE}] {stream}"));
    assert_eq!(second.controller_key, first.controller_key);
    assert_eq!((first.unit_number, second.unit_number), (0, 1));
    assert!(
        info.extra_config
            .contains(&("vrg.test".into(), "uploaded".into()))
    );
    assert_eq!(info.annotation, "attached by the test");

    // read back byte for byte, whole and from an offset
    let got = body_of(client.ds_get(&dc, DATASTORE, &flat, 0).await.unwrap()).await;
    assert!(
        got == vmdks.raw,
        "flat extent differs ({} bytes read)",
        got.len()
    );
    let tail = body_of(
        client
            .ds_get(&dc, DATASTORE, &flat, MIB as u64 + 3)
            .await
            .unwrap(),
    )
    .await;
    assert!(tail == vmdks.raw[MIB + 3..], "ranged read differs");
    let got = body_of(client.ds_get(&dc, DATASTORE, &stream, 0).await.unwrap()).await;
    assert!(got == stream_bytes, "streamOptimized file differs");

    // a delta-style disk on the flat base: vcsim reads the capacity from the parent descriptor
    let delta = format!("{}/delta.vmdk", dir.path);
    put_file(
        &client,
        &dc,
        &delta,
        std::fs::read(&vmdks.flat_descriptor).unwrap(),
    )
    .await;
    let mut spec = ConfigSpec::new();
    let mut file = DiskFile::new(format!("[{DATASTORE}] {delta}"));
    file.parents = vec![format!("[{DATASTORE}] {base}")];
    spec.add_disk(&info.controllers, file).unwrap();
    client.reconfigure(&vm.vm, &spec).await.unwrap();
    let info = client.vm_info(&vm.vm).await.unwrap();
    assert_eq!(info.disks.len(), 3);
    let chained = &info.disks[2];
    assert_eq!(
        chained.chain(),
        [
            format!("[{DATASTORE}] {delta}"),
            format!("[{DATASTORE}] {base}")
        ]
    );
    assert_eq!(chained.capacity_bytes, 2 * MIB as u64);
    assert_eq!(chained.unit_number, 2);

    // a monolithicFlat pair deleted as one virtual disk
    let other = format!("{}/other.vmdk", dir.path);
    let other_flat = format!("{}/other-flat.vmdk", dir.path);
    put_file(
        &client,
        &dc,
        &other,
        std::fs::read(&vmdks.flat_descriptor).unwrap(),
    )
    .await;
    put_file(&client, &dc, &other_flat, vec![0; 4096]).await;
    client
        .delete_virtual_disk(&dc, DATASTORE, &other)
        .await
        .unwrap();
    for gone in [&other, &other_flat] {
        let e = client.ds_head(&dc, DATASTORE, gone).await.unwrap_err();
        assert_eq!(e.reason(), "NotFound", "{gone}: {e}");
    }

    let missing = format!("{}/none.vmdk", dir.path);
    let e = client.ds_head(&dc, DATASTORE, &missing).await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what, .. } if what == &format!("datastore file [{DATASTORE}] {missing}")),
        "{e:?}"
    );
    drop(vm);
    drop(dir);
    client.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_are_created_read_and_removed() {
    let world = World::load();
    let client = world.client().await;
    let (dc, dir) = test_dir(&client, "snap").await;
    let vmdks = make_vmdks("snap", MIB);
    let path = format!("{}/snap-stream.vmdk", dir.path);
    put_file(&client, &dc, &path, std::fs::read(&vmdks.stream).unwrap()).await;
    let mut spec = ConfigSpec::new();
    let mut file = DiskFile::new(format!("[{DATASTORE}] {path}"));
    file.capacity_bytes = Some(MIB as u64);
    spec.add_disk(&[], file).unwrap();
    let vm = create_vm(&client, &unique("snap-vm"), spec).await;
    let before = client.vm_info(&vm.vm).await.unwrap();
    assert!(before.snapshots.is_empty() && before.current_snapshot.is_none());

    let snap = client
        .create_snapshot(&vm.vm, "vrg-migration", "taken by the test", false, false)
        .await
        .unwrap();
    assert_eq!(snap.kind, "VirtualMachineSnapshot");
    let child = client
        .create_snapshot(&vm.vm, "child", "", false, false)
        .await
        .unwrap();
    let with = client.vm_info(&vm.vm).await.unwrap();
    assert_eq!(with.current_snapshot.as_ref(), Some(&child));
    assert_eq!(with.snapshots.len(), 1);
    assert_eq!(with.snapshots[0].name, "vrg-migration");
    assert_eq!(with.snapshots[0].description, "taken by the test");
    assert_eq!(with.snapshots[0].snapshot, snap);
    assert_eq!(with.snapshots[0].children[0].snapshot, child);
    assert_eq!(with.snapshot_named("child").unwrap().snapshot, child);

    let s = client.snapshot_info(&snap).await.unwrap();
    assert_eq!(s.vm, vm.vm);
    assert_eq!(s.disks, before.disks);

    client.remove_snapshot(&child, false, true).await.unwrap();
    client.remove_snapshot(&snap, true, true).await.unwrap();
    let after = client.vm_info(&vm.vm).await.unwrap();
    assert!(after.snapshots.is_empty(), "{:?}", after.snapshots);
    assert_eq!(after.current_snapshot, None);
    assert_eq!(after.disks, before.disks);
    let e = client.snapshot_info(&snap).await.unwrap_err();
    assert_eq!(e.reason(), "NotFound", "{e}");
    drop(vm);
    drop(dir);
    client.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn export_snapshot_streams_the_attached_disk() {
    let world = World::load();
    let client = world.client().await;
    let (dc, dir) = test_dir(&client, "export").await;
    let vmdks = make_vmdks("export", MIB);
    let path = format!("{}/export-stream.vmdk", dir.path);
    let stream_bytes = std::fs::read(&vmdks.stream).unwrap();
    put_file(&client, &dc, &path, stream_bytes.clone()).await;
    let mut spec = ConfigSpec::new();
    let mut file = DiskFile::new(format!("[{DATASTORE}] {path}"));
    file.capacity_bytes = Some(MIB as u64);
    spec.add_disk(&[], file).unwrap();
    let vm = create_vm(&client, &unique("export-vm"), spec).await;
    let snap = client
        .create_snapshot(&vm.vm, "export", "", false, false)
        .await
        .unwrap();

    let lease = client.export_snapshot(&snap).await.unwrap();
    assert_eq!(lease.kind, "HttpNfcLease");
    let info = client.lease_wait_ready(&lease, deadline()).await.unwrap();
    assert_eq!(info.entity, vm.vm);
    assert!(info.lease_timeout > 0);
    let disks: Vec<_> = info.device_urls.iter().filter(|d| d.disk).collect();
    assert_eq!(disks.len(), 1, "{:?}", info.device_urls);
    assert_eq!(disks[0].target_id, "export-stream.vmdk");
    // the lease names the address vcsim listens on, the world's gateway
    let origin = world.url().trim_end_matches("/sdk");
    assert!(disks[0].url.starts_with(origin), "{}", disks[0].url);

    let got = body_of(client.nfc_get(&disks[0].url).await.unwrap()).await;
    assert!(
        got == stream_bytes,
        "exported bytes differ ({} read)",
        got.len()
    );
    client.lease_progress(&lease, 50).await.unwrap();
    client.lease_progress(&lease, 100).await.unwrap();
    client.lease_complete(&lease).await.unwrap();
    // vcsim forgets a completed lease (vCenter keeps it in state done for a while)
    let e = client
        .lease_wait_ready(&lease, deadline())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "NotFound", "{e}");
    client.remove_snapshot(&snap, false, true).await.unwrap();
    drop(vm);
    drop(dir);
    client.logout().await.unwrap();
}

/// A minimal OVF: `cpus`, `memory_mb`, one SCSI disk of `capacity_mib`, one vmxnet3 NIC on
/// "VM Network".
fn ovf(name: &str, cpus: u32, memory_mb: u64, capacity_mib: u64) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
 xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
 xmlns:vmw="http://www.vmware.com/schema/ovf">
 <References><File ovf:id="file1" ovf:href="disk-0.vmdk"/></References>
 <DiskSection><Info>Virtual disks</Info>
  <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="{capacity_mib}" ovf:capacityAllocationUnits="byte * 2^20"
   ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
 </DiskSection>
 <NetworkSection><Info>Networks</Info><Network ovf:name="VM Network"><Description>VM Network</Description></Network></NetworkSection>
 <VirtualSystem ovf:id="{name}">
  <Info>A migrated VM</Info><Name>{name}</Name>
  <OperatingSystemSection ovf:id="1" vmw:osType="otherGuest64"><Info>OS</Info></OperatingSystemSection>
  <VirtualHardwareSection><Info>Virtual hardware</Info>
   <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID>
    <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier><vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType></System>
   <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
    <rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity></Item>
   <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>{memory_mb} MB of memory</rasd:ElementName>
    <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>{memory_mb}</rasd:VirtualQuantity></Item>
   <Item><rasd:ElementName>SCSI Controller 0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID>
    <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
   <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>Hard disk 1</rasd:ElementName>
    <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent>
    <rasd:ResourceType>17</rasd:ResourceType></Item>
   <Item><rasd:AddressOnParent>7</rasd:AddressOnParent><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
    <rasd:Connection>VM Network</rasd:Connection><rasd:ElementName>Network adapter 1</rasd:ElementName>
    <rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
  </VirtualHardwareSection>
 </VirtualSystem>
</Envelope>"#
    )
}

/// The cluster's root pool, the datastore and "VM Network" of the default datacenter.
async fn import_targets(client: &Client) -> (Datacenter, MoRef, MoRef, MoRef) {
    let dc = client.datacenter(None).await.unwrap();
    let cluster = client.find_cluster(&dc, "DC0_C0").await.unwrap();
    let pool = client.root_resource_pool(&cluster).await.unwrap();
    let ds = client.find_datastore(&dc, DATASTORE).await.unwrap();
    let net = client.find_network(&dc, "VM Network").await.unwrap();
    (dc, pool, ds, net.moref)
}

#[tokio::test(flavor = "multi_thread")]
async fn import_vapp_takes_a_streamed_disk() {
    let world = World::load();
    let client = world.client().await;
    let (dc, pool, ds, net) = import_targets(&client).await;
    let name = unique("import");
    let params = ImportParams {
        entity_name: name.clone(),
        network_mapping: vec![("VM Network".into(), net.clone())],
        disk_provisioning: Some("thin".into()),
    };
    let spec = client
        .create_import_spec(&ovf(&name, 2, 1024, 4), &pool, &ds, &params)
        .await
        .unwrap();
    assert_eq!(spec.spec_type, "VirtualMachineImportSpec");
    assert_eq!(spec.file_items.len(), 1);
    assert_eq!(spec.file_items[0].device_id, format!("/{name}/disk:0"));
    assert_eq!(spec.file_items[0].path, "disk-0.vmdk");
    let spec = spec
        .with_config(
            Some("migrated by virtrigaud"),
            &[("vrg.migration", "default/test")],
            Some(Firmware::Efi),
        )
        .unwrap();

    let lease = client
        .import_vapp(&pool, &spec, Some(&dc.vm_folder), None)
        .await
        .unwrap();
    let info = client.lease_wait_ready(&lease, deadline()).await.unwrap();
    let vm = VmGuard {
        client: client.clone(),
        vm: info.entity.clone(),
    };
    let disks: Vec<_> = info.device_urls.iter().filter(|d| d.disk).collect();
    assert_eq!(disks.len(), 1, "{:?}", info.device_urls);
    assert_eq!(disks[0].import_key, spec.file_items[0].device_id);

    let vmdks = make_vmdks("import", 4 * MIB);
    let bytes = std::fs::read(&vmdks.stream).unwrap();
    let sha1 = hex::encode(Sha1::digest(&bytes));
    let len = bytes.len() as u64;
    client
        .nfc_post(&disks[0].url, reqwest::Body::from(bytes), len)
        .await
        .unwrap();
    client.lease_progress(&lease, 100).await.unwrap();
    let manifest = client.lease_manifest(&lease).await.unwrap();
    assert_eq!(manifest.len(), 1, "{manifest:?}");
    assert_eq!(manifest[0].key, disks[0].key);
    assert_eq!(manifest[0].sha1, sha1);
    assert_eq!(manifest[0].size, len);
    client.lease_complete(&lease).await.unwrap();

    let vm_info = client.vm_info(&vm.vm).await.unwrap();
    assert_eq!(vm_info.name, name);
    assert_eq!((vm_info.num_cpu, vm_info.memory_mb), (2, 1024));
    assert_eq!(vm_info.guest_id, "otherGuest64");
    assert_eq!(vm_info.firmware, Firmware::Efi);
    assert_eq!(vm_info.annotation, "migrated by virtrigaud");
    assert!(
        vm_info
            .extra_config
            .contains(&("vrg.migration".into(), "default/test".into()))
    );
    assert_eq!(vm_info.disks.len(), 1);
    assert_eq!(vm_info.disks[0].capacity_bytes, 4 * MIB as u64);
    assert_eq!(vm_info.disks[0].controller_kind, ControllerKind::Scsi);
    assert_eq!(
        vm_info.disks[0].backing.file_name,
        format!("[{DATASTORE}] {name}/disk-0.vmdk")
    );
    assert_eq!(vm_info.nics.len(), 1);
    assert_eq!(vm_info.nics[0].device_type, "VirtualVmxnet3");
    assert_eq!(vm_info.nics[0].network_name(), Some("VM Network"));
    assert!(
        matches!(&vm_info.nics[0].backing, NicBacking::Network { network: Some(n), .. } if *n == net)
    );
    assert_eq!(client.find_vm(&name).await.unwrap(), vm.vm);
    drop(vm);
    let e = client.find_vm(&name).await.unwrap_err();
    assert_eq!(e.reason(), "NotFound", "{e}");
    client.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn aborted_import_ends_the_lease() {
    let world = World::load();
    let client = world.client().await;
    let (_, pool, ds, net) = import_targets(&client).await;
    let name = unique("abort");
    let params = ImportParams {
        entity_name: name.clone(),
        network_mapping: vec![("VM Network".into(), net)],
        disk_provisioning: None,
    };
    let spec = client
        .create_import_spec(&ovf(&name, 1, 128, 1), &pool, &ds, &params)
        .await
        .unwrap();
    let lease = client.import_vapp(&pool, &spec, None, None).await.unwrap();
    let info = client.lease_wait_ready(&lease, deadline()).await.unwrap();
    let vm = VmGuard {
        client: client.clone(),
        vm: info.entity.clone(),
    };
    client
        .lease_abort(&lease, "the test aborts this import")
        .await
        .unwrap();
    let e = client
        .lease_wait_ready(&lease, deadline())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "NotFound", "{e}");
    // vcsim keeps the VM of an aborted import (vCenter removes it): the caller must destroy it
    assert_eq!(client.find_vm(&name).await.unwrap(), vm.vm);
    drop(vm);
    assert_eq!(
        client.find_vm(&name).await.unwrap_err().reason(),
        "NotFound"
    );
    client.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_import_puts_the_lease_in_error() {
    let world = World::load();
    let client = world.client().await;
    let (_, pool, ds, net) = import_targets(&client).await;
    // an import spec without a VM name: the import task's CreateVM fails
    let params = ImportParams {
        entity_name: String::new(),
        network_mapping: vec![("VM Network".into(), net)],
        disk_provisioning: None,
    };
    let spec = client
        .create_import_spec(&ovf(&unique("noname"), 1, 128, 1), &pool, &ds, &params)
        .await
        .unwrap();
    let lease = client.import_vapp(&pool, &spec, None, None).await.unwrap();
    let e = client
        .lease_wait_ready(&lease, deadline())
        .await
        .unwrap_err();
    let Error::Invalid(m) = &e else {
        panic!("{e:?}")
    };
    assert!(m.contains(&format!("lease {}", lease.value)), "{m}");
    assert!(
        m.contains("InvalidVmConfig") && m.contains("configSpec.name"),
        "{m}"
    );
    client.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn import_spec_errors_and_task_faults_are_mapped() {
    let world = World::load();
    let client = world.client().await;
    let (_, pool, ds, _) = import_targets(&client).await;
    let params = ImportParams {
        entity_name: unique("bad-ovf"),
        ..ImportParams::default()
    };
    let e = client
        .create_import_spec("<not-an-ovf", &pool, &ds, &params)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("InvalidArgument") && m.contains("ovfDescriptor")),
        "{e:?}"
    );

    // errors in the result (not a SOAP fault) are listed in one Invalid error
    let params = ImportParams {
        entity_name: unique("bad-provisioning"),
        network_mapping: Vec::new(),
        disk_provisioning: Some("noSuchProvisioning".into()),
    };
    let e = client
        .create_import_spec(&ovf(&params.entity_name, 1, 128, 1), &pool, &ds, &params)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("the OVF descriptor was refused: OvfUnsupportedDiskProvisioning")
            && m.contains("noSuchProvisioning")),
        "{e:?}"
    );

    let name = unique("faults");
    let mut spec = ConfigSpec::new();
    spec.cpus(1, None).memory_mb(64);
    let vm = create_vm(&client, &name, spec).await;
    client.power_on(&vm.vm).await.unwrap();
    let e = client.power_on(&vm.vm).await.unwrap_err();
    let Error::Invalid(m) = &e else {
        panic!("{e:?}")
    };
    assert!(m.contains("InvalidPowerState"), "{m}");
    // names the task's target (vCenter gives its name; vcsim's entityName is the moref value)
    assert!(
        m.contains(&format!("(VirtualMachine.powerOn) on {}", vm.vm)),
        "{m}"
    );
    client.power_off(&vm.vm).await.unwrap();
    assert_eq!(
        client.vm_info(&vm.vm).await.unwrap().power_state,
        PowerState::PoweredOff
    );

    // Not tested here: vcsim allows duplicate VM names (vCenter: DuplicateName), and a
    // CreateVM_Task on an unknown datastore panics vcsim v0.56.0 (the whole simulator exits).

    let e = client.export_vm(&vm.vm).await.unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("MethodNotFound") && m.contains("ExportSnapshot")),
        "{e:?}"
    );
    drop(vm);
    client.logout().await.unwrap();
}
