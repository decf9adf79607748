//! Links the unwinder into `libupstream_guard.so` instead of depending on `libgcc_s.so.1`.
//!
//! Why: Rust's standard library unwinds panics with libgcc's unwinder, which rustc links as
//! `-lgcc_s` (the shared `libgcc_s.so.1`). Envoy's distroless images (`envoyproxy/envoy:distroless-*`,
//! which Envoy Gateway runs by default) carry only glibc, no `libgcc_s.so.1`, so a module that
//! needs it is refused by the dynamic loader. The module must unwind (every hook catches a panic
//! and applies its failure behaviour instead of aborting Envoy), so the unwinder is linked in:
//! the linker looks for `-lgcc_s` in this script's folder first, and finds there GCC's static
//! unwinder (`libgcc_eh.a`, position-independent on x86_64 Linux) under that name. A test checks
//! the shipped library's dependencies (`test-harness/tests/native_module.rs`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || env != "gnu" {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let found = Command::new(&cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_absolute() && p.is_file());
    let Some(eh) = found else {
        println!(
            "cargo:warning=libgcc_eh.a not found with `{cc} -print-file-name=libgcc_eh.a`: libupstream_guard.so \
             will need libgcc_s.so.1 at run time (absent from Envoy's distroless images). Install GCC (Debian: gcc)."
        );
        return;
    };
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else { return };
    let dir = out.join("static-unwind");
    let copied = std::fs::create_dir_all(&dir).and_then(|()| std::fs::copy(&eh, dir.join("libgcc_s.a")));
    match copied {
        Ok(_) => println!("cargo:rustc-link-search=native={}", dir.display()),
        Err(e) => println!("cargo:warning=could not copy {} into {}: {e}", eh.display(), dir.display()),
    }
}
