//! Shared helpers for the rewriter tests: a raw frame builder (VLAN, IPv4 options, IPv6
//! extension headers, TCP options at aligned or odd offsets) and an independent checksum oracle
//! (etherparse), plus a harness that checks every output frame's TCP checksum.
#![allow(dead_code)]

use colo_proxy::buf::VecBuf;
use colo_proxy::rewrite::{Direction, Outcome, Rewriter, RewriterConfig};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

pub const CLIENT_V4: [u8; 4] = [192, 168, 1, 10];
pub const VM_V4: [u8; 4] = [10, 0, 0, 5];
pub const CLIENT_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
pub const VM_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x05,
];

/// A TCP segment between the client and the VM, described field by field.
#[derive(Clone, Debug)]
pub struct Seg {
    pub from_vm: bool,
    pub v6: bool,
    pub vlan: Option<u16>,
    /// IPv4 option words (each a 4-byte NOP run), 0..=10.
    pub ip_opt_words: u8,
    /// Add an 8-byte IPv6 destination-options extension header.
    pub v6_ext: bool,
    pub client_port: u16,
    pub vm_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub ts: Option<(u32, u32)>,
    /// Put the timestamps option at an odd offset (NOP, TS, NOP).
    pub ts_odd: bool,
    pub sack: Vec<(u32, u32)>,
    pub payload: Vec<u8>,
}

impl Seg {
    pub fn client(seq: u32, ack: u32, flags: u8) -> Seg {
        Seg {
            from_vm: false,
            v6: false,
            vlan: None,
            ip_opt_words: 0,
            v6_ext: false,
            client_port: 40000,
            vm_port: 80,
            seq,
            ack,
            flags,
            window: 65000,
            ts: None,
            ts_odd: false,
            sack: Vec::new(),
            payload: Vec::new(),
        }
    }
    pub fn vm(seq: u32, ack: u32, flags: u8) -> Seg {
        Seg {
            from_vm: true,
            ..Seg::client(seq, ack, flags)
        }
    }
    pub fn ts(mut self, val: u32, ecr: u32) -> Seg {
        self.ts = Some((val, ecr));
        self
    }
    pub fn sack(mut self, blocks: &[(u32, u32)]) -> Seg {
        self.sack = blocks.to_vec();
        self
    }
    pub fn data(mut self, n: usize) -> Seg {
        self.payload = (0..n).map(|i| (i * 7 + 3) as u8).collect();
        self
    }
    pub fn v6(mut self) -> Seg {
        self.v6 = true;
        self
    }
    pub fn vlan(mut self, id: u16) -> Seg {
        self.vlan = Some(id);
        self
    }
    pub fn port(mut self, p: u16) -> Seg {
        self.client_port = p;
        self
    }

    /// The frame, with a correct TCP checksum (and IPv4 header checksum).
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128 + self.payload.len());
        let (mac_c, mac_v) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let (dst_mac, src_mac) = if self.from_vm {
            (mac_c, mac_v)
        } else {
            (mac_v, mac_c)
        };
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        if let Some(id) = self.vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&(id & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(if self.v6 {
            &[0x86, 0xdd]
        } else {
            &[0x08, 0x00]
        });
        let tcp = self.tcp_bytes();
        let l3 = f.len();
        if self.v6 {
            let ext = if self.v6_ext { 8 } else { 0 };
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&((tcp.len() + ext) as u16).to_be_bytes());
            f.push(if self.v6_ext { 60 } else { 6 });
            f.push(64);
            let (s, d) = self.addrs6();
            f.extend_from_slice(&s);
            f.extend_from_slice(&d);
            if self.v6_ext {
                f.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // next TCP, PadN
            }
        } else {
            let ihl = 5 + self.ip_opt_words as usize;
            f.push(0x40 | ihl as u8);
            f.push(0);
            f.extend_from_slice(&((ihl * 4 + tcp.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 6, 0, 0]);
            let (s, d) = self.addrs4();
            f.extend_from_slice(&s);
            f.extend_from_slice(&d);
            for _ in 0..self.ip_opt_words {
                f.extend_from_slice(&[1, 1, 1, 1]);
            }
            let c = ip_csum(&f[l3..l3 + ihl * 4]);
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        let l4 = f.len();
        f.extend_from_slice(&tcp);
        let c = oracle_tcp_csum(&f).expect("built frame parses");
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn addrs4(&self) -> ([u8; 4], [u8; 4]) {
        if self.from_vm {
            (VM_V4, CLIENT_V4)
        } else {
            (CLIENT_V4, VM_V4)
        }
    }
    fn addrs6(&self) -> ([u8; 16], [u8; 16]) {
        if self.from_vm {
            (VM_V6, CLIENT_V6)
        } else {
            (CLIENT_V6, VM_V6)
        }
    }

    fn tcp_bytes(&self) -> Vec<u8> {
        let mut opts = Vec::new();
        if let Some((v, e)) = self.ts {
            if self.ts_odd {
                opts.push(1);
            } else {
                opts.extend_from_slice(&[1, 1]);
            }
            opts.extend_from_slice(&[8, 10]);
            opts.extend_from_slice(&v.to_be_bytes());
            opts.extend_from_slice(&e.to_be_bytes());
        }
        if !self.sack.is_empty() {
            while opts.len() % 4 != 2 {
                opts.push(1);
            }
            opts.extend_from_slice(&[5, (2 + 8 * self.sack.len()) as u8]);
            for (l, r) in &self.sack {
                opts.extend_from_slice(&l.to_be_bytes());
                opts.extend_from_slice(&r.to_be_bytes());
            }
        }
        while opts.len() % 4 != 0 {
            opts.push(if self.ts_odd { 1 } else { 0 });
        }
        let (sp, dp) = if self.from_vm {
            (self.vm_port, self.client_port)
        } else {
            (self.client_port, self.vm_port)
        };
        let mut t = Vec::new();
        t.extend_from_slice(&sp.to_be_bytes());
        t.extend_from_slice(&dp.to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        t.push((((20 + opts.len()) / 4) as u8) << 4);
        t.push(self.flags);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(&opts);
        t.extend_from_slice(&self.payload);
        t
    }
}

fn ip_csum(h: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for w in h.chunks(2) {
        s += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The TCP checksum etherparse computes for the frame (independent of our wire module).
pub fn oracle_tcp_csum(frame: &[u8]) -> Option<u16> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        return None;
    };
    match p.net? {
        NetSlice::Ipv4(s) => t
            .calc_checksum_ipv4(s.header().source(), s.header().destination())
            .ok(),
        NetSlice::Ipv6(s) => t
            .calc_checksum_ipv6(s.header().source(), s.header().destination())
            .ok(),
        _ => None,
    }
}

/// Decoded TCP fields of a frame (by etherparse), with checksum validity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub ts: Option<(u32, u32)>,
    pub sack: Vec<(u32, u32)>,
    pub csum: u16,
    pub csum_ok: bool,
}

pub fn decode(frame: &[u8]) -> Tcp {
    let p = SlicedPacket::from_ethernet(frame).expect("frame parses");
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("not TCP");
    };
    let mut ts = None;
    let mut sack = Vec::new();
    let o = t.options();
    let mut i = 0;
    while i < o.len() {
        match o[i] {
            0 => break,
            1 => i += 1,
            k => {
                let l = o[i + 1] as usize;
                let b = &o[i + 2..i + l];
                let rd = |x: &[u8]| u32::from_be_bytes([x[0], x[1], x[2], x[3]]);
                if k == 8 {
                    ts = Some((rd(&b[0..4]), rd(&b[4..8])));
                }
                if k == 5 {
                    for c in b.chunks(8) {
                        sack.push((rd(&c[0..4]), rd(&c[4..8])));
                    }
                }
                i += l;
            }
        }
    }
    let flags = frame_flags(&t);
    Tcp {
        seq: t.sequence_number(),
        ack: t.acknowledgment_number(),
        flags,
        ts,
        sack,
        csum: t.checksum(),
        csum_ok: oracle_tcp_csum(frame) == Some(t.checksum()),
    }
}

fn frame_flags(t: &etherparse::TcpSlice<'_>) -> u8 {
    (t.fin() as u8)
        | (t.syn() as u8) << 1
        | (t.rst() as u8) << 2
        | (t.psh() as u8) << 3
        | (t.ack() as u8) << 4
}

/// A rewriter plus a clock; every processed frame's checksum is verified by the oracle.
pub struct H {
    pub rw: Rewriter,
    pub now: u64,
}

impl H {
    pub fn new() -> H {
        H::with(RewriterConfig::default())
    }
    pub fn with(cfg: RewriterConfig) -> H {
        H {
            rw: Rewriter::new(cfg),
            now: 1_000_000_000,
        }
    }
    /// Process `seg` (direction from its sender) and return the outcome and the decoded result.
    pub fn send(&mut self, seg: &Seg) -> (Outcome, Tcp) {
        let (o, f) = self.send_frame(seg);
        (o, decode(&f))
    }
    pub fn send_frame(&mut self, seg: &Seg) -> (Outcome, Vec<u8>) {
        let frame = seg.build();
        let dir = if seg.from_vm {
            Direction::FromSecondary
        } else {
            Direction::ToSecondary
        };
        let mut b = VecBuf::from_slice(&frame);
        self.now += 1_000;
        let o = self.rw.process(dir, &mut b, self.now);
        let out = b.to_vec();
        assert_eq!(out.len(), frame.len(), "length never changes");
        let t = decode(&out);
        assert!(t.csum_ok, "TCP checksum invalid after {o:?}: {seg:?}");
        if o != Outcome::Rewritten {
            assert_eq!(out, frame, "{o:?} must leave the frame byte-identical");
        }
        (o, out)
    }
}

/// Client-opened handshake: client ISN `c`, primary ISN `p`, secondary ISN `s`. Returns the
/// client ACK as the SVM received it.
pub fn client_handshake(h: &mut H, c: u32, p: u32, s: u32) -> Tcp {
    h.send(&Seg::client(c, 0, SYN));
    h.send(&Seg::vm(s, c.wrapping_add(1), SYN | ACK));
    h.send(&Seg::client(c.wrapping_add(1), p.wrapping_add(1), ACK))
        .1
}

/// VM-opened handshake: VM's primary ISN `p`, secondary ISN `s`, server ISN `r`. Returns the
/// server's SYN-ACK as the SVM received it.
pub fn vm_handshake(h: &mut H, p: u32, s: u32, r: u32) -> Tcp {
    h.send(&Seg::vm(s, 0, SYN));
    let synack = h.send(&Seg::client(r, p.wrapping_add(1), SYN | ACK)).1;
    h.send(&Seg::vm(s.wrapping_add(1), r.wrapping_add(1), ACK));
    synack
}

/// The client's ISN in [`learned`]'s handshake.
pub const LEARN_CLIENT_ISN: u32 = 7_000;

/// A rewriter that learned seq offset `s − p` and timestamp offset `tss − tsp` for the
/// connection every `Seg` built like `shape` uses (same addressing options), with the
/// default configuration.
pub fn learned(shape: &Seg, p: u32, s: u32, tsp: u32, tss: u32) -> Rewriter {
    learned_with(RewriterConfig::default(), shape, p, s, tsp, tss)
}

/// [`learned`] with a given configuration.
pub fn learned_with(
    cfg: RewriterConfig,
    shape: &Seg,
    p: u32,
    s: u32,
    tsp: u32,
    tss: u32,
) -> Rewriter {
    const C: u32 = LEARN_CLIENT_ISN;
    let mut rw = Rewriter::new(cfg);
    let mk = |mut x: Seg| {
        x.v6 = shape.v6;
        x.vlan = shape.vlan;
        x.ip_opt_words = shape.ip_opt_words;
        x.v6_ext = shape.v6_ext;
        x.build()
    };
    let steps = [
        (Direction::ToSecondary, mk(Seg::client(C, 0, SYN).ts(1, 0))),
        (
            Direction::FromSecondary,
            mk(Seg::vm(s, C + 1, SYN | ACK).ts(tss, 1)),
        ),
        (
            Direction::ToSecondary,
            mk(Seg::client(C + 1, p.wrapping_add(1), ACK).ts(2, tsp)),
        ),
    ];
    for (d, f) in steps {
        let mut b = VecBuf::from_slice(&f);
        let _ = rw.process(d, &mut b, 1);
    }
    rw
}
