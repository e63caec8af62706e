//! An NFC lease held by a session: waited ready, kept alive with `HttpNfcLeaseProgress` while disks
//! move (vCenter drops a lease that reports no progress for its `leaseTimeout`), and ended with
//! Complete or Abort.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::{Client, LeaseInfo, MoRef};
use crate::Result;

/// How long a lease may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How often progress is reported while the lease is held.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// A ready lease and its keep-alive task. Dropping it stops the keep-alive (the server then times
/// the lease out); `complete` or `abort` end it explicitly.
pub(super) struct Lease {
    client: Arc<Client>,
    pub moref: MoRef,
    pub info: LeaseInfo,
    percent: Arc<AtomicU8>,
    keepalive: JoinHandle<()>,
}

impl Lease {
    /// Waits until `moref` is ready and starts reporting progress every few seconds.
    pub async fn open(client: &Arc<Client>, moref: MoRef) -> Result<Lease> {
        let info = client
            .lease_wait_ready(&moref, Instant::now() + READY_TIMEOUT)
            .await?;
        let percent = Arc::new(AtomicU8::new(0));
        let keepalive = tokio::spawn(keep_alive(client.clone(), moref.clone(), percent.clone()));
        Ok(Lease {
            client: client.clone(),
            moref,
            info,
            percent,
            keepalive,
        })
    }

    /// Sets the progress the next keep-alive reports (0-100).
    pub fn set_percent(&self, percent: u8) {
        self.percent.store(percent.min(100), Ordering::Relaxed);
    }

    /// Reports 100% and completes the lease.
    pub async fn complete(self) -> Result<()> {
        self.keepalive.abort();
        self.client.lease_progress(&self.moref, 100).await?;
        self.client.lease_complete(&self.moref).await
    }

    /// Aborts the lease.
    pub async fn abort(self, message: &str) -> Result<()> {
        self.keepalive.abort();
        self.client.lease_abort(&self.moref, message).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

async fn keep_alive(client: Arc<Client>, lease: MoRef, percent: Arc<AtomicU8>) {
    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = client
            .lease_progress(&lease, percent.load(Ordering::Relaxed))
            .await
        {
            tracing::warn!("keeping NFC lease {} alive: {e}", lease.value);
        }
    }
}

/// Percent of `done` out of `total` steps, each `fraction` through (for a lease's progress).
pub(super) fn percent(done: usize, total: usize, fraction: f64) -> u8 {
    if total == 0 {
        return 0;
    }
    (((done as f64 + fraction.clamp(0.0, 1.0)) / total as f64) * 100.0).min(99.0) as u8
}
