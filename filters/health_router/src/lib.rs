//! `health_router.wasm`: the health_router stage alone (see `upstream_guard_stages::health_router`).
upstream_guard_glue::export_filter!(
    "health_router",
    (upstream_guard_stages::HealthRouter,),
    upstream_guard_stages::health_router,
    [tick, http_calls]
);
