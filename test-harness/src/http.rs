//! A small blocking HTTP/1.1 client: one request per connection, bounded by a timeout, enough to
//! assert on status, headers and body (content-length, chunked, or read-to-close).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Lowercased names, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// True when the connection ended before the announced body was complete.
    pub truncated: bool,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` with extra headers.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    request(addr, "GET", path, headers, Duration::from_secs(15))
}

/// Sends one request and reads the response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response> {
    let stream = send(addr, method, path, headers, None, timeout)?;
    read_response(&mut BufReader::new(stream), method == "HEAD")
}

/// `POST path` with a body (sent with `content-length`).
pub fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response> {
    let stream = send(addr, "POST", path, headers, Some(body), Duration::from_secs(15))?;
    read_response(&mut BufReader::new(stream), false)
}

/// A response and when its parts arrived.
#[derive(Debug, Clone)]
pub struct Timed {
    pub response: Response,
    /// When the request was sent.
    pub sent_at: Instant,
    /// When the first byte after the response head arrived.
    pub first_body_byte_at: Option<Instant>,
}

/// `POST path` with a body, noting when the first byte of the response body arrives (for
/// time-to-first-byte measurements of streamed responses).
pub fn post_timed(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Timed> {
    let sent_at = Instant::now();
    let mut stream = send(addr, "POST", path, headers, Some(body), timeout)?;
    let mut raw = Vec::new();
    let mut first_body_byte_at = None;
    let mut buf = [0u8; 16384];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(Error::Io { context: "read response".into(), source: e }),
        };
        raw.extend_from_slice(&buf[..n]);
        if first_body_byte_at.is_none() {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                if raw.len() > end + 4 {
                    first_body_byte_at = Some(Instant::now());
                }
            }
        }
    }
    let response = read_response(&mut BufReader::new(&raw[..]), false)?;
    Ok(Timed { response, sent_at, first_body_byte_at })
}

fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(Error::io(format!("connect {addr}")))?;
    stream.set_read_timeout(Some(timeout)).map_err(Error::io("set timeout"))?;
    let _ = stream.set_nodelay(true);
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str("host: localhost\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("content-length: {}\r\n", b.len()));
    }
    head.push_str("connection: close\r\n\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes).map_err(Error::io("send request"))?;
    Ok(stream)
}

/// Sends `raw` (a whole HTTP/1.1 request, any bytes: for requests a well-behaved client would not
/// send, such as header values that are not UTF-8) and reads the response.
pub fn raw(addr: SocketAddr, raw: &[u8], timeout: Duration) -> Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(Error::io(format!("connect {addr}")))?;
    stream.set_read_timeout(Some(timeout)).map_err(Error::io("set timeout"))?;
    stream.write_all(raw).map_err(Error::io("send request"))?;
    read_response(&mut BufReader::new(stream), raw.starts_with(b"HEAD "))
}

/// A `GET path` request as raw bytes, with `headers` written exactly as given (names and values
/// are bytes) and `connection: close`.
pub fn raw_get(path: &str, headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(k);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

fn read_line(r: &mut impl BufRead) -> Result<String> {
    // Bytes, then lossy: a response header may carry bytes that are not UTF-8.
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).map_err(Error::io("read response"))?;
    Ok(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string())
}

fn read_response(r: &mut impl BufRead, head_only: bool) -> Result<Response> {
    let status_line = read_line(r)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Protocol { problem: format!("bad status line {status_line:?}") })?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut resp = Response { status, headers, body: Vec::new(), truncated: false };
    if head_only || status == 204 || status == 304 {
        return Ok(resp);
    }
    if resp.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let size_line = match read_line(r) {
                Ok(l) if !l.is_empty() => l,
                _ => {
                    resp.truncated = true;
                    break;
                }
            };
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| Error::Protocol { problem: format!("bad chunk size {size_line:?}") })?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size];
            if r.read_exact(&mut chunk).is_err() {
                resp.truncated = true;
                break;
            }
            resp.body.extend_from_slice(&chunk);
            let _ = read_line(r);
        }
    } else if let Some(len) = resp.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut body = Vec::with_capacity(len);
        let _ = r.take(len as u64).read_to_end(&mut body);
        resp.truncated = body.len() < len;
        resp.body = body;
    } else {
        let _ = r.read_to_end(&mut resp.body);
    }
    Ok(resp)
}
