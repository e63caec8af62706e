//! The kubelet API over TLS: `/containerLogs/{namespace}/{pod}/{container}` (what `kubectl logs`
//! reaches through the API server), `/pods` and `/healthz`.
//!
//! Clients are authenticated by a certificate signed by the cluster CA (the API server's
//! `--kubelet-client-certificate`); `/healthz` is open. Authorisation is not checked beyond that:
//! every holder of such a certificate may read logs, as with `--authorization-mode=AlwaysAllow`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::jiff::Timestamp;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::context::Registry;
use crate::error::{Error, Result};
use crate::logs::{self, LiveLogs, LogOptions};

/// Whether the TLS peer presented a certificate signed by the client CA.
#[derive(Clone, Copy, Debug)]
pub struct Authenticated(pub bool);

/// State of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    /// Pods running on the node.
    pub registry: Registry,
    /// Log files still being written.
    pub live: LiveLogs,
}

/// The kubelet API routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/pods", get(pods))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not supported by the process node (only containerLogs, pods and healthz)\n",
            )
        })
        .with_state(state)
}

fn forbidden() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        "client certificate signed by the cluster CA required\n",
    )
        .into_response()
}

fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true" || v == "1")
}

fn number<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    key: &str,
) -> std::result::Result<Option<T>, String> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("invalid {key}: {v:?}")),
    }
}

/// Parses the kubelet log query (`follow`, `tailLines`, `timestamps`, `sinceSeconds`, `sinceTime`,
/// `limitBytes`); the error is the message of a 400 answer.
pub fn log_options(q: &HashMap<String, String>) -> std::result::Result<LogOptions, String> {
    let since_seconds: Option<i64> = number(q, "sinceSeconds")?;
    let since_time = match q.get("sinceTime") {
        Some(t) => Some(
            t.parse::<Timestamp>()
                .map_err(|_| format!("invalid sinceTime: {t:?}"))?,
        ),
        None => None,
    };
    let since = since_time.or_else(|| {
        since_seconds.and_then(|s| Timestamp::from_second(Timestamp::now().as_second() - s).ok())
    });
    Ok(LogOptions {
        follow: flag(q, "follow"),
        tail_lines: number::<i64>(q, "tailLines")?.map(|n| n.max(0) as usize),
        timestamps: flag(q, "timestamps"),
        since,
        limit_bytes: number::<i64>(q, "limitBytes")?.map(|n| n.max(0) as usize),
    })
}

async fn container_logs(
    State(state): State<ApiState>,
    Extension(auth): Extension<Authenticated>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !auth.0 {
        return forbidden();
    }
    let Some(entry) = state.registry.get(&namespace, &pod) else {
        return (
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not on this node\n"),
        )
            .into_response();
    };
    let spec = entry.pod.spec.clone().unwrap_or_default();
    let known = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == container);
    if !known {
        return (
            StatusCode::NOT_FOUND,
            format!("container {container:?} not found in pod {pod:?}\n"),
        )
            .into_response();
    }
    let opts = match log_options(&q) {
        Ok(o) => o,
        Err(message) => return (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    };
    let runs = logs::runs(&entry.dir, &container);
    let chosen = if flag(&q, "previous") {
        runs.len().checked_sub(2).map(|i| runs[i].clone())
    } else {
        runs.last().cloned()
    };
    let Some(path) = chosen else {
        let message = if flag(&q, "previous") {
            format!("previous terminated container {container:?} in pod {pod:?} not found\n")
        } else {
            format!("container {container:?} in pod {pod:?} is waiting to start\n")
        };
        return (StatusCode::BAD_REQUEST, message).into_response();
    };
    match logs::stream(path, opts, state.live.clone()).await {
        Ok(stream) => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn pods(
    State(state): State<ApiState>,
    Extension(auth): Extension<Authenticated>,
) -> Response {
    if !auth.0 {
        return forbidden();
    }
    let list = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": state.registry.pods(),
    });
    axum::Json(list).into_response()
}

fn read_pem(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(Error::io("read", path))
}

/// A TLS server configuration with the serving certificate and key, verifying client
/// certificates against `client_ca` (clients without a certificate are let in unauthenticated).
pub fn tls_config(cert: &Path, key: &Path, client_ca: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut read_pem(cert)?.as_slice())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut read_pem(key)?.as_slice())
        .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| Error::Tls(format!("{}: no private key", key.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut read_pem(client_ca)?.as_slice()) {
        let ca = ca.map_err(|e| Error::Tls(format!("{}: {e}", client_ca.display())))?;
        roots
            .add(ca)
            .map_err(|e| Error::Tls(format!("{}: {e}", client_ca.display())))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, router: Router) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "kubelet API accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let authenticated = Authenticated(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty()),
            );
            let service = TowerToHyperService::new(router.layer(Extension(authenticated)));
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "kubelet API connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::PodEntry;
    use axum::http::Request;
    use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
    use kube::api::ObjectMeta;
    use tower::ServiceExt;

    fn state(dir: &Path) -> ApiState {
        let registry = Registry::default();
        registry.put(
            "ns",
            "p",
            PodEntry {
                uid: "u".into(),
                dir: dir.to_path_buf(),
                pod: Pod {
                    metadata: ObjectMeta {
                        name: Some("p".into()),
                        namespace: Some("ns".into()),
                        ..Default::default()
                    },
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            },
        );
        ApiState {
            registry,
            live: LiveLogs::default(),
        }
    }

    async fn get(app: Router, uri: &str, auth: bool) -> (StatusCode, String) {
        let resp = app
            .layer(Extension(Authenticated(auth)))
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn logs_of_current_and_previous_runs() {
        let dir = tempfile::tempdir().unwrap();
        let write = |run: i32, text: &str| {
            let p = logs::log_path(dir.path(), "c", run);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(0, "2026-01-01T00:00:00Z stdout F old\n");
        write(
            1,
            "2026-01-01T00:01:00Z stdout F a\n2026-01-01T00:01:01Z stderr F b\n",
        );
        let app = router(state(dir.path()));
        assert_eq!(
            get(app.clone(), "/containerLogs/ns/p/c", true).await,
            (StatusCode::OK, "a\nb\n".into())
        );
        assert_eq!(
            get(app.clone(), "/containerLogs/ns/p/c?tailLines=1", true)
                .await
                .1,
            "b\n"
        );
        assert_eq!(
            get(app.clone(), "/containerLogs/ns/p/c?previous=true", true)
                .await
                .1,
            "old\n"
        );
        assert_eq!(
            get(
                app.clone(),
                "/containerLogs/ns/p/c?timestamps=true&tailLines=1",
                true
            )
            .await
            .1,
            "2026-01-01T00:01:01Z b\n"
        );
        assert_eq!(
            get(app.clone(), "/containerLogs/ns/p/zz", true).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(app.clone(), "/containerLogs/ns/other/c", true).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(app.clone(), "/containerLogs/ns/p/c?tailLines=x", true)
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn logs_need_a_client_certificate_but_healthz_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(state(dir.path()));
        assert_eq!(
            get(app.clone(), "/containerLogs/ns/p/c", false).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(app.clone(), "/pods", false).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(app.clone(), "/healthz", false).await,
            (StatusCode::OK, "ok".into())
        );
        let (status, body) = get(app, "/pods", true).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"name\":\"p\""), "{body}");
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
    struct Pki {
        dir: tempfile::TempDir,
        client_pem: String,
        stranger_pem: String,
    }

    fn pki() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>, issuer: &CertifiedIssuer<'_, KeyPair>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_crt, server_key) = leaf(vec!["127.0.0.1".into()], &ca);
        let (client_crt, client_key) = leaf(vec!["kube-apiserver-kubelet-client".into()], &ca);
        let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other_ca =
            CertifiedIssuer::self_signed(other_params, KeyPair::generate().unwrap()).unwrap();
        let (stranger_crt, stranger_key) = leaf(vec!["stranger".into()], &other_ca);
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.crt"), server_crt).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key).unwrap();
        Pki {
            dir,
            client_pem: format!("{client_crt}{client_key}"),
            stranger_pem: format!("{stranger_crt}{stranger_key}"),
        }
    }

    #[tokio::test]
    async fn tls_server_authenticates_clients_by_the_ca() {
        let pki = pki();
        let d = pki.dir.path();
        let tls = tls_config(
            &d.join("server.crt"),
            &d.join("server.key"),
            &d.join("ca.crt"),
        )
        .unwrap();
        let logs_dir = tempfile::tempdir().unwrap();
        let p = logs::log_path(logs_dir.path(), "c", 0);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "2026-01-01T00:00:00Z stdout F over tls\n").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, tls, router(state(logs_dir.path()))));

        let ca = reqwest::Certificate::from_pem(&std::fs::read(d.join("ca.crt")).unwrap()).unwrap();
        let client = |identity: Option<&str>| {
            let mut b = reqwest::Client::builder()
                .add_root_certificate(ca.clone())
                .use_rustls_tls();
            if let Some(pem) = identity {
                b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
            }
            b.build().unwrap()
        };
        let url = format!("https://{addr}/containerLogs/ns/p/c");
        let resp = client(Some(&pki.client_pem))
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "over tls\n");

        let anonymous = client(None);
        assert_eq!(anonymous.get(&url).send().await.unwrap().status(), 401);
        let health = anonymous
            .get(format!("https://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);

        // a certificate from another CA fails the handshake
        assert!(
            client(Some(&pki.stranger_pem))
                .get(&url)
                .send()
                .await
                .is_err()
        );
        server.abort();
    }

    #[test]
    fn since_seconds_becomes_a_time() {
        let q: HashMap<String, String> = [("sinceSeconds".to_string(), "60".to_string())].into();
        let opts = log_options(&q).unwrap();
        let since = opts.since.unwrap().as_second();
        assert!((Timestamp::now().as_second() - since - 60).abs() <= 1);
    }
}
