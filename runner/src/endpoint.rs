//! The endpoint policy where the runner connects. The webhook judged every endpoint when it was
//! admitted, but a name can resolve elsewhere later (DNS rebinding, a poisoned record), and an S3
//! Secret's `endpoint` key or a vSphere NFC URL is never admitted at all. So every connection the
//! runner opens goes through a [`Guard`], which applies the one policy ([`endpoint_policy`]) to the
//! address actually connected to:
//!
//! - IP literals are judged as written; names are resolved once and every address is judged.
//! - HTTP clients (vSphere, Proxmox VE, HTTP and S3 staging) resolve names through
//!   [`CheckedResolver`]: the addresses it hands to the connector are the ones it judged, so there
//!   is no second lookup to rebind.
//! - libvirt and OpenSSH, which connect by themselves, are given the judged address literally
//!   ([`Pinned::uri_host`]), with the host key or certificate still verified under the name.
//!
//! Loopback (and libvirt's local socket) is refused unless the operator runs with
//! `--allow-loopback-endpoints` (local test worlds), which it writes into the plan.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crd::plan::RunnerPlan;
pub use endpoint_policy::{AddressPolicy, Endpoint, Host, redacted};

use crate::{Error, Result};

/// How long one name resolution may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(10);

/// Applies the endpoint policy to what the runner connects to.
#[derive(Clone, Copy, Debug, Default)]
pub struct Guard {
    policy: AddressPolicy,
}

impl Guard {
    /// The guard of a runner; loopback only with `allow_loopback` (local test worlds).
    pub fn new(allow_loopback: bool) -> Guard {
        Guard {
            policy: AddressPolicy { allow_loopback },
        }
    }

    /// The guard the plan asks for.
    pub fn for_plan(plan: &RunnerPlan) -> Guard {
        Guard::new(plan.allow_loopback_endpoints)
    }

    /// Whether loopback endpoints, and libvirt's local socket, are allowed.
    pub fn allows_local(&self) -> bool {
        self.policy.allow_loopback
    }

    /// Judges `endpoint` (parsed from `shown`, which messages use) and resolves it once: the
    /// addresses to connect to. A refused address is terminal; a name that does not resolve is not.
    pub async fn pin(&self, endpoint: &Endpoint, shown: &str) -> Result<Pinned> {
        let shown = redacted(shown);
        self.policy
            .check_host(&endpoint.host)
            .map_err(|why| Error::ForbiddenEndpoint(format!("{shown}: {why}")))?;
        let addrs = match &endpoint.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, endpoint.port)],
            Host::Name(name) => self
                .resolve(name, endpoint.port)
                .await
                .map_err(|e| match e {
                    Error::ForbiddenEndpoint(why) => {
                        Error::ForbiddenEndpoint(format!("{shown}: {why}"))
                    }
                    other => other,
                })?,
        };
        Ok(Pinned {
            endpoint: endpoint.clone(),
            addrs,
        })
    }

    /// [`pin`](Self::pin) for an `http(s)://` URL.
    pub async fn pin_url(&self, url: &url::Url) -> Result<Pinned> {
        let endpoint = endpoint_policy::parse_http(url.as_str())
            .map_err(|why| Error::Invalid(format!("endpoint: {why}")))?;
        self.pin(&endpoint, url.as_str()).await
    }

    /// The resolver HTTP clients use for every name they connect to.
    pub fn resolver(&self) -> CheckedResolver {
        CheckedResolver { guard: *self }
    }

    /// `builder` resolving through [`resolver`](Self::resolver).
    pub fn http_client(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder.dns_resolver(Arc::new(self.resolver()))
    }

    /// Resolves `name` and judges every address; no address at all is a transient failure.
    async fn resolve(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>> {
        self.policy
            .check_name(name)
            .map_err(Error::ForbiddenEndpoint)?;
        let looked_up = tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((name, port)))
            .await
            .map_err(|_| {
                Error::transient("DNS", format!("resolving {name} took over {DNS_TIMEOUT:?}"))
            })?
            .map_err(|e| Error::transient("DNS", format!("resolving {name}: {e}")))?;
        let addrs: Vec<SocketAddr> = looked_up.collect();
        if addrs.is_empty() {
            return Err(Error::transient("DNS", format!("{name} has no address")));
        }
        for addr in &addrs {
            self.policy
                .check_ip(addr.ip())
                .map_err(|why| Error::ForbiddenEndpoint(format!("{name} resolves to {why}")))?;
        }
        Ok(addrs)
    }
}

/// An endpoint with the addresses judged for it.
#[derive(Clone, Debug)]
pub struct Pinned {
    endpoint: Endpoint,
    addrs: Vec<SocketAddr>,
}

impl Pinned {
    /// The judged addresses, in resolver order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The address a library that connects by itself is given (the first judged one).
    pub fn address(&self) -> IpAddr {
        self.addrs[0].ip()
    }

    /// [`address`](Self::address) as a URI host: `10.0.0.5` or `[fd00::1]`.
    pub fn uri_host(&self) -> String {
        match self.address() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        }
    }

    /// The DNS name the endpoint was written with, when it was not an IP literal.
    pub fn name(&self) -> Option<&str> {
        match &self.endpoint.host {
            Host::Name(name) => Some(name),
            Host::Ip(_) => None,
        }
    }

    /// The port connected to.
    pub fn port(&self) -> u16 {
        self.endpoint.port
    }

    /// One pin per judged address, in resolver order, for a library that takes one address per
    /// try (what it would have done with the name's addresses itself).
    pub fn each(&self) -> impl Iterator<Item = Pinned> + '_ {
        self.addrs.iter().map(|addr| Pinned {
            endpoint: self.endpoint.clone(),
            addrs: vec![*addr],
        })
    }
}

/// A DNS resolver that refuses names resolving to an address the policy forbids, for reqwest and
/// the AWS SDK: what it returns is exactly what was judged.
#[derive(Clone, Copy, Debug)]
pub struct CheckedResolver {
    guard: Guard,
}

impl CheckedResolver {
    async fn lookup(self, name: String) -> Result<Vec<SocketAddr>> {
        self.guard.resolve(&name, 0).await
    }
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = *self;
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = this.lookup(name).await.map_err(Box::new)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl aws_smithy_runtime_api::client::dns::ResolveDns for CheckedResolver {
    fn resolve_dns<'a>(
        &'a self,
        name: &'a str,
    ) -> aws_smithy_runtime_api::client::dns::DnsFuture<'a> {
        use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDnsError};
        let this = *self;
        DnsFuture::new(async move {
            let addrs = this
                .lookup(name.to_owned())
                .await
                .map_err(ResolveDnsError::new)?;
            Ok(addrs.into_iter().map(|a| a.ip()).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(s: &str) -> Endpoint {
        endpoint_policy::parse_s3(s).unwrap()
    }

    #[tokio::test]
    async fn judges_literals_and_names() {
        let strict = Guard::default();
        for bad in [
            "http://169.254.169.254",
            "http://[fd00:ec2::254]",
            "http://[::ffff:169.254.169.254]",
            "http://[64:ff9b::a9fe:a9fe]",
            "http://100.100.100.200",
            "http://0.0.0.0",
            "http://224.0.0.1",
            "http://127.0.0.1:9000",
            "http://localhost:9000",
            "http://metadata.google.internal",
        ] {
            let err = strict.pin(&endpoint(bad), bad).await.unwrap_err();
            assert!(matches!(err, Error::ForbiddenEndpoint(_)), "{bad}: {err}");
        }
        let pinned = strict
            .pin(&endpoint("10.1.2.3:9000"), "10.1.2.3:9000")
            .await
            .unwrap();
        assert_eq!(pinned.addrs(), &["10.1.2.3:9000".parse().unwrap()]);
        assert_eq!(pinned.uri_host(), "10.1.2.3");
        assert_eq!(pinned.name(), None);
    }

    #[tokio::test]
    async fn loopback_only_when_allowed() {
        let local = Guard::new(true);
        let pinned = local
            .pin(&endpoint("localhost:9000"), "localhost:9000")
            .await
            .unwrap();
        assert!(pinned.address().is_loopback(), "{:?}", pinned.addrs());
        assert_eq!(pinned.name(), Some("localhost"));
        let v6 = local.pin(&endpoint("[::1]:9"), "[::1]:9").await.unwrap();
        assert_eq!(v6.uri_host(), "[::1]");
        // still no metadata service, even in a test world
        let err = local
            .pin(&endpoint("169.254.169.254"), "169.254.169.254")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ForbiddenEndpoint(_)), "{err}");
    }

    #[tokio::test]
    async fn the_resolver_refuses_what_the_policy_forbids() {
        use reqwest::dns::Resolve as _;
        let strict = Guard::default().resolver();
        let err = match strict.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved under the strict policy"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("loopback"), "{err}");
        let local = Guard::new(true).resolver();
        let addrs: Vec<SocketAddr> = match local.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => panic!("{e}"),
        };
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[tokio::test]
    async fn an_http_client_cannot_reach_a_refused_name() {
        let client = Guard::default()
            .http_client(reqwest::Client::builder())
            .build()
            .unwrap();
        let err = client.get("http://localhost:1/").send().await.unwrap_err();
        let chain = format!("{:?}", error_chain(&err));
        assert!(chain.contains("loopback"), "{chain}");
    }

    fn error_chain(e: &dyn std::error::Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut cur = e.source();
        while let Some(s) = cur {
            out.push(s.to_string());
            cur = s.source();
        }
        out
    }
}
