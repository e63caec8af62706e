//! The schema file as data: methods by path template and HTTP method, their parameters
//! ([`Props`]) and each parameter's declaration ([`Prop`]), read from the JSON of PVE's API viewer.
//!
//! Numbered parameters appear once in the file, as `scsi[n]`; [`INDEXED`] gives the ranges
//! qemu-server expands them to (`scsi0` .. `scsi30`).

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::{Map, Value};

/// The ranges of the numbered parameters, from qemu-server's limits (`$MAX_SCSI_DISKS`,
/// `$MAX_NETS`, `$MAX_UNUSED_DISKS`, ... in `QemuServer.pm`, `Drive.pm`, `PCI.pm`, `USB.pm`,
/// `Memory.pm`, `Virtiofs.pm`): `name[n]` stands for `name0` .. `name<count - 1>`.
pub const INDEXED: &[(&str, u32)] = &[
    ("ide", 4),
    ("sata", 6),
    ("scsi", 31),
    ("virtio", 16),
    ("net", 32),
    ("ipconfig", 32),
    ("unused", 256),
    ("hostpci", 16),
    ("usb", 14),
    ("serial", 4),
    ("parallel", 3),
    ("numa", 8),
    ("virtiofs", 10),
];

/// The number of `prefix<n>` keys qemu-server allows (0 for an unknown prefix).
pub fn index_count(prefix: &str) -> u32 {
    INDEXED
        .iter()
        .find(|(p, _)| *p == prefix)
        .map_or(0, |(_, n)| *n)
}

/// HTTP methods of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
}

impl Verb {
    /// The method name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
        }
    }

    /// Parses a method name.
    pub fn parse(name: &str) -> Option<Verb> {
        [Verb::Get, Verb::Post, Verb::Put, Verb::Delete]
            .into_iter()
            .find(|v| v.as_str() == name)
    }
}

/// JSON schema types of parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Type {
    /// Any string.
    String,
    /// `^[+-]?\d+$`.
    Integer,
    /// A decimal number.
    Number,
    /// `0` or `1` (property strings also take on/off, yes/no, true/false).
    Boolean,
    /// A type PVE does not check for string values (`array`, `object`, ...).
    Other(String),
}

impl Type {
    fn parse(name: &str) -> Type {
        match name {
            "string" => Type::String,
            "integer" => Type::Integer,
            "number" => Type::Number,
            "boolean" => Type::Boolean,
            other => Type::Other(other.to_string()),
        }
    }

    /// The name as in the schema.
    pub fn name(&self) -> &str {
        match self {
            Type::String => "string",
            Type::Integer => "integer",
            Type::Number => "number",
            Type::Boolean => "boolean",
            Type::Other(name) => name,
        }
    }
}

/// A value format beyond the type.
#[derive(Clone, Debug)]
pub enum Format {
    /// A registered format (`pve-vmid`, `pve-configid-list`, ...), see [`super::formats`].
    Named(String),
    /// A property string with its own keys (`scsi[n]`, `net[n]`, `efidisk0`, ...).
    Object(Box<Props>),
}

/// A `pattern`: PVE matches `m/^$pattern$/` with Perl; this is the same regex for Rust.
#[derive(Clone, Debug)]
pub struct Pattern {
    /// The pattern as the schema spells it.
    pub perl: String,
    /// The same pattern in Rust's syntax, not anchored.
    pub rust: String,
    /// The anchored Rust regex.
    pub regex: Regex,
}

impl Pattern {
    /// Translates a Perl pattern: `(?^flags:...)` (a stringified `qr//`) becomes `(?flags:...)`,
    /// `{,n}` (Perl >= 5.34) becomes `{0,n}`, and `$` also matches before a final newline.
    pub fn from_perl(perl: &str) -> Result<Pattern, String> {
        static CARET: std::sync::LazyLock<Regex> =
            std::sync::LazyLock::new(|| Regex::new(r"\(\?\^([a-z]*):").expect("caret regex"));
        static UPTO: std::sync::LazyLock<Regex> =
            std::sync::LazyLock::new(|| Regex::new(r"\{,(\d+)\}").expect("upto regex"));
        let rust = CARET.replace_all(perl, "(?$1:");
        let rust = UPTO.replace_all(&rust, "{0,$1}");
        let regex = Regex::new(&format!("^(?:{rust})\n?$"))
            .map_err(|e| format!("pattern '{perl}': {e}"))?;
        Ok(Pattern {
            perl: perl.to_string(),
            rust: rust.to_string(),
            regex,
        })
    }
}

/// One parameter (or property-string key) declaration.
#[derive(Clone, Debug, Default)]
pub struct Prop {
    /// Value type (`None` for an alias, which has none).
    pub ty: Option<Type>,
    /// May be absent.
    pub optional: bool,
    /// Format check.
    pub format: Option<Format>,
    /// Regex the whole value must match.
    pub pattern: Option<Pattern>,
    /// Longest allowed value (characters).
    pub max_length: Option<usize>,
    /// Shortest allowed value.
    pub min_length: Option<usize>,
    /// Smallest number.
    pub minimum: Option<f64>,
    /// Largest number.
    pub maximum: Option<f64>,
    /// Allowed values.
    pub enumeration: Option<Vec<String>>,
    /// Another parameter that must be present with this one.
    pub requires: Option<String>,
    /// In a property string: the key of a value given without `key=`.
    pub default_key: bool,
    /// In a property string: this key is another name of the given key.
    pub alias: Option<String>,
    /// In a property string: an alias key also sets this key to the alias's name
    /// (`virtio=<mac>` sets `model=virtio`).
    pub key_alias: Option<String>,
}

impl Prop {
    /// A declaration from its JSON.
    pub fn from_json(value: &Value) -> Result<Prop, String> {
        let obj = value
            .as_object()
            .ok_or_else(|| format!("declaration is not an object: {value}"))?;
        let text = |key: &str| obj.get(key).and_then(Value::as_str).map(str::to_string);
        let length = |key: &str| number(obj.get(key)).map(|n| n.map(|n| n as usize));
        Ok(Prop {
            ty: text("type").map(|t| Type::parse(&t)),
            optional: truthy(obj.get("optional")),
            format: obj.get("format").map(parse_format).transpose()?,
            pattern: text("pattern")
                .map(|p| Pattern::from_perl(&p))
                .transpose()?,
            max_length: length("maxLength")?,
            min_length: length("minLength")?,
            minimum: number(obj.get("minimum"))?,
            maximum: number(obj.get("maximum"))?,
            enumeration: parse_enum(obj.get("enum"))?,
            requires: text("requires"),
            default_key: truthy(obj.get("default_key")),
            alias: text("alias"),
            key_alias: text("keyAlias"),
        })
    }
}

fn truthy(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
        Some(Value::String(s)) => !s.is_empty() && s != "0",
        _ => false,
    }
}

/// A number, also when the schema writes it as a string (`"minimum": "0"`).
fn number(value: Option<&Value>) -> Result<Option<f64>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("not a number: '{s}'")),
        Some(other) => Err(format!("not a number: {other}")),
    }
}

fn parse_enum(value: Option<&Value>) -> Result<Option<Vec<String>>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => Ok(Some(
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        )),
        Some(other) => Err(format!("enum is not a list: {other}")),
    }
}

fn parse_format(value: &Value) -> Result<Format, String> {
    match value {
        Value::String(name) => Ok(Format::Named(name.clone())),
        Value::Object(keys) => Ok(Format::Object(Box::new(Props::from_map(keys, false)?))),
        other => Err(format!("format is neither a name nor an object: {other}")),
    }
}

/// The parameters of a method, or the keys of a property string.
#[derive(Clone, Debug, Default)]
pub struct Props {
    fixed: BTreeMap<String, Prop>,
    /// Numbered declarations by prefix (`scsi` for `scsi[n]`).
    indexed: BTreeMap<String, Prop>,
    /// Whether undeclared names are allowed (`additionalProperties`).
    pub additional: bool,
}

impl Props {
    /// The `parameters` object of a method: `{additionalProperties, properties}`.
    pub fn from_parameters(value: &Value) -> Result<Props, String> {
        let empty = Map::new();
        let properties = match value.get("properties") {
            None => &empty,
            Some(p) => p
                .as_object()
                .ok_or_else(|| "properties is not an object".to_string())?,
        };
        let additional = value.get("additionalProperties") != Some(&Value::from(0));
        Props::from_map(properties, additional)
    }

    fn from_map(map: &Map<String, Value>, additional: bool) -> Result<Props, String> {
        let mut props = Props {
            additional,
            ..Props::default()
        };
        for (name, declaration) in map {
            let prop = Prop::from_json(declaration).map_err(|e| format!("{name}: {e}"))?;
            props.insert(name, prop)?;
        }
        Ok(props)
    }

    /// Adds a declaration (`name[n]` for a numbered one); a name declared twice is an error.
    pub fn insert(&mut self, name: &str, prop: Prop) -> Result<(), String> {
        let previous = match name.strip_suffix("[n]") {
            Some(prefix) => {
                if index_count(prefix) == 0 {
                    return Err(format!(
                        "{name}: no range known for this numbered parameter"
                    ));
                }
                self.indexed.insert(prefix.to_string(), prop)
            }
            None => self.fixed.insert(name.to_string(), prop),
        };
        match previous {
            Some(_) => Err(format!("{name}: declared twice")),
            None => Ok(()),
        }
    }

    /// The declaration of a parameter name (`scsi5` finds `scsi[n]`).
    pub fn get(&self, name: &str) -> Option<&Prop> {
        self.fixed.get(name).or_else(|| {
            let (prefix, n) = split_index(name)?;
            let prop = self.indexed.get(prefix)?;
            (n < index_count(prefix)).then_some(prop)
        })
    }

    /// The fixed (not numbered) declarations.
    pub fn fixed(&self) -> impl Iterator<Item = (&str, &Prop)> {
        self.fixed.iter().map(|(n, p)| (n.as_str(), p))
    }

    /// Names as the file spells them (`scsi[n]` once) with their declarations.
    pub fn declared(&self) -> impl Iterator<Item = (String, &Prop)> {
        let fixed = self.fixed.iter().map(|(n, p)| (n.clone(), p));
        let indexed = self.indexed.iter().map(|(n, p)| (format!("{n}[n]"), p));
        fixed.chain(indexed)
    }

    /// Every name a request may use (`scsi0` .. `scsi30` for `scsi[n]`).
    pub fn expanded(&self) -> impl Iterator<Item = (String, &Prop)> {
        let fixed = self.fixed.iter().map(|(n, p)| (n.clone(), p));
        let indexed = self.indexed.iter().flat_map(|(prefix, p)| {
            (0..index_count(prefix)).map(move |i| (format!("{prefix}{i}"), p))
        });
        fixed.chain(indexed)
    }

    /// Whether a name is one of the numbered ones.
    pub fn is_indexed(&self, name: &str) -> bool {
        !self.fixed.contains_key(name) && self.get(name).is_some()
    }
}

/// `scsi12` into (`scsi`, 12); the number must be written as qemu-server's keys are (no leading
/// zero).
pub fn split_index(name: &str) -> Option<(&str, u32)> {
    let digits = name.len() - name.bytes().rev().take_while(u8::is_ascii_digit).count();
    let (prefix, number) = name.split_at(digits);
    if prefix.is_empty() || number.is_empty() || (number.len() > 1 && number.starts_with('0')) {
        return None;
    }
    Some((prefix, number.parse().ok()?))
}

/// Where a method's declaration comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The schema file.
    File,
    /// The simulator's list of exceptions ([`super::amend`]), with the reason.
    Exception(&'static str),
}

/// One API method (or `pvesm` command).
#[derive(Clone, Debug)]
pub struct Method {
    /// The method's name in PVE (`vmlist`, `create_vm`, ...).
    pub name: String,
    /// Its parameters.
    pub params: Props,
    /// Where the declaration comes from.
    pub origin: Origin,
}

impl Method {
    /// A method from its JSON (`{name, parameters, ...}`).
    pub fn from_json(value: &Value, origin: Origin) -> Result<Method, String> {
        let parameters = value
            .get("parameters")
            .ok_or_else(|| "no parameters".to_string())?;
        Ok(Method {
            name: value
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            params: Props::from_parameters(parameters)?,
            origin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perl_patterns_become_rust_regexes() {
        let wwn = Pattern::from_perl("(?^:^(0x)[0-9a-fA-F]{16})").unwrap();
        assert!(wwn.regex.is_match("0x0123456789abcdef"));
        assert!(!wwn.regex.is_match("0x0123"));
        let vendor = Pattern::from_perl(r"[A-Za-z0-9\-_\s]{,8}").unwrap();
        assert!(vendor.regex.is_match("") && vendor.regex.is_match("QEMU HD"));
        assert!(!vendor.regex.is_match("123456789"));
        let snap = Pattern::from_perl(r"(?^i:[a-z0-9_\-]{1,40})").unwrap();
        assert!(snap.regex.is_match("Before-Migration") && !snap.regex.is_match("a b"));
        let url = Pattern::from_perl("https?://.*").unwrap();
        assert!(
            url.regex.is_match("https://x/\n"),
            "Perl's $ before a final newline"
        );
        assert!(!url.regex.is_match("ftp://x"));
    }

    #[test]
    fn numbered_names() {
        assert_eq!(split_index("scsi30"), Some(("scsi", 30)));
        assert_eq!(split_index("scsi01"), None);
        assert_eq!(split_index("scsi"), None);
        assert_eq!(split_index("7"), None);
        let mut props = Props::default();
        props.insert("scsi[n]", Prop::default()).unwrap();
        props.insert("efidisk0", Prop::default()).unwrap();
        assert!(props.get("scsi30").is_some() && props.get("scsi31").is_none());
        assert!(props.is_indexed("scsi0") && !props.is_indexed("efidisk0"));
        assert_eq!(props.expanded().count(), 32);
        assert_eq!(
            props.insert("bogus[n]", Prop::default()).unwrap_err(),
            "bogus[n]: no range known for this numbered parameter"
        );
    }
}
