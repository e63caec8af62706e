//! Types shared by the kinds of this API group.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A reference to a namespaced object of this API group (a Provider or a VirtualMachine).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Name of the referenced object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the referenced object. Defaults to the namespace of the object that holds the reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

impl ObjectRef {
    /// The namespace this reference points into, given the namespace of the referring object.
    pub fn namespace_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(default)
    }
}

/// A reference to a Secret holding credentials.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret. For a VMMigration it must be the migration's own namespace (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

impl SecretRef {
    /// The namespace this reference points into, given the namespace of the referring object.
    pub fn namespace_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(default)
    }
}

/// Whether a condition holds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// One observation about an object, in the Kubernetes condition shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition, e.g. `Validated`, `Transferring`, `Ready`. Unique within the list.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 316))]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason for the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail, e.g. "Uploading disk (45% complete, 4.5GB/10GB)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status last changed.
    pub last_transition_time: Time,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A new condition stamped with the current time.
    pub fn new(
        type_: impl Into<String>,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            type_: type_.into(),
            status,
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
            observed_generation: None,
        }
    }
}

/// Merges `new` into `conditions`, keeping the old `lastTransitionTime` when the status did not change
/// (the Kubernetes convention: the time marks a transition, not an update).
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
        }
        None => conditions.push(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut list = vec![];
        let mut first = Condition::new("Transferring", ConditionStatus::True, "Uploading", "1%");
        first.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        set_condition(&mut list, first);
        set_condition(
            &mut list,
            Condition::new("Transferring", ConditionStatus::True, "Uploading", "50%"),
        );
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].message.as_deref(), Some("50%"));
        assert_eq!(
            list[0].last_transition_time.0,
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH
        );

        set_condition(
            &mut list,
            Condition::new("Transferring", ConditionStatus::False, "Failed", "boom"),
        );
        assert_ne!(
            list[0].last_transition_time.0,
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH
        );
        set_condition(
            &mut list,
            Condition::new("Ready", ConditionStatus::False, "Pending", ""),
        );
        assert_eq!(list.len(), 2);
    }
}
