//! Primary: the PVM's output and the secondary's output (from the link) routed to the
//! compare shard owning each frame's flow, with back-pressure on the PVM port.

use std::sync::Arc;

use crate::dpdk::MbufBurst;
use crate::flow::key::shard_of;
use crate::flow::FlowKey;

use crate::pipeline::backpressure::{BacklogBoard, PvmGate};
use crate::pipeline::counters::Counter;
use crate::pipeline::idle::{IdleInputs, WaitSet};
use crate::pipeline::io::{whole_frames, RingOut, RxSet, BURST};
use crate::pipeline::lcore::{LoopCtx, Phase, Stage};
use crate::pipeline::linkio::LinkRx;

/// The compare shard owning a frame's flow (the one hash); unparsable frames go to shard 0,
/// whose engine counts them as malformed. The common shapes skip the full parse (the shard's
/// engine parses them again anyway).
#[inline]
pub fn shard_of_frame(frame: &[u8], shards: usize) -> usize {
    if let Some(hash) = FlowKey::fast_hash64(frame) {
        return shard_of(hash, shards);
    }
    match crate::wire::parse(frame) {
        Ok(info) => FlowKey::of(&info, frame).shard(shards),
        Err(_) => 0,
    }
}

/// Primary: PVM output and the secondary's output (from the link) to the compare shard that
/// owns each flow.
pub struct RedirectorStage {
    pvm_rx: RxSet,
    link_rx: LinkRx,
    to_primary: Vec<RingOut>,
    to_secondary: Vec<RingOut>,
    burst: MbufBurst<BURST>,
    /// Back-pressure from the shards' backlogs (none: only the rings gate the PVM port).
    gate: Option<(Arc<BacklogBoard>, PvmGate)>,
    /// The PVM port was left unread by back-pressure in the last poll.
    gated: bool,
    idle: IdleInputs,
}

impl RedirectorStage {
    /// A redirector feeding `to_primary[k]`/`to_secondary[k]` of shard k.
    pub fn new(
        pvm_rx: impl Into<RxSet>,
        link_rx: LinkRx,
        to_primary: Vec<RingOut>,
        to_secondary: Vec<RingOut>,
    ) -> Self {
        RedirectorStage {
            pvm_rx: pvm_rx.into(),
            link_rx,
            to_primary,
            to_secondary,
            burst: MbufBurst::new(),
            gate: None,
            gated: false,
            idle: IdleInputs::unknown(),
        }
    }

    /// What wakes its lcore when the PVM port or a link port has frames (interrupt mode).
    pub fn with_idle(mut self, idle: IdleInputs) -> Self {
        self.idle = idle;
        self
    }

    /// Pause the PVM port while a shard's published backlog (`board`) is high (`gate`).
    pub fn with_backpressure(mut self, board: Arc<BacklogBoard>, gate: PvmGate) -> Self {
        self.gate = Some((board, gate));
        self
    }

    /// May the PVM port be read in this poll? Reads the board once (not per packet).
    #[inline]
    fn pvm_open(&mut self, cx: &LoopCtx) -> bool {
        let Some((board, gate)) = &mut self.gate else {
            return true;
        };
        let c = cx.counters;
        let d = gate.update(cx.now_ns, (0..board.len()).map(|k| board.primary(k)));
        if d.paused {
            c.inc(Counter::PvmPauses);
        }
        if d.overridden {
            c.inc(Counter::PvmPauseOverrides);
        }
        if d.paused_ns > 0 {
            c.add(Counter::PvmPausedNs, d.paused_ns);
        }
        if !d.open {
            c.inc(Counter::PvmRxGated);
        }
        d.open
    }

    fn flush_rings(&mut self, cx: &LoopCtx) {
        for r in self
            .to_primary
            .iter_mut()
            .chain(self.to_secondary.iter_mut())
        {
            r.flush(cx.counters);
        }
    }
}

fn route(burst: &mut MbufBurst<BURST>, rings: &mut [RingOut], cx: &LoopCtx) {
    let c = cx.counters;
    let shards = rings.len();
    for mut m in burst.drain() {
        m.set_timestamp(cx.now_ns);
        // One shard owns every flow: no parse (the shard parses the frame anyway).
        let k = if shards > 1 {
            shard_of_frame(m.data(), shards)
        } else {
            0
        };
        if let Err(m) = rings[k].push(m, c) {
            // has_room() was checked for every ring before rx, so this only happens when
            // one burst maps entirely to a ring that was already nearly full.
            drop(m);
            c.inc(Counter::DropRingFull);
        }
    }
}

impl Stage for RedirectorStage {
    fn name(&self) -> &str {
        "redirector"
    }

    fn poll(&mut self, cx: &LoopCtx) -> usize {
        let c = cx.counters;
        // Back-pressure per direction: a side takes no input while one of its shard rings
        // has frames pending (a burst must fit), and the PVM side also while a shard's
        // backlog is high. The link is never paused for the PVM side: the secondary's output
        // is what drains the backlog.
        self.flush_rings(cx);
        let idle = |rs: &[RingOut]| rs.iter().all(|r| r.pending() == 0);
        let mut work = 0;
        self.gated = false;
        if cx.phase == Phase::Run && !self.pvm_open(cx) {
            self.gated = true;
        } else if cx.phase == Phase::Run && idle(&self.to_primary) {
            let n = self.pvm_rx.rx_burst(&mut self.burst);
            c.add(Counter::Rx, n as u64);
            whole_frames(&mut self.burst, 0, c);
            route(&mut self.burst, &mut self.to_primary, cx);
            work += n;
        }
        if cx.phase <= Phase::StopRx {
            if idle(&self.to_secondary) {
                let n = self.link_rx.recv(&mut self.burst, cx);
                route(&mut self.burst, &mut self.to_secondary, cx);
                work += n;
            } else {
                c.inc(Counter::LinkRxGated);
            }
        }
        self.flush_rings(cx);
        work
    }

    fn housekeeping(&mut self, cx: &LoopCtx) {
        self.link_rx.housekeeping(cx);
    }

    fn flush(&mut self, cx: &LoopCtx) {
        self.flush_rings(cx);
        for r in self
            .to_primary
            .iter_mut()
            .chain(self.to_secondary.iter_mut())
        {
            r.discard_pending(cx.counters);
        }
    }

    fn idle_arm(&mut self, on: bool) -> bool {
        let ok = self.idle.arm(on);
        // A full ring or a paused PVM port frees up without a wake-up: keep polling.
        let pending = self
            .to_primary
            .iter()
            .chain(self.to_secondary.iter())
            .any(|r| r.pending() > 0);
        ok && !pending && !self.gated
    }

    fn wait_fds(&self, ws: &mut WaitSet) {
        self.idle.wait_fds(ws);
        self.link_rx.wait_fds(ws);
    }
}
