//! Envoy bootstrap configs for tests, as JSON (Envoy reads `.json` configs natively).
//!
//! [`Bootstrap`] gives one HTTP listener named `main` and an admin endpoint, both on
//! `127.0.0.1:0`; tests add filters, routes and clusters, and may edit any generated value
//! (`cluster["circuit_breakers"] = json!(…)`) before starting Envoy.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// The HTTP wasm filter entry that loads `wasm` with the plugin configuration `config`.
pub fn wasm_filter(name: &str, wasm: &Path, config: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config.to_string(),
                },
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}},
                },
            },
        },
    })
}

/// A static cluster with one loopback endpoint.
pub fn cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port()}}}}]}],
        },
    })
}

/// A static cluster with one loopback endpoint that speaks HTTP/2 (cleartext, prior knowledge):
/// for gRPC services such as a rate limit service.
pub fn http2_cluster(name: &str, addr: SocketAddr) -> Value {
    let mut c = cluster(name, addr);
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        },
    });
    c
}

/// A route sending `prefix` to `cluster`.
pub fn route(prefix: &str, cluster: &str) -> Value {
    json!({"name": format!("route-{cluster}"), "match": {"prefix": prefix}, "route": {"cluster": cluster}})
}

/// Envoy's buffer filter: holds a request's headers from the router until its body is complete
/// (at most `max_request_bytes`, else 413). `upstream_guard`'s LLM stage needs it right after the
/// module: it routes once the body is in.
pub fn buffer_filter(max_request_bytes: u64) -> Value {
    json!({
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": max_request_bytes,
        },
    })
}

/// A route sending requests under `prefix` to `cluster` when the LLM stage chose that cluster
/// (the filter state `wasm.upstream_guard.llm_cluster`).
pub fn llm_route(prefix: &str, cluster: &str) -> Value {
    json!({
        "name": format!("llm-{cluster}"),
        "match": {"prefix": prefix, "filter_state": [
            {"key": "wasm.upstream_guard.llm_cluster", "string_match": {"exact": cluster}}]},
        "route": {"cluster": cluster, "timeout": "30s"},
    })
}

/// A route sending `prefix` to `cluster` with route-level `rate_limits` (a list of Envoy
/// `config.route.v3.RateLimit`, each a list of actions that build one descriptor).
pub fn rate_limited_route(prefix: &str, cluster: &str, rate_limits: Value) -> Value {
    let mut r = route(prefix, cluster);
    r["route"]["rate_limits"] = rate_limits;
    r
}

/// One `rate_limits` entry whose descriptor is `(descriptor_key, value of request header
/// header_name)`; requests without the header send no descriptor for it.
pub fn header_rate_limit(header_name: &str, descriptor_key: &str) -> Value {
    json!({"actions": [{"request_headers": {"header_name": header_name, "descriptor_key": descriptor_key}}]})
}

/// Envoy's native global rate limit filter (`envoy.filters.http.ratelimit`) asking the rate
/// limit service behind cluster `rls_cluster` (see [`http2_cluster`]) about `domain`, waiting
/// at most `timeout`; when the service fails or is late, requests pass unless
/// `failure_mode_deny`. Adds the draft-03 `x-ratelimit-*` response headers.
pub fn native_ratelimit_filter(domain: &str, rls_cluster: &str, timeout: Duration, failure_mode_deny: bool) -> Value {
    json!({
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": domain,
            "failure_mode_deny": failure_mode_deny,
            "timeout": format!("{:.3}s", timeout.as_secs_f64()),
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {
                "grpc_service": {"envoy_grpc": {"cluster_name": rls_cluster}},
                "transport_api_version": "V3",
            },
        },
    })
}

/// A bootstrap under construction.
#[derive(Debug, Clone, Default)]
pub struct Bootstrap {
    pub filters: Vec<Value>,
    pub routes: Vec<Value>,
    pub clusters: Vec<Value>,
    /// Extra fields of the listener's HttpConnectionManager (`use_remote_address`, ...).
    pub hcm: serde_json::Map<String, Value>,
}

impl Bootstrap {
    /// No filters, routes or clusters yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an HTTP filter (the router is added last by [`Bootstrap::build`]).
    pub fn filter(mut self, f: Value) -> Self {
        self.filters.push(f);
        self
    }

    /// Appends a route.
    pub fn route(mut self, r: Value) -> Self {
        self.routes.push(r);
        self
    }

    /// Appends a cluster.
    pub fn cluster(mut self, c: Value) -> Self {
        self.clusters.push(c);
        self
    }

    /// Sets a field of the HttpConnectionManager.
    pub fn hcm(mut self, field: &str, value: Value) -> Self {
        self.hcm.insert(field.to_string(), value);
        self
    }

    /// An edge listener: `use_remote_address: true`, so that Envoy's idea of the client
    /// (`source.address`) is the real peer, never a header the client wrote.
    pub fn edge(self) -> Self {
        self.hcm("use_remote_address", Value::Bool(true))
    }

    /// The bootstrap document.
    pub fn build(&self) -> Value {
        let mut filters = self.filters.clone();
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }));
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "route_config": {
                "name": "local",
                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": self.routes}],
            },
            "http_filters": filters,
        });
        for (k, v) in &self.hcm {
            hcm[k] = v.clone();
        }
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm,
                    }]}],
                }],
                "clusters": self.clusters,
            },
        })
    }
}

/// Turns a static bootstrap (as [`Bootstrap::build`] makes it) into one whose listeners come
/// from a file (LDS from a path, as a control plane that writes files would serve them): the
/// bootstrap, and the listener to write with [`write_lds`]. Envoy watches the file's directory
/// and applies each new version; a version it refuses leaves the previous one serving.
pub fn file_lds(mut bootstrap: Value, lds_path: &Path) -> (Value, Value) {
    let listener = bootstrap["static_resources"]["listeners"][0].take();
    if let Some(r) = bootstrap["static_resources"].as_object_mut() {
        r.remove("listeners");
    }
    bootstrap["node"] = json!({"id": "upstream-guard-test", "cluster": "upstream-guard-test"});
    bootstrap["dynamic_resources"] = json!({
        "lds_config": {"path_config_source": {"path": lds_path.display().to_string()}, "resource_api_version": "V3"},
    });
    (bootstrap, listener)
}

/// Writes version `version` of the listeners file atomically (a new file moved into place, which
/// is what Envoy's file watcher reacts to).
pub fn write_lds(lds_path: &Path, version: u32, listener: &Value) -> std::io::Result<()> {
    let mut l = listener.clone();
    l["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    let doc = json!({"version_info": version.to_string(), "resources": [l]});
    let tmp = lds_path.with_extension(format!("tmp{version}"));
    std::fs::write(&tmp, doc.to_string())?;
    std::fs::rename(&tmp, lds_path)
}

/// The two shapes a stage ships in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `<name>.wasm` under Envoy's V8.
    Wasm,
    /// `libupstream_guard.so`, Envoy's dynamic module filter.
    Native,
}

impl Shape {
    /// Both shapes, wasm first.
    pub const ALL: [Shape; 2] = [Shape::Wasm, Shape::Native];

    /// `wasm` or `native`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Wasm => "wasm",
            Shape::Native => "native",
        }
    }
}

/// The filter that runs module `name` (`upstream_guard`, or one stage's name such as
/// `rate_limiter`) in `shape`, configured by `config` (the module's own JSON). The dynamic module
/// carries every stage in one library: a single stage runs as the combined module with that one
/// section, which is the same stage in a one-element pipeline.
pub fn module_filter(shape: Shape, name: &str, config: &Value) -> Value {
    match shape {
        Shape::Wasm => match crate::paths::wasm_path(name) {
            Ok(path) => wasm_filter(name, &path, config),
            Err(e) => panic_free_missing(&e.to_string()),
        },
        Shape::Native => {
            let suite =
                if upstream_guard::stages::find(name).is_some() { json!({ name: config }) } else { config.clone() };
            dynamic_module_filter(name, &suite)
        }
    }
}

/// The module name a stage's log lines carry in `shape` (the dynamic module is always
/// `upstream_guard`; a single-policy `.wasm` is its stage's name).
pub fn module_name(shape: Shape, name: &str) -> &str {
    match shape {
        Shape::Wasm => name,
        Shape::Native => "upstream_guard",
    }
}

/// A filter entry no Envoy accepts, naming what is missing (Envoy's refusal then says why).
fn panic_free_missing(what: &str) -> Value {
    json!({"name": format!("missing: {what}"), "typed_config": {"@type": "type.googleapis.com/missing"}})
}

/// The dynamic-module HTTP filter loading `libupstream_guard.so` (found through
/// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`, which [`crate::envoy::Envoy`] sets) with the combined
/// module's JSON configuration; `filter_name` is passed to the module (it names the filter in
/// logs).
pub fn dynamic_module_filter(filter_name: &str, config: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"name": "upstream_guard", "do_not_close": true, "metrics_namespace": "upstream_guard"},
            "filter_name": filter_name,
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": config.to_string(),
            },
        },
    })
}
