//! A hostile tenant on the e2e world, through the real apiserver, webhook, operator and runner pods
//! (kubectl as cluster admin, so every SubjectAccessReview passes): the edits that used to steal
//! another namespace's Secret or aim deleteSource at another team's VM after a migration was
//! admitted, and credentials put into an endpoint. Each must be refused, with nothing planted
//! showing up in any status, Event, log or Secret. Needs `make e2e-up`.

mod cluster_world;

use std::time::Duration;

use cluster_world::Cluster;
use crd::{Phase, VMMigration};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;

const TIMEOUT: Duration = Duration::from_secs(300);

/// A string no test object holds by chance.
fn planted(what: &str) -> String {
    format!("planted-{what}-{}-{:x}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// The victim's namespace with its Secret `crown-jewels` holding `password`.
async fn victim(cluster: &Cluster, ns: &str, password: &str) {
    cluster.fresh_namespace(ns).await;
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: crown-jewels, namespace: {ns}}}\n\
         stringData: {{username: crown, password: {password}}}\n"
    ));
}

/// A tenant namespace: its Secrets `mine-creds` and `other-creds`, libvirt Providers `mine` and
/// `theirs` (both on the world's libvirtd), a VirtualMachine `vm1` on `mine`, and a migration whose
/// HTTP storage does not resolve, so that attempt 1 fails and a retry is scheduled.
async fn tenant(cluster: &Cluster, ns: &str) {
    cluster.fresh_namespace(ns).await;
    let uri = cluster.var("VRG_LIBVIRT_URI").to_string();
    let (user, pass) = (
        cluster.var("VRG_LIBVIRT_USER"),
        cluster.var("VRG_LIBVIRT_PASSWORD"),
    );
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: mine-creds, namespace: {ns}}}\n\
         stringData: {{username: {user}, password: {pass}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: other-creds, namespace: {ns}}}\n\
         stringData: {{username: {user}, password: {pass}}}\n---\n\
         apiVersion: infra.virtrigaud.io/v1beta1\nkind: Provider\nmetadata: {{name: mine, namespace: {ns}}}\n\
         spec: {{type: libvirt, endpoint: \"{uri}\", credentialSecretRef: {{name: mine-creds}}}}\n---\n\
         apiVersion: infra.virtrigaud.io/v1beta1\nkind: Provider\nmetadata: {{name: theirs, namespace: {ns}}}\n\
         spec: {{type: libvirt, endpoint: \"{uri}\", credentialSecretRef: {{name: other-creds}}}}\n---\n\
         apiVersion: infra.virtrigaud.io/v1beta1\nkind: VirtualMachine\nmetadata: {{name: vm1, namespace: {ns}}}\n\
         spec: {{providerRef: {{name: mine}}}}\n---\n\
         apiVersion: infra.virtrigaud.io/v1beta1\nkind: VMMigration\nmetadata: {{name: m, namespace: {ns}}}\n\
         spec:\n  sourceName: vm1\n  targetProviderRef: {{name: mine}}\n  targetName: vm1-copy\n  \
         storage: {{type: http, endpoint: \"http://storage.does-not-resolve.invalid/x\"}}\n  \
         cleanupPolicy: {{deleteSource: true}}\n  \
         cutover: {{stopSource: PowerOff}}\n  \
         retryPolicy: {{maxAttempts: 3, backoffDuration: 20s, maxBackoffDuration: 1m}}\n"
    ));
}

/// Waits until attempt 1 of `ns/m` failed and attempt 2 is scheduled.
async fn retry_scheduled(cluster: &Cluster, ns: &str) {
    let api: Api<VMMigration> = Api::namespaced(cluster.client.clone(), ns);
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let s = api.get("m").await.unwrap().status.unwrap_or_default();
        if s.attempt == Some(2) && s.next_retry_time.is_some() {
            assert!(
                !s.references.is_empty(),
                "the references were pinned: {s:?}"
            );
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retry scheduled: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Everything of namespace `ns` a planted string could leak into: the migration's status, the
/// Events, the runner logs and every Secret's data.
async fn exposure(cluster: &Cluster, ns: &str) -> String {
    let (_, status) = cluster.kubectl(&["-n", ns, "get", "vmm", "-o", "yaml"], None);
    let (_, events) = cluster.kubectl(&["-n", ns, "get", "events", "-o", "yaml"], None);
    let logs = cluster.runner_logs(ns, "m");
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
    let mut data = String::new();
    for s in secrets.list(&ListParams::default()).await.unwrap().items {
        for (k, v) in s.data.unwrap_or_default() {
            data.push_str(&format!("{k}={}\n", String::from_utf8_lossy(&v.0)));
        }
    }
    format!("{status}\n{events}\n{logs}\n{data}")
}

fn ready_reason(m: &VMMigration) -> (Option<String>, String) {
    let c = m
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .cloned()
        .unwrap_or_else(|| panic!("no Ready condition: {m:?}"));
    (c.reason, c.message.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_edited_after_admission_cannot_take_another_namespaces_secret() {
    let cluster = Cluster::load().await;
    let (ns, victim_ns) = ("e2e-tenant-theft", "e2e-victim");
    let password = planted("crown");
    victim(&cluster, victim_ns, &password).await;
    tenant(&cluster, ns).await;
    retry_scheduled(&cluster, ns).await;

    // the edit of the reproduction: refused by the webhook, even for a cluster admin
    let patch = format!(
        r#"{{"spec":{{"credentialSecretRef":{{"name":"crown-jewels","namespace":"{victim_ns}"}}}}}}"#
    );
    let (ok, out) = cluster.kubectl(
        &[
            "-n",
            ns,
            "patch",
            "provider",
            "mine",
            "--type=merge",
            "-p",
            &patch,
        ],
        None,
    );
    assert!(!ok, "the cross-namespace Secret was admitted: {out}");
    assert!(
        out.contains("spec.credentialSecretRef.namespace") && out.contains("own namespace"),
        "{out}"
    );
    // a change the webhook allows (a Secret of the tenant's own) is refused by the operator: the
    // migration keeps the objects it was admitted with
    let (ok, out) = cluster.kubectl(
        &[
            "-n",
            ns,
            "patch",
            "provider",
            "mine",
            "--type=merge",
            "-p",
            r#"{"spec":{"credentialSecretRef":{"name":"other-creds"}}}"#,
        ],
        None,
    );
    assert!(ok, "{out}");
    let m = cluster.wait_done(ns, "m", TIMEOUT).await;
    assert_eq!(m.status.as_ref().unwrap().phase, Some(Phase::Failed));
    let (reason, message) = ready_reason(&m);
    assert_eq!(reason.as_deref(), Some("ReferenceChanged"), "{message}");
    assert!(
        message.contains(&format!("Provider {ns}/mine changed"))
            && message.contains(&format!("credentials {ns}/mine-creds"))
            && message.contains(&format!("credentials {ns}/other-creds")),
        "{message}"
    );
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
    assert!(
        secrets.get_opt("m-runner-a2").await.unwrap().is_none(),
        "no runner Secret for attempt 2"
    );
    let seen = exposure(&cluster, ns).await;
    assert!(
        !seen.contains(&password),
        "the victim's password leaked into {ns}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_virtual_machine_repointed_after_admission_is_refused_before_delete_source() {
    let cluster = Cluster::load().await;
    let ns = "e2e-tenant-repoint";
    tenant(&cluster, ns).await;
    retry_scheduled(&cluster, ns).await;
    let (ok, out) = cluster.kubectl(
        &[
            "-n",
            ns,
            "patch",
            "virtualmachine",
            "vm1",
            "--type=merge",
            "-p",
            r#"{"spec":{"providerRef":{"name":"theirs"}}}"#,
        ],
        None,
    );
    assert!(ok, "{out}");
    let m = cluster.wait_done(ns, "m", TIMEOUT).await;
    let (reason, message) = ready_reason(&m);
    assert_eq!(reason.as_deref(), Some("ReferenceChanged"), "{message}");
    assert!(
        message.contains(&format!("VirtualMachine {ns}/vm1 changed: it was on Provider {ns}/mine, it is now on Provider {ns}/theirs")),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_an_endpoint_are_refused_and_never_echoed() {
    let cluster = Cluster::load().await;
    let ns = "e2e-tenant-endpoint";
    cluster.fresh_namespace(ns).await;
    let password = planted("endpoint");
    let yaml = format!(
        "apiVersion: infra.virtrigaud.io/v1beta1\nkind: Provider\nmetadata: {{name: leaky, namespace: {ns}}}\n\
         spec: {{type: libvirt, endpoint: \"qemu+tcp://vrg:{password}@127.0.0.1:16510/system\"}}\n"
    );
    let (ok, out) = cluster.kubectl(&["apply", "-f", "-"], Some(&yaml));
    assert!(!ok, "admitted: {out}");
    assert!(
        out.contains("spec.endpoint") && out.contains("password"),
        "{out}"
    );
    assert!(
        !out.contains(&password),
        "the denial echoes the password: {out}"
    );
    let (_, events) = cluster.kubectl(&["-n", ns, "get", "events", "-o", "yaml"], None);
    assert!(!events.contains(&password));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_endpoint_the_webhook_never_sees_is_judged_where_the_runner_connects() {
    let cluster = Cluster::load().await;
    let ns = "e2e-tenant-metadata";
    cluster.fresh_namespace(ns).await;
    let secret_key = planted("s3-secret");
    let uri = cluster.var("VRG_LIBVIRT_URI").to_string();
    let (user, pass) = (
        cluster.var("VRG_LIBVIRT_USER"),
        cluster.var("VRG_LIBVIRT_PASSWORD"),
    );
    // the spec names the world's S3 server; the Secret's endpoint key (which takes precedence and
    // which admission never reads) names the cloud metadata service
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: kvm, namespace: {ns}}}\n\
         stringData: {{username: {user}, password: {pass}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: s3, namespace: {ns}}}\n\
         stringData: {{accessKey: tenant, secretKey: {secret_key}, endpoint: \"http://169.254.169.254\"}}\n---\n\
         apiVersion: infra.virtrigaud.io/v1beta1\nkind: Provider\nmetadata: {{name: mine, namespace: {ns}}}\n\
         spec: {{type: libvirt, endpoint: \"{uri}\", credentialSecretRef: {{name: kvm}}}}\n---\n\
         apiVersion: infra.virtrigaud.io/v1beta1\nkind: VirtualMachine\nmetadata: {{name: vm1, namespace: {ns}}}\n\
         spec: {{providerRef: {{name: mine}}}}\n---\n\
         apiVersion: infra.virtrigaud.io/v1beta1\nkind: VMMigration\nmetadata: {{name: m, namespace: {ns}}}\n\
         spec:\n  sourceName: vm1\n  targetProviderRef: {{name: mine}}\n  targetName: vm1-copy\n  \
         storage: {{type: s3, bucket: vm-migrations, endpoint: \"{}\", credentialsSecretRef: {{name: s3}}}}\n  \
         retryPolicy: {{maxAttempts: 3, backoffDuration: 20s, maxBackoffDuration: 1m}}\n",
        cluster.var("VRG_S3_ENDPOINT").trim_start_matches("http://")
    ));
    let m = cluster.wait_done(ns, "m", TIMEOUT).await;
    let status = m.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(status.attempt, Some(1), "terminal: no retry is scheduled");
    let (reason, message) = ready_reason(&m);
    assert_eq!(reason.as_deref(), Some("ForbiddenEndpoint"), "{message}");
    assert!(
        message.contains("169.254.169.254") && message.contains("link-local"),
        "{message}"
    );
    let seen = exposure(&cluster, ns).await;
    assert!(
        !seen
            .replace(&format!("secretKey={secret_key}"), "")
            .contains(&secret_key),
        "the S3 secret key leaked outside its Secret"
    );
}
