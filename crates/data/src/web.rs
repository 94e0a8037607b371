//! Small HTTP helpers shared by the keyval and database plugins: bodies as JSON (with a size
//! limit and clear 400s), query strings, JSON replies, and server-sent events.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use marina_core::{Body, Error, body};
use serde_json::Value as Json;
use tokio::sync::mpsc;

/// The largest request body the data plugins read (a 1 MiB value plus its JSON framing).
pub(crate) const MAX_BODY: usize = 8 * 1024 * 1024;

/// Read the whole body, at most [`MAX_BODY`] bytes (413 beyond).
pub(crate) async fn read_body(mut b: Body) -> Result<Bytes, Error> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = b.frame().await {
        let frame = frame
            .map_err(|e| Error::bad_request("BODY_UNREADABLE", format!("the request body could not be read: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(Error::payload_too_large(MAX_BODY as u64));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The body as JSON; an empty body is `None`.
pub(crate) async fn json_body(b: Body) -> Result<Option<Json>, Error> {
    let bytes = read_body(b).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::bad_request("JSON_INVALID", format!("the body is not valid JSON: {e}"))
            .with_data(serde_json::json!({ "line": e.line(), "column": e.column() }))
    })
}

/// The body as JSON, required.
pub(crate) async fn json_required(b: Body) -> Result<Json, Error> {
    json_body(b).await?.ok_or_else(|| Error::bad_request("JSON_INVALID", "the request needs a JSON body"))
}

/// Decoded query parameters (last one wins).
pub(crate) fn query(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k), decode(v));
    }
    out
}

/// Percent-decode (and `+` as space, as forms encode it).
pub(crate) fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// A number from the query; `name` in the error.
pub(crate) fn query_num(q: &HashMap<String, String>, name: &str) -> Result<Option<usize>, Error> {
    match q.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            Error::bad_request("QUERY_INVALID", format!("{name}: expected a non-negative integer, found '{v}'"))
                .with_data(serde_json::json!({ "path": name }))
        }),
    }
}

/// A boolean from the query (`true`/`1`).
pub(crate) fn query_bool(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v == "true" || v == "1")
}

/// 405 `METHOD_NOT_ALLOWED` for a route that exists under other methods, with `Allow`.
pub(crate) fn method_not_allowed(method: &http::Method, path: &str, allow: &[&str]) -> Error {
    let list = allow.join(", ");
    Error::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{method} is not allowed on {path} (allowed: {list})"),
    )
    .with_data(serde_json::json!({ "allow": allow }))
    .with_header(header::ALLOW, HeaderValue::from_str(&list).unwrap_or(HeaderValue::from_static("GET")))
}

/// A JSON reply with a status.
pub(crate) fn reply(status: StatusCode, value: &Json) -> Response<Body> {
    let mut resp = Response::new(body::full(serde_json::to_vec(value).unwrap_or_default()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A 200 text reply of `content_type`.
pub(crate) fn text(content_type: &'static str, text: String) -> Response<Body> {
    let mut resp = Response::new(body::full(text));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A 200 JSON reply.
pub(crate) fn ok(value: &Json) -> Response<Body> {
    reply(StatusCode::OK, value)
}

/// How often an idle event stream sends a `ping` (keeps proxies from closing it, and notices
/// a client that left).
pub(crate) const PING: Duration = Duration::from_secs(15);

/// A server-sent-events reply fed by `produce`, which gets a sender of `(event, data)` pairs
/// and stops when the client leaves (the sender then reports closed). Nothing runs for a
/// stream whose client is gone: the body's receiver is dropped, `produce` sees it and ends.
pub(crate) fn sse<F, Fut>(produce: F) -> Response<Body>
where
    F: FnOnce(mpsc::Sender<(String, Json)>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut events) = mpsc::channel::<(String, Json)>(16);
    let (frames_tx, mut frames) = mpsc::channel::<Bytes>(16);
    let pinger = frames_tx.clone();
    tokio::spawn(produce(tx));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PING);
        tick.tick().await;
        loop {
            let frame = tokio::select! {
                e = events.recv() => match e {
                    Some((event, data)) => format!("event: {event}\ndata: {data}\n\n"),
                    None => break,
                },
                _ = tick.tick() => "event: ping\ndata: {}\n\n".to_string(),
                () = pinger.closed() => break,
            };
            if frames_tx.send(Bytes::from(frame)).await.is_err() {
                break;
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        frames.poll_recv(cx).map(|o| o.map(|b| Ok::<_, marina_core::body::BoxError>(http_body::Frame::data(b))))
    });
    let mut resp = Response::new(body::boxed(http_body_util::StreamBody::new(stream)));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
