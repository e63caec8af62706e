//! The rejection cases, shared by the router tests (rejections.rs) and the real-apiserver tests
//! (apiserver.rs): each edits a valid review and names the field its denial must name.

use super::*;
use serde_json::{Value, json};

/// Sets a value inside the review's object.
pub fn s(review: &mut Value, pointer: &str, value: Value) {
    set(review, &format!("/request/object{pointer}"), value);
}

/// Removes a value from the review's object.
pub fn rm(review: &mut Value, pointer: &str) {
    remove(review, &format!("/request/object{pointer}"));
}

/// The operation of a case.
#[derive(Clone, Copy)]
pub enum Op {
    Create,
    /// UPDATE with the base migration as the old object.
    Update,
}

/// One rejection case.
pub struct Case {
    pub name: &'static str,
    pub op: Op,
    pub user: &'static str,
    pub edit: fn(&mut Value),
    /// The field the message must name.
    pub field: &'static str,
    /// Further text the message must contain (allowed values, the reason).
    pub mentions: &'static [&'static str],
}

/// A CREATE case by alice.
pub const fn create(
    name: &'static str,
    edit: fn(&mut Value),
    field: &'static str,
    mentions: &'static [&'static str],
) -> Case {
    Case {
        name,
        op: Op::Create,
        user: ALICE,
        edit,
        field,
        mentions,
    }
}

/// Every rejection case, sorted by name.
pub fn cases() -> Vec<Case> {
    let mut cases = vec![
        // Missing required fields.
        create("no spec", |r| rm(r, "/spec"), "spec", &["required"]),
        create(
            "no sourceName",
            |r| rm(r, "/spec/sourceName"),
            "spec.sourceName",
            &["required"],
        ),
        create(
            "no targetName",
            |r| rm(r, "/spec/targetName"),
            "spec.targetName",
            &["required"],
        ),
        create(
            "no targetProviderRef",
            |r| rm(r, "/spec/targetProviderRef"),
            "spec.targetProviderRef",
            &["required"],
        ),
        create(
            "no targetProviderRef.name",
            |r| rm(r, "/spec/targetProviderRef/name"),
            "spec.targetProviderRef.name",
            &["required"],
        ),
        create(
            "no storage",
            |r| rm(r, "/spec/storage"),
            "spec.storage",
            &["required"],
        ),
        create(
            "no storage.type",
            |r| rm(r, "/spec/storage/type"),
            "spec.storage.type",
            &["required"],
        ),
        create(
            "empty sourceName",
            |r| s(r, "/spec/sourceName", json!("")),
            "spec.sourceName",
            &["must not be empty"],
        ),
        create(
            "no namespace",
            |r| {
                rm(r, "/metadata/namespace");
                remove(r, "/request/namespace");
            },
            "metadata.namespace",
            &["namespaced"],
        ),
        // DNS-1123 names.
        create(
            "metadata.name with underscore",
            |r| s(r, "/metadata/name", json!("Move_It")),
            "metadata.name",
            &["DNS-1123 subdomain", "lowercase"],
        ),
        create(
            "metadata.name of 64 characters",
            |r| s(r, "/metadata/name", json!("m".repeat(64))),
            "metadata.name",
            &["at most 63"],
        ),
        create(
            "targetName uppercase",
            |r| s(r, "/spec/targetName", json!("Moved-VM")),
            "spec.targetName",
            &["DNS-1123 label"],
        ),
        create(
            "targetName with a dot",
            |r| s(r, "/spec/targetName", json!("moved.vm")),
            "spec.targetName",
            &["DNS-1123 label"],
        ),
        create(
            "targetName of 64 characters",
            |r| s(r, "/spec/targetName", json!("v".repeat(64))),
            "spec.targetName",
            &["at most 63"],
        ),
        create(
            "sourceName with a space",
            |r| s(r, "/spec/sourceName", json!("my vm")),
            "spec.sourceName",
            &["DNS-1123 subdomain"],
        ),
        create(
            "sourceNamespace not a label",
            |r| s(r, "/spec/sourceNamespace", json!("kvm.vms")),
            "spec.sourceNamespace",
            &["DNS-1123 label"],
        ),
        create(
            "targetProviderRef.namespace not a label",
            |r| s(r, "/spec/targetProviderRef/namespace", json!("Default")),
            "spec.targetProviderRef.namespace",
            &["DNS-1123 label"],
        ),
        create(
            "credentialsSecretRef.name invalid",
            |r| {
                s(
                    r,
                    "/spec/storage/credentialsSecretRef/name",
                    json!("S3 creds"),
                )
            },
            "spec.storage.credentialsSecretRef.name",
            &["DNS-1123"],
        ),
        // Storage.
        create(
            "unknown storage type",
            |r| s(r, "/spec/storage/type", json!("ftp")),
            "spec.storage.type",
            &["unknown variant `ftp`", "`s3`, `http`, `nfs`"],
        ),
        create(
            "s3 without bucket",
            |r| rm(r, "/spec/storage/bucket"),
            "spec.storage.bucket",
            &["required when storage.type is s3"],
        ),
        create(
            "s3 bucket with uppercase",
            |r| s(r, "/spec/storage/bucket", json!("VM_Migrations")),
            "spec.storage.bucket",
            &["not a valid S3 bucket name"],
        ),
        create(
            "s3 endpoint with a path",
            |r| s(r, "/spec/storage/endpoint", json!("storage.test/bucket")),
            "spec.storage.endpoint",
            &["host[:port]"],
        ),
        create(
            "s3 endpoint with ftp scheme",
            |r| s(r, "/spec/storage/endpoint", json!("ftp://storage.test")),
            "spec.storage.endpoint",
            &["allowed: http, https"],
        ),
        create(
            "http without endpoint",
            |r| {
                s(
                    r,
                    "/spec/storage",
                    json!({"type": "http", "credentialsSecretRef": {"name": "fileserver-token"}}),
                );
            },
            "spec.storage.endpoint",
            &["required when storage.type is http", "https://"],
        ),
        create(
            "http endpoint without scheme",
            |r| {
                s(
                    r,
                    "/spec/storage",
                    json!({"type": "http", "endpoint": "files.example.com/exports"}),
                );
            },
            "spec.storage.endpoint",
            &["http:// or https:// URL"],
        ),
        create(
            "http endpoint with s3 scheme",
            |r| {
                s(
                    r,
                    "/spec/storage",
                    json!({"type": "http", "endpoint": "s3://bucket/x"}),
                );
            },
            "spec.storage.endpoint",
            &["allowed: http, https"],
        ),
        create(
            "endpoint with credentials in the URL",
            |r| {
                s(
                    r,
                    "/spec/storage",
                    json!({"type": "http", "endpoint": "https://user:hunter2@files.example.com/x"}),
                );
            },
            "spec.storage.endpoint",
            &["credentialsSecretRef"],
        ),
        create(
            "credentials in a URL of a refused scheme",
            |r| {
                s(
                    r,
                    "/spec/storage/endpoint",
                    json!("ftp://user:hunter2@storage.test"),
                )
            },
            "spec.storage.endpoint",
            &["***@storage.test", "allowed: http, https"],
        ),
        create(
            "nfs without path",
            |r| {
                s(
                    r,
                    "/spec/storage",
                    json!({"type": "nfs", "endpoint": "nfs.example.com"}),
                );
            },
            "spec.storage.path",
            &["required when storage.type is nfs", "absolute"],
        ),
        create(
            "nfs relative path",
            |r| {
                s(
                    r,
                    "/spec/storage",
                    json!({"type": "nfs", "endpoint": "nfs.example.com", "path": "mnt/migrations"}),
                );
            },
            "spec.storage.path",
            &["absolute path"],
        ),
        create(
            "nfs without endpoint",
            |r| {
                s(
                    r,
                    "/spec/storage",
                    json!({"type": "nfs", "path": "/mnt/migrations"}),
                );
            },
            "spec.storage.endpoint",
            &["required when storage.type is nfs"],
        ),
        create(
            "nfs endpoint as a URL",
            |r| {
                s(
                    r,
                    "/spec/storage",
                    json!({"type": "nfs", "endpoint": "nfs://nfs.example.com", "path": "/mnt/m"}),
                );
            },
            "spec.storage.endpoint",
            &["host name or IP address"],
        ),
        create(
            "path climbing out with ..",
            |r| s(r, "/spec/storage/path", json!("prefix/../../etc")),
            "spec.storage.path",
            &["'..'"],
        ),
        // Endpoint addresses.
        create(
            "endpoint is the metadata address",
            |r| s(r, "/spec/storage/endpoint", json!("169.254.169.254")),
            "spec.storage.endpoint",
            &["link-local"],
        ),
        create(
            "endpoint in 169.254.0.0/16",
            |r| {
                s(
                    r,
                    "/spec/storage/endpoint",
                    json!("http://169.254.10.1:9000"),
                )
            },
            "spec.storage.endpoint",
            &["link-local"],
        ),
        create(
            "endpoint is IPv6 link-local",
            |r| s(r, "/spec/storage/endpoint", json!("https://[fe80::1]:9000")),
            "spec.storage.endpoint",
            &["link-local"],
        ),
        create(
            "endpoint is Alibaba metadata",
            |r| s(r, "/spec/storage/endpoint", json!("100.100.100.200")),
            "spec.storage.endpoint",
            &["cloud metadata"],
        ),
        create(
            "endpoint is AWS IPv6 metadata",
            |r| s(r, "/spec/storage/endpoint", json!("[fd00:ec2::254]")),
            "spec.storage.endpoint",
            &["cloud metadata"],
        ),
        create(
            "endpoint is IPv4-mapped metadata",
            |r| {
                s(
                    r,
                    "/spec/storage/endpoint",
                    json!("[::ffff:169.254.169.254]:80"),
                )
            },
            "spec.storage.endpoint",
            &["link-local"],
        ),
        create(
            "endpoint is metadata.google.internal",
            |r| {
                s(
                    r,
                    "/spec/storage/endpoint",
                    json!("http://metadata.google.internal"),
                )
            },
            "spec.storage.endpoint",
            &["cloud metadata"],
        ),
        create(
            "endpoint name resolves to metadata",
            |r| s(r, "/spec/storage/endpoint", json!("metadata-alias.test")),
            "spec.storage.endpoint",
            &["metadata-alias.test resolves to 169.254.169.254"],
        ),
        create(
            "endpoint name resolves partly to link-local",
            |r| s(r, "/spec/storage/endpoint", json!("https://sneaky.test")),
            "spec.storage.endpoint",
            &["sneaky.test resolves to fe80::1"],
        ),
        create(
            "endpoint is loopback",
            |r| s(r, "/spec/storage/endpoint", json!("127.0.0.1:9000")),
            "spec.storage.endpoint",
            &["loopback", "--allow-loopback-endpoints"],
        ),
        create(
            "endpoint is localhost",
            |r| s(r, "/spec/storage/endpoint", json!("http://localhost:9000")),
            "spec.storage.endpoint",
            &["loopback"],
        ),
        create(
            "endpoint name resolves to loopback",
            |r| s(r, "/spec/storage/endpoint", json!("loopback-alias.test")),
            "spec.storage.endpoint",
            &["resolves to 127.0.0.1"],
        ),
        create(
            "nfs server is the metadata address",
            |r| {
                s(
                    r,
                    "/spec/storage",
                    json!({"type": "nfs", "endpoint": "169.254.169.254", "path": "/x"}),
                );
            },
            "spec.storage.endpoint",
            &["link-local"],
        ),
        create(
            "endpoint is unspecified",
            |r| s(r, "/spec/storage/endpoint", json!("0.0.0.0:9000")),
            "spec.storage.endpoint",
            &["unspecified"],
        ),
        // Secrets in other namespaces.
        create(
            "credentialsSecretRef in another namespace",
            |r| {
                s(
                    r,
                    "/spec/storage/credentialsSecretRef/namespace",
                    json!("kube-system"),
                )
            },
            "spec.storage.credentialsSecretRef.namespace",
            &["VMMigration's namespace"],
        ),
        // Retry policy.
        create(
            "unparsable backoffDuration",
            |r| s(r, "/spec/retryPolicy/backoffDuration", json!("5 minutes")),
            "spec.retryPolicy.backoffDuration",
            &["ns, us, ms, s, m, h"],
        ),
        create(
            "maxBackoffDuration in days",
            |r| s(r, "/spec/retryPolicy/maxBackoffDuration", json!("1d")),
            "spec.retryPolicy.maxBackoffDuration",
            &["unknown unit", "allowed: ns, us, ms, s, m, h"],
        ),
        create(
            "negative backoffDuration",
            |r| s(r, "/spec/retryPolicy/backoffDuration", json!("-5m")),
            "spec.retryPolicy.backoffDuration",
            &["invalid duration"],
        ),
        create(
            "backoffDuration above maxBackoffDuration",
            |r| s(r, "/spec/retryPolicy/backoffDuration", json!("1h")),
            "spec.retryPolicy.backoffDuration",
            &["exceeds retryPolicy.maxBackoffDuration (30m)"],
        ),
        create(
            "maxAttempts 0",
            |r| s(r, "/spec/retryPolicy/maxAttempts", json!(0)),
            "spec.retryPolicy.maxAttempts",
            &["allowed: 1 to 10"],
        ),
        create(
            "maxAttempts 11",
            |r| s(r, "/spec/retryPolicy/maxAttempts", json!(11)),
            "spec.retryPolicy.maxAttempts",
            &["allowed: 1 to 10"],
        ),
        create(
            "maxAttempts as a string",
            |r| s(r, "/spec/retryPolicy/maxAttempts", json!("three")),
            "spec.retryPolicy.maxAttempts",
            &["invalid type"],
        ),
        // Cutover.
        create(
            "deleteSource without consent to stop the source",
            |r| s(r, "/spec/cleanupPolicy/deleteSource", json!(true)),
            "spec.cleanupPolicy.deleteSource",
            &["cutover.stopSource"],
        ),
        create(
            "deleteSource with stopSource Never",
            |r| {
                s(r, "/spec/cleanupPolicy/deleteSource", json!(true));
                s(r, "/spec/cutover", json!({"stopSource": "Never"}));
            },
            "spec.cleanupPolicy.deleteSource",
            &["cutover.stopSource"],
        ),
        create(
            "unknown stopSource",
            |r| s(r, "/spec/cutover", json!({"stopSource": "Hibernate"})),
            "spec.cutover.stopSource",
            &["Hibernate"],
        ),
        create(
            "unparsable shutdownTimeout",
            |r| {
                s(
                    r,
                    "/spec/cutover",
                    json!({"stopSource": "Shutdown", "shutdownTimeout": "5 minutes"}),
                )
            },
            "spec.cutover.shutdownTimeout",
            &["5 minutes"],
        ),
        // Target shape.
        create(
            "raw disks for vSphere",
            |r| s(r, "/spec/targetDiskFormat", json!("raw")),
            "spec.targetDiskFormat",
            &["vsphere", "allowed: vmdk"],
        ),
        create(
            "vmdk disks for libvirt",
            |r| {
                s(r, "/spec/targetProviderRef/name", json!("kvm-host1"));
                s(r, "/spec/targetDiskFormat", json!("vmdk"));
            },
            "spec.targetDiskFormat",
            &["libvirt", "allowed: qcow2, raw"],
        ),
        create(
            "unknown disk format",
            |r| s(r, "/spec/targetDiskFormat", json!("vhdx")),
            "spec.targetDiskFormat",
            &["`qcow2`, `vmdk`, `raw`"],
        ),
        create(
            "bridge hint for vSphere",
            |r| {
                s(
                    r,
                    "/spec/targetNetworkHints",
                    json!([{"name": "eth0", "bridge": "virbr0"}]),
                )
            },
            "spec.targetNetworkHints[0].bridge",
            &["set network"],
        ),
        create(
            "network and bridge in one hint",
            |r| {
                s(
                    r,
                    "/spec/targetNetworkHints",
                    json!([{"name": "eth0", "network": "VM Network", "bridge": "br0"}]),
                )
            },
            "spec.targetNetworkHints[0]",
            &["exactly one of network (vSphere) or bridge"],
        ),
        create(
            "duplicate interface names",
            |r| {
                s(
                    r,
                    "/spec/targetNetworkHints",
                    json!([{"name": "eth0", "network": "A"}, {"name": "eth0", "network": "B"}]),
                )
            },
            "spec.targetNetworkHints[1].name",
            &["unique"],
        ),
        create(
            "zero CPUs",
            |r| s(r, "/spec/targetResources", json!({"cpu": 0})),
            "spec.targetResources.cpu",
            &["allowed: 1 to 768"],
        ),
        create(
            "memory in GB",
            |r| s(r, "/spec/targetResources", json!({"memory": "8GB"})),
            "spec.targetResources.memory",
            &["Ki, Mi, Gi"],
        ),
        create(
            "empty targetStorageHint",
            |r| s(r, "/spec/targetStorageHint", json!("")),
            "spec.targetStorageHint",
            &["must not be empty"],
        ),
        // Referenced objects.
        create(
            "target provider does not exist",
            |r| s(r, "/spec/targetProviderRef/name", json!("nowhere")),
            "spec.targetProviderRef",
            &["Provider default/nowhere does not exist"],
        ),
        create(
            "target provider in another namespace does not exist",
            |r| s(r, "/spec/targetProviderRef/namespace", json!("kvm-vms")),
            "spec.targetProviderRef",
            &["Provider kvm-vms/vsphere-prod does not exist"],
        ),
        create(
            "source VM does not exist",
            |r| s(r, "/spec/sourceName", json!("ghost")),
            "spec.sourceName",
            &["VirtualMachine default/ghost does not exist"],
        ),
        create(
            "source VM in the wrong namespace",
            |r| s(r, "/spec/sourceNamespace", json!("proxmox-vms")),
            "spec.sourceName",
            &["VirtualMachine proxmox-vms/my-libvirt-vm does not exist"],
        ),
        create(
            "source VM's provider does not exist",
            |r| s(r, "/spec/sourceName", json!("orphan")),
            "spec.sourceName",
            &["Provider default/decommissioned, which does not exist"],
        ),
        create(
            "target name taken on the target provider",
            |r| s(r, "/spec/targetName", json!("already-there")),
            "spec.targetName",
            &["is taken", "other-team/already-there"],
        ),
        create(
            "target name taken by the source itself",
            |r| {
                s(r, "/spec/targetProviderRef/name", json!("libvirt-kvm"));
                s(r, "/spec/targetName", json!("my-libvirt-vm"));
            },
            "spec.targetName",
            &["is taken"],
        ),
        // Access (SubjectAccessReview).
        Case {
            name: "user may not read the storage Secret",
            op: Op::Create,
            user: MALLORY,
            edit: |_| {},
            field: "spec.storage.credentialsSecretRef",
            mentions: &["\"mallory\" may not get Secret default/s3-credentials"],
        },
        Case {
            name: "user may not read the target provider's Secret",
            op: Op::Create,
            user: ALICE,
            edit: |r| {
                s(
                    r,
                    "/spec/targetProviderRef",
                    json!({"name": "vsphere-locked", "namespace": "vault"}),
                )
            },
            field: "spec.targetProviderRef",
            mentions: &[
                "may not get Secret vault/locked-credentials",
                "credentials of Provider vault/vsphere-locked",
            ],
        },
        Case {
            name: "user may not read the source provider's Secret",
            op: Op::Create,
            user: MALLORY,
            edit: |_| {},
            field: "spec.sourceName",
            mentions: &["may not get Secret default/libvirt-credentials"],
        },
        Case {
            name: "user may not read the source VM",
            op: Op::Create,
            user: MALLORY,
            edit: |r| {
                s(r, "/spec/sourceName", json!("ubuntu-server"));
                s(r, "/spec/sourceNamespace", json!("kvm-vms"));
            },
            field: "spec.sourceName",
            mentions: &["may not get VirtualMachine kvm-vms/ubuntu-server"],
        },
        Case {
            name: "user may not delete the source VM",
            op: Op::Create,
            user: ALICE,
            edit: |r| {
                s(r, "/spec/sourceName", json!("ubuntu-server"));
                s(r, "/spec/sourceNamespace", json!("kvm-vms"));
                s(r, "/spec/cleanupPolicy/deleteSource", json!(true));
                s(r, "/spec/cutover", json!({"stopSource": "PowerOff"}));
            },
            field: "spec.cleanupPolicy.deleteSource",
            mentions: &["may not delete VirtualMachine kvm-vms/ubuntu-server"],
        },
        // Immutability.
        Case {
            name: "update changes targetName",
            op: Op::Update,
            user: ALICE,
            edit: |r| s(r, "/spec/targetName", json!("other-name")),
            field: "spec.targetName",
            mentions: &["immutable"],
        },
        Case {
            name: "update changes the bucket",
            op: Op::Update,
            user: ALICE,
            edit: |r| s(r, "/spec/storage/bucket", json!("elsewhere")),
            field: "spec.storage.bucket",
            mentions: &["immutable"],
        },
        Case {
            name: "update adds deleteSource",
            op: Op::Update,
            user: ADMIN,
            edit: |r| s(r, "/spec/cleanupPolicy/deleteSource", json!(true)),
            field: "spec.cleanupPolicy.deleteSource",
            mentions: &["immutable"],
        },
        Case {
            name: "update removes retryPolicy",
            op: Op::Update,
            user: ADMIN,
            edit: |r| rm(r, "/spec/retryPolicy"),
            field: "spec.retryPolicy",
            mentions: &["immutable"],
        },
        // Wrong kind routed here.
        create(
            "not a VMMigration",
            |r| {
                set(
                    r,
                    "/request/kind",
                    json!({"group": "", "version": "v1", "kind": "Pod"}),
                )
            },
            "kind",
            &["VMMigration, Provider and VirtualMachine"],
        ),
    ];
    cases.sort_by_key(|c| c.name);
    cases
}
