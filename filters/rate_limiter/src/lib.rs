//! `rate_limiter.wasm`: the rate_limiter stage alone (see `upstream_guard_stages::rate_limiter`).
upstream_guard_glue::export_filter!(
    "rate_limiter",
    (upstream_guard_stages::RateLimiter,),
    upstream_guard_stages::rate_limiter,
    [tick, grpc]
);
