//! The diagnostics filter's plugin configuration: JSON shape and validated form.

use serde::Deserialize;

use crate::cidr::Cidr;
use crate::config::ConfigError;

/// When the diagnosis header is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Only when a failure flag is set, the status is 500 or more, or one of our filters replied.
    #[default]
    Errors,
    /// On every response (`cause=none` when nothing failed).
    Always,
}

/// Who may see upstream addresses, cluster and route names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Expose {
    /// Nobody: every client gets `cause`, `flags` and `hint` only.
    Never,
    /// Clients in `trusted_cidrs`, or sending the debug header with the debug token.
    #[default]
    Trusted,
    /// Everybody (for internal listeners only).
    Always,
}

/// The JSON plugin configuration, as written by the operator. Every field is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsJson {
    pub header: String,
    pub on: When,
    pub expose_upstream: Expose,
    pub trusted_cidrs: Vec<String>,
    pub debug_header: Option<String>,
    pub debug_token: Option<String>,
    pub json_body: bool,
}

impl Default for DiagnosticsJson {
    fn default() -> Self {
        Self {
            header: "x-upstream-diagnosis".into(),
            on: When::Errors,
            expose_upstream: Expose::Trusted,
            trusted_cidrs: Vec::new(),
            debug_header: None,
            debug_token: None,
            json_body: false,
        }
    }
}

/// The debug header that unlocks upstream details for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugUnlock {
    /// Lowercase header name.
    pub header: String,
    /// The secret the header must carry.
    pub token: String,
}

/// The validated configuration the filter runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagnosticsConfig {
    pub header: String,
    pub when: When,
    pub expose: Expose,
    pub trusted: Vec<Cidr>,
    pub debug: Option<DebugUnlock>,
    pub json_body: bool,
}

impl DiagnosticsConfig {
    /// Parses and validates a plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        crate::config::parse_json::<DiagnosticsJson>(bytes)?.validate()
    }
}

impl DiagnosticsJson {
    /// Checks every field and builds the typed configuration.
    pub fn validate(self) -> Result<DiagnosticsConfig, ConfigError> {
        check_header_name("header", &self.header)?;
        let trusted = crate::cidr::parse_list("trusted_cidrs", &self.trusted_cidrs)?;
        let debug = match (self.debug_header, self.debug_token) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "debug_token",
                    "debug_header is set but debug_token is missing",
                    "set debug_token to a secret, or remove debug_header",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "debug_header",
                    "debug_token is set but debug_header is missing",
                    "set debug_header, e.g. \"x-upstream-debug\"",
                ))
            }
            (Some(header), Some(token)) => {
                check_header_name("debug_header", &header)?;
                if token.trim().is_empty() {
                    return Err(ConfigError::new("debug_token", "is empty", "use a non-empty secret"));
                }
                Some(DebugUnlock { header, token })
            }
        };
        Ok(DiagnosticsConfig {
            header: self.header,
            when: self.on,
            expose: self.expose_upstream,
            trusted,
            debug,
            json_body: self.json_body,
        })
    }
}

/// Header names must be non-empty lowercase HTTP tokens (HTTP/2 forbids uppercase) and not
/// pseudo-headers.
pub fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_documented_defaults() {
        let c = DiagnosticsConfig::from_json(b"").unwrap();
        assert_eq!(c.header, "x-upstream-diagnosis");
        assert_eq!(c.when, When::Errors);
        assert_eq!(c.expose, Expose::Trusted);
        assert!(c.trusted.is_empty() && c.debug.is_none() && !c.json_body);
    }

    #[test]
    fn full_example_config_is_accepted() {
        let c = DiagnosticsConfig::from_json(
            br#"{"header": "x-upstream-diagnosis", "on": "errors", "expose_upstream": "trusted",
                 "trusted_cidrs": ["10.0.0.0/8", "127.0.0.1/32"], "debug_header": "x-upstream-debug",
                 "debug_token": "s3cret", "json_body": true}"#,
        )
        .unwrap();
        assert_eq!(c.trusted.len(), 2);
        assert_eq!(c.debug.unwrap().token, "s3cret");
        assert!(c.json_body);
    }

    #[test]
    fn bad_cidr_names_the_element() {
        let e = DiagnosticsConfig::from_json(br#"{"trusted_cidrs": ["10.0.0.0/8", "10.0.0.0/40"]}"#).unwrap_err();
        assert_eq!(e.field, "trusted_cidrs[1]");
        assert!(e.fix.contains("10.0.0.0/8"));
    }

    #[test]
    fn unknown_field_and_bad_enum_are_refused() {
        assert!(DiagnosticsConfig::from_json(br#"{"headr": "x"}"#).unwrap_err().problem.contains("headr"));
        assert_eq!(DiagnosticsConfig::from_json(br#"{"on": "sometimes"}"#).unwrap_err().field, "on");
    }

    #[test]
    fn empty_or_uppercase_header_names_are_refused() {
        assert_eq!(DiagnosticsConfig::from_json(br#"{"header": ""}"#).unwrap_err().field, "header");
        assert_eq!(DiagnosticsConfig::from_json(br#"{"header": "X-Diag"}"#).unwrap_err().field, "header");
    }

    #[test]
    fn debug_header_and_token_come_together() {
        assert_eq!(DiagnosticsConfig::from_json(br#"{"debug_header": "x-d"}"#).unwrap_err().field, "debug_token");
        assert_eq!(DiagnosticsConfig::from_json(br#"{"debug_token": "t"}"#).unwrap_err().field, "debug_header");
        let e = DiagnosticsConfig::from_json(br#"{"debug_header": "x-d", "debug_token": " "}"#).unwrap_err();
        assert_eq!(e.field, "debug_token");
    }
}
