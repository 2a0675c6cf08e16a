//! The secondary-side TCP sequence/ack rewriter (replaces QEMU's filter-rewriter).
//!
//! Guarantees:
//! - Every packet is handled in place and handed back at once (no queue): TCP packets of a
//!   connection whose offset is known are translated, everything else is left byte-for-byte
//!   unchanged. Nothing here panics on any input; parse failures are counted by reason.
//! - Per connection, `offset = secondary ISN − primary ISN` (mod 2^32) is learned for
//!   connections opened by the client (the SVM's SYN-ACK + the primary ISN acknowledged by the
//!   client, in either arrival order) and by the VM (the SVM's SYN + the server's SYN-ACK,
//!   in either order). A TCP timestamp offset is learned the same way.
//! - [`Direction::ToSecondary`]: `ack += offset`, SACK edges `+= offset`, TSecr `+= ts_offset`.
//!   [`Direction::FromSecondary`]: `seq −= offset`, TSval `−= ts_offset`. Every edit is a
//!   modular addition with an exact checksum update, so translating by `d` and then by `−d`
//!   gives back the original bytes, checksum included.
//! - Checksums are updated incrementally (RFC 1624) and are independent of IP options and the
//!   IP version; a device-completed partial checksum ([`PacketBuf::l4_csum_partial`]) is not
//!   touched because it does not cover seq/ack/options.
//! - Teardown (passive, active, simultaneous close, RST) is tracked in the primary's sequence
//!   space, which a checkpoint does not change; closed entries linger briefly (late
//!   retransmissions are still translated) and are then reclaimed. Idle ageing and a fixed
//!   capacity bound the table; all removals are counted.
//! - The table is a [`HashedTable`] indexed by the packet's [`FlowKey::hash64`], computed once
//!   per packet. A full table evicts a least recently used connection: exactly the LRU one up to
//!   [`EVICT_SAMPLE`] connections, above that the LRU one of `EVICT_SAMPLE` at a rotating
//!   clock hand (approximate LRU; an exact LRU list cost a list update per packet).
//! - Idle ageing: [`Rewriter::tick`] forgets a connection idle for `idle_timeout_ns` or more,
//!   by a scan of the table that runs only when some entry may be due, and at most once per
//!   `idle_timeout_ns / 64` ([`AGE_SCAN_SPACING`]): an idle connection is forgotten never
//!   before `idle_timeout_ns` after its last packet and at the latest by the first tick
//!   `idle_timeout_ns · (1 + 1/64)` after it; ticks with nothing due cost O(1). A scan is
//!   spread over ticks: each visits at most [`AGE_PER_TICK`] table slots (and reclaims at
//!   most that many lingering closed connections), so no tick walks a whole large table; a
//!   scan of `S` slots ends within `ceil(S / AGE_PER_TICK)` ticks.
//! - [`Rewriter::checkpoint`] sets every offset to 0 and ends every half-learned handshake
//!   (the SVM is now the PVM's copy); [`Rewriter::failover`] keeps existing entries and stops
//!   creating new ones.
//! - No allocation, lock or clock read per packet: the table is sized at construction and
//!   `now` is passed in.
//!
//! [`EVICT_SAMPLE`]: crate::flow::hashed::EVICT_SAMPLE

pub mod announce;
mod edit;

use std::collections::VecDeque;

use crate::buf::PacketBuf;
use crate::flow::{FlowKey, HashedTable};
use crate::wire::packet::{tcp_flags, Layer, IPPROTO_TCP};
use crate::wire::{self, ParseError};

/// Which way a packet crosses the rewriter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client packets mirrored from the primary, into the SVM: `ack += offset`, SACK blocks
    /// too, TSecr translated.
    ToSecondary,
    /// SVM output: `seq −= offset`, TSval translated.
    FromSecondary,
}

/// Rewriter sizing and timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RewriterConfig {
    /// Most connections tracked; beyond, a least recently used one is evicted (approximate
    /// LRU above [`EVICT_SAMPLE`](crate::flow::hashed::EVICT_SAMPLE) connections).
    pub table_capacity: usize,
    /// A connection idle this long (ns) is forgotten.
    pub idle_timeout_ns: u64,
}

impl Default for RewriterConfig {
    fn default() -> Self {
        RewriterConfig {
            table_capacity: 65536,
            idle_timeout_ns: 120_000_000_000,
        }
    }
}

/// How long a closed connection is kept after its close by default (ns), so late
/// retransmissions (the last ACK, a repeated FIN) are still translated: a short TIME_WAIT.
pub const DEFAULT_CLOSED_LINGER_NS: u64 = 10_000_000_000;

/// Ageing scans of the whole table are at least `idle_timeout_ns / AGE_SCAN_SPACING` apart, so
/// connections expiring one by one cost one scan per that period, not one per tick.
pub const AGE_SCAN_SPACING: u64 = 64;

/// Table slots one [`Rewriter::tick`] visits at most (and lingering closed connections it
/// reclaims at most).
pub const AGE_PER_TICK: usize = 1024;

/// What [`Rewriter::process`] did. The packet is forwarded in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// At least one field (seq, ack, SACK edge, timestamp) was translated.
    Rewritten,
    /// TCP, but nothing to translate (untracked, offset unknown or zero).
    Unchanged,
    /// Not TCP (or an IP fragment): untouched.
    PassedNonTcp,
    /// The frame could not be parsed: untouched, counted.
    Malformed(ParseError),
}

impl Outcome {
    /// True when the packet was changed.
    #[inline]
    pub fn rewritten(&self) -> bool {
        matches!(self, Outcome::Rewritten)
    }
}

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opener {
    /// The remote client (the VM is the server).
    Client,
    /// The VM.
    Vm,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    /// The client sent the first FIN.
    Passive,
    /// The VM sent the first FIN.
    Active,
    /// Both sent a FIN before acknowledging the other's.
    Simultaneous,
    /// A RST from either side.
    Reset,
}

/// A connection's state as the rewriter sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// VM-opened handshake, offset not yet known.
    SynSent,
    /// Client-opened handshake, offset not yet known.
    SynReceived,
    /// Offset known, no FIN yet.
    Established,
    /// The VM sent a FIN (active close in progress).
    FinWait,
    /// The client sent a FIN (passive close in progress).
    CloseWait,
    /// Both sent a FIN, not both acknowledged yet.
    Closing,
    /// Closed; kept for a short linger.
    Closed(CloseKind),
}

/// One connection, for the `flows` control command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnSummary {
    /// Who opened it.
    pub opener: Opener,
    /// Where it is in its life.
    pub state: ConnState,
    /// `secondary ISN − primary ISN`, once known.
    pub seq_offset: Option<u32>,
    /// `secondary TSval − primary TSval`, once known (None also when timestamps are off).
    pub ts_offset: Option<u32>,
    /// The `now_ns` of its last packet.
    pub last_used_ns: u64,
}

/// Rewriter counters (plain numbers, read by the management lcore through a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RewriterCounters {
    /// Packets seen going into the SVM.
    pub to_secondary: u64,
    /// Packets seen coming out of the SVM.
    pub from_secondary: u64,
    /// Packets with at least one field translated.
    pub rewritten: u64,
    /// TCP packets left unchanged.
    pub unchanged: u64,
    /// ... of which belonged to no tracked connection.
    pub untracked: u64,
    /// Non-TCP packets passed (including IP fragments).
    pub passed_non_tcp: u64,
    /// ... of which were fragments of TCP segments (never rewritten: no reassembly).
    pub tcp_fragments: u64,
    /// Rewritten packets whose checksum was a device-completed partial sum (left alone).
    pub csum_partial: u64,
    /// Malformed: a header was truncated.
    pub malformed_truncated: u64,
    /// Malformed: bad IPv4/IPv6 version or header length.
    pub malformed_ip_header: u64,
    /// Malformed: IP length field inconsistent with the frame.
    pub malformed_ip_length: u64,
    /// Malformed: TCP data offset below 5 or past the packet.
    pub malformed_tcp_offset: u64,
    /// Malformed: anything else (UDP length, VLAN tags, IPv6 extension chain).
    pub malformed_other: u64,
    /// TCP packets with an impossible SACK/timestamps option length (option left alone).
    pub bad_tcp_options: u64,
    /// Connections created.
    pub conns_created: u64,
    /// Offsets learned for client-opened connections.
    pub learned_client_opened: u64,
    /// Offsets learned for VM-opened connections.
    pub learned_vm_opened: u64,
    /// Timestamp offsets learned.
    pub learned_ts: u64,
    /// Client handshake ACKs that arrived before the SVM's SYN-ACK (remembered, learned later).
    pub ack_before_synack: u64,
    /// Server SYN-ACKs that arrived before the SVM's SYN.
    pub synack_before_syn: u64,
    /// Retransmitted SYNs or SYN-ACKs (learned state kept).
    pub handshake_retransmits: u64,
    /// The SVM repeated its handshake with a different ISN before the offset was known.
    pub svm_isn_changed: u64,
    /// A SYN with a new ISN on a closed or unfinished entry started a new connection.
    pub new_incarnations: u64,
    /// A SYN with a new ISN on an established connection (ignored, state kept).
    pub stray_syns: u64,
    /// Connections closed, client FIN first.
    pub closed_passive: u64,
    /// Connections closed, VM FIN first.
    pub closed_active: u64,
    /// Connections closed by crossing FINs.
    pub closed_simultaneous: u64,
    /// Connections closed by RST.
    pub closed_reset: u64,
    /// Closed entries removed after their linger.
    pub reclaimed_closed: u64,
    /// Entries evicted because the table was full.
    pub evicted: u64,
    /// ... of which still had a non-zero offset (that connection diverges until a checkpoint).
    pub evicted_translated: u64,
    /// Entries removed after being idle for the timeout.
    pub expired: u64,
    /// Checkpoints applied.
    pub checkpoints: u64,
    /// SYNs not tracked because failover happened.
    pub failover_untracked_syns: u64,
}

impl RewriterCounters {
    /// Packets that could not be parsed, all reasons.
    pub fn malformed(&self) -> u64 {
        self.malformed_truncated
            + self.malformed_ip_header
            + self.malformed_ip_length
            + self.malformed_tcp_offset
            + self.malformed_other
    }

    /// Packets forwarded unchanged, for any reason (TCP unchanged, non-TCP, malformed).
    pub fn passed(&self) -> u64 {
        self.unchanged + self.passed_non_tcp + self.malformed()
    }
}

/// Per-connection state. `Copy`, fixed size: lives in the preallocated flow table.
#[derive(Clone, Copy, Debug)]
struct Conn {
    opener: Opener,
    /// Generation, to match linger-queue entries with the incarnation that closed.
    generation: u32,
    /// The remote endpoint's ISN (client SYN, server SYN-ACK), to tell retransmits from reuse.
    remote_isn: Option<u32>,
    svm_isn: Option<u32>,
    pvm_isn: Option<u32>,
    svm_ts: Option<u32>,
    pvm_ts: Option<u32>,
    seq_off: Option<u32>,
    ts_off: Option<u32>,
    /// Sequence number of the client's FIN (client space).
    client_fin: Option<u32>,
    /// Sequence number of the VM's FIN (primary space).
    vm_fin: Option<u32>,
    client_fin_acked: bool,
    vm_fin_acked: bool,
    first_fin_vm: bool,
    crossed_fins: bool,
    closed: Option<CloseKind>,
}

impl Conn {
    fn new(opener: Opener, generation: u32) -> Conn {
        Conn {
            opener,
            generation,
            remote_isn: None,
            svm_isn: None,
            pvm_isn: None,
            svm_ts: None,
            pvm_ts: None,
            seq_off: None,
            ts_off: None,
            client_fin: None,
            vm_fin: None,
            client_fin_acked: false,
            vm_fin_acked: false,
            first_fin_vm: false,
            crossed_fins: false,
            closed: None,
        }
    }

    fn state(&self) -> ConnState {
        if let Some(k) = self.closed {
            return ConnState::Closed(k);
        }
        match (self.client_fin.is_some(), self.vm_fin.is_some()) {
            (true, true) => ConnState::Closing,
            (true, false) => ConnState::CloseWait,
            (false, true) => ConnState::FinWait,
            (false, false) => match (self.seq_off, self.opener) {
                (Some(_), _) => ConnState::Established,
                (None, Opener::Client) => ConnState::SynReceived,
                (None, Opener::Vm) => ConnState::SynSent,
            },
        }
    }

    /// Closed, or a FIN was seen (a new SYN may then start a new connection even if the last
    /// ACK of the old one was missed).
    fn closing(&self) -> bool {
        self.closed.is_some() || self.client_fin.is_some() || self.vm_fin.is_some()
    }

    /// True when this entry still changes packets (must survive ageing after failover).
    fn translates(&self) -> bool {
        self.seq_off.is_some_and(|o| o != 0) || self.ts_off.is_some_and(|o| o != 0)
    }

    /// Learn the offsets once both ISNs (and both timestamps) are known.
    fn try_learn(&mut self, c: &mut RewriterCounters) {
        if self.seq_off.is_some() {
            return;
        }
        if let (Some(s), Some(p)) = (self.svm_isn, self.pvm_isn) {
            self.seq_off = Some(s.wrapping_sub(p));
            match self.opener {
                Opener::Client => c.learned_client_opened += 1,
                Opener::Vm => c.learned_vm_opened += 1,
            }
            if let (Some(s), Some(p)) = (self.svm_ts, self.pvm_ts) {
                self.ts_off = Some(s.wrapping_sub(p));
                c.learned_ts += 1;
            }
        }
    }
}

/// A closed connection waiting for its linger to end.
#[derive(Clone, Copy)]
struct Lingering {
    key: FlowKey,
    hash: u64,
    /// The incarnation that closed (a newer one on the same key is left alone).
    generation: u32,
    closed_at: u64,
}

/// The rewriter: one per secondary host pipeline, owned by one lcore.
pub struct Rewriter {
    cfg: RewriterConfig,
    closed_linger_ns: u64,
    table: HashedTable<Conn>,
    /// Closed connections in close order.
    linger: VecDeque<Lingering>,
    /// No entry can be idle-expired before this time (a lower bound; ticks before it skip the
    /// ageing scan). Lowered by every insert and close; set by each scan.
    next_age_ns: u64,
    /// The ageing scan in progress: the earliest due time of the entries it kept so far.
    age_pass: Option<u64>,
    next_generation: u32,
    failover: bool,
    counters: RewriterCounters,
}

/// What a packet's flags mean for the table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syn {
    None,
    /// SYN without ACK: opens a connection from the sender's side.
    Open,
    /// SYN with ACK: answers an open.
    Answer,
}

impl Rewriter {
    /// Bytes a rewriter built from `cfg` reserves (connection table and linger queue).
    pub fn memory_bytes(cfg: &RewriterConfig) -> usize {
        let cap = cfg.table_capacity.max(1);
        HashedTable::<Conn>::bytes_for(cap) + cap * std::mem::size_of::<Lingering>()
    }

    /// A rewriter with all memory reserved for `cfg.table_capacity` connections.
    pub fn new(cfg: RewriterConfig) -> Self {
        let cap = cfg.table_capacity.max(1);
        Rewriter {
            cfg,
            closed_linger_ns: DEFAULT_CLOSED_LINGER_NS.min(cfg.idle_timeout_ns),
            table: HashedTable::with_capacity(cap),
            linger: VecDeque::with_capacity(cap),
            next_age_ns: u64::MAX,
            age_pass: None,
            next_generation: 0,
            failover: false,
            counters: RewriterCounters::default(),
        }
    }

    /// Keep closed connections `ns` after their close (default [`DEFAULT_CLOSED_LINGER_NS`],
    /// never longer than the idle timeout).
    pub fn with_closed_linger(mut self, ns: u64) -> Self {
        self.closed_linger_ns = ns;
        self
    }

    /// The configuration this rewriter was built with.
    pub fn config(&self) -> &RewriterConfig {
        &self.cfg
    }

    /// Counters so far.
    pub fn counters(&self) -> &RewriterCounters {
        &self.counters
    }

    /// Number of tracked connections.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// True after [`Rewriter::failover`].
    pub fn failed_over(&self) -> bool {
        self.failover
    }

    /// Visit every tracked connection (table order, not use order).
    pub fn flows(&self, mut f: impl FnMut(&FlowKey, ConnSummary)) {
        self.table.for_each(|k, c, t| f(k, summary(c, t)));
    }

    /// Translate `pkt` in place for `dir`. Never panics; the packet is always forwarded.
    pub fn process<B: PacketBuf>(&mut self, dir: Direction, pkt: &mut B, now_ns: u64) -> Outcome {
        match dir {
            Direction::ToSecondary => self.counters.to_secondary += 1,
            Direction::FromSecondary => self.counters.from_secondary += 1,
        }
        let partial = pkt.l4_csum_partial();
        let frame = pkt.data_mut();
        let info = match wire::parse(frame) {
            Ok(i) => i,
            Err(e) => {
                self.count_malformed(e);
                return Outcome::Malformed(e);
            }
        };
        let Some(tcp) = info.tcp else {
            self.counters.passed_non_tcp += 1;
            if info.fragment && info.ip_proto == IPPROTO_TCP {
                self.counters.tcp_fragments += 1;
            }
            return Outcome::PassedNonTcp;
        };
        let l4 = usize::from(info.l4_off);
        let hdr_end = l4 + usize::from(info.l4_hdr_len);
        let payload_len = info.payload_len() as u32;
        let key = FlowKey::of(&info, frame);
        let hash = key.hash64();
        // parse() guarantees the header lies inside the frame; stay total anyway.
        let Some(hdr) = frame.get_mut(l4..hdr_end) else {
            self.count_malformed(ParseError::Truncated(Layer::Tcp));
            return Outcome::Malformed(ParseError::Truncated(Layer::Tcp));
        };
        let opts = edit::Opts::scan(hdr);
        if opts.bad {
            self.counters.bad_tcp_options += 1;
        }
        let flags = tcp.flags;
        let has_ack = flags & tcp_flags::ACK != 0;
        let rst = flags & tcp_flags::RST != 0;
        let syn = match (flags & tcp_flags::SYN != 0, has_ack) {
            _ if rst => Syn::None,
            (true, false) => Syn::Open,
            (true, true) => Syn::Answer,
            (false, _) => Syn::None,
        };
        let ts = opts.timestamps(hdr);

        // Find the connection, creating it only on a handshake packet.
        let counters = &mut self.counters;
        let conn = if syn != Syn::None && !self.failover {
            let opener = match (dir, syn) {
                (Direction::ToSecondary, Syn::Open) | (Direction::FromSecondary, Syn::Answer) => {
                    Opener::Client
                }
                _ => Opener::Vm,
            };
            let generation = self.next_generation;
            let (id, created) = match self.table.find(hash, &key) {
                Some(id) => (id, false),
                None => {
                    let ins = self
                        .table
                        .insert(hash, key, now_ns, || Conn::new(opener, generation));
                    if let Some((_, old)) = ins.evicted {
                        counters.evicted += 1;
                        if old.translates() {
                            counters.evicted_translated += 1;
                        }
                    }
                    self.next_age_ns = self
                        .next_age_ns
                        .min(now_ns.saturating_add(self.cfg.idle_timeout_ns));
                    (ins.id, true)
                }
            };
            let Some(conn) = self.table.touch(id, now_ns) else {
                // A handle just found or inserted is live; stay total anyway.
                counters.unchanged += 1;
                counters.untracked += 1;
                return Outcome::Unchanged;
            };
            if created {
                counters.conns_created += 1;
                self.next_generation = self.next_generation.wrapping_add(1);
            } else if is_new_incarnation(conn, dir, syn, tcp.seq, counters) {
                counters.new_incarnations += 1;
                counters.conns_created += 1;
                *conn = Conn::new(opener, generation);
                self.next_generation = self.next_generation.wrapping_add(1);
            }
            conn
        } else {
            let found = self.table.find(hash, &key);
            match found.and_then(|id| Some((id, self.table.touch(id, now_ns)?))) {
                Some((id, c)) => {
                    if syn != Syn::None
                        && is_new_incarnation(c, dir, syn, tcp.seq, &mut self.counters)
                    {
                        // After failover a new connection on an old 4-tuple passes through.
                        self.counters.failover_untracked_syns += 1;
                        self.table.remove(id);
                        self.counters.unchanged += 1;
                        self.counters.untracked += 1;
                        return Outcome::Unchanged;
                    }
                    c
                }
                None => {
                    if syn != Syn::None {
                        self.counters.failover_untracked_syns += 1;
                    }
                    self.counters.unchanged += 1;
                    self.counters.untracked += 1;
                    return Outcome::Unchanged;
                }
            }
        };
        let counters = &mut self.counters;

        // Learn from handshake packets, before translating this very packet.
        match (dir, syn) {
            (Direction::ToSecondary, Syn::Open) => {
                if conn.remote_isn.is_none() {
                    conn.remote_isn = Some(tcp.seq);
                }
            }
            (Direction::FromSecondary, Syn::Answer) => {
                if conn.opener == Opener::Client {
                    learn_svm(conn, tcp.seq, ts.map(|t| t.0), counters);
                }
            }
            (Direction::FromSecondary, Syn::Open) => {
                if conn.opener == Opener::Vm {
                    learn_svm(conn, tcp.seq, ts.map(|t| t.0), counters);
                }
            }
            (Direction::ToSecondary, Syn::Answer) => {
                if conn.opener == Opener::Vm {
                    if conn.remote_isn.is_none() {
                        conn.remote_isn = Some(tcp.seq);
                    }
                    if conn.seq_off.is_none() {
                        if conn.pvm_isn.is_none() {
                            conn.pvm_isn = Some(tcp.ack.wrapping_sub(1));
                            if conn.svm_isn.is_none() {
                                counters.synack_before_syn += 1;
                            }
                        } else {
                            counters.handshake_retransmits += 1;
                        }
                        // The newest echo pairs with the SVM's newest SYN (see learn_svm).
                        conn.pvm_ts = ts.map(|t| t.1);
                        conn.try_learn(counters);
                    } else {
                        counters.handshake_retransmits += 1;
                    }
                }
            }
            (Direction::ToSecondary, Syn::None) => {
                // The client's handshake ACK acknowledges the primary's ISN + 1.
                if conn.opener == Opener::Client
                    && conn.seq_off.is_none()
                    && conn.pvm_isn.is_none()
                    && has_ack
                    && !rst
                {
                    conn.pvm_isn = Some(tcp.ack.wrapping_sub(1));
                    conn.pvm_ts = ts.map(|t| t.1);
                    if conn.svm_isn.is_none() {
                        counters.ack_before_synack += 1;
                    }
                    conn.try_learn(counters);
                }
            }
            (Direction::FromSecondary, Syn::None) => {}
        }

        // Translate.
        let off = conn.seq_off.unwrap_or(0);
        let ts_off = conn.ts_off.unwrap_or(0);
        let mut changed = false;
        let (seq_p, ack_p) = match dir {
            Direction::ToSecondary => {
                if off != 0 {
                    if has_ack {
                        changed |= edit::add32(hdr, edit::ACK, off, partial);
                    }
                    changed |= edit::shift_sack(hdr, &opts, off, partial);
                }
                if ts_off != 0 && has_ack {
                    if let Some(at) = opts.ts {
                        changed |= edit::add32(hdr, at + 6, ts_off, partial);
                    }
                }
                (tcp.seq, tcp.ack)
            }
            Direction::FromSecondary => {
                let neg = off.wrapping_neg();
                if off != 0 {
                    changed |= edit::add32(hdr, edit::SEQ, neg, partial);
                }
                if ts_off != 0 {
                    if let Some(at) = opts.ts {
                        changed |= edit::add32(hdr, at + 2, ts_off.wrapping_neg(), partial);
                    }
                }
                (tcp.seq.wrapping_add(neg), tcp.ack)
            }
        };

        // Teardown, in the primary's sequence space.
        if conn.closed.is_none() {
            let fin = flags & tcp_flags::FIN != 0;
            let seg_end = seq_p
                .wrapping_add(payload_len)
                .wrapping_add(u32::from(syn != Syn::None));
            let kind = if rst {
                Some(CloseKind::Reset)
            } else {
                track_fin(conn, dir, fin, has_ack, seg_end, ack_p)
            };
            if let Some(k) = kind {
                conn.closed = Some(k);
                match k {
                    CloseKind::Passive => counters.closed_passive += 1,
                    CloseKind::Active => counters.closed_active += 1,
                    CloseKind::Simultaneous => counters.closed_simultaneous += 1,
                    CloseKind::Reset => counters.closed_reset += 1,
                }
                if self.linger.len() < self.linger.capacity() {
                    self.linger.push_back(Lingering {
                        key,
                        hash,
                        generation: conn.generation,
                        closed_at: now_ns,
                    });
                }
                // After failover the entry may have been exempt from ageing; it no longer is.
                self.next_age_ns = self
                    .next_age_ns
                    .min(now_ns.saturating_add(self.cfg.idle_timeout_ns));
            }
        }

        if changed {
            counters.rewritten += 1;
            if partial {
                counters.csum_partial += 1;
            }
            Outcome::Rewritten
        } else {
            counters.unchanged += 1;
            Outcome::Unchanged
        }
    }

    /// The SVM now equals the PVM: every offset becomes 0, including handshakes in progress.
    pub fn checkpoint(&mut self) {
        self.counters.checkpoints += 1;
        if self.failover {
            // Entries exempt from ageing (translating after failover) no longer translate.
            self.next_age_ns = 0;
        }
        self.table.for_each_mut(|_, c| {
            c.seq_off = Some(0);
            c.ts_off = Some(0);
            c.svm_isn = None;
            c.pvm_isn = None;
            c.svm_ts = None;
            c.pvm_ts = None;
        });
    }

    /// The SVM is now the live VM: tracked connections keep being translated (and may still
    /// finish learning), new connections pass through untracked.
    pub fn failover(&mut self) {
        self.failover = true;
    }

    /// Housekeeping: reclaim closed connections after their linger and forget idle ones (see
    /// the module docs for when the ageing scan runs). After failover, idle connections that
    /// still translate are kept, with their real last-use time (they cannot be re-learned and
    /// no checkpoint will zero them).
    pub fn tick(&mut self, now_ns: u64) {
        let linger = self.closed_linger_ns;
        for _ in 0..AGE_PER_TICK {
            let Some(&l) = self.linger.front() else { break };
            if now_ns.saturating_sub(l.closed_at) < linger {
                break;
            }
            self.linger.pop_front();
            if let Some(id) = self.table.find(l.hash, &l.key) {
                let stale = self
                    .table
                    .get_mut(id)
                    .is_some_and(|c| c.generation == l.generation && c.closed.is_some());
                if stale && self.table.remove(id) {
                    self.counters.reclaimed_closed += 1;
                }
            }
        }
        let mut next = match self.age_pass {
            Some(next) => next,
            None if now_ns < self.next_age_ns => return,
            None => {
                // Inserts and closes during the scan lower this again (slots already visited).
                self.next_age_ns = u64::MAX;
                u64::MAX
            }
        };
        let idle = self.cfg.idle_timeout_ns;
        let failover = self.failover;
        let counters = &mut self.counters;
        let (_, done) = self.table.sweep_mut(AGE_PER_TICK, |_, c, last_used| {
            if failover && c.closed.is_none() && c.translates() {
                return false;
            }
            let due = last_used.saturating_add(idle);
            if now_ns >= due {
                counters.expired += 1;
                return true;
            }
            next = next.min(due);
            false
        });
        if !done {
            self.age_pass = Some(next);
            return;
        }
        self.age_pass = None;
        self.next_age_ns = self
            .next_age_ns
            .min(next)
            .max(now_ns.saturating_add(idle / AGE_SCAN_SPACING));
    }

    fn count_malformed(&mut self, e: ParseError) {
        let c = &mut self.counters;
        match e {
            ParseError::Truncated(_) => c.malformed_truncated += 1,
            ParseError::BadIpHeader(_) => c.malformed_ip_header += 1,
            ParseError::BadIpLength(_) => c.malformed_ip_length += 1,
            ParseError::BadTcpDataOffset => c.malformed_tcp_offset += 1,
            _ => c.malformed_other += 1,
        }
    }
}

fn summary(c: &Conn, last_used_ns: u64) -> ConnSummary {
    ConnSummary {
        last_used_ns,
        opener: c.opener,
        state: c.state(),
        seq_offset: c.seq_off,
        ts_offset: c.ts_off,
    }
}

/// Record the SVM's ISN (from its SYN or SYN-ACK) and learn if the other half is known.
fn learn_svm(conn: &mut Conn, isn: u32, tsval: Option<u32>, c: &mut RewriterCounters) {
    if conn.seq_off.is_some() {
        c.handshake_retransmits += 1;
        return;
    }
    match conn.svm_isn {
        Some(old) if old == isn => {
            // The PVM retransmits on the same schedule and the peer echoes the newest TSval it
            // saw, so the newest SVM TSval is the one to pair with it.
            c.handshake_retransmits += 1;
            conn.svm_ts = tsval;
        }
        Some(_) => {
            // The SVM restarted its half of the handshake: its newest ISN is the one that counts.
            c.svm_isn_changed += 1;
            conn.svm_isn = Some(isn);
            conn.svm_ts = tsval;
        }
        None => {
            conn.svm_isn = Some(isn);
            conn.svm_ts = tsval;
        }
    }
    conn.try_learn(c);
}

/// A SYN (or SYN-ACK) on an existing entry: retransmission, or a new connection reusing the
/// 4-tuple? A new ISN restarts the entry only when the old one is closed or closing, or never
/// finished learning; on an established connection it is a stray SYN (the VM's stack answers it
/// with a challenge ACK) and is ignored.
fn is_new_incarnation(
    conn: &Conn,
    dir: Direction,
    syn: Syn,
    seq: u32,
    c: &mut RewriterCounters,
) -> bool {
    let same_side_isn = match (dir, syn, conn.opener) {
        (Direction::ToSecondary, Syn::Open, Opener::Client)
        | (Direction::ToSecondary, Syn::Answer, Opener::Vm) => conn.remote_isn,
        (Direction::FromSecondary, Syn::Open, Opener::Vm)
        | (Direction::FromSecondary, Syn::Answer, Opener::Client) => {
            // Handled by learn_svm (retransmit or ISN change while learning).
            if !conn.closing() {
                return false;
            }
            conn.svm_isn
        }
        // A SYN from the other role than the one that opened: simultaneous open or reuse.
        _ => None,
    };
    if same_side_isn == Some(seq) {
        // A retransmission (possibly of a closed incarnation's SYN): keep the entry as it is.
        c.handshake_retransmits += 1;
        return false;
    }
    if conn.closing() || (conn.seq_off.is_none() && same_side_isn.is_some()) {
        return true;
    }
    if same_side_isn.is_none() && conn.seq_off.is_none() {
        // The entry exists for the other role's handshake in progress (e.g. created by the
        // answer): nothing to restart.
        return false;
    }
    c.stray_syns += 1;
    false
}

/// Track FINs and their ACKs; returns how the connection closed, when it just did.
fn track_fin(
    conn: &mut Conn,
    dir: Direction,
    fin: bool,
    has_ack: bool,
    fin_seq: u32,
    ack: u32,
) -> Option<CloseKind> {
    use crate::wire::seq::ge;
    match dir {
        Direction::ToSecondary => {
            if fin && conn.client_fin != Some(fin_seq) {
                if conn.client_fin.is_none() {
                    if let Some(v) = conn.vm_fin {
                        if !(has_ack && ge(ack, v.wrapping_add(1))) {
                            conn.crossed_fins = true;
                        }
                    }
                }
                conn.client_fin = Some(fin_seq);
                conn.client_fin_acked = false;
            }
            if let Some(v) = conn.vm_fin {
                if has_ack && ge(ack, v.wrapping_add(1)) {
                    conn.vm_fin_acked = true;
                }
            }
        }
        Direction::FromSecondary => {
            if fin && conn.vm_fin != Some(fin_seq) {
                if conn.vm_fin.is_none() {
                    match conn.client_fin {
                        Some(cf) => {
                            if !(has_ack && ge(ack, cf.wrapping_add(1))) {
                                conn.crossed_fins = true;
                            }
                        }
                        None => conn.first_fin_vm = true,
                    }
                }
                conn.vm_fin = Some(fin_seq);
                conn.vm_fin_acked = false;
            }
            if let Some(cf) = conn.client_fin {
                if has_ack && ge(ack, cf.wrapping_add(1)) {
                    conn.client_fin_acked = true;
                }
            }
        }
    }
    if conn.client_fin_acked && conn.vm_fin_acked {
        Some(if conn.crossed_fins {
            CloseKind::Simultaneous
        } else if conn.first_fin_vm {
            CloseKind::Active
        } else {
            CloseKind::Passive
        })
    } else {
        None
    }
}
