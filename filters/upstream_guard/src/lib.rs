//! `upstream_guard.wasm`: every stage in one module (see `upstream_guard_stages::suite`).
upstream_guard_glue::export_filter!(
    "upstream_guard",
    upstream_guard_stages::Suite,
    upstream_guard_stages::suite,
    [request_body, response_body, response_trailers, log, tick, http_calls, grpc]
);
