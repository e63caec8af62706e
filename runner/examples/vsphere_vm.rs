//! Prints what a vSphere (or vcsim) VM looks like, through the runner's own vSphere client: vCPUs,
//! memory, power state, disks with capacity and backing file, NICs and their networks, and the
//! migration mark. Used by `make demo` to show the migrated VM.
//!
//! `VSPHERE_URL=https://host/sdk VSPHERE_USER=... VSPHERE_PASSWORD=... VSPHERE_CA=ca.pem \
//!  cargo run -q -p runner --example vsphere_vm -- <vm name> [--destroy]` (`--destroy` removes the
//! VM instead, when it exists: the demo's reset).

use runner::endpoint::Guard;
use runner::progress::human_bytes;
use runner::provider::vsphere::{Client, OWNER_KEY, TlsOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args()
        .nth(1)
        .ok_or("usage: vsphere_vm <vm name>")?;
    let env = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let ca_pem = match std::env::var("VSPHERE_CA") {
        Ok(path) => Some(std::fs::read_to_string(path)?),
        Err(_) => None,
    };
    let tls = TlsOptions {
        insecure_skip_verify: false,
        ca_pem,
    };
    let client = Client::connect(&env("VSPHERE_URL")?, tls, Guard::new(true)).await?;
    client
        .login(&env("VSPHERE_USER")?, &env("VSPHERE_PASSWORD")?)
        .await?;
    let destroy = std::env::args().any(|a| a == "--destroy");
    let vm = match client.find_vm(&name).await {
        Err(runner::Error::NotFound { .. }) if destroy => return Ok(()),
        found => found?,
    };
    let info = client.vm_info(&vm).await?;
    if destroy {
        if info.power_state == runner::provider::vsphere::PowerState::PoweredOn {
            client.power_off(&vm).await?;
        }
        client.destroy(&vm).await?;
        println!("destroyed VM {name} ({})", vm.value);
        return Ok(client.logout().await?);
    }
    println!(
        "VM {} ({}): {} vCPU, {} MiB, {:?}, firmware {}, guest {}",
        info.name,
        info.moref.value,
        info.num_cpu,
        info.memory_mb,
        info.power_state,
        info.firmware.as_str(),
        info.guest_id
    );
    for d in &info.disks {
        println!(
            "  disk {} ({}:{}): {} on {}",
            d.label,
            d.controller_kind.as_str(),
            d.unit_number,
            human_bytes(d.capacity_bytes),
            d.backing.file_name
        );
    }
    for n in &info.nics {
        println!(
            "  NIC {} on {}",
            n.device_type,
            n.network_name().unwrap_or("?")
        );
    }
    if let Some((_, uid)) = info.extra_config.iter().find(|(k, _)| k == OWNER_KEY) {
        println!("  {OWNER_KEY} = {uid}");
    }
    client.logout().await?;
    Ok(())
}
