//! What the validators may ask the cluster: a small trait over the Kubernetes API, implemented by
//! [`KubeCluster`] (a `kube::Client`) and by [`MemoryCluster`] (tests and local runs).
//!
//! Only Kubernetes objects are read: the webhook never connects to a hypervisor or to storage, so an
//! answer takes milliseconds. Secrets are never read either: whether the requesting user may read one
//! is asked with a SubjectAccessReview.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crd::{Provider, VirtualMachine};
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;

use crate::Error;

/// An access a user would exercise through a migration, e.g. `get` on Secret `default/s3-creds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// API verb, e.g. `get`.
    pub verb: &'static str,
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource (plural), e.g. `secrets`.
    pub resource: &'static str,
    pub namespace: String,
    pub name: String,
}

impl Access {
    /// `get` on a Secret.
    pub fn get_secret(namespace: &str, name: &str) -> Self {
        Access {
            verb: "get",
            group: "",
            resource: "secrets",
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// `verb` on a Provider of this API group.
    pub fn provider(verb: &'static str, namespace: &str, name: &str) -> Self {
        Access {
            verb,
            group: crd::GROUP,
            resource: "providers",
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// `verb` on a VirtualMachine of this API group.
    pub fn virtual_machine(verb: &'static str, namespace: &str, name: &str) -> Self {
        Access {
            verb,
            group: crd::GROUP,
            resource: "virtualmachines",
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.resource {
            "secrets" => "Secret",
            "virtualmachines" => "VirtualMachine",
            "providers" => "Provider",
            other => other,
        };
        write!(f, "{} {kind} {}/{}", self.verb, self.namespace, self.name)
    }
}

/// The reads the validators need.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync {
    /// The Provider `namespace/name`, if it exists.
    async fn provider(&self, namespace: &str, name: &str) -> Result<Option<Provider>, Error>;
    /// The VirtualMachine `namespace/name`, if it exists.
    async fn virtual_machine(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<VirtualMachine>, Error>;
    /// Every VirtualMachine named `name`, in any namespace.
    async fn virtual_machines_named(&self, name: &str) -> Result<Vec<VirtualMachine>, Error>;
    /// Whether `user` may exercise `access` (a SubjectAccessReview).
    async fn allowed(&self, user: &UserInfo, access: &Access) -> Result<bool, Error>;
}

/// The real cluster, through a kube `Client`. Needs RBAC: get/list on providers and virtualmachines,
/// create on subjectaccessreviews.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
}

impl KubeCluster {
    pub fn new(client: Client) -> Self {
        KubeCluster { client }
    }
}

#[async_trait::async_trait]
impl Cluster for KubeCluster {
    async fn provider(&self, namespace: &str, name: &str) -> Result<Option<Provider>, Error> {
        Ok(Api::<Provider>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await?)
    }

    async fn virtual_machine(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<VirtualMachine>, Error> {
        Ok(
            Api::<VirtualMachine>::namespaced(self.client.clone(), namespace)
                .get_opt(name)
                .await?,
        )
    }

    async fn virtual_machines_named(&self, name: &str) -> Result<Vec<VirtualMachine>, Error> {
        let params = ListParams::default().fields(&format!("metadata.name={name}"));
        Ok(Api::<VirtualMachine>::all(self.client.clone())
            .list(&params)
            .await?
            .items)
    }

    async fn allowed(&self, user: &UserInfo, access: &Access) -> Result<bool, Error> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups.clone(),
                uid: user.uid.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(access.verb.into()),
                    group: Some(access.group.into()),
                    resource: Some(access.resource.into()),
                    namespace: Some(access.namespace.clone()),
                    name: Some(access.name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

/// One permission of the in-memory cluster's authorizer.
#[derive(Debug, Clone)]
struct Grant {
    /// A user name or a group.
    subject: String,
    verb: String,
    resource: String,
    /// `None` grants every namespace.
    namespace: Option<String>,
    /// `None` grants every name.
    name: Option<String>,
}

/// An in-memory cluster: Providers and VirtualMachines in maps, and a list of grants standing in for
/// RBAC. For tests and local runs.
#[derive(Debug, Default)]
pub struct MemoryCluster {
    providers: BTreeMap<(String, String), Provider>,
    vms: BTreeMap<(String, String), VirtualMachine>,
    grants: Vec<Grant>,
    /// When set, every call fails with this message (an unreachable API server).
    failure: Mutex<Option<String>>,
}

impl MemoryCluster {
    /// An empty cluster where nobody may do anything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads the Providers and VirtualMachines of a multi-document YAML file (other kinds are skipped);
    /// objects without a namespace go into `default`.
    pub fn load_yaml(&mut self, text: &str) -> Result<usize, serde_yaml::Error> {
        let mut loaded = 0;
        for document in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(document)?;
            match value.get("kind").and_then(|k| k.as_str()) {
                Some("Provider") => self.add_provider(serde_yaml::from_value(value)?),
                Some("VirtualMachine") => self.add_virtual_machine(serde_yaml::from_value(value)?),
                _ => continue,
            }
            loaded += 1;
        }
        Ok(loaded)
    }

    /// Adds (or replaces) a Provider.
    pub fn add_provider(&mut self, provider: Provider) {
        let key = (
            provider.namespace().unwrap_or_else(|| "default".into()),
            provider.name_any(),
        );
        self.providers.insert(key, provider);
    }

    /// Adds (or replaces) a VirtualMachine.
    pub fn add_virtual_machine(&mut self, vm: VirtualMachine) {
        let key = (
            vm.namespace().unwrap_or_else(|| "default".into()),
            vm.name_any(),
        );
        self.vms.insert(key, vm);
    }

    /// Lets `subject` (a user or a group) do `verb` on `resource` named `name` (`None`: any) in
    /// `namespace` (`None`: any).
    pub fn grant(
        &mut self,
        subject: &str,
        verb: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) {
        self.grants.push(Grant {
            subject: subject.into(),
            verb: verb.into(),
            resource: resource.into(),
            namespace: namespace.map(Into::into),
            name: name.map(Into::into),
        });
    }

    /// Makes every later call fail (or succeed again with `None`), like an unreachable API server.
    pub fn set_failure(&self, failure: Option<&str>) {
        *self.failure.lock().expect("not poisoned") = failure.map(Into::into);
    }

    fn check_failure(&self) -> Result<(), Error> {
        match self.failure.lock().expect("not poisoned").as_ref() {
            Some(message) => Err(Error::Unavailable(message.clone())),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Cluster for MemoryCluster {
    async fn provider(&self, namespace: &str, name: &str) -> Result<Option<Provider>, Error> {
        self.check_failure()?;
        Ok(self
            .providers
            .get(&(namespace.into(), name.into()))
            .cloned())
    }

    async fn virtual_machine(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<VirtualMachine>, Error> {
        self.check_failure()?;
        Ok(self.vms.get(&(namespace.into(), name.into())).cloned())
    }

    async fn virtual_machines_named(&self, name: &str) -> Result<Vec<VirtualMachine>, Error> {
        self.check_failure()?;
        Ok(self
            .vms
            .iter()
            .filter(|((_, n), _)| n == name)
            .map(|(_, vm)| vm.clone())
            .collect())
    }

    async fn allowed(&self, user: &UserInfo, access: &Access) -> Result<bool, Error> {
        self.check_failure()?;
        let username = user.username.as_deref().unwrap_or_default();
        let groups = user.groups.as_deref().unwrap_or_default();
        Ok(self.grants.iter().any(|g| {
            (g.subject == username || groups.contains(&g.subject))
                && (g.verb == access.verb || g.verb == "*")
                && (g.resource == access.resource || g.resource == "*")
                && g.namespace
                    .as_ref()
                    .is_none_or(|ns| *ns == access.namespace)
                && g.name.as_ref().is_none_or(|n| *n == access.name)
        }))
    }
}
