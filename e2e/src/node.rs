//! The Node object: registration, status (capacity, addresses, conditions, daemon endpoint), the
//! heartbeat Lease in `kube-node-lease`, and the Ready condition kept fresh.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use crate::error::{Error, Result};
use crate::volumes::NodeCapacity;

/// Version the node reports as its kubelet version (that of the control plane it joins).
pub const KUBELET_VERSION: &str = "v1.36.3";
/// Field manager of the node's writes.
const MANAGER: &str = "e2e-node";

/// What the Node object says about this machine.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// InternalIP.
    pub ip: String,
    /// Kubelet API port.
    pub port: u16,
    /// CPU and memory.
    pub capacity: NodeCapacity,
    /// Pod capacity.
    pub max_pods: u32,
    /// Pod CIDR (informational).
    pub pod_cidr: String,
    /// Taints set when the Node is created.
    pub taints: Vec<Taint>,
}

/// Parses `key[=value]:Effect`.
pub fn parse_taint(s: &str) -> Result<Taint> {
    let bad = || {
        Error::Config(format!(
            "taint {s:?}: expected KEY[=VALUE]:NoSchedule|PreferNoSchedule|NoExecute"
        ))
    };
    let (kv, effect) = s.rsplit_once(':').ok_or_else(bad)?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(bad());
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(bad());
    }
    Ok(Taint {
        key: key.into(),
        value,
        effect: effect.into(),
        time_added: None,
    })
}

/// CPU cores and memory of this machine.
pub fn machine_capacity() -> NodeCapacity {
    let cpu_cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(2 << 30, |kb| kb * 1024);
    NodeCapacity {
        cpu_cores,
        memory_bytes,
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
    previous: &[NodeCondition],
) -> NodeCondition {
    let transition = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(transition),
    }
}

/// The node status this process reports.
pub fn node_status(info: &NodeInfo, previous: &[NodeCondition], now: Timestamp) -> NodeStatus {
    let mut resources = BTreeMap::new();
    resources.insert(
        "cpu".to_string(),
        Quantity(info.capacity.cpu_cores.to_string()),
    );
    resources.insert(
        "memory".to_string(),
        Quantity(format!("{}Ki", info.capacity.memory_bytes / 1024)),
    );
    resources.insert("pods".to_string(), Quantity(info.max_pods.to_string()));
    resources.insert("ephemeral-storage".to_string(), Quantity("100Gi".into()));
    let os_image = read_trimmed("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        addresses: Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: info.ip.clone(),
        }]),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                now,
                previous,
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
                now,
                previous,
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
                now,
                previous,
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status (process node)",
                now,
                previous,
            ),
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(info.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            container_runtime_version: format!("process://{}", env!("CARGO_PKG_VERSION")),
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: read_trimmed("/etc/machine-id"),
            operating_system: std::env::consts::OS.into(),
            os_image,
            system_uuid: read_trimmed("/etc/machine-id"),
            swap: None,
        }),
        ..Default::default()
    }
}

/// Creates the Node if needed, then writes its status.
pub async fn register(client: &Client, info: &NodeInfo) -> Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    if api.get_opt(&info.name).await?.is_none() {
        let labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), info.name.clone()),
            (
                "kubernetes.io/os".to_string(),
                std::env::consts::OS.to_string(),
            ),
            ("kubernetes.io/arch".to_string(), "amd64".to_string()),
            (
                "beta.kubernetes.io/os".to_string(),
                std::env::consts::OS.to_string(),
            ),
            ("beta.kubernetes.io/arch".to_string(), "amd64".to_string()),
        ]);
        let node = Node {
            metadata: ObjectMeta {
                name: Some(info.name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                pod_cidr: Some(info.pod_cidr.clone()),
                pod_cidrs: Some(vec![info.pod_cidr.clone()]),
                taints: (!info.taints.is_empty()).then(|| info.taints.clone()),
                ..Default::default()
            }),
            status: None,
        };
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = %info.name, "node registered"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    update_status(client, info).await
}

/// Writes the node status (the Ready condition's heartbeat included).
pub async fn update_status(client: &Client, info: &NodeInfo) -> Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let previous = api
        .get_opt(&info.name)
        .await?
        .and_then(|n| n.status)
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    let status = node_status(info, &previous, Timestamp::now());
    let body = serde_json::json!({ "status": status });
    Ok(api
        .patch_status(
            &info.name,
            &PatchParams::apply(MANAGER),
            &Patch::Merge(&body),
        )
        .await?)
}

/// Creates or renews the node's Lease in `kube-node-lease`.
pub async fn renew_lease(client: &Client, node: &Node, lease_seconds: i32) -> Result<()> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = MicroTime(Timestamp::now());
    match api.get_opt(&name).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some(name.clone());
            spec.lease_duration_seconds = Some(lease_seconds);
            spec.renew_time = Some(now);
            api.replace(&name, &PostParams::default(), &lease).await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.clone(),
                        uid: node.metadata.uid.clone().unwrap_or_default(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.clone()),
                    lease_duration_seconds: Some(lease_seconds),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

/// Renews the Lease every `every` and refreshes the node status every sixth time (the kubelet
/// reports status at least once a minute when nothing changes); errors are logged and retried.
pub async fn heartbeat(
    client: Client,
    info: NodeInfo,
    mut node: Node,
    lease_seconds: i32,
    every: Duration,
) {
    let mut tick = 0u64;
    loop {
        if let Err(e) = renew_lease(&client, &node, lease_seconds).await {
            tracing::warn!(error = %e, "lease renewal failed");
        }
        if tick % 6 == 5 {
            match update_status(&client, &info).await {
                Ok(n) => node = n,
                Err(e) => tracing::warn!(error = %e, "node status update failed"),
            }
        }
        tick += 1;
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> NodeInfo {
        NodeInfo {
            name: "e2e-node".into(),
            ip: "127.0.0.1".into(),
            port: 10250,
            capacity: NodeCapacity {
                cpu_cores: 2,
                memory_bytes: 4 << 30,
            },
            max_pods: 110,
            pod_cidr: "10.244.0.0/16".into(),
            taints: vec![],
        }
    }

    #[test]
    fn taints_parse_like_register_with_taints() {
        let t = parse_taint("e2e/test=node-1:NoSchedule").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            ("e2e/test", Some("node-1"), "NoSchedule")
        );
        assert_eq!(parse_taint("dedicated:NoExecute").unwrap().value, None);
        assert!(parse_taint("k=v:Sometimes").is_err());
        assert!(parse_taint("novalue").is_err());
    }

    #[test]
    fn status_reports_ready_capacity_address_and_port() {
        let t0 = Timestamp::from_second(1000).unwrap();
        let s = node_status(&info(), &[], t0);
        let cap = s.capacity.unwrap();
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["memory"].0, "4194304Ki");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(s.addresses.unwrap()[0].address, "127.0.0.1");
        assert_eq!(
            s.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port,
            10250
        );
        let conds = s.conditions.unwrap();
        let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");

        // a later heartbeat keeps the transition time
        let t1 = Timestamp::from_second(2000).unwrap();
        let again = node_status(&info(), &conds, t1).conditions.unwrap();
        let ready = again.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.last_transition_time, Some(Time(t0)));
        assert_eq!(ready.last_heartbeat_time, Some(Time(t1)));
    }
}
