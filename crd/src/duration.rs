//! Durations as the API writes them: Go/CEL duration strings such as `5m`, `1h30m`, `90s`, `1.5h`.
//!
//! The CRD's CEL rules use CEL's `duration()`, which parses Go's format, so the webhook, the operator and
//! the apiserver must agree on one grammar. `humantime` accepts a different one (`5 min`, no fractions), so
//! this module implements Go's `time.ParseDuration` grammar for non-negative values.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error(
        "invalid duration {0:?}: expected a number followed by a unit (ns, us, ms, s, m, h), e.g. 5m or 1h30m"
    )]
    Invalid(String),
    #[error("invalid duration {0:?}: unknown unit {1:?} (allowed: ns, us, ms, s, m, h)")]
    UnknownUnit(String, String),
    #[error("duration {0:?} is out of range")]
    Overflow(String),
}

/// Parses a Go duration string (`300ms`, `5m`, `1h30m`, `1.5h`). Negative durations are refused: no API
/// field of ours means anything with one.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    let invalid = || DurationError::Invalid(input.to_owned());
    let mut rest = input.strip_prefix('+').unwrap_or(input);
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(invalid()),
            other => {
                return Err(DurationError::UnknownUnit(
                    input.to_owned(),
                    other.to_owned(),
                ));
            }
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| DurationError::Overflow(input.to_owned()))?
        };
        let mut nanos = whole
            .checked_mul(unit_nanos)
            .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
        // Fractions are scaled digit by digit, as Go does, so `1.5h` is exact.
        let mut scale = unit_nanos;
        for digit in frac.bytes() {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
        rest = tail;
    }
    // Go durations are int64 nanoseconds; anything larger would not survive CEL either.
    if total_nanos > i64::MAX as u128 {
        return Err(DurationError::Overflow(input.to_owned()));
    }
    Ok(Duration::from_nanos(total_nanos as u64))
}

/// Formats a duration the way Go prints it for whole seconds (`5m0s` is written `5m`): used in messages.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let cases = [
            ("5m", 300),
            ("30m", 1800),
            ("10m", 600),
            ("1h30m", 5400),
            ("90s", 90),
            ("1.5h", 5400),
            ("0", 0),
            ("2h45m10s", 9910),
        ];
        for (input, secs) in cases {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_secs(secs)),
                "{input}"
            );
        }
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn refuses_what_go_refuses() {
        for input in [
            "",
            "5",
            "m",
            "5 m",
            "five minutes",
            "1..5h",
            "-5m",
            "5mm",
            "1d",
            ".",
        ] {
            assert!(
                parse_duration(input).is_err(),
                "{input:?} should be refused"
            );
        }
        assert_eq!(
            parse_duration("1d"),
            Err(DurationError::UnknownUnit("1d".into(), "d".into()))
        );
        assert!(matches!(
            parse_duration("99999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_like_the_guide() {
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
