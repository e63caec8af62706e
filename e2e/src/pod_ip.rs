//! Pod IP addresses from a range routed locally.
//!
//! Every pod gets its own address in the pod CIDR (default 10.244.0.0/16). The node makes the whole
//! range local with an "AnyIP" route (`ip route replace local <cidr> dev lo`), so a process listening
//! on 0.0.0.0 answers on its pod IP without any interface configuration. Loopback addresses
//! (127.0.0.0/8) cannot be used: the API server refuses them in Endpoints and EndpointSlices, so
//! Services (and webhooks behind them) would never get endpoints.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::error::{Error, Result};

/// An IPv4 network `a.b.c.d/len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

impl FromStr for Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Config(format!("{s:?} is not an IPv4 CIDR like 10.244.0.0/16"));
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&len) {
            return Err(Error::Config(format!(
                "{s:?}: prefix length must be 8..=30"
            )));
        }
        let mask = u32::MAX << (32 - len);
        Ok(Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl Cidr {
    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.len);
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// First and last usable host address (network and broadcast excluded; .1 is kept for the
    /// node side, so pods start at .2).
    fn host_range(&self) -> (u32, u32) {
        let base = u32::from(self.network);
        let size = 1u32 << (32 - self.len);
        (base + 2, base + size - 2)
    }
}

/// Hands out pod addresses, lowest free first.
#[derive(Debug)]
pub struct IpPool {
    cidr: Cidr,
    used: BTreeSet<u32>,
}

impl IpPool {
    /// An empty pool over `cidr`.
    pub fn new(cidr: Cidr) -> Self {
        IpPool {
            cidr,
            used: BTreeSet::new(),
        }
    }

    /// Marks an address as taken (a pod that already had it before the node restarted). Returns
    /// false when it is outside the range or taken.
    pub fn reserve(&mut self, ip: Ipv4Addr) -> bool {
        let (lo, hi) = self.cidr.host_range();
        let n = u32::from(ip);
        (lo..=hi).contains(&n) && self.used.insert(n)
    }

    /// Takes the lowest free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr> {
        let (lo, hi) = self.cidr.host_range();
        let mut candidate = lo;
        for &n in self.used.range(lo..=hi) {
            if n != candidate {
                break;
            }
            candidate += 1;
        }
        if candidate > hi {
            return Err(Error::Config(format!(
                "pod CIDR {} is exhausted",
                self.cidr
            )));
        }
        self.used.insert(candidate);
        Ok(Ipv4Addr::from(candidate))
    }

    /// Returns an address to the pool.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises_cidr() {
        let c: Cidr = "10.244.7.9/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.0.0/16");
        assert!(c.contains("10.244.255.1".parse().unwrap()));
        assert!(!c.contains("10.245.0.1".parse().unwrap()));
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("10.0.0.0/31".parse::<Cidr>().is_err());
    }

    #[test]
    fn allocates_lowest_free_and_reuses_released() {
        let mut pool = IpPool::new("10.9.0.0/29".parse().unwrap());
        // /29: .0 network, .1 node side, .7 broadcast: pods get .2 ..= .6
        assert!(pool.reserve("10.9.0.3".parse().unwrap()));
        assert!(!pool.reserve("10.9.0.3".parse().unwrap()));
        assert!(!pool.reserve("10.9.0.7".parse().unwrap()));
        let got: Vec<Ipv4Addr> = (0..4).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(
            got,
            ["10.9.0.2", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
                .map(|s| s.parse::<Ipv4Addr>().unwrap())
        );
        assert!(pool.allocate().is_err());
        pool.release("10.9.0.4".parse().unwrap());
        assert_eq!(
            pool.allocate().unwrap(),
            "10.9.0.4".parse::<Ipv4Addr>().unwrap()
        );
    }
}
