//! The direction-independent flow key and the one hash every stage uses to pick a shard.
//!
//! Both directions of a connection, and the PVM's and SVM's copies of it, produce the same key,
//! so the redirector sends them to the same compare shard and the rewriter finds one entry.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::fast::V4Ports;
use crate::wire::packet::{
    L3Kind, PacketInfo, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

/// Address family of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Non-IP: keyed by MAC pair and EtherType.
    L2,
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// A canonical (lower endpoint first) flow key.
///
/// - TCP/UDP: 5-tuple; ICMP/ICMPv6 echo: address pair + echo id (in both port slots);
/// - other IP protocols and fragments: address pair + protocol;
/// - non-IP: MAC pair + EtherType (in `proto_or_ethertype`).
#[derive(Clone, Copy, Debug, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    /// Address family.
    pub family: Family,
    /// IP protocol, or the EtherType for [`Family::L2`].
    pub proto_or_ethertype: u16,
    /// Lower endpoint address (IPv4 in the first 4 bytes; MAC in the first 6 for L2).
    pub addr_lo: [u8; 16],
    /// Higher endpoint address.
    pub addr_hi: [u8; 16],
    /// Port of the lower endpoint.
    pub port_lo: u16,
    /// Port of the higher endpoint.
    pub port_hi: u16,
}

impl FlowKey {
    /// The key of a parsed frame. Infallible: every frame has a key.
    #[inline]
    pub fn of(info: &PacketInfo, frame: &[u8]) -> FlowKey {
        let (family, proto) = match info.l3 {
            L3Kind::Ipv4 => (Family::V4, u16::from(info.ip_proto)),
            L3Kind::Ipv6 => (Family::V6, u16::from(info.ip_proto)),
            _ => (Family::L2, info.ethertype),
        };
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        let (mut pa, mut pb) = (0u16, 0u16);
        if family == Family::L2 {
            // dst MAC at 0..6, src MAC at 6..12; parse() guaranteed 14 bytes.
            if let (Some(d), Some(s)) = (frame.get(0..6), frame.get(6..12)) {
                a[..6].copy_from_slice(s);
                b[..6].copy_from_slice(d);
            }
        } else {
            a = info.src_ip;
            b = info.dst_ip;
            if !info.fragment {
                match info.ip_proto {
                    IPPROTO_TCP | IPPROTO_UDP => {
                        pa = info.src_port;
                        pb = info.dst_port;
                    }
                    IPPROTO_ICMP | IPPROTO_ICMPV6 => {
                        pa = info.icmp_echo_id;
                        pb = info.icmp_echo_id;
                    }
                    _ => {}
                }
            }
        }
        // Byte-wise order of the addresses, as one 128-bit compare.
        if (u128::from_be_bytes(a), pa) <= (u128::from_be_bytes(b), pb) {
            FlowKey {
                family,
                proto_or_ethertype: proto,
                addr_lo: a,
                addr_hi: b,
                port_lo: pa,
                port_hi: pb,
            }
        } else {
            FlowKey {
                family,
                proto_or_ethertype: proto,
                addr_lo: b,
                addr_hi: a,
                port_lo: pb,
                port_hi: pa,
            }
        }
    }

    /// The one flow hash (64-bit, well mixed, not keyed). Stable across processes and stages.
    ///
    /// Three folded 64×64→128 multiplies, the first two independent: a short dependency chain,
    /// since every packet on the compare core pays its latency.
    #[inline]
    pub fn hash64(&self) -> u64 {
        let w = |b: &[u8; 16], i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        hash_words(
            self.meta_word(),
            w(&self.addr_lo, 0),
            w(&self.addr_lo, 8),
            w(&self.addr_hi, 0),
            w(&self.addr_hi, 8),
        )
    }

    /// [`Self::hash64`] of an IPv4 key given by its parts (lower endpoint first), without
    /// building the key's address arrays: the same value, for a caller that has the parts.
    #[inline]
    pub fn hash64_v4(proto: u16, lo: [u8; 4], hi: [u8; 4], port_lo: u16, port_hi: u16) -> u64 {
        // The address words as `hash64` reads them: IPv4 in the first 4 bytes, zeros after.
        hash_words(
            meta_word(Family::V4, proto, port_lo, port_hi),
            u64::from(u32::from_le_bytes(lo)),
            0,
            u64::from(u32::from_le_bytes(hi)),
            0,
        )
    }

    /// Write the key of an IPv4 TCP/UDP flow given by the fast parser's parts into `self`
    /// and return its [`Self::hash64`]: the same as [`FlowKey::of`] + `hash64` of that frame.
    #[inline(always)]
    pub fn set_v4_ports(&mut self, proto: u8, p: &V4Ports) -> u64 {
        // Addresses as loaded (wire byte order in memory) and as numbers, for the key order.
        let src = u32::from_le_bytes(p.src);
        let dst = u32::from_le_bytes(p.dst);
        let (sp, dp) = (p.src_port, p.dst_port);
        // (address, port) as one number: FlowKey::of's byte-wise order of the endpoints.
        let a = u64::from(src.swap_bytes()) << 16 | u64::from(sp);
        let b = u64::from(dst.swap_bytes()) << 16 | u64::from(dp);
        let (lo, hi) = if a <= b { (src, dst) } else { (dst, src) };
        let (plo, phi) = if a <= b { (sp, dp) } else { (dp, sp) };
        let proto = u16::from(proto);
        *self = FlowKey {
            family: Family::V4,
            proto_or_ethertype: proto,
            addr_lo: u128::from(lo).to_le_bytes(),
            addr_hi: u128::from(hi).to_le_bytes(),
            port_lo: plo,
            port_hi: phi,
        };
        FlowKey::hash64_v4(proto, lo.to_le_bytes(), hi.to_le_bytes(), plo, phi)
    }

    /// A placeholder for a key about to be written (e.g. by [`Self::set_v4_ports`]).
    pub const UNSET: FlowKey = FlowKey {
        family: Family::L2,
        proto_or_ethertype: 0,
        addr_lo: [0; 16],
        addr_hi: [0; 16],
        port_lo: 0,
        port_hi: 0,
    };

    /// [`Self::hash64`] of a frame's flow if it has the common shape (untagged option-less
    /// IPv4 TCP or UDP, not a fragment; `wire::fast`), without building a [`PacketInfo`]:
    /// the same value as `FlowKey::of(&parse(frame)?, frame).hash64()`. `None`: take the
    /// general path.
    #[inline]
    pub fn fast_hash64(frame: &[u8]) -> Option<u64> {
        let (proto, ports) = match crate::wire::fast::tcp4(frame) {
            Some(t) => (IPPROTO_TCP, t.ports),
            None => (IPPROTO_UDP, crate::wire::fast::udp4(frame)?.ports),
        };
        let mut key = FlowKey::UNSET;
        Some(key.set_v4_ports(proto, &ports))
    }

    #[inline]
    fn meta_word(&self) -> u64 {
        meta_word(
            self.family,
            self.proto_or_ethertype,
            self.port_lo,
            self.port_hi,
        )
    }

    /// The compare shard (0..shards) owning this flow. `shards` must be at least 1.
    #[inline]
    pub fn shard(&self, shards: usize) -> usize {
        shard_of(self.hash64(), shards)
    }
}

/// Map a 64-bit hash onto `0..n` without a division (Lemire's multiply-shift).
#[inline]
pub fn shard_of(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

#[inline]
fn meta_word(family: Family, proto: u16, port_lo: u16, port_hi: u16) -> u64 {
    (family as u64) << 56 ^ u64::from(proto) << 32 ^ u64::from(port_lo) << 16 ^ u64::from(port_hi)
}

/// Multiply two words to 128 bits and fold the halves together.
#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ (p >> 64) as u64
}

/// The flow hash of the key's five words (wyhash-style folded multiplies). Odd constants
/// with high bits set keep an IPv4 word (upper half zero) from ever cancelling to zero.
#[inline]
fn hash_words(meta: u64, lo0: u64, lo1: u64, hi0: u64, hi1: u64) -> u64 {
    const K: [u64; 6] = [
        0xa076_1d64_78bd_642f,
        0xe703_7ed1_a0b4_28db,
        0x8ebc_6af0_9c88_c6e3,
        0x5899_65cc_7537_4cc3,
        0x1d8e_4e27_c47d_124f,
        0x9e37_79b9_7f4a_7c15,
    ];
    let a = fold(lo0 ^ K[0], hi0 ^ K[1]);
    let b = fold(lo1 ^ K[2], hi1 ^ K[3]);
    fold(a ^ meta ^ K[4], b ^ K[5])
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = |p: u16| match p as u8 {
            IPPROTO_TCP => "tcp".to_string(),
            IPPROTO_UDP => "udp".to_string(),
            IPPROTO_ICMP => "icmp".to_string(),
            IPPROTO_ICMPV6 => "icmpv6".to_string(),
            other => format!("ip{other}"),
        };
        match self.family {
            Family::V4 => {
                let a = Ipv4Addr::new(
                    self.addr_lo[0],
                    self.addr_lo[1],
                    self.addr_lo[2],
                    self.addr_lo[3],
                );
                let b = Ipv4Addr::new(
                    self.addr_hi[0],
                    self.addr_hi[1],
                    self.addr_hi[2],
                    self.addr_hi[3],
                );
                write!(
                    f,
                    "{} {a}:{} <-> {b}:{}",
                    proto(self.proto_or_ethertype),
                    self.port_lo,
                    self.port_hi
                )
            }
            Family::V6 => {
                let a = Ipv6Addr::from(self.addr_lo);
                let b = Ipv6Addr::from(self.addr_hi);
                write!(
                    f,
                    "{} [{a}]:{} <-> [{b}]:{}",
                    proto(self.proto_or_ethertype),
                    self.port_lo,
                    self.port_hi
                )
            }
            Family::L2 => {
                let m = |a: &[u8; 16]| {
                    format!(
                        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                        a[0], a[1], a[2], a[3], a[4], a[5]
                    )
                };
                write!(
                    f,
                    "ethertype 0x{:04x} {} <-> {}",
                    self.proto_or_ethertype,
                    m(&self.addr_lo),
                    m(&self.addr_hi)
                )
            }
        }
    }
}

impl PartialEq for FlowKey {
    /// Every field, without short-circuit branches: the table compares a key per packet.
    #[inline]
    fn eq(&self, o: &Self) -> bool {
        (self.addr_lo == o.addr_lo)
            & (self.addr_hi == o.addr_hi)
            & (self.meta_word() == o.meta_word())
    }
}

impl std::hash::Hash for FlowKey {
    /// Five words (the derive would add length prefixes and hash the arrays byte-slice-wise):
    /// every packet's table lookup pays for this.
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let w = |b: &[u8; 16], i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        state.write_u64(
            (self.family as u64) << 48
                ^ u64::from(self.proto_or_ethertype) << 32
                ^ u64::from(self.port_lo) << 16
                ^ u64::from(self.port_hi),
        );
        state.write_u64(w(&self.addr_lo, 0));
        state.write_u64(w(&self.addr_lo, 8));
        state.write_u64(w(&self.addr_hi, 0));
        state.write_u64(w(&self.addr_hi, 8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse;
    use etherparse::PacketBuilder;

    fn tcp(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4(src, dst, 64)
            .tcp(sp, dp, 1, 1)
            .write(&mut f, b"x")
            .unwrap();
        f
    }

    fn key(f: &[u8]) -> FlowKey {
        FlowKey::of(&parse(f).unwrap(), f)
    }

    #[test]
    fn the_fast_hash_is_the_general_paths_hash_or_none() {
        let udp = |src: [u8; 4], dst: [u8; 4]| {
            let mut f = Vec::new();
            PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4(src, dst, 64)
                .udp(53, 4000)
                .write(&mut f, b"q")
                .unwrap();
            f
        };
        let frames = [
            tcp([10, 0, 0, 1], [10, 0, 0, 2], 5555, 80),
            tcp([10, 0, 0, 2], [10, 0, 0, 1], 80, 5555),
            tcp([192, 168, 7, 9], [10, 1, 2, 3], 443, 40000),
            udp([10, 0, 0, 1], [10, 0, 0, 2]),
            udp([10, 0, 0, 2], [10, 0, 0, 1]),
        ];
        for f in &frames {
            assert_eq!(FlowKey::fast_hash64(f), Some(key(f).hash64()), "{f:?}");
        }
        // Shapes the fast parser does not take: the caller's general path decides.
        let mut icmp = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(7, 1)
            .write(&mut icmp, b"p")
            .unwrap();
        let mut frag = tcp([10, 0, 0, 1], [10, 0, 0, 2], 5555, 80);
        frag[20] |= 0x20; // more fragments
        let arp = [0u8; 42];
        for f in [&icmp[..], &frag[..], &arp[..], &frames[0][..20]] {
            assert_eq!(FlowKey::fast_hash64(f), None, "{f:?}");
        }
    }

    #[test]
    fn both_directions_share_key_and_shard() {
        let a = tcp([10, 0, 0, 1], [10, 0, 0, 2], 5555, 80);
        let b = tcp([10, 0, 0, 2], [10, 0, 0, 1], 80, 5555);
        assert_eq!(key(&a), key(&b));
        assert_eq!(key(&a).hash64(), key(&b).hash64());
        for n in 1..9 {
            assert_eq!(key(&a).shard(n), key(&b).shard(n));
            assert!(key(&a).shard(n) < n);
        }
    }

    #[test]
    fn hash_spreads_low_and_high_bits() {
        // Low bits index a shard's table, high bits pick the shard.
        let (mut low, mut high) = (vec![0u32; 1024], vec![0u32; 1024]);
        for i in 0..65_536u32 {
            let k = FlowKey {
                family: Family::V4,
                proto_or_ethertype: 6,
                addr_lo: {
                    let mut a = [0u8; 16];
                    a[..4].copy_from_slice(&(0x0a00_0000 + (i >> 8)).to_be_bytes());
                    a
                },
                addr_hi: [0; 16],
                port_lo: 1024 + (i & 0xff) as u16,
                port_hi: 80,
            };
            let h = k.hash64();
            low[(h & 1023) as usize] += 1;
            high[(h >> 54) as usize] += 1;
        }
        for bins in [low, high] {
            assert!(bins.iter().all(|&n| (24..=110).contains(&n)), "{bins:?}");
        }
    }

    #[test]
    fn hash64_v4_equals_hash64() {
        for (s, d, sp, dp) in [
            ([10, 0, 0, 1], [10, 0, 0, 2], 5555, 80),
            ([9, 9, 9, 9], [1, 2, 3, 4], 1, 2),
        ] {
            let k = key(&tcp(s, d, sp, dp));
            let (mut lo, mut hi) = ([0u8; 4], [0u8; 4]);
            lo.copy_from_slice(&k.addr_lo[..4]);
            hi.copy_from_slice(&k.addr_hi[..4]);
            let h = FlowKey::hash64_v4(k.proto_or_ethertype, lo, hi, k.port_lo, k.port_hi);
            assert_eq!(h, k.hash64());
        }
    }

    #[test]
    fn different_ports_are_different_flows() {
        let a = tcp([10, 0, 0, 1], [10, 0, 0, 2], 5555, 80);
        let b = tcp([10, 0, 0, 1], [10, 0, 0, 2], 5556, 80);
        assert_ne!(key(&a), key(&b));
        assert_eq!(format!("{}", key(&a)), "tcp 10.0.0.1:5555 <-> 10.0.0.2:80");
    }

    #[test]
    fn icmp_echo_ids_separate_flows() {
        let ping = |id| {
            let mut f = Vec::new();
            PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
                .icmpv4_echo_request(id, 1)
                .write(&mut f, b"")
                .unwrap();
            f
        };
        assert_ne!(key(&ping(1)), key(&ping(2)));
        assert_eq!(key(&ping(3)), key(&ping(3)));
    }

    #[test]
    fn shards_spread_evenly() {
        let n = 4;
        let mut counts = [0usize; 4];
        for p in 0..4000u16 {
            counts[key(&tcp([10, 0, 0, 1], [10, 0, 0, 2], 1024 + p, 80)).shard(n)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven shard spread: {counts:?}");
        }
    }
}
