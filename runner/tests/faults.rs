//! Faults through the cluster, as they happen to a user's migration: operator, webhook and runner
//! pods on the world's node, the hypervisors and storage of the world. Each test ends Ready with the
//! source's content on the target, and reports what the fault cost. Needs `make e2e-up`.

mod cluster_world;
mod fault_proxy;
mod fleet;
mod libvirt_world;
mod proxmox_world;
mod vsphere_world;

use std::path::Path;
use std::time::{Duration, Instant};

use cluster_world::Cluster;
use crd::{Phase, ProviderType, VMMigration};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};

/// vda of the source: 2 GiB of random bytes (about 260 parts of 8 MiB staged; some 10 s of upload
/// on the world, so the pod is lost well before the end).
const VDA_MIB: u64 = 2064;

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
    fleet::apply_libvirt_migration(&cluster, ns, "lost", &source, &target, 3);

    // the upload of vda: its id as the status records it, then half of its parts on the server
    let data_dir = Path::new(cluster.var("VRG_S3_DATA_DIR")).to_path_buf();
    let half = ((VDA_MIB - 16) / 8 / 2) as usize;
    let upload_id = fleet::upload_with_parts(&cluster, ns, "lost", "vda", half).await;
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
    let held_at_loss = fleet::parts_held(&data_dir, &upload_id);

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
    let (sent, kept) = fleet::resumed_upload(&logs)
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
        fleet::parts_held(&data_dir, &upload_id),
        0,
        "no parts left on the server"
    );
}

/// Deletes migration `ns/name` and waits until its finalizer's cleanup is done; then nothing it
/// staged is left on the world's S3 server.
fn delete_and_check_staging_empty(cluster: &Cluster, ns: &str, name: &str) {
    let (ok, out) = cluster.kubectl(
        &[
            "-n",
            ns,
            "delete",
            "vmmigration",
            name,
            "--wait",
            "--timeout=180s",
        ],
        None,
    );
    assert!(ok, "kubectl delete: {out}");
    let staged = Path::new(cluster.var("VRG_S3_DATA_DIR"))
        .join(cluster.var("VRG_S3_BUCKET"))
        .join(ns)
        .join(name);
    let left: Vec<_> = std::fs::read_dir(&staged)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", staged.display());
}

/// Waits until vda's staged object is complete on the world's S3 server (recorded in the status and
/// of the recorded size there); returns its file and size.
async fn staged_vda(cluster: &Cluster, ns: &str, name: &str) -> (std::path::PathBuf, u64) {
    let api: kube::Api<VMMigration> = kube::Api::namespaced(cluster.client.clone(), ns);
    let file = Path::new(cluster.var("VRG_S3_DATA_DIR"))
        .join(cluster.var("VRG_S3_BUCKET"))
        .join(format!("{ns}/{name}/vda.qcow2"));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "vda was never staged");
        let status = api.get(name).await.unwrap().status.unwrap_or_default();
        assert!(
            !matches!(status.phase, Some(Phase::Ready | Phase::Failed)),
            "{ns}/{name} ended before vda was staged: {status:?}"
        );
        let vda = status.disks.iter().find(|d| d.name == "vda");
        if let Some(size) = vda
            .filter(|d| d.staged_url.is_some())
            .and_then(|d| d.bytes_total)
            && std::fs::metadata(&file).is_ok_and(|m| m.len() == size as u64)
        {
            return (file, size as u64);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until migration `ns/name` has failed terminally in its first attempt (`why` it is not
/// retried) with Ready reason `reason`; returns its status and the Ready condition's message.
async fn failed_in_attempt_1(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    reason: &str,
    why: &str,
    timeout_s: u64,
) -> (crd::VMMigrationStatus, String) {
    let m = cluster
        .wait_done(ns, name, Duration::from_secs(timeout_s))
        .await;
    let status = m.status.unwrap();
    let logs = cluster.runner_logs(ns, name);
    assert_eq!(status.phase, Some(Phase::Failed), "{status:?}\n{logs}");
    assert_eq!(status.attempt, Some(1), "{why}");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason.as_deref(), Some(reason), "{ready:?}");
    let message = ready.message.clone().unwrap_or_default();
    (status, message)
}

/// Flips the byte at `offset` of `path` in place.
fn flip_byte(path: &Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[byte[0] ^ 0xff]).unwrap();
    f.sync_all().unwrap();
}

/// vda's staged object rots on the S3 server after its upload, before its import: the runner's
/// hash of the download catches it, the migration fails terminally naming the object, no target
/// VM or volume is made, the source runs on as it was, and deleting the migration removes what it
/// staged.
#[tokio::test(flavor = "multi_thread")]
async fn a_staged_object_corrupted_before_its_import_fails_the_migration_and_creates_nothing() {
    let cluster = Cluster::load().await;
    let lw = libvirt_world::World::load();
    let ns = "fault-corrupt";
    cluster.fresh_namespace(ns).await;
    cluster.apply(&cluster.objects(ns));
    let source = libvirt_world::unique("rot");
    let target = libvirt_world::unique("rot-copy");
    let refs = tempfile::tempdir().unwrap();
    let _source_guard = lw.make_big_source_vm(&source, true, 528, refs.path());
    let _target_guard = lw.guard(&target);
    let disks = lw.domain_disks(&source);
    fleet::apply_libvirt_migration(&cluster, ns, "rot", &source, &target, 3);

    let (object, size) = staged_vda(&cluster, ns, "rot").await;
    flip_byte(&object, size / 2);

    let (status, message) = failed_in_attempt_1(
        &cluster,
        ns,
        "rot",
        "ChecksumMismatch",
        "a checksum mismatch is not retried",
        600,
    )
    .await;
    assert!(
        message.contains("vda.qcow2"),
        "the object is named: {message}"
    );
    assert!(status.target_vm.is_none() && status.target_vm_id.is_none());
    assert!(
        !lw.virsh(&["dominfo", &target]).status.success(),
        "no {target}"
    );
    assert_eq!(
        lw.volumes(&target),
        Vec::<String>::new(),
        "no target volume"
    );
    lw.assert_source_unchanged(&source, &disks, refs.path());
    delete_and_check_staging_empty(&cluster, ns, "rot");
}

/// A domain of the target name, not the migration's, is defined on the target while the disks are
/// uploaded: the runner does not touch it, fails terminally with NotOwned naming it, removes the
/// volumes it imported, and the source runs on as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_vm_of_the_target_name_appearing_mid_migration_is_left_alone() {
    let cluster = Cluster::load().await;
    let lw = libvirt_world::World::load();
    let ns = "fault-clash";
    cluster.fresh_namespace(ns).await;
    cluster.apply(&cluster.objects(ns));
    let source = libvirt_world::unique("clash");
    let target = libvirt_world::unique("clash-copy");
    let refs = tempfile::tempdir().unwrap();
    let _source_guard = lw.make_big_source_vm(&source, true, 528, refs.path());
    let _target_guard = lw.guard(&target);
    let disks = lw.domain_disks(&source);
    fleet::apply_libvirt_migration(&cluster, ns, "clash", &source, &target, 3);

    // someone else's domain of that name, defined once the migration is past its validation
    let _ = staged_vda(&cluster, ns, "clash").await;
    let xml = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        xml.path(),
        format!(
            "<domain type='qemu'><name>{target}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os></domain>"
        ),
    )
    .unwrap();
    lw.virsh_ok(&["define", xml.path().to_str().unwrap()]);
    let theirs = lw.virsh_ok(&["dumpxml", &target]);

    let (status, message) = failed_in_attempt_1(
        &cluster,
        ns,
        "clash",
        "NotOwned",
        "a name taken by another VM is not retried",
        600,
    )
    .await;
    assert!(
        message.contains(&target) && message.contains("left untouched"),
        "{message}"
    );
    assert_eq!(
        lw.virsh_ok(&["dumpxml", &target]),
        theirs,
        "their domain unchanged"
    );
    assert_eq!(
        lw.volumes(&target),
        Vec::<String>::new(),
        "imported volumes removed"
    );
    assert!(status.disks.iter().all(|d| d.target_disk.is_none()));
    lw.assert_source_unchanged(&source, &disks, refs.path());
    delete_and_check_staging_empty(&cluster, ns, "clash");
}

/// A source disk larger than the runner's scratch (101 GiB virtual, nearly empty; the e2e operator
/// keeps the default --scratch-size of 100Gi): the migration fails in Validating with NoSpace
/// naming the setting to raise, before anything is snapshotted, staged or made on the target.
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_larger_than_scratch_fails_with_no_space_naming_the_setting() {
    let cluster = Cluster::load().await;
    let lw = libvirt_world::World::load();
    let ns = "fault-scratch";
    cluster.fresh_namespace(ns).await;
    cluster.apply(&cluster.objects(ns));
    let source = libvirt_world::unique("huge");
    let target = libvirt_world::unique("huge-copy");
    let _source_guard = lw.guard(&source);
    let _target_guard = lw.guard(&target);
    let disk = lw.pool_dir().join(format!("{source}-vda.qcow2"));
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("101G")
        .status()
        .unwrap();
    assert!(made.success(), "qemu-img create {}", disk.display());
    let xml = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        xml.path(),
        format!(
            "<domain type='qemu'><name>{source}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>\
             <driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/>\
             </disk></devices></domain>",
            disk.display()
        ),
    )
    .unwrap();
    lw.virsh_ok(&["define", xml.path().to_str().unwrap()]);
    lw.virsh_ok(&["pool-refresh", "default"]);
    fleet::apply_libvirt_migration(&cluster, ns, "huge", &source, &target, 3);

    let (status, message) = failed_in_attempt_1(
        &cluster,
        ns,
        "huge",
        "NoSpace",
        "more attempts do not make scratch larger",
        300,
    )
    .await;
    assert!(
        message.contains("limited to 100Gi by the operator's --scratch-size")
            && message.contains("needs 101Gi"),
        "the setting and its value are named: {message}"
    );
    assert!(status.snapshot.is_none(), "nothing snapshotted: {status:?}");
    assert!(status.disks.iter().all(|d| d.staged_url.is_none()));
    assert!(
        !lw.virsh(&["dominfo", &target]).status.success(),
        "no {target}"
    );
    let snapshots = lw.virsh_ok(&["snapshot-list", &source, "--name"]);
    assert!(snapshots.trim().is_empty(), "snapshots: {snapshots}");
    delete_and_check_staging_empty(&cluster, ns, "huge");
}

/// The world's nginx WebDAV behind a [`fault_proxy::FaultProxy`] on the gateway: the storage
/// block of a migration through it.
async fn http_behind_proxy(cluster: &Cluster) -> (fault_proxy::FaultProxy, serde_json::Value) {
    let port = url::Url::parse(cluster.var("VRG_HTTP_URL"))
        .unwrap()
        .port()
        .unwrap();
    let proxy = fault_proxy::FaultProxy::start(cluster.var("VRG_GATEWAY_IP"), port).await;
    let storage = serde_json::json!({"type": "http", "endpoint": proxy.url(),
        "credentialsSecretRef": {"name": "fileserver-token"}});
    (proxy, storage)
}

/// HTTP staging answers 503 to everything for 30 s, starting in the middle of vda's upload (the
/// open connections cut): the runner retries, the operator starts the next attempt when the
/// runner's retries run out, and the migration ends Ready with the source's content. The
/// attempts it took and the 503 answers are reported.
#[tokio::test(flavor = "multi_thread")]
async fn http_storage_unavailable_for_30_seconds_mid_upload() {
    let cluster = Cluster::load().await;
    let lw = libvirt_world::World::load();
    let ns = "fault-http-503";
    cluster.fresh_namespace(ns).await;
    cluster.apply(&cluster.objects(ns));
    let source = libvirt_world::unique("busy");
    let target = libvirt_world::unique("busy-copy");
    let refs = tempfile::tempdir().unwrap();
    let _source_guard = lw.make_big_source_vm(&source, true, 1040, refs.path());
    let _target_guard = lw.guard(&target);
    let (proxy, storage) = http_behind_proxy(&cluster).await;
    fleet::apply_libvirt_migration_through(&cluster, ns, "busy", &source, &target, 4, storage);

    cluster.wait_phase(ns, "busy", Phase::Transferring).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set(fault_proxy::Mode::Unavailable);
    tokio::time::sleep(Duration::from_secs(30)).await;
    proxy.set(fault_proxy::Mode::Pass);

    let m = cluster
        .wait_done(ns, "busy", Duration::from_secs(900))
        .await;
    let status = m.status.clone().unwrap();
    let logs = cluster.runner_logs(ns, "busy");
    assert_eq!(status.phase, Some(Phase::Ready), "{status:?}\n{logs}");
    let refs = [refs.path().join("vda.raw"), refs.path().join("vdb.raw")];
    let _target = fleet::check_target(&cluster, &m, ProviderType::Libvirt, &target, &refs).await;
    let attempts = status.attempt.unwrap_or(0);
    println!(
        "HTTP storage unavailable for 30 s mid-upload: {} requests answered 503, Ready in attempt \
         {attempts} (an HTTP PUT cannot be continued: each attempt sends vda whole)",
        proxy.refusals()
    );
    assert!(proxy.refusals() > 0, "no request met the outage");
    assert!(
        logs.contains("503"),
        "the runner did not report the 503s:\n{logs}"
    );
    assert_eq!(
        cluster.jobs(ns, "busy").await.len(),
        attempts as usize,
        "one Job per attempt"
    );
}

/// The connection of vda's download from HTTP staging is reset after 100 MiB: the runner
/// continues the download from where it broke (Range) in the same attempt and the migration
/// ends Ready with the source's content.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_reset_mid_download_is_continued() {
    let cluster = Cluster::load().await;
    let lw = libvirt_world::World::load();
    let ns = "fault-http-reset";
    cluster.fresh_namespace(ns).await;
    cluster.apply(&cluster.objects(ns));
    let source = libvirt_world::unique("reset");
    let target = libvirt_world::unique("reset-copy");
    let refs = tempfile::tempdir().unwrap();
    let _source_guard = lw.make_big_source_vm(&source, true, 528, refs.path());
    let _target_guard = lw.guard(&target);
    let (proxy, storage) = http_behind_proxy(&cluster).await;
    // only a download sends that much back: uploads are answered in a few bytes
    proxy.set(fault_proxy::Mode::ResetAfter(100 << 20));
    fleet::apply_libvirt_migration_through(&cluster, ns, "reset", &source, &target, 3, storage);

    let m = cluster
        .wait_done(ns, "reset", Duration::from_secs(600))
        .await;
    let status = m.status.clone().unwrap();
    let logs = cluster.runner_logs(ns, "reset");
    assert_eq!(status.phase, Some(Phase::Ready), "{status:?}\n{logs}");
    let refs = [refs.path().join("vda.raw"), refs.path().join("vdb.raw")];
    let _target = fleet::check_target(&cluster, &m, ProviderType::Libvirt, &target, &refs).await;
    assert_eq!(proxy.resets(), 1, "one connection reset");
    assert_eq!(status.attempt, Some(1), "continued in the same attempt");
    let retry = logs
        .lines()
        .find(|l| l.contains("WARN") && l.contains("GET"))
        .unwrap_or_else(|| panic!("the runner did not retry the download:\n{logs}"));
    let continued = logs
        .lines()
        .find(|l| l.contains("vda.qcow2: continued at byte"))
        .unwrap_or_else(|| panic!("the download was not continued with a Range:\n{logs}"));
    println!(
        "connection reset after 100 MiB of vda's download: Ready in attempt 1; {retry}; {continued}"
    );
}
