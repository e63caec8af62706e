//! Faults through the cluster, as they happen to a user's migration: operator, webhook and runner
//! pods on the world's node, the hypervisors and storage of the world. Each test ends Ready with the
//! source's content on the target, and reports what the fault cost. Needs `make e2e-up`.

mod cluster_world;
mod fleet;
mod libvirt_world;
mod proxmox_world;
mod vsphere_world;

use std::path::Path;
use std::time::{Duration, Instant};

use cluster_world::{Cluster, adapt, virtual_machine};
use crd::{Phase, ProviderType, VMMigration};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};
use serde_json::json;

/// vda of the source: 2 GiB of random bytes (about 260 parts of 8 MiB staged; some 10 s of upload
/// on the world, so the pod is lost well before the end).
const VDA_MIB: u64 = 2064;

/// Parts of upload `id` the world's S3 server (s3s-fs) holds.
fn parts_held(data_dir: &Path, id: &str) -> usize {
    std::fs::read_dir(data_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.contains(id) && name.contains(".part-")
                })
                .count()
        })
        .unwrap_or(0)
}

/// `bytes sent` and parts kept of the resumed upload the runner logged.
fn resumed_upload(logs: &str) -> Option<(u64, u32)> {
    let line = logs
        .lines()
        .find(|l| l.contains("parts kept from an earlier try"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "bytes")?;
    let sent = words.get(at.checked_sub(1)?)?.parse().ok()?;
    let kept = words.get(at + 2)?.parse().ok()?;
    Some((sent, kept))
}

/// Attempt 1's runner pod is deleted once half of the disk's parts are on the S3 server. Attempt
/// 2, in a new pod with empty scratch, re-exports the disk and continues the upload the status
/// recorded: it sends at most 55% of the staged bytes again, and leaves no parts behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_runner_pod_lost_at_half_the_upload_resumes_from_the_parts_on_the_server() {
    let cluster = Cluster::load().await;
    let lw = libvirt_world::World::load();
    let ns = "fault-pod-lost";
    cluster.fresh_namespace(ns).await;
    cluster.apply(&cluster.objects(ns));
    let source = libvirt_world::unique("big");
    let target = libvirt_world::unique("big-copy");
    let refs = tempfile::tempdir().unwrap();
    let _source_guard = lw.make_big_source_vm(&source, true, VDA_MIB, refs.path());
    let _target_guard = lw.guard(&target);
    let (source_provider, target_provider) = fleet::providers(ProviderType::Libvirt);
    cluster.apply(&virtual_machine(ns, &source, source_provider));
    let yaml = adapt(
        "libvirt-to-vsphere.yaml",
        ns,
        &[
            ("/metadata/name", json!("lost")),
            ("/spec/sourceName", json!(source)),
            ("/spec/targetProviderRef", json!({"name": target_provider})),
            ("/spec/targetName", json!(target)),
            (
                "/spec/targetStorageHint",
                json!(cluster.var("VRG_LIBVIRT_POOL")),
            ),
            ("/spec/storage", fleet::storage(&cluster, "s3")),
            (
                "/spec/retryPolicy",
                json!({"maxAttempts": 3, "backoffDuration": "5s"}),
            ),
        ],
    );
    cluster.apply(&yaml);

    // the upload of vda: its id as the status records it, then half of its parts on the server
    let api: kube::Api<VMMigration> = kube::Api::namespaced(cluster.client.clone(), ns);
    let data_dir = Path::new(cluster.var("VRG_S3_DATA_DIR")).to_path_buf();
    let half = ((VDA_MIB - 16) / 8 / 2) as usize;
    let deadline = Instant::now() + Duration::from_secs(300);
    let upload_id = loop {
        assert!(Instant::now() < deadline, "no upload reached half of vda");
        let status = api.get("lost").await.unwrap().status.unwrap_or_default();
        assert_ne!(
            status.phase,
            Some(Phase::Ready),
            "done before the pod was lost"
        );
        let upload = status
            .uploads
            .iter()
            .find(|u| u.key.ends_with("/vda.qcow2"));
        if let Some(u) = upload
            && parts_held(&data_dir, &u.upload_id) >= half
        {
            break u.upload_id.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lost_at = Instant::now();
    let pods: kube::Api<Pod> = kube::Api::namespaced(cluster.client.clone(), ns);
    let selector = ListParams::default().labels("virtrigaud.io/migration=lost");
    let runners = pods.list(&selector).await.unwrap().items;
    assert_eq!(runners.len(), 1, "one runner pod in attempt 1");
    let killed = pods
        .delete(
            &runners[0].name_any(),
            &DeleteParams::default().grace_period(0),
        )
        .await;
    assert!(killed.is_ok(), "deleting the runner pod: {killed:?}");
    let held_at_loss = parts_held(&data_dir, &upload_id);

    let m = cluster
        .wait_done(ns, "lost", Duration::from_secs(600))
        .await;
    let recovered = lost_at.elapsed();
    let status = m.status.clone().unwrap();
    let logs = cluster.runner_logs(ns, "lost");
    assert_eq!(status.phase, Some(Phase::Ready), "{status:?}\n{logs}");
    assert_eq!(status.attempt, Some(2), "one retry after the lost pod");
    let refs = [refs.path().join("vda.raw"), refs.path().join("vdb.raw")];
    let _target = fleet::check_target(&cluster, &m, ProviderType::Libvirt, &target, &refs).await;

    let vda = status.disks.iter().find(|d| d.name == "vda").unwrap();
    let staged = vda.bytes_total.unwrap() as u64;
    let (sent, kept) = resumed_upload(&logs)
        .unwrap_or_else(|| panic!("attempt 2 did not continue the upload:\n{logs}"));
    let share = sent as f64 / staged as f64;
    println!(
        "runner pod lost with {held_at_loss} parts of vda on the server: Ready {:.1}s later, \
         {sent} of {staged} bytes ({:.0}%) sent again, {kept} parts kept, the disk re-exported \
         whole (scratch is the pod's)",
        recovered.as_secs_f64(),
        share * 100.0
    );
    assert!(
        kept as usize >= half,
        "{kept} parts kept, {half} were on the server"
    );
    assert!(share <= 0.55, "{:.0}% of vda sent again", share * 100.0);
    assert!(
        status.uploads.is_empty(),
        "no upload left pending: {:?}",
        status.uploads
    );
    assert_eq!(
        parts_held(&data_dir, &upload_id),
        0,
        "no parts left on the server"
    );
}
