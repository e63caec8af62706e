//! The nine-pair matrix: every source type (libvirt, vSphere, Proxmox) to every target type, each
//! pair through one staging backend, rotated so that every backend carries every provider as source
//! and as target (backend = (source + target) mod 3). Run through the cluster as users run it: the
//! guide's Scenario 1 YAML reshaped for each pair, operator, webhook and runner pods. Every source
//! has a linked-clone disk. Prints the table `make matrix` shows; fails unless all nine are Ready
//! with the source's guest content on the target. Needs `make e2e-up`.

mod cluster_world;
mod fleet;
mod libvirt_world;
mod proxmox_world;
mod vsphere_world;

use std::time::{Duration, Instant};

use cluster_world::{Cluster, adapt, bytes_moved, virtual_machine};
use crd::{Phase, ProviderType};
use serde_json::json;

const KINDS: [ProviderType; 3] = [
    ProviderType::Libvirt,
    ProviderType::Vsphere,
    ProviderType::Proxmox,
];
const BACKENDS: [&str; 3] = ["s3", "http", "nfs"];

struct Row {
    source: ProviderType,
    target: ProviderType,
    backend: &'static str,
    result: String,
    seconds: f64,
    bytes: u64,
}

/// One pair: a fresh source, the migration applied, waited for and checked.
async fn run_pair(cluster: &Cluster, i: usize, j: usize) -> Row {
    let (source, target) = (KINDS[i], KINDS[j]);
    let backend = BACKENDS[(i + j) % 3];
    let ns = format!("matrix-{source}-{target}");
    cluster.fresh_namespace(&ns).await;
    cluster.apply(&cluster.objects(&ns));
    let src_name = vsphere_world::unique(&format!("m-{source}"));
    let target_name = vsphere_world::unique(&format!("m-{source}-to-{target}"));
    let src = fleet::source(source, &src_name).await;
    let (source_provider, _) = fleet::providers(source);
    let (_, target_provider) = fleet::providers(target);
    cluster.apply(&virtual_machine(&ns, &src_name, source_provider));
    let yaml = adapt(
        "libvirt-to-vsphere.yaml",
        &ns,
        &[
            ("/metadata/name", json!("pair")),
            ("/spec/sourceName", json!(src_name)),
            ("/spec/targetProviderRef", json!({"name": target_provider})),
            ("/spec/targetName", json!(target_name)),
            (
                "/spec/targetStorageHint",
                json!(fleet::storage_hint(cluster, target)),
            ),
            ("/spec/storage", fleet::storage(cluster, backend)),
        ],
    );
    let started = Instant::now();
    cluster.apply(&yaml);
    let m = cluster
        .wait_done(&ns, "pair", Duration::from_secs(900))
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let status = m.status.clone().unwrap_or_default();
    let result = match status.phase {
        Some(Phase::Ready) => {
            let _target = fleet::check_target(cluster, &m, target, &target_name, &src.refs).await;
            "Ready".to_string()
        }
        other => format!(
            "{other:?}: {}\n{}",
            status.message.unwrap_or_default(),
            cluster.runner_logs(&ns, "pair")
        ),
    };
    Row {
        source,
        target,
        backend,
        result,
        seconds,
        bytes: bytes_moved(&m),
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<9} {:<9} {:<7} {:<8} {:>8} {:>12} {:>8}\n",
        "source", "target", "backend", "result", "seconds", "bytes moved", "MiB/s"
    );
    for r in rows {
        let result = r.result.lines().next().unwrap_or_default();
        let result = if result == "Ready" { "Ready" } else { "FAILED" };
        out.push_str(&format!(
            "{:<9} {:<9} {:<7} {:<8} {:>8.1} {:>12} {:>8.1}\n",
            r.source.as_str(),
            r.target.as_str(),
            r.backend,
            result,
            r.seconds,
            r.bytes,
            r.bytes as f64 / (1 << 20) as f64 / r.seconds.max(0.001)
        ));
    }
    let ready = rows.iter().filter(|r| r.result == "Ready").count();
    out.push_str(&format!("{ready}/{} Ready\n", rows.len()));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn nine_pairs_through_the_rotated_backends() {
    let cluster = Cluster::load().await;
    let mut rows = Vec::new();
    for i in 0..KINDS.len() {
        for j in 0..KINDS.len() {
            rows.push(run_pair(&cluster, i, j).await);
        }
    }
    let table = table(&rows);
    println!("\n{table}");
    // every backend carries every provider as source and as target
    for kind in KINDS {
        for backend in BACKENDS {
            assert!(
                rows.iter()
                    .any(|r| r.source == kind && r.backend == backend)
            );
            assert!(
                rows.iter()
                    .any(|r| r.target == kind && r.backend == backend)
            );
        }
    }
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.result != "Ready")
        .map(|r| {
            format!(
                "{} -> {} via {}: {}",
                r.source, r.target, r.backend, r.result
            )
        })
        .collect();
    assert!(failed.is_empty(), "{table}\n{}", failed.join("\n\n"));
}
