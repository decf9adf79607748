//! The diagnostics filter's plugin configuration: JSON shape and validated form.

use serde::Deserialize;

use crate::config::ConfigError;
use crate::peer::Trust;

/// When the diagnosis header is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Only when a failure flag is set, the status is 500 or more, or an upstream-guard filter
    /// replied.
    #[default]
    Errors,
    /// On every response (`cause=none` when nothing failed).
    Always,
}

/// Who may see upstream addresses, cluster and route names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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

/// # diagnostics
///
/// The diagnostics filter's plugin configuration (also the `diagnostics` section of
/// upstream_guard.wasm's). Every field is optional: `{}` gives the defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DiagnosticsJson {
    /// Response header that carries the diagnosis (a lowercase header name).
    #[cfg_attr(feature = "schema", schemars(extend("default" = "x-upstream-diagnosis"), pattern(crate::schema::HEADER_NAME)))]
    pub header: String,
    /// When the header is added: `errors` (a failure flag is set, the status is 500 or more, or
    /// an upstream-guard filter replied) or `always` (`cause=none` on success).
    #[cfg_attr(feature = "schema", schemars(extend("default" = "errors")))]
    pub on: When,
    /// Who sees `status`, `cluster`, `upstream`, `attempts`, `route` and `details`: `never`,
    /// `trusted` (clients in `trusted_cidrs` or sending the debug token) or `always`. Others get
    /// `cause`, `flags` and `hint` only.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "trusted")))]
    pub expose_upstream: Expose,
    /// Client address blocks (`source.address`) that are trusted, IPv4 and IPv6 (`"10.0.0.0/8"`,
    /// `"::1/128"`, a bare address is one host).
    #[cfg_attr(feature = "schema", schemars(extend("default" = []), inner(pattern(crate::schema::CIDR))))]
    pub trusted_cidrs: Vec<String>,
    /// Also trust client addresses Envoy took from `x-forwarded-for`: only safe behind a proxy
    /// that overwrites that header.
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    pub trust_x_forwarded_for: bool,
    /// A request carrying this header with `debug_token` as its value is trusted (compared in
    /// constant time; the header is removed before the request goes upstream). Set both or
    /// neither: checked by the filter only.
    #[cfg_attr(feature = "schema", schemars(pattern(crate::schema::HEADER_NAME)))]
    pub debug_header: Option<String>,
    /// The secret `debug_header` must carry (non-empty). Set both or neither: checked by the
    /// filter only.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub debug_token: Option<String>,
    /// When the response is a local reply (Envoy's or another filter's, never the upstream's own
    /// body) and the client's `Accept` includes `application/json`, replace the body with the
    /// diagnosis as JSON (same fields) and fix `content-length`. gRPC replies are never rewritten.
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    pub json_body: bool,
    /// Where the troubleshooting page is published (`http://` or `https://`, no `#`): every
    /// diagnosis then carries `docs="<docs_url>#<cause>"`, the cause's own section. Unset: no link.
    #[cfg_attr(feature = "schema", schemars(pattern(r"^https?://[!-~]+$")))]
    pub docs_url: Option<String>,
}

impl Default for DiagnosticsJson {
    fn default() -> Self {
        Self {
            header: "x-upstream-diagnosis".into(),
            on: When::Errors,
            expose_upstream: Expose::Trusted,
            trusted_cidrs: Vec::new(),
            trust_x_forwarded_for: false,
            debug_header: None,
            debug_token: None,
            json_body: false,
            docs_url: None,
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
    /// Who is trusted: `trusted_cidrs`, and whether a header-derived address counts.
    pub trust: Trust,
    pub debug: Option<DebugUnlock>,
    pub json_body: bool,
    /// The troubleshooting page's address, for the `docs` link of each cause.
    pub docs_url: Option<String>,
}

impl DiagnosticsConfig {
    /// Parses and validates a plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        crate::config::parse_json::<DiagnosticsJson>(bytes)?.validate()
    }
}

/// Checks `docs_url`: an absolute `http(s)` address of visible ASCII (it goes into a header),
/// without a fragment (the cause is appended as one).
fn docs_url(url: String) -> Result<String, ConfigError> {
    let scheme = url.starts_with("https://") || url.starts_with("http://");
    let fix =
        "give the page's address, e.g. \"https://docs.example.com/upstream-guard/operations/troubleshooting.html\"";
    if !scheme || url.len() > 512 || !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            "docs_url",
            "is not an http:// or https:// address of at most 512 visible ASCII characters",
            fix,
        ));
    }
    if url.contains('#') {
        return Err(ConfigError::new("docs_url", "has a #fragment: the cause is appended as one", "drop the #..."));
    }
    Ok(url)
}

impl DiagnosticsJson {
    /// Checks every field and builds the typed configuration.
    pub fn validate(self) -> Result<DiagnosticsConfig, ConfigError> {
        crate::config::header_name("header", &self.header)?;
        let trust = Trust {
            cidrs: crate::config::cidrs("trusted_cidrs", &self.trusted_cidrs)?,
            forwarded: self.trust_x_forwarded_for,
        };
        let debug = match (self.debug_header, self.debug_token) {
            (None, None) => None,
            // The field that is there is the one named (an error must point at text the
            // operator can find).
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "debug_header",
                    "is set but debug_token is missing",
                    "set debug_token to a secret, or remove debug_header",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "debug_token",
                    "is set but debug_header is missing",
                    "set debug_header, e.g. \"x-upstream-debug\", or remove debug_token",
                ))
            }
            (Some(header), Some(token)) => {
                crate::config::header_name("debug_header", &header)?;
                if token.trim().is_empty() {
                    return Err(ConfigError::new("debug_token", "is empty", "use a non-empty secret"));
                }
                Some(DebugUnlock { header, token })
            }
        };
        let docs_url = self.docs_url.map(docs_url).transpose()?;
        Ok(DiagnosticsConfig {
            header: self.header,
            when: self.on,
            expose: self.expose_upstream,
            trust,
            debug,
            json_body: self.json_body,
            docs_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_url_takes_an_http_address_without_a_fragment() {
        let ok = DiagnosticsConfig::from_json(br#"{"docs_url": "https://docs.example.com/ug/troubleshooting.html"}"#)
            .unwrap();
        assert_eq!(ok.docs_url.as_deref(), Some("https://docs.example.com/ug/troubleshooting.html"));
        for bad in [r#""ftp://x""#, r#""https://x/a b""#, r#""https://x/t.html#top""#, r#""/troubleshooting""#] {
            let e = DiagnosticsConfig::from_json(format!(r#"{{"docs_url": {bad}}}"#).as_bytes()).unwrap_err();
            assert_eq!(e.field, "docs_url", "{bad}: {e}");
        }
        assert_eq!(DiagnosticsConfig::from_json(b"{}").unwrap().docs_url, None);
    }
}
