//! Leader election with a `coordination.k8s.io` Lease, so two replicas never reconcile at once.
//! A replica that loses the Lease exits (the controller keeps no state, so a restart is safe).

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// Seconds a Lease stays valid without renewal.
pub const LEASE_DURATION: u64 = 15;
/// Seconds before expiry the holder renews.
pub const LEASE_GRACE: u64 = 5;

/// The held Lease.
pub struct Leadership {
    state: watch::Receiver<bool>,
}

/// Waits until this replica holds Lease `name` in `namespace`.
pub async fn acquire(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> Result<Leadership> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_DURATION)
        .with_grace(LEASE_GRACE)
        .with_field_manager(crate::status::FIELD_MANAGER)
        .build()
        .await
        .map_err(Error::LeaderElection)?;
    let (mut state, _task) = manager.watch().await;
    tracing::info!(lease = name, namespace, identity, "waiting for leadership");
    state
        .wait_for(|leader| *leader)
        .await
        .map_err(|_| Error::Config("leader election task ended".into()))?;
    tracing::info!(lease = name, identity, "acquired leadership");
    Ok(Leadership { state })
}

impl Leadership {
    /// Resolves when the Lease is lost.
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }
}
