//! Requests PVE refuses, refused the same way (in process, through the router): status code,
//! the reason in the status line, and the message or per-parameter errors.

mod common;

use axum::body::Body;
use common::{ADMIN, Answer, call, send, sim};
use http::{Request, StatusCode};
use pvesim::fixture;

const NOT_IN_SCHEMA: &str =
    "property is not defined in schema and the schema does not allow additional properties";

fn assert_param_error(answer: &Answer, param: &str, message: &str) {
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{:?}", answer.body);
    assert_eq!(
        answer.reason.as_deref(),
        Some("Parameter verification failed.")
    );
    assert_eq!(answer.body["message"], "Parameter verification failed.\n");
    assert_eq!(answer.body["errors"][param], message, "{:?}", answer.body);
    assert!(answer.body["data"].is_null());
}

fn assert_failed(answer: &Answer, message: &str) {
    assert_eq!(
        answer.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{:?}",
        answer.body
    );
    assert_eq!(answer.body["message"], format!("{message}\n"));
    assert_eq!(answer.reason.as_deref(), Some(message));
    assert!(answer.body.get("errors").is_none());
}

#[tokio::test]
async fn bad_tokens_are_401_with_the_reason_in_the_status_line() {
    let sim = sim();
    let cases = [
        (None, "No ticket"),
        (
            Some("PVEAPIToken=root@pam!virtrigaud=wrong-secret"),
            "Authentication failed!",
        ),
        (
            Some("PVEAPIToken=root@pam!nosuch=0b5c1f0e-6a53-4b8e-9d55-3c8e7d0c2f11"),
            "Authentication failed!",
        ),
        (Some("PVEAPIToken=not-a-token-id"), "Authentication failed!"),
        (
            Some("Bearer 0b5c1f0e-6a53-4b8e-9d55-3c8e7d0c2f11"),
            "No ticket",
        ),
    ];
    for (header, reason) in cases {
        let mut req = Request::builder().uri("/api2/json/nodes/pve1/qemu");
        if let Some(h) = header {
            req = req.header("authorization", h);
        }
        let answer = send(&sim, req.body(Body::empty()).unwrap()).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{header:?}");
        assert_eq!(answer.reason.as_deref(), Some(reason), "{header:?}");
        assert!(answer.body.is_null(), "{header:?}: no body");
    }
}

#[tokio::test]
async fn unknown_storages_fail_where_pve_fails() {
    let sim = sim();
    fixture::create_source_vm(&sim.data, 16 << 20, false, false).unwrap();
    // the schema's pve-storage-id format triggers first for an ID it cannot be
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage/x/content",
        Some(ADMIN),
        &[],
    )
    .await;
    assert_param_error(
        &answer,
        "storage",
        "invalid format - storage ID 'x' cannot be shorter than 2 characters\n",
    );
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage/1st/status",
        Some(ADMIN),
        &[],
    )
    .await;
    assert_param_error(
        &answer,
        "storage",
        "invalid format - storage ID '1st' contains illegal characters\n",
    );
    // a well-formed ID that is not configured: storage_config's die, except for the status
    // calls, which look the storage up in storage_info
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage/nosuch/content",
        Some(ADMIN),
        &[],
    )
    .await;
    assert_failed(&answer, "storage 'nosuch' does not exist");
    let answer = call(&sim, "GET", "/storage/nosuch", Some(ADMIN), &[]).await;
    assert_failed(&answer, "storage 'nosuch' does not exist");
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage/nosuch/status",
        Some(ADMIN),
        &[],
    )
    .await;
    assert_param_error(&answer, "storage", "No such storage.");
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage",
        Some(ADMIN),
        &[("storage", "nosuch")],
    )
    .await;
    assert_param_error(&answer, "storage", "No such storage.");
    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu",
        Some(ADMIN),
        &[("vmid", "300"), ("scsi0", "nosuch:1")],
    )
    .await;
    assert_failed(&answer, "storage 'nosuch' does not exist");
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage/local/content/nosuch:100/vm-100-disk-0.qcow2",
        Some(ADMIN),
        &[],
    )
    .await;
    assert_param_error(&answer, "volume", "storage ID mismatch (nosuch != local)\n");
}

#[tokio::test]
async fn a_vmid_in_use_is_refused_before_any_task() {
    let sim = sim();
    fixture::create_source_vm(&sim.data, 16 << 20, false, false).unwrap();
    let answer = call(
        &sim,
        "POST",
        "/nodes/pve1/qemu",
        Some(ADMIN),
        &[("vmid", "100"), ("name", "again"), ("scsi0", "local:1")],
    )
    .await;
    assert_failed(
        &answer,
        "unable to create VM 100 - VM 100 already exists on node 'pve1'",
    );
    assert!(sim.node.tasks.list().is_empty(), "no task was started");
    let answer = call(
        &sim,
        "GET",
        "/cluster/nextid",
        Some(ADMIN),
        &[("vmid", "100")],
    )
    .await;
    assert_param_error(&answer, "vmid", "VM 100 already exists");
}

/// An upload of `file_name` (a few bytes) with `content`.
async fn upload(sim: &common::Sim, content: &str, file_name: &str) -> Answer {
    let boundary = "pvesimrejectionsboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\n{content}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"filename\"; filename=\"{file_name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\nnot an image\r\n--{boundary}--\r\n"
    );
    let req = Request::builder()
        .method("POST")
        .uri("/api2/json/nodes/pve1/storage/local/upload")
        .header("authorization", common::auth_header(ADMIN))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap();
    send(sim, req).await
}

#[tokio::test]
async fn upload_extensions_are_pves() {
    let sim = sim();
    // content=import takes .qcow2, .raw, .vmdk and .ova (not .ovf, which only import/ may hold)
    for name in ["disk.ovf", "disk.txt", "disk.qcow2.txt", "disk", "disk.img"] {
        let answer = upload(&sim, "import", name).await;
        assert_param_error(&answer, "filename", "invalid filename or wrong extension");
    }
    for name in ["disk.qcow2", "disk.iso.tar"] {
        let answer = upload(&sim, "iso", name).await;
        assert_param_error(&answer, "filename", "wrong file extension");
    }
    let answer = upload(&sim, "vztmpl", "ct.zip").await;
    assert_param_error(&answer, "filename", "wrong file extension");
    let answer = upload(&sim, "images", "disk.raw").await;
    assert_param_error(
        &answer,
        "content",
        "value 'images' does not have a value in the enumeration 'iso, vztmpl, import'",
    );
    for name in ["disk.qcow2", "disk.raw", "disk.vmdk", "appliance.ova"] {
        let answer = upload(&sim, "import", name).await;
        assert_eq!(answer.status, StatusCode::OK, "{name}: {:?}", answer.body);
        let upid = answer.data().as_str().unwrap();
        assert!(upid.contains(":imgcopy::"), "{upid}");
        common::wait_task(&sim, upid).await;
    }
    assert_eq!(
        std::fs::read_dir(sim.data.tmp_dir()).unwrap().count(),
        0,
        "spool files removed"
    );
}

#[tokio::test]
async fn unknown_and_malformed_parameters_are_400() {
    let sim = sim();
    fixture::create_source_vm(&sim.data, 16 << 20, false, false).unwrap();
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/qemu",
        Some(ADMIN),
        &[("fulll", "1")],
    )
    .await;
    assert_param_error(&answer, "fulll", NOT_IN_SCHEMA);
    // path parameters are verified like the others
    let answer = call(&sim, "GET", "/nodes/pve1/qemu/abc/config", Some(ADMIN), &[]).await;
    assert_param_error(&answer, "vmid", "type check ('integer') failed - got 'abc'");
    let answer = call(&sim, "GET", "/nodes/pve_1/qemu", Some(ADMIN), &[]).await;
    assert_param_error(
        &answer,
        "node",
        "invalid format - value does not look like a valid node name\n",
    );
    let answer = call(
        &sim,
        "DELETE",
        "/nodes/pve1/qemu/100/snapshot/1abc",
        Some(ADMIN),
        &[],
    )
    .await;
    assert_param_error(
        &answer,
        "snapname",
        "invalid format - invalid configuration ID '1abc'\n",
    );
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/qemu/100/config",
        Some(ADMIN),
        &[("vmid", "101")],
    )
    .await;
    assert_param_error(
        &answer,
        "vmid",
        "duplicate parameter (already defined in URI) with conflicting values!",
    );
    // property strings: an unknown key, and a key's own check
    let answer = call(
        &sim,
        "PUT",
        "/nodes/pve1/qemu/100/config",
        Some(ADMIN),
        &[("net1", "virtio,bridge=vmbr0,speed=10")],
    )
    .await;
    assert_param_error(
        &answer,
        "net1",
        "invalid format - invalid key in comma-separated list property: speed\n",
    );
    let answer = call(
        &sim,
        "PUT",
        "/nodes/pve1/qemu/100/config",
        Some(ADMIN),
        &[("scsi2", "local:1,aio=fast"), ("digest", &"0".repeat(41))],
    )
    .await;
    assert_param_error(
        &answer,
        "scsi2",
        "invalid format - format error\nscsi2.aio: value 'fast' does not have a value in the enumeration 'native, threads, io_uring'\n",
    );
    assert_param_error(&answer, "digest", "value may only be 40 characters long");
    let answer = call(
        &sim,
        "GET",
        "/cluster/resources",
        Some(ADMIN),
        &[("type", "pool")],
    )
    .await;
    assert_param_error(
        &answer,
        "type",
        "value 'pool' does not have a value in the enumeration 'vm, storage, node, sdn'",
    );
}
