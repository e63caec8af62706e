//! The simulator's routes against PVE 9.1.3's schema file (`schema/pve-api-9.1.3.json`):
//!
//! * every route of `pvesim::api::ROUTES` (the table the router is built from) is a method of
//!   the file, or an exception of `schema::amend::ROUTES`; its path parameters and the
//!   parameters its handler reads are declared there; every format it names is known;
//! * every route refuses an unknown parameter with PVE's 400, through the router;
//! * for every declared parameter (and every key of a property-string parameter), the validator
//!   accepts the values the declaration allows and refuses bad enums, patterns, types, lengths
//!   and out-of-range numbers with PVE's messages.
//!
//! The figures are printed (`--nocapture`): `schema check: N routes, M parameters ...`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use common::{ADMIN, call, send, sim};
use http::{Request, StatusCode};
use pvesim::api::{ROUTES, Route};
use pvesim::schema::{
    self, Format, NOT_IN_SCHEMA, Origin, Params, Prop, Props, Type, amend, api, formats,
};

/// Properties of a method and, nested, of its property-string parameters (`scsi[n].cache`).
fn walk<'a>(prefix: &str, props: &'a Props, out: &mut Vec<(String, &'a Prop)>) {
    for (name, prop) in props.declared() {
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}.{name}")
        };
        if let Some(Format::Object(keys)) = &prop.format {
            walk(&path, keys, out);
        }
        out.push((path, prop));
    }
}

#[derive(Default)]
struct Figures {
    file: usize,
    exceptions: usize,
    declared: usize,
    expanded: usize,
    keys: usize,
    reads: usize,
    formats: BTreeSet<String>,
}

fn check_route(route: &Route, figures: &mut Figures, problems: &mut Vec<String>) {
    let name = format!("{} {}", route.verb.as_str(), route.path);
    let Some(method) = api().method(route.verb, route.path) else {
        problems.push(format!(
            "{name}: not in {} and not a listed exception",
            schema::FILE_NAME
        ));
        return;
    };
    match method.origin {
        Origin::File => figures.file += 1,
        Origin::Exception(reason) if !reason.is_empty() => figures.exceptions += 1,
        Origin::Exception(_) => problems.push(format!("{name}: exception without a reason")),
    }
    let params = &method.params;
    for read in route
        .path_params()
        .into_iter()
        .chain(route.reads.iter().copied())
    {
        if params.get(read).is_none() {
            problems.push(format!(
                "{name}: reads '{read}', which the schema does not declare"
            ));
        }
    }
    figures.reads += route.reads.len() + route.path_params().len();
    figures.declared += params.declared().count();
    figures.expanded += params.expanded().count();
    let mut all = Vec::new();
    walk("", params, &mut all);
    figures.keys += all.iter().filter(|(n, _)| n.contains('.')).count();
    for (path, prop) in all {
        if let Some(Format::Named(format)) = &prop.format {
            figures.formats.insert(format.clone());
            if formats::known(formats::split_suffix(format).0).is_none() {
                problems.push(format!(
                    "{name}: {path} has format '{format}', which is not known"
                ));
            }
        }
    }
}

#[test]
fn every_route_is_a_method_of_the_schema_file() {
    let mut figures = Figures::default();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for route in ROUTES {
        if !seen.insert((route.verb, route.path)) {
            problems.push(format!(
                "{} {} is in ROUTES twice",
                route.verb.as_str(),
                route.path
            ));
        }
        check_route(route, &mut figures, &mut problems);
    }
    for exception in amend::ROUTES {
        if !ROUTES
            .iter()
            .any(|r| r.verb.as_str() == exception.verb && r.path == exception.path)
        {
            problems.push(format!(
                "exception {} {} is not served",
                exception.verb, exception.path
            ));
        }
    }
    println!(
        "schema check: {} routes ({} methods of {}, {} listed as exceptions), {} parameters declared \
         ({} with [n] expanded, plus {} property-string keys), {} read by handlers, {} formats",
        ROUTES.len(),
        figures.file,
        schema::FILE_NAME,
        figures.exceptions,
        figures.declared,
        figures.expanded,
        figures.keys,
        figures.reads,
        figures.formats.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(figures.file + figures.exceptions, ROUTES.len());
}

/// A value of a path parameter that passes verification.
fn path_value(name: &str) -> &'static str {
    match name {
        "node" => "pve1",
        "vmid" => "100",
        "snapname" => "s1",
        "storage" => "local",
        "volume" => "local:100/vm-100-disk-0.qcow2",
        "upid" => "UPID:pve1:00001234:00ABCDEF:65432100:qmcreate:100:root@pam!virtrigaud:",
        other => panic!("no sample value for path parameter {other}"),
    }
}

fn concrete_path(route: &Route) -> String {
    let mut path = route.path.to_string();
    for name in route.path_params() {
        path = path.replace(&format!("{{{name}}}"), path_value(name));
    }
    path
}

/// An upload whose form has an undeclared field.
fn upload_with_bogus_field(path: &str) -> Request<Body> {
    let boundary = "pvesimschemaboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\nimport\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"bogus_param\"\r\n\r\n1\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"filename\"; filename=\"a.raw\"\r\n\
         Content-Type: application/octet-stream\r\n\r\nxyz\r\n--{boundary}--\r\n"
    );
    Request::builder()
        .method("POST")
        .uri(format!("/api2/json{path}"))
        .header("authorization", common::auth_header(ADMIN))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn every_route_refuses_an_unknown_parameter() {
    let sim = sim();
    for route in ROUTES {
        let path = concrete_path(route);
        let answer = if route.path.ends_with("/upload") {
            send(&sim, upload_with_bogus_field(&path)).await
        } else {
            let mut params = base_params(&route.method().params);
            params.retain(|name, _| !route.path_params().contains(&name.as_str()));
            params.insert("bogus_param".into(), "1".into());
            let pairs: Vec<(&str, &str)> = params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            call(&sim, route.verb.as_str(), &path, Some(ADMIN), &pairs).await
        };
        let what = format!("{} {path}", route.verb.as_str());
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{what}: {:?}",
            answer.body
        );
        assert_eq!(
            answer.body["message"], "Parameter verification failed.\n",
            "{what}"
        );
        let errors = answer.body["errors"].as_object().unwrap();
        assert_eq!(errors.len(), 1, "{what}: {errors:?}");
        assert_eq!(errors["bogus_param"], NOT_IN_SCHEMA, "{what}");
    }
    assert_eq!(
        std::fs::read_dir(sim.data.tmp_dir()).unwrap().count(),
        0,
        "the refused upload's spool file is removed"
    );
}

/// Accepted and refused examples of every pattern the served methods declare.
const PATTERNS: &[(&str, &str, &str)] = &[
    (r"(ide|sata|scsi|virtio)\d+", "scsi0", "nvme0"),
    ("(?^:^(0x)[0-9a-fA-F]{16})", "0x0123456789abcdef", "0x0123"),
    (r"[a-zA-Z0-9\-]+", "shm-1", "shm_1"),
    (
        r"(pc|pc(-i440fx)?-\d+(\.\d+)+(\+pve\d+)?(\.pxe)?|q35|pc-q35-\d+(\.\d+)+(\+pve\d+)?(\.pxe)?|virt(?:-\d+(\.\d+)+)?(\+pve\d+)?)",
        "pc-q35-9.2+pve1",
        "q36",
    ),
    (r"(?^:\d+(?:-\d+)?(?:;\d+(?:-\d+)?)*)", "10;20-30", "10;"),
    (
        r"/dev/parport\d+|/dev/usb/lp\d+",
        "/dev/usb/lp0",
        "/dev/lp0",
    ),
    (
        r"[A-Za-z0-9\-_\s]{,16}",
        "QEMU HARDDISK",
        "ABCDEFGHIJKLMNOPQ",
    ),
    (r"[A-Za-z0-9\-_\s]{,8}", "QEMU", "QEMU-VENDOR"),
    ("(/dev/.+|socket)", "socket", "/tmp/socket"),
    (
        r"(now|\d{4}-\d{1,2}-\d{1,2}(T\d{1,2}:\d{1,2}:\d{1,2})?)",
        "2026-01-02T03:04:05",
        "yesterday",
    ),
    (
        r"(?^:(?:(?:(?^:(0x)?([0-9A-Fa-f]{4}):(0x)?([0-9A-Fa-f]{4})))|(?:(?^:(\d+)\-(\d+(\.\d+)*)))|[Ss][Pp][Ii][Cc][Ee]))",
        "0x1234:abcd",
        "usb1",
    ),
    (
        "(?:[a-fA-F0-9]{8}(?:-[a-fA-F0-9]{4}){3}-[a-fA-F0-9]{12}|[01])",
        "0c3e6ed8-2f3c-4e07-a1c7-3e9c1a3c5a10",
        "2",
    ),
    (
        r"net\d+=\d+(,net\d+=\d+)*",
        "net0=1500,net1=9000",
        "net0:1500",
    ),
    (
        "/var/tmp/pveupload-[0-9a-f]+",
        "/var/tmp/pveupload-0af3",
        "/tmp/pveupload-0af3",
    ),
    (
        "https?://.*",
        "https://s3.example/disk.qcow2",
        "ftp://s3.example/disk.qcow2",
    ),
    ("[acdn]{1,4}", "cdn", "cdnx"),
];

fn pattern_examples(prop: &Prop) -> (&'static str, &'static str) {
    let perl = &prop.pattern.as_ref().expect("a pattern").perl;
    let (_, ok, bad) = PATTERNS
        .iter()
        .find(|(p, _, _)| p == perl)
        .unwrap_or_else(|| panic!("no examples for pattern {perl}: add them to PATTERNS"));
    (ok, bad)
}

/// A value that passes the declaration.
fn sample(prop: &Prop) -> String {
    if let Some(values) = &prop.enumeration {
        return values[0].clone();
    }
    if let Some(Format::Named(format)) = &prop.format {
        if let Some(keys) = api().named_format(format) {
            return property_string(keys, &BTreeMap::new());
        }
        let value = match formats::split_suffix(format).0 {
            "pve-node" => "pve1",
            "pve-vmid" => "100",
            "pve-storage-id" => "local",
            "pve-configid" => "s1",
            "pve-volume-id" | "pve-volume-id-or-qm-path" | "pve-volume-id-or-absolute-path" => {
                "local:100/vm-100-disk-0.qcow2"
            }
            "mac-addr" => "BC:24:11:00:00:01",
            "disk-size" => "1G",
            "dns-name" => "vm-1.example",
            "pve-bridge-id" => "vmbr0",
            "pve-qm-bootdisk" => "scsi0",
            "pve-storage-content" => "images",
            "pve-task-status-type" => "ok",
            "pve-tag" => "migrated",
            _ => "x",
        };
        return value.to_string();
    }
    if let Some(Format::Object(keys)) = &prop.format {
        return property_string(keys, &BTreeMap::new());
    }
    if prop.pattern.is_some() {
        return pattern_examples(prop).0.to_string();
    }
    match prop.ty {
        Some(Type::Integer) | Some(Type::Number) => {
            let n = prop
                .minimum
                .unwrap_or(1.0)
                .max(prop.maximum.map_or(f64::MIN, |m| m.min(1.0)));
            schema_number(n)
        }
        Some(Type::Boolean) => "1".to_string(),
        _ => "x".to_string(),
    }
}

fn schema_number(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// A property string with the default key and every required key (samples), plus `extra`.
fn property_string(keys: &Props, extra: &BTreeMap<&str, String>) -> String {
    let mut parts = Vec::new();
    for (name, prop) in keys.fixed() {
        if extra.contains_key(name) {
            continue;
        }
        if prop.default_key {
            parts.insert(0, sample(prop));
        } else if !prop.optional && prop.alias.is_none() {
            parts.push(format!("{name}={}", sample(prop)));
        }
    }
    parts.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
    parts.join(",")
}

/// A small deterministic generator for the random cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `[min, max]`.
    fn between(&mut self, min: i64, max: i64) -> i64 {
        let span = (max - min) as u64 + 1;
        min + (self.next() % span) as i64
    }

    fn name(&mut self) -> String {
        (0..8)
            .map(|_| (b'a' + (self.next() % 26) as u8) as char)
            .collect()
    }
}

/// The validator's answer for one parameter (None: accepted).
fn verdict(props: &Props, base: &Params, name: &str, value: &str) -> Option<String> {
    let mut params = base.clone();
    params.insert(name.to_string(), value.to_string());
    if let Some(required) = props.get(name).and_then(|p| p.requires.clone()) {
        params
            .entry(required.clone())
            .or_insert_with(|| sample(props.get(&required).unwrap()));
    }
    match schema::validate(props, &params) {
        Ok(()) => None,
        Err(pvesim::Error::Param(errors)) => Some(
            errors
                .get(name)
                .cloned()
                .unwrap_or_else(|| format!("errors on other parameters: {errors:?}")),
        ),
        Err(other) => panic!("{other}"),
    }
}

/// The cases of one declaration: (value, expected message or None for accepted). In a property
/// string (`keyed`), booleans also take on/off, yes/no and true/false.
fn cases(prop: &Prop, keyed: bool, rng: &mut Rng) -> Vec<(String, Option<String>)> {
    let mut cases = vec![(sample(prop), None)];
    let plain = prop.format.is_none();
    if let Some(values) = prop.enumeration.as_ref().filter(|_| plain) {
        cases.extend(values.iter().map(|v| (v.clone(), None)));
        let message = format!(
            "value 'bogus-value' does not have a value in the enumeration '{}'",
            values.join(", ")
        );
        cases.push(("bogus-value".into(), Some(message)));
        return cases;
    }
    if prop.pattern.is_some() && plain {
        let (ok, bad) = pattern_examples(prop);
        cases.push((ok.into(), None));
        cases.push((
            bad.into(),
            Some("value does not match the regex pattern".into()),
        ));
    }
    match prop.ty {
        Some(Type::Boolean) if keyed => {
            cases
                .extend(["on", "off", "yes", "no", "true", "false", "0"].map(|v| (v.into(), None)));
            cases.push((
                "maybe".into(),
                Some("type check ('boolean') failed - got 'maybe'".into()),
            ));
        }
        Some(Type::Boolean) => {
            cases.push(("0".into(), None));
            cases.push((
                "yes".into(),
                Some("type check ('boolean') failed - got 'yes'".into()),
            ));
        }
        Some(Type::Integer) if plain => cases.extend(number_cases(prop, rng, "integer")),
        Some(Type::Number) if plain => cases.extend(number_cases(prop, rng, "number")),
        Some(Type::String) if plain && prop.pattern.is_none() => {
            if let Some(max) = prop.max_length {
                cases.push(("a".repeat(max), None));
                let message = format!("value may only be {max} characters long");
                cases.push(("a".repeat(max + 1), Some(message)));
            }
        }
        _ => {}
    }
    cases
}

fn number_cases(prop: &Prop, rng: &mut Rng, ty: &str) -> Vec<(String, Option<String>)> {
    let min = prop.minimum.map(|m| m as i64);
    let max = prop.maximum.map(|m| m as i64);
    let low = min.unwrap_or(-1000);
    let high = max.unwrap_or(low + 100_000);
    let mut cases: Vec<(String, Option<String>)> = (0..5)
        .map(|_| (rng.between(low, high).to_string(), None))
        .collect();
    cases.push((
        "12abc".into(),
        Some(format!("type check ('{ty}') failed - got '12abc'")),
    ));
    if let Some(max) = max {
        cases.push((
            (max + 1).to_string(),
            Some(format!("value must have a maximum value of {max}")),
        ));
    }
    if let Some(min) = min {
        cases.push((
            (min - 1).to_string(),
            Some(format!("value must have a minimum value of {min}")),
        ));
    }
    cases
}

/// The required parameters of a method with sample values.
fn base_params(props: &Props) -> Params {
    props
        .fixed()
        .filter(|(_, p)| !p.optional)
        .map(|(name, p)| (name.to_string(), sample(p)))
        .collect()
}

#[test]
fn the_validator_accepts_what_the_schema_allows_and_refuses_the_rest() {
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let (mut checked, mut methods) = (0, BTreeSet::new());
    for route in ROUTES {
        let props = &route.method().params;
        if !methods.insert((route.verb, route.path)) {
            continue;
        }
        let base = base_params(props);
        assert_eq!(
            schema::validate(props, &base).map_err(|e| e.to_string()),
            Ok(()),
            "{}",
            route.path
        );
        let unknown = format!("x{}", rng.name());
        assert_eq!(
            verdict(props, &base, &unknown, "1").as_deref(),
            Some(NOT_IN_SCHEMA)
        );
        for (name, prop) in props.expanded().filter(|(n, _)| !base.contains_key(n)) {
            if prop.alias.is_some() || (props.is_indexed(&name) && !name.ends_with('0')) {
                continue;
            }
            for (value, expected) in cases(prop, false, &mut rng) {
                let what = format!("{} {} {name}={value}", route.verb.as_str(), route.path);
                assert_eq!(verdict(props, &base, &name, &value), expected, "{what}");
                checked += 1;
            }
        }
    }
    println!(
        "validator cases: {checked} parameter values over {} methods",
        methods.len()
    );
    assert!(checked > 500, "{checked}");
}

/// The keys of the property-string parameters of VM create (`scsi0`, `net0`, `efidisk0`, ...):
/// a bad key value gives `invalid format - format error` with the key's message.
#[test]
fn property_string_keys_are_checked_like_parameters() {
    let mut rng = Rng(0x0ddb_a11c_0ffe_e000);
    let props = api().qemu_config();
    let base = base_params(props);
    let mut checked = 0;
    for (name, prop) in props
        .expanded()
        .filter(|(n, _)| !props.is_indexed(n) || n.ends_with('0'))
    {
        let Some(Format::Object(keys)) = &prop.format else {
            continue;
        };
        let string = property_string(keys, &BTreeMap::new());
        assert_eq!(
            verdict(props, &base, &name, &string),
            None,
            "{name}={string}"
        );
        let refused = verdict(props, &base, &name, &format!("{string},bogus=1"));
        let expected = "invalid format - invalid key in comma-separated list property: bogus\n";
        assert_eq!(refused.as_deref(), Some(expected), "{name}");
        for (key, key_prop) in keys
            .fixed()
            .filter(|(_, p)| p.alias.is_none() && !p.default_key)
        {
            for (value, expected) in cases(key_prop, true, &mut rng) {
                let extra = BTreeMap::from([(key, value.clone())]);
                let text = property_string(keys, &extra);
                let expected =
                    expected.map(|m| format!("invalid format - format error\n{name}.{key}: {m}\n"));
                assert_eq!(
                    verdict(props, &base, &name, &text),
                    expected,
                    "{name}={text}"
                );
                checked += 1;
            }
        }
    }
    println!("property-string cases: {checked} key values");
    assert!(checked > 300, "{checked}");
}
