//! The guest's network stack: a deterministic minimal TCP server, a UDP responder and ICMP echo.
//!
//! Deterministic: output depends only on input frames, `now_ns` and the config. The server ISN is
//! `hash(isn_seed, 4-tuple)`, so a PVM and an SVM with different `isn_seed`s use different
//! sequence spaces but send the same payload bytes, the same flags and the same number of
//! segments at the same moments. The connection table is a `HashMap` with a fixed hasher and a
//! preallocated capacity: same insert history ⇒ same iteration order (so `tick` emits in the same
//! order on both), and no allocation per packet.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::ops::RangeInclusive;

use crate::buf::PacketBuf;
use crate::wire::packet::{
    tcp_flags, L3Kind, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};
use crate::wire::seq;

use super::content::{self, mix64, RequestHash, Rng, FRAME_HDR};
use super::frame::{self, Hdr, Ips, TcpSeg};
use super::{emit, Addresses, FrameAlloc, MAX_DATAGRAM, MAX_SEGMENT, MAX_SEGMENT_V6, WINDOW};

/// Configuration of one simulated VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    /// Seed of the server ISN hash; PVM and SVM differ, like two real kernels.
    pub isn_seed: u64,
    /// TCP port the server listens on.
    pub tcp_port: u16,
    /// UDP port the responder answers on.
    pub udp_port: u16,
    /// Response sizes (bytes, including the 4-byte length header).
    pub response_bytes: RangeInclusive<usize>,
    /// Probability that a response (TCP payload or UDP reply) gets one byte changed; 0 on the PVM.
    pub divergence_rate: f64,
    /// Seed of the divergence RNG.
    pub seed: u64,
    /// MSS the server advertises and uses (capped to the frame size).
    pub mss: usize,
    /// Most concurrent connections; SYNs beyond it are dropped (counted).
    pub max_connections: usize,
    /// Retransmission timeout (doubles per retry).
    pub rto_ns: u64,
    /// Retransmissions of the same data before the connection is dropped.
    pub max_retries: u32,
    /// A connection with no input for this long is dropped.
    pub idle_timeout_ns: u64,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            isn_seed: 1,
            tcp_port: 80,
            udp_port: 7000,
            response_bytes: 64..=4096,
            divergence_rate: 0.0,
            seed: 1,
            mss: MAX_SEGMENT,
            max_connections: 16384,
            rto_ns: 20_000_000,
            max_retries: 8,
            idle_timeout_ns: 10_000_000_000,
        }
    }
}

/// Counters of one VM. Every received frame lands in exactly one of `rx_malformed`,
/// `rx_bad_checksum`, `rx_ignored`, `rx_tcp`, `rx_udp`, `rx_icmp`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmStats {
    /// Frames passed to `on_rx`.
    pub rx_frames: u64,
    /// Frames that did not parse.
    pub rx_malformed: u64,
    /// Frames with a bad IPv4 header or L4 checksum.
    pub rx_bad_checksum: u64,
    /// Frames not for this VM or of an unserved protocol/port.
    pub rx_ignored: u64,
    /// TCP segments handled.
    pub rx_tcp: u64,
    /// UDP requests answered or dropped by rule.
    pub rx_udp: u64,
    /// ICMP echo requests handled.
    pub rx_icmp: u64,
    /// Connections created by a SYN.
    pub conns_opened: u64,
    /// Connections closed by the final ACK.
    pub conns_closed: u64,
    /// Connections closed by a client RST.
    pub conns_reset: u64,
    /// Connections replaced by a SYN with a new ISN on the same 4-tuple.
    pub conns_replaced: u64,
    /// Connections dropped after `idle_timeout_ns` or `max_retries`.
    pub conns_aged: u64,
    /// SYNs dropped because the table was full.
    pub table_full: u64,
    /// Duplicate SYNs answered with the same SYN-ACK.
    pub dup_syns: u64,
    /// RSTs sent for segments of unknown connections.
    pub rst_sent: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// TCP data segments sent (first transmissions and retransmissions).
    pub tx_data_segments: u64,
    /// RTO expiries (go-back-N retransmission rounds).
    pub retransmits: u64,
    /// Segments resent after three duplicate ACKs.
    pub fast_retransmits: u64,
    /// ACKs sent for duplicate or out-of-order segments.
    pub dup_acks: u64,
    /// Requests completely received (responses started).
    pub requests: u64,
    /// UDP replies sent.
    pub udp_replies: u64,
    /// ICMP echo replies sent.
    pub icmp_replies: u64,
    /// Responses with an injected changed byte.
    pub divergences: u64,
    /// Frames not sent because the allocator was empty or the buffer too small.
    pub alloc_failures: u64,
    /// `restore_from` calls.
    pub restores: u64,
}

/// A connection's identity on the VM (its own address and port are fixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnKey {
    v6: bool,
    client_ip: [u8; 16],
    client_port: u16,
}

impl Hash for ConnKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&self.client_ip[..8]);
        b.copy_from_slice(&self.client_ip[8..]);
        state.write_u64(
            u64::from_le_bytes(a)
                ^ u64::from_le_bytes(b).rotate_left(17)
                ^ (u64::from(self.client_port) << 48)
                ^ u64::from(self.v6),
        );
    }
}

/// A fixed (unseeded) hasher, so PVM and SVM tables iterate in the same order.
#[derive(Debug, Default, Clone, Copy)]
struct FixedHasher(u64);

impl Hasher for FixedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix64(self.0 ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = mix64(self.0 ^ x);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type ConnMap = HashMap<ConnKey, Conn, BuildHasherDefault<FixedHasher>>;

/// Server side of one TCP connection. Sequence layout: SYN at `iss`, response bytes
/// `iss+1 .. iss+1+resp_len`, FIN right after.
#[derive(Debug, Clone)]
struct Conn {
    peer_mac: [u8; 6],
    established: bool,
    iss: u32,
    snd_una: u32,
    snd_nxt: u32,
    snd_max: u32,
    irs: u32,
    rcv_nxt: u32,
    peer_wnd: u16,
    mss: u16,
    req: RequestHash,
    req_hdr: [u8; FRAME_HDR],
    req_got: u32,
    req_len: u32,
    responding: bool,
    resp_hash: u64,
    resp_len: u32,
    corrupt_at: u32,
    corrupt_xor: u8,
    fin_rcvd: bool,
    ack_due: bool,
    dup_acks: u8,
    fast_rexmit: bool,
    rto_at: u64,
    retries: u32,
    last_rx_ns: u64,
    dead: bool,
}

impl Conn {
    fn data_end(&self) -> u32 {
        let len = if self.responding { self.resp_len } else { 0 };
        self.iss.wrapping_add(1).wrapping_add(len)
    }
    fn fin_sent(&self) -> bool {
        self.fin_rcvd && seq::gt(self.snd_max, self.data_end())
    }
    fn has_output(&self) -> bool {
        self.ack_due
            || (!self.established && self.snd_nxt == self.iss)
            || (self.fin_rcvd && self.snd_nxt == self.data_end())
            || (seq::lt(self.snd_nxt, self.data_end())
                && self.snd_nxt.wrapping_sub(self.snd_una) < u32::from(self.peer_wnd))
    }
    /// The response bytes from offset `off` into `buf`, with this connection's injected
    /// divergence when it falls there.
    fn response_at(&self, off: usize, buf: &mut [u8]) {
        content::fill_response(self.resp_hash, self.resp_len as usize, off, buf);
        let at = self.corrupt_at as usize;
        if self.corrupt_at != u32::MAX && (off..off + buf.len()).contains(&at) {
            buf[at - off] ^= self.corrupt_xor;
        }
    }
}

/// Immutable context a connection's output needs.
struct Ctx<'a> {
    addrs: &'a Addresses,
    cfg: &'a VmConfig,
}

/// The simulated guest.
#[derive(Debug, Clone)]
pub struct VmSim {
    addrs: Addresses,
    cfg: VmConfig,
    rng: Rng,
    conns: ConnMap,
    stats: VmStats,
    next_scan_ns: u64,
    seen_alloc_failures: u64,
}

impl super::SendCounts for VmStats {
    fn sent(&mut self) {
        self.tx_frames += 1;
    }
    fn alloc_failed(&mut self) {
        self.alloc_failures += 1;
    }
}

/// A received frame addressed to this VM, for its handlers: the bytes, their parse and the
/// sender's MAC (replies go back to it).
#[derive(Clone, Copy)]
struct Rx<'a> {
    data: &'a [u8],
    info: &'a crate::wire::PacketInfo,
    peer_mac: [u8; 6],
}

impl<'a> Rx<'a> {
    /// The L4 payload.
    fn payload(&self) -> &'a [u8] {
        self.info.payload(self.data)
    }
}

fn conn_hdr(ctx: &Ctx<'_>, key: &ConnKey, peer_mac: [u8; 6]) -> Hdr {
    let ips = if key.v6 {
        let vm = ctx.addrs.v6.map(|p| p.vm.octets()).unwrap_or([0; 16]);
        Ips::V6 {
            src: vm,
            dst: key.client_ip,
        }
    } else {
        let mut dst = [0u8; 4];
        dst.copy_from_slice(&key.client_ip[..4]);
        Ips::V4 {
            src: ctx.addrs.vm_ip.octets(),
            dst,
        }
    };
    Hdr {
        src_mac: ctx.addrs.vm_mac,
        dst_mac: peer_mac,
        ips,
    }
}

/// Send everything the connection may send now: SYN-ACK, response data within the peer's
/// window, FIN, or a pure ACK when one is due and nothing else carried it.
fn pump<B: PacketBuf>(
    c: &mut Conn,
    key: &ConnKey,
    ctx: &Ctx<'_>,
    stats: &mut VmStats,
    now: u64,
    alloc: &mut impl FrameAlloc<B>,
    out: &mut impl FnMut(B),
) {
    let h = conn_hdr(ctx, key, c.peer_mac);
    let mut seg = TcpSeg {
        sport: ctx.cfg.tcp_port,
        dport: key.client_port,
        seq: c.snd_nxt,
        ack: c.rcv_nxt,
        flags: tcp_flags::ACK,
        window: WINDOW,
        mss: None,
        payload: &[],
    };
    let mut sent_any = false;
    if !c.established && c.snd_nxt == c.iss {
        seg.flags = tcp_flags::SYN | tcp_flags::ACK;
        seg.mss = Some(c.mss);
        if !emit(frame::tcp(alloc, &h, &seg), stats, out) {
            return;
        }
        seg.mss = None;
        c.snd_nxt = c.iss.wrapping_add(1);
        sent_any = true;
    }
    if c.established {
        let data_end = c.data_end();
        let base = c.iss.wrapping_add(1);
        let mut chunk = [0u8; MAX_SEGMENT];
        // Fast retransmit (3 duplicate ACKs): resend the first unacknowledged segment now.
        if c.fast_rexmit && seq::lt(c.snd_una, data_end) {
            c.fast_rexmit = false;
            let n = data_end.wrapping_sub(c.snd_una).min(u32::from(c.mss)) as usize;
            let payload = &mut chunk[..n];
            c.response_at(c.snd_una.wrapping_sub(base) as usize, payload);
            let data = TcpSeg {
                seq: c.snd_una,
                payload,
                ..seg
            };
            if emit(frame::tcp(alloc, &h, &data), stats, out) {
                stats.tx_data_segments += 1;
                stats.fast_retransmits += 1;
                sent_any = true;
            }
        }
        while seq::lt(c.snd_nxt, data_end) {
            let inflight = c.snd_nxt.wrapping_sub(c.snd_una);
            let wnd = u32::from(c.peer_wnd);
            if inflight >= wnd {
                break;
            }
            let n = (data_end.wrapping_sub(c.snd_nxt))
                .min(u32::from(c.mss))
                .min(wnd - inflight) as usize;
            let payload = &mut chunk[..n];
            c.response_at(c.snd_nxt.wrapping_sub(base) as usize, payload);
            let mut flags = tcp_flags::ACK;
            if c.snd_nxt.wrapping_add(n as u32) == data_end {
                flags |= tcp_flags::PSH;
            }
            let data = TcpSeg {
                seq: c.snd_nxt,
                flags,
                payload,
                ..seg
            };
            if !emit(frame::tcp(alloc, &h, &data), stats, out) {
                break;
            }
            stats.tx_data_segments += 1;
            c.snd_nxt = c.snd_nxt.wrapping_add(n as u32);
            sent_any = true;
        }
        if c.fin_rcvd && c.snd_nxt == data_end {
            seg.seq = c.snd_nxt;
            seg.flags = tcp_flags::FIN | tcp_flags::ACK;
            if emit(frame::tcp(alloc, &h, &seg), stats, out) {
                c.snd_nxt = c.snd_nxt.wrapping_add(1);
                sent_any = true;
            }
        }
    }
    if c.ack_due && !sent_any {
        seg.seq = c.snd_nxt;
        seg.flags = tcp_flags::ACK;
        sent_any = emit(frame::tcp(alloc, &h, &seg), stats, out);
    }
    if sent_any {
        c.ack_due = false;
    }
    c.snd_max = seq::max(c.snd_max, c.snd_nxt);
    if c.snd_una != c.snd_max && c.rto_at == 0 {
        c.rto_at = now + (ctx.cfg.rto_ns << c.retries.min(6));
    }
}

impl VmSim {
    /// A VM with an empty connection table sized for `cfg.max_connections`.
    pub fn new(addrs: Addresses, cfg: VmConfig) -> Self {
        let conns = ConnMap::with_capacity_and_hasher(cfg.max_connections, Default::default());
        VmSim {
            addrs,
            rng: Rng::new(cfg.seed),
            cfg,
            conns,
            stats: VmStats::default(),
            next_scan_ns: 0,
            seen_alloc_failures: 0,
        }
    }

    /// Counters.
    pub fn stats(&self) -> &VmStats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// COLO checkpoint: become a copy of the primary's guest state: connections (sequence spaces
    /// included) and guest config, ISN seed too (a checkpoint copies the whole memory image), so
    /// from here on this VM emits exactly the primary's frames. Kept: this VM's divergence rate,
    /// its RNG and its counters.
    pub fn restore_from(&mut self, primary: &VmSim) {
        let (rate, seed) = (self.cfg.divergence_rate, self.cfg.seed);
        self.cfg.clone_from(&primary.cfg);
        self.cfg.divergence_rate = rate;
        self.cfg.seed = seed;
        self.addrs = primary.addrs;
        self.conns.clone_from(&primary.conns);
        self.next_scan_ns = primary.next_scan_ns;
        self.stats.restores += 1;
    }

    /// Handle one frame from the wire; replies go to `out`.
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
        let dst_mac = data.get(..6).unwrap_or(&[]);
        let for_us = dst_mac == self.addrs.vm_mac
            && !info.fragment
            && match info.l3 {
                L3Kind::Ipv4 => info.dst_ip[..4] == self.addrs.vm_ip.octets(),
                L3Kind::Ipv6 => self.addrs.v6.is_some_and(|p| info.dst_ip == p.vm.octets()),
                _ => false,
            };
        if !for_us {
            self.stats.rx_ignored += 1;
            return;
        }
        if !frame::checksums_ok(data, &info, frame.l4_csum_partial()) {
            self.stats.rx_bad_checksum += 1;
            return;
        }
        let mut peer_mac = [0u8; 6];
        peer_mac.copy_from_slice(&data[6..12]);
        let rx = Rx {
            data,
            info: &info,
            peer_mac,
        };
        match info.ip_proto {
            IPPROTO_TCP if info.dst_port == self.cfg.tcp_port => {
                self.stats.rx_tcp += 1;
                self.on_tcp(rx, now_ns, alloc, out);
            }
            IPPROTO_UDP if info.dst_port == self.cfg.udp_port => {
                self.stats.rx_udp += 1;
                self.on_udp(rx, alloc, out);
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 if frame::is_echo(&info, false) => {
                self.stats.rx_icmp += 1;
                self.on_icmp(rx, alloc, out);
            }
            IPPROTO_TCP => {
                // A real stack answers a closed port with RST.
                self.stats.rx_tcp += 1;
                self.send_rst(rx, alloc, out);
            }
            _ => self.stats.rx_ignored += 1,
        }
    }

    fn key_of(info: &crate::wire::PacketInfo) -> ConnKey {
        ConnKey {
            v6: info.l3 == L3Kind::Ipv6,
            client_ip: info.src_ip,
            client_port: info.src_port,
        }
    }

    fn reply_hdr(&self, rx: Rx<'_>) -> Hdr {
        conn_hdr(
            &Ctx {
                addrs: &self.addrs,
                cfg: &self.cfg,
            },
            &Self::key_of(rx.info),
            rx.peer_mac,
        )
    }

    fn send_rst<B: PacketBuf>(
        &mut self,
        rx: Rx<'_>,
        alloc: &mut impl FrameAlloc<B>,
        out: &mut impl FnMut(B),
    ) {
        let Some(t) = rx.info.tcp else { return };
        if t.flags & tcp_flags::RST != 0 {
            return;
        }
        let info = rx.info;
        // RFC 793: answer an ACK with seq = its ack; otherwise RST|ACK acking the segment.
        let mut seg = TcpSeg {
            sport: info.dst_port,
            dport: info.src_port,
            seq: 0,
            ack: 0,
            flags: tcp_flags::RST,
            window: 0,
            mss: None,
            payload: &[],
        };
        if t.flags & tcp_flags::ACK != 0 {
            seg.seq = t.ack;
        } else {
            let syn_fin =
                u32::from(t.flags & tcp_flags::SYN != 0) + u32::from(t.flags & tcp_flags::FIN != 0);
            seg.ack = t.seq.wrapping_add(info.payload_len() as u32 + syn_fin);
            seg.flags |= tcp_flags::ACK;
        }
        let h = self.reply_hdr(rx);
        if emit(frame::tcp(alloc, &h, &seg), &mut self.stats, out) {
            self.stats.rst_sent += 1;
        }
    }

    fn new_conn(&self, rx: Rx<'_>, now: u64) -> Conn {
        let info = rx.info;
        let tuple = content::tuple_hash(&info.src_ip, info.src_port, &info.dst_ip, info.dst_port);
        let iss = mix64(self.cfg.isn_seed ^ tuple) as u32;
        let irs = info.tcp.map(|t| t.seq).unwrap_or(0);
        let cap = if info.l3 == L3Kind::Ipv6 {
            MAX_SEGMENT_V6
        } else {
            MAX_SEGMENT
        };
        let own = self.cfg.mss.clamp(64, cap);
        let mss = frame::tcp_mss(rx.data, info)
            .map(|m| usize::from(m).clamp(64, own))
            .unwrap_or(536.min(own)) as u16;
        Conn {
            peer_mac: rx.peer_mac,
            established: false,
            iss,
            snd_una: iss,
            snd_nxt: iss,
            snd_max: iss,
            irs,
            rcv_nxt: irs.wrapping_add(1),
            peer_wnd: info.tcp.map(|t| t.window).unwrap_or(0),
            mss,
            req: RequestHash::new(tuple),
            req_hdr: [0; FRAME_HDR],
            req_got: 0,
            req_len: 0,
            responding: false,
            resp_hash: 0,
            resp_len: 0,
            corrupt_at: u32::MAX,
            corrupt_xor: 0,
            fin_rcvd: false,
            ack_due: false,
            dup_acks: 0,
            fast_rexmit: false,
            rto_at: 0,
            retries: 0,
            last_rx_ns: now,
            dead: false,
        }
    }

    fn on_tcp<B: PacketBuf>(
        &mut self,
        rx: Rx<'_>,
        now: u64,
        alloc: &mut impl FrameAlloc<B>,
        out: &mut impl FnMut(B),
    ) {
        let info = rx.info;
        let Some(t) = info.tcp else { return };
        let key = Self::key_of(info);
        let syn_only =
            t.flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN;
        let exists = self.conns.contains_key(&key);
        if !exists {
            if !syn_only {
                self.send_rst(rx, alloc, out);
                return;
            }
            if self.conns.len() >= self.cfg.max_connections {
                self.stats.table_full += 1;
                return;
            }
            let c = self.new_conn(rx, now);
            self.conns.insert(key, c);
            self.stats.conns_opened += 1;
        } else if syn_only {
            let irs_same = self.conns.get(&key).is_some_and(|c| c.irs == t.seq);
            if irs_same {
                self.stats.dup_syns += 1;
                if let Some(c) = self.conns.get_mut(&key) {
                    c.last_rx_ns = now;
                    if c.established {
                        c.ack_due = true;
                    } else {
                        c.snd_nxt = c.iss; // send the same SYN-ACK again
                    }
                }
            } else {
                // A new connection on a 4-tuple we still hold (its close was lost).
                let c = self.new_conn(rx, now);
                self.conns.insert(key, c);
                self.stats.conns_replaced += 1;
                self.stats.conns_opened += 1;
            }
        }
        let ctx = Ctx {
            addrs: &self.addrs,
            cfg: &self.cfg,
        };
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        c.last_rx_ns = now;
        if !syn_only {
            if t.flags & tcp_flags::RST != 0 {
                // Accept a RST inside the receive window only (RFC 5961 spirit).
                if t.seq.wrapping_sub(c.rcv_nxt) < u32::from(WINDOW) {
                    c.dead = true;
                }
            } else {
                Self::segment(
                    c,
                    info,
                    rx.data,
                    t,
                    &self.cfg,
                    &mut self.rng,
                    &mut self.stats,
                    now,
                );
            }
        }
        if c.dead {
            if t.flags & tcp_flags::RST != 0 {
                self.stats.conns_reset += 1;
            } else {
                self.stats.conns_closed += 1;
            }
            self.conns.remove(&key);
            return;
        }
        pump(c, &key, &ctx, &mut self.stats, now, alloc, out);
    }

    /// ACK and data processing of a non-SYN, non-RST segment on a known connection.
    #[allow(clippy::too_many_arguments)]
    fn segment(
        c: &mut Conn,
        info: &crate::wire::PacketInfo,
        data: &[u8],
        t: crate::wire::TcpInfo,
        cfg: &VmConfig,
        rng: &mut Rng,
        stats: &mut VmStats,
        now: u64,
    ) {
        if t.flags & tcp_flags::ACK != 0 {
            c.peer_wnd = t.window;
            let pure = info.payload_len() == 0 && t.flags & (tcp_flags::FIN | tcp_flags::SYN) == 0;
            if t.ack == c.snd_una && c.snd_una != c.snd_max && pure && c.established {
                c.dup_acks = c.dup_acks.saturating_add(1);
                if c.dup_acks == 3 {
                    c.fast_rexmit = true;
                }
            }
            if seq::gt(t.ack, c.snd_una) && seq::le(t.ack, c.snd_max) {
                c.dup_acks = 0;
                c.snd_una = t.ack;
                if seq::lt(c.snd_nxt, c.snd_una) {
                    c.snd_nxt = c.snd_una;
                }
                c.retries = 0;
                c.rto_at = if c.snd_una == c.snd_max {
                    0
                } else {
                    now + cfg.rto_ns
                };
                if !c.established && c.snd_una == c.iss.wrapping_add(1) {
                    c.established = true;
                }
            }
        }
        if !c.established {
            return;
        }
        let payload = info.payload(data);
        let len = payload.len() as u32;
        let end = t.seq.wrapping_add(len);
        if len > 0 {
            if seq::le(t.seq, c.rcv_nxt) && seq::gt(end, c.rcv_nxt) {
                let skip = c.rcv_nxt.wrapping_sub(t.seq) as usize;
                Self::consume(c, &payload[skip..], cfg, rng, stats);
                c.rcv_nxt = end;
            } else {
                stats.dup_acks += 1;
            }
            c.ack_due = true;
        }
        if t.flags & tcp_flags::FIN != 0 {
            if !c.fin_rcvd && end == c.rcv_nxt {
                c.fin_rcvd = true;
                c.rcv_nxt = c.rcv_nxt.wrapping_add(1);
            }
            c.ack_due = true;
        }
        // Final ACK of our FIN: the connection is closed.
        if c.fin_sent() && c.snd_una == c.snd_max {
            c.dead = true;
        }
    }

    /// Take in-order request bytes; start the response once the whole request is in.
    fn consume(c: &mut Conn, mut bytes: &[u8], cfg: &VmConfig, rng: &mut Rng, stats: &mut VmStats) {
        while (c.req_got as usize) < FRAME_HDR && !bytes.is_empty() {
            c.req_hdr[c.req_got as usize] = bytes[0];
            c.req.update(&bytes[..1]);
            c.req_got += 1;
            bytes = &bytes[1..];
            if c.req_got as usize == FRAME_HDR {
                c.req_len = u32::from_be_bytes(c.req_hdr).max(FRAME_HDR as u32);
            }
        }
        if c.req_len == 0 || c.responding {
            return;
        }
        let take = ((c.req_len - c.req_got) as usize).min(bytes.len());
        c.req.update(&bytes[..take]);
        c.req_got += take as u32;
        if c.req_got == c.req_len {
            stats.requests += 1;
            c.responding = true;
            c.resp_hash = c.req.value();
            c.resp_len = content::response_len(&cfg.response_bytes, c.resp_hash) as u32;
            if c.resp_len as usize > FRAME_HDR && rng.chance(cfg.divergence_rate) {
                let body = u64::from(c.resp_len) - FRAME_HDR as u64;
                c.corrupt_at = FRAME_HDR as u32 + (rng.next_u64() % body) as u32;
                c.corrupt_xor = 1 + (rng.next_u64() % 255) as u8;
                stats.divergences += 1;
            }
        }
    }

    fn on_udp<B: PacketBuf>(
        &mut self,
        rx: Rx<'_>,
        alloc: &mut impl FrameAlloc<B>,
        out: &mut impl FnMut(B),
    ) {
        let payload = rx.payload();
        if payload.len() > MAX_DATAGRAM {
            return; // counted in rx_udp; too big to echo
        }
        let mut buf = [0u8; MAX_DATAGRAM];
        let reply = &mut buf[..payload.len()];
        reply.copy_from_slice(payload);
        content::udp_transform(reply);
        if reply.len() > content::DGRAM_ID_LEN && self.rng.chance(self.cfg.divergence_rate) {
            let body = (reply.len() - content::DGRAM_ID_LEN) as u64;
            let at = content::DGRAM_ID_LEN + (self.rng.next_u64() % body) as usize;
            reply[at] ^= 1 + (self.rng.next_u64() % 255) as u8;
            self.stats.divergences += 1;
        }
        let h = self.reply_hdr(rx);
        let r = frame::udp(alloc, &h, rx.info.dst_port, rx.info.src_port, reply);
        if emit(r, &mut self.stats, out) {
            self.stats.udp_replies += 1;
        }
    }

    fn on_icmp<B: PacketBuf>(
        &mut self,
        rx: Rx<'_>,
        alloc: &mut impl FrameAlloc<B>,
        out: &mut impl FnMut(B),
    ) {
        let Some(seq) = frame::icmp_echo_seq(rx.data, rx.info) else {
            return; // unreachable: parse() checked the 8-byte echo header
        };
        let payload = rx.payload();
        let h = self.reply_hdr(rx);
        let r = frame::icmp_echo(alloc, &h, true, rx.info.icmp_echo_id, seq, payload);
        if emit(r, &mut self.stats, out) {
            self.stats.icmp_replies += 1;
        }
    }

    /// Timers: retransmit unacknowledged SYN-ACK/data/FIN after the RTO (go-back-N), resend
    /// output held back by an empty allocator, drop idle or hopeless connections. Cheap to call
    /// every loop: it scans the table at most every `rto_ns / 4`.
    pub fn tick<B: PacketBuf>(
        &mut self,
        now_ns: u64,
        alloc: &mut impl FrameAlloc<B>,
        out: &mut impl FnMut(B),
    ) {
        let starved = self.stats.alloc_failures != self.seen_alloc_failures;
        if now_ns < self.next_scan_ns && !starved {
            return;
        }
        self.seen_alloc_failures = self.stats.alloc_failures;
        self.next_scan_ns = now_ns + (self.cfg.rto_ns / 4).max(1);
        let ctx = Ctx {
            addrs: &self.addrs,
            cfg: &self.cfg,
        };
        let mut any_dead = false;
        for (key, c) in self.conns.iter_mut() {
            if now_ns.saturating_sub(c.last_rx_ns) > ctx.cfg.idle_timeout_ns {
                c.dead = true;
                any_dead = true;
                continue;
            }
            if c.rto_at != 0 && now_ns >= c.rto_at {
                c.retries += 1;
                if c.retries > ctx.cfg.max_retries {
                    c.dead = true;
                    any_dead = true;
                    continue;
                }
                self.stats.retransmits += 1;
                c.snd_nxt = c.snd_una;
                c.rto_at = 0;
                pump(c, key, &ctx, &mut self.stats, now_ns, alloc, out);
            } else if c.has_output() {
                pump(c, key, &ctx, &mut self.stats, now_ns, alloc, out);
            }
        }
        if any_dead {
            let stats = &mut self.stats;
            self.conns.retain(|_, c| {
                if c.dead {
                    stats.conns_aged += 1;
                }
                !c.dead
            });
        }
    }
}
