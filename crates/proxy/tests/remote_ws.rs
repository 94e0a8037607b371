//! WebSocket proxying over real sockets: echo, rewritten path and query, close codes, TLS
//! upstreams, rule changes under open sockets, and many sockets at once.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use marina_proxy::RemoteConfig;
use marina_proxy::rules::RuleSpec;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(front: &Front, path: &str) -> (Ws, Value) {
    let url = format!("ws://{}{path}", front.addr);
    let (mut ws, resp) = tokio::time::timeout(Duration::from_secs(30), tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    let first = next_text(&mut ws).await;
    (ws, serde_json::from_str(&first).unwrap())
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("a message in time") {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn echo_rewrite_query_headers_and_close_codes() {
    let up = ws_upstream(None).await;
    let front = Front::start(RemoteConfig::default()).await;
    front.set_rules(vec![
        RuleSpec {
            rewrite: Some("/socket/$1".into()),
            headers: Some([("x-rule".to_string(), "on".to_string())].into()),
            ..rule("^/ws/(.*)$", &format!("ws://{up}/root"))
        },
        RuleSpec { ws: Some(false), ..rule("^/nows", &format!("http://{up}")) },
    ]);
    let (mut ws, seen) = open(&front, "/ws/chat?room=7&x=%20").await;
    assert_eq!(seen["path"], "/root/socket/chat?room=7&x=%20", "rewritten path, target path and query kept");
    assert_eq!(seen["xff"], "127.0.0.1");
    assert_eq!(seen["x-rule"], "on", "the rule's headers reach the upstream WebSocket too");

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "hello");
    let big = vec![9u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.unwrap() {
        Some(Ok(Message::Binary(b))) => assert_eq!(b.as_ref(), big.as_slice()),
        other => panic!("expected the binary echo, got {other:?}"),
    }

    // The upstream closes with 4321 "bye": the client sees exactly that.
    ws.send(Message::text("close-4321")).await.unwrap();
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.unwrap() {
            Some(Ok(Message::Close(f))) => break f.expect("a close frame with a code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(frame.code, CloseCode::from(4321));
    assert_eq!(frame.reason, "bye");

    // `ws: false`: the upgrade is not passed on, so the handshake fails.
    let url = format!("ws://{}/nows", front.addr);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}

#[tokio::test]
async fn wss_upstream_and_rule_changes_keep_open_sockets() {
    let (acceptor, _) = tls_localhost();
    let up = ws_upstream(Some(acceptor)).await;
    let front = Front::start(RemoteConfig::default()).await;
    front.set_rules(vec![RuleSpec { secure: Some(false), ..rule("^/s", &format!("wss://localhost:{}", up.port())) }]);
    let (mut ws, seen) = open(&front, "/s?q=1").await;
    assert_eq!(seen["path"], "/s?q=1");

    // Removing every rule stops new sockets, not the open one.
    front.set_rules(vec![]);
    let url = format!("ws://{}/s", front.addr);
    assert!(tokio_tungstenite::connect_async(url).await.is_err(), "no rule, no upgrade");
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "still here");
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn idle_sockets_are_closed() {
    let up = ws_upstream(None).await;
    let front =
        Front::start(RemoteConfig { ws_idle_timeout: Some(Duration::from_millis(400)), ..RemoteConfig::default() })
            .await;
    front.set_rules(vec![rule("^/", &format!("http://{up}"))]);
    let (mut ws, _) = open(&front, "/idle").await;
    // Nothing is sent: the proxy ends the relay and the client's stream ends.
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the idle socket must be closed by the proxy");
}

#[tokio::test]
async fn two_thousand_sockets_at_once() {
    const N: usize = 2000;
    let up = ws_upstream(None).await;
    let front = Front::start(RemoteConfig::default()).await;
    front.set_rules(vec![rule("^/many", &format!("http://{up}"))]);
    let front = &front;
    // Open in waves of 100 (the listen backlog is finite) and keep every socket open.
    let mut sockets: Vec<Ws> = futures_util::stream::iter(0..N)
        .map(|i| async move { open(front, &format!("/many/{i}")).await.0 })
        .buffer_unordered(100)
        .collect()
        .await;
    assert_eq!(sockets.len(), N);
    // Every socket still relays, with all of them open.
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        assert_eq!(next_text(ws).await, format!("m{i}"));
    }
    for mut ws in sockets {
        let _ = ws.close(None).await;
    }
}
