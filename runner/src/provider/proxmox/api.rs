//! A thin, typed client of PVE's `api2/json` over reqwest (rustls): API-token authentication, the
//! `{"data": ...}` envelope, errors classified by [`super::errors`], and UPID tasks waited for
//! with a deadline.

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use super::errors::{self, Kind};
use crate::endpoint::Guard;
use crate::{Error, Result};

/// How long a short task (snapshot, start, stop, delete) may run.
pub const SHORT_TASK_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long a task that moves a disk (upload check, download, create with `import-from`) may run.
pub const LONG_TASK_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// Failed status polls in a row a task wait tolerates.
const POLL_HICCUPS: u32 = 5;
/// Task log lines an error quotes.
const LOG_LINES: usize = 6;

/// How the server's certificate is checked.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Accept any certificate (the Provider's `insecureSkipVerify`).
    pub insecure_skip_verify: bool,
    /// PEM of a CA to trust besides the built-in web roots (the Secret's `ca.crt`).
    pub ca_pem: Option<String>,
}

/// A PVE API client. Cheap to share behind an `Arc`. Errors name the endpoint, never the token.
pub struct Client {
    pub(super) http: reqwest::Client,
    /// `https://host:8006/api2/json/`.
    base: Url,
    /// `PVEAPIToken=<id>=<secret>`, marked sensitive.
    pub(super) auth: HeaderValue,
    system: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// A task of PVE, from its UPID `UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upid {
    /// The whole UPID.
    pub upid: String,
    /// The node the task runs on (its status is asked there).
    pub node: String,
    /// `qmcreate`, `imgcopy`, `download`...
    pub kind: String,
    /// What it works on (a VMID, a storage, a file name).
    pub id: String,
}

impl Upid {
    /// Parses a UPID; `None` when it is not one.
    pub fn parse(upid: &str) -> Option<Upid> {
        let parts: Vec<&str> = upid.split(':').collect();
        if parts.len() < 8 || parts[0] != "UPID" || parts[1].is_empty() {
            return None;
        }
        Some(Upid {
            upid: upid.to_string(),
            node: parts[1].to_string(),
            kind: parts[5].to_string(),
            id: parts[6].to_string(),
        })
    }
}

impl std::fmt::Display for Upid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.id.is_empty() {
            write!(f, "task {}", self.kind)
        } else {
            write!(f, "task {} {}", self.kind, self.id)
        }
    }
}

/// The API base of an endpoint: `https://host[:port]` gets `/api2/json/`.
pub fn base_url(endpoint: &str) -> Result<Url> {
    let shown = crate::endpoint::redacted(endpoint);
    let bad = |why: String| Error::Invalid(format!("Proxmox VE endpoint {shown:?}: {why}"));
    let mut url = Url::parse(endpoint.trim()).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(bad("must be https://host[:port]".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not carry credentials: use the Secret's token_id and token_secret".into(),
        ));
    }
    let path = url.path().trim_end_matches('/').to_string();
    if !path.ends_with("/api2/json") {
        url.set_path(&format!("{path}/api2/json/"));
    } else {
        url.set_path(&format!("{path}/"));
    }
    url.set_query(None);
    Ok(url)
}

/// The `Authorization` value of an API token; the token id must be `user@realm!name`.
pub fn token_header(token_id: &str, secret: &str) -> Result<HeaderValue> {
    let well_formed = token_id
        .split_once('@')
        .and_then(|(user, rest)| Some((user, rest.split_once('!')?)))
        .is_some_and(|(user, (realm, name))| {
            !user.is_empty() && !realm.is_empty() && !name.is_empty()
        });
    if !well_formed {
        return Err(Error::Plan(
            "the credential token_id is not an API token id of the form user@realm!name".into(),
        ));
    }
    let mut value =
        HeaderValue::from_str(&format!("PVEAPIToken={token_id}={secret}")).map_err(|_| {
            Error::Plan(
                "the credentials token_id/token_secret contain characters a header cannot carry"
                    .into(),
            )
        })?;
    value.set_sensitive(true);
    Ok(value)
}

impl Client {
    /// A client for `endpoint` with an API token. The endpoint is resolved and refused when it
    /// points at a link-local or metadata address; nothing is requested yet.
    pub async fn new(
        endpoint: &str,
        token_id: &str,
        secret: &str,
        tls: &TlsOptions,
        guard: Guard,
    ) -> Result<Client> {
        let base = base_url(endpoint)?;
        let auth = token_header(token_id, secret)?;
        guard.pin_url(&base).await?;
        let http = http_client(&base, guard, tls)?;
        let mut shown = base.clone();
        shown.set_path("");
        let system = format!("Proxmox VE {}", shown.as_str().trim_end_matches('/'));
        Ok(Client {
            http,
            base,
            auth,
            system,
        })
    }

    /// `Proxmox VE https://host:8006`: how errors name this server.
    pub fn system(&self) -> &str {
        &self.system
    }

    /// The URL of an API path given as segments (each percent-encoded: volume IDs carry `:` and
    /// `/`).
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has path segments")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// `GET` of a path with query parameters; the envelope's `data`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, String)],
    ) -> Result<T> {
        self.call(Method::GET, path, query).await
    }

    /// `POST` of a path with form parameters.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &[&str],
        form: &[(&str, String)],
    ) -> Result<T> {
        self.call(Method::POST, path, form).await
    }

    /// `DELETE` of a path with query parameters.
    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, String)],
    ) -> Result<T> {
        self.call(Method::DELETE, path, query).await
    }

    /// One API call: query parameters for GET and DELETE, a form for POST and PUT.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        params: &[(&str, String)],
    ) -> Result<T> {
        let url = self.url(path);
        let what = format!("{method} /{}", path.join("/"));
        let rb = self.http.request(method.clone(), url);
        let rb = if matches!(method, Method::GET | Method::DELETE) {
            rb.query(params)
        } else {
            rb.form(params)
        };
        let data = self
            .send(&what, rb.timeout(Duration::from_secs(300)))
            .await?;
        serde_json::from_value(data)
            .map_err(|e| Error::Invalid(format!("{}: {what}: unexpected answer: {e}", self.system)))
    }

    /// Sends a request with the token and returns the envelope's `data`.
    pub async fn send(&self, what: &str, rb: RequestBuilder) -> Result<Value> {
        let response = rb
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await
            .map_err(|e| errors::transport_error(&self.system, what, &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| errors::transport_error(&self.system, what, &e))?;
        if !status.is_success() {
            return Err(errors::api_error(
                &self.system,
                what,
                status.as_u16(),
                &body,
            ));
        }
        let json: Value = serde_json::from_slice(&body).map_err(|e| {
            Error::transient(&self.system, format!("{what}: unreadable answer: {e}"))
        })?;
        Ok(json.get("data").cloned().unwrap_or(Value::Null))
    }

    /// Waits until the task `upid` stops, polling its status; an `exitstatus` other than `OK` (or
    /// PVE's `WARNINGS: n`) is an error with the last lines of the task log. Every string of
    /// `redact` (a presigned URL) is removed from what the error quotes.
    pub async fn wait_task(&self, upid: &str, timeout: Duration, redact: &[&str]) -> Result<()> {
        let task = Upid::parse(upid).ok_or_else(|| {
            Error::Invalid(format!("{}: {upid:?} is not a task id (UPID)", self.system))
        })?;
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(200);
        let mut hiccups = 0;
        loop {
            let path = [
                "nodes",
                task.node.as_str(),
                "tasks",
                task.upid.as_str(),
                "status",
            ];
            let status: Value = match self.get(&path, &[]).await {
                Ok(s) => s,
                // the task goes on without us: a failed poll is asked again
                Err(e) if e.is_retryable() && hiccups < POLL_HICCUPS => {
                    hiccups += 1;
                    tracing::warn!("polling {task}: {e}; asking again");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            hiccups = 0;
            if status.get("status").and_then(Value::as_str) == Some("stopped") {
                let exit = status
                    .get("exitstatus")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                return self.task_outcome(&task, exit, redact).await;
            }
            if Instant::now() >= deadline {
                return Err(Error::transient(
                    &self.system,
                    format!("{task} still runs after {}s", timeout.as_secs()),
                ));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// The result of a stopped task.
    async fn task_outcome(&self, task: &Upid, exit: &str, redact: &[&str]) -> Result<()> {
        if exit == "OK" {
            return Ok(());
        }
        if exit.starts_with("WARNINGS") {
            tracing::warn!("{} {task} ended with {exit}", self.system);
            return Ok(());
        }
        let log = self.task_log_tail(task).await.unwrap_or_default();
        let exit = scrub(exit, redact);
        let log = scrub(&log.join(" | "), redact);
        let detail = if log.is_empty() {
            exit.clone()
        } else {
            format!("{exit} (task log: {log})")
        };
        Err(match errors::classify_message(&exit) {
            Some(kind) => errors::from_kind(kind, &self.system, &task.to_string(), detail),
            None => errors::from_kind(Kind::Terminal, &self.system, &task.to_string(), detail),
        })
    }

    /// The last [`LOG_LINES`] lines of a task's log, without the closing `TASK ERROR` line (the
    /// error says it already).
    async fn task_log_tail(&self, task: &Upid) -> Result<Vec<String>> {
        let path = [
            "nodes",
            task.node.as_str(),
            "tasks",
            task.upid.as_str(),
            "log",
        ];
        let first: Value = self
            .send_query(&path, &[("start", "0".into()), ("limit", "1".into())])
            .await?;
        let total = first.get("total").and_then(Value::as_u64).unwrap_or(0) as usize;
        let start = total.saturating_sub(LOG_LINES + 1);
        let page: Value = self
            .send_query(
                &path,
                &[
                    ("start", start.to_string()),
                    ("limit", (LOG_LINES + 1).to_string()),
                ],
            )
            .await?;
        let lines = page
            .get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|l| l.get("t").and_then(Value::as_str))
            .filter(|t| !t.starts_with("TASK ERROR") && !t.trim().is_empty())
            .map(str::to_string)
            .collect();
        Ok(lines)
    }

    /// A GET whose whole envelope is wanted (the task log puts `total` beside `data`).
    async fn send_query(&self, path: &[&str], query: &[(&str, String)]) -> Result<Value> {
        let what = format!("GET /{}", path.join("/"));
        let response = self
            .http
            .get(self.url(path))
            .query(query)
            .header(AUTHORIZATION, self.auth.clone())
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| errors::transport_error(&self.system, &what, &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| errors::transport_error(&self.system, &what, &e))?;
        if !status.is_success() {
            return Err(errors::api_error(
                &self.system,
                &what,
                status.as_u16(),
                &body,
            ));
        }
        serde_json::from_slice(&body)
            .map_err(|e| Error::transient(&self.system, format!("{what}: unreadable answer: {e}")))
    }

    /// Runs a call that starts a task and waits for it.
    pub async fn run_task(
        &self,
        method: Method,
        path: &[&str],
        params: &[(&str, String)],
        timeout: Duration,
    ) -> Result<()> {
        let upid: String = self.call(method, path, params).await?;
        self.wait_task(&upid, timeout, &[]).await
    }
}

/// `text` with every non-empty string of `secrets` replaced by `<redacted>`.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_string(), |t, s| t.replace(s, "<redacted>"))
}

/// The HTTP client: certificate checks as `tls` says, names resolved through `guard`, no redirects.
fn http_client(base: &Url, guard: Guard, tls: &TlsOptions) -> Result<reqwest::Client> {
    let mut builder = guard
        .http_client(reqwest::Client::builder())
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(300))
        .tcp_nodelay(true)
        .user_agent(concat!("virtrigaud-runner/", env!("CARGO_PKG_VERSION")));
    if tls.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if let Some(pem) = tls.ca_pem.as_deref() {
        let ca = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
            Error::Invalid(format!(
                "the Proxmox VE CA (ca.crt) for {base} is not a PEM certificate: {e}"
            ))
        })?;
        builder = builder.add_root_certificate(ca);
    }
    builder
        .build()
        .map_err(|e| Error::Invalid(format!("http client for {base}: {e}")))
}

/// A number PVE may send as a JSON number or a string (`"memory": "2048"`, `/cluster/nextid`).
pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(u64::from(*b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let b = |e| base_url(e).unwrap().to_string();
        assert_eq!(b("https://pve:8006"), "https://pve:8006/api2/json/");
        assert_eq!(b("https://pve:8006/"), "https://pve:8006/api2/json/");
        assert_eq!(
            b("https://pve:8006/api2/json"),
            "https://pve:8006/api2/json/"
        );
        assert!(base_url("ftp://pve").is_err());
        let e = base_url("https://root:pw@pve:8006")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("pw@") && e.contains("token_secret"), "{e}");
    }

    #[test]
    fn token_header_checks_the_id_and_hides_the_secret() {
        let h = token_header("root@pam!virtrigaud", "s3cr3t").unwrap();
        assert!(h.is_sensitive());
        assert_eq!(
            h.to_str().unwrap(),
            "PVEAPIToken=root@pam!virtrigaud=s3cr3t"
        );
        for bad in ["root@pam", "root!x", "@pam!x", "root@!x", "root@pam!"] {
            let e = token_header(bad, "s3cr3t").unwrap_err().to_string();
            assert!(
                e.contains("user@realm!name") && !e.contains("s3cr3t"),
                "{bad}: {e}"
            );
        }
        let e = token_header("root@pam!x", "a\nb").unwrap_err().to_string();
        assert!(!e.contains("a\nb"), "{e}");
    }

    #[test]
    fn upids() {
        let u =
            Upid::parse("UPID:pve1:000075FA:0004EB6A:6B0F42C2:qmcreate:7901:root@pam!virtrigaud:")
                .unwrap();
        assert_eq!(
            (u.node.as_str(), u.kind.as_str(), u.id.as_str()),
            ("pve1", "qmcreate", "7901")
        );
        assert_eq!(u.to_string(), "task qmcreate 7901");
        assert_eq!(Upid::parse("104"), None);
    }

    #[tokio::test]
    async fn urls_encode_volume_ids() {
        let c = Client::new(
            "https://127.0.0.1:8006",
            "root@pam!t",
            "s",
            &TlsOptions::default(),
            Guard::new(true),
        )
        .await
        .unwrap();
        let u = c.url(&[
            "nodes",
            "pve1",
            "storage",
            "local",
            "content",
            "local:import/a b.qcow2",
        ]);
        assert_eq!(
            u.as_str(),
            "https://127.0.0.1:8006/api2/json/nodes/pve1/storage/local/content/local:import%2Fa%20b.qcow2"
        );
        assert!(!format!("{c:?}").contains("PVEAPIToken"));
    }

    #[test]
    fn scrubbing_and_numbers() {
        assert_eq!(
            scrub("wget -O x https://h/o?sig=1 failed", &["https://h/o?sig=1"]),
            "wget -O x <redacted> failed"
        );
        assert_eq!(as_u64(&serde_json::json!("2048")), Some(2048));
        assert_eq!(as_u64(&serde_json::json!(2)), Some(2));
        assert_eq!(as_u64(&serde_json::json!(null)), None);
    }
}
