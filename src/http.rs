//! A minimal HTTP/1.1 client: enough for HTTP health probes, `air-nanny ctl` (over TLS too) and the
//! tests, without pulling an HTTP client stack onto a small ARM computer.
//!
//! Every read is bounded: the response head by [`MAX_HEAD`], the body by the caller's cap; a body is
//! framed by `Content-Length` or chunked encoding (else it ends with the connection), and a caller
//! that needs only the status closes the connection as soon as the head has arrived.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response head (status line and headers) read.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most a health probe reads of a body (it needs only the status; the cap bounds a server that
/// streams forever).
pub const PROBE_BODY_CAP: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url:?} is not a usable URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS with {addr} failed: {source}")]
    Tls { addr: String, source: std::io::Error },
    #[error("request to {addr} failed: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("no answer from {0} in time")]
    Timeout(String),
    #[error("malformed HTTP response from {addr}: {reason}")]
    Malformed { addr: String, reason: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// `http://host:port/path?query` or `https://…`. The path is printable ASCII only (no space, CR,
/// LF or other control byte can reach the request line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// An IP address or a DNS name, without brackets.
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, HttpError> {
        let bad = |reason: &str| HttpError::BadUrl { url: url.to_string(), reason: reason.to_string() };
        let (scheme, rest, default_port) = if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r, 80)
        } else if let Some(r) = url.strip_prefix("https://") {
            (Scheme::Https, r, 443)
        } else {
            return Err(bad("it must start with http:// (or https:// for ctl)"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if let Some(b) = path.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
            return Err(bad(&format!(
                "the path holds byte 0x{b:02x}; only printable ASCII is allowed (percent-encode the rest)"
            )));
        }
        if authority.contains('@') {
            return Err(bad("user information (user@host) is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("an IPv6 address lacks its closing ']'"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address in brackets"));
            }
            let port = match after {
                "" => default_port,
                p => p.strip_prefix(':').and_then(|p| p.parse().ok()).ok_or_else(|| bad("bad port"))?,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse::<u16>().map_err(|_| bad("bad port"))?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if !host.contains(':') && !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
            return Err(bad("the host is not an IP address or a DNS name"));
        }
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(Url { scheme, host, port, path })
    }

    /// The address a health probe connects to: http only, and the host must be an IP address or
    /// `localhost` (127.0.0.1). air-nanny resolves no names: a probe never waits on DNS.
    pub fn probe_target(&self) -> Result<SocketAddr, String> {
        if self.scheme != Scheme::Http {
            return Err("a health probe speaks plain http://".into());
        }
        Ok(SocketAddr::new(literal_host(&self.host)?, self.port))
    }

    /// `host:port` as written in a `Host` header and used to connect.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An IP address, or `localhost` as 127.0.0.1; any other name is refused (not resolved).
fn literal_host(host: &str) -> Result<IpAddr, String> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.parse::<IpAddr>().map_err(|_| {
        format!("{host:?} is not an IP address; air-nanny does not resolve names for checks (use the address, or localhost)")
    })
}

/// A TCP check's target: `IP:port`, `[IPv6]:port` or `localhost:port`.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return if a.port() == 0 { Err(format!("{s:?}: port 0 is not a port (1 to 65535)")) } else { Ok(a) };
    }
    let (host, port) =
        s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not an address: expected IP:port, e.g. 127.0.0.1:9000"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: {port:?} is not a port (1 to 65535)"))?;
    Ok(SocketAddr::new(literal_host(host.trim_start_matches('[').trim_end_matches(']'))?, port))
}

/// A response: status and (possibly capped) body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// How much of the response a caller wants.
#[derive(Debug, Clone, Copy)]
pub enum Want {
    /// The status only: the connection is closed once the head has arrived.
    Status,
    /// The body too, refused if it is larger than this.
    Body(usize),
}

/// One request with `Connection: close` over plain TCP; the whole exchange is bounded by `timeout`.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    Client::plain().request(method, url, headers, body, timeout).await
}

/// A client: plain, or TLS with a given rustls configuration (ctl's `--cacert`, `--cert`, `--key`).
#[derive(Clone)]
pub struct Client {
    tls: Option<Arc<rustls::ClientConfig>>,
    want: Want,
}

impl Client {
    pub fn plain() -> Client {
        Client { tls: None, want: Want::Body(64 * 1024 * 1024) }
    }

    pub fn with_tls(config: Arc<rustls::ClientConfig>) -> Client {
        Client { tls: Some(config), want: Want::Body(64 * 1024 * 1024) }
    }

    pub fn want(mut self, want: Want) -> Client {
        self.want = want;
        self
    }

    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let u = Url::parse(url)?;
        let addr = u.authority();
        tokio::time::timeout(timeout, self.exchange(method, &u, &addr, headers, body))
            .await
            .map_err(|_| HttpError::Timeout(addr.clone()))?
    }

    /// A probe's GET to an address already checked: no name is resolved.
    pub async fn probe(&self, target: SocketAddr, u: &Url, timeout: Duration) -> Result<Response, HttpError> {
        let addr = target.to_string();
        let fut = async {
            let stream =
                TcpStream::connect(target).await.map_err(|source| HttpError::Connect { addr: addr.clone(), source })?;
            send(stream, "GET", u, &addr, &[], None, self.want).await
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| HttpError::Timeout(addr.clone()))?
    }

    async fn exchange(
        &self,
        method: &str,
        u: &Url,
        addr: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let stream =
            TcpStream::connect(addr).await.map_err(|source| HttpError::Connect { addr: addr.to_string(), source })?;
        match (u.scheme, &self.tls) {
            (Scheme::Http, _) => send(stream, method, u, addr, headers, body, self.want).await,
            (Scheme::Https, None) => Err(HttpError::BadUrl {
                url: format!("https://{addr}{}", u.path),
                reason: "https:// needs --cacert FILE: the CA (or self-signed certificate) to trust".into(),
            }),
            (Scheme::Https, Some(config)) => {
                let name = rustls::pki_types::ServerName::try_from(u.host.clone()).map_err(|_| HttpError::BadUrl {
                    url: u.host.clone(),
                    reason: "not a valid TLS server name".into(),
                })?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|source| HttpError::Tls { addr: addr.to_string(), source })?;
                send(tls, method, u, addr, headers, body, self.want).await
            }
        }
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    u: &Url,
    addr: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    want: Want,
) -> Result<Response, HttpError> {
    let mut req = format!("{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", u.path, u.authority());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let io = |source| HttpError::Io { addr: addr.to_string(), source };
    stream.write_all(req.as_bytes()).await.map_err(io)?;
    stream.write_all(body).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let malformed = |reason| HttpError::Malformed { addr: addr.to_string(), reason };
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n > 0 {
            buf.extend_from_slice(&chunk[..n]);
        }
        match parse_response(&buf, n == 0, want) {
            Ok(Some(r)) => return Ok(r),
            Ok(None) if n == 0 => return Err(malformed("the connection closed before the response was complete")),
            Ok(None) => {}
            Err(reason) => return Err(malformed(reason)),
        }
    }
}

/// Parses what has arrived so far: `Ok(None)` asks for more, `Ok(Some)` is a complete response (or
/// the status alone, with [`Want::Status`]), `Err` names what is wrong. `eof`: nothing more will come.
/// Pure and bounded, so it can be fuzzed.
pub fn parse_response(raw: &[u8], eof: bool, want: Want) -> Result<Option<Response>, &'static str> {
    let Some(end) = find(raw, b"\r\n\r\n") else {
        return if raw.len() > MAX_HEAD { Err("the response head is larger than 16 KiB") } else { Ok(None) };
    };
    if end > MAX_HEAD {
        return Err("the response head is larger than 16 KiB");
    }
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the response head is not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        return Err("not an HTTP/1.x status line");
    }
    let status: u16 =
        parts.next().and_then(|s| s.parse().ok()).filter(|s| (100..=999).contains(s)).ok_or("no status code")?;
    let cap = match want {
        Want::Status => return Ok(Some(Response { status, body: Vec::new() })),
        Want::Body(cap) => cap,
    };
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("a header line without ':'")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| "Content-Length is not a number")?;
            if length.is_some_and(|l| l != n) {
                return Err("two different Content-Length headers");
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().split(',').any(|v| v.trim() == "chunked");
        }
    }
    let rest = &raw[end + 4..];
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
        return Ok(Some(Response { status, body: Vec::new() }));
    }
    if chunked {
        return dechunk(rest, cap).map(|b| b.map(|body| Response { status, body }));
    }
    match length {
        Some(n) if n > cap => Err("the body is larger than the limit"),
        Some(n) if rest.len() >= n => Ok(Some(Response { status, body: rest[..n].to_vec() })),
        Some(_) => Ok(None),
        None if rest.len() > cap => Err("the body is larger than the limit"),
        None if eof => Ok(Some(Response { status, body: rest.to_vec() })),
        None => Ok(None),
    }
}

/// A chunked body: `Ok(None)` until the last chunk has arrived.
fn dechunk(mut data: &[u8], cap: usize) -> Result<Option<Vec<u8>>, &'static str> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(data, b"\r\n") else {
            return if data.len() > 1024 { Err("a chunk size line is too long") } else { Ok(None) };
        };
        let size_str = std::str::from_utf8(&data[..line_end]).map_err(|_| "a chunk size is not text")?;
        let hex = size_str.split(';').next().unwrap_or_default().trim();
        if hex.is_empty() || hex.len() > 8 {
            return Err("a chunk size is not a hex number");
        }
        let size = usize::from_str_radix(hex, 16).map_err(|_| "a chunk size is not a hex number")?;
        if out.len().saturating_add(size) > cap {
            return Err("the body is larger than the limit");
        }
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        let Some(piece) = data.get(..size) else { return Ok(None) };
        out.extend_from_slice(piece);
        match data.get(size..size + 2) {
            None => return Ok(None),
            Some(b"\r\n") => data = &data[size + 2..],
            Some(_) => return Err("a chunk is not followed by CRLF"),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Want = Want::Body(1 << 20);

    #[test]
    fn urls_parse() {
        let u = Url::parse("http://127.0.0.1:8080/health?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 8080, "/health?x=1"));
        assert_eq!(Url::parse("http://h").unwrap().path, "/");
        assert_eq!(Url::parse("http://h?x").unwrap().path, "/?x");
        assert_eq!(Url::parse("http://[::1]:9/").unwrap().host, "::1");
        assert_eq!(Url::parse("https://h/").unwrap().port, 443);
        assert!(Url::parse("ftp://h/").is_err());
        assert!(Url::parse("http://:80/").is_err());
        assert!(Url::parse("http://h:0/").is_err());
        assert!(Url::parse("http://u@h/").is_err());
        assert!(Url::parse("http://a b/").is_err());
    }

    #[test]
    fn crlf_and_control_bytes_in_a_path_are_refused() {
        for bad in [
            "http://127.0.0.1/x\r\nHost: evil",
            "http://127.0.0.1/a b",
            "http://127.0.0.1/\u{7f}",
            "http://127.0.0.1/é",
        ] {
            let e = Url::parse(bad).unwrap_err().to_string();
            assert!(e.contains("printable ASCII"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn probe_targets_are_literal_addresses() {
        assert_eq!(Url::parse("http://localhost:9/").unwrap().probe_target().unwrap().to_string(), "127.0.0.1:9");
        assert!(Url::parse("http://example.com/").unwrap().probe_target().unwrap_err().contains("does not resolve"));
        assert!(Url::parse("https://127.0.0.1/").unwrap().probe_target().is_err());
        assert_eq!(parse_socket_addr("[::1]:5").unwrap().to_string(), "[::1]:5");
        assert_eq!(parse_socket_addr("localhost:5").unwrap().to_string(), "127.0.0.1:5");
        assert!(parse_socket_addr("127.0.0.1").is_err());
        assert!(parse_socket_addr("127.0.0.1:0").is_err());
        assert!(parse_socket_addr("db.local:5").is_err());
        assert!(parse_socket_addr("not an address").is_err());
    }

    #[test]
    fn responses_parse() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false, ALL).unwrap().unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        let r = parse_response(
            b"HTTP/1.1 404 NF\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n",
            false,
            ALL,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (404, "abcd"));
        // Content-Length is honoured: what follows is not read, and a short body asks for more.
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nabc", false, ALL).unwrap().unwrap();
        assert_eq!(r.text(), "a");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", false, ALL).unwrap().is_none());
        // Without framing the body ends with the connection.
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nab", false, ALL).unwrap().is_none());
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nab", true, ALL).unwrap().unwrap().text(), "ab");
        // The status alone, as soon as the head is there.
        assert_eq!(parse_response(b"HTTP/1.0 503 X\r\n\r\n", false, Want::Status).unwrap().unwrap().status, 503);
    }

    #[test]
    fn oversized_and_malformed_responses_are_refused() {
        let small = Want::Body(4);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, small).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n12345", false, small).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n", false, small).is_err());
        assert!(parse_response(&vec![b'a'; MAX_HEAD + 1], false, ALL).is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false, ALL).is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", false, ALL).is_err()
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false, ALL).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc", false, ALL).is_err());
    }
}
