//! Latency recording without locks on the data path: each stage records into its own
//! histogram and publishes it into a shared one at housekeeping time.

use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

/// Highest latency recorded (ns); larger values are clamped. 60 s covers any compare hold.
const MAX_NS: u64 = 60_000_000_000;

/// A shared, mergeable latency histogram (nanoseconds).
#[derive(Clone)]
pub struct SharedHistogram(Arc<Mutex<Histogram<u64>>>);

impl Default for SharedHistogram {
    fn default() -> Self {
        SharedHistogram(Arc::new(Mutex::new(new_histogram())))
    }
}

fn new_histogram() -> Histogram<u64> {
    // 3 significant digits over 1 ns..60 s: fixed-size, allocated once.
    Histogram::new_with_bounds(1, MAX_NS, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

impl SharedHistogram {
    /// A copy of the current histogram.
    pub fn snapshot(&self) -> Histogram<u64> {
        match self.0.lock() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// This histogram as the metrics endpoint's `colo_proxy_compare_hold_seconds`.
    pub fn metrics_source(&self) -> crate::mgmt::metrics::HistogramSource {
        let h = self.clone();
        crate::mgmt::metrics::HistogramSource {
            name: "colo_proxy_compare_hold_seconds",
            help: "Time released primaries were held by a compare shard (added latency).",
            read: Box::new(move || crate::mgmt::metrics::Buckets::from_hdr(&h.snapshot())),
        }
    }

    /// Merge `other` in.
    pub fn merge(&self, other: &Histogram<u64>) {
        let mut h = match self.0.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        let _ = h.add(other);
    }
}

/// How often housekeeping publishes at most: a merge walks the whole histogram and takes the
/// lock every shard shares, too dear for every idle loop of a busy lcore.
pub const PUBLISH_PERIOD_NS: u64 = 10_000_000;

/// A stage's private recorder.
pub struct LatencyRecorder {
    local: Histogram<u64>,
    shared: SharedHistogram,
    next_publish_ns: u64,
}

impl LatencyRecorder {
    /// A recorder publishing into `shared`.
    pub fn new(shared: SharedHistogram) -> Self {
        LatencyRecorder {
            local: new_histogram(),
            shared,
            next_publish_ns: 0,
        }
    }

    /// Record one latency (ns).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        let _ = self.local.record(ns.clamp(1, MAX_NS));
    }

    /// [`publish`](Self::publish) if the last one is `PUBLISH_PERIOD_NS` ago (housekeeping).
    pub fn publish_due(&mut self, now_ns: u64) {
        if now_ns >= self.next_publish_ns {
            self.next_publish_ns = now_ns.saturating_add(PUBLISH_PERIOD_NS);
            self.publish();
        }
    }

    /// Move what was recorded into the shared histogram (a lock per call: housekeeping only).
    pub fn publish(&mut self) {
        if self.local.is_empty() {
            return;
        }
        self.shared.merge(&self.local);
        self.local.reset();
    }
}

/// `p50/p99/p99.9/max` of a histogram, formatted in µs.
pub fn percentiles_us(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "n/a".to_string();
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs (n={})",
        us(0.5),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0,
        h.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_publish_into_shared() {
        let shared = SharedHistogram::default();
        let mut a = LatencyRecorder::new(shared.clone());
        let mut b = LatencyRecorder::new(shared.clone());
        for i in 1..=100 {
            a.record(i * 1000);
            b.record(i * 2000);
        }
        assert!(shared.snapshot().is_empty());
        a.publish();
        b.publish();
        let h = shared.snapshot();
        assert_eq!(h.len(), 200);
        assert!(h.max() >= 199_000);
        assert!(percentiles_us(&h).contains("p99"));
        a.publish(); // nothing new: no double count
        assert_eq!(shared.snapshot().len(), 200);
    }

    #[test]
    fn publish_due_waits_for_the_period() {
        let shared = SharedHistogram::default();
        let mut r = LatencyRecorder::new(shared.clone());
        r.record(1000);
        r.publish_due(5);
        assert_eq!(shared.snapshot().len(), 1, "the first call publishes");
        r.record(2000);
        r.publish_due(5 + PUBLISH_PERIOD_NS - 1);
        assert_eq!(shared.snapshot().len(), 1, "within the period: kept local");
        r.publish_due(5 + PUBLISH_PERIOD_NS);
        assert_eq!(shared.snapshot().len(), 2, "period over: published");
    }
}
