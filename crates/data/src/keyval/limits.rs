//! The keyval plugin's options (its manifest's keys besides Buntime's own): the engine's
//! [`KvLimits`]. Each bad value is refused with the option's name, what was found and what is
//! accepted, so a typo in `manifest.yaml` is found from the log line alone.

use std::time::Duration;

use marina_core::Error;
use marina_core::units::{duration_from_value, size_from_value};
use marina_store::kv::KvLimits;
use serde_json::{Map, Value as Json, json};

/// The largest `maxValueSize`: a request body is read up to 8 MiB, and a value must fit in
/// one with its JSON framing.
pub const MAX_VALUE_SIZE_CAP: u64 = 4 * 1024 * 1024;

/// The options, their meaning and accepted range, for docs and errors.
pub const OPTIONS: &[(&str, &str)] = &[
    ("maxValueSize", "a size from 1 byte to 4mb (default 1mb)"),
    ("maxKeyDepth", "a whole number from 1 to 100 (default 20)"),
    ("maxKeyPartSize", "a size from 1 byte to 64kb (default 1024)"),
    ("maxBatchSize", "a whole number from 1 to 10000 (default 1000)"),
    ("maxListLimit", "a whole number from 1 to 10000 (default 1000)"),
    ("queueLockDuration", "a duration from 1s to 1h (default 30s)"),
    ("purgeInterval", "a duration from 100ms to 1h (default 1s)"),
];

fn invalid(field: &str, found: &Json, why: impl std::fmt::Display) -> Error {
    let expected = OPTIONS.iter().find(|(n, _)| *n == field).map_or("", |(_, e)| e);
    Error::internal(format!("keyval plugin option `{field}`: {why} (found {found}; expected {expected})"))
        .with_data(json!({ "path": field, "expected": expected }))
}

fn size(options: &Map<String, Json>, field: &str, min: u64, max: u64, default: usize) -> Result<usize, Error> {
    let Some(v) = options.get(field).filter(|v| !v.is_null()) else { return Ok(default) };
    let n = size_from_value(v).map_err(|e| invalid(field, v, e))?;
    if n < min || n > max {
        return Err(invalid(field, v, format!("{n} bytes is out of range")));
    }
    Ok(n as usize)
}

fn count(options: &Map<String, Json>, field: &str, max: u64, default: usize) -> Result<usize, Error> {
    let Some(v) = options.get(field).filter(|v| !v.is_null()) else { return Ok(default) };
    let n = match v {
        Json::Number(n) => n.as_u64(),
        Json::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| invalid(field, v, "not a whole number"))?;
    if n == 0 || n > max {
        return Err(invalid(field, v, format!("{n} is out of range")));
    }
    Ok(n as usize)
}

fn duration(
    options: &Map<String, Json>,
    field: &str,
    min: Duration,
    max: Duration,
    default: Duration,
) -> Result<Duration, Error> {
    let Some(v) = options.get(field).filter(|v| !v.is_null()) else { return Ok(default) };
    let d = duration_from_value(v).map_err(|e| invalid(field, v, e))?;
    if d < min || d > max {
        return Err(invalid(field, v, format!("{d:?} is out of range")));
    }
    Ok(d)
}

/// The limits a keyval manifest asks for; every option left out keeps its default.
///
/// # Errors
/// The first bad option, named in the message and as `data.path`.
pub fn limits_from_options(options: &Map<String, Json>) -> Result<KvLimits, Error> {
    let d = KvLimits::default();
    Ok(KvLimits {
        max_value_bytes: size(options, "maxValueSize", 1, MAX_VALUE_SIZE_CAP, d.max_value_bytes)?,
        max_key_depth: count(options, "maxKeyDepth", 100, d.max_key_depth)?,
        max_key_part_bytes: size(options, "maxKeyPartSize", 1, 64 * 1024, d.max_key_part_bytes)?,
        max_batch: count(options, "maxBatchSize", 10_000, d.max_batch)?,
        max_list_limit: count(options, "maxListLimit", 10_000, d.max_list_limit)?,
        queue_lock: duration(
            options,
            "queueLockDuration",
            Duration::from_secs(1),
            Duration::from_secs(3600),
            d.queue_lock,
        )?,
        purge_interval: duration(
            options,
            "purgeInterval",
            Duration::from_millis(100),
            Duration::from_secs(3600),
            d.purge_interval,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn defaults_when_absent_and_units_when_given() {
        let l = limits_from_options(&Map::new()).unwrap();
        assert_eq!(l.max_value_bytes, 1024 * 1024);
        let l = limits_from_options(&opts(json!({
            "maxValueSize": "64kb", "maxKeyDepth": 5, "maxKeyPartSize": 100, "maxBatchSize": "10",
            "maxListLimit": 50, "queueLockDuration": "5s", "purgeInterval": 2, "base": "/keyval"
        })))
        .unwrap();
        assert_eq!(
            (l.max_value_bytes, l.max_key_depth, l.max_key_part_bytes, l.max_batch, l.max_list_limit),
            (65536, 5, 100, 10, 50)
        );
        assert_eq!((l.queue_lock, l.purge_interval), (Duration::from_secs(5), Duration::from_secs(2)));
    }

    #[test]
    fn bad_values_name_their_option() {
        for (bad, field) in [
            (json!({"maxValueSize": "lots"}), "maxValueSize"),
            (json!({"maxValueSize": "1gb"}), "maxValueSize"),
            (json!({"maxValueSize": -1}), "maxValueSize"),
            (json!({"maxKeyDepth": 0}), "maxKeyDepth"),
            (json!({"maxKeyDepth": 2.5}), "maxKeyDepth"),
            (json!({"maxBatchSize": [1]}), "maxBatchSize"),
            (json!({"maxListLimit": 100000}), "maxListLimit"),
            (json!({"maxKeyPartSize": "1mb"}), "maxKeyPartSize"),
            (json!({"queueLockDuration": "forever"}), "queueLockDuration"),
            (json!({"purgeInterval": "1ms"}), "purgeInterval"),
        ] {
            let e = limits_from_options(&opts(bad.clone())).unwrap_err();
            assert!(e.message().contains(&format!("`{field}`")), "{bad}: {}", e.message());
            assert!(e.message().contains("expected"), "{}", e.message());
            assert_eq!(e.data().unwrap()["path"], field);
        }
    }
}
