//! `pvesm` of the simulated Proxmox VE node (wiring only): see `pvesim::pvesm_cli`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(pvesim::pvesm_cli::main(&args));
}
