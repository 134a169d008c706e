//! Human-friendly durations (`2s`, `10m`, `48h`, `30d`, `500ms`) and sizes
//! (`4GiB`, `512MB`, `1024`) as they appear in the config file.
//!
//! Small hand-written parsers: the accepted grammar is documented in the
//! example config, and errors say exactly what was expected.

use std::time::Duration;

/// Parses a duration such as `2s`, `1m30s`, `10m`, `48h`, `30d` or `250ms`.
/// A bare number is taken as seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err(
            "expected a duration such as \"30s\", \"10m\" or \"48h\", found an empty string".into(),
        );
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number in duration {text:?}"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("bad number in duration {text:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = rest[unit_len..].trim_start();
        let seconds = match unit {
            "ms" => number / 1000.0,
            "s" | "sec" | "secs" => number,
            "m" | "min" | "mins" => number * 60.0,
            "h" | "hour" | "hours" => number * 3600.0,
            "d" | "day" | "days" => number * 86_400.0,
            "" => {
                return Err(format!(
                    "missing unit in duration {text:?} (use ms, s, m, h or d)"
                ));
            }
            other => {
                return Err(format!(
                    "unknown unit {other:?} in duration {text:?} (use ms, s, m, h or d)"
                ));
            }
        };
        if !seconds.is_finite() || !(0.0..=1e10).contains(&seconds) {
            return Err(format!("duration {text:?} is out of range"));
        }
        total += Duration::from_secs_f64(seconds);
    }
    Ok(total)
}

/// Parses a size such as `4GiB`, `512MB`, `64KiB` or a plain byte count.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(format!(
            "expected a size such as \"4GiB\" or \"512MB\", found {text:?}"
        ));
    }
    let number: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("size {text:?} is out of range"))?;
    let factor: u64 = match s[digits..].trim() {
        "" | "B" => 1,
        "K" | "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        "T" | "TB" => 1_000_000_000_000,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in size {text:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is out of range"))
}

/// Formats a duration compactly for logs and tables (`1h5m`, `12s`, `350ms`).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (days, hours, mins, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (value, unit) in [(days, "d"), (hours, "h"), (mins, "m"), (s, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_every_documented_unit() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("48h"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn durations_reject_garbage_with_a_reason() {
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            parse_duration("h")
                .unwrap_err()
                .contains("expected a number")
        );
        assert!(parse_duration("-5s").is_err());
    }

    #[test]
    fn sizes_know_binary_and_decimal_units() {
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn durations_format_compactly() {
        assert_eq!(format_duration(Duration::from_secs(3900)), "1h5m");
        assert_eq!(format_duration(Duration::from_millis(350)), "350ms");
    }
}
