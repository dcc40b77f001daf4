//! TLS for the API (rustls with ring): the server configuration from `API_TLS_CERT`/`API_TLS_KEY`
//! (and `API_TLS_CLIENT_CA` for client certificates), swapped in place on SIGHUP; the listener that
//! hands axum finished handshakes with the peer's identity; and ctl's client configuration.
//!
//! Theory of operation: one accept task takes TCP connections and runs each handshake in its own
//! task, bounded in time and in number, so a slow or silent client never holds up the others; the
//! configuration is read once per connection, so a reload applies to the next handshake and the
//! listening socket is never closed.

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
use tokio::sync::{mpsc, Semaphore};
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

/// A connection to the API: plain TCP, or TLS over it.
pub enum ApiStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ApiStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ApiStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ApiStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ApiStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ApiStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ApiStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ApiStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The API's listener: plain, or one that yields only finished TLS handshakes.
pub struct ApiListener {
    local: SocketAddr,
    inner: Inner,
}

enum Inner {
    Plain(TcpListener),
    Tls(mpsc::Receiver<(ApiStream, Peer)>),
}

impl ApiListener {
    pub fn new(listener: TcpListener, tls: Option<Arc<TlsState>>) -> io::Result<ApiListener> {
        let local = listener.local_addr()?;
        let inner = match tls {
            None => Inner::Plain(listener),
            Some(tls) => {
                let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
                tokio::spawn(accept_tls(listener, tls, tx));
                Inner::Tls(rx)
            }
        };
        Ok(ApiListener { local, inner })
    }
}

async fn accept_tls(listener: TcpListener, tls: Arc<TlsState>, tx: mpsc::Sender<(ApiStream, Peer)>) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
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
                    let _ = tx.send((ApiStream::Tls(Box::new(stream)), Peer { addr, cert_subject })).await;
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
                match TcpListener::accept(l).await {
                    Ok((s, addr)) => return (ApiStream::Plain(s), Peer { addr, cert_subject: None }),
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
