//! A real Envoy process for end-to-end tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{http, paths, Error, Result};

/// A running Envoy; killed on drop. Its config, log and admin address live in a temporary
/// directory that is removed with it.
pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    admin: SocketAddr,
}

impl Envoy {
    /// Starts Envoy with one worker.
    pub fn start(config: &Value) -> Result<Envoy> {
        Self::start_with(config, 1)
    }

    /// Starts Envoy with `concurrency` workers and waits (up to 60 s) for `/ready`.
    pub fn start_with(config: &Value, concurrency: u32) -> Result<Envoy> {
        Self::start_file("envoy.json", &config.to_string(), concurrency, true)
    }

    /// Starts Envoy with extra command-line arguments (`--file-flush-interval-msec 50`, say).
    pub fn start_with_args(config: &Value, concurrency: u32, args: &[&str]) -> Result<Envoy> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self::start_full(
            "envoy.json",
            &config.to_string(),
            &Launch { concurrency, verbose: true, ..Launch::default() },
            &args,
        )
    }

    /// Starts Envoy from YAML text (an example config with its ports rewritten, say).
    pub fn start_yaml(yaml: &str, concurrency: u32) -> Result<Envoy> {
        Self::start_file("envoy.yaml", yaml, concurrency, true)
    }

    /// Starts Envoy logging warnings only (no per-request wasm debug lines): for benchmarks.
    pub fn start_quiet(config: &Value, concurrency: u32) -> Result<Envoy> {
        Self::start_file("envoy.json", &config.to_string(), concurrency, false)
    }

    /// Starts Envoy at log level `level` with component levels `components` (`"wasm:trace"`):
    /// for tests about what is logged.
    pub fn start_logging(config: &Value, concurrency: u32, level: &str, components: &str) -> Result<Envoy> {
        let launch = Launch { concurrency, log_levels: Some((level.into(), components.into())), ..Launch::default() };
        Self::start_full("envoy.json", &config.to_string(), &launch, &[])
    }

    /// Starts Envoy as `launch` says (pinned to CPUs, or under a profiler), logging warnings only.
    pub fn start_launch(config: &Value, launch: &Launch) -> Result<Envoy> {
        Self::start_full("envoy.json", &config.to_string(), launch, &[])
    }

    fn start_file(name: &str, text: &str, concurrency: u32, verbose: bool) -> Result<Envoy> {
        Self::start_full(name, text, &Launch { concurrency, verbose, ..Launch::default() }, &[])
    }

    fn start_full(name: &str, text: &str, launch: &Launch, extra: &[String]) -> Result<Envoy> {
        let (concurrency, verbose) = (launch.concurrency.max(1), launch.verbose);
        // A wrapper (taskset, valgrind) needs the Envoy executable itself, not a launcher script.
        let bin = if launch.wrapper.is_empty() { paths::envoy_bin()? } else { paths::envoy_executable()? };
        let levels: [&str; 4] = match &launch.log_levels {
            Some((level, components)) => ["-l", level, "--component-log-level", components],
            None if verbose => ["-l", "info", "--component-log-level", "wasm:debug,dynamic_modules:debug"],
            None => ["-l", "warn", "--component-log-level", "wasm:warn,dynamic_modules:warn"],
        };
        let dir = tempfile::Builder::new().prefix("ug-envoy-").tempdir().map_err(Error::io("temp dir"))?;
        let config_path = dir.path().join(name);
        std::fs::write(&config_path, text).map_err(Error::io("write envoy config"))?;
        let admin_path = dir.path().join("admin-address");
        // Envoy's own --log-path is flushed lazily; its stderr is not, so the log is complete at
        // any moment a test reads it.
        let log_file = std::fs::File::create(dir.path().join("envoy.log")).map_err(Error::io("create envoy log"))?;
        let mut command = match launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = command
            .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", paths::native_module_dir())
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &concurrency.to_string()])
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(levels)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(Error::io(format!("start {}", bin.display())))?;
        let mut envoy = Envoy { child, dir, admin: SocketAddr::from(([127, 0, 0, 1], 0)) };
        envoy.wait_ready(launch.ready_timeout.unwrap_or(Duration::from_secs(60)))?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let admin_path = self.dir.path().join("admin-address");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Envoy { problem: format!("exited during start-up ({status})"), log: self.log() });
            }
            if self.admin.port() == 0 {
                if let Some(addr) = std::fs::read_to_string(&admin_path).ok().and_then(|s| s.trim().parse().ok()) {
                    self.admin = addr;
                }
            }
            if self.admin.port() != 0 {
                if let Ok(r) = http::request(self.admin, "GET", "/ready", &[], Duration::from_secs(2)) {
                    if r.status == 200 {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Envoy { problem: format!("not ready after {limit:?}"), log: self.log() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id (of Envoy itself: wrappers such as taskset exec it, valgrind runs it in
    /// place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The resident set size of the process, from `/proc` (Linux).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kb: u64 =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The bound address of listener `name` (configured with port 0).
    pub fn listener(&self, name: &str) -> Result<SocketAddr> {
        let r = http::get(self.admin, "/listeners?format=json", &[])?;
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| Error::Protocol { problem: e.to_string() })?;
        v["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == name)
            .and_then(|l| {
                let sa = &l["local_address"]["socket_address"];
                format!("{}:{}", sa["address"].as_str()?, sa["port_value"].as_u64()?).parse().ok()
            })
            .ok_or_else(|| Error::Envoy { problem: format!("no listener named {name}"), log: self.log() })
    }

    /// The `main` listener of a [`crate::bootstrap::Bootstrap`] config.
    pub fn main(&self) -> Result<SocketAddr> {
        self.listener("main")
    }

    /// The value of stat `name` from `/stats` (counters and gauges), if it exists. Metrics a
    /// wasm filter defines are found by the name the filter gave them (Envoy's `/stats` shows
    /// them with a `wasmcustom.` prefix, Prometheus output without).
    pub fn stat(&self, name: &str) -> Result<Option<u64>> {
        let r = http::get(self.admin, "/stats", &[])?;
        // A `.wasm`'s metrics show under `wasmcustom.`; the dynamic module's under its metrics
        // namespace, `upstream_guard.` (the name itself).
        let custom = format!("wasmcustom.{name}");
        let labelled = labelled_form(name);
        Ok(r.text().lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            if k == name || k == custom || labelled.as_deref() == Some(k) {
                v.trim().parse().ok()
            } else {
                None
            }
        }))
    }

    /// Every stat whose name (without `wasmcustom.`) starts with `prefix` and whose value is not
    /// zero, sorted by name.
    pub fn nonzero_stats(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let r = http::get(self.admin, "/stats", &[])?;
        let mut out: Vec<(String, u64)> = r
            .text()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                let k = k.strip_prefix("wasmcustom.").unwrap_or(k);
                let k = flat_form(k).unwrap_or_else(|| k.to_string());
                let v: u64 = v.trim().parse().ok()?;
                (k.starts_with(prefix) && v != 0).then_some((k, v))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The directory holding the config and the log.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// How to launch Envoy.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Worker threads (`--concurrency`; 0 means 1).
    pub concurrency: u32,
    /// Info-level logs with wasm debug lines (tests) instead of warnings only (benchmarks).
    pub verbose: bool,
    /// A command Envoy runs under, e.g. `["taskset", "-c", "1"]` or a profiler.
    pub wrapper: Vec<String>,
    /// How long to wait for `/ready` (default 60 s; a profiler needs longer).
    pub ready_timeout: Option<Duration>,
    /// Log level and component levels (`("info", "wasm:trace")`), instead of what `verbose` picks.
    pub log_levels: Option<(String, String)>,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A per-cluster metric as the dynamic module names it in `/stats`: `.wasm`'s
/// `upstream_guard.breaker.<cluster>.<name>` is the labelled metric
/// `upstream_guard.breaker.<name>` with the tag `envoy_cluster_name` (Envoy lets a dynamic module
/// define metrics only at configure time, and clusters are only known later). Prometheus shows
/// both the same way, as `upstream_guard_breaker_<name>{envoy_cluster_name="<cluster>"}`.
fn labelled_form(name: &str) -> Option<String> {
    FAMILIES.iter().find_map(|family| {
        let rest = name.strip_prefix(family)?;
        let (cluster, metric) = rest.rsplit_once('.')?;
        Some(format!("{family}{metric}.envoy_cluster_name.{cluster}"))
    })
}

/// The per-cluster metric families the dynamic module defines as labelled metrics (their
/// clusters are only known after configure time).
const FAMILIES: [&str; 2] = ["upstream_guard.breaker.", "upstream_guard.concurrency."];

/// The `.wasm` form of a labelled `/stats` name (the inverse of [`labelled_form`]).
fn flat_form(name: &str) -> Option<String> {
    FAMILIES.iter().find_map(|family| {
        let rest = name.strip_prefix(family)?;
        let (metric, cluster) = rest.split_once(".envoy_cluster_name.")?;
        Some(format!("{family}{cluster}.{metric}"))
    })
}

/// Runs `envoy --mode validate` on a config file, from the workspace root (where the examples'
/// relative `.wasm` paths point); `Ok` holds the process output whatever the verdict (check
/// `status.success()`).
pub fn validate(config: &Path) -> Result<Output> {
    let bin = paths::envoy_bin()?;
    Command::new(&bin)
        .current_dir(paths::workspace_root())
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", paths::native_module_dir())
        .args(["--mode", "validate", "--disable-hot-restart", "-l", "warn", "-c"])
        .arg(config)
        .output()
        .map_err(Error::io(format!("run {}", bin.display())))
}

/// Starts Envoy expecting it to *refuse* the config; returns its log. Errors if it became ready.
pub fn expect_refused(config: &Value) -> Result<String> {
    match Envoy::start(config) {
        Ok(e) => Err(Error::Envoy { problem: "accepted a config it should refuse".into(), log: e.log() }),
        Err(Error::Envoy { log, .. }) => Ok(log),
        Err(other) => Err(other),
    }
}
