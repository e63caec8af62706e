//! Idempotent create and delete of the objects a migration owns: what makes a restarted operator
//! harmless, and what keeps it from taking over anything else. Every object has a deterministic
//! name, so "create" answering AlreadyExists means an earlier reconcile (perhaps of an earlier
//! operator process) already made it, when the object found is owned (controller reference) by the
//! same VMMigration; an object of that name owned by anything else is never used, and never deleted.

use std::fmt::Debug;

use kube::api::{DeleteParams, PostParams, Preconditions, PropagationPolicy};
use kube::{Api, Error as KubeError, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Whether a create made the object or found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// This call created it.
    New,
    /// It existed already, made by this migration.
    Existing,
}

/// The HTTP status of an API error, if the error is one.
pub fn api_code(e: &KubeError) -> Option<u16> {
    match e {
        KubeError::Api(status) => Some(status.code),
        _ => None,
    }
}

/// UID of the controller owner of `obj`.
fn controller_uid<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// Whether `obj`'s controller is the object with UID `owner`.
pub fn owned_by<K: Resource>(obj: &K, owner: &str) -> bool {
    controller_uid(obj) == Some(owner)
}

/// Creates `obj` (which names its controller owner); an existing object of that name is success
/// only when the same owner controls it, else [`Error::NotOwned`].
pub async fn create<K>(api: &Api<K>, obj: &K) -> Result<Created>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(Created::New),
        Err(e) if api_code(&e) == Some(409) => {
            let name = obj.name_any();
            let existing = api.get(&name).await?;
            match controller_uid(obj) {
                Some(owner) if owned_by(&existing, owner) => Ok(Created::Existing),
                _ => Err(Error::NotOwned {
                    kind: K::kind(&()).to_string(),
                    name,
                }),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes `name` with `propagation` when the object with UID `owner` controls it; absent is
/// success, one owned by anything else is left alone.
pub async fn delete<K>(
    api: &Api<K>,
    name: &str,
    owner: &str,
    propagation: PropagationPolicy,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    match api.get_opt(name).await? {
        Some(existing) => delete_object(api, &existing, owner, propagation).await,
        None => Ok(()),
    }
}

/// Deletes `obj` (as read: the delete is conditional on its UID) when the object with UID `owner`
/// controls it; one owned by anything else is left alone.
pub async fn delete_object<K>(
    api: &Api<K>,
    obj: &K,
    owner: &str,
    propagation: PropagationPolicy,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let name = obj.name_any();
    if !owned_by(obj, owner) {
        tracing::warn!(
            "{} {name} is not owned by this migration: left alone",
            K::kind(&())
        );
        return Ok(());
    }
    let params = DeleteParams {
        propagation_policy: Some(propagation),
        preconditions: Some(Preconditions {
            uid: obj.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(e) if api_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
