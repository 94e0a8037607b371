//! Forwarding to remote upstreams: the targets of proxy rules.
//!
//! One pooled client ([`crate::hosts`]: a keep-alive pool per scheme+host, idle connections
//! expired, each connection driven by the request using it) over rustls with the ring provider.
//! There are two clients because a rule's `secure: false` needs a TLS config that accepts any
//! certificate, and a connection made without verification must never be reused for a rule
//! that asked for it. Upstreams speak HTTP/1.1, which is what WebSocket upgrades need.
//!
//! This module turns a request and its rule into the upstream's request, and failures into
//! answers; how connections are made (the SSRF policy on resolving and on connecting, the TLS
//! verifier of `secure: false`) is in `connect`.

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::header;
use http::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use marina_core::Error;
use marina_core::body::{self, Body};
use rustls::pki_types::CertificateDer;
use serde_json::json;

use crate::forwarded::{ClientInfo, set_forwarding_headers};
use crate::headers::{is_upgrade, strip_hop_by_hop};
use crate::hosts::SendError;
use crate::limit::BodyTooLarge;
use crate::policy::TargetPolicy;
use crate::rules::Rule;
use crate::splice::splice;

mod connect;

use connect::{AnyCertificate, Client, Refused, client};

/// Timeouts, pool sizes, trust and the SSRF policy of the remote client.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// TCP connect deadline (then 504).
    pub connect_timeout: Duration,
    /// Deadline for the upstream's response head, from sending the request (then 504).
    pub response_timeout: Duration,
    /// Idle keep-alive connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Idle keep-alive connections kept per upstream host.
    pub max_idle_per_host: usize,
    /// A proxied WebSocket with no byte either way for this long is closed (`None`: never).
    pub ws_idle_timeout: Option<Duration>,
    /// Certificates trusted besides the system's roots (a private CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// What targets may be reached.
    pub policy: TargetPolicy,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 32,
            ws_idle_timeout: Some(Duration::from_secs(600)),
            extra_roots: Vec::new(),
            policy: TargetPolicy::default(),
        }
    }
}

/// The client for remote upstreams. Cheap to share (`Arc`); one per process is the intent.
pub struct Remote {
    /// Built on the first rule that verifies certificates: loading the system's roots reads
    /// some 150 files, which a marina without such a rule should not pay for at start-up, and
    /// which is done on the blocking pool, not on the thread serving requests.
    verified: tokio::sync::OnceCell<Client>,
    /// The verifying TLS configuration, up to its roots.
    verified_tls: rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>,
    /// The configured extra roots (checked by [`Remote::new`]); the system's join them.
    extra_roots: rustls::RootCertStore,
    insecure: Client,
    config: RemoteConfig,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("config", &self.config).finish()
    }
}

impl Remote {
    /// Builds the clients (the verifying one on first use). Fails only when the TLS
    /// configuration cannot be built.
    pub fn new(config: RemoteConfig) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut extra_roots = rustls::RootCertStore::empty();
        for cert in &config.extra_roots {
            extra_roots
                .add(cert.clone())
                .map_err(|e| Error::internal(format!("cannot trust the configured proxy CA certificate: {e}")))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("cannot build the proxy TLS configuration: {e}")))?;
        let insecure_tls = tls
            .clone()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        let insecure = client(&config, insecure_tls);
        Ok(Self { verified: tokio::sync::OnceCell::new(), verified_tls: tls, extra_roots, insecure, config })
    }

    /// The client that verifies upstream certificates against the system's roots and the
    /// configured ones.
    async fn verified(&self) -> &Client {
        self.verified
            .get_or_init(|| async {
                let system = tokio::task::spawn_blocking(|| rustls_native_certs::load_native_certs().certs)
                    .await
                    .unwrap_or_default();
                let mut roots = self.extra_roots.clone();
                roots.add_parsable_certificates(system);
                let tls = self.verified_tls.clone().with_root_certificates(roots).with_no_client_auth();
                client(&self.config, tls)
            })
            .await
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &RemoteConfig {
        &self.config
    }

    /// Forwards `req` along `rule`. `path` is what the rule's pattern was matched against (the
    /// whole path for plugin rules, the app-relative path for an app's manifest rules); the
    /// request's query string is kept.
    ///
    /// Hop-by-hop headers go, the forwarding headers come from [`set_forwarding_headers`],
    /// `Host` (and `Origin`) follow `changeOrigin`, the rule's headers are set last. The body
    /// streams both ways; the upstream's `Content-Encoding` is passed through untouched. A
    /// WebSocket upgrade (when the rule's `ws` allows it) is spliced end to end once both sides
    /// have switched protocols. A rule with `base` or `relativePaths` rewrites HTML answers as
    /// they stream ([`crate::html`]).
    pub async fn forward(
        &self,
        rule: &Rule,
        path: &str,
        mut req: Request<Body>,
        client: ClientInfo,
    ) -> Result<Response<Body>, Error> {
        // Rules are checked when validated, but maybe against another policy (a manifest is read
        // before marina knows its own address): this policy is the one that holds.
        if let Some(why) = self.config.policy.refuse_host(rule.target.authority.host(), rule.target.port) {
            return Err(Error::bad_gateway("PROXY_TARGET_REFUSED", format!("proxy rule '{}': {why}", rule.id))
                .with_data(json!({ "rule": rule.id, "target": rule.target.authority.as_str() })));
        }
        let upgrade = rule.ws() && is_upgrade(req.headers());
        *req.uri_mut() = rule.upstream_uri(path, req.uri().query())?;
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers, upgrade);
        set_forwarding_headers(headers, client);
        if rule.change_origin() {
            headers.insert(header::HOST, rule.target.host_header.clone());
            if headers.contains_key(header::ORIGIN) {
                headers.insert(header::ORIGIN, rule.target.origin_header.clone());
            }
        }
        for (name, value) in rule.headers() {
            headers.insert(name.clone(), value.clone());
        }
        let html = if upgrade { None } else { rule.html() };
        if let Some(html) = html {
            html.prepare(headers);
        }
        let head = req.method() == http::Method::HEAD;
        let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
        let http = if rule.secure() { self.verified().await } else { &self.insecure };
        let upgrading = client_side.is_some();
        let exchange = async {
            if upgrading { http.upgrade(req).await.map(|r| r.map(body::boxed)) } else { http.send(req).await }
        };
        // Pinned here and timed by reference: the exchange future holds the request and the
        // connection's send state, and moving it into `Timeout`, and that into the caller's
        // future, copied it several times (~1,500 instructions a request, callgrind on
        // `bench/proxy.sh`).
        let sent = {
            let exchange = std::pin::pin!(exchange);
            tokio::time::timeout(self.config.response_timeout, exchange).await
        };
        let mut resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(self.classify(rule, e)),
            Err(_) => {
                return Err(Error::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "UPSTREAM_TIMEOUT",
                    format!(
                        "proxy rule '{}': {} did not answer within {:?}",
                        rule.id, rule.target.authority, self.config.response_timeout
                    ),
                )
                .with_data(json!({ "rule": rule.id })));
            }
        };
        match client_side {
            Some(client_side) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let upstream_side = hyper::upgrade::on(&mut resp);
                let idle = self.config.ws_idle_timeout;
                let rule_id = rule.id.clone();
                tokio::spawn(async move {
                    match tokio::join!(client_side, upstream_side) {
                        (Ok(c), Ok(u)) => {
                            if let Err(e) = splice(TokioIo::new(c), TokioIo::new(u), idle).await {
                                tracing::debug!(rule = %rule_id, error = %e, "proxied WebSocket ended");
                            }
                        }
                        (c, u) => tracing::debug!(
                            rule = %rule_id,
                            client_ok = c.is_ok(),
                            upstream_ok = u.is_ok(),
                            "upgrade did not complete on both sides"
                        ),
                    }
                });
                strip_hop_by_hop(resp.headers_mut(), true);
            }
            _ => strip_hop_by_hop(resp.headers_mut(), false),
        }
        Ok(match html {
            Some(html) => html.apply(resp, head),
            None => resp,
        })
    }

    fn classify(&self, rule: &Rule, e: SendError) -> Error {
        let chain = error_chain(e.as_error());
        let data = json!({ "rule": rule.id, "target": rule.target.authority.as_str() });
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e.as_error());
        while let Some(inner) = cur {
            if inner.is::<BodyTooLarge>() {
                let limit = inner.downcast_ref::<BodyTooLarge>().map_or(0, |b| b.limit);
                return Error::payload_too_large(limit);
            }
            // The resolver's refusal travels inside an io::Error, whose `source()` skips it.
            let refused = inner
                .downcast_ref::<Refused>()
                .or_else(|| inner.downcast_ref::<io::Error>().and_then(|io| io.get_ref()?.downcast_ref::<Refused>()));
            if let Some(refused) = refused {
                return Error::bad_gateway("PROXY_TARGET_REFUSED", format!("proxy rule '{}': {}", rule.id, refused.0))
                    .with_data(data);
            }
            if let Some(io) = inner.downcast_ref::<io::Error>()
                && io.kind() == io::ErrorKind::TimedOut
                && e.is_connect()
            {
                return Error::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "UPSTREAM_TIMEOUT",
                    format!(
                        "proxy rule '{}': connecting to {} timed out after {:?}",
                        rule.id, rule.target.authority, self.config.connect_timeout
                    ),
                )
                .with_data(data);
            }
            cur = inner.source();
        }
        if e.is_connect() {
            return Error::bad_gateway(
                "UPSTREAM_UNREACHABLE",
                format!("proxy rule '{}': cannot connect to {}: {chain}", rule.id, rule.target.authority),
            )
            .with_data(data);
        }
        Error::bad_gateway(
            "UPSTREAM_FAILED",
            format!("proxy rule '{}': {} failed: {chain}", rule.id, rule.target.authority),
        )
        .with_data(data)
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let _ = write!(s, ": {inner}");
        cur = inner.source();
    }
    s
}
