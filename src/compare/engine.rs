//! The per-shard comparator: connection table, queues, TCP stream and datagram compare.
//! See the module docs of [`crate::compare`] for the guarantees.

use crate::buf::PacketBuf;
use crate::flow::{FlowKey, HashedTable};
use crate::wire::{parse, seq, PacketInfo};

use super::meta::{fast_tcp4, fast_udp4, flow_kind, meta_of};
use super::pool::{List, Meta, Pool, DATA_OK, NIL};
use super::tcp::{tcp_ready_but_gate, TcpState};
use super::{
    CompareConfig, CompareCounters, DivergenceEvent, DropReason, FlowKind, FlowState, FlowSummary,
    Output, PrimaryDrop, Reason, Release, SecondaryFree, Side, Uncomparable, MAX_FRAME_LEN,
};

/// Hot fields first (`repr(C)`), so a segment touches as few cache lines as possible.
#[repr(C)]
pub(super) struct Conn {
    pub(super) kind: FlowKind,
    pub(super) diverged: bool,
    /// First primary node not yet resolved (compared); NIL when all are.
    pub(super) cursor: u32,
    pub(super) pq: List,
    pub(super) sq: List,
    pub(super) p_pkts: u64,
    pub(super) p_bytes: u64,
    pub(super) s_pkts: u64,
    pub(super) s_bytes: u64,
    pub(super) tcp: TcpState,
    pub(super) last_event_ns: u64,
    pub(super) divergences: u32,
}

impl Conn {
    pub(super) fn new(kind: FlowKind) -> Conn {
        Conn {
            kind,
            pq: List::EMPTY,
            sq: List::EMPTY,
            cursor: NIL,
            diverged: false,
            last_event_ns: 0,
            divergences: 0,
            p_pkts: 0,
            p_bytes: 0,
            s_pkts: 0,
            s_bytes: 0,
            tcp: TcpState::default(),
        }
    }

    pub(super) fn queued(&self) -> bool {
        self.pq.len != 0 || self.sq.len != 0
    }

    /// The queue heads (primary, secondary) and the side an event about them names: the
    /// primary when it has one queued.
    fn heads(&self) -> (Side, u32, u32) {
        let (p, s) = (self.pq.head, self.sq.head);
        let side = if p != NIL {
            Side::Primary
        } else {
            Side::Secondary
        };
        (side, p, s)
    }

    /// Count a packet of `side` in this connection's totals.
    #[inline(always)]
    fn count(&mut self, side: Side, len: usize) {
        let (pkts, bytes) = match side {
            Side::Primary => (&mut self.p_pkts, &mut self.p_bytes),
            Side::Secondary => (&mut self.s_pkts, &mut self.s_bytes),
        };
        *pkts += 1;
        *bytes += len as u64;
    }
}

/// Flows remembered by [`Held`]; more set `all`.
const HELD_FLOWS: usize = 8;

/// Queued primaries of connections that left the table (evicted from a full table or aged
/// out) before they were compared: held for the next checkpoint, never released uncompared.
struct Held {
    /// In the order the connections left, each connection's packets in arrival order.
    list: List,
    /// Earliest arrival on the list.
    oldest: u64,
    /// The first held flow and why (for the repeated checkpoint request).
    key: FlowKey,
    reason: Reason,
    last_event_ns: u64,
    /// Hashes of the held flows: a new connection of one starts diverged (held too), so its
    /// packets never overtake the held ones. `all`: more flows than fit, every new connection
    /// starts diverged until the checkpoint.
    hashes: [u64; HELD_FLOWS],
    n: usize,
    all: bool,
}

impl Held {
    fn new() -> Held {
        Held {
            list: List::EMPTY,
            oldest: 0,
            key: FlowKey::of(&PacketInfo::default(), &[]),
            reason: Reason::TableOverflow,
            last_event_ns: 0,
            hashes: [0; HELD_FLOWS],
            n: 0,
            all: false,
        }
    }

    #[inline]
    fn contains(&self, hash: u64) -> bool {
        self.list.head != NIL && (self.all || self.hashes[..self.n].contains(&hash))
    }

    fn forget(&mut self) {
        self.n = 0;
        self.all = false;
    }
}

/// The compare engine of one shard. See [`crate::compare`].
pub struct Comparator<B: PacketBuf> {
    table: HashedTable<Conn>,
    shared: Shared<B>,
    next_scan: u64,
    /// The timeout scan in progress (it runs over several [`Comparator::tick`] calls).
    pass: Option<ScanPass>,
}

/// The engine's state that every per-connection step borrows ([`Shared::ctx`]): all but the
/// connection table, so a step can run while the table lends out one of its connections.
struct Shared<B> {
    cfg: CompareConfig,
    pool: Pool<B>,
    c: CompareCounters,
    /// Lower bound of the oldest queued primary's arrival (exact after each scan).
    since: u64,
    held: Held,
}

impl<B> Shared<B> {
    /// The step context for the connection of `key`, at `now`, with output `out`.
    #[inline(always)]
    fn ctx<'a, 'k, O>(
        &'a mut self,
        out: &'a mut O,
        key: &'k FlowKey,
        now: u64,
    ) -> Ctx<'a, 'k, B, O> {
        Ctx {
            pool: &mut self.pool,
            c: &mut self.c,
            cfg: &self.cfg,
            out,
            key,
            now,
            since: &mut self.since,
            held: &mut self.held,
        }
    }
}

/// Connections one [`Comparator::tick`] visits at most: a scan of a large table is spread
/// over `ceil(slots / SCAN_PER_TICK)` calls, so no housekeeping call walks a whole table.
pub const SCAN_PER_TICK: usize = 1024;

/// A timeout scan spread over several ticks.
#[derive(Clone, Copy)]
struct ScanPass {
    /// `now` when it began.
    start: u64,
    /// Oldest queued primary found so far.
    oldest: u64,
    /// `primary_in` when it began (primaries queued meanwhile may be older than `oldest`).
    primary_in: u64,
}

/// Everything a per-connection step needs besides the connection (split borrows).
pub(super) struct Ctx<'a, 'k, B, O> {
    pub(super) pool: &'a mut Pool<B>,
    pub(super) c: &'a mut CompareCounters,
    pub(super) cfg: &'a CompareConfig,
    pub(super) out: &'a mut O,
    /// Only read when an event is raised.
    pub(super) key: &'k FlowKey,
    pub(super) now: u64,
    /// [`Comparator::backlog`]'s oldest-primary estimate (see there).
    pub(super) since: &'a mut u64,
    held: &'a mut Held,
}

impl<B: PacketBuf, O: Output<B>> Ctx<'_, '_, B, O> {
    #[cold]
    fn uncomparable_kind(&mut self, side: Side, pkt: B) {
        match side {
            Side::Primary => self.release(pkt, Release::Uncomparable(Uncomparable::KindConflict)),
            Side::Secondary => self.free(pkt, SecondaryFree::Dropped(DropReason::Malformed)),
        }
    }

    /// One side's backlog gauges: queued packets and their bytes.
    #[inline(always)]
    fn gauges(&mut self, side: Side) -> (&mut u64, &mut u64) {
        let c = &mut *self.c;
        match side {
            Side::Primary => (&mut c.queued_primary, &mut c.queued_primary_bytes),
            Side::Secondary => (&mut c.queued_secondary, &mut c.queued_secondary_bytes),
        }
    }

    /// A packet of `side` was queued (backlog gauges; the first queued primary starts
    /// [`Comparator::backlog`]'s oldest-primary estimate).
    #[inline(always)]
    pub(super) fn count_queued(&mut self, side: Side, len: usize) {
        if side == Side::Primary && self.c.queued_primary == 0 {
            *self.since = self.now;
        }
        let (n, bytes) = self.gauges(side);
        *n += 1;
        *bytes += len as u64;
    }

    /// A packet of `side` left its queue (backlog gauges).
    #[inline(always)]
    pub(super) fn count_dequeued(&mut self, side: Side, len: usize) {
        let (n, bytes) = self.gauges(side);
        *n -= 1;
        *bytes -= len as u64;
    }

    #[inline]
    pub(super) fn release(&mut self, pkt: B, how: Release) {
        self.c.count_release(how);
        self.out.release(pkt, how);
    }

    #[cold]
    fn drop_primary(&mut self, pkt: B, why: PrimaryDrop) {
        self.c.count_drop(why);
        self.out.drop_primary(pkt, why);
    }

    #[inline(always)]
    pub(super) fn free(&mut self, pkt: B, how: SecondaryFree) {
        self.c.count_free(how);
        self.out.free_secondary(pkt, how);
    }

    #[inline]
    pub(super) fn release_node(&mut self, conn: &mut Conn, id: u32, how: Release) {
        if conn.cursor == id {
            conn.cursor = self.pool.next(id);
        }
        if let Some(p) = self.pool.remove(&mut conn.pq, id) {
            self.count_dequeued(Side::Primary, p.len());
            self.release(p, how);
        }
    }

    #[inline]
    pub(super) fn free_node(&mut self, conn: &mut Conn, id: u32, how: SecondaryFree) {
        if let Some(p) = self.pool.remove(&mut conn.sq, id) {
            self.count_dequeued(Side::Secondary, p.len());
            self.free(p, how);
        }
    }

    /// Release every queued primary in arrival order and free every secondary.
    fn empty_conn(&mut self, conn: &mut Conn, rel: Release, free: SecondaryFree) {
        while conn.pq.head != NIL {
            let h = conn.pq.head;
            self.release_node(conn, h, rel);
        }
        while conn.sq.head != NIL {
            let h = conn.sq.head;
            self.free_node(conn, h, free);
        }
        conn.cursor = NIL;
    }

    /// Shutdown: drop every queued primary (never released unverified), free every secondary.
    fn drop_conn(&mut self, conn: &mut Conn) {
        while let Some(p) = self.pool.pop_front(&mut conn.pq) {
            self.count_dequeued(Side::Primary, p.len());
            self.drop_primary(p, PrimaryDrop::Shutdown);
        }
        while conn.sq.head != NIL {
            let h = conn.sq.head;
            self.free_node(conn, h, SecondaryFree::Dropped(DropReason::Flush));
        }
        conn.cursor = NIL;
    }

    /// Release the held list in order (checkpoint, failover, or the opt-in timeout).
    fn release_held(&mut self, how: Release) {
        while let Some(p) = self.pool.pop_front(&mut self.held.list) {
            self.count_dequeued(Side::Primary, p.len());
            self.c.held_primary -= 1;
            self.release(p, how);
        }
        self.held.forget();
    }

    /// Shutdown: drop the held list.
    fn drop_held(&mut self) {
        while let Some(p) = self.pool.pop_front(&mut self.held.list) {
            self.count_dequeued(Side::Primary, p.len());
            self.c.held_primary -= 1;
            self.drop_primary(p, PrimaryDrop::Shutdown);
        }
        self.held.forget();
    }

    /// The event for a divergence of this connection now.
    #[cold]
    pub(super) fn event(
        &self,
        side: Side,
        reason: Reason,
        range: Option<(u32, u32)>,
    ) -> DivergenceEvent {
        DivergenceEvent {
            flow: *self.key,
            side,
            reason,
            seq_range: range,
            time_ns: self.now,
        }
    }

    /// Raise a divergence unless this connection already asked (then it is counted only).
    #[cold]
    pub(super) fn diverge(&mut self, conn: &mut Conn, ev: DivergenceEvent, p: u32, s: u32) {
        if conn.diverged {
            self.c.events_suppressed += 1;
            return;
        }
        conn.diverged = true;
        self.emit(conn, ev, p, s);
    }

    #[cold]
    fn emit(&mut self, conn: &mut Conn, ev: DivergenceEvent, p: u32, s: u32) {
        conn.last_event_ns = self.now;
        conn.divergences = conn.divergences.saturating_add(1);
        self.raise(ev, p, s);
    }

    /// Capture (primary `p`, secondary `s`; `NIL`: none), then one checkpoint request.
    #[cold]
    fn raise(&mut self, ev: DivergenceEvent, p: u32, s: u32) {
        let pp = if p == NIL { None } else { self.pool.pkt(p) };
        let sp = if s == NIL { None } else { self.pool.pkt(s) };
        self.out.capture(&ev, pp, sp);
        self.out.event(ev);
        self.c.events[ev.reason as usize] += 1;
    }

    /// Queue a primary; with no room the new packet is dropped ([`Self::overflow_primary`]),
    /// except a TCP segment below the queue's tail (a retransmission filling a hole): the
    /// queue's last segment, later in the stream, is dropped for it instead, as the later
    /// segments may wait for secondary bytes the secondary sends only once the client has the
    /// hole (the dropped one never reached the client either; it is retransmitted).
    #[inline]
    pub(super) fn enqueue_primary(&mut self, conn: &mut Conn, pkt: B, m: Meta) -> bool {
        let tail = conn.pq.tail;
        let below_tail =
            conn.kind == FlowKind::Tcp && tail != NIL && seq::lt(m.seq, self.pool.meta(tail).seq);
        let full = conn.pq.len as usize >= self.cfg.queue_size;
        if full && !below_tail {
            self.overflow_primary(conn, pkt, PrimaryDrop::QueueFull);
            return false;
        }
        if below_tail {
            if full {
                self.drop_tail(conn, PrimaryDrop::QueueFull);
            } else if self.pool.is_full() {
                self.drop_tail(conn, PrimaryDrop::PoolEmpty);
            }
            return self.insert_primary_by_seq(conn, pkt, m);
        }
        let len = pkt.len();
        match self.pool.alloc_back(&mut conn.pq, pkt, m) {
            Ok(id) => {
                self.count_queued(Side::Primary, len);
                if conn.cursor == NIL {
                    conn.cursor = id;
                }
                true
            }
            Err(pkt) => {
                self.overflow_primary(conn, pkt, PrimaryDrop::PoolEmpty);
                false
            }
        }
    }

    /// Queue a TCP primary that starts before the queue's tail (a retransmission filling a
    /// hole, or reordering) at its stream position, so it is compared and released before
    /// later segments that may be waiting for secondary bytes the secondary cannot send until
    /// the client has this one. Rare: walks back from the tail.
    #[cold]
    fn insert_primary_by_seq(&mut self, conn: &mut Conn, pkt: B, m: Meta) -> bool {
        let len = pkt.len();
        let id = match self.pool.alloc(pkt, m) {
            Ok(id) => id,
            // Unreachable (room was made above), but never release it unverified.
            Err(pkt) => {
                self.overflow_primary(conn, pkt, PrimaryDrop::PoolEmpty);
                return false;
            }
        };
        let mut pred = conn.pq.tail;
        let mut before_cursor = conn.cursor == NIL;
        while pred != NIL && seq::lt(m.seq, self.pool.meta(pred).seq) {
            before_cursor |= pred == conn.cursor;
            pred = self.pool.prev(pred);
        }
        self.pool.insert_after(&mut conn.pq, pred, id);
        self.count_queued(Side::Primary, len);
        if before_cursor {
            // Everything between it and the old cursor is resolved already.
            conn.cursor = id;
        }
        true
    }

    /// Drop the connection's last queued primary to make room (never sent, so retransmitted).
    #[cold]
    fn drop_tail(&mut self, conn: &mut Conn, why: PrimaryDrop) {
        let t = conn.pq.tail;
        if conn.cursor == t {
            // Everything before it is resolved.
            conn.cursor = NIL;
        }
        if let Some(p) = self.pool.remove(&mut conn.pq, t) {
            self.count_dequeued(Side::Primary, p.len());
            self.drop_primary(p, why);
        }
    }

    /// No room for a primary: drop the new one (output commit; what is queued keeps its order).
    /// TCP: the primary retransmits it, so it is not a divergence and asks for no checkpoint.
    /// Datagrams and other L3: nothing retransmits it and the secondary's copy would pair with
    /// the next primary (FIFO), so the connection diverges and a checkpoint resynchronises.
    #[cold]
    fn overflow_primary(&mut self, conn: &mut Conn, pkt: B, why: PrimaryDrop) {
        if conn.kind != FlowKind::Tcp {
            let reason = match why {
                PrimaryDrop::QueueFull => Reason::QueueOverflow,
                _ => Reason::PoolExhausted,
            };
            let (p, s) = (conn.pq.head, conn.sq.head);
            self.diverge(conn, self.event(Side::Primary, reason, None), p, s);
        }
        self.drop_primary(pkt, why);
    }

    #[inline]
    pub(super) fn secondary_fits(&self, conn: &Conn) -> bool {
        (conn.sq.len as usize) < self.cfg.queue_size && !self.pool.is_full()
    }

    /// Room check for a secondary datagram; with none it is dropped (counted) and the
    /// connection diverges: the FIFO pairing with the primaries is lost. (A TCP secondary
    /// without room is dropped with no event: the primary copy of its bytes cannot have been
    /// released, as it needs them, so the client does not acknowledge them and both VMs
    /// retransmit; a primary left waiting still times out.)
    pub(super) fn secondary_room(&mut self, conn: &mut Conn, pkt: B) -> Option<B> {
        if self.secondary_fits(conn) {
            return Some(pkt);
        }
        let reason = if conn.sq.len as usize >= self.cfg.queue_size {
            Reason::QueueOverflow
        } else {
            Reason::PoolExhausted
        };
        self.diverge(conn, self.event(Side::Secondary, reason, None), NIL, NIL);
        self.free(pkt, SecondaryFree::Dropped(DropReason::Overflow));
        None
    }

    // ---------------------------------------------------------------- timers

    /// Timeout check of one connection (scan period).
    fn scan(&mut self, conn: &mut Conn) {
        if !conn.queued() {
            return;
        }
        let timeout = self.cfg.timeout_ns;
        if conn.diverged {
            if conn.pq.head != NIL && self.cfg.release_after_ns > 0 {
                let age = self
                    .now
                    .saturating_sub(self.pool.meta(conn.pq.head).arrival);
                if age >= self.cfg.release_after_ns {
                    self.empty_conn(
                        conn,
                        Release::Timeout,
                        SecondaryFree::Dropped(DropReason::Timeout),
                    );
                    conn.diverged = false;
                    conn.tcp.sync_to_primary();
                    return;
                }
            }
            // Repeat the request in case it was lost.
            if self.now.saturating_sub(conn.last_event_ns) >= timeout {
                let (side, p, s) = conn.heads();
                let reason = match side {
                    Side::Primary => Reason::PrimaryTimeout,
                    Side::Secondary => Reason::SecondaryTimeout,
                };
                self.emit(conn, self.event(side, reason, None), p, s);
            }
            return;
        }
        if conn.pq.head != NIL {
            let h = conn.pq.head;
            let m = *self.pool.meta(h);
            if self.now.saturating_sub(m.arrival) >= timeout {
                let tcp = conn.kind == FlowKind::Tcp;
                let reason = if tcp && m.state & DATA_OK != 0 && tcp_ready_but_gate(conn, &m) {
                    Reason::AckAhead
                } else {
                    Reason::PrimaryTimeout
                };
                let range = tcp.then_some((m.seq, m.end));
                let ev = self.event(Side::Primary, reason, range);
                self.diverge(conn, ev, h, conn.sq.head);
                return;
            }
        }
        // Oldest secondary (the TCP queue is sorted by seq, so look at all of it).
        let mut s = conn.sq.head;
        let mut oldest = NIL;
        while s != NIL {
            if oldest == NIL || self.pool.meta(s).arrival < self.pool.meta(oldest).arrival {
                oldest = s;
            }
            s = self.pool.next(s);
        }
        if oldest != NIL {
            let m = *self.pool.meta(oldest);
            if self.now.saturating_sub(m.arrival) >= timeout {
                let range = (conn.kind == FlowKind::Tcp).then_some((m.seq, m.end));
                let ev = self.event(Side::Secondary, Reason::SecondaryTimeout, range);
                self.diverge(conn, ev, NIL, oldest);
            }
        }
    }

    /// A connection leaves the table (eviction or ageing). Its queued primaries were never
    /// matched: they move, in order, to the shard's held list until the next checkpoint (one
    /// request, unless the connection already asked). Its secondaries are dropped.
    fn retire(&mut self, conn: &mut Conn, hash: u64, reason: Reason, drop: DropReason) {
        if conn.queued() {
            let (side, p, s) = conn.heads();
            self.diverge(conn, self.event(side, reason, None), p, s);
        }
        if conn.pq.head != NIL {
            let n = u64::from(conn.pq.len);
            let oldest = self.pool.meta(conn.pq.head).arrival;
            let h = &mut *self.held;
            if h.list.head == NIL {
                h.oldest = oldest;
                h.key = *self.key;
                h.reason = reason;
                h.last_event_ns = conn.last_event_ns;
            } else {
                h.oldest = h.oldest.min(oldest);
                h.last_event_ns = h.last_event_ns.max(conn.last_event_ns);
            }
            if h.n < HELD_FLOWS {
                h.hashes[h.n] = hash;
                h.n += 1;
            } else {
                h.all = true;
            }
            self.pool.append(&mut h.list, &mut conn.pq);
            conn.cursor = NIL;
            self.c.held_primary += n;
            match reason {
                Reason::Expired => self.c.held_expired += n,
                _ => self.c.held_evicted += n,
            }
        }
        while conn.sq.head != NIL {
            let h = conn.sq.head;
            self.free_node(conn, h, SecondaryFree::Dropped(drop));
        }
    }

    /// Timers of the held list: the opt-in `release_after_ns` rule, else the checkpoint
    /// request repeated every `timeout_ns` (a lost request cannot hold them for ever).
    fn scan_held(&mut self) {
        if self.held.list.head == NIL {
            return;
        }
        let ra = self.cfg.release_after_ns;
        if ra > 0 && self.now.saturating_sub(self.held.oldest) >= ra {
            self.release_held(Release::Timeout);
            return;
        }
        if self.now.saturating_sub(self.held.last_event_ns) >= self.cfg.timeout_ns {
            self.held.last_event_ns = self.now;
            let ev = DivergenceEvent {
                flow: self.held.key,
                ..self.event(Side::Primary, self.held.reason, None)
            };
            self.raise(ev, self.held.list.head, NIL);
        }
    }
}

/// Start loading the frame's second cache line (bytes 64..128: most of a small segment's
/// payload) now, so the miss overlaps the flow lookup instead of stalling the payload compare
/// (a secondary's compare follows in this call; a primary's when its secondary arrives). A
/// plain load whose value is discarded: the safe stand-in for a prefetch. Measured: 1k flows
/// 87 → 80 ns per matched 64 B pair, 100k flows 268 → 166 ns (mbufs, perf/compare.rs).
#[inline(always)]
fn touch_second_line(d: &[u8]) {
    std::hint::black_box(d.get(64).copied());
}

impl<B: PacketBuf> Comparator<B> {
    /// Bytes a comparator built from `cfg` reserves (connection table and packet pool; the
    /// packets themselves live in the caller's buffers).
    pub fn memory_bytes(cfg: &CompareConfig) -> usize {
        HashedTable::<Conn>::bytes_for(cfg.table_capacity) + Pool::<B>::bytes_for(cfg.pool_size)
    }

    /// Bytes per connection of table capacity (the table's share of [`Self::memory_bytes`]).
    pub fn bytes_per_connection(cfg: &CompareConfig) -> usize {
        HashedTable::<Conn>::bytes_for(cfg.table_capacity) / cfg.table_capacity.max(1)
    }

    /// A comparator with every table and pool preallocated from `cfg`.
    pub fn new(cfg: CompareConfig) -> Self {
        let table = HashedTable::with_capacity(cfg.table_capacity);
        let pool = Pool::with_capacity(cfg.pool_size);
        Comparator {
            table,
            shared: Shared {
                cfg,
                pool,
                c: CompareCounters::default(),
                since: 0,
                held: Held::new(),
            },
            next_scan: 0,
            pass: None,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &CompareConfig {
        &self.shared.cfg
    }

    /// Replace the bypass rules (control command `bypass add|del`); applies to new packets.
    pub fn set_bypass(&mut self, rules: Vec<super::Bypass>) {
        self.shared.cfg.bypass = rules;
    }

    /// Connections tracked now.
    pub fn connections(&self) -> usize {
        self.table.len()
    }

    /// Counters (single writer: this shard).
    pub fn counters(&self) -> &CompareCounters {
        &self.shared.c
    }

    /// Start loading the connection state of each packet of a burst about to be
    /// [`process`](Self::process)ed: every home bucket first, then every entry they point at,
    /// so the burst's table misses overlap instead of stalling one packet at a time. A hint
    /// only (no verdict depends on it); frames the fast path does not take are skipped.
    pub fn prefetch_burst(&self, pkts: &[B]) {
        const MAX: usize = 64;
        let mut hashes = [0u64; MAX];
        let mut n = 0;
        for p in pkts.iter().take(MAX) {
            if let Some(h) = FlowKey::fast_hash64(p.data()) {
                self.table.prefetch_bucket(h);
                hashes[n] = h;
                n += 1;
            }
        }
        for &h in &hashes[..n] {
            self.table.prefetch_entry(h);
        }
    }

    /// Take one packet from `side`. Every packet leaves through `out` exactly once, now or
    /// later.
    pub fn process(&mut self, side: Side, pkt: B, now: u64, out: &mut impl Output<B>) {
        let d = pkt.data();
        let len = d.len();
        touch_second_line(d);
        if self.shared.cfg.bypass.is_empty() && len <= MAX_FRAME_LEN {
            let mut key = FlowKey::UNSET;
            let mut m = Meta::default();
            if let Some(hash) = fast_tcp4(d, now, &mut key, &mut m) {
                self.count_in(side, len);
                self.on_conn(side, pkt, FlowKind::Tcp, m, &key, hash, len, now, out);
                return;
            }
            if let Some(hash) = fast_udp4(d, now, &mut key, &mut m) {
                self.count_in(side, len);
                self.on_conn(side, pkt, FlowKind::Datagram, m, &key, hash, len, now, out);
                return;
            }
        }
        self.process_slow(side, pkt, now, out);
    }

    /// Every frame [`fast_tcp4`] does not take (or with bypass rules configured).
    #[inline(never)]
    fn process_slow(&mut self, side: Side, pkt: B, now: u64, out: &mut impl Output<B>) {
        let info = if pkt.len() > MAX_FRAME_LEN {
            Err(Uncomparable::Oversize)
        } else {
            parse(pkt.data()).map_err(Uncomparable::Malformed)
        };
        match info {
            Ok(info) => {
                let key = FlowKey::of(&info, pkt.data());
                let hash = key.hash64();
                self.process_parsed_hashed(side, pkt, &info, &key, hash, now, out);
            }
            Err(why) => {
                self.count_in(side, pkt.len());
                self.uncomparable(side, pkt, why, now, out);
            }
        }
    }

    #[inline]
    fn count_in(&mut self, side: Side, len: usize) {
        match side {
            Side::Primary => {
                self.shared.c.primary_in += 1;
                self.shared.c.primary_bytes += len as u64;
            }
            Side::Secondary => {
                self.shared.c.secondary_in += 1;
                self.shared.c.secondary_bytes += len as u64;
            }
        }
    }

    /// [`Self::process`] for a frame the caller already parsed and keyed (the redirector does
    /// both to pick the shard). `info` and `key` must come from `wire::parse(pkt.data())` and
    /// `FlowKey::of` on this frame; if they do not, verdicts may be wrong but nothing panics
    /// (every byte access is bounds-checked against the frame).
    #[inline]
    pub fn process_parsed(
        &mut self,
        side: Side,
        pkt: B,
        info: &PacketInfo,
        key: FlowKey,
        now: u64,
        out: &mut impl Output<B>,
    ) {
        let hash = key.hash64();
        self.process_parsed_hashed(side, pkt, info, &key, hash, now, out);
    }

    /// [`Self::process_parsed`] with the key's [`FlowKey::hash64`] too (the redirector
    /// computed it to pick the shard), so the table does not hash again. A `hash` that is not
    /// `key.hash64()` makes the connection lookups miss (verdicts may be wrong), never panics.
    #[allow(clippy::too_many_arguments)]
    pub fn process_parsed_hashed(
        &mut self,
        side: Side,
        pkt: B,
        info: &PacketInfo,
        key: &FlowKey,
        hash: u64,
        now: u64,
        out: &mut impl Output<B>,
    ) {
        let len = pkt.len();
        touch_second_line(pkt.data());
        self.count_in(side, len);
        if (self.shared.cfg.pass_vlan || self.shared.cfg.pass_ipv6) && self.passed(side, info) {
            self.bypass(side, pkt, out);
            return;
        }
        if !self.shared.cfg.bypass.is_empty()
            && self
                .shared
                .cfg
                .bypass
                .iter()
                .any(|r| crate::config::bypass::matches(r, info))
        {
            self.bypass(side, pkt, out);
            return;
        }
        let kind = flow_kind(info);
        let m = meta_of(info, kind, now);
        self.on_conn(side, pkt, kind, m, key, hash, len, now, out);
    }

    /// Find or create the connection, then the per-kind step.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn on_conn(
        &mut self,
        side: Side,
        pkt: B,
        kind: FlowKind,
        m: Meta,
        key: &FlowKey,
        hash: u64,
        len: usize,
        now: u64,
        out: &mut impl Output<B>,
    ) {
        let id = match self.table.find(hash, key) {
            Some(id) => id,
            None => self.create(hash, key, kind, now, out),
        };
        let Comparator { table, shared, .. } = self;
        let mut ctx = shared.ctx(out, key, now);
        let Some(conn) = table.touch(id, now) else {
            // Unreachable (a found or created entry is live), but never lose the packet.
            ctx.uncomparable_kind(side, pkt);
            return;
        };
        if conn.kind != kind {
            // Same key, different comparison (e.g. TCP with both ports 0 against fragments):
            // nothing sensible to compare against.
            ctx.uncomparable_kind(side, pkt);
            return;
        }
        conn.count(side, len);
        match (side, kind) {
            (Side::Primary, FlowKind::Tcp) => ctx.tcp_primary(conn, pkt, m),
            (Side::Primary, _) => ctx.dgram_primary(conn, pkt, m),
            (Side::Secondary, FlowKind::Tcp) => ctx.tcp_secondary(conn, pkt, m),
            (Side::Secondary, _) => ctx.dgram_secondary(conn, pkt, m),
        }
    }

    /// `pass_vlan` / `pass_ipv6` take this frame: count it (the caller bypasses it).
    #[cold]
    fn passed(&mut self, side: Side, info: &PacketInfo) -> bool {
        let vlan = self.shared.cfg.pass_vlan && info.vlan_tags > 0;
        let ipv6 = self.shared.cfg.pass_ipv6 && info.l3 == crate::wire::packet::L3Kind::Ipv6;
        if !(vlan || ipv6) {
            return false;
        }
        match side {
            Side::Primary if vlan => self.shared.c.rel_pass_vlan += 1,
            Side::Primary => self.shared.c.rel_pass_ipv6 += 1,
            Side::Secondary => self.shared.c.sec_passed += 1,
        }
        true
    }

    #[cold]
    fn bypass(&mut self, side: Side, pkt: B, out: &mut impl Output<B>) {
        match side {
            Side::Primary => {
                self.shared.c.rel_bypass += 1;
                out.release(pkt, Release::Bypass);
            }
            Side::Secondary => {
                self.shared.c.sec_bypass += 1;
                out.free_secondary(pkt, SecondaryFree::Bypass);
            }
        }
    }

    /// A new connection; when the table is full the evicted one releases its queue by rule.
    #[cold]
    #[inline(never)]
    fn create(
        &mut self,
        hash: u64,
        key: &FlowKey,
        kind: FlowKind,
        now: u64,
        out: &mut impl Output<B>,
    ) -> u32 {
        // A flow with held packets: its new packets wait behind them (order), for the checkpoint
        // already requested.
        let behind_held = self.shared.held.contains(hash);
        let ins = self.table.insert(hash, *key, now, || {
            let mut c = Conn::new(kind);
            if behind_held {
                c.diverged = true;
                c.last_event_ns = now;
            }
            c
        });
        self.shared.c.conns_created += 1;
        if let Some((ekey, mut econn)) = ins.evicted {
            self.shared.c.conns_evicted += 1;
            self.shared.ctx(out, &ekey, now).retire(
                &mut econn,
                ekey.hash64(),
                Reason::TableOverflow,
                DropReason::Evicted,
            );
        }
        ins.id
    }

    fn uncomparable(
        &mut self,
        side: Side,
        pkt: B,
        why: Uncomparable,
        now: u64,
        out: &mut impl Output<B>,
    ) {
        match side {
            Side::Primary => {
                // Best-effort L2 key: MAC pair + EtherType (zeros when even that is missing).
                let d = pkt.data();
                let info = PacketInfo {
                    ethertype: d
                        .get(12..14)
                        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]])),
                    ..PacketInfo::default()
                };
                let ev = DivergenceEvent {
                    flow: FlowKey::of(&info, d),
                    side,
                    reason: Reason::Malformed,
                    seq_range: None,
                    time_ns: now,
                };
                out.capture(&ev, Some(&pkt), None);
                out.event(ev);
                self.shared.c.events[Reason::Malformed as usize] += 1;
                self.shared.c.rel_uncomparable += 1;
                out.release(pkt, Release::Uncomparable(why));
            }
            Side::Secondary => {
                // The primary's version of it will time out if it mattered.
                self.shared.c.sec_drop_malformed += 1;
                out.free_secondary(pkt, SecondaryFree::Dropped(DropReason::Malformed));
            }
        }
    }

    /// Timeouts (a scan every `scan_period_ns`) and idle ageing. Cheap when nothing is due.
    /// Bounded: one call visits at most [`SCAN_PER_TICK`] connections; a scan of a larger
    /// table continues on the next calls (call it at every housekeeping) until it has visited
    /// every connection once, and the next scan is due `scan_period_ns` after this one began.
    pub fn tick(&mut self, now: u64, out: &mut impl Output<B>) {
        let pass = match self.pass {
            Some(p) => p,
            None if now < self.next_scan => return,
            None => {
                self.next_scan = now.saturating_add(self.shared.cfg.scan_period_ns.max(1));
                // The held list first, once per scan: its packets are older than any of the
                // same flow in the table.
                let hk = self.shared.held.key;
                self.shared.ctx(out, &hk, now).scan_held();
                ScanPass {
                    start: now,
                    oldest: u64::MAX,
                    primary_in: self.shared.c.primary_in,
                }
            }
        };
        let Comparator { table, shared, .. } = self;
        let idle = shared.cfg.idle_timeout_ns;
        // The scan visits every connection: it refreshes the backlog's oldest arrival.
        let mut oldest = pass.oldest;
        // One visit: timeouts of the connection, then ageing if it is idle.
        let (_, done) = table.sweep_mut(SCAN_PER_TICK, |k, conn, last_used| {
            let mut ctx = shared.ctx(out, k, now);
            ctx.scan(conn);
            if conn.pq.head != NIL {
                oldest = oldest.min(ctx.pool.meta(conn.pq.head).arrival);
            }
            if now.saturating_sub(last_used) < idle {
                return false;
            }
            ctx.c.conns_expired += 1;
            ctx.retire(conn, k.hash64(), Reason::Expired, DropReason::Expired);
            true
        });
        if !done {
            self.pass = Some(ScanPass { oldest, ..pass });
            return;
        }
        self.pass = None;
        // A primary queued after its connection was visited arrived after the scan began.
        if self.shared.c.primary_in != pass.primary_in && self.shared.c.queued_primary != 0 {
            oldest = oldest.min(pass.start);
        }
        if self.shared.held.list.head != NIL {
            oldest = oldest.min(self.shared.held.oldest);
        }
        if oldest != u64::MAX {
            self.shared.since = oldest;
        }
    }

    /// What waits in this shard's queues now, O(1) (gauges kept with each enqueue/dequeue).
    ///
    /// `oldest_primary_ns` is a lower bound of the oldest queued primary's arrival (its age is
    /// never under-reported): exact after every timeout scan ([`Self::tick`], each
    /// `scan_period_ns`) that fits in one tick (a scan spread over several ticks takes the
    /// scan's start when primaries arrived meanwhile), else the later of the last scan's value and the time the shard's
    /// primary backlog last became non-empty; it does not move forward when the oldest primary
    /// leaves between scans. `None` when no primary is queued.
    pub fn backlog(&self) -> super::Backlog {
        super::Backlog {
            primary_packets: self.shared.c.queued_primary,
            primary_bytes: self.shared.c.queued_primary_bytes,
            secondary_packets: self.shared.c.queued_secondary,
            secondary_bytes: self.shared.c.queued_secondary_bytes,
            oldest_primary_ns: (self.shared.c.queued_primary != 0).then_some(self.shared.since),
        }
    }

    /// The held list (evicted / aged-out connections' primaries) in order, released by `how`
    /// or dropped at shutdown (`how` = `None`).
    fn empty_held(&mut self, now: u64, how: Option<Release>, out: &mut impl Output<B>) {
        if self.shared.held.list.head == NIL {
            self.shared.held.forget();
            return;
        }
        let hk = self.shared.held.key;
        let mut ctx = self.shared.ctx(out, &hk, now);
        match how {
            Some(how) => ctx.release_held(how),
            None => ctx.drop_held(),
        }
    }

    /// The COLO frame finished a checkpoint: release every queued primary in arrival order
    /// (the held list first: its packets are older than any of the same flow in the table),
    /// free every queued secondary, and restart comparison from the synchronised state.
    pub fn checkpoint_done(&mut self, now: u64, out: &mut impl Output<B>) {
        self.shared.c.checkpoints += 1;
        self.empty_held(now, Some(Release::Checkpoint), out);
        let Comparator { table, shared, .. } = self;
        table.for_each_mut(|k, conn| {
            shared.ctx(out, k, now).empty_conn(
                conn,
                Release::Checkpoint,
                SecondaryFree::Checkpoint,
            );
            conn.diverged = false;
            conn.tcp.sync_to_primary();
        });
    }

    /// Failover (the secondary is gone, nothing can be compared any more): release every
    /// queued primary (the held list first, then per connection in arrival order), free every
    /// secondary, and forget all connections.
    pub fn flush_all(&mut self, out: &mut impl Output<B>) {
        self.empty_all(Some(Release::Flush), out);
    }

    /// Shutdown: drop every queued primary ([`PrimaryDrop::Shutdown`]; output commit: nothing
    /// unverified reaches the client, the primary's TCP retransmits whatever still matters),
    /// free every secondary, and forget all connections.
    pub fn drop_all(&mut self, out: &mut impl Output<B>) {
        self.empty_all(None, out);
    }

    /// Empty the held list and every connection: primaries released as `how`, or dropped
    /// (shutdown) when `None`; secondaries freed; connections forgotten.
    fn empty_all(&mut self, how: Option<Release>, out: &mut impl Output<B>) {
        self.empty_held(0, how, out);
        let Comparator { table, shared, .. } = self;
        table.drain(|k, conn| {
            let mut ctx = shared.ctx(out, k, 0);
            match how {
                Some(rel) => ctx.empty_conn(conn, rel, SecondaryFree::Dropped(DropReason::Flush)),
                None => ctx.drop_conn(conn),
            }
        });
    }

    /// The `n` connections with the most traffic (bytes both sides), busiest first: one pass
    /// over the table into a bounded heap ([`super::TopN`]), O(n) memory, no sort of every
    /// connection.
    pub fn top_flows(&self, n: usize) -> Vec<(FlowKey, FlowSummary)> {
        let mut top = super::TopN::new(n);
        self.flows(|k, f| top.offer(f.traffic(), (*k, f)));
        top.into_sorted()
    }

    /// Visit every connection (in table order) with its summary.
    pub fn flows(&self, mut f: impl FnMut(&FlowKey, FlowSummary)) {
        self.table.for_each(|k, conn, last_used| {
            f(
                k,
                FlowSummary {
                    kind: conn.kind,
                    state: if conn.diverged {
                        FlowState::Diverged
                    } else {
                        FlowState::Comparing
                    },
                    primary_packets: conn.p_pkts,
                    primary_bytes: conn.p_bytes,
                    secondary_packets: conn.s_pkts,
                    secondary_bytes: conn.s_bytes,
                    queued_primary: conn.pq.len,
                    queued_secondary: conn.sq.len,
                    divergences: conn.divergences,
                    last_seen_ns: last_used,
                },
            )
        });
    }
}
