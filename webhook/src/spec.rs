//! The checks of a VMMigration that need nothing but the object itself (no I/O).
//!
//! They repeat the CRD's schema and CEL rules (so a request that reaches the webhook another way is held
//! to the same rules, with the same field names) and add what CEL cannot say well: DNS-1123 names, URL
//! and host syntax, durations in Go's grammar, Kubernetes quantities.

use std::collections::HashSet;

use crd::{StorageSpec, StorageType, VMMigrationSpec};

use crate::admission::Verdict;
use crate::endpoints::{self, AddressPolicy, Endpoint};
use crate::names::{check_label, check_subdomain};

/// Longest VMMigration name: it names the runner Job and goes into label values.
pub const MIGRATION_NAME_MAX: usize = 63;
/// Allowed range of `retryPolicy.maxAttempts`.
pub const MAX_ATTEMPTS: std::ops::RangeInclusive<i32> = 1..=10;
/// Allowed range of `targetResources.cpu`.
pub const CPU: std::ops::RangeInclusive<u32> = 1..=768;

/// Checks everything that needs no I/O: metadata, names, storage syntax and literal endpoint addresses
/// (under `addresses`), retry policy, resources. Warns about risky but legal choices.
pub fn check(
    namespace: &str,
    name: &str,
    spec: &VMMigrationSpec,
    addresses: &AddressPolicy,
) -> Verdict {
    let mut v = Verdict::default();
    check_metadata(&mut v, namespace, name);

    subdomain(&mut v, "spec.sourceName", &spec.source_name);
    if let Some(ns) = &spec.source_namespace {
        label(&mut v, "spec.sourceNamespace", ns);
    }
    subdomain(
        &mut v,
        "spec.targetProviderRef.name",
        &spec.target_provider_ref.name,
    );
    if let Some(ns) = &spec.target_provider_ref.namespace {
        label(&mut v, "spec.targetProviderRef.namespace", ns);
    }
    label(&mut v, "spec.targetName", &spec.target_name);
    if spec.target_storage_hint.as_deref() == Some("") {
        v.deny(
            "spec.targetStorageHint",
            "must not be empty: name a datastore, Proxmox storage or libvirt pool, or leave it out",
        );
    }
    check_network_hints(&mut v, spec);
    check_resources(&mut v, spec);
    check_storage(&mut v, namespace, &spec.storage, addresses);
    check_retry(&mut v, spec);
    check_cutover(&mut v, spec);
    v
}

/// deleteSource needs the user's consent to stop the source for the final copy; the shutdown
/// timeout must parse.
fn check_cutover(v: &mut Verdict, spec: &VMMigrationSpec) {
    let cutover = &spec.cutover;
    if let Some(timeout) = &cutover.shutdown_timeout
        && let Err(why) = crd::parse_duration(timeout)
    {
        v.deny("spec.cutover.shutdownTimeout", why.to_string());
    }
    if !spec.cleanup_policy.delete_source {
        return;
    }
    if !cutover.stop_source.stops() {
        v.deny(
            "spec.cleanupPolicy.deleteSource",
            "needs spec.cutover.stopSource: Shutdown or PowerOff: the source is deleted only after a \
             final copy taken while the migration held it stopped was read back from the target and \
             matched; without that consent a running source could change after its copy",
        );
    } else {
        v.warn(
            "spec.cleanupPolicy.deleteSource is true: the source VM will be stopped for the final copy and deleted once the target's disks were read back and matched, and that cannot be undone",
        );
    }
}

fn label(v: &mut Verdict, field: &str, value: &str) {
    if let Err(why) = check_label(value) {
        v.deny(field, why);
    }
}

fn subdomain(v: &mut Verdict, field: &str, value: &str) {
    if let Err(why) = check_subdomain(value) {
        v.deny(field, why);
    }
}

fn check_metadata(v: &mut Verdict, namespace: &str, name: &str) {
    if namespace.is_empty() {
        v.deny(
            "metadata.namespace",
            "is required: VMMigration is a namespaced kind",
        );
    } else {
        label(v, "metadata.namespace", namespace);
    }
    if name.is_empty() {
        v.deny("metadata.name", "is required");
    } else if let Err(why) = check_subdomain(name) {
        v.deny("metadata.name", why);
    } else if name.len() > MIGRATION_NAME_MAX {
        v.deny(
            "metadata.name",
            format!(
                "is {} characters long: at most {MIGRATION_NAME_MAX} are allowed (it names the runner Job and its labels)",
                name.len()
            ),
        );
    }
}

fn check_network_hints(v: &mut Verdict, spec: &VMMigrationSpec) {
    let mut seen = HashSet::new();
    for (i, hint) in spec.target_network_hints.iter().enumerate() {
        let field = format!("spec.targetNetworkHints[{i}]");
        if hint.name.is_empty() {
            v.deny(format!("{field}.name"), "must not be empty (e.g. eth0)");
        } else if !seen.insert(hint.name.as_str()) {
            v.deny(
                format!("{field}.name"),
                format!(
                    "{:?} is used by an earlier hint: interface names must be unique",
                    hint.name
                ),
            );
        }
        match (&hint.network, &hint.bridge) {
            (Some(_), Some(_)) | (None, None) => v.deny(
                field,
                "set exactly one of network (vSphere) or bridge (libvirt/Proxmox)",
            ),
            (Some(value), None) | (None, Some(value)) if value.is_empty() => v.deny(
                format!(
                    "{field}.{}",
                    if hint.network.is_some() {
                        "network"
                    } else {
                        "bridge"
                    }
                ),
                "must not be empty",
            ),
            _ => {}
        }
    }
}

fn check_resources(v: &mut Verdict, spec: &VMMigrationSpec) {
    let Some(resources) = &spec.target_resources else {
        return;
    };
    if let Some(cpu) = resources.cpu
        && !CPU.contains(&cpu)
    {
        v.deny(
            "spec.targetResources.cpu",
            format!(
                "{cpu} is out of range (allowed: {} to {})",
                CPU.start(),
                CPU.end()
            ),
        );
    }
    if let Some(memory) = &resources.memory
        && let Err(why) = crd::quantity::memory_bytes(&memory.0)
    {
        v.deny("spec.targetResources.memory", why.to_string());
    }
}

/// The endpoint of a storage spec, parsed for its type: `None` when there is none to check.
pub fn storage_endpoint(storage: &StorageSpec) -> Option<Result<Endpoint, String>> {
    let endpoint = storage.endpoint.as_deref()?;
    Some(match storage.type_ {
        StorageType::S3 => endpoints::parse_s3(endpoint),
        StorageType::Http => endpoints::parse_http(endpoint),
        StorageType::Nfs => endpoints::parse_nfs(endpoint),
    })
}

fn check_storage(
    v: &mut Verdict,
    namespace: &str,
    storage: &StorageSpec,
    addresses: &AddressPolicy,
) {
    let endpoint = storage.endpoint.as_deref();
    match storage.type_ {
        StorageType::S3 => match storage.bucket.as_deref() {
            None | Some("") => v.deny("spec.storage.bucket", "is required when storage.type is s3"),
            Some(bucket) => {
                if let Err(why) = check_bucket(bucket) {
                    v.deny("spec.storage.bucket", why);
                }
            }
        },
        StorageType::Http => {
            if endpoint.is_none_or(str::is_empty) {
                v.deny(
                    "spec.storage.endpoint",
                    "is required when storage.type is http: an http:// or https:// URL, e.g. https://files.example.com/exports",
                );
            }
        }
        StorageType::Nfs => {
            if endpoint.is_none_or(str::is_empty) {
                v.deny(
                    "spec.storage.endpoint",
                    "is required when storage.type is nfs: the NFS server's host name or IP address, optionally with :port",
                );
            }
            match storage.path.as_deref() {
                None | Some("") => v.deny(
                    "spec.storage.path",
                    "is required when storage.type is nfs: the absolute export path, e.g. /mnt/migrations",
                ),
                Some(path) if !path.starts_with('/') => v.deny(
                    "spec.storage.path",
                    format!("{path:?} must be an absolute path when storage.type is nfs, e.g. /mnt/migrations"),
                ),
                _ => {}
            }
            if storage.credentials_secret_ref.is_some() {
                v.warn("spec.storage.credentialsSecretRef is ignored for nfs storage");
            }
        }
    }
    match storage_endpoint(storage) {
        Some(Err(why)) => v.deny("spec.storage.endpoint", why),
        Some(Ok(parsed)) => {
            if let Err(why) = addresses.check_host(&parsed.host) {
                v.deny("spec.storage.endpoint", unroutable(&why));
            } else if parsed.plain_http {
                v.warn(format!(
                    "spec.storage.endpoint {:?} is plain http: disk images and storage credentials travel unencrypted; prefer https",
                    endpoints::redacted(storage.endpoint.as_deref().unwrap_or_default())
                ));
            }
        }
        None => {}
    }
    if let Some(path) = storage.path.as_deref() {
        if path.split('/').any(|segment| segment == "..") {
            v.deny(
                "spec.storage.path",
                format!("{path:?} must not contain '..' segments"),
            );
        }
        if path.contains('\0') {
            v.deny("spec.storage.path", "must not contain NUL characters");
        }
    }
    if let Some(secret) = &storage.credentials_secret_ref {
        subdomain(v, "spec.storage.credentialsSecretRef.name", &secret.name);
        if let Some(secret_namespace) = secret.namespace.as_deref()
            && secret_namespace != namespace
        {
            v.deny(
                "spec.storage.credentialsSecretRef.namespace",
                format!(
                    "{secret_namespace:?} is not allowed: the storage Secret must be in the VMMigration's namespace ({namespace:?}); leave namespace out or set it to {namespace:?}"
                ),
            );
        }
    }
}

/// The message for an endpoint address that is refused.
pub fn unroutable(why: &str) -> String {
    format!("{why}: storage must be reachable at a routable address")
}

/// S3 bucket naming rules (AWS's, which MinIO and most S3-compatible servers enforce too).
fn check_bucket(bucket: &str) -> Result<(), String> {
    let rules =
        "3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit";
    let bytes = bucket.as_bytes();
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = (3..=63).contains(&bytes.len())
        && edge(bytes[0])
        && edge(bytes[bytes.len() - 1])
        && bytes.iter().all(|&b| edge(b) || b == b'.' || b == b'-')
        && !bucket.contains("..")
        && bucket.parse::<std::net::Ipv4Addr>().is_err();
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{bucket:?} is not a valid S3 bucket name ({rules}, not an IP address)"
        ))
    }
}

fn check_retry(v: &mut Verdict, spec: &VMMigrationSpec) {
    let retry = &spec.retry_policy;
    if !MAX_ATTEMPTS.contains(&retry.max_attempts) {
        v.deny(
            "spec.retryPolicy.maxAttempts",
            format!(
                "{} is out of range (allowed: {} to {})",
                retry.max_attempts,
                MAX_ATTEMPTS.start(),
                MAX_ATTEMPTS.end()
            ),
        );
    }
    let backoff = crd::parse_duration(&retry.backoff_duration);
    let max_backoff = crd::parse_duration(&retry.max_backoff_duration);
    if let Err(why) = &backoff {
        v.deny("spec.retryPolicy.backoffDuration", why.to_string());
    }
    if let Err(why) = &max_backoff {
        v.deny("spec.retryPolicy.maxBackoffDuration", why.to_string());
    }
    if let (Ok(backoff), Ok(max_backoff)) = (backoff, max_backoff)
        && backoff > max_backoff
    {
        v.deny(
            "spec.retryPolicy.backoffDuration",
            format!(
                "{} exceeds retryPolicy.maxBackoffDuration ({}): it must be at most the maximum",
                retry.backoff_duration, retry.max_backoff_duration
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VMMigrationSpec {
        serde_json::from_value(serde_json::json!({
            "sourceName": "vm", "targetName": "vm-new",
            "targetProviderRef": {"name": "p"},
            "storage": {"type": "s3", "bucket": "bkt", "credentialsSecretRef": {"name": "s"}}
        }))
        .unwrap()
    }

    #[test]
    fn a_plain_spec_passes_without_warnings() {
        assert_eq!(
            check("default", "m", &spec(), &AddressPolicy::default()),
            Verdict::default()
        );
    }

    #[test]
    fn buckets() {
        for ok in ["bkt", "vm-migrations", "my.bucket.1"] {
            assert_eq!(check_bucket(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ab",
            "My_Bucket",
            "-abc",
            "abc-",
            "a..b",
            "10.0.0.1",
            &"a".repeat(64),
        ] {
            assert!(check_bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let mut s = spec();
        s.target_name = "Bad_Name".into();
        s.retry_policy.max_attempts = 0;
        s.storage.bucket = None;
        let verdict = check("default", "m", &s, &AddressPolicy::default());
        let fields: Vec<_> = verdict
            .violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "spec.targetName",
                "spec.storage.bucket",
                "spec.retryPolicy.maxAttempts"
            ]
        );
    }

    #[test]
    fn delete_source_needs_consent_to_stop_the_source() {
        let mut s = spec();
        s.cleanup_policy.delete_source = true;
        let verdict = check("default", "m", &s, &AddressPolicy::default());
        let fields: Vec<_> = verdict
            .violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["spec.cleanupPolicy.deleteSource"]);
        assert!(
            verdict.message().contains("cutover.stopSource"),
            "{}",
            verdict.message()
        );

        s.cutover.stop_source = crd::StopSource::Shutdown;
        s.cutover.shutdown_timeout = Some("5 minutes".into());
        let verdict = check("default", "m", &s, &AddressPolicy::default());
        let fields: Vec<_> = verdict
            .violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["spec.cutover.shutdownTimeout"]);

        s.cutover.shutdown_timeout = Some("90s".into());
        assert!(check("default", "m", &s, &AddressPolicy::default()).is_allowed());
    }

    #[test]
    fn risky_choices_are_warnings() {
        let mut s = spec();
        s.cleanup_policy.delete_source = true;
        s.cutover.stop_source = crd::StopSource::PowerOff;
        s.storage = StorageSpec {
            type_: StorageType::Http,
            endpoint: Some("http://files.example.com/x".into()),
            bucket: None,
            region: None,
            path: None,
            credentials_secret_ref: None,
        };
        let verdict = check("default", "m", &s, &AddressPolicy::default());
        assert!(verdict.is_allowed(), "{}", verdict.message());
        assert_eq!(verdict.warnings.len(), 2, "{:?}", verdict.warnings);
        assert!(verdict.warnings[0].contains("plain http"));
        assert!(verdict.warnings[1].contains("deleteSource"));
    }
}
