//! Primary, first stage: each client frame from the NIC goes to the PVM port and, as a
//! zero-copy clone, to the link (same input: both or neither).

use crate::dpdk::MbufBurst;

use crate::pipeline::counters::{Counter, LcoreCounters};
use crate::pipeline::idle::{IdleInputs, WaitSet};
use crate::pipeline::io::{whole_frames, RxSet, TxBuf, BURST};
use crate::pipeline::lcore::{Command, LoopCtx, Phase, Stage};
use crate::pipeline::linkio::LinkTx;

/// Primary: client frames from the NIC go to the PVM, and a zero-copy clone to the secondary.
pub struct MirrorStage {
    nic_rx: RxSet,
    pvm_tx: TxBuf,
    link_tx: LinkTx,
    burst: MbufBurst<BURST>,
    mirroring: bool,
    idle: IdleInputs,
}

impl MirrorStage {
    /// A mirror reading `nic_rx`, writing the PVM and the link.
    pub fn new(nic_rx: impl Into<RxSet>, pvm_tx: TxBuf, link_tx: LinkTx) -> Self {
        MirrorStage {
            nic_rx: nic_rx.into(),
            pvm_tx,
            link_tx,
            burst: MbufBurst::new(),
            mirroring: true,
            idle: IdleInputs::unknown(),
        }
    }

    /// What wakes its lcore when the NIC has frames (interrupt mode).
    pub fn with_idle(mut self, idle: IdleInputs) -> Self {
        self.idle = idle;
        self
    }
}

impl MirrorStage {
    /// Retry what the PVM port and the link did not take yet; true when both can take a whole
    /// burst (after failover only the PVM counts).
    #[inline]
    fn room_for_burst(&mut self, c: &LcoreCounters) -> bool {
        self.pvm_tx.try_flush(c);
        // Every poll, also after failover: what was queued before goes out promptly.
        self.link_tx.try_flush(c);
        self.pvm_tx.has_room_for_burst() && (!self.mirroring || self.link_tx.has_room_for_burst())
    }
}

impl Stage for MirrorStage {
    fn name(&self) -> &str {
        "mirror"
    }

    fn poll(&mut self, cx: &LoopCtx) -> usize {
        let c = cx.counters;
        if cx.phase != Phase::Run {
            self.pvm_tx.try_flush(c);
            self.link_tx.try_flush(c);
            return 0;
        }
        // Same input: read the NIC only when both sides can take the whole burst, so a full
        // side makes the NIC drop for both rather than one VM missing a frame.
        if !self.room_for_burst(c) {
            c.inc(Counter::NicRxGated);
            return 0;
        }
        let n = self.nic_rx.rx_burst(&mut self.burst);
        if n == 0 {
            return 0;
        }
        c.add(Counter::Rx, n as u64);
        whole_frames(&mut self.burst, 0, c);
        for mut m in self.burst.drain() {
            // Same input: a runt reaches neither VM (it would be refused at the PVM port).
            if crate::wire::is_runt(m.data()) {
                drop(m);
                c.inc(Counter::DropRunt);
                continue;
            }
            m.set_timestamp(cx.now_ns);
            if self.mirroring {
                let Some(clone) = m.try_clone() else {
                    c.inc(Counter::CloneFailed);
                    drop(m);
                    c.inc(Counter::DropInputBoth);
                    continue;
                };
                // The clone counts as a packet only once the link took it; refused, it is
                // freed with the client frame, which is counted once.
                if self.link_tx.try_push(clone, c).is_err() {
                    drop(m);
                    c.inc(Counter::DropInputBoth);
                    continue;
                }
                c.inc(Counter::Cloned);
                c.inc(Counter::Mirrored);
            }
            // Room for the burst was checked: pending frames are kept, never dropped here.
            self.pvm_tx.push(m, c);
        }
        // The link first: the secondary's copy is on the longer path to compare (link, SVM,
        // link back), and the PVM's tx syscall also runs the PVM kernel's receive.
        self.link_tx.try_flush(c);
        self.pvm_tx.try_flush(c);
        n
    }

    fn housekeeping(&mut self, cx: &LoopCtx) {
        self.link_tx.housekeeping(cx);
    }

    fn command(&mut self, cmd: &Command, _cx: &LoopCtx) {
        if let Command::Failover = cmd {
            // The secondary is gone: stop feeding it.
            self.mirroring = false;
        }
    }

    fn flush(&mut self, cx: &LoopCtx) {
        // Shutdown: what the devices still refuse is dropped (counted).
        self.pvm_tx.flush(cx.counters);
        self.link_tx.flush(cx.counters);
    }

    fn idle_arm(&mut self, on: bool) -> bool {
        let ok = self.idle.arm(on);
        // Frames waiting for a port's room are retried by polling, not waited for.
        ok && self.pvm_tx.pending() == 0 && !self.link_tx.port_pending()
    }

    fn wait_fds(&self, ws: &mut WaitSet) {
        self.idle.wait_fds(ws);
        self.link_tx.wait_fds(ws);
    }
}
