//! Burst buffers around transmit queues and inter-lcore rings.
//!
//! Every mbuf handed to these types ends in exactly one counter: [`Counter::Tx`] when the
//! device took it, [`Counter::DropTxFull`] (or the caller's reason) when the queue stayed
//! full, and ring leftovers are kept (back-pressure), never dropped, until the stage is flushed
//! at shutdown. A [`TxBuf`] drops what a full queue did not take on [`TxBuf::flush`], or keeps
//! it pending on [`TxBuf::try_flush`] (the mirror: a frame queued for one VM must reach it).

use std::sync::Arc;

use crate::dpdk::{Mbuf, MbufBurst, Mempool, RingConsumer, RingProducer, RxQueue, TxQueue};
use crate::wire::is_runt;

use super::counters::{Counter, LcoreCounters};
use super::idle::Wake;

/// Frames per burst on every port and ring.
pub const BURST: usize = 32;

/// Transmit attempts before the rest of a burst is dropped as `DropTxFull`.
const TX_ATTEMPTS: usize = 4;

/// Where frames enter the pipeline from a port: after an rx that put frames into `burst` from
/// slot `from` on, make each one segment. A chain (net_tap, vhost with a large MTU, jumbo
/// frames) is linearised into its first mbuf when it fits (`linearized`), else freed
/// (`drop_multiseg`): no stage handles chains (compare must see the whole frame; the mirror's
/// clone goes to the link, which copies or frames [`Mbuf::data`]; the rewriter edits in place),
/// so none is passed through. One segment-count read per frame, after a prefetch of the new
/// frames' headers and first data lines (every stage touches both next).
#[inline]
pub fn whole_frames<const N: usize>(burst: &mut MbufBurst<N>, from: usize, c: &LcoreCounters) {
    burst.prefetch_from(from);
    let (linearised, freed) = burst.linearize_from(from);
    if linearised + freed > 0 {
        c.add(Counter::Linearized, linearised as u64);
        c.add(Counter::DropMultiseg, freed as u64);
    }
}

/// Free the runts in `burst` (counted `drop_runt`), keeping the order of the rest. Slow path:
/// only called once a runt was seen.
#[cold]
fn drop_runts<const N: usize>(burst: &mut MbufBurst<N>, c: &LcoreCounters) {
    let mut keep = MbufBurst::<N>::new();
    for m in burst.drain() {
        if is_runt(m.data()) {
            drop(m);
            c.inc(Counter::DropRunt);
        } else if let Err(m) = keep.push(m) {
            // Cannot happen (keep holds at most what burst held); counted if it did.
            drop(m);
            c.inc(Counter::DropTxFull);
        }
    }
    for m in keep.drain() {
        // burst was emptied by drain and is at least as large as keep.
        if let Err(m) = burst.push(m) {
            drop(m);
            c.inc(Counter::DropTxFull);
        }
    }
}

/// Every rx queue of one port, polled by one stage. A port may spread frames over several
/// queues (af_packet `qpairs` fan-out, RSS, a multi-queue vhost-user guest); a queue nobody
/// polls would lose its frames silently, so a stage takes them all.
pub struct RxSet {
    queues: Vec<RxQueue>,
    next: usize,
}

impl RxSet {
    /// Poll `queues` (at least one).
    pub fn new(queues: Vec<RxQueue>) -> Self {
        RxSet { queues, next: 0 }
    }

    /// Receive into `burst`'s free space from every queue, starting with a different queue on
    /// each call so none is starved; returns how many mbufs were added.
    #[inline]
    pub fn rx_burst<const N: usize>(&mut self, burst: &mut MbufBurst<N>) -> usize {
        let k = self.queues.len();
        if k == 1 {
            return self.queues[0].rx_burst(burst);
        }
        let mut n = 0;
        for i in 0..k {
            if burst.is_full() {
                break;
            }
            n += self.queues[(self.next + i) % k].rx_burst(burst);
        }
        self.next = (self.next + 1) % k.max(1);
        n
    }
}

impl From<RxQueue> for RxSet {
    fn from(q: RxQueue) -> Self {
        RxSet::new(vec![q])
    }
}

/// A transmit queue with a pending burst, flushed when full and at the end of every poll.
pub struct TxBuf {
    queue: TxQueue,
    pending: MbufBurst<BURST>,
}

impl TxBuf {
    /// Wrap a transmit queue.
    pub fn new(queue: TxQueue) -> Self {
        TxBuf {
            queue,
            pending: MbufBurst::new(),
        }
    }

    /// Queue `m` for transmission.
    #[inline]
    pub fn push(&mut self, m: Mbuf, counters: &LcoreCounters) {
        self.push_as(m, counters, Counter::DropTxFull);
    }

    /// [`TxBuf::push`], counting frames the queue could not take as `drop`; returns how many.
    #[inline]
    pub fn push_as(&mut self, m: Mbuf, counters: &LcoreCounters, drop: Counter) -> u64 {
        // Never transmit a runt (whatever produced it: a client, a VM, a rewrite).
        if is_runt(m.data()) {
            std::mem::drop(m);
            counters.inc(Counter::DropRunt);
            return 0;
        }
        let mut lost = 0;
        if self.pending.is_full() {
            lost = self.flush_as(counters, drop);
        }
        // After a flush the burst is empty, so the push cannot fail.
        if let Err(m) = self.pending.push(m) {
            std::mem::drop(m);
            counters.inc(drop);
            lost += 1;
        }
        lost
    }

    /// Frames pending (not yet taken by the device).
    #[inline]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// True when a whole burst can be pushed without sending or dropping anything.
    #[inline]
    pub fn has_room_for_burst(&self) -> bool {
        self.pending.is_empty()
    }

    /// Send what is pending; what the queue does not take stays pending (to be retried, the
    /// caller takes no new input meanwhile). Returns how many frames are still pending.
    #[inline]
    pub fn try_flush(&mut self, counters: &LcoreCounters) -> usize {
        for _ in 0..TX_ATTEMPTS {
            if self.pending.is_empty() {
                break;
            }
            let sent = self.queue.tx_burst(&mut self.pending);
            counters.add(Counter::Tx, sent as u64);
            if sent == 0 {
                break;
            }
        }
        self.pending.len()
    }

    /// The io-forward step: receive one burst from `rx` straight into the pending burst
    /// (counted `Rx`, no copy) and send it. Returns how many frames were received.
    #[inline]
    pub fn forward_from(&mut self, rx: &mut RxQueue, counters: &LcoreCounters) -> usize {
        let from = self.pending.len();
        let n = rx.rx_burst(&mut self.pending);
        counters.add(Counter::Rx, n as u64);
        whole_frames(&mut self.pending, from, counters);
        if self.pending.as_slice()[from..]
            .iter()
            .any(|m| is_runt(m.data()))
        {
            drop_runts(&mut self.pending, counters);
        }
        self.flush(counters);
        n
    }

    /// [`TxBuf::forward_from`] for every queue of `rx`.
    #[inline]
    pub fn forward_from_set(&mut self, rx: &mut RxSet, counters: &LcoreCounters) -> usize {
        let n = rx.rx_burst(&mut self.pending);
        counters.add(Counter::Rx, n as u64);
        self.flush(counters);
        n
    }

    /// Send what is pending; a queue that stays full drops the rest (counted).
    #[inline]
    pub fn flush(&mut self, counters: &LcoreCounters) {
        self.flush_as(counters, Counter::DropTxFull);
    }

    /// [`TxBuf::flush`], counting the dropped rest as `drop`; returns how many were dropped.
    #[inline]
    pub fn flush_as(&mut self, counters: &LcoreCounters, drop: Counter) -> u64 {
        if self.pending.is_empty() {
            return 0;
        }
        for _ in 0..TX_ATTEMPTS {
            let sent = self.queue.tx_burst(&mut self.pending);
            counters.add(Counter::Tx, sent as u64);
            if self.pending.is_empty() {
                return 0;
            }
        }
        let lost = self.pending.len() as u64;
        counters.add(drop, lost);
        self.pending.clear();
        lost
    }
}

/// The producer side of an inter-lcore mbuf ring with back-pressure: frames that do not fit
/// stay pending and are retried; the caller stops taking input while [`RingOut::has_room`] is
/// false.
pub struct RingOut {
    ring: RingProducer<Mbuf>,
    pending: MbufBurst<BURST>,
    /// The consumer's doorbell when it runs on another lcore (rung after an enqueue, a
    /// syscall only while that lcore sleeps).
    wake: Option<Arc<Wake>>,
}

impl RingOut {
    /// Wrap a ring producer.
    pub fn new(ring: RingProducer<Mbuf>) -> Self {
        RingOut {
            ring,
            pending: MbufBurst::new(),
            wake: None,
        }
    }

    /// Wake `consumer` (the lcore that dequeues) after each enqueue.
    pub fn with_wake(mut self, consumer: Arc<Wake>) -> Self {
        self.wake = Some(consumer);
        self
    }

    /// True when another frame can be pushed without blocking.
    #[inline]
    pub fn has_room(&self) -> bool {
        !self.pending.is_full()
    }

    /// Queue `m`; returns it when the pending burst is full (call [`RingOut::flush`] first).
    #[inline]
    pub fn push(&mut self, m: Mbuf, counters: &LcoreCounters) -> Result<(), Mbuf> {
        if self.pending.is_full() {
            self.flush(counters);
        }
        self.pending.push(m)
    }

    /// Enqueue what is pending; what does not fit stays pending.
    #[inline]
    pub fn flush(&mut self, counters: &LcoreCounters) {
        if self.pending.is_empty() {
            return;
        }
        let before = self.pending.len();
        self.ring.enqueue_burst(&mut self.pending);
        if self.pending.len() < before {
            if let Some(w) = &self.wake {
                w.notify();
            }
        }
        if !self.pending.is_empty() {
            counters.inc(Counter::RingFullRetry);
        }
    }

    /// Frames still pending.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Shutdown: drop whatever could not be enqueued (counted).
    pub fn discard_pending(&mut self, counters: &LcoreCounters) {
        counters.add(Counter::DropRingFull, self.pending.len() as u64);
        self.pending.clear();
    }
}

/// The consumer side of an inter-lcore mbuf ring.
pub struct RingIn {
    ring: RingConsumer<Mbuf>,
}

impl RingIn {
    /// Wrap a ring consumer.
    pub fn new(ring: RingConsumer<Mbuf>) -> Self {
        RingIn { ring }
    }

    /// Dequeue into `burst`'s free space.
    #[inline]
    pub fn dequeue(&mut self, burst: &mut MbufBurst<BURST>) -> usize {
        self.ring.dequeue_burst(burst)
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

/// `m` itself when nobody else holds it, else a private copy from `pool` (same bytes and
/// timestamp), so it can be written in place. `None` when the pool is empty.
pub fn unshare(m: Mbuf, pool: &Mempool) -> Option<Mbuf> {
    if !m.is_shared() {
        return Some(m);
    }
    let mut copy = pool.alloc()?;
    copy.set_data(m.data()).ok()?;
    copy.set_timestamp(m.timestamp());
    Some(copy)
}
