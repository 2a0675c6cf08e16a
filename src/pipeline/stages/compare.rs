//! Primary: a compare shard. Releases a primary frame to the NIC only when the engine
//! says so (output commit); reports divergences to management.

use std::sync::Arc;

use crate::compare::{self, Comparator, DivergenceEvent, Side};
use crate::dpdk::{Mbuf, MbufBurst};
use crate::mgmt::capture::{CapturedPacket, DivergenceCapture};
use crate::mgmt::{EventSender, Input};

use super::capture::{ContextRing, CAPTURE_SNAPLEN};
use super::failover::FailoverProgress;
use crate::pipeline::backpressure::BacklogBoard;
use crate::pipeline::counters::Counter;
use crate::pipeline::idle::IdleInputs;
use crate::pipeline::io::{RingIn, TxBuf, BURST};
use crate::pipeline::latency::LatencyRecorder;
use crate::pipeline::lcore::{Command, LoopCtx, Stage};

/// Verdict sink of one compare shard for one loop: counts and moves mbufs.
struct ShardOutput<'a> {
    nic_tx: &'a mut TxBuf,
    events: &'a EventSender,
    latency: &'a mut LatencyRecorder,
    cx: &'a LoopCtx<'a>,
    capture_on: bool,
    captured: Option<Box<DivergenceCapture>>,
    context: &'a ContextRing,
    /// Secondaries done with, freed together (one bulk call, not one per mbuf).
    to_free: &'a mut MbufBurst<BURST>,
}

impl Drop for ShardOutput<'_> {
    fn drop(&mut self) {
        self.to_free.clear();
    }
}

fn captured(side: crate::control::EventSide, m: &Mbuf, now_ns: u64) -> CapturedPacket {
    let d = m.data();
    CapturedPacket {
        side,
        time_ns: now_ns,
        data: d[..d.len().min(CAPTURE_SNAPLEN)].to_vec(),
        orig_len: d.len() as u32,
    }
}

impl compare::Output<Mbuf> for ShardOutput<'_> {
    #[inline]
    fn release(&mut self, pkt: Mbuf, how: compare::Release) {
        let c = self.cx.counters;
        c.inc(match how {
            compare::Release::Matched | compare::Release::Retransmit => Counter::ReleasedMatched,
            compare::Release::Bypass => Counter::ReleasedBypass,
            compare::Release::Checkpoint => Counter::ReleasedCheckpoint,
            _ => Counter::ReleasedUncompared,
        });
        self.latency
            .record(self.cx.now_ns.saturating_sub(pkt.timestamp()));
        self.nic_tx.push(pkt, c);
    }

    #[cold]
    fn drop_primary(&mut self, pkt: Mbuf, why: compare::PrimaryDrop) {
        self.cx.counters.inc(match why {
            compare::PrimaryDrop::QueueFull => Counter::DropCompareQueueFull,
            compare::PrimaryDrop::PoolEmpty => Counter::DropComparePoolEmpty,
            compare::PrimaryDrop::Shutdown => Counter::DropCompareShutdown,
        });
        drop(pkt);
    }

    #[inline]
    fn free_secondary(&mut self, pkt: Mbuf, how: compare::SecondaryFree) {
        let c = self.cx.counters;
        c.inc(match how {
            compare::SecondaryFree::Matched
            | compare::SecondaryFree::Duplicate
            | compare::SecondaryFree::Control
            | compare::SecondaryFree::Bypass => Counter::SecondaryMatched,
            compare::SecondaryFree::Checkpoint => Counter::SecondaryFlushed,
            _ => Counter::SecondaryDropped,
        });
        if let Err(pkt) = self.to_free.push(pkt) {
            self.to_free.clear();
            drop(pkt);
        }
    }

    fn capture(&mut self, ev: &DivergenceEvent, primary: Option<&Mbuf>, secondary: Option<&Mbuf>) {
        if !self.capture_on {
            return;
        }
        // Only on a divergence, and only while an operator asked for capture: allocating here
        // is off the steady-state path.
        let now = self.cx.now_ns;
        self.captured = Some(Box::new(DivergenceCapture {
            flow: ev.flow.to_string(),
            reason: ev.reason.as_str().to_string(),
            seq_range: ev.seq_range,
            primary: primary.map(|m| captured(crate::control::EventSide::Primary, m, now)),
            secondary: secondary.map(|m| captured(crate::control::EventSide::Secondary, m, now)),
            context: self.context.of_flow(ev.flow.hash64()),
        }));
    }

    fn event(&mut self, ev: DivergenceEvent) {
        let c = self.cx.counters;
        c.inc(Counter::Divergences);
        let input = match self.captured.take() {
            Some(cap) => Input::Divergence(crate::control::Event::from(&ev), cap),
            None => Input::Compare(ev),
        };
        if !self.events.send(input) {
            c.inc(Counter::EventsDropped);
        }
    }
}

/// Counts what a failover flush releases and drops (the frames held at that moment).
struct HeldCount<'a, 'b> {
    inner: &'a mut ShardOutput<'b>,
    released: (u64, u64),
    dropped: (u64, u64),
}

impl compare::Output<Mbuf> for HeldCount<'_, '_> {
    fn release(&mut self, pkt: Mbuf, how: compare::Release) {
        self.released.0 += 1;
        self.released.1 += u64::from(pkt.pkt_len());
        self.inner.release(pkt, how);
    }

    fn free_secondary(&mut self, pkt: Mbuf, how: compare::SecondaryFree) {
        self.dropped.0 += 1;
        self.dropped.1 += u64::from(pkt.pkt_len());
        self.inner.free_secondary(pkt, how);
    }

    fn drop_primary(&mut self, pkt: Mbuf, why: compare::PrimaryDrop) {
        self.dropped.0 += 1;
        self.dropped.1 += u64::from(pkt.pkt_len());
        self.inner.drop_primary(pkt, why);
    }

    fn event(&mut self, ev: DivergenceEvent) {
        self.inner.event(ev);
    }
}

/// Primary: one flow shard's comparator between the redirector and the NIC.
pub struct CompareStage {
    shard: usize,
    from_primary: RingIn,
    from_secondary: RingIn,
    nic_tx: TxBuf,
    engine: Comparator<Mbuf>,
    events: EventSender,
    latency: LatencyRecorder,
    burst: MbufBurst<BURST>,
    name: String,
    failed_over: bool,
    capture_on: bool,
    context: ContextRing,
    progress: FailoverProgress,
    /// Where this shard publishes its backlog (back-pressure, lag reports).
    board: Option<Arc<BacklogBoard>>,
    published: compare::Backlog,
    to_free: MbufBurst<BURST>,
    idle: IdleInputs,
}

impl CompareStage {
    /// Shard `shard` of the compare stage.
    pub fn new(
        shard: usize,
        from_primary: RingIn,
        from_secondary: RingIn,
        nic_tx: TxBuf,
        engine: Comparator<Mbuf>,
        events: EventSender,
        latency: LatencyRecorder,
    ) -> Self {
        CompareStage {
            shard,
            from_primary,
            from_secondary,
            nic_tx,
            engine,
            events,
            latency,
            burst: MbufBurst::new(),
            name: format!("compare{shard}"),
            failed_over: false,
            capture_on: false,
            context: ContextRing::new(),
            progress: FailoverProgress::default(),
            board: None,
            published: compare::Backlog::default(),
            to_free: MbufBurst::new(),
            idle: IdleInputs::unknown(),
        }
    }

    /// What wakes its lcore ([`IdleInputs::none`]: rings only, whose producers ring the
    /// lcore's doorbell).
    pub fn with_idle(mut self, idle: IdleInputs) -> Self {
        self.idle = idle;
        self
    }

    /// Publish this shard's backlog on `board` once per poll.
    pub fn with_backlog(mut self, board: Arc<BacklogBoard>) -> Self {
        self.board = Some(board);
        self
    }

    /// Publish the backlog when it changed (once per poll; a store only on change keeps the
    /// redirector's cache line quiet while nothing moves).
    #[inline]
    fn publish(&mut self, now_ns: u64) {
        if let Some(board) = &self.board {
            let b = self.engine.backlog();
            if b != self.published {
                board.publish(self.shard, &b, now_ns);
                self.published = b;
            }
        }
    }

    /// Start with divergence capture on (when management captures from start-up), so no
    /// divergence before the first command goes uncaptured.
    pub fn with_capture(mut self, on: bool) -> Self {
        self.capture_on = on;
        self
    }

    fn output<'a>(
        &'a mut self,
        cx: &'a LoopCtx<'a>,
    ) -> (ShardOutput<'a>, &'a mut Comparator<Mbuf>) {
        (
            ShardOutput {
                nic_tx: &mut self.nic_tx,
                events: &self.events,
                latency: &mut self.latency,
                cx,
                capture_on: self.capture_on,
                captured: None,
                context: &self.context,
                to_free: &mut self.to_free,
            },
            &mut self.engine,
        )
    }

    fn flows_json(&self, top: usize) -> Vec<serde_json::Value> {
        // Bounded: a heap of `top` entries, not a copy and sort of every connection.
        self.engine
            .top_flows(top)
            .into_iter()
            .map(|(k, f)| {
                serde_json::json!({
                    "shard": self.shard,
                    "flow": k.to_string(),
                    "kind": format!("{:?}", f.kind),
                    "state": format!("{:?}", f.state),
                    "primary_packets": f.primary_packets,
                    "primary_bytes": f.primary_bytes,
                    "secondary_packets": f.secondary_packets,
                    "secondary_bytes": f.secondary_bytes,
                    "queued_primary": f.queued_primary,
                    "queued_secondary": f.queued_secondary,
                    "divergences": f.divergences,
                    "last_seen_ns": f.last_seen_ns,
                })
            })
            .collect()
    }

    /// The shard number.
    pub fn shard(&self) -> usize {
        self.shard
    }
}

impl Stage for CompareStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self, cx: &LoopCtx) -> usize {
        let c = cx.counters;
        let failed_over = self.failed_over;
        // Secondary first: a primary arriving in the same loop then finds its counterpart.
        let ns = self.from_secondary.dequeue(&mut self.burst);
        let np;
        {
            let mut burst = std::mem::take(&mut self.burst);
            if self.capture_on {
                let ctx = &mut self.context;
                burst.for_each_ref(|m| ctx.remember(Side::Secondary, m.data(), cx.now_ns));
            }
            let (mut out, engine) = self.output(cx);
            engine.prefetch_burst(burst.as_slice());
            c.add(Counter::ComparedSecondary, ns as u64);
            for m in burst.drain() {
                if failed_over {
                    // After failover nothing is compared: the secondary is gone.
                    c.inc(Counter::SecondaryDropped);
                    continue;
                }
                engine.process(Side::Secondary, m, cx.now_ns, &mut out);
            }
            drop(out);
            np = self.from_primary.dequeue(&mut burst);
            if self.capture_on {
                let ctx = &mut self.context;
                burst.for_each_ref(|m| ctx.remember(Side::Primary, m.data(), cx.now_ns));
            }
            if failed_over && np > 0 {
                self.progress.forwarded(cx.now_ns);
            }
            let (mut out, engine) = self.output(cx);
            if failed_over {
                c.add(Counter::ReleasedUncompared, np as u64);
                for m in burst.drain() {
                    out.nic_tx.push(m, c);
                }
            } else {
                engine.prefetch_burst(burst.as_slice());
                c.add(Counter::ComparedPrimary, np as u64);
                for m in burst.drain() {
                    engine.process(Side::Primary, m, cx.now_ns, &mut out);
                }
            }
            drop(out);
            self.burst = burst;
        }
        self.nic_tx.flush(c);
        self.publish(cx.now_ns);
        ns + np
    }

    fn awaiting(&self) -> bool {
        !self.failed_over && self.engine.backlog().primary_packets > 0
    }

    fn housekeeping(&mut self, cx: &LoopCtx) {
        let (mut out, engine) = self.output(cx);
        engine.tick(cx.now_ns, &mut out);
        drop(out);
        self.nic_tx.flush(cx.counters);
        self.latency.publish_due(cx.now_ns);
        self.progress
            .report(&self.name, 0, Some(&self.events), cx.now_ns);
        self.publish(cx.now_ns);
    }

    fn command(&mut self, cmd: &Command, cx: &LoopCtx) {
        match cmd {
            Command::CheckpointDone => {
                let (mut out, engine) = self.output(cx);
                engine.checkpoint_done(cx.now_ns, &mut out);
                cx.counters.inc(Counter::CheckpointsApplied);
            }
            Command::Failover => {
                if self.failed_over {
                    return;
                }
                self.progress.start(cx.now_ns);
                let (mut out, engine) = self.output(cx);
                let mut held = HeldCount {
                    inner: &mut out,
                    released: (0, 0),
                    dropped: (0, 0),
                };
                engine.flush_all(&mut held);
                let (released, dropped) = (held.released, held.dropped);
                drop(out);
                let c = cx.counters;
                c.add(Counter::FailoverHeldReleased, released.0);
                c.add(Counter::FailoverHeldReleasedBytes, released.1);
                c.add(Counter::FailoverHeldDropped, dropped.0);
                c.add(Counter::FailoverHeldDroppedBytes, dropped.1);
                self.progress.held_released = released;
                self.progress.held_dropped = dropped;
                if released.0 > 0 {
                    // Held primaries go out now, in order: the new path's first frames.
                    self.progress.forwarded(cx.now_ns);
                }
                self.failed_over = true;
            }
            Command::Capture(on) => {
                self.capture_on = *on;
                self.context.clear();
            }
            Command::Bypass(rules) => self.engine.set_bypass(rules.to_vec()),
            Command::Flows(req) => {
                let mine = self.flows_json(req.top);
                req.out
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(mine);
            }
        }
        self.nic_tx.flush(cx.counters);
        self.publish(cx.now_ns);
    }

    fn flush(&mut self, cx: &LoopCtx) {
        // Drain what the redirector already queued (matches still release), then drop what is
        // still unverified: output commit (after failover nothing is queued).
        while self.poll(cx) > 0 {}
        let (mut out, engine) = self.output(cx);
        engine.drop_all(&mut out);
        drop(out);
        self.nic_tx.flush(cx.counters);
        self.latency.publish();
        self.publish(cx.now_ns);
    }

    fn idle_arm(&mut self, on: bool) -> bool {
        self.idle.arm(on) && self.nic_tx.pending() == 0
    }
}
