//! `webhook`: the VMMigration validating admission webhook. Wiring only; see the library for the parts.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use webhook::admission::Admission;
use webhook::cluster::KubeCluster;
use webhook::endpoints::{AddressPolicy, SystemResolver};
use webhook::selfsigned::{self, SelfSigned};
use webhook::tls::{self, ReloadingCert};
use webhook::{AppState, Error, Metrics, server};

/// Validating admission webhook for infra.virtrigaud.io/v1beta1 VMMigration.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Log format and filter (`--log-format`, `--log-level`).
    #[command(flatten)]
    log: crd::logging::LogSettings,
    /// Directory with tls.crt and tls.key (re-read when they change). In --self-signed mode the webhook
    /// writes ca.crt, tls.crt and tls.key there.
    #[arg(
        long,
        env = "VRG_WEBHOOK_CERT_DIR",
        default_value = "/tmp/k8s-webhook-server/serving-certs"
    )]
    cert_dir: PathBuf,
    /// Address both listeners bind to.
    #[arg(long, env = "VRG_WEBHOOK_ADDRESS", default_value = "0.0.0.0")]
    address: IpAddr,
    /// HTTPS port: /validate, /healthz, /metrics.
    #[arg(long, env = "VRG_WEBHOOK_PORT", default_value_t = 8443)]
    port: u16,
    /// Plain-HTTP port for /metrics and /healthz (0: none).
    #[arg(long, env = "VRG_WEBHOOK_METRICS_PORT", default_value_t = 8080)]
    metrics_port: u16,
    /// Allow storage endpoints on loopback addresses (local test worlds only).
    #[arg(long, env = "VRG_WEBHOOK_ALLOW_LOOPBACK_ENDPOINTS")]
    allow_loopback_endpoints: bool,
    /// Longest wait for resolving a storage endpoint's host name (a Go duration, e.g. 1s, 500ms).
    #[arg(long, env = "VRG_WEBHOOK_DNS_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    dns_timeout: Duration,
    /// Issue a CA and serving certificate at start and apply the CA into the webhook configuration
    /// (no cert-manager needed). Requires --service-namespace and --webhook-config-name.
    #[arg(long, env = "VRG_WEBHOOK_SELF_SIGNED", requires_all = ["service_namespace", "webhook_config_name"])]
    self_signed: bool,
    /// The webhook's Service name (self-signed mode).
    #[arg(
        long,
        env = "VRG_WEBHOOK_SERVICE_NAME",
        default_value = "virtrigaud-webhook"
    )]
    service_name: String,
    /// The webhook's namespace (self-signed mode).
    #[arg(long, env = "POD_NAMESPACE")]
    service_namespace: Option<String>,
    /// The ValidatingWebhookConfiguration to put the CA bundle into (self-signed mode).
    #[arg(long, env = "VRG_WEBHOOK_CONFIG_NAME")]
    webhook_config_name: Option<String>,
    /// The Secret (in --service-namespace) holding the CA every replica shares (self-signed mode);
    /// empty: a CA in memory, new at each start, for a single replica.
    #[arg(
        long,
        env = "VRG_WEBHOOK_CA_SECRET",
        default_value = "virtrigaud-webhook-ca"
    )]
    ca_secret: String,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crd::parse_duration(text).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(e) = crd::logging::init(&args.log, "info") {
        eprintln!("webhook: {e}");
        return std::process::ExitCode::FAILURE;
    }
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "webhook stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let client = kube::Client::try_default().await?;

    let mut renewal = None;
    if args.self_signed {
        let config = SelfSigned {
            service: args.service_name.clone(),
            namespace: args.service_namespace.clone().unwrap_or_default(),
            webhook_config: args.webhook_config_name.clone().unwrap_or_default(),
            ca_secret: Some(args.ca_secret.clone()).filter(|name| !name.is_empty()),
        };
        let (authority, names, not_after) =
            selfsigned::set_up(client.clone(), &args.cert_dir, &config).await?;
        let dir = args.cert_dir.clone();
        renewal = Some(tokio::spawn(async move {
            selfsigned::keep_renewed(
                &authority,
                &names,
                &dir,
                not_after,
                Duration::from_secs(3600),
            )
            .await
        }));
    }

    let resolver = Arc::new(ReloadingCert::new(&args.cert_dir)?);
    let state = AppState {
        admission: Arc::new(Admission {
            cluster: Arc::new(KubeCluster::new(client)),
            resolver: Arc::new(SystemResolver {
                timeout: args.dns_timeout,
            }),
            addresses: AddressPolicy {
                allow_loopback: args.allow_loopback_endpoints,
            },
        }),
        metrics: Arc::new(Metrics::default()),
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    if args.metrics_port != 0 {
        let addr = SocketAddr::new(args.address, args.metrics_port);
        let listener = bind(addr).await?;
        tracing::info!(%addr, "serving /metrics and /healthz over HTTP");
        let ops = webhook::ops_router(state.metrics.clone());
        let shutdown = stopped();
        tokio::spawn(server::serve_plain(
            listener,
            ops,
            server::Limits::default(),
            shutdown,
        ));
    }

    let addr = SocketAddr::new(args.address, args.port);
    let listener = bind(addr).await?;
    tracing::info!(%addr, cert_dir = %args.cert_dir.display(), "serving admission reviews over HTTPS");
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    server::serve_tls(
        listener,
        tls::server_config(resolver)?,
        webhook::router(state),
        server::Limits::default(),
        stopped(),
    )
    .await;
    if let Some(task) = renewal {
        task.abort();
    }
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen {
            addr: addr.to_string(),
            source,
        })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
