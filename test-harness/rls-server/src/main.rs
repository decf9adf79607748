//! `ug-rls-server --redis URL --config FILE [--listen ADDR] [--delay-ms N]`: the test rate limit
//! service as a process, for demos and benchmarks. Prints the address it listens on (one line on
//! stdout, so a script can read it) and serves until killed.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use ug_rls_server::{parse_limits, RlsServer};

const USAGE: &str =
    "usage: ug-rls-server --redis redis://127.0.0.1:6379/ --config limits.json [--listen 127.0.0.1:0] [--delay-ms N]
limits.json: [{\"domain\": \"edge\", \"descriptor\": {\"tenant\": null}, \"max\": 100, \"seconds\": 60}]
  (null: any value, counted per value; a string: that value only)";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ug-rls-server: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let mut redis = None;
    let mut config = None;
    let mut listen = "127.0.0.1:0".to_string();
    let mut delay_ms = 0u64;
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--redis" => redis = Some(value()?),
            "--config" => config = Some(value()?),
            "--listen" => listen = value()?,
            "--delay-ms" => delay_ms = value()?.parse().map_err(|e| format!("--delay-ms: {e}"))?,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let redis = redis.ok_or_else(|| format!("--redis is required\n{USAGE}"))?;
    let config = config.ok_or_else(|| format!("--config is required\n{USAGE}"))?;
    let listen: SocketAddr =
        listen.parse().map_err(|e| format!("--listen {listen:?}: {e} (write e.g. 127.0.0.1:0)"))?;
    let text = std::fs::read_to_string(&config).map_err(|e| format!("read {config}: {e}"))?;
    let limits = parse_limits(&text).map_err(|e| format!("{config}: {e}"))?;
    let server = RlsServer::start_on(listen, &redis, &limits).map_err(|e| e.to_string())?;
    server.set_delay(Duration::from_millis(delay_ms));
    let mut out = std::io::stdout();
    writeln!(out, "{}", server.addr()).and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))?;
    eprintln!("ug-rls-server: serving {} limit(s) on {} (Redis {redis})", limits.len(), server.addr());
    loop {
        std::thread::park();
    }
}
