//! # ug-rls-server
//!
//! A small Envoy rate limit service (`envoy.service.ratelimit.v3.RateLimitService`) that counts
//! in Redis, for testing global rate limits against something that speaks the real protocol
//! without installing a production service (envoyproxy/ratelimit, Kuadrant's Limitador). Envoys
//! (or our wasm filter) that reach it, or several of it sharing one Redis, share one budget.
//!
//! It is test equipment: limits come from a one-line JSON list or a builder ([`LimitSpec`]), and a
//! test can slow every answer ([`RlsServer::set_delay`]), make every call fail with a gRPC status
//! ([`RlsServer::fail_with`]), read what it answered ([`RlsServer::stats`]) and stop it by
//! dropping the handle.
//!
//! ```no_run
//! use ug_rls_server::{LimitSpec, RlsServer};
//! let rls = RlsServer::start("redis://127.0.0.1:6379/", &[LimitSpec::new("edge", 100, 60).any("tenant")])?;
//! println!("point Envoy's rls cluster at {}", rls.addr());
//! # Ok::<(), ug_rls_server::Error>(())
//! ```

pub mod config;
pub mod service;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;

pub use config::{parse_limits, LimitSpec};
pub use service::Stats;
pub use tonic::Code;

/// How long Redis may take to answer at start-up.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping server lets open connections finish before closing them.
const STOP_GRACE: Duration = Duration::from_millis(300);

/// Why the server could not start.
#[derive(Debug)]
pub enum Error {
    /// The limits configuration is invalid.
    Config {
        /// Where, e.g. `[0].seconds`.
        field: String,
        /// What is wrong and what to write instead.
        problem: String,
    },
    /// Redis could not be reached or prepared.
    Redis {
        /// The URL tried.
        url: String,
        /// What went wrong.
        problem: String,
    },
    /// A socket, file or thread operation failed.
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { field, problem } => write!(f, "limits config: field `{field}`: {problem}"),
            Error::Redis { url, problem } => write!(
                f,
                "could not use Redis at {url}: {problem}; start redis-server there or pass the right URL (redis://HOST:PORT/)"
            ),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { context: context.to_string(), source }
}

/// A running server on its own tokio runtime thread; stops (closing its port) on drop.
pub struct RlsServer {
    addr: SocketAddr,
    shared: Arc<service::Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for RlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RlsServer").field("addr", &self.addr).field("stats", &self.stats()).finish()
    }
}

impl RlsServer {
    /// Starts on `127.0.0.1:0` counting in the Redis at `redis_url` (`redis://127.0.0.1:PORT/`).
    pub fn start(redis_url: &str, limits: &[LimitSpec]) -> Result<RlsServer, Error> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), redis_url, limits)
    }

    /// Starts on `listen`. Returns once Redis answered and the port is bound.
    pub fn start_on(listen: SocketAddr, redis_url: &str, limits: &[LimitSpec]) -> Result<RlsServer, Error> {
        for (i, l) in limits.iter().enumerate() {
            l.validate(&format!("[{i}]"))?;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ug-rls-server")
            .enable_all()
            .build()
            .map_err(io("start the tokio runtime"))?;
        let listener = std::net::TcpListener::bind(listen).map_err(io("bind the RLS listener"))?;
        listener.set_nonblocking(true).map_err(io("make the RLS listener non-blocking"))?;
        let addr = listener.local_addr().map_err(io("read the RLS listener address"))?;
        let redis_error = |problem: String| Error::Redis { url: redis_url.to_string(), problem };
        let redis = runtime
            .block_on(async { tokio::time::timeout(REDIS_CONNECT_TIMEOUT, connect(redis_url)).await })
            .map_err(|_| redis_error(format!("no answer within {} s", REDIS_CONNECT_TIMEOUT.as_secs())))?
            .map_err(|e| redis_error(e.to_string()))?;
        let shared = Arc::new(service::Shared::default());
        let svc = RateLimitServiceServer::new(service::Rls::new(limits.to_vec(), redis, shared.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ug-rls-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("ug-rls-server: cannot serve on {addr}: {e}");
                            return;
                        }
                    };
                    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                    let stopping = Arc::new(tokio::sync::Notify::new());
                    let signal = {
                        let stopping = stopping.clone();
                        async move {
                            let _ = stopped.await;
                            stopping.notify_one();
                        }
                    };
                    let serve = tonic::transport::Server::builder().serve_with_incoming_shutdown(svc, incoming, signal);
                    tokio::select! {
                        served = serve => {
                            if let Err(e) = served {
                                eprintln!("ug-rls-server: {e}");
                            }
                        }
                        () = async { stopping.notified().await; tokio::time::sleep(STOP_GRACE).await } => {}
                    }
                });
                // Whatever is still open (a connection Envoy keeps, a delayed call) is dropped now.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(io("spawn the RLS thread"))?;
        Ok(RlsServer { addr, shared, stop: Some(stop), thread: Some(thread) })
    }

    /// Where it listens (HTTP/2 cleartext gRPC).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes every later call wait `delay` before it is answered (zero: no delay), to test
    /// client timeouts.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.set_delay(delay);
    }

    /// `Some(code)`: answer every later call with that gRPC status, counting nothing; `None`:
    /// answer normally again.
    pub fn fail_with(&self, code: Option<Code>) {
        self.shared.fail_with(code);
    }

    /// How long a call may wait for Redis before it is answered `UNAVAILABLE` (default 1 s).
    pub fn set_storage_timeout(&self, timeout: Duration) {
        self.shared.set_storage_timeout(timeout);
    }

    /// What it has answered so far.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Stops serving and closes the port (as dropping does).
    pub fn stop(self) {
        drop(self);
    }
}

/// A Redis connection that reconnects by itself after Redis restarts, and fails a command at once
/// (rather than retrying) while Redis is down, so that the caller answers an error.
async fn connect(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200))
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut manager = ConnectionManager::new_with_config(client, config).await?;
    redis::cmd("PING").query_async::<String>(&mut manager).await?;
    Ok(manager)
}

impl Drop for RlsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
