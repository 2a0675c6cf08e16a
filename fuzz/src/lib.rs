//! Shared pieces of the fuzz targets: structured frame descriptions (decoded with
//! `arbitrary`), a tagged packet buffer so every packet can be followed through the compare
//! engine, and a recording [`Output`].
//!
//! Nothing here touches DPDK: the targets link the library (and with it librte_*, through
//! build.rs) but never call EAL.

use arbitrary::Arbitrary;
use colo_proxy::buf::{BufError, PacketBuf, VecBuf};
use colo_proxy::compare::{DivergenceEvent, Output, PrimaryDrop, Release, SecondaryFree};
use etherparse::{PacketBuilder, TcpOptionElement};

pub const CLIENT4: [u8; 4] = [192, 168, 1, 10];
pub const SERVER4: [u8; 4] = [10, 0, 0, 2];
pub const CLIENT6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
pub const SERVER6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x05,
];

/// A TCP segment of one of a few connections, described by small fields so the fuzzer reaches
/// deep compare states (matching, holes, retransmissions) instead of random bytes.
#[derive(Arbitrary, Debug, Clone)]
pub struct TcpSpec {
    /// Connection 0..4 (server port 80 + flow % 4).
    pub flow: u8,
    pub v6: bool,
    /// Sequence number relative to a base chosen so wrap-around is exercised.
    pub seq: u16,
    pub ack: u16,
    /// FIN SYN RST PSH ACK (low 5 bits).
    pub flags: u8,
    /// Payload bytes from a tiny alphabet so both sides often agree.
    pub payload: Vec<u8>,
    /// Optional TCP timestamps (differ between VMs and must be ignored).
    pub ts: Option<(u8, u8)>,
    /// Window.
    pub window: u8,
}

/// Base sequence number: near the top of the space, so seq + offsets wrap.
pub const SEQ_BASE: u32 = 0xffff_ff00;

impl TcpSpec {
    /// Server port of this spec's flow.
    pub fn port(&self) -> u16 {
        80 + u16::from(self.flow % 4)
    }

    /// Absolute sequence number.
    pub fn abs_seq(&self) -> u32 {
        SEQ_BASE.wrapping_add(u32::from(self.seq))
    }

    /// The payload as sent (capped, alphabet of 3 values).
    pub fn payload(&self) -> Vec<u8> {
        self.payload.iter().take(64).map(|b| b % 3).collect()
    }

    /// Build the guest → client frame.
    pub fn build(&self) -> Vec<u8> {
        let flags = self.flags & 0x1f;
        let ether = PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 0xfe]);
        let ip = if self.v6 {
            ether.ipv6(SERVER6, CLIENT6, 64)
        } else {
            ether.ipv4(SERVER4, CLIENT4, 64)
        };
        let mut b = ip.tcp(
            self.port(),
            40000,
            self.abs_seq(),
            u16::from(self.window) * 256 + 255,
        );
        if flags & 0x10 != 0 {
            b = b.ack(1000u32.wrapping_add(u32::from(self.ack)));
        }
        if flags & 0x02 != 0 {
            b = b.syn();
        }
        if flags & 0x01 != 0 {
            b = b.fin();
        }
        if flags & 0x04 != 0 {
            b = b.rst();
        }
        if flags & 0x08 != 0 {
            b = b.psh();
        }
        if let Some((v, e)) = self.ts {
            let opts = [TcpOptionElement::Timestamp(u32::from(v), u32::from(e))];
            // One timestamp option always fits the 40 option bytes.
            b = match b.options(&opts) {
                Ok(with) => with,
                Err(_) => return Vec::new(),
            };
        }
        let payload = self.payload();
        let mut f = Vec::with_capacity(b.size(payload.len()));
        // Writing to a Vec cannot fail for these sizes.
        let _ = b.write(&mut f, &payload);
        f
    }
}

/// A UDP datagram of one of two flows.
#[derive(Arbitrary, Debug, Clone)]
pub struct UdpSpec {
    pub flow: u8,
    pub v6: bool,
    pub payload: Vec<u8>,
}

impl UdpSpec {
    /// Build the guest → client frame.
    pub fn build(&self) -> Vec<u8> {
        let ether = PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 0xfe]);
        let ip = if self.v6 {
            ether.ipv6(SERVER6, CLIENT6, 64)
        } else {
            ether.ipv4(SERVER4, CLIENT4, 64)
        };
        let b = ip.udp(5353 + u16::from(self.flow % 2), 53000);
        let payload: Vec<u8> = self.payload.iter().take(32).map(|b| b % 2).collect();
        let mut f = Vec::with_capacity(b.size(payload.len()));
        let _ = b.write(&mut f, &payload);
        f
    }
}

/// One frame as the fuzzer describes it.
#[derive(Arbitrary, Debug, Clone)]
pub enum FrameSpec {
    Tcp(TcpSpec),
    Udp(UdpSpec),
    /// Arbitrary bytes, optionally with a chosen EtherType.
    Raw {
        ethertype: Option<u16>,
        bytes: Vec<u8>,
    },
    /// A well-formed TCP frame cut short.
    Truncated {
        spec: TcpSpec,
        keep: u16,
    },
    /// A well-formed TCP frame with a few bytes XORed.
    Mutated {
        spec: TcpSpec,
        flips: Vec<(u16, u8)>,
    },
}

impl FrameSpec {
    /// The frame bytes.
    pub fn build(&self) -> Vec<u8> {
        match self {
            FrameSpec::Tcp(t) => t.build(),
            FrameSpec::Udp(u) => u.build(),
            FrameSpec::Raw { ethertype, bytes } => {
                let mut d: Vec<u8> = bytes.iter().take(256).copied().collect();
                if let (Some(et), true) = (ethertype, d.len() >= 14) {
                    d[12..14].copy_from_slice(&et.to_be_bytes());
                }
                d
            }
            FrameSpec::Truncated { spec, keep } => {
                let f = spec.build();
                let n = usize::from(*keep) % (f.len() + 1);
                f[..n].to_vec()
            }
            FrameSpec::Mutated { spec, flips } => {
                let mut f = spec.build();
                let n = f.len();
                for &(at, x) in flips.iter().take(8) {
                    f[usize::from(at) % n] ^= x;
                }
                f
            }
        }
    }
}

/// One step of a compare-engine run (the compare targets' input).
#[derive(Arbitrary, Debug)]
pub enum CompareOp {
    /// A primary frame.
    P(FrameSpec),
    /// A secondary frame (with the fields a second VM changes anyway changed).
    S(FrameSpec),
    /// The primary's frame, then the secondary's copy of it.
    Both(FrameSpec),
    /// Advance the clock by this many ms and tick.
    Tick(u16),
    /// A checkpoint completed.
    Checkpoint,
    /// Failover: release everything.
    Flush,
}

/// One millisecond in ns.
pub const MS: u64 = 1_000_000;

/// The secondary's copy of a frame: the fields a second VM changes anyway (IPv4 ID, TTL, the
/// IP checksum, the TCP checksum) differ; the compare must ignore them.
pub fn as_secondary(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() >= 54 && f[12] == 0x08 && f[13] == 0x00 && f[14] == 0x45 {
        f[18] ^= 0x5a;
        f[19] ^= 0xa5;
        f[22] = 63;
        f[24] ^= 0xff;
        if f[23] == 6 {
            f[50] ^= 0x77;
        }
    }
    f
}

/// A packet buffer carrying an id, so a test can follow each packet through the engine.
#[derive(Debug)]
pub struct Tagged {
    pub buf: VecBuf,
    pub id: u32,
}

impl PacketBuf for Tagged {
    fn data(&self) -> &[u8] {
        self.buf.data()
    }
    fn data_mut(&mut self) -> &mut [u8] {
        self.buf.data_mut()
    }
    fn trim(&mut self, n: usize) -> Result<(), BufError> {
        self.buf.trim(n)
    }
    fn adj(&mut self, n: usize) -> Result<(), BufError> {
        self.buf.adj(n)
    }
    fn prepend(&mut self, n: usize) -> Result<&mut [u8], BufError> {
        self.buf.prepend(n)
    }
    fn append(&mut self, n: usize) -> Result<&mut [u8], BufError> {
        self.buf.append(n)
    }
}

/// What left the engine, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    Released(u32, Release),
    Dropped(u32, PrimaryDrop),
    Freed(u32, SecondaryFree),
}

/// Records every verdict in order (ids and reasons; frames for the differential target).
#[derive(Default)]
pub struct Rec {
    pub left: Vec<Left>,
    pub frames: Vec<Vec<u8>>,
    pub events: Vec<DivergenceEvent>,
    pub captures: usize,
    /// Keep the released frame bytes too.
    pub keep_frames: bool,
}

impl Output<Tagged> for Rec {
    fn release(&mut self, pkt: Tagged, how: Release) {
        if self.keep_frames {
            self.frames.push(pkt.data().to_vec());
        }
        self.left.push(Left::Released(pkt.id, how));
    }
    fn drop_primary(&mut self, pkt: Tagged, why: PrimaryDrop) {
        self.left.push(Left::Dropped(pkt.id, why));
    }
    fn free_secondary(&mut self, pkt: Tagged, how: SecondaryFree) {
        self.left.push(Left::Freed(pkt.id, how));
    }
    fn event(&mut self, ev: DivergenceEvent) {
        self.events.push(ev);
    }
    fn capture(&mut self, _ev: &DivergenceEvent, p: Option<&Tagged>, s: Option<&Tagged>) {
        // Touch the bytes the engine hands over (they must be valid while it owns them).
        let n = p.map_or(0, |b| b.data().len()) + s.map_or(0, |b| b.data().len());
        self.captures += usize::from(n > 0);
    }
}
