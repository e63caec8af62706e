//! The VMMigration validator: the spec checks of [`crate::spec`], the endpoint address policy, and the
//! checks of the objects the migration refers to (through [`crate::cluster::Cluster`]).

use crd::{Provider, ProviderType, VMMigrationSpec, VirtualMachine};
use kube::ResourceExt;

use crate::admission::{Admission, Request, Validate, Verdict};
use crate::cluster::Access;
use crate::spec;

#[async_trait::async_trait]
impl Validate<VMMigrationSpec> for Admission {
    async fn create(&self, request: &Request<'_>, spec: VMMigrationSpec) -> Verdict {
        let mut verdict = spec::check(request.namespace, request.name, &spec, &self.addresses);
        if !verdict.is_allowed() {
            // Names are resolved and references looked up only for a well-formed spec: every name is
            // valid then, and the message stays about what the user must fix first.
            return verdict;
        }
        // Name resolution and the API reads run side by side: the answer waits for the slower one.
        let resolved = async {
            match spec::storage_endpoint(&spec.storage) {
                Some(Ok(endpoint)) => {
                    self.addresses
                        .check_resolved(&endpoint, self.resolver.as_ref())
                        .await
                }
                _ => Ok(()),
            }
        };
        let mut references = Verdict::default();
        let (resolved, ()) = futures::join!(
            resolved,
            self.check_references(request, &spec, &mut references)
        );
        if let Err(why) = resolved {
            verdict.deny("spec.storage.endpoint", spec::unroutable(&why));
        }
        verdict.violations.extend(references.violations);
        verdict.warnings.extend(references.warnings);
        verdict
    }

    async fn update(
        &self,
        _request: &Request<'_>,
        old: Option<&serde_json::Value>,
        new: Option<&serde_json::Value>,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        let null = serde_json::Value::Null;
        let mut changed = vec![];
        changed_paths(
            "spec",
            old.unwrap_or(&null),
            new.unwrap_or(&null),
            &mut changed,
        );
        for field in changed.into_iter().take(MAX_REPORTED_CHANGES) {
            verdict.deny(
                field,
                "spec is immutable after creation: delete the VMMigration and create a new one",
            );
        }
        verdict
    }
}

/// At most this many changed fields are named in one denial.
const MAX_REPORTED_CHANGES: usize = 8;

/// Paths under `prefix` where `old` and `new` differ (objects are compared key by key, anything else
/// as a whole).
fn changed_paths(
    prefix: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value::Object;
    match (old, new) {
        (Object(old), Object(new)) => {
            let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
            keys.sort();
            keys.dedup();
            let null = serde_json::Value::Null;
            for key in keys {
                changed_paths(
                    &format!("{prefix}.{key}"),
                    old.get(key).unwrap_or(&null),
                    new.get(key).unwrap_or(&null),
                    out,
                );
            }
        }
        (old, new) if old != new => out.push(prefix.to_owned()),
        _ => {}
    }
}

impl Admission {
    /// Checks the Providers, VirtualMachines and Secrets the migration refers to, and that the requesting
    /// user may use them.
    async fn check_references(
        &self,
        request: &Request<'_>,
        spec: &VMMigrationSpec,
        verdict: &mut Verdict,
    ) {
        let cluster = self.cluster.as_ref();
        let target_ns = spec.target_provider_ref.namespace_or(request.namespace);
        let target_name = spec.target_provider_ref.name.as_str();
        let source_ns = spec
            .source_namespace
            .as_deref()
            .unwrap_or(request.namespace);
        let (target, source, same_name) = futures::join!(
            cluster.provider(target_ns, target_name),
            cluster.virtual_machine(source_ns, &spec.source_name),
            cluster.virtual_machines_named(&spec.target_name),
        );

        // The user must be allowed what the migration will do with their authority.
        let mut accesses = vec![(
            "spec.sourceName",
            Access::virtual_machine("get", source_ns, &spec.source_name),
            String::new(),
        )];
        if spec.cleanup_policy.delete_source {
            accesses.push((
                "spec.cleanupPolicy.deleteSource",
                Access::virtual_machine("delete", source_ns, &spec.source_name),
                " (deleteSource: true deletes it)".into(),
            ));
        }
        if let Some(secret) = &spec.storage.credentials_secret_ref {
            accesses.push((
                "spec.storage.credentialsSecretRef",
                Access::get_secret(request.namespace, &secret.name),
                String::new(),
            ));
        }

        match target {
            Err(error) => verdict.deny(
                "spec.targetProviderRef",
                format!("could not read Provider {target_ns}/{target_name}: {error}"),
            ),
            Ok(None) => verdict.deny(
                "spec.targetProviderRef",
                format!("Provider {target_ns}/{target_name} does not exist"),
            ),
            Ok(Some(provider)) => {
                check_target_fit(verdict, spec, &provider, target_ns);
                if let Some(access) = provider_secret(&provider, target_ns) {
                    accesses.push((
                        "spec.targetProviderRef",
                        access,
                        format!(" (the credentials of Provider {target_ns}/{target_name})"),
                    ));
                }
                match same_name {
                    Err(error) => verdict.deny(
                        "spec.targetName",
                        format!("could not list VirtualMachines: {error}"),
                    ),
                    Ok(vms) => {
                        if let Some(taken) = vms
                            .iter()
                            .find(|vm| is_on_provider(vm, target_ns, target_name))
                        {
                            verdict.deny(
                                "spec.targetName",
                                format!(
                                    "{:?} is taken: VirtualMachine {}/{} already exists on Provider {target_ns}/{target_name}; choose another targetName",
                                    spec.target_name,
                                    taken.namespace().unwrap_or_default(),
                                    taken.name_any()
                                ),
                            );
                        }
                    }
                }
            }
        }

        match source {
            Err(error) => verdict.deny(
                "spec.sourceName",
                format!(
                    "could not read VirtualMachine {source_ns}/{}: {error}",
                    spec.source_name
                ),
            ),
            Ok(None) => verdict.deny(
                "spec.sourceName",
                format!(
                    "VirtualMachine {source_ns}/{} does not exist",
                    spec.source_name
                ),
            ),
            Ok(Some(vm)) => {
                let provider_ns = vm.spec.provider_ref.namespace_or(source_ns).to_owned();
                let provider_name = vm.spec.provider_ref.name.clone();
                match cluster.provider(&provider_ns, &provider_name).await {
                    Err(error) => verdict.deny(
                        "spec.sourceName",
                        format!("could not read Provider {provider_ns}/{provider_name}: {error}"),
                    ),
                    Ok(None) => verdict.deny(
                        "spec.sourceName",
                        format!(
                            "VirtualMachine {source_ns}/{} is on Provider {provider_ns}/{provider_name}, which does not exist",
                            spec.source_name
                        ),
                    ),
                    Ok(Some(provider)) => {
                        if let Some(access) = provider_secret(&provider, &provider_ns) {
                            accesses.push((
                                "spec.sourceName",
                                access,
                                format!(
                                    " (the credentials of Provider {provider_ns}/{provider_name}, where the source VM is)"
                                ),
                            ));
                        }
                    }
                }
            }
        }

        let answers = futures::future::join_all(
            accesses
                .iter()
                .map(|(_, access, _)| cluster.allowed(request.user, access)),
        )
        .await;
        let user = request.user.username.as_deref().unwrap_or("(unknown user)");
        for ((field, access, why), answer) in accesses.iter().zip(answers) {
            match answer {
                Ok(true) => {}
                Ok(false) => verdict.deny(
                    *field,
                    format!("user {user:?} may not {access}{why}, so the migration may not use it"),
                ),
                Err(error) => verdict.deny(
                    *field,
                    format!("could not check whether user {user:?} may {access}: {error}"),
                ),
            }
        }
    }
}

/// `get` on the credentials Secret of a Provider, if it has one.
fn provider_secret(provider: &Provider, provider_ns: &str) -> Option<Access> {
    let secret = provider.spec.credential_secret_ref.as_ref()?;
    Some(Access::get_secret(
        secret.namespace_or(provider_ns),
        &secret.name,
    ))
}

fn is_on_provider(vm: &VirtualMachine, provider_ns: &str, provider_name: &str) -> bool {
    let vm_ns = vm.namespace().unwrap_or_default();
    vm.spec.provider_ref.name == provider_name
        && vm.spec.provider_ref.namespace_or(&vm_ns) == provider_ns
}

/// The disk format and the network hints must suit the target provider's type.
fn check_target_fit(
    verdict: &mut Verdict,
    spec: &VMMigrationSpec,
    provider: &Provider,
    provider_ns: &str,
) {
    let kind = provider.spec.type_;
    let provider_name = provider.name_any();
    if let Some(format) = spec.target_disk_format {
        let accepted = kind.accepted_formats();
        if !accepted.contains(&format) {
            let allowed: Vec<&str> = accepted.iter().map(|f| f.as_str()).collect();
            verdict.deny(
                "spec.targetDiskFormat",
                format!(
                    "Provider {provider_ns}/{provider_name} is {kind}, which cannot take {format} disks (allowed: {})",
                    allowed.join(", ")
                ),
            );
        }
    }
    let wants_network = kind == ProviderType::Vsphere;
    for (i, hint) in spec.target_network_hints.iter().enumerate() {
        let (field, ok) = if wants_network {
            ("bridge", hint.bridge.is_none())
        } else {
            ("network", hint.network.is_none())
        };
        if !ok {
            verdict.deny(
                format!("spec.targetNetworkHints[{i}].{field}"),
                format!(
                    "Provider {provider_ns}/{provider_name} is {kind}: set {} (allowed for {kind}), not {field}",
                    if wants_network { "network" } else { "bridge" }
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_paths_name_each_changed_leaf() {
        let mut out = vec![];
        changed_paths(
            "spec",
            &json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}),
            &json!({"a": 1, "b": {"c": 5, "d": 3}, "e": [2], "f": true}),
            &mut out,
        );
        assert_eq!(out, ["spec.b.c", "spec.e", "spec.f"]);
        out.clear();
        changed_paths("spec", &json!({"a": 1}), &json!({"a": 1}), &mut out);
        assert!(out.is_empty());
    }
}
