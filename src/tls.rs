//! TLS for the API (rustls with ring): the server configuration from `API_TLS_CERT`/`API_TLS_KEY`
//! (and `API_TLS_CLIENT_CA` for client certificates), swapped in place on SIGHUP; the listener that
//! hands axum finished handshakes with the peer's identity; and ctl's client configuration.
//!
//! Theory of operation: one accept task takes TCP connections and runs each handshake in its own
//! task, bounded in time and in number, so a slow or silent client never holds up the others; the
//! configuration is read once per connection, so a reload applies to the next handshake and the
//! listening socket is never closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 64;

/// The files a TLS configuration is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key}: {} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key}: {} holds no certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{key}: {} holds no usable private key: {e}", path.display()))
}

fn roots(path: &Path, key: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, key)? {
        roots.add(cert).map_err(|e| format!("{key}: {}: a certificate is not usable as a CA: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Builds the API's server configuration; every problem names its config.yaml key.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(&files.cert, "API_TLS_CERT")?;
    let key = read_key(&files.key, "API_TLS_KEY")?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca, "API_TLS_CLIENT_CA")?), provider())
                    .build()
                    .map_err(|e| format!("API_TLS_CLIENT_CA: {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("API_TLS_KEY: does not match API_TLS_CERT or is unusable: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// ctl's client configuration: trust `cacert` (air-nanny ships no CA bundle), and present a client
/// certificate when `cert_key` is given.
pub fn client_config(cacert: Option<&Path>, cert_key: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, String> {
    let cacert = cacert.ok_or("https:// needs --cacert FILE: the CA (or self-signed certificate) to trust")?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots(cacert, "--cacert")?);
    let config = match cert_key {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert, "--cert")?, read_key(key, "--key")?)
            .map_err(|e| format!("--cert/--key: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The server configuration in force, replaced whole on reload.
pub struct TlsState {
    files: RwLock<TlsFiles>,
    config: RwLock<Arc<ServerConfig>>,
}

impl TlsState {
    pub fn load(files: TlsFiles) -> Result<Arc<TlsState>, String> {
        let config = server_config(&files)?;
        Ok(Arc::new(TlsState { files: RwLock::new(files), config: RwLock::new(config) }))
    }

    /// Re-reads the files (SIGHUP); on any problem the configuration in force stays.
    pub fn reload(&self, files: Option<TlsFiles>) -> Result<(), String> {
        let files = match files {
            Some(f) => f,
            None => self.files.read().map_err(|_| "TLS state poisoned")?.clone(),
        };
        let config = server_config(&files)?;
        *self.config.write().map_err(|_| "TLS state poisoned")? = config;
        *self.files.write().map_err(|_| "TLS state poisoned")? = files;
        Ok(())
    }

    fn current(&self) -> Option<Arc<ServerConfig>> {
        self.config.read().ok().map(|c| c.clone())
    }

    pub fn requires_client_cert(&self) -> bool {
        self.files.read().map(|f| f.client_ca.is_some()).unwrap_or(true)
    }
}

/// Who is on the other end of a connection: the address, and the subject of the client
/// certificate it presented (TLS with `API_TLS_CLIENT_CA`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub cert_subject: Option<String>,
}

impl Connected<IncomingStream<'_, ApiListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, ApiListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// API connections open at once; more wait in the kernel's backlog (they cost air-nanny no file
/// descriptor) until one closes.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection with no request in progress is closed after this long without a byte.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A request's head must arrive whole within this long of its first byte (a slow or half-sent
/// request cannot hold a connection, or air-nanny's exit).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Where a connection is in its request cycle, for its timeouts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Between requests: closed after [`IDLE_TIMEOUT`] of silence.
    Idle,
    /// Reading a request's head; `tail` is its last three bytes so far (the end of a head is an
    /// empty line). Closed if the head is not whole within [`HEAD_TIMEOUT`].
    Head { tail: [u8; 3] },
    /// The head has arrived: the request is being served (bounded by API_TIMEOUT), no timeout here.
    Busy,
}

/// A connection to the API: plain TCP, or TLS over it; it holds one of the [`MAX_CONNECTIONS`]
/// slots and enforces the idle and head timeouts itself (hyper has no timer here).
pub struct ApiStream {
    io: Io,
    _slot: Option<OwnedSemaphorePermit>,
    stage: Stage,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl ApiStream {
    fn new(io: Io, slot: Option<OwnedSemaphorePermit>) -> ApiStream {
        ApiStream { io, _slot: slot, stage: Stage::Idle, timer: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)) }
    }

    /// Follows the request cycle through the bytes just read.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut tail = match self.stage {
            Stage::Busy => return,
            Stage::Idle => {
                self.timer.as_mut().reset(tokio::time::Instant::now() + HEAD_TIMEOUT);
                [0; 3]
            }
            Stage::Head { tail } => tail,
        };
        for &b in bytes {
            // An empty line ends the head: CRLF CRLF, or a bare LF LF, which parsers also accept.
            if b == b'\n' && (tail == *b"\r\n\r" || tail[2] == b'\n') {
                self.stage = Stage::Busy;
                return;
            }
            tail = [tail[1], tail[2], b];
        }
        self.stage = Stage::Head { tail };
    }
}

impl AsyncRead for ApiStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut me.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(Ok(())) => {
                let new = buf.filled()[before..].to_vec();
                me.saw(&new);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if me.stage != Stage::Busy && me.timer.as_mut().poll(cx).is_ready() => {
                let what = if me.stage == Stage::Idle { "idle" } else { "request head not complete" };
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
            }
            other => other,
        }
    }
}

impl AsyncWrite for ApiStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = match &mut me.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 && me.stage == Stage::Busy {
                // A response is going out: the next request starts from idle.
                me.stage = Stage::Idle;
                me.timer.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
            }
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The API's listener: plain, or one that yields only finished TLS handshakes.
pub struct ApiListener {
    local: SocketAddr,
    inner: Inner,
    slots: Arc<Semaphore>,
}

enum Inner {
    Plain(TcpListener),
    Tls(mpsc::Receiver<(ApiStream, Peer)>),
}

impl ApiListener {
    pub fn new(listener: TcpListener, tls: Option<Arc<TlsState>>) -> io::Result<ApiListener> {
        let local = listener.local_addr()?;
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let inner = match tls {
            None => Inner::Plain(listener),
            Some(tls) => {
                let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
                tokio::spawn(accept_tls(listener, tls, tx, slots.clone()));
                Inner::Tls(rx)
            }
        };
        Ok(ApiListener { local, inner, slots })
    }
}

async fn accept_tls(
    listener: TcpListener,
    tls: Arc<TlsState>,
    tx: mpsc::Sender<(ApiStream, Peer)>,
    connections: Arc<Semaphore>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = connections.clone().acquire_owned().await else { return };
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("API accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let Some(config) = tls.current() else { return };
        let tx = tx.clone();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let cert_subject = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| subject(c.as_ref()).unwrap_or_else(|| "(unreadable subject)".into()));
                    drop(permit);
                    let stream = ApiStream::new(Io::Tls(Box::new(stream)), Some(slot));
                    let _ = tx.send((stream, Peer { addr, cert_subject })).await;
                }
                Ok(Err(e)) => tracing::warn!(peer = %addr, "TLS handshake refused: {e}"),
                Err(_) => tracing::warn!(peer = %addr, "TLS handshake timed out"),
            }
        });
    }
}

impl Listener for ApiListener {
    type Io = ApiStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (ApiStream, Peer) {
        match &mut self.inner {
            Inner::Plain(l) => loop {
                let slot = self.slots.clone().acquire_owned().await.ok();
                match TcpListener::accept(l).await {
                    Ok((s, addr)) => return (ApiStream::new(Io::Plain(s), slot), Peer { addr, cert_subject: None }),
                    Err(e) => {
                        tracing::warn!("API accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
            Inner::Tls(rx) => match rx.recv().await {
                Some(c) => c,
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer { addr: self.local, cert_subject: None })
    }
}

/// The subject of an X.509 certificate as `CN=…, O=…` (the attributes people name), read from its
/// DER without an X.509 library: Certificate → tbsCertificate → subject, the sixth field.
pub fn subject(der: &[u8]) -> Option<String> {
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    // [0] version (optional), serial, signature, issuer, validity, subject.
    let (tag, _, r) = tlv(rest)?;
    if tag != 0xa0 {
        // No explicit version: the first field was already the serial.
        rest = r;
        for _ in 0..3 {
            rest = tlv(rest)?.2;
        }
    } else {
        rest = r;
        for _ in 0..4 {
            rest = tlv(rest)?.2;
        }
    }
    let (tag, mut name, _) = tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let mut parts = Vec::new();
    while !name.is_empty() {
        let (_, set, r) = tlv(name)?;
        name = r;
        let (_, attr, _) = tlv(set)?;
        let (oid_tag, oid, r) = tlv(attr)?;
        let (_, value, _) = tlv(r)?;
        if oid_tag != 0x06 {
            return None;
        }
        let label = match oid {
            [0x55, 0x04, 0x03] => "CN",
            [0x55, 0x04, 0x0a] => "O",
            [0x55, 0x04, 0x0b] => "OU",
            [0x55, 0x04, 0x06] => "C",
            _ => continue,
        };
        let text: String = String::from_utf8_lossy(value).chars().filter(|c| !c.is_control()).collect();
        parts.push(format!("{label}={text}"));
    }
    Some(parts.join(", "))
}

/// One DER element: (tag, contents, what follows).
fn tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *data.first()?;
    let first = *data.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *data.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, data.get(header..end)?, data.get(end..)?))
}

#[cfg(test)]
mod tests {

    /// A connection over loopback, wrapped as the API wraps it.
    async fn pair() -> (ApiStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (ApiStream::new(Io::Plain(server), None), client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_sent_head_and_an_idle_connection_time_out_a_request_being_served_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 256];
        // Half a head, then nothing: closed at the head timeout.
        let (mut s, mut c) = pair().await;
        c.write_all(b"GET /task/get HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        let t = tokio::time::Instant::now();
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= HEAD_TIMEOUT - Duration::from_secs(1) && t.elapsed() <= HEAD_TIMEOUT);
        // Nothing at all: closed when idle.
        let (mut s, _c) = pair().await;
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // A whole head (even in pieces across reads): no timeout while it is served, however long;
        // after the response, idle again.
        let (mut s, mut c) = pair().await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        c.write_all(b"\n\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        let served = tokio::time::timeout(Duration::from_secs(3600), s.read(&mut buf)).await;
        assert!(served.is_err(), "a request being served is never timed out by the connection");
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
    use super::*;

    #[test]
    fn der_elements_are_bounded() {
        assert_eq!(tlv(&[0x30, 0x01, 0xaa, 0xbb]), Some((0x30, &[0xaa][..], &[0xbb][..])));
        assert_eq!(tlv(&[0x30, 0x05, 0xaa]), None);
        assert_eq!(tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(tlv(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject(&[]), None);
        assert_eq!(subject(&[0x30, 0x00]), None);
    }
}
