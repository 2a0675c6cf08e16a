//! The per-shard comparator: connection table, queues, TCP stream and datagram compare.
//! See the module docs of [`crate::compare`] for the guarantees.

use crate::buf::PacketBuf;
use crate::flow::{FlowKey, HashedTable};
use crate::wire::packet::{tcp_flags, L3Kind, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP};
use crate::wire::{parse, seq, PacketInfo};

use super::pool::{List, Meta, Pool, DATA_OK, NIL, RETRANS};
use super::{
    CompareConfig, CompareCounters, DivergenceEvent, DropReason, FlowKind, FlowState, FlowSummary,
    Output, PrimaryDrop, Reason, Release, SecondaryFree, Side, Uncomparable, MAX_FRAME_LEN,
};

const K_TCP: u8 = 0;
const K_DGRAM: u8 = 1;
const K_L3: u8 = 2;

/// Out-of-order matched ranges remembered beyond the contiguous frontier.
const AHEAD: usize = 8;

/// TCP compare state of one connection. "Frontier": every primary byte before it was compared
/// equal (or synchronised by a checkpoint); secondary bytes before it are no longer needed.
/// Field order is cache order (`repr(C)`): what every segment reads first, the rarely used
/// out-of-order ranges last.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct TcpState {
    frontier: u32,
    // What the secondary has produced.
    s_ack: u32,
    // What the primary has produced (copied to the secondary's side by a checkpoint).
    p_end: u32,
    p_ack: u32,
    // The highest ack released to the client (`c_ack_valid`): what the ack gate's clamp
    // must move beyond.
    c_ack: u32,
    s_win: u16,
    frontier_set: bool,
    s_ack_valid: bool,
    p_end_valid: bool,
    p_ack_valid: bool,
    c_ack_valid: bool,
    // The secondary's latest receive window (raw header value) and `s_win_valid`.
    s_win_valid: bool,
    // The secondary repeated its ack while behind the primary's: it is missing client data.
    s_behind: bool,
    s_syn: bool,
    s_synack: bool,
    s_rst: bool,
    p_syn: bool,
    p_synack: bool,
    p_rst: bool,
    n_ahead: u8,
    s_fin: Option<u32>,
    p_fin: Option<u32>,
    ahead: [(u32, u32); AHEAD],
}

impl TcpState {
    /// Both VMs closed the connection (FIN each way from the guest, or a reset from each):
    /// a SYN now opens a new connection on the same 4-tuple (a client reusing its port).
    fn finished(&self) -> bool {
        (self.p_fin.is_some() && self.s_fin.is_some()) || (self.p_rst && self.s_rst)
    }

    #[inline]
    fn record_match(&mut self, start: u32, end: u32) {
        if !self.frontier_set {
            self.frontier = start;
            self.frontier_set = true;
        }
        if seq::le(start, self.frontier) {
            self.frontier = seq::max(self.frontier, end);
            if self.n_ahead != 0 {
                self.merge_ahead();
            }
        } else if self.extend_ahead(start, end) {
            // Contiguous matches beyond one hole stay one range.
        } else if (self.n_ahead as usize) < AHEAD {
            self.ahead[self.n_ahead as usize] = (start, end);
            self.n_ahead += 1;
        } else {
            // Full: keep the lowest ranges, they join the frontier first.
            let (mut hi, mut hi_i) = (start, AHEAD);
            for (i, a) in self.ahead.iter().enumerate() {
                if seq::gt(a.0, hi) {
                    hi = a.0;
                    hi_i = i;
                }
            }
            if hi_i < AHEAD {
                self.ahead[hi_i] = (start, end);
            }
        }
    }

    /// Grow the ahead range that `[start, end)` overlaps or touches, joining any other range
    /// the grown one now reaches. False when it touches none.
    #[inline]
    fn extend_ahead(&mut self, start: u32, end: u32) -> bool {
        let n = self.n_ahead as usize;
        let Some(i) = self.ahead[..n]
            .iter()
            .position(|&(s, e)| seq::le(start, e) && seq::le(s, end))
        else {
            return false;
        };
        let (s, e) = self.ahead[i];
        self.ahead[i] = (seq::min(s, start), seq::max(e, end));
        self.join_ahead(i);
        true
    }

    /// Join into range `i` every other ahead range it overlaps or touches.
    #[cold]
    fn join_ahead(&mut self, mut i: usize) {
        let mut j = 0;
        while j < self.n_ahead as usize {
            let (s, e) = self.ahead[i];
            let (js, je) = self.ahead[j];
            if j != i && seq::le(js, e) && seq::le(s, je) {
                self.ahead[i] = (seq::min(s, js), seq::max(e, je));
                self.n_ahead -= 1;
                let last = self.n_ahead as usize;
                self.ahead[j] = self.ahead[last];
                if i == last {
                    i = j;
                }
                j = 0;
            } else {
                j += 1;
            }
        }
    }

    /// The end of the matched range beyond the frontier that holds byte `pos`.
    #[inline]
    fn ahead_end(&self, pos: u32) -> Option<u32> {
        self.ahead_range(pos).map(|r| r.1)
    }

    /// The matched range beyond the frontier that holds byte `pos`.
    fn ahead_range(&self, pos: u32) -> Option<(u32, u32)> {
        self.ahead[..self.n_ahead as usize]
            .iter()
            .copied()
            .find(|&(s, e)| seq::le(s, pos) && seq::lt(pos, e))
    }

    /// `[start, end)` lies inside one matched range beyond the frontier.
    #[inline]
    fn in_ahead(&self, start: u32, end: u32) -> bool {
        self.ahead[..self.n_ahead as usize]
            .iter()
            .any(|&(s, e)| seq::le(s, start) && seq::le(end, e))
    }

    #[cold]
    fn merge_ahead(&mut self) {
        let mut changed = true;
        while changed {
            changed = false;
            let mut i = 0;
            while i < self.n_ahead as usize {
                let (s, e) = self.ahead[i];
                if seq::le(s, self.frontier) {
                    self.frontier = seq::max(self.frontier, e);
                    self.n_ahead -= 1;
                    self.ahead[i] = self.ahead[self.n_ahead as usize];
                    changed = true;
                } else {
                    i += 1;
                }
            }
        }
    }

    /// After a checkpoint the secondary is a copy of the primary: it has produced what the
    /// primary produced, and every primary byte so far counts as compared.
    fn sync_to_primary(&mut self) {
        // The SVM now has the PVM's windows.
        self.s_win_valid = false;
        if self.p_end_valid {
            self.frontier = if self.frontier_set {
                seq::max(self.frontier, self.p_end)
            } else {
                self.p_end
            };
            self.frontier_set = true;
        }
        self.n_ahead = 0;
        if self.p_ack_valid {
            self.s_ack = if self.s_ack_valid {
                seq::max(self.s_ack, self.p_ack)
            } else {
                self.p_ack
            };
            self.s_ack_valid = true;
        }
        self.s_syn |= self.p_syn;
        self.s_synack |= self.p_synack;
        self.s_rst = self.p_rst;
        self.s_fin = self.p_fin;
    }
}

/// Hot fields first (`repr(C)`), so a segment touches as few cache lines as possible.
#[repr(C)]
struct Conn {
    kind: FlowKind,
    diverged: bool,
    /// First primary node not yet resolved (compared); NIL when all are.
    cursor: u32,
    pq: List,
    sq: List,
    p_pkts: u64,
    p_bytes: u64,
    s_pkts: u64,
    s_bytes: u64,
    tcp: TcpState,
    last_event_ns: u64,
    divergences: u32,
}

impl Conn {
    fn new(kind: FlowKind) -> Conn {
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

    fn queued(&self) -> bool {
        self.pq.len != 0 || self.sq.len != 0
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
    cfg: CompareConfig,
    table: HashedTable<Conn>,
    pool: Pool<B>,
    c: CompareCounters,
    next_scan: u64,
    /// Lower bound of the oldest queued primary's arrival (exact after each scan).
    since: u64,
    held: Held,
    /// The timeout scan in progress (it runs over several [`Comparator::tick`] calls).
    pass: Option<ScanPass>,
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
struct Ctx<'a, 'k, B, O> {
    pool: &'a mut Pool<B>,
    c: &'a mut CompareCounters,
    cfg: &'a CompareConfig,
    out: &'a mut O,
    /// Only read when an event is raised.
    key: &'k FlowKey,
    now: u64,
    /// [`Comparator::backlog`]'s oldest-primary estimate (see there).
    since: &'a mut u64,
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

    /// A primary was queued (backlog gauges).
    #[inline(always)]
    fn pq_added(&mut self, len: usize) {
        if self.c.queued_primary == 0 {
            *self.since = self.now;
        }
        self.c.queued_primary += 1;
        self.c.queued_primary_bytes += len as u64;
    }

    /// A primary left its queue (backlog gauges).
    #[inline(always)]
    fn pq_removed(&mut self, len: usize) {
        self.c.queued_primary -= 1;
        self.c.queued_primary_bytes -= len as u64;
    }

    #[inline(always)]
    fn sq_added(&mut self, len: usize) {
        self.c.queued_secondary += 1;
        self.c.queued_secondary_bytes += len as u64;
    }

    #[inline(always)]
    fn sq_removed(&mut self, len: usize) {
        self.c.queued_secondary -= 1;
        self.c.queued_secondary_bytes -= len as u64;
    }

    #[inline]
    fn release(&mut self, pkt: B, how: Release) {
        self.c.count_release(how);
        self.out.release(pkt, how);
    }

    #[cold]
    fn drop_primary(&mut self, pkt: B, why: PrimaryDrop) {
        self.c.count_drop(why);
        self.out.drop_primary(pkt, why);
    }

    #[inline(always)]
    fn free(&mut self, pkt: B, how: SecondaryFree) {
        self.c.count_free(how);
        self.out.free_secondary(pkt, how);
    }

    /// Release a compared TCP primary: note its ack, and never let it offer the client more
    /// window than the secondary offers (the client would send what only the PVM can take).
    #[inline]
    fn release_tcp(&mut self, conn: &mut Conn, mut pkt: B, m: &Meta, how: Release) {
        note_released_ack(&mut conn.tcp, m);
        let t = &conn.tcp;
        if t.s_win_valid
            && m.flags & (tcp_flags::SYN | tcp_flags::RST) == 0
            && clamp_window(&mut pkt, m.cmp_off as usize, t.s_win)
        {
            self.c.window_clamped += 1;
        }
        self.release(pkt, how);
    }

    #[inline]
    fn release_node(&mut self, conn: &mut Conn, id: u32, how: Release) {
        if conn.cursor == id {
            conn.cursor = self.pool.next(id);
        }
        if let Some(p) = self.pool.remove(&mut conn.pq, id) {
            self.pq_removed(p.len());
            self.release(p, how);
        }
    }

    #[inline]
    fn free_node(&mut self, conn: &mut Conn, id: u32, how: SecondaryFree) {
        if let Some(p) = self.pool.remove(&mut conn.sq, id) {
            self.sq_removed(p.len());
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
            self.pq_removed(p.len());
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
            self.pq_removed(p.len());
            self.c.held_primary -= 1;
            self.release(p, how);
        }
        self.held.forget();
    }

    /// Shutdown: drop the held list.
    fn drop_held(&mut self) {
        while let Some(p) = self.pool.pop_front(&mut self.held.list) {
            self.pq_removed(p.len());
            self.c.held_primary -= 1;
            self.drop_primary(p, PrimaryDrop::Shutdown);
        }
        self.held.forget();
    }

    /// Raise a divergence unless this connection already asked (then it is counted only).
    #[cold]
    fn diverge(
        &mut self,
        conn: &mut Conn,
        side: Side,
        reason: Reason,
        range: Option<(u32, u32)>,
        p: u32,
        s: u32,
    ) {
        if conn.diverged {
            self.c.events_suppressed += 1;
            return;
        }
        conn.diverged = true;
        self.emit(conn, side, reason, range, p, s);
    }

    #[cold]
    fn emit(
        &mut self,
        conn: &mut Conn,
        side: Side,
        reason: Reason,
        range: Option<(u32, u32)>,
        p: u32,
        s: u32,
    ) {
        conn.last_event_ns = self.now;
        conn.divergences = conn.divergences.saturating_add(1);
        self.raise(*self.key, side, reason, range, p, s);
    }

    /// Capture, then one checkpoint request.
    #[cold]
    fn raise(
        &mut self,
        flow: FlowKey,
        side: Side,
        reason: Reason,
        range: Option<(u32, u32)>,
        p: u32,
        s: u32,
    ) {
        let ev = DivergenceEvent {
            flow,
            side,
            reason,
            seq_range: range,
            time_ns: self.now,
        };
        let pp = if p == NIL { None } else { self.pool.pkt(p) };
        let sp = if s == NIL { None } else { self.pool.pkt(s) };
        self.out.capture(&ev, pp, sp);
        self.out.event(ev);
        self.c.events[reason as usize] += 1;
    }

    /// Queue a primary; with no room the new packet is dropped ([`Self::overflow_primary`]),
    /// except a TCP segment below the queue's tail (a retransmission filling a hole): the
    /// queue's last segment, later in the stream, is dropped for it instead, as the later
    /// segments may wait for secondary bytes the secondary sends only once the client has the
    /// hole (the dropped one never reached the client either; it is retransmitted).
    #[inline]
    fn enqueue_primary(&mut self, conn: &mut Conn, pkt: B, m: Meta) -> bool {
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
                self.pq_added(len);
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
        self.pq_added(len);
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
            self.pq_removed(p.len());
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
            self.diverge(conn, Side::Primary, reason, None, p, s);
        }
        self.drop_primary(pkt, why);
    }

    #[inline]
    fn secondary_fits(&self, conn: &Conn) -> bool {
        (conn.sq.len as usize) < self.cfg.queue_size && !self.pool.is_full()
    }

    /// Room check for a secondary datagram; with none it is dropped (counted) and the
    /// connection diverges: the FIFO pairing with the primaries is lost. (A TCP secondary
    /// without room is dropped with no event: the primary copy of its bytes cannot have been
    /// released, as it needs them, so the client does not acknowledge them and both VMs
    /// retransmit; a primary left waiting still times out.)
    fn secondary_room(&mut self, conn: &mut Conn, pkt: B) -> Option<B> {
        if self.secondary_fits(conn) {
            return Some(pkt);
        }
        let reason = if conn.sq.len as usize >= self.cfg.queue_size {
            Reason::QueueOverflow
        } else {
            Reason::PoolExhausted
        };
        self.diverge(conn, Side::Secondary, reason, None, NIL, NIL);
        self.free(pkt, SecondaryFree::Dropped(DropReason::Overflow));
        None
    }

    // ---------------------------------------------------------------- TCP

    #[inline(always)]
    fn tcp_primary(&mut self, conn: &mut Conn, pkt: B, m: Meta) {
        restart_if_reused(conn, &m);
        let t = &mut conn.tcp;
        let f = m.flags;
        if f & tcp_flags::SYN != 0 {
            if f & tcp_flags::ACK != 0 {
                t.p_synack = true;
            } else {
                t.p_syn = true;
            }
            if !t.frontier_set {
                // Data starts right after the SYN.
                t.frontier = m.seq;
                t.frontier_set = true;
            }
        }
        if f & tcp_flags::RST != 0 {
            t.p_rst = true;
        }
        if f & tcp_flags::FIN != 0 {
            t.p_fin = Some(m.end);
        }
        if m.end != m.seq {
            t.p_end = if t.p_end_valid {
                seq::max(t.p_end, m.end)
            } else {
                m.end
            };
            t.p_end_valid = true;
        }
        if f & tcp_flags::ACK != 0 && f & tcp_flags::RST == 0 {
            t.p_ack = if t.p_ack_valid {
                seq::max(t.p_ack, m.ack)
            } else {
                m.ack
            };
            t.p_ack_valid = true;
        }
        let Some(pkt) = self.primary_first(conn, pkt, m) else {
            return;
        };
        if self.enqueue_primary(conn, pkt, m) {
            self.pump_tcp(conn);
        }
    }

    /// A primary segment on a connection with no primary queued: its fate is known at once
    /// in the common cases, with the same outcome as enqueue + [`Self::pump_tcp`] but no queue
    /// round trip. Gives the packet back when the general path must decide.
    #[inline(always)]
    fn primary_first(&mut self, conn: &mut Conn, pkt: B, m: Meta) -> Option<B> {
        // An empty queue has no unresolved node (the cursor is NIL) and nothing to release.
        if conn.pq.head != NIL || conn.diverged || self.cfg.queue_size == 0 {
            return Some(pkt);
        }
        match precheck(&conn.tcp, &m) {
            Pre::Compare(_) if conn.sq.head == NIL => {
                // Its bytes have not come from the secondary yet: it waits, unresolved.
                // A full pool is the general path's overflow rule.
                let len = pkt.len();
                let id = match self.pool.alloc_back(&mut conn.pq, pkt, m) {
                    Ok(id) => id,
                    Err(pkt) => return Some(pkt),
                };
                self.pq_added(len);
                conn.cursor = id;
                None
            }
            Pre::Done(bits) => {
                let m = Meta {
                    state: m.state | bits,
                    ..m
                };
                if !tcp_ready(conn, &m) {
                    return Some(pkt);
                }
                let how = if bits & RETRANS != 0 {
                    Release::Retransmit
                } else {
                    Release::Matched
                };
                self.release_tcp(conn, pkt, &m, how);
                None
            }
            _ => Some(pkt),
        }
    }

    #[inline(always)]
    fn tcp_secondary(&mut self, conn: &mut Conn, pkt: B, m: Meta) {
        restart_if_reused(conn, &m);
        let t = &mut conn.tcp;
        let f = m.flags;
        if f & tcp_flags::ACK != 0 && f & tcp_flags::RST == 0 && f & tcp_flags::SYN == 0 {
            if !t.s_ack_valid || !seq::lt(m.ack, t.s_ack) {
                if let Some(w) = tcp_window(pkt.data(), m.cmp_off as usize) {
                    t.s_win = w;
                    t.s_win_valid = true;
                }
            }
        }
        if f & tcp_flags::ACK != 0 && f & tcp_flags::RST == 0 {
            let behind = t.p_ack_valid && seq::lt(m.ack, t.p_ack);
            if t.s_ack_valid && m.ack == t.s_ack && m.seq == m.end && behind {
                // A duplicate ACK: the SVM lost a client segment the PVM has.
                t.s_behind = true;
            }
            t.s_ack = if t.s_ack_valid {
                seq::max(t.s_ack, m.ack)
            } else {
                m.ack
            };
            t.s_ack_valid = true;
            if t.p_ack_valid && !seq::lt(t.s_ack, t.p_ack) {
                t.s_behind = false;
            }
        }
        if f & tcp_flags::SYN != 0 {
            if f & tcp_flags::ACK != 0 {
                t.s_synack = true;
            } else {
                t.s_syn = true;
            }
        }
        if f & tcp_flags::RST != 0 {
            t.s_rst = true;
        }
        if f & tcp_flags::FIN != 0 {
            t.s_fin = Some(m.end);
        }
        let behind = (t.frontier_set && seq::le(m.end, t.frontier))
            || (t.n_ahead != 0 && t.in_ahead(m.seq, m.end));
        if conn.diverged {
            self.free(pkt, SecondaryFree::Dropped(DropReason::Diverged));
            return;
        }
        let Some(pkt) = self.secondary_in_order(conn, pkt, &m) else {
            return;
        };
        if m.end == m.seq {
            self.free(pkt, SecondaryFree::Control);
        } else if behind {
            self.free(pkt, SecondaryFree::Duplicate);
        } else if conn.sq.head == NIL && conn.cursor != NIL && self.resolve_direct(conn, &pkt, &m) {
            self.free(pkt, SecondaryFree::Matched);
        } else if !self.secondary_fits(conn) {
            // No room: first compare it with the waiting primaries (it may free their queue,
            // e.g. primaries beyond a hole while the secondary queue holds the hole's bytes:
            // neither side could move until a timeout), then drop it.
            let used = conn.cursor != NIL && self.resolve_direct(conn, &pkt, &m);
            let how = if used {
                SecondaryFree::Matched
            } else {
                SecondaryFree::Dropped(DropReason::Overflow)
            };
            self.free(pkt, how);
        } else {
            self.insert_secondary(conn, pkt, m);
        }
        self.pump_tcp(conn);
    }

    /// Insert a secondary data segment by sequence number. Keeps the invariant that queued
    /// segments are sorted by start with strictly increasing ends (no segment inside another),
    /// so the front is always the first to fall behind the frontier.
    fn insert_secondary(&mut self, conn: &mut Conn, pkt: B, m: Meta) {
        // Walk back from the tail over the segments starting at or after the new one.
        let mut pred = conn.sq.tail;
        while pred != NIL && seq::ge(self.pool.meta(pred).seq, m.seq) {
            pred = self.pool.prev(pred);
        }
        let mut pos = m.seq;
        if pred != NIL && seq::gt(self.pool.meta(pred).end, pos) {
            pos = self.pool.meta(pred).end;
        }
        let first_succ = if pred == NIL {
            conn.sq.head
        } else {
            self.pool.next(pred)
        };
        let mut s = first_succ;
        while !seq::ge(pos, m.end) && s != NIL && seq::le(self.pool.meta(s).seq, pos) {
            pos = seq::max(pos, self.pool.meta(s).end);
            s = self.pool.next(s);
        }
        if seq::ge(pos, m.end) {
            self.free(pkt, SecondaryFree::Duplicate);
            return;
        }
        // Segments wholly inside the new one are redundant.
        let mut s = first_succ;
        while s != NIL && seq::le(self.pool.meta(s).end, m.end) {
            let next = self.pool.next(s);
            self.free_node(conn, s, SecondaryFree::Duplicate);
            s = next;
        }
        let len = pkt.len();
        match self.pool.alloc(pkt, m) {
            Ok(id) => {
                self.pool.insert_after(&mut conn.sq, pred, id);
                self.sq_added(len);
            }
            Err(pkt) => self.free(pkt, SecondaryFree::Dropped(DropReason::Overflow)),
        }
    }

    /// Compare what can be compared, then release the ready prefix of the primary queue.
    #[inline]
    fn pump_tcp(&mut self, conn: &mut Conn) {
        if conn.diverged {
            return;
        }
        while conn.cursor != NIL {
            let id = conn.cursor;
            match self.resolve_tcp(conn, id) {
                Resolve::Done => conn.cursor = self.pool.next(id),
                Resolve::Wait => break,
                Resolve::Diverge(reason, s) => {
                    let m = *self.pool.meta(id);
                    self.diverge(conn, Side::Primary, reason, Some((m.seq, m.end)), id, s);
                    return;
                }
            }
        }
        while conn.pq.head != NIL {
            let h = conn.pq.head;
            let mut m = *self.pool.meta(h);
            let clamp = if tcp_ready(conn, &m) {
                None
            } else if let Some(ack) = ack_clamp(conn, &m) {
                Some(ack)
            } else {
                break;
            };
            let how = if m.state & RETRANS != 0 {
                Release::Retransmit
            } else {
                Release::Matched
            };
            if conn.cursor == h {
                conn.cursor = self.pool.next(h);
            }
            if let Some(mut p) = self.pool.pop_front(&mut conn.pq) {
                self.pq_removed(p.len());
                if let Some(ack) = clamp {
                    set_ack(&mut p, m.ack, ack);
                    m.ack = ack;
                    self.c.ack_clamped += 1;
                }
                self.release_tcp(conn, p, &m, how);
            }
        }
    }

    /// The in-order case: the secondary segment carries exactly the bytes of the only queued,
    /// unresolved primary, which starts at the frontier (no FIN anywhere, nothing out of
    /// order). Same outcome as `resolve_direct` + [`Self::pump_tcp`] without their loops.
    /// Gives the packet back when the general path must decide.
    #[inline(always)]
    fn secondary_in_order(&mut self, conn: &mut Conn, pkt: B, m: &Meta) -> Option<B> {
        let id = conn.cursor;
        let t = &conn.tcp;
        if id == NIL
            || id != conn.pq.head
            || conn.sq.head != NIL
            || m.end == m.seq
            || !t.frontier_set
            || t.frontier != m.seq
            || t.n_ahead != 0
            || t.s_fin.is_some()
        {
            return Some(pkt);
        }
        let pm = self.pool.meta(id);
        if pm.seq != m.seq
            || pm.end != m.end
            || pm.flags & tcp_flags::FIN != 0
            || self.pool.next(id) != NIL
        {
            return Some(pkt);
        }
        let n = m.end.wrapping_sub(m.seq) as usize;
        let (pa, sa) = (pm.cmp_off as usize, m.cmp_off as usize);
        match (
            self.pool.data(id).get(pa..pa + n),
            pkt.data().get(sa..sa + n),
        ) {
            (Some(a), Some(b)) if a == b => {}
            // A mismatch is reported by the queue path, with both packets.
            _ => return Some(pkt),
        }
        // As `record_match(seq, end)` at the frontier with nothing ahead.
        conn.tcp.frontier = m.end;
        conn.cursor = NIL;
        self.pool.meta_mut(id).state |= DATA_OK;
        self.free(pkt, SecondaryFree::Matched);
        if tcp_ready(conn, self.pool.meta(id)) {
            let pm = *self.pool.meta(id);
            if let Some(p) = self.pool.pop_front(&mut conn.pq) {
                self.pq_removed(p.len());
                self.release_tcp(conn, p, &pm, Release::Matched);
            }
        }
        None
    }

    /// Fast path: compare the unresolved primaries directly against a secondary segment that
    /// arrived while no secondary data is queued. Returns true when the segment is wholly
    /// consumed (behind the frontier), so it never needs a queue node. Anything it cannot
    /// settle (partial cover, mismatch) is left to the queue path, which reports it.
    #[inline]
    fn resolve_direct(&mut self, conn: &mut Conn, spkt: &B, sm: &Meta) -> bool {
        let sdata = spkt.data();
        while conn.cursor != NIL {
            let id = conn.cursor;
            let m = *self.pool.meta(id);
            match precheck(&conn.tcp, &m) {
                Pre::Done(bits) => self.pool.meta_mut(id).state |= bits,
                Pre::Diverge(_) => break,
                Pre::Compare(start) => {
                    if !(seq::le(sm.seq, start) && seq::le(m.end, sm.end)) {
                        break;
                    }
                    let n = m.end.wrapping_sub(start) as usize;
                    let pa = m.cmp_off as usize + start.wrapping_sub(m.seq) as usize;
                    let sa = sm.cmp_off as usize + start.wrapping_sub(sm.seq) as usize;
                    match (self.pool.data(id).get(pa..pa + n), sdata.get(sa..sa + n)) {
                        (Some(a), Some(b)) if a == b => {}
                        _ => break,
                    }
                    self.pool.meta_mut(id).state |= DATA_OK;
                    conn.tcp.record_match(start, m.end);
                }
            }
            conn.cursor = self.pool.next(id);
        }
        conn.tcp.frontier_set && seq::le(sm.end, conn.tcp.frontier)
    }

    fn resolve_tcp(&mut self, conn: &mut Conn, id: u32) -> Resolve {
        let m = *self.pool.meta(id);
        if m.state & DATA_OK != 0 {
            // Resolved before a hole filler was queued ahead of it.
            return Resolve::Done;
        }
        let start = match precheck(&conn.tcp, &m) {
            Pre::Done(bits) => {
                self.pool.meta_mut(id).state |= bits;
                return Resolve::Done;
            }
            Pre::Diverge(r) => return Resolve::Diverge(r, NIL),
            Pre::Compare(start) => start,
        };
        let pdata = self.pool.data(id);
        let mut pos = start;
        let mut s = conn.sq.head;
        let mut first = NIL;
        loop {
            if conn.tcp.n_ahead != 0 {
                // Bytes already compared beyond a hole need no secondary copy.
                if let Some(e) = conn.tcp.ahead_end(pos) {
                    pos = seq::min(e, m.end);
                }
            }
            if pos == m.end {
                break;
            }
            while s != NIL && seq::le(self.pool.meta(s).end, pos) {
                s = self.pool.next(s);
            }
            if s == NIL {
                break;
            }
            let sm = self.pool.meta(s);
            if seq::gt(sm.seq, pos) {
                break; // a gap: the secondary has not sent these bytes yet
            }
            let stop = seq::min(sm.end, m.end);
            let n = stop.wrapping_sub(pos) as usize;
            let pa = m.cmp_off as usize + pos.wrapping_sub(m.seq) as usize;
            let sa = sm.cmp_off as usize + pos.wrapping_sub(sm.seq) as usize;
            let sdata = self.pool.data(s);
            match (pdata.get(pa..pa + n), sdata.get(sa..sa + n)) {
                (Some(a), Some(b)) if a == b => {}
                _ => return Resolve::Diverge(Reason::PayloadMismatch, s),
            }
            if first == NIL {
                first = s;
            }
            pos = stop;
        }
        if pos != m.end {
            return Resolve::Wait;
        }
        self.pool.meta_mut(id).state |= DATA_OK;
        conn.tcp.record_match(start, m.end);
        // Secondary segments wholly behind the frontier are consumed.
        let frontier = conn.tcp.frontier;
        while conn.sq.head != NIL && seq::le(self.pool.meta(conn.sq.head).end, frontier) {
            let h = conn.sq.head;
            self.free_node(conn, h, SecondaryFree::Matched);
        }
        if conn.tcp.n_ahead != 0 && first != NIL {
            self.free_inside_ahead(conn, start, first);
        }
        Resolve::Done
    }

    /// Free the secondary segments wholly inside the matched range beyond the frontier that
    /// holds `at` (they are never needed again: later primaries of those bytes count as
    /// retransmissions). `near` is a queued segment used by that match; the segments inside
    /// are contiguous around it (the queue is sorted, ends increasing), so this costs what it
    /// frees. Without it they would fill the secondary queue while a hole stays open.
    #[cold]
    fn free_inside_ahead(&mut self, conn: &mut Conn, at: u32, near: u32) {
        let Some((lo, hi)) = conn.tcp.ahead_range(at) else {
            return;
        };
        let mut x = near;
        while self.pool.prev(x) != NIL && seq::ge(self.pool.meta(self.pool.prev(x)).seq, lo) {
            x = self.pool.prev(x);
        }
        while x != NIL && seq::lt(self.pool.meta(x).seq, lo) {
            x = self.pool.next(x);
        }
        while x != NIL && seq::le(self.pool.meta(x).end, hi) {
            let next = self.pool.next(x);
            self.free_node(conn, x, SecondaryFree::Matched);
            x = next;
        }
    }

    // ---------------------------------------------------------------- datagrams / L3

    #[inline]
    fn dgram_primary(&mut self, conn: &mut Conn, pkt: B, m: Meta) {
        if self.enqueue_primary(conn, pkt, m) {
            self.pump_dgram(conn);
        }
    }

    #[inline]
    fn dgram_secondary(&mut self, conn: &mut Conn, pkt: B, m: Meta) {
        if conn.diverged {
            self.free(pkt, SecondaryFree::Dropped(DropReason::Diverged));
            return;
        }
        if conn.sq.head == NIL && conn.pq.head != NIL {
            // Fast path: nothing queued before it, so it pairs with the oldest primary.
            let p = conn.pq.head;
            if dgram_equal(self.pool.meta(p), self.pool.data(p), &m, pkt.data()).is_none() {
                self.release_node(conn, p, Release::Matched);
                self.free(pkt, SecondaryFree::Matched);
                return;
            }
            // A mismatch goes through the queue so the event can show both packets.
        }
        let Some(pkt) = self.secondary_room(conn, pkt) else {
            return;
        };
        let len = pkt.len();
        match self.pool.alloc(pkt, m) {
            Ok(id) => {
                self.pool.push_back(&mut conn.sq, id);
                self.sq_added(len);
            }
            Err(pkt) => {
                self.free(pkt, SecondaryFree::Dropped(DropReason::Overflow));
                return;
            }
        }
        self.pump_dgram(conn);
    }

    /// Strict FIFO: the oldest primary against the oldest secondary.
    fn pump_dgram(&mut self, conn: &mut Conn) {
        while !conn.diverged && conn.pq.head != NIL && conn.sq.head != NIL {
            let (p, s) = (conn.pq.head, conn.sq.head);
            match dgram_equal(
                self.pool.meta(p),
                self.pool.data(p),
                self.pool.meta(s),
                self.pool.data(s),
            ) {
                None => {
                    self.release_node(conn, p, Release::Matched);
                    self.free_node(conn, s, SecondaryFree::Matched);
                }
                Some(reason) => {
                    self.diverge(conn, Side::Primary, reason, None, p, s);
                }
            }
        }
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
                let (p, s) = (conn.pq.head, conn.sq.head);
                let side = if p != NIL {
                    Side::Primary
                } else {
                    Side::Secondary
                };
                let reason = if p != NIL {
                    Reason::PrimaryTimeout
                } else {
                    Reason::SecondaryTimeout
                };
                self.emit(conn, side, reason, None, p, s);
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
                self.diverge(conn, Side::Primary, reason, range, h, conn.sq.head);
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
                self.diverge(
                    conn,
                    Side::Secondary,
                    Reason::SecondaryTimeout,
                    range,
                    NIL,
                    oldest,
                );
            }
        }
    }

    /// A connection leaves the table (eviction or ageing). Its queued primaries were never
    /// matched: they move, in order, to the shard's held list until the next checkpoint (one
    /// request, unless the connection already asked). Its secondaries are dropped.
    fn retire(&mut self, conn: &mut Conn, hash: u64, reason: Reason, drop: DropReason) {
        if conn.queued() {
            let (p, s) = (conn.pq.head, conn.sq.head);
            let side = if p != NIL {
                Side::Primary
            } else {
                Side::Secondary
            };
            self.diverge(conn, side, reason, None, p, s);
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
            let (k, r, p) = (self.held.key, self.held.reason, self.held.list.head);
            self.raise(k, Side::Primary, r, None, p, NIL);
        }
    }
}

enum Resolve {
    Done,
    Wait,
    Diverge(Reason, u32),
}

/// What a primary segment needs before its bytes are compared.
enum Pre {
    /// Nothing to compare: set these state bits.
    Done(u8),
    /// Cannot match.
    Diverge(Reason),
    /// Compare from this sequence number to the segment's end.
    Compare(u32),
}

/// A SYN on a finished, drained connection starts a new incarnation: fresh compare state.
/// With packets still queued the old state stays (they resolve by match, timeout or checkpoint).
#[inline]
fn restart_if_reused(conn: &mut Conn, m: &Meta) {
    if m.flags & tcp_flags::SYN != 0 && conn.tcp.finished() && !conn.queued() {
        conn.tcp = TcpState::default();
    }
}

#[inline]
fn precheck(t: &TcpState, m: &Meta) -> Pre {
    if m.flags & tcp_flags::FIN != 0 {
        if let Some(sf) = t.s_fin {
            if sf != m.end {
                return Pre::Diverge(Reason::LengthMismatch);
            }
        }
    }
    if m.seq == m.end {
        return Pre::Done(DATA_OK);
    }
    if t.frontier_set && seq::le(m.end, t.frontier) {
        return Pre::Done(DATA_OK | RETRANS);
    }
    if t.n_ahead != 0 && t.in_ahead(m.seq, m.end) {
        // Compared already, beyond a hole: a retransmission too.
        return Pre::Done(DATA_OK | RETRANS);
    }
    if let Some(sf) = t.s_fin {
        if seq::lt(sf, m.end) {
            // The secondary closed its stream before this data.
            return Pre::Diverge(Reason::LengthMismatch);
        }
    }
    Pre::Compare(if t.frontier_set && seq::lt(m.seq, t.frontier) {
        t.frontier
    } else {
        m.seq
    })
}

/// Whether a resolved primary TCP segment may go: control counterpart and ack gate.
#[inline]
fn tcp_ready(conn: &Conn, m: &Meta) -> bool {
    if m.state & DATA_OK == 0 {
        return false;
    }
    if m.state & RETRANS != 0 {
        return true;
    }
    control_ok(conn, m) && gate_ok(conn, m)
}

fn tcp_ready_but_gate(conn: &Conn, m: &Meta) -> bool {
    control_ok(conn, m) && !gate_ok(conn, m)
}

#[inline]
fn control_ok(conn: &Conn, m: &Meta) -> bool {
    let t = &conn.tcp;
    let f = m.flags;
    if f & tcp_flags::RST != 0 {
        return t.s_rst;
    }
    if f & tcp_flags::SYN != 0 {
        let ok = if f & tcp_flags::ACK != 0 {
            t.s_synack
        } else {
            t.s_syn
        };
        if !ok {
            return false;
        }
    }
    if f & tcp_flags::FIN != 0 && t.s_fin != Some(m.end) {
        return false;
    }
    if f & (tcp_flags::ACK | tcp_flags::SYN | tcp_flags::FIN) == 0 && m.seq == m.end {
        // A bare zero-payload segment: wait for anything from the secondary.
        return conn.s_pkts > 0;
    }
    true
}

/// Remember the ack of a primary segment released to the client.
#[inline]
fn note_released_ack(t: &mut TcpState, m: &Meta) {
    if m.flags & tcp_flags::ACK != 0 && m.flags & tcp_flags::RST == 0 {
        t.c_ack = if t.c_ack_valid {
            seq::max(t.c_ack, m.ack)
        } else {
            m.ack
        };
        t.c_ack_valid = true;
    }
}

/// The ack a gated primary may be released with now: the secondary's highest ack, for a
/// compared plain data/ACK segment, when the secondary is missing client data (it repeated
/// its ack) and its ack moves the client's forward.
#[inline]
fn ack_clamp(conn: &Conn, m: &Meta) -> Option<u32> {
    let t = &conn.tcp;
    let plain = m.flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0
        && m.flags & tcp_flags::ACK != 0;
    (plain
        && t.s_behind
        && m.state & DATA_OK != 0
        && control_ok(conn, m)
        && t.s_ack_valid
        && seq::lt(t.s_ack, m.ack)
        && (!t.c_ack_valid || seq::gt(t.s_ack, t.c_ack)))
    .then_some(t.s_ack)
}

/// Where the TCP header of a frame starts, given where its payload starts, for the common
/// shapes (Ethernet II, up to two VLAN tags, IPv4 with options, IPv6 without extension
/// headers); None for anything else (the window is then left alone).
#[inline]
fn tcp_header_at(d: &[u8], payload: usize) -> Option<usize> {
    let be16 = |at: usize| Some(u16::from_be_bytes([*d.get(at)?, *d.get(at + 1)?]));
    let mut l3 = 14;
    let mut ethertype = be16(12)?;
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = be16(l3 + 2)?;
            l3 += 4;
        }
    }
    let l4 = match ethertype {
        0x0800 => l3 + usize::from(d.get(l3)? & 0x0f) * 4,
        0x86dd if *d.get(l3 + 6)? == 6 => l3 + 40,
        _ => return None,
    };
    let hdr_len = usize::from(d.get(l4 + 12)? >> 4) * 4;
    (hdr_len >= 20 && l4 + hdr_len == payload && d.len() >= payload).then_some(l4)
}

/// A TCP frame's raw window field.
#[inline]
fn tcp_window(d: &[u8], payload: usize) -> Option<u16> {
    let l4 = tcp_header_at(d, payload)?;
    Some(u16::from_be_bytes([d[l4 + 14], d[l4 + 15]]))
}

/// Lower a TCP frame's window field to `max` if it is larger (checksum kept valid, or left
/// alone when partial). Both VMs scale windows alike (they are replicas), so raw values
/// compare; with the released ack never ahead of the secondary's, the client's right edge
/// then never passes the secondary's.
#[inline]
fn clamp_window<B: PacketBuf>(pkt: &mut B, payload: usize, max: u16) -> bool {
    let Some(l4) = tcp_header_at(pkt.data(), payload) else {
        return false;
    };
    let partial = pkt.l4_csum_partial();
    let h = &mut pkt.data_mut()[l4..l4 + 20];
    let w = u16::from_be_bytes([h[14], h[15]]);
    if w <= max {
        return false;
    }
    h[14..16].copy_from_slice(&max.to_be_bytes());
    if !partial {
        let cs = u16::from_be_bytes([h[16], h[17]]);
        h[16..18].copy_from_slice(&crate::wire::checksum::update_u16(cs, w, max).to_be_bytes());
    }
    true
}

/// Rewrite a TCP frame's ack from `old` to `new`, keeping its checksum valid (or partial).
fn set_ack<B: PacketBuf>(pkt: &mut B, old: u32, new: u32) {
    let Ok(info) = crate::wire::parse(pkt.data()) else {
        return;
    };
    let partial = pkt.l4_csum_partial();
    let l4 = info.l4_off as usize;
    let d = pkt.data_mut();
    let Some(h) = d.get_mut(l4..l4 + 20) else {
        return;
    };
    h[8..12].copy_from_slice(&new.to_be_bytes());
    if !partial {
        let cs = u16::from_be_bytes([h[16], h[17]]);
        h[16..18].copy_from_slice(&crate::wire::checksum::update_u32(cs, old, new).to_be_bytes());
    }
}

/// Ack gate: a segment's ack must not be ahead of the secondary's highest ack.
#[inline]
fn gate_ok(conn: &Conn, m: &Meta) -> bool {
    let f = m.flags;
    if f & tcp_flags::ACK == 0 || f & tcp_flags::RST != 0 {
        return true;
    }
    conn.tcp.s_ack_valid && seq::le(m.ack, conn.tcp.s_ack)
}

/// `None` when equal, else why not.
#[inline]
fn dgram_equal(pm: &Meta, pd: &[u8], sm: &Meta, sd: &[u8]) -> Option<Reason> {
    let a = pd
        .get(pm.cmp_off as usize..pm.cmp_end as usize)
        .unwrap_or(&[]);
    let b = sd
        .get(sm.cmp_off as usize..sm.cmp_end as usize)
        .unwrap_or(&[]);
    if pm.kind != sm.kind || a.len() != b.len() {
        return Some(Reason::LengthMismatch);
    }
    let eq = if pm.kind == K_L3 && pm.ipver == sm.ipver {
        l3_equal(a, b, pm.ipver)
    } else {
        a == b
    };
    if eq {
        None
    } else {
        Some(Reason::PayloadMismatch)
    }
}

/// Compare two L3 packets of equal length, ignoring the IP fields that legitimately differ
/// between two VMs: IPv4 ID, TTL and header checksum; IPv6 traffic class, flow label and hop
/// limit.
fn l3_equal(a: &[u8], b: &[u8], ipver: u8) -> bool {
    match ipver {
        4 if a.len() >= 20 => {
            a[0..4] == b[0..4] && a[6..8] == b[6..8] && a[9] == b[9] && a[12..] == b[12..]
        }
        6 if a.len() >= 40 => a[0] >> 4 == b[0] >> 4 && a[4..7] == b[4..7] && a[8..] == b[8..],
        _ => a == b,
    }
}

/// The common frame shape (untagged IPv4 without options, not a fragment, TCP) parsed
/// straight into its flow key, [`FlowKey::hash64`] and compare metadata. Gives exactly what
/// `parse` + `FlowKey::of` + `meta_of` give for such a frame (property-tested against them)
/// without building a [`PacketInfo`]; `None` sends the frame down the general path.
#[inline(always)]
fn fast_tcp4(d: &[u8], now: u64, key: &mut FlowKey, m: &mut Meta) -> Option<u64> {
    let h: &[u8; 54] = d.get(..54)?.try_into().ok()?;
    if h[12] != 0x08 || h[13] != 0x00 || h[14] != 0x45 || h[23] != crate::wire::packet::IPPROTO_TCP
    {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([h[16], h[17]]));
    let l3_end = 14 + total;
    // IP length covers a TCP header and lies inside the frame; not a fragment.
    if total < 40 || l3_end > d.len() || u16::from_be_bytes([h[20], h[21]]) & 0x3fff != 0 {
        return None;
    }
    let doff = usize::from(h[46] >> 4) * 4;
    let payload_off = 34 + doff;
    if doff < 20 || payload_off > l3_end {
        return None;
    }
    let flags = h[47];
    let (head, _) = h.split_first_chunk::<42>()?;
    let hash = v4_ports_key(head, crate::wire::packet::IPPROTO_TCP, key);
    let seq = u32::from_be_bytes([h[38], h[39], h[40], h[41]])
        .wrapping_add(u32::from(flags & tcp_flags::SYN != 0));
    let len = if flags & tcp_flags::RST != 0 {
        0
    } else {
        (l3_end - payload_off) as u32
    };
    *m = Meta {
        arrival: now,
        seq,
        end: seq.wrapping_add(len),
        ack: u32::from_be_bytes([h[42], h[43], h[44], h[45]]),
        cmp_off: payload_off as u32,
        cmp_end: l3_end as u32,
        flags,
        kind: K_TCP,
        ipver: 0,
        state: 0,
    };
    Some(hash)
}

/// Untagged option-less IPv4 UDP, not a fragment: like [`fast_tcp4`] (same guarantee).
#[inline(always)]
fn fast_udp4(d: &[u8], now: u64, key: &mut FlowKey, m: &mut Meta) -> Option<u64> {
    let h: &[u8; 42] = d.get(..42)?.try_into().ok()?;
    if h[12] != 0x08 || h[13] != 0x00 || h[14] != 0x45 || h[23] != IPPROTO_UDP {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([h[16], h[17]]));
    let l3_end = 14 + total;
    // IP length covers a UDP header and lies inside the frame; not a fragment.
    if total < 28 || l3_end > d.len() || u16::from_be_bytes([h[20], h[21]]) & 0x3fff != 0 {
        return None;
    }
    // The UDP length must fit the IP payload (the parser rejects it otherwise).
    let ulen = usize::from(u16::from_be_bytes([h[38], h[39]]));
    if ulen < 8 || 34 + ulen > l3_end {
        return None;
    }
    let hash = v4_ports_key(h, IPPROTO_UDP, key);
    *m = Meta {
        arrival: now,
        cmp_off: 34,
        cmp_end: l3_end as u32,
        kind: K_DGRAM,
        ..Meta::default()
    };
    Some(hash)
}

/// The key and hash of an option-less IPv4 header at 14 with ports at 34 (TCP or UDP).
#[inline(always)]
fn v4_ports_key(h: &[u8; 42], proto: u8, key: &mut FlowKey) -> u64 {
    // Addresses as loaded (wire byte order in memory) and as numbers, for the key order.
    let src = u32::from_le_bytes([h[26], h[27], h[28], h[29]]);
    let dst = u32::from_le_bytes([h[30], h[31], h[32], h[33]]);
    let sp = u16::from_be_bytes([h[34], h[35]]);
    let dp = u16::from_be_bytes([h[36], h[37]]);
    // (address, port) as one number: FlowKey::of's byte-wise order of the endpoints.
    let a = u64::from(src.swap_bytes()) << 16 | u64::from(sp);
    let b = u64::from(dst.swap_bytes()) << 16 | u64::from(dp);
    let (lo, hi) = if a <= b { (src, dst) } else { (dst, src) };
    let (plo, phi) = if a <= b { (sp, dp) } else { (dp, sp) };
    let proto = u16::from(proto);
    *key = FlowKey {
        family: crate::flow::Family::V4,
        proto_or_ethertype: proto,
        addr_lo: u128::from(lo).to_le_bytes(),
        addr_hi: u128::from(hi).to_le_bytes(),
        port_lo: plo,
        port_hi: phi,
    };
    FlowKey::hash64_v4(proto, lo.to_le_bytes(), hi.to_le_bytes(), plo, phi)
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

#[inline]
fn kind_code(k: FlowKind) -> u8 {
    match k {
        FlowKind::Tcp => K_TCP,
        FlowKind::Datagram => K_DGRAM,
        FlowKind::L3 => K_L3,
    }
}

#[inline]
fn flow_kind(info: &PacketInfo) -> FlowKind {
    if info.tcp.is_some() {
        FlowKind::Tcp
    } else if info.is_ip()
        && !info.fragment
        && matches!(info.ip_proto, IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6)
    {
        FlowKind::Datagram
    } else {
        FlowKind::L3
    }
}

#[inline]
fn meta_of(info: &PacketInfo, kind: FlowKind, now: u64) -> Meta {
    let mut m = Meta {
        arrival: now,
        kind: kind_code(kind),
        cmp_end: info.l3_end,
        ..Meta::default()
    };
    match kind {
        FlowKind::Tcp => {
            let t = info.tcp.unwrap_or_default();
            let syn = u32::from(t.flags & tcp_flags::SYN != 0);
            m.seq = t.seq.wrapping_add(syn);
            // An RST's payload (diagnostic text) is not part of the stream.
            let len = if t.flags & tcp_flags::RST != 0 {
                0
            } else {
                info.payload_len() as u32
            };
            m.end = m.seq.wrapping_add(len);
            m.ack = t.ack;
            m.flags = t.flags;
            m.cmp_off = info.payload_off() as u32;
        }
        FlowKind::Datagram => m.cmp_off = u32::from(info.l4_off),
        FlowKind::L3 => {
            m.cmp_off = u32::from(info.l3_off);
            m.ipver = match info.l3 {
                L3Kind::Ipv4 => 4,
                L3Kind::Ipv6 => 6,
                _ => 0,
            };
        }
    }
    m
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
            cfg,
            table,
            pool,
            c: CompareCounters::default(),
            next_scan: 0,
            since: 0,
            held: Held::new(),
            pass: None,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &CompareConfig {
        &self.cfg
    }

    /// Replace the bypass rules (control command `bypass add|del`); applies to new packets.
    pub fn set_bypass(&mut self, rules: Vec<super::Bypass>) {
        self.cfg.bypass = rules;
    }

    /// Connections tracked now.
    pub fn connections(&self) -> usize {
        self.table.len()
    }

    /// Counters (single writer: this shard).
    pub fn counters(&self) -> &CompareCounters {
        &self.c
    }

    /// Take one packet from `side`. Every packet leaves through `out` exactly once, now or
    /// later.
    pub fn process(&mut self, side: Side, pkt: B, now: u64, out: &mut impl Output<B>) {
        let d = pkt.data();
        let len = d.len();
        touch_second_line(d);
        if self.cfg.bypass.is_empty() && len <= MAX_FRAME_LEN {
            let mut key = FlowKey {
                family: crate::flow::Family::L2,
                proto_or_ethertype: 0,
                addr_lo: [0; 16],
                addr_hi: [0; 16],
                port_lo: 0,
                port_hi: 0,
            };
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
                self.c.primary_in += 1;
                self.c.primary_bytes += len as u64;
            }
            Side::Secondary => {
                self.c.secondary_in += 1;
                self.c.secondary_bytes += len as u64;
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
        if (self.cfg.pass_vlan || self.cfg.pass_ipv6) && self.passed(side, info) {
            self.bypass(side, pkt, out);
            return;
        }
        if !self.cfg.bypass.is_empty()
            && self
                .cfg
                .bypass
                .iter()
                .any(|r| super::bypass::matches(r, info))
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
        let Comparator {
            cfg,
            table,
            pool,
            c,
            since,
            held,
            ..
        } = self;
        let mut ctx = Ctx {
            pool,
            c,
            cfg,
            out,
            key,
            now,
            since,
            held,
        };
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
        match side {
            Side::Primary => {
                conn.p_pkts += 1;
                conn.p_bytes += len as u64;
                match kind {
                    FlowKind::Tcp => ctx.tcp_primary(conn, pkt, m),
                    _ => ctx.dgram_primary(conn, pkt, m),
                }
            }
            Side::Secondary => {
                conn.s_pkts += 1;
                conn.s_bytes += len as u64;
                match kind {
                    FlowKind::Tcp => ctx.tcp_secondary(conn, pkt, m),
                    _ => ctx.dgram_secondary(conn, pkt, m),
                }
            }
        }
    }

    /// `pass_vlan` / `pass_ipv6` take this frame: count it (the caller bypasses it).
    #[cold]
    fn passed(&mut self, side: Side, info: &PacketInfo) -> bool {
        let vlan = self.cfg.pass_vlan && info.vlan_tags > 0;
        let ipv6 = self.cfg.pass_ipv6 && info.l3 == crate::wire::packet::L3Kind::Ipv6;
        if !(vlan || ipv6) {
            return false;
        }
        match side {
            Side::Primary if vlan => self.c.rel_pass_vlan += 1,
            Side::Primary => self.c.rel_pass_ipv6 += 1,
            Side::Secondary => self.c.sec_passed += 1,
        }
        true
    }

    #[cold]
    fn bypass(&mut self, side: Side, pkt: B, out: &mut impl Output<B>) {
        match side {
            Side::Primary => {
                self.c.rel_bypass += 1;
                out.release(pkt, Release::Bypass);
            }
            Side::Secondary => {
                self.c.sec_bypass += 1;
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
        let behind_held = self.held.contains(hash);
        let ins = self.table.insert(hash, *key, now, || {
            let mut c = Conn::new(kind);
            if behind_held {
                c.diverged = true;
                c.last_event_ns = now;
            }
            c
        });
        self.c.conns_created += 1;
        if let Some((ekey, mut econn)) = ins.evicted {
            self.c.conns_evicted += 1;
            let mut ctx = Ctx {
                pool: &mut self.pool,
                c: &mut self.c,
                cfg: &self.cfg,
                out,
                key: &ekey,
                now,
                since: &mut self.since,
                held: &mut self.held,
            };
            ctx.retire(
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
                self.c.events[Reason::Malformed as usize] += 1;
                self.c.rel_uncomparable += 1;
                out.release(pkt, Release::Uncomparable(why));
            }
            Side::Secondary => {
                // The primary's version of it will time out if it mattered.
                self.c.sec_drop_malformed += 1;
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
                self.next_scan = now.saturating_add(self.cfg.scan_period_ns.max(1));
                // The held list first, once per scan: its packets are older than any of the
                // same flow in the table.
                let hk = self.held.key;
                Ctx {
                    pool: &mut self.pool,
                    c: &mut self.c,
                    cfg: &self.cfg,
                    out: &mut *out,
                    key: &hk,
                    now,
                    since: &mut self.since,
                    held: &mut self.held,
                }
                .scan_held();
                ScanPass {
                    start: now,
                    oldest: u64::MAX,
                    primary_in: self.c.primary_in,
                }
            }
        };
        let Comparator {
            cfg,
            table,
            pool,
            c,
            since,
            held,
            ..
        } = self;
        let idle = cfg.idle_timeout_ns;
        // The scan visits every connection: it refreshes the backlog's oldest arrival.
        let mut oldest = pass.oldest;
        // One visit: timeouts of the connection, then ageing if it is idle.
        let (_, done) = table.sweep_mut(SCAN_PER_TICK, |k, conn, last_used| {
            let mut ctx = Ctx {
                pool: &mut *pool,
                c: &mut *c,
                cfg,
                out: &mut *out,
                key: k,
                now,
                since: &mut *since,
                held: &mut *held,
            };
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
        if self.c.primary_in != pass.primary_in && self.c.queued_primary != 0 {
            oldest = oldest.min(pass.start);
        }
        if self.held.list.head != NIL {
            oldest = oldest.min(self.held.oldest);
        }
        if oldest != u64::MAX {
            self.since = oldest;
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
            primary_packets: self.c.queued_primary,
            primary_bytes: self.c.queued_primary_bytes,
            secondary_packets: self.c.queued_secondary,
            secondary_bytes: self.c.queued_secondary_bytes,
            oldest_primary_ns: (self.c.queued_primary != 0).then_some(self.since),
        }
    }

    /// The held list (evicted / aged-out connections' primaries) in order, released by `how`
    /// or dropped at shutdown (`how` = `None`).
    fn empty_held(&mut self, now: u64, how: Option<Release>, out: &mut impl Output<B>) {
        if self.held.list.head == NIL {
            self.held.forget();
            return;
        }
        let hk = self.held.key;
        let mut ctx = Ctx {
            pool: &mut self.pool,
            c: &mut self.c,
            cfg: &self.cfg,
            out,
            key: &hk,
            now,
            since: &mut self.since,
            held: &mut self.held,
        };
        match how {
            Some(how) => ctx.release_held(how),
            None => ctx.drop_held(),
        }
    }

    /// The COLO frame finished a checkpoint: release every queued primary in arrival order
    /// (the held list first: its packets are older than any of the same flow in the table),
    /// free every queued secondary, and restart comparison from the synchronised state.
    pub fn checkpoint_done(&mut self, now: u64, out: &mut impl Output<B>) {
        self.c.checkpoints += 1;
        self.empty_held(now, Some(Release::Checkpoint), out);
        let Comparator {
            cfg,
            table,
            pool,
            c,
            since,
            held,
            ..
        } = self;
        table.for_each_mut(|k, conn| {
            let mut ctx = Ctx {
                pool: &mut *pool,
                c: &mut *c,
                cfg,
                out: &mut *out,
                key: k,
                now,
                since: &mut *since,
                held: &mut *held,
            };
            ctx.empty_conn(conn, Release::Checkpoint, SecondaryFree::Checkpoint);
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
        let Comparator {
            cfg,
            table,
            pool,
            c,
            since,
            held,
            ..
        } = self;
        table.drain(|k, conn| {
            let mut ctx = Ctx {
                pool: &mut *pool,
                c: &mut *c,
                cfg,
                out: &mut *out,
                key: k,
                now: 0,
                since: &mut *since,
                held: &mut *held,
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontier_merges_out_of_order_matches_with_wraparound() {
        let mut t = TcpState::default();
        let b = u32::MAX - 10;
        t.record_match(b, b.wrapping_add(5));
        assert_eq!(t.frontier, b.wrapping_add(5));
        t.record_match(b.wrapping_add(20), b.wrapping_add(30)); // ahead, across 2^32
        t.record_match(b.wrapping_add(10), b.wrapping_add(20)); // ahead, adjacent: joined
        assert_eq!(t.frontier, b.wrapping_add(5));
        assert_eq!(t.n_ahead, 1);
        assert_eq!(t.ahead[0], (b.wrapping_add(10), b.wrapping_add(30)));
        assert!(t.in_ahead(b.wrapping_add(12), b.wrapping_add(30)));
        assert!(!t.in_ahead(b.wrapping_add(9), b.wrapping_add(12)));
        t.record_match(b.wrapping_add(5), b.wrapping_add(10)); // fills the gap
        assert_eq!(t.frontier, b.wrapping_add(30));
        assert_eq!(t.n_ahead, 0);
    }

    #[test]
    fn ahead_ranges_merge_when_a_match_bridges_them() {
        let mut t = TcpState::default();
        t.record_match(0, 10);
        t.record_match(20, 30);
        t.record_match(40, 50);
        t.record_match(60, 70);
        assert_eq!(t.n_ahead, 3);
        t.record_match(25, 45); // overlaps two ranges: one remains
        assert_eq!(t.n_ahead, 2);
        assert_eq!(t.ahead_range(44), Some((20, 50)));
        assert_eq!(t.ahead_end(20), Some(50));
        assert_eq!(t.ahead_range(50), None, "end is exclusive");
        t.record_match(50, 60); // adjoins both sides
        assert_eq!((t.n_ahead, t.ahead_range(20)), (1, Some((20, 70))));
        t.record_match(10, 20);
        assert_eq!((t.frontier, t.n_ahead), (70, 0));
    }

    #[test]
    fn frontier_keeps_lowest_ahead_ranges_when_full() {
        let mut t = TcpState::default();
        t.record_match(0, 1);
        for i in 0..AHEAD as u32 + 2 {
            t.record_match(100 - 10 * i, 101 - 10 * i);
        }
        assert_eq!(t.n_ahead as usize, AHEAD);
        assert!(t.ahead.iter().all(|a| a.0 <= 80), "{:?}", t.ahead);
    }

    #[test]
    fn l3_equal_ignores_only_volatile_ip_fields() {
        let mut a = vec![0x45, 0, 0, 24, 0, 1, 0x40, 0, 64, 47, 0x11, 0x22];
        a.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9]);
        let mut b = a.clone();
        b[4] = 0xff; // ID
        b[8] = 1; // TTL
        b[10] = 0; // checksum
        assert!(l3_equal(&a, &b, 4));
        b[9] = 6; // protocol is not volatile
        assert!(!l3_equal(&a, &b, 4));
        let mut c = a.clone();
        c[20] = 0;
        assert!(!l3_equal(&a, &c, 4));
        assert!(!l3_equal(&a, &b, 0), "non-IP compares every byte");
    }

    fn meta_fields(m: &Meta) -> (u64, u32, u32, u32, u32, u32, u8, u8, u8, u8) {
        (
            m.arrival, m.seq, m.end, m.ack, m.cmp_off, m.cmp_end, m.flags, m.kind, m.ipver, m.state,
        )
    }

    proptest::proptest! {
        /// The fast path agrees with parse + FlowKey::of + hash64 + meta_of whenever it takes a
        /// frame, and takes every valid untagged option-less IPv4 TCP frame.
        #[test]
        fn fast_tcp4_agrees_with_the_general_path(
            src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, seq: u32, ack: u32, flags: u8,
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            opt_words in 0usize..3, pad in 0usize..8,
            pokes in proptest::collection::vec((0usize..80, proptest::prelude::any::<u8>()), 0..3),
        ) {
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4(src, dst, 64)
                .tcp(sp, dp, seq, 1000)
                .write(&mut f, &payload)
                .unwrap();
            f[42..46].copy_from_slice(&ack.to_be_bytes());
            f[47] = flags;
            // TCP options (NOPs) grow the header: patch data offset and IP length.
            for _ in 0..opt_words * 4 {
                f.insert(54, 1);
            }
            f[46] = ((5 + opt_words as u8) << 4) | (f[46] & 0x0f);
            let total = (f.len() - 14) as u16;
            f[16..18].copy_from_slice(&total.to_be_bytes());
            f.extend(std::iter::repeat_n(0u8, pad)); // Ethernet padding
            let clean = f.clone();
            let general = |f: &[u8]| {
                let info = parse(f).ok()?;
                let key = FlowKey::of(&info, f);
                let kind = flow_kind(&info);
                (kind == FlowKind::Tcp).then(|| (key, key.hash64(), meta_of(&info, kind, 7)))
            };
            let fast4 = |f: &[u8]| {
                let mut k = FlowKey::of(&PacketInfo::default(), &[]);
                let mut m = Meta::default();
                fast_tcp4(f, 7, &mut k, &mut m).map(|h| (k, h, m))
            };
            let fast = fast4(&clean);
            proptest::prop_assert!(fast.is_some(), "valid frame not taken");
            for (at, v) in pokes {
                if at < f.len() {
                    f[at] = v;
                }
            }
            for frame in [&clean, &f] {
                if let Some((k, h, m)) = fast4(frame) {
                    let (gk, gh, gm) = general(frame).expect("fast path took a frame the parser rejects");
                    proptest::prop_assert_eq!(k, gk);
                    proptest::prop_assert_eq!(h, gh);
                    proptest::prop_assert_eq!(meta_fields(&m), meta_fields(&gm));
                }
            }
        }
    }

    proptest::proptest! {
        /// Same for UDP: agrees with the general path whenever it takes a frame, and takes
        /// every valid untagged option-less IPv4 UDP frame.
        #[test]
        fn fast_udp4_agrees_with_the_general_path(
            src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16,
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            pad in 0usize..8,
            pokes in proptest::collection::vec((0usize..60, proptest::prelude::any::<u8>()), 0..3),
        ) {
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4(src, dst, 64)
                .udp(sp, dp)
                .write(&mut f, &payload)
                .unwrap();
            f.extend(std::iter::repeat_n(0u8, pad)); // Ethernet padding
            let clean = f.clone();
            let general = |f: &[u8]| {
                let info = parse(f).ok()?;
                let key = FlowKey::of(&info, f);
                let kind = flow_kind(&info);
                (kind == FlowKind::Datagram).then(|| (key, key.hash64(), meta_of(&info, kind, 7)))
            };
            let fast4 = |f: &[u8]| {
                let mut k = FlowKey::of(&PacketInfo::default(), &[]);
                let mut m = Meta::default();
                fast_udp4(f, 7, &mut k, &mut m).map(|h| (k, h, m))
            };
            proptest::prop_assert!(fast4(&clean).is_some(), "valid frame not taken");
            for (at, v) in pokes {
                if at < f.len() {
                    f[at] = v;
                }
            }
            for frame in [&clean, &f] {
                if let Some((k, h, m)) = fast4(frame) {
                    let (gk, gh, gm) = general(frame).expect("fast path took a frame the parser rejects");
                    proptest::prop_assert_eq!(k, gk);
                    proptest::prop_assert_eq!(h, gh);
                    proptest::prop_assert_eq!(meta_fields(&m), meta_fields(&gm));
                }
            }
        }
    }

    #[test]
    fn gate_and_control_rules() {
        let mut c = Conn::new(FlowKind::Tcp);
        let m = Meta {
            seq: 10,
            end: 10,
            ack: 50,
            flags: tcp_flags::ACK,
            state: DATA_OK,
            ..Meta::default()
        };
        assert!(!tcp_ready(&c, &m), "no secondary ack yet");
        c.tcp.s_ack = 49;
        c.tcp.s_ack_valid = true;
        assert!(!tcp_ready(&c, &m));
        c.tcp.s_ack = 50;
        assert!(tcp_ready(&c, &m));
        let rst = Meta {
            flags: tcp_flags::RST | tcp_flags::ACK,
            ack: 9999,
            ..m
        };
        assert!(!tcp_ready(&c, &rst));
        c.tcp.s_rst = true;
        assert!(tcp_ready(&c, &rst), "an RST ignores the ack gate");
        let undecided = Meta { state: 0, ..m };
        assert!(!tcp_ready(&c, &undecided));
    }
}
