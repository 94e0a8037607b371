//! Real servers on 127.0.0.1 for the remote-proxy tests: an HTTP upstream, a WebSocket
//! upstream (plain or TLS), and a front that routes requests through a [`RuleSet`] and
//! [`Remote`] the way marina's proxy plugin does.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use marina_core::body::{self, Body};
use marina_proxy::rules::RuleSpec;
use marina_proxy::{ClientInfo, Remote, RemoteConfig, Rule, RuleSet, TargetPolicy};
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The front: one listener, the current rule set, one remote client.
pub struct Front {
    pub addr: SocketAddr,
    pub rules: Arc<RwLock<Arc<RuleSet>>>,
    pub policy: TargetPolicy,
}

impl Front {
    pub async fn start(config: RemoteConfig) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut policy = config.policy.clone();
        policy.add_own(addr);
        let remote = Arc::new(Remote::new(RemoteConfig { policy: policy.clone(), ..config }).unwrap());
        let rules: Arc<RwLock<Arc<RuleSet>>> = Arc::new(RwLock::new(Arc::new(RuleSet::default())));
        let shared = rules.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, peer)) = listener.accept().await else { continue };
                let (remote, rules) = (remote.clone(), shared.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (remote, set) = (remote.clone(), rules.read().clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let Some(m) = set.find(&path) else {
                            return Ok::<_, Infallible>(json(
                                StatusCode::NOT_FOUND,
                                serde_json::json!({"code": "NOT_FOUND"}),
                            ));
                        };
                        let client = ClientInfo { ip: peer.ip(), proto: "http" };
                        Ok(match remote.forward(&m.rule, &path, req.map(body::boxed), client).await {
                            Ok(resp) => resp,
                            Err(e) => json(e.status(), e.to_json()),
                        })
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).with_upgrades(),
                );
            }
        });
        Front { addr, rules, policy }
    }

    /// Replaces the rules with `specs` (compiled against the front's policy).
    pub fn set_rules(&self, specs: Vec<RuleSpec>) {
        let rules = specs
            .into_iter()
            .enumerate()
            .map(|(i, s)| Arc::new(Rule::compile(format!("r{i}"), s, false, &self.policy).unwrap()))
            .collect();
        *self.rules.write() = Arc::new(RuleSet::new(Vec::new(), rules).unwrap());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

pub fn rule(pattern: &str, target: &str) -> RuleSpec {
    RuleSpec { pattern: pattern.into(), target: target.into(), ..Default::default() }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body::full(v.to_string()))
        .unwrap()
}

/// An HTTP upstream: `/slow…` waits 30 s; PUT/POST echo the body as it streams; `…gzip…`
/// answers pre-compressed bytes; anything else answers the request it saw as JSON.
pub async fn http_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), service_fn(upstream)),
            );
        }
    });
    addr
}

pub const GZIP_BYTES: &[u8] = &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0];

async fn upstream(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().to_string();
    if path.contains("/slow") {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    if req.method() == http::Method::PUT || req.method() == http::Method::POST {
        return Ok(Response::new(body::boxed(req.into_body())));
    }
    if path.contains("gzip") {
        return Ok(Response::builder()
            .header("content-encoding", "gzip")
            .header("content-type", "text/plain")
            .body(body::full(GZIP_BYTES))
            .unwrap());
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), serde_json::Value::String(v.to_str().unwrap_or("?").to_string())))
        .collect();
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("set-cookie", "a=1")
        .header("set-cookie", "b=2")
        .header("connection", "x-leak")
        .header("x-leak", "1")
        .header("location", "/elsewhere")
        .status(if path.contains("redirect") { 302 } else { 200 })
        .body(body::full(serde_json::json!({"path": path, "headers": headers}).to_string()))
        .unwrap())
}

/// A listener that reads the start of each request and then hangs up without answering.
pub async fn resetting_upstream() -> SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                let _ = s.read(&mut buf).await;
                drop(s);
            });
        }
    });
    addr
}

/// A port nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// A WebSocket upstream. The first message it sends is what it saw (path and query,
/// x-forwarded-for, host); then it echoes text and binary, and `close-NNNN` makes it close
/// with code NNNN and reason "bye". With `tls`, it serves wss with `tls`.
pub async fn ws_upstream(tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(s).await {
                            ws_session(s).await;
                        }
                    }
                    None => ws_session(s).await,
                }
            });
        }
    });
    addr
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature, not ours
async fn ws_session<S>(s: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut seen = serde_json::Value::Null;
    let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
              resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
        let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        seen = serde_json::json!({"path": req.uri().to_string(), "xff": h("x-forwarded-for"), "host": h("host"), "x-rule": h("x-rule")});
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, cb).await else { return };
    if ws.send(Message::text(seen.to_string())).await.is_err() {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        let echo = match msg {
            Message::Text(t) if t.starts_with("close-") => {
                let code: u16 = t[6..].parse().unwrap();
                let _ = ws.close(Some(CloseFrame { code: CloseCode::from(code), reason: "bye".into() })).await;
                continue;
            }
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(_) => return,
            _ => continue,
        };
        if ws.send(echo).await.is_err() {
            return;
        }
    }
}

/// A self-signed certificate for `localhost` and a TLS acceptor serving it.
pub fn tls_localhost() -> (tokio_rustls::TlsAcceptor, rustls::pki_types::CertificateDer<'static>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let der = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), der)
}

/// A TLS HTTP upstream (same behaviour as [`http_upstream`]).
pub async fn https_upstream(acceptor: tokio_rustls::TlsAcceptor) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(s) = acceptor.accept(s).await {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), service_fn(upstream))
                        .await;
                }
            });
        }
    });
    addr
}
