//! Rendering a diagnosis: the structured-field header and the JSON body.

use serde_json::{Map, Value};

use super::cause::{Cause, Observation};
use crate::sfv::Dictionary;

/// A diagnosis with everything Envoy told us about where the request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report<'a> {
    pub cause: Cause,
    pub observation: Observation<'a>,
    /// `xds.cluster_name`.
    pub cluster: Option<&'a str>,
    /// `upstream.address`.
    pub upstream: Option<&'a str>,
    /// `xds.route_name`.
    pub route: Option<&'a str>,
    /// `upstream.request_attempt_count`.
    pub attempts: Option<u64>,
    /// Seconds until the cause is expected to clear (a provider's pause): shown to everyone,
    /// since it is what a client needs to know.
    pub retry_after: Option<u64>,
    /// Per-upstream reasons a stage gave (they name clusters: trusted clients only).
    pub reasons: Option<&'a str>,
    /// The troubleshooting page (`docs_url`): the report links to the cause's section.
    pub docs: Option<&'a str>,
}

impl<'a> Report<'a> {
    /// A report with no upstream details yet.
    pub fn new(cause: Cause, observation: Observation<'a>) -> Self {
        Report {
            cause,
            observation,
            cluster: None,
            upstream: None,
            route: None,
            attempts: None,
            retry_after: None,
            reasons: None,
            docs: None,
        }
    }

    /// The link to this cause's troubleshooting section, when a page is configured.
    pub fn docs_link(&self) -> Option<String> {
        self.docs.map(|base| format!("{base}#{}", self.cause.token()))
    }

    /// Envoy's short flag names (`UF,URX`), `-` for none.
    pub fn flags_text(&self) -> String {
        let names = self.observation.flags.short_names();
        if names.is_empty() {
            "-".into()
        } else {
            names
        }
    }

    /// The header value. With `expose` false only `cause`, `flags` and `hint` are written:
    /// addresses and names of internal clusters are for trusted clients.
    pub fn header_value(&self, expose: bool) -> String {
        let mut d = Dictionary::new();
        d.token("cause", self.cause.token());
        d.string("flags", &self.flags_text());
        if let Some(s) = self.retry_after {
            d.integer("retry_after", i64::try_from(s).unwrap_or(i64::MAX));
        }
        if expose {
            if let Some(status) = self.observation.status {
                d.integer("status", i64::from(status));
            }
            if let Some(g) = self.observation.grpc_status {
                d.integer("grpc_status", i64::from(g));
            }
            if let Some(c) = non_empty(self.cluster) {
                d.string("cluster", c);
            }
            if let Some(u) = non_empty(self.upstream) {
                d.string("upstream", u);
            }
            if let Some(a) = self.attempts {
                d.integer("attempts", i64::try_from(a).unwrap_or(i64::MAX));
            }
            if let Some(r) = non_empty(self.route) {
                d.string("route", r);
            }
            if !self.observation.details.is_empty() {
                d.string("details", self.observation.details);
            }
            if let Some(r) = non_empty(self.reasons) {
                d.string("reasons", r);
            }
        }
        d.string("hint", self.cause.hint());
        if let Some(link) = self.docs_link() {
            d.string("docs", &link);
        }
        d.finish()
    }

    /// The JSON body, with the same fields as the header.
    pub fn json(&self, expose: bool) -> String {
        let mut m = Map::new();
        m.insert("cause".into(), Value::from(self.cause.token()));
        m.insert("flags".into(), Value::from(self.flags_text()));
        if let Some(s) = self.retry_after {
            m.insert("retry_after".into(), Value::from(s));
        }
        if expose {
            if let Some(status) = self.observation.status {
                m.insert("status".into(), Value::from(status));
            }
            if let Some(g) = self.observation.grpc_status {
                m.insert("grpc_status".into(), Value::from(g));
            }
            if let Some(c) = non_empty(self.cluster) {
                m.insert("cluster".into(), Value::from(c));
            }
            if let Some(u) = non_empty(self.upstream) {
                m.insert("upstream".into(), Value::from(u));
            }
            if let Some(a) = self.attempts {
                m.insert("attempts".into(), Value::from(a));
            }
            if let Some(r) = non_empty(self.route) {
                m.insert("route".into(), Value::from(r));
            }
            if !self.observation.details.is_empty() {
                m.insert("details".into(), Value::from(self.observation.details));
            }
            if let Some(r) = non_empty(self.reasons) {
                m.insert("reasons".into(), Value::from(r));
            }
        }
        m.insert("hint".into(), Value::from(self.cause.hint()));
        if let Some(link) = self.docs_link() {
            m.insert("docs".into(), Value::from(link));
        }
        Value::Object(m).to_string()
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{classify, ResponseFlags};

    fn refused() -> Report<'static> {
        let obs = Observation {
            status: Some(503),
            flags: ResponseFlags(0x20),
            details: "upstream_reset_before_response_started{remote_connection_failure}",
            transport_failure: "delayed connect error: Connection refused",
            grpc_status: None,
        };
        Report {
            cause: classify(&obs),
            observation: obs,
            cluster: Some("backend"),
            upstream: Some("127.0.0.1:18099"),
            route: Some(""),
            attempts: Some(1),
            retry_after: None,
            reasons: None,
            docs: None,
        }
    }

    #[test]
    fn trusted_header_carries_where_the_request_went() {
        assert_eq!(
            refused().header_value(true),
            "cause=connection_refused, flags=\"UF\", status=503, cluster=\"backend\", upstream=\"127.0.0.1:18099\", \
             attempts=1, details=\"upstream_reset_before_response_started{remote_connection_failure}\", \
             hint=\"nothing accepted the connection: is the backend running and listening on this port?\""
        );
    }

    #[test]
    fn untrusted_header_has_cause_flags_and_hint_only() {
        let v = refused().header_value(false);
        assert!(v.starts_with("cause=connection_refused, flags=\"UF\", hint="), "{v}");
        assert!(!v.contains("127.0.0.1") && !v.contains("backend\""), "{v}");
    }

    #[test]
    fn a_configured_page_links_every_client_to_the_causes_section() {
        let mut r = refused();
        assert!(!r.header_value(false).contains("docs="), "no page, no link");
        r.docs = Some("https://docs.example.com/ug/troubleshooting.html");
        let link = "https://docs.example.com/ug/troubleshooting.html#connection_refused";
        assert!(r.header_value(false).ends_with(&format!("docs=\"{link}\"")), "{}", r.header_value(false));
        let v: Value = serde_json::from_str(&r.json(false)).unwrap();
        assert_eq!(v["docs"], link);
    }

    #[test]
    fn json_has_the_same_fields() {
        let v: Value = serde_json::from_str(&refused().json(true)).unwrap();
        assert_eq!(v["cause"], "connection_refused");
        assert_eq!(v["flags"], "UF");
        assert_eq!(v["upstream"], "127.0.0.1:18099");
        assert_eq!(v["attempts"], 1);
        let hidden: Value = serde_json::from_str(&refused().json(false)).unwrap();
        assert!(hidden.get("upstream").is_none() && hidden.get("cluster").is_none());
    }

    #[test]
    fn a_stages_retry_time_is_for_everyone_and_its_reasons_for_trusted_clients() {
        let mut r = Report::new(Cause::UpstreamRateLimited, Observation { status: Some(429), ..Default::default() });
        r.retry_after = Some(20);
        r.reasons = Some("openai: rate limited by the upstream (429), back in 20000 ms");
        let open = r.header_value(false);
        assert!(open.starts_with("cause=upstream_rate_limited, flags=\"-\", retry_after=20, hint="), "{open}");
        assert!(r.header_value(true).contains("reasons=\"openai: rate limited"));
        let v: Value = serde_json::from_str(&r.json(false)).unwrap();
        assert_eq!((v["retry_after"].as_u64(), v.get("reasons")), (Some(20), None));
    }

    #[test]
    fn no_flags_are_written_as_a_dash() {
        let r = Report::new(Cause::UpstreamErrorResponse, Observation { status: Some(503), ..Default::default() });
        assert!(r.header_value(false).starts_with("cause=upstream_error_response, flags=\"-\""));
    }
}
