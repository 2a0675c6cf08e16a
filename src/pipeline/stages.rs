//! The proxy's stages as they run on lcores: mirror, redirector, compare shard, rewriter.
//!
//! Each stage owns its queues and rings outright (one poller per queue, one producer and one
//! consumer per ring) and does its work in bursts of [`BURST`]. The COLO logic lives in the
//! pure engines ([`Comparator`], [`Rewriter`]); this file only moves mbufs and counts them.

use std::sync::Arc;

use crate::compare::{self, Comparator, DivergenceEvent, Side};
use crate::dpdk::{Mbuf, MbufBurst, Mempool, RxQueue};
use crate::flow::FlowKey;
use crate::mgmt::capture::{CapturedPacket, DivergenceCapture};
use crate::mgmt::{EventSender, Input};
use crate::rewrite::announce::{self, ServiceAddrs};
use crate::rewrite::{Direction, Rewriter};

use super::backpressure::{BacklogBoard, PvmGate};
use super::counters::{Counter, LcoreCounters};
use super::idle::{IdleInputs, WaitSet};
use super::io::{unshare, whole_frames, RingIn, RingOut, RxSet, TxBuf, BURST};
use super::latency::LatencyRecorder;
use super::lcore::{Command, LoopCtx, Phase, Stage};
use super::link::{LinkRx, LinkTx};

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
        self.pvm_tx.try_flush(c);
        self.link_tx.try_flush(c);
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

/// The compare shard owning a frame's flow (the one hash); unparsable frames go to shard 0,
/// whose engine counts them as malformed.
#[inline]
pub fn shard_of_frame(frame: &[u8], shards: usize) -> usize {
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

/// Bytes of each diverging frame kept for capture.
const CAPTURE_SNAPLEN: usize = 2048;
/// Recent frames a shard remembers while capture is on (context for a divergence).
const CONTEXT_FRAMES: usize = 64;
/// Bytes of each context frame kept (headers and the start of the payload).
const CONTEXT_SNAPLEN: usize = 256;
/// Context frames attached to one divergence at most.
const CONTEXT_PER_DIVERGENCE: usize = 8;

/// One remembered frame.
#[derive(Clone, Copy)]
struct ContextFrame {
    flow_hash: u64,
    side: Side,
    time_ns: u64,
    orig_len: u32,
    len: u16,
    data: [u8; CONTEXT_SNAPLEN],
}

/// The last [`CONTEXT_FRAMES`] frames of a shard, kept only while capture is on: preallocated,
/// one bounded copy per frame, so a divergence's capture can show what led to it.
struct ContextRing {
    frames: Box<[ContextFrame]>,
    next: usize,
    filled: usize,
}

impl ContextRing {
    fn new() -> Self {
        let empty = ContextFrame {
            flow_hash: 0,
            side: Side::Primary,
            time_ns: 0,
            orig_len: 0,
            len: 0,
            data: [0; CONTEXT_SNAPLEN],
        };
        ContextRing {
            frames: vec![empty; CONTEXT_FRAMES].into_boxed_slice(),
            next: 0,
            filled: 0,
        }
    }

    fn remember(&mut self, side: Side, frame: &[u8], now_ns: u64) {
        let Ok(info) = crate::wire::parse(frame) else {
            return;
        };
        let f = &mut self.frames[self.next];
        f.flow_hash = FlowKey::of(&info, frame).hash64();
        f.side = side;
        f.time_ns = now_ns;
        f.orig_len = frame.len() as u32;
        let n = frame.len().min(CONTEXT_SNAPLEN);
        f.len = n as u16;
        f.data[..n].copy_from_slice(&frame[..n]);
        self.next = (self.next + 1) % CONTEXT_FRAMES;
        self.filled = (self.filled + 1).min(CONTEXT_FRAMES);
    }

    /// Remembered frames of the flow with `flow_hash`, oldest first, excluding the newest one
    /// (the packet that diverged is captured in full separately).
    fn of_flow(&self, flow_hash: u64) -> Vec<CapturedPacket> {
        let start = (self.next + CONTEXT_FRAMES - self.filled) % CONTEXT_FRAMES;
        let mut out: Vec<CapturedPacket> = (0..self.filled)
            .map(|i| &self.frames[(start + i) % CONTEXT_FRAMES])
            .filter(|f| f.flow_hash == flow_hash)
            .map(|f| CapturedPacket {
                side: f.side.into(),
                time_ns: f.time_ns,
                data: f.data[..f.len as usize].to_vec(),
                orig_len: f.orig_len,
            })
            .collect();
        out.pop();
        let skip = out.len().saturating_sub(CONTEXT_PER_DIVERGENCE);
        out.drain(..skip);
        out
    }

    fn clear(&mut self) {
        self.filled = 0;
    }
}

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

fn captured(side: crate::control::Side, m: &Mbuf, now_ns: u64) -> CapturedPacket {
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
            primary: primary.map(|m| captured(crate::control::Side::Primary, m, now)),
            secondary: secondary.map(|m| captured(crate::control::Side::Secondary, m, now)),
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
            Command::Quiesce => {}
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
const FAILOVER_REPORT_BOUND_NS: u64 = 10_000_000_000;

/// One stage's failover measurement (allocates only when the report is sent, once).
#[derive(Default)]
struct FailoverProgress {
    at_ns: Option<u64>,
    first_forward_ns: Option<u64>,
    reported: bool,
    held_released: (u64, u64),
    held_dropped: (u64, u64),
}

impl FailoverProgress {
    fn start(&mut self, now_ns: u64) {
        *self = FailoverProgress {
            at_ns: Some(now_ns),
            ..FailoverProgress::default()
        };
    }

    #[inline]
    fn forwarded(&mut self, now_ns: u64) {
        if self.at_ns.is_some() && self.first_forward_ns.is_none() {
            self.first_forward_ns = Some(now_ns);
        }
    }

    fn report(&mut self, stage: &str, announced: u64, events: Option<&EventSender>, now_ns: u64) {
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
            side: crate::control::Side::Secondary,
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
            Command::Capture(_) | Command::Quiesce | Command::Bypass(_) | Command::Flows(_) => {}
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
