//! The client on the outside network: keeps `concurrency` transactions in flight (one request
//! per TCP connection, UDP request/reply, ICMP echo), verifies every response byte against the
//! function the VM must compute, and records latencies.
//!
//! Transaction `n` is ICMP when `icmp_every > 0 && (n + 1) % icmp_every == 0`, else UDP when
//! `udp_every > 0 && (n + 1) % udp_every == 0`, else TCP; it uses IPv6 when the addresses have an
//! IPv6 pair and `ipv6_every > 0 && (n + 1) % ipv6_every == 0`. Each transaction owns one local
//! port from `ports` (also its ICMP echo id); a TCP port is not reused for `time_wait_ns` after
//! its connection ends. New transactions open while fewer than `concurrency` are in flight,
//! optionally paced by `rate_per_sec`. Slots and the port table are allocated once in
//! [`ClientSim::new`].

use std::ops::RangeInclusive;

use hdrhistogram::Histogram;

use crate::buf::PacketBuf;
use crate::wire::packet::{
    tcp_flags, L3Kind, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};
use crate::wire::{seq, PacketInfo, TcpInfo};

use super::content::{self, mix64, FRAME_HDR};
use super::frame::{self, BuildError, Hdr, Ips, TcpSeg};
use super::{Addresses, FrameAlloc, MAX_DATAGRAM, MAX_SEGMENT, MAX_SEGMENT_V6, WINDOW};

/// Configuration of the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Transactions in flight at once (TCP connections plus outstanding datagrams).
    pub concurrency: usize,
    /// Request sizes in bytes (TCP: including the 4-byte header; UDP: clamped to 16..=1400).
    pub request_bytes: RangeInclusive<usize>,
    /// Every n-th transaction is a UDP request (0: none).
    pub udp_every: u32,
    /// Every n-th transaction is an ICMP echo (0: none; takes precedence over UDP).
    pub icmp_every: u32,
    /// Every n-th transaction uses IPv6 when `Addresses::v6` is set (0: none).
    pub ipv6_every: u32,
    /// A transaction not finished after this long fails (TCP: RST sent; datagram: lost).
    pub timeout_ns: u64,
    /// Retransmission timeout for SYN, request data and FIN (doubles per retry).
    pub rto_ns: u64,
    /// Seed of request contents and client ISNs.
    pub seed: u64,
    /// Stop opening transactions after this many (None: run forever).
    pub max_transactions: Option<u64>,
    /// The VM's TCP port.
    pub tcp_port: u16,
    /// The VM's UDP port.
    pub udp_port: u16,
    /// Local ports (and ICMP echo ids) to cycle through.
    pub ports: RangeInclusive<u16>,
    /// How long a local port stays unused after its TCP connection ended.
    pub time_wait_ns: u64,
    /// MSS the client advertises and uses.
    pub mss: usize,
    /// Open at most this many transactions per second (None: as fast as `concurrency` allows).
    /// Bursts after a stall are capped at 32 transactions.
    pub rate_per_sec: Option<u64>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            concurrency: 64,
            request_bytes: 16..=2048,
            udp_every: 0,
            icmp_every: 0,
            ipv6_every: 0,
            timeout_ns: 2_000_000_000,
            rto_ns: 20_000_000,
            seed: 1,
            max_transactions: None,
            tcp_port: 80,
            udp_port: 7000,
            ports: 10000..=59999,
            time_wait_ns: 500_000_000,
            mss: MAX_SEGMENT,
            rate_per_sec: None,
        }
    }
}

/// Client counters and latency histograms (nanoseconds).
#[derive(Clone)]
pub struct ClientStats {
    /// TCP connections started (SYN sent).
    pub tcp_opened: u64,
    /// TCP transactions that ended with a full close.
    pub tcp_completed: u64,
    /// TCP transactions that timed out.
    pub tcp_failed: u64,
    /// TCP transactions ended by a RST from the VM.
    pub tcp_reset: u64,
    /// UDP requests sent.
    pub udp_sent: u64,
    /// UDP replies received for an outstanding request.
    pub udp_answered: u64,
    /// UDP requests that timed out.
    pub udp_lost: u64,
    /// ICMP echo requests sent.
    pub icmp_sent: u64,
    /// ICMP echo replies received for an outstanding request.
    pub icmp_answered: u64,
    /// ICMP echo requests that timed out.
    pub icmp_lost: u64,
    /// Application bytes sent (first transmissions).
    pub bytes_sent: u64,
    /// Application bytes received (new, in-order).
    pub bytes_received: u64,
    /// Responses (TCP, UDP, ICMP) that matched the expected bytes exactly.
    pub responses_verified: u64,
    /// Responses with any wrong, missing or extra byte.
    pub responses_wrong: u64,
    /// RTO expiries (SYN, request data or FIN resent).
    pub retransmits: u64,
    /// Duplicate or out-of-order TCP segments received (answered with a duplicate ACK).
    pub dup_segments: u64,
    /// Frames not sent because the allocator was empty or the buffer too small.
    pub alloc_failures: u64,
    /// Times no local port was free when opening a transaction.
    pub port_exhausted: u64,
    /// Frames received.
    pub rx_frames: u64,
    /// Received frames that did not parse.
    pub rx_malformed: u64,
    /// Received frames with a bad checksum.
    pub rx_bad_checksum: u64,
    /// Received frames not addressed to the client or not from the VM's services.
    pub rx_ignored: u64,
    /// Received frames for no outstanding transaction (late replies, stray segments).
    pub rx_unmatched: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// TCP transaction latency: first SYN to last response byte.
    pub lat_tcp: Histogram<u64>,
    /// UDP request → reply latency.
    pub lat_udp: Histogram<u64>,
    /// ICMP echo latency.
    pub lat_icmp: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 60 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant histogram bounds are valid")
}

impl ClientStats {
    /// A transaction of `kind` got its whole response: right (its latency since `start_ns` into
    /// the kind's histogram) or wrong.
    fn response(&mut self, kind: Kind, right: bool, start_ns: u64, now: u64) {
        if !right {
            self.responses_wrong += 1;
            return;
        }
        self.responses_verified += 1;
        let lat = match kind {
            Kind::Tcp => &mut self.lat_tcp,
            Kind::Udp => &mut self.lat_udp,
            Kind::Icmp => &mut self.lat_icmp,
            Kind::Free => return, // no transaction
        };
        lat.saturating_record(now.saturating_sub(start_ns).max(1));
    }
}

impl Default for ClientStats {
    fn default() -> Self {
        ClientStats {
            tcp_opened: 0,
            tcp_completed: 0,
            tcp_failed: 0,
            tcp_reset: 0,
            udp_sent: 0,
            udp_answered: 0,
            udp_lost: 0,
            icmp_sent: 0,
            icmp_answered: 0,
            icmp_lost: 0,
            bytes_sent: 0,
            bytes_received: 0,
            responses_verified: 0,
            responses_wrong: 0,
            retransmits: 0,
            dup_segments: 0,
            alloc_failures: 0,
            port_exhausted: 0,
            rx_frames: 0,
            rx_malformed: 0,
            rx_bad_checksum: 0,
            rx_ignored: 0,
            rx_unmatched: 0,
            tx_frames: 0,
            lat_tcp: histogram(),
            lat_udp: histogram(),
            lat_icmp: histogram(),
        }
    }
}

impl std::fmt::Debug for ClientStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Histograms print as count/p50/p99/max, not as their bucket arrays.
        let h = |h: &Histogram<u64>| {
            (
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max(),
            )
        };
        f.debug_struct("ClientStats")
            .field("tcp_opened", &self.tcp_opened)
            .field("tcp_completed", &self.tcp_completed)
            .field("tcp_failed", &self.tcp_failed)
            .field("tcp_reset", &self.tcp_reset)
            .field("udp_sent", &self.udp_sent)
            .field("udp_answered", &self.udp_answered)
            .field("udp_lost", &self.udp_lost)
            .field("icmp_sent", &self.icmp_sent)
            .field("icmp_answered", &self.icmp_answered)
            .field("icmp_lost", &self.icmp_lost)
            .field("bytes_sent", &self.bytes_sent)
            .field("bytes_received", &self.bytes_received)
            .field("responses_verified", &self.responses_verified)
            .field("responses_wrong", &self.responses_wrong)
            .field("retransmits", &self.retransmits)
            .field("dup_segments", &self.dup_segments)
            .field("alloc_failures", &self.alloc_failures)
            .field("port_exhausted", &self.port_exhausted)
            .field("rx_frames", &self.rx_frames)
            .field("rx_malformed", &self.rx_malformed)
            .field("rx_bad_checksum", &self.rx_bad_checksum)
            .field("rx_ignored", &self.rx_ignored)
            .field("rx_unmatched", &self.rx_unmatched)
            .field("tx_frames", &self.tx_frames)
            .field("lat_tcp(n,p50,p99,max)", &h(&self.lat_tcp))
            .field("lat_udp(n,p50,p99,max)", &h(&self.lat_udp))
            .field("lat_icmp(n,p50,p99,max)", &h(&self.lat_icmp))
            .finish()
    }
}

impl ClientStats {
    /// Transactions finished one way or another (completed, failed, reset, answered, lost).
    pub fn finished(&self) -> u64 {
        self.tcp_completed
            + self.tcp_failed
            + self.tcp_reset
            + self.udp_answered
            + self.udp_lost
            + self.icmp_answered
            + self.icmp_lost
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Free,
    Tcp,
    Udp,
    Icmp,
}

/// One transaction in flight.
#[derive(Debug, Clone)]
struct Slot {
    kind: Kind,
    txn: u64,
    port: u16,
    v6: bool,
    start_ns: u64,
    deadline_ns: u64,
    rto_at: u64,
    retries: u32,
    // TCP
    established: bool,
    iss: u32,
    snd_una: u32,
    snd_nxt: u32,
    snd_max: u32,
    req_key: u64,
    req_len: u32,
    peer_mss: u16,
    peer_wnd: u16,
    rcv_nxt: u32,
    resp_hash: u64,
    resp_hdr: [u8; FRAME_HDR],
    resp_got: u32,
    resp_len: u32,
    resp_ok: bool,
    resp_done: bool,
    peer_fin: bool,
    ack_due: bool,
    // datagrams
    dgram_len: u16,
}

impl Slot {
    /// A pure ACK at the current sequence state (the base of every segment this slot sends).
    fn ack_segment(&self, ctx: &Ctx<'_>) -> TcpSeg<'static> {
        TcpSeg {
            sport: self.port,
            dport: ctx.cfg.tcp_port,
            seq: self.snd_nxt,
            ack: self.rcv_nxt,
            flags: tcp_flags::ACK,
            window: WINDOW,
            mss: None,
            payload: &[],
        }
    }

    fn free() -> Self {
        Slot {
            kind: Kind::Free,
            txn: 0,
            port: 0,
            v6: false,
            start_ns: 0,
            deadline_ns: 0,
            rto_at: 0,
            retries: 0,
            established: false,
            iss: 0,
            snd_una: 0,
            snd_nxt: 0,
            snd_max: 0,
            req_key: 0,
            req_len: 0,
            peer_mss: 536,
            peer_wnd: 0,
            rcv_nxt: 0,
            resp_hash: 0,
            resp_hdr: [0; FRAME_HDR],
            resp_got: 0,
            resp_len: 0,
            resp_ok: true,
            resp_done: false,
            peer_fin: false,
            ack_due: false,
            dgram_len: 0,
        }
    }
    fn req_end(&self) -> u32 {
        self.iss.wrapping_add(1).wrapping_add(self.req_len)
    }
    fn fin_sent(&self) -> bool {
        seq::gt(self.snd_max, self.req_end())
    }
}

const NO_SLOT: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct PortEntry {
    slot: u32,
    reuse_at: u64,
}

/// Immutable context for frame building.
struct Ctx<'a> {
    addrs: &'a Addresses,
    cfg: &'a ClientConfig,
}

impl Ctx<'_> {
    fn hdr(&self, v6: bool) -> Hdr {
        let ips = match (v6, self.addrs.v6) {
            (true, Some(p)) => Ips::V6 {
                src: p.client.octets(),
                dst: p.vm.octets(),
            },
            _ => Ips::V4 {
                src: self.addrs.client_ip.octets(),
                dst: self.addrs.vm_ip.octets(),
            },
        };
        Hdr {
            src_mac: self.addrs.client_mac,
            dst_mac: self.addrs.vm_mac,
            ips,
        }
    }
    fn ips16(&self, v6: bool) -> ([u8; 16], [u8; 16]) {
        match (v6, self.addrs.v6) {
            (true, Some(p)) => (p.client.octets(), p.vm.octets()),
            _ => {
                let (mut c, mut v) = ([0u8; 16], [0u8; 16]);
                c[..4].copy_from_slice(&self.addrs.client_ip.octets());
                v[..4].copy_from_slice(&self.addrs.vm_ip.octets());
                (c, v)
            }
        }
    }
}

impl super::SendCounts for ClientStats {
    fn sent(&mut self) {
        self.tx_frames += 1;
    }
    fn alloc_failed(&mut self) {
        self.alloc_failures += 1;
    }
}

/// [`super::emit`], and one frame less of this poll's `budget`.
fn emit<B: PacketBuf>(
    r: Result<B, BuildError>,
    stats: &mut ClientStats,
    budget: &mut usize,
    out: &mut impl FnMut(B),
) -> bool {
    let sent = super::emit(r, stats, out);
    if sent {
        *budget = budget.saturating_sub(1);
    }
    sent
}

/// Send what the TCP transaction may send now: SYN, request data within the VM's window, FIN
/// once the response is in, or a pure ACK when one is due.
fn tcp_pump<B: PacketBuf>(
    s: &mut Slot,
    ctx: &Ctx<'_>,
    stats: &mut ClientStats,
    now: u64,
    budget: &mut usize,
    alloc: &mut impl FrameAlloc<B>,
    out: &mut impl FnMut(B),
) {
    let h = ctx.hdr(s.v6);
    let mut seg = s.ack_segment(ctx);
    let mut sent_any = false;
    if !s.established {
        if s.snd_nxt == s.iss && *budget > 0 {
            seg.flags = tcp_flags::SYN;
            seg.ack = 0;
            seg.mss = Some(own_mss(ctx.cfg, s.v6));
            if emit(frame::tcp(alloc, &h, &seg), stats, budget, out) {
                s.snd_nxt = s.iss.wrapping_add(1);
            }
        }
    } else {
        let end = s.req_end();
        let base = s.iss.wrapping_add(1);
        let mut chunk = [0u8; MAX_SEGMENT];
        while seq::lt(s.snd_nxt, end) && *budget > 0 {
            let inflight = s.snd_nxt.wrapping_sub(s.snd_una);
            let wnd = u32::from(s.peer_wnd);
            if inflight >= wnd {
                break;
            }
            let n = end
                .wrapping_sub(s.snd_nxt)
                .min(u32::from(s.peer_mss))
                .min(wnd - inflight) as usize;
            let off = s.snd_nxt.wrapping_sub(base) as usize;
            content::fill_request(s.req_key, s.req_len as usize, off, &mut chunk[..n]);
            let mut flags = tcp_flags::ACK;
            if s.snd_nxt.wrapping_add(n as u32) == end {
                flags |= tcp_flags::PSH;
            }
            let data = TcpSeg {
                seq: s.snd_nxt,
                flags,
                payload: &chunk[..n],
                ..seg
            };
            if !emit(frame::tcp(alloc, &h, &data), stats, budget, out) {
                break;
            }
            if seq::ge(s.snd_nxt, s.snd_max) {
                stats.bytes_sent += n as u64;
            }
            s.snd_nxt = s.snd_nxt.wrapping_add(n as u32);
            sent_any = true;
        }
        if (s.resp_done || s.peer_fin) && s.snd_nxt == end && *budget > 0 {
            seg.seq = s.snd_nxt;
            seg.flags = tcp_flags::FIN | tcp_flags::ACK;
            if emit(frame::tcp(alloc, &h, &seg), stats, budget, out) {
                s.snd_nxt = s.snd_nxt.wrapping_add(1);
                sent_any = true;
            }
        }
        if s.ack_due && !sent_any && *budget > 0 {
            seg.seq = s.snd_nxt;
            seg.flags = tcp_flags::ACK;
            sent_any = emit(frame::tcp(alloc, &h, &seg), stats, budget, out);
        }
        if sent_any {
            s.ack_due = false;
        }
    }
    s.snd_max = seq::max(s.snd_max, s.snd_nxt);
    // Unacknowledged data, or output we could not send (no buffer, no budget): retry on the RTO.
    let pending = s.ack_due
        || (!s.established && s.snd_nxt == s.iss)
        || (s.established && seq::lt(s.snd_nxt, s.req_end()))
        || (s.established && (s.resp_done || s.peer_fin) && s.snd_nxt == s.req_end());
    if (s.snd_una != s.snd_max || pending) && s.rto_at == 0 {
        s.rto_at = now + (ctx.cfg.rto_ns << s.retries.min(6));
    }
}

fn own_mss(cfg: &ClientConfig, v6: bool) -> u16 {
    let cap = if v6 { MAX_SEGMENT_V6 } else { MAX_SEGMENT };
    cfg.mss.clamp(64, cap) as u16
}

fn dgram_len(cfg: &ClientConfig, seed: u64, txn: u64) -> usize {
    content::request_len(&cfg.request_bytes, content::request_key(seed, txn))
        .clamp(16, MAX_DATAGRAM)
}

/// Length of the ICMP echo payload (like `ping`'s default).
const ICMP_PAYLOAD: usize = 56;

/// The simulated client.
#[derive(Debug)]
pub struct ClientSim {
    addrs: Addresses,
    cfg: ClientConfig,
    slots: Vec<Slot>,
    free: Vec<u32>,
    ports: Vec<PortEntry>,
    port_cursor: usize,
    next_txn: u64,
    next_timer_ns: u64,
    next_open_ns: u64,
    stats: ClientStats,
}

impl ClientSim {
    /// A client with `cfg.concurrency` transaction slots and a table of `cfg.ports`.
    pub fn new(addrs: Addresses, mut cfg: ClientConfig) -> Self {
        let nports =
            usize::from(*cfg.ports.end()).saturating_sub(usize::from(*cfg.ports.start())) + 1;
        cfg.concurrency = cfg.concurrency.clamp(1, nports);
        let slots = vec![Slot::free(); cfg.concurrency];
        let free = (0..cfg.concurrency as u32).rev().collect();
        let ports = vec![
            PortEntry {
                slot: NO_SLOT,
                reuse_at: 0
            };
            nports
        ];
        ClientSim {
            addrs,
            cfg,
            slots,
            free,
            ports,
            port_cursor: 0,
            next_txn: 0,
            next_timer_ns: u64::MAX,
            next_open_ns: 0,
            stats: ClientStats::default(),
        }
    }

    /// Counters and latency histograms.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// The configuration in effect (`concurrency` clamped to the port range).
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Transactions in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Transactions started so far.
    pub fn started(&self) -> u64 {
        self.next_txn
    }

    /// True when `max_transactions` were started and all of them finished.
    pub fn is_done(&self) -> bool {
        self.cfg
            .max_transactions
            .is_some_and(|m| self.next_txn >= m)
            && self.in_flight() == 0
    }

    fn kind_of(&self, txn: u64) -> Kind {
        let every = |n: u32| n > 0 && (txn + 1).is_multiple_of(u64::from(n));
        if every(self.cfg.icmp_every) {
            Kind::Icmp
        } else if every(self.cfg.udp_every) {
            Kind::Udp
        } else {
            Kind::Tcp
        }
    }

    fn take_port(&mut self, now: u64) -> Option<u16> {
        let n = self.ports.len();
        // Bounded probe: a busy table makes us try again next call instead of scanning it all.
        for _ in 0..n.min(4096) {
            let i = self.port_cursor;
            self.port_cursor = (self.port_cursor + 1) % n;
            let e = self.ports[i];
            if e.slot == NO_SLOT && e.reuse_at <= now {
                return Some(*self.cfg.ports.start() + i as u16);
            }
        }
        self.stats.port_exhausted += 1;
        None
    }

    fn port_index(&self, port: u16) -> Option<usize> {
        let i = usize::from(port.checked_sub(*self.cfg.ports.start())?);
        (i < self.ports.len()).then_some(i)
    }

    /// End a transaction: free its slot and port (a TCP port waits `time_wait_ns`).
    fn release(&mut self, idx: usize, now: u64) {
        let s = &mut self.slots[idx];
        let wait = if s.kind == Kind::Tcp {
            self.cfg.time_wait_ns
        } else {
            0
        };
        let port = s.port;
        *s = Slot::free();
        if let Some(pi) = self.port_index(port) {
            self.ports[pi] = PortEntry {
                slot: NO_SLOT,
                reuse_at: now + wait,
            };
        }
        self.free.push(idx as u32);
    }

    /// Drive timers (retransmission, transaction timeouts) and open new transactions up to
    /// `concurrency`. Emits at most `budget` frames; returns how many it emitted.
    pub fn generate<B: PacketBuf>(
        &mut self,
        now_ns: u64,
        alloc: &mut impl FrameAlloc<B>,
        budget: usize,
        out: &mut impl FnMut(B),
    ) -> usize {
        let mut left = budget;
        if now_ns >= self.next_timer_ns {
            self.run_timers(now_ns, &mut left, alloc, out);
        }
        let interval = self
            .cfg
            .rate_per_sec
            .map(|r| 1_000_000_000 / r.clamp(1, 1_000_000_000));
        if let Some(iv) = interval {
            self.next_open_ns = self.next_open_ns.max(now_ns.saturating_sub(iv * 32));
        }
        while left > 0 && !self.free.is_empty() {
            if self
                .cfg
                .max_transactions
                .is_some_and(|m| self.next_txn >= m)
            {
                break;
            }
            if interval.is_some_and(|_| now_ns < self.next_open_ns) {
                break;
            }
            if !self.open(now_ns, &mut left, alloc, out) {
                break;
            }
            if let Some(iv) = interval {
                self.next_open_ns += iv;
            }
        }
        budget - left
    }

    fn run_timers<B: PacketBuf>(
        &mut self,
        now: u64,
        left: &mut usize,
        alloc: &mut impl FrameAlloc<B>,
        out: &mut impl FnMut(B),
    ) {
        let mut next = u64::MAX;
        for idx in 0..self.slots.len() {
            let kind = self.slots[idx].kind;
            if kind == Kind::Free {
                continue;
            }
            if now >= self.slots[idx].deadline_ns {
                self.fail(idx, now, left, alloc, out);
                continue;
            }
            let s = &mut self.slots[idx];
            if kind == Kind::Tcp && s.rto_at != 0 && now >= s.rto_at {
                if *left == 0 {
                    next = now;
                    continue;
                }
                s.retries += 1;
                s.snd_nxt = s.snd_una;
                s.rto_at = 0;
                self.stats.retransmits += 1;
                let ctx = Ctx {
                    addrs: &self.addrs,
                    cfg: &self.cfg,
                };
                tcp_pump(s, &ctx, &mut self.stats, now, left, alloc, out);
            }
            next = next.min(s.deadline_ns);
            if s.rto_at != 0 {
                next = next.min(s.rto_at);
            }
        }
        self.next_timer_ns = next;
    }

    fn fail<B: PacketBuf>(
        &mut self,
        idx: usize,
        now: u64,
        left: &mut usize,
        alloc: &mut impl FrameAlloc<B>,
        out: &mut impl FnMut(B),
    ) {
        let s = &self.slots[idx];
        match s.kind {
            Kind::Tcp => {
                self.stats.tcp_failed += 1;
                if !s.resp_ok && !s.resp_done {
                    self.stats.responses_wrong += 1;
                }
                if s.established && *left > 0 {
                    let ctx = Ctx {
                        addrs: &self.addrs,
                        cfg: &self.cfg,
                    };
                    let seg = TcpSeg {
                        sport: s.port,
                        dport: self.cfg.tcp_port,
                        seq: s.snd_nxt,
                        ack: 0,
                        flags: tcp_flags::RST,
                        window: 0,
                        mss: None,
                        payload: &[],
                    };
                    let r = frame::tcp(alloc, &ctx.hdr(s.v6), &seg);
                    emit(r, &mut self.stats, left, out);
                }
            }
            Kind::Udp => self.stats.udp_lost += 1,
            Kind::Icmp => self.stats.icmp_lost += 1,
            Kind::Free => return,
        }
        self.release(idx, now);
    }

    /// Start transaction `next_txn`; false when no port or buffer was available.
    fn open<B: PacketBuf>(
        &mut self,
        now: u64,
        left: &mut usize,
        alloc: &mut impl FrameAlloc<B>,
        out: &mut impl FnMut(B),
    ) -> bool {
        let Some(port) = self.take_port(now) else {
            return false;
        };
        let Some(&idx) = self.free.last() else {
            return false;
        };
        let idx = idx as usize;
        let txn = self.next_txn;
        let kind = self.kind_of(txn);
        let v6 = self.addrs.v6.is_some()
            && self.cfg.ipv6_every > 0
            && (txn + 1).is_multiple_of(u64::from(self.cfg.ipv6_every));
        let ctx = Ctx {
            addrs: &self.addrs,
            cfg: &self.cfg,
        };
        let mut s = Slot::free();
        s.kind = kind;
        s.txn = txn;
        s.port = port;
        s.v6 = v6;
        s.start_ns = now;
        s.deadline_ns = now.saturating_add(self.cfg.timeout_ns);
        let sent = match kind {
            Kind::Tcp => {
                s.iss = mix64(self.cfg.seed ^ mix64(txn ^ 0x155)) as u32;
                s.snd_una = s.iss;
                s.snd_nxt = s.iss;
                s.snd_max = s.iss;
                s.req_key = content::request_key(self.cfg.seed, txn);
                s.req_len = content::request_len(&self.cfg.request_bytes, s.req_key) as u32;
                let (cip, vip) = ctx.ips16(v6);
                let tuple = content::tuple_hash(&cip, port, &vip, self.cfg.tcp_port);
                s.resp_hash = content::request_hash(s.req_key, s.req_len as usize, tuple);
                tcp_pump(&mut s, &ctx, &mut self.stats, now, left, alloc, out);
                s.snd_nxt != s.iss
            }
            Kind::Udp => {
                let len = dgram_len(&self.cfg, self.cfg.seed, txn);
                let mut buf = [0u8; MAX_DATAGRAM];
                content::fill_datagram(self.cfg.seed, txn, &mut buf[..len]);
                s.dgram_len = len as u16;
                let r = frame::udp(alloc, &ctx.hdr(v6), port, self.cfg.udp_port, &buf[..len]);
                emit(r, &mut self.stats, left, out)
            }
            Kind::Icmp => {
                let mut buf = [0u8; ICMP_PAYLOAD];
                content::fill_datagram(self.cfg.seed, txn, &mut buf);
                let r = frame::icmp_echo(alloc, &ctx.hdr(v6), false, port, txn as u16, &buf);
                emit(r, &mut self.stats, left, out)
            }
            Kind::Free => false,
        };
        if !sent {
            // Nothing went out: give the port back (at the cursor's next pass) and retry later.
            return false;
        }
        match kind {
            Kind::Tcp => self.stats.tcp_opened += 1,
            Kind::Udp => {
                self.stats.udp_sent += 1;
                self.stats.bytes_sent += u64::from(s.dgram_len);
            }
            _ => self.stats.icmp_sent += 1,
        }
        let wake = if s.rto_at != 0 {
            s.rto_at.min(s.deadline_ns)
        } else {
            s.deadline_ns
        };
        self.next_timer_ns = self.next_timer_ns.min(wake);
        self.free.pop();
        self.slots[idx] = s;
        if let Some(pi) = self.port_index(port) {
            self.ports[pi].slot = idx as u32;
        }
        self.next_txn += 1;
        true
    }

    /// Handle one frame from the VM side; reactions (ACKs, requests, FINs) go to `out`.
    pub fn on_rx<B: PacketBuf>(
        &mut self,
        frame: &B,
        now_ns: u64,
        alloc: &mut impl FrameAlloc<B>,
        out: &mut impl FnMut(B),
    ) {
        self.stats.rx_frames += 1;
        let data = frame.data();
        let Ok(info) = crate::wire::parse(data) else {
            self.stats.rx_malformed += 1;
            return;
        };
        let v6 = info.l3 == L3Kind::Ipv6;
        let ours = data.get(..6) == Some(&self.addrs.client_mac[..])
            && !info.fragment
            && match (info.l3, self.addrs.v6) {
                (L3Kind::Ipv4, _) => {
                    info.dst_ip[..4] == self.addrs.client_ip.octets()
                        && info.src_ip[..4] == self.addrs.vm_ip.octets()
                }
                (L3Kind::Ipv6, Some(p)) => {
                    info.dst_ip == p.client.octets() && info.src_ip == p.vm.octets()
                }
                _ => false,
            };
        if !ours {
            self.stats.rx_ignored += 1;
            return;
        }
        if !frame::checksums_ok(data, &info, frame.l4_csum_partial()) {
            self.stats.rx_bad_checksum += 1;
            return;
        }
        let (want, port) = match info.ip_proto {
            IPPROTO_TCP if info.src_port == self.cfg.tcp_port => (Kind::Tcp, info.dst_port),
            IPPROTO_UDP if info.src_port == self.cfg.udp_port => (Kind::Udp, info.dst_port),
            IPPROTO_ICMP | IPPROTO_ICMPV6 if frame::is_echo(&info, true) => {
                (Kind::Icmp, info.icmp_echo_id)
            }
            _ => {
                self.stats.rx_ignored += 1;
                return;
            }
        };
        let slot = self
            .port_index(port)
            .map(|pi| self.ports[pi].slot)
            .filter(|&s| s != NO_SLOT)
            .map(|s| s as usize)
            .filter(|&s| self.slots[s].kind == want && self.slots[s].v6 == v6);
        let Some(idx) = slot else {
            if want == Kind::Tcp {
                self.time_wait_ack(&info, v6, alloc, out);
            }
            self.stats.rx_unmatched += 1;
            return;
        };
        match want {
            Kind::Tcp => {
                if let Some(t) = info.tcp {
                    self.on_tcp(idx, data, &info, t, now_ns, alloc, out);
                }
            }
            Kind::Udp => self.on_udp(idx, info.payload(data), now_ns),
            Kind::Icmp => {
                let seq = frame::icmp_echo_seq(data, &info).unwrap_or(0);
                self.on_icmp(idx, seq, info.payload(data), now_ns);
            }
            Kind::Free => {}
        }
    }

    /// A FIN for a connection we already finished (our last ACK was lost): ACK it again, as a
    /// socket in TIME_WAIT would.
    fn time_wait_ack<B: PacketBuf>(
        &mut self,
        info: &PacketInfo,
        v6: bool,
        alloc: &mut impl FrameAlloc<B>,
        out: &mut impl FnMut(B),
    ) {
        let Some(t) = info.tcp else { return };
        if t.flags & tcp_flags::FIN == 0 || t.flags & (tcp_flags::RST | tcp_flags::SYN) != 0 {
            return;
        }
        let ctx = Ctx {
            addrs: &self.addrs,
            cfg: &self.cfg,
        };
        let seg = TcpSeg {
            sport: info.dst_port,
            dport: info.src_port,
            seq: t.ack,
            ack: t.seq.wrapping_add(info.payload_len() as u32 + 1),
            flags: tcp_flags::ACK,
            window: WINDOW,
            mss: None,
            payload: &[],
        };
        let r = frame::tcp(alloc, &ctx.hdr(v6), &seg);
        let mut unlimited = usize::MAX;
        emit(r, &mut self.stats, &mut unlimited, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_tcp<B: PacketBuf>(
        &mut self,
        idx: usize,
        data: &[u8],
        info: &PacketInfo,
        t: TcpInfo,
        now: u64,
        alloc: &mut impl FrameAlloc<B>,
        out: &mut impl FnMut(B),
    ) {
        let ctx = Ctx {
            addrs: &self.addrs,
            cfg: &self.cfg,
        };
        let stats = &mut self.stats;
        let s = &mut self.slots[idx];
        let mut budget = usize::MAX;
        if t.flags & tcp_flags::RST != 0 {
            if s.established && t.seq.wrapping_sub(s.rcv_nxt) >= u32::from(WINDOW) {
                stats.rx_unmatched += 1; // out-of-window RST: ignore
                return;
            }
            let acks_syn = t.flags & tcp_flags::ACK != 0 && t.ack == s.iss.wrapping_add(1);
            if !s.established && !acks_syn {
                stats.rx_unmatched += 1;
                return;
            }
            stats.tcp_reset += 1;
            if !s.resp_done && !s.resp_ok {
                stats.responses_wrong += 1;
            }
            self.release(idx, now);
            return;
        }
        if t.flags & tcp_flags::SYN != 0 {
            if t.flags & tcp_flags::ACK == 0 {
                stats.rx_unmatched += 1;
                return;
            }
            if !s.established {
                if t.ack != s.iss.wrapping_add(1) {
                    stats.rx_unmatched += 1;
                    return;
                }
                s.established = true;
                s.rcv_nxt = t.seq.wrapping_add(1);
                s.snd_una = t.ack;
                s.snd_nxt = seq::max(s.snd_nxt, s.snd_una);
                s.peer_wnd = t.window;
                let own = own_mss(ctx.cfg, s.v6);
                s.peer_mss = frame::tcp_mss(data, info).unwrap_or(536).clamp(64, own);
                s.retries = 0;
                s.rto_at = 0;
                // The handshake's own ACK, then the request (a lost ACK is covered by the
                // request segments, which carry the same ACK).
                let seg = s.ack_segment(&ctx);
                emit(
                    frame::tcp(alloc, &ctx.hdr(s.v6), &seg),
                    stats,
                    &mut budget,
                    out,
                );
                tcp_pump(s, &ctx, stats, now, &mut budget, alloc, out);
            } else {
                // Duplicate SYN-ACK: our ACK was lost; ACK again.
                stats.dup_segments += 1;
                s.ack_due = true;
                tcp_pump(s, &ctx, stats, now, &mut budget, alloc, out);
            }
            return;
        }
        if !s.established {
            stats.rx_unmatched += 1;
            return;
        }
        if t.flags & tcp_flags::ACK != 0 {
            s.peer_wnd = t.window;
            if seq::gt(t.ack, s.snd_una) && seq::le(t.ack, s.snd_max) {
                s.snd_una = t.ack;
                if seq::lt(s.snd_nxt, s.snd_una) {
                    s.snd_nxt = s.snd_una;
                }
                s.retries = 0;
                s.rto_at = if s.snd_una == s.snd_max {
                    0
                } else {
                    now + ctx.cfg.rto_ns
                };
            }
        }
        let payload = info.payload(data);
        let len = payload.len() as u32;
        let end = t.seq.wrapping_add(len);
        if len > 0 {
            if seq::le(t.seq, s.rcv_nxt) && seq::gt(end, s.rcv_nxt) {
                let skip = s.rcv_nxt.wrapping_sub(t.seq) as usize;
                let fresh = &payload[skip..];
                stats.bytes_received += fresh.len() as u64;
                verify_response(s, fresh);
                s.rcv_nxt = end;
            } else {
                stats.dup_segments += 1;
            }
            s.ack_due = true;
        }
        if t.flags & tcp_flags::FIN != 0 {
            if !s.peer_fin && end == s.rcv_nxt {
                s.peer_fin = true;
                s.rcv_nxt = s.rcv_nxt.wrapping_add(1);
            }
            s.ack_due = true;
        }
        if !s.resp_done {
            let complete = s.resp_len != 0 && s.resp_got >= s.resp_len;
            if complete || s.peer_fin {
                s.resp_done = true;
                let right = complete && s.resp_ok && s.resp_got == s.resp_len;
                stats.response(Kind::Tcp, right, s.start_ns, now);
            }
        }
        tcp_pump(s, &ctx, stats, now, &mut budget, alloc, out);
        if s.peer_fin && s.fin_sent() && s.snd_una == s.snd_max {
            stats.tcp_completed += 1;
            self.release(idx, now);
        } else if s.rto_at != 0 {
            self.next_timer_ns = self.next_timer_ns.min(s.rto_at);
        }
    }

    fn on_udp(&mut self, idx: usize, payload: &[u8], now: u64) {
        let s = &self.slots[idx];
        if payload.get(..content::DGRAM_ID_LEN) != Some(&s.txn.to_be_bytes()[..]) {
            self.stats.rx_unmatched += 1;
            return;
        }
        let len = usize::from(s.dgram_len);
        let mut want = [0u8; MAX_DATAGRAM];
        content::fill_datagram(self.cfg.seed, s.txn, &mut want[..len]);
        content::udp_transform(&mut want[..len]);
        self.stats.udp_answered += 1;
        self.stats.bytes_received += payload.len() as u64;
        self.stats
            .response(Kind::Udp, payload == &want[..len], s.start_ns, now);
        self.release(idx, now);
    }

    fn on_icmp(&mut self, idx: usize, seq: u16, payload: &[u8], now: u64) {
        let s = &self.slots[idx];
        if seq != s.txn as u16 {
            self.stats.rx_unmatched += 1;
            return;
        }
        let mut want = [0u8; ICMP_PAYLOAD];
        content::fill_datagram(self.cfg.seed, s.txn, &mut want);
        self.stats.icmp_answered += 1;
        self.stats
            .response(Kind::Icmp, payload == want, s.start_ns, now);
        self.release(idx, now);
    }
}

/// Check new in-order response bytes against the expected response.
fn verify_response(s: &mut Slot, mut bytes: &[u8]) {
    while (s.resp_got as usize) < FRAME_HDR && !bytes.is_empty() {
        s.resp_hdr[s.resp_got as usize] = bytes[0];
        s.resp_got += 1;
        bytes = &bytes[1..];
        if s.resp_got as usize == FRAME_HDR {
            s.resp_len = u32::from_be_bytes(s.resp_hdr);
            if (s.resp_len as usize) < FRAME_HDR {
                s.resp_ok = false;
                s.resp_len = FRAME_HDR as u32;
            }
        }
    }
    let mut want = [0u8; MAX_SEGMENT];
    while !bytes.is_empty() {
        let off = s.resp_got as usize;
        let avail = (s.resp_len as usize).saturating_sub(off);
        if avail == 0 {
            s.resp_ok = false; // bytes past the announced end
            s.resp_got = s.resp_got.saturating_add(bytes.len() as u32);
            return;
        }
        let n = bytes.len().min(avail).min(want.len());
        content::fill_response(s.resp_hash, s.resp_len as usize, off, &mut want[..n]);
        if bytes[..n] != want[..n] {
            s.resp_ok = false;
        }
        s.resp_got += n as u32;
        bytes = &bytes[n..];
    }
}
