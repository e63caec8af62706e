//! What every part of the node shares: the API client, configuration, the pod IP pool, and the
//! registry of the pods it runs (read by the kubelet API to find logs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::config::NodeConfig;
use crate::logs::LiveLogs;
use crate::objects::Objects;
use crate::pod_ip::IpPool;
use crate::volumes::NodeCapacity;

/// A pod the node runs, as the kubelet API sees it.
#[derive(Clone, Debug)]
pub struct PodEntry {
    /// The pod's uid.
    pub uid: String,
    /// Its directory (volumes, logs, termination messages).
    pub dir: PathBuf,
    /// The latest pod object.
    pub pod: Pod,
}

/// Pods by `(namespace, name)`.
#[derive(Clone, Default, Debug)]
pub struct Registry(Arc<RwLock<BTreeMap<(String, String), PodEntry>>>);

impl Registry {
    /// Adds or replaces a pod.
    pub fn put(&self, ns: &str, name: &str, entry: PodEntry) {
        self.0
            .write()
            .expect("registry lock")
            .insert((ns.into(), name.into()), entry);
    }

    /// Removes a pod if it still has this uid.
    pub fn remove(&self, ns: &str, name: &str, uid: &str) {
        let mut map = self.0.write().expect("registry lock");
        if map
            .get(&(ns.into(), name.into()))
            .is_some_and(|e| e.uid == uid)
        {
            map.remove(&(ns.into(), name.into()));
        }
    }

    /// Looks a pod up.
    pub fn get(&self, ns: &str, name: &str) -> Option<PodEntry> {
        self.0
            .read()
            .expect("registry lock")
            .get(&(ns.into(), name.into()))
            .cloned()
    }

    /// All pods.
    pub fn pods(&self) -> Vec<Pod> {
        self.0
            .read()
            .expect("registry lock")
            .values()
            .map(|e| e.pod.clone())
            .collect()
    }
}

/// Shared by the node's tasks.
pub struct NodeContext {
    /// API client.
    pub client: Client,
    /// Settings.
    pub config: NodeConfig,
    /// Secret/ConfigMap/token reads.
    pub objects: Objects,
    /// Pod IPs.
    pub ips: Mutex<IpPool>,
    /// Logs being written.
    pub live_logs: LiveLogs,
    /// Pods running here.
    pub registry: Registry,
    /// CPU and memory of the machine.
    pub capacity: NodeCapacity,
    /// HTTP client of probes (accepts any certificate, as the kubelet does).
    pub probe_client: reqwest::Client,
    recorder: Recorder,
    shutting_down: AtomicBool,
}

impl NodeContext {
    /// Builds the shared context.
    pub fn new(client: Client, config: NodeConfig, capacity: NodeCapacity) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "kubelet".into(),
                instance: Some(config.node_name.clone()),
            },
        );
        let probe_client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .redirect(reqwest::redirect::Policy::limited(10))
            .no_proxy()
            .build()
            .expect("probe HTTP client");
        Arc::new(NodeContext {
            objects: Objects::new(client.clone()),
            ips: Mutex::new(IpPool::new(config.pod_cidr)),
            client,
            config,
            live_logs: LiveLogs::default(),
            registry: Registry::default(),
            capacity,
            probe_client,
            recorder,
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The node is stopping: workers start nothing and publish nothing more.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether [`NodeContext::shut_down`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Publishes an Event about a pod (failures are logged, never fatal).
    pub async fn event(&self, pod: &Pod, warning: bool, reason: &str, note: String) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &pod.object_ref(&())).await {
            tracing::debug!(error = %e, reason, "event not published");
        }
    }
}
