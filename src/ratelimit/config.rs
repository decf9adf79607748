//! The rate limiter's plugin configuration: JSON shape, validation, and rule matching.

use serde::Deserialize;
use serde_json::Value;

use super::algorithm::{Algorithm, Decision, Limit};
use super::global::{Global, ServiceJson, Target};
use super::key::{KeyPart, RequestView};
use crate::config::ConfigError;
use crate::hash::Secret;
use crate::peer::Prefixes;
use crate::slots::Place;

/// Which matching rules apply to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Apply {
    /// The first rule whose match fits (rules are tried in order).
    #[default]
    First,
    /// Every rule whose match fits; the request is refused if any of them refuses.
    All,
}

/// Enforce limits, or only count what would have been refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refuse requests over a limit.
    #[default]
    Enforce,
    /// Count and log what would be refused; refuse nothing.
    Shadow,
}

/// What to do when the shared-data compare-and-swap keeps losing races (retries exhausted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Contention {
    /// Admit the request (availability first); counted in `…contention`.
    #[default]
    Allow,
    /// Refuse the request (the limit first); counted in `…contention`.
    Deny,
}

impl Contention {
    /// The decision to use for a rule whose bucket could not be updated.
    pub fn decision(self, limit: &Limit) -> Decision {
        match self {
            Contention::Allow => Decision::Allowed { remaining: 0, reset_ns: limit.period_ns },
            Contention::Deny => Decision::Limited { retry_after_ns: limit.interval_ns() },
        }
    }
}

/// Where the client address (the `client_ip` key part) comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ClientIp {
    /// Proxies in front of Envoy that append to `header`. `0`: the peer address. `n`: the `n`-th
    /// entry from the right of `header`, the one your outermost trusted proxy appended; entries to
    /// its left are client-controlled and ignored. A list too short or an unparsable entry falls
    /// back to the peer address.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 0), range(max = 64)))]
    pub trusted_hops: u32,
    /// The header those proxies append to.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "x-forwarded-for"), pattern(crate::schema::HEADER_NAME)))]
    pub header: String,
    /// Never key on an address Envoy took from `x-forwarded-for` (port 0): such requests share one
    /// bucket, so a spoofed header never buys a fresh one even on a misconfigured listener.
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    pub require_peer: bool,
    /// IPv4 clients are keyed by this prefix of their address (`32`: each address apart; `24`:
    /// a /24 shares one key).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 32), range(max = 32)))]
    pub ipv4_prefix: u8,
    /// IPv6 clients are keyed by this prefix of their address. One host usually holds a whole
    /// /64, so the default `64` keys it once, not once per address; `128` keys every address apart.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 64), range(max = 128)))]
    pub ipv6_prefix: u8,
}

impl Default for ClientIp {
    fn default() -> Self {
        ClientIp {
            trusted_hops: 0,
            header: "x-forwarded-for".into(),
            require_peer: false,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }
}

impl ClientIp {
    /// The prefixes addresses are keyed by.
    pub fn prefixes(&self) -> Prefixes {
        Prefixes { v4: self.ipv4_prefix, v6: self.ipv6_prefix }
    }

    /// Checks every field (under `client_ip.`).
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.trusted_hops > 64 {
            return Err(err(
                "client_ip.trusted_hops".into(),
                "is larger than 64",
                "count the proxies in front of Envoy (0 = use the peer address)",
            ));
        }
        if self.ipv4_prefix > 32 {
            return Err(err(
                "client_ip.ipv4_prefix".into(),
                format!("{} is longer than an IPv4 address", self.ipv4_prefix),
                "use 0 to 32 (default 32: each address keyed apart)",
            ));
        }
        if self.ipv6_prefix > 128 {
            return Err(err(
                "client_ip.ipv6_prefix".into(),
                format!("{} is longer than an IPv6 address", self.ipv6_prefix),
                "use 0 to 128 (default 64: one key per /64, what one host usually holds)",
            ));
        }
        crate::config::header_name("client_ip.header", &self.header)
    }
}

/// A rule's limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct LimitJson {
    /// Requests per period, sustained (a fresh key may spend them all at once).
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    requests: u64,
    /// The period: `250ms`, `1s`, `1m`, `1h`, `1.5s`.
    #[cfg_attr(feature = "schema", schemars(pattern(crate::schema::DURATION)))]
    per: String,
    /// Bucket size instead of `requests` (token bucket only: refused with `sliding_window` by the
    /// filter only).
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    #[serde(default)]
    burst: Option<u64>,
}

/// A condition on a request header: present (the default), absent (`"present": false`) or equal
/// to `exact`. `present` and `exact` together are refused by the filter only.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct HeaderMatchJson {
    /// The header (lowercase).
    #[cfg_attr(feature = "schema", schemars(pattern(crate::schema::HEADER_NAME)))]
    name: String,
    /// `false`: the header must be absent.
    #[serde(default)]
    present: Option<bool>,
    /// The value the header must have.
    #[serde(default)]
    exact: Option<String>,
}

/// Which requests a rule applies to: every given condition must hold (`{}` matches everything).
/// At most one of `path_prefix`, `path_exact`, `path_regex`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("not" = {"anyOf": [
    {"required": ["path_prefix", "path_exact"]},
    {"required": ["path_prefix", "path_regex"]},
    {"required": ["path_exact", "path_regex"]}]})))]
pub(crate) struct MatchJson {
    /// The path (without its query string) starts with this.
    #[serde(default)]
    path_prefix: Option<String>,
    /// The path (without its query string) is exactly this.
    #[serde(default)]
    path_exact: Option<String>,
    /// The path (without its query string) matches this regular expression (Rust regex syntax,
    /// compiled by the filter only).
    #[serde(default)]
    path_regex: Option<String>,
    /// The request method, uppercase (`"GET"`).
    #[cfg_attr(feature = "schema", schemars(pattern(r"^[A-Z]+$")))]
    #[serde(default)]
    method: Option<String>,
    /// Header conditions, all of which must hold.
    #[cfg_attr(feature = "schema", schemars(extend("default" = [])))]
    #[serde(default)]
    headers: Vec<HeaderMatchJson>,
}

/// One part of a bucket key.
#[cfg(feature = "schema")]
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum KeyPartJson {
    /// The client address (see `client_ip`).
    ClientIp,
    /// The request path.
    Path,
    /// The request method.
    Method,
    /// A request header's value (lowercase name). A missing header puts the request in the
    /// rule's shared *missing* bucket: leaving the header out never escapes the limit.
    Header(#[schemars(pattern(crate::schema::HEADER_NAME))] String),
    /// A fixed text: one bucket for all requests of the rule.
    Constant(String),
}

/// One limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct RuleJson {
    /// Names the rule in headers, logs and metrics: printable ASCII, unique (uniqueness is
    /// checked by the filter only).
    #[cfg_attr(feature = "schema", schemars(pattern(r"^[ -~]+$")))]
    name: String,
    /// Which requests the rule applies to (default: every request).
    #[cfg_attr(feature = "schema", schemars(extend("default" = {})))]
    #[serde(rename = "match", default)]
    matcher: MatchJson,
    /// Parts joined into the bucket key (default `["client_ip"]`).
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<Vec<KeyPartJson>>", extend("default" = ["client_ip"]), length(min = 1))
    )]
    #[serde(default)]
    key: Option<Vec<Value>>,
    /// `{"requests": N, "per": "<duration>"}`: N per period sustained; `burst` sets the bucket
    /// size instead (token bucket only).
    limit: LimitJson,
    /// `token_bucket` (GCRA: one timestamp per key) or `sliding_window` (this and the previous
    /// fixed window, the previous weighted by overlap).
    #[cfg_attr(feature = "schema", schemars(extend("default" = "token_bucket")))]
    #[serde(default)]
    algorithm: Algorithm,
    /// Count in a rate limit service shared by a fleet of Envoys instead of in this Envoy
    /// (requires `service`).
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    #[serde(default)]
    global: bool,
    /// The rate limit service of a global rule.
    #[serde(default)]
    service: Option<ServiceJson>,
}

/// # rate_limiter
///
/// The rate limiter's plugin configuration (also the `rate_limiter` section of
/// upstream_guard.wasm's). Keyed limits, exact across every worker of one Envoy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RateLimitJson {
    /// The limits, tried in order; a request that matches no rule passes unlimited.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    rules: Vec<RuleJson>,
    /// `first`: the first matching rule applies; `all`: every matching rule, refused if any
    /// refuses (tokens taken by the earlier rules stay taken).
    #[cfg_attr(feature = "schema", schemars(extend("default" = "first")))]
    #[serde(default)]
    apply: Apply,
    /// Where the client address comes from.
    #[cfg_attr(
        feature = "schema",
        schemars(extend("default" = {"trusted_hops": 0, "header": "x-forwarded-for", "require_peer": false, "ipv4_prefix": 32, "ipv6_prefix": 64}))
    )]
    #[serde(default)]
    client_ip: ClientIp,
    /// `enforce`, or `shadow`: count and log what would be refused, refuse nothing.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "enforce")))]
    #[serde(default)]
    mode: Mode,
    /// HTTP status of a refusal (400–599).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 429), range(min = 400, max = 599)))]
    #[serde(default = "default_status")]
    status: u16,
    /// Size of the shared-data table: keys are hashed into this many slots (1–10000000).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 100000), range(min = 1, max = 10000000)))]
    #[serde(default = "default_max_keys")]
    max_keys: u32,
    /// When `cas_retries` compare-and-swap attempts all lose races: `allow` or `deny` the
    /// request; counted either way.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "allow")))]
    #[serde(default)]
    on_contention: Contention,
    /// Attempts per bucket update (1–1000).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 10), range(min = 1, max = 1000)))]
    #[serde(default = "default_cas_retries")]
    cas_retries: u32,
    /// Add `RateLimit` / `RateLimit-Policy` (of the tightest rule) to admitted responses.
    #[cfg_attr(feature = "schema", schemars(extend("default" = true)))]
    #[serde(default = "default_true")]
    response_headers: bool,
    /// Also write `decision=allowed` lines to the access log for requests a local rule admitted
    /// (a filter-state write per admitted request). By default only what says something is
    /// written: refusals, shadow refusals, and the answers of global rules.
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    #[serde(default)]
    log_allowed: bool,
    /// gRPC status of a refusal of a gRPC request (0–16; 8 is RESOURCE_EXHAUSTED, which gRPC
    /// clients do not retry at once the way they retry UNAVAILABLE).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 8), range(max = 16)))]
    #[serde(default)]
    grpc_status: Option<u32>,
}

fn default_status() -> u16 {
    429
}
fn default_max_keys() -> u32 {
    100_000
}
fn default_cas_retries() -> u32 {
    10
}
fn default_true() -> bool {
    true
}

/// How a request's path is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(regex_lite::Regex),
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderMatch {
    Present(String),
    Absent(String),
    Equals(String, String),
}

/// A rule's match: every given condition must hold (an empty match matches everything).
#[derive(Debug, Clone, Default)]
pub struct RuleMatch {
    pub path: Option<PathMatch>,
    pub method: Option<String>,
    pub headers: Vec<HeaderMatch>,
}

impl RuleMatch {
    /// True when `req` meets every condition. Paths are matched without the query string, as
    /// bytes; a regular expression sees a path that is not UTF-8 with each bad byte replaced by
    /// U+FFFD, so the readable part still matches (a stray byte never escapes a rule).
    pub fn matches(&self, req: &mut dyn RequestView) -> bool {
        if let Some(m) = &self.method {
            if req.method() != Some(m.as_bytes()) {
                return false;
            }
        }
        if let Some(p) = &self.path {
            let full = req.path().unwrap_or_default();
            let path = full.split(|b| *b == b'?').next().unwrap_or_default();
            let ok = match p {
                PathMatch::Prefix(pre) => path.starts_with(pre.as_bytes()),
                PathMatch::Exact(e) => path == e.as_bytes(),
                PathMatch::Regex(r) => r.is_match(&String::from_utf8_lossy(path)),
            };
            if !ok {
                return false;
            }
        }
        self.headers.iter().all(|h| match h {
            HeaderMatch::Present(n) => req.header(n).is_some(),
            HeaderMatch::Absent(n) => req.header(n).is_none(),
            HeaderMatch::Equals(n, v) => req.header(n) == Some(v.as_bytes()),
        })
    }

    /// The headers the match reads (for the configure-time read plan).
    pub fn header_names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .headers
            .iter()
            .map(|h| match h {
                HeaderMatch::Present(n) | HeaderMatch::Absent(n) | HeaderMatch::Equals(n, _) => n.as_str(),
            })
            .collect();
        if self.path.is_some() {
            out.push(":path");
        }
        if self.method.is_some() {
            out.push(":method");
        }
        out
    }
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub matcher: RuleMatch,
    pub key: Vec<KeyPart>,
    pub limit: Limit,
    pub algorithm: Algorithm,
    /// `RateLimit-Policy` value, computed once.
    pub policy: String,
    /// The name as a structured-field string, for the `RateLimit` field.
    pub quoted: String,
    /// This rule's share of the slot table: slots `slots.0 .. slots.0 + slots.1`. Rules never
    /// share a slot: two rules in one slot would read each other's state (a sliding window's
    /// counts as a fresh token bucket, another period's window as a new one) and reset it.
    pub slots: (u32, u32),
    /// Set for a global rule: counted by a rate limit service for the whole fleet; `limit` and
    /// `algorithm` then describe the local bucket it falls back to.
    pub global: Option<Global>,
}

impl Rule {
    /// The bucket key for `req`: parts joined by 0x1F, as bytes.
    pub fn key(&self, req: &mut dyn RequestView) -> Vec<u8> {
        super::key::join_key(&self.key, req)
    }

    /// Where this rule's bucket for `key` may live: slots within the rule's own share of the
    /// table, from the keyed hash, owned by one key at a time ([`crate::slots`]). Keys of two
    /// rules never meet; keys of one rule never read each other's bucket.
    pub fn place(&self, secret: &Secret, key: &[u8]) -> Place {
        Place::of(secret, self.name.as_bytes(), key, self.slots.0, self.slots.1)
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub rules: Vec<Rule>,
    pub apply: Apply,
    pub client_ip: ClientIp,
    pub mode: Mode,
    pub status: u16,
    pub max_keys: u32,
    pub on_contention: Contention,
    pub cas_retries: u32,
    pub response_headers: bool,
    /// Write `decision=allowed` for requests a local rule admitted too.
    pub log_allowed: bool,
    /// gRPC status of a refusal of a gRPC request (default 8, RESOURCE_EXHAUSTED: not retried
    /// by gRPC clients the way UNAVAILABLE is).
    pub grpc_status: u32,
    /// The rate limit services global rules call (see [`Global::target`]).
    pub targets: Vec<Target>,
}

impl RateLimitConfig {
    /// Parses and validates.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        crate::config::parse_json::<RateLimitJson>(bytes)?.validate()
    }

    /// The indexes of the rules that apply to `req`, in order (the first only, under
    /// `apply: first`).
    pub fn matching(&self, req: &mut dyn RequestView) -> Vec<usize> {
        let take = if self.apply == Apply::First { 1 } else { usize::MAX };
        let mut out = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            if out.len() >= take {
                break;
            }
            if r.matcher.matches(req) {
                out.push(i);
            }
        }
        out
    }

    /// True when some rule is global (the filter then handles gRPC answers).
    pub fn any_global(&self) -> bool {
        self.rules.iter().any(|r| r.global.is_some())
    }

    /// Every header any rule reads on the request path (for the configure-time read plan).
    pub fn header_names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.rules {
            out.extend(r.matcher.header_names());
            out.extend(r.key.iter().filter_map(KeyPart::header_name));
        }
        if self.client_ip.trusted_hops > 0 && self.rules.iter().any(|r| r.key.contains(&KeyPart::ClientIp)) {
            out.push(self.client_ip.header.as_str());
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn err(field: String, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::new(field, problem, fix)
}

impl RateLimitJson {
    /// Checks every field.
    pub fn validate(self) -> Result<RateLimitConfig, ConfigError> {
        if self.rules.is_empty() {
            return Err(err(
                "rules".into(),
                "is empty",
                "add at least one rule, e.g. {\"name\": \"all\", \"limit\": {\"requests\": 100, \"per\": \"1s\"}}",
            ));
        }
        crate::config::refusal_status("status", self.status, "use 429 (the default) or 503")?;
        let grpc_status = crate::config::grpc_status("grpc_status", self.grpc_status.unwrap_or(8))?;
        if !(1..=10_000_000).contains(&self.max_keys) {
            return Err(err(
                "max_keys".into(),
                format!("{} is out of range", self.max_keys),
                "use 1 to 10000000 (default 100000)",
            ));
        }
        if !(1..=1000).contains(&self.cas_retries) {
            return Err(err(
                "cas_retries".into(),
                format!("{} is out of range", self.cas_retries),
                "use 1 to 1000 (default 10)",
            ));
        }
        self.client_ip.check()?;
        let share = self.max_keys / self.rules.len() as u32;
        if share == 0 {
            return Err(err(
                "max_keys".into(),
                format!("{} is smaller than the number of rules ({})", self.max_keys, self.rules.len()),
                "give every rule at least one slot: max_keys is split evenly between the rules",
            ));
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        let mut targets = Vec::new();
        for (i, r) in self.rules.into_iter().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            if r.name.is_empty() || !r.name.bytes().all(|b| (b' '..=b'~').contains(&b)) {
                return Err(err(
                    at("name"),
                    format!("{:?} is empty or not printable ASCII", r.name),
                    "name the rule, e.g. \"per-client\"",
                ));
            }
            if rules.iter().any(|x: &Rule| x.name == r.name) {
                return Err(err(at("name"), format!("{:?} is used twice", r.name), "give every rule its own name"));
            }
            let l = &r.limit;
            if l.requests == 0 {
                return Err(err(at("limit.requests"), "is 0", "use a positive number of requests per period"));
            }
            let max = crate::sfv::INTEGER_MAX;
            if l.requests > max || l.burst.is_some_and(|b| b > max) {
                let field = if l.requests > max { "limit.requests" } else { "limit.burst" };
                return Err(err(
                    at(field),
                    format!("is past {max}, the largest integer a RateLimit field can carry"),
                    "use at most 999999999999999 (for a larger allowance, a longer period)",
                ));
            }
            let period_ns = crate::config::duration(&at("limit.per"), Some(&l.per), 0, false)?;
            let burst = match (l.burst, r.algorithm) {
                (Some(0), _) => {
                    return Err(err(
                        at("limit.burst"),
                        "is 0",
                        "use a positive bucket size, or leave it out (= requests)",
                    ))
                }
                (Some(_), Algorithm::SlidingWindow) => {
                    return Err(err(
                        at("limit.burst"),
                        "does not apply to sliding_window",
                        "remove burst, or use \"algorithm\": \"token_bucket\"",
                    ))
                }
                (Some(b), _) => b,
                (None, _) => l.requests,
            };
            let limit = Limit { requests: l.requests, period_ns, burst };
            let matcher = validate_match(r.matcher, &at)?;
            let key = match r.key {
                None => vec![KeyPart::ClientIp],
                Some(parts) if parts.is_empty() => {
                    return Err(err(at("key"), "is empty", "list at least one part: \"client_ip\", \"path\", \"method\", {\"header\": \"x-tenant\"} or {\"constant\": \"global\"}"))
                }
                Some(parts) => parts.iter().enumerate().map(|(j, p)| key_part(p, &at(&format!("key[{j}]")))).collect::<Result<_, _>>()?,
            };
            let global = match (r.global, r.service) {
                (false, None) => None,
                (true, Some(service)) => {
                    Some(service.validate(&key, &|f| at(&format!("service.{f}")), &mut targets)?)
                }
                // The field that is there is the one named (an error must point at text the
                // operator can find).
                (true, None) => {
                    return Err(err(
                        at("global"),
                        "is true but the rule has no service section",
                        "add \"service\": {\"cluster\": \"<Envoy cluster of the rate limit service>\", \"domain\": \"<domain>\"}, or remove \"global\"",
                    ))
                }
                (false, Some(_)) => {
                    return Err(err(
                        at("service"),
                        "is set but the rule is not global",
                        "set \"global\": true to count this rule in the service, or remove \"service\"",
                    ))
                }
            };
            let policy = super::headers::policy_header(&r.name, &limit, r.algorithm);
            let quoted = super::headers::quoted(&r.name);
            let slots = (i as u32 * share, share);
            rules.push(Rule {
                name: r.name,
                matcher,
                key,
                limit,
                algorithm: r.algorithm,
                policy,
                quoted,
                slots,
                global,
            });
        }
        Ok(RateLimitConfig {
            rules,
            apply: self.apply,
            client_ip: self.client_ip,
            mode: self.mode,
            status: self.status,
            max_keys: self.max_keys,
            on_contention: self.on_contention,
            cas_retries: self.cas_retries,
            response_headers: self.response_headers,
            log_allowed: self.log_allowed,
            grpc_status,
            targets,
        })
    }
}

pub(crate) fn key_part(v: &Value, field: &str) -> Result<KeyPart, ConfigError> {
    let fix = "use \"client_ip\", \"path\", \"method\", {\"header\": \"<name>\"} or {\"constant\": \"<text>\"}";
    match v {
        Value::String(s) => match s.as_str() {
            "client_ip" => Ok(KeyPart::ClientIp),
            "path" => Ok(KeyPart::Path),
            "method" => Ok(KeyPart::Method),
            other => Err(err(field.into(), format!("unknown key part {other:?}"), fix)),
        },
        Value::Object(m) if m.len() == 1 => match m.iter().next() {
            Some((k, Value::String(name))) if k == "header" => {
                crate::config::header_name(field, name)?;
                Ok(KeyPart::Header(name.clone()))
            }
            Some((k, Value::String(c))) if k == "constant" => Ok(KeyPart::Constant(c.clone())),
            _ => Err(err(field.into(), format!("unknown key part {v}"), fix)),
        },
        _ => Err(err(field.into(), format!("unknown key part {v}"), fix)),
    }
}

pub(crate) fn validate_match(m: MatchJson, at: &dyn Fn(&str) -> String) -> Result<RuleMatch, ConfigError> {
    let given =
        [m.path_prefix.is_some(), m.path_exact.is_some(), m.path_regex.is_some()].iter().filter(|b| **b).count();
    if given > 1 {
        return Err(err(
            at("match"),
            "more than one of path_prefix, path_exact, path_regex",
            "keep one path condition per rule",
        ));
    }
    let path = if let Some(p) = m.path_prefix {
        Some(PathMatch::Prefix(p))
    } else if let Some(p) = m.path_exact {
        Some(PathMatch::Exact(p))
    } else if let Some(r) = m.path_regex {
        Some(PathMatch::Regex(regex_lite::Regex::new(&r).map_err(|e| {
            err(
                at("match.path_regex"),
                format!("{r:?} is not a valid regular expression: {e}"),
                "fix the pattern (Rust regex syntax, e.g. \"^/api/v[0-9]+/\")",
            )
        })?))
    } else {
        None
    };
    if let Some(method) = &m.method {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(err(
                at("match.method"),
                format!("{method:?} is not an HTTP method"),
                "use an uppercase method such as \"GET\"",
            ));
        }
    }
    let mut headers = Vec::new();
    for (j, h) in m.headers.into_iter().enumerate() {
        let field = at(&format!("match.headers[{j}]"));
        crate::config::header_name(&format!("{field}.name"), &h.name)?;
        headers.push(match (h.present, h.exact) {
            (None, None) | (Some(true), None) => HeaderMatch::Present(h.name),
            (Some(false), None) => HeaderMatch::Absent(h.name),
            (None, Some(v)) => HeaderMatch::Equals(h.name, v),
            (Some(_), Some(_)) => return Err(err(field, "both present and exact", "use one of them")),
        });
    }
    Ok(RuleMatch { path, method: m.method, headers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::ClientAddr;
    use crate::ratelimit::FixedRequest;

    const EXAMPLE: &[u8] =
        br#"{"rules": [{"name": "per-client", "match": {"path_prefix": "/api"}, "key": ["client_ip"],
                  "limit": {"requests": 100, "per": "1s", "burst": 20}},
                 {"name": "per-tenant", "key": [{"header": "x-tenant"}], "limit": {"requests": 1000, "per": "1m"},
                  "algorithm": "sliding_window"}],
       "client_ip": {"trusted_hops": 0}, "mode": "enforce", "status": 429, "max_keys": 100000}"#;

    fn req(path: &str, method: &str, headers: Vec<(&str, &str)>) -> FixedRequest {
        FixedRequest {
            path: Some(path.as_bytes().to_vec()),
            method: Some(method.as_bytes().to_vec()),
            headers: headers.into_iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
            client: Some(ClientAddr::Peer("10.0.0.1".parse().unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn the_documented_example_is_accepted() {
        let c = RateLimitConfig::from_json(EXAMPLE).unwrap();
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.rules[0].limit, Limit { requests: 100, period_ns: 1_000_000_000, burst: 20 });
        assert_eq!(c.rules[1].algorithm, Algorithm::SlidingWindow);
        assert_eq!(c.rules[1].key, vec![KeyPart::Header("x-tenant".into())]);
        assert_eq!(c.rules[0].policy, r#""per-client";q=20;w=1"#);
    }

    #[test]
    fn first_matching_rule_applies_by_default_and_all_on_request() {
        let c = RateLimitConfig::from_json(EXAMPLE).unwrap();
        let mut api = req("/api/x?y=1", "GET", vec![]);
        assert_eq!(c.matching(&mut api), [0]);
        let all = RateLimitConfig { apply: Apply::All, ..c };
        assert_eq!(all.matching(&mut api), [0, 1]);
        assert_eq!(all.matching(&mut req("/web", "GET", vec![])), [1]);
    }

    #[test]
    fn matches_combine_path_method_and_headers() {
        let c = RateLimitConfig::from_json(
            br#"{"rules": [{"name": "r", "match": {"path_regex": "^/v[0-9]+/", "method": "POST",
                 "headers": [{"name": "x-a"}, {"name": "x-b", "exact": "1"}, {"name": "x-c", "present": false}]},
                 "limit": {"requests": 1, "per": "1s"}}]}"#,
        )
        .unwrap();
        let m = &c.rules[0].matcher;
        assert!(m.matches(&mut req("/v2/x", "POST", vec![("x-a", ""), ("x-b", "1")])));
        assert!(!m.matches(&mut req("/v2/x", "GET", vec![("x-a", ""), ("x-b", "1")])));
        assert!(!m.matches(&mut req("/v2/x", "POST", vec![("x-a", ""), ("x-b", "2")])));
        assert!(!m.matches(&mut req("/v2/x", "POST", vec![("x-a", ""), ("x-b", "1"), ("x-c", "")])));
        assert!(!m.matches(&mut req("/x/v2/", "POST", vec![("x-a", ""), ("x-b", "1")])));
        let mut odd = req("/v2/\u{0}", "POST", vec![("x-a", ""), ("x-b", "1")]);
        odd.path = Some(b"/v2/\xff\xfe".to_vec());
        assert!(m.matches(&mut odd), "a path with bytes that are not UTF-8 still matches its readable prefix");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"rules": []}"#, "rules"),
            (r#"{"rules": [{"name": "a", "limit": {"requests": 0, "per": "1s"}}]}"#, "rules[0].limit.requests"),
            (r#"{"rules": [{"name": "a", "limit": {"requests": -5, "per": "1s"}}]}"#, "rules[0].limit.requests"),
            (
                r#"{"rules": [{"name": "a", "limit": {"requests": 9999999999999999, "per": "1s"}}]}"#,
                "rules[0].limit.requests",
            ),
            (
                r#"{"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s", "burst": 1000000000000000}}]}"#,
                "rules[0].limit.burst",
            ),
            (r#"{"rules": [{"name": "a", "limit": {"requests": 5, "per": "1 sec"}}]}"#, "rules[0].limit.per"),
            (r#"{"rules": [{"name": "a", "limit": {"requests": 5, "per": "0s"}}]}"#, "rules[0].limit.per"),
            (
                r#"{"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s", "burst": 0}}]}"#,
                "rules[0].limit.burst",
            ),
            (
                r#"{"rules": [{"name": "a", "match": {"path_regex": "("}, "limit": {"requests": 5, "per": "1s"}}]}"#,
                "rules[0].match.path_regex",
            ),
            (r#"{"rules": [{"name": "a", "key": ["ip"], "limit": {"requests": 5, "per": "1s"}}]}"#, "rules[0].key[0]"),
            (r#"{"rules": [{"name": "a", "limt": {"requests": 5, "per": "1s"}}]}"#, "rules[0]"),
            (r#"{"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s"}}], "status": 200}"#, "status"),
            (r#"{"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s"}}], "max_keys": 0}"#, "max_keys"),
            (
                r#"{"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s"}}, {"name": "a", "limit": {"requests": 5, "per": "1s"}}]}"#,
                "rules[1].name",
            ),
            (
                r#"{"rules": [{"name": "a", "algorithm": "sliding_window", "limit": {"requests": 5, "per": "1s", "burst": 2}}]}"#,
                "rules[0].limit.burst",
            ),
            (r#"{"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s"}}], "mode": "dry"}"#, "mode"),
        ];
        for (json, field) in cases {
            let e = RateLimitConfig::from_json(json.as_bytes()).unwrap_err();
            assert!(e.field.starts_with(field), "{json}: got field {:?} ({e})", e.field);
            assert!(!e.fix.is_empty());
        }
    }

    #[test]
    fn rules_never_share_a_slot() {
        let c = RateLimitConfig::from_json(
            br#"{"rules": [{"name": "a", "limit": {"requests": 1, "per": "1h"}},
                           {"name": "b", "algorithm": "sliding_window", "limit": {"requests": 1, "per": "1m"}},
                           {"name": "c", "limit": {"requests": 1, "per": "1s"}}], "max_keys": 10}"#,
        )
        .unwrap();
        assert_eq!(c.rules.iter().map(|r| r.slots).collect::<Vec<_>>(), [(0, 3), (3, 3), (6, 3)]);
        for (i, r) in c.rules.iter().enumerate() {
            for k in 0..1000u32 {
                let place = r.place(&crate::hash::Secret::new(7, 9), &k.to_le_bytes());
                for s in place.candidates() {
                    assert!((3 * i as u32..3 * i as u32 + 3).contains(&s), "rule {i} key {k}: slot {s}");
                }
            }
        }
        let e = RateLimitConfig::from_json(
            br#"{"rules": [{"name": "a", "limit": {"requests": 1, "per": "1h"}},
                           {"name": "b", "limit": {"requests": 1, "per": "1h"}}], "max_keys": 1}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "max_keys");
    }

    #[test]
    fn key_defaults_to_the_client_address() {
        let c = RateLimitConfig::from_json(br#"{"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s"}}]}"#)
            .unwrap();
        assert_eq!(c.rules[0].key, vec![KeyPart::ClientIp]);
        assert_eq!(
            c.rules[0].key(&mut req("/", "GET", vec![])),
            [10, 0, 0, 1, 32],
            "the address and its prefix length"
        );
        assert_eq!(
            (c.status, c.max_keys, c.cas_retries, c.on_contention, c.mode),
            (429, 100_000, 10, Contention::Allow, Mode::Enforce)
        );
    }
}
