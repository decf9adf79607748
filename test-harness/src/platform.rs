//! How each platform the project ships manifests for configures the Envoy it runs, as facts the
//! manifests are generated from (`cargo xtask manifests`) and the deployment tests shape a real
//! Envoy by (`tests/platforms_envoy.rs`).
//!
//! A plugin configuration is only right for the proxy it lands in: cluster names come from the
//! platform's naming scheme, the client address from its forwarding settings, and routing from
//! what its route API can express. So those are written down once, here, with where each fact
//! comes from, and nothing else in the project spells them.

use serde_json::{json, Value};

/// The example services behind the gateway, in failover order: `primary` then `secondary`,
/// in namespace `default`, port 8080.
pub const SERVICES: [&str; 2] = ["primary", "secondary"];
/// The example services' namespace and port.
pub const NAMESPACE: &str = "default";
pub const PORT: u16 = 8080;
/// The request header the health router writes and the platform's routes match on.
pub const ROUTE_HEADER: &str = "x-upstream-cluster";

/// What Envoy makes of a route manifest: its routes, in order, and each cluster with the
/// service behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyRoutes {
    pub routes: Vec<Value>,
    /// `(cluster name, service name)`, each cluster once.
    pub clusters: Vec<(String, String)>,
}

/// A route manifest without a field the translation needs: the field's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingField(pub &'static str);

impl std::fmt::Display for MissingField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the route manifest has no {}", self.0)
    }
}

impl std::error::Error for MissingField {}

/// A platform's proxy, as far as a plugin configuration depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// The Istio ingress gateway, behind one load balancer that appends to `x-forwarded-for`.
    ///
    /// - Clusters: `outbound|<port>|<subset>|<service FQDN>` (Istio's `BuildSubsetKey`; seen
    ///   in `istioctl proxy-config clusters`).
    /// - HCM: gateways set `use_remote_address: true`; `meshConfig.defaultConfig.gatewayTopology.numTrustedProxies`
    ///   (here 1, the balancer) becomes `xff_num_trusted_hops`.
    /// - Routes: a `VirtualService` can match a header exactly and send to a destination, not
    ///   name a cluster from a header (no `cluster_header`).
    /// - Failure policy: `WasmPlugin.spec.failStrategy`.
    IstioIngress,
    /// Envoy Gateway (v1.x), defaults.
    ///
    /// - Clusters: one per `HTTPRoute` rule, `httproute/<namespace>/<name>/rule/<index>`.
    /// - HCM: `use_remote_address: true`; `ClientTrafficPolicy.spec.clientIPDetection.xForwardedFor.numTrustedHops`
    ///   (default 0) becomes `xff_num_trusted_hops`.
    /// - Routes: an `HTTPRoute` rule can match a header exactly and send to backends, not name
    ///   a cluster from a header.
    /// - Failure policy: `EnvoyExtensionPolicy.spec.wasm[].failOpen`.
    EnvoyGateway,
}

impl Platform {
    /// Every platform with manifests.
    pub const ALL: [Platform; 2] = [Platform::IstioIngress, Platform::EnvoyGateway];

    /// The folder of its manifests under `envoy-examples/`.
    pub fn dir(self) -> &'static str {
        match self {
            Platform::IstioIngress => "istio",
            Platform::EnvoyGateway => "envoy-gateway",
        }
    }

    /// `xff_num_trusted_hops` of its proxies in the example deployment.
    pub fn xff_num_trusted_hops(self) -> u32 {
        match self {
            Platform::IstioIngress => 1,
            Platform::EnvoyGateway => 0,
        }
    }

    /// The HttpConnectionManager fields the platform sets that decide the client address.
    pub fn hcm(self) -> [(&'static str, Value); 2] {
        [("use_remote_address", json!(true)), ("xff_num_trusted_hops", json!(self.xff_num_trusted_hops()))]
    }

    /// The name of the route manifest's `index`-th destination, as the platform names its
    /// cluster. Envoy Gateway names a cluster after the rule that holds it, so the rule that
    /// sends to service `i` is rule `i` (see [`Platform::route_manifest`]).
    pub fn cluster(self, index: usize) -> String {
        match self {
            Platform::IstioIngress => {
                format!("outbound|{PORT}||{}.{NAMESPACE}.svc.cluster.local", SERVICES.get(index).unwrap_or(&"primary"))
            }
            Platform::EnvoyGateway => format!("httproute/{NAMESPACE}/backend/rule/{index}"),
        }
    }

    /// The example upstreams' clusters, in failover order.
    pub fn clusters(self) -> Vec<String> {
        (0..SERVICES.len()).map(|i| self.cluster(i)).collect()
    }

    /// The route the health router drives: one header-match rule per upstream (the header's
    /// value is that upstream's cluster name), then a catch-all to the primary for when the
    /// module is not running. Whatever a client writes in the header, it reaches only a
    /// declared upstream.
    pub fn route_manifest(self) -> String {
        match self {
            Platform::IstioIngress => {
                let mut http = String::new();
                for (i, svc) in SERVICES.iter().enumerate() {
                    http.push_str(&format!(
                        "  - match:\n    - headers:\n        {ROUTE_HEADER}:\n          exact: \"{}\"\n    route:\n    \
                         - destination:\n        host: {svc}.{NAMESPACE}.svc.cluster.local\n        port:\n          \
                         number: {PORT}\n",
                        self.cluster(i)
                    ));
                }
                format!(
                    "# The route upstream-guard's health router drives: generated by `cargo xtask manifests`.\n\
                     apiVersion: networking.istio.io/v1\n\
                     kind: VirtualService\n\
                     metadata:\n  name: backend\n  namespace: {NAMESPACE}\n\
                     spec:\n  hosts:\n  - \"*\"\n  gateways:\n  - istio-system/ingressgateway\n  http:\n{http}  \
                     - route:\n    - destination:\n        host: {}.{NAMESPACE}.svc.cluster.local\n        port:\n          \
                     number: {PORT}\n",
                    SERVICES[0]
                )
            }
            Platform::EnvoyGateway => {
                let mut rules = String::new();
                for (i, svc) in SERVICES.iter().enumerate() {
                    rules.push_str(&format!(
                        "  - matches:\n    - headers:\n      - name: {ROUTE_HEADER}\n        value: \"{}\"\n    \
                         backendRefs:\n    - name: {svc}\n      port: {PORT}\n",
                        self.cluster(i)
                    ));
                }
                format!(
                    "# The route upstream-guard's health router drives: generated by `cargo xtask manifests`.\n\
                     apiVersion: gateway.networking.k8s.io/v1\n\
                     kind: HTTPRoute\n\
                     metadata:\n  name: backend\n  namespace: {NAMESPACE}\n\
                     spec:\n  parentRefs:\n  - name: eg\n  rules:\n{rules}  - backendRefs:\n    - name: {}\n      \
                     port: {PORT}\n",
                    SERVICES[0]
                )
            }
        }
    }

    /// The Envoy routes and cluster names the platform makes of its route manifest (given as
    /// JSON, parsed from the shipped file).
    pub fn envoy_routes(self, manifest: &Value) -> Result<EnvoyRoutes, MissingField> {
        let header_match = |name: &str, value: &str| json!([{"name": name, "string_match": {"exact": value}}]);
        let mut routes = Vec::new();
        let mut clusters = Vec::new();
        match self {
            Platform::IstioIngress => {
                let http = manifest["spec"]["http"].as_array().ok_or(MissingField("spec.http"))?;
                for h in http {
                    let dest = &h["route"][0]["destination"];
                    let host = dest["host"].as_str().ok_or(MissingField("spec.http[].route[0].destination.host"))?;
                    let port = dest["port"]["number"]
                        .as_u64()
                        .ok_or(MissingField("spec.http[].route[0].destination.port.number"))?;
                    let cluster = format!("outbound|{port}||{host}");
                    let service = host.split('.').next().unwrap_or(host).to_string();
                    let mut m = json!({"prefix": "/"});
                    if let Some(headers) = h["match"][0]["headers"].as_object() {
                        let hs: Vec<Value> = headers
                            .iter()
                            .filter_map(|(k, v)| v["exact"].as_str().map(|x| header_match(k, x)[0].clone()))
                            .collect();
                        m["headers"] = json!(hs);
                    }
                    routes.push(json!({"match": m, "route": {"cluster": cluster}}));
                    // Istio makes one cluster per service port, however many routes send to it.
                    if !clusters.iter().any(|(c, _)| *c == cluster) {
                        clusters.push((cluster, service));
                    }
                }
            }
            Platform::EnvoyGateway => {
                let ns = manifest["metadata"]["namespace"].as_str().unwrap_or("default");
                let name = manifest["metadata"]["name"].as_str().ok_or(MissingField("metadata.name"))?;
                let rules = manifest["spec"]["rules"].as_array().ok_or(MissingField("spec.rules"))?;
                // Envoy Gateway orders a rule with header matches before a catch-all.
                for (i, r) in rules.iter().enumerate() {
                    let cluster = format!("httproute/{ns}/{name}/rule/{i}");
                    let service = r["backendRefs"][0]["name"]
                        .as_str()
                        .ok_or(MissingField("spec.rules[].backendRefs[0].name"))?
                        .to_string();
                    let mut m = json!({"prefix": "/"});
                    if let Some(headers) = r["matches"][0]["headers"].as_array() {
                        let hs: Vec<Value> = headers
                            .iter()
                            .filter_map(|h| Some(header_match(h["name"].as_str()?, h["value"].as_str()?)[0].clone()))
                            .collect();
                        m["headers"] = json!(hs);
                    }
                    routes.push(json!({"match": m, "route": {"cluster": cluster}}));
                    clusters.push((cluster, service));
                }
            }
        }
        Ok(EnvoyRoutes { routes, clusters })
    }
}

/// An Istio sidecar, inbound: the proxy in front of one workload (`app: backend`), which its
/// `WasmPlugin` selects with `match: [{mode: SERVER}]`.
///
/// - Cluster: the local workload, `inbound|<port>||` (one route, Istio's own).
/// - HCM: `use_remote_address: false` (Istio's inbound listener), `xff_num_trusted_hops` 0: the
///   client address Envoy reports is the last `x-forwarded-for` entry, which the gateway appended,
///   or which any pod that can reach the workload wrote. So nothing at a sidecar may be keyed or
///   trusted on the client address: the shipped configuration limits the workload as a whole and
///   shows diagnoses to no address.
/// - Failure policy: `WasmPlugin.spec.failStrategy`.
pub mod sidecar {
    use serde_json::{json, Value};

    /// The shipped manifest, under `envoy-examples/`.
    pub const MANIFEST: &str = "istio/upstream_guard_sidecar.yaml";
    /// The workload the manifest selects.
    pub const APP: &str = "backend";

    /// The inbound cluster of the workload's port.
    pub fn cluster() -> String {
        format!("inbound|{}||", super::PORT)
    }

    /// The HttpConnectionManager fields Istio sets on a sidecar's inbound listener.
    pub fn hcm() -> [(&'static str, Value); 2] {
        [("use_remote_address", json!(false)), ("xff_num_trusted_hops", json!(0))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_gateway_names_a_cluster_after_its_rule() {
        assert_eq!(Platform::EnvoyGateway.cluster(1), "httproute/default/backend/rule/1");
        assert_eq!(Platform::IstioIngress.cluster(0), "outbound|8080||primary.default.svc.cluster.local");
    }
}
