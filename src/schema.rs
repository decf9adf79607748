//! JSON Schemas of every plugin configuration, generated from the very types the parser reads.
//!
//! The schemas exist for editors and CI checks of configurations written by hand; generating them
//! from the serde types (doc comments become descriptions, defaults are the parser's) means a
//! field cannot be added, renamed or re-defaulted without the schema following.
//! `cargo xtask schemas` writes them to `envoy-examples/schemas/`, and a test fails when the
//! committed files differ from what these types generate. Rules that span several fields (unique
//! rule names, `debug_header` with `debug_token`, `open.max` ≥ `open.base`, routes naming known
//! upstreams) are checked by the filter only; their descriptions say so.
//!
//! Compiled only with the `schema` feature: the filters never carry it.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Value};

use crate::breaker::BreakerJson;
use crate::diagnose::DiagnosticsJson;
use crate::health::HealthJson;
use crate::ratelimit::RateLimitJson;
use crate::suite::SuiteJson;

/// A duration the parser accepts and that is not zero: `250ms`, `1s`, `1.5s`, `1m`, `1h` (also
/// `ns`, `us`), or several written together as Go and Istio write them (`1m30s`). Durations too
/// long to count in nanoseconds are refused by the filter only.
pub const DURATION: &str = r"^\s*(?=[^1-9]*[1-9])([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+\s*$";

/// A duration that may be zero.
pub const DURATION_OR_ZERO: &str = r"^\s*([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+\s*$";

/// A lowercase HTTP header name (an RFC 9110 token without uppercase letters).
pub const HEADER_NAME: &str = r"^[a-z0-9!#$%&'*+.^_`|~-]+$";

/// An IPv4 block (`10.0.0.0/8`, prefix 0–32) or an IPv6 one (`::1/128`, prefix 0–128), or a bare
/// address. The exact IPv6 address syntax is checked by the filter only.
pub const CIDR: &str = concat!(
    r"^\s*(((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    r"(/0*(3[0-2]|[12]?[0-9]))?",
    r"|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(/0*(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)\s*$"
);

/// A path: starts with `/`.
pub const PATH: &str = r"^/";

/// Every schema: (file stem, schema), for each module of [`crate::stages::modules`]. The file is
/// `envoy-examples/schemas/<stem>.schema.json`; the stem is the module name (`upstream_guard` is
/// the combined module).
pub fn all() -> Vec<(&'static str, Value)> {
    crate::stages::modules().into_iter().filter_map(|m| Some((m, of(m)?))).collect()
}

/// The schema of module `name`'s configuration (the combined module, or one stage's section).
pub fn of(name: &str) -> Option<Value> {
    Some(match name {
        crate::stages::COMBINED => root::<SuiteJson>(),
        "diagnostics" => root::<DiagnosticsJson>(),
        "rate_limiter" => root::<RateLimitJson>(),
        "llm" => root::<crate::llm::LlmJson>(),
        "health_router" => root::<HealthJson>(),
        "concurrency" => root::<crate::concurrency::ConcurrencyJson>(),
        "circuit_breaker" => root::<BreakerJson>(),
        _ => return None,
    })
}

/// The schema of one module's configuration (JSON Schema draft 2020-12), with the `$schema`
/// property the parser accepts at the top level so that a configuration file can name its schema.
pub fn root<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    drop_null_defaults(&mut schema);
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert(
            "$schema".into(),
            json!({
                "description": "The schema this file follows (for editors); the filter ignores it.",
                "type": "string",
            }),
        );
    }
    schema
}

/// Removes `"default": null`: an optional field the parser leaves unset (its description says
/// what that means) has no default value to show.
fn drop_null_defaults(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("default").is_some_and(Value::is_null) {
                map.remove("default");
            }
            map.values_mut().for_each(drop_null_defaults);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null_defaults),
        _ => {}
    }
}

/// The text of a schema file: pretty JSON and a final newline.
pub fn file_text(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_stage_and_module_has_a_schema() {
        for stage in crate::stages::STAGES {
            assert!(super::of(stage.section).is_some(), "no schema for stage {}", stage.section);
        }
        let stems: Vec<&str> = super::all().into_iter().map(|(m, _)| m).collect();
        assert_eq!(stems, crate::stages::modules());
        let combined = super::of(crate::stages::COMBINED).unwrap();
        let mut sections: Vec<&str> = combined["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "$schema" && *k != crate::suite::SHARED_SECTIONS[0])
            .collect();
        sections.sort_unstable();
        let mut stages: Vec<&str> = crate::stages::STAGES.iter().map(|s| s.section).collect();
        stages.sort_unstable();
        assert_eq!(sections, stages, "the combined configuration's sections are the stages (and `trust`)");
    }
}
