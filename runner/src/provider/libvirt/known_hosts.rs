//! Pinning an SSH connection to a judged address without weakening host key verification: libvirt's
//! libssh transport looks the server up in `known_hosts` under the host it connects to, and has no
//! option to look it up under another name (OpenSSH's `HostKeyAlias`). So the lines that vouch for
//! the endpoint's name are repeated for the address the runner judged, and libvirt is given the
//! address. Keys are never added: an address only inherits what the Secret says about its name.

use std::net::IpAddr;

use hmac::{KeyInit as _, Mac as _};

/// `text` plus, for every line that vouches for `name` on `port`, the same line for `ip`. `None`
/// when no line names `name` exactly (plainly or hashed); wildcard patterns are not followed.
pub fn pin(text: &str, name: &str, port: u16, ip: IpAddr) -> Option<String> {
    let wanted = host_port(name, port);
    let alias = host_port(&ip.to_string(), port);
    let added: Vec<String> = text
        .lines()
        .filter_map(|line| repeated_for(line, &wanted, &alias))
        .collect();
    if added.is_empty() {
        return None;
    }
    let mut out = text.trim_end().to_string();
    for line in added {
        out.push('\n');
        out.push_str(&line);
    }
    out.push('\n');
    Some(out)
}

/// How known_hosts spells a host: `name` on port 22, `[name]:port` otherwise.
fn host_port(host: &str, port: u16) -> String {
    match port {
        22 => host.to_string(),
        _ => format!("[{host}]:{port}"),
    }
}

/// `line` with its host patterns replaced by `alias`, when they name `wanted` (and do not negate it).
fn repeated_for(line: &str, wanted: &str, alias: &str) -> Option<String> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    let mut fields = trimmed.splitn(2, char::is_whitespace);
    let first = fields.next()?;
    let (marker, patterns, rest) = if first.starts_with('@') {
        let mut more = fields.next()?.trim_start().splitn(2, char::is_whitespace);
        (Some(first), more.next()?, more.next()?)
    } else {
        (None, first, fields.next()?)
    };
    let mut named = false;
    for pattern in patterns.split(',') {
        match pattern.strip_prefix('!') {
            Some(negated) if matches(negated, wanted) => return None,
            Some(_) => {}
            None => named |= matches(pattern, wanted),
        }
    }
    named.then(|| match marker {
        Some(marker) => format!("{marker} {alias} {}", rest.trim_start()),
        None => format!("{alias} {}", rest.trim_start()),
    })
}

/// Whether one host pattern is exactly `host`: plain, or hashed (`|1|salt|hash`, HMAC-SHA1).
fn matches(pattern: &str, host: &str) -> bool {
    use base64::Engine as _;
    let Some(hashed) = pattern.strip_prefix("|1|") else {
        return pattern.eq_ignore_ascii_case(host);
    };
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(host.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn repeats_plain_lines_for_the_address() {
        let text =
            "kvm1.example.com,10.9.9.9 ssh-ed25519 AAAAkey1 root@kvm1\nother ssh-rsa AAAAkey2\n";
        let pinned = pin(text, "kvm1.example.com", 22, ip("10.0.0.5")).unwrap();
        assert!(pinned.starts_with(text.trim_end()));
        assert!(
            pinned.ends_with("\n10.0.0.5 ssh-ed25519 AAAAkey1 root@kvm1\n"),
            "{pinned}"
        );
        assert!(!pinned.contains("10.0.0.5 ssh-rsa"), "{pinned}");
        let on_port = pin("[kvm1]:2222 ssh-ed25519 K\n", "kvm1", 2222, ip("fd00::5")).unwrap();
        assert!(
            on_port.ends_with("[fd00::5]:2222 ssh-ed25519 K\n"),
            "{on_port}"
        );
        // the port matters: a line for port 22 does not vouch for 2222
        assert_eq!(
            pin("kvm1 ssh-ed25519 K\n", "kvm1", 2222, ip("10.0.0.5")),
            None
        );
    }

    #[test]
    fn markers_negations_and_unknown_names() {
        let revoked = pin(
            "@revoked kvm1 ssh-ed25519 OLD\n",
            "kvm1",
            22,
            ip("10.0.0.5"),
        )
        .unwrap();
        assert!(
            revoked.ends_with("@revoked 10.0.0.5 ssh-ed25519 OLD\n"),
            "{revoked}"
        );
        assert_eq!(
            pin("kvm1,!kvm1 ssh-ed25519 K\n", "kvm1", 22, ip("10.0.0.5")),
            None
        );
        assert_eq!(
            pin(
                "*.example.com ssh-ed25519 K\n",
                "kvm1.example.com",
                22,
                ip("10.0.0.5")
            ),
            None
        );
        assert_eq!(
            pin("# kvm1 ssh-ed25519 K\n\n", "kvm1", 22, ip("10.0.0.5")),
            None
        );
    }

    #[test]
    fn matches_hashed_entries() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = [7u8; 20];
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
        mac.update(b"[kvm1]:2222");
        let hash = mac.finalize().into_bytes();
        let line = format!("|1|{}|{} ssh-ed25519 K", b64.encode(salt), b64.encode(hash));
        let pinned = pin(&line, "kvm1", 2222, ip("10.0.0.5")).unwrap();
        assert!(
            pinned.ends_with("\n[10.0.0.5]:2222 ssh-ed25519 K\n"),
            "{pinned}"
        );
        assert_eq!(pin(&line, "kvm2", 2222, ip("10.0.0.5")), None);
    }
}
