//! Configuration errors and the one JSON entry point every filter uses.
//!
//! A rejected configuration must tell an operator *which* field is wrong and *what to write
//! instead*; Envoy only shows "failed to configure", so the filter logs this error verbatim.

use std::fmt;

use serde::de::DeserializeOwned;

mod json;

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
/// filter runs with its defaults when given nothing. The document must be one JSON object; a
/// top-level `"$schema"` string (an editor's pointer to the configuration's JSON Schema) is
/// ignored. A refusal names the offending field (`rules[0].limit.per`); see [`json`] for how.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    let document = json::Document::read(text)?.configuration()?;
    Ok(T::deserialize(document.root())?)
}

/// Parses one JSON value of any kind (an array, say) into `T`, refusing as [`parse_json`] does,
/// with the offending field named. For JSON documents that are not plugin configurations.
pub fn parse_json_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let document = json::Document::read(bytes)?;
    Ok(T::deserialize(document.root())?)
}

/// A header name field: non-empty lowercase HTTP token (HTTP/2 forbids uppercase), not a
/// pseudo-header. Every filter's header-name fields go through this one check.
pub fn header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{name:?} is not a valid header name"),
            "use a non-empty lowercase header name such as \"x-upstream-diagnosis\"",
        ))
    }
}

/// A duration field: `None` gives `default_ns`; zero is refused unless `allow_zero`.
pub fn duration(field: &str, text: Option<&str>, default_ns: u64, allow_zero: bool) -> Result<u64, ConfigError> {
    let Some(t) = text else { return Ok(default_ns) };
    parse_duration_nanos(t).filter(|d| allow_zero || *d > 0).ok_or_else(|| {
        ConfigError::new(
            field,
            format!("{t:?} is not a {}duration", if allow_zero { "" } else { "positive " }),
            "write a duration such as \"250ms\", \"1s\", \"1.5s\", \"1m30s\" or \"1h\"",
        )
    })
}

/// A list of HTTP statuses (100–599).
pub fn statuses(field: &str, list: &[u16]) -> Result<(), ConfigError> {
    match list.iter().find(|s| !(100..=599).contains(*s)) {
        Some(bad) => Err(ConfigError::new(
            field,
            format!("{bad} is not an HTTP status"),
            "list statuses between 100 and 599, e.g. [500, 502, 503, 504]",
        )),
        None => Ok(()),
    }
}

/// The status of a refusal (a local reply): 4xx or 5xx.
pub fn refusal_status(field: &str, status: u16, default_hint: &str) -> Result<u16, ConfigError> {
    if (400..=599).contains(&status) {
        Ok(status)
    } else {
        Err(ConfigError::new(field, format!("{status} is not a 4xx/5xx status"), default_hint))
    }
}

/// A gRPC status code (0–16) for refusals of gRPC requests.
pub fn grpc_status(field: &str, code: u32) -> Result<u32, ConfigError> {
    if code <= 16 {
        Ok(code)
    } else {
        Err(ConfigError::new(
            field,
            format!("{code} is not a gRPC status code"),
            "use a code from 0 to 16, e.g. 8 (RESOURCE_EXHAUSTED) or 14 (UNAVAILABLE)",
        ))
    }
}

/// A list of trusted client address blocks (`trusted_cidrs`), naming the bad element.
pub fn cidrs(field: &str, items: &[String]) -> Result<Vec<crate::cidr::Cidr>, ConfigError> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<crate::cidr::Cidr>().map_err(|e| {
                ConfigError::new(
                    format!("{field}[{i}]"),
                    format!("{s:?} is {e}"),
                    "write an address block such as \"10.0.0.0/8\", \"127.0.0.1/32\" or \"::1/128\"",
                )
            })
        })
        .collect()
}

impl ConfigError {
    /// The same error one level down: `field` becomes `section.field` (the combined module's
    /// sections use this so that every error names the full path).
    pub fn within(mut self, section: &str) -> Self {
        self.field = if self.field == "." || self.field.is_empty() {
            section.to_string()
        } else if self.field.starts_with('[') {
            format!("{section}{}", self.field)
        } else {
            format!("{section}.{}", self.field)
        };
        self
    }
}

/// A number from a configuration, for messages: `1.5`, `2`, `1e-7`, as the operator would write
/// it. The standard library's float display is not used so that its formatting code stays out of
/// the modules (serde_json's, which they contain anyway, writes the digits).
pub(crate) fn number_text(v: f64) -> String {
    let text = float_text(v);
    match text.strip_suffix(".0") {
        Some(whole) => whole.to_string(),
        None => text,
    }
}

/// A float as serde_json writes it (`1.0`, `1.5`, `1e300`), which is also how serde's own
/// messages name a float.
fn float_text(v: f64) -> String {
    match serde_json::Number::from_f64(v) {
        Some(n) => n.to_string(),
        None if v.is_nan() => "NaN".to_string(),
        None if v > 0.0 => "inf".to_string(),
        None => "-inf".to_string(),
    }
}

/// Parses a duration such as `250ms`, `1s`, `1.5s`, `2m`, `1h`, or several of them written
/// together as Go and Istio write them (`1m30s`, `1h15m`, `2s500ms`), into nanoseconds.
///
/// Returns `None` for anything else (no unit, negative, unknown unit, overflow).
pub fn parse_duration_nanos(text: &str) -> Option<u64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, after) = rest.split_at(number_end);
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        total = total.checked_add(component_nanos(number, unit)?)?;
        rest = next;
    }
    Some(total)
}

/// One `<number><unit>` of a duration.
fn component_nanos(number: &str, unit: &str) -> Option<u64> {
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
            // One decimal point at most: "1.5.5s" is no duration (the fraction used to take the
            // second '.' for a digit).
            if !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
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
    fn text_that_is_not_json_names_the_document() {
        for bad in [&b"{\"names\": [1,"[..], b"{\"\xff\": 1}", b"{\"names\" 1}"] {
            let e = parse_json::<Sample>(bad).unwrap_err();
            assert_eq!(e.field, ".", "{e}");
            assert!(e.problem.contains("line 1"), "{e}");
        }
    }

    #[test]
    fn a_top_level_schema_pointer_is_ignored() {
        let s: Sample = parse_json(br#"{"$schema": "./x.schema.json", "names": [1]}"#).unwrap();
        assert_eq!(s.names, [1]);
        assert!(parse_json::<Sample>(br#"{"$schema": 1}"#).is_err(), "only a string is an editor's pointer");
    }

    #[test]
    fn only_an_object_is_a_configuration() {
        for bad in ["[]", "[[1]]", "5", "\"x\"", "null"] {
            let e = parse_json::<Sample>(bad.as_bytes()).unwrap_err();
            assert_eq!(e.field, ".", "{bad}");
        }
        let names: Vec<u32> = parse_json_value(b"[1, 2]").unwrap();
        assert_eq!(names, [1, 2]);
        assert_eq!(parse_json_value::<Vec<u32>>(br#"[1, "x"]"#).unwrap_err().field, "[1]");
    }

    #[test]
    fn a_secret_field_of_the_wrong_type_is_not_repeated() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct WithToken {
            debug_token: String,
        }
        let e = parse_json::<WithToken>(br#"{"debug_token": 424242}"#).unwrap_err();
        assert_eq!(e.field, "debug_token");
        assert!(!e.to_string().contains("424242"), "{e}");
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse_json::<Sample>(b"{} x").is_err());
    }

    #[test]
    fn numbers_in_messages_read_like_the_configuration() {
        for (v, text) in [(1.5, "1.5"), (0.5, "0.5"), (2.0, "2"), (0.0, "0"), (-1.0, "-1"), (100.25, "100.25")] {
            assert_eq!(number_text(v), text);
        }
        assert_eq!(float_text(1.0), "1.0");
        assert_eq!(float_text(1e300), "1e+300");
        assert_eq!(float_text(f64::NAN), "NaN");
        assert_eq!(float_text(f64::NEG_INFINITY), "-inf");
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
    fn durations_may_be_written_as_go_and_istio_write_them() {
        assert_eq!(parse_duration_nanos("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration_nanos("1h15m"), Some(4_500_000_000_000));
        assert_eq!(parse_duration_nanos("2s500ms"), Some(2_500_000_000));
        assert_eq!(parse_duration_nanos(" 1m0.5s "), Some(60_500_000_000));
        for bad in ["1m30", "1m 30s", "m30s", "1m30x", "1m-30s"] {
            assert_eq!(parse_duration_nanos(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations_without_a_known_unit_are_refused() {
        for bad in ["", "10", "ms", "-1s", "1x", "1.s", ".5s", "99999999999999999999h", "1.5.5s", "1..5s", "1.5.s"] {
            assert_eq!(parse_duration_nanos(bad), None, "{bad}");
        }
    }
}
