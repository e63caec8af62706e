//! pve-common's `PVE::JSONSchema` checks: `check_object`, `check_prop`, `check_type` and
//! `parse_property_string`, in their order and with their messages. A value gets at most one
//! message (the first failing check), except that several messages for one name are joined with a
//! literal `\n`, as `add_error` does.

use std::collections::BTreeMap;

use regex::Regex;

use super::model::{Format, Prop, Props, Type};
use super::{Params, formats};
use crate::error::{Error, ParamErrors};

/// The message for a name the schema does not declare.
pub const NOT_IN_SCHEMA: &str =
    "property is not defined in schema and the schema does not allow additional properties";

/// `PVE::JSONSchema::validate` of request parameters: a 400 with one message per parameter.
pub fn validate(props: &Props, params: &Params) -> Result<(), Error> {
    let mut errors = ParamErrors::new();
    check_object("", props, params, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Param(errors))
    }
}

/// `add_error`: a second message for the same path is joined with a literal `\n`.
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

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `check_object`: every declaration against its value (or its absence), then every value's
/// `requires` and, unless allowed, the undeclared names.
fn check_object(
    path: &str,
    schema: &Props,
    values: &BTreeMap<String, String>,
    errors: &mut ParamErrors,
) {
    for (name, prop) in schema.fixed() {
        check_prop(
            values.get(name).map(String::as_str),
            prop,
            &join(path, name),
            errors,
        );
    }
    for (name, prop) in schema.expanded().filter(|(n, _)| schema.is_indexed(n)) {
        if !prop.optional || values.contains_key(&name) {
            check_prop(
                values.get(&name).map(String::as_str),
                prop,
                &join(path, &name),
                errors,
            );
        }
    }
    for name in values.keys() {
        match schema.get(name) {
            Some(prop) => {
                if let Some(required) = &prop.requires
                    && !values.contains_key(required)
                {
                    let message = format!("missing property required by '{}'", join(path, name));
                    add_error(errors, &join(path, required), &message);
                }
            }
            None if !schema.additional => add_error(errors, &join(path, name), NOT_IN_SCHEMA),
            None => {}
        }
    }
}

/// `check_prop` for a string value (request parameters and property-string values are strings).
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
    if let Err(message) = check_type(prop.ty.as_ref(), value) {
        add_error(errors, path, &message);
        return;
    }
    if let Some(message) = first_failure(prop, value, path) {
        add_error(errors, path, &message);
    }
}

/// `check_type` of a string.
fn check_type(ty: Option<&Type>, value: &str) -> Result<(), String> {
    let ok = match ty {
        None | Some(Type::String) | Some(Type::Other(_)) => true,
        Some(Type::Boolean) => value == "0" || value == "1",
        Some(Type::Integer) => is_integer(value),
        Some(Type::Number) => is_number(value),
    };
    match ty {
        Some(t) if !ok => Err(format!(
            "type check ('{}') failed - got '{value}'",
            t.name()
        )),
        _ => Ok(()),
    }
}

/// Format, pattern, lengths, range and enum, in PVE's order: the first failure's message.
fn first_failure(prop: &Prop, value: &str, path: &str) -> Option<String> {
    if let Some(format) = &prop.format
        && let Err(message) = check_format(format, value, path)
    {
        return Some(format!("invalid format - {message}"));
    }
    if let Some(pattern) = &prop.pattern
        && !pattern.regex.is_match(value)
    {
        return Some("value does not match the regex pattern".to_string());
    }
    let length = value.chars().count();
    if let Some(max) = prop.max_length.filter(|max| length > *max) {
        return Some(format!("value may only be {max} characters long"));
    }
    if let Some(min) = prop.min_length.filter(|min| length < *min) {
        return Some(format!("value must be at least {min} characters long"));
    }
    if let Some(message) = range_failure(prop, value) {
        return Some(message);
    }
    let values = prop.enumeration.as_ref()?;
    (!values.iter().any(|v| v == value)).then(|| {
        format!(
            "value '{value}' does not have a value in the enumeration '{}'",
            values.join(", ")
        )
    })
}

fn range_failure(prop: &Prop, value: &str) -> Option<String> {
    let number: f64 = value.parse().ok().filter(|_| is_number(value))?;
    if let Some(max) = prop.maximum.filter(|max| number > *max) {
        return Some(format!(
            "value must have a maximum value of {}",
            perl_number(max)
        ));
    }
    let min = prop.minimum.filter(|min| number < *min)?;
    Some(format!(
        "value must have a minimum value of {}",
        perl_number(min)
    ))
}

/// A number as Perl prints it (`100`, not `100.0`).
pub fn perl_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// `check_format`: a property string or a registered format.
fn check_format(format: &Format, value: &str, path: &str) -> Result<(), String> {
    match format {
        Format::Object(keys) => parse_property_string(keys, value, path).map(|_| ()),
        Format::Named(name) => formats::check_named(name, value, path),
    }
}

/// PVE's `is_integer`.
pub fn is_integer(value: &str) -> bool {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// PVE's `is_number` (decimal, optional exponent).
pub fn is_number(value: &str) -> bool {
    static RE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"^[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?$").expect("number regex")
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

/// A boolean normalized to `1`/`0` when it parses (`parse_boolean($v) // $v`).
fn normalize(prop: Option<&Prop>, value: &str) -> String {
    match (prop.and_then(|p| p.ty.as_ref()), parse_boolean(value)) {
        (Some(Type::Boolean), Some(b)) => (b as u8).to_string(),
        _ => value.to_string(),
    }
}

/// `parse_property_string`: comma-separated `key=value` parts, a part without `=` going to the
/// default key, aliases resolved (with `keyAlias`); then the keys are checked like parameters
/// and failures give `format error` followed by one `<path>.<key>: <message>` line per key.
pub fn parse_property_string(
    format: &Props,
    data: &str,
    path: &str,
) -> Result<BTreeMap<String, String>, String> {
    let mut result = BTreeMap::new();
    let mut default_key: Option<String> = None;
    for part in data.split(',').filter(|p| !p.trim().is_empty()) {
        match part.split_once('=') {
            Some((key, value)) if !key.is_empty() && !value.is_empty() => {
                add_keyed(format, &mut result, key, value)?
            }
            Some(_) => return Err("missing key in comma-separated list property\n".to_string()),
            None => add_default(format, &mut result, &mut default_key, part)?,
        }
    }
    let mut errors = ParamErrors::new();
    check_object(path, format, &result, &mut errors);
    if errors.is_empty() {
        return Ok(result);
    }
    let mut message = String::from("format error\n");
    for (key, text) in errors {
        message.push_str(&format!("{key}: {text}\n"));
    }
    Err(message)
}

fn add_keyed(
    format: &Props,
    result: &mut BTreeMap<String, String>,
    key: &str,
    value: &str,
) -> Result<(), String> {
    if result.contains_key(key) {
        return Err(format!(
            "duplicate key in comma-separated list property: {key}\n"
        ));
    }
    let mut key = key.to_string();
    let mut prop = format.get(&key);
    if let Some(aliased) = prop
        && let Some(target) = aliased.alias.clone()
    {
        if let Some(key_alias) = &aliased.key_alias {
            if result.contains_key(key_alias) {
                return Err(format!("key alias '{key_alias}' is already defined\n"));
            }
            result.insert(key_alias.clone(), key.clone());
        }
        prop = format.get(&target);
        key = target;
        if result.contains_key(&key) {
            return Err(format!("key '{key}' is already defined (via alias)\n"));
        }
    }
    if prop.is_none() {
        return Err(format!(
            "invalid key in comma-separated list property: {key}\n"
        ));
    }
    result.insert(key, normalize(prop, value));
    Ok(())
}

fn add_default(
    format: &Props,
    result: &mut BTreeMap<String, String>,
    default_key: &mut Option<String>,
    part: &str,
) -> Result<(), String> {
    if let Some(key) = default_key {
        return Err(format!(
            "duplicate key in comma-separated list property: {key}\n"
        ));
    }
    let Some((key, prop)) = format.fixed().find(|(_, p)| p.default_key) else {
        return Err("value without key, but schema does not define a default key\n".to_string());
    };
    *default_key = Some(key.to_string());
    // Perl's `if (!$res->{$default_key})`: a set value that is "" or "0" counts as unset
    if result.get(key).is_some_and(|v| !v.is_empty() && v != "0") {
        return Err(format!(
            "duplicate key in comma-separated list property: {key}\n"
        ));
    }
    result.insert(key.to_string(), normalize(Some(prop), part));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(value: serde_json::Value) -> Props {
        Props::from_parameters(&json!({ "additionalProperties": 0, "properties": value })).unwrap()
    }

    fn drive() -> Props {
        let Some(Format::Object(keys)) = Prop::from_json(&json!({
            "type": "string",
            "format": {
                "file": { "type": "string", "default_key": 1, "format": "pve-volume-id-or-qm-path" },
                "volume": { "alias": "file" },
                "cache": { "type": "string", "optional": 1, "enum": ["none", "writeback"] },
                "ssd": { "type": "boolean", "optional": 1 },
            }
        }))
        .unwrap()
        .format
        else {
            panic!("an object format")
        };
        *keys
    }

    #[test]
    fn property_string_parses_default_key_alias_and_booleans() {
        let parsed = parse_property_string(&drive(), "local:0,ssd=on,cache=none", "scsi0").unwrap();
        assert_eq!(parsed["file"], "local:0");
        assert_eq!(parsed["ssd"], "1");
        let parsed = parse_property_string(&drive(), "volume=local:100/x.raw", "scsi0").unwrap();
        assert_eq!(parsed["file"], "local:100/x.raw");
    }

    #[test]
    fn property_string_errors_are_pves() {
        let cases = [
            (
                "local:0,foo=bar",
                "invalid key in comma-separated list property: foo\n",
            ),
            (
                "local:0,cache=bad",
                "format error\nscsi0.cache: value 'bad' does not have a value in the enumeration 'none, writeback'\n",
            ),
            (
                "cache=none",
                "format error\nscsi0.file: property is missing and it is not optional\n",
            ),
            (
                "local:0,local:1",
                "duplicate key in comma-separated list property: file\n",
            ),
            (
                "local:0,volume=x:y",
                "key 'file' is already defined (via alias)\n",
            ),
            (
                "local:0,=x",
                "missing key in comma-separated list property\n",
            ),
            (
                "local:0,ssd=maybe",
                "format error\nscsi0.ssd: type check ('boolean') failed - got 'maybe'\n",
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_property_string(&drive(), value, "scsi0").unwrap_err(),
                expected,
                "{value}"
            );
        }
    }

    #[test]
    fn key_alias_sets_the_key_to_the_alias_name() {
        let net = props(json!({
            "model": { "type": "string", "default_key": 1, "enum": ["e1000", "virtio"] },
            "macaddr": { "type": "string", "optional": 1, "format": "mac-addr" },
            "virtio": { "alias": "macaddr", "keyAlias": "model" },
        }));
        let parsed = parse_property_string(&net, "virtio=BC:24:11:00:00:01", "net0").unwrap();
        assert_eq!(parsed["model"], "virtio");
        assert_eq!(parsed["macaddr"], "BC:24:11:00:00:01");
        assert_eq!(
            parse_property_string(&net, "e1000,virtio=BC:24:11:00:00:01", "net0").unwrap_err(),
            "key alias 'model' is already defined\n"
        );
        assert_eq!(
            parse_property_string(&net, "virtio=BC:24:11:00:00:01,model=e1000", "net0")
                .unwrap_err(),
            "duplicate key in comma-separated list property: model\n"
        );
    }

    #[test]
    fn parameters_are_checked_in_pve_order() {
        let schema = props(json!({
            "vmid": { "type": "integer", "format": "pve-vmid", "minimum": 100, "maximum": 999999999 },
            "name": { "type": "string", "optional": 1, "format": "dns-name", "maxLength": 8 },
            "checksum": { "type": "string", "optional": 1, "requires": "algorithm" },
            "algorithm": { "type": "string", "optional": 1, "enum": ["md5", "sha1"] },
            "delay": { "type": "integer", "optional": 1, "minimum": 1, "maximum": 30 },
        }));
        let check = |pairs: &[(&str, &str)]| {
            let params = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            match validate(&schema, &params) {
                Ok(()) => BTreeMap::new(),
                Err(Error::Param(errors)) => errors,
                Err(other) => panic!("{other}"),
            }
        };
        let e = check(&[("vmid", "abc")]);
        assert_eq!(e["vmid"], "type check ('integer') failed - got 'abc'");
        let e = check(&[("vmid", "99")]);
        assert_eq!(
            e["vmid"],
            "invalid format - value does not look like a valid VM ID\n"
        );
        let e = check(&[("vmid", "1000000000")]);
        assert_eq!(
            e["vmid"],
            "invalid format - value does not look like a valid VM ID\n"
        );
        let e = check(&[("vmid", "100"), ("delay", "31")]);
        assert_eq!(e["delay"], "value must have a maximum value of 30");
        let e = check(&[("vmid", "100"), ("delay", "0")]);
        assert_eq!(e["delay"], "value must have a minimum value of 1");
        let e = check(&[("vmid", "100"), ("bogus", "1")]);
        assert_eq!(e["bogus"], NOT_IN_SCHEMA);
        let e = check(&[]);
        assert_eq!(e["vmid"], "property is missing and it is not optional");
        let e = check(&[("vmid", "100"), ("name", "db-1.example")]);
        assert_eq!(e["name"], "value may only be 8 characters long");
        let e = check(&[("vmid", "100"), ("checksum", "ab"), ("algorithm", "sha9")]);
        assert_eq!(
            e["algorithm"],
            "value 'sha9' does not have a value in the enumeration 'md5, sha1'"
        );
        let e = check(&[("vmid", "100"), ("checksum", "ab")]);
        assert_eq!(e["algorithm"], "missing property required by 'checksum'");
        assert!(check(&[("vmid", "100"), ("name", "db-1")]).is_empty());
    }

    #[test]
    fn numbers_print_like_perl() {
        assert_eq!(perl_number(100.0), "100");
        assert_eq!(perl_number(0.5), "0.5");
        assert!(is_number("1.") && is_number(".5") && is_number("-1e3") && !is_number("1e"));
        assert!(is_integer("+12") && !is_integer("1.0") && !is_integer("-"));
    }
}
