//! A mock API server playing named scenarios against [`crate::reconcile`], in the style of
//! kube-rs/controller-rs: each scenario lists the exact calls the operator must make (method, path
//! with query, and the parts of the body that matter) and the answers it gets. A call out of order,
//! a missing call or an extra call fails the test.

use std::sync::Arc;
use std::time::Duration;

use crd::VMMigration;
use http::{Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::metrics::Metrics;
use crate::{Context, Settings, reconcile};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The fixed "now" of every scenario.
pub const NOW: &str = "2026-01-01T10:00:00Z";

/// `NOW` shifted by `secs`, as the API writes times.
pub fn at(secs: i64) -> String {
    let t: Timestamp = NOW.parse().unwrap();
    serde_json::to_value(Time(t + SignedDuration::from_secs(secs)))
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// Base of the VMMigration API in namespace `default`.
pub const VMM: &str = "/apis/infra.virtrigaud.io/v1beta1/namespaces/default/vmmigrations";
/// Base of the Job API.
pub const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";
/// The events.k8s.io API.
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

/// What a scenario answers.
enum Reply {
    /// This status code and JSON body.
    Json(u16, Value),
    /// The request body with status 201 (a create that succeeded).
    Echo,
}

type Check = Box<dyn Fn(&Value) + Send>;

/// One expected API call.
pub struct Call {
    method: &'static str,
    uri: String,
    includes: Option<Value>,
    check: Option<Check>,
    reply: Reply,
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

impl Call {
    fn new(method: &'static str, uri: impl Into<String>) -> Self {
        Call {
            method,
            uri: uri.into(),
            includes: None,
            check: None,
            reply: Reply::Json(200, json!({})),
        }
    }
    /// A GET.
    pub fn get(uri: impl Into<String>) -> Self {
        Call::new("GET", uri)
    }
    /// A POST (create); answers with the created object.
    pub fn post(uri: impl Into<String>) -> Self {
        Call {
            reply: Reply::Echo,
            ..Call::new("POST", uri)
        }
    }
    /// A PATCH.
    pub fn patch(uri: impl Into<String>) -> Self {
        Call::new("PATCH", uri)
    }
    /// A DELETE; answers Success.
    pub fn delete(uri: impl Into<String>) -> Self {
        Call {
            reply: Reply::Json(
                200,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ),
            ..Call::new("DELETE", uri)
        }
    }
    /// An events.k8s.io Event with this reason (and, if given, type).
    pub fn event(reason: &str, type_: &str) -> Self {
        Call::post(format!("{EVENTS}?")).includes(json!({
            "reason": reason, "type": type_, "reportingController": "virtrigaud-operator",
            "regarding": {"kind": "VMMigration", "name": "mig", "namespace": "default"},
        }))
    }
    /// The body must contain `expected` (objects: these keys; arrays: same length; `"*"`: anything).
    pub fn includes(mut self, expected: Value) -> Self {
        self.includes = Some(expected);
        self
    }
    /// Runs `f` on the body.
    pub fn check(mut self, f: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Some(Box::new(f));
        self
    }
    /// Answers `body` with status 200.
    pub fn ok(mut self, body: Value) -> Self {
        self.reply = Reply::Json(200, body);
        self
    }
    /// Answers 404 NotFound.
    pub fn not_found(mut self) -> Self {
        self.reply = Reply::Json(404, status(404, "NotFound"));
        self
    }
    /// Answers 409 AlreadyExists.
    pub fn exists(mut self) -> Self {
        self.reply = Reply::Json(409, status(409, "AlreadyExists"));
        self
    }
}

/// Asserts that `actual` contains `expected` (see [`Call::includes`]).
pub fn assert_includes(actual: &Value, expected: &Value, path: &str) {
    match (expected, actual) {
        (Value::String(s), a) if s == "*" => assert!(!a.is_null(), "{path}: missing"),
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                let sub = format!("{path}.{k}");
                match a.get(k) {
                    Some(av) => assert_includes(av, v, &sub),
                    None => panic!("{sub}: missing in {actual}"),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(a.len(), e.len(), "{path}: length differs in {actual}");
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                assert_includes(av, ev, &format!("{path}[{i}]"));
            }
        }
        (e, a) => assert_eq!(a, e, "{path}"),
    }
}

/// Plays `calls` on the mock server, then fails on any further call.
async fn serve(mut handle: Handle, calls: Vec<Call>) {
    for (i, call) in calls.into_iter().enumerate() {
        let Some((request, send)) = handle.next_request().await else {
            panic!(
                "call {i}: expected {} {} but the operator made no more calls",
                call.method, call.uri
            );
        };
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        assert_eq!(
            (method.as_str(), uri.as_str()),
            (call.method, call.uri.as_str()),
            "call {i}"
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        if let Some(expected) = &call.includes {
            assert_includes(&body, expected, &format!("call {i} {method} {uri} body"));
        }
        if let Some(check) = &call.check {
            check(&body);
        }
        let (code, reply) = match call.reply {
            Reply::Json(code, v) => (code, v),
            Reply::Echo => (201, body),
        };
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
    if let Some((request, _)) = handle.next_request().await {
        panic!(
            "unexpected extra call: {} {}",
            request.method(),
            request.uri()
        );
    }
}

/// Runs one reconcile of `migration` against `calls`; returns its Action.
pub async fn scenario(migration: VMMigration, calls: Vec<Call>) -> Action {
    scenario_with(migration, Settings::default(), calls).await
}

/// [`scenario`] with other settings.
pub async fn scenario_with(migration: VMMigration, settings: Settings, calls: Vec<Call>) -> Action {
    scenario_in(vec![], migration, settings, calls).await
}

/// [`scenario_with`] with the controller's cache holding `world` (other migrations) besides
/// `migration`.
pub async fn scenario_in(
    world: Vec<VMMigration>,
    migration: VMMigration,
    settings: Settings,
    calls: Vec<Call>,
) -> Action {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let now: Timestamp = NOW.parse().unwrap();
    let mut cache: Writer<VMMigration> = Writer::default();
    for m in world.into_iter().chain([migration.clone()]) {
        cache.apply_watcher_event(&watcher::Event::Apply(m));
    }
    let ctx = Context::new(
        client,
        Arc::new(Metrics::new(None)),
        settings,
        "operator-0".into(),
    )
    .with_clock(Arc::new(move || now))
    .with_migrations(cache.as_reader());
    let server = tokio::spawn(serve(handle, calls));
    let action = tokio::time::timeout(
        Duration::from_secs(5),
        reconcile(Arc::new(migration), Arc::new(ctx)),
    )
    .await
    .expect("reconcile timed out: a call was expected that the scenario does not list")
    .expect("reconcile failed");
    // The context (and with it the client) is dropped: the server sees the end of the calls.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("mock server timed out")
        .expect("scenario failed");
    action
}

// ----------------------------------------------------------------------------------------------
// Objects
// ----------------------------------------------------------------------------------------------

/// A VMMigration `mig` (libvirt VM `src-vm` to Provider `vsphere` through S3), created a minute ago,
/// with the finalizer, and `status`.
pub fn migration(status: Value) -> VMMigration {
    let mut m = json!({
        "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VMMigration",
        "metadata": {"name": "mig", "namespace": "default", "uid": "uid-1", "resourceVersion": "7",
                     "generation": 1, "creationTimestamp": at(-60),
                     "finalizers": [crate::finalizer::FINALIZER]},
        "spec": {
            "sourceName": "src-vm", "targetProviderRef": {"name": "vsphere"},
            "targetName": "migrated-vm",
            "storage": {"type": "s3", "bucket": "vm-migrations", "region": "us-east-1",
                        "credentialsSecretRef": {"name": "s3-creds"}},
        },
    });
    if !status.is_null() {
        m["status"] = status;
    }
    serde_json::from_value(m).unwrap()
}

/// JSON of a migration object, as the API answers a status patch.
pub fn migration_json(m: &VMMigration) -> Value {
    serde_json::to_value(m).unwrap()
}

/// The GETs of [`crate::resolve::resolve`] for [`migration`], all found.
pub fn resolve_calls() -> Vec<Call> {
    let base = "/apis/infra.virtrigaud.io/v1beta1/namespaces/default";
    vec![
        Call::get(format!("{base}/virtualmachines/src-vm")).ok(json!({
            "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VirtualMachine",
            "metadata": {"name": "src-vm", "namespace": "default", "uid": "uid-vm"},
            "spec": {"providerRef": {"name": "libvirt"}}, "status": {"id": "uuid-src"}
        })),
        Call::get(format!("{base}/providers/libvirt")).ok(json!({
            "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "Provider",
            "metadata": {"name": "libvirt", "namespace": "default", "uid": "uid-libvirt"},
            "spec": {"type": "libvirt", "endpoint": "qemu+tcp://127.0.0.1/system",
                     "credentialSecretRef": {"name": "libvirt-creds"}}
        })),
        Call::get(format!("{base}/providers/vsphere")).ok(json!({
            "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "Provider",
            "metadata": {"name": "vsphere", "namespace": "default", "uid": "uid-vsphere"},
            "spec": {"type": "vsphere", "endpoint": "https://127.0.0.1:8989",
                     "credentialSecretRef": {"name": "vsphere-creds"}, "insecureSkipVerify": true}
        })),
        Call::get("/api/v1/namespaces/default/secrets/libvirt-creds").ok(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "libvirt-creds", "namespace": "default", "uid": "uid-libvirt-creds"},
            "data": {"username": "dnJn", "password": "c2VjcmV0", "unrelated": "eA=="}
        })),
        Call::get("/api/v1/namespaces/default/secrets/vsphere-creds").ok(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "vsphere-creds", "namespace": "default", "uid": "uid-vsphere-creds"},
            "data": {"username": "YWRtaW4=", "password": "cGFzcw=="}
        })),
        Call::get("/api/v1/namespaces/default/secrets/s3-creds").ok(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": "default", "uid": "uid-s3-creds"},
            "data": {"accessKey": "QUtJRA==", "secretKey": "U0VDUkVU", "note": "eA=="}
        })),
    ]
}

/// [`resolve_calls`] after the tenant repointed Provider `vsphere` at another team's Secret.
pub fn repointed_resolve_calls() -> Vec<Call> {
    let base = "/apis/infra.virtrigaud.io/v1beta1/namespaces/default";
    let mut calls = resolve_calls();
    calls[2] = Call::get(format!("{base}/providers/vsphere")).ok(json!({
        "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "Provider",
        "metadata": {"name": "vsphere", "namespace": "default", "uid": "uid-vsphere"},
        "spec": {"type": "vsphere", "endpoint": "https://127.0.0.1:8989",
                 "credentialSecretRef": {"name": "crown-jewels", "namespace": "ho-victim"}, "insecureSkipVerify": true}
    }));
    calls[4] = Call::get("/api/v1/namespaces/ho-victim/secrets/crown-jewels").ok(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "crown-jewels", "namespace": "ho-victim", "uid": "uid-crown"},
        "data": {"username": "cm9vdA==", "password": "aHVudGVyMg=="}
    }));
    calls
}

/// The references [`resolve_calls`] pin, as `status.references` holds them.
pub fn pinned() -> Value {
    let secret = |name: &str| json!({"kind": "Secret", "namespace": "default", "name": name, "uid": format!("uid-{name}")});
    json!([
        {"kind": "VirtualMachine", "namespace": "default", "name": "src-vm", "uid": "uid-vm",
         "content": "on Provider default/libvirt"},
        {"kind": "Provider", "namespace": "default", "name": "libvirt", "uid": "uid-libvirt",
         "content": "libvirt qemu+tcp://127.0.0.1/system, credentials default/libvirt-creds"},
        {"kind": "Provider", "namespace": "default", "name": "vsphere", "uid": "uid-vsphere",
         "content": "vsphere https://127.0.0.1:8989, credentials default/vsphere-creds, TLS not verified"},
        secret("libvirt-creds"), secret("vsphere-creds"), secret("s3-creds"),
    ])
}

/// The status patch that pins [`pinned`] at the first launch.
pub fn pin_patch(m: &VMMigration) -> Call {
    Call::patch(scenarios::STATUS_PATCH)
        .includes(json!({"status": {"references": pinned()}}))
        .ok(migration_json(m))
}

/// The controller reference to [`migration`] that everything the operator makes carries.
pub fn owner_reference() -> Value {
    json!({"apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VMMigration", "name": "mig",
           "uid": "uid-1", "controller": true})
}

/// An object as the API returns it: owned by [`migration`], or by someone else.
pub fn object(api_version: &str, kind: &str, name: &str, ours: bool) -> Value {
    let owners = if ours {
        json!([owner_reference()])
    } else {
        json!([])
    };
    json!({"apiVersion": api_version, "kind": kind,
           "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                        "ownerReferences": owners}})
}

/// Where an object of the migration is read, and its `apiVersion` and kind.
pub fn location(kind: &str, name: &str) -> (String, &'static str) {
    match kind {
        "Secret" => (format!("/api/v1/namespaces/default/secrets/{name}"), "v1"),
        "ServiceAccount" => (
            format!("/api/v1/namespaces/default/serviceaccounts/{name}"),
            "v1",
        ),
        "Role" => (
            format!("/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/{name}"),
            "rbac.authorization.k8s.io/v1",
        ),
        "RoleBinding" => (
            format!("/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/{name}"),
            "rbac.authorization.k8s.io/v1",
        ),
        "Job" => (
            format!("/apis/batch/v1/namespaces/default/jobs/{name}"),
            "batch/v1",
        ),
        other => panic!("no location for {other}"),
    }
}

/// A create of `kind name` that finds the migration's own object (409, then the GET of it).
pub fn found(create: Call, kind: &str, name: &str) -> Vec<Call> {
    let (uri, api_version) = location(kind, name);
    vec![
        create.exists(),
        Call::get(uri).ok(object(api_version, kind, name, true)),
    ]
}

/// The deletion of `kind name`: read (owned by the migration), then deleted on that UID.
pub fn deleted(kind: &str, name: &str, propagation: &str) -> Vec<Call> {
    vec![read_owned(kind, name), delete_of(kind, name, propagation)]
}

/// The GET of `kind name`, owned by the migration.
pub fn read_owned(kind: &str, name: &str) -> Call {
    let (uri, api_version) = location(kind, name);
    Call::get(uri).ok(object(api_version, kind, name, true))
}

/// The DELETE of `kind name` read before, on its UID.
pub fn delete_of(kind: &str, name: &str, propagation: &str) -> Call {
    let (uri, _) = location(kind, name);
    Call::delete(format!("{uri}?")).includes(json!({
        "propagationPolicy": propagation, "preconditions": {"uid": format!("uid-{name}")}
    }))
}

/// The deletion of `kind name` that finds nothing.
pub fn absent(kind: &str, name: &str) -> Call {
    Call::get(location(kind, name).0).not_found()
}

/// A Job of attempt `attempt` with `status`.
pub fn job(name: &str, component: &str, attempt: i32, status: Value) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {
            "virtrigaud.io/migration": "mig", "virtrigaud.io/component": component,
            "virtrigaud.io/attempt": attempt.to_string(),
            "app.kubernetes.io/managed-by": "virtrigaud-operator"},
            "ownerReferences": [owner_reference()]},
        "spec": {"template": {"spec": {"containers": []}}},
        "status": status,
    })
}

/// Job status: running.
pub fn running() -> Value {
    json!({"active": 1})
}

/// Job status: failed (the pod ended or vanished).
pub fn failed() -> Value {
    json!({"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}]})
}

/// Job status: complete.
pub fn complete() -> Value {
    json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
}

/// A PodList with one runner pod that exited with `exit_code` and `outcome` as its message.
pub fn pods(exit_code: i32, outcome: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
        "metadata": {"name": "mig-a1-abcde", "namespace": "default", "creationTimestamp": at(-30)},
        "status": {"containerStatuses": [{
            "name": "runner", "image": "virtrigaud/runner:dev", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "reason": "Error",
                                     "message": outcome.to_string()}}}]}
    }]})
}

/// A JobList.
pub fn job_list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": items})
}

/// The list of every runner Job (all namespaces) a slot decision reads; answers `jobs`.
pub fn slots(jobs: Vec<Value>) -> Call {
    Call::get("/apis/batch/v1/jobs?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dvirtrigaud-operator%2Cvirtrigaud.io%2Fcomponent%3Drunner")
        .ok(job_list(jobs))
}

/// [`slots`] finding no runner Job: every Provider has room.
pub fn free_slots() -> Call {
    slots(vec![])
}

/// The runner Job of attempt 1 of migration `ns/name` using `providers` (its annotations), running
/// or finished.
pub fn runner_job_of(ns: &str, name: &str, providers: (&str, &str), finished: bool) -> Value {
    let status = match finished {
        true => complete(),
        false => running(),
    };
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": format!("{name}-a1"), "namespace": ns, "uid": format!("uid-{ns}-{name}-a1"),
            "labels": {"virtrigaud.io/migration": name, "virtrigaud.io/component": "runner",
                       "virtrigaud.io/attempt": "1",
                       "app.kubernetes.io/managed-by": "virtrigaud-operator"},
            "annotations": {"virtrigaud.io/source-provider": providers.0,
                            "virtrigaud.io/target-provider": providers.1},
            "ownerReferences": [{"apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VMMigration",
                                 "name": name, "uid": format!("uid-{ns}-{name}"), "controller": true}]},
        "spec": {"template": {"spec": {"containers": []}}},
        "status": status,
    })
}

/// Another migration `ns/name`, created `created` seconds from [`NOW`], pinned to `providers`, with
/// `status` (`references` added).
pub fn other_migration(
    ns: &str,
    name: &str,
    created: i64,
    providers: &[&str],
    mut status: Value,
) -> VMMigration {
    let pins: Vec<Value> = providers
        .iter()
        .map(|p| {
            let (pns, pname) = p.split_once('/').unwrap();
            json!({"kind": "Provider", "namespace": pns, "name": pname, "uid": format!("uid-{pname}")})
        })
        .collect();
    status["references"] = Value::Array(pins);
    serde_json::from_value(json!({
        "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VMMigration",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                     "creationTimestamp": at(created)},
        "spec": {"sourceName": "vm", "targetProviderRef": {"name": "vsphere", "namespace": "default"},
                 "targetName": name, "storage": {"type": "s3", "bucket": "vm-migrations"}},
        "status": status,
    }))
    .unwrap()
}

// ----------------------------------------------------------------------------------------------
// Scenarios
// ----------------------------------------------------------------------------------------------

mod scenarios {
    use super::*;
    use crate::finalizer::FINALIZER;

    pub(super) const STATUS_PATCH: &str = "/apis/infra.virtrigaud.io/v1beta1/namespaces/default/vmmigrations/mig/status?&force=true&fieldManager=virtrigaud-operator";

    #[tokio::test]
    async fn first_reconcile_adds_the_finalizer() {
        let mut m = migration(Value::Null);
        m.metadata.finalizers = None;
        let action = scenario(
            m,
            vec![
                Call::patch(format!("{VMM}/mig?"))
                    .includes(json!({
                        "metadata": {"finalizers": [FINALIZER], "resourceVersion": "7"}
                    }))
                    .ok(migration_json(&migration(Value::Null))),
            ],
        )
        .await;
        assert_eq!(action, Action::await_change());
    }

    fn pending_status(attempt: i32) -> Value {
        json!({"phase": "Pending", "startTime": at(-50), "attempt": attempt,
               "conditions": [{"type": "Ready", "status": "False", "reason": "Pending",
                               "lastTransitionTime": at(-50)}]})
    }

    /// What the runner container is bounded by with the default flags: its requests and limits,
    /// the scratch emptyDir's sizeLimit and the same limit in bytes for the runner.
    fn default_bounds() -> Value {
        json!({
            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                          "limits": {"cpu": "2", "memory": "2Gi"}},
            "scratch": {"name": "scratch", "emptyDir": {"sizeLimit": "100Gi"}},
            "scratchLimit": "107374182400",
        })
    }

    /// The Job create of a runner (`component`: runner or cleanup) must carry `bounds`.
    pub(super) fn bounded_job(call: Call, bounds: Value) -> Call {
        let expected = json!({"spec": {"template": {"spec": {
            "containers": [{"resources": bounds["resources"]}],
            "volumes": [{"name": "plan"}, bounds["scratch"]],
        }}}});
        call.includes(expected).check(move |body| {
            let env = &body["spec"]["template"]["spec"]["containers"][0]["env"];
            let limit = env
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == crd::plan::ENV_SCRATCH_LIMIT);
            assert_eq!(
                limit.map(|v| &v["value"]),
                Some(&bounds["scratchLimit"]),
                "{env}"
            );
        })
    }

    /// The SA, Role, RoleBinding, Secret and Job creates of attempt `attempt`; the first `existing`
    /// of them find the migration's own object.
    fn launch_calls(attempt: i32, existing: usize) -> Vec<Call> {
        launch_calls_bounded(attempt, existing, default_bounds())
    }

    /// [`launch_calls`] with a Job bounded by `bounds` (see [`default_bounds`]).
    fn launch_calls_bounded(attempt: i32, existing: usize, bounds: Value) -> Vec<Call> {
        let names = [
            ("ServiceAccount", "mig-runner".to_string()),
            ("Role", "mig-runner".to_string()),
            ("RoleBinding", "mig-runner".to_string()),
            ("Secret", format!("mig-runner-a{attempt}")),
            ("Job", format!("mig-a{attempt}")),
        ];
        let creates = vec![
            (Call::post("/api/v1/namespaces/default/serviceaccounts?").includes(json!({
                "metadata": {"name": "mig-runner", "ownerReferences": [{"kind": "VMMigration", "name": "mig", "uid": "uid-1", "controller": true}]},
                "automountServiceAccountToken": false
            }))),
            (Call::post("/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles?").includes(json!({
                "metadata": {"name": "mig-runner"},
                "rules": [
                    {"apiGroups": ["infra.virtrigaud.io"], "resources": ["vmmigrations"], "resourceNames": ["mig"], "verbs": ["get"]},
                    {"apiGroups": ["infra.virtrigaud.io"], "resources": ["vmmigrations/status"], "resourceNames": ["mig"], "verbs": ["patch"]},
                ]
            }))),
            (Call::post("/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings?").includes(json!({
                "metadata": {"name": "mig-runner"},
                "roleRef": {"kind": "Role", "name": "mig-runner"},
                "subjects": [{"kind": "ServiceAccount", "name": "mig-runner", "namespace": "default"}]
            }))),
            Call::post("/api/v1/namespaces/default/secrets?")
                .includes(json!({"metadata": {"name": format!("mig-runner-a{attempt}"),
                                              "labels": {"virtrigaud.io/attempt": attempt.to_string()}}}))
                .check(|body| {
                    let keys: Vec<&str> = body["data"].as_object().unwrap().keys().map(String::as_str).collect();
                    assert_eq!(keys, ["plan.json", "source.password", "source.username",
                                      "storage.accessKey", "storage.secretKey", "target.password", "target.username"]);
                }),
            bounded_job(Call::post(format!("{JOBS}?")).includes(json!({
                "metadata": {"name": format!("mig-a{attempt}"),
                             "labels": {"virtrigaud.io/migration": "mig", "virtrigaud.io/attempt": attempt.to_string()},
                             "annotations": {"virtrigaud.io/source-provider": "default/libvirt",
                                             "virtrigaud.io/target-provider": "default/vsphere"},
                             "ownerReferences": [{"kind": "VMMigration", "name": "mig", "controller": true}]},
                "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 86400,
                         "template": {"spec": {"serviceAccountName": "mig-runner",
                                               "containers": [{"args": ["migrate"], "image": "virtrigaud/runner:dev"}]}}}
            })), bounds),
        ];
        creates
            .into_iter()
            .zip(names)
            .enumerate()
            .flat_map(|(i, (c, (kind, name)))| match i < existing {
                true => found(c, kind, &name),
                false => vec![c],
            })
            .collect()
    }

    #[tokio::test]
    async fn new_migration_goes_pending_and_launches_attempt_1() {
        let m = migration(Value::Null);
        let mut calls = vec![
            Call::patch(STATUS_PATCH)
                .includes(json!({"status": {
                    "phase": "Pending", "startTime": NOW, "attempt": 1,
                    "message": "waiting for the runner (attempt 1 of 3)",
                    "conditions": [{"type": "Ready", "status": "False", "reason": "Pending", "lastTransitionTime": NOW}]
                }}))
                .ok(migration_json(&m)),
            Call::event("Pending", "Normal"),
            Call::get(format!("{JOBS}/mig-a1")).not_found(),
        ];
        calls.extend(resolve_calls());
        calls.push(pin_patch(&m));
        calls.push(free_slots());
        calls.extend(launch_calls(1, 0));
        calls.push(
            Call::event("JobLaunched", "Normal")
                .includes(json!({"note": "attempt 1 of 3: runner Job mig-a1"})),
        );
        let action = scenario(m, calls).await;
        assert_eq!(action, Action::requeue(crate::apply::START_RECHECK));
    }

    fn outcome(succeeded: bool, retryable: bool, reason: &str, message: &str) -> Value {
        json!({"succeeded": succeeded, "retryable": retryable, "reason": reason, "message": message})
    }

    fn running_status(attempt: i32, phase: &str) -> Value {
        let mut s = pending_status(attempt);
        s["phase"] = json!(phase);
        s["progress"] = json!(45);
        s
    }

    #[tokio::test]
    async fn the_runner_job_is_bounded_by_the_operators_flags() {
        use clap::Parser;
        let args = crate::Args::try_parse_from([
            "operator",
            "--runner-cpu-request=500m",
            "--runner-cpu-limit=4",
            "--runner-memory-request=1Gi",
            "--runner-memory-limit=3Gi",
            "--scratch-size=500Gi",
        ])
        .unwrap();
        let settings = Settings::from_args(&args).unwrap();
        let m = migration(pending_status(1));
        let mut calls = vec![Call::get(format!("{JOBS}/mig-a1")).not_found()];
        calls.extend(resolve_calls());
        calls.push(pin_patch(&m));
        calls.push(free_slots());
        calls.extend(launch_calls_bounded(
            1,
            0,
            json!({
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                              "limits": {"cpu": "4", "memory": "3Gi"}},
                "scratch": {"name": "scratch", "emptyDir": {"sizeLimit": "500Gi"}},
                "scratchLimit": (500u64 << 30).to_string(),
            }),
        ));
        calls.push(Call::event("JobLaunched", "Normal"));
        let action = scenario_with(m, settings, calls).await;
        assert_eq!(action, Action::requeue(crate::apply::START_RECHECK));
    }

    #[tokio::test]
    async fn running_job_is_left_alone_and_a_restarted_operator_creates_no_duplicate() {
        // A fresh Context is a freshly started operator: it sees the runner's phase once (one
        // Transferring Event), finds the attempt's Job and creates nothing.
        let m = migration(running_status(1, "Transferring"));
        let action = scenario(
            m,
            vec![
                Call::event("Transferring", "Normal")
                    .includes(json!({"note": "phase Transferring (45%)"})),
                Call::get(format!("{JOBS}/mig-a1")).ok(job("mig-a1", "runner", 1, running())),
            ],
        )
        .await;
        assert_eq!(action, Action::requeue(crate::apply::RECHECK));
    }

    #[tokio::test]
    async fn launch_racing_an_earlier_operator_finds_everything_created() {
        // The Job GET raced a create by a previous process: every create answers AlreadyExists,
        // which is success, and no JobLaunched Event or metric is recorded twice.
        let mut status = pending_status(1);
        status["references"] = pinned();
        let m = migration(status);
        let mut calls = vec![Call::get(format!("{JOBS}/mig-a1")).not_found()];
        calls.extend(resolve_calls());
        calls.push(free_slots());
        calls.extend(launch_calls(1, 5));
        let action = scenario(m, calls).await;
        assert_eq!(action, Action::requeue(crate::apply::START_RECHECK));
    }

    /// A transient failure of `attempt` (of 5) schedules the next one after `backoff_secs`.
    async fn retry_scenario(attempt: i32, backoff_secs: i64) {
        let mut status = running_status(attempt, "Transferring");
        status["lastError"] = json!("earlier error");
        let mut m = migration(status);
        m.spec.retry_policy.max_attempts = 5;
        let next = attempt + 1;
        let message = format!(
            "attempt {attempt} of 5 failed (StorageUnavailable: S3 answered 503); attempt {next} starts at {}",
            at(backoff_secs)
        );
        let mut calls = vec![
                Call::event("Transferring", "Normal"),
                Call::get(format!("{JOBS}/mig-a{attempt}")).ok(job(&format!("mig-a{attempt}"), "runner", attempt, failed())),
                Call::get(format!(
                    "/api/v1/namespaces/default/pods?&labelSelector=virtrigaud.io%2Fmigration%3Dmig%2Cvirtrigaud.io%2Fcomponent%3Drunner%2Cvirtrigaud.io%2Fattempt%3D{attempt}"
                ))
                .ok(pods(1, outcome(false, true, "StorageUnavailable", "S3 answered 503"))),
            ];
        calls.extend(deleted(
            "Secret",
            &format!("mig-runner-a{attempt}"),
            "Background",
        ));
        calls.extend([
                Call::patch(STATUS_PATCH)
                    .includes(json!({"status": {
                        "phase": "Pending", "startTime": at(-50), "attempt": next,
                        "nextRetryTime": at(backoff_secs),
                        "lastError": "StorageUnavailable: S3 answered 503",
                        "message": message,
                        "conditions": [{"type": "Ready", "status": "False", "reason": "RetryScheduled",
                                        "lastTransitionTime": at(-50)}]
                    }}))
                    .check(|body| assert!(body["status"].get("completionTime").is_none()))
                    .ok(migration_json(&m)),
                Call::event("RetryScheduled", "Warning").includes(json!({"related": {"kind": "Job", "name": format!("mig-a{attempt}")}, "note": format!(
                    "attempt {attempt} of 5 failed (StorageUnavailable: S3 answered 503); attempt {next} in {}",
                    crd::format_duration(Duration::from_secs(backoff_secs as u64))
                )})),
            ]);
        let action = scenario(m.clone(), calls).await;
        assert_eq!(
            action,
            Action::requeue(Duration::from_secs(backoff_secs as u64))
        );
    }

    #[tokio::test]
    async fn transient_failure_schedules_retries_with_the_guides_backoff() {
        // The guide: 5m, 10m, 20m, then capped at 30m.
        retry_scenario(1, 300).await;
        retry_scenario(2, 600).await;
        retry_scenario(3, 1200).await;
        retry_scenario(4, 1800).await;
    }

    #[tokio::test]
    async fn waiting_for_a_retry_makes_no_calls() {
        let mut status = pending_status(2);
        status["nextRetryTime"] = json!(at(240));
        let action = scenario(migration(status), vec![]).await;
        assert_eq!(action, Action::requeue(Duration::from_secs(240)));
    }

    /// The calls of attempt 2's launch once its retry time is reached, for `m` whose status says
    /// `last_error`: a new Job, then the wait cleared.
    fn second_attempt_calls(m: &VMMigration, last_error: &str) -> Vec<Call> {
        let mut calls = vec![Call::get(format!("{JOBS}/mig-a2")).not_found()];
        calls.extend(resolve_calls());
        calls.push(free_slots());
        calls.extend(launch_calls(2, 3));
        calls.push(
            Call::event("JobLaunched", "Normal")
                .includes(json!({"note": "attempt 2 of 3: runner Job mig-a2"})),
        );
        calls.push(
            Call::patch(STATUS_PATCH)
                .includes(json!({"status": {"phase": "Pending", "attempt": 2,
                                            "lastError": last_error}}))
                .check(|body| assert!(body["status"].get("nextRetryTime").is_none(), "{body}"))
                .ok(migration_json(m)),
        );
        calls
    }

    #[tokio::test]
    async fn retry_time_reached_launches_the_next_attempt_and_clears_the_wait() {
        let mut status = pending_status(2);
        status["nextRetryTime"] = json!(at(-1));
        status["lastError"] = json!("StorageUnavailable: S3 answered 503");
        status["references"] = pinned();
        let m = migration(status);
        let calls = second_attempt_calls(&m, "StorageUnavailable: S3 answered 503");
        let action = scenario(m.clone(), calls).await;
        assert_eq!(action, Action::requeue(crate::apply::START_RECHECK));
    }

    /// The pod list of attempt `attempt`.
    fn pods_of(attempt: i32) -> String {
        format!(
            "/api/v1/namespaces/default/pods?&labelSelector=virtrigaud.io%2Fmigration%3Dmig%2Cvirtrigaud.io%2Fcomponent%3Drunner%2Cvirtrigaud.io%2Fattempt%3D{attempt}"
        )
    }

    /// The read of the `FailedCreate` Events about Job `name`.
    fn failed_creates_of(name: &str) -> String {
        format!(
            "/api/v1/namespaces/default/events?&fieldSelector=involvedObject.kind%3DJob%2CinvolvedObject.name%3D{name}%2CinvolvedObject.uid%3Duid-{name}%2Creason%3DFailedCreate"
        )
    }

    /// The running Job of `attempt`, created `age` seconds ago.
    fn running_job(attempt: i32, age: i64) -> Value {
        let mut j = job(&format!("mig-a{attempt}"), "runner", attempt, running());
        j["metadata"]["creationTimestamp"] = json!(at(-age));
        j
    }

    /// A PodList with one runner pod of attempt 1 whose runner container is in `state`.
    fn runner_pod(state: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
            "metadata": {"name": "mig-a1-abcde", "namespace": "default", "creationTimestamp": at(-18)},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "runner", "image": "virtrigaud/runner:gone", "imageID": "", "ready": false,
                "restartCount": 0, "state": state}]}
        }]})
    }

    fn no_pods() -> Value {
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
    }

    const PULL_MESSAGE: &str =
        "Back-off pulling image \"virtrigaud/runner:gone\": ErrImagePull: not found";

    fn image_pull_backoff() -> Value {
        runner_pod(json!({"waiting": {"reason": "ImagePullBackOff", "message": PULL_MESSAGE}}))
    }

    /// [`pending_status`] of attempt 1 after the pull problem was reported.
    fn pull_problem_status() -> Value {
        let mut status = pending_status(1);
        status["message"] = json!(PULL_MESSAGE);
        status["conditions"][0]["reason"] = json!("RunnerImagePullFailed");
        status["conditions"][0]["message"] = json!(PULL_MESSAGE);
        status
    }

    #[tokio::test]
    async fn an_unpullable_runner_image_is_reported_within_seconds_with_one_event() {
        let m = migration(pending_status(1));
        let action = scenario(
            m.clone(),
            vec![
                Call::get(format!("{JOBS}/mig-a1")).ok(running_job(1, 20)),
                Call::get(pods_of(1)).ok(image_pull_backoff()),
                Call::patch(STATUS_PATCH)
                    .includes(json!({"status": {
                        "phase": "Pending", "attempt": 1, "message": PULL_MESSAGE,
                        "conditions": [{"type": "Ready", "status": "False",
                                        "reason": "RunnerImagePullFailed", "message": PULL_MESSAGE,
                                        "lastTransitionTime": at(-50)}]
                    }}))
                    .ok(migration_json(&m)),
                Call::event("RunnerImagePullFailed", "Warning").includes(json!({
                    "action": "Start", "related": {"kind": "Job", "name": "mig-a1"},
                    "note": format!("the runner of Job mig-a1 cannot start (ImagePullBackOff: container runner of pod mig-a1-abcde): {PULL_MESSAGE}"),
                })),
            ],
        )
        .await;
        assert_eq!(action, Action::requeue(crate::apply::START_RECHECK));

        // The next look finds the same problem: nothing is written, no second Event.
        let action = scenario(
            migration(pull_problem_status()),
            vec![
                Call::get(format!("{JOBS}/mig-a1")).ok(running_job(1, 25)),
                Call::get(pods_of(1)).ok(image_pull_backoff()),
            ],
        )
        .await;
        assert_eq!(action, Action::requeue(crate::apply::START_RECHECK));
    }

    #[tokio::test]
    async fn a_runner_pod_refused_by_pod_security_is_reported_from_the_jobs_events() {
        let refusal = "Error creating: pods \"mig-a1-abcde\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false";
        let m = migration(pending_status(1));
        let action = scenario(
            m.clone(),
            vec![
                Call::get(format!("{JOBS}/mig-a1")).ok(running_job(1, 5)),
                Call::get(pods_of(1)).ok(no_pods()),
                Call::get(failed_creates_of("mig-a1")).ok(json!({
                    "apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": [{
                        "metadata": {"name": "mig-a1.18a", "namespace": "default"},
                        "involvedObject": {"kind": "Job", "name": "mig-a1", "uid": "uid-mig-a1"},
                        "reason": "FailedCreate", "type": "Warning", "message": refusal,
                        "lastTimestamp": at(-2), "count": 3}]
                })),
                Call::patch(STATUS_PATCH)
                    .includes(json!({"status": {
                        "phase": "Pending", "message": refusal,
                        "conditions": [{"type": "Ready", "status": "False",
                                        "reason": "RunnerPodForbidden", "message": refusal}]
                    }}))
                    .ok(migration_json(&m)),
                Call::event("RunnerPodForbidden", "Warning").includes(json!({
                    "note": format!("the runner of Job mig-a1 cannot start (FailedCreate): {refusal}"),
                })),
            ],
        )
        .await;
        assert_eq!(action, Action::requeue(crate::apply::START_RECHECK));
    }

    #[tokio::test]
    async fn a_runner_not_started_within_the_start_timeout_fails_the_attempt_and_the_next_gets_a_new_job()
     {
        // 10m (the default) after the Job's creation the image is still missing.
        let mut status = pull_problem_status();
        status["references"] = pinned();
        let m = migration(status);
        let last_error =
            format!("RunnerImagePullFailed: the runner did not start within 10m: {PULL_MESSAGE}");
        let mut calls = vec![
            Call::get(format!("{JOBS}/mig-a1")).ok(running_job(1, 600)),
            Call::get(pods_of(1)).ok(image_pull_backoff()),
        ];
        calls.extend(deleted("Secret", "mig-runner-a1", "Background"));
        calls.extend([
            Call::patch(STATUS_PATCH)
                .includes(json!({"status": {
                    "phase": "Pending", "attempt": 2, "nextRetryTime": at(300),
                    "lastError": last_error,
                    "conditions": [{"type": "Ready", "status": "False", "reason": "RetryScheduled"}]
                }}))
                .check(|body| assert!(body["status"].get("completionTime").is_none()))
                .ok(migration_json(&m)),
            Call::event("RetryScheduled", "Warning").includes(json!({
                "related": {"kind": "Job", "name": "mig-a1"},
                "note": format!("attempt 1 of 3 failed ({last_error}); attempt 2 in 5m"),
            })),
            // The Job would wait for its 24h deadline: it goes, on the UID read.
            Call::delete(format!("{JOBS}/mig-a1?")).includes(json!({
                "propagationPolicy": "Background", "preconditions": {"uid": "uid-mig-a1"}
            })),
        ]);
        let action = scenario(m, calls).await;
        assert_eq!(action, Action::requeue(Duration::from_secs(300)));

        // At the retry time attempt 2 gets a Job of its own.
        let mut status = pending_status(2);
        status["nextRetryTime"] = json!(at(-1));
        status["lastError"] = json!(last_error);
        status["references"] = pinned();
        let m = migration(status);
        let calls = second_attempt_calls(&m, &last_error);
        let action = scenario(m.clone(), calls).await;
        assert_eq!(action, Action::requeue(crate::apply::START_RECHECK));
    }

    #[tokio::test]
    async fn the_last_attempts_start_timeout_without_a_known_problem_ends_failed() {
        let mut status = pending_status(3);
        status["references"] = pinned();
        let m = migration(status);
        let mut calls = vec![
            Call::get(format!("{JOBS}/mig-a3")).ok(running_job(3, 601)),
            Call::get(pods_of(3)).ok(no_pods()),
            Call::get(failed_creates_of("mig-a3"))
                .ok(json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": []})),
        ];
        calls.extend(deleted("Secret", "mig-runner-a3", "Background"));
        calls.extend([
            Call::patch(STATUS_PATCH)
                .includes(json!({"status": {
                    "phase": "Failed", "attempt": 3, "completionTime": NOW,
                    "lastError": "RunnerStartTimeout: the runner did not start within 10m",
                    "conditions": [{"type": "Ready", "status": "False", "reason": "RetriesExhausted"}]
                }}))
                .ok(migration_json(&m)),
            Call::event("Failed", "Warning").includes(json!({"note": "attempt 3 of 3 failed (RunnerStartTimeout: the runner did not start within 10m); no attempts left"})),
            Call::delete(format!("{JOBS}/mig-a3?")).includes(json!({
                "propagationPolicy": "Background", "preconditions": {"uid": "uid-mig-a3"}
            })),
        ]);
        let action = scenario(m, calls).await;
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn a_runner_that_starts_after_a_pull_problem_clears_the_reason() {
        // The image was pushed late: the container runs, the runner has not reported yet.
        let m = migration(pull_problem_status());
        let action = scenario(
            m.clone(),
            vec![
                Call::get(format!("{JOBS}/mig-a1")).ok(running_job(1, 40)),
                Call::get(pods_of(1)).ok(runner_pod(json!({"running": {"startedAt": at(-1)}}))),
                Call::patch(STATUS_PATCH)
                    .includes(json!({"status": {
                        "phase": "Pending", "message": "waiting for the runner (attempt 1 of 3)",
                        "conditions": [{"type": "Ready", "status": "False", "reason": "Pending",
                                        "message": "the migration has not finished",
                                        "lastTransitionTime": at(-50)}]
                    }}))
                    .ok(migration_json(&m)),
            ],
        )
        .await;
        assert_eq!(action, Action::requeue(crate::apply::RECHECK));

        // Or the runner reported first: its phase says it started, its message stays.
        let mut status = pull_problem_status();
        status["phase"] = json!("Validating");
        status["message"] = json!("Checking source default/libvirt");
        let m = migration(status);
        let action = scenario(
            m.clone(),
            vec![
                Call::event("Validating", "Normal"),
                Call::get(format!("{JOBS}/mig-a1")).ok(running_job(1, 45)),
                Call::patch(STATUS_PATCH)
                    .includes(json!({"status": {"phase": "Validating",
                        "conditions": [{"type": "Ready", "status": "False", "reason": "Pending"}]}}))
                    .check(|body| assert!(body["status"].get("message").is_none(), "the runner's message is not taken over: {body}"))
                    .ok(migration_json(&m)),
            ],
        )
        .await;
        assert_eq!(action, Action::requeue(crate::apply::RECHECK));
    }

    #[tokio::test]
    async fn a_reference_changed_since_admission_ends_failed_and_copies_no_secret() {
        // Between attempts the tenant repointed the target Provider at another team's Secret.
        let mut status = pending_status(2);
        status["nextRetryTime"] = json!(at(-1));
        status["references"] = pinned();
        let m = migration(status);
        let mut calls = vec![Call::get(format!("{JOBS}/mig-a2")).not_found()];
        calls.extend(repointed_resolve_calls());
        calls.extend([
            absent("Secret", "mig-runner-a2"),
            Call::patch(STATUS_PATCH)
                .includes(json!({"status": {
                    "phase": "Failed", "completionTime": NOW,
                    "conditions": [{"type": "Ready", "status": "False", "reason": "ReferenceChanged"}]
                }}))
                .check(|body| {
                    let message = body["status"]["message"].as_str().unwrap();
                    assert!(message.starts_with("attempt 2 not started: Provider default/vsphere changed: it was vsphere https://127.0.0.1:8989, credentials default/vsphere-creds"), "{message}");
                    assert!(message.contains("credentials ho-victim/crown-jewels"), "{message}");
                    assert!(message.contains("Secret ho-victim/crown-jewels is referenced now"), "{message}");
                    assert!(!body.to_string().contains("aHVudGVyMg=="), "no secret value in the status");
                })
                .ok(migration_json(&m)),
            Call::event("Failed", "Warning"),
        ]);
        let action = scenario(m, calls).await;
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn an_object_of_the_runners_name_made_by_someone_else_is_not_adopted() {
        // A tenant made `mig-runner-a1` (a Secret with a plan of their own) before attempt 1.
        let mut status = pending_status(1);
        status["references"] = pinned();
        let m = migration(status);
        let mut calls = vec![Call::get(format!("{JOBS}/mig-a1")).not_found()];
        calls.extend(resolve_calls());
        calls.push(free_slots());
        let mut launch = launch_calls(1, 3);
        let secret = launch.remove(6).exists();
        calls.extend(launch.into_iter().take(6));
        calls.extend([
            secret,
            Call::get("/api/v1/namespaces/default/secrets/mig-runner-a1")
                .ok(object("v1", "Secret", "mig-runner-a1", false)),
            // fail() removes the attempt's Secret only when it is the migration's: it is not
            Call::get("/api/v1/namespaces/default/secrets/mig-runner-a1")
                .ok(object("v1", "Secret", "mig-runner-a1", false)),
            Call::patch(STATUS_PATCH)
                .includes(json!({"status": {"phase": "Failed", "conditions": [
                    {"type": "Ready", "status": "False", "reason": "ObjectConflict",
                     "message": "cannot start: Secret mig-runner-a1 exists and is not owned by this VMMigration: remove or rename it"}
                ]}}))
                .ok(migration_json(&m)),
            Call::event("Failed", "Warning"),
        ]);
        let action = scenario(m, calls).await;
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn terminal_failure_ends_failed_without_retry() {
        let m = migration(running_status(1, "Validating"));
        let action = scenario(
            m.clone(),
            vec![
                Call::event("Validating", "Normal"),
                Call::get(format!("{JOBS}/mig-a1")).ok(job("mig-a1", "runner", 1, failed())),
                Call::get("/api/v1/namespaces/default/pods?&labelSelector=virtrigaud.io%2Fmigration%3Dmig%2Cvirtrigaud.io%2Fcomponent%3Drunner%2Cvirtrigaud.io%2Fattempt%3D1")
                    .ok(pods(2, outcome(false, false, "StorageAuthFailed", "Storage authentication failed: SignatureDoesNotMatch"))),
                read_owned("Secret", "mig-runner-a1"),
                delete_of("Secret", "mig-runner-a1", "Background"),
                Call::patch(STATUS_PATCH)
                    .includes(json!({"status": {
                        "phase": "Failed", "attempt": 1, "completionTime": NOW,
                        "lastError": "StorageAuthFailed: Storage authentication failed: SignatureDoesNotMatch",
                        "message": "attempt 1 failed with a terminal error (StorageAuthFailed: Storage authentication failed: SignatureDoesNotMatch)",
                        "conditions": [{"type": "Ready", "status": "False", "reason": "StorageAuthFailed"}]
                    }}))
                    .ok(migration_json(&m)),
                Call::event("Failed", "Warning"),
            ],
        )
        .await;
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn transient_failure_of_the_last_attempt_ends_failed() {
        let m = migration(running_status(3, "Importing"));
        let action = scenario(
            m.clone(),
            vec![
                Call::event("Importing", "Normal"),
                Call::get(format!("{JOBS}/mig-a3")).ok(job("mig-a3", "runner", 3, failed())),
                // The pod was killed and is gone: no termination state, a retryable loss.
                Call::get("/api/v1/namespaces/default/pods?&labelSelector=virtrigaud.io%2Fmigration%3Dmig%2Cvirtrigaud.io%2Fcomponent%3Drunner%2Cvirtrigaud.io%2Fattempt%3D3")
                    .ok(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})),
                read_owned("Secret", "mig-runner-a3"),
                delete_of("Secret", "mig-runner-a3", "Background"),
                Call::patch(STATUS_PATCH)
                    .includes(json!({"status": {
                        "phase": "Failed", "attempt": 3, "completionTime": NOW,
                        "lastError": "RunnerPodLost: Job has reached the specified backoff limit",
                        "conditions": [{"type": "Ready", "status": "False", "reason": "RetriesExhausted"}]
                    }}))
                    .ok(migration_json(&m)),
                Call::event("Failed", "Warning").includes(json!({"note": "attempt 3 of 3 failed (RunnerPodLost: Job has reached the specified backoff limit); no attempts left"})),
            ],
        )
        .await;
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn success_creates_the_target_vm_and_finishes() {
        let mut status = running_status(1, "Ready");
        status["progress"] = json!(100);
        status["targetVmId"] = json!("vm-77");
        let m = migration(status);
        let vms = "/apis/infra.virtrigaud.io/v1beta1/namespaces/default/virtualmachines";
        let action = scenario(
            m.clone(),
            vec![
                Call::patch(format!("{vms}/migrated-vm?&fieldManager=virtrigaud-operator"))
                    .includes(json!({
                        "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VirtualMachine",
                        "metadata": {"name": "migrated-vm", "namespace": "default",
                                     "labels": {"virtrigaud.io/migration": "mig"}},
                        "spec": {"providerRef": {"name": "vsphere", "namespace": "default"}}
                    }))
                    .check(|body| assert!(body["metadata"].get("ownerReferences").is_none(), "the target VM must outlive the migration"))
                    .ok(json!({"apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VirtualMachine",
                               "metadata": {"name": "migrated-vm", "namespace": "default"},
                               "spec": {"providerRef": {"name": "vsphere", "namespace": "default"}}})),
                Call::patch(format!("{vms}/migrated-vm/status?&force=true&fieldManager=virtrigaud-operator"))
                    .includes(json!({"kind": "VirtualMachine", "status": {"id": "vm-77"}}))
                    .ok(json!({"apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VirtualMachine",
                               "metadata": {"name": "migrated-vm", "namespace": "default"},
                               "spec": {"providerRef": {"name": "vsphere"}}, "status": {"id": "vm-77"}})),
                read_owned("Secret", "mig-runner-a1"),
                delete_of("Secret", "mig-runner-a1", "Background"),
                Call::patch(STATUS_PATCH)
                    .includes(json!({"status": {
                        "phase": "Ready", "completionTime": NOW, "attempt": 1,
                        "message": "migrated to Provider vsphere as migrated-vm (id vm-77)",
                        "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "lastTransitionTime": NOW}]
                    }}))
                    .check(|body| assert!(body["status"].get("targetVmId").is_none(), "the runner owns targetVmId"))
                    .ok(migration_json(&m)),
                Call::event("Succeeded", "Normal"),
            ],
        )
        .await;
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn finished_migration_makes_no_calls() {
        let mut status = running_status(1, "Ready");
        status["completionTime"] = json!(at(-5));
        assert_eq!(
            scenario(migration(status), vec![]).await,
            Action::await_change()
        );
    }

    #[tokio::test]
    async fn missing_source_vm_is_awaited_then_fails() {
        let base = "/apis/infra.virtrigaud.io/v1beta1/namespaces/default/virtualmachines/src-vm";
        // Created a minute ago: within the 2m grace.
        let m = migration(pending_status(1));
        let action = scenario(
            m,
            vec![
                Call::get(format!("{JOBS}/mig-a1")).not_found(),
                Call::get(base).not_found(),
                Call::event("WaitingForReference", "Warning")
                    .includes(json!({"note": "VirtualMachine default/src-vm not found; waiting up to 2m after creation"})),
            ],
        )
        .await;
        assert_eq!(action, Action::requeue(crate::apply::REFERENCE_RETRY));

        let mut m = migration(pending_status(1));
        m.metadata.creation_timestamp = Some(Time(at(-600).parse().unwrap()));
        let action = scenario(
            m.clone(),
            vec![
                Call::get(format!("{JOBS}/mig-a1")).not_found(),
                Call::get(base).not_found(),
                absent("Secret", "mig-runner-a1"),
                Call::patch(STATUS_PATCH)
                    .includes(json!({"status": {"phase": "Failed", "lastError": "VirtualMachine default/src-vm not found",
                                                "conditions": [{"reason": "ReferenceNotFound"}]}}))
                    .ok(migration_json(&m)),
                Call::event("Failed", "Warning"),
            ],
        )
        .await;
        assert_eq!(action, Action::await_change());
    }

    fn deleting(status: Value) -> VMMigration {
        let mut m = migration(status);
        m.metadata.deletion_timestamp = Some(Time(at(-10).parse().unwrap()));
        m
    }

    const JOB_LIST: &str =
        "/apis/batch/v1/namespaces/default/jobs?&labelSelector=virtrigaud.io%2Fmigration%3Dmig";

    #[tokio::test]
    async fn deleting_a_running_migration_stops_its_job_first() {
        let action = scenario(
            deleting(running_status(1, "Transferring")),
            vec![
                Call::get(JOB_LIST).ok(job_list(vec![job("mig-a1", "runner", 1, running())])),
                Call::delete(format!("{JOBS}/mig-a1?")).includes(
                    json!({"propagationPolicy": "Foreground", "preconditions": {"uid": "uid-mig-a1"}}),
                ),
                Call::event("StoppingRunner", "Normal"),
            ],
        )
        .await;
        assert_eq!(action, Action::requeue(crate::cleanup::POLL));
    }

    #[tokio::test]
    async fn deleting_waits_while_the_runner_stops() {
        let mut stopping = job("mig-a1", "runner", 1, running());
        stopping["metadata"]["deletionTimestamp"] = json!(at(-5));
        let action = scenario(
            deleting(running_status(1, "Transferring")),
            vec![Call::get(JOB_LIST).ok(job_list(vec![stopping]))],
        )
        .await;
        assert_eq!(action, Action::requeue(crate::cleanup::POLL));
    }

    /// The calls that launch the cleanup run, after the Job list.
    fn cleanup_launch() -> Vec<Call> {
        let mut calls = vec![still_there()];
        calls.extend(resolve_calls());
        for (create, kind) in [
            (
                "/api/v1/namespaces/default/serviceaccounts?",
                "ServiceAccount",
            ),
            (
                "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles?",
                "Role",
            ),
            (
                "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings?",
                "RoleBinding",
            ),
        ] {
            calls.extend(found(Call::post(create), kind, "mig-runner"));
        }
        calls.extend([
            Call::post("/api/v1/namespaces/default/secrets?")
                .includes(json!({"metadata": {"name": "mig-cleanup", "labels": {"virtrigaud.io/component": "cleanup"}}}))
                .check(|body| {
                    let data: k8s_openapi::ByteString = serde_json::from_value(body["data"]["plan.json"].clone()).unwrap();
                    let plan: crd::plan::RunnerPlan = serde_json::from_slice(&data.0).unwrap();
                    assert_eq!(plan.mode, crd::plan::RunnerMode::Cleanup);
                    assert!(plan.cleanup_policy.delete_intermediate && plan.cleanup_policy.delete_snapshot);
                }),
            bounded_job(Call::post(format!("{JOBS}?")).includes(json!({
                "metadata": {"name": "mig-cleanup", "labels": {"virtrigaud.io/component": "cleanup"}},
                "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 1800,
                         "template": {"spec": {"containers": [{"args": ["cleanup"], "image": "virtrigaud/runner:dev"}]}}}
            })), default_bounds()),
            Call::event("CleanupStarted", "Normal"),
        ]);
        calls
    }

    #[tokio::test]
    async fn deleting_after_the_runner_stopped_launches_a_cleanup_run() {
        let mut calls =
            vec![Call::get(JOB_LIST).ok(job_list(vec![job("mig-a1", "runner", 1, failed())]))];
        calls.extend(cleanup_launch());
        let action = scenario(deleting(running_status(1, "Transferring")), calls).await;
        assert_eq!(action, Action::requeue(crate::cleanup::POLL));
    }

    #[tokio::test]
    async fn deleting_after_the_stopped_runner_job_is_gone_still_launches_a_cleanup_run() {
        // Stopping the runner deletes its Job (foreground); by the next reconcile it may be gone.
        let mut calls = vec![Call::get(JOB_LIST).ok(job_list(vec![]))];
        calls.extend(cleanup_launch());
        let action = scenario(deleting(running_status(1, "Transferring")), calls).await;
        assert_eq!(action, Action::requeue(crate::cleanup::POLL));
    }

    #[tokio::test]
    async fn a_stale_copy_of_a_migration_already_gone_launches_no_cleanup_run() {
        // The cache still shows the migration after its finalizer went and it was deleted: its
        // Jobs are gone too. Nothing is made again for it.
        let calls = vec![
            Call::get(JOB_LIST).ok(job_list(vec![])),
            Call::get("/apis/infra.virtrigaud.io/v1beta1/namespaces/default/vmmigrations/mig")
                .not_found(),
        ];
        let action = scenario(deleting(running_status(1, "Transferring")), calls).await;
        assert_eq!(action, Action::requeue(crate::cleanup::POLL));
    }

    #[tokio::test]
    async fn deleting_after_a_reference_changed_runs_no_cleanup_with_the_new_credentials() {
        let mut status = running_status(1, "Transferring");
        status["references"] = pinned();
        let mut calls = vec![
            Call::get(JOB_LIST).ok(job_list(vec![job("mig-a1", "runner", 1, failed())])),
            still_there(),
        ];
        calls.extend(repointed_resolve_calls());
        calls.push(Call::event("CleanupSkipped", "Warning").check(|body| {
            let note = body["note"].as_str().unwrap();
            assert!(note.contains("Provider default/vsphere changed"), "{note}");
            assert!(
                note.contains("since the migration started: no cleanup run"),
                "{note}"
            );
        }));
        calls.extend(teardown(&["mig-a1"]));
        let action = scenario(deleting(status), calls).await;
        assert_eq!(action, Action::await_change());
    }

    /// The fresh read of the migration before a cleanup run is launched: still there, still held.
    fn still_there() -> Call {
        let m = deleting(running_status(1, "Transferring"));
        Call::get("/apis/infra.virtrigaud.io/v1beta1/namespaces/default/vmmigrations/mig")
            .ok(serde_json::to_value(&m).unwrap())
    }

    /// The deletes of everything the migration owns, then the finalizer's removal.
    fn teardown(jobs: &[&str]) -> Vec<Call> {
        let mut calls: Vec<Call> = jobs
            .iter()
            .map(|j| {
                Call::delete(format!("{JOBS}/{j}?")).includes(
                    json!({"propagationPolicy": "Background", "preconditions": {"uid": format!("uid-{j}")}}),
                )
            })
            .collect();
        calls.extend([
            absent("Secret", "mig-runner-a1"),
            read_owned("Secret", "mig-cleanup"),
            delete_of("Secret", "mig-cleanup", "Background"),
            read_owned("RoleBinding", "mig-runner"),
            delete_of("RoleBinding", "mig-runner", "Background"),
            read_owned("Role", "mig-runner"),
            delete_of("Role", "mig-runner", "Background"),
            read_owned("ServiceAccount", "mig-runner"),
            delete_of("ServiceAccount", "mig-runner", "Background"),
            Call::patch(format!("{VMM}/mig?"))
                .includes(json!({"metadata": {"finalizers": [], "resourceVersion": "7"}}))
                .ok(migration_json(&migration(Value::Null))),
        ]);
        calls
    }

    #[tokio::test]
    async fn deleting_after_cleanup_removes_everything_and_the_finalizer() {
        let mut calls = vec![
            Call::get(JOB_LIST).ok(job_list(vec![
                job("mig-a1", "runner", 1, failed()),
                job("mig-cleanup", "cleanup", 1, complete()),
            ])),
            Call::event("CleanupSucceeded", "Normal"),
        ];
        calls.extend(teardown(&["mig-a1", "mig-cleanup"]));
        let action = scenario(deleting(running_status(1, "Transferring")), calls).await;
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn deleting_a_successful_migration_keeps_the_target_vm() {
        let mut status = running_status(1, "Ready");
        status["completionTime"] = json!(at(-100));
        let mut calls =
            vec![Call::get(JOB_LIST).ok(job_list(vec![job("mig-a1", "runner", 1, complete())]))];
        // No cleanup run and no call on virtualmachines.
        calls.extend(teardown(&["mig-a1"]));
        let action = scenario(deleting(status), calls).await;
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn deleting_when_references_are_gone_skips_cleanup_instead_of_hanging() {
        let mut calls = vec![
            Call::get(JOB_LIST).ok(job_list(vec![job("mig-a1", "runner", 1, failed())])),
            still_there(),
            Call::get(
                "/apis/infra.virtrigaud.io/v1beta1/namespaces/default/virtualmachines/src-vm",
            )
            .not_found(),
            Call::event("CleanupSkipped", "Warning"),
        ];
        calls.extend(teardown(&["mig-a1"]));
        let action = scenario(deleting(running_status(1, "Transferring")), calls).await;
        assert_eq!(action, Action::await_change());
    }

    // ------------------------------------------------------------------------------------------
    // Per-Provider concurrency (spec.maxConcurrentMigrations)
    // ------------------------------------------------------------------------------------------

    const PROVIDERS: &str = "/apis/infra.virtrigaud.io/v1beta1/namespaces/default/providers";

    /// Provider `vsphere` as [`resolve_calls`] answers it, with `limit` as maxConcurrentMigrations.
    fn vsphere_provider(limit: Option<i32>) -> Value {
        let mut p = json!({
            "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "Provider",
            "metadata": {"name": "vsphere", "namespace": "default", "uid": "uid-vsphere"},
            "spec": {"type": "vsphere", "endpoint": "https://127.0.0.1:8989",
                     "credentialSecretRef": {"name": "vsphere-creds"}, "insecureSkipVerify": true}
        });
        if let Some(n) = limit {
            p["spec"]["maxConcurrentMigrations"] = json!(n);
        }
        p
    }

    /// The reads of a migration already in line: its pinned Providers (`vsphere` with `limit`), then
    /// the runner Jobs.
    fn in_line_reads(limit: Option<i32>, jobs: Vec<Value>) -> Vec<Call> {
        vec![
            Call::get(format!("{JOBS}/mig-a1")).not_found(),
            resolve_calls().remove(1),
            Call::get(format!("{PROVIDERS}/vsphere")).ok(vsphere_provider(limit)),
            slots(jobs),
        ]
    }

    /// `n` running runner Jobs of migrations in namespace `team-b` whose target is Provider
    /// default/vsphere, plus one of theirs that finished (it holds no slot) and one running on
    /// team-b's own Provider of the same name (another Provider).
    fn busy(n: usize) -> Vec<Value> {
        let mut jobs: Vec<Value> = (0..n)
            .map(|i| {
                runner_job_of(
                    "team-b",
                    &format!("busy-{i}"),
                    ("team-b/kvm", "default/vsphere"),
                    false,
                )
            })
            .collect();
        jobs.push(runner_job_of(
            "team-b",
            "done",
            ("team-b/kvm", "default/vsphere"),
            true,
        ));
        jobs.push(runner_job_of(
            "team-b",
            "own",
            ("team-b/kvm", "team-b/vsphere"),
            false,
        ));
        jobs
    }

    fn queued_json() -> Value {
        json!({"phase": "Pending", "attempt": 1, "conditions": [
            {"type": "Ready", "status": "False", "reason": "Queued", "lastTransitionTime": at(-3000)}]})
    }

    /// [`pending_status`] of attempt 1, pinned, waiting in line with `message`.
    fn queued_status(message: &str) -> Value {
        let mut s = pending_status(1);
        s["references"] = pinned();
        s["message"] = json!(message);
        s["conditions"][0]["reason"] = json!("Queued");
        s["conditions"][0]["message"] = json!(message);
        s
    }

    /// The status patch that puts `mig` in line with `message`.
    fn queued_patch(m: &VMMigration, message: &str) -> Call {
        Call::patch(STATUS_PATCH)
            .includes(json!({"status": {
                "phase": "Pending", "attempt": 1, "message": message, "references": pinned(),
                "conditions": [{"type": "Ready", "status": "False", "reason": "Queued",
                                "message": message}]
            }}))
            .ok(migration_json(m))
    }

    /// The status patch after `mig`'s Job was created from the line: the wait is over.
    fn left_the_line(m: &VMMigration) -> Call {
        Call::patch(STATUS_PATCH)
            .includes(json!({"status": {
                "phase": "Pending", "attempt": 1, "message": "waiting for the runner (attempt 1 of 3)",
                "conditions": [{"type": "Ready", "status": "False", "reason": "Pending",
                                "message": "the migration has not finished"}]
            }}))
            .ok(migration_json(m))
    }

    /// Other migrations using Provider default/vsphere: two in line ahead of `mig` (one in another
    /// namespace), one whose retry is not due (not in line), one finished, one behind `mig`.
    fn crowd() -> Vec<VMMigration> {
        let mut retry_later = pending_status(2);
        retry_later["nextRetryTime"] = json!(at(600));
        let mut ready = running_status(1, "Ready");
        ready["completionTime"] = json!(at(-100));
        vec![
            other_migration(
                "team-c",
                "early",
                -3600,
                &["team-c/kvm", "default/vsphere"],
                queued_json(),
            ),
            other_migration(
                "default",
                "earlier",
                -600,
                &["default/libvirt", "default/vsphere"],
                pending_status(1),
            ),
            other_migration(
                "default",
                "backing-off",
                -7200,
                &["default/vsphere"],
                retry_later,
            ),
            other_migration("default", "finished", -9000, &["default/vsphere"], ready),
            other_migration(
                "team-c",
                "later",
                -30,
                &["team-c/kvm", "default/vsphere"],
                queued_json(),
            ),
        ]
    }

    #[tokio::test]
    async fn beyond_the_default_limit_of_10_a_migration_waits_pending_in_line_and_launches_no_job()
    {
        // The target Provider sets no limit: 10 runner Jobs of other namespaces' migrations run on
        // it, and two migrations created earlier wait ahead.
        let message = "waiting for a slot on Provider default/vsphere: 10 of 10 running, 2 ahead of this migration";
        let m = migration(pending_status(1));
        let mut calls = vec![Call::get(format!("{JOBS}/mig-a1")).not_found()];
        calls.extend(resolve_calls());
        calls.push(pin_patch(&m));
        calls.push(slots(busy(10)));
        calls.push(queued_patch(&m, message));
        calls.push(
            Call::event("Queued", "Normal").includes(json!({"action": "Launch", "note": message})),
        );
        let action = scenario_in(crowd(), m, Settings::default(), calls).await;
        assert_eq!(action, Action::requeue(crate::queue::QUEUE_RECHECK));

        // Looked at again: only its Providers and the Jobs are read, nothing is written.
        let action = scenario_in(
            crowd(),
            migration(queued_status(message)),
            Settings::default(),
            in_line_reads(None, busy(10)),
        )
        .await;
        assert_eq!(action, Action::requeue(crate::queue::QUEUE_RECHECK));
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_first_in_line_and_not_to_the_second() {
        // 9 of 10 run: `mig` is first in line (`later` is behind it) and launches.
        let world = vec![other_migration(
            "team-c",
            "later",
            -30,
            &["team-c/kvm", "default/vsphere"],
            queued_json(),
        )];
        let m = migration(queued_status(
            "waiting for a slot on Provider default/vsphere: 10 of 10 running, 0 ahead of this migration",
        ));
        let mut calls = in_line_reads(None, busy(9));
        calls.extend(resolve_calls());
        calls.push(slots(busy(9)));
        calls.extend(launch_calls(1, 0));
        calls.push(Call::event("JobLaunched", "Normal"));
        calls.push(left_the_line(&m));
        let action = scenario_in(world, m, Settings::default(), calls).await;
        assert_eq!(action, Action::requeue(crate::apply::START_RECHECK));

        // The same moment seen by the second in line: `first` was created before it and has not
        // launched yet, so the free slot is first's.
        let world = vec![other_migration(
            "team-c",
            "first",
            -3600,
            &["team-c/kvm", "default/vsphere"],
            queued_json(),
        )];
        let m = migration(queued_status(
            "waiting for a slot on Provider default/vsphere: 10 of 10 running, 1 ahead of this migration",
        ));
        let mut calls = in_line_reads(None, busy(9));
        // The new count is written; it was in line already: no second Queued Event.
        calls.push(queued_patch(
            &m,
            "waiting for a slot on Provider default/vsphere: 9 of 10 running, 1 ahead of this migration",
        ));
        let action = scenario_in(world, m, Settings::default(), calls).await;
        assert_eq!(action, Action::requeue(crate::queue::QUEUE_RECHECK));
    }

    #[tokio::test]
    async fn a_changed_limit_counts_at_the_next_look_without_a_restart() {
        let full = "waiting for a slot on Provider default/vsphere: 10 of 10 running, 0 ahead of this migration";
        // Raised to 11: the next in line launches (the limit is not a pinned part of the Provider).
        let m = migration(queued_status(full));
        let mut calls = in_line_reads(Some(11), busy(10));
        calls.extend(resolve_calls());
        calls[6] = Call::get(format!("{PROVIDERS}/vsphere")).ok(vsphere_provider(Some(11)));
        calls.push(slots(busy(10)));
        calls.extend(launch_calls(1, 0));
        calls.push(Call::event("JobLaunched", "Normal"));
        calls.push(left_the_line(&m));
        let action = scenario(m, calls).await;
        assert_eq!(action, Action::requeue(crate::apply::START_RECHECK));

        // Lowered to 5: the ten running go on; the line waits until fewer than 5 run.
        let m = migration(queued_status(full));
        let mut calls = in_line_reads(Some(5), busy(10));
        calls.push(queued_patch(
            &m,
            "waiting for a slot on Provider default/vsphere: 10 of 5 running, 0 ahead of this migration",
        ));
        let action = scenario(m, calls).await;
        assert_eq!(action, Action::requeue(crate::queue::QUEUE_RECHECK));
    }

    // ------------------------------------------------------------------------------------------
    // Retry on request (annotation virtrigaud.io/retry)
    // ------------------------------------------------------------------------------------------

    const RETRY_NOTE: &str = "retry requested (virtrigaud.io/retry=\"1767261600\")";

    /// A migration that failed for good at attempt 3 of 3, with a staged disk, asked to retry.
    fn failed_for_good(retry: Option<&str>, acted_on: Option<&str>) -> VMMigration {
        let mut status = pending_status(3);
        status["phase"] = json!("Failed");
        status["completionTime"] = json!(at(-100));
        status["lastError"] = json!("StorageUnavailable: S3 answered 503");
        status["references"] = pinned();
        status["conditions"][0]["reason"] = json!("RetriesExhausted");
        status["disks"] = json!([{"name": "vda", "stagedUrl": "s3://vm-migrations/default/mig/vda.vmdk",
                                  "sha256": "ab".repeat(32), "targetFormat": "vmdk"}]);
        if let Some(v) = acted_on {
            status["retryRequest"] = json!(v);
        }
        let mut m = migration(status);
        if let Some(v) = retry {
            m.metadata.annotations =
                Some([("virtrigaud.io/retry".to_owned(), v.to_owned())].into());
        }
        m
    }

    #[tokio::test]
    async fn a_retry_request_on_a_failed_migration_starts_the_next_attempt_with_a_new_job() {
        let m = failed_for_good(Some("1767261600"), None);
        let message = format!(
            "{RETRY_NOTE}: attempt 4 (requested; maxAttempts 3) starts after StorageUnavailable: S3 answered 503"
        );
        let mut calls = vec![
            Call::patch(STATUS_PATCH)
                .includes(json!({"status": {
                    "phase": "Pending", "attempt": 4, "retryRequest": "1767261600",
                    "startTime": at(-50), "lastError": "StorageUnavailable: S3 answered 503",
                    "message": message, "references": pinned(),
                    "conditions": [{"type": "Ready", "status": "False", "reason": "RetryRequested",
                                    "lastTransitionTime": at(-50)}]
                }}))
                .check(|body| {
                    let status = &body["status"];
                    for gone in ["completionTime", "nextRetryTime"] {
                        assert!(status.get(gone).is_none(), "{gone} stays: {body}");
                    }
                    // The runner's fields (the staged disk it resumes from) are not the operator's
                    // to send: they stay as they are.
                    assert!(status.get("disks").is_none(), "{body}");
                })
                .ok(migration_json(&m)),
            Call::event("RetryRequested", "Normal").includes(
                json!({"action": "Retry", "note": format!(
                    "{message}; the staged disks and the status the runner resumes from are kept"
                )}),
            ),
            Call::get(format!("{JOBS}/mig-a4")).not_found(),
        ];
        calls.extend(resolve_calls());
        calls.push(free_slots());
        let mut launch = launch_calls(4, 3);
        launch[6] = Call::post("/api/v1/namespaces/default/secrets?")
            .includes(json!({"metadata": {"name": "mig-runner-a4"}}))
            .check(|body| {
                let data: k8s_openapi::ByteString =
                    serde_json::from_value(body["data"]["plan.json"].clone()).unwrap();
                let plan: crd::plan::RunnerPlan = serde_json::from_slice(&data.0).unwrap();
                assert_eq!(plan.attempt, 4);
                assert!(
                    plan.final_attempt,
                    "beyond maxAttempts: no automatic retry follows"
                );
            });
        calls.extend(launch);
        calls.push(
            Call::event("JobLaunched", "Normal").includes(
                json!({"note": "attempt 4 (requested; maxAttempts 3): runner Job mig-a4"}),
            ),
        );
        let action = scenario(m, calls).await;
        assert_eq!(action, Action::requeue(crate::apply::START_RECHECK));
    }

    #[tokio::test]
    async fn the_same_retry_value_is_acted_on_once() {
        // Attempt 4 (asked for with this value) failed too: the value is spent, nothing happens.
        let m = failed_for_good(Some("1767261600"), Some("1767261600"));
        assert_eq!(scenario(m, vec![]).await, Action::await_change());
    }

    #[tokio::test]
    async fn a_retry_annotation_present_at_creation_is_recorded_not_acted_on() {
        let mut m = migration(Value::Null);
        m.metadata.annotations = Some([("virtrigaud.io/retry".to_owned(), "1".to_owned())].into());
        let mut calls = vec![
            Call::patch(STATUS_PATCH)
                .includes(json!({"status": {"retryRequest": "1"}}))
                .check(|body| assert!(body["status"].get("attempt").is_none(), "{body}"))
                .ok(migration_json(&m)),
            Call::patch(STATUS_PATCH)
                .includes(
                    json!({"status": {"phase": "Pending", "attempt": 1, "retryRequest": "1"}}),
                )
                .ok(migration_json(&m)),
            Call::event("Pending", "Normal"),
            Call::get(format!("{JOBS}/mig-a1")).not_found(),
        ];
        calls.extend(resolve_calls());
        calls.push(pin_patch(&m));
        calls.push(free_slots());
        calls.extend(launch_calls(1, 0));
        calls.push(Call::event("JobLaunched", "Normal"));
        let action = scenario(m, calls).await;
        assert_eq!(action, Action::requeue(crate::apply::START_RECHECK));
    }

    #[tokio::test]
    async fn a_retry_request_on_a_ready_migration_is_refused() {
        let mut status = running_status(1, "Ready");
        status["completionTime"] = json!(at(-100));
        let mut m = migration(status);
        m.metadata.annotations =
            Some([("virtrigaud.io/retry".to_owned(), "1767261600".to_owned())].into());
        let calls = vec![
            Call::patch(STATUS_PATCH)
                .includes(
                    json!({"status": {"phase": "Ready", "attempt": 1, "completionTime": at(-100),
                                            "retryRequest": "1767261600"}}),
                )
                .ok(migration_json(&m)),
            Call::event("RetryRefused", "Warning").includes(json!({
                "note": format!("{RETRY_NOTE} and refused: it is Ready: there is nothing to retry")
            })),
        ];
        assert_eq!(scenario(m, calls).await, Action::await_change());
    }

    #[tokio::test]
    async fn a_retry_request_on_a_running_migration_is_refused_and_the_attempt_goes_on() {
        let mut m = migration(running_status(1, "Transferring"));
        m.metadata.annotations =
            Some([("virtrigaud.io/retry".to_owned(), "1767261600".to_owned())].into());
        let calls = vec![
            Call::patch(STATUS_PATCH)
                .includes(json!({"status": {"phase": "Transferring", "retryRequest": "1767261600"}}))
                .ok(migration_json(&m)),
            Call::event("RetryRefused", "Warning").includes(json!({
                "note": format!("{RETRY_NOTE} and refused: it has not failed (attempt 1 of 3, phase Transferring): a retry is for a Failed migration")
            })),
            Call::event("Transferring", "Normal"),
            Call::get(format!("{JOBS}/mig-a1")).ok(job("mig-a1", "runner", 1, running())),
        ];
        assert_eq!(
            scenario(m, calls).await,
            Action::requeue(crate::apply::RECHECK)
        );
    }
}
