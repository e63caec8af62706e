//! `pvesm export` through the e2e world's real sshd (Debian OpenSSH on 127.0.0.1:2222, key auth),
//! as a migration runner uses it: `ssh root@host pvesm export <volid> raw+size -`. Skipped with a
//! message when the world's endpoints are not up (`e2e/.world/endpoints.env` missing or sshd closed).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use pvesim::datadir::DataDir;
use pvesim::fixture;

/// The world's `endpoints.env` (`export KEY=value` lines, values quoted by bash's `printf %q`).
fn world_env() -> Option<HashMap<String, String>> {
    let world = std::env::var_os("VRG_WORLD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.world"));
    let text = std::fs::read_to_string(world.join("endpoints.env")).ok()?;
    let unquote = |v: &str| {
        let mut out = String::new();
        let mut chars = v.trim_matches('\'').chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                out.extend(chars.next());
            } else {
                out.push(c);
            }
        }
        out
    };
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), unquote(v)))
            .collect(),
    )
}

struct Ssh {
    env: HashMap<String, String>,
}

impl Ssh {
    fn connect() -> Option<Ssh> {
        let Some(env) = world_env() else {
            println!("SKIP: e2e/.world/endpoints.env is absent (run e2e/scripts/endpoints-up.sh)");
            return None;
        };
        let addr = format!("{}:{}", env.get("VRG_SSH_HOST")?, env.get("VRG_SSH_PORT")?);
        if std::net::TcpStream::connect(&addr).is_err() {
            println!("SKIP: sshd of the e2e world does not answer on {addr}");
            return None;
        }
        Some(Ssh { env })
    }

    fn run(&self, remote: &str) -> Output {
        Command::new("ssh")
            .args([
                "-F",
                "none",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.env["VRG_SSH_KNOWN_HOSTS"]
            ))
            .arg("-i")
            .arg(&self.env["VRG_SSH_KEY"])
            .arg("-p")
            .arg(&self.env["VRG_SSH_PORT"])
            .arg(format!(
                "{}@{}",
                self.env["VRG_SSH_USER"], self.env["VRG_SSH_HOST"]
            ))
            .arg(remote)
            .output()
            .expect("ssh runs")
    }
}

#[test]
fn pvesm_export_raw_size_over_real_sshd() {
    let Some(ssh) = Ssh::connect() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path()).unwrap();
    fixture::create_source_vm(&data, 32 << 20, true, false).unwrap();

    // the pvesm that pvesim-up.sh installs on the sshd's PATH, or else this build's binary
    let installed = ssh.run("command -v pvesm").status.success();
    let pvesm = if installed {
        "pvesm".to_string()
    } else {
        env!("CARGO_BIN_EXE_pvesm").to_string()
    };
    println!("remote command: {pvesm} (installed on PATH: {installed})");
    let prefix = format!("PVESIM_DATA_DIR={} {pvesm}", data.root().display());

    for spec in fixture::disks(32 << 20) {
        let volid = spec.volid;
        let out = ssh.run(&format!("{prefix} export {volid} raw+size -"));
        assert!(
            out.status.success(),
            "{volid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (header, bytes) = out.stdout.split_at(8);
        assert_eq!(
            u64::from_le_bytes(header.try_into().unwrap()),
            spec.size,
            "{volid}"
        );
        assert!(
            fixture::expected_bytes(&spec) == bytes,
            "{volid}: streamed bytes differ from the fixture"
        );
    }

    let out = ssh.run(&format!(
        "{prefix} export local:100/vm-100-disk-0.qcow2 raw+size - --snapshot s1"
    ));
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "volume export format raw+size not available for PVE::Storage::DirPlugin\n"
    );
}
