//! Remote commands on a Proxmox VE node with the system OpenSSH client: PVE has no API that reads
//! a disk, so exports run `pvesm export` (and `lvs`/`lvchange`/`cat` for LVM-thin snapshots) over
//! SSH.
//!
//! The key and `known_hosts` from the credential Secret are written to private 0600 files for the
//! life of the [`Ssh`]; the host key is always verified (`StrictHostKeyChecking=yes` against that
//! file only, no agent, no user or system configuration, no password prompts). Arguments are
//! shell-quoted for the remote shell. Stdout is streamed to the caller ([`RemoteStream`]), never
//! buffered whole; stderr is kept for the error message.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, ChildStdout, Command};

use crate::endpoint::Pinned;
use crate::{Error, Result};

/// Seconds to wait for the TCP connection and the SSH handshake.
const CONNECT_TIMEOUT: u64 = 15;
/// Bytes of stderr kept for an error message.
const MAX_STDERR: usize = 16 * 1024;

/// Where the SSH login goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshLogin {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
}

impl SshLogin {
    /// `user@host:port`, for messages.
    pub fn describe(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

/// An SSH login with its private files.
pub struct Ssh {
    login: SshLogin,
    /// Holds the key and known_hosts files; removed on drop.
    _dir: tempfile::TempDir,
    key: PathBuf,
    known_hosts: PathBuf,
    /// The judged address ssh connects to, when the login names a host; its key is still looked
    /// up under the name (`HostKeyAlias`).
    address: Option<IpAddr>,
    system: String,
}

impl std::fmt::Debug for Ssh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.system)
    }
}

impl Ssh {
    /// Writes `private_key` and `known_hosts` to private files. The host and user are checked so
    /// that they cannot be read as ssh options.
    pub fn new(login: SshLogin, private_key: &str, known_hosts: &str) -> Result<Ssh> {
        for (what, value) in [("host", &login.host), ("user", &login.user)] {
            if value.is_empty()
                || value.starts_with('-')
                || value.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(Error::Invalid(format!(
                    "Proxmox VE ssh {what} {value:?} is not a valid {what}"
                )));
            }
        }
        if known_hosts.trim().is_empty() {
            return Err(missing_known_hosts(&login));
        }
        let dir = tempfile::Builder::new()
            .prefix("vrg-pve-ssh-")
            .tempdir()
            .map_err(|e| Error::io("creating a private directory for the SSH key", e))?;
        let key = write_private(dir.path(), "id", &format!("{}\n", private_key.trim_end()))?;
        let known_hosts = write_private(
            dir.path(),
            "known_hosts",
            &format!("{}\n", known_hosts.trim_end()),
        )?;
        let system = format!("SSH {}", login.describe());
        Ok(Ssh {
            login,
            _dir: dir,
            key,
            known_hosts,
            address: None,
            system,
        })
    }

    /// Connects to the address judged for the login's host ([`Pinned`]) instead of resolving the
    /// name again; the host key is still verified under the name.
    pub fn pinned(mut self, pinned: &Pinned) -> Ssh {
        self.address = pinned.name().map(|_| pinned.address());
        self
    }

    /// Where ssh connects, and the `HostKeyAlias` that keeps the known_hosts lookup on the name
    /// (spelled as ssh spells it: `[host]:port` off port 22).
    fn destination(&self) -> (String, Option<String>) {
        let Some(address) = self.address else {
            return (self.login.host.clone(), None);
        };
        let alias = match self.login.port {
            22 => self.login.host.clone(),
            port => format!("[{}]:{port}", self.login.host),
        };
        (address.to_string(), Some(alias))
    }

    /// `SSH user@host:port`: how errors name this login.
    pub fn system(&self) -> &str {
        &self.system
    }

    /// The login.
    pub fn login(&self) -> &SshLogin {
        &self.login
    }

    /// The ssh command running `argv` remotely (quoted into one command line).
    fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg("/dev/null").arg("-i").arg(&self.key);
        let mut known = std::ffi::OsString::from("UserKnownHostsFile=");
        known.push(&self.known_hosts);
        cmd.arg("-o").arg(known);
        for option in [
            "GlobalKnownHostsFile=/dev/null",
            "StrictHostKeyChecking=yes",
            "UpdateHostKeys=no",
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "IdentityAgent=none",
            "PasswordAuthentication=no",
            "KbdInteractiveAuthentication=no",
            "ServerAliveInterval=15",
            "ServerAliveCountMax=4",
            "LogLevel=ERROR",
            "Compression=no",
            // AES-GCM first: with AES-NI it outruns the default chacha20 on bulk data
            "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com",
        ] {
            cmd.arg("-o").arg(option);
        }
        let (destination, alias) = self.destination();
        if let Some(alias) = alias {
            cmd.arg("-o").arg(format!("HostKeyAlias={alias}"));
        }
        cmd.arg("-o")
            .arg(format!("ConnectTimeout={CONNECT_TIMEOUT}"))
            .arg("-p")
            .arg(self.login.port.to_string())
            .arg("-l")
            .arg(&self.login.user)
            .arg("--")
            .arg(destination)
            .arg(command_line(argv));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `argv` remotely and returns its stdout (for short outputs: `lvs`, `lvchange`).
    pub async fn run(&self, argv: &[&str]) -> Result<String> {
        let mut stream = self.stream(argv).await?;
        let mut out = Vec::new();
        let read = stream.stdout.read_to_end(&mut out).await;
        stream.finish().await?;
        read.map_err(|e| {
            Error::transient(
                &self.system,
                format!("reading the output of {}: {e}", argv.join(" ")),
            )
        })?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Starts `argv` remotely; the caller reads its stdout and then calls
    /// [`RemoteStream::finish`].
    pub async fn stream(&self, argv: &[&str]) -> Result<RemoteStream> {
        let mut child = self.command(argv).spawn().map_err(|e| Error::Tool {
            tool: "ssh".into(),
            detail: format!("cannot run the OpenSSH client: {e}"),
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let errors = tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if kept.len() < MAX_STDERR {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            kept
        });
        Ok(RemoteStream {
            child,
            stdout,
            errors,
            system: self.system.clone(),
            command: argv.join(" "),
        })
    }
}

/// A running remote command: read [`RemoteStream::stdout`], then [`RemoteStream::finish`]. Dropped
/// early, the ssh process is killed.
pub struct RemoteStream {
    child: Child,
    /// The remote command's output.
    pub stdout: ChildStdout,
    errors: tokio::task::JoinHandle<Vec<u8>>,
    system: String,
    command: String,
}

impl RemoteStream {
    /// Waits for the command (its unread output is dropped first, so a command cut short ends);
    /// a non-zero exit is an error classified by [`ssh_error`].
    pub async fn finish(self) -> Result<()> {
        let RemoteStream {
            mut child,
            stdout,
            errors,
            system,
            command,
        } = self;
        drop(stdout);
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .map_err(|_| {
                Error::transient(&system, format!("{command} did not end after its output"))
            })?
            .map_err(|e| Error::Tool {
                tool: "ssh".into(),
                detail: format!("waiting for {command}: {e}"),
            })?;
        let stderr = errors.await.unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        Err(ssh_error(
            &system,
            &command,
            status.code(),
            &String::from_utf8_lossy(&stderr),
        ))
    }
}

/// The error of a failed remote command. OpenSSH exits 255 for its own failures, and so does
/// `pvesm`; they are told apart by ssh's messages:
/// - a host key that is unknown or changed, a refused key: [`Error::Auth`];
/// - connection failures (refused, timed out, reset, closed during the handshake, DNS):
///   [`Error::Transient`];
/// - anything else is the remote command's own failure, with its last stderr lines: a lock or
///   timeout is transient, the rest terminal ([`Error::Tool`]).
pub fn ssh_error(system: &str, command: &str, code: Option<i32>, stderr: &str) -> Error {
    let last = last_lines(stderr, 4);
    let has = |list: &[&str]| list.iter().any(|p| stderr.contains(p));
    const HOST_KEY: [&str; 4] = [
        "Host key verification failed",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "No matching host key",
        "host key for",
    ];
    const CONNECTION: [&str; 10] = [
        "Connection refused",
        "Connection timed out",
        "Connection reset",
        "Connection closed by",
        "Operation timed out",
        "kex_exchange_identification",
        "Could not resolve hostname",
        "Network is unreachable",
        "No route to host",
        "Broken pipe",
    ];
    if has(&HOST_KEY) {
        return Error::Auth {
            system: system.to_string(),
            detail: format!(
                "the host key is not the one in the Secret's known_hosts ({last}); \
                 host keys are always verified"
            ),
        };
    }
    if stderr.contains("Permission denied (") {
        return Error::Auth {
            system: system.to_string(),
            detail: format!("the key in the Secret's ssh-privatekey was refused ({last})"),
        };
    }
    if code == Some(255) && has(&CONNECTION) {
        return Error::transient(system, format!("{command}: {last}"));
    }
    let status = code.map_or("a signal".to_string(), |c| format!("exit code {c}"));
    if stderr.contains("got timeout") || stderr.contains("can't lock") {
        return Error::transient(system, format!("{command} ended with {status}: {last}"));
    }
    Error::Tool {
        tool: format!("{command} ({system})"),
        detail: if last.is_empty() {
            format!("ended with {status}")
        } else {
            format!("ended with {status}: {last}")
        },
    }
}

/// The error when no `known_hosts` is given: host keys are never skipped.
pub fn missing_known_hosts(login: &SshLogin) -> Error {
    Error::Plan(format!(
        "the Proxmox VE credentials have no known_hosts for the SSH login {}: its host key is \
         always verified; add the node's key (ssh-keyscan -p {} {}) to the Secret's known_hosts",
        login.describe(),
        login.port,
        login.host
    ))
}

/// The last `n` non-empty lines of `text`, `; `-joined.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("; ")
}

/// One command line for the remote shell: each argument quoted where it needs it.
pub fn command_line(argv: &[&str]) -> String {
    argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// `arg` as one word of a POSIX shell: plain when it holds only safe characters, else in single
/// quotes (a `'` inside becomes `'\''`).
pub fn quote(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Writes `content` to `dir/name` with mode 0600 and returns the path.
fn write_private(dir: &Path, name: &str, content: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    f.write_all(content.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn login() -> SshLogin {
        SshLogin {
            host: "pve.example.com".into(),
            port: 2222,
            user: "root".into(),
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(
            quote("local:100/vm-100-disk-0.qcow2"),
            "local:100/vm-100-disk-0.qcow2"
        );
        assert_eq!(quote("raw+size"), "raw+size");
        assert_eq!(quote("-"), "-");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("x'; rm -rf /"), r"'x'\''; rm -rf /'");
        assert_eq!(quote("$(id)"), "'$(id)'");
        assert_eq!(
            command_line(&["pvesm", "export", "local:1/a b.raw", "raw+size", "-"]),
            "pvesm export 'local:1/a b.raw' raw+size -"
        );
    }

    #[tokio::test]
    async fn a_pinned_login_connects_to_the_address_and_checks_the_names_key() {
        let login = SshLogin {
            host: "localhost".into(),
            port: 2222,
            user: "root".into(),
        };
        let host = endpoint_policy::parse_host("localhost", 2222).unwrap();
        let pinned = crate::endpoint::Guard::new(true)
            .pin(&host, "SSH localhost:2222")
            .await
            .unwrap();
        let ssh = Ssh::new(login, "KEY", "[localhost]:2222 ssh-ed25519 AAAA")
            .unwrap()
            .pinned(&pinned);
        let args: Vec<String> = ssh
            .command(&["true"])
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("HostKeyAlias=[localhost]:2222"), "{joined}");
        assert!(
            joined.contains(&format!("-- {} true", pinned.address())),
            "{joined}"
        );
    }

    #[test]
    fn private_files_and_the_command() {
        let ssh = Ssh::new(login(), "KEY", "[pve.example.com]:2222 ssh-ed25519 AAAA").unwrap();
        for f in [&ssh.key, &ssh.known_hosts] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", f.display());
        }
        assert_eq!(std::fs::read_to_string(&ssh.key).unwrap(), "KEY\n");
        let cmd = ssh.command(&["pvesm", "export", "a b"]);
        let args: Vec<String> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for want in [
            "StrictHostKeyChecking=yes",
            "GlobalKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "-p 2222 -l root -- pve.example.com",
        ] {
            assert!(joined.contains(want), "{want}: {joined}");
        }
        assert_eq!(args.last().unwrap(), "pvesm export 'a b'");
        assert!(
            !joined.contains("KEY"),
            "the key itself is never an argument"
        );
    }

    #[test]
    fn refuses_option_like_hosts_and_missing_known_hosts() {
        let mut l = login();
        l.host = "-oProxyCommand=x".into();
        assert!(Ssh::new(l, "k", "h").is_err());
        let e = Ssh::new(login(), "k", " \n").unwrap_err();
        assert_eq!(e.reason(), "InvalidPlan");
        assert!(e.to_string().contains("known_hosts"), "{e}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn errors_are_classified() {
        let sys = "SSH root@pve:22";
        let e = ssh_error(sys, "true", Some(255), "Host key verification failed.\n");
        assert_eq!(e.reason(), "AuthenticationFailed", "{e}");
        assert!(e.to_string().contains("known_hosts"));
        let e = ssh_error(
            sys,
            "true",
            Some(255),
            "root@pve: Permission denied (publickey).\n",
        );
        assert_eq!(e.reason(), "AuthenticationFailed", "{e}");
        let e = ssh_error(
            sys,
            "true",
            Some(255),
            "ssh: connect to host pve port 22: Connection refused\n",
        );
        assert!(e.is_retryable(), "{e}");
        let e = ssh_error(
            sys,
            "pvesm export local:1/x.qcow2 qcow2+size -",
            Some(255),
            "volume export format qcow2+size not available for PVE::Storage::DirPlugin\n",
        );
        assert_eq!(e.reason(), "ToolFailed", "{e}");
        assert!(!e.is_retryable());
        assert!(
            e.to_string()
                .contains("not available for PVE::Storage::DirPlugin"),
            "{e}"
        );
        let e = ssh_error(
            sys,
            "lvchange",
            Some(5),
            "  Failed to find logical volume \"pve/x\"\n",
        );
        assert!(e.to_string().contains("exit code 5"), "{e}");
    }
}
