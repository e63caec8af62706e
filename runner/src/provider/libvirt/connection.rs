//! Opening a libvirt connection from a Provider's endpoint and the credentials of its Secret, and
//! turning libvirt errors into the runner's.
//!
//! - `qemu+tcp://`: SASL `username`/`password`, answered from the auth callback.
//! - `qemu+ssh://` (also `+libssh`, `+libssh2`): `ssh-privatekey` and `known_hosts` are written to a
//!   private temporary directory and the connection goes through libvirt's built-in libssh transport
//!   with `keyfile`, `known_hosts` and `known_hosts_verify=normal` (an unknown or changed host key is
//!   refused); OpenSSH's transport cannot take a known_hosts file. `insecureSkipVerify` without a
//!   `known_hosts` key skips the host key check.
//! - `qemu+tls://`: optional `ca.crt`, `tls.crt`, `tls.key` become a `pkipath` directory;
//!   `insecureSkipVerify` adds `no_verify=1`. SASL credentials apply too.
//! - `qemu:///system` and other local URIs: opened as given.

use std::cell::RefCell;
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Once;

use virt::connect::{Connect, ConnectAuth, ConnectCredential};
use virt::error::{Error as VirtError, ErrorNumber};
use virt::sys;

use crate::credentials::Credentials;
use crate::{Error, Result};

/// A libvirt endpoint, ready to be opened as often as needed.
pub struct Endpoint {
    /// The endpoint as the Provider spells it: the only form that appears in messages.
    shown: String,
    /// The URI handed to libvirt: `shown` plus paths of the files below (never a secret value).
    uri: String,
    sasl: Option<Sasl>,
    /// Private key, known_hosts and PKI files, removed when the endpoint is dropped.
    _files: Option<tempfile::TempDir>,
}

/// SASL credentials. Not `Debug`-printable with their values.
#[derive(Clone)]
struct Sasl {
    username: Option<String>,
    password: Option<String>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("endpoint", &self.shown)
            .field("sasl", &self.sasl.is_some())
            .finish()
    }
}

impl Endpoint {
    /// Prepares `endpoint` with the `scope` credentials (`source` or `target`). Fails when an SSH
    /// endpoint lacks its key, or its `known_hosts` without `insecure_skip_verify`.
    pub fn new(
        endpoint: &str,
        insecure_skip_verify: bool,
        creds: &Credentials,
        scope: &str,
    ) -> Result<Self> {
        let shown = endpoint.trim().to_string();
        let (scheme, _) = shown.split_once("://").ok_or_else(|| {
            Error::Invalid(format!(
                "libvirt endpoint {shown:?} is not a URI such as qemu+tcp://host/system"
            ))
        })?;
        let (driver, transport) = scheme.split_once('+').unwrap_or((scheme, ""));
        let sasl = match (
            creds.optional(scope, "username"),
            creds.optional(scope, "password"),
        ) {
            (None, None) => None,
            (u, p) => Some(Sasl {
                username: u.map(str::to_string),
                password: p.map(str::to_string),
            }),
        };
        let mut params: Vec<(&str, String)> = Vec::new();
        let mut files = None;
        let mut new_scheme = scheme.to_string();
        match transport {
            "ssh" | "libssh" | "libssh2" => {
                let dir = private_dir()?;
                let key = creds.get(scope, "ssh-privatekey")?;
                // Secret values lose their final newline when loaded; OpenSSH keys need it
                let keyfile = write_private(dir.path(), "id", &format!("{}\n", key.trim_end()))?;
                params.push(("keyfile", keyfile));
                params.push(("sshauth", "privkey".into()));
                match creds.optional(scope, "known_hosts") {
                    Some(known) => {
                        let path = write_private(dir.path(), "known_hosts", &format!("{known}\n"))?;
                        params.push(("known_hosts", path));
                        params.push(("known_hosts_verify", "normal".into()));
                    }
                    None if insecure_skip_verify => {
                        params.push(("known_hosts_verify", "ignore".into()));
                    }
                    None => {
                        return Err(Error::Plan(format!(
                            "libvirt endpoint {shown}: the Provider Secret has no known_hosts key to verify the \
                             SSH host key with (add it, or set insecureSkipVerify for a lab)"
                        )));
                    }
                }
                if transport != "libssh2" {
                    new_scheme = format!("{driver}+libssh");
                }
                files = Some(dir);
            }
            "tls" => {
                let pem = [
                    ("ca.crt", "cacert.pem"),
                    ("tls.crt", "clientcert.pem"),
                    ("tls.key", "clientkey.pem"),
                ];
                if pem.iter().any(|(k, _)| creds.optional(scope, k).is_some()) {
                    let dir = private_dir()?;
                    for (key, file) in pem {
                        if let Some(v) = creds.optional(scope, key) {
                            write_private(dir.path(), file, v)?;
                        }
                    }
                    params.push(("pkipath", dir.path().display().to_string()));
                    files = Some(dir);
                }
                if insecure_skip_verify {
                    params.push(("no_verify", "1".into()));
                }
            }
            _ => {}
        }
        let uri = if params.is_empty() && new_scheme == scheme {
            shown.clone()
        } else {
            let mut url = url::Url::parse(&shown)
                .map_err(|e| Error::Invalid(format!("libvirt endpoint {shown:?}: {e}")))?;
            url.set_scheme(&new_scheme)
                .map_err(|()| Error::Invalid(format!("libvirt endpoint {shown:?}: bad scheme")))?;
            {
                let mut q = url.query_pairs_mut();
                for (k, v) in &params {
                    q.append_pair(k, v);
                }
            }
            url.to_string()
        };
        Ok(Endpoint {
            shown,
            uri,
            sasl,
            _files: files,
        })
    }

    /// The endpoint as configured, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Opens a connection (blocking). Refused credentials and host keys are [`Error::Auth`].
    pub fn open(&self) -> Result<Connection> {
        static QUIET: Once = Once::new();
        // libvirt prints every error to stderr by default; ours are reported through Results
        QUIET.call_once(virt::error::clear_error_callback);

        SASL_ANSWERS.with(|a| *a.borrow_mut() = self.sasl.clone());
        let mut auth = ConnectAuth::new(
            vec![
                sys::VIR_CRED_AUTHNAME,
                sys::VIR_CRED_USERNAME,
                sys::VIR_CRED_PASSPHRASE,
                sys::VIR_CRED_REALM,
            ],
            answer_credentials,
        );
        let opened = Connect::open_auth(Some(&self.uri), &mut auth, 0);
        SASL_ANSWERS.with(|a| *a.borrow_mut() = None);
        opened.map(Connection).map_err(|e| self.open_error(e))
    }

    fn open_error(&self, e: VirtError) -> Error {
        let msg = e.message().to_string();
        let lower = msg.to_lowercase();
        let auth = matches!(
            e.code(),
            ErrorNumber::AuthFailed | ErrorNumber::AuthCancelled | ErrorNumber::AuthUnavailable
        ) || [
            "host key",
            "authentication",
            "permission denied",
            "publickey",
        ]
        .iter()
        .any(|s| lower.contains(s));
        if auth {
            Error::Auth {
                system: format!("libvirt {}", self.shown),
                detail: msg,
            }
        } else if lower.contains("no connection driver") || e.code() == ErrorNumber::InvalidArg {
            Error::Invalid(format!("libvirt endpoint {}: {msg}", self.shown))
        } else {
            Error::transient(format!("libvirt {}", self.shown), msg)
        }
    }

    /// Maps the error of a call whose input is ours and deterministic (a domain definition): only a
    /// broken connection is worth another try; anything else would fail the same way again.
    pub fn definition_error(&self, context: impl fmt::Display, e: VirtError) -> Error {
        match e.code() {
            ErrorNumber::Rpc
            | ErrorNumber::SystemError
            | ErrorNumber::NoConnect
            | ErrorNumber::InvalidConn
            | ErrorNumber::OperationTimeout => self.error(context, e),
            _ => Error::Invalid(format!("{context} on {}: {}", self.shown, e.message())),
        }
    }

    /// Maps a libvirt error of an operation on this endpoint. `context` says what was being done.
    pub fn error(&self, context: impl fmt::Display, e: VirtError) -> Error {
        let msg = e.message();
        let detail = format!("{context} on {}: {msg}", self.shown);
        let not_found = |what: &str| Error::NotFound {
            what: what.into(),
            detail: detail.clone(),
        };
        match e.code() {
            ErrorNumber::NoDomain => not_found("libvirt domain"),
            ErrorNumber::NoStoragePool => not_found("libvirt storage pool"),
            ErrorNumber::NoStorageVolume => not_found("libvirt storage volume"),
            ErrorNumber::NoDomainSnapshot => not_found("libvirt snapshot"),
            ErrorNumber::AuthFailed | ErrorNumber::AuthCancelled | ErrorNumber::AuthUnavailable => {
                Error::Auth {
                    system: format!("libvirt {}", self.shown),
                    detail: format!("{context}: {msg}"),
                }
            }
            ErrorNumber::DomExist
            | ErrorNumber::StorageVolExist
            | ErrorNumber::OperationInvalid
            | ErrorNumber::OperationUnsupported
            | ErrorNumber::XmlError
            | ErrorNumber::XmlDetail
            | ErrorNumber::XmlInvalidSchema
            | ErrorNumber::InvalidArg
            | ErrorNumber::ConfigUnsupported
            | ErrorNumber::NoSupport
            | ErrorNumber::ArgumentUnsupported
            | ErrorNumber::OperationDenied
            | ErrorNumber::AccessDenied => Error::Invalid(detail),
            _ => Error::transient(
                format!("libvirt {}", self.shown),
                format!("{context}: {msg}"),
            ),
        }
    }
}

/// An open libvirt connection, closed when dropped (the `virt` crate leaves that to its user).
pub struct Connection(Connect);

impl std::ops::Deref for Connection {
    type Target = Connect;
    fn deref(&self) -> &Connect {
        &self.0
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Err(e) = self.0.close() {
            tracing::debug!("closing libvirt connection: {}", e.message());
        }
    }
}

thread_local! {
    /// The SASL answers for the connection being opened on this thread: libvirt calls the auth
    /// callback synchronously inside `virConnectOpenAuth`, and the `virt` crate's callback is a plain
    /// function pointer.
    static SASL_ANSWERS: RefCell<Option<Sasl>> = const { RefCell::new(None) };
}

/// libvirt's credential prompt: user name, password and the server's default realm.
#[allow(clippy::ptr_arg)] // the signature of virt's `ConnectAuthCallback`
fn answer_credentials(creds: &mut Vec<ConnectCredential>) {
    SASL_ANSWERS.with(|answers| {
        let answers = answers.borrow();
        for cred in creds.iter_mut() {
            cred.result = match cred.typed as sys::virConnectCredentialType {
                sys::VIR_CRED_AUTHNAME | sys::VIR_CRED_USERNAME => {
                    answers.as_ref().and_then(|a| a.username.clone())
                }
                sys::VIR_CRED_PASSPHRASE => answers.as_ref().and_then(|a| a.password.clone()),
                sys::VIR_CRED_REALM if !cred.def_result.is_empty() => Some(cred.def_result.clone()),
                _ => None,
            };
        }
    });
}

fn private_dir() -> Result<tempfile::TempDir> {
    // TempDir creates the directory with mode 0700
    tempfile::Builder::new()
        .prefix("vrg-libvirt-")
        .tempdir()
        .map_err(|e| Error::io("creating a private directory for libvirt credentials", e))
}

/// Writes `content` to `dir/name` with mode 0600 and returns the path.
fn write_private(dir: &Path, name: &str, content: &str) -> Result<String> {
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    f.write_all(content.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(uri: &str) -> Vec<(String, String)> {
        url::Url::parse(uri)
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn tcp_and_local_uris_pass_through() {
        let creds = Credentials::default()
            .with("source", "username", "vrg")
            .with("source", "password", "pw");
        let ep =
            Endpoint::new("qemu+tcp://127.0.0.1:16509/system", false, &creds, "source").unwrap();
        assert_eq!(ep.uri, "qemu+tcp://127.0.0.1:16509/system");
        assert!(ep.sasl.is_some());
        let shown = format!("{ep:?}");
        assert!(!shown.contains("pw"), "{shown}");
        let local =
            Endpoint::new("qemu:///system", false, &Credentials::default(), "target").unwrap();
        assert_eq!(local.uri, "qemu:///system");
        assert!(local.sasl.is_none());
        assert!(Endpoint::new("not a uri", false, &creds, "source").is_err());
    }

    #[test]
    fn ssh_uses_libssh_with_private_key_files() {
        let creds = Credentials::default()
            .with(
                "source",
                "ssh-privatekey",
                "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----",
            )
            .with("source", "known_hosts", "[h]:2222 ssh-ed25519 AAAA");
        let ep = Endpoint::new("qemu+ssh://root@h:2222/system", false, &creds, "source").unwrap();
        assert!(
            ep.uri.starts_with("qemu+libssh://root@h:2222/system?"),
            "{}",
            ep.uri
        );
        let q = query(&ep.uri);
        let get = |k: &str| {
            q.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let keyfile = get("keyfile");
        let meta = std::fs::metadata(&keyfile).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(
            std::fs::read_to_string(&keyfile)
                .unwrap()
                .ends_with("KEY-----\n")
        );
        assert_eq!(
            std::fs::read_to_string(get("known_hosts")).unwrap(),
            "[h]:2222 ssh-ed25519 AAAA\n"
        );
        assert_eq!(get("known_hosts_verify"), "normal");
        assert_eq!(get("sshauth"), "privkey");
        let dir = Path::new(&keyfile).parent().unwrap().to_path_buf();
        drop(ep);
        assert!(!dir.exists(), "key files are removed with the endpoint");
    }

    #[test]
    fn ssh_without_known_hosts_needs_insecure() {
        let creds = Credentials::default().with("target", "ssh-privatekey", "k");
        let err = Endpoint::new("qemu+ssh://h/system", false, &creds, "target").unwrap_err();
        assert!(err.to_string().contains("known_hosts"), "{err}");
        let ep = Endpoint::new("qemu+ssh://h/system", true, &creds, "target").unwrap();
        assert!(ep.uri.contains("known_hosts_verify=ignore"), "{}", ep.uri);
        let err = Endpoint::new(
            "qemu+ssh://h/system",
            true,
            &Credentials::default(),
            "target",
        )
        .unwrap_err();
        assert!(err.to_string().contains("ssh-privatekey"), "{err}");
    }

    #[test]
    fn tls_pki_and_no_verify() {
        let creds = Credentials::default().with("target", "ca.crt", "CA\n");
        let ep = Endpoint::new("qemu+tls://h/system", true, &creds, "target").unwrap();
        let q = query(&ep.uri);
        let pki = &q.iter().find(|(k, _)| k == "pkipath").unwrap().1;
        assert_eq!(
            std::fs::read_to_string(Path::new(pki).join("cacert.pem")).unwrap(),
            "CA\n"
        );
        assert!(q.contains(&("no_verify".into(), "1".into())));
    }

    #[test]
    fn answers_sasl_prompts_from_this_thread_only() {
        SASL_ANSWERS.with(|a| {
            *a.borrow_mut() = Some(Sasl {
                username: Some("u".into()),
                password: Some("p".into()),
            })
        });
        let prompt = |typed: sys::virConnectCredentialType, def: &str| ConnectCredential {
            typed: typed as i32,
            prompt: String::new(),
            challenge: String::new(),
            def_result: def.into(),
            result: None,
        };
        let mut creds = vec![
            prompt(sys::VIR_CRED_AUTHNAME, ""),
            prompt(sys::VIR_CRED_PASSPHRASE, ""),
            prompt(sys::VIR_CRED_REALM, "host"),
            prompt(sys::VIR_CRED_ECHOPROMPT, "y"),
        ];
        answer_credentials(&mut creds);
        let results: Vec<Option<&str>> = creds.iter().map(|c| c.result.as_deref()).collect();
        assert_eq!(results, [Some("u"), Some("p"), Some("host"), None]);
        std::thread::spawn(move || {
            let mut creds = vec![prompt(sys::VIR_CRED_PASSPHRASE, "")];
            answer_credentials(&mut creds);
            assert_eq!(creds[0].result, None);
        })
        .join()
        .unwrap();
    }
}
