//! The migration's finalizer: added before anything is created, removed once cleanup is done.
//!
//! kube-runtime's `finalizer` helper removes the finalizer as soon as the cleanup function returns,
//! but our cleanup waits for a runner to stop and for a cleanup Job to finish, across several
//! reconciles. So this module keeps the same state split (apply / cleanup) and lets cleanup say
//! "not yet". Both patches carry the object's resourceVersion, so a concurrent change makes them fail
//! (and the reconcile is retried) instead of overwriting another finalizer.

use crd::VMMigration;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::error::Result;

/// Our finalizer.
pub const FINALIZER: &str = "vmmigrations.infra.virtrigaud.io/cleanup";

/// What a reconcile must do with respect to the finalizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not deleting, finalizer missing: add it first.
    Add,
    /// Not deleting, finalizer present: drive the migration.
    Apply,
    /// Deleting, finalizer present: clean up, then remove it.
    Cleanup,
    /// Deleting, finalizer already gone: nothing to do.
    Gone,
}

/// The state of `m`.
pub fn state(m: &VMMigration) -> State {
    let has = m.finalizers().iter().any(|f| f == FINALIZER);
    match (m.metadata.deletion_timestamp.is_some(), has) {
        (false, false) => State::Add,
        (false, true) => State::Apply,
        (true, true) => State::Cleanup,
        (true, false) => State::Gone,
    }
}

async fn set_finalizers(api: &Api<VMMigration>, m: &VMMigration, list: Vec<String>) -> Result<()> {
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": list,
            "resourceVersion": m.resource_version(),
        }
    });
    api.patch(
        &m.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Adds [`FINALIZER`].
pub async fn add(api: &Api<VMMigration>, m: &VMMigration) -> Result<()> {
    let mut list = m.finalizers().to_vec();
    list.push(FINALIZER.to_owned());
    set_finalizers(api, m, list).await
}

/// Removes [`FINALIZER`].
pub async fn remove(api: &Api<VMMigration>, m: &VMMigration) -> Result<()> {
    let list = m
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(api, m, list).await
}
