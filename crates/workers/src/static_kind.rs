//! The `static` kind behind the backend seam: one [`StaticSite`] per app version, answering in
//! process. It has no process, no lifecycle hooks and nothing to stop, so the pool runs it with
//! [`Policy::Shared`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Request, Response};
use marina_core::{Body, Error};
use tokio::sync::watch;

use crate::backend::{Backend, CallError, Instance, Policy, StartSpec};
use crate::html::Injection;
use crate::static_files::StaticSite;

/// Builds a [`StaticSite`] for each static app version.
#[derive(Debug, Default)]
pub struct StaticBackend;

impl Backend for StaticBackend {
    fn policy(&self) -> Policy {
        Policy::Shared
    }

    fn start(&self, spec: StartSpec) -> BoxFuture<'static, Result<Arc<dyn Instance>, Error>> {
        let app = spec.app;
        // The injection is a template: its `<base>` href is replaced per request (`x-base`).
        let template = Injection::from_config(&app.config, "");
        let site = StaticSite::new(app.dir.clone(), app.entrypoint.clone(), template);
        // Never sent: a site does not exit.
        let (exit_tx, exit) = watch::channel(None);
        let instance = Arc::new(StaticInstance { site, exit, _exit_tx: exit_tx });
        Box::pin(async move { Ok(instance as Arc<dyn Instance>) })
    }
}

struct StaticInstance {
    site: StaticSite,
    exit: watch::Receiver<Option<String>>,
    _exit_tx: watch::Sender<Option<String>>,
}

impl Instance for StaticInstance {
    fn call(self: Arc<Self>, req: Request<Body>) -> BoxFuture<'static, Result<Response<Body>, CallError>> {
        Box::pin(async move {
            self.site.serve(req.method(), req.uri().path(), req.headers()).await.map_err(CallError::Failed)
        })
    }

    fn stop(self: Arc<Self>, _grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    fn kill(&self) {}

    fn memory(&self) -> Option<u64> {
        None
    }

    fn exit(&self) -> watch::Receiver<Option<String>> {
        self.exit.clone()
    }
}
