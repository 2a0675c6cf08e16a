//! The demo's stand-in for the COLO frame (the hypervisor side that takes checkpoints).

use std::time::Duration;

use crate::mgmt::coordinator::CheckpointRequest;
use crate::mgmt::sink::{CheckpointSink, SinkEvent};

/// The demo's stand-in for the COLO frame: a checkpoint takes `duration` (VMs paused, state
/// copied), then it reports done, which reaches every stage through management.
pub struct SimulatedFrame {
    duration_ns: u64,
    due_ns: Option<u64>,
    requests: u64,
    completed: u64,
}

impl SimulatedFrame {
    /// A frame whose checkpoints take `duration`.
    pub fn new(duration: Duration) -> Self {
        SimulatedFrame {
            duration_ns: duration.as_nanos() as u64,
            due_ns: None,
            requests: 0,
            completed: 0,
        }
    }
}

impl CheckpointSink for SimulatedFrame {
    fn name(&self) -> &str {
        "colo-frame-sim"
    }

    fn request(&mut self, _req: &CheckpointRequest, now_ns: u64) {
        self.requests += 1;
        // A resend while one is running does not restart it.
        if self.due_ns.is_none() {
            self.due_ns = Some(now_ns.saturating_add(self.duration_ns));
        }
    }

    fn poll(&mut self, now_ns: u64, out: &mut Vec<SinkEvent>) {
        if self.due_ns.is_some_and(|d| now_ns >= d) {
            self.due_ns = None;
            self.completed += 1;
            out.push(SinkEvent::CheckpointDone);
        }
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "ready": true,
            "sent": self.requests,
            "completed": self.completed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_frame_completes_once_per_request_after_its_duration() {
        let mut f = SimulatedFrame::new(Duration::from_millis(5));
        let req = CheckpointRequest {
            id: 1,
            reason: "payload".into(),
            flow: None,
            since_ns: 0,
        };
        let mut out = Vec::new();
        f.poll(0, &mut out);
        assert!(out.is_empty());
        f.request(&req, 1_000_000);
        f.request(&req, 3_000_000); // a resend does not move the deadline
        f.poll(5_999_999, &mut out);
        assert!(out.is_empty());
        f.poll(6_000_000, &mut out);
        assert_eq!(out, vec![SinkEvent::CheckpointDone]);
        f.poll(7_000_000, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(f.stats()["completed"], 1);
    }
}
