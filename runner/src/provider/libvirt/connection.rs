//! Opening a libvirt connection from a Provider's endpoint and the credentials of its Secret, and
//! turning libvirt errors into the runner's. The URI must pass the endpoint policy
//! ([`endpoint_policy::parse_libvirt`]); each open goes to the address the runner judged for it
//! ([`Pin`]).
//!
//! - `qemu+tcp://`: SASL `username`/`password`, answered from the auth callback.
//! - `qemu+ssh://`: `ssh-privatekey` and `known_hosts` are written to a private temporary directory
//!   and the connection goes through libvirt's built-in libssh transport with `keyfile`,
//!   `known_hosts` and `known_hosts_verify=normal` (an unknown or changed host key is refused);
//!   OpenSSH's transport cannot take a known_hosts file. `insecureSkipVerify` without a
//!   `known_hosts` key skips the host key check.
//! - `qemu+tls://`: optional `ca.crt`, `tls.crt`, `tls.key` become a `pkipath` directory;
//!   `insecureSkipVerify` adds `no_verify=1`. SASL credentials apply too.
//! - `qemu:///system` (the local socket): only where loopback endpoints are allowed.

use std::cell::RefCell;
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Once;

use virt::connect::{Connect, ConnectAuth, ConnectCredential};
use virt::error::{Error as VirtError, ErrorNumber};
use virt::sys;

use super::known_hosts;
use crate::credentials::Credentials;
use crate::endpoint::Pinned;
use crate::{Error, Result};

/// A libvirt endpoint, ready to be opened as often as needed.
pub struct Endpoint {
    /// The endpoint as the Provider spells it: the only form that appears in messages.
    shown: String,
    /// Host and port the endpoint names (`None` for the local socket), judged before each open.
    remote: Option<endpoint_policy::Endpoint>,
    /// The URI handed to libvirt: `shown` plus paths of the files below (never a secret value),
    /// its host replaced by the judged address as [`Pin`] says.
    uri: url::Url,
    pin: Pin,
    sasl: Option<Sasl>,
    /// Private key, known_hosts and PKI files, removed when the endpoint is dropped.
    _files: Option<tempfile::TempDir>,
}

/// How a connection is kept on the address the runner judged.
#[derive(Debug)]
enum Pin {
    /// libvirt is given the address (TCP; TLS and SSH that verify nothing under the name).
    Address,
    /// libvirt is given the address, and the known_hosts lines for the name are repeated for it.
    KnownHosts { path: String, text: String },
    /// libvirt is given the name: its TLS client checks the server certificate against the URI's
    /// host and has no option to check it against another, so the certificate (signed by the
    /// Provider's CA for that name) is what binds the connection.
    Name,
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
    /// Prepares `endpoint` with the `scope` credentials (`source` or `target`). The URI must pass
    /// the endpoint policy (tcp, tls or ssh transport, no query, no password; the local socket only
    /// with `allow_local`). Fails when an SSH endpoint lacks its key, or its `known_hosts` without
    /// `insecure_skip_verify`.
    pub fn new(
        endpoint: &str,
        insecure_skip_verify: bool,
        creds: &Credentials,
        scope: &str,
        allow_local: bool,
    ) -> Result<Self> {
        let shown = endpoint.trim().to_string();
        let remote = endpoint_policy::parse_libvirt(&shown, allow_local)
            .map_err(|why| Error::Invalid(format!("libvirt endpoint: {why}")))?;
        let mut uri = url::Url::parse(&shown)
            .map_err(|e| Error::Invalid(format!("libvirt endpoint {shown:?}: {e}")))?;
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
        let transport = uri.scheme().split_once('+').map(|(_, t)| t.to_string());
        let prepared = match transport.as_deref() {
            Some("ssh") => ssh_files(&shown, insecure_skip_verify, creds, scope)?,
            Some("tls") => tls_files(insecure_skip_verify, creds, scope)?,
            _ => Prepared::plain(),
        };
        if let Some(scheme) = prepared.scheme {
            uri.set_scheme(scheme)
                .map_err(|()| Error::Invalid(format!("libvirt endpoint {shown:?}: bad scheme")))?;
        }
        if !prepared.params.is_empty() {
            let mut q = uri.query_pairs_mut();
            for (k, v) in &prepared.params {
                q.append_pair(k, v);
            }
        }
        Ok(Endpoint {
            shown,
            remote,
            uri,
            pin: prepared.pin,
            sasl,
            _files: prepared.files,
        })
    }

    /// The host and port to judge before opening, `None` for the local socket.
    pub fn remote(&self) -> Option<&endpoint_policy::Endpoint> {
        self.remote.as_ref()
    }

    /// The URI to open when the endpoint was judged as `pinned`.
    fn uri_for(&self, pinned: Option<&Pinned>) -> Result<String> {
        let Some(pinned) = pinned.filter(|p| p.name().is_some()) else {
            return Ok(self.uri.to_string());
        };
        match &self.pin {
            Pin::Name => return Ok(self.uri.to_string()),
            Pin::Address => {}
            Pin::KnownHosts { path, text } => {
                let name = pinned.name().unwrap_or_default();
                let Some(text) = known_hosts::pin(text, name, pinned.port(), pinned.address())
                else {
                    // no line vouches for the name: the host key check refuses the server anyway
                    return Ok(self.uri.to_string());
                };
                std::fs::write(path, text).map_err(|e| Error::io(format!("writing {path}"), e))?;
            }
        }
        let mut uri = self.uri.clone();
        uri.set_host(Some(&pinned.uri_host()))
            .map_err(|e| Error::Invalid(format!("libvirt endpoint {}: {e}", self.shown)))?;
        Ok(uri.to_string())
    }

    /// The endpoint as configured, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Opens a connection (blocking) to the first of the addresses `pinned` judged for
    /// [`remote`](Self::remote) that answers. Refused credentials and host keys are [`Error::Auth`].
    pub fn open(&self, pinned: Option<&Pinned>) -> Result<Connection> {
        let Some(pinned) = pinned.filter(|p| p.addrs().len() > 1 && !matches!(self.pin, Pin::Name))
        else {
            return self.open_one(pinned);
        };
        let mut last = None;
        for one in pinned.each() {
            match self.open_one(Some(&one)) {
                Ok(conn) => return Ok(conn),
                Err(e @ Error::Auth { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Invalid(format!("{}: no address", self.shown))))
    }

    fn open_one(&self, pinned: Option<&Pinned>) -> Result<Connection> {
        let uri = self.uri_for(pinned)?;
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
        let opened = Connect::open_auth(Some(&uri), &mut auth, 0);
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

/// What a transport adds to the URI: files, parameters naming them, a scheme, and how it is pinned.
struct Prepared {
    scheme: Option<&'static str>,
    params: Vec<(&'static str, String)>,
    files: Option<tempfile::TempDir>,
    pin: Pin,
}

impl Prepared {
    fn plain() -> Prepared {
        Prepared {
            scheme: None,
            params: Vec::new(),
            files: None,
            pin: Pin::Address,
        }
    }
}

/// `qemu+ssh://`: libvirt's libssh transport with the Secret's key and known_hosts as files.
fn ssh_files(
    shown: &str,
    insecure_skip_verify: bool,
    creds: &Credentials,
    scope: &str,
) -> Result<Prepared> {
    let dir = private_dir()?;
    let key = creds.get(scope, "ssh-privatekey")?;
    // Secret values lose their final newline when loaded; OpenSSH keys need it
    let keyfile = write_private(dir.path(), "id", &format!("{}\n", key.trim_end()))?;
    let mut params = vec![("keyfile", keyfile), ("sshauth", "privkey".into())];
    let pin = match creds.optional(scope, "known_hosts") {
        Some(known) => {
            let text = format!("{}\n", known.trim_end());
            let path = write_private(dir.path(), "known_hosts", &text)?;
            params.push(("known_hosts", path.clone()));
            params.push(("known_hosts_verify", "normal".into()));
            Pin::KnownHosts { path, text }
        }
        None if insecure_skip_verify => {
            params.push(("known_hosts_verify", "ignore".into()));
            Pin::Address
        }
        None => {
            return Err(Error::Plan(format!(
                "libvirt endpoint {shown}: the Provider Secret has no known_hosts key to verify the \
                 SSH host key with (add it, or set insecureSkipVerify for a lab)"
            )));
        }
    };
    Ok(Prepared {
        scheme: Some("qemu+libssh"),
        params,
        files: Some(dir),
        pin,
    })
}

/// `qemu+tls://`: optional `ca.crt`, `tls.crt`, `tls.key` as a `pkipath` directory.
fn tls_files(insecure_skip_verify: bool, creds: &Credentials, scope: &str) -> Result<Prepared> {
    let mut prepared = Prepared::plain();
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
        prepared
            .params
            .push(("pkipath", dir.path().display().to_string()));
        prepared.files = Some(dir);
    }
    if insecure_skip_verify {
        prepared.params.push(("no_verify", "1".into()));
    } else {
        prepared.pin = Pin::Name;
    }
    Ok(prepared)
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

    fn uri(ep: &Endpoint) -> String {
        ep.uri_for(None).unwrap()
    }

    /// `host` judged as the runner judges it (loopback allowed, as in the test world).
    async fn judged(ep: &Endpoint) -> Pinned {
        let remote = ep.remote().expect("a remote endpoint");
        crate::endpoint::Guard::new(true)
            .pin(remote, "test")
            .await
            .unwrap()
    }

    #[test]
    fn tcp_and_local_uris_pass_through() {
        let creds = Credentials::default()
            .with("source", "username", "vrg")
            .with("source", "password", "pw");
        let ep = Endpoint::new(
            "qemu+tcp://127.0.0.1:16509/system",
            false,
            &creds,
            "source",
            false,
        )
        .unwrap();
        assert_eq!(uri(&ep), "qemu+tcp://127.0.0.1:16509/system");
        assert!(ep.sasl.is_some());
        let shown = format!("{ep:?}");
        assert!(!shown.contains("pw"), "{shown}");
        let none = Credentials::default();
        let local = Endpoint::new("qemu:///system", false, &none, "target", true).unwrap();
        assert_eq!(uri(&local), "qemu:///system");
        assert!(local.remote().is_none() && local.sasl.is_none());
        assert!(Endpoint::new("not a uri", false, &creds, "source", true).is_err());
    }

    #[test]
    fn the_policy_refuses_what_makes_libvirt_run_or_open_things() {
        let none = Credentials::default();
        for (bad, why) in [
            ("qemu:///system", "local libvirt socket"),
            ("qemu+ext://h/system?command=/bin/sh", "query parameters"),
            ("qemu+ssh://h/system?command=/bin/sh", "query parameters"),
            ("qemu+tcp://h/system?socket=/tmp/x", "query parameters"),
            ("qemu+tcp://u:hunter2@h/system", "password"),
            ("qemu+unix:///system", "transport"),
            ("qemu+libssh2://h/system", "transport"),
        ] {
            let err = Endpoint::new(bad, true, &none, "source", false).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{bad}: {err:?}");
            assert!(err.to_string().contains(why), "{bad}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[tokio::test]
    async fn tcp_connects_to_the_judged_address() {
        let none = Credentials::default();
        let ep = Endpoint::new(
            "qemu+tcp://localhost:16509/system",
            false,
            &none,
            "source",
            true,
        )
        .unwrap();
        let pinned = judged(&ep).await;
        let opened = ep.uri_for(Some(&pinned)).unwrap();
        assert_eq!(
            opened,
            format!("qemu+tcp://{}:16509/system", pinned.uri_host())
        );
        assert!(!opened.contains("localhost"), "{opened}");
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
        let ep = Endpoint::new(
            "qemu+ssh://root@h:2222/system",
            false,
            &creds,
            "source",
            false,
        )
        .unwrap();
        let uri = uri(&ep);
        assert!(
            uri.starts_with("qemu+libssh://root@h:2222/system?"),
            "{uri}"
        );
        let q = query(&uri);
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

    #[tokio::test]
    async fn ssh_is_pinned_with_the_names_host_keys() {
        let creds = Credentials::default()
            .with("source", "ssh-privatekey", "k")
            .with("source", "known_hosts", "[localhost]:2222 ssh-ed25519 AAAA");
        let ep = Endpoint::new(
            "qemu+ssh://root@localhost:2222/system",
            false,
            &creds,
            "source",
            true,
        )
        .unwrap();
        let pinned = judged(&ep).await;
        let opened = ep.uri_for(Some(&pinned)).unwrap();
        let host = pinned.uri_host();
        assert!(
            opened.starts_with(&format!("qemu+libssh://root@{host}:2222/system?")),
            "{opened}"
        );
        let known = query(&opened)
            .into_iter()
            .find(|(k, _)| k == "known_hosts")
            .unwrap()
            .1;
        assert_eq!(
            std::fs::read_to_string(known).unwrap(),
            format!(
                "[localhost]:2222 ssh-ed25519 AAAA\n[{}]:2222 ssh-ed25519 AAAA\n",
                pinned.address()
            )
        );
        // a name no line vouches for keeps the name: the host key check refuses the server
        let other = Credentials::default()
            .with("source", "ssh-privatekey", "k")
            .with("source", "known_hosts", "elsewhere ssh-ed25519 AAAA");
        let ep =
            Endpoint::new("qemu+ssh://localhost/system", false, &other, "source", true).unwrap();
        let pinned = judged(&ep).await;
        assert!(
            ep.uri_for(Some(&pinned))
                .unwrap()
                .starts_with("qemu+libssh://localhost/system?")
        );
    }

    #[test]
    fn ssh_without_known_hosts_needs_insecure() {
        let creds = Credentials::default().with("target", "ssh-privatekey", "k");
        let err = Endpoint::new("qemu+ssh://h/system", false, &creds, "target", false).unwrap_err();
        assert!(err.to_string().contains("known_hosts"), "{err}");
        let ep = Endpoint::new("qemu+ssh://h/system", true, &creds, "target", false).unwrap();
        assert!(
            uri(&ep).contains("known_hosts_verify=ignore"),
            "{}",
            uri(&ep)
        );
        let err = Endpoint::new(
            "qemu+ssh://h/system",
            true,
            &Credentials::default(),
            "target",
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("ssh-privatekey"), "{err}");
    }

    #[tokio::test]
    async fn tls_pki_and_no_verify() {
        let creds = Credentials::default().with("target", "ca.crt", "CA\n");
        let ep =
            Endpoint::new("qemu+tls://localhost/system", true, &creds, "target", true).unwrap();
        let q = query(&uri(&ep));
        let pki = &q.iter().find(|(k, _)| k == "pkipath").unwrap().1;
        assert_eq!(
            std::fs::read_to_string(Path::new(pki).join("cacert.pem")).unwrap(),
            "CA\n"
        );
        assert!(q.contains(&("no_verify".into(), "1".into())));
        // nothing is verified under the name: connect to the judged address
        let pinned = judged(&ep).await;
        assert!(
            ep.uri_for(Some(&pinned))
                .unwrap()
                .starts_with(&format!("qemu+tls://{}/system?", pinned.uri_host()))
        );
        // a verified certificate is checked against the URI's host: the name stays
        let verified =
            Endpoint::new("qemu+tls://localhost/system", false, &creds, "target", true).unwrap();
        let pinned = judged(&verified).await;
        assert!(
            verified
                .uri_for(Some(&pinned))
                .unwrap()
                .starts_with("qemu+tls://localhost/system?")
        );
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
