//! Compiling modules once: one wasmtime `Engine` per process, each module compiled once per
//! process (keyed by the SHA-256 of its bytes) and, when a cache directory is known, once per
//! build (wasmtime's own serialization, keyed by the same hash and the engine's compatibility
//! hash), one `Linker` with every host function, and one `InstancePre` per module.
//!
//! Compiling a filter with Cranelift takes hundreds of milliseconds; everything after that
//! (instantiating, starting and configuring a VM) takes about a millisecond. Tests create many
//! hosts and load the same few filters again and again, so this is where start-up time goes.
//!
//! Imports a module has that this host does not implement (or implements with another
//! signature) get a stub that counts the call, logs it, and answers `Unimplemented`
//! (proxy-wasm) or `ENOSYS` (WASI), so any SDK-built filter loads whatever else it imports; the
//! list is known at load ([`Plugin::unimplemented_imports`](crate::Plugin::unimplemented_imports)).
//!
//! A module Envoy refuses to load is refused here too, with Envoy's reason: no Proxy-Wasm ABI
//! version export, no allocator (`malloc` or `proxy_on_memory_allocate`), or no memory.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Extern, ExternType, FuncType, InstancePre, Linker, Module, Store, Val, ValType};

use crate::host::Shared;
use crate::state::VmState;
use crate::types::Status;
use crate::wasi::{errno, WasiView};

/// The process's engine (default configuration: Cranelift, optimized code).
pub fn shared_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(Engine::default)
}

/// A compiled module and, once asked for, its proxy-wasm instance template with the imports
/// this host stubbed.
pub(crate) struct Compiled {
    pub module: Module,
    proxy: OnceLock<Result<Proxy, String>>,
}

/// A module's instance template and the imports stubbed in it (`module.name`).
pub(crate) type Proxy = (InstancePre<VmState>, Arc<Vec<String>>);

/// The ABI version exports Envoy 1.40 accepts (one must be there).
const ABI_VERSIONS: [&str; 3] = ["proxy_abi_version_0_1_0", "proxy_abi_version_0_2_0", "proxy_abi_version_0_2_1"];

/// Why Envoy would refuse to load `module`, in Envoy's words where it has them; `None` when it
/// would load it.
pub(crate) fn envoy_refusal(module: &Module) -> Option<String> {
    let has = |name: &str| module.exports().any(|e| e.name() == name);
    if !ABI_VERSIONS.iter().any(|v| has(v)) {
        return Some(
            "Missing or unknown Proxy-Wasm ABI version (Envoy refuses the module so): export \
             proxy_abi_version_0_2_1 (the proxy-wasm SDKs do)"
                .into(),
        );
    }
    if !has("malloc") && !has("proxy_on_memory_allocate") {
        return Some(
            "Wasm module is missing malloc function. (Envoy refuses the module so): export \
             proxy_on_memory_allocate or malloc"
                .into(),
        );
    }
    if !module.exports().any(|e| e.name() == "memory" && matches!(e.ty(), ExternType::Memory(_))) {
        return Some("the module exports no memory named \"memory\": no host can pass it data".into());
    }
    None
}

type Slot = Arc<OnceLock<Result<Arc<Compiled>, String>>>;

fn cache() -> &'static Mutex<HashMap<[u8; 32], Slot>> {
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], Slot>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The compiled form of `bytes`: from this process's cache, else from `disk` (a directory of
/// serialized modules), else compiled now (and written to `disk`). Threads asking for the same
/// module at once wait for one compilation.
pub(crate) fn compile(bytes: &[u8], disk: Option<&Path>) -> Result<Arc<Compiled>, String> {
    let hash: [u8; 32] = Sha256::digest(bytes).into();
    let slot = {
        let mut map = cache().lock().map_err(|_| "the module cache is poisoned".to_string())?;
        map.entry(hash).or_default().clone()
    };
    slot.get_or_init(|| {
        let engine = shared_engine();
        let file = disk.map(|dir| dir.join(format!("{}-{:016x}.cwasm", hex(&hash), compatibility(engine))));
        let module = match file.as_deref().and_then(|f| load_serialized(engine, f)) {
            Some(m) => m,
            None => {
                let m = Module::new(engine, bytes).map_err(|e| format!("{e:#}"))?;
                if let Some(f) = &file {
                    store_serialized(&m, f);
                }
                m
            }
        };
        Ok(Arc::new(Compiled { module, proxy: OnceLock::new() }))
    })
    .clone()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn compatibility(engine: &Engine) -> u64 {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

fn load_serialized(engine: &Engine, file: &Path) -> Option<Module> {
    if !file.is_file() {
        return None;
    }
    // SAFETY: the file is one this module wrote with `Module::serialize` from this engine's
    // configuration (its name carries the module's SHA-256 and the engine's compatibility hash),
    // renamed into place only once complete, in the build's own target directory or the user's
    // own cache directory (never a shared temporary one), which tests trust as they trust the
    // `.wasm` files and binaries built there. wasmtime checks the
    // header (version, configuration) and refuses mismatches, which then recompile.
    unsafe { Module::deserialize_file(engine, file) }.ok()
}

/// Writes the serialized module next to its siblings, atomically; failures only cost time.
fn store_serialized(module: &Module, file: &Path) {
    let (Some(dir), Ok(bytes)) = (file.parent(), module.serialize()) else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, file).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    prune(dir, 32);
}

/// Keeps the `keep` most recent serialized modules in `dir`.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    for (_, path) in &files[..files.len() - keep] {
        let _ = std::fs::remove_file(path);
    }
}

/// The directory serialized modules go to for a module loaded from `wasm`:
/// `PROXY_WASM_TEST_HOST_CACHE` if set (`off` disables); else `proxy-wasm-test-host/` in the
/// nearest `target` directory above the file (where Cargo builds it), else in
/// `CARGO_TARGET_DIR`, else in the user's cache directory (`$XDG_CACHE_HOME`, `~/.cache`).
/// Never a shared temporary directory: what is read back there is run as code.
pub(crate) fn default_cache_dir(wasm: &Path) -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(v) = std::env::var_os("PROXY_WASM_TEST_HOST_CACHE") {
        return (v != "off" && !v.is_empty()).then(|| PathBuf::from(v));
    }
    let env = CacheEnv { target_dir: var("CARGO_TARGET_DIR"), xdg_cache: var("XDG_CACHE_HOME"), home: var("HOME") };
    cache_dir_for(&std::fs::canonicalize(wasm).ok()?, &env)
}

/// The environment [`default_cache_dir`] falls back on.
pub(crate) struct CacheEnv {
    pub target_dir: Option<PathBuf>,
    pub xdg_cache: Option<PathBuf>,
    pub home: Option<PathBuf>,
}

pub(crate) fn cache_dir_for(wasm: &Path, env: &CacheEnv) -> Option<PathBuf> {
    const DIR: &str = "proxy-wasm-test-host";
    let target = wasm.ancestors().find(|a| a.file_name().is_some_and(|n| n == "target")).map(Path::to_path_buf);
    target
        .or_else(|| env.target_dir.clone())
        .map(|t| t.join(DIR))
        .or_else(|| env.xdg_cache.as_ref().map(|c| c.join(DIR)))
        .or_else(|| env.home.as_ref().map(|h| h.join(".cache").join(DIR)))
}

/// Every host function, once per process.
fn linker() -> Result<&'static Linker<VmState>, String> {
    static LINKER: OnceLock<Result<Linker<VmState>, String>> = OnceLock::new();
    LINKER
        .get_or_init(|| {
            let mut l = Linker::new(shared_engine());
            crate::abi::add_to_linker(&mut l).map_err(|e| format!("{e:#}"))?;
            crate::wasi::add_to_linker(&mut l).map_err(|e| format!("{e:#}"))?;
            Ok(l)
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn same_type(a: &FuncType, b: &FuncType) -> bool {
    a.params().len() == b.params().len()
        && a.results().len() == b.results().len()
        && a.params().zip(b.params()).all(|(x, y)| ValType::eq(&x, &y))
        && a.results().zip(b.results()).all(|(x, y)| ValType::eq(&x, &y))
}

fn fallback(ty: &ValType, code: i32) -> Val {
    match ty {
        ValType::I64 => Val::I64(i64::from(code)),
        ValType::F32 => Val::F32(0),
        ValType::F64 => Val::F64(0),
        _ => Val::I32(code),
    }
}

/// Adds a stub for every function import of `module` that `linker` lacks or types
/// differently: it counts the call, logs it, and answers `ENOSYS` (WASI) or `Unimplemented`
/// (anything else). `probe` is any store of the linker's type (host functions are looked at
/// through it). Returns the stubbed imports as `module.name`.
pub(crate) fn stub_missing<T: WasiView>(
    linker: &mut Linker<T>,
    module: &Module,
    probe: &mut Store<T>,
) -> Result<Vec<String>, String> {
    let mut stubbed = Vec::new();
    linker.allow_shadowing(true);
    for import in module.imports() {
        let ExternType::Func(want) = import.ty() else { continue };
        let have = linker.get_by_import(&mut *probe, &import).and_then(Extern::into_func);
        if have.is_some_and(|f| same_type(&f.ty(&*probe), &want)) {
            continue;
        }
        let code =
            if import.module() == "wasi_snapshot_preview1" { errno::NOSYS } else { Status::Unimplemented.code() };
        let name = import.name().to_string();
        stubbed.push(format!("{}.{}", import.module(), import.name()));
        let results: Vec<ValType> = want.results().collect();
        linker
            .func_new(import.module(), import.name(), want.clone(), move |mut c, _params, out| {
                c.data_mut().record_unknown(&name);
                for (slot, ty) in out.iter_mut().zip(&results) {
                    *slot = fallback(ty, code);
                }
                Ok(())
            })
            .map_err(|e| format!("{e:#}"))?;
    }
    linker.allow_shadowing(false);
    Ok(stubbed)
}

impl Compiled {
    /// The proxy-wasm instance template (the shared linker, plus stubs) and the imports
    /// stubbed; an error when Envoy would refuse the module.
    pub fn proxy(&self) -> Result<Proxy, String> {
        self.proxy
            .get_or_init(|| {
                if let Some(why) = envoy_refusal(&self.module) {
                    return Err(why);
                }
                let mut probe = Store::new(shared_engine(), VmState::new(Arc::new(Shared::default())));
                let mut l = linker()?.clone();
                let stubbed = stub_missing(&mut l, &self.module, &mut probe)?;
                let pre = l.instantiate_pre(&self.module).map_err(|e| format!("{e:#}"))?;
                Ok((pre, Arc::new(stubbed)))
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_cache_needs_no_folder_named_target() {
        let none = CacheEnv { target_dir: None, xdg_cache: None, home: None };
        let built = Path::new("/w/crate/target/wasm32-wasip1/release/f.wasm");
        assert_eq!(cache_dir_for(built, &none), Some(PathBuf::from("/w/crate/target/proxy-wasm-test-host")));
        let elsewhere = Path::new("/w/modules/f.wasm");
        assert_eq!(cache_dir_for(elsewhere, &none), None);
        let home = CacheEnv { home: Some("/home/u".into()), ..none };
        assert_eq!(cache_dir_for(elsewhere, &home), Some(PathBuf::from("/home/u/.cache/proxy-wasm-test-host")));
        let xdg = CacheEnv { xdg_cache: Some("/c".into()), ..home };
        assert_eq!(cache_dir_for(elsewhere, &xdg), Some(PathBuf::from("/c/proxy-wasm-test-host")));
        let cargo = CacheEnv { target_dir: Some("/t".into()), ..xdg };
        assert_eq!(cache_dir_for(elsewhere, &cargo), Some(PathBuf::from("/t/proxy-wasm-test-host")));
    }
}
