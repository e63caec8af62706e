//! API token authentication and privileges, after pve-access-control.
//!
//! A request carries `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`. The token ID becomes the
//! request's user (as in PVE, where `rpcenv->get_user()` is the full token ID, so a token is never
//! `root@pam` itself). A token without privilege separation (`privsep: false`) has the privileges of
//! its user (`root@pam`: all of them); a separated one has those of its role. Roles are PVE's built-in
//! ones, reduced to the three this simulator needs.

use serde::{Deserialize, Serialize};

use crate::datadir::{DataDir, read_json};
use crate::error::{Error, Result};

/// One API token as stored in `tokens.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Token {
    /// `USER@REALM!TOKENID`.
    pub tokenid: String,
    /// The secret (a UUID in PVE).
    pub secret: String,
    /// Privilege separation: the token only has its role's privileges.
    #[serde(default = "default_privsep")]
    pub privsep: bool,
    /// The role the token (privsep) or its user has on `/`.
    #[serde(default)]
    pub role: Role,
}

fn default_privsep() -> bool {
    true
}

/// Built-in PVE roles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Every privilege.
    Administrator,
    /// Read-only: the `*.Audit` privileges.
    #[serde(rename = "PVEAuditor")]
    Auditor,
    /// Nothing.
    #[default]
    NoAccess,
}

/// `PVEAuditor`'s privileges (pve-access-control `$default_roles`).
const AUDITOR_PRIVS: &[&str] = &[
    "Datastore.Audit",
    "Mapping.Audit",
    "Pool.Audit",
    "SDN.Audit",
    "Sys.Audit",
    "VM.Audit",
    "VM.GuestAgent.Audit",
];

impl Role {
    fn has(self, privilege: &str) -> bool {
        match self {
            Role::Administrator => true,
            Role::Auditor => AUDITOR_PRIVS.contains(&privilege),
            Role::NoAccess => false,
        }
    }
}

/// Parses `TOKENID=SECRET` into a token entry (for `--token` flags).
pub fn parse_token_arg(arg: &str) -> Result<Token> {
    let (tokenid, secret) = arg
        .rsplit_once('=')
        .ok_or_else(|| Error::failed(format!("token '{arg}' is not TOKENID=SECRET")))?;
    split_tokenid(tokenid).ok_or_else(|| Error::failed(format!("invalid token ID '{tokenid}'")))?;
    Ok(Token {
        tokenid: tokenid.to_string(),
        secret: secret.to_string(),
        privsep: false,
        role: Role::Administrator,
    })
}

/// `USER@REALM!TOKENID` into (`USER@REALM`, `TOKENID`), with pve-access-control's patterns.
pub fn split_tokenid(tokenid: &str) -> Option<(&str, &str)> {
    let (user, token) = tokenid.split_once('!')?;
    let (name, realm) = user.rsplit_once('@')?;
    let realm_ok = |s: &str| {
        s.len() >= 2
            && s.as_bytes()[0].is_ascii_alphabetic()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    let name_ok =
        !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == ':' || c == '/');
    (name_ok && realm_ok(realm) && realm_ok(token)).then_some((user, token))
}

/// The tokens the server accepts: `tokens.json` in the data directory (re-read per request, so it can
/// be changed while the server runs) plus the ones given on the command line.
#[derive(Clone, Debug)]
pub struct Tokens {
    data: DataDir,
    extra: Vec<Token>,
}

impl Tokens {
    /// Tokens of `data`'s `tokens.json` and `extra`.
    pub fn new(data: DataDir, extra: Vec<Token>) -> Self {
        Tokens { data, extra }
    }

    fn all(&self) -> Result<Vec<Token>> {
        let mut tokens: Vec<Token> = read_json(&self.data.tokens_file())?.unwrap_or_default();
        tokens.extend(self.extra.iter().cloned());
        Ok(tokens)
    }

    /// Authenticates an `Authorization` header value (pve-http-server's `extract_auth_value` and
    /// pve-access-control's `verify_token`). Failures give PVE's answers: `No ticket` without a token,
    /// `Authentication failed!` for a wrong one; the reason is logged, never the secret.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Auth> {
        let Some(value) = header.and_then(|h| extract_auth_value(h, "PVEAPIToken")) else {
            return Err(Error::Unauthorized("No ticket".to_string()));
        };
        let fail = |why: &str| {
            tracing::warn!("authentication failure: {why}");
            Error::Unauthorized("Authentication failed!".to_string())
        };
        let Some((tokenid, secret)) = value.rsplit_once('=') else {
            return Err(fail("no tokenid specified"));
        };
        let Some((user, name)) = split_tokenid(tokenid) else {
            return Err(fail(&format!("invalid token ID '{tokenid}'")));
        };
        let tokens = self.all()?;
        let Some(token) = tokens.iter().find(|t| t.tokenid == tokenid) else {
            return Err(fail(&format!("no such token '{name}' for user '{user}'")));
        };
        if !constant_time_eq(token.secret.as_bytes(), secret.as_bytes()) {
            return Err(fail("invalid token value!"));
        }
        let role = if !token.privsep && user == "root@pam" {
            Role::Administrator
        } else {
            token.role
        };
        Ok(Auth {
            tokenid: tokenid.to_string(),
            role,
        })
    }
}

fn extract_auth_value(header: &str, key: &str) -> Option<String> {
    let start = header
        .match_indices(key)
        .find(|(i, _)| *i == 0 || header[..*i].ends_with(char::is_whitespace))?
        .0;
    let rest = &header[start + key.len()..];
    let rest = rest.strip_prefix('=').or_else(|| rest.strip_prefix(' '))?;
    let value = rest.split(';').next().unwrap_or_default();
    let decoded: String =
        url::form_urlencoded::parse(format!("v={}", value.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
    (!decoded.is_empty()).then_some(decoded)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An authenticated request.
#[derive(Clone, Debug)]
pub struct Auth {
    /// The token ID, which is the request's user in PVE.
    pub tokenid: String,
    /// Effective role on `/` (inherited by every path).
    pub role: Role,
}

impl Auth {
    /// Whether the token has `privilege` on `path`.
    pub fn has(&self, _path: &str, privilege: &str) -> bool {
        self.role.has(privilege)
    }

    /// `rpcenv->check($user, $path, $privs)`: every privilege is needed; the first missing one is named.
    pub fn check(&self, path: &str, privileges: &[&str]) -> Result<()> {
        match privileges.iter().find(|p| !self.has(path, p)) {
            Some(missing) => Err(Error::Permission(format!("{path}, {missing}"))),
            None => Ok(()),
        }
    }

    /// `rpcenv->check_any`: one of the privileges is enough.
    pub fn check_any(&self, path: &str, privileges: &[&str]) -> Result<()> {
        if privileges.iter().any(|p| self.has(path, p)) {
            Ok(())
        } else {
            Err(Error::Permission(format!(
                "{path}, {}",
                privileges.join("|")
            )))
        }
    }

    /// The request's user is `root@pam` itself (never true for a token).
    pub fn is_root(&self) -> bool {
        self.tokenid == "root@pam"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_value_extraction() {
        assert_eq!(
            extract_auth_value("PVEAPIToken=root@pam!ci=abc-def", "PVEAPIToken").as_deref(),
            Some("root@pam!ci=abc-def")
        );
        assert_eq!(
            extract_auth_value("PVEAPIToken root@pam!ci=x", "PVEAPIToken").as_deref(),
            Some("root@pam!ci=x")
        );
        assert_eq!(extract_auth_value("Bearer xyz", "PVEAPIToken"), None);
    }

    #[test]
    fn token_ids() {
        assert_eq!(
            split_tokenid("root@pam!virtrigaud"),
            Some(("root@pam", "virtrigaud"))
        );
        assert_eq!(split_tokenid("root@pam"), None);
        assert_eq!(split_tokenid("root@p!x"), None);
    }

    #[test]
    fn permission_messages() {
        let auditor = Auth {
            tokenid: "root@pam!ro".into(),
            role: Role::Auditor,
        };
        assert!(auditor.check("/vms/100", &["VM.Audit"]).is_ok());
        assert_eq!(
            auditor
                .check("/vms/100", &["VM.Allocate"])
                .unwrap_err()
                .to_string(),
            "Permission check failed (/vms/100, VM.Allocate)"
        );
        assert_eq!(
            auditor
                .check_any(
                    "/storage/local",
                    &["Datastore.Allocate", "Datastore.AllocateSpace"]
                )
                .unwrap_err()
                .to_string(),
            "Permission check failed (/storage/local, Datastore.Allocate|Datastore.AllocateSpace)"
        );
    }
}
