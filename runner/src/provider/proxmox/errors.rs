//! How Proxmox VE's answers become [`crate::Error`]s, as one explicit table per kind of answer:
//!
//! | answer | error |
//! | --- | --- |
//! | 401 (`No ticket`, `Authentication failed!`) | [`Error::Auth`], naming the Secret keys |
//! | 403 `Permission check failed (<path>, <privilege>)` | [`Error::Auth`], naming path and privilege |
//! | 400 `{"errors": {"<param>": "<msg>"}}` | [`Error::Invalid`], naming every parameter |
//! | 500 `die` message | by [`classify_message`]: [`Error::NotFound`], [`Error::Invalid`], [`Error::NoSpace`], else [`Error::Transient`] |
//! | 501 | [`Error::Invalid`] (the PVE version lacks the call) |
//! | other 5xx, connection errors | [`Error::Transient`] |
//! | a failed task (`exitstatus` != `OK`) | by [`classify_message`], unknown failures terminal ([`Error::Tool`]) |
//!
//! Messages never carry the token: errors name the Secret keys (`token_id`, `token_secret`).

use serde_json::Value;

use crate::Error;

/// What a PVE error message says about retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Something named does not exist (a VM, a storage, a volume, a snapshot).
    NotFound,
    /// The request cannot succeed as it is (a name taken, a feature missing, a wrong value).
    Terminal,
    /// A storage is full.
    NoSpace,
    /// A lock, a timeout, a connection: worth another try.
    Transient,
}

/// Messages of lock contention and timeouts: checked first, since some also contain words of
/// the terminal lists (`can't lock file`).
const TRANSIENT: [&str; 8] = [
    "got timeout",
    "can't lock file",
    "is locked",
    "timeout",
    "temporarily unavailable",
    "connection refused",
    "connection reset",
    "exit code 4",
];

/// Messages of absent objects: `storage 'x' does not exist`, `Configuration file
/// 'nodes/pve1/qemu-server/104.conf' does not exist`, `failed to stat '<path>'` (a volume),
/// `no such VM`.
const NOT_FOUND: [&str; 5] = [
    "does not exist",
    "no such",
    "not found",
    "failed to stat",
    "unable to find",
];

const NO_SPACE: [&str; 3] = ["no space left", "not enough space", "insufficient space"];

/// Messages that another try does not change: `unable to create VM 104 - VM 104 already exists on
/// node 'pve1'`, `snapshot feature is not available`, `you can't take a snapshot if it's a
/// template`, upload and download-url refusals, `checksum mismatch`.
const TERMINAL: [&str; 18] = [
    "already exists",
    "not available",
    "not allowed",
    "not supported",
    "does not support",
    "not configured for",
    "not implemented",
    "invalid",
    "wrong",
    "refusing to",
    "can't upload",
    "not a file based",
    "you can't",
    "is a template",
    "is running",
    "unable to parse",
    "checksum mismatch",
    "permission",
];

/// Classifies a PVE `die` message (a 500 answer or a task's `exitstatus`); `None` when it matches
/// no list (the caller picks the default: transient for answers, terminal for tasks).
pub fn classify_message(message: &str) -> Option<Kind> {
    let m = message.to_ascii_lowercase();
    let has = |list: &[&str]| list.iter().any(|p| m.contains(p));
    if has(&TRANSIENT) {
        Some(Kind::Transient)
    } else if has(&NOT_FOUND) {
        Some(Kind::NotFound)
    } else if has(&NO_SPACE) {
        Some(Kind::NoSpace)
    } else if has(&TERMINAL) {
        Some(Kind::Terminal)
    } else {
        None
    }
}

/// The error for a non-2xx answer of `system` to `what` (`POST /nodes/pve1/qemu`), with the
/// answer's status and body.
pub fn api_error(system: &str, what: &str, status: u16, body: &[u8]) -> Error {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = json
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_string();
    match status {
        401 => Error::Auth {
            system: system.to_string(),
            detail: format!(
                "{what}: the API token was refused (HTTP 401); check the Secret's token_id \
                 (user@realm!name) and token_secret"
            ),
        },
        403 => Error::Auth {
            system: system.to_string(),
            detail: format!("{what}: {}", permission_detail(&message)),
        },
        400 => Error::Invalid(format!(
            "{system}: {what}: {}",
            parameter_detail(&json, &message)
        )),
        501 => Error::Invalid(format!(
            "{system}: {what} is not implemented by this Proxmox VE (HTTP 501{})",
            suffix(&message)
        )),
        500 => die_error(system, what, &message),
        s if s >= 500 => Error::transient(system, format!("{what}: HTTP {s}{}", suffix(&message))),
        s => Error::Invalid(format!("{system}: {what}: HTTP {s}{}", suffix(&message))),
    }
}

/// `: <message>` when there is one.
fn suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// A 500 `die`: classified by its message, transient when it matches no list.
fn die_error(system: &str, what: &str, message: &str) -> Error {
    let detail = if message.is_empty() {
        "HTTP 500".to_string()
    } else {
        message.to_string()
    };
    from_kind(
        classify_message(message).unwrap_or(Kind::Transient),
        system,
        what,
        detail,
    )
}

/// The error of `kind` for `what` on `system`.
pub fn from_kind(kind: Kind, system: &str, what: &str, detail: String) -> Error {
    match kind {
        Kind::Transient => Error::transient(system, format!("{what}: {detail}")),
        Kind::NotFound => Error::NotFound {
            what: format!("{system}: {what}"),
            detail,
        },
        Kind::NoSpace => Error::NoSpace(format!("{system}: {what}: {detail}")),
        Kind::Terminal => Error::Invalid(format!("{system}: {what}: {detail}")),
    }
}

/// `Permission check failed (/vms/100, VM.Snapshot)` as "the API token lacks VM.Snapshot on
/// /vms/100"; PVE's bare form (VM create checks inside the method) as it is.
fn permission_detail(message: &str) -> String {
    let inner = message
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'));
    match inner.and_then(|i| i.split_once(',')) {
        Some((path, privilege)) => format!(
            "permission denied: the API token lacks {} on {} (HTTP 403: {message})",
            privilege.trim(),
            path.trim()
        ),
        None => format!(
            "permission denied (HTTP 403{}); the API token lacks a privilege this call needs",
            suffix(message)
        ),
    }
}

/// `Parameter verification failed.` with its `errors` map, one `<param>: <msg>` per parameter.
fn parameter_detail(json: &Value, message: &str) -> String {
    let Some(errors) = json.get("errors").and_then(Value::as_object) else {
        return format!("HTTP 400{}", suffix(message));
    };
    let each: Vec<String> = errors
        .iter()
        .map(|(param, msg)| {
            let msg = msg.as_str().unwrap_or_default().trim();
            if msg.contains("property is not defined in schema") {
                format!("unknown parameter {param:?} ({msg})")
            } else {
                format!("parameter {param:?}: {msg}")
            }
        })
        .collect();
    format!("parameter verification failed: {}", each.join("; "))
}

/// An error of a transfer to or from `system` (reqwest's): an untrusted certificate is terminal,
/// naming the fix; everything else on the way is transient.
pub fn transport_error(system: &str, what: &str, e: &reqwest::Error) -> Error {
    let chain = crate::provider::vsphere::soap::error_chain(e);
    if e.is_builder() {
        return Error::Invalid(format!("{system}: {what}: {chain}"));
    }
    if chain.contains("invalid peer certificate") || chain.contains("certificate verify") {
        return Error::Invalid(format!(
            "{system}: {what}: TLS certificate not trusted ({chain}); give the CA that signed it \
             (the Secret's ca.crt) or set insecureSkipVerify"
        ));
    }
    Error::transient(system, format!("{what}: {chain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PVE: &str = "Proxmox VE https://pve:8006";

    fn err(status: u16, body: &str) -> Error {
        api_error(PVE, "POST /nodes/pve1/qemu", status, body.as_bytes())
    }

    #[test]
    fn authentication_and_permissions_are_auth_errors_naming_what_is_missing() {
        let e = err(401, "");
        assert_eq!(e.reason(), "AuthenticationFailed");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("token_secret"), "{e}");

        let e = err(
            403,
            r#"{"data":null,"message":"Permission check failed (/vms/100, VM.Snapshot)\n"}"#,
        );
        assert_eq!(e.reason(), "AuthenticationFailed");
        let text = e.to_string();
        assert!(text.contains("lacks VM.Snapshot on /vms/100"), "{text}");

        let e = err(
            403,
            r#"{"data":null,"message":"Permission check failed\n"}"#,
        );
        assert!(e.to_string().contains("lacks a privilege"), "{e}");
    }

    #[test]
    fn parameter_errors_name_each_parameter() {
        let body = r#"{"data":null,"errors":{"bogus":"property is not defined in schema and the schema does not allow additional properties","memory":"value must have a minimum value of 16"},"message":"Parameter verification failed.\n"}"#;
        let e = err(400, body);
        assert!(matches!(e, Error::Invalid(_)), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(r#"unknown parameter "bogus""#), "{text}");
        assert!(
            text.contains(r#"parameter "memory": value must have a minimum value of 16"#),
            "{text}"
        );
        let e = err(400, r#"{"data":null,"message":"No such storage.\n"}"#);
        assert!(e.to_string().contains("No such storage."), "{e}");
    }

    #[test]
    fn die_messages_are_classified_explicitly() {
        let die = |m: &str| err(500, &format!(r#"{{"data":null,"message":"{m}\n"}}"#));
        let taken = die("unable to create VM 104 - VM 104 already exists on node 'pve1'");
        assert!(matches!(taken, Error::Invalid(_)), "{taken:?}");
        assert!(taken.to_string().contains("VM 104 already exists"));
        for missing in [
            "storage 'x' does not exist",
            "Configuration file 'nodes/pve1/qemu-server/104.conf' does not exist",
            "failed to stat '/var/lib/vz/import/x.qcow2'",
        ] {
            let e = die(missing);
            assert!(matches!(e, Error::NotFound { .. }), "{missing}: {e:?}");
            assert!(e.to_string().contains(missing));
        }
        assert!(matches!(
            die("snapshot feature is not available"),
            Error::Invalid(_)
        ));
        assert!(
            die("can't lock file '/var/lock/qemu-server/lock-104.conf' - got timeout")
                .is_retryable()
        );
        assert!(
            die("some new failure").is_retryable(),
            "unknown 500s are transient"
        );
        assert!(matches!(
            die("write failed: No space left on device"),
            Error::NoSpace(_)
        ));
    }

    #[test]
    fn other_statuses() {
        assert!(err(502, "").is_retryable());
        assert!(err(596, "").is_retryable());
        let e = err(
            501,
            r#"{"data":null,"message":"Method 'GET /x' not implemented"}"#,
        );
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("not implemented"), "{e}");
        assert!(!err(404, "").is_retryable());
    }

    #[test]
    fn task_messages() {
        assert_eq!(
            classify_message("checksum mismatch: got 'a' != expect 'b'"),
            Some(Kind::Terminal)
        );
        assert_eq!(
            classify_message("download failed: command 'wget ...' failed: exit code 4"),
            Some(Kind::Transient)
        );
        assert_eq!(
            classify_message("snapshot 'vrg-1' does not exist"),
            Some(Kind::NotFound)
        );
        assert_eq!(classify_message("something odd"), None);
    }
}
