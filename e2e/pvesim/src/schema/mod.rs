//! Parameter verification from Proxmox VE's published API schema.
//!
//! The declarations are those of `schema/pve-api-9.1.3.json` (the API viewer data of PVE 9.1.3,
//! descriptions removed), embedded in the binary and parsed once ([`api`]). What the simulator
//! declares beyond it is one list with reasons ([`amend`]). The checks (`check`) are
//! pve-common's `PVE::JSONSchema`, in its order and with its messages, and the registered formats
//! ([`formats`]) are the verifiers of pve-common, pve-storage and qemu-server.

pub mod amend;
mod check;
pub mod formats;
mod model;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::Value;

pub use check::{
    NOT_IN_SCHEMA, is_integer, is_number, parse_boolean, parse_property_string, validate,
};
pub use formats::{is_storage_like_id, is_valid_drivename, parse_size};
pub use model::{
    Format, INDEXED, Method, Origin, Pattern, Prop, Props, Type, Verb, index_count, split_index,
};

/// Request parameters: name to (string) value, as PVE receives them.
pub type Params = BTreeMap<String, String>;

/// The schema file.
pub const FILE: &str = include_str!("../../schema/pve-api-9.1.3.json");
/// Its name, for messages.
pub const FILE_NAME: &str = "schema/pve-api-9.1.3.json";

/// The API schema: methods by path template and HTTP method, plus the named property-string
/// formats and `pvesm` commands of [`amend`].
#[derive(Debug)]
pub struct Api {
    /// The file's `source` line.
    pub source: String,
    paths: BTreeMap<String, BTreeMap<Verb, Method>>,
    formats: BTreeMap<String, Props>,
    cli: BTreeMap<String, Method>,
}

/// The schema (the embedded file with the amendments), parsed on first use.
pub fn api() -> &'static Api {
    static API: LazyLock<Api> = LazyLock::new(|| {
        Api::load(FILE).unwrap_or_else(|e| panic!("{FILE_NAME} does not load: {e}"))
    });
    &API
}

fn json(text: &str, what: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{what}: {e}"))
}

impl Api {
    /// Parses a schema file and applies [`amend`].
    pub fn load(file: &str) -> Result<Api, String> {
        let root = json(file, "schema file")?;
        let mut api = Api {
            source: root["source"].as_str().unwrap_or_default().to_string(),
            paths: BTreeMap::new(),
            formats: BTreeMap::new(),
            cli: BTreeMap::new(),
        };
        let paths = root["paths"]
            .as_object()
            .ok_or("the schema file has no paths")?;
        for (path, methods) in paths {
            for (verb, method) in methods.as_object().ok_or("methods are not an object")? {
                let verb = Verb::parse(verb).ok_or_else(|| format!("{path}: method {verb}"))?;
                let method = Method::from_json(method, Origin::File)
                    .map_err(|e| format!("{verb:?} {path}: {e}"))?;
                api.paths
                    .entry(path.clone())
                    .or_default()
                    .insert(verb, method);
            }
        }
        api.amend()?;
        Ok(api)
    }

    fn amend(&mut self) -> Result<(), String> {
        for route in amend::ROUTES {
            let verb = Verb::parse(route.verb).ok_or("exception with an unknown method")?;
            let what = format!("exception {} {}", route.verb, route.path);
            let method = Method::from_json(
                &json(route.declaration, &what)?,
                Origin::Exception(route.reason),
            )?;
            let methods = self.paths.entry(route.path.to_string()).or_default();
            if methods.insert(verb, method).is_some() {
                return Err(format!("{what}: the file has this method"));
            }
        }
        for property in amend::PROPERTIES {
            let what = format!("{} {} {}", property.verb, property.path, property.name);
            let prop = Prop::from_json(&json(property.declaration, &what)?)?;
            let verb = Verb::parse(property.verb).ok_or("amendment with an unknown method")?;
            let method = self
                .paths
                .get_mut(property.path)
                .and_then(|m| m.get_mut(&verb))
                .ok_or_else(|| format!("{what}: no such method"))?;
            method
                .params
                .insert(property.name, prop)
                .map_err(|e| format!("{what}: {e}"))?;
        }
        for format in amend::FORMATS {
            let keys = json(format.keys, format.name)?;
            let decl = serde_json::json!({ "type": "string", "format": keys });
            let Some(Format::Object(props)) = Prop::from_json(&decl)?.format else {
                return Err(format!("format {}: not an object", format.name));
            };
            self.formats.insert(format.name.to_string(), *props);
        }
        for cli in amend::CLI {
            let method = Method::from_json(
                &json(cli.declaration, cli.name)?,
                Origin::Exception("pvesm"),
            )?;
            self.cli.insert(cli.name.to_string(), method);
        }
        Ok(())
    }

    /// The method for a path template (`/nodes/{node}/qemu`) and HTTP method.
    pub fn method(&self, verb: Verb, path: &str) -> Option<&Method> {
        self.paths.get(path)?.get(&verb)
    }

    /// Every method: (path template, HTTP method, declaration).
    pub fn methods(&self) -> impl Iterator<Item = (&str, Verb, &Method)> {
        self.paths
            .iter()
            .flat_map(|(path, methods)| methods.iter().map(move |(v, m)| (path.as_str(), *v, m)))
    }

    /// The VM config keys with their declarations, as `POST /nodes/{node}/qemu` takes them (with
    /// disk allocation: `import-from`, `<storage>:<size>`).
    pub fn qemu_config(&self) -> &Props {
        &self
            .method(Verb::Post, "/nodes/{node}/qemu")
            .expect("the schema file has POST /nodes/{node}/qemu")
            .params
    }

    /// A property-string format of [`amend::FORMATS`].
    pub fn named_format(&self, name: &str) -> Option<&Props> {
        self.formats.get(name)
    }

    /// A `pvesm` command of [`amend::CLI`].
    pub fn cli(&self, name: &str) -> Option<&Method> {
        self.cli.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_file_loads_with_its_amendments() {
        let api = api();
        assert!(
            api.source.starts_with("Proxmox VE 9.1.3 API schema"),
            "{}",
            api.source
        );
        let create = api.method(Verb::Post, "/nodes/{node}/qemu").unwrap();
        assert_eq!(create.origin, Origin::File);
        assert!(create.params.get("scsi30").is_some() && create.params.get("scsi31").is_none());
        assert!(create.params.get("unused255").is_some() && create.params.get("net31").is_some());
        assert_eq!(
            create.params.get("description").unwrap().max_length,
            Some(8192)
        );
        let status = api.method(Verb::Get, "/nodes/{node}/status").unwrap();
        assert!(matches!(status.origin, Origin::Exception(_)));
        assert!(api.named_format("pve-qm-boot").is_some());
        assert!(
            api.cli("export")
                .unwrap()
                .params
                .get("with-snapshots")
                .is_some()
        );
    }

    #[test]
    fn a_stale_amendment_is_an_error() {
        let file = r#"{"source": "x", "paths": {"/nodes/{node}/status": {"GET": {"name": "status",
            "parameters": {"additionalProperties": 0}}}}}"#;
        assert_eq!(
            Api::load(file).unwrap_err(),
            "exception GET /nodes/{node}/status: the file has this method"
        );
    }
}
