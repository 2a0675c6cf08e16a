//! The io-forwarding baseline stage (benchmarks, idle tests): no COLO work.

use crate::pipeline::idle::{IdleInputs, WaitSet};
use crate::pipeline::io::{RxSet, TxBuf};
use crate::pipeline::lcore::{LoopCtx, Phase, Stage};

/// The benchmark baseline as a stage: io-forwarding on each leg (rx → tx, one burst per
/// poll, nothing kept pending), no COLO work; it idles and wakes like the proxy's stages
/// (`demo --baseline-forward`, perf/latency, the idle tests).
pub struct ForwardStage {
    legs: Vec<(RxSet, TxBuf)>,
    idle: IdleInputs,
}

impl ForwardStage {
    /// Forward each leg's rx to its tx; `idle` wakes the lcore (interrupt mode).
    pub fn new(legs: Vec<(RxSet, TxBuf)>, idle: IdleInputs) -> Self {
        ForwardStage { legs, idle }
    }
}

impl Stage for ForwardStage {
    fn name(&self) -> &str {
        "forward"
    }

    fn poll(&mut self, cx: &LoopCtx) -> usize {
        if cx.phase != Phase::Run {
            // Nothing stays pending between polls: each step sends or drops its burst.
            return 0;
        }
        let c = cx.counters;
        self.legs
            .iter_mut()
            .map(|(rx, tx)| tx.forward_from_set(rx, c))
            .sum()
    }

    fn idle_arm(&mut self, on: bool) -> bool {
        self.idle.arm(on)
    }

    fn wait_fds(&self, ws: &mut WaitSet) {
        self.idle.wait_fds(ws);
    }
}
