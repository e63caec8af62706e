//! Startup, readiness and liveness probes (`httpGet`, `tcpSocket`, `exec`) against the pod IP,
//! with the kubelet's timing (`initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`) and
//! thresholds (`successThreshold`, `failureThreshold`).

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::mpsc;

use crate::process;

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Gates the other two; failing it restarts the container.
    Startup,
    /// Decides whether the container is ready (in Service endpoints).
    Readiness,
    /// Failing it restarts the container.
    Liveness,
}

/// A probe's verdict changed.
#[derive(Clone, Debug)]
pub struct ProbeEvent {
    /// Container name.
    pub container: String,
    /// The container run (restart count) this is about.
    pub run: i32,
    /// Which probe.
    pub kind: ProbeKind,
    /// The new verdict.
    pub success: bool,
    /// Why it failed.
    pub message: String,
}

/// Where a probe goes.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    /// The pod IP (default host of httpGet/tcpSocket).
    pub pod_ip: String,
    /// The container's process (for exec probes).
    pub pid: u32,
    /// The container's environment (for exec probes).
    pub env: Vec<(String, String)>,
    /// The container's declared ports (named ports).
    pub ports: Vec<ContainerPort>,
}

/// Resolves a probe port: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} out of range")),
        IntOrString::String(s) => {
            if let Ok(n) = s.parse::<u16>() {
                return Ok(n);
            }
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("no container port named {s:?}"))
        }
    }
}

/// Runs one check; `Err` carries the failure message.
pub async fn check(
    probe: &Probe,
    target: &ProbeTarget,
    client: &reqwest::Client,
) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(http) = &probe.http_get {
        let port = resolve_port(&http.port, &target.ports)?;
        let host = http.host.clone().unwrap_or_else(|| target.pod_ip.clone());
        let scheme = http
            .scheme
            .as_deref()
            .unwrap_or("HTTP")
            .to_ascii_lowercase();
        let path = http.path.as_deref().unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let url = format!("{scheme}://{host}:{port}{path}");
        let mut req = client
            .get(&url)
            .timeout(timeout)
            .header("User-Agent", "kube-probe/1.36");
        for h in http.http_headers.iter().flatten() {
            req = req.header(&h.name, &h.value);
        }
        let resp = req.send().await.map_err(|e| format!("Get {url:?}: {e}"))?;
        let code = resp.status().as_u16();
        return if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(&tcp.port, &target.ports)?;
        let host = tcp.host.clone().unwrap_or_else(|| target.pod_ip.clone());
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: timeout")),
        };
    }
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        let (program, args) = command
            .split_first()
            .ok_or("exec probe without a command")?;
        let child =
            process::spawn_in(target.pid, program, args, &target.env).map_err(|e| e.to_string())?;
        return match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(format!(
                "command {command:?} exited with {}: {}",
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).trim()
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("command {command:?} timed out")),
        };
    }
    Err("probe type not supported by the process node (use httpGet, tcpSocket or exec)".into())
}

/// Probes until aborted, sending an event whenever the verdict changes (and the first verdict).
pub async fn run(
    kind: ProbeKind,
    probe: Probe,
    container: String,
    run: i32,
    target: ProbeTarget,
    client: reqwest::Client,
    events: mpsc::Sender<ProbeEvent>,
) {
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(Duration::from_secs(
        probe.initial_delay_seconds.unwrap_or(0).max(0) as u64,
    ))
    .await;
    let mut verdict: Option<bool> = None;
    let (mut successes, mut failures) = (0, 0);
    loop {
        let result = check(&probe, &target, &client).await;
        let message = result.as_ref().err().cloned().unwrap_or_default();
        if result.is_ok() {
            successes += 1;
            failures = 0;
        } else {
            failures += 1;
            successes = 0;
        }
        let new = if successes >= success_threshold {
            Some(true)
        } else if failures >= failure_threshold {
            Some(false)
        } else {
            verdict
        };
        if new != verdict {
            verdict = new;
            let success = new == Some(true);
            let event = ProbeEvent {
                container: container.clone(),
                run,
                kind,
                success,
                message,
            };
            if events.send(event).await.is_err() || (kind == ProbeKind::Startup && success) {
                return;
            }
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HTTPGetAction, TCPSocketAction};

    fn target(ports: Vec<ContainerPort>) -> ProbeTarget {
        ProbeTarget {
            pod_ip: "127.0.0.1".into(),
            pid: std::process::id(),
            env: vec![],
            ports,
        }
    }

    #[test]
    fn named_ports_resolve() {
        let ports = vec![ContainerPort {
            name: Some("https".into()),
            container_port: 9443,
            ..Default::default()
        }];
        assert_eq!(
            resolve_port(&IntOrString::String("https".into()), &ports),
            Ok(9443)
        );
        assert_eq!(resolve_port(&IntOrString::Int(80), &ports), Ok(80));
        assert!(resolve_port(&IntOrString::String("nope".into()), &ports).is_err());
    }

    #[tokio::test]
    async fn tcp_and_http_checks_against_a_live_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let status = if req.starts_with("GET /healthz") {
                    "200 OK"
                } else {
                    "503 Unavailable"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let client = reqwest::Client::new();
        let t = target(vec![]);
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(port as i32),
                host: None,
            }),
            ..Default::default()
        };
        assert_eq!(check(&tcp, &t, &client).await, Ok(()));
        let http = |path: &str| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(port as i32),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(check(&http("/healthz"), &t, &client).await, Ok(()));
        let err = check(&http("/other"), &t, &client).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
    }

    #[tokio::test]
    async fn verdict_changes_are_reported_after_thresholds() {
        let (tx, mut rx) = mpsc::channel(4);
        // nothing listens on port 1: every check fails
        let probe = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(1),
                host: None,
            }),
            period_seconds: Some(1),
            failure_threshold: Some(2),
            ..Default::default()
        };
        let task = tokio::spawn(run(
            ProbeKind::Readiness,
            probe,
            "c".into(),
            0,
            target(vec![]),
            reqwest::Client::new(),
            tx,
        ));
        let started = std::time::Instant::now();
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!ev.success);
        assert!(ev.message.contains("127.0.0.1:1"), "{}", ev.message);
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "second failure comes one period later"
        );
        task.abort();
    }
}
