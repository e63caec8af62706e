//! The connection: TLS, the service content, the session cookie, and the one SOAP call path every
//! typed call goes through.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderMap, HeaderValue, SET_COOKIE};
use reqwest::{RequestBuilder, StatusCode};
use url::Url;

use super::soap::{self, Fault, Reply};
use super::types::MoRef;
use super::xml::{Elem, Xml};
use crate::endpoint::Guard;
use crate::{Error, Result};

/// The session cookie vSphere (and vcsim) set on Login.
pub const SESSION_COOKIE: &str = "vmware_soap_session";
/// vim25 version sent before the server's own is known (every vCenter since 6.5 speaks it).
const BOOTSTRAP_VERSION: &str = "6.5";
/// Objects per page of a listing unless [`Client::with_page_size`] says otherwise.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;
/// Default bound on waiting for a task (create, reconfigure, remove snapshot...).
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(3600);

/// How the server's certificate is checked.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Accept any certificate (the Provider's `insecureSkipVerify`).
    pub insecure_skip_verify: bool,
    /// PEM of a CA to trust besides the built-in web roots.
    pub ca_pem: Option<String>,
}

/// The managed objects of the service content the client uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceContent {
    pub root_folder: MoRef,
    pub property_collector: MoRef,
    pub view_manager: MoRef,
    pub session_manager: MoRef,
    pub search_index: MoRef,
    pub file_manager: MoRef,
    pub ovf_manager: MoRef,
    pub virtual_disk_manager: Option<MoRef>,
    /// `VirtualCenter` or `HostAgent` (a standalone ESXi).
    pub api_type: String,
    /// The vim25 version the server speaks (`8.0.3.0`); sent with every call.
    pub api_version: String,
    pub full_name: String,
}

/// A vSphere (vCenter or ESXi) SOAP client. Cheap to share behind an `Arc`: every call takes
/// `&self`. Errors name the SDK URL, never the credentials or the session cookie.
pub struct Client {
    pub(super) http: reqwest::Client,
    pub(super) sdk: Url,
    /// `host[:port]` of the SDK URL: replaces a `*` host in NFC device URLs.
    pub(super) authority: String,
    pub(super) system: String,
    pub(super) content: ServiceContent,
    /// Judges the hosts of device URLs.
    pub(super) guard: Guard,
    /// `vmware_soap_session=<value>` once logged in.
    pub(super) session: Mutex<Option<String>>,
    pub(super) request_timeout: Option<Duration>,
    pub(super) task_timeout: Duration,
    /// Objects per RetrievePropertiesEx page; more come with ContinueRetrievePropertiesEx.
    pub(super) page_size: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("sdk", &self.sdk.as_str())
            .field("api_version", &self.content.api_version)
            .field("logged_in", &self.session_cookie().is_some())
            .finish()
    }
}

impl Client {
    /// Connects to `endpoint` (`https://host[:port]`, `/sdk` implied when there is no path) and
    /// reads the service content. Nothing is logged in yet: see [`Client::login`].
    /// Every connection goes to an address `guard` judged (device URLs of other hosts too).
    pub async fn connect(endpoint: &str, tls: TlsOptions, guard: Guard) -> Result<Client> {
        let sdk = sdk_url(endpoint)?;
        guard.pin_url(&sdk).await?;
        let http = http_client(&sdk, guard, &tls)?;
        let authority = match sdk.port() {
            Some(p) => format!("{}:{p}", sdk.host_str().unwrap_or_default()),
            None => sdk.host_str().unwrap_or_default().to_string(),
        };
        let system = format!("vSphere {sdk}");
        let content = retrieve_service_content(&http, &sdk, &system).await?;
        Ok(Client {
            http,
            sdk,
            authority,
            system,
            content,
            guard,
            session: Mutex::new(None),
            request_timeout: Some(Duration::from_secs(300)),
            task_timeout: DEFAULT_TASK_TIMEOUT,
            page_size: DEFAULT_PAGE_SIZE,
        })
    }

    /// Bounds each SOAP request (`None`: only the connection's read timeout applies) and the
    /// waits of task-based calls.
    pub fn with_timeouts(mut self, request: Option<Duration>, task: Duration) -> Self {
        self.request_timeout = request;
        self.task_timeout = task;
        self
    }

    /// Objects per page when listing inventory (at least 1).
    pub fn with_page_size(mut self, objects: u32) -> Self {
        self.page_size = objects.max(1);
        self
    }

    /// The service content read at connect time.
    pub fn service_content(&self) -> &ServiceContent {
        &self.content
    }

    /// `vSphere https://host/sdk`: how errors name this server.
    pub fn system(&self) -> &str {
        &self.system
    }

    /// The SDK URL connected to.
    pub fn sdk_url(&self) -> &Url {
        &self.sdk
    }

    /// Logs in; the session cookie is kept for every later call and transfer. A refused login is
    /// [`Error::Auth`]; the message never contains the password.
    pub async fn login(&self, user: &str, password: &str) -> Result<()> {
        // a new session: an earlier cookie is not sent along
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let mut x = Xml::new();
        x.text("userName", user).text("password", password);
        let reply = self
            .post("Login", &self.content.session_manager, &x.finish())
            .await?;
        let cookie = session_cookie(&reply.headers).ok_or_else(|| Error::Auth {
            system: self.system.clone(),
            detail: format!("Login: the server set no {SESSION_COOKIE} cookie"),
        })?;
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(cookie);
        Ok(())
    }

    /// Ends the session. Idempotent: without a session, or when the server already dropped it,
    /// this succeeds; later calls fail with [`Error::Auth`] (NotAuthenticated).
    pub async fn logout(&self) -> Result<()> {
        if self.session_cookie().is_none() {
            return Ok(());
        }
        let result = self
            .call("Logout", &self.content.session_manager, Xml::new())
            .await;
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
        match result {
            Ok(_) | Err(Error::Auth { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The `Cookie` header value of the session, if logged in.
    pub(super) fn session_cookie(&self) -> Option<String> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds the session cookie to a request (SOAP, datastore or NFC).
    pub(super) fn with_session(&self, rb: RequestBuilder) -> RequestBuilder {
        match self.session_cookie() {
            Some(c) => rb.header(COOKIE, c),
            None => rb,
        }
    }

    /// Calls `method` on `this` with the body `args` and returns the `<methodResponse>` element.
    /// Faults become errors naming the method and the object.
    pub async fn call(&self, method: &str, this: &MoRef, args: Xml) -> Result<Elem> {
        Ok(self.post(method, this, &args.finish()).await?.elem)
    }

    /// [`Client::call`], returning the whole response text (for fragments sent back verbatim).
    pub async fn call_text(&self, method: &str, this: &MoRef, args: Xml) -> Result<String> {
        Ok(self.post(method, this, &args.finish()).await?.text)
    }

    /// Sends one SOAP request.
    async fn post(&self, method: &str, this: &MoRef, body: &str) -> Result<Exchanged> {
        let envelope = soap::envelope(method, this, body);
        let mut rb = self
            .with_session(self.http.post(self.sdk.clone()))
            .header(CONTENT_TYPE, "text/xml; charset=utf-8")
            .header(
                "SOAPAction",
                format!("\"urn:vim25/{}\"", self.content.api_version),
            )
            .body(envelope);
        if let Some(t) = self.request_timeout {
            rb = rb.timeout(t);
        }
        let context = format!("{method} on {this}");
        exchange(&self.system, &context, rb).await
    }
}

/// A SOAP reply that is not a fault.
struct Exchanged {
    headers: HeaderMap,
    text: String,
    /// The `<methodResponse>` element.
    elem: Elem,
}

/// Sends a SOAP request and reads the reply; shared by [`Client::post`] and the bootstrap.
async fn exchange(system: &str, context: &str, rb: RequestBuilder) -> Result<Exchanged> {
    let response = rb
        .send()
        .await
        .map_err(|e| soap::transport_error(system, context, &e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response
        .text()
        .await
        .map_err(|e| soap::transport_error(system, context, &e))?;
    match (status, soap::parse_reply(&text)) {
        (_, Ok(Reply::Fault(fault))) => Err(fault.into_error(system, context)),
        (StatusCode::OK, Ok(Reply::Ok(elem))) => Ok(Exchanged {
            headers,
            text,
            elem,
        }),
        (StatusCode::OK, Err(e)) => Err(Error::Invalid(format!(
            "{system}: {context}: the response is not a SOAP envelope ({e})"
        ))),
        // any other status, or a 500 without a SOAP fault (a proxy's error page)
        _ => Err(soap::status_error(system, context, status)),
    }
}

/// A fault raised by the client itself (a response without an expected element).
pub(super) fn unexpected(system: &str, context: &str, what: &str) -> Error {
    Fault {
        name: "UnexpectedResponse".into(),
        message: what.to_string(),
        fields: Vec::new(),
    }
    .into_error(system, context)
}

/// `https://host[:port]` -> `https://host[:port]/sdk`; a URL with a path keeps it.
fn sdk_url(endpoint: &str) -> Result<Url> {
    let shown = crate::endpoint::redacted(endpoint);
    let bad = |why: &str| Error::Invalid(format!("vSphere endpoint {shown:?}: {why}"));
    let mut url = Url::parse(endpoint).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad("must be an https:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials: put them in the Secret"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/sdk");
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The HTTP client: certificate checks as `tls` says, names resolved through `guard`, no redirects.
fn http_client(sdk: &Url, guard: Guard, tls: &TlsOptions) -> Result<reqwest::Client> {
    let mut builder = guard
        .http_client(reqwest::Client::builder())
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(120))
        .tcp_nodelay(true)
        .user_agent(concat!("virtrigaud-runner/", env!("CARGO_PKG_VERSION")));
    if tls.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if let Some(pem) = tls.ca_pem.as_deref() {
        let ca = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
            Error::Invalid(format!(
                "vSphere CA for {sdk} is not a PEM certificate: {e}"
            ))
        })?;
        builder = builder.add_root_certificate(ca);
    }
    builder
        .build()
        .map_err(|e| Error::Invalid(format!("http client for {sdk}: {e}")))
}

/// `RetrieveServiceContent` on `ServiceInstance`, before any session exists.
async fn retrieve_service_content(
    http: &reqwest::Client,
    sdk: &Url,
    system: &str,
) -> Result<ServiceContent> {
    let this = MoRef::new("ServiceInstance", "ServiceInstance");
    let context = "RetrieveServiceContent";
    let rb = http
        .post(sdk.clone())
        .header(CONTENT_TYPE, "text/xml; charset=utf-8")
        .header("SOAPAction", format!("\"urn:vim25/{BOOTSTRAP_VERSION}\""))
        .timeout(Duration::from_secs(60))
        .body(soap::envelope(context, &this, ""));
    let reply = exchange(system, context, rb).await?.elem;
    let rv = reply
        .child("returnval")
        .ok_or_else(|| unexpected(system, context, "no returnval"))?;
    service_content_from(rv, system)
}

/// Reads the `ServiceContent` returned by RetrieveServiceContent.
fn service_content_from(rv: &Elem, system: &str) -> Result<ServiceContent> {
    let context = "RetrieveServiceContent";
    let moref = |name: &str| {
        rv.moref_at(name).ok_or_else(|| {
            unexpected(
                system,
                context,
                &format!("no {name} in the service content"),
            )
        })
    };
    Ok(ServiceContent {
        root_folder: moref("rootFolder")?,
        property_collector: moref("propertyCollector")?,
        view_manager: moref("viewManager")?,
        session_manager: moref("sessionManager")?,
        search_index: moref("searchIndex")?,
        file_manager: moref("fileManager")?,
        ovf_manager: moref("ovfManager")?,
        virtual_disk_manager: rv.moref_at("virtualDiskManager"),
        api_type: rv.string_at("about/apiType"),
        api_version: rv
            .text_at("about/apiVersion")
            .filter(|v| !v.is_empty())
            .unwrap_or(BOOTSTRAP_VERSION)
            .to_string(),
        full_name: rv.string_at("about/fullName"),
    })
}

/// `vmware_soap_session=<value>` from the `Set-Cookie` headers of a Login response.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v: &HeaderValue| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::trim)
        .find(|pair| {
            pair.split_once('=')
                .is_some_and(|(name, value)| name == SESSION_COOKIE && !value.is_empty())
        })
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_path_is_implied() {
        assert_eq!(
            sdk_url("https://vc.example").unwrap().as_str(),
            "https://vc.example/sdk"
        );
        assert_eq!(
            sdk_url("https://127.0.0.1:8989/sdk").unwrap().as_str(),
            "https://127.0.0.1:8989/sdk"
        );
        assert_eq!(
            sdk_url("https://vc.example:443/").unwrap().as_str(),
            "https://vc.example/sdk"
        );
    }

    #[test]
    fn endpoints_refused() {
        for bad in [
            "http://vc.example",
            "https://u:secret@vc.example",
            "vc.example",
            "https://",
            "u:secret@vc.example:443",
        ] {
            let e = sdk_url(bad).unwrap_err();
            assert!(matches!(e, Error::Invalid(_)), "{bad}: {e:?}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn service_content_and_version() {
        let rv = crate::provider::vsphere::xml::parse(
            r#"<returnval xmlns="urn:vim25"><rootFolder type="Folder">group-d1</rootFolder>
<propertyCollector type="PropertyCollector">propertyCollector</propertyCollector>
<viewManager type="ViewManager">ViewManager</viewManager><about><fullName>VMware vCenter Server 8.0.3</fullName>
<apiType>VirtualCenter</apiType><apiVersion>8.0.3.0</apiVersion></about>
<sessionManager type="SessionManager">SessionManager</sessionManager><searchIndex type="SearchIndex">SearchIndex</searchIndex>
<fileManager type="FileManager">FileManager</fileManager><ovfManager type="OvfManager">OvfManager</ovfManager></returnval>"#,
        )
        .unwrap();
        let sc = service_content_from(&rv, "vSphere x").unwrap();
        assert_eq!(sc.api_version, "8.0.3.0");
        assert_eq!(sc.root_folder, MoRef::new("Folder", "group-d1"));
        assert_eq!(sc.virtual_disk_manager, None);
        let mut partial = rv.clone();
        partial.children.retain(|c| c.name != "searchIndex");
        let e = service_content_from(&partial, "vSphere x").unwrap_err();
        assert!(e.to_string().contains("no searchIndex"), "{e}");
    }

    #[test]
    fn session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("other=1; Path=/"));
        h.append(
            SET_COOKIE,
            HeaderValue::from_static("vmware_soap_session=\"52ab\"; Path=/; HttpOnly; Secure;"),
        );
        assert_eq!(
            session_cookie(&h).as_deref(),
            Some("vmware_soap_session=\"52ab\"")
        );
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }
}
