//! The COLO compare engine: decides, for every packet the primary VM sends, whether the
//! secondary VM produced the same output, and releases, holds, or asks for a checkpoint.
//!
//! Pure (no DPDK, no locks, no clock reads, no allocation after [`Comparator::new`]). One
//! [`Comparator`] per compare shard owns that shard's connection table outright. Depends only
//! on the pure layers: `wire` (parsing), `flow` (key, table), `config` (the bypass rule and
//! its matcher, [`Bypass`]) and `buf`.
//!
//! Layout: `engine` (the [`Comparator`] API, connection table, queues, timers and scan),
//! `tcp` (TCP stream state and the TCP rules below), `datagram` (datagram and other-L3
//! compare), `meta` (frame to compare metadata, general and fast path), `pool` (the packet
//! pool).
//!
//! Guarantees (each is tested in `tests/compare_*.rs`):
//! - **Output commit**: a primary packet reaches [`Output::release`] only when the secondary
//!   produced the same ([`Release::Matched`], [`Release::Retransmit`] of compared bytes), a
//!   checkpoint completed ([`Release::Checkpoint`]), at failover ([`Release::Flush`]), by a
//!   bypass rule, or uncomparable by rule (malformed). The one opt-in exception is
//!   `release_after_ns` ([`Release::Timeout`], off by default). A primary that cannot be held
//!   is dropped ([`Output::drop_primary`]), never released unverified (`tests/compare_commit.rs`).
//! - **Accounting**: every packet passed to [`Comparator::process`] leaves exactly once, through
//!   [`Output::release`] or [`Output::drop_primary`] (primary) or [`Output::free_secondary`]
//!   (secondary), with a reason; [`CompareCounters::balanced`] checks the sums.
//! - **Order**: primary packets of one connection are released in their arrival order (never
//!   LIFO, never newest-first), except that a TCP segment arriving below the queue's tail (a
//!   retransmission filling a hole left by a segment lost before compare) is queued at its
//!   stream position: it may overtake later segments still waiting for the secondary, which
//!   may be unable to send them until the client has acknowledged the hole. Packets released
//!   before their connection is known (malformed frames) or by a bypass rule are released at
//!   once.
//! - **TCP**: payload bytes are compared by sequence number, never by queue position, so any
//!   segmentation, out-of-order arrival and wraparound are tolerated. The IP header and the TCP
//!   window, flags, checksum and options are ignored; payload length comes from the IP length.
//!   Zero-payload primary segments are released once the secondary has produced the
//!   counterpart: pure ACKs as soon as the secondary has acknowledged at least as far (by any
//!   segment, cumulative — never one-for-one); SYN / SYN-ACK / RST once the secondary sent the
//!   same control segment; FIN once the secondary's FIN sits at the same stream position.
//!   Ack gate: a segment with ACK set is released only when its ack is not ahead of the
//!   secondary's highest ack (as QEMU). When the secondary shows it lost client data (it
//!   repeated its ack while behind the primary's) and its ack is beyond every ack released to
//!   the client so far, a gated plain data/ACK segment (never SYN/FIN/RST) goes at once with
//!   its ack lowered to the secondary's (`ack_clamped`): the client learns what *both* VMs
//!   have received, so its retransmissions fill the SVM's holes one after the other instead
//!   of seeing no progress at all (the PVM's ack held for good) until a timeout. A lowered
//!   ack never repeats one already released, so it cannot look like a duplicate ACK.
//!   Data already compared (retransmissions) is released at once.
//!   Window: a released primary segment never offers the client more receive window than the
//!   secondary's latest segment did (`window_clamped`; raw values, as replicas scale alike):
//!   otherwise the client sends what only the PVM can take, the SVM drops it as out of window,
//!   and the connection lives on retransmission timeouts.
//! - **Datagrams** (UDP, ICMP, ICMPv6): strictly FIFO per flow, comparing transport header and
//!   payload. **Other L3** (ARP, non-IP, other IP protocols, IP fragments): the L3 packet is
//!   compared, ignoring IPv4 ID/TTL/checksum and IPv6 traffic class/flow label/hop limit.
//! - **Divergence** (mismatch, timeout, datagram overflow, eviction or ageing with queued
//!   packets): one [`DivergenceEvent`] asks for a checkpoint;
//!   the connection's primaries are then held until [`Comparator::checkpoint_done`] releases them
//!   in arrival order and resets the compare state, after which traffic flows again. While a
//!   connection stays diverged with packets waiting, the request is repeated every
//!   `timeout_ns` (a lost request cannot stall it for ever).
//! - **Overflow rules** (documented, counted by reason; what is queued keeps its order):
//!   - TCP primary, queue full (`queue_size`) or packet pool empty: the *new* segment is dropped
//!     ([`PrimaryDrop::QueueFull`] / [`PrimaryDrop::PoolEmpty`]). Not a divergence, no event:
//!     the client never acknowledges it, so the primary retransmits it (compared normally
//!     then; a primary left waiting still times out). Exception: a segment below the queue's
//!     tail (a retransmission filling a hole) takes the place of the queue's last segment,
//!     which is dropped instead (same reason): the later segments may wait for secondary bytes
//!     the secondary sends only once the client has the hole;
//!   - datagram / other L3 primary: the new one is dropped the same way and the connection
//!     diverges (`QueueOverflow` / `PoolExhausted`): nothing retransmits it and the secondary's
//!     copy would pair with the next primary (FIFO), so a checkpoint resynchronises;
//!   - TCP secondary without room: first compared with the waiting primaries directly, then
//!     dropped ([`DropReason::Overflow`]) with no event (the primary copy of its bytes is still
//!     unreleased, so both VMs retransmit); a datagram secondary: dropped with an event;
//!   - table full: a least recently used connection is evicted (exactly the LRU one in tables
//!     of up to 16 connections, else the LRU one of 16 at a rotating clock hand, see
//!     [`crate::flow::HashedTable`]). Its queued primaries were never matched: they move, in
//!     order, to the shard's *held list* (`held_evicted`), with a `TableOverflow` event, and
//!     leave only by `checkpoint_done` (before the table's), `flush_all` or `release_after_ns`
//!     — never by time alone; the request repeats every `timeout_ns`. A new connection of a
//!     held flow starts diverged, so its packets never overtake the held ones. (Refusing to
//!     evict instead would let a full table of stuck connections block every new one.)
//!   - idle ageing (`idle_timeout_ns`) the same, `Expired` event, `held_expired`;
//!   - `release_after_ns` (0 = never, QEMU's behaviour; the only opt-in unverified release): a
//!     diverged connection whose oldest primary waited this long is released
//!     ([`Release::Timeout`]) and reset, as if a checkpoint had happened; the held list too.
//! - **Shutdown** ([`Comparator::drop_all`]): every queued primary is dropped
//!   ([`PrimaryDrop::Shutdown`]), not released: it was never verified, and the primary's TCP
//!   retransmits whatever still matters. **Failover** ([`Comparator::flush_all`]) releases
//!   everything (the secondary is gone; the primary serves alone).
//! - **Backlog** ([`Comparator::backlog`], O(1)): queued packets and bytes per side (held
//!   list included) and a lower bound of the oldest queued primary's arrival.
//! - **Malformed** frames (parse error, oversize): a primary is released at once
//!   ([`Release::Uncomparable`]) with a [`Reason::Malformed`] event; a secondary is dropped.
//! - Never panics on any input bytes.
//!
//! Divergence capture: just before every [`Output::event`] the engine calls [`Output::capture`]
//! with the packets involved, still owned by the engine (the management side may copy them or
//! take an mbuf reference).
//!
//! Entry points: [`Comparator::process`] parses the frame itself (untagged option-less IPv4
//! TCP or UDP, the common shapes, straight into key, hash and compare metadata; everything
//! else through `wire::parse`); [`Comparator::process_parsed`] takes the redirector's `PacketInfo`
//! and `FlowKey` (it parsed and keyed the frame to pick the shard), saving a second parse on
//! the compare core; [`Comparator::process_parsed_hashed`] takes its `FlowKey::hash64` too,
//! which the flow table is indexed by.
//!
//! Fast paths (each gives exactly the outcome of the general queue path, which the tests
//! exercise): a primary segment on a connection with nothing queued is released at once or
//! queued unresolved without a pump; a secondary segment that exactly covers the only
//! unresolved primary at the compare frontier is compared and both leave without a queue walk.
//!
//! Memory: the flow table and a packet pool (`pool_size` queue nodes shared by all
//! connections, intrusive per-connection lists) are allocated in [`Comparator::new`]; nothing
//! allocates afterwards (`tests/compare_alloc.rs`).
//!
//! Known limits (documented, tested where testable):
//! - A connection first seen mid-stream (no SYN since the table entry was created, e.g. after an
//!   eviction) anchors its compare frontier at the first matched byte; primary bytes that
//!   later arrive below it count as retransmissions and are released uncompared.
//! - Matched ranges beyond the frontier (the primary's segment at the frontier was lost or
//!   dropped before compare, or reordered) are remembered as at most eight disjoint ranges;
//!   touching matches join one range, so one hole costs one range however much follows it.
//!   Bytes inside one count as compared (a primary copy is a retransmission, a secondary copy
//!   a duplicate; secondaries inside are freed). With more than eight holes at once (e.g. the
//!   primary's window far beyond `queue_size` with the secondary lagging) the highest ranges
//!   are forgotten: their bytes are compared again when retransmitted, or a waiting packet
//!   times out and a checkpoint follows — nothing is ever released uncompared.
//! - IPv6 fragments are compared as L3 packets including the fragment header's
//!   identification, which differs between VMs (IPv4 IDs are ignored).
//! - ICMP errors quote the offending IP header (with its ID), so they mismatch between VMs,
//!   as in QEMU.

mod datagram;
mod engine;
mod meta;
mod pool;
mod tcp;

/// A bypass rule: the config's validated `[[compare.bypass]]` rule, matched by
/// [`crate::config::bypass::matches`] (one rule type, one matcher).
pub use crate::config::BypassRule as Bypass;
pub use engine::{Comparator, SCAN_PER_TICK};

use crate::flow::FlowKey;
use crate::wire::ParseError;

/// Primary or secondary of the COLO pair: which VM produced a packet, and which host a link
/// endpoint runs on (`link::Side` is this type). The crate's one `Side`; management events
/// use [`crate::control::EventSide`], which adds "both".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The primary VM (its packets go to the client).
    Primary,
    /// The secondary VM (its packets are only compared, then freed).
    Secondary,
}

impl Side {
    /// Lower-case name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Secondary => "secondary",
        }
    }
}

/// Why a frame could not be compared at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uncomparable {
    /// The frame did not parse.
    Malformed(ParseError),
    /// The frame is longer than [`MAX_FRAME_LEN`].
    Oversize,
    /// Its flow key belongs to a connection compared another way (e.g. a TCP segment with both
    /// ports 0 sharing the key of that address pair's TCP fragments).
    KindConflict,
}

/// Largest frame compared (QEMU's link limit); longer frames are malformed.
pub const MAX_FRAME_LEN: usize = 69_632;

/// How a primary packet left the engine (it goes to the client in every case). Only
/// [`Release::Uncomparable`] (by rule), [`Release::Timeout`] (opt-in) and [`Release::Flush`]
/// (failover) release anything the secondary did not produce or a checkpoint did not commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The secondary produced the same output (payload, control flag or ack).
    Matched,
    /// TCP data that had already been compared (a retransmission).
    Retransmit,
    /// A bypass rule matched.
    Bypass,
    /// Malformed or oversize frame, released uncompared.
    Uncomparable(Uncomparable),
    /// Released by `checkpoint_done` (the secondary now has the primary's state).
    Checkpoint,
    /// Released uncompared by the opt-in `release_after_ns` rule (diverged connection or
    /// held-for-checkpoint packets waited that long).
    Timeout,
    /// Released by `flush_all` (failover: the secondary is gone).
    Flush,
}

/// Why a primary packet was dropped (it never reaches the client). Output commit: a packet
/// that cannot be held is dropped, never released unverified; TCP retransmits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrimaryDrop {
    /// Its connection's primary queue held `queue_size` packets.
    QueueFull,
    /// The shard's packet pool (`pool_size`) was empty.
    PoolEmpty,
    /// [`Comparator::drop_all`] (shutdown): held packets are dropped, not released.
    Shutdown,
}

impl PrimaryDrop {
    /// Every reason, for per-reason reports.
    pub const ALL: [PrimaryDrop; 3] = [
        PrimaryDrop::QueueFull,
        PrimaryDrop::PoolEmpty,
        PrimaryDrop::Shutdown,
    ];

    /// snake_case name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PrimaryDrop::QueueFull => "queue_full",
            PrimaryDrop::PoolEmpty => "pool_empty",
            PrimaryDrop::Shutdown => "shutdown",
        }
    }
}

/// Why a secondary packet was dropped rather than matched or flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Malformed or oversize frame.
    Malformed,
    /// Secondary queue full or packet pool empty.
    Overflow,
    /// Its connection is diverged: waiting for a checkpoint, so the packet is useless.
    Diverged,
    /// Its connection was evicted from a full table.
    Evicted,
    /// Its connection was idle past `idle_timeout_ns`.
    Expired,
    /// `release_after_ns` reset its connection.
    Timeout,
    /// `flush_all` or `drop_all`.
    Flush,
}

/// How a secondary packet left the engine (it is freed in every case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecondaryFree {
    /// Its payload was compared and matched.
    Matched,
    /// A zero-payload segment whose ack/flags were recorded (nothing to queue).
    Control,
    /// Its bytes were already compared or are already queued (a retransmission).
    Duplicate,
    /// A bypass rule matched.
    Bypass,
    /// Flushed by `checkpoint_done`.
    Checkpoint,
    /// Dropped for a reason.
    Dropped(DropReason),
}

/// Why a checkpoint is requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Payload bytes differ.
    PayloadMismatch,
    /// Lengths differ: datagram sizes, or a FIN at a different stream position.
    LengthMismatch,
    /// A primary packet waited `timeout_ns` for its counterpart.
    PrimaryTimeout,
    /// A secondary packet waited `timeout_ns` for its counterpart.
    SecondaryTimeout,
    /// A matched primary segment waited `timeout_ns` because its ack stayed ahead of the
    /// secondary's highest ack.
    AckAhead,
    /// A per-connection queue was full.
    QueueOverflow,
    /// The shared packet pool was empty.
    PoolExhausted,
    /// A connection with queued packets was evicted from a full table.
    TableOverflow,
    /// A connection with queued packets aged out.
    Expired,
    /// A malformed or oversize frame.
    Malformed,
}

impl Reason {
    /// Every reason, for per-reason reports.
    pub const ALL: [Reason; 10] = [
        Reason::PayloadMismatch,
        Reason::LengthMismatch,
        Reason::PrimaryTimeout,
        Reason::SecondaryTimeout,
        Reason::AckAhead,
        Reason::QueueOverflow,
        Reason::PoolExhausted,
        Reason::TableOverflow,
        Reason::Expired,
        Reason::Malformed,
    ];

    /// snake_case name for reports and the control protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PayloadMismatch => "payload_mismatch",
            Reason::LengthMismatch => "length_mismatch",
            Reason::PrimaryTimeout => "primary_timeout",
            Reason::SecondaryTimeout => "secondary_timeout",
            Reason::AckAhead => "ack_ahead",
            Reason::QueueOverflow => "queue_overflow",
            Reason::PoolExhausted => "pool_exhausted",
            Reason::TableOverflow => "table_overflow",
            Reason::Expired => "expired",
            Reason::Malformed => "malformed",
        }
    }
}

/// A checkpoint request with what caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DivergenceEvent {
    /// The connection.
    pub flow: FlowKey,
    /// The side whose packet triggered it.
    pub side: Side,
    /// Why.
    pub reason: Reason,
    /// For TCP: the primary sequence range `[start, end)` involved.
    pub seq_range: Option<(u32, u32)>,
    /// `now` when it was raised.
    pub time_ns: u64,
}

/// Compare configuration, with QEMU colo-compare's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompareConfig {
    /// How long a packet may wait for its counterpart (QEMU `compare_timeout`, 3000 ms).
    pub timeout_ns: u64,
    /// How often `tick` scans for timeouts (QEMU `expired_scan_cycle`, 1000 ms).
    pub scan_period_ns: u64,
    /// Queue length per connection and side (exact, not max+1). Default 8192 (QEMU
    /// `max_queue_size` is 1024): a 10 Gbit/s stream with the secondary 5 ms behind is
    /// ~6.25 MB ≈ 4300 full-size frames ahead on one connection, and a primary beyond the
    /// queue is dropped (TCP retransmits).
    pub queue_size: usize,
    /// Connections per shard (QEMU wipes its table at 16384; we evict one (approximately)
    /// least recently used connection at a time).
    pub table_capacity: usize,
    /// Packets queued at once in the whole shard (both sides, held list included); the pool
    /// is preallocated. Default 65536: both queues of four connections full (8 × 8192).
    pub pool_size: usize,
    /// Connections idle this long are removed (queued primaries go to the held list).
    pub idle_timeout_ns: u64,
    /// A diverged connection (or the held list) whose oldest primary waited this long is
    /// released without a checkpoint; 0 = hold until `checkpoint_done` (QEMU's behaviour). The
    /// only release of unverified data besides failover: an explicit opt-in.
    pub release_after_ns: u64,
    /// Traffic released without comparison.
    pub bypass: Vec<Bypass>,
    /// Release IPv6 primaries (and free IPv6 secondaries) uncompared, as a bypass rule would
    /// (`compare.ipv6 = "pass"`: a QEMU secondary's filter-rewriter leaves IPv6 TCP
    /// untranslated). An explicit operator opt-in, counted in `rel_pass_ipv6`.
    pub pass_ipv6: bool,
    /// The same for 802.1Q-tagged frames (`compare.vlan = "pass"`), counted in
    /// `rel_pass_vlan`.
    pub pass_vlan: bool,
}

const MS: u64 = 1_000_000;

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            timeout_ns: 3000 * MS,
            scan_period_ns: 1000 * MS,
            queue_size: 8192,
            table_capacity: 65_536,
            pool_size: 65_536,
            idle_timeout_ns: 120_000 * MS,
            release_after_ns: 0,
            bypass: Vec::new(),
            pass_ipv6: false,
            pass_vlan: false,
        }
    }
}

/// The verdict sink. Implemented by the compare lcore (tx ring, mbuf free, event ring) and by
/// tests. Called synchronously from `process`/`tick`/`checkpoint_done`/`flush_all`/`drop_all`.
pub trait Output<B> {
    /// A primary packet goes to the client.
    fn release(&mut self, pkt: B, how: Release);
    /// A primary packet is dropped: it must not reach the client (free it, count `why`).
    fn drop_primary(&mut self, pkt: B, why: PrimaryDrop);
    /// A secondary packet is done with.
    fn free_secondary(&mut self, pkt: B, how: SecondaryFree);
    /// A checkpoint request.
    fn event(&mut self, ev: DivergenceEvent);
    /// Called just before [`Output::event`] with the packets involved, while the engine still
    /// owns them (for divergence capture). For a payload mismatch both are given (the primary
    /// segment and the secondary segment holding the first differing byte); for timeouts the
    /// oldest waiting packet; for malformed frames the frame. Default: nothing.
    fn capture(&mut self, ev: &DivergenceEvent, primary: Option<&B>, secondary: Option<&B>) {
        let _ = (ev, primary, secondary);
    }
}

/// What waits in a shard's queues ([`Comparator::backlog`]): for back-pressure and "SVM lag"
/// reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Primary packets queued (waiting for the secondary or a checkpoint).
    pub primary_packets: u64,
    /// Their frame bytes.
    pub primary_bytes: u64,
    /// Secondary packets queued (waiting for the primary).
    pub secondary_packets: u64,
    /// Their frame bytes.
    pub secondary_bytes: u64,
    /// Arrival time (the `now` passed to `process`) of the oldest queued primary: a lower
    /// bound, exact after each timeout scan (see [`Comparator::backlog`]). `None` when no
    /// primary is queued.
    pub oldest_primary_ns: Option<u64>,
}

/// Per-shard counters. Single writer (the shard's lcore); plain `u64`s.
///
/// Terminal counters: every primary in is exactly one `rel_*` or `drop_*` or still
/// `queued_primary`; every secondary in is exactly one `sec_*` or still `queued_secondary`
/// ([`Self::balanced`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompareCounters {
    /// Primary packets passed to `process`.
    pub primary_in: u64,
    /// Secondary packets passed to `process`.
    pub secondary_in: u64,
    /// Primary bytes passed to `process`.
    pub primary_bytes: u64,
    /// Secondary bytes passed to `process`.
    pub secondary_bytes: u64,
    /// Released: [`Release::Matched`].
    pub rel_matched: u64,
    /// Released: [`Release::Retransmit`].
    pub rel_retransmit: u64,
    /// Released: [`Release::Bypass`].
    pub rel_bypass: u64,
    /// Of `rel_bypass`: IPv6 primaries passed by `pass_ipv6` (informational).
    pub rel_pass_ipv6: u64,
    /// Of `rel_bypass`: 802.1Q primaries passed by `pass_vlan` (informational).
    pub rel_pass_vlan: u64,
    /// Of `sec_bypass`: secondaries freed by `pass_ipv6` / `pass_vlan` (informational).
    pub sec_passed: u64,
    /// Released: [`Release::Uncomparable`].
    pub rel_uncomparable: u64,
    /// Released: [`Release::Checkpoint`].
    pub rel_checkpoint: u64,
    /// Released: [`Release::Timeout`].
    pub rel_timeout: u64,
    /// Released: [`Release::Flush`].
    pub rel_flush: u64,
    /// Primary dropped: [`PrimaryDrop::QueueFull`].
    pub drop_queue_full: u64,
    /// Primary dropped: [`PrimaryDrop::PoolEmpty`].
    pub drop_pool_empty: u64,
    /// Primary dropped: [`PrimaryDrop::Shutdown`].
    pub drop_shutdown: u64,
    /// Secondary freed: [`SecondaryFree::Matched`].
    pub sec_matched: u64,
    /// Secondary freed: [`SecondaryFree::Control`].
    pub sec_control: u64,
    /// Secondary freed: [`SecondaryFree::Duplicate`].
    pub sec_duplicate: u64,
    /// Secondary freed: [`SecondaryFree::Bypass`].
    pub sec_bypass: u64,
    /// Secondary freed: [`SecondaryFree::Checkpoint`].
    pub sec_checkpoint: u64,
    /// Secondary dropped: [`DropReason::Malformed`].
    pub sec_drop_malformed: u64,
    /// Secondary dropped: [`DropReason::Overflow`].
    pub sec_drop_overflow: u64,
    /// Secondary dropped: [`DropReason::Diverged`].
    pub sec_drop_diverged: u64,
    /// Secondary dropped: [`DropReason::Evicted`].
    pub sec_drop_evicted: u64,
    /// Secondary dropped: [`DropReason::Expired`].
    pub sec_drop_expired: u64,
    /// Secondary dropped: [`DropReason::Timeout`].
    pub sec_drop_timeout: u64,
    /// Secondary dropped: [`DropReason::Flush`].
    pub sec_drop_flush: u64,
    /// Primary packets queued now.
    pub queued_primary: u64,
    /// Secondary packets queued now.
    pub queued_secondary: u64,
    /// Primary packets queued now on the shard's held-for-checkpoint list (part of
    /// `queued_primary`): queued data of evicted or aged-out connections.
    pub held_primary: u64,
    /// Primaries moved to the held list because their connection was evicted (not terminal).
    pub held_evicted: u64,
    /// Primaries moved to the held list because their connection aged out (not terminal).
    pub held_expired: u64,
    /// Frame bytes of the primary packets queued now.
    pub queued_primary_bytes: u64,
    /// Frame bytes of the secondary packets queued now.
    pub queued_secondary_bytes: u64,
    /// Events raised, indexed like [`Reason::ALL`].
    pub events: [u64; 10],
    /// Divergences not raised as a new event because the connection already asked.
    pub events_suppressed: u64,
    /// Primary TCP segments released with their ack lowered to the secondary's highest ack
    /// (the ack gate's clamp; not a terminal counter: each is also `rel_matched`).
    pub ack_clamped: u64,
    /// Primary TCP segments released with their window lowered to the secondary's (not a
    /// terminal counter).
    pub window_clamped: u64,
    /// Connections created.
    pub conns_created: u64,
    /// Connections evicted from a full table.
    pub conns_evicted: u64,
    /// Connections aged out.
    pub conns_expired: u64,
    /// `checkpoint_done` calls.
    pub checkpoints: u64,
}

impl CompareCounters {
    /// Sum of primary terminal counters.
    pub fn primary_out(&self) -> u64 {
        self.rel_matched
            + self.rel_retransmit
            + self.rel_bypass
            + self.rel_uncomparable
            + self.rel_checkpoint
            + self.rel_timeout
            + self.rel_flush
            + self.primary_dropped()
    }

    /// Primary packets dropped (all reasons).
    pub fn primary_dropped(&self) -> u64 {
        self.drop_queue_full + self.drop_pool_empty + self.drop_shutdown
    }

    /// Primary packets released without comparison or checkpoint: uncomparable by rule,
    /// `release_after_ns`, failover flush.
    pub fn released_uncompared(&self) -> u64 {
        self.rel_uncomparable + self.rel_timeout + self.rel_flush
    }

    /// Sum of secondary terminal counters.
    pub fn secondary_out(&self) -> u64 {
        self.sec_matched
            + self.sec_control
            + self.sec_duplicate
            + self.sec_bypass
            + self.sec_checkpoint
            + self.sec_drop_malformed
            + self.sec_drop_overflow
            + self.sec_drop_diverged
            + self.sec_drop_evicted
            + self.sec_drop_expired
            + self.sec_drop_timeout
            + self.sec_drop_flush
    }

    /// The accounting invariant: in = out + queued, per side.
    pub fn balanced(&self) -> bool {
        self.primary_in == self.primary_out() + self.queued_primary
            && self.secondary_in == self.secondary_out() + self.queued_secondary
    }

    /// All events raised.
    pub fn events_total(&self) -> u64 {
        self.events.iter().sum()
    }

    #[inline]
    fn count_release(&mut self, how: Release) {
        let c = match how {
            Release::Matched => &mut self.rel_matched,
            Release::Retransmit => &mut self.rel_retransmit,
            Release::Bypass => &mut self.rel_bypass,
            Release::Uncomparable(_) => &mut self.rel_uncomparable,
            Release::Checkpoint => &mut self.rel_checkpoint,
            Release::Timeout => &mut self.rel_timeout,
            Release::Flush => &mut self.rel_flush,
        };
        *c += 1;
    }

    #[inline]
    fn count_drop(&mut self, why: PrimaryDrop) {
        let c = match why {
            PrimaryDrop::QueueFull => &mut self.drop_queue_full,
            PrimaryDrop::PoolEmpty => &mut self.drop_pool_empty,
            PrimaryDrop::Shutdown => &mut self.drop_shutdown,
        };
        *c += 1;
    }

    #[inline]
    fn count_free(&mut self, how: SecondaryFree) {
        let c = match how {
            SecondaryFree::Matched => &mut self.sec_matched,
            SecondaryFree::Control => &mut self.sec_control,
            SecondaryFree::Duplicate => &mut self.sec_duplicate,
            SecondaryFree::Bypass => &mut self.sec_bypass,
            SecondaryFree::Checkpoint => &mut self.sec_checkpoint,
            SecondaryFree::Dropped(DropReason::Malformed) => &mut self.sec_drop_malformed,
            SecondaryFree::Dropped(DropReason::Overflow) => &mut self.sec_drop_overflow,
            SecondaryFree::Dropped(DropReason::Diverged) => &mut self.sec_drop_diverged,
            SecondaryFree::Dropped(DropReason::Evicted) => &mut self.sec_drop_evicted,
            SecondaryFree::Dropped(DropReason::Expired) => &mut self.sec_drop_expired,
            SecondaryFree::Dropped(DropReason::Timeout) => &mut self.sec_drop_timeout,
            SecondaryFree::Dropped(DropReason::Flush) => &mut self.sec_drop_flush,
        };
        *c += 1;
    }
}

/// What kind of comparison a connection gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKind {
    /// TCP byte-stream compare.
    Tcp,
    /// UDP / ICMP / ICMPv6: FIFO, transport header + payload.
    Datagram,
    /// ARP, non-IP, other IP protocols, fragments: FIFO, L3 packet minus volatile IP fields.
    L3,
}

/// Compare state of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// Comparing normally.
    Comparing,
    /// A checkpoint was requested; primaries are held until `checkpoint_done`.
    Diverged,
}

/// One connection, for the `flows` control command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSummary {
    /// Comparison kind.
    pub kind: FlowKind,
    /// Compare state.
    pub state: FlowState,
    /// Primary packets seen.
    pub primary_packets: u64,
    /// Primary frame bytes seen.
    pub primary_bytes: u64,
    /// Secondary packets seen.
    pub secondary_packets: u64,
    /// Secondary frame bytes seen.
    pub secondary_bytes: u64,
    /// Primary packets queued now.
    pub queued_primary: u32,
    /// Secondary packets queued now.
    pub queued_secondary: u32,
    /// Divergences raised on this connection.
    pub divergences: u32,
    /// `now` of its last packet.
    pub last_seen_ns: u64,
}

impl FlowSummary {
    /// Bytes seen on both sides: what `flows` ranks by.
    pub fn traffic(&self) -> u64 {
        self.primary_bytes.saturating_add(self.secondary_bytes)
    }
}

/// Bounded top-N selection: keeps the `n` items offered with the largest key (ties: the
/// earlier offered), in a min-heap of at most `n` entries: O(log n) per offer, O(n) memory,
/// never a sort of everything offered.
pub struct TopN<T, K: Ord> {
    n: usize,
    seq: usize,
    heap: std::collections::BinaryHeap<TopEntry<T, K>>,
}

/// Heap entry: ordered so the weakest (smallest key, then latest offered) is on top.
struct TopEntry<T, K>(K, usize, T);

impl<T, K: Ord> PartialEq for TopEntry<T, K> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl<T, K: Ord> Eq for TopEntry<T, K> {}
impl<T, K: Ord> PartialOrd for TopEntry<T, K> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T, K: Ord> Ord for TopEntry<T, K> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: "greater" = weaker = smaller key, or offered later.
        o.0.cmp(&self.0).then(self.1.cmp(&o.1))
    }
}

impl<T, K: Ord> TopN<T, K> {
    /// Keep at most `n` items.
    pub fn new(n: usize) -> Self {
        TopN {
            n,
            seq: 0,
            heap: std::collections::BinaryHeap::with_capacity(n.min(1 << 16)),
        }
    }

    /// Offer `item` with rank `key`.
    pub fn offer(&mut self, key: K, item: T) {
        let seq = self.seq;
        self.seq += 1;
        if self.heap.len() < self.n {
            self.heap.push(TopEntry(key, seq, item));
        } else if self.heap.peek().is_some_and(|w| key > w.0) {
            self.heap.pop();
            self.heap.push(TopEntry(key, seq, item));
        }
    }

    /// Items held now (at most `n`).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The kept items, largest key first (ties: earlier offered first).
    pub fn into_sorted(self) -> Vec<T> {
        // Ascending by our Ord = strongest first.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|e| e.2)
            .collect()
    }
}

#[cfg(test)]
mod top_tests {
    use super::TopN;

    #[test]
    fn top_n_matches_a_full_sort_and_never_holds_more_than_n() {
        let mut x = 7u32;
        let items: Vec<(u32, usize)> = (0..5000)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((x >> 20) % 300, i)
            })
            .collect();
        for n in [0, 1, 7, 20, 299, 5000, 6000] {
            let mut t = TopN::new(n);
            for &it in &items {
                t.offer(it.0, it);
                assert!(t.len() <= n);
            }
            let got = t.into_sorted();
            let mut want = items.clone();
            // Largest first; ties keep input order (a stable sort).
            want.sort_by_key(|it| std::cmp::Reverse(it.0));
            want.truncate(n);
            assert_eq!(got, want, "n = {n}");
        }
    }
}
