//! The limits the server enforces, and which descriptors each one counts.
//!
//! Test equipment needs a configuration that a test can write inline in one line, so the format
//! is a flat JSON list rather than the nested descriptor trees of production rate limit
//! services. Each entry names a domain, the exact set of descriptor keys it matches, and a fixed
//! window:
//!
//! ```json
//! [{"domain": "edge", "descriptor": {"tenant": null}, "max": 100, "seconds": 60},
//!  {"domain": "edge", "descriptor": {"tenant": "free", "path": null}, "max": 10, "seconds": 1}]
//! ```
//!
//! A `null` value matches any value and counts each value separately; a string matches that
//! value only. A descriptor matches an entry when it has exactly the entry's keys (in any order),
//! like a leaf of a descriptor tree in Envoy's reference service.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::Error;

/// One limit: requests whose descriptor matches `descriptor` in `domain` may be counted `max`
/// times per window of `seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// The RLS domain (Envoy's `domain`), whose limits apply.
    pub domain: String,
    /// Descriptor key → `Some(value)` to match that value only, `None` to count each value apart.
    pub descriptor: BTreeMap<String, Option<String>>,
    /// Hits allowed per window.
    pub max: u64,
    /// Window length in seconds (a fixed window that starts with the first hit).
    pub seconds: u64,
}

impl LimitSpec {
    /// A limit of `max` hits per `seconds` in `domain`, with no descriptor keys yet: add them with
    /// [`LimitSpec::any`] and [`LimitSpec::value`].
    pub fn new(domain: &str, max: u64, seconds: u64) -> Self {
        LimitSpec { domain: domain.to_string(), descriptor: BTreeMap::new(), max, seconds }
    }

    /// Matches any value of `key`, counting each value separately.
    pub fn any(mut self, key: &str) -> Self {
        self.descriptor.insert(key.to_string(), None);
        self
    }

    /// Matches `key` only when its value is `value`.
    pub fn value(mut self, key: &str, value: &str) -> Self {
        self.descriptor.insert(key.to_string(), Some(value.to_string()));
        self
    }

    /// Checks the limit makes sense, naming the entry (`at`, e.g. `[2]`) in the message.
    pub(crate) fn validate(&self, at: &str) -> Result<(), Error> {
        let problem =
            |field: &str, problem: &str| Error::Config { field: format!("{at}.{field}"), problem: problem.into() };
        if self.domain.is_empty() {
            return Err(problem("domain", "is empty; write the domain Envoy's rate limit filter sends"));
        }
        if self.descriptor.is_empty() {
            return Err(problem("descriptor", "has no keys; name at least one key, e.g. {\"tenant\": null}"));
        }
        if self.seconds == 0 {
            return Err(problem("seconds", "is 0; the window must be at least 1 second"));
        }
        Ok(())
    }

    /// When this limit counts a descriptor with these entries in `domain`: the values of its
    /// `null` keys (in key order), which select the counter. `None` when it does not apply.
    pub fn counts<'a>(&self, domain: &str, entries: &BTreeMap<&str, &'a str>) -> Option<Vec<&'a str>> {
        if domain != self.domain || entries.len() != self.descriptor.len() {
            return None;
        }
        let mut values = Vec::new();
        for (key, wanted) in &self.descriptor {
            let value = *entries.get(key.as_str())?;
            match wanted {
                Some(w) if w != value => return None,
                Some(_) => {}
                None => values.push(value),
            }
        }
        Some(values)
    }

    /// A readable name: `domain:key=value,key=*`.
    pub fn name(&self) -> String {
        let keys: Vec<String> =
            self.descriptor.iter().map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("*"))).collect();
        format!("{}:{}", self.domain, keys.join(","))
    }

    /// The Redis key of this limit's counter for `values` (from [`LimitSpec::counts`]). Two
    /// servers with the same limit share the counter, whatever the order of their lists.
    pub fn counter_key(&self, values: &[&str]) -> String {
        let id = serde_json::json!([self.domain, self.descriptor, self.max, self.seconds, values]);
        format!("ug-rls:{id}")
    }
}

/// Parses a JSON list of limits, naming the offending field on error (with the core's reader of
/// plugin configurations, which names fields the same way).
pub fn parse_limits(json: &str) -> Result<Vec<LimitSpec>, Error> {
    let limits: Vec<LimitSpec> = upstream_guard::config::parse_json_value(json.as_bytes()).map_err(|e| {
        Error::Config { field: if e.field == "." { "(top level)".into() } else { e.field }, problem: e.problem }
    })?;
    for (i, l) in limits.iter().enumerate() {
        l.validate(&format!("[{i}]"))?;
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn entries<'a>(pairs: &[(&'a str, &'a str)]) -> BTreeMap<&'a str, &'a str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn parses_the_documented_example() {
        let l = parse_limits(
            r#"[{"domain": "d", "descriptor": {"tenant": null}, "max": 100, "seconds": 60},
                {"domain": "d", "descriptor": {"tenant": "a", "path": null}, "max": 5, "seconds": 1}]"#,
        )
        .unwrap();
        assert_eq!(l[0], LimitSpec::new("d", 100, 60).any("tenant"));
        assert_eq!(l[1], LimitSpec::new("d", 5, 1).value("tenant", "a").any("path"));
        assert_eq!(l[1].name(), "d:path=*,tenant=a");
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_limits(r#"[{"domain": "d", "descriptor": {"k": null}, "max": 1, "seconds": 0}]"#).unwrap_err();
        assert_eq!(e.to_string(), "limits config: field `[0].seconds`: is 0; the window must be at least 1 second");
        let e = parse_limits(r#"[{"domain": "d", "descriptor": {"k": 3}, "max": 1, "seconds": 1}]"#).unwrap_err();
        assert!(e.to_string().contains("`[0].descriptor.k`"), "{e}");
        let e = parse_limits(r#"[{"domain": "d", "descriptor": {}, "max": 1, "seconds": 1, "burst": 2}]"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `burst`"), "{e}");
        let e = parse_limits(r#"[{"domain": "", "descriptor": {"k": null}, "max": 1, "seconds": 1}]"#).unwrap_err();
        assert!(e.to_string().contains("`[0].domain`"), "{e}");
        let e = parse_limits(r#"[{"domain": "d", "descriptor": {}, "max": 1, "seconds": 1}]"#).unwrap_err();
        assert!(e.to_string().contains("`[0].descriptor`: has no keys"), "{e}");
        let e = parse_limits(r#"{"domain": "d"}"#).unwrap_err();
        assert!(e.to_string().contains("`(top level)`"), "{e}");
    }

    #[test]
    fn a_limit_counts_exactly_its_key_set_and_fixed_values() {
        let any = LimitSpec::new("d", 1, 1).any("tenant");
        assert_eq!(any.counts("d", &entries(&[("tenant", "a")])), Some(vec!["a"]));
        assert_eq!(any.counts("other", &entries(&[("tenant", "a")])), None, "another domain");
        assert_eq!(any.counts("d", &entries(&[("tenant", "a"), ("path", "/")])), None, "an extra key");
        assert_eq!(any.counts("d", &entries(&[("path", "/")])), None);

        let fixed = LimitSpec::new("d", 1, 1).value("tenant", "a").any("path");
        assert_eq!(fixed.counts("d", &entries(&[("path", "/x"), ("tenant", "a")])), Some(vec!["/x"]));
        assert_eq!(fixed.counts("d", &entries(&[("tenant", "b"), ("path", "/x")])), None);
        assert_eq!(fixed.counts("d", &entries(&[("tenant", "a")])), None);
    }

    #[test]
    fn counter_keys_separate_values_limits_and_domains() {
        let a = LimitSpec::new("d", 5, 60).any("k");
        assert_eq!(a.counter_key(&["x"]), a.clone().counter_key(&["x"]));
        assert_ne!(a.counter_key(&["x"]), a.counter_key(&["y"]));
        assert_ne!(a.counter_key(&["x"]), LimitSpec::new("d", 6, 60).any("k").counter_key(&["x"]));
        assert_ne!(a.counter_key(&["x"]), LimitSpec::new("e", 5, 60).any("k").counter_key(&["x"]));
        assert_ne!(
            LimitSpec::new("d", 5, 60).any("k").any("l").counter_key(&["a,b", "c"]),
            LimitSpec::new("d", 5, 60).any("k").any("l").counter_key(&["a", "b,c"])
        );
    }
}
