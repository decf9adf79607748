//! `circuit_breaker.wasm`: the circuit_breaker stage alone (see `upstream_guard_stages::circuit_breaker`).
upstream_guard_glue::export_filter!(
    "circuit_breaker",
    (upstream_guard_stages::CircuitBreaker,),
    upstream_guard_stages::circuit_breaker,
    [log]
);
