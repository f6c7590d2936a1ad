//! A private CA and TLS upstreams on loopback for the `https://` tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Request, Response};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::LOOPBACK;

pub struct TestCa {
    ca_pem: String,
    leaf_der: CertificateDer<'static>,
    leaf_key: PrivateKeyDer<'static>,
}

pub fn test_ca() -> TestCa {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sloguard test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    TestCa {
        ca_pem: ca_cert.pem(),
        leaf_der: leaf.der().clone(),
        leaf_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

/// What a TLS upstream has seen so far.
#[derive(Debug, Default)]
pub struct Seen {
    handshakes: AtomicUsize,
    requests: AtomicUsize,
    closed: AtomicUsize,
}

impl Seen {
    /// TLS handshakes completed: connections made to it.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// Requests whose head reached it.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Connections it has finished with (after an h2 GOAWAY, once the peer acknowledged it).
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// A TLS upstream on loopback offering `alpn`; answers with the HTTP version it was spoken to in.
pub async fn tls_upstream(ca: &TestCa, alpn: &[&[u8]]) -> (SocketAddr, Arc<Seen>) {
    tls_upstream_closing(ca, alpn, None).await
}

/// As [`tls_upstream`]; with `close_after`, each connection is closed gracefully (an h2 GOAWAY)
/// once it has answered that many requests.
pub async fn tls_upstream_closing(
    ca: &TestCa,
    alpn: &[&[u8]],
    close_after: Option<usize>,
) -> (SocketAddr, Arc<Seen>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ca.leaf_der.clone()], ca.leaf_key.clone_key())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let tcp = tokio::net::TcpListener::bind(LOOPBACK).await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = tcp.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                count.handshakes.fetch_add(1, Ordering::SeqCst);
                let answered = Arc::new(AtomicUsize::new(0));
                let done = Arc::new(tokio::sync::Notify::new());
                let (a, d, c) = (answered.clone(), done.clone(), count.clone());
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (a, d) = (a.clone(), d.clone());
                    c.requests.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if close_after.is_some_and(|n| a.fetch_add(1, Ordering::SeqCst) + 1 >= n) {
                            d.notify_one();
                        }
                        let (parts, body) = req.into_parts();
                        // Read the whole body first, as a provider does before it answers.
                        let _ = http_body_util::BodyExt::collect(body).await;
                        let mut r =
                            Response::new(sloguard::sim::full(format!("{:?}", parts.version)));
                        if let Some(host) = parts.uri.authority() {
                            r.headers_mut()
                                .insert("x-authority", host.as_str().parse().unwrap());
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = done.notified() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
                count.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

pub fn write_ca(ca: &TestCa, name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("sloguard-ca-{name}-{}.pem", std::process::id()));
    std::fs::write(&path, &ca.ca_pem).unwrap();
    path
}
