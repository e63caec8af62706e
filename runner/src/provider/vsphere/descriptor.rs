//! VMDK descriptors as datastores hold them: the text file a disk's backing names (`createType`,
//! extents, `parentFileNameHint`), read to decide how a disk's bytes can be fetched over the
//! datastore file interface, and rewritten so that a downloaded chain refers only to local files.

use crate::{Error, Result};

/// The magic of a binary sparse VMDK (`KDMV`): monolithicSparse and streamOptimized files.
pub const SPARSE_MAGIC: &[u8; 4] = b"KDMV";
/// Descriptors are small; anything longer is not one.
pub const MAX_DESCRIPTOR: usize = 64 * 1024;

/// One `RW <sectors> <type> "<file>" [offset]` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    pub access: String,
    pub sectors: u64,
    /// `FLAT`, `VMFS`, `SPARSE`, `VMFSSPARSE`, `SESPARSE`, `ZERO`, `VMFSRDM`, `VMFSRAW`...
    pub kind: String,
    /// File name as written (relative to the descriptor's directory); `None` for `ZERO`.
    pub file: Option<String>,
    pub offset: u64,
}

impl Extent {
    /// A plain extent whose bytes are the guest's bytes (`FLAT` or `VMFS`).
    pub fn is_flat(&self) -> bool {
        matches!(self.kind.as_str(), "FLAT" | "VMFS")
    }

    /// An extent qemu-img reads from a local file (flat, sparse or delta formats).
    pub fn is_readable(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "FLAT" | "VMFS" | "SPARSE" | "VMFSSPARSE" | "SESPARSE" | "ZERO"
        )
    }
}

/// A parsed text descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// The text as read (rewritten by [`Descriptor::localized`]).
    pub text: String,
    pub create_type: String,
    pub extents: Vec<Extent>,
    /// `parentFileNameHint`: the parent descriptor of a delta disk.
    pub parent: Option<String>,
}

impl Descriptor {
    /// Parses a descriptor; `Err` names what is wrong (the caller falls back to NFC).
    pub fn parse(text: &str) -> std::result::Result<Descriptor, String> {
        if !text.contains("createType") {
            return Err("no createType: not a VMDK descriptor".into());
        }
        let mut create_type = None;
        let mut parent = None;
        let mut extents = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(v) = value_of(line, "createType") {
                create_type = Some(v);
            } else if let Some(v) = value_of(line, "parentFileNameHint") {
                parent = Some(v);
            } else if line.starts_with("RW ")
                || line.starts_with("RDONLY ")
                || line.starts_with("NOACCESS ")
            {
                extents.push(parse_extent(line)?);
            }
        }
        if extents.is_empty() {
            return Err("the descriptor lists no extent".into());
        }
        Ok(Descriptor {
            text: text.to_string(),
            create_type: create_type.ok_or("no createType value")?,
            extents,
            parent: parent.filter(|p| !p.is_empty()),
        })
    }

    /// The single flat extent of a disk without parent, when that is all it is: its bytes are the
    /// guest's bytes.
    pub fn single_flat(&self) -> Option<&Extent> {
        match self.extents.as_slice() {
            [e] if e.is_flat() && e.offset == 0 && self.parent.is_none() => Some(e),
            _ => None,
        }
    }

    /// The descriptor with every extent file and the parent hint replaced by local names
    /// (`extents[i]` -> `extent_names[i]`), for a chain laid out in one directory.
    pub fn localized(&self, extent_names: &[String], parent: Option<&str>) -> String {
        let mut out = String::new();
        let mut i = 0;
        for line in self.text.lines() {
            let t = line.trim();
            if value_of(t, "parentFileNameHint").is_some() {
                if let Some(p) = parent {
                    out.push_str(&format!("parentFileNameHint=\"{p}\"\n"));
                }
                continue;
            }
            let is_extent =
                t.starts_with("RW ") || t.starts_with("RDONLY ") || t.starts_with("NOACCESS ");
            match (is_extent, self.extents.get(i), extent_names.get(i)) {
                (true, Some(e), Some(name)) if e.file.is_some() => {
                    // only flat extents carry an offset
                    let offset = match e.is_flat() {
                        true => format!(" {}", e.offset),
                        false => String::new(),
                    };
                    out.push_str(&format!(
                        "{} {} {} \"{name}\"{offset}\n",
                        e.access, e.sectors, e.kind
                    ));
                    i += 1;
                }
                (true, _, _) => {
                    out.push_str(line);
                    out.push('\n');
                    i += 1;
                }
                _ => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// `key="value"` or `key = "value"` on a line: the value without quotes.
fn value_of(line: &str, key: &str) -> Option<String> {
    let rest = line.strip_prefix(key)?.trim_start();
    let v = rest.strip_prefix('=')?.trim();
    Some(v.trim_matches('"').to_string())
}

fn parse_extent(line: &str) -> std::result::Result<Extent, String> {
    let bad = || format!("unreadable extent line {line:?}");
    let mut parts = line.splitn(3, ' ');
    let access = parts.next().ok_or_else(bad)?.to_string();
    let sectors = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let rest = parts.next().ok_or_else(bad)?.trim();
    let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let rest = rest.trim();
    let (file, tail) = match rest.strip_prefix('"') {
        Some(r) => {
            let end = r.find('"').ok_or_else(bad)?;
            (Some(r[..end].to_string()), r[end + 1..].trim())
        }
        None => (None, rest),
    };
    let offset = match tail.split_whitespace().next() {
        Some(o) => o.parse().map_err(|_| bad())?,
        None => 0,
    };
    Ok(Extent {
        access,
        sectors,
        kind: kind.to_string(),
        file,
        offset,
    })
}

/// A file an untrusted descriptor names, as a path next to the descriptor on the datastore:
/// only a plain file name (no directory, no `..`) is accepted.
pub fn sibling(descriptor_path: &str, file: &str) -> Result<String> {
    if file.is_empty() || file.contains('/') || file.contains('\\') || file == "." || file == ".." {
        return Err(Error::Invalid(format!(
            "VMDK descriptor {descriptor_path} names the file {file:?}: only files in the same \
             directory are read"
        )));
    }
    Ok(match descriptor_path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{file}"),
        None => file.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAT: &str = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
        createType=\"monolithicFlat\"\n\n# Extent description\nRW 131072 FLAT \"web-flat.vmdk\" 0\n\n\
        # The Disk Data Base\n#DDB\nddb.adapterType = \"lsilogic\"\n";
    const DELTA: &str = "# Disk DescriptorFile\nversion=1\nCID=2\nparentCID=12345678\n\
        createType=\"vmfsSparse\"\nparentFileNameHint=\"web.vmdk\"\n\nRW 131072 VMFSSPARSE \"web-000001-delta.vmdk\"\n";

    #[test]
    fn reads_flat_and_delta_descriptors() {
        let d = Descriptor::parse(FLAT).unwrap();
        assert_eq!(d.create_type, "monolithicFlat");
        let e = d.single_flat().expect("a plain flat disk");
        assert_eq!(
            (e.sectors, e.file.as_deref()),
            (131072, Some("web-flat.vmdk"))
        );

        let d = Descriptor::parse(DELTA).unwrap();
        assert_eq!(d.parent.as_deref(), Some("web.vmdk"));
        assert_eq!(d.extents[0].kind, "VMFSSPARSE");
        assert!(d.single_flat().is_none(), "a delta needs its parent");
        assert!(d.extents[0].is_readable());

        assert!(Descriptor::parse("KDMV\u{1}binary").is_err());
        assert!(
            Descriptor::parse("createType=\"vmfs\"\n").is_err(),
            "no extent"
        );
        let rdm = "createType=\"vmfsPassthroughRawDeviceMap\"\nRW 100 VMFSRDM \"x-rdmp.vmdk\"\n";
        assert!(!Descriptor::parse(rdm).unwrap().extents[0].is_readable());
    }

    #[test]
    fn localized_descriptors_name_only_local_files() {
        let d = Descriptor::parse(DELTA).unwrap();
        let local = d.localized(&["d0-e0".into()], Some("d1.vmdk"));
        let back = Descriptor::parse(&local).unwrap();
        assert_eq!(back.parent.as_deref(), Some("d1.vmdk"));
        assert_eq!(back.extents[0].file.as_deref(), Some("d0-e0"));
        assert_eq!(back.extents[0].sectors, 131072);
        assert!(
            local.contains("VMFSSPARSE \"d0-e0\"\n"),
            "no offset on sparse extents: {local}"
        );
        let base = Descriptor::parse(FLAT)
            .unwrap()
            .localized(&["d1-e0".into()], None);
        assert!(Descriptor::parse(&base).unwrap().parent.is_none());
        assert!(base.contains("ddb.adapterType"), "the rest is kept");
    }

    #[test]
    fn extent_files_stay_next_to_their_descriptor() {
        assert_eq!(
            sibling("vm/web.vmdk", "web-flat.vmdk").unwrap(),
            "vm/web-flat.vmdk"
        );
        assert_eq!(
            sibling("web.vmdk", "web-flat.vmdk").unwrap(),
            "web-flat.vmdk"
        );
        for bad in ["../etc/passwd", "/abs", "sub/x.vmdk", "..", ""] {
            assert!(sibling("vm/web.vmdk", bad).is_err(), "{bad}");
        }
    }
}
