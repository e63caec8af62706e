//! The admission service: parses an AdmissionReview once, answers `invalid` for a malformed body, and
//! dispatches by kind to a [`Validate`] implementation, whose [`Verdict`] becomes the response.

use std::sync::Arc;

use k8s_openapi::api::authentication::v1::UserInfo;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::de::DeserializeOwned;

use crate::cluster::Cluster;
use crate::endpoints::{AddressPolicy, Resolve};

/// One reason to deny, naming the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path of the field, e.g. `spec.storage.bucket`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// What a validator concluded: every violation found (the request is allowed when there is none) and
/// warnings for risky but legal choices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub violations: Vec<Violation>,
    pub warnings: Vec<String>,
}

impl Verdict {
    /// Records a violation of `field`.
    pub fn deny(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.violations.push(Violation {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records a warning.
    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// No violation.
    pub fn is_allowed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The denial message: every violation, `field: message`, joined by `; `.
    pub fn message(&self) -> String {
        self.violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A verdict with a single violation.
    pub fn denied(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut verdict = Verdict::default();
        verdict.deny(field, message);
        verdict
    }
}

/// What a validator sees of a request besides the object itself.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Namespace of the object (empty when the request has none).
    pub namespace: &'a str,
    /// Name of the object (empty when it has none).
    pub name: &'a str,
    /// The user making the request, as the API server authenticated them.
    pub user: &'a UserInfo,
}

/// Validation of one kind whose spec parses into `T`.
#[async_trait::async_trait]
pub trait Validate<T: DeserializeOwned + Send + 'static>: Send + Sync {
    /// A CREATE of an object with `spec`.
    async fn create(&self, request: &Request<'_>, spec: T) -> Verdict;
    /// An UPDATE, given the old and new `spec` as sent (so nothing is lost to parsing). By default
    /// an unchanged spec passes and a changed one is checked as a create of the new one.
    async fn update(
        &self,
        request: &Request<'_>,
        old: Option<&serde_json::Value>,
        new: Option<&serde_json::Value>,
    ) -> Verdict {
        if old == new {
            return Verdict::default();
        }
        match parse_spec::<T>(new) {
            Ok(spec) => self.create(request, spec).await,
            Err(violation) => Verdict {
                violations: vec![violation],
                warnings: vec![],
            },
        }
    }
}

/// How a request ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    /// The body was not a readable AdmissionReview.
    Invalid,
}

impl Outcome {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
        }
    }
}

/// The admission service and what its validators need.
pub struct Admission {
    pub cluster: Arc<dyn Cluster>,
    pub resolver: Arc<dyn Resolve>,
    pub addresses: AddressPolicy,
}

impl Admission {
    /// Answers one AdmissionReview body. Never panics on any input; a body that is not an AdmissionReview
    /// with a request gets an `invalid` response.
    pub async fn review(
        &self,
        body: &[u8],
    ) -> (AdmissionReview<DynamicObject>, Option<Operation>, Outcome) {
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
            Ok(review) => review,
            Err(error) => return invalid(format!("malformed AdmissionReview: {error}")),
        };
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(request) => request,
            Err(_) => return invalid("malformed AdmissionReview: no request".to_owned()),
        };
        let operation = request.operation.clone();
        let verdict = self.dispatch(&request).await;
        let mut response = AdmissionResponse::from(&request);
        let outcome = if verdict.is_allowed() {
            Outcome::Allowed
        } else {
            let message = verdict.message();
            tracing::info!(
                namespace = request.namespace.as_deref().unwrap_or_default(),
                name = %request.name,
                user = request.user_info.username.as_deref().unwrap_or_default(),
                %message,
                "denied"
            );
            response = response.deny(message);
            Outcome::Denied
        };
        if !verdict.warnings.is_empty() {
            response.warnings = Some(verdict.warnings);
        }
        (response.into_review(), Some(operation), outcome)
    }

    async fn dispatch(&self, request: &AdmissionRequest<DynamicObject>) -> Verdict {
        let kind = &request.kind;
        if request.sub_resource.is_some() {
            // Status and other subresources are written by the operator and the runner; only the main
            // resource is validated.
            return Verdict::default();
        }
        match (
            kind.group.as_str(),
            kind.version.as_str(),
            kind.kind.as_str(),
        ) {
            (crd::GROUP, crd::VERSION, "VMMigration") => {
                self.admit::<crd::VMMigrationSpec>(request).await
            }
            (crd::GROUP, crd::VERSION, "Provider") => {
                self.admit::<crd::ProviderSpec>(request).await
            }
            (crd::GROUP, crd::VERSION, "VirtualMachine") => {
                self.admit::<crd::VirtualMachineSpec>(request).await
            }
            (group, version, kind) => Verdict::denied(
                "kind",
                format!(
                    "this webhook validates {}/{} VMMigration, Provider and VirtualMachine, not \
                     {group}/{version} {kind}",
                    crd::GROUP,
                    crd::VERSION
                ),
            ),
        }
    }

    async fn admit<T>(&self, request: &AdmissionRequest<DynamicObject>) -> Verdict
    where
        T: DeserializeOwned + Send + 'static,
        Self: Validate<T>,
    {
        let object = request.object.as_ref();
        let namespace = request
            .namespace
            .as_deref()
            .or_else(|| object.and_then(|o| o.metadata.namespace.as_deref()))
            .unwrap_or_default();
        let name = object
            .and_then(|o| o.metadata.name.as_deref())
            .filter(|n| !n.is_empty())
            .unwrap_or(&request.name);
        let context = Request {
            namespace,
            name,
            user: &request.user_info,
        };
        match request.operation {
            Operation::Create => match object.map(|o| parse_spec::<T>(o.data.get("spec"))) {
                None => Verdict::denied("object", "a CREATE request must carry the object"),
                Some(Err(violation)) => Verdict {
                    violations: vec![violation],
                    warnings: vec![],
                },
                Some(Ok(spec)) => self.create(&context, spec).await,
            },
            Operation::Update => {
                let old = request.old_object.as_ref().and_then(|o| o.data.get("spec"));
                let new = object.and_then(|o| o.data.get("spec"));
                self.update(&context, old, new).await
            }
            Operation::Delete | Operation::Connect => Verdict::default(),
        }
    }
}

fn invalid(reason: String) -> (AdmissionReview<DynamicObject>, Option<Operation>, Outcome) {
    tracing::debug!(%reason, "invalid admission request");
    (
        AdmissionResponse::invalid(reason).into_review(),
        None,
        Outcome::Invalid,
    )
}

/// Parses a spec, naming the path of the offending field when it does not fit the type, e.g.
/// `spec.storage.type: unknown variant `ftp`, expected one of `s3`, `http`, `nfs``.
pub fn parse_spec<T: DeserializeOwned>(spec: Option<&serde_json::Value>) -> Result<T, Violation> {
    let Some(spec) = spec else {
        return Err(Violation {
            field: "spec".into(),
            message: "is required".into(),
        });
    };
    serde_path_to_error::deserialize(spec).map_err(|error| {
        let path = error.path().to_string();
        let mut field = if path == "." {
            "spec".to_owned()
        } else {
            format!("spec.{path}")
        };
        let mut message = error.into_inner().to_string();
        // serde names a missing field in the message, with the path of its parent: move it to the path.
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
        {
            field = format!("{field}.{missing}");
            message = "is required".into();
        }
        Violation { field, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn type_errors_name_the_field_path() {
        let err = parse_spec::<crd::StorageSpec>(Some(&json!({"type": "ftp"}))).unwrap_err();
        assert_eq!(err.field, "spec.type");
        assert!(
            err.message.contains("`s3`, `http`, `nfs`"),
            "{}",
            err.message
        );

        let err = parse_spec::<crd::VMMigrationSpec>(Some(&json!({
            "sourceName": "a", "targetName": "b", "targetProviderRef": {"name": "p"},
            "storage": {"type": "s3", "bucket": "bkt"},
            "targetNetworkHints": [{"name": "eth0", "bridge": 5}]
        })))
        .unwrap_err();
        assert_eq!(err.field, "spec.targetNetworkHints[0].bridge");

        let err =
            parse_spec::<crd::VMMigrationSpec>(Some(&json!({"sourceName": "a"}))).unwrap_err();
        assert_eq!(err.field, "spec.targetProviderRef");
        assert_eq!(err.message, "is required");

        assert_eq!(
            parse_spec::<crd::VMMigrationSpec>(None).unwrap_err().field,
            "spec"
        );
    }

    #[test]
    fn the_message_joins_every_violation() {
        let mut verdict = Verdict::default();
        assert!(verdict.is_allowed());
        verdict.deny("spec.a", "bad");
        verdict.deny("spec.b", "worse");
        assert!(!verdict.is_allowed());
        assert_eq!(verdict.message(), "spec.a: bad; spec.b: worse");
    }
}
