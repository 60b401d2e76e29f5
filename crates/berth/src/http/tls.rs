//! HTTPS on the API (rustls with the `ring` provider): a listener that
//! hands axum finished TLS streams, so `axum::serve` and its graceful
//! shutdown stay as they are for plain HTTP.
//!
//! Handshakes run concurrently, each with a timeout, off the accept loop.
//! The certificate and key are re-read when either file changes (checked
//! at every new connection; a bad new pair keeps the old one and logs).
//! A client speaking plain HTTP fails the handshake and gets no HTTP answer.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("tls_cert and tls_key do not make a usable pair: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What identifies a file's version without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        })
    }
}

struct Loaded {
    config: Arc<ServerConfig>,
    stamps: (Option<Stamp>, Option<Stamp>),
}

/// The current server configuration, re-read when its files change.
pub struct CertStore {
    files: TlsFiles,
    loaded: Mutex<Loaded>,
}

impl CertStore {
    /// Reads the pair once; a bad pair at boot is an error.
    pub fn load(files: TlsFiles) -> Result<CertStore, TlsError> {
        let stamps = (Stamp::of(&files.cert), Stamp::of(&files.key));
        let config = Arc::new(server_config(&files)?);
        Ok(CertStore {
            files,
            loaded: Mutex::new(Loaded { config, stamps }),
        })
    }

    /// The configuration for a new connection: re-reads the files first
    /// when their size, time or inode changed. A pair that does not load
    /// (half written, a key of another certificate) keeps the previous
    /// configuration; the next change is tried again.
    pub fn current(&self) -> Arc<ServerConfig> {
        let stamps = (Stamp::of(&self.files.cert), Stamp::of(&self.files.key));
        // A poisoned lock only means a panic mid-swap; the value is whole.
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.stamps != stamps {
            loaded.stamps = stamps;
            match server_config(&self.files) {
                Ok(config) => {
                    loaded.config = Arc::new(config);
                    tracing::info!(cert = %self.files.cert.display(), "re-read the TLS certificate");
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "the TLS certificate or key changed but does not load; still serving the previous one"
                ),
            }
        }
        loaded.config.clone()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A rustls server configuration from PEM files: the chain in `cert`
/// (leaf first), a PKCS#8, SEC1 or PKCS#1 key in `key`.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let pem_error = |path: &Path, message: String| TlsError::Pem {
        path: path.display().to_string(),
        message,
    };
    let cert_pem = read(&files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(pem_error(
            &files.cert,
            "holds no CERTIFICATE block".to_string(),
        ));
    }
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error(&files.key, format!("no usable PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An [`axum::serve::Listener`] of TLS connections.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Accepts on `listener` in a task of its own, which ends when this
    /// listener is dropped (as `axum::serve` does at shutdown).
    pub fn new(listener: TcpListener, certs: Arc<CertStore>) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(accept_loop(listener, certs, tx));
        Ok(TlsListener { local, ready })
    }
}

async fn accept_loop(
    listener: TcpListener,
    certs: Arc<CertStore>,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: wait, as axum does.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = TlsAcceptor::from(certs.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // Fails only when the server is shutting down.
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends once this receiver is gone; never
            // answer rather than invent a connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_garbage_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        let err = server_config(&files).unwrap_err().to_string();
        assert!(err.contains("cert.pem"), "{err}");
        std::fs::write(&files.cert, "not pem").unwrap();
        std::fs::write(&files.key, "not pem").unwrap();
        let err = server_config(&files).unwrap_err().to_string();
        assert!(
            err.contains("cert.pem") && err.contains("no CERTIFICATE"),
            "{err}"
        );
    }
}
