//! The one list of what the simulator declares beyond the schema file, each entry with its
//! reason. The declarations are JSON in the file's own form, parsed by the same code; loading
//! fails when an entry duplicates something the file has (a stale exception), and the route test
//! fails when an exception is not used.

/// A method the simulator serves that the file does not list.
pub struct RouteException {
    /// HTTP method.
    pub verb: &'static str,
    /// Path template.
    pub path: &'static str,
    /// The method as PVE declares it (`{name, parameters}`).
    pub declaration: &'static str,
    /// Why the simulator serves it anyway.
    pub reason: &'static str,
}

/// Methods served beyond the file.
pub const ROUTES: &[RouteException] = &[RouteException {
    verb: "GET",
    path: "/nodes/{node}/status",
    declaration: r#"{"name": "status", "parameters": {"additionalProperties": 0,
        "properties": {"node": {"type": "string", "format": "pve-node"}}}}"#,
    reason: "pve-manager's PVE::API2::Nodes::Nodeinfo `status`: the file lists only the paths a \
             migration uses; kept so that a client can read the node's pveversion and load",
}];

/// A parameter the file lacks.
pub struct PropertyAmendment {
    /// HTTP method.
    pub verb: &'static str,
    /// Path template.
    pub path: &'static str,
    /// Parameter name.
    pub name: &'static str,
    /// Its declaration.
    pub declaration: &'static str,
}

/// Why [`PROPERTIES`] exist.
pub const PROPERTIES_REASON: &str = "the file was made by removing every key named \
    `description` (the documentation texts), which also removed the parameters of that name; \
    qemu-server declares them: the VM config's `description` (maxLength 8 KiB) and the optional \
    string of `snapshot` and `update_snapshot_config`";

const CONFIG_DESCRIPTION: &str = r#"{"type": "string", "optional": 1, "maxLength": 8192}"#;
const SNAPSHOT_DESCRIPTION: &str = r#"{"type": "string", "optional": 1}"#;

/// Parameters added to methods of the file.
pub const PROPERTIES: &[PropertyAmendment] = &[
    PropertyAmendment {
        verb: "POST",
        path: "/nodes/{node}/qemu",
        name: "description",
        declaration: CONFIG_DESCRIPTION,
    },
    PropertyAmendment {
        verb: "POST",
        path: "/nodes/{node}/qemu/{vmid}/config",
        name: "description",
        declaration: CONFIG_DESCRIPTION,
    },
    PropertyAmendment {
        verb: "PUT",
        path: "/nodes/{node}/qemu/{vmid}/config",
        name: "description",
        declaration: CONFIG_DESCRIPTION,
    },
    PropertyAmendment {
        verb: "POST",
        path: "/nodes/{node}/qemu/{vmid}/snapshot",
        name: "description",
        declaration: SNAPSHOT_DESCRIPTION,
    },
    PropertyAmendment {
        verb: "PUT",
        path: "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config",
        name: "description",
        declaration: SNAPSHOT_DESCRIPTION,
    },
];

/// A registered property-string format the file names without its keys.
pub struct FormatDeclaration {
    /// Format name.
    pub name: &'static str,
    /// Its keys, as a `format` object of the file.
    pub keys: &'static str,
    /// Where PVE declares it.
    pub reason: &'static str,
}

/// Property-string formats the simulator checks.
pub const FORMATS: &[FormatDeclaration] = &[FormatDeclaration {
    name: "pve-qm-boot",
    keys: r#"{"legacy": {"type": "string", "optional": 1, "default_key": 1, "pattern": "[acdn]{1,4}"},
        "order": {"type": "string", "optional": 1, "format": "pve-qm-bootdev-list"}}"#,
    reason: "qemu-server's `$boot_fmt` (the `boot` key of the VM config); the simulator computes \
             the boot disk from `order=`",
}];

/// A `pvesm` command that is no API method (pve-storage's PVE::CLI::pvesm).
pub struct CliMethod {
    /// Command name.
    pub name: &'static str,
    /// The method's declaration.
    pub declaration: &'static str,
}

/// `pvesm export` and `pvesm path`; `pvesm list` and `pvesm status` are the API methods
/// `GET /nodes/{node}/storage/{storage}/content` and `GET /nodes/{node}/storage` with the local
/// node.
pub const CLI: &[CliMethod] = &[
    CliMethod {
        name: "export",
        declaration: r#"{"name": "export", "parameters": {"additionalProperties": 0, "properties": {
            "volume": {"type": "string"},
            "format": {"type": "string",
                "enum": ["raw+size", "tar+size", "qcow2+size", "vmdk+size", "zfs", "btrfs"]},
            "filename": {"type": "string"},
            "base": {"type": "string", "pattern": "(?^i:[a-z0-9_\\-]{1,40})", "maxLength": 40,
                "optional": 1},
            "snapshot": {"type": "string", "pattern": "(?^i:[a-z0-9_\\-]{1,40})", "maxLength": 40,
                "optional": 1},
            "with-snapshots": {"type": "boolean", "optional": 1, "default": 0},
            "snapshot-list": {"type": "string", "format": "string-list", "optional": 1}}}}"#,
    },
    CliMethod {
        name: "path",
        declaration: r#"{"name": "path", "parameters": {"additionalProperties": 0, "properties": {
            "volume": {"type": "string", "format": "pve-volume-id"}}}}"#,
    },
];
