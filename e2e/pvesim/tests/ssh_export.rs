//! `pvesm export`, `lvchange` and `lvs` through the e2e world's real sshd (Debian OpenSSH on
//! 127.0.0.1:2222, key auth), as a migration runner uses them: `ssh root@host pvesm export <volid>
//! raw+size -` for every fixture disk (linked clones included), and the read of a thin snapshot
//! (`lvchange -ay -K`, `lvs ... -o lv_path,lv_size`, `cat`, `lvchange -an`). Skipped with a message
//! when the world's endpoints are not up (`endpoints.env` of `VRG_WORLD` missing or sshd closed).

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
        .unwrap_or_else(|| manifest_dir().join("../.world"));
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
    /// The world's sshd; fails the test (never skips it) when the world is not up.
    fn connect() -> Ssh {
        let env = world_env()
            .expect("e2e/.world/endpoints.env is absent: start the e2e world (make e2e-up)");
        let addr = format!("{}:{}", env["VRG_SSH_HOST"], env["VRG_SSH_PORT"]);
        if let Err(e) = std::net::TcpStream::connect(&addr) {
            panic!("sshd of the e2e world does not answer on {addr}: {e} (make e2e-up)");
        }
        Ssh { env }
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

/// This build's binary of a tool, run by the remote shell (the wrappers pvesim-up.sh installs on
/// the sshd's PATH run the world's build, which may be older than this test); the remote's
/// `command -v` is printed for information.
fn remote_tool(ssh: &Ssh, name: &str, built: &str) -> String {
    let found = ssh.run(&format!("command -v {name}"));
    let found = String::from_utf8_lossy(&found.stdout).trim().to_string();
    println!("remote {name}: running {built} (on the sshd's PATH: {found:?})");
    built.to_string()
}

#[test]
fn pvesm_export_raw_size_over_real_sshd() {
    let ssh = Ssh::connect();
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path()).unwrap();
    fixture::create_all(&data, 32 << 20, true, false).unwrap();
    let env = format!("PVESIM_DATA_DIR={}", data.root().display());
    let pvesm = format!(
        "{env} {}",
        remote_tool(&ssh, "pvesm", env!("CARGO_BIN_EXE_pvesm"))
    );

    for spec in fixture::vms(32 << 20)
        .iter()
        .flat_map(|vm| vm.disks.clone())
    {
        let volid = spec.volid;
        if volid == "local-lvm:base-901-disk-0" {
            continue; // inactive: see the thin snapshot test
        }
        let out = ssh.run(&format!("{pvesm} export {volid} raw+size -"));
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
        "{pvesm} export local:100/vm-100-disk-0.qcow2 raw+size - --snapshot s1"
    ));
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "volume export format raw+size not available for PVE::Storage::DirPlugin\n"
    );
}

#[test]
fn thin_snapshot_read_over_real_sshd() {
    let ssh = Ssh::connect();
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path()).unwrap();
    fixture::create_all(&data, 32 << 20, false, false).unwrap();
    let node = pvesim::storage::NodeConfig::load(&data).unwrap();
    let lvm = node.storage(&data, "local-lvm").unwrap();
    let clone = lvm.parse_volid("local-lvm:vm-102-disk-0").unwrap();
    lvm.snapshot(&clone, "migrate", &|_| {}).unwrap();
    let env = format!("PVESIM_DATA_DIR={}", data.root().display());
    let lvchange = format!(
        "{env} {}",
        remote_tool(&ssh, "lvchange", env!("CARGO_BIN_EXE_lvchange"))
    );
    let lvs = format!(
        "{env} {}",
        remote_tool(&ssh, "lvs", env!("CARGO_BIN_EXE_lvs"))
    );

    let lv = "pve/snap_vm-102-disk-0_migrate";
    let out = ssh.run(&format!("{lvchange} -ay -K {lv}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ssh.run(&format!(
        "{lvs} --noheadings --nosuffix --units b -o lv_path,lv_size {lv}"
    ));
    let line = String::from_utf8(out.stdout).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let dev = data.root().join("dev/pve/snap_vm-102-disk-0_migrate");
    assert_eq!(fields, [dev.to_str().unwrap(), "8388608"]);
    let out = ssh.run(&format!("cat {}", fields[0]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec = fixture::vm(32 << 20, 102).unwrap().disks.remove(0);
    assert!(
        out.stdout == fixture::expected_bytes(&spec),
        "the snapshot's bytes"
    );
    let out = ssh.run(&format!("{lvchange} -an {lv} && cat {}", fields[0]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "no device path once deactivated"
    );
}

/// This package's directory, as `cargo test` gives it when the test runs: the cargo target dir is
/// shared between checkouts (CI's clones reuse this machine's builds), so a test binary built in
/// another checkout must not read that checkout's files through a path fixed at compile time.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
