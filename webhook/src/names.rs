//! Kubernetes name rules (DNS-1123), with messages that say what is allowed.

/// Longest DNS-1123 label (a namespace, a VM name on a hypervisor).
pub const LABEL_MAX: usize = 63;
/// Longest DNS-1123 subdomain (most object names).
pub const SUBDOMAIN_MAX: usize = 253;

/// Checks a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a
/// letter or digit. Returns why not, as a sentence fragment that follows the field name.
pub fn check_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > LABEL_MAX {
        return Err(format!(
            "{value:?} is {} characters long: a DNS-1123 label has at most {LABEL_MAX}",
            value.len()
        ));
    }
    if !label_chars_ok(value) {
        return Err(format!(
            "{value:?} is not a DNS-1123 label: use lowercase letters a-z, digits 0-9 and '-', starting and ending with a letter or digit (e.g. my-vm-1)"
        ));
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain: at most 253 characters, labels of lowercase letters, digits and '-'
/// separated by '.'.
pub fn check_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > SUBDOMAIN_MAX {
        return Err(format!(
            "is {} characters long: a DNS-1123 subdomain has at most {SUBDOMAIN_MAX}",
            value.len()
        ));
    }
    if let Some(long) = value.split('.').find(|part| part.len() > LABEL_MAX) {
        return Err(format!(
            "has a part of {} characters: each dot-separated part of a DNS-1123 subdomain has at most {LABEL_MAX}",
            long.len()
        ));
    }
    if !value.split('.').all(label_chars_ok) {
        return Err(format!(
            "{value:?} is not a DNS-1123 subdomain: use lowercase letters a-z, digits 0-9, '-' and '.', each part starting and ending with a letter or digit (e.g. my-vm.prod)"
        ));
    }
    Ok(())
}

fn label_chars_ok(label: &str) -> bool {
    let bytes = label.as_bytes();
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= LABEL_MAX
        && edge(bytes[0])
        && edge(bytes[bytes.len() - 1])
        && bytes.iter().all(|&b| edge(b) || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "my-vm-1", "0abc", &"a".repeat(63)] {
            assert_eq!(check_label(ok), Ok(()), "{ok}");
        }
        for bad in ["", "My-VM", "-a", "a-", "a.b", "a_b", "ä", &"a".repeat(64)] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
        assert!(
            check_label("a_b")
                .unwrap_err()
                .contains("lowercase letters")
        );
    }

    #[test]
    fn subdomains() {
        for ok in ["a", "a.b", "my-vm.prod-1", &format!("{}.b", "a".repeat(63))] {
            assert_eq!(check_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "A.b",
            "a b",
            &format!("{}.b", "a".repeat(64)),
            &"a.".repeat(127),
        ] {
            assert!(check_subdomain(bad).is_err(), "{bad:?}");
        }
    }
}
