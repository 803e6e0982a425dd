//! Times as people write them in query parameters and CLI flags: RFC 3339
//! (`2026-03-31T15:13:14Z`) or a duration back from now (`90s`, `15m`,
//! `24h`, `7d`, `2w`).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid time {input:?}: expected RFC 3339 (2026-03-31T15:13:14Z) or a duration such as 24h or 7d")]
pub struct InvalidTime {
    pub input: String,
}

/// Parse `input` into Unix milliseconds, resolving relative durations
/// against `now_millis`.
pub fn parse_time(input: &str, now_millis: i64) -> Result<i64, InvalidTime> {
    let err = || InvalidTime {
        input: input.chars().take(64).collect(),
    };
    let s = input.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| err());
    }
    let millis = parse_duration_millis(s).ok_or_else(err)?;
    now_millis.checked_sub(millis).ok_or_else(err)
}

/// Parse a duration such as `500ms`, `90s`, `15m`, `24h`, `7d` or `2w`.
pub fn parse_duration_millis(s: &str) -> Option<i64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at(split);
    let n: i64 = digits.parse().ok()?;
    let unit_ms: i64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

/// Format Unix milliseconds as RFC 3339 with millisecond precision, UTC.
pub fn format_millis(millis: i64) -> String {
    let nanos = i128::from(millis) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| millis.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_774_970_000_000;

    #[test]
    fn rfc3339_and_relative_durations_parse() {
        assert_eq!(parse_time("2026-03-31T15:13:20Z", NOW).unwrap(), NOW);
        assert_eq!(parse_time("24h", NOW).unwrap(), NOW - 86_400_000);
        assert_eq!(parse_time("7d", NOW).unwrap(), NOW - 7 * 86_400_000);
        assert_eq!(parse_time("90s", NOW).unwrap(), NOW - 90_000);
    }

    #[test]
    fn garbage_times_are_rejected_with_the_input_named() {
        for bad in [
            "",
            "yesterday",
            "24",
            "h",
            "7x",
            "2026-13-01T00:00:00Z",
            "99999999999999999999d",
        ] {
            let e = parse_time(bad, NOW).unwrap_err();
            assert!(e.to_string().contains("invalid time"), "{bad}");
        }
    }

    #[test]
    fn millis_format_as_utc_rfc3339() {
        assert_eq!(format_millis(NOW), "2026-03-31T15:13:20.000Z");
    }
}
