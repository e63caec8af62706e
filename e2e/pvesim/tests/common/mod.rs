//! Helpers of the integration tests: a simulator in a temporary data directory with two tokens (a
//! full one and a read-only one), and in-process requests through the router.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use pvesim::api::{AppState, router};
use pvesim::auth::{Role, Token, Tokens};
use pvesim::datadir::{DataDir, write_json};
use pvesim::node::Node;
use serde_json::Value;
use tower::ServiceExt;

/// Full-privilege token (no privilege separation, user root@pam).
pub const ADMIN: (&str, &str) = (
    "root@pam!virtrigaud",
    "0b5c1f0e-6a53-4b8e-9d55-3c8e7d0c2f11",
);
/// Read-only token (privilege separated, PVEAuditor).
pub const READONLY: (&str, &str) = ("root@pam!readonly", "7f0d2b9a-3c4e-4f6a-8b1d-2e5f6a7b8c9d");

/// A simulator in a temporary directory.
pub struct Sim {
    pub tmp: tempfile::TempDir,
    pub data: DataDir,
    pub node: Arc<Node>,
    pub router: Router,
}

pub fn sim() -> Sim {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = DataDir::open(tmp.path()).expect("data dir");
    let tokens = vec![
        Token {
            tokenid: ADMIN.0.into(),
            secret: ADMIN.1.into(),
            privsep: false,
            role: Role::NoAccess,
        },
        Token {
            tokenid: READONLY.0.into(),
            secret: READONLY.1.into(),
            privsep: true,
            role: Role::Auditor,
        },
    ];
    write_json(&data.tokens_file(), &tokens).expect("tokens");
    let node = Node::open(data.clone(), None).expect("node");
    let state = Arc::new(AppState {
        node: Arc::clone(&node),
        tokens: Tokens::new(data.clone(), vec![]),
    });
    Sim {
        tmp,
        data,
        node,
        router: router(state),
    }
}

/// An answer: status, reason phrase (if set) and JSON body (`Null` if empty).
pub struct Answer {
    pub status: StatusCode,
    pub reason: Option<String>,
    pub body: Value,
}

impl Answer {
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
}

pub fn auth_header(token: (&str, &str)) -> String {
    format!("PVEAPIToken={}={}", token.0, token.1)
}

/// Sends a request with an optional token and form-encoded parameters (query for GET/DELETE).
pub async fn call(
    sim: &Sim,
    method: &str,
    path: &str,
    token: Option<(&str, &str)>,
    params: &[(&str, &str)],
) -> Answer {
    let encoded: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let mut uri = format!("/api2/json{path}");
    let body = if method == "GET" || method == "DELETE" {
        if !encoded.is_empty() {
            uri.push('?');
            uri.push_str(&encoded);
        }
        Body::empty()
    } else {
        Body::from(encoded)
    };
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(t) = token {
        req = req.header("authorization", auth_header(t));
    }
    send(sim, req.body(body).expect("request")).await
}

pub async fn send(sim: &Sim, req: Request<Body>) -> Answer {
    let response = sim
        .router
        .clone()
        .oneshot(req)
        .await
        .expect("router answers");
    let status = response.status();
    let reason = response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).to_string());
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    Answer {
        status,
        reason,
        body,
    }
}

/// Polls a task until it stopped; returns its final status object.
pub async fn wait_task(sim: &Sim, upid: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    let path = format!(
        "/nodes/pve1/tasks/{}/status",
        url::form_urlencoded::byte_serialize(upid.as_bytes()).collect::<String>()
    );
    loop {
        let answer = call(sim, "GET", &path, Some(ADMIN), &[]).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "task status: {:?}",
            answer.body
        );
        if answer.data()["status"] == "stopped" {
            return answer.data().clone();
        }
        assert!(Instant::now() < deadline, "task {upid} did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The task log lines.
pub async fn task_log(sim: &Sim, upid: &str) -> Vec<String> {
    let path = format!(
        "/nodes/pve1/tasks/{}/log",
        url::form_urlencoded::byte_serialize(upid.as_bytes()).collect::<String>()
    );
    let answer = call(sim, "GET", &path, Some(ADMIN), &[("limit", "1000")]).await;
    answer
        .data()
        .as_array()
        .expect("log lines")
        .iter()
        .map(|l| l["t"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Runs a command and returns stdout; panics with stderr on failure.
pub fn run(cmd: &mut std::process::Command) -> Vec<u8> {
    let output = cmd.output().expect("command runs");
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Creates a qcow2 image with a known pattern; returns its path.
pub fn make_qcow2(path: &std::path::Path, size: &str) {
    run(std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size));
    run(std::process::Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 0 1M",
            "-c",
            "write -P 0xa5 4M 512k",
        ])
        .arg(path));
}
