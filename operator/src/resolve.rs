//! Resolves what a migration refers to: the source VirtualMachine, both Providers and the credential
//! Secrets. The runner cannot read any of these (its ServiceAccount may only read its own VMMigration),
//! so the operator reads them and hands the runner a plan plus the credentials it needs.

use std::fmt;

use crd::{PinnedReference, Provider, VMMigration, VirtualMachine};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Everything a runner plan is built from.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The source VM object.
    pub source_vm: VirtualMachine,
    /// The Provider the source VM lives on (its `spec.providerRef`).
    pub source_provider: Provider,
    /// The Provider the VM moves to (the migration's `targetProviderRef`).
    pub target_provider: Provider,
    /// The source Provider's credentials, when it names a Secret.
    pub source_credentials: Option<Secret>,
    /// The target Provider's credentials, when it names a Secret.
    pub target_credentials: Option<Secret>,
    /// The storage credentials, when the migration names a Secret.
    pub storage_credentials: Option<Secret>,
}

/// A referenced object that does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingReference {
    /// Kind of the object, e.g. `VirtualMachine`.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl fmt::Display for MissingReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} not found",
            self.kind, self.namespace, self.name
        )
    }
}

/// GETs one object; `Ok(Err(missing))` when it does not exist.
async fn get<K>(
    client: &Client,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<Result<K, MissingReference>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await.map_err(Error::Kube)? {
        Some(obj) => Ok(Ok(obj)),
        None => Ok(Err(MissingReference {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })),
    }
}

/// Reads the objects in this order: source VM, source Provider, target Provider, then the source,
/// target and storage Secrets (each only when referenced). Stops at the first missing one.
pub async fn resolve(
    client: &Client,
    migration: &VMMigration,
) -> Result<Result<Resolved, MissingReference>> {
    let ns = migration
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let spec = &migration.spec;

    macro_rules! need {
        ($e:expr) => {
            match $e? {
                Ok(obj) => obj,
                Err(missing) => return Ok(Err(missing)),
            }
        };
    }

    let vm_ns = spec.source_namespace_or(&ns).to_owned();
    let source_vm: VirtualMachine =
        need!(get(client, "VirtualMachine", &vm_ns, &spec.source_name).await);
    let source_ref = &source_vm.spec.provider_ref;
    let source_provider: Provider = need!(
        get(
            client,
            "Provider",
            source_ref.namespace_or(&vm_ns),
            &source_ref.name
        )
        .await
    );
    let target_ref = &spec.target_provider_ref;
    let target_provider: Provider = need!(
        get(
            client,
            "Provider",
            target_ref.namespace_or(&ns),
            &target_ref.name
        )
        .await
    );

    let provider_secret = |p: &Provider| {
        p.spec.credential_secret_ref.as_ref().map(|r| {
            let pns = p.namespace().unwrap_or_default();
            (r.namespace_or(&pns).to_owned(), r.name.clone())
        })
    };
    let source_credentials = match provider_secret(&source_provider) {
        Some((sns, name)) => Some(need!(get(client, "Secret", &sns, &name).await)),
        None => None,
    };
    let target_credentials = match provider_secret(&target_provider) {
        Some((sns, name)) => Some(need!(get(client, "Secret", &sns, &name).await)),
        None => None,
    };
    let storage_credentials = match &spec.storage.credentials_secret_ref {
        Some(r) => Some(need!(
            get(client, "Secret", r.namespace_or(&ns), &r.name).await
        )),
        None => None,
    };

    Ok(Ok(Resolved {
        source_vm,
        source_provider,
        target_provider,
        source_credentials,
        target_credentials,
        storage_credentials,
    }))
}

impl Resolved {
    /// The references to pin: the source VM (and its Provider), both Providers (type, endpoint
    /// without credentials, credential Secret, SSH login, TLS setting) and the credential Secrets
    /// (by UID).
    pub fn pins(&self) -> Vec<PinnedReference> {
        let vm = &self.source_vm;
        let vm_ns = vm.namespace().unwrap_or_default();
        let provider = &vm.spec.provider_ref;
        let mut pins = vec![pin(
            "VirtualMachine",
            vm,
            Some(format!(
                "on Provider {}/{}",
                provider.namespace_or(&vm_ns),
                provider.name
            )),
        )];
        for p in [&self.source_provider, &self.target_provider] {
            if !pins
                .iter()
                .any(|x| x.kind == "Provider" && x.uid == p.uid().unwrap_or_default())
            {
                pins.push(pin("Provider", p, Some(provider_content(p))));
            }
        }
        for secret in [
            &self.source_credentials,
            &self.target_credentials,
            &self.storage_credentials,
        ]
        .into_iter()
        .flatten()
        {
            if !pins
                .iter()
                .any(|x| x.kind == "Secret" && x.uid == secret.uid().unwrap_or_default())
            {
                pins.push(pin("Secret", secret, None));
            }
        }
        pins
    }
}

fn pin<K: ResourceExt>(kind: &str, obj: &K, content: Option<String>) -> PinnedReference {
    PinnedReference {
        kind: kind.to_string(),
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
        content,
    }
}

/// What a migration relies on in a Provider, with the endpoint shown without credentials.
fn provider_content(p: &Provider) -> String {
    let ns = p.namespace().unwrap_or_default();
    let spec = &p.spec;
    let mut out = format!(
        "{} {}",
        spec.type_,
        endpoint_policy::redacted(&spec.endpoint)
    );
    match &spec.credential_secret_ref {
        Some(r) => out.push_str(&format!(", credentials {}/{}", r.namespace_or(&ns), r.name)),
        None => out.push_str(", no credentials"),
    }
    if let Some(ssh) = &spec.ssh {
        out.push_str(&format!(
            ", ssh {}@{}:{}",
            ssh.user.as_deref().unwrap_or("root"),
            ssh.host.as_deref().unwrap_or("-"),
            ssh.port.unwrap_or(22)
        ));
    }
    if spec.insecure_skip_verify {
        out.push_str(", TLS not verified");
    }
    out
}
