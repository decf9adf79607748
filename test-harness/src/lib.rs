//! # test-harness
//!
//! Test support shared by every upstream-guard filter:
//!
//! - [`envoy`]: starts a real Envoy 1.40 (from `ENVOY_BIN` or the project-local venv that
//!   `cargo xtask setup` fills) on ephemeral loopback ports, waits for `/ready`, reads stats and
//!   listener addresses, keeps the log for failure messages, and stops it on drop;
//! - [`bootstrap`]: builds Envoy bootstrap configs (JSON) with our wasm filters in them;
//! - [`backend`]: programmable loopback backends (status codes, hangs, resets, closes, TLS with
//!   self-signed or expired certificates, a health path that fails or passes on command);
//! - [`llm_backend`]: a fake OpenAI-compatible provider (JSON and event-stream answers, chunk
//!   delays, usage on or off, 429 with any rate-limit headers, 5xx and 529);
//! - [`http`]: a small blocking HTTP/1.1 client for assertions on status, headers and body, and
//!   for when a streamed response's first byte arrived;
//! - [`platform`]: how Istio's ingress gateway and Envoy Gateway configure their proxies (cluster
//!   names, client address settings, routes), which the manifests and deployment tests share;
//! - [`redis`]: a throw-away `redis-server` on a free loopback port, for global rate limits
//!   (the `ug-rls-server` crate beside this one is the rate limit service that uses it).
//! - [`host`]: the deterministic proxy-wasm host (the `proxy-wasm-test-host` crate), and
//!   [`wasi_run`], which runs a `wasm32-wasip1` command module such as the core's unit tests.
//!
//! Nothing here is global: every test owns its Envoy and backends, so tests run in parallel.

pub mod backend;
pub mod bootstrap;
pub mod config_fuzz;
pub mod envoy;
pub mod fuzz;
pub mod host;
pub mod http;
pub mod llm_backend;
pub mod paths;
pub mod platform;
pub mod redis;

pub use proxy_wasm_test_host::wasi_run;

use std::fmt;

/// Why a harness operation failed. Messages say what to do about it.
#[derive(Debug)]
pub enum Error {
    /// An I/O operation failed.
    Io { context: String, source: std::io::Error },
    /// A build artefact or tool is missing.
    Missing { what: String, fix: String },
    /// Envoy exited or never became ready; carries its log.
    Envoy { problem: String, log: String },
    /// A peer broke HTTP.
    Protocol { problem: String },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Missing { what, fix } => write!(f, "{what} is missing: {fix}"),
            Error::Envoy { problem, log } => write!(f, "envoy: {problem}\n--- envoy log ---\n{log}"),
            Error::Protocol { problem } => write!(f, "HTTP: {problem}"),
        }
    }
}

impl std::error::Error for Error {}

/// Result with the harness error.
pub type Result<T> = std::result::Result<T, Error>;

/// Polls `f` every 50 ms until it holds or `limit` has passed, and says whether it held: waits
/// for an asynchronous effect (a health check, a counter) without a fixed sleep.
pub fn eventually(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// GETs `path` from `addr`, checks the status, and returns the parsed `x-upstream-diagnosis`
/// (panics when the request fails or the header is missing or malformed: the test fails).
#[allow(clippy::panic)]
pub fn diagnosed_get(
    addr: std::net::SocketAddr,
    path: &str,
    status: u16,
) -> std::collections::BTreeMap<String, String> {
    let r = http::get(addr, path, &[]).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status, status, "GET {path}: {r:?}");
    let header = r.header("x-upstream-diagnosis").unwrap_or_else(|| panic!("GET {path}: no diagnosis: {r:?}"));
    parse_diagnosis(header).unwrap_or_else(|| panic!("GET {path}: malformed diagnosis {header:?}"))
}

/// Parses an `x-upstream-diagnosis` value (an RFC 8941 Dictionary of tokens, strings and
/// integers) into key → value text, unescaping strings. Strict: `None` on anything the RFC does
/// not allow (a byte outside printable ASCII, an escape other than `\"` and `\\`, a bad key,
/// token or integer, a member repeated, text between members), so a test can assert the header
/// is well-formed and that nothing a client or upstream wrote broke out of its string.
pub fn parse_diagnosis(value: &str) -> Option<std::collections::BTreeMap<String, String>> {
    // Visible ASCII and spaces, plus the tab that optional white space around commas may hold
    // (never inside a string: checked there).
    if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        return None;
    }
    let mut out = std::collections::BTreeMap::new();
    let mut rest = value;
    loop {
        let eq = rest.find('=')?;
        let key = &rest[..eq];
        if !upstream_guard::sfv::is_key(key) {
            return None;
        }
        rest = &rest[eq + 1..];
        let val;
        if let Some(body) = rest.strip_prefix('"') {
            let mut s = String::new();
            let mut chars = body.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next()?.1 {
                        e @ ('"' | '\\') => s.push(e),
                        _ => return None,
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    '\t' => return None,
                    _ => s.push(c),
                }
            }
            val = s;
            rest = body[end? + 1..].trim_start_matches([' ', '\t']);
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let item = rest[..end].trim_end_matches([' ', '\t']);
            let integer = {
                let digits = item.strip_prefix('-').unwrap_or(item);
                !digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit())
            };
            if !integer && !upstream_guard::sfv::is_token(item) {
                return None;
            }
            val = item.to_string();
            rest = &rest[end..];
        }
        if out.insert(key.to_string(), val).is_some() {
            return None;
        }
        if rest.is_empty() {
            return Some(out);
        }
        rest = rest.strip_prefix(',')?.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return None;
        }
    }
}

/// Runs each named test function (`fn name(shape: Shape)`) once per shape that ships the stages:
/// `wasm::name` and `native::name`.
#[macro_export]
macro_rules! both_shapes {
    ($($name:ident),* $(,)?) => {
        mod wasm {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::bootstrap::Shape::Wasm)
                }
            )*
        }
        mod native {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::bootstrap::Shape::Native)
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::parse_diagnosis;

    #[test]
    fn diagnosis_parsing_is_strict() {
        let d = parse_diagnosis(r#"cause=connection_refused, flags="UF", status=503, cluster="a\"b\\c", hint="x""#)
            .unwrap();
        assert_eq!(
            (d["cause"].as_str(), d["status"].as_str(), d["cluster"].as_str()),
            ("connection_refused", "503", "a\"b\\c")
        );
        assert_eq!(parse_diagnosis("cause=x , flags=\"y\"\t, hint=z").map(|d| d.len()), Some(3), "OWS around commas");
        for bad in [
            "cause=x, cause=y",
            "cause=x,",
            "cause=x y",
            "cause=\"a\\nb\"",
            "cause=\"unterminated",
            "Cause=x",
            "cause=x\n",
            "cause=\"caf\u{e9}\"",
            "cause=1234567890123456",
            " cause=x",
            "cause=x, ",
            "cause=\"a\tb\"",
        ] {
            assert_eq!(parse_diagnosis(bad), None, "{bad}");
        }
    }
}
