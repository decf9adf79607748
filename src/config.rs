//! Configuration errors and the one JSON entry point every filter uses.
//!
//! A rejected configuration must tell an operator *which* field is wrong and *what to write
//! instead*; Envoy only shows "failed to configure", so the filter logs this error verbatim.

use std::fmt;

use serde::de::DeserializeOwned;

/// Why a plugin configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending field (`trusted_cidrs[1]`), or `.` for the document itself.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
    /// What to write instead.
    pub fix: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into(), fix: fix.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid plugin configuration: field `{}`: {}; fix: {}", self.field, self.problem, self.fix)
    }
}

impl std::error::Error for ConfigError {}

/// Parses a plugin configuration. Empty input (no `configuration` in Envoy) means `{}`, so every
/// filter runs with its defaults when given nothing.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let fix = if inner.is_syntax() || inner.is_eof() {
            "the plugin configuration must be one JSON object, e.g. {} for all defaults"
        } else {
            "see the filter's configuration reference in README.md for the accepted fields and types"
        };
        ConfigError::new(path, inner.to_string(), fix)
    })?;
    de.end().map_err(|e| ConfigError::new(".", e.to_string(), "remove the text after the JSON object"))?;
    Ok(value)
}

/// Parses a duration such as `250ms`, `1s`, `1.5s`, `2m`, `1h` into nanoseconds.
///
/// Returns `None` for anything else (no unit, negative, unknown unit, overflow).
pub fn parse_duration_nanos(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    match number.split_once('.') {
        None => number.parse::<u64>().ok()?.checked_mul(scale),
        Some((whole, frac)) => {
            let whole = whole.parse::<u64>().ok()?.checked_mul(scale)?;
            let mut frac_nanos: u64 = 0;
            let mut place = scale;
            for digit in frac.bytes() {
                place /= 10;
                frac_nanos = frac_nanos.checked_add(u64::from(digit - b'0').checked_mul(place)?)?;
            }
            whole.checked_add(frac_nanos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        names: Vec<u32>,
    }

    #[test]
    fn empty_input_means_all_defaults() {
        let s: Sample = parse_json(b"  ").unwrap();
        assert!(s.names.is_empty());
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse_json::<Sample>(br#"{"nmes": [1]}"#).unwrap_err();
        assert!(e.problem.contains("unknown field `nmes`"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_nested_path() {
        let e = parse_json::<Sample>(br#"{"names": [1, "x"]}"#).unwrap_err();
        assert_eq!(e.field, "names[1]");
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse_json::<Sample>(b"{} x").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_nanos("250ms"), Some(250_000_000));
        assert_eq!(parse_duration_nanos("1s"), Some(1_000_000_000));
        assert_eq!(parse_duration_nanos("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration_nanos("2m"), Some(120_000_000_000));
        assert_eq!(parse_duration_nanos("1h"), Some(3_600_000_000_000));
    }

    #[test]
    fn durations_without_a_known_unit_are_refused() {
        for bad in ["", "10", "ms", "-1s", "1x", "1.s", ".5s", "99999999999999999999h"] {
            assert_eq!(parse_duration_nanos(bad), None, "{bad}");
        }
    }
}
