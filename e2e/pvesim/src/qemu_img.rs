//! `qemu-img`, run the way PVE runs it: `info --output=json` for sizes and untrusted-image checks,
//! `create` for new volumes, `convert -p -n` for imports (progress lines become task log lines) and
//! `snapshot -c/-d` for qcow2 internal snapshots.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The parts of `qemu-img info --output=json` that PVE looks at.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageInfo {
    /// Guest-visible size in bytes.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    /// Image format.
    pub format: String,
    /// Bytes allocated on the host.
    #[serde(rename = "actual-size", default)]
    pub actual_size: u64,
    /// Backing file, if any.
    #[serde(rename = "backing-filename")]
    pub backing_filename: Option<String>,
    /// Format-specific data (qcow2 `data-file`, vmdk extents).
    #[serde(rename = "format-specific")]
    pub format_specific: Option<serde_json::Value>,
    /// Child nodes (vmdk extents).
    #[serde(default)]
    pub children: Vec<serde_json::Value>,
    /// Internal snapshots (qcow2).
    #[serde(default)]
    pub snapshots: Vec<SnapshotInfo>,
}

/// One internal snapshot.
#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotInfo {
    /// Snapshot name.
    pub name: String,
}

/// A line sink: task logs, stderr.
pub type Log<'a> = &'a dyn Fn(&str);

/// `qemu-img` as a command line, for messages.
fn command_line(args: &[&str]) -> String {
    format!("/usr/bin/qemu-img {}", args.join(" "))
}

/// Runs qemu-img, sending stdout/stderr lines to `log`; fails like PVE's `run_command`.
fn run(args: &[&str], log: Log) -> Result<String> {
    let output = Command::new("qemu-img")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io(format!("run {}", command_line(args))))?;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        log(line);
    }
    if output.status.success() {
        Ok(stdout)
    } else {
        let code = output
            .status
            .code()
            .map(|c| format!("exit code {c}"))
            .unwrap_or_else(|| "killed by signal".into());
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = stderr.lines().last().unwrap_or_default();
        Err(Error::failed(format!(
            "command '{}' failed: {code}: {detail}",
            command_line(args)
        )))
    }
}

/// `qemu-img info --output=json [-f format] path`.
pub fn info(path: &Path, format: Option<&str>) -> Result<ImageInfo> {
    let path_s = path.to_string_lossy();
    let mut args = vec!["info", "--output=json"];
    if let Some(f) = format {
        args.extend(["-f", f]);
    }
    args.push(&path_s);
    let output = Command::new("qemu-img")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io(format!("run {}", command_line(&args))))?;
    if !output.status.success() {
        return Err(Error::failed(format!(
            "qemu-img info of '{}' failed: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| {
        Error::failed(format!(
            "could not parse qemu-img info command output for '{}' - {e}",
            path.display()
        ))
    })
}

/// `file_size_info($file, undef, $format, $untrusted)`: the checks PVE makes on an image it did not
/// create itself (uploads, imports): no backing file, no external data file, one vmdk extent, and the
/// format must be the one the name claims.
pub fn checked_info(path: &Path, format: &str, untrusted: bool) -> Result<ImageInfo> {
    let name = path.display();
    if std::fs::metadata(path).is_err() {
        return Err(Error::failed(format!("failed to stat '{name}'")));
    }
    let info = info(path, Some(format)).map_err(|e| {
        if untrusted {
            Error::failed("failed to query file information with qemu-img")
        } else {
            e
        }
    })?;
    if untrusted {
        if let Some(fs) = &info.format_specific {
            let kind = fs.get("type").and_then(|t| t.as_str()).unwrap_or_default();
            if kind == "qcow2" && fs.pointer("/data/data-file").is_some() {
                return Err(Error::failed(format!(
                    "{name}: 'data-file' references are not allowed!"
                )));
            }
            if kind == "vmdk" {
                let extents = fs
                    .pointer("/data/extents")
                    .and_then(|e| e.as_array())
                    .map_or(0, Vec::len);
                if info.children.len() > 1 || extents > 1 {
                    return Err(Error::failed(format!(
                        "{name}: multiple children or extents are not allowed!"
                    )));
                }
            }
        }
        if info.backing_filename.is_some() {
            return Err(Error::failed(format!(
                "backing file not allowed for untrusted image '{name}'!"
            )));
        }
    }
    if info.format != format {
        return Err(Error::failed(format!(
            "qemu-img bug: queried format does not match format in result '{format} ne {}'",
            info.format
        )));
    }
    Ok(info)
}

/// `qemu-img create -o preallocation=<p> -f <format> <path> <size>` (PVE's `alloc_image` for file
/// storages: metadata preallocation for qcow2, none for raw).
pub fn create(path: &Path, format: &str, size: u64, log: Log) -> Result<()> {
    let path_s = path.to_string_lossy();
    let size_s = size.to_string();
    let mut args = vec!["create"];
    let prealloc;
    match format {
        "qcow2" => {
            prealloc = "preallocation=metadata".to_string();
            args.extend(["-o", &prealloc]);
        }
        "raw" => args.extend(["-o", "preallocation=off"]),
        _ => {}
    }
    args.extend(["-f", format, &path_s, &size_s]);
    let out = run(&args, log)?;
    out.lines().for_each(log);
    Ok(())
}

/// `qemu-img convert -p -n -f <src-format> -O <dst-format> <src> <dst>` into an allocated volume,
/// reporting progress as PVE's `QemuImage::convert` does (`transferred X of Y (P%)`).
pub fn convert(
    src: &Path,
    src_format: &str,
    dst: &Path,
    dst_format: &str,
    size: u64,
    log: Log,
) -> Result<()> {
    let src_s = src.to_string_lossy();
    let dst_s = dst.to_string_lossy();
    let args = [
        "convert", "-p", "-n", "-f", src_format, "-O", dst_format, &src_s, &dst_s,
    ];
    let mut child = Command::new("qemu-img")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io(format!("run {}", command_line(&args))))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let mut buf = [0u8; 4096];
    let mut pending = String::new();
    let mut last = String::new();
    loop {
        let n = stdout
            .read(&mut buf)
            .map_err(Error::io("read qemu-img progress"))?;
        if n == 0 {
            break;
        }
        pending.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(pos) = pending.find(['\r', '\n']) {
            let line: String = pending.drain(..=pos).collect();
            if let Some(percent) = parse_progress(&line).filter(|p| *p != last) {
                last = percent.to_string();
                let transferred =
                    (size as f64 * percent.parse::<f64>().unwrap_or_default() / 100.0) as u64;
                log(&format!(
                    "transferred {} of {} ({percent}%)",
                    render_bytes(transferred),
                    render_bytes(size)
                ));
            }
        }
    }
    let status = child.wait().map_err(Error::io("wait for qemu-img"))?;
    let stderr = err_reader.join().unwrap_or_default();
    stderr.lines().for_each(log);
    if !status.success() {
        let code = status
            .code()
            .map(|c| format!("exit code {c}"))
            .unwrap_or_else(|| "killed by signal".into());
        return Err(Error::failed(format!(
            "copy failed: command '{}' failed: {code}",
            command_line(&args)
        )));
    }
    Ok(())
}

/// The percentage of a `qemu-img -p` line (`    (45.12/100%)`), as printed.
fn parse_progress(line: &str) -> Option<&str> {
    let start = line.find('(')? + 1;
    let end = line[start..].find("/100%")? + start;
    let percent = line[start..end].trim();
    percent.parse::<f64>().ok().map(|_| percent)
}

/// PVE's `render_bytes($value, 1)` (one decimal).
pub fn render_bytes(value: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = value as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `qemu-img snapshot -c <name> <path>`.
pub fn snapshot_create(path: &Path, name: &str, log: Log) -> Result<()> {
    run(&["snapshot", "-c", name, &path.to_string_lossy()], log).map(|_| ())
}

/// `qemu-img snapshot -d <name> <path>`.
pub fn snapshot_delete(path: &Path, name: &str, log: Log) -> Result<()> {
    run(&["snapshot", "-d", name, &path.to_string_lossy()], log).map(|_| ())
}

/// `qemu-img convert -O raw` of a whole image into a new file.
pub fn convert_to_raw(src: &Path, src_format: &str, dst: &Path, log: Log) -> Result<()> {
    let src_s = src.to_string_lossy();
    let dst_s = dst.to_string_lossy();
    run(
        &["convert", "-f", src_format, "-O", "raw", &src_s, &dst_s],
        log,
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_sizes() {
        assert_eq!(parse_progress("    (45.12/100%)\r"), Some("45.12"));
        assert_eq!(parse_progress("nothing"), None);
        assert_eq!(render_bytes(1 << 30), "1.0 GiB");
        assert_eq!(render_bytes(1536), "1.5 KiB");
        assert_eq!(render_bytes(100), "100.0 B");
    }
}
