//! Pure functions rendering the objects of one runner attempt: the plan, the credentials Secret, the
//! runner's ServiceAccount, Role and RoleBinding, the Job, and the target VirtualMachine created on
//! success. Nothing here talks to the API server.

use std::collections::BTreeMap;

use crd::plan::{self, MigrationRef, ProviderPlan, RunnerMode, RunnerPlan, VmPlan};
use crd::{
    ObjectRef, Provider, ProviderType, StorageType, VMMigration, VirtualMachine,
    VirtualMachineSpec, labels,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, EphemeralVolumeSource,
    LocalObjectReference, ObjectFieldSelector, PersistentVolumeClaimSpec,
    PersistentVolumeClaimTemplate, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext,
    ServiceAccount, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::config::{Scratch, Settings};
use crate::error::{Error, Result};
use crate::names;
use crate::resolve::Resolved;

/// Standard label naming the tool that manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`crd::labels::COMPONENT`] for migration runs.
pub const COMPONENT_RUNNER: &str = "runner";
/// Value of [`crd::labels::COMPONENT`] for cleanup runs.
pub const COMPONENT_CLEANUP: &str = "cleanup";
/// Name of the runner container.
pub const CONTAINER: &str = "runner";
/// Unprivileged user and group the runner runs as.
pub const RUNNER_UID: i64 = 65532;

/// Keys of a Provider's credential Secret a runner may need, by provider type.
pub fn provider_credential_keys(type_: ProviderType) -> &'static [&'static str] {
    match type_ {
        ProviderType::Libvirt => &[
            "username",
            "password",
            "ssh-privatekey",
            "known_hosts",
            "ca.crt",
            "tls.crt",
            "tls.key",
        ],
        ProviderType::Vsphere => &["username", "password", "ca.crt"],
        ProviderType::Proxmox => &[
            "token_id",
            "token_secret",
            "ssh-privatekey",
            "known_hosts",
            "ca.crt",
        ],
    }
}

/// Keys of a storage credentials Secret a runner may need, by storage type.
pub fn storage_credential_keys(type_: StorageType) -> &'static [&'static str] {
    match type_ {
        StorageType::S3 => &[
            "accessKey",
            "secretKey",
            "endpoint",
            "sessionToken",
            "ca.crt",
        ],
        StorageType::Http => &["token", "username", "password", "ca.crt"],
        StorageType::Nfs => &[],
    }
}

/// The labels of every object of a migration: migration name, component, managed-by, and the
/// attempt when there is one.
pub fn object_labels(
    migration: &str,
    component: &str,
    attempt: Option<i32>,
) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (labels::MIGRATION.to_owned(), migration.to_owned()),
        (labels::COMPONENT.to_owned(), component.to_owned()),
        (MANAGED_BY_LABEL.to_owned(), labels::MANAGED_BY.to_owned()),
    ]);
    if let Some(a) = attempt {
        l.insert(labels::ATTEMPT.to_owned(), a.to_string());
    }
    l
}

/// `virtrigaud.io/migration=<name>`: selects every object of a migration.
pub fn migration_selector(migration: &str) -> String {
    format!("{}={migration}", labels::MIGRATION)
}

/// Selects the pods of one runner attempt.
pub fn attempt_pod_selector(migration: &str, attempt: i32) -> String {
    format!(
        "{}={migration},{}={COMPONENT_RUNNER},{}={attempt}",
        labels::MIGRATION,
        labels::COMPONENT,
        labels::ATTEMPT
    )
}

struct Ids {
    name: String,
    namespace: String,
}

fn ids(m: &VMMigration) -> Result<Ids> {
    Ok(Ids {
        name: m
            .meta()
            .name
            .clone()
            .ok_or(Error::MissingMetadata("name"))?,
        namespace: m.namespace().ok_or(Error::MissingMetadata("namespace"))?,
    })
}

/// Metadata of an object owned (controller reference) by the migration.
fn owned_meta(
    m: &VMMigration,
    name: String,
    labels: BTreeMap<String, String>,
) -> Result<ObjectMeta> {
    let ids = ids(m)?;
    let owner = m
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(ids.namespace),
        labels: Some(labels),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

fn provider_plan(p: &Provider) -> ProviderPlan {
    ProviderPlan {
        name: format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
        type_: p.spec.type_,
        endpoint: p.spec.endpoint.clone(),
        insecure_skip_verify: p.spec.insecure_skip_verify,
        defaults: p.spec.defaults.clone(),
        ssh: p.spec.ssh.clone(),
    }
}

/// The runner's plan: everything but credentials.
pub fn runner_plan(
    m: &VMMigration,
    r: &Resolved,
    kind: &JobKind,
    settings: &Settings,
) -> Result<RunnerPlan> {
    let ids = ids(m)?;
    let spec = &m.spec;
    let mut storage = spec.storage.clone();
    storage.credentials_secret_ref = None;
    Ok(RunnerPlan {
        migration: MigrationRef {
            namespace: ids.namespace,
            name: ids.name,
            uid: m.meta().uid.clone().ok_or(Error::MissingMetadata("uid"))?,
        },
        attempt: kind.attempt,
        final_attempt: kind.attempt >= spec.retry_policy.max_attempts,
        mode: kind.mode,
        source: provider_plan(&r.source_provider),
        source_vm: VmPlan {
            name: r.source_vm.name_any(),
            id: r.source_vm.status.as_ref().and_then(|s| s.id.clone()),
        },
        target: provider_plan(&r.target_provider),
        target_name: spec.target_name.clone(),
        target_storage_hint: spec.target_storage_hint.clone(),
        target_network_hints: spec.target_network_hints.clone(),
        target_disk_format: spec.target_disk_format,
        target_resources: spec.target_resources.clone(),
        storage,
        cleanup_policy: spec.cleanup_policy.clone(),
        cutover: spec.cutover.clone(),
        allow_loopback_endpoints: settings.allow_loopback_endpoints,
    })
}

/// The credential files of the runner Secret: `<scope>.<key>` for the allowed keys of each referenced
/// Secret (other keys of those Secrets are not copied).
pub fn credential_files(m: &VMMigration, r: &Resolved) -> BTreeMap<String, ByteString> {
    let mut files = BTreeMap::new();
    let mut copy = |scope: &str, secret: &Option<Secret>, allowed: &[&str]| {
        let Some(data) = secret.as_ref().and_then(|s| s.data.as_ref()) else {
            return;
        };
        for (key, value) in data {
            if allowed.contains(&key.as_str()) {
                files.insert(plan::credential_file(scope, key), value.clone());
            }
        }
    };
    copy(
        "source",
        &r.source_credentials,
        provider_credential_keys(r.source_provider.spec.type_),
    );
    copy(
        "target",
        &r.target_credentials,
        provider_credential_keys(r.target_provider.spec.type_),
    );
    copy(
        "storage",
        &r.storage_credentials,
        storage_credential_keys(m.spec.storage.type_),
    );
    files
}

/// The per-run Secret mounted at [`plan::MOUNT_DIR`]: the plan plus the credential files.
pub fn runner_secret(
    m: &VMMigration,
    name: String,
    component: &str,
    attempt: i32,
    plan: &RunnerPlan,
    credentials: BTreeMap<String, ByteString>,
) -> Result<Secret> {
    let ids = ids(m)?;
    let plan_json = serde_json::to_vec(plan).map_err(|source| Error::Serialize {
        what: "runner plan",
        source,
    })?;
    let mut data = credentials;
    data.insert(plan::PLAN_FILE.to_owned(), ByteString(plan_json));
    Ok(Secret {
        metadata: owned_meta(m, name, object_labels(&ids.name, component, Some(attempt)))?,
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(data),
        ..Secret::default()
    })
}

/// The runners' ServiceAccount. Its token is mounted only into the runner pods, which ask for it.
pub fn service_account(m: &VMMigration) -> Result<ServiceAccount> {
    let ids = ids(m)?;
    Ok(ServiceAccount {
        metadata: owned_meta(
            m,
            names::runner_identity(&ids.name),
            object_labels(&ids.name, COMPONENT_RUNNER, None),
        )?,
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    })
}

/// The runners' Role: `get` on this VMMigration and `patch` on its status, nothing else.
pub fn role(m: &VMMigration) -> Result<Role> {
    let ids = ids(m)?;
    let rule = |resource: &str, verb: &str| PolicyRule {
        api_groups: Some(vec![crd::GROUP.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        resource_names: Some(vec![ids.name.clone()]),
        verbs: vec![verb.to_owned()],
        ..PolicyRule::default()
    };
    Ok(Role {
        metadata: owned_meta(
            m,
            names::runner_identity(&ids.name),
            object_labels(&ids.name, COMPONENT_RUNNER, None),
        )?,
        rules: Some(vec![
            rule("vmmigrations", "get"),
            rule("vmmigrations/status", "patch"),
        ]),
    })
}

/// Binds [`role`] to [`service_account`].
pub fn role_binding(m: &VMMigration) -> Result<RoleBinding> {
    let ids = ids(m)?;
    let name = names::runner_identity(&ids.name);
    Ok(RoleBinding {
        metadata: owned_meta(
            m,
            name.clone(),
            object_labels(&ids.name, COMPONENT_RUNNER, None),
        )?,
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(ids.namespace),
            ..Subject::default()
        }]),
    })
}

fn scratch_volume(settings: &Settings) -> Volume {
    match &settings.scratch {
        Scratch::EmptyDir { size_limit, .. } => Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(size_limit.clone()),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
        Scratch::Ephemeral {
            storage_class,
            size,
        } => Volume {
            name: "scratch".into(),
            ephemeral: Some(EphemeralVolumeSource {
                volume_claim_template: Some(PersistentVolumeClaimTemplate {
                    metadata: None,
                    spec: PersistentVolumeClaimSpec {
                        access_modes: Some(vec!["ReadWriteOnce".into()]),
                        storage_class_name: Some(storage_class.clone()),
                        resources: Some(VolumeResourceRequirements {
                            requests: Some(BTreeMap::from([("storage".into(), size.clone())])),
                            ..VolumeResourceRequirements::default()
                        }),
                        ..PersistentVolumeClaimSpec::default()
                    },
                }),
            }),
            ..Volume::default()
        },
    }
}

/// The runner container's requests and limits.
fn resources(settings: &Settings) -> ResourceRequirements {
    let r = &settings.runner_resources;
    let pair = |cpu: &Quantity, memory: &Quantity| {
        BTreeMap::from([
            ("cpu".to_owned(), cpu.clone()),
            ("memory".to_owned(), memory.clone()),
        ])
    };
    ResourceRequirements {
        requests: Some(pair(&r.cpu_request, &r.memory_request)),
        limits: Some(pair(&r.cpu_limit, &r.memory_limit)),
        ..ResourceRequirements::default()
    }
}

/// The runner's environment: logging, scratch as HOME and TMPDIR, the pod's name and namespace, and
/// the scratch limit where the filesystem's free space does not show it.
fn runner_env(settings: &Settings) -> Vec<EnvVar> {
    let mut vars = vec![
        env("VRG_LOG_FORMAT", &settings.runner_log.0.to_string()),
        env("VRG_LOG_LEVEL", &settings.runner_log.1),
        env("TMPDIR", plan::SCRATCH_DIR),
        env("HOME", plan::SCRATCH_DIR),
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
    ];
    if let Scratch::EmptyDir { bytes, .. } = settings.scratch {
        vars.push(env(plan::ENV_SCRATCH_LIMIT, &bytes.to_string()));
    }
    vars
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// What distinguishes a migration Job from a cleanup Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobKind {
    /// `migrate` or `cleanup`.
    pub mode: RunnerMode,
    /// Attempt the Job belongs to.
    pub attempt: i32,
    /// Job name.
    pub name: String,
    /// Name of the Secret with plan and credentials.
    pub secret: String,
}

impl JobKind {
    /// Attempt `attempt` of the migration.
    pub fn migrate(migration: &str, attempt: i32) -> Self {
        JobKind {
            mode: RunnerMode::Migrate,
            attempt,
            name: names::job(migration, attempt),
            secret: names::attempt_secret(migration, attempt),
        }
    }

    /// The cleanup run after attempt `attempt`.
    pub fn cleanup(migration: &str, attempt: i32) -> Self {
        JobKind {
            mode: RunnerMode::Cleanup,
            attempt,
            name: names::cleanup(migration),
            secret: names::cleanup(migration),
        }
    }

    /// The component label value.
    pub fn component(&self) -> &'static str {
        match self.mode {
            RunnerMode::Migrate => COMPONENT_RUNNER,
            RunnerMode::Cleanup => COMPONENT_CLEANUP,
        }
    }

    /// The runner sub-command.
    pub fn command(&self) -> &'static str {
        match self.mode {
            RunnerMode::Migrate => "migrate",
            RunnerMode::Cleanup => "cleanup",
        }
    }
}

/// The runner Job: one pod, never restarted (`backoffLimit: 0`: retries are the operator's), bounded
/// by a deadline, running as an unprivileged user on a read-only root filesystem with the plan
/// Secret and a scratch volume. Nothing else is mounted: the runner reaches every storage itself,
/// NFS included (NFSv3 over TCP in userspace, so Pod Security `restricted`, which forbids inline
/// `nfs` volumes, admits the pod).
pub fn runner_job(m: &VMMigration, settings: &Settings, kind: &JobKind) -> Result<Job> {
    let ids = ids(m)?;
    let labels = object_labels(&ids.name, kind.component(), Some(kind.attempt));
    let deadline = match kind.mode {
        RunnerMode::Migrate => settings.job_deadline,
        RunnerMode::Cleanup => settings.cleanup_deadline,
    };

    let volumes = vec![
        Volume {
            name: "plan".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(kind.secret.clone()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        scratch_volume(settings),
    ];
    let mounts = vec![
        VolumeMount {
            name: "plan".into(),
            mount_path: plan::MOUNT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "scratch".into(),
            mount_path: plan::SCRATCH_DIR.into(),
            ..VolumeMount::default()
        },
    ];

    let container = Container {
        name: CONTAINER.into(),
        image: Some(settings.runner_image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(vec![kind.command().into()]),
        env: Some(runner_env(settings)),
        volume_mounts: Some(mounts),
        resources: Some(resources(settings)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        termination_message_path: Some(plan::TERMINATION_MESSAGE_PATH.into()),
        termination_message_policy: Some("File".into()),
        ..Container::default()
    };

    Ok(Job {
        metadata: owned_meta(m, kind.name.clone(), labels.clone())?,
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(deadline.as_secs() as i64),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: Some(names::runner_identity(&ids.name)),
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUNNER_UID),
                        run_as_group: Some(RUNNER_UID),
                        fs_group: Some(RUNNER_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    image_pull_secrets: (!settings.image_pull_secrets.is_empty()).then(|| {
                        settings
                            .image_pull_secrets
                            .iter()
                            .map(|name| LocalObjectReference { name: name.clone() })
                            .collect()
                    }),
                    node_selector: (!settings.node_selector.is_empty())
                        .then(|| settings.node_selector.clone()),
                    tolerations: (!settings.tolerations.is_empty())
                        .then(|| settings.tolerations.clone()),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

/// The VirtualMachine object of the migrated VM, for the inventory. Not owned by the migration:
/// deleting the migration leaves it.
pub fn target_vm(m: &VMMigration) -> Result<VirtualMachine> {
    let ids = ids(m)?;
    let target = &m.spec.target_provider_ref;
    let mut vm = VirtualMachine::new(
        &m.spec.target_name,
        VirtualMachineSpec {
            provider_ref: ObjectRef {
                name: target.name.clone(),
                namespace: Some(target.namespace_or(&ids.namespace).to_owned()),
            },
        },
    );
    vm.metadata.namespace = Some(ids.namespace.clone());
    vm.metadata.labels = Some(BTreeMap::from([
        (labels::MIGRATION.to_owned(), ids.name.clone()),
        (MANAGED_BY_LABEL.to_owned(), labels::MANAGED_BY.to_owned()),
    ]));
    Ok(vm)
}

/// The status document applied to the target VirtualMachine: its hypervisor id.
pub fn target_vm_status(id: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": format!("{}/{}", crd::GROUP, crd::VERSION),
        "kind": "VirtualMachine",
        "status": { "id": id },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scratch;
    use serde_json::json;

    fn migration(storage: serde_json::Value) -> VMMigration {
        serde_json::from_value(json!({
            "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VMMigration",
            "metadata": {"name": "mig", "namespace": "team-a", "uid": "uid-1"},
            "spec": {"sourceName": "src", "targetProviderRef": {"name": "pve", "namespace": "infra"},
                     "targetName": "new-vm", "storage": storage}
        }))
        .unwrap()
    }

    fn resolved() -> Resolved {
        let provider = |name: &str, type_: &str| -> Provider {
            serde_json::from_value(json!({
                "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "Provider",
                "metadata": {"name": name, "namespace": "infra"},
                "spec": {"type": type_, "endpoint": "https://x", "credentialSecretRef": {"name": "c"}}
            }))
            .unwrap()
        };
        let secret = |data: serde_json::Value| -> Option<Secret> {
            Some(serde_json::from_value(json!({"metadata": {"name": "c"}, "data": data})).unwrap())
        };
        Resolved {
            source_vm: serde_json::from_value(json!({
                "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VirtualMachine",
                "metadata": {"name": "src", "namespace": "team-a"},
                "spec": {"providerRef": {"name": "vc"}}, "status": {"id": "vm-12"}
            }))
            .unwrap(),
            source_provider: provider("vc", "vsphere"),
            target_provider: provider("pve", "proxmox"),
            source_credentials: secret(
                json!({"username": "dQ==", "password": "cA==", "ssh-privatekey": "aw=="}),
            ),
            target_credentials: secret(
                json!({"token_id": "aQ==", "token_secret": "cw==", "password": "eA=="}),
            ),
            storage_credentials: secret(json!({"accessKey": "YQ==", "secretKey": "cw=="})),
        }
    }

    fn job_json(m: &VMMigration, settings: &Settings, kind: &JobKind) -> serde_json::Value {
        serde_json::to_value(runner_job(m, settings, kind).unwrap()).unwrap()
    }

    #[test]
    fn only_the_credentials_the_runner_needs_are_copied() {
        let m = migration(json!({"type": "nfs", "endpoint": "nfs.local", "path": "/exports"}));
        let files = credential_files(&m, &resolved());
        let keys: Vec<&str> = files.keys().map(String::as_str).collect();
        // vSphere takes no ssh key, Proxmox no password, NFS no storage credentials.
        assert_eq!(
            keys,
            [
                "source.password",
                "source.username",
                "target.token_id",
                "target.token_secret"
            ]
        );
    }

    #[test]
    fn plan_has_no_credentials_and_names_everything_resolved() {
        let m =
            migration(json!({"type": "s3", "bucket": "b", "credentialsSecretRef": {"name": "s3"}}));
        let plan = runner_plan(
            &m,
            &resolved(),
            &JobKind::migrate("mig", 2),
            &Settings::default(),
        )
        .unwrap();
        assert_eq!(plan.attempt, 2);
        assert!(
            !plan.allow_loopback_endpoints,
            "refused unless the operator allows them"
        );
        let local = Settings {
            allow_loopback_endpoints: true,
            ..Settings::default()
        };
        let planned = runner_plan(&m, &resolved(), &JobKind::migrate("mig", 2), &local).unwrap();
        assert!(planned.allow_loopback_endpoints);
        assert_eq!(plan.migration.uid, "uid-1");
        assert_eq!(plan.source.name, "infra/vc");
        assert_eq!(plan.source.type_, ProviderType::Vsphere);
        assert_eq!(plan.source_vm.id.as_deref(), Some("vm-12"));
        assert_eq!(plan.target.type_, ProviderType::Proxmox);
        assert_eq!(plan.storage.credentials_secret_ref, None);
        let secret = runner_secret(
            &m,
            "mig-runner-a2".into(),
            COMPONENT_RUNNER,
            2,
            &plan,
            credential_files(&m, &resolved()),
        )
        .unwrap();
        assert_eq!(secret.immutable, Some(true));
        let data = secret.data.unwrap();
        assert!(data.contains_key(plan::PLAN_FILE));
        assert_eq!(data["storage.accessKey"].0, b"a");
        let plan_text = String::from_utf8(data[plan::PLAN_FILE].0.clone()).unwrap();
        assert!(!plan_text.contains("credentialsSecretRef"), "{plan_text}");
    }

    #[test]
    fn runner_job_is_locked_down() {
        let m = migration(json!({"type": "s3", "bucket": "b"}));
        let settings = Settings::default();
        let job = job_json(&m, &settings, &JobKind::migrate("mig", 3));
        assert_eq!(job["metadata"]["name"], "mig-a3");
        assert_eq!(
            job["metadata"]["labels"],
            json!({"virtrigaud.io/migration": "mig", "virtrigaud.io/attempt": "3",
                   "virtrigaud.io/component": "runner", "app.kubernetes.io/managed-by": "virtrigaud-operator"})
        );
        assert_eq!(
            job["metadata"]["ownerReferences"],
            json!([{"apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VMMigration", "name": "mig",
                    "uid": "uid-1", "controller": true}])
        );
        let spec = &job["spec"];
        assert_eq!(spec["backoffLimit"], 0);
        assert_eq!(spec["activeDeadlineSeconds"], 86400);
        let pod = &spec["template"]["spec"];
        assert_eq!(
            spec["template"]["metadata"]["labels"],
            job["metadata"]["labels"]
        );
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["serviceAccountName"], "mig-runner");
        assert_eq!(pod["automountServiceAccountToken"], true);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], RUNNER_UID);
        let c = &pod["containers"][0];
        assert_eq!(c["args"], json!(["migrate"]));
        assert_eq!(c["image"], "virtrigaud/runner:dev");
        assert_eq!(
            c["securityContext"],
            json!({"allowPrivilegeEscalation": false, "privileged": false, "readOnlyRootFilesystem": true,
                   "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}})
        );
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "plan", "mountPath": "/var/run/virtrigaud", "readOnly": true},
                   {"name": "scratch", "mountPath": "/scratch"}])
        );
        assert_eq!(
            pod["volumes"],
            json!([{"name": "plan", "secret": {"secretName": "mig-runner-a3", "defaultMode": 0o440}},
                   {"name": "scratch", "emptyDir": {"sizeLimit": "100Gi"}}])
        );
        assert_eq!(
            c["resources"],
            json!({"requests": {"cpu": "250m", "memory": "256Mi"},
                   "limits": {"cpu": "2", "memory": "2Gi"}})
        );
        assert!(
            c["env"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "VRG_SCRATCH_LIMIT", "value": "107374182400"})),
            "{}",
            c["env"]
        );
        let env = c["env"].as_array().unwrap();
        for (name, value) in [("VRG_LOG_FORMAT", "text"), ("VRG_LOG_LEVEL", "info")] {
            assert!(
                env.contains(&json!({"name": name, "value": value})),
                "{env:?}"
            );
        }
    }

    #[test]
    fn runner_pods_carry_the_pull_secrets_node_selector_and_tolerations() {
        let m = migration(json!({"type": "s3", "bucket": "b"}));
        let plain = job_json(&m, &Settings::default(), &JobKind::cleanup("mig", 1));
        let pod = &plain["spec"]["template"]["spec"];
        for field in ["imagePullSecrets", "nodeSelector", "tolerations"] {
            assert!(pod.get(field).is_none(), "{field} without its flag: {pod}");
        }
        let settings = Settings {
            image_pull_secrets: vec!["regcred".into()],
            node_selector: BTreeMap::from([("zone".into(), "dc1".into())]),
            tolerations: vec![k8s_openapi::api::core::v1::Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }],
            ..Settings::default()
        };
        let job = job_json(&m, &settings, &JobKind::cleanup("mig", 1));
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
        assert_eq!(pod["nodeSelector"], json!({"zone": "dc1"}));
        assert_eq!(
            pod["tolerations"],
            json!([{"key": "dedicated", "operator": "Exists"}])
        );
    }

    #[test]
    fn nfs_staging_and_ephemeral_scratch() {
        let m =
            migration(json!({"type": "nfs", "endpoint": "nfs.local", "path": "/mnt/migrations"}));
        let settings = Settings {
            scratch: Scratch::Ephemeral {
                storage_class: "fast".into(),
                size: Quantity("500Gi".into()),
            },
            ..Settings::default()
        };
        let job = job_json(&m, &settings, &JobKind::cleanup("mig", 2));
        assert_eq!(job["metadata"]["name"], "mig-cleanup");
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 1800);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["args"], json!(["cleanup"]));
        assert_eq!(
            pod["volumes"][1],
            json!({"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                "resources": {"requests": {"storage": "500Gi"}}}}}})
        );
        // the runner speaks NFS itself: no inline `nfs` volume (Pod Security `restricted` forbids
        // them), nothing mounted but the plan and the scratch space
        let volumes: Vec<&str> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(volumes, ["plan", "scratch"]);
        assert!(
            !pod["volumes"].to_string().contains("nfs"),
            "{}",
            pod["volumes"]
        );
        assert_eq!(
            pod["containers"][0]["volumeMounts"],
            json!([
                {"name": "plan", "mountPath": "/var/run/virtrigaud", "readOnly": true},
                {"name": "scratch", "mountPath": "/scratch"}
            ])
        );
        // The claim's filesystem shows its own size: no limit to pass on.
        let env = pod["containers"][0]["env"].to_string();
        assert!(!env.contains("VRG_SCRATCH_LIMIT"), "{env}");
    }

    #[test]
    fn runner_rbac_allows_exactly_its_own_migration() {
        let m = migration(json!({"type": "s3", "bucket": "b"}));
        let role = serde_json::to_value(role(&m).unwrap()).unwrap();
        assert_eq!(
            role["rules"],
            json!([
                {"apiGroups": ["infra.virtrigaud.io"], "resources": ["vmmigrations"], "resourceNames": ["mig"], "verbs": ["get"]},
                {"apiGroups": ["infra.virtrigaud.io"], "resources": ["vmmigrations/status"], "resourceNames": ["mig"], "verbs": ["patch"]}
            ])
        );
        let binding = serde_json::to_value(role_binding(&m).unwrap()).unwrap();
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "mig-runner", "namespace": "team-a"}])
        );
        let sa = service_account(&m).unwrap();
        assert_eq!(sa.automount_service_account_token, Some(false));
    }

    #[test]
    fn target_vm_is_not_owned_and_points_at_the_target_provider() {
        let m = migration(json!({"type": "s3", "bucket": "b"}));
        let vm = serde_json::to_value(target_vm(&m).unwrap()).unwrap();
        assert_eq!(vm["metadata"]["name"], "new-vm");
        assert_eq!(vm["metadata"]["namespace"], "team-a");
        assert!(vm["metadata"].get("ownerReferences").is_none());
        assert_eq!(
            vm["spec"],
            json!({"providerRef": {"name": "pve", "namespace": "infra"}})
        );
        assert_eq!(target_vm_status("42")["status"], json!({"id": "42"}));
    }
}
