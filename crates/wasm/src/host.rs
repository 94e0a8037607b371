//! What one WebAssembly instance's store holds: its WASI context (env only: no files, no
//! sockets), its `wasi:http` context with the outbound grant, its memory limit and its deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use marina_apps::outbound::HostPattern;
use parking_lot::Mutex;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// The trap message of an instance that wanted more memory than `maxMemory`.
pub(crate) const MEMORY_TRAP: &str = "marina: maxMemory exceeded";
/// The trap message of an instance still running at its deadline.
pub(crate) const DEADLINE_TRAP: &str = "marina: request deadline passed";

/// The store data of one instance.
pub(crate) struct Host {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
    pub hooks: Outbound,
    pub limits: Limits,
    /// When the request being served must have finished (checked at every epoch tick).
    pub deadline: Arc<Deadline>,
}

/// The deadline of one request: `timeout` of the guest's own time. Time spent waiting for the
/// client's request body does not count, as for the process kinds: a slow upload is bounded by `RUNTIME_BODY_TIMEOUT` (408) instead, and the guest is
/// not blamed. A wait ends when the body moves or when the guest runs code again (an epoch
/// tick), so a guest cannot compute on borrowed time while a body read is pending.
pub(crate) struct Deadline(Mutex<Clock>);

struct Clock {
    at: Instant,
    /// Since when the guest waits for a piece of the body that has not arrived.
    waiting_since: Option<Instant>,
}

impl Clock {
    /// Ends a wait for the client: the deadline moves by its length.
    fn end_wait(&mut self, now: Instant) {
        if let Some(since) = self.waiting_since.take() {
            self.at += now.saturating_duration_since(since);
        }
    }
}

impl Deadline {
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self(Mutex::new(Clock { at: Instant::now() + timeout, waiting_since: None })))
    }

    /// The guest runs code (an epoch tick): whether its deadline has passed.
    pub fn running(&self, now: Instant) -> bool {
        let mut c = self.0.lock();
        c.end_wait(now);
        now >= c.at
    }

    /// The guest asked for the next piece of the request body and it has not arrived.
    pub fn client_pending(&self, now: Instant) {
        self.0.lock().waiting_since.get_or_insert(now);
    }

    /// A piece of the request body arrived (or its end, or an error).
    pub fn client_moved(&self, now: Instant) {
        self.0.lock().end_wait(now);
    }

    /// For the watchdog of a guest blocked in the host: `None` once the deadline is `grace` past
    /// (and the guest is not waiting for the client), else how long to sleep before asking again.
    pub fn overdue(&self, now: Instant, grace: Duration) -> Option<Duration> {
        let c = self.0.lock();
        let at = match c.waiting_since {
            Some(since) => c.at + now.saturating_duration_since(since),
            None => c.at,
        } + grace;
        if c.waiting_since.is_none() && now >= at {
            return None;
        }
        Some(at.saturating_duration_since(now).max(grace))
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Outgoing HTTP, allowed only to the manifest's `allowedOutboundHosts`.
pub(crate) struct Outbound {
    pub allowed: Arc<Vec<HostPattern>>,
    pub app: Arc<str>,
    /// marina's own port: a request to it carries [`marina_core::headers::FROM_APP`], which the
    /// guest cannot remove, so the internal API knows it is an app's even though it comes from
    /// marina's own process (docs/security.md).
    pub api_port: Option<u16>,
}

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>),
                    HttpError,
                >,
            > + Send,
    > {
        drop(fut);
        let mut request = request;
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let host = uri.host().unwrap_or("").to_string();
        let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        if !self.allowed.iter().any(|p| p.allows(&scheme, &host, port)) {
            tracing::warn!(app = %self.app, "outgoing HTTP to {scheme}://{host}:{port} denied: not in allowedOutboundHosts");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        if Some(port) == self.api_port {
            request.headers_mut().insert(marina_core::headers::FROM_APP, http::HeaderValue::from_static("1"));
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((res.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

/// Caps linear memory at `maxMemory` and keeps the instance's current size in a counter the
/// worker sums for `/api/workers`.
pub(crate) struct Limits {
    pub max: Option<usize>,
    /// Bytes this store has added to `used`.
    pub mine: u64,
    pub used: Arc<AtomicU64>,
    /// Set when a growth past `max` was refused (the instance then traps).
    pub exceeded: Arc<AtomicBool>,
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if self.max.is_some_and(|max| desired > max) {
            self.exceeded.store(true, Ordering::Release);
            return Err(wasmtime::Error::msg(MEMORY_TRAP));
        }
        let grown = desired.saturating_sub(current) as u64;
        self.mine += grown;
        self.used.fetch_add(grown, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl Drop for Limits {
    fn drop(&mut self) {
        self.used.fetch_sub(self.mine, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use http_body_util::BodyExt;

    use super::*;

    /// One request's head as a plain TCP server saw it.
    fn one_request_head(listener: std::net::TcpListener) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the connection closed before the head ended");
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
            String::from_utf8_lossy(&head).to_ascii_lowercase()
        })
    }

    async fn send(api_port: Option<u16>, to: u16) -> String {
        let listener = std::net::TcpListener::bind(("127.0.0.1", to)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = one_request_head(listener);
        let allowed = vec![HostPattern::parse(&format!("http://127.0.0.1:{port}")).unwrap()];
        let mut hooks = Outbound { allowed: Arc::new(allowed), app: "guest".into(), api_port: api_port.or(Some(port)) };
        let body = http_body_util::Empty::<bytes::Bytes>::new().map_err(|never| match never {}).boxed_unsync();
        let req = http::Request::get(format!("http://127.0.0.1:{port}/api/keys")).body(body).unwrap();
        let fut = hooks.send_request(req, None, Box::new(async { Ok(()) }));
        let (resp, _io) = Box::into_pin(fut).await.unwrap();
        assert_eq!(resp.status(), 200);
        server.join().unwrap()
    }

    #[tokio::test]
    async fn a_guest_s_request_to_marina_s_port_is_marked_as_an_app_s() {
        let head = send(None, 0).await;
        assert!(head.contains("x-marina-from-app: 1"), "{head}");
        // To any other port: no mark.
        let head = send(Some(1), 0).await;
        assert!(!head.contains("x-marina-from-app"), "{head}");
    }
}
