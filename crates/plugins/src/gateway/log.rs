//! The gateway's request log: the last [`CAPACITY`] requests it saw (Buntime keeps a 100-entry
//! ring too, but only of rate-limited requests; marina keeps every request so that the log
//! shows what the limit refused among what it let through). In memory only.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};

/// How many requests the ring holds.
pub const CAPACITY: usize = 100;

/// One request, as kept: two instants, no clock conversion. The log takes one clock reading
/// per request (`finished`); the epoch timestamp and the duration are worked out only when the
/// log is read ([`Shown`]). Making them per request (a wall-clock read, a second monotonic read,
/// a float conversion) was ~130 instructions of every answer under callgrind.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When the request was accepted.
    pub started: Instant,
    /// When its answer's head was ready.
    pub finished: Instant,
    /// The real client address.
    pub ip: IpAddr,
    /// The method.
    pub method: http::Method,
    /// The path as received.
    pub path: Arc<str>,
    /// The status answered.
    pub status: u16,
    /// Whether the gateway's rate limit refused it.
    pub rate_limited: bool,
    /// `X-Request-Id`.
    pub request_id: Arc<str>,
}

impl Entry {
    fn duration_ms(&self) -> f64 {
        self.finished.saturating_duration_since(self.started).as_micros() as f64 / 1000.0
    }
}

/// One request as `/gateway/api/logs` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shown {
    /// Epoch milliseconds when it finished.
    pub timestamp: u64,
    /// The real client address.
    pub ip: IpAddr,
    /// The method.
    #[serde(serialize_with = "method_str")]
    pub method: http::Method,
    /// The path as received.
    #[serde(serialize_with = "text")]
    pub path: Arc<str>,
    /// The status answered.
    pub status: u16,
    /// Milliseconds from accept to the answer's head.
    pub duration: f64,
    /// Whether the gateway's rate limit refused it.
    pub rate_limited: bool,
    /// `X-Request-Id`.
    #[serde(serialize_with = "text")]
    pub request_id: Arc<str>,
}

/// Shared text (serde serializes `Arc<str>` only with its `rc` feature, for all of marina).
fn text<S: serde::Serializer>(t: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t)
}

fn method_str<S: serde::Serializer>(m: &http::Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

/// Which entries `GET /gateway/api/logs` wants.
#[derive(Debug, Default)]
pub struct Filter {
    /// At most this many, newest first.
    pub limit: usize,
    /// Only this client address.
    pub ip: Option<IpAddr>,
    /// Only rate-limited requests.
    pub rate_limited: bool,
    /// Only this status class (4 = 4xx).
    pub status_class: Option<u16>,
}

/// The ring.
#[derive(Default)]
pub struct RequestLog {
    ring: Mutex<VecDeque<Entry>>,
}

impl RequestLog {
    /// Keep `entry`, dropping the oldest when full.
    pub fn push(&self, entry: Entry) {
        let mut ring = self.ring.lock();
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// The entries `filter` selects, newest first.
    pub fn select(&self, filter: &Filter) -> Vec<Shown> {
        // One pair of clock readings turns every entry's instant into epoch milliseconds.
        let (epoch_now, now) = (super::limit::epoch_ms(), Instant::now());
        self.ring
            .lock()
            .iter()
            .rev()
            .filter(|e| filter.ip.is_none_or(|ip| e.ip == ip))
            .filter(|e| !filter.rate_limited || e.rate_limited)
            .filter(|e| filter.status_class.is_none_or(|c| e.status / 100 == c))
            .take(filter.limit)
            .map(|e| Shown {
                timestamp: epoch_now.saturating_sub(now.saturating_duration_since(e.finished).as_millis() as u64),
                ip: e.ip,
                method: e.method.clone(),
                path: Arc::clone(&e.path),
                status: e.status,
                duration: e.duration_ms(),
                rate_limited: e.rate_limited,
                request_id: Arc::clone(&e.request_id),
            })
            .collect()
    }

    /// Forget everything.
    pub fn clear(&self) {
        self.ring.lock().clear();
    }

    /// Counts over what the ring holds.
    pub fn stats(&self) -> Value {
        let ring = self.ring.lock();
        let mut by_class = [0u64; 6];
        for e in ring.iter() {
            by_class[usize::from(e.status / 100).min(5)] += 1;
        }
        json!({
            "total": ring.len(),
            "capacity": CAPACITY,
            "rateLimited": ring.iter().filter(|e| e.rate_limited).count(),
            "byStatus": { "2xx": by_class[2], "3xx": by_class[3], "4xx": by_class[4], "5xx": by_class[5] },
            "avgDuration": if ring.is_empty() { 0.0 } else { ring.iter().map(Entry::duration_ms).sum::<f64>() / ring.len() as f64 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u16, status: u16, limited: bool) -> Entry {
        let started = Instant::now();
        Entry {
            started,
            finished: started + std::time::Duration::from_millis(1),
            ip: if i.is_multiple_of(2) { "10.0.0.2".parse().unwrap() } else { "10.0.0.1".parse().unwrap() },
            method: http::Method::GET,
            path: format!("/p/{i}").into(),
            status,
            rate_limited: limited,
            request_id: i.to_string().into(),
        }
    }

    #[test]
    fn a_bounded_ring_filtered_newest_first() {
        let log = RequestLog::default();
        for i in 0..150u16 {
            log.push(entry(i, if i.is_multiple_of(10) { 429 } else { 200 }, i.is_multiple_of(10)));
        }
        let all = log.select(&Filter { limit: 1000, ..Filter::default() });
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(&*all[0].path, "/p/149");
        let limited = log.select(&Filter { limit: 3, rate_limited: true, ..Filter::default() });
        assert_eq!(limited.iter().map(|e| &*e.path).collect::<Vec<_>>(), ["/p/140", "/p/130", "/p/120"]);
        let fours = log.select(&Filter { limit: 100, status_class: Some(4), ..Filter::default() });
        assert_eq!(fours.len(), 10);
        let odd = log.select(&Filter { limit: 100, ip: Some("10.0.0.1".parse().unwrap()), ..Filter::default() });
        assert_eq!(odd.len(), 50);
        assert_eq!(log.stats()["rateLimited"], 10);
        assert_eq!(log.stats()["avgDuration"], 1.0);
        let newest = &all[0];
        assert_eq!(newest.duration, 1.0);
        let epoch = super::super::limit::epoch_ms();
        assert!(newest.timestamp <= epoch && newest.timestamp + 60_000 > epoch, "{} vs {epoch}", newest.timestamp);
        log.clear();
        assert_eq!(log.stats()["total"], 0);
    }
}
