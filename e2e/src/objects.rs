//! Reads of the API objects a pod refers to: Secrets, ConfigMaps, ServiceAccount tokens.

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::error::{Error, Result};

/// Fetches the objects a pod's volumes and environment refer to.
#[derive(Clone)]
pub struct Objects {
    client: Client,
}

/// A bound service-account token.
#[derive(Clone, Debug)]
pub struct Token {
    /// The JWT.
    pub token: String,
    /// When it expires.
    pub expires: Timestamp,
}

impl Objects {
    /// Reads through `client`.
    pub fn new(client: Client) -> Self {
        Objects { client }
    }

    /// A Secret, or `None` when it does not exist.
    pub async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>> {
        Ok(Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await?)
    }

    /// A ConfigMap, or `None` when it does not exist.
    pub async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>> {
        Ok(Api::<ConfigMap>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await?)
    }

    /// A token for `service_account` bound to the pod, through the TokenRequest API.
    pub async fn token(
        &self,
        ns: &str,
        service_account: &str,
        audiences: Vec<String>,
        expiration_seconds: i64,
        pod_name: &str,
        pod_uid: &str,
    ) -> Result<Token> {
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: (!audiences.is_empty()).then_some(audiences),
                expiration_seconds: Some(expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod_name.into()),
                    uid: Some(pod_uid.into()),
                }),
            }),
            ..Default::default()
        };
        let api = Api::<ServiceAccount>::namespaced(self.client.clone(), ns);
        let answer = api
            .create_token_request(service_account, &PostParams::default(), &request)
            .await?;
        let status = answer.status.unwrap_or_default();
        let missing = || Error::Volume {
            volume: format!("token for serviceaccount {ns}/{service_account}"),
            message: "TokenRequest answered without a token".into(),
        };
        Ok(Token {
            token: status.token.ok_or_else(missing)?,
            expires: status.expiration_timestamp.ok_or_else(missing)?.0,
        })
    }
}
