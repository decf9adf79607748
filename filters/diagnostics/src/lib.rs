//! `diagnostics.wasm`: the diagnostics stage alone (see `upstream_guard_stages::diagnostics`).
upstream_guard_glue::export_filter!(
    "diagnostics",
    (upstream_guard_stages::Diagnostics,),
    upstream_guard_stages::diagnostics,
    [response_body, response_trailers, log]
);
