//! The fast parser: the common frame shape (untagged Ethernet II, IPv4 without options, not a
//! fragment, TCP or UDP) read straight from a fixed-size header array. For such a frame it
//! gives exactly the fields [`super::parse`] gives (property-tested in `compare::meta`);
//! `None` means "take the general parser", never "malformed".
//!
//! Hot path (every packet on the compare core): one length check turns the frame into a
//! `&[u8; N]`, after which every offset is a [`super::field`] constant, so no bounds checks.

use super::field::{eth, ipv4, tcp, udp};
use super::packet::{IPPROTO_TCP, IPPROTO_UDP};

/// Where the IPv4 header starts (untagged).
const IP: usize = eth::HLEN;
/// Where the transport header starts (IPv4 without options).
pub const L4: usize = IP + ipv4::MIN_HLEN;
/// Bytes read for TCP: through the option-less TCP header.
const TCP_HDR: usize = L4 + tcp::MIN_HLEN;
/// Bytes read for UDP (and for the addresses and ports of either).
const UDP_HDR: usize = L4 + udp::HLEN;

/// Addresses and ports of an option-less IPv4 TCP or UDP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V4Ports {
    /// Source address, wire order.
    pub src: [u8; 4],
    /// Destination address, wire order.
    pub dst: [u8; 4],
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// The fields of an option-less IPv4 TCP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp4 {
    /// Addresses and ports.
    pub ports: V4Ports,
    /// Sequence number as on the wire.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags.
    pub flags: u8,
    /// Start of the TCP payload (TCP options included before it).
    pub payload_off: usize,
    /// End of the IP packet (excludes Ethernet padding).
    pub l3_end: usize,
}

/// The fields of an option-less IPv4 UDP frame (the UDP header starts at [`L4`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Udp4 {
    /// Addresses and ports.
    pub ports: V4Ports,
    /// End of the IP packet (excludes Ethernet padding).
    pub l3_end: usize,
}

#[inline(always)]
fn be16<const N: usize>(h: &[u8; N], at: usize) -> u16 {
    u16::from_be_bytes([h[at], h[at + 1]])
}

#[inline(always)]
fn be32<const N: usize>(h: &[u8; N], at: usize) -> u32 {
    u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

/// Untagged option-less IPv4 carrying `proto`; the IP total length, if it lies inside the
/// frame and covers at least `min_total` bytes, and the frame is not a fragment.
#[inline(always)]
fn v4_total<const N: usize>(h: &[u8; N], len: usize, proto: u8, min_total: usize) -> Option<usize> {
    let et = eth::ETHERTYPE.start;
    if h[et] != 0x08
        || h[et + 1] != 0x00
        || h[IP + ipv4::VER_IHL] != ipv4::VER_IHL_NO_OPTIONS
        || h[IP + ipv4::PROTOCOL] != proto
    {
        return None;
    }
    let total = usize::from(be16(h, IP + ipv4::LENGTH.start));
    let l3_end = IP + total;
    if total < min_total
        || l3_end > len
        || be16(h, IP + ipv4::FLG_OFF.start) & ipv4::FRAGMENT_MASK != 0
    {
        return None;
    }
    Some(l3_end)
}

#[inline(always)]
fn v4_ports(h: &[u8; UDP_HDR]) -> V4Ports {
    let (s, d) = (IP + ipv4::SRC_ADDR.start, IP + ipv4::DST_ADDR.start);
    V4Ports {
        src: [h[s], h[s + 1], h[s + 2], h[s + 3]],
        dst: [h[d], h[d + 1], h[d + 2], h[d + 3]],
        // TCP and UDP ports sit at the same offsets.
        src_port: be16(h, L4 + udp::SRC_PORT.start),
        dst_port: be16(h, L4 + udp::DST_PORT.start),
    }
}

/// An untagged option-less IPv4 TCP frame, not a fragment, whose lengths are valid.
#[inline(always)]
pub fn tcp4(d: &[u8]) -> Option<Tcp4> {
    let h: &[u8; TCP_HDR] = d.get(..TCP_HDR)?.try_into().ok()?;
    // IP length covers a TCP header and lies inside the frame; not a fragment.
    let l3_end = v4_total(h, d.len(), IPPROTO_TCP, ipv4::MIN_HLEN + tcp::MIN_HLEN)?;
    let doff = usize::from(h[L4 + tcp::DATA_OFF] >> 4) * 4;
    let payload_off = L4 + doff;
    if doff < tcp::MIN_HLEN || payload_off > l3_end {
        return None;
    }
    let (head, _) = h.split_first_chunk::<UDP_HDR>()?;
    Some(Tcp4 {
        ports: v4_ports(head),
        seq: be32(h, L4 + tcp::SEQ.start),
        ack: be32(h, L4 + tcp::ACK.start),
        flags: h[L4 + tcp::FLAGS],
        payload_off,
        l3_end,
    })
}

/// An untagged option-less IPv4 UDP frame, not a fragment, whose lengths are valid.
#[inline(always)]
pub fn udp4(d: &[u8]) -> Option<Udp4> {
    let h: &[u8; UDP_HDR] = d.get(..UDP_HDR)?.try_into().ok()?;
    // IP length covers a UDP header and lies inside the frame; not a fragment.
    let l3_end = v4_total(h, d.len(), IPPROTO_UDP, ipv4::MIN_HLEN + udp::HLEN)?;
    // The UDP length must fit the IP payload (the parser rejects it otherwise).
    let ulen = usize::from(be16(h, L4 + udp::LENGTH.start));
    if ulen < udp::HLEN || L4 + ulen > l3_end {
        return None;
    }
    Some(Udp4 {
        ports: v4_ports(h),
        l3_end,
    })
}
