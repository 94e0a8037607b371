//! Durations and sizes as Buntime manifests write them.
//!
//! Durations follow Buntime exactly: a YAML/JSON **number is seconds**; a **string is read the
//! way the `ms` npm package reads it** (`"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"2d"`, `"1w"`,
//! `"1y"`, long forms such as `"5 minutes"`, and a bare numeric string is milliseconds). The
//! `ms` grammar is small and no maintained crate reproduces it exactly (`humantime` rejects bare
//! numbers and long plurals differ), so it is written here with its own tests.
//!
//! Sizes: a number is bytes; a string is a number with an optional unit `b`, `kb`, `mb`, `gb`,
//! `tb` (or `k`, `m`, `g`, `t`), 1024-based, case-insensitive.

use std::time::Duration;

use serde_json::Value;

/// Why a duration or size could not be read. The text quotes what was given and says what was
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The duration could not be parsed.
    #[error(
        "invalid duration {got}: expected a number of seconds or a string such as \"500ms\", \"30s\", \"5m\", \"1h\", \"2d\""
    )]
    Duration {
        /// The value as given, quoted.
        got: String,
    },
    /// The size could not be parsed.
    #[error("invalid size {got}: expected a number of bytes or a string such as \"512kb\", \"10mb\", \"1gb\"")]
    Size {
        /// The value as given, quoted.
        got: String,
    },
    /// A negative value where only non-negative ones make sense.
    #[error("invalid {what} {got}: must not be negative")]
    Negative {
        /// "duration" or "size".
        what: &'static str,
        /// The value as given.
        got: String,
    },
}

/// Parse a duration from a JSON/YAML value: number = seconds, string = `ms` syntax.
pub fn duration_from_value(value: &Value) -> Result<Duration, UnitError> {
    match value {
        Value::Number(n) => {
            let secs = n.as_f64().ok_or_else(|| UnitError::Duration { got: n.to_string() })?;
            seconds_to_duration(secs, || n.to_string())
        }
        Value::String(s) => parse_duration(s),
        other => Err(UnitError::Duration { got: other.to_string() }),
    }
}

fn seconds_to_duration(secs: f64, got: impl Fn() -> String) -> Result<Duration, UnitError> {
    if !secs.is_finite() {
        return Err(UnitError::Duration { got: got() });
    }
    if secs < 0.0 {
        return Err(UnitError::Negative { what: "duration", got: got() });
    }
    Duration::try_from_secs_f64(secs).map_err(|_| UnitError::Duration { got: got() })
}

/// Parse a duration string with the `ms` package's grammar (a bare number is milliseconds).
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let quoted = || format!("{input:?}");
    let s = input.trim();
    let split = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == '-'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.matches('.').count() > 1 || num.rfind('-').is_some_and(|i| i > 0) {
        return Err(UnitError::Duration { got: quoted() });
    }
    let value: f64 = num.parse().map_err(|_| UnitError::Duration { got: quoted() })?;
    let unit = unit.trim().to_ascii_lowercase();
    let ms_per_unit = match unit.as_str() {
        "" | "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        "w" | "week" | "weeks" => 604_800_000.0,
        "y" | "yr" | "yrs" | "year" | "years" => 31_557_600_000.0,
        _ => return Err(UnitError::Duration { got: quoted() }),
    };
    seconds_to_duration(value * ms_per_unit / 1000.0, quoted)
}

/// Parse a size from a JSON/YAML value: number = bytes, string = number + unit.
pub fn size_from_value(value: &Value) -> Result<u64, UnitError> {
    match value {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok(u)
            } else if n.as_f64().is_some_and(|f| f < 0.0) {
                Err(UnitError::Negative { what: "size", got: n.to_string() })
            } else {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f as u64)
                    .ok_or_else(|| UnitError::Size { got: n.to_string() })
            }
        }
        Value::String(s) => parse_size(s),
        other => Err(UnitError::Size { got: other.to_string() }),
    }
}

/// Parse a size string such as `"10mb"` (1024-based).
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let quoted = || format!("{input:?}");
    let s = input.trim();
    if s.starts_with('-') {
        return Err(UnitError::Negative { what: "size", got: quoted() });
    }
    let split = s.char_indices().find(|(_, c)| !(c.is_ascii_digit() || *c == '.')).map(|(i, _)| i).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(UnitError::Size { got: quoted() });
    }
    let value: f64 = num.parse().map_err(|_| UnitError::Size { got: quoted() })?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(UnitError::Size { got: quoted() }),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(UnitError::Size { got: quoted() });
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn durations_as_buntime_reads_them() {
        let cases: &[(Value, u64)] = &[
            (json!(30), 30_000),
            (json!(0), 0),
            (json!(1.5), 1_500),
            (json!("500ms"), 500),
            (json!("30s"), 30_000),
            (json!("5m"), 300_000),
            (json!("1h"), 3_600_000),
            (json!("2d"), 172_800_000),
            (json!("1w"), 604_800_000),
            (json!("1y"), 31_557_600_000),
            (json!("100"), 100),
            (json!("5 minutes"), 300_000),
            (json!("1.5h"), 5_400_000),
            (json!("10 SECONDS"), 10_000),
        ];
        for (value, ms) in cases {
            assert_eq!(duration_from_value(value).unwrap().as_millis() as u64, *ms, "{value}");
        }
    }

    #[test]
    fn bad_durations_quote_the_value() {
        assert_eq!(
            duration_from_value(&json!("5x")).unwrap_err().to_string(),
            "invalid duration \"5x\": expected a number of seconds or a string such as \"500ms\", \"30s\", \"5m\", \"1h\", \"2d\""
        );
        assert!(matches!(duration_from_value(&json!(-1)), Err(UnitError::Negative { .. })));
        assert!(duration_from_value(&json!("")).is_err());
        assert!(duration_from_value(&json!("1.2.3s")).is_err());
        assert!(duration_from_value(&json!(true)).is_err());
        assert!(duration_from_value(&json!("s")).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(size_from_value(&json!(1024)).unwrap(), 1024);
        assert_eq!(size_from_value(&json!("10kb")).unwrap(), 10 * 1024);
        assert_eq!(size_from_value(&json!("10mb")).unwrap(), 10 * 1024 * 1024);
        assert_eq!(size_from_value(&json!("1GB")).unwrap(), 1024 * 1024 * 1024);
        assert_eq!(size_from_value(&json!("1.5k")).unwrap(), 1536);
        assert!(size_from_value(&json!("10xb")).is_err());
        assert!(size_from_value(&json!("-1mb")).is_err());
        assert!(size_from_value(&json!(-5)).is_err());
        assert!(size_from_value(&json!([])).is_err());
    }

    proptest! {
        #[test]
        fn duration_parser_never_panics(s in "\\PC{0,24}") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn size_parser_never_panics(s in "\\PC{0,24}") {
            let _ = parse_size(&s);
        }

        #[test]
        fn seconds_suffix_matches_number(n in 0u32..1_000_000) {
            prop_assert_eq!(parse_duration(&format!("{n}s")).unwrap(), duration_from_value(&json!(n)).unwrap());
        }
    }
}
