//! Back-pressure from the compare shards to the PVM port (output commit's first resort).
//!
//! When the PVM runs ahead of the SVM, its packets pile up in the compare queues. Rather than
//! letting them overflow (which costs a checkpoint), the redirector stops reading the PVM port
//! while any shard is above its high watermark: a vhost-user guest then waits in its own TX
//! ring, losslessly; af_packet and NICs drop in the kernel/NIC (port drops, in the report).
//! The link is never paused: the secondary's output is what drains the backlog.
//!
//! Each shard publishes its [`Backlog`] once per poll into its own cache line of a
//! [`BacklogBoard`]; the redirector reads the board once per poll and runs a [`PvmGate`]
//! (per-shard hysteresis, plus a longest pause). Nothing here is per packet. Pure: no DPDK.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::compare::Backlog;
use crate::config::BackpressureConfig;

/// `oldest_primary_ns` stored for "no primary queued".
const NONE_NS: u64 = u64::MAX;

/// One shard's published backlog, on its own cache line (the shard writes, others read).
#[repr(align(64))]
#[derive(Default)]
struct Gauge {
    primary_packets: AtomicU64,
    primary_bytes: AtomicU64,
    secondary_packets: AtomicU64,
    secondary_bytes: AtomicU64,
    oldest_primary_ns: AtomicU64,
    /// Pipeline time of the publication.
    at_ns: AtomicU64,
}

/// Every shard's backlog as last published (single writer per shard, lock-free readers; a
/// reader may see one field a poll newer than another, never a torn value).
pub struct BacklogBoard {
    gauges: Box<[Gauge]>,
}

impl BacklogBoard {
    /// A board for `shards` shards, all empty.
    pub fn new(shards: usize) -> Arc<BacklogBoard> {
        let gauges: Box<[Gauge]> = (0..shards.max(1))
            .map(|_| {
                let g = Gauge::default();
                g.oldest_primary_ns.store(NONE_NS, Ordering::Relaxed);
                g
            })
            .collect();
        Arc::new(BacklogBoard { gauges })
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.gauges.len()
    }

    /// Never true (at least one shard).
    pub fn is_empty(&self) -> bool {
        self.gauges.is_empty()
    }

    /// Shard `k` publishes `b` (only shard `k`'s lcore calls this).
    #[inline]
    pub fn publish(&self, k: usize, b: &Backlog, now_ns: u64) {
        let Some(g) = self.gauges.get(k) else { return };
        g.primary_bytes.store(b.primary_bytes, Ordering::Relaxed);
        g.secondary_packets
            .store(b.secondary_packets, Ordering::Relaxed);
        g.secondary_bytes
            .store(b.secondary_bytes, Ordering::Relaxed);
        g.oldest_primary_ns
            .store(b.oldest_primary_ns.unwrap_or(NONE_NS), Ordering::Relaxed);
        g.at_ns.store(now_ns, Ordering::Relaxed);
        g.primary_packets
            .store(b.primary_packets, Ordering::Release);
    }

    /// Shard `k`'s primary backlog `(packets, bytes)`: what the gate needs.
    #[inline]
    pub fn primary(&self, k: usize) -> (u64, u64) {
        match self.gauges.get(k) {
            Some(g) => (
                g.primary_packets.load(Ordering::Acquire),
                g.primary_bytes.load(Ordering::Relaxed),
            ),
            None => (0, 0),
        }
    }

    /// Shard `k`'s whole backlog and when it was published.
    pub fn read(&self, k: usize) -> (Backlog, u64) {
        let Some(g) = self.gauges.get(k) else {
            return (Backlog::default(), 0);
        };
        let primary_packets = g.primary_packets.load(Ordering::Acquire);
        let oldest = g.oldest_primary_ns.load(Ordering::Relaxed);
        (
            Backlog {
                primary_packets,
                primary_bytes: g.primary_bytes.load(Ordering::Relaxed),
                secondary_packets: g.secondary_packets.load(Ordering::Relaxed),
                secondary_bytes: g.secondary_bytes.load(Ordering::Relaxed),
                oldest_primary_ns: (oldest != NONE_NS).then_some(oldest),
            },
            g.at_ns.load(Ordering::Relaxed),
        )
    }

    /// How far the SVM lags on each shard: `(primary bytes queued, age of the oldest queued
    /// primary in ns)` at `now_ns`. The age is an upper bound (the engine's oldest-arrival is
    /// a lower bound, exact after each timeout scan).
    pub fn lag(&self, now_ns: u64) -> Vec<ShardLag> {
        (0..self.len())
            .map(|k| {
                let (b, _) = self.read(k);
                ShardLag {
                    shard: k,
                    primary_packets: b.primary_packets,
                    primary_bytes: b.primary_bytes,
                    secondary_packets: b.secondary_packets,
                    secondary_bytes: b.secondary_bytes,
                    oldest_ns: b.oldest_primary_ns.map_or(0, |t| now_ns.saturating_sub(t)),
                }
            })
            .collect()
    }
}

/// One shard's lag as reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ShardLag {
    /// Shard number.
    pub shard: usize,
    /// Primary packets waiting for the secondary.
    pub primary_packets: u64,
    /// Their bytes: how far the SVM's output is behind the PVM's.
    pub primary_bytes: u64,
    /// Secondary packets waiting for the primary (the SVM ahead).
    pub secondary_packets: u64,
    /// Their bytes.
    pub secondary_bytes: u64,
    /// Age of the oldest waiting primary (0 = none).
    pub oldest_ns: u64,
}

/// `lag 1.2MB/3.1ms` per shard (`lag 0` when nothing waits), for the status line.
pub fn lag_summary(lags: &[ShardLag]) -> String {
    if lags
        .iter()
        .all(|l| l.primary_packets == 0 && l.oldest_ns == 0)
    {
        return "lag 0".to_string();
    }
    let parts: Vec<String> = lags
        .iter()
        .map(|l| {
            format!(
                "{}/{:.1}ms",
                bytes(l.primary_bytes),
                l.oldest_ns as f64 / 1e6
            )
        })
        .collect();
    format!("lag {}", parts.join(" "))
}

fn bytes(v: u64) -> String {
    if v >= 1 << 20 {
        format!("{:.1}MB", v as f64 / f64::from(1 << 20))
    } else if v >= 1 << 10 {
        format!("{:.1}kB", v as f64 / 1024.0)
    } else {
        format!("{v}B")
    }
}

/// The watermarks of one shard's primary backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// Pause at this many packets...
    pub high_packets: u64,
    /// ...or this many bytes.
    pub high_bytes: u64,
    /// Resume when at most this many packets...
    pub low_packets: u64,
    /// ...and at most this many bytes.
    pub low_bytes: u64,
}

impl From<&BackpressureConfig> for Watermarks {
    fn from(c: &BackpressureConfig) -> Self {
        Watermarks {
            high_packets: u64::from(c.high_packets),
            high_bytes: c.high_bytes,
            low_packets: u64::from(c.low_packets),
            low_bytes: c.low_bytes,
        }
    }
}

/// High/low hysteresis on one backlog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hysteresis {
    above: bool,
}

impl Hysteresis {
    /// Feed the current backlog; true while it is "high" (from reaching a high watermark until
    /// it is back at or below both low watermarks).
    #[inline]
    pub fn update(&mut self, w: &Watermarks, packets: u64, bytes: u64) -> bool {
        if self.above {
            if packets <= w.low_packets && bytes <= w.low_bytes {
                self.above = false;
            }
        } else if packets >= w.high_packets || bytes >= w.high_bytes {
            self.above = true;
        }
        self.above
    }
}

/// What one [`PvmGate::update`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Read the PVM port in this poll.
    pub open: bool,
    /// A pause started with this poll.
    pub paused: bool,
    /// The longest pause ran out with this poll (the backlog is still high).
    pub overridden: bool,
    /// Pause time to account for since the previous poll.
    pub paused_ns: u64,
}

/// The redirector's gate on the PVM port: paused while any shard is high, for at most
/// `max_pause_ns` at a time (0 = no limit); after an override the port is read until every
/// shard is back below its low watermarks.
#[derive(Debug, Clone)]
pub struct PvmGate {
    w: Watermarks,
    max_pause_ns: u64,
    shards: Vec<Hysteresis>,
    paused_since: Option<u64>,
    last_ns: u64,
    overridden: bool,
}

impl PvmGate {
    /// A gate over `shards` shards.
    pub fn new(w: Watermarks, max_pause_ns: u64, shards: usize) -> Self {
        PvmGate {
            w,
            max_pause_ns,
            shards: vec![Hysteresis::default(); shards.max(1)],
            paused_since: None,
            last_ns: 0,
            overridden: false,
        }
    }

    /// Decide for this poll from each shard's primary backlog `(packets, bytes)`.
    pub fn update(
        &mut self,
        now_ns: u64,
        backlog: impl IntoIterator<Item = (u64, u64)>,
    ) -> Decision {
        let mut high = false;
        for (h, (p, b)) in self.shards.iter_mut().zip(backlog) {
            high |= h.update(&self.w, p, b);
        }
        let mut d = Decision {
            open: true,
            paused: false,
            overridden: false,
            paused_ns: 0,
        };
        if !high {
            self.overridden = false;
        }
        let was = self.paused_since;
        if high && !self.overridden {
            let since = *self.paused_since.get_or_insert(now_ns);
            d.paused = was.is_none();
            if self.max_pause_ns > 0 && now_ns.saturating_sub(since) >= self.max_pause_ns {
                self.overridden = true;
                d.overridden = true;
                self.paused_since = None;
            } else {
                d.open = false;
            }
        } else {
            self.paused_since = None;
        }
        if was.is_some() {
            d.paused_ns = now_ns.saturating_sub(self.last_ns);
        }
        self.last_ns = now_ns;
        d
    }

    /// True while the port is paused.
    pub fn is_paused(&self) -> bool {
        self.paused_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Watermarks = Watermarks {
        high_packets: 100,
        high_bytes: 10_000,
        low_packets: 50,
        low_bytes: 5_000,
    };

    #[test]
    fn hysteresis_pauses_at_high_and_resumes_only_below_low() {
        let mut h = Hysteresis::default();
        assert!(!h.update(&W, 99, 0));
        assert!(h.update(&W, 100, 0), "high packets");
        assert!(h.update(&W, 60, 0), "between the marks: still high");
        assert!(h.update(&W, 50, 5_001), "bytes still above low");
        assert!(!h.update(&W, 50, 5_000), "both at low");
        assert!(!h.update(&W, 99, 9_999), "between the marks: still low");
        assert!(h.update(&W, 1, 10_000), "high bytes alone");
    }

    #[test]
    fn gate_closes_on_any_shard_and_counts_pause_time() {
        let mut g = PvmGate::new(W, 0, 2);
        let d = g.update(10, [(0, 0), (0, 0)]);
        assert!(d.open && !d.paused);
        let d = g.update(20, [(0, 0), (100, 0)]);
        assert!(!d.open && d.paused);
        assert_eq!(d.paused_ns, 0);
        let d = g.update(35, [(0, 0), (70, 0)]);
        assert!(!d.open && !d.paused);
        assert_eq!(d.paused_ns, 15);
        let d = g.update(40, [(0, 0), (50, 0)]);
        assert!(d.open);
        assert_eq!(d.paused_ns, 5, "the last paused interval");
        assert!(!g.is_paused());
        let d = g.update(50, [(0, 0), (50, 0)]);
        assert_eq!(d.paused_ns, 0);
    }

    #[test]
    fn longest_pause_reopens_until_the_backlog_is_low() {
        let mut g = PvmGate::new(W, 1_000, 1);
        assert!(!g.update(0, [(200, 0)]).open);
        assert!(!g.update(999, [(200, 0)]).open);
        let d = g.update(1_000, [(200, 0)]);
        assert!(d.open && d.overridden);
        // Still high: stays open, no new pause.
        let d = g.update(5_000, [(300, 0)]);
        assert!(d.open && !d.paused && !d.overridden);
        // Back to low, then high again: a new pause.
        assert!(g.update(6_000, [(10, 0)]).open);
        let d = g.update(7_000, [(100, 0)]);
        assert!(!d.open && d.paused);
    }

    #[test]
    fn config_sizing_uses_the_pipeline_constants() {
        assert_eq!(
            crate::config::sizing::BURST as usize,
            super::super::io::BURST
        );
        assert_eq!(
            crate::config::sizing::SOCKET_RX_BACKLOG as usize,
            crate::pipeline::linkio::SOCKET_RX_BACKLOG
        );
    }

    #[test]
    fn board_publishes_and_reads_each_shard() {
        let b = BacklogBoard::new(2);
        assert_eq!(b.primary(1), (0, 0));
        b.publish(
            1,
            &Backlog {
                primary_packets: 7,
                primary_bytes: 7000,
                secondary_packets: 1,
                secondary_bytes: 60,
                oldest_primary_ns: Some(1_000),
            },
            5_000,
        );
        assert_eq!(b.primary(1), (7, 7000));
        assert_eq!(b.primary(0), (0, 0));
        assert_eq!(b.primary(9), (0, 0), "no such shard");
        let lag = b.lag(4_001_000);
        assert_eq!(lag[1].oldest_ns, 4_000_000);
        assert_eq!(lag[0].oldest_ns, 0);
        assert_eq!(lag_summary(&lag), "lag 0B/0.0ms 6.8kB/4.0ms");
        assert_eq!(lag_summary(&BacklogBoard::new(1).lag(9)), "lag 0");
        assert_eq!(std::mem::align_of::<Gauge>(), 64);
    }
}
