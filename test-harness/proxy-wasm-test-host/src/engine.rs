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
//! signature) get a stub that counts the call and answers `Unimplemented` (proxy-wasm) or
//! `ENOSYS` (WASI), so any SDK-built filter loads whatever else it imports.

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

/// A compiled module and, once asked for, its proxy-wasm instance template.
pub(crate) struct Compiled {
    pub module: Module,
    proxy: OnceLock<Result<InstancePre<VmState>, String>>,
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
    // renamed into place only once complete, in the build's own target directory, which tests
    // trust as they trust the `.wasm` files and binaries built there. wasmtime checks the
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
/// `PROXY_WASM_TEST_HOST_CACHE` if set (`off` disables), else `proxy-wasm-test-host/` in the
/// nearest `target` directory above the file (where Cargo builds it).
pub(crate) fn default_cache_dir(wasm: &Path) -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("PROXY_WASM_TEST_HOST_CACHE") {
        return (v != "off" && !v.is_empty()).then(|| PathBuf::from(v));
    }
    let abs = std::fs::canonicalize(wasm).ok()?;
    abs.ancestors().find(|a| a.file_name().is_some_and(|n| n == "target")).map(|t| t.join("proxy-wasm-test-host"))
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
/// differently: it counts the call and answers `ENOSYS` (WASI) or `Unimplemented` (anything
/// else). `probe` is any store of the linker's type (host functions are looked at through it).
pub(crate) fn stub_missing<T: WasiView>(
    linker: &mut Linker<T>,
    module: &Module,
    probe: &mut Store<T>,
) -> Result<(), String> {
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
    Ok(())
}

impl Compiled {
    /// The proxy-wasm instance template: the shared linker, plus stubs.
    pub fn proxy(&self) -> Result<InstancePre<VmState>, String> {
        self.proxy
            .get_or_init(|| {
                let mut probe = Store::new(shared_engine(), VmState::new(Arc::new(Shared::default())));
                let mut l = linker()?.clone();
                stub_missing(&mut l, &self.module, &mut probe)?;
                l.instantiate_pre(&self.module).map_err(|e| format!("{e:#}"))
            })
            .clone()
    }
}
