//! `GET /storage` and `GET /storage/{storage}` (pve-storage `PVE::API2::Storage::Config`): what a
//! provider reads to learn a storage's type, its directory or its LVM volume group.

mod common;

use common::{ADMIN, READONLY, call, sim};
use http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn storage_config_gives_type_path_vgname_and_thinpool() {
    let sim = sim();
    let local_root = sim.node.storage("local").unwrap().root;
    let answer = call(&sim, "GET", "/storage", Some(ADMIN), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let list = answer.data().as_array().unwrap();
    assert_eq!(list.len(), 2);
    let digest = list[0]["digest"].as_str().unwrap().to_string();
    assert_eq!(digest.len(), 40, "sha1 of storage.cfg");
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        list[0],
        json!({
            "storage": "local",
            "type": "dir",
            "path": local_root.display().to_string(),
            "content": "images,import,iso",
            "digest": digest,
        })
    );
    let lvm = json!({
        "storage": "local-lvm",
        "type": "lvmthin",
        "vgname": "pve",
        "thinpool": "data",
        "content": "images",
        "digest": digest,
    });
    assert_eq!(list[1], lvm);

    let answer = call(&sim, "GET", "/storage/local-lvm", Some(ADMIN), &[]).await;
    assert_eq!(answer.data(), &lvm);
    let answer = call(&sim, "GET", "/storage", Some(ADMIN), &[("type", "lvmthin")]).await;
    assert_eq!(answer.data(), &json!([lvm]));
    let answer = call(&sim, "GET", "/storage", Some(ADMIN), &[("type", "zfspool")]).await;
    assert_eq!(answer.data(), &json!([]));
}

#[tokio::test]
async fn reading_one_storage_needs_datastore_allocate() {
    let sim = sim();
    // the auditor lists both (Datastore.Audit) but may not read one (Datastore.Allocate)
    let answer = call(&sim, "GET", "/storage", Some(READONLY), &[]).await;
    assert_eq!(answer.data().as_array().unwrap().len(), 2);
    let answer = call(&sim, "GET", "/storage/local", Some(READONLY), &[]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer.body["message"],
        "Permission check failed (/storage/local, Datastore.Allocate)\n"
    );
}

#[tokio::test]
async fn node_storage_index_and_formats() {
    let sim = sim();
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage/local-lvm",
        Some(ADMIN),
        &[],
    )
    .await;
    let subdirs: Vec<&str> = answer
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subdir"].as_str().unwrap())
        .collect();
    assert!(
        subdirs.contains(&"content") && subdirs.contains(&"upload"),
        "{subdirs:?}"
    );
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage",
        Some(ADMIN),
        &[("format", "1")],
    )
    .await;
    let lvm = &answer.data()[1];
    assert_eq!(lvm["storage"], "local-lvm");
    assert_eq!(
        lvm["formats"],
        json!({ "supported": ["raw"], "default": "raw" })
    );
    assert_eq!(lvm["format"], json!([{ "raw": 1 }, "raw"]));
    // storage_info keeps a storage that has any of the content types asked for
    let ids = |answer: &common::Answer| -> Vec<String> {
        let list = answer.data().as_array().unwrap();
        list.iter()
            .map(|s| s["storage"].as_str().unwrap().to_string())
            .collect()
    };
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage",
        Some(ADMIN),
        &[("content", "iso")],
    )
    .await;
    assert_eq!(ids(&answer), ["local"]);
    let answer = call(
        &sim,
        "GET",
        "/nodes/pve1/storage",
        Some(ADMIN),
        &[("content", "images,iso")],
    )
    .await;
    assert_eq!(ids(&answer), ["local", "local-lvm"]);
}
