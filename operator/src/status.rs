//! The part of `VMMigration.status` the operator owns, written with server-side apply as field
//! manager [`FIELD_MANAGER`].
//!
//! Server-side apply removes the fields a manager owned and no longer sends, so every write starts
//! from [`OperatorStatus::carried_over`] (the operator's fields as they are) and changes only what
//! the transition changes. The runner owns the pipeline phases, progress, disks and its conditions
//! (field manager `virtrigaud-runner`); both force `phase` and `message`, the last writer wins.

use crd::{Condition, ConditionStatus, Phase, PinnedReference, VMMigrationStatus, set_condition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

/// Field manager of the operator's patches.
pub const FIELD_MANAGER: &str = "virtrigaud-operator";
/// The one condition the operator sets.
pub const READY: &str = "Ready";

/// The operator's status fields.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OperatorStatus {
    /// Current phase: the operator writes Pending, Ready and Failed, and repeats the current phase
    /// otherwise (so its earlier value is not removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// A readable summary, sent on the operator's own transitions only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When attempt 1 started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the migration ended (Ready or Failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Current attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// When the next attempt starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry_time: Option<Time>,
    /// The error that ended the previous attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The target VM's id, when the runner did not record it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_vm_id: Option<String>,
    /// Only the `Ready` condition.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The references pinned at the first launch.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<PinnedReference>,
    /// The `virtrigaud.io/retry` annotation value last acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_request: Option<String>,
}

impl OperatorStatus {
    /// The operator's fields of `current`, unchanged (message and targetVmId are not carried).
    pub fn carried_over(current: &VMMigrationStatus) -> Self {
        OperatorStatus {
            phase: current.phase,
            message: None,
            start_time: current.start_time.clone(),
            completion_time: current.completion_time.clone(),
            attempt: current.attempt,
            next_retry_time: current.next_retry_time.clone(),
            last_error: current.last_error.clone(),
            target_vm_id: None,
            conditions: current
                .conditions
                .iter()
                .filter(|c| c.type_ == READY)
                .cloned()
                .collect(),
            references: current.references.clone(),
            retry_request: current.retry_request.clone(),
        }
    }

    /// Sets the `Ready` condition, keeping its transition time when the status is unchanged.
    pub fn set_ready(&mut self, status: ConditionStatus, reason: &str, message: &str, now: &Time) {
        let mut condition = Condition::new(READY, status, reason, message);
        condition.last_transition_time = now.clone();
        set_condition(&mut self.conditions, condition);
    }

    /// The server-side apply document for the status subresource.
    pub fn apply_document(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": format!("{}/{}", crd::GROUP, crd::VERSION),
            "kind": "VMMigration",
            "status": self,
        })
    }

    /// Writes the fields back into a full status, so later steps of the same reconcile see them.
    pub fn merge_into(&self, status: &mut VMMigrationStatus) {
        status.phase = self.phase;
        if self.message.is_some() {
            status.message = self.message.clone();
        }
        status.start_time = self.start_time.clone();
        status.completion_time = self.completion_time.clone();
        status.attempt = self.attempt;
        status.next_retry_time = self.next_retry_time.clone();
        status.last_error = self.last_error.clone();
        if self.target_vm_id.is_some() {
            status.target_vm_id = self.target_vm_id.clone();
        }
        for c in &self.conditions {
            set_condition(&mut status.conditions, c.clone());
        }
        status.references = self.references.clone();
        status.retry_request = self.retry_request.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn t(s: &str) -> Time {
        Time(s.parse::<Timestamp>().unwrap())
    }

    #[test]
    fn carries_over_only_operator_fields() {
        let current: VMMigrationStatus = serde_json::from_value(json!({
            "phase": "Transferring", "progress": 45, "message": "Uploading disk",
            "startTime": "2026-01-01T10:00:00Z", "attempt": 2, "lastError": "S3 503",
            "targetVmId": "x",
            "conditions": [
                {"type": "Validated", "status": "True", "lastTransitionTime": "2026-01-01T10:00:05Z"},
                {"type": "Ready", "status": "False", "reason": "InProgress", "lastTransitionTime": "2026-01-01T10:00:00Z"}
            ]
        }))
        .unwrap();
        let doc = OperatorStatus::carried_over(&current).apply_document();
        assert_eq!(
            doc,
            json!({
                "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VMMigration",
                "status": {
                    "phase": "Transferring", "startTime": "2026-01-01T10:00:00Z", "attempt": 2,
                    "lastError": "S3 503",
                    "conditions": [{"type": "Ready", "status": "False", "reason": "InProgress",
                                    "lastTransitionTime": "2026-01-01T10:00:00Z"}]
                }
            })
        );
    }

    #[test]
    fn ready_transition_time_moves_only_on_change() {
        let mut s = OperatorStatus::default();
        s.set_ready(
            ConditionStatus::False,
            "Pending",
            "a",
            &t("2026-01-01T10:00:00Z"),
        );
        s.set_ready(
            ConditionStatus::False,
            "RetryScheduled",
            "b",
            &t("2026-01-01T11:00:00Z"),
        );
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(
            s.conditions[0].last_transition_time,
            t("2026-01-01T10:00:00Z")
        );
        assert_eq!(s.conditions[0].reason.as_deref(), Some("RetryScheduled"));
        s.set_ready(
            ConditionStatus::True,
            "Succeeded",
            "c",
            &t("2026-01-01T12:00:00Z"),
        );
        assert_eq!(
            s.conditions[0].last_transition_time,
            t("2026-01-01T12:00:00Z")
        );
    }
}
