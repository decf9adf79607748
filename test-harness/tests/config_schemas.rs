//! The JSON Schemas in `envoy-examples/schemas/`: generated from the configuration types and
//! committed, they must be current; their defaults must be the parser's; every configuration in
//! `envoy-examples/` must validate against its schema and be accepted by the filter; and what the
//! filter refuses, the schema refuses too, unless its description says only the filter checks it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use test_harness::paths;
use upstream_guard::config::ConfigError;

fn schemas_dir() -> PathBuf {
    paths::workspace_root().join("envoy-examples").join("schemas")
}

fn schema(module: &str) -> Value {
    upstream_guard::schema::all().into_iter().find(|(m, _)| *m == module).map(|(_, s)| s).unwrap()
}

/// The validated configuration, printed (equal prints mean equal configurations).
fn parse(module: &str, config: &Value) -> Result<String, ConfigError> {
    let bytes = config.to_string().into_bytes();
    Ok(match module {
        "diagnostics" => format!("{:?}", upstream_guard::diagnose::DiagnosticsConfig::from_json(&bytes)?),
        "rate_limiter" => format!("{:?}", upstream_guard::ratelimit::RateLimitConfig::from_json(&bytes)?),
        "circuit_breaker" => format!("{:?}", upstream_guard::breaker::BreakerConfig::from_json(&bytes)?),
        "health_router" => format!("{:?}", upstream_guard::health::HealthConfig::from_json(&bytes)?),
        "upstream_guard" => format!("{:?}", upstream_guard::suite::SuiteConfig::from_json(&bytes)?),
        other => panic!("unknown module {other}"),
    })
}

/// Validates each (module, config) against the committed schema with ajv (draft 2020-12):
/// `Ok(())` or the validator's errors.
fn validate(items: &[(String, Value)]) -> Vec<Result<(), Vec<String>>> {
    let script = paths::target_dir().join("npm").join("validate-configs.mjs");
    assert!(script.is_file(), "{} is missing: run `cargo xtask setup`", script.display());
    let mut child = Command::new("node")
        .arg(&script)
        .arg(schemas_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is missing: run `cargo xtask setup`");
    let input: String = items.iter().map(|(m, c)| format!("{}\n", json!({"schema": m, "config": c}))).collect();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "validate-configs.mjs: {}", String::from_utf8_lossy(&out.stderr));
    let results: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            if v["valid"] == true {
                Ok(())
            } else {
                Err(v["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect())
            }
        })
        .collect();
    assert_eq!(results.len(), items.len());
    results
}

#[test]
fn committed_schemas_are_what_the_types_generate() {
    let all = upstream_guard::schema::all();
    for (module, schema) in &all {
        let path = schemas_dir().join(format!("{module}.schema.json"));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == upstream_guard::schema::file_text(schema),
            "{} is stale or missing: run `cargo xtask schemas` and commit the result",
            path.display()
        );
    }
    let mut files: Vec<String> =
        std::fs::read_dir(schemas_dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    files.sort();
    let mut expected: Vec<String> = all.iter().map(|(m, _)| format!("{m}.schema.json")).collect();
    expected.sort();
    assert_eq!(files, expected, "only generated schemas live in envoy-examples/schemas/");
}

/// Follows `$ref` (into `$defs`) and `anyOf`/`oneOf` (an optional object) to the object schema.
fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        return resolve(root, &root["$defs"][name]);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(objects) = s.get(key).and_then(Value::as_array) {
            if let Some(o) = objects.iter().find(|v| v.get("$ref").is_some() || v.get("properties").is_some()) {
                return resolve(root, o);
            }
        }
    }
    s
}

/// One step into a JSON document.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn at_mut<'a>(doc: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(doc, |v, step| match step {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// Every (object path, property, default) where `doc` leaves out a property whose schema has a
/// default; recurses into the objects, arrays and maps `doc` holds.
fn defaults_left_out(
    root: &Value,
    schema: &Value,
    doc: &Value,
    at: &[Step],
    out: &mut Vec<(Vec<Step>, String, Value)>,
) {
    let schema = resolve(root, schema);
    let next = |step: Step| {
        let mut path = at.to_vec();
        path.push(step);
        path
    };
    match doc {
        Value::Object(fields) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    if let (Some(default), false) = (prop.get("default"), fields.contains_key(name)) {
                        out.push((at.to_vec(), name.clone(), default.clone()));
                    }
                }
                for (name, value) in fields {
                    if let Some(prop) = props.get(name) {
                        defaults_left_out(root, prop, value, &next(Step::Key(name.clone())), out);
                    }
                }
            } else if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
                for (name, value) in fields {
                    defaults_left_out(root, values, value, &next(Step::Key(name.clone())), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for (i, value) in items.iter().enumerate() {
                    defaults_left_out(root, item, value, &next(Step::Index(i)), out);
                }
            }
        }
        _ => {}
    }
}

/// Configurations whose every optional block is left out, and ones where every block is present
/// but empty, so that each default is tried at every depth.
fn default_probes() -> Vec<(&'static str, Value)> {
    let rl_min = json!({"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s"}}]});
    let rl_all = json!({"rules": [{"name": "a", "match": {"headers": [{"name": "x-a"}]},
                                   "limit": {"requests": 5, "per": "1s"}}], "client_ip": {}});
    let cb_all = json!({"failure": {"ratio": {"threshold": 0.5}}, "open": {}, "half_open": {},
                        "clusters": {"c": {"failure": {"ratio": {"threshold": 0.5}}, "open": {}, "half_open": {}}}});
    let hr_min = json!({"upstreams": [{"cluster": "a"}]});
    let hr_all = json!({"upstreams": [{"cluster": "a", "health_check": {}}], "passive": {},
                        "routes": [{"path_prefix": "/", "upstreams": ["a"]}]});
    vec![
        ("diagnostics", json!({})),
        ("rate_limiter", rl_min.clone()),
        ("rate_limiter", rl_all.clone()),
        ("circuit_breaker", json!({})),
        ("circuit_breaker", cb_all.clone()),
        ("health_router", hr_min.clone()),
        ("health_router", hr_all.clone()),
        ("upstream_guard", json!({})),
        (
            "upstream_guard",
            json!({"diagnostics": {}, "rate_limiter": rl_min, "circuit_breaker": {}, "health_router": hr_min}),
        ),
        (
            "upstream_guard",
            json!({"diagnostics": {}, "rate_limiter": rl_all, "circuit_breaker": cb_all, "health_router": hr_all}),
        ),
    ]
}

#[test]
fn every_schema_default_is_what_the_parser_does_without_the_field() {
    let mut tried = 0;
    for (module, doc) in default_probes() {
        let root = schema(module);
        let base = parse(module, &doc).unwrap_or_else(|e| panic!("{module} {doc}: {e}"));
        let mut cases = Vec::new();
        defaults_left_out(&root, &root, &doc, &[], &mut cases);
        for (path, name, default) in cases {
            let mut with = doc.clone();
            at_mut(&mut with, &path)[name.as_str()] = default.clone();
            let parsed =
                parse(module, &with).unwrap_or_else(|e| panic!("{module}: the default of {name} is refused: {e}"));
            assert_eq!(parsed, base, "{module}: {path:?}.{name} = {default} is not what the parser does without it");
            tried += 1;
        }
    }
    assert!(tried >= 60, "only {tried} defaults were tried");
}

/// Every plugin configuration in envoy-examples/ (Envoy envoy.yaml, Istio, Envoy Gateway), as
/// (file, kind, module, config).
fn example_configs() -> Vec<(String, String, String, Value)> {
    let script = paths::target_dir().join("npm").join("validate-manifests.mjs");
    assert!(script.is_file(), "{} is missing: run `cargo xtask setup`", script.display());
    let out = Command::new("node")
        .arg(&script)
        .arg(paths::workspace_root().join("envoy-examples"))
        .arg(paths::workspace_root().join("test-harness/schemas/envoy-gateway-envoyextensionpolicy.schema.json"))
        .output()
        .expect("node is missing: run `cargo xtask setup`");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let text = |k: &str| v[k].as_str().unwrap().to_string();
            (text("file"), text("kind"), text("filter"), v["config"].clone())
        })
        .collect()
}

#[test]
fn every_example_configuration_validates_against_its_schema_and_the_parser() {
    let mut items: Vec<(String, String, String, Value)> = example_configs();
    for kind in ["Envoy", "WasmPlugin", "EnvoyExtensionPolicy"] {
        assert!(items.iter().filter(|i| i.1 == kind).count() >= 4, "too few {kind} configurations");
    }
    // upstream_guard.wasm's configuration: the chain example's four filters as its sections.
    let chain: Vec<_> = items.iter().filter(|i| i.0.ends_with("chain/envoy.yaml")).cloned().collect();
    assert_eq!(chain.len(), 4);
    let suite: serde_json::Map<String, Value> = chain.into_iter().map(|(_, _, m, c)| (m, c)).collect();
    items.push((
        "chain/envoy.yaml as one module".into(),
        "suite".into(),
        "upstream_guard".into(),
        Value::Object(suite),
    ));

    let results = validate(&items.iter().map(|(_, _, m, c)| (m.clone(), c.clone())).collect::<Vec<_>>());
    for ((file, kind, module, config), result) in items.iter().zip(results) {
        if let Err(errors) = result {
            panic!("{file} ({kind}, {module}): the schema refuses {config}: {errors:?}");
        }
        parse(module, config).unwrap_or_else(|e| panic!("{file} ({kind}, {module}): the filter refuses it: {e}"));
    }
}

/// All the descriptions in a schema, on one line.
fn descriptions(schema: &Value) -> String {
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(d)) = m.get("description") {
                    out.push_str(&d.replace('\n', " "));
                    out.push(' ');
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = String::new();
    walk(schema, &mut out);
    out
}

/// The schema refuses the configuration too (otherwise: the phrase of the schema's descriptions
/// that says only the filter checks it).
const SCHEMA_REFUSES: Option<&str> = None;

#[test]
fn configurations_the_filter_refuses_are_refused_by_the_schema_or_documented_as_filter_only() {
    let rule = |extra: Value| {
        let mut r = json!({"name": "a", "limit": {"requests": 5, "per": "1s"}});
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"rules": [r]})
    };
    let with_limit = |limit: Value| json!({"rules": [{"name": "a", "limit": limit}]});
    let up = |extra: Value| {
        let mut d = json!({"upstreams": [{"cluster": "a"}]});
        d.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        d
    };
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("diagnostics", json!([]), SCHEMA_REFUSES),
        ("diagnostics", json!({"header": ""}), SCHEMA_REFUSES),
        ("diagnostics", json!({"header": "X-Diagnosis"}), SCHEMA_REFUSES),
        ("diagnostics", json!({"trusted_cidrs": ["10.0.0.0/33"]}), SCHEMA_REFUSES),
        ("diagnostics", json!({"trusted_cidrs": ["10.0.0.256"]}), SCHEMA_REFUSES),
        ("diagnostics", json!({"trusted_cidrs": ["backend"]}), SCHEMA_REFUSES),
        ("diagnostics", json!({"on": "sometimes"}), SCHEMA_REFUSES),
        ("diagnostics", json!({"expose_upstream": "everyone"}), SCHEMA_REFUSES),
        ("diagnostics", json!({"json_body": "yes"}), SCHEMA_REFUSES),
        ("diagnostics", json!({"jsonbody": true}), SCHEMA_REFUSES),
        ("diagnostics", json!({"debug_header": "x-debug", "debug_token": ""}), SCHEMA_REFUSES),
        ("diagnostics", json!({"debug_header": "x-debug"}), Some("Set both or neither: checked by the filter only")),
        ("diagnostics", json!({"debug_token": "s3cret"}), Some("Set both or neither: checked by the filter only")),
        ("rate_limiter", json!({}), SCHEMA_REFUSES),
        ("rate_limiter", json!({"rules": []}), SCHEMA_REFUSES),
        ("rate_limiter", with_limit(json!({"requests": 0, "per": "1s"})), SCHEMA_REFUSES),
        ("rate_limiter", with_limit(json!({"requests": -5, "per": "1s"})), SCHEMA_REFUSES),
        ("rate_limiter", with_limit(json!({"requests": 5, "per": "1 sec"})), SCHEMA_REFUSES),
        ("rate_limiter", with_limit(json!({"requests": 5, "per": "0s"})), SCHEMA_REFUSES),
        ("rate_limiter", with_limit(json!({"requests": 5, "per": "10"})), SCHEMA_REFUSES),
        ("rate_limiter", with_limit(json!({"requests": 5, "per": "1s", "burst": 0})), SCHEMA_REFUSES),
        ("rate_limiter", with_limit(json!({"requests": 5})), SCHEMA_REFUSES),
        ("rate_limiter", rule(json!({"key": ["ip"]})), SCHEMA_REFUSES),
        ("rate_limiter", rule(json!({"key": []})), SCHEMA_REFUSES),
        ("rate_limiter", rule(json!({"key": [{"header": "X-Tenant"}]})), SCHEMA_REFUSES),
        ("rate_limiter", rule(json!({"key": [{"header": "x-tenant", "constant": "c"}]})), SCHEMA_REFUSES),
        ("rate_limiter", rule(json!({"limt": {}})), SCHEMA_REFUSES),
        ("rate_limiter", rule(json!({"name": ""})), SCHEMA_REFUSES),
        ("rate_limiter", rule(json!({"match": {"path_prefix": "/a", "path_exact": "/b"}})), SCHEMA_REFUSES),
        ("rate_limiter", rule(json!({"match": {"method": "get"}})), SCHEMA_REFUSES),
        ("rate_limiter", rule(json!({"algorithm": "leaky_bucket"})), SCHEMA_REFUSES),
        ("rate_limiter", json!({"rules": [], "status": 200}), SCHEMA_REFUSES),
        (
            "rate_limiter",
            json!({"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s"}}], "status": 200}),
            SCHEMA_REFUSES,
        ),
        (
            "rate_limiter",
            json!({"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s"}}], "max_keys": 0}),
            SCHEMA_REFUSES,
        ),
        (
            "rate_limiter",
            json!({"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s"}}], "cas_retries": 1001}),
            SCHEMA_REFUSES,
        ),
        (
            "rate_limiter",
            json!({"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s"}}], "mode": "dry"}),
            SCHEMA_REFUSES,
        ),
        (
            "rate_limiter",
            json!({"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s"}}], "grpc_status": 17}),
            SCHEMA_REFUSES,
        ),
        (
            "rate_limiter",
            json!({"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s"}}], "client_ip": {"trusted_hops": 65}}),
            SCHEMA_REFUSES,
        ),
        (
            "rate_limiter",
            json!({"rules": [{"name": "a", "limit": {"requests": 5, "per": "1s"}}, {"name": "a", "limit": {"requests": 5, "per": "1s"}}]}),
            Some("uniqueness is checked by the filter only"),
        ),
        (
            "rate_limiter",
            rule(json!({"algorithm": "sliding_window", "limit": {"requests": 5, "per": "1s", "burst": 2}})),
            Some("refused with `sliding_window` by the filter only"),
        ),
        ("rate_limiter", rule(json!({"match": {"path_regex": "("}})), Some("compiled by the filter only")),
        (
            "rate_limiter",
            rule(json!({"match": {"headers": [{"name": "x-a", "present": true, "exact": "v"}]}})),
            Some("`present` and `exact` together are refused by the filter only"),
        ),
        ("circuit_breaker", json!({"failure": {"ratio": {"threshold": 1.5}}}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"failure": {"ratio": {"threshold": 0}}}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"failure": {"ratio": {"min_requests": 10}}}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"failure": {"consecutive": 0}}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"failure": {"statuses": [999]}}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"half_open": {"max_probes": 0}}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"half_open": {"max_probes": 65}}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"open": {"base": "soon"}}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"open": {"multiplier": 0.5}}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"clusters": {"pay": {"half_open": {"successes_to_close": 0}}}}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"clusters": {"pay": {"status": 503}}}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"status": 200}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"failur": {}}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"key_header": "X-User"}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"max_keys": 0}), SCHEMA_REFUSES),
        ("circuit_breaker", json!({"grpc_status": 99}), SCHEMA_REFUSES),
        (
            "circuit_breaker",
            json!({"open": {"base": "10s", "max": "5s"}}),
            Some("at least `base` (checked by the filter only)"),
        ),
        ("health_router", json!({}), SCHEMA_REFUSES),
        ("health_router", json!({"upstreams": []}), SCHEMA_REFUSES),
        ("health_router", json!({"upstreams": [{"cluster": ""}]}), SCHEMA_REFUSES),
        ("health_router", json!({"upstreams": [{"cluster": "my cluster"}]}), SCHEMA_REFUSES),
        ("health_router", json!({"upstreams": [{"cluster": "a", "weight": 0}]}), SCHEMA_REFUSES),
        (
            "health_router",
            json!({"upstreams": [{"cluster": "a", "health_check": {"interval": "often"}}]}),
            SCHEMA_REFUSES,
        ),
        (
            "health_router",
            json!({"upstreams": [{"cluster": "a", "health_check": {"path": "healthz"}}]}),
            SCHEMA_REFUSES,
        ),
        (
            "health_router",
            json!({"upstreams": [{"cluster": "a", "health_check": {"healthy_threshold": 0}}]}),
            SCHEMA_REFUSES,
        ),
        (
            "health_router",
            json!({"upstreams": [{"cluster": "a", "health_check": {"expected_statuses": [42]}}]}),
            SCHEMA_REFUSES,
        ),
        ("health_router", up(json!({"passive": {"ejection": "x"}})), SCHEMA_REFUSES),
        ("health_router", up(json!({"passive": {"consecutive_failures": 0}})), SCHEMA_REFUSES),
        ("health_router", up(json!({"trusted_cidrs": ["x"]})), SCHEMA_REFUSES),
        ("health_router", up(json!({"strategy": "random"})), SCHEMA_REFUSES),
        ("health_router", up(json!({"when_none_healthy": "hope"})), SCHEMA_REFUSES),
        ("health_router", up(json!({"status_path": "health"})), SCHEMA_REFUSES),
        ("health_router", up(json!({"route_header": "X-Cluster"})), SCHEMA_REFUSES),
        ("health_router", up(json!({"routes": [{"path_prefix": "/", "upstreams": []}]})), SCHEMA_REFUSES),
        ("health_router", up(json!({"grpc_status": 20})), SCHEMA_REFUSES),
        (
            "health_router",
            json!({"upstreams": [{"cluster": "a"}, {"cluster": "a"}]}),
            Some("each listed once, checked by the filter only"),
        ),
        (
            "health_router",
            up(json!({"routes": [{"path_prefix": "/", "upstreams": ["b"]}]})),
            Some("Clusters named in `upstreams` (checked by the filter only)"),
        ),
        ("upstream_guard", json!({"rate_limitter": {}}), SCHEMA_REFUSES),
        ("upstream_guard", json!({"rate_limiter": {"rules": []}}), SCHEMA_REFUSES),
        ("upstream_guard", json!({"diagnostics": {"trusted_cidrs": ["10.0.0.0/33"]}}), SCHEMA_REFUSES),
        ("upstream_guard", json!({"circuit_breaker": {"open": {"multiplier": 0}}}), SCHEMA_REFUSES),
        (
            "upstream_guard",
            json!({"health_router": up(json!({"routes": [{"path_prefix": "/", "upstreams": ["b"]}]}))}),
            Some("Clusters named in `upstreams` (checked by the filter only)"),
        ),
    ];
    let results = validate(&cases.iter().map(|(m, c, _)| (m.to_string(), c.clone())).collect::<Vec<_>>());
    for ((module, config, filter_only), result) in cases.iter().zip(results) {
        let refusal = parse(module, config).expect_err(&format!("{module}: the filter accepts {config}"));
        match filter_only {
            None => assert!(
                result.is_err(),
                "{module}: the filter refuses {config} ({refusal}) but the schema accepts it: add the check to \
                 the schema, or say in the field's description that only the filter checks it"
            ),
            Some(phrase) => {
                assert!(
                    result.is_ok(),
                    "{module}: {config} is documented as a filter-only check, yet the schema refuses it"
                );
                assert!(descriptions(&schema(module)).contains(phrase), "{module}: the schema does not say {phrase:?}");
            }
        }
    }
}
