//! Latency samples: a fixed ring, so stats cost no allocation per request.

use std::time::Duration;

/// The last `N` latencies in microseconds. Public so the server keeps its static apps' numbers
/// the same way as the pool keeps its workers'.
#[derive(Debug, Clone)]
pub struct LatencyRing {
    samples: Vec<u32>,
    next: usize,
    cap: usize,
}

impl LatencyRing {
    /// An empty ring keeping the last `cap` samples.
    pub fn new(cap: usize) -> Self {
        Self { samples: Vec::with_capacity(cap), next: 0, cap: cap.max(1) }
    }

    /// Add one sample, replacing the oldest when full.
    pub fn record(&mut self, d: Duration) {
        let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        if self.samples.len() < self.cap {
            self.samples.push(us);
        } else {
            self.samples[self.next] = us;
        }
        self.next = (self.next + 1) % self.cap;
    }

    /// Mean in milliseconds (0 with no samples).
    pub fn avg_ms(&self) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        self.samples.iter().map(|&s| f64::from(s)).sum::<f64>() / self.samples.len() as f64 / 1000.0
    }

    /// The 99th percentile in milliseconds (nearest rank; 0 with no samples).
    pub fn p99_ms(&self) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let rank = ((sorted.len() as f64) * 0.99).ceil() as usize;
        f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
    }
}

/// Resident set size of a process in bytes, from `VmRSS` in `/proc/{pid}/status` (Linux).
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rss_of_self_is_plausible() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 1024 * 1024, "rss {rss}");
    }

    #[test]
    fn mean_and_nearest_rank_p99() {
        let mut ring = LatencyRing::new(100);
        assert_eq!((ring.avg_ms(), ring.p99_ms()), (0.0, 0.0));
        for ms in 1..=100 {
            ring.record(Duration::from_millis(ms));
        }
        assert_eq!((ring.avg_ms(), ring.p99_ms()), (50.5, 99.0));
        let mut one = LatencyRing::new(100);
        one.record(Duration::from_millis(2));
        assert_eq!((one.avg_ms(), one.p99_ms()), (2.0, 2.0));
    }

    proptest! {
        #[test]
        fn p99_is_a_sample_and_at_least_the_mean(xs in proptest::collection::vec(0u32..10_000_000, 1..300)) {
            let mut ring = LatencyRing::new(100);
            for &x in &xs { ring.record(Duration::from_micros(u64::from(x))); }
            let kept: Vec<u32> = if xs.len() > 100 {
                // The ring keeps the last 100 samples.
                xs[xs.len() - 100..].to_vec()
            } else { xs.clone() };
            let p99 = ring.p99_ms();
            prop_assert!(kept.iter().any(|&k| (f64::from(k) / 1000.0 - p99).abs() < 1e-9));
            prop_assert!(p99 + 1e-9 >= f64::from(*kept.iter().min().unwrap()) / 1000.0);
            prop_assert!(p99 <= f64::from(*kept.iter().max().unwrap()) / 1000.0 + 1e-9);
        }
    }
}
