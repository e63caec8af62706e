//! Worker tasks with UPIDs, after pve-common `PVE::UPID` and `fork_worker`.
//!
//! A long operation returns `UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:` at once and
//! runs in the background (a thread here, a forked process in PVE). Its output goes to a log file at
//! `tasks/<last hex digit of starttime>/<UPID>`, ending with `TASK OK` or `TASK ERROR: <message>`;
//! the status API reads that last line, exactly as PVE does, so finished tasks survive a restart.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::datadir::now;
use crate::error::{Error, Result};

/// A decoded UPID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upid {
    /// Node name.
    pub node: String,
    /// Worker pid.
    pub pid: u32,
    /// Worker process start (clock ticks since boot).
    pub pstart: u64,
    /// Unix start time.
    pub starttime: i64,
    /// Task type (`qmcreate`, `imgcopy`, ...).
    pub kind: String,
    /// Task object ID (a VMID, a file name, or empty).
    pub id: String,
    /// User (the token ID).
    pub user: String,
}

impl Upid {
    /// `PVE::UPID::encode`.
    pub fn encode(&self) -> String {
        format!(
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, self.pid, self.pstart, self.starttime, self.kind, self.id, self.user
        )
    }

    /// `PVE::UPID::decode`.
    pub fn decode(upid: &str) -> Option<Upid> {
        let rest = upid.strip_prefix("UPID:")?.strip_suffix(':')?;
        let parts: Vec<&str> = rest.split(':').collect();
        let [node, pid, pstart, starttime, kind, id, user] = parts.as_slice() else {
            return None;
        };
        fn hex(s: &str, min: usize, max: usize) -> Option<&str> {
            (s.len() >= min && s.len() <= max && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then_some(s)
        }
        let bad = |s: &str| s.contains(|c: char| c.is_whitespace() || c == '/');
        if crate::schema::formats::verify_node(node).is_err()
            || kind.is_empty()
            || user.is_empty()
            || bad(kind)
            || bad(id)
            || bad(user)
        {
            return None;
        }
        Some(Upid {
            node: node.to_string(),
            pid: u32::from_str_radix(hex(pid, 8, 8)?, 16).ok()?,
            pstart: u64::from_str_radix(hex(pstart, 8, 9)?, 16).ok()?,
            starttime: i64::from_str_radix(hex(starttime, 8, 8)?, 16).ok()?,
            kind: kind.to_string(),
            id: id.to_string(),
            user: user.to_string(),
        })
    }
}

/// The log of a running task.
pub struct TaskLog {
    file: Mutex<File>,
}

impl TaskLog {
    /// Appends one line.
    pub fn line(&self, text: &str) {
        if let Ok(mut f) = self.file.lock() {
            let _ = writeln!(f, "{}", text.trim_end_matches(['\n', '\r']));
        }
    }
}

/// The node's tasks.
pub struct Tasks {
    dir: PathBuf,
    node: String,
    running: Mutex<HashSet<String>>,
    seq: AtomicU32,
    pstart: u64,
}

impl Tasks {
    /// Tasks of `node`, logged below `dir`.
    pub fn new(dir: PathBuf, node: &str) -> Arc<Self> {
        Arc::new(Tasks {
            dir,
            node: node.to_string(),
            running: Mutex::new(HashSet::new()),
            seq: AtomicU32::new(0),
            pstart: own_pstart(),
        })
    }

    fn log_path(&self, upid: &Upid, encoded: &str) -> PathBuf {
        let hex = format!("{:08X}", upid.starttime);
        self.dir.join(&hex[7..8]).join(encoded)
    }

    /// `fork_worker`: starts `work` in the background and returns its UPID at once. The closure's
    /// error message becomes `TASK ERROR: <message>`.
    pub fn spawn<F>(self: &Arc<Self>, kind: &str, id: &str, user: &str, work: F) -> Result<String>
    where
        F: FnOnce(&TaskLog) -> Result<()> + Send + 'static,
    {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let upid = Upid {
            node: self.node.clone(),
            // a forked worker gets a fresh pid; an increasing one keeps every UPID unique
            pid: std::process::id().wrapping_add(1 + seq),
            pstart: self.pstart,
            starttime: now(),
            kind: kind.to_string(),
            id: id.to_string(),
            user: user.to_string(),
        };
        let encoded = upid.encode();
        let path = self.log_path(&upid, &encoded);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(Error::io(format!("create {}", parent.display())))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(format!("create task log {}", path.display())))?;
        self.running
            .lock()
            .expect("tasks lock")
            .insert(encoded.clone());
        let tasks = Arc::clone(self);
        let name = encoded.clone();
        std::thread::Builder::new()
            .name(format!("task-{kind}"))
            .spawn(move || {
                let log = TaskLog {
                    file: Mutex::new(file),
                };
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&log)));
                let end = match result {
                    Ok(Ok(())) => "TASK OK".to_string(),
                    Ok(Err(e)) => format!(
                        "TASK ERROR: {}",
                        e.to_string().trim_end().replace('\n', " ")
                    ),
                    Err(_) => "TASK ERROR: worker panicked".to_string(),
                };
                tracing::info!(upid = %name, "{end}");
                log.line(&end);
                tasks.running.lock().expect("tasks lock").remove(&name);
            })
            .map_err(Error::io("spawn task thread"))?;
        Ok(encoded)
    }

    fn decode_existing(&self, upid: &str) -> Result<(Upid, PathBuf)> {
        let decoded = Upid::decode(upid)
            .ok_or_else(|| Error::param("upid", "unable to parse worker upid"))?;
        let path = self.log_path(&decoded, upid);
        if !path.is_file() {
            return Err(Error::param("upid", "no such task"));
        }
        Ok((decoded, path))
    }

    fn is_running(&self, upid: &str) -> bool {
        self.running.lock().expect("tasks lock").contains(upid)
    }

    /// `read_task_status`: the UPID's fields, `status` and, once stopped, `exitstatus`.
    pub fn status(&self, upid: &str) -> Result<Value> {
        let (decoded, path) = self.decode_existing(upid)?;
        let mut status = task_json(&decoded, upid);
        if self.is_running(upid) {
            status["status"] = json!("running");
        } else {
            status["status"] = json!("stopped");
            status["exitstatus"] = json!(read_exit_status(&path));
        }
        Ok(status)
    }

    /// `read_task_log`: lines `start..start+limit` as `{n, t}` (1-based), and the total line count.
    pub fn log(&self, upid: &str, start: usize, limit: usize) -> Result<(Vec<Value>, usize)> {
        let (_, path) = self.decode_existing(upid)?;
        let lines = read_lines(&path);
        let total = lines.len();
        let page = lines
            .into_iter()
            .enumerate()
            .skip(start)
            .take(limit)
            .map(|(i, t)| json!({ "n": i + 1, "t": t }))
            .collect();
        Ok((page, total))
    }

    /// Whether the task exists and belongs to `user` (PVE lets owners read their tasks).
    pub fn owner(&self, upid: &str) -> Option<String> {
        Upid::decode(upid).map(|u| u.user)
    }

    /// Node task list (newest first), as `GET /nodes/{node}/tasks`.
    pub fn list(&self) -> Vec<Value> {
        let mut tasks = Vec::new();
        let Ok(subdirs) = std::fs::read_dir(&self.dir) else {
            return tasks;
        };
        for sub in subdirs.filter_map(|e| e.ok()) {
            let Ok(files) = std::fs::read_dir(sub.path()) else {
                continue;
            };
            for file in files.filter_map(|e| e.ok()) {
                let name = file.file_name().to_string_lossy().to_string();
                let Some(upid) = Upid::decode(&name) else {
                    continue;
                };
                let mut entry = task_json(&upid, &name);
                if self.is_running(&name) {
                    entry["status"] = json!("running");
                } else {
                    entry["status"] = json!(read_exit_status(&file.path()));
                    if let Ok(meta) = file.metadata()
                        && let Ok(modified) = meta.modified()
                        && let Ok(d) = modified.duration_since(std::time::UNIX_EPOCH)
                    {
                        entry["endtime"] = json!(d.as_secs());
                    }
                }
                tasks.push(entry);
            }
        }
        tasks.sort_by(|a, b| b["starttime"].as_i64().cmp(&a["starttime"].as_i64()));
        tasks
    }
}

fn task_json(upid: &Upid, encoded: &str) -> Value {
    let mut v = json!({
        "upid": encoded,
        "node": upid.node,
        "pid": upid.pid,
        "pstart": upid.pstart,
        "starttime": upid.starttime,
        "type": upid.kind,
        "id": upid.id,
        "user": upid.user,
    });
    // PVE splits a token user into user + tokenid in task listings
    if let Some((user, token)) = crate::auth::split_tokenid(&upid.user) {
        v["user"] = json!(user);
        v["tokenid"] = json!(token);
    }
    v
}

fn read_lines(path: &PathBuf) -> Vec<String> {
    match File::open(path) {
        Ok(f) => std::io::BufReader::new(f)
            .lines()
            .map_while(|l| l.ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// `PVE::UPID::read_status`.
fn read_exit_status(path: &PathBuf) -> String {
    let lines = read_lines(path);
    let Some(last) = lines.last() else {
        return "unable to get last line from task log".to_string();
    };
    if last == "TASK OK" {
        "OK".to_string()
    } else if let Some(message) = last.strip_prefix("TASK ERROR: ") {
        message.to_string()
    } else if let Some(warnings) = last
        .strip_prefix("TASK ")
        .filter(|w| w.starts_with("WARNINGS: "))
    {
        warnings.to_string()
    } else {
        "unexpected status".to_string()
    }
}

/// This process's start time in clock ticks since boot (field 22 of /proc/self/stat).
fn own_pstart() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            after.split_whitespace().nth(19)?.parse().ok()
        })
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upid_round_trip() {
        let u = Upid {
            node: "pve1".into(),
            pid: 0x1234,
            pstart: 0xABCDEF,
            starttime: 0x6543_2100,
            kind: "qmcreate".into(),
            id: "100".into(),
            user: "root@pam!virtrigaud".into(),
        };
        let s = u.encode();
        assert_eq!(
            s,
            "UPID:pve1:00001234:00ABCDEF:65432100:qmcreate:100:root@pam!virtrigaud:"
        );
        assert_eq!(Upid::decode(&s), Some(u));
        assert_eq!(Upid::decode("UPID:pve1:1:2:3:x::u:"), None);
    }

    #[test]
    fn task_runs_and_reports() {
        let tmp = tempfile::tempdir().unwrap();
        let tasks = Tasks::new(tmp.path().to_path_buf(), "pve1");
        let ok = tasks
            .spawn("test", "", "root@pam!t", |log| {
                log.line("hello");
                Ok(())
            })
            .unwrap();
        let bad = tasks
            .spawn("test", "1", "root@pam!t", |_| {
                Err(Error::failed("it broke\nbadly"))
            })
            .unwrap();
        for _ in 0..100 {
            if !tasks.is_running(&ok) && !tasks.is_running(&bad) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(tasks.status(&ok).unwrap()["exitstatus"], "OK");
        assert_eq!(tasks.status(&bad).unwrap()["exitstatus"], "it broke badly");
        let (lines, total) = tasks.log(&ok, 0, 50).unwrap();
        assert_eq!(total, 2);
        assert_eq!(lines[0]["t"], "hello");
        assert_eq!(lines[1]["t"], "TASK OK");
        assert!(matches!(
            tasks.status("UPID:pve1:nope"),
            Err(Error::Param(_))
        ));
    }
}
