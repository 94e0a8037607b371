//! How the remote client's connections are made: the TCP connector with the SSRF policy
//! applied twice (to the addresses a name resolves to, and to where a made connection went), the
//! TLS connector over it, and the verifier of `secure: false`. What is sent over them, and how
//! failures become answers, is the parent module's.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use marina_core::body::BoxError;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

use super::RemoteConfig;
use crate::hosts::Hosts;
use crate::policy::TargetPolicy;

/// A pooled client for rule targets: one keep-alive pool per scheme and host.
pub(super) type Client = Arc<Hosts<LoopGuard>>;

/// A pooled client over `tls`, every connection checked against the policy.
pub(super) fn client(config: &RemoteConfig, tls: rustls::ClientConfig) -> Client {
    let policy = Arc::new(config.policy.clone());
    let mut http = HttpConnector::new_with_resolver(PolicyResolver(policy.clone()));
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(LoopGuard { http, policy });
    Arc::new(Hosts::new(connector, config.max_idle_per_host, config.pool_idle_timeout))
}

/// A resolved address the SSRF policy refused.
#[derive(Debug)]
pub(super) struct Refused(pub(super) String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Resolves host names with the system resolver and drops the addresses the policy refuses;
/// when none is left, the connection fails with [`Refused`]. IP-literal targets never get
/// here: they are checked when the rule is validated.
#[derive(Clone)]
struct PolicyResolver(Arc<TargetPolicy>);

impl tower_service::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut why = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.refuse_ip(a.ip()) {
                    Some(w) => {
                        why = Some(w);
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty()
                && let Some(why) = why
            {
                return Err(io::Error::other(Refused(format!("'{host}' resolves to {why}"))));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// The TCP connector with the check only a made connection allows: where it went. A target
/// that reaches marina's own listener (by a name resolving to it, or any other spelling of its
/// address) is dropped before a byte is sent ([`TargetPolicy::refuse_connected`]).
#[derive(Clone)]
pub(super) struct LoopGuard {
    http: HttpConnector<PolicyResolver>,
    policy: Arc<TargetPolicy>,
}

impl tower_service::Service<http::Uri> for LoopGuard {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let policy = self.policy.clone();
        Box::pin(async move {
            let io = connecting.await?;
            let tcp = io.inner();
            if let (Ok(peer), Ok(local)) = (tcp.peer_addr(), tcp.local_addr())
                && let Some(why) = policy.refuse_connected(peer, local.ip())
            {
                return Err(Box::new(Refused(why)) as BoxError);
            }
            Ok(io)
        })
    }
}

/// The verifier of `secure: false`: any certificate is accepted, but the handshake signatures
/// are still checked, so the connection is at least bound to the key the server presented.
#[derive(Debug)]
pub(super) struct AnyCertificate(pub(super) Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use tower_service::Service;

    #[tokio::test]
    async fn names_resolving_to_refused_addresses_are_refused_on_connect() {
        let policy = TargetPolicy::new(vec![], vec![])
            .with_deny(vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        let mut resolver = PolicyResolver(Arc::new(policy));
        let err = resolver.call(Name::from_str("localhost").unwrap()).await.unwrap_err();
        let refused = err.get_ref().and_then(|e| e.downcast_ref::<Refused>()).expect("a Refused error");
        assert!(refused.0.contains("denies"), "{}", refused.0);

        let mut open = PolicyResolver(Arc::new(TargetPolicy::default()));
        let addrs: Vec<_> = open.call(Name::from_str("localhost").unwrap()).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
