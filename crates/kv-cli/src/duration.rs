//! Durations on the command line: the API's grammar ([`kv_client::api::parse_duration`]:
//! `10s`, `500ms`, `1.5s`, `2m`, `1m30s`), so `--timeout` and the server's `?wait=` read the
//! same text the same way. A number without a unit is refused rather than guessed.

use std::time::Duration;

/// Parses a duration and refuses zero (a run or a timeout of zero length is never meant).
pub fn parse_positive(input: &str) -> Result<Duration, String> {
    let duration = kv_client::api::parse_duration(input)?;
    if duration.is_zero() {
        return Err(format!(
            "duration `{}` must be greater than zero",
            input.trim()
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_refuses_zero_and_malformed_input() {
        assert!(parse_positive("0s").is_err());
        assert!(parse_positive("0").is_err());
        assert!(parse_positive("10").is_err(), "a unit is needed");
        assert!(parse_positive("soon").is_err());
        assert_eq!(parse_positive("1ns"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse_positive("1m30s"), Ok(Duration::from_secs(90)));
    }
}
