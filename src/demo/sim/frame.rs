//! Frame building (etherparse header types written straight into the buffer, with real
//! checksums) and the receive-side checks both simulators share.

use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type,
    IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader, TcpOptionElement, UdpHeader,
};

use crate::buf::PacketBuf;
use crate::wire::checksum;
use crate::wire::packet::{
    tcp_flags, L3Kind, PacketInfo, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

use super::FrameAlloc;

/// TTL / hop limit of every frame the simulators send.
const TTL: u8 = 64;

/// IP addresses of a frame being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ips {
    /// IPv4 source and destination.
    V4 {
        /// Source.
        src: [u8; 4],
        /// Destination.
        dst: [u8; 4],
    },
    /// IPv6 source and destination.
    V6 {
        /// Source.
        src: [u8; 16],
        /// Destination.
        dst: [u8; 16],
    },
}

/// Link and network headers of a frame being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hdr {
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Addresses.
    pub ips: Ips,
}

/// A TCP segment to build.
#[derive(Debug, Clone, Copy)]
pub struct TcpSeg<'a> {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (sent only with the ACK flag).
    pub ack: u32,
    /// Flags ([`tcp_flags`]).
    pub flags: u8,
    /// Window.
    pub window: u16,
    /// MSS option to include (SYN, SYN-ACK).
    pub mss: Option<u16>,
    /// Payload.
    pub payload: &'a [u8],
}

/// Why no frame was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// The allocator had no buffer.
    NoBuffer,
    /// The buffer had no room for the frame or the builder refused it.
    Build,
}

/// Ethernet + IP header + `l4` (transport header) + `payload` into a fresh buffer.
fn assemble<B: PacketBuf>(
    alloc: &mut impl FrameAlloc<B>,
    h: &Hdr,
    proto: IpNumber,
    l4: &[u8],
    payload: &[u8],
) -> Result<B, BuildError> {
    let l4_len = l4.len() + payload.len();
    let l4_len16 = u16::try_from(l4_len).map_err(|_| BuildError::Build)?;
    let (ether_type, ip_len) = match h.ips {
        Ips::V4 { .. } => (EtherType::IPV4, Ipv4Header::MIN_LEN),
        Ips::V6 { .. } => (EtherType::IPV6, Ipv6Header::LEN),
    };
    let eth = Ethernet2Header {
        source: h.src_mac,
        destination: h.dst_mac,
        ether_type,
    };
    let l4_off = Ethernet2Header::LEN + ip_len;
    let mut buf = alloc.alloc().ok_or(BuildError::NoBuffer)?;
    let out = buf.append(l4_off + l4_len).map_err(|_| BuildError::Build)?;
    out[..Ethernet2Header::LEN].copy_from_slice(&eth.to_bytes());
    match h.ips {
        Ips::V4 { src, dst } => {
            let mut ip =
                Ipv4Header::new(l4_len16, TTL, proto, src, dst).map_err(|_| BuildError::Build)?;
            ip.header_checksum = ip.calc_header_checksum();
            out[Ethernet2Header::LEN..l4_off].copy_from_slice(&ip.to_bytes());
        }
        Ips::V6 { src, dst } => {
            let ip = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: l4_len16,
                next_header: proto,
                hop_limit: TTL,
                source: src,
                destination: dst,
            };
            out[Ethernet2Header::LEN..l4_off].copy_from_slice(&ip.to_bytes());
        }
    }
    out[l4_off..l4_off + l4.len()].copy_from_slice(l4);
    out[l4_off + l4.len()..].copy_from_slice(payload);
    Ok(buf)
}

// etherparse's header types rather than `PacketBuilder`: the builder carries ~9 KB of IPv6
// extension-header state by value through every step, which dominated the per-frame cost.

/// Build a TCP segment.
pub fn tcp<B: PacketBuf>(
    alloc: &mut impl FrameAlloc<B>,
    h: &Hdr,
    s: &TcpSeg<'_>,
) -> Result<B, BuildError> {
    let mut th = TcpHeader::new(s.sport, s.dport, s.seq, s.window);
    th.syn = s.flags & tcp_flags::SYN != 0;
    th.fin = s.flags & tcp_flags::FIN != 0;
    th.rst = s.flags & tcp_flags::RST != 0;
    th.psh = s.flags & tcp_flags::PSH != 0;
    if s.flags & tcp_flags::ACK != 0 {
        th.ack = true;
        th.acknowledgment_number = s.ack;
    }
    if let Some(mss) = s.mss {
        th.set_options(&[TcpOptionElement::MaximumSegmentSize(mss)])
            .map_err(|_| BuildError::Build)?;
    }
    th.checksum = match h.ips {
        Ips::V4 { src, dst } => th.calc_checksum_ipv4_raw(src, dst, s.payload),
        Ips::V6 { src, dst } => th.calc_checksum_ipv6_raw(src, dst, s.payload),
    }
    .map_err(|_| BuildError::Build)?;
    assemble(alloc, h, IpNumber::TCP, &th.to_bytes(), s.payload)
}

/// Build a UDP datagram.
pub fn udp<B: PacketBuf>(
    alloc: &mut impl FrameAlloc<B>,
    h: &Hdr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Result<B, BuildError> {
    let len = u16::try_from(UdpHeader::LEN + payload.len()).map_err(|_| BuildError::Build)?;
    let mut uh = UdpHeader {
        source_port: sport,
        destination_port: dport,
        length: len,
        checksum: 0,
    };
    uh.checksum = match h.ips {
        Ips::V4 { src, dst } => uh.calc_checksum_ipv4_raw(src, dst, payload),
        Ips::V6 { src, dst } => uh.calc_checksum_ipv6_raw(src, dst, payload),
    }
    .map_err(|_| BuildError::Build)?;
    assemble(alloc, h, IpNumber::UDP, &uh.to_bytes(), payload)
}

/// Build an ICMP (IPv4) or ICMPv6 echo request or reply.
pub fn icmp_echo<B: PacketBuf>(
    alloc: &mut impl FrameAlloc<B>,
    h: &Hdr,
    reply: bool,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Result<B, BuildError> {
    let echo = IcmpEchoHeader { id, seq };
    match h.ips {
        Ips::V4 { .. } => {
            let t = if reply {
                Icmpv4Type::EchoReply(echo)
            } else {
                Icmpv4Type::EchoRequest(echo)
            };
            let ih = Icmpv4Header::with_checksum(t, payload);
            assemble(alloc, h, IpNumber::ICMP, &ih.to_bytes(), payload)
        }
        Ips::V6 { src, dst } => {
            let t = if reply {
                Icmpv6Type::EchoReply(echo)
            } else {
                Icmpv6Type::EchoRequest(echo)
            };
            let ih =
                Icmpv6Header::with_checksum(t, src, dst, payload).map_err(|_| BuildError::Build)?;
            assemble(alloc, h, IpNumber::IPV6_ICMP, &ih.to_bytes(), payload)
        }
    }
}

/// True when the IPv4 header checksum and the L4 checksum of a parsed frame are valid.
/// `l4_partial` skips the L4 check (the device completes it).
pub fn checksums_ok(frame: &[u8], info: &PacketInfo, l4_partial: bool) -> bool {
    let l3 = info.l3_packet(frame);
    let hdr_len = usize::from(info.l3_hdr_len);
    if info.l3 == L3Kind::Ipv4 {
        let Some(ip_hdr) = l3.get(..hdr_len) else {
            return false;
        };
        if checksum::fold(checksum::sum(ip_hdr, 0)) != 0xffff {
            return false;
        }
    }
    if l4_partial || info.fragment {
        return true;
    }
    let seg = info.l4_segment(frame);
    let len = seg.len() as u32;
    let pseudo = match info.l3 {
        L3Kind::Ipv4 => {
            let mut s = [0u8; 4];
            let mut d = [0u8; 4];
            s.copy_from_slice(&info.src_ip[..4]);
            d.copy_from_slice(&info.dst_ip[..4]);
            checksum::pseudo_v4(&s, &d, info.ip_proto, len)
        }
        L3Kind::Ipv6 => checksum::pseudo_v6(&info.src_ip, &info.dst_ip, info.ip_proto, len),
        _ => return false,
    };
    match info.ip_proto {
        IPPROTO_TCP | IPPROTO_ICMPV6 => checksum::fold(checksum::sum(seg, pseudo)) == 0xffff,
        IPPROTO_UDP => {
            // An IPv4 UDP checksum of zero means "none".
            let zero = seg.get(6..8) == Some(&[0, 0][..]);
            (zero && info.l3 == L3Kind::Ipv4)
                || checksum::fold(checksum::sum(seg, pseudo)) == 0xffff
        }
        IPPROTO_ICMP => checksum::fold(checksum::sum(seg, 0)) == 0xffff,
        _ => true,
    }
}

/// The MSS option of a TCP segment, if present and well-formed.
pub fn tcp_mss(frame: &[u8], info: &PacketInfo) -> Option<u16> {
    let off = usize::from(info.l4_off);
    let hdr = frame.get(off..off + usize::from(info.l4_hdr_len))?;
    crate::wire::packet::tcp_options(hdr)
        .find(|&(kind, _, len)| kind == 2 && len == 4)
        .and_then(|(_, at, _)| hdr.get(at + 2..at + 4))
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// The sequence number of an ICMP echo request/reply.
pub fn icmp_echo_seq(frame: &[u8], info: &PacketInfo) -> Option<u16> {
    let off = usize::from(info.l4_off);
    frame
        .get(off + 6..off + 8)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// True for an ICMP/ICMPv6 echo request (`want_reply == false`) or reply.
pub fn is_echo(info: &PacketInfo, want_reply: bool) -> bool {
    match (info.ip_proto, want_reply) {
        (IPPROTO_ICMP, false) => info.icmp_type == 8 && info.icmp_code == 0,
        (IPPROTO_ICMP, true) => info.icmp_type == 0 && info.icmp_code == 0,
        (IPPROTO_ICMPV6, false) => info.icmp_type == 128 && info.icmp_code == 0,
        (IPPROTO_ICMPV6, true) => info.icmp_type == 129 && info.icmp_code == 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::VecBuf;
    use crate::demo::sim::VecAlloc;

    fn hdr4() -> Hdr {
        Hdr {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            ips: Ips::V4 {
                src: [10, 0, 0, 1],
                dst: [10, 0, 0, 2],
            },
        }
    }

    #[test]
    fn built_frames_parse_with_valid_checksums() {
        let mut a = VecAlloc;
        let seg = TcpSeg {
            sport: 1000,
            dport: 80,
            seq: 5,
            ack: 9,
            flags: tcp_flags::SYN | tcp_flags::ACK,
            window: 1000,
            mss: Some(1400),
            payload: b"",
        };
        let f: VecBuf = tcp(&mut a, &hdr4(), &seg).unwrap();
        let info = crate::wire::parse(f.data()).unwrap();
        let t = info.tcp.unwrap();
        assert_eq!(
            (t.seq, t.ack, t.flags),
            (5, 9, tcp_flags::SYN | tcp_flags::ACK)
        );
        assert_eq!(tcp_mss(f.data(), &info), Some(1400));
        assert!(checksums_ok(f.data(), &info, false));

        let mut bad = f.clone();
        let n = bad.len();
        bad.data_mut()[n - 1] ^= 0x40; // inside the TCP option/header
        let info = crate::wire::parse(bad.data()).unwrap();
        assert!(!checksums_ok(bad.data(), &info, false));

        let h6 = Hdr {
            ips: Ips::V6 {
                src: [1; 16],
                dst: [2; 16],
            },
            ..hdr4()
        };
        let u: VecBuf = udp(&mut a, &h6, 5, 6, b"hello").unwrap();
        let info = crate::wire::parse(u.data()).unwrap();
        assert!(checksums_ok(u.data(), &info, false));
        assert_eq!(info.payload(u.data()), b"hello");
        for reply in [false, true] {
            for h in [hdr4(), h6] {
                let e: VecBuf = icmp_echo(&mut a, &h, reply, 7, 8, b"abc").unwrap();
                let info = crate::wire::parse(e.data()).unwrap();
                assert!(is_echo(&info, reply));
                assert!(!is_echo(&info, !reply));
                assert_eq!(info.icmp_echo_id, 7);
                assert_eq!(icmp_echo_seq(e.data(), &info), Some(8));
                assert!(checksums_ok(e.data(), &info, false));
            }
        }
    }

    #[test]
    fn frames_match_etherparse_packet_builder() {
        use etherparse::PacketBuilder;
        let mut a = VecAlloc;
        let h = hdr4();
        let seg = TcpSeg {
            sport: 1000,
            dport: 80,
            seq: 5,
            ack: 9,
            flags: tcp_flags::SYN | tcp_flags::ACK | tcp_flags::PSH,
            window: 1000,
            mss: Some(1400),
            payload: b"abc",
        };
        let ours: VecBuf = tcp(&mut a, &h, &seg).unwrap();
        let mut want = Vec::new();
        PacketBuilder::ethernet2(h.src_mac, h.dst_mac)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], TTL)
            .tcp(1000, 80, 5, 1000)
            .syn()
            .ack(9)
            .psh()
            .options(&[TcpOptionElement::MaximumSegmentSize(1400)])
            .unwrap()
            .write(&mut want, b"abc")
            .unwrap();
        assert_eq!(ours.data(), &want[..]);

        let h6 = Hdr {
            ips: Ips::V6 {
                src: [1; 16],
                dst: [2; 16],
            },
            ..hdr4()
        };
        let ours: VecBuf = udp(&mut a, &h6, 5, 6, b"hello").unwrap();
        let mut want = Vec::new();
        PacketBuilder::ethernet2(h.src_mac, h.dst_mac)
            .ipv6([1; 16], [2; 16], TTL)
            .udp(5, 6)
            .write(&mut want, b"hello")
            .unwrap();
        assert_eq!(ours.data(), &want[..]);

        let ours: VecBuf = icmp_echo(&mut a, &h6, true, 7, 8, b"xyz").unwrap();
        let mut want = Vec::new();
        PacketBuilder::ethernet2(h.src_mac, h.dst_mac)
            .ipv6([1; 16], [2; 16], TTL)
            .icmpv6_echo_reply(7, 8)
            .write(&mut want, b"xyz")
            .unwrap();
        assert_eq!(ours.data(), &want[..]);

        let ours: VecBuf = icmp_echo(&mut a, &h, false, 7, 8, b"xyz").unwrap();
        let mut want = Vec::new();
        PacketBuilder::ethernet2(h.src_mac, h.dst_mac)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], TTL)
            .icmpv4_echo_request(7, 8)
            .write(&mut want, b"xyz")
            .unwrap();
        assert_eq!(ours.data(), &want[..]);
    }

    #[test]
    fn allocator_failure_is_reported() {
        let mut none = || -> Option<VecBuf> { None };
        let r = udp(&mut none, &hdr4(), 1, 2, b"x");
        assert_eq!(r.unwrap_err(), BuildError::NoBuffer);
    }
}
