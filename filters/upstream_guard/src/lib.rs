//! `upstream_guard.wasm`: all four stages in one module (see `upstream_guard_stages::suite`).
upstream_guard_glue::export_filter!(
    "upstream_guard",
    upstream_guard_stages::Suite,
    upstream_guard_stages::suite,
    [response_body, response_trailers, log, tick, http_calls, grpc]
);
