//! A throw-away Redis for tests of global rate limits.
//!
//! Global limits keep their counters in Redis, so their tests need one they own: [`Redis`] runs
//! Debian's `redis-server` (installed by `cargo xtask setup`; `REDIS_SERVER` names another
//! binary) on a free loopback port, without persistence, in a temporary directory. A test can
//! [`Redis::stop`] it mid-run to see what happens when the store dies, and [`Redis::restart`] it
//! on the same port (empty) to see recovery, or [`Redis::freeze`] it to see a store that hangs.
//! It is killed on drop.
//!
//! Redis cannot pick its own port (`--port 0` disables TCP), so a free port is found by binding
//! `127.0.0.1:0` and releasing it; if another process takes the port in between, start-up
//! notices (the answering server is not ours, or ours exited) and tries another.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How many ports to try before giving up.
const ATTEMPTS: usize = 5;
/// How long one start may take to answer PING.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A running `redis-server` on loopback; killed on drop.
pub struct Redis {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts `redis-server` on a free loopback port and waits until it answers PING.
    pub fn start() -> Result<Redis> {
        let dir = tempfile::Builder::new().prefix("ug-redis-").tempdir().map_err(Error::io("temp dir"))?;
        let mut redis = Redis { child: None, addr: SocketAddr::from(([127, 0, 0, 1], 0)), dir };
        let mut attempt = 0;
        loop {
            redis.addr.set_port(free_port()?);
            match redis.spawn() {
                Ok(()) => return Ok(redis),
                Err(e @ Error::Missing { .. }) => return Err(e),
                Err(e) if attempt + 1 >= ATTEMPTS => return Err(e),
                Err(_) => {
                    redis.kill();
                    attempt += 1;
                }
            }
        }
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = redis_server_bin();
        let log = self.dir.path().join("redis.log");
        let child = Command::new(&bin)
            .args(["--bind", "127.0.0.1", "--port", &self.addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::Missing {
                    what: format!("{} (Redis)", bin.display()),
                    fix: "run `cargo xtask setup` (apt-installs redis-server), or set REDIS_SERVER to its path".into(),
                },
                _ => Error::Io { context: format!("start {}", bin.display()), source: e },
            })?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(Error::Protocol {
                    problem: format!("redis-server exited during start-up ({status}):\n{}", self.log()),
                });
            }
            // Answering PING is not enough: the server must be ours, not one that took the port.
            if let Ok(info) = command(self.addr, "INFO server") {
                if info.lines().any(|l| l.trim() == format!("process_id:{pid}")) {
                    return Ok(());
                }
                return Err(Error::Protocol { problem: format!("another server answers on {}", self.addr) });
            }
            if Instant::now() > deadline {
                return Err(Error::Protocol {
                    problem: format!(
                        "redis-server not answering on {} after {START_LIMIT:?}:\n{}",
                        self.addr,
                        self.log()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// True when the server answers PING now.
    pub fn is_up(&self) -> bool {
        command(self.addr, "PING").is_ok_and(|r| r == "PONG")
    }

    /// Kills the server (SIGKILL, as if it crashed); its port then refuses connections and
    /// everything it held is lost.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Suspends the server (SIGSTOP): connections stay open but nothing is answered, as when a
    /// store hangs. [`Redis::thaw`] resumes it.
    pub fn freeze(&self) -> Result<()> {
        self.signal("-STOP")
    }

    /// Resumes a server suspended by [`Redis::freeze`] (SIGCONT); it then answers what waited.
    pub fn thaw(&self) -> Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, which: &str) -> Result<()> {
        let pid = self.child.as_ref().map(Child::id).ok_or_else(|| Error::Protocol {
            problem: "redis-server is not running (stopped?): restart it first".into(),
        })?;
        let status = Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .map_err(Error::io(format!("kill {which} {pid}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Protocol { problem: format!("kill {which} {pid} failed ({status})") })
        }
    }

    /// Starts a fresh, empty server on the same port after [`Redis::stop`].
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Runs one inline command (`"GET key"`, arguments without spaces) and returns the reply as
    /// text (status, integer or bulk string; an error reply is an `Err`).
    pub fn command(&self, line: &str) -> Result<String> {
        command(self.addr, line)
    }

    /// What the server has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A frozen process still dies of SIGKILL; CONT first lets it release its port at once.
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `REDIS_SERVER`, else `redis-server` from `PATH`.
fn redis_server_bin() -> PathBuf {
    std::env::var_os("REDIS_SERVER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(Error::io("bind a probe port"))?;
    Ok(l.local_addr().map_err(Error::io("probe port address"))?.port())
}

/// Sends one inline command and reads one reply (RESP2: `+`, `-`, `:`, `$`).
fn command(addr: SocketAddr, line: &str) -> Result<String> {
    let timeout = Duration::from_secs(2);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(Error::io(format!("connect to Redis {addr}")))?;
    stream.set_read_timeout(Some(timeout)).map_err(Error::io("set timeout"))?;
    stream.write_all(format!("{line}\r\n").as_bytes()).map_err(Error::io("send to Redis"))?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    reader.read_line(&mut head).map_err(Error::io("read from Redis"))?;
    let head = head.trim_end();
    let bad = || Error::Protocol { problem: format!("Redis replied {head:?} to {line:?}") };
    match head.split_at_checked(1) {
        Some(("+", s)) | Some((":", s)) => Ok(s.to_string()),
        Some(("$", n)) => {
            let Ok(len) = n.parse::<usize>() else {
                return Ok(String::new()); // $-1: nil
            };
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body).map_err(Error::io("read from Redis"))?;
            body.truncate(len);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        _ => Err(bad()),
    }
}
