//! `e2e-node`: the process-based Kubernetes node of the local e2e world.

use clap::Parser;
use e2e::config::NodeArgs;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_runtime=warn,kube_client=warn".into()),
        )
        .init();
    let args = NodeArgs::parse();
    match e2e::agent::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "e2e-node failed");
            std::process::ExitCode::FAILURE
        }
    }
}
