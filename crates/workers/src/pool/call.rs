//! Calling a worker: forwarding one request (its `timeout`, `maxRequests`, errors mapped to
//! responses), the in-flight guard that holds the worker (and an ephemeral worker's gate
//! permit) until the response body is done, and the one instance of a shared (static) kind.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use marina_apps::App;
use marina_core::body::{Body, BoxError};
use marina_core::{Error, body};
use serde_json::json;

use super::client_body::Upload;
use super::lifecycle::KILL_GRACE;
use super::worker::Worker;
use super::{Inner, gate};
use crate::backend::{Backend, CallError, StartSpec};
use crate::process::timing;

impl Inner {
    /// A [`Policy::Shared`] kind: the app version's one instance, started on first use.
    pub(super) async fn serve_shared(
        &self,
        backend: Arc<dyn Backend>,
        app: Arc<App>,
        req: Request<Body>,
    ) -> Result<Response<Body>, Error> {
        let started = Instant::now();
        let instance = match self.shared.get(&app) {
            Some(i) => i,
            None => {
                let spec = StartSpec {
                    app: app.clone(),
                    worker_id: app.key().to_string(),
                    ephemeral: false,
                    cancel: Default::default(),
                };
                let instance = backend.start(spec).await?;
                self.shared.insert(&app, instance)
            }
        };
        let result = match instance.call(req).await {
            Ok(resp) => Ok(resp),
            Err(CallError::BodyTooLarge) => Err(Error::payload_too_large(app.config.max_body_size)),
            Err(CallError::Failed(e)) => Err(e),
            Err(CallError::Lost(e)) => Err(Error::internal(format!("app '{}' failed: {e}", app.key()))),
        };
        let status = match &result {
            Ok(resp) => resp.status().as_u16(),
            Err(e) => e.status().as_u16(),
        };
        self.shared.record(&app, status, started.elapsed());
        result
    }

    pub(super) async fn forward(
        &self,
        guard: Arc<InFlight>,
        req: Request<Body>,
        tripped: Arc<AtomicBool>,
        upload: Upload,
    ) -> Result<Response<Body>, Error> {
        let worker = guard.worker.clone();
        let app = worker.app.clone();
        let mut req = req;
        if marina_proxy::is_upgrade(req.headers()) {
            // An open WebSocket counts as in flight until it closes.
            req.extensions_mut().insert(marina_proxy::Hold(guard.clone()));
        }
        let n = worker.requests.fetch_add(1, Ordering::AcqRel) + 1;
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let max_requests = app.config.max_requests.max(1);
        if !worker.ephemeral && n >= max_requests {
            self.retire(
                &worker,
                Some(format!("maxRequests ({}) reached", app.config.max_requests)),
                "maxRequests reached",
            );
        } else if !worker.ephemeral && n == max_requests - max_requests / 2 && max_requests >= 2 {
            self.start_successor(&worker);
        }
        let Some(instance) = worker.instance().cloned() else {
            return Err(Error::internal(format!("worker {} of app '{}' is not ready", worker.id, worker.key)));
        };
        let started = Instant::now();
        // The worker's `timeout` is the worker's time: all of it but the waits for a piece of
        // the body the client has not sent (a slow upload is the client's business, bounded by
        // RUNTIME_BODY_TIMEOUT), so a worker that never reads a large body is timed out like a
        // hung one. A kind that enforces `timeout` itself (wasm: the instance's deadline, which
        // stops just that call) is not timed here.
        let own_deadline = instance.enforces_timeout();
        let call = instance.call(req);
        let outcome = if own_deadline {
            Ok(call.await)
        } else {
            tokio::select! {
                biased;
                result = call => Ok(result),
                () = upload.worker_timeout(started.into(), app.config.timeout) => Err(()),
            }
        };
        if outcome.as_ref().is_ok_and(|r| r.is_err())
            && let Some(e) = upload.client_error()
        {
            return Err(e);
        }
        match outcome {
            Err(_) => {
                worker.errors.fetch_add(1, Ordering::Relaxed);
                worker.kill();
                let reason = format!("timeout: no response within {} ms", app.config.timeout.as_millis());
                self.note_restart(&worker, &reason);
                tracing::warn!(app = %worker.key, worker = %worker.id, "{reason}; worker killed");
                Err(Error::gateway_timeout(format!(
                    "app '{}' did not answer within {} ms; its worker was replaced",
                    worker.key,
                    app.config.timeout.as_millis()
                ))
                .with_data(json!({ "app": worker.key, "timeoutMs": app.config.timeout.as_millis() as u64 })))
            }
            Ok(Err(CallError::BodyTooLarge)) => Err(Error::payload_too_large(app.config.max_body_size)),
            Ok(Err(_)) if tripped.load(Ordering::Acquire) => Err(Error::payload_too_large(app.config.max_body_size)),
            Ok(Err(CallError::Failed(e))) => {
                worker.errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            Ok(Err(CallError::Lost(e))) => {
                worker.errors.fetch_add(1, Ordering::Relaxed);
                // Give the exit watcher a moment so the message can say how the process ended
                // (and whether the kernel killed it for its memory).
                if !worker.has_exited() {
                    worker.wait_exit(Duration::from_millis(500)).await;
                }
                let exit = worker.exit_status.lock().clone();
                if worker.over_memory() {
                    let limit = app.config.max_memory.unwrap_or_default();
                    return Err(Error::bad_gateway(
                        "WORKER_MEMORY_LIMIT",
                        format!(
                            "app '{}' went over its maxMemory of {limit} bytes and its worker was killed",
                            worker.key
                        ),
                    )
                    .with_data(
                        json!({ "app": worker.key, "worker": worker.id, "maxMemoryBytes": limit, "exit": exit }),
                    ));
                }
                let how = match &exit {
                    Some(status) => format!("its worker exited ({status})"),
                    None => "its worker closed the connection".to_string(),
                };
                Err(Error::bad_gateway(
                    "WORKER_CRASHED",
                    format!("app '{}' failed before answering: {how}", worker.key),
                )
                .with_data(json!({ "app": worker.key, "worker": worker.id, "exit": exit }))
                .with_source(e))
            }
            Ok(Ok(mut resp)) => {
                default_content_type(&mut resp);
                let took = started.elapsed();
                if n == 1 && timing::enabled() {
                    tracing::debug!(
                        target: timing::TARGET,
                        app = %worker.key, worker = %worker.id,
                        response_us = timing::us(took),
                        since_created_us = timing::us(worker.created.elapsed()),
                        "worker first response"
                    );
                }
                worker.latency.lock().record(took);
                self.latency.lock().record(took);
                if resp.status().is_server_error() {
                    worker.errors.fetch_add(1, Ordering::Relaxed);
                }
                Ok(resp.map(|b| body::boxed(GuardedBody { inner: b, _guard: guard })))
            }
        }
    }
}

/// Buntime's worker wrapper gives every response without a `Content-Type` the type
/// `text/plain;charset=utf-8`; apps (and their clients) written for Buntime rely on it.
/// Responses that carry no body by definition (1xx, 204, 304) are left alone.
fn default_content_type(resp: &mut Response<Body>) {
    let status = resp.status();
    if status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
        || resp.headers().contains_key(http::header::CONTENT_TYPE)
    {
        return;
    }
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain;charset=utf-8"));
}

/// Counts a request as in flight on its worker until the response body is done or dropped;
/// then an ephemeral worker is stopped and its gate slot freed.
pub(super) struct InFlight {
    pub(super) worker: Arc<Worker>,
    permit: Option<gate::Permit>,
    pool: Weak<Inner>,
}

impl InFlight {
    pub(super) fn enter(worker: Arc<Worker>, permit: Option<gate::Permit>, pool: Weak<Inner>) -> Self {
        worker.in_flight.fetch_add(1, Ordering::AcqRel);
        worker.idle_notified.store(false, Ordering::Release);
        worker.touch();
        Self { worker, permit, pool }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let w = &self.worker;
        w.touch();
        if w.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            w.drained.notify_waiters();
        }
        if w.ephemeral && w.begin_drain() {
            if let Some(pool) = self.pool.upgrade() {
                pool.counters.retired.fetch_add(1, Ordering::Relaxed);
            }
            let w = w.clone();
            let permit = self.permit.take();
            // The gate slot is held until the process is gone, so at most
            // RUNTIME_EPHEMERAL_CONCURRENCY ephemeral processes exist at once.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    w.terminate(KILL_GRACE).await;
                    drop(permit);
                });
            } else {
                w.kill();
            }
        }
    }
}

/// A worker's response body that holds its [`InFlight`] guard.
pub(super) struct GuardedBody {
    inner: Body,
    _guard: Arc<InFlight>,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
