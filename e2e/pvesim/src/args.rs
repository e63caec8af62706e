//! Command line of `pvesim`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Proxmox VE simulator: api2/json over HTTPS with API tokens, backed by real disk files.
#[derive(Debug, Parser)]
#[command(
    name = "pvesim",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// Run the API server (the default) or a maintenance command.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Maintenance commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the fixture VMs with known disk contents: the source VM `database-server` (100),
    /// the templates 900 and 901 and their linked clones 101 and 102.
    Fixture(FixtureArgs),
}

/// Options of the API server.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback only in the e2e world).
    #[arg(long, default_value = "127.0.0.1:8006")]
    pub listen: SocketAddr,
    /// Data directory (state files and storages).
    #[arg(long, env = "PVESIM_DATA_DIR", required = true)]
    pub data_dir: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    #[arg(long, required = true)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, required = true)]
    pub tls_key: Option<PathBuf>,
    /// An accepted API token `USER@REALM!TOKENID=SECRET` with its user's privileges (repeatable;
    /// prefer `tokens.json` in the data directory: arguments are visible in `ps`).
    #[arg(long = "token")]
    pub tokens: Vec<String>,
    /// Further CA certificates (PEM) download-url trusts, as if installed on the node.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// Options of `pvesim fixture`.
#[derive(Debug, Args)]
pub struct FixtureArgs {
    /// Data directory.
    #[arg(long, env = "PVESIM_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Virtual size of the qcow2 disks; the LVM-thin disks get a quarter (at least 8 MiB).
    #[arg(long, default_value = "256M")]
    pub disk_size: String,
    /// Mark the source VM as running.
    #[arg(long)]
    pub running: bool,
    /// Recreate the VMs that exist.
    #[arg(long)]
    pub force: bool,
}
