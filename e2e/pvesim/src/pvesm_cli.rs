//! The `pvesm` command of the simulated node (pve-storage `PVE::CLI::pvesm`): `export`, `list`,
//! `path` and `status`, with PVE's argument handling (positional arguments plus `--option value`
//! options in any order, `-option` also accepted) and PVE's messages. Errors print to stderr and exit
//! with 255, as a Perl `die` in the CLI handler does.
//!
//! The data directory comes from `PVESIM_DATA_DIR` (set by the wrapper `pvesim-up.sh` installs as
//! `/usr/local/sbin/pvesm`, so an sshd session finds it).

use std::collections::BTreeMap;
use std::io::Write;

use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::export::{self, ExportRequest};
use crate::schema::{self, Method, Params, Prop, Verb};
use crate::storage::{NodeConfig, parse_volume_id};

/// Environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "PVESIM_DATA_DIR";

/// One command: its positional arguments and its method's declaration.
struct Command {
    name: &'static str,
    positional: &'static [&'static str],
    method: &'static Method,
    /// The command is an API method called with the local node (`{ node => $nodename }`).
    fixed_node: bool,
}

fn command(name: &str) -> Option<Command> {
    let api = schema::api();
    let (name, positional, method, fixed_node) = match name {
        "export" => (
            "export",
            &["volume", "format", "filename"][..],
            api.cli("export")?,
            false,
        ),
        "path" => ("path", &["volume"][..], api.cli("path")?, false),
        "list" => (
            "list",
            &["storage"][..],
            api.method(Verb::Get, "/nodes/{node}/storage/{storage}/content")?,
            true,
        ),
        "status" => (
            "status",
            &[][..],
            api.method(Verb::Get, "/nodes/{node}/storage")?,
            true,
        ),
        _ => return None,
    };
    Some(Command {
        name,
        positional,
        method,
        fixed_node,
    })
}

impl Command {
    /// An option's declaration (`node` is fixed, not an option, for API methods).
    fn option(&self, name: &str) -> Option<&'static Prop> {
        if self.fixed_node && name == "node" {
            return None;
        }
        self.method.params.get(name)
    }
}

fn usage(cmd: &Command) -> String {
    let positional: String = cmd.positional.iter().map(|p| format!(" <{p}>")).collect();
    let has_options = cmd
        .method
        .params
        .fixed()
        .any(|(name, _)| cmd.option(name).is_some() && !cmd.positional.contains(&name));
    let options = if has_options { " [OPTIONS]" } else { "" };
    format!("USAGE: pvesm {}{positional}{options}", cmd.name)
}

/// Getopt-style parsing: `--key value` / `-key value` options anywhere, the rest positional.
/// A boolean option without a value means 1.
fn parse_args(cmd: &Command, args: &[String]) -> std::result::Result<Params, String> {
    let mut params = BTreeMap::new();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg.len() > 1 && arg.starts_with('-') && arg != "-" {
            let name = arg.trim_start_matches('-');
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            let Some(prop) = cmd.option(name) else {
                return Err(format!(
                    "Unknown option: {name}\n400 unable to parse option"
                ));
            };
            let value = match inline {
                Some(v) => v,
                None if prop.ty == Some(schema::Type::Boolean) => {
                    match args.get(i + 1).and_then(|v| schema::parse_boolean(v)) {
                        Some(b) => {
                            i += 1;
                            (b as u8).to_string()
                        }
                        None => "1".to_string(),
                    }
                }
                None => {
                    i += 1;
                    args.get(i).cloned().ok_or_else(|| {
                        format!("Option {name} requires an argument\n400 unable to parse option")
                    })?
                }
            };
            let value = if prop.ty == Some(schema::Type::Boolean) {
                schema::parse_boolean(&value)
                    .map(|b| (b as u8).to_string())
                    .unwrap_or(value)
            } else {
                value
            };
            params.insert(name.to_string(), value);
        } else {
            positional.push(arg.clone());
        }
        i += 1;
    }
    if positional.len() < cmd.positional.len() {
        return Err("400 not enough arguments".to_string());
    }
    if positional.len() > cmd.positional.len() {
        return Err("400 too many arguments".to_string());
    }
    for (name, value) in cmd.positional.iter().zip(positional) {
        params.insert(name.to_string(), value);
    }
    Ok(params)
}

/// Runs `pvesm <args>`; returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let Some(name) = args.first() else {
        eprintln!(
            "ERROR: no command specified\nUSAGE: pvesm <COMMAND> [ARGS] [OPTIONS]\n       commands: export list path status"
        );
        return 255;
    };
    let Some(cmd) = command(name) else {
        eprintln!(
            "ERROR: unknown command 'pvesm {name}'\nUSAGE: pvesm <COMMAND> [ARGS] [OPTIONS]\n       commands: export list path status"
        );
        return 255;
    };
    let params = match parse_args(&cmd, &args[1..]) {
        Ok(p) => p,
        Err(message) => {
            eprintln!("{message}\n{}", usage(&cmd));
            return 255;
        }
    };
    match run(&cmd, &params) {
        Ok(()) => 0,
        Err(e) => {
            eprint!("{}", e.cli_message());
            if matches!(e, Error::Param(_)) {
                eprintln!("{}", usage(&cmd));
            }
            255
        }
    }
}

fn data_dir() -> Result<DataDir> {
    let dir = std::env::var_os(DATA_DIR_ENV).ok_or_else(|| {
        Error::failed(format!(
            "{DATA_DIR_ENV} is not set (the pvesim data directory)"
        ))
    })?;
    DataDir::open(std::path::Path::new(&dir))
}

/// Verifies the parameters (an API method gets the local node as `node`) and runs the command.
fn run(cmd: &Command, params: &Params) -> Result<()> {
    let mut params = params.clone();
    let data = if cmd.fixed_node {
        let data = data_dir()?;
        params.insert("node".into(), NodeConfig::load(&data)?.node);
        schema::validate(&cmd.method.params, &params)?;
        data
    } else {
        schema::validate(&cmd.method.params, &params)?;
        data_dir()?
    };
    match cmd.name {
        "export" => run_export(&data, &params),
        "path" => run_path(&data, &params),
        "list" => run_list(&data, &params),
        "status" => run_status(&data, &params),
        other => Err(Error::failed(format!("unknown command '{other}'"))),
    }
}

fn out_line(out: &mut dyn Write, line: &str) -> Result<()> {
    writeln!(out, "{line}").map_err(Error::io("write stdout"))
}

/// `pvesm export <volume> <format> <filename|->`: a failed export to a file removes the file.
fn run_export(data: &DataDir, params: &Params) -> Result<()> {
    let request = ExportRequest {
        volid: params["volume"].clone(),
        format: params["format"].clone(),
        snapshot: params.get("snapshot").cloned(),
        base: params.get("base").cloned(),
        with_snapshots: params.get("with-snapshots").is_some_and(|v| v == "1")
            || params.contains_key("snapshot-list"),
    };
    let log = |line: &str| eprintln!("{line}");
    let filename = &params["filename"];
    if filename == "-" {
        // nothing else may go to stdout while it carries the stream
        return export::export(data, &request, &mut std::io::stdout().lock(), &log);
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(filename)
        .map_err(|e| Error::failed(format!("open({filename}): {e}")))?;
    let result = export::export(data, &request, &mut file, &log);
    if result.is_err() {
        drop(file);
        let _ = std::fs::remove_file(filename);
    }
    result
}

/// `pvesm path <volume>`: the file, or for LVM-thin the LV's device path.
fn run_path(data: &DataDir, params: &Params) -> Result<()> {
    let (store, volname) = parse_volume_id(&params["volume"])?;
    let storage = NodeConfig::load(data)?.storage(data, store)?;
    let volume = storage.parse_volname(volname)?;
    out_line(
        &mut std::io::stdout().lock(),
        &storage.path(&volume).display().to_string(),
    )
}

/// `pvesm list <storage>`: VM images first, then the other volumes by format.
fn run_list(data: &DataDir, params: &Params) -> Result<()> {
    let storage = NodeConfig::load(data)?.storage(data, &params["storage"])?;
    let vmid = params.get("vmid").and_then(|v| v.parse().ok());
    let list = storage.list_volumes(params.get("content").map(String::as_str), vmid)?;
    let width = list.iter().map(|v| v.volid.len()).max().unwrap_or(0);
    let sizes = list.iter().map(|v| v.size.to_string().len());
    let size_width = sizes.max().unwrap_or(0).max(4);
    let mut out = std::io::stdout().lock();
    let row = |volid: &str, format: &str, content: &str, size: &str, vmid: &str| {
        let line = format!("{volid:<width$} {format:<7} {content:<9} {size:>size_width$} {vmid}");
        line.trim_end().to_string()
    };
    out_line(&mut out, &row("Volid", "Format", "Type", "Size", "VMID"))?;
    let (images, mut rest): (Vec<_>, Vec<_>) = list.iter().partition(|v| v.vmid.is_some());
    rest.sort_by(|a, b| a.format.cmp(&b.format));
    for v in images.into_iter().chain(rest) {
        let vmid = v.vmid.map(|id| id.to_string()).unwrap_or_default();
        out_line(
            &mut out,
            &row(&v.volid, &v.format, &v.content, &v.size.to_string(), &vmid),
        )?;
    }
    Ok(())
}

/// `pvesm status`: usage of the storages (with `--content`: those with any of the types).
fn run_status(data: &DataDir, params: &Params) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let heading = format!(
        "{:<10} {:<8} {:<8} {:>16} {:>16} {:>16} {:>8}",
        "Name", "Type", "Status", "Total (KiB)", "Used (KiB)", "Available (KiB)", "%"
    );
    out_line(&mut out, &heading)?;
    let contents = params
        .get("content")
        .map(|c| schema::formats::split_list(c));
    for storage in NodeConfig::load(data)?.all(data) {
        let wanted = params.get("storage").is_none_or(|s| *s == storage.id)
            && contents
                .as_ref()
                .is_none_or(|c| c.iter().any(|c| storage.supports(c)));
        if !wanted {
            continue;
        }
        let (total, used, avail) = storage.usage();
        let percent = if total > 0 {
            used as f64 * 100.0 / total as f64
        } else {
            0.0
        };
        let line = format!(
            "{:<10} {:<8} {:<8} {:>16} {:>16} {:>16} {:>7.2}%",
            storage.id,
            storage.kind.as_str(),
            "active",
            total / 1024,
            used / 1024,
            avail / 1024,
            percent
        );
        out_line(&mut out, &line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn export_arguments_like_pves_cli() {
        let cmd = command("export").unwrap();
        let p = parse_args(
            &cmd,
            &args(&[
                "local:100/vm-100-disk-0.qcow2",
                "raw+size",
                "-",
                "--snapshot",
                "s1",
            ]),
        )
        .unwrap();
        assert_eq!(p["volume"], "local:100/vm-100-disk-0.qcow2");
        assert_eq!(p["filename"], "-");
        assert_eq!(p["snapshot"], "s1");
        let p = parse_args(&cmd, &args(&["--with-snapshots", "v", "qcow2+size", "f"])).unwrap();
        assert_eq!(p["with-snapshots"], "1");
        assert_eq!(p["volume"], "v");
        let p = parse_args(
            &cmd,
            &args(&["v", "qcow2+size", "f", "-with-snapshots", "0"]),
        )
        .unwrap();
        assert_eq!(p["with-snapshots"], "0");
        assert!(
            parse_args(&cmd, &args(&["v", "raw+size"]))
                .unwrap_err()
                .contains("not enough arguments")
        );
        assert!(
            parse_args(&cmd, &args(&["v", "raw+size", "-", "--bogus", "1"]))
                .unwrap_err()
                .contains("Unknown option: bogus")
        );
        let p = parse_args(&cmd, &args(&["v", "foo+size", "-"])).unwrap();
        let Err(Error::Param(e)) = schema::validate(&cmd.method.params, &p) else {
            panic!()
        };
        assert_eq!(
            e["format"],
            "value 'foo+size' does not have a value in the enumeration 'raw+size, tar+size, qcow2+size, vmdk+size, zfs, btrfs'"
        );
    }
}
