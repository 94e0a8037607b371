//! `GET /gateway/api/sse`: Buntime's live view, one event per second whose data is
//! `{timestamp, rateLimit: {metrics, config} | null, cors | null, shell | null, recentLogs}`.
//!
//! Bounded by construction: an event is built only when the server polls the body for more,
//! which it does only once the previous ones were written to the socket, so a client that never
//! reads holds one interval timer and nothing else (no queue grows); missed seconds are skipped,
//! not caught up. The stream ends when the gateway shuts down or is replaced by a reload, and
//! when marina stops accepting connections (`PluginEnv::closing`), so it does not hold the
//! graceful shutdown until its deadline.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, Sse};
use futures_util::Stream;
use serde_json::{Value, json};

use super::State;
use super::limit::epoch_ms;
use super::log::Filter;

/// Time between events.
pub const EVERY: Duration = Duration::from_secs(1);

/// The stream of one client.
pub fn stream(state: Arc<State>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let events = futures_util::stream::unfold((state, tick), |(st, mut tick)| async move {
        tokio::select! {
            _ = tick.tick() => {}
            () = st.closing.cancelled() => return None,
        }
        let event = Event::default().data(payload(&st).to_string());
        Some((Ok(event), (st, tick)))
    });
    Sse::new(events)
}

/// One event's data, in Buntime's shape (`GatewaySSEData`).
pub fn payload(st: &State) -> Value {
    let rate_limit = if st.limits.is_empty() {
        Value::Null
    } else {
        let config = st.limits.describe();
        json!({
            "metrics": st.metrics_json(),
            "config": { "requests": config["requests"], "window": config["window"], "keyBy": config["keyBy"] },
        })
    };
    let cors = st.cors.as_ref().map(|p| {
        let mut v = p.describe();
        v["enabled"] = json!(true);
        v
    });
    let shell = st.shell.as_ref().map(|s| {
        let mut v = s.describe();
        v["enabled"] = json!(true);
        v["excludes"] = json!(s.entries());
        v
    });
    json!({
        "timestamp": epoch_ms(),
        "rateLimit": rate_limit,
        "cors": cors,
        "shell": shell,
        "recentLogs": st.log.select(&Filter { limit: 10, ..Filter::default() }),
    })
}
