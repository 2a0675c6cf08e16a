//! What a stage does and measures when it takes over after a failover.

//! client on failover.

use crate::mgmt::EventSender;

/// Failover behaviour of a stage (from `[failover]`), and where it reports.
#[derive(Clone)]
pub struct FailoverOpts {
    /// Send gratuitous ARP / unsolicited NA for the SVM's addresses on takeover.
    pub announce: bool,
    /// Announcements per address.
    pub announce_count: u32,
    /// Between repeated announcements (ns).
    pub announce_interval_ns: u64,
    /// Where the failover report goes.
    pub events: Option<EventSender>,
}

impl Default for FailoverOpts {
    fn default() -> Self {
        FailoverOpts {
            announce: true,
            announce_count: 3,
            announce_interval_ns: 100_000_000,
            events: None,
        }
    }
}

/// A failover report is sent at the first frame forwarded on the new path, or after this long
/// without one (gap unknown).
pub(super) const FAILOVER_REPORT_BOUND_NS: u64 = 10_000_000_000;

/// One stage's failover measurement (allocates only when the report is sent, once).
#[derive(Default)]
pub(super) struct FailoverProgress {
    at_ns: Option<u64>,
    first_forward_ns: Option<u64>,
    reported: bool,
    pub(super) held_released: (u64, u64),
    pub(super) held_dropped: (u64, u64),
}

impl FailoverProgress {
    pub(super) fn start(&mut self, now_ns: u64) {
        *self = FailoverProgress {
            at_ns: Some(now_ns),
            ..FailoverProgress::default()
        };
    }

    #[inline]
    pub(super) fn forwarded(&mut self, now_ns: u64) {
        if self.at_ns.is_some() && self.first_forward_ns.is_none() {
            self.first_forward_ns = Some(now_ns);
        }
    }

    pub(super) fn report(
        &mut self,
        stage: &str,
        announced: u64,
        events: Option<&EventSender>,
        now_ns: u64,
    ) {
        let Some(at) = self.at_ns else { return };
        if self.reported {
            return;
        }
        if self.first_forward_ns.is_none() && now_ns.saturating_sub(at) < FAILOVER_REPORT_BOUND_NS {
            return;
        }
        self.reported = true;
        let gap_ns = self.first_forward_ns.map(|t| t.saturating_sub(at));
        if let Some(ev) = events {
            ev.event(crate::control::Event::FailoverReport {
                stage: stage.to_string(),
                gap_ns,
                held_released: self.held_released.0,
                held_released_bytes: self.held_released.1,
                held_dropped: self.held_dropped.0,
                held_dropped_bytes: self.held_dropped.1,
                announced,
                time_ns: now_ns,
            });
        }
    }
}
