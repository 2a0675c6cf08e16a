//! One-pass frame parser producing header offsets and the few fields every stage needs.
//!
//! Why our own parser rather than etherparse's slices: the compare and rewrite stages need the
//! *offsets* of each header (to compare payload bytes in place and to rewrite seq/ack and
//! checksums in place), the IP total length (to ignore Ethernet padding) and a single pass with
//! no per-packet allocation. etherparse is used in the tests as an independent oracle.
//!
//! Contract: [`parse`] validates every length once; on `Ok` every offset range in
//! [`PacketInfo`] lies inside the frame, so accessors built on it cannot panic.

use std::fmt;

use super::field::{arp, at, eth, icmp, ipv4, ipv6, tcp, udp, vlan};

/// Ethernet header length without tags.
pub const ETH_HLEN: usize = eth::HLEN;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// EtherType of an 802.1ad service tag.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// IP protocol numbers used here.
pub const IPPROTO_ICMP: u8 = 1;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// TCP flag bits (low byte of the flags field).
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
}

/// Most VLAN tags accepted in front of the L3 header.
pub const MAX_VLAN_TAGS: u8 = 2;
/// Most IPv6 extension headers walked before giving up.
const MAX_IPV6_EXT_HEADERS: usize = 8;

/// The network layer of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum L3Kind {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
    /// ARP.
    Arp,
    /// Any other EtherType.
    #[default]
    Other,
}

/// Which header a [`ParseError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Ethernet and VLAN tags.
    Ethernet,
    /// IPv4 header.
    Ipv4,
    /// IPv6 header or an extension header.
    Ipv6,
    /// ARP.
    Arp,
    /// TCP header.
    Tcp,
    /// UDP header.
    Udp,
    /// ICMP or ICMPv6 header.
    Icmp,
}

/// Why a frame could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The frame ends inside this header.
    Truncated(Layer),
    /// IPv4 header length below 20 bytes or version field wrong.
    BadIpHeader(Layer),
    /// IP length field smaller than the header or larger than the frame.
    BadIpLength(Layer),
    /// TCP data offset below 5 words or past the end of the IP packet.
    BadTcpDataOffset,
    /// UDP length field disagrees with the IP length.
    BadUdpLength,
    /// More than [`MAX_VLAN_TAGS`] VLAN tags.
    TooManyVlanTags,
    /// IPv6 extension header chain too long.
    TooManyExtHeaders,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated(l) => write!(f, "truncated {l:?} header"),
            ParseError::BadIpHeader(l) => write!(f, "bad {l:?} header"),
            ParseError::BadIpLength(l) => write!(f, "bad {l:?} length field"),
            ParseError::BadTcpDataOffset => f.write_str("bad TCP data offset"),
            ParseError::BadUdpLength => f.write_str("UDP length disagrees with IP length"),
            ParseError::TooManyVlanTags => f.write_str("too many VLAN tags"),
            ParseError::TooManyExtHeaders => f.write_str("IPv6 extension header chain too long"),
        }
    }
}

impl std::error::Error for ParseError {}

/// TCP fields the compare and rewrite stages use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpInfo {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR).
    pub flags: u8,
    /// Window (unscaled).
    pub window: u16,
}

impl TcpInfo {
    /// True when every flag in `mask` is set.
    #[inline]
    pub fn has(&self, mask: u8) -> bool {
        self.flags & mask == mask
    }
}

/// Offsets and key fields of a parsed frame. All offsets are from the start of the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PacketInfo {
    /// Innermost EtherType (after VLAN tags).
    pub ethertype: u16,
    /// Number of VLAN tags skipped.
    pub vlan_tags: u8,
    /// Network layer kind.
    pub l3: L3Kind,
    /// Offset of the network header (= L2 header length).
    pub l3_off: u16,
    /// Network header length: IPv4 IHL×4, IPv6 40 + extension headers, ARP 28, else 0.
    pub l3_hdr_len: u16,
    /// End of the network packet per its own length field; excludes Ethernet padding.
    /// For non-IP frames, the frame length.
    pub l3_end: u32,
    /// IP protocol / final IPv6 next header; 0 for non-IP.
    pub ip_proto: u8,
    /// A fragment (IPv4 MF/offset, IPv6 fragment header): no transport header is parsed.
    pub fragment: bool,
    /// Source address; IPv4 uses the first 4 bytes.
    pub src_ip: [u8; 16],
    /// Destination address; IPv4 uses the first 4 bytes.
    pub dst_ip: [u8; 16],
    /// Offset of the transport header (= `l3_off + l3_hdr_len` for IP).
    pub l4_off: u16,
    /// Transport header length (TCP data offset×4, UDP 8, ICMP 8); 0 when none was parsed.
    pub l4_hdr_len: u16,
    /// TCP/UDP source port, 0 otherwise.
    pub src_port: u16,
    /// TCP/UDP destination port, 0 otherwise.
    pub dst_port: u16,
    /// ICMP/ICMPv6 type and code, 0 otherwise.
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// ICMP echo identifier (echo request/reply only), 0 otherwise.
    pub icmp_echo_id: u16,
    /// TCP fields, when the transport is TCP.
    pub tcp: Option<TcpInfo>,
}

impl PacketInfo {
    /// True for IPv4 or IPv6.
    #[inline]
    pub fn is_ip(&self) -> bool {
        matches!(self.l3, L3Kind::Ipv4 | L3Kind::Ipv6)
    }

    /// Offset of the transport payload.
    #[inline]
    pub fn payload_off(&self) -> usize {
        self.l4_off as usize + self.l4_hdr_len as usize
    }

    /// Transport payload length, from the IP length (never includes Ethernet padding).
    #[inline]
    pub fn payload_len(&self) -> usize {
        (self.l3_end as usize).saturating_sub(self.payload_off())
    }

    /// The transport payload of `frame` (the frame this info was parsed from).
    #[inline]
    pub fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        frame
            .get(self.payload_off()..self.l3_end as usize)
            .unwrap_or(&[])
    }

    /// The transport header and payload (from `l4_off` to the end of the IP packet).
    #[inline]
    pub fn l4_segment<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        frame
            .get(self.l4_off as usize..self.l3_end as usize)
            .unwrap_or(&[])
    }

    /// The network packet (header through `l3_end`).
    #[inline]
    pub fn l3_packet<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        frame
            .get(self.l3_off as usize..self.l3_end as usize)
            .unwrap_or(&[])
    }
}

#[inline]
fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

#[inline]
fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// Parse an Ethernet frame (no FCS). Non-IP frames parse successfully with `l3` set; IP
/// frames are validated through the transport header.
#[inline]
pub fn parse(frame: &[u8]) -> Result<PacketInfo, ParseError> {
    let mut info = PacketInfo::default();
    if frame.len() < ETH_HLEN {
        return Err(ParseError::Truncated(Layer::Ethernet));
    }
    let mut off = eth::ETHERTYPE.start;
    let mut ethertype = be16(frame, off);
    while ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        if info.vlan_tags == MAX_VLAN_TAGS {
            return Err(ParseError::TooManyVlanTags);
        }
        off += vlan::LEN;
        if frame.len() < off + 2 {
            return Err(ParseError::Truncated(Layer::Ethernet));
        }
        ethertype = be16(frame, off);
        info.vlan_tags += 1;
    }
    let l3_off = off + 2;
    info.ethertype = ethertype;
    info.l3_off = l3_off as u16;
    info.l3_end = frame.len() as u32;
    match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(frame, l3_off, &mut info)?,
        ETHERTYPE_IPV6 => parse_ipv6(frame, l3_off, &mut info)?,
        ETHERTYPE_ARP => {
            info.l3 = L3Kind::Arp;
            // Ethernet/IPv4 ARP is 28 bytes; other hardware types keep the frame length.
            if frame.len() < l3_off + 8 {
                return Err(ParseError::Truncated(Layer::Arp));
            }
            let hlen = frame[l3_off + arp::HLEN] as usize;
            let plen = frame[l3_off + arp::PLEN] as usize;
            let arp_len = 8 + 2 * (hlen + plen);
            if frame.len() < l3_off + arp_len {
                return Err(ParseError::Truncated(Layer::Arp));
            }
            info.l3_hdr_len = arp_len as u16;
            info.l3_end = (l3_off + arp_len) as u32;
        }
        _ => info.l3 = L3Kind::Other,
    }
    Ok(info)
}

#[inline]
fn parse_ipv4(frame: &[u8], l3: usize, info: &mut PacketInfo) -> Result<(), ParseError> {
    info.l3 = L3Kind::Ipv4;
    if frame.len() < l3 + ipv4::MIN_HLEN {
        return Err(ParseError::Truncated(Layer::Ipv4));
    }
    let ver_ihl = frame[l3 + ipv4::VER_IHL];
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < ipv4::MIN_HLEN {
        return Err(ParseError::BadIpHeader(Layer::Ipv4));
    }
    if frame.len() < l3 + ihl {
        return Err(ParseError::Truncated(Layer::Ipv4));
    }
    let total = usize::from(be16(frame, l3 + ipv4::LENGTH.start));
    if total < ihl || l3 + total > frame.len() {
        return Err(ParseError::BadIpLength(Layer::Ipv4));
    }
    info.l3_hdr_len = ihl as u16;
    info.l3_end = (l3 + total) as u32;
    info.ip_proto = frame[l3 + ipv4::PROTOCOL];
    info.src_ip[..4].copy_from_slice(&frame[at(l3, ipv4::SRC_ADDR)]);
    info.dst_ip[..4].copy_from_slice(&frame[at(l3, ipv4::DST_ADDR)]);
    let frag = be16(frame, l3 + ipv4::FLG_OFF.start);
    info.fragment = frag & ipv4::FRAGMENT_MASK != 0; // MF set or non-zero offset
    info.l4_off = (l3 + ihl) as u16;
    if info.fragment {
        return Ok(());
    }
    parse_l4(frame, info)
}

fn parse_ipv6(frame: &[u8], l3: usize, info: &mut PacketInfo) -> Result<(), ParseError> {
    info.l3 = L3Kind::Ipv6;
    if frame.len() < l3 + ipv6::HLEN {
        return Err(ParseError::Truncated(Layer::Ipv6));
    }
    if frame[l3 + ipv6::VER_TC_FLOW.start] >> 4 != 6 {
        return Err(ParseError::BadIpHeader(Layer::Ipv6));
    }
    let payload_len = usize::from(be16(frame, l3 + ipv6::PAYLOAD_LEN.start));
    let end = l3 + ipv6::HLEN + payload_len;
    if end > frame.len() {
        return Err(ParseError::BadIpLength(Layer::Ipv6));
    }
    info.l3_end = end as u32;
    info.src_ip.copy_from_slice(&frame[at(l3, ipv6::SRC_ADDR)]);
    info.dst_ip.copy_from_slice(&frame[at(l3, ipv6::DST_ADDR)]);
    let mut next = frame[l3 + ipv6::NEXT_HEADER];
    let mut off = l3 + ipv6::HLEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes; authentication
            // header: (len + 2) * 4 bytes.
            0 | 43 | 51 | 60 => {
                if off + 8 > end {
                    return Err(ParseError::Truncated(Layer::Ipv6));
                }
                let len = if next == 51 {
                    (usize::from(frame[off + 1]) + 2) * 4
                } else {
                    (usize::from(frame[off + 1]) + 1) * 8
                };
                if off + len > end {
                    return Err(ParseError::Truncated(Layer::Ipv6));
                }
                next = frame[off];
                off += len;
            }
            // Fragment header: 8 bytes; only the first fragment carries the transport header,
            // and we never reassemble, so any fragment is compared as an opaque L3 packet.
            44 => {
                if off + 8 > end {
                    return Err(ParseError::Truncated(Layer::Ipv6));
                }
                next = frame[off];
                info.fragment = true;
                off += 8;
            }
            _ => {
                info.ip_proto = next;
                info.l3_hdr_len = (off - l3) as u16;
                info.l4_off = off as u16;
                if info.fragment {
                    return Ok(());
                }
                return parse_l4(frame, info);
            }
        }
    }
    Err(ParseError::TooManyExtHeaders)
}

#[inline]
fn parse_l4(frame: &[u8], info: &mut PacketInfo) -> Result<(), ParseError> {
    let l4 = info.l4_off as usize;
    let end = info.l3_end as usize;
    match info.ip_proto {
        IPPROTO_TCP => {
            if l4 + tcp::MIN_HLEN > end {
                return Err(ParseError::Truncated(Layer::Tcp));
            }
            let doff = usize::from(frame[l4 + tcp::DATA_OFF] >> 4) * 4;
            if doff < tcp::MIN_HLEN || l4 + doff > end {
                return Err(ParseError::BadTcpDataOffset);
            }
            info.l4_hdr_len = doff as u16;
            info.src_port = be16(frame, l4 + tcp::SRC_PORT.start);
            info.dst_port = be16(frame, l4 + tcp::DST_PORT.start);
            info.tcp = Some(TcpInfo {
                seq: be32(frame, l4 + tcp::SEQ.start),
                ack: be32(frame, l4 + tcp::ACK.start),
                flags: frame[l4 + tcp::FLAGS],
                window: be16(frame, l4 + tcp::WINDOW.start),
            });
        }
        IPPROTO_UDP => {
            if l4 + udp::HLEN > end {
                return Err(ParseError::Truncated(Layer::Udp));
            }
            let ulen = usize::from(be16(frame, l4 + udp::LENGTH.start));
            // A UDP length longer than the IP payload, or shorter than its header, is a lie.
            if ulen < udp::HLEN || l4 + ulen > end {
                return Err(ParseError::BadUdpLength);
            }
            info.l4_hdr_len = udp::HLEN as u16;
            info.src_port = be16(frame, l4 + udp::SRC_PORT.start);
            info.dst_port = be16(frame, l4 + udp::DST_PORT.start);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if l4 + 4 > end {
                return Err(ParseError::Truncated(Layer::Icmp));
            }
            info.icmp_type = frame[l4 + icmp::TYPE];
            info.icmp_code = frame[l4 + icmp::CODE];
            let echo = if info.ip_proto == IPPROTO_ICMP {
                matches!(info.icmp_type, 0 | 8)
            } else {
                matches!(info.icmp_type, 128 | 129)
            };
            if echo {
                if l4 + 8 > end {
                    return Err(ParseError::Truncated(Layer::Icmp));
                }
                info.icmp_echo_id = be16(frame, l4 + icmp::ECHO_ID.start);
                info.l4_hdr_len = 8;
            } else {
                info.l4_hdr_len = 4;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Iterate the TCP options of the segment at `tcp_hdr` (the whole TCP header, options
/// included), yielding `(kind, offset_in_header, length)` for each option with a body.
/// Stops at End-of-List or at the first malformed option (never reads out of bounds).
pub fn tcp_options(tcp_hdr: &[u8]) -> impl Iterator<Item = (u8, usize, usize)> + '_ {
    let mut off = 20usize;
    std::iter::from_fn(move || loop {
        let kind = *tcp_hdr.get(off)?;
        match kind {
            0 => return None,
            1 => off += 1,
            _ => {
                let len = usize::from(*tcp_hdr.get(off + 1)?);
                if len < 2 || off + len > tcp_hdr.len() {
                    return None;
                }
                let at = off;
                off += len;
                return Some((kind, at, len));
            }
        }
    })
}

/// TCP option kinds used here.
pub mod tcp_opt {
    /// Selective acknowledgment blocks.
    pub const SACK: u8 = 5;
    /// Timestamps (TSval, TSecr).
    pub const TIMESTAMP: u8 = 8;
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp_v4(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1234, 80, 1000, 4096)
            .ack(77)
            .psh();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn tcp_v4_fields_and_offsets() {
        let f = tcp_v4(b"hello");
        let i = parse(&f).unwrap();
        assert_eq!(i.l3, L3Kind::Ipv4);
        assert_eq!(
            (i.l3_off, i.l3_hdr_len, i.l4_off, i.l4_hdr_len),
            (14, 20, 34, 20)
        );
        assert_eq!((i.src_port, i.dst_port), (1234, 80));
        let t = i.tcp.unwrap();
        assert_eq!((t.seq, t.ack), (1000, 77));
        assert!(t.has(tcp_flags::ACK | tcp_flags::PSH));
        assert_eq!(i.payload(&f), b"hello");
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        // A pure ACK padded to the 60-byte Ethernet minimum, as some guest NICs do.
        let mut f = tcp_v4(b"");
        assert_eq!(f.len(), 54);
        f.resize(60, 0);
        let i = parse(&f).unwrap();
        assert_eq!(i.payload_len(), 0);
        assert_eq!(i.l3_end, 54);
    }

    #[test]
    fn vlan_tags_are_walked() {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6])
            .single_vlan(etherparse::VlanId::try_new(42).unwrap())
            .ipv6([1; 16], [2; 16], 64)
            .udp(53, 5353);
        let mut f = Vec::new();
        b.write(&mut f, b"xyz").unwrap();
        let i = parse(&f).unwrap();
        assert_eq!(i.vlan_tags, 1);
        assert_eq!(i.l3, L3Kind::Ipv6);
        assert_eq!(i.l3_off, 18);
        assert_eq!((i.src_port, i.dst_port), (53, 5353));
        assert_eq!(i.payload(&f), b"xyz");
    }

    #[test]
    fn ipv6_extension_headers_reach_transport() {
        // IPv6 + hop-by-hop (8 bytes) + TCP.
        let tcp = tcp_v4(b"ab");
        let tcp_seg = &tcp[34..];
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let plen = (8 + tcp_seg.len()) as u16;
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&plen.to_be_bytes());
        f.extend_from_slice(&[0 /* hop-by-hop */, 64]);
        f.extend_from_slice(&[0xfe; 32]);
        f.extend_from_slice(&[IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
        f.extend_from_slice(tcp_seg);
        let i = parse(&f).unwrap();
        assert_eq!(i.ip_proto, IPPROTO_TCP);
        assert_eq!(i.l3_hdr_len, 48);
        assert_eq!(i.payload(&f), b"ab");
    }

    #[test]
    fn icmp_echo_id() {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
            .icmpv4_echo_request(0x1234, 7);
        let mut f = Vec::new();
        b.write(&mut f, b"ping").unwrap();
        let i = parse(&f).unwrap();
        assert_eq!((i.icmp_type, i.icmp_echo_id), (8, 0x1234));
        assert_eq!(i.payload(&f), b"ping");
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut f = tcp_v4(b"data");
        f[14] = 0x44; // IHL 4 words
        assert_eq!(parse(&f), Err(ParseError::BadIpHeader(Layer::Ipv4)));
        let mut f = tcp_v4(b"data");
        f[16..18].copy_from_slice(&200u16.to_be_bytes()); // total length past the frame
        assert_eq!(parse(&f), Err(ParseError::BadIpLength(Layer::Ipv4)));
        let mut f = tcp_v4(b"data");
        f[34 + 12] = 0x40; // data offset 4 words
        assert_eq!(parse(&f), Err(ParseError::BadTcpDataOffset));
        let mut f = tcp_v4(b"data");
        f[34 + 12] = 0xf0; // data offset past the IP end
        assert_eq!(parse(&f), Err(ParseError::BadTcpDataOffset));
    }

    #[test]
    fn every_truncation_is_an_error_or_a_shorter_valid_frame() {
        let frames = [tcp_v4(b"payload!"), {
            let b = PacketBuilder::ethernet2([1; 6], [2; 6])
                .single_vlan(etherparse::VlanId::try_new(5).unwrap())
                .ipv6([1; 16], [2; 16], 64)
                .icmpv6_echo_request(9, 1);
            let mut f = Vec::new();
            b.write(&mut f, b"abc").unwrap();
            f
        }];
        for f in &frames {
            for cut in 0..f.len() {
                // Any cut loses bytes the IP length promises: always an error.
                assert!(parse(&f[..cut]).is_err(), "cut at {cut} parsed");
            }
            assert!(parse(f).is_ok());
        }
    }

    #[test]
    fn tcp_options_walk_and_stop_on_malformed() {
        let mut hdr = vec![0u8; 20];
        hdr.extend_from_slice(&[
            1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 5, 10, 0, 0, 0, 3, 0, 0, 0, 4,
        ]);
        let opts: Vec<_> = tcp_options(&hdr).collect();
        assert_eq!(opts, vec![(8, 22, 10), (5, 32, 10)]);
        let bad = [&hdr[..20], &[8u8, 40, 0, 0][..]].concat();
        assert_eq!(tcp_options(&bad).count(), 0);
        let zero = [&hdr[..20], &[8u8, 0][..]].concat();
        assert_eq!(tcp_options(&zero).count(), 0);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_offsets_are_in_bounds(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            et in proptest::sample::select(vec![0x0800u16, 0x86dd, 0x8100, 0x0806, 0x88a8]),
        ) {
            let mut f = data;
            if f.len() >= 14 { f[12..14].copy_from_slice(&et.to_be_bytes()); }
            if let Ok(i) = parse(&f) {
                proptest::prop_assert!(i.l3_end as usize <= f.len());
                proptest::prop_assert!(i.payload_off() <= f.len());
                let _ = i.payload(&f);
            }
        }

        #[test]
        fn agrees_with_etherparse(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                                  sport: u16, dport: u16, seq: u32) {
            let b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4([3, 3, 3, 3], [4, 4, 4, 4], 9).tcp(sport, dport, seq, 100);
            let mut f = Vec::new();
            b.write(&mut f, &payload).unwrap();
            let i = parse(&f).unwrap();
            let s = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
            match s.transport {
                Some(etherparse::TransportSlice::Tcp(t)) => {
                    proptest::prop_assert_eq!(t.sequence_number(), i.tcp.unwrap().seq);
                    proptest::prop_assert_eq!(t.payload(), i.payload(&f));
                    proptest::prop_assert_eq!(t.source_port(), i.src_port);
                }
                _ => proptest::prop_assert!(false),
            }
        }
    }
}
