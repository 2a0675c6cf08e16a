//! Shared fixtures for the compare tests: literal frame builders and a recording Output.
#![allow(dead_code)]

use colo_proxy::buf::{PacketBuf, VecBuf};
use colo_proxy::compare::{
    Comparator, CompareConfig, DivergenceEvent, Output, PrimaryDrop, Reason, Release,
    SecondaryFree, Side,
};
use etherparse::{PacketBuilder, TcpOptionElement};

pub const MS: u64 = 1_000_000;
pub const CLIENT: [u8; 4] = [192, 168, 1, 10];
pub const SERVER: [u8; 4] = [10, 0, 0, 2];
pub const CPORT: u16 = 40000;
pub const SPORT: u16 = 80;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// A TCP segment from the guest (server 10.0.0.2:80) to the client, built with etherparse:
/// Ethernet II (guest MAC → gateway MAC) / IPv4 (TTL 64, DF) / TCP (window 29200).
pub fn tcp(seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_opts(seq, ack, flags, payload, &[])
}

/// Like [`tcp`] with TCP options (e.g. timestamps that differ between the VMs).
pub fn tcp_opts(
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
    opts: &[TcpOptionElement],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 0xfe])
        .ipv4(SERVER, CLIENT, 64)
        .tcp(SPORT, CPORT, seq, 29200);
    if flags & ACK != 0 {
        b = b.ack(ack);
    }
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & FIN != 0 {
        b = b.fin();
    }
    if flags & RST != 0 {
        b = b.rst();
    }
    if flags & PSH != 0 {
        b = b.psh();
    }
    if !opts.is_empty() {
        b = b.options(opts).unwrap();
    }
    let mut f = Vec::new();
    b.write(&mut f, payload).unwrap();
    f
}

/// The secondary's copy of a frame: same bytes except the fields a second VM changes anyway —
/// IPv4 ID (bytes 18–19), TTL (22), a stale IP checksum (24–25), TCP window (48–49, made larger) and the
/// TCP checksum (50–51). The compare must ignore all of them.
pub fn as_secondary(mut f: Vec<u8>) -> Vec<u8> {
    f[18] ^= 0x5a; // IP identification
    f[19] ^= 0xa5;
    f[22] = 63; // TTL
    f[24] ^= 0xff; // IP header checksum (now wrong)
    if f[23] == 6 {
        f[48] ^= 0x01; // TCP window (larger: the compare must not lower the PVM's)
        f[50] ^= 0x77; // TCP checksum
    }
    f
}

/// UDP datagram guest → client, Ethernet II / IPv4 / UDP 5353 → 53000.
pub fn udp(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 0xfe])
        .ipv4(SERVER, CLIENT, 64)
        .udp(5353, 53000)
        .write(&mut f, payload)
        .unwrap();
    f
}

/// One `capture` call: the event and copies of the packets handed over.
pub type Capture = (DivergenceEvent, Option<Vec<u8>>, Option<Vec<u8>>);

/// Records everything the engine outputs, in order.
#[derive(Default)]
pub struct Rec {
    pub released: Vec<(Vec<u8>, Release)>,
    pub dropped: Vec<(Vec<u8>, PrimaryDrop)>,
    pub freed: Vec<(Vec<u8>, SecondaryFree)>,
    pub events: Vec<DivergenceEvent>,
    pub captures: Vec<Capture>,
}

impl Output<VecBuf> for Rec {
    fn release(&mut self, pkt: VecBuf, how: Release) {
        self.released.push((pkt.to_vec(), how));
    }
    fn drop_primary(&mut self, pkt: VecBuf, why: PrimaryDrop) {
        self.dropped.push((pkt.to_vec(), why));
    }
    fn free_secondary(&mut self, pkt: VecBuf, how: SecondaryFree) {
        self.freed.push((pkt.to_vec(), how));
    }
    fn event(&mut self, ev: DivergenceEvent) {
        self.events.push(ev);
    }
    fn capture(&mut self, ev: &DivergenceEvent, p: Option<&VecBuf>, s: Option<&VecBuf>) {
        self.captures.push((
            *ev,
            p.map(|b| b.data().to_vec()),
            s.map(|b| b.data().to_vec()),
        ));
    }
}

impl Rec {
    /// Release reasons in order.
    pub fn hows(&self) -> Vec<Release> {
        self.released.iter().map(|r| r.1).collect()
    }
    /// Released frames in order.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        self.released.iter().map(|r| r.0.clone()).collect()
    }
    /// Releases that were neither compared, committed by a checkpoint, bypassed, flushed at
    /// failover nor uncomparable by rule (output commit: must stay empty without
    /// `release_after_ns`).
    pub fn unverified(&self) -> Vec<Release> {
        self.hows()
            .into_iter()
            .filter(|h| {
                !matches!(
                    h,
                    Release::Matched
                        | Release::Retransmit
                        | Release::Checkpoint
                        | Release::Bypass
                        | Release::Uncomparable(_)
                        | Release::Flush
                )
            })
            .collect()
    }
    /// Drop reasons in order.
    pub fn drops(&self) -> Vec<PrimaryDrop> {
        self.dropped.iter().map(|r| r.1).collect()
    }
    /// Event reasons in order.
    pub fn reasons(&self) -> Vec<Reason> {
        self.events.iter().map(|e| e.reason).collect()
    }
    /// The concatenated TCP payloads of released frames (by IP length, not frame length).
    pub fn released_stream(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for (f, _) in &self.released {
            let i = colo_proxy::wire::parse(f).unwrap();
            v.extend_from_slice(i.payload(f));
        }
        v
    }
}

/// A comparator plus recorder with a clock.
pub struct H {
    pub c: Comparator<VecBuf>,
    pub r: Rec,
    pub now: u64,
}

impl H {
    pub fn new() -> H {
        H::with(CompareConfig::default())
    }
    pub fn with(cfg: CompareConfig) -> H {
        H {
            c: Comparator::new(cfg),
            r: Rec::default(),
            now: 1_000 * MS,
        }
    }
    pub fn p(&mut self, f: &[u8]) {
        self.c
            .process(Side::Primary, VecBuf::from_slice(f), self.now, &mut self.r);
        assert!(self.c.counters().balanced(), "{:?}", self.c.counters());
    }
    pub fn s(&mut self, f: &[u8]) {
        self.c.process(
            Side::Secondary,
            VecBuf::from_slice(f),
            self.now,
            &mut self.r,
        );
        assert!(self.c.counters().balanced(), "{:?}", self.c.counters());
    }
    /// Both sides, the secondary copy with its own IP ID/TTL/window/checksums.
    pub fn both(&mut self, f: &[u8]) {
        self.p(f);
        self.s(&as_secondary(f.to_vec()));
    }
    pub fn advance(&mut self, ns: u64) {
        self.now += ns;
        self.c.tick(self.now, &mut self.r);
        assert!(self.c.counters().balanced());
    }
    pub fn checkpoint(&mut self) {
        self.c.checkpoint_done(self.now, &mut self.r);
        assert!(self.c.counters().balanced());
    }
    pub fn queued(&self) -> (u64, u64) {
        let k = self.c.counters();
        (k.queued_primary, k.queued_secondary)
    }
}
