//! The API in process (tower `oneshot` on the router): authentication, privileges, parameter
//! verification, VM creation with `import-from` (a real converted disk), UPID tasks, snapshots,
//! uploads with checksums, and `/cluster/nextid`.

mod common;

use axum::body::Body;
use common::{ADMIN, READONLY, Sim, call, make_qcow2, run, send, sim, task_log, wait_task};
use http::{Request, StatusCode};
use pvesim::fixture;
use regex::Regex;
use sha2::Digest;

fn upid_re() -> Regex {
    Regex::new(
        r"^UPID:pve1:[0-9A-F]{8}:[0-9A-F]{8,9}:[0-9A-F]{8}:[a-z]+:[^:\s/]*:root@pam![a-z]+:$",
    )
    .unwrap()
}

#[tokio::test]
async fn missing_or_wrong_token_is_401_without_body() {
    let sim = sim();
    let answer = call(&sim, "GET", "/version", None, &[]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.reason.as_deref(), Some("No ticket"));
    assert!(answer.body.is_null());

    let answer = call(
        &sim,
        "GET",
        "/version",
        Some((ADMIN.0, "00000000-0000-0000-0000-000000000000")),
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.reason.as_deref(), Some("Authentication failed!"));
    assert!(answer.body.is_null());

    let answer = call(
        &sim,
        "GET",
        "/version",
        Some(("root@pam!nosuch", ADMIN.1)),
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    let answer = call(&sim, "GET", "/version", Some(ADMIN), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.data()["release"], "9.1");
}

#[tokio::test]
async fn readonly_token_reads_but_gets_403_for_changes() {
    let sim = sim();
    fixture::create_source_vm(&sim.data, 16 << 20, false, false).unwrap();

    let answer = call(&sim, "GET", "/nodes/pve1/qemu", Some(READONLY), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.data()[0]["name"], "database-server");

    let answer = call(&sim, "DELETE", "/nodes/pve1/qemu/100", Some(READONLY), &[]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer.body["message"],
        "Permission check failed (/vms/100, VM.Allocate)\n"
    );
    assert_eq!(
        answer.reason.as_deref(),
        Some("Permission check failed (/vms/100, VM.Allocate)")
    );

    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu/100/snapshot",
        Some(READONLY),
        &[("snapname", "s1")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer.body["message"],
        "Permission check failed (/vms/100, VM.Snapshot)\n"
    );

    // create: PVE checks VM.Allocate inside the method and raises the bare exception
    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu",
        Some(READONLY),
        &[("vmid", "101")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.body["message"], "Permission check failed\n");

    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/storage/local/upload",
        Some(READONLY),
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer.body["message"],
        "Permission check failed (/storage/local, Datastore.AllocateTemplate)\n"
    );
}

#[tokio::test]
async fn nextid_and_parameter_errors() {
    let sim = sim();
    let answer = call(&sim, "GET", "/cluster/nextid", Some(ADMIN), &[]).await;
    assert_eq!(answer.data(), "100");
    fixture::create_source_vm(&sim.data, 16 << 20, false, false).unwrap();
    let answer = call(&sim, "GET", "/cluster/nextid", Some(ADMIN), &[]).await;
    assert_eq!(answer.data(), "101");
    let answer = call(
        &sim,
        "GET",
        "/cluster/nextid",
        Some(ADMIN),
        &[("vmid", "100")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["errors"]["vmid"], "VM 100 already exists");
    assert_eq!(answer.body["message"], "Parameter verification failed.\n");
    assert!(answer.data().is_null());
    let answer = call(
        &sim,
        "GET",
        "/cluster/nextid",
        Some(ADMIN),
        &[("vmid", "99")],
    )
    .await;
    assert_eq!(
        answer.body["errors"]["vmid"],
        "invalid format - value does not look like a valid VM ID\n"
    );
    let answer = call(
        &sim,
        "GET",
        "/cluster/nextid",
        Some(ADMIN),
        &[("vmid", "250")],
    )
    .await;
    assert_eq!(answer.data(), "250");

    let answer = call(
        &sim,
        "GET",
        "/cluster/nextid",
        Some(ADMIN),
        &[("bogus", "1")],
    )
    .await;
    assert_eq!(
        answer.body["errors"]["bogus"],
        "property is not defined in schema and the schema does not allow additional properties"
    );
    let answer = call(&sim, "GET", "/nodes/pve1/nosuch", Some(ADMIN), &[]).await;
    assert_eq!(answer.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(
        answer.body["message"],
        "Method 'GET /nodes/pve1/nosuch' not implemented"
    );
    let answer = call(&sim, "GET", "/nodes/pve2/qemu", Some(ADMIN), &[]).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .starts_with("hostname lookup 'pve2' failed")
    );
}

/// Puts a qcow2 image into `local`'s import directory, as an upload would.
fn stage_import(sim: &Sim, name: &str) -> std::path::PathBuf {
    let path = sim
        .node
        .storage("local")
        .unwrap()
        .root
        .join("import")
        .join(name);
    make_qcow2(&path, "64M");
    path
}

#[tokio::test]
async fn create_with_import_from_converts_real_disks() {
    let sim = sim();
    let src = stage_import(&sim, "web.qcow2");
    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu",
        Some(ADMIN),
        &[
            ("vmid", "200"),
            ("name", "web-01"),
            ("cores", "2"),
            ("memory", "1024"),
            ("scsihw", "virtio-scsi-single"),
            (
                "scsi0",
                "local:0,import-from=local:import/web.qcow2,iothread=1",
            ),
            (
                "scsi1",
                "local-lvm:0,import-from=local:import/web.qcow2,format=qcow2",
            ),
            ("net0", "virtio,bridge=vmbr0"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let upid = answer.data().as_str().unwrap().to_string();
    assert!(upid_re().is_match(&upid), "{upid}");
    assert!(upid.contains(":qmcreate:200:root@pam!virtrigaud:"));

    let status = wait_task(&sim, &upid).await;
    assert_eq!(
        status["exitstatus"],
        "OK",
        "{:?}",
        task_log(&sim, &upid).await
    );
    assert_eq!(status["type"], "qmcreate");
    assert_eq!(status["user"], "root@pam");
    assert_eq!(status["tokenid"], "virtrigaud");
    let log = task_log(&sim, &upid).await;
    assert!(
        log.iter()
            .any(|l| l == "create full clone of drive (local:import/web.qcow2)"),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("transferred ") && l.ends_with("(100.00%)")),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l == "format 'qcow2' is not supported by the target storage 'local-lvm' - using 'raw' instead"));
    assert_eq!(log.last().unwrap(), "TASK OK");

    let config = call(&sim, "GET", "/nodes/pve1/qemu/200/config", Some(ADMIN), &[]).await;
    let config = config.data();
    assert_eq!(
        config["scsi0"],
        "local:200/vm-200-disk-0.qcow2,iothread=1,size=64M"
    );
    assert_eq!(config["scsi1"], "local-lvm:vm-200-disk-0,size=64M");
    assert_eq!(config["cores"], 2);
    assert_eq!(config["boot"], "order=scsi0;net0");
    assert!(
        config["net0"]
            .as_str()
            .unwrap()
            .starts_with("virtio=BC:24:11:")
    );
    assert!(config["digest"].as_str().unwrap().len() == 40);
    assert!(config.get("lock").is_none());

    // the converted disks are real images with the source's guest content
    let local = sim.node.storage("local").unwrap();
    let dst = local.path(&local.parse_volid("local:200/vm-200-disk-0.qcow2").unwrap());
    let info: serde_json::Value =
        serde_json::from_slice(&run(std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&dst)))
        .unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 64 << 20);
    run(std::process::Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "qcow2"])
        .arg(&src)
        .arg(&dst));
    let lvm = sim.node.storage("local-lvm").unwrap();
    let lv = lvm.path(&lvm.parse_volid("local-lvm:vm-200-disk-0").unwrap());
    run(std::process::Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&src)
        .arg(&lv));

    // the new volumes are listed with their sizes and formats
    let content = call(
        &sim,
        "GET",
        "/nodes/pve1/storage/local/content",
        Some(ADMIN),
        &[("vmid", "200")],
    )
    .await;
    assert_eq!(content.data()[0]["volid"], "local:200/vm-200-disk-0.qcow2");
    assert_eq!(content.data()[0]["format"], "qcow2");
    assert_eq!(content.data()[0]["size"], 64 << 20);

    // a second create with the same VMID is refused before any task starts
    let again = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu",
        Some(ADMIN),
        &[("vmid", "200")],
    )
    .await;
    assert_eq!(again.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        again.body["message"],
        "unable to create VM 200 - VM 200 already exists on node 'pve1'\n"
    );

    // destroy removes config and disks
    let answer = call(
        &sim,
        "DELETE",
        "/nodes/pve1/qemu/200",
        Some(ADMIN),
        &[("purge", "1")],
    )
    .await;
    assert_eq!(
        wait_task(&sim, answer.data().as_str().unwrap()).await["exitstatus"],
        "OK"
    );
    assert!(!dst.exists() && !lv.exists());
    let gone = call(&sim, "GET", "/nodes/pve1/qemu/200/config", Some(ADMIN), &[]).await;
    assert_eq!(
        gone.body["message"],
        "Configuration file 'nodes/pve1/qemu-server/200.conf' does not exist\n"
    );
}

#[tokio::test]
async fn create_rejects_what_pve_rejects() {
    let sim = sim();
    stage_import(&sim, "a.qcow2");
    let create = |params: Vec<(&'static str, &'static str)>| {
        let sim = &sim;
        async move { call(sim, "POST", "/nodes/pve1/qemu", Some(ADMIN), &params).await }
    };
    let answer = create(vec![("vmid", "5")]).await;
    assert_eq!(
        answer.body["errors"]["vmid"],
        "invalid format - value does not look like a valid VM ID\n"
    );
    let answer = create(vec![
        ("vmid", "300"),
        ("scsi0", "local:8,import-from=local:import/a.qcow2"),
    ])
    .await;
    assert_eq!(
        answer.body["errors"]["scsi0"],
        "'import-from' requires special syntax - use <storage ID>:0,import-from=<source>"
    );
    let answer = create(vec![("vmid", "300"), ("scsi0", "local:0,bogus=1")]).await;
    assert_eq!(
        answer.body["errors"]["scsi0"],
        "invalid format - invalid key in comma-separated list property: bogus\n"
    );
    let answer = create(vec![
        ("vmid", "300"),
        (
            "scsi0",
            "local:0,import-from=local:100/vm-100-disk-0.qcow2,cache=fast",
        ),
    ])
    .await;
    assert_eq!(
        answer.body["errors"]["scsi0"],
        "invalid format - format error\nscsi0.cache: value 'fast' does not have a value in the enumeration 'none, writethrough, writeback, unsafe, directsync'\n"
    );
    let answer = create(vec![("vmid", "300"), ("name", "bad_name")]).await;
    assert_eq!(
        answer.body["errors"]["name"],
        "invalid format - value does not look like a valid DNS name\n"
    );
    let answer = create(vec![("vmid", "300"), ("ostype", "dos")]).await;
    assert!(
        answer.body["errors"]["ostype"]
            .as_str()
            .unwrap()
            .starts_with("value 'dos' does not have a value in the enumeration")
    );
    let answer = create(vec![
        ("vmid", "300"),
        ("scsi0", "nosuch:0,import-from=local:import/a.qcow2"),
    ])
    .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.body["message"], "storage 'nosuch' does not exist\n");
    let answer = create(vec![
        ("vmid", "300"),
        ("scsi0", "local:0,import-from=/etc/passwd"),
    ])
    .await;
    assert_eq!(
        answer.body["message"],
        "Only root can pass arbitrary filesystem paths.\n"
    );
    let answer = create(vec![
        ("vmid", "300"),
        ("scsi0", "local:0,import-from=local:import/a.txt"),
    ])
    .await;
    assert_eq!(
        answer.body["message"],
        "unable to parse directory volume name 'import/a.txt'\n"
    );
    // a missing import file is only found by the worker, which then removes the half-created VM
    let answer = create(vec![
        ("vmid", "300"),
        ("scsi0", "local:0,import-from=local:import/missing.qcow2"),
    ])
    .await;
    let status = wait_task(&sim, answer.data().as_str().unwrap()).await;
    let exit = status["exitstatus"].as_str().unwrap();
    assert!(exit.starts_with("unable to create VM 300 - cannot import from 'local:import/missing.qcow2' - failed to stat '"), "{exit}");
    assert!(!sim.data.vm_file(300).exists());
}

#[tokio::test]
async fn snapshots_qcow2_internal_and_lvm_thin_but_not_raw_on_dir() {
    let sim = sim();
    stage_import(&sim, "s.qcow2");
    fixture::create_source_vm(&sim.data, 16 << 20, true, false).unwrap();

    // the source VM (qcow2 on dir, raw on LVM-thin) can be snapshotted as a whole
    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu/100/snapshot",
        Some(ADMIN),
        &[("snapname", "migrate")],
    )
    .await;
    let upid = answer.data().as_str().unwrap().to_string();
    assert!(upid.contains(":qmsnapshot:100:"));
    assert_eq!(wait_task(&sim, &upid).await["exitstatus"], "OK");
    let log = task_log(&sim, &upid).await;
    assert!(
        log.contains(&"snapshotting 'drive-scsi0' (local:100/vm-100-disk-0.qcow2)".to_string()),
        "{log:?}"
    );
    assert!(
        log.contains(&"snapshotting 'drive-scsi1' (local-lvm:vm-100-disk-0)".to_string()),
        "{log:?}"
    );

    // a raw disk on a dir storage cannot be snapshotted: PVE refuses the whole VM
    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu",
        Some(ADMIN),
        &[("vmid", "202"), ("scsi0", "local:1")],
    )
    .await;
    assert_eq!(
        wait_task(&sim, answer.data().as_str().unwrap()).await["exitstatus"],
        "OK"
    );
    let config = call(&sim, "GET", "/nodes/pve1/qemu/202/config", Some(ADMIN), &[]).await;
    assert_eq!(
        config.data()["scsi0"],
        "local:202/vm-202-disk-0.raw,size=1G"
    );
    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu/202/snapshot",
        Some(ADMIN),
        &[("snapname", "migrate")],
    )
    .await;
    assert_eq!(
        wait_task(&sim, answer.data().as_str().unwrap()).await["exitstatus"],
        "snapshot feature is not available"
    );

    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu",
        Some(ADMIN),
        &[
            ("vmid", "201"),
            ("scsi0", "local:0,import-from=local:import/s.qcow2"),
            ("scsi1", "local-lvm:1"),
        ],
    )
    .await;
    assert_eq!(
        wait_task(&sim, answer.data().as_str().unwrap()).await["exitstatus"],
        "OK"
    );
    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu/201/snapshot",
        Some(ADMIN),
        &[
            ("snapname", "before-migration"),
            ("description", "virtrigaud"),
        ],
    )
    .await;
    let upid = answer.data().as_str().unwrap().to_string();
    assert_eq!(
        wait_task(&sim, &upid).await["exitstatus"],
        "OK",
        "{:?}",
        task_log(&sim, &upid).await
    );

    let local = sim.node.storage("local").unwrap();
    let disk = local.path(&local.parse_volid("local:201/vm-201-disk-0.qcow2").unwrap());
    let info = String::from_utf8(run(std::process::Command::new("qemu-img")
        .args(["snapshot", "-l"])
        .arg(&disk)))
    .unwrap();
    assert!(info.contains("before-migration"), "{info}");
    let lvm = sim.node.storage("local-lvm").unwrap();
    assert!(
        lvm.root
            .join("snap_vm-201-disk-0_before-migration")
            .is_file()
    );

    let list = call(
        &sim,
        "GET",
        "/nodes/pve1/qemu/201/snapshot",
        Some(ADMIN),
        &[],
    )
    .await;
    let names: Vec<&str> = list
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["before-migration", "current"]);
    assert_eq!(list.data()[1]["parent"], "before-migration");
    assert_eq!(list.data()[0]["description"], "virtrigaud");

    let again = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu/201/snapshot",
        Some(ADMIN),
        &[("snapname", "before-migration")],
    )
    .await;
    assert_eq!(
        wait_task(&sim, again.data().as_str().unwrap()).await["exitstatus"],
        "snapshot name 'before-migration' already used"
    );
    let bad = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu/201/snapshot",
        Some(ADMIN),
        &[("snapname", "current")],
    )
    .await;
    assert_eq!(
        bad.body["message"],
        "unable to use snapshot name 'current' (reserved name)\n"
    );
    let bad = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu/201/snapshot",
        Some(ADMIN),
        &[("snapname", "1abc")],
    )
    .await;
    assert_eq!(
        bad.body["errors"]["snapname"],
        "invalid format - invalid configuration ID '1abc'\n"
    );

    let del = call(
        &sim,
        "DELETE",
        "/nodes/pve1/qemu/201/snapshot/before-migration",
        Some(ADMIN),
        &[],
    )
    .await;
    assert_eq!(
        wait_task(&sim, del.data().as_str().unwrap()).await["exitstatus"],
        "OK"
    );
    let info = String::from_utf8(run(std::process::Command::new("qemu-img")
        .args(["snapshot", "-l"])
        .arg(&disk)))
    .unwrap();
    assert!(!info.contains("before-migration"));
    assert!(
        !lvm.root
            .join("snap_vm-201-disk-0_before-migration")
            .exists()
    );
    let config = call(&sim, "GET", "/nodes/pve1/qemu/201/config", Some(ADMIN), &[]).await;
    assert!(config.data().get("parent").is_none());
}

/// A multipart/form-data body as a browser or PVE client sends it (fields first, file last).
fn multipart(fields: &[(&str, &str)], file_name: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----pvesimtestboundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"filename\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend(data);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload(
    sim: &Sim,
    storage: &str,
    fields: &[(&str, &str)],
    file_name: &str,
    data: &[u8],
) -> common::Answer {
    let (content_type, body) = multipart(fields, file_name, data);
    let req = Request::builder()
        .method("POST")
        .uri(format!("/api2/json/nodes/pve1/storage/{storage}/upload"))
        .header("authorization", common::auth_header(ADMIN))
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap();
    send(sim, req).await
}

#[tokio::test]
async fn upload_verifies_checksum_and_image() {
    let sim = sim();
    let image = sim.tmp.path().join("upload-src.qcow2");
    make_qcow2(&image, "32M");
    let bytes = std::fs::read(&image).unwrap();
    let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    let import_dir = sim.node.storage("local").unwrap().root.join("import");

    // checksum mismatch: the task fails and nothing lands in import/
    let wrong = "0".repeat(64);
    let answer = upload(
        &sim,
        "local",
        &[
            ("content", "import"),
            ("checksum-algorithm", "sha256"),
            ("checksum", &wrong),
        ],
        "disk.qcow2",
        &bytes,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let upid = answer.data().as_str().unwrap().to_string();
    assert!(upid.contains(":imgcopy::"));
    let status = wait_task(&sim, &upid).await;
    assert_eq!(
        status["exitstatus"],
        format!("checksum mismatch: got '{sha256}' != expect '{wrong}'")
    );
    assert!(!import_dir.join("disk.qcow2").exists());
    assert_eq!(
        std::fs::read_dir(sim.data.tmp_dir()).unwrap().count(),
        0,
        "spool file removed"
    );

    // right checksum (upper case is accepted, as PVE compares lowercased)
    let answer = upload(
        &sim,
        "local",
        &[
            ("content", "import"),
            ("checksum-algorithm", "sha256"),
            ("checksum", &sha256.to_uppercase()),
        ],
        "my disk.qcow2",
        &bytes,
    )
    .await;
    let upid = answer.data().as_str().unwrap().to_string();
    assert_eq!(wait_task(&sim, &upid).await["exitstatus"], "OK");
    assert!(
        task_log(&sim, &upid)
            .await
            .contains(&"calculating checksum...OK, checksum verified".to_string())
    );
    assert_eq!(
        std::fs::read(import_dir.join("my_disk.qcow2")).unwrap(),
        bytes
    );
    let content = call(
        &sim,
        "GET",
        "/nodes/pve1/storage/local/content",
        Some(ADMIN),
        &[("content", "import")],
    )
    .await;
    assert_eq!(content.data()[0]["volid"], "local:import/my_disk.qcow2");
    assert_eq!(content.data()[0]["format"], "qcow2");
    assert_eq!(content.data()[0]["size"], bytes.len());

    // not a qcow2 although named so: the untrusted-image check refuses it
    let answer = upload(
        &sim,
        "local",
        &[("content", "import")],
        "fake.qcow2",
        b"not an image at all",
    )
    .await;
    let status = wait_task(&sim, answer.data().as_str().unwrap()).await;
    assert_eq!(
        status["exitstatus"],
        "failed to query file information with qemu-img"
    );

    // parameter and storage checks happen before any task
    let answer = upload(&sim, "local", &[("content", "import")], "disk.txt", b"x").await;
    assert_eq!(
        answer.body["errors"]["filename"],
        "invalid filename or wrong extension"
    );
    let answer = upload(
        &sim,
        "local-lvm",
        &[("content", "import")],
        "disk.raw",
        b"x",
    )
    .await;
    assert_eq!(
        answer.body["message"],
        "can't upload to storage type 'lvmthin'\n"
    );
    let answer = upload(&sim, "local", &[("content", "images")], "disk.raw", b"x").await;
    assert!(
        answer.body["errors"]["content"]
            .as_str()
            .unwrap()
            .starts_with("value 'images' does not have a value")
    );
    let answer = upload(
        &sim,
        "local",
        &[("content", "import"), ("checksum", "abc")],
        "disk.raw",
        b"x",
    )
    .await;
    assert_eq!(
        answer.body["errors"]["checksum-algorithm"],
        "missing property required by 'checksum'"
    );
    assert_eq!(
        std::fs::read_dir(sim.data.tmp_dir()).unwrap().count(),
        0,
        "spool files removed"
    );
}

#[tokio::test]
async fn storage_status_and_volume_info() {
    let sim = sim();
    fixture::create_source_vm(&sim.data, 16 << 20, false, false).unwrap();
    let answer = call(&sim, "GET", "/nodes/pve1/storage", Some(ADMIN), &[]).await;
    let storages = answer.data().as_array().unwrap();
    assert_eq!(storages[0]["storage"], "local");
    assert_eq!(storages[0]["type"], "dir");
    assert_eq!(storages[0]["content"], "images,import,iso");
    assert_eq!(storages[1]["storage"], "local-lvm");
    assert_eq!(storages[1]["type"], "lvmthin");
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage",
        Some(ADMIN),
        &[("content", "import")],
    )
    .await;
    assert_eq!(answer.data().as_array().unwrap().len(), 1);

    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage/local/content/local:100/vm-100-disk-0.qcow2",
        Some(ADMIN),
        &[],
    )
    .await;
    assert_eq!(answer.data()["format"], "qcow2");
    assert_eq!(answer.data()["size"], 16 << 20);
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage/local-lvm/content/vm-100-disk-0",
        Some(ADMIN),
        &[],
    )
    .await;
    assert_eq!(answer.data()["format"], "raw", "{:?}", answer.body);
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage/local/content/local-lvm:vm-100-disk-0",
        Some(ADMIN),
        &[],
    )
    .await;
    assert_eq!(
        answer.body["errors"]["volume"],
        "storage ID mismatch (local-lvm != local)\n"
    );
}

#[tokio::test]
async fn download_url_fetches_and_verifies() {
    let sim = sim();
    let image = sim.tmp.path().join("served.qcow2");
    make_qcow2(&image, "8M");
    let bytes = std::fs::read(&image).unwrap();
    let sha512 = hex::encode(sha2::Sha512::digest(&bytes));
    let served = bytes.clone();
    let app = axum::Router::new().route(
        "/disk.qcow2",
        axum::routing::get(move || async move { served }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/disk.qcow2", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let download = |checksum: String, filename: &'static str| {
        let (sim, url) = (&sim, url.clone());
        async move {
            let params = [
                ("url", url.as_str()),
                ("content", "import"),
                ("filename", filename),
                ("checksum-algorithm", "sha512"),
                ("checksum", checksum.as_str()),
            ];
            let answer = call(
                sim,
                "POST",
                "/nodes/pve1/storage/local/download-url",
                Some(ADMIN),
                &params,
            )
            .await;
            assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
            let upid = answer.data().as_str().unwrap().to_string();
            assert!(upid.contains(&format!(":download:{filename}:")), "{upid}");
            wait_task(sim, &upid).await["exitstatus"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(download(sha512.clone(), "fetched.qcow2").await, "OK");
    let import_dir = sim.node.storage("local").unwrap().root.join("import");
    assert_eq!(
        std::fs::read(import_dir.join("fetched.qcow2")).unwrap(),
        bytes
    );
    let exit = download("ab".repeat(64), "bad.qcow2").await;
    assert_eq!(
        exit,
        format!(
            "checksum mismatch: got '{sha512}' != expect '{}'",
            "ab".repeat(64)
        )
    );
    assert!(std::fs::read_dir(&import_dir).unwrap().all(|e| {
        let name = e.unwrap().file_name();
        name == "fetched.qcow2"
    }));
    // the same checksum again: the file is there already
    assert_eq!(download(sha512, "fetched.qcow2").await, "OK");

    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/storage/local-lvm/download-url",
        Some(ADMIN),
        &[
            ("url", url.as_str()),
            ("content", "import"),
            ("filename", "x.qcow2"),
        ],
    )
    .await;
    assert_eq!(
        answer.body["message"],
        "can't upload to storage type 'lvmthin', not a file based storage!\n"
    );
    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/storage/local/download-url",
        Some(READONLY),
        &[
            ("url", url.as_str()),
            ("content", "import"),
            ("filename", "x.qcow2"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}
