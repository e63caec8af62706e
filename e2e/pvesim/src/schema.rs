//! Parameter validation as PVE does it (pve-common `PVE::JSONSchema`): every API method declares its
//! parameters, and a request is checked against them before the method runs. The checks run in PVE's
//! order (type, format, pattern, maxLength, minLength, maximum, minimum, enum) and produce PVE's
//! messages, so a client sees the same 400 `errors` a real node sends. Property strings
//! (`local:0,import-from=...`, `virtio=...,bridge=vmbr0`) are parsed by [`parse_property_string`].

use std::collections::BTreeMap;

use regex::Regex;

use crate::error::{Error, ParamErrors};

/// Request parameters: name to (string) value, as PVE receives them.
pub type Params = BTreeMap<String, String>;

/// JSON schema types used by the PVE API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// Any string.
    String,
    /// `^[+-]?\d+$`.
    Integer,
    /// A decimal number.
    Number,
    /// `0` or `1` (property strings also take on/off, yes/no, true/false).
    Boolean,
}

/// A value format beyond the type.
#[derive(Clone, Copy)]
pub enum Format {
    /// A registered format with a verifier that returns PVE's `die` message.
    Verify(fn(&str) -> Result<(), String>),
    /// A property string with its own schema.
    PropertyString(&'static [(&'static str, Prop)]),
}

/// One property of a schema.
#[derive(Clone, Copy)]
pub struct Prop {
    /// Value type.
    pub ty: Type,
    /// May be absent.
    pub optional: bool,
    /// Format check.
    pub format: Option<Format>,
    /// Regex the whole value must match.
    pub pattern: Option<&'static str>,
    /// Longest allowed value.
    pub max_length: Option<usize>,
    /// Shortest allowed value.
    pub min_length: Option<usize>,
    /// Smallest number.
    pub minimum: Option<i64>,
    /// Largest number.
    pub maximum: Option<i64>,
    /// Allowed values.
    pub enumeration: Option<&'static [&'static str]>,
    /// Another property that must be present with this one.
    pub requires: Option<&'static str>,
    /// In a property string: the key of a value given without `key=`.
    pub default_key: bool,
    /// In a property string: this key is another name of the given key.
    pub alias: Option<&'static str>,
}

impl Prop {
    const fn new(ty: Type) -> Self {
        Prop {
            ty,
            optional: false,
            format: None,
            pattern: None,
            max_length: None,
            min_length: None,
            minimum: None,
            maximum: None,
            enumeration: None,
            requires: None,
            default_key: false,
            alias: None,
        }
    }
    /// A required string.
    pub const fn string() -> Self {
        Prop::new(Type::String)
    }
    /// A required integer.
    pub const fn integer() -> Self {
        Prop::new(Type::Integer)
    }
    /// A required number.
    pub const fn number() -> Self {
        Prop::new(Type::Number)
    }
    /// A required boolean.
    pub const fn boolean() -> Self {
        Prop::new(Type::Boolean)
    }
    /// Makes the property optional.
    pub const fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
    /// Adds a verifier format.
    pub const fn verify(mut self, f: fn(&str) -> Result<(), String>) -> Self {
        self.format = Some(Format::Verify(f));
        self
    }
    /// Makes the value a property string with the given schema.
    pub const fn property_string(mut self, schema: &'static [(&'static str, Prop)]) -> Self {
        self.format = Some(Format::PropertyString(schema));
        self
    }
    /// Adds a regex (anchored at both ends, as PVE does).
    pub const fn pattern(mut self, pattern: &'static str) -> Self {
        self.pattern = Some(pattern);
        self
    }
    /// Adds a maximum length.
    pub const fn max_length(mut self, max: usize) -> Self {
        self.max_length = Some(max);
        self
    }
    /// Adds a minimum length.
    pub const fn min_length(mut self, min: usize) -> Self {
        self.min_length = Some(min);
        self
    }
    /// Adds a numeric range.
    pub const fn range(mut self, min: Option<i64>, max: Option<i64>) -> Self {
        self.minimum = min;
        self.maximum = max;
        self
    }
    /// Restricts to a list of values.
    pub const fn one_of(mut self, values: &'static [&'static str]) -> Self {
        self.enumeration = Some(values);
        self
    }
    /// Requires another property.
    pub const fn requires(mut self, other: &'static str) -> Self {
        self.requires = Some(other);
        self
    }
    /// Marks the default key of a property string.
    pub const fn default_key(mut self) -> Self {
        self.default_key = true;
        self
    }
    /// An alias of another key (property strings).
    pub const fn alias(target: &'static str) -> Self {
        let mut p = Prop::new(Type::String).optional();
        p.alias = Some(target);
        p
    }
}

/// The parameters of one API method: fixed properties plus, for VM configs, a lookup for the
/// numbered keys (`scsi0`, `net1`, ...).
pub struct Schema {
    /// Fixed properties.
    pub props: Vec<(&'static str, Prop)>,
    /// Properties whose name is computed (numbered devices).
    pub dynamic: Option<fn(&str) -> Option<Prop>>,
}

impl Schema {
    /// A schema of fixed properties.
    pub fn new(props: Vec<(&'static str, Prop)>) -> Self {
        Schema {
            props,
            dynamic: None,
        }
    }

    /// Adds numbered properties.
    pub fn with_dynamic(mut self, lookup: fn(&str) -> Option<Prop>) -> Self {
        self.dynamic = Some(lookup);
        self
    }

    fn lookup(&self, key: &str) -> Option<Prop> {
        self.props
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, p)| *p)
            .or_else(|| self.dynamic.and_then(|f| f(key)))
    }

    /// Validates `params` (no additional properties allowed, as for every PVE API method).
    pub fn validate(&self, params: &Params) -> Result<(), Error> {
        let mut errors = ParamErrors::new();
        for (name, prop) in &self.props {
            check_prop(
                params.get(*name).map(String::as_str),
                prop,
                name,
                &mut errors,
            );
        }
        for (name, value) in params {
            match self.lookup(name) {
                Some(prop) => {
                    if self.props.iter().all(|(n, _)| n != name) {
                        check_prop(Some(value), &prop, name, &mut errors);
                    }
                    if let Some(required) = prop.requires
                        && !params.contains_key(required)
                    {
                        add_error(
                            &mut errors,
                            required,
                            &format!("missing property required by '{name}'"),
                        );
                    }
                }
                None => add_error(&mut errors, name, NOT_IN_SCHEMA),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Param(errors))
        }
    }
}

const NOT_IN_SCHEMA: &str =
    "property is not defined in schema and the schema does not allow additional properties";

/// `add_error`: a second message for the same path is joined with a literal `\n`, as PVE does.
fn add_error(errors: &mut ParamErrors, path: &str, message: &str) {
    let path = if path.is_empty() { "_root" } else { path };
    errors
        .entry(path.to_string())
        .and_modify(|m| {
            m.push_str("\\n");
            m.push_str(message)
        })
        .or_insert_with(|| message.to_string());
}

/// PVE's `is_integer`.
pub fn is_integer(value: &str) -> bool {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// PVE's `is_number` (decimal, optional exponent).
pub fn is_number(value: &str) -> bool {
    static RE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"^[+-]?(\d+\.\d*|\d*\.\d+|\d+)([eE][+-]?\d+)?$").expect("number regex")
    });
    RE.is_match(value)
}

/// PVE's `parse_boolean`.
pub fn parse_boolean(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

fn check_prop(value: Option<&str>, prop: &Prop, path: &str, errors: &mut ParamErrors) {
    if prop.alias.is_some() {
        return;
    }
    let Some(value) = value else {
        if !prop.optional {
            add_error(errors, path, "property is missing and it is not optional");
        }
        return;
    };
    let type_ok = match prop.ty {
        Type::String => true,
        Type::Boolean => value == "0" || value == "1",
        Type::Integer => is_integer(value),
        Type::Number => is_number(value),
    };
    if !type_ok {
        let name = match prop.ty {
            Type::String => "string",
            Type::Boolean => "boolean",
            Type::Integer => "integer",
            Type::Number => "number",
        };
        add_error(
            errors,
            path,
            &format!("type check ('{name}') failed - got '{value}'"),
        );
        return;
    }
    if let Some(format) = prop.format {
        let result = match format {
            Format::Verify(f) => f(value),
            Format::PropertyString(schema) => {
                parse_property_string(schema, value, path).map(|_| ())
            }
        };
        if let Err(message) = result {
            add_error(errors, path, &format!("invalid format - {message}"));
            return;
        }
    }
    if let Some(pattern) = prop.pattern
        && !Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(value))
    {
        add_error(errors, path, "value does not match the regex pattern");
        return;
    }
    if let Some(max) = prop.max_length
        && value.chars().count() > max
    {
        add_error(
            errors,
            path,
            &format!("value may only be {max} characters long"),
        );
        return;
    }
    if let Some(min) = prop.min_length
        && value.chars().count() < min
    {
        add_error(
            errors,
            path,
            &format!("value must be at least {min} characters long"),
        );
        return;
    }
    if is_number(value)
        && let Ok(number) = value.parse::<f64>()
    {
        if let Some(max) = prop.maximum
            && number > max as f64
        {
            add_error(
                errors,
                path,
                &format!("value must have a maximum value of {max}"),
            );
            return;
        }
        if let Some(min) = prop.minimum
            && number < min as f64
        {
            add_error(
                errors,
                path,
                &format!("value must have a minimum value of {min}"),
            );
            return;
        }
    }
    if let Some(values) = prop.enumeration
        && !values.contains(&value)
    {
        add_error(
            errors,
            path,
            &format!(
                "value '{value}' does not have a value in the enumeration '{}'",
                values.join(", ")
            ),
        );
    }
}

/// Parses a property string (`parse_property_string`): comma-separated `key=value` parts, a part
/// without `=` going to the schema's default key. Errors are PVE's `die` texts; checks of the parsed
/// keys give `format error` followed by one `<path>.<key>: message` line per key.
pub fn parse_property_string(
    schema: &'static [(&'static str, Prop)],
    data: &str,
    path: &str,
) -> Result<BTreeMap<String, String>, String> {
    let find = |key: &str| schema.iter().find(|(k, _)| *k == key).map(|(_, p)| *p);
    let mut result = BTreeMap::new();
    let mut default_key: Option<&str> = None;
    for part in data.split(',') {
        if part.trim().is_empty() {
            continue;
        }
        if let Some((key, value)) = part
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        {
            let mut key = key.to_string();
            if result.contains_key(&key) {
                return Err(format!(
                    "duplicate key in comma-separated list property: {key}\n"
                ));
            }
            let mut prop = find(&key);
            if let Some(target) = prop.and_then(|p| p.alias) {
                key = target.to_string();
                prop = find(target);
                if result.contains_key(&key) {
                    return Err(format!("key '{key}' is already defined (via alias)\n"));
                }
            }
            let Some(prop) = prop else {
                return Err(format!(
                    "invalid key in comma-separated list property: {key}\n"
                ));
            };
            let value = match prop.ty {
                Type::Boolean => match parse_boolean(value) {
                    Some(b) => (b as u8).to_string(),
                    None => value.to_string(),
                },
                _ => value.to_string(),
            };
            result.insert(key, value);
        } else if !part.contains('=') {
            if let Some(key) = default_key {
                return Err(format!(
                    "duplicate key in comma-separated list property: {key}\n"
                ));
            }
            let Some((key, _)) = schema.iter().find(|(_, p)| p.default_key) else {
                return Err(
                    "value without key, but schema does not define a default key\n".to_string(),
                );
            };
            default_key = Some(key);
            if result.contains_key(*key) {
                return Err(format!(
                    "duplicate key in comma-separated list property: {key}\n"
                ));
            }
            result.insert(key.to_string(), part.to_string());
        } else {
            return Err("missing key in comma-separated list property\n".to_string());
        }
    }
    let mut errors = ParamErrors::new();
    let sub = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    for (key, prop) in schema {
        check_prop(
            result.get(*key).map(String::as_str),
            prop,
            &sub(key),
            &mut errors,
        );
    }
    for key in result.keys() {
        if find(key).is_none() {
            add_error(&mut errors, &sub(key), NOT_IN_SCHEMA);
        }
    }
    if errors.is_empty() {
        Ok(result)
    } else {
        let mut message = String::from("format error\n");
        for (key, text) in errors {
            message.push_str(&format!("{key}: {text}\n"));
        }
        Err(message)
    }
}

// ---------------------------------------------------------------------------------------------------
// registered formats (the verifiers of pve-common, pve-storage and qemu-server)
// ---------------------------------------------------------------------------------------------------

/// `pve-vmid`.
pub fn verify_vmid(value: &str) -> Result<(), String> {
    let ok = value.len() >= 3
        && value.len() <= 9
        && !value.starts_with('0')
        && value.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err("value does not look like a valid VM ID\n".to_string())
    }
}

/// `pve-node`.
pub fn verify_node(value: &str) -> Result<(), String> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err("value does not look like a valid node name\n".to_string())
    }
}

fn is_dns_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
}

/// `dns-name` (the VM name).
pub fn verify_dns_name(value: &str) -> Result<(), String> {
    if value.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err("value does not look like a valid DNS name\n".to_string())
    }
}

/// `pve-storage-id`.
pub fn verify_storage_id(value: &str) -> Result<(), String> {
    parse_id(value, "storage")
}

fn parse_id(value: &str, kind: &str) -> Result<(), String> {
    if value.chars().count() < 2 {
        return Err(format!(
            "{kind} ID '{value}' cannot be shorter than 2 characters\n"
        ));
    }
    if !is_storage_like_id(value) {
        return Err(format!("{kind} ID '{value}' contains illegal characters\n"));
    }
    Ok(())
}

/// `^[a-z][a-z0-9\-\_\.]*[a-z0-9]$` (case-insensitive): storage IDs, and the storage part of volume IDs.
pub fn is_storage_like_id(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `pve-configid` (snapshot names).
pub fn verify_configid(value: &str) -> Result<(), String> {
    let b = value.as_bytes();
    let ok = b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid configuration ID '{value}'\n"))
    }
}

/// `pve-volume-id`.
pub fn verify_volume_id(value: &str) -> Result<(), String> {
    match value.split_once(':') {
        Some((store, rest)) if is_storage_like_id(store) && !rest.is_empty() => Ok(()),
        _ => Err(format!("unable to parse volume ID '{value}'\n")),
    }
}

/// `pve-volume-id-or-qm-path` (the `file` of a drive).
pub fn verify_volume_id_or_qm_path(value: &str) -> Result<(), String> {
    if value == "none" || value == "cdrom" {
        return Ok(());
    }
    verify_volume_id_or_absolute_path(value)
}

/// `pve-volume-id-or-absolute-path` (`import-from`).
pub fn verify_volume_id_or_absolute_path(value: &str) -> Result<(), String> {
    if value.starts_with('/') {
        Ok(())
    } else {
        verify_volume_id(value)
    }
}

/// `pve-storage-content`.
pub fn verify_content(value: &str) -> Result<(), String> {
    const DIR_CONTENT: &[&str] = &[
        "images", "rootdir", "vztmpl", "iso", "backup", "snippets", "none", "import",
    ];
    if DIR_CONTENT.contains(&value) {
        Ok(())
    } else {
        Err(format!("invalid content type '{value}'\n"))
    }
}

/// `disk-size`.
pub fn verify_disk_size(value: &str) -> Result<(), String> {
    if parse_size(value).is_some() {
        Ok(())
    } else {
        Err(format!(
            "value does not look like a valid disk size: {value}\n"
        ))
    }
}

/// `parse_size`: `<number>[KMGT][iB]` to bytes.
pub fn parse_size(value: &str) -> Option<u64> {
    static RE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"^(\d+(?:\.\d+)?)([KMGT](?:iB)?)?$").expect("size regex")
    });
    let caps = RE.captures(value)?;
    let number: f64 = caps[1].parse().ok()?;
    let factor: f64 = match caps.get(2).map(|m| &m.as_str()[..1]) {
        None => 1.0,
        Some("K") => 1024.0,
        Some("M") => 1024.0 * 1024.0,
        Some("G") => 1024.0 * 1024.0 * 1024.0,
        Some(_) => 1024.0 * 1024.0 * 1024.0 * 1024.0,
    };
    Some((number * factor) as u64)
}

/// `urlencoded` (drive serials).
pub fn verify_urlencoded(value: &str) -> Result<(), String> {
    let ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-%_.!~*'()".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid urlencoded string: {value}\n"))
    }
}

/// `pve-tag-list` (`;`, `,` or space separated tags).
pub fn verify_tag_list(value: &str) -> Result<(), String> {
    static RE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"^(?i)[a-z0-9_][a-z0-9_\-+.]*$").expect("tag regex")
    });
    for tag in value.split([';', ',', ' ']).filter(|t| !t.is_empty()) {
        if !RE.is_match(tag) {
            return Err("invalid characters in tag\n".to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    static FMT: &[(&str, Prop)] = &[
        (
            "file",
            Prop::string()
                .default_key()
                .verify(verify_volume_id_or_qm_path),
        ),
        ("volume", Prop::alias("file")),
        (
            "cache",
            Prop::string().optional().one_of(&["none", "writeback"]),
        ),
        ("ssd", Prop::boolean().optional()),
    ];

    #[test]
    fn property_string_parses_default_key_alias_and_booleans() {
        let parsed = parse_property_string(FMT, "local:0,ssd=on,cache=none", "scsi0").unwrap();
        assert_eq!(parsed["file"], "local:0");
        assert_eq!(parsed["ssd"], "1");
        let parsed = parse_property_string(FMT, "volume=local:100/x.raw", "scsi0").unwrap();
        assert_eq!(parsed["file"], "local:100/x.raw");
    }

    #[test]
    fn property_string_errors_are_pves() {
        assert_eq!(
            parse_property_string(FMT, "local:0,foo=bar", "scsi0").unwrap_err(),
            "invalid key in comma-separated list property: foo\n"
        );
        assert_eq!(
            parse_property_string(FMT, "local:0,cache=bad", "scsi0").unwrap_err(),
            "format error\nscsi0.cache: value 'bad' does not have a value in the enumeration 'none, writeback'\n"
        );
        assert_eq!(
            parse_property_string(FMT, "cache=none", "scsi0").unwrap_err(),
            "format error\nscsi0.file: property is missing and it is not optional\n"
        );
    }

    #[test]
    fn schema_checks_in_pve_order() {
        let schema = Schema::new(vec![
            (
                "vmid",
                Prop::integer()
                    .verify(verify_vmid)
                    .range(Some(100), Some(999_999_999)),
            ),
            ("name", Prop::string().optional().verify(verify_dns_name)),
        ]);
        let params = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let Err(Error::Param(e)) = schema.validate(&params(&[("vmid", "abc")])) else {
            panic!()
        };
        assert_eq!(e["vmid"], "type check ('integer') failed - got 'abc'");
        let Err(Error::Param(e)) = schema.validate(&params(&[("vmid", "99")])) else {
            panic!()
        };
        assert_eq!(
            e["vmid"],
            "invalid format - value does not look like a valid VM ID\n"
        );
        let Err(Error::Param(e)) = schema.validate(&params(&[("vmid", "100"), ("bogus", "1")]))
        else {
            panic!()
        };
        assert_eq!(e["bogus"], NOT_IN_SCHEMA);
        let Err(Error::Param(e)) = schema.validate(&params(&[])) else {
            panic!()
        };
        assert_eq!(e["vmid"], "property is missing and it is not optional");
        assert!(
            schema
                .validate(&params(&[("vmid", "100"), ("name", "db-1.example")]))
                .is_ok()
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32G"), Some(32 << 30));
        assert_eq!(parse_size("1.5K"), Some(1536));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("12X"), None);
    }
}
