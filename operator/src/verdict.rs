//! How a runner Job ended, read from the Job's conditions and the runner container's termination
//! state (exit code and the [`RunnerOutcome`] JSON it wrote to its termination message).

use crd::plan::{self, RunnerOutcome};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};

use crate::builder::CONTAINER;

/// Longest error text copied into status and Events.
pub const MAX_MESSAGE: usize = 1024;

/// The state of one runner Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still running (or not yet started).
    Running,
    /// The runner finished its work.
    Succeeded {
        /// The target VM's hypervisor id, when the runner reported it.
        target_vm_id: Option<String>,
    },
    /// The runner failed.
    Failed {
        /// Whether a later attempt may succeed.
        retryable: bool,
        /// CamelCase reason, e.g. `StorageAuthFailed`, `DeadlineExceeded`.
        reason: String,
        /// One readable line.
        message: String,
    },
}

fn condition_true(job: &Job, type_: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_else(|| type_.to_owned()),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// Cuts `s` to at most [`MAX_MESSAGE`] bytes on a character boundary.
pub fn truncate(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The runner container's termination state in the newest pod of the Job.
fn terminated(pods: &[Pod]) -> Option<&ContainerStateTerminated> {
    let newest = pods
        .iter()
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
    newest
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

/// Whether the Job has ended (succeeded or failed).
pub fn finished(job: &Job) -> bool {
    let status = job.status.clone().unwrap_or_default();
    let active = status.active.unwrap_or(0);
    condition_true(job, "Complete").is_some()
        || condition_true(job, "Failed").is_some()
        || ((status.succeeded.unwrap_or(0) > 0 || status.failed.unwrap_or(0) > 0) && active == 0)
}

/// Judges a Job from its conditions and its pods. A Job counts as finished when its `Complete` or
/// `Failed` condition is true (or its succeeded/failed counters say so with nothing active). A failure
/// is terminal when the runner said so (exit code [`plan::EXIT_TERMINAL`], or an outcome with
/// `retryable: false`); a pod that vanished, was killed or ran out of time is retryable.
pub fn judge(job: &Job, pods: &[Pod]) -> Verdict {
    if !finished(job) {
        return Verdict::Running;
    }
    let status = job.status.clone().unwrap_or_default();
    let failed = condition_true(job, "Failed");
    let succeeded = condition_true(job, "Complete").is_some()
        || (failed.is_none() && status.succeeded.unwrap_or(0) > 0);

    let term = terminated(pods);
    let outcome: Option<RunnerOutcome> = term
        .and_then(|t| t.message.as_deref())
        .and_then(|m| serde_json::from_str(m.trim()).ok());

    if succeeded {
        return Verdict::Succeeded {
            target_vm_id: outcome.and_then(|o| o.target_vm_id),
        };
    }

    let exit_code = term.map(|t| t.exit_code);
    match outcome {
        Some(o) if !o.succeeded => Verdict::Failed {
            retryable: o.retryable && exit_code != Some(plan::EXIT_TERMINAL),
            reason: o.reason,
            message: truncate(&o.message),
        },
        _ => {
            let (job_reason, job_message) = failed.unwrap_or_else(|| ("Failed".into(), "".into()));
            match exit_code {
                Some(plan::EXIT_TERMINAL) => Verdict::Failed {
                    retryable: false,
                    reason: "RunnerTerminalError".into(),
                    message: format!(
                        "runner exited with code {} (terminal) without a readable outcome",
                        plan::EXIT_TERMINAL
                    ),
                },
                Some(code) => Verdict::Failed {
                    retryable: true,
                    reason: term
                        .and_then(|t| t.reason.clone())
                        .filter(|r| r != "Error" && r != "Completed")
                        .unwrap_or_else(|| "RunnerFailed".into()),
                    message: format!("runner exited with code {code}"),
                },
                None => Verdict::Failed {
                    retryable: true,
                    reason: if job_reason == "BackoffLimitExceeded" {
                        "RunnerPodLost".into()
                    } else {
                        job_reason.clone()
                    },
                    message: if job_message.is_empty() {
                        format!("runner Job failed ({job_reason}) without a termination state")
                    } else {
                        truncate(&job_message)
                    },
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(conditions: serde_json::Value, counts: serde_json::Value) -> Job {
        let mut status = counts;
        status["conditions"] = conditions;
        serde_json::from_value(json!({"metadata": {"name": "m-a1"}, "status": status})).unwrap()
    }

    fn pod(exit_code: i32, reason: &str, message: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "m-a1-xyz", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"containerStatuses": [{
                "name": "runner", "image": "virtrigaud/runner:dev", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "reason": reason, "message": message}}
            }]}
        }))
        .unwrap()
    }

    fn outcome(succeeded: bool, retryable: bool, reason: &str) -> String {
        serde_json::to_string(&RunnerOutcome {
            succeeded,
            retryable,
            reason: reason.into(),
            message: format!("{reason} happened"),
            target_vm_id: succeeded.then(|| "vm-42".into()),
        })
        .unwrap()
    }

    #[test]
    fn running_job() {
        let j = job(json!([]), json!({"active": 1}));
        assert_eq!(judge(&j, &[]), Verdict::Running);
        // FailureTarget is set before the pod is gone: still running until Failed.
        let j = job(
            json!([{"type": "FailureTarget", "status": "True"}]),
            json!({"active": 1}),
        );
        assert_eq!(judge(&j, &[]), Verdict::Running);
    }

    #[test]
    fn success_carries_the_target_id() {
        let j = job(
            json!([{"type": "Complete", "status": "True"}]),
            json!({"succeeded": 1}),
        );
        let p = pod(0, "Completed", Some(&outcome(true, false, "Completed")));
        assert_eq!(
            judge(&j, &[p]),
            Verdict::Succeeded {
                target_vm_id: Some("vm-42".into())
            }
        );
    }

    #[test]
    fn terminal_and_retryable_outcomes() {
        let failed = job(
            json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
            json!({"failed": 1}),
        );
        let p = pod(
            2,
            "Error",
            Some(&outcome(false, false, "StorageAuthFailed")),
        );
        assert_eq!(
            judge(&failed, &[p]),
            Verdict::Failed {
                retryable: false,
                reason: "StorageAuthFailed".into(),
                message: "StorageAuthFailed happened".into()
            }
        );
        let p = pod(
            1,
            "Error",
            Some(&outcome(false, true, "StorageUnavailable")),
        );
        assert!(
            matches!(judge(&failed, &[p]), Verdict::Failed { retryable: true, reason, .. } if reason == "StorageUnavailable")
        );
        // Exit code 2 wins over an outcome claiming retryable.
        let p = pod(2, "Error", Some(&outcome(false, true, "Odd")));
        assert!(matches!(
            judge(&failed, &[p]),
            Verdict::Failed {
                retryable: false,
                ..
            }
        ));
        // Exit 2 without an outcome is terminal, exit 137 (killed) retryable.
        let p = pod(2, "Error", None);
        assert!(
            matches!(judge(&failed, &[p]), Verdict::Failed { retryable: false, reason, .. } if reason == "RunnerTerminalError")
        );
        let p = pod(137, "OOMKilled", Some("not json"));
        assert_eq!(
            judge(&failed, &[p]),
            Verdict::Failed {
                retryable: true,
                reason: "OOMKilled".into(),
                message: "runner exited with code 137".into()
            }
        );
    }

    #[test]
    fn lost_pod_and_deadline_are_retryable() {
        let lost = job(
            json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]),
            json!({"failed": 1}),
        );
        assert_eq!(
            judge(&lost, &[]),
            Verdict::Failed {
                retryable: true,
                reason: "RunnerPodLost".into(),
                message: "Job has reached the specified backoff limit".into()
            }
        );
        let deadline = job(
            json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]),
            json!({"failed": 1}),
        );
        assert!(
            matches!(judge(&deadline, &[]), Verdict::Failed { retryable: true, reason, .. } if reason == "DeadlineExceeded")
        );
    }

    #[test]
    fn long_messages_are_cut() {
        let s = "é".repeat(MAX_MESSAGE);
        let t = truncate(&s);
        assert!(t.len() <= MAX_MESSAGE + 3 && t.ends_with("..."));
    }
}
