//! The Prometheus alerting rules in `envoy-examples/prometheus/` against what Envoy really exports.
//!
//! Rules that name a metric nobody exports never fire, and nothing warns about it. So a real Envoy
//! with all four filters and the stats tags of `stats_tags.yaml` is driven into the faults the
//! rules watch for (a circuit opens, a health-checked upstream dies, a passive ejection, a rate
//! limit refuses, a request finds no healthy upstream) and scraped on `/stats/prometheus` before
//! and after. Every metric, label and label value the rules name must be in the scrape, every
//! series of the rules' unit tests must have the name and label set of a real one, and
//! `promtool test rules` on series built from the two scrapes must fire exactly the expected
//! alerts. A second Envoy without the stats tags shows the names `UpstreamGuardMetricsUntagged`
//! looks for, and a third, whose module traps under `FAIL_RELOAD`, the Envoy counters
//! `UpstreamGuardModuleFailing` and `UpstreamGuardModuleTrapped` watch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use regex_lite::Regex;
use serde_json::{json, Value};
use test_harness::backend::{self, Backend, Behavior};
use test_harness::bootstrap::{cluster, http2_cluster, module_filter, wasm_filter, Bootstrap, Shape};
use test_harness::envoy::{self, Envoy};
use test_harness::{eventually, http, parse_diagnosis, paths};

fn dir() -> PathBuf {
    paths::workspace_root().join("envoy-examples").join("prometheus")
}

fn rules_path() -> PathBuf {
    dir().join("upstream-guard.rules.yaml")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `promtool <args> <file>`, run from the rules' folder (test files name the rules relatively).
fn promtool(args: &[&str], file: &Path) -> Output {
    Command::new("promtool")
        .args(args)
        .arg(file)
        .current_dir(dir())
        .output()
        .unwrap_or_else(|e| panic!("promtool: {e}: run `cargo xtask setup` (installs Debian's prometheus package)"))
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A series: metric name and labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

impl Series {
    /// `name{a="b", c="d"}` (or a bare name), and what follows it.
    fn parse(text: &str) -> Option<(Series, &str)> {
        let text = text.trim_start();
        let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(text.len());
        let (name, mut rest) = text.split_at(end);
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                rest = rest.trim_start_matches([' ', ',']);
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let (key, r) = rest.split_once("=\"")?;
                let mut value = String::new();
                let mut chars = r.char_indices();
                let close = loop {
                    match chars.next()? {
                        (_, '\\') => value.push(match chars.next()?.1 {
                            'n' => '\n',
                            c => c,
                        }),
                        (i, '"') => break i,
                        (_, c) => value.push(c),
                    }
                };
                labels.insert(key.trim().to_string(), value);
                rest = &r[close + 1..];
            }
        }
        (!name.is_empty()).then(|| (Series { name: name.to_string(), labels }, rest))
    }

    /// The series in PromQL notation, with extra labels.
    fn render(&self, extra: &[(&str, &str)]) -> String {
        let mut labels = self.labels.clone();
        for (k, v) in extra {
            labels.insert(k.to_string(), v.to_string());
        }
        let inner: Vec<String> =
            labels.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))).collect();
        format!("{}{{{}}}", self.name, inner.join(", "))
    }

    /// Label names without the ones Prometheus adds when it scrapes.
    fn own_label_names(&self) -> BTreeSet<&str> {
        self.labels.keys().map(String::as_str).filter(|k| !matches!(*k, "job" | "instance")).collect()
    }
}

/// The `upstream_guard_*` and `envoy_wasm_*` part of one `/stats/prometheus` scrape.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<Series, f64>,
    /// Metric name → `counter` or `gauge` (from the `# TYPE` lines).
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn of(envoy: &Envoy) -> Scrape {
        let r = http::get(envoy.admin(), "/stats/prometheus", &[]).unwrap();
        assert_eq!(r.status, 200);
        let mut s = Scrape::default();
        for line in r.text().lines().filter(|l| l.contains("upstream_guard_") || l.contains("envoy_wasm_")) {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap();
                s.types.insert(name.to_string(), kind.trim().to_string());
            } else if !line.starts_with('#') {
                let (series, rest) = Series::parse(line).unwrap_or_else(|| panic!("unparsable sample: {line}"));
                let value = rest.trim().parse().unwrap_or_else(|_| panic!("unparsable value: {line}"));
                s.samples.insert(series, value);
            }
        }
        assert!(!s.samples.is_empty(), "no upstream_guard_ metrics in the scrape:\n{}", r.text());
        s
    }

    /// The value of `name` with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let key =
            Series { name: name.into(), labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        self.samples.get(&key).copied()
    }

    fn names(&self) -> BTreeSet<&str> {
        self.samples.keys().map(|s| s.name.as_str()).collect()
    }
}

fn filter(name: &str, config: Value) -> Value {
    wasm_filter(name, &paths::wasm_path(name).unwrap(), &config)
}

/// All four filters in chain order. Clusters: `inventory` (health-checked), `payments` (the
/// breaker trips on it), `search` (ejected by passive detection: it answers 502, which only the
/// health router's passive detection counts here, twice in a row), `ratelimit` (the rate limit
/// service of the global rule `fleet`: nothing listens, so `/fleet` finds it failing).
fn bootstrap(inventory: SocketAddr, payments: SocketAddr, search: SocketAddr) -> Value {
    bootstrap_for(Shape::Wasm, inventory, payments, search)
}

/// [`bootstrap`] with the stages in `shape`: single-policy `.wasm` filters, or one dynamic module
/// filter per stage.
fn bootstrap_for(shape: Shape, inventory: SocketAddr, payments: SocketAddr, search: SocketAddr) -> Value {
    let nobody = backend::closed_port().unwrap();
    let filter = |name: &str, config: Value| -> Value {
        match shape {
            Shape::Wasm => filter(name, config),
            Shape::Native => module_filter(shape, name, &config),
        }
    };
    let check = json!({"path": "/healthz", "interval": "200ms", "timeout": "100ms",
                       "unhealthy_threshold": 2, "healthy_threshold": 2});
    Bootstrap::new()
        .filter(filter("diagnostics", json!({"trusted_cidrs": ["127.0.0.1/32"]})))
        .filter(filter(
            "rate_limiter",
            json!({"rules": [{"name": "per-client", "match": {"path_prefix": "/limited"}, "key": ["client_ip"],
                              "limit": {"requests": 2, "per": "1h"}},
                             {"name": "fleet", "match": {"path_prefix": "/fleet"}, "key": [{"constant": "all"}],
                              "limit": {"requests": 100, "per": "1s"}, "global": true,
                              "service": {"cluster": "ratelimit", "domain": "edge", "timeout": "200ms",
                                          "on_service_error": "allow"}}]}),
        ))
        .filter(filter(
            "health_router",
            json!({"upstreams": [{"cluster": "inventory", "health_check": check}, {"cluster": "payments"},
                                 {"cluster": "search"}],
                   "routes": [{"path_prefix": "/payments", "upstreams": ["payments"]},
                              {"path_prefix": "/search", "upstreams": ["search"]},
                              {"path_prefix": "/", "upstreams": ["inventory"]}],
                   "passive": {"consecutive_failures": 2, "ejection": "60s", "statuses": [502]}}),
        ))
        .filter(filter(
            "circuit_breaker",
            json!({"failure": {"consecutive": 3}, "open": {"base": "60s", "max": "60s"}}),
        ))
        .route(json!({"match": {"prefix": "/"}, "route": {"cluster_header": "x-upstream-cluster", "timeout": "2s"}}))
        .cluster(cluster("inventory", inventory))
        .cluster(cluster("payments", payments))
        .cluster(cluster("search", search))
        .cluster(http2_cluster("ratelimit", nobody))
        .build()
}

/// The bootstrap as YAML with `stats_tags.yaml` in front, as the README tells users to add it
/// (each JSON value is a YAML flow node).
fn with_stats_tags(bootstrap: &Value) -> String {
    let mut yaml = read(&dir().join("stats_tags.yaml"));
    for (key, value) in bootstrap.as_object().unwrap() {
        assert_ne!(key, "stats_config");
        writeln!(yaml, "{key}: {value}").unwrap();
    }
    yaml
}

/// An Envoy with the stats tags and two workers, and its backends: inventory (200), payments
/// (503) and search (502).
fn tagged_envoy() -> (Envoy, [Backend; 3]) {
    tagged_envoy_for(Shape::Wasm)
}

fn tagged_envoy_for(shape: Shape) -> (Envoy, [Backend; 3]) {
    let inventory = Backend::ok().unwrap();
    let payments = Backend::start(Behavior::Status(503)).unwrap();
    let search = Backend::start(Behavior::Status(502)).unwrap();
    let cfg = bootstrap_for(shape, inventory.addr(), payments.addr(), search.addr());
    let envoy = Envoy::start_yaml(&with_stats_tags(&cfg), 2).unwrap();
    (envoy, [inventory, payments, search])
}

/// Two scrapes of a tagged Envoy: after normal traffic, and after the faults.
fn scrapes_around_faults() -> (Scrape, Scrape, SocketAddr) {
    let (envoy, [inventory, _payments, _search]) = tagged_envoy();
    let addr = envoy.main().unwrap();
    let get = |path: &str| http::get(addr, path, &[]).unwrap();

    assert_eq!(get("/").status, 200);
    assert_eq!(get("/limited").status, 200);
    let before = Scrape::of(&envoy);

    let fleet = get("/fleet");
    assert_eq!(fleet.status, 200, "on_service_error: allow admits when the service gives no verdict");
    inventory.kill();
    for _ in 0..3 {
        assert_eq!(get("/payments").status, 503);
    }
    assert_eq!(get("/payments").header("x-upstream-guard-circuit"), Some("open"), "{}", envoy.log());
    for _ in 0..2 {
        assert_eq!(get("/search").status, 502);
    }
    let refused = (0..6).filter(|_| get("/limited").status == 429).count();
    assert_eq!(refused, 5, "2 per hour: the 2nd request passes, the next 5 are refused");
    assert!(
        eventually(Duration::from_secs(10), || envoy.stat("upstream_guard.health.inventory.healthy").unwrap()
            == Some(0)),
        "inventory never became unhealthy:\n{}",
        envoy.log()
    );
    let r = get("/");
    assert_eq!(r.status, 503);
    let diagnosis = parse_diagnosis(r.header("x-upstream-diagnosis").unwrap()).unwrap();
    assert_eq!(diagnosis["cause"], "no_healthy_upstream");
    let after = Scrape::of(&envoy);
    (before, after, envoy.admin())
}

/// The common-path counters (admitted, routed) are counted in each VM and handed to Envoy on the
/// tick: a scrape a little later shows exactly the requests sent, under the same names and labels.
#[test]
fn tallied_counters_reach_prometheus_with_exactly_the_requests_sent() {
    let (envoy, [inventory, _payments, _search]) = tagged_envoy();
    let addr = envoy.main().unwrap();
    for _ in 0..37 {
        assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200);
    }
    let limited: Vec<u16> = (0..4).map(|_| http::get(addr, "/limited", &[]).unwrap().status).collect();
    assert_eq!(limited, [200, 200, 429, 429]);
    let routed = |s: &Scrape| s.value("upstream_guard_health_routed", &[("envoy_cluster_name", "inventory")]);
    let allowed = |s: &Scrape| s.value("upstream_guard_ratelimit_allowed", &[("ratelimit_rule", "per-client")]);
    // 39 requests reached inventory: 37 to `/` and the two admitted to `/limited`.
    let flushed = eventually(Duration::from_secs(5), || {
        let s = Scrape::of(&envoy);
        routed(&s) == Some(39.0) && allowed(&s) == Some(2.0)
    });
    let s = Scrape::of(&envoy);
    assert!(flushed, "routed {:?}, allowed {:?} after 5 s", routed(&s), allowed(&s));
    assert_eq!(s.types.get("upstream_guard_health_routed").map(String::as_str), Some("counter"));
    assert_eq!(s.types.get("upstream_guard_ratelimit_allowed").map(String::as_str), Some("counter"));
    assert_eq!(s.value("upstream_guard_ratelimit_limited", &[("ratelimit_rule", "per-client")]), Some(2.0));
    // Two more ticks: nothing is counted twice.
    std::thread::sleep(Duration::from_millis(2_100));
    let later = Scrape::of(&envoy);
    assert_eq!((routed(&later), allowed(&later)), (Some(39.0), Some(2.0)));
    assert_eq!(inventory.requests(), 39);
}

/// One scrape of an Envoy without the stats tags, after one request per route.
fn untagged_scrape() -> Scrape {
    let inventory = Backend::ok().unwrap();
    let payments = Backend::start(Behavior::Status(503)).unwrap();
    let search = Backend::start(Behavior::Status(502)).unwrap();
    let envoy = Envoy::start_with(&bootstrap(inventory.addr(), payments.addr(), search.addr()), 1).unwrap();
    let addr = envoy.main().unwrap();
    for path in ["/", "/payments", "/search", "/limited"] {
        http::get(addr, path, &[]).unwrap();
    }
    Scrape::of(&envoy)
}

/// A `promtool test rules` file: every series of `before` and `after`, one sample a minute.
/// `before` holds from 0m to 4m; from 5m on the faults go on: gauges keep their `after` value
/// and counters grow by the same amount every minute. Then `checks`: (eval time, expected
/// `count by (alertname, envoy_cluster_name, ratelimit_rule) (ALERTS{alertstate="firing"})`).
fn promtool_test(before: &Scrape, after: &Scrape, instance: &str, checks: &[(&str, Vec<String>)]) -> String {
    let extra = [("job", "envoy"), ("instance", instance)];
    let mut out = String::new();
    writeln!(out, "rule_files:\n- {}", json!(rules_path().display().to_string())).unwrap();
    writeln!(out, "evaluation_interval: 1m\ntests:\n- interval: 1m\n  input_series:").unwrap();
    let all: BTreeSet<&Series> = before.samples.keys().chain(after.samples.keys()).collect();
    for series in all {
        let pre = before.samples.get(series).copied();
        let post = after.samples.get(series).copied();
        let counter =
            after.types.get(&series.name).or(before.types.get(&series.name)).map(String::as_str) == Some("counter");
        // Five samples either way: `vx4` is v five times, `_x5` five missing samples.
        let first = pre.map_or("_x5".to_string(), |v| format!("{v}x4"));
        let then = match post {
            None => "_x16".to_string(),
            Some(v) if counter => format!("{v}+{}x15", v - pre.unwrap_or(0.0)),
            Some(v) => format!("{v}x15"),
        };
        writeln!(out, "  - series: '{}'\n    values: '{first} {then}'", series.render(&extra)).unwrap();
    }
    writeln!(out, "  promql_expr_test:").unwrap();
    for (at, firing) in checks {
        writeln!(
            out,
            "  - expr: 'count by (alertname, envoy_cluster_name, ratelimit_rule) (ALERTS{{alertstate=\"firing\"}})'"
        )
        .unwrap();
        writeln!(out, "    eval_time: {at}\n    exp_samples:{}", if firing.is_empty() { " []" } else { "" }).unwrap();
        for labels in firing {
            writeln!(out, "    - labels: '{labels}'\n      value: 1").unwrap();
        }
    }
    out
}

fn run_promtool_test(name: &str, text: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(name);
    std::fs::write(&file, text).unwrap();
    let out = promtool(&["test", "rules"], &file);
    assert_success(&out, &format!("promtool test rules on series from a real scrape:\n{text}\n"));
}

fn alert(name: &str, label: Option<(&str, &str)>) -> String {
    match label {
        Some((k, v)) => format!("{{alertname=\"{name}\", {k}=\"{v}\"}}"),
        None => format!("{{alertname=\"{name}\"}}"),
    }
}

#[test]
fn every_alert_has_a_runbook_that_exists() {
    let rules = read(&rules_path());
    let alerts = Regex::new(r"(?m)^  - alert: (\w+)$").unwrap().find_iter(&rules).count();
    let runbooks: Vec<String> =
        Regex::new(r#"runbook_url: "([^"]+)""#).unwrap().captures_iter(&rules).map(|c| c[1].to_string()).collect();
    assert_eq!(runbooks.len(), alerts, "every alert carries a runbook_url");
    for url in runbooks {
        let (path, anchor) = url.split_once('#').unwrap_or((url.as_str(), ""));
        let page = paths::workspace_root().join(path);
        let text = std::fs::read_to_string(&page).unwrap_or_else(|_| panic!("runbook {url}: no page {path}"));
        if !anchor.is_empty() {
            let found = text
                .lines()
                .filter_map(|l| l.strip_prefix('#'))
                .any(|h| paths::heading_anchor(h.trim_start_matches('#')) == anchor);
            assert!(found, "runbook {url}: {path} has no heading #{anchor}");
        }
    }
}

#[test]
fn the_rules_pass_promtool_check_and_their_own_unit_tests() {
    let out = promtool(&["check", "rules"], &rules_path());
    assert_success(&out, "promtool check rules");
    let out = promtool(&["test", "rules"], &dir().join("upstream-guard.rules.test.yaml"));
    assert_success(&out, "promtool test rules upstream-guard.rules.test.yaml");
}

#[test]
fn stats_tags_in_front_of_the_chain_example_is_a_valid_envoy_config() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = tmp.path().join("envoy.yaml");
    let text = read(&dir().join("stats_tags.yaml"))
        + &read(&paths::workspace_root().join("envoy-examples").join("chain").join("envoy.yaml"));
    std::fs::write(&yaml, text).unwrap();
    let out = envoy::validate(&yaml).unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_rules_fire_on_what_a_real_envoy_exports() {
    let (before, after, admin) = scrapes_around_faults();
    let untagged = untagged_scrape();

    // The faults, as the tagged scrape shows them.
    let cluster = |c| [("envoy_cluster_name", c)];
    assert_eq!(after.value("upstream_guard_breaker_state", &cluster("payments")), Some(1.0));
    assert_eq!(after.value("upstream_guard_breaker_opened", &cluster("payments")), Some(1.0));
    assert_eq!(after.value("upstream_guard_health_healthy", &cluster("inventory")), Some(0.0));
    assert_eq!(after.value("upstream_guard_health_ejections", &cluster("search")), Some(1.0));
    assert_eq!(after.value("upstream_guard_ratelimit_limited", &[("ratelimit_rule", "per-client")]), Some(5.0));
    assert_eq!(after.value("upstream_guard_ratelimit_global_error", &[("ratelimit_rule", "fleet")]), Some(1.0));
    assert_eq!(after.value("upstream_guard_ratelimit_client_ip_from_header", &[]), Some(0.0));
    assert!(after.value("upstream_guard_diagnosis", &[("cause", "no_healthy_upstream")]) >= Some(1.0));
    assert!(after.value("upstream_guard_health_no_healthy_upstream", &[]) >= Some(1.0));
    assert_eq!(untagged.value("upstream_guard_breaker_payments_state", &[]), Some(0.0));

    // Every metric name the rules file mentions is exported.
    let rules = read(&rules_path());
    let exported = after.names();
    let named: BTreeSet<&str> =
        Regex::new(r"\bupstream_guard_[a-z0-9_]*[a-z0-9]\b").unwrap().find_iter(&rules).map(|m| m.as_str()).collect();
    assert!(named.len() >= 10, "the rules name too few metrics: {named:?}");
    let missing: Vec<&&str> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "the rules name metrics Envoy does not export: {missing:?}\nexported: {exported:?}");

    // Every label the rules use is on some series, and every label value they match on exists.
    let labels: BTreeSet<&str> = after.samples.keys().flat_map(|s| s.labels.keys().map(String::as_str)).collect();
    let used: BTreeSet<&str> = Regex::new(r"\$labels\.([a-z_]+)|(?:by|without) \(([a-z_, ]+)\)")
        .unwrap()
        .captures_iter(&rules)
        .flat_map(|c| {
            let text = c.get(1).or(c.get(2)).unwrap().as_str();
            text.split(',').map(str::trim).collect::<Vec<_>>()
        })
        .filter(|l| !matches!(*l, "job" | "instance" | "alertname"))
        .collect();
    assert!(used.contains("envoy_cluster_name") && used.contains("ratelimit_rule") && used.contains("cause"));
    let unknown: Vec<&&str> = used.iter().filter(|l| !labels.contains(*l)).collect();
    assert!(unknown.is_empty(), "the rules use labels Envoy does not export: {unknown:?}");
    for m in Regex::new(r#"\{([a-z_]+)="([^"]*)"\}"#).unwrap().captures_iter(&rules) {
        let (label, value) = (&m[1], &m[2]);
        assert!(
            after.samples.keys().any(|s| s.labels.get(label).map(String::as_str) == Some(value)),
            "the rules match {label}=\"{value}\", which no exported series carries"
        );
    }

    // The rules' unit tests use real series shapes: each name with the label set Envoy gives it.
    let tests = read(&dir().join("upstream-guard.rules.test.yaml"));
    let real: BTreeSet<(&str, BTreeSet<&str>)> = [&before, &after, &untagged]
        .iter()
        .flat_map(|s| s.samples.keys())
        .map(|s| (s.name.as_str(), s.own_label_names()))
        .collect();
    let mut checked = 0;
    for c in Regex::new(r"series: '([^']+)'").unwrap().captures_iter(&tests) {
        let (series, _) = Series::parse(&c[1]).unwrap();
        assert!(
            real.contains(&(series.name.as_str(), series.own_label_names())),
            "upstream-guard.rules.test.yaml uses {}, which Envoy does not export with these labels",
            &c[1]
        );
        checked += 1;
    }
    assert!(checked >= 20, "found only {checked} series in upstream-guard.rules.test.yaml");

    // The real series, before and during the faults, fire exactly the expected alerts.
    let instance = admin.to_string();
    let firing = vec![
        alert("UpstreamGuardCircuitOpen", Some(("envoy_cluster_name", "payments"))),
        alert("UpstreamGuardCircuitTripped", Some(("envoy_cluster_name", "payments"))),
        alert("UpstreamGuardUpstreamUnhealthy", Some(("envoy_cluster_name", "inventory"))),
        alert("UpstreamGuardHealthChecksFailing", Some(("envoy_cluster_name", "inventory"))),
        alert("UpstreamGuardUpstreamEjected", Some(("envoy_cluster_name", "search"))),
        alert("UpstreamGuardNoHealthyUpstream", None),
        alert("UpstreamGuardRateLimitRefusals", Some(("ratelimit_rule", "per-client"))),
        alert("UpstreamGuardRateLimitServiceFailing", Some(("ratelimit_rule", "fleet"))),
    ];
    run_promtool_test(
        "faults.test.yaml",
        &promtool_test(&before, &after, &instance, &[("4m", vec![]), ("20m", firing)]),
    );

    // Without the stats tags only the set-up alert can see anything.
    run_promtool_test(
        "untagged.test.yaml",
        &promtool_test(
            &untagged,
            &untagged,
            &instance,
            &[("5m", vec![]), ("20m", vec![alert("UpstreamGuardMetricsUntagged", None)])],
        ),
    );
}

/// Scrapes of an Envoy whose module (the test-only `faulty` build of the combined module) traps
/// under `FAIL_RELOAD`: before, and after the trap, requests within the reload backoff, and the
/// reload.
fn scrapes_around_a_trap() -> (Scrape, Scrape, SocketAddr) {
    let mut module = filter("faulty", json!({"diagnostics": {}}));
    module["typed_config"]["config"]["failure_policy"] = json!("FAIL_RELOAD");
    let cfg = Bootstrap::new()
        .filter(module)
        .route(json!({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}))
        .build();
    let envoy = Envoy::start_yaml(&with_stats_tags(&cfg), 1).unwrap();
    let addr = envoy.main().unwrap();
    assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200);
    let before = Scrape::of(&envoy);
    assert_eq!(http::get(addr, "/", &[("x-ug-test-fault", "panic")]).unwrap().status, 503);
    let failed = (0..3).filter(|_| http::get(addr, "/", &[]).unwrap().status == 503).count();
    assert_eq!(failed, 3, "within the reload backoff, requests meet the failed VM");
    assert!(
        eventually(Duration::from_secs(10), || http::get(addr, "/", &[]).unwrap().status == 200),
        "the VM never came back:\n{}",
        envoy.log()
    );
    let after = Scrape::of(&envoy);
    (before, after, envoy.admin())
}

#[test]
fn the_module_alerts_fire_on_what_envoy_exports_when_a_vm_traps() {
    let (before, after, admin) = scrapes_around_a_trap();
    assert_eq!(before.value("envoy_wasm_faulty_vm_reload_backoff", &[]), Some(0.0));
    assert!(after.value("envoy_wasm_faulty_vm_reload_backoff", &[]) >= Some(3.0));
    assert_eq!(after.value("envoy_wasm_faulty_vm_reload_success", &[]), Some(1.0));
    let firing = vec![alert("UpstreamGuardModuleFailing", None), alert("UpstreamGuardModuleTrapped", None)];
    run_promtool_test(
        "trap.test.yaml",
        &promtool_test(&before, &after, &admin.to_string(), &[("4m", vec![]), ("20m", firing)]),
    );
}

/// A Prometheus server of its own (Debian's `prometheus`) on a loopback port, scraping one Envoy's
/// `/stats/prometheus` every second; stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The scrape relabelling `envoy-examples/prometheus/README.md` gives for the dynamic module:
/// Envoy prefixes its metrics with `envoy_` on `/stats/prometheus`, which a `.wasm`'s do not get.
const NATIVE_RELABEL: &str = "  metric_relabel_configs:\n  - source_labels: [__name__]\n    regex: 'envoy_(upstream_guard_.*)'\n    target_label: __name__\n    replacement: '$1'\n";

impl Prometheus {
    fn scraping(envoy_admin: SocketAddr) -> Prometheus {
        Prometheus::scraping_with(envoy_admin, "")
    }

    /// With `extra` appended to the scrape job (relabelling).
    fn scraping_with(envoy_admin: SocketAddr, extra: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: envoy\n  \
                 metrics_path: /stats/prometheus\n  static_configs: [{{targets: [\"{envoy_admin}\"]}}]\n{extra}"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus package; cargo xtask setup installs it)");
        Prometheus { child, addr, _dir: dir }
    }

    /// An instant query's result vector (`None` while the server is not up or the query fails).
    fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let encoded: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let r = http::get(self.addr, &format!("/api/v1/query?query={encoded}"), &[]).ok()?;
        let v: Value = serde_json::from_slice(&r.body).ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Grafana dashboard's every query (panels and variables), as Grafana would send it, against a
/// real Prometheus scraping a real Envoy that went through the faults: each returns data, so no
/// panel is empty because a name or label is wrong.
#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let dashboard: Value = serde_json::from_str(&read(
        &paths::workspace_root().join("envoy-examples").join("grafana").join("upstream-guard.json"),
    ))
    .unwrap();
    let (envoy, [_inventory, _payments, _search]) = tagged_envoy();
    let addr = envoy.main().unwrap();
    let get = |path: &str| http::get(addr, path, &[]).unwrap().status;
    let prometheus = Prometheus::scraping(envoy.admin());
    // Traffic and faults while Prometheus scrapes: routed, limited, a failing global rule's
    // service, an open circuit, an ejection.
    for _ in 0..3 {
        assert_eq!(get("/"), 200);
        assert_eq!(get("/fleet"), 200);
        let _ = get("/limited");
        let _ = get("/payments");
        let _ = get("/search");
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(
        eventually(Duration::from_secs(20), || prometheus
            .query("count_over_time(up{job=\"envoy\"}[1m]) >= 4 and up{job=\"envoy\"} == 1")
            .is_some_and(|r| !r.is_empty())),
        "Prometheus never scraped the Envoy"
    );
    let mut queries: Vec<(String, String)> = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            queries.push((p["title"].as_str().unwrap().to_string(), t["expr"].as_str().unwrap().to_string()));
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(metric, label): Grafana asks for the metric's series.
            let metric = q.trim_start_matches("label_values(").split(',').next().unwrap().trim().to_string();
            queries.push((format!("variable {}", v["name"]), metric));
        }
    }
    assert!(queries.len() >= 10, "{queries:?}");
    let empty: Vec<String> = queries
        .iter()
        .filter_map(|(title, expr)| {
            let promql = expr.replace("$__rate_interval", "10s").replace("$instance", ".*");
            let data = prometheus.query(&promql);
            data.as_ref().is_none_or(Vec::is_empty).then(|| format!("{title}: {promql} -> {data:?}"))
        })
        .collect();
    assert!(empty.is_empty(), "dashboard queries with no data:\n{}", empty.join("\n"));
}

/// The alerts and the dashboard read the same names and labels from both shapes: every metric
/// the rules name that the `.wasm` exports, the dynamic module exports with the same labels, as a
/// Prometheus configured as the README says (the stats tags in Envoy, and the relabelling that
/// drops Envoy's `envoy_` prefix) stores it.
#[test]
fn the_dynamic_module_exports_the_names_and_labels_the_rules_read() {
    let traffic = |envoy: &Envoy| {
        let addr = envoy.main().unwrap();
        for path in
            ["/", "/limited", "/limited", "/limited", "/payments", "/payments", "/payments", "/search", "/fleet"]
        {
            http::get(addr, path, &[]).unwrap();
        }
    };
    let wasm = {
        let (envoy, _backends) = tagged_envoy_for(Shape::Wasm);
        traffic(&envoy);
        Scrape::of(&envoy)
    };
    let (envoy, _backends) = tagged_envoy_for(Shape::Native);
    traffic(&envoy);
    let prometheus = Prometheus::scraping_with(envoy.admin(), NATIVE_RELABEL);
    assert!(
        eventually(Duration::from_secs(20), || prometheus
            .query("up{job=\"envoy\"} == 1")
            .is_some_and(|r| !r.is_empty())),
        "Prometheus never scraped the Envoy"
    );
    std::thread::sleep(Duration::from_millis(1_500));
    let rules = read(&rules_path());
    let named: BTreeSet<&str> =
        Regex::new(r"\bupstream_guard_[a-z0-9_]*[a-z0-9]\b").unwrap().find_iter(&rules).map(|m| m.as_str()).collect();
    // The dynamic module defines per-cluster breaker counters as one metric with a cluster tag,
    // and Envoy exports a tagged series from its first count: a breaker counter still at 0
    // (here `slow`, with no slow-call rule) has no series yet.
    let wanted: BTreeSet<(String, BTreeSet<String>)> = wasm
        .samples
        .iter()
        .filter(|(k, v)| !(k.name.starts_with("upstream_guard_breaker_") && **v == 0.0))
        .map(|(k, _)| k)
        .filter(|k| named.contains(k.name.as_str()))
        .map(|k| (k.name.clone(), k.own_label_names().into_iter().map(str::to_string).collect()))
        .collect();
    assert!(wanted.len() >= 15, "{wanted:?}");
    let mut missing = Vec::new();
    for (name, labels) in &wanted {
        let found = prometheus.query(name).unwrap_or_default().iter().any(|series| {
            let own: BTreeSet<String> = series["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .filter(|k| !matches!(k.as_str(), "__name__" | "job" | "instance"))
                .collect();
            &own == labels
        });
        if !found {
            missing.push(format!("{name} {labels:?}"));
        }
    }
    assert!(missing.is_empty(), "the dynamic module's series lack what the rules read: {missing:?}");
    let limited = prometheus.query("upstream_guard_ratelimit_limited{ratelimit_rule=\"per-client\"}").unwrap();
    assert_eq!(limited.first().map(|s| s["value"][1].clone()), Some(json!("1")), "2 per hour: the third is refused");
}

/// The names an LLM gateway's operator chooses (models, providers, budgets) become labels with
/// the stats tags, in both shapes (the dynamic module's names read through the README's
/// relabelling), so one query covers every model.
#[test]
fn llm_models_providers_and_budgets_are_labels_not_names() {
    for shape in [Shape::Wasm, Shape::Native] {
        let provider = Backend::ok().unwrap();
        let config = json!({"llm": {
            "providers": [{"cluster": "openai-primary"}],
            "models": [{"name": "gpt-4.1-mini", "providers": ["openai-primary"]}],
            "budgets": [{"name": "team-a", "key": [{"header": "x-team"}], "tokens": 1000, "per": "1h"}]}});
        let cfg = Bootstrap::new()
            .filter(module_filter(shape, "upstream_guard", &config))
            .route(json!({"match": {"prefix": "/"}, "route": {"cluster": "openai-primary"}}))
            .cluster(cluster("openai-primary", provider.addr()))
            .build();
        let envoy = Envoy::start_yaml(&with_stats_tags(&cfg), 1).unwrap();
        let scrape = Scrape::of(&envoy);
        // The dynamic module's names carry Envoy's prefix until the scrape drops it.
        let value = |name: &str, labels: &[(&str, &str)]| {
            scrape.value(name, labels).or_else(|| scrape.value(&format!("envoy_{name}"), labels))
        };
        let what = format!("{shape:?}: {:?}", scrape.names());
        assert_eq!(value("upstream_guard_llm_model_requests", &[("llm_model", "gpt-4_1-mini")]), Some(0.0), "{what}");
        assert_eq!(
            value("upstream_guard_llm_provider_rate_limited", &[("envoy_cluster_name", "openai-primary")]),
            Some(0.0),
            "{what}"
        );
        assert_eq!(value("upstream_guard_llm_budget_refused", &[("llm_budget", "team-a")]), Some(0.0), "{what}");
        assert!(
            !scrape.names().iter().any(|n| n.contains("gpt") || n.contains("openai") || n.contains("team_a")),
            "a chosen name is still inside a metric name: {what}"
        );
    }
}
