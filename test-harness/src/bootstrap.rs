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
