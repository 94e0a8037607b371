//! `/keyval/api/metrics` and `/keyval/api/metrics/prometheus`: operation counts, errors and
//! latency per namespace (kept in memory by this marina instance since it started), with the
//! namespace's queue and storage read from the database at the time of the request.
//! Buntime's shapes: `{operations: {op: {count, errors, avgLatencyMs}}, totals, queue,
//! storage}` and `keyval_*` Prometheus series.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use marina_core::Error;
use marina_store::kv::Namespace;
use parking_lot::Mutex;
use serde_json::{Value as Json, json};

/// Upper bounds (ms) of the latency histogram's buckets, as Buntime's.
const BUCKETS_MS: [f64; 10] = [1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];

#[derive(Default, Clone)]
struct Op {
    count: u64,
    errors: u64,
    total_ms: f64,
    buckets: [u64; BUCKETS_MS.len()],
}

/// Counters per namespace and operation.
#[derive(Default)]
pub(crate) struct Metrics {
    by_ns: Mutex<HashMap<String, BTreeMap<&'static str, Op>>>,
}

impl Metrics {
    /// Count one operation of namespace `ns`.
    pub(crate) fn record(&self, ns: &str, op: &'static str, took: Duration, failed: bool) {
        let ms = took.as_secs_f64() * 1000.0;
        let mut map = self.by_ns.lock();
        let o = map.entry(ns.to_string()).or_default().entry(op).or_default();
        o.count += 1;
        o.errors += u64::from(failed);
        o.total_ms += ms;
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            if ms <= *le {
                o.buckets[i] += 1;
            }
        }
    }

    fn ops(&self, ns: &str) -> BTreeMap<&'static str, Op> {
        self.by_ns.lock().get(ns).cloned().unwrap_or_default()
    }

    /// The JSON form for `ns`.
    pub(crate) async fn json(&self, ns: &Namespace) -> Result<Json, Error> {
        let ops = self.ops(ns.name());
        let q = ns.queue_stats().await?;
        let (entries, bytes) = ns.storage().await?;
        let operations: serde_json::Map<String, Json> = ops
            .iter()
            .map(|(name, o)| {
                let avg = if o.count == 0 { 0.0 } else { o.total_ms / o.count as f64 };
                ((*name).to_string(), json!({ "count": o.count, "errors": o.errors, "avgLatencyMs": round(avg) }))
            })
            .collect();
        Ok(json!({
            "operations": operations,
            "totals": {
                "operations": ops.values().map(|o| o.count).sum::<u64>(),
                "errors": ops.values().map(|o| o.errors).sum::<u64>(),
            },
            "queue": { "pending": q.pending, "processing": q.processing, "dlq": q.dlq, "total": q.pending + q.processing },
            "storage": { "entries": entries, "sizeBytes": bytes },
        }))
    }

    /// The Prometheus text form for `ns`.
    pub(crate) async fn prometheus(&self, ns: &Namespace) -> Result<String, Error> {
        let ops = self.ops(ns.name());
        let q = ns.queue_stats().await?;
        let (entries, bytes) = ns.storage().await?;
        let mut out = String::new();
        let mut series = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
            out.push('\n');
        };
        let per_op = |f: &dyn Fn(&Op) -> String, name: &str| -> Vec<String> {
            ops.iter().map(|(op, o)| format!("{name}{{operation=\"{op}\"}} {}", f(o))).collect()
        };
        series(
            "keyval_operations_total",
            "counter",
            "Total operations by type",
            per_op(&|o| o.count.to_string(), "keyval_operations_total"),
        );
        series(
            "keyval_operation_errors_total",
            "counter",
            "Total errors by operation type",
            per_op(&|o| o.errors.to_string(), "keyval_operation_errors_total"),
        );
        let mut hist = Vec::new();
        for (op, o) in &ops {
            for (le, n) in BUCKETS_MS.iter().zip(o.buckets) {
                hist.push(format!("keyval_operation_duration_ms_bucket{{operation=\"{op}\",le=\"{le}\"}} {n}"));
            }
            hist.push(format!("keyval_operation_duration_ms_bucket{{operation=\"{op}\",le=\"+Inf\"}} {}", o.count));
            hist.push(format!("keyval_operation_duration_ms_sum{{operation=\"{op}\"}} {}", round(o.total_ms)));
            hist.push(format!("keyval_operation_duration_ms_count{{operation=\"{op}\"}} {}", o.count));
        }
        series("keyval_operation_duration_ms", "histogram", "Operation latency in milliseconds", hist);
        for (name, help, v) in [
            ("keyval_queue_pending", "Pending messages in queue", q.pending),
            ("keyval_queue_processing", "Messages being processed", q.processing),
            ("keyval_queue_dlq", "Messages in dead letter queue", q.dlq),
            ("keyval_queue_total", "Total messages in queue", q.pending + q.processing),
        ] {
            series(name, "gauge", help, vec![format!("{name} {v}")]);
        }
        series("keyval_storage_entries", "gauge", "Live entries", vec![format!("keyval_storage_entries {entries}")]);
        series(
            "keyval_storage_size_bytes",
            "gauge",
            "Size of the live values (JSON text)",
            vec![format!("keyval_storage_size_bytes {bytes}")],
        );
        Ok(out)
    }
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// The operation name a route counts under (Buntime's names where it has them).
pub(crate) fn op_name(method: &http::Method, segs: &[&str]) -> &'static str {
    use http::Method;
    match (method, segs) {
        (&Method::GET, ["keys"] | ["keys", "paginate"]) | (&Method::POST, ["keys", "list"]) => "list",
        (&Method::GET, ["keys", "count"]) => "count",
        (&Method::POST, ["keys", "batch"]) => "getMany",
        (&Method::POST, ["keys", "delete-batch"]) => "deleteMany",
        (&Method::GET, ["keys", ..]) => "get",
        (&Method::PUT, ["keys", ..]) => "set",
        (&Method::DELETE, ["keys", ..]) => "delete",
        (_, ["atomic"]) => "atomic",
        (_, ["watch", ..]) => "watch",
        (_, ["queue", "enqueue"]) => "enqueue",
        (_, ["queue", "poll" | "listen"]) => "dequeue",
        (_, ["queue", "ack"]) => "ack",
        (_, ["queue", "nack"]) => "nack",
        (_, ["queue", ..]) => "queue",
        (_, ["metrics", ..]) => "metrics",
        (_, ["indexes", ..]) => "index",
        (_, ["search", ..]) => "search",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_cumulative_buckets() {
        let m = Metrics::default();
        m.record("a", "get", Duration::from_micros(500), false);
        m.record("a", "get", Duration::from_millis(3), true);
        m.record("a", "get", Duration::from_millis(200), false);
        m.record("b", "set", Duration::from_millis(1), false);
        let ops = m.ops("a");
        let g = &ops["get"];
        assert_eq!((g.count, g.errors), (3, 1));
        assert_eq!(&g.buckets[..3], &[1, 2, 2]);
        assert_eq!(g.buckets[6], 3);
        assert!(!ops.contains_key("set"), "namespaces are apart");
    }
}
