//! Durations on the command line: `10s`, `500ms`, `2m`, `1.5s`, `1m30s`.
//!
//! Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. A number without a unit is refused
//! rather than guessed.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration such as `10s`, `500ms`, `2m`, `1.5s` or `1m30s`.
pub fn parse(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("empty duration (use e.g. 10s, 500ms, 2m)".to_owned());
    }
    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        if number.is_empty() {
            return Err(format!(
                "invalid duration `{text}`: expected a number at `{rest}`"
            ));
        }
        let unit_nanos = unit_nanos(unit).ok_or_else(|| {
            if unit.is_empty() {
                format!("invalid duration `{text}`: missing unit (use e.g. 10s, 500ms, 2m)")
            } else {
                format!(
                    "invalid duration `{text}`: unknown unit `{unit}` (use ns, us, ms, s, m, h)"
                )
            }
        })?;
        let nanos = scaled(number, unit_nanos)
            .ok_or_else(|| format!("invalid duration `{text}`: bad number `{number}`"))?;
        total = total
            .checked_add(nanos)
            .ok_or_else(|| format!("duration `{text}` is too long"))?;
        rest = tail;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC)
        .map_err(|_| format!("duration `{text}` is too long"))?;
    let subsec = u32::try_from(total % NANOS_PER_SEC).expect("a remainder of 1e9 fits in u32");
    Ok(Duration::new(secs, subsec))
}

/// Like [`parse`], but refuses zero (a run or a timeout of zero length is never meant).
pub fn parse_positive(input: &str) -> Result<Duration, String> {
    let duration = parse(input)?;
    if duration.is_zero() {
        return Err(format!(
            "duration `{}` must be greater than zero",
            input.trim()
        ));
    }
    Ok(duration)
}

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        _ => return None,
    })
}

/// `number` (digits with at most one `.`) times `unit_nanos`, in whole nanoseconds, computed
/// exactly in integers so `0.5s` is exactly `500ms`.
fn scaled(number: &str, unit_nanos: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    // Digits past nanosecond precision of the largest unit change nothing; dropping them keeps
    // the arithmetic below in range.
    let fraction = &fraction[..fraction.len().min(15)];
    let digits = |s: &str| -> Option<u128> {
        if s.is_empty() {
            Some(0)
        } else {
            s.parse().ok()
        }
    };
    let whole = digits(whole)?.checked_mul(unit_nanos)?;
    let scale = 10u128.pow(u32::try_from(fraction.len()).ok()?);
    let fraction = digits(fraction)?.checked_mul(unit_nanos)? / scale;
    whole.checked_add(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_units() {
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse(" 3s "), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn parses_fractions_exactly() {
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse(".25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("0.1m"), Ok(Duration::from_secs(6)));
        assert_eq!(parse("2.s"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn parses_compound_durations() {
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h2m3s4ms"), Ok(Duration::new(3723, 4_000_000)));
    }

    #[test]
    fn refuses_numbers_without_unit() {
        let err = parse("10").unwrap_err();
        assert!(err.contains("missing unit"), "{err}");
    }

    #[test]
    fn refuses_malformed_input() {
        for bad in ["", "s", "10x", "-1s", "1.2.3s", ".s", "10 s", "1s2", "ms5"] {
            assert!(parse(bad).is_err(), "`{bad}` should be refused");
        }
    }

    #[test]
    fn refuses_overflow() {
        assert!(parse("99999999999999999999999999h").is_err());
        assert!(parse("9999999999999999999h").is_err());
    }

    #[test]
    fn positive_refuses_zero_only() {
        assert!(parse_positive("0s").is_err());
        assert!(parse_positive("0.0ms").is_err());
        assert_eq!(parse_positive("1ns"), Ok(Duration::from_nanos(1)));
    }
}
