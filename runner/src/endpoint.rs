//! Endpoint checks at connect time. The webhook refuses literal link-local and metadata addresses
//! when a spec is admitted; a host name can still resolve to one later (DNS rebinding, a poisoned
//! record), so the runner resolves every endpoint again before it connects and refuses those.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{Error, Result};

/// Cloud metadata services outside the link-local ranges (169.254.169.254 is link-local already).
const METADATA: [IpAddr; 2] = [
    // Alibaba Cloud.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // AWS over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Whether connecting to `ip` is refused: link-local (IPv4 169.254/16, IPv6 fe80::/10, also as an
/// IPv4-mapped IPv6 address) or a known metadata address. Loopback and private ranges are allowed:
/// on-premises hypervisors and storage live there.
pub fn is_forbidden(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    METADATA.contains(&ip)
        || match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        }
}

/// The host and port of an endpoint as the API spells them: a URL (`https://h:8006`,
/// `qemu+tcp://h/system`) or `host[:port]` (`minio.example.com:9000`, an NFS server). `None` for
/// endpoints without a host (`qemu:///system`). URLs without a port get their scheme's default or 0.
pub fn host_port(endpoint: &str) -> Result<Option<(String, u16)>> {
    let bad = |detail: String| Error::Invalid(format!("endpoint {endpoint:?}: {detail}"));
    let url = if endpoint.contains("://") {
        url::Url::parse(endpoint).map_err(|e| bad(e.to_string()))?
    } else {
        url::Url::parse(&format!("tcp://{endpoint}")).map_err(|e| bad(e.to_string()))?
    };
    let host = match url.host() {
        None => return Ok(None),
        Some(url::Host::Domain("")) => return Ok(None),
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
    };
    Ok(Some((host, url.port_or_known_default().unwrap_or(0))))
}

/// Resolves `endpoint` and refuses it when any address is link-local or metadata. Returns the
/// addresses (empty for host-less endpoints). Resolution failures are transient: DNS may recover.
pub async fn check(endpoint: &str) -> Result<Vec<SocketAddr>> {
    let Some((host, port)) = host_port(endpoint)? else {
        return Ok(Vec::new());
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| Error::transient("DNS", format!("resolving {host}: {e}")))?
        .collect();
    if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
        return Err(Error::ForbiddenEndpoint(format!(
            "{endpoint} resolves to {}, a link-local or cloud metadata address",
            bad.ip()
        )));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for bad in [
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "127.0.0.1",
            "10.0.0.5",
            "192.168.1.10",
            "::1",
            "2001:db8::1",
        ] {
            assert!(!is_forbidden(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn parses_the_apis_endpoint_shapes() {
        let hp = |e| host_port(e).unwrap();
        assert_eq!(
            hp("https://pve.example.com:8006"),
            Some(("pve.example.com".into(), 8006))
        );
        assert_eq!(hp("https://vcenter"), Some(("vcenter".into(), 443)));
        assert_eq!(
            hp("qemu+tcp://10.0.0.2/system"),
            Some(("10.0.0.2".into(), 0))
        );
        assert_eq!(hp("qemu:///system"), None);
        assert_eq!(hp("minio.local:9000"), Some(("minio.local".into(), 9000)));
        assert_eq!(hp("nfs.local"), Some(("nfs.local".into(), 0)));
        assert_eq!(hp("http://[fe80::1]:80/x"), Some(("fe80::1".into(), 80)));
    }

    #[tokio::test]
    async fn refuses_at_connect_time() {
        let err = check("http://169.254.169.254/latest").await.unwrap_err();
        assert!(matches!(err, Error::ForbiddenEndpoint(_)), "{err}");
        assert!(err.to_string().contains("169.254.169.254"));
        assert_eq!(check("127.0.0.1:9000").await.unwrap().len(), 1);
        assert!(check("qemu:///system").await.unwrap().is_empty());
    }
}
