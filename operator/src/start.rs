//! Why the runner of a running Job has not started, read from the Job's pods and, while it has none,
//! from the Job controller's `FailedCreate` Events: the runner container waiting on its image or
//! its configuration, the pod unschedulable, or the pod refused at creation (Pod Security, a
//! ResourceQuota, another admission check). None of these ends the Job (it would wait for its
//! deadline), so the operator reports them on the migration while they last and gives the attempt
//! up after the start timeout (see [`crate::config::Args::runner_start_timeout`]).

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::events::reason;
use crate::verdict::truncate;

/// The Job controller's Event reason for a pod it could not create.
pub const FAILED_CREATE: &str = "FailedCreate";

/// Container waiting reasons meaning the image cannot be had.
const IMAGE_PROBLEMS: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];
/// Container waiting reasons meaning the container cannot be created or keeps failing.
const START_PROBLEMS: [&str; 4] = [
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
];

/// Every Ready reason a start problem sets.
pub const REASONS: [&str; 6] = [
    reason::RUNNER_IMAGE_PULL_FAILED,
    reason::RUNNER_UNSCHEDULABLE,
    reason::RUNNER_POD_FORBIDDEN,
    reason::RUNNER_QUOTA_EXCEEDED,
    reason::RUNNER_START_FAILED,
    reason::RUNNER_START_TIMEOUT,
];

/// Why the runner cannot start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Ready reason and Event reason, one of [`REASONS`].
    pub reason: &'static str,
    /// What Kubernetes said, e.g. `ImagePullBackOff in pod m-a1-x7k2p` or `FailedCreate`.
    pub cause: String,
    /// Kubernetes' own message (the kubelet's, the scheduler's, the admission's), truncated.
    pub message: String,
}

/// The start of one runner attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// A runner container runs or ran.
    Started,
    /// Not started yet, and why when Kubernetes says.
    Waiting(Option<Problem>),
}

/// Judges the start from the attempt's `pods` and, when it has none, the `events` about its Job.
pub fn judge(pods: &[Pod], events: &[Event]) -> Start {
    if pods.iter().any(started) {
        return Start::Started;
    }
    let newest = pods
        .iter()
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    Start::Waiting(match newest {
        Some(pod) => pod_problem(pod),
        None => create_problem(events),
    })
}

/// Whether the Job was created `timeout` or longer before `now`.
pub fn timed_out(job: &Job, now: &Time, timeout: Duration) -> bool {
    job.metadata
        .creation_timestamp
        .as_ref()
        .is_some_and(|created| crate::apply::until(created, now) >= timeout)
}

fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let status = pod.status.as_ref();
    let init = status.and_then(|s| s.init_container_statuses.as_ref());
    let main = status.and_then(|s| s.container_statuses.as_ref());
    init.into_iter().chain(main).flatten()
}

/// Whether a container of `pod` runs or ran (its termination, if any, is the Job's verdict).
fn started(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            let ran = |s: Option<&ContainerState>| {
                s.is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            };
            ran(c.state.as_ref()) || ran(c.last_state.as_ref())
        })
}

/// An unschedulable pod, or a container waiting for a reason that will not pass by itself.
pub fn pod_problem(pod: &Pod) -> Option<Problem> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let unschedulable = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
    if let Some(c) = unschedulable {
        return Some(problem(
            reason::RUNNER_UNSCHEDULABLE,
            format!("Unschedulable: pod {name}"),
            c.message
                .as_deref()
                .unwrap_or("the pod cannot be scheduled"),
        ));
    }
    statuses(pod).find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let why = waiting.reason.as_deref()?;
        let reason = if IMAGE_PROBLEMS.contains(&why) {
            reason::RUNNER_IMAGE_PULL_FAILED
        } else if START_PROBLEMS.contains(&why) {
            reason::RUNNER_START_FAILED
        } else {
            return None;
        };
        Some(problem(
            reason,
            format!("{why}: container {} of pod {name}", c.name),
            waiting.message.as_deref().unwrap_or(why),
        ))
    })
}

/// The newest `FailedCreate` Event: the Job controller could not create the pod.
pub fn create_problem(events: &[Event]) -> Option<Problem> {
    let newest = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(FAILED_CREATE))
        .max_by_key(|e| event_time(e))?;
    let message = newest.message.as_deref().unwrap_or(FAILED_CREATE);
    // `exceeded quota: ...`, or `status unknown for quota: ...` while a new quota is counted.
    let reason = if message.contains("exceeded quota") || message.contains("for quota:") {
        reason::RUNNER_QUOTA_EXCEEDED
    } else {
        reason::RUNNER_POD_FORBIDDEN
    };
    Some(problem(reason, FAILED_CREATE.into(), message))
}

fn event_time(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn problem(reason: &'static str, cause: String, message: &str) -> Problem {
    Problem {
        reason,
        cause,
        message: truncate(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(status: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "m-a1-x7k2p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": status,
        }))
        .unwrap()
    }

    fn container(state: Value) -> Value {
        json!({"containerStatuses": [{"name": "runner", "image": "virtrigaud/runner:x",
               "imageID": "", "ready": false, "restartCount": 0, "state": state}]})
    }

    fn event(reason: &str, message: &str, at: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": "m-a1.1"}, "involvedObject": {"kind": "Job", "name": "m-a1"},
            "reason": reason, "message": message, "lastTimestamp": at,
        }))
        .unwrap()
    }

    #[test]
    fn image_and_container_problems() {
        let p = pod(container(
            json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}),
        ));
        assert_eq!(
            judge(&[p], &[]),
            Start::Waiting(Some(Problem {
                reason: "RunnerImagePullFailed",
                cause: "ImagePullBackOff: container runner of pod m-a1-x7k2p".into(),
                message: "Back-off pulling image \"x\"".into(),
            }))
        );
        let p = pod(container(
            json!({"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"s\" not found"}}),
        ));
        assert!(
            matches!(judge(&[p], &[]), Start::Waiting(Some(Problem { reason, .. })) if reason == "RunnerStartFailed")
        );
        // Creating the container is no problem, only not started yet.
        let p = pod(container(
            json!({"waiting": {"reason": "ContainerCreating"}}),
        ));
        assert_eq!(judge(&[p], &[]), Start::Waiting(None));
    }

    #[test]
    fn unschedulable_pod() {
        let p = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu."}]}),
        );
        assert!(
            matches!(judge(&[p], &[]), Start::Waiting(Some(Problem { reason, message, .. }))
                if reason == "RunnerUnschedulable" && message == "0/1 nodes are available: 1 Insufficient cpu.")
        );
    }

    #[test]
    fn a_running_or_finished_runner_has_started() {
        let running = pod(container(
            json!({"running": {"startedAt": "2026-01-01T00:00:05Z"}}),
        ));
        assert_eq!(judge(&[running], &[]), Start::Started);
        let ended = pod(container(
            json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
        ));
        assert_eq!(judge(&[ended], &[]), Start::Started);
    }

    #[test]
    fn pods_refused_at_creation() {
        let quota = "Error creating: pods \"m-a1-x\" is forbidden: exceeded quota: none, requested: pods=1, used: pods=0, limited: pods=0";
        let security = "Error creating: pods \"m-a1-x\" is forbidden: violates PodSecurity \"restricted:latest\": privileged";
        let events = [
            event("FailedCreate", quota, "2026-01-01T00:00:01Z"),
            event("FailedCreate", security, "2026-01-01T00:00:09Z"),
            event(
                "SuccessfulCreate",
                "Created pod: m-a1-y",
                "2026-01-01T00:00:10Z",
            ),
        ];
        assert_eq!(
            judge(&[], &events),
            Start::Waiting(Some(Problem {
                reason: "RunnerPodForbidden",
                cause: "FailedCreate".into(),
                message: security.into(),
            }))
        );
        assert!(
            matches!(judge(&[], &events[..1]), Start::Waiting(Some(Problem { reason, .. })) if reason == "RunnerQuotaExceeded")
        );
        assert_eq!(judge(&[], &[]), Start::Waiting(None));
    }

    #[test]
    fn start_timeout_counts_from_the_jobs_creation() {
        let job: Job = serde_json::from_value(
            json!({"metadata": {"name": "m-a1", "creationTimestamp": "2026-01-01T00:00:00Z"}}),
        )
        .unwrap();
        let now = |s: &str| Time(s.parse().unwrap());
        let ten = Duration::from_secs(600);
        assert!(!timed_out(&job, &now("2026-01-01T00:09:59Z"), ten));
        assert!(timed_out(&job, &now("2026-01-01T00:10:00Z"), ten));
    }
}
