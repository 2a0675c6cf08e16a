//! Events flowing from the data plane into management. Each serialises to one JSON object with
//! an `"event"` tag, e.g. `{"event":"divergence","flow":"tcp 10.0.0.1:80 <-> ...",...}`.

use serde::{Deserialize, Serialize};

/// Least time between two [`Event::LinkSequence`] events of one link: a lossy link reports
/// its totals ten times a second rather than once per lost frame.
pub const LINK_SEQUENCE_PERIOD_NS: u64 = 100_000_000;

/// Which packets an event concerns: one VM's ([`crate::compare::Side`]) or both (a content
/// mismatch). Not a [`crate::compare::Side`]: it has a third value and is part of the JSON
/// event format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum EventSide {
    /// The primary VM's packet.
    Primary,
    /// The secondary VM's packet.
    Secondary,
    /// Both packets (a content mismatch).
    Both,
}

/// One management event. `time_ns` is the data plane's clock (monotonic nanoseconds).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The compare engine found the two VMs' outputs differ.
    Divergence {
        /// Flow, as `FlowKey`'s `Display` prints it.
        flow: String,
        /// Why (compare's reason name, e.g. `payload`, `timeout`, `queue-full`).
        reason: String,
        /// Which side's packet(s) it concerns.
        side: EventSide,
        /// TCP sequence range `[start, end)` concerned, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq_range: Option<(u32, u32)>,
        /// When.
        time_ns: u64,
    },
    /// A checkpoint request went to the sinks (the first of a coalesced run).
    CheckpointRequested {
        /// Request number (1, 2, ...).
        id: u64,
        /// Reason of the divergence that caused it.
        reason: String,
        /// Its flow, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow: Option<String>,
        /// When.
        time_ns: u64,
    },
    /// A checkpoint finished and every stage acknowledged it.
    CheckpointDone {
        /// The outstanding request it completed, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Who said so (`xen`, `control`, ...).
        source: String,
        /// When.
        time_ns: u64,
    },
    /// Failover was performed.
    Failover {
        /// Who asked (`control`, ...).
        source: String,
        /// When.
        time_ns: u64,
    },
    /// One stage's account of a failover: the gap from the trigger to the first frame it
    /// forwarded on the new path (`None`: nothing within the report's bound), and what it held
    /// at that moment (released or dropped by rule).
    FailoverReport {
        /// The stage (`rewriter`, `compare0`, ...).
        stage: String,
        /// Trigger → first frame forwarded on the new path.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gap_ns: Option<u64>,
        /// Frames held at the trigger and released.
        held_released: u64,
        /// Their bytes.
        held_released_bytes: u64,
        /// Frames held at the trigger and dropped.
        held_dropped: u64,
        /// Their bytes.
        held_dropped_bytes: u64,
        /// Takeover announcements sent (gratuitous ARP / unsolicited NA) so far.
        announced: u64,
        /// When.
        time_ns: u64,
    },
    /// The link peer went silent: no frame (data or heartbeat) for the timeout, after it had
    /// sent heartbeats before.
    LinkSilent {
        /// Link name (`mirror` on the secondary, `secondary-out` on the primary).
        link: String,
        /// The data-plane time of the last frame from the peer.
        last_heard_ns: u64,
        /// The configured timeout.
        timeout_ms: u64,
        /// When (detection).
        time_ns: u64,
    },
    /// A link or checkpoint sink came up.
    LinkUp {
        /// Link or sink name (`mirror`, `secondary-out`, `xen`, `qmp`, ...).
        link: String,
        /// When.
        time_ns: u64,
    },
    /// A link or checkpoint sink went down.
    LinkDown {
        /// Link or sink name.
        link: String,
        /// Why.
        reason: String,
        /// When.
        time_ns: u64,
    },
    /// The encapsulated link lost, reordered, duplicated or re-based frames of one stream since
    /// the last such event (at most one per link per [`LINK_SEQUENCE_PERIOD_NS`]). Counts are
    /// the stream's totals so far; `new_*` what changed since the previous event.
    LinkSequence {
        /// Link name (`mirror` on the secondary, `secondary-out` on the primary).
        link: String,
        /// Stream id of the encapsulation header.
        stream: u8,
        /// Frames received on the stream.
        received: u64,
        /// Frames missing, net of late arrivals.
        lost: u64,
        /// Gaps (a jump ahead in the sequence).
        gaps: u64,
        /// Late (reordered) frames.
        reordered: u64,
        /// Duplicate frames.
        duplicates: u64,
        /// Baseline resets (sender restart, or a jump too far back).
        resyncs: u64,
        /// Gaps since the previous event.
        new_gaps: u64,
        /// Late frames since the previous event.
        new_reordered: u64,
        /// Duplicates since the previous event.
        new_duplicates: u64,
        /// Resyncs since the previous event.
        new_resyncs: u64,
        /// When.
        time_ns: u64,
    },
    /// An lcore left its poll loop without being asked (a stage panicked): the proxy stops
    /// the rest in order and exits with an error.
    LcoreFailed {
        /// EAL lcore id.
        lcore: u32,
        /// The stages it ran.
        stages: Vec<String>,
        /// What happened (the panic message).
        reason: String,
        /// When management noticed.
        time_ns: u64,
    },
    /// The proxy is shutting down.
    Shutdown {
        /// When.
        time_ns: u64,
    },
}

impl From<crate::compare::Side> for EventSide {
    fn from(s: crate::compare::Side) -> EventSide {
        match s {
            crate::compare::Side::Primary => EventSide::Primary,
            crate::compare::Side::Secondary => EventSide::Secondary,
        }
    }
}

impl From<&crate::compare::DivergenceEvent> for Event {
    /// The management event for a compare divergence (allocates: call it off the data path).
    fn from(d: &crate::compare::DivergenceEvent) -> Event {
        Event::Divergence {
            flow: d.flow.to_string(),
            reason: d.reason.as_str().to_string(),
            side: d.side.into(),
            seq_range: d.seq_range,
            time_ns: d.time_ns,
        }
    }
}

impl Event {
    /// The event's time.
    pub fn time_ns(&self) -> u64 {
        match self {
            Event::Divergence { time_ns, .. }
            | Event::CheckpointRequested { time_ns, .. }
            | Event::CheckpointDone { time_ns, .. }
            | Event::Failover { time_ns, .. }
            | Event::FailoverReport { time_ns, .. }
            | Event::LinkSilent { time_ns, .. }
            | Event::LinkUp { time_ns, .. }
            | Event::LinkDown { time_ns, .. }
            | Event::LinkSequence { time_ns, .. }
            | Event::LcoreFailed { time_ns, .. }
            | Event::Shutdown { time_ns } => *time_ns,
        }
    }

    /// One JSON line (no newline). Serialising these types cannot fail.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!(r#"{{"event":"error","error":"{e}"}}"#))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergence_round_trips_with_tag() {
        let e = Event::Divergence {
            flow: "tcp 10.0.0.1:80 <-> 10.0.0.2:5000".into(),
            reason: "payload".into(),
            side: EventSide::Both,
            seq_range: Some((100, 200)),
            time_ns: 7,
        };
        let s = e.to_json_line();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["event"], "divergence");
        assert_eq!(v["side"], "both");
        assert_eq!(v["seq_range"], serde_json::json!([100, 200]));
        assert_eq!(serde_json::from_str::<Event>(&s).unwrap(), e);
        assert_eq!(e.time_ns(), 7);
    }

    #[test]
    fn optional_fields_are_omitted() {
        let e = Event::CheckpointDone {
            id: None,
            source: "xen".into(),
            time_ns: 1,
        };
        let s = e.to_json_line();
        assert!(!s.contains("\"id\""), "{s}");
        assert_eq!(serde_json::from_str::<Event>(&s).unwrap(), e);
    }
}

#[cfg(test)]
mod compare_tests {
    use super::*;
    use crate::compare::{DivergenceEvent, Reason};
    use crate::flow::key::{Family, FlowKey};

    #[test]
    fn from_compare_divergence() {
        let mut lo = [0u8; 16];
        let mut hi = [0u8; 16];
        lo[..4].copy_from_slice(&[10, 0, 0, 1]);
        hi[..4].copy_from_slice(&[10, 0, 0, 2]);
        let key = FlowKey {
            family: Family::V4,
            proto_or_ethertype: 6,
            addr_lo: lo,
            addr_hi: hi,
            port_lo: 80,
            port_hi: 40000,
        };
        let d = DivergenceEvent {
            flow: key,
            side: crate::compare::Side::Secondary,
            reason: Reason::PayloadMismatch,
            seq_range: Some((5, 10)),
            time_ns: 99,
        };
        let e = Event::from(&d);
        assert_eq!(
            e,
            Event::Divergence {
                flow: key.to_string(),
                reason: "payload_mismatch".into(),
                side: EventSide::Secondary,
                seq_range: Some((5, 10)),
                time_ns: 99,
            }
        );
        assert!(key.to_string().contains("10.0.0.1:80"));
    }
}
