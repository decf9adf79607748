//! Envoy bootstrap configs for tests, as JSON (Envoy reads `.json` configs natively).
//!
//! [`Bootstrap`] gives one HTTP listener named `main` and an admin endpoint, both on
//! `127.0.0.1:0`; tests add filters, routes and clusters, and may edit any generated value
//! (`cluster["circuit_breakers"] = json!(…)`) before starting Envoy.

use std::net::SocketAddr;
use std::path::Path;

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

/// A route sending `prefix` to `cluster`.
pub fn route(prefix: &str, cluster: &str) -> Value {
    json!({"name": format!("route-{cluster}"), "match": {"prefix": prefix}, "route": {"cluster": cluster}})
}

/// A bootstrap under construction.
#[derive(Debug, Clone, Default)]
pub struct Bootstrap {
    pub filters: Vec<Value>,
    pub routes: Vec<Value>,
    pub clusters: Vec<Value>,
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

    /// The bootstrap document.
    pub fn build(&self) -> Value {
        let mut filters = self.filters.clone();
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }));
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "route_config": {
                                "name": "local",
                                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": self.routes}],
                            },
                            "http_filters": filters,
                        },
                    }]}],
                }],
                "clusters": self.clusters,
            },
        })
    }
}
