//! Watches the pods bound to this node and hands each to its worker (one per pod uid).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::context::NodeContext;
use crate::pod_worker;

struct Handle {
    tx: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// Runs until the watch stream ends (it retries with back-off on errors, so practically forever).
pub async fn run(ctx: Arc<NodeContext>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config =
        watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.config.node_name));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut listed: Vec<String> = Vec::new();
    // uids whose worker has finished (pod deleted): late events about them are ignored
    let mut done: HashSet<String> = HashSet::new();
    while let Some(event) = events.next().await {
        workers.retain(|uid, h| {
            let finished = h.task.is_finished();
            if finished {
                done.insert(uid.clone());
            }
            !finished
        });
        match event {
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(pod)) => {
                listed.push(uid(&pod));
                dispatch(&ctx, &mut workers, &done, pod);
            }
            Ok(Event::InitDone) => {
                // pods that disappeared while the watch was down
                for (uid, h) in workers.iter() {
                    if !listed.contains(uid) {
                        let _ = h.tx.send(None);
                    }
                }
            }
            Ok(Event::Apply(pod)) => dispatch(&ctx, &mut workers, &done, pod),
            Ok(Event::Delete(pod)) => {
                if let Some(h) = workers.get(&uid(&pod)) {
                    let _ = h.tx.send(None);
                }
            }
            Err(e) => tracing::warn!(error = %e, "pod watch error"),
        }
    }
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn dispatch(
    ctx: &Arc<NodeContext>,
    workers: &mut HashMap<String, Handle>,
    done: &HashSet<String>,
    pod: Pod,
) {
    let id = uid(&pod);
    if done.contains(&id) {
        return;
    }
    match workers.get(&id) {
        Some(h) => {
            let _ = h.tx.send(Some(pod));
        }
        None => {
            tracing::info!(
                pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or("")),
                uid = %id,
                "pod bound to this node"
            );
            let (tx, task) = pod_worker::spawn(ctx.clone(), pod);
            workers.insert(id, Handle { tx, task });
        }
    }
}
