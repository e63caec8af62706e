//! The one endpoint policy: what host an endpoint names, and whether the runner may be sent there.
//! The webhook applies it when a VMMigration, Provider or VirtualMachine is admitted; the runner
//! again to every address it connects to; everything that shows an endpoint shows it [`redacted`].
//!
//! A VMMigration makes the runner connect to its storage endpoint with the storage credentials, from
//! inside the cluster. Pointing it at a cloud metadata service or a link-local address would turn the
//! operator into a proxy for those, so such endpoints are refused, both as literals and as names that
//! resolve to them. Loopback is refused too (it would be the runner pod itself) unless webhook and
//! operator run with `--allow-loopback-endpoints` (the local test world puts everything on 127.0.0.1).
//!
//! Admission sees only the objects it admits; what it never sees (an S3 Secret's `endpoint` key, the
//! host of a vSphere NFC device URL) and what a name resolves to at connect time are judged by the
//! runner (`runner::endpoint`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;

/// The host part of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IP literal.
    Ip(IpAddr),
    /// A DNS name, lowercase, without a trailing dot.
    Name(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// Where a storage endpoint points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: Host,
    /// The port to connect to (the scheme's default when none is written).
    pub port: u16,
    /// The endpoint is an `http://` URL: data and credentials would travel in clear text.
    pub plain_http: bool,
}

/// Parses an s3 `storage.endpoint`: `host`, `host:port`, or an `http(s)://host[:port]` URL.
pub fn parse_s3(endpoint: &str) -> Result<Endpoint, String> {
    let shown = redacted(endpoint);
    if endpoint.contains("://") {
        return parse_url(endpoint, "an http(s)://host[:port] URL or host[:port]");
    }
    let url = url::Url::parse(&format!("https://{endpoint}"))
        .map_err(|e| format!("{shown:?} is not host[:port] or an http(s) URL: {e}"))?;
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{shown:?} has a path: write host[:port] or an http(s)://host[:port] URL (a key prefix goes in storage.path)"
        ));
    }
    from_url(endpoint, &url)
}

/// Parses an http `storage.endpoint`: an `http://` or `https://` URL.
pub fn parse_http(endpoint: &str) -> Result<Endpoint, String> {
    parse_url(
        endpoint,
        "an http:// or https:// URL, e.g. https://files.example.com/exports",
    )
}

/// The portmapper's port (rpcbind): where a bare nfs endpoint is asked for the MOUNT and NFS ports.
pub const PORTMAPPER_PORT: u16 = 111;

/// An nfs `storage.endpoint`: the server and the port written with it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsServer {
    /// The server; its `port` is the written one, or [`PORTMAPPER_PORT`] for a bare host (the first
    /// port connected to either way).
    pub endpoint: Endpoint,
    /// `host:port`: MOUNT and NFS are both served on that port (as userspace servers do) and no
    /// portmapper is asked. `None` for a bare host: the portmapper tells both ports.
    pub port: Option<u16>,
}

/// Parses an nfs `storage.endpoint`: the NFS server's host name or IP address, optionally with a
/// port (`host:port`, `[v6]:port`); nothing else (no scheme, no export path).
pub fn parse_nfs(endpoint: &str) -> Result<Endpoint, String> {
    parse_nfs_server(endpoint).map(|server| server.endpoint)
}

/// [`parse_nfs`], keeping whether a port was written.
pub fn parse_nfs_server(endpoint: &str) -> Result<NfsServer, String> {
    let bad = || {
        format!(
            "{:?} is not a host name or IP address, optionally with a port (the NFS server, e.g. nfs.example.com, \
             10.0.0.5 or 10.0.0.5:2049; the export goes in storage.path)",
            redacted(endpoint)
        )
    };
    // `[v6]`, `[v6]:port`, a bare IPv6 literal, `host`, `host:port`
    let (host, port) = if let Some(rest) = endpoint.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
        };
        (format!("[{inside}]"), port)
    } else if endpoint.matches(':').count() > 1 {
        (format!("[{endpoint}]"), None)
    } else {
        match endpoint.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (endpoint.to_owned(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(bad()),
        },
    };
    if host.is_empty() || host.contains(['@', '/', '?', '#']) {
        return Err(bad());
    }
    let host = url::Host::parse(&host).map_err(|_| bad())?;
    Ok(NfsServer {
        endpoint: Endpoint {
            host: host_of(host),
            port: port.unwrap_or(PORTMAPPER_PORT),
            plain_http: false,
        },
        port,
    })
}

/// libvirt transports a Provider may name. The local socket (`qemu:///system`) only when
/// `allow_local` (it is the runner pod's own host).
const LIBVIRT_SCHEMES: &[(&str, u16)] =
    &[("qemu+tcp", 16509), ("qemu+tls", 16514), ("qemu+ssh", 22)];

/// Parses a libvirt Provider endpoint: `qemu+tcp://`, `qemu+tls://` or `qemu+ssh://[user@]host[:port]/system`
/// (or `/session`). Refused: other transports (`qemu+ext`, `qemu+unix`, ...), any query parameter
/// (`command=`, `socket=`, `keyfile=`, `no_verify=`... make libvirt run or open things), and a
/// password in the URL. `Ok(None)` for the local socket `qemu:///system`, allowed only with
/// `allow_local`.
pub fn parse_libvirt(endpoint: &str, allow_local: bool) -> Result<Option<Endpoint>, String> {
    let shown = redacted(endpoint);
    let url = url::Url::parse(endpoint)
        .map_err(|e| format!("{shown:?} is not a libvirt URI (qemu+tcp://host/system): {e}"))?;
    if url.query().is_some() {
        return Err(format!(
            "{shown:?} has query parameters: libvirt URI parameters (command, socket, keyfile, no_verify...) \
             make the runner run or open things; credentials and keys go in the credentials Secret"
        ));
    }
    if url.password().is_some() {
        return Err(format!(
            "{shown:?} carries a password in the URI: put credentials in the Secret named by credentialSecretRef"
        ));
    }
    if !matches!(url.path(), "/system" | "/session") {
        return Err(format!("{shown:?}: the path must be /system or /session"));
    }
    if url.scheme() == "qemu" && url.host().is_none() {
        return match allow_local {
            true => Ok(None),
            false => Err(format!(
                "{shown:?} is the runner's own local libvirt socket: name the hypervisor host \
                 (qemu+tcp://, qemu+tls:// or qemu+ssh://)"
            )),
        };
    }
    let Some((_, port)) = LIBVIRT_SCHEMES.iter().find(|(s, _)| *s == url.scheme()) else {
        let allowed: Vec<&str> = LIBVIRT_SCHEMES.iter().map(|(s, _)| *s).collect();
        return Err(format!(
            "transport {:?} is not allowed (allowed: {})",
            url.scheme(),
            allowed.join(", ")
        ));
    };
    let host = url.host().ok_or_else(|| format!("{shown:?} has no host"))?;
    Ok(Some(Endpoint {
        host: host_of(host.to_owned()),
        port: url.port().unwrap_or(*port),
        plain_http: false,
    }))
}

/// Parses an `https://host[:port][/path]` endpoint of a hypervisor API (vSphere, Proxmox VE):
/// https only, no credentials in the URL, no query.
pub fn parse_api(endpoint: &str, example: &str) -> Result<Endpoint, String> {
    let shown = redacted(endpoint);
    let url = url::Url::parse(endpoint)
        .map_err(|e| format!("{shown:?} is not an https URL (e.g. {example}): {e}"))?;
    if url.scheme() != "https" {
        return Err(format!(
            "{shown:?} must be an https URL (e.g. {example}): the API carries credentials"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{shown:?} must not have a query or fragment"));
    }
    from_url(endpoint, &url)
}

/// Parses an SSH login host (`host` or an IP address).
pub fn parse_host(host: &str, port: u16) -> Result<Endpoint, String> {
    let parsed = url::Host::parse(host)
        .map_err(|_| format!("{:?} is not a host name or IP address", redacted(host)))?;
    Ok(Endpoint {
        host: host_of(parsed),
        port,
        plain_http: false,
    })
}

fn parse_url(endpoint: &str, expected: &str) -> Result<Endpoint, String> {
    let shown = redacted(endpoint);
    let url = url::Url::parse(endpoint).map_err(|e| format!("{shown:?} is not {expected}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not allowed (allowed: http, https): {shown:?} is not {expected}",
            url.scheme()
        ));
    }
    from_url(endpoint, &url)
}

fn from_url(endpoint: &str, url: &url::Url) -> Result<Endpoint, String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{:?} carries credentials in the URL: put them in the Secret named by storage.credentialsSecretRef",
            redact(url)
        ));
    }
    let host = url
        .host()
        .ok_or_else(|| format!("{:?} has no host", redacted(endpoint)))?;
    Ok(Endpoint {
        host: host_of(host.to_owned()),
        port: url.port_or_known_default().unwrap_or(443),
        plain_http: url.scheme() == "http",
    })
}

/// The URL without its user info, for messages.
fn redact(url: &url::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// An endpoint as written, with any `user:password@` replaced by `***@`: for every message that shows
/// an endpoint, so credentials put in the wrong place never reach a response, a log or an audit record.
pub fn redacted(endpoint: &str) -> String {
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, endpoint),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

fn host_of(host: url::Host<String>) -> Host {
    match host {
        url::Host::Ipv4(ip) => Host::Ip(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Host::Ip(IpAddr::V6(ip)),
        // URLs of non-special schemes (qemu+tcp://) keep IP literals as opaque host strings
        url::Host::Domain(name) => match name.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(name.trim_end_matches('.').to_ascii_lowercase()),
        },
    }
}

/// Address ranges no endpoint may point into, with what they are.
const FORBIDDEN_NETS: &[(&str, &str)] = &[
    (
        "169.254.0.0/16",
        "a link-local address (cloud metadata services live at 169.254.169.254)",
    ),
    ("fe80::/10", "a link-local address"),
    (
        "100.100.100.200/32",
        "a cloud metadata address (Alibaba Cloud)",
    ),
    ("fd00:ec2::254/128", "a cloud metadata address (AWS IPv6)"),
    ("192.0.0.192/32", "a cloud metadata address (Oracle Cloud)"),
    ("0.0.0.0/8", "an unspecified address (it means this host)"),
    ("::/128", "an unspecified address (it means this host)"),
    ("224.0.0.0/4", "a multicast address"),
    ("ff00::/8", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
];

/// Names of cloud metadata services (besides their addresses, which resolve into the ranges above).
const METADATA_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.com",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
    "metadata.platformequinix.com",
];

/// Which endpoint addresses are allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddressPolicy {
    /// Allow 127.0.0.0/8, ::1 and `localhost` (local test worlds only).
    pub allow_loopback: bool,
}

impl AddressPolicy {
    /// Why `ip` may not be an endpoint address, if it may not.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        let ip = ip.to_canonical();
        // NAT64 (64:ff9b::/96) embeds an IPv4 address: judge the embedded one.
        if let IpAddr::V6(v6) = ip
            && v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
        {
            let [.., a, b, c, d] = v6.octets();
            return self.check_ip(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
        }
        for (net, what) in FORBIDDEN_NETS {
            let net: IpNet = net.parse().expect("the table holds valid networks");
            if net.contains(&ip) {
                return Err(format!("{ip} is {what}"));
            }
        }
        if ip.is_loopback() && !self.allow_loopback {
            return Err(format!(
                "{ip} is a loopback address (the runner pod itself; allowed only in installs run with --allow-loopback-endpoints)"
            ));
        }
        Ok(())
    }

    /// Why the DNS name `name` may not be an endpoint host, if it may not (before resolving it).
    pub fn check_name(&self, name: &str) -> Result<(), String> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if METADATA_NAMES.contains(&name.as_str()) {
            return Err(format!("{name} is a cloud metadata service"));
        }
        if (name == "localhost" || name.ends_with(".localhost")) && !self.allow_loopback {
            return Err(format!(
                "{name} is a loopback name (the runner pod itself; allowed only in installs run with --allow-loopback-endpoints)"
            ));
        }
        Ok(())
    }

    /// Checks what needs no I/O: an IP literal, or a name on the deny lists.
    pub fn check_host(&self, host: &Host) -> Result<(), String> {
        match host {
            Host::Ip(ip) => self.check_ip(*ip),
            Host::Name(name) => self.check_name(name),
        }
    }

    /// Checks every address a host name resolves to (an IP literal has nothing to resolve). A name that
    /// does not resolve is allowed: the webhook's DNS may differ from the runner's, and the runner checks
    /// its storage in its Validating phase.
    pub async fn check_resolved(
        &self,
        endpoint: &Endpoint,
        resolver: &dyn Resolve,
    ) -> Result<(), String> {
        let Host::Name(name) = &endpoint.host else {
            return Ok(());
        };
        match resolver.resolve(name, endpoint.port).await {
            Ok(addresses) => addresses.into_iter().try_for_each(|ip| {
                self.check_ip(ip)
                    .map_err(|why| format!("{name} resolves to {why}"))
            }),
            Err(error) => {
                tracing::debug!(%name, %error, "endpoint host does not resolve here; not a reason to deny");
                Ok(())
            }
        }
    }

    /// [`check_host`](Self::check_host), then [`check_resolved`](Self::check_resolved).
    pub async fn check_endpoint(
        &self,
        endpoint: &Endpoint,
        resolver: &dyn Resolve,
    ) -> Result<(), String> {
        self.check_host(&endpoint.host)?;
        self.check_resolved(endpoint, resolver).await
    }
}

/// Name resolution, behind a trait so tests can decide what a name resolves to.
#[async_trait::async_trait]
pub trait Resolve: Send + Sync {
    /// The addresses `host` resolves to.
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>>;
}

/// The system resolver (tokio's `lookup_host`), bounded by a timeout so an answer never waits on DNS.
#[derive(Debug, Clone)]
pub struct SystemResolver {
    pub timeout: Duration,
}

#[async_trait::async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
        match tokio::time::timeout(self.timeout, tokio::net::lookup_host((host, port))).await {
            Ok(addresses) => Ok(addresses?.map(|a| a.ip()).collect()),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("resolving {host} took longer than {:?}", self.timeout),
            )),
        }
    }
}

/// A fixed table of names (tests and local runs); other names do not resolve.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    names: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// Adds a name and its addresses.
    pub fn with(mut self, name: &str, addresses: &[IpAddr]) -> Self {
        self.names
            .insert(name.to_ascii_lowercase(), addresses.to_vec());
        self
    }
}

#[async_trait::async_trait]
impl Resolve for StaticResolver {
    async fn resolve(&self, host: &str, _port: u16) -> std::io::Result<Vec<IpAddr>> {
        self.names.get(host).cloned().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host}: unknown name"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn s3_endpoints() {
        let e = parse_s3("minio.example.com:9000").unwrap();
        assert_eq!(e.host, Host::Name("minio.example.com".into()));
        assert_eq!(e.port, 9000);
        assert!(!e.plain_http);
        let e = parse_s3("http://10.0.0.5:9000").unwrap();
        assert_eq!(e.host, Host::Ip(ip("10.0.0.5")));
        assert!(e.plain_http);
        assert_eq!(
            parse_s3("[fd00::1]:9000").unwrap().host,
            Host::Ip(ip("fd00::1"))
        );
        assert_eq!(parse_s3("S3.AmazonAWS.com").unwrap().port, 443);
        assert!(
            parse_s3("ftp://x")
                .unwrap_err()
                .contains("allowed: http, https")
        );
        assert!(parse_s3("host/bucket").unwrap_err().contains("has a path"));
        assert!(
            parse_s3("https://u:p@host")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(!parse_s3("https://u:p@host").unwrap_err().contains("u:p"));
        assert!(parse_s3("").is_err());
        for leaky in [
            "ftp://u:secret@h",
            "u:secret@h/x",
            "https://u:secret@",
            "nfs://u:secret@h",
        ] {
            let message = parse_s3(leaky).unwrap_err();
            assert!(!message.contains("secret"), "{message}");
            assert!(!parse_http(leaky).unwrap_err().contains("secret"));
            assert!(!parse_nfs(leaky).unwrap_err().contains("secret"));
        }
    }

    #[test]
    fn libvirt_uris() {
        let e = parse_libvirt("qemu+tcp://kvm1.example.com/system", false)
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.host.to_string(), e.port),
            ("kvm1.example.com".into(), 16509)
        );
        let e = parse_libvirt("qemu+ssh://root@10.0.0.5:2222/system", false)
            .unwrap()
            .unwrap();
        assert_eq!(e.port, 2222);
        assert_eq!(parse_libvirt("qemu:///system", true).unwrap(), None);
        for (bad, why) in [
            ("qemu:///system", "local libvirt socket"),
            ("qemu+ssh://h/system?command=/bin/sh", "query parameters"),
            ("qemu+tcp://h/system?socket=/var/run/x", "query parameters"),
            (
                "qemu+ssh://h/system?keyfile=/etc/shadow",
                "query parameters",
            ),
            ("qemu+tcp://vrg:hunter2@h/system", "password"),
            ("qemu+ext://h/system", "transport \"qemu+ext\""),
            ("qemu+unix:///system", "transport \"qemu+unix\""),
            ("qemu+tcp://h/other", "/system or /session"),
        ] {
            let err = parse_libvirt(bad, false).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn api_endpoints() {
        let e = parse_api("https://vcenter.example.com", "https://vcenter.example.com").unwrap();
        assert_eq!(
            (e.host.to_string(), e.port),
            ("vcenter.example.com".into(), 443)
        );
        let e = parse_api("https://pve:8006", "x").unwrap();
        assert_eq!(e.port, 8006);
        for bad in [
            "http://vcenter/sdk",
            "https://u:p@vcenter",
            "https://h/?a=b",
            "vcenter.example.com",
        ] {
            let err = parse_api(bad, "x").unwrap_err();
            assert!(!err.contains(":p@"), "{err}");
        }
        assert!(parse_host("pve1.example.com", 22).is_ok());
        assert!(parse_host("a b", 22).is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(redacted("https://u:p@h:1/a@b"), "https://***@h:1/a@b");
        assert_eq!(redacted("u:p@h"), "***@h");
        assert_eq!(redacted("https://h/x"), "https://h/x");
    }

    #[test]
    fn http_and_nfs_endpoints() {
        let e = parse_http("https://files.example.com/exports").unwrap();
        assert_eq!(e.port, 443);
        assert!(parse_http("files.example.com").is_err());
        assert!(parse_http("s3://bucket").is_err());
        assert_eq!(
            parse_nfs("nfs.local").unwrap().host,
            Host::Name("nfs.local".into())
        );
        assert_eq!(
            parse_nfs("10.1.2.3").unwrap().host,
            Host::Ip(ip("10.1.2.3"))
        );
        assert_eq!(
            parse_nfs("[fd00::5]").unwrap().host,
            Host::Ip(ip("fd00::5"))
        );
        for bad in [
            "nfs://x",
            "host:/export",
            "host/export",
            "",
            "host:",
            "host:0",
            "host:65536",
            "host:+20",
            "[fd00::5",
            "[fd00::5]x",
            "u@host",
            ":2049",
        ] {
            let why = parse_nfs(bad).unwrap_err();
            assert!(why.contains("host name or IP address"), "{bad}: {why}");
        }
        let bare = parse_nfs_server("nfs.local").unwrap();
        assert_eq!((bare.port, bare.endpoint.port), (None, PORTMAPPER_PORT));
        let with_port = parse_nfs_server("10.1.2.3:2049").unwrap();
        assert_eq!(with_port.endpoint.host, Host::Ip(ip("10.1.2.3")));
        assert_eq!(
            (with_port.port, with_port.endpoint.port),
            (Some(2049), 2049)
        );
        let v6 = parse_nfs_server("[fd00::5]:12049").unwrap();
        assert_eq!(v6.endpoint.host, Host::Ip(ip("fd00::5")));
        assert_eq!(v6.port, Some(12049));
        assert_eq!(
            parse_nfs_server("fd00::5").unwrap().endpoint.host,
            Host::Ip(ip("fd00::5"))
        );
        assert_eq!(
            parse_nfs("NFS.Example.com:111").unwrap().host,
            Host::Name("nfs.example.com".into())
        );
    }

    #[test]
    fn forbidden_addresses() {
        let strict = AddressPolicy::default();
        for bad in [
            "169.254.169.254",
            "169.254.170.2",
            "fe80::1",
            "100.100.100.200",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "0.0.0.0",
            "::",
            "127.0.0.1",
            "::1",
            "224.0.0.1",
        ] {
            assert!(strict.check_ip(ip(bad)).is_err(), "{bad}");
        }
        for good in [
            "10.0.0.5",
            "192.168.1.10",
            "52.216.0.1",
            "fd00::1",
            "2600::1",
        ] {
            assert_eq!(strict.check_ip(ip(good)), Ok(()), "{good}");
        }
        let lab = AddressPolicy {
            allow_loopback: true,
        };
        assert_eq!(lab.check_ip(ip("127.0.0.1")), Ok(()));
        assert_eq!(lab.check_name("localhost"), Ok(()));
        assert!(lab.check_ip(ip("169.254.169.254")).is_err());
        assert!(strict.check_name("Metadata.Google.Internal.").is_err());
        assert!(strict.check_name("localhost").is_err());
    }

    #[tokio::test]
    async fn names_are_judged_by_what_they_resolve_to() {
        let resolver = StaticResolver::default()
            .with("evil.example", &[ip("10.0.0.1"), ip("169.254.169.254")])
            .with("good.example", &[ip("10.0.0.1")]);
        let policy = AddressPolicy::default();
        let endpoint = |h: &str| parse_s3(h).unwrap();
        let err = policy
            .check_endpoint(&endpoint("evil.example"), &resolver)
            .await
            .unwrap_err();
        assert!(
            err.contains("evil.example resolves to 169.254.169.254"),
            "{err}"
        );
        assert_eq!(
            policy
                .check_endpoint(&endpoint("good.example"), &resolver)
                .await,
            Ok(())
        );
        assert_eq!(
            policy
                .check_endpoint(&endpoint("unknown.example"), &resolver)
                .await,
            Ok(()),
            "a name that does not resolve is not a reason to deny"
        );
    }

    #[tokio::test]
    async fn the_system_resolver_resolves_localhost_to_loopback() {
        let resolver = SystemResolver {
            timeout: Duration::from_secs(2),
        };
        let addresses = resolver.resolve("localhost", 80).await.unwrap();
        assert!(addresses.iter().all(|a| a.is_loopback()), "{addresses:?}");
    }
}
