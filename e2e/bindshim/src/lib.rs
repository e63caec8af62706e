//! An `LD_PRELOAD` library for the e2e process node.
//!
//! Pods on the process node share the host's network namespace, so two programs listening on
//! `0.0.0.0:8080` in different pods would collide, and each would also be reachable on every
//! address of the machine. The node preloads this library into every container process with
//! `VRG_BIND_IP=<pod IP>`: an IPv4 `bind()` to the wildcard address becomes a bind to the pod IP,
//! which is what a program in its own network namespace would effectively listen on. Everything
//! else goes to the C library's `bind` unchanged.
//!
//! An IPv6 wildcard bind (`[::]`, dual-stack) becomes a bind to the IPv4-mapped pod IP
//! (`::ffff:<pod IP>`).
//!
//! Limits: statically linked programs (no dynamic loader) are not affected; a program that then
//! connects to itself on 127.0.0.1 will not find itself.

use std::ffi::c_int;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use nix::libc::{self, sockaddr, sockaddr_in, sockaddr_in6, socklen_t};

/// Environment variable naming the address wildcard binds are moved to.
pub const ENV_BIND_IP: &str = "VRG_BIND_IP";

type BindFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;

fn real_bind() -> Option<BindFn> {
    static REAL: OnceLock<Option<BindFn>> = OnceLock::new();
    *REAL.get_or_init(|| {
        // SAFETY: dlsym with a valid NUL-terminated name; RTLD_NEXT finds the C library's bind.
        let sym = unsafe { libc::dlsym(libc::RTLD_NEXT, c"bind".as_ptr()) };
        // SAFETY: the symbol named "bind" in libc has exactly this signature.
        (!sym.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, BindFn>(sym) })
    })
}

fn bind_ip() -> Option<Ipv4Addr> {
    static IP: OnceLock<Option<Ipv4Addr>> = OnceLock::new();
    *IP.get_or_init(|| std::env::var(ENV_BIND_IP).ok()?.parse().ok())
}

/// A socket address to bind instead of the caller's.
#[derive(Clone, Copy)]
pub enum Moved {
    /// IPv4.
    V4(sockaddr_in),
    /// IPv6 (IPv4-mapped).
    V6(sockaddr_in6),
}

/// The address to bind instead of `addr`, if it is a wildcard address and a pod IP is known.
///
/// # Safety
/// `addr` must point to `len` readable bytes (as `bind(2)` requires).
pub unsafe fn rewrite(
    addr: *const sockaddr,
    len: socklen_t,
    pod_ip: Option<Ipv4Addr>,
) -> Option<Moved> {
    let ip = pod_ip?;
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: non-null and at least the family field long.
    let family = c_int::from(unsafe { std::ptr::read_unaligned(addr as *const libc::sa_family_t) });
    if family == libc::AF_INET && len as usize >= std::mem::size_of::<sockaddr_in>() {
        // SAFETY: long enough for a sockaddr_in; read unaligned to be safe.
        let mut sin = unsafe { std::ptr::read_unaligned(addr as *const sockaddr_in) };
        if sin.sin_addr.s_addr != libc::INADDR_ANY.to_be() {
            return None;
        }
        sin.sin_addr.s_addr = u32::from(ip).to_be();
        return Some(Moved::V4(sin));
    }
    if family == libc::AF_INET6 && len as usize >= std::mem::size_of::<sockaddr_in6>() {
        // SAFETY: long enough for a sockaddr_in6.
        let mut sin6 = unsafe { std::ptr::read_unaligned(addr as *const sockaddr_in6) };
        if sin6.sin6_addr.s6_addr != [0u8; 16] {
            return None;
        }
        sin6.sin6_addr.s6_addr = ip.to_ipv6_mapped().octets();
        return Some(Moved::V6(sin6));
    }
    None
}

/// `bind(2)`, with IPv4 wildcard addresses moved to `$VRG_BIND_IP`.
///
/// # Safety
/// Same contract as `bind(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(real) = real_bind() else {
        // SAFETY: setting errno of this thread.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return -1;
    };
    // SAFETY: the caller passes a valid address of `len` bytes, as bind(2) requires.
    match unsafe { rewrite(addr, len, bind_ip()) } {
        Some(Moved::V4(sin)) => {
            let p = &sin as *const sockaddr_in as *const sockaddr;
            // SAFETY: a complete sockaddr_in on the stack.
            unsafe { real(fd, p, std::mem::size_of::<sockaddr_in>() as socklen_t) }
        }
        Some(Moved::V6(sin6)) => {
            let p = &sin6 as *const sockaddr_in6 as *const sockaddr;
            // SAFETY: a complete sockaddr_in6 on the stack.
            unsafe { real(fd, p, std::mem::size_of::<sockaddr_in6>() as socklen_t) }
        }
        // SAFETY: forwarding the caller's arguments unchanged.
        None => unsafe { real(fd, addr, len) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sin(ip: Ipv4Addr, port: u16) -> sockaddr_in {
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut s: sockaddr_in = unsafe { std::mem::zeroed() };
        s.sin_family = libc::AF_INET as libc::sa_family_t;
        s.sin_port = port.to_be();
        s.sin_addr.s_addr = u32::from(ip).to_be();
        s
    }

    fn call(s: &sockaddr_in, pod_ip: Option<Ipv4Addr>) -> Option<sockaddr_in> {
        let len = std::mem::size_of::<sockaddr_in>() as socklen_t;
        // SAFETY: a live sockaddr_in of `len` bytes.
        match unsafe { rewrite(s as *const sockaddr_in as *const sockaddr, len, pod_ip) } {
            Some(Moved::V4(m)) => Some(m),
            Some(Moved::V6(_)) => panic!("an IPv4 address became IPv6"),
            None => None,
        }
    }

    #[test]
    fn ipv6_wildcard_moves_to_the_mapped_pod_ip() {
        // SAFETY: all-zero is a valid sockaddr_in6 (the wildcard).
        let mut s6: sockaddr_in6 = unsafe { std::mem::zeroed() };
        s6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        let len = std::mem::size_of::<sockaddr_in6>() as socklen_t;
        let pod = Some(Ipv4Addr::new(10, 244, 0, 7));
        // SAFETY: a live sockaddr_in6 of `len` bytes.
        let moved = unsafe { rewrite(&s6 as *const sockaddr_in6 as *const sockaddr, len, pod) };
        let Some(Moved::V6(m)) = moved else {
            panic!("not rewritten")
        };
        assert_eq!(
            std::net::Ipv6Addr::from(m.sin6_addr.s6_addr).to_ipv4_mapped(),
            pod
        );
    }

    #[test]
    fn only_the_ipv4_wildcard_moves_to_the_pod_ip() {
        let pod = Some(Ipv4Addr::new(10, 244, 0, 7));
        let moved = call(&sin(Ipv4Addr::UNSPECIFIED, 8080), pod).expect("rewritten");
        assert_eq!(
            u32::from_be(moved.sin_addr.s_addr),
            u32::from(Ipv4Addr::new(10, 244, 0, 7))
        );
        assert_eq!(u16::from_be(moved.sin_port), 8080);
        assert!(call(&sin(Ipv4Addr::LOCALHOST, 8080), pod).is_none());
        assert!(call(&sin(Ipv4Addr::UNSPECIFIED, 8080), None).is_none());
    }
}
