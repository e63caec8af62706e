//! `lvs` of the simulated Proxmox VE node (wiring only): see `pvesim::lvm_cli`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(pvesim::lvm_cli::lvs_main(&args));
}
