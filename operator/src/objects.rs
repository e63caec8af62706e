//! Idempotent create and delete: what makes a restarted operator harmless. Every object has a
//! deterministic name, so "create" answering AlreadyExists means an earlier reconcile (perhaps of an
//! earlier operator process) already made it, and "delete" answering NotFound means it is gone.

use std::fmt::Debug;

use kube::api::{DeleteParams, PostParams, PropagationPolicy};
use kube::{Api, Error as KubeError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;

/// Whether a create made the object or found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// This call created it.
    New,
    /// It existed already.
    Existing,
}

/// The HTTP status of an API error, if the error is one.
pub fn api_code(e: &KubeError) -> Option<u16> {
    match e {
        KubeError::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Creates `obj`; AlreadyExists is success.
pub async fn create<K>(api: &Api<K>, obj: &K) -> Result<Created, KubeError>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(Created::New),
        Err(e) if api_code(&e) == Some(409) => Ok(Created::Existing),
        Err(e) => Err(e),
    }
}

/// Deletes `name` with `propagation`; NotFound is success.
pub async fn delete<K>(api: &Api<K>, name: &str, propagation: PropagationPolicy) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug,
{
    let params = DeleteParams {
        propagation_policy: Some(propagation),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(e) if api_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
