//! Kubernetes Events (events.k8s.io/v1) the operator publishes on a VMMigration: one per phase change,
//! Job launch, runner start problem, retry and cleanup step. Events are best effort: a failure to publish one is logged and
//! never fails a reconcile (the state change it describes has already been written).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};

/// Event reasons (CamelCase, stable: users filter on them).
pub mod reason {
    /// A new migration was accepted (phase Pending, attempt 1).
    pub const PENDING: &str = "Pending";
    /// A runner Job was created.
    pub const JOB_LAUNCHED: &str = "JobLaunched";
    // A pipeline phase the runner entered is published with the phase's name as the reason
    // (`Validating`, `Snapshotting`, ..., `ValidatingTarget`).
    /// An attempt failed with a transient error; the next one is scheduled.
    pub const RETRY_SCHEDULED: &str = "RetryScheduled";
    /// The migration waits for a slot on one of its Providers (spec.maxConcurrentMigrations); also
    /// the Ready condition's reason while it waits.
    pub const QUEUED: &str = "Queued";
    /// A Failed migration starts a new attempt because the `virtrigaud.io/retry` annotation got a
    /// new value; also the Ready condition's reason until the runner reports.
    pub const RETRY_REQUESTED: &str = "RetryRequested";
    /// A new `virtrigaud.io/retry` value on a migration that is not Failed (Ready, or still
    /// running): nothing is done.
    pub const RETRY_REFUSED: &str = "RetryRefused";
    /// The migration failed for good.
    pub const FAILED: &str = "Failed";
    /// The migration reached Ready.
    pub const SUCCEEDED: &str = "Succeeded";
    /// A referenced object is missing; the operator waits for it a little.
    pub const WAITING_FOR_REFERENCE: &str = "WaitingForReference";
    /// The target VirtualMachine object could not be written.
    pub const TARGET_INVENTORY_FAILED: &str = "TargetInventoryFailed";
    /// The migration is being deleted: its running Job is stopped.
    pub const STOPPING: &str = "StoppingRunner";
    /// A cleanup run was launched.
    pub const CLEANUP_STARTED: &str = "CleanupStarted";
    /// The cleanup run succeeded.
    pub const CLEANUP_SUCCEEDED: &str = "CleanupSucceeded";
    /// The cleanup run failed; deletion goes on.
    pub const CLEANUP_FAILED: &str = "CleanupFailed";
    /// No cleanup run was possible (references gone, namespace terminating).
    pub const CLEANUP_SKIPPED: &str = "CleanupSkipped";
    // Why a runner pod does not start (see `crate::start`): each is also the Ready condition's
    // reason while it lasts, and the attempt's failure reason at the start timeout.
    /// The runner image cannot be pulled (ErrImagePull, ImagePullBackOff, InvalidImageName).
    pub const RUNNER_IMAGE_PULL_FAILED: &str = "RunnerImagePullFailed";
    /// The scheduler finds no node for the runner pod.
    pub const RUNNER_UNSCHEDULABLE: &str = "RunnerUnschedulable";
    /// The runner pod is refused at creation (Pod Security, another admission check).
    pub const RUNNER_POD_FORBIDDEN: &str = "RunnerPodForbidden";
    /// The runner pod is refused at creation by a ResourceQuota.
    pub const RUNNER_QUOTA_EXCEEDED: &str = "RunnerQuotaExceeded";
    /// The runner container cannot be created or keeps crashing (CreateContainerConfigError,
    /// CreateContainerError, RunContainerError, CrashLoopBackOff).
    pub const RUNNER_START_FAILED: &str = "RunnerStartFailed";
    /// The runner did not start within the start timeout, Kubernetes naming no reason.
    pub const RUNNER_START_TIMEOUT: &str = "RunnerStartTimeout";
}

/// What the operator was doing when it published (the Event's `action`).
pub mod action {
    /// Reconciling the migration's state.
    pub const RECONCILE: &str = "Reconcile";
    /// Launching a runner Job.
    pub const LAUNCH: &str = "Launch";
    /// Waiting for a runner to start.
    pub const START: &str = "Start";
    /// Scheduling a retry.
    pub const RETRY: &str = "Retry";
    /// Finishing the migration.
    pub const COMPLETE: &str = "Complete";
    /// Deleting the migration.
    pub const CLEANUP: &str = "Cleanup";
}

/// Publishes one Event about `regarding` (and `related`, e.g. the runner Job); logs instead of
/// failing. The recorder folds Events with the same type, reason, action, regarding and related
/// object into one series, so each Job gets its own Events.
pub async fn publish(
    recorder: &Recorder,
    regarding: &ObjectReference,
    related: Option<ObjectReference>,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: related,
    };
    if let Err(e) = recorder.publish(&event, regarding).await {
        tracing::warn!(
            reason,
            object = regarding.name.as_deref().unwrap_or_default(),
            error = %e,
            "could not publish Event"
        );
    }
}
