//! Container processes: each runs in its own session and a private mount namespace in which the
//! pod's volumes are bind-mounted at their mount paths, so programs find
//! `/var/run/secrets/kubernetes.io/serviceaccount/token`, `/dev/termination-log` and their other
//! mounts exactly where Kubernetes puts them, with no change to the program.
//!
//! The namespace is set up between `fork` and `exec` with raw system calls only (no allocation),
//! as required in the child of a multi-threaded process. Mount points that do not exist yet are
//! created (empty directories or files), which is visible on the host like in a container's
//! image root.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::error::{Error, Result};

/// A bind mount inside the container's mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Host path (directory or file).
    pub source: PathBuf,
    /// Where the program sees it.
    pub target: PathBuf,
    /// Remount read-only.
    pub read_only: bool,
}

/// Everything needed to start a container process.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// Executable (a bare name is searched in `PATH`).
    pub program: PathBuf,
    /// `argv[0]`.
    pub arg0: String,
    /// `argv[1..]`.
    pub args: Vec<String>,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// Working directory (resolved after the mounts are in place).
    pub cwd: PathBuf,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
}

/// A mount prepared for the child: only C strings, nothing to allocate after `fork`.
struct PreparedMount {
    create_dirs: Vec<CString>,
    create_file: Option<CString>,
    source: CString,
    target: CString,
    read_only: bool,
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Unsupported(format!("path {p:?} contains NUL")))
}

/// Directories from the root down to `p` (excluding `/`).
fn ancestors_top_down(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = p
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty() && *a != Path::new("/"))
        .map(Path::to_path_buf)
        .collect();
    v.reverse();
    v
}

/// Orders mounts so parents come before the mounts nested in them.
pub fn sort_mounts(mounts: &mut [Mount]) {
    mounts.sort_by_key(|m| m.target.components().count());
}

fn prepare(mounts: &[Mount]) -> Result<Vec<PreparedMount>> {
    let mut sorted = mounts.to_vec();
    sort_mounts(&mut sorted);
    sorted
        .iter()
        .map(|m| {
            if !m.target.is_absolute() {
                return Err(Error::Unsupported(format!(
                    "mount path {:?} must be absolute",
                    m.target
                )));
            }
            let is_file = m.source.is_file();
            let dirs_of = if is_file {
                m.target.parent().unwrap_or(Path::new("/"))
            } else {
                &m.target
            };
            Ok(PreparedMount {
                create_dirs: ancestors_top_down(dirs_of)
                    .iter()
                    .map(|d| cstring(d))
                    .collect::<Result<_>>()?,
                create_file: if is_file {
                    Some(cstring(&m.target)?)
                } else {
                    None
                },
                source: cstring(&m.source)?,
                target: cstring(&m.target)?,
                read_only: m.read_only,
            })
        })
        .collect()
}

/// Runs in the child between fork and exec: new session, private mount namespace, bind mounts,
/// working directory. Only async-signal-safe system calls.
fn enter_container(mounts: &[PreparedMount], cwd: &CString) -> std::io::Result<()> {
    nix::unistd::setsid()?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
    nix::mount::mount(
        None::<&OsStr>,
        c"/",
        None::<&OsStr>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&OsStr>,
    )?;
    for m in mounts {
        for d in &m.create_dirs {
            match nix::unistd::mkdir(d.as_c_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(f) = &m.create_file {
            let fd: OwnedFd = nix::fcntl::open(
                f.as_c_str(),
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )?;
            drop(fd);
        }
        nix::mount::mount(
            Some(m.source.as_c_str()),
            m.target.as_c_str(),
            None::<&OsStr>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&OsStr>,
        )?;
    }
    // read-only last, so mount points of nested mounts could still be created
    for m in mounts.iter().filter(|m| m.read_only) {
        nix::mount::mount(
            None::<&OsStr>,
            m.target.as_c_str(),
            None::<&OsStr>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None::<&OsStr>,
        )?;
    }
    nix::unistd::chdir(cwd.as_c_str())?;
    Ok(())
}

/// Starts a container process with piped stdout/stderr. Its process group id is its pid.
pub fn spawn(spec: &ProcessSpec) -> Result<Child> {
    let mounts = prepare(&spec.mounts)?;
    let cwd = cstring(&spec.cwd)?;
    let mut cmd = Command::new(&spec.program);
    cmd.arg0(&spec.arg0)
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only makes system calls on memory prepared before fork.
    unsafe {
        cmd.pre_exec(move || enter_container(&mounts, &cwd));
    }
    cmd.spawn().map_err(|source| Error::Spawn {
        program: spec.program.display().to_string(),
        source,
    })
}

/// Runs a command inside the mount namespace of a running container (exec probes).
pub fn spawn_in(
    container_pid: u32,
    program: &str,
    args: &[String],
    env: &[(String, String)],
) -> Result<Child> {
    let ns_path = format!("/proc/{container_pid}/ns/mnt");
    let ns: OwnedFd = std::fs::File::open(&ns_path)
        .map_err(Error::io("open", &ns_path))?
        .into();
    let root = std::fs::File::open(format!("/proc/{container_pid}/cwd"))
        .map(OwnedFd::from)
        .map_err(Error::io("open", format!("/proc/{container_pid}/cwd")))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: setns and fchdir on descriptors opened before fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNS)?;
            nix::unistd::fchdir(root.as_fd())?;
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| Error::Spawn {
        program: program.to_string(),
        source,
    })
}

/// Sends `signal` to a process group; a group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: Signal) {
    match nix::sys::signal::killpg(Pid::from_raw(pgid as i32), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, %signal, error = %e, "killpg failed"),
    }
}

/// The start time of a process (field 22 of `/proc/<pid>/stat`), to tell a pid from a reused one.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name is in parentheses and may contain spaces
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

/// Records a started process in `<dir>/pid` as `<pid> <start time>`.
pub fn write_pid_file(dir: &Path, pid: u32) -> Result<()> {
    let path = dir.join("pid");
    let start = start_time(pid).unwrap_or(0);
    std::fs::write(&path, format!("{pid} {start}\n")).map_err(Error::io("write", &path))
}

/// Process groups recorded in the pid files under `<pods root>/*/containers/*/pid` that are
/// still alive (same pid and start time).
pub fn recorded_groups(pods_root: &Path) -> Vec<(PathBuf, u32)> {
    let mut alive = Vec::new();
    for pod in std::fs::read_dir(pods_root).into_iter().flatten().flatten() {
        for c in std::fs::read_dir(pod.path().join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let pid_file = c.path().join("pid");
            let Ok(text) = std::fs::read_to_string(&pid_file) else {
                continue;
            };
            let mut parts = text.split_whitespace();
            let (Some(Ok(pid)), Some(Ok(start))) = (
                parts.next().map(str::parse::<u32>),
                parts.next().map(str::parse::<u64>),
            ) else {
                continue;
            };
            if start_time(pid) == Some(start) {
                alive.push((pid_file, pid));
            }
        }
    }
    alive
}

/// Stops every recorded container process: SIGTERM, then SIGKILL to those alive after `grace`.
pub async fn stop_recorded(pods_root: &Path, grace: std::time::Duration) {
    let groups = recorded_groups(pods_root);
    for (_, pid) in &groups {
        signal_group(*pid, Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline && !recorded_groups(pods_root).is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for (_, pid) in recorded_groups(pods_root) {
        signal_group(pid, Signal::SIGKILL);
    }
}

/// Kills process groups left behind by an earlier run of the node (found through the pid files
/// under `<pods root>/*/containers/*/pid`); returns how many were still alive.
pub fn kill_leftovers(pods_root: &Path) -> usize {
    let groups = recorded_groups(pods_root);
    for (pid_file, pid) in &groups {
        signal_group(*pid, Signal::SIGKILL);
        let _ = std::fs::remove_file(pid_file);
    }
    groups.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_sort_parents_first_and_ancestors_run_top_down() {
        let m = |t: &str| Mount {
            source: "/s".into(),
            target: t.into(),
            read_only: false,
        };
        let mut v = vec![m("/a/b/c"), m("/a"), m("/x/y")];
        sort_mounts(&mut v);
        assert_eq!(v[0].target, PathBuf::from("/a"));
        assert_eq!(v[2].target, PathBuf::from("/a/b/c"));
        assert_eq!(
            ancestors_top_down(Path::new("/var/run/secrets")),
            vec![
                PathBuf::from("/var"),
                "/var/run".into(),
                "/var/run/secrets".into()
            ]
        );
    }

    #[test]
    fn start_time_of_self_is_known() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert!(start_time(u32::MAX - 1).is_none());
    }

    /// Needs root (mount namespaces): the tests run as root.
    #[tokio::test]
    async fn bind_mounts_are_private_to_the_process() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test needs root for mount namespaces"
        );
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::write(vol.join("token"), "secret-token").unwrap();
        let term = dir.path().join("termination-log");
        std::fs::write(&term, "").unwrap();
        let target = dir.path().join("seen/at/mount");
        let spec = ProcessSpec {
            program: "/bin/sh".into(),
            arg0: "sh".into(),
            args: vec![
                "-c".into(),
                format!(
                    "cat {t}/token && pwd && echo bye > /dev/termination-log && touch {t}/x 2>/dev/null || echo ro",
                    t = target.display()
                ),
            ],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: target.clone(),
            mounts: vec![
                Mount {
                    source: vol.clone(),
                    target: target.clone(),
                    read_only: true,
                },
                Mount {
                    source: term.clone(),
                    target: "/dev/termination-log".into(),
                    read_only: false,
                },
            ],
        };
        let out = spawn(&spec).unwrap().wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout, format!("secret-token{}\nro\n", target.display()));
        assert_eq!(std::fs::read_to_string(&term).unwrap(), "bye\n");
        // nothing leaked into the host's mount table
        assert!(!target.join("token").exists());
        assert!(!vol.join("x").exists());
    }
}
