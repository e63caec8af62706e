//! `operator`: parses flags, sets up logging, runs [`operator::run`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = operator::Args::parse();
    if let Err(e) = crd::logging::init(&args.log, "info,kube=warn") {
        eprintln!("operator: {e}");
        return std::process::ExitCode::FAILURE;
    }
    match operator::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator failed");
            std::process::ExitCode::FAILURE
        }
    }
}
