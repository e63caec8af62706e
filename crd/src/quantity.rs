//! The one parser of memory quantities (`targetResources.memory`), used by the webhook when a
//! migration is admitted and by the runner when it shapes the target VM, so that what one accepts
//! the other does too. It takes what Kubernetes' quantity grammar takes (`8Gi`, `512M`, `1.5Gi`,
//! `1e9`, `+1Ki`, `2Ei`...) and yields whole bytes, rounded up, between [`MEMORY_MIN`] and
//! [`MEMORY_MAX`].

/// Smallest memory a migrated VM may be given (1 MiB).
pub const MEMORY_MIN: u64 = 1 << 20;
/// Largest memory a migrated VM may be given (24 TiB, the most any of the hypervisors takes).
pub const MEMORY_MAX: u64 = 24 << 40;

/// Why a memory quantity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error(
        "{0:?} is not a Kubernetes quantity (e.g. 8Gi, 512Mi, 4G; suffixes: Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E or an exponent e9)"
    )]
    Syntax(String),
    #[error("{0:?} is too small (at least 1Mi)")]
    TooSmall(String),
    #[error("{0:?} is too large (at most 24Ti)")]
    TooLarge(String),
}

/// Bytes of a memory quantity.
pub fn memory_bytes(text: &str) -> Result<u64, QuantityError> {
    let value = value(text).ok_or_else(|| QuantityError::Syntax(text.to_string()))?;
    let bytes = value.ceil();
    if bytes < MEMORY_MIN as f64 {
        return Err(QuantityError::TooSmall(text.to_string()));
    }
    if bytes > MEMORY_MAX as f64 {
        return Err(QuantityError::TooLarge(text.to_string()));
    }
    Ok(bytes as u64)
}

/// The value of a quantity, `None` when it is not one or is negative.
fn value(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    let number_len = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exponent => {
            let digits = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?;
            let signless = digits.strip_prefix(['+', '-']).unwrap_or(digits);
            if signless.is_empty() || !signless.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(digits.parse().ok()?)
        }
    };
    let v = number * multiplier;
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_kubernetes_accepts_as_whole_bytes() {
        assert_eq!(memory_bytes("8Gi"), Ok(8 << 30));
        assert_eq!(memory_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(memory_bytes("2G"), Ok(2_000_000_000));
        assert_eq!(memory_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(memory_bytes("1e9"), Ok(1_000_000_000));
        assert_eq!(memory_bytes("+1Gi"), Ok(1 << 30));
        assert_eq!(memory_bytes("1073741824"), Ok(1 << 30));
        assert_eq!(memory_bytes("1048576.5"), Ok(1_048_577), "rounded up");
        assert_eq!(memory_bytes("2Ti"), Ok(2 << 40));
    }

    #[test]
    fn refuses_what_no_vm_can_have() {
        for bad in [
            "", "8GB", "-1Gi", "Gi", "1..2", "e9", "1e", "1ex", "eight", "1e400",
        ] {
            assert!(
                matches!(memory_bytes(bad), Err(QuantityError::Syntax(_))),
                "{bad}"
            );
        }
        assert_eq!(memory_bytes("0"), Err(QuantityError::TooSmall("0".into())));
        assert_eq!(
            memory_bytes("1Ki"),
            Err(QuantityError::TooSmall("1Ki".into()))
        );
        assert_eq!(
            memory_bytes("1Ei"),
            Err(QuantityError::TooLarge("1Ei".into()))
        );
        assert!(memory_bytes("8Gi").is_ok() && memory_bytes("+1Ki").is_err());
    }
}
