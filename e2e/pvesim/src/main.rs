//! `pvesim`: the Proxmox VE API simulator (wiring only).

use std::sync::Arc;

use clap::Parser;
use pvesim::api::{AppState, router};
use pvesim::args::{Cli, Command};
use pvesim::auth::{Tokens, parse_token_arg};
use pvesim::datadir::DataDir;
use pvesim::node::Node;
use pvesim::{Error, fixture, schema, server};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("pvesim: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    if let Some(Command::Fixture(args)) = cli.command {
        let size = schema::parse_size(&args.disk_size)
            .ok_or_else(|| Error::failed(format!("invalid size '{}'", args.disk_size)))?;
        let data = DataDir::open(&args.data_dir)?;
        for (vm, created) in fixture::create_all(&data, size, args.running, args.force)? {
            let what = if created { "created" } else { "kept existing" };
            println!("{what} VM {} ({})", vm.vmid, vm.name);
        }
        return Ok(());
    }
    let serve = cli.serve;
    let (Some(data_dir), Some(cert), Some(key)) = (serve.data_dir, serve.tls_cert, serve.tls_key)
    else {
        return Err(Error::failed(
            "--data-dir, --tls-cert and --tls-key are required",
        ));
    };
    let data = DataDir::open(&data_dir)?;
    let extra_ca = match &serve.ca_file {
        Some(path) => {
            Some(std::fs::read(path).map_err(Error::io(format!("read {}", path.display())))?)
        }
        None => None,
    };
    let node = Node::open(data.clone(), extra_ca.as_deref())?;
    let tokens = serve
        .tokens
        .iter()
        .map(|t| parse_token_arg(t))
        .collect::<Result<Vec<_>, _>>()?;
    let state = Arc::new(AppState {
        node,
        tokens: Tokens::new(data, tokens),
    });
    let tls = server::tls_config(&cert, &key)?;
    let listener = tokio::net::TcpListener::bind(serve.listen)
        .await
        .map_err(Error::io(format!("listen on {}", serve.listen)))?;
    tracing::info!(listen = %serve.listen, data = %data_dir.display(), "pvesim serving https://{}/api2/json", serve.listen);
    server::serve(listener, tls, router(state)).await;
    Ok(())
}
