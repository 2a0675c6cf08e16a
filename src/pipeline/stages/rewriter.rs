//! Secondary: mirrored client frames (from the link) rewritten into the SVM's sequence
//! space and its output rewritten back, sent to the primary over the link; takes over the
//! client on failover.

use crate::dpdk::{MbufBurst, Mempool, RxQueue};
use crate::mgmt::EventSender;
use crate::rewrite::announce::{self, ServiceAddrs};
use crate::rewrite::{Direction, Rewriter};

use super::failover::{FailoverOpts, FailoverProgress};
use crate::pipeline::counters::{Counter, LcoreCounters};
use crate::pipeline::idle::{IdleInputs, WaitSet};
use crate::pipeline::io::{unshare, whole_frames, RxSet, TxBuf, BURST};
use crate::pipeline::lcore::{Command, LoopCtx, Phase, Stage};
use crate::pipeline::linkio::{LinkRx, LinkTx};

/// Divergence reason of a mirrored frame the SVM port could not take.
pub const SVM_INPUT_LOST: &str = "svm_input_lost";

/// Secondary: the mirror stream into the SVM (ack += offset) and the SVM's output back to the
/// primary (seq −= offset); after failover, the SVM serves the client through the NIC.
///
/// Before failover the nic is polled only to drop what arrives (`drop_standby`): the standby
/// answers, learns and forwards nothing. After failover the link is polled only to drop
/// (a primary that is still alive, split-brain, must not feed the SVM twice); the nic feeds
/// the SVM through the same rewriter, so every connection it knows keeps being translated.
pub struct RewriterStage {
    link_rx: LinkRx,
    svm_tx: TxBuf,
    svm_rx: RxSet,
    link_tx: LinkTx,
    nic: Option<(RxQueue, TxBuf)>,
    rewriter: Rewriter,
    pool: Mempool,
    burst: MbufBurst<BURST>,
    failed_over: bool,
    opts: FailoverOpts,
    services: ServiceAddrs,
    /// Announcement rounds still to send, and when the next is due.
    announce_left: u32,
    announce_next_ns: u64,
    announced: u64,
    progress: FailoverProgress,
    /// `svm_input_lost` divergences go here (none: counted only).
    events: Option<EventSender>,
    /// Mirrored frames the SVM missed since the last event.
    svm_lost: u64,
    next_event_ns: u64,
    idle: IdleInputs,
}

/// Shortest interval between two `svm_input_lost` events (management coalesces checkpoint
/// requests anyway; this bounds the event queue during a long SVM stall).
const SVM_LOST_EVENT_PERIOD_NS: u64 = 10_000_000;

impl RewriterStage {
    /// A rewriter between the link and the SVM port; `nic` is used after failover.
    pub fn new(
        link_rx: LinkRx,
        svm_tx: TxBuf,
        svm_rx: impl Into<RxSet>,
        link_tx: LinkTx,
        nic: Option<(RxQueue, TxBuf)>,
        rewriter: Rewriter,
        pool: Mempool,
    ) -> Self {
        RewriterStage {
            link_rx,
            svm_tx,
            svm_rx: svm_rx.into(),
            link_tx,
            nic,
            rewriter,
            pool,
            burst: MbufBurst::new(),
            failed_over: false,
            opts: FailoverOpts::default(),
            services: ServiceAddrs::default(),
            announce_left: 0,
            announce_next_ns: 0,
            announced: 0,
            progress: FailoverProgress::default(),
            events: None,
            svm_lost: 0,
            next_event_ns: 0,
            idle: IdleInputs::unknown(),
        }
    }

    /// What wakes its lcore when the SVM, the nic or a link port has frames (interrupt
    /// mode).
    pub fn with_idle(mut self, idle: IdleInputs) -> Self {
        self.idle = idle;
        self
    }

    /// Report mirrored frames the SVM could not take to management (`svm_input_lost`).
    pub fn with_events(mut self, events: EventSender) -> Self {
        self.events = Some(events);
        self
    }

    /// The SVM missed input the PVM got: its state may now differ, ask for a checkpoint at
    /// once (an event, like a compare divergence; at most one per period).
    fn report_svm_lost(&mut self, cx: &LoopCtx) {
        if self.svm_lost == 0 || cx.now_ns < self.next_event_ns {
            return;
        }
        let Some(events) = &self.events else {
            self.svm_lost = 0;
            return;
        };
        let c = cx.counters;
        c.inc(Counter::Divergences);
        // Only on a loss, at most once per period: allocating the event is off the steady path.
        let ev = crate::control::Event::Divergence {
            flow: format!("svm port ({} frames)", self.svm_lost),
            reason: SVM_INPUT_LOST.to_string(),
            side: crate::control::EventSide::Secondary,
            seq_range: None,
            time_ns: cx.now_ns,
        };
        if !events.event(ev) {
            c.inc(Counter::EventsDropped);
        }
        self.svm_lost = 0;
        self.next_event_ns = cx.now_ns.saturating_add(SVM_LOST_EVENT_PERIOD_NS);
    }

    /// Send what is pending for the SVM; before failover, what its port refuses is input
    /// the SVM lost.
    fn flush_svm(&mut self, c: &LcoreCounters) {
        if self.failed_over {
            self.svm_tx.flush(c);
        } else {
            self.svm_lost += self.svm_tx.flush_as(c, Counter::DropSvmInputLost);
        }
    }

    /// Failover behaviour (announcements, where the failover report goes).
    pub fn with_failover(mut self, opts: FailoverOpts) -> Self {
        self.opts = opts;
        self
    }

    /// The service addresses seen so far in the SVM's output.
    pub fn services(&self) -> &ServiceAddrs {
        &self.services
    }

    fn rewrite_into(&mut self, dir: Direction, cx: &LoopCtx, to_svm: bool) {
        let c = cx.counters;
        // Until failover, a mirrored frame lost on its way into the SVM is a divergence.
        let mirrored = to_svm && !self.failed_over;
        for m in self.burst.drain() {
            let Some(mut m) = unshare(m, &self.pool) else {
                c.inc(Counter::DropNoMbuf);
                if mirrored {
                    self.svm_lost += 1;
                }
                continue;
            };
            if dir == Direction::FromSecondary {
                self.services.observe(m.data());
            }
            if self.rewriter.process(dir, &mut m, cx.now_ns).rewritten() {
                c.inc(Counter::Rewritten);
            } else {
                c.inc(Counter::RewritePassed);
            }
            if mirrored {
                self.svm_lost += self.svm_tx.push_as(m, c, Counter::DropSvmInputLost);
            } else if to_svm {
                self.svm_tx.push(m, c);
            } else if self.failed_over {
                match &mut self.nic {
                    Some((_, tx)) => {
                        self.progress.forwarded(cx.now_ns);
                        tx.push(m, c)
                    }
                    None => {
                        drop(m);
                        c.inc(Counter::DropLinkDown);
                    }
                }
            } else {
                self.link_tx.push(m, c);
            }
        }
    }

    /// Drop everything in the burst as `drop_standby`.
    fn drop_burst(&mut self, cx: &LoopCtx) {
        let n = self.burst.len();
        self.burst.clear();
        cx.counters.add(Counter::DropStandby, n as u64);
    }

    /// One round of takeover announcements on the nic, when due.
    fn announce(&mut self, cx: &LoopCtx) {
        if self.announce_left == 0 || cx.now_ns < self.announce_next_ns {
            return;
        }
        let Some((_, tx)) = &mut self.nic else {
            self.announce_left = 0;
            return;
        };
        self.announce_left -= 1;
        self.announce_next_ns = cx.now_ns.saturating_add(self.opts.announce_interval_ns);
        let c = cx.counters;
        let mut send = |bytes: &[u8]| {
            let Some(mut m) = self.pool.alloc() else {
                return;
            };
            if m.set_data(bytes).is_err() {
                return;
            }
            c.inc(Counter::Generated);
            c.inc(Counter::Announced);
            self.announced += 1;
            tx.push(m, c);
        };
        for s in self.services.v4() {
            let mut f = [0u8; announce::GARP_LEN];
            let n = announce::garp(s.mac, s.ip, &mut f);
            send(&f[..n]);
        }
        for s in self.services.v6() {
            let mut f = [0u8; announce::NA_LEN];
            let n = announce::unsolicited_na(s.mac, s.ip, &mut f);
            send(&f[..n]);
        }
        tx.flush(c);
    }
}

impl Stage for RewriterStage {
    fn name(&self) -> &str {
        "rewriter"
    }

    fn poll(&mut self, cx: &LoopCtx) -> usize {
        let c = cx.counters;
        if cx.phase != Phase::Run {
            self.flush(cx);
            return 0;
        }
        let mut work = 0;
        let n = self.link_rx.recv(&mut self.burst, cx);
        work += n;
        if self.failed_over {
            self.drop_burst(cx);
        } else {
            self.rewrite_into(Direction::ToSecondary, cx, true);
        }
        if let Some((rx, _)) = &mut self.nic {
            let from = self.burst.len();
            let n = rx.rx_burst(&mut self.burst);
            c.add(Counter::Rx, n as u64);
            whole_frames(&mut self.burst, from, c);
            work += n;
            if self.failed_over {
                if n > 0 {
                    self.progress.forwarded(cx.now_ns);
                }
                self.rewrite_into(Direction::ToSecondary, cx, true);
            } else {
                self.drop_burst(cx);
            }
        }
        let from = self.burst.len();
        let n = self.svm_rx.rx_burst(&mut self.burst);
        c.add(Counter::Rx, n as u64);
        whole_frames(&mut self.burst, from, c);
        work += n;
        self.rewrite_into(Direction::FromSecondary, cx, false);
        self.flush_svm(c);
        self.report_svm_lost(cx);
        self.link_tx.flush(c);
        if let Some((_, tx)) = &mut self.nic {
            tx.flush(c);
        }
        work
    }

    fn housekeeping(&mut self, cx: &LoopCtx) {
        self.rewriter.tick(cx.now_ns);
        self.link_tx.housekeeping(cx);
        self.link_rx.housekeeping(cx);
        self.announce(cx);
        self.progress.report(
            "rewriter",
            self.announced,
            self.opts.events.as_ref(),
            cx.now_ns,
        );
    }

    fn command(&mut self, cmd: &Command, cx: &LoopCtx) {
        match cmd {
            Command::CheckpointDone => {
                self.rewriter.checkpoint();
                cx.counters.inc(Counter::CheckpointsApplied);
            }
            Command::Failover => {
                if self.failed_over {
                    return;
                }
                self.rewriter.failover();
                self.failed_over = true;
                // The rewriter holds nothing: no frame waits anywhere at this moment.
                self.progress.start(cx.now_ns);
                if self.opts.announce {
                    self.announce_left = self.opts.announce_count.max(1);
                    self.announce_next_ns = 0;
                    self.announce(cx);
                }
            }
            Command::Capture(_) | Command::Bypass(_) | Command::Flows(_) => {}
        }
    }

    fn flush(&mut self, cx: &LoopCtx) {
        let c = cx.counters;
        self.flush_svm(c);
        self.report_svm_lost(cx);
        self.link_tx.flush(c);
        if let Some((_, tx)) = &mut self.nic {
            tx.flush(c);
        }
    }

    fn idle_arm(&mut self, on: bool) -> bool {
        let ok = self.idle.arm(on);
        let nic_pending = self.nic.as_ref().is_some_and(|(_, tx)| tx.pending() > 0);
        ok && self.svm_tx.pending() == 0 && !self.link_tx.port_pending() && !nic_pending
    }

    fn wait_fds(&self, ws: &mut WaitSet) {
        self.idle.wait_fds(ws);
        self.link_rx.wait_fds(ws);
        self.link_tx.wait_fds(ws);
    }
}
