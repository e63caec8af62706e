//! Provider and VirtualMachine admission through the real router: what a Provider's
//! credentialSecretRef and endpoint, and a VirtualMachine's providerRef, may name, on create and on
//! every change (the edits a hostile tenant makes after a migration was admitted).

mod common;

use common::*;
use serde_json::{Value, json};
use webhook::cluster::MemoryCluster;

fn cluster() -> MemoryCluster {
    let mut cluster = world();
    cluster.grant(ALICE, "get", "providers", Some("default"), None);
    cluster
}

/// A review of `kind` (`Provider` or `VirtualMachine`).
fn review_of(kind: &str, op: &str, user: &str, object: &Value, old: Option<&Value>) -> Value {
    let mut r = review(op, user, Some(object), old);
    let resource = match kind {
        "Provider" => "providers",
        _ => "virtualmachines",
    };
    set(&mut r, "/request/kind/kind", json!(kind));
    set(&mut r, "/request/resource/resource", json!(resource));
    r
}

fn provider(spec: Value) -> Value {
    json!({"apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "Provider",
           "metadata": {"name": "mine", "namespace": "default"}, "spec": spec})
}

fn libvirt(secret: Value) -> Value {
    provider(
        json!({"type": "libvirt", "endpoint": "qemu+tcp://kvm1.example.com/system",
                    "credentialSecretRef": secret}),
    )
}

#[tokio::test]
async fn providers_may_name_only_secrets_their_author_may_read_in_their_namespace() {
    let server = TestServer::start(cluster(), Options::default()).await;
    let own = libvirt(json!({"name": "libvirt-credentials"}));
    let response = server
        .review(&review_of("Provider", "CREATE", ALICE, &own, None))
        .await;
    assert_eq!(response["allowed"], true, "{}", message(&response));

    let stolen = libvirt(json!({"name": "crown-jewels", "namespace": "ho-victim"}));
    for (op, old) in [("CREATE", None), ("UPDATE", Some(&own))] {
        let response = server
            .review(&review_of("Provider", op, ALICE, &stolen, old))
            .await;
        let text = message(&response);
        assert_eq!(response["allowed"], false, "{op}");
        assert!(
            text.contains(
                "spec.credentialSecretRef.namespace: \"ho-victim\" is not the Provider's namespace"
            ),
            "{op}: {text}"
        );
    }

    // mallory may not read the Secret she names
    let response = server
        .review(&review_of("Provider", "CREATE", MALLORY, &own, None))
        .await;
    let text = message(&response);
    assert_eq!(response["allowed"], false);
    assert!(
        text.contains("spec.credentialSecretRef: user \"mallory\" may not get Secret default/libvirt-credentials"),
        "{text}"
    );

    // an edit that leaves the spec as it is (labels) is not her business to be refused
    let mut relabeled = own.clone();
    relabeled["metadata"]["labels"] = json!({"team": "a"});
    let response = server
        .review(&review_of(
            "Provider",
            "UPDATE",
            MALLORY,
            &relabeled,
            Some(&own),
        ))
        .await;
    assert_eq!(response["allowed"], true, "{}", message(&response));
}

#[tokio::test]
async fn provider_endpoints_follow_the_endpoint_policy() {
    let server = TestServer::start(cluster(), Options::default()).await;
    let cases = [
        (
            "libvirt",
            "qemu+tcp://vrg:hunter2@kvm1.example.com/system",
            "spec.endpoint",
            "password",
        ),
        (
            "libvirt",
            "qemu+ssh://root@kvm1.example.com/system?command=/bin/sh",
            "spec.endpoint",
            "query parameters",
        ),
        (
            "libvirt",
            "qemu+ssh://root@kvm1.example.com/system?keyfile=/etc/shadow",
            "spec.endpoint",
            "query parameters",
        ),
        (
            "libvirt",
            "qemu+ext://kvm1.example.com/system",
            "spec.endpoint",
            "transport",
        ),
        (
            "libvirt",
            "qemu:///system",
            "spec.endpoint",
            "local libvirt socket",
        ),
        (
            "libvirt",
            "qemu+tcp://169.254.169.254/system",
            "spec.endpoint",
            "link-local",
        ),
        (
            "libvirt",
            "qemu+tcp://metadata-alias.test/system",
            "spec.endpoint",
            "resolves to 169.254.169.254",
        ),
        (
            "vsphere",
            "http://vcenter.example.com/sdk",
            "spec.endpoint",
            "https",
        ),
        (
            "vsphere",
            "https://admin:hunter2@vcenter.example.com",
            "spec.endpoint",
            "credentials",
        ),
        (
            "proxmox",
            "https://[fd00:ec2::254]:8006",
            "spec.endpoint",
            "metadata",
        ),
        (
            "proxmox",
            "https://127.0.0.1:8006",
            "spec.endpoint",
            "loopback",
        ),
    ];
    for (type_, endpoint, field, mention) in cases {
        let p = provider(json!({"type": type_, "endpoint": endpoint}));
        let response = server
            .review(&review_of("Provider", "CREATE", ALICE, &p, None))
            .await;
        let text = message(&response);
        assert_eq!(response["allowed"], false, "{endpoint} was allowed");
        assert!(text.contains(&format!("{field}:")), "{endpoint}: {text}");
        assert!(text.contains(mention), "{endpoint}: {text}");
        assert!(!text.contains("hunter2"), "{endpoint}: {text}");
    }
    let ssh = provider(
        json!({"type": "proxmox", "endpoint": "https://pve.example.com:8006",
                              "ssh": {"host": "metadata.google.internal", "port": 22}}),
    );
    let response = server
        .review(&review_of("Provider", "CREATE", ALICE, &ssh, None))
        .await;
    let text = message(&response);
    assert!(text.contains("spec.ssh.host:"), "{text}");
    assert!(text.contains("metadata"), "{text}");
}

#[tokio::test]
async fn virtual_machines_may_name_only_providers_their_author_may_read() {
    let server = TestServer::start(cluster(), Options::default()).await;
    let vm = |provider: &str| {
        json!({"apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VirtualMachine",
               "metadata": {"name": "web", "namespace": "kvm-vms"},
               "spec": {"providerRef": {"name": provider, "namespace": "default"}}})
    };
    let response = server
        .review(&review_of(
            "VirtualMachine",
            "CREATE",
            ALICE,
            &vm("libvirt-kvm"),
            None,
        ))
        .await;
    assert_eq!(response["allowed"], true, "{}", message(&response));
    // repointing a VM at another team's Provider (whose VMs deleteSource would delete)
    let response = server
        .review(&review_of(
            "VirtualMachine",
            "UPDATE",
            MALLORY,
            &vm("vsphere-prod"),
            Some(&vm("libvirt-kvm")),
        ))
        .await;
    let text = message(&response);
    assert_eq!(response["allowed"], false);
    assert!(
        text.contains(
            "spec.providerRef: user \"mallory\" may not get Provider default/vsphere-prod"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_providers_concurrency_limit_is_at_least_one() {
    let server = TestServer::start(cluster(), Options::default()).await;
    let with_limit = |n: i64| {
        let mut p = libvirt(json!({"name": "libvirt-credentials"}));
        p["spec"]["maxConcurrentMigrations"] = json!(n);
        p
    };
    let own = libvirt(json!({"name": "libvirt-credentials"}));
    for (op, old) in [("CREATE", None), ("UPDATE", Some(&own))] {
        let response = server
            .review(&review_of("Provider", op, ALICE, &with_limit(0), old))
            .await;
        let text = message(&response);
        assert_eq!(response["allowed"], false, "{op}");
        assert!(
            text.contains("spec.maxConcurrentMigrations: 0 must be at least 1"),
            "{op}: {text}"
        );
        let response = server
            .review(&review_of("Provider", op, ALICE, &with_limit(4), old))
            .await;
        assert_eq!(response["allowed"], true, "{op}: {}", message(&response));
    }
}
