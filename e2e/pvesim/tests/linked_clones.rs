//! Templates and linked clones of the fixture, and what a migration reads of them: `pvesm export`
//! of a dir linked clone (flattened with `raw+size`, the overlay itself with
//! `qcow2+size --with-snapshots 1`), a thin clone and a thin snapshot read over `lvchange`/`lvs`,
//! and the API's listing, import, snapshot and delete rules for base images.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{ADMIN, Sim, call, run, sim, wait_task};
use http::StatusCode;
use pvesim::datadir::DataDir;
use pvesim::fixture::{self, DiskSpec};

const SIZE: u64 = 32 << 20;
const WEB_CLONE: &str = "local:900/base-900-disk-0.qcow2/101/vm-101-disk-0.qcow2";
const BASE: &str = "local:900/base-900-disk-0.qcow2";

fn tool(bin: &str, data: &DataDir, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("PVESIM_DATA_DIR", data.root())
        .output()
        .expect("tool runs")
}

fn pvesm(data: &DataDir, args: &[&str]) -> Output {
    tool(env!("CARGO_BIN_EXE_pvesm"), data, args)
}

fn lvs(data: &DataDir, args: &[&str]) -> Output {
    tool(env!("CARGO_BIN_EXE_lvs"), data, args)
}

fn lvchange(data: &DataDir, args: &[&str]) -> Output {
    tool(env!("CARGO_BIN_EXE_lvchange"), data, args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// The stream of a successful export, split into the size header and the data.
fn export(data: &DataDir, args: &[&str]) -> (u64, Vec<u8>) {
    let out = pvesm(data, &[&["export"], args, &["-"]].concat());
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    let (header, bytes) = out.stdout.split_at(8);
    (
        u64::from_le_bytes(header.try_into().unwrap()),
        bytes.to_vec(),
    )
}

fn spec(vmid: u32) -> DiskSpec {
    fixture::vm(SIZE, vmid).unwrap().disks.remove(0)
}

fn with_fixture() -> Sim {
    let sim = sim();
    let created = fixture::create_all(&sim.data, SIZE, false, false).unwrap();
    let ids: Vec<u32> = created.iter().map(|(vm, _)| vm.vmid).collect();
    assert_eq!(ids, [100, 900, 101, 901, 102]);
    assert!(created.iter().all(|(_, created)| *created));
    sim
}

fn path_of(data: &DataDir, volid: &str) -> PathBuf {
    let out = pvesm(data, &["path", volid]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    PathBuf::from(text(&out.stdout).trim_end())
}

#[test]
fn a_dir_linked_clone_exports_flattened_or_as_its_overlay() {
    let sim = with_fixture();
    let data = &sim.data;
    let (web, base) = (spec(101), spec(900));
    assert!(fixture::expected_bytes(&web) != fixture::expected_bytes(&base));
    let (size, bytes) = export(data, &[WEB_CLONE, "raw+size"]);
    assert_eq!(size, SIZE);
    assert!(
        bytes == fixture::expected_bytes(&web),
        "raw+size is the clone's guest view"
    );
    let (_, bytes) = export(data, &[BASE, "raw+size"]);
    assert!(bytes == fixture::expected_bytes(&base));

    let overlay = path_of(data, WEB_CLONE);
    assert_eq!(
        overlay,
        data.root()
            .join("storage/local/images/101/vm-101-disk-0.qcow2")
    );
    let (size, bytes) = export(data, &[WEB_CLONE, "qcow2+size", "--with-snapshots", "1"]);
    assert_eq!(size, SIZE, "the header holds the virtual size");
    assert!(
        bytes == std::fs::read(&overlay).unwrap(),
        "the overlay file byte for byte"
    );
    let streamed = sim.tmp.path().join("overlay.qcow2");
    std::fs::write(&streamed, &bytes).unwrap();
    let info: serde_json::Value = serde_json::from_slice(&run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&streamed)))
    .unwrap();
    assert_eq!(info["backing-filename"], "../900/base-900-disk-0.qcow2");
    assert_eq!(info["backing-filename-format"], "qcow2");

    let out = pvesm(data, &["export", WEB_CLONE, "qcow2+size", "-"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(out.stdout.is_empty());
    assert_eq!(
        text(&out.stderr),
        "volume export format qcow2+size not available for PVE::Storage::DirPlugin\n"
    );
}

#[tokio::test]
async fn a_snapshot_of_a_linked_clone_is_read_from_the_overlay_and_its_base() {
    let sim = with_fixture();
    let data = &sim.data;
    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu/101/snapshot",
        Some(ADMIN),
        &[("snapname", "migrate")],
    )
    .await;
    assert_eq!(
        wait_task(&sim, answer.data().as_str().unwrap()).await["exitstatus"],
        "OK"
    );
    // the clone changes after the snapshot
    let overlay = path_of(data, WEB_CLONE);
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xee 0 1M"])
        .arg(&overlay));
    // the overlay with its snapshot, and the base, at the places the backing reference names
    let tree = sim.tmp.path().join("copy/images");
    for (volid, file) in [
        (WEB_CLONE, "101/vm-101-disk-0.qcow2"),
        (BASE, "900/base-900-disk-0.qcow2"),
    ] {
        let (_, bytes) = export(data, &[volid, "qcow2+size", "--with-snapshots", "1"]);
        let path = tree.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let state = sim.tmp.path().join("migrate.raw");
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "-l",
            "snapshot.name=migrate",
        ])
        .arg(tree.join("101/vm-101-disk-0.qcow2"))
        .arg(&state));
    assert!(std::fs::read(&state).unwrap() == fixture::expected_bytes(&spec(101)));
    let (_, now) = export(data, &[WEB_CLONE, "raw+size"]);
    assert!(
        now[..1 << 20].iter().all(|b| *b == 0xee),
        "the current state has the later write"
    );
}

fn lv_line(data: &DataDir, lv: &str) -> String {
    let out = lvs(
        data,
        &[
            "--noheadings",
            "--nosuffix",
            "--units",
            "b",
            "-o",
            "lv_path,lv_size",
            lv,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// `lvchange` that succeeds without output.
fn lvchange_ok(data: &DataDir, args: &[&str]) {
    let out = lvchange(data, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        text(&out.stderr)
    );
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        (String::new(), String::new()),
        "{args:?}"
    );
}

#[tokio::test]
async fn a_thin_snapshot_is_read_with_lvchange_lvs_and_cat() {
    let sim = with_fixture();
    let data = &sim.data;
    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu/102/snapshot",
        Some(ADMIN),
        &[("snapname", "migrate")],
    )
    .await;
    assert_eq!(
        wait_task(&sim, answer.data().as_str().unwrap()).await["exitstatus"],
        "OK"
    );
    let clone = path_of(data, "local-lvm:vm-102-disk-0");
    assert_eq!(clone, data.root().join("dev/pve/vm-102-disk-0"));
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0xee 0 1M"])
        .arg(&clone));

    let snap = "pve/snap_vm-102-disk-0_migrate";
    let dev = data.root().join("dev/pve/snap_vm-102-disk-0_migrate");
    assert_eq!(
        lv_line(data, snap),
        format!("  {} 8388608\n", dev.display())
    );
    let not_found = |p: &Path| std::fs::read(p).unwrap_err().kind() == std::io::ErrorKind::NotFound;
    assert!(not_found(&dev), "a snapshot is inactive");
    lvchange_ok(data, &["-ay", snap]);
    assert!(
        not_found(&dev),
        "-ay skips an LV with the activation-skip flag"
    );
    lvchange_ok(data, &["-ay", "-K", snap]);
    assert!(
        std::fs::read(&dev).unwrap() == fixture::expected_bytes(&spec(102)),
        "the state at the snapshot"
    );
    let out = lvs(
        data,
        &["--noheadings", "-o", "lv_name,lv_attr,origin", "pve"],
    );
    let rows = [
        ("base-901-disk-0", "Vri---tz-k", ""),
        ("snap_vm-102-disk-0_migrate", "Vri-a-tz-k", "vm-102-disk-0"),
        ("vm-100-disk-0", "Vwi-a-tz--", ""),
        ("vm-102-disk-0", "Vwi-a-tz--", ""),
    ];
    let expected: String = rows
        .iter()
        .map(|(lv, attr, origin)| format!("{}\n", format!("  {lv:<26} {attr} {origin}").trim_end()))
        .collect();
    assert_eq!(text(&out.stdout), expected);
    lvchange_ok(data, &["-an", snap]);
    assert!(not_found(&dev));

    let (_, now) = export(data, &["local-lvm:vm-102-disk-0", "raw+size"]);
    assert!(now[..1 << 20].iter().all(|b| *b == 0xee));
    let out = pvesm(
        data,
        &[
            "export",
            "local-lvm:vm-102-disk-0",
            "raw+size",
            "-",
            "--snapshot",
            "migrate",
        ],
    );
    assert_eq!(
        text(&out.stderr),
        "cannot export a snapshot in PVE::Storage::LvmThinPlugin\n"
    );

    let answer = call(
        &sim,
        "DELETE",
        "/nodes/pve1/qemu/102/snapshot/migrate",
        Some(ADMIN),
        &[],
    )
    .await;
    assert_eq!(
        wait_task(&sim, answer.data().as_str().unwrap()).await["exitstatus"],
        "OK"
    );
    let out = lvs(data, &[snap]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        text(&out.stderr),
        format!("  Failed to find logical volume \"{snap}\"\n")
    );
}

#[test]
fn a_thin_template_must_be_activated_with_k_before_export() {
    let sim = with_fixture();
    let data = &sim.data;
    let dev = data.root().join("dev/pve/base-901-disk-0");
    let out = pvesm(
        data,
        &["export", "local-lvm:base-901-disk-0", "raw+size", "-"],
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(out.stdout.is_empty());
    assert_eq!(
        text(&out.stderr),
        format!(
            "blockdev: cannot open {0}: No such file or directory\n\
             command '/sbin/blockdev --getsize64 {0}' failed: exit code 1\n",
            dev.display()
        )
    );
    let out = lvchange(data, &["-ay", "-v", "pve/base-901-disk-0"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stderr),
        "  ACTIVATION_SKIP flag set for LV pve/base-901-disk-0, skipping activation.\n"
    );
    lvchange_ok(data, &["-ay", "-K", "pve/base-901-disk-0"]);
    let (size, bytes) = export(data, &["local-lvm:base-901-disk-0", "raw+size"]);
    assert_eq!(size, 8 << 20);
    assert!(bytes == fixture::expected_bytes(&spec(901)));
    // the thin clone reads as its full content: base extents under its own writes
    let (_, bytes) = export(data, &["local-lvm:vm-102-disk-0", "raw+size"]);
    assert!(bytes == fixture::expected_bytes(&spec(102)));
    lvchange_ok(data, &["-an", "pve/base-901-disk-0"]);

    for (args, stderr) in [
        (
            &["-ay", "pve/vm-999-disk-0"][..],
            "  Failed to find logical volume \"pve/vm-999-disk-0\"\n",
        ),
        (
            &["-ay", "other/vm-100-disk-0"][..],
            "  Volume group \"other\" not found\n",
        ),
    ] {
        let out = lvchange(data, args);
        assert_eq!(out.status.code(), Some(5), "{args:?}");
        assert_eq!(text(&out.stderr), stderr, "{args:?}");
    }
    let out = lvs(data, &["other"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        text(&out.stderr),
        "  Volume group \"other\" not found\n  Cannot process volume group other\n"
    );
    let out = lvchange(data, &["pve/vm-100-disk-0"]);
    assert_eq!(out.status.code(), Some(3));
}

#[tokio::test]
async fn the_api_lists_clones_with_their_base_and_guards_used_base_images() {
    let sim = with_fixture();
    let content = call(
        &sim,
        "GET",
        "/nodes/pve1/storage/local/content",
        Some(ADMIN),
        &[("content", "images")],
    )
    .await;
    let volumes = content.data().as_array().unwrap();
    let clone = volumes
        .iter()
        .find(|v| v["volid"] == WEB_CLONE)
        .expect("the clone is listed");
    assert_eq!(clone["parent"], "../900/base-900-disk-0.qcow2");
    assert_eq!(
        (clone["vmid"].as_u64(), clone["format"].as_str()),
        (Some(101), Some("qcow2"))
    );
    let base = volumes
        .iter()
        .find(|v| v["volid"] == BASE)
        .expect("the base is listed");
    assert_eq!(base["vmid"], 900);
    let info = call(
        &sim,
        "GET",
        &format!("/nodes/pve1/storage/local/content/{WEB_CLONE}"),
        Some(ADMIN),
        &[],
    )
    .await;
    assert_eq!(info.status, StatusCode::OK, "{:?}", info.body);
    assert_eq!(info.data()["size"], SIZE);
    assert_eq!(info.data()["format"], "qcow2");
    // clients usually percent-encode the volume ID in the path
    let encoded: String = url::form_urlencoded::byte_serialize(WEB_CLONE.as_bytes()).collect();
    assert!(encoded.contains("%2F"), "{encoded}");
    let again = call(
        &sim,
        "GET",
        &format!("/nodes/pve1/storage/local/content/{encoded}"),
        Some(ADMIN),
        &[],
    )
    .await;
    assert_eq!(again.data(), info.data());
    let lv = call(
        &sim,
        "GET",
        "/nodes/pve1/storage/local-lvm/content/vm-102-disk-0",
        Some(ADMIN),
        &[],
    )
    .await;
    let dev = sim.data.root().join("dev/pve/vm-102-disk-0");
    assert_eq!(lv.data()["path"], dev.display().to_string());
    let config = call(&sim, "GET", "/nodes/pve1/qemu/900/config", Some(ADMIN), &[]).await;
    assert_eq!(config.data()["template"], 1);
    assert_eq!(config.data()["scsi0"], format!("{BASE},size=32M"));

    let task = |answer: common::Answer| {
        let sim = &sim;
        async move { wait_task(sim, answer.data().as_str().unwrap()).await["exitstatus"].clone() }
    };
    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu/900/snapshot",
        Some(ADMIN),
        &[("snapname", "s1")],
    )
    .await;
    assert_eq!(
        task(answer).await,
        "you can't take a snapshot if it's a template"
    );
    let answer = call(&sim, "DELETE", "/nodes/pve1/qemu/900", Some(ADMIN), &[]).await;
    assert_eq!(
        task(answer).await,
        format!("base volume '{BASE}' is still in use by linked cloned")
    );
    let config = call(&sim, "GET", "/nodes/pve1/qemu/900/config", Some(ADMIN), &[]).await;
    assert!(config.data().get("lock").is_none(), "{:?}", config.data());
    let answer = call(
        &sim,
        "DELETE",
        &format!("/nodes/pve1/storage/local/content/{BASE}"),
        Some(ADMIN),
        &[],
    )
    .await;
    assert_eq!(
        task(answer).await,
        "base volume '900/base-900-disk-0.qcow2' is still in use by linked clones"
    );

    // the clone goes, its base stays; then the template can go
    let answer = call(&sim, "DELETE", "/nodes/pve1/qemu/101", Some(ADMIN), &[]).await;
    assert_eq!(task(answer).await, "OK");
    let base_file = sim
        .data
        .root()
        .join("storage/local/images/900/base-900-disk-0.qcow2");
    assert!(base_file.is_file() && !path_of(&sim.data, WEB_CLONE).exists());
    let answer = call(&sim, "DELETE", "/nodes/pve1/qemu/900", Some(ADMIN), &[]).await;
    assert_eq!(task(answer).await, "OK");
    assert!(!base_file.exists());
    // LVM-thin does not track its clones: the template goes and the clone keeps its content
    let answer = call(&sim, "DELETE", "/nodes/pve1/qemu/901", Some(ADMIN), &[]).await;
    assert_eq!(task(answer).await, "OK");
    let (_, bytes) = export(&sim.data, &["local-lvm:vm-102-disk-0", "raw+size"]);
    assert!(bytes == fixture::expected_bytes(&spec(102)));
}

#[tokio::test]
async fn import_from_a_linked_clone_or_a_base_image_copies_the_guest_view() {
    let sim = with_fixture();
    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu",
        Some(ADMIN),
        &[
            ("vmid", "300"),
            ("scsi0", &format!("local-lvm:0,import-from={WEB_CLONE}")),
            (
                "scsi1",
                "local:0,import-from=local-lvm:vm-102-disk-0,format=qcow2",
            ),
            ("scsi2", "local:0,import-from=local-lvm:base-901-disk-0"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let upid = answer.data().as_str().unwrap().to_string();
    let status = wait_task(&sim, &upid).await;
    assert_eq!(
        status["exitstatus"],
        "OK",
        "{:?}",
        common::task_log(&sim, &upid).await
    );
    let log = common::task_log(&sim, &upid).await;
    assert!(
        log.contains(&format!("create full clone of drive scsi0 ({WEB_CLONE})")),
        "{log:?}"
    );

    let config = call(&sim, "GET", "/nodes/pve1/qemu/300/config", Some(ADMIN), &[]).await;
    assert_eq!(config.data()["scsi0"], "local-lvm:vm-300-disk-0,size=32M");
    assert_eq!(
        config.data()["scsi1"],
        "local:300/vm-300-disk-0.qcow2,size=8M"
    );
    assert_eq!(
        config.data()["scsi2"],
        "local:300/vm-300-disk-1.raw,size=8M"
    );
    let (_, bytes) = export(&sim.data, &["local-lvm:vm-300-disk-0", "raw+size"]);
    assert!(
        bytes == fixture::expected_bytes(&spec(101)),
        "the clone flattened"
    );
    let copy = path_of(&sim.data, "local:300/vm-300-disk-0.qcow2");
    let info: serde_json::Value = serde_json::from_slice(&run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&copy)))
    .unwrap();
    assert!(
        info.get("backing-filename").is_none(),
        "a full copy has no backing file"
    );
    let (_, bytes) = export(&sim.data, &["local:300/vm-300-disk-0.qcow2", "raw+size"]);
    assert!(bytes == fixture::expected_bytes(&spec(102)));
    let (_, bytes) = export(&sim.data, &["local:300/vm-300-disk-1.raw", "raw+size"]);
    assert!(
        bytes == fixture::expected_bytes(&spec(901)),
        "an inactive base image is read too"
    );
}
