//! TCP stream compare: per-connection [`TcpState`] and the [`Ctx`] steps for TCP segments.
//! See the module docs of [`crate::compare`] for the rules (sequence-number compare, control
//! counterparts, ack gate and clamp, window clamp).

use crate::buf::PacketBuf;
use crate::wire::field::{eth, ipv4, ipv6, tcp, vlan};
use crate::wire::packet::{
    tcp_flags, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN, IPPROTO_TCP,
    MAX_VLAN_TAGS,
};
use crate::wire::seq;

use super::engine::{Conn, Ctx};
use super::pool::{Meta, DATA_OK, NIL, RETRANS};
use super::{DropReason, Output, Reason, Release, SecondaryFree, Side};

/// Advance the sequence mark `mark` (set when `set`) to `to` if `to` is later, or set it to `to`.
#[inline(always)]
fn advance(mark: &mut u32, set: &mut bool, to: u32) {
    *mark = if *set { seq::max(*mark, to) } else { to };
    *set = true;
}

/// Out-of-order matched ranges remembered beyond the contiguous frontier.
const AHEAD: usize = 8;

/// TCP compare state of one connection. "Frontier": every primary byte before it was compared
/// equal (or synchronised by a checkpoint); secondary bytes before it are no longer needed.
/// Field order is cache order (`repr(C)`): what every segment reads first, the rarely used
/// out-of-order ranges last.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub(super) struct TcpState {
    pub(super) frontier: u32,
    // What the secondary has produced.
    pub(super) s_ack: u32,
    // What the primary has produced (copied to the secondary's side by a checkpoint).
    pub(super) p_end: u32,
    pub(super) p_ack: u32,
    // The highest ack released to the client (`c_ack_valid`): what the ack gate's clamp
    // must move beyond.
    pub(super) c_ack: u32,
    pub(super) s_win: u16,
    pub(super) frontier_set: bool,
    pub(super) s_ack_valid: bool,
    pub(super) p_end_valid: bool,
    pub(super) p_ack_valid: bool,
    pub(super) c_ack_valid: bool,
    // The secondary's latest receive window (raw header value) and `s_win_valid`.
    pub(super) s_win_valid: bool,
    // The secondary repeated its ack while behind the primary's: it is missing client data.
    pub(super) s_behind: bool,
    pub(super) s_syn: bool,
    pub(super) s_synack: bool,
    pub(super) s_rst: bool,
    pub(super) p_syn: bool,
    pub(super) p_synack: bool,
    pub(super) p_rst: bool,
    pub(super) n_ahead: u8,
    pub(super) s_fin: Option<u32>,
    pub(super) p_fin: Option<u32>,
    pub(super) ahead: [(u32, u32); AHEAD],
}

impl TcpState {
    /// Both VMs closed the connection (FIN each way from the guest, or a reset from each):
    /// a SYN now opens a new connection on the same 4-tuple (a client reusing its port).
    pub(super) fn finished(&self) -> bool {
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
    pub(super) fn sync_to_primary(&mut self) {
        // The SVM now has the PVM's windows.
        self.s_win_valid = false;
        if self.p_end_valid {
            advance(&mut self.frontier, &mut self.frontier_set, self.p_end);
        }
        self.n_ahead = 0;
        if self.p_ack_valid {
            advance(&mut self.s_ack, &mut self.s_ack_valid, self.p_ack);
        }
        self.s_syn |= self.p_syn;
        self.s_synack |= self.p_synack;
        self.s_rst = self.p_rst;
        self.s_fin = self.p_fin;
    }
}

impl<B: PacketBuf, O: Output<B>> Ctx<'_, '_, B, O> {
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

    #[inline(always)]
    pub(super) fn tcp_primary(&mut self, conn: &mut Conn, pkt: B, m: Meta) {
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
            advance(&mut t.p_end, &mut t.p_end_valid, m.end);
        }
        if f & tcp_flags::ACK != 0 && f & tcp_flags::RST == 0 {
            advance(&mut t.p_ack, &mut t.p_ack_valid, m.ack);
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
                self.count_queued(Side::Primary, len);
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
    pub(super) fn tcp_secondary(&mut self, conn: &mut Conn, pkt: B, m: Meta) {
        restart_if_reused(conn, &m);
        let t = &mut conn.tcp;
        let f = m.flags;
        if f & tcp_flags::ACK != 0
            && f & tcp_flags::RST == 0
            && f & tcp_flags::SYN == 0
            && (!t.s_ack_valid || !seq::lt(m.ack, t.s_ack))
        {
            if let Some(w) = tcp_window(pkt.data(), m.cmp_off as usize) {
                t.s_win = w;
                t.s_win_valid = true;
            }
        }
        if f & tcp_flags::ACK != 0 && f & tcp_flags::RST == 0 {
            let behind = t.p_ack_valid && seq::lt(m.ack, t.p_ack);
            if t.s_ack_valid && m.ack == t.s_ack && m.seq == m.end && behind {
                // A duplicate ACK: the SVM lost a client segment the PVM has.
                t.s_behind = true;
            }
            advance(&mut t.s_ack, &mut t.s_ack_valid, m.ack);
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
                self.count_queued(Side::Secondary, len);
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
                    let ev = self.event(Side::Primary, reason, Some((m.seq, m.end)));
                    self.diverge(conn, ev, id, s);
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
                self.count_dequeued(Side::Primary, p.len());
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
                self.count_dequeued(Side::Primary, p.len());
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

pub(super) fn tcp_ready_but_gate(conn: &Conn, m: &Meta) -> bool {
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
        advance(&mut t.c_ack, &mut t.c_ack_valid, m.ack);
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
    let mut l3 = eth::HLEN;
    let mut ethertype = be16(eth::ETHERTYPE.start)?;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
            ethertype = be16(l3 + 2)?;
            l3 += vlan::LEN;
        }
    }
    let l4 = match ethertype {
        ETHERTYPE_IPV4 => l3 + usize::from(d.get(l3 + ipv4::VER_IHL)? & 0x0f) * 4,
        ETHERTYPE_IPV6 if *d.get(l3 + ipv6::NEXT_HEADER)? == IPPROTO_TCP => l3 + ipv6::HLEN,
        _ => return None,
    };
    let hdr_len = usize::from(d.get(l4 + tcp::DATA_OFF)? >> 4) * 4;
    (hdr_len >= tcp::MIN_HLEN && l4 + hdr_len == payload && d.len() >= payload).then_some(l4)
}

/// A TCP frame's raw window field.
#[inline]
fn tcp_window(d: &[u8], payload: usize) -> Option<u16> {
    let l4 = tcp_header_at(d, payload)?;
    let w = l4 + tcp::WINDOW.start;
    Some(u16::from_be_bytes([d[w], d[w + 1]]))
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
    let h = &mut pkt.data_mut()[l4..l4 + tcp::MIN_HLEN];
    let w = u16::from_be_bytes([h[tcp::WINDOW.start], h[tcp::WINDOW.start + 1]]);
    if w <= max {
        return false;
    }
    h[tcp::WINDOW].copy_from_slice(&max.to_be_bytes());
    if !partial {
        let cs = u16::from_be_bytes([h[tcp::CHECKSUM.start], h[tcp::CHECKSUM.start + 1]]);
        h[tcp::CHECKSUM]
            .copy_from_slice(&crate::wire::checksum::update_u16(cs, w, max).to_be_bytes());
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
    let Some(h) = d.get_mut(l4..l4 + tcp::MIN_HLEN) else {
        return;
    };
    h[tcp::ACK].copy_from_slice(&new.to_be_bytes());
    if !partial {
        let cs = u16::from_be_bytes([h[tcp::CHECKSUM.start], h[tcp::CHECKSUM.start + 1]]);
        h[tcp::CHECKSUM]
            .copy_from_slice(&crate::wire::checksum::update_u32(cs, old, new).to_be_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::FlowKind;

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
