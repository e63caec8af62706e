//! The rejection cases of common/cases.rs through a real kube-apiserver: the e2e world's control plane
//! (`e2e/scripts/world-up.sh`) with the operator and webhook installed by `kubectl apply -k
//! e2e/kustomize`. Each case's object goes through `kubectl apply --as=<the case's user> -f -` (schema,
//! CEL and the webhook's admission, SubjectAccessReviews against real RBAC) and must be refused with
//! kubectl's error naming the field (and, for the webhook's denials, the reason); every example
//! migration must pass `kubectl apply --dry-run=server`.
//!
//! It also checks that every webhook replica of the install serves a certificate the caBundle trusts
//! (the replicas share the self-signed CA).
//!
//! Fails when `e2e/.world/kubeconfig` does not exist (run `make e2e-up`).

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::cases::{Op, cases};
use common::{ALICE, EXTRA_OBJECTS, MALLORY, migration, prerequisites, review};
use serde::Deserialize;
use serde_json::{Value, json};

/// This test's namespace, standing for `default` of the examples.
const NS: &str = "vrg-webhook-apiserver";

/// The namespaces of the router tests' world and the ones standing for them here.
const NAMESPACES: &[(&str, &str)] = &[
    ("default", NS),
    ("kvm-vms", "vrg-webhook-apiserver-kvm"),
    ("vmware-vms", "vrg-webhook-apiserver-vmware"),
    ("proxmox-vms", "vrg-webhook-apiserver-proxmox"),
    ("other-team", "vrg-webhook-apiserver-other"),
    ("vault", "vrg-webhook-apiserver-vault"),
];

/// Cases that cannot mean the same thing through the e2e world's apiserver, and why.
const NOT_HERE: &[(&str, &str)] = &[
    (
        "no namespace",
        "kubectl fills in the namespace, so the webhook never sees a namespace-less object",
    ),
    (
        "not a VMMigration",
        "rewrites the AdmissionReview's kind; the apiserver routes only VMMigrations to the webhook",
    ),
    (
        "endpoint name resolves to metadata",
        "metadata-alias.test exists only in the router tests' resolver",
    ),
    (
        "endpoint name resolves partly to link-local",
        "sneaky.test exists only in the router tests' resolver",
    ),
    (
        "endpoint name resolves to loopback",
        "loopback-alias.test exists only in the router tests' resolver",
    ),
];

fn repo() -> PathBuf {
    manifest_dir().join("..")
}

/// The world's kubeconfig; fails the test when the world is not up.
fn kubeconfig() -> PathBuf {
    let path = repo().join("e2e/.world/kubeconfig");
    assert!(
        path.exists(),
        "{} does not exist: start the e2e world (make e2e-up) to run this test",
        path.display()
    );
    path
}

/// kubectl: $KUBECTL, else the one the world's control-plane.env names, else `kubectl`.
fn kubectl_path() -> String {
    if let Ok(k) = std::env::var("KUBECTL") {
        return k;
    }
    std::fs::read_to_string(repo().join("e2e/.world/control-plane.env"))
        .ok()
        .and_then(|env| {
            env.lines()
                .find_map(|l| l.strip_prefix("export KUBECTL=").map(str::to_owned))
        })
        .unwrap_or_else(|| "kubectl".into())
}

/// Runs kubectl with the world's kubeconfig and `input` on stdin; returns (success, stdout + stderr).
fn kubectl(args: &[&str], input: Option<&str>) -> (bool, String) {
    let mut child = Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(repo().join("e2e/.world/kubeconfig"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(input.unwrap_or_default().as_bytes())
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `kubectl apply -k e2e/kustomize` and wait for both Deployments (as operator/tests/e2e.rs does).
fn install() {
    let dir = repo().join("e2e/kustomize");
    let (ok, out) = kubectl(&["apply", "-k", dir.to_str().unwrap()], None);
    assert!(ok, "kubectl apply -k e2e/kustomize failed:\n{out}");
    for deploy in ["virtrigaud-operator", "virtrigaud-webhook"] {
        let (ok, out) = kubectl(
            &[
                "-n",
                "virtrigaud-system",
                "rollout",
                "status",
                &format!("deployment/{deploy}"),
                "--timeout=180s",
            ],
            None,
        );
        assert!(ok, "{deploy} did not become ready:\n{out}");
    }
}

/// Replaces every string naming a namespace of the router tests' world by the one standing for it.
fn adapt(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Some((_, ours)) = NAMESPACES.iter().find(|(theirs, _)| theirs == s) {
                *s = (*ours).to_owned();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(adapt),
        Value::Object(map) => map.values_mut().for_each(adapt),
        _ => {}
    }
}

/// `text` with `<namespace>/` of the router tests' world replaced by the one standing for it.
fn adapt_text(text: &str) -> String {
    NAMESPACES
        .iter()
        .fold(text.to_owned(), |t, (theirs, ours)| {
            t.replace(&format!("{theirs}/"), &format!("{ours}/"))
        })
}

/// The documents of a YAML stream, as JSON.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// A List of `items`, as kubectl reads it on stdin.
fn list(items: Vec<Value>) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// The world the cases expect, in this test's namespaces: examples/prerequisites.yaml plus the router
/// tests' `orphan` VM and a VM named `already-there` on vsphere-prod.
fn world() {
    for (_, ns) in NAMESPACES {
        kubectl(
            &[
                "delete",
                "namespace",
                ns,
                "--ignore-not-found",
                "--wait=true",
            ],
            None,
        );
    }
    let mut items: Vec<Value> = NAMESPACES
        .iter()
        .map(|(_, ns)| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .collect();
    items.extend(
        documents(&prerequisites())
            .into_iter()
            .filter(|d| d["kind"] != "Namespace"),
    );
    items.extend(documents(EXTRA_OBJECTS));
    items.extend(rbac());
    items.iter_mut().for_each(adapt);
    let (ok, out) = kubectl(&["apply", "-f", "-"], Some(&list(items)));
    assert!(ok, "the prerequisites apply:\n{out}");
}

/// The router tests' RBAC (common::world), for the impersonated users: alice may get Secrets and
/// VirtualMachines in the examples' namespaces and delete VirtualMachines in `default`; mallory may get
/// VirtualMachines in `default` only. Both may create VMMigrations in `default`.
fn rbac() -> Vec<Value> {
    let rule = |verbs: &[&str], group: &str, resource: &str| json!({"verbs": verbs, "apiGroups": [group], "resources": [resource]});
    let migrations = rule(
        &["get", "create", "patch"],
        "infra.virtrigaud.io",
        "vmmigrations",
    );
    let grants = [
        (
            ALICE,
            "default",
            vec![
                rule(&["get"], "", "secrets"),
                rule(&["get", "delete"], "infra.virtrigaud.io", "virtualmachines"),
                migrations.clone(),
            ],
        ),
        (
            MALLORY,
            "default",
            vec![
                rule(&["get"], "infra.virtrigaud.io", "virtualmachines"),
                migrations,
            ],
        ),
    ]
    .into_iter()
    .chain(["kvm-vms", "vmware-vms", "proxmox-vms"].map(|ns| {
        (
            ALICE,
            ns,
            vec![
                rule(&["get"], "", "secrets"),
                rule(&["get"], "infra.virtrigaud.io", "virtualmachines"),
            ],
        )
    }));
    let mut items = vec![];
    for (user, ns, rules) in grants {
        let name = format!("webhook-apiserver-{user}");
        items.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": ns}, "rules": rules
        }));
        items.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
        }));
    }
    items
}

/// Every VMMigration of examples/*.yaml, with its file name.
fn example_migrations() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = vec![];
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for doc in documents(&std::fs::read_to_string(&file).unwrap()) {
            if doc["kind"] == "VMMigration" {
                out.push((name.clone(), doc));
            }
        }
    }
    out
}

/// Whether kubectl's error names `field`: as `spec.storage.bucket: ...` (schema, webhook), or as a CEL
/// rule on a parent reports it, `spec.storage: Invalid value: storage.bucket is required ...`.
fn names(out: &str, field: &str) -> bool {
    out.contains(&format!("{field}:"))
        || field.match_indices('.').any(|(at, _)| {
            let parent = &field[..at];
            let last = parent.rsplit('.').next().unwrap_or(parent);
            out.contains(&format!("{parent}: "))
                && out.contains(&format!("{last}.{}", &field[at + 1..]))
        })
}

#[test]
fn names_accepts_a_parent_rule_naming_the_field() {
    let cel = "spec.storage: Invalid value: storage.bucket is required when storage.type is s3";
    assert!(names(cel, "spec.storage.bucket"));
    assert!(!names(cel, "spec.storage.endpoint"));
    assert!(names("spec.targetName: Invalid value", "spec.targetName"));
    assert!(!names("spec.targetName: Invalid value", "spec.sourceName"));
}

#[test]
fn rejection_cases_through_the_apiserver_name_the_field() {
    kubeconfig();
    install();
    world();

    // The base migration passes, so each case fails for its own reason only.
    let mut base = migration();
    adapt(&mut base);
    let (ok, out) = kubectl(
        &["apply", "--as", ALICE, "--dry-run=server", "-f", "-"],
        Some(&base.to_string()),
    );
    assert!(ok, "the base migration is admitted:\n{out}");

    let mut failures = vec![];
    let mut skipped = vec![];
    let mut rejected = 0;
    let mut by_webhook = 0;
    for (i, case) in cases().iter().enumerate() {
        let why = NOT_HERE
            .iter()
            .find(|(name, _)| *name == case.name)
            .map(|(_, why)| *why)
            .or(matches!(case.op, Op::Update)
                .then_some("UPDATE of an existing migration would start a real run"));
        if let Some(why) = why {
            skipped.push(format!("{}: {why}", case.name));
            continue;
        }
        // A name of its own, so that a case wrongly admitted does not turn the next ones into updates.
        let mut object = base.clone();
        object["metadata"]["name"] = json!(format!("rejected-{i}"));
        let mut request = review("CREATE", case.user, Some(&object), None);
        (case.edit)(&mut request);
        let mut object = request["request"]["object"].take();
        adapt(&mut object);
        let user = format!("--as={}", case.user);
        let (ok, out) = kubectl(&["apply", &user, "-f", "-"], Some(&object.to_string()));
        let problem = if ok {
            Some("was admitted".to_owned())
        } else if out.contains("hunter2") {
            Some("the error shows a password from the URL".to_owned())
        } else if !names(&out, case.field) {
            Some(format!("the error does not name {}", case.field))
        } else if out.contains("denied the request") {
            // The webhook's own denial: also the reason, as the router test demands it.
            case.mentions
                .iter()
                .map(|m| adapt_text(m))
                .find(|m| !out.contains(m.as_str()))
                .map(|m| format!("the denial does not mention {m:?}"))
        } else {
            None
        };
        match problem {
            Some(problem) => failures.push(format!("{}: {problem}; kubectl: {out}", case.name)),
            None => {
                rejected += 1;
                by_webhook += usize::from(out.contains("denied the request"));
            }
        }
    }

    let mut admitted = 0;
    for (file, mut object) in example_migrations() {
        adapt(&mut object);
        object["metadata"]["namespace"] = json!(NS);
        let (ok, out) = kubectl(
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&object.to_string()),
        );
        if ok {
            admitted += 1;
        } else {
            failures.push(format!("{file}: example refused: {out}"));
        }
    }

    for (_, ns) in NAMESPACES {
        kubectl(&["delete", "namespace", ns, "--wait=false"], None);
    }
    println!(
        "skipped {} cases:\n  {}",
        skipped.len(),
        skipped.join("\n  ")
    );
    println!(
        "apiserver: {rejected} rejected naming the field ({by_webhook} by the webhook, {} by the \
         apiserver's schema/CEL), {admitted} admitted",
        rejected - by_webhook
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        rejected >= 40,
        "at least 40 cases through the apiserver, ran {rejected}"
    );
    assert_eq!(admitted, 7, "every example migration");
}

/// The addresses of the webhook Service's ready endpoints, once there are `expected` of them (a
/// rollout's old pods are gone from the ready ones first).
fn ready_webhook_addresses(expected: usize) -> Vec<String> {
    let jsonpath = "jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}";
    let mut addresses = vec![];
    for _ in 0..60 {
        let (ok, out) = kubectl(
            &[
                "-n",
                "virtrigaud-system",
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=virtrigaud-webhook",
                "-o",
                jsonpath,
            ],
            None,
        );
        assert!(ok, "{out}");
        addresses = out.split_whitespace().map(str::to_owned).collect();
        if addresses.len() == expected {
            return addresses;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("the webhook Service has {addresses:?} as ready endpoints, not {expected}");
}

#[tokio::test]
async fn every_webhook_replica_serves_a_certificate_the_ca_bundle_trusts() {
    kubeconfig();
    install();
    let (ok, bundle) = kubectl(
        &[
            "get",
            "validatingwebhookconfiguration",
            "virtrigaud-webhook",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ],
        None,
    );
    assert!(ok, "{bundle}");
    let bundle: k8s_openapi::ByteString = serde_json::from_value(json!(bundle.trim())).unwrap();
    let host = "virtrigaud-webhook.virtrigaud-system.svc";
    // Two replicas, the default install's.
    for address in ready_webhook_addresses(2) {
        let target = std::net::SocketAddr::new(address.parse().unwrap(), 8443);
        let mut client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .resolve(host, target);
        for cert in reqwest::Certificate::from_pem_bundle(&bundle.0).unwrap() {
            client = client.add_root_certificate(cert);
        }
        let answer = client
            .build()
            .unwrap()
            .get(format!("https://{host}:8443/healthz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("replica at {target} is not trusted by the caBundle: {e}"));
        assert_eq!(answer.text().await.unwrap(), "ok", "{target}");
    }
}

/// This package's directory, as `cargo test` gives it when the test runs: the cargo target dir is
/// shared between checkouts (CI's clones reuse this machine's builds), so a test binary built in
/// another checkout must not read that checkout's files through a path fixed at compile time.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
