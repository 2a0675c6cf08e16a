//! Checkpoint request sinks: where a checkpoint request goes (Xen notify, QMP, ...). A sink never
//! blocks: [`CheckpointSink::request`] queues, [`CheckpointSink::poll`] does bounded I/O.

use std::os::fd::BorrowedFd;

use super::coordinator::CheckpointRequest;

/// Something a sink learned while polling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEvent {
    /// The peer reports a checkpoint finished.
    CheckpointDone,
    /// The sink's peer connected (and finished its handshake).
    Up,
    /// The sink's peer went away.
    Down(String),
    /// The COLO frame left COLO mode (QMP `COLO_EXIT`, its `data` as text): it failed over,
    /// so this host's proxy must too.
    ColoExit(String),
}

/// A checkpoint request sink.
pub trait CheckpointSink: Send {
    /// Short name (`xen`, `qmp`) for counters and events.
    fn name(&self) -> &str;
    /// Ask for a checkpoint; sent now or as soon as the peer is reachable.
    fn request(&mut self, req: &CheckpointRequest, now_ns: u64);
    /// Bounded I/O: connect/accept, read, write. Appends what happened to `out`.
    fn poll(&mut self, now_ns: u64, out: &mut Vec<SinkEvent>);
    /// Counters.
    fn stats(&self) -> serde_json::Value;
    /// Whether a completion from this sink that answers no outstanding request is applied
    /// (it releases every held primary). Sinks whose peer cannot be trusted that far say no.
    fn accepts_unsolicited(&self) -> bool {
        true
    }
    /// For a management thread that blocks when idle: push the descriptors whose readiness
    /// means this sink has work (`(fd, wants_write)`), and return how long (ns) it may go
    /// unpolled at most (`None`: only when a descriptor is ready). The default, for sinks
    /// without descriptors, asks to be polled every millisecond.
    fn wait_fds<'a>(&'a self, _now_ns: u64, _fds: &mut Vec<(BorrowedFd<'a>, bool)>) -> Option<u64> {
        Some(TICK_NS)
    }
}

/// How often a sink without descriptors is polled.
pub const TICK_NS: u64 = 1_000_000;

/// Reconnect back-off: starts at `base_ns`, doubles on each failure up to `max_ns`, resets on
/// success.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base_ns: u64,
    max_ns: u64,
    cur_ns: u64,
    /// Next attempt allowed at.
    pub(crate) next_ns: u64,
}

impl Backoff {
    pub(crate) fn new(base_ns: u64, max_ns: u64) -> Self {
        Backoff {
            base_ns,
            max_ns: max_ns.max(base_ns),
            cur_ns: base_ns,
            next_ns: 0,
        }
    }
    pub(crate) fn failed(&mut self, now_ns: u64) {
        self.next_ns = now_ns.saturating_add(self.cur_ns);
        self.cur_ns = (self.cur_ns.saturating_mul(2)).min(self.max_ns);
    }
    pub(crate) fn succeeded(&mut self) {
        self.cur_ns = self.base_ns;
    }
    pub(crate) fn due(&self, now_ns: u64) -> bool {
        now_ns >= self.next_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(100, 350);
        assert!(b.due(0));
        b.failed(0);
        assert!(!b.due(99) && b.due(100));
        b.failed(100);
        assert_eq!(b.next_ns, 300);
        b.failed(300);
        assert_eq!(b.next_ns, 650);
        b.failed(650);
        assert_eq!(b.next_ns, 1000, "capped at 350");
        b.succeeded();
        b.failed(1000);
        assert_eq!(b.next_ns, 1100);
    }
}
