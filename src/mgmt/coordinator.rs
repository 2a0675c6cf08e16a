//! Checkpoint coordination: divergences become checkpoint requests, coalesced while one is
//! outstanding; completion from any source clears the outstanding request. Pure bookkeeping (no
//! I/O): the caller sends what [`CheckpointCoordinator::request`] returns to its sinks and calls
//! the data plane on completion.

use serde::Serialize;

/// A checkpoint request to hand to every sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointRequest {
    /// Request number (1, 2, ...); a resend keeps its number.
    pub id: u64,
    /// Reason of the first divergence since the last checkpoint.
    pub reason: String,
    /// Its flow, if any.
    pub flow: Option<String>,
    /// When it was first requested.
    pub since_ns: u64,
}

/// Coordinator counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CoordinatorStats {
    /// Requests seen (divergences, manual requests).
    pub requested: u64,
    /// Requests merged into the outstanding one.
    pub coalesced: u64,
    /// Requests handed to the sinks (first sends).
    pub issued: u64,
    /// Outstanding requests sent again after the resend interval.
    pub resent: u64,
    /// Checkpoints completed (every stage acknowledged).
    pub completed: u64,
    /// Completions that arrived with nothing outstanding (periodic checkpoints).
    pub completed_unrequested: u64,
    /// Completions the data plane failed to apply.
    pub complete_failed: u64,
    /// Completions that answered no request from a sink that may not complete unrequested
    /// (Xen notify without `accept_unsolicited`): counted and ignored, nothing released.
    pub unsolicited_ignored: u64,
    /// Whether a request is outstanding now.
    pub outstanding: bool,
    /// Longest request→completion time seen (ns).
    pub max_latency_ns: u64,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct CheckpointCoordinator {
    outstanding: Option<CheckpointRequest>,
    last_sent_ns: u64,
    next_id: u64,
    /// Resend an outstanding request after this long (`None`: never).
    resend_after_ns: Option<u64>,
    stats: CoordinatorStats,
    /// Request → completion latencies (the metrics endpoint's histogram).
    latency: super::metrics::Buckets,
}

impl CheckpointCoordinator {
    /// New coordinator; `resend_after_ns` re-issues a request the frame seems to have lost.
    pub fn new(resend_after_ns: Option<u64>) -> Self {
        CheckpointCoordinator {
            resend_after_ns,
            next_id: 1,
            latency: super::metrics::Buckets::latency(),
            ..Default::default()
        }
    }

    /// A checkpoint is wanted. `Some` = send this to the sinks now; `None` = coalesced.
    pub fn request(
        &mut self,
        reason: &str,
        flow: Option<&str>,
        now_ns: u64,
    ) -> Option<CheckpointRequest> {
        self.stats.requested += 1;
        if self.outstanding.is_some() {
            self.stats.coalesced += 1;
            return None;
        }
        let req = CheckpointRequest {
            id: self.next_id,
            reason: reason.to_string(),
            flow: flow.map(str::to_string),
            since_ns: now_ns,
        };
        self.next_id += 1;
        self.stats.issued += 1;
        self.last_sent_ns = now_ns;
        self.outstanding = Some(req.clone());
        Some(req)
    }

    /// Called periodically: the outstanding request if it is due to be sent again.
    pub fn resend_due(&mut self, now_ns: u64) -> Option<CheckpointRequest> {
        let after = self.resend_after_ns?;
        let req = self.outstanding.as_ref()?;
        if now_ns.saturating_sub(self.last_sent_ns) < after {
            return None;
        }
        self.last_sent_ns = now_ns;
        self.stats.resent += 1;
        Some(req.clone())
    }

    /// The outstanding request, if any.
    pub fn outstanding(&self) -> Option<&CheckpointRequest> {
        self.outstanding.as_ref()
    }

    /// A checkpoint finished and the data plane applied it: clear the outstanding request and
    /// return its id (`None` for an unrequested, e.g. periodic, checkpoint).
    pub fn completed(&mut self, now_ns: u64) -> Option<u64> {
        self.stats.completed += 1;
        match self.outstanding.take() {
            Some(r) => {
                let lat = now_ns.saturating_sub(r.since_ns);
                self.stats.max_latency_ns = self.stats.max_latency_ns.max(lat);
                self.latency.observe_ns(lat, 1);
                Some(r.id)
            }
            None => {
                self.stats.completed_unrequested += 1;
                None
            }
        }
    }

    /// A completion answering no request was ignored (see [`CoordinatorStats::unsolicited_ignored`]).
    pub fn unsolicited_ignored(&mut self) {
        self.stats.unsolicited_ignored += 1;
    }

    /// Request → completion latencies so far.
    pub fn latency(&self) -> &super::metrics::Buckets {
        &self.latency
    }

    /// The data plane could not apply a completion; the request stays outstanding.
    pub fn complete_failed(&mut self) {
        self.stats.complete_failed += 1;
    }

    /// Counters.
    pub fn stats(&self) -> CoordinatorStats {
        CoordinatorStats {
            outstanding: self.outstanding.is_some(),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_while_outstanding_and_keeps_first_reason() {
        let mut c = CheckpointCoordinator::new(None);
        let r = c.request("payload", Some("tcp a <-> b"), 10).unwrap();
        assert_eq!(
            (r.id, r.reason.as_str(), r.flow.as_deref()),
            (1, "payload", Some("tcp a <-> b"))
        );
        assert_eq!(c.request("timeout", None, 11), None);
        assert_eq!(c.request("timeout", None, 12), None);
        assert_eq!(c.outstanding().unwrap().reason, "payload");
        assert_eq!(c.completed(110), Some(1));
        let s = c.stats();
        assert_eq!(
            (s.requested, s.coalesced, s.issued, s.completed),
            (3, 2, 1, 1)
        );
        assert_eq!(s.max_latency_ns, 100);
        assert!(!s.outstanding);
        // After completion the next divergence is a fresh request.
        let r2 = c.request("timeout", None, 200).unwrap();
        assert_eq!((r2.id, r2.reason.as_str()), (2, "timeout"));
        assert!(c.stats().outstanding);
    }

    #[test]
    fn unrequested_completion_is_counted() {
        let mut c = CheckpointCoordinator::new(None);
        assert_eq!(c.completed(5), None);
        assert_eq!(c.stats().completed_unrequested, 1);
        c.request("x", None, 6).unwrap();
        c.complete_failed();
        assert!(
            c.outstanding().is_some(),
            "a failed completion keeps the request"
        );
        assert_eq!(c.stats().complete_failed, 1);
    }

    #[test]
    fn resends_after_interval_only_while_outstanding() {
        let mut c = CheckpointCoordinator::new(Some(100));
        assert_eq!(c.resend_due(1000), None);
        c.request("x", None, 0).unwrap();
        assert_eq!(c.resend_due(99), None);
        assert_eq!(c.resend_due(100).unwrap().id, 1);
        assert_eq!(c.resend_due(150), None);
        assert_eq!(c.resend_due(200).unwrap().id, 1);
        c.completed(210);
        assert_eq!(c.resend_due(1000), None);
        assert_eq!(c.stats().resent, 2);
    }
}
