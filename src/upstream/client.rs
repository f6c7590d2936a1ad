//! The pooled HTTP client: HTTP/1.1 over plain TCP; over TLS (rustls, webpki roots) ALPN picks
//! h2 or HTTP/1.1. No OpenSSL.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

fn tls_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let builder = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b,
        // The ring provider supports the default versions; fall back to the process default anyway.
        Err(_) => rustls::ClientConfig::builder(),
    };
    builder.with_root_certificates(roots).with_no_client_auth()
}

/// A client with its own pool for one upstream (its connect timeout is the upstream's).
pub fn build_client(connect_timeout: Duration) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(connector)
}
