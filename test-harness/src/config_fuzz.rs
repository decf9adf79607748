//! Configuration fuzzing: every field of every documented configuration, mutated.
//!
//! Envoy's promise is that a bad configuration is refused (NACKed) and says why; the filters'
//! half of it is that `on_configure` either accepts a configuration or refuses it naming the
//! field, and never traps. This module takes the README's examples, adds every field its tables
//! document that the examples leave out ([`documented_configs`]), and mutates each field in turn:
//! removed, of the wrong type, out of range, huge, with an unknown neighbour. Each mutant goes
//! through the core's parser and is loaded into the module on the deterministic host; a refusal
//! must name, in the error and in the module's log line, a field path that exists in the mutant;
//! an accepted mutant must then serve a request without trapping.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{json, Map, Value};

use crate::fuzz::Target;
use crate::host::{Host, HostError, LoadOptions};

/// A configuration to start from: the README's example of a module with every field its table
/// documents.
#[derive(Debug, Clone)]
pub struct Documented {
    pub target: Target,
    pub config: Value,
    /// The fields the README's table lists for the module, as written there.
    pub table_fields: Vec<String>,
}

/// The README section that documents each single-policy module.
fn section_title(target: Target) -> Option<&'static str> {
    match target {
        Target::Diagnostics => Some("diagnostics"),
        Target::RateLimiter => Some("rate limiter"),
        Target::CircuitBreaker => Some("circuit breaker"),
        Target::HealthRouter => Some("health router"),
        Target::UpstreamGuard => None,
    }
}

/// The text of `## title` up to the next `## `.
fn section<'a>(readme: &'a str, title: &str) -> Option<&'a str> {
    let start = readme.find(&format!("\n## {title}\n"))? + 1;
    let rest = &readme[start + 3..];
    let end = rest.find("\n## ").map_or(rest.len(), |e| e + 1);
    Some(&rest[..end])
}

/// The first ```json block of a section.
fn first_json(text: &str) -> Option<Value> {
    let start = text.find("```json\n")? + "```json\n".len();
    let end = start + text[start..].find("```")?;
    serde_json::from_str(&text[start..end]).ok()
}

/// Field names in the first column of the section's `| field | … |` tables, with names written
/// relative to the one before them (`health_check.interval`, `timeout`) made whole.
fn table_fields(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with("| field |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
        }
        if !in_table || !line.starts_with("| `") {
            continue;
        }
        let cell = line.split('|').nth(1).unwrap_or_default();
        let mut prefix = String::new();
        for (i, name) in cell.split('`').skip(1).step_by(2).enumerate() {
            // `a.b`, `.c` and `a.b`, `c` both name `a.c`.
            let whole = match name.strip_prefix('.') {
                Some(rest) if i > 0 => format!("{prefix}{rest}"),
                _ if i > 0 && !name.contains('.') => format!("{prefix}{name}"),
                _ => name.to_string(),
            };
            if let Some(dot) = whole.rfind('.') {
                prefix = whole[..=dot].to_string();
            }
            out.push(whole);
        }
    }
    out
}

/// Fields the README's tables document (or the parsers accept) that its examples leave out:
/// (path, value) written into the example.
fn extras(target: Target) -> Vec<(&'static str, Value)> {
    match target {
        Target::Diagnostics => vec![
            ("trust_x_forwarded_for", json!(false)),
            ("docs_url", json!("https://docs.example.com/upstream-guard/operations/troubleshooting.html")),
        ],
        Target::RateLimiter => vec![
            ("apply", json!("first")),
            ("on_contention", json!("allow")),
            ("cas_retries", json!(10)),
            ("response_headers", json!(true)),
            ("log_allowed", json!(false)),
            ("grpc_status", json!(8)),
            ("client_ip.header", json!("x-forwarded-for")),
            ("client_ip.require_peer", json!(false)),
            (
                "rules[2]",
                json!({"name": "by-path", "match": {"path_regex": "^/v[0-9]+/", "method": "POST",
                       "headers": [{"name": "x-a"}, {"name": "x-b", "present": false}, {"name": "x-c", "exact": "1"}]},
                       "key": ["path", "method", {"constant": "global"}], "limit": {"requests": 5, "per": "1.5s"}}),
            ),
            (
                "rules[3]",
                json!({"name": "exact", "match": {"path_exact": "/login"}, "limit": {"requests": 1, "per": "250ms"}}),
            ),
            (
                "rules[4]",
                json!({"name": "fleet", "key": [{"header": "x-tenant"}], "limit": {"requests": 100, "per": "1m"},
                       "global": true,
                       "service": {"cluster": "ratelimit", "domain": "edge", "timeout": "50ms",
                                   "descriptor_keys": ["tenant"], "on_service_error": "local",
                                   "error_status": 503, "cache_over_limit": "10s"}}),
            ),
        ],
        Target::CircuitBreaker => vec![
            ("half_open.probe_timeout", json!("30s")),
            ("key_header", json!("x-tenant")),
            ("max_keys", json!(1024)),
            ("status", json!(503)),
            ("cluster_header", json!("x-upstream-cluster")),
            ("grpc_status", json!(14)),
            ("clusters.payments.open", json!({"base": "1s", "max": "10s", "multiplier": 3})),
            ("clusters.payments.half_open", json!({"max_probes": 1, "successes_to_close": 1, "probe_timeout": "5s"})),
            ("failure.slow", json!({"after": "2s", "threshold": 0.5, "min_requests": 10, "window": "10s"})),
        ],
        Target::HealthRouter => vec![
            ("upstreams[0].weight", json!(2)),
            ("upstreams[0].health_check.authority", json!("primary.internal")),
            ("upstreams[0].health_check.expected_statuses", json!([200, 204])),
            ("upstreams[0].health_check.jitter", json!("100ms")),
            ("upstreams[2]", json!({"cluster": "passive-only"})),
            ("passive.statuses", json!([500, 502, 503, 504])),
            ("passive.slow", json!({"after": "2s", "threshold": 0.5, "min_requests": 10, "window": "10s"})),
            ("routes", json!([{"path_prefix": "/api", "upstreams": ["primary"]}])),
            ("trust_x_forwarded_for", json!(false)),
            ("status", json!(503)),
            ("grpc_status", json!(14)),
        ],
        Target::UpstreamGuard => Vec::new(),
    }
}

/// Writes `value` at `path` (`a.b[2].c`), creating objects on the way; an index one past the
/// end of an array appends.
fn set_path(doc: &mut Value, path: &str, value: Value) {
    let segs = segments(path);
    let mut cur = doc;
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        cur = match seg {
            Seg::Key(k) => {
                if !cur.is_object() {
                    *cur = Value::Object(Map::new());
                }
                let Some(obj) = cur.as_object_mut() else { return };
                if last {
                    obj.insert(k.clone(), value);
                    return;
                }
                obj.entry(k.clone()).or_insert(Value::Null)
            }
            Seg::Index(n) => {
                let Some(arr) = cur.as_array_mut() else { return };
                if *n == arr.len() {
                    arr.push(Value::Null);
                }
                let Some(slot) = arr.get_mut(*n) else { return };
                if last {
                    *slot = value;
                    return;
                }
                slot
            }
        };
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Splits `a.b[2].c` (the form errors name fields in); `.` and `` are the document itself.
fn segments(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    if path == "." {
        return out;
    }
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Key(name.to_string()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(close) = inner.find(']') else { break };
            match inner[..close].parse() {
                Ok(n) => out.push(Seg::Index(n)),
                Err(_) => out.push(Seg::Key(inner[..close].to_string())),
            }
            rest = &inner[close + 1..];
        }
    }
    out
}

/// True when `path` names something in `doc`.
fn exists(doc: &Value, path: &str) -> bool {
    let mut cur = doc;
    for seg in segments(path) {
        let next = match (&seg, cur) {
            (Seg::Key(k), Value::Object(o)) => o.get(k),
            (Seg::Index(n), Value::Array(a)) => a.get(*n),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return false,
        }
    }
    true
}

/// Every path in `doc` (objects, arrays and leaves), as written in errors.
fn paths(doc: &Value) -> Vec<String> {
    fn walk(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, child) in o {
                    let p = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                    out.push(p.clone());
                    walk(child, p, out);
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    let p = format!("{at}[{i}]");
                    out.push(p.clone());
                    walk(child, p, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(doc, String::new(), &mut out);
    out
}

/// The README's configurations, each with every documented field.
pub fn documented_configs(readme: &str) -> Result<Vec<Documented>, String> {
    let mut out = Vec::new();
    let mut suite = Map::new();
    for target in Target::ALL {
        let Some(title) = section_title(target) else { continue };
        let text = section(readme, title).ok_or_else(|| format!("README.md has no \"## {title}\" section"))?;
        let mut config = first_json(text).ok_or_else(|| format!("README.md's {title} section has no JSON example"))?;
        for (path, value) in extras(target) {
            set_path(&mut config, path, value);
        }
        let key = match target {
            Target::Diagnostics => "diagnostics",
            Target::RateLimiter => "rate_limiter",
            Target::CircuitBreaker => "circuit_breaker",
            _ => "health_router",
        };
        suite.insert(key.into(), config.clone());
        out.push(Documented { target, config, table_fields: table_fields(text) });
    }
    let text = section(readme, LLM_TITLE).ok_or_else(|| format!("README.md has no \"## {LLM_TITLE}\" section"))?;
    let mut llm = first_json(text).ok_or_else(|| "README.md's LLM gateway section has no JSON example".to_string())?;
    for (path, value) in llm_extras() {
        set_path(&mut llm, path, value);
    }
    suite.insert("llm".into(), llm);
    out.push(Documented {
        target: Target::UpstreamGuard,
        config: Value::Object(suite),
        table_fields: table_fields(text),
    });
    Ok(out)
}

/// The README section of the `llm` stage (a section of `upstream_guard.wasm` only).
const LLM_TITLE: &str = "LLM gateway: the `llm` stage of `upstream_guard.wasm`";

/// The `llm` fields the README's table documents that its example leaves out, and those
/// `envoy-examples/llm-gateway/` sets differently (a single-provider model, health checks on
/// every provider, a budget keyed on `authorization`).
fn llm_extras() -> Vec<(&'static str, Value)> {
    vec![
        ("paths", json!(["/v1/chat/completions", "/v1/embeddings"])),
        ("max_body_bytes", json!(1_048_576)),
        ("stream_usage", json!(true)),
        ("demote_failed", json!("10s")),
        ("reserve_tokens", json!(1000)),
        ("max_keys", json!(100_000)),
        ("trusted_cidrs", json!(["10.0.0.0/8", "127.0.0.1/32"])),
        ("trust_x_forwarded_for", json!(false)),
        ("client_ip", json!({"trusted_hops": 1, "header": "x-forwarded-for", "require_peer": false})),
        ("passive.statuses", json!([500, 502, 503, 504, 529])),
        ("passive.slow", json!({"after": "5s"})),
        ("providers[0].health_check", json!({"path": "/healthz", "interval": "2s", "unhealthy_threshold": 2})),
        ("models[2]", json!({"name": "llama-3.1-8b", "providers": ["azure"]})),
        ("budgets[0].models", json!(["gpt-4o"])),
        (
            "budgets[1]",
            json!({"name": "all", "key": [{"constant": "all"}, "client_ip"], "tokens": 1_000_000, "per": "1m"}),
        ),
    ]
}

/// Table fields with no path in the configuration (a documented field the fuzzer would miss).
pub fn undocumented_coverage(d: &Documented) -> Vec<String> {
    let all: Vec<Vec<String>> = paths(&d.config)
        .iter()
        .map(|p| segments(p).into_iter().map(|s| if let Seg::Key(k) = s { k } else { "*".into() }).collect())
        .collect();
    d.table_fields
        .iter()
        .filter(|f| {
            let want: Vec<String> = f
                .replace("[]", ".*")
                .split('.')
                .map(|s| if s.starts_with('<') { "*".to_string() } else { s.to_string() })
                .collect();
            let wildcard = |w: &String, h: &String| w == "*" || w == h;
            !all.iter().any(|have| {
                have.len() >= want.len()
                    && have[have.len() - want.len()..].iter().zip(&want).all(|(h, w)| wildcard(w, h))
            })
        })
        .cloned()
        .collect()
}

/// A mutant: what was done, and the document.
#[derive(Debug, Clone)]
pub struct Mutant {
    pub what: String,
    pub path: String,
    pub text: Vec<u8>,
    /// For a mutant deeper than the JSON parser's nesting limit: the same mutant, shallower, in
    /// which the field an error names is looked up.
    pub shallow: Option<Value>,
}

/// `[[[…1…]]]`, `depth` arrays deep.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

fn replacements(original: &Value) -> Vec<(&'static str, Value)> {
    let huge_string = "A".repeat(1 << 20);
    let mut out = vec![
        ("null", Value::Null),
        ("true", json!(true)),
        ("false", json!(false)),
        ("zero", json!(0)),
        ("negative", json!(-1)),
        ("fraction", json!(1.5)),
        ("u32 overflow", json!(4_294_967_296u64)),
        ("u64 max", json!(u64::MAX)),
        ("1e300", json!(1e300)),
        ("-1e300", json!(-1e300)),
        ("empty string", json!("")),
        ("string", json!("x")),
        ("blank string", json!(" ")),
        ("NUL string", json!("\u{0}")),
        ("non-ASCII string", json!("é\u{202e}")),
        ("huge string", json!(huge_string)),
        ("empty array", json!([])),
        ("empty object", json!({})),
        ("unknown object", json!({"zz_unknown": 1})),
        ("deep nesting", nested(200)),
        ("huge array", Value::Array(vec![json!(0); 10_000])),
    ];
    match original {
        Value::Number(n) => {
            let v = n.as_f64().unwrap_or(0.0);
            for (what, x) in [("plus one", v + 1.0), ("minus one", v - 1.0), ("times 1000", v * 1000.0)] {
                out.push((what, json!(x)));
            }
            for (what, x) in [
                ("65535", 65_535u64),
                ("65536", 65_536),
                ("600", 600),
                ("99", 99),
                ("1000001", 1_000_001),
                ("10000001", 10_000_001),
            ] {
                out.push((what, json!(x)));
            }
            out.push(("number as string", json!(n.to_string())));
        }
        Value::String(s) => {
            for (what, x) in [
                ("uppercase", s.to_uppercase()),
                ("padded", format!(" {s} ")),
                ("doubled", format!("{s}{s}")),
                ("zero duration", "0s".to_string()),
                ("negative duration", "-1s".to_string()),
                ("overflowing duration", "99999999999999999999h".to_string()),
                ("bad duration", "1.5.5s".to_string()),
                ("bad CIDR", "10.0.0.0/33".to_string()),
                ("quote", "a\"b".to_string()),
            ] {
                out.push((what, json!(x)));
            }
        }
        Value::Array(a) => {
            if let Some(first) = a.first() {
                out.push(("huge array of its element", Value::Array(vec![first.clone(); 10_000])));
                out.push(("element repeated", Value::Array(vec![first.clone(), first.clone()])));
            }
        }
        _ => {}
    }
    out
}

/// Every mutant of `doc`: each path removed, replaced, and given an unknown neighbour; then
/// document-level garbage.
pub fn mutants(doc: &Value) -> Vec<Mutant> {
    let mut out = Vec::new();
    let text = |v: &Value| v.to_string().into_bytes();
    out.push(Mutant { what: "unchanged".into(), path: ".".into(), text: text(doc), shallow: None });
    for path in paths(doc) {
        let segs = segments(&path);
        let Some(original) = get(doc, &segs).cloned() else { continue };
        let mut removed = doc.clone();
        remove(&mut removed, &segs);
        out.push(Mutant { what: "removed".into(), path: path.clone(), text: text(&removed), shallow: None });
        for (what, value) in replacements(&original) {
            let mut m = doc.clone();
            set_path(&mut m, &path, value);
            let shallow = (what == "deep nesting").then(|| {
                let mut s = doc.clone();
                set_path(&mut s, &path, nested(8));
                s
            });
            out.push(Mutant { what: what.into(), path: path.clone(), text: text(&m), shallow });
        }
        if original.is_object() {
            let mut m = doc.clone();
            set_path(&mut m, &format!("{path}.zz_unknown"), json!(true));
            out.push(Mutant { what: "unknown field inside".into(), path: path.clone(), text: text(&m), shallow: None });
        }
    }
    let mut unknown = doc.clone();
    set_path(&mut unknown, "zz_unknown", json!(1));
    out.push(Mutant { what: "unknown top-level field".into(), path: ".".into(), text: text(&unknown), shallow: None });
    let garbage: &[(&str, &[u8])] = &[
        ("empty", b""),
        ("whitespace", b"  \n"),
        ("null", b"null"),
        ("array", b"[]"),
        ("string", b"\"x\""),
        ("number", b"1"),
        ("trailing text", b"{} x"),
        ("not UTF-8", b"{\"\xff\": 1}"),
        ("comment", b"{} // no"),
    ];
    for (what, bytes) in garbage {
        out.push(Mutant { what: format!("document: {what}"), path: ".".into(), text: bytes.to_vec(), shallow: None });
    }
    let whole = doc.to_string().into_bytes();
    for cut in [1, whole.len() / 3, whole.len() / 2, whole.len().saturating_sub(1)] {
        let truncated = whole.get(..cut).unwrap_or_default().to_vec();
        out.push(Mutant {
            what: format!("document: truncated at {cut}"),
            path: ".".into(),
            text: truncated,
            shallow: None,
        });
    }
    let mut trailing = doc.to_string().into_bytes();
    trailing.extend_from_slice(b"\n{}");
    out.push(Mutant { what: "document: two objects".into(), path: ".".into(), text: trailing, shallow: None });
    out
}

fn get<'a>(doc: &'a Value, segs: &[Seg]) -> Option<&'a Value> {
    let mut cur = doc;
    for s in segs {
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(o)) => o.get(k)?,
            (Seg::Index(n), Value::Array(a)) => a.get(*n)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn remove(doc: &mut Value, segs: &[Seg]) {
    let Some((last, parent)) = segs.split_last() else { return };
    let mut cur = doc;
    for s in parent {
        let next = match (s, cur) {
            (Seg::Key(k), Value::Object(o)) => o.get_mut(k),
            (Seg::Index(n), Value::Array(a)) => a.get_mut(*n),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(o)) => {
            o.remove(k);
        }
        (Seg::Index(n), Value::Array(a)) if *n < a.len() => {
            a.remove(*n);
        }
        _ => {}
    }
}

/// The core's verdict on a configuration of `target`: `Ok` or the field it names.
fn core_verdict(target: Target, text: &[u8]) -> Result<(), upstream_guard::config::ConfigError> {
    use upstream_guard::{breaker, diagnose, health, ratelimit, suite};
    match target {
        Target::Diagnostics => diagnose::DiagnosticsConfig::from_json(text).map(drop),
        Target::RateLimiter => ratelimit::RateLimitConfig::from_json(text).map(drop),
        Target::CircuitBreaker => breaker::BreakerConfig::from_json(text).map(drop),
        Target::HealthRouter => health::HealthConfig::from_json(text).map(drop),
        Target::UpstreamGuard => suite::SuiteConfig::from_json(text).map(drop),
    }
}

/// Counts of one module's mutants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub tried: u64,
    pub accepted: u64,
    pub refused: u64,
    /// Refusals naming the mutated field itself, or a field inside or around it.
    pub named_nearby: u64,
}

/// Results of a run: counts per module and every problem found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub counts: BTreeMap<&'static str, Counts>,
    pub problems: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "| module | configs tried | accepted | refused, field named | of which the mutated field or next to it |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|")?;
        let mut total = Counts::default();
        for (name, c) in &self.counts {
            writeln!(f, "| {name} | {} | {} | {} | {} |", c.tried, c.accepted, c.refused, c.named_nearby)?;
            total.tried += c.tried;
            total.accepted += c.accepted;
            total.refused += c.refused;
            total.named_nearby += c.named_nearby;
        }
        writeln!(f, "| all | {} | {} | {} | {} |", total.tried, total.accepted, total.refused, total.named_nearby)?;
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        Ok(())
    }
}

fn related(a: &str, b: &str) -> bool {
    let norm = |s: &str| if s == "." { String::new() } else { s.to_string() };
    let (a, b) = (norm(a), norm(b));
    a.is_empty() || b.is_empty() || a.starts_with(&b) || b.starts_with(&a) || {
        // Siblings (`open.max` refused after `open.base` changed).
        let parent = |s: &str| s.rfind(['.', '[']).map(|i| s[..i].to_string()).unwrap_or_default();
        parent(&a) == parent(&b)
    }
}

/// Tries every mutant of every documented configuration in the core and in the module.
pub fn run(configs: &[Documented]) -> Report {
    let mut report = Report::default();
    for d in configs {
        let wasm = match crate::paths::wasm_path(d.target.name()) {
            Ok(p) => p,
            Err(e) => {
                report.problems.push(e.to_string());
                continue;
            }
        };
        let counts = report.counts.entry(d.target.name()).or_default();
        for m in mutants(&d.config) {
            counts.tried += 1;
            let shown = format!("{} / {} {}", d.target, m.path, m.what);
            let core = core_verdict(d.target, &m.text);
            let host = Host::new().log_level(0);
            let opts = LoadOptions {
                plugin_config: m.text.clone(),
                vm_id: d.target.name().into(),
                root_id: d.target.name().into(),
                vm_config: Vec::new(),
            };
            let loaded = host.load_with(&wasm, opts);
            let doc: Option<Value> = m.shallow.clone().or_else(|| serde_json::from_slice(&m.text).ok());
            match (core, loaded) {
                (Ok(()), Ok(plugin)) => {
                    counts.accepted += 1;
                    let mut s = plugin.worker(0).http_stream().property("source.address", "10.0.0.1:5555");
                    let round = s
                        .request_headers(&[(":path", "/api"), (":method", "GET"), ("x-tenant", "t")], true)
                        .and_then(|_| s.response_headers(&[(":status", "503")], true))
                        .and_then(|_| s.log());
                    if let Err(e) = round.and_then(|()| s.finish()) {
                        report.problems.push(format!("{shown}: accepted, then a request failed: {e}"));
                    }
                }
                (Err(e), Err(HostError::Configure { log, .. })) => {
                    counts.refused += 1;
                    let named = format!("field `{}`", e.field);
                    if !log.iter().any(|(_, line)| line.contains(&named)) {
                        report.problems.push(format!("{shown}: the module's log does not name {named}: {log:?}"));
                    }
                    let real = match &doc {
                        Some(v) => exists(v, &e.field),
                        None => e.field == ".",
                    };
                    if !real {
                        report.problems.push(format!(
                            "{shown}: refused naming {:?}, which is not in the configuration ({e})",
                            e.field
                        ));
                    }
                    if related(&e.field, &m.path) {
                        counts.named_nearby += 1;
                    }
                }
                (
                    core,
                    Err(
                        e @ (HostError::Trap { .. } | HostError::Load(_) | HostError::Missing(_) | HostError::Usage(_)),
                    ),
                ) => {
                    report.problems.push(format!("{shown}: the module failed to load ({e}); the core said {core:?}"));
                }
                (Ok(()), Err(HostError::Configure { log, .. })) => {
                    report.problems.push(format!("{shown}: the core accepts it, the module refuses it: {log:?}"));
                }
                (Err(e), Ok(_)) => {
                    report.problems.push(format!("{shown}: the core refuses it ({e}), the module accepts it"));
                }
            }
        }
    }
    report
}
