//! Programmable loopback backends for fault tests.
//!
//! A [`Backend`] listens on `127.0.0.1:0` and answers each request according to its current
//! [`Behavior`], which a test may change at any time; its health path (`/healthz` by default)
//! answers 200 or 503 according to [`Backend::set_healthy`], independently of the behaviour.
//! TLS backends serve a freshly generated self-signed (optionally expired) certificate.
//! [`closed_port`] and [`Blackhole`] give a refused connection and a connection that times out
//! without leaving loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::{Error, Result};

/// How the backend answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// Answer with this status and a short body.
    Status(u16),
    /// Wait, then answer with the status.
    Delay(Duration, u16),
    /// A backend whose latency grows with its load: answer 200 after `base` plus `per_request`
    /// for every other request it holds at arrival (a saturating server: CPU, pools, queues).
    Loaded { base: Duration, per_request: Duration },
    /// Answer 200 with these bytes (serves a `.wasm` for remote loading, for example).
    Body(Arc<Vec<u8>>),
    /// Read the request and never answer (until the connection closes or the backend stops).
    Hang,
    /// Send headers and part of the body, then reset the connection (RST).
    ResetMidResponse,
    /// Read the request, then close the connection cleanly without answering.
    CloseBeforeHeaders,
    /// Read the request, then reset the connection (RST) without answering.
    ResetBeforeHeaders,
}

/// The certificate a TLS backend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cert {
    /// Self-signed for `localhost`, valid now.
    SelfSigned,
    /// Self-signed for `localhost`, expired in 2001.
    Expired,
}

struct State {
    cert_pem: Option<String>,
    /// Sent back as `x-backend` when set, so a client can tell backends apart.
    name: Mutex<Option<String>>,
    behavior: Mutex<Behavior>,
    healthy: AtomicBool,
    health_path: String,
    requests: AtomicU64,
    health_checks: AtomicU64,
    /// Requests being answered now, and the most at once so far.
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    stop: AtomicBool,
}

/// A running backend; stops (and closes its port) on drop.
pub struct Backend {
    addr: SocketAddr,
    state: Arc<State>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

fn accept_loop(listener: TcpListener, st: Arc<State>, tls: Option<Arc<rustls::ServerConfig>>) {
    thread::spawn(move || {
        for conn in listener.incoming() {
            if st.stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let st = st.clone();
            let tls = tls.clone();
            thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                // A short read timeout lets idle keep-alive connections notice a kill (see serve).
                let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                match tls {
                    None => serve(conn.try_clone().ok(), conn, &st),
                    Some(cfg) => {
                        let Ok(server) = rustls::ServerConnection::new(cfg) else { return };
                        let raw = conn.try_clone().ok();
                        serve(raw, rustls::StreamOwned::new(server, conn), &st)
                    }
                }
            });
        }
    });
}

impl Backend {
    /// A plain HTTP/1.1 backend.
    pub fn start(behavior: Behavior) -> Result<Backend> {
        Self::spawn(behavior, None)
    }

    /// A backend answering `200 ok`.
    pub fn ok() -> Result<Backend> {
        Self::start(Behavior::Status(200))
    }

    /// A TLS backend (HTTP/1.1 inside TLS) with a generated certificate.
    pub fn tls(behavior: Behavior, cert: Cert) -> Result<Backend> {
        let (config, pem) = tls_config(cert)?;
        Self::spawn(behavior, Some((config, pem)))
    }

    fn spawn(behavior: Behavior, tls: Option<(Arc<rustls::ServerConfig>, String)>) -> Result<Backend> {
        let (tls, cert_pem) = match tls {
            Some((c, pem)) => (Some(c), Some(pem)),
            None => (None, None),
        };
        let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::io("bind backend"))?;
        let addr = listener.local_addr().map_err(Error::io("backend address"))?;
        let state = Arc::new(State {
            cert_pem,
            name: Mutex::new(None),
            behavior: Mutex::new(behavior),
            healthy: AtomicBool::new(true),
            health_path: "/healthz".into(),
            requests: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        accept_loop(listener, state.clone(), tls.clone());
        Ok(Backend { addr, state, tls })
    }

    /// Stops listening and drops every open connection, as if the process died: connections to
    /// the port are refused until [`Backend::revive`].
    pub fn kill(&self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        // Let the accept loop and connection threads see the flag and close.
        thread::sleep(Duration::from_millis(100));
    }

    /// Listens again on the same port after [`Backend::kill`].
    pub fn revive(&self) -> Result<()> {
        let listener = TcpListener::bind(self.addr).map_err(Error::io(format!("rebind {}", self.addr)))?;
        self.state.stop.store(false, Ordering::SeqCst);
        accept_loop(listener, self.state.clone(), self.tls.clone());
        Ok(())
    }

    /// A plain backend that answers with `x-backend: <name>`.
    pub fn named(behavior: Behavior, name: &str) -> Result<Backend> {
        let b = Self::start(behavior)?;
        if let Ok(mut n) = b.state.name.lock() {
            *n = Some(name.to_string());
        }
        Ok(b)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM certificate a TLS backend serves.
    pub fn cert_pem(&self) -> Option<&str> {
        self.state.cert_pem.as_deref()
    }

    /// Changes how later requests are answered.
    pub fn set(&self, behavior: Behavior) {
        if let Ok(mut b) = self.state.behavior.lock() {
            *b = behavior;
        }
    }

    /// Makes the health path pass (200) or fail (503).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Requests answered so far, health checks excluded.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The most requests (not health checks) the backend was answering at once so far.
    pub fn peak_in_flight(&self) -> u64 {
        self.state.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Health-check requests seen so far.
    pub fn health_checks(&self) -> u64 {
        self.state.health_checks.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the stop flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Counts a request out of [`State::in_flight`] when its answer is done (however it ends).
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sets SO_LINGER to zero so that closing sends RST instead of FIN.
fn reset(raw: Option<TcpStream>) {
    if let Some(raw) = raw {
        let sock = socket2::SockRef::from(&raw);
        let _ = sock.set_linger(Some(Duration::ZERO));
        drop(raw);
    }
}

/// Serves requests on one connection until it closes. `raw` is the plain socket under `io`
/// (for resets and shutdown).
fn serve<S: Read + Write>(raw: Option<TcpStream>, io: S, st: &State) {
    let mut reader = BufReader::new(io);
    loop {
        // Wait for the next request, noticing a kill while the connection idles.
        if reader.buffer().is_empty() {
            if let Some(raw) = &raw {
                let mut probe = [0u8; 1];
                loop {
                    if st.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match raw.peek(&mut probe) {
                        Ok(0) => return,
                        Ok(_) => break,
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        }
                        Err(_) => return,
                    }
                }
            }
        }
        let Some(crate::backend::Request { path, keep_alive, .. }) = read_request(&mut reader) else { return };
        if st.stop.load(Ordering::SeqCst) {
            return;
        }
        if path == st.health_path {
            st.health_checks.fetch_add(1, Ordering::SeqCst);
            let status = if st.healthy.load(Ordering::SeqCst) { 200 } else { 503 };
            if respond(reader.get_mut(), status, b"health\n", None).is_err() {
                return;
            }
            continue;
        }
        st.requests.fetch_add(1, Ordering::SeqCst);
        let holding = st.in_flight.fetch_add(1, Ordering::SeqCst);
        st.peak_in_flight.fetch_max(holding + 1, Ordering::SeqCst);
        let _done = InFlight(&st.in_flight);
        let behavior = st.behavior.lock().map(|b| b.clone()).unwrap_or(Behavior::Status(500));
        let name = st.name.lock().ok().and_then(|n| n.clone());
        let name = name.as_deref();
        let out = reader.get_mut();
        match behavior {
            Behavior::Status(code) => {
                if respond(out, code, format!("backend says {code}\n").as_bytes(), name).is_err() {
                    return;
                }
            }
            Behavior::Body(bytes) => {
                if respond(out, 200, &bytes, name).is_err() {
                    return;
                }
            }
            Behavior::Delay(d, code) => {
                thread::sleep(d);
                if respond(out, code, b"slow\n", name).is_err() {
                    return;
                }
            }
            Behavior::Loaded { base, per_request } => {
                let others = u32::try_from(holding).unwrap_or(u32::MAX);
                thread::sleep(base.saturating_add(per_request.saturating_mul(others)));
                if respond(out, 200, b"loaded\n", name).is_err() {
                    return;
                }
            }
            Behavior::Hang => {
                while !st.stop.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(50));
                    // Stop hanging once the peer has gone.
                    if let Some(raw) = &raw {
                        let mut probe = [0u8; 1];
                        let _ = raw.set_nonblocking(true);
                        match raw.peek(&mut probe) {
                            Ok(0) => return,
                            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return,
                            _ => {}
                        }
                        let _ = raw.set_nonblocking(false);
                    }
                }
                return;
            }
            Behavior::ResetMidResponse => {
                let _ = out
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: text/plain\r\n\r\npartial");
                let _ = out.flush();
                thread::sleep(Duration::from_millis(100));
                reset(raw);
                return;
            }
            Behavior::CloseBeforeHeaders => {
                if let Some(raw) = raw {
                    let _ = raw.shutdown(Shutdown::Both);
                }
                return;
            }
            Behavior::ResetBeforeHeaders => {
                reset(raw);
                return;
            }
        }
        if !keep_alive {
            return;
        }
    }
}

fn respond<W: Write>(out: &mut W, status: u16, body: &[u8], name: Option<&str>) -> std::io::Result<()> {
    let named = name.map(|n| format!("x-backend: {n}\r\n")).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{named}\r\n",
        reason(status),
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// One request as a backend read it.
pub(crate) struct Request {
    pub path: String,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    /// The body (content-length or chunked).
    pub body: Vec<u8>,
    /// The connection stays open after the answer.
    pub keep_alive: bool,
}

/// Reads one request: head and body.
pub(crate) fn read_request<R: BufRead>(r: &mut R) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let _method = parts.next()?;
    let path = parts.next()?.to_string();
    let http10 = parts.next().is_some_and(|v| v == "HTTP/1.0");
    let mut headers = Vec::new();
    loop {
        // Header values may hold any bytes (Envoy forwards bytes >= 0x80): read bytes, then lossily.
        let mut raw = Vec::new();
        if r.read_until(b'\n', &mut raw).ok()? == 0 {
            return None;
        }
        let h = String::from_utf8_lossy(&raw);
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.to_ascii_lowercase());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body = vec![0; n];
        r.read_exact(&mut body).ok()?;
    }
    let keep_alive = !http10 && get("connection").is_none_or(|v| v != "close");
    Some(Request { path, headers, body, keep_alive })
}

fn tls_config(cert: Cert) -> Result<(Arc<rustls::ServerConfig>, String)> {
    let tls_err = |e: &dyn std::fmt::Display| Error::Protocol { problem: format!("TLS setup: {e}") };
    let key = rcgen::KeyPair::generate().map_err(|e| tls_err(&e))?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(|e| tls_err(&e))?;
    if cert == Cert::Expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let certificate = params.self_signed(&key).map_err(|e| tls_err(&e))?;
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![certificate.der().clone()], key_der)
        .map_err(|e| tls_err(&e))?;
    Ok((Arc::new(config), certificate.pem()))
}

/// A PEM certificate of a fresh self-signed CA that signed nothing: a trust anchor under which
/// every backend certificate fails verification.
pub fn unrelated_ca_pem() -> Result<String> {
    let tls_err = |e: &dyn std::fmt::Display| Error::Protocol { problem: format!("TLS setup: {e}") };
    let key = rcgen::KeyPair::generate().map_err(|e| tls_err(&e))?;
    let mut params = rcgen::CertificateParams::new(vec!["unrelated-ca".to_string()]).map_err(|e| tls_err(&e))?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    Ok(params.self_signed(&key).map_err(|e| tls_err(&e))?.pem())
}

/// A loopback port with nothing listening: connections to it are refused.
pub fn closed_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(Error::io("bind"))?;
    l.local_addr().map_err(Error::io("address"))
}

/// A loopback listener whose accept queue is full, so new connection attempts get no answer and
/// time out: a connect timeout without sending anything off the machine.
pub struct Blackhole {
    addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<socket2::Socket>,
}

impl Blackhole {
    /// Listens with a backlog of zero and fills the queue.
    pub fn start() -> Result<Blackhole> {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(Error::io("socket"))?;
        let any: SocketAddr = "127.0.0.1:0".parse().map_err(|_| Error::Protocol { problem: "addr".into() })?;
        listener.bind(&any.into()).map_err(Error::io("bind blackhole"))?;
        listener.listen(0).map_err(Error::io("listen"))?;
        let addr = listener
            .local_addr()
            .map_err(Error::io("address"))?
            .as_socket()
            .ok_or_else(|| Error::Protocol { problem: "blackhole address".into() })?;
        let mut fillers = Vec::new();
        // The kernel queues backlog+1 connections; fill the queue, then stop at the first attempt
        // that no longer completes.
        for _ in 0..4 {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(Error::io("socket"))?;
            if s.connect_timeout(&addr.into(), Duration::from_millis(300)).is_err() {
                break;
            }
            fillers.push(s);
        }
        Ok(Blackhole { addr, _listener: listener, _fillers: fillers })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
