//! `lvs` and `lvchange` of the simulated node, acting on the LVs of its LVM-thin storages (see
//! [`crate::storage::lvm`]): what a client runs over SSH to read a thin LV that PVE offers no API
//! for (a VM snapshot's `snap_<volname>_<snap>`, a template's `base-...`):
//!
//! ```text
//! lvchange -ay -K pve/snap_vm-100-disk-0_migrate
//! lvs --noheadings --nosuffix --units b -o lv_path,lv_size pve/snap_vm-100-disk-0_migrate
//! cat <lv_path>
//! lvchange -an pve/snap_vm-100-disk-0_migrate
//! ```
//!
//! As in lvm2: errors go to stderr indented by two spaces and exit 5 (`ECMD_FAILED`), a bad
//! command line exits 3; `lvchange -ay` of an LV with the activation-skip flag (snapshots, base
//! images) succeeds without activating it (lvm2's `lv_activation_skip` only logs it verbosely),
//! so the device path is still missing until `-K` (`--ignoreactivationskip`) is given. The
//! device path `lvs` prints is `<data>/dev/<vg>/<lv>` instead of `/dev/<vg>/<lv>`.

use std::collections::BTreeSet;

use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::storage::lvm::{Lv, activation_skip};
use crate::storage::{NodeConfig, Storage, StorageKind};

/// lvm2's exit code of a failed command.
pub const ECMD_FAILED: i32 = 5;
/// lvm2's exit code of a bad command line.
pub const EINVALID_CMD_LINE: i32 = 3;

/// The VGs of the node: the LVM-thin storages, by VG name.
fn volume_groups() -> Result<Vec<Storage>> {
    let dir = std::env::var_os(crate::pvesm_cli::DATA_DIR_ENV).ok_or_else(|| {
        Error::failed(format!(
            "{} is not set (the pvesim data directory)",
            crate::pvesm_cli::DATA_DIR_ENV
        ))
    })?;
    let data = DataDir::open(std::path::Path::new(&dir))?;
    let node = NodeConfig::load(&data)?;
    Ok(node
        .all(&data)
        .into_iter()
        .filter(|s| s.kind == StorageKind::Lvmthin)
        .collect())
}

/// `vg/lv`, `/dev/vg/lv` or `vg` into (vg, optional lv).
fn split_name(arg: &str) -> (&str, Option<&str>) {
    let name = arg.strip_prefix("/dev/").unwrap_or(arg);
    match name.split_once('/') {
        Some((vg, lv)) => (vg, Some(lv)),
        None => (name, None),
    }
}

/// Failures of one command: the stderr lines, and whether any selection failed.
#[derive(Default)]
struct Outcome {
    errors: Vec<String>,
}

impl Outcome {
    fn fail(&mut self, message: String) {
        self.errors.push(format!("  {message}"));
    }

    fn finish(self) -> i32 {
        for line in &self.errors {
            eprintln!("{line}");
        }
        if self.errors.is_empty() {
            0
        } else {
            ECMD_FAILED
        }
    }
}

/// The LVs a list of names selects (all of every VG without names), in lvm's order.
fn select(vgs: &[Storage], names: &[String], outcome: &mut Outcome) -> Result<Vec<Lv>> {
    let mut selected = Vec::new();
    if names.is_empty() {
        for vg in vgs {
            selected.extend(vg.lvs()?);
        }
    }
    for name in names {
        let (vg_name, lv_name) = split_name(name);
        let Some(vg) = vgs.iter().find(|s| s.vg() == vg_name) else {
            outcome.fail(format!("Volume group \"{vg_name}\" not found"));
            outcome.fail(format!("Cannot process volume group {vg_name}"));
            continue;
        };
        let lvs = vg.lvs()?;
        match lv_name {
            None => selected.extend(lvs),
            Some(lv) => match lvs.into_iter().find(|l| l.name == lv) {
                Some(found) => selected.push(found),
                None => outcome.fail(format!("Failed to find logical volume \"{vg_name}/{lv}\"")),
            },
        }
    }
    let mut seen = BTreeSet::new();
    selected.retain(|lv| seen.insert((lv.vg.clone(), lv.name.clone())));
    selected.sort_by(|a, b| (&a.vg, &a.name).cmp(&(&b.vg, &b.name)));
    Ok(selected)
}

/// How `lvs` prints.
struct Report {
    fields: Vec<String>,
    headings: bool,
    units: char,
    suffix: bool,
    separator: Option<String>,
}

const DEFAULT_FIELDS: &str = "lv_name,vg_name,lv_attr,lv_size,pool_lv,origin";

/// Parses the options of `lvs`; returns the report and the positional names.
fn parse_lvs(args: &[String]) -> std::result::Result<(Report, Vec<String>), String> {
    let mut report = Report {
        fields: Vec::new(),
        headings: true,
        units: 'h',
        suffix: true,
        separator: None,
    };
    let mut fields = DEFAULT_FIELDS.to_string();
    let mut names = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (option, inline) = match arg.split_once('=') {
            Some((o, v)) if arg.starts_with("--") => (o, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next().cloned())
                .ok_or_else(|| format!("lvs: option '{name}' requires an argument"))
        };
        match option {
            "--noheadings" => report.headings = false,
            "--nosuffix" => report.suffix = false,
            "-a" | "--all" | "-q" | "--quiet" => {}
            "--units" => report.units = units(&value("--units")?)?,
            "-o" | "--options" => fields = value("--options")?,
            "--separator" => report.separator = Some(value("--separator")?),
            o if o.starts_with('-') => return Err(format!("lvs: unrecognized option '{o}'")),
            name => names.push(name.to_string()),
        }
    }
    report.fields = fields.split(',').map(|f| f.trim().to_string()).collect();
    Ok((report, names))
}

fn units(value: &str) -> std::result::Result<char, String> {
    match value {
        "b" | "B" | "k" | "m" | "g" | "t" | "h" => Ok(value.chars().next().unwrap_or('h')),
        other => Err(format!("Invalid argument for --units: {other}")),
    }
}

/// A size as lvs prints it in `units` (`b`: bytes; `k`/`m`/`g`/`t`: 1024-based, two decimals;
/// `h`: the largest unit of at least 1).
fn size_text(size: u64, units: char, suffix: bool) -> String {
    let (value, unit) = match units {
        'b' | 'B' => {
            return if suffix {
                format!("{size}B")
            } else {
                size.to_string()
            };
        }
        'h' => {
            let power = (1..=4)
                .rev()
                .find(|p| size >= 1u64 << (10 * p))
                .unwrap_or(1);
            (
                size as f64 / (1u64 << (10 * power)) as f64,
                ["k", "m", "g", "t"][power - 1],
            )
        }
        unit => {
            let power = "kmgt".find(unit).unwrap_or(0) + 1;
            (
                size as f64 / (1u64 << (10 * power)) as f64,
                &"kmgt"[power - 1..power],
            )
        }
    };
    if suffix {
        format!("{value:.2}{unit}")
    } else {
        format!("{value:.2}")
    }
}

/// A field's heading, whether it is numeric (right-aligned), and its value for an LV.
fn field(name: &str, lv: &Lv, report: &Report) -> Option<(&'static str, bool, String)> {
    let text = |s: &str| s.to_string();
    Some(match name {
        "lv_name" | "name" => ("LV", false, lv.name.clone()),
        "vg_name" => ("VG", false, lv.vg.clone()),
        "lv_path" | "path" => ("Path", false, lv.path.display().to_string()),
        "lv_size" | "size" => (
            "LSize",
            true,
            size_text(lv.size, report.units, report.suffix),
        ),
        "lv_attr" | "attr" => ("Attr", false, lv.attr()),
        "origin" => ("Origin", false, lv.origin.clone().unwrap_or_default()),
        "pool_lv" => ("Pool", false, text(&lv.pool)),
        "lv_active" => ("Active", false, text(if lv.active { "active" } else { "" })),
        "lv_skip_activation" => (
            "SkipAct",
            false,
            text(if activation_skip(&lv.name) {
                "skip activation"
            } else {
                ""
            }),
        ),
        _ => return None,
    })
}

/// One report row: (heading, numeric, value) per field.
type Row = Vec<(&'static str, bool, String)>;

fn rows(report: &Report, lvs: &[Lv]) -> std::result::Result<Vec<Row>, String> {
    lvs.iter()
        .map(|lv| {
            report
                .fields
                .iter()
                .map(|f| field(f, lv, report).ok_or_else(|| format!("Unrecognised field: {f}")))
                .collect()
        })
        .collect()
}

impl Report {
    /// One line: with `--separator` the cells joined by it, else lvm2's columns (strings left-,
    /// numbers right-aligned); indented by two spaces.
    fn line(&self, cells: Vec<(bool, String)>, widths: &[usize]) -> String {
        if let Some(separator) = &self.separator {
            let texts: Vec<String> = cells.into_iter().map(|(_, t)| t).collect();
            return format!("  {}", texts.join(separator));
        }
        let padded: Vec<String> = cells
            .into_iter()
            .zip(widths)
            .map(|((right, t), w)| {
                if right {
                    format!("{t:>w$}")
                } else {
                    format!("{t:<w$}")
                }
            })
            .collect();
        format!("  {}", padded.join(" ").trim_end())
    }
}

/// The report lines (headings unless `--noheadings`).
fn render(report: &Report, lvs: &[Lv]) -> std::result::Result<Vec<String>, String> {
    let rows = rows(report, lvs)?;
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let headings: Vec<(bool, String)> = first.iter().map(|(h, n, _)| (*n, h.to_string())).collect();
    let widths: Vec<usize> = (0..headings.len())
        .map(|i| {
            let heading = if report.headings {
                headings[i].1.len()
            } else {
                0
            };
            rows.iter()
                .map(|r| r[i].2.chars().count())
                .chain([heading])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut lines = Vec::new();
    if report.headings {
        lines.push(report.line(headings, &widths));
    }
    for row in rows {
        lines.push(report.line(row.into_iter().map(|(_, n, v)| (n, v)).collect(), &widths));
    }
    Ok(lines)
}

/// Runs `lvs <args>`; returns the exit code.
pub fn lvs_main(args: &[String]) -> i32 {
    let (report, names) = match parse_lvs(args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}\n  Error during parsing of command line.");
            return EINVALID_CMD_LINE;
        }
    };
    let mut outcome = Outcome::default();
    let lvs = match volume_groups().and_then(|vgs| select(&vgs, &names, &mut outcome)) {
        Ok(lvs) => lvs,
        Err(e) => {
            eprintln!("  {e}");
            return ECMD_FAILED;
        }
    };
    match render(&report, &lvs) {
        Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
        Err(message) => outcome.fail(message),
    }
    outcome.finish()
}

/// What `lvchange` is asked to do.
struct Change {
    activate: bool,
    ignore_skip: bool,
    verbose: bool,
    names: Vec<String>,
}

fn parse_lvchange(args: &[String]) -> std::result::Result<Change, String> {
    let mut activate = None;
    let mut change = Change {
        activate: false,
        ignore_skip: false,
        verbose: false,
        names: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "-a" | "--activate" => Some(args.next().cloned().unwrap_or_default()),
            a if a.starts_with("--activate=") => Some(a["--activate=".len()..].to_string()),
            a if a.starts_with("-a") && a.len() > 2 => Some(a[2..].to_string()),
            "-K" | "--ignoreactivationskip" => {
                change.ignore_skip = true;
                None
            }
            "-v" | "--verbose" => {
                change.verbose = true;
                None
            }
            o if o.starts_with('-') => return Err(format!("lvchange: unrecognized option '{o}'")),
            name => {
                change.names.push(name.to_string());
                None
            }
        };
        if let Some(value) = value {
            activate = Some(match value.trim_start_matches(['a', 'e', 'l', 's']) {
                "y" => true,
                "n" => false,
                _ => return Err(format!("Invalid argument for --activate: {value}")),
            });
        }
    }
    change.activate = activate.ok_or("No command with matching syntax recognised.")?;
    if change.names.is_empty() {
        return Err("Please specify a logical volume path.".to_string());
    }
    Ok(change)
}

/// One LV: (de)activation, or nothing for an activation-skip LV activated without `-K`.
fn change_lv(vg: &Storage, lv: &str, change: &Change) -> Result<()> {
    if !change.activate {
        return vg.deactivate_lv(lv);
    }
    if activation_skip(lv) && !change.ignore_skip {
        if change.verbose {
            eprintln!(
                "  ACTIVATION_SKIP flag set for LV {}/{lv}, skipping activation.",
                vg.vg()
            );
        }
        return Ok(());
    }
    vg.activate_lv(lv)
}

/// Runs `lvchange <args>` (only `-a y|n` with `-K`/`-v`); returns the exit code.
pub fn lvchange_main(args: &[String]) -> i32 {
    let change = match parse_lvchange(args) {
        Ok(change) => change,
        Err(message) => {
            eprintln!("  {message}\n  Run `lvchange --help' for more information.");
            return EINVALID_CMD_LINE;
        }
    };
    let mut outcome = Outcome::default();
    let result = volume_groups().and_then(|vgs| {
        for name in &change.names {
            let (vg_name, lv_name) = split_name(name);
            let vg = vgs.iter().find(|s| s.vg() == vg_name);
            match (vg, lv_name) {
                (Some(vg), Some(lv)) if vg.lv_file(lv).is_file() => change_lv(vg, lv, &change)?,
                (None, _) => outcome.fail(format!("Volume group \"{vg_name}\" not found")),
                _ => outcome.fail(format!("Failed to find logical volume \"{name}\"")),
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        outcome.fail(e.to_string());
    }
    outcome.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lvs_options() {
        let (report, names) = parse_lvs(&args(&[
            "--noheadings",
            "--nosuffix",
            "--units",
            "b",
            "-o",
            "lv_path,lv_size",
            "pve/vm-100-disk-0",
        ]))
        .unwrap();
        assert_eq!(report.fields, ["lv_path", "lv_size"]);
        assert!(!report.headings && !report.suffix && report.units == 'b');
        assert_eq!(names, ["pve/vm-100-disk-0"]);
        assert!(parse_lvs(&args(&["--units=x"])).is_err());
        assert_eq!(
            parse_lvs(&args(&["--bogus"])).err().unwrap(),
            "lvs: unrecognized option '--bogus'"
        );
        assert_eq!(size_text(8 << 20, 'b', false), "8388608");
        assert_eq!(size_text(8 << 20, 'b', true), "8388608B");
        assert_eq!(size_text(8 << 20, 'h', true), "8.00m");
        assert_eq!(size_text(3 << 29, 'g', true), "1.50g");
    }

    #[test]
    fn lvchange_options() {
        let change = parse_lvchange(&args(&["-ay", "-K", "pve/snap_vm-100-disk-0_s1"])).unwrap();
        assert!(change.activate && change.ignore_skip);
        let change = parse_lvchange(&args(&["--activate", "n", "pve/x"])).unwrap();
        assert!(!change.activate && !change.ignore_skip);
        assert!(parse_lvchange(&args(&["-aly", "pve/x"])).unwrap().activate);
        assert_eq!(
            parse_lvchange(&args(&["pve/x"])).err().unwrap(),
            "No command with matching syntax recognised."
        );
        assert!(parse_lvchange(&args(&["-ax", "pve/x"])).is_err());
    }
}
