//! The `llm` section: which paths are LLM requests, the provider clusters, which models each
//! serves (and under which name), how provider 429s and failures take a provider out, and the
//! token budgets.

use serde::Deserialize;
use serde_json::Value;

use super::budget::TokenRate;
use crate::config::{duration, ConfigError};
use crate::hash::Secret;
use crate::health::config::{cluster_name, validate_check, validate_passive, HealthCheckJson, PassiveJson};
use crate::health::{HealthConfig, NoneHealthy, Passive, Strategy, Upstream};
use crate::peer::Trust;
use crate::ratelimit::{ClientIp, KeyPart, RequestView};
use crate::slots::Place;

const S: u64 = 1_000_000_000;

/// The paths claimed when `paths` is not given: OpenAI's chat, completion and embedding APIs.
pub const DEFAULT_PATHS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// A provider: an Envoy cluster that speaks the OpenAI API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct ProviderJson {
    /// The Envoy cluster (also the name models list it by).
    cluster: String,
    /// Active checks of the provider (none by default: passive detection and 429 pauses only).
    #[serde(default)]
    health_check: Option<HealthCheckJson>,
}

/// A provider of a model: its cluster, or the cluster and the name it knows the model by.
#[cfg(feature = "schema")]
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ModelProviderJson {
    /// The provider's cluster; the model keeps the client's name.
    Cluster(String),
    /// The provider's cluster and the model's name there.
    Renamed {
        /// The provider's cluster.
        cluster: String,
        /// The model's name at this provider.
        model: String,
    },
}

/// A model clients may ask for, and its providers in failover order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct ModelJson {
    /// The name clients send in the body's `model`.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 256)))]
    name: String,
    /// Providers in failover order.
    #[cfg_attr(feature = "schema", schemars(with = "Vec<ModelProviderJson>", length(min = 1)))]
    providers: Vec<Value>,
}

/// Passive detection of providers: the health router's, with defaults for LLM providers
/// (overloaded answers, 529, count too).
#[cfg(feature = "schema")]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct LlmPassiveJson {
    /// Failed responses in a row that take the provider out.
    #[schemars(extend("default" = 3), range(min = 1))]
    consecutive_failures: Option<u32>,
    /// How long it stays out.
    #[schemars(extend("default" = "30s"), pattern(crate::schema::DURATION))]
    ejection: Option<String>,
    /// Statuses that count as failures.
    #[schemars(extend("default" = [500, 502, 503, 504, 529]), inner(range(min = 100, max = 599)))]
    statuses: Option<Vec<u16>>,
}

/// How a provider's 429 pauses it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct RateLimitedJson {
    /// The pause when the 429 says nothing usable about when to come back.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "10s"), pattern(crate::schema::DURATION_OR_ZERO)))]
    #[serde(default)]
    default: Option<String>,
    /// The longest pause a 429 may ask for.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "300s"), pattern(crate::schema::DURATION)))]
    #[serde(default)]
    max: Option<String>,
}

/// A token budget: tokens per period per key, charged with what the provider reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct BudgetJson {
    /// The budget's name (printable ASCII, unique).
    #[cfg_attr(feature = "schema", schemars(pattern(r"^[ -~]+$")))]
    name: String,
    /// Parts joined into the key (default `["client_ip"]`), as in the rate limiter's rules.
    #[cfg_attr(
        feature = "schema",
        schemars(
            with = "Option<Vec<crate::ratelimit::KeyPartJson>>",
            extend("default" = ["client_ip"]),
            length(min = 1)
        )
    )]
    #[serde(default)]
    key: Option<Vec<Value>>,
    /// Tokens per period.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1_000_000_000_000_000u64)))]
    tokens: u64,
    /// The period.
    #[cfg_attr(feature = "schema", schemars(pattern(crate::schema::DURATION)))]
    per: String,
    /// The models it applies to (default: all).
    #[serde(default)]
    models: Option<Vec<String>>,
}

/// # llm
///
/// The `llm` section of upstream_guard.wasm: routes OpenAI-compatible requests by the body's
/// `model` to providers, pauses providers that answer 429, and keeps token budgets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LlmJson {
    /// Request paths (without the query) the stage routes (default: `/v1/chat/completions`,
    /// `/v1/completions`, `/v1/embeddings`).
    #[cfg_attr(feature = "schema", schemars(inner(pattern(crate::schema::PATH))))]
    #[serde(default)]
    paths: Option<Vec<String>>,
    /// The provider clusters.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    providers: Vec<ProviderJson>,
    /// The models and their providers.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    models: Vec<ModelJson>,
    /// The most request body buffered to find the model (Envoy's buffer limit must be at least
    /// as large).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 1_048_576), range(min = 1024, max = 67_108_864)))]
    #[serde(default)]
    max_body_bytes: Option<u64>,
    /// Passive detection of failing providers.
    #[cfg_attr(feature = "schema", schemars(with = "Option<LlmPassiveJson>"))]
    #[serde(default)]
    passive: Option<PassiveJson>,
    /// How a provider's 429 pauses it.
    #[serde(default)]
    rate_limited: Option<RateLimitedJson>,
    /// How long a provider that just failed (a response passive detection counts: 5xx, 529, a
    /// refused connection, a timeout) is tried after the model's other available providers, so
    /// that a client's retry reaches another one at once. A success ends it early; "0s" turns it
    /// off (then only the ejection after `passive.consecutive_failures` moves traffic).
    #[cfg_attr(feature = "schema", schemars(extend("default" = "10s"), pattern(crate::schema::DURATION_OR_ZERO)))]
    #[serde(default)]
    demote_failed: Option<String>,
    /// What a request that gives no `max_tokens` / `max_completion_tokens` reserves from each
    /// budget at admission (at most the budget's size), so that concurrent requests cannot
    /// overrun it; settled to the reported usage at the end. `0`: such requests reserve nothing.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 1000), range(max = 1_000_000_000_000u64)))]
    #[serde(default)]
    reserve_tokens: Option<u64>,
    /// Ask streamed requests for the final usage chunk (`stream_options.include_usage`), so that
    /// budgets are charged exactly.
    #[cfg_attr(feature = "schema", schemars(extend("default" = true)))]
    #[serde(default)]
    stream_usage: Option<bool>,
    /// Token budgets.
    #[cfg_attr(feature = "schema", schemars(extend("default" = [])))]
    #[serde(default)]
    budgets: Vec<BudgetJson>,
    /// Where the client address of a `client_ip` key part comes from.
    #[serde(default)]
    client_ip: ClientIp,
    /// Shared-data slots for budget balances.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 100_000), range(min = 1, max = 10_000_000)))]
    #[serde(default)]
    max_keys: Option<u32>,
    /// Clients (the connection's address) shown every provider and its reason when a model has
    /// none available; others get the error without provider names.
    #[cfg_attr(feature = "schema", schemars(extend("default" = []), inner(pattern(crate::schema::CIDR))))]
    #[serde(default)]
    pub(crate) trusted_cidrs: Vec<String>,
    /// Also trust an address Envoy took from `x-forwarded-for`: only safe behind a proxy that
    /// overwrites the header.
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    #[serde(default)]
    pub(crate) trust_x_forwarded_for: bool,
}

/// One provider of a model: the provider (an index into [`LlmConfig::providers`]) and the name
/// the provider knows the model by (`None`: the name the client used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub provider: usize,
    pub model: Option<String>,
}

/// A model and its providers, in failover order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRoute {
    pub name: String,
    pub targets: Vec<Target>,
}

/// A validated token budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub name: String,
    pub key: Vec<KeyPart>,
    pub rate: TokenRate,
    /// The models it applies to (`None`: all).
    pub models: Option<Vec<String>>,
}

impl Budget {
    /// True when the budget applies to requests for `model`.
    pub fn applies_to(&self, model: &str) -> bool {
        self.models.as_ref().map_or(true, |m| m.iter().any(|x| x == model))
    }

    /// The key of `req` in this budget: parts joined by 0x1F, as bytes.
    pub fn key(&self, req: &mut dyn RequestView) -> Vec<u8> {
        crate::ratelimit::join_key(&self.key, req)
    }

    /// Where the balance of `key` may live in a table of `max_keys` slots ([`crate::slots`]):
    /// keys that meet in a slot never spend each other's balance.
    pub fn place(&self, secret: &Secret, key: &[u8], max_keys: u32) -> Place {
        Place::of(secret, self.name.as_bytes(), key, 0, max_keys)
    }
}

/// The validated `llm` section.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Request paths (without the query) the stage routes; others pass untouched.
    pub paths: Vec<String>,
    /// The providers as upstreams of the health machinery: active checks (optional), passive
    /// ejection, pauses asked by 429s; each model lists its own failover order.
    pub providers: HealthConfig,
    pub models: Vec<ModelRoute>,
    /// The most request body buffered to find the model.
    pub max_body_bytes: usize,
    /// How long a 429 without any usable header pauses a provider.
    pub rate_limited_default_ns: u64,
    /// The longest pause a 429 may ask for.
    pub rate_limited_max_ns: u64,
    /// How long a provider that failed is tried after the model's other providers (0: off).
    pub demote_failed_ns: u64,
    /// The reservation of a request without a token cap.
    pub reserve_tokens: u64,
    /// Ask streamed requests for the final usage chunk (`stream_options.include_usage`).
    pub stream_usage: bool,
    pub budgets: Vec<Budget>,
    pub client_ip: ClientIp,
    /// Shared-data slots for budget balances.
    pub max_keys: u32,
}

impl LlmConfig {
    /// Parses and validates.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        crate::config::parse_json::<LlmJson>(bytes)?.validate()
    }

    /// True when the stage routes this request path (the query is ignored).
    pub fn claims(&self, path: &[u8]) -> bool {
        let path = path.split(|b| *b == b'?').next().unwrap_or_default();
        self.paths.iter().any(|p| p.as_bytes() == path)
    }

    /// The route of model `name`.
    pub fn model(&self, name: &str) -> Option<&ModelRoute> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The configured model names, in order.
    pub fn model_names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }

    /// The cluster of provider `i`.
    pub fn cluster(&self, i: usize) -> &str {
        self.providers.upstreams.get(i).map_or("", |u| u.cluster.as_str())
    }

    /// The request headers the budgets' keys read.
    pub fn header_names(&self) -> Vec<&str> {
        let mut out: Vec<&str> =
            self.budgets.iter().flat_map(|b| b.key.iter().filter_map(KeyPart::header_name)).collect();
        if self.client_ip.trusted_hops > 0 && self.budgets.iter().any(|b| b.key.contains(&KeyPart::ClientIp)) {
            out.push(self.client_ip.header.as_str());
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Passive detection defaults for providers: overload answers (529) count like 5xx.
pub fn default_passive() -> Passive {
    Passive { consecutive_failures: 3, ejection_ns: 30 * S, statuses: vec![500, 502, 503, 504, 529], slow: None }
}

fn target(v: &Value, field: &str, providers: &[Upstream]) -> Result<Target, ConfigError> {
    let fix = "write a provider's cluster (\"openai\") or {\"cluster\": \"azure\", \"model\": \"gpt-4o-eu\"}";
    let (cluster, model) = match v {
        Value::String(c) => (c.as_str(), None),
        Value::Object(o) => {
            if let Some(k) = o.keys().find(|k| *k != "cluster" && *k != "model") {
                return Err(ConfigError::new(format!("{field}.{k}"), "is not a field of a model's provider", fix));
            }
            // A missing `cluster` is named by the object that lacks it: the error names a field
            // the configuration has.
            let cluster = match o.get("cluster") {
                None => return Err(ConfigError::new(field, "has no `cluster`", fix)),
                Some(c) => {
                    c.as_str().ok_or_else(|| ConfigError::new(format!("{field}.cluster"), "is not a string", fix))?
                }
            };
            let model = match o.get("model") {
                None => None,
                Some(Value::String(m)) if !m.is_empty() && m.len() <= super::body::MAX_MODEL_LEN => Some(m.clone()),
                Some(_) => {
                    return Err(ConfigError::new(
                        format!("{field}.model"),
                        "is not a model name",
                        "write the name this provider knows the model by, e.g. \"gpt-4o-eu\"",
                    ))
                }
            };
            (cluster, model)
        }
        _ => return Err(ConfigError::new(field, "is neither a cluster name nor an object", fix)),
    };
    let provider = providers.iter().position(|u| u.cluster == cluster).ok_or_else(|| {
        ConfigError::new(field, format!("{cluster:?} is not in providers"), "list the cluster in providers first")
    })?;
    Ok(Target { provider, model })
}

impl LlmJson {
    /// Checks every field.
    pub fn validate(self) -> Result<LlmConfig, ConfigError> {
        let paths = match self.paths {
            None => DEFAULT_PATHS.iter().map(|p| p.to_string()).collect(),
            Some(p) if p.is_empty() => {
                return Err(ConfigError::new(
                    "paths",
                    "is empty",
                    "list the API paths to route, e.g. \"/v1/chat/completions\"",
                ))
            }
            Some(p) => p,
        };
        for (i, p) in paths.iter().enumerate() {
            if !p.starts_with('/') || p.contains('?') {
                return Err(ConfigError::new(
                    format!("paths[{i}]"),
                    format!("{p:?} is not a path"),
                    "write a path without query, such as \"/v1/chat/completions\"",
                ));
            }
        }
        if self.providers.is_empty() {
            return Err(ConfigError::new(
                "providers",
                "is empty",
                "list the provider clusters, e.g. [{\"cluster\": \"openai\"}]",
            ));
        }
        let mut upstreams: Vec<Upstream> = Vec::new();
        for (i, p) in self.providers.into_iter().enumerate() {
            let at = |f: &str| format!("providers[{i}].{f}");
            cluster_name(&at("cluster"), &p.cluster)?;
            if upstreams.iter().any(|u| u.cluster == p.cluster) {
                return Err(ConfigError::new(
                    at("cluster"),
                    format!("{:?} is listed twice", p.cluster),
                    "list every provider once",
                ));
            }
            let health_check =
                p.health_check.map(|h| validate_check(&at("health_check"), &p.cluster, h)).transpose()?;
            upstreams.push(Upstream { cluster: p.cluster, weight: 1, health_check });
        }
        if self.models.is_empty() {
            return Err(ConfigError::new(
                "models",
                "is empty",
                "list the models clients may ask for, e.g. [{\"name\": \"gpt-4o\", \"providers\": [\"openai\"]}]",
            ));
        }
        let mut models: Vec<ModelRoute> = Vec::new();
        for (i, m) in self.models.into_iter().enumerate() {
            let at = |f: &str| format!("models[{i}].{f}");
            if m.name.is_empty() || m.name.len() > super::body::MAX_MODEL_LEN {
                return Err(ConfigError::new(at("name"), "is empty or too long", "write the model name clients send"));
            }
            if models.iter().any(|x| x.name == m.name) {
                return Err(ConfigError::new(
                    at("name"),
                    format!("{:?} is listed twice", m.name),
                    "list every model once",
                ));
            }
            if m.providers.is_empty() {
                return Err(ConfigError::new(at("providers"), "is empty", "list at least one provider cluster"));
            }
            let mut targets: Vec<Target> = Vec::new();
            for (j, v) in m.providers.iter().enumerate() {
                let t = target(v, &at(&format!("providers[{j}]")), &upstreams)?;
                if targets.iter().any(|x| x.provider == t.provider) {
                    return Err(ConfigError::new(
                        at(&format!("providers[{j}]")),
                        "names a provider already listed for this model",
                        "list each provider once per model",
                    ));
                }
                targets.push(t);
            }
            models.push(ModelRoute { name: m.name, targets });
        }
        let max_body = self.max_body_bytes.unwrap_or(1 << 20);
        if !(1024..=(64 << 20)).contains(&max_body) {
            return Err(ConfigError::new(
                "max_body_bytes",
                format!("{max_body} is out of range"),
                "use 1024 to 67108864 (default 1048576); Envoy's own buffer limit must be at least as large",
            ));
        }
        let passive = validate_passive("passive", Some(self.passive.unwrap_or_default()), default_passive())?;
        let rl = self.rate_limited.unwrap_or_default();
        let rate_limited_default_ns = duration("rate_limited.default", rl.default.as_deref(), 10 * S, true)?;
        let rate_limited_max_ns = duration("rate_limited.max", rl.max.as_deref(), 300 * S, false)?;
        let demote_failed_ns = duration("demote_failed", self.demote_failed.as_deref(), 10 * S, true)?;
        if self.reserve_tokens.is_some_and(|r| r > 1_000_000_000_000) {
            return Err(ConfigError::new(
                "reserve_tokens",
                "is over 1000000000000",
                "reserve what one request may cost (a budget's size caps it anyway)",
            ));
        }
        if rate_limited_default_ns > rate_limited_max_ns {
            return Err(ConfigError::new(
                "rate_limited.default",
                "is longer than rate_limited.max",
                "make the default pause at most the cap",
            ));
        }
        self.client_ip.check()?;
        let max_keys = self.max_keys.unwrap_or(100_000);
        if !(1..=10_000_000).contains(&max_keys) {
            return Err(ConfigError::new(
                "max_keys",
                format!("{max_keys} is out of range"),
                "use 1 to 10000000 (default 100000)",
            ));
        }
        let mut budgets: Vec<Budget> = Vec::new();
        for (i, b) in self.budgets.into_iter().enumerate() {
            let at = |f: &str| format!("budgets[{i}].{f}");
            if b.name.is_empty() || !b.name.bytes().all(|c| (b' '..=b'~').contains(&c)) {
                return Err(ConfigError::new(
                    at("name"),
                    "is empty or not printable ASCII",
                    "name the budget, e.g. \"per-key\"",
                ));
            }
            if budgets.iter().any(|x| x.name == b.name) {
                return Err(ConfigError::new(
                    at("name"),
                    format!("{:?} is used twice", b.name),
                    "give every budget its own name",
                ));
            }
            if !(1..=1_000_000_000_000_000).contains(&b.tokens) {
                return Err(ConfigError::new(
                    at("tokens"),
                    format!("{} is out of range", b.tokens),
                    "use 1 to 10^15 tokens per period",
                ));
            }
            let period_ns = duration(&at("per"), Some(&b.per), 0, false)?;
            let key =
                match b.key {
                    None => vec![KeyPart::ClientIp],
                    Some(parts) if parts.is_empty() => return Err(ConfigError::new(
                        at("key"),
                        "is empty",
                        "list at least one part: \"client_ip\", {\"header\": \"x-api-key\"} or {\"constant\": \"all\"}",
                    )),
                    Some(parts) => parts
                        .iter()
                        .enumerate()
                        .map(|(j, p)| crate::ratelimit::key_part(p, &at(&format!("key[{j}]"))))
                        .collect::<Result<_, _>>()?,
                };
            if let Some(list) = &b.models {
                if let Some((j, m)) = list.iter().enumerate().find(|(_, m)| !models.iter().any(|x| &x.name == *m)) {
                    return Err(ConfigError::new(
                        at(&format!("models[{j}]")),
                        format!("{m:?} is not in models"),
                        "name only models listed in models",
                    ));
                }
            }
            budgets.push(Budget {
                name: b.name,
                key,
                rate: TokenRate { tokens: b.tokens, period_ns },
                models: b.models,
            });
        }
        let providers = HealthConfig {
            upstreams,
            strategy: Strategy::Failover,
            // Unused: the stage routes through filter state (see the stage's documentation).
            route_header: String::new(),
            passive,
            when_none_healthy: NoneHealthy::FailFast,
            status_path: None,
            trust: Trust {
                cidrs: crate::config::cidrs("trusted_cidrs", &self.trusted_cidrs)?,
                forwarded: self.trust_x_forwarded_for,
            },
            status: 503,
            grpc_status: 14,
            routes: Vec::new(),
        };
        Ok(LlmConfig {
            paths,
            providers,
            models,
            max_body_bytes: usize::try_from(max_body).unwrap_or(1 << 20),
            rate_limited_default_ns,
            rate_limited_max_ns,
            demote_failed_ns,
            reserve_tokens: self.reserve_tokens.unwrap_or(1000),
            stream_usage: self.stream_usage.unwrap_or(true),
            budgets,
            client_ip: self.client_ip,
            max_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"{
        "providers": [{"cluster": "openai"}, {"cluster": "azure", "health_check": {"path": "/health", "interval": "5s"}}],
        "models": [
            {"name": "gpt-4o", "providers": ["openai", {"cluster": "azure", "model": "gpt-4o-eu"}]},
            {"name": "text-embedding-3-small", "providers": ["openai"]}],
        "budgets": [{"name": "per-key", "key": [{"header": "x-api-key"}], "tokens": 100000, "per": "1h"}],
        "rate_limited": {"default": "5s", "max": "2m"}
    }"#;

    #[test]
    fn the_documented_example_is_accepted() {
        let c = LlmConfig::from_json(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(c.paths, DEFAULT_PATHS);
        assert!(c.claims(b"/v1/chat/completions?x=1") && !c.claims(b"/v1/models"));
        let m = c.model("gpt-4o").unwrap();
        assert_eq!(
            m.targets,
            [Target { provider: 0, model: None }, Target { provider: 1, model: Some("gpt-4o-eu".into()) }]
        );
        assert_eq!(c.cluster(1), "azure");
        assert_eq!(c.providers.passive.as_ref().unwrap().statuses, [500, 502, 503, 504, 529]);
        assert_eq!(c.providers.upstreams[1].health_check.as_ref().unwrap().authority, "azure");
        assert_eq!((c.rate_limited_default_ns, c.rate_limited_max_ns), (5 * S, 120 * S));
        assert_eq!(c.budgets[0].rate, TokenRate { tokens: 100_000, period_ns: 3600 * S });
        assert_eq!(c.header_names(), ["x-api-key"]);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert!(c.stream_usage);
        assert_eq!(c.demote_failed_ns, 10 * S);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let base = |extra: &str| {
            format!(r#"{{"providers": [{{"cluster": "a"}}], "models": [{{"name": "m", "providers": ["a"]}}]{extra}}}"#)
        };
        for (json, field) in [
            (r#"{"providers": [], "models": []}"#.to_string(), "providers"),
            (r#"{"providers": [{"cluster": "a"}], "models": []}"#.to_string(), "models"),
            (r#"{"providers": [{"cluster": "a"}], "models": [{"name": "m", "providers": ["b"]}]}"#.to_string(), "models[0].providers[0]"),
            (
                r#"{"providers": [{"cluster": "a"}], "models": [{"name": "m", "providers": [{"cluster": "a", "modl": "x"}]}]}"#.to_string(),
                "models[0].providers[0].modl",
            ),
            (
                r#"{"providers": [{"cluster": "a"}], "models": [{"name": "m", "providers": ["a", "a"]}]}"#.to_string(),
                "models[0].providers[1]",
            ),
            (
                r#"{"providers": [{"cluster": "a"}], "models": [{"name": "m", "providers": [{"model": "x"}]}]}"#.to_string(),
                "models[0].providers[0]",
            ),
            (
                r#"{"providers": [{"cluster": "a"}], "models": [{"name": "m", "providers": [{"cluster": 1}]}]}"#.to_string(),
                "models[0].providers[0].cluster",
            ),
            (base(r#", "paths": ["v1/chat"]"#), "paths[0]"),
            (base(r#", "max_body_bytes": 10"#), "max_body_bytes"),
            (base(r#", "rate_limited": {"max": "0s"}"#), "rate_limited.max"),
            (base(r#", "rate_limited": {"default": "10m"}"#), "rate_limited.default"),
            (base(r#", "passive": {"statuses": [999]}"#), "passive.statuses"),
            (base(r#", "budgets": [{"name": "b", "tokens": 0, "per": "1h"}]"#), "budgets[0].tokens"),
            (base(r#", "budgets": [{"name": "b", "tokens": 5, "per": "soon"}]"#), "budgets[0].per"),
            (base(r#", "budgets": [{"name": "b", "tokens": 5, "per": "1h", "key": ["nope"]}]"#), "budgets[0].key[0]"),
            (base(r#", "budgets": [{"name": "b", "tokens": 5, "per": "1h", "models": ["x"]}]"#), "budgets[0].models[0]"),
            (base(r#", "providerz": 1"#), "."),
        ] {
            let e = LlmConfig::from_json(json.as_bytes()).unwrap_err();
            assert!(e.field == field || (field == "." && e.problem.contains("providerz")), "{json}: {e}");
        }
    }
}
