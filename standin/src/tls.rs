//! HTTPS for the stand-ins: a self-signed certificate made at start (for `localhost` and
//! 127.0.0.1), so that tests can check a client refuses it until told to trust it. Built only
//! with the `tls` feature: the product's `demo` needs none of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, pki_types};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// A certificate made for this server alone, and the acceptor that presents it.
pub(crate) struct Identity {
    /// The certificate in PEM, for a client to trust.
    pub(crate) certificate: String,
    pub(crate) acceptor: TlsAcceptor,
}

/// A fresh key and a self-signed certificate for `localhost` and `127.0.0.1`.
pub(crate) fn self_signed() -> Identity {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let mut params = rcgen::CertificateParams::new(names).expect("valid names");
    // A subject of its own: two stand-ins sharing one would look to a client like one CA,
    // and a certificate of one would be checked against the key of the other.
    let subject = format!("posthog-patterns stand-in {:016x}", fastrand::u64(..));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, subject);
    let signing_key = rcgen::KeyPair::generate().expect("a key");
    let cert = params
        .self_signed(&signing_key)
        .expect("a self-signed certificate");
    let key = pki_types::PrivatePkcs8KeyDer::from(signing_key.serialize_der());
    // The provider named, not the process default: which one that is depends on the
    // features other crates in the build happen to enable.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key.into())
        .expect("the key matches the certificate");
    Identity {
        certificate: cert.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
}

/// TCP connections that have completed a TLS handshake. A connection whose handshake fails
/// (the client refused the certificate) is dropped and the next one awaited.
pub(crate) struct Listener {
    pub(crate) tcp: TcpListener,
    pub(crate) acceptor: TlsAcceptor,
}

impl axum::serve::Listener for Listener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // One handshake at a time is plenty on loopback; the timeout keeps a client that
            // connects and never speaks from holding up the others.
            let handshake = self.acceptor.accept(tcp);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), handshake).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
