//! The world's shared services restarted under a running migration: libvirtd during the export,
//! the apiserver and the S3 server during the transfer. Their own test binary, one test at a time,
//! so no other test sees them go away. Needs `make e2e-up`.

mod cluster_world;
mod fleet;
mod libvirt_world;
mod proxmox_world;
mod vsphere_world;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_world::Cluster;
use crd::{Phase, ProviderType, VMMigration};

/// vda of the source: 2 GiB of random bytes, some 15 s of export and as much of upload on the
/// world, so a restart lands well inside the step it is aimed at.
const VDA_MIB: u64 = 2064;

/// One restart at a time: each takes a service every test of this binary uses.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Stops the world's process `name` by its pid file as a service manager does (TERM, KILL after
/// 5 s) and waits until it is gone.
fn stop(name: &str) {
    let pid_file = cluster_world::world_dir()
        .join("pids")
        .join(format!("{name}.pid"));
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
        .trim()
        .to_string();
    let alive = || Path::new("/proc").join(&pid).exists();
    assert!(alive(), "{name} (pid {pid}) is not running");
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success(), "kill -TERM {pid}");
    let patience = Instant::now() + Duration::from_secs(5);
    while alive() && Instant::now() < patience {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive() {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() {
        assert!(Instant::now() < deadline, "{name} (pid {pid}) did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the world script `script` (it starts what is not running) and returns how long it took.
fn start_again(script: &str) -> Duration {
    let started = Instant::now();
    let path: PathBuf = libvirt_world::repo_root().join("e2e/scripts").join(script);
    let out = Command::new("bash").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

/// A big libvirt -> libvirt migration `ns/name` through S3, started: the target's name, the
/// source's disks before the migration; the source's reference images are in `refs`.
async fn start_migration<'w>(
    cluster: &Cluster,
    lw: &'w libvirt_world::World,
    ns: &str,
    name: &str,
    refs: &Path,
) -> (String, Vec<String>, [libvirt_world::DomainGuard<'w>; 2]) {
    cluster.fresh_namespace(ns).await;
    cluster.apply(&cluster.objects(ns));
    let source = libvirt_world::unique(name);
    let target = libvirt_world::unique(&format!("{name}-copy"));
    let guards = [
        lw.make_big_source_vm(&source, true, VDA_MIB, refs),
        lw.guard(&target),
    ];
    let disks = lw.domain_disks(&source);
    fleet::apply_libvirt_migration(cluster, ns, name, &source, &target, 3);
    (target, disks, guards)
}

/// Ready with the source's content on the target; prints what the restart cost.
async fn check_ready(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    target: &str,
    refs: &Path,
) -> VMMigration {
    let m = cluster.wait_done(ns, name, Duration::from_secs(900)).await;
    let status = m.status.clone().unwrap();
    let logs = cluster.runner_logs(ns, name);
    assert_eq!(status.phase, Some(Phase::Ready), "{status:?}\n{logs}");
    let refs = [refs.join("vda.raw"), refs.join("vdb.raw")];
    let _target = fleet::check_target(cluster, &m, ProviderType::Libvirt, target, &refs).await;
    m
}

/// libvirtd is stopped while vda is exported and started again: the export's stream breaks, the
/// runner connects again and the migration ends Ready with the source's content, the source
/// running as before.
#[tokio::test(flavor = "multi_thread")]
async fn libvirtd_restarted_during_the_export() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::load().await;
    let lw = libvirt_world::World::load();
    let (ns, name) = ("restart-libvirtd", "libvirtd");
    let refs = tempfile::tempdir().unwrap();
    let (target, disks, guards) = start_migration(&cluster, &lw, ns, name, refs.path()).await;
    let source = guards[0].name().to_string();
    cluster.wait_phase(ns, name, Phase::Exporting).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop("libvirtd");
    let down = start_again("endpoints-up.sh");
    let m = check_ready(&cluster, ns, name, &target, refs.path()).await;
    let status = m.status.unwrap();
    println!(
        "libvirtd stopped during the export and started again ({:.1}s): Ready in attempt {}",
        down.as_secs_f64(),
        status.attempt.unwrap_or(0)
    );
    lw.assert_source_unchanged(&source, &disks, refs.path());
    let attempts = status.attempt.unwrap_or(0) as usize;
    assert_eq!(
        cluster.jobs(ns, name).await.len(),
        attempts,
        "one Job per attempt"
    );
}

/// The apiserver is stopped while vda is uploaded and started again: the runner's status writes
/// wait it out, the operator and the node reconnect, and the migration ends Ready in its first
/// attempt, with one runner Job.
#[tokio::test(flavor = "multi_thread")]
async fn the_apiserver_restarted_during_the_transfer() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::load().await;
    let lw = libvirt_world::World::load();
    let (ns, name) = ("restart-apiserver", "apiserver");
    let refs = tempfile::tempdir().unwrap();
    let (target, _, _guards) = start_migration(&cluster, &lw, ns, name, refs.path()).await;
    cluster.wait_phase(ns, name, Phase::Transferring).await;

    stop("kube-apiserver");
    let down = start_again("control-plane-up.sh");
    let m = check_ready(&cluster, ns, name, &target, refs.path()).await;
    let status = m.status.unwrap();
    let logs = cluster.runner_logs(ns, name);
    println!(
        "apiserver stopped during the transfer and started again ({:.1}s): Ready in attempt {}",
        down.as_secs_f64(),
        status.attempt.unwrap_or(0)
    );
    assert!(
        logs.contains("status patch") || logs.contains("progress not written"),
        "the runner did not see the apiserver go:\n{logs}"
    );
    assert_eq!(status.attempt, Some(1), "the runner outlived the outage");
    assert_eq!(cluster.jobs(ns, name).await.len(), 1, "one runner Job");
}

/// The S3 server is stopped when a quarter of vda's parts are on it and started again: the upload
/// continues from the parts on the server (in the same attempt, or in the next one from what the
/// status records), and the migration ends Ready with the source's content.
#[tokio::test(flavor = "multi_thread")]
async fn the_s3_server_restarted_during_a_multipart_upload() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::load().await;
    let lw = libvirt_world::World::load();
    let (ns, name) = ("restart-s3", "s3");
    let refs = tempfile::tempdir().unwrap();
    let (target, _, _guards) = start_migration(&cluster, &lw, ns, name, refs.path()).await;
    let data_dir = PathBuf::from(cluster.var("VRG_S3_DATA_DIR"));
    let quarter = ((VDA_MIB - 16) / 8 / 4) as usize;
    let upload_id = fleet::upload_with_parts(&cluster, ns, name, "vda", quarter).await;

    stop("s3");
    let held = fleet::parts_held(&data_dir, &upload_id);
    let down = start_again("endpoints-up.sh");
    let m = check_ready(&cluster, ns, name, &target, refs.path()).await;
    let status = m.status.unwrap();
    let logs = cluster.runner_logs(ns, name);
    let staged = status
        .disks
        .iter()
        .find(|d| d.name == "vda")
        .unwrap()
        .bytes_total
        .unwrap() as u64;
    // the bytes sent again: by a next attempt's resumed upload, or as the parts retried in-process
    let retried: std::collections::BTreeSet<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("UploadPart"))
        .filter_map(|l| l.split(" part ").nth(1)?.split(':').next())
        .collect();
    let (how, sent) = match fleet::resumed_upload(&logs) {
        Some((sent, kept)) => {
            // parts still being received when the server stopped are lost; the others are kept
            assert!(
                kept as usize + 8 >= held,
                "{kept} parts kept of {held} on the server"
            );
            (
                format!(
                    "resumed by attempt {:?} keeping {kept} parts",
                    status.attempt
                ),
                sent,
            )
        }
        None => (
            format!("continued in attempt 1, parts {retried:?} retried"),
            retried.len() as u64 * (8 << 20),
        ),
    };
    println!(
        "S3 server stopped with {held} parts of vda on it and started again ({:.1}s): Ready, \
         {how}; {sent} of {staged} bytes sent again",
        down.as_secs_f64(),
    );
    assert!(
        !retried.is_empty() || status.attempt > Some(1),
        "the runner did not see the server go:\n{logs}"
    );
    assert!(
        sent * 4 <= staged * 3,
        "{sent} of {staged} bytes sent again"
    );
    assert!(
        status.uploads.is_empty(),
        "no upload left pending: {:?}",
        status.uploads
    );
    assert_eq!(fleet::parts_held(&data_dir, &upload_id), 0, "no parts left");
}
