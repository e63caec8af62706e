//! Container logs in the CRI format (`<RFC 3339 time> <stream> <F|P> <text>`), one file per
//! container run: `<pod dir>/logs/<container>/<restart count>.log`.
//!
//! The writer copies a process's stdout and stderr into the file line by line; the reader answers
//! the kubelet log API's options (`tailLines`, `sinceSeconds`/`sinceTime`, `timestamps`,
//! `limitBytes`, `previous`, `follow`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Log files still being written (a follow stops once its file leaves this set and is drained).
#[derive(Clone, Default, Debug)]
pub struct LiveLogs(Arc<Mutex<HashSet<PathBuf>>>);

impl LiveLogs {
    fn insert(&self, path: &Path) {
        self.0
            .lock()
            .expect("live logs lock")
            .insert(path.to_path_buf());
    }

    fn remove(&self, path: &Path) {
        self.0.lock().expect("live logs lock").remove(path);
    }

    /// Whether a process still writes to `path`.
    pub fn is_live(&self, path: &Path) -> bool {
        self.0.lock().expect("live logs lock").contains(path)
    }
}

/// The log file of run `restart` of a container.
pub fn log_path(pod_dir: &Path, container: &str, restart: i32) -> PathBuf {
    pod_dir
        .join("logs")
        .join(container)
        .join(format!("{restart}.log"))
}

/// The log files of a container, oldest run first.
pub fn runs(pod_dir: &Path, container: &str) -> Vec<PathBuf> {
    let dir = pod_dir.join("logs").join(container);
    let mut runs: Vec<(i64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let n = p.file_stem()?.to_str()?.parse::<i64>().ok()?;
            (p.extension()? == "log").then_some((n, p))
        })
        .collect();
    runs.sort();
    runs.into_iter().map(|(_, p)| p).collect()
}

/// Copies `stdout` and `stderr` into the CRI log file at `path` until both close.
pub async fn copy_output(
    path: PathBuf,
    live: LiveLogs,
    stdout: impl AsyncRead + Unpin + Send + 'static,
    stderr: impl AsyncRead + Unpin + Send + 'static,
) -> Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(Error::io("create", parent))?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
        .map_err(Error::io("open", &path))?;
    live.insert(&path);
    let (tx, mut rx) = mpsc::channel::<(&'static str, Vec<u8>)>(64);
    let readers = [
        tokio::spawn(read_lines("stdout", stdout, tx.clone())),
        tokio::spawn(read_lines("stderr", stderr, tx)),
    ];
    let mut result = Ok(());
    while let Some((stream, line)) = rx.recv().await {
        let mut record = format!("{} {stream} F ", Timestamp::now()).into_bytes();
        record.extend_from_slice(&line);
        record.push(b'\n');
        if let Err(e) = file.write_all(&record).await {
            result = Err(Error::io("write", &path)(e));
            break;
        }
    }
    for r in readers {
        r.abort();
    }
    let _ = file.flush().await;
    live.remove(&path);
    result
}

async fn read_lines(
    stream: &'static str,
    reader: impl AsyncRead + Unpin,
    tx: mpsc::Sender<(&'static str, Vec<u8>)>,
) {
    let mut reader = BufReader::new(reader);
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if tx.send((stream, line)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One parsed CRI log record.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The time it was written, as written.
    pub time: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// Whether the line is complete (`F`) or a part (`P`).
    pub full: bool,
    /// The text.
    pub text: &'a [u8],
}

/// Parses one line of a CRI log file (without its newline).
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default();
    Some(Record {
        time,
        stream,
        full: tag != b"P",
        text,
    })
}

/// What a log request asks for.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// Keep streaming until the container stops.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Prefix each line with its time.
    pub timestamps: bool,
    /// Only lines written at or after this time.
    pub since: Option<Timestamp>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

/// Renders the records of a log file's content selected by `opts` (everything but `follow`).
pub fn render(content: &[u8], opts: &LogOptions) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = content
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter(|l| match (opts.since, parse_record(l)) {
            (Some(since), Some(r)) => r
                .time
                .parse::<Timestamp>()
                .map(|t| t >= since)
                .unwrap_or(true),
            _ => true,
        })
        .collect();
    if let Some(n) = opts.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out = Vec::new();
    for line in lines {
        render_record(line, opts.timestamps, &mut out);
    }
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit);
    }
    out
}

fn render_record(line: &[u8], timestamps: bool, out: &mut Vec<u8>) {
    match parse_record(line) {
        Some(r) => {
            if timestamps {
                out.extend_from_slice(r.time.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(r.text);
            if r.full {
                out.push(b'\n');
            }
        }
        None => {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
}

/// The log of one container run as a byte stream: the selected content, then (with `follow`)
/// whatever is appended until the process has exited and the file is drained.
pub async fn stream(
    path: PathBuf,
    opts: LogOptions,
    live: LiveLogs,
) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
    let content = tokio::fs::read(&path)
        .await
        .map_err(Error::io("read", &path))?;
    // only whole lines are rendered now; a partial last line is left for the follow loop
    let complete = content
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let first = render(&content[..complete], &opts);
    let state = FollowState {
        path,
        offset: complete as u64,
        pending: Vec::new(),
        sent: first.len(),
        first: Some(first),
        opts,
        live,
        done: false,
    };
    Ok(futures::stream::unfold(state, |mut s| async move {
        let chunk = s.next_chunk().await;
        chunk.map(|c| (c, s))
    }))
}

struct FollowState {
    path: PathBuf,
    offset: u64,
    pending: Vec<u8>,
    sent: usize,
    first: Option<Vec<u8>>,
    opts: LogOptions,
    live: LiveLogs,
    done: bool,
}

impl FollowState {
    async fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        if let Some(first) = self.first.take()
            && !first.is_empty()
        {
            return Some(Ok(Bytes::from(first)));
        }
        if self.done || !self.opts.follow || self.over_limit() {
            return None;
        }
        loop {
            // checked before reading, so lines written just before the process exits are not lost
            let live = self.live.is_live(&self.path);
            let mut file = match tokio::fs::File::open(&self.path).await {
                Ok(f) => f,
                Err(e) => return Some(Err(e)),
            };
            if let Err(e) = file.seek(std::io::SeekFrom::Start(self.offset)).await {
                return Some(Err(e));
            }
            let mut fresh = Vec::new();
            if let Err(e) = file.read_to_end(&mut fresh).await {
                return Some(Err(e));
            }
            self.offset += fresh.len() as u64;
            self.pending.extend_from_slice(&fresh);
            if let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') {
                let lines: Vec<u8> = self.pending.drain(..=end).collect();
                let mut out = Vec::new();
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    render_record(line, self.opts.timestamps, &mut out);
                }
                if let Some(limit) = self.opts.limit_bytes {
                    out.truncate(limit.saturating_sub(self.sent));
                }
                self.sent += out.len();
                if !out.is_empty() {
                    return Some(Ok(Bytes::from(out)));
                }
            }
            if !live {
                self.done = true;
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn over_limit(&self) -> bool {
        self.opts.limit_bytes.is_some_and(|l| self.sent >= l)
    }
}

/// The tail of a log for a termination message: at most `max_lines` lines and `max_bytes` bytes.
pub fn tail_for_message(path: &Path, max_lines: usize, max_bytes: usize) -> String {
    let content = std::fs::read(path).unwrap_or_default();
    let out = render(
        &content,
        &LogOptions {
            tail_lines: Some(max_lines),
            ..Default::default()
        },
    );
    let start = out.len().saturating_sub(max_bytes);
    String::from_utf8_lossy(&out[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    const SAMPLE: &[u8] = b"2026-01-01T00:00:01Z stdout F one\n\
2026-01-01T00:00:02Z stderr F two\n\
2026-01-01T00:00:03Z stdout P thr\n\
2026-01-01T00:00:03.5Z stdout F ee\n";

    #[test]
    fn parses_records() {
        let r = parse_record(b"2026-01-01T00:00:01Z stdout F hello world").unwrap();
        assert_eq!(r.time, "2026-01-01T00:00:01Z");
        assert_eq!(r.stream, "stdout");
        assert!(r.full);
        assert_eq!(r.text, b"hello world");
        assert_eq!(parse_record(b"t stdout F").unwrap().text, b"");
    }

    #[test]
    fn render_applies_tail_since_timestamps_and_limit() {
        assert_eq!(render(SAMPLE, &LogOptions::default()), b"one\ntwo\nthree\n");
        let tail = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(render(SAMPLE, &tail), b"three\n");
        let since = LogOptions {
            since: Some("2026-01-01T00:00:02Z".parse().unwrap()),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            render(SAMPLE, &since),
            b"2026-01-01T00:00:02Z two\n2026-01-01T00:00:03Z thr2026-01-01T00:00:03.5Z ee\n"
        );
        let limit = LogOptions {
            limit_bytes: Some(5),
            ..Default::default()
        };
        assert_eq!(render(SAMPLE, &limit), b"one\nt");
    }

    #[tokio::test]
    async fn writer_and_follow_reader_see_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(dir.path(), "c", 0);
        let live = LiveLogs::default();
        let (mut out_w, out_r) = tokio::io::duplex(64);
        let (err_w, err_r) = tokio::io::duplex(64);
        out_w.write_all(b"first\n").await.unwrap();
        let writer = tokio::spawn(copy_output(path.clone(), live.clone(), out_r, err_r));
        // wait for the first line to land, then follow while more is written
        for _ in 0..50 {
            if std::fs::read(&path).map(|c| !c.is_empty()).unwrap_or(false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let opts = LogOptions {
            follow: true,
            ..Default::default()
        };
        let follow = tokio::spawn(async move {
            let s = stream(path, opts, live).await.unwrap();
            let chunks: Vec<Bytes> = s.map(|c| c.unwrap()).collect().await;
            chunks.concat()
        });
        out_w.write_all(b"second\nno newline").await.unwrap();
        drop(out_w);
        drop(err_w);
        writer.await.unwrap().unwrap();
        let all = tokio::time::timeout(Duration::from_secs(5), follow)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(all, b"first\nsecond\nno newline\n");
        assert_eq!(runs(dir.path(), "c").len(), 1);
    }
}
