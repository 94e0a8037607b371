//! One `wasm` worker: a linked component, instantiated per request (or reused, when the
//! manifest asks), answering through `wasi:http/incoming-handler`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use marina_apps::outbound::HostPattern;
use marina_core::body::BoxError;
use marina_core::{Body, Error};
use marina_workers::backend::{CallError, Instance, StartSpec};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{Notify, oneshot, watch};
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{Error as HttpError, WasiHttpCtx, WasiHttpView};

use crate::WasmOptions;
use crate::host::{DEADLINE_TRAP, Deadline, Host, Limits, MEMORY_TRAP, Outbound};
use crate::output::GuestOutput;

/// An instance kept for the next request (`reuseInstances`).
struct Warm {
    store: Store<Host>,
    proxy: Proxy,
}

pub(crate) struct WasmInstance {
    engine: Engine,
    pre: ProxyPre<Host>,
    key: Arc<str>,
    env: Arc<Vec<(String, String)>>,
    allowed: Arc<Vec<HostPattern>>,
    /// marina's own port (from `RUNTIME_API_URL`): requests to it are marked as an app's.
    api_port: Option<u16>,
    max_memory: Option<usize>,
    timeout: Duration,
    reuse: bool,
    warm: Mutex<Vec<Warm>>,
    /// Linear memory of every live instance, bytes.
    used: Arc<AtomicU64>,
    /// Requests running now, so a kill can abort them.
    running: Mutex<HashMap<u64, tokio::task::AbortHandle>>,
    /// Notified when `running` becomes empty.
    idle: Notify,
    next_task: AtomicU64,
    stopped: AtomicBool,
    exit_tx: watch::Sender<Option<String>>,
    /// The guest's stdout and stderr, into marina's log.
    output: GuestOutput,
}

impl WasmInstance {
    pub fn new(engine: Engine, pre: ProxyPre<Host>, spec: &StartSpec, opts: &WasmOptions) -> Self {
        let app = &spec.app;
        let mut env: Vec<(String, String)> = app.config.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, v) in [
            ("WORKER_ID", spec.worker_id.as_str()),
            ("NODE_ENV", opts.node_env.as_str()),
            ("RUNTIME_LOG_LEVEL", opts.log_level.as_str()),
            ("RUNTIME_API_URL", opts.runtime_api_url.as_str()),
        ] {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        }
        let allowed = app.config.allowed_outbound_hosts.iter().filter_map(|p| HostPattern::parse(p).ok()).collect();
        Self {
            engine,
            pre,
            key: app.key().into(),
            env: Arc::new(env),
            allowed: Arc::new(allowed),
            api_port: opts.runtime_api_url.parse::<http::Uri>().ok().and_then(|u| u.port_u16()),
            max_memory: app.config.max_memory.map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
            timeout: app.config.timeout,
            reuse: app.config.reuse_instances,
            warm: Mutex::new(Vec::new()),
            used: Arc::new(AtomicU64::new(0)),
            running: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            next_task: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            exit_tx: watch::Sender::new(None),
            output: GuestOutput::new(app.key(), &spec.worker_id),
        }
    }

    fn new_store(&self, exceeded: Arc<AtomicBool>, deadline: Arc<Deadline>) -> Store<Host> {
        let wasi = WasiCtxBuilder::new()
            .envs(self.env.as_slice())
            .stdout(self.output.stdout())
            .stderr(self.output.stderr())
            .build();
        let host = Host {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: Outbound { allowed: self.allowed.clone(), app: self.key.clone(), api_port: self.api_port },
            limits: Limits { max: self.max_memory, mine: 0, used: self.used.clone(), exceeded },
            deadline,
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            if ctx.data().deadline.running(Instant::now()) {
                Err(wasmtime::Error::msg(DEADLINE_TRAP))
            } else {
                // Through tokio's `yield_now`, which resumes the guest only after the runtime
                // has polled its timers and I/O. wasmtime's own `Yield` wakes the task at once,
                // so a single-threaded runtime (a per-thread scheduling connection thread, or
                // RUNTIME_THREADS=1) would look at I/O only every 61st tick (tokio's
                // event_interval): 610 ms of stalled requests beside a computing guest, measured
                // by bench/no-steal.sh.
                Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
            }
        });
        store
    }

    /// Runs one request to the end of the guest's `handle` (which may be after the response
    /// head was sent: the body streams from it). Returns the instance when it can serve again.
    async fn run(
        self: Arc<Self>,
        warm: Option<Warm>,
        req: Request<wasmtime_wasi_http::WasiBody>,
        tx: oneshot::Sender<Result<hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>, ErrorCode>>,
        exceeded: Arc<AtomicBool>,
        deadline: Arc<Deadline>,
    ) -> wasmtime::Result<()> {
        let (mut store, proxy) = match warm {
            Some(mut w) => {
                w.store.data_mut().deadline = deadline;
                (w.store, w.proxy)
            }
            None => {
                let mut store = self.new_store(exceeded, deadline);
                let proxy = self.pre.instantiate_async(&mut store).await?;
                (store, proxy)
            }
        };
        let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
        // The guest gets its own outparam, relayed to `tx` the moment it answers (the body may
        // stream after that, while `handle` still runs). If `handle` returns without having
        // answered, the guest may still hold the outparam (componentize-js keeps it in its
        // event object); with the store kept for reuse it would never be dropped, and the
        // caller would wait for an answer for ever.
        let (guest_tx, mut guest_rx) = oneshot::channel();
        let out = store.data_mut().http().new_response_outparam(guest_tx)?;
        let mut tx = Some(tx);
        let mut answered = false;
        {
            let call = proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out);
            tokio::pin!(call);
            loop {
                tokio::select! {
                    done = &mut call => {
                        done?;
                        break;
                    }
                    // An error: the guest dropped its outparam unanswered; the caller learns it
                    // when `tx` goes.
                    answer = &mut guest_rx, if tx.is_some() => {
                        if let (Ok(answer), Some(tx)) = (answer, tx.take()) {
                            answered = true;
                            let _ = tx.send(answer);
                        }
                    }
                }
            }
        }
        if let (Some(tx), Ok(answer)) = (tx, guest_rx.try_recv()) {
            answered = true;
            let _ = tx.send(answer);
        }
        // `handle` returned without answering (or dropped its outparam unanswered): the
        // instance is in a state nobody knows (componentize-js guests answer one request per
        // instance and throw on the next), so it is not kept; the caller's answer is gone with
        // `tx`, which tells it.
        if !answered {
            return Ok(());
        }
        if self.reuse && !self.stopped.load(Ordering::Acquire) {
            self.warm.lock().push(Warm { store, proxy });
        }
        Ok(())
    }

    fn failure(&self, e: &wasmtime::Error, exceeded: bool) -> Error {
        let text = format!("{e:#}");
        let key = &*self.key;
        if exceeded || text.contains(MEMORY_TRAP) {
            let max = self.max_memory.unwrap_or_default();
            return Error::bad_gateway(
                "WORKER_MEMORY_LIMIT",
                format!("app '{key}' needed more memory than its maxMemory of {max} bytes; the instance was stopped"),
            )
            .with_data(json!({ "app": key, "maxMemoryBytes": max }));
        }
        if text.contains(DEADLINE_TRAP) {
            let ms = self.timeout.as_millis() as u64;
            return Error::gateway_timeout(format!(
                "app '{key}' did not answer within {ms} ms; its instance was stopped"
            ))
            .with_data(json!({ "app": key, "timeoutMs": ms }));
        }
        Error::new(StatusCode::INTERNAL_SERVER_ERROR, "WORKER_TRAPPED", format!("app '{key}' failed: {text}"))
            .with_data(json!({ "app": key, "trap": text }))
    }
}

impl Instance for WasmInstance {
    fn call(self: Arc<Self>, req: Request<Body>) -> BoxFuture<'static, Result<Response<Body>, CallError>> {
        Box::pin(async move {
            if self.stopped.load(Ordering::Acquire) {
                return Err(CallError::Lost("the instance was stopped".into()));
            }
            let (mut parts, body) = req.into_parts();
            if !parts.headers.contains_key(http::header::HOST) {
                parts.headers.insert(http::header::HOST, HeaderValue::from_static("localhost"));
            }
            let tripped = Arc::new(AtomicBool::new(false));
            let seen = tripped.clone();
            let deadline = Deadline::new(self.timeout);
            let body = ClientWait { inner: body, deadline: deadline.clone() }.map_err(move |e: BoxError| {
                if e.is::<marina_proxy::BodyTooLarge>() {
                    seen.store(true, Ordering::Release);
                }
                HttpError::InternalError(Some(e.to_string()))
            });
            let req = Request::from_parts(parts, body.boxed_unsync());
            let warm = if self.reuse { self.warm.lock().pop() } else { None };
            let exceeded = Arc::new(AtomicBool::new(false));
            let (tx, rx) = oneshot::channel();
            let id = self.next_task.fetch_add(1, Ordering::Relaxed);
            // Registered before the task can finish and unregister itself.
            let task = {
                let mut running = self.running.lock();
                let this = self.clone();
                let exceeded = exceeded.clone();
                let task = tokio::spawn(async move {
                    // The epoch deadline stops a guest that computes; this one stops a guest
                    // waiting on the host (an outgoing request that never answers).
                    let watchdog = async {
                        while let Some(wait) = deadline.overdue(Instant::now(), crate::engine::TICK * 2) {
                            tokio::time::sleep(wait).await;
                        }
                    };
                    let result = tokio::select! {
                        r = this.clone().run(warm, req, tx, exceeded, deadline.clone()) => r,
                        () = watchdog => Err(wasmtime::Error::msg(DEADLINE_TRAP)),
                    };
                    let mut running = this.running.lock();
                    running.remove(&id);
                    if running.is_empty() {
                        this.idle.notify_waiters();
                    }
                    drop(running);
                    result
                });
                running.insert(id, task.abort_handle());
                task
            };
            let outcome = rx.await;
            if tripped.load(Ordering::Acquire) {
                return Err(CallError::BodyTooLarge);
            }
            match outcome {
                Ok(Ok(resp)) => Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync())),
                Ok(Err(code)) => Err(CallError::Failed(
                    Error::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "WORKER_TRAPPED",
                        format!("app '{}' answered with an error instead of a response: {code:?}", self.key),
                    )
                    .with_data(json!({ "app": &*self.key, "errorCode": format!("{code:?}") })),
                )),
                Err(_) => match task.await {
                    Ok(Ok(())) => Err(CallError::Failed(Error::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "WORKER_TRAPPED",
                        format!("app '{}' returned without setting a response", self.key),
                    ))),
                    Ok(Err(e)) => Err(CallError::Failed(self.failure(&e, exceeded.load(Ordering::Acquire)))),
                    Err(e) => Err(CallError::Lost(Box::new(e))),
                },
            }
        })
    }

    fn stop(self: Arc<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.stopped.store(true, Ordering::Release);
            self.warm.lock().clear();
            let deadline = tokio::time::Instant::now() + grace;
            loop {
                let idle = self.idle.notified();
                if self.running.lock().is_empty() || tokio::time::timeout_at(deadline, idle).await.is_err() {
                    break;
                }
            }
            self.kill();
        })
    }

    fn kill(&self) {
        self.stopped.store(true, Ordering::Release);
        self.warm.lock().clear();
        for (_, task) in self.running.lock().drain() {
            task.abort();
        }
        self.output.finish();
        self.exit_tx.send_if_modified(|s| {
            if s.is_none() {
                *s = Some("stopped".into());
                true
            } else {
                false
            }
        });
    }

    fn memory(&self) -> Option<u64> {
        Some(self.used.load(Ordering::Relaxed))
    }

    fn memory_enforced(&self) -> bool {
        true
    }

    fn log_lines_dropped(&self) -> u64 {
        self.output.dropped()
    }

    fn enforces_timeout(&self) -> bool {
        true
    }

    fn exit(&self) -> watch::Receiver<Option<String>> {
        self.exit_tx.subscribe()
    }
}

/// The request body on its way to the guest: time the guest waits for a piece that has not
/// arrived is the client's, not counted against `timeout` (see [`Deadline`]).
struct ClientWait {
    inner: Body,
    deadline: Arc<Deadline>,
}

impl http_body::Body for ClientWait {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let now = Instant::now();
        if polled.is_pending() {
            self.deadline.client_pending(now);
        } else {
            self.deadline.client_moved(now);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
